"""Local image work: header reads and input checks before spending, post-processing after the call."""

from __future__ import annotations

import concurrent.futures
import io
import os
import random
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import EpsImagePlugin, Image, ImageChops, ImageCms, ImageFile, ImageStat

from airflow_provider_bgremoval.exceptions import InputRejectedError, InvalidVendorResponseError
from airflow_provider_bgremoval.imaging import (
    DEFAULT_RESULT_LIMITS,
    RESULT_ERROR_CODES,
    RESULT_HEADROOM,
    RESULT_LIMITS,
    ImageInfo,
    InputLimits,
    ResultLimits,
    apply_local_steps,
    check_limits,
    decode_result,
    encode,
    exif_orientation,
    flatten,
    normalise_mode,
    prepare_input,
    read_header,
    result_limits,
)
from airflow_provider_bgremoval.options import LocalSteps, Margin
from tests.support.reply_strategies import jpeg_declaring, png_bytes

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
    assert prepared.data is data
    assert prepared.content_type == ("image/png" if name.endswith(".png") else "image/jpeg")


@pytest.mark.parametrize(
    ("data", "mode", "bit_depth", "transparency"),
    [
        (_save(Image.new("RGB", (8, 8)), "PNG"), "RGB", 8, False),
        (png_bytes(8, 8, bit_depth=16), "RGB", 16, False),
        (_save(Image.new("L", (8, 8)), "PNG", bits=2), "L", 2, False),
        (_save(Image.new("RGB", (8, 8)), "PNG", transparency=(1, 2, 3)), "RGB", 8, True),
        (_save(Image.new("L", (8, 8)), "PNG", transparency=7), "L", 8, True),
        (_save(Image.new("RGB", (8, 8)), "JPEG"), "RGB", None, False),
        (_save(Image.new("P", (8, 8)), "GIF", transparency=0), "P", None, True),
    ],
    ids=["png", "16-bit rgb png", "2-bit gray png", "rgb png trns", "gray png trns", "jpeg", "gif"],
)
def test_read_header_reports_what_the_mode_hides(
    data: bytes, mode: str, bit_depth: int | None, transparency: bool
) -> None:
    """Pillow opens a 16-bit RGB PNG and a PNG with a ``tRNS`` colour as plain ``RGB``/``L``."""
    info = read_header(data)
    assert (info.mode, info.bit_depth, info.transparency) == (mode, bit_depth, transparency)
    if info.format == "PNG":
        assert read_header(data[:64]).bit_depth == bit_depth  # IHDR is the first chunk


def test_read_header_works_on_a_prefix(images_dir: Path) -> None:
    data = (images_dir / "rocket.jpg").read_bytes()
    assert read_header(data[: 64 * 1024]) == read_header(data)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append((data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def _png_with_exif(orientations: list[tuple[str, int | bytes]]) -> bytes:
    """A 40x20 PNG with ``eXIf`` chunks ``before`` / ``after`` its image data (a tag, or raw bytes)."""
    plain = _save(Image.new("RGB", (40, 20), "white"), "PNG")
    placed: dict[str, list[bytes]] = {"before": [], "after": []}
    for where, value in orientations:
        payload = value
        if isinstance(value, int):
            tags = Image.Exif()
            tags[0x0112] = value
            payload = tags.tobytes()[6:]  # an eXIf chunk holds the TIFF block without the "Exif" header
        assert isinstance(payload, bytes)
        placed[where].append(_png_chunk(b"eXIf", payload))
    out = [plain[:8]]
    for kind, payload in _png_chunks(plain):
        if kind == b"IDAT" and placed["before"]:
            out += placed["before"]
            placed["before"] = []
        if kind == b"IEND":
            out += placed["after"]
        out.append(_png_chunk(kind, payload))
    return b"".join(out)


@pytest.mark.parametrize(
    ("chunks", "orientation"),
    [
        pytest.param([], 1, id="none"),
        pytest.param([("before", 6)], 6, id="before-the-pixels"),
        pytest.param([("after", 8)], 8, id="after-the-pixels"),
        pytest.param([("before", 3), ("after", 8)], 3, id="before-wins"),
        pytest.param([("after", 3), ("after", 8)], 8, id="last-after-wins"),
        pytest.param([("after", b"\xde\xad\xbe\xef" * 4)], 1, id="garbage"),
        pytest.param([("after", 77)], 1, id="out-of-range"),
    ],
)
def test_png_orientation_is_read_without_decoding_a_pixel(
    chunks: list[tuple[str, int | bytes]], orientation: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's ``getexif()`` decodes a PNG with no early ``eXIf``; read_header walks the chunks."""
    data = _png_with_exif(chunks)
    with Image.open(io.BytesIO(data)) as image:
        assert exif_orientation(image) == orientation  # what Pillow says, decoding

    loads: list[str | None] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.format))
    assert read_header(data).orientation == orientation
    assert loads == []  # not one pixel decoded


def test_png_orientation_in_a_chunk_past_a_prefix_is_not_there() -> None:
    data = _png_with_exif([("after", 6)])
    assert read_header(data).orientation == 6
    assert read_header(data[: len(data) - 20]).orientation == 1  # the eXIf chunk is cut short


def test_a_png_input_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str | None] = []
    original = ImageFile.ImageFile.load

    def counted(self: ImageFile.ImageFile) -> object:
        loads.append(self.format)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    data = _save(Image.new("RGBA", (64, 48), "teal"), "PNG")
    assert prepare_input(data, GENEROUS).data is data
    assert loads == ["PNG"]


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


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    box = b"ftyp" + major + bytes(4) + b"".join(compatible)
    return struct.pack(">I", 4 + len(box)) + box + struct.pack(">I", 16) + b"meta" + bytes(8)


def test_a_heic_photo_is_named_with_what_reads_it() -> None:
    # Before: an iPhone photo read "not a readable image (UnidentifiedImageError)", as random bytes do.
    for heic in (_ftyp(b"heic", b"mif1", b"heic"), _ftyp(b"mif1", b"mif1", b"heic", b"miaf")):
        error = _rejected(heic)
        assert error.code == "unsupported_image"
        assert "not a readable image: a HEIC/HEIF photo" in error.message
        assert "pillow-heif" in error.message
    broken_avif = _ftyp(b"avif", b"mif1", b"avif", b"miaf")
    assert "HEIC" not in _rejected(broken_avif).message


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n%%EOF\n"


def test_eps_is_never_handed_to_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: an EPS object was opened and decoded by Pillow's EPS reader, which runs Ghostscript (a
    # PostScript interpreter) on the bucket's bytes; without Ghostscript it read "corrupt or truncated".
    runs: list[object] = []

    def ghostscript(*args: object, **kwargs: object) -> object:
        runs.append(args)
        raise OSError("Ghostscript was run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    with pytest.raises(InputRejectedError, match="not a readable image") as info:
        read_header(EPS)
    assert info.value.code == "unsupported_image"
    assert _rejected(EPS).code == "unsupported_image"
    assert runs == []


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
    assert prepared.data is not data
    assert prepared.content_type == "image/png"
    upright = _open(prepared.data)
    assert upright.size == (20, 40)
    assert read_header(prepared.data).orientation == 1
    # after a clockwise turn the stored left edge is at the top
    red, green, _blue = upright.convert("RGB").getpixel((10, 2))  # type: ignore[misc]
    assert red > 200 > green
    assert upright.getexif().get(0x0112) in (None, 1)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    data = _save(Image.new("CMYK", (32, 16), (0, 255, 255, 0)), "JPEG")
    assert read_header(data).mode == "CMYK"
    prepared = prepare_input(data, GENEROUS)
    assert prepared.data is not data
    result = _open(prepared.data)
    assert result.mode == "RGB"
    red, green, blue = result.getpixel((5, 5))  # type: ignore[misc]
    assert red > 200
    assert green < 60
    assert blue < 60


def _icc_desc(text: bytes) -> bytes:
    return b"desc" + bytes(4) + struct.pack(">I", len(text) + 1) + text + bytes(1 + 4 + 4 + 2 + 1 + 67)


_D50 = struct.pack(">3i", 63190, 65536, 54061)


def _cmyk_profile() -> bytes:
    """A tiny valid CMYK ICC profile (v2, ``lut8`` A2B0): any ink at all prints a mid blue."""
    clut = bytes((255, 128, 128)) + bytes((round(60 * 2.55), 128, 128 - 60)) * 15  # paper; Lab(60, 0, -60)
    ramp = bytes(range(256))
    identity = struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 65536)
    a2b0 = b"mft1" + bytes(4) + bytes((4, 3, 2, 0)) + identity + ramp * 4 + clut + ramp * 3
    return _icc(b"prtrCMYKLab ", [(b"A2B0", a2b0)])


def _gray_profile() -> bytes:
    """A tiny valid grey ICC profile (v2, gamma 1.0: mid grey 128 is sRGB 188)."""
    return _icc(b"mntrGRAYXYZ ", [(b"kTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0100))])


def _icc(kind: bytes, own: list[tuple[bytes, bytes]]) -> bytes:
    white = _D50
    tags = [(b"desc", _icc_desc(b"test profile")), (b"wtpt", b"XYZ " + bytes(4) + white), *own]
    offset = 128 + 4 + 12 * len(tags)
    table = body = b""
    for signature, content in tags:
        padded = content + bytes(-len(content) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(padded))
        body += padded
    header = (
        struct.pack(">II", offset + len(body), 0)
        + struct.pack(">I", 0x02100000)
        + kind
        + bytes(12)
        + b"acsp"
        + bytes(28)
        + white
        + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + table + body


def test_cmyk_jpeg_is_converted_with_its_icc_profile() -> None:
    # Before: Pillow's plain CMYK -> RGB formula (25 % cyan read as (191, 255, 255)) with the CMYK
    # profile left on the RGB PNG, where it describes nothing; the vendor cut out other colours.
    icc = _cmyk_profile()
    data = _save(Image.new("CMYK", (32, 16), (64, 0, 0, 0)), "JPEG", icc_profile=icc, quality=100)
    prepared = prepare_input(data, GENEROUS)
    sent = _open(prepared.data)
    assert sent.mode == "RGB"
    assert sent.info.get("icc_profile") is None  # sRGB pixels, untagged
    managed = ImageCms.profileToProfile(
        Image.new("CMYK", (1, 1), (64, 0, 0, 0)),
        ImageCms.ImageCmsProfile(io.BytesIO(icc)),
        ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")),
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        outputMode="RGB",
        flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
    )
    assert managed is not None
    expected = managed.getpixel((0, 0))
    assert expected != (191, 255, 255)  # the profile's light blue, not the formula's pale cyan
    got = sent.getpixel((5, 5))
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 3  # type: ignore[arg-type]


def test_grey_jpeg_is_converted_with_its_icc_profile_and_grey_alpha_is_kept() -> None:
    icc = _gray_profile()
    data = _save(Image.new("L", (16, 16), 128), "JPEG", icc_profile=icc, quality=100)
    sent = _open(prepare_input(data, GENEROUS).data)
    assert (sent.mode, sent.info.get("icc_profile")) == ("RGB", None)
    assert all(180 <= value <= 195 for value in sent.getpixel((5, 5)))  # type: ignore[union-attr]
    exif = Image.Exif()
    exif[0x0112] = 3
    keyed = _save(Image.new("L", (16, 16), 128), "PNG", icc_profile=icc, transparency=128, exif=exif)
    sent = _open(prepare_input(keyed, GENEROUS).data)
    assert sent.mode == "RGBA"
    assert sent.getpixel((5, 5))[3] == 0  # type: ignore[index]


def test_a_profile_of_another_colour_space_never_stays_on_rgb_pixels() -> None:
    broken = _cmyk_profile()[:200]  # a CMYK header, unusable: converted without it and dropped
    data = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", icc_profile=broken)
    sent = _open(prepare_input(data, GENEROUS).data)
    assert sent.mode == "RGB"
    assert sent.info.get("icc_profile") is None
    red, green, blue = sent.getpixel((5, 5))  # type: ignore[misc]
    assert red > 200
    assert max(green, blue) < 60


def test_16_bit_png_is_scaled_not_clipped() -> None:
    data = _save(Image.new("I;16", (30, 20), 100 * 256), "PNG")
    assert read_header(data).mode.startswith("I")
    prepared = prepare_input(data, GENEROUS)
    assert prepared.data is not data
    result = _open(prepared.data)
    assert result.mode == "RGB"
    assert result.getpixel((0, 0)) == (100, 100, 100)


def test_16_bit_grey_png_keeps_its_trns_transparency() -> None:
    # Before: scaled to 8 bits and its tRNS grey value dropped: the transparent background was sent
    # opaque (here (3, 3, 3)), for the vendor to cut out, or not.
    image = Image.new("I;16", (30, 20), 1000)
    image.paste(Image.new("I;16", (10, 10), 100 * 256), (10, 5))
    data = _save(image, "PNG", transparency=1000)
    assert read_header(data).transparency
    result = _open(prepare_input(data, GENEROUS).data).convert("RGBA")
    assert result.getpixel((0, 0))[3] == 0  # type: ignore[index]
    assert result.getpixel((15, 10)) == (100, 100, 100, 255)
    assert normalise_mode(_open(data)).mode == "LA"
    assert normalise_mode(_open(_save(image, "PNG"))).mode == "L"  # no tRNS: no alpha


def test_palette_png_with_transparency_keeps_its_alpha() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (5, 5, 15, 15))
    data = _save(image, "PNG", transparency=0)
    assert read_header(data).mode == "P"
    prepared = prepare_input(data, GENEROUS)
    assert prepared.data is not data
    result = _open(prepared.data)
    assert result.mode == "RGBA"
    assert result.getpixel((0, 0))[3] == 0  # type: ignore[index]
    assert result.getpixel((10, 10)) == (0, 0, 255, 255)


def test_grayscale_png_passes_and_grayscale_jpeg_is_converted() -> None:
    gray = Image.new("L", (20, 20), 128)
    png = _save(gray, "PNG")
    assert prepare_input(png, GENEROUS).data is png
    jpeg = _save(gray, "JPEG")
    prepared = prepare_input(jpeg, GENEROUS)
    assert prepared.data is not jpeg
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
    assert prepared.data is not data
    assert prepared.content_type == "image/png"
    assert read_header(prepared.data).frames == 1
    result = _open(prepared.data)
    assert getattr(result, "n_frames", 1) == 1
    assert result.convert("RGB").getpixel((3, 3)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF"])
def test_formats_the_vendor_does_not_take_become_png(fmt: str) -> None:
    data = _save(Image.new("RGB", (16, 16), "blue"), fmt)
    prepared = prepare_input(data, GENEROUS)
    assert prepared.data is not data
    assert prepared.content_type == "image/png"
    assert _open(prepared.data).format == "PNG"


def test_webp_passes_where_accepted_and_converts_where_not() -> None:
    data = _save(Image.new("RGB", (16, 16), "blue"), "WEBP")
    assert prepare_input(data, GENEROUS).content_type == "image/webp"
    png_only = InputLimits(max_bytes=10**6, formats=frozenset({"PNG", "JPEG"}))
    prepared = prepare_input(data, png_only)
    assert prepared.data is not data
    assert prepared.content_type == "image/png"


def _rotated_photo(images_dir: Path, orientation: int = 6) -> tuple[Image.Image, bytes]:
    photo = _open((images_dir / "rocket.jpg").read_bytes()).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return photo, _save(photo, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=icc)


def test_rotated_photo_too_large_as_png_is_sent_as_an_upright_jpeg(images_dir: Path) -> None:
    # A camera JPEG with EXIF orientation 6 well within the byte limit became a PNG 3-4 times its size
    # and was refused ("file is 36,360,620 bytes; the vendor's limit is 25,000,000") for a 10 MB file.
    photo, data = _rotated_photo(images_dir)
    limits = InputLimits(max_bytes=2 * len(data))
    as_png = _save(photo.transpose(Image.Transpose.ROTATE_270), "PNG", compress_level=1)
    assert len(as_png) > limits.max_bytes  # the lossless conversion would not fit

    prepared = prepare_input(data, limits, vendor="poof")
    assert prepared.content_type == "image/jpeg"
    assert len(prepared.data) <= limits.max_bytes
    sent = _open(prepared.data)
    assert (sent.format, sent.size, read_header(prepared.data).orientation) == ("JPEG", (427, 640), 1)
    assert sent.info.get("icc_profile") == _open(data).info.get("icc_profile")  # the colour space kept
    expected = photo.transpose(Image.Transpose.ROTATE_270)
    difference = ImageChops.difference(sent.convert("RGB"), expected).convert("L")
    assert ImageStat.Stat(difference).mean[0] < 3  # the photo's own tables: next to no further loss


def test_conversion_too_large_in_any_form_names_both_sizes(images_dir: Path) -> None:
    _photo, data = _rotated_photo(images_dir)
    error = _rejected(data, InputLimits(max_bytes=2 * len(data), formats=frozenset({"PNG"})))
    assert error.code == "file_size_too_large"
    assert f"the file is {len(data):,} bytes, but converted for sending (EXIF orientation 6 applied)" in str(
        error
    )
    assert "as a PNG" in str(error)


def test_small_conversion_stays_a_lossless_png(images_dir: Path) -> None:
    _photo, data = _rotated_photo(images_dir)
    prepared = prepare_input(data, GENEROUS)
    assert prepared.content_type == "image/png"
    assert _open(prepared.data).size == (427, 640)


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


@pytest.mark.parametrize(
    ("body_format", "requested", "magic"),
    [("JPEG", "png", b"\x89PNG"), ("PNG", "jpeg", b"\xff\xd8\xff"), ("JPEG", "webp", b"RIFF")],
)
def test_a_result_in_another_format_than_requested_is_re_encoded(
    body_format: str, requested: str, magic: bytes
) -> None:
    """A vendor answering a PNG request with a JPEG, no local step: the stored bytes are still a PNG."""
    body = _save(Image.new("RGB", (30, 20), "orange"), body_format)
    content, content_type, width, height = apply_local_steps(
        body, LocalSteps(), vendor="poof", requested_format=requested
    )
    assert content.startswith(magic)
    assert content_type == f"image/{requested}"
    assert _open(content).format == requested.upper()
    assert (width, height) == (30, 20)


def test_a_result_in_the_requested_format_is_kept_as_it_came() -> None:
    for body in (_cutout(), _save(Image.new("RGB", (30, 20), "orange"), "JPEG")):
        fmt = _open(body).format.lower()  # type: ignore[union-attr]
        content, content_type, _, _ = apply_local_steps(
            body, LocalSteps(), vendor="poof", requested_format=fmt
        )
        assert content is body
        assert content_type == f"image/{fmt}"
    content, content_type, _, _ = apply_local_steps(_cutout(), LocalSteps(), vendor="poof")
    assert (content, content_type) == (_cutout(), "image/png")  # nothing requested: the vendor's format


def test_jpeg_quality_is_used() -> None:
    noisy = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    low = encode(noisy, "jpeg", 10)
    high = encode(noisy, "jpeg", 95)
    assert len(low) < len(high)


def test_flatten_composites_alpha() -> None:
    half = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert flatten(half, "#ffffff").getpixel((0, 0)) == (127, 127, 127)


@pytest.mark.parametrize(
    "steps",
    [
        LocalSteps(output_format="jpeg"),
        LocalSteps(output_format="webp"),
        LocalSteps(background_color="#ffffff"),
        LocalSteps(background_color="#000000", output_format="webp"),
        LocalSteps(crop=True, output_format="jpeg"),
    ],
    ids=["jpeg", "webp", "flattened-png", "flattened-webp", "cropped-jpeg"],
)
def test_local_steps_keep_the_results_icc_profile(steps: LocalSteps, images_dir: Path) -> None:
    # Before: a JPEG or WebP output, or any flattened one, lost the profile (a Display P3 photo's cut-out
    # read as sRGB: other colours); a PNG kept it. The delta PNG decoder carries the original's profile.
    icc = _open((images_dir / "rocket.jpg").read_bytes()).info["icc_profile"]
    cutout = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    cutout.paste((200, 30, 30, 255), (10, 10, 30, 20))
    content, _type, _width, _height = apply_local_steps(
        _save(cutout, "PNG", icc_profile=icc), steps, vendor="pixian"
    )
    assert _open(content).info.get("icc_profile") == icc


def test_a_grey_profile_is_not_put_on_a_colour_output() -> None:
    grey = bytes(16) + b"GRAYXYZ " + bytes(108)
    result = _save(Image.new("LA", (8, 8), (90, 255)), "PNG", icc_profile=grey)
    content, *_ = apply_local_steps(result, LocalSteps(background_color="#ffffff"), vendor="pixian")
    assert "icc_profile" not in _open(content).info


_PEAK_SCRIPT = """
import resource, sys
from airflow_provider_bgremoval.imaging import apply_local_steps
from airflow_provider_bgremoval.options import LocalSteps
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
apply_local_steps(data, LocalSteps(background_color="#ffffff", output_format="jpeg"), vendor="pixian")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_flattening_a_large_result_makes_one_new_image(tmp_path: Path) -> None:
    # Before: an RGBA copy, an RGBA base and its RGB conversion besides the result (measured: 2.5 decoded
    # sizes over the peak before it, 0.5 now); a 144-megapixel result, the largest accepted, took 2 GB.
    side = 3000
    cutout = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    cutout.paste((200, 30, 30, 255), (500, 500, 2500, 2500))
    source = tmp_path / "result.png"
    source.write_bytes(_save(cutout, "PNG", compress_level=1))
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(source)], capture_output=True, text=True, check=True
    )
    peak_kib = int(run.stdout.split()[-1])
    decoded_kib = side * side * 4 // 1024
    assert peak_kib < 1.5 * decoded_kib, f"peak {peak_kib / decoded_kib:.1f} decoded sizes"


# -- vendor results that cannot be used: one typed error, a clear code, plain words -------------------


def _decode_error(data: bytes, vendor: str = "poof", **kwargs: object) -> InvalidVendorResponseError:
    with pytest.raises(InvalidVendorResponseError) as info:
        decode_result(data, vendor=vendor, **kwargs)  # type: ignore[arg-type]
    error = info.value
    assert error.code in RESULT_ERROR_CODES
    assert error.vendor == vendor
    assert error.possibly_charged is True  # the call was billed
    assert error.retryable is False
    return error


def _steps_error(
    data: bytes, steps: LocalSteps, vendor: str = "poof", **kwargs: object
) -> InvalidVendorResponseError:
    with pytest.raises(InvalidVendorResponseError) as info:
        apply_local_steps(data, steps, vendor=vendor, **kwargs)  # type: ignore[arg-type]
    assert info.value.code in RESULT_ERROR_CODES
    assert info.value.possibly_charged is True
    return info.value


def test_a_20000_px_result_is_result_too_large_not_a_pillow_bomb_error() -> None:
    """Issue 10, defect 1: Pillow's DecompressionBombError used to escape and abort the batch."""
    bomb = _png_declaring(20_000, 20_000)
    before = Image.MAX_IMAGE_PIXELS
    for vendor in ("pixelcut", "pixian", "poof"):
        error = _decode_error(bomb, vendor)
        assert error.code == "result_too_large"
        assert "decompression bomb" in error.message
        assert "refused without decoding it" in error.message
        steps_error = _steps_error(bomb, LocalSteps(crop=True, output_format="png"), vendor)
        assert steps_error.code == "result_too_large"
    assert before == Image.MAX_IMAGE_PIXELS  # the process-wide setting is left alone


def test_result_over_the_vendors_documented_size_is_refused_before_decoding() -> None:
    # 11000 x 11000 = 121 MP: under Pillow's bomb error, over Pixian's 25 MP x 4; a 13000 x 100 strip
    # is over Poof's 6000 px x 2 per side. Both refused from the header alone.
    error = _decode_error(_png_declaring(11_000, 11_000), "pixian")
    assert error.code == "result_too_large"
    assert "11000x11000 = 121,000,000 pixels" in error.message
    assert "100,000,000 pixels accepted from pixian" in error.message
    assert "max_pixels = 25,000,000" in error.message
    strip = _png_declaring(13_000, 100)
    error = _decode_error(strip, "poof")
    assert error.code == "result_too_large"
    assert "12000 px per side" in error.message
    # Pixian documents no per-side limit: the strip passes the size check and fails as cut short.
    assert _decode_error(strip, "pixian").code == "result_unreadable"


def test_result_limits_come_from_the_vendors_documented_output() -> None:
    from airflow_provider_bgremoval.vendors.pixelcut import PixelcutWire
    from airflow_provider_bgremoval.vendors.pixian import MAX_MAX_PIXELS
    from airflow_provider_bgremoval.vendors.poof import PoofWire

    headroom = RESULT_HEADROOM
    pixelcut_side = PixelcutWire.spec.limits.max_side
    assert pixelcut_side is not None
    assert RESULT_LIMITS["pixelcut"] == ResultLimits(
        max_pixels=pixelcut_side**2 * headroom**2,
        max_side=pixelcut_side * headroom,
        basis=RESULT_LIMITS["pixelcut"].basis,
    )
    assert RESULT_LIMITS["pixian"].max_pixels == MAX_MAX_PIXELS * headroom**2
    assert RESULT_LIMITS["pixian"].max_side is None
    assert PoofWire.spec.limits.max_pixels is not None and PoofWire.spec.limits.max_side is not None
    assert RESULT_LIMITS["poof"].max_pixels == PoofWire.spec.limits.max_pixels * headroom**2
    assert RESULT_LIMITS["poof"].max_side == PoofWire.spec.limits.max_side * headroom
    # Pixelcut's native margin (at most 49 % per side) fits the headroom; unknown vendors get the widest.
    assert pixelcut_side * (1 + 2 * 0.49) <= RESULT_LIMITS["pixelcut"].max_side  # type: ignore[operator]
    assert result_limits("pixelcut") is RESULT_LIMITS["pixelcut"]
    assert result_limits("acme") == DEFAULT_RESULT_LIMITS
    assert DEFAULT_RESULT_LIMITS.max_pixels == max(limits.max_pixels for limits in RESULT_LIMITS.values())
    # Below Pillow's own bomb error (2 x MAX_IMAGE_PIXELS), so the vendor limit is what decides.
    assert max(limits.max_pixels for limits in RESULT_LIMITS.values()) < 2 * (Image.MAX_IMAGE_PIXELS or 0)


def test_result_limits_can_be_given() -> None:
    wide = ResultLimits(max_pixels=13_000 * 13_000)  # over Pixian's own: the header is read, then the data
    assert _decode_error(_png_declaring(13_000, 13_000), "pixian", limits=wide).code == "result_unreadable"


def test_pillow_bomb_warning_is_ignored_and_its_error_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's global threshold does not decide: its warning is silenced, its error becomes ours."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns above 1000 px, errors above 2000
    warned = _save(Image.new("RGBA", (40, 40), (255, 0, 0, 255)), "PNG")  # 1600 px
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would now be an exception
        assert decode_result(warned, vendor="poof").size == (40, 40)
        content, _, width, height = apply_local_steps(
            warned, LocalSteps(crop=True, margin=Margin.parse("2px"), output_format="png"), vendor="poof"
        )
    assert (width, height) == (44, 44)
    assert content.startswith(b"\x89PNG")
    error = _decode_error(_save(Image.new("RGB", (50, 50)), "PNG"))  # 2500 px: Pillow's error
    assert error.code == "result_too_large"
    assert "decompression bomb" in error.message


@pytest.mark.parametrize(
    ("data", "code", "fragment"),
    [
        pytest.param(b"", "result_empty", "empty body", id="empty"),
        pytest.param(b'{"result_url": "https://x/y.png"}', "result_unreadable", "a JSON document", id="json"),
        pytest.param(b'[{"error": "oops"}]', "result_unreadable", "a JSON document", id="json-array"),
        pytest.param(b"<html><body>502 Bad Gateway</body></html>", "result_unreadable", "HTML", id="html"),
        pytest.param(
            b"\x89PNG\r\n\x1a\n garbage", "result_unreadable", "not a complete image", id="png-magic"
        ),
        pytest.param(
            random.Random(3).randbytes(500), "result_unreadable", "not a complete image", id="garbage"
        ),
    ],
)
def test_bodies_that_are_not_images(data: bytes, code: str, fragment: str) -> None:
    error = _decode_error(data)
    assert error.code == code
    assert fragment in error.message


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO", "PPM"])
def test_image_types_no_vendor_returns_are_the_wrong_type(fmt: str) -> None:
    data = _save(Image.new("RGB", (16, 16), "blue"), fmt)
    error = _decode_error(data)
    assert error.code == "result_wrong_type"
    assert f"a {fmt} image; vendors return PNG, JPEG or WebP" in error.message


@pytest.mark.parametrize("name", ["horse.png", "rocket.jpg"])
def test_truncated_results_are_unreadable(name: str, images_dir: Path) -> None:
    data = (images_dir / name).read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 40):
        error = _decode_error(data[:cut])
        assert error.code == "result_unreadable"
        assert "not a complete image" in error.message


def test_lying_headers_are_unreadable() -> None:
    rows = (b"\x00" + b"\x10" * 8 * 3) * 8  # pixel data for 8 x 8
    declares_more = png_bytes(64, 64, rows=rows)
    assert _decode_error(declares_more).code == "result_unreadable"
    bad_crc = bytearray(_save(Image.new("RGB", (8, 8), "red"), "PNG"))
    bad_crc[29] ^= 0xFF  # inside the IHDR CRC
    assert _decode_error(bytes(bad_crc)).code == "result_unreadable"
    # A JPEG whose frame header declares more rows than its scan holds, ending with a proper EOI
    # marker, is completed by libjpeg with grey ("premature end of data" is only a warning there):
    # it decodes, at the declared size, within the limits. No decoder can tell it from a real image.
    assert decode_result(jpeg_declaring(3000, 3000), vendor="poof").size == (3000, 3000)
    cut = jpeg_declaring(3000, 3000)
    assert _decode_error(cut[: len(cut) - 40]).code == "result_unreadable"  # no EOI: cut short


def _animation(fmt: str) -> bytes:
    frames = [Image.new("RGBA", (24, 16), colour) for colour in ((255, 0, 0, 255), (0, 255, 0, 255))]
    params: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    if fmt == "MPO":
        frames = [frame.convert("RGB") for frame in frames]
    else:
        params["duration"] = 50
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], **params)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "MPO"])
def test_animated_results_use_the_first_frame(fmt: str) -> None:
    data = _animation(fmt)
    image = decode_result(data, vendor="poof")
    assert image.format == ("JPEG" if fmt == "MPO" else fmt)  # an MPO is reported as the JPEG it is
    content, content_type, width, height = apply_local_steps(
        data, LocalSteps(output_format="png", background_color="#000000"), vendor="poof"
    )
    out = _open(content)
    assert getattr(out, "n_frames", 1) == 1
    red, green, _ = out.getpixel((5, 5))  # type: ignore[misc]
    assert red > 200 > green
    assert (content_type, width, height) == ("image/png", 24, 16)


def _mode_bodies() -> dict[str, bytes]:
    subject = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    subject.paste((200, 40, 40, 255), (10, 5, 20, 15))
    palette = Image.new("P", (30, 20), 0)
    palette.putpalette([0, 0, 0, 200, 40, 40] + [0] * 762)
    palette.paste(1, (10, 5, 20, 15))
    # 16-bit gray, 0 around a 10x10 square of 100 x 256 (written by hand, big-endian samples)
    gray16 = b"".join(
        b"\x00"
        + b"".join((25_600 if 10 <= x < 20 and 5 <= y < 15 else 0).to_bytes(2, "big") for x in range(30))
        for y in range(20)
    )
    return {
        "RGBA": _save(subject, "PNG"),
        "RGB": _save(subject.convert("RGB"), "PNG"),
        "RGB+tRNS": _save(subject.convert("RGB"), "PNG", transparency=(0, 0, 0)),
        "L": _save(subject.convert("L"), "PNG"),
        "L+tRNS": _save(subject.convert("L"), "PNG", transparency=0),
        "LA": _save(subject.convert("LA"), "PNG"),
        "P": _save(palette, "PNG"),
        "P+tRNS": _save(palette, "PNG", transparency=0),
        "1": _save(subject.convert("1"), "PNG"),
        "I;16": png_bytes(30, 20, bit_depth=16, color_type=0, rows=gray16),
        "16-bit RGBA": png_bytes(
            30, 20, bit_depth=16, color_type=6, rows=(b"\x00" + b"\x80\x00" * 4 * 30) * 20
        ),
        "16-bit RGB": png_bytes(
            30, 20, bit_depth=16, color_type=2, rows=(b"\x00" + b"\x40\x00" * 3 * 30) * 20
        ),
        "CMYK": _save(subject.convert("RGB").convert("CMYK"), "JPEG"),
        "WEBP": _save(subject, "WEBP", lossless=True),
    }


MODE_BODIES = _mode_bodies()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("crop", [False, True])
@pytest.mark.parametrize("name", sorted(MODE_BODIES))
def test_every_result_mode_goes_through_every_local_step(name: str, crop: bool, fmt: str) -> None:
    """16-bit, CMYK, palette, bilevel, LA… results: crop, margin, flatten and encode all work."""
    steps = LocalSteps(
        crop=crop,
        margin=Margin.parse("2px") if crop else None,
        max_size=(25, 25),
        output_format=fmt,  # type: ignore[arg-type]
    )
    content, content_type, width, height = apply_local_steps(MODE_BODIES[name], steps, vendor="poof")
    out = _open(content)
    assert out.size == (width, height)
    assert content_type == f"image/{fmt}"
    assert out.mode in ("RGB", "RGBA", "L", "LA")


def test_16_bit_result_is_scaled_not_clipped() -> None:
    content, _, _, _ = apply_local_steps(MODE_BODIES["I;16"], LocalSteps(output_format="png"), vendor="poof")
    out = _open(content)
    assert out.mode == "L"
    assert out.getpixel((12, 8)) == 100
    assert out.getpixel((0, 0)) == 0


def test_cmyk_result_is_converted_for_png() -> None:
    # Pillow cannot write CMYK as PNG: this used to fail in our own encode step.
    content, _, _, _ = apply_local_steps(
        MODE_BODIES["CMYK"], LocalSteps(output_format="png"), vendor="pixelcut"
    )
    red, green, blue = _open(content).convert("RGB").getpixel((12, 8))  # type: ignore[misc]
    assert red > 150 > green


def test_palette_transparency_becomes_alpha_for_the_crop() -> None:
    content, _, width, height = apply_local_steps(
        MODE_BODIES["P+tRNS"], LocalSteps(crop=True, output_format="png"), vendor="poof"
    )
    assert (width, height) == (10, 10)
    assert _open(content).mode == "RGBA"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("RGB", "RGB"),
        ("RGBA", "RGBA"),
        ("L", "L"),
        ("LA", "LA"),
        ("La", "LA"),
        ("RGBa", "RGBA"),
        ("PA", "RGBA"),
        ("P", "RGB"),
        ("1", "RGB"),
        ("I", "L"),
        ("I;16", "L"),
        ("I;16B", "L"),
        ("F", "L"),
        ("CMYK", "RGB"),
        ("YCbCr", "RGB"),
        ("LAB", "RGB"),
        ("HSV", "RGB"),
    ],
)
def test_normalise_mode(mode: str, expected: str) -> None:
    assert normalise_mode(Image.new(mode, (4, 4))).mode == expected


@pytest.mark.parametrize(
    "exif",
    [
        pytest.param(b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 8, id="garbage"),
        pytest.param(b"Exif\x00\x00MM\x00\x2a\x00\x00\xff\xff", id="offset-past-the-end"),
        pytest.param(None, id="orientation-77"),
        pytest.param(b"", id="orientation-6"),
    ],
)
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_exif_weirdness_in_results(exif: bytes | None, fmt: str) -> None:
    """Broken or odd EXIF never fails a result; results are used as stored (they are not rotated)."""
    if exif is None or exif == b"":
        tags = Image.Exif()
        tags[0x0112] = 77 if exif is None else 6
        exif = tags.tobytes()
    data = _save(Image.new("RGB", (30, 20), "orange"), fmt, exif=exif)
    assert decode_result(data, vendor="pixian").size == (30, 20)
    content, _, width, height = apply_local_steps(
        data, LocalSteps(crop=True, output_format="png"), vendor="pixian"
    )
    assert (width, height) == (30, 20)
    assert _open(content).size == (30, 20)


def test_memory_error_while_decoding_is_result_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(self: Image.Image) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", exhausted)
    error = _decode_error(_cutout())
    assert error.code == "result_too_large"
    assert "not enough memory to decode the vendor's 100x80 result" in error.message


def test_memory_error_in_a_local_step_is_result_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    def crop(self: Image.Image, *args: object, **kwargs: object) -> Image.Image:
        raise MemoryError

    monkeypatch.setattr(Image.Image, "crop", crop)
    error = _steps_error(_cutout(), LocalSteps(crop=True, output_format="png"))
    assert error.code == "result_too_large"
    assert "not enough memory for the local crop of the vendor's 100x80 RGBA result" in error.message


def test_memory_error_checking_an_input_is_a_local_reject(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(self: Image.Image) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", exhausted)
    error = _rejected(_cutout())
    assert error.code == "too_many_pixels"
    assert "not enough memory" in error.message


@pytest.mark.parametrize("raised", [struct.error("unpack"), IndexError("tile"), EOFError(), KeyError("x")])
def test_any_decoder_failure_is_result_unreadable(monkeypatch: pytest.MonkeyPatch, raised: Exception) -> None:
    def broken(self: Image.Image) -> None:
        raise raised

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    error = _decode_error(_cutout())
    assert error.code == "result_unreadable"
    assert type(raised).__name__ in error.message
    assert _rejected(_cutout()).code == "malformed_image"  # the same on the input side


def test_a_failing_local_step_is_local_processing_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    cutout = _cutout()

    def save(self: Image.Image, fp: object, format: str | None = None, **params: object) -> None:
        raise OSError("encoder error -2")

    monkeypatch.setattr(Image.Image, "save", save)
    error = _steps_error(cutout, LocalSteps(output_format="webp"))
    assert error.code == "local_processing_failed"
    assert "the local webp encoding of the vendor's 100x80 RGBA result failed" in error.message
    assert "OSError: encoder error -2" in error.message
    assert "the call was billed" in error.message


def test_a_margin_that_makes_the_output_too_large_is_refused_before_allocating() -> None:
    tight = ResultLimits(max_pixels=10_000, basis="test limit")
    steps = LocalSteps(crop=True, margin=Margin.parse("100%"), output_format="png")
    error = _steps_error(_cutout(), steps, limits=tight)  # the 40x40 subject + 100 % = 120x120
    assert error.code == "result_too_large"
    assert "the crop with its margin is 120x120 = 14,400 pixels" in error.message
    apply_local_steps(_cutout(), LocalSteps(crop=True, output_format="png"), vendor="poof", limits=tight)


def test_the_tasks_own_timeout_is_never_turned_into_an_image_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout

    for raised in (AirflowTaskTimeout("execution_timeout"), AirflowException("stop")):

        def interrupted(self: Image.Image, raised: BaseException = raised) -> None:
            raise raised

        monkeypatch.setattr(ImageFile.ImageFile, "load", interrupted)
        with pytest.raises(type(raised)):
            decode_result(_cutout(), vendor="poof")
        with pytest.raises(type(raised)):
            prepare_input(_cutout(), GENEROUS)


# -- bomb_warnings_ignored across threads ----------------------------------------------------------


def _bomb_warned() -> bool:
    """Whether a Pillow ``DecompressionBombWarning`` raised now would reach the caller."""
    try:
        Image._decompression_bomb_check((40, 40))  # over the test's 1000 px: Pillow warns
    except Image.DecompressionBombWarning:
        return True
    return False


def test_bomb_warnings_ignored_overlapping_in_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Two threads inside at once, the first leaving first (the pipeline decodes in a thread pool and on
    the event loop): the one still inside keeps the warning silenced, and once both are out the
    process-wide warnings filters are as they were. ``warnings.catch_warnings`` saved and restored the
    whole list: the first one out put back a list without the filter under the second one's feet,
    the second one out put back one with it, for good.
    """
    from airflow_provider_bgremoval.imaging import bomb_warnings_ignored

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with bomb_warnings_ignored():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with bomb_warnings_ignored():
            second_in.set()
            first_out.wait(5)
            seen["warned inside after the first left"] = _bomb_warned()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that gets through is an exception
        before = list(warnings.filters)
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert seen == {"warned inside after the first left": False}
        assert warnings.filters == before
        assert _bomb_warned()  # outside, Pillow's warning is the caller's again


def test_bomb_warnings_ignored_in_a_thread_pool_leaves_the_filters_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # every image below warns in Pillow
    warned = _save(Image.new("RGBA", (40, 40), (255, 0, 0, 255)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before = list(warnings.filters)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(decode_result, warned, vendor="poof") for _ in range(64)]
            jobs += [pool.submit(prepare_input, warned, GENEROUS) for _ in range(64)]
            assert all(job.result() is not None for job in jobs)
        assert warnings.filters == before


# -- float and 16-bit TIFF sources -----------------------------------------------------------------


def _gradient(mode: str, top: float) -> Image.Image:
    """A 64x64 left-to-right ramp from 0 to ``top`` in ``mode``."""
    image = Image.new(mode, (64, 64))
    ramp = [x / 63 * top for x in range(64)]
    image.putdata([value if mode == "F" else int(value) for _ in range(64) for value in ramp])
    return image


@pytest.mark.parametrize("top", [1.0, 255.0, 4000.0])
def test_a_float_tiff_is_refused_before_spending_not_clipped(top: float) -> None:
    """
    A 32-bit float TIFF (mode ``F``, 0-1 as image tools write it) was converted with a plain
    ``convert("L")``: every value clipped to 0 or 1, a black picture sent and paid for. A float has no
    range to scale from, so it is refused locally, naming what to send instead.
    """
    data = _save(_gradient("F", top), "TIFF")
    assert read_header(data).mode == "F"
    error = _rejected(data)
    assert error.code == "unsupported_image"
    assert "32-bit floating-point" in error.message
    assert "8- or 16-bit" in error.message
    with pytest.raises(InputRejectedError, match="32-bit floating-point"):  # planning's header-only check
        check_limits(read_header(data), len(data), GENEROUS, vendor="pixian")


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_a_16_bit_tiff_is_scaled_to_8_bits_for_sending(mode: str) -> None:
    data = _save(_gradient(mode, 65535), "TIFF")
    prepared = prepare_input(data, GENEROUS, vendor="pixian")  # TIFF is not a format Pixian takes
    sent = _open(prepared.data)
    assert prepared.content_type == "image/png"
    assert [sent.convert("L").getpixel((x, 10)) for x in (0, 21, 42, 63)] == [0, 85, 170, 255]


# -- ImageFile.LOAD_TRUNCATED_IMAGES, set by other code of the process ---------------------------


def test_nothing_in_the_package_sets_load_truncated_images() -> None:
    import airflow_provider_bgremoval.operators.bucket
    import airflow_provider_bgremoval.pipeline.engine
    import airflow_provider_bgremoval.renditions.renderer  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.fixture
def truncated_images_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` set, as a DAG file or a plugin of the
    worker may set it: Pillow's decoders then stop silently where the bytes end and fill in the rest.
    """
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)


@pytest.mark.usefixtures("truncated_images_loaded")
@pytest.mark.parametrize("name", ["rocket.jpg", "astronaut.jpg", "chelsea.png", "horse.png"])
def test_truncated_sources_are_refused_whatever_load_truncated_images_says(
    name: str, images_dir: Path
) -> None:
    data = (images_dir / name).read_bytes()
    assert prepare_input(data, GENEROUS).data == data  # a whole file is read as ever
    for cut in (len(data) // 2, len(data) * 9 // 10):
        error = _rejected(data[:cut])
        assert error.code == "malformed_image"
        assert "corrupt or truncated" in error.message


@pytest.mark.usefixtures("truncated_images_loaded")
def test_a_truncated_opaque_rgba_source_is_not_made_a_whole_rgb_png(images_dir: Path) -> None:
    from airflow_provider_bgremoval.imaging import drop_opaque_alpha

    photo = Image.open(images_dir / "astronaut.jpg").convert("RGBA")
    data = _save(photo, "PNG")
    assert _open(drop_opaque_alpha(data, GENEROUS)).mode == "RGB"  # whole: its alpha is dropped
    truncated = data[: len(data) // 2]
    assert drop_opaque_alpha(truncated, GENEROUS) == truncated  # left for prepare_input to refuse
    assert _rejected(truncated).code == "malformed_image"


@pytest.mark.usefixtures("truncated_images_loaded")
@pytest.mark.parametrize("name", ["horse.png", "rocket.jpg"])
def test_truncated_results_are_unreadable_whatever_load_truncated_images_says(
    name: str, images_dir: Path
) -> None:
    data = (images_dir / name).read_bytes()
    assert decode_result(data, vendor="poof").size == _open(data).size
    for cut in (len(data) // 2, len(data) * 9 // 10):
        error = _decode_error(data[:cut])
        assert error.code == "result_unreadable"
        assert "not a complete image" in error.message
        error = _steps_error(data[:cut], LocalSteps(output_format="webp"))
        assert error.code == "result_unreadable"
