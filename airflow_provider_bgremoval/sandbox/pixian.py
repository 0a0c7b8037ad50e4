"""Pixian.AI emulation: ``POST /api/v2/remove-background`` and ``GET /api/v2/account``
(VENDORS.md §3 and ``vendor-docs/pixian-api.md``).

Choices where the documents are silent (INVENTED; also listed in docs/sandbox.md):

* Bad or missing credentials → 401; no credits → 402; a ``dormant`` account → 402 (DESIGN.md). The
  numeric ``code`` values other than 1006 are invented (see :data:`~.errors.PIXIAN_CODES`).
* The pack goes ``dormant`` (as documented for ``useBefore``) when the sandbox's date reaches
  ``pixian_use_before``: the wall clock plus the offset ``advance_clock`` has added.
* No subject found → 400 with invented code 1007.
* Both multipart (``curl -F``) and urlencoded bodies (the docs' Python ``image.url`` sample) are
  accepted. When several inputs are sent, ``image`` wins over ``image.base64`` over ``image.url``.
* Binary uploads accept the formats Pillow decodes; anything else is 400 code 1006.
* ``image.url`` "Must be a .bmp, .gif, .jpeg, .png, or .tiff file": the sandbox judges the file type
  by the fetched content, not by the URL's name; any other image type (WebP...) → 400 code 1006.
* ``result.margin`` percentages are of the result's size on that axis (of the target size when
  ``result.target_size`` is set, where the margin is inset as documented).
* Uploads over 32,000,000 pixels and ``image.base64`` over 1 MB (1,000,000 characters) → 400 (invented
  code 1003).
* Limits the documents do not state, which the sandbox needs to stay within memory: inputs (uploads
  and ``image.url`` downloads) of at most 128,000,000 bytes (:data:`MAX_INPUT_BYTES`, the same figure
  the provider's client uses) and ``result.target_size`` of at most 25,000,000 pixels
  (:data:`MAX_TARGET_PIXELS`); beyond them → 400 (invented codes 1003 and 1002).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airflow_provider_bgremoval.sandbox import imaging
from airflow_provider_bgremoval.sandbox.config import use_before_time
from airflow_provider_bgremoval.sandbox.errors import VendorError, render_error, unauthorized
from airflow_provider_bgremoval.sandbox.ledger import Account, InsufficientCredits, as_number, fingerprint
from airflow_provider_bgremoval.sandbox.state import (
    MEGABYTE,
    InputError,
    RequestContext,
    SandboxState,
    context,
    credits_header,
    fetch_url,
    get_state,
    parse_bool,
    read_form,
    upload_bytes,
)

UPLOAD_PIXEL_CAP = 32_000_000
MAX_PIXELS_RANGE = (100, 25_000_000)
#: ``image.base64``: "at most 1 megabyte" of text (decimal megabytes, see :data:`~.state.MEGABYTE`)
BASE64_MAX = MEGABYTE
#: Pixian documents no byte limit, only the 32,000,000-pixel cap. The sandbox still has to stop
#: reading somewhere: uploads and ``image.url`` downloads of up to 128,000,000 bytes (the pixel cap
#: times 4 bytes, an uncompressed 8-bit RGBA frame; the provider's client uses the same figure) are
#: read, larger ones get 400 (invented code 1003). A sandbox choice, listed in docs/sandbox.md.
MAX_INPUT_BYTES = UPLOAD_PIXEL_CAP * 4
#: Pixian documents no range for ``result.target_size``. The sandbox renders results of at most
#: 25,000,000 pixels (the largest ``max_pixels``, i.e. the most Pixian processes) and answers a
#: larger target with 400 (invented code 1002). A sandbox choice, listed in docs/sandbox.md.
MAX_TARGET_PIXELS = 25_000_000
#: The file types ``image.url`` may point to (Pillow format names; MPO is a multi-picture JPEG).
URL_FORMATS = frozenset({"BMP", "GIF", "JPEG", "MPO", "PNG", "TIFF"})
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_MARGIN_VALUE = re.compile(r"^(\d+(?:\.\d+)?)(px|%)$")
_TARGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)\s*$")


def _bad(message: str, code: str = "invalid_parameter") -> VendorError:
    return VendorError(400, code, message)


@dataclass
class Options:
    """Validated Pixian parameters."""

    test: bool = False
    max_pixels: int = 25_000_000
    background: tuple[int, int, int] | None = None
    crop: bool = False
    margin: tuple[tuple[float, str], ...] = ((0.0, "px"),) * 4
    target: tuple[int, int] | None = None
    valign: str = "middle"
    output: str = "auto"
    quality: int = 75


def _int(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value.strip())
    except ValueError as exc:
        raise _bad(f"{name} must be an integer") from exc
    if not low <= number <= high:
        raise _bad(f"{name} must be between {low} and {high}")
    return number


def _parse_margin(value: str) -> tuple[tuple[float, str], ...]:
    parts = value.split()
    if not 1 <= len(parts) <= 4:
        raise _bad("result.margin takes 1 to 4 values")
    parsed = []
    for part in parts:
        match = _MARGIN_VALUE.match(part)
        if not match:
            raise _bad("result.margin values must look like '10px' or '5.5%'")
        parsed.append((float(match.group(1)), match.group(2)))
    # CSS order: all / top-bottom left-right / top left-right bottom / top right bottom left
    if len(parsed) == 1:
        parsed *= 4
    elif len(parsed) == 2:
        parsed = [parsed[0], parsed[1], parsed[0], parsed[1]]
    elif len(parsed) == 3:
        parsed = [parsed[0], parsed[1], parsed[2], parsed[1]]
    return tuple(parsed)


def _flag(fields: dict[str, str], name: str) -> bool | None:
    """A true/false field, ``None`` when absent."""
    if name not in fields:
        return None
    value = parse_bool(fields[name])
    if value is None:
        raise _bad(f"{name} must be true or false")
    return value


def _choice(fields: dict[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    """A field from a closed set, ``None`` when absent."""
    if name not in fields:
        return None
    value = fields[name].strip()
    if value not in choices:
        raise _bad(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}")
    return value


def _color(value: str) -> tuple[int, int, int]:
    color = value.strip()
    if not _COLOR.match(color):
        raise _bad("background.color must look like #RRGGBB")
    return (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))


def _target_size(value: str) -> tuple[int, int]:
    match = _TARGET.match(value)
    if not match:
        raise _bad("result.target_size must look like '1920 1080'")
    tw, th = round(float(match.group(1))), round(float(match.group(2)))
    if tw < 1 or th < 1:
        raise _bad("result.target_size must be at least 1 pixel wide and high")
    if tw * th > MAX_TARGET_PIXELS:
        raise _bad(f"result.target_size: the sandbox renders at most {MAX_TARGET_PIXELS:,} pixels")
    return tw, th


def _options(fields: dict[str, str]) -> Options:
    opts = Options()
    if (test := _flag(fields, "test")) is not None:
        opts.test = test
    if "max_pixels" in fields:
        opts.max_pixels = _int(fields["max_pixels"], "max_pixels", *MAX_PIXELS_RANGE)
    if fields.get("background.color"):
        opts.background = _color(fields["background.color"])
    if (crop := _flag(fields, "result.crop_to_foreground")) is not None:
        opts.crop = crop
    if fields.get("result.margin"):
        opts.margin = _parse_margin(fields["result.margin"])
    if fields.get("result.target_size"):
        opts.target = _target_size(fields["result.target_size"])
    if (valign := _choice(fields, "result.vertical_alignment", ("top", "middle", "bottom"))) is not None:
        opts.valign = valign
    if (output := _choice(fields, "output.format", ("auto", "png", "jpeg", "delta_png"))) is not None:
        opts.output = output
    if "output.jpeg_quality" in fields:
        opts.quality = _int(fields["output.jpeg_quality"], "output.jpeg_quality", 1, 100)
    return opts


def _authenticate(request: Request, state: SandboxState, ctx: RequestContext) -> str:
    header = request.headers.get("authorization", "")
    api_id = secret = None
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            api_id, _, secret = decoded.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            api_id = None
    ctx.key = fingerprint(api_id) if api_id else None
    if state.faults["pixian"].config.auth_revoked:
        raise unauthorized("pixian", revoked=True)
    if not api_id or not state.ledger.authenticate("pixian", api_id, secret):
        raise unauthorized("pixian")
    return api_id


def _check_url_file_type(data: bytes) -> None:
    """``image.url`` "Must be a .bmp, .gif, .jpeg, .png, or .tiff file": judged by what was fetched.

    :param data: the downloaded bytes
    """
    try:
        fmt, _size = imaging.probe(data)
    except imaging.ImageDecodeError:
        return  # not an image at all: the decoder answers 1006 as for any unreadable input
    if fmt not in URL_FORMATS and fmt != "BOMB":
        raise _bad(
            "Failed to read the supplied image. image.url must point to a .bmp, .gif, .jpeg, .png "
            f"or .tiff file, not {fmt}",
            "unreadable_image",
        )


async def _input_bytes(state: SandboxState, form: Any) -> bytes:
    upload = form.get("image")
    if isinstance(upload, UploadFile):
        try:
            return await upload_bytes(upload, MAX_INPUT_BYTES)
        except InputError as exc:
            raise _bad("The image is too large", "image_too_large") from exc
    b64 = form.get("image.base64")
    if isinstance(b64, str) and b64:
        if len(b64) > BASE64_MAX:
            raise _bad("image.base64 can be at most 1 megabyte", "image_too_large")
        text = b64.split(",", 1)[1] if b64.startswith("data:") else b64
        try:
            return base64.b64decode(text.strip(), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise _bad("Failed to read the supplied image. ", "unreadable_image") from exc
    url = form.get("image.url")
    if isinstance(url, str) and url:
        try:
            data = await fetch_url(state, url, MAX_INPUT_BYTES)
        except InputError as exc:
            if exc.kind == "too_large":
                raise _bad("The image is too large", "image_too_large") from exc
            raise _bad("Failed to read the supplied image. ", "unreadable_image") from exc
        _check_url_file_type(data)
        return data
    raise _bad("One of image, image.base64 or image.url must be provided", "missing_image")


@dataclass
class Outcome:
    """A finished Pixian result."""

    body: bytes
    media_type: str
    headers: dict[str, str]


def _fmt_box(box: tuple[int, int, int, int] | None) -> str:
    if box is None:
        return "0 0 0 0"
    left, top, right, bottom = box
    return f"{top} {left} {right - left} {bottom - top}"


def _work(data: bytes, opts: Options) -> Outcome:
    try:
        _fmt, (w0, h0) = imaging.probe(data)
    except imaging.ImageDecodeError as exc:
        raise _bad("Failed to read the supplied image. ", "unreadable_image") from exc
    if w0 * h0 > UPLOAD_PIXEL_CAP:
        raise _bad("The maximum image upload size is 32,000,000 pixels", "image_too_large")
    try:
        decoded = imaging.decode(data, max_pixels=opts.max_pixels)
    except imaging.ImageDecodeError as exc:
        raise _bad("Failed to read the supplied image. ", "unreadable_image") from exc
    # X-Input-Size: the (EXIF-oriented) size before any size constraint was applied.
    input_size = (h0, w0) if decoded.orientation in (5, 6, 7, 8) else (w0, h0)
    img = imaging.shrink_to_pixels(decoded.image, opts.max_pixels)
    alpha = imaging.segment(img)
    if alpha is None:
        raise _bad("Could not find a foreground in the image", "unknown_foreground")
    cut = imaging.cutout(img, alpha)
    fg = imaging.foreground_bbox(alpha)
    sx, sy = input_size[0] / img.width, input_size[1] / img.height
    input_fg = (
        None if fg is None else (round(fg[0] * sx), round(fg[1] * sy), round(fg[2] * sx), round(fg[3] * sy))
    )
    if opts.output == "delta_png":
        # Documented: background colour, crop, margin, target size and alignment are ignored.
        result = cut
        # (A test watermark cannot show on solid pixels: they mean "copy the input pixel".)
        final = imaging.delta_png_image(imaging.watermark(cut) if opts.test else cut)
        body, media = imaging.encode(final, "png"), "image/png"
    else:
        result = cut.crop(fg) if opts.crop and fg else cut
        if opts.target is not None:
            tw, th = opts.target
            inset = _resolve(opts.margin, tw, th)
            result = imaging.fit_into(result, (tw, th), inset, opts.valign)
        else:
            top, right, bottom, left = _resolve(opts.margin, result.width, result.height)
            result = imaging.expand(result, top, right, bottom, left)
        if opts.test:
            result = imaging.watermark(result)
        out_fmt = opts.output
        if out_fmt == "auto":
            out_fmt = "jpeg" if opts.background is not None else "png"
        final = imaging.flatten(result, opts.background) if opts.background is not None else result
        if out_fmt == "jpeg":
            body, media = imaging.encode(final, "jpeg", opts.quality), "image/jpeg"
        else:
            body, media = imaging.encode(final, "png"), "image/png"
    headers = {
        "X-Input-Orientation": str(decoded.orientation),
        "X-Input-Size": f"{input_size[0]} {input_size[1]}",
        "X-Result-Size": f"{result.width} {result.height}",
        "X-Input-Foreground": _fmt_box(input_fg),
        "X-Result-Foreground": _fmt_box(imaging.foreground_bbox(result.getchannel("A"))),
    }
    return Outcome(body, media, headers)


def _resolve(margin: tuple[tuple[float, str], ...], width: int, height: int) -> tuple[int, int, int, int]:
    out = []
    for i, (amount, unit) in enumerate(margin):
        basis = height if i in (0, 2) else width
        out.append(round(amount * basis / 100) if unit == "%" else round(amount))
    return out[0], out[1], out[2], out[3]


def _pack_state(state: SandboxState, account: Account) -> str:
    """The account's state: an active pack goes ``dormant`` once the sandbox's date (the wall clock
    moved by ``advance_clock``) reaches ``useBefore`` ("when your credit pack will go dormant").

    :param state: the sandbox state
    :param account: the account
    """
    expires = use_before_time(state.config.pixian_use_before).timestamp()
    if account.state == "active" and time.time() + state.clock.offset >= expires:
        return "dormant"
    return account.state


async def remove_background(request: Request) -> Response:
    """``POST /api/v2/remove-background``.

    :param request: the request
    """
    state, ctx = get_state(request), context(request)
    try:
        api_id = _authenticate(request, state, ctx)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise _bad("Requests must be multipart/form-data")
        try:
            form = await read_form(request)
        except InputError as exc:
            raise _bad(exc.message) from exc
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        ctx.params = {k: (v if k != "image.base64" else f"<{len(v)} chars>")[:200] for k, v in fields.items()}
        upload = form.get("image")
        if isinstance(upload, UploadFile):
            ctx.params["image"] = f"<file {upload.filename or ''}>"
        opts = _options(fields)
        cost = state.config.costs.pixian_per_image
        account = state.ledger.get("pixian", api_id)
        if not opts.test and account is not None:
            if _pack_state(state, account) != "active":
                raise VendorError(402, "account_dormant", "Your credit pack is dormant; buy a new one")
            if account.balance < cost:
                raise VendorError(402, "insufficient_credits", "Insufficient credits")
        data = await _input_bytes(state, form)
        outcome = await run_in_threadpool(_work, data, opts)
        charged = Decimal(0) if opts.test else cost
        try:
            state.ledger.charge("pixian", api_id, charged, ctx.endpoint, ctx.request_id)
        except InsufficientCredits as exc:
            raise VendorError(402, "insufficient_credits", "Insufficient credits") from exc
        ctx.charged = float(charged)
        headers = dict(outcome.headers)
        headers["X-Credits-Charged"] = credits_header(charged)
        if opts.test:
            headers["X-Credits-Calculated"] = credits_header(cost)
        return Response(outcome.body, media_type=outcome.media_type, headers=headers)
    except VendorError as err:
        return render_error("pixian", err, ctx.request_id)


async def account(request: Request) -> Response:
    """``GET /api/v2/account`` → ``{"creditPack", "state", "useBefore", "credits"}``.

    :param request: the request
    """
    state, ctx = get_state(request), context(request)
    ctx.method = "GET"
    try:
        api_id = _authenticate(request, state, ctx)
    except VendorError as err:
        return render_error("pixian", err, ctx.request_id)
    acct = state.ledger.get("pixian", api_id)
    assert acct is not None
    return JSONResponse(
        {
            "creditPack": state.config.pixian_credit_pack,
            "state": _pack_state(state, acct),
            "useBefore": state.config.pixian_use_before,
            "credits": float(as_number(acct.balance)),
        }
    )
