"""Airflow hook for Poof (poof.bg) background removal."""

from __future__ import annotations

from typing import ClassVar

from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook, Flow, _asynchronous, _blocking
from airflow_provider_bgremoval.vendors.poof import PoofAccount, PoofWire

__all__ = ["PoofHook"]


class PoofHook(BackgroundRemovalHook[PoofWire]):
    """
    Remove image backgrounds with `Poof <https://poof.bg/>`__ (``POST /v1/remove``, ``GET /v1/me``).

    The connection (type ``poof``) holds the API key in its password; ``host`` overrides the API
    origin ``https://api.poof.bg``, e.g. to point at the sandbox. Extras ``timeout`` (seconds,
    default 60) and ``max_retries`` (default 4, i.e. 5 attempts) are honoured.

    Every method has an ``a``-prefixed async twin. Results are
    :class:`~airflow_provider_bgremoval.results.ImageResult`; failures raise the provider's
    exception hierarchy (see :mod:`airflow_provider_bgremoval.exceptions`).

    :param conn_id: Airflow connection id (default ``poof_default``); ``poof_conn_id=`` is the same.
    :param kwargs: passed to :class:`~airflow_provider_bgremoval.hooks.base.BackgroundRemovalHook`
        (``timeout``, ``retry_policy``, ``transport``, ``async_transport``, ``sleep``, ``async_sleep``…).
    """

    conn_name_attr = "poof_conn_id"
    default_conn_name: ClassVar[str] = "poof_default"
    conn_type: ClassVar[str] = "poof"
    hook_name: ClassVar[str] = "Poof"
    wire_class: ClassVar[type[PoofWire]] = PoofWire

    def _get_account(self) -> Flow[PoofAccount]:
        """The account as ``GET /v1/me`` reports it (plan, max/used credits, auto recharge); free."""
        wire = yield from self._wire()
        return wire.parse_account((yield from self._send(wire.balance_request())))

    get_account = _blocking(_get_account)
    aget_account = _asynchronous(_get_account)
