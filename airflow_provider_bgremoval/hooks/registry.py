"""Find the vendor hook for a connection from its connection type."""

from __future__ import annotations

import importlib
from typing import Any

from airflow_provider_bgremoval._compat import get_connection
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook

#: connection type -> "module:Class" of its hook (imported lazily)
HOOKS_BY_CONN_TYPE: dict[str, str] = {
    "pixelcut": "airflow_provider_bgremoval.hooks.pixelcut:PixelcutHook",
    "pixian": "airflow_provider_bgremoval.hooks.pixian:PixianHook",
    "poof": "airflow_provider_bgremoval.hooks.poof:PoofHook",
}


def hook_class_for_conn_type(conn_type: str) -> type[BackgroundRemovalHook[Any]]:
    """The hook class serving ``conn_type``."""
    try:
        target = HOOKS_BY_CONN_TYPE[conn_type]
    except KeyError:
        raise InvalidOptionError(
            "conn_id",
            f"connection type {conn_type!r} is not a background-removal vendor "
            f"(expected one of {', '.join(sorted(HOOKS_BY_CONN_TYPE))})",
        ) from None
    module, _, name = target.partition(":")
    cls: type[BackgroundRemovalHook[Any]] = getattr(importlib.import_module(module), name)
    return cls


def get_vendor_hook(conn_id: str, **hook_kwargs: Any) -> BackgroundRemovalHook[Any]:
    """Build the right vendor hook for ``conn_id`` (by the connection's type)."""
    conn = get_connection(conn_id)  # the _compat one keeps the secrets out of dag.test()'s DEBUG log
    return hook_class_for_conn_type(str(conn.conn_type))(conn_id, **hook_kwargs)


async def aget_vendor_hook(conn_id: str, **hook_kwargs: Any) -> BackgroundRemovalHook[Any]:
    """:func:`get_vendor_hook` for async code (reads the connection without blocking)."""
    from airflow_provider_bgremoval._compat import aget_connection

    conn = await aget_connection(conn_id)
    return hook_class_for_conn_type(str(conn.conn_type))(conn_id, **hook_kwargs)
