"""The Pixelcut hook: remove-background, generate-background and credits, sync and async."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook, Flow, _methods
from airflow_provider_bgremoval.imaging import drop_opaque_alpha
from airflow_provider_bgremoval.options import LocalSteps, OptionSplit, RemovalOptions
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import CallStats
from airflow_provider_bgremoval.vendors.pixelcut import (
    PixelcutGenerateOptions,
    PixelcutImageTransform,
    PixelcutScene,
    PixelcutWire,
    ResultDelivery,
)

#: Generate-background returns a ready JPEG: nothing is re-encoded locally, only decode-checked.
_GENERATE_PLAN = OptionSplit(native=RemovalOptions(output_format="jpeg"), local=LocalSteps())


class PixelcutHook(BackgroundRemovalHook[PixelcutWire]):
    """
    Pixelcut (``https://api.developer.pixelcut.ai``): remove and generate backgrounds, read credits.

    The connection's password is the API key; ``host`` overrides the API origin (e.g. the sandbox).
    Vendor options: :class:`~airflow_provider_bgremoval.vendors.pixelcut.PixelcutOptions`.

    :param conn_id: connection id (default ``pixelcut_default``); ``pixelcut_conn_id=`` is the same.
    :param kwargs: see :class:`~airflow_provider_bgremoval.hooks.base.BackgroundRemovalHook`.
    """

    conn_name_attr = "pixelcut_conn_id"
    default_conn_name = "pixelcut_default"
    conn_type = "pixelcut"
    hook_name = "Pixelcut"
    wire_class = PixelcutWire

    def _generate_background(
        self,
        image: bytes | None = None,
        *,
        image_url: str | None = None,
        scene: PixelcutScene | str | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        image_transform: PixelcutImageTransform | Mapping[str, object] | None = None,
        result_delivery: ResultDelivery = "bytes",
        filename: str = "image",
        check_input: bool = True,
        stats: CallStats | None = None,
    ) -> Flow[ImageResult]:
        """
        Generate a new background behind the subject (a billed call; result: 1024x1024 JPEG).
        An RGB input has its background removed by Pixelcut first; an RGBA input's alpha is used as the
        subject's outline, so image bytes whose alpha is opaque everywhere are sent without it (with it,
        Pixelcut would cut nothing out and bill a scene hidden behind the whole photo).

        :param image: the image bytes; checked locally against Pixelcut's limits first.
        :param image_url: a public http(s) URL for Pixelcut to fetch instead.
        :param scene: a :class:`~airflow_provider_bgremoval.vendors.pixelcut.PixelcutScene` (any case);
            not with ``prompt``/``negative_prompt``.
        :param prompt: description of the wanted scene.
        :param negative_prompt: comma-separated attributes to avoid.
        :param image_transform: placement of the subject (``scale``, ``x_center``, ``y_center``).
        :param result_delivery: ``"bytes"`` (default) or ``"url"`` (downloaded with the size cap).
        :param filename: file name sent with the upload.
        :param check_input: run the local checks (set False only when the caller already did).
        :param stats: the caller's live record of the call (see :meth:`remove_background`).
        """
        options = PixelcutGenerateOptions.coerce(
            {
                "scene": scene,
                "prompt": prompt,
                "negative_prompt": negative_prompt,
                "image_transform": image_transform,
                "result_delivery": result_delivery,
            }
        )
        wire = yield from self._wire()
        if image is not None and image_url is None:
            data, limits = image, wire.spec.limits
            image = yield from self._offload(partial(drop_opaque_alpha, data, limits), data)
        image_input = yield from self._image_input(image, image_url, filename, check_input)
        request = wire.generate_background_request(image_input, options)
        return (yield from self._image_call(request, image_input, _GENERATE_PLAN, options, stats))

    generate_background, agenerate_background = _methods(_generate_background)

    estimate_generate_cost = staticmethod(PixelcutWire.estimate_generate_cost)
