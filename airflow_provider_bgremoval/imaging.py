"""Local image work with Pillow: input checks before spending, and post-processing after the call.

Everything here is CPU-bound and synchronous; async callers run it in a worker thread.

Inputs that cannot be sent raise :class:`InputRejectedError` (``local=True``: nothing was spent).
A vendor result that cannot be used — empty, not an image, an image type no vendor returns, cut
short or corrupt, larger than the vendor can produce (a decompression bomb), too big for memory —
and any failure of the local post-processing raise :class:`InvalidVendorResponseError` with one of
the :data:`RESULT_ERROR_CODES` and a plain-words message (the call was billed:
``possibly_charged=True``). Nothing else escapes :func:`decode_result` or
:func:`apply_local_steps` (the task's own timeouts and cancellations excepted).

Result sizes are judged against :class:`ResultLimits` derived from each vendor's documented
output, before any pixel is decoded; Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` is left as it
is (its warning is silenced here, its error is mapped to ``result_too_large``).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from airflow.sdk.exceptions import AirflowException
from PIL import Image, ImageOps, UnidentifiedImageError

from airflow_provider_bgremoval.exceptions import (
    InputRejectedError,
    InvalidVendorResponseError,
    safe_excerpt,
)
from airflow_provider_bgremoval.options import CONTENT_TYPES, LocalSteps, Margin

#: Formats any vendor accepts as input; others are converted to PNG before sending (see
#: :func:`prepare_input`) or rejected when they cannot be decoded.
_PILLOW_TO_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_EXIF_ORIENTATION = 0x0112

#: Codes of the :class:`InvalidVendorResponseError` raised for unusable results.
RESULT_ERROR_CODES = (
    "result_empty",  # a success reply without a body
    "result_unreadable",  # not an image at all (JSON, HTML, garbage), or an image cut short / corrupt
    "result_wrong_type",  # an image of a type no vendor returns (GIF, BMP, TIFF, AVIF…)
    "result_too_large",  # declares more pixels than the vendor can produce, or exhausts memory
    "local_processing_failed",  # our own post-processing (crop, margin, flatten, encode) failed
)
#: Image types the vendors return (Pixelcut PNG/JPEG, Pixian PNG/JPEG, Poof PNG/JPEG/WebP). An MPO
#: is a JPEG with further pictures appended (some cameras write them); its first picture is a JPEG.
RESULT_FORMATS = ("PNG", "JPEG", "WEBP", "MPO")
#: What :func:`decode_result` asks Pillow to try (its JPEG reader also opens MPOs).
_RESULT_READERS = ("PNG", "JPEG", "WEBP")
#: Per-side headroom over a vendor's largest documented result, for margins and padding the vendor
#: adds around it: Pixelcut's native margin is at most 49 % of the image on each side (1 + 2 x 0.49
#: < 2); Poof's padding and Pixian's ``result.margin`` are documented without a cap.
RESULT_HEADROOM = 2
#: Errors that belong to the task, not to the image: never turned into an image's error.
_PASS_THROUGH: tuple[type[BaseException], ...] = (AirflowException,)


@dataclass(frozen=True)
class InputLimits:
    """
    A vendor's documented input limits.

    :param max_bytes: largest accepted upload.
    :param min_side: smallest accepted width and height.
    :param max_side: largest accepted width and height (``None``: no per-side limit).
    :param max_pixels: largest accepted width × height (``None``: no limit).
    :param formats: Pillow format names the vendor accepts as they are.
    """

    max_bytes: int
    min_side: int = 1
    max_side: int | None = None
    max_pixels: int | None = None
    formats: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP"})


@dataclass(frozen=True)
class ResultLimits:
    """
    The largest result accepted from a vendor, judged on the size its header declares, before any
    pixel is decoded (so a decompression bomb costs no memory).

    :param max_pixels: largest accepted width × height.
    :param max_side: largest accepted width and height (``None``: no per-side limit).
    :param basis: where the numbers come from, quoted in error messages.
    """

    max_pixels: int
    max_side: int | None = None
    basis: str = ""

    @classmethod
    def from_documented_output(cls, *, max_pixels: int, max_side: int | None, basis: str) -> ResultLimits:
        """
        Limits for a vendor whose largest documented result is ``max_side`` / ``max_pixels``, with
        :data:`RESULT_HEADROOM` per side for margins and padding.

        :param max_pixels: the largest documented result, width × height.
        :param max_side: the largest documented result side (``None``: none documented).
        :param basis: the documented fact the numbers come from.
        """
        return cls(
            max_pixels=max_pixels * RESULT_HEADROOM**2,
            max_side=None if max_side is None else max_side * RESULT_HEADROOM,
            basis=f"{basis}, x{RESULT_HEADROOM} per side for margins",
        )

    def covering(self, width: int, height: int) -> ResultLimits:
        """
        These limits, widened when needed to accept an expected result of ``width`` × ``height``
        (e.g. an explicitly requested target size) with the same headroom.

        :param width: expected result width.
        :param height: expected result height.
        """
        pixels = width * height * RESULT_HEADROOM**2
        side = max(width, height) * RESULT_HEADROOM
        if pixels <= self.max_pixels and (self.max_side is None or side <= self.max_side):
            return self
        return ResultLimits(
            max_pixels=max(self.max_pixels, pixels),
            max_side=None if self.max_side is None else max(self.max_side, side),
            basis=f"{self.basis}; widened for an expected {width}x{height} result",
        )

    def describe(self) -> str:
        """The limits in words, e.g. ``12000 px per side and 144,000,000 pixels``."""
        pixels = f"{self.max_pixels:,} pixels"
        return pixels if self.max_side is None else f"{self.max_side} px per side and {pixels}"


#: Result limits per vendor, from the largest result each vendor documents (VENDORS.md; the input
#: limits in ``vendors/*.py`` — tests/unit/test_imaging.py checks that the two agree):
RESULT_LIMITS: Mapping[str, ResultLimits] = {
    # remove-background returns the input's size at most (inputs 64-6000 px per side);
    # generate-background returns 1024x1024; upscale is capped at 6000x6000.
    "pixelcut": ResultLimits.from_documented_output(
        max_pixels=6000 * 6000,
        max_side=6000,
        basis="Pixelcut results are at most 6000x6000 px",
    ),
    # inputs (up to 32 MP) are shrunk to max_pixels, at most 25,000,000, before processing; no
    # per-side limit is documented.
    "pixian": ResultLimits.from_documented_output(
        max_pixels=25_000_000,
        max_side=None,
        basis="Pixian results are at most max_pixels = 25,000,000 pixels",
    ),
    # "full" returns the input's size (about 6000 px per side / 36 MP at most); width/height <= 6000.
    "poof": ResultLimits.from_documented_output(
        max_pixels=36_000_000,
        max_side=6000,
        basis="Poof results are at most 6000 px per side and 36,000,000 pixels",
    ),
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


@contextlib.contextmanager
def _bomb_warnings_ignored() -> Iterator[None]:
    """
    Silence Pillow's ``DecompressionBombWarning``: sizes are judged by the caller's own limits.

    ``warnings.catch_warnings`` swaps the process-wide filter list (not thread-safe before Python
    3.14): when threads overlap, the worst outcome is that this one "ignore" filter outlives the
    block, which only hides the same warning elsewhere. No other filter is touched.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


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
    """

    format: str
    width: int
    height: int
    mode: str
    orientation: int = 1
    frames: int = 1

    @property
    def pixels(self) -> int:
        """Width × height."""
        return self.width * self.height


def _reject(code: str, message: str, vendor: str | None) -> InputRejectedError:
    return InputRejectedError(message, code=code, vendor=vendor, local=True)


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block is not fatal: treat as upright
        return 1
    return value if 1 <= value <= 8 else 1


def _frames(image: Image.Image) -> int:
    try:
        return max(1, int(getattr(image, "n_frames", 1) or 1))
    except Exception:  # counting frames reads the whole file; a damaged one counts as 1 here
        return 1


def read_header(data: bytes, *, vendor: str | None = None) -> ImageInfo:
    """
    Identify an image from its bytes without decoding its pixels.

    Works on a prefix of the file too (e.g. the first 64 KiB read during planning), as long as the
    prefix holds the header. Raises :class:`InputRejectedError` (``local=True``) when the bytes are
    empty or not an image Pillow knows.
    """
    if not data:
        raise _reject("empty_file", "the file is empty (0 bytes)", vendor)
    with _bomb_warnings_ignored():
        try:
            with Image.open(io.BytesIO(data)) as image:
                return ImageInfo(
                    format=image.format or "UNKNOWN",
                    width=image.width,
                    height=image.height,
                    mode=image.mode,
                    orientation=_orientation(image),
                    frames=_frames(image),
                )
        except _PASS_THROUGH:
            raise
        except Image.DecompressionBombError as exc:
            raise _reject("too_many_pixels", f"declared dimensions are absurd ({exc})", vendor) from None
        except Exception as exc:  # Pillow's parsers raise many types on hostile bytes
            raise _reject(
                "unsupported_image", f"not a readable image ({type(exc).__name__})", vendor
            ) from None


def check_size(size: int, limits: InputLimits, *, vendor: str | None = None) -> None:
    """Raise :class:`InputRejectedError` when a file of ``size`` bytes is over the vendor's limit."""
    if size > limits.max_bytes:
        raise _reject(
            "file_size_too_large",
            f"file is {size:,} bytes; the vendor's limit is {limits.max_bytes:,} bytes",
            vendor,
        )


def check_limits(info: ImageInfo, size: int, limits: InputLimits, *, vendor: str | None = None) -> None:
    """Raise :class:`InputRejectedError` naming the limit when ``info``/``size`` break ``limits``."""
    check_size(size, limits, vendor=vendor)
    if limits.max_pixels is not None and info.pixels > limits.max_pixels:
        raise _reject(
            "too_many_pixels",
            f"image is {info.width}x{info.height} = {info.pixels:,} pixels; "
            f"the vendor's limit is {limits.max_pixels:,} pixels",
            vendor,
        )
    if limits.max_side is not None and max(info.width, info.height) > limits.max_side:
        raise _reject(
            "resolution_too_high",
            f"image is {info.width}x{info.height}; the vendor's limit is {limits.max_side} px per side",
            vendor,
        )
    if min(info.width, info.height) < limits.min_side:
        raise _reject(
            "resolution_too_low",
            f"image is {info.width}x{info.height}; the vendor's minimum is {limits.min_side} px per side",
            vendor,
        )


@dataclass(frozen=True)
class PreparedInput:
    """
    An image ready to send.

    :param data: bytes to upload (the original when it needed no change).
    :param content_type: MIME type of ``data``.
    :param info: header facts of the original.
    :param converted: True when ``data`` was re-encoded (EXIF rotation applied, unusual mode or
        format converted, first frame of an animation taken).
    """

    data: bytes
    content_type: str
    info: ImageInfo
    converted: bool


def prepare_input(data: bytes, limits: InputLimits, *, vendor: str | None = None) -> PreparedInput:
    """
    Check an image fully and make it safe to send.

    * header and limits are checked first (cheap), then the pixels are decoded in full, so truncated
      or corrupt files are rejected locally instead of being paid for;
    * EXIF orientation is applied (every vendor then sees an upright image, and all vendors give the
      same orientation), CMYK, 16-bit, palette and grayscale images are converted, formats the vendor
      does not take are converted, and animations are reduced to their first frame — each of these
      re-encodes losslessly to PNG;
    * the converted image is checked against the limits again.

    The planning step calls this on objects it already holds whole, so a pre-flight rejects them
    with exactly the code and message the run would give.
    """
    info = read_header(data, vendor=vendor)
    check_limits(info, len(data), limits, vendor=vendor)
    try:
        with _bomb_warnings_ignored(), Image.open(io.BytesIO(data)) as image:
            image.load()
            needs_conversion = (
                info.orientation != 1
                or info.frames > 1
                or info.format not in limits.formats
                or image.mode not in ("RGB", "RGBA", "L", "LA")
                or (image.mode in ("L", "LA") and info.format != "PNG")
            )
            if not needs_conversion:
                return PreparedInput(data, _PILLOW_TO_MIME[info.format], info, converted=False)
            upright = ImageOps.exif_transpose(image) or image
            if upright.mode.startswith("I;16") or upright.mode == "I":
                # 16-bit grayscale: Pillow's direct conversion clips at 255 (a white image); scale.
                upright = upright.convert("I").point(lambda v: v * (1 / 256)).convert("L")
            has_alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
            upright = upright.convert("RGBA" if has_alpha else "RGB")
            out = io.BytesIO()
            upright.save(out, format="PNG", compress_level=1)
    except _PASS_THROUGH:
        raise
    except MemoryError:
        raise _reject(
            "too_many_pixels",
            f"image is {info.width}x{info.height}: not enough memory to check and convert it",
            vendor,
        ) from None
    except Exception as exc:  # Pillow's decoders raise many types on damaged data
        raise _reject("malformed_image", f"the image data is corrupt or truncated ({exc})", vendor) from None
    converted = out.getvalue()
    new_info = ImageInfo("PNG", upright.width, upright.height, upright.mode)
    check_limits(new_info, len(converted), limits, vendor=vendor)
    return PreparedInput(converted, "image/png", new_info, converted=True)


# -- vendor results --------------------------------------------------------------------------------


def _unusable(code: str, message: str, vendor: str | None) -> InvalidVendorResponseError:
    return InvalidVendorResponseError(message, vendor=vendor, code=code, possibly_charged=True)


def _describe_body(data: bytes) -> tuple[str, str]:
    """``(code, what the body is)`` for a body that is not an image of :data:`RESULT_FORMATS`."""
    head = data[:4096].lstrip()
    if head[:1] in (b"{", b"["):
        try:
            json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        else:
            return "result_unreadable", "a JSON document, not an image"
    if head[:1] == b"<":
        return "result_unreadable", "an HTML/XML document, not an image"
    try:
        with _bomb_warnings_ignored(), Image.open(io.BytesIO(data)) as other:
            kind = other.format or "unknown"
    except _PASS_THROUGH:
        raise
    except Exception:
        return "result_unreadable", "not a complete image (its header is unreadable)"
    return "result_wrong_type", f"a {kind} image; vendors return PNG, JPEG or WebP"


def _check_result_size(
    width: int, height: int, limits: ResultLimits, vendor: str | None, *, what: str
) -> None:
    too_wide = limits.max_side is not None and max(width, height) > limits.max_side
    if width * height > limits.max_pixels or too_wide:
        raise _unusable(
            "result_too_large",
            f"{what} is {width}x{height} = {width * height:,} pixels, over the "
            f"{limits.describe()} accepted from {vendor or 'this vendor'} ({limits.basis}); "
            "refused without decoding it",
            vendor,
        )


def decode_result(data: bytes, *, vendor: str, limits: ResultLimits | None = None) -> Image.Image:
    """
    Decode a vendor's result fully; any unusable body raises :class:`InvalidVendorResponseError`.

    The body must be a PNG, JPEG or WebP (:data:`RESULT_FORMATS`) whose declared size is within
    ``limits``; the size is checked from the header before any pixel is decoded. An animation is
    decoded to its first frame (an MPO's first picture is reported as the JPEG it is). The mode is
    the file's own (``RGBA``, ``P``, ``I;16``, ``CMYK``…): :func:`normalise_mode` converts it.

    :param data: the reply body.
    :param vendor: vendor name (for the limits and the error).
    :param limits: result limits; defaults to :func:`result_limits` of ``vendor``.
    :raises InvalidVendorResponseError: code ``result_empty``, ``result_unreadable``,
        ``result_wrong_type`` or ``result_too_large``.
    """
    limits = limits or result_limits(vendor)
    if not data:
        raise _unusable("result_empty", "the vendor returned an empty body", vendor)
    size = "its declared size"
    try:
        with _bomb_warnings_ignored():
            try:
                image = Image.open(io.BytesIO(data), formats=_RESULT_READERS)
            except UnidentifiedImageError:
                code, what = _describe_body(data)
                raise _unusable(code, f"the vendor's result is {what}", vendor) from None
            size = f"{image.width}x{image.height}"
            _check_result_size(image.width, image.height, limits, vendor, what="the vendor's result")
            image.load()
            if image.format == "MPO":
                image.format = "JPEG"
    except _PASS_THROUGH:
        raise
    except Image.DecompressionBombError:
        raise _unusable(
            "result_too_large",
            "the vendor's result declares more pixels than can be decoded safely (a decompression "
            f"bomb); refused without decoding it. At most {limits.describe()} are accepted from "
            f"{vendor} ({limits.basis})",
            vendor,
        ) from None
    except MemoryError:
        raise _unusable(
            "result_too_large",
            f"not enough memory to decode the vendor's {size} result",
            vendor,
        ) from None
    except Exception as exc:  # Pillow's decoders raise many types on damaged data
        raise _unusable(
            "result_unreadable",
            f"the vendor's result is not a complete image ({type(exc).__name__}: "
            f"{safe_excerpt(str(exc), 120) or 'no details'})",
            vendor,
        ) from None
    return image


def normalise_mode(image: Image.Image) -> Image.Image:
    """
    ``image`` in a mode every local step handles: ``RGB``, ``RGBA``, ``L`` or ``LA`` (8 bits).

    16-bit and 32-bit grayscale are scaled (not clipped) to 8 bits; palette, bilevel, CMYK and other
    colour spaces are converted, keeping transparency (a palette's or a ``tRNS`` colour) as alpha.

    :param image: a decoded image.
    """
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA") and not (mode in ("RGB", "L") and "transparency" in image.info):
        return image
    if mode.startswith("I;16") or mode == "I":
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode == "F":
        return image.convert("L")  # clipped to 0-255
    if mode == "La":
        return image.convert("LA")
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def _margin_box(bbox: tuple[int, int, int, int], margin: Margin | None) -> tuple[int, int, int, int]:
    left, top, right, bottom = bbox
    if margin is None:
        return bbox
    width, height = right - left, bottom - top
    return (
        left - margin.left.resolve(width),
        top - margin.top.resolve(height),
        right + margin.right.resolve(width),
        bottom + margin.bottom.resolve(height),
    )


def encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    """Encode ``image`` as ``png``, ``jpeg`` or ``webp``."""
    out = io.BytesIO()
    if fmt == "jpeg":
        if image.mode != "RGB":
            image = flatten(image, "#ffffff")
        image.save(out, format="JPEG", quality=quality, optimize=False)
    elif fmt == "webp":
        image.save(out, format="WEBP", quality=quality, method=4)
    else:
        image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def flatten(image: Image.Image, color: str) -> Image.Image:
    """Composite ``image`` over an opaque colour."""
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, color)
    base.alpha_composite(rgba)
    return base.convert("RGB")


def apply_local_steps(
    data: bytes, steps: LocalSteps, *, vendor: str, limits: ResultLimits | None = None
) -> tuple[bytes, str, int, int]:
    """
    Run the local post-processing on a vendor result.

    The result is decoded with :func:`decode_result`, converted with :func:`normalise_mode`, then
    cropped (with the margin), flattened, resized and encoded. A crop whose margin would make the
    output larger than ``limits`` is refused before it is allocated. Any failure of these steps is
    an :class:`InvalidVendorResponseError` (``local_processing_failed``, or ``result_too_large`` when
    memory runs out): the call was billed, the image fails alone. A cut-out without foreground to
    crop to stays :class:`InputRejectedError` (``unknown_foreground``).

    :param data: the vendor's reply body.
    :param steps: the local steps.
    :param vendor: vendor name.
    :param limits: result limits; defaults to :func:`result_limits` of ``vendor``.
    :return: ``(bytes, content_type, width, height)``.
    """
    limits = limits or result_limits(vendor)
    image = decode_result(data, vendor=vendor, limits=limits)
    vendor_format = "jpeg" if image.format == "JPEG" else (image.format or "PNG").lower()
    received = f"{image.width}x{image.height} {image.mode}"
    step = "mode conversion"
    try:
        with _bomb_warnings_ignored():
            image = normalise_mode(image)
            if steps.crop:
                step = "crop"
                rgba = image.convert("RGBA")
                bbox = rgba.getchannel("A").getbbox()
                if bbox is None:
                    raise InputRejectedError(
                        "the vendor found no foreground to crop to", vendor=vendor, code="unknown_foreground"
                    )
                left, top, right, bottom = _margin_box(bbox, steps.margin)
                _check_result_size(
                    right - left, bottom - top, limits, vendor, what="the crop with its margin"
                )
                image = rgba.crop((left, top, right, bottom))  # outside the image becomes transparent
            if steps.background_color:
                step = "background flattening"
                image = flatten(image, steps.background_color)
            if steps.max_size:
                step = "resize"
                image = image.copy()
                image.thumbnail(steps.max_size, Image.Resampling.LANCZOS)
            fmt = steps.output_format or vendor_format
            fmt = "jpeg" if fmt == "jpg" else fmt
            step = f"{fmt} encoding"
            content = encode(image, fmt, steps.quality)
            content_type = CONTENT_TYPES[fmt]
    except _PASS_THROUGH:  # our typed errors (unknown_foreground, result_too_large) included
        raise
    except MemoryError:
        raise _unusable(
            "result_too_large",
            f"not enough memory for the local {step} of the vendor's {received} result",
            vendor,
        ) from None
    except Exception as exc:
        raise _unusable(
            "local_processing_failed",
            f"the local {step} of the vendor's {received} result failed ({type(exc).__name__}: "
            f"{safe_excerpt(str(exc), 120) or 'no details'}); the call was billed",
            vendor,
        ) from None
    return content, content_type, image.width, image.height
