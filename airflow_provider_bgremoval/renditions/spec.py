"""The typed rendition spec: one image derived locally from a master cut-out (docs/renditions.md)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic
from pydantic import BeforeValidator, Field, WithJsonSchema
from typing_extensions import Self

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.imaging import WEBP_MAX_SIDE  # a derived WebP canvas is kept within it
from airflow_provider_bgremoval.options import (
    CHOICE,
    NUMBER,
    EncodedOptionSet,
    Flag,
    Margin,
    OptionValueError,
    OutputFormat,
    _color,
    _format,
    _margin,
    _not_a_boolean,
    _whole_number,
    option_model,
    options_fingerprint,
    parse_size,
    unset_or,
)

if TYPE_CHECKING:
    from airflow_provider_bgremoval.renditions.compliance import Rule

#: Bumped when the renderer's output for the same spec changes (part of :attr:`Rendition.fingerprint`).
RENDERER_VERSION = 1
#: The largest canvas side a spec may ask for.
MAX_SIDE = 20_000
#: The largest canvas (width x height): 100 MP, over every marketplace's limit and under the size
#: Pillow refuses to decode again as a decompression bomb (about 179 MP), which the checks do.
MAX_PIXELS = 100_000_000
TRANSPARENT = "transparent"
Fit = Literal["contain", "cover", "none"]
Subsampling = Literal["4:4:4", "4:2:2", "4:2:0"]
MetadataPolicy = Literal["strip", "keep"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ASPECT_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*[:/x]\s*(\d+(?:\.\d+)?)$")
_DECIMAL_RE = re.compile(r"^\d+(?:\.\d+)?$")
_FILL_PERCENT_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")


#: What a rendition name is made of (it names the rendition's folder).
_NAME_RULE = "1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit"
#: Why a rendition without a name is refused.
_NAMELESS = f"a rendition needs a name, the folder its images go to ({_NAME_RULE})"


def _name(value: Any) -> str:
    if value is None:  # str(None) is 'none', a valid name
        raise ValueError(_NAMELESS)
    text = str(value).strip().lower()
    if not _NAME_RE.match(text):
        raise ValueError(f"{value!r} is not a rendition name ({_NAME_RULE})")
    return text


def _background(value: Any) -> str:
    text = str(value).strip().lower()
    return TRANSPARENT if text in (TRANSPARENT, "none") else _color(value)


def _aspect(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ratio = float(value)
    else:
        text = str(value).strip().lower()
        match = _ASPECT_RE.match(text)
        if match and float(match.group(2)) != 0:
            ratio = float(match.group(1)) / float(match.group(2))
        elif _DECIMAL_RE.match(text):  # "1.5": a number as a form or a template gives it
            ratio = float(text)
        else:
            raise ValueError(f"{value!r} is not an aspect ratio like '1:1', '4:3' or 1.5")
    if not math.isfinite(ratio) or not 0.01 <= ratio <= 100:
        raise ValueError(f"{value!r} is not an aspect ratio between 1:100 and 100:1")
    return ratio


def _fill(value: Any) -> float:
    match = _FILL_PERCENT_RE.match(value.strip()) if isinstance(value, str) else None
    try:
        ratio = float(match.group(1)) / 100 if match else float(_not_a_boolean(value))
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a fill ratio like 0.85 or '85%'") from None
    if not 0.05 <= ratio <= 1:
        raise ValueError(f"{value!r} is not a fill ratio between 0.05 and 1 (or '5%' to '100%')")
    return ratio


def _side(value: Any) -> int:
    side = _whole_number(value)
    if not 1 <= side <= MAX_SIDE:
        raise ValueError(f"{side} is not between 1 and {MAX_SIDE:,} pixels")
    return side


def _text_schema(*examples: Any, number: bool = True) -> WithJsonSchema:
    """The JSON schema of an optional field given as text (or a number), parsed by its validator."""
    return WithJsonSchema(
        {"type": ["string", "number", "null"] if number else ["string", "null"], "examples": [*examples]}
    )


@option_model
class RenditionSpec(EncodedOptionSet):
    """
    One rendition of a master cut-out, validated once on creation (docs/renditions.md).

    :param name: the rendition's name (1-64 of ``a-z 0-9 _ -``); unique within a list, used in paths.
    :param preset: the preset this spec was made from (set by :func:`resolve_rendition`), for the record.
    :param format: ``jpeg`` (or ``jpg``), ``png`` or ``webp``.
    :param quality: JPEG quality, or WebP quality (lossy) or effort (lossless), 1-100.
    :param lossless: lossless WebP (PNG is always lossless; not allowed with JPEG).
    :param subsampling: JPEG chroma subsampling; ``4:4:4`` (none) keeps flat backgrounds and edges exact.
    :param background: ``transparent`` or an opaque colour (``#rrggbb``, ``#rgb``, ``rgb(r, g, b)``, a CSS
        name); unset: transparent for PNG and WebP, white for JPEG (which has no alpha).
    :param size: exact canvas ``[width, height]`` (one number: a square).
    :param aspect: canvas aspect ratio (``"1:1"``, ``"4:3"``, ``1.5``) with a size derived from the subject.
    :param fit: how the content meets a canvas: ``contain`` (fits inside), ``cover`` (fills it, cropped) or
        ``none`` (never scaled).
    :param margin: space between the canvas edge and the content, 1-4 CSS-style lengths in ``px`` or ``%``
        of the canvas (its width for left/right, its height for top/bottom).
    :param fill: subject fill ratio (``0.85`` or ``"85%"``): the subject's bounding box spans this fraction
        of the canvas along its constraining dimension; implies ``crop``.
    :param crop: crop the master to the subject's bounding box (its alpha) first.
    :param max_size: largest long side of the canvas, px (scaled down to fit).
    :param min_size: smallest long side of the canvas, px: upscaled to it only with ``upscale``, otherwise
        a rendition that cannot reach it is flagged by its ``min_size`` check.
    :param upscale: allow enlarging the master's pixels (never by default).
    :param embed_srgb: embed the sRGB ICC profile (the pixels are always converted to sRGB).
    :param metadata: ``strip`` (default: no EXIF, GPS or XMP written) or ``keep`` (the master's EXIF,
        orientation reset to 1 since it is applied).
    :param dpi: resolution written in the file (JPEG JFIF, PNG pHYs); unset: none written. Not for WebP.
    """

    parameter_root = "rendition"

    name: Annotated[str, BeforeValidator(_name)]
    preset: Annotated[str | None, unset_or(lambda value: str(value).strip().lower())] = None
    format: Annotated[OutputFormat, BeforeValidator(_format)] = "png"
    quality: Annotated[int, Field(ge=1, le=100), NUMBER] = 90
    lossless: Flag = False
    subsampling: Annotated[Subsampling, CHOICE] = "4:4:4"
    background: Annotated[str | None, unset_or(_background)] = None
    size: Annotated[
        tuple[int, int] | None, unset_or(functools.partial(parse_size, max_side=MAX_SIDE, square=True))
    ] = None
    aspect: Annotated[float | None, unset_or(_aspect), _text_schema("1:1", "4:3")] = None
    fit: Annotated[Fit, CHOICE] = "contain"
    margin: Annotated[Margin | None, unset_or(_margin), _text_schema("6%", "10px 20px", number=False)] = None
    fill: Annotated[float | None, unset_or(_fill), _text_schema(0.85, "85%")] = None
    crop: Flag = False
    max_size: Annotated[int | None, unset_or(_side)] = None
    min_size: Annotated[int | None, unset_or(_side)] = None
    upscale: Flag = False
    embed_srgb: Flag = True
    metadata: Annotated[MetadataPolicy, CHOICE] = "strip"
    dpi: Annotated[int | None, Field(ge=1, le=10_000), unset_or(_whole_number)] = None

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Self:
        problem = _conflict(self) or _format_limit(self)
        if problem is not None:
            parameter, message = problem
            raise OptionValueError(message, parameter=parameter)
        return self

    @property
    def resolved_background(self) -> str:
        """The background written: ``transparent`` or ``#rrggbb`` (unset: white for JPEG)."""
        if self.background is None:
            return "#ffffff" if self.format == "jpeg" else TRANSPARENT
        return self.background

    @property
    def background_rgb(self) -> tuple[int, int, int] | None:
        """The background colour as RGB, ``None`` when transparent."""
        background = self.resolved_background
        if background == TRANSPARENT:
            return None
        return int(background[1:3], 16), int(background[3:5], 16), int(background[5:7], 16)

    @property
    def max_side(self) -> int:
        """The largest side the rendition's canvas may have: :data:`MAX_SIDE`, or WebP's own limit."""
        return WEBP_MAX_SIDE if self.format == "webp" else MAX_SIDE

    @property
    def crops(self) -> bool:
        """True when the master is cropped to its subject first (``crop``, or ``fill`` set)."""
        return self.crop or self.fill is not None


def margin_shares(margin: Margin) -> tuple[float, float]:
    """
    The horizontal and vertical share of a canvas its percentage margins take (``0.12`` for 6 % a side).

    :param margin: the margin.
    """
    horizontal = sum(length.value for length in (margin.left, margin.right) if length.unit == "%")
    vertical = sum(length.value for length in (margin.top, margin.bottom) if length.unit == "%")
    return horizontal / 100, vertical / 100


def _conflict(spec: RenditionSpec) -> tuple[str, str] | None:  # noqa: PLR0911 - one return per rule
    """``(parameter, message)`` of the first inconsistency between a spec's fields, if any."""
    if spec.format == "jpeg" and spec.background == TRANSPARENT:
        return "background", "JPEG has no transparency: use png or webp, or a colour such as '#ffffff'"
    if spec.lossless and spec.format == "jpeg":
        return "lossless", "JPEG is always lossy: use png or webp for a lossless rendition"
    if spec.size is not None and spec.size[0] * spec.size[1] > MAX_PIXELS:
        return "size", f"{spec.size[0]}x{spec.size[1]} is over {MAX_PIXELS:,} pixels"
    if spec.size is not None and spec.aspect is not None:
        return "aspect", "give an exact size or an aspect ratio, not both"
    if spec.size is not None and (spec.max_size is not None or spec.min_size is not None):
        which = "max_size" if spec.max_size is not None else "min_size"
        return which, "an exact size fixes the canvas; max_size and min_size apply to a derived canvas"
    if spec.min_size is not None and spec.max_size is not None and spec.min_size > spec.max_size:
        return "min_size", f"{spec.min_size} is over max_size {spec.max_size}"
    if spec.fill is not None and spec.margin is not None:
        return "margin", "fill places the subject itself; give fill or a margin, not both"
    if spec.fill is not None and spec.fit != "contain":
        return "fit", "fill places the subject inside the canvas: fit must be contain"
    if spec.fit != "contain" and spec.size is None and spec.aspect is None:
        return "fit", f"fit={spec.fit} needs a canvas: give size or aspect"
    if spec.margin is not None and max(margin_shares(spec.margin)) >= 1:
        return "margin", "the percentages of opposite sides must add up to less than 100%"
    if spec.dpi is not None and spec.format == "webp":
        return "dpi", "WebP has no resolution field: use jpeg or png, or leave dpi unset"
    return None


def _format_limit(spec: RenditionSpec) -> tuple[str, str] | None:
    """``(parameter, message)`` when the spec asks for a canvas side its format cannot store."""
    if spec.max_side >= MAX_SIDE:
        return None
    limit = f"WebP images are at most {spec.max_side:,} px a side"
    if spec.size is not None and max(spec.size) > spec.max_side:
        return "size", f"{spec.size[0]}x{spec.size[1]}: {limit}; use png or jpeg, or a smaller size"
    if spec.min_size is not None and spec.min_size > spec.max_side:
        return "min_size", f"{spec.min_size}: {limit}; use png or jpeg, or a smaller min_size"
    return None


@dataclass(frozen=True)
class Rendition:
    """
    A validated rendition: its spec and the compliance rules it is checked against.

    :param spec: the rendition spec.
    :param rules: the preset's rules (the spec's own checks are added by the compliance step).
    :param source: where the preset's rules come from (its ``source`` text), ``None`` without a preset.
    """

    spec: RenditionSpec
    rules: tuple[Rule, ...] = ()
    source: str | None = None

    @property
    def name(self) -> str:
        """The rendition's name."""
        return self.spec.name

    @property
    def fingerprint(self) -> str:
        """A stable hash of the spec, the rules and :data:`RENDERER_VERSION`: a change means re-render."""
        rules = [rule.describe() for rule in self.rules]
        return options_fingerprint(self.spec.as_dict(), {"rules": rules, "renderer": RENDERER_VERSION})


@dataclass(frozen=True)
class Preset:
    """
    A named rendition template: spec fields, compliance rules and where they come from.

    :param name: the preset's name.
    :param fields: spec fields (any :class:`RenditionSpec` field but ``name``).
    :param rules: compliance rules a rendition made from it is checked against.
    :param source: the rule as published, quoted, with where it was read.
    :param urls: the pages it was read from.
    :param extends: the name of a preset whose fields and rules this one starts from.
    """

    name: str
    fields: Mapping[str, Any]
    rules: tuple[Rule, ...] = ()
    source: str = ""
    urls: tuple[str, ...] = ()
    extends: str | None = None


PresetLike = Preset | Mapping[str, Any]


def _user_preset(name: str, value: PresetLike, parameter: str) -> Preset:
    if isinstance(value, Preset):
        return value
    if not isinstance(value, Mapping):
        raise InvalidOptionError(parameter, f"preset {name!r} is {type(value).__name__}, not a mapping")
    fields = dict(value)
    extends = fields.pop("preset", None)
    return Preset(name=name, fields=fields, extends=None if extends is None else str(extends))


def preset_registry(
    presets: Mapping[str, PresetLike] | None = None, *, parameter: str = "presets"
) -> dict[str, Preset]:
    """
    The built-in presets plus the user's (a mapping of names to :class:`Preset` or to spec fields, which
    may name a ``preset`` to extend); a user preset may not take a built-in name.

    :param presets: the user-defined presets.
    :param parameter: the option's name, for errors.
    """
    from airflow_provider_bgremoval.renditions.presets import PRESETS

    registry = dict(PRESETS)
    for raw_name, value in (presets or {}).items():
        name = str(raw_name).strip().lower()
        if name in PRESETS:
            raise InvalidOptionError(f"{parameter}.{name}", "a built-in preset has this name; choose another")
        registry[name] = _user_preset(name, value, f"{parameter}.{name}")
    return registry


def _preset_chain(name: str, registry: Mapping[str, Preset], parameter: str) -> list[Preset]:
    """The preset called ``name`` and those it extends, the base first."""
    chain: list[Preset] = []
    current: str | None = name
    while current is not None:
        preset = registry.get(current.strip().lower())
        if preset is None:
            raise InvalidOptionError(parameter, f"unknown preset {current!r} (known: {_known(registry)})")
        if preset in chain:
            raise InvalidOptionError(parameter, f"preset {name!r} extends itself through {preset.name!r}")
        chain.insert(0, preset)
        current = preset.extends
    return chain


def resolve_rendition(
    value: RenditionSpec | Rendition | Mapping[str, Any],
    registry: Mapping[str, Preset] | None = None,
    *,
    parameter: str = "rendition",
) -> Rendition:
    """
    A :class:`Rendition` from a mapping of spec fields with an optional ``preset`` whose fields the
    mapping overrides (``{"name": "amazon", "preset": "amazon_main", "quality": 92}``), or from a spec
    (or its :meth:`~airflow_provider_bgremoval.options.OptionSet.as_dict`), which gets the rules of the
    preset it names.

    :param value: the rendition as given.
    :param registry: the presets by name (:func:`preset_registry`; default: the built-in ones).
    :param parameter: how the rendition is named in errors (``renditions[2]``).
    """
    if isinstance(value, Rendition):
        return value
    if isinstance(value, RenditionSpec):  # its fields are all set: the preset only brings its rules
        value = value.as_dict()
    registry = preset_registry() if registry is None else registry
    if isinstance(value, str):
        raise InvalidOptionError(parameter, _named_only(value, registry))
    if not isinstance(value, Mapping):
        raise InvalidOptionError(parameter, f"{type(value).__name__} is not a rendition spec or a mapping")
    fields = dict(value)
    preset_name = fields.pop("preset", None)
    chain = (
        [] if preset_name in (None, "") else _preset_chain(str(preset_name), registry, f"{parameter}.preset")
    )
    merged: dict[str, Any] = {}
    set_by: dict[str, str] = {}  # the preset each field not given here comes from
    for preset in chain:
        merged.update(preset.fields)
        set_by.update(dict.fromkeys(preset.fields, preset.name))
    merged.update(fields)
    if chain:
        merged["preset"] = chain[-1].name
    if merged.get("name") is None:  # pydantic's own error quoted its arguments, ArgsKwargs((), {...})
        example = f", such as {_example(chain[-1].name)}" if chain else ""
        raise InvalidOptionError(f"{parameter}.name", f"{_NAMELESS}{example}")
    try:
        spec = RenditionSpec(**merged)
    except InvalidOptionError as exc:
        raise _renamed(exc, parameter, {k: v for k, v in set_by.items() if k not in fields}) from None
    rules = tuple(rule for preset in chain for rule in preset.rules)
    source = " | ".join(preset.source for preset in chain if preset.source) or None
    return Rendition(spec, rules, source)


def _known(registry: Mapping[str, Preset]) -> str:
    """The presets' names, sorted, for errors."""
    return ", ".join(sorted(registry))


def _example(preset: str) -> str:
    """A rendition of ``preset`` named after it, as a user writes one."""
    return repr({"name": preset, "preset": preset})


def _named_only(text: str, registry: Mapping[str, Preset]) -> str:
    """Why a rendition given as a name (``"amazon_main"``) is refused, and how to give it."""
    name = text.strip().lower()
    if name in registry:
        return f"{text!r} is a preset's name, not a rendition: give a mapping such as {_example(name)}"
    return (
        f"{text!r} is not a rendition, nor a known preset (known: {_known(registry)}): give a mapping "
        f"of spec fields with a name, such as {{'name': 'square', 'aspect': '1:1'}}"
    )


def _renamed(exc: InvalidOptionError, parameter: str, set_by: Mapping[str, str]) -> InvalidOptionError:
    """
    ``exc`` with its ``rendition.<field>`` parameter named from ``parameter`` (``renditions[2].fill``),
    and the preset that set the field when the rendition did not (the value is not in the rendition).
    """
    prefix = f"invalid {exc.parameter!r}: "
    message = exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message
    field = exc.parameter.removeprefix(RenditionSpec.parameter_root).lstrip(".")
    if field in set_by:
        message = f"{message} (set by preset {set_by[field]!r})"
    return InvalidOptionError(f"{parameter}.{field}" if field else parameter, message)


def parse_renditions(
    values: Sequence[RenditionSpec | Rendition | Mapping[str, Any]] | None,
    presets: Mapping[str, PresetLike] | None = None,
) -> tuple[Rendition, ...]:
    """
    Validate a list of renditions (``None``: none) with unique names; errors name ``renditions[i].field``.

    :param values: the renditions as given.
    :param presets: user-defined presets by name (see :func:`preset_registry`).
    """
    if values is None:
        return ()
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise InvalidOptionError("renditions", f"{type(values).__name__} is not a list of renditions")
    registry = preset_registry(presets)
    renditions = tuple(
        resolve_rendition(value, registry, parameter=f"renditions[{index}]")
        for index, value in enumerate(values)
    )
    seen: set[str] = set()
    for index, rendition in enumerate(renditions):
        if rendition.name in seen:
            raise InvalidOptionError(f"renditions[{index}].name", f"{rendition.name!r} is used twice")
        seen.add(rendition.name)
    return renditions
