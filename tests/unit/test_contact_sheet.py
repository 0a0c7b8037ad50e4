"""The contact sheet: its exact geometry, transparency on a checkerboard, damaged images survived."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from airflow_provider_bgremoval.contact_sheet import (
    checkerboard,
    contact_sheet_size,
    render_contact_sheet,
    rendition_images,
)


def png(size: tuple[int, int], colour: tuple[int, int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, colour).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(("pairs", "size"), [(1, (344, 212)), (3, (1016, 212)), (4, (1016, 396))])
def test_size(pairs: int, size: tuple[int, int]) -> None:
    assert contact_sheet_size(pairs) == size


def test_size_needs_a_pair() -> None:
    with pytest.raises(ValueError, match="at least one pair"):
        contact_sheet_size(0)


def test_render_matches_the_size_and_shows_transparency() -> None:
    before = png((300, 200), (200, 30, 40, 255))
    after = png((300, 200), (0, 0, 0, 0))  # fully transparent: the checkerboard shows through
    pairs = [(f"{'very-long-name-' * 5}{i}.jpg", before, after) for i in range(4)]
    data = render_contact_sheet(pairs, title="dag · run · done 4", thumb=80, columns=2, colors=None)
    with Image.open(io.BytesIO(data)) as sheet:
        assert sheet.size == contact_sheet_size(4, thumb=80, columns=2)
        rgb = sheet.convert("RGB")
        # the first result tile (x from 8 + 80 + 8) is the checkerboard: white and grey squares
        assert {rgb.getpixel((96 + 1, 28 + 1)), rgb.getpixel((96 + 9, 28 + 1))} == {
            (255, 255, 255),
            (204, 204, 204),
        }


def test_a_damaged_image_does_not_break_the_sheet() -> None:
    data = render_contact_sheet([("broken.jpg", b"not an image", b"")], colors=16)
    with Image.open(io.BytesIO(data)) as sheet:
        assert sheet.size == contact_sheet_size(1)
        assert sheet.mode == "P"  # reduced to a palette


def test_checkerboard() -> None:
    board = checkerboard((16, 16), square=8)
    assert board.getpixel((0, 0)) == board.getpixel((8, 8)) == (204, 204, 204)
    assert board.getpixel((8, 0)) == board.getpixel((0, 8)) == (255, 255, 255)


def test_renditions_follow_their_master_with_their_names() -> None:
    before = png((300, 200), (200, 30, 40, 255))
    master = png((300, 200), (0, 0, 0, 0))
    white = png((100, 100), (255, 255, 255, 255))
    pairs = [
        ("a.jpg", before, master, [("amazon", white), ("thumb", white)]),
        ("b.jpg", before, master, [("amazon", white)]),
        ("c.jpg", before, master),
    ]
    data = render_contact_sheet(pairs, thumb=80, columns=2, colors=None)
    with Image.open(io.BytesIO(data)) as sheet:
        assert sheet.size == contact_sheet_size(3, thumb=80, columns=2, renditions=2)
        assert sheet.size == (8 + 2 * 4 * 88, 28 + 2 * (80 + 16 + 8))
        rgb = sheet.convert("RGB")
        # a's first rendition square (x from 8 + 2 * 88) is opaque white, not the checkerboard
        assert {rgb.getpixel((184 + dx, 28 + 40)) for dx in (1, 9, 40)} == {(255, 255, 255)}
        # b has one rendition: its second rendition square is the sheet's background
        assert rgb.getpixel((8 + 4 * 88 + 3 * 88 + 40, 28 + 40)) == (250, 250, 250)


def test_rendition_images_reads_the_stored_renditions_of_a_row() -> None:
    row = {
        "renditions": [
            {"name": "amazon", "status": "rejected", "object": "gs://b/p/amazon/a.jpg"},
            {"name": "thumb", "status": "skipped", "object": "gs://b/p/thumb/a.webp"},
            {"name": "web", "status": "done", "object": "gs://b/p/web/a.webp"},
        ]
    }
    reads: list[tuple[str, str]] = []

    def read(bucket: str, name: str) -> bytes:
        reads.append((bucket, name))
        return name.encode()

    assert rendition_images(row, read) == [("thumb", b"p/thumb/a.webp"), ("web", b"p/web/a.webp")]
    assert reads == [("b", "p/thumb/a.webp"), ("b", "p/web/a.webp")]
    assert rendition_images({"renditions": None}, read) == []


def _tile_of(data: bytes, thumb: int = 80) -> Image.Image:
    """The source tile a sample's bytes are drawn as (the first square of a one-pair sheet)."""
    sheet = render_contact_sheet([("x", data, b"")], thumb=thumb, colors=None)
    with Image.open(io.BytesIO(sheet)) as opened:
        return opened.convert("RGB").crop((8, 28, 8 + thumb, 28 + thumb))


def _encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def test_a_16_bit_grey_sample_is_drawn_in_its_grey_not_white() -> None:
    data = _encoded(Image.new("I;16", (60, 40), 40000), "PNG")  # 61 % grey
    assert _tile_of(data).getpixel((40, 40)) == (156, 156, 156)  # was (255, 255, 255): clipped


def test_a_large_photo_is_reduced_before_it_is_turned_upright(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageOps

    photo = Image.new("RGB", (4000, 2000), (20, 160, 60))
    exif = photo.getexif()
    exif[0x0112] = 6  # shot sideways: turned 90 degrees to be upright
    data = _encoded(photo, "JPEG", exif=exif.tobytes())
    turned: list[tuple[int, int]] = []
    transpose = ImageOps.exif_transpose

    def spy(image: Image.Image, **kwargs: object) -> Image.Image | None:
        turned.append(image.size)
        return transpose(image, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(ImageOps, "exif_transpose", spy)
    tile = _tile_of(data)
    # a full-size decode and a full-size upright copy of it were made (8 MP here: 48 MB for a thumbnail)
    assert turned == [(80, 40)]
    assert tile.getpixel((40, 5)) == tile.getpixel((40, 75)) != (255, 255, 255)  # upright: tall
    assert tile.getpixel((5, 40)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_a_sample_with_a_broken_exif_block_is_drawn_as_stored_not_unreadable(fmt: str) -> None:
    # the pipeline reads such a photo as upright and sends it; its tile said "unreadable"
    data = _encoded(Image.new("RGB", (60, 40), (20, 160, 60)), fmt, exif=b"garbage-exif-bytes")
    tile = _tile_of(data)
    assert tile.getpixel((40, 40)) == pytest.approx((20, 160, 60), abs=3)
    assert tile.getpixel((40, 15)) == (255, 255, 255)  # wide, as stored: the white above it
