"""The retry policy: the one place that decides whether, when and how often a vendor call repeats.

* Only :attr:`BgRemovalError.retryable` errors repeat: 408, 429, 5xx, dropped connections and
  timeouts. No other 4xx is ever retried.
* A 429 with ``Retry-After`` waits what the vendor asked (capped by ``max_retry_after``).
* A 429 without it waits ``rate_limit_step × n`` for the n-th consecutive 429 when the vendor documents
  a linear rule (Pixian: 5 s, 10 s, 15 s…), otherwise the exponential backoff below.
* Everything else waits ``min(max_backoff, initial_backoff × 2^(n-1)) + U(0, jitter)``.
* At most ``max_attempts`` attempts and ``max_wait`` seconds of waiting in total; then the last error
  is raised as it is.
* Before a retry after a lost reply (an attempt the vendor may have billed), the caller's
  :attr:`CallStats.retry_guard` may refuse it; then that attempt's error is raised as it is.

Waiting goes through an injectable ``sleep`` so tests travel in time instead of sleeping.

tenacity runs the loop, but every decision is made here, from what this module recorded itself:
attempts and lost replies are counted as each attempt ends (in the attempt loop), the wait strategy
only reads that record, and the stop decides from the attempt count and the waits actually slept.
Nothing depends on the order in which tenacity consults its wait and stop strategies (which changed
in tenacity 8.3).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TypedDict, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
)
from tenacity.retry import retry_base

from airflow_provider_bgremoval.exceptions import BgRemovalError, RateLimitedError, TransientVendorError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """
    How a vendor call is retried.

    :param max_attempts: attempts in total, the first one included.
    :param max_wait: seconds of waiting between attempts, in total, before giving up.
    :param initial_backoff: first exponential wait in seconds.
    :param max_backoff: cap of one exponential wait.
    :param jitter: random seconds (0..jitter) added to exponential waits.
    :param rate_limit_step: linear step for consecutive 429s without ``Retry-After`` (``None``: use
        the exponential backoff).
    :param max_retry_after: cap on a vendor's ``Retry-After``.
    """

    max_attempts: int = 6
    max_wait: float = 300.0
    initial_backoff: float = 0.25
    max_backoff: float = 5.0
    jitter: float = 0.25
    rate_limit_step: float | None = None
    max_retry_after: float = 120.0

    def with_overrides(
        self, *, max_attempts: int | None = None, max_wait: float | None = None
    ) -> RetryPolicy:
        """A copy with connection-level overrides applied."""
        return RetryPolicy(
            max_attempts=self.max_attempts if max_attempts is None else max(1, int(max_attempts)),
            max_wait=self.max_wait if max_wait is None else float(max_wait),
            initial_backoff=self.initial_backoff,
            max_backoff=self.max_backoff,
            jitter=self.jitter,
            rate_limit_step=self.rate_limit_step,
            max_retry_after=self.max_retry_after,
        )


def is_retryable(exc: BaseException) -> bool:
    """True for errors the policy may repeat."""
    return isinstance(exc, BgRemovalError) and exc.retryable


def is_lost_reply(exc: BaseException) -> bool:
    """True for a failed attempt the vendor may have billed: the request was sent, the reply lost."""
    return isinstance(exc, TransientVendorError) and exc.possibly_charged


@dataclass
class CallStats:
    """
    What happened while one call was retried: the call's outcome, one name per fact end to end.

    One object per image call, created by the caller and filled in as the call goes, so the caller
    sees the money at risk live (budgets) and after the call whatever it ended in. The hooks attach
    a :meth:`snapshot` of it to what the call ends in: ``ImageResult.call`` and
    ``BgRemovalError.call``.

    :param attempts: attempts made.
    :param possibly_charged: failed attempts whose request had been sent in full (billing unknown:
        lost replies).
    :param waits: seconds actually slept before each retry.
    :param retry_guard: asked before retrying after an attempt that may have been billed (a lost
        reply); returning False stops retrying and re-raises that attempt's error. Asked only when the
        policy would otherwise retry, once per such retry, never after an error that cannot have been
        billed; an exception it raises propagates to the caller. The batch engine uses it to keep
        ``max_credits`` a hard bound.
    :param billed_reply: set by the hook when a billed request was answered 2xx (the vendor charged it,
        whatever happens to the result afterwards).
    :param credits_charged: set by the hook: what the vendor said the answered request cost, if it said.
    :param attempt_in_flight: True while an attempt is under way (and after it was cancelled): its
        request may be with the vendor.
    """

    attempts: int = 0
    possibly_charged: int = 0
    waits: list[float] = field(default_factory=list)
    retry_guard: Callable[[BaseException], bool] | None = None
    billed_reply: bool = False
    credits_charged: Decimal | None = None
    attempt_in_flight: bool = False

    def snapshot(self) -> CallStats:
        """The outcome as it stands, detached from the caller: a copy without the retry guard."""
        return replace(self, waits=list(self.waits), retry_guard=None)


class _TenacityStrategies(TypedDict):
    retry: retry_base
    wait: Callable[[RetryCallState], float]
    stop: Callable[[RetryCallState], bool]
    reraise: bool


class _CallDecisions:
    """
    The retry decisions of one call, shared by :func:`call_with_retry` and :func:`acall_with_retry`.

    The record changes only in :meth:`attempt` (as an attempt ends) and in the sleep wrappers (once a
    wait was slept). :meth:`wait` and :meth:`stop`, which tenacity calls in a version-dependent order
    (stop first before 8.3, wait first since), only read it; the stop also remembers the retry guard's
    answer, so the guard is asked at most once per retry however often the stop is consulted.

    :param policy: the retry policy.
    :param stats: the caller's statistics, updated live.
    :param rng: source of the jitter.
    """

    def __init__(self, policy: RetryPolicy, stats: CallStats, rng: random.Random) -> None:
        self.policy = policy
        self.stats = stats
        self.rng = rng
        self.attempts = 0  # of this call (``stats`` may be shared with an earlier call)
        self.slept = 0.0  # seconds actually slept between this call's attempts
        self.consecutive_429 = 0
        self.last_error: BaseException | None = None
        self.jitter_sample = 0.0  # drawn once per failed attempt, so every read of the wait agrees
        self.guard_answers: dict[int, bool] = {}  # attempt number -> retry allowed (asked once)

    # -- recording (the attempt loop and the sleep) --------------------------------------------
    @contextmanager
    def attempt(self) -> Iterator[None]:
        """Wrap one attempt: count it and, when it fails, record what the next decisions need."""
        self.attempts += 1
        self.stats.attempts += 1
        self.stats.attempt_in_flight = True
        try:
            yield
        except BaseException as exc:
            # A cancellation (the batch giving up on the call) leaves the attempt marked in flight:
            # its request may have reached the vendor.
            self.stats.attempt_in_flight = not isinstance(exc, Exception)
            self._record_failure(exc)
            raise
        self.stats.attempt_in_flight = False

    def _record_failure(self, exc: BaseException) -> None:
        self.last_error = exc
        if is_lost_reply(exc):
            self.stats.possibly_charged += 1
        self.consecutive_429 = self.consecutive_429 + 1 if isinstance(exc, RateLimitedError) else 0
        self.jitter_sample = self.rng.uniform(0, self.policy.jitter) if is_retryable(exc) else 0.0

    def _record_sleep(self, seconds: float) -> None:
        self.slept += float(seconds)
        self.stats.waits.append(float(seconds))

    def sleeping_with(self, sleep: Callable[[float], None]) -> Callable[[float], None]:
        """``sleep``, recording each wait once it was slept."""

        def recorded_sleep(seconds: float) -> None:
            sleep(seconds)
            self._record_sleep(seconds)

        return recorded_sleep

    def asleeping_with(self, sleep: Callable[[float], Awaitable[None]]) -> Callable[[float], Awaitable[None]]:
        """Async :meth:`sleeping_with`."""

        async def recorded_sleep(seconds: float) -> None:
            await sleep(seconds)
            self._record_sleep(seconds)

        return recorded_sleep

    # -- decisions (read-only, in any order) ---------------------------------------------------
    def next_wait(self) -> float:
        """Seconds to wait after the attempt that just failed (a pure function of the record)."""
        policy, exc = self.policy, self.last_error
        if isinstance(exc, RateLimitedError):
            if exc.retry_after is not None:
                return min(max(exc.retry_after, 0.0), policy.max_retry_after)
            if policy.rate_limit_step is not None:
                return policy.rate_limit_step * self.consecutive_429
        base = min(policy.max_backoff, policy.initial_backoff * 2.0 ** (self.attempts - 1))
        return base + self.jitter_sample

    def wait(self, retry_state: RetryCallState) -> float:
        """tenacity's wait strategy."""
        return self.next_wait()

    def stop(self, retry_state: RetryCallState) -> bool:
        """
        tenacity's stop strategy: stop after ``max_attempts``, before a wait that would take the
        waiting past ``max_wait``, or when the retry guard refuses a retry after a lost reply.
        """
        policy = self.policy
        if self.attempts >= policy.max_attempts or self.slept + self.next_wait() > policy.max_wait:
            return True
        return not self._retry_allowed_by_guard()

    def _retry_allowed_by_guard(self) -> bool:
        guard, exc = self.stats.retry_guard, self.last_error
        if guard is None or exc is None or not is_lost_reply(exc):
            return True
        if self.attempts not in self.guard_answers:  # the guard may reserve budget: ask it once
            self.guard_answers[self.attempts] = bool(guard(exc))
        return self.guard_answers[self.attempts]

    def tenacity_kwargs(self) -> _TenacityStrategies:
        """The strategies handed to tenacity."""
        return _TenacityStrategies(
            retry=retry_if_exception(is_retryable), wait=self.wait, stop=self.stop, reraise=True
        )


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    stats: CallStats | None = None,
    rng: random.Random | None = None,
) -> T:
    """
    Call ``fn`` under ``policy``; return its result or raise the last error.

    :param fn: one attempt.
    :param policy: the retry policy.
    :param sleep: waits between attempts (tests record instead of sleeping).
    :param stats: filled in as the call goes (attempts, lost replies, waits); its ``retry_guard`` is
        asked before a retry after a lost reply.
    :param rng: source of the jitter.
    """
    decisions = _CallDecisions(policy, stats if stats is not None else CallStats(), rng or random.Random())
    retrying = Retrying(sleep=decisions.sleeping_with(sleep), **decisions.tenacity_kwargs())
    for attempt in retrying:
        with attempt, decisions.attempt():
            return fn()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


async def acall_with_retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    stats: CallStats | None = None,
    rng: random.Random | None = None,
) -> T:
    """
    Await ``fn()`` under ``policy``; return its result or raise the last error.

    :param fn: one attempt.
    :param policy: the retry policy.
    :param sleep: waits between attempts (tests record instead of sleeping).
    :param stats: as for :func:`call_with_retry`.
    :param rng: source of the jitter.
    """
    decisions = _CallDecisions(policy, stats if stats is not None else CallStats(), rng or random.Random())
    retrying = AsyncRetrying(sleep=decisions.asleeping_with(sleep), **decisions.tenacity_kwargs())
    async for attempt in retrying:
        with attempt, decisions.attempt():
            return await fn()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
