"""What every vendor wire format shares: header numbers, the error-mapping table, option handling."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

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
)
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.vendors.base import (
    MAX_RETRY_AFTER,
    ConnectionSettings,
    ImageInput,
    VendorWire,
    parse_charge,
    parse_number,
    parse_retry_after,
)
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutOptions, PixelcutWire
from airflow_provider_bgremoval.vendors.pixian import PixianOptions, PixianWire
from airflow_provider_bgremoval.vendors.poof import PoofOptions, PoofWire


@pytest.mark.parametrize(
    ("value", "as_int", "as_float"),
    [(None, None, None), (" 42 ", 42, 42.0), ("0.75", None, 0.75), ("n/a", None, None), ("", None, None)],
)
def test_header_numbers(value: str | None, as_int: int | None, as_float: float | None) -> None:
    assert parse_number(value, int) == as_int
    assert parse_number(value, float) == as_float


def poof_wire() -> PoofWire:
    return PoofWire(ConnectionSettings(base_url=PoofWire.spec.default_base_url, api_key="pk_base_test_key"))


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (402, None, OutOfCreditsError),
        (400, "payment_required", OutOfCreditsError),  # a credit code wins over any status
        (401, None, VendorAuthError),
        (500, "authentication_error", VendorAuthError),
        (403, None, VendorAuthError),
        (429, None, RateLimitedError),
        (408, None, TransientVendorError),
        (503, None, TransientVendorError),
        (500, "processing_failed", InputRejectedError),  # deterministic for the input
        (422, None, InputRejectedError),
        (400, "invalid_image", InputRejectedError),
        (400, None, VendorRequestError),
        (404, "not_found", VendorRequestError),
    ],
)
def test_error_type_is_the_first_rule_that_applies(
    status: int, code: str | None, expected: type[BgRemovalError]
) -> None:
    assert poof_wire().error_type(status, code, "message") is expected


def test_error_from_reply_carries_the_facts_and_retry_after() -> None:
    reply = httpx.Response(
        429,
        json={"code": "rate_limited", "message": "slow down", "request_id": "req-9"},
        headers={"retry-after": "7"},
    )
    error = poof_wire().error_from_reply(reply)
    assert isinstance(error, RateLimitedError)
    assert (error.retry_after, error.status_code, error.code, error.request_id) == (
        7.0,
        429,
        "rate_limited",
        "req-9",
    )
    transient = poof_wire().error_from_reply(httpx.Response(502, text="<h1>Bad Gateway</h1>"))
    assert isinstance(transient, TransientVendorError)
    assert transient.possibly_charged is False


@pytest.mark.parametrize(
    ("wire", "options"),
    [(PixelcutWire, PixelcutOptions), (PixianWire, PixianOptions), (PoofWire, PoofOptions)],
)
def test_each_wire_coerces_its_own_options_once(wire: type[VendorWire], options: type) -> None:
    typed = options()
    assert wire.coerce_options(typed) is typed  # already typed: passed through, not re-validated
    assert wire.coerce_options(None) == typed
    assert wire.check_call(RemovalOptions(), None) == typed
    with pytest.raises(InvalidOptionError):
        wire.coerce_options({"no_such_option": 1})
    others = [o() for o in (PixelcutOptions, PixianOptions, PoofOptions) if o is not options]
    for other in others:  # another vendor's options are not these
        with pytest.raises(InvalidOptionError) as info:
            wire.coerce_options(other)
        assert info.value.parameter == "vendor_options"


def test_default_cost_validates_the_options() -> None:
    assert PoofWire.estimate_cost({"size": "small"}) == Decimal(1)
    with pytest.raises(InvalidOptionError) as info:
        PoofWire.estimate_cost({"size": "hd"})
    assert info.value.parameter == "size"


@pytest.mark.parametrize(
    ("value", "charge"),
    [(None, None), ("", None), ("1", Decimal(1)), (" 0.25 ", Decimal("0.25")), ("0", Decimal(0))]
    + [(bad, None) for bad in ("-1", "-0.5", "NaN", "Infinity", "-Infinity", "one")],
)
def test_credit_headers(value: str | None, charge: Decimal | None) -> None:
    assert parse_charge(value) == charge


@pytest.mark.parametrize("value", ["-0", "-0.0", " -0 "])
def test_a_charge_of_minus_zero_is_recorded_as_zero(value: str) -> None:
    charge = parse_charge(value)
    assert charge == 0 and not charge.is_signed(), charge


def test_text_excerpt_is_one_short_line() -> None:
    body = "<html>\n<body>" + "x" * 1000 + "</body></html>"
    wire = PoofWire(ConnectionSettings(base_url="https://api.test", api_key="sk_test"))
    excerpt = wire.text_excerpt(httpx.Response(500, content=body.encode() + b"\xff"))
    assert "\n" not in excerpt
    assert len(excerpt) <= 300
    assert excerpt.startswith("<html> <body>x")


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        (RemovalOptions(output_format="webp"), "output_format"),
        (RemovalOptions(background_color="#ffffff"), "background_color"),
        (RemovalOptions.create(max_size=10), "max_size"),
    ],
)
def test_a_hand_built_request_beyond_the_capabilities_is_refused(
    options: RemovalOptions, parameter: str
) -> None:
    wire = PixelcutWire(ConnectionSettings(base_url=PixelcutWire.spec.default_base_url, api_key="sk_test"))
    with pytest.raises(InvalidOptionError) as info:
        wire.remove_background_request(ImageInput(data=b"x"), options)
    assert info.value.parameter == parameter


@pytest.mark.parametrize("wire_class", [PixelcutWire, PixianWire, PoofWire])
def test_every_vendor_redacts_an_echoed_key_and_reads_the_request_id_header(
    wire_class: type[VendorWire],
) -> None:
    key = "sk_secret_0123456789"
    wire = wire_class(ConnectionSettings(base_url="https://api.test", api_key=key, api_id="id"))
    reply = wire.parse_error(httpx.Response(500, text=f"bad key {key}", headers={"x-request-id": "req-7"}))
    assert key not in reply.message
    assert "***" in reply.message
    assert reply.request_id == "req-7"


@pytest.mark.parametrize(
    ("wire_class", "envelope"),
    [
        (PixelcutWire, lambda key: {"error": "no", "error_code": f"bad_{key}"}),
        (PixianWire, lambda key: {"error": {"code": f"bad_{key}", "message": "no"}}),
        (PoofWire, lambda key: {"code": f"bad_{key}", "message": "no", "request_id": f"req {key}"}),
    ],
)
def test_every_vendor_redacts_its_error_code_and_request_id(
    wire_class: type[VendorWire], envelope: Any
) -> None:
    """A reply echoing the key in its code or request id (body or X-Request-ID) never carries it on."""
    key = "sk_secret_0123456789"
    wire = wire_class(ConnectionSettings(base_url="https://api.test", api_key=key, api_id="id"))
    reply = wire.parse_error(httpx.Response(400, json=envelope(key), headers={"x-request-id": f"req {key}"}))
    assert (reply.code, reply.request_id) == ("bad_***", "req ***")
    plain = wire.parse_error(httpx.Response(500, text="down", headers={"x-request-id": f" id\n{key} "}))
    assert (plain.code, plain.request_id) == (None, "id ***")  # quoted as a message is: one line


@pytest.mark.parametrize("wire_class", [PixelcutWire, PixianWire, PoofWire])
def test_every_vendor_redacts_each_auth_header_and_its_bare_token(wire_class: type[VendorWire]) -> None:
    wire = wire_class(
        ConnectionSettings(base_url="https://api.test", api_key="sk_secret_0123", api_id="id_9")
    )
    echoed = " ".join(f"{name}: {value}" for name, value in wire.auth_headers().items())
    bare = [value.rpartition(" ")[2] for value in wire.auth_headers().values()]
    reply = wire.parse_error(httpx.Response(400, text=f"you sent {echoed} ({' '.join(bare)})"))
    for secret in wire.secrets():
        assert secret not in reply.message
    assert set(wire.secrets()) >= {"sk_secret_0123", *wire.auth_headers().values(), *bare}


CUT_KEY = "sk_secret_0123456789"


def _at_the_cut(limit: int, filler: str = "x") -> str:
    """A text whose key straddles a ``limit``-character excerpt's cut."""
    return filler * (limit - 8) + CUT_KEY + " and the rest of the page"


#: each vendor's error envelope around a message
ENVELOPES: dict[type[VendorWire], Any] = {
    PixelcutWire: lambda text: {"error": text, "error_code": "invalid_parameter"},
    PixianWire: lambda text: {"error": {"code": 1000, "message": text}},
    PoofWire: lambda text: {"code": "validation_error", "message": text, "details": _at_the_cut(200, "y")},
}


@pytest.mark.parametrize("wire_class", [PixelcutWire, PixianWire, PoofWire])
@pytest.mark.parametrize("form", ["text", "envelope"])
def test_a_key_straddling_the_excerpts_cut_is_redacted_whole(wire_class: type[VendorWire], form: str) -> None:
    wire = wire_class(ConnectionSettings(base_url="https://api.test", api_key=CUT_KEY, api_id="id_9"))
    text = _at_the_cut(300)
    reply = (
        httpx.Response(400, text=text)
        if form == "text"
        else httpx.Response(400, json=ENVELOPES[wire_class](text))
    )
    error = wire.error_from_reply(reply)
    assert CUT_KEY[:6] not in error.message, error.message
    assert "***" in error.message


@pytest.mark.parametrize("wire_class", [PixelcutWire, PixianWire, PoofWire])
@pytest.mark.parametrize(
    ("status", "headers", "shown"),
    [
        (301, {"location": "https://api.test/v1/x?k=1"}, "redirecting to https://api.test/v1/x;"),
        (307, {"location": f"http://proxy.test/{CUT_KEY}/x"}, "redirecting to http://proxy.test/***/x;"),
        (300, {}, "redirecting;"),
    ],
)
def test_every_vendor_maps_a_3xx_to_an_unbilled_unretried_redirect_error(
    wire_class: type[VendorWire], status: int, headers: dict[str, str], shown: str
) -> None:
    wire = wire_class(ConnectionSettings(base_url="https://api.test", api_key=CUT_KEY, api_id="id_9"))
    error = wire.error_from_reply(httpx.Response(status, headers=headers, text="<html>Moved</html>"))
    assert type(error) is VendorRequestError
    assert (error.code, error.status_code, error.retryable, error.possibly_charged) == (
        "redirect",
        status,
        False,
        False,
    )
    assert shown in error.message


@pytest.mark.parametrize("wire_class", [PixelcutWire, PixianWire, PoofWire])
def test_a_redirects_request_id_is_redacted_like_every_error_replys(wire_class: type[VendorWire]) -> None:
    """A proxy echoing the request's headers into ``X-Request-ID`` must not put the key in the error."""
    wire = wire_class(ConnectionSettings(base_url="https://api.test", api_key=CUT_KEY, api_id="id_9"))
    echoed = {"location": "https://api.test/v1/x", "x-request-id": f"req-{CUT_KEY}-1"}
    error = wire.error_from_reply(httpx.Response(302, headers=echoed))
    assert error.request_id == "req-***-1"
    assert CUT_KEY not in repr(error.as_dict())


def test_a_wire_that_cannot_authenticate_still_redacts_its_key() -> None:
    wire = PixianWire(ConnectionSettings(base_url="https://api.test", api_key="sk_secret_0123"))
    assert wire.secrets() == ("sk_secret_0123",)
    assert wire.redact("key sk_secret_0123") == "key ***"


@pytest.mark.parametrize("wire_class", [PixelcutWire, PixianWire, PoofWire])
def test_a_balance_reply_without_a_number_is_invalid(wire_class: type[VendorWire]) -> None:
    wire = wire_class(ConnectionSettings(base_url="https://api.test", api_key="sk_test", api_id="id"))
    with pytest.raises(InvalidVendorResponseError) as info:
        wire.parse_balance(
            httpx.Response(200, json={"credits_remaining": "x", "credits": "x", "maxCredits": "x"})
        )
    assert info.value.possibly_charged is False


def test_a_wire_whose_spec_names_no_balance_path_refuses_the_balance_request() -> None:
    class NoBalance(PoofWire):
        spec = dataclasses.replace(PoofWire.spec, balance_path="")

    wire = NoBalance(ConnectionSettings(base_url="https://api.test", api_key="sk_test"))
    with pytest.raises(NotImplementedError, match="no balance endpoint"):
        wire.balance_request()
    assert PoofWire(ConnectionSettings(base_url="https://api.test", api_key="k")).balance_request().path == (
        "/v1/me"
    )


#: a key with ``/`` and ``+``; with ``id_9`` its Pixian ``Basic`` token has ``+``, ``/`` and ``=``
ECHOED_KEY = "sk/~~~secret>>>000??"


@pytest.mark.parametrize("wire_class", [PixelcutWire, PixianWire, PoofWire])
@pytest.mark.parametrize("encoding", ["json", "percent"])
def test_a_secret_echoed_json_escaped_or_percent_encoded_is_redacted(
    wire_class: type[VendorWire], encoding: str
) -> None:
    """A PHP server's ``\\/`` JSON escaping or a URL-quoted echo must not carry the key or token on."""
    wire = wire_class(ConnectionSettings(base_url="https://api.test", api_key=ECHOED_KEY, api_id="id_9"))
    raw = [ECHOED_KEY, *(value.rpartition(" ")[2] for value in wire.auth_headers().values())]
    echoed = [
        json.dumps(value)[1:-1].replace("/", "\\/") if encoding == "json" else quote(value, safe="")
        for value in raw
    ]
    assert all(form != value for form, value in zip(echoed, raw, strict=True))
    body = f'[{{"echo": "{" ".join(echoed)}"}}]'  # valid JSON, no vendor's envelope: quoted as it is
    error = wire.error_from_reply(httpx.Response(500, text=body))
    with pytest.raises(BgRemovalError) as info:
        raise error
    shown = f"{info.value} {info.value!r} {info.value.as_dict()!r}"
    for value in raw + echoed:
        assert value not in shown, shown
    assert "***" in info.value.message


@pytest.mark.parametrize(
    ("wire_class", "body"),
    [
        (PixelcutWire, {"credits_remaining": "-0"}),
        (PixelcutWire, {"credits_remaining": -0.0}),
        (PixianWire, {"state": "active", "credits": -0.0}),
        (PixianWire, {"state": "active", "credits": "-0.00"}),
        (PoofWire, {"maxCredits": -0.0, "usedCredits": 0}),
        (PoofWire, {"maxCredits": "-0", "usedCredits": "0"}),
    ],
)
def test_a_balance_of_minus_zero_is_a_plain_zero(wire_class: type[VendorWire], body: dict[str, Any]) -> None:
    """``max(Decimal("-0"), 0)`` is ``-0``: it was kept and shown as "-0 credits"."""
    wire = wire_class(ConnectionSettings(base_url="https://api.test", api_key="sk_test", api_id="id"))
    balance = wire.parse_balance(httpx.Response(200, json=body))
    assert str(balance.remaining) == "0"
    assert balance.as_dict()["remaining"] == "0"
    assert not balance.usable


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), (" 007 ", 7.0), ("0", 0.0), ("1.5", 1.5), ("9" * 400, MAX_RETRY_AFTER)]
    + [
        (bad, None)
        for bad in ("nan", "NaN", "-3", "-0.5", "inf", "Infinity", "1e3", "1_0", "+5", ".5", "soon")
    ],
)
def test_retry_after_delta_seconds(header: str, seconds: float | None) -> None:
    """Only digits are delta-seconds: ``nan`` and ``-3`` read as 0 (a retry at once), ``inf`` as forever."""
    error = poof_wire().error_from_reply(httpx.Response(429, headers={"retry-after": header}))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == seconds
    assert parse_retry_after(header) == seconds


def test_retry_after_http_dates_in_every_rfc_form() -> None:
    soon = datetime.now(timezone.utc) + timedelta(seconds=90)
    for header in (
        format_datetime(soon, usegmt=True),  # IMF-fixdate
        soon.strftime("%A, %d-%b-%y %H:%M:%S GMT"),  # obsolete RFC 850
        soon.strftime("%a %b %d %H:%M:%S %Y"),  # obsolete asctime (no zone: GMT)
    ):
        after = parse_retry_after(header)
        assert after is not None and 80 <= after <= 90, header
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 0.0  # past: go now
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT") == MAX_RETRY_AFTER  # bounded
    assert parse_retry_after("Mon, 01 Jan 2000 25:61:61 GMT") is None


#: gateway and proxy bodies of a 504 (Google-style, flat status echoes)
GATEWAY_TIMEOUT_BODIES = [
    {"error": {"code": 504, "message": "Deadline exceeded", "status": "DEADLINE_EXCEEDED"}},
    {"code": 504, "message": "upstream request timeout"},
    {"code": "504", "message": "Gateway Timeout"},
]


@pytest.mark.parametrize("wire_class", [PixelcutWire, PixianWire, PoofWire])
@pytest.mark.parametrize("body", GATEWAY_TIMEOUT_BODIES)
def test_a_gateway_timeouts_json_body_carries_no_vendor_code(
    wire_class: type[VendorWire], body: dict[str, Any]
) -> None:
    """
    Its code read as the vendor's made a billed call's gateway timeout the vendor's own answer that the
    call failed (unbilled): retried without the retry guard, and not counted as possibly charged.
    """
    from airflow_provider_bgremoval.hooks.base import _lost_reply

    wire = wire_class(ConnectionSettings(base_url="https://api.test", api_key="sk_test", api_id="id"))
    error = wire.error_from_reply(httpx.Response(504, json=body))
    assert isinstance(error, TransientVendorError)
    assert error.code is None
    billed = wire.remove_background_request(
        ImageInput(data=b"x", content_type="image/png"), RemovalOptions(), None
    )
    assert billed.billed and _lost_reply(billed, error)


def test_the_vendors_own_codes_are_kept() -> None:
    pixian = PixianWire(ConnectionSettings(base_url="https://api.test", api_key="sk_test", api_id="id"))
    # Pixian's flat form names its status beside its code; a gRPC-style {"code": 4} is a gateway's
    grpc = pixian.error_from_reply(httpx.Response(504, json={"code": 4, "message": "upstream timeout"}))
    assert grpc.code is None and grpc.message == "upstream timeout"
    nested = {"error": {"status": 400, "code": 1006, "message": "Failed to read the supplied image."}}
    assert pixian.error_from_reply(httpx.Response(400, json=nested)).code == "1006"
    assert pixian.error_from_reply(httpx.Response(400, json=nested["error"])).code == "1006"
    poof = poof_wire().error_from_reply(
        httpx.Response(504, json={"code": "upstream_error", "message": "timed out", "request_id": "req_1"})
    )
    assert (poof.code, poof.request_id) == ("upstream_error", "req_1")
