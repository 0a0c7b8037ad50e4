"""The one retry policy, tested by time travel: waits are recorded by an injected sleep, never slept."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import pytest
from tenacity import RetryCallState, Retrying

from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InputRejectedError,
    InvalidOptionError,
    InvalidVendorResponseError,
    OutOfCreditsError,
    RateLimitedError,
    ResultDownloadError,
    TransientVendorError,
    VendorAuthError,
    VendorRequestError,
)
from airflow_provider_bgremoval.retry import (
    CallStats,
    RetryPolicy,
    _CallDecisions,
    acall_with_retry,
    call_with_retry,
    is_lost_reply,
    is_retryable,
    parse_max_retries,
    slot_wait_allowed,
)
from tests.support.connections import SleepRecorder


class Script:
    """A callable that raises the scripted errors in turn, then returns ``"ok"``."""

    def __init__(self, outcomes: Iterable[BaseException | str]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def acall(self) -> str:
        return self()


def transient(possibly_charged: bool = False) -> TransientVendorError:
    return TransientVendorError("502 bad gateway", vendor="poof", possibly_charged=possibly_charged)


def limited(retry_after: float | None = None) -> RateLimitedError:
    return RateLimitedError("slow down", vendor="pixian", status_code=429, retry_after=retry_after)


def run(script: Script, policy: RetryPolicy, seed: int = 0) -> tuple[str, SleepRecorder, CallStats]:
    sleep, stats = SleepRecorder(), CallStats()
    result = call_with_retry(script, policy, sleep=sleep, stats=stats, rng=random.Random(seed))
    return result, sleep, stats


# -- exponential backoff ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_exponential_backoff_with_jitter_bounds(seed: int) -> None:
    policy = RetryPolicy(max_attempts=7, max_wait=1000, initial_backoff=1, max_backoff=8, jitter=0.5)
    result, sleep, stats = run(Script([transient()] * 6), policy, seed)
    assert result == "ok"
    assert stats.attempts == 7
    assert len(sleep.waits) == 6
    for wait, base in zip(sleep.waits, [1, 2, 4, 8, 8, 8], strict=True):
        assert base <= wait <= base + 0.5
    assert sleep.waits == stats.waits


def test_exponential_backoff_without_jitter_is_exact() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.25, max_backoff=5, jitter=0)
    _, sleep, _ = run(Script([transient()] * 4), policy)
    assert sleep.waits == [0.25, 0.5, 1.0, 2.0]


def test_jitter_actually_varies() -> None:
    policy = RetryPolicy(max_attempts=30, max_wait=10_000, initial_backoff=1, max_backoff=1, jitter=1)
    _, sleep, _ = run(Script([transient()] * 29), policy)
    assert len({round(w, 6) for w in sleep.waits}) > 20


def test_default_policy_is_bounded() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 6
    assert policy.max_wait == 300
    assert policy.rate_limit_step is None
    with pytest.raises(TransientVendorError):
        run(Script([transient()] * 100), policy)


# -- 429: Retry-After and the linear rule ----------------------------------------------------------


def test_retry_after_is_honoured() -> None:
    policy = RetryPolicy(rate_limit_step=5)
    _, sleep, _ = run(Script([limited(7), limited(0.5)]), policy)
    assert sleep.waits == [7, 0.5]


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(max_retry_after=60, max_wait=1000)
    _, sleep, _ = run(Script([limited(3600)]), policy)
    assert sleep.waits == [60]


def test_a_transient_errors_retry_after_is_honoured_and_capped() -> None:
    unavailable = TransientVendorError("503", vendor="poof", status_code=503, retry_after=12)
    too_long = TransientVendorError("503", vendor="poof", status_code=503, retry_after=3600)
    policy = RetryPolicy(max_retry_after=60, max_wait=1000, jitter=0)
    _, sleep, _ = run(Script([unavailable, transient(), too_long]), policy)
    assert sleep.waits == [12, 0.5, 60]


def test_negative_retry_after_waits_nothing() -> None:
    _, sleep, _ = run(Script([limited(-5)]), RetryPolicy())
    assert sleep.waits == [0]


def test_linear_rate_limit_step_and_reset_after_another_error() -> None:
    policy = RetryPolicy(
        max_attempts=10, max_wait=1000, rate_limit_step=5, initial_backoff=1, max_backoff=100, jitter=0
    )
    script = Script([limited(), limited(), limited(), transient(), limited(), limited()])
    _, sleep, _ = run(script, policy)
    # 5 s x n for the n-th consecutive 429; a non-429 error resets the count.
    assert sleep.waits == [5, 10, 15, 8, 5, 10]


def test_retry_after_counts_towards_consecutive_429s() -> None:
    policy = RetryPolicy(max_attempts=10, max_wait=1000, rate_limit_step=5)
    _, sleep, _ = run(Script([limited(), limited(1), limited()]), policy)
    assert sleep.waits == [5, 1, 15]


def test_429_without_linear_rule_uses_exponential_backoff() -> None:
    policy = RetryPolicy(initial_backoff=2, max_backoff=100, jitter=0)
    _, sleep, _ = run(Script([limited(), limited(), limited()]), policy)
    assert sleep.waits == [2, 4, 8]


# -- bounds ----------------------------------------------------------------------------------------


def test_max_attempts_then_the_last_error_is_raised() -> None:
    errors = [transient(), transient(), TransientVendorError("the last one", vendor="poof")]
    script = Script(errors)
    sleep, stats = SleepRecorder(), CallStats()
    with pytest.raises(TransientVendorError) as info:
        call_with_retry(script, RetryPolicy(max_attempts=3, jitter=0), sleep=sleep, stats=stats)
    assert info.value is errors[2]
    assert script.calls == 3
    assert stats.attempts == 3
    assert len(sleep.waits) == 2  # no wait after the last attempt
    assert stats.waits == sleep.waits


def test_single_attempt_policy_never_waits() -> None:
    script = Script([transient()])
    sleep = SleepRecorder()
    with pytest.raises(TransientVendorError):
        call_with_retry(script, RetryPolicy(max_attempts=1), sleep=sleep)
    assert script.calls == 1
    assert sleep.waits == []


def test_max_wait_budget_stops_before_overrunning() -> None:
    policy = RetryPolicy(max_attempts=100, max_wait=12, rate_limit_step=5)
    script = Script([limited()] * 10)
    sleep, stats = SleepRecorder(), CallStats()
    with pytest.raises(RateLimitedError):
        call_with_retry(script, policy, sleep=sleep, stats=stats)
    # 5 (total 5) then 10 would make 15 > 12: give up instead of waiting.
    assert sleep.waits == [5]
    assert stats.waits == [5]
    assert script.calls == 2


def test_max_wait_budget_counts_retry_after() -> None:
    policy = RetryPolicy(max_attempts=100, max_wait=30, max_retry_after=120)
    sleep = SleepRecorder()
    with pytest.raises(RateLimitedError):
        call_with_retry(Script([limited(20), limited(20)]), policy, sleep=sleep)
    assert sleep.waits == [20]


# -- what is not retried ---------------------------------------------------------------------------

NOT_RETRYABLE = [
    VendorAuthError("bad key", vendor="pixelcut", status_code=401),
    OutOfCreditsError("no credits", vendor="pixian", status_code=402),
    InputRejectedError("bad image", vendor="poof", status_code=400, code="malformed_image"),
    VendorRequestError("bad request", vendor="poof", status_code=400),
    InvalidVendorResponseError("empty body", vendor="poof"),
    ResultDownloadError("expired", vendor="pixelcut", status_code=404),
    InvalidOptionError("margin", "bad"),
    ValueError("a bug"),
    KeyError("another bug"),
]


@pytest.mark.parametrize("error", NOT_RETRYABLE, ids=lambda e: type(e).__name__)
def test_non_retryable_errors_are_raised_at_once(error: Exception) -> None:
    script = Script([error])
    sleep, stats = SleepRecorder(), CallStats()
    with pytest.raises(type(error)) as info:
        call_with_retry(script, RetryPolicy(), sleep=sleep, stats=stats)
    assert info.value is error
    assert script.calls == 1
    assert sleep.waits == []
    assert not is_retryable(error)


def test_retryable_classes() -> None:
    assert is_retryable(transient())
    assert is_retryable(limited())
    assert not is_retryable(BgRemovalError("base"))


def test_non_retryable_after_retries_stops_there() -> None:
    script = Script([transient(), limited(1), OutOfCreditsError("out", vendor="pixian")])
    sleep = SleepRecorder()
    with pytest.raises(OutOfCreditsError):
        call_with_retry(script, RetryPolicy(jitter=0), sleep=sleep)
    assert script.calls == 3
    assert len(sleep.waits) == 2


# -- possibly charged ------------------------------------------------------------------------------


def test_possibly_charged_attempts_are_counted() -> None:
    script = Script([transient(True), transient(False), limited(1), transient(True)])
    _, _, stats = run(script, RetryPolicy(jitter=0))
    assert stats.attempts == 5
    assert stats.possibly_charged == 2


def test_possibly_charged_counts_the_final_failure_too() -> None:
    stats = CallStats()
    with pytest.raises(TransientVendorError):
        call_with_retry(
            Script([transient(True)] * 3), RetryPolicy(max_attempts=3), sleep=SleepRecorder(), stats=stats
        )
    assert stats.possibly_charged == 3
    assert stats.attempts == 3


# -- async -----------------------------------------------------------------------------------------


async def test_async_variant_matches_the_sync_one() -> None:
    policy = RetryPolicy(max_attempts=10, max_wait=1000, rate_limit_step=5, initial_backoff=1, jitter=0)
    script = Script([limited(), limited(), transient(True), limited(2)])
    sleep, stats = SleepRecorder(), CallStats()
    result = await acall_with_retry(script.acall, policy, sleep=sleep.asleep, stats=stats)
    assert result == "ok"
    assert sleep.waits == [5, 10, 4, 2]
    assert stats.attempts == 5
    assert stats.possibly_charged == 1


async def test_async_gives_up_and_raises_the_last_error() -> None:
    script = Script([transient()] * 5)
    sleep = SleepRecorder()
    with pytest.raises(TransientVendorError):
        await acall_with_retry(script.acall, RetryPolicy(max_attempts=2), sleep=sleep.asleep)
    assert script.calls == 2
    assert len(sleep.waits) == 1


async def test_async_non_retryable_raised_at_once() -> None:
    script = Script([VendorAuthError("bad key", vendor="poof")])
    sleep = SleepRecorder()
    with pytest.raises(VendorAuthError):
        await acall_with_retry(script.acall, RetryPolicy(), sleep=sleep.asleep)
    assert script.calls == 1
    assert sleep.waits == []


# -- the retry guard (asked before a retry after a lost reply) ------------------------------------


@dataclass
class Guard:
    """A retry guard that answers from a script (then ``default``) and records what it was asked."""

    answers: list[bool] = field(default_factory=list)
    default: bool = True
    asked: list[BaseException] = field(default_factory=list)

    def __call__(self, exc: BaseException) -> bool:
        self.asked.append(exc)
        return self.answers.pop(0) if self.answers else self.default


def guarded_run(
    script: Script, policy: RetryPolicy, guard: Guard
) -> tuple[Callable[[], str], SleepRecorder, CallStats]:
    sleep, stats = SleepRecorder(), CallStats(retry_guard=guard)
    return (lambda: call_with_retry(script, policy, sleep=sleep, stats=stats)), sleep, stats


def test_refusing_guard_stops_after_the_lost_reply_and_raises_it() -> None:
    errors = [transient(True), transient(True)]
    script, guard = Script(errors), Guard(default=False)
    call, sleep, stats = guarded_run(script, RetryPolicy(jitter=0), guard)
    with pytest.raises(TransientVendorError) as info:
        call()
    assert info.value is errors[0]
    assert script.calls == 1
    assert guard.asked == [errors[0]]
    assert stats.attempts == 1
    assert stats.possibly_charged == 1  # the lost reply stays counted
    assert sleep.waits == [] == stats.waits


def test_allowing_guard_lets_the_policy_retry() -> None:
    errors = [transient(True), transient(False), transient(True)]
    script, guard = Script(errors), Guard(default=True)
    call, sleep, stats = guarded_run(script, RetryPolicy(jitter=0, initial_backoff=1, max_backoff=10), guard)
    assert call() == "ok"
    assert guard.asked == [errors[0], errors[2]]  # once per lost reply, not for the 502
    assert stats.attempts == 4
    assert stats.possibly_charged == 2
    assert sleep.waits == [1, 2, 4]


def test_guard_refusal_after_allowed_retries_raises_that_attempts_error() -> None:
    errors = [transient(True), limited(1), transient(True), transient(True)]
    script, guard = Script(errors), Guard(answers=[True, False])
    call, sleep, stats = guarded_run(script, RetryPolicy(jitter=0, initial_backoff=1), guard)
    with pytest.raises(TransientVendorError) as info:
        call()
    assert info.value is errors[2]
    assert script.calls == 3
    assert guard.asked == [errors[0], errors[2]]
    assert stats.possibly_charged == 2
    assert sleep.waits == [1, 1]


@pytest.mark.parametrize(
    "error",
    [
        transient(False),
        TransientVendorError("connection refused", vendor="pixian"),
        TransientVendorError("503", vendor="poof", status_code=503),
        limited(2),
        limited(),
    ],
    ids=["502", "connect", "503", "429-retry-after", "429"],
)
def test_guard_is_not_consulted_after_errors_that_cannot_have_been_billed(error: Exception) -> None:
    script, guard = Script([error, error]), Guard(default=False)
    call, sleep, stats = guarded_run(script, RetryPolicy(jitter=0, rate_limit_step=1), guard)
    assert call() == "ok"
    assert guard.asked == []
    assert script.calls == 3
    assert stats.possibly_charged == 0
    assert len(sleep.waits) == 2


def test_guard_is_not_consulted_when_the_policy_stops_anyway() -> None:
    errors = [transient(True), transient(True)]
    script, guard = Script(errors), Guard(default=True)
    call, _, stats = guarded_run(script, RetryPolicy(max_attempts=2, jitter=0), guard)
    with pytest.raises(TransientVendorError) as info:
        call()
    assert info.value is errors[1]
    assert guard.asked == [errors[0]]  # not asked for a retry that max_attempts forbids
    assert stats.possibly_charged == 2


def test_guard_is_not_consulted_for_non_retryable_errors() -> None:
    error = InvalidVendorResponseError("empty body", vendor="poof", possibly_charged=True)
    script, guard = Script([error]), Guard(default=True)
    call, _, stats = guarded_run(script, RetryPolicy(), guard)
    with pytest.raises(InvalidVendorResponseError):
        call()
    assert guard.asked == []
    assert stats.possibly_charged == 0  # the hook counts a final billed non-retryable error


async def test_async_refusing_guard_stops_after_the_lost_reply() -> None:
    errors = [transient(False), transient(True), transient(True)]
    script, guard = Script(errors), Guard(default=False)
    sleep, stats = SleepRecorder(), CallStats(retry_guard=guard)
    with pytest.raises(TransientVendorError) as info:
        await acall_with_retry(script.acall, RetryPolicy(jitter=0), sleep=sleep.asleep, stats=stats)
    assert info.value is errors[1]
    assert script.calls == 2
    assert guard.asked == [errors[1]]
    assert (stats.attempts, stats.possibly_charged) == (2, 1)
    assert sleep.waits == [0.25] == stats.waits


# -- independence from tenacity's call order -------------------------------------------------------
# tenacity < 8.3 asks the stop strategy before the wait strategy (and skips the wait when it stops);
# tenacity >= 8.3 computes the wait first. The decisions must not care: here the same scripts are
# driven in both orders, and with every strategy asked twice, and must agree with each other and
# with call_with_retry on the installed tenacity.

ORDERS = ["stop_then_wait", "wait_then_stop", "each_twice"]


@dataclass
class Outcome:
    result: str | None
    raised: BaseException | None
    waits: list[float]
    attempts: int
    possibly_charged: int
    guard_asked: list[BaseException]


def drive(script: Script, policy: RetryPolicy, order: str, guard: Guard | None, seed: int) -> Outcome:
    """A retry loop in the given order over the same decisions call_with_retry hands to tenacity."""
    stats, sleep = CallStats(retry_guard=guard), SleepRecorder()
    decisions = _CallDecisions(policy, stats, random.Random(seed))
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    result: str | None = None
    raised: BaseException | None = None
    while True:
        try:
            with decisions.attempt():
                result = script()
            break
        except BaseException as exc:
            if not is_retryable(exc):
                raised = exc
                break
            if order == "stop_then_wait":
                stop = decisions.stop(state)
                wait = None if stop else decisions.wait(state)
            elif order == "wait_then_stop":
                wait = decisions.wait(state)
                stop = decisions.stop(state)
            else:
                wait, stop = decisions.wait(state), decisions.stop(state)
                assert (decisions.wait(state), decisions.stop(state)) == (wait, stop)
            if stop:
                raised = exc
                break
            assert wait is not None
            sleep(wait)  # recorded by the next attempt
    assert sleep.waits == stats.waits
    return Outcome(
        result, raised, stats.waits, stats.attempts, stats.possibly_charged, guard.asked if guard else []
    )


def real(script: Script, policy: RetryPolicy, guard: Guard | None, seed: int) -> Outcome:
    stats, sleep = CallStats(retry_guard=guard), SleepRecorder()
    result: str | None = None
    raised: BaseException | None = None
    try:
        result = call_with_retry(script, policy, sleep=sleep, stats=stats, rng=random.Random(seed))
    except BgRemovalError as exc:
        raised = exc
    assert sleep.waits == stats.waits
    return Outcome(
        result, raised, stats.waits, stats.attempts, stats.possibly_charged, guard.asked if guard else []
    )


ERRORS = [transient(True), transient(False), limited(), limited(3), limited(500)]
ORDER_CASES = {
    "max_attempts with lost replies": (
        [transient(True), transient(False), transient(True), transient(True)],
        RetryPolicy(max_attempts=3),
        None,
    ),
    "max_wait stops before overrunning": (
        [limited()] * 10,
        RetryPolicy(max_attempts=100, max_wait=12, rate_limit_step=5),
        None,
    ),
    "max_wait counts Retry-After": ([limited(20), limited(20)], RetryPolicy(max_wait=30), None),
    "guard allows then refuses": ([transient(True)] * 5, RetryPolicy(), [True, True, False]),
    "mixed, then success": (
        [limited(), transient(True), limited(1), transient(False)],
        RetryPolicy(rate_limit_step=5, max_attempts=10),
        [True],
    ),
}


@pytest.mark.parametrize("case", ORDER_CASES, ids=list(ORDER_CASES))
def test_decisions_do_not_depend_on_the_order_tenacity_asks(case: str) -> None:
    errors, policy, answers = ORDER_CASES[case]

    def outcome(run_once: Callable[[Script, Guard | None], Outcome]) -> Outcome:
        return run_once(Script(errors), Guard(answers=list(answers)) if answers is not None else None)

    expected = outcome(lambda script, guard: real(script, policy, guard, seed=7))
    for order in ORDERS:
        assert outcome(lambda script, guard, o=order: drive(script, policy, o, guard, seed=7)) == expected


@pytest.mark.parametrize("seed", range(20))
def test_random_scripts_agree_in_every_order(seed: int) -> None:
    rng = random.Random(seed)
    errors = [rng.choice(ERRORS) for _ in range(rng.randint(0, 9))]
    policy = RetryPolicy(
        max_attempts=rng.randint(1, 8),
        max_wait=rng.choice([5.0, 20.0, 300.0]),
        rate_limit_step=rng.choice([None, 2.0]),
        max_retry_after=rng.choice([1.0, 120.0]),
    )
    answers = [rng.random() < 0.7 for _ in range(10)]
    expected = real(Script(errors), policy, Guard(answers=list(answers)), seed)
    assert expected.attempts <= policy.max_attempts
    assert sum(expected.waits) <= policy.max_wait
    assert expected.possibly_charged == sum(is_lost_reply(e) for e in errors[: expected.attempts])
    for order in ORDERS:
        assert drive(Script(errors), policy, order, Guard(answers=list(answers)), seed) == expected


def test_snapshot_is_the_outcome_without_the_guard() -> None:
    stats = CallStats(attempts=2, possibly_charged=1, waits=[0.5], retry_guard=lambda exc: True)
    snapshot = stats.snapshot()
    assert (snapshot.attempts, snapshot.possibly_charged, snapshot.waits) == (2, 1, [0.5])
    assert snapshot.retry_guard is None
    stats.waits.append(1.0)
    stats.attempts += 1
    assert (snapshot.attempts, snapshot.waits) == (2, [0.5])  # detached from the live record


@pytest.mark.parametrize(
    ("value", "retries"),
    [(None, None), ("", None), ("  ", None), (0, 0), ("3", 3), (" 5 ", 5), (4.0, 4), (-1, 0), ("-2", 0)],
)
def test_max_retries_extra(value: object, retries: int | None) -> None:
    assert parse_max_retries(value) == retries


@pytest.mark.parametrize("value", ["two", "1.5", 2.5, True, float("nan"), float("inf"), [1], {}])
def test_a_bad_max_retries_extra_is_refused_naming_it(value: object) -> None:
    with pytest.raises(InvalidOptionError) as info:
        parse_max_retries(value)
    assert info.value.parameter == "max_retries"


# -- waits for a request slot come out of the call's budget ----------------------------------------


async def test_slot_waits_are_taken_from_the_wait_budget_of_the_call_that_asks() -> None:
    """A pacer asks :func:`slot_wait_allowed` inside an attempt; each call (an asyncio task, a thread)
    has its own budget, shared by its retries' waits and its slot waits, and nothing outside a call."""
    policy = RetryPolicy(max_attempts=3, max_wait=10.0, initial_backoff=1.0, jitter=0.0)
    granted: dict[str, list[float]] = {"slow": [], "quick": []}

    def attempt(name: str, asked: float) -> Callable[[], Awaitable[str]]:
        async def once() -> str:
            granted[name].append(slot_wait_allowed(asked))
            await asyncio.sleep(0)  # the other call's attempt runs meanwhile
            raise transient()

        return once

    sleeps = {name: SleepRecorder() for name in granted}
    calls = [
        acall_with_retry(attempt(name, asked), policy, sleep=sleeps[name].asleep)
        for name, asked in (("slow", 8.0), ("quick", 1.0))
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(outcome, TransientVendorError) for outcome in outcomes)
    assert granted == {"slow": [8.0, 1.0], "quick": [1.0, 1.0, 1.0]}  # slow: 8 + 1 + 1 s of retry wait
    assert sleeps["slow"].waits == [1.0] and sleeps["quick"].waits == [1.0, 2.0]
    assert slot_wait_allowed(5.0) == 5.0
