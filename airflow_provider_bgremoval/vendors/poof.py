"""Poof (poof.bg) wire format: ``POST /v1/remove`` and ``GET /v1/me`` (VENDORS.md §2, §7 items 9-20).

Generation A documents are the baseline, generation B replies are tolerated (DESIGN.md "Poof and
Pixian contract decisions"); fields and headers: docs/vendors/poof.md.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Annotated, Any, Literal

import httpx

from airflow_provider_bgremoval.exceptions import InvalidOptionError, safe_excerpt
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.options import (
    CHOICE,
    CONTENT_TYPES,
    EXTENSIONS,
    OptionSet,
    RemovalOptions,
    VendorCapabilities,
    option_model,
)
from airflow_provider_bgremoval.results import Balance, ImageResult
from airflow_provider_bgremoval.retry import RetryPolicy
from airflow_provider_bgremoval.vendors.base import (
    MEGABYTE,
    ImageInput,
    VendorOptionsInput,
    VendorSpec,
    VendorWire,
    WireRequest,
    credits_left,
    form_fields,
    media_type,
    parse_charge,
    parse_decimal,
    parse_number,
)

#: "Maximum size: 20MB", read as 20,000,000 bytes (:data:`~.base.MEGABYTE`).
MAX_UPLOAD_BYTES = 20 * MEGABYTE

#: Gen A ``size`` presets (docs/vendors/poof.md: the longest side each caps the result to).
PoofSize = Literal["full", "preview", "small", "medium", "large"]

#: Unified output format -> Poof ``format`` value.
_NATIVE_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
#: File extensions for the upload's file name (the server may look at it).
_UPLOAD_EXTENSIONS = {CONTENT_TYPES[fmt]: EXTENSIONS[fmt] for fmt in CONTENT_TYPES}
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
_DETAILS_LIMIT = 200
#: API version prefix; not repeated when the connection's base URL already ends with it
API_PREFIX = "/v1"


@option_model
class PoofOptions(OptionSet):
    """
    Poof-only options, next to the unified :class:`~airflow_provider_bgremoval.options.RemovalOptions`.

    :param size: the Gen A output size preset (:data:`PoofSize`, default ``full``), any case;
        Gen B servers read them differently (VENDORS.md §7 item 9), so use ``max_size`` for exact sizes.
    """

    #: an unknown key is reported under the mapping's name, as it always was for Poof
    unknown_key_parameter = "vendor_options"

    size: Annotated[PoofSize, CHOICE] = "full"


POOF_SPEC = VendorSpec(
    name="poof",
    default_base_url="https://api.poof.bg",
    capabilities=VendorCapabilities(
        output_formats=frozenset({"png", "jpeg", "webp"}), background_color=True, crop=True
    ),
    # JPEG/PNG/WebP (others converted to PNG locally), about 6000 px per side / 36 MP (Gen B's
    # practical maximum); no documented minimum: 1 px
    limits=InputLimits(max_bytes=MAX_UPLOAD_BYTES, max_side=6000, max_pixels=36_000_000),
    # the documented advice: ``2^attempt + U(0, 1)`` seconds, up to 5 tries
    retry_policy=RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=16.0, jitter=1.0),
    # per-plan rates that conflict (10/min to 50 rps) and now point at poof.bg/pricing: no default cap
    # (requests_per_second=None: adapted to 429s; set the plan's rate on the connection)
    api_key_header="x-api-key",
    no_url_input="Poof needs the image uploaded as bytes (its API has no documented URL input); "
    "download the image and pass its bytes instead",
    input_error_codes=frozenset({"image_too_large", "invalid_image"}),
    credit_error_codes=frozenset({"payment_required"}),
    auth_error_codes=frozenset({"authentication_error", "permission_denied"}),
    # "usually deterministic, so retrying the same input rarely helps" (Gen B processing_failed page)
    permanent_server_codes=frozenset({"processing_failed"}),
    remove_path="/remove",
    balance_path="/me",
    api_prefix=API_PREFIX,
    options=PoofOptions,
)


class AutoRechargeMode(str, enum.Enum):
    """How ``autoRechargeThreshold`` from ``GET /v1/me`` is to be read."""

    #: absent or ``null``: Auto Recharge is off
    OFF = "off"
    #: Gen A: an integer credit count
    CREDITS = "credits"
    #: Gen B: a fraction (0.5-0.95) of the plan limit
    FRACTION = "fraction"


@dataclass(frozen=True)
class PoofAccount:
    """
    The account as ``GET /v1/me`` describes it.

    :param organization_id: the ``organizationId``.
    :param plan: plan display name (Free, Basic, Pro…).
    :param max_credits: ``maxCredits``: the cycle's allowance plus top-ups.
    :param used_credits: ``usedCredits`` in the current cycle.
    :param auto_recharge_threshold: ``autoRechargeThreshold`` as a number, ``None`` when off/absent.
    :param auto_recharge_mode: how to read the threshold (credit count in Gen A, fraction in Gen B).
    :param raw: the reply as parsed JSON.
    """

    organization_id: str | None
    plan: str | None
    max_credits: Decimal
    used_credits: Decimal
    auto_recharge_threshold: Decimal | None = None
    auto_recharge_mode: AutoRechargeMode = AutoRechargeMode.OFF
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def remaining(self) -> Decimal:
        """Credits left in this cycle: ``maxCredits - usedCredits``, never below zero."""
        return credits_left(self.max_credits - self.used_credits)


def format_details(details: Any, quote: Callable[[str, int], str] = safe_excerpt) -> str:
    """
    Render an error ``details`` value (Gen A string, Gen B field -> messages object) in one short line.

    :param details: the ``details`` member of a Poof error body.
    :param quote: how the line is cut (the wire's :meth:`~.base.VendorWire.quote`: redacted first).
    """
    if details is None or details in ("", {}, []):
        return ""
    if isinstance(details, Mapping):
        details = ", ".join(f"{key}: {_listed(value)}" for key, value in details.items())
    return quote(_listed(details), _DETAILS_LIMIT)


def _listed(value: Any) -> str:
    return "; ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _sniff_content_type(content: bytes) -> str | None:
    for magic, content_type in _MAGIC:
        if content.startswith(magic):
            return content_type
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp"
    return None


class PoofWire(VendorWire):
    """The Poof wire format (Gen A baseline, Gen B tolerant)."""

    spec = POOF_SPEC

    def remove_background_request(
        self, image: ImageInput, options: RemovalOptions, vendor_options: VendorOptionsInput = None
    ) -> WireRequest:
        poof_options = PoofOptions.coerce(vendor_options)
        if image.data is None:
            raise InvalidOptionError("image_url", str(self.spec.no_url_input))
        self.check_native(options, self.spec.capabilities)
        background = options.effective_background
        fields = {
            "format": _NATIVE_FORMATS[options.output_format],
            "channels": "rgb" if background is not None else "rgba",
            "size": poof_options.size,
            "crop": options.crop,
            # a tight crop, as Gen A and every other crop here: Gen B pads a crop by 10 % unless told
            "padding": "0" if options.crop else None,
            "bg_color": background,
        }
        return WireRequest(
            "POST",
            self.endpoint(self.spec.remove_path),
            billed=True,
            headers={"Accept": "image/*"},
            data=form_fields(fields),
            files={"image_file": (self._upload_name(image), image.data, image.content_type)},
        )

    @staticmethod
    def _upload_name(image: ImageInput) -> str:
        name = image.filename or "image"
        extension = _UPLOAD_EXTENSIONS.get(image.content_type)
        if extension and "." not in name.rsplit("/", 1)[-1]:
            name += extension
        return name

    def parse_image_reply(self, response: httpx.Response) -> ImageResult:
        headers = dict(response.headers.items())  # read once (lower-case names, repeats joined as httpx's)
        request_id = self._quoted(headers.get("x-request-id"))
        content = response.content
        declared = media_type(response)
        sniffed = _sniff_content_type(content)
        if not content:
            raise self.invalid_reply(
                "Poof answered success with an empty body", response, request_id=request_id
            )
        if sniffed is None and not declared.startswith("image/"):
            what = declared or "an untyped body"
            message = f"Poof answered success with {what}, not an image"
            if declared.startswith(("text/", "application/json")):
                message = f"{message}: {self.text_excerpt(response)}"
            raise self.invalid_reply(message, response, request_id=request_id)
        charged = parse_charge(headers.get("x-credits-charged"))
        metadata: dict[str, Any] = {}
        for key, header, kind in (
            ("processing_time_ms", "x-processing-time-ms", int),
            ("output_width", "x-image-width", int),
            ("output_height", "x-image-height", int),
            ("matte_confidence", "x-matte-confidence", float),
            ("matte_ambiguous_ratio", "x-matte-ambiguous-ratio", float),
        ):
            value = parse_number(headers.get(header), kind)
            if value is not None:
                metadata[key] = value
        width = metadata.get("output_width", parse_number(headers.get("x-width"), int))
        height = metadata.get("output_height", parse_number(headers.get("x-height"), int))
        if charged is not None:
            metadata["credits_charged_header"] = str(charged)
        return ImageResult(
            content=content,
            content_type=sniffed or declared,
            vendor=self.spec.name,
            width=width,
            height=height,
            request_id=request_id,
            credits_charged=charged if charged is not None else self.spec.base_cost,
            metadata=metadata,
        )

    def finish_result(
        self, result: ImageResult, image: ImageInput, vendor_options: VendorOptionsInput = None
    ) -> ImageResult:
        poof_options = PoofOptions.coerce(vendor_options)
        return replace(result, metadata={**result.metadata, "size": poof_options.size})

    def parse_account(self, response: httpx.Response) -> PoofAccount:
        """
        Read ``GET /v1/me`` into a :class:`PoofAccount`.

        :param response: the 2xx reply.
        """
        request_id = self._quoted(response.headers.get("x-request-id"))
        body, numbers = self.balance_numbers(response, "maxCredits", "usedCredits", request_id=request_id)
        threshold = parse_decimal(body.get("autoRechargeThreshold"))
        if threshold is None or threshold <= 0:
            threshold, mode = None, AutoRechargeMode.OFF
        else:
            mode = AutoRechargeMode.FRACTION if threshold < 1 else AutoRechargeMode.CREDITS
        organization, plan = body.get("organizationId"), body.get("plan")
        return PoofAccount(
            organization_id=str(organization) if organization not in (None, "") else None,
            plan=str(plan) if plan not in (None, "") else None,
            max_credits=numbers["maxCredits"],
            used_credits=numbers["usedCredits"],
            auto_recharge_threshold=threshold,
            auto_recharge_mode=mode,
            raw=body,
        )

    def parse_balance(self, response: httpx.Response) -> Balance:
        account = self.parse_account(response)
        return self.balance(account.remaining, credit_pack=account.plan, raw=account.raw)

    def error_fields(self, body: dict[str, Any], response: httpx.Response) -> tuple[Any, str, Any] | None:
        message = self.quote(str(body.get("message") or response.reason_phrase or "no message"))
        details = format_details(body.get("details"), self.quote)
        if details and details != message:
            message = f"{message} ({details})"
        doc_url = body.get("doc_url")
        if isinstance(doc_url, str) and doc_url.startswith(("https://", "http://")):
            message = f"{message}; see {self.quote(doc_url, 120)}"
        return body.get("code"), message, body.get("request_id")
