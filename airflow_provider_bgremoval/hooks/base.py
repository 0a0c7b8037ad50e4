"""The behaviour every vendor hook shares: connection -> configured httpx clients, retries, results.

A vendor hook is a subclass that names its connection type and its wire format
(:class:`~airflow_provider_bgremoval.vendors.base.VendorWire`); everything else lives here once:

* one ``httpx.Client`` and one ``httpx.AsyncClient`` per hook instance, created lazily, pooled and
  kept alive, closed by :meth:`close` / :meth:`aclose` or the context-manager forms;
* the retry policy (:mod:`airflow_provider_bgremoval.retry`) around every request;
* mapping of transport failures and error replies to the exception hierarchy;
* local input checks before a billed call, vendor-specific result decoding, local post-processing;
* size-capped downloads of result URLs (http(s) only, redirects checked, no API key sent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from airflow.sdk import BaseHook
from PIL import Image

from airflow_provider_bgremoval import __version__
from airflow_provider_bgremoval._compat import aextra_dejson, aget_connection, mask_secret
from airflow_provider_bgremoval._compat import get_connection as fetch_connection_unlogged
from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InvalidOptionError,
    ResultDownloadError,
    ResultProcessingError,
    TransientVendorError,
    safe_excerpt,
)
from airflow_provider_bgremoval.imaging import apply_local_steps, decode_result, prepare_input
from airflow_provider_bgremoval.options import ProcessingPlan, RemovalOptions, plan_processing
from airflow_provider_bgremoval.results import Balance, ImageResult
from airflow_provider_bgremoval.retry import CallStats, RetryPolicy, acall_with_retry, call_with_retry
from airflow_provider_bgremoval.vendors.base import (
    ConnectionSettings,
    ImageInput,
    ResultLocation,
    VendorWire,
    WireRequest,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection

W = TypeVar("W", bound=VendorWire)

#: Largest result accepted from a result URL (Pixelcut results are PNGs of at most 6000x6000).
DEFAULT_MAX_RESULT_BYTES = 150 * 1024 * 1024
_MAX_REDIRECTS = 3
USER_AGENT = f"airflow-provider-bgremoval/{__version__}"


def check_http_url(url: str, *, parameter: str = "image_url") -> str:
    """Accept only absolute http(s) URLs (no ``file:``, ``ftp:``, ``data:``…)."""
    parts = urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidOptionError(parameter, "only absolute http:// or https:// URLs are accepted")
    return str(url)


def _note_call_stats(exc: BaseException, stats: CallStats) -> BgRemovalError:
    """
    Turn the error an image call ends in into a typed error and record the call's statistics on it
    and in ``stats`` (the caller's live record).

    ``stats.possibly_charged`` already counts every retryable attempt whose reply was lost after the
    request was sent (the final one included); a final non-retryable error that says it may have
    been billed counts once more, unless the vendor answered the billed request (then the charge is
    certain: ``stats.billed_reply``). Anything that is not a :class:`BgRemovalError` (a decoder or
    post-processing failure, memory exhausted by a huge result) becomes a
    :class:`ResultProcessingError` when the vendor had answered, so no exception of one image's path
    escapes untyped.

    :param exc: the error the call ends with.
    :param stats: the call's statistics.
    """
    if not isinstance(exc, BgRemovalError):
        what = "turning the vendor's result into the output" if stats.billed_reply else "preparing the call"
        error: BgRemovalError = ResultProcessingError(
            f"unexpected {type(exc).__name__} while {what}: {safe_excerpt(str(exc)) or 'no details'}",
            code="result_processing_failed" if stats.billed_reply else "call_failed",
        )
        error.__cause__ = exc
    else:
        error = exc
        if getattr(exc, "possibly_charged", False) and not exc.retryable and not stats.billed_reply:
            stats.possibly_charged += 1
    error.attempts = stats.attempts
    error.possibly_charged_attempts = stats.possibly_charged + int(stats.billed_reply)
    return error


class BackgroundRemovalHook(BaseHook, Generic[W]):
    """
    Base class of the vendor hooks (sync and async methods over httpx).

    :param conn_id: Airflow connection id; defaults to the vendor's ``<vendor>_default``.
    :param timeout: idle/read timeout in seconds; overrides the connection's ``timeout`` extra.
    :param retry_policy: retry policy; defaults to the vendor's documented policy, adjusted by the
        connection's ``max_retries`` extra.
    :param max_result_bytes: cap on downloaded result URLs.
    :param max_connections: size of the HTTP connection pool.
    :param transport: custom sync httpx transport (tests use ``httpx.MockTransport``).
    :param async_transport: custom async httpx transport.
    :param sleep: sync sleep used between retries (tests travel in time with it).
    :param async_sleep: async sleep used between retries.
    """

    conn_name_attr = "conn_id"
    default_conn_name: ClassVar[str]
    conn_type: ClassVar[str]
    hook_name: ClassVar[str]
    wire_class: ClassVar[type[VendorWire]]

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
    ) -> None:
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name
        self._timeout_override = timeout
        self._retry_policy_override = retry_policy
        self.max_result_bytes = max_result_bytes
        self.max_connections = max_connections
        self._transport = transport
        self._async_transport = async_transport
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._settings: ConnectionSettings | None = None
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(conn_id={self.conn_id!r})"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """
        Connection-form relabelling for Airflow releases that read it from the hook (before 3.2),
        built from the provider info so the two cannot drift apart.
        """
        from airflow_provider_bgremoval.get_provider_info import get_provider_info

        entry = next(
            item
            for item in get_provider_info()["connection-types"]
            if item["connection-type"] == cls.conn_type
        )
        behaviour = entry["ui-field-behaviour"]
        return {
            "hidden_fields": list(behaviour["hidden-fields"]),
            "relabeling": dict(behaviour["relabeling"]),
            "placeholders": dict(behaviour["placeholders"]),
        }

    # -- connection ----------------------------------------------------------------------------
    @classmethod
    def get_connection(cls, conn_id: str) -> Connection:
        """
        Airflow's ``BaseHook.get_connection``, keeping the secrets out of ``dag.test()``'s DEBUG log.

        :param conn_id: the connection id.
        """
        return fetch_connection_unlogged(conn_id)

    @classmethod
    def settings_from_connection(
        cls, conn: Connection, extras: Mapping[str, Any], *, timeout: float | None = None
    ) -> ConnectionSettings:
        """
        Read a connection into :class:`ConnectionSettings` and register its secrets for masking.

        The base URL is the ``base_url`` extra when set; else ``host`` (with its scheme, or https)
        plus ``port``; else the vendor's production URL.
        """
        wire = cls.wire_class
        api_key = conn.password or extras.get("api_key") or ""
        if not api_key:
            raise InvalidOptionError(
                "password", f"connection {conn.conn_id!r} has no API key (set the password field)"
            )
        # The task SDK masked the password (and a sensitive-named ``api_key`` extra) as it fetched
        # the connection; this also covers connections that did not come through the SDK. Through
        # _compat, so that dag.test()'s supervisor does not log the value at DEBUG.
        mask_secret(api_key)
        base_url = str(extras.get("base_url") or "").strip()
        if not base_url and conn.host:
            host = conn.host.strip()
            base_url = host if "://" in host else f"https://{host}"
            if conn.port and not urlsplit(base_url).port:
                base_url = f"{base_url.rstrip('/')}:{conn.port}"
        base_url = check_http_url(base_url or wire.default_base_url, parameter="base_url").rstrip("/")
        raw_timeout = timeout if timeout is not None else extras.get("timeout")
        try:
            effective_timeout = float(raw_timeout) if raw_timeout not in (None, "") else wire.default_timeout
        except (TypeError, ValueError):
            raise InvalidOptionError("timeout", f"{raw_timeout!r} is not a number of seconds") from None
        if effective_timeout <= 0:
            raise InvalidOptionError("timeout", "must be positive")
        public_extras = {k: v for k, v in extras.items() if k not in ("api_key", "secret", "password")}
        return ConnectionSettings(
            base_url=base_url,
            api_key=api_key,
            api_id=conn.login or extras.get("api_id") or None,
            timeout=effective_timeout,
            extras=public_extras,
        )

    def get_settings(self) -> ConnectionSettings:
        """The connection's settings (read once per hook)."""
        if self._settings is None:
            conn = self.get_connection(self.conn_id)
            self._settings = self.settings_from_connection(
                conn, conn.extra_dejson, timeout=self._timeout_override
            )
        return self._settings

    async def aget_settings(self) -> ConnectionSettings:
        """The connection's settings, read without blocking the event loop."""
        if self._settings is None:
            conn = await aget_connection(self.conn_id)
            self._settings = self.settings_from_connection(
                conn, await aextra_dejson(conn), timeout=self._timeout_override
            )
        return self._settings

    def get_conn(self) -> httpx.Client:
        """The hook's sync HTTP client (Airflow's conventional accessor)."""
        return self._get_client()

    @cached_property
    def wire(self) -> W:
        """The vendor wire format bound to this connection."""
        return self.wire_class(self.get_settings())  # type: ignore[return-value]

    async def awire(self) -> W:
        """The vendor wire format, with the connection read the async way."""
        if "wire" not in self.__dict__:
            self.__dict__["wire"] = self.wire_class(await self.aget_settings())
        return self.__dict__["wire"]  # type: ignore[no-any-return]

    @property
    def retry_policy(self) -> RetryPolicy:
        """The effective retry policy."""
        if self._retry_policy_override is not None:
            return self._retry_policy_override
        extras = self._settings.extras if self._settings else {}
        max_retries = extras.get("max_retries")
        policy = self.wire_class.retry_policy
        if max_retries not in (None, ""):
            policy = policy.with_overrides(max_attempts=int(max_retries) + 1)
        return policy

    # -- clients -------------------------------------------------------------------------------
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

    def _get_client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                transport=self._transport, **self._client_options(self.get_settings())
            )
        return self._client

    async def _aget_client(self) -> httpx.AsyncClient:
        if self._aclient is None:
            settings = await self.aget_settings()
            self._aclient = httpx.AsyncClient(
                transport=self._async_transport, **self._client_options(settings)
            )
        return self._aclient

    def close(self) -> None:
        """Close the sync client (the async one needs :meth:`aclose`)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close both clients."""
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
        self.close()

    def __enter__(self) -> BackgroundRemovalHook[W]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> BackgroundRemovalHook[W]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- one request ---------------------------------------------------------------------------
    def _transport_error(self, exc: httpx.HTTPError, request: WireRequest) -> TransientVendorError:
        sent_in_full = isinstance(
            exc, (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.DecodingError)
        )
        what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
        return TransientVendorError(
            f"{request.method} {request.path} {what}: {type(exc).__name__}",
            vendor=self.wire_class.name,
            code=type(exc).__name__,
            possibly_charged=sent_in_full and request.billed,
        )

    def _httpx_kwargs(self, wire: VendorWire, request: WireRequest) -> dict[str, Any]:
        return {
            "headers": {**wire.auth_headers(), **request.headers},
            "data": request.data,
            "files": request.files,
            "json": request.json,
        }

    def _send_once(self, wire: VendorWire, request: WireRequest) -> httpx.Response:
        try:
            response = self._get_client().request(
                request.method, request.path, **self._httpx_kwargs(wire, request)
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, request) from None
        if response.status_code >= 400:
            raise wire.error_from_reply(response)
        return response

    async def _asend_once(self, wire: VendorWire, request: WireRequest) -> httpx.Response:
        client = await self._aget_client()
        try:
            response = await client.request(request.method, request.path, **self._httpx_kwargs(wire, request))
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, request) from None
        if response.status_code >= 400:
            raise wire.error_from_reply(response)
        return response

    def send(self, request: WireRequest, stats: CallStats | None = None) -> httpx.Response:
        """Send a request under the retry policy and return the successful reply."""
        wire = self.wire
        return call_with_retry(
            lambda: self._send_once(wire, request), self.retry_policy, sleep=self._sleep, stats=stats
        )

    async def asend(self, request: WireRequest, stats: CallStats | None = None) -> httpx.Response:
        """Async :meth:`send`."""
        wire = await self.awire()
        return await acall_with_retry(
            lambda: self._asend_once(wire, request), self.retry_policy, sleep=self._async_sleep, stats=stats
        )

    # -- result URLs ---------------------------------------------------------------------------
    def _download_error(self, message: str, status: int | None = None) -> ResultDownloadError:
        return ResultDownloadError(
            message, vendor=self.wire_class.name, status_code=status, code="result_download"
        )

    def _check_download_status(self, response: httpx.Response, url: str) -> str | None:
        """Return the next URL for a redirect, ``None`` for success; raise for failures."""
        if response.is_redirect:
            target = urljoin(url, response.headers.get("location", ""))
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise self._download_error("result URL redirected to a non-http(s) location; refused")
            return target
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise TransientVendorError(
                f"result download answered {response.status_code}",
                vendor=self.wire_class.name,
                status_code=response.status_code,
            )
        if response.status_code >= 400:
            raise self._download_error(
                f"result URL answered {response.status_code} (expired or missing); the call was billed",
                response.status_code,
            )
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_result_bytes:
            raise self._download_error(
                f"result is {declared} bytes, over the {self.max_result_bytes} byte cap"
            )
        return None

    def _result_url(self, url: str) -> str:
        """The vendor's result URL, if it is an absolute http(s) URL (the call was billed either way)."""
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self._download_error("the vendor's result URL is not an absolute http(s) URL; refused")
        return str(url)

    def _cap(self, total: int) -> None:
        if total > self.max_result_bytes:
            raise self._download_error(f"result is larger than the {self.max_result_bytes} byte cap; cut off")

    def download(self, url: str) -> bytes:
        """Download a result URL (http(s) only, redirects checked, size-capped, no API key sent)."""

        def attempt() -> bytes:
            target = self._result_url(url)
            for _ in range(_MAX_REDIRECTS + 1):
                try:
                    with self._get_client().stream("GET", target) as response:
                        next_url = self._check_download_status(response, target)
                        if next_url is None:
                            chunks, total = [], 0
                            for chunk in response.iter_bytes():
                                total += len(chunk)
                                self._cap(total)
                                chunks.append(chunk)
                            return b"".join(chunks)
                except httpx.InvalidURL:  # httpx parses a redirect's Location even when not following it
                    raise self._download_error("result URL redirected to an invalid URL; refused") from None
                except httpx.HTTPError as exc:
                    raise TransientVendorError(
                        f"result download failed: {type(exc).__name__}", vendor=self.wire_class.name
                    ) from None
                target = next_url
            raise self._download_error("too many redirects")

        return call_with_retry(attempt, self.retry_policy, sleep=self._sleep)

    async def adownload(self, url: str) -> bytes:
        """Async :meth:`download`."""

        async def attempt() -> bytes:
            client = await self._aget_client()
            target = self._result_url(url)
            for _ in range(_MAX_REDIRECTS + 1):
                try:
                    async with client.stream("GET", target) as response:
                        next_url = self._check_download_status(response, target)
                        if next_url is None:
                            chunks, total = [], 0
                            async for chunk in response.aiter_bytes():
                                total += len(chunk)
                                self._cap(total)
                                chunks.append(chunk)
                            return b"".join(chunks)
                except httpx.InvalidURL:  # httpx parses a redirect's Location even when not following it
                    raise self._download_error("result URL redirected to an invalid URL; refused") from None
                except httpx.HTTPError as exc:
                    raise TransientVendorError(
                        f"result download failed: {type(exc).__name__}", vendor=self.wire_class.name
                    ) from None
                target = next_url
            raise self._download_error("too many redirects")

        return await acall_with_retry(attempt, self.retry_policy, sleep=self._async_sleep)

    # -- remove background ---------------------------------------------------------------------
    def _image_input(
        self, image: bytes | None, image_url: str | None, filename: str, check_input: bool
    ) -> ImageInput:
        if image is not None and image_url is not None:
            raise InvalidOptionError("image_url", "give either image bytes or image_url, not both")
        if image_url is not None:
            return ImageInput(url=check_http_url(image_url), filename=filename)
        if image is None:
            raise InvalidOptionError("image", "no image given")
        if not check_input:
            return ImageInput(data=image, filename=filename, content_type="application/octet-stream")
        prepared = prepare_input(image, self.wire_class.limits, vendor=self.wire_class.name)
        return ImageInput(data=prepared.data, filename=filename, content_type=prepared.content_type)

    def _finish(
        self,
        wire: VendorWire,
        result: ImageResult,
        image: ImageInput,
        plan: ProcessingPlan,
        vendor_options: Any,
        stats: CallStats,
    ) -> ImageResult:
        result = wire.finish_result(result, image, vendor_options)
        if plan.local.needed:
            content, content_type, width, height = apply_local_steps(
                result.content, plan.local, vendor=wire.name
            )
        else:
            decoded = decode_result(result.content, vendor=wire.name)
            content, width, height = result.content, decoded.width, decoded.height
            content_type = Image.MIME.get(decoded.format or "", result.content_type)
        return ImageResult(
            content=content,
            content_type=content_type,
            vendor=wire.name,
            width=width,
            height=height,
            request_id=result.request_id,
            credits_charged=result.credits_charged,
            credits_calculated=result.credits_calculated,
            possibly_charged_retries=stats.possibly_charged,
            attempts=stats.attempts,
            metadata=result.metadata,
        )

    def _located_result(self, location: ResultLocation, content: bytes) -> ImageResult:
        return ImageResult(
            content=content,
            content_type="image/png",
            vendor=self.wire_class.name,
            request_id=location.request_id,
            credits_charged=location.credits_charged,
            metadata={"result_url_host": urlsplit(location.url).netloc},
        )

    @staticmethod
    def _note_reply(request: WireRequest, stats: CallStats) -> None:
        """A success reply arrived: from here on, the call's charge is certain for a billed request."""
        stats.billed_reply = request.billed

    def _image_call(
        self,
        wire: VendorWire,
        request: WireRequest,
        image: ImageInput,
        plan: ProcessingPlan,
        vendor_options: Any = None,
        stats: CallStats | None = None,
    ) -> ImageResult:
        """
        Send a billed image request, download a located result, decode and post-process it.

        The one path every image endpoint (remove-background, Pixelcut's generate-background…) takes.

        :param wire: the vendor wire the request was built with.
        :param request: the billed request.
        :param image: the input (for vendor-specific result decoding).
        :param plan: the local post-processing plan (an empty :class:`LocalSteps` keeps the bytes).
        :param vendor_options: the vendor options, handed to :meth:`VendorWire.finish_result`.
        :param stats: the caller's live record of the call (attempts, lost replies, whether the vendor
            answered and billed, a retry guard); a fresh one when ``None``.
        """
        stats = stats if stats is not None else CallStats()
        try:
            response = self.send(request, stats)
            self._note_reply(request, stats)
            reply = wire.parse_image_reply(response)
            stats.credits_charged = reply.credits_charged
            if isinstance(reply, ResultLocation):
                reply = self._located_result(reply, self.download(reply.url))
            return self._finish(wire, reply, image, plan, vendor_options, stats)
        except Exception as exc:
            error = _note_call_stats(exc, stats)
            if error is exc:
                raise
            raise error from exc

    async def _aimage_call(
        self,
        wire: VendorWire,
        request: WireRequest,
        image: ImageInput,
        plan: ProcessingPlan,
        vendor_options: Any = None,
        stats: CallStats | None = None,
    ) -> ImageResult:
        """Async :meth:`_image_call`; CPU work runs in a worker thread."""
        stats = stats if stats is not None else CallStats()
        try:
            response = await self.asend(request, stats)
            self._note_reply(request, stats)
            reply = wire.parse_image_reply(response)
            stats.credits_charged = reply.credits_charged
            if isinstance(reply, ResultLocation):
                reply = self._located_result(reply, await self.adownload(reply.url))
            return await asyncio.to_thread(self._finish, wire, reply, image, plan, vendor_options, stats)
        except Exception as exc:
            error = _note_call_stats(exc, stats)
            if error is exc:
                raise
            raise error from exc

    def remove_background(
        self,
        image: bytes | None = None,
        *,
        image_url: str | None = None,
        options: RemovalOptions | None = None,
        vendor_options: Any = None,
        filename: str = "image",
        check_input: bool = True,
        stats: CallStats | None = None,
    ) -> ImageResult:
        """
        Remove the background of one image (a billed call).

        :param image: the image bytes; checked locally against the vendor's limits first.
        :param image_url: a public http(s) URL for the vendor to fetch instead.
        :param options: the unified options; defaults to a transparent PNG.
        :param vendor_options: the vendor's typed extra options.
        :param filename: file name sent with the upload.
        :param check_input: run the local checks (set False only when the caller already did).
        :param stats: a :class:`~airflow_provider_bgremoval.retry.CallStats` the call fills in as it
            goes (attempts, lost replies, billed reply), for callers that account for money.
        """
        options = options or RemovalOptions()
        vendor_options = self.wire_class.check_call(options, vendor_options, image_url=image_url)
        wire = self.wire
        image_input = self._image_input(image, image_url, filename, check_input)
        plan = plan_processing(options, wire.capabilities_for(vendor_options))
        request = wire.remove_background_request(image_input, plan.native, vendor_options)
        return self._image_call(wire, request, image_input, plan, vendor_options, stats)

    async def aremove_background(
        self,
        image: bytes | None = None,
        *,
        image_url: str | None = None,
        options: RemovalOptions | None = None,
        vendor_options: Any = None,
        filename: str = "image",
        check_input: bool = True,
        stats: CallStats | None = None,
    ) -> ImageResult:
        """Async :meth:`remove_background`; CPU work runs in a worker thread."""
        options = options or RemovalOptions()
        vendor_options = self.wire_class.check_call(options, vendor_options, image_url=image_url)
        wire = await self.awire()
        image_input = await asyncio.to_thread(self._image_input, image, image_url, filename, check_input)
        plan = plan_processing(options, wire.capabilities_for(vendor_options))
        request = wire.remove_background_request(image_input, plan.native, vendor_options)
        return await self._aimage_call(wire, request, image_input, plan, vendor_options, stats)

    # -- balance -------------------------------------------------------------------------------
    def get_balance(self) -> Balance:
        """The account's remaining credits (a free call)."""
        wire = self.wire
        return wire.parse_balance(self.send(wire.balance_request()))

    async def aget_balance(self) -> Balance:
        """Async :meth:`get_balance`; safe to use in a trigger."""
        wire = await self.awire()
        return wire.parse_balance(await self.asend(wire.balance_request()))

    def output_settings(self, vendor_options: Any = None) -> dict[str, Any]:
        """
        Connection-level settings that change the output, for the options fingerprint recorded on
        outputs (e.g. Pixian test mode: watermarked results must not count as finished work later).

        :param vendor_options: the call's vendor options.
        """
        return {}

    def estimate_cost(self, vendor_options: Any = None) -> Decimal:
        """Credits one image is expected to cost with these vendor options (from the cost table)."""
        return self.wire_class.estimate_cost(vendor_options)

    def test_connection(self) -> tuple[bool, str]:
        """Check the credentials with the free balance endpoint."""
        try:
            balance = self.get_balance()
        except BgRemovalError as exc:
            return False, str(exc)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        finally:
            self.close()
        return (
            True,
            f"Connected to {self.hook_name}: {balance.remaining} credits remaining ({balance.state.value})",
        )
