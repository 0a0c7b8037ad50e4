"""Pixelcut emulation: ``POST /v1/remove-background``, ``POST /v1/generate-background``,
``GET /v1/credits`` (VENDORS.md §1 and the OpenAPI documents in ``vendor-docs/``).

Choices where the documents are silent (also listed in docs/sandbox.md):

* Multipart encoding of the nested ``shadow`` / ``image_transform`` objects is undocumented. The
  sandbox accepts, in multipart forms, ``shadow`` as ``true``/``false`` or as a JSON object string,
  ``image_transform`` as a JSON object string, and dotted fields (``shadow.opacity``,
  ``shadow.light_source.position.x``, ``image_transform.scale``...). In JSON bodies they are objects
  with JSON-typed values, and ``shadow`` may be the boolean ``true``, as the prose allows.
* ``shadow: true`` (and an object without ``light_source``) asks for "automatic shadow estimation";
  the sandbox renders that shadow with the documented default light (size 0.3 at x -0.3, y -0.6,
  z 0.7). ``shadow: false`` (undocumented) means no shadow.
* Inputs smaller than 64x64 px get 400 ``invalid_parameter`` (no code is documented for it).
* Accepted input formats are undocumented: JPEG, PNG and WebP are accepted; other decodable formats
  get 400 ``unsupported_image_format``.
* ``image_url`` fetch failures get 400 ``invalid_parameter``.
* ``image_transform.scale`` has no documented range: any positive number is accepted (a subject
  larger than the canvas is cut at the canvas edges); 0, negative or non-finite scales get 400
  ``invalid_parameter``.
* ``margin`` percentages are of the input image's dimensions (width for left/right, height for
  top/bottom).
* An expired ``result_url`` answers 404.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airflow_provider_bgremoval.sandbox import imaging
from airflow_provider_bgremoval.sandbox.errors import VendorError, render_error, unauthorized
from airflow_provider_bgremoval.sandbox.ledger import InsufficientCredits, as_number, fingerprint
from airflow_provider_bgremoval.sandbox.state import (
    MEGABYTE,
    InputError,
    RequestContext,
    SandboxState,
    context,
    fetch_url,
    get_state,
    parse_bool,
    plain_decimal,
    read_form,
    upload_bytes,
)

#: "Max size: 25MB" (decimal megabytes, see :data:`~.state.MEGABYTE`)
MAX_BYTES = 25 * MEGABYTE
MIN_SIDE = 64
MAX_SIDE = 6000
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
_MARGIN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|px)\s*$")
_SIDES = ("top", "right", "bottom", "left")


def _bad(message: str, code: str = "invalid_parameter") -> VendorError:
    return VendorError(400, code, message)


def _insufficient() -> VendorError:
    return VendorError(403, "insufficient_api_credits", "Insufficient credits available")


def _authenticate(request: Request, state: SandboxState, ctx: RequestContext) -> str:
    key = request.headers.get("x-api-key")
    ctx.key = fingerprint(key) if key else None
    if state.faults["pixelcut"].config.auth_revoked:
        raise unauthorized("pixelcut", revoked=True)
    if not key or not state.ledger.authenticate("pixelcut", key):
        raise unauthorized("pixelcut")
    return key


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Turn dotted multipart names (``shadow.light_source.size``) into nested dicts."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        node = out
        parts = name.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else _coerce_object(child, part)
                node[part] = child
            node = child
        if parts[-1] in node and isinstance(node[parts[-1]], dict) and isinstance(value, str):
            node[parts[-1]].update(_coerce_object(value, parts[-1]))
        else:
            node[parts[-1]] = value
    return out


def _coerce_object(value: Any, name: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _bad(f"{name} must be an object")
    return parsed


def _object(value: Any, name: str, json_body: bool) -> dict[str, Any]:
    """An object field: a JSON object in a JSON body; in a form, also the JSON text of one."""
    if json_body and not isinstance(value, dict):
        raise _bad(f"{name} must be an object")
    return _coerce_object(value, name)


def _boolean(value: Any, json_body: bool) -> bool | None:
    """``value`` as a boolean (a JSON boolean in a JSON body; in a form, also ``true``/``false``
    text), ``None`` when it is none."""
    return value if isinstance(value, bool) else (None if json_body else parse_bool(value))


def _flag(value: Any, name: str, json_body: bool) -> bool:
    """A boolean field (see :func:`_boolean`); anything else is 400 ``invalid_parameter``."""
    flag = _boolean(value, json_body)
    if flag is None:
        raise _bad(f"{name} must be a boolean")
    return flag


def _not_json_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, float))


def _number(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool):
        raise _bad(f"{name} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise _bad(f"{name} must be a number") from exc
    if (low is not None and number < low) or (high is not None and number > high) or math.isnan(number):
        raise _bad(f"{name} must be between {low} and {high}")
    return number


#: The light the sandbox renders when none is given: the documented ``light_source`` defaults.
DEFAULT_LIGHT = {"size": 0.3, "x": -0.3, "y": -0.6, "z": 0.7}


def _json_number(value: Any, name: str, low: float, high: float) -> float:
    """A JSON body's number: a JSON number (not a string, not a boolean) within the range."""
    if _not_json_number(value):
        raise _bad(f"{name} must be a number")
    return _number(value, name, low, high)


def _scale(value: Any, json_body: bool) -> float:
    """``image_transform.scale``: the docs give no range, so any positive finite number is taken
    (a JSON number in a JSON body).

    (A scale of 0 or below would show no subject at all: 400 ``invalid_parameter``.)
    """
    typed = not _not_json_number(value) if json_body else not isinstance(value, bool)
    try:
        scale = float(value) if typed else math.nan
    except (TypeError, ValueError):
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise _bad("image_transform.scale must be a positive number")
    return scale


def _parse_shadow(raw: Any, *, json_body: bool) -> dict[str, float] | None:
    """Validate ``shadow``; return the effective settings, or ``None`` when there is no shadow.

    As documented: ``true`` asks for automatic shadow estimation; the object needs ``enabled``,
    takes an optional ``opacity`` (0-1, default 0.5) and an optional ``light_source``, which, when
    given, needs ``size`` (0-1) and ``position`` with all of ``x``, ``y`` (-1..1) and ``z`` (0..2).
    Without a light source the shadow is estimated automatically: the sandbox renders it with the
    documented default light. In a JSON body the values have JSON types (``enabled`` a boolean,
    numbers numbers); multipart text is parsed (``true``/``false``, numbers, JSON object text).
    ``false`` (undocumented) means no shadow.

    :param raw: the ``shadow`` field as received
    :param json_body: whether it came from a JSON body
    """
    if raw is None:
        return None
    flag = _boolean(raw, json_body)
    if flag is not None:
        return {"opacity": 0.5, **DEFAULT_LIGHT} if flag else None
    obj = _object(raw, "shadow", json_body)
    if "enabled" not in obj:
        raise _bad("shadow.enabled is required")
    enabled = _flag(obj["enabled"], "shadow.enabled", json_body)
    number = _json_number if json_body else _number
    settings = {"opacity": number(obj.get("opacity", 0.5), "shadow.opacity", 0, 1), **DEFAULT_LIGHT}
    if obj.get("light_source") is not None:
        light = _object(obj["light_source"], "shadow.light_source", json_body)
        if "size" not in light or "position" not in light:
            raise _bad("shadow.light_source requires size and position")
        settings["size"] = number(light["size"], "shadow.light_source.size", 0, 1)
        position = _object(light["position"], "shadow.light_source.position", json_body)
        for axis, low, high in (("x", -1, 1), ("y", -1, 1), ("z", 0, 2)):
            if axis not in position:
                raise _bad(f"shadow.light_source.position.{axis} is required")
            settings[axis] = number(position[axis], f"shadow.light_source.position.{axis}", low, high)
    return settings if enabled else None


def _parse_margin(value: Any, name: str) -> tuple[float, str]:
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string like '10%' or '20px'")
    match = _MARGIN.match(value)
    if not match:
        raise _bad(f"{name} must look like '10%' or '20px'")
    amount, unit = float(match.group(1)), match.group(2)
    if unit == "%" and amount > 49:
        raise _bad(f"{name} percentage must be within 0-49%")
    return amount, unit


async def _read_body(request: Request) -> tuple[dict[str, Any], UploadFile | None]:
    """Return the body's fields (nested) and the uploaded ``image``, per content type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        raw = await request.body()
        if not raw.strip():
            raise _bad("Request body is empty", "invalid_request_body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _bad("Request body is not valid JSON", "invalid_request_body") from exc
        if not isinstance(body, dict):
            raise _bad("Request body must be a JSON object", "invalid_request_body")
        return body, None
    if content_type == "multipart/form-data":
        try:
            form = await read_form(request)
        except InputError as exc:
            raise _bad(exc.message, "invalid_request_body") from exc
        image = form.get("image")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if image is not None and not isinstance(image, UploadFile):
            raise _bad("image must be a file", "invalid_parameter")
        return _nest(fields), image
    raise _bad("Content type must be application/json or multipart/form-data", "unsupported_content_type")


async def _load_input(
    state: SandboxState, body: dict[str, Any], upload: UploadFile | None, json_body: bool
) -> bytes:
    if upload is not None:  # documented: if both are given, `image` wins
        try:
            return await upload_bytes(upload, MAX_BYTES)
        except InputError as exc:
            raise _bad("File size too large", "file_size_too_large") from exc
    url = body.get("image_url")
    if url is None or url == "":
        raise _bad(
            "image_url is required" if json_body else "image or image_url is required", "missing_parameter"
        )
    if not isinstance(url, str):
        raise _bad("image_url must be a string")
    try:
        return await fetch_url(state, url, MAX_BYTES)
    except InputError as exc:
        if exc.kind == "too_large":
            raise _bad("File size too large", "file_size_too_large") from exc
        raise _bad(f"Invalid image_url: {exc.message}") from exc


def _check_image(data: bytes) -> None:
    try:
        fmt, (w, h) = imaging.probe(data)
    except imaging.ImageDecodeError as exc:
        raise _bad("The image could not be decoded", "malformed_image") from exc
    if fmt not in ACCEPTED_FORMATS and fmt != "BOMB":
        raise _bad(f"Unsupported image format {fmt}", "unsupported_image_format")
    if w > MAX_SIDE or h > MAX_SIDE:
        raise _bad("Image resolution too high (max 6000x6000)", "resolution_too_high")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise _bad("Image resolution too low (min 64x64)")


def _is_json_body(request: Request, upload: UploadFile | None) -> bool:
    """Whether the fields came from a JSON body (their values then have JSON types)."""
    return upload is None and request.headers.get("content-type", "").startswith("application/json")


def _wants_image(request: Request) -> bool:
    """``Accept: image/*`` (or ``image/png``...) selects bytes; JSON is the documented default."""
    accept = request.headers.get("accept", "").lower()
    wants_json = "application/json" in accept
    return "image/" in accept and not wants_json


def _deliver(
    request: Request, state: SandboxState, data: bytes, media: str, suffix: str, headers: dict[str, str]
) -> Response:
    if _wants_image(request):
        return Response(data, media_type=media, headers=headers)
    name = state.store_result(data, media, suffix)
    base = state.config.public_base_url or str(request.base_url).rstrip("/")
    return JSONResponse({"result_url": f"{base}/_results/{name}"}, headers=headers)


def _charge(state: SandboxState, key: str, cost: Decimal, ctx: RequestContext) -> None:
    try:
        state.ledger.charge("pixelcut", key, cost, ctx.endpoint, ctx.request_id)
    except InsufficientCredits as exc:
        raise _insufficient() from exc
    ctx.charged = float(cost)


def _log_params(ctx: RequestContext, body: dict[str, Any], upload: UploadFile | None) -> None:
    ctx.params = {k: (v if isinstance(v, (bool, int, float)) else str(v)[:200]) for k, v in body.items()}
    if upload is not None:
        ctx.params["image"] = f"<file {upload.filename or ''}>"


def _remove_work(data: bytes, shadow: dict[str, float] | None, crop: bool, margins: dict[str, Any]) -> bytes:
    decoded = imaging.decode(data)
    alpha = imaging.segment(decoded.image)
    if alpha is None:
        raise _bad("The foreground subject of the image could not be detected", "unknown_foreground")
    result = imaging.cutout(decoded.image, alpha)
    if shadow is not None:
        result = imaging.add_shadow(
            result, shadow["opacity"], shadow["size"], shadow["x"], shadow["y"], shadow["z"]
        )
    if crop:
        bbox = imaging.foreground_bbox(result.getchannel("A"))
        if bbox:
            result = result.crop(bbox)
        w, h = decoded.image.size
        px = {}
        for side in _SIDES:
            amount, unit = margins.get(side) or margins.get("all") or (0.0, "px")
            basis = w if side in ("left", "right") else h
            px[side] = round(amount * basis / 100) if unit == "%" else round(amount)
        result = imaging.expand(result, px["top"], px["right"], px["bottom"], px["left"])
    return imaging.encode(result, "png")


async def remove_background(request: Request) -> Response:
    """``POST /v1/remove-background``.

    :param request: the request
    """
    state, ctx = get_state(request), context(request)
    try:
        key = _authenticate(request, state, ctx)
        body, upload = await _read_body(request)
        _log_params(ctx, body, upload)
        json_body = _is_json_body(request, upload)
        fmt = body.get("format", "png")
        if fmt != "png":
            raise _bad("format must be 'png'")
        crop = _flag(body.get("crop", False), "crop", json_body)
        shadow = _parse_shadow(body.get("shadow"), json_body=json_body)
        margins: dict[str, Any] = {}
        if "margin" in body:
            margins["all"] = _parse_margin(body["margin"], "margin")
        for side in _SIDES:
            if f"margin_{side}" in body:
                margins[side] = _parse_margin(body[f"margin_{side}"], f"margin_{side}")
        cost = state.config.costs.pixelcut_remove_background
        if shadow is not None:
            cost += state.config.costs.pixelcut_shadow
        if not state.ledger.check("pixelcut", key, cost):
            raise _insufficient()
        data = await _load_input(state, body, upload, json_body)
        _check_image(data)
        try:
            png = await run_in_threadpool(_remove_work, data, shadow, crop, margins)
        except imaging.ImageDecodeError as exc:
            raise _bad("The image could not be decoded", "malformed_image") from exc
        _charge(state, key, cost, ctx)
        return _deliver(request, state, png, "image/png", "png", {})
    except VendorError as err:
        return render_error("pixelcut", err, ctx.request_id)


def _generate_work(
    data: bytes,
    transform: dict[str, float | None],
    scene: str | None,
    prompt: str | None,
    negative: str | None,
) -> bytes:
    decoded = imaging.decode(data)
    img = decoded.image
    if img.mode == "RGBA":  # documented: an RGBA input's alpha channel is respected as-is
        subject = img
        default_scale = 1.0
    else:
        alpha = imaging.segment(img)
        if alpha is None:
            raise _bad("The foreground subject of the image could not be detected", "unknown_foreground")
        subject = imaging.cutout(img, alpha)
        bbox = imaging.foreground_bbox(alpha)
        if bbox:
            subject = subject.crop(bbox)
        default_scale = 0.6  # documented: auto-removed backgrounds are trimmed, then scaled 0.6
    background = imaging.scene_image(scene, prompt, negative)
    scale = transform["scale"] if transform["scale"] is not None else default_scale
    x_center = transform["x_center"] if transform["x_center"] is not None else 0.5
    y_center = transform["y_center"] if transform["y_center"] is not None else 0.5
    out = imaging.compose_on_scene(subject.convert("RGBA"), background, scale, x_center, y_center)
    return imaging.encode(out, "jpeg", quality=90)


def _transform(raw: Any, json_body: bool) -> dict[str, float | None]:
    """Validate ``image_transform``; ``None`` for what it leaves to the service."""
    transform: dict[str, float | None] = {"scale": None, "x_center": None, "y_center": None}
    if raw is None:
        return transform
    fields = _object(raw, "image_transform", json_body)
    number = _json_number if json_body else _number
    for name in ("x_center", "y_center"):  # documented: "Ranges from 0 to 1"
        if fields.get(name) is not None:
            transform[name] = number(fields[name], f"image_transform.{name}", 0.0, 1.0)
    if fields.get("scale") is not None:
        transform["scale"] = _scale(fields["scale"], json_body)
    return transform


async def generate_background(request: Request) -> Response:
    """``POST /v1/generate-background``.

    :param request: the request
    """
    state, ctx = get_state(request), context(request)
    try:
        key = _authenticate(request, state, ctx)
        body, upload = await _read_body(request)
        _log_params(ctx, body, upload)
        json_body = _is_json_body(request, upload)
        transform = _transform(body.get("image_transform"), json_body)
        scene = body.get("scene")
        if scene is not None and scene not in imaging.SCENES:
            raise _bad(f"scene must be one of {', '.join(imaging.SCENES)}")
        prompt, negative = body.get("prompt"), body.get("negative_prompt")
        for name, value in (("prompt", prompt), ("negative_prompt", negative)):
            if value is not None and not isinstance(value, str):
                raise _bad(f"{name} must be a string")
        if scene is not None:  # documented: with a scene, prompt and negative_prompt are ignored
            prompt = negative = None
        cost = state.config.costs.pixelcut_generate_background
        if not state.ledger.check("pixelcut", key, cost):
            raise _insufficient()
        data = await _load_input(state, body, upload, json_body)
        _check_image(data)
        try:
            jpeg = await run_in_threadpool(_generate_work, data, transform, scene, prompt, negative)
        except imaging.ImageDecodeError as exc:
            raise _bad("The image could not be decoded", "malformed_image") from exc
        _charge(state, key, cost, ctx)
        return _deliver(request, state, jpeg, "image/jpeg", "jpg", {})
    except VendorError as err:
        return render_error("pixelcut", err, ctx.request_id)


async def credits(request: Request) -> Response:
    """``GET /v1/credits`` → ``{"credits_remaining": 42}`` (number or string, configurable).

    :param request: the request
    """
    state, ctx = get_state(request), context(request)
    ctx.method = "GET"
    try:
        key = _authenticate(request, state, ctx)
    except VendorError as err:
        return render_error("pixelcut", err, ctx.request_id)
    account = state.ledger.get("pixelcut", key)
    balance = account.balance if account else Decimal(0)
    value: int | float | str = (
        plain_decimal(balance) if state.config.pixelcut_credits_type == "string" else as_number(balance)
    )
    return JSONResponse({"credits_remaining": value})


async def result(request: Request) -> Response:
    """``GET /_results/{name}``: a stored result, until it expires (then 404).

    :param request: the request
    """
    state = get_state(request)
    forced = state.faults["pixelcut"].config.result_url_status
    if forced is not None:
        return Response(f"{forced}", status_code=forced, media_type="text/plain")
    item = state.get_result(request.path_params["name"])
    if item is None:
        return Response("Not Found", status_code=404, media_type="text/plain")
    return Response(item.data, media_type=item.content_type)


__all__ = ["credits", "generate_background", "remove_background", "result"]
