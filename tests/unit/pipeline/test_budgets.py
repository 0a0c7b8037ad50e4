"""The budgets: ``max_credits`` and ``max_credits_per_account`` count money at risk, per account.

Through the engine over real fake-gcs-server, scripted processors standing in for vendors.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_bgremoval.exceptions import InputRejectedError, OutOfCreditsError, TransientVendorError
from airflow_provider_bgremoval.pipeline.accounts import BreakerPolicy
from airflow_provider_bgremoval.pipeline.engine import BatchRunner
from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter
from airflow_provider_bgremoval.pipeline.planning import BatchSpec, OutputIdentity, plan_batch
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import RetryPolicy, acall_with_retry
from tests.unit.pipeline.test_engine import ScriptedProcessor, run, seed
from tests.unit.pipeline.test_failover import BalanceHook, Clock, Vendor, chain, names, run_chain

pytestmark = pytest.mark.integration


def test_budgets_stop_cleanly(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, [f"{i}.png" for i in range(10)])
    processor = ScriptedProcessor()
    _, result, _ = run(
        storage,
        BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="a/"),
        processor,
        max_images=4,
        max_concurrency=3,
    )
    assert result.counts["done"] == 4 and result.counts["pending"] == 6
    assert result.halt is not None and result.halt.reason == "max_images" and not result.halt.fatal
    processor = ScriptedProcessor(lambda n, c: Decimal("2.5"))
    _, result, _ = run(
        storage,
        BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="b/"),
        processor,
        max_credits=Decimal(7),
        max_concurrency=1,
    )
    assert result.credits_spent == Decimal("2.5") * 2  # a third image could exceed the budget


@pytest.mark.parametrize(
    "budget", [{"max_images": 3}, {"max_credits": Decimal(3)}], ids=["images", "credits"]
)
def test_a_budget_used_up_by_the_last_image_halts_nothing(buckets, budget: dict[str, Any]) -> None:
    storage, src, dst = buckets
    seed(storage, src, names(3))
    _, result, _ = run(
        storage, BatchSpec(source_bucket=src, destination_bucket=dst), ScriptedProcessor(), **budget
    )
    assert result.counts == {"done": 3} and result.halt is None


def test_per_account_budgets_spent_by_the_last_image_halt_nothing_and_read_no_balance(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(3))
    hooks = {"pixian": BalanceHook("pixian", "50"), "poof": BalanceHook("poof", "50")}
    accounts = chain(Vendor("pixian"), Vendor("poof"), budgets={"pixian": "2", "poof": "1"}, hooks=hooks)
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    assert [row["account"] for row in rows] == ["pixian_conn", "pixian_conn", "poof_conn"]
    assert result.counts == {"done": 3} and result.halt is None
    assert hooks["pixian"].reads == hooks["poof"].reads == []


def _dear(vendor: Vendor, cost: int = 3) -> Vendor:
    vendor.cost_per_image = Decimal(cost)
    return vendor


@pytest.mark.parametrize(
    "refusal",
    [
        OutOfCreditsError("no credits", vendor="pixian", status_code=402, code="out_of_credits"),
        TransientVendorError("503 after retries", vendor="pixian", status_code=503),
    ],
    ids=["out_of_credits", "outage"],
)
def test_an_image_handed_on_to_a_dearer_account_is_repriced_against_max_credits(
    batch, refusal: Exception
) -> None:
    storage, src, spec = batch
    seed(storage, src, names(6))
    primary = Vendor("pixian", lambda n, c: refusal if c >= 4 else Decimal(1))
    dearer = _dear(Vendor("poof", lambda n, c: Decimal(3)))
    result, rows = run_chain(storage, spec, chain(primary, dearer), max_concurrency=1, max_credits=Decimal(5))
    # 3 done at 1 credit; the 4th image would cost 3 on poof: 3 + 3 > 5, so it is not sent.
    assert result.credits_spent == 3 and dearer.calls == []
    assert result.halt is not None and result.halt.reason == "max_credits" and not result.halt.fatal
    handed = rows[3]
    assert (handed["status"], handed["error_code"]) == ("pending", "max_credits")
    assert "the next call on poof_conn (poof) costs 3" in handed["error_message"]
    assert "this image was not sent" in handed["error_message"]
    # it was sent to pixian, which refused it unbilled, then handed on: not sent again, nothing paid
    assert handed["error_message"].endswith(
        "this image was not sent again (nothing paid for its earlier calls)"
    )
    assert [row["status"] for row in rows] == ["done"] * 3 + ["pending"] * 3


def test_a_half_open_probe_on_a_dearer_primary_is_repriced_against_max_credits(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(3))
    clock = Clock()
    outage = TransientVendorError("503 after retries", vendor="pixian", status_code=503)
    primary = _dear(Vendor("pixian", lambda n, c: outage))

    def cheap(name: str, count: int) -> Any:
        clock.now += 10  # past the cooldown: the primary's next call is a half-open probe
        return Decimal(1)

    accounts = chain(
        primary,
        Vendor("poof", cheap),
        clock=clock,
        policy=BreakerPolicy(consecutive_failures=1, cooldown_seconds=5, max_cooldown_seconds=5),
    )
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1, max_credits=Decimal(3))
    # Image 1: the primary fails (breaker open), poof makes it for 1. Image 2 is admitted at poof's
    # cost (the primary's breaker is open) but the chain sends it as the primary's probe at 3: 1 + 3 > 3.
    assert primary.calls == ["00.png"] and result.credits_spent == 1
    assert result.halt is not None and result.halt.reason == "max_credits"
    assert [row["status"] for row in rows] == ["done", "pending", "pending"]
    assert (
        rows[1]["error_code"] == "max_credits" and "pixian_conn (pixian) costs 3" in rows[1]["error_message"]
    )
    # no handoff: 01.png was refused before any call, its row says so
    assert rows[1]["error_message"].endswith("this image was not sent (nothing paid)")
    assert accounts.primary.breaker.state == "half_open" and not accounts.primary.breaker.probing


class Paced(Vendor):
    """A vendor whose calls take a scripted time per file name."""

    def __init__(self, vendor: str, delays: dict[str, float], script: Any = None) -> None:
        super().__init__(vendor, script)
        self.delays = delays

    async def process(self, data: bytes, filename: str, stats: Any = None) -> ImageResult:
        await asyncio.sleep(self.delays.get(filename, 0.0))
        return await super().process(data, filename, stats)


def test_the_max_credits_halt_prices_each_image_in_flight_at_its_own_account(batch) -> None:
    storage, src, spec = batch
    seed(storage, src, names(4))
    outage = TransientVendorError("503 after retries", vendor="pixian", status_code=503)
    primary = Paced("pixian", {"01.png": 0.1, "02.png": 0.4}, lambda n, c: outage if n == "00.png" else None)
    dearer = _dear(Paced("poof", {"00.png": 0.6}))
    result, rows = run_chain(storage, spec, chain(primary, dearer), max_concurrency=3, max_credits=Decimal(5))
    # 00 failed on pixian and went on to poof (3 reserved); when 01 is done (1 charged), 02 is still
    # on pixian (1 reserved): 1 + 3 + 1 = 5, and the next image (1 on pixian) does not fit.
    assert result.halt is not None and result.halt.reason == "max_credits"
    assert (
        "2 in flight: 1 at 1 (pixian_conn), 1 at 3 (poof_conn); the next image costs 1" in result.halt.message
    )
    assert result.credits_spent == 5 and [row["status"] for row in rows] == ["done"] * 3 + ["pending"]


class LosesFirstReply(Vendor):
    """Retries in the real retry loop, filling the live call record as hooks do: its first reply is lost."""

    async def process(self, data: bytes, filename: str, stats: Any = None) -> ImageResult:
        attempts: list[int] = []

        async def attempt() -> ImageResult:
            attempts.append(1)
            if len(attempts) == 1:
                self.calls.append(filename)  # sent; its reply is lost
                raise TransientVendorError("read timeout", vendor=self.vendor, possibly_charged=True)
            return await Vendor.process(self, data, filename, stats)

        policy = RetryPolicy(max_attempts=3, initial_backoff=0, jitter=0)
        return await acall_with_retry(attempt, policy, stats=stats)


@pytest.mark.parametrize("secondary", [False, True], ids=["alone", "with_a_secondary"])
def test_a_retry_after_a_lost_reply_must_fit_its_accounts_own_budget(batch, secondary: bool) -> None:
    """
    ``max_credits_per_account`` bounds a retry as ``max_credits`` does: pixian (budget 1) loses the
    first reply of 00.png; the retry would put 2 at risk there, so it is refused and pixian leaves the
    chain (the lost reply stays booked to it). Alone, 00.png fails and 01.png is pending; with a
    secondary, both are done there.
    """
    storage, src, spec = batch
    seed(storage, src, names(2))
    primary = LosesFirstReply("pixian")
    vendors = (primary, Vendor("poof")) if secondary else (primary,)
    accounts = chain(*vendors, budgets={"pixian": "1"})
    result, rows = run_chain(storage, spec, accounts, max_concurrency=1)
    pixian = accounts.primary
    assert pixian.credits_spent + pixian.unit_cost() * pixian.possibly_charged <= Decimal(1)
    assert (pixian.possibly_charged, pixian.credits_spent, pixian.state) == (1, 0, "max_credits")
    assert primary.calls == ["00.png"]  # one attempt: the retry was refused
    assert result.possibly_charged == 1 and rows[0]["possibly_charged"] == 1
    if secondary:
        assert [(row["status"], row["account"]) for row in rows] == [("done", "poof_conn")] * 2
        assert rows[0]["handoffs"][0]["account"] == "pixian_conn"
    else:
        assert [row["status"] for row in rows] == ["failed", "pending"]
        assert result.halt is not None and result.halt.reason == "max_credits" and not result.halt.fatal


def test_the_runners_old_credits_at_risk_still_answers_and_warns(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, ["a.png", "b.png"])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="moved/")
    processor = ScriptedProcessor(lambda n, c: Decimal(2))

    async def go() -> tuple[Decimal, Decimal]:
        identity = OutputIdentity.of(processor)
        plan = await plan_batch(
            storage, spec, extension=processor.extension, identity=identity, limits=processor.limits
        )
        runner = BatchRunner(storage, processor, plan, ManifestWriter())
        await runner.run()
        with pytest.warns(DeprecationWarning, match=r"BatchRunner\.credits_at_risk is deprecated"):
            old = runner.credits_at_risk()
        return old, runner.budgets.credits_at_risk()

    old, new = asyncio.run(go())
    assert old == new == Decimal(4)


def test_the_engines_old_failover_metric_prefix_still_imports_and_warns() -> None:
    from airflow_provider_bgremoval.pipeline import accounts, engine

    with pytest.warns(DeprecationWarning, match=r"engine\.FAILOVER_METRIC_PREFIX is deprecated"):
        assert engine.FAILOVER_METRIC_PREFIX == accounts.FAILOVER_METRIC_PREFIX


class ChargesThenFinishesSlowly(Vendor):
    """
    Bills as Pixian does (``X-Credits-Charged``, here 2 where the cost table says 1), filling the live
    call record as the hooks do: its reply comes after ``reply[name]`` seconds, then the result takes
    ``finish[name]`` seconds more (download, local steps). ``rejects`` are refused (unbilled) at their reply.
    """

    def __init__(
        self, vendor: str, reply: dict[str, float], finish: dict[str, float], rejects: set[str]
    ) -> None:
        super().__init__(vendor, lambda n, c: Decimal(2))
        self.reply, self.finish, self.rejects = reply, finish, rejects

    async def process(self, data: bytes, filename: str, stats: Any = None) -> ImageResult:
        stats.attempts += 1
        await asyncio.sleep(self.reply.get(filename, 0.0))
        if filename in self.rejects:
            self.calls.append(filename)
            raise InputRejectedError("no foreground", vendor=self.vendor, code="unknown_foreground")
        stats.billed_reply, stats.credits_charged = True, Decimal(2)  # the reply is in: billed 2
        await asyncio.sleep(self.finish.get(filename, 0.0))
        return await super().process(data, filename, stats)


def test_a_charge_seen_on_a_reply_in_flight_prices_the_next_image_before_that_image_is_settled(batch) -> None:
    """
    max_credits=3; pixian's cost table says 1 but it bills 2. 00.png's reply (billed 2) is in and its
    result still being finished when 01.png is rejected: the next image costs 2 as well (2 + 2 > 3), so
    it is not sent. It was priced at the cost table's 1 (2 + 1 <= 3) and billed 2: 4 spent of 3.
    """
    storage, src, spec = batch
    seed(storage, src, names(3))
    vendor = ChargesThenFinishesSlowly(
        "pixian", reply={"00.png": 0.1, "01.png": 0.4}, finish={"00.png": 0.8}, rejects={"01.png"}
    )
    result, rows = run_chain(storage, spec, chain(vendor), max_concurrency=2, max_credits=Decimal(3))
    assert sorted(vendor.calls) == ["00.png", "01.png"] and result.credits_spent == 2
    status = {row["source"].rsplit("/", 1)[1]: row["status"] for row in rows}
    assert status == {"00.png": "done", "01.png": "rejected", "02.png": "pending"}
    assert result.halt is not None and result.halt.reason == "max_credits"
    assert "the next image costs 2 on pixian_conn (pixian)" in result.halt.message


class BillsZeroWhileAReplyIsLost(LosesFirstReply):
    """
    Bills 00.png 0 credits where the cost table says 1 (a reported ``X-Credits-Charged: 0``, as Pixian's
    free test calls answer), filling the live call record as the hooks do; its result then takes 0.6 s
    to finish. 01.png loses its first reply after 0.1 s and is retried in the real retry loop.
    """

    async def process(self, data: bytes, filename: str, stats: Any = None) -> ImageResult:
        if filename != "00.png":
            await asyncio.sleep(0.1)
            return await super().process(data, filename, stats)
        stats.attempts += 1
        stats.billed_reply, stats.credits_charged = True, Decimal(0)  # the reply is in: billed 0
        await asyncio.sleep(0.6)
        return await Vendor.process(self, data, filename, stats)


def test_a_reply_in_flight_billed_0_holds_0_credits_not_the_cost_table(batch) -> None:
    """
    max_credits=2, cost table 1. 00.png's reply is in, billed 0, and its result still being finished
    when 01.png's first reply is lost: 0 charged + 1 lost + 1 for the retry = 2 fits, so the retry is
    made. The reported 0 is what the engine books once 00.png is settled; reserving the cost table's 1
    for it meanwhile (3 at risk) refused the retry and halted the batch on credits never spent.
    """
    storage, src, spec = batch
    seed(storage, src, names(2))
    vendor = BillsZeroWhileAReplyIsLost("pixian", lambda n, c: Decimal(0) if n == "00.png" else None)
    result, rows = run_chain(storage, spec, chain(vendor), max_concurrency=2, max_credits=Decimal(2))
    by_name = {row["source"].rsplit("/", 1)[1]: row for row in rows}
    assert (by_name["00.png"]["status"], by_name["00.png"]["credits"]) == ("done", "0")
    assert (by_name["01.png"]["status"], by_name["01.png"]["possibly_charged"]) == ("done", 1)
    assert sorted(vendor.calls) == ["00.png", "01.png", "01.png"]  # 01.png: lost, then retried
    assert result.credits_spent == 1 and result.halt is None
