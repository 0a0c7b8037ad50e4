"""Vendor and network faults: a batch of 50 images per vendor under each fault the sandbox injects.

Each cell runs the real engine with the real hooks over sockets against the sandbox and
fake-gcs-server, asserts the invariants of :func:`tests.faults.matrix.check_cell` (every source
explained, nothing partial, the charge log matching the manifest) and then reruns without faults
(:func:`tests.faults.matrix.check_rerun`: exactly the rest is done and paid for).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal

import pytest

from airflow_provider_bgremoval.retry import RetryPolicy
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutOptions
from tests.faults.conftest import Cell
from tests.faults.matrix import (
    BATCH,
    FAST_POLICY,
    VENDORS,
    check_cell,
    check_rerun,
    dumps,
    make_hook,
    run_batch,
)
from tests.support.connections import SleepRecorder

pytestmark = pytest.mark.integration


def vendors(*default: str) -> list:
    """All three vendors; those not in ``default`` are marked ``slow`` (run by ``-m slow`` / make)."""
    return [v if v in default else pytest.param(v, marks=pytest.mark.slow) for v in VENDORS]


def _requests(cell: Cell, vendor: str, status: int | None = None, fault: str | None = None) -> list[dict]:
    return [
        r
        for r in cell.sandbox.admin.requests(vendor)
        if r["kind"] == "process"
        and (status is None or r["status"] == status)
        and (fault is None or r["fault"] == fault)
    ]


async def _rerun_clean(cell: Cell, vendor: str, first, **kwargs):
    cell.sandbox.admin.clear_faults(vendor)
    rerun = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, **kwargs)
    check_cell(rerun, cell.storage, cell.dst, total=BATCH)
    check_rerun(first, rerun, total=BATCH)
    return rerun


# -- 429 storms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("vendor", VENDORS)
async def test_429_storm_with_retry_after_real_policy_time_travel(cell: Cell, vendor: str) -> None:
    """35 % of calls answer 429 with ``Retry-After: 2``: the real policy waits exactly 2 s each time."""
    cell.connections(max_retries=10)
    cell.sandbox.admin.set_faults(vendor, fault="rate_limited", rate=0.35, retry_after=2, seed=7)
    sleeper = SleepRecorder()
    hook = make_hook(vendor, retry_policy=None, async_sleep=sleeper.asleep)
    run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, hook=hook)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["done"] == BATCH
    storms = _requests(cell, vendor, status=429)
    assert len(storms) >= 10
    assert sleeper.waits == [2.0] * len(storms)  # one wait per 429, as long as the vendor asked
    assert run.charged == BATCH and run.possibly_charged == 0
    await _rerun_clean(cell, vendor, run)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_429_storm_without_retry_after_real_policy_time_travel(cell: Cell, vendor: str) -> None:
    """
    429s without ``Retry-After``: Pixian waits 5 s, 10 s, 15 s… for consecutive 429s of one call
    (its documented linear rule); Pixelcut and Poof back off exponentially with jitter.
    """
    cell.connections(max_retries=10)
    cell.sandbox.admin.set_faults(vendor, fault="rate_limited", rate=0.35, seed=11)
    sleeper = SleepRecorder()
    hook = make_hook(vendor, retry_policy=None, async_sleep=sleeper.asleep)
    policy = hook.wire_class.spec.retry_policy
    run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, hook=hook)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["done"] == BATCH
    storms = _requests(cell, vendor, status=429)
    assert len(sleeper.waits) == len(storms) >= 10
    if vendor == "pixian":
        assert policy.rate_limit_step == 5.0
        steps = [round(w / 5.0) for w in sleeper.waits]
        assert all(w == 5.0 * s and s >= 1 for w, s in zip(sleeper.waits, steps, strict=True)), sleeper.waits
        # the n-th consecutive 429 of a call is preceded by the (n-1)-th: 5 s waits >= 10 s waits >= ...
        per_step = [steps.count(k) for k in range(1, max(steps) + 1)]
        assert per_step == sorted(per_step, reverse=True) and per_step[0] > 0, per_step
        assert max(steps) >= 2  # the storm produced consecutive 429s
    else:
        assert policy.rate_limit_step is None
        low, high = policy.initial_backoff, policy.max_backoff + policy.jitter
        assert all(low <= w <= high for w in sleeper.waits), sleeper.waits
        assert min(sleeper.waits) < policy.initial_backoff + policy.jitter  # first retries are short
    await _rerun_clean(cell, vendor, run)


@pytest.mark.parametrize("vendor", vendors("pixian"))
async def test_429_storm_from_vendor_concurrency_limit_real_clock(cell: Cell, vendor: str) -> None:
    """
    The vendor admits 2 calls at a time and the batch sends 8: a real 429 storm, waited out on the
    real clock with ``Retry-After: 0`` (the sandbox sends whole seconds, as servers do: a fraction
    rounds up to 1 s) and the vendor's own policy (more retries allowed).
    """
    cell.connections(max_retries=200)
    cell.sandbox.admin.set_faults(vendor, max_concurrency=2, latency_ms=10, retry_after=0)
    run = await run_batch(
        cell.sandbox, cell.storage, vendor, cell.src, cell.dst, hook=make_hook(vendor, retry_policy=None)
    )
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["done"] == BATCH
    assert len(_requests(cell, vendor, status=429)) >= 20
    assert run.charged == BATCH
    await _rerun_clean(cell, vendor, run)


# -- server errors --------------------------------------------------------------------------------
#: The calls (ordinals, per vendor) that answer 5xx in the 20 % cell: every 5th. The batch then
#: makes exactly BATCH + 12 calls, the last fault being call 60 of 62.
SERVER_ERROR_CALLS = list(range(5, 61, 5))


@pytest.mark.parametrize("vendor", VENDORS)
async def test_server_errors_at_20_percent_end_done(cell: Cell, vendor: str) -> None:
    """
    500/502/503 on 20 % of calls: every image is done after retries; 5xx are never billed.

    The faulted calls are listed, not drawn at ``rate=0.2``: the sandbox decides by call ordinal,
    so a seeded rate is one fixed sequence, and seed 3's has dense stretches (Poof: 10 faults in
    calls 15-36). A faulted call is answered before its body is read, so on a loaded machine the
    retrying images take most ordinals there and one can draw six faults in a row: all of the fast
    policy's attempts. Each failed attempt uses up a distinct listed call, so with one attempt more
    than the list holds no image can run out, whatever the scheduling.
    """
    policy = replace(FAST_POLICY, max_attempts=len(SERVER_ERROR_CALLS) + 1)
    cell.sandbox.admin.set_faults(
        vendor, fault="error", requests=SERVER_ERROR_CALLS, statuses=[500, 502, 503], seed=3
    )
    hook = make_hook(vendor, retry_policy=policy)
    run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, hook=hook)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["done"] == BATCH
    faulted = _requests(cell, vendor, fault="error")
    assert sorted(r["ordinal"] for r in faulted) == SERVER_ERROR_CALLS
    assert {r["status"] for r in faulted} == {500, 502, 503}  # seed 3 picks each of them
    # every 5xx was retried once, and nothing else was
    calls = len(_requests(cell, vendor))
    assert calls == BATCH + len(SERVER_ERROR_CALLS) == sum(row["attempts"] for row in run.rows)
    assert any(row["attempts"] > 1 for row in run.rows)
    assert run.charged == BATCH and run.possibly_charged == 0
    await _rerun_clean(cell, vendor, run)


@pytest.mark.parametrize("vendor", vendors("poof"))
async def test_server_errors_at_100_percent_fail_cleanly(cell: Cell, vendor: str) -> None:
    """Every call answers 5xx: every image fails with the status, nothing is written or billed."""
    cell.sandbox.admin.set_faults(vendor, error_rate=1.0, error_statuses=[500, 502, 503], seed=5)
    run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["failed"] == BATCH
    for row in run.rows:
        assert row["error_code"] and row["attempts"] == 6, row  # FAST_POLICY: 6 attempts
        assert any(str(s) in row["error_message"] for s in (500, 502, 503)), row
    assert run.charged == 0 and run.possibly_charged == 0
    await _rerun_clean(cell, vendor, run)


# -- slow, dropped, damaged replies ---------------------------------------------------------------
@pytest.mark.parametrize("vendor", vendors("pixelcut"))
async def test_responses_slower_than_the_timeout(cell: Cell, vendor: str) -> None:
    """
    20 % of calls stall 5 s; the connection's ``timeout`` extra is 0.4 s. The client gives up and
    retries; the vendor (which notices the hang-up) bills nothing for those. The manifest still
    reports them as possibly charged, because a client cannot know.
    """
    cell.connections(timeout=0.4)
    cell.sandbox.admin.set_faults(vendor, fault="slow", rate=0.2, slow_seconds=5, seed=9)
    run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst)
    check_cell(run, cell.storage, cell.dst, total=BATCH)
    assert run.counts["done"] == BATCH
    slow = _requests(cell, vendor, fault="slow (client gave up)")
    assert len(slow) >= 3
    # A hung-up stalled call is not billed, but the client reports each as unknown. On a loaded
    # machine an ordinary call can also outlast the 0.4 s timeout: the sandbox finishes and bills
    # it, and the client counts it as possibly charged too — so the extra charges are bounded by
    # the client's timeouts that were not stalls.
    assert run.possibly_charged >= len(slow)
    assert BATCH <= run.charged <= BATCH + run.possibly_charged - len(slow)
    assert all("ReadTimeout" in str(r) or r["attempts"] >= 1 for r in run.rows)
    await _rerun_clean(cell, vendor, run)


#: fault -> (retried by the client, billed by the vendor)
REPLY_FAULTS = {
    "drop_before_headers": (True, False),
    "drop_after_processing": (True, True),
    "drop_mid_body": (False, True),  # a 200 cut short: the vendor answered, so it billed
    "truncated_body": (False, True),
    "non_image_body": (False, True),
    "empty_body": (False, True),
}


@pytest.mark.parametrize("fault", list(REPLY_FAULTS))
@pytest.mark.parametrize("vendor", vendors("poof"))
async def test_lost_and_damaged_replies(cell: Cell, vendor: str, fault: str) -> None:
    """
    20 % of replies are lost or damaged. Lost replies (a dropped connection) are retried and counted
    as possibly charged; damaged 200s (cut short, not an image, empty) fail that image and are
    counted as *charged* (the vendor answered success: it billed), in the failed row's ``credits``.
    So charged == recorded credits + possibly charged exactly when the vendor bills them, and no
    damaged body is ever written.
    """
    retried, billed = REPLY_FAULTS[fault]
    cell.sandbox.admin.set_faults(vendor, fault=fault, rate=0.2, seed=13)
    run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=billed)
    hits = _requests(cell, vendor, fault=fault)
    assert len(hits) >= 5
    if retried:
        # Every lost reply is retried. An image fails only when all of its attempts were lost: the
        # seeded fault stream holds a run of five faults, and on a loaded box one image's fast retries
        # can draw them all. Such an image is recorded exactly (every attempt possibly charged).
        for row in run.by_status("failed"):
            assert row["attempts"] == FAST_POLICY.max_attempts == row["possibly_charged"], dumps(row)
        assert run.counts["done"] + run.counts["failed"] == BATCH
        assert run.counts["failed"] <= 1, dumps(run.by_status("failed"))
    else:
        assert run.counts["failed"] == len(hits) and run.counts["done"] == BATCH - len(hits)
        for row in run.by_status("failed"):
            assert row["error_code"] and row["possibly_charged"] == 0 and Decimal(row["credits"]) > 0, row
            assert (
                "not a complete image" in row["error_message"]
                or "empty" in row["error_message"]
                or ("result" in row["error_message"])
            ), row
    if billed and retried:
        assert run.charged == run.counts["done"] + len(hits)
        assert run.possibly_charged == len(hits)
    elif billed:  # damaged 200s: charged for sure, recorded as credits of the failed rows
        assert run.charged == BATCH == run.known_credits
        assert run.possibly_charged == 0
        assert run.result.credits_for_failed == len(hits) * run.charged / BATCH
    else:
        assert run.charged == run.counts["done"]
        assert run.possibly_charged == len(hits)  # conservative: the client cannot tell
    await _rerun_clean(cell, vendor, run)


@pytest.mark.parametrize(
    "fault", [pytest.param("drop_after_processing", marks=pytest.mark.slow), "truncated_body"]
)
async def test_every_reply_lost_is_counted_attempt_by_attempt(cell: Cell, fault: str) -> None:
    """
    Every reply is lost (or cut short): each image ends failed, and the manifest counts every billed
    attempt: a retried dropped reply as possibly charged once per attempt, a damaged 200 as charged.
    """
    vendor = "poof"
    cell.sandbox.admin.set_faults(vendor, fault=fault, rate=1.0)
    run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["failed"] == BATCH
    if fault == "drop_after_processing":
        assert run.charged == BATCH * 6 == run.possibly_charged
        assert all(row["possibly_charged"] == 6 for row in run.rows)
    else:
        assert run.charged == BATCH == run.known_credits == run.result.credits_for_failed
        assert all(row["possibly_charged"] == 0 and row["attempts"] == 1 for row in run.rows)
    await _rerun_clean(cell, vendor, run)


# -- Pixelcut result URLs -------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["404", pytest.param("expired", marks=pytest.mark.slow)])
async def test_pixelcut_result_url_gone_when_fetched(cell: Cell, how: str) -> None:
    """
    Pixelcut answers with a ``result_url`` that is 404 (or already expired) when the hook fetches
    it: the call was billed, the image fails with a clear reason and its charge is recorded (the
    failed row's ``credits``); a rerun redoes it (paying again: the vendor's result is gone).
    """
    vendor = "pixelcut"
    if how == "404":
        cell.sandbox.admin.set_faults(vendor, result_url_status=404)
    else:
        cell.sandbox.admin.settings(result_ttl_seconds=0)
    options = PixelcutOptions(result_delivery="url")
    try:
        run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, vendor_options=options)
    finally:
        cell.sandbox.admin.settings(result_ttl_seconds=3600)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["failed"] == BATCH
    for row in run.rows:
        assert row["error_code"] == "result_download" and "404" in row["error_message"], row
        assert "billed" in row["error_message"] and row["possibly_charged"] == 0 and row["credits"] == "1"
    assert run.charged == BATCH == run.known_credits == run.result.credits_for_failed
    rerun = await _rerun_clean(cell, vendor, run, vendor_options=options)
    assert rerun.charged == BATCH


async def test_pixelcut_result_url_delivery_works_when_healthy(cell: Cell) -> None:
    """Control cell: the ``result_url`` path itself writes complete images and pays once."""
    options = PixelcutOptions(result_delivery="url")
    run = await run_batch(cell.sandbox, cell.storage, "pixelcut", cell.src, cell.dst, vendor_options=options)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["done"] == BATCH and run.charged == BATCH


# -- money and credentials running out mid-batch --------------------------------------------------
@pytest.mark.parametrize("vendor", VENDORS)
async def test_credits_run_out_mid_batch_with_calls_in_flight(cell: Cell, vendor: str) -> None:
    """
    The account runs dry after image 20 of 50 while 8 calls are in flight: submitting stops, the
    in-flight calls finish (the ones refused are pending), nothing else is paid, the halt says why
    and how many remain, and a rerun after topping up finishes exactly the rest.
    """
    k = 20
    cell.sandbox.admin.set_faults(vendor, latency_ms=40, exhaust_after=k)
    run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, max_concurrency=8)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["done"] == k and run.charged == k
    assert run.counts["pending"] == BATCH - k and run.counts["failed"] == 0
    refused = [r for r in run.by_status("pending") if r["error_code"] not in ("out_of_credits",)]
    assert refused, "some calls were in flight when the credits ran out"
    halt = run.result.halt
    assert halt is not None and halt.reason == "out_of_credits" and halt.fatal
    assert halt.remaining_images == BATCH - k and halt.available == Decimal(0)
    cell.sandbox.admin.set_balance(vendor, 1000)
    await _rerun_clean(cell, vendor, run)
    assert len(cell.sandbox.admin.charges(vendor)) == BATCH


@pytest.mark.parametrize("vendor", VENDORS)
async def test_auth_revoked_mid_batch(cell: Cell, vendor: str) -> None:
    """
    The key is revoked after ~20 images with calls in flight: the batch stops at once, nothing is
    billed after the revocation, every unprocessed image is pending with the reason, and a rerun
    with a valid key finishes the rest.
    """
    k = 20
    cell.sandbox.admin.set_faults(vendor, latency_ms=40)

    async def revoke_after_k() -> None:
        while len(cell.sandbox.state.ledger.charges(vendor)) < k:
            await asyncio.sleep(0.002)
        await asyncio.to_thread(cell.sandbox.admin.set_faults, vendor, latency_ms=40, auth_revoked=True)

    watcher = asyncio.create_task(revoke_after_k())
    run = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, max_concurrency=8)
    await watcher
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert k <= run.counts["done"] < BATCH and run.charged == run.counts["done"]
    assert run.counts["pending"] == BATCH - run.counts["done"] and run.counts["failed"] == 0
    halt = run.result.halt
    assert halt is not None and halt.reason == "auth_failed" and halt.fatal
    for row in run.by_status("pending"):
        assert row["error_code"] in ("auth_failed",) or row["error_code"], row
    await _rerun_clean(cell, vendor, run)


def test_fast_policy_is_only_faster_not_laxer() -> None:
    """The stand-in policy retries the same errors as the vendors' (only the waits are shorter)."""
    from tests.faults.matrix import FAST_POLICY

    assert isinstance(FAST_POLICY, RetryPolicy)
    assert FAST_POLICY.max_attempts == 6
