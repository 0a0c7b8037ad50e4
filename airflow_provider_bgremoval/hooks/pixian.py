"""Airflow hook for Pixian.AI (https://pixian.ai/api): background removal and account status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook, Flow, _methods
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.vendors.pixian import (
    DeltaMode,
    PixianOptions,
    PixianWire,
    parse_test_mode,
)


class PixianHook(BackgroundRemovalHook[PixianWire]):
    """
    Pixian.AI v2: ``login`` = API id, ``password`` = API secret (HTTP Basic); ``host`` overrides
    ``https://api.pixian.ai`` (e.g. the sandbox); extra ``test_mode`` sends ``test=true`` unless a
    call's :class:`PixianOptions` says otherwise.

    :param conn_id: the connection id (default ``pixian_default``); ``pixian_conn_id=`` is the same.
    :param delta_png_default: ``delta_png`` for calls whose :class:`PixianOptions` leave it unset
        (``None``): ``False`` (the normal PNG), ``"auto"`` (a delta where it decodes to the same image:
        transfer-only, the recommended setting for renditions masters) or ``True``.
    :param kwargs: see :class:`~airflow_provider_bgremoval.hooks.base.BackgroundRemovalHook`.
    """

    conn_name_attr = "pixian_conn_id"
    default_conn_name = "pixian_default"
    conn_type = "pixian"
    hook_name = "Pixian.AI"
    wire_class = PixianWire
    _required_fields = ("password", "login")
    _extra_parsers = {**BackgroundRemovalHook._extra_parsers, "test_mode": parse_test_mode}

    def __init__(
        self, conn_id: str | None = None, *, delta_png_default: DeltaMode = False, **kwargs: Any
    ) -> None:
        super().__init__(conn_id, **kwargs)
        #: ``False``/``"auto"`` change no fingerprint: it may be set on a built hook (``= "auto"``)
        self.delta_png_default: DeltaMode = PixianOptions(delta_png=delta_png_default).delta_png or False

    def _call_options(self, vendor_options: Any) -> PixianOptions:
        """The call's options, an unset ``delta_png`` taken from :attr:`delta_png_default`."""
        opts = PixianOptions.coerce(vendor_options)
        return opts if opts.delta_png is not None else replace(opts, delta_png=self.delta_png_default)

    def output_settings(self, vendor_options: Any = None) -> dict[str, Any]:
        return {"test": self.is_test_mode(vendor_options)}

    def is_test_mode(self, vendor_options: PixianOptions | Mapping[str, Any] | None = None) -> bool:
        """
        Whether a call runs with ``test=true`` (the option, else the connection's ``test_mode`` extra).

        :param vendor_options: the call's Pixian options.
        """
        return self.wire.test_mode(vendor_options)

    def estimate_cost(self, vendor_options: Any = None) -> Decimal:
        # the wire's rule, ``test`` resolved as the call sends it (an unset option: the connection's extra)
        options = replace(PixianOptions.coerce(vendor_options), test=self.is_test_mode(vendor_options))
        return self.wire_class.estimate_cost(options)

    def _estimate_with_test_call(
        self,
        image: bytes | None = None,
        *,
        image_url: str | None = None,
        options: RemovalOptions | None = None,
        vendor_options: PixianOptions | Mapping[str, Any] | None = None,
        filename: str = "image",
    ) -> Flow[Decimal]:
        """
        Ask Pixian what one image would cost: a free ``test=true`` call, returning ``X-Credits-Calculated``.
        Use one representative sample with the batch's options (the cost may depend on them).

        :param image: a sample image's bytes.
        :param image_url: or a sample image's URL.
        :param options: the unified options the batch will use.
        :param vendor_options: the Pixian options the batch will use (``test`` is forced on).
        :param filename: file name sent with the upload.
        """
        opts = replace(PixianOptions.coerce(vendor_options), test=True)
        request, *_ = yield from self._removal_request(image, image_url, options, opts, filename, True)
        wire = yield from self._wire()
        calculated = wire.credits_calculated(wire.parse_image_reply((yield from self._send(request))))
        self.log.info("Pixian test call: a production call would cost %s credits", calculated)
        return calculated

    estimate_with_test_call, aestimate_with_test_call = _methods(_estimate_with_test_call)
