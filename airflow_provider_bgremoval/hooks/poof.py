"""Airflow hook for Poof (poof.bg) background removal."""

from __future__ import annotations

from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook, Flow, _methods
from airflow_provider_bgremoval.vendors.poof import PoofAccount, PoofWire


class PoofHook(BackgroundRemovalHook[PoofWire]):
    """
    Remove image backgrounds with `Poof <https://poof.bg/>`__ (``POST /v1/remove``, ``GET /v1/me``).

    The connection's password is the API key; ``host`` overrides ``https://api.poof.bg`` (e.g. the sandbox).

    :param conn_id: Airflow connection id (default ``poof_default``); ``poof_conn_id=`` is the same.
    :param kwargs: see :class:`~airflow_provider_bgremoval.hooks.base.BackgroundRemovalHook`.
    """

    conn_name_attr = "poof_conn_id"
    default_conn_name = "poof_default"
    conn_type = "poof"
    hook_name = "Poof"
    wire_class = PoofWire

    def _get_account(self) -> Flow[PoofAccount]:
        """The account as ``GET /v1/me`` reports it (plan, max/used credits, auto recharge); free."""
        wire = yield from self._wire()
        return wire.parse_account((yield from self._send(wire.balance_request(), paced=False)))

    get_account, aget_account = _methods(_get_account)
