"""The local renderer: every rendition of one image from one decoded master (docs/renditions.md).

Pure CPU, no I/O, no shared mutable state: safe to call from worker threads. The master is prepared
once (:func:`prepare_master`); each rendition is composed, encoded and checked (:mod:`.compliance`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from airflow.sdk.exceptions import AirflowException
from PIL import ExifTags, Image, ImageCms, ImageOps

from airflow_provider_bgremoval.exceptions import ResultProcessingError, safe_excerpt
from airflow_provider_bgremoval.imaging import bomb_warnings_ignored, normalise_mode
from airflow_provider_bgremoval.renditions.compliance import (
    Measured,
    Verdict,
    background_tolerance,
    judge,
    measure,
)
from airflow_provider_bgremoval.renditions.spec import (
    MAX_PIXELS,
    Rendition,
    RenditionSpec,
    margin_shares,
    resolve_rendition,
)

#: The sRGB profile embedded in every rendition (``embed_srgb``), from littleCMS. Conversions open
#: their own copy of it: no littleCMS object is shared between threads.
SRGB_ICC: bytes = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
#: Formats a master may come in (the vendor's lossless cut-out, or an older output being adopted).
MASTER_FORMATS = ("PNG", "WEBP", "JPEG", "TIFF")
_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
#: The mode a profile conversion reads (alpha set aside); other modes are normalised first.
_PROFILE_BASE_MODES = {"RGB": "RGB", "RGBA": "RGB", "RGBX": "RGB", "L": "L", "LA": "L", "CMYK": "CMYK"}
#: The colour space (an ICC header's bytes 16-20) a profile of each base mode's pixels has.
_PROFILE_SPACES = {"RGB": b"RGB ", "L": b"GRAY", "CMYK": b"CMYK"}
_EPSILON = 1e-6
#: The largest block a lossy encoder spreads an edge within: JPEG's 4:2:0 chroma, WebP's macroblock.
_LOSSY_BLOCK = 16
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Master:
    """
    A master ready for rendering: upright, sRGB, and premultiplied once for every rendition (only that
    copy is kept: 4 bytes per pixel).

    :param premultiplied: the master in Pillow's premultiplied mode ``RGBa`` (what is resized).
    :param subject: the bounding box of its pixels with alpha above 0 (``None``: fully transparent).
    :param exif: the master's EXIF, orientation removed (written only with ``metadata="keep"``).
    :param source_profile: description of the ICC profile it was converted from (``None``: untagged).
    """

    premultiplied: Image.Image
    subject: Box | None
    exif: bytes | None
    source_profile: str | None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return self.premultiplied.size


def _unreadable(problem: str, exc: Exception) -> ResultProcessingError:
    detail = safe_excerpt(str(exc), 120) or type(exc).__name__
    return ResultProcessingError(f"the master {problem} ({detail})", code="master_unreadable")


def rendering_error(what: str, exc: Exception) -> ResultProcessingError:
    """
    The ``rendition_failed`` error of ``what`` (``"rendering"``, ``"rendition 'web'"``) failing with ``exc``.

    :param what: what failed, as the message names it.
    :param exc: the exception raised.
    """
    detail = safe_excerpt(str(exc), 120) or "no details"
    return ResultProcessingError(f"{what} failed ({type(exc).__name__}: {detail})", code="rendition_failed")


def _decode(data: bytes) -> Image.Image:
    try:
        with bomb_warnings_ignored():
            image = Image.open(io.BytesIO(data), formats=MASTER_FORMATS)
            image.load()
    except Exception as exc:  # Pillow's decoders raise many types on damaged data
        raise _unreadable("is not a readable image", exc) from None
    return image


def to_srgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """
    ``image`` converted to sRGB with its embedded ICC profile (relative colorimetric, black-point
    compensation), alpha kept; an untagged image, or an RGB one tagged with an sRGB profile (its
    description starts with "sRGB"), is kept as it is, and a profile of another colour space than the
    pixels' (an RGB profile on a grey PNG) is ignored, as imaging and browsers ignore it. Returns the image
    and the profile's description (``None``: read as untagged).

    :param image: a decoded image.
    """
    icc = image.info.get("icc_profile")
    if not icc:
        return image, None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(source).strip() or "unnamed profile"
        if image.mode in ("RGB", "RGBA") and description.lower().startswith("srgb"):
            return image, description
        if image.mode not in _PROFILE_BASE_MODES:
            image = normalise_mode(image)
        base_mode = _PROFILE_BASE_MODES.get(image.mode, "RGB")
        if icc[16:20] != _PROFILE_SPACES[base_mode]:
            return image, None
        alpha = image.getchannel("A") if "A" in image.mode else None
        converted = ImageCms.profileToProfile(
            image.convert(base_mode) if image.mode != base_mode else image,
            source,
            ImageCms.ImageCmsProfile(io.BytesIO(SRGB_ICC)),
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            outputMode="RGB",
            flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
        )
    except (OSError, ValueError, ImageCms.PyCMSError) as exc:
        message = f"the master's ICC profile cannot convert its {image.mode} pixels to sRGB ({exc})"
        raise ResultProcessingError(message, code="master_colour") from None
    assert converted is not None  # not in place
    if alpha is not None:
        converted.putalpha(alpha)
    return converted, description


def _kept_exif(image: Image.Image) -> bytes | None:
    exif = image.getexif()
    exif.pop(ExifTags.Base.Orientation, None)
    return exif.tobytes() if len(exif) else None


def _upright(image: Image.Image, *, owned: bool) -> tuple[Image.Image, bytes | None]:
    """
    ``image`` turned by its EXIF orientation (in place when ``owned``: no copy), and the EXIF to keep. A
    broken EXIF block is read as upright with no EXIF, as the pipeline reads its sources (imaging).
    """
    try:
        image.getexif()
    except Exception:  # a damaged eXIf chunk or EXIF segment: Pillow cannot parse it
        return image, None
    if owned:
        ImageOps.exif_transpose(image, in_place=True)
        upright = image
    else:
        upright = ImageOps.exif_transpose(image) or image
    return upright, _kept_exif(upright)


def prepare_master(master: Image.Image | bytes) -> Master:
    """
    Decode (once) and prepare a master for :func:`render_one`: EXIF orientation applied, converted to
    sRGB, RGBA (an image without alpha is fully opaque), premultiplied, its subject's box found.

    :param master: the master's bytes or a decoded image (not modified).
    """
    owned = isinstance(master, bytes)
    image = _decode(master) if isinstance(master, bytes) else master
    try:
        with bomb_warnings_ignored():
            # one name for every step's image, so that each is let go as the next is made: two full-size
            # copies at most (the decoded RGBA and the premultiplied one), not four (200 MB each at 50 MP)
            image, exif = _upright(image, owned=owned)
            image, profile = to_srgb(image)
            image = normalise_mode(image)
            image = image if image.mode == "RGBA" else image.convert("RGBA")
            premultiplied = image.convert("RGBa")
            del image
    except AirflowException:
        raise
    except Exception as exc:  # Pillow raises many types on unusual images
        raise _unreadable("cannot be prepared", exc) from None
    return Master(premultiplied, premultiplied.getchannel("a").getbbox(), exif, profile)


@dataclass(frozen=True)
class Layout:
    """
    Where the content goes on a rendition's canvas.

    :param canvas: ``(width, height)`` of the canvas.
    :param size: ``(width, height)`` of the scaled content.
    :param offset: the content's top-left corner on the canvas (negative when ``cover`` crops it).
    :param scale: the scale applied to the content.
    :param refused_upscale: the enlargement the spec asked for and ``upscale=False`` refused (1: none).
    """

    canvas: tuple[int, int]
    size: tuple[int, int]
    offset: tuple[int, int]
    scale: float
    refused_upscale: float = 1.0


def _margins(spec: RenditionSpec, canvas: tuple[int, int]) -> Box:
    """``(left, top, right, bottom)`` margins in pixels on ``canvas``."""
    if spec.margin is None:
        return 0, 0, 0, 0
    width, height = canvas
    margin = spec.margin
    return (
        margin.left.resolve(width),
        margin.top.resolve(height),
        margin.right.resolve(width),
        margin.bottom.resolve(height),
    )


def _wanted_scale(
    content: tuple[int, int], canvas: tuple[int, int], inner: tuple[int, int], spec: RenditionSpec
) -> float:
    width, height = content
    if spec.fill is not None:
        return min(spec.fill * canvas[0] / width, spec.fill * canvas[1] / height)
    if spec.fit == "contain":
        return min(inner[0] / width, inner[1] / height)
    if spec.fit == "cover":
        return max(inner[0] / width, inner[1] / height)
    return 1.0


def _refused(wanted: float, scale: float, spec: RenditionSpec) -> float:
    """The enlargement ``wanted`` that ``scale`` refused (``upscale=False``), 1 when none was."""
    return wanted / scale if wanted > scale + _EPSILON and not spec.upscale else 1.0


def place(content: tuple[int, int], canvas: tuple[int, int], spec: RenditionSpec, max_scale: float) -> Layout:
    """
    Scale and centre ``content`` on ``canvas`` by the spec's fill, fit and margin.

    :param content: ``(width, height)`` of the content (the master or its subject's box).
    :param canvas: ``(width, height)`` of the canvas.
    :param spec: the rendition spec.
    :param max_scale: the largest scale allowed.
    """
    left, top, right, bottom = _margins(spec, canvas)
    inner = (max(1, canvas[0] - left - right), max(1, canvas[1] - top - bottom))
    wanted = _wanted_scale(content, canvas, inner, spec)
    scale = min(wanted, max_scale)
    # with a fill, round up: the subject's box must reach the fill it was asked for
    rounding = math.ceil if spec.fill is not None else round
    size = tuple(max(1, int(rounding(side * scale - _EPSILON))) for side in content)
    if spec.fill is not None:
        left, top, inner = 0, 0, canvas
    offset = (left + (inner[0] - size[0]) // 2, top + (inner[1] - size[1]) // 2)
    return Layout(canvas, (size[0], size[1]), offset, scale, _refused(wanted, scale, spec))


def _to_aspect(width: float, height: float, ratio: float, *, grow: bool) -> tuple[float, float]:
    if (width / height < ratio) == grow:
        return height * ratio, height
    return width, width / ratio


def _natural_canvas(content: tuple[int, int], spec: RenditionSpec) -> tuple[float, float]:
    """The canvas at the content's own scale (before max/min size)."""
    width, height = content
    if spec.fill is not None:
        canvas = (width / spec.fill, height / spec.fill)
    else:
        left, top, right, bottom = _margins(spec, (0, 0))  # the pixel lengths alone
        share_x, share_y = (0.0, 0.0) if spec.margin is None else margin_shares(spec.margin)
        canvas = ((width + left + right) / (1 - share_x), (height + top + bottom) / (1 - share_y))
    if spec.aspect is not None:
        canvas = _to_aspect(*canvas, spec.aspect, grow=spec.fit != "cover")
    return canvas


def largest_long_side(source: tuple[int, int], spec: RenditionSpec) -> int | None:
    """
    The longest side a rendition can have when its master is no larger than ``source`` (either way up),
    or ``None`` when the source does not bound it (``upscale``, an exact ``size``). Why the bound is
    sound: docs/renditions.md ("Renditions no source can make compliant").

    :param source: ``(width, height)`` the master cannot exceed (the source photo's, from its header).
    :param spec: the rendition spec.
    """
    if spec.upscale or spec.size is not None:
        return None
    width, height = source
    longest = max(
        math.ceil(max(_natural_canvas(content, spec)) - _EPSILON)
        for content in ((width, height), (height, width))
    )
    return min(longest, spec.max_side if spec.max_size is None else min(spec.max_size, spec.max_side))


def layout(content: tuple[int, int], spec: RenditionSpec) -> Layout:
    """
    The layout of a rendition: its exact ``size``, or a canvas derived from the content (its aspect,
    fill or margin) scaled to the long-side bounds, upscaled only when the spec allows it.

    :param content: ``(width, height)`` of the content.
    :param spec: the rendition spec.
    """
    if spec.size is not None:
        return place(content, spec.size, spec, math.inf if spec.upscale else 1.0)
    natural = _natural_canvas(content, spec)
    long_side = max(natural)
    wanted = 1.0
    if spec.max_size is not None and long_side > spec.max_size:
        wanted = spec.max_size / long_side
    if spec.min_size is not None and long_side < spec.min_size:
        wanted = spec.min_size / long_side
    scale = wanted if spec.upscale or wanted <= 1 else 1.0
    scale = min(scale, spec.max_side / long_side, math.sqrt(MAX_PIXELS / (natural[0] * natural[1])))
    # with a fill, round the canvas down (the subject then spans at least the fill); otherwise up
    if spec.fill is not None:
        canvas = tuple(max(1, math.floor(side * scale + _EPSILON)) for side in natural)
    else:
        canvas = tuple(max(1, math.ceil(side * scale - _EPSILON)) for side in natural)
    # the canvas is already at the scale chosen: the content follows it (with fit=none too)
    placed = place(content, (canvas[0], canvas[1]), spec, scale)
    return replace(placed, refused_upscale=_refused(wanted, scale, spec))


def subject_on_canvas(subject: Box, content: Box, plan: Layout, spec: RenditionSpec) -> Box:
    """
    The box a master's subject covers on a rendition's canvas, widened by what spreads it: the resampling
    (Lanczos: 3 px of the smaller image, one more for rounding) and, in a lossy format, the encoder's
    blocks (16 px, JPEG's subsampled chroma and WebP's macroblocks) and one block more, so what lies
    outside is background.

    :param subject: the subject's box on the master.
    :param content: the box of the master used.
    :param plan: the layout.
    :param spec: the rendition spec.
    """
    scale_x = plan.size[0] / (content[2] - content[0])
    scale_y = plan.size[1] / (content[3] - content[1])
    pad = math.ceil(3 * max(1.0, scale_x, scale_y)) + 1
    x, y = plan.offset
    left = x + math.floor((subject[0] - content[0]) * scale_x) - pad
    top = y + math.floor((subject[1] - content[1]) * scale_y) - pad
    right = x + math.ceil((subject[2] - content[0]) * scale_x) + pad
    bottom = y + math.ceil((subject[3] - content[1]) * scale_y) + pad
    if background_tolerance(spec) > 0:  # a lossy format: out to the block grid, and the next block
        block = _LOSSY_BLOCK  # (a decoder's chroma upsampling and WebP's loop filter cross block edges)
        left, top = left // block * block - block, top // block * block - block
        right, bottom = -(-right // block) * block + block, -(-bottom // block) * block + block
    return left, top, right, bottom


def _visible(
    size: tuple[int, int], offset: tuple[int, int], canvas: tuple[int, int]
) -> tuple[Box, tuple[int, int]]:
    """The part of a layer at ``offset`` that lies on the canvas, and where it goes."""
    x, y = offset
    box = (max(0, -x), max(0, -y), min(size[0], canvas[0] - x), min(size[1], canvas[1] - y))
    return box, (max(0, x), max(0, y))


def compose(
    master: Master, content: Box, plan: Layout, background: tuple[int, int, int] | None
) -> Image.Image:
    """
    The canvas of one rendition: the content resized in premultiplied alpha (no dark or light fringes
    from the colours hidden under transparent pixels), then placed over the background in sRGB.

    :param master: the prepared master.
    :param content: the box of the master to use.
    :param plan: the layout.
    :param background: the background colour (``None``: transparent).
    """
    source = master.premultiplied
    width, height = content[2] - content[0], content[3] - content[1]
    if plan.size == (width, height):  # the master's own pixels: not copied before the conversion
        layer = source if content == (0, 0, *source.size) else source.crop(content)
    else:
        layer = source.resize(plan.size, Image.Resampling.LANCZOS, box=content, reducing_gap=3.0)
    box, dest = _visible(layer.size, plan.offset, plan.canvas)
    if box != (0, 0, *layer.size):
        layer = layer.crop(box)
    straight = layer.convert("RGBA")  # a new image: the master is never changed
    del layer
    if background is None:
        if dest == (0, 0) and straight.size == plan.canvas:
            return straight  # it covers the canvas: pasting it on a transparent one would copy it
        canvas = Image.new("RGBA", plan.canvas, (0, 0, 0, 0))
        canvas.paste(straight, dest)
        return canvas
    canvas = Image.new("RGBA", plan.canvas, (*background, 255))
    canvas.alpha_composite(straight, dest)
    return canvas.convert("RGB")


def encode(canvas: Image.Image, spec: RenditionSpec, exif: bytes | None) -> bytes:
    """
    Encode a canvas as the spec says: sRGB profile, DPI, EXIF only when kept, JPEG chroma subsampling.

    :param canvas: the rendered canvas (RGB, or RGBA when transparent).
    :param spec: the rendition spec.
    :param exif: EXIF to write (``metadata="keep"``), else ``None``.
    """
    params: dict[str, Any] = {}
    if spec.embed_srgb:
        params["icc_profile"] = SRGB_ICC
    if spec.dpi is not None:
        params["dpi"] = (spec.dpi, spec.dpi)
    if exif is not None and spec.metadata == "keep":
        params["exif"] = exif
    if spec.format == "jpeg":
        params.update(quality=spec.quality, subsampling=_SUBSAMPLING[spec.subsampling], optimize=True)
    elif spec.format == "webp":
        params.update(quality=spec.quality, lossless=spec.lossless, method=4)
    else:
        params.update(compress_level=6)
    out = io.BytesIO()
    canvas.save(out, format=spec.format.upper(), **params)
    return out.getvalue()


@dataclass(frozen=True)
class _Outcome:
    rendition: Rendition

    @property
    def name(self) -> str:
        """The rendition's name."""
        return self.rendition.name

    def _facts(self, status: str) -> dict[str, Any]:
        spec = self.rendition.spec
        return {
            "name": self.name,
            "preset": spec.preset,
            "fingerprint": self.rendition.fingerprint,
            "status": status,
        }


@dataclass(frozen=True)
class RenderedRendition(_Outcome):
    """
    One rendition, rendered, encoded and checked.

    :param rendition: the rendition.
    :param data: the encoded bytes.
    :param layout: where the content went.
    :param measured: facts read back from ``data``.
    :param verdict: the compliance checks.
    """

    data: bytes
    layout: Layout
    measured: Measured
    verdict: Verdict

    @property
    def compliant(self) -> bool:
        """True when every required check passed."""
        return self.verdict.compliant

    @property
    def content_type(self) -> str:
        """MIME type of :attr:`data`."""
        return self.rendition.spec.content_type

    @property
    def extension(self) -> str:
        """File extension (with the dot)."""
        return self.rendition.spec.extension

    def facts(self) -> dict[str, Any]:
        """What the manifest records (no pixels): size, format, fill, bytes, upscaling and the verdict."""
        measured = self.measured
        return {
            **self._facts("rendered"),
            "format": measured.format,
            "content_type": self.content_type,
            "width": measured.width,
            "height": measured.height,
            "bytes": measured.nbytes,
            "fill": round(measured.fill, 4),
            "scale": round(self.layout.scale, 4),
            "refused_upscale": round(self.layout.refused_upscale, 4),
            **self.verdict.as_dict(),
        }


@dataclass(frozen=True)
class RenderFailure(_Outcome):
    """
    A rendition that could not be rendered (the others of the image still are).

    :param rendition: the rendition.
    :param error: why.
    """

    error: ResultProcessingError

    compliant = False

    def facts(self) -> dict[str, Any]:
        """What the manifest records."""
        return {**self._facts("failed"), "compliant": False, "error": self.error.as_dict()}


RenderOutcome = RenderedRendition | RenderFailure


def render_one(master: Master, rendition: Rendition | RenditionSpec) -> RenderOutcome:
    """
    Render, encode and check one rendition of a prepared master.

    :param master: the master (:func:`prepare_master`).
    :param rendition: the rendition (a spec gets the rules of the built-in preset it names, if any).
    """
    rendition = resolve_rendition(rendition)
    spec = rendition.spec
    if master.subject is None:  # a blank canvas is no product image, whether it crops or not
        message = "the master has no subject (every pixel is transparent): nothing to render"
        return RenderFailure(rendition, ResultProcessingError(message, code="unknown_foreground"))
    content = master.subject if spec.crops else (0, 0, *master.size)
    try:
        plan = layout((content[2] - content[0], content[3] - content[1]), spec)
        data = encode(compose(master, content, plan, spec.background_rgb), spec, master.exif)
        covered = subject_on_canvas(master.subject, content, plan, spec)
        measured = measure(data, spec.background_rgb, background_tolerance(spec), covered)
        verdict = judge(rendition, measured)  # a preset's rule may be the user's own code
    except Exception as exc:  # Pillow's encoders raise many types; MemoryError on huge canvases
        return RenderFailure(rendition, rendering_error(f"rendition {rendition.name!r}", exc))
    return RenderedRendition(rendition, data, plan, measured, verdict)


def render(
    master: Image.Image | bytes | Master, renditions: Sequence[Rendition | RenditionSpec]
) -> list[RenderOutcome]:
    """
    Every rendition of one image from one decoded master, in order.

    :param master: the master's bytes, a decoded image, or a :class:`Master` already prepared.
    :param renditions: the renditions (:func:`~airflow_provider_bgremoval.renditions.spec.parse_renditions`).
    :raises ResultProcessingError: the master cannot be decoded or converted (``master_unreadable``,
        ``master_colour``); a single rendition's failure is a :class:`RenderFailure` in the list instead.
    """
    prepared = master if isinstance(master, Master) else prepare_master(master)
    return [render_one(prepared, rendition) for rendition in renditions]
