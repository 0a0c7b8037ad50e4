"""Shared runtime state of one sandbox instance, and the helpers the vendor handlers use."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from airflow_provider_bgremoval.sandbox.config import VENDORS, FaultConfig, SandboxConfig
from airflow_provider_bgremoval.sandbox.faults import VendorFaults
from airflow_provider_bgremoval.sandbox.ledger import Ledger

log = logging.getLogger("airflow_provider_bgremoval.sandbox")

#: A vendor's "MB" (Pixelcut "25MB", Poof "20MB", Pixian's "1 megabyte" of base64) read as a decimal
#: megabyte, 1,000,000 bytes: the stricter reading, so whatever the sandbox accepts is within the
#: vendor's limit under either reading. The provider's clients state the same value
#: (``vendors.base.MEGABYTE``; the sandbox imports no client code) and a contract test checks it.
MEGABYTE = 1_000_000

#: The vendor endpoints: path -> (vendor, kind). ``process`` endpoints are billed.
VENDOR_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/remove-background": ("pixelcut", "process"),
    "/v1/generate-background": ("pixelcut", "process"),
    "/v1/credits": ("pixelcut", "account"),
    "/api/v2/remove-background": ("pixian", "process"),
    "/api/v2/account": ("pixian", "account"),
    "/v1/remove": ("poof", "process"),
    "/v1/me": ("poof", "account"),
}


@dataclass
class RequestContext:
    """What the sandbox records about one vendor request (never secrets).

    :param vendor: the vendor
    :param endpoint: the request path
    :param kind: ``process`` or ``account``
    :param request_id: the sandbox's request id (Poof's ``X-Request-ID``)
    """

    vendor: str
    endpoint: str
    kind: str
    request_id: str
    method: str = "POST"
    key: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fault: str | None = None
    ordinal: int | None = None
    charged: float | None = None
    status: int | None = None


@dataclass
class StoredResult:
    """A result served at a Pixelcut ``result_url``."""

    data: bytes
    content_type: str
    expires_at: float


class Clock:
    """The sandbox clock: monotonic time plus an offset that tests may advance."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """Return the current sandbox time in seconds."""
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward (e.g. to expire result URLs) and return the new offset.

        :param seconds: how far
        """
        self.offset += seconds
        return self.offset


class SandboxState:
    """Everything one running sandbox keeps in memory.

    :param config: the configuration
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.clock = Clock()
        self.ledger = Ledger(config, self.clock.now)
        self.faults: dict[str, VendorFaults] = {}
        self.results: dict[str, StoredResult] = {}
        self.request_log: deque[dict[str, Any]] = deque(maxlen=20000)
        self._lock = threading.Lock()
        self._seq = 0
        self.reset()

    def reset(self) -> None:
        """Restore balances, faults, clock; clear logs and stored results."""
        self.ledger.reset(self.config)
        self.clock.offset = 0.0
        self.faults = {v: self.new_faults(v, self.config.faults[v]) for v in VENDORS}
        with self._lock:
            self.results.clear()
            self.request_log.clear()
            self._seq = 0

    def now(self) -> float:
        """The sandbox clock."""
        return self.clock.now()

    def new_faults(self, vendor: str, config: FaultConfig) -> VendorFaults:
        """Fault state for ``vendor`` set now (its rules' time windows count from this moment).

        :param vendor: the vendor
        :param config: its fault settings
        """
        return VendorFaults(vendor, config, self.config.seed, set_at=self.now())

    # ----- results (Pixelcut result_url) -------------------------------------------------------

    def store_result(self, data: bytes, content_type: str, suffix: str) -> str:
        """Keep a result for ``result_ttl_seconds`` and return its file name.

        :param data: the encoded image
        :param content_type: its media type
        :param suffix: ``png`` or ``jpg``
        """
        name = f"{uuid.uuid4()}.{suffix}"
        now = self.now()
        with self._lock:
            for stale in [k for k, v in self.results.items() if v.expires_at <= now]:
                del self.results[stale]
            while len(self.results) >= 5000:
                del self.results[next(iter(self.results))]
            self.results[name] = StoredResult(data, content_type, now + self.config.result_ttl_seconds)
        return name

    def get_result(self, name: str) -> StoredResult | None:
        """Return a stored, unexpired result.

        :param name: the file name from :meth:`store_result`
        """
        with self._lock:
            item = self.results.get(name)
            if item is None or item.expires_at <= self.now():
                self.results.pop(name, None)
                return None
            return item

    # ----- request log ---------------------------------------------------------------------------

    def record(self, ctx: RequestContext, duration_ms: float) -> None:
        """Append a request to the log (fingerprints only) and log it.

        :param ctx: the request
        :param duration_ms: how long it took
        """
        with self._lock:
            self._seq += 1
            entry = {
                "seq": self._seq,
                "timestamp": time.time(),
                "clock": self.now(),
                "vendor": ctx.vendor,
                "method": ctx.method,
                "endpoint": ctx.endpoint,
                "kind": ctx.kind,
                "request_id": ctx.request_id,
                "key": ctx.key,
                "status": ctx.status,
                "fault": ctx.fault,
                "ordinal": ctx.ordinal,
                "charged": ctx.charged,
                "duration_ms": round(duration_ms, 2),
                "params": ctx.params,
            }
            self.request_log.append(entry)
        log.info(
            "%s %s %s -> %s in %.1f ms key=%s fault=%s",
            ctx.vendor,
            ctx.method,
            ctx.endpoint,
            ctx.status,
            duration_ms,
            ctx.key,
            ctx.fault,
        )

    def requests(self, vendor: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return logged requests, oldest first.

        :param vendor: only this vendor
        :param limit: only the last N
        """
        with self._lock:
            items = [dict(e) for e in self.request_log if vendor is None or e["vendor"] == vendor]
        return items[-limit:] if limit else items


def context(request: Request) -> RequestContext:
    """Return the :class:`RequestContext` the middleware attached to ``request``.

    :param request: the request
    """
    ctx = request.scope.get("state", {}).get("sandbox")
    if ctx is None:  # direct calls without the middleware (not expected)
        vendor, kind = VENDOR_ROUTES.get(request.url.path, ("unknown", "process"))
        ctx = RequestContext(vendor, request.url.path, kind, new_request_id())
        request.scope.setdefault("state", {})["sandbox"] = ctx
    assert isinstance(ctx, RequestContext)
    return ctx


def new_request_id() -> str:
    """A Poof-style request id, ``req_<hex>``."""
    return "req_" + uuid.uuid4().hex


def get_state(request: Request) -> SandboxState:
    """Return the sandbox state of the app serving ``request``.

    :param request: the request
    """
    state = request.app.state.sandbox
    assert isinstance(state, SandboxState)
    return state


# ----- input helpers ------------------------------------------------------------------------------


class InputError(Exception):
    """An input problem, mapped by each vendor onto its own error code.

    :param kind: ``too_large``, ``fetch_failed``, ``form``
    :param message: what went wrong
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def parse_bool(value: Any) -> bool | None:
    """Parse ``true``/``false`` (any case, also 1/0 and JSON booleans); ``None`` if invalid.

    :param value: the raw value
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
    return None


async def read_form(request: Request) -> FormData:
    """Parse a multipart or urlencoded body (fields up to 4 MB, so size checks stay ours).

    :param request: the request
    :raises InputError: ``form`` when the body is not a valid form
    """
    try:
        return await request.form(max_files=10, max_fields=200, max_part_size=4 * 1024 * 1024)
    except Exception as exc:
        raise InputError("form", f"Invalid form body: {exc}") from exc


async def upload_bytes(upload: UploadFile, max_bytes: int) -> bytes:
    """Read an uploaded file, refusing more than ``max_bytes``.

    :param upload: the form file
    :param max_bytes: the limit
    :raises InputError: ``too_large``
    """
    if upload.size is not None and upload.size > max_bytes:
        raise InputError("too_large", f"File exceeds {max_bytes} bytes")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError("too_large", f"File exceeds {max_bytes} bytes")
    return data


def _is_private(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if addr.is_private or addr.is_loopback or addr.is_link_local:
            return True
    return False


async def fetch_url(state: SandboxState, url: str, max_bytes: int) -> bytes:
    """Download an ``image_url`` input (http/https, at most 3 redirects, size cap, timeout).

    Loopback and private targets are allowed unless ``allow_private_urls`` is off (tests point
    URLs at a local fake-gcs-server).

    :param state: the sandbox state (for the settings)
    :param url: the URL
    :param max_bytes: the size cap
    :raises InputError: ``fetch_failed`` or ``too_large``
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError("fetch_failed", "image URL must be an absolute http(s) URL")
    if not state.config.allow_private_urls and await asyncio.to_thread(_is_private, parts.hostname):
        raise InputError("fetch_failed", "image URL points at a private address")
    timeout = httpx.Timeout(state.config.fetch_timeout_seconds)
    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout, follow_redirects=True, max_redirects=3, trust_env=False
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise InputError("fetch_failed", f"image URL answered HTTP {response.status_code}")
            chunks = bytearray()
            async for chunk in response.aiter_bytes():
                chunks.extend(chunk)
                if len(chunks) > max_bytes:
                    raise InputError("too_large", f"image at URL exceeds {max_bytes} bytes")
            return bytes(chunks)
    except httpx.HTTPError as exc:
        raise InputError("fetch_failed", f"could not fetch image URL: {exc.__class__.__name__}") from exc


def plain_decimal(value: Decimal) -> str:
    """Write a credit amount exactly, in plain decimals (``42``, ``0.25``): never an exponent such as
    ``5e-05``, nor a float's rounding of it.

    :param value: the amount
    """
    return format(value.normalize(), "f")


def credits_header(value: Decimal) -> str:
    """Format a credit amount for a header (``1.0``, ``0.25``; see :func:`plain_decimal`).

    :param value: the amount
    """
    text = plain_decimal(value)
    return text if "." in text else f"{text}.0"
