"""Decoder of Pixian's ``delta_png`` output format (VENDORS.md §3.3; rules: docs/vendors/pixian.md).

Whole-image Pillow operations (``point`` tables, ``ImageChops.darker``, a masked ``paste``), i.e. in C.
"""

from __future__ import annotations

import io

from PIL import Image, ImageChops, UnidentifiedImageError

from airflow_provider_bgremoval.imaging import (
    bomb_warnings_ignored,
    exif_orientation,
    input_formats,
    normalise_mode,
)

#: EXIF orientation -> the transposition that makes the image upright (as ``ImageOps.exif_transpose``)
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: look-up tables for ``Image.point`` on 8-bit channels
#: orientations that swap width and height
_TURNED = frozenset({5, 6, 7, 8})
_IS_ZERO = [255] + [0] * 255
_IS_FULL = [0] * 255 + [255]
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DeltaPngError(ValueError):
    """The delta PNG and the original cannot be combined (not an image, no alpha, sizes differ)."""


def _open(data: bytes | Image.Image, what: str, formats: tuple[str, ...]) -> Image.Image:
    """``data`` opened with one of Pillow's ``formats`` readers, its header read, no pixel decoded."""
    if isinstance(data, Image.Image):
        return data
    if not data:
        raise DeltaPngError(f"the {what} is empty")
    try:
        with bomb_warnings_ignored():
            return Image.open(io.BytesIO(data), formats=formats)
    except _READ_ERRORS as exc:
        raise DeltaPngError(f"the {what} is not a readable image ({type(exc).__name__})") from None


def _load(image: Image.Image, what: str) -> Image.Image:
    try:
        with bomb_warnings_ignored():
            image.load()
    except _READ_ERRORS as exc:
        raise DeltaPngError(f"the {what} is not a readable image ({type(exc).__name__})") from None
    return image


def apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """
    Return ``image`` turned upright for an EXIF ``orientation`` (1-8; other values: unchanged).

    :param image: the image as stored.
    :param orientation: the EXIF orientation tag value.
    """
    method = _TRANSPOSE.get(int(orientation))
    return image if method is None else image.transpose(method)


def _rgb_profile(source: Image.Image) -> bytes | None:
    """The original's ICC profile when it describes RGB pixels (a CMYK or grey one describes none here)."""
    icc = source.info.get("icc_profile")
    return icc if isinstance(icc, bytes) and icc[16:20] == b"RGB " else None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def decode_delta_png(
    delta: bytes | Image.Image,
    original: bytes | Image.Image,
    *,
    orientation: int | None = None,
) -> Image.Image:
    """
    Rebuild the full RGBA cut-out from a delta PNG and the original input image.

    :param delta: the delta PNG (bytes as returned by Pixian, or an opened image).
    :param original: the input image exactly as it was sent (bytes or an opened image).
    :param orientation: the EXIF orientation Pixian applied (``X-Input-Orientation``); ``None`` reads
        the original's EXIF.
    :return: an ``RGBA`` image the size of the delta PNG (:class:`DeltaPngError` when it cannot be);
        it carries the delta's ICC profile, else the original's: the copied pixels are the original's
        values, in its colour space.
    """
    delta_image = _open(delta, "delta PNG", ("PNG",))
    if not _has_alpha(delta_image):
        raise DeltaPngError(f"the delta PNG has no alpha channel (mode {delta_image.mode})")
    source = _load(_open(original, "original image", input_formats()), "original image")
    turn = exif_orientation(source) if orientation is None else orientation
    width, height = source.size
    upright_size = (height, width) if turn in _TURNED else (width, height)
    if upright_size != delta_image.size:  # before the delta is decoded: it may declare any size
        raise DeltaPngError(
            f"the delta PNG is {delta_image.width}x{delta_image.height} but the original is "
            f"{upright_size[0]}x{upright_size[1]} (orientation {turn}); was the input shrunk by max_pixels?"
        )
    _load(delta_image, "delta PNG")
    upright = normalise_mode(apply_orientation(source, turn))  # 16-bit grey scaled, as for sending
    fresh = delta_image is not delta and delta_image.mode == "RGBA"
    result = delta_image if fresh else delta_image.convert("RGBA")  # a copy: the caller's image is kept
    red, green, blue, alpha = result.split()
    transparent = alpha.point(_IS_ZERO)
    white = ImageChops.darker(ImageChops.darker(red, green), blue).point(_IS_FULL)
    copy_original = ImageChops.darker(transparent, white)  # 255 exactly where alpha = 0 and white, else 0
    # Pasting an RGB image into an RGBA one through a 0/255 mask copies the colour with alpha 255
    # where the mask is 255 and leaves every other pixel untouched: the decoding rule, exactly.
    result.paste(upright if upright.mode == "RGB" else upright.convert("RGB"), (0, 0), copy_original)
    profile = delta_image.info.get("icc_profile") or _rgb_profile(source)
    if profile:
        result.info["icc_profile"] = profile
    return result
