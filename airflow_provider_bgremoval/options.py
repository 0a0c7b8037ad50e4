"""The unified options (DESIGN.md decision 7), the option-model factory and the split (docs/options.md)."""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Any, ClassVar, Literal, TypeVar, cast, get_args

import pydantic
from PIL import ImageColor
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic import dataclasses as pydantic_dataclasses
from typing_extensions import Self, dataclass_transform

from airflow_provider_bgremoval.exceptions import InvalidOptionError, safe_excerpt

OutputFormat = Literal["png", "jpeg", "webp"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[str, str] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}

_LENGTH_RE = re.compile(r"^(\d+(?:\.\d+)?)(px|%)$")
_LENGTH_MAX = {"%": 100, "px": 10_000}
_WHOLE_NUMBER_RE = re.compile(r"[+-]?\d+")
_PARAM_RE = re.compile(r"^:param (\w+): (.*?)(?=^:param |\Z)", re.MULTILINE | re.DOTALL)
_SIZE_SEPARATORS = re.compile(r"[x\u00d7, ]+")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})
#: pydantic's error types for a key the model does not have
_UNKNOWN_KEY_ERRORS = frozenset({"unexpected_keyword_argument", "extra_forbidden"})
_T = TypeVar("_T")


class OptionValueError(ValueError):
    """
    A bad option value raised inside a validator; the model makes it an :class:`InvalidOptionError`.

    :param message: what is wrong, in plain words.
    :param parameter: the option at fault, relative to the validated model (``None``: the field).
    """

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


def _named(parameter: str, parse: Callable[[Any], _T], value: Any) -> _T:
    """Run a parser outside a model, naming ``parameter`` in the error."""
    try:
        return parse(value)
    except ValueError as exc:
        raise InvalidOptionError(parameter, str(exc)) from None


def _flag(value: Any) -> bool:
    text = str(value).strip().lower()  # True and False read as "true" and "false"
    if text not in _TRUE | _FALSE:
        raise ValueError(f"{value!r} is not a boolean (use true/false, yes/no, on/off or 1/0)")
    return text in _TRUE


def parse_flag(value: Any, *, parameter: str | None = None) -> bool:
    """
    Read a boolean the one way every option does (``""`` is false).

    :param value: a bool, or its text from a template or a connection extra.
    :param parameter: the option's name for an :class:`InvalidOptionError` (``None``: a ``ValueError``).
    """
    return _flag(value) if parameter is None else _named(parameter, _flag, value)


def _unset_if_blank(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return value


def unset_or(parse: Callable[[Any], Any]) -> BeforeValidator:
    """
    Metadata of an optional option read by ``parse``: ``None`` and blank text mean "not set".

    :param parse: the parser of a given value (raises :class:`ValueError` with a plain message).
    """
    return BeforeValidator(lambda value: None if _unset_if_blank(value) is None else parse(value))


def _normalised_name(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


#: A boolean option (see :func:`parse_flag`).
Flag = Annotated[bool, BeforeValidator(_flag)]
#: A numeric option: numeric text is accepted, a boolean is not (put ``Field(ge=…)`` before it).
NUMBER = BeforeValidator(_not_a_boolean)
#: An optional option whose type reads text itself: blank text means "not set" (put it last).
UNSET_IF_BLANK = BeforeValidator(_unset_if_blank)


def _choice_values(schema: Mapping[str, Any], handler: pydantic.GetJsonSchemaHandler) -> list[str]:
    """The enum values a (nullable, referenced) choice schema names."""
    if "$ref" in schema:
        schema = handler.resolve_ref_schema(dict(schema))
    nested = [_choice_values(item, handler) for item in schema.get("anyOf", ())]
    return [str(value) for value in schema.get("enum", ())] + [value for item in nested for value in item]


def _any_case(name: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in name)


class _AnyCaseSchema:
    """:data:`ANY_CASE_SCHEMA`."""

    def __get_pydantic_json_schema__(
        self, core_schema: Any, handler: pydantic.GetJsonSchemaHandler
    ) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        values = _choice_values(schema, handler)
        optional = {"type": "null"} in schema.get("anyOf", ())
        names = "|".join(map(_any_case, values))
        pattern = rf"^\s*(?:{names}){'?' if optional else ''}\s*$"
        return {"anyOf": [schema, {"type": "string", "pattern": pattern}]} if values else schema


def size_json_schema(*, square: bool = False, max_side: int | None = None) -> WithJsonSchema:
    """
    The JSON schema of an optional size read by :func:`parse_size`: a pair, its text, or ``null``.

    :param square: one number (``512`` or ``"512"``) means a square.
    :param max_side: the largest allowed width or height.
    """
    side = {"type": "integer", "minimum": 1, **({"maximum": max_side} if max_side else {})}
    pair = {"type": "array", "prefixItems": [side, side], "minItems": 2, "maxItems": 2}
    second = r"(?:[xX\u00d7, ]+\d+)?" if square else r"[xX\u00d7, ]+\d+"
    text = {"type": "string", "pattern": rf"^\s*\d+{second}\s*$"}
    forms = [pair, side, text] if square else [pair, text]
    examples = ["800x600", 512] if square else ["1920x1080", "1920 1080"]
    return WithJsonSchema({"anyOf": [*forms, {"type": "null"}], "examples": examples})


#: A ``Literal`` choice: names compare without case or surrounding spaces.
CHOICE = BeforeValidator(_normalised_name)
#: The JSON schema of a :data:`CHOICE` takes its names in any case with spaces around them, and blank
#: text when the option is optional (the exact names stay the schema's first form, for forms)
ANY_CASE_SCHEMA = _AnyCaseSchema()
#: Optional free text: surrounding spaces are dropped and blank text means "not set".
OptionText = Annotated[
    Annotated[str, pydantic.StringConstraints(strip_whitespace=True)] | None, UNSET_IF_BLANK
]


def _whole_number(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if isinstance(value, bool) or not _WHOLE_NUMBER_RE.fullmatch(text):
        raise ValueError(f"{value!r} is not a whole number")
    return int(text)


def load_list(value: Any, parameter: str) -> Any:
    """
    ``value``, or the list (or mapping) a rendered template's text holds: JSON, or a Python literal as
    Jinja prints one (``"[1000, 1000]"``, ``"{'pixian_default': 5}"``).

    :param value: the parameter value.
    :param parameter: the parameter name used in the error message.
    """
    return _named(parameter, _literal, value)


def _literal(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    with contextlib.suppress(ValueError):
        return json.loads(value)
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ValueError(f"{value[:60]!r} is not a list or mapping (JSON or a Python literal)") from None


def parse_size(value: Any, *, max_side: int | None = None, square: bool = False) -> tuple[int, int]:
    """
    Read a ``(width, height)`` pair: ``(800, 600)``, ``"800x600"``, ``"800×600"``, ``"800 600"``, or the
    text a template renders a pair as (``"[800, 600]"``, see :func:`load_list`).

    :param value: the size as given.
    :param max_side: the largest allowed width or height (``None``: no upper bound).
    :param square: one number (``512`` or ``"512"``) means a square.
    """
    given = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(given, str) and given.lstrip().startswith(("[", "(")):  # a rendered list or tuple
        given = _literal(given.strip())
    if isinstance(given, str):
        parts: list[Any] = _SIZE_SEPARATORS.split(given.strip().lower())
        parts = parts * 2 if square and len(parts) == 1 else parts
    else:
        parts = list(given) if isinstance(given, Sequence) else []
    if len(parts) != 2:
        raise ValueError(f"{value!r} is not WIDTHxHEIGHT")
    width, height = (_whole_number(part) for part in parts)
    for side in (width, height):
        if side < 1:
            raise ValueError(f"{side} is below 1")
        if max_side is not None and side > max_side:
            raise ValueError(f"{side} is over {max_side:,} pixels")
    return width, height


def _color(value: Any) -> str:
    try:
        rgb = ImageColor.getrgb(str(value).strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is not a colour (use '#rrggbb', '#rgb', 'rgb(r, g, b)' or a CSS name)"
        ) from None
    if len(rgb) == 4 and rgb[3] != 255:
        raise ValueError("a background colour must be opaque")
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def _format(value: Any) -> OutputFormat:
    text = str(value).strip().lower()
    fmt = {"jpg": "jpeg"}.get(text, text)
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"{value!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    return fmt


def _known_keys(model: Any, path: Sequence[str]) -> list[str]:
    """The keys the model at ``path`` (``[]``: ``model`` itself, else a nested model) accepts."""
    for name in path:
        annotation = model.__pydantic_fields__[name].annotation
        types = (annotation, *get_args(annotation))
        model = next((kind for kind in types if pydantic.dataclasses.is_pydantic_dataclass(kind)), None)
        if model is None:
            return []
    return list(model.__pydantic_fields__)


def _invalid_option(error: ValidationError, model: type[OptionModel]) -> InvalidOptionError:
    """The error for a model's first error, named by the path the user wrote (``shadow.opacity``)."""
    detail = error.errors(include_url=False)[0]
    path = [model.parameter_root, *(str(part) for part in detail["loc"])]
    if detail["type"] in _UNKNOWN_KEY_ERRORS:
        message = f"unknown option {path[-1]!r} (expected one of {', '.join(_known_keys(model, path[1:-1]))})"
        if len(path) == 2 and model.unknown_key_parameter is not None:
            return InvalidOptionError(model.unknown_key_parameter.format(key=path[1]), message)
    elif isinstance(cause := detail.get("ctx", {}).get("error"), ValueError):
        if isinstance(cause, OptionValueError) and cause.parameter:
            path.append(cause.parameter)
        message = str(cause)
    else:
        text = str(detail["msg"])
        message = f"{text[:1].lower()}{text[1:]} (got {safe_excerpt(repr(detail['input']), 60)})"
    return InvalidOptionError(".".join(part for part in path if part) or "vendor_options", message)


class OptionModel:
    """What every option model shares (add it with :func:`option_model`): errors and a JSON schema."""

    #: the name a user gives this object, before its fields' names in errors (``"shadow"``)
    parameter_root: ClassVar[str] = ""
    #: how an unknown top-level key is named in errors (``{key}`` is the key); ``None``: by its path
    unknown_key_parameter: ClassVar[str | None] = None

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]:
        """The JSON schema of these options (for docs and Airflow trigger forms)."""
        return pydantic.TypeAdapter(cls).json_schema()


#: per options class, its instance with every field at its default: made (and validated) once (frozen)
_DEFAULTS: dict[type[OptionSet], OptionSet] = {}


class OptionSet(OptionModel):
    """The options of one call (unified or a vendor's): ``None`` from a user means the defaults."""

    #: field -> {value: recorded as}: values that change only how the result travels, never the
    #: result (e.g. Pixian's ``delta_png="auto"``); :meth:`as_dict` records each as the value making
    #: the same output, so an output made with or without them has the same options fingerprint
    transfer_only: ClassVar[Mapping[str, Mapping[Any, Any]]] = {}

    @classmethod
    def coerce(cls, value: object) -> Self:
        """
        The options from what a user passes: an instance (as is: validated when it was made, not again
        on each of a call's coercions), a mapping of the fields or ``None`` (the defaults, made once).

        :param value: the options as given.
        """
        if value is None:
            if cls not in _DEFAULTS:  # (two threads may both make it: either is the defaults)
                _DEFAULTS[cls] = cls()
            return cast(Self, _DEFAULTS[cls])
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            message = f"{type(value).__name__} is not {cls.__name__} or a mapping"
            raise InvalidOptionError(cls.parameter_root or "vendor_options", message)
        return cast(Self, validate_as(cls, cls, value))

    def as_dict(self) -> dict[str, Any]:
        """
        Primitive, canonical form (for option fingerprints, manifests and XCom): pairs as lists, a
        :class:`Margin` as its text.
        """
        data = asdict(cast(Any, self))
        for name, recorded in self.transfer_only.items():
            if data[name] in recorded:
                data[name] = recorded[data[name]]  # transfer-only: recorded as the same output
        for name in data:
            if isinstance(value := getattr(self, name), Margin):
                data[name] = str(value)
        return {name: list(value) if isinstance(value, tuple) else value for name, value in data.items()}


class EncodedOptionSet(OptionSet):
    """The options of one encoded image: its MIME type and extension follow from its format field."""

    #: the field naming the format (``png``, ``jpeg``, ``webp``)
    format_field: ClassVar[str] = "format"

    @property
    def content_type(self) -> str:
        """MIME type of the image."""
        return CONTENT_TYPES[getattr(self, self.format_field)]

    @property
    def extension(self) -> str:
        """File extension of the image (with the dot)."""
        return EXTENSIONS[getattr(self, self.format_field)]


def validate_as(model: type[OptionModel], annotation: Any, value: Any) -> Any:
    """
    Validate ``value`` as ``annotation`` (a model, or a field type holding one), errors named for ``model``.

    :param model: the option model the errors are named for.
    :param annotation: the type to validate as.
    :param value: the user's value (a mapping is copied to a plain dict first).
    """
    try:
        return _adapter(annotation).validate_python(dict(value) if isinstance(value, Mapping) else value)
    except ValidationError as exc:
        raise _invalid_option(exc, model) from None


@functools.cache
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(annotation)


def _describe_from_docstring(schema: dict[str, Any], model: type[Any]) -> None:
    """Titles and descriptions for a model's JSON schema, from its Sphinx docstring."""
    doc = inspect.cleandoc(model.__doc__ or "")
    schema["description"] = " ".join(doc.split("\n\n", 1)[0].split())
    properties = schema.get("properties", {})
    for name, text in _PARAM_RE.findall(doc):
        if name in properties:
            properties[name]["description"] = " ".join(text.split())


_MODEL_CONFIG = ConfigDict(extra="forbid", json_schema_extra=_describe_from_docstring)


@dataclass_transform(frozen_default=True)
def option_model(cls: type[_T]) -> type[_T]:
    """
    Make ``cls`` (an :class:`OptionModel`) a frozen pydantic dataclass (docs/options.md).

    :param cls: the class with the option fields (annotated with their types and validators).
    """
    model = cast("type[OptionModel]", pydantic_dataclasses.dataclass(frozen=True, config=_MODEL_CONFIG)(cls))
    validate = model.__init__

    def __init__(self: OptionModel, *args: Any, **kwargs: Any) -> None:
        try:
            validate(self, *args, **kwargs)
        except ValidationError as exc:
            raise _invalid_option(exc, type(self)) from None

    model.__init__ = functools.update_wrapper(__init__, validate)  # type: ignore[method-assign,assignment]
    return cast("type[_T]", model)


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
        """
        Pixels for this length, with percentages taken of ``reference`` pixels.

        :param reference: the length in pixels a percentage is of.
        """
        return round(self.value if self.unit == "px" else reference * self.value / 100.0)

    def __str__(self) -> str:
        number = int(self.value) if self.value == int(self.value) else self.value
        return f"{number}{self.unit}"


def _length(part: str) -> Length:
    match = _LENGTH_RE.match(part)
    if not match:
        raise ValueError(f"{part!r} is not a length like '5%' or '10px'")
    value, unit = float(match.group(1)), cast(Literal["px", "%"], match.group(2))
    if value > _LENGTH_MAX[unit]:
        raise ValueError(f"{part!r} is over {_LENGTH_MAX[unit]}{unit}")
    return Length(value, unit)


#: CSS shorthand: which of the given lengths is top, right, bottom and left
_CSS_SIDES = {1: (0, 0, 0, 0), 2: (0, 1, 0, 1), 3: (0, 1, 2, 1), 4: (0, 1, 2, 3)}


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
    def parse(cls, text: str) -> Margin:
        """
        Parse ``"5%"``, ``"10px 5%"``, ``"1px 2px 3px"`` or ``"1px 2px 3px 4px"``.

        :param text: the margin as given (an :class:`InvalidOptionError` names ``margin``).
        """
        return _named("margin", _margin, text)

    def __str__(self) -> str:
        return f"{self.top} {self.right} {self.bottom} {self.left}"


def _margin(text: Any) -> Margin:
    if isinstance(text, Margin):
        return text
    parts = str(text).split()
    if len(parts) not in _CSS_SIDES:
        raise ValueError(f"expected 1 to 4 lengths like '5%' or '10px', got {text!r}")
    lengths = [_length(part) for part in parts]
    return Margin(*(lengths[index] for index in _CSS_SIDES[len(lengths)]))


@option_model
class RemovalOptions(EncodedOptionSet):
    """
    The unified background-removal options (docs/options.md), validated and normalised on creation.

    :param output_format: ``png``, ``jpeg`` (or ``jpg``) or ``webp``.
    :param background_color: ``#rrggbb``, ``#rgb``, ``rgb(r, g, b)`` or a CSS name; ``None``: transparent.
    :param crop: crop to the subject.
    :param margin: margin around the cropped subject (requires ``crop``), a :class:`Margin` or its text.
    :param max_size: ``(width, height)``, ``"800x600"`` or one number (a square) to fit the result into.
    :param jpeg_quality: JPEG/WebP quality for locally encoded lossy outputs (1–100).
    """

    unknown_key_parameter = "{key}"
    format_field = "output_format"

    output_format: Annotated[OutputFormat, BeforeValidator(_format)] = "png"
    background_color: Annotated[str | None, unset_or(_color)] = None
    crop: Flag = False
    margin: Annotated[
        Margin | None,
        unset_or(_margin),
        WithJsonSchema({"type": ["string", "null"], "examples": ["5%", "10px 20px"]}),
    ] = None
    max_size: Annotated[
        tuple[int, int] | None,
        unset_or(functools.partial(parse_size, max_side=20_000, square=True)),
        size_json_schema(square=True, max_side=20_000),
    ] = None
    jpeg_quality: Annotated[int, Field(ge=1, le=100), NUMBER] = 90

    @pydantic.model_validator(mode="after")
    def _margin_needs_crop(self) -> Self:
        if self.margin is not None and not self.crop:
            raise OptionValueError("a margin only applies when crop=True", parameter="margin")
        return self

    @classmethod
    def create(cls, **options: Any) -> RemovalOptions:
        """
        The options from user input (the constructor, kept for callers written before it validated).

        :param options: the fields, as the constructor takes them (text from templates accepted).
        """
        return cls(**options)

    @property
    def effective_background(self) -> str | None:
        """The background the result ends on: JPEG without a colour is flattened on white."""
        if self.background_color is None and self.output_format == "jpeg":
            return "#ffffff"
        return self.background_color


def options_fingerprint(*parts: Mapping[str, Any] | None) -> str:
    """
    A stable short hash of option mappings, recorded on outputs to detect finished work.

    :param parts: the option mappings (``None`` counts as empty).
    """
    canonical = json.dumps([p or {} for p in parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VendorCapabilities:
    """
    What a vendor does natively with the unified options.

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
    :param output_format: re-encode to this format (``None``: the format asked of the vendor).
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
class OptionSplit:
    """
    The split of :class:`RemovalOptions` between a vendor and local post-processing.

    :param native: the options the vendor is asked to honour itself.
    :param local: the steps done locally afterwards.
    """

    native: RemovalOptions
    local: LocalSteps


@functools.lru_cache(maxsize=64)
def split_options(options: RemovalOptions, caps: VendorCapabilities) -> OptionSplit:
    """
    Split ``options`` into what the vendor does natively and what is done locally (worked out once for
    equal options and capabilities: the values are frozen, and a batch's calls share them).

    :param options: the unified options.
    :param caps: what the vendor does natively.
    """
    background = options.effective_background
    local_crop = options.crop and (options.margin is not None or not caps.crop)
    local_background = background is not None and (local_crop or not caps.background_color)
    local_pixels = local_crop or local_background or options.max_size is not None
    local_format = (
        options.output_format if local_pixels or options.output_format not in caps.output_formats else None
    )
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
    return OptionSplit(native=native, local=local)
