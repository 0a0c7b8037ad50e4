"""What every vendor hook shares: connection -> pooled httpx clients, retries, typed errors, results.

Each call path is one generator (a *flow*) that yields the I/O it needs as effects; ``_run`` performs
them with blocking calls, ``_arun`` with async ones (see "How a call runs" in docs/retry-and-errors.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import inspect
import io
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, Generic, ParamSpec, TypeAlias, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from airflow.sdk import BaseHook
from PIL import Image

from airflow_provider_bgremoval import USER_AGENT
from airflow_provider_bgremoval._compat import aextra_dejson, aget_connection, mask_secret
from airflow_provider_bgremoval._compat import get_connection as fetch_connection_unlogged
from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InvalidOptionError,
    RateLimitedError,
    ResultDownloadError,
    ResultProcessingError,
    TransientVendorError,
    safe_excerpt,
)
from airflow_provider_bgremoval.get_provider_info import get_provider_info
from airflow_provider_bgremoval.hooks.transport import hook_transport
from airflow_provider_bgremoval.imaging import (
    InputLimits,
    apply_local_steps,
    bomb_warnings_ignored,
    limits_for_output,
    prepare_input,
)
from airflow_provider_bgremoval.options import OptionSplit, RemovalOptions, split_options
from airflow_provider_bgremoval.pacing import Clock, Pacer, PacingPolicy, parse_requests_per_second
from airflow_provider_bgremoval.results import Balance, ImageResult
from airflow_provider_bgremoval.retry import (
    CallStats,
    RetryPolicy,
    acall_with_retry,
    call_with_retry,
    parse_max_retries,
)
from airflow_provider_bgremoval.vendors.base import (
    ConnectionSettings,
    ImageInput,
    ResultLocation,
    VendorWire,
    WireRequest,
    is_http_url,
    parse_retry_after,
    shown_url,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

W = TypeVar("W", bound=VendorWire)
T = TypeVar("T")
P = ParamSpec("P")
H = TypeVar("H", bound="BackgroundRemovalHook[Any]")

#: Largest result accepted from a result URL (Pixelcut results are PNGs of at most 6000x6000).
DEFAULT_MAX_RESULT_BYTES = 150 * 1024 * 1024
_MAX_REDIRECTS = 3
#: ``test_connection`` (the connection form's Test button) makes one attempt with a short timeout.
_PROBE_POLICY = RetryPolicy(max_attempts=1)
#: Any URL: only the body and its Content-Type of a request built there are used (parsed once, here).
_MULTIPART_URL = httpx.URL("http://multipart.invalid/")
_PROBE_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
#: the largest reply a probe reads (a balance is a few dozen bytes of JSON; an error page, a few KB)
_PROBE_MAX_BYTES = 16 * 1024
#: A URL's ``user:password@`` (an Airflow connection URI in an error's text carries the key there).
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
#: form field -> the extra older connections used for it (read only when the field is empty)
_LEGACY_EXTRAS = {"host": "base_url", "password": "api_key", "login": "api_id"}
#: form field -> what a connection that leaves it empty has not got
_FIELD_MEANING = {"password": "API key", "login": "API id"}
#: a character no credential holds and an HTTP header cannot carry: a line break, tab, NUL or other
#: control character, or non-ASCII (two keys pasted, a wrapped secret); httpx would quote the header
_UNSENDABLE = re.compile(r"[^\x20-\x7e]")


@lru_cache(maxsize=64)
def _parsed_url(url: str) -> httpx.URL:
    """
    An API request's full URL, parsed once (a connection's endpoints repeat): the client parsed the
    request's path, then the URL it merged from that and its ``base_url``, on every request.
    """
    return httpx.URL(url)


def _checked_url(url: str, *, parameter: str = "image_url") -> str:
    """``url`` if it is an absolute http(s) URL (no ``file:``, ``ftp:``, ``data:``…); else the error."""
    if not is_http_url(url):
        raise InvalidOptionError(parameter, "only absolute http:// or https:// URLs are accepted")
    return str(url)


#: transport errors raised after the request was sent in full and before the reply's head: the reply
#: was lost (after its head, the reply is a :class:`_CutReply`)
_SENT_IN_FULL = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)
#: a gateway's timeout (504, Cloudflare's 524): it forwarded the request, the origin's reply never came
_GATEWAY_TIMEOUTS = frozenset({504, 524})


def _lost_reply(request: WireRequest, failure: httpx.HTTPError | BgRemovalError) -> bool:
    """
    Whether a failed attempt may have been billed: a billed request that reached the vendor and whose
    reply was lost on the way back (the retry guard is asked before it is sent again). An error reply
    is lost only when a gateway timed out: one carrying the vendor's own error code (Poof's 504
    ``upstream_error``) is the vendor's answer that the request failed, and failed requests are not billed.
    """
    if isinstance(failure, httpx.HTTPError):
        return request.billed and isinstance(failure, _SENT_IN_FULL)
    gateway = failure.status_code in _GATEWAY_TIMEOUTS and failure.code is None
    return request.billed and gateway and isinstance(failure, TransientVendorError)


class _CutReply(Exception):
    """
    A reply whose head arrived and whose body was then lost: the vendor answered (``head``: its
    status and headers), the transport failed (``cause``) while the body was read.
    """

    def __init__(self, head: httpx.Response, cause: httpx.HTTPError) -> None:
        super().__init__(f"{type(cause).__name__} after a {head.status_code} head")
        self.head = head
        self.cause = cause


@contextmanager
def _reading_body_of(head: httpx.Response) -> Iterator[None]:
    """A transport failure while ``head``'s body is read, raised as a :class:`_CutReply`."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise _CutReply(head, exc) from exc


def _within(seconds: float, work: Callable[[], T], overdue: Callable[[], Exception]) -> T:
    """
    ``work()`` (blocking I/O) in a daemon thread with the caller's context variables, waited for at most
    ``seconds``, then ``overdue()`` raised: httpx's sync timeouts are per read (a host that sends a head
    and stalls, or drips it, is never timed out in total) and a blocked read cannot be interrupted. The
    thread is left to end on its own: its reads time out, or fail once the hook's client is closed.
    """
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            future.set_result(context.run(work))
        except BaseException as exc:  # handed to the caller (if it still waits)
            future.set_exception(exc)

    threading.Thread(target=target, name="bgremoval-probe", daemon=True).start()
    if not concurrent.futures.wait([future], timeout=seconds).done:
        raise overdue()
    return future.result()


def _keep_all(body: bytearray, chunk: bytes) -> None:
    body += chunk


def _whole(streamed: httpx.Response, body: bytes | bytearray) -> httpx.Response:
    """A streamed reply as a read one: its status, headers (as sent: any bytes) and its (decoded) body."""
    headers = [(name, value) for name, value in streamed.headers.raw if name.lower() != b"content-encoding"]
    return httpx.Response(
        streamed.status_code,
        headers=headers,
        content=bytes(body),
        request=streamed.request,
        extensions={k: v for k, v in streamed.extensions.items() if k in ("http_version", "reason_phrase")},
    )


def format_credits(amount: Decimal) -> str:
    """
    A credit amount as a person writes it: ``1000`` (not ``1000.0`` or ``1E+3``), ``12.5``.

    :param amount: the amount.
    """
    return f"{amount.normalize():f}"


#: A call path: a generator that yields effects, is sent their results and returns ``T``.
Flow: TypeAlias = Generator["_Effect[Any]", Any, T]


@dataclass(frozen=True)
class _Effect(Generic[T]):
    """One I/O step, run blocking or async; ``yield from effect`` returns its result or raises its error."""

    run: Callable[[], T]
    arun: Callable[[], Awaitable[T]]

    def __iter__(self) -> Generator[_Effect[Any], Any, T]:
        return (yield self)  # type: ignore[no-any-return]


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pixels(data: bytes) -> int | None:
    """
    The pixel count an image's header declares (``None``: not a readable image); nothing decoded. A
    PNG's comes from its ``IHDR``, the chunk that must come first (``Image.open`` cost ~0.2 ms per
    image, twice per call: the input and the result; docs/benchmarks.md).
    """
    if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    try:
        with bomb_warnings_ignored(), Image.open(io.BytesIO(data)) as image:
            return int(image.width * image.height)
    except Exception:  # Pillow's parsers raise many types on hostile bytes; the work itself reports them
        return None


class _Drive(Generic[T]):
    """Steps a flow: sends each effect's ``reply`` back or throws its ``error`` in; then ``result``."""

    def __init__(self, flow: Flow[T]) -> None:
        self.flow = flow
        self.reply: Any = None
        self.error: Exception | None = None
        self.result: Any = None

    def __iter__(self) -> Iterator[_Effect[Any]]:
        with closing(self.flow):
            try:
                while True:
                    error, self.error = self.error, None
                    yield self.flow.send(self.reply) if error is None else self.flow.throw(error)
            except StopIteration as done:
                self.result = done.value


def _methods(
    flow: Callable[Concatenate[H, P], Flow[T]],
) -> tuple[Callable[Concatenate[H, P], T], Callable[Concatenate[H, P], Awaitable[T]]]:
    """Flow ``_name``'s methods ``name`` and ``aname``, with its signature and docstring."""

    def blocking(self: H, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(getattr(self, flow.__name__)(*args, **kwargs))  # by name: subclasses override

    async def asynchronous(self: H, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._arun(getattr(self, flow.__name__)(*args, **kwargs))

    signature = inspect.signature(flow)
    returned = str(signature.return_annotation).removeprefix("Flow[").removesuffix("]")
    for method, prefix in ((blocking, ""), (asynchronous, "a")):
        method.__name__ = method.__qualname__ = prefix + flow.__name__.removeprefix("_")
        method.__doc__ = flow.__doc__
        method.__signature__ = signature.replace(return_annotation=returned)  # type: ignore[union-attr]
    return blocking, asynchronous


class BackgroundRemovalHook(BaseHook, Generic[W]):
    """
    Base class of the vendor hooks (sync and async methods over httpx).

    :param conn_id: Airflow connection id (default :attr:`default_conn_name`).
    :param timeout: idle/read timeout in seconds; overrides the connection's ``timeout`` extra.
    :param retry_policy: retry policy; defaults to the vendor's, adjusted by the ``max_retries`` extra.
    :param max_result_bytes: cap on downloaded result URLs.
    :param max_connections: size of the HTTP connection pool.
    :param transport: custom sync httpx transport (tests use ``httpx.MockTransport``).
    :param async_transport: custom async httpx transport.
    :param sleep: sync sleep used between retries (tests travel in time with it).
    :param async_sleep: async sleep used between retries.
    :param requests_per_second: the account's request rate; overrides the connection's
        ``requests_per_second`` extra (``0``: no pacing; see docs/rate-limits.md).
    :param pacing_clock: the clock request pacing reads and waits on (tests pass a
        :class:`~airflow_provider_bgremoval.pacing.ManualClock`).
    :param conn_id_by_name: the connection id under the :attr:`conn_name_attr` keyword (``get_hook()``).
    """

    conn_name_attr = "conn_id"
    default_conn_name: ClassVar[str]
    conn_type: ClassVar[str]
    hook_name: ClassVar[str]
    wire_class: ClassVar[type[VendorWire]]
    #: form fields a connection must fill
    _required_fields: ClassVar[tuple[str, ...]] = ("password",)
    #: extra -> its parser, run as the connection is read (a bad value fails then, not mid-batch)
    _extra_parsers: ClassVar[Mapping[str, Callable[[Any], object]]] = {
        "requests_per_second": parse_requests_per_second,
        "max_retries": parse_max_retries,
    }
    #: the async calls check an input, or decode a result, of up to this many pixels (and of at most 4
    #: bytes per pixel: junk chunks or metadata make a file slow to parse whatever its size in pixels) on
    #: the event loop (~2 ms at most; a worker-thread hop costs more than a small image's work), larger
    #: ones in a worker thread; ``0``: always in a thread
    inline_work_pixels: int = 640 * 480
    #: seconds a probe (``test_connection``, a halt's balance check) waits for its complete answer,
    #: however the host spreads it out; one stalled read gives up sooner (``_PROBE_TIMEOUT``)
    probe_deadline: float = 15.0

    def __init__(
        self,
        conn_id: str | None = None,
        *,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        max_connections: int = 100,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        requests_per_second: float | None = None,
        pacing_clock: Clock | None = None,
        **conn_id_by_name: str | None,
    ) -> None:
        super().__init__()
        unexpected = sorted(set(conn_id_by_name) - {self.conn_name_attr})
        if unexpected:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unexpected[0]!r}")
        named = conn_id_by_name.get(self.conn_name_attr)
        if conn_id and named and conn_id != named:
            raise InvalidOptionError(
                "conn_id", f"give {self.conn_name_attr} or conn_id, not two different ids"
            )
        self.conn_id: str = conn_id or named or self.default_conn_name
        setattr(self, self.conn_name_attr, self.conn_id)
        self._timeout_override = timeout
        self._retry_policy_override = retry_policy
        self.max_result_bytes = max_result_bytes
        self.max_connections = max_connections
        self._transport = transport
        self._async_transport = async_transport
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._rate_override = parse_requests_per_second(requests_per_second)
        self._pacing_clock = pacing_clock
        self._pacer: Pacer | None = None
        self._connection_policy: RetryPolicy | None = None
        self._settings: ConnectionSettings | None = None
        self._read_lock = threading.Lock()
        self._aread_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._wire_instance: W | None = None
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None  # the loop its connections belong to

    def __repr__(self) -> str:
        return f"{type(self).__name__}(conn_id={self.conn_id!r})"

    def _run(self, flow: Flow[T]) -> T:
        """Drive a flow with blocking I/O."""
        drive = _Drive(flow)
        for effect in drive:
            try:
                drive.reply = effect.run()
            except Exception as exc:
                drive.error = exc
        return drive.result  # type: ignore[no-any-return]

    async def _arun(self, flow: Flow[T]) -> T:
        """Drive a flow with async I/O (CPU work on a big image in a worker thread)."""
        drive = _Drive(flow)
        for effect in drive:
            try:
                drive.reply = await effect.arun()
            except Exception as exc:
                drive.error = exc
        return drive.result  # type: ignore[no-any-return]

    @classmethod
    def get_hook(cls, conn_id: str, hook_params: dict[str, Any] | None = None) -> BackgroundRemovalHook[Any]:
        """
        The vendor hook serving ``conn_id`` (``Connection.get_hook``).

        :param conn_id: the connection id.
        :param hook_params: keyword arguments for the hook (``timeout``, ``transport``…).
        """
        return cls._vendor_hook(cls.get_connection(conn_id), hook_params)

    @classmethod
    async def aget_hook(
        cls, conn_id: str, hook_params: dict[str, Any] | None = None
    ) -> BackgroundRemovalHook[Any]:
        """
        :meth:`get_hook` for async code (the connection is read without blocking the event loop).

        :param conn_id: the connection id.
        :param hook_params: keyword arguments for the hook.
        """
        return cls._vendor_hook(await aget_connection(conn_id), hook_params)

    @classmethod
    def _vendor_hook(cls, conn: Connection, hook_params: dict[str, Any] | None) -> BackgroundRemovalHook[Any]:
        vendor_types = sorted(item["connection-type"] for item in get_provider_info()["connection-types"])
        if conn.conn_type not in vendor_types:
            raise InvalidOptionError(
                "conn_id",
                f"connection type {conn.conn_type!r} is not a background-removal vendor "
                f"(expected one of {', '.join(vendor_types)})",
            )
        return conn.get_hook(hook_params=hook_params)  # type: ignore[no-any-return,no-untyped-call]

    @classmethod
    def _form(cls) -> dict[str, Any]:
        """This connection type's entry in the provider info (empty for a type it does not declare)."""
        entries = get_provider_info()["connection-types"]
        return next((item for item in entries if item["connection-type"] == cls.conn_type), {})

    @classmethod
    def _label(cls, field_name: str) -> str:
        """What the connection form calls a field (``password`` -> ``API key``)."""
        return str(
            cls._form().get("ui-field-behaviour", {}).get("relabeling", {}).get(field_name, field_name)
        )

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection-form relabelling for Airflow before 3.2, built from the provider info."""
        behaviour = cls._form()["ui-field-behaviour"]
        return {name.replace("-", "_"): copy.deepcopy(value) for name, value in behaviour.items()}

    #: Airflow's ``BaseHook.get_connection``, keeping the secrets out of ``dag.test()``'s DEBUG log.
    get_connection = staticmethod(fetch_connection_unlogged)

    @classmethod
    def settings_from_connection(
        cls, conn: Connection, extras: Mapping[str, Any], *, timeout: float | None = None
    ) -> ConnectionSettings:
        """
        Read a connection into :class:`ConnectionSettings` (``password``: API key, ``login``: API id,
        ``host``: base URL) and register its secrets for masking.

        :param conn: the Airflow connection.
        :param extras: its extras.
        :param timeout: a timeout overriding the ``timeout`` extra.
        """
        declared = cls._form().get("conn-fields")
        undeclared = sorted(set(extras) - set(declared or extras) - set(_LEGACY_EXTRAS.values()))
        if undeclared:
            log.warning(
                "Connection %r: extras %s are not fields of its form; ignored", conn.conn_id, undeclared
            )
        fields = {name: cls._field(conn, extras, name) for name in ("password", "login")}
        for name in cls._required_fields:
            if not fields[name]:
                label = cls._label(name)
                raise InvalidOptionError(
                    label, f"connection {conn.conn_id!r} has no {_FIELD_MEANING[name]}: set the {label} field"
                )
        mask_secret(fields["password"])  # through _compat: dag.test()'s supervisor must not log it
        cls._check_sendable(conn, fields)
        raw_timeout = timeout if timeout is not None else extras.get("timeout")
        try:
            seconds = cls.wire_class.spec.default_timeout if raw_timeout in (None, "") else float(raw_timeout)
        except (TypeError, ValueError):
            seconds = math.nan
        if isinstance(raw_timeout, bool) or math.isnan(seconds) or math.isinf(seconds):
            raise InvalidOptionError("timeout", f"{raw_timeout!r} is not a number of seconds")
        if seconds <= 0:
            raise InvalidOptionError("timeout", "must be positive")
        for name, parse in cls._extra_parsers.items():
            parse(extras.get(name))
        settings = ConnectionSettings(
            base_url=cls._base_url(conn, extras),
            api_key=fields["password"],
            api_id=fields["login"] or None,
            timeout=seconds,
            extras={k: v for k, v in extras.items() if k not in ("api_key", "secret", "password")},
        )
        for value in cls.wire_class(settings).secrets():  # with the derived ones: Pixian's Basic token
            mask_secret(value)
        return settings

    @classmethod
    def _check_sendable(cls, conn: Connection, fields: Mapping[str, str]) -> None:
        """Refuse a credential with a character a header cannot carry, naming the field, never the value."""
        for name in cls._required_fields:  # the credentials the hook sends
            if _UNSENDABLE.search(fields[name]):
                label = cls._label(name)
                raise InvalidOptionError(
                    label,
                    f"the {label} field of connection {conn.conn_id!r} holds a line break, tab, control or "
                    f"non-ASCII character (two keys pasted?); set it to the one {_FIELD_MEANING[name]} alone",
                )

    @classmethod
    def _base_url(cls, conn: Connection, extras: Mapping[str, Any]) -> str:
        url = cls._field(conn, extras, "host")  # the host field, else the legacy base_url extra
        parameter = "host" if (conn.host or "").strip() else "base_url"
        if parameter == "host":
            url = url if "://" in url else f"https://{url}"
            if conn.port and not urlsplit(url).port:
                url = f"{url.rstrip('/')}:{conn.port}"
        return _checked_url(url or cls.wire_class.spec.default_base_url, parameter=parameter).rstrip("/")

    @classmethod
    def _field(cls, conn: Connection, extras: Mapping[str, Any], field_name: str) -> str:
        """A form field's value; the extra it replaced only when the field is empty (with a warning)."""
        value, legacy = str(getattr(conn, field_name) or "").strip(), _LEGACY_EXTRAS[field_name]
        if extras.get(legacy):
            what = "ignored: the {} field is set" if value else "deprecated: set the {} field instead"
            log.warning(
                "Connection %r: the %r extra is %s", conn.conn_id, legacy, what.format(cls._label(field_name))
            )
        return value or str(extras.get(legacy) or "").strip()

    def _get_settings(self) -> Flow[ConnectionSettings]:
        """
        The connection's settings: read once per hook, by one call at a time (concurrent first calls
        wait for the first read, so one pacer paces them all); the async form does not block the loop.
        """
        if self._settings is None:
            yield from self._single_flight(self._read_settings)
        return self._settings  # type: ignore[return-value]  # set by the read, or it raised

    def _read_settings(self) -> Flow[None]:
        """Read the connection and install its settings and pacer, unless a call before did."""
        if self._settings is not None:
            return
        conn = yield from _Effect(
            lambda: self.get_connection(self.conn_id), partial(aget_connection, self.conn_id)
        )
        extras = yield from _Effect(lambda: dict(conn.extra_dejson), partial(aextra_dejson, conn))
        settings = self.settings_from_connection(conn, extras, timeout=self._timeout_override)
        if self._settings is None:  # a blocking call from another thread may have got here first
            self._pacer = self._new_pacer(settings)
            self._connection_policy = self._new_retry_policy(settings)
            self._settings = settings

    def _single_flight(self, flow: Callable[[], Flow[None]]) -> _Effect[None]:
        """Run ``flow()`` holding the hook's read lock (a thread lock; async: the running loop's lock)."""

        def run() -> None:
            with self._read_lock:
                self._run(flow())

        async def arun() -> None:
            loop = asyncio.get_running_loop()
            if self._aread_lock is None or self._aread_lock[0] is not loop:  # an asyncio lock is per loop
                self._aread_lock = (loop, asyncio.Lock())
            async with self._aread_lock[1]:
                await self._arun(flow())

        return _Effect(run, arun)

    get_settings, aget_settings = _methods(_get_settings)

    def _new_pacer(self, settings: ConnectionSettings) -> Pacer | None:
        """The hook's pacer: the override, else the extra, else the vendor's documented rate (0: none)."""
        limit = self._rate_override
        if limit is None:
            limit = parse_requests_per_second(settings.extras.get("requests_per_second"))
        if limit == 0:
            return None
        limit = limit if limit is not None else self.wire_class.spec.requests_per_second
        return Pacer(PacingPolicy(requests_per_second=limit), self._pacing_clock)

    @property
    def pacer(self) -> Pacer | None:
        """The request pacer (``None``: pacing is off, or the connection was not read yet)."""
        return self._pacer

    def _wire(self) -> Flow[W]:
        if self._wire_instance is None:
            settings = yield from self._get_settings()
            self._wire_instance = self.wire_class(settings)  # type: ignore[assignment]
        return self._wire_instance  # type: ignore[return-value]

    @property
    def wire(self) -> W:
        """The vendor wire format bound to this connection."""
        return self._run(self._wire())

    @property
    def retry_policy(self) -> RetryPolicy:
        """The effective retry policy (the connection's worked out once, as it is read)."""
        if self._retry_policy_override is not None:
            return self._retry_policy_override
        return self._connection_policy or self.wire_class.spec.retry_policy

    def _new_retry_policy(self, settings: ConnectionSettings) -> RetryPolicy:
        """The vendor's retry policy with the connection's ``max_retries`` extra, if set."""
        retries = parse_max_retries(settings.extras.get("max_retries"))
        policy = self.wire_class.spec.retry_policy
        return policy if retries is None else replace(policy, max_attempts=retries + 1)

    def _client_options(self, settings: ConnectionSettings) -> dict[str, Any]:
        return {
            "base_url": settings.base_url,
            "timeout": httpx.Timeout(settings.timeout, connect=min(settings.timeout, 15.0)),
            "limits": httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
                keepalive_expiry=30.0,
            ),
            "headers": {"User-Agent": USER_AGENT},
            "follow_redirects": False,
        }

    def get_conn(self) -> httpx.Client:
        """The hook's sync HTTP client (Airflow's conventional accessor)."""
        if self._client is None:
            self._client = httpx.Client(
                transport=self._transport, **self._client_options(self.get_settings())
            )
        return self._client

    async def _aget_client(self) -> httpx.AsyncClient:
        """
        The hook's async HTTP client on the running event loop: a new one on another loop (a task that
        calls ``asyncio.run`` per image), whose pooled connections belong to a loop that may be closed.
        """
        settings = self._settings if self._settings is not None else await self.aget_settings()
        loop = asyncio.get_running_loop()  # no await from here on: concurrent first calls share one client
        if self._aclient is None or self._aclient_loop is not loop:
            options = self._client_options(settings)
            transport = self._async_transport or hook_transport(options["limits"])
            self._aclient, self._aclient_loop = httpx.AsyncClient(transport=transport, **options), loop
        return self._aclient

    def close(self) -> None:
        """Close the sync client (the async one needs :meth:`aclose`)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close both clients (an async one made on another event loop is let go: not closable here)."""
        client, self._aclient = self._aclient, None
        if client is not None and self._aclient_loop is asyncio.get_running_loop():
            await client.aclose()
        self.close()

    def __enter__(self) -> BackgroundRemovalHook[W]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> BackgroundRemovalHook[W]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _exchange(
        self, request: WireRequest, target: httpx.URL, options: Mapping[str, Any]
    ) -> _Effect[httpx.Response]:
        """
        One request to ``target`` (``options``: headers, body, timeout), read in full; streamed, so that
        a body lost after the head is told apart (a :class:`_CutReply`) from a reply lost whole.
        """
        return self._stream(request.method, target, options, _keep_all)

    def _stream(
        self,
        method: str,
        url: str | httpx.URL,
        options: Mapping[str, Any],
        keep: Callable[[bytearray, bytes], None],
        wants_body: Callable[[httpx.Response], bool] = lambda response: True,
    ) -> _Effect[httpx.Response]:
        """
        A streamed request: its body, if ``wants_body(reply)``, read piece by piece by ``keep``. A
        transport failure after the head arrived is a :class:`_CutReply`; the reply is closed either way.
        """

        def run() -> httpx.Response:
            body = bytearray()
            with self.get_conn().stream(method, url, **options) as response, _reading_body_of(response):
                if wants_body(response):
                    keep(body, b"")  # the head's arrival counts as a piece: a deadline is checked then
                    for chunk in response.iter_bytes():
                        keep(body, chunk)
            return _whole(response, body)

        async def arun() -> httpx.Response:
            body = bytearray()
            client = await self._aget_client()
            async with client.stream(method, url, **options) as response:
                with _reading_body_of(response):
                    if wants_body(response):
                        keep(body, b"")
                        async for chunk in response.aiter_bytes():
                            keep(body, chunk)
            return _whole(response, body)

        return _Effect(run, arun)

    def _probe_exchange(
        self, request: WireRequest, target: httpx.URL, options: Mapping[str, Any], url: str
    ) -> _Effect[httpx.Response]:
        """
        :meth:`_exchange` for a probe: a complete answer of at most ``_PROBE_MAX_BYTES`` within
        :attr:`probe_deadline` seconds (httpx's timeouts are per read: a dripping host never trips them).
        """

        def overdue() -> TransientVendorError:
            return TransientVendorError(
                f"no complete answer within {self.probe_deadline:g} s from {url}",
                vendor=self.wire_class.spec.name,
                code="probe_deadline",
            )

        def bounded() -> _Effect[httpx.Response]:
            deadline = time.monotonic() + self.probe_deadline

            def keep(body: bytearray, chunk: bytes) -> None:
                if len(body) + len(chunk) > _PROBE_MAX_BYTES:
                    raise TransientVendorError(
                        f"the answer from {url} is over {_PROBE_MAX_BYTES} bytes; not read",
                        vendor=self.wire_class.spec.name,
                        code="probe_too_large",
                    )
                body += chunk
                if time.monotonic() > deadline:
                    raise overdue()

            return self._stream(request.method, target, options, keep)

        def run() -> httpx.Response:
            self.get_conn()  # made here: a client the worker made after the deadline would never be closed
            return _within(self.probe_deadline, bounded().run, overdue)

        async def arun() -> httpx.Response:
            try:  # a hard deadline, however the host stalls (the pieces' checks stop a drip sooner)
                return await asyncio.wait_for(bounded().arun(), self.probe_deadline)
            except asyncio.TimeoutError:
                raise overdue() from None

        return _Effect(run, arun)

    def _retried(
        self,
        attempt: Callable[[], Flow[T]],
        stats: CallStats | None = None,
        policy: RetryPolicy | None = None,
    ) -> _Effect[T]:
        """Run ``attempt()``'s flow under ``policy`` (the hook's when ``None``), counting into ``stats``."""
        policy = policy or self.retry_policy

        def run() -> T:
            return call_with_retry(lambda: self._run(attempt()), policy, sleep=self._sleep, stats=stats)

        async def arun() -> T:
            return await acall_with_retry(
                lambda: self._arun(attempt()), policy, sleep=self._async_sleep, stats=stats
            )

        return _Effect(run, arun)

    def _httpx_kwargs(self, wire: VendorWire, request: WireRequest) -> dict[str, Any]:
        headers = {**wire.auth_headers(), **request.headers}
        if not request.files:
            return {"headers": headers, "data": request.data, "json": request.json}
        # A multipart body encoded once and sent whole: streamed from ``files=``, httpx writes it in ~45
        # small pieces, half the client CPU of a call (docs/benchmarks.md, "CPU per image").
        encoded = httpx.Request(request.method, _MULTIPART_URL, data=request.data, files=request.files)
        return {
            "headers": {**headers, "Content-Type": encoded.headers["Content-Type"]},
            "content": encoded.read(),
        }

    def _slot(self, pacer: Pacer, stats: CallStats) -> Flow[tuple[float, bool]]:
        """Wait for the pacer to let a request go: when it went, and whether it had to wait."""
        waited, stats.attempt_in_flight = False, False  # nothing is out while waiting for a slot
        while (seconds := pacer.wait_time()) > 0:
            waited = True
            yield from _Effect(partial(pacer.clock.sleep, seconds), partial(pacer.clock.asleep, seconds))
        stats.attempt_in_flight = True
        return pacer.clock.now(), waited

    def _paced(self, pacer: Pacer, sent_at: float, waited: bool, error: BgRemovalError | None) -> None:
        """
        Tell the pacer how a request it let go was answered: a success, a 429, or a 503 with
        ``Retry-After`` (every request of the hook held until it is over); other errors: nothing.
        """
        cap = self.retry_policy.max_retry_after
        if error is None:
            pacer.on_success(paced=waited)
        elif isinstance(error, RateLimitedError):
            after = error.retry_after
            pacer.on_rate_limited(sent_at, None if after is None else min(after, cap))
        elif isinstance(error, TransientVendorError) and error.retry_after:
            pacer.hold(min(error.retry_after, cap))

    def _attempt(
        self, wire: VendorWire, request: WireRequest, probe: bool, stats: CallStats, pacer: Pacer | None
    ) -> Flow[httpx.Response]:
        options = {**self._httpx_kwargs(wire, request), **({"timeout": _PROBE_TIMEOUT} if probe else {})}
        sent_at, waited = (yield from self._slot(pacer, stats)) if pacer is not None else (0.0, False)
        full = f"{wire.settings.base_url}/{request.path.lstrip('/')}"  # as the client's base_url puts it
        target, url = _parsed_url(full), shown_url(full)
        exchange = (
            self._probe_exchange(request, target, options, url)
            if probe
            else self._exchange(request, target, options)
        )
        error: BgRemovalError | None
        try:
            response = yield from exchange
        except _CutReply as cut:
            response, error = cut.head, self._cut_reply_error(wire, request, cut, url, stats)
        except httpx.HTTPError as exc:
            raise self._transport_error(wire, request, exc, url) from None
        else:
            error = wire.error_from_reply(response) if not response.is_success else None  # 3xx too
        if error is not None and _lost_reply(request, error):
            error.possibly_charged = True  # a gateway timed out: the vendor may have done the work
        if isinstance(error, TransientVendorError) and response.status_code == 503:  # RFC 9110: as a 429
            error.retry_after = parse_retry_after(response.headers.get("retry-after"))
        if pacer is not None:
            self._paced(pacer, sent_at, waited, error)
        if error is not None:
            raise error
        return response

    @staticmethod
    def _transport_error(
        wire: VendorWire, request: WireRequest, exc: httpx.HTTPError, url: str
    ) -> TransientVendorError:
        """A request to ``url`` (as shown) that got no reply: a retryable error naming it and the cause."""
        what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
        # h11 quotes the illegal header (the key itself) in a LocalProtocolError: never shown
        cause = "" if isinstance(exc, httpx.LocalProtocolError) else wire.quote(str(exc))
        return TransientVendorError(
            f"{request.method} {url} {what}: {cause or type(exc).__name__}",
            vendor=wire.spec.name,
            code=type(exc).__name__,
            possibly_charged=_lost_reply(request, exc),
        )

    @staticmethod
    def _cut_reply_error(
        wire: VendorWire, request: WireRequest, cut: _CutReply, url: str, stats: CallStats
    ) -> BgRemovalError:
        """
        A reply to ``url`` (as shown) whose body was lost after its head. A billed 2xx was answered, so
        billed: a certain charge, never sent again. A 429 is rate limited whatever its body says: that
        error, its ``Retry-After`` (in the head) honoured. Any other head (an error, a free call's 2xx) is
        a retryable error: an error reply is not billed, and only its body can tell some errors apart
        (Pixelcut's 403 out of credits, Pixian's credit messages, Poof's ``processing_failed``), so the
        retry's whole reply tells what it is; lost (possibly charged) only when a gateway timed out.
        """
        head, cause = cut.head, cut.cause
        what = (
            f"{request.method} {url} answered {head.status_code}, then its body was cut off: "
            f"{wire.quote(str(cause)) or type(cause).__name__}"
        )
        request_id = wire.quote(head.headers.get("x-request-id", "")) or None
        if head.status_code == httpx.codes.TOO_MANY_REQUESTS:
            error = wire.error_from_reply(_whole(head, b""))
            error.message, error.request_id = f"{what}; {error.message}", error.request_id or request_id
            error.args = (error.message,)
            return error
        if head.is_success and request.billed:
            stats.billed_reply = True
            return wire.invalid_reply(
                f"{what}; the call was billed, its result lost",
                head,
                code="result_unreadable",
                request_id=request_id,
            )
        return TransientVendorError(
            what, vendor=wire.spec.name, status_code=head.status_code, request_id=request_id
        )

    def _send(
        self, request: WireRequest, stats: CallStats | None = None, *, probe: bool = False, paced: bool = True
    ) -> Flow[httpx.Response]:
        """
        Send a request under the retry policy and return the successful reply.

        :param request: the request.
        :param stats: the caller's live record of the call.
        :param probe: one attempt with a short timeout, not paced (what ``test_connection`` does).
        :param paced: wait for the pacer's slot (the account endpoints are not paced).
        """
        wire = yield from self._wire()
        policy, stats = _PROBE_POLICY if probe else None, stats if stats is not None else CallStats()
        pacer = self._pacer if paced and not probe else None
        return (
            yield from self._retried(lambda: self._attempt(wire, request, probe, stats, pacer), stats, policy)
        )

    def _download_error(
        self, message: str, status: int | None = None, *, transient: bool = False
    ) -> BgRemovalError:
        """A billed call's result download failing: retryable when ``transient``."""
        kind, code = (TransientVendorError, None) if transient else (ResultDownloadError, "result_download")
        return kind(message, vendor=self.wire_class.spec.name, status_code=status, code=code)

    def _result_head(self, response: httpx.Response) -> bool:
        """Check a result reply's head: whether its body is to be read (else it redirects), or raise."""
        status, declared = response.status_code, response.headers.get("content-length", "")
        if response.is_redirect:
            return False
        if status >= 500 or status in (408, 429):
            raise self._download_error(f"result download answered {status}", status, transient=True)
        if status >= 400:
            raise self._download_error(
                f"result URL answered {status} (expired or missing); the call was billed", status
            )
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_result_bytes:
            raise self._download_error(
                f"result is {declared} bytes, over the {self.max_result_bytes} byte cap"
            )
        return True

    def _redirect_target(self, response: httpx.Response) -> str:
        """Where a result reply redirects to, if that is an http(s) URL; else raise."""
        try:
            target = urljoin(str(response.url), response.headers.get("location", ""))
        except ValueError:  # an invalid URL in Location
            target = ""
        if not is_http_url(target):
            raise self._download_error("result URL redirected to a non-http(s) location; refused")
        return target

    def _keep_chunk(self, body: bytearray, chunk: bytes) -> None:
        if len(body) + len(chunk) > self.max_result_bytes:
            raise self._download_error(f"result is larger than the {self.max_result_bytes} byte cap; cut off")
        body += chunk

    def _download_attempt(self, url: str) -> Flow[bytes]:
        if not is_http_url(url):
            raise self._download_error("the vendor's result URL is not an absolute http(s) URL; refused")
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                response = yield from self._stream("GET", url, {}, self._keep_chunk, self._result_head)
            except httpx.InvalidURL:  # httpx parses a redirect's Location even when not following it
                raise self._download_error("result URL redirected to an invalid URL; refused") from None
            except (httpx.HTTPError, _CutReply) as exc:
                cause = exc.cause if isinstance(exc, _CutReply) else exc
                raise self._download_error(
                    f"result download failed: {type(cause).__name__}", transient=True
                ) from None
            if not response.is_redirect:
                return response.content
            url = self._redirect_target(response)
        raise self._download_error("too many redirects")

    def _download(self, url: str) -> Flow[bytes]:
        """
        Download a result URL (http(s) only, redirects checked, size-capped, no API key sent).

        :param url: the result URL.
        """
        yield from self._get_settings()  # the client and the retry policy come from the connection
        return (yield from self._retried(lambda: self._download_attempt(url)))

    download, adownload = _methods(_download)

    def _offload(self, work: Callable[[], T], data: bytes) -> _Effect[T]:
        """CPU work on the image ``data``; async: in a thread when over :attr:`inline_work_pixels`."""

        async def arun() -> T:
            small = len(data) <= 4 * self.inline_work_pixels
            pixels = _pixels(data) if small else None
            if pixels is not None and pixels <= self.inline_work_pixels:
                return work()
            return await asyncio.to_thread(work)

        return _Effect(work, arun)

    def _image_input(
        self,
        image: bytes | None,
        image_url: str | None,
        filename: str,
        check_input: bool,
        limits: InputLimits | None = None,
    ) -> Flow[ImageInput]:
        """The call's input: a checked URL, or the bytes checked against ``limits`` (the vendor's)."""
        if image is not None and image_url is not None:
            raise InvalidOptionError("image_url", "give either image bytes or image_url, not both")
        if image_url is not None:
            return ImageInput(url=_checked_url(image_url), filename=filename)
        if image is None:
            raise InvalidOptionError("image", "no image given")
        if not check_input:
            return ImageInput(data=image, filename=filename, content_type="application/octet-stream")
        limits, vendor = limits or self.wire_class.spec.limits, self.wire_class.spec.name
        prepared = yield from self._offload(lambda: prepare_input(image, limits, vendor=vendor), image)
        return ImageInput(data=prepared.data, filename=filename, content_type=prepared.content_type)

    def _image_call(
        self,
        request: WireRequest,
        image: ImageInput,
        plan: OptionSplit,
        vendor_options: Any = None,
        stats: CallStats | None = None,
    ) -> Flow[ImageResult]:
        """Every image endpoint: send, download a located result, post-process (``plan.local``), count."""
        stats = stats if stats is not None else CallStats()
        try:
            wire = yield from self._wire()
            response = yield from self._send(request, stats)
            stats.billed_reply = request.billed  # a success reply: from here on the charge is certain
            reply = wire.parse_image_reply(response)
            if isinstance(reply, ResultLocation):
                host = urlsplit(shown_url(reply.url)).netloc
                reply = ImageResult(
                    content=(yield from self._download(reply.url)),
                    content_type="image/png",
                    vendor=wire.spec.name,
                    request_id=reply.request_id,
                    metadata={"result_url_host": host},
                )
            result = reply
            stats.credits_charged = result.credits_charged

            def finish() -> ImageResult:
                done = wire.finish_result(result, image, vendor_options)
                content, content_type, width, height = apply_local_steps(
                    done.content,
                    plan.local,
                    vendor=wire.spec.name,
                    requested_format=plan.native.output_format,
                )
                return replace(
                    done,
                    content=content,
                    content_type=content_type,
                    width=width,
                    height=height,
                    call=stats.snapshot(),
                )

            return (yield from self._offload(finish, result.content))
        except BgRemovalError as exc:  # typed: with the call's outcome, a billable final error counted
            if exc.possibly_charged and not exc.retryable and request.billed and not stats.billed_reply:
                stats.possibly_charged += 1
            exc.call = stats.snapshot()
            raise
        except Exception as exc:
            what = (
                "turning the vendor's result into the output" if stats.billed_reply else "preparing the call"
            )
            error = ResultProcessingError(
                f"unexpected {type(exc).__name__} while {what}: {safe_excerpt(str(exc)) or 'no details'}",
                code="result_processing_failed" if stats.billed_reply else "call_failed",
            )
            error.call = stats.snapshot()
            raise error from exc

    def _call_options(self, vendor_options: Any) -> Any:
        """A call's vendor options with the hook's defaults filled in (none here)."""
        return vendor_options

    def _removal_request(
        self,
        image: bytes | None,
        image_url: str | None,
        options: RemovalOptions | None,
        vendor_options: Any,
        filename: str,
        check_input: bool,
    ) -> Flow[tuple[WireRequest, ImageInput, OptionSplit, Any]]:
        """A remove-background request, checked: with its input, option split and vendor options."""
        options = options or RemovalOptions()
        vendor_options = self.wire_class.check_call(
            options, self._call_options(vendor_options), image_url=image_url
        )
        wire = yield from self._wire()
        limits = limits_for_output(self.wire_class.spec.limits, options)  # e.g. WebP's 16,383 px a side
        image_input = yield from self._image_input(image, image_url, filename, check_input, limits)
        plan = split_options(options, wire.capabilities_for(vendor_options))
        request = wire.remove_background_request(image_input, plan.native, vendor_options)
        return request, image_input, plan, vendor_options

    def _remove_background(
        self,
        image: bytes | None = None,
        *,
        image_url: str | None = None,
        options: RemovalOptions | None = None,
        vendor_options: Any = None,
        filename: str = "image",
        check_input: bool = True,
        stats: CallStats | None = None,
    ) -> Flow[ImageResult]:
        """
        Remove the background of one image (a billed call; async: a big image's CPU work in a thread).

        :param image: the image bytes; checked locally against the vendor's limits first.
        :param image_url: a public http(s) URL for the vendor to fetch instead.
        :param options: the unified options; defaults to a transparent PNG.
        :param vendor_options: the vendor's typed extra options.
        :param filename: file name sent with the upload.
        :param check_input: run the local checks (set False only when the caller already did).
        :param stats: a :class:`~airflow_provider_bgremoval.retry.CallStats` the call fills in as it goes.
        """
        # One use of the bomb-warning filter for the input check and the result's decode, held while the
        # call is out (calls in flight share it): each Pillow step was its own use, so the process-wide
        # filter list was changed, and every module's warnings registry reset, 3 times per image.
        with bomb_warnings_ignored():
            request, image_input, plan, checked = yield from self._removal_request(
                image, image_url, options, vendor_options, filename, check_input
            )
            return (yield from self._image_call(request, image_input, plan, checked, stats))

    remove_background, aremove_background = _methods(_remove_background)

    def _get_balance(self, *, probe: bool = False) -> Flow[Balance]:
        """
        The account's remaining credits (a free call; the async form is safe in a trigger).

        :param probe: one attempt with a short timeout (what ``test_connection`` does).
        """
        wire = yield from self._wire()
        return wire.parse_balance((yield from self._send(wire.balance_request(), probe=probe, paced=False)))

    get_balance, aget_balance = _methods(_get_balance)

    def output_settings(self, vendor_options: Any = None) -> dict[str, Any]:
        """
        Connection-level settings that change the output, for the options fingerprint of outputs.

        :param vendor_options: the call's vendor options.
        """
        return {}

    def estimate_cost(self, vendor_options: Any = None) -> Decimal:
        """
        Credits one image is expected to cost with these vendor options (from the cost table).

        :param vendor_options: the call's vendor options.
        """
        return self.wire_class.estimate_cost(vendor_options)

    def _redacted(self, text: str) -> str:
        """``text`` without the connection's secrets (when it was read) or a URL's ``user:password@``."""
        text = _URL_USERINFO.sub(r"\1***@", text)
        return self._wire_instance.quote(text) if self._wire_instance is not None else safe_excerpt(text)

    def test_connection(self) -> tuple[bool, str]:
        """Check the credentials with the free balance endpoint: one attempt, a short timeout."""
        try:
            balance = self.get_balance(probe=True)
        except BgRemovalError as exc:
            return False, str(exc)
        except Exception as exc:  # an unexpected error's text may quote the key (or a URI holding it)
            return False, f"{type(exc).__name__}: {self._redacted(str(exc))}"
        finally:
            self.close()
        remaining = format_credits(balance.remaining)
        return True, f"Connected to {self.hook_name}: {remaining} credits remaining ({balance.state.value})"
