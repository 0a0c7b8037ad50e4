"""Pixian.AI v2 wire format (https://pixian.ai/api, VENDORS.md §3): remove-background and account.

How the unified options map, and how ``delta_png`` calls are planned locally: docs/vendors/pixian.md.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, cast
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import BeforeValidator, Field, model_validator
from typing_extensions import Self

from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InputRejectedError,
    InvalidOptionError,
    OutOfCreditsError,
    VendorRequestError,
)
from airflow_provider_bgremoval.imaging import ImageInfo, InputLimits, encode, read_header
from airflow_provider_bgremoval.options import (
    CHOICE,
    NUMBER,
    UNSET_IF_BLANK,
    Flag,
    OptionSet,
    OptionValueError,
    RemovalOptions,
    VendorCapabilities,
    option_model,
    parse_flag,
    parse_size,
    size_json_schema,
    split_options,
    unset_or,
)
from airflow_provider_bgremoval.results import AccountState, Balance, ImageResult
from airflow_provider_bgremoval.retry import RetryPolicy
from airflow_provider_bgremoval.vendors.base import (
    MEGABYTE,
    ImageInput,
    VendorOptionsInput,
    VendorSpec,
    VendorWire,
    WireRequest,
    basic_auth_header,
    form_fields,
    media_type,
    parse_charge,
    parse_number,
)
from airflow_provider_bgremoval.vendors.delta_png import DeltaPngError, decode_delta_png

#: ``image.base64`` may hold at most "1 megabyte" of base64 text (:data:`~.base.MEGABYTE` characters)
MAX_BASE64_CHARS = MEGABYTE
#: ``max_pixels`` range and default (the docs)
MIN_MAX_PIXELS = 100
MAX_MAX_PIXELS = 25_000_000
#: largest upload Pixian accepts, width x height (the docs)
UPLOAD_MAX_PIXELS = 32_000_000
#: the byte cap derived from it: 32 MP x 4 bytes (undocumented; docs/vendors/pixian.md)
UPLOAD_MAX_BYTES = UPLOAD_MAX_PIXELS * 4

#: Image types other than the ones ``image.url`` documents (BMP, GIF, JPEG, PNG, TIFF): refused locally.
OTHER_IMAGE_EXTENSIONS = frozenset(
    {
        ".webp", ".avif", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".jpf", ".jpx", ".svg", ".svgz",
        ".ico", ".psd", ".tga", ".dds", ".pcx", ".ppm", ".pgm", ".pbm", ".pnm", ".eps", ".raw",
        ".dng", ".cr2", ".nef", ".arw",
    }
)  # fmt: skip

_MARGIN_TOKEN = re.compile(r"^\d+(?:\.\d+)?(?:px|%)$")
_CREDIT_WORDS = re.compile(r"\b(?:credits?|dormant|credit\s*pack)\b", re.IGNORECASE)
_IMAGE_WORDS = re.compile(r"\bimage\b", re.IGNORECASE)
#: the account states Pixian documents (any other one is read as suspended: :meth:`PixianWire.parse_balance`)
_ACCOUNT_STATES = {"active": AccountState.ACTIVE, "dormant": AccountState.DORMANT}
#: Pixian ignores these with ``delta_png``, and they have no local equivalent
_GEOMETRY_OPTIONS = ("result_margin", "target_size", "vertical_alignment")

VerticalAlignment = Literal["top", "middle", "bottom"]
InputEncoding = Literal["file", "base64"]
#: the values of ``delta_png`` (what each does: :class:`PixianOptions`)
DeltaMode = bool | Literal["auto"]
#: input modes a delta's "copy the input pixel" reproduces exactly (see :func:`_not_opaque_8_bit`)
_OPAQUE_MODES = frozenset({"RGB", "L"})


class Size(NamedTuple):
    """A ``"w h"`` header value (``X-Input-Size``, ``X-Result-Size``)."""

    width: int
    height: int


class ForegroundBox(NamedTuple):
    """A ``"top left width height"`` header value (``X-Input-Foreground``, ``X-Result-Foreground``)."""

    top: int
    left: int
    width: int
    height: int


def parse_use_before(value: Any) -> datetime | None:
    """
    The account reply's ``useBefore`` as a UTC datetime (an ISO 8601 time without an offset is UTC);
    ``None`` when it is missing or no such text (the balance is still read).

    :param value: the reply's ``useBefore`` member.
    """
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
        return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):  # not a time, or one past the calendar in UTC
        return None


def parse_test_mode(value: Any) -> bool:
    """
    Read the connection's ``test_mode`` extra (a JSON boolean, or a string from a URI).

    :param value: the extra's value; ``None`` means off.
    """
    return False if value is None else parse_flag(value, parameter="test_mode")


def _delta_mode(value: Any) -> DeltaMode | None:
    if value is None or (isinstance(value, str) and not value.strip()):  # unset: the hook's default
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return parse_flag(value)


def _result_margin(value: Any) -> str:
    tokens = str(value).split()
    if not 1 <= len(tokens) <= 4 or not all(_MARGIN_TOKEN.match(t) for t in tokens):
        raise ValueError(f"{value!r} is not 1 to 4 CSS lengths in px or % (e.g. '10px 20% 5px 15%')")
    return " ".join(tokens)


@option_model
class PixianOptions(OptionSet):
    """
    Pixian-only parameters (validated on creation; strings from templates accepted).

    :param test: ``test=true`` (free, watermarked); ``None`` uses the connection's ``test_mode`` extra.
    :param max_pixels: ``max_pixels`` (100-25,000,000): larger inputs are shrunk by Pixian first.
    :param input_encoding: ``"file"`` (multipart ``image``, default) or ``"base64"`` (``image.base64``,
        at most :data:`MAX_BASE64_CHARS` characters).
    :param result_margin: native ``result.margin``: 1-4 CSS lengths in ``px``/``%`` (``"10px 20%"``);
        not with the unified ``margin`` or ``delta_png``.
    :param target_size: native ``result.target_size`` ``(width, height)`` (or ``"1920 1080"``).
    :param vertical_alignment: native ``result.vertical_alignment``; only with ``target_size``.
    :param delta_png: ``True`` asks for ``output.format=delta_png`` on every call (decoded by the hook,
        every unified option local); ``"auto"`` only where the decoded result is the same image
        (transfer-only, docs/vendors/pixian.md); ``False`` never; ``None`` (not set) takes the hook's
        :attr:`~airflow_provider_bgremoval.hooks.pixian.PixianHook.delta_png_default`.
    :param jpeg_quality: ``output.jpeg_quality`` (1-100); ``None`` uses the unified ``jpeg_quality``.
    """

    #: an unknown key is reported under the mapping's name, as it always was for Pixian
    unknown_key_parameter = "vendor_options"
    #: ``delta_png`` unset or ``"auto"`` makes the same output as ``False``: recorded as ``False``
    transfer_only = {"delta_png": {None: False, "auto": False}}

    test: Annotated[Flag | None, UNSET_IF_BLANK] = None
    max_pixels: Annotated[int | None, Field(ge=MIN_MAX_PIXELS, le=MAX_MAX_PIXELS), NUMBER, UNSET_IF_BLANK] = (
        None
    )
    input_encoding: Annotated[InputEncoding, CHOICE] = "file"
    result_margin: Annotated[str | None, unset_or(_result_margin)] = None
    target_size: Annotated[tuple[int, int] | None, unset_or(parse_size), size_json_schema()] = None
    vertical_alignment: Annotated[VerticalAlignment | None, CHOICE, UNSET_IF_BLANK] = None
    delta_png: Annotated[DeltaMode | None, BeforeValidator(_delta_mode)] = None
    jpeg_quality: Annotated[int | None, Field(ge=1, le=100), NUMBER, UNSET_IF_BLANK] = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.vertical_alignment is not None and self.target_size is None:
            raise OptionValueError("only applies together with target_size", parameter="vertical_alignment")
        for name in _GEOMETRY_OPTIONS if self.delta_png is True else ():
            if getattr(self, name) is not None:
                raise OptionValueError(
                    "Pixian ignores it with delta_png (the result must match the input pixel for pixel)",
                    parameter=name,
                )
        return self


def check_image_url_type(url: str) -> None:
    """
    Refuse an ``image.url`` whose (decoded) path ends in one of :data:`OTHER_IMAGE_EXTENSIONS`, any
    case (anything else is left to Pixian).

    :param url: the URL input.
    """
    name = unquote(urlsplit(url).path).rsplit("/", 1)[-1].lower()
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix in OTHER_IMAGE_EXTENSIONS:
        raise InvalidOptionError(
            "image_url",
            f"Pixian's image.url must be a .bmp, .gif, .jpeg, .png or .tiff file, not {suffix}; "
            "pass the image bytes instead (uploads of other formats are converted to PNG)",
        )


def _ints(value: str | None, count: int) -> tuple[int, ...] | None:
    parts = (value or "").split()
    if len(parts) != count:
        return None
    try:
        return tuple(round(float(p)) for p in parts)
    except (ValueError, OverflowError):  # not a number, or inf / 1e400
        return None


PIXIAN_SPEC = VendorSpec(
    name="pixian",
    default_base_url="https://api.pixian.ai",
    capabilities=VendorCapabilities(
        output_formats=frozenset({"png", "jpeg"}), background_color=True, crop=True
    ),
    limits=InputLimits(
        max_bytes=UPLOAD_MAX_BYTES, max_pixels=UPLOAD_MAX_PIXELS, formats=frozenset({"JPEG", "PNG"})
    ),
    # linear backoff on consecutive 429s (5 s x n); exponential with jitter on 5xx
    retry_policy=RetryPolicy(
        max_attempts=7,
        max_wait=300.0,
        initial_backoff=1.0,
        max_backoff=30.0,
        jitter=1.0,
        rate_limit_step=5.0,
        max_retry_after=120.0,
    ),
    # "configured with an idle timeout of at least 180 seconds"
    default_timeout=180.0,
    # no request rate: "generous, no fixed ceiling" (requests_per_second=None: adapted to 429s only)
    # 1006 "Failed to read the supplied image" is the only documented code
    input_error_codes=frozenset({"1006"}),
    remove_path="/api/v2/remove-background",
    balance_path="/api/v2/account",
    options=PixianOptions,
)
#: with ``delta_png`` Pixian does none of the unified options itself: all of them run locally
DELTA_CAPABILITIES = VendorCapabilities(output_formats=frozenset({"png"}), background_color=False, crop=False)


def _not_opaque_8_bit(info: ImageInfo) -> str | None:
    """
    What the input is, when it is not an opaque 8-bit JPEG/PNG (``None``: it is one). Pillow reads a
    16-bit RGB PNG and an RGB/L PNG with a ``tRNS`` transparent colour as mode ``RGB``/``L`` too: the
    header's bit depth and transparency say so.
    """
    depth = 8 if info.bit_depth is None else info.bit_depth
    opaque = info.mode in _OPAQUE_MODES and not info.transparency
    if opaque and depth == 8 and info.format in ("JPEG", "PNG"):
        return None
    bits = f"{depth}-bit " if depth != 8 and info.mode in _OPAQUE_MODES else ""  # a palette's are index bits
    keyed = " with tRNS transparency" if info.transparency and info.format == "PNG" else ""
    return f"a {bits}{info.format} {info.mode} input{keyed}"


def _delta_keeps_result(options: RemovalOptions) -> bool:
    """True when Pixian's normal request for ``options`` is a plain transparent PNG (what a delta carries)."""
    native = split_options(options, PIXIAN_SPEC.capabilities).native
    return native.output_format == "png" and native.background_color is None and not native.crop


class PixianWire(VendorWire):
    """Pixian.AI v2: request building, reply parsing, error envelope (no I/O)."""

    spec = PIXIAN_SPEC

    def test_mode(self, vendor_options: VendorOptionsInput = None) -> bool:
        """
        Whether calls run in test mode: the option when set, else the connection's ``test_mode`` extra.

        :param vendor_options: the call's Pixian options.
        """
        test = PixianOptions.coerce(vendor_options).test
        return parse_test_mode(self.settings.extras.get("test_mode")) if test is None else test

    def capabilities_for(self, vendor_options: VendorOptionsInput = None) -> VendorCapabilities:
        # "auto" left by check_call means the unified options need nothing native: both plans agree
        delta = PixianOptions.coerce(vendor_options).delta_png
        return DELTA_CAPABILITIES if delta else self.spec.capabilities

    @classmethod
    def check_call(
        cls, options: RemovalOptions, vendor_options: VendorOptionsInput, *, image_url: str | None = None
    ) -> PixianOptions:
        opts = PixianOptions.coerce(vendor_options)
        for name in ("result_margin", "target_size"):
            if options.margin is not None and getattr(opts, name) is not None:
                raise InvalidOptionError(
                    name,
                    "cannot be combined with the unified margin (it is applied by a local crop that would "
                    "cut Pixian's padding away); use crop=True with result_margin instead",
                )
        if image_url is not None:
            check_image_url_type(image_url)
        if opts.delta_png == "auto" and not _delta_keeps_result(options):
            return replace(opts, delta_png=False)  # Pixian would ignore part of the request
        return opts

    def auth_headers(self) -> dict[str, str]:
        if not self.settings.api_id:
            raise InvalidOptionError("login", "the Pixian connection has no API id (set the login field)")
        return {"Authorization": basic_auth_header(self.settings.api_id, self.settings.api_key)}

    def remove_background_request(
        self, image: ImageInput, options: RemovalOptions, vendor_options: VendorOptionsInput = None
    ) -> WireRequest:
        opts = PixianOptions.coerce(vendor_options)
        self.check_native(options, self.capabilities_for(opts))
        if opts.delta_png is True:
            self._check_delta(image, opts)
        delta = self.uses_delta(image, opts)
        test = self.test_mode(opts)
        fields, files = self._input_fields(image, opts)
        fields |= form_fields({"test": test or None, "max_pixels": opts.max_pixels})
        fields |= {"output.format": "delta_png"} if delta else self._result_fields(options, opts)
        return WireRequest(
            "POST",
            self.spec.remove_path,
            billed=not test,
            headers={"Accept": "image/*"},
            data=fields,
            files=files,
        )

    def _input_fields(
        self, image: ImageInput, opts: PixianOptions
    ) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]] | None]:
        """The image as ``image.url``, ``image.base64`` or the multipart ``image`` file."""
        if image.url is not None:
            check_image_url_type(image.url)
            return {"image.url": image.url}, None
        data = cast(bytes, image.data)
        if opts.input_encoding == "base64":
            return {"image.base64": self._base64(data)}, None
        return {}, {"image": (image.filename, data, image.content_type)}

    def _result_fields(self, options: RemovalOptions, opts: PixianOptions) -> dict[str, str]:
        """The ``background.*``, ``result.*`` and ``output.*`` fields of a normal (not delta) call."""
        values: dict[str, object] = {
            "background.color": options.background_color.upper() if options.background_color else None,
            "result.crop_to_foreground": options.crop or None,
            "result.margin": opts.result_margin,
            "result.target_size": " ".join(map(str, opts.target_size)) if opts.target_size else None,
            "result.vertical_alignment": opts.vertical_alignment,
            "output.format": options.output_format,
        }
        if options.output_format == "jpeg":
            quality = opts.jpeg_quality if opts.jpeg_quality is not None else options.jpeg_quality
            values["output.jpeg_quality"] = quality
        return form_fields(values)

    def _base64(self, data: bytes) -> str:
        encoded = base64.b64encode(data).decode("ascii")
        if len(encoded) > MAX_BASE64_CHARS:
            raise InputRejectedError(
                f"the image is {len(encoded):,} characters as base64; Pixian's image.base64 limit is "
                f"{MAX_BASE64_CHARS:,} (about {MAX_BASE64_CHARS * 3 // 4:,} bytes of image): "
                "use input_encoding='file'",
                vendor=self.spec.name,
                code="file_size_too_large",
                local=True,
            )
        return encoded

    def uses_delta(self, image: ImageInput, vendor_options: VendorOptionsInput = None) -> bool:
        """
        Whether this call asks for ``output.format=delta_png`` (and its reply is decoded).

        :param image: the call's input.
        :param vendor_options: the call's Pixian options, as :meth:`check_call` returned them.
        """
        opts = PixianOptions.coerce(vendor_options)
        return (
            self.delta_fallback(image, opts) is None if opts.delta_png == "auto" else opts.delta_png is True
        )

    def delta_fallback(self, image: ImageInput, vendor_options: VendorOptionsInput = None) -> str | None:
        """
        Why ``delta_png="auto"`` takes the normal PNG for this image (``None``: it takes a delta, whose
        decoded result is the same image). Local, from the options and the image header: no call.

        :param image: the call's input.
        :param vendor_options: the call's Pixian options.
        """
        opts = PixianOptions.coerce(vendor_options)
        set_geometry = [name for name in _GEOMETRY_OPTIONS if getattr(opts, name) is not None]
        if set_geometry:
            return f"{set_geometry[0]} is set (Pixian ignores it with delta_png)"
        if self.test_mode(opts):
            return "test mode (a delta cannot carry the watermark on solid pixels)"
        if image.data is None:
            return "no image bytes to decode a delta with (image_url)"
        try:
            info = read_header(image.data, vendor=self.spec.name)
        except InputRejectedError:
            return "the input's header is unreadable"
        if info.pixels > (limit := opts.max_pixels or MAX_MAX_PIXELS):
            return f"{info.pixels:,} pixels is over max_pixels ({limit:,}): Pixian would shrink it"
        kind = _not_opaque_8_bit(info)
        return None if kind is None else f"{kind} (only opaque 8-bit JPEG/PNG inputs are copied exactly)"

    def _check_delta(self, image: ImageInput, opts: PixianOptions) -> None:
        if image.data is None:
            raise InvalidOptionError(
                "delta_png", "needs the image bytes to decode the result; image_url cannot be used with it"
            )
        info = read_header(image.data, vendor=self.spec.name)
        if info.pixels > (limit := opts.max_pixels or MAX_MAX_PIXELS):
            raise InputRejectedError(
                f"image is {info.width}x{info.height} = {info.pixels:,} pixels; with delta_png it must not "
                f"exceed max_pixels ({limit:,}) or Pixian shrinks it and the delta cannot be decoded",
                vendor=self.spec.name,
                code="too_many_pixels",
                local=True,
            )

    def parse_image_reply(self, response: httpx.Response) -> ImageResult:
        """
        Read a remove-background reply: the image, ``X-Credits-*`` and the ``X-Input-*``/``X-Result-*``
        headers as metadata (docs/vendors/pixian.md); malformed header values are left out.

        :param response: a 2xx reply.
        """
        if not response.content:
            raise self.invalid_reply("Pixian returned an empty body")
        headers = response.headers
        metadata: dict[str, Any] = {}
        orientation = parse_number(headers.get("x-input-orientation"), int)
        if orientation is not None and 1 <= orientation <= 8:
            metadata["input_orientation"] = orientation
        for key, kind in (("size", Size), ("foreground", ForegroundBox)):
            for side in ("input", "result"):
                values = _ints(headers.get(f"x-{side}-{key}"), len(kind._fields))
                if values is not None:
                    metadata[f"{side}_{key}"] = kind(*values)
        result_size = metadata.get("result_size")
        return ImageResult(
            content=response.content,
            content_type=media_type(response) or "image/png",
            vendor=self.spec.name,
            width=result_size.width if result_size else None,
            height=result_size.height if result_size else None,
            credits_charged=parse_charge(headers.get("x-credits-charged")),
            credits_calculated=parse_charge(headers.get("x-credits-calculated")),
            metadata=metadata,
        )

    def finish_result(
        self, result: ImageResult, image: ImageInput, vendor_options: VendorOptionsInput = None
    ) -> ImageResult:
        opts = PixianOptions.coerce(vendor_options)
        metadata = {**result.metadata, "test_mode": self.test_mode(opts)}
        fallback = self.delta_fallback(image, opts) if opts.delta_png == "auto" else None
        if fallback is not None:
            metadata.update(delta_png=False, delta_png_fallback=fallback)
        if fallback is not None or opts.delta_png not in (True, "auto"):
            return replace(result, metadata=metadata)
        original = cast(bytes, image.data)  # a delta_png request needs the bytes (_check_delta)
        try:
            decoded = decode_delta_png(
                result.content, original, orientation=metadata.get("input_orientation")
            )
        except DeltaPngError as exc:
            raise self.invalid_reply(f"cannot decode Pixian's delta PNG: {exc}", code="delta_png") from None
        metadata.update(delta_png=True, delta_png_bytes=len(result.content))
        return replace(
            result,
            content=encode(decoded, "png", 0),
            content_type="image/png",
            width=decoded.width,
            height=decoded.height,
            metadata=metadata,
        )

    def credits_calculated(self, result: ImageResult) -> Decimal:
        """
        ``X-Credits-Calculated`` of a test call (what a production call would cost).

        :param result: the parsed reply of a ``test=true`` call.
        """
        if result.credits_calculated is None:
            raise self.invalid_reply(
                "Pixian's test reply has no X-Credits-Calculated header", possibly_charged=False
            )
        return result.credits_calculated

    def parse_balance(self, response: httpx.Response) -> Balance:
        """
        Read ``GET /api/v2/account``. Pixian documents two states: ``active`` (a pack that is not
        dormant) and ``dormant`` (buy a new pack to go on). Any other state is no active pack: its credits
        cannot be counted on, so it reads as suspended with 0 usable (``raw`` keeps what Pixian said).
        A reply without a state says nothing either way: ``unknown``, its credits as reported.
        ``useBefore``, when the pack goes dormant, is :attr:`~.Balance.expires_at`; the connection's
        ``test_mode`` extra is :attr:`~.Balance.test_mode` (test calls need no pack: "no purchase required").

        :param response: the 2xx reply.
        """
        body, numbers = self.balance_numbers(response, "credits")
        raw_state = str(body.get("state") or "").strip().lower()
        state = _ACCOUNT_STATES.get(raw_state, AccountState.SUSPENDED) if raw_state else AccountState.UNKNOWN
        pack = body.get("creditPack")
        return self.balance(
            numbers["credits"] if state in (AccountState.ACTIVE, AccountState.UNKNOWN) else Decimal(0),
            state,
            credit_pack=str(pack) if pack is not None else None,
            raw=dict(body),
            expires_at=parse_use_before(body.get("useBefore")),
            test_mode=self.test_mode(),
        )

    def error_fields(self, body: dict[str, Any], response: httpx.Response) -> tuple[Any, str, Any] | None:
        envelope = body.get("error")
        if isinstance(envelope, Mapping):
            return envelope.get("code"), self.quote(str(envelope.get("message") or "")), None
        if "message" not in body:
            return None
        # the attribute table's flat form: its code is Pixian's only beside Pixian's status (a gateway's
        # {"code": 4, "message": ...} is not)
        return body.get("code") if "status" in body else None, self.quote(str(body["message"] or "")), None

    def error_type(self, status: int, code: str | None, message: str) -> type[BgRemovalError]:
        if 400 <= status < 500 and status not in (401, 408, 429) and _CREDIT_WORDS.search(message):
            return OutOfCreditsError
        kind = super().error_type(status, code, message)
        if kind is VendorRequestError and _IMAGE_WORDS.search(message):
            return InputRejectedError
        return kind

    @classmethod
    def estimate_cost(cls, vendor_options: VendorOptionsInput = None) -> Decimal:
        return Decimal(0) if PixianOptions.coerce(vendor_options).test else cls.spec.base_cost
