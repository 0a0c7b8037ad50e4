"""Helpers shared by the sandbox tests."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"
SPECS = Path(__file__).resolve().parent / "specs"


def png_bytes(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    """Encode an image."""
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def product_shot(
    size: tuple[int, int] = (320, 240), background: tuple[int, int, int] = (245, 245, 245)
) -> Image.Image:
    """A red disc and a blue bar on a plain backdrop: the typical studio product shot."""
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.ellipse([w * 0.3, h * 0.25, w * 0.7, h * 0.8], fill=(200, 30, 40))
    draw.rectangle([w * 0.45, h * 0.1, w * 0.55, h * 0.3], fill=(30, 60, 200))
    return img


def decode(data: bytes) -> Image.Image:
    """Decode response bytes into a loaded image."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
