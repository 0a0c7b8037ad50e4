"""Pixelcut's wire format (``https://api.developer.pixelcut.ai``, VENDORS.md §1): requests, replies, errors.

How options and nested objects are encoded, and why: docs/vendors/pixelcut.md.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from decimal import Decimal
from typing import Annotated, Any, Literal, cast

import httpx
from pydantic import BeforeValidator, Field, model_validator
from typing_extensions import Self

from airflow_provider_bgremoval.exceptions import BgRemovalError, InvalidOptionError, VendorRequestError
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.options import (
    ANY_CASE_SCHEMA,
    CHOICE,
    NUMBER,
    UNSET_IF_BLANK,
    Flag,
    OptionModel,
    OptionSet,
    OptionText,
    OptionValueError,
    RemovalOptions,
    VendorCapabilities,
    option_model,
    parse_flag,
    unset_or,
    validate_as,
)
from airflow_provider_bgremoval.results import Balance, ImageResult
from airflow_provider_bgremoval.retry import RetryPolicy
from airflow_provider_bgremoval.vendors.base import (
    MEGABYTE,
    ImageInput,
    ResultLocation,
    VendorOptionsInput,
    VendorSpec,
    VendorWire,
    WireRequest,
    form_fields,
    is_http_url,
    json_body,
    media_type,
)

#: How a result comes back: the image bytes (``Accept: image/*``) or a temporary ``result_url``.
ResultDelivery = Literal["bytes", "url"]
_ACCEPT: dict[str, str] = {"bytes": "image/*", "url": "application/json"}
_MARGIN_RE = re.compile(r"^(\d+)(px|%)$")
_MARGIN_FIELDS = ("margin", "margin_left", "margin_right", "margin_top", "margin_bottom")
#: "Max size: 25MB" (remove- and generate-background), read as 25,000,000 bytes (:data:`MEGABYTE`).
MAX_UPLOAD_BYTES = 25 * MEGABYTE
SHADOW_SURCHARGE = Decimal(3)
GENERATE_COST = Decimal(1)

#: The light source Pixelcut documents as defaults (``light_source.size`` and ``position``).
DEFAULT_LIGHT: dict[str, float] = {"light_size": 0.3, "x": -0.3, "y": -0.6, "z": 0.7}
_LIGHT_FIELDS = tuple(DEFAULT_LIGHT)

#: A fraction, 0-1 (opacity, light size, canvas centres).
Fraction = Annotated[float | None, Field(ge=0, le=1, allow_inf_nan=False), NUMBER, UNSET_IF_BLANK]
#: A light position from the image centre, -1..1.
Offset = Annotated[float | None, Field(ge=-1, le=1, allow_inf_nan=False), NUMBER, UNSET_IF_BLANK]


def _vendor_mapping(value: Any, parameter: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise OptionValueError(f"{type(value).__name__} is not a mapping", parameter=parameter)
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise OptionValueError(
            f"unknown option {unknown[0]!r} (expected one of {', '.join(keys)})",
            parameter=f"{parameter}.{unknown[0]}",
        )
    return value


@option_model
class PixelcutShadow(OptionModel):
    """
    Pixelcut's AI shadow (``shadow``; 3 extra credits). With no light field set Pixelcut estimates it
    (``shadow: true``); any light field sends a light source, the others at the documented defaults.
    A mapping may give the light in the vendor's ``light_source`` form (docs/vendors/pixelcut.md).

    :param enabled: render the shadow.
    :param opacity: final shadow opacity, 0-1; ``None`` leaves it to the vendor (default 0.5).
    :param light_size: apparent size/softness of the light, 0-1 (vendor default 0.3).
    :param x: light position from the image centre, -1..1 (vendor default -0.3).
    :param y: light position from the image centre, -1..1 (vendor default -0.6).
    :param z: light height above the subject, 0..2 (vendor default 0.7).
    """

    parameter_root = "shadow"

    enabled: Flag = True
    opacity: Fraction = None
    light_size: Fraction = None
    x: Offset = None
    y: Offset = None
    z: Annotated[float | None, Field(ge=0, le=2, allow_inf_nan=False), NUMBER, UNSET_IF_BLANK] = None

    @model_validator(mode="before")
    @classmethod
    def _flatten_light_source(cls, data: Any) -> Any:
        """Read the vendor's ``light_source`` object into the flat light fields."""
        if not isinstance(data, Mapping) or "light_source" not in data:
            return data
        flat = {name: item for name, item in data.items() if name != "light_source"}
        if data["light_source"] is None:
            return flat
        light = _vendor_mapping(data["light_source"], "light_source", ("size", "position"))
        position = _vendor_mapping(light.get("position") or {}, "light_source.position", ("x", "y", "z"))
        clash = sorted(name for name in _LIGHT_FIELDS if name in flat)
        if clash:
            raise OptionValueError("give the light either flat or as light_source", parameter=clash[0])
        return {**flat, "light_size": light.get("size"), **{axis: position.get(axis) for axis in "xyz"}}

    @classmethod
    def coerce(cls, value: object) -> PixelcutShadow | None:
        """
        Build a shadow from user input.

        :param value: ``None``/``False`` (no shadow), ``True`` (automatic), a mapping or a shadow.
        """
        return cast("PixelcutShadow | None", validate_as(cls, ShadowInput, value))

    @property
    def automatic(self) -> bool:
        """True when Pixelcut estimates the shadow itself (no light source is sent)."""
        return all(getattr(self, name) is None for name in _LIGHT_FIELDS)

    def light_source(self) -> dict[str, Any] | None:
        """The vendor's ``light_source`` object (documented defaults filled in), or ``None`` if automatic."""
        if self.automatic:
            return None
        light = {
            name: DEFAULT_LIGHT[name] if getattr(self, name) is None else getattr(self, name)
            for name in _LIGHT_FIELDS
        }
        return {"size": light.pop("light_size"), "position": light}

    def as_wire(self) -> bool | dict[str, Any]:
        """The vendor's ``shadow`` value: ``true`` (automatic, vendor's opacity), else the object."""
        if self.enabled and self.automatic and self.opacity is None:
            return True
        wire = {"enabled": self.enabled, "opacity": self.opacity, "light_source": self.light_source()}
        return {name: value for name, value in wire.items() if value is not None}


def _shadow_switch(value: Any) -> Any:
    """A boolean (or its text) switches the automatic shadow on or off; anything else is read as a shadow."""
    if isinstance(value, (bool, str)):
        return {} if parse_flag(value) else None
    return value


#: What a user may give as a shadow (see :meth:`PixelcutShadow.coerce`).
ShadowInput = Annotated[PixelcutShadow | None, BeforeValidator(_shadow_switch)]


def _native_margin(value: Any) -> str:
    text = str(value).strip()
    match = _MARGIN_RE.match(text)
    if not match:
        raise ValueError(f"{value!r} is not Pixelcut's 'N%' (0-49) or 'Npx' syntax")
    if match.group(2) == "%" and int(match.group(1)) > 49:
        raise ValueError(f"{text} is over Pixelcut's 49% maximum")
    return text


#: One of Pixelcut's native margins: ``"N%"`` (0-49) or ``"Npx"``.
NativeMargin = Annotated[str | None, unset_or(_native_margin)]
Delivery = Annotated[ResultDelivery, CHOICE]


@option_model
class PixelcutOptions(OptionSet):
    """
    Pixelcut-only remove-background options. The native margins (a percentage of the *image*) only
    apply with a native crop: ``crop=True`` and no unified ``margin``.

    :param shadow: AI shadow (:meth:`PixelcutShadow.coerce` input), or ``None`` for none.
    :param margin: native margin on every side: ``"N%"`` (0-49) or ``"Npx"`` (N ≥ 0).
    :param margin_left: native left margin, overrides ``margin`` on that side.
    :param margin_right: native right margin.
    :param margin_top: native top margin.
    :param margin_bottom: native bottom margin.
    :param result_delivery: ``"bytes"`` (default) or ``"url"`` (a ``result_url`` the hook downloads).
    """

    unknown_key_parameter = "vendor_options.{key}"

    shadow: ShadowInput = None
    margin: NativeMargin = None
    margin_left: NativeMargin = None
    margin_right: NativeMargin = None
    margin_top: NativeMargin = None
    margin_bottom: NativeMargin = None
    result_delivery: Delivery = "bytes"

    @property
    def shadow_wire(self) -> bool | dict[str, Any] | None:
        """The ``shadow`` value sent; ``None`` when no shadow is rendered (nor paid for)."""
        return self.shadow.as_wire() if self.shadow is not None and self.shadow.enabled else None

    @property
    def native_margins(self) -> dict[str, str]:
        """The native margin fields that are set, by wire name."""
        return {name: getattr(self, name) for name in _MARGIN_FIELDS if getattr(self, name) is not None}

    def as_dict(self) -> dict[str, Any]:
        return {
            "shadow": self.shadow_wire,
            **self.native_margins,
            "result_delivery": self.result_delivery,
        }


class PixelcutScene(str, enum.Enum):
    """Pixelcut's preset scenes for generate-background."""

    MARBLE = "marble"
    WOOD = "wood"
    INDUSTRIAL = "industrial"
    LINEN = "linen"
    BRICK = "brick"
    COUNTER = "counter"


@option_model
class PixelcutImageTransform(OptionModel):
    """
    Where the subject sits on the generated 1024x1024 canvas (``image_transform``); unset fields are
    not sent, so the vendor's defaults apply.

    :param scale: scale of the subject; 1 fits the longest edge to the canvas. Must be > 0.
    :param x_center: horizontal centre on the canvas, 0-1 (vendor default 0.5).
    :param y_center: vertical centre on the canvas, 0-1 (vendor default 0.5).
    """

    parameter_root = "image_transform"

    scale: Annotated[float | None, Field(gt=0, allow_inf_nan=False), NUMBER, UNSET_IF_BLANK] = None
    x_center: Fraction = None
    y_center: Fraction = None

    def as_wire(self) -> dict[str, float]:
        """The vendor's ``image_transform`` object (set fields only)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@option_model
class PixelcutGenerateOptions(OptionSet):
    """
    Options of ``POST /v1/generate-background`` (a 1024x1024 JPEG). A ``scene`` with a prompt is
    refused: Pixelcut would silently ignore the prompt.

    :param scene: a :class:`PixelcutScene` (any case); ``""`` means none.
    :param prompt: description of the wanted scene.
    :param negative_prompt: comma-separated attributes to avoid.
    :param image_transform: placement of the subject on the canvas (or a mapping of its fields).
    :param result_delivery: ``"bytes"`` (default) or ``"url"``.
    """

    scene: Annotated[PixelcutScene | None, CHOICE, UNSET_IF_BLANK, ANY_CASE_SCHEMA] = None
    prompt: OptionText = None
    negative_prompt: OptionText = None
    image_transform: PixelcutImageTransform | None = None
    result_delivery: Delivery = "bytes"

    @model_validator(mode="after")
    def _scene_or_prompt(self) -> Self:
        for name in ("prompt", "negative_prompt"):
            if self.scene is not None and getattr(self, name) is not None:
                raise OptionValueError(
                    f"Pixelcut ignores {name} when a scene is set; give either scene or {name}",
                    parameter=name,
                )
        return self

    def wire_fields(self) -> dict[str, Any]:
        """The request fields (nested ``image_transform`` as an object)."""
        body = {
            "image_transform": self.image_transform.as_wire() if self.image_transform else None,
            "scene": self.scene.value if self.scene else None,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
        }
        return {name: value for name, value in body.items() if value}

    def as_dict(self) -> dict[str, Any]:
        return {**self.wire_fields(), "result_delivery": self.result_delivery}


def _is_json_reply(content_type: str, content: bytes) -> bool:
    """A JSON reply: typed JSON, or not typed an image and its body a JSON object's first character."""
    if content_type == "application/json" or content_type.endswith("+json"):
        return True
    return not content_type.startswith("image/") and content.lstrip()[:1] == b"{"


PIXELCUT_SPEC = VendorSpec(
    name="pixelcut",
    default_base_url="https://api.developer.pixelcut.ai",
    capabilities=VendorCapabilities(output_formats=frozenset({"png"}), background_color=False, crop=True),
    limits=InputLimits(max_bytes=MAX_UPLOAD_BYTES, min_side=64, max_side=6000),
    # the docs' sample: min(5 s, 250 ms·2^attempt + U(0, 250 ms)), at most 5 retries
    retry_policy=RetryPolicy(max_attempts=6, initial_backoff=0.25, max_backoff=5.0, jitter=0.25),
    # "commonly 5 requests per second per account" (developer-guide/core-concepts/rate-limits)
    requests_per_second=5.0,
    # no timeout is documented; generate-background runs an image model, so allow two idle minutes
    default_timeout=120.0,
    api_key_header="X-API-KEY",
    input_error_codes=frozenset(
        {
            "malformed_image",
            "unsupported_image_format",
            "file_size_too_large",
            "resolution_too_high",
            "unknown_foreground",
        }
    ),
    credit_error_codes=frozenset({"insufficient_api_credits"}),
    auth_error_codes=frozenset({"invalid_auth_token"}),
    remove_path="/v1/remove-background",
    balance_path="/v1/credits",
    options=PixelcutOptions,
    # a JSON reply is a result_url whatever was asked for (parse_image_reply), downloaded with retries
    result_download=True,
)
GENERATE_PATH = "/v1/generate-background"


class PixelcutWire(VendorWire):
    """Pixelcut's wire format."""

    spec = PIXELCUT_SPEC

    def _image_request(
        self, path: str, image: ImageInput, body: Mapping[str, Any], delivery: ResultDelivery
    ) -> WireRequest:
        request = WireRequest("POST", path, billed=True, headers={"Accept": _ACCEPT[delivery]})
        if image.data is None:
            set_fields = {name: value for name, value in body.items() if value is not None}
            return replace(request, json={"image_url": image.url, **set_fields})
        return replace(
            request, data=form_fields(body), files={"image": (image.filename, image.data, image.content_type)}
        )

    def remove_background_request(
        self, image: ImageInput, options: RemovalOptions, vendor_options: VendorOptionsInput = None
    ) -> WireRequest:
        extra = PixelcutOptions.coerce(vendor_options)
        self.check_native(options, self.spec.capabilities)
        margins = extra.native_margins
        if margins and not options.crop:
            raise InvalidOptionError(
                next(iter(margins)),
                "Pixelcut's native margin only applies with crop=True and without the unified margin "
                "(which is applied locally); use one of the two",
            )
        body = {
            "format": "png",
            "shadow": extra.shadow_wire,
            **({"crop": True, **margins} if options.crop else {}),
        }
        return self._image_request(self.spec.remove_path, image, body, extra.result_delivery)

    def generate_background_request(self, image: ImageInput, options: PixelcutGenerateOptions) -> WireRequest:
        """
        Build ``POST /v1/generate-background``.

        :param image: the subject (bytes as multipart, a URL as JSON).
        :param options: the generate options.
        """
        return self._image_request(GENERATE_PATH, image, options.wire_fields(), options.result_delivery)

    def parse_image_reply(self, response: httpx.Response) -> ImageResult | ResultLocation:
        """
        Read a remove- or generate-background reply: the image bytes, or a JSON ``result_url``. A JSON
        object is read as one whatever the reply's type says, unless it is typed an image (a proxy or
        gateway retyping the JSON ``Accept`` asked for as ``text/plain`` or nothing at all left the
        paid result's URL to be decoded as an image, and lost).

        :param response: a 2xx reply.
        """
        content_type = media_type(response)
        if _is_json_reply(content_type, response.content):
            body = json_body(response)
            url = body.get("result_url") if isinstance(body, dict) else None
            if not isinstance(url, str) or not is_http_url(url):
                raise self.invalid_reply(
                    f"expected a JSON object with an http(s) result_url, got {self.text_excerpt(response)!r}"
                )
            return ResultLocation(url=url)
        return ImageResult(
            content=response.content, content_type=content_type or "image/png", vendor=self.spec.name
        )

    def parse_balance(self, response: httpx.Response) -> Balance:
        body, numbers = self.balance_numbers(response, "credits_remaining")
        return self.balance(numbers["credits_remaining"], raw=body)

    def error_fields(self, body: dict[str, Any], response: httpx.Response) -> tuple[Any, str, Any] | None:
        if "error" not in body and "error_code" not in body:
            return None
        message = body.get("error")
        return body.get("error_code"), self.quote(str(message)) if message not in (None, "") else "", None

    def error_type(self, status: int, code: str | None, message: str) -> type[BgRemovalError]:
        """
        As the shared rules, but a 403 is no bad key by its status alone: Pixelcut documents one 403,
        ``insufficient_api_credits`` (out of credits), and answers a bad key 401 ``invalid_auth_token``.
        A 403 without either code (a gateway or firewall block, a plan limit) fails this image, not
        retried (:class:`VendorRequestError`); read as ``auth_failed`` it halted the batch.
        """
        spec = self.spec
        if status == 403 and code not in spec.credit_error_codes | spec.auth_error_codes:
            return VendorRequestError
        return super().error_type(status, code, message)

    @classmethod
    def estimate_cost(cls, vendor_options: VendorOptionsInput = None) -> Decimal:
        extra = PixelcutOptions.coerce(vendor_options)
        return cls.spec.base_cost + (SHADOW_SURCHARGE if extra.shadow_wire is not None else Decimal(0))

    @classmethod
    def estimate_generate_cost(cls) -> Decimal:
        """Credits one generate-background call is expected to cost (undocumented; 1 by design)."""
        return GENERATE_COST
