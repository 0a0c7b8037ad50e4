"""Hypothesis strategies for hostile vendor replies: status × headers × body.

Used by the hook fuzz (``tests/unit/hooks/test_reply_fuzz.py``) and meant for any later fuzz that
drives replies through other layers (the batch engine): everything here is plain data (a
:class:`Reply` turns into an :class:`httpx.Response`) and knows nothing about the hooks.

Bodies cover what a misbehaving vendor or proxy can send on a success status: valid images in
every mode Pillow reads from PNG/JPEG/WebP (16-bit, CMYK, palette, bilevel, LA…), animations (APNG,
animated WebP, GIF, MPO), image types no vendor returns (GIF, BMP, TIFF, ICO), odd or broken EXIF,
headers declaring huge dimensions over a few bytes of data (decompression bombs, including a
20000×20000 PNG), truncated and bit-flipped images, JSON where an image is expected (and images
where JSON is expected, since any body can come with any content type), HTML, text, garbage, and
nothing at all. Headers lie: content types, ``Content-Length``, ``Content-Encoding``, and the
vendors' own metadata headers (credits, sizes, orientation, request ids, ``Retry-After``) with values
of the wrong type or out of range.

All images are tiny (at most 96 px per side) so a few thousand examples run in seconds; the huge
ones only *declare* their size.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from hypothesis import strategies as st
from PIL import Image, ImageDraw

__all__ = [
    "DOWNLOAD_URL",
    "INPUT_SIZE",
    "Reply",
    "ReplyScript",
    "bodies",
    "damaged_image_bodies",
    "declared_huge_bodies",
    "header_sets",
    "image_bodies",
    "jpeg_declaring",
    "json_bodies",
    "png_bytes",
    "png_declaring",
    "replies",
    "reply_scripts",
    "statuses",
    "text_bodies",
]

#: Size of the input image the fuzz sends; some result bodies are drawn at this size so that
#: size-sensitive paths (Pixian's delta PNG) succeed as well as fail.
INPUT_SIZE = (80, 64)
#: The result URL a JSON ``result_url`` body points at (served by the download script).
DOWNLOAD_URL = "https://assets.example.test/public/result/fuzz.png"

_SIZES = ((1, 1), (2, 3), (17, 9), (32, 32), (64, 48), INPUT_SIZE, (96, 80))


@dataclass(frozen=True)
class Reply:
    """
    One vendor reply as data.

    :param status: HTTP status.
    :param headers: header pairs, in order (duplicates allowed).
    :param body: the body bytes.
    :param label: what the body is, for failure reports (``png/RGBA 32x32``, ``truncated …``).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    label: str

    def to_response(self) -> httpx.Response:
        """
        The reply as an :class:`httpx.Response`, as the client would receive it from a socket:
        headers sent as given (UTF-8 bytes, even when they lie), the body as an unread stream (so a
        lying ``Content-Encoding`` fails while the client reads it, not here).
        """
        headers = [(name.encode("ascii"), value.encode("utf-8")) for name, value in self.headers]
        return httpx.Response(self.status, headers=headers, stream=httpx.ByteStream(self.body))

    def __repr__(self) -> str:
        return f"Reply({self.status}, {list(self.headers)!r}, {self.label}, {len(self.body)} bytes)"


@dataclass
class ReplyScript:
    """
    Replies served in order to one endpoint; the last one repeats (retries see it again).

    :param replies: the replies.
    """

    replies: Sequence[Reply]
    served: int = 0

    def next(self) -> httpx.Response:
        """The next reply as a response."""
        reply = self.replies[min(self.served, len(self.replies) - 1)]
        self.served += 1
        return reply.to_response()


# -- body builders (plain functions, also handy in example-based tests) ----------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    color_type: int = 2,
    rows: bytes | None = None,
    extra_chunks: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """
    A PNG written by hand (for what Pillow cannot write: 16-bit colour, lying headers).

    :param width: declared width.
    :param height: declared height.
    :param bit_depth: bits per sample (8 or 16).
    :param color_type: PNG colour type (0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA).
    :param rows: raw scanlines (filter byte included); ``None`` for zeros of the declared size.
    :param extra_chunks: chunks inserted before ``IDAT`` (``eXIf``, ``tEXt``…).
    """
    if rows is None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
        rows = (b"\x00" + b"\x00" * (width * channels * bit_depth // 8)) * height
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", ihdr)]
    chunks += [_png_chunk(kind, payload) for kind, payload in extra_chunks]
    chunks += [_png_chunk(b"IDAT", zlib.compress(rows)), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header declaring ``width`` × ``height`` RGB pixels over 64 zero bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare ``width`` × ``height``."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), "teal"), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, min(height, 0xFFFF), min(width, 0xFFFF))
    return bytes(data)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _subject(mode: str, size: tuple[int, int]) -> Image.Image:
    """A cut-out-like picture: transparent or dark background, a light ellipse as the subject."""
    rgba = Image.new("RGBA", size, (0, 0, 0, 0))
    width, height = size
    ImageDraw.Draw(rgba).ellipse(
        (width * 0.2, height * 0.2, max(width * 0.8, 1), max(height * 0.8, 1)), fill=(230, 120, 40, 255)
    )
    if mode == "RGBA":
        return rgba
    if mode == "P":
        return rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    if mode == "I;16":
        return rgba.convert("L").convert("I").point(lambda v: v * 256).convert("I;16")
    return rgba.convert(mode)


def _image_body(fmt: str, mode: str, size: tuple[int, int], variant: str) -> tuple[str, bytes]:
    image = _subject(mode, size)
    label = f"{fmt.lower()}/{mode} {size[0]}x{size[1]} {variant}".strip()
    params: dict[str, object] = {}
    if variant == "transparency" and mode in ("L", "RGB", "P"):
        params["transparency"] = 0 if mode != "RGB" else (0, 0, 0)
    elif variant == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        params["exif"] = exif.tobytes()
    elif variant == "exif-garbage":
        params["exif"] = b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 8
    elif variant == "exif-bad-orientation":
        exif = Image.Exif()
        exif[0x0112] = 77
        params["exif"] = exif.tobytes()
    elif variant == "icc-garbage":
        params["icc_profile"] = b"not an ICC profile"
    if fmt == "WEBP":
        params.setdefault("lossless", True)
    return label, _encode(image, fmt, **params)


#: (format, modes Pillow writes in that format)
_WRITABLE = {
    "PNG": ("RGBA", "RGB", "L", "LA", "P", "1", "I;16"),
    "JPEG": ("RGB", "L", "CMYK"),
    "WEBP": ("RGBA", "RGB"),
}
_VARIANTS = ("", "", "transparency", "exif-rotated", "exif-garbage", "exif-bad-orientation", "icc-garbage")


@st.composite
def _plain_images(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(sorted(_WRITABLE)))
    mode = draw(st.sampled_from(_WRITABLE[fmt]))
    size = draw(st.sampled_from(_SIZES))
    variant = draw(st.sampled_from(_VARIANTS))
    if fmt != "PNG" and variant == "transparency":
        variant = ""
    return _image_body(fmt, mode, size, variant)


@st.composite
def _sixteen_bit_pngs(draw: st.DrawFn) -> tuple[str, bytes]:
    width, height = draw(st.sampled_from(_SIZES))
    color_type = draw(st.sampled_from((0, 2, 4, 6)))
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    sample = draw(st.binary(min_size=2, max_size=2))
    rows = (b"\x00" + sample * (width * channels)) * height
    return f"png/16-bit type {color_type} {width}x{height}", png_bytes(
        width, height, bit_depth=16, color_type=color_type, rows=rows
    )


@st.composite
def _animations(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(("PNG", "WEBP", "GIF", "MPO")))
    size = draw(st.sampled_from(_SIZES[2:]))
    count = draw(st.integers(min_value=2, max_value=4))
    frames = [_subject("RGBA", size).rotate(30 * i) for i in range(count)]
    if fmt in ("GIF", "MPO"):
        frames = [frame.convert("RGB") for frame in frames]
    params: dict[str, object] = {"save_all": True, "append_images": frames[1:]}
    if fmt != "MPO":
        params["duration"] = 80
    if fmt == "WEBP":
        params["lossless"] = True
    return f"{fmt.lower()} animated x{count} {size[0]}x{size[1]}", _encode(frames[0], fmt, **params)


@st.composite
def _other_types(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(("GIF", "BMP", "TIFF", "ICO", "PPM", "TGA")))
    size = draw(st.sampled_from(_SIZES[2:]))
    mode = "RGBA" if fmt in ("TIFF", "ICO", "TGA") else "RGB"
    return f"{fmt.lower()} (not a vendor type) {size[0]}x{size[1]}", _encode(_subject(mode, size), fmt)


def image_bodies() -> st.SearchStrategy[tuple[str, bytes]]:
    """``(label, bytes)`` of complete images: every mode, animations, EXIF oddities, other types."""
    return st.one_of(
        _plain_images(),
        _plain_images(),
        _sixteen_bit_pngs(),
        _animations(),
        _other_types(),
    )


@st.composite
def damaged_image_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """An image cut short, bit-flipped, or with garbage appended (the header usually intact)."""
    label, data = draw(image_bodies())
    how = draw(st.sampled_from(("truncated", "flipped", "appended")))
    if how == "truncated":
        cut = draw(st.integers(min_value=1, max_value=max(1, len(data) - 1)))
        return f"truncated at {cut}/{len(data)}: {label}", data[:cut]
    if how == "flipped":
        damaged = bytearray(data)
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            position = draw(st.integers(min_value=0, max_value=len(data) - 1))
            damaged[position] ^= draw(st.integers(min_value=1, max_value=255))
        return f"bit-flipped: {label}", bytes(damaged)
    tail = draw(st.binary(min_size=1, max_size=64))
    return f"garbage appended: {label}", data + tail


@st.composite
def declared_huge_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A few bytes whose header declares a huge size (decompression bombs and lying headers)."""
    # Over every vendor's limits, or at most 2048 px (so sizes a limit accepts allocate little).
    side = st.one_of(
        st.sampled_from((6001, 12_001, 20_000, 65_535, 100_000, 2**31 - 1)),
        st.integers(min_value=1, max_value=2048),
    )
    width, height = draw(side), draw(side)
    kind = draw(st.sampled_from(("png", "png", "jpeg")))
    if kind == "jpeg":
        width, height = min(width, 0xFFFF), min(height, 0xFFFF)
        return f"jpeg declaring {width}x{height}", jpeg_declaring(width, height)
    return f"png declaring {width}x{height}", png_declaring(width, height)


def json_bodies() -> st.SearchStrategy[tuple[str, bytes]]:
    """JSON where an image is expected: ``result_url`` forms, error envelopes, odd values."""
    urls = st.one_of(
        st.just(DOWNLOAD_URL),
        st.sampled_from(
            (
                "file:///etc/passwd",
                "ftp://assets.example.test/x.png",
                "http://",
                "https://assets.example.test:99999/x.png",
                "https://[::1/x.png",
                "//assets.example.test/x.png",
                "",
            )
        ),
        st.integers(),
        st.none(),
        st.lists(st.just(DOWNLOAD_URL), max_size=2),
    )
    values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=6,
    )
    objects = st.one_of(
        st.builds(lambda url: {"result_url": url}, urls),
        st.builds(
            lambda url, extra: {"result_url": url, **extra},
            urls,
            st.dictionaries(st.text(max_size=8), values, max_size=3),
        ),
        st.just({"error": "Unexpected error", "error_code": "internal"}),
        st.just({"error": {"status": 400, "code": 1006, "message": "Failed to read the supplied image"}}),
        st.just({"code": "invalid_image", "message": "nope", "details": {"image_file": ["bad"]}}),
        st.just({"credits_remaining": "12"}),
        values,
    )
    return st.builds(lambda obj: ("json", json.dumps(obj).encode()), objects)


def text_bodies() -> st.SearchStrategy[tuple[str, bytes]]:
    """HTML, plain text, random bytes and the empty body."""
    return st.one_of(
        st.just(("empty", b"")),
        st.just(("html", b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>")),
        st.just(("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')),
        st.builds(lambda text: ("text", text.encode("utf-8")), st.text(max_size=200)),
        st.builds(lambda data: ("garbage", data), st.binary(max_size=300)),
        st.builds(lambda data: ("png magic + garbage", b"\x89PNG\r\n\x1a\n" + data), st.binary(max_size=64)),
        st.builds(lambda data: ("jpeg magic + garbage", b"\xff\xd8\xff" + data), st.binary(max_size=64)),
        st.builds(
            lambda data: ("riff/webp magic + garbage", b"RIFF\x10\x00\x00\x00WEBPVP8 " + data),
            st.binary(max_size=64),
        ),
    )


def bodies() -> st.SearchStrategy[tuple[str, bytes]]:
    """``(label, bytes)`` of any body a success reply might carry."""
    return st.one_of(
        image_bodies(),
        image_bodies(),
        damaged_image_bodies(),
        declared_huge_bodies(),
        json_bodies(),
        text_bodies(),
    )


_NUMBERS = st.one_of(
    st.sampled_from(
        ("1", "0", "0.5", "-3", "1e400", "NaN", "Infinity", "-0", " 2 ", "", "abc", "1,5", "0x10", "١")
    ),
    st.integers(min_value=-(2**63), max_value=2**63).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_CONTENT_TYPES = st.sampled_from(
    (
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/gif",
        "IMAGE/PNG",
        "image/png; charset=utf-8",
        "application/json",
        "application/json; charset=utf-8",
        "application/problem+json",
        "text/html",
        "text/plain",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
        "",
        "image/",
        ";;;",
    )
)
#: vendor metadata headers (Pixian, Poof Gen A/B, remove.bg-compatible) with wrong-typed values
_METADATA_HEADERS = {
    "X-Credits-Charged": _NUMBERS,
    "X-Credits-Calculated": _NUMBERS,
    "X-Input-Orientation": _NUMBERS,
    "X-Input-Size": st.one_of(st.builds(lambda a, b: f"{a} {b}", _NUMBERS, _NUMBERS), _HEADER_TEXT),
    "X-Result-Size": st.one_of(
        st.builds(lambda a, b: f"{a} {b}", _NUMBERS, _NUMBERS),
        st.just(f"{INPUT_SIZE[0]} {INPUT_SIZE[1]}"),
        _HEADER_TEXT,
    ),
    "X-Input-Foreground": st.builds(
        lambda a, b, c, d: f"{a} {b} {c} {d}", _NUMBERS, _NUMBERS, _NUMBERS, _NUMBERS
    ),
    "X-Result-Foreground": _HEADER_TEXT,
    "X-Request-ID": _HEADER_TEXT,
    "X-Processing-Time-Ms": _NUMBERS,
    "X-Image-Width": _NUMBERS,
    "X-Image-Height": _NUMBERS,
    "X-Width": _NUMBERS,
    "X-Height": _NUMBERS,
    "X-Matte-Confidence": _NUMBERS,
    "X-Matte-Ambiguous-Ratio": _NUMBERS,
    "Retry-After": st.one_of(_NUMBERS, st.just("Wed, 21 Oct 2015 07:28:00 GMT"), _HEADER_TEXT),
    "Location": st.sampled_from((DOWNLOAD_URL, "file:///x", "", "/relative", "http://[bad")),
}


@st.composite
def header_sets(draw: st.DrawFn, body: bytes = b"") -> tuple[tuple[str, str], ...]:
    """
    Headers for a reply carrying ``body``: maybe a content type (true or not), maybe a lying
    ``Content-Length`` or ``Content-Encoding``, and some vendor metadata headers.

    :param body: the body the headers go with (a lying ``Content-Length`` is computed from it).
    """
    headers: list[tuple[str, str]] = []
    if draw(st.integers(min_value=0, max_value=9)) > 0:
        headers.append(("Content-Type", draw(_CONTENT_TYPES)))
    lie = draw(st.sampled_from(("none", "none", "none", "length", "encoding")))
    if lie == "length":
        wrong = draw(st.sampled_from((0, 1, max(0, len(body) - 1), len(body) + 1, 10**12)))
        headers.append(("Content-Length", draw(st.sampled_from((str(wrong), "abc", "-1", "")))))
    elif lie == "encoding":
        headers.append(
            ("Content-Encoding", draw(st.sampled_from(("gzip", "br", "deflate", "zstd", "bogus"))))
        )
    names = draw(st.lists(st.sampled_from(sorted(_METADATA_HEADERS)), max_size=5, unique=True))
    for name in names:
        headers.append((name, draw(_METADATA_HEADERS[name])))
    return tuple(headers)


def statuses() -> st.SearchStrategy[int]:
    """Mostly success statuses (where the body matters), and the rest of the range."""
    return st.one_of(
        st.just(200),
        st.just(200),
        st.just(200),
        st.sampled_from((201, 202, 203, 204, 206, 299)),
        st.sampled_from((301, 302, 304, 307)),
        st.sampled_from((400, 401, 402, 403, 404, 408, 409, 413, 415, 422, 429)),
        st.sampled_from((500, 502, 503, 504, 599)),
    )


@st.composite
def replies(
    draw: st.DrawFn,
    body: st.SearchStrategy[tuple[str, bytes]] | None = None,
    status: st.SearchStrategy[int] | None = None,
) -> Reply:
    """
    One reply: status × headers × body.

    :param body: body strategy (default :func:`bodies`).
    :param status: status strategy (default :func:`statuses`).
    """
    label, data = draw(body if body is not None else bodies())
    code = draw(status if status is not None else statuses())
    return Reply(code, draw(header_sets(data)), data, label)


def reply_scripts(
    reply: Callable[[], st.SearchStrategy[Reply]] = replies, max_replies: int = 3
) -> st.SearchStrategy[list[Reply]]:
    """
    1 to ``max_replies`` replies in order (retries see the next one; the last one repeats).

    :param reply: factory of the reply strategy.
    :param max_replies: longest script.
    """
    return st.lists(reply(), min_size=1, max_size=max_replies)
