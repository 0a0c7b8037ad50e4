"""What the batch engine does to one image: the vendor operation, its options, its cost, its output."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from decimal import Decimal
from typing import Any, Protocol

from airflow_provider_bgremoval.exceptions import BgRemovalError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.imaging import InputLimits, limits_for_output
from airflow_provider_bgremoval.options import RemovalOptions, options_fingerprint
from airflow_provider_bgremoval.pipeline.rendering import MASTER_MAX_BYTES
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import CallStats
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutGenerateOptions


class ImageProcessor(Protocol):
    """
    One billed operation applied to every image of a batch.

    :ivar vendor: vendor name.
    :ivar operation: operation name recorded on outputs and in the manifest.
    :ivar extension: extension of the outputs (with the dot).
    :ivar limits: the vendor's input limits for local checks.
    :ivar fingerprint: hash of everything that shapes the output (recorded on outputs to find finished work).
    :ivar cost_per_image: expected credits per successful image.
    """

    vendor: str
    operation: str
    extension: str
    limits: InputLimits
    fingerprint: str
    cost_per_image: Decimal

    async def process(self, data: bytes, filename: str, stats: CallStats) -> ImageResult:
        """
        Run the vendor call (and local post-processing) on one image.

        :param data: the source bytes.
        :param filename: file name sent with the upload.
        :param stats: the engine's live record of the call, filled in by the hook.
        """


class _HookProcessor:
    """A vendor hook's operation with fixed options: identity and cost worked out once."""

    operation: str

    def __init__(
        self, hook: BackgroundRemovalHook[Any], options: Any, cost: Decimal, *shaping: Mapping[str, Any]
    ) -> None:
        self.hook = hook
        self.options = options
        self.vendor = hook.wire_class.spec.name
        self.limits = hook.wire_class.spec.limits
        self.cost_per_image = cost
        identity = {"operation": self.operation, "vendor": self.vendor}
        self.fingerprint = options_fingerprint(identity, options.as_dict(), *shaping)


class RemovalProcessor(_HookProcessor):
    """
    Background removal with any vendor hook.

    :param hook: the vendor hook.
    :param options: unified options.
    :param vendor_options: the vendor's typed options (or a mapping of their fields).
    :param cost_per_image: credits per image, overriding the vendor's cost table.
    """

    operation = "remove_background"
    options: RemovalOptions

    def __init__(
        self,
        hook: BackgroundRemovalHook[Any],
        options: RemovalOptions,
        vendor_options: Any = None,
        *,
        cost_per_image: Decimal | None = None,
    ) -> None:
        fields = vendor_options.as_dict() if hasattr(vendor_options, "as_dict") else vendor_options
        cost = hook.estimate_cost(vendor_options) if cost_per_image is None else cost_per_image
        super().__init__(hook, options, cost, dict(fields or {}), hook.output_settings(vendor_options))
        self.limits = limits_for_output(self.limits, options)  # as the hook checks: planning refuses early
        self.vendor_options = vendor_options
        self.extension = options.extension

    async def process(self, data: bytes, filename: str, stats: CallStats) -> ImageResult:
        """Remove the background of one image (parameters as :meth:`ImageProcessor.process`)."""
        return await self.hook.aremove_background(
            data, options=self.options, vendor_options=self.vendor_options, filename=filename, stats=stats
        )


class GenerationProcessor(_HookProcessor):
    """
    Pixelcut generate-background: the subject on a generated scene (a 1024x1024 JPEG).

    :param hook: a Pixelcut hook.
    :param options: the generate-background options.
    :param cost_per_image: credits per image, overriding the cost table.
    """

    operation = "generate_background"
    extension = ".jpg"
    hook: PixelcutHook
    options: PixelcutGenerateOptions

    def __init__(
        self, hook: PixelcutHook, options: PixelcutGenerateOptions, *, cost_per_image: Decimal | None = None
    ) -> None:
        cost = hook.estimate_generate_cost() if cost_per_image is None else cost_per_image
        super().__init__(hook, options, cost)

    async def process(self, data: bytes, filename: str, stats: CallStats) -> ImageResult:
        """
        Generate a background behind the subject of one image (see :meth:`ImageProcessor.process`; the
        hook sends an image whose alpha is opaque everywhere without it).
        """
        fields = asdict(self.options)  # the hook's scene, prompt, negative_prompt... parameters
        return await self.hook.agenerate_background(data, filename=filename, stats=stats, **fields)


class RenderProcessor:
    """
    No vendor at all: the processor of a render-only job (``RenderRenditionsOperator``), cost 0.

    Its items are all render-only (the sources are masters), so the engine never calls :meth:`process`.
    """

    vendor = "local"
    operation = "render_renditions"
    extension = ""
    limits = InputLimits(max_bytes=MASTER_MAX_BYTES)
    fingerprint = "render_renditions"
    cost_per_image = Decimal(0)

    async def process(self, data: bytes, filename: str, stats: CallStats) -> ImageResult:
        """Never called: a render-only job makes no vendor call (see :meth:`ImageProcessor.process`)."""
        raise BgRemovalError(f"{filename}: a render-only job makes no vendor call", code="internal_error")
