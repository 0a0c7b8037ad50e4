"""The delta PNG decoder, on real photos, against cut-outs built by the documented encoding."""

from __future__ import annotations

import io
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import EpsImagePlugin, Image, ImageFilter, ImageOps

from airflow_provider_bgremoval.vendors.delta_png import (
    DeltaPngError,
    apply_orientation,
    decode_delta_png,
    exif_orientation,
)

IMAGES = Path(__file__).resolve().parents[2] / "data" / "images"


@dataclass(frozen=True)
class DeltaCase:
    """A known cut-out, the original it was cut from, and its delta PNG (documented encoding)."""

    original: bytes  # the input file as sent
    upright: Image.Image  # the original's pixels, EXIF-oriented, RGB
    cutout: Image.Image  # the expected decoded result, RGBA
    delta: Image.Image  # RGBA delta

    @property
    def delta_png(self) -> bytes:
        return png(self.delta)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def horse_mask(size: tuple[int, int], blur: float = 2.0) -> Image.Image:
    """The horse silhouette as an alpha mask of ``size``, with soft (partly transparent) edges."""
    horse = Image.open(IMAGES / "horse.png").convert("L")  # black horse on white
    return (
        ImageOps.invert(horse).resize(size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(blur))
    )


def build_case(original: bytes) -> DeltaCase:
    """
    Cut the horse out of ``original`` and encode it as Pixian documents (VENDORS.md §3.3).

    Solid foreground -> ``0x00FFFFFF``; background -> ``0x00000000``; edge pixels keep their real
    RGBA value — here deliberately a colour *different* from the original (its inverse), so a decoder
    that copied edges from the original would fail.
    """
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(original))).convert("RGB")
    mask = horse_mask(upright.size)
    solid = mask.point([0] * 255 + [255])
    edge = mask.point([0] + [255] * 254 + [0])
    edge_pixels = ImageOps.invert(upright).convert("RGBA")
    edge_pixels.putalpha(mask)

    cutout = Image.new("RGBA", upright.size, (0, 0, 0, 0))
    cutout.paste(edge_pixels, (0, 0), edge)
    cutout.paste(upright, (0, 0), solid)

    delta = Image.new("RGBA", upright.size, (0, 0, 0, 0))
    delta.paste((255, 255, 255, 0), (0, 0), solid)
    delta.paste(edge_pixels, (0, 0), edge)
    return DeltaCase(original=original, upright=upright, cutout=cutout, delta=delta)


def reference_decode(delta: Image.Image, original: Image.Image) -> Image.Image:
    """The documented rule written pixel by pixel (slow; an independent oracle for small images)."""
    pixels = []
    for d, o in zip(
        delta.convert("RGBA").get_flattened_data(), original.convert("RGB").get_flattened_data(), strict=True
    ):
        pixels.append((*o, 255) if d[3] == 0 and d[:3] == (255, 255, 255) else d)
    out = Image.new("RGBA", delta.size)
    out.putdata(pixels)
    return out


def assert_same_pixels(actual: Image.Image, expected: Image.Image) -> None:
    assert actual.mode == "RGBA"
    assert actual.size == expected.size
    assert actual.tobytes() == expected.tobytes()


@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.jpg"])
def test_decodes_real_photos_pixel_exact(name: str) -> None:
    case = build_case((IMAGES / name).read_bytes())
    alpha = case.cutout.getchannel("A").histogram()
    # all three pixel kinds occur: background, solid foreground, soft edges
    assert alpha[0] > 0
    assert alpha[255] > 0
    assert sum(alpha[1:255]) > 100

    decoded = decode_delta_png(case.delta_png, case.original)

    assert_same_pixels(decoded, case.cutout)


def test_matches_the_pixel_by_pixel_reference() -> None:
    photo = Image.open(IMAGES / "coffee.png").convert("RGB").resize((120, 80))
    case = build_case(png(photo))
    decoded = decode_delta_png(case.delta, case.upright)
    assert_same_pixels(decoded, reference_decode(case.delta, case.upright))
    assert_same_pixels(decoded, case.cutout)


def test_each_pixel_kind() -> None:
    original = Image.new("RGB", (4, 1), (10, 20, 30))
    delta = Image.new("RGBA", (4, 1))
    delta.putdata(
        [
            (255, 255, 255, 0),  # solid foreground: copy the original, opaque
            (0, 0, 0, 0),  # background: transparent
            (200, 100, 50, 128),  # edge: as is
            (255, 255, 255, 255),  # opaque white foreground pixel: as is
        ]
    )
    decoded = decode_delta_png(delta, original)
    assert list(decoded.get_flattened_data()) == [
        (10, 20, 30, 255),
        (0, 0, 0, 0),
        (200, 100, 50, 128),
        (255, 255, 255, 255),
    ]


def test_copied_pixels_are_opaque_even_from_an_rgba_original() -> None:
    original = Image.open(IMAGES / "horse.png")  # RGBA, alpha 110..255
    assert original.mode == "RGBA"
    delta = Image.new("RGBA", original.size, (255, 255, 255, 0))
    decoded = decode_delta_png(delta, original)
    assert decoded.getchannel("A").getextrema() == (255, 255)
    assert decoded.convert("RGB").tobytes() == original.convert("RGB").tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_applies_the_exif_orientation_of_the_original(orientation: int) -> None:
    photo = Image.open(IMAGES / "chelsea.png").convert("RGB").resize((90, 60))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    photo.save(out, format="PNG", exif=exif)
    original = out.getvalue()
    assert exif_orientation(Image.open(io.BytesIO(original))) == orientation

    case = build_case(original)  # built on the EXIF-transposed pixels, as Pixian computes the delta

    assert_same_pixels(decode_delta_png(case.delta_png, original), case.cutout)
    assert_same_pixels(decode_delta_png(case.delta_png, original, orientation=orientation), case.cutout)


def test_rotated_jpeg_from_a_phone() -> None:
    photo = Image.open(IMAGES / "rocket.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=90, exif=exif)
    case = build_case(out.getvalue())
    assert case.cutout.size == (photo.height, photo.width)

    assert_same_pixels(decode_delta_png(case.delta_png, case.original), case.cutout)
    with pytest.raises(DeltaPngError, match="orientation 1"):
        decode_delta_png(case.delta_png, case.original, orientation=1)  # the vendor said it did not turn it


def test_orientation_helper_matches_pillow_exif_transpose() -> None:
    photo = Image.open(IMAGES / "astronaut.jpg").resize((40, 30))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        out = io.BytesIO()
        photo.save(out, format="PNG", exif=exif)
        tagged = Image.open(io.BytesIO(out.getvalue()))
        expected = ImageOps.exif_transpose(tagged)
        assert apply_orientation(tagged, orientation).tobytes() == expected.tobytes()
    assert apply_orientation(photo, 0) is photo
    assert apply_orientation(photo, 9) is photo


def test_size_mismatch_is_an_error() -> None:
    case = build_case((IMAGES / "chelsea.png").read_bytes())
    shrunk = case.delta.resize((case.delta.width // 2, case.delta.height // 2))
    with pytest.raises(DeltaPngError, match="max_pixels"):
        decode_delta_png(png(shrunk), case.original)


@pytest.mark.parametrize(
    ("delta", "match"),
    [
        (b"", "empty"),
        (b"<html>502 Bad Gateway</html>", "not a readable image"),
        (png(Image.new("RGB", (10, 10), "white")), "no alpha channel"),
    ],
)
def test_unusable_delta_is_an_error(delta: bytes, match: str) -> None:
    with pytest.raises(DeltaPngError, match=match):
        decode_delta_png(delta, png(Image.new("RGB", (10, 10))))


def test_unreadable_original_is_an_error() -> None:
    with pytest.raises(DeltaPngError, match="original image is not a readable image"):
        decode_delta_png(png(Image.new("RGBA", (10, 10))), b"\x89PNG truncated")


def test_grayscale_delta_with_alpha_is_accepted() -> None:
    original = Image.new("RGB", (2, 1), (1, 2, 3))
    delta = Image.new("LA", (2, 1))
    delta.putdata([(255, 0), (0, 0)])
    decoded = decode_delta_png(png(delta), png(original))
    assert list(decoded.get_flattened_data()) == [(1, 2, 3, 255), (0, 0, 0, 0)]


def test_does_not_modify_the_callers_images() -> None:
    case = build_case((IMAGES / "chelsea.png").read_bytes())
    before = case.delta.tobytes()
    decode_delta_png(case.delta, case.upright)
    assert case.delta.tobytes() == before


def test_large_image_decodes_quickly() -> None:
    """12 megapixels: whole-image Pillow operations, no per-pixel Python (about 0.3 s here)."""
    photo = Image.open(IMAGES / "coffee.png").convert("RGB").resize((4000, 3000), Image.Resampling.NEAREST)
    mask = horse_mask((400, 300)).resize(photo.size, Image.Resampling.NEAREST)
    delta = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    delta.paste((255, 255, 255, 0), (0, 0), mask.point([0] * 255 + [255]))
    started = time.perf_counter()
    decoded = decode_delta_png(delta, photo)
    assert time.perf_counter() - started < 5.0
    assert decoded.size == photo.size


@pytest.mark.parametrize("name", ["rocket.jpg", "chelsea.png"])
def test_the_decoded_result_keeps_the_originals_icc_profile(name: str) -> None:
    """The copied pixels are the original's values: without its profile they would be read as sRGB."""
    original = (IMAGES / name).read_bytes()
    profile = Image.open(io.BytesIO(original)).info["icc_profile"]
    case = build_case(original)  # a delta PNG without a profile of its own
    decoded = decode_delta_png(case.delta_png, original)
    assert decoded.info["icc_profile"] == profile
    reread = Image.open(io.BytesIO(png(decoded)))
    assert reread.info["icc_profile"] == profile  # and it is embedded when the result is encoded
    tagged = io.BytesIO()
    case.delta.save(tagged, format="PNG", icc_profile=b"delta-profile")
    assert decode_delta_png(tagged.getvalue(), original).info["icc_profile"] == b"delta-profile"


def test_an_untagged_original_gives_an_untagged_result() -> None:
    case = build_case((IMAGES / "coffee.png").read_bytes())
    assert "icc_profile" not in decode_delta_png(case.delta_png, case.original).info


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"


def test_neither_image_is_handed_to_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: any format Pillow reads was decoded, an EPS by running Ghostscript on it.
    runs: list[object] = []

    def ghostscript(*args: object, **kwargs: object) -> object:
        runs.append(args)
        raise OSError("Ghostscript was run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    with pytest.raises(DeltaPngError, match="delta PNG is not a readable image"):
        decode_delta_png(EPS, png(Image.new("RGB", (10, 10))))
    with pytest.raises(DeltaPngError, match="original image is not a readable image"):
        decode_delta_png(png(Image.new("RGBA", (10, 10))), EPS)
    assert runs == []


def test_a_delta_of_another_size_is_refused_before_it_is_decoded() -> None:
    # A delta declaring 8000x8000 with its pixel data cut short: its size is the error, read from its
    # header (before: the whole delta was decoded first, here "not a readable image (OSError)").
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", 8000, 8000, 8, 6, 0, 0, 0)  # 8-bit RGBA
    cut_short = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(64)))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(DeltaPngError, match=r"the delta PNG is 8000x8000 but the original is 10x20"):
        decode_delta_png(cut_short, png(Image.new("RGB", (10, 20))))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = io.BytesIO()
    Image.new("RGB", (20, 10)).save(stored, format="JPEG", exif=exif.tobytes())
    with pytest.raises(DeltaPngError, match=r"the original is 10x20 \(orientation 6\)"):
        decode_delta_png(png(Image.new("RGBA", (20, 10))), stored.getvalue())


def test_a_16_bit_grey_original_is_copied_scaled_not_white() -> None:
    original = png(Image.new("I;16", (2, 1), 100 * 256))
    delta = Image.new("RGBA", (2, 1))
    delta.putdata([(255, 255, 255, 0), (0, 0, 0, 0)])
    decoded = decode_delta_png(png(delta), original)
    assert list(decoded.get_flattened_data()) == [(100, 100, 100, 255), (0, 0, 0, 0)]


def test_an_originals_profile_of_another_colour_space_is_not_put_on_the_rgba_result() -> None:
    grey_profile = bytes(16) + b"GRAY" + b"XYZ " + bytes(104)
    original = io.BytesIO()
    Image.new("L", (4, 4), 90).save(original, format="PNG", icc_profile=grey_profile)
    decoded = decode_delta_png(png(Image.new("RGBA", (4, 4), (255, 255, 255, 0))), original.getvalue())
    assert decoded.getpixel((0, 0)) == (90, 90, 90, 255)
    assert "icc_profile" not in decoded.info
