"""Small shims over differences between the supported Airflow 3.x releases."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from airflow.sdk.log import mask_secret as _mask_secret

if TYPE_CHECKING:
    from airflow.sdk import Connection

try:  # Airflow 3.2+
    from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException, AirflowSkipException
except ImportError:  # Airflow 3.1: these live only in airflow.exceptions
    from airflow.exceptions import (  # type: ignore[no-redef,attr-defined]
        AirflowFailException,
        AirflowNotFoundException,
        AirflowSkipException,
    )

try:  # Airflow 3.2+
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1
    from airflow.configuration import conf  # type: ignore[assignment]

try:  # Airflow 3.2+
    from airflow.sdk.observability.stats import Stats
except ImportError:  # Airflow 3.1
    from airflow.stats import Stats  # type: ignore[no-redef]

__all__ = [  # re-exported
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowSkipException",
    "Stats",
    "conf",
]


def mask_secret(secret: str | None) -> None:
    """
    Register ``secret`` with Airflow's log masker (no-op when empty), kept out of ``dag.test()``'s DEBUG log.

    :param secret: the value to mask.
    """
    if secret:
        keep_secrets_out_of_in_process_supervisor_log()
        _mask_secret(secret)


def get_connection(conn_id: str) -> Connection:
    """
    ``BaseHook.get_connection`` without the secrets reaching ``dag.test()``'s DEBUG log.

    :param conn_id: the connection id.
    """
    from airflow.sdk import BaseHook

    keep_secrets_out_of_in_process_supervisor_log()
    return BaseHook.get_connection(conn_id)  # type: ignore[no-any-return]


class _SecretBodyOmittingLogger:
    """The in-process supervisor's logger, logging ``MaskSecret`` requests by type only (as a worker does)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def log_without_secret_bodies(*args: Any, **kwargs: Any) -> Any:
            return attribute(*map(_omit_secret, args), **{k: _omit_secret(v) for k, v in kwargs.items()})

        return log_without_secret_bodies


def _omit_secret(value: Any) -> Any:
    return type(value) if type(value).__name__ == "MaskSecret" else value


def keep_secrets_out_of_in_process_supervisor_log() -> None:
    """
    Stop ``dag.test()``'s in-process supervisor logging secrets in clear at DEBUG (docs/reliability.md).

    Wraps that comms object's logger for the current run only; a no-op elsewhere, and never fails.
    """
    try:
        from airflow.sdk.execution_time import task_runner

        comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
        if comms is None or type(comms).__name__ != "InProcessSupervisorComms":
            return
        current = getattr(comms, "log", None)
        if current is not None and not isinstance(current, _SecretBodyOmittingLogger):
            comms.log = _SecretBodyOmittingLogger(current)
    except Exception:  # pragma: no cover - a future Airflow shape; masking itself is unaffected
        return


def _masks_asynchronously() -> bool:
    """
    True on Airflow 3.3.2+, whose ``aget_connection`` masks without blocking (before, a synchronous
    supervisor call: ``DeadlockImminentError`` in the triggerer); ``aextra_dejson`` came with the fix.
    """
    from airflow.sdk import BaseHook, Connection

    return hasattr(Connection, "aextra_dejson") and hasattr(BaseHook, "aget_connection")


async def aget_connection(conn_id: str) -> Connection:
    """Fetch a connection without blocking the event loop (a worker thread before Airflow 3.3.2)."""
    from airflow.sdk import BaseHook

    if _masks_asynchronously():
        keep_secrets_out_of_in_process_supervisor_log()
        return await BaseHook.aget_connection(conn_id)  # type: ignore[no-any-return]
    return await asyncio.to_thread(get_connection, conn_id)


async def aextra_dejson(conn: Connection) -> dict[str, Any]:
    """A connection's extras, read the async way where the SDK offers it (else in a worker thread)."""
    getter = getattr(conn, "aextra_dejson", None)
    if getter is not None:
        return dict(await getter())
    return await asyncio.to_thread(lambda: dict(conn.extra_dejson))
