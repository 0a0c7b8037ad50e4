"""Poof emulation: ``POST /v1/remove`` and ``GET /v1/me`` (VENDORS.md §2; generation A baseline,
DESIGN.md "Poof and Pixian contract decisions").

Choices where the documents are silent or disagree (also listed in docs/sandbox.md):

* Generation A fields: ``image_file``, ``format``, ``channels``, ``bg_color``, ``size`` (pixel caps
  on the longest side), ``crop``. Unknown fields are ignored. Two additions keep the vendor's own
  current SDK (``poofbg`` 0.4) working: its upload field ``file`` is accepted as an alias of
  ``image_file``; ``channels=alpha`` (grayscale matte) and ``size=hd`` (≤4 MP) from generation B
  are accepted too.
* ``padding`` (generation B) is emulated: a crop is padded on each side by that fraction of the
  subject's size on the axis (``0.1``, ``10%``, or ``h,v``); a crop whose request sends none gets
  generation B's documented ``10%`` (the ``poof_crop_padding`` setting; ``0`` is generation A's
  tight crop). The area beyond the original image is transparent (``bg_color`` when flattened).
  Invented: ``padding`` is validated even without ``crop`` (400 ``validation_error``), a padded
  crop over 6000 px on a side (the documented ``width``/``height`` maximum) is refused as
  ``validation_error``, and the padding is rounded to whole pixels.
* ``bg_color`` applies when ``channels=rgb`` (default white), and to JPEG output (which has no
  alpha), as in generation A.
* Undecodable input, or a format other than JPEG/PNG/WebP → 422 ``invalid_image`` (generation B).
* No subject found → 422 ``invalid_image`` with details saying so (invented; Poof documents no code
  for it, and a 4xx keeps clients from retrying or paying).
* A non-multipart body → 400 ``validation_error`` (generation B).
* A revoked key (fault ``auth_revoked``) → 403 ``permission_denied`` (generation A).
"""

from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Any

from PIL import ImageColor
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airflow_provider_bgremoval.sandbox import imaging
from airflow_provider_bgremoval.sandbox.config import parse_padding
from airflow_provider_bgremoval.sandbox.errors import VendorError, render_error, unauthorized
from airflow_provider_bgremoval.sandbox.ledger import InsufficientCredits, fingerprint
from airflow_provider_bgremoval.sandbox.state import (
    MEGABYTE,
    InputError,
    RequestContext,
    SandboxState,
    context,
    get_state,
    parse_bool,
    read_form,
    upload_bytes,
)

#: "Maximum size: 20MB" (decimal megabytes, see :data:`~.state.MEGABYTE`)
MAX_BYTES = 20 * MEGABYTE
SIZES: dict[str, int | None] = {"full": None, "preview": 256, "small": 512, "medium": 1024, "large": 2048}
HD_PIXELS = 4_000_000
#: The largest output side Poof documents (``width``/``height`` 1-6000): a longer padded crop is refused.
MAX_OUTPUT_SIDE = 6000
FORMATS = {"png": ("png", "image/png"), "jpg": ("jpeg", "image/jpeg"), "webp": ("webp", "image/webp")}
_HEX = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


def _invalid(message: str) -> VendorError:
    return VendorError(400, "validation_error", message)


def _authenticate(request: Request, state: SandboxState, ctx: RequestContext) -> str:
    key = request.headers.get("x-api-key")
    ctx.key = fingerprint(key) if key else None
    if not key or not state.ledger.authenticate("poof", key):
        raise unauthorized("poof")
    if state.faults["poof"].config.auth_revoked:
        raise unauthorized("poof", revoked=True)
    return key


def parse_color(value: str) -> tuple[int, int, int]:
    """Parse a Poof ``bg_color``: ``#fff``, ``#ffffff``, ``rgb(255, 255, 255)`` or a colour name.

    :param value: the raw value
    :raises VendorError: ``validation_error``
    """
    text = value.strip()
    if _HEX.match(text):
        text = text if text.startswith("#") else "#" + text
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError as exc:
        raise _invalid(f"bg_color {value!r} is not a colour") from exc
    return rgb[0], rgb[1], rgb[2]


def _work(data: bytes, fields: dict[str, Any]) -> tuple[bytes, int, int]:
    try:
        fmt, _size = imaging.probe(data)
        if fmt not in ("JPEG", "PNG", "WEBP"):
            raise imaging.ImageDecodeError(f"unsupported format {fmt}")
        decoded = imaging.decode(data)
    except imaging.ImageDecodeError as exc:
        raise VendorError(422, "invalid_image", "The file cannot be decoded as PNG, JPEG or WebP") from exc
    alpha = imaging.segment(decoded.image)
    if alpha is None:
        raise VendorError(422, "invalid_image", "No foreground subject could be detected in the image")
    result = imaging.cutout(decoded.image, alpha)
    if fields["crop"]:
        bbox = imaging.foreground_bbox(alpha)
        if bbox:
            result = result.crop(_padded(bbox, fields["padding"]))
    size = fields["size"]
    if size == "hd":
        result = imaging.shrink_to_pixels(result, HD_PIXELS)
    elif SIZES.get(size):
        result = imaging.cap_longest_side(result, int(SIZES[size] or 0))
    channels, (encoder, _media) = fields["channels"], FORMATS[fields["format"]]
    if channels == "alpha":
        out = result.getchannel("A")
    elif channels == "rgb" or encoder == "jpeg":
        out = imaging.flatten(result, fields["bg_color"] or (255, 255, 255))
    else:
        out = result
    return imaging.encode(out, encoder, quality=90), out.width, out.height


def _padded(bbox: tuple[int, int, int, int], padding: tuple[float, float]) -> tuple[int, int, int, int]:
    """The subject's box grown on each side by ``padding`` (fractions of its width and height); it
    may reach past the image, where the crop is transparent."""
    left, top, right, bottom = bbox
    pad_x, pad_y = round(padding[0] * (right - left)), round(padding[1] * (bottom - top))
    box = (left - pad_x, top - pad_y, right + pad_x, bottom + pad_y)
    if max(box[2] - box[0], box[3] - box[1]) > MAX_OUTPUT_SIDE:
        raise _invalid(f"padding makes the crop larger than {MAX_OUTPUT_SIDE} px on a side")
    return box


def _padding(raw: dict[str, str], default: str) -> tuple[float, float]:
    """The ``padding`` fractions: the request's, else the configured default."""
    try:
        return parse_padding(raw.get("padding", default))
    except ValueError as exc:
        raise _invalid(str(exc)) from exc


def _fields(raw: dict[str, str], default_padding: str) -> dict[str, Any]:
    """The remove parameters, validated as Poof documents them."""
    fields: dict[str, Any] = {
        "format": raw.get("format", "png").strip().lower(),
        "channels": raw.get("channels", "rgba").strip().lower(),
        "size": raw.get("size", "full").strip().lower(),
        "bg_color": parse_color(raw["bg_color"]) if raw.get("bg_color") else None,
        "crop": parse_bool(raw.get("crop", "false")),
        "padding": _padding(raw, default_padding),
    }
    if fields["format"] not in FORMATS:
        raise _invalid("format must be one of: png, jpg, webp")
    if fields["channels"] not in ("rgba", "rgb", "alpha"):
        raise _invalid("channels must be one of: rgba, rgb, alpha")
    if fields["size"] not in SIZES and fields["size"] != "hd":
        raise _invalid("size must be one of: full, preview, small, medium, large, hd")
    if fields["crop"] is None:
        raise _invalid("crop must be true or false")
    return fields


def _upload(form: Any) -> UploadFile:
    """The uploaded image (``image_file``; poofbg >= 0.4 sends it as ``file``)."""
    for name in ("image_file", "file"):
        upload = form.get(name)
        if isinstance(upload, UploadFile):
            return upload
    raise VendorError(400, "missing_image", "No image file provided (field image_file)")


async def remove(request: Request) -> Response:
    """``POST /v1/remove``.

    :param request: the request
    """
    started = time.perf_counter()
    state, ctx = get_state(request), context(request)
    try:
        key = _authenticate(request, state, ctx)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "multipart/form-data":
            raise _invalid("The request body must be multipart/form-data")
        try:
            form = await read_form(request)
        except InputError as exc:
            raise _invalid(exc.message) from exc
        raw = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        ctx.params = {k: v[:200] for k, v in raw.items()}
        fields = _fields(raw, state.config.poof_crop_padding)
        upload = _upload(form)
        ctx.params["image_file"] = f"<file {upload.filename or ''}>"
        cost: Decimal = state.config.costs.poof_per_image
        if not state.ledger.check("poof", key, cost):
            raise VendorError(402, "payment_required", "Insufficient credits for this billing cycle")
        try:
            data = await upload_bytes(upload, MAX_BYTES)
        except InputError as exc:
            raise VendorError(400, "image_too_large", "Image exceeds the 20MB limit") from exc
        body, width, height = await run_in_threadpool(_work, data, fields)
        try:
            state.ledger.charge("poof", key, cost, ctx.endpoint, ctx.request_id)
        except InsufficientCredits as exc:
            raise VendorError(402, "payment_required", "Insufficient credits for this billing cycle") from exc
        ctx.charged = float(cost)
        media = FORMATS[fields["format"]][1]
        headers = {
            "X-Request-ID": ctx.request_id,
            "X-Processing-Time-Ms": str(round((time.perf_counter() - started) * 1000)),
            "X-Image-Width": str(width),
            "X-Image-Height": str(height),
        }
        return Response(body, media_type=media, headers=headers)
    except VendorError as err:
        return render_error("poof", err, ctx.request_id)


async def me(request: Request) -> Response:
    """``GET /v1/me`` → ``{"organizationId", "plan", "maxCredits", "usedCredits", "autoRechargeThreshold"}``.

    Remaining credits are ``maxCredits - usedCredits``, as documented.

    :param request: the request
    """
    state, ctx = get_state(request), context(request)
    ctx.method = "GET"
    try:
        key = _authenticate(request, state, ctx)
    except VendorError as err:
        return render_error("poof", err, ctx.request_id)
    account = state.ledger.get("poof", key)
    assert account is not None
    used = int(account.used)
    return JSONResponse(
        {
            "organizationId": "org_" + fingerprint(key)[3:],
            "plan": state.config.poof_plan,
            "maxCredits": used + int(account.balance),
            "usedCredits": used,
            "autoRechargeThreshold": None,
        },
        headers={"X-Request-ID": ctx.request_id},
    )
