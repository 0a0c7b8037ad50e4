"""PoofHook over httpx.MockTransport: sync and async paths, time-travel retries, local checks, secrets."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from unittest import mock

import httpx
import pytest
from PIL import Image, ImageDraw

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
from airflow_provider_bgremoval.get_provider_info import get_provider_info
from airflow_provider_bgremoval.hooks.poof import PoofHook
from airflow_provider_bgremoval.imaging import check_limits, read_header
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.pacing import ManualClock
from airflow_provider_bgremoval.vendors.poof import AutoRechargeMode, PoofOptions, PoofWire
from tests.support.connections import SleepRecorder, set_connection
from tests.unit.hooks.test_transport import tiny_server

KEY = "pk_live_hook_secret_abcdef123456"
ME = {
    "organizationId": "org_abc123",
    "plan": "Pro",
    "maxCredits": 2000,
    "usedCredits": 1234,
    "autoRechargeThreshold": 100,
}
MODES = ["sync", "async"]


# -- a tiny Poof (Gen A) for the mock transport ----------------------------------------------------
def multipart(request: httpx.Request) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.content)
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


def subject_mask(size: tuple[int, int]) -> Image.Image:
    """The fake's "foreground": a centred ellipse."""
    width, height = size
    alpha = Image.new("L", size, 0)
    ImageDraw.Draw(alpha).ellipse((width * 0.2, height * 0.25, width * 0.8, height * 0.75), fill=255)
    return alpha


def subject_size(size: tuple[int, int]) -> tuple[int, int]:
    left, top, right, bottom = subject_mask(size).getbbox()  # type: ignore[misc]
    return right - left, bottom - top


#: Gen A size presets: the longest side (px) each caps the result to (docs/vendors/poof.md)
SIZE_CAPS = {"full": None, "preview": 256, "small": 512, "medium": 1024, "large": 2048}


def cut_out(data: bytes, fields: dict[str, str]) -> tuple[bytes, str, int, int]:
    """Fake background removal: keep a centred ellipse, honour format/channels/bg_color/size/crop."""
    with Image.open(io.BytesIO(data)) as source:
        image = source.convert("RGBA")
    alpha = subject_mask(image.size)
    image.putalpha(alpha)
    if fields.get("crop") == "true":
        image = image.crop(alpha.getbbox())
    cap = SIZE_CAPS[fields.get("size", "full")]
    if cap:
        image.thumbnail((cap, cap))
    if fields.get("channels", "rgba") == "rgb":
        base = Image.new("RGBA", image.size, fields.get("bg_color", "#ffffff"))
        base.alpha_composite(image)
        image = base.convert("RGB")
    fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fields.get("format", "png")]
    out = io.BytesIO()
    (image.convert("RGB") if fmt == "JPEG" else image).save(out, format=fmt)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    return out.getvalue(), mime, image.width, image.height


def error(status: int, code: str, message: str = "failed", **kw: Any) -> httpx.Response:
    headers = {"X-Request-ID": f"req_{code}", **kw.pop("headers", {})}
    body = {
        "code": code,
        "message": message,
        "details": kw.pop("details", "see docs"),
        "request_id": f"req_{code}",
    }
    return httpx.Response(status, json=body, headers=headers)


class FakePoof:
    """Records requests; answers from a script of responses/exceptions first, then like Poof."""

    def __init__(self, *script: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]):
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            if isinstance(item, httpx.Response):  # a fresh copy: scripts are shared by sync/async runs
                return httpx.Response(item.status_code, headers=item.headers, content=item.content)
            return item(request)
        if request.headers.get("x-api-key") != KEY:
            return error(401, "authentication_error", "Invalid or missing API key")
        if request.url.path == "/v1/me" and request.method == "GET":
            return httpx.Response(200, json=ME, headers={"X-Request-ID": "req_me"})
        if request.url.path == "/v1/remove" and request.method == "POST":
            fields, files = multipart(request)
            if "image_file" not in files:
                return error(400, "missing_image", "No image file provided")
            content, mime, width, height = cut_out(files["image_file"][1], fields)
            return httpx.Response(
                200,
                content=content,
                headers={
                    "Content-Type": mime,
                    "X-Request-ID": "req_abc123xyz",
                    "X-Processing-Time-Ms": "321",
                    "X-Image-Width": str(width),
                    "X-Image-Height": str(height),
                },
            )
        return error(404, "not_found", "no such route")

    @property
    def fields(self) -> dict[str, str]:
        return multipart(self.requests[-1])[0]

    @property
    def files(self) -> dict[str, tuple[str, bytes, str]]:
        return multipart(self.requests[-1])[1]


@pytest.fixture
def poof_conn(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "poof_default", "poof", password=KEY)


@pytest.fixture
def sleeper() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def make_hook(sleeper: SleepRecorder) -> Iterator[Callable[..., PoofHook]]:
    hooks: list[PoofHook] = []

    def factory(fake: FakePoof, **kwargs: Any) -> PoofHook:
        transport = httpx.MockTransport(fake)
        hook = PoofHook(
            transport=transport,
            async_transport=transport,
            sleep=sleeper,
            async_sleep=sleeper.asleep,
            **{"pacing_clock": ManualClock(), **kwargs},  # pacing waits move a fake clock
        )
        hooks.append(hook)
        return hook

    yield factory
    for hook in hooks:
        hook.close()


async def call(hook: PoofHook, mode: str, name: str, *args: Any, **kwargs: Any) -> Any:
    if mode == "sync":
        return getattr(hook, name)(*args, **kwargs)
    return await getattr(hook, f"a{name}")(*args, **kwargs)


def encoded(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB", **save: Any) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "teal" if mode != "P" else 3).save(out, format=fmt, **save)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- identity and connection -----------------------------------------------------------------------
class TestHookIdentity:
    def test_class_attributes(self):
        assert PoofHook.conn_type == "poof"
        assert PoofHook.default_conn_name == "poof_default"
        assert PoofHook.conn_name_attr == "poof_conn_id"
        assert PoofHook.hook_name == "Poof"
        assert PoofHook.wire_class is PoofWire

    def test_conn_id_spellings(self):
        assert PoofHook().conn_id == "poof_default"
        assert PoofHook("mine").poof_conn_id == "mine"
        assert PoofHook(poof_conn_id="mine").conn_id == "mine"
        assert PoofHook(conn_id="other").poof_conn_id == "other"
        with pytest.raises(InvalidOptionError):
            PoofHook(poof_conn_id="a", conn_id="b")

    def test_ui_field_behaviour_matches_provider_info(self):
        (info,) = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == "poof"]
        assert info["hook-class-name"] == "airflow_provider_bgremoval.hooks.poof.PoofHook"
        behaviour = PoofHook.get_ui_field_behaviour()
        assert behaviour["hidden_fields"] == info["ui-field-behaviour"]["hidden-fields"]
        assert behaviour["relabeling"] == info["ui-field-behaviour"]["relabeling"]
        assert behaviour["placeholders"] == info["ui-field-behaviour"]["placeholders"]

    def test_airflow_builds_the_hook_from_the_connection(self, poof_conn):
        from airflow.sdk import BaseHook

        hook = BaseHook.get_connection("poof_default").get_hook()  # passes conn_name_attr as a kwarg
        assert isinstance(hook, PoofHook)
        assert hook.poof_conn_id == "poof_default"

    def test_defaults_from_json_connection(self, poof_conn, make_hook):
        hook = make_hook(FakePoof())
        settings = hook.get_settings()
        assert settings.base_url == "https://api.poof.bg"
        assert settings.timeout == 60.0
        assert hook.get_conn().timeout.read == 60.0
        assert hook.retry_policy == PoofWire.spec.retry_policy

    def test_uri_connection_with_extras(self, monkeypatch, make_hook):
        monkeypatch.setenv("AIRFLOW_CONN_POOF_URI", f"poof://:{KEY}@api.poof.bg/?timeout=90&max_retries=2")
        hook = make_hook(FakePoof(), poof_conn_id="poof_uri")
        settings = hook.get_settings()
        assert settings.api_key == KEY
        assert settings.base_url == "https://api.poof.bg"
        assert settings.timeout == 90.0
        assert hook.retry_policy.max_attempts == 3

    @pytest.mark.parametrize("mode", MODES)
    async def test_sandbox_base_url_override(self, monkeypatch, make_hook, mode):
        set_connection(monkeypatch, "poof_sandbox", "poof", password=KEY, host="http://127.0.0.1:8765")
        fake = FakePoof()
        hook = make_hook(fake, poof_conn_id="poof_sandbox")
        await call(hook, mode, "get_balance")
        assert str(fake.requests[0].url) == "http://127.0.0.1:8765/v1/me"

    async def test_host_field_wins_over_base_url_extra(self, monkeypatch, make_hook):
        set_connection(
            monkeypatch,
            "poof_x",
            "poof",
            password=KEY,
            host="http://shown.example",
            extra={"base_url": "http://sb:9/"},
        )
        fake = FakePoof()
        make_hook(fake, poof_conn_id="poof_x").get_balance()
        assert str(fake.requests[0].url) == "http://shown.example/v1/me"

    async def test_base_url_extra_is_still_read_without_host(self, monkeypatch, make_hook):
        set_connection(monkeypatch, "poof_x", "poof", password=KEY, extra={"base_url": "http://sb:9/"})
        fake = FakePoof()
        make_hook(fake, poof_conn_id="poof_x").get_balance()
        assert str(fake.requests[0].url) == "http://sb:9/v1/me"

    @pytest.mark.parametrize("mode", MODES)
    async def test_base_url_with_v1_suffix(self, monkeypatch, make_hook, photo_bytes, mode):
        # Poof's SDKs and docs give the base URL as https://api.poof.bg/v1: never /v1/v1/...
        set_connection(
            monkeypatch, "poof_v1", "poof", password=KEY, extra={"base_url": "https://api.poof.bg/v1/"}
        )
        fake = FakePoof()
        hook = make_hook(fake, poof_conn_id="poof_v1")
        await call(hook, mode, "get_balance")
        await call(hook, mode, "remove_background", photo_bytes["horse.png"])
        assert [str(r.url) for r in fake.requests] == [
            "https://api.poof.bg/v1/me",
            "https://api.poof.bg/v1/remove",
        ]

    def test_missing_key_is_refused(self, monkeypatch, make_hook):
        set_connection(monkeypatch, "poof_nokey", "poof", host="api.poof.bg")
        fake = FakePoof()
        with pytest.raises(InvalidOptionError) as exc:
            make_hook(fake, poof_conn_id="poof_nokey").get_balance()
        assert exc.value.parameter == "API key"  # the connection form's name for the password field
        assert fake.requests == []

    async def test_context_managers_close_clients(self, poof_conn, make_hook):
        fake = FakePoof()
        with make_hook(fake) as hook:
            hook.get_balance()
            assert hook._client is not None
        assert hook._client is None
        async with make_hook(fake) as ahook:
            await ahook.aget_balance()
            assert ahook._aclient is not None
        assert ahook._aclient is None


# -- remove background -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
class TestRemoveBackground:
    async def test_default_transparent_png(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof()
        result = await call(
            make_hook(fake), mode, "remove_background", photo_bytes["horse.png"], filename="horse"
        )
        (request,) = fake.requests
        assert request.method == "POST"
        assert str(request.url) == "https://api.poof.bg/v1/remove"
        assert request.headers["x-api-key"] == KEY
        assert request.headers["user-agent"].startswith("airflow-provider-bgremoval/")
        assert fake.fields == {"format": "png", "channels": "rgba", "size": "full", "crop": "false"}
        assert fake.files["image_file"] == ("horse.png", photo_bytes["horse.png"], "image/png")
        assert result.vendor == "poof"
        assert result.content_type == "image/png"
        assert (result.width, result.height) == (400, 328)
        assert result.request_id == "req_abc123xyz"
        assert result.credits_charged == Decimal(1)
        assert result.call.attempts == 1
        assert result.call.possibly_charged == 0
        assert result.metadata == {
            "processing_time_ms": 321,
            "output_width": 400,
            "output_height": 328,
            "size": "full",
        }
        image = decode(result.content)
        assert image.mode == "RGBA"
        assert image.getpixel((0, 0))[3] == 0
        assert image.getpixel((200, 164))[3] == 255

    async def test_jpeg_on_colour_is_native(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof()
        options = RemovalOptions.create(output_format="jpeg", background_color="#ff0000")
        result = await call(
            make_hook(fake), mode, "remove_background", photo_bytes["rocket.jpg"], options=options
        )
        assert fake.fields == {
            "format": "jpg",
            "channels": "rgb",
            "bg_color": "#ff0000",
            "size": "full",
            "crop": "false",
        }
        assert fake.files["image_file"][2] == "image/jpeg"
        assert result.content_type == "image/jpeg"
        image = decode(result.content)
        assert image.format == "JPEG"
        red, green, blue = image.getpixel((1, 1))
        assert red > 240
        assert green < 15
        assert blue < 15

    async def test_jpeg_without_colour_is_white(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof()
        options = RemovalOptions.create(output_format="jpg")
        result = await call(
            make_hook(fake), mode, "remove_background", photo_bytes["chelsea.png"], options=options
        )
        assert fake.fields["bg_color"] == "#ffffff"
        assert fake.fields["channels"] == "rgb"
        assert min(decode(result.content).getpixel((1, 1))) > 240

    async def test_webp_transparent(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof()
        options = RemovalOptions.create(output_format="webp")
        result = await call(
            make_hook(fake), mode, "remove_background", photo_bytes["coffee.png"], options=options
        )
        assert fake.fields == {"format": "webp", "channels": "rgba", "size": "full", "crop": "false"}
        assert result.content_type == "image/webp"
        image = decode(result.content)
        assert image.format == "WEBP"
        assert image.mode == "RGBA"

    async def test_native_crop(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof()
        options = RemovalOptions.create(crop=True)
        result = await call(
            make_hook(fake), mode, "remove_background", photo_bytes["coffee.png"], options=options
        )
        assert fake.fields["crop"] == "true"
        assert (result.width, result.height) == subject_size((600, 400))

    async def test_crop_with_margin_is_local(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof()
        options = RemovalOptions.create(
            crop=True, margin="10%", output_format="jpeg", background_color="blue"
        )
        result = await call(
            make_hook(fake), mode, "remove_background", photo_bytes["coffee.png"], options=options
        )
        # The vendor is asked for the transparent, uncropped PNG; crop, margin, colour and JPEG are local.
        assert fake.fields == {"format": "png", "channels": "rgba", "size": "full", "crop": "false"}
        assert result.content_type == "image/jpeg"
        width, height = subject_size((600, 400))
        assert (result.width, result.height) == (
            width + 2 * round(width * 0.1),
            height + 2 * round(height * 0.1),
        )
        image = decode(result.content)
        assert image.format == "JPEG"
        red, green, blue = image.getpixel((2, 2))
        assert blue > 200
        assert red < 40
        assert green < 40
        assert result.request_id == "req_abc123xyz"
        assert result.credits_charged == Decimal(1)

    async def test_max_size_is_local(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof()
        options = RemovalOptions.create(output_format="webp", max_size="100x100")
        result = await call(
            make_hook(fake), mode, "remove_background", photo_bytes["rocket.jpg"], options=options
        )
        assert fake.fields["format"] == "png"
        assert result.content_type == "image/webp"
        assert max(result.width, result.height) == 100

    @pytest.mark.parametrize(("size", "longest"), [("preview", 256), ("small", 512), ("full", 640)])
    async def test_size_presets(self, poof_conn, make_hook, photo_bytes, mode, size, longest):
        fake = FakePoof()
        result = await call(
            make_hook(fake),
            mode,
            "remove_background",
            photo_bytes["rocket.jpg"],
            vendor_options={"size": size},
        )
        assert fake.fields["size"] == size
        assert max(result.width, result.height) == longest
        assert result.metadata["size"] == size
        assert result.credits_charged == Decimal(1)

    async def test_typed_vendor_options(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof()
        await call(
            make_hook(fake),
            mode,
            "remove_background",
            photo_bytes["astronaut.jpg"],
            vendor_options=PoofOptions(size="medium"),
        )
        assert fake.fields["size"] == "medium"

    async def test_bad_vendor_options_before_any_call(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof()
        with pytest.raises(InvalidOptionError) as exc:
            await call(
                make_hook(fake),
                mode,
                "remove_background",
                photo_bytes["horse.png"],
                vendor_options={"size": "hd"},
            )
        assert exc.value.parameter == "size"
        assert fake.requests == []

    async def test_image_url_refused_before_anything(self, make_hook, mode):
        # No connection is defined: the refusal comes before the connection is even read.
        fake = FakePoof()
        with pytest.raises(InvalidOptionError) as exc:
            await call(make_hook(fake), mode, "remove_background", image_url="https://example.com/shoe.jpg")
        assert exc.value.parameter == "image_url"
        assert "uploaded as bytes" in str(exc.value)
        assert fake.requests == []

    @pytest.mark.parametrize(
        ("fmt", "save"),
        [
            ("BMP", {}),
            ("GIF", {}),
            ("TIFF", {}),
        ],
    )
    async def test_other_formats_are_converted_to_png(self, poof_conn, make_hook, mode, fmt, save):
        fake = FakePoof()
        result = await call(make_hook(fake), mode, "remove_background", encoded(fmt, **save), filename="scan")
        name, data, content_type = fake.files["image_file"]
        assert (name, content_type) == ("scan.png", "image/png")
        assert decode(data).format == "PNG"
        assert decode(data).size == (64, 48)
        assert result.content_type == "image/png"

    async def test_animated_gif_sends_first_frame(self, poof_conn, make_hook, mode):
        frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "green", "blue")]
        out = io.BytesIO()
        frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
        fake = FakePoof()
        await call(make_hook(fake), mode, "remove_background", out.getvalue())
        sent = decode(fake.files["image_file"][1])
        assert sent.format == "PNG"
        assert getattr(sent, "n_frames", 1) == 1

    async def test_empty_result_body_is_invalid(self, poof_conn, make_hook, photo_bytes, mode):
        fake = FakePoof(httpx.Response(200, content=b"", headers={"Content-Type": "image/png"}))
        with pytest.raises(InvalidVendorResponseError) as exc:
            await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert exc.value.possibly_charged is True
        assert len(fake.requests) == 1

    async def test_truncated_result_is_invalid(self, poof_conn, make_hook, photo_bytes, mode):
        truncated = encoded("PNG", (200, 200))[:-40]
        fake = FakePoof(httpx.Response(200, content=truncated, headers={"Content-Type": "image/png"}))
        with pytest.raises(InvalidVendorResponseError):
            await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])


# -- local checks ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noise_png_over_20mb() -> bytes:
    side = 2600  # 2600 x 2600 x 3 random bytes, stored uncompressed: ~20.3 MB
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=0)
    data = out.getvalue()
    assert len(data) > 20_000_000
    return data


@pytest.mark.parametrize("mode", MODES)
class TestLocalRejection:
    @pytest.mark.parametrize(
        ("data", "code"),
        [
            pytest.param(b"", "empty_file", id="zero-bytes"),
            pytest.param(os.urandom(4096), "unsupported_image", id="random-bytes"),
            pytest.param(b"%PDF-1.7\n" + b"0" * 100, "unsupported_image", id="pdf"),
            pytest.param(encoded("PNG", (6001, 4), mode="L"), "resolution_too_high", id="over-6000px"),
            pytest.param(encoded("PNG", (300, 300))[:-60], "malformed_image", id="truncated-png"),
        ],
    )
    async def test_rejected_without_a_call(self, poof_conn, make_hook, mode, data, code):
        fake = FakePoof()
        with pytest.raises(InputRejectedError) as exc:
            await call(make_hook(fake), mode, "remove_background", data)
        assert exc.value.local is True
        assert exc.value.code == code
        assert exc.value.vendor == "poof"
        assert fake.requests == []

    async def test_over_20_mb(self, poof_conn, make_hook, mode, noise_png_over_20mb):
        fake = FakePoof()
        with pytest.raises(InputRejectedError) as exc:
            await call(make_hook(fake), mode, "remove_background", noise_png_over_20mb)
        assert exc.value.code == "file_size_too_large"
        assert "20,000,000" in str(exc.value)
        assert fake.requests == []


def test_limit_boundaries():
    info = read_header(encoded("PNG", (6000, 1), mode="L"))
    check_limits(info, 20_000_000, PoofWire.spec.limits)  # at the limits: accepted
    with pytest.raises(InputRejectedError) as exc:
        check_limits(info, 20_000_001, PoofWire.spec.limits)
    assert exc.value.code == "file_size_too_large"
    one_pixel = read_header(encoded("PNG", (1, 1)))
    check_limits(one_pixel, 100, PoofWire.spec.limits)  # Poof documents no minimum: 1 px is accepted


# -- balance and account ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
class TestBalance:
    async def test_balance(self, poof_conn, make_hook, mode):
        fake = FakePoof()
        balance = await call(make_hook(fake), mode, "get_balance")
        (request,) = fake.requests
        assert (request.method, str(request.url)) == ("GET", "https://api.poof.bg/v1/me")
        assert request.headers["x-api-key"] == KEY
        assert balance.remaining == Decimal(766)
        assert balance.credit_pack == "Pro"
        assert balance.raw == ME

    async def test_account(self, poof_conn, make_hook, mode):
        account = await call(make_hook(FakePoof()), mode, "get_account")
        assert account.organization_id == "org_abc123"
        assert account.remaining == Decimal(766)
        assert account.auto_recharge_mode is AutoRechargeMode.CREDITS

    async def test_balance_retried_on_503(self, poof_conn, make_hook, sleeper, mode):
        fake = FakePoof(error(503, "upstream_error"))
        balance = await call(make_hook(fake), mode, "get_balance")
        assert balance.remaining == Decimal(766)
        assert len(fake.requests) == 2
        assert len(sleeper.waits) == 1

    async def test_balance_auth_failure(self, poof_conn, make_hook, mode):
        fake = FakePoof(error(401, "authentication_error", "Invalid or missing API key"))
        with pytest.raises(VendorAuthError):
            await call(make_hook(fake), mode, "get_balance")
        assert len(fake.requests) == 1


def test_test_connection(poof_conn, make_hook):
    ok, message = make_hook(FakePoof()).test_connection()
    assert ok is True
    assert message == "Connected to Poof: 766 credits remaining (active)"
    ok, message = make_hook(FakePoof(error(401, "authentication_error", "Invalid API key"))).test_connection()
    assert ok is False
    assert "authentication_error" in message
    assert KEY not in message


def test_estimate_cost(poof_conn):
    hook = PoofHook()
    assert hook.estimate_cost() == Decimal(1)
    assert hook.estimate_cost({"size": "preview"}) == Decimal(1)


# -- errors and retries ----------------------------------------------------------------------------
def assert_exponential(waits: list[float]) -> None:
    """Poof's documented backoff: 2^n seconds (1, 2, 4, 8) plus up to 1 s of jitter."""
    for index, wait in enumerate(waits):
        base = min(16.0, 2.0**index)
        assert base <= wait <= base + 1.0, waits


@pytest.mark.parametrize("mode", MODES)
class TestRetries:
    @pytest.mark.parametrize(
        ("response", "cls"),
        [
            pytest.param(
                error(400, "validation_error", details={"format": ["bad"]}),
                VendorRequestError,
                id="400-validation",
            ),
            pytest.param(error(400, "missing_image"), VendorRequestError, id="400-missing-image"),
            pytest.param(error(400, "image_too_large"), InputRejectedError, id="400-too-large"),
            pytest.param(error(413, "image_too_large"), InputRejectedError, id="413-too-large"),
            pytest.param(error(401, "authentication_error"), VendorAuthError, id="401"),
            pytest.param(error(402, "payment_required"), OutOfCreditsError, id="402"),
            pytest.param(error(403, "permission_denied"), VendorAuthError, id="403"),
            pytest.param(error(422, "invalid_image"), InputRejectedError, id="422-invalid-image"),
            pytest.param(error(500, "processing_failed"), InputRejectedError, id="500-processing-failed"),
            pytest.param(httpx.Response(404, text="Not Found"), VendorRequestError, id="404-text"),
        ],
    )
    async def test_never_retried(self, poof_conn, make_hook, sleeper, photo_bytes, mode, response, cls):
        fake = FakePoof(response)
        with pytest.raises(cls) as exc:
            await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert type(exc.value) is cls
        assert len(fake.requests) == 1
        assert sleeper.waits == []
        assert exc.value.vendor == "poof"
        assert exc.value.status_code == response.status_code
        if isinstance(exc.value, InputRejectedError):
            assert exc.value.local is False

    @pytest.mark.parametrize(
        "failure",
        [
            pytest.param(error(500, "internal_server_error"), id="500"),
            pytest.param(error(502, "upstream_error"), id="502"),
            pytest.param(error(503, "upstream_error"), id="503"),
            pytest.param(error(504, "upstream_error"), id="504"),
            pytest.param(httpx.Response(502, text="<html>Bad Gateway</html>"), id="502-html"),
            pytest.param(httpx.Response(408), id="408"),
            pytest.param(httpx.ConnectError("refused"), id="connect-error"),
        ],
    )
    async def test_transient_then_success(self, poof_conn, make_hook, sleeper, photo_bytes, mode, failure):
        fake = FakePoof(failure, failure)
        result = await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert len(fake.requests) == 3
        assert result.call.attempts == 3
        assert result.call.possibly_charged == 0
        assert len(sleeper.waits) == 2
        assert_exponential(sleeper.waits)

    @pytest.mark.parametrize(
        "timeout",
        [
            pytest.param(httpx.Response(524, text="<html>A timeout occurred</html>"), id="cloudflare-524"),
            pytest.param(httpx.Response(504, text="<html>504 Gateway Time-out</html>"), id="gateway-504"),
        ],
    )
    async def test_a_gateway_timeout_is_a_lost_reply(self, poof_conn, make_hook, photo_bytes, mode, timeout):
        fake = FakePoof(timeout)
        result = await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert (result.call.attempts, result.call.possibly_charged) == (2, 1)  # Poof may have done it

    async def test_attempts_are_bounded(self, poof_conn, make_hook, sleeper, photo_bytes, mode):
        fake = FakePoof(*[error(502, "upstream_error")] * 10)
        with pytest.raises(TransientVendorError) as exc:
            await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert exc.value.status_code == 502
        assert len(fake.requests) == 5
        assert len(sleeper.waits) == 4
        assert_exponential(sleeper.waits)

    async def test_max_retries_extra(self, monkeypatch, make_hook, sleeper, photo_bytes, mode):
        set_connection(monkeypatch, "poof_default", "poof", password=KEY, extra={"max_retries": 1})
        fake = FakePoof(*[error(503, "upstream_error")] * 5)
        with pytest.raises(TransientVendorError):
            await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert len(fake.requests) == 2

    async def test_retry_after_is_honoured(self, poof_conn, make_hook, sleeper, photo_bytes, mode):
        fake = FakePoof(error(429, "rate_limit_exceeded", headers={"Retry-After": "7"}))
        result = await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert sleeper.waits == [7.0]
        assert result.call.attempts == 2

    async def test_429_without_retry_after_backs_off_exponentially(
        self, poof_conn, make_hook, sleeper, photo_bytes, mode
    ):
        fake = FakePoof(*[error(429, "rate_limit_exceeded")] * 3)
        result = await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert result.call.attempts == 4
        assert len(sleeper.waits) == 3
        assert_exponential(sleeper.waits)

    async def test_429_gives_up(self, poof_conn, make_hook, sleeper, photo_bytes, mode):
        fake = FakePoof(*[error(429, "rate_limit_exceeded", headers={"Retry-After": "2"})] * 9)
        with pytest.raises(RateLimitedError) as exc:
            await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert exc.value.retry_after == 2.0
        assert len(fake.requests) == 5
        assert sleeper.waits == [2.0] * 4

    async def test_lost_reply_is_counted_as_possibly_charged(
        self, poof_conn, make_hook, sleeper, photo_bytes, mode
    ):
        fake = FakePoof(httpx.ReadTimeout("slow"))
        result = await call(make_hook(fake), mode, "remove_background", photo_bytes["horse.png"])
        assert result.call.attempts == 2
        assert result.call.possibly_charged == 1


# -- secrets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_secrets_never_leak(poof_conn, make_hook, photo_bytes, caplog, mode):
    caplog.set_level(logging.DEBUG)
    echo = error(401, "authentication_error", f"API key {KEY} is not valid", details=f"got x-api-key={KEY}")
    fake = FakePoof(echo)
    with mock.patch("airflow_provider_bgremoval.hooks.base.mask_secret") as masked:
        hook = make_hook(fake)
        with pytest.raises(VendorAuthError) as exc:
            await call(hook, mode, "remove_background", photo_bytes["horse.png"])
    masked.assert_any_call(KEY)
    result = await call(hook, mode, "remove_background", photo_bytes["horse.png"])
    for text in (
        str(exc.value),
        repr(exc.value),
        json.dumps(exc.value.as_dict()),
        repr(hook),
        repr(hook.get_settings()),
        repr(hook.wire),
        repr(result),
        json.dumps(dict(result.metadata)),
        caplog.text,
    ):
        assert KEY not in text
    assert "***" in str(exc.value)


async def test_a_pasted_key_pair_is_refused_before_anything_is_sent(monkeypatch):
    # over a real socket h11 would refuse the header and quote the whole key in the error
    async with tiny_server() as server:
        pasted = f"{KEY}\npk_live_second"
        set_connection(monkeypatch, "poof_default", "poof", password=pasted, host=server.url)
        async with PoofHook(requests_per_second=0) as hook:
            with pytest.raises(InvalidOptionError) as info:
                await hook.aget_balance()
    assert info.value.parameter == "API key"
    for text in (str(info.value), json.dumps(info.value.as_dict())):
        assert "hook_secret" not in text and "second" not in text
    assert server.connections == 0
