"""The hooks' async HTTP transport: httpcore's own HTTP/1.1 connections on an O(1) pool of ours.

httpcore 1.0.9's ``AsyncConnectionPool`` rescans every connection several times per request, ~40 % of
a vendor call's client CPU at 16 in flight (docs/benchmarks.md, "CPU per image" and "The vendor call
on the provider's own pool"). Requests, responses and errors map to httpx's as
``httpx.AsyncHTTPTransport`` maps them. A client given a transport no longer reads the proxy
environment, so :func:`hook_transport` gives this one only when no proxy is configured. HTTP/2, Unix
sockets and local addresses are not offered (the hooks use none of them).
"""

from __future__ import annotations

import contextlib
import ssl
import typing
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator

import anyio
import httpcore
import httpx

#: A pool key: scheme, host, port.
_Origin: typing.TypeAlias = tuple[bytes, bytes, "int | None"]


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """Re-raise an httpcore error as httpx's of the same name, as ``httpx.AsyncHTTPTransport`` does."""
    try:
        yield
    except Exception as exc:
        names = [cls.__name__ for cls in type(exc).__mro__ if cls.__module__.startswith("httpcore")]
        mapped = next((getattr(httpx, name) for name in names if hasattr(httpx, name)), None)
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


class _Body(httpx.AsyncByteStream):
    """A pooled response body: httpcore's errors raised as httpx's; closing it hands the connection back."""

    def __init__(self, stream: AsyncIterable[bytes], release: Callable[[], Awaitable[None]]) -> None:
        self._stream = stream
        self._release: Callable[[], Awaitable[None]] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            close = getattr(self._stream, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True), _httpx_errors():
                    await close()
        finally:
            await release()


async def _close(connections: list[httpcore.AsyncHTTPConnection]) -> None:
    """Close connections taken out of the pool (not interrupted by a cancellation)."""
    with anyio.CancelScope(shield=True):
        for connection in connections:
            await connection.aclose()


class PooledTransport(httpx.AsyncBaseTransport):
    """
    ``httpx.AsyncHTTPTransport`` for direct HTTP/1.1 connections, pooled at O(1) per request.

    :param verify: TLS verification, as httpx takes it (``True``, a CA bundle path or an SSL context).
    :param limits: open connections at most (``max_connections``), idle ones kept
        (``max_keepalive_connections``) and for how long (``keepalive_expiry``), as httpx's transport.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
    ) -> None:
        self._ssl_context = httpx.create_ssl_context(verify=verify)
        self._limits = limits
        self._slots = anyio.Semaphore(limits.max_connections or 1 << 30)
        self._idle: dict[_Origin, list[httpcore.AsyncHTTPConnection]] = {}  # oldest first
        self._idle_count = 0
        self._busy: set[httpcore.AsyncHTTPConnection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """
        Send ``request`` on a pooled connection; its response's body is read (and closed) later.

        :param request: the request, as the client built it.
        """
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{url.scheme}://'.")
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("an async transport needs an async request body")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        await self._acquire_slot(request.extensions.get("timeout", {}).get("pool"))
        key = (url.raw_scheme, url.raw_host, url.port)
        connection, stale = self._take(key, core_request.url.origin)
        self._busy.add(connection)
        try:
            await _close(stale)
            with _httpx_errors():
                response = await connection.handle_async_request(core_request)
        except BaseException:
            await self._release(key, connection)
            raise
        if not isinstance(response.stream, AsyncIterable):  # pragma: no cover - httpcore's async API
            raise TypeError("httpcore returned a sync body")
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream, lambda: self._release(key, connection)),
            extensions=response.extensions,
        )

    async def _acquire_slot(self, timeout: float | None) -> None:
        """A connection slot: a free one at once; else wait, up to the pool timeout."""
        with contextlib.suppress(anyio.WouldBlock):
            # No cancel scope and no checkpoint (a pass of the event loop) when a slot is free: ~2 % of
            # the pipeline's client CPU per image (docs/benchmarks.md).
            self._slots.acquire_nowait()
            return
        try:
            with anyio.fail_after(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("timed out waiting for a connection of the pool") from None

    def _take(
        self, key: _Origin, origin: httpcore.Origin
    ) -> tuple[httpcore.AsyncHTTPConnection, list[httpcore.AsyncHTTPConnection]]:
        """The newest live idle connection to ``origin``, else a new one; and the connections to close."""
        idle, stale = self._idle.get(key, []), list[httpcore.AsyncHTTPConnection]()
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if not connection.has_expired() and connection.is_idle():
                return connection, stale
            stale.append(connection)  # expired, or the server closed it while it was idle
        cap = self._limits.max_connections
        if cap is not None and len(self._busy) + self._idle_count >= cap:
            stale.append(self._evict())  # holding a slot, fewer than ``cap`` are busy: one is idle
        connection = httpcore.AsyncHTTPConnection(
            origin=origin, ssl_context=self._ssl_context, keepalive_expiry=self._limits.keepalive_expiry
        )
        return connection, stale

    def _evict(self) -> httpcore.AsyncHTTPConnection:
        """The oldest idle connection of any origin, out of the pool."""
        idle = next(connections for connections in self._idle.values() if connections)
        self._idle_count -= 1
        return idle.pop(0)

    async def _release(self, key: _Origin, connection: httpcore.AsyncHTTPConnection) -> None:
        """Hand a connection back: kept if it can serve another request, else closed; free its slot."""
        self._busy.discard(connection)
        self._slots.release()
        closing = list[httpcore.AsyncHTTPConnection]()
        if connection.is_idle() and not connection.is_closed():  # (one that never connected is both)
            idle = self._idle.setdefault(key, [])
            idle.append(connection)
            self._idle_count += 1
            if idle[0].has_expired():  # the oldest of this origin: expired ones do not stay open unused
                closing.append(idle.pop(0))
                self._idle_count -= 1
            cap = self._limits.max_keepalive_connections
            if cap is not None and self._idle_count > cap:
                closing.append(self._evict())
        elif not connection.is_closed():  # a response closed before its body was read to the end
            closing.append(connection)
        await _close(closing)

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        connections = [c for idle in self._idle.values() for c in idle] + list(self._busy)
        self._idle.clear()
        self._idle_count = 0
        self._busy.clear()
        await _close(connections)


def hook_transport(limits: httpx.Limits) -> PooledTransport | None:
    """
    The transport of a hook's async client: a :class:`PooledTransport`, or ``None`` (httpx's default
    transport, with its proxy mounts) when the environment configures a proxy.

    :param limits: the client's connection limits.
    """
    if any(scheme != "no" for scheme in urllib.request.getproxies()):  # "no": NO_PROXY alone
        return None
    return PooledTransport(limits=limits)
