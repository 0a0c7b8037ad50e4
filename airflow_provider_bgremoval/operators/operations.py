"""The removal and generation parameters and their processors, shared by each batch and its pre-flight."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.hooks.pixian import PixianHook
from airflow_provider_bgremoval.operators.bucket_job import (
    BucketJobOperator,
    check_master_options,
    is_template,
)
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.pipeline.processors import (
    GenerationProcessor,
    ImageProcessor,
    RemovalProcessor,
)
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutGenerateOptions, PixelcutOptions
from airflow_provider_bgremoval.vendors.pixian import PixianOptions
from airflow_provider_bgremoval.vendors.poof import PoofOptions

#: The bucket operations (the arrivals trigger's ``operation``).
OPERATIONS = ("remove_background", "generate_background")
#: The removal options that are templated (all but ``jpeg_quality``).
_TEMPLATED_REMOVAL_FIELDS = ("output_format", "background_color", "crop", "margin", "max_size")
#: The unified removal options, as ``RemoveBackgroundOperator`` takes them (and ``vendor_options``).
REMOVAL_FIELDS = (*_TEMPLATED_REMOVAL_FIELDS, "jpeg_quality")
#: The generate-background options that are templated (all but ``image_transform``).
_TEMPLATED_GENERATION_FIELDS = ("scene", "prompt", "negative_prompt")
#: The generate-background options, as ``GenerateBackgroundOperator`` takes them.
GENERATION_FIELDS = (*_TEMPLATED_GENERATION_FIELDS, "image_transform")
#: Every image parameter of the bucket operations by name (the arrivals trigger takes them all).
IMAGE_FIELDS = (*REMOVAL_FIELDS, "vendor_options", *GENERATION_FIELDS)
#: Each vendor's typed removal options (in a chain of connections, typed options apply to their vendor only).
VENDOR_OPTION_TYPES: dict[type, str] = {
    PixelcutOptions: "pixelcut",
    PixianOptions: "pixian",
    PoofOptions: "poof",
}
#: The vendor names a ``{vendor name: options}`` mapping of ``vendor_options`` is keyed by.
VENDOR_NAMES = tuple(VENDOR_OPTION_TYPES.values())


def vendor_options_for(vendor_options: Any, vendor: str | None, *, chained: bool = False) -> Any:
    """
    The vendor options a connection of ``vendor`` gets (docs/pipeline.md, "Failover").

    A mapping keyed by vendor names gives each vendor its own; in a chain, typed options apply to their
    own vendor only, and a plain mapping of fields is refused (whose vendor would it be for?); one
    connection takes any form as it always did.

    :param vendor_options: the ``vendor_options`` parameter.
    :param vendor: the connection's vendor (``None``: only validate).
    :param chained: the task has more than one connection.
    """
    if vendor_options is None:
        return None
    if isinstance(vendor_options, Mapping) and vendor_options and set(vendor_options) <= set(VENDOR_NAMES):
        return vendor_options.get(vendor) if vendor is not None else vendor_options
    if not chained:
        return vendor_options
    owner = VENDOR_OPTION_TYPES.get(type(vendor_options))
    if owner is None:
        raise InvalidOptionError(
            "vendor_options",
            "with a chain of connections give typed vendor options (PixianOptions(...), which apply to "
            f"their vendor only) or a mapping by vendor name ({', '.join(VENDOR_NAMES)})",
        )
    return vendor_options if vendor in (owner, None) else None


def removal_options_of(options: Mapping[str, Any]) -> RemovalOptions:
    """
    The validated unified options from the removal parameters (absent ones: the operator's defaults).

    :param options: the parameters by name (:data:`REMOVAL_FIELDS`; others are ignored).
    """
    return RemovalOptions.create(**{name: options[name] for name in REMOVAL_FIELDS if name in options})


def generation_options_of(options: Mapping[str, Any]) -> PixelcutGenerateOptions:
    """
    The validated generate-background options from their parameters.

    :param options: the parameters by name (:data:`GENERATION_FIELDS`; others are ignored).
    """
    return PixelcutGenerateOptions.coerce({name: options.get(name) for name in GENERATION_FIELDS})


def image_parameters(given: Mapping[str, Any]) -> dict[str, Any]:
    """
    Every image parameter (:data:`IMAGE_FIELDS`): those given, the operators' own defaults for the rest.

    :param given: parameters by name (another name is refused).
    """
    unknown = sorted(set(given) - set(IMAGE_FIELDS))
    if unknown:
        raise InvalidOptionError(unknown[0], f"is not an image parameter ({', '.join(IMAGE_FIELDS)})")
    defaults = {
        name: parameter.default
        for operator in (RemovalParameters, GenerationParameters)
        for name, parameter in inspect.signature(operator.__init__).parameters.items()
    }
    return {name: given.get(name, defaults[name]) for name in IMAGE_FIELDS}


def processor_for(
    operation: str,
    hook: BackgroundRemovalHook[Any],
    options: Mapping[str, Any],
    cost: Decimal | None = None,
    *,
    chained: bool = False,
) -> ImageProcessor:
    """
    The vendor operation a bucket task of ``operation`` applies to each image (its fingerprint, vendor,
    extension and limits too); generate-background needs a Pixelcut hook.

    :param operation: ``remove_background`` or ``generate_background``.
    :param hook: the vendor hook.
    :param options: the operation's parameters by name (:data:`REMOVAL_FIELDS` and ``vendor_options``,
        or :data:`GENERATION_FIELDS`).
    :param cost: the ``cost_per_image`` override, when given.
    :param chained: the hook is one of a chain's connections (see :func:`vendor_options_for`).
    """
    if operation == "generate_background":
        if not isinstance(hook, PixelcutHook):
            raise InvalidOptionError(
                "conn_id",
                f"generate-background is a Pixelcut feature; "
                f"{hook.conn_id!r} is a {hook.conn_type} connection",
            )
        return GenerationProcessor(hook, generation_options_of(options), cost_per_image=cost)
    removal = removal_options_of(options)
    vendor = hook.wire_class.spec.name
    vendor_options = vendor_options_for(options.get("vendor_options"), vendor, chained=chained)
    return RemovalProcessor(hook, removal, vendor_options, cost_per_image=cost)


class RemovalParameters(BucketJobOperator):
    """
    Remove the backgrounds of a bucket job's images with any vendor.

    :param output_format: ``png``, ``jpeg`` or ``webp``.
    :param background_color: flatten on this colour (``None``: transparent).
    :param crop: crop to the subject.
    :param margin: margin around the cropped subject (CSS-style, px or %).
    :param max_size: fit the result into ``(width, height)``.
    :param jpeg_quality: quality of lossy outputs.
    :param vendor_options: the vendor's typed options (e.g. ``PixelcutOptions(shadow=...)``).
    :param kwargs: the bucket job's parameters (:class:`BucketJobOperator`).
    """

    template_fields: Sequence[str] = (*BucketJobOperator.template_fields, *_TEMPLATED_REMOVAL_FIELDS)

    def __init__(
        self,
        *,
        output_format: str = "png",
        background_color: str | None = None,
        crop: bool | str = False,
        margin: str | None = None,
        max_size: Any = None,
        jpeg_quality: int = 90,
        vendor_options: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_format = output_format
        self.background_color = background_color
        self.crop = crop
        self.margin = margin
        self.max_size = max_size
        self.jpeg_quality = jpeg_quality
        self.vendor_options = vendor_options
        templated = any(is_template(getattr(self, name)) for name in _TEMPLATED_REMOVAL_FIELDS)
        options = None if templated else self.removal_options()  # fail at DAG parse on bad options
        if self.conn_id != "" and not is_template(self.conn_id):
            vendor_options_for(vendor_options, None, chained=len(self.conn_ids()) > 1)
        if options is not None and self.renditions and not is_template(self.renditions):
            check_master_options(options)  # with renditions, options that would not make a master

    def _options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*REMOVAL_FIELDS, "vendor_options")}

    def removal_options(self) -> RemovalOptions:
        """The validated unified options."""
        return removal_options_of(self._options())

    def build_processor(
        self, hook: BackgroundRemovalHook[Any], cost: Decimal | None, *, chained: bool = False
    ) -> ImageProcessor:
        if not self.single_output and isinstance(hook, PixianHook):
            # masters: a transfer-only delta PNG where it decodes to the same image (docs/vendors/pixian.md);
            # ``vendor_options=PixianOptions(delta_png=False)`` keeps the normal PNG
            hook.delta_png_default = "auto"
        return processor_for("remove_background", hook, self._options(), cost, chained=chained)


class GenerationParameters(BucketJobOperator):
    """
    Generate new backgrounds (Pixelcut) behind the subjects of a bucket job's images.

    :param conn_id: a Pixelcut connection, or an ordered chain of them (docs/pipeline.md, "Failover").
    :param scene: a preset scene: ``marble``, ``wood``, ``industrial``, ``linen``, ``brick`` or ``counter``.
    :param prompt: a description of the scene (not together with ``scene``).
    :param negative_prompt: comma-separated attributes to avoid (not together with ``scene``).
    :param image_transform: placement of the subject: ``{"scale": 0.8, "x_center": 0.5, "y_center": 0.6}``.
    :param kwargs: the bucket job's parameters (:class:`BucketJobOperator`).
    """

    template_fields: Sequence[str] = (*BucketJobOperator.template_fields, *_TEMPLATED_GENERATION_FIELDS)

    def __init__(
        self,
        *,
        conn_id: str | Sequence[str] = "pixelcut_default",
        scene: str | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        image_transform: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.scene = scene
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.image_transform = image_transform
        if not any(is_template(getattr(self, name)) for name in _TEMPLATED_GENERATION_FIELDS):
            generation_options_of(self._options())  # fail at DAG parse on bad or conflicting options

    def _options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in GENERATION_FIELDS}

    def build_processor(
        self, hook: BackgroundRemovalHook[Any], cost: Decimal | None, *, chained: bool = False
    ) -> ImageProcessor:
        return processor_for("generate_background", hook, self._options(), cost, chained=chained)
