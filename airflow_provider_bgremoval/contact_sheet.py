"""The before/after contact sheet of a run: source thumbnails next to their results on a checkerboard.

With renditions, each result (the master) is followed by its renditions, each labelled with its name.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from airflow_provider_bgremoval.exceptions import safe_excerpt
from airflow_provider_bgremoval.imaging import normalise_mode
from airflow_provider_bgremoval.storage.exceptions import split_gs_uri

log = logging.getLogger(__name__)

# Layout (pixels).
_PAD = 8
_LABEL = 16
_HEADER = 28
_BACKGROUND = (250, 250, 250)
_INK = (40, 40, 40)
#: Rendition statuses whose object exists (written now, or finished before).
_STORED = ("done", "replaced", "skipped")

#: One image of a pair: its encoded bytes (``b""``: unreadable), or the thumbnail :func:`reduce_sample`
#: made of them.
Sample = bytes | Image.Image
#: ``(label, source, result)``, optionally with ``[(rendition name, sample), ...]``.
Pair = tuple[str, Sample, Sample] | tuple[str, Sample, Sample, Sequence[tuple[str, Sample]]]


def contact_sheet_size(
    pairs: int, *, thumb: int = 160, columns: int = 3, renditions: int = 0
) -> tuple[int, int]:
    """
    The exact ``(width, height)`` of a contact sheet: a header, then cells of two squares and a label.

    :param pairs: number of before/after pairs (at least 1).
    :param thumb: edge of each thumbnail square.
    :param columns: pairs per row.
    :param renditions: rendition squares after each result (the most any pair has).
    """
    if pairs < 1:
        raise ValueError("a contact sheet needs at least one pair")
    cols = min(pairs, columns)
    rows = -(-pairs // cols)
    return (_PAD + cols * _cell_width(thumb, renditions), _HEADER + rows * (thumb + _LABEL + _PAD))


def _cell_width(thumb: int, renditions: int) -> int:
    """Source, result and renditions squares, each followed by a gap."""
    return (2 + renditions) * (thumb + _PAD)


def rendition_images(row: Mapping[str, Any], read: Callable[[str, str], Sample]) -> list[tuple[str, Sample]]:
    """
    The stored renditions of a manifest row, as ``(name, sample)`` for :func:`render_contact_sheet`.

    :param row: a manifest row (its ``renditions`` entries).
    :param read: reads ``(bucket, object name)`` (its bytes, or their :func:`reduce_sample`).
    """
    images = []
    for entry in row.get("renditions") or ():
        if entry.get("status") in _STORED and entry.get("object"):
            bucket, name = split_gs_uri(str(entry["object"]))
            images.append((str(entry["name"]), read(bucket, name)))
    return images


def checkerboard(size: tuple[int, int], square: int = 8) -> Image.Image:
    """
    A light grey checkerboard (the usual "transparent" backdrop).

    :param size: ``(width, height)``.
    :param square: edge of one square.
    """
    board = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(board)
    for y in range(0, size[1], square):
        for x in range((y // square) % 2 * square, size[0], 2 * square):
            draw.rectangle((x, y, x + square - 1, y + square - 1), fill=(204, 204, 204))
    return board


def _reduced(data: bytes, thumb: int) -> Image.Image:
    """
    The RGBA thumbnail of an image's bytes: reduced first (a JPEG is decoded at a fraction of its size),
    then turned upright by its EXIF orientation; 16-bit grey is scaled, not clipped to white.
    """
    with Image.open(io.BytesIO(data)) as opened:
        opened.thumbnail((thumb, thumb))  # in place: only the reduced pixels are kept
        try:
            upright = ImageOps.exif_transpose(opened)
        except Exception:  # a broken EXIF block: drawn as stored, as imaging reads it (upright)
            upright = opened
        return normalise_mode(upright).convert("RGBA")


def reduce_sample(data: bytes, thumb: int = 160) -> Sample:
    """
    A sample's thumbnail, made as soon as it is read, so that a contact sheet holds thumbnails rather
    than every sample's bytes until it is drawn; ``b""`` (drawn "unreadable", with a warning) when the
    bytes cannot be decoded.

    :param data: the image's bytes (``b""``: it could not be read).
    :param thumb: the sheet's thumbnail edge.
    """
    if not data:
        return b""
    try:
        return _reduced(data, thumb)
    except Exception as exc:  # a damaged object must not break the report
        log.warning("Contact sheet: cannot decode an image (%s)", exc)
        return b""


def _thumbnail(sample: Sample, tile: Image.Image) -> Image.Image:
    """The sample fitted and centred on the square ``tile`` (``b""`` or undecodable: "unreadable")."""
    thumb = tile.width
    if isinstance(sample, bytes):
        sample = reduce_sample(sample, thumb)
    if isinstance(sample, bytes):
        ImageDraw.Draw(tile).text((6, thumb // 2 - 6), "unreadable", fill=(180, 0, 0))
        return tile
    image = sample if sample.mode == "RGBA" else sample.convert("RGBA")
    if max(image.size) > thumb:  # reduced for a larger sheet
        image = image.copy()
        image.thumbnail((thumb, thumb))
    offset = ((thumb - image.width) // 2, (thumb - image.height) // 2)
    tile.paste(image, offset, image)
    return tile


def render_contact_sheet(
    pairs: Sequence[Pair],
    *,
    title: str = "",
    thumb: int = 160,
    columns: int = 3,
    colors: int | None = 256,
) -> bytes:
    """
    Render a before/after contact sheet as PNG bytes.

    :param pairs: ``(label, source, result)`` per pair (bytes, or their :func:`reduce_sample`), in display
        order, optionally with the result's renditions ``[(name, sample), ...]`` shown after it
        (:func:`rendition_images`).
    :param title: header text.
    :param thumb: edge of each thumbnail square.
    :param columns: pairs per row.
    :param colors: reduce to a palette of this many colours (small files); ``None`` keeps true colour.
    """
    extra = max((len(pair[3]) for pair in pairs if len(pair) == 4), default=0)
    width, height = contact_sheet_size(len(pairs), thumb=thumb, columns=columns, renditions=extra)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD, 7), safe_excerpt(title, 2 * width // 7), fill=_INK, font=ImageFont.load_default(size=13))
    cols = min(len(pairs), columns)
    label_font = ImageFont.load_default(size=11)
    label_limit = (2 * thumb + _PAD) // 6
    for index, (label, before, after, *renditions) in enumerate(pairs):
        row, col = divmod(index, cols)
        x = _PAD + col * _cell_width(thumb, extra)
        y = _HEADER + row * (thumb + _LABEL + _PAD)
        sheet.paste(_thumbnail(before, Image.new("RGB", (thumb, thumb), (255, 255, 255))), (x, y))
        draw.text((x, y + thumb + 2), safe_excerpt(label, label_limit), fill=_INK, font=label_font)
        results = [("", after), *(renditions[0] if renditions else ())]  # the pair's label spans the result
        for slot, (name, data) in enumerate(results, start=1):
            left = x + slot * (thumb + _PAD)
            sheet.paste(_thumbnail(data, checkerboard((thumb, thumb))), (left, y))
            draw.text((left, y + thumb + 2), safe_excerpt(name, thumb // 6), fill=_INK, font=label_font)
    out = io.BytesIO()
    final = sheet.quantize(colors=colors, method=Image.Quantize.MEDIANCUT) if colors else sheet
    final.save(out, format="PNG", optimize=True)
    return out.getvalue()
