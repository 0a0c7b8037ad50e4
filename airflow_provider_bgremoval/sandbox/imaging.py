"""Image work of the sandbox: decoding, a real (classical) background remover, layout and encoding.

The remover is meant for what product photos usually are: a subject on a plain, gradient or lightly
textured backdrop. It

1. models the backdrop from the image border with a per-channel quadratic surface
   ``c(u, v) = a + b·u + c·v + d·uv + e·u² + f·v²`` fitted by (iteratively re-weighted) least
   squares, so plain backdrops, linear/bilinear gradients and vignettes are all modelled;
2. measures each pixel's colour distance from the modelled backdrop, with a threshold derived from
   the spread of the border's residuals (noise/texture raise the threshold; a median filter is
   applied first when the border is noisy);
3. cleans the mask with small morphological closing/opening (Pillow ``MinFilter``/``MaxFilter``)
   and removes tiny speckles; and
4. feathers the edge with a small Gaussian blur.

An input that already carries a meaningful alpha channel is respected as-is. When nothing stands
out from the backdrop, :func:`segment` returns ``None`` (the vendors' ``unknown_foreground``).
Only Pillow is used (no numpy); everything is whole-image C operations, so a 600x400 image takes a
few tens of milliseconds.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageMath, ImageOps

#: Largest side processed at full resolution; larger inputs are segmented on a reduced copy and
#: the mask is scaled back up.
WORK_MAX_SIDE = 1600
#: Minimum foreground share of the image (after clean-up) to count as "a subject was found".
MIN_FOREGROUND_FRACTION = 0.0005


class ImageDecodeError(Exception):
    """The bytes are not an image Pillow can decode."""


@dataclass
class Decoded:
    """A decoded, EXIF-oriented input image.

    :param image: the image, mode ``RGB`` or ``RGBA``
    :param format: the container format reported by Pillow (``PNG``, ``JPEG``, ``WEBP``...)
    :param orientation: the EXIF orientation tag that was applied (1 when absent)
    """

    image: Image.Image
    format: str
    orientation: int


def probe(data: bytes) -> tuple[str, tuple[int, int]]:
    """Read an image's format and size from its header only.

    :param data: the encoded image
    :raises ImageDecodeError: when the bytes are not an image
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format or ""), img.size
    except Image.DecompressionBombError:
        return "BOMB", (1 << 30, 1 << 30)
    except Exception as exc:
        raise ImageDecodeError(str(exc)) from exc


def decode(data: bytes, max_pixels: int | None = None) -> Decoded:
    """Decode an image, apply its EXIF orientation and convert it to RGB/RGBA.

    :param data: the encoded image
    :param max_pixels: shrink (keeping the aspect ratio) to at most this many pixels
    :raises ImageDecodeError: when the bytes cannot be decoded
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = str(img.format or "")
            orientation = int(img.getexif().get(0x0112, 1) or 1)
            if max_pixels is not None and img.width * img.height > max_pixels and fmt == "JPEG":
                factor = math.sqrt(max_pixels / (img.width * img.height))
                img.draft("RGB", (max(1, int(img.width * factor)), max(1, int(img.height * factor))))
            img.load()
            oriented = ImageOps.exif_transpose(img)
            has_alpha = oriented.mode in ("RGBA", "LA", "PA") or (
                oriented.mode == "P" and "transparency" in oriented.info
            )
            out = oriented.convert("RGBA" if has_alpha else "RGB")
    except Exception as exc:
        raise ImageDecodeError(str(exc)) from exc
    if orientation not in range(1, 9):
        orientation = 1
    return Decoded(out, fmt, orientation)


def shrink_to_pixels(img: Image.Image, max_pixels: int) -> Image.Image:
    """Shrink ``img`` so that ``width x height <= max_pixels`` (no-op when already small enough).

    :param img: the image
    :param max_pixels: the pixel budget
    """
    w, h = img.size
    if w * h <= max_pixels:
        return img
    factor = math.sqrt(max_pixels / (w * h))
    nw, nh = max(1, int(w * factor)), max(1, int(h * factor))
    while nw * nh > max_pixels:
        nw, nh = max(1, nw - 1), max(1, nh - 1)
    return img.resize((nw, nh), Image.Resampling.LANCZOS)


def cap_longest_side(img: Image.Image, cap: int) -> Image.Image:
    """Downscale so the longest side is at most ``cap`` (never enlarges).

    :param img: the image
    :param cap: the maximum length of the longest side
    """
    w, h = img.size
    if max(w, h) <= cap:
        return img
    factor = cap / max(w, h)
    return img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------


def has_meaningful_alpha(img: Image.Image) -> bool:
    """Return whether ``img``'s alpha channel actually separates a subject from a background.

    At least 0.5% of the pixels must be (nearly) transparent and at least 0.05% (nearly) opaque;
    a few stray transparent pixels (e.g. anti-aliased corners) do not count.

    :param img: the image
    """
    if img.mode != "RGBA":
        return False
    hist = img.getchannel("A").histogram()
    total = img.width * img.height
    transparent = sum(hist[:64])
    opaque = sum(hist[192:])
    return transparent >= 0.005 * total and opaque >= MIN_FOREGROUND_FRACTION * total


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Solve a small dense linear system by Gaussian elimination with partial pivoting."""
    n = len(vector)
    a = [[*row[:], vector[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        if abs(a[col][col]) < 1e-12:
            continue
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            if f:
                for c in range(col, n + 1):
                    a[r][c] -= f * a[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        if abs(a[r][r]) < 1e-12:
            continue
        x[r] = (a[r][n] - sum(a[r][c] * x[c] for c in range(r + 1, n))) / a[r][r]
    return x


def _features(u: float, v: float) -> list[float]:
    return [1.0, u, v, u * v, u * u, v * v]


def _border_samples(rgb: Image.Image) -> list[tuple[float, float, tuple[int, int, int]]]:
    """Average colours of small cells along the four borders, with normalised positions."""
    w, h = rgb.size
    band = max(1, min(w, h) // 100)
    samples: list[tuple[float, float, tuple[int, int, int]]] = []
    nx, ny = min(24, w), min(24, h)
    strips = (
        (rgb.crop((0, 0, w, band)).resize((nx, 1), Image.Resampling.BOX), "h", band / 2),
        (rgb.crop((0, h - band, w, h)).resize((nx, 1), Image.Resampling.BOX), "h", h - band / 2),
        (rgb.crop((0, 0, band, h)).resize((1, ny), Image.Resampling.BOX), "v", band / 2),
        (rgb.crop((w - band, 0, w, h)).resize((1, ny), Image.Resampling.BOX), "v", w - band / 2),
    )
    for strip, axis, fixed in strips:
        data = strip.tobytes()
        count = strip.width * strip.height
        for i in range(count):
            px = (data[3 * i], data[3 * i + 1], data[3 * i + 2])
            if axis == "h":
                x, y = (i + 0.5) * w / count, fixed
            else:
                x, y = fixed, (i + 0.5) * h / count
            samples.append((x / w - 0.5, y / h - 0.5, px))
    return samples


def fit_backdrop(rgb: Image.Image) -> list[list[float]]:
    """Fit the quadratic backdrop model to the border, ignoring border cells the subject touches.

    :param rgb: the image (mode RGB)
    :returns: per channel, the six coefficients of ``1, u, v, uv, u², v²``
    """
    samples = _border_samples(rgb)
    feats = [_features(u, v) for u, v, _ in samples]
    weights = [1.0] * len(samples)
    coeffs: list[list[float]] = [[0.0] * 6 for _ in range(3)]
    for _ in range(3):
        ata = [[0.0] * 6 for _ in range(6)]
        atb = [[0.0] * 6 for _ in range(3)]
        for (_u, _v, px), f, wt in zip(samples, feats, weights, strict=True):
            if wt == 0:
                continue
            for i in range(6):
                fi = f[i]
                row = ata[i]
                for j in range(i, 6):
                    row[j] += fi * f[j]
                atb[0][i] += fi * px[0]
                atb[1][i] += fi * px[1]
                atb[2][i] += fi * px[2]
        for i in range(6):
            for j in range(i):
                ata[i][j] = ata[j][i]
            ata[i][i] += 1e-6
        coeffs = [_solve(ata, atb[c]) for c in range(3)]
        k0, k1, k2 = coeffs
        residuals = []
        for (_u, _v, px), f in zip(samples, feats, strict=True):
            d0 = sum(a * b for a, b in zip(k0, f, strict=True)) - px[0]
            d1 = sum(a * b for a, b in zip(k1, f, strict=True)) - px[1]
            d2 = sum(a * b for a, b in zip(k2, f, strict=True)) - px[2]
            residuals.append(math.sqrt(d0 * d0 + d1 * d1 + d2 * d2))
        ordered = sorted(residuals)
        median = ordered[len(ordered) // 2]
        cutoff = max(4.0 * median, 12.0)
        new_weights = [1.0 if r <= cutoff else 0.0 for r in residuals]
        if sum(new_weights) < 12 or new_weights == weights:
            break
        weights = new_weights
    return coeffs


@lru_cache(maxsize=32)
def _ramps(w: int, h: int) -> tuple[Image.Image, Image.Image, Image.Image, Image.Image, Image.Image]:
    """Float images of ``u``, ``v``, ``uv``, ``u²``, ``v²`` (normalised pixel-centre coordinates)."""
    row = array("f", [(x + 0.5) / w - 0.5 for x in range(w)])
    col = array("f", [(y + 0.5) / h - 0.5 for y in range(h)])
    u = Image.frombytes("F", (w, 1), row.tobytes()).resize((w, h), Image.Resampling.NEAREST)
    v = Image.frombytes("F", (1, h), col.tobytes()).resize((w, h), Image.Resampling.NEAREST)
    uv = ImageMath.lambda_eval(lambda a: a["u"] * a["v"], u=u, v=v)
    uu = ImageMath.lambda_eval(lambda a: a["u"] * a["u"], u=u)
    vv = ImageMath.lambda_eval(lambda a: a["v"] * a["v"], v=v)
    return u, v, uv, uu, vv


def backdrop_image(size: tuple[int, int], coeffs: list[list[float]]) -> Image.Image:
    """Render the fitted backdrop model as an RGB image.

    :param size: the image size
    :param coeffs: the model from :func:`fit_backdrop`
    """
    w, h = size
    u, v, uv, uu, vv = _ramps(w, h)
    bands = []
    for k in coeffs:
        if max(abs(x) for x in k[1:]) < 0.5:
            bands.append(Image.new("L", size, max(0, min(255, round(k[0])))))
            continue

        def surface(a: dict[str, Any], k: list[float] = k) -> Any:
            return a["u"] * k[1] + a["v"] * k[2] + a["uv"] * k[3] + a["uu"] * k[4] + a["vv"] * k[5] + k[0]

        band = ImageMath.lambda_eval(
            surface,
            u=u,
            v=v,
            uv=uv,
            uu=uu,
            vv=vv,
        )
        bands.append(band.convert("L"))
    return Image.merge("RGB", bands)


def _percentile(hist: list[int], q: float) -> int:
    total = sum(hist)
    if total == 0:
        return 0
    target = q * total
    acc = 0
    for value, count in enumerate(hist):
        acc += count
        if acc >= target:
            return value
    return len(hist) - 1


def _distance(a: Image.Image, b: Image.Image) -> Image.Image:
    """Per-pixel colour distance (max of the channel differences plus a share of the others), mode L."""
    diff = ImageChops.difference(a, b)
    r, g, bl = diff.split()
    peak = ImageChops.lighter(ImageChops.lighter(r, g), bl)
    # Sum of channels / 3 adds sensitivity to colour shifts spread over channels.
    mean = diff.convert("L", matrix=(1 / 3, 1 / 3, 1 / 3, 0))
    return ImageChops.add(peak, mean, scale=1.5)


def _border_hist(dist: Image.Image) -> list[int]:
    w, h = dist.size
    band = max(1, min(w, h) // 100)
    hist = [0] * 256
    for box in ((0, 0, w, band), (0, h - band, w, h), (0, 0, band, h), (w - band, 0, w, h)):
        for i, n in enumerate(dist.crop(box).histogram()):
            hist[i] += n
    return hist


def segment(img: Image.Image) -> Image.Image | None:
    """Return the subject's alpha matte (mode L), or ``None`` when nothing stands out.

    :param img: the input (RGB or RGBA); a meaningful alpha channel is returned as-is
    """
    if has_meaningful_alpha(img):
        return img.getchannel("A")
    full_size = img.size
    rgb = img.convert("RGB")
    if max(full_size) > WORK_MAX_SIDE:
        rgb = cap_longest_side(rgb, WORK_MAX_SIDE)
    w, h = rgb.size
    if w < 8 or h < 8:
        return None
    coeffs = fit_backdrop(rgb)
    model = backdrop_image((w, h), coeffs)
    dist = _distance(rgb, model)
    border = _border_hist(dist)
    noise = _percentile(border, 0.5)
    noisy = noise > 6
    if noisy:
        dist = _distance(rgb.filter(ImageFilter.BoxBlur(1)), model)
        noise = _percentile(_border_hist(dist), 0.5)
    threshold = int(min(140, max(36, 3.5 * noise + 24)))
    mask = dist.point(lambda d: 255 if d > threshold else 0)
    # Clean-up: close 1-px gaps, then (on noisy backdrops) open to remove speckles.
    mask = _erode(_dilate(mask))
    if noisy:
        mask = _dilate(_erode(mask))
    if noisy:  # speckles come from texture/noise; clean backdrops skip the (pure-Python) labelling
        mask = _drop_specks(mask)
    if mask.histogram()[255] < max(4, MIN_FOREGROUND_FRACTION * w * h):
        return None
    if (w, h) != full_size:
        mask = mask.resize(full_size, Image.Resampling.BILINEAR).point(lambda a: 255 if a >= 128 else 0)
    return mask.filter(ImageFilter.BoxBlur(0.7))  # feathered edge (one cheap pass)


def _dilate(mask: Image.Image) -> Image.Image:
    """3x3 dilation (max filter) from shifted copies; much faster than ``MaxFilter``."""
    row = ImageChops.lighter(
        mask, ImageChops.lighter(ImageChops.offset(mask, 1, 0), ImageChops.offset(mask, -1, 0))
    )
    return ImageChops.lighter(
        row, ImageChops.lighter(ImageChops.offset(row, 0, 1), ImageChops.offset(row, 0, -1))
    )


def _erode(mask: Image.Image) -> Image.Image:
    """3x3 erosion (min filter) from shifted copies; much faster than ``MinFilter``."""
    row = ImageChops.darker(
        mask, ImageChops.darker(ImageChops.offset(mask, 1, 0), ImageChops.offset(mask, -1, 0))
    )
    return ImageChops.darker(
        row, ImageChops.darker(ImageChops.offset(row, 0, 1), ImageChops.offset(row, 0, -1))
    )


def _drop_specks(mask: Image.Image) -> Image.Image:
    """Remove foreground blobs much smaller than the largest one (done on a reduced copy)."""
    w, h = mask.size
    scale = max(1, math.ceil(max(w, h) / 80))
    sw, sh = max(1, w // scale), max(1, h // scale)
    small = mask.resize((sw, sh), Image.Resampling.BOX).point(lambda a: 1 if a >= 64 else 0)
    data = bytearray(small.tobytes())
    labels = [0] * (sw * sh)
    sizes: list[int] = [0]
    for start in range(sw * sh):
        if not data[start] or labels[start]:
            continue
        label = len(sizes)
        labels[start] = label
        stack = [start]
        count = 0
        while stack:
            p = stack.pop()
            count += 1
            x, y = p % sw, p // sw
            for q, ok in ((p - 1, x > 0), (p + 1, x < sw - 1), (p - sw, y > 0), (p + sw, y < sh - 1)):
                if ok and data[q] and not labels[q]:
                    labels[q] = label
                    stack.append(q)
        sizes.append(count)
    if len(sizes) <= 2:
        return mask
    largest = max(sizes)
    small_labels = {i for i, n in enumerate(sizes) if i and n < max(2, 0.01 * largest)}
    if not small_labels:
        return mask
    erase = bytes(255 if labels[i] in small_labels else 0 for i in range(sw * sh))
    erase_img = Image.frombytes("L", (sw, sh), erase).resize((w, h), Image.Resampling.NEAREST)
    erase_img = _dilate(erase_img)
    return ImageChops.subtract(mask, erase_img)


def cutout(img: Image.Image, alpha: Image.Image) -> Image.Image:
    """Return the RGBA cut-out: the input colours with ``alpha``.

    :param img: the input image
    :param alpha: the matte from :func:`segment`
    """
    out = img.convert("RGBA") if img.mode != "RGBA" else img.copy()
    out.putalpha(alpha)
    return out


def foreground_bbox(alpha: Image.Image) -> tuple[int, int, int, int] | None:
    """Return ``(left, top, right, bottom)`` of the non-transparent pixels, or ``None``.

    :param alpha: a matte (mode L)
    """
    return alpha.point(lambda a: 255 if a >= 8 else 0).getbbox()


# --------------------------------------------------------------------------------------------
# Layout, colours, effects
# --------------------------------------------------------------------------------------------


def expand(img: Image.Image, top: int, right: int, bottom: int, left: int) -> Image.Image:
    """Add transparent margins around an RGBA image.

    :param img: the image
    :param top: margin in px
    :param right: margin in px
    :param bottom: margin in px
    :param left: margin in px
    """
    if not (top or right or bottom or left):
        return img
    canvas = Image.new("RGBA", (img.width + left + right, img.height + top + bottom), (0, 0, 0, 0))
    canvas.paste(img, (left, top))
    return canvas


def fit_into(
    img: Image.Image, size: tuple[int, int], inset: tuple[int, int, int, int], valign: str
) -> Image.Image:
    """Scale ``img`` to fit a canvas of ``size`` minus an inset, centred horizontally.

    :param img: an RGBA image
    :param size: the canvas size
    :param inset: ``(top, right, bottom, left)`` px kept free inside the canvas
    :param valign: ``top``, ``middle`` or ``bottom``
    """
    tw, th = size
    top, right, bottom, left = inset
    iw, ih = max(1, tw - left - right), max(1, th - top - bottom)
    factor = min(iw / img.width, ih / img.height)
    nw, nh = max(1, round(img.width * factor)), max(1, round(img.height * factor))
    scaled = img.resize((nw, nh), Image.Resampling.LANCZOS) if (nw, nh) != img.size else img
    x = left + (iw - nw) // 2
    y = top + {"top": 0, "middle": (ih - nh) // 2, "bottom": ih - nh}[valign]
    canvas = Image.new("RGBA", (tw, th), (0, 0, 0, 0))
    canvas.paste(scaled, (x, y))
    return canvas


def flatten(img: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Composite an RGBA image onto an opaque colour; returns RGB.

    :param img: the RGBA image
    :param color: the background colour
    """
    base = Image.new("RGBA", img.size, (*color, 255))
    return Image.alpha_composite(base, img.convert("RGBA")).convert("RGB")


def add_shadow(img: Image.Image, opacity: float, size: float, x: float, y: float, z: float) -> Image.Image:
    """Add a soft cast shadow under an RGBA cut-out (Pixelcut ``shadow``).

    The shadow falls away from the light: a light at ``(x, y)`` (-1..1 from the centre; negative y
    is above) casts it towards ``(-x, -y)``; a higher light (``z``) casts a shorter shadow and a
    bigger light (``size``) a softer one.

    :param img: the cut-out
    :param opacity: final shadow opacity 0..1
    :param size: light source size 0..1
    :param x: light position
    :param y: light position
    :param z: light height 0..2
    """
    w, h = img.size
    alpha = img.getchannel("A")
    reach = 0.12 / (0.35 + z)
    dx, dy = round(-x * w * reach), round(-y * h * reach)
    shadow = Image.new("L", (w, h), 0)
    shadow.paste(alpha, (dx, dy))
    radius = 1.5 + size * 0.05 * max(w, h)
    shadow = shadow.filter(ImageFilter.GaussianBlur(radius)).point(lambda a: round(a * opacity))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    layer.putalpha(shadow)
    return Image.alpha_composite(layer, img)


def watermark(img: Image.Image) -> Image.Image:
    """Embed a visible test watermark (Pixian ``test=true``) without touching transparency.

    :param img: an RGB or RGBA result
    """
    out = img.copy()
    w, h = out.size
    overlay = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(overlay)
    step = max(24, min(w, h) // 6)
    for offset in range(-h, w, step):
        draw.line([(offset, h), (offset + h, 0)], fill=255, width=max(2, step // 10))
    for ty in range(step // 2, h, step):
        for tx in range(0, w, step * 3):
            draw.text((tx, ty), "PIXIAN TEST", fill=255)
    rgb = out.convert("RGB")
    tinted = Image.blend(rgb, Image.new("RGB", (w, h), (255, 255, 255)), 0.45)
    rgb.paste(tinted, mask=overlay)
    if out.mode == "RGBA":
        rgb = rgb.convert("RGBA")
        rgb.putalpha(out.getchannel("A"))
    return rgb


def delta_png_image(result: Image.Image) -> Image.Image:
    """Encode a full cut-out as Pixian's Delta PNG image (VENDORS.md §3.3).

    Background (alpha 0) becomes ``0x00000000``, solid foreground (alpha 255) becomes transparent
    white ``0x00FFFFFF`` ("copy the input pixel"), and partly transparent pixels keep their ARGB.

    :param result: the RGBA cut-out, the same size as the input
    """
    out = result.convert("RGBA").copy()
    alpha = out.getchannel("A")
    out.paste((255, 255, 255, 0), mask=alpha.point(lambda a: 255 if a == 255 else 0))
    out.paste((0, 0, 0, 0), mask=alpha.point(lambda a: 255 if a == 0 else 0))
    return out


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """Encode ``img`` as ``png``, ``jpeg`` or ``webp``.

    :param img: the image (RGBA is flattened onto white for JPEG)
    :param fmt: ``png``, ``jpeg`` or ``webp``
    :param quality: JPEG/WebP quality 1..100
    """
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    elif fmt == "jpeg":
        (flatten(img, (255, 255, 255)) if img.mode == "RGBA" else img.convert("RGB")).save(
            buf, "JPEG", quality=quality
        )
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality, method=0)
    else:  # pragma: no cover - callers validate
        raise ValueError(fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Generated scenes (Pixelcut generate-background)
# --------------------------------------------------------------------------------------------

#: Scene presets the sandbox renders for generate-background's ``scene``.
SCENES = ("marble", "wood", "industrial", "linen", "brick", "counter")
SCENE_SIZE = 1024


def _noise(rng: random.Random, size: tuple[int, int], octaves: tuple[int, ...]) -> Image.Image:
    """Fractal value noise (mode L) built from seeded random cells, deterministic for ``rng``."""
    layers = []
    for cells in octaves:
        data = bytes(rng.randrange(256) for _ in range(cells * cells))
        layers.append(Image.frombytes("L", (cells, cells), data).resize(size, Image.Resampling.BICUBIC))
    out = layers[0]
    for i, layer in enumerate(layers[1:], start=1):
        out = Image.blend(out, layer, 0.5 / i)
    return ImageOps.autocontrast(out)


def _ramp(size: tuple[int, int], angle: float, periods: float) -> Image.Image:
    """A repeating 0..255 ramp along ``angle`` (degrees) with ``periods`` repetitions."""
    w, h = size
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u, v, *_ = _ramps(w, h)
    span = 255.0 * periods
    ramp = ImageMath.lambda_eval(lambda a: (a["u"] * ca + a["v"] * sa + 1.0) * span, u=u, v=v)
    return _mod256(ramp)


def _mod256(img: Image.Image) -> Image.Image:
    """Wrap a float image into 0..255 (mode L)."""
    as_int = img.convert("I")
    wrapped = ImageMath.lambda_eval(lambda a: a["x"] - (a["x"] / 256) * 256, x=as_int)
    return wrapped.convert("L")


def _lut(func: Callable[[int], float]) -> list[int]:
    """A 256-entry lookup table from ``func``, clamped to 0..255."""
    return [max(0, min(255, round(func(i)))) for i in range(256)]


def _palette(seed: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    rng = random.Random(seed)
    hue = rng.random()

    dark = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.45, 0.35))
    light = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.18, 0.92))
    return (dark[0], dark[1], dark[2]), (light[0], light[1], light[2])


@lru_cache(maxsize=16)
def scene_image(scene: str | None, prompt: str | None, negative_prompt: str | None) -> Image.Image:
    """Render the deterministic 1024x1024 backdrop for a scene preset or a prompt.

    :param scene: one of :data:`SCENES` (wins over the prompt, as documented)
    :param prompt: free text; its hash picks a texture and a palette
    :param negative_prompt: free text; mixed into the hash
    """
    key = f"scene:{scene}" if scene else f"prompt:{prompt or ''}|{negative_prompt or ''}"
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    kind = scene or SCENES[seed % len(SCENES)]
    size = (SCENE_SIZE, SCENE_SIZE)
    if scene:
        palettes = {
            "marble": ((120, 118, 125), (242, 240, 236)),
            "wood": ((92, 58, 30), (196, 146, 96)),
            "industrial": ((70, 72, 76), (160, 162, 165)),
            "linen": ((170, 158, 135), (236, 228, 212)),
            "brick": ((120, 50, 38), (178, 88, 62)),
            "counter": ((150, 150, 148), (232, 230, 226)),
        }
        dark, light = palettes[kind]
    else:
        dark, light = _palette(seed)
    noise = _noise(rng, size, (4, 16, 64))
    if kind == "marble":
        t = ImageChops.add_modulo(_ramp(size, 35 + rng.random() * 30, 1.5), noise)
        gray = t.point(_lut(lambda i: 255 * (1 - abs(math.sin(math.pi * i / 255 * 2)) ** 6)))
        gray = ImageChops.multiply(gray, noise.point(_lut(lambda i: 200 + i * 55 / 255)))
    elif kind == "wood":
        stretched = _noise(rng, (64, 1024), (4, 16)).resize(size, Image.Resampling.BICUBIC)
        t = ImageChops.add_modulo(_ramp(size, 2.0, 6), stretched)
        gray = t.point(_lut(lambda i: 120 + 135 * (0.5 + 0.5 * math.sin(math.pi * i / 255 * 2)) ** 2))
    elif kind == "linen":
        a = _ramp(size, 0, 180).point(_lut(lambda i: 200 + 55 * math.sin(math.pi * i / 255 * 2) ** 2))
        b = _ramp(size, 90, 180).point(_lut(lambda i: 200 + 55 * math.sin(math.pi * i / 255 * 2) ** 2))
        gray = ImageChops.multiply(ImageChops.multiply(a, b), noise.point(_lut(lambda i: 215 + i * 40 / 255)))
    elif kind == "brick":
        gray = Image.new("L", size, 215)
        draw = ImageDraw.Draw(gray)
        bw, bh = 128, 56
        for row in range(SCENE_SIZE // bh + 1):
            shift = (row % 2) * bw // 2
            for col in range(-1, SCENE_SIZE // bw + 2):
                x0, y0 = col * bw + shift, row * bh
                draw.rectangle([x0 + 4, y0 + 4, x0 + bw - 4, y0 + bh - 4], fill=rng.randrange(40, 150))
        gray = ImageChops.multiply(gray, noise.point(_lut(lambda i: 190 + i * 65 / 255)))
    elif kind == "industrial":
        gray = _noise(rng, size, (8, 32, 128, 256)).point(_lut(lambda i: 60 + i * 0.6))
    else:  # counter
        gray = Image.new("L", size, 0)
        gray.paste(Image.linear_gradient("L").resize((SCENE_SIZE, SCENE_SIZE * 6 // 10)), (0, 0))
        gray = gray.point(_lut(lambda i: 150 + i * 0.4))
        surface = _noise(rng, (SCENE_SIZE, SCENE_SIZE * 4 // 10), (16, 128)).point(
            _lut(lambda i: 190 + i / 5)
        )
        gray.paste(surface, (0, SCENE_SIZE * 6 // 10))
    colored = ImageOps.colorize(gray, dark, light)
    light_falloff = Image.radial_gradient("L").resize(size).point(_lut(lambda i: 255 - i * 0.35))
    return ImageChops.multiply(colored, Image.merge("RGB", [light_falloff] * 3))


#: Largest magnification rendered: beyond it one subject pixel already covers the canvas many times
#: over, so a larger ``scale`` looks the same (and would overflow the float arithmetic).
MAX_SCENE_FACTOR = 1e9


def _visible_part(
    layer: Image.Image, size: tuple[int, int], at: tuple[int, int], canvas: tuple[int, int]
) -> tuple[Image.Image, tuple[int, int]] | None:
    """``layer`` scaled to ``size`` and placed at ``at``, cut to what falls on the canvas.

    Only the visible part is resampled (Pillow's ``box``), so a subject scaled far beyond the canvas
    costs no more than the canvas itself. When the whole layer is visible this is a plain resize.

    :param layer: the image to place
    :param size: its scaled size (may exceed the canvas)
    :param at: the canvas position of its top-left corner (may be negative)
    :param canvas: the canvas size
    :returns: the rendered part and where to paste it, or ``None`` when nothing is visible
    """
    (nw, nh), (x, y), (cw, ch) = size, at, canvas
    left, top, right, bottom = max(0, x), max(0, y), min(cw, x + nw), min(ch, y + nh)
    if right <= left or bottom <= top:
        return None
    sx, sy = layer.width / nw, layer.height / nh
    box = ((left - x) * sx, (top - y) * sy, (right - x) * sx, (bottom - y) * sy)
    if (left, top, right, bottom) == (x, y, x + nw, y + nh):
        return layer.resize((nw, nh), Image.Resampling.LANCZOS), (x, y)
    return layer.resize((right - left, bottom - top), Image.Resampling.LANCZOS, box=box), (left, top)


def compose_on_scene(
    subject: Image.Image, background: Image.Image, scale: float, x_center: float, y_center: float
) -> Image.Image:
    """Place an RGBA subject on a scene with a soft contact shadow; returns RGB.

    Any positive ``scale`` works: a subject larger than the canvas is cut at its edges.

    :param subject: the RGBA subject (trimmed or not)
    :param background: the scene
    :param scale: the subject's longest edge as a fraction of the canvas (> 0)
    :param x_center: horizontal centre 0..1
    :param y_center: vertical centre 0..1
    """
    canvas = background.copy().convert("RGBA")
    cw, ch = canvas.size
    factor = min(scale * max(cw, ch) / max(subject.width, subject.height), MAX_SCENE_FACTOR)
    nw, nh = max(1, round(subject.width * factor)), max(1, round(subject.height * factor))
    x, y = round(x_center * cw - nw / 2), round(y_center * ch - nh / 2)
    shadow = Image.new("L", (cw, ch), 0)
    cast = _visible_part(subject.getchannel("A"), (nw, nh), (x + nw // 40, y + nh // 30), (cw, ch))
    if cast is not None:
        shadow.paste(*cast)
    blur = min(max(2, nw // 40), max(cw, ch))
    shadow = shadow.filter(ImageFilter.GaussianBlur(blur)).point(lambda a: a * 2 // 5)
    dark = Image.new("RGBA", (cw, ch), (0, 0, 0, 255))
    canvas.paste(dark, mask=shadow)
    layer = Image.new("RGBA", (cw, ch), (0, 0, 0, 0))
    placed = _visible_part(subject, (nw, nh), (x, y), (cw, ch))
    if placed is not None:
        layer.paste(*placed)
    canvas.alpha_composite(layer)
    return canvas.convert("RGB")
