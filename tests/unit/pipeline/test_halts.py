"""Halts: the first halt wins (a fatal one over one that is not), nothing is read after a stop, and a
credits halt reads each balance once.

Through the engine over real fake-gcs-server, scripted processors standing in for vendors; the balance
endpoints are the fake vendors of :mod:`tests.support.balances` (httpx.MockTransport) or scripted hooks.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any
from unittest import mock

import httpx
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_bgremoval._compat import AirflowNotFoundException
from airflow_provider_bgremoval.exceptions import OutOfCreditsError, VendorAuthError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.pipeline.accounts import AccountChain
from airflow_provider_bgremoval.pipeline.claims import ClaimStore
from airflow_provider_bgremoval.pipeline.engine import BatchResult, BatchRunner
from airflow_provider_bgremoval.pipeline.halts import Halts
from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter
from airflow_provider_bgremoval.pipeline.planning import BatchSpec, OutputIdentity, plan_batch
from airflow_provider_bgremoval.results import Balance
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.support.balances import FakeVendors
from tests.support.connections import SleepRecorder
from tests.unit.pipeline.test_engine import ScriptedProcessor, run, seed
from tests.unit.pipeline.test_failover import BalanceHook, Vendor, chain, names, run_chain

pytestmark = pytest.mark.integration


def refused(vendor: str) -> Any:
    """A vendor script refusing every call: out of credits."""
    return lambda name, count: OutOfCreditsError("no credits", vendor=vendor, status_code=402, code="402")


def run_single(
    storage: GcsStorage,
    spec: BatchSpec,
    processor: ScriptedProcessor,
    hook: Any,
    on_runner: Any = None,
) -> BatchResult:
    """One connection (``pixian_default``) with its hook; ``on_runner`` sees the runner before it runs."""

    async def go() -> BatchResult:
        plan = await plan_batch(
            storage, spec, extension=".png", identity=OutputIdentity.of(processor), limits=processor.limits
        )
        accounts = AccountChain.single(processor, "pixian_default", hook)  # type: ignore[arg-type]
        runner = BatchRunner(storage, processor, plan, ManifestWriter(), accounts=accounts, max_concurrency=1)
        if on_runner is not None:
            on_runner(runner)
        try:
            return await runner.run()
        finally:
            if isinstance(hook, BackgroundRemovalHook):
                await hook.aclose()

    return asyncio.run(go())


def test_one_connection_out_of_credits_reads_its_balance_once_with_the_probe_timeout(
    buckets, vendors: FakeVendors, sleeper: SleepRecorder
) -> None:
    storage, src, dst = buckets
    seed(storage, src, names(4))
    vendors.set_pixian(7)
    processor = ScriptedProcessor(refused("pixian"))
    hook = BackgroundRemovalHook.get_hook("pixian_default")
    result = run_single(storage, BatchSpec(source_bucket=src, destination_bucket=dst), processor, hook)
    assert result.halt is not None and result.halt.reason == "out_of_credits" and result.halt.fatal
    assert result.halt.available == 7 and result.halt.remaining_images == 4
    assert vendors.calls("pixian") == 1 and sleeper.waits == []


def test_a_balance_read_that_times_out_is_one_request_and_leaves_the_balance_unknown(
    buckets, vendors: FakeVendors, sleeper: SleepRecorder
) -> None:
    storage, src, dst = buckets
    seed(storage, src, names(4))

    def timeout(vendor: str, count: int) -> None:
        raise httpx.ReadTimeout("the balance endpoint did not answer")

    vendors.on_request = timeout
    processor = ScriptedProcessor(refused("pixian"))
    hook = BackgroundRemovalHook.get_hook("pixian_default")
    connection_timeout = hook.get_settings().timeout
    result = run_single(storage, BatchSpec(source_bucket=src, destination_bucket=dst), processor, hook)
    # One attempt (the hook's full policy would retry it with backoff), bounded by the probe's timeout.
    assert vendors.calls("pixian") == 1 and sleeper.waits == []
    assert vendors.requests[0].extensions["timeout"]["read"] < connection_timeout
    halt = result.halt
    assert halt is not None and halt.reason == "out_of_credits" and halt.available is None
    assert halt.as_dict()["available"] is None and "accounts" not in halt.as_dict()
    op = RemoveBackgroundOperator(
        task_id="t", conn_id="pixian_default", source_bucket=src, destination_bucket=dst, gcp_conn_id=None
    )
    summary = {"manifest_uri": f"gs://{dst}/manifest.jsonl", "total": 4, "claims_elsewhere": []}
    with pytest.raises(AirflowFailException, match=r"need about 4 credits; available: unknown\)"):
        op._verdict({"ti": mock.MagicMock()}, "pixian", result, summary)  # type: ignore[arg-type]


def test_one_connection_reads_no_balance_after_a_stop(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, names(3))
    hook = BalanceHook("pixian", "5")
    box: dict[str, BatchRunner] = {}

    def stop_and_refuse(name: str, count: int) -> Exception:
        box["runner"].request_stop("terminated", "the task was terminated (SIGTERM)")
        return refused("pixian")(name, count)

    processor = ScriptedProcessor(stop_and_refuse)
    spec = BatchSpec(source_bucket=src, destination_bucket=dst)
    result = run_single(storage, spec, processor, hook, on_runner=lambda runner: box.update(runner=runner))
    assert result.halt is not None and result.halt.reason == "out_of_credits"
    assert result.interrupted == "terminated" and result.halt.available is None
    assert hook.reads == []  # the record is stored first: the task may be killed any moment


def test_out_of_credits_stops_submitting_and_marks_the_rest_pending(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, [f"{i:02d}.png" for i in range(20)])

    def script(name: str, call: int) -> Any:
        return OutOfCreditsError("no credits", vendor="fake", status_code=402) if call > 5 else None

    processor = ScriptedProcessor(script)
    hook = BalanceHook("fake", "0")
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    accounts = AccountChain.single(processor, hook=hook)  # type: ignore[arg-type]
    _, result, rows = run(storage, spec, processor, max_concurrency=1, accounts=accounts)
    assert result.counts["done"] == 5
    assert result.counts["pending"] == 15
    assert len(processor.calls) == 6  # one refused call, then nothing more was submitted
    assert result.halt is not None and result.halt.fatal and result.halt.reason == "out_of_credits"
    assert result.halt.remaining_images == 15 and result.halt.needed == 15 and result.halt.available == 0
    assert result.halt.conn_id == "default" and result.halt.as_dict()["conn_id"] == "default"
    # the accounts block says why the connection stopped (it said "active", so a run report's worst
    # state over its shards missed the one that ran dry)
    [entry] = accounts.summary()
    assert (entry["state"], entry["state_message"]) == ("out_of_credits", "[fake 402] no credits")
    assert hook.reads == [True]  # read once, as the connection test does
    # Rerun after a top-up completes exactly the remainder.
    processor2 = ScriptedProcessor()
    _, result2, _ = run(storage, spec, processor2)
    assert len(processor2.calls) == 15 and result2.counts["skipped"] == 5


def test_both_accounts_out_halts_with_every_image_pending_and_the_pooled_shortfall(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(10))
    refused = lambda vendor: lambda n, c: OutOfCreditsError("no credits", vendor=vendor, code="402")  # noqa: E731
    primary, secondary = Vendor("pixian", refused("pixian")), Vendor("poof", refused("poof"))
    secondary.cost_per_image = Decimal(2)
    hooks = {"pixian": BalanceHook("pixian", "3"), "poof": BalanceHook("poof", "4.5")}
    result, rows = run_chain(storage, spec, chain(primary, secondary, hooks=hooks), max_concurrency=1)
    assert result.counts["pending"] == 10 and result.credits_spent == 0
    assert len(primary.calls) == 1 and len(secondary.calls) == 1
    halt = result.halt
    assert halt is not None and halt.reason == "out_of_credits" and halt.fatal
    # The halt is poof's (the last account to leave): it names poof_conn and prices what is left at
    # poof's 2 credits, not at the departed primary's 1.
    assert (halt.vendor, halt.conn_id, halt.as_dict()["conn_id"]) == ("poof", "poof_conn", "poof_conn")
    assert halt.remaining_images == 10 and halt.needed == 20 and halt.available == Decimal("7.5")
    assert halt.shortfall_images == 5  # 3 at 1 credit, 2 at 2 credits: 5 of 10 covered
    assert [(a["conn_id"], a["covers"], a["needed"], a["available"]) for a in halt.accounts] == [
        ("pixian_conn", 3, "10", "3"),
        ("poof_conn", 2, "20", "4.5"),
    ]
    assert "every account of the chain is unusable" in halt.message
    assert "Pooled shortfall: 5 image(s) of 10 pending" in halt.message
    assert halt.as_dict()["accounts"][1]["state"] == "out_of_credits"
    assert {row["status"] for row in rows} == {"pending"}


class SharedBalances:
    """Balance hooks of several accounts that count how many of their reads overlap."""

    def __init__(self) -> None:
        self.reading = self.most = 0

    def hook(self, vendor: str, remaining: str) -> BalanceHook:
        shared = self

        class Hook(BalanceHook):
            async def aget_balance(self, *, probe: bool = False) -> Balance:
                shared.reading += 1
                shared.most = max(shared.most, shared.reading)
                try:
                    return await super().aget_balance(probe=probe)
                finally:
                    shared.reading -= 1

        return Hook(vendor, remaining, delay=0.05)


def test_every_account_out_reads_the_balances_once_each_concurrently_with_the_probe_timeout(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(3))
    refused = lambda vendor: lambda n, c: OutOfCreditsError("no credits", vendor=vendor, code="402")  # noqa: E731
    shared = SharedBalances()
    hooks = {v: shared.hook(v, "1") for v in ("pixian", "poof", "pixelcut")}
    refusing = [Vendor(v, refused(v)) for v in hooks]
    result, _ = run_chain(storage, spec, chain(*refusing, hooks=hooks), max_concurrency=1)
    assert result.halt is not None and result.halt.shortfall_images == 0
    assert [hook.reads for hook in hooks.values()] == [[True]] * 3  # one probe read each
    assert shared.most == 3  # all at once


@pytest.mark.parametrize("halt", ["terminated", "max_images"])
def test_a_stopped_or_budget_halted_chain_reads_no_balance_before_the_record_is_stored(
    batch, halt: str
) -> None:
    storage, src, spec = batch
    seed(storage, src, names(6))
    hooks = {"pixian": BalanceHook("pixian", "5"), "poof": BalanceHook("poof", "5")}
    accounts = chain(Vendor("pixian", delay=0.2), Vendor("poof"), hooks=hooks)

    async def go() -> Any:
        primary = accounts.primary.processor
        plan = await plan_batch(
            storage, spec, extension=".png", identity=accounts.identity, limits=primary.limits
        )
        budget = {"max_images": 2} if halt == "max_images" else {}
        runner = BatchRunner(
            storage,
            primary,
            plan,
            ManifestWriter(),
            accounts=accounts,
            max_concurrency=1,
            drain_grace=0.1,
            **budget,
        )
        if halt == "terminated":
            asyncio.get_running_loop().call_later(0.3, runner.request_stop, "terminated", "SIGTERM")
        return await runner.run()

    result = asyncio.run(go())
    assert result.halt is not None and result.halt.reason == halt
    assert result.halt.accounts == () and result.halt.shortfall_images is None
    assert "Pooled shortfall" not in result.halt.message
    assert hooks["pixian"].reads == [] and hooks["poof"].reads == []
    assert result.halt.remaining_images == result.counts["pending"] > 0


def _dearer(vendor: Vendor, cost: int) -> Vendor:
    vendor.cost_per_image = Decimal(cost)
    return vendor


def test_a_budget_halt_after_failover_prices_what_is_left_at_the_account_that_would_take_it(batch) -> None:
    """
    Pixian (1 credit) runs out at its 4th call and leaves the chain; poof (2) makes that image. The next
    image does not fit max_credits=6 (5 charged + 2): the 3 images left would go to poof, so they need
    3 x 2 = 6 credits, and the halt names poof, not the departed primary.
    """
    storage, src, spec = batch
    seed(storage, src, names(7))
    out = OutOfCreditsError("no credits", vendor="pixian", status_code=402, code="402")
    primary = Vendor("pixian", lambda n, c: out if c >= 4 else Decimal(1))
    dearer = _dearer(Vendor("poof", lambda n, c: Decimal(2)), 2)
    result, rows = run_chain(storage, spec, chain(primary, dearer), max_concurrency=1, max_credits=Decimal(6))
    assert result.credits_spent == 5 and dearer.done == ["03.png"]
    halt = result.halt
    assert halt is not None and halt.reason == "max_credits"
    assert (halt.vendor, halt.conn_id, halt.remaining_images, halt.needed) == ("poof", "poof_conn", 3, 6)
    assert "the next image costs 2 on poof_conn (poof)" in halt.message
    assert [row["status"] for row in rows] == ["done"] * 4 + ["pending"] * 3


def test_an_image_refused_by_max_credits_on_a_dearer_account_prices_what_is_left_there(batch) -> None:
    """The 4th image, handed on from pixian (out of credits) to poof at 3, does not fit max_credits=5:
    the 3 images left need 3 x 3 = 9 credits on poof (the primary's cost table said 3)."""
    storage, src, spec = batch
    seed(storage, src, names(6))
    out = OutOfCreditsError("no credits", vendor="pixian", status_code=402, code="402")
    primary = Vendor("pixian", lambda n, c: out if c >= 4 else Decimal(1))
    dearer = _dearer(Vendor("poof", lambda n, c: Decimal(3)), 3)
    result, _ = run_chain(storage, spec, chain(primary, dearer), max_concurrency=1, max_credits=Decimal(5))
    halt = result.halt
    assert halt is not None and halt.reason == "max_credits" and dearer.calls == []
    assert (halt.vendor, halt.remaining_images, halt.needed) == ("poof", 3, 9)


def test_a_halt_prices_what_is_left_at_the_largest_charge_seen_on_its_account(buckets) -> None:
    """One connection charging 2.5 where its cost table says 1: the 3 images max_images leaves need 7.5."""
    storage, src, dst = buckets
    seed(storage, src, names(5))
    processor = ScriptedProcessor(lambda n, c: Decimal("2.5"))
    spec = BatchSpec(source_bucket=src, destination_bucket=dst)
    _, result, _ = run(storage, spec, processor, max_images=2, max_concurrency=1)
    halt = result.halt
    assert halt is not None and halt.reason == "max_images"
    assert (halt.vendor, halt.remaining_images, halt.needed) == ("fake", 3, Decimal("7.5"))


def test_every_account_past_its_own_budget_halts_on_the_last_one_and_prices_what_is_left_there(
    batch,
) -> None:
    """
    pixian (1 credit, budget 1) then poof (2 credits, budget 2) each make one image; the third finds
    neither budget open: the halt is poof's, the account that left last, and the 2 images left need
    2 x 2 = 4 credits there (priced at the primary's 1 they read 2).
    """
    storage, src, spec = batch
    seed(storage, src, names(4))
    dearer = _dearer(Vendor("poof", lambda n, c: Decimal(2)), 2)
    accounts = chain(Vendor("pixian"), dearer, budgets={"pixian": "1", "poof": "2"})
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    assert result.credits_spent == 3 and [row["status"] for row in rows] == ["done"] * 2 + ["pending"] * 2
    halt = result.halt
    assert halt is not None and halt.reason == "max_credits" and not halt.fatal
    assert (halt.vendor, halt.conn_id, halt.remaining_images, halt.needed) == ("poof", "poof_conn", 2, 4)


class UnreadableHook(BalanceHook):
    """A balance read that fails outside the vendor client: its connection cannot be read any more."""

    async def aget_balance(self, *, probe: bool = False) -> Balance:
        self.reads.append(probe)
        raise AirflowNotFoundException(f"The conn_id `{self.vendor}_conn` isn't defined")


def test_a_balance_read_that_fails_outside_the_client_leaves_the_balance_unknown_not_the_halt_lost(
    batch,
) -> None:
    """Both accounts out of credits; poof's connection can no longer be read (a secrets backend down):
    the halt is kept, poof's balance unknown (the run raised the lookup error, its halt lost)."""
    storage, src, spec = batch
    seed(storage, src, names(3))
    hooks = {"pixian": BalanceHook("pixian", "1"), "poof": UnreadableHook("poof", "0")}
    accounts = chain(Vendor("pixian", refused("pixian")), Vendor("poof", refused("poof")), hooks=hooks)
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    halt = result.halt
    assert halt is not None and halt.reason == "out_of_credits" and halt.fatal
    assert [(a["conn_id"], a["available"]) for a in halt.accounts] == [
        ("pixian_conn", "1"),
        ("poof_conn", None),
    ]
    assert halt.shortfall_images is None and halt.available == 1 and hooks["poof"].reads == [True]
    assert {row["status"] for row in rows} == {"pending"}


def test_a_refusal_left_out_of_failover_on_halts_on_that_account_and_its_state_says_so(batch) -> None:
    """
    failover_on=("outage",): pixian out of credits halts the batch as one connection does (fatal, its
    balance read), nothing goes to poof, and the accounts block says pixian is out of credits (it said
    "active").
    """
    storage, src, spec = batch
    seed(storage, src, names(3))
    hooks = {"pixian": BalanceHook("pixian", "0"), "poof": BalanceHook("poof", "9")}
    secondary = Vendor("poof")
    accounts = chain(Vendor("pixian", refused("pixian")), secondary, hooks=hooks, failover_on=("outage",))
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    halt = result.halt
    assert halt is not None and (halt.reason, halt.fatal, halt.conn_id) == (
        "out_of_credits",
        True,
        "pixian_conn",
    )
    assert halt.available == 0 and hooks["pixian"].reads == [True] and hooks["poof"].reads == []
    assert halt.accounts == () and secondary.calls == [] and {row["status"] for row in rows} == {"pending"}
    states = [(entry["conn_id"], entry["state"], entry["state_message"]) for entry in accounts.summary()]
    assert states == [
        ("pixian_conn", "out_of_credits", "[pixian 402 402] no credits"),
        ("poof_conn", "active", None),
    ]


def test_a_halt_leaves_out_the_images_another_run_holds_it_does_not_pay_for(buckets) -> None:
    """
    4 images held by another run's live claims come first, then 10 on an account that runs dry at the
    6th call: the halt's remaining images and ``needed`` are the 5 this run would pay for, not 9 (the
    holder pays for its 4), and the rows agree with the manifest.
    """
    storage, src, dst = buckets
    held, mine = [f"a{i}.png" for i in range(4)], [f"b{i}.png" for i in range(10)]
    seed(storage, src, held + mine)
    spec = BatchSpec(source_bucket=src, destination_bucket=dst)
    other = ClaimStore(storage, dst, spec.internal_prefix, "dag/other_run/t/-1")
    for name in held:
        assert other.acquire(name, storage.stat(src, name).generation) is None

    def script(name: str, call: int) -> Any:
        return OutOfCreditsError("no credits", vendor="fake", status_code=402) if call > 5 else None

    processor = ScriptedProcessor(script)
    accounts = AccountChain.single(processor, hook=BalanceHook("fake", "2"))  # type: ignore[arg-type]
    claims = ClaimStore(storage, dst, spec.internal_prefix, "dag/run/t/-1")
    _, result, rows = run(storage, spec, processor, max_concurrency=1, accounts=accounts, claims=claims)
    assert result.pending_reasons == {"claimed_elsewhere": 4, "out_of_credits": 5}
    halt = result.halt
    assert halt is not None and halt.reason == "out_of_credits"
    assert (halt.remaining_images, halt.needed, halt.available) == (5, Decimal(5), Decimal(2))
    assert sum(row["error_code"] == "out_of_credits" for row in rows) == halt.remaining_images


def test_a_key_refused_after_a_budget_halt_is_the_halt_recorded_not_lost(buckets, caplog) -> None:
    """
    Two halts at once: ``max_credits`` stops submitting while a call is in flight, whose reply is then a
    refused key. The budget halt would let the task succeed with a warning; the fatal refusal must
    decide it (and the other reason is still logged), or a revoked key goes unreported until next run.
    """
    storage, src, dst = buckets
    seed(storage, src, [f"{i:02d}.png" for i in range(6)])

    def script(name: str, call: int) -> Any:
        return VendorAuthError("key refused", vendor="fake", status_code=401) if name == "01.png" else None

    class SlowRefusal(ScriptedProcessor):
        async def process(self, data: bytes, filename: str, stats: Any = None) -> Any:
            if filename == "01.png":  # refused once 00.png is stored and the budget has stopped the run
                await asyncio.sleep(0.5)
            return await super().process(data, filename, stats)

    processor = SlowRefusal(script)
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    with caplog.at_level("WARNING", logger="airflow_provider_bgremoval.pipeline.halts"):
        _, result, _ = run(storage, spec, processor, max_concurrency=2, max_credits=Decimal(2))
    assert len(processor.calls) == 2
    assert result.halt is not None
    assert (result.halt.reason, result.halt.fatal) == ("auth_failed", True)
    assert "max_credits=2 reached" in caplog.text and "key refused" in caplog.text


def test_a_second_halt_of_the_same_or_a_lesser_kind_keeps_the_first() -> None:
    halts = Halts(AccountChain.single(ScriptedProcessor()))  # type: ignore[arg-type]
    halts.record("out_of_credits", "no credits", fatal=True)
    halts.record("auth_failed", "key refused", fatal=True)
    halts.record("max_credits", "max_credits=3 reached")
    assert halts.halt is not None
    assert (halts.halt.reason, halts.halt.message) == ("out_of_credits", "no credits")
