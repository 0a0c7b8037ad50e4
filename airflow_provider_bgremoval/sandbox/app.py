"""The sandbox ASGI application: vendor routes, the fault middleware and the ``/_sandbox`` admin API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_provider_bgremoval.sandbox import pixelcut, pixian, poof
from airflow_provider_bgremoval.sandbox.config import (
    DEFAULT_PIXELCUT_KEY,
    DEFAULT_PIXIAN_ID,
    DEFAULT_POOF_KEY,
    VENDORS,
    ConfigError,
    FaultConfig,
    SandboxConfig,
    to_decimal,
)
from airflow_provider_bgremoval.sandbox.errors import VendorError, rate_limited, render_error, server_error
from airflow_provider_bgremoval.sandbox.faults import VendorFaults
from airflow_provider_bgremoval.sandbox.ledger import as_number
from airflow_provider_bgremoval.sandbox.state import (
    VENDOR_ROUTES,
    RequestContext,
    SandboxState,
    get_state,
    log,
    new_request_id,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_KEYS = {"pixelcut": DEFAULT_PIXELCUT_KEY, "pixian": DEFAULT_PIXIAN_ID, "poof": DEFAULT_POOF_KEY}
NOT_AN_IMAGE = b"<html><head><title>sandbox</title></head><body>This is not an image.</body></html>"


def _transport(send: Send) -> Any:
    """The server's transport behind ``send`` (uvicorn's ``RequestResponseCycle.send``), if any."""
    cycle = getattr(send, "__self__", None)
    return getattr(cycle, "transport", None)


async def _close(send: Send) -> None:
    """Close the client connection at once (no response, or mid-response)."""
    transport = _transport(send)
    if transport is None:  # not served by uvicorn: let the server abort the response
        raise ConnectionAbortedError("sandbox fault: connection dropped")
    transport.close()
    for _ in range(3):  # let uvicorn notice the disconnect, so it does not log or answer 500
        await asyncio.sleep(0)


async def _drain(receive: Receive) -> None:
    """Read the whole request body first: closing a socket with unread bytes in it sends a TCP
    reset, so the client would see ``Connection reset by peer`` (sometimes while still writing)
    instead of a server that hung up without answering."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _rate_limited(vendor: str, faults: VendorFaults) -> VendorError:
    """The vendor's 429, with the ``Retry-After`` its fault settings ask for."""
    config = faults.config
    return rate_limited(vendor, config.retry_after, config.retry_after_format == "http-date")


class FaultMiddleware:
    """Pure ASGI middleware in front of the vendor routes: limits, latency, faults, request log.

    It must be the outermost layer so that ``send`` is the server's own callable (needed to drop
    connections for real).

    :param app: the Starlette application
    :param state: the sandbox state
    """

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in VENDOR_ROUTES:
            await self.app(scope, receive, send)
            return
        vendor, kind = VENDOR_ROUTES[scope["path"]]
        ctx = RequestContext(vendor, scope["path"], kind, new_request_id(), method=scope["method"])
        scope.setdefault("state", {})["sandbox"] = ctx
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = int(message["status"])
            await send(message)

        faults = self.state.faults[vendor]
        admitted = False
        try:
            if kind not in faults.config.apply_to:
                await self.app(scope, receive, capture)
                return
            if not faults.admit(self.state.now()):
                ctx.fault = "rate_limit"
                await self._answer(vendor, _rate_limited(vendor, faults), ctx, scope, receive, capture)
                return
            admitted = True
            delay = faults.latency()
            if delay > 0:
                await asyncio.sleep(delay)
            ctx.ordinal, decision = faults.decide(self.state.now())
            if decision is None:
                await self.app(scope, receive, capture)
                return
            ctx.fault = decision.fault
            await self._apply(decision.fault, decision.status, faults, ctx, scope, receive, capture, send)
        finally:
            if admitted:
                faults.release()
            self.state.record(ctx, (time.perf_counter() - started) * 1000)

    async def _answer(
        self, vendor: str, err: VendorError, ctx: RequestContext, scope: Scope, receive: Receive, send: Send
    ) -> None:
        await render_error(vendor, err, ctx.request_id)(scope, receive, send)

    async def _apply(
        self,
        fault: str,
        status: int,
        faults: VendorFaults,
        ctx: RequestContext,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw_send: Send,
    ) -> None:
        vendor = ctx.vendor
        if fault == "error":
            await self._answer(vendor, server_error(vendor, status), ctx, scope, receive, send)
        elif fault == "rate_limited":
            await self._answer(vendor, _rate_limited(vendor, faults), ctx, scope, receive, send)
        elif fault == "drop_before_headers":
            ctx.status = 0
            await _drain(receive)
            await _close(raw_send)
        elif fault == "slow":
            replay = await self._stall(receive, faults.config.slow_seconds)
            if replay is None:
                ctx.fault = "slow (client gave up)"
                ctx.status = 0
                return
            await self.app(scope, replay, send)
        else:
            await self.app(scope, receive, self._body_fault(fault, ctx, send, raw_send))

    async def _stall(self, receive: Receive, seconds: float) -> Receive | None:
        """Hold the request for ``seconds``; return a replaying ``receive``, or ``None`` if the
        client disconnected meanwhile (then nothing is processed or charged)."""
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if messages[-1]["type"] == "http.disconnect":
            return None
        waiter = asyncio.ensure_future(receive())
        try:
            done, _ = await asyncio.wait({waiter}, timeout=seconds)
        finally:
            if not waiter.done():
                waiter.cancel()
        if done:
            return None

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        return replay

    def _body_fault(self, fault: str, ctx: RequestContext, send: Send, raw_send: Send) -> Send:
        """Wrap ``send`` so the (complete) response is damaged on its way out."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def damaged(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                if fault == "drop_after_processing":
                    ctx.status = 0
                    await _close(raw_send)
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            if fault == "drop_after_processing":
                return
            chunks.append(bytes(message.get("body", b"")))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            if fault == "drop_mid_body":
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
                await _close(raw_send)
                return
            if fault == "truncated_body":
                body = body[: len(body) // 2]
            elif fault == "non_image_body":
                body = NOT_AN_IMAGE
            elif fault == "empty_body":
                body = b""
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return damaged


# ------------------------------------------------------------------------------------------------
# Admin API
# ------------------------------------------------------------------------------------------------


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    data = await request.json()
    if not isinstance(data, dict):
        raise ConfigError("body must be a JSON object")
    return data


def _vendor(value: Any) -> str:
    if value not in VENDORS:
        raise ConfigError(f"vendor must be one of {', '.join(VENDORS)}")
    return str(value)


def _balance_view(state: SandboxState, vendor: str, key: str) -> dict[str, Any]:
    account = state.ledger.get(vendor, key)
    if account is None:
        raise ConfigError(f"unknown {vendor} key")
    view = account.to_dict()
    view["credits"] = view["balance"]
    return view


async def admin_state(request: Request) -> Response:
    """``GET /_sandbox/state``: accounts (fingerprints only), costs, faults and counters."""
    state = get_state(request)
    return JSONResponse(
        {
            "accounts": state.ledger.accounts(),
            "costs": state.config.costs.to_dict(),
            "faults": {v: state.faults[v].state(state.now()) for v in VENDORS},
            "result_ttl_seconds": state.config.result_ttl_seconds,
            "pixelcut_credits_type": state.config.pixelcut_credits_type,
            "clock_offset": state.clock.offset,
            "stored_results": len(state.results),
            "requests_logged": len(state.request_log),
            "charges": len(state.ledger.charges()),
        }
    )


async def admin_reset(request: Request) -> Response:
    """``POST /_sandbox/reset``: back to the start-up configuration (balances, faults, logs, clock)."""
    get_state(request).reset()
    return JSONResponse({"status": "reset"})


async def admin_balances(request: Request) -> Response:
    """``GET /_sandbox/balances?vendor=&key=`` reads; ``PUT|POST`` with
    ``{"vendor", "credits"?, "key"?, "state"?, "secret"?}`` sets (``key`` defaults to the vendor's
    default key; a new key is created)."""
    state = get_state(request)
    try:
        if request.method == "GET":
            vendor = request.query_params.get("vendor")
            if vendor is None:
                return JSONResponse({"accounts": state.ledger.accounts()})
            vendor = _vendor(vendor)
            key = request.query_params.get("key") or DEFAULT_KEYS[vendor]
            return JSONResponse(_balance_view(state, vendor, key))
        body = await _json(request)
        vendor = _vendor(body.get("vendor"))
        key = str(body.get("key") or DEFAULT_KEYS[vendor])
        credits: Decimal | None = None
        if body.get("credits") is not None:
            credits = to_decimal(body["credits"], "credits")
        new_state = body.get("state")
        if new_state is not None and new_state not in ("active", "dormant"):
            raise ConfigError("state must be 'active' or 'dormant'")
        secret = body.get("secret")
        if vendor == "pixian" and state.ledger.get(vendor, key) is None and not secret:
            raise ConfigError("a new pixian API id needs a secret")
        state.ledger.set_balance(vendor, key, credits, new_state, None if secret is None else str(secret))
        return JSONResponse(_balance_view(state, vendor, key))
    except ConfigError as exc:
        return _bad_request(str(exc))


async def admin_spend(request: Request) -> Response:
    """``PUT|POST /_sandbox/spend`` with ``{"vendor", "credits_per_day", "key"?}``: the account spends
    that much per simulated day (86,400 s of the sandbox clock; ``/_sandbox/clock`` advances it)."""
    state = get_state(request)
    try:
        body = await _json(request)
        vendor = _vendor(body.get("vendor"))
        key = str(body.get("key") or DEFAULT_KEYS[vendor])
        state.ledger.set_spend(vendor, key, to_decimal(body.get("credits_per_day"), "credits_per_day"))
        return JSONResponse(_balance_view(state, vendor, key))
    except KeyError as exc:
        return _bad_request(str(exc.args[0]))
    except ConfigError as exc:
        return _bad_request(str(exc))


async def admin_faults(request: Request) -> Response:
    """``GET /_sandbox/faults`` reads; ``POST|PUT`` with ``{"vendor", ...settings}`` replaces one
    vendor's settings (see :class:`~.config.FaultConfig`); ``DELETE ?vendor=`` clears (all when no
    vendor)."""
    state = get_state(request)
    try:
        if request.method == "GET":
            return JSONResponse({v: state.faults[v].state(state.now()) for v in VENDORS})
        if request.method == "DELETE":
            vendor = request.query_params.get("vendor")
            for v in [_vendor(vendor)] if vendor else list(VENDORS):
                state.faults[v] = state.new_faults(v, FaultConfig())
                state.ledger.set_exhaust_after(v, None)
            return JSONResponse({v: state.faults[v].state(state.now()) for v in VENDORS})
        body = await _json(request)
        vendor = _vendor(body.pop("vendor", None))
        cfg = FaultConfig.from_dict(body)
        state.faults[vendor] = state.new_faults(vendor, cfg)
        state.ledger.set_exhaust_after(vendor, cfg.exhaust_after)
        return JSONResponse(state.faults[vendor].state(state.now()))
    except (ConfigError, ValueError, TypeError) as exc:
        return _bad_request(str(exc))


async def admin_settings(request: Request) -> Response:
    """``POST /_sandbox/settings``: change ``result_ttl_seconds``, ``pixelcut_credits_type``,
    ``poof_crop_padding``, ``allow_private_urls``, ``fetch_timeout_seconds`` or ``costs`` at run time."""
    state = get_state(request)
    try:
        cfg = state.config
        cfg.update(await _json(request))
        return JSONResponse(
            {
                "result_ttl_seconds": cfg.result_ttl_seconds,
                "fetch_timeout_seconds": cfg.fetch_timeout_seconds,
                "allow_private_urls": cfg.allow_private_urls,
                "pixelcut_credits_type": cfg.pixelcut_credits_type,
                "poof_crop_padding": cfg.poof_crop_padding,
                "costs": cfg.costs.to_dict(),
            }
        )
    except (ConfigError, ValueError, TypeError) as exc:
        return _bad_request(str(exc))


async def admin_requests(request: Request) -> Response:
    """``GET /_sandbox/requests?vendor=&limit=``: the request log (key fingerprints only)."""
    state = get_state(request)
    limit = request.query_params.get("limit")
    return JSONResponse(state.requests(request.query_params.get("vendor"), int(limit) if limit else None))


async def admin_charges(request: Request) -> Response:
    """``GET /_sandbox/charges?vendor=``: the charge log and its total."""
    state = get_state(request)
    charges = state.ledger.charges(request.query_params.get("vendor"))
    total = sum((Decimal(str(c["credits"])) for c in charges), Decimal(0))
    return JSONResponse({"charges": charges, "total": as_number(total)})


async def admin_clock(request: Request) -> Response:
    """``POST /_sandbox/clock`` with ``{"advance": seconds}``: move the sandbox clock forward."""
    state = get_state(request)
    try:
        body = await _json(request)
        offset = state.clock.advance(float(body.get("advance", 0)))
    except (ConfigError, ValueError, TypeError) as exc:
        return _bad_request(str(exc))
    return JSONResponse({"offset": offset})


async def admin_health(request: Request) -> Response:
    """``GET /_sandbox/health``."""
    return JSONResponse({"status": "ok"})


def create_app(config: SandboxConfig | None = None) -> SandboxApp:
    """Build the sandbox ASGI application.

    :param config: the configuration (defaults: DESIGN.md keys, balances and costs)
    :returns: the ASGI app; its sandbox state is :attr:`SandboxApp.state`
    """
    state = SandboxState(config or SandboxConfig())
    routes = [
        Route("/v1/remove-background", pixelcut.remove_background, methods=["POST"]),
        Route("/v1/generate-background", pixelcut.generate_background, methods=["POST"]),
        Route("/v1/credits", pixelcut.credits, methods=["GET"]),
        Route("/_results/{name}", pixelcut.result, methods=["GET"]),
        Route("/api/v2/remove-background", pixian.remove_background, methods=["POST"]),
        Route("/api/v2/account", pixian.account, methods=["GET"]),
        Route("/v1/remove", poof.remove, methods=["POST"]),
        Route("/v1/me", poof.me, methods=["GET"]),
        Route("/_sandbox/health", admin_health, methods=["GET"]),
        Route("/_sandbox/state", admin_state, methods=["GET"]),
        Route("/_sandbox/reset", admin_reset, methods=["POST"]),
        Route("/_sandbox/balances", admin_balances, methods=["GET", "PUT", "POST"]),
        Route("/_sandbox/spend", admin_spend, methods=["PUT", "POST"]),
        Route("/_sandbox/faults", admin_faults, methods=["GET", "PUT", "POST", "DELETE"]),
        Route("/_sandbox/settings", admin_settings, methods=["POST", "PUT"]),
        Route("/_sandbox/requests", admin_requests, methods=["GET"]),
        Route("/_sandbox/charges", admin_charges, methods=["GET"]),
        Route("/_sandbox/clock", admin_clock, methods=["POST"]),
    ]
    inner = Starlette(routes=routes)
    inner.state.sandbox = state
    app = SandboxApp(FaultMiddleware(inner, state), state)
    log.debug("sandbox app created")
    return app


class SandboxApp:
    """The ASGI callable returned by :func:`create_app`.

    :param app: the wrapped application
    :param state: the sandbox state, exposed as :attr:`state`
    """

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        #: The sandbox state behind every route: balances, faults, results and the request log.
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


__all__ = ["FaultMiddleware", "SandboxApp", "create_app"]
