"""Airflow hook for Pixian.AI (https://pixian.ai/api): background removal and account status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_bgremoval._compat import mask_secret
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook, Flow, _asynchronous, _blocking
from airflow_provider_bgremoval.options import RemovalOptions, split_options
from airflow_provider_bgremoval.vendors.base import ConnectionSettings, basic_auth_header
from airflow_provider_bgremoval.vendors.pixian import PixianOptions, PixianWire, parse_test_mode

if TYPE_CHECKING:
    from airflow.sdk import Connection

__all__ = ["PixianHook", "PixianOptions"]


class PixianHook(BackgroundRemovalHook[PixianWire]):
    """
    Pixian.AI v2 over httpx (sync and async methods, one pooled client of each per hook).

    The connection (type ``pixian``): ``login`` = API id, ``password`` = API secret (HTTP Basic);
    ``host`` overrides ``https://api.pixian.ai`` (e.g. the sandbox);
    extras ``timeout`` (default 180 s, Pixian's advice), ``max_retries`` and ``test_mode`` (send
    ``test=true`` unless a call's :class:`PixianOptions` says otherwise).

    Methods: :meth:`remove_background` / :meth:`aremove_background`, :meth:`get_balance` /
    :meth:`aget_balance`, :meth:`estimate_cost`, :meth:`estimate_with_test_call` /
    :meth:`aestimate_with_test_call`, :meth:`test_connection`.

    :param conn_id: the connection id (default ``pixian_default``); ``pixian_conn_id=`` is the same.
    :param kwargs: the options of :class:`~airflow_provider_bgremoval.hooks.base.BackgroundRemovalHook`
        (``timeout``, ``retry_policy``, ``transport``, ``async_transport``, ``sleep``, ``async_sleep``…).
    """

    conn_name_attr = "pixian_conn_id"
    default_conn_name = "pixian_default"
    conn_type = "pixian"
    hook_name = "Pixian.AI"
    wire_class = PixianWire

    @classmethod
    def settings_from_connection(
        cls, conn: Connection, extras: Mapping[str, Any], *, timeout: float | None = None
    ) -> ConnectionSettings:
        """
        Read the connection; also require the API id and mask the derived ``Authorization`` value.

        :param conn: the Airflow connection.
        :param extras: its extras.
        :param timeout: a timeout overriding the ``timeout`` extra.
        """
        settings = super().settings_from_connection(conn, extras, timeout=timeout)
        if not settings.api_id:
            label = cls._label("login")
            raise InvalidOptionError(
                label, f"connection {conn.conn_id!r} has no API id: set the {label} field"
            )
        # The Authorization value (base64 of id:secret) is a secret Airflow does not know of:
        # register it, and its bare token wherever that might be printed (through _compat, so
        # dag.test()'s supervisor does not log them at DEBUG).
        header = basic_auth_header(settings.api_id, settings.api_key)
        mask_secret(header)
        mask_secret(header.partition(" ")[2])
        parse_test_mode(settings.extras.get("test_mode"))  # a bad value fails here, not mid-batch
        return settings

    # -- costs ---------------------------------------------------------------------------------
    def output_settings(self, vendor_options: Any = None) -> dict[str, Any]:
        """Test mode changes the output (watermark), so it is part of the options fingerprint."""
        return {"test": self.is_test_mode(vendor_options)}

    def is_test_mode(self, vendor_options: PixianOptions | Mapping[str, Any] | None = None) -> bool:
        """
        Whether a call with these options runs with ``test=true`` (option first, then the connection).

        The connection is read only when the options leave ``test`` unset (after :meth:`aget_balance`
        or any async call it is already loaded, so async callers do not block).

        :param vendor_options: the call's Pixian options.
        """
        opts = PixianOptions.coerce(vendor_options)
        if opts.test is not None:
            return opts.test
        return self.wire.test_mode(opts)

    def estimate_cost(self, vendor_options: Any = None) -> Decimal:
        """
        Credits one image is expected to cost: 0 in test mode (option or connection), else 1.

        Pixian does not document its per-image cost; the real cost of each call is in
        ``ImageResult.credits_charged``, and :meth:`estimate_with_test_call` asks Pixian for free.

        :param vendor_options: the Pixian options the batch uses.
        """
        if self.is_test_mode(vendor_options):
            return Decimal(0)
        return self.wire_class.estimate_cost(vendor_options)

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
        options = options or RemovalOptions()
        opts = replace(PixianOptions.coerce(vendor_options), test=True)
        PixianWire.check_options(options, opts)
        wire = yield from self._wire()
        image_input = yield from self._image_input(image, image_url, filename, True)
        plan = split_options(options, wire.capabilities_for(opts))
        response = yield from self._send(wire.remove_background_request(image_input, plan.native, opts))
        calculated = wire.credits_calculated(wire.parse_result(response))
        self.log.info("Pixian test call: a production call would cost %s credits", calculated)
        return calculated

    estimate_with_test_call = _blocking(_estimate_with_test_call)
    aestimate_with_test_call = _asynchronous(_estimate_with_test_call)
