"""PooledTransport over real sockets, beside httpx's own transport: the same replies, reuse and errors."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airflow_provider_bgremoval.hooks.poof import PoofHook
from airflow_provider_bgremoval.hooks.transport import PooledTransport, hook_transport
from tests.support.connections import set_connection

TransportFactory = Callable[..., httpx.AsyncBaseTransport]
TRANSPORTS: dict[str, TransportFactory] = {
    "httpx": httpx.AsyncHTTPTransport,
    "pooled": PooledTransport,
}
ME = {"organizationId": "org_1", "plan": "Pro", "maxCredits": 100, "usedCredits": 40}


class TinyServer:
    """An HTTP/1.1 server on a local port; the path picks the behaviour (see :meth:`reply`)."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.request_lines: list[str] = []
        self.closed_by_server = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.url = ""
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while await self.exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test ended (the server cancels its handlers)
        finally:
            self.open -= 1
            writer.close()
            self.handlers.discard(task)

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; ``False``: the connection ends."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.request_lines.append(lines[0])
        length = next(
            (int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:")), 0
        )
        await reader.readexactly(length)
        return await self.reply(lines[0].split(" ")[1], writer)

    async def reply(self, target: str, writer: asyncio.StreamWriter) -> bool:
        path = target.rsplit("/", 1)[-1]
        if path == "hang":
            await asyncio.sleep(3600)
        if path == "garbage":
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            return False
        if path == "short-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await writer.drain()
            return False
        if path == "slow":
            await asyncio.sleep(0.1)
        body = json.dumps(ME).encode() if path == "me" else b"x" * (200_000 if path == "big" else 2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        if path == "close-after":  # closed while the client keeps the connection idle
            writer.close()
            await writer.wait_closed()
            self.closed_by_server.set()
            return False
        return True


@asynccontextmanager
async def tiny_server(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[TinyServer]:
    served = TinyServer()
    served.server = await asyncio.start_server(served.handle, "127.0.0.1", 0, ssl=ssl_context)
    port = served.server.sockets[0].getsockname()[1]
    served.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield served
    finally:
        served.server.close()
        for task in list(served.handlers):
            task.cancel()
        await asyncio.gather(*served.handlers)


@asynccontextmanager
async def client(kind: str, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    timeout = kwargs.pop("timeout", httpx.Timeout(5.0))
    async with httpx.AsyncClient(transport=TRANSPORTS[kind](**kwargs), timeout=timeout) as http:
        yield http


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(params=sorted(TRANSPORTS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_sequential_requests_share_one_connection(kind: str) -> None:
    async with tiny_server() as server, client(kind) as http:
        replies = [await http.post(f"{server.url}/ok", content=b"body") for _ in range(3)]
    assert [(r.status_code, r.content) for r in replies] == [(200, b"xx")] * 3
    assert server.connections == 1


async def test_an_idle_connection_the_server_closed_is_replaced(kind: str) -> None:
    async with tiny_server() as server, client(kind) as http:
        assert (await http.get(f"{server.url}/close-after")).status_code == 200
        await server.closed_by_server.wait()
        await asyncio.sleep(0.05)  # the FIN reaches the client's socket
        reply = await http.get(f"{server.url}/ok")
    assert reply.content == b"xx" and server.connections == 2


async def test_concurrent_requests_stay_within_max_connections_and_reuse_them(kind: str) -> None:
    limits = httpx.Limits(max_connections=3, max_keepalive_connections=3)
    async with tiny_server() as server, client(kind, limits=limits) as http:
        replies = await asyncio.gather(*(http.get(f"{server.url}/slow") for _ in range(9)))
    assert all(r.content == b"xx" for r in replies)
    assert server.most_open <= 3 and server.connections == 3


async def test_idle_connections_expire_and_the_keepalive_cap_holds(kind: str) -> None:
    async with tiny_server() as server:
        async with client(kind, limits=httpx.Limits(keepalive_expiry=0.05)) as http:
            await http.get(f"{server.url}/ok")
            await asyncio.sleep(0.15)
            await http.get(f"{server.url}/ok")
        assert server.connections == 2
        async with client(kind, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            await http.get(f"{server.url}/ok")
            await http.get(f"{server.url}/ok")
        assert server.connections == 4


async def test_a_response_closed_before_its_body_was_read_is_not_reused(kind: str) -> None:
    async with tiny_server() as server, client(kind) as http:
        async with http.stream("GET", f"{server.url}/big") as response:
            assert response.status_code == 200  # the body is not read
        assert (await http.get(f"{server.url}/ok")).content == b"xx"
    assert server.connections == 2


async def test_a_cancelled_request_frees_its_connection_slot(kind: str) -> None:
    limits = httpx.Limits(max_connections=1)
    async with (
        tiny_server() as server,
        client(kind, limits=limits, timeout=httpx.Timeout(5.0, pool=2.0)) as http,
    ):
        hanging = asyncio.create_task(http.get(f"{server.url}/hang"))
        await asyncio.sleep(0.1)
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        assert (await http.get(f"{server.url}/ok")).content == b"xx"


async def test_a_free_connection_slot_is_taken_without_waiting_and_a_full_pool_still_waits() -> None:
    """Only a full pool waits for a slot (``acquire``): a free slot costs no pass of the event loop."""
    transport = PooledTransport(limits=httpx.Limits(max_connections=1))
    waits = 0
    slots = transport._slots

    class Counted:
        acquire_nowait, release = slots.acquire_nowait, slots.release

        async def acquire(self) -> None:
            nonlocal waits
            waits += 1
            await slots.acquire()

    transport._slots = Counted()  # type: ignore[assignment]
    async with tiny_server() as server, httpx.AsyncClient(transport=transport, timeout=5.0) as http:
        assert (await http.get(f"{server.url}/ok")).content == b"xx"
        assert waits == 0
        replies = await asyncio.gather(*(http.get(f"{server.url}/slow") for _ in range(2)))
    assert [r.content for r in replies] == [b"xx"] * 2 and waits == 1


async def test_closing_the_transport_closes_its_connections(kind: str) -> None:
    async with tiny_server() as server:
        async with client(kind) as http:
            await http.get(f"{server.url}/ok")
            assert server.open == 1
        for _ in range(50):
            if server.open == 0:
                break
            await asyncio.sleep(0.01)
        assert server.open == 0


async def _pool_timeout(http: httpx.AsyncClient, url: str) -> None:
    hanging = asyncio.create_task(http.get(f"{url}/hang"))
    await asyncio.sleep(0.1)
    try:
        await http.get(f"{url}/ok", timeout=httpx.Timeout(5.0, pool=0.1))
    finally:
        hanging.cancel()


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("read timeout", httpx.ReadTimeout),
        ("connect error", httpx.ConnectError),
        ("not http", httpx.RemoteProtocolError),
        ("body cut short", httpx.RemoteProtocolError),
        ("pool timeout", httpx.PoolTimeout),
        ("unsupported protocol", httpx.UnsupportedProtocol),
    ],
)
async def test_failures_raise_the_same_httpx_errors_as_httpx_transport(
    kind: str, case: str, error: type[httpx.HTTPError]
) -> None:
    async with tiny_server() as server, client(kind, limits=httpx.Limits(max_connections=1)) as http:
        attempts: dict[str, Callable[[], Any]] = {
            "read timeout": lambda: http.get(f"{server.url}/hang", timeout=httpx.Timeout(5.0, read=0.2)),
            "connect error": lambda: http.get(f"http://127.0.0.1:{closed_port()}/ok"),
            "not http": lambda: http.get(f"{server.url}/garbage"),
            "body cut short": lambda: http.get(f"{server.url}/short-body"),
            "pool timeout": lambda: _pool_timeout(http, server.url),
            "unsupported protocol": lambda: http.get("ftp://127.0.0.1/file"),
        }
        with pytest.raises(error) as info:
            await attempts[case]()
        assert type(info.value) is error and info.value.request is not None
        if case != "pool timeout":  # the pool still serves after the failure
            assert (await http.get(f"{server.url}/ok")).content == b"xx"


# -- TLS -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls_is_verified_against_the_ca_given_and_connections_are_reused(
    kind: str, certificate: tuple[Path, Path]
) -> None:
    cert_path, key_path = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    async with tiny_server(server_context) as server:
        async with client(kind) as http:  # the default CA bundle does not know the certificate
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(f"{server.url}/ok")
        trusted = ssl.create_default_context(cafile=str(cert_path))
        async with client(kind, verify=trusted) as http:
            replies = [await http.get(f"{server.url}/ok") for _ in range(2)]
        assert [r.content for r in replies] == [b"xx", b"xx"] and server.connections == 1  # one, reused


# -- the hooks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environment", "pooled"),
    [
        ({}, True),
        ({"NO_PROXY": "*"}, True),  # NO_PROXY alone configures no proxy
        ({"HTTPS_PROXY": "http://proxy.invalid:3128"}, False),
        ({"http_proxy": "http://proxy.invalid:3128"}, False),
        ({"ALL_PROXY": "socks5://proxy.invalid:1080"}, False),
    ],
)
def test_the_hooks_pool_unless_the_environment_configures_a_proxy(
    environment: dict[str, str], pooled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    transport = hook_transport(httpx.Limits())
    assert isinstance(transport, PooledTransport) if pooled else transport is None


async def test_the_hook_sends_through_a_proxy_the_environment_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx's proxy handling still applies: the proxied URL goes to httpx's proxy transport."""
    async with tiny_server() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        set_connection(
            monkeypatch, "poof_proxied", "poof", password="pk_test_proxied", host="http://vendor.invalid"
        )
        async with PoofHook("poof_proxied", requests_per_second=0) as hook:
            balance = await hook.aget_balance()
    assert balance.remaining == 60
    assert proxy.request_lines == ["GET http://vendor.invalid/v1/me HTTP/1.1"]


async def test_the_hook_talks_to_the_server_directly_without_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with tiny_server() as server:
        set_connection(monkeypatch, "poof_direct", "poof", password="pk_test_direct", host=server.url)
        async with PoofHook("poof_direct", requests_per_second=0) as hook:
            balances = [await hook.aget_balance() for _ in range(3)]
    assert [b.remaining for b in balances] == [60] * 3
    assert server.request_lines == ["GET /v1/me HTTP/1.1"] * 3 and server.connections == 1


async def test_the_hook_uses_a_transport_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=ME)

    set_connection(
        monkeypatch, "poof_mocked", "poof", password="pk_test_mocked", host="http://mocked.invalid"
    )
    async with PoofHook("poof_mocked", async_transport=httpx.MockTransport(handler)) as hook:
        assert (await hook.aget_balance()).remaining == 60
    assert seen == ["http://mocked.invalid/v1/me"]
