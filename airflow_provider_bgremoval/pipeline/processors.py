"""What the batch engine does to one image: the vendor operation, its options, its cost, its output.

The engine is the same for removing and generating backgrounds; a processor supplies the
differences (as data plus one ``process`` coroutine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Protocol

from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.options import RemovalOptions, options_fingerprint
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import CallStats
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutGenerateOptions


def options_as_dict(options: Any) -> dict[str, Any]:
    """Primitive form of an options object (dataclass, mapping or ``None``) for hashing and manifests."""
    if options is None:
        return {}
    as_dict = getattr(options, "as_dict", None)
    if callable(as_dict):
        return dict(as_dict())
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return dataclasses.asdict(options)
    if isinstance(options, Mapping):
        return dict(options)
    raise TypeError(f"cannot describe options of type {type(options).__name__}")


class ImageProcessor(Protocol):
    """One billed operation applied to every image of a batch."""

    @property
    def vendor(self) -> str:
        """Vendor name."""

    @property
    def operation(self) -> str:
        """Operation name recorded on outputs and in the manifest."""

    @property
    def extension(self) -> str:
        """Extension of the outputs (with the dot)."""

    @property
    def limits(self) -> InputLimits:
        """The vendor's input limits for local checks."""

    @property
    def fingerprint(self) -> str:
        """Hash of everything that shapes the output (recorded on outputs to detect finished work)."""

    @property
    def cost_per_image(self) -> Decimal:
        """Expected credits per successful image."""

    async def process(self, data: bytes, filename: str, stats: CallStats) -> ImageResult:
        """
        Run the vendor call (and local post-processing) on one image.

        :param data: the source bytes.
        :param filename: file name sent with the upload.
        :param stats: the engine's live record of the call (attempts, lost replies, billed reply,
            the budget's retry guard), filled in by the hook.
        """


class RemovalProcessor:
    """
    Background removal with any vendor hook.

    :param hook: the vendor hook.
    :param options: unified options.
    :param vendor_options: the vendor's typed options.
    :param cost_per_image: credits per image, overriding the vendor's default cost table.
    """

    operation = "remove_background"

    def __init__(
        self,
        hook: BackgroundRemovalHook[Any],
        options: RemovalOptions,
        vendor_options: Any = None,
        *,
        cost_per_image: Decimal | None = None,
    ) -> None:
        self.hook = hook
        self.options = options
        self.vendor_options = vendor_options
        self._cost = cost_per_image

    @property
    def vendor(self) -> str:
        """Vendor name."""
        return self.hook.wire_class.spec.name

    @property
    def extension(self) -> str:
        """Extension of the outputs."""
        return self.options.extension

    @property
    def limits(self) -> InputLimits:
        """The vendor's input limits."""
        return self.hook.wire_class.spec.limits

    @property
    def fingerprint(self) -> str:
        """Hash of operation, vendor, options and vendor options."""
        return options_fingerprint(
            {"operation": self.operation, "vendor": self.vendor},
            self.options.as_dict(),
            options_as_dict(self.vendor_options),
            self.hook.output_settings(self.vendor_options),
        )

    @property
    def cost_per_image(self) -> Decimal:
        """Expected credits per image."""
        return self._cost if self._cost is not None else self.hook.estimate_cost(self.vendor_options)

    async def process(self, data: bytes, filename: str, stats: CallStats) -> ImageResult:
        """Remove the background of one image (parameters as :meth:`ImageProcessor.process`)."""
        return await self.hook.aremove_background(
            data, options=self.options, vendor_options=self.vendor_options, filename=filename, stats=stats
        )


class GenerationProcessor:
    """
    Pixelcut generate-background: the subject on a generated scene (a 1024x1024 JPEG).

    :param hook: a Pixelcut hook.
    :param options: the generate-background options.
    :param cost_per_image: credits per image, overriding the cost table.
    """

    operation = "generate_background"
    extension = ".jpg"

    def __init__(
        self,
        hook: PixelcutHook,
        options: PixelcutGenerateOptions,
        *,
        cost_per_image: Decimal | None = None,
    ) -> None:
        self.hook = hook
        self.options = options
        self._cost = cost_per_image

    @property
    def vendor(self) -> str:
        """Vendor name."""
        return self.hook.wire_class.spec.name

    @property
    def limits(self) -> InputLimits:
        """Pixelcut's input limits."""
        return self.hook.wire_class.spec.limits

    @property
    def fingerprint(self) -> str:
        """Hash of operation, vendor and options."""
        return options_fingerprint(
            {"operation": self.operation, "vendor": self.vendor}, self.options.as_dict()
        )

    @property
    def cost_per_image(self) -> Decimal:
        """Expected credits per image."""
        return self._cost if self._cost is not None else self.hook.estimate_generate_cost()

    async def process(self, data: bytes, filename: str, stats: CallStats) -> ImageResult:
        """Generate a background behind the subject of one image (see :meth:`ImageProcessor.process`)."""
        options = self.options
        return await self.hook.agenerate_background(
            data,
            scene=options.scene,
            prompt=options.prompt,
            negative_prompt=options.negative_prompt,
            image_transform=options.image_transform,
            result_delivery=options.result_delivery,
            filename=filename,
            stats=stats,
        )
