"""Pixelcut wire format: typed options, request building, reply and error parsing (no I/O)."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

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
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.vendors.base import ConnectionSettings, ImageInput, ResultLocation
from airflow_provider_bgremoval.vendors.pixelcut import (
    PixelcutGenerateOptions,
    PixelcutImageTransform,
    PixelcutOptions,
    PixelcutScene,
    PixelcutShadow,
    PixelcutWire,
)
from airflow_provider_bgremoval.vendors.pixian import PIXIAN_SPEC
from airflow_provider_bgremoval.vendors.poof import POOF_SPEC

KEY = "sk_wire_test_key_123456"


@pytest.fixture
def wire() -> PixelcutWire:
    return PixelcutWire(ConnectionSettings(base_url=PixelcutWire.spec.default_base_url, api_key=KEY))


UPLOAD = ImageInput(data=b"\x89PNG-bytes", filename="a.png", content_type="image/png")
BY_URL = ImageInput(url="https://cdn.example/a.jpg")


def native(**kwargs: object) -> RemovalOptions:
    return split_options(RemovalOptions.create(**kwargs), PixelcutWire.spec.capabilities).native  # type: ignore[arg-type]


# -- typed options -----------------------------------------------------------------------------------


def test_default_shadow_is_automatic_estimation_sent_as_true():
    # "Pass `true` for automatic shadow estimation or provide a light source for custom control."
    shadow = PixelcutShadow()
    assert shadow.automatic
    assert shadow.light_source() is None
    assert shadow.as_wire() is True
    assert PixelcutShadow.coerce(True) == shadow
    assert PixelcutShadow.coerce("true") == shadow


def test_automatic_shadow_with_opacity_is_the_object_without_light_source():
    shadow = PixelcutShadow(opacity=0.25)
    assert shadow.automatic
    assert shadow.as_wire() == {"enabled": True, "opacity": 0.25}


def test_any_light_field_sends_a_complete_light_source_with_the_documented_defaults():
    assert PixelcutShadow(z=1.5).as_wire() == {
        "enabled": True,
        "light_source": {"size": 0.3, "position": {"x": -0.3, "y": -0.6, "z": 1.5}},
    }
    assert PixelcutShadow(opacity=0.5, light_size=0.3, x=-0.3, y=-0.6, z=0.7).as_wire() == {
        "enabled": True,
        "opacity": 0.5,
        "light_source": {"size": 0.3, "position": {"x": -0.3, "y": -0.6, "z": 0.7}},
    }
    assert not PixelcutShadow(light_size=0.1).automatic


def test_shadow_accepts_the_vendors_own_object():
    vendor_form = {
        "enabled": True,
        "opacity": 0.4,
        "light_source": {"size": 0.2, "position": {"x": 0.1, "y": -0.9, "z": 1.2}},
    }
    shadow = PixelcutShadow.coerce(vendor_form)
    assert shadow == PixelcutShadow(opacity=0.4, light_size=0.2, x=0.1, y=-0.9, z=1.2)
    assert shadow is not None and shadow.as_wire() == vendor_form
    assert PixelcutShadow.coerce({"enabled": True}) == PixelcutShadow()
    with pytest.raises(InvalidOptionError) as info:
        PixelcutShadow.coerce({"light_source": {"size": 0.2}, "light_size": 0.3})
    assert info.value.parameter == "shadow.light_size"
    with pytest.raises(InvalidOptionError) as info:
        PixelcutShadow.coerce({"light_source": {"position": {"w": 1}}})
    assert info.value.parameter == "shadow.light_source.position.w"
    with pytest.raises(InvalidOptionError) as info:
        PixelcutShadow.coerce({"light_source": {"position": {"x": 3}}})
    assert info.value.parameter == "shadow.x"
    with pytest.raises(InvalidOptionError):
        PixelcutShadow.coerce({"light_source": "overhead"})


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"opacity": 1.01}, "shadow.opacity"),
        ({"opacity": -0.1}, "shadow.opacity"),
        ({"light_size": 2}, "shadow.light_size"),
        ({"x": -1.5}, "shadow.x"),
        ({"y": 1.2}, "shadow.y"),
        ({"z": 2.5}, "shadow.z"),
        ({"z": -0.1}, "shadow.z"),
        ({"opacity": "half"}, "shadow.opacity"),
        ({"opacity": True}, "shadow.opacity"),
        ({"opacity": float("nan")}, "shadow.opacity"),
        ({"enabled": "perhaps"}, "shadow.enabled"),
    ],
)
def test_shadow_validation(kwargs, parameter):
    with pytest.raises(InvalidOptionError) as info:
        PixelcutShadow(**kwargs)
    assert info.value.parameter == parameter


def test_shadow_bounds_are_inclusive_and_strings_from_templates_accepted():
    shadow = PixelcutShadow(opacity="0", light_size=1, x=-1, y="1", z=2)
    assert (shadow.opacity, shadow.light_size, shadow.x, shadow.y, shadow.z) == (0.0, 1.0, -1.0, 1.0, 2.0)


@pytest.mark.parametrize(
    ("value", "enabled", "automatic"),
    [
        (None, None, None),
        (False, None, None),
        ("false", None, None),
        (True, True, True),
        ("true", True, True),
        ({"opacity": 0.2}, True, True),
        ({"x": 0.2}, True, False),
    ],
)
def test_shadow_coercion(value, enabled, automatic):
    shadow = PixelcutShadow.coerce(value)
    assert (shadow.enabled if shadow else None) == enabled
    assert (shadow.automatic if shadow else None) == automatic


@pytest.mark.parametrize("value", ["0%", "49%", "0px", "100px", "6000px"])
def test_native_margin_syntax_accepted(value):
    assert PixelcutOptions(margin=value, margin_top=value).margin == value


@pytest.mark.parametrize("value", ["50%", "5", "5 px", "-1px", "1.5%", "10em", "5px 5px"])
def test_native_margin_syntax_rejected(value):
    with pytest.raises(InvalidOptionError) as info:
        PixelcutOptions(margin_right=value)
    assert info.value.parameter == "margin_right"


def test_options_from_a_mapping():
    options = PixelcutOptions.coerce({"shadow": {"z": 1.5}, "margin": "", "result_delivery": "url"})
    assert options.shadow == PixelcutShadow(z=1.5)
    assert options.margin is None
    assert options.result_delivery == "url"
    assert options.as_dict()["result_delivery"] == "url"
    with pytest.raises(InvalidOptionError) as info:
        PixelcutOptions.coerce({"shadows": True})
    assert info.value.parameter == "vendor_options.shadows"
    with pytest.raises(InvalidOptionError):
        PixelcutOptions.coerce(["shadow"])
    with pytest.raises(InvalidOptionError) as info:
        PixelcutOptions(result_delivery="stream")  # type: ignore[arg-type]
    assert info.value.parameter == "result_delivery"


def test_generate_options():
    options = PixelcutGenerateOptions(scene="Marble", image_transform={"scale": "0.5"})  # type: ignore[arg-type]
    assert options.scene is PixelcutScene.MARBLE
    assert options.wire_fields() == {"image_transform": {"scale": 0.5}, "scene": "marble"}
    assert PixelcutGenerateOptions(prompt="  ", scene="").wire_fields() == {}
    assert PixelcutImageTransform().as_wire() == {}
    with pytest.raises(InvalidOptionError) as info:
        PixelcutGenerateOptions(scene=PixelcutScene.WOOD, prompt="a desk")
    assert info.value.parameter == "prompt"
    with pytest.raises(InvalidOptionError):
        PixelcutImageTransform(scale=-1)
    with pytest.raises(InvalidOptionError):
        PixelcutImageTransform(y_center=-0.01)
    with pytest.raises(InvalidOptionError):
        PixelcutGenerateOptions(prompt=42)  # type: ignore[arg-type]


# -- capabilities and costs --------------------------------------------------------------------------


def test_capabilities_plan():
    plan = split_options(
        RemovalOptions.create(output_format="webp", background_color="white", crop=True),
        PixelcutWire.spec.capabilities,
    )
    assert (plan.native.output_format, plan.native.background_color, plan.native.crop) == ("png", None, True)
    assert (plan.local.output_format, plan.local.background_color, plan.local.crop) == (
        "webp",
        "#ffffff",
        False,
    )
    plan = split_options(RemovalOptions.create(crop=True, margin="5%"), PixelcutWire.spec.capabilities)
    assert not plan.native.crop
    assert plan.local.crop


def test_costs_and_policy():
    assert PixelcutWire.estimate_cost() == Decimal(1)
    assert PixelcutWire.estimate_cost(PixelcutOptions(shadow=PixelcutShadow())) == Decimal(4)
    assert PixelcutWire.estimate_cost({"shadow": True}) == Decimal(4)
    assert PixelcutWire.estimate_cost(PixelcutOptions(shadow=PixelcutShadow(enabled=False))) == Decimal(1)
    assert PixelcutWire.estimate_generate_cost() == Decimal(1)
    policy = PixelcutWire.spec.retry_policy
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff, policy.jitter) == (
        6,
        0.25,
        5.0,
        0.25,
    )
    assert policy.rate_limit_step is None


# -- requests ----------------------------------------------------------------------------------------


def test_auth_header(wire):
    assert wire.auth_headers() == {"X-API-KEY": KEY}
    assert KEY not in repr(wire.settings)


def test_remove_upload_request(wire):
    request = wire.remove_background_request(
        UPLOAD,
        native(crop=True),
        PixelcutOptions(shadow=PixelcutShadow(x=0.1), margin="3%", margin_top="2px"),
    )
    assert (request.method, request.path, request.billed) == ("POST", "/v1/remove-background", True)
    assert request.headers == {"Accept": "image/*"}
    assert request.json is None
    assert request.files == {"image": ("a.png", b"\x89PNG-bytes", "image/png")}
    assert request.data == {
        "format": "png",
        "shadow": '{"enabled":true,"light_source":{"size":0.3,"position":{"x":0.1,"y":-0.6,"z":0.7}}}',
        "crop": "true",
        "margin": "3%",
        "margin_top": "2px",
    }
    built = httpx.Client().build_request("POST", "https://x/", data=request.data, files=request.files)
    assert built.headers["content-type"].startswith("multipart/form-data")
    assert b'name="shadow"\r\n\r\n{"enabled":true' in built.read()


def test_remove_url_request_is_json(wire):
    request = wire.remove_background_request(BY_URL, native(), {"shadow": True, "result_delivery": "url"})
    assert request.headers == {"Accept": "application/json"}
    assert request.data is None
    assert request.files is None
    assert request.json == {"image_url": "https://cdn.example/a.jpg", "format": "png", "shadow": True}


def test_automatic_shadow_in_a_multipart_form_is_the_text_true(wire):
    request = wire.remove_background_request(UPLOAD, native(), PixelcutOptions(shadow=PixelcutShadow()))
    assert request.data == {"format": "png", "shadow": "true"}
    request = wire.remove_background_request(UPLOAD, native(), {"shadow": {"opacity": 0.3}})
    assert request.data == {"format": "png", "shadow": '{"enabled":true,"opacity":0.3}'}
    assert PixelcutWire.estimate_cost({"shadow": True}) == Decimal(4)
    assert PixelcutOptions(shadow=PixelcutShadow()).as_dict()["shadow"] is True


def test_remove_minimal_request(wire):
    assert wire.remove_background_request(BY_URL, native()).json == {
        "image_url": "https://cdn.example/a.jpg",
        "format": "png",
    }
    assert wire.remove_background_request(UPLOAD, native(output_format="jpeg")).data == {"format": "png"}


def test_native_margin_needs_native_crop(wire):
    with pytest.raises(InvalidOptionError) as info:
        wire.remove_background_request(UPLOAD, native(), PixelcutOptions(margin_left="5px"))
    assert info.value.parameter == "margin_left"
    with pytest.raises(InvalidOptionError):
        wire.remove_background_request(UPLOAD, native(crop=True, margin="1px"), PixelcutOptions(margin="5px"))


def test_generate_requests(wire):
    options = PixelcutGenerateOptions(
        prompt="studio", negative_prompt="text", image_transform=PixelcutImageTransform(x_center=0.25)
    )
    request = wire.generate_background_request(UPLOAD, options)
    assert (request.path, request.billed, request.headers) == (
        "/v1/generate-background",
        True,
        {"Accept": "image/*"},
    )
    assert request.data == {
        "image_transform": '{"x_center":0.25}',
        "prompt": "studio",
        "negative_prompt": "text",
    }
    request = wire.generate_background_request(
        BY_URL, PixelcutGenerateOptions(scene="wood", result_delivery="url")
    )
    assert request.headers == {"Accept": "application/json"}
    assert request.json == {"image_url": "https://cdn.example/a.jpg", "scene": "wood"}


def test_balance_request(wire):
    request = wire.balance_request()
    assert (request.method, request.path, request.billed) == ("GET", "/v1/credits", False)
    assert request.json is None
    assert request.data is None


# -- replies -----------------------------------------------------------------------------------------


def test_parse_image_reply(wire):
    reply = wire.parse_image_reply(httpx.Response(200, content=b"PNG", headers={"content-type": "image/png"}))
    assert isinstance(reply, ImageResult)
    assert (reply.content, reply.content_type, reply.credits_charged) == (b"PNG", "image/png", None)
    located = wire.parse_image_reply(
        httpx.Response(200, json={"result_url": "https://assets.pixelcut.app/r.png"})
    )
    assert located == ResultLocation(url="https://assets.pixelcut.app/r.png")
    with pytest.raises(InvalidVendorResponseError):
        wire.parse_image_reply(
            httpx.Response(200, text="{not json", headers={"content-type": "application/json"})
        )


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "text/html; charset=utf-8", "application/octet-stream"]
)
def test_a_result_url_reply_not_typed_json_is_still_located(wire, content_type):
    """A paid result's JSON ``result_url`` retyped by a proxy was decoded as an image and lost."""
    body = b' \n{"result_url": "https://assets.pixelcut.app/public/result/r.png"}'
    headers = {} if content_type is None else {"content-type": content_type}
    located = wire.parse_image_reply(httpx.Response(200, content=body, headers=headers))
    assert located == ResultLocation(url="https://assets.pixelcut.app/public/result/r.png")


def test_an_image_typed_reply_is_the_image_whatever_its_bytes(wire):
    reply = wire.parse_image_reply(httpx.Response(200, content=b"{x", headers={"content-type": "image/png"}))
    assert isinstance(reply, ImageResult) and reply.content == b"{x"
    untyped = wire.parse_image_reply(httpx.Response(200, content=b"\x89PNG\r\n\x1a\n"))
    assert isinstance(untyped, ImageResult) and untyped.content_type == "image/png"
    with pytest.raises(InvalidVendorResponseError, match="result_url"):
        wire.parse_image_reply(
            httpx.Response(200, content=b'{"url": "x"}', headers={"content-type": "text/plain"})
        )


@pytest.mark.parametrize("url", ["http://[bad", "ftp://assets.pixelcut.app/r.png", "https://", "/r.png"])
def test_a_result_url_that_is_not_an_http_url_is_an_invalid_reply(wire, url):
    """The one URL check (``is_http_url``): an unparsable URL is an invalid reply, not a ValueError."""
    with pytest.raises(InvalidVendorResponseError, match="result_url"):
        wire.parse_image_reply(httpx.Response(200, json={"result_url": url}))


def test_a_success_reply_echoing_the_key_is_quoted_redacted(wire):
    with pytest.raises(InvalidVendorResponseError) as info:
        wire.parse_image_reply(httpx.Response(200, json={"error": f"bad X-API-KEY {KEY}"}))
    assert KEY not in info.value.message and KEY[:6] not in json.dumps(info.value.as_dict())
    assert "***" in info.value.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [({"credits_remaining": 42}, Decimal(42)), ({"credits_remaining": " 3.25 "}, Decimal("3.25"))],
)
def test_parse_balance(wire, body, expected):
    balance = wire.parse_balance(httpx.Response(200, json=body))
    assert balance.remaining == expected
    assert balance.credit_pack is None


def test_negative_credits_remaining_is_clamped_to_zero(wire):
    balance = wire.parse_balance(httpx.Response(200, json={"credits_remaining": -3}))
    assert balance.remaining == Decimal(0)
    assert balance.raw == {"credits_remaining": -3}


@pytest.mark.parametrize("body", [{"credits_remaining": "many"}, {"credits_remaining": None}, {}, [], "42"])
def test_parse_balance_garbage(wire, body):
    with pytest.raises(InvalidVendorResponseError):
        wire.parse_balance(httpx.Response(200, json=body))


# -- errors: the whole documented table --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "exc_type"),
    [
        (400, "invalid_request_body", VendorRequestError),
        (400, "missing_parameter", VendorRequestError),
        (400, "invalid_parameter", VendorRequestError),
        (400, "unsupported_content_type", VendorRequestError),
        (400, "malformed_image", InputRejectedError),
        (400, "unsupported_image_format", InputRejectedError),
        (400, "file_size_too_large", InputRejectedError),
        (400, "resolution_too_high", InputRejectedError),
        (400, "unknown_foreground", InputRejectedError),
        (401, "invalid_auth_token", VendorAuthError),
        (403, "insufficient_api_credits", OutOfCreditsError),
        (429, "rate_limit_exceeded", RateLimitedError),
    ],
)
def test_error_table(wire, status, code, exc_type):
    exc = wire.error_from_reply(httpx.Response(status, json={"error": "Human text", "error_code": code}))
    assert type(exc) is exc_type
    assert (exc.code, exc.message, exc.status_code) == (code, "Human text", status)


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            httpx.Response(
                403,
                text="<html><title>Attention Required!</title>Sorry, you have been blocked</html>",
                headers={"content-type": "text/html"},
            ),
            id="a-gateway-block",
        ),
        pytest.param(httpx.Response(403), id="no-body"),
        pytest.param(httpx.Response(403, json={"error": "Forbidden"}), id="no-error-code"),
        pytest.param(
            httpx.Response(403, json={"error": "Not included in your plan", "error_code": "plan_limit"}),
            id="an-undocumented-code",
        ),
    ],
)
def test_a_403_without_a_documented_code_fails_this_image_and_is_no_bad_key(wire, response):
    """
    Pixelcut documents one 403, ``insufficient_api_credits``, and answers a bad key 401
    ``invalid_auth_token``: a 403 without either code (a gateway or firewall block, a plan limit) is no
    evidence of a bad key, so it must not halt the batch (``auth_failed``) nor be retried blindly.
    """
    exc = wire.error_from_reply(response)
    assert type(exc) is VendorRequestError and exc.status_code == 403
    assert not exc.fatal_for_batch and not exc.retryable


@pytest.mark.parametrize(
    ("status", "code"), [(403, "invalid_auth_token"), (401, None), (401, "invalid_auth_token")]
)
def test_a_bad_key_is_still_an_auth_error(wire, status, code):
    body = {"error": "API Token not found"} | ({"error_code": code} if code else {})
    exc = wire.error_from_reply(httpx.Response(status, json=body))
    assert type(exc) is VendorAuthError and exc.fatal_for_batch


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(500), "Internal Server Error"),
        (httpx.Response(500, text="oops"), "oops"),
        (httpx.Response(500, json=["x"]), '["x"]'),
        (httpx.Response(500, content=b"\xff\xfe\x00binary"), "\ufffd\ufffd\x00binary"),
    ],
)
def test_500_without_envelope(wire, response, message):
    exc = wire.error_from_reply(response)
    assert isinstance(exc, TransientVendorError)
    assert exc.code is None
    assert exc.message == message


def test_long_error_bodies_are_cut(wire):
    exc = wire.error_from_reply(
        httpx.Response(400, json={"error": "x" * 5000, "error_code": "invalid_parameter"})
    )
    assert len(exc.message) <= 300
    assert json.dumps(exc.as_dict())


def test_the_spec_declares_that_a_call_may_be_followed_by_a_retried_result_download(wire):
    # a JSON reply is read as a result_url whatever was asked for (parse_image_reply): any call may point
    # at its result, which the hook downloads under the retry policy again (ClaimHold counts it)
    assert PixelcutWire.spec.result_download
    reply = httpx.Response(200, json={"result_url": "https://assets.pixelcut.app/public/r.png"})
    assert isinstance(wire.parse_image_reply(reply), ResultLocation)
    assert not PIXIAN_SPEC.result_download and not POOF_SPEC.result_download
