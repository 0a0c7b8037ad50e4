"""PixelcutHook over httpx.MockTransport: every endpoint, errors, retries, result URLs, local work."""

from __future__ import annotations

import asyncio
import email.policy
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from PIL import Image

from airflow_provider_bgremoval.exceptions import (
    InputRejectedError,
    InvalidOptionError,
    InvalidVendorResponseError,
    OutOfCreditsError,
    RateLimitedError,
    ResultDownloadError,
    TransientVendorError,
    VendorAuthError,
    VendorRequestError,
)
from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.pacing import ManualClock
from airflow_provider_bgremoval.retry import RetryPolicy
from airflow_provider_bgremoval.vendors.pixelcut import (
    PixelcutImageTransform,
    PixelcutOptions,
    PixelcutShadow,
    PixelcutWire,
)
from tests.support.connections import SleepRecorder, set_connection

API = "https://api.developer.pixelcut.ai"
ASSETS = "https://assets.pixelcut.app"
KEY = "sk_test_0123456789SECRETKEY"
IMAGES = Path(__file__).resolve().parents[2] / "data" / "images"


def photo(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def cutout(data: bytes) -> bytes:
    """A fake cut-out: the photo with only its central half (by each side) left opaque."""
    image = Image.open(io.BytesIO(data)).convert("RGBA")
    width, height = image.size
    alpha = Image.new("L", image.size, 0)
    alpha.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    image.putalpha(alpha)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def generated(data: bytes | None = None) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1024, 1024), (180, 150, 120)).save(out, format="JPEG", quality=80)
    return out.getvalue()


def parse_multipart(request: httpx.Request) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """Split a multipart/form-data request into text fields and file fields."""
    header = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(header + request.content)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes, str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename():
            files[name] = (part.get_filename(), payload, part.get_content_type())
        else:
            fields[name] = payload.decode()
    return fields, files


Reply = httpx.Response | Callable[[httpx.Request], httpx.Response]


def fresh(reply: httpx.Response) -> httpx.Response:
    """A new copy of a canned reply (a response object cannot be sent twice, nor sync then async)."""
    return httpx.Response(reply.status_code, headers=list(reply.headers.multi_items()), content=reply.content)


class FakePixelcut:
    """
    A tiny in-test Pixelcut: honours Accept, crop, result URLs; ``script`` replies come first.

    :param script: replies (or reply factories) returned, in order, for API calls before the normal ones.
    """

    def __init__(self, script: list[Reply] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[httpx.Request] = []
        self.assets: dict[str, bytes] = {}
        self.asset_replies: dict[str, httpx.Response] = {}
        self.credits: Any = 42

    @property
    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == "api.developer.pixelcut.ai"]

    def fields(self, request: httpx.Request) -> tuple[dict[str, Any], bytes | None]:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            fields, files = parse_multipart(request)
            return dict(fields), files["image"][1] if "image" in files else None
        body = json.loads(request.content)
        return body, None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == "assets.pixelcut.app" or request.url.host.endswith(".example"):
            path = request.url.path
            if path in self.asset_replies:
                return fresh(self.asset_replies[path])
            if path in self.assets:
                return httpx.Response(200, content=self.assets[path], headers={"content-type": "image/png"})
            return httpx.Response(404, text="NoSuchKey")
        if self.script:
            reply = self.script.pop(0)
            return reply(request) if callable(reply) else fresh(reply)
        if request.url.path == "/v1/credits":
            return httpx.Response(200, json={"credits_remaining": self.credits})
        fields, data = self.fields(request)
        source = data if data is not None else photo("horse.png")
        if request.url.path == "/v1/remove-background":
            result = cutout(source)
            if str(fields.get("crop")).lower() == "true":
                image = Image.open(io.BytesIO(result))
                out = io.BytesIO()
                image.crop(image.getchannel("A").getbbox()).save(out, format="PNG", compress_level=1)
                result = out.getvalue()
            suffix, media = ".png", "image/png"
        elif request.url.path == "/v1/generate-background":
            result, suffix, media = generated(source), ".jpg", "image/jpeg"
        else:
            return httpx.Response(404, json={"error": "Not found", "error_code": "invalid_request_body"})
        if request.headers.get("accept") == "application/json":
            path = f"/public/result/{len(self.assets)}{suffix}"
            self.assets[path] = result
            return httpx.Response(200, json={"result_url": ASSETS + path})
        return httpx.Response(200, content=result, headers={"content-type": media})


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pixelcut_default", "pixelcut", password=KEY)


@pytest.fixture
def fake() -> FakePixelcut:
    return FakePixelcut()


@pytest.fixture
def sleeper() -> SleepRecorder:
    return SleepRecorder()


def make_hook(fake: FakePixelcut, sleeper: SleepRecorder | None = None, **kwargs: Any) -> PixelcutHook:
    sleeper = sleeper or SleepRecorder()
    transport = httpx.MockTransport(fake)
    return PixelcutHook(
        transport=transport,
        async_transport=transport,
        sleep=sleeper,
        async_sleep=sleeper.asleep,
        **{"pacing_clock": ManualClock(), **kwargs},  # pacing waits move a fake clock, nothing sleeps
    )


@pytest.fixture
def hook(connection: None, fake: FakePixelcut, sleeper: SleepRecorder) -> PixelcutHook:
    return make_hook(fake, sleeper)


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Call a hook method the sync way (in a worker thread) or its ``a``-prefixed async twin."""
    mode = request.param

    async def invoke(hook: PixelcutHook, name: str, *args: Any, **kwargs: Any) -> Any:
        if mode == "sync":
            return await asyncio.to_thread(getattr(hook, name), *args, **kwargs)
        return await getattr(hook, "a" + name)(*args, **kwargs)

    return invoke


def error(status: int, code: str | None = None, message: str = "boom") -> httpx.Response:
    if code is None:
        return httpx.Response(status, json={"error": message})
    return httpx.Response(status, json={"error": message, "error_code": code})


# -- remove-background -----------------------------------------------------------------------------


async def test_remove_bytes_is_multipart_png_with_image_accept(hook, fake, call):
    result = await call(hook, "remove_background", photo("chelsea.png"), filename="chelsea.png")
    (request,) = fake.requests
    assert request.method == "POST"
    assert str(request.url) == f"{API}/v1/remove-background"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["accept"] == "image/*"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    fields, files = parse_multipart(request)
    assert fields == {"format": "png"}
    assert files["image"] == ("chelsea.png", photo("chelsea.png"), "image/png")
    assert result.content_type == "image/png"
    assert (result.width, result.height) == (451, 300)
    assert result.vendor == "pixelcut"
    assert result.credits_charged is None  # Pixelcut reports no per-call cost
    assert result.call.attempts == 1
    assert Image.open(io.BytesIO(result.content)).mode == "RGBA"


async def test_remove_url_only_is_json(hook, fake, call):
    result = await call(
        hook,
        "remove_background",
        image_url="https://cdn.example/product.jpg",
        options=RemovalOptions.create(crop=True),
        vendor_options=PixelcutOptions(
            shadow=PixelcutShadow(opacity=0.8, x=0.2), margin="10%", margin_left="4px"
        ),
    )
    (request,) = fake.requests
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "image_url": "https://cdn.example/product.jpg",
        "format": "png",
        "shadow": {
            "enabled": True,
            "opacity": 0.8,
            "light_source": {"size": 0.3, "position": {"x": 0.2, "y": -0.6, "z": 0.7}},
        },
        "crop": True,
        "margin": "10%",
        "margin_left": "4px",
    }
    assert result.content_type == "image/png"
    assert (result.width, result.height) == (200, 164)  # natively cropped to the opaque centre


async def test_remove_multipart_nested_shadow_is_a_json_string_field(hook, fake, call):
    await call(
        hook,
        "remove_background",
        photo("coffee.png"),
        options=RemovalOptions.create(crop=True),
        vendor_options={"shadow": {"opacity": 0.6, "z": 1.1}, "margin_bottom": "0px"},
    )
    fields, _ = parse_multipart(fake.requests[0])
    assert fields["crop"] == "true"
    assert fields["margin_bottom"] == "0px"
    assert json.loads(fields["shadow"]) == {
        "enabled": True,
        "opacity": 0.6,
        "light_source": {"size": 0.3, "position": {"x": -0.3, "y": -0.6, "z": 1.1}},
    }


@pytest.mark.parametrize("by", ["upload", "url"])
async def test_automatic_shadow_is_sent_as_true(hook, fake, call, by):
    # Pixelcut: "Pass `true` for automatic shadow estimation or provide a light source for custom control."
    source = {"image": photo("coffee.png")} if by == "upload" else {"image_url": "https://cdn.example/p.jpg"}
    await call(hook, "remove_background", **source, vendor_options={"shadow": True})
    (request,) = fake.requests
    if by == "upload":
        fields, _ = parse_multipart(request)
        assert fields["shadow"] == "true"
    else:
        assert json.loads(request.content)["shadow"] is True
    assert hook.estimate_cost({"shadow": True}) == Decimal(4)


async def test_url_delivery_downloads_result_without_api_key(hook, fake, call):
    result = await call(
        hook, "remove_background", photo("rocket.jpg"), vendor_options=PixelcutOptions(result_delivery="url")
    )
    api, download = fake.requests
    assert api.headers["accept"] == "application/json"
    assert download.method == "GET"
    assert str(download.url) == f"{ASSETS}/public/result/0.png"
    assert "x-api-key" not in download.headers
    assert result.content_type == "image/png"
    assert result.metadata["result_url_host"] == "assets.pixelcut.app"
    assert (result.width, result.height) == (640, 427)


async def test_result_url_size_cap(connection, fake, call):
    hook = make_hook(fake, max_result_bytes=1_000)
    with pytest.raises(ResultDownloadError, match="cap") as info:
        await call(hook, "remove_background", photo("horse.png"), vendor_options={"result_delivery": "url"})
    assert info.value.possibly_charged


def test_result_url_size_cap_without_content_length(connection):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "assets.pixelcut.app":
            return httpx.Response(200, content=iter([b"\x89PNG" + b"x" * 600, b"y" * 600]))
        return httpx.Response(200, json={"result_url": f"{ASSETS}/r.png"})

    hook = PixelcutHook(transport=httpx.MockTransport(handler), sleep=SleepRecorder(), max_result_bytes=1_000)
    with pytest.raises(ResultDownloadError, match="cut off"):
        hook.remove_background(photo("horse.png"), vendor_options={"result_delivery": "url"})


@pytest.mark.parametrize("status", [404, 410, 403])
async def test_expired_result_url_is_a_download_error(hook, fake, call, status):
    fake.script.append(httpx.Response(200, json={"result_url": f"{ASSETS}/public/result/gone.png"}))
    fake.asset_replies["/public/result/gone.png"] = httpx.Response(status, text="<Error>Expired</Error>")
    with pytest.raises(ResultDownloadError) as info:
        await call(hook, "remove_background", photo("horse.png"), vendor_options={"result_delivery": "url"})
    assert info.value.status_code == status
    assert info.value.possibly_charged
    assert len(fake.requests) == 2  # no retry of the billed call, no retry of a 4xx download


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "ftp://assets.pixelcut.app/r.png", "data:,x", "javascript:alert(1)"]
)
async def test_redirect_to_non_http_scheme_is_refused(hook, fake, call, location):
    fake.script.append(httpx.Response(200, json={"result_url": f"{ASSETS}/public/result/moved.png"}))
    fake.asset_replies["/public/result/moved.png"] = httpx.Response(302, headers={"location": location})
    with pytest.raises(ResultDownloadError, match="refused"):
        await call(hook, "remove_background", photo("horse.png"), vendor_options={"result_delivery": "url"})
    assert len(fake.requests) == 2


async def test_redirect_to_https_is_followed(hook, fake, call):
    fake.script.append(httpx.Response(200, json={"result_url": f"{ASSETS}/public/result/moved.png"}))
    fake.asset_replies["/public/result/moved.png"] = httpx.Response(
        301, headers={"location": "https://mirror.example/final.png"}
    )
    fake.assets["/final.png"] = cutout(photo("horse.png"))
    result = await call(
        hook, "remove_background", photo("horse.png"), vendor_options={"result_delivery": "url"}
    )
    assert str(fake.requests[-1].url) == "https://mirror.example/final.png"
    assert result.content_type == "image/png"


@pytest.mark.parametrize(
    "body",
    [{"result_url": "file:///tmp/x.png"}, {"result_url": 42}, {"url": "https://x/y.png"}, ["nope"]],
)
async def test_unusable_result_url_reply(hook, fake, call, body):
    fake.script.append(httpx.Response(200, json=body))
    with pytest.raises(InvalidVendorResponseError):
        await call(hook, "remove_background", photo("horse.png"), vendor_options={"result_delivery": "url"})
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, content=b"", headers={"content-type": "image/png"}),
        httpx.Response(200, content=b"\x89PNG\r\n\x1a\n garbage", headers={"content-type": "image/png"}),
        httpx.Response(200, content=cutout(photo("horse.png"))[:2000], headers={"content-type": "image/png"}),
    ],
    ids=["empty", "garbage", "truncated"],
)
async def test_unusable_image_bytes(hook, fake, call, reply):
    fake.script.append(reply)
    with pytest.raises(InvalidVendorResponseError) as info:
        await call(hook, "remove_background", photo("horse.png"))
    assert info.value.possibly_charged


# -- local post-processing on real photos ------------------------------------------------------------


async def test_webp_output_is_encoded_locally_from_the_png(hook, fake, call):
    result = await call(
        hook, "remove_background", photo("chelsea.png"), options=RemovalOptions.create(output_format="webp")
    )
    fields, _ = parse_multipart(fake.requests[0])
    assert fields["format"] == "png"
    image = Image.open(io.BytesIO(result.content))
    assert image.format == "WEBP"
    assert result.content_type == "image/webp"
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0


async def test_background_colour_is_flattened_locally(hook, fake, call):
    result = await call(
        hook,
        "remove_background",
        photo("rocket.jpg"),
        options=RemovalOptions.create(background_color="#ff0000", output_format="jpeg"),
    )
    image = Image.open(io.BytesIO(result.content))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (640, 427))
    red, green, blue = image.getpixel((5, 5))
    assert red > 240
    assert green < 15
    assert blue < 15
    assert result.content_type == "image/jpeg"


async def test_crop_with_margin_is_done_locally(hook, fake, call):
    result = await call(
        hook,
        "remove_background",
        photo("coffee.png"),
        options=RemovalOptions.create(crop=True, margin="10px 5%"),
    )
    fields, _ = parse_multipart(fake.requests[0])
    assert "crop" not in fields  # the margin needs the full cut-out: the crop happens locally
    # subject box of the fake cut-out is 300x200 at (150, 100); 10px top/bottom, 5% of 300 = 15px sides
    assert (result.width, result.height) == (300 + 30, 200 + 20)
    image = Image.open(io.BytesIO(result.content))
    assert image.getchannel("A").getbbox() == (15, 10, 315, 210)


async def test_crop_without_margin_is_native(hook, fake, call):
    result = await call(
        hook, "remove_background", photo("coffee.png"), options=RemovalOptions.create(crop=True)
    )
    fields, _ = parse_multipart(fake.requests[0])
    assert fields["crop"] == "true"
    assert (result.width, result.height) == (300, 200)


async def test_max_size_is_applied_locally(hook, fake, call):
    result = await call(
        hook, "remove_background", photo("coffee.png"), options=RemovalOptions.create(max_size=120)
    )
    assert (result.width, result.height) == (120, 80)


async def test_native_margin_without_native_crop_is_rejected_before_any_call(hook, fake, call):
    with pytest.raises(InvalidOptionError) as info:
        await call(hook, "remove_background", photo("horse.png"), vendor_options={"margin": "5%"})
    assert info.value.parameter == "margin"
    with pytest.raises(InvalidOptionError):
        await call(
            hook,
            "remove_background",
            photo("horse.png"),
            options=RemovalOptions.create(crop=True, margin="5%"),
            vendor_options={"margin_top": "5%"},
        )
    assert fake.requests == []


# -- local input rejection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (png(32, 32), "resolution_too_low"),
        (png(6001, 64), "resolution_too_high"),
        (b"", "empty_file"),
        (os.urandom(4096), "unsupported_image"),
        (cutout(photo("horse.png"))[:3000], "malformed_image"),
    ],
    ids=["32x32", "6001px", "0-byte", "random", "truncated"],
)
async def test_bad_inputs_are_rejected_locally(hook, fake, call, data, code):
    with pytest.raises(InputRejectedError) as info:
        await call(hook, "remove_background", data)
    assert info.value.local
    assert info.value.code == code
    with pytest.raises(InputRejectedError):
        await call(hook, "generate_background", data, scene="wood")
    assert fake.requests == []


async def test_image_and_url_are_exclusive(hook, fake, call):
    with pytest.raises(InvalidOptionError):
        await call(hook, "remove_background", photo("horse.png"), image_url="https://cdn.example/a.png")
    with pytest.raises(InvalidOptionError):
        await call(hook, "remove_background", image_url="file:///etc/passwd")
    with pytest.raises(InvalidOptionError):
        await call(hook, "generate_background")
    assert fake.requests == []


def test_limits_are_pixelcuts(hook):
    limits = hook.wire_class.spec.limits
    assert (limits.max_bytes, limits.min_side, limits.max_side) == (25_000_000, 64, 6000)


# -- generate-background -----------------------------------------------------------------------------


async def test_generate_url_json_with_scene_and_transform(hook, fake, call):
    result = await call(
        hook,
        "generate_background",
        image_url="https://cdn.example/product.png",
        scene="marble",
        image_transform={"scale": 0.8, "y_center": 0.6},
    )
    (request,) = fake.requests
    assert str(request.url) == f"{API}/v1/generate-background"
    assert request.headers["accept"] == "image/*"
    assert json.loads(request.content) == {
        "image_url": "https://cdn.example/product.png",
        "image_transform": {"scale": 0.8, "y_center": 0.6},
        "scene": "marble",
    }
    assert result.content_type == "image/jpeg"
    assert (result.width, result.height) == (1024, 1024)
    assert result.credits_charged is None


async def test_generate_upload_multipart_with_prompts(hook, fake, call):
    result = await call(
        hook,
        "generate_background",
        photo("horse.png"),
        prompt="a sunny meadow",
        negative_prompt="people, text",
        image_transform=PixelcutImageTransform(scale=1.0, x_center=0.5),
    )
    fields, files = parse_multipart(fake.requests[0])
    assert fields == {
        "prompt": "a sunny meadow",
        "negative_prompt": "people, text",
        "image_transform": '{"scale":1.0,"x_center":0.5}',
    }
    assert files["image"][1] == photo("horse.png")
    assert result.content_type == "image/jpeg"


async def test_generate_result_url_is_downloaded_as_jpeg(hook, fake, call):
    result = await call(
        hook, "generate_background", photo("chelsea.png"), scene="brick", result_delivery="url"
    )
    assert fake.requests[0].headers["accept"] == "application/json"
    assert str(fake.requests[1].url).endswith(".jpg")
    assert result.content_type == "image/jpeg"
    assert (result.width, result.height) == (1024, 1024)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"scene": "wood", "prompt": "a kitchen"}, "prompt"),
        ({"scene": "wood", "negative_prompt": "blur"}, "negative_prompt"),
        ({"scene": "beach"}, "scene"),
        ({"image_transform": {"scale": 0}}, "image_transform.scale"),
        ({"image_transform": {"x_center": 1.5}}, "image_transform.x_center"),
        ({"image_transform": {"rotation": 1}}, "image_transform.rotation"),
        ({"result_delivery": "stream"}, "result_delivery"),
    ],
)
async def test_generate_option_conflicts_are_rejected_locally(hook, fake, call, kwargs, parameter):
    with pytest.raises(InvalidOptionError) as info:
        await call(hook, "generate_background", photo("horse.png"), **kwargs)
    assert info.value.parameter == parameter
    assert fake.requests == []


async def test_generate_garbage_result_fails_decode_validation(hook, fake, call):
    fake.script.append(
        httpx.Response(200, content=b"\xff\xd8\xff\xe0 not really", headers={"content-type": "image/jpeg"})
    )
    with pytest.raises(InvalidVendorResponseError):
        await call(hook, "generate_background", photo("horse.png"), scene="linen")


def test_costs(hook):
    assert hook.estimate_cost() == Decimal(1)
    assert hook.estimate_cost(PixelcutOptions(shadow=PixelcutShadow())) == Decimal(4)
    assert hook.estimate_cost({"shadow": {"enabled": False}}) == Decimal(1)
    assert hook.estimate_generate_cost() == Decimal(1)


# -- credits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [(42, Decimal(42)), ("17", Decimal(17)), (2.5, Decimal("2.5")), (0, 0)]
)
async def test_credits(hook, fake, call, value, expected):
    fake.credits = value
    balance = await call(hook, "get_balance")
    (request,) = fake.requests
    assert (request.method, str(request.url)) == ("GET", f"{API}/v1/credits")
    assert request.headers["x-api-key"] == KEY
    assert request.content == b""
    assert balance.remaining == expected
    assert balance.vendor == "pixelcut"
    assert balance.usable == (expected > 0)
    assert balance.raw == {"credits_remaining": value}


@pytest.mark.parametrize("value", ["lots", None, True, "NaN", {"n": 1}])
async def test_credits_garbage(hook, fake, call, value):
    fake.credits = value
    with pytest.raises(InvalidVendorResponseError) as info:
        await call(hook, "get_balance")
    assert not info.value.possibly_charged


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, json={"credits": 5}),
        httpx.Response(200, text="<html>ok</html>"),
        httpx.Response(200),
    ],
)
async def test_credits_unusable_body(hook, fake, call, reply):
    fake.script.append(reply)
    with pytest.raises(InvalidVendorResponseError):
        await call(hook, "get_balance")


def test_test_connection(hook, fake):
    assert hook.test_connection() == (True, "Connected to Pixelcut: 42 credits remaining (active)")
    fake.script.append(error(401, "invalid_auth_token", "API Token not found"))
    ok, message = hook.test_connection()
    assert not ok
    assert "invalid_auth_token" in message


# -- errors ------------------------------------------------------------------------------------------

NO_RETRY = RetryPolicy(max_attempts=1)


@pytest.mark.parametrize(
    ("reply", "exc_type", "code"),
    [
        (error(400, "invalid_request_body", "Invalid body"), VendorRequestError, "invalid_request_body"),
        (error(400, "missing_parameter", "image_url is required"), VendorRequestError, "missing_parameter"),
        (error(400, "invalid_parameter", "Invalid image_url"), VendorRequestError, "invalid_parameter"),
        (error(400, "unsupported_content_type"), VendorRequestError, "unsupported_content_type"),
        (error(400, "malformed_image", "Cannot decode"), InputRejectedError, "malformed_image"),
        (error(400, "unsupported_image_format"), InputRejectedError, "unsupported_image_format"),
        (error(400, "file_size_too_large", "File size too large"), InputRejectedError, "file_size_too_large"),
        (error(400, "resolution_too_high"), InputRejectedError, "resolution_too_high"),
        (error(400, "unknown_foreground", "No subject"), InputRejectedError, "unknown_foreground"),
        (error(400), VendorRequestError, None),
        (error(401, "invalid_auth_token", "API Token not found"), VendorAuthError, "invalid_auth_token"),
        (
            error(403, "insufficient_api_credits", "Insufficient credits"),
            OutOfCreditsError,
            "insufficient_api_credits",
        ),
        (error(429, "rate_limit_exceeded", "Too many requests"), RateLimitedError, "rate_limit_exceeded"),
        (httpx.Response(500), TransientVendorError, None),
        (httpx.Response(500, text="Internal Server Error"), TransientVendorError, None),
        (httpx.Response(500, html="<html><body><h1>500</h1></body></html>"), TransientVendorError, None),
        (httpx.Response(502, text="upstream connect error"), TransientVendorError, None),
        (httpx.Response(503, json={"message": "down"}), TransientVendorError, None),
        (error(404, None, "Not found"), VendorRequestError, None),
    ],
)
async def test_error_mapping(connection, call, reply, exc_type, code):
    fake = FakePixelcut([reply])
    hook = make_hook(fake, retry_policy=NO_RETRY)
    with pytest.raises(exc_type) as info:
        await call(hook, "remove_background", photo("horse.png"))
    exc = info.value
    assert type(exc) is exc_type
    assert (exc.vendor, exc.status_code, exc.code) == ("pixelcut", reply.status_code, code)
    assert KEY not in str(exc)
    assert len(fake.requests) == 1
    if isinstance(exc, InputRejectedError):
        assert not exc.local
    if exc_type in (VendorAuthError, OutOfCreditsError):
        assert exc.fatal_for_batch
        assert not exc.retryable


async def test_error_message_quotes_non_json_body(connection, call):
    hook = make_hook(
        FakePixelcut([httpx.Response(500, text="upstream   exploded\nbadly")]), retry_policy=NO_RETRY
    )
    with pytest.raises(TransientVendorError, match="upstream exploded badly"):
        await call(hook, "remove_background", photo("horse.png"))


async def test_generate_and_credits_share_the_error_mapping(connection, call):
    fake = FakePixelcut([error(403, "insufficient_api_credits"), error(401, "invalid_auth_token")])
    hook = make_hook(fake)
    with pytest.raises(OutOfCreditsError):
        await call(hook, "generate_background", photo("horse.png"), scene="wood")
    with pytest.raises(VendorAuthError):
        await call(hook, "get_balance")
    assert len(fake.requests) == 2


# -- retries (time travel) ---------------------------------------------------------------------------


def assert_backoff(waits: list[float]) -> None:
    """Each wait is min(5, 0.25 * 2^(n-1)) + U(0, 0.25) for the n-th retry."""
    for n, wait in enumerate(waits, start=1):
        base = min(5.0, 0.25 * 2 ** (n - 1))
        assert base <= wait <= base + 0.25, (n, wait)


async def test_429_storm_then_success(connection, sleeper, call):
    fake = FakePixelcut([error(429, "rate_limit_exceeded")] * 3)
    hook = make_hook(fake, sleeper)
    result = await call(hook, "remove_background", photo("horse.png"))
    assert len(fake.requests) == 4
    assert result.call.attempts == 4
    assert len(sleeper.waits) == 3
    assert_backoff(sleeper.waits)


async def test_5xx_then_success(connection, sleeper, call):
    fake = FakePixelcut([httpx.Response(500), httpx.Response(503, text="unavailable")])
    hook = make_hook(fake, sleeper)
    result = await call(hook, "generate_background", photo("horse.png"), scene="counter")
    assert result.call.attempts == 3
    assert len(sleeper.waits) == 2
    assert_backoff(sleeper.waits)


async def test_gives_up_after_max_attempts(connection, sleeper, call):
    fake = FakePixelcut([error(429, "rate_limit_exceeded")] * 10)
    hook = make_hook(fake, sleeper)
    with pytest.raises(RateLimitedError):
        await call(hook, "remove_background", photo("horse.png"))
    assert len(fake.requests) == 6  # 1 + the docs' 5 retries
    assert len(sleeper.waits) == 5
    assert_backoff(sleeper.waits)
    assert sum(sleeper.waits) < 0.25 + 0.5 + 1 + 2 + 4 + 5 * 0.25 + 1e-9


async def test_max_retries_extra_overrides_attempts(monkeypatch, sleeper, call):
    set_connection(monkeypatch, "pixelcut_default", "pixelcut", password=KEY, extra={"max_retries": 1})
    fake = FakePixelcut([httpx.Response(500)] * 5)
    hook = make_hook(fake, sleeper)
    with pytest.raises(TransientVendorError):
        await call(hook, "remove_background", photo("horse.png"))
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    "reply",
    [
        error(400, "malformed_image"),
        error(400, "invalid_parameter"),
        error(401, "invalid_auth_token"),
        error(403, "insufficient_api_credits"),
    ],
)
async def test_4xx_are_never_retried(connection, sleeper, call, reply):
    fake = FakePixelcut([reply] * 3)
    hook = make_hook(fake, sleeper)
    with pytest.raises(Exception):  # noqa: B017 - the class is checked by test_error_mapping
        await call(hook, "remove_background", photo("horse.png"))
    assert len(fake.requests) == 1
    assert sleeper.waits == []


async def test_timeouts_retry_and_count_possibly_charged(connection, sleeper, call):
    attempts: list[int] = []

    def read_timeout(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        raise httpx.ReadTimeout("slow", request=request)

    fake = FakePixelcut([read_timeout, read_timeout])
    hook = make_hook(fake, sleeper)
    result = await call(hook, "remove_background", photo("horse.png"))
    assert len(attempts) == 2
    assert result.call.attempts == 3
    assert result.call.possibly_charged == 2  # the upload was complete: Pixelcut may have billed


# -- connections and secrets -------------------------------------------------------------------------


def test_connection_uri_form_and_host_override(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PIXELCUT_SANDBOX", f"pixelcut://:{KEY}@127.0.0.1:8089/?timeout=30")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"credits_remaining": "7"})

    hook = PixelcutHook("pixelcut_sandbox", transport=httpx.MockTransport(handler))
    assert hook.get_balance().remaining == 7
    assert str(seen[0].url) == "https://127.0.0.1:8089/v1/credits"
    assert hook.get_settings().timeout == 30.0


def test_connection_json_form_base_url_extra(monkeypatch):
    set_connection(
        monkeypatch,
        "pixelcut_default",
        "pixelcut",
        password=KEY,
        extra={"base_url": "http://localhost:9000/"},
    )
    settings = PixelcutHook().get_settings()
    assert settings.base_url == "http://localhost:9000"
    assert settings.timeout == 120.0  # Pixelcut's default idle timeout


def test_missing_api_key(monkeypatch):
    set_connection(monkeypatch, "pixelcut_default", "pixelcut")
    with pytest.raises(InvalidOptionError, match="no API key"):
        PixelcutHook().get_settings()


async def test_secrets_never_leak(connection, call, caplog):
    fake = FakePixelcut(
        [error(401, "invalid_auth_token", "API Token not found"), httpx.Response(500, text="boom")]
    )
    hook = make_hook(fake, retry_policy=NO_RETRY)
    caplog.set_level(logging.DEBUG)
    with mock.patch("airflow_provider_bgremoval.hooks.base.mask_secret") as masked:
        with pytest.raises(VendorAuthError) as auth:
            await call(hook, "remove_background", photo("horse.png"))
        with pytest.raises(TransientVendorError) as transient:
            await call(hook, "get_balance")
    masked.assert_called_with(KEY)
    for text in (
        str(auth.value),
        repr(auth.value),
        str(transient.value),
        repr(hook),
        repr(hook.get_settings()),
    ):
        assert KEY not in text
    assert KEY not in repr(hook.wire.balance_request())
    assert KEY not in json.dumps(auth.value.as_dict())
    assert KEY not in caplog.text


def test_ui_field_behaviour_matches_provider_info():
    behaviour = PixelcutHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == {"password": "API key", "host": "Base URL override"}
    assert set(behaviour["hidden_fields"]) == {"schema", "login", "port"}
    assert PixelcutHook.default_conn_name == "pixelcut_default"
    assert PixelcutHook.conn_type == "pixelcut"


def test_conn_id_names():
    assert PixelcutHook().pixelcut_conn_id == "pixelcut_default"
    assert PixelcutHook(pixelcut_conn_id="a").conn_id == "a"
    assert PixelcutHook(conn_id="b").pixelcut_conn_id == "b"
    assert getattr(PixelcutHook(**{PixelcutHook.conn_name_attr: "c"}), PixelcutHook.conn_name_attr) == "c"
    with pytest.raises(InvalidOptionError):
        PixelcutHook(pixelcut_conn_id="a", conn_id="b")


async def test_clients_are_reused_and_closed(hook, fake):
    hook.get_balance()
    hook.get_balance()
    client = hook.get_conn()
    await hook.aget_balance()
    await hook.aget_balance()
    async_client = hook._aclient
    assert async_client is not None
    await hook.aclose()
    assert client.is_closed
    assert async_client.is_closed


def rgba(alpha: int) -> bytes:
    """A 128x128 RGBA PNG photo-like image whose alpha is ``alpha`` everywhere."""
    image = Image.new("RGBA", (128, 128), (10, 120, 200, alpha))
    image.paste((200, 40, 40, alpha), (32, 32, 96, 96))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def test_generate_sends_an_opaque_alpha_image_without_its_alpha(hook, fake, call):
    # Pixelcut takes an RGBA input's alpha as the subject's outline: an opaque one would cut nothing out
    await call(hook, "generate_background", rgba(255), scene="wood")
    _, files = parse_multipart(fake.requests[0])
    sent = Image.open(io.BytesIO(files["image"][1]))
    assert "A" not in sent.mode
    assert sent.size == (128, 128)


async def test_generate_keeps_a_real_alpha_outline(hook, fake, call):
    data = cutout(rgba(255))
    await call(hook, "generate_background", data, scene="wood")
    _, files = parse_multipart(fake.requests[0])
    assert files["image"][1] == data


async def test_generate_never_refuses_a_photo_for_the_size_of_its_rgb_copy(
    fake, call, connection, monkeypatch
):
    # the alpha is dropped only when the RGB copy stays within the byte limit the original met
    photo_rgba = Image.open(IMAGES / "rocket.jpg").convert("RGBA")
    out = io.BytesIO()
    photo_rgba.save(out, format="PNG", compress_level=9, optimize=True)
    data = out.getvalue()
    rgb = io.BytesIO()
    photo_rgba.convert("RGB").save(rgb, format="PNG", compress_level=1)
    spec = PixelcutWire.spec
    limits = replace(spec.limits, max_bytes=min(len(data), len(rgb.getvalue()) - 1))
    monkeypatch.setattr(PixelcutWire, "spec", replace(spec, limits=limits))
    await call(make_hook(fake), "generate_background", data, scene="wood")
    _, files = parse_multipart(fake.requests[0])
    assert Image.open(io.BytesIO(files["image"][1])).mode == "RGBA"  # as it was
