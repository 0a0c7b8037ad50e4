"""Small shims over differences between the supported Airflow 3.x releases."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

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

__all__ = [
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowSkipException",
    "aextra_dejson",
    "aget_connection",
    "conf",
    "mask_secret",
]

try:  # Airflow 3.1+
    from airflow.sdk.log import mask_secret as _mask_secret
except ImportError:  # pragma: no cover - older task SDKs
    from airflow.sdk.execution_time.secrets_masker import mask_secret as _mask_secret  # type: ignore[no-redef]


def mask_secret(secret: str | None) -> None:
    """Register ``secret`` with Airflow's log masker (no-op for empty values)."""
    if secret:
        _mask_secret(secret)


def _masks_asynchronously() -> bool:
    """
    True on Airflow 3.3.2+, whose ``BaseHook.aget_connection`` masks secrets without blocking.

    Before 3.3.2 (3.1.x, 3.2.x) ``aget_connection`` and ``extra_dejson`` mask the connection's
    secrets with a *synchronous* call to the supervisor, which raises ``DeadlockImminentError`` in
    the triggerer when another async call is in flight. ``Connection.aextra_dejson`` arrived with
    the fix, so it marks the safe releases (the same test as the common-compat provider's
    ``get_async_connection``).
    """
    from airflow.sdk import BaseHook, Connection

    return hasattr(Connection, "aextra_dejson") and hasattr(BaseHook, "aget_connection")


async def aget_connection(conn_id: str) -> Connection:
    """Fetch a connection without blocking the event loop (a worker thread before Airflow 3.3.2)."""
    from airflow.sdk import BaseHook

    if _masks_asynchronously():
        return await BaseHook.aget_connection(conn_id)  # type: ignore[no-any-return]
    return await asyncio.to_thread(BaseHook.get_connection, conn_id)


async def aextra_dejson(conn: Connection) -> dict[str, Any]:
    """A connection's extras, read the async way where the SDK offers it (else in a worker thread)."""
    getter = getattr(conn, "aextra_dejson", None)
    if getter is not None:
        return dict(await getter())
    return await asyncio.to_thread(lambda: dict(conn.extra_dejson))
