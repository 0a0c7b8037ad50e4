"""Pixian wire format: options, request building, header/balance parsing, error mapping (no I/O)."""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from PIL import Image

from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
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
from airflow_provider_bgremoval.results import AccountState, Balance
from airflow_provider_bgremoval.vendors.base import ConnectionSettings, ImageInput, WireRequest
from airflow_provider_bgremoval.vendors.pixian import (
    MAX_BASE64_CHARS,
    ForegroundBox,
    PixianOptions,
    PixianWire,
    Size,
    parse_test_mode,
)

API_ID = "px_wire_id_42"
SECRET = "px_wire_secret_0123456789"
BASE = "https://api.pixian.ai"


def make_wire(**extras: Any) -> PixianWire:
    return PixianWire(ConnectionSettings(base_url=BASE, api_key=SECRET, api_id=API_ID, extras=extras))


@pytest.fixture
def wire() -> PixianWire:
    return make_wire()


def png_bytes(size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


IMAGE = ImageInput(data=png_bytes(), filename="shoe.png", content_type="image/png")


def multipart_fields(request: httpx.Request) -> tuple[dict[str, str], dict[str, tuple[str | None, bytes]]]:
    """Text fields and file fields of an encoded form request (multipart or urlencoded)."""
    content_type = request.headers["content-type"]
    body = request.read()
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(body.decode(), keep_blank_values=True)), {}
    assert content_type.startswith("multipart/form-data")
    boundary = content_type.split("boundary=")[1].encode()
    fields: dict[str, str] = {}
    files: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + boundary)[1:-1]:
        head, _, payload = part.strip(b"\r\n").partition(b"\r\n\r\n")
        disposition = next(
            line for line in head.decode().split("\r\n") if line.lower().startswith("content-disposition")
        )
        params = dict(item.strip().split("=", 1) for item in disposition.split(";")[1:] if "=" in item)
        name = params["name"].strip('"')
        if "filename" in params:
            files[name] = (params["filename"].strip('"'), payload)
        else:
            fields[name] = payload.decode()
    return fields, files


def encode(wire: PixianWire, wire_request: WireRequest) -> httpx.Request:
    return httpx.Request(
        wire_request.method,
        BASE + wire_request.path,
        headers={**wire.auth_headers(), **wire_request.headers},
        data=wire_request.data,
        files=wire_request.files,
    )


def build(
    wire: PixianWire,
    options: RemovalOptions | None = None,
    vendor_options: Any = None,
    image: ImageInput = IMAGE,
) -> tuple[WireRequest, dict[str, str], dict[str, tuple[str | None, bytes]]]:
    """Plan like the hook, build the native request, encode it with httpx, read the form back."""
    options = options or RemovalOptions()
    plan = split_options(options, wire.capabilities_for(vendor_options))
    wire_request = wire.remove_background_request(image, plan.native, vendor_options)
    fields, files = multipart_fields(encode(wire, wire_request))
    return wire_request, fields, files


# -- vendor data ---------------------------------------------------------------------------------
def test_vendor_data() -> None:
    assert PixianWire.spec.name == "pixian"
    assert PixianWire.spec.default_base_url == "https://api.pixian.ai"
    assert PixianWire.spec.default_timeout == 180.0
    caps = PixianWire.spec.capabilities
    assert caps.output_formats == frozenset({"png", "jpeg"})
    assert caps.background_color is True
    assert caps.crop is True
    assert PixianWire.spec.limits.max_pixels == 32_000_000
    assert PixianWire.spec.limits.max_bytes == 128_000_000
    assert PixianWire.spec.limits.formats == frozenset({"JPEG", "PNG"})
    assert PixianWire.spec.retry_policy.rate_limit_step == 5.0
    assert PixianWire.spec.base_cost == Decimal(1)
    assert MAX_BASE64_CHARS == 1_000_000


# -- typed options -------------------------------------------------------------------------------
def test_options_normalise_template_strings() -> None:
    opts = PixianOptions(
        test="true",  # type: ignore[arg-type]
        max_pixels="1000000",  # type: ignore[arg-type]
        input_encoding="BASE64",  # type: ignore[arg-type]
        result_margin=" 10px   20%  5.5px 15% ",
        target_size="1920x1080",  # type: ignore[arg-type]
        vertical_alignment="Bottom",  # type: ignore[arg-type]
        jpeg_quality="80",  # type: ignore[arg-type]
    )
    assert opts == PixianOptions(
        test=True,
        max_pixels=1_000_000,
        input_encoding="base64",
        result_margin="10px 20% 5.5px 15%",
        target_size=(1920, 1080),
        vertical_alignment="bottom",
        jpeg_quality=80,
    )
    assert PixianOptions(target_size="1920 1080").target_size == (1920, 1080)  # type: ignore[arg-type]
    assert PixianOptions(target_size=[640, 480]).target_size == (640, 480)  # type: ignore[arg-type]
    assert opts.as_dict()["target_size"] == [1920, 1080]
    json.dumps(opts.as_dict())


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example/a.bmp",
        "https://cdn.example/a.GIF",
        "https://cdn.example/a.jpeg",
        "https://cdn.example/a.jpg?X-Goog-Signature=abc",
        "https://cdn.example/a.png#top",
        "https://cdn.example/a.tif",
        "https://cdn.example/a.TIFF",
        "https://cdn.example/photos/1234",  # no extension: Pixian sees what it serves
        "https://cdn.example/render.php?id=3",
        "https://cdn.example/dir.webp/a.png",
    ],
)
def test_image_url_of_a_documented_file_type_passes(url: str) -> None:
    # image.url "Must be a .bmp, .gif, .jpeg, .png, or .tiff file."
    assert PixianWire.check_call(RemovalOptions(), None, image_url=url) == PixianOptions()
    request = make_wire().remove_background_request(ImageInput(url=url), RemovalOptions())
    assert request.data is not None
    assert request.data["image.url"] == url


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example/a.webp",
        "https://cdn.example/a.WebP?sig=1",
        "https://cdn.example/a.avif",
        "https://cdn.example/IMG_1.HEIC",
        "https://cdn.example/logo.svg",
        "https://storage.googleapis.com/download/storage/v1/b/bkt/o/photos%2Fa.webp?alt=media",
    ],
)
def test_image_url_of_another_image_type_is_refused_before_any_call(url: str) -> None:
    with pytest.raises(InvalidOptionError, match=r"image\.url must be a \.bmp") as info:
        PixianWire.check_call(RemovalOptions(), None, image_url=url)
    assert info.value.parameter == "image_url"
    with pytest.raises(InvalidOptionError):
        make_wire().remove_background_request(ImageInput(url=url), RemovalOptions())


def test_target_size_has_no_invented_upper_limit() -> None:
    # Pixian documents no range for result.target_size: the client sends any positive size.
    assert PixianOptions(target_size=(200_000, 1)).target_size == (200_000, 1)
    assert PixianOptions(target_size="30000 30000").target_size == (30_000, 30_000)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="below 1"):
        PixianOptions(target_size=(0, 10))


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"test": "maybe"}, "test"),
        ({"max_pixels": 99}, "max_pixels"),
        ({"max_pixels": 25_000_001}, "max_pixels"),
        ({"max_pixels": "many"}, "max_pixels"),
        ({"max_pixels": True}, "max_pixels"),
        ({"input_encoding": "url"}, "input_encoding"),
        ({"result_margin": "10"}, "result_margin"),
        ({"result_margin": "1px 2px 3px 4px 5px"}, "result_margin"),
        ({"result_margin": "10em"}, "result_margin"),
        ({"result_margin": "-5px"}, "result_margin"),
        ({"target_size": "1920"}, "target_size"),
        ({"target_size": "0 100"}, "target_size"),
        ({"target_size": 5}, "target_size"),
        ({"target_size": (100, 100), "vertical_alignment": "center"}, "vertical_alignment"),
        ({"vertical_alignment": "top"}, "vertical_alignment"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
        ({"delta_png": "perhaps"}, "delta_png"),
        ({"delta_png": True, "result_margin": "5px"}, "result_margin"),
        ({"delta_png": True, "target_size": (100, 100)}, "target_size"),
    ],
)
def test_options_reject_bad_values_naming_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        PixianOptions(**kwargs)
    assert info.value.parameter == parameter


def test_options_coerce() -> None:
    assert PixianOptions.coerce(None) == PixianOptions()
    opts = PixianOptions(test=True)
    assert PixianOptions.coerce(opts) is opts
    assert PixianOptions.coerce({"delta_png": "true", "max_pixels": "500"}) == PixianOptions(
        delta_png=True, max_pixels=500
    )
    with pytest.raises(InvalidOptionError, match="shadow") as info:
        PixianOptions.coerce({"shadow": True})
    assert info.value.parameter == "vendor_options"
    with pytest.raises(InvalidOptionError):
        PixianOptions.coerce(42)  # type: ignore[arg-type]


def test_unified_margin_conflicts_with_native_geometry() -> None:
    options = RemovalOptions.create(crop=True, margin="5%")
    PixianWire.check_call(options, PixianOptions())
    PixianWire.check_call(RemovalOptions.create(crop=True), PixianOptions(result_margin="5%"))
    for opts, parameter in (
        (PixianOptions(result_margin="10px"), "result_margin"),
        (PixianOptions(target_size=(100, 100)), "target_size"),
    ):
        with pytest.raises(InvalidOptionError) as info:
            PixianWire.check_call(options, opts)
        assert info.value.parameter == parameter


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), (True, True), (False, False), ("true", True), ("False", False), ("1", True), ("", False)],
)
def test_parse_test_mode(value: Any, expected: bool) -> None:
    assert parse_test_mode(value) is expected


def test_parse_test_mode_rejects_garbage() -> None:
    with pytest.raises(InvalidOptionError) as info:
        parse_test_mode("sometimes")
    assert info.value.parameter == "test_mode"


# -- requests ------------------------------------------------------------------------------------
def test_auth_header_is_http_basic(wire: PixianWire) -> None:
    token = base64.b64encode(f"{API_ID}:{SECRET}".encode()).decode()
    assert wire.auth_headers() == {"Authorization": f"Basic {token}"}


def test_auth_needs_an_api_id() -> None:
    wire = PixianWire(ConnectionSettings(base_url=BASE, api_key=SECRET))
    with pytest.raises(InvalidOptionError) as info:
        wire.auth_headers()
    assert info.value.parameter == "login"


def test_default_request(wire: PixianWire) -> None:
    wire_request, fields, files = build(wire)
    assert wire_request.method == "POST"
    assert wire_request.path == "/api/v2/remove-background"
    assert wire_request.billed is True
    assert fields == {"output.format": "png"}
    assert files == {"image": ("shoe.png", IMAGE.data)}


@pytest.mark.parametrize(
    ("options", "vendor_options", "expected"),
    [
        ({"output_format": "png"}, None, {"output.format": "png"}),
        (
            {"output_format": "jpeg"},
            None,
            {"output.format": "jpeg", "output.jpeg_quality": "90", "background.color": "#FFFFFF"},
        ),
        (
            {"output_format": "jpeg", "jpeg_quality": 60, "background_color": "navy"},
            None,
            {"output.format": "jpeg", "output.jpeg_quality": "60", "background.color": "#000080"},
        ),
        (
            {"output_format": "jpeg"},
            {"jpeg_quality": 95},
            {"output.format": "jpeg", "output.jpeg_quality": "95", "background.color": "#FFFFFF"},
        ),
        ({"background_color": "#0055ff"}, None, {"output.format": "png", "background.color": "#0055FF"}),
        ({"crop": True}, None, {"output.format": "png", "result.crop_to_foreground": "true"}),
        # a unified margin makes the crop (and then the background) local
        ({"crop": True, "margin": "5%", "background_color": "red"}, None, {"output.format": "png"}),
        ({"output_format": "webp"}, None, {"output.format": "png"}),
        ({"max_size": (100, 100)}, None, {"output.format": "png"}),
        ({}, {"test": True}, {"output.format": "png", "test": "true"}),
        ({}, {"test": False}, {"output.format": "png"}),
        ({}, {"max_pixels": 1_000_000}, {"output.format": "png", "max_pixels": "1000000"}),
        (
            {"crop": True},
            {"result_margin": "10px 20% 5px 15%"},
            {
                "output.format": "png",
                "result.crop_to_foreground": "true",
                "result.margin": "10px 20% 5px 15%",
            },
        ),
        (
            {},
            {"target_size": (1920, 1080), "vertical_alignment": "top"},
            {"output.format": "png", "result.target_size": "1920 1080", "result.vertical_alignment": "top"},
        ),
        ({}, {"target_size": "640 480"}, {"output.format": "png", "result.target_size": "640 480"}),
    ],
)
def test_parameter_mapping(
    wire: PixianWire, options: dict[str, Any], vendor_options: dict[str, Any] | None, expected: dict[str, str]
) -> None:
    _, fields, files = build(wire, RemovalOptions.create(**options), vendor_options)
    assert fields == expected
    assert set(files) == {"image"}


def test_test_mode_comes_from_the_connection_unless_the_option_says(wire: PixianWire) -> None:
    test_wire = make_wire(test_mode=True)
    wire_request, fields, _ = build(test_wire)
    assert fields["test"] == "true"
    assert wire_request.billed is False
    wire_request, fields, _ = build(make_wire(test_mode="true"))
    assert fields["test"] == "true"
    wire_request, fields, _ = build(test_wire, vendor_options=PixianOptions(test=False))
    assert "test" not in fields
    assert wire_request.billed is True
    _, fields, _ = build(wire)
    assert "test" not in fields


def test_image_url_input(wire: PixianWire) -> None:
    url = "https://cdn.example.com/shoe.png"
    _, fields, files = build(wire, image=ImageInput(url=url))
    assert fields == {"image.url": url, "output.format": "png"}
    assert files == {}


def test_base64_input(wire: PixianWire) -> None:
    _, fields, files = build(wire, vendor_options={"input_encoding": "base64"})
    assert files == {}
    assert base64.b64decode(fields["image.base64"]) == IMAGE.data
    assert fields["output.format"] == "png"


def test_base64_over_one_megabyte_is_rejected_locally(wire: PixianWire) -> None:
    exact = ImageInput(data=b"x" * (MAX_BASE64_CHARS * 3 // 4))  # exactly 1,000,000 characters
    wire_request = wire.remove_background_request(
        exact, RemovalOptions(), PixianOptions(input_encoding="base64")
    )
    assert len(wire_request.data["image.base64"]) == MAX_BASE64_CHARS  # type: ignore[index]
    over = ImageInput(data=b"x" * (MAX_BASE64_CHARS * 3 // 4 + 1))
    with pytest.raises(InputRejectedError, match="1,000,000") as info:
        wire.remove_background_request(over, RemovalOptions(), PixianOptions(input_encoding="base64"))
    assert info.value.local is True
    assert info.value.code == "file_size_too_large"


def test_delta_png_request(wire: PixianWire) -> None:
    wire_request, fields, files = build(wire, vendor_options={"delta_png": True, "max_pixels": 100_000})
    assert fields == {"output.format": "delta_png", "max_pixels": "100000"}
    assert set(files) == {"image"}
    assert wire_request.billed is True


@pytest.mark.parametrize(
    "options",
    [
        {"background_color": "#ff0000"},
        {"crop": True},
        {"crop": True, "margin": "10px", "background_color": "white"},
        {"output_format": "jpeg"},
        {"output_format": "webp", "max_size": 50},
    ],
)
def test_delta_png_plans_every_unified_option_locally(wire: PixianWire, options: dict[str, Any]) -> None:
    _, fields, _ = build(wire, RemovalOptions.create(**options), {"delta_png": True})
    assert fields == {"output.format": "delta_png"}


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"background_color": "#ff0000"}, "background_color"),
        ({"crop": True}, "crop"),
        ({"output_format": "jpeg", "background_color": "#ffffff"}, "background_color"),
    ],
)
def test_delta_png_rejects_native_options_the_vendor_would_ignore(
    wire: PixianWire, options: dict[str, Any], parameter: str
) -> None:
    """A plan made for Pixian's normal capabilities asks for things delta_png ignores: refuse it."""
    native = split_options(RemovalOptions.create(**options), wire.spec.capabilities).native
    with pytest.raises(InvalidOptionError) as info:
        wire.remove_background_request(IMAGE, native, PixianOptions(delta_png=True))
    assert info.value.parameter == parameter
    with pytest.raises(InvalidOptionError) as info:
        wire.remove_background_request(IMAGE, RemovalOptions(output_format="jpeg"), {"delta_png": True})
    assert info.value.parameter == "output_format"
    with pytest.raises(InvalidOptionError) as info:
        wire.remove_background_request(IMAGE, native, PixianOptions(delta_png=True))
    assert info.value.parameter == parameter


def test_delta_png_needs_the_image_bytes(wire: PixianWire) -> None:
    with pytest.raises(InvalidOptionError) as info:
        wire.remove_background_request(
            ImageInput(url="https://cdn.example.com/a.png"), RemovalOptions(), PixianOptions(delta_png=True)
        )
    assert info.value.parameter == "delta_png"


def test_delta_png_rejects_inputs_max_pixels_would_shrink(wire: PixianWire) -> None:
    image = ImageInput(data=png_bytes((20, 10)))  # 200 pixels
    wire.remove_background_request(image, RemovalOptions(), PixianOptions(delta_png=True, max_pixels=200))
    with pytest.raises(InputRejectedError, match="max_pixels") as info:
        wire.remove_background_request(image, RemovalOptions(), PixianOptions(delta_png=True, max_pixels=199))
    assert info.value.local is True
    assert info.value.code == "too_many_pixels"


def test_non_native_format_is_refused(wire: PixianWire) -> None:
    with pytest.raises(InvalidOptionError) as info:
        wire.remove_background_request(IMAGE, RemovalOptions(output_format="webp"))
    assert info.value.parameter == "output_format"


def test_balance_request(wire: PixianWire) -> None:
    request = wire.balance_request()
    assert (request.method, request.path, request.billed) == ("GET", "/api/v2/account", False)


# -- replies -------------------------------------------------------------------------------------
ALL_HEADERS = {
    "content-type": "image/png",
    "x-credits-charged": "0.25",
    "x-credits-calculated": "1.5",
    "x-input-orientation": "6",
    "x-input-size": "4000 3000",
    "x-result-size": "1000 750",
    "x-input-foreground": "100 200 3000 2500",
    "x-result-foreground": "25 50 750 625",
}


def test_every_result_header_is_parsed(wire: PixianWire) -> None:
    response = httpx.Response(200, headers=ALL_HEADERS, content=png_bytes())
    result = wire.parse_image_reply(response)
    assert result.content == png_bytes()
    assert result.content_type == "image/png"
    assert result.vendor == "pixian"
    assert result.credits_charged == Decimal("0.25")
    assert result.credits_calculated == Decimal("1.5")
    assert (result.width, result.height) == (1000, 750)
    assert result.metadata == {
        "input_orientation": 6,
        "input_size": Size(4000, 3000),
        "result_size": Size(1000, 750),
        "input_foreground": ForegroundBox(top=100, left=200, width=3000, height=2500),
        "result_foreground": ForegroundBox(top=25, left=50, width=750, height=625),
    }
    assert result.metadata["input_foreground"].left == 200
    json.dumps(dict(result.metadata))  # primitives for manifests
    assert wire.parse_image_reply(response) == result


def test_missing_or_malformed_headers_are_left_out(wire: PixianWire) -> None:
    response = httpx.Response(
        200,
        headers={
            "content-type": "image/jpeg",
            "x-credits-charged": "lots",
            "x-input-orientation": "12",
            "x-input-size": "4000",
            "x-result-foreground": "1 2 three 4",
            "x-result-size": "1e400 5",  # overflows an int: left out, never an OverflowError
        },
        content=b"jpeg",
    )
    result = wire.parse_image_reply(response)
    assert result.credits_charged is None
    assert result.credits_calculated is None
    assert result.metadata == {}
    assert result.content_type == "image/jpeg"


@pytest.mark.parametrize("value", ["-5", "-0.25", "NaN", "Infinity", "-Infinity"])
def test_a_negative_or_non_finite_credit_header_is_unknown(wire: PixianWire, value: str) -> None:
    headers = {"content-type": "image/png", "x-credits-charged": value, "x-credits-calculated": value}
    result = wire.parse_image_reply(httpx.Response(200, headers=headers, content=b"png"))
    assert (result.credits_charged, result.credits_calculated) == (None, None)  # the unit cost is booked


def test_empty_image_reply_is_invalid(wire: PixianWire) -> None:
    with pytest.raises(InvalidVendorResponseError):
        wire.parse_image_reply(httpx.Response(200, content=b""))


def test_credits_calculated_helper(wire: PixianWire) -> None:
    result = wire.parse_image_reply(
        httpx.Response(200, headers={"x-credits-calculated": "0.5"}, content=b"x")
    )
    assert wire.credits_calculated(result) == Decimal("0.5")
    with pytest.raises(InvalidVendorResponseError, match="X-Credits-Calculated") as info:
        wire.credits_calculated(wire.parse_image_reply(httpx.Response(200, content=b"x")))
    assert info.value.possibly_charged is False


def test_finish_result_records_test_mode(wire: PixianWire) -> None:
    result = wire.parse_image_reply(httpx.Response(200, content=png_bytes()))
    assert wire.finish_result(result, IMAGE, None).metadata["test_mode"] is False
    assert make_wire(test_mode=True).finish_result(result, IMAGE, None).metadata["test_mode"] is True


# -- balance -------------------------------------------------------------------------------------
def test_balance_active_fractional(wire: PixianWire) -> None:
    body = {
        "creditPack": "pack_1000",
        "state": "active",
        "useBefore": "2027-01-01T00:00:00Z",
        "credits": 12.75,
    }
    balance = wire.parse_balance(httpx.Response(200, json=body))
    assert balance.vendor == "pixian"
    assert balance.remaining == Decimal("12.75")
    assert balance.state is AccountState.ACTIVE
    assert balance.credit_pack == "pack_1000"
    assert balance.raw == body
    assert balance.usable


def test_balance_dormant_has_nothing_usable(wire: PixianWire) -> None:
    body = {
        "creditPack": "pack_100",
        "state": "dormant",
        "useBefore": "2024-01-01T00:00:00Z",
        "credits": 40.5,
    }
    balance = wire.parse_balance(httpx.Response(200, json=body))
    assert balance.remaining == Decimal(0)
    assert balance.state is AccountState.DORMANT
    assert balance.raw["credits"] == 40.5
    assert not balance.usable


def test_balance_documented_example(wire: PixianWire) -> None:
    body = {"creditPack": "none", "state": "dormant", "useBefore": "1970-01-01T00:00:00Z", "credits": 0}
    balance = wire.parse_balance(httpx.Response(200, json=body))
    assert (balance.remaining, balance.state, balance.credit_pack) == (
        Decimal(0),
        AccountState.DORMANT,
        "none",
    )


def test_balance_carries_when_its_credit_pack_expires(wire: PixianWire) -> None:
    """``useBefore``: the pack's credits go dormant then; parsed once, into a typed UTC datetime."""
    body = {"creditPack": "pack_500", "state": "active", "useBefore": "2027-01-01T00:00:00Z", "credits": 9}
    balance = wire.parse_balance(httpx.Response(200, json=body))
    assert type(balance) is Balance  # the one balance type: no vendor subclass to check for
    assert balance.expires_at == datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert balance.as_dict() == {  # the XCom shape of a balance, with the expiry Pixian reports
        "vendor": "pixian",
        "remaining": "9",
        "state": "active",
        "credit_pack": "pack_500",
        "expires_at": "2027-01-01T00:00:00+00:00",
    }
    offset = {**body, "useBefore": "2027-01-01T02:30:00+02:30"}
    assert wire.parse_balance(httpx.Response(200, json=offset)).expires_at == datetime(
        2027, 1, 1, tzinfo=timezone.utc
    )
    naive = {**body, "useBefore": "2027-01-01T00:00:00"}  # ISO 8601 without an offset: read as UTC
    assert wire.parse_balance(httpx.Response(200, json=naive)).expires_at == datetime(
        2027, 1, 1, tzinfo=timezone.utc
    )


def test_balance_read_through_a_test_mode_connection_says_so() -> None:
    """The connection's ``test_mode`` extra: its calls are free, so a dormant account still takes them."""
    body = {"creditPack": "none", "state": "dormant", "useBefore": "1970-01-01T00:00:00Z", "credits": 0}
    balance = make_wire(test_mode=True).parse_balance(httpx.Response(200, json=body))
    assert (balance.state, balance.remaining, balance.test_mode) == (AccountState.DORMANT, Decimal(0), True)
    assert balance.as_dict()["test_mode"] is True
    plain = make_wire().parse_balance(httpx.Response(200, json=body))
    assert plain.test_mode is False and "test_mode" not in plain.as_dict()


@pytest.mark.parametrize("use_before", [None, "", "soon", 1798761600, "2027-13-01T00:00:00Z", ["2027"]])
def test_balance_without_a_readable_expiry_has_none(wire: PixianWire, use_before: Any) -> None:
    """A missing or unreadable ``useBefore`` says nothing of an expiry; the balance is still read."""
    body = {"state": "active", "credits": 5, "useBefore": use_before}
    balance = wire.parse_balance(httpx.Response(200, json=body))
    assert balance.expires_at is None and "expires_at" not in balance.as_dict()
    assert balance.remaining == Decimal(5)
    assert wire.parse_balance(httpx.Response(200, json={"state": "active", "credits": 5})).expires_at is None


@pytest.mark.parametrize("state", ["frozen", "suspended", "expired", "inactive", "ACTIVE-pending", "1"])
def test_balance_of_an_undocumented_state_has_nothing_usable(wire: PixianWire, state: str) -> None:
    """Only ``active`` is a usable pack: another state with credits counted as usable (state unknown)."""
    balance = wire.parse_balance(httpx.Response(200, json={"state": state, "credits": "3.125"}))
    assert balance.state is AccountState.SUSPENDED
    assert balance.remaining == Decimal(0)
    assert not balance.usable
    assert balance.raw["state"] == state
    assert balance.credit_pack is None


@pytest.mark.parametrize(
    "body", [{"credits": "3.125"}, {"state": "", "credits": 3.125}, {"state": None, "credits": 3.125}]
)
def test_balance_without_a_state_keeps_its_string_or_number_credits(
    wire: PixianWire, body: dict[str, Any]
) -> None:
    balance = wire.parse_balance(httpx.Response(200, json=body))
    assert balance.state is AccountState.UNKNOWN
    assert balance.remaining == Decimal("3.125")
    assert balance.usable


def test_balance_state_is_read_in_any_case(wire: PixianWire) -> None:
    balance = wire.parse_balance(httpx.Response(200, json={"state": " Active ", "credits": 2}))
    assert (balance.state, balance.remaining) == (AccountState.ACTIVE, Decimal(2))


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>maintenance</html>"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={"state": "active"}),
        httpx.Response(200, json={"state": "active", "credits": "many"}),
    ],
)
def test_unusable_balance_reply(wire: PixianWire, response: httpx.Response) -> None:
    with pytest.raises(InvalidVendorResponseError) as info:
        wire.parse_balance(response)
    assert info.value.possibly_charged is False


# -- errors --------------------------------------------------------------------------------------
def envelope(status: int, code: int, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "error_class", "code"),
    [
        (400, envelope(400, 1006, "Failed to read the supplied image. "), {}, InputRejectedError, "1006"),
        (400, envelope(400, 1003, "The image is too large"), {}, InputRejectedError, "1003"),
        (400, envelope(400, 1002, "Invalid parameter: background.color"), {}, VendorRequestError, "1002"),
        (400, envelope(400, 1002, "Could not fetch image.url"), {}, InputRejectedError, "1002"),
        (401, envelope(401, 1101, "Invalid API credentials"), {}, VendorAuthError, "1101"),
        (403, envelope(403, 1104, "Forbidden"), {}, VendorAuthError, "1104"),
        (402, envelope(402, 1102, "Insufficient credits"), {}, OutOfCreditsError, "1102"),
        (402, envelope(402, 1103, "Your credit pack is dormant"), {}, OutOfCreditsError, "1103"),
        (403, envelope(403, 1103, "Account is dormant: buy a credit pack"), {}, OutOfCreditsError, "1103"),
        (400, envelope(400, 1102, "Not enough credits"), {}, OutOfCreditsError, "1102"),
        (429, envelope(429, 1201, "Too Many Requests"), {}, RateLimitedError, "1201"),
        (408, b"Request Timeout", {}, TransientVendorError, None),
        (500, envelope(500, 1000, "Internal error"), {}, TransientVendorError, "1000"),
        (500, b"<html><body>Internal Server Error</body></html>", {}, TransientVendorError, None),
        (502, b"Bad Gateway", {}, TransientVendorError, None),
        (503, b"", {}, TransientVendorError, None),
        (404, b"Not Found", {}, VendorRequestError, None),
        (413, b"Payload Too Large", {}, InputRejectedError, None),
    ],
)
def test_error_mapping(
    wire: PixianWire,
    status: int,
    body: Any,
    headers: dict[str, str],
    error_class: type[BgRemovalError],
    code: str | None,
) -> None:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    error = wire.error_from_reply(httpx.Response(status, content=content, headers=headers))
    assert type(error) is error_class
    assert error.vendor == "pixian"
    assert error.status_code == status
    assert error.code == code
    assert SECRET not in str(error)


def test_non_json_error_keeps_a_short_excerpt(wire: PixianWire) -> None:
    body = b"<html>\n<body>" + b"upstream connect error " * 50 + b"</body></html>"
    error = wire.error_from_reply(httpx.Response(500, content=body))
    assert "upstream connect error" in error.message
    assert "\n" not in error.message
    assert len(error.message) <= 300


def test_flat_error_object_is_understood(wire: PixianWire) -> None:
    reply = wire.parse_error(
        httpx.Response(400, json={"status": 400, "code": 1006, "message": "Failed to read"})
    )
    assert (reply.code, reply.message) == ("1006", "Failed to read")


def test_rate_limit_carries_retry_after(wire: PixianWire) -> None:
    error = wire.error_from_reply(httpx.Response(429, headers={"Retry-After": "7"}, content=b""))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 7.0
    error = wire.error_from_reply(httpx.Response(429, json=envelope(429, 1201, "slow down")))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after is None
    assert error.message == "slow down"


# -- costs ---------------------------------------------------------------------------------------
def test_estimate_cost() -> None:
    assert PixianWire.estimate_cost() == Decimal(1)
    assert PixianWire.estimate_cost(PixianOptions(test=True)) == Decimal(0)
    assert PixianWire.estimate_cost({"test": False}) == Decimal(1)


def test_capabilities_for(wire: PixianWire) -> None:
    assert wire.capabilities_for(None) is PixianWire.spec.capabilities
    delta = wire.capabilities_for({"delta_png": True})
    assert delta.output_formats == frozenset({"png"})
    assert delta.background_color is False
    assert delta.crop is False
