"""PixianHook over httpx.MockTransport: sync and async paths, delta PNG end to end, retries, secrets."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

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
from airflow_provider_bgremoval.hooks.pixian import PixianHook
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.pacing import ManualClock
from airflow_provider_bgremoval.results import AccountState, ImageResult
from airflow_provider_bgremoval.retry import CallStats, RetryPolicy
from airflow_provider_bgremoval.vendors.pixian import ForegroundBox, PixianOptions, PixianWire, Size
from tests.support.connections import SleepRecorder, set_connection
from tests.unit.vendors.test_delta_png import build_case, png
from tests.unit.vendors.test_pixian import multipart_fields

API_ID = "px_hook_id_7"
SECRET = "px_hook_secret_9f8e7d6c5b4a"
BASIC = "Basic " + base64.b64encode(f"{API_ID}:{SECRET}".encode()).decode()
IMAGES = Path(__file__).resolve().parents[2] / "data" / "images"
CHELSEA = (IMAGES / "chelsea.png").read_bytes()
MODES = ["sync", "async"]
Reply = httpx.Response | Callable[[httpx.Request], httpx.Response]


class FakePixian:
    """A scripted Pixian: answers the queued replies in order and records every request."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        assert self.replies, f"unexpected request {request.method} {request.url}"
        reply = self.replies.pop(0)
        return reply(request) if callable(reply) else reply

    def fields(self, index: int = -1) -> dict[str, str]:
        return multipart_fields(self.requests[index])[0]

    def files(self, index: int = -1) -> dict[str, tuple[str | None, bytes]]:
        return multipart_fields(self.requests[index])[1]


def make_hook(
    monkeypatch: pytest.MonkeyPatch,
    *replies: Reply,
    extra: dict[str, Any] | None = None,
    login: str | None = API_ID,
    password: str | None = SECRET,
    host: str | None = None,
    **hook_kwargs: Any,
) -> tuple[PixianHook, FakePixian, SleepRecorder]:
    set_connection(
        monkeypatch, "pixian_default", "pixian", login=login, password=password, host=host, extra=extra
    )
    fake = FakePixian(*replies)
    sleeper = SleepRecorder()
    hook = PixianHook(
        transport=httpx.MockTransport(fake),
        async_transport=httpx.MockTransport(fake),
        sleep=sleeper,
        async_sleep=sleeper.asleep,
        **{"pacing_clock": ManualClock(), **hook_kwargs},  # pacing waits move a fake clock
    )
    return hook, fake, sleeper


async def run(mode: str, hook: PixianHook, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``method`` (sync) or ``a<method>`` (async) with the same arguments."""
    if mode == "sync":
        return getattr(hook, method)(*args, **kwargs)
    try:
        return await getattr(hook, f"a{method}")(*args, **kwargs)
    finally:
        await hook.aclose()


def image_reply(
    image: Image.Image, fmt: str = "PNG", headers: dict[str, str] | None = None
) -> httpx.Response:
    out = io.BytesIO()
    image.save(out, format=fmt)
    content_type = {"PNG": "image/png", "JPEG": "image/jpeg"}[fmt]
    return httpx.Response(
        200, content=out.getvalue(), headers={"content-type": content_type, **(headers or {})}
    )


def cutout_reply(size: tuple[int, int] = (451, 300), headers: dict[str, str] | None = None) -> httpx.Response:
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste((200, 30, 40, 255), (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4))
    merged = httpx.Headers({"x-credits-charged": "1"})
    merged.update(headers or {})  # case-insensitive: "X-Credits-Charged" replaces the default
    return image_reply(image, headers=dict(merged))


def error_reply(status: int, code: int | None = None, message: str = "", **headers: str) -> httpx.Response:
    if code is None:
        return httpx.Response(status, content=message.encode(), headers=headers)
    body = {"error": {"status": status, "code": code, "message": message}}
    return httpx.Response(status, json=body, headers=headers)


ACCOUNT = {"creditPack": "pack_500", "state": "active", "useBefore": "2027-03-01T00:00:00Z", "credits": 123.5}


# -- remove background ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_remove_background_default(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch, cutout_reply())
    result = await run(mode, hook, "remove_background", CHELSEA, filename="chelsea.png")

    request = fake.requests[0]
    assert request.method == "POST"
    assert str(request.url) == "https://api.pixian.ai/api/v2/remove-background"
    assert request.headers["authorization"] == BASIC
    assert request.headers["user-agent"].startswith("airflow-provider-bgremoval/")
    assert fake.fields() == {"output.format": "png"}
    assert fake.files() == {"image": ("chelsea.png", CHELSEA)}  # a plain RGB PNG is sent unchanged
    assert isinstance(result, ImageResult)
    assert result.vendor == "pixian"
    assert result.content_type == "image/png"
    assert (result.width, result.height) == (451, 300)
    assert result.credits_charged == Decimal(1)
    assert result.call.attempts == 1
    assert result.metadata["test_mode"] is False


@pytest.mark.parametrize("mode", MODES)
async def test_every_parameter_reaches_the_wire(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch, image_reply(Image.new("RGB", (300, 200), "navy"), "JPEG"))
    result = await run(
        mode,
        hook,
        "remove_background",
        CHELSEA,
        options=RemovalOptions.create(output_format="jpeg", background_color="#0055ff", crop=True),
        vendor_options=PixianOptions(
            test=True,
            max_pixels=5_000_000,
            result_margin="10px 20% 5px 15%",
            target_size=(300, 200),
            vertical_alignment="bottom",
            jpeg_quality=82,
        ),
    )
    assert fake.fields() == {
        "test": "true",
        "max_pixels": "5000000",
        "background.color": "#0055FF",
        "result.crop_to_foreground": "true",
        "result.margin": "10px 20% 5px 15%",
        "result.target_size": "300 200",
        "result.vertical_alignment": "bottom",
        "output.format": "jpeg",
        "output.jpeg_quality": "82",
    }
    assert result.content_type == "image/jpeg"
    assert result.metadata["test_mode"] is True


@pytest.mark.parametrize("mode", MODES)
async def test_vendor_options_as_a_mapping(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch, cutout_reply())
    await run(
        mode, hook, "remove_background", CHELSEA, vendor_options={"max_pixels": "1000000", "test": "true"}
    )
    assert fake.fields() == {"test": "true", "max_pixels": "1000000", "output.format": "png"}


@pytest.mark.parametrize("mode", MODES)
async def test_webp_and_resize_are_local(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch, cutout_reply())
    result = await run(
        mode,
        hook,
        "remove_background",
        CHELSEA,
        options=RemovalOptions.create(output_format="webp", max_size=(100, 100)),
    )
    assert fake.fields() == {"output.format": "png"}
    assert result.content_type == "image/webp"
    assert Image.open(io.BytesIO(result.content)).format == "WEBP"
    assert max(result.width, result.height) == 100


@pytest.mark.parametrize("mode", MODES)
async def test_crop_with_margin_is_local(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch, cutout_reply())
    result = await run(
        mode,
        hook,
        "remove_background",
        CHELSEA,
        options=RemovalOptions.create(crop=True, margin="10px", background_color="white"),
    )
    assert fake.fields() == {"output.format": "png"}  # crop + background done locally
    # the fake's subject is 226x150 (from 112,75 to 338,225); 10 px margin on each side
    assert (result.width, result.height) == (246, 170)


@pytest.mark.parametrize("mode", MODES)
async def test_unified_margin_with_native_geometry_is_rejected_before_any_call(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    hook, fake, _ = make_hook(monkeypatch)
    with pytest.raises(InvalidOptionError) as info:
        await run(
            mode,
            hook,
            "remove_background",
            CHELSEA,
            options=RemovalOptions.create(crop=True, margin="5%"),
            vendor_options=PixianOptions(target_size=(500, 500)),
        )
    assert info.value.parameter == "target_size"
    assert fake.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_image_url_input(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch, cutout_reply())
    await run(mode, hook, "remove_background", image_url="https://cdn.example.com/photos/chelsea.bmp")
    assert fake.requests[0].headers["content-type"] == "application/x-www-form-urlencoded"
    assert fake.fields() == {
        "image.url": "https://cdn.example.com/photos/chelsea.bmp",
        "output.format": "png",
    }
    assert fake.files() == {}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["remove_background", "estimate_with_test_call"])
async def test_image_url_of_an_undocumented_file_type_is_refused_before_any_call(
    monkeypatch: pytest.MonkeyPatch, mode: str, method: str
) -> None:
    # Pixian: image.url "Must be a .bmp, .gif, .jpeg, .png, or .tiff file."
    hook, fake, _ = make_hook(monkeypatch, cutout_reply())
    with pytest.raises(InvalidOptionError, match=r"\.webp") as info:
        await run(mode, hook, method, image_url="https://cdn.example.com/photos/chelsea.webp?v=2")
    assert info.value.parameter == "image_url"
    assert fake.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_base64_input(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch, cutout_reply())
    await run(mode, hook, "remove_background", CHELSEA, vendor_options=PixianOptions(input_encoding="base64"))
    fields = fake.fields()
    assert base64.b64decode(fields.pop("image.base64")) == CHELSEA
    assert fields == {"output.format": "png"}
    assert fake.files() == {}


@pytest.mark.parametrize("mode", MODES)
async def test_base64_over_the_limit_is_rejected_without_a_call(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    noise = Image.effect_noise((700, 700), 120).convert("RGB")  # ~1.4 MB of base64 as PNG
    hook, fake, _ = make_hook(monkeypatch)
    with pytest.raises(InputRejectedError, match=r"image\.base64") as info:
        await run(mode, hook, "remove_background", png(noise), vendor_options={"input_encoding": "base64"})
    assert info.value.local is True
    assert fake.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_webp_uploads_are_converted_to_png(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    out = io.BytesIO()
    Image.open(IMAGES / "chelsea.png").save(out, format="WEBP", lossless=True)
    hook, fake, _ = make_hook(monkeypatch, cutout_reply())
    await run(mode, hook, "remove_background", out.getvalue(), filename="chelsea.webp")
    name, data = fake.files()["image"]
    assert name == "chelsea.webp"
    assert Image.open(io.BytesIO(data)).format == "PNG"


@pytest.mark.parametrize("mode", MODES)
async def test_over_32_megapixels_is_rejected_locally(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    out = io.BytesIO()
    Image.new("L", (8000, 4001)).save(out, format="PNG")  # 32,008,000 pixels
    hook, fake, _ = make_hook(monkeypatch)
    with pytest.raises(InputRejectedError, match="32,000,000") as info:
        await run(mode, hook, "remove_background", out.getvalue())
    assert info.value.code == "too_many_pixels"
    assert fake.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_webp_output_wider_than_webp_allows_is_rejected_before_the_billed_call(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # 16,400 x 1,000 is 16.4 MP, well within Pixian's 32 MP: but its WebP result could not be encoded,
    # so the paid cut-out was lost, and every rerun paid again
    out = io.BytesIO()
    Image.new("L", (16_400, 1_000)).save(out, format="PNG")
    hook, fake, _ = make_hook(monkeypatch)
    with pytest.raises(InputRejectedError, match="a WebP output's limit is 16383 px per side") as info:
        await run(
            mode, hook, "remove_background", out.getvalue(), options=RemovalOptions(output_format="webp")
        )
    assert info.value.code == "resolution_too_high" and fake.requests == []
    fitted = RemovalOptions(output_format="webp", max_size=4000)  # fitted into 4,000 px first: fine
    hook, fake, _ = make_hook(monkeypatch, cutout_reply((16_400, 1_000)))
    await run(mode, hook, "remove_background", out.getvalue(), options=fitted)
    assert len(fake.requests) == 1


# -- test mode ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("test_mode", [True, "true"])
async def test_test_mode_from_the_connection(
    monkeypatch: pytest.MonkeyPatch, mode: str, test_mode: Any
) -> None:
    reply = cutout_reply(headers={"x-credits-charged": "0", "x-credits-calculated": "1"})
    hook, fake, _ = make_hook(monkeypatch, reply, extra={"test_mode": test_mode})
    result = await run(mode, hook, "remove_background", CHELSEA)
    assert fake.fields()["test"] == "true"
    assert result.credits_charged == Decimal(0)
    assert result.credits_calculated == Decimal(1)
    assert result.metadata["test_mode"] is True
    assert hook.estimate_cost() == Decimal(0)
    assert hook.estimate_cost(PixianOptions(test=False)) == Decimal(1)


@pytest.mark.parametrize("mode", MODES)
async def test_an_unusable_reply_to_a_free_test_call_is_neither_billed_nor_possibly_charged(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    empty = httpx.Response(200, content=b"", headers={"x-credits-charged": "0"})
    hook, _, _ = make_hook(monkeypatch, empty, extra={"test_mode": True})
    stats = CallStats()
    with pytest.raises(InvalidVendorResponseError) as info:
        await run(mode, hook, "remove_background", CHELSEA, stats=stats)
    assert (stats.attempts, stats.billed_reply, stats.possibly_charged) == (1, False, 0)
    assert info.value.call == stats.snapshot()


@pytest.mark.parametrize("mode", MODES)
async def test_options_override_the_connection_test_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch, cutout_reply(), extra={"test_mode": True})
    await run(mode, hook, "remove_background", CHELSEA, vendor_options=PixianOptions(test=False))
    assert "test" not in fake.fields()


@pytest.mark.parametrize("mode", MODES)
async def test_a_blank_test_option_keeps_the_connection_test_mode(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A template that rendered nothing (``{"test": ""}``) must not turn free test calls into billed ones."""
    hook, fake, _ = make_hook(monkeypatch, cutout_reply(), extra={"test_mode": True})
    await run(mode, hook, "remove_background", CHELSEA, vendor_options={"test": " "})
    assert fake.fields()["test"] == "true"


def test_test_mode_from_a_uri_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_PIXIAN_URI", f"pixian://{API_ID}:{SECRET}@sandbox.local:8080?test_mode=true&timeout=30"
    )
    fake = FakePixian(cutout_reply())
    hook = PixianHook("pixian_uri", transport=httpx.MockTransport(fake))
    hook.remove_background(CHELSEA)
    assert str(fake.requests[0].url) == "https://sandbox.local:8080/api/v2/remove-background"
    assert fake.fields()["test"] == "true"
    assert hook.get_settings().timeout == 30.0
    assert hook.is_test_mode()


def test_bad_test_mode_extra_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    hook, _, _ = make_hook(monkeypatch, extra={"test_mode": "sometimes"})
    with pytest.raises(InvalidOptionError) as info:
        hook.get_settings()
    assert info.value.parameter == "test_mode"


# -- headers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_every_result_header_is_parsed(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    headers = {
        "X-Credits-Charged": "0.375",
        "X-Input-Orientation": "1",
        "X-Input-Size": "451 300",
        "X-Result-Size": "451 300",
        "X-Input-Foreground": "75 112 226 150",
        "X-Result-Foreground": "75 112 226 150",
    }
    hook, _, _ = make_hook(monkeypatch, cutout_reply(headers=headers))
    result = await run(mode, hook, "remove_background", CHELSEA)
    assert result.credits_charged == Decimal("0.375")
    assert result.credits_calculated is None
    assert result.metadata == {
        "input_orientation": 1,
        "input_size": Size(451, 300),
        "result_size": Size(451, 300),
        "input_foreground": ForegroundBox(75, 112, 226, 150),
        "result_foreground": ForegroundBox(75, 112, 226, 150),
        "test_mode": False,
    }


# -- delta PNG end to end -------------------------------------------------------------------------
def delta_reply(delta_png: bytes, orientation: int = 1) -> httpx.Response:
    width, height = Image.open(io.BytesIO(delta_png)).size
    return httpx.Response(
        200,
        content=delta_png,
        headers={
            "content-type": "image/png",
            "x-credits-charged": "1",
            "x-input-orientation": str(orientation),
            "x-input-size": f"{width} {height}",
            "x-result-size": f"{width} {height}",
        },
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["chelsea.png", "rocket.jpg"])
async def test_delta_png_end_to_end(monkeypatch: pytest.MonkeyPatch, mode: str, name: str) -> None:
    original = (IMAGES / name).read_bytes()
    case = build_case(original)
    hook, fake, _ = make_hook(monkeypatch, delta_reply(case.delta_png))
    result = await run(
        mode, hook, "remove_background", original, vendor_options=PixianOptions(delta_png=True)
    )

    assert fake.fields() == {"output.format": "delta_png"}
    assert fake.files()["image"][1] == original
    assert result.content_type == "image/png"
    decoded = Image.open(io.BytesIO(result.content))
    assert decoded.mode == "RGBA"
    assert decoded.tobytes() == case.cutout.tobytes()
    assert (result.width, result.height) == case.cutout.size
    assert result.metadata["delta_png"] is True
    assert result.metadata["delta_png_bytes"] == len(case.delta_png)
    assert result.credits_charged == Decimal(1)


@pytest.mark.parametrize("mode", MODES)
async def test_delta_png_with_local_unified_options(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    case = build_case(CHELSEA)
    hook, fake, _ = make_hook(monkeypatch, delta_reply(case.delta_png))
    result = await run(
        mode,
        hook,
        "remove_background",
        CHELSEA,
        options=RemovalOptions.create(output_format="jpeg", background_color="#00ff00", crop=True),
        vendor_options={"delta_png": True},
    )
    assert fake.fields() == {"output.format": "delta_png"}  # Pixian would ignore background/crop
    left, top, right, bottom = case.cutout.getchannel("A").getbbox()  # type: ignore[misc]
    assert result.content_type == "image/jpeg"
    assert (result.width, result.height) == (right - left, bottom - top)
    image = Image.open(io.BytesIO(result.content))
    assert image.format == "JPEG"
    corner = image.convert("RGB").getpixel((0, 0))
    assert corner[1] > 200 > max(corner[0], corner[2])  # flattened on green where the horse is not


@pytest.mark.parametrize("mode", MODES)
async def test_delta_png_with_webp(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    case = build_case(CHELSEA)
    hook, _, _ = make_hook(monkeypatch, delta_reply(case.delta_png))
    result = await run(
        mode,
        hook,
        "remove_background",
        CHELSEA,
        options=RemovalOptions.create(output_format="webp"),
        vendor_options=PixianOptions(delta_png=True),
    )
    assert result.content_type == "image/webp"
    assert Image.open(io.BytesIO(result.content)).size == case.cutout.size


@pytest.mark.parametrize("mode", MODES)
async def test_delta_png_of_an_exif_rotated_photo(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.open(IMAGES / "rocket.jpg").save(out, format="JPEG", quality=92, exif=exif)
    rotated_jpeg = out.getvalue()
    case = build_case(rotated_jpeg)  # upright: 427x640

    # Local checks turn the photo upright and send a PNG without EXIF: Pixian reports orientation 1.
    hook, fake, _ = make_hook(monkeypatch, delta_reply(case.delta_png, orientation=1))
    result = await run(mode, hook, "remove_background", rotated_jpeg, vendor_options={"delta_png": True})
    sent = Image.open(io.BytesIO(fake.files()["image"][1]))
    assert (sent.format, sent.size) == ("PNG", (427, 640))
    assert Image.open(io.BytesIO(result.content)).tobytes() == case.cutout.tobytes()

    # Sent as is (check_input=False): Pixian applies EXIF orientation 6, and so does the decoder.
    hook, fake, _ = make_hook(monkeypatch, delta_reply(case.delta_png, orientation=6))
    result = await run(
        mode, hook, "remove_background", rotated_jpeg, vendor_options={"delta_png": True}, check_input=False
    )
    assert fake.files()["image"][1] == rotated_jpeg
    assert Image.open(io.BytesIO(result.content)).tobytes() == case.cutout.tobytes()


@pytest.mark.parametrize("mode", MODES)
async def test_delta_png_that_does_not_fit_the_input(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    case = build_case(CHELSEA)
    shrunk = png(case.delta.resize((225, 150)))
    hook, _, _ = make_hook(monkeypatch, delta_reply(shrunk))
    with pytest.raises(InvalidVendorResponseError, match="delta PNG") as info:
        await run(mode, hook, "remove_background", CHELSEA, vendor_options={"delta_png": True})
    assert info.value.possibly_charged is True


@pytest.mark.parametrize("mode", MODES)
async def test_delta_png_rejections_before_any_call(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch)
    with pytest.raises(InvalidOptionError) as info:
        await run(
            mode,
            hook,
            "remove_background",
            image_url="https://x.example/a.png",
            vendor_options={"delta_png": True},
        )
    assert info.value.parameter == "delta_png"
    with pytest.raises(InputRejectedError, match="max_pixels"):
        await run(
            mode,
            hook,
            "remove_background",
            CHELSEA,
            vendor_options={"delta_png": True, "max_pixels": 100_000},
        )
    with pytest.raises(InvalidOptionError) as info:
        await run(
            mode,
            hook,
            "remove_background",
            CHELSEA,
            vendor_options={"delta_png": True, "result_margin": "5%"},
        )
    assert info.value.parameter == "result_margin"
    assert fake.requests == []


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("reply", "error_class", "code"),
    [
        ((400, 1006, "Failed to read the supplied image. "), InputRejectedError, "1006"),
        ((400, 1002, "Invalid background.color"), VendorRequestError, "1002"),
        ((401, 1101, "Unauthorized"), VendorAuthError, "1101"),
        ((403,), VendorAuthError, None),
        ((402, 1102, "Insufficient credits"), OutOfCreditsError, "1102"),
        ((402, 1103, "Credit pack is dormant"), OutOfCreditsError, "1103"),
    ],
)
async def test_errors_that_are_not_retried(
    monkeypatch: pytest.MonkeyPatch, mode: str, reply: tuple[Any, ...], error_class: type, code: str | None
) -> None:
    hook, fake, sleeper = make_hook(monkeypatch, error_reply(*reply))
    with pytest.raises(error_class) as info:
        await run(mode, hook, "remove_background", CHELSEA)
    assert type(info.value) is error_class
    assert info.value.code == code
    assert info.value.status_code == reply[0]
    assert len(fake.requests) == 1
    assert sleeper.waits == []
    assert SECRET not in str(info.value)
    assert BASIC.split()[1] not in str(info.value)


@pytest.mark.parametrize("mode", MODES)
async def test_non_json_500_is_retried_then_raised(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    page = "<html><body><h1>500 Internal Server Error</h1></body></html>"
    policy = RetryPolicy(max_attempts=3, initial_backoff=1.0, max_backoff=30.0, jitter=0.0)
    hook, fake, sleeper = make_hook(
        monkeypatch, *(error_reply(500, message=page) for _ in range(3)), retry_policy=policy
    )
    with pytest.raises(TransientVendorError, match="500 Internal Server Error") as info:
        await run(mode, hook, "remove_background", CHELSEA)
    assert info.value.code is None
    assert len(fake.requests) == 3
    assert sleeper.waits == [1.0, 2.0]


@pytest.mark.parametrize("mode", MODES)
async def test_5xx_backoff_is_exponential_with_jitter(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, _, sleeper = make_hook(
        monkeypatch, error_reply(503), error_reply(502), error_reply(500, 1000), cutout_reply()
    )
    result = await run(mode, hook, "remove_background", CHELSEA)
    assert result.call.attempts == 4
    assert len(sleeper.waits) == 3
    for wait, base in zip(sleeper.waits, (1.0, 2.0, 4.0), strict=True):
        assert base <= wait <= base + 1.0


@pytest.mark.parametrize("mode", MODES)
async def test_linear_429_backoff_resets_after_a_success(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    too_many = [error_reply(429, 1201, "Too Many Requests") for _ in range(5)]
    hook, fake, sleeper = make_hook(
        monkeypatch, *too_many[:3], cutout_reply(), too_many[3], too_many[4], cutout_reply()
    )
    if mode == "sync":
        first = hook.remove_background(CHELSEA)
        assert sleeper.waits == [5.0, 10.0, 15.0]
        second = hook.remove_background(CHELSEA)
    else:
        first = await hook.aremove_background(CHELSEA)
        assert sleeper.waits == [5.0, 10.0, 15.0]
        second = await hook.aremove_background(CHELSEA)
        await hook.aclose()
    assert sleeper.waits == [5.0, 10.0, 15.0, 5.0, 10.0]  # the counter restarted after the success
    assert (first.call.attempts, second.call.attempts) == (4, 3)
    assert len(fake.requests) == 7


@pytest.mark.parametrize("mode", MODES)
async def test_429_gives_up_after_the_attempts(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, sleeper = make_hook(
        monkeypatch, *(error_reply(429, 1201, "Too Many Requests") for _ in range(7))
    )
    with pytest.raises(RateLimitedError):
        await run(mode, hook, "remove_background", CHELSEA)
    assert len(fake.requests) == 7
    assert sleeper.waits == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]


@pytest.mark.parametrize("mode", MODES)
async def test_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, _, sleeper = make_hook(
        monkeypatch,
        error_reply(429, 1201, "slow down", **{"Retry-After": "2"}),
        error_reply(429, 1201, "slow down"),
        cutout_reply(),
    )
    await run(mode, hook, "remove_background", CHELSEA)
    assert sleeper.waits == [2.0, 10.0]  # the vendor's 2 s, then the 2nd consecutive 429: 2 x 5 s


# -- balance --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_balance(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, fake, _ = make_hook(monkeypatch, httpx.Response(200, json=ACCOUNT))
    balance = await run(mode, hook, "get_balance")
    request = fake.requests[0]
    assert (request.method, str(request.url)) == ("GET", "https://api.pixian.ai/api/v2/account")
    assert request.headers["authorization"] == BASIC
    assert balance.remaining == Decimal("123.5")
    assert balance.state is AccountState.ACTIVE
    assert balance.credit_pack == "pack_500"
    assert balance.raw["useBefore"] == "2027-03-01T00:00:00Z"


@pytest.mark.parametrize("mode", MODES)
async def test_dormant_balance(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    body = {**ACCOUNT, "state": "dormant", "credits": 17.25}
    hook, _, _ = make_hook(monkeypatch, httpx.Response(200, json=body))
    balance = await run(mode, hook, "get_balance")
    assert balance.remaining == Decimal(0)
    assert balance.state is AccountState.DORMANT
    assert balance.raw["credits"] == 17.25
    assert not balance.usable


def test_test_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    hook, _, _ = make_hook(monkeypatch, httpx.Response(200, json=ACCOUNT))
    assert hook.test_connection() == (True, "Connected to Pixian.AI: 123.5 credits remaining (active)")
    hook, _, _ = make_hook(monkeypatch, error_reply(401, 1101, "Invalid API id or secret"))
    ok, message = hook.test_connection()
    assert not ok
    assert "401" in message
    assert "Invalid API id or secret" in message
    assert SECRET not in message


def test_test_connection_prints_a_whole_balance_without_a_decimal(monkeypatch: pytest.MonkeyPatch) -> None:
    hook, _, _ = make_hook(monkeypatch, httpx.Response(200, json={**ACCOUNT, "credits": 1000.0}))
    assert hook.test_connection() == (True, "Connected to Pixian.AI: 1000 credits remaining (active)")


# -- estimates ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_estimate_with_test_call(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    reply = cutout_reply(headers={"x-credits-charged": "0", "x-credits-calculated": "0.75"})
    hook, fake, _ = make_hook(monkeypatch, reply)
    estimate = await run(
        mode,
        hook,
        "estimate_with_test_call",
        CHELSEA,
        options=RemovalOptions.create(crop=True),
        vendor_options=PixianOptions(max_pixels=2_000_000, test=False),
    )
    assert estimate == Decimal("0.75")
    assert fake.fields() == {
        "test": "true",
        "max_pixels": "2000000",
        "result.crop_to_foreground": "true",
        "output.format": "png",
    }


@pytest.mark.parametrize("mode", MODES)
async def test_estimate_without_the_header_is_an_error(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    hook, _, _ = make_hook(monkeypatch, cutout_reply())
    with pytest.raises(InvalidVendorResponseError, match="X-Credits-Calculated"):
        await run(mode, hook, "estimate_with_test_call", image_url="https://cdn.example.com/a.jpg")


def test_estimate_cost_default(monkeypatch: pytest.MonkeyPatch) -> None:
    hook, _, _ = make_hook(monkeypatch)
    assert hook.estimate_cost() == Decimal(1)
    assert hook.estimate_cost({"test": True}) == Decimal(0)


def test_estimate_cost_is_the_wires_rule_with_the_test_mode_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    # one cost rule (PixianWire.estimate_cost): the hook only fills an unset ``test`` from the connection
    seen: list[Any] = []

    def wire_rule(cls: type[PixianWire], vendor_options: Any = None) -> Decimal:
        seen.append(vendor_options)
        return Decimal(7)

    hook, _, _ = make_hook(monkeypatch, extra={"test_mode": True})
    monkeypatch.setattr(PixianWire, "estimate_cost", classmethod(wire_rule))
    assert hook.estimate_cost({"delta_png": "auto"}) == Decimal(7)
    assert hook.estimate_cost(PixianOptions(test=False)) == Decimal(7)
    assert [(opts.test, opts.delta_png) for opts in seen] == [(True, "auto"), (False, None)]


# -- connection, clients, secrets -----------------------------------------------------------------
def test_hook_attributes_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    hook, _, _ = make_hook(monkeypatch)
    assert (hook.conn_type, hook.default_conn_name, hook.conn_name_attr) == (
        "pixian",
        "pixian_default",
        "pixian_conn_id",
    )
    assert hook.pixian_conn_id == hook.conn_id == "pixian_default"
    settings = hook.get_settings()
    assert settings.timeout == 180.0
    assert settings.base_url == "https://api.pixian.ai"
    assert hook.get_conn().timeout.read == 180.0
    assert PixianHook(pixian_conn_id="other").conn_id == "other"
    assert PixianHook(conn_id="other").pixian_conn_id == "other"
    with pytest.raises(InvalidOptionError):  # the base's rule, as for Pixelcut and Poof
        PixianHook(pixian_conn_id="a", conn_id="b")
    behaviour = PixianHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == {
        "login": "API id",
        "password": "API secret",
        "host": "Base URL override",
    }
    assert "login" not in behaviour["hidden_fields"]


def test_airflow_builds_the_hook_from_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import BaseHook

    set_connection(monkeypatch, "pixian_ui", "pixian", login=API_ID, password=SECRET)
    hook = BaseHook.get_connection("pixian_ui").get_hook()
    assert isinstance(hook, PixianHook)
    assert hook.conn_id == "pixian_ui"


def test_base_url_override_and_timeout_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    hook, fake, _ = make_hook(
        monkeypatch,
        httpx.Response(200, json=ACCOUNT),
        host="http://localhost:8089",
        extra={"timeout": 240, "max_retries": 2},
    )
    hook.get_balance()
    assert str(fake.requests[0].url) == "http://localhost:8089/api/v2/account"
    assert hook.get_settings().timeout == 240.0
    assert hook.retry_policy.max_attempts == 3
    assert hook.retry_policy.rate_limit_step == 5.0


def test_missing_api_id_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    hook, _, _ = make_hook(monkeypatch, login=None)
    with pytest.raises(InvalidOptionError, match="API id") as info:
        hook.get_balance()
    assert info.value.parameter == "API id"  # the connection form's name for the login field


def test_missing_secret_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    hook, _, _ = make_hook(monkeypatch, password=None)
    with pytest.raises(InvalidOptionError) as info:
        hook.get_balance()
    assert info.value.parameter == "API secret"  # the connection form's name for the password field


@pytest.mark.parametrize("mode", MODES)
async def test_secrets_are_masked_and_never_leak(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)
    replies = [
        cutout_reply(headers={"x-credits-calculated": "1"}),
        error_reply(401, 1101, "Unauthorized"),
        error_reply(500, message="boom"),
    ]
    hook, _, _ = make_hook(monkeypatch, *replies, retry_policy=RetryPolicy(max_attempts=1))
    with mock.patch("airflow_provider_bgremoval.hooks.base.mask_secret") as base_mask:
        await run(mode, hook, "estimate_with_test_call", CHELSEA)
        errors: list[BgRemovalError] = []
        for _ in range(2):
            with pytest.raises(BgRemovalError) as info:
                await run(mode, hook, "get_balance")
            errors.append(info.value)
    base_mask.assert_any_call(SECRET)
    base_mask.assert_any_call(BASIC)  # the derived Authorization value and its bare token
    base_mask.assert_any_call(BASIC.split()[1])
    token = BASIC.split()[1]
    texts = [repr(hook), str(hook.get_settings()), repr(hook.wire.settings), caplog.text]
    texts += [str(e) for e in errors] + [repr(e) for e in errors] + [json.dumps(e.as_dict()) for e in errors]
    for text in texts:
        assert SECRET not in text
        assert token not in text


def echo_headers(request: httpx.Request) -> httpx.Response:
    """A proxy's or WAF's debug page that echoes the request headers back."""
    lines = "\n".join(f"{name}: {value}" for name, value in request.headers.items())
    return httpx.Response(400, content=f"<html><pre>Bad request\n{lines}</pre></html>".encode())


@pytest.mark.parametrize("mode", MODES)
async def test_an_error_page_echoing_the_authorization_header_is_redacted(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    hook, _, _ = make_hook(monkeypatch, echo_headers, retry_policy=RetryPolicy(max_attempts=1))
    with pytest.raises(BgRemovalError) as info:
        await run(mode, hook, "get_balance")
    token = BASIC.split()[1]  # base64(id:secret): the secret, trivially decoded
    for text in (str(info.value), repr(info.value), json.dumps(info.value.as_dict())):
        assert token not in text
    assert "authorization: ***" in info.value.message
