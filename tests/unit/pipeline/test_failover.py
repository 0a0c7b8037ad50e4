"""The call stage over a failover chain (real fake-gcs-server, scripted processors standing in for vendors).

The circuit breakers run on a clock the vendors move by hand, so the outage cells are exact without sleeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_bgremoval.exceptions import (
    InputRejectedError,
    OutOfCreditsError,
    TransientVendorError,
    VendorAuthError,
)
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.pipeline import accounts as accounts_module
from airflow_provider_bgremoval.pipeline.accounts import Account, AccountChain, BreakerPolicy, CircuitBreaker
from airflow_provider_bgremoval.pipeline.claims import META_DESTINATION, META_EXPIRES, ClaimStore
from airflow_provider_bgremoval.pipeline.engine import BatchRunner
from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter, read_manifest
from airflow_provider_bgremoval.pipeline.planning import BatchSpec, plan_batch
from airflow_provider_bgremoval.pipeline.rendering import RenditionLayout
from airflow_provider_bgremoval.results import AccountState, Balance, ImageResult
from airflow_provider_bgremoval.retry import LEASE_MARGIN_SECONDS, ClaimHold
from airflow_provider_bgremoval.run_summary import summarise_manifests
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.vendors.pixian import PIXIAN_SPEC
from tests.unit.pipeline.test_engine import ScriptedProcessor, seed
from tests.unit.pipeline.test_rendering import SPEC_KW, THUMB, WEB, cutout, layout

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Vendor(ScriptedProcessor):
    """A scripted vendor with its own name, fingerprint and cost."""

    def __init__(self, vendor: str, script: Callable[[str, int], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(script, **kwargs)
        self.vendor = vendor
        self.fingerprint = f"fp-{vendor}"
        self.done: list[str] = []

    async def process(self, data: bytes, filename: str, stats: Any = None) -> ImageResult:
        result = await super().process(data, filename, stats)
        self.done.append(filename)
        return result


class BalanceHook:
    """The free balance endpoint of an account (all the engine asks a hook for)."""

    def __init__(self, vendor: str, remaining: str, delay: float = 0.0) -> None:
        self.vendor, self.remaining, self.delay = vendor, Decimal(remaining), delay
        self.reads: list[bool] = []  # each read's probe flag

    async def aget_balance(self, *, probe: bool = False) -> Balance:
        self.reads.append(probe)
        await asyncio.sleep(self.delay)
        return Balance(vendor=self.vendor, remaining=self.remaining, state=AccountState.ACTIVE)


def chain(
    *vendors: Vendor,
    clock: Clock | None = None,
    budgets: dict[str, str] | None = None,
    hooks: dict[str, BalanceHook] | None = None,
    policy: BreakerPolicy | None = None,
    **kwargs: Any,
) -> AccountChain:
    clock = clock or Clock()
    return AccountChain(
        [
            Account(
                f"{v.vendor}_conn",
                v,
                hook=(hooks or {}).get(v.vendor),  # type: ignore[arg-type]
                budget=Decimal((budgets or {})[v.vendor]) if v.vendor in (budgets or {}) else None,
                breaker=CircuitBreaker(policy or BreakerPolicy(), clock),
            )
            for v in vendors
        ],
        **kwargs,
    )


def run_chain(
    storage: GcsStorage,
    spec: BatchSpec,
    accounts: AccountChain,
    renditions: RenditionLayout | None = None,
    limits: InputLimits | None = None,
    runners: list[BatchRunner] | None = None,
    **kwargs: Any,
):
    """Plan and run the batch over ``accounts``; its runner is appended to ``runners`` before it runs."""

    async def go():
        primary = accounts.primary.processor
        plan = await plan_batch(
            storage,
            spec,
            extension=".png",
            identity=accounts.identity,
            limits=limits or primary.limits,
            renditions=renditions,
        )
        manifest = ManifestWriter()
        runner = BatchRunner(storage, primary, plan, manifest, accounts=accounts, **kwargs)
        if runners is not None:
            runners.append(runner)
        result = await runner.run()
        return result, read_manifest(manifest.getvalue())

    return asyncio.run(go())


def names(count: int) -> list[str]:
    return [f"{i:02d}.png" for i in range(count)]


def test_the_primary_runs_out_at_image_20_of_50_and_the_secondary_does_the_other_30(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(50))
    out = OutOfCreditsError("no credits left", vendor="pixian", status_code=402, code="out_of_credits")
    primary = Vendor("pixian", lambda n, count: out if count >= 20 else None)
    secondary = Vendor("poof")
    accounts = chain(primary, secondary)
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    assert result.counts["done"] == 50 and result.halt is None
    assert len(primary.done) == 19 and len(secondary.done) == 31  # image 20 was refused, not charged
    assert sorted(primary.done + secondary.done) == names(50)  # no image made (charged) twice
    assert result.credits_spent == 50
    by_account = {row["source"].rsplit("/", 1)[1]: row for row in rows}
    assert {row["account"] for row in rows} == {"pixian_conn", "poof_conn"}
    handed = by_account["19.png"]
    assert (handed["vendor"], handed["account"], handed["status"]) == ("poof", "poof_conn", "done")
    assert handed["handoffs"] == [
        {
            "account": "pixian_conn",
            "vendor": "pixian",
            "reason": "out_of_credits",
            "code": "out_of_credits",
            "message": "no credits left",
            "possibly_charged": 0,
        }
    ]
    summary = {entry["conn_id"]: entry for entry in accounts.summary()}
    assert (summary["pixian_conn"]["done"], summary["pixian_conn"]["state"]) == (19, "out_of_credits")
    assert (summary["poof_conn"]["done"], summary["poof_conn"]["credits_spent"]) == (31, "31")
    assert summary["poof_conn"]["state"] == "active" and summary["poof_conn"]["breaker"] == "closed"
    output = storage.stat(spec.destination_bucket, "40.png")
    assert output is not None and output.metadata["bgremoval-vendor"] == "poof"
    assert output.metadata["bgremoval-options-hash"] == "fp-poof"

    # Rerun with the primary topped up: whatever vendor made an output, it is finished (0 charges).
    again = Vendor("pixian")
    result, rows = run_chain(storage, spec, chain(again, Vendor("poof")))
    assert again.calls == [] and result.counts["skipped"] == 50 and result.credits_spent == 0


class StatsRecorder:
    def __init__(self) -> None:
        self.counts: list[tuple[str, dict[str, str]]] = []

    def incr(self, name: str, tags: dict[str, str] | None = None) -> None:
        self.counts.append((name, dict(tags or {})))


def test_an_outage_opens_the_breaker_the_rest_go_on_and_a_probe_returns_to_the_primary(
    batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = StatsRecorder()
    monkeypatch.setattr(accounts_module, "Stats", stats)
    storage, src, spec = batch
    seed(storage, src, names(12))
    clock = Clock()
    down = {"until": 0}

    def primary_script(name: str, count: int) -> Any:
        if count <= down["until"] or down["until"] == 0:
            return TransientVendorError("503 after retries", vendor="pixelcut", status_code=503)
        return None

    def secondary_script(name: str, count: int) -> Any:
        clock.now += 1.0  # each image on the secondary takes a second
        if count == 6:
            down["until"] = 4  # the primary's outage is over from its 5th call on
        return None

    primary = Vendor("pixelcut", primary_script)
    secondary = Vendor("poof", secondary_script)
    policy = BreakerPolicy(consecutive_failures=3, cooldown_seconds=2.5, max_cooldown_seconds=10)
    accounts = chain(primary, secondary, clock=clock, policy=policy)
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    assert result.counts["done"] == 12 and result.counts["failed"] == 0
    breaker = accounts.primary.breaker
    # 3 transient failures opened it (each image went on to the secondary); after the cooldown the
    # 4th call was a probe that failed (cooldown doubled to 5 s), the 5th a probe that succeeded.
    assert primary.calls[:3] == names(3) and breaker.times_opened == 2
    assert breaker.state == "closed"
    assert len(primary.calls) == 4 + len(primary.done) and primary.done  # back on the primary
    assert sorted(primary.done + secondary.done) == names(12)
    assert primary.done == names(12)[-len(primary.done) :]  # once closed, the primary takes the rest
    handed = [row for row in rows if row.get("handoffs")]
    assert {row["handoffs"][0]["reason"] for row in handed} == {"outage"}
    assert len(handed) == 4 and all(row["vendor"] == "poof" for row in handed)
    metrics = [name for name, _ in stats.counts]
    assert metrics.count("bgremoval.failover.breaker_opened.pixelcut_conn") == 2
    assert metrics.count("bgremoval.failover.handoffs.pixelcut_conn") == 4
    assert stats.counts[0][1] == {"conn_id": "pixelcut_conn", "vendor": "pixelcut", "reason": "outage"}


def test_an_image_waiting_for_a_probe_is_not_sent_after_a_stop_request(batch) -> None:
    """
    Both breakers open, the next image waits for the first probe; a stop arrives during the wait and
    the cooldown runs out meanwhile: the image is left pending, never sent after the stop.
    """
    storage, src, spec = batch
    seed(storage, src, names(2))
    clock, runners = Clock(), []

    def stop_later() -> None:
        runners[0].request_stop("terminated", "the task was terminated")
        clock.now += 31  # the cooldown is over: a probe would be let through

    def outage(name: str, count: int) -> Any:
        if len(secondary.calls) == 1:  # the second account's breaker opens now: 00.png's last call
            asyncio.get_running_loop().call_later(0.2, stop_later)  # while 01.png waits (<= 0.5 s)
        return TransientVendorError("503 after retries", vendor="pixian", status_code=503)

    primary, secondary = Vendor("pixian", outage), Vendor("poof", outage)
    policy = BreakerPolicy(consecutive_failures=1, cooldown_seconds=30)
    accounts = chain(primary, secondary, clock=clock, policy=policy)
    result, rows = run_chain(storage, spec, accounts, runners=runners, max_concurrency=1, drain_grace=5)
    assert primary.calls == secondary.calls == ["00.png"]  # 01.png was never sent
    by_name = {row["source"].rsplit("/", 1)[-1]: row for row in rows}
    assert by_name["00.png"]["status"] == "failed"
    assert (by_name["01.png"]["status"], by_name["01.png"]["error_code"]) == ("pending", "terminated")
    assert result.counts["pending"] == 1 and result.interrupted == "terminated"


def _run_with_claims(
    storage: GcsStorage, spec: BatchSpec, accounts: AccountChain, claims: ClaimStore
) -> tuple[Any, list[dict[str, Any]], dict[str, float | None]]:
    """
    Run the batch with ``claims``, bounded by ``wait_for`` (a wait without end fails the test, never
    hangs it); also the lease each image had left when the call stage settled it.
    """
    left_at_settle: dict[str, float | None] = {}

    async def go() -> tuple[Any, list[dict[str, Any]]]:
        primary = accounts.primary.processor
        plan = await plan_batch(
            storage, spec, extension=".png", identity=accounts.identity, limits=primary.limits
        )
        manifest = ManifestWriter()
        runner = BatchRunner(
            storage, primary, plan, manifest, accounts=accounts, claims=claims, max_concurrency=1
        )
        settle = runner.calls.settle

        def recording(flight: Any, status: str, *args: Any, **kwargs: Any) -> None:
            left_at_settle[flight.item.source.name] = claims.lease_left(flight.item.destination)
            settle(flight, status, *args, **kwargs)

        runner.calls.settle = recording
        result = await asyncio.wait_for(runner.run(), timeout=15)
        return result, read_manifest(manifest.getvalue())

    result, rows = asyncio.run(go())
    return result, rows, left_at_settle


def test_an_image_waiting_out_an_outage_longer_than_its_lease_is_left_pending_before_the_lease_ends(
    batch,
) -> None:
    """
    Both breakers stay open for longer than the claim lease; the next image waits for a probe while
    the wall clock runs on. It is settled pending (``outage``) while its claim is still live, never
    sent, and its claim released unpaid: waiting on, its lease would lapse, another run could take the
    claim over and pay for the image, and then this one too.
    """
    storage, src, spec = batch
    seed(storage, src, names(2))
    clock = Clock()

    def ten_minutes_later() -> float:  # the claims' wall clock: each look at it is 10 minutes on
        clock.now += 600
        return clock.now

    def outage(name: str, count: int) -> Any:
        return TransientVendorError("503 after retries", vendor="pixian", status_code=503)

    primary, secondary = Vendor("pixian", outage), Vendor("poof", outage)
    policy = BreakerPolicy(consecutive_failures=1, cooldown_seconds=100_000, max_cooldown_seconds=100_000)
    accounts = chain(primary, secondary, clock=clock, policy=policy)
    claims = ClaimStore(
        storage, spec.destination_bucket, "_bgremoval/", "dag/run1/t/-1", clock=ten_minutes_later
    )
    result, rows, left_at_settle = _run_with_claims(storage, spec, accounts, claims)
    assert primary.calls == secondary.calls == ["00.png"]  # 01.png was never sent
    by_name = {row["source"].rsplit("/", 1)[-1]: row for row in rows}
    assert by_name["00.png"]["status"] == "failed"
    waited = by_name["01.png"]
    assert (waited["status"], waited["error_code"]) == ("pending", "outage")
    assert waited["error_message"].endswith("this image was not sent (nothing paid)")
    assert waited.get("credits") is None and waited["possibly_charged"] == 0
    assert 0 < left_at_settle["01.png"] <= LEASE_MARGIN_SECONDS  # settled while its lease was live
    assert result.pending_reasons == {"outage": 1}
    metas = [
        info.metadata or {} for info in storage.list_objects(spec.destination_bucket, "_bgremoval/claims/")
    ]
    assert {meta[META_DESTINATION]: meta[META_EXPIRES] for meta in metas}["01.png"] == "0"  # released unpaid
    other = ClaimStore(
        storage, spec.destination_bucket, "_bgremoval/", "dag/run2/t/-1", clock=lambda: clock.now
    )
    assert other.acquire("01.png") is None and other.taken_over == set()  # the next run pays at once


def test_an_image_whose_probe_comes_due_within_its_lease_waits_for_it_and_is_sent(batch) -> None:
    """With claims, a wait the lease allows is as before: the image is the half-open probe."""
    storage, src, spec = batch
    seed(storage, src, names(2))
    clock = Clock()

    def a_minute_later() -> float:
        clock.now += 60
        return clock.now

    def first_call_fails(name: str, count: int) -> Any:
        if count == 1:
            return TransientVendorError("503 after retries", vendor="pixian", status_code=503)
        return None

    primary, secondary = Vendor("pixian", first_call_fails), Vendor("poof", first_call_fails)
    policy = BreakerPolicy(consecutive_failures=1, cooldown_seconds=150, max_cooldown_seconds=150)
    accounts = chain(primary, secondary, clock=clock, policy=policy)
    claims = ClaimStore(
        storage, spec.destination_bucket, "_bgremoval/", "dag/run1/t/-1", clock=a_minute_later
    )
    result, rows, _ = _run_with_claims(storage, spec, accounts, claims)
    assert primary.calls == ["00.png", "01.png"] and primary.done == ["01.png"]  # the probe
    assert result.counts["done"] == 1 and result.counts["failed"] == 1 and result.counts["pending"] == 0


def test_an_image_handed_on_when_a_stop_arrives_says_what_its_earlier_call_may_have_cost(batch) -> None:
    """Sent to the primary (its reply lost), handed on, then a stop: pending, and its row does not claim
    it was never sent or that nothing was paid."""
    storage, src, spec = batch
    seed(storage, src, names(2))
    runners: list[BatchRunner] = []

    def lost_then_stop(name: str, count: int) -> Any:
        runners[0].request_stop("terminated", "the task was terminated")
        return TransientVendorError("reply lost", vendor="pixian", possibly_charged=True)

    primary, secondary = Vendor("pixian", lost_then_stop), Vendor("poof")
    result, rows = run_chain(storage, spec, chain(primary, secondary), runners=runners, max_concurrency=1)
    assert primary.calls == ["00.png"] and secondary.calls == []
    first, second = rows
    assert (first["status"], first["error_code"], first["possibly_charged"]) == ("pending", "terminated", 1)
    assert first["handoffs"][0]["account"] == "pixian_conn"
    assert first["error_message"] == (
        "the task was terminated; this image was not sent again; 1 reply(s) lost on its earlier calls "
        "may have been billed"
    )
    assert (second["status"], second["error_code"]) == ("pending", "terminated")  # never started


def test_an_image_handed_on_then_refused_by_max_credits_says_what_its_earlier_call_may_have_cost(
    batch,
) -> None:
    """Sent to the primary (its reply lost), handed on to a dearer account that max_credits cannot pay: its
    pending row does not claim it was never sent."""
    storage, src, spec = batch
    seed(storage, src, names(1))

    def lost(name: str, count: int) -> Any:
        return TransientVendorError("reply lost", vendor="pixian", possibly_charged=True)

    primary, secondary = Vendor("pixian", lost), Vendor("poof")
    secondary.cost_per_image = Decimal(2)
    accounts = chain(primary, secondary)
    _, rows = run_chain(storage, spec, accounts, max_concurrency=1, max_credits=Decimal("2.5"))
    assert primary.calls == ["00.png"] and secondary.calls == []
    [row] = rows
    assert (row["status"], row["error_code"], row["possibly_charged"]) == ("pending", "max_credits", 1)
    assert row["handoffs"][0]["account"] == "pixian_conn"
    assert row["error_message"].endswith(
        "this image was not sent again; 1 reply(s) lost on its earlier calls may have been billed"
    )


def test_without_outage_in_failover_on_a_transient_failure_fails_the_image_as_before(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(3))
    primary = Vendor("pixelcut", lambda n, c: TransientVendorError("503", vendor="pixelcut", status_code=503))
    secondary = Vendor("poof")
    accounts = chain(primary, secondary, failover_on=("out_of_credits",))
    result, _ = run_chain(storage, spec, accounts, max_concurrency=1)
    assert result.counts["failed"] == 3 and secondary.calls == []


def test_a_refused_key_fails_over_and_a_per_account_budget_moves_the_rest_on(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(8))
    revoked = Vendor("pixian", lambda n, c: VendorAuthError("revoked", vendor="pixian", status_code=401))
    budgeted, spare = Vendor("poof"), Vendor("pixelcut")
    accounts = chain(revoked, budgeted, spare, budgets={"poof": "3"})
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1, max_credits=Decimal(7))
    assert len(revoked.calls) == 1 and len(budgeted.done) == 3
    assert result.counts["done"] == 7 and result.counts["pending"] == 1  # the total budget: 7
    assert result.halt is not None and result.halt.reason == "max_credits" and not result.halt.fatal
    states = [(a.conn_id, a.state) for a in accounts.accounts]
    assert states == [
        ("pixian_conn", "auth_failed"),
        ("poof_conn", "max_credits"),
        ("pixelcut_conn", "active"),
    ]
    assert accounts.accounts[1].state_message.startswith("max_credits_per_account['poof_conn']=3 reached")
    assert {row["account"] for row in rows if row["status"] == "done"} == {"poof_conn", "pixelcut_conn"}


def test_a_rejection_is_tried_on_another_vendor_only_when_asked(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, ["a.png", "b.png"])

    def picky(name: str, count: int) -> Any:
        if name == "b.png":
            return InputRejectedError("no foreground", vendor="pixian", code="unknown_foreground")
        return None

    result, rows = run_chain(storage, spec, chain(Vendor("pixian", picky), Vendor("poof")))
    assert result.counts["rejected"] == 1
    primary, other = Vendor("pixian", picky), Vendor("poof")
    same_vendor = Vendor("pixian")
    same_vendor.fingerprint = "fp-pixian-2"
    accounts = AccountChain(
        [Account("a", primary), Account("b", same_vendor), Account("c", other)], retry_rejected_on_next=True
    )
    spec = BatchSpec(
        source_bucket=spec.source_bucket, destination_bucket=spec.destination_bucket, overwrite=True
    )
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    row = next(row for row in rows if row["source"].endswith("b.png"))
    assert (row["status"], row["account"], row["vendor"]) == ("done", "c", "poof")  # not b: same vendor
    assert row["handoffs"][0]["code"] == "unknown_foreground" and same_vendor.calls == []


def test_the_next_accounts_limits_are_checked_locally_before_failing_over(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(2))  # 80x60 images
    out = OutOfCreditsError("empty", vendor="pixian", code="402")
    primary = Vendor("pixian", lambda n, c: out)
    tiny = Vendor("poof")
    tiny.limits = InputLimits(max_bytes=1_000_000, min_side=32, max_side=50)
    result, rows = run_chain(storage, spec, chain(primary, tiny), max_concurrency=1)
    # the secondary cannot take them: rejected locally (free), before any call
    assert tiny.calls == [] and result.counts["rejected"] == 2 and result.halt is None
    assert [(h["account"], h["reason"]) for h in rows[0]["handoffs"]] == [
        ("pixian_conn", "out_of_credits"),
        ("poof_conn", "rejected"),
    ]
    assert rows[0]["account"] == "pixian_conn" and rows[1]["handoffs"][0]["account"] == "poof_conn"


def test_a_lost_reply_stays_booked_to_its_account_and_counts_against_the_budget_on_failover(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(2))

    def lost(name: str, count: int) -> Any:
        if count == 1:
            return TransientVendorError("reply lost", vendor="pixian", possibly_charged=True)
        return None

    accounts = chain(Vendor("pixian", lost), Vendor("poof"))
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    assert result.counts["done"] == 2 and result.possibly_charged == 1
    first = rows[0]
    assert (first["account"], first["possibly_charged"], first["credits"]) == ("poof_conn", 1, "1")
    summary = {entry["conn_id"]: entry for entry in accounts.summary()}
    assert summary["pixian_conn"]["possibly_charged"] == 1 and summary["poof_conn"]["possibly_charged"] == 0
    assert summary["pixian_conn"]["credits_spent"] == "1"  # image 2 went back to the primary

    # With a total budget of 1 the lost reply leaves no room to send the image anywhere else.
    dst = spec.destination_bucket
    secondary = Vendor("poof")
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="again/")
    result, rows = run_chain(
        storage, spec, chain(Vendor("pixian", lost), secondary), max_concurrency=1, max_credits=Decimal(1)
    )
    assert secondary.calls == [] and rows[0]["status"] == "failed" and rows[0]["possibly_charged"] == 1
    assert result.halt is not None and result.halt.reason == "max_credits"


class LossyVendor(Vendor):
    """A vendor filling in the live call record as hooks do: ``losses[name]`` replies lost, then an error."""

    def __init__(self, vendor: str, losses: dict[str, int]) -> None:
        super().__init__(vendor)
        self.losses = losses

    async def process(self, data: bytes, filename: str, stats: Any = None) -> ImageResult:
        lost = self.losses.get(filename, 0)
        if not lost:
            return await super().process(data, filename, stats)
        self.calls.append(filename)
        stats.attempts += lost
        stats.possibly_charged += lost
        raise TransientVendorError("reply lost", vendor=self.vendor, possibly_charged=True)


def test_each_handoff_carries_the_lost_replies_its_account_booked_and_the_rows_add_up_to_the_summary(
    batch,
) -> None:
    """Lost replies on every account of a chain: the rows split them exactly as the engine booked them."""
    storage, src, spec = batch
    seed(storage, src, names(4))
    accounts = chain(
        LossyVendor("pixian", {"00.png": 1, "01.png": 2, "03.png": 1}),
        LossyVendor("pixelcut", {"00.png": 3, "03.png": 1}),
        LossyVendor("poof", {"03.png": 2}),
    )
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    by_name = {row["source"].rsplit("/", 1)[1]: row for row in rows}
    shares = {
        name: [(h["account"], h["possibly_charged"]) for h in row.get("handoffs") or ()]
        for name, row in by_name.items()
    }
    assert shares == {
        "00.png": [("pixian_conn", 1), ("pixelcut_conn", 3)],  # then made by poof
        "01.png": [("pixian_conn", 2)],  # then made by pixelcut
        "02.png": [],
        "03.png": [("pixian_conn", 1), ("pixelcut_conn", 1)],  # poof lost 2 more: failed there
    }
    assert [(by_name[n]["account"], by_name[n]["possibly_charged"]) for n in sorted(by_name)] == [
        ("poof_conn", 4),
        ("pixelcut_conn", 2),
        ("pixian_conn", 0),
        ("poof_conn", 4),
    ]
    assert result.possibly_charged == 10

    def figures(entries: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        keys = ("images", "possibly_charged", "done", "credits_spent")
        return {entry["conn_id"]: tuple(entry[key] for key in keys) for entry in entries}

    engine = figures(accounts.summary())  # what the task's summary XCom says
    assert engine == {
        "pixian_conn": (1, 4, 1, "1"),
        "pixelcut_conn": (1, 4, 1, "1"),
        "poof_conn": (2, 2, 1, "1"),
    }
    manifest = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    assert figures(summarise_manifests([("gs://dst/try-1.jsonl", manifest)]).account_summary()) == engine


class CutoutVendor(Vendor):
    """A scripted vendor answering with a real cut-out (the renditions need a subject)."""

    async def process(self, data: bytes, filename: str, stats: Any = None) -> ImageResult:
        await super().process(data, filename, stats)  # the script, the ledger
        return ImageResult(content=cutout(), content_type="image/png", vendor=self.vendor)


def test_rows_of_existing_outputs_name_the_vendor_that_made_them_not_the_primary(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, [f"raw/{name}" for name in names(2)])
    spec = BatchSpec(src, spec.destination_bucket, **SPEC_KW)
    out = OutOfCreditsError("no credits", vendor="pixian", status_code=402, code="out_of_credits")

    def go(*renditions: dict[str, Any]) -> list[dict[str, Any]]:
        accounts = chain(CutoutVendor("pixian", lambda n, c: out), CutoutVendor("poof"))
        return run_chain(storage, spec, accounts, renditions=layout(*renditions), max_concurrency=1)[1]

    made = go(WEB)  # the primary is out: poof makes every master
    assert {(row["status"], row["vendor"]) for row in made} == {("done", "poof")}
    again = go(WEB, THUMB)  # a new rendition: render-only rows of poof's masters (no call)
    assert [(row["status"], row["master"]["status"]) for row in again] == [("done", "skipped")] * 2
    assert {row["vendor"] for row in again} == {"poof"}
    settled = go(WEB, THUMB)  # every rendition exists: settled at planning
    assert {(row["status"], row["vendor"]) for row in settled} == {("skipped", "poof")}
    plain = BatchSpec(src, spec.destination_bucket, source_prefix="raw/", destination_prefix="out/masters/")
    accounts = chain(Vendor("pixian"), Vendor("poof"))
    _, rows = run_chain(storage, plain, accounts)  # the masters as plain outputs: already done
    assert {(row["status"], row["error_code"], row["vendor"]) for row in rows} == {
        ("skipped", "already_done", "poof")
    }


def test_an_image_outside_the_primary_s_limits_goes_to_the_next_account_without_a_primary_call(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(2))  # 80x60 images
    primary, secondary = Vendor("pixelcut"), Vendor("poof")
    primary.limits = InputLimits(max_bytes=1_000_000, min_side=64, max_side=4000)  # 60 px: too small
    # planning checked the chain's widest limits (the secondary's): both are billable
    result, rows = run_chain(storage, spec, chain(primary, secondary), limits=secondary.limits)
    assert primary.calls == [] and sorted(secondary.done) == names(2)
    assert result.counts["done"] == 2 and result.credits_spent == 2
    assert {(h["account"], h["reason"]) for row in rows for h in row["handoffs"]} == {
        ("pixelcut_conn", "rejected")
    }
    assert {row["account"] for row in rows} == {"poof_conn"}


def test_progress_lines_name_the_chain_not_only_the_primary(batch, caplog: pytest.LogCaptureFixture) -> None:
    storage, src, spec = batch
    seed(storage, src, names(2))
    primary, secondary = Vendor("pixian"), Vendor("poof")
    with caplog.at_level(logging.INFO, logger="airflow_provider_bgremoval.pipeline.progress"):
        result, _ = run_chain(storage, spec, chain(primary, secondary), progress_every_seconds=0)
    assert result.counts["done"] == 2
    logger = "airflow_provider_bgremoval.pipeline.progress"
    lines = [r.getMessage() for r in caplog.records if r.name == logger]
    assert lines and all(line.startswith("[pixian->poof] ") for line in lines)


def _slow_failing_pixian(clock: Clock) -> Vendor:
    """A Pixian whose every call fails with a 503 after retries, 00.png's taking 2000 s of ``clock``."""

    def slow_outage(name: str, count: int) -> Any:
        if name == "00.png":
            clock.now += 2000  # the retries of a failing call
        return TransientVendorError("503 after retries", vendor="pixian", status_code=503)

    return Vendor("pixian", slow_outage)


def test_an_image_handed_on_when_its_lease_runs_short_is_left_pending_not_sent_to_the_next_account(
    batch,
) -> None:
    """
    00.png's calls on pixian (its hook's retries) take 2000 s of its one-hour claim before the outage
    hands it on: 1600 s are left, less than a call on poof may take (LEASE_MARGIN_SECONDS). It is not
    sent there (another run could take the lapsed claim over and pay for it too): pending ``outage``,
    its claim released unpaid. 01.png, claimed afresh, goes to poof.
    """
    storage, src, spec = batch
    seed(storage, src, names(2))
    clock = Clock()
    primary, secondary = _slow_failing_pixian(clock), Vendor("poof")
    policy = BreakerPolicy(consecutive_failures=5)  # the breaker stays closed: no waiting
    accounts = chain(primary, secondary, clock=clock, policy=policy)
    claims = ClaimStore(storage, spec.destination_bucket, "_bgremoval/", "dag/run1/t/-1", clock=clock)
    result, rows, left_at_settle = _run_with_claims(storage, spec, accounts, claims)
    assert primary.calls == ["00.png", "01.png"] and secondary.calls == ["01.png"]
    by_name = {row["source"].rsplit("/", 1)[-1]: row for row in rows}
    handed = by_name["00.png"]
    assert (handed["status"], handed["error_code"]) == ("pending", "outage")
    assert (
        "its calls on pixian_conn took until 1600 s were left of this image's claim lease"
        in (handed["error_message"])
    )
    assert handed["error_message"].endswith(
        "this image was not sent again (nothing paid for its earlier calls)"
    )
    assert left_at_settle["00.png"] == 1600 and by_name["01.png"]["status"] == "done"
    assert result.pending_reasons == {"outage": 1} and result.credits_spent == 1
    metas = [
        info.metadata or {} for info in storage.list_objects(spec.destination_bucket, "_bgremoval/claims/")
    ]
    assert {meta[META_DESTINATION]: meta[META_EXPIRES] for meta in metas}["00.png"] == "0"  # released unpaid


def test_a_handoff_keeps_the_hold_of_the_chain_s_slowest_connection_in_hand(batch) -> None:
    """
    The margin kept before a handoff is the chain's longest hold on its connections' settings, not the
    1800 s of the defaults: with a 600 s timeout one call may hold its claim 4740 s. 00.png's calls on
    pixian take 2000 s of its 6000 s lease: 4000 s are left, more than 1800 s but less than a call may
    take. Sent on, its claim could lapse mid-call and another run pay for it too: it stays pending.
    """
    storage, src, spec = batch
    seed(storage, src, names(2))
    clock = Clock()
    primary, secondary = _slow_failing_pixian(clock), Vendor("poof")
    accounts = chain(primary, secondary, clock=clock, policy=BreakerPolicy(consecutive_failures=5))
    slow = ClaimHold("pixian_conn", PIXIAN_SPEC.retry_policy, 600.0, ("timeout",))
    claims = ClaimStore(
        storage,
        spec.destination_bucket,
        "_bgremoval/",
        "dag/run1/t/-1",
        clock=clock,
        lease_seconds=6000,
        holds=[slow],
    )
    result, rows, left_at_settle = _run_with_claims(storage, spec, accounts, claims)
    assert primary.calls == ["00.png", "01.png"] and secondary.calls == ["01.png"]
    handed = {row["source"].rsplit("/", 1)[-1]: row for row in rows}["00.png"]
    assert (handed["status"], handed["error_code"]) == ("pending", "outage")
    assert (
        "until 4000 s were left of this image's claim lease, less than the 4740 s" in handed["error_message"]
    )
    assert left_at_settle["00.png"] == 4000 and result.pending_reasons == {"outage": 1}


def test_an_image_refused_by_the_primary_then_by_the_next_accounts_budget_is_pending_max_credits(
    batch,
) -> None:
    """
    Pixelcut refuses the image (403 ``insufficient_api_credits``) and leaves the chain; poof's own budget
    cannot pay for it, so poof leaves too and the chain halts ``max_credits`` (the last to leave). The
    row is pending for that halt: its code and message are the halt's (``pending_reasons`` counts it
    there), not Pixelcut's code and message, which its handoff keeps.
    """
    storage, src, spec = batch
    seed(storage, src, names(1))
    out = OutOfCreditsError(
        "Insufficient credits available",
        vendor="pixelcut",
        status_code=403,
        code="insufficient_api_credits",
        request_id="req-1",
    )
    primary, budgeted = Vendor("pixelcut", lambda n, c: out), Vendor("poof")
    result, rows = run_chain(storage, spec, chain(primary, budgeted, budgets={"poof": "0.5"}))
    assert primary.calls == ["00.png"] and budgeted.calls == []
    assert result.halt is not None and result.halt.reason == "max_credits" and not result.halt.fatal
    [row] = rows
    assert (row["status"], row["error_code"], row["request_id"]) == ("pending", "max_credits", "req-1")
    assert result.pending_reasons == {"max_credits": 1}
    assert row["error_message"].startswith("every account of the chain is unusable")
    assert "max_credits_per_account['poof_conn']=0.5 reached" in row["error_message"]
    assert row["error_message"].endswith("this image was not sent again (nothing paid for its earlier calls)")
    [handoff] = row["handoffs"]
    assert (handoff["account"], handoff["reason"], handoff["code"]) == (
        "pixelcut_conn",
        "out_of_credits",
        "insufficient_api_credits",
    )
