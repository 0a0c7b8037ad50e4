"""Fault injection observed over real sockets, as a client would see a misbehaving server; and the
ledger's arithmetic under concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import httpx
import pytest
from PIL import UnidentifiedImageError
from sandbox_helpers import decode

from airflow_provider_bgremoval.sandbox import RunningSandbox

PC = {"X-API-KEY": "sk_sandbox_pixelcut_key", "Accept": "image/*"}
POOF = {"x-api-key": "pk_sandbox_poof_key"}
PIXIAN = ("px_sandbox_id", "px_sandbox_secret")


def pixelcut(client: httpx.Client, image: bytes) -> httpx.Response:
    return client.post("/v1/remove-background", headers=PC, files={"image": ("p.png", image, "image/png")})


def poof(client: httpx.Client, image: bytes) -> httpx.Response:
    return client.post("/v1/remove", headers=POOF, files={"image_file": ("p.png", image, "image/png")})


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


# -- 5xx, determinism -----------------------------------------------------------------------------


def _statuses(sandbox: RunningSandbox, client: httpx.Client, image: bytes, n: int) -> list[int]:
    sandbox.admin.set_faults("poof", error_rate=0.3, error_statuses=[500, 502, 503], seed=42)
    return [poof(client, image).status_code for _ in range(n)]


def test_error_rate_is_seeded_and_reproducible(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes
) -> None:
    first = _statuses(sandbox, client, small_png, 30)
    second = _statuses(sandbox, client, small_png, 30)
    assert first == second
    assert {s for s in first if s != 200} <= {500, 502, 503}
    assert 3 <= first.count(200) <= 27
    assert sandbox.admin.total_charged("poof") == first.count(200) * 2


def test_error_envelopes_per_vendor(client: httpx.Client, sandbox: RunningSandbox, small_png: bytes) -> None:
    sandbox.admin.set_faults("poof", fault="error", requests=[1, 2], statuses=[500])
    r = poof(client, small_png)
    assert r.status_code == 500
    assert r.json()["code"] == "internal_server_error"
    assert poof(client, small_png).status_code == 500
    assert poof(client, small_png).status_code == 200
    sandbox.admin.fail_next("poof", 1, status=503)
    r = poof(client, small_png)
    assert r.status_code == 503
    assert r.json()["code"] == "upstream_error"
    assert r.headers["X-Request-ID"]
    sandbox.admin.fail_next("pixelcut", 1, status=502)
    r = pixelcut(client, small_png)
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/plain")
    sandbox.admin.fail_next("pixian", 1, status=500)
    r = client.post("/api/v2/remove-background", auth=PIXIAN, files={"image": ("p.png", small_png)})
    assert r.status_code == 500
    assert r.json()["error"]["status"] == 500
    assert [e["fault"] for e in sandbox.admin.requests() if e["fault"]] == ["error"] * 5
    assert sandbox.admin.total_charged() == 1


# -- rate limits ----------------------------------------------------------------------------------


def test_rps_limit_429_with_and_without_retry_after(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes
) -> None:
    sandbox.admin.set_faults("pixelcut", rate_limit_rps=2)
    codes = [pixelcut(client, small_png).status_code for _ in range(4)]
    assert codes[:2] == [200, 200]
    assert 429 in codes[2:]
    limited = next(r for r in (pixelcut(client, small_png),) if r.status_code == 429)
    assert "retry-after" not in limited.headers
    assert limited.json()["error_code"] == "rate_limit_exceeded"
    sandbox.admin.set_faults("poof", rate_limit_rps=1, retry_after=2)
    poof(client, small_png)
    r = poof(client, small_png)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "2"
    assert r.json()["code"] == "rate_limit_exceeded"
    sandbox.admin.advance_clock(1.5)  # the window is measured on the sandbox clock
    assert poof(client, small_png).status_code == 200


@pytest.mark.parametrize(("retry_after", "header"), [(1234567, "1234567"), (1e6, "1000000"), (0.25, "1")])
def test_retry_after_is_sent_as_whole_seconds(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes, retry_after: float, header: str
) -> None:
    # delta-seconds (RFC 9110), never an exponent ("1e+06") nor a fraction, on every vendor
    for vendor in ("pixelcut", "pixian", "poof"):
        sandbox.admin.set_faults(vendor, fault="rate_limited", next=1, retry_after=retry_after)
    pixian = client.post("/api/v2/remove-background", auth=PIXIAN, files={"image": ("p.png", small_png)})
    for r in (pixelcut(client, small_png), pixian, poof(client, small_png)):
        assert (r.status_code, r.headers["Retry-After"]) == (429, header)


def test_retry_after_as_an_http_date(client: httpx.Client, sandbox: RunningSandbox, small_png: bytes) -> None:
    before = time.time()
    sandbox.admin.set_faults(
        "poof", fault="rate_limited", next=1, retry_after=30, retry_after_format="http-date"
    )
    r = poof(client, small_png)
    assert r.status_code == 429
    assert before + 30 <= parsedate_to_datetime(r.headers["Retry-After"]).timestamp() <= time.time() + 31


async def test_max_concurrency_and_latency_overlap(sandbox: RunningSandbox, small_png: bytes) -> None:
    sandbox.admin.set_faults("poof", latency_ms=300, max_concurrency=4)
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=10) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                client.post("/v1/remove", headers=POOF, files={"image_file": ("p.png", small_png)})
                for _ in range(8)
            )
        )
        elapsed = time.perf_counter() - started
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 4 + [429] * 4
    assert elapsed < 1.2  # the four admitted requests slept concurrently (asyncio.sleep latency)


async def test_latency_with_jitter_is_non_blocking(sandbox: RunningSandbox, small_png: bytes) -> None:
    sandbox.admin.set_faults("pixian", latency_ms=200, jitter_ms=50)
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=10) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                client.post("/api/v2/remove-background", auth=PIXIAN, files={"image": ("p.png", small_png)})
                for _ in range(16)
            )
        )
        elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 for r in results)
    assert 0.2 <= elapsed < 1.5
    durations = [e["duration_ms"] for e in sandbox.admin.requests("pixian")]
    assert min(durations) >= 200


# -- connection-level faults ----------------------------------------------------------------------


def test_slow_response_times_out_and_is_not_charged(sandbox: RunningSandbox, small_png: bytes) -> None:
    sandbox.admin.set_faults("poof", fault="slow", next=1, slow_seconds=30)
    with (
        httpx.Client(base_url=sandbox.url, timeout=httpx.Timeout(5, read=0.3)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        poof(client, small_png)
    wait_for(lambda: any(e["fault"] == "slow (client gave up)" for e in sandbox.admin.requests("poof")))
    assert sandbox.admin.total_charged() == 0


def test_slow_response_completes_for_a_patient_client(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes
) -> None:
    sandbox.admin.set_faults("poof", fault="slow", next=1, slow_seconds=0.3)
    started = time.perf_counter()
    assert poof(client, small_png).status_code == 200
    assert time.perf_counter() - started >= 0.3


def test_drop_before_headers(client: httpx.Client, sandbox: RunningSandbox, small_png: bytes) -> None:
    sandbox.admin.set_faults("pixelcut", fault="drop_before_headers", next=1)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
        pixelcut(client, small_png)
    assert pixelcut(client, small_png).status_code == 200
    assert sandbox.admin.total_charged() == 1


def test_drop_after_processing_still_charges(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes
) -> None:
    sandbox.admin.set_faults("poof", fault="drop_after_processing", next=1)
    with pytest.raises(httpx.RemoteProtocolError):
        poof(client, small_png)
    assert sandbox.admin.total_charged("poof") == 1  # the vendor billed, the client got nothing


def test_drop_mid_body(client: httpx.Client, sandbox: RunningSandbox, small_png: bytes) -> None:
    sandbox.admin.set_faults("pixelcut", fault="drop_mid_body", next=1)
    with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|peer closed"):
        pixelcut(client, small_png)
    with client.stream(
        "POST", "/v1/remove-background", headers=PC, files={"image": ("p.png", small_png)}
    ) as ok:
        assert ok.status_code == 200


def test_drop_mid_body_headers_arrive_first(sandbox: RunningSandbox, small_png: bytes) -> None:
    sandbox.admin.set_faults("poof", fault="drop_mid_body", next=1)
    with (
        httpx.Client(base_url=sandbox.url) as client,
        client.stream("POST", "/v1/remove", headers=POOF, files={"image_file": ("p.png", small_png)}) as r,
    ):
        assert r.status_code == 200
        assert int(r.headers["content-length"]) > 0
        with pytest.raises(httpx.RemoteProtocolError):
            r.read()


@pytest.mark.parametrize("fault", ["truncated_body", "non_image_body", "empty_body"])
def test_damaged_bodies_arrive_as_200(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes, fault: str
) -> None:
    sandbox.admin.set_faults("poof", fault=fault, next=1)
    r = poof(client, small_png)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert int(r.headers["content-length"]) == len(r.content)
    if fault == "empty_body":
        assert r.content == b""
    with pytest.raises((UnidentifiedImageError, OSError, SyntaxError)):
        decode(r.content)


def test_auth_revoked_and_account_endpoint_faults(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes
) -> None:
    sandbox.admin.set_faults("pixelcut", auth_revoked=True)
    assert pixelcut(client, small_png).status_code == 401
    assert client.get("/v1/credits", headers=PC).status_code == 401
    sandbox.admin.set_faults("pixelcut", fault="error", next=1, status=503, apply_to=["account"])
    assert client.get("/v1/credits", headers=PC).status_code == 503
    assert pixelcut(client, small_png).status_code == 200  # process calls unaffected
    sandbox.admin.clear_faults()
    assert client.get("/v1/credits", headers=PC).json() == {"credits_remaining": 999}


# -- outages over a window of the sandbox clock ---------------------------------------------------


def test_an_outage_for_20_seconds_ends_by_itself_on_the_sandbox_clock(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes
) -> None:
    admin = sandbox.admin
    rule = admin.outage("poof", 20)["rules"][0]
    assert (rule["until_s"], rule["statuses"], rule["active"]) == (20, [503], True)
    assert [poof(client, small_png).status_code for _ in range(3)] == [503, 503, 503]
    assert client.get("/v1/me", headers=POOF).status_code == 200  # balance endpoint untouched
    admin.advance_clock(19.0)
    assert poof(client, small_png).status_code == 503
    admin.advance_clock(1.0)  # the window has closed: the vendor has recovered by itself
    assert [poof(client, small_png).status_code for _ in range(2)] == [200, 200]
    assert admin.state()["faults"]["poof"]["rules"][0]["active"] is False
    assert admin.total_charged("poof") == 2  # failures are free
    log = [r for r in admin.requests("poof") if r["kind"] == "process"]
    assert [(r["status"], r["fault"]) for r in log] == [(503, "error")] * 4 + [(200, None)] * 2
    clocks = [r["clock"] for r in log]
    assert clocks == sorted(clocks) and clocks[-1] - clocks[0] >= 20  # logged in sandbox time


def test_an_outage_later_and_of_every_endpoint(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes
) -> None:
    admin = sandbox.admin
    admin.outage("pixian", 30, after=10, status=502, apply_to="all")
    account = ("/api/v2/account", PIXIAN)
    assert client.get(account[0], auth=account[1]).status_code == 200
    admin.advance_clock(10)
    assert client.get(account[0], auth=account[1]).status_code == 502
    files = {"image": ("p.png", small_png)}
    assert client.post("/api/v2/remove-background", auth=PIXIAN, files=files).status_code == 502
    assert poof(client, small_png).status_code == 200  # one vendor's outage only
    admin.advance_clock(30)
    assert client.post("/api/v2/remove-background", auth=PIXIAN, files=files).status_code == 200
    admin.outage("pixian", None)  # until cleared
    admin.advance_clock(10 * 86400)
    assert client.get(account[0], auth=account[1]).status_code == 200
    assert client.post("/api/v2/remove-background", auth=PIXIAN, files=files).status_code == 503
    admin.clear_faults("pixian")
    assert client.post("/api/v2/remove-background", auth=PIXIAN, files=files).status_code == 200


def test_bad_fault_settings_are_rejected(sandbox: RunningSandbox) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        sandbox.admin.set_faults("poof", fault="explode")
    with pytest.raises(ValueError, match="unknown fault settings"):
        sandbox.admin.set_faults("poof", latency=3)
    with pytest.raises(ValueError, match="vendor"):
        sandbox.admin.set_faults("acme", latency_ms=3)
    with pytest.raises(ValueError, match=r"until_s \(5.0\) must be after from_s \(5.0\)"):
        sandbox.admin.outage("poof", 0, after=5)


# -- ledger ---------------------------------------------------------------------------------------


async def test_fifty_concurrent_requests_exact_arithmetic(sandbox: RunningSandbox, small_png: bytes) -> None:
    sandbox.admin.set_balance("pixelcut", 30)
    sandbox.admin.set_balance("poof", 17)
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=30) as client:
        pc = [
            client.post("/v1/remove-background", headers=PC, files={"image": ("p.png", small_png)})
            for _ in range(50)
        ]
        pf = [
            client.post("/v1/remove", headers=POOF, files={"image_file": ("p.png", small_png)})
            for _ in range(50)
        ]
        results = await asyncio.gather(*pc, *pf)
    pc_codes = [r.status_code for r in results[:50]]
    pf_codes = [r.status_code for r in results[50:]]
    assert pc_codes.count(200) == 30
    assert pc_codes.count(403) == 20
    assert pf_codes.count(200) == 17
    assert pf_codes.count(402) == 33
    assert sandbox.admin.get_balance("pixelcut") == 0
    assert sandbox.admin.get_balance("poof") == 0
    assert len(sandbox.admin.charges("pixelcut")) == 30
    assert sandbox.admin.total_charged() == 47
    ids = {c["request_id"] for c in sandbox.admin.charges("poof")}
    assert ids == {r.headers["X-Request-ID"] for r in results[50:] if r.status_code == 200}


async def test_fractional_pixian_costs_under_concurrency(sandbox: RunningSandbox, small_png: bytes) -> None:
    sandbox.admin.settings(costs={"pixian_per_image": 0.25})
    sandbox.admin.set_balance("pixian", 10)
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=30) as client:
        results = await asyncio.gather(
            *(
                client.post("/api/v2/remove-background", auth=PIXIAN, files={"image": ("p.png", small_png)})
                for _ in range(50)
            )
        )
    codes = [r.status_code for r in results]
    assert codes.count(200) == 40
    assert codes.count(402) == 10
    assert sandbox.admin.get_balance("pixian") == 0
    assert sandbox.admin.total_charged("pixian") == 10


def test_failures_are_free_and_exhaust_after(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes
) -> None:
    assert (
        client.post("/v1/remove-background", headers=PC, files={"image": ("p.png", b"junk")}).status_code
        == 400
    )
    assert sandbox.admin.total_charged() == 0
    sandbox.admin.set_faults("pixelcut", exhaust_after=2)
    assert [pixelcut(client, small_png).status_code for _ in range(3)] == [200, 200, 403]
    assert sandbox.admin.get_balance("pixelcut") == 0


def test_request_log_has_fingerprints_not_secrets(
    client: httpx.Client, sandbox: RunningSandbox, small_png: bytes
) -> None:
    pixelcut(client, small_png)
    client.post("/api/v2/remove-background", auth=PIXIAN, files={"image": ("p.png", small_png)})
    dump = str(sandbox.admin.requests()) + str(sandbox.admin.charges()) + str(sandbox.admin.state())
    for secret in ("sk_sandbox_pixelcut_key", "px_sandbox_secret", "pk_sandbox_poof_key"):
        assert secret not in dump
    entries = sandbox.admin.requests()
    assert [e["vendor"] for e in entries] == ["pixelcut", "pixian"]
    assert all(e["key"].startswith("fp_") and e["status"] == 200 for e in entries)
    assert sandbox.admin.requests(limit=1)[0]["vendor"] == "pixian"


# -- spend over simulated days --------------------------------------------------------------------


def test_spend_over_simulated_days_as_every_vendor_reports_it(
    sandbox: RunningSandbox, client: httpx.Client
) -> None:
    admin = sandbox.admin
    admin.set_balance("poof", 600)
    assert admin.set_spend("poof", 50)["spend_per_day"] == 50
    admin.set_balance("pixian", 10)
    admin.set_spend("pixian", 2.5)
    admin.advance_clock(86400)
    assert admin.get_balance("poof") == 550
    me = client.get("/v1/me", headers=POOF).json()
    assert me["maxCredits"] - me["usedCredits"] == 550
    admin.advance_clock(2 * 86400)
    assert admin.get_balance("pixian") == 2.5
    admin.set_balance("poof", 700)  # a top-up: the drain goes on from the new balance
    admin.advance_clock(43200)
    assert admin.get_balance("poof") == 700  # whole days only
    admin.advance_clock(43200)
    assert admin.get_balance("poof") == 650
    admin.advance_clock(100 * 86400)
    assert admin.get_balance("poof") == 0  # never below 0
    assert admin.charges() == []  # the drain is no charge
    admin.set_spend("poof", 0)
    admin.set_balance("poof", 5)
    admin.advance_clock(86400)
    assert admin.get_balance("poof") == 5
    with pytest.raises(ValueError, match="credits_per_day"):
        admin.set_spend("poof", -1)
    with pytest.raises(ValueError, match="unknown poof key"):
        admin.set_spend("poof", 1, key="pk_nobody")
