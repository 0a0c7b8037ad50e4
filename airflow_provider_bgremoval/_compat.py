"""Small shims over differences between the supported Airflow 3.x releases."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Connection

try:  # Airflow 3.1+
    from airflow.sdk.log import mask_secret as _mask_secret
except ImportError:  # pragma: no cover - older task SDKs
    from airflow.sdk.execution_time.secrets_masker import mask_secret as _mask_secret  # type: ignore[no-redef]


def mask_secret(secret: str | None) -> None:
    """Register ``secret`` with Airflow's log masker (no-op for empty values)."""
    if secret:
        _mask_secret(secret)


async def aget_connection(conn_id: str) -> Connection:
    """Fetch a connection without blocking the event loop (the triggerer's way on 3.3)."""
    from airflow.sdk import BaseHook

    getter = getattr(BaseHook, "aget_connection", None)
    if getter is not None:
        return await getter(conn_id)  # type: ignore[no-any-return]
    return await asyncio.to_thread(BaseHook.get_connection, conn_id)  # pragma: no cover


async def aextra_dejson(conn: Connection) -> dict[str, Any]:
    """A connection's extras, read the async way where the SDK offers it."""
    getter = getattr(conn, "aextra_dejson", None)
    if getter is not None:
        return dict(await getter())
    return dict(conn.extra_dejson)  # pragma: no cover
