"""Generated test images for the rendition tests and benchmark: subjects with soft edges, ICC profiles."""

from __future__ import annotations

import io
import struct

from PIL import Image, ImageDraw

Rgb = tuple[int, int, int]

#: sRGB's primaries adapted to D50 (the ICC connection space), and D50 itself.
SRGB_RED = (0.4361, 0.2225, 0.0139)
SRGB_GREEN = (0.3851, 0.7169, 0.0971)
SRGB_BLUE = (0.1431, 0.0606, 0.7141)
D50 = (0.9642, 1.0, 0.8249)


def soft_subject(
    size: tuple[int, int] = (600, 400),
    box: tuple[int, int, int, int] = (150, 100, 450, 300),
    colour: Rgb = (255, 0, 0),
    hidden: Rgb = (0, 0, 0),
    edge: int = 3,
) -> Image.Image:
    """
    A cut-out: an opaque ``colour`` rectangle whose outer ``edge`` pixels are half transparent (the
    colour, alpha 128), on fully transparent pixels that hide ``hidden`` (the garbage that causes
    halos when a resize mixes it in).

    :param size: the master's size.
    :param box: the subject's box, edge included.
    :param colour: the subject's colour.
    :param hidden: the colour under the transparent pixels.
    :param edge: width of the half-transparent edge.
    """
    image = Image.new("RGBA", size, (*hidden, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(*colour, 128))
    draw.rectangle((box[0] + edge, box[1] + edge, box[2] - 1 - edge, box[3] - 1 - edge), fill=(*colour, 255))
    return image


def product_photo(size: tuple[int, int] = (3000, 2000), *, texture: bool = False) -> Image.Image:
    """
    A cut-out like a vendor's: a shaded ellipse with an anti-aliased edge on transparency.

    :param size: the master's size.
    :param texture: add sensor-like noise (a photo's PNG size and decoding cost, not a gradient's).
    """
    width, height = size
    scale = 4
    mask = Image.new("L", (width * scale // 8, height * scale // 8), 0)
    ImageDraw.Draw(mask).ellipse(
        (mask.width * 0.25, mask.height * 0.15, mask.width * 0.75, mask.height * 0.85), fill=255
    )
    alpha = mask.resize(size, Image.Resampling.BICUBIC)
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.merge(
        "RGB", (gradient, Image.new("L", size, 90), gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    if texture:
        noise = Image.effect_noise(size, 24)
        image = Image.blend(
            image,
            Image.merge("RGB", (noise, noise.rotate(180), noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT))),
            0.2,
        )
    image.putalpha(alpha)
    return image


def png_bytes(image: Image.Image, **params: object) -> bytes:
    """``image`` as PNG bytes."""
    out = io.BytesIO()
    image.save(out, format="PNG", **params)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    """Decode an image fully."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(values: tuple[float, float, float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(value) for value in values)


def _curve(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def _description(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(ascii_text))
        + ascii_text
        + struct.pack(">II", 0, 0)
        + struct.pack(">HB", 0, 0)
        + b"\0" * 67
    )


def rgb_profile(
    description: str = "Swapped red-green test RGB",
    red: tuple[float, float, float] = SRGB_GREEN,
    green: tuple[float, float, float] = SRGB_RED,
    blue: tuple[float, float, float] = SRGB_BLUE,
    gamma: float = 2.2,
) -> bytes:
    """
    An ICC v2 matrix/TRC RGB display profile (by default: sRGB's red and green primaries swapped,
    so a pixel's red and green trade places when it is converted to sRGB).

    :param description: the profile's description.
    :param red: the red colorant, D50 XYZ.
    :param green: the green colorant.
    :param blue: the blue colorant.
    :param gamma: one gamma curve for the three channels.
    """
    tags = [
        (b"desc", _description(description)),
        (b"cprt", b"text\0\0\0\0public domain test profile\0"),
        (b"wtpt", _xyz(D50)),
        (b"rXYZ", _xyz(red)),
        (b"gXYZ", _xyz(green)),
        (b"bXYZ", _xyz(blue)),
        (b"rTRC", _curve(gamma)),
        (b"gTRC", _curve(gamma)),
        (b"bTRC", _curve(gamma)),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        padded = data + b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += padded
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2026, 12, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + b"".join(_s15(value) for value in D50)
        + b"\0" * 48
    )
    assert len(header) == 128, len(header)
    return header + struct.pack(">I", len(tags)) + table + body
