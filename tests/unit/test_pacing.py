"""The pacer on a fake clock: spacing, slow start, multiplicative decrease, additive increase, convergence."""

from __future__ import annotations

import collections
import heapq
import itertools
import random
from collections.abc import Callable

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError, TransientVendorError
from airflow_provider_bgremoval.pacing import ManualClock, Pacer, PacingPolicy, parse_requests_per_second
from airflow_provider_bgremoval.retry import RetryPolicy, acall_with_retry, call_with_retry


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("  ", None), ("5", 5.0), (2.5, 2.5), (0, 0.0), ("0", 0.0)],
)
def test_requests_per_second_extra(value: object, expected: float | None) -> None:
    assert parse_requests_per_second(value) == expected


@pytest.mark.parametrize("value", ["fast", -1, "-0.5", True, "inf", "nan", [5]])
def test_requests_per_second_extra_rejects_what_is_not_a_rate(value: object) -> None:
    with pytest.raises(InvalidOptionError, match="requests_per_second"):
        parse_requests_per_second(value)


def _take(pacer: Pacer, clock: ManualClock) -> float:
    """Wait for a slot the way the hook does; return when it was taken."""
    while (seconds := pacer.wait_time()) > 0:
        clock.sleep(seconds)
    return clock.now()


def test_the_first_rate_is_a_share_of_the_cap_spaced_evenly_in_whole_requests_per_window() -> None:
    clock = ManualClock()
    pacer = Pacer(PacingPolicy(requests_per_second=16), clock)
    assert pacer.rate == 2.0  # initial_fraction 1/8
    times = [_take(pacer, clock) for _ in range(5)]
    assert times[0] == 0.0
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([1.03 / 2] * 4)  # 2 per 1.03 s


@pytest.mark.parametrize(
    ("rate", "interval"),
    [
        (0.5, 2.0),
        (0.9, 1 / 0.9),
        (1.0, 1.03),
        (1.5, 1.03),
        (1.9, 1.03),
        (1.95, 1.03 / 2),
        (9.6, 1.03 / 9),
        (9.71, 1.03 / 10),
        (10, 1.03 / 10),
    ],
)
def test_the_interval_is_a_whole_number_of_requests_per_window(rate: float, interval: float) -> None:
    assert Pacer(PacingPolicy(requests_per_second=10), ManualClock()).interval(rate) == pytest.approx(
        interval
    )


@pytest.mark.parametrize("rate", [0.3, 0.97, 1.0, 1.3, 1.95, 2.6, 4.2, 7.77, 10.0])
def test_no_vendor_second_holds_more_than_the_whole_number_per_window(rate: float) -> None:
    """Whatever a pacer's rate, any one-second interval holds at most ``int(rate · window)`` of its
    requests (at least 1): so hooks sharing an account add up per second as whole requests."""
    clock = ManualClock()
    pacer = Pacer(PacingPolicy(requests_per_second=rate, initial_fraction=1.0), clock)
    times = [_take(pacer, clock) for _ in range(200)]
    most = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert most == max(1, int(rate * 1.03))


def test_slow_start_until_the_first_429_then_additive_increase() -> None:
    clock = ManualClock()
    policy = PacingPolicy(requests_per_second=10)
    pacer = Pacer(policy, clock)
    pacer.on_success(paced=False)
    assert pacer.rate == 1.25  # a hook that is not held back by its rate keeps it
    pacer.on_success(paced=True)
    assert pacer.rate == pytest.approx(1.25 + policy.slow_start * 1.25)
    pacer.on_rate_limited(sent_at=clock.now())
    cut = pacer.rate
    assert cut == pytest.approx((1.25 + 0.25) * policy.decrease)
    pacer.on_success(paced=True)
    assert pacer.rate == pytest.approx(cut + policy.increase * (10 / 8) / 10)  # the least step: limit / 8
    for _ in range(200):
        pacer.on_success(paced=True)
    before = pacer.rate
    assert before is not None and before > 10 / 8
    pacer.on_success(paced=True)
    assert pacer.rate == pytest.approx(before + policy.increase * before / 10)  # rate² / limit per second


def test_the_rate_never_exceeds_the_cap() -> None:
    pacer = Pacer(PacingPolicy(requests_per_second=4, initial_fraction=1.0), ManualClock())
    for _ in range(50):
        pacer.on_success(paced=True)
    assert pacer.rate == 4
    slow = Pacer(PacingPolicy(requests_per_second=0.02), ManualClock())  # under min_rate: the cap wins
    assert slow.rate == 0.02
    slow.on_rate_limited(slow.clock.now())
    assert slow.rate == 0.02


def test_a_429_cuts_once_for_the_requests_sent_before_the_cut() -> None:
    clock = ManualClock()
    pacer = Pacer(PacingPolicy(requests_per_second=10, initial_fraction=1.0), clock)
    sent = [_take(pacer, clock) for _ in range(4)]
    pacer.on_rate_limited(sent[0])
    assert pacer.rate == pytest.approx(7.0)
    for earlier in sent[1:]:  # in flight at the old rate when the cut came
        pacer.on_rate_limited(earlier)
    assert pacer.rate == pytest.approx(7.0)
    pacer.on_rate_limited(_take(pacer, clock))  # sent at the new rate: another cut
    assert pacer.rate == pytest.approx(4.9)


def test_the_rate_has_a_floor() -> None:
    clock = ManualClock()
    pacer = Pacer(PacingPolicy(requests_per_second=10), clock)
    for _ in range(60):
        pacer.on_rate_limited(_take(pacer, clock))
    assert pacer.rate == pytest.approx(10 / 64)  # min_fraction of the limit, above min_rate (0.1)


def test_retry_after_holds_every_request() -> None:
    clock = ManualClock()
    pacer = Pacer(PacingPolicy(requests_per_second=10, initial_fraction=1.0), clock)
    pacer.on_success(paced=True)
    pacer.on_rate_limited(_take(pacer, clock), retry_after=12.0)
    assert pacer.wait_time() == 12.0
    clock.advance(12.0)
    assert pacer.wait_time() == 0.0


def test_without_a_cap_the_pacer_is_off_until_the_first_429() -> None:
    clock = ManualClock()
    pacer = Pacer(PacingPolicy(), clock)
    for _ in range(20):
        assert pacer.wait_time() == 0.0
        clock.advance(0.05)  # 20 per second
    assert pacer.rate is None
    pacer.on_rate_limited(clock.now())
    assert pacer.rate == pytest.approx(20 * 0.7)  # what it was sending in the last second, cut
    assert pacer.wait_time() > 0


class _TokenBucket:
    """A vendor counting in a token bucket: ``limit`` per second, at most ``limit`` saved."""

    def __init__(self, limit: float) -> None:
        self.limit, self.tokens, self.refilled = limit, limit, 0.0

    def admit(self, when: float) -> bool:
        self.tokens, self.refilled = min(self.limit, self.tokens + (when - self.refilled) * self.limit), when
        accepted = self.tokens >= 1
        self.tokens -= accepted
        return accepted


class _SlidingWindow:
    """A vendor counting the accepted requests of the last second (the sandbox's default)."""

    def __init__(self, limit: float) -> None:
        self.limit, self.accepted = limit, collections.deque[float]()

    def admit(self, when: float) -> bool:
        while self.accepted and when - self.accepted[0] >= 1.0:
            self.accepted.popleft()
        if len(self.accepted) >= self.limit:
            return False
        self.accepted.append(when)
        return True


@pytest.mark.parametrize("vendor", [_TokenBucket, _SlidingWindow])
def test_several_pacers_with_no_shared_state_converge_under_the_limit(
    vendor: Callable[[float], _TokenBucket | _SlidingWindow],
) -> None:
    """
    Eight simulated shards (one pacer each, 16 workers, 300-400 ms calls) against a 10 req/s
    account, counted as a token bucket or as a sliding one-second window: the 429s drive the sum of
    their rates down to the limit, where it stays (the goals of the rate-limit benchmark).
    """
    limit, shards, seconds = 10.0, 8, 120.0
    clock, rng = ManualClock(), random.Random(7)
    pacers = [Pacer(PacingPolicy(requests_per_second=limit), clock) for _ in range(shards)]
    outcomes = _simulate(pacers, clock, rng, vendor(limit).admit, seconds)
    accepted_late = sum(1 for t, ok in outcomes if ok and t >= seconds / 2)
    rejected_late = sum(1 for t, ok in outcomes if not ok and t >= seconds / 2)
    assert accepted_late / (seconds / 2) >= 0.9 * limit  # the account is used
    assert rejected_late / (accepted_late + rejected_late) <= 0.05  # and hardly ever over-asked
    assert sum(p.rate or 0 for p in pacers) < 3 * limit  # from 8 x 10 = 80 requests/s allowed


def _simulate(
    pacers: list[Pacer],
    clock: ManualClock,
    rng: random.Random,
    admit: Callable[[float], bool],
    seconds: float,
) -> list[tuple[float, bool]]:
    """A discrete-event run: each pacer's workers ask for slots, the vendor admits or answers 429."""

    events: list[tuple[float, int, int, bool]] = []  # (time, order, pacer, waited)
    order = 0
    for index in range(len(pacers)):
        for _ in range(16):
            order += 1
            heapq.heappush(events, (rng.uniform(0, 0.5), order, index, False))
    outcomes: list[tuple[float, bool]] = []
    while events and events[0][0] < seconds:
        when, _, index, waited = heapq.heappop(events)
        clock.time = when
        pacer = pacers[index]
        if (wait := pacer.wait_time()) > 0:
            order += 1
            heapq.heappush(events, (when + wait, order, index, True))
            continue
        accepted = admit(when + rng.uniform(0, 0.02))  # the way to the vendor takes 0-20 ms
        outcomes.append((when, accepted))
        if accepted:
            pacer.on_success(paced=waited)
            done = when + rng.uniform(0.3, 0.4)
        else:
            pacer.on_rate_limited(when)
            done = when + 0.25 + rng.uniform(0, 0.25)  # the retry policy's first wait
        order += 1
        heapq.heappush(events, (done, order, index, False))
    return outcomes


@pytest.mark.parametrize("cap", [10.0, None])
def test_a_hold_stops_every_request_without_changing_the_rate(cap: float | None) -> None:
    # a 503's Retry-After: the service is away, whatever the pacer's rate (none yet without a cap)
    clock = ManualClock()
    pacer = Pacer(PacingPolicy(requests_per_second=cap), clock)
    rate = pacer.rate
    _take(pacer, clock)
    pacer.hold(30.0)
    assert pacer.wait_time() == 30.0
    assert pacer.rate == rate
    clock.advance(30.0)
    assert pacer.wait_time() == 0.0


# -- the pacer's waits come out of the call's wait budget ------------------------------------------


def _held_attempt(pacer: Pacer, clock: ManualClock) -> Callable[[], str]:
    """An attempt the way the hook makes it: its slot first; meanwhile another image's 503 held the
    pacer for two minutes (``Retry-After`` capped at the policy's ``max_retry_after``); then a 502."""

    def attempt() -> str:
        pacer.hold(120.0)  # another image's reply came back while this one waited for its retry
        _take(pacer, clock)
        raise TransientVendorError("502 bad gateway", vendor="pixelcut", status_code=502)

    return attempt


def test_a_call_s_slot_waits_and_retry_waits_stay_within_the_policy_s_wait_budget() -> None:
    """The claim hold counts ``max_wait`` of waiting in a call: the pacer's waits before each attempt
    (holds set by the hook's other images, their rate) are waiting too. Uncounted, six attempts each held
    two minutes by other images' 503s waited 728 s in all, past the 300 s budget, holding the claim."""
    clock, policy = ManualClock(), RetryPolicy(max_attempts=6, max_wait=300.0)
    pacer = Pacer(PacingPolicy(requests_per_second=5), clock)
    with pytest.raises(TransientVendorError):
        call_with_retry(_held_attempt(pacer, clock), policy, sleep=clock.sleep, rng=random.Random(0))
    assert clock.now() <= policy.max_wait + 1e-6


async def test_an_async_call_s_slot_waits_stay_within_the_wait_budget() -> None:
    clock, policy = ManualClock(), RetryPolicy(max_attempts=6, max_wait=300.0)
    attempt = _held_attempt(Pacer(PacingPolicy(), clock), clock)

    async def aattempt() -> str:
        return attempt()

    with pytest.raises(TransientVendorError):
        await acall_with_retry(aattempt, policy, sleep=clock.asleep, rng=random.Random(0))
    assert clock.now() <= policy.max_wait + 1e-6


def test_a_slot_wait_past_the_call_s_budget_lets_the_request_go_and_keeps_the_others_held() -> None:
    """Once the call's budget is spent its request goes (a held vendor answers 503 or 429, not billed, and
    the call ends there); the hold still keeps the hook's other requests back."""
    clock = ManualClock()
    pacer = Pacer(PacingPolicy(), clock)
    sent: list[float] = []

    def attempt() -> str:
        pacer.hold(1000.0)
        sent.append(_take(pacer, clock))
        return "ok"

    assert call_with_retry(attempt, RetryPolicy(max_wait=30.0), sleep=clock.sleep) == "ok"
    assert sent == [30.0]
    assert pacer.wait_time() == 970.0  # outside a call: the hold as it was
