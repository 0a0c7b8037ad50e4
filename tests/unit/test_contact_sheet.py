"""The contact sheet: its exact geometry, transparency on a checkerboard, damaged images survived."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from airflow_provider_bgremoval.contact_sheet import checkerboard, contact_sheet_size, render_contact_sheet


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
