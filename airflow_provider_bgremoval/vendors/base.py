"""What every vendor wire format provides and shares (no I/O: the hooks send); vendor differences are
data, a :class:`VendorSpec` per vendor."""

from __future__ import annotations

import base64
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import quote as percent_encode
from urllib.parse import urlsplit, urlunsplit

import httpx

from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InputRejectedError,
    InvalidOptionError,
    InvalidVendorResponseError,
    OutOfCreditsError,
    RateLimitedError,
    TransientVendorError,
    VendorAuthError,
    VendorRequestError,
    safe_excerpt,
)
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.options import OptionSet, RemovalOptions, VendorCapabilities
from airflow_provider_bgremoval.results import AccountState, Balance, ImageResult
from airflow_provider_bgremoval.retry import RetryPolicy

_N = TypeVar("_N", int, float)


#: A call's vendor options: typed, a mapping of their fields, or ``None`` (typed once by ``check_call``).
VendorOptionsInput = OptionSet | Mapping[str, Any] | None

#: ``Retry-After`` delta-seconds (RFC 9110: ``1*DIGIT``; a decimal fraction tolerated)
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
#: the longest ``Retry-After`` read, in seconds (a day); the retry policy caps it further
MAX_RETRY_AFTER = 86_400.0

#: A vendor's "MB", read as the smaller (decimal) megabyte, as the sandbox does (docs/sandbox.md).
MEGABYTE = 1_000_000


@dataclass(frozen=True)
class ConnectionSettings:
    """
    Everything a vendor client needs from an Airflow connection.

    :param base_url: the API origin (``https://api.pixian.ai`` or a sandbox URL); no trailing slash.
    :param api_key: API key (Pixelcut, Poof) or API secret (Pixian). Never logged.
    :param api_id: Pixian API id (HTTP Basic user name); ``None`` for the other vendors.
    :param timeout: idle/read timeout in seconds.
    :param extras: the connection's other extras (vendor-specific switches such as Pixian test mode).
    """

    base_url: str
    api_key: str = field(repr=False)
    api_id: str | None = None
    timeout: float = 60.0
    extras: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ImageInput:
    """
    The image a call processes: exactly one of ``data`` or ``url``.

    :param data: image bytes to upload.
    :param url: public http(s) URL the vendor fetches itself.
    :param filename: file name sent with an upload.
    :param content_type: MIME type of ``data``.
    """

    data: bytes | None = field(default=None, repr=False)
    url: str | None = None
    filename: str = "image"
    content_type: str = "application/octet-stream"

    def __post_init__(self) -> None:
        if (self.data is None) == (self.url is None):
            raise ValueError("give exactly one of image bytes or image_url")


@dataclass(frozen=True)
class WireRequest:
    """
    One HTTP request, as data.

    :param method: HTTP method.
    :param path: path below the connection's base URL.
    :param billed: True when a success costs credits.
    :param headers: extra headers (authentication is added by :meth:`VendorWire.auth_headers`).
    :param data: multipart/form text fields.
    :param files: multipart file fields ``name -> (filename, bytes, content_type)``.
    :param json: a JSON body.
    """

    method: str
    path: str
    billed: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, str] | None = None
    files: Mapping[str, tuple[str, bytes, str]] | None = field(default=None, repr=False)
    json: Any = None


@dataclass(frozen=True)
class ResultLocation:
    """
    A reply that points at the result instead of carrying it (Pixelcut ``result_url``).

    :param url: where to download the result from (without the API key).
    :param request_id: the vendor's request id, if any.
    """

    url: str
    request_id: str | None = None


@dataclass(frozen=True)
class ErrorReply:
    """
    A vendor's error envelope reduced to its facts.

    :param code: the vendor's error code as text.
    :param message: the vendor's human message.
    :param request_id: the vendor's request id.
    """

    code: str | None
    message: str
    request_id: str | None = None


def parse_decimal(value: Any) -> Decimal | None:
    """Parse a number or numeric string to :class:`~decimal.Decimal` (``None`` when not numeric)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def credits_left(number: Decimal) -> Decimal:
    """
    ``number`` of credits, or a plain ``0`` when it is 0 or less: never below zero, nor a ``-0`` (a
    reported ``-0`` or ``-0.0``, which ``max(number, 0)`` keeps and shows as "-0 credits").

    :param number: credits as the vendor reports (or a reply lets compute) them.
    """
    return number if number > 0 else Decimal(0)


def parse_charge(value: str | None) -> Decimal | None:
    """
    A credit header (``X-Credits-Charged``, ``X-Credits-Calculated``): a finite number of 0 or more,
    else ``None`` (unknown: the engine books the unit cost). A negative charge would lower the
    credits at risk and spent; a ``-0`` is a plain 0 (it was recorded as "-0").

    :param value: the header's value.
    """
    number = parse_decimal(value)
    return number.copy_abs() if number is not None and number >= 0 else None


def parse_number(value: str | None, kind: type[_N]) -> _N | None:
    """
    Parse a numeric header value as ``kind`` (``None`` when absent or not of that kind).

    :param value: the header's value.
    :param kind: ``int`` or ``float``.
    """
    try:
        return None if value is None else kind(value.strip())
    except ValueError:
        return None


def parse_retry_after(value: str | None) -> float | None:
    """
    Seconds from a ``Retry-After`` header: delta-seconds (digits, a decimal fraction tolerated) or an
    HTTP date (a past one: 0). Anything else is no ``Retry-After`` (``None``: the retry policy's own
    backoff applies): ``nan``, ``-5``, ``inf``, ``1e3`` or ``1_0`` are no delta-seconds, and reading
    them as numbers made a retry go at once (``nan``, a negative) or asked for an endless wait. A
    value over :data:`MAX_RETRY_AFTER` (a day; ``9`` x 400 digits is ``inf`` as a float) reads as that:
    finite, for the retry policy's ``max_retry_after`` to cut.
    """
    text = (value or "").strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max(0.0, (when - datetime.now(timezone.utc)).total_seconds()), MAX_RETRY_AFTER)


def is_http_url(url: object) -> bool:
    """
    True for an absolute http(s) URL: the one URL check (inputs, base URLs, result URLs, redirects).

    :param url: the URL.
    """
    try:
        parts = urlsplit(str(url))
    except ValueError:  # e.g. "http://[bad": an invalid IPv6 host
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def shown_url(url: str) -> str:
    """
    ``url`` as a message may show it: without user info, query or fragment (``""`` if unparsable).

    :param url: the URL.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[bad"
        return ""
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def json_body(response: httpx.Response) -> Any:
    """The reply's JSON, or ``None`` when the body is not JSON."""
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def media_type(response: httpx.Response) -> str:
    """The reply's ``Content-Type`` without parameters, in lower case (``""`` when absent)."""
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def form_fields(values: Mapping[str, Any]) -> dict[str, str]:
    """
    Multipart text fields: ``None`` left out, booleans as ``true``/``false``, objects as compact JSON.

    :param values: the fields' values by wire name.
    """
    return {name: _form_value(value) for name, value in values.items() if value is not None}


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@dataclass(frozen=True)
class VendorSpec:
    """
    What a vendor is, as data (the sources of each value: VENDORS.md).

    :param name: vendor name used in results, errors, manifests and logs.
    :param default_base_url: production API origin.
    :param capabilities: what the vendor does natively with the unified options.
    :param limits: documented input limits.
    :param retry_policy: default retry policy.
    :param default_timeout: default idle/read timeout in seconds.
    :param api_key_header: the header that carries the API key (Pixian authenticates otherwise).
    :param no_url_input: why an ``image_url`` input is refused; ``None`` when the vendor fetches URLs.
    :param input_error_codes: codes meaning "this image (or an image parameter) is bad".
    :param credit_error_codes: codes meaning out of credits, whatever the status.
    :param auth_error_codes: codes meaning bad or revoked credentials, whatever the status.
    :param permanent_server_codes: 5xx codes that are deterministic for the input (retrying cannot help).
    :param base_cost: credits one successful remove-background call costs by default (DESIGN.md).
    :param requests_per_second: the account's documented request rate, the hooks' default pacing cap
        (``None``: none documented; the rate is then only adapted to 429s; docs/rate-limits.md).
    :param remove_path: the remove-background endpoint's path (see :meth:`VendorWire.endpoint`).
    :param balance_path: the free balance (or account) endpoint's path.
    :param api_prefix: the paths' version prefix, left out when the base URL already ends with it.
    :param options: the vendor's options model (``None``: vendor options are passed on as given).
    :param result_download: a call's reply may point at its result (a :class:`ResultLocation`), which
        the hook then downloads in a second sequence retried under the same policy: one image's call
        may take that long again (:class:`~airflow_provider_bgremoval.retry.ClaimHold` counts it).
    """

    name: str
    default_base_url: str
    capabilities: VendorCapabilities
    limits: InputLimits
    retry_policy: RetryPolicy
    default_timeout: float = 60.0
    api_key_header: str = "X-API-Key"
    no_url_input: str | None = None
    input_error_codes: frozenset[str] = frozenset()
    credit_error_codes: frozenset[str] = frozenset()
    auth_error_codes: frozenset[str] = frozenset()
    permanent_server_codes: frozenset[str] = frozenset()
    base_cost: Decimal = Decimal(1)
    requests_per_second: float | None = None
    remove_path: str = ""
    balance_path: str = ""
    api_prefix: str = ""
    options: type[OptionSet] | None = None
    result_download: bool = False


def echoed_forms(value: str) -> set[str]:
    """
    ``value`` and the forms a reply may echo it in: JSON-escaped (a string's inside, ``json.dumps``
    without its quotes), that with ``/`` escaped as ``\\/`` (valid JSON; PHP servers write it) and
    percent-encoded (every reserved character, as a query string carries it).

    :param value: a secret as a request carries it.
    """
    escaped = json.dumps(value)[1:-1]
    return {value, escaped, escaped.replace("/", "\\/"), percent_encode(value, safe="")}


class VendorWire(ABC):
    """
    One vendor's wire format, bound to a connection's settings (subclasses set :attr:`spec`).

    :param settings: the connection settings the requests are built for.
    """

    #: what the vendor is (name, defaults, limits, retry policy, error codes, cost)
    spec: ClassVar[VendorSpec]

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request (never logged): the API key in the spec's header."""
        return {self.spec.api_key_header: self.settings.api_key}

    def secrets(self) -> tuple[str, ...]:
        """
        Every form of the connection's secret a request carries, longest first: the API key, each
        :meth:`auth_headers` value and its bare token (Pixian's ``Basic`` token), each also as a reply
        may echo it (:func:`echoed_forms`: JSON-escaped, ``/`` as ``\\/``, percent-encoded). The one
        set the hooks register for masking and :meth:`redact` removes from quoted replies.
        """
        try:
            values = list(self.auth_headers().values())
        except InvalidOptionError:  # no header can be built (a Pixian wire without an API id)
            values = []
        raw = {self.settings.api_key, *values, *(value.rpartition(" ")[2] for value in values)}
        found = {form for value in filter(None, raw) for form in echoed_forms(value)}
        return tuple(sorted(found, key=len, reverse=True))

    @abstractmethod
    def remove_background_request(
        self, image: ImageInput, options: RemovalOptions, vendor_options: VendorOptionsInput = None
    ) -> WireRequest:
        """
        Build the billed remove-background request from the *native* part of the options.

        :param image: the image to send.
        :param options: the native part of the unified options (from ``split_options``).
        :param vendor_options: the vendor's options (typed, a mapping of their fields, or ``None``).
        """

    def check_native(self, options: RemovalOptions, capabilities: VendorCapabilities) -> None:
        """
        Refuse native options beyond ``capabilities`` (a request built without ``split_options``).

        :param options: the options the request is asked to carry natively.
        :param capabilities: what the vendor does natively for this call.
        """
        beyond = {
            "background_color": options.background_color is not None and not capabilities.background_color,
            "crop": options.crop and not capabilities.crop,
            "output_format": options.output_format not in capabilities.output_formats,
            "margin": options.margin is not None,
            "max_size": options.max_size is not None,
        }
        refused = next((name for name, applies in beyond.items() if applies), None)
        if refused is not None:
            raise InvalidOptionError(refused, f"{self.spec.name} cannot do it natively here; plan it locally")

    def endpoint(self, path: str) -> str:
        """
        ``path`` below the base URL, after the spec's ``api_prefix`` unless the base URL ends with it.

        :param path: an endpoint's path (``/remove`` or ``remove``).
        """
        base_path = urlsplit(self.settings.base_url).path.rstrip("/")
        prefix = "" if base_path.endswith(self.spec.api_prefix) else self.spec.api_prefix
        return f"{prefix}/{path.lstrip('/')}"

    def balance_request(self) -> WireRequest:
        """Build the free balance request (``GET`` of the spec's ``balance_path``)."""
        if not self.spec.balance_path:  # a wire without one overrides this method
            raise NotImplementedError(f"{self.spec.name}: no balance endpoint (VendorSpec.balance_path)")
        return WireRequest(
            "GET", self.endpoint(self.spec.balance_path), headers={"Accept": "application/json"}
        )

    @abstractmethod
    def parse_image_reply(self, response: httpx.Response) -> ImageResult | ResultLocation:
        """Read a successful image reply (status 2xx)."""

    @abstractmethod
    def parse_balance(self, response: httpx.Response) -> Balance:
        """Read a successful balance reply."""

    def parse_error(self, response: httpx.Response) -> ErrorReply:
        """
        Reduce an error reply to its facts: the vendor's envelope (:meth:`error_fields`), else the body;
        the request id falls back to ``X-Request-ID``; each of them quoted (:meth:`quote`: redacted).
        A "code" that is the HTTP status again (or a boolean) is no vendor code: it is a gateway's or
        proxy's body (Google-style ``{"error": {"code": 504, ...}}``), and a gateway timeout must stay
        one (possibly billed: the hooks ask the retry guard), not read as the vendor's failed answer.

        :param response: the error reply.
        """
        body = json_body(response)
        fields = self.error_fields(body, response) if isinstance(body, dict) else None
        quoted = self.text_excerpt(response) or response.reason_phrase or f"HTTP {response.status_code}"
        code, message, request_id = fields or (None, quoted, None)
        if isinstance(code, bool) or str(code).strip() == str(response.status_code):
            code = None  # the status echoed (a gateway's {"error": {"code": 504, ...}}): no vendor code
        return ErrorReply(
            code=self._quoted(code),
            message=self.redact(message),
            request_id=self._quoted(request_id) or self._quoted(response.headers.get("x-request-id")),
        )

    def _quoted(self, value: Any) -> str | None:
        """A code or request id from a reply as a message quotes it (:meth:`quote`); ``None`` when empty."""
        return None if value in (None, "") else self.quote(str(value)) or None

    def error_fields(self, body: dict[str, Any], response: httpx.Response) -> tuple[Any, str, Any] | None:
        """
        The vendor's error code, message and request id in a JSON error body (``None``: not its envelope).

        :param body: the reply's JSON object.
        :param response: the error reply.
        """
        return None

    def redact(self, text: str) -> str:
        """
        ``text`` with each of the connection's :meth:`secrets` (of 4 characters or more) replaced by
        ``***``, should a reply echo the key or a request header.

        :param text: a message from the vendor.
        """
        for secret in self.secrets():
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    @classmethod
    def coerce_options(cls, vendor_options: VendorOptionsInput) -> VendorOptionsInput:
        """
        The vendor options as the spec's ``options`` model (typed options are returned as they are).

        :param vendor_options: the vendor options as the user gave them.
        """
        model = cls.spec.options
        return vendor_options if model is None else model.coerce(vendor_options)

    @classmethod
    def check_call(
        cls, options: RemovalOptions, vendor_options: VendorOptionsInput, *, image_url: str | None = None
    ) -> VendorOptionsInput:
        """
        Validate a call before any I/O and return the typed vendor options.

        :param options: the unified options.
        :param vendor_options: the vendor options as the user gave them.
        :param image_url: the URL input, when the call uses one.
        """
        if image_url is not None and cls.spec.no_url_input:
            raise InvalidOptionError("image_url", cls.spec.no_url_input)
        return cls.coerce_options(vendor_options)

    def capabilities_for(self, vendor_options: VendorOptionsInput = None) -> VendorCapabilities:
        """
        What the vendor does natively for a call with these vendor options (default: the spec's).

        :param vendor_options: the call's vendor options.
        """
        return self.spec.capabilities

    def finish_result(
        self, result: ImageResult, image: ImageInput, vendor_options: VendorOptionsInput = None
    ) -> ImageResult:
        """
        Vendor-specific decoding of a result before local post-processing (default: none).

        :param result: the parsed reply.
        :param image: the input exactly as it was sent.
        :param vendor_options: the call's vendor options.
        """
        return result

    @classmethod
    def estimate_cost(cls, vendor_options: VendorOptionsInput = None) -> Decimal:
        """
        Credits one remove-background call is expected to cost (default: the spec's ``base_cost``).

        :param vendor_options: the vendor options.
        """
        cls.coerce_options(vendor_options)
        return cls.spec.base_cost

    def error_type(self, status: int, code: str | None, message: str) -> type[BgRemovalError]:
        """
        Which error an error reply is: the first rule that applies (the code tables are the spec's).

        :param status: the HTTP status.
        :param code: the vendor's error code, if any.
        :param message: the vendor's message (vendors that document no codes read it).
        """
        spec, server_error = self.spec, status >= 500
        rules: tuple[tuple[bool, type[BgRemovalError]], ...] = (
            (code in spec.credit_error_codes or status == 402, OutOfCreditsError),
            (code in spec.auth_error_codes or status in (401, 403), VendorAuthError),
            (status == 429, RateLimitedError),
            (server_error and code in spec.permanent_server_codes, InputRejectedError),
            (server_error or status == 408, TransientVendorError),
            (code in spec.input_error_codes or status in (413, 415, 422), InputRejectedError),
        )
        return next((kind for applies, kind in rules if applies), VendorRequestError)

    def error_from_reply(self, response: httpx.Response) -> BgRemovalError:
        """
        Map an error reply to the provider's exception hierarchy (:meth:`error_type`; a 3xx:
        :meth:`redirect_error`).

        :param response: the error reply.
        """
        if 300 <= response.status_code < 400:
            return self.redirect_error(response)
        reply = self.parse_error(response)
        message = reply.message or response.reason_phrase or "no message"
        kind = self.error_type(response.status_code, reply.code, message)
        kwargs: dict[str, Any] = {
            "vendor": self.spec.name,
            "status_code": response.status_code,
            "code": reply.code,
            "request_id": reply.request_id,
        }
        if kind is RateLimitedError:
            kwargs["retry_after"] = parse_retry_after(response.headers.get("retry-after"))
        return kind(message, **kwargs)

    def redirect_error(self, response: httpx.Response) -> VendorRequestError:
        """
        A 3xx answer to an API call (an ``http://`` host redirected to ``https://``, a misrouted proxy):
        API calls are not redirected, so the vendor never saw the request; unbilled, not retried.

        :param response: the 3xx reply.
        """
        location = response.headers.get("location", "")
        target = f" to {self.quote(shown_url(location), 200) or 'an unreadable Location'}" if location else ""
        return VendorRequestError(
            f"the API answered {response.status_code} {response.reason_phrase}, redirecting{target}; API "
            "calls are not redirected: set the connection's host to the address the API answers on",
            vendor=self.spec.name,
            status_code=response.status_code,
            code="redirect",
            request_id=self._quoted(response.headers.get("x-request-id")),
        )

    def invalid_reply(
        self,
        message: str,
        response: httpx.Response | None = None,
        *,
        possibly_charged: bool = True,
        **details: Any,
    ) -> InvalidVendorResponseError:
        """
        The error for a success reply that cannot be used.

        :param message: what is wrong with it.
        :param response: the reply, when its status belongs in the error.
        :param possibly_charged: False for free calls (balances, test calls).
        :param details: other fields of the error (``code``, ``request_id``).
        """
        if response is not None:
            details.setdefault("status_code", response.status_code)
        return InvalidVendorResponseError(
            message, vendor=self.spec.name, possibly_charged=possibly_charged, **details
        )

    def balance_numbers(
        self, response: httpx.Response, *keys: str, request_id: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Decimal]]:
        """
        The JSON object of a balance (or account) reply and its members ``keys`` as numbers; an
        :class:`InvalidVendorResponseError` when it is no object or one of them is not a number.

        :param response: the 2xx reply.
        :param keys: the members that must be numbers.
        :param request_id: the vendor's request id, for the error.
        """
        body = json_body(response)
        if not isinstance(body, dict):
            problem = f"is not a JSON object: {self.text_excerpt(response)!r}"
        else:
            numbers = {key: parse_decimal(body.get(key)) for key in keys}
            missing = [key for key, number in numbers.items() if number is None]
            if not missing:
                return body, cast(dict[str, Decimal], numbers)
            shown = self.quote(repr(body[missing[0]]), 60) if missing[0] in body else "missing"
            problem = f"has no numeric {missing[0]} ({shown})"
        raise self.invalid_reply(
            f"{self.spec.name}'s balance reply {problem}",
            response,
            possibly_charged=False,
            request_id=request_id,
        )

    def balance(
        self, remaining: Decimal, state: AccountState = AccountState.ACTIVE, **fields: Any
    ) -> Balance:
        """
        This vendor's :class:`Balance`, a negative ``remaining`` read as 0 (:func:`credits_left`).

        :param remaining: the credits the vendor reports.
        :param state: the account's state.
        :param fields: the other fields of the balance (``credit_pack``, ``raw``).
        """
        return Balance(vendor=self.spec.name, remaining=credits_left(remaining), state=state, **fields)

    def quote(self, text: str, limit: int = 300) -> str:
        """
        ``text`` as an error message may quote it: :meth:`redact` of the whole text first (a secret
        straddling the cut would leave its prefix), then :func:`safe_excerpt` (one line, ``limit``).

        :param text: what the vendor sent (a body, an error message, a header).
        :param limit: the most characters shown.
        """
        return safe_excerpt(self.redact(text), limit)

    def text_excerpt(self, response: httpx.Response) -> str:
        """
        A reply's body as an error message may quote it (:meth:`quote` of its text).

        :param response: the reply.
        """
        return self.quote(response.content.decode("utf-8", errors="replace"))
