"""Poof wire format: request building, reply/header parsing, balance parsing, error mapping (no I/O)."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, get_args

import httpx
import pytest
from PIL import Image

from airflow_provider_bgremoval.exceptions import (
    InputRejectedError,
    InvalidOptionError,
    InvalidVendorResponseError,
    OutOfCreditsError,
    RateLimitedError,
    TransientVendorError,
    VendorAuthError,
    VendorRequestError,
)
from airflow_provider_bgremoval.options import RemovalOptions, split_options
from airflow_provider_bgremoval.results import AccountState
from airflow_provider_bgremoval.vendors.base import ConnectionSettings, ImageInput
from airflow_provider_bgremoval.vendors.poof import (
    AutoRechargeMode,
    PoofOptions,
    PoofSize,
    PoofWire,
    format_details,
)

KEY = "pk_live_wire_secret_0123456789"


@pytest.fixture
def wire() -> PoofWire:
    return PoofWire(ConnectionSettings(base_url="https://api.poof.bg", api_key=KEY))


def png_bytes(mode: str = "RGBA", size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 255) if mode == "RGBA" else (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


def encode_request(wire: PoofWire, image: ImageInput, options: RemovalOptions, vendor_options: Any = None):
    """Build the native request the way the hook does, and encode it with httpx (real multipart)."""
    plan = split_options(options, wire.spec.capabilities)
    wire_request = wire.remove_background_request(image, plan.native, vendor_options)
    request = httpx.Request(
        wire_request.method,
        "https://api.poof.bg" + wire_request.path,
        headers={**wire.auth_headers(), **wire_request.headers},
        data=wire_request.data,
        files=wire_request.files,
    )
    return wire_request, request, plan


def multipart_fields(request: httpx.Request) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """Decode a multipart request into text fields and files (name -> (filename, bytes, type))."""
    body = request.read()
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    text: dict[str, str] = {}
    files: dict[str, tuple[str, bytes, str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename() is not None:
            files[name] = (part.get_filename(), payload, part.get_content_type())
        else:
            text[name] = payload.decode()
    return text, files


# -- options ---------------------------------------------------------------------------------------
class TestPoofOptions:
    def test_default_is_full(self):
        assert PoofOptions().size == "full"

    def test_normalised_from_template_strings(self):
        assert PoofOptions(size=" Medium ").size == "medium"  # type: ignore[arg-type]

    @pytest.mark.parametrize("bad", ["hd", "4k", "", "tiny"])
    def test_invalid_size_names_the_parameter(self, bad):
        with pytest.raises(InvalidOptionError) as exc:
            PoofOptions(size=bad)  # type: ignore[arg-type]
        assert exc.value.parameter == "size"
        assert "preview" in str(exc.value)

    def test_frozen(self):
        with pytest.raises(AttributeError):
            PoofOptions().size = "small"  # type: ignore[misc]

    def test_coerce(self):
        assert PoofOptions.coerce(None) == PoofOptions()
        opts = PoofOptions(size="large")
        assert PoofOptions.coerce(opts) is opts
        assert PoofOptions.coerce({"size": "small"}) == PoofOptions(size="small")
        assert PoofOptions.coerce({"size": "small"}).as_dict() == {"size": "small"}

    def test_coerce_rejects_unknown_keys_and_types(self):
        with pytest.raises(InvalidOptionError) as exc:
            PoofOptions.coerce({"size": "small", "shadow": True})
        assert exc.value.parameter == "vendor_options"
        assert "shadow" in str(exc.value)
        with pytest.raises(InvalidOptionError):
            PoofOptions.coerce("small")  # type: ignore[arg-type]


# -- requests --------------------------------------------------------------------------------------
class TestRemoveRequest:
    def test_default_transparent_png(self, wire):
        data = png_bytes()
        wire_request, request, plan = encode_request(
            wire, ImageInput(data=data, content_type="image/png"), RemovalOptions()
        )
        assert wire_request.method == "POST"
        assert wire_request.path == "/v1/remove"
        assert wire_request.billed is True
        assert str(request.url) == "https://api.poof.bg/v1/remove"
        assert request.headers["x-api-key"] == KEY
        assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
        text, files = multipart_fields(request)
        assert text == {"format": "png", "channels": "rgba", "size": "full", "crop": "false"}
        assert files == {"image_file": ("image.png", data, "image/png")}
        assert not plan.local.needed

    @pytest.mark.parametrize(
        ("options", "expected", "local_needed"),
        [
            pytest.param(
                RemovalOptions.create(output_format="png", background_color="#0F0"),
                {"format": "png", "channels": "rgb", "bg_color": "#00ff00", "size": "full", "crop": "false"},
                False,
                id="png-on-colour",
            ),
            pytest.param(
                RemovalOptions.create(output_format="jpeg"),
                {"format": "jpg", "channels": "rgb", "bg_color": "#ffffff", "size": "full", "crop": "false"},
                False,
                id="jpeg-defaults-to-white",
            ),
            pytest.param(
                RemovalOptions.create(output_format="jpg", background_color="rgb(255, 0, 0)"),
                {"format": "jpg", "channels": "rgb", "bg_color": "#ff0000", "size": "full", "crop": "false"},
                False,
                id="jpeg-on-colour",
            ),
            pytest.param(
                RemovalOptions.create(output_format="webp"),
                {"format": "webp", "channels": "rgba", "size": "full", "crop": "false"},
                False,
                id="webp-transparent",
            ),
            pytest.param(
                RemovalOptions.create(output_format="webp", background_color="navy"),
                {"format": "webp", "channels": "rgb", "bg_color": "#000080", "size": "full", "crop": "false"},
                False,
                id="webp-on-colour",
            ),
            pytest.param(
                RemovalOptions.create(crop=True),
                {"format": "png", "channels": "rgba", "size": "full", "crop": "true", "padding": "0"},
                False,
                id="crop-native",
            ),
            pytest.param(
                RemovalOptions.create(crop="true", output_format="jpeg", background_color="#123456"),
                {
                    "format": "jpg",
                    "channels": "rgb",
                    "bg_color": "#123456",
                    "size": "full",
                    "crop": "true",
                    "padding": "0",
                },
                False,
                id="crop-jpeg-on-colour",
            ),
            pytest.param(
                RemovalOptions.create(crop=True, margin="5%", output_format="jpeg"),
                {"format": "png", "channels": "rgba", "size": "full", "crop": "false"},
                True,
                id="crop-with-margin-is-local",
            ),
            pytest.param(
                RemovalOptions.create(output_format="webp", max_size="100x100"),
                {"format": "png", "channels": "rgba", "size": "full", "crop": "false"},
                True,
                id="max-size-is-local",
            ),
        ],
    )
    def test_unified_to_native(self, wire, options, expected, local_needed):
        _, request, plan = encode_request(
            wire, ImageInput(data=png_bytes(), content_type="image/png"), options
        )
        text, _ = multipart_fields(request)
        assert text == expected
        assert plan.local.needed is local_needed
        if local_needed:
            assert plan.local.output_format == options.output_format

    def test_bg_color_only_with_rgb_channels(self, wire):
        for options in (RemovalOptions(), RemovalOptions(output_format="webp")):
            _, request, _ = encode_request(wire, ImageInput(data=png_bytes()), options)
            text, _ = multipart_fields(request)
            assert "bg_color" not in text
            assert text["channels"] == "rgba"

    def test_jpeg_built_directly_uses_effective_background(self, wire):
        # Even when called without split_options, a JPEG is never requested with alpha.
        request = wire.remove_background_request(ImageInput(data=b"x"), RemovalOptions(output_format="jpeg"))
        assert request.data == {
            "format": "jpg",
            "channels": "rgb",
            "bg_color": "#ffffff",
            "size": "full",
            "crop": "false",
        }

    @pytest.mark.parametrize("size", get_args(PoofSize))
    def test_size_presets(self, wire, size):
        for vendor_options in (PoofOptions(size=size), {"size": size}):
            _, request, _ = encode_request(
                wire, ImageInput(data=png_bytes()), RemovalOptions(), vendor_options
            )
            assert multipart_fields(request)[0]["size"] == size

    def test_invalid_vendor_options_before_anything(self, wire):
        with pytest.raises(InvalidOptionError) as exc:
            wire.remove_background_request(ImageInput(data=b"x"), RemovalOptions(), {"size": "hd"})
        assert exc.value.parameter == "size"

    def test_image_url_is_refused(self, wire):
        with pytest.raises(InvalidOptionError) as exc:
            wire.remove_background_request(ImageInput(url="https://example.com/a.png"), RemovalOptions())
        assert exc.value.parameter == "image_url"
        assert "bytes" in str(exc.value)

    def test_margin_or_max_size_never_silently_dropped(self, wire):
        with pytest.raises(InvalidOptionError):
            wire.remove_background_request(ImageInput(data=b"x"), RemovalOptions.create(max_size=10))

    @pytest.mark.parametrize(
        ("filename", "content_type", "expected"),
        [
            ("image", "image/png", "image.png"),
            ("shoe", "image/jpeg", "shoe.jpg"),
            ("shoe", "image/webp", "shoe.webp"),
            ("shoe.jpeg", "image/jpeg", "shoe.jpeg"),
            ("raw", "application/octet-stream", "raw"),
        ],
    )
    def test_upload_file_name(self, wire, filename, content_type, expected):
        request = wire.remove_background_request(
            ImageInput(data=b"x", filename=filename, content_type=content_type), RemovalOptions()
        )
        assert request.files is not None
        assert request.files["image_file"] == (expected, b"x", content_type)

    @pytest.mark.parametrize(
        ("base_url", "remove", "me"),
        [
            ("https://api.poof.bg", "/v1/remove", "/v1/me"),
            ("https://api.poof.bg/v1", "/remove", "/me"),  # the SDKs' form
            ("http://127.0.0.1:8765/v1", "/remove", "/me"),
            ("http://proxy.internal/poof", "/v1/remove", "/v1/me"),
        ],
    )
    def test_paths_for_origin_or_v1_base_url(self, base_url, remove, me):
        wire = PoofWire(ConnectionSettings(base_url=base_url, api_key=KEY))
        assert wire.remove_background_request(ImageInput(data=b"x"), RemovalOptions()).path == remove
        assert wire.balance_request().path == me

    def test_balance_request(self, wire):
        request = wire.balance_request()
        assert (request.method, request.path, request.billed) == ("GET", "/v1/me", False)

    def test_auth_header_and_no_key_in_repr(self, wire):
        assert wire.auth_headers() == {"x-api-key": KEY}
        assert KEY not in repr(wire.settings)
        request = wire.remove_background_request(ImageInput(data=b"x"), RemovalOptions())
        assert KEY not in repr(request)

    def test_cost(self, wire):
        assert PoofWire.estimate_cost() == Decimal(1)
        assert PoofWire.estimate_cost(PoofOptions(size="preview")) == Decimal(1)
        with pytest.raises(InvalidOptionError):
            PoofWire.estimate_cost({"size": "nope"})

    def test_contract_data(self):
        assert PoofWire.spec.default_base_url == "https://api.poof.bg"
        assert PoofWire.spec.default_timeout == 60.0
        caps = PoofWire.spec.capabilities
        assert caps.output_formats == frozenset({"png", "jpeg", "webp"})
        assert caps.background_color
        assert caps.crop
        limits = PoofWire.spec.limits
        assert (limits.max_bytes, limits.min_side, limits.max_side, limits.max_pixels) == (
            20_000_000,
            1,
            6000,
            36_000_000,
        )
        policy = PoofWire.spec.retry_policy
        assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff, policy.jitter) == (
            5,
            1.0,
            16.0,
            1.0,
        )
        assert policy.rate_limit_step is None


# -- image replies ---------------------------------------------------------------------------------
def reply(
    status: int = 200, content: bytes | None = None, headers: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    return httpx.Response(status, content=content, headers=headers, **kw)


class TestImageReply:
    def test_a_request_id_echoing_the_key_is_redacted(self, wire):
        """A proxy that echoes the request's headers into ``X-Request-ID``: never the key in a record."""
        echoed = {"Content-Type": "image/png", "X-Request-ID": f"req-{KEY}"}
        assert wire.parse_image_reply(reply(content=png_bytes(), headers=echoed)).request_id == "req-***"
        with pytest.raises(InvalidVendorResponseError) as info:
            wire.parse_image_reply(reply(content=b"", headers=echoed))
        assert KEY not in json.dumps(info.value.as_dict()) and info.value.request_id == "req-***"
        with pytest.raises(InvalidVendorResponseError) as info:
            wire.parse_account(reply(json={"organizationId": "org"}, headers={"X-Request-ID": f"req-{KEY}"}))
        assert KEY not in json.dumps(info.value.as_dict())

    def test_gen_a_headers(self, wire):
        body = png_bytes()
        result = wire.parse_image_reply(
            reply(
                content=body,
                headers={
                    "Content-Type": "image/png",
                    "X-Request-ID": "req_abc123xyz",
                    "X-Processing-Time-Ms": "842",
                    "X-Image-Width": "8",
                    "X-Image-Height": "6",
                },
            )
        )
        assert result.content == body
        assert result.content_type == "image/png"
        assert result.vendor == "poof"
        assert (result.width, result.height) == (8, 6)
        assert result.request_id == "req_abc123xyz"
        assert result.credits_charged == Decimal(1)
        assert result.metadata == {"processing_time_ms": 842, "output_width": 8, "output_height": 6}

    def test_gen_b_extras(self, wire):
        result = wire.parse_image_reply(
            reply(
                content=png_bytes(),
                headers={
                    "Content-Type": "image/png",
                    "X-Request-ID": "req_9b2f",
                    "X-Processing-Time-Ms": "1200",
                    "X-Image-Width": "8",
                    "X-Image-Height": "6",
                    "X-Matte-Confidence": "0.97",
                    "X-Matte-Ambiguous-Ratio": "0.012",
                    "X-Credits-Charged": "1",
                    "X-Width": "8",
                    "X-Height": "6",
                    "X-Something-New": "ignored",
                },
            )
        )
        assert result.metadata["matte_confidence"] == pytest.approx(0.97)
        assert result.metadata["matte_ambiguous_ratio"] == pytest.approx(0.012)
        assert result.metadata["credits_charged_header"] == "1"
        assert result.credits_charged == Decimal(1)

    def test_credit_header_overrides_default(self, wire):
        result = wire.parse_image_reply(
            reply(content=png_bytes(), headers={"Content-Type": "image/png", "X-Credits-Charged": "0.25"})
        )
        assert result.credits_charged == Decimal("0.25")

    @pytest.mark.parametrize("value", ["-5", "-0.25", "NaN", "-Infinity"])
    def test_a_negative_or_non_finite_credit_header_is_unknown(self, wire, value):
        result = wire.parse_image_reply(
            reply(content=png_bytes(), headers={"Content-Type": "image/png", "X-Credits-Charged": value})
        )
        assert result.credits_charged == Decimal(1)  # the unit cost
        assert "credits_charged_header" not in result.metadata

    def test_compat_layer_width_headers_and_missing_headers(self, wire):
        result = wire.parse_image_reply(
            reply(content=png_bytes(), headers={"Content-Type": "image/png", "X-Width": "8", "X-Height": "6"})
        )
        assert (result.width, result.height) == (8, 6)
        bare = wire.parse_image_reply(reply(content=png_bytes()))
        assert (bare.width, bare.height, bare.request_id) == (None, None, None)
        assert bare.content_type == "image/png"  # sniffed
        assert bare.metadata == {}

    def test_garbage_numeric_headers_are_ignored(self, wire):
        result = wire.parse_image_reply(
            reply(
                content=png_bytes(),
                headers={
                    "X-Processing-Time-Ms": "fast",
                    "X-Image-Width": "",
                    "X-Matte-Confidence": "high",
                    "X-Credits-Charged": "one",
                },
            )
        )
        assert result.metadata == {}
        assert result.width is None
        assert result.credits_charged == Decimal(1)

    @pytest.mark.parametrize(
        ("fmt", "mime"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("PNG", "image/png")]
    )
    def test_content_type_sniffed_over_header(self, wire, fmt, mime):
        out = io.BytesIO()
        Image.new("RGB", (4, 4)).save(out, format=fmt)
        result = wire.parse_image_reply(reply(content=out.getvalue(), headers={"Content-Type": "image/png"}))
        assert result.content_type == mime

    def test_empty_body(self, wire):
        with pytest.raises(InvalidVendorResponseError) as exc:
            wire.parse_image_reply(reply(content=b"", headers={"X-Request-ID": "req_1"}))
        assert exc.value.request_id == "req_1"
        assert exc.value.possibly_charged is True

    def test_json_body_on_success(self, wire):
        with pytest.raises(InvalidVendorResponseError, match="application/json"):
            wire.parse_image_reply(reply(json={"status": "queued"}))


# -- balance ---------------------------------------------------------------------------------------
class TestBalance:
    def test_gen_a_example(self, wire):
        body = {
            "organizationId": "org_abc123",
            "plan": "Pro",
            "maxCredits": 2000,
            "usedCredits": 1234,
            "autoRechargeThreshold": 100,
        }
        balance = wire.parse_balance(reply(json=body))
        assert balance.vendor == "poof"
        assert balance.remaining == Decimal(766)
        assert balance.credit_pack == "Pro"
        assert balance.state is AccountState.ACTIVE
        assert balance.usable
        assert balance.raw == body
        account = wire.parse_account(reply(json=body))
        assert account.organization_id == "org_abc123"
        assert (account.max_credits, account.used_credits) == (Decimal(2000), Decimal(1234))
        assert account.auto_recharge_mode is AutoRechargeMode.CREDITS
        assert account.auto_recharge_threshold == Decimal(100)

    def test_gen_a_null_threshold(self, wire):
        account = wire.parse_account(
            reply(json={"plan": "Free", "maxCredits": 100, "usedCredits": 0, "autoRechargeThreshold": None})
        )
        assert account.auto_recharge_mode is AutoRechargeMode.OFF
        assert account.auto_recharge_threshold is None
        assert account.organization_id is None
        assert account.remaining == Decimal(100)

    def test_gen_b_fraction_and_omitted(self, wire):
        base = {"organizationId": "org_1", "plan": "Mega", "maxCredits": 50000, "usedCredits": 10}
        account = wire.parse_account(reply(json={**base, "autoRechargeThreshold": 0.9}))
        assert account.auto_recharge_mode is AutoRechargeMode.FRACTION
        assert account.auto_recharge_threshold == Decimal("0.9")
        assert wire.parse_account(reply(json=base)).auto_recharge_mode is AutoRechargeMode.OFF

    def test_garbage_threshold_is_tolerated(self, wire):
        account = wire.parse_account(
            reply(json={"maxCredits": 5, "usedCredits": 1, "autoRechargeThreshold": "sometimes"})
        )
        assert account.auto_recharge_mode is AutoRechargeMode.OFF
        assert account.plan is None

    def test_negative_remaining_is_clamped_raw_kept(self, wire):
        body = {"plan": "Free", "maxCredits": 100, "usedCredits": 104}
        balance = wire.parse_balance(reply(json=body))
        assert balance.remaining == Decimal(0)
        assert not balance.usable
        assert balance.raw["usedCredits"] == 104

    def test_numeric_strings_accepted(self, wire):
        assert wire.parse_balance(
            reply(json={"maxCredits": "10", "usedCredits": "2.5"})
        ).remaining == Decimal("7.5")

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param(b"<html>oops</html>", id="html"),
            pytest.param(b"", id="empty"),
            pytest.param(json.dumps([1, 2]).encode(), id="list"),
            pytest.param(json.dumps({"plan": "Pro", "usedCredits": 1}).encode(), id="missing-max"),
            pytest.param(json.dumps({"plan": "Pro", "maxCredits": 1}).encode(), id="missing-used"),
            pytest.param(json.dumps({"maxCredits": "lots", "usedCredits": 1}).encode(), id="non-numeric"),
            pytest.param(json.dumps({"maxCredits": True, "usedCredits": 1}).encode(), id="boolean"),
            pytest.param(json.dumps({"maxCredits": None, "usedCredits": 1}).encode(), id="null"),
        ],
    )
    def test_garbage_is_an_error(self, wire, content):
        with pytest.raises(InvalidVendorResponseError) as exc:
            wire.parse_balance(reply(content=content, headers={"X-Request-ID": "req_me"}))
        assert exc.value.vendor == "poof"
        assert exc.value.possibly_charged is False
        assert exc.value.request_id == "req_me"


# -- errors ----------------------------------------------------------------------------------------
def envelope(code: str, message: str, details: Any = None, doc_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": "req_body"}
    if details is not None:
        body["details"] = details
    if doc_url:
        body["doc_url"] = doc_url
    return body


#: (status, code) -> exception class, for every code in VENDORS.md §2.4.
ERROR_TABLE = [
    (400, "validation_error", VendorRequestError),
    (400, "missing_image", VendorRequestError),
    (400, "image_too_large", InputRejectedError),
    (413, "image_too_large", InputRejectedError),
    (401, "authentication_error", VendorAuthError),
    (402, "payment_required", OutOfCreditsError),
    (403, "permission_denied", VendorAuthError),
    (404, "not_found", VendorRequestError),
    (422, "invalid_image", InputRejectedError),
    (429, "rate_limit_exceeded", RateLimitedError),
    (500, "processing_failed", InputRejectedError),
    (500, "internal_server_error", TransientVendorError),
    (502, "upstream_error", TransientVendorError),
    (503, "upstream_error", TransientVendorError),
    (504, "upstream_error", TransientVendorError),
]


class TestErrors:
    @pytest.mark.parametrize(("status", "code", "cls"), ERROR_TABLE)
    def test_mapping(self, wire, status, code, cls):
        response = reply(status, json=envelope(code, "Something went wrong", "a detail"))
        exc = wire.error_from_reply(response)
        assert type(exc) is cls
        assert exc.vendor == "poof"
        assert exc.status_code == status
        assert exc.code == code
        assert exc.request_id == "req_body"
        assert "Something went wrong (a detail)" in str(exc)
        assert not (isinstance(exc, InputRejectedError) and exc.local)

    @pytest.mark.parametrize(
        ("cls", "retryable", "fatal"),
        [
            (VendorRequestError, False, False),
            (InputRejectedError, False, False),
            (VendorAuthError, False, True),
            (OutOfCreditsError, False, True),
            (RateLimitedError, True, False),
            (TransientVendorError, True, False),
        ],
    )
    def test_classes_retry_semantics(self, cls, retryable, fatal):
        assert cls.retryable is retryable
        assert cls.fatal_for_batch is fatal

    def test_retry_after_on_429(self, wire):
        exc = wire.error_from_reply(
            reply(
                429, json=envelope("rate_limit_exceeded", "Rate limit exceeded"), headers={"Retry-After": "7"}
            )
        )
        assert isinstance(exc, RateLimitedError)
        assert exc.retry_after == 7.0
        no_header = wire.error_from_reply(reply(429, json=envelope("rate_limit_exceeded", "Slow down")))
        assert isinstance(no_header, RateLimitedError)
        assert no_header.retry_after is None

    def test_gen_b_details_object_and_doc_url(self, wire):
        exc = wire.error_from_reply(
            reply(
                400,
                json=envelope(
                    "validation_error",
                    "Invalid request parameters",
                    {"format": ["must be one of: png, jpg, webp"], "size": ["unknown preset", "see docs"]},
                    doc_url="https://docs.poof.bg/errors/validation-error",
                ),
                headers={"X-Request-ID": "req_body"},
            )
        )
        assert isinstance(exc, VendorRequestError)
        text = str(exc)
        assert "format: must be one of: png, jpg, webp" in text
        assert "size: unknown preset; see docs" in text
        assert "https://docs.poof.bg/errors/validation-error" in text
        assert "\n" not in text

    def test_request_id_from_header_when_body_lacks_it(self, wire):
        exc = wire.error_from_reply(
            reply(
                401,
                json={"code": "authentication_error", "message": "Invalid API key"},
                headers={"X-Request-ID": "req_h"},
            )
        )
        assert exc.request_id == "req_h"

    @pytest.mark.parametrize(
        ("status", "cls"),
        [
            (502, TransientVendorError),
            (503, TransientVendorError),
            (500, TransientVendorError),
            (401, VendorAuthError),
            (402, OutOfCreditsError),
            (413, InputRejectedError),
            (400, VendorRequestError),
        ],
    )
    def test_non_json_bodies(self, wire, status, cls):
        html = b"<html><body><h1>502 Bad Gateway</h1>\n<p>nginx</p></body></html>" + b" " * 2000
        exc = wire.error_from_reply(reply(status, content=html, headers={"X-Request-ID": "req_proxy"}))
        assert type(exc) is cls
        assert exc.code is None
        assert exc.request_id == "req_proxy"
        assert "502 Bad Gateway" in exc.message
        assert len(exc.message) <= 300

    def test_empty_body_uses_reason_phrase(self, wire):
        exc = wire.error_from_reply(reply(503))
        assert isinstance(exc, TransientVendorError)
        assert exc.message == "Service Unavailable"

    def test_odd_envelopes(self, wire):
        exc = wire.error_from_reply(reply(400, json={"code": 42, "message": None, "details": ["a", "b"]}))
        assert exc.code == "42"
        assert "(a; b)" in exc.message
        listed = wire.error_from_reply(reply(500, json=["not", "an", "envelope"]))
        assert isinstance(listed, TransientVendorError)
        assert listed.code is None

    def test_same_details_not_repeated(self, wire):
        exc = wire.error_from_reply(reply(400, json=envelope("missing_image", "No image", "No image")))
        assert exc.message == "No image"

    def test_long_details_are_cut(self, wire):
        exc = wire.error_from_reply(reply(400, json=envelope("validation_error", "Bad", "x" * 5000)))
        assert len(exc.message) < 300

    def test_echoed_key_is_redacted(self, wire):
        exc = wire.error_from_reply(
            reply(401, json=envelope("authentication_error", f"Invalid API key {KEY}", f"key={KEY}"))
        )
        assert KEY not in str(exc)
        assert KEY not in repr(exc)
        assert "***" in str(exc)
        text_exc = wire.error_from_reply(reply(401, content=f"bad key {KEY}".encode()))
        assert KEY not in str(text_exc)

    def test_pickle_round_trip(self, wire):
        import pickle

        exc = wire.error_from_reply(
            reply(429, json=envelope("rate_limit_exceeded", "Slow"), headers={"Retry-After": "3"})
        )
        clone = pickle.loads(pickle.dumps(exc))
        assert type(clone) is RateLimitedError
        assert clone.retry_after == 3.0
        assert clone.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        (None, ""),
        ("", ""),
        ({}, ""),
        ("Maximum file size is 20MB", "Maximum file size is 20MB"),
        ({"format": ["must be one of: png, jpg, webp"]}, "format: must be one of: png, jpg, webp"),
        (
            {"crop": "bad ratio", "width": ["too big", "max 6000"]},
            "crop: bad ratio, width: too big; max 6000",
        ),
        (["a", "b"], "a; b"),
        (12, "12"),
    ],
)
def test_format_details(details, expected):
    assert format_details(details) == expected
