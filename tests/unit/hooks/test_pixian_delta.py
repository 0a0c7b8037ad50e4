"""``PixianOptions(delta_png="auto")`` through the real hook against the vendor sandbox over a socket:
the decoded delta master is the normal master pixel for pixel (repo photos, a synthetic
half-transparent edge), and an image over ``max_pixels`` falls back to the normal PNG before the call."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image, ImageDraw

from airflow_provider_bgremoval.hooks.pixian import PixianHook
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.vendors.pixian import PixianOptions

AUTO = PixianOptions(delta_png="auto")
#: the repo's photos (tests/data/images): RGB JPEG/PNG with and without an ICC profile, and one RGBA
PHOTOS = ["astronaut.jpg", "chelsea.png", "coffee.png", "rocket.jpg", "horse.png"]


def opened(result: ImageResult) -> Image.Image:
    image = Image.open(io.BytesIO(result.content))
    image.load()
    return image


def premultiplied(image: Image.Image) -> Image.Image:
    """RGBA with every fully transparent pixel as ``(0, 0, 0, 0)``: the colour under alpha 0 is no pixel."""
    rgba = image.convert("RGBA")
    rgba.paste((0, 0, 0, 0), mask=rgba.getchannel("A").point(lambda a: 255 if a == 0 else 0))
    return rgba


def assert_same_image(delta: Image.Image, normal: Image.Image) -> None:
    assert delta.size == normal.size
    assert delta.mode == normal.mode == "RGBA"
    assert premultiplied(delta).tobytes() == premultiplied(normal).tobytes()  # every channel of every pixel
    assert delta.info.get("icc_profile") == normal.info.get("icc_profile")


def formats_sent(sandbox: RunningSandbox) -> list[str]:
    return [entry["params"].get("output.format", "") for entry in sandbox.admin.requests("pixian")]


def pair(data: bytes, vendor_options: dict[str, Any] | None = None) -> tuple[ImageResult, ImageResult]:
    """The normal result and the ``delta_png="auto"`` result of one image, same other options."""
    hook = PixianHook()
    extra = vendor_options or {}
    normal = hook.remove_background(data, options=RemovalOptions(), vendor_options=PixianOptions(**extra))
    auto = hook.remove_background(
        data, options=RemovalOptions(), vendor_options=PixianOptions(**extra, delta_png="auto")
    )
    return normal, auto


@pytest.mark.parametrize("name", PHOTOS)
def test_auto_master_is_the_normal_master(
    name: str, photo_bytes: dict[str, bytes], vendor_connections: RunningSandbox
) -> None:
    normal, auto = pair(photo_bytes[name])
    opaque = name != "horse.png"
    assert formats_sent(vendor_connections) == ["png", "delta_png" if opaque else "png"]
    assert_same_image(opened(auto), opened(normal))
    assert auto.metadata["delta_png"] is opaque
    if opaque:
        assert auto.metadata["delta_png_bytes"] < len(normal.content)
        assert "delta_png_fallback" not in auto.metadata
    else:  # an input with alpha of its own: the normal reply, untouched
        assert (
            auto.metadata["delta_png_fallback"]
            == "a PNG RGBA input (only opaque 8-bit JPEG/PNG inputs are copied exactly)"
        )
        assert auto.content == normal.content
    assert auto.credits_charged == normal.credits_charged  # the same paid call either way


def half_transparent_edge() -> bytes:
    """A disc on a flat backdrop drawn at 4x and downsampled: its rim blends subject and backdrop."""
    big = Image.new("RGB", (960, 640), (235, 238, 240))
    draw = ImageDraw.Draw(big)
    draw.ellipse((200, 120, 760, 520), fill=(180, 40, 60))
    draw.ellipse((380, 260, 520, 380), fill=(30, 90, 200))
    out = io.BytesIO()
    big.resize((240, 160), Image.Resampling.LANCZOS).save(out, format="PNG")
    return out.getvalue()


def test_auto_master_of_a_half_transparent_edge(vendor_connections: RunningSandbox) -> None:
    normal, auto = pair(half_transparent_edge())
    assert formats_sent(vendor_connections) == ["png", "delta_png"]
    alpha = opened(normal).getchannel("A")
    partial = sum(alpha.histogram()[1:255])
    assert partial > 100  # the edge really is partly transparent, and those pixels travel as such
    assert_same_image(opened(auto), opened(normal))


def test_auto_falls_back_for_an_image_over_max_pixels(
    photo_bytes: dict[str, bytes], vendor_connections: RunningSandbox
) -> None:
    """coffee.png is 600x400 = 240,000 px: over a max_pixels of 200,000 Pixian shrinks it (no delta)."""
    normal, auto = pair(photo_bytes["coffee.png"], {"max_pixels": 200_000})
    requests = vendor_connections.admin.requests("pixian")
    assert [(r["params"]["output.format"], r["params"]["max_pixels"]) for r in requests] == [
        ("png", "200000"),
        ("png", "200000"),
    ]
    assert auto.metadata["delta_png"] is False
    assert auto.metadata["delta_png_fallback"] == (
        "240,000 pixels is over max_pixels (200,000): Pixian would shrink it"
    )
    assert opened(auto).size == opened(normal).size != (600, 400)
    assert_same_image(opened(auto), opened(normal))


def test_auto_uses_the_delta_when_the_image_fits_max_pixels(
    photo_bytes: dict[str, bytes], vendor_connections: RunningSandbox
) -> None:
    normal, auto = pair(photo_bytes["coffee.png"], {"max_pixels": 240_000})
    assert formats_sent(vendor_connections) == ["png", "delta_png"]
    assert opened(auto).size == (600, 400)
    assert_same_image(opened(auto), opened(normal))


def test_why_test_mode_takes_the_normal_result(
    photo_bytes: dict[str, bytes], vendor_connections: RunningSandbox
) -> None:
    """A forced delta in test mode loses the watermark on solid pixels; "auto" does not go there."""
    data = photo_bytes["coffee.png"]
    hook = PixianHook()
    watermarked = hook.remove_background(data, vendor_options=PixianOptions(test=True))
    forced = hook.remove_background(data, vendor_options=PixianOptions(test=True, delta_png=True))
    auto = hook.remove_background(data, vendor_options=PixianOptions(test=True, delta_png="auto"))
    assert formats_sent(vendor_connections) == ["png", "delta_png", "png"]
    assert premultiplied(opened(forced)).tobytes() != premultiplied(opened(watermarked)).tobytes()
    assert_same_image(opened(auto), opened(watermarked))


def test_the_hook_default_fills_unset_calls_only(
    photo_bytes: dict[str, bytes], vendor_connections: RunningSandbox
) -> None:
    """``delta_png_default="auto"`` (renditions masters): unset calls take it, explicit ones keep theirs."""
    data = photo_bytes["rocket.jpg"]
    hook = PixianHook(delta_png_default="auto")
    unset = hook.remove_background(data)
    mapping = hook.remove_background(data, vendor_options={"max_pixels": 25_000_000})
    opted_out = hook.remove_background(data, vendor_options=PixianOptions(delta_png=False))
    assert formats_sent(vendor_connections) == ["delta_png", "delta_png", "png"]
    assert unset.metadata["delta_png"] is mapping.metadata["delta_png"] is True
    assert "delta_png" not in opted_out.metadata
    assert_same_image(opened(unset), opened(opted_out))
    assert_same_image(opened(mapping), opened(opted_out))
