"""Airflow hook for Poof (poof.bg) background removal."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.vendors.poof import PoofAccount, PoofWire

__all__ = ["PoofHook"]


class PoofHook(BackgroundRemovalHook[PoofWire]):
    """
    Remove image backgrounds with `Poof <https://poof.bg/>`__ (``POST /v1/remove``, ``GET /v1/me``).

    The connection (type ``poof``) holds the API key in its password; ``host`` (or the ``base_url``
    extra) overrides the API origin ``https://api.poof.bg``, e.g. to point at the sandbox. Extras
    ``timeout`` (seconds, default 60) and ``max_retries`` (default 4, i.e. 5 attempts) are honoured.

    Every method has an ``a``-prefixed async twin. Results are
    :class:`~airflow_provider_bgremoval.results.ImageResult`; failures raise the provider's
    exception hierarchy (see :mod:`airflow_provider_bgremoval.exceptions`).

    :param poof_conn_id: Airflow connection id (default ``poof_default``); ``conn_id=`` is accepted
        as well.
    :param conn_id: alias of ``poof_conn_id`` (the name the base hook uses).
    :param kwargs: passed to :class:`~airflow_provider_bgremoval.hooks.base.BackgroundRemovalHook`
        (``timeout``, ``retry_policy``, ``transport``, ``async_transport``, ``sleep``, ``async_sleep``…).
    """

    conn_name_attr = "poof_conn_id"
    default_conn_name: ClassVar[str] = "poof_default"
    conn_type: ClassVar[str] = "poof"
    hook_name: ClassVar[str] = "Poof"
    wire_class: ClassVar[type[PoofWire]] = PoofWire

    def __init__(self, poof_conn_id: str | None = None, *, conn_id: str | None = None, **kwargs: Any) -> None:
        if poof_conn_id and conn_id and poof_conn_id != conn_id:
            raise InvalidOptionError("conn_id", "give poof_conn_id or conn_id, not two different ids")
        super().__init__(poof_conn_id or conn_id, **kwargs)
        self.poof_conn_id = self.conn_id

    # -- account -------------------------------------------------------------------------------
    def get_account(self) -> PoofAccount:
        """The account as ``GET /v1/me`` reports it (plan, max/used credits, auto recharge); free."""
        wire = self.wire
        return wire.parse_account(self.send(wire.balance_request()))

    async def aget_account(self) -> PoofAccount:
        """Async :meth:`get_account`; safe to use in a trigger."""
        wire = await self.awire()
        return wire.parse_account(await self.asend(wire.balance_request()))
