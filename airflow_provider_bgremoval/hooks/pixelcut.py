"""The Pixelcut hook: remove-background, generate-background and credits, sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.options import LocalSteps, ProcessingPlan, RemovalOptions
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import CallStats
from airflow_provider_bgremoval.vendors.pixelcut import (
    PixelcutGenerateOptions,
    PixelcutImageTransform,
    PixelcutScene,
    PixelcutWire,
    ResultDelivery,
    parse_scene,
)

#: Generate-background returns a ready JPEG: nothing is re-encoded locally, only decode-checked.
_GENERATE_PLAN = ProcessingPlan(native=RemovalOptions(output_format="jpeg"), local=LocalSteps())


class PixelcutHook(BackgroundRemovalHook[PixelcutWire]):
    """
    Pixelcut (``https://api.developer.pixelcut.ai``): remove and generate backgrounds, read credits.

    The connection's password is the API key (sent as ``X-API-KEY``); ``host`` or the ``base_url``
    extra overrides the API origin (e.g. the sandbox); extras ``timeout`` and ``max_retries``.

    Pixelcut returns PNG cut-outs and crops natively (without a margin); every other unified option
    (jpeg/webp, background colour, margin, max size) is applied locally with Pillow.
    Vendor options: :class:`~airflow_provider_bgremoval.vendors.pixelcut.PixelcutOptions`.

    :param pixelcut_conn_id: connection id (default ``pixelcut_default``).
    :param conn_id: alias of ``pixelcut_conn_id`` (the name the base hook uses).
    :param kwargs: see :class:`~airflow_provider_bgremoval.hooks.base.BackgroundRemovalHook`
        (``timeout``, ``retry_policy``, ``max_result_bytes``, ``transport``, ``sleep``…).
    """

    conn_name_attr = "pixelcut_conn_id"
    default_conn_name = "pixelcut_default"
    conn_type = "pixelcut"
    hook_name = "Pixelcut"
    wire_class = PixelcutWire

    def __init__(
        self, pixelcut_conn_id: str | None = None, *, conn_id: str | None = None, **kwargs: Any
    ) -> None:
        if pixelcut_conn_id and conn_id and pixelcut_conn_id != conn_id:
            raise InvalidOptionError("conn_id", "give pixelcut_conn_id or conn_id, not two different ids")
        super().__init__(pixelcut_conn_id or conn_id, **kwargs)
        self.pixelcut_conn_id = self.conn_id

    @staticmethod
    def _generate_options(
        scene: PixelcutScene | str | None,
        prompt: str | None,
        negative_prompt: str | None,
        image_transform: PixelcutImageTransform | Mapping[str, Any] | None,
        result_delivery: ResultDelivery,
    ) -> PixelcutGenerateOptions:
        return PixelcutGenerateOptions(
            scene=parse_scene(scene),
            prompt=prompt,
            negative_prompt=negative_prompt,
            image_transform=PixelcutImageTransform.coerce(image_transform),
            result_delivery=result_delivery,
        )

    def generate_background(
        self,
        image: bytes | None = None,
        *,
        image_url: str | None = None,
        scene: PixelcutScene | str | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        image_transform: PixelcutImageTransform | Mapping[str, Any] | None = None,
        result_delivery: ResultDelivery = "bytes",
        filename: str = "image",
        check_input: bool = True,
        stats: CallStats | None = None,
    ) -> ImageResult:
        """
        Generate a new background behind the subject (a billed call; result: 1024x1024 JPEG).

        An RGB input has its background removed by Pixelcut first; an RGBA input's alpha is used.

        :param image: the image bytes; checked locally against Pixelcut's limits first.
        :param image_url: a public http(s) URL for Pixelcut to fetch instead.
        :param scene: a preset scene (``marble``, ``wood``, ``industrial``, ``linen``, ``brick``,
            ``counter``); cannot be combined with ``prompt``/``negative_prompt``.
        :param prompt: description of the wanted scene.
        :param negative_prompt: comma-separated attributes to avoid.
        :param image_transform: placement of the subject (``scale``, ``x_center``, ``y_center``).
        :param result_delivery: ``"bytes"`` (default) or ``"url"`` (downloaded with the size cap).
        :param filename: file name sent with the upload.
        :param check_input: run the local checks (set False only when the caller already did).
        :param stats: the caller's live record of the call (see :meth:`remove_background`).
        """
        options = self._generate_options(scene, prompt, negative_prompt, image_transform, result_delivery)
        wire = self.wire
        image_input = self._image_input(image, image_url, filename, check_input)
        request = wire.generate_background_request(image_input, options)
        return self._image_call(wire, request, image_input, _GENERATE_PLAN, options, stats)

    async def agenerate_background(
        self,
        image: bytes | None = None,
        *,
        image_url: str | None = None,
        scene: PixelcutScene | str | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        image_transform: PixelcutImageTransform | Mapping[str, Any] | None = None,
        result_delivery: ResultDelivery = "bytes",
        filename: str = "image",
        check_input: bool = True,
        stats: CallStats | None = None,
    ) -> ImageResult:
        """
        Async :meth:`generate_background`; CPU work runs in a worker thread.

        :param image: the image bytes.
        :param image_url: a public http(s) URL instead.
        :param scene: a preset scene.
        :param prompt: description of the wanted scene.
        :param negative_prompt: comma-separated attributes to avoid.
        :param image_transform: placement of the subject.
        :param result_delivery: ``"bytes"`` or ``"url"``.
        :param filename: file name sent with the upload.
        :param check_input: run the local checks.
        :param stats: the caller's live record of the call.
        """
        options = self._generate_options(scene, prompt, negative_prompt, image_transform, result_delivery)
        wire = await self.awire()
        image_input = await asyncio.to_thread(self._image_input, image, image_url, filename, check_input)
        request = wire.generate_background_request(image_input, options)
        return await self._aimage_call(wire, request, image_input, _GENERATE_PLAN, options, stats)

    def estimate_generate_cost(self) -> Decimal:
        """Credits one generate-background call is expected to cost (from the cost table: 1)."""
        return PixelcutWire.estimate_generate_cost()
