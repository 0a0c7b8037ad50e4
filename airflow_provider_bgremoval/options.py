"""The one option set every vendor understands (DESIGN.md decision 7).

A user asks for an output format, a background colour, a crop with a margin and a maximum size.
:func:`plan_processing` splits that request, from a vendor's :class:`VendorCapabilities` (data, not
code), into what the vendor is asked to do natively and what is done locally with Pillow after the
call, so every vendor produces the same kind of result.

Semantics (the same for every vendor):

* ``output_format``: ``png`` (default), ``jpeg`` or ``webp``. JPEG has no alpha: without a
  ``background_color`` a JPEG result is flattened on white.
* ``background_color``: ``None`` keeps transparency; otherwise the cut-out is flattened on that
  colour. Accepts ``#rgb``, ``#rrggbb``, ``rgb(r, g, b)`` and CSS colour names.
* ``crop``: crop to the subject's bounding box.
* ``margin``: space kept around the subject when cropping, as CSS-style 1–4 values in ``px`` or
  ``%`` (``"5%"``, ``"10px 20px"``). Percentages are of the subject box (width for left/right,
  height for top/bottom), 0–100 %. Requires ``crop=True``. Vendors define their native margins
  differently, so a margin is always applied locally, identically for every vendor.
* ``max_size``: ``(width, height)`` box the result is scaled down to fit (aspect ratio kept, never
  enlarged). Applied locally.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, cast

from PIL import ImageColor

from airflow_provider_bgremoval.exceptions import InvalidOptionError

OutputFormat = Literal["png", "jpeg", "webp"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("png", "jpeg", "webp")
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[str, str] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}

_FORMAT_ALIASES = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}
_LENGTH_RE = re.compile(r"^(\d+(?:\.\d+)?)(px|%)$")


@dataclass(frozen=True)
class Length:
    """
    One margin length.

    :param value: the number.
    :param unit: ``"px"`` or ``"%"``.
    """

    value: float
    unit: Literal["px", "%"]

    def resolve(self, reference: int) -> int:
        """Pixels for this length, with percentages taken of ``reference`` pixels."""
        if self.unit == "px":
            return round(self.value)
        return round(reference * self.value / 100.0)

    def __str__(self) -> str:
        number = int(self.value) if self.value == int(self.value) else self.value
        return f"{number}{self.unit}"


@dataclass(frozen=True)
class Margin:
    """
    A CSS-style margin (top, right, bottom, left).

    :param top: top length.
    :param right: right length.
    :param bottom: bottom length.
    :param left: left length.
    """

    top: Length
    right: Length
    bottom: Length
    left: Length

    @classmethod
    def parse(cls, text: str, *, parameter: str = "margin") -> Margin:
        """Parse ``"5%"``, ``"10px 5%"``, ``"1px 2px 3px"`` or ``"1px 2px 3px 4px"``."""
        parts = str(text).split()
        if not 1 <= len(parts) <= 4:
            raise InvalidOptionError(parameter, f"expected 1 to 4 lengths like '5%' or '10px', got {text!r}")
        lengths = []
        for part in parts:
            match = _LENGTH_RE.match(part)
            if not match:
                raise InvalidOptionError(parameter, f"{part!r} is not a length like '5%' or '10px'")
            value, unit = float(match.group(1)), cast(Literal["px", "%"], match.group(2))
            if unit == "%" and value > 100:
                raise InvalidOptionError(parameter, f"{part!r} is over 100%")
            if unit == "px" and value > 10_000:
                raise InvalidOptionError(parameter, f"{part!r} is over 10000px")
            lengths.append(Length(value, unit))
        if len(lengths) == 1:
            lengths *= 4
        elif len(lengths) == 2:
            lengths = [lengths[0], lengths[1], lengths[0], lengths[1]]
        elif len(lengths) == 3:
            lengths = [lengths[0], lengths[1], lengths[2], lengths[1]]
        return cls(*lengths)

    def __str__(self) -> str:
        return f"{self.top} {self.right} {self.bottom} {self.left}"


def parse_color(value: str, *, parameter: str = "background_color") -> str:
    """Normalise a colour to ``#rrggbb``; accepts ``#rgb``, ``#rrggbb``, ``rgb()`` and CSS names."""
    try:
        rgb = ImageColor.getrgb(str(value).strip())
    except ValueError:
        raise InvalidOptionError(
            parameter, f"{value!r} is not a colour (use '#rrggbb', '#rgb', 'rgb(r, g, b)' or a CSS name)"
        ) from None
    if len(rgb) == 4 and rgb[3] != 255:
        raise InvalidOptionError(parameter, "a background colour must be opaque")
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def parse_format(value: str, *, parameter: str = "output_format") -> OutputFormat:
    """Normalise an output format name (``jpg`` is accepted for ``jpeg``)."""
    fmt = _FORMAT_ALIASES.get(str(value).strip().lower())
    if fmt is None:
        raise InvalidOptionError(parameter, f"{value!r} is not one of png, jpeg, webp")
    return cast(OutputFormat, fmt)


def _parse_size(value: Any, parameter: str = "max_size") -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        width = height = value
    elif isinstance(value, str):
        parts = re.split(r"[x×, ]+", value.strip().lower())
        if len(parts) == 1:
            parts *= 2
        try:
            width, height = (int(p) for p in parts)
        except ValueError:
            raise InvalidOptionError(parameter, f"{value!r} is not WIDTHxHEIGHT") from None
    else:
        try:
            width, height = (int(v) for v in value)
        except (TypeError, ValueError):
            raise InvalidOptionError(parameter, f"{value!r} is not (width, height)") from None
    if not (1 <= width <= 20_000 and 1 <= height <= 20_000):
        raise InvalidOptionError(parameter, f"{value!r} must be between 1 and 20000 pixels per side")
    return width, height


@dataclass(frozen=True)
class RemovalOptions:
    """
    The unified background-removal options (see the module docstring for their meaning).

    Build it with :meth:`create`, which validates and normalises user input and raises
    :class:`~airflow_provider_bgremoval.exceptions.InvalidOptionError` naming the parameter.

    :param output_format: ``png``, ``jpeg`` or ``webp``.
    :param background_color: ``#rrggbb`` or ``None`` for transparent.
    :param crop: crop to the subject.
    :param margin: margin around the cropped subject (requires ``crop``).
    :param max_size: ``(width, height)`` to fit the result into, or ``None``.
    :param jpeg_quality: JPEG/WebP quality for locally encoded lossy outputs (1–100).
    """

    output_format: OutputFormat = "png"
    background_color: str | None = None
    crop: bool = False
    margin: Margin | None = None
    max_size: tuple[int, int] | None = None
    jpeg_quality: int = 90

    @classmethod
    def create(
        cls,
        *,
        output_format: str = "png",
        background_color: str | None = None,
        crop: bool | str = False,
        margin: str | Margin | None = None,
        max_size: Any = None,
        jpeg_quality: int | str = 90,
    ) -> RemovalOptions:
        """Validate user input (strings from templates are accepted) and build the options."""
        fmt = parse_format(output_format)
        color = parse_color(background_color) if background_color not in (None, "") else None
        crop_flag = _parse_bool(crop, "crop")
        parsed_margin = (
            margin
            if isinstance(margin, Margin)
            else Margin.parse(margin)
            if margin not in (None, "")
            else None
        )
        if parsed_margin is not None and not crop_flag:
            raise InvalidOptionError("margin", "a margin only applies when crop=True")
        try:
            quality = int(jpeg_quality)
        except (TypeError, ValueError):
            raise InvalidOptionError("jpeg_quality", f"{jpeg_quality!r} is not an integer") from None
        if not 1 <= quality <= 100:
            raise InvalidOptionError("jpeg_quality", f"{quality} is not between 1 and 100")
        return cls(
            output_format=fmt,
            background_color=color,
            crop=crop_flag,
            margin=parsed_margin,
            max_size=_parse_size(max_size),
            jpeg_quality=quality,
        )

    @property
    def effective_background(self) -> str | None:
        """The background the result ends on: JPEG without a colour is flattened on white."""
        if self.background_color is None and self.output_format == "jpeg":
            return "#ffffff"
        return self.background_color

    @property
    def content_type(self) -> str:
        """MIME type of the final result."""
        return CONTENT_TYPES[self.output_format]

    @property
    def extension(self) -> str:
        """File extension of the final result (with the dot)."""
        return EXTENSIONS[self.output_format]

    def as_dict(self) -> dict[str, Any]:
        """Primitive, canonical form (for hashing, manifests and XCom)."""
        data = asdict(self)
        data["margin"] = str(self.margin) if self.margin else None
        data["max_size"] = list(self.max_size) if self.max_size else None
        return data


def _parse_bool(value: bool | str | int, parameter: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise InvalidOptionError(parameter, f"{value!r} is not a boolean")


def options_fingerprint(*parts: Mapping[str, Any] | None) -> str:
    """A stable short hash of option mappings, recorded on outputs to detect finished work."""
    canonical = json.dumps([p or {} for p in parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VendorCapabilities:
    """
    What a vendor does natively with the unified options (vendor differences as data).

    :param output_formats: unified formats the vendor can return directly.
    :param background_color: the vendor can flatten on a colour.
    :param crop: the vendor can crop to the subject (without a margin).
    """

    output_formats: frozenset[str]
    background_color: bool
    crop: bool


@dataclass(frozen=True)
class LocalSteps:
    """
    Post-processing done with Pillow after the vendor call, in this order.

    :param crop: crop to the alpha bounding box.
    :param margin: margin added around the crop (transparent, or the background colour).
    :param background_color: flatten on this colour.
    :param max_size: scale down to fit this box.
    :param output_format: re-encode to this format (``None``: keep the vendor's bytes).
    :param quality: quality for lossy re-encoding.
    """

    crop: bool = False
    margin: Margin | None = None
    background_color: str | None = None
    max_size: tuple[int, int] | None = None
    output_format: OutputFormat | None = None
    quality: int = 90

    @property
    def needed(self) -> bool:
        """True when any local step runs."""
        return bool(self.crop or self.background_color or self.max_size or self.output_format)


@dataclass(frozen=True)
class ProcessingPlan:
    """
    The split of :class:`RemovalOptions` between a vendor and local post-processing.

    :param native: the options the vendor is asked to honour itself.
    :param local: the steps done locally afterwards.
    """

    native: RemovalOptions
    local: LocalSteps = field(default_factory=LocalSteps)


def plan_processing(options: RemovalOptions, caps: VendorCapabilities) -> ProcessingPlan:
    """Split ``options`` into what the vendor does natively and what is done locally."""
    background = options.effective_background
    local_crop = options.crop and (options.margin is not None or not caps.crop)
    # A local crop needs the alpha channel, so the background must then be applied locally too.
    local_background = background is not None and (local_crop or not caps.background_color)
    local_resize = options.max_size is not None
    any_local_pixels = local_crop or local_background or local_resize
    native_format_ok = options.output_format in caps.output_formats
    local_format: OutputFormat | None = None
    if any_local_pixels or not native_format_ok:
        local_format = options.output_format
    native = replace(
        options,
        output_format=options.output_format if local_format is None else "png",
        background_color=None if local_background else background,
        crop=options.crop and not local_crop,
        margin=None,
        max_size=None,
    )
    local = LocalSteps(
        crop=local_crop,
        margin=options.margin if local_crop else None,
        background_color=background if local_background else None,
        max_size=options.max_size,
        output_format=local_format,
        quality=options.jpeg_quality,
    )
    return ProcessingPlan(native=native, local=local)
