"""Local image work: header reads and input checks before spending, post-processing after the call."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from airflow_provider_bgremoval.exceptions import InputRejectedError, InvalidVendorResponseError
from airflow_provider_bgremoval.imaging import (
    ImageInfo,
    InputLimits,
    apply_local_steps,
    check_limits,
    decode_result,
    encode,
    flatten,
    prepare_input,
    read_header,
)
from airflow_provider_bgremoval.options import LocalSteps, Margin

GENEROUS = InputLimits(max_bytes=50 * 1024 * 1024)


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header that declares ``width`` x ``height`` pixels (a bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _rejected(data: bytes, limits: InputLimits = GENEROUS) -> InputRejectedError:
    with pytest.raises(InputRejectedError) as info:
        prepare_input(data, limits, vendor="pixian")
    assert info.value.local is True
    assert info.value.vendor == "pixian"
    assert info.value.retryable is False
    return info.value


# -- read_header on the real photos ----------------------------------------------------------------

PHOTOS = {
    "horse.png": ("PNG", "RGBA"),
    "chelsea.png": ("PNG", "RGB"),
    "coffee.png": ("PNG", "RGB"),
    "rocket.jpg": ("JPEG", "RGB"),
    "astronaut.jpg": ("JPEG", "RGB"),
}


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_read_header_on_photos(name: str, images_dir: Path) -> None:
    data = (images_dir / name).read_bytes()
    info = read_header(data)
    with Image.open(io.BytesIO(data)) as image:
        assert (info.width, info.height) == image.size
    assert (info.format, info.mode) == PHOTOS[name]
    assert info.orientation == 1
    assert info.frames == 1
    assert info.pixels == info.width * info.height


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_photos_pass_unchanged(name: str, images_dir: Path) -> None:
    data = (images_dir / name).read_bytes()
    prepared = prepare_input(data, GENEROUS)
    assert prepared.converted is False
    assert prepared.data is data
    assert prepared.content_type == ("image/png" if name.endswith(".png") else "image/jpeg")


def test_read_header_works_on_a_prefix(images_dir: Path) -> None:
    data = (images_dir / "rocket.jpg").read_bytes()
    assert read_header(data[: 64 * 1024]) == read_header(data)


# -- broken inputs ---------------------------------------------------------------------------------


def test_empty_file() -> None:
    with pytest.raises(InputRejectedError, match="0 bytes") as info:
        read_header(b"", vendor="poof")
    assert info.value.code == "empty_file"
    assert info.value.local is True
    assert _rejected(b"").code == "empty_file"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(random.Random(7).randbytes(4096), id="random-bytes"),
        pytest.param(b"<!DOCTYPE html><html><body>Not found</body></html>", id="html-named-jpg"),
        pytest.param(
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b'<rect width="10" height="10"/></svg>',
            id="svg",
        ),
        pytest.param(b"\xff\xd8\xff", id="jpeg-magic-only"),
        pytest.param(b"\x89PNG\r\n\x1a\n", id="png-signature-only"),
        pytest.param(b"{}", id="json"),
    ],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(InputRejectedError, match="not a readable image") as info:
        read_header(data)
    assert info.value.code == "unsupported_image"
    assert _rejected(data).code == "unsupported_image"


@pytest.mark.parametrize("name", ["rocket.jpg", "astronaut.jpg", "chelsea.png", "horse.png"])
def test_truncated_images_are_rejected_before_spending(name: str, images_dir: Path) -> None:
    data = (images_dir / name).read_bytes()
    truncated = data[: len(data) // 2]
    read_header(truncated)  # the header is intact: only a full decode finds the damage
    error = _rejected(truncated)
    assert error.code == "malformed_image"
    assert "corrupt or truncated" in error.message


def test_decompression_bomb_header_is_rejected() -> None:
    bomb = _png_declaring(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(InputRejectedError, match="absurd") as info:
        read_header(bomb)
    assert info.value.code == "too_many_pixels"
    assert _rejected(bomb).code == "too_many_pixels"


def test_large_declared_size_is_stopped_by_the_limit_before_decoding() -> None:
    # Under Pillow's bomb threshold, so the header reads; the vendor's pixel limit stops it.
    big = _png_declaring(12_000, 12_000)
    info = read_header(big)
    assert (info.width, info.height) == (12_000, 12_000)
    error = _rejected(big, InputLimits(max_bytes=10**6, max_pixels=25_000_000))
    assert error.code == "too_many_pixels"
    assert "25,000,000 pixels" in error.message
    assert "12000x12000" in error.message


# -- limits name the limit -------------------------------------------------------------------------

INFO = ImageInfo(format="PNG", width=400, height=300, mode="RGB")


@pytest.mark.parametrize(
    ("size", "limits", "code", "fragment"),
    [
        (2_000_001, InputLimits(max_bytes=2_000_000), "file_size_too_large", "limit is 2,000,000 bytes"),
        (10, InputLimits(max_bytes=100, max_pixels=100_000), "too_many_pixels", "limit is 100,000 pixels"),
        (10, InputLimits(max_bytes=100, max_side=399), "resolution_too_high", "limit is 399 px per side"),
        (10, InputLimits(max_bytes=100, min_side=301), "resolution_too_low", "minimum is 301 px per side"),
    ],
)
def test_limits_name_the_limit(size: int, limits: InputLimits, code: str, fragment: str) -> None:
    with pytest.raises(InputRejectedError) as info:
        check_limits(INFO, size, limits, vendor="pixelcut")
    assert info.value.code == code
    assert fragment in info.value.message
    assert "400x300" in info.value.message or "2,000,001 bytes" in info.value.message
    assert str(info.value).startswith(f"[pixelcut {code}] ")


def test_limits_at_the_boundary_pass() -> None:
    check_limits(
        INFO, 100, InputLimits(max_bytes=100, min_side=300, max_side=400, max_pixels=120_000), vendor=None
    )


def test_photo_over_the_byte_limit(images_dir: Path) -> None:
    data = (images_dir / "coffee.png").read_bytes()
    error = _rejected(data, InputLimits(max_bytes=len(data) - 1))
    assert error.code == "file_size_too_large"


def test_converted_image_is_checked_again() -> None:
    # A tiny CMYK JPEG converts to a PNG that is larger than the byte limit: still rejected locally.
    noisy = Image.frombytes("CMYK", (64, 64), random.Random(1).randbytes(64 * 64 * 4))
    data = _save(noisy, "JPEG", quality=20)
    error = _rejected(data, InputLimits(max_bytes=len(data) + 10))
    assert error.code == "file_size_too_large"


# -- conversions -----------------------------------------------------------------------------------


def test_exif_rotated_jpeg_is_sent_upright() -> None:
    image = Image.new("RGB", (40, 20), "white")
    image.paste((255, 0, 0), (0, 0, 10, 20))  # a red band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _save(image, "JPEG", exif=exif.tobytes(), quality=95)
    info = read_header(data)
    assert (info.width, info.height, info.orientation) == (40, 20, 6)

    prepared = prepare_input(data, GENEROUS)
    assert prepared.converted is True
    assert prepared.content_type == "image/png"
    upright = _open(prepared.data)
    assert upright.size == (20, 40)
    assert (prepared.info.width, prepared.info.height) == (20, 40)
    assert prepared.info.orientation == 1
    # after a clockwise turn the stored left edge is at the top
    red, green, _blue = upright.convert("RGB").getpixel((10, 2))  # type: ignore[misc]
    assert red > 200 > green
    assert upright.getexif().get(0x0112) in (None, 1)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    data = _save(Image.new("CMYK", (32, 16), (0, 255, 255, 0)), "JPEG")
    assert read_header(data).mode == "CMYK"
    prepared = prepare_input(data, GENEROUS)
    assert prepared.converted
    result = _open(prepared.data)
    assert result.mode == "RGB"
    red, green, blue = result.getpixel((5, 5))  # type: ignore[misc]
    assert red > 200
    assert green < 60
    assert blue < 60


def test_16_bit_png_is_scaled_not_clipped() -> None:
    data = _save(Image.new("I;16", (30, 20), 100 * 256), "PNG")
    assert read_header(data).mode.startswith("I")
    prepared = prepare_input(data, GENEROUS)
    assert prepared.converted
    result = _open(prepared.data)
    assert result.mode == "RGB"
    assert result.getpixel((0, 0)) == (100, 100, 100)


def test_palette_png_with_transparency_keeps_its_alpha() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (5, 5, 15, 15))
    data = _save(image, "PNG", transparency=0)
    assert read_header(data).mode == "P"
    prepared = prepare_input(data, GENEROUS)
    assert prepared.converted
    result = _open(prepared.data)
    assert result.mode == "RGBA"
    assert result.getpixel((0, 0))[3] == 0  # type: ignore[index]
    assert result.getpixel((10, 10)) == (0, 0, 255, 255)


def test_grayscale_png_passes_and_grayscale_jpeg_is_converted() -> None:
    gray = Image.new("L", (20, 20), 128)
    png = _save(gray, "PNG")
    assert prepare_input(png, GENEROUS).converted is False
    jpeg = _save(gray, "JPEG")
    prepared = prepare_input(jpeg, GENEROUS)
    assert prepared.converted
    assert _open(prepared.data).mode == "RGB"


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (20, 10), colour) for colour in ("red", "lime", "blue")]


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_first_frame_is_taken(fmt: str, params: dict[str, object]) -> None:
    """Documented behaviour: an animated GIF/WebP is reduced to its first frame, re-encoded as PNG."""
    first, *rest = _frames()
    data = _save(first, fmt, save_all=True, append_images=rest, duration=100, **params)
    info = read_header(data)
    assert (info.format, info.frames) == (fmt, 3)
    prepared = prepare_input(data, GENEROUS)
    assert prepared.converted
    assert prepared.content_type == "image/png"
    assert prepared.info.frames == 1
    result = _open(prepared.data)
    assert getattr(result, "n_frames", 1) == 1
    assert result.convert("RGB").getpixel((3, 3)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF"])
def test_formats_the_vendor_does_not_take_become_png(fmt: str) -> None:
    data = _save(Image.new("RGB", (16, 16), "blue"), fmt)
    prepared = prepare_input(data, GENEROUS)
    assert prepared.converted
    assert prepared.content_type == "image/png"
    assert _open(prepared.data).format == "PNG"


def test_webp_passes_where_accepted_and_converts_where_not() -> None:
    data = _save(Image.new("RGB", (16, 16), "blue"), "WEBP")
    assert prepare_input(data, GENEROUS).content_type == "image/webp"
    png_only = InputLimits(max_bytes=10**6, formats=frozenset({"PNG", "JPEG"}))
    prepared = prepare_input(data, png_only)
    assert prepared.converted
    assert prepared.content_type == "image/png"


# -- decode_result ---------------------------------------------------------------------------------


def test_decode_result_rejects_empty_and_cut_short_bodies(images_dir: Path) -> None:
    with pytest.raises(InvalidVendorResponseError, match="empty body") as info:
        decode_result(b"", vendor="poof")
    assert info.value.possibly_charged is True
    data = (images_dir / "horse.png").read_bytes()
    with pytest.raises(InvalidVendorResponseError, match="not a complete image"):
        decode_result(data[:-200], vendor="poof")
    with pytest.raises(InvalidVendorResponseError):
        decode_result(b'{"status": "ok"}', vendor="poof")
    assert decode_result(data, vendor="poof").size == _open(data).size


# -- apply_local_steps -----------------------------------------------------------------------------


def _cutout() -> bytes:
    """100x80 transparent canvas with an opaque 40x40 green subject at (20, 10)."""
    image = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    image.paste((0, 255, 0, 255), (20, 10, 60, 50))
    return _save(image, "PNG")


def _run(steps: LocalSteps, data: bytes | None = None) -> tuple[Image.Image, str]:
    content, content_type, width, height = apply_local_steps(data or _cutout(), steps, vendor="pixelcut")
    image = _open(content)
    assert image.size == (width, height)
    return image, content_type


def test_crop_to_subject() -> None:
    image, content_type = _run(LocalSteps(crop=True, output_format="png"))
    assert image.size == (40, 40)
    assert content_type == "image/png"
    assert image.getpixel((0, 0)) == (0, 255, 0, 255)


@pytest.mark.parametrize(
    ("margin", "size"),
    [("10px", (60, 60)), ("50%", (80, 80)), ("10px 20px", (80, 60)), ("0px 0px 10px 5px", (45, 50))],
)
def test_crop_with_margin(margin: str, size: tuple[int, int]) -> None:
    image, _ = _run(LocalSteps(crop=True, margin=Margin.parse(margin), output_format="png"))
    assert image.size == size
    assert image.mode == "RGBA"


def test_margin_beyond_the_canvas_is_transparent() -> None:
    image, _ = _run(LocalSteps(crop=True, margin=Margin.parse("30px"), output_format="png"))
    assert image.size == (100, 100)  # bigger than the 100x80 canvas vertically
    assert image.getpixel((0, 0))[3] == 0  # type: ignore[index]
    assert image.getpixel((50, 50)) == (0, 255, 0, 255)


def test_crop_margin_and_background() -> None:
    steps = LocalSteps(
        crop=True, margin=Margin.parse("10px"), background_color="#ff0000", output_format="png"
    )
    image, _ = _run(steps)
    assert image.size == (60, 60)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((30, 30)) == (0, 255, 0)


def test_background_flatten_keeps_the_size() -> None:
    image, _ = _run(LocalSteps(background_color="#0000ff", output_format="png"))
    assert image.size == (100, 80)
    assert image.getpixel((0, 0)) == (0, 0, 255)


def test_crop_of_an_empty_cutout_is_unknown_foreground() -> None:
    empty = _save(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), "PNG")
    with pytest.raises(InputRejectedError) as info:
        apply_local_steps(empty, LocalSteps(crop=True, output_format="png"), vendor="pixian")
    assert info.value.code == "unknown_foreground"
    assert info.value.vendor == "pixian"


@pytest.mark.parametrize(
    ("max_size", "size"), [((50, 50), (50, 40)), ((20, 40), (20, 16)), ((1000, 1000), (100, 80))]
)
def test_resize_fits_the_box_and_never_enlarges(max_size: tuple[int, int], size: tuple[int, int]) -> None:
    image, _ = _run(LocalSteps(max_size=max_size, output_format="png"))
    assert image.size == size


def test_resize_of_a_real_photo(images_dir: Path) -> None:
    data = (images_dir / "horse.png").read_bytes()
    image, content_type = _run(LocalSteps(max_size=(64, 64), output_format="webp"), data)
    assert max(image.size) == 64
    assert content_type == "image/webp"
    assert image.mode == "RGBA"


@pytest.mark.parametrize(
    ("fmt", "content_type", "magic", "mode"),
    [
        ("png", "image/png", b"\x89PNG", "RGBA"),
        ("jpeg", "image/jpeg", b"\xff\xd8\xff", "RGB"),
        ("webp", "image/webp", b"RIFF", "RGBA"),
    ],
)
def test_encode_formats(fmt: str, content_type: str, magic: bytes, mode: str) -> None:
    content, got_type, _, _ = apply_local_steps(_cutout(), LocalSteps(output_format=fmt), vendor="poof")  # type: ignore[arg-type]
    assert got_type == content_type
    assert content.startswith(magic)
    image = _open(content)
    assert image.mode == mode
    if fmt == "jpeg":  # no alpha: transparent pixels end on white
        assert image.getpixel((0, 0)) == (255, 255, 255)


def test_no_format_keeps_the_vendor_format() -> None:
    _, content_type, _, _ = apply_local_steps(_cutout(), LocalSteps(max_size=(10, 10)), vendor="poof")
    assert content_type == "image/png"


def test_jpeg_quality_is_used() -> None:
    noisy = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    low = encode(noisy, "jpeg", 10)
    high = encode(noisy, "jpeg", 95)
    assert len(low) < len(high)


def test_flatten_composites_alpha() -> None:
    half = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert flatten(half, "#ffffff").getpixel((0, 0)) == (127, 127, 127)
