"""Local image work with Pillow: input checks before spending, and post-processing after the call.

Everything here is CPU-bound and synchronous; async callers run it in a worker thread.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from airflow_provider_bgremoval.exceptions import InputRejectedError, InvalidVendorResponseError
from airflow_provider_bgremoval.options import CONTENT_TYPES, LocalSteps, Margin

#: Formats any vendor accepts as input; others are converted to PNG before sending (see
#: :func:`prepare_input`) or rejected when they cannot be decoded.
_PILLOW_TO_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_EXIF_ORIENTATION = 0x0112


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


def read_header(data: bytes, *, vendor: str | None = None) -> ImageInfo:
    """
    Identify an image from its bytes without decoding its pixels.

    Works on a prefix of the file too (e.g. the first 64 KiB read during planning), as long as the
    prefix holds the header. Raises :class:`InputRejectedError` (``local=True``) when the bytes are
    empty or not an image Pillow knows.
    """
    if not data:
        raise _reject("empty_file", "the file is empty (0 bytes)", vendor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                orientation = 1
                try:
                    orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
                except Exception:  # a broken EXIF block is not fatal: treat as upright
                    orientation = 1
                return ImageInfo(
                    format=image.format or "UNKNOWN",
                    width=image.width,
                    height=image.height,
                    mode=image.mode,
                    orientation=orientation if 1 <= orientation <= 8 else 1,
                    frames=int(getattr(image, "n_frames", 1) or 1),
                )
        except Image.DecompressionBombError as exc:
            raise _reject("too_many_pixels", f"declared dimensions are absurd ({exc})", vendor) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
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
    """
    info = read_header(data, vendor=vendor)
    check_limits(info, len(data), limits, vendor=vendor)
    try:
        with Image.open(io.BytesIO(data)) as image:
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
    except InputRejectedError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _reject("malformed_image", f"the image data is corrupt or truncated ({exc})", vendor) from None
    converted = out.getvalue()
    new_info = ImageInfo("PNG", upright.width, upright.height, upright.mode)
    check_limits(new_info, len(converted), limits, vendor=vendor)
    return PreparedInput(converted, "image/png", new_info, converted=True)


def decode_result(data: bytes, *, vendor: str) -> Image.Image:
    """Decode a vendor's result fully; an empty, truncated or non-image body is a vendor fault."""
    if not data:
        raise InvalidVendorResponseError("the vendor returned an empty body", vendor=vendor)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise InvalidVendorResponseError(
            f"the vendor's result is not a complete image ({type(exc).__name__})", vendor=vendor
        ) from None
    return image


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


def apply_local_steps(data: bytes, steps: LocalSteps, *, vendor: str) -> tuple[bytes, str, int, int]:
    """
    Run the local post-processing on a vendor result.

    :return: ``(bytes, content_type, width, height)``.
    """
    image = decode_result(data, vendor=vendor)
    if steps.crop:
        rgba = image.convert("RGBA")
        bbox = rgba.getchannel("A").getbbox()
        if bbox is None:
            raise InputRejectedError(
                "the vendor found no foreground to crop to", vendor=vendor, code="unknown_foreground"
            )
        image = rgba.crop(_margin_box(bbox, steps.margin))  # outside the image becomes transparent
    if steps.background_color:
        image = flatten(image, steps.background_color)
    if steps.max_size:
        image = image.copy()
        image.thumbnail(steps.max_size, Image.Resampling.LANCZOS)
    fmt = steps.output_format or (image.format or "PNG").lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    return encode(image, fmt, steps.quality), CONTENT_TYPES[fmt], image.width, image.height
