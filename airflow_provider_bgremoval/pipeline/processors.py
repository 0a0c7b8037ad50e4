"""What the batch engine does to one image: the vendor operation, its options, its cost, its output."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, ClassVar, Protocol

from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.options import RemovalOptions, options_fingerprint
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import CallStats
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutGenerateOptions


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
        :param stats: the engine's live record of the call, filled in by the hook.
        """


class _HookProcessor(ABC):
    """A vendor hook's operation with fixed options; subclasses supply what differs."""

    operation: ClassVar[str]

    def __init__(
        self, hook: BackgroundRemovalHook[Any], options: Any, cost_per_image: Decimal | None
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
        """The vendor's input limits."""
        return self.hook.wire_class.spec.limits

    @property
    def fingerprint(self) -> str:
        """Hash of the operation, the vendor and everything else that shapes the output."""
        return options_fingerprint({"operation": self.operation, "vendor": self.vendor}, *self._shaping())

    @property
    def cost_per_image(self) -> Decimal:
        """Expected credits per image: the override, or the vendor's cost table."""
        return self._table_cost() if self._cost is None else self._cost

    def _shaping(self) -> list[Mapping[str, Any]]:
        return [self.options.as_dict()]

    @abstractmethod
    def _table_cost(self) -> Decimal: ...


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
        super().__init__(hook, options, cost_per_image)
        self.vendor_options = vendor_options

    @property
    def extension(self) -> str:
        """Extension of the outputs."""
        return self.options.extension

    def _shaping(self) -> list[Mapping[str, Any]]:
        vendor_options = self.vendor_options
        as_dict = vendor_options.as_dict() if hasattr(vendor_options, "as_dict") else vendor_options
        return [*super()._shaping(), dict(as_dict or {}), self.hook.output_settings(vendor_options)]

    def _table_cost(self) -> Decimal:
        return self.hook.estimate_cost(self.vendor_options)

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
        super().__init__(hook, options, cost_per_image)

    def _table_cost(self) -> Decimal:
        return self.hook.estimate_generate_cost()

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
