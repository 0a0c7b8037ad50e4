"""Airflow hook for Poof (poof.bg) background removal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.vendors.poof import PoofAccount, PoofOptions, PoofWire

__all__ = ["PoofHook"]

_URL_REFUSED = (
    "Poof needs the image uploaded as bytes (its API has no documented URL input); "
    "download the image and pass its bytes instead"
)


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

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection-form relabeling for Airflow releases that read it from the hook (before 3.2)."""
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"password": "API key", "host": "Base URL override"},
            "placeholders": {"host": "https://api.poof.bg", "password": "pk_..."},
        }

    # -- remove background ---------------------------------------------------------------------
    def remove_background(
        self,
        image: bytes | None = None,
        *,
        image_url: str | None = None,
        options: RemovalOptions | None = None,
        vendor_options: PoofOptions | Mapping[str, Any] | None = None,
        filename: str = "image",
        check_input: bool = True,
    ) -> ImageResult:
        """
        Remove the background of one image with ``POST /v1/remove`` (1 credit on success).

        The image is checked locally first (20 MB, 6000 px per side, 36 MP, decodable; formats other
        than JPEG/PNG/WebP are converted to PNG), so a bad file costs nothing.

        :param image: the image bytes.
        :param image_url: not supported by Poof: passing it raises
            :class:`~airflow_provider_bgremoval.exceptions.InvalidOptionError` before any call.
        :param options: the unified options (format, background colour, crop, margin, max size).
        :param vendor_options: :class:`~airflow_provider_bgremoval.vendors.poof.PoofOptions` or a
            mapping of its fields, e.g. ``{"size": "medium"}``.
        :param filename: file name sent with the upload (an extension is added when missing).
        :param check_input: run the local checks (set False only when the caller already did).
        """
        if image_url is not None:
            raise InvalidOptionError("image_url", _URL_REFUSED)
        return super().remove_background(
            image,
            options=options,
            vendor_options=PoofOptions.coerce(vendor_options),
            filename=filename,
            check_input=check_input,
        )

    async def aremove_background(
        self,
        image: bytes | None = None,
        *,
        image_url: str | None = None,
        options: RemovalOptions | None = None,
        vendor_options: PoofOptions | Mapping[str, Any] | None = None,
        filename: str = "image",
        check_input: bool = True,
    ) -> ImageResult:
        """
        Async :meth:`remove_background`.

        :param image: the image bytes.
        :param image_url: not supported by Poof (raises ``InvalidOptionError``).
        :param options: the unified options.
        :param vendor_options: :class:`~airflow_provider_bgremoval.vendors.poof.PoofOptions` or a mapping.
        :param filename: file name sent with the upload.
        :param check_input: run the local checks.
        """
        if image_url is not None:
            raise InvalidOptionError("image_url", _URL_REFUSED)
        return await super().aremove_background(
            image,
            options=options,
            vendor_options=PoofOptions.coerce(vendor_options),
            filename=filename,
            check_input=check_input,
        )

    # -- account -------------------------------------------------------------------------------
    def get_account(self) -> PoofAccount:
        """The account as ``GET /v1/me`` reports it (plan, max/used credits, auto recharge); free."""
        wire = self.wire
        return wire.parse_account(self.send(wire.balance_request()))

    async def aget_account(self) -> PoofAccount:
        """Async :meth:`get_account`; safe to use in a trigger."""
        wire = await self.awire()
        return wire.parse_account(await self.asend(wire.balance_request()))
