"""The shared hook behaviour, driven through a tiny fake vendor wire and ``httpx.MockTransport``.

Covers what every vendor hook inherits: connection -> settings (URI and JSON forms), one pooled
client per hook, retries and transport-error mapping, capped result-URL downloads, secret hygiene
and ``test_connection``. The real vendors' wire formats are tested in ``tests/unit/vendors``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import itertools
import json
import logging
import pickle
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from unittest import mock

import httpx
import pytest
from PIL import Image

from airflow_provider_bgremoval._compat import aget_connection
from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InputRejectedError,
    InvalidOptionError,
    InvalidVendorResponseError,
    OutOfCreditsError,
    RateLimitedError,
    ResultDownloadError,
    TransientVendorError,
    VendorAuthError,
    VendorRequestError,
)
from airflow_provider_bgremoval.hooks.base import USER_AGENT, BackgroundRemovalHook
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.options import RemovalOptions, VendorCapabilities
from airflow_provider_bgremoval.pacing import ManualClock
from airflow_provider_bgremoval.results import Balance, ImageResult
from airflow_provider_bgremoval.retry import CallStats, RetryPolicy
from airflow_provider_bgremoval.vendors.base import (
    ErrorReply,
    ImageInput,
    ResultLocation,
    VendorSpec,
    VendorWire,
    WireRequest,
    json_body,
    parse_decimal,
)
from tests.support.connections import SleepRecorder, set_connection

KEY = "sk_test_SECRET_0123456789abcdef"
CONN_ID = "fakevendor_default"
API = "http://api.test"
CDN = "http://cdn.test"


# -- the fake vendor -------------------------------------------------------------------------------


class FakeWire(VendorWire):
    """A minimal wire format: API key header, multipart or JSON upload, JSON errors."""

    spec = VendorSpec(
        name="fakevendor",
        default_base_url="https://api.fake.example",
        default_timeout=42.0,
        capabilities=VendorCapabilities(
            output_formats=frozenset({"png"}), background_color=False, crop=False
        ),
        limits=InputLimits(max_bytes=5_000_000),
        retry_policy=RetryPolicy(max_attempts=3, initial_backoff=1, max_backoff=1, jitter=0),
        input_error_codes=frozenset({"bad_image"}),
    )

    def auth_headers(self) -> dict[str, str]:
        return {"X-API-Key": self.settings.api_key}

    def remove_background_request(
        self, image: ImageInput, options: RemovalOptions, vendor_options: Any = None
    ) -> WireRequest:
        if image.url is not None:
            return WireRequest(
                "POST",
                "/v1/remove",
                billed=True,
                json={"image_url": image.url, "format": options.output_format},
            )
        assert image.data is not None
        return WireRequest(
            "POST",
            "/v1/remove",
            billed=True,
            data={"format": options.output_format},
            files={"image": (image.filename, image.data, image.content_type)},
        )

    def balance_request(self) -> WireRequest:
        return WireRequest("GET", "/v1/credits")

    def parse_image_reply(self, response: httpx.Response) -> ImageResult | ResultLocation:
        request_id = response.headers.get("x-request-id")
        if response.headers.get("content-type", "").startswith("application/json"):
            return ResultLocation(url=json_body(response)["result_url"], request_id=request_id)
        return ImageResult(
            content=response.content,
            content_type=response.headers.get("content-type", "image/png"),
            vendor=self.spec.name,
            request_id=request_id,
        )

    def parse_balance(self, response: httpx.Response) -> Balance:
        remaining = parse_decimal(json_body(response)["credits"])
        assert remaining is not None
        return Balance(vendor=self.spec.name, remaining=remaining)

    def parse_error(self, response: httpx.Response) -> ErrorReply:
        body = json_body(response)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return ErrorReply(
                code=body["error"].get("code"),
                message=body["error"].get("message", ""),
                request_id=response.headers.get("x-request-id"),
            )
        return ErrorReply(code=None, message=self.text_excerpt(response))


class FakeHook(BackgroundRemovalHook[FakeWire]):
    """The hook of the fake vendor."""

    default_conn_name: ClassVar[str] = CONN_ID
    conn_type: ClassVar[str] = "fakevendor"
    hook_name: ClassVar[str] = "Fake vendor"
    wire_class: ClassVar[type[VendorWire]] = FakeWire


# -- a scripted server -----------------------------------------------------------------------------

Reply = httpx.Response | BaseException | Callable[[httpx.Request], httpx.Response]


class Server:
    """MockTransport handler: per-path queues of replies (the last one repeats), every request kept."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, url: str, *replies: Reply) -> Server:
        self.routes[url] = [self._fresh(reply) for reply in replies]
        return self

    @staticmethod
    def _fresh(reply: Reply) -> Reply:
        """A client binds the response it receives: serve a new copy each time (streams are single-use)."""
        if not isinstance(reply, httpx.Response) or isinstance(reply.stream, Chunks):
            return reply
        status, headers, content = reply.status_code, reply.headers, reply.read()
        return lambda request: httpx.Response(status, headers=headers, content=content)

    def calls(self, url: str) -> int:
        return sum(1 for r in self.requests if str(r.url) == url)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        queue = self.routes.get(str(request.url))
        if not queue:
            return httpx.Response(404, json={"error": {"code": "no_route", "message": str(request.url)}})
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply) and not isinstance(reply, httpx.Response):
            return reply(request)
        return reply


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A streamed body without Content-Length, usable by both clients."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk, self.count, self.sent = chunk, count, 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.count):
            self.sent += 1
            yield self.chunk

    async def __aiter__(self) -> Any:
        for _ in range(self.count):
            self.sent += 1
            yield self.chunk


def _png(size: tuple[int, int] = (40, 30), mode: str = "RGBA") -> bytes:
    image = Image.new(mode, size, (0, 0, 0, 0) if mode == "RGBA" else (0, 0, 0))
    image.paste((255, 0, 0, 255) if mode == "RGBA" else (255, 0, 0), (10, 5, 30, 25))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


PNG = _png()


def png_reply(**headers: str) -> httpx.Response:
    return httpx.Response(200, content=PNG, headers={"content-type": "image/png", **headers})


def error_reply(
    status: int, code: str | None = None, message: str = "nope", **headers: str
) -> httpx.Response:
    body = {"error": {"code": code, "message": message}}
    return httpx.Response(status, json=body, headers=headers)


def balance_reply(credits: object = "12.5") -> httpx.Response:
    return httpx.Response(200, json={"credits": credits})


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
def sleep() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, host=API)


@pytest.fixture
def clock() -> ManualClock:
    """The hooks' pacing clock: pacing waits move it, nothing sleeps."""
    return ManualClock(1000.0)


@pytest.fixture
def make_hook(server: Server, sleep: SleepRecorder, clock: ManualClock) -> Callable[..., FakeHook]:
    def make(conn_id: str | None = None, **kwargs: Any) -> FakeHook:
        transport = httpx.MockTransport(server)
        kwargs.setdefault("pacing_clock", clock)
        return FakeHook(
            conn_id,
            transport=transport,
            async_transport=transport,
            sleep=sleep,
            async_sleep=sleep.asleep,
            **kwargs,
        )

    return make


@pytest.fixture
def hook(conn: None, make_hook: Callable[..., FakeHook]) -> Iterator[FakeHook]:
    with make_hook() as h:
        yield h


# -- connection -> settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "base_url"),
    [
        (f"fakevendor://:{KEY}@127.0.0.1:8080", "https://127.0.0.1:8080"),
        (f"fakevendor://:{KEY}@api.example.com", "https://api.example.com"),
        (f"fakevendor://:{KEY}@/?base_url=http%3A%2F%2F127.0.0.1%3A9", "http://127.0.0.1:9"),
        (  # the visible host field wins over the undeclared extra (a warning says so)
            f"fakevendor://:{KEY}@shown.example/?base_url=http%3A%2F%2F127.0.0.1%3A9%2F",
            "https://shown.example",
        ),
        (f"fakevendor://:{KEY}@http%3A%2F%2F127.0.0.1:8080", "http://127.0.0.1:8080"),
        (f"fakevendor://:{KEY}@", "https://api.fake.example"),
    ],
)
def test_settings_from_uri_connections(
    uri: str, base_url: str, monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", uri)
    settings = make_hook().get_settings()
    assert settings.base_url == base_url
    assert settings.api_key == KEY
    assert settings.timeout == 42.0


def test_uri_extras_timeout_and_max_retries(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", f"fakevendor://:{KEY}@127.0.0.1:8080/?timeout=200&max_retries=5"
    )
    hook = make_hook()
    settings = hook.get_settings()
    assert settings.timeout == 200.0
    assert hook.retry_policy.max_attempts == 6
    assert hook.retry_policy.initial_backoff == FakeWire.spec.retry_policy.initial_backoff
    assert settings.extras["max_retries"] in ("5", 5)


@pytest.mark.parametrize(
    ("fields", "base_url"),
    [
        ({"host": "http://127.0.0.1", "port": 8081}, "http://127.0.0.1:8081"),
        ({"host": "https://h.example:1/", "port": 2}, "https://h.example:1"),
        ({"host": "api.example.com"}, "https://api.example.com"),
        ({"host": "http://127.0.0.1:7/"}, "http://127.0.0.1:7"),
        ({"host": "http://shown", "extra": {"base_url": "http://127.0.0.1:9"}}, "http://shown"),
        ({}, "https://api.fake.example"),
    ],
)
def test_settings_from_json_connections(
    fields: dict[str, Any], base_url: str, monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, **fields)
    assert make_hook().get_settings().base_url == base_url


def test_json_extras_login_and_timeout(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    set_connection(
        monkeypatch,
        CONN_ID,
        "fakevendor",
        login="px_id",
        password=KEY,
        extra={"timeout": 180, "max_retries": 0, "test_mode": True},
    )
    hook = make_hook()
    settings = hook.get_settings()
    assert settings.api_id == "px_id"
    assert settings.timeout == 180.0
    assert settings.extras["test_mode"] is True
    assert hook.retry_policy.max_attempts == 1


def test_max_retries_changes_only_the_attempts_and_keeps_one(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, extra={"max_retries": -1})
    hook = make_hook()
    hook.get_settings()
    vendor_policy = asdict(hook.wire_class.spec.retry_policy)
    assert asdict(hook.retry_policy) == {**vendor_policy, "max_attempts": 1}


def test_a_bad_max_retries_extra_fails_before_any_request(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], server: Server
) -> None:
    set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, host=API, extra={"max_retries": "two"})
    with pytest.raises(InvalidOptionError) as info:
        make_hook().get_balance()
    assert info.value.parameter == "max_retries" and "'two' is not a whole number" in str(info.value)
    assert server.requests == []


def test_constructor_overrides_win(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, extra={"timeout": 5, "max_retries": 9})
    policy = RetryPolicy(max_attempts=2)
    hook = make_hook(timeout=300, retry_policy=policy)
    assert hook.get_settings().timeout == 300.0
    assert hook.retry_policy is policy


def test_api_key_from_extra_is_kept_out_of_extras(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    set_connection(monkeypatch, CONN_ID, "fakevendor", extra={"api_key": KEY, "timeout": 10})
    settings = make_hook().get_settings()
    assert settings.api_key == KEY
    assert "api_key" not in settings.extras


def test_missing_password_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], server: Server
) -> None:
    set_connection(monkeypatch, CONN_ID, "fakevendor", host=API)
    with pytest.raises(InvalidOptionError) as info:
        make_hook().get_balance()
    assert info.value.parameter == "password"
    assert CONN_ID in str(info.value)
    assert "API key" in str(info.value)
    assert server.requests == []


@pytest.mark.parametrize("glue", ["\n", "\r\n", "\x00", "\t", "\x7f", "\u00e9"])
def test_a_key_no_header_can_carry_is_refused_as_the_connection_is_read_and_never_quoted(
    glue: str, monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], server: Server
) -> None:
    # two keys pasted into the field: httpx would quote the whole value in its header error
    set_connection(monkeypatch, CONN_ID, "fakevendor", password=f"{KEY}{glue}sk_second_key_42", host=API)
    hook = make_hook()
    with pytest.raises(InvalidOptionError) as info:
        hook.get_balance()
    assert info.value.parameter == "password"
    ok, message = hook.test_connection()
    assert not ok
    for text in (str(info.value), repr(info.value), json.dumps(info.value.as_dict()), message):
        assert "SECRET" not in text and "sk_second" not in text
        assert "two keys pasted" in text
    assert server.requests == []


def test_a_local_protocol_error_is_not_quoted(hook: FakeHook, server: Server) -> None:
    # h11 quotes an illegal header whole: whatever a header held stays out of the message
    server.on(f"{API}/v1/credits", httpx.LocalProtocolError(f"Illegal header value b'{KEY}\\n'"))
    with pytest.raises(TransientVendorError) as info:
        hook.get_balance()
    assert "SECRET" not in str(info.value) and "SECRET" not in json.dumps(info.value.as_dict())
    assert str(info.value).endswith("GET http://api.test/v1/credits failed: LocalProtocolError")


@pytest.mark.parametrize(
    ("extra", "parameter"),
    [
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "nan"}, "timeout"),
        ({"timeout": "inf"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"base_url": "ftp://files.example"}, "base_url"),
        ({"base_url": "file:///etc/passwd"}, "base_url"),
        ({"max_retries": "two"}, "max_retries"),
        ({"max_retries": 2.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
    ],
)
def test_bad_connection_extras(
    extra: dict[str, Any], parameter: str, monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, extra=extra)
    with pytest.raises(InvalidOptionError) as info:
        make_hook().get_settings()
    assert info.value.parameter == parameter


async def test_async_settings_match_sync(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    set_connection(
        monkeypatch,
        CONN_ID,
        "fakevendor",
        password=KEY,
        host="http://127.0.0.1",
        port=8081,
        extra={"timeout": 7},
    )
    assert await make_hook().aget_settings() == make_hook().get_settings()


def test_visible_fields_win_over_legacy_extras_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], caplog: pytest.LogCaptureFixture
) -> None:
    set_connection(
        monkeypatch, CONN_ID, "fakevendor", password=KEY, host=API, extra={"api_key": "sk_other_key_123"}
    )
    assert make_hook().get_settings().api_key == KEY
    assert "the 'api_key' extra is ignored: the password field is set" in caplog.text
    set_connection(monkeypatch, CONN_ID, "fakevendor", host=API, extra={"api_key": KEY})
    caplog.clear()
    assert make_hook().get_settings().api_key == KEY
    assert "the 'api_key' extra is deprecated: set the password field instead" in caplog.text
    assert KEY not in caplog.text and "sk_other_key_123" not in caplog.text


def test_one_conn_id_rule(conn: None) -> None:
    assert FakeHook().conn_id == CONN_ID
    assert FakeHook("other").conn_id == "other"
    with pytest.raises(TypeError, match="unexpected keyword argument 'fakevendor_conn_id'"):
        FakeHook(fakevendor_conn_id="x")  # type: ignore[call-arg]


def test_default_conn_id_and_explicit_conn_id(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    set_connection(monkeypatch, "other_conn", "fakevendor", password=KEY, host="http://other.test")
    assert make_hook().conn_id == CONN_ID
    assert make_hook("other_conn").get_settings().base_url == "http://other.test"


# -- requests --------------------------------------------------------------------------------------


def test_balance_request_carries_auth_and_user_agent(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/credits", balance_reply("12.5"))
    balance = hook.get_balance()
    assert balance.remaining == Decimal("12.5")
    request = server.requests[0]
    assert request.method == "GET"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("airflow-provider-bgremoval/")


async def test_async_balance(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/credits", balance_reply(3))
    assert (await hook.aget_balance()).remaining == 3
    assert server.requests[0].headers["x-api-key"] == KEY


def test_remove_background_uploads_and_decodes(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/remove", png_reply(**{"x-request-id": "req-7"}))
    result = hook.remove_background(PNG, filename="shoe.png")
    assert result.content == PNG
    assert (result.width, result.height) == (40, 30)
    assert result.request_id == "req-7"
    assert result.call.attempts == 1
    assert result.call.possibly_charged == 0
    body = server.requests[0].content
    assert b'filename="shoe.png"' in body
    assert b'name="format"' in body


async def test_async_remove_background_with_local_steps(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/remove", png_reply())
    options = RemovalOptions.create(output_format="webp", background_color="white", crop=True)
    result = await hook.aremove_background(PNG, options=options)
    assert result.content_type == "image/webp"
    assert (result.width, result.height) == (20, 20)  # cropped locally to the subject
    # the png-only fake vendor was asked for a transparent PNG
    assert b"png" in server.requests[0].content


def test_remove_background_by_url(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/remove", png_reply())
    hook.remove_background(image_url="https://images.example/a.jpg")
    assert json.loads(server.requests[0].content)["image_url"] == "https://images.example/a.jpg"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"image": PNG, "image_url": "https://images.example/a.jpg"}, "image_url"),
        ({}, "image"),
        ({"image_url": "file:///etc/passwd"}, "image_url"),
        ({"image_url": "ftp://images.example/a.jpg"}, "image_url"),
    ],
)
def test_remove_background_input_errors(
    kwargs: dict[str, Any], parameter: str, hook: FakeHook, server: Server
) -> None:
    with pytest.raises(InvalidOptionError) as info:
        hook.remove_background(**kwargs)
    assert info.value.parameter == parameter
    assert server.requests == []


def test_local_checks_run_before_any_call(hook: FakeHook, server: Server) -> None:
    for bad in (b"", b"<html>not an image</html>", PNG[: len(PNG) // 2]):
        with pytest.raises(InputRejectedError) as info:
            hook.remove_background(bad)
        assert info.value.local is True
    assert server.requests == []


# -- error replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error_class", "code"),
    [
        (error_reply(401, "unauthorized"), VendorAuthError, "unauthorized"),
        (error_reply(403), VendorAuthError, None),
        (error_reply(402, "no_credits"), OutOfCreditsError, "no_credits"),
        (error_reply(400, "bad_image"), InputRejectedError, "bad_image"),
        (error_reply(413), InputRejectedError, None),
        (error_reply(415), InputRejectedError, None),
        (error_reply(400, "bad_param"), VendorRequestError, "bad_param"),
        (error_reply(404), VendorRequestError, None),
    ],
)
def test_non_retryable_replies_are_not_retried(
    reply: httpx.Response,
    error_class: type[BgRemovalError],
    code: str | None,
    hook: FakeHook,
    server: Server,
    sleep: SleepRecorder,
) -> None:
    server.on(f"{API}/v1/remove", reply)
    with pytest.raises(error_class) as info:
        hook.remove_background(PNG)
    assert type(info.value) is error_class
    assert info.value.vendor == "fakevendor"
    assert info.value.status_code == reply.status_code
    assert info.value.code == code
    assert len(server.requests) == 1
    assert sleep.waits == []


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_transient_replies_are_retried_then_raised(
    status: int, hook: FakeHook, server: Server, sleep: SleepRecorder
) -> None:
    server.on(f"{API}/v1/remove", error_reply(status))
    with pytest.raises(TransientVendorError) as info:
        hook.remove_background(PNG)
    assert info.value.status_code == status
    assert info.value.possibly_charged is (status == 504)  # an uncoded 504: a gateway timed out
    assert len(server.requests) == 3
    assert sleep.waits == [1, 1]


def test_rate_limit_honours_retry_after(hook: FakeHook, server: Server, sleep: SleepRecorder) -> None:
    server.on(f"{API}/v1/remove", error_reply(429, **{"retry-after": "3"}), png_reply())
    result = hook.remove_background(PNG)
    assert sleep.waits == [3]
    assert result.call.attempts == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_503_honours_its_retry_after_like_a_429(
    mode: str, hook: FakeHook, server: Server, sleep: SleepRecorder
) -> None:
    # RFC 9110: Retry-After on a 503 says how long the service is expected to be unavailable
    server.on(f"{API}/v1/remove", error_reply(503, **{"retry-after": "9"}), png_reply())
    remove = (
        hook.remove_background
        if mode == "sync"
        else lambda image: asyncio.run(hook.aremove_background(image))
    )
    result = remove(PNG)
    assert sleep.waits == [9]
    assert (result.call.attempts, result.call.possibly_charged) == (2, 0)
    server.on(f"{API}/v1/remove", error_reply(503, **{"retry-after": "100000"}), png_reply())
    remove(PNG)
    assert sleep.waits[-1] == hook.retry_policy.max_retry_after  # capped by the policy


def test_a_503_without_retry_after_keeps_the_backoff(
    hook: FakeHook, server: Server, sleep: SleepRecorder
) -> None:
    server.on(f"{API}/v1/remove", error_reply(503), error_reply(502, **{"retry-after": "9"}), png_reply())
    hook.remove_background(PNG)
    assert sleep.waits == [1, 1]  # a 502's Retry-After has no meaning (RFC 9110: 503 and 3xx)


def test_rate_limit_gives_up_with_rate_limited_error(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/credits", error_reply(429, **{"retry-after": "1"}))
    with pytest.raises(RateLimitedError) as info:
        hook.get_balance()
    assert info.value.retry_after == 1


def test_non_json_error_body_is_quoted_shortly(hook: FakeHook, server: Server) -> None:
    html = "<html>\n<body>\n<h1>502 Bad Gateway</h1>\n" + "x" * 5000 + "</body></html>"
    server.on(f"{API}/v1/credits", httpx.Response(502, text=html, headers={"content-type": "text/html"}))
    with pytest.raises(TransientVendorError) as info:
        hook.get_balance()
    assert "<h1>502 Bad Gateway</h1>" in info.value.message
    assert "\n" not in info.value.message
    assert len(info.value.message) <= 300


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirected_billed_call_is_an_unbilled_error_naming_the_location(
    status: int, hook: FakeHook, server: Server
) -> None:
    # an http:// host the API redirects to https://: the vendor never processed the image
    moved = f"https://user:pw@api.test/v1/remove?key={KEY}"
    server.on(
        f"{API}/v1/remove", httpx.Response(status, headers={"location": moved}, text="<html>Moved</html>")
    )
    stats = CallStats()
    with pytest.raises(VendorRequestError) as info:
        hook.remove_background(PNG, stats=stats)
    assert (info.value.code, info.value.status_code) == ("redirect", status)
    assert "redirecting to https://api.test/v1/remove;" in info.value.message
    assert "set the connection's host" in info.value.message
    assert not stats.billed_reply and stats.possibly_charged == 0 and info.value.possibly_charged is False
    assert "SECRET" not in json.dumps(info.value.as_dict()) and "pw@" not in info.value.message
    assert server.calls(f"{API}/v1/remove") == 1  # not retried


def test_a_redirected_balance_read_fails_at_once(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/credits", httpx.Response(301, headers={"location": "https://api.test/v1/credits"}))
    with pytest.raises(VendorRequestError) as info:
        hook.get_balance()
    assert "redirecting to https://api.test/v1/credits" in info.value.message
    assert server.calls(f"{API}/v1/credits") == 1
    ok, message = hook.test_connection()
    assert not ok and "301 Moved Permanently, redirecting to https://api.test/v1/credits" in message


# -- transport errors ------------------------------------------------------------------------------


def _raise(kind: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise kind("boom", request=request)

    return handler


@pytest.mark.parametrize(
    ("kind", "path", "charged"),
    [
        (httpx.ConnectError, "/v1/remove", False),
        (httpx.ConnectTimeout, "/v1/remove", False),
        (httpx.ReadTimeout, "/v1/remove", True),
        (httpx.RemoteProtocolError, "/v1/remove", True),
        (httpx.ReadError, "/v1/remove", True),
        (httpx.ReadTimeout, "/v1/credits", False),  # not billed: nothing can have been charged
    ],
)
def test_transport_errors_are_mapped(
    kind: type[httpx.TransportError], path: str, charged: bool, hook: FakeHook, server: Server
) -> None:
    server.on(f"{API}{path}", _raise(kind))
    call = (lambda: hook.remove_background(PNG)) if path == "/v1/remove" else hook.get_balance
    with pytest.raises(TransientVendorError) as info:
        call()
    assert info.value.possibly_charged is charged
    assert info.value.code == kind.__name__
    assert info.value.vendor == "fakevendor"
    assert len(server.requests) == 3  # retried up to the policy's attempts


@pytest.mark.parametrize(("status", "lost"), [(504, True), (524, True), (502, False), (503, False)])
def test_a_gateway_timeout_after_a_billed_request_is_a_lost_reply(
    status: int, lost: bool, hook: FakeHook, server: Server
) -> None:
    # the gateway forwarded the request and gave up waiting: the origin may still have billed it
    server.on(f"{API}/v1/remove", httpx.Response(status, text="<html>Gateway Timeout</html>"), png_reply())
    result = hook.remove_background(PNG)
    assert (result.call.attempts, result.call.possibly_charged) == (2, int(lost))
    server.on(f"{API}/v1/remove", error_reply(status, "upstream_error"), png_reply())
    assert hook.remove_background(PNG).call.possibly_charged == 0  # the vendor's own answer: not billed
    server.on(f"{API}/v1/credits", httpx.Response(status, text="timeout"))
    with pytest.raises(TransientVendorError) as info:
        hook.get_balance()
    assert info.value.possibly_charged is False  # a free call: nothing to bill


@pytest.mark.parametrize("status", [504, 524])
def test_the_retry_guard_is_asked_before_resending_after_a_gateway_timeout(
    status: int, hook: FakeHook, server: Server
) -> None:
    server.on(f"{API}/v1/remove", httpx.Response(status, text="Gateway Timeout"), png_reply())
    asked: list[BaseException] = []

    def refuse(exc: BaseException) -> bool:  # the budget cannot cover a second charge
        asked.append(exc)
        return False

    stats = CallStats(retry_guard=refuse)
    with pytest.raises(TransientVendorError) as info:
        hook.remove_background(PNG, stats=stats)
    assert asked == [info.value] and info.value.possibly_charged and info.value.status_code == status
    assert (stats.attempts, stats.possibly_charged, stats.billed_reply) == (1, 1, False)
    assert server.calls(f"{API}/v1/remove") == 1


def test_lost_reply_then_success_reports_possibly_charged(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/remove", _raise(httpx.ReadTimeout), _raise(httpx.ConnectError), png_reply())
    result = hook.remove_background(PNG)
    assert result.call.attempts == 3
    assert result.call.possibly_charged == 1


async def test_async_transport_errors_are_mapped(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/remove", _raise(httpx.RemoteProtocolError), png_reply())
    result = await hook.aremove_background(PNG)
    assert result.call.possibly_charged == 1
    server.on(f"{API}/v1/credits", _raise(httpx.ConnectError))
    with pytest.raises(TransientVendorError) as info:
        await hook.aget_balance()
    assert info.value.possibly_charged is False


# -- a reply cut off mid-body, on a real socket ----------------------------------------------------


def _head(status: str, content_type: str, length: int, *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode()


def _cut_error(status: str, *headers: str) -> bytes:
    """An error reply's head promising a 1000-byte JSON body, 20 bytes of it, then the connection closes."""
    return _head(status, "application/json", 1000, *headers) + b'{"error": {"code": "'


#: the head of a reply promising 1000 bytes, 100 of them, then the connection closes
CUT_200 = _head("200 OK", "image/png", 1000) + PNG[:100]
CUT_503 = _head("503 Service Unavailable", "application/json", 1000) + b'{"error": {"code": null' + b" " * 77
CUT_504 = _head("504 Gateway Timeout", "text/html", 1000) + b"<html>" + b" " * 94
WHOLE_PNG = _head("200 OK", "image/png", len(PNG)) + PNG
WHOLE_BALANCE = _head("200 OK", "application/json", 17) + b'{"credits": "12"}'
#: no byte of a reply: the request was read, then the connection closed
NO_HEAD = b""


class SocketVendor:
    """A real HTTP/1.1 socket: reads each request whole, sends the next scripted bytes (the last one
    repeats) and closes the connection."""

    def __init__(self, *replies: bytes) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                self.requests.append(self._read_request(conn))
                conn.sendall(self.replies.pop(0) if len(self.replies) > 1 else self.replies[0])

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            body += conn.recv(65536)
        return head


@pytest.fixture
def socket_vendor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SocketVendor]]:
    """Start a :class:`SocketVendor` with these replies and point the connection at it."""
    started: list[SocketVendor] = []

    def start(*replies: bytes) -> SocketVendor:
        vendor = SocketVendor(*replies)
        started.append(vendor)
        set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, host=vendor.url)
        return vendor

    yield start
    for vendor in started:
        vendor.listener.close()


def _real_call(
    mode: str, sleep: SleepRecorder, method: str, hook: FakeHook | None = None, **kwargs: Any
) -> Any:
    """
    ``method`` (``remove_background``, ``get_balance``) of ``hook`` (default: one not paced) on the
    real transport, sync or async.
    """
    hook = hook or FakeHook(sleep=sleep, async_sleep=sleep.asleep, requests_per_second=0)
    if mode == "sync":
        with hook:
            return getattr(hook, method)(**kwargs)

    async def call() -> Any:
        async with hook:
            return await getattr(hook, f"a{method}")(**kwargs)

    return asyncio.run(call())


def _remove(mode: str, sleep: SleepRecorder, stats: CallStats) -> ImageResult:
    return _real_call(mode, sleep, "remove_background", image=PNG, stats=stats)  # type: ignore[no-any-return]


def _refusing_guard(asked: list[BaseException]) -> CallStats:
    """A record whose retry guard refuses every retry after a lost reply (and notes each question)."""

    def refuse(exc: BaseException) -> bool:
        asked.append(exc)
        return False

    return CallStats(retry_guard=refuse)


async def test_a_reply_header_of_any_bytes_is_kept_as_sent(hook: FakeHook, server: Server) -> None:
    # the API reply is streamed and rebuilt: its headers as bytes, not re-encoded as ASCII
    server.on(f"{API}/v1/remove", httpx.Response(200, headers=[(b"x-note", b"caf\xe9")], content=PNG))
    assert hook.remove_background(PNG).content_type == "image/png"
    assert (await hook.aremove_background(PNG)).content_type == "image/png"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_billed_200_cut_off_mid_body_is_a_certain_charge_never_sent_again(
    mode: str, socket_vendor: Callable[..., SocketVendor], sleep: SleepRecorder
) -> None:
    # the vendor answered 200, so it did the work and billed it: sending again would pay twice
    vendor = socket_vendor(CUT_200, WHOLE_PNG)
    asked: list[BaseException] = []
    stats = _refusing_guard(asked)
    with pytest.raises(InvalidVendorResponseError) as info:
        _remove(mode, sleep, stats)
    assert len(vendor.requests) == 1 and asked == [] and sleep.waits == []
    error = info.value
    assert (error.status_code, error.code, error.possibly_charged, error.retryable) == (
        200,
        "result_unreadable",
        True,
        False,
    )
    assert "cut off" in error.message and KEY not in str(error)
    assert error.call is not None
    assert (error.call.attempts, error.call.possibly_charged, error.call.billed_reply) == (1, 0, True)
    assert (stats.attempts, stats.possibly_charged, stats.billed_reply) == (1, 0, True)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_503_cut_off_mid_body_is_an_unbilled_transient_error(
    mode: str, socket_vendor: Callable[..., SocketVendor], sleep: SleepRecorder
) -> None:
    # the vendor answered 503: it did not do the work, so the retry goes without asking the guard
    vendor = socket_vendor(CUT_503, WHOLE_PNG)
    asked: list[BaseException] = []
    stats = _refusing_guard(asked)
    result = _remove(mode, sleep, stats)
    assert result.content_type == "image/png" and len(vendor.requests) == 2 and asked == []
    assert (result.call.attempts, result.call.possibly_charged, result.call.billed_reply) == (2, 0, True)
    vendor.replies = [CUT_503]
    with pytest.raises(TransientVendorError) as info:
        _remove(mode, sleep, CallStats())
    assert (info.value.status_code, info.value.possibly_charged) == (503, False)
    assert "cut off" in info.value.message and len(vendor.requests) == 5  # 3 attempts


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    "status",
    [
        "401 Unauthorized",
        "402 Payment Required",
        "403 Forbidden",
        "400 Bad Request",
        "422 Unprocessable Entity",
    ],
)
def test_a_refusal_cut_off_mid_body_is_sent_again_and_the_whole_reply_decides(
    mode: str, status: str, socket_vendor: Callable[..., SocketVendor], sleep: SleepRecorder
) -> None:
    # an error reply is not billed, and only its body tells some errors apart (Pixelcut's 403
    # insufficient_api_credits is out of credits, not an auth error): sent again, the whole reply decides
    vendor = socket_vendor(_cut_error(status, f"X-Request-ID: req-{KEY}-7"), WHOLE_PNG)
    stats = CallStats()
    result = _remove(mode, sleep, stats)
    assert result.content_type == "image/png" and len(vendor.requests) == 2 and len(sleep.waits) == 1
    assert (stats.attempts, stats.possibly_charged) == (2, 0)  # the second, whole reply is the one billed
    vendor.replies = [_cut_error(status, f"X-Request-ID: req-{KEY}-7")]
    with pytest.raises(TransientVendorError) as info:
        _remove(mode, sleep, CallStats())
    error = info.value
    assert (error.status_code, error.request_id, error.possibly_charged) == (
        int(status[:3]),
        "req-***-7",
        False,
    )
    assert "then its body was cut off" in error.message and KEY not in str(error)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_429_cut_off_mid_body_honours_its_retry_after_like_a_whole_one(
    mode: str, socket_vendor: Callable[..., SocketVendor], sleep: SleepRecorder, clock: ManualClock
) -> None:
    vendor = socket_vendor(_cut_error("429 Too Many Requests", "Retry-After: 7"), WHOLE_PNG)
    hook = FakeHook(sleep=sleep, async_sleep=sleep.asleep, pacing_clock=clock)
    result = _real_call(mode, sleep, "remove_background", hook, image=PNG)
    assert result.content_type == "image/png" and len(vendor.requests) == 2
    assert sleep.waits == [7]  # Retry-After, not the backoff of a transient error
    assert hook.pacer is not None and hook.pacer.rate is not None  # the pacer was told of the 429 too
    vendor.replies = [_cut_error("429 Too Many Requests", "Retry-After: 1")]
    with pytest.raises(RateLimitedError) as info:
        _remove(mode, sleep, CallStats())
    assert (info.value.status_code, info.value.retry_after, info.value.possibly_charged) == (429, 1, False)
    assert "cut off" in info.value.message and len(vendor.requests) == 5  # 3 attempts


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_reply_lost_before_its_head_is_still_a_lost_reply(
    mode: str, socket_vendor: Callable[..., SocketVendor], sleep: SleepRecorder
) -> None:
    vendor = socket_vendor(NO_HEAD, WHOLE_PNG)
    asked: list[BaseException] = []
    stats = _refusing_guard(asked)
    with pytest.raises(TransientVendorError) as info:
        _remove(mode, sleep, stats)
    assert asked == [info.value] and info.value.possibly_charged and info.value.status_code is None
    assert len(vendor.requests) == 1
    assert (stats.attempts, stats.possibly_charged, stats.billed_reply) == (1, 1, False)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_gateway_timeout_cut_off_mid_body_may_have_been_billed(
    mode: str, socket_vendor: Callable[..., SocketVendor], sleep: SleepRecorder
) -> None:
    # its body (the vendor's own error code, or a gateway's page) never came: the gateway rule applies
    vendor = socket_vendor(CUT_504)
    asked: list[BaseException] = []
    stats = _refusing_guard(asked)
    with pytest.raises(TransientVendorError) as info:
        _remove(mode, sleep, stats)
    assert asked == [info.value] and (info.value.status_code, info.value.possibly_charged) == (504, True)
    assert len(vendor.requests) == 1
    assert (stats.attempts, stats.possibly_charged, stats.billed_reply) == (1, 1, False)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_free_call_cut_off_mid_body_is_retried_and_charges_nothing(
    mode: str, socket_vendor: Callable[..., SocketVendor], sleep: SleepRecorder
) -> None:
    vendor = socket_vendor(CUT_200, WHOLE_BALANCE)
    assert _real_call(mode, sleep, "get_balance").remaining == Decimal(12)
    assert len(vendor.requests) == 2
    vendor.replies = [CUT_200]
    with pytest.raises(TransientVendorError) as info:
        _real_call(mode, sleep, "get_balance")
    assert (info.value.status_code, info.value.possibly_charged) == (200, False)


# -- the call's outcome ----------------------------------------------------------------------------


def test_an_error_carries_the_calls_outcome(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/remove", _raise(httpx.ReadTimeout))
    stats = CallStats(retry_guard=lambda exc: True)
    with pytest.raises(TransientVendorError) as info:
        hook.remove_background(PNG, stats=stats)
    call = info.value.call
    assert call is not None and call is not stats  # a snapshot; the caller's record stays live
    assert (call.attempts, call.possibly_charged, call.billed_reply) == (3, 3, False)
    assert (stats.attempts, stats.possibly_charged) == (3, 3)
    assert call.retry_guard is None and len(call.waits) == 2
    assert pickle.loads(pickle.dumps(info.value)).call == call


def test_a_billed_reply_that_cannot_be_used_is_a_certain_charge(hook: FakeHook, server: Server) -> None:
    server.on(
        f"{API}/v1/remove",
        httpx.Response(200, content=b"not an image", headers={"content-type": "image/png"}),
    )
    with pytest.raises(BgRemovalError) as info:
        hook.remove_background(PNG)
    assert info.value.call is not None
    assert (info.value.call.attempts, info.value.call.possibly_charged, info.value.call.billed_reply) == (
        1,
        0,
        True,
    )


def test_deprecated_error_attributes_read_the_outcome(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/remove", _raise(httpx.ReadTimeout), _raise(httpx.ReadTimeout), error_reply(404))
    with pytest.raises(VendorRequestError) as info:
        hook.remove_background(PNG)
    with pytest.warns(DeprecationWarning, match=r"\.call\.attempts"):
        assert info.value.attempts == 3
    with pytest.warns(DeprecationWarning, match=r"\.call\.possibly_charged"):
        assert info.value.possibly_charged_attempts == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert (BgRemovalError("local").attempts, BgRemovalError("local").possibly_charged_attempts) == (0, 0)
    assert BgRemovalError("local").call is None


@pytest.mark.parametrize(
    ("mode", "inline_work_pixels", "inline"),
    [
        ("sync", 0, True),  # the sync calls run everything inline
        ("async", FakeHook.inline_work_pixels, True),  # a 40x30 image: cheaper than a thread hop
        ("async", 40 * 30 - 1, False),  # one pixel over the limit: in a worker thread
        ("async", 0, False),  # 0: always in a thread
    ],
)
async def test_cpu_steps_of_small_images_run_inline_and_of_big_ones_in_a_thread(
    mode: str,
    inline_work_pixels: int,
    inline: bool,
    hook: FakeHook,
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_provider_bgremoval.hooks import base

    threads: list[threading.Thread] = []

    def recording(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread())
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(base, "prepare_input", recording(base.prepare_input))
    monkeypatch.setattr(base, "apply_local_steps", recording(base.apply_local_steps))
    hook.inline_work_pixels = inline_work_pixels
    server.on(f"{API}/v1/remove", png_reply())
    result = hook.remove_background(PNG) if mode == "sync" else await hook.aremove_background(PNG)
    assert result.content == PNG and len(threads) == 2
    assert all((thread is threading.main_thread()) is inline for thread in threads)


def test_a_png_pixel_count_is_read_from_its_ihdr_without_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inline-or-thread choice of a PNG (input or result) costs no ``Image.open``; other formats do."""
    from airflow_provider_bgremoval.hooks import base

    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(jpeg, format="JPEG")
    assert base._pixels(jpeg.getvalue()) == 40 * 30
    huge = PNG[:16] + (100_000).to_bytes(4, "big") * 2 + PNG[24:]  # declares 10^10 pixels (CRC not checked)

    def no_pillow(*_: Any, **__: Any) -> Any:
        raise AssertionError("Image.open called for a PNG")

    monkeypatch.setattr(base.Image, "open", no_pillow)
    assert base._pixels(PNG) == 40 * 30
    assert base._pixels(huge) == 100_000 * 100_000  # over any inline limit: its work goes to a thread
    assert base._pixels(PNG[:20]) is None  # a cut-off header: Pillow's verdict (here: the stub's error)


@pytest.fixture
def input_check_threads(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The thread of each input check (``prepare_input``) the hook runs."""
    from airflow_provider_bgremoval.hooks import base

    threads: list[threading.Thread] = []
    original = base.prepare_input

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(base, "prepare_input", recording)
    return threads


async def test_a_file_of_few_pixels_but_many_bytes_is_checked_in_a_thread(
    hook: FakeHook, server: Server, input_check_threads: list[threading.Thread]
) -> None:
    """40x30 pixels but 20 kB of text chunks: over 4 bytes per allowed pixel, so not parsed on the loop."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * 20_000)
    out = io.BytesIO()
    Image.open(io.BytesIO(PNG)).save(out, format="PNG", pnginfo=info)
    padded = out.getvalue()
    assert len(padded) > 4 * 40 * 30
    hook.inline_work_pixels = 40 * 30
    server.on(f"{API}/v1/remove", png_reply())
    await hook.aremove_background(padded)
    assert len(input_check_threads) == 1 and input_check_threads[0] is not threading.main_thread()


async def test_unreadable_bytes_are_checked_in_a_thread_and_rejected_as_before(
    hook: FakeHook, server: Server, input_check_threads: list[threading.Thread]
) -> None:
    with pytest.raises(InputRejectedError) as info:
        await hook.aremove_background(b"not an image at all")
    assert info.value.code == "unsupported_image" and input_check_threads != [threading.main_thread()]
    assert server.requests == []


def test_a_jpeg_answer_to_a_png_request_is_stored_as_png(hook: FakeHook, server: Server) -> None:
    """No local step is planned for a plain PNG, yet the bytes must match the ``.png`` name."""
    out = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(out, format="JPEG")
    server.on(f"{API}/v1/remove", httpx.Response(200, content=out.getvalue()))
    result = hook.remove_background(PNG)
    assert result.content.startswith(b"\x89PNG")
    assert (result.content_type, result.width, result.height) == ("image/png", 40, 30)
    server.on(f"{API}/v1/remove", png_reply())
    assert hook.remove_background(PNG).content == PNG  # a PNG for a PNG: the vendor's bytes kept


def test_public_methods_carry_the_call_paths_signature_and_docs() -> None:
    import inspect

    for name in ("remove_background", "aremove_background"):
        method = getattr(FakeHook, name)
        assert method.__name__ == name
        assert "stats" in inspect.signature(method).parameters
        assert inspect.signature(method).return_annotation == "ImageResult"
        assert ":param image_url:" in method.__doc__
    assert inspect.iscoroutinefunction(FakeHook.aget_balance)
    assert not inspect.iscoroutinefunction(FakeHook.get_balance)


# -- result-URL downloads --------------------------------------------------------------------------


def located(url: str = f"{CDN}/r/1.png") -> httpx.Response:
    return httpx.Response(200, json={"result_url": url}, headers={"x-request-id": "loc-1"})


def redirect(location: str) -> httpx.Response:
    return httpx.Response(302, headers={"location": location})


def test_result_url_is_downloaded_without_the_api_key(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/remove", located()).on(f"{CDN}/r/1.png", png_reply())
    result = hook.remove_background(PNG)
    assert result.content == PNG
    assert result.request_id == "loc-1"
    assert result.metadata["result_url_host"] == "cdn.test"
    download = server.requests[1]
    assert str(download.url) == f"{CDN}/r/1.png"
    assert "x-api-key" not in download.headers
    assert KEY not in str(download.headers)


async def test_async_result_url(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/remove", located()).on(f"{CDN}/r/1.png", png_reply())
    result = await hook.aremove_background(PNG)
    assert result.content == PNG
    assert "x-api-key" not in server.requests[1].headers


def test_relative_redirect_is_followed(hook: FakeHook, server: Server) -> None:
    server.on(f"{CDN}/r/1.png", redirect("/r/2.png")).on(f"{CDN}/r/2.png", png_reply())
    assert hook.download(f"{CDN}/r/1.png") == PNG


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "ftp://cdn.test/r/1.png", "data:image/png;base64,AAAA", "http://[bad"]
)
def test_redirect_off_http_is_refused(
    target: str, hook: FakeHook, server: Server, sleep: SleepRecorder
) -> None:
    server.on(f"{CDN}/r/1.png", redirect(target))
    with pytest.raises(ResultDownloadError) as info:
        hook.download(f"{CDN}/r/1.png")
    assert info.value.possibly_charged is True
    assert target not in str(info.value)  # a redirect target may be a signed URL
    assert server.calls(f"{CDN}/r/1.png") == 1
    assert sleep.waits == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://cdn.test/x.png", "/relative/x.png"])
def test_download_of_a_non_http_url_is_refused(url: str, hook: FakeHook, server: Server) -> None:
    with pytest.raises((ResultDownloadError, InvalidOptionError)):
        hook.download(url)
    assert server.requests == []


def test_too_many_redirects(hook: FakeHook, server: Server, sleep: SleepRecorder) -> None:
    server.on(f"{CDN}/loop", redirect(f"{CDN}/loop"))
    with pytest.raises(ResultDownloadError, match="too many redirects"):
        hook.download(f"{CDN}/loop")
    assert 2 <= server.calls(f"{CDN}/loop") <= 10
    assert sleep.waits == []


def test_declared_content_length_over_the_cap(
    conn: None, make_hook: Callable[..., FakeHook], server: Server
) -> None:
    server.on(f"{CDN}/big", httpx.Response(200, content=b"x" * 5000))
    with make_hook(max_result_bytes=1000) as hook, pytest.raises(ResultDownloadError, match="1000 byte cap"):
        hook.download(f"{CDN}/big")


def test_a_content_length_of_non_ascii_digits_is_no_declared_length(
    conn: None, make_hook: Callable[..., FakeHook], server: Server
) -> None:
    # latin-1 decodes b"\xb2" as "\u00b2" (superscript two): str.isdigit() is true, int() refuses it
    server.on(f"{CDN}/odd", httpx.Response(200, headers=[(b"content-length", b"\xb2")], content=PNG))
    with make_hook() as hook:
        assert hook.download(f"{CDN}/odd") == PNG


def test_streamed_body_over_the_cap_is_cut_off(
    conn: None, make_hook: Callable[..., FakeHook], server: Server
) -> None:
    body = Chunks(b"x" * 100, 1000)
    server.on(f"{CDN}/endless", httpx.Response(200, stream=body))
    with (
        make_hook(max_result_bytes=1000) as hook,
        pytest.raises(ResultDownloadError, match="cut off") as info,
    ):
        hook.download(f"{CDN}/endless")
    assert info.value.possibly_charged is True
    assert body.sent <= 20  # stopped reading soon after the cap


async def test_async_streamed_body_over_the_cap_is_cut_off(
    conn: None, make_hook: Callable[..., FakeHook], server: Server
) -> None:
    body = Chunks(b"x" * 100, 1000)
    server.on(f"{CDN}/endless", httpx.Response(200, stream=body))
    async with make_hook(max_result_bytes=1000) as hook:
        with pytest.raises(ResultDownloadError, match="cut off"):
            await hook.adownload(f"{CDN}/endless")
    assert body.sent <= 20


def test_expired_result_is_a_download_error(hook: FakeHook, server: Server, sleep: SleepRecorder) -> None:
    server.on(f"{API}/v1/remove", located()).on(f"{CDN}/r/1.png", httpx.Response(404, text="gone"))
    with pytest.raises(ResultDownloadError) as info:
        hook.remove_background(PNG)
    assert info.value.status_code == 404
    assert info.value.possibly_charged is True
    assert info.value.retryable is False
    assert server.calls(f"{CDN}/r/1.png") == 1
    assert sleep.waits == []


def test_download_503_is_retried(hook: FakeHook, server: Server, sleep: SleepRecorder) -> None:
    server.on(f"{CDN}/r/1.png", httpx.Response(503), png_reply())
    assert hook.download(f"{CDN}/r/1.png") == PNG
    assert server.calls(f"{CDN}/r/1.png") == 2
    assert sleep.waits == [1]


async def test_async_download_errors(hook: FakeHook, server: Server) -> None:
    server.on(f"{CDN}/a", httpx.Response(503), png_reply())
    assert await hook.adownload(f"{CDN}/a") == PNG
    server.on(f"{CDN}/b", redirect("file:///etc/passwd"))
    with pytest.raises(ResultDownloadError):
        await hook.adownload(f"{CDN}/b")
    server.on(f"{CDN}/c", httpx.Response(404))
    with pytest.raises(ResultDownloadError):
        await hook.adownload(f"{CDN}/c")
    server.on(f"{CDN}/d", redirect(f"{CDN}/d"))
    with pytest.raises(ResultDownloadError, match="too many redirects"):
        await hook.adownload(f"{CDN}/d")


def test_download_transport_error_is_transient(hook: FakeHook, server: Server) -> None:
    server.on(f"{CDN}/r/1.png", _raise(httpx.ReadTimeout), png_reply())
    assert hook.download(f"{CDN}/r/1.png") == PNG


# -- one pooled client per hook --------------------------------------------------------------------


def test_one_client_per_hook_is_reused(
    conn: None, make_hook: Callable[..., FakeHook], server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[httpx.Client] = []

    class CountingClient(httpx.Client):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(httpx, "Client", CountingClient)
    server.on(f"{API}/v1/credits", balance_reply())
    server.on(f"{API}/v1/remove", located()).on(f"{CDN}/r/1.png", png_reply())
    with make_hook() as hook:
        for _ in range(3):
            hook.get_balance()
        hook.remove_background(PNG)
        assert hook.get_conn() is created[0]
    assert len(server.requests) == 5
    assert len(created) == 1
    assert created[0].is_closed


async def test_one_async_client_per_hook_is_reused(
    conn: None, make_hook: Callable[..., FakeHook], server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[httpx.AsyncClient] = []

    class CountingAsyncClient(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(httpx, "AsyncClient", CountingAsyncClient)
    server.on(f"{API}/v1/credits", balance_reply())
    server.on(f"{API}/v1/remove", located()).on(f"{CDN}/r/1.png", png_reply())
    async with make_hook() as hook:
        for _ in range(3):
            await hook.aget_balance()
        await hook.aremove_background(PNG)
    assert len(server.requests) == 5
    assert len(created) == 1
    assert created[0].is_closed


def test_client_is_configured_for_pooling(conn: None, make_hook: Callable[..., FakeHook]) -> None:
    with make_hook(max_connections=7) as hook:
        client = hook.get_conn()
        assert str(client.base_url).rstrip("/") == API
        assert client.timeout.read == 42.0
        assert client.timeout.connect == 15.0
        assert client.follow_redirects is False


def test_close_and_reopen(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/credits", balance_reply())
    hook.get_balance()
    first = hook.get_conn()
    hook.close()
    assert first.is_closed
    hook.close()  # idempotent
    hook.get_balance()
    assert hook.get_conn() is not first
    assert not hook.get_conn().is_closed


async def test_aclose_closes_both_clients(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/credits", balance_reply())
    hook.get_balance()
    await hook.aget_balance()
    sync_client = hook.get_conn()
    async_client = await hook._aget_client()
    await hook.aclose()
    assert sync_client.is_closed
    assert async_client.is_closed


def test_context_manager_closes(conn: None, make_hook: Callable[..., FakeHook], server: Server) -> None:
    server.on(f"{API}/v1/credits", balance_reply())
    with make_hook() as hook:
        hook.get_balance()
        client = hook.get_conn()
    assert client.is_closed


# -- secrets ---------------------------------------------------------------------------------------


def test_api_key_never_shows(
    hook: FakeHook, server: Server, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    server.on(f"{API}/v1/credits", error_reply(401, "unauthorized", "invalid key"))
    server.on(f"{API}/v1/remove", _raise(httpx.ReadTimeout))
    server.on(f"{CDN}/r/1.png", httpx.Response(404))
    texts = [repr(hook), str(hook), repr(hook.get_settings()), str(hook.get_settings())]
    for call in (
        hook.get_balance,
        lambda: hook.remove_background(PNG),
        lambda: hook.download(f"{CDN}/r/1.png"),
    ):
        with pytest.raises(BgRemovalError) as info:
            call()
        texts += [str(info.value), repr(info.value), json.dumps(info.value.as_dict())]
    _, message = hook.test_connection()
    texts.append(message)
    captured = capsys.readouterr()
    texts += [caplog.text, captured.out, captured.err]
    for text in texts:
        assert KEY not in text


def test_mask_secret_is_called_with_the_key(conn: None, make_hook: Callable[..., FakeHook]) -> None:
    with mock.patch("airflow_provider_bgremoval.hooks.base.mask_secret") as masked:
        make_hook().get_settings()
    masked.assert_any_call(KEY)
    hook = make_hook()
    with mock.patch("airflow_provider_bgremoval.hooks.base.mask_secret") as masked:
        hook.get_settings()
    for secret in hook.wire.secrets():  # the set a quoted reply is redacted of
        masked.assert_any_call(secret)


async def test_mask_secret_is_called_on_the_async_path(
    conn: None, make_hook: Callable[..., FakeHook]
) -> None:
    with mock.patch("airflow_provider_bgremoval.hooks.base.mask_secret") as masked:
        await make_hook().aget_settings()
    masked.assert_any_call(KEY)


# -- test_connection -------------------------------------------------------------------------------


def test_test_connection_success(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/credits", balance_reply("12.5"))
    ok, message = hook.test_connection()
    assert ok is True
    assert "Fake vendor" in message
    assert "12.5" in message
    assert hook._client is None  # closed after the check


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        (error_reply(401, "unauthorized", "invalid key"), "401"),
        (error_reply(402, "no_credits", "empty"), "402"),
        (_raise(httpx.ConnectError), "ConnectError"),
    ],
)
def test_test_connection_failure(reply: Reply, fragment: str, hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/credits", reply)
    ok, message = hook.test_connection()
    assert ok is False
    assert fragment in message
    assert KEY not in message


def test_test_connection_never_shows_the_key_in_an_unexpected_error(
    hook: FakeHook, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.on(f"{API}/v1/credits", balance_reply())
    hook.get_balance()  # the connection is read: its secrets are known

    def broken(**_: Any) -> Any:
        raise ValueError(f"Invalid connection string: fakevendor://:{KEY}@api.example.com/ (key {KEY})")

    monkeypatch.setattr(hook, "get_balance", broken)
    ok, message = hook.test_connection()
    assert ok is False and message.startswith("ValueError: Invalid connection string: fakevendor://***@")
    assert KEY not in message


def test_test_connection_without_key(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    set_connection(monkeypatch, CONN_ID, "fakevendor", host=API)
    ok, message = make_hook().test_connection()
    assert ok is False
    assert "password" in message


def test_test_connection_is_one_short_attempt_naming_the_url_and_the_cause(
    hook: FakeHook, server: Server, sleep: SleepRecorder
) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    server.on(f"{API}/v1/credits", refused)
    ok, message = hook.test_connection()
    assert ok is False
    assert f"GET {API}/v1/credits failed: [Errno 111] Connection refused" in message
    assert len(server.requests) == 1 and sleep.waits == []  # no retries behind the Test button
    assert server.requests[0].extensions["timeout"] == {
        "connect": 5.0,
        "read": 10.0,
        "write": 10.0,
        "pool": 10.0,
    }
    server.on(f"{API}/v1/credits", balance_reply())
    assert hook.get_balance().remaining == Decimal("12.5")
    assert server.requests[-1].extensions["timeout"]["read"] == 42.0  # other calls keep theirs


def test_test_connection_against_a_closed_port_answers_at_once(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, host=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    ok, message = FakeHook().test_connection()  # the real transport, the real retry sleep
    assert ok is False
    assert f"http://127.0.0.1:{port}/v1/credits" in message and "ConnectError" in message
    assert time.monotonic() - started < 5


def _drip_balance(listener: socket.socket, stop: threading.Event) -> None:
    """Answer one balance request with its headers at once, then a body byte every 0.2 s for 6 s."""
    conn, _ = listener.accept()
    with conn:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        conn.sendall(b'{"credits": "12.5"}')
        for _ in range(30):
            if stop.wait(0.2):
                return
            try:
                conn.sendall(b" ")
            except OSError:
                return


@pytest.fixture
def dripping_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real socket whose balance reply takes 6 s (every read gets a byte: no read timeout trips)."""
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        threading.Thread(target=_drip_balance, args=(listener, stop), daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, host=url)
        yield url
        stop.set()


def test_test_connection_gives_up_on_a_reply_that_never_completes(dripping_host: str) -> None:
    hook = FakeHook()
    hook.probe_deadline = 1.0  # the real transport; 15 s by default
    ok, message = hook.test_connection()
    assert ok is False
    assert f"no complete answer within 1 s from {dripping_host}/v1/credits" in message
    assert KEY not in message


async def test_async_probe_gives_up_on_a_reply_that_never_completes(dripping_host: str) -> None:
    hook = FakeHook()
    hook.probe_deadline = 1.0
    with pytest.raises(TransientVendorError, match="no complete answer within 1 s") as caught:
        await hook.aget_balance(probe=True)
    await hook.aclose()
    assert caught.value.code == "probe_deadline"


#: a balance reply's head, sent whole or byte by byte by :func:`_stall_balance`
_BALANCE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n"


def _stall_balance(listener: socket.socket, stop: threading.Event, how: str) -> None:
    """
    Take one balance request, then: send the head and stall (``head``), send nothing (``nothing``), or
    send the head a byte every 0.2 s (``drip``: every read gets a byte); the connection is held until
    ``stop`` (at most 12 s).
    """
    conn, _ = listener.accept()
    with conn:
        conn.recv(65536)
        with contextlib.suppress(OSError):
            if how == "head":
                conn.sendall(_BALANCE_HEAD)
            for byte in _BALANCE_HEAD if how == "drip" else b"":
                if stop.wait(0.2):
                    return
                conn.sendall(bytes([byte]))
        stop.wait(12)


@pytest.fixture(params=["head", "nothing", "drip"])
def stalling_host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real socket that answers a balance request with its head then nothing, nothing, or a drip."""
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server = threading.Thread(target=_stall_balance, args=(listener, stop, request.param), daemon=True)
        server.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, host=url)
        yield url
        stop.set()
        server.join(5)


def test_test_connection_deadline_holds_while_the_host_stalls(stalling_host: str) -> None:
    """
    The sync probe checked its deadline only as body pieces arrived: a head then silence, no head, or a
    head dripped a byte at a time held the Test button for a read timeout (10 s) or for ever.
    """
    hook = FakeHook()
    hook.probe_deadline = 1.0  # the real transport; 15 s by default, and 10 s per read
    started = time.monotonic()
    ok, message = hook.test_connection()
    elapsed = time.monotonic() - started
    assert ok is False
    assert f"no complete answer within 1 s from {stalling_host}/v1/credits" in message
    assert KEY not in message
    assert elapsed < 3


async def test_async_probe_deadline_holds_while_the_host_stalls(stalling_host: str) -> None:
    hook = FakeHook()
    hook.probe_deadline = 1.0
    started = time.monotonic()
    with pytest.raises(TransientVendorError, match="no complete answer within 1 s") as caught:
        await hook.aget_balance(probe=True)
    await hook.aclose()
    assert caught.value.code == "probe_deadline"
    assert time.monotonic() - started < 3


def test_test_connection_reads_a_few_kb_at_most(hook: FakeHook, server: Server) -> None:
    server.on(f"{API}/v1/credits", httpx.Response(200, json={"credits": "1", "pad": "x" * 20_000}))
    ok, message = hook.test_connection()
    assert ok is False
    assert f"the answer from {API}/v1/credits is over 16384 bytes; not read" in message
    server.on(f"{API}/v1/credits", httpx.Response(200, json={"credits": "1", "pad": "x" * 20_000}))
    assert hook.get_balance().remaining == Decimal("1")  # other calls read what they get


@pytest.mark.parametrize(
    ("credits", "shown"), [("1000.0", "1000"), ("12.50", "12.5"), (7, "7"), ("0.000", "0"), ("1E+3", "1000")]
)
def test_test_connection_writes_credits_as_a_person_does(
    credits: object, shown: str, hook: FakeHook, server: Server
) -> None:
    server.on(f"{API}/v1/credits", balance_reply(credits))
    assert hook.test_connection() == (True, f"Connected to Fake vendor: {shown} credits remaining (active)")


def test_estimate_cost_defaults_to_the_base_cost(hook: FakeHook) -> None:
    assert hook.estimate_cost() == Decimal(1)


# -- request pacing (docs/rate-limits.md) ----------------------------------------------------------


def _paced_conn(monkeypatch: pytest.MonkeyPatch, rate: Any) -> None:
    set_connection(
        monkeypatch, CONN_ID, "fakevendor", password=KEY, host=API, extra={"requests_per_second": rate}
    )


def test_pacing_spaces_requests_at_the_connections_rate(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], server: Server, clock: ManualClock
) -> None:
    _paced_conn(monkeypatch, 16)
    sent: list[float] = []
    server.on(f"{API}/v1/remove", lambda request: (sent.append(clock.now()), png_reply())[1])
    with make_hook() as hook:
        for _ in range(6):
            hook.remove_background(PNG)
        assert hook.pacer is not None and hook.pacer.policy.requests_per_second == 16
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(sent)]
    first = hook.pacer.interval(16 * hook.pacer.policy.initial_fraction)  # an eighth of the cap: 2 per window
    assert gaps[0] == pytest.approx(first)  # no burst: the second request waits for its slot
    assert all(0 < gap <= first + 1e-9 for gap in gaps)
    assert gaps[-1] < gaps[0]  # slow start: each paced success raises the rate


async def test_concurrent_first_calls_read_the_connection_once_and_share_one_pacer(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], server: Server, clock: ManualClock
) -> None:
    _paced_conn(monkeypatch, 16)
    sent: list[float] = []
    server.on(f"{API}/v1/remove", lambda request: (sent.append(clock.now()), png_reply())[1])
    hook = make_hook()
    with mock.patch("airflow_provider_bgremoval.hooks.base.aget_connection", wraps=aget_connection) as read:
        async with hook:
            await asyncio.gather(*(hook.aremove_background(PNG) for _ in range(8)))
    assert read.call_count == 1
    assert len(set(sent)) == len(sent) == 8  # "no burst": one pacer gave each request its own slot


class _WaitersCountedLock:
    """A thread lock that counts the threads waiting to take it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.changed = threading.Condition()
        self.waiting = 0

    def __enter__(self) -> None:
        with self.changed:
            self.waiting += 1
            self.changed.notify_all()
        self._lock.acquire()
        with self.changed:
            self.waiting -= 1

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_concurrent_first_blocking_calls_from_threads_read_the_connection_once(
    conn: None, make_hook: Callable[..., FakeHook], server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.on(f"{API}/v1/credits", balance_reply())
    hook, reads, lock = make_hook(), [], _WaitersCountedLock()
    monkeypatch.setattr(hook, "_read_lock", lock)

    def slow_read(conn_id: str) -> Any:
        reads.append(conn_id)
        with lock.changed:  # the first read returns only once the other three threads wait for it
            assert lock.changed.wait_for(lambda: lock.waiting == 3, timeout=30)
        return FakeHook.get_connection(conn_id)

    monkeypatch.setattr(hook, "get_connection", slow_read)
    with hook, concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        balances = list(pool.map(lambda _: hook.get_balance(), range(4)))
    assert reads == [CONN_ID]
    assert {balance.remaining for balance in balances} == {Decimal("12.5")}


def test_pacing_is_off_at_zero_and_the_hook_argument_overrides_the_extra(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook]
) -> None:
    _paced_conn(monkeypatch, 0)
    hook = make_hook()
    assert hook.pacer is None  # the connection is not read yet
    hook.get_settings()
    assert hook.pacer is None
    overridden = make_hook(requests_per_second=3)
    overridden.get_settings()
    assert overridden.pacer is not None and overridden.pacer.policy.requests_per_second == 3


def test_pacing_default_is_the_vendors_documented_rate(
    conn: None, make_hook: Callable[..., FakeHook], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = make_hook()
    hook.get_settings()
    assert hook.pacer is not None and hook.pacer.policy.requests_per_second is None  # FakeWire: none
    assert hook.pacer.rate is None  # unpaced until the first 429
    monkeypatch.setattr(FakeWire, "spec", replace(FakeWire.spec, requests_per_second=2.5))
    documented = make_hook()
    documented.get_settings()
    assert documented.pacer is not None and documented.pacer.policy.requests_per_second == 2.5


@pytest.mark.parametrize("value", ["fast", -1, True, "inf"])
def test_a_bad_requests_per_second_extra_fails_when_the_connection_is_read(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], value: Any
) -> None:
    _paced_conn(monkeypatch, value)
    with pytest.raises(InvalidOptionError, match="requests_per_second"):
        make_hook().get_settings()


def test_a_429_cuts_the_rate_and_retry_after_holds_every_request(
    monkeypatch: pytest.MonkeyPatch,
    make_hook: Callable[..., FakeHook],
    server: Server,
    clock: ManualClock,
    sleep: SleepRecorder,
) -> None:
    _paced_conn(monkeypatch, 4)
    server.on(f"{API}/v1/remove", png_reply(), error_reply(429, **{"retry-after": "7"}), png_reply())
    with make_hook() as hook:
        hook.remove_background(PNG)
        assert hook.pacer is not None
        before = hook.pacer.rate
        assert before is not None
        cut_at = clock.now()
        hook.remove_background(PNG)  # 429, Retry-After 7, then answered
        assert hook.pacer.rate is not None and hook.pacer.rate < before
    assert sleep.waits == [7]  # the retry policy's wait (time travel: the pacing clock did not move)
    assert clock.now() - cut_at >= 7  # ... and the pacer held the retry as long again on its own clock


def test_retry_after_held_by_the_pacer_is_capped_by_the_retry_policy(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], server: Server, clock: ManualClock
) -> None:
    _paced_conn(monkeypatch, 4)
    server.on(f"{API}/v1/remove", error_reply(429, **{"retry-after": "100000"}), png_reply())
    policy = RetryPolicy(max_attempts=2, max_wait=1e6, max_retry_after=30)
    start = clock.now()
    with make_hook(retry_policy=policy) as hook:
        hook.remove_background(PNG)
    assert 30 <= clock.now() - start < 31


def test_test_connection_is_not_paced(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], server: Server, clock: ManualClock
) -> None:
    _paced_conn(monkeypatch, 0.01)  # one request per 100 s
    server.on(f"{API}/v1/credits", httpx.Response(200, json={"credits": 5}))
    hook = make_hook()
    for _ in range(3):
        assert hook.test_connection()[0]
    assert clock.now() == 1000.0


async def test_a_call_cancelled_while_waiting_for_its_slot_was_never_sent(
    monkeypatch: pytest.MonkeyPatch, server: Server, sleep: SleepRecorder
) -> None:
    _paced_conn(monkeypatch, 0.01)
    server.on(f"{API}/v1/remove", png_reply())
    transport = httpx.MockTransport(server)
    hook = FakeHook(transport=transport, async_transport=transport, async_sleep=sleep.asleep)  # real clock
    await hook.aremove_background(PNG)  # the idle hook's credit
    stats = CallStats()
    task = asyncio.create_task(hook.aremove_background(PNG, stats=stats))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await hook.aclose()
    assert server.calls(f"{API}/v1/remove") == 1
    assert stats.attempts == 1 and not stats.attempt_in_flight  # not counted as possibly charged


def test_balance_reads_are_not_paced_and_do_not_move_the_rate(
    monkeypatch: pytest.MonkeyPatch, make_hook: Callable[..., FakeHook], server: Server, clock: ManualClock
) -> None:
    _paced_conn(monkeypatch, 0.01)  # one image request per 100 s
    server.on(f"{API}/v1/credits", error_reply(429), httpx.Response(200, json={"credits": 5}))
    with make_hook(retry_policy=RetryPolicy(max_attempts=2, initial_backoff=0, jitter=0)) as hook:
        assert hook.get_balance().remaining == 5
        assert hook.get_balance().remaining == 5
        assert hook.pacer is not None and hook.pacer.rate == pytest.approx(0.01)  # not cut
    assert clock.now() == 1000.0


# -- one hook, several event loops -----------------------------------------------------------------


class _KeepAlive(BaseHTTPRequestHandler):
    """A balance endpoint on a kept-alive HTTP/1.1 connection (the hook's pool keeps it open)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"credits": "12"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_hook_serves_one_event_loop_after_another(monkeypatch: pytest.MonkeyPatch) -> None:
    # A @task calling asyncio.run per image: the pool's kept-alive connection belongs to a closed loop
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{server.server_port}"
        set_connection(monkeypatch, CONN_ID, "fakevendor", password=KEY, host=host)
        hook = FakeHook(requests_per_second=0)
        balances = [asyncio.run(hook.aget_balance()).remaining for _ in range(3)]
        assert balances == [Decimal(12)] * 3
        asyncio.run(hook.aclose())  # the client of an earlier loop is let go, not closed on this one
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_malformed_reply_echoing_the_key_is_quoted_redacted(
    mode: str, socket_vendor: Callable[..., SocketVendor], sleep: SleepRecorder
) -> None:
    # a debugging proxy echoing the request's headers in a broken header line: h11 quotes the line
    vendor = socket_vendor(f"HTTP/1.1 502 Bad Gateway\r\nx-api-key {KEY}\r\n\r\n".encode())
    with pytest.raises(TransientVendorError) as info:
        _real_call(mode, sleep, "get_balance")
    assert len(vendor.requests) == 3 and "***" in info.value.message
    assert KEY not in str(info.value) and KEY not in json.dumps(info.value.as_dict())


@pytest.mark.parametrize("rate", [None, 5])
def test_a_503_retry_after_holds_every_request_of_the_hook(
    conn: None, make_hook: Callable[..., FakeHook], server: Server, clock: ManualClock, rate: float | None
) -> None:
    # the pacer holds the hook's requests (its other images would each meet the 503), rate unchanged
    server.on(f"{API}/v1/remove", error_reply(503, **{"retry-after": "9"}), png_reply())
    with make_hook(requests_per_second=rate) as hook:
        hook.remove_background(PNG)  # the retry waited on the pacing clock for the hold
        assert hook.pacer is not None
        assert clock.now() >= 1009.0
        assert hook.pacer.rate is None if rate is None else hook.pacer.rate >= rate / 8
