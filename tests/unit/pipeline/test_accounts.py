"""The failover chain's parts: the circuit breaker (clocked, exact), the policy, the chain's choices."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.pipeline.accounts import (
    DEFAULT_FAILOVER_ON,
    Account,
    AccountChain,
    BreakerPolicy,
    CircuitBreaker,
    parse_failover_on,
)
from airflow_provider_bgremoval.pipeline.processors import RenderProcessor


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **settings: float) -> CircuitBreaker:
    return CircuitBreaker(BreakerPolicy.create(settings), clock)


def test_opens_after_the_consecutive_failures_and_not_before() -> None:
    clock = Clock()
    cb = breaker(clock, consecutive_failures=3, cooldown_seconds=10)
    for _ in range(2):
        assert cb.allow() is True
        cb.record("transient", probe=False)
    assert cb.state == "closed"
    cb.record("neutral", probe=False)  # a rejection or a 429 neither counts nor resets
    cb.record("transient", probe=False)
    assert cb.state == "open" and cb.times_opened == 1
    assert cb.allow() is None and cb.ready_in() == 10


def test_a_success_resets_the_run_of_failures() -> None:
    cb = breaker(Clock(), consecutive_failures=3, min_calls=100)
    for outcome in ("transient", "transient", "success", "transient", "transient"):
        cb.record(outcome, probe=False)
    assert cb.state == "closed"


def test_opens_on_the_failure_rate_over_the_window_once_the_sample_is_large_enough() -> None:
    cb = breaker(Clock(), consecutive_failures=100, failure_rate=0.5, window=10, min_calls=6)
    for outcome in ("transient", "success") * 2 + ("transient",):  # 3 of 5: sample too small
        cb.record(outcome, probe=False)
    assert cb.state == "closed"
    cb.record("success", probe=False)  # 3 of 6 = 50 %: not over the rate
    assert cb.state == "closed"
    cb.record("transient", probe=False)  # 4 of 7
    assert cb.state == "open"


def test_half_opens_after_the_cooldown_with_one_probe_at_a_time_and_closes_on_success() -> None:
    clock = Clock()
    cb = breaker(clock, consecutive_failures=1, cooldown_seconds=30)
    cb.record("transient", probe=False)
    clock.now += 29.5
    assert cb.allow() is None and cb.ready_in() == pytest.approx(0.5)
    clock.now += 0.5
    assert cb.allow() is False  # the probe
    assert cb.state == "half_open" and cb.allow() is None  # one probe at a time
    cb.record("success", probe=True)
    assert cb.state == "closed" and cb.allow() is True


def test_a_failed_probe_reopens_with_the_cooldown_doubled_up_to_the_cap() -> None:
    clock = Clock()
    cb = breaker(clock, consecutive_failures=1, cooldown_seconds=10, max_cooldown_seconds=25)
    cb.record("transient", probe=False)
    cooldowns = []
    for _ in range(3):
        clock.now += cb.ready_in()
        assert cb.allow() is False
        cb.record("transient", probe=True)
        cooldowns.append(cb.ready_in())
    assert cooldowns == [20, 25, 25]
    clock.now += 25
    assert cb.allow() is False
    cb.record("neutral", probe=True)  # e.g. the probe image was rejected: no verdict, probe again
    assert cb.state == "half_open" and cb.allow() is False
    cb.record("success", probe=True)
    assert cb.state == "closed" and cb.cooldown == 10


def test_late_outcomes_of_calls_sent_before_it_opened_do_not_change_the_state() -> None:
    clock = Clock()
    cb = breaker(clock, consecutive_failures=2, cooldown_seconds=5)
    cb.record("transient", probe=False)
    cb.record("transient", probe=False)
    cb.record("success", probe=False)  # sent while closed, answered now
    assert cb.state == "open"


@pytest.mark.parametrize(
    "settings",
    [
        {"consecutive_failures": 0},
        {"failure_rate": 0},
        {"failure_rate": 1.5},
        {"cooldown_seconds": -1},
        {"cooldown_seconds": 600, "max_cooldown_seconds": 300},
        {"colldown": 3},
        {"window": "many"},
    ],
)
def test_bad_policies_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(InvalidOptionError, match="circuit_breaker"):
        BreakerPolicy.create(settings)


def test_the_documented_defaults() -> None:
    assert BreakerPolicy.create(None) == BreakerPolicy(
        consecutive_failures=5,
        failure_rate=0.5,
        window=20,
        min_calls=10,
        cooldown_seconds=30.0,
        max_cooldown_seconds=300.0,
    )
    assert DEFAULT_FAILOVER_ON == ("out_of_credits", "auth_failed", "outage")
    assert parse_failover_on(None) == DEFAULT_FAILOVER_ON
    assert parse_failover_on("outage") == ("outage",)
    with pytest.raises(InvalidOptionError, match="failover_on"):
        parse_failover_on(["out_of_credits", "rejected"])


class _Vendor(RenderProcessor):
    def __init__(self, vendor: str, cost: str = "1") -> None:
        self.vendor = vendor
        self.fingerprint = f"fp-{vendor}"
        self.cost_per_image = Decimal(cost)


def chain(clock: Clock, *vendors: str, **settings: float) -> AccountChain:
    policy = BreakerPolicy.create(settings or {"consecutive_failures": 1, "cooldown_seconds": 10})
    return AccountChain(
        [Account(f"{v}_conn", _Vendor(v), breaker=CircuitBreaker(policy, clock)) for v in vendors]
    )


def test_the_chain_prefers_the_primary_skips_spent_budgets_and_waits_for_the_earliest_probe() -> None:
    clock = Clock()
    accounts = chain(clock, "pixian", "poof")
    primary, secondary = accounts.accounts
    assert accounts.choose([], lambda a: True) == (primary, False)
    assert accounts.choose([primary], lambda a: True) == (secondary, False)
    assert accounts.choose([], lambda a: a is not primary) == (secondary, False)
    primary.breaker.record("transient", probe=False)
    assert accounts.preferred() is secondary
    assert accounts.choose([], lambda a: True) == (secondary, False)
    clock.now += 4
    secondary.breaker.record("transient", probe=False)
    assert accounts.choose([], lambda a: True) == pytest.approx(6.0)  # the primary half-opens first
    clock.now += 6
    assert accounts.choose([], lambda a: True) == (primary, True)
    primary.breaker.record("success", probe=True)
    assert accounts.preferred() is primary
    accounts.disable(primary, "out_of_credits", "no credits")
    accounts.disable(secondary, "max_credits", "budget")
    assert accounts.choose([], lambda a: True) is None and accounts.usable() == []


def test_one_account_is_never_gated_by_its_breaker() -> None:
    clock = Clock()
    accounts = chain(clock, "pixian")
    accounts.primary.breaker.record("transient", probe=False)
    assert accounts.choose([], lambda a: True) == (accounts.primary, False)


def test_the_identity_accepts_every_accounts_output_and_ids_are_unique() -> None:
    accounts = chain(Clock(), "pixian", "poof")
    assert accounts.identity.accepted == (("pixian", "fp-pixian"), ("poof", "fp-poof"))
    assert accounts.identity.vendor == "pixian"
    with pytest.raises(InvalidOptionError, match="twice"):
        AccountChain([Account("a", _Vendor("poof")), Account("a", _Vendor("poof"))])
