"""Vendor error envelopes, exactly as each vendor documents them (VENDORS.md §1.6, §2.4, §3.5).

Where a vendor's documents are silent, the choice made here is marked **invented**.
"""

from __future__ import annotations

import math
import time
from email.utils import formatdate
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

#: Pixian error codes by error kind. Pixian documents only code 1006 ("Failed to read the supplied
#: image"). Every other numeric code here is INVENTED by the sandbox (DESIGN.md: "mark these as
#: assumptions"); clients must key on the HTTP status, never on these numbers.
PIXIAN_CODES: dict[str, int] = {
    "unreadable_image": 1006,  # documented
    "internal": 1000,  # invented
    "missing_image": 1001,  # invented
    "invalid_parameter": 1002,  # invented
    "image_too_large": 1003,  # invented (over 32,000,000 pixels, or image.base64 over 1,000,000 characters)
    "unknown_foreground": 1007,  # invented
    "unauthorized": 1101,  # invented; status 401 is also an assumption (DESIGN.md)
    "insufficient_credits": 1102,  # invented; status 402 is also an assumption (DESIGN.md)
    "account_dormant": 1103,  # invented; status 402 is also an assumption
    "rate_limited": 1201,  # invented code; the 429 status is documented
}


class VendorError(Exception):
    """An error answer in the vendor's own envelope.

    :param status: the HTTP status
    :param code: the vendor's error code (Pixelcut ``error_code``, Poof ``code``, or a key of
        :data:`PIXIAN_CODES` for Pixian)
    :param message: the human-readable message
    :param headers: extra response headers (e.g. ``Retry-After``)
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def render_error(vendor: str, err: VendorError, request_id: str) -> Response:
    """Render ``err`` in ``vendor``'s envelope.

    Server errors (5xx) other than the documented ones are rendered the way a crashed backend or a
    gateway answers: plain text, which the docs warn about (Pixian: "a non-JSON error response").

    :param vendor: ``pixelcut``, ``pixian`` or ``poof``
    :param err: the error
    :param request_id: the request id (Poof puts it in the body and in ``X-Request-ID``)
    """
    headers = dict(err.headers)
    if vendor == "poof":
        headers["X-Request-ID"] = request_id
        body: dict[str, Any] = {
            "code": err.code,
            "message": err.message,
            "details": err.message,
            "request_id": request_id,
        }
        return JSONResponse(body, status_code=err.status, headers=headers)
    if err.status >= 500 and (vendor == "pixelcut" or err.status != 500):
        # Pixelcut documents no 500 body; Pixian's 502/503 come from its edge, not its API.
        return PlainTextResponse(err.message, status_code=err.status, headers=headers)
    if vendor == "pixelcut":
        return JSONResponse({"error": err.message, "error_code": err.code}, err.status, headers=headers)
    code = PIXIAN_CODES.get(err.code, PIXIAN_CODES["internal"])
    pixian_body: dict[str, Any] = {"error": {"status": err.status, "code": code, "message": err.message}}
    return JSONResponse(pixian_body, status_code=err.status, headers=headers)


def server_error(vendor: str, status: int) -> VendorError:
    """The injected ``error`` fault for ``status`` in the vendor's vocabulary.

    :param vendor: the vendor
    :param status: 500, 502, 503, 504...
    """
    if vendor == "poof":
        if status == 500:
            return VendorError(500, "internal_server_error", "Internal server error, retry later")
        return VendorError(status, "upstream_error", "Processing service unavailable; retry with backoff")
    if vendor == "pixian" and status == 500:
        return VendorError(500, "internal", "Internal error. Wait a moment then try again.")
    reason = {
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
    return VendorError(status, "internal", f"{status} {reason.get(status, 'Server Error')}")


def retry_after_header(seconds: float, http_date: bool = False) -> str:
    """A ``Retry-After`` value in one of RFC 9110's two forms, never earlier than ``seconds`` from now.

    :param seconds: how long the client should wait
    :param http_date: the time to come back as an IMF-fixdate (``Wed, 09 Dec 2026 21:30:00 GMT``)
        instead of whole delta-seconds (a fraction rounds up)
    """
    if http_date:
        return formatdate(math.ceil(time.time() + seconds), usegmt=True)
    return str(math.ceil(seconds))


def rate_limited(vendor: str, retry_after: float | None, http_date: bool = False) -> VendorError:
    """The vendor's 429 answer, with ``Retry-After`` only when configured.

    :param vendor: the vendor
    :param retry_after: seconds, or ``None`` for no header (what the vendors document)
    :param http_date: send ``Retry-After`` as an HTTP date (see :func:`retry_after_header`)
    """
    headers = {} if retry_after is None else {"Retry-After": retry_after_header(retry_after, http_date)}
    if vendor == "pixelcut":
        return VendorError(429, "rate_limit_exceeded", "Too many requests", headers)
    if vendor == "poof":
        return VendorError(429, "rate_limit_exceeded", "Rate limit exceeded; retry with backoff", headers)
    return VendorError(429, "rate_limited", "Too Many Requests", headers)


def unauthorized(vendor: str, revoked: bool = False) -> VendorError:
    """The vendor's bad-credentials answer.

    :param vendor: the vendor
    :param revoked: the key was revoked (Poof Gen A answers 403 ``permission_denied``)
    """
    if vendor == "pixelcut":
        return VendorError(401, "invalid_auth_token", "API Token not found")
    if vendor == "poof":
        if revoked:
            return VendorError(403, "permission_denied", "API key revoked or account suspended")
        return VendorError(401, "authentication_error", "Invalid or missing API key")
    return VendorError(401, "unauthorized", "Invalid API credentials")
