"""Local image work with Pillow (synchronous): input checks before spending, post-processing after.

Inputs that cannot be sent raise :class:`InputRejectedError` (nothing spent); unusable, billed results
raise :class:`InvalidVendorResponseError` with one of :data:`RESULT_ERROR_CODES` (docs/options.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from airflow.sdk.exceptions import AirflowException
from PIL import (
    ExifTags,
    Image,
    ImageCms,
    ImageFile,
    ImageMath,
    ImageOps,
    JpegImagePlugin,
    UnidentifiedImageError,
)

from airflow_provider_bgremoval.exceptions import InputRejectedError, InvalidVendorResponseError, safe_excerpt
from airflow_provider_bgremoval.options import CONTENT_TYPES, LocalSteps, RemovalOptions

#: Codes of the :class:`InvalidVendorResponseError` raised for unusable results.
RESULT_ERROR_CODES = (
    "result_empty",  # a success reply without a body
    "result_unreadable",  # not an image at all (JSON, HTML, garbage), or an image cut short / corrupt
    "result_wrong_type",  # an image of a type no vendor returns (GIF, BMP, TIFF, AVIF…)
    "result_too_large",  # declares more pixels than the vendor can produce, or exhausts memory
    "local_processing_failed",  # our own post-processing (crop, margin, flatten, encode) failed
)
#: Pillow readers tried on a result (the JPEG one also opens an MPO, a JPEG with pictures appended).
RESULT_FORMATS = ("PNG", "JPEG", "WEBP")
#: Per-side headroom over a vendor's largest documented result, for the margins and padding it adds.
RESULT_HEADROOM = 2
#: JPEG quality of an opaque conversion too large as a PNG whose source has no JPEG tables to reuse.
FALLBACK_JPEG_QUALITY = 95
#: The ICC colour space that describes the pixels of an image mode converted with its profile.
_PROFILE_SPACES: Mapping[str, bytes] = {"CMYK": b"CMYK", "L": b"GRAY", "LA": b"GRAY"}


@dataclass(frozen=True)
class InputLimits:
    """
    A vendor's documented input limits.

    :param max_bytes: largest accepted upload.
    :param min_side: smallest accepted width and height.
    :param max_side: largest accepted width and height (``None``: no per-side limit).
    :param max_pixels: largest accepted width × height (``None``: no limit).
    :param formats: Pillow format names the vendor accepts as they are.
    :param max_side_basis: whose limit ``max_side`` is, for messages (the vendor's, or the output format's).
    """

    max_bytes: int
    min_side: int = 1
    max_side: int | None = None
    max_pixels: int | None = None
    formats: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP"})
    max_side_basis: str = "the vendor's limit"


#: WebP's largest width or height (14 bits): a larger result cannot be encoded as WebP.
WEBP_MAX_SIDE = 16_383


def limits_for_output(limits: InputLimits, options: RemovalOptions) -> InputLimits:
    """
    ``limits`` tightened to what the call's output can hold: a WebP output with neither a crop nor a
    ``max_size`` that could bring it under :data:`WEBP_MAX_SIDE` takes no wider or taller input (the
    billed result could not be encoded, and every rerun would pay again).

    :param limits: the vendor's input limits.
    :param options: the call's unified options.
    """
    fitted = options.max_size is not None and max(options.max_size) <= WEBP_MAX_SIDE
    if options.output_format != "webp" or options.crop or fitted:
        return limits
    if limits.max_side is not None and limits.max_side <= WEBP_MAX_SIDE:
        return limits
    return replace(limits, max_side=WEBP_MAX_SIDE, max_side_basis="a WebP output's limit")


@dataclass(frozen=True)
class ResultLimits:
    """
    The largest result accepted from a vendor, judged on its declared size before any pixel is decoded.

    :param max_pixels: largest accepted width × height.
    :param max_side: largest accepted width and height (``None``: no per-side limit).
    :param basis: where the numbers come from, quoted in error messages.
    """

    max_pixels: int
    max_side: int | None = None
    basis: str = ""

    def describe(self) -> str:
        """The limits in words, e.g. ``12000 px per side and 144,000,000 pixels``."""
        pixels = f"{self.max_pixels:,} pixels"
        return pixels if self.max_side is None else f"{self.max_side} px per side and {pixels}"


#: Per vendor: its largest documented result (docs/options.md) x :data:`RESULT_HEADROOM` per side.
RESULT_LIMITS: Mapping[str, ResultLimits] = {
    vendor: ResultLimits(
        max_pixels=pixels * RESULT_HEADROOM**2,
        max_side=None if side is None else side * RESULT_HEADROOM,
        basis=f"{vendor.title()} results are at most {largest}, x{RESULT_HEADROOM} per side for margins",
    )
    for vendor, pixels, side, largest in (
        ("pixelcut", 6000 * 6000, 6000, "6000x6000 px"),
        ("pixian", 25_000_000, None, "max_pixels = 25,000,000 pixels"),
        ("poof", 36_000_000, 6000, "6000 px per side and 36,000,000 pixels"),
    )
}
#: For a vendor not in :data:`RESULT_LIMITS`: the most generous of them.
DEFAULT_RESULT_LIMITS = ResultLimits(
    max_pixels=max(limits.max_pixels for limits in RESULT_LIMITS.values()),
    max_side=None,
    basis="the largest result any supported vendor documents, x2 per side for margins",
)


def result_limits(vendor: str | None) -> ResultLimits:
    """
    The result limits for ``vendor`` (:data:`RESULT_LIMITS`, else :data:`DEFAULT_RESULT_LIMITS`).

    :param vendor: vendor name (``pixelcut``, ``pixian``, ``poof``).
    """
    return RESULT_LIMITS.get(vendor or "", DEFAULT_RESULT_LIMITS)


#: Pillow readers never run on an input: EPS's runs Ghostscript, a PostScript interpreter, on the file.
UNSAFE_INPUT_FORMATS = frozenset({"EPS"})


def input_formats() -> tuple[str, ...]:
    """The Pillow readers tried on an input: all registered (plugins too) but :data:`UNSAFE_INPUT_FORMATS`."""
    Image.init()
    return _safe_readers(tuple(Image.OPEN))


@functools.lru_cache(maxsize=8)
def _safe_readers(registered: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`input_formats` for these registered readers, worked out once (not twice per image)."""
    return tuple(fmt for fmt in registered if fmt not in UNSAFE_INPUT_FORMATS)


#: The warnings filter :func:`bomb_warnings_ignored` puts first: Pillow's ``DecompressionBombWarning``,
#: which ``PIL.Image`` itself raises (naming the module tells it apart from a filter of the caller's own).
_BOMB_MODULE = r"PIL\.Image\Z"
_BOMB_FILTER = ("ignore", None, Image.DecompressionBombWarning, re.compile(_BOMB_MODULE), 0)
_bomb_filter_lock = threading.Lock()
_bomb_filter_users = 0  # threads (and nested uses) inside bomb_warnings_ignored, under the lock


def _bomb_filter_used(step: int) -> None:
    """Count a use of the filter in (``1``) or out (``-1``): the first in adds it, the last out removes it."""
    global _bomb_filter_users
    with _bomb_filter_lock:
        _bomb_filter_users += step
        present = _BOMB_FILTER in warnings.filters
        if step > 0 and not present:
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module=_BOMB_MODULE)
        elif _bomb_filter_users == 0 and present:
            cast("list[object]", warnings.filters).remove(_BOMB_FILTER)  # a list (typeshed: a Sequence)
            mutated = getattr(warnings, "_filters_mutated", None)  # drops the registries' cached answers
            if mutated is not None:
                mutated()


@contextlib.contextmanager
def bomb_warnings_ignored() -> Iterator[None]:
    """
    Silence Pillow's ``DecompressionBombWarning``: our own limits judge sizes (docs/options.md).
    Thread-safe (the pipeline decodes in a thread pool and on the event loop at once): one filter of
    its own, added by the first use in and removed by the last one out, every other filter left alone.
    ``warnings.catch_warnings`` saves and restores the whole process-wide list: two overlapping uses
    took the filter away from the one still inside, and the last one out put it back for good.
    """
    _bomb_filter_used(1)
    try:
        yield
    finally:
        _bomb_filter_used(-1)


class TruncatedImageError(Exception):
    """An image's bytes end where its decoder reads on (see ``_load_whole``)."""


class _ImageBytes(io.BytesIO):
    """
    An image's bytes: once ``decoding``, a read at their end raises :class:`TruncatedImageError` while
    Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set (by any code of the worker: a DAG
    file, a plugin), whose decoders would otherwise stop there silently and fill in the rest. Unset,
    Pillow refuses the image itself.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._end = len(data)
        self.decoding = False

    def read(self, size: int | None = -1, /) -> bytes:
        at_end = size is not None and size > 0 and self.tell() >= self._end
        if at_end and self.decoding and ImageFile.LOAD_TRUNCATED_IMAGES:
            raise TruncatedImageError("the image data ends before the image does")
        return super().read(size)


def _open_whole(data: bytes, formats: tuple[str, ...] | None = None) -> ImageFile.ImageFile:
    """``Image.open`` of ``data`` (with these readers) for ``_load_whole`` to decode."""
    return Image.open(_ImageBytes(data), formats=formats)


def _load_whole(image: Image.Image) -> None:
    """
    ``image.load()`` (opened by :func:`_open_whole`), a truncated image refused whatever
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` says: never a truncated source sent and paid for, nor a
    truncated result written as an output.
    """
    source = getattr(image, "fp", None)
    if isinstance(source, _ImageBytes):
        source.decoding = True
    image.load()


@dataclass(frozen=True)
class ImageInfo:
    """
    What a header-only read learnt about an image.

    :param format: Pillow format name (``JPEG``, ``PNG``…).
    :param width: width in pixels as stored (before EXIF rotation).
    :param height: height in pixels as stored.
    :param mode: Pillow mode (``RGB``, ``RGBA``, ``CMYK``, ``I;16``…).
    :param orientation: EXIF orientation tag (1 when absent).
    :param frames: number of frames (animated GIF/WebP/APNG have more than one).
    :param bit_depth: a PNG's ``IHDR`` bit depth per sample or palette index (a 16-bit RGB PNG has mode
        ``RGB`` too); ``None`` for other formats.
    :param transparency: a transparent colour or palette entries outside the mode (PNG ``tRNS``, GIF):
        an ``RGB`` or ``L`` PNG with ``tRNS`` is not opaque.
    """

    format: str
    width: int
    height: int
    mode: str
    orientation: int = 1
    frames: int = 1
    bit_depth: int | None = None
    transparency: bool = False

    @property
    def pixels(self) -> int:
        """Width × height."""
        return self.width * self.height


def _reject(code: str, message: str, vendor: str | None) -> InputRejectedError:
    return InputRejectedError(message, code=code, vendor=vendor, local=True)


def exif_orientation(image: Image.Image) -> int:
    """
    The EXIF orientation tag of ``image`` (1 when absent or invalid).

    :param image: an opened image.
    """
    try:
        return _valid_orientation(image.getexif())
    except Exception:  # a broken EXIF block: treat as upright, as Pillow's exif_transpose does
        return 1


def _valid_orientation(exif: Image.Exif) -> int:
    value = int(exif.get(ExifTags.Base.Orientation, 1) or 1)
    return value if 1 <= value <= 8 else 1


def _png_orientation(data: bytes) -> int:
    """
    A PNG's EXIF orientation, from its ``eXIf`` chunk, found by walking the chunk list: Pillow's
    ``getexif()`` decodes every pixel of a PNG without an ``eXIf`` before its image data (most PNGs) to
    look for one after it. Like Pillow: the last ``eXIf`` before the image data, else the last after it;
    a chunk cut short by the end of ``data`` (a header prefix) is not there.
    """
    before_pixels: bytes | None = None
    after_pixels: bytes | None = None
    seen_pixels = False
    offset = 8  # the PNG signature
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        end = offset + 8 + length
        if kind == b"IEND" or end > len(data):
            break
        if kind in (b"IDAT", b"fdAT"):
            seen_pixels = True
        elif kind == b"eXIf" and seen_pixels:
            after_pixels = data[offset + 8 : end]
        elif kind == b"eXIf":
            before_pixels = data[offset + 8 : end]
        offset = end + 4  # and the chunk's CRC
    chunk = before_pixels if before_pixels is not None else after_pixels
    if chunk is None:
        return 1
    try:
        exif = Image.Exif()
        exif.load(b"Exif\x00\x00" + chunk)
        return _valid_orientation(exif)
    except Exception:  # a broken EXIF block: treat as upright, as Pillow's exif_transpose does
        return 1


def _frames(image: Image.Image) -> int:
    try:
        return max(1, int(getattr(image, "n_frames", 1) or 1))
    except Exception:  # counting frames reads the whole file; a damaged one counts as 1 here
        return 1


def _png_bit_depth(data: bytes) -> int | None:
    """The bit depth in a PNG's ``IHDR``, the chunk that must come first (``None`` when it does not)."""
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else None


def read_header(data: bytes, *, vendor: str | None = None) -> ImageInfo:
    """
    Identify an image from its bytes (or a prefix holding its header) without decoding its pixels.

    :param data: the image bytes.
    :param vendor: vendor name, for the :class:`InputRejectedError` on empty or unknown bytes.
    """
    if not data:
        raise _reject("empty_file", "the file is empty (0 bytes)", vendor)
    try:
        with bomb_warnings_ignored(), Image.open(io.BytesIO(data), formats=input_formats()) as image:
            fmt = image.format or "UNKNOWN"
            return ImageInfo(
                fmt,
                image.width,
                image.height,
                image.mode,
                _png_orientation(data) if fmt == "PNG" else exif_orientation(image),
                _frames(image),
                bit_depth=_png_bit_depth(data) if fmt == "PNG" else None,
                transparency="transparency" in image.info,
            )
    except AirflowException:
        raise
    except Image.DecompressionBombError as exc:
        raise _reject("too_many_pixels", f"declared dimensions are absurd ({exc})", vendor) from None
    except Exception as exc:  # Pillow's parsers raise many types on hostile bytes
        raise _reject("unsupported_image", _unreadable(data, exc), vendor) from None


#: ISO-BMFF ``ftyp`` brands of HEVC-coded HEIF (HEIC) stills and sequences, e.g. iPhone photos, which
#: Pillow reads only through the pillow-heif plugin (an AVIF, also HEIF, it reads itself).
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})


def _is_heic(data: bytes) -> bool:
    """An ``ftyp`` box first, naming a HEIC brand as its major or a compatible brand."""
    if data[4:8] != b"ftyp":
        return False
    box = data[8 : min(int.from_bytes(data[:4], "big"), 256)]
    brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)}  # major, minor version, compatible...
    return not brands.isdisjoint(_HEIC_BRANDS)


def _unreadable(data: bytes, exc: Exception) -> str:
    """Why an input is not a readable image, naming a HEIC/HEIF photo and what reads it."""
    if _is_heic(data):
        return (
            "not a readable image: a HEIC/HEIF photo, which Pillow reads only with the pillow-heif plugin "
            "(install it and call pillow_heif.register_heif_opener() in the worker, or send a JPEG)"
        )
    return f"not a readable image ({type(exc).__name__})"


def check_size(size: int, limits: InputLimits, *, vendor: str | None = None) -> None:
    """Raise :class:`InputRejectedError` when a file of ``size`` bytes is over the vendor's limit."""
    if size > limits.max_bytes:
        message = f"file is {size:,} bytes; the vendor's limit is {limits.max_bytes:,} bytes"
        raise _reject("file_size_too_large", message, vendor)


def check_limits(info: ImageInfo, size: int, limits: InputLimits, *, vendor: str | None = None) -> None:
    """
    Raise :class:`InputRejectedError` naming the limit when ``info``/``size`` break ``limits``, or when
    ``info`` is a 32-bit floating-point image (mode ``F``, e.g. a float TIFF): its values have no range
    to scale to 8 bits from (0-1, 0-255, linear light…), and a guess sent would be paid for.
    """
    if info.mode == "F":
        message = (
            f"a 32-bit floating-point {info.format} (mode F) has no standard range of values to convert "
            "to 8 bits; export it as an 8- or 16-bit PNG, JPEG or TIFF"
        )
        raise _reject("unsupported_image", message, vendor)
    check_size(size, limits, vendor=vendor)
    shape = f"image is {info.width}x{info.height}"
    if limits.max_pixels is not None and info.pixels > limits.max_pixels:
        message = f"{shape} = {info.pixels:,} pixels; the vendor's limit is {limits.max_pixels:,} pixels"
        raise _reject("too_many_pixels", message, vendor)
    if limits.max_side is not None and max(info.width, info.height) > limits.max_side:
        message = f"{shape}; {limits.max_side_basis} is {limits.max_side} px per side"
        raise _reject("resolution_too_high", message, vendor)
    if min(info.width, info.height) < limits.min_side:
        message = f"{shape}; the vendor's minimum is {limits.min_side} px per side"
        raise _reject("resolution_too_low", message, vendor)


@dataclass(frozen=True)
class PreparedInput:
    """
    An image ready to send.

    :param data: bytes to upload (the original object when it needed no change, else a new PNG).
    :param content_type: MIME type of ``data``.
    """

    data: bytes
    content_type: str


def _needs_conversion(info: ImageInfo, mode: str, limits: InputLimits) -> str | None:
    """Why ``info`` cannot be sent as it is (``None``: it can), in words for a size message."""
    if info.orientation != 1:
        return f"EXIF orientation {info.orientation} applied"
    if info.frames > 1:
        return f"first of {info.frames} frames"
    if info.format not in limits.formats:
        return f"{info.format} is not taken by the vendor"
    if mode not in ("RGB", "RGBA", "L", "LA") or (mode in ("L", "LA") and info.format != "PNG"):
        return f"{mode} {info.format} made {'RGBA' if 'A' in mode else 'RGB'}"
    return None


def _jpeg_settings(source: Image.Image) -> dict[str, Any]:
    """
    Encoder settings for an opaque conversion sent as a JPEG: an RGB JPEG's own quantization tables
    (about its own size and quality; 4:2:0 kept, else 4:4:4), otherwise quality 95, 4:4:4.
    """
    tables = getattr(source, "quantization", None)
    if source.format in ("JPEG", "MPO") and source.mode == "RGB" and tables and len(tables) >= 2:
        subsampling = 2 if JpegImagePlugin.get_sampling(source) == 2 else 0
        return {"qtables": tables, "subsampling": subsampling}
    return {"quality": FALLBACK_JPEG_QUALITY, "subsampling": 0}


def _profile_space(icc: bytes | None) -> bytes | None:
    """The colour space an ICC profile's header names (``b"RGB "``, ``b"CMYK"``, ``b"GRAY"``…)."""
    return icc[16:20] if icc and len(icc) >= 20 else None


def _managed_to_srgb(image: Image.Image) -> Image.Image | None:
    """
    A ``CMYK``, ``L`` or ``LA`` image converted to sRGB with its embedded profile of that colour space
    (relative colorimetric, black-point compensation, alpha kept), untagged; ``None`` when it has no
    such profile or the profile cannot be used (then the plain conversion is the best there is).
    """
    icc = image.info.get("icc_profile")
    if not icc or _profile_space(icc) != _PROFILE_SPACES.get(image.mode) or "transparency" in image.info:
        return None  # (a grey tRNS is left to normalise_mode, which makes it alpha)
    alpha = image.getchannel("A") if image.mode == "LA" else None
    try:
        converted = ImageCms.profileToProfile(
            image.convert("L") if alpha is not None else image,
            ImageCms.ImageCmsProfile(io.BytesIO(icc)),
            ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")),
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            outputMode="RGB",
            flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
        )
    except (OSError, ValueError, ImageCms.PyCMSError):
        return None
    assert converted is not None  # not in place
    converted.info.pop("icc_profile", None)
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _upright(image: Image.Image) -> Image.Image:
    """
    ``image`` (ours, opened from bytes) turned upright in place, in ``RGB`` or ``RGBA``, with an ICC
    profile only when it describes those pixels: a CMYK or grey profile is applied (:func:`_managed_to_srgb`)
    or dropped, never left on RGB pixels.
    """
    ImageOps.exif_transpose(image, in_place=True)
    upright = _managed_to_srgb(image) or normalise_mode(image)
    mode = "RGBA" if "A" in upright.mode else "RGB"
    upright = upright if upright.mode == mode else upright.convert(mode)
    if _profile_space(upright.info.get("icc_profile")) not in (None, b"RGB "):
        upright.info.pop("icc_profile")
    return upright


def _encode_upload(image: Image.Image, jpeg: Mapping[str, Any], limits: InputLimits) -> tuple[bytes, str]:
    """
    ``image`` as a lossless PNG; an opaque one over ``limits.max_bytes`` as a JPEG instead, when the
    vendor takes JPEG (an EXIF-rotated 24 MP photo is a 10 MB JPEG but a 35 MB PNG).
    """
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    if out.tell() <= limits.max_bytes or image.mode != "RGB" or "JPEG" not in limits.formats:
        return out.getvalue(), "PNG"
    out = io.BytesIO()
    image.save(out, format="JPEG", icc_profile=image.info.get("icc_profile"), **jpeg)
    return out.getvalue(), "JPEG"


def prepare_input(data: bytes, limits: InputLimits, *, vendor: str | None = None) -> PreparedInput:
    """
    Check an image fully (header, limits, every pixel) and make it safe to send: EXIF rotation, unusual
    modes, formats the vendor does not take and animations (first frame) become a PNG (an opaque one
    too large as a PNG: a JPEG, with a JPEG's own tables), checked again.

    :param data: the image bytes.
    :param limits: the vendor's input limits.
    :param vendor: vendor name, for the :class:`InputRejectedError`.
    """
    with bomb_warnings_ignored():  # one use of the filter for the header read and the decode
        info = read_header(data, vendor=vendor)
        check_limits(info, len(data), limits, vendor=vendor)
        try:
            with _open_whole(data, input_formats()) as image:
                _load_whole(image)
                reason = _needs_conversion(info, image.mode, limits)
                if reason is None:
                    return PreparedInput(data, CONTENT_TYPES[info.format.lower()])
                jpeg = _jpeg_settings(image)
                upright = _upright(image)
                converted, fmt = _encode_upload(upright, jpeg, limits)
        except AirflowException:
            raise
        except MemoryError:
            message = f"image is {info.width}x{info.height}: not enough memory to check and convert it"
            raise _reject("too_many_pixels", message, vendor) from None
        except Exception as exc:  # Pillow's decoders raise many types on damaged data
            message = f"the image data is corrupt or truncated ({exc})"
            raise _reject("malformed_image", message, vendor) from None
    if len(converted) > limits.max_bytes:
        message = (
            f"the file is {len(data):,} bytes, but converted for sending ({reason}) it is {len(converted):,} "
            f"bytes as a {fmt}; the vendor's limit is {limits.max_bytes:,} bytes"
        )
        raise _reject("file_size_too_large", message, vendor)
    check_limits(ImageInfo(fmt, *upright.size, upright.mode), len(converted), limits, vendor=vendor)
    return PreparedInput(converted, CONTENT_TYPES[fmt.lower()])


def drop_opaque_alpha(data: bytes, limits: InputLimits) -> bytes:
    """
    ``data`` as an upright RGB (or grey) PNG when its transparency (alpha channel, palette or ``tRNS``)
    is opaque everywhere, else ``data`` itself: for an operation that takes any alpha as the subject's
    outline (Pixelcut's generate-background removes no background from an RGBA input). Bytes the input
    checks would refuse are returned as they are, for those checks to refuse.

    :param data: the image bytes.
    :param limits: the vendor's input limits.
    """
    try:
        info = read_header(data)
        check_limits(info, len(data), limits)
        with bomb_warnings_ignored(), _open_whole(data, input_formats()) as image:
            if "A" not in image.mode and "transparency" not in image.info:
                return data
            _load_whole(image)
            ImageOps.exif_transpose(image, in_place=True)
            normal = normalise_mode(image)
            if "A" not in normal.mode or normal.getchannel("A").getextrema() != (255, 255):
                return data
            opaque = normal.convert("L" if normal.mode == "LA" else "RGB")
            out = io.BytesIO()
            opaque.save(out, format="PNG", compress_level=1, icc_profile=_profile_of(opaque))
    except Exception:  # refused or unreadable: prepare_input says why, with the vendor's limits
        return data
    return out.getvalue() if out.tell() <= limits.max_bytes else data  # never refused for its new size


def _unusable(code: str, message: str, vendor: str | None) -> InvalidVendorResponseError:
    return InvalidVendorResponseError(message, vendor=vendor, code=code, possibly_charged=True)


def _failed(exc: Exception, vendor: str, code: str, doing: str, failure: str) -> InvalidVendorResponseError:
    """The error for what Pillow raised while ``doing`` its work on a billed result."""
    if isinstance(exc, MemoryError):
        return _unusable("result_too_large", f"not enough memory {doing}", vendor)
    detail = safe_excerpt(str(exc), 120) or "no details"
    return _unusable(code, f"{failure} ({type(exc).__name__}: {detail})", vendor)


def _describe_body(data: bytes) -> tuple[str, str]:
    """``(code, what the body is)`` for a body that is not an image of :data:`RESULT_FORMATS`."""
    head = data[:4096].lstrip()
    if head[:1] in (b"{", b"["):
        with contextlib.suppress(ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            json.loads(data)
            return "result_unreadable", "a JSON document, not an image"
    if head[:1] == b"<":
        return "result_unreadable", "an HTML/XML document, not an image"
    try:
        with bomb_warnings_ignored(), Image.open(io.BytesIO(data)) as other:
            kind = other.format or "unknown"
    except AirflowException:
        raise
    except Exception:
        return "result_unreadable", "not a complete image (its header is unreadable)"
    return "result_wrong_type", f"a {kind} image; vendors return PNG, JPEG or WebP"


def _check_result_size(
    width: int, height: int, limits: ResultLimits, vendor: str | None, *, what: str
) -> None:
    too_wide = limits.max_side is not None and max(width, height) > limits.max_side
    if width * height > limits.max_pixels or too_wide:
        message = (
            f"{what} is {width}x{height} = {width * height:,} pixels, over the {limits.describe()} "
            f"accepted from {vendor or 'this vendor'} ({limits.basis}); refused without decoding it"
        )
        raise _unusable("result_too_large", message, vendor)


def decode_result(data: bytes, *, vendor: str, limits: ResultLimits | None = None) -> Image.Image:
    """
    Decode a vendor's result fully: a PNG, JPEG or WebP (an animation's first frame, an MPO as JPEG,
    in the file's own mode) whose declared size, read first, is within ``limits``.

    :param data: the reply body.
    :param vendor: vendor name (for the limits and the error).
    :param limits: result limits; defaults to :func:`result_limits` of ``vendor``.
    """
    limits = limits or result_limits(vendor)
    if not data:
        raise _unusable("result_empty", "the vendor returned an empty body", vendor)
    size = "its declared size"
    try:
        with bomb_warnings_ignored():
            image = _open_whole(data, RESULT_FORMATS)
            size = f"{image.width}x{image.height}"
            _check_result_size(image.width, image.height, limits, vendor, what="the vendor's result")
            _load_whole(image)
            if image.format == "MPO":
                image.format = "JPEG"
    except AirflowException:  # the task's own errors (timeouts) and our typed ones
        raise
    except UnidentifiedImageError:
        code, what = _describe_body(data)
        raise _unusable(code, f"the vendor's result is {what}", vendor) from None
    except Image.DecompressionBombError:
        message = (
            "the vendor's result declares more pixels than can be decoded safely (a decompression bomb); "
            f"refused without decoding it. At most {limits.describe()} are accepted from {vendor} "
            f"({limits.basis})"
        )
        raise _unusable("result_too_large", message, vendor) from None
    except Exception as exc:  # Pillow's decoders raise many types on damaged data
        doing = f"to decode the vendor's {size} result"
        failure = "the vendor's result is not a complete image"
        raise _failed(exc, vendor, "result_unreadable", doing, failure) from None
    return image


def _grey_16(image: Image.Image) -> Image.Image:
    """16- or 32-bit grey scaled to ``L``; ``LA`` when a ``tRNS`` grey value marks transparent pixels."""
    wide = image.convert("I")
    grey = wide.point(lambda v: v * (1 / 256)).convert("L")
    key = image.info.get("transparency")
    if not isinstance(key, int):
        return grey
    alpha = ImageMath.lambda_eval(lambda args: (args["grey"] != key) * 255, grey=wide)
    assert isinstance(alpha, Image.Image)
    grey.putalpha(alpha.convert("L"))
    return grey


def normalise_mode(image: Image.Image) -> Image.Image:
    """
    ``image`` in a mode every local step handles: ``RGB``, ``RGBA``, ``L`` or ``LA`` (8 bits); 16- and
    32-bit grayscale is scaled, not clipped, and transparency (palette or ``tRNS``) becomes alpha.

    :param image: a decoded image.
    """
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA") and not (mode in ("RGB", "L") and "transparency" in image.info):
        return image
    if mode.startswith("I;16") or mode == "I":
        return _grey_16(image)
    if mode == "F":
        return image.convert("L")  # clipped to 0-255
    if mode == "La":
        return image.convert("LA")
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def _profile_of(image: Image.Image) -> bytes | None:
    """``image``'s ICC profile when it describes its pixels (RGB for colour, grey for ``L``/``LA``)."""
    icc = image.info.get("icc_profile")
    wanted = b"GRAY" if image.mode in ("L", "LA") else b"RGB "
    return icc if isinstance(icc, bytes) and _profile_space(icc) == wanted else None


def encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    """Encode ``image`` as ``png``, ``jpeg`` (flattened on white) or ``webp``, its ICC profile kept."""
    out = io.BytesIO()
    if fmt == "jpeg":
        if image.mode != "RGB":
            image = flatten(image, "#ffffff")
        image.save(out, format="JPEG", quality=quality, optimize=False, icc_profile=_profile_of(image))
    elif fmt == "webp":
        icc = _profile_of(image) if image.mode in ("RGB", "RGBA") else None  # WebP stores RGB(A) only
        image.save(out, format="WEBP", quality=quality, method=4, icc_profile=icc)
    else:
        image.save(out, format="PNG", compress_level=6, icc_profile=_profile_of(image))
    return out.getvalue()


def flatten(image: Image.Image, color: str) -> Image.Image:
    """Composite ``image`` over an opaque colour (its RGB ICC profile kept: the pixels are still in it)."""
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")  # read, not changed
    flat = Image.new("RGB", rgba.size, color)
    flat.paste(rgba, (0, 0), rgba)  # "over" an opaque base, one new image (not three)
    icc = _profile_of(rgba)
    if icc is not None:
        flat.info["icc_profile"] = icc
    return flat


def apply_local_steps(
    data: bytes,
    steps: LocalSteps,
    *,
    vendor: str,
    limits: ResultLimits | None = None,
    requested_format: str | None = None,
) -> tuple[bytes, str, int, int]:
    """
    Decode a vendor result, run the local steps and encode it (the vendor's bytes are kept when no
    step runs and they are in the format wanted). Failures are billed, typed errors (docs/options.md).

    :param data: the vendor's reply body.
    :param steps: the local steps.
    :param vendor: vendor name.
    :param limits: result limits (the crop with its margin too); default: :func:`result_limits`.
    :param requested_format: the format asked of the vendor (after ``steps.output_format``; ``None``: any).
    :return: ``(bytes, content_type, width, height)``.
    """
    limits = limits or result_limits(vendor)
    with bomb_warnings_ignored():  # one use of the filter for the decode and the steps
        image = decode_result(data, vendor=vendor, limits=limits)
        vendor_format = (image.format or "PNG").lower()
        fmt = steps.output_format or requested_format or vendor_format
        if fmt == vendor_format and not steps.needed:
            return data, CONTENT_TYPES[fmt], image.width, image.height
        received = f"{image.width}x{image.height} {image.mode}"
        step = "mode conversion"
        try:
            image = normalise_mode(image)
            if steps.crop:
                step = "crop"
                image = image if image.mode == "RGBA" else image.convert("RGBA")
                bbox = image.getchannel("A").getbbox()
                if bbox is None:
                    raise InputRejectedError(
                        "the vendor found no foreground to crop to", vendor=vendor, code="unknown_foreground"
                    )
                left, top, right, bottom = bbox
                if steps.margin is not None:
                    width, height = right - left, bottom - top
                    left -= steps.margin.left.resolve(width)
                    top -= steps.margin.top.resolve(height)
                    right += steps.margin.right.resolve(width)
                    bottom += steps.margin.bottom.resolve(height)
                _check_result_size(
                    right - left, bottom - top, limits, vendor, what="the crop with its margin"
                )
                image = image.crop((left, top, right, bottom))  # outside the image becomes transparent
            if steps.background_color:
                step = "background flattening"
                image = flatten(image, steps.background_color)
            if steps.max_size:
                step = "resize"
                image.thumbnail(steps.max_size, Image.Resampling.LANCZOS)
            step = f"{fmt} encoding"
            content = encode(image, fmt, steps.quality)
        except AirflowException:  # our typed errors (unknown_foreground, result_too_large) included
            raise
        except Exception as exc:
            work = f"local {step} of the vendor's {received} result"
            failure = f"the call was billed, but the {work} failed"
            raise _failed(exc, vendor, "local_processing_failed", f"for the {work}", failure) from None
        return content, CONTENT_TYPES[fmt], image.width, image.height
