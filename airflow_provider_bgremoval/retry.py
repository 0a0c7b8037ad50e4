"""The retry policy: the one place that decides whether, when and how often a vendor call repeats.

* Only :attr:`BgRemovalError.retryable` errors repeat: 408, 429, 5xx, dropped connections and
  timeouts. No other 4xx is ever retried.
* A 429 with ``Retry-After`` waits what the vendor asked (capped by ``max_retry_after``).
* A 429 without it waits ``rate_limit_step × n`` for the n-th consecutive 429 when the vendor documents
  a linear rule (Pixian: 5 s, 10 s, 15 s…), otherwise the exponential backoff below.
* Everything else waits ``min(max_backoff, initial_backoff × 2^(n-1)) + U(0, jitter)``.
* At most ``max_attempts`` attempts and ``max_wait`` seconds of waiting in total; then the last error
  is raised as it is.

Waiting goes through an injectable ``sleep`` so tests travel in time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
)
from tenacity.stop import stop_base

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


@dataclass
class CallStats:
    """
    What happened while one call was retried.

    One object per image call, created by the caller and filled in as the call goes, so the caller
    sees the money at risk live (budgets) and after the call whatever it ended in.

    :param attempts: attempts made.
    :param possibly_charged: failed attempts whose request had been sent in full (billing unknown:
        lost replies).
    :param waits: seconds waited before each retry.
    :param retry_guard: asked before retrying after an attempt that may have been billed (a lost
        reply); returning False stops retrying and re-raises that attempt's error. The batch engine
        uses it to keep ``max_credits`` a hard bound.
    :param billed_reply: set by the hook when a billed request was answered 2xx (the vendor charged it,
        whatever happens to the result afterwards).
    :param credits_charged: set by the hook: what the vendor said the answered request cost, if it said.
    """

    attempts: int = 0
    possibly_charged: int = 0
    waits: list[float] = field(default_factory=list)
    retry_guard: Callable[[BaseException], bool] | None = None
    billed_reply: bool = False
    credits_charged: Decimal | None = None


class _Wait:
    """Stateful wait strategy for one call (counts consecutive 429s for linear backoff)."""

    def __init__(self, policy: RetryPolicy, stats: CallStats, rng: random.Random) -> None:
        self.policy = policy
        self.stats = stats
        self.rng = rng
        self.consecutive_429 = 0

    def __call__(self, state: RetryCallState) -> float:
        policy = self.policy
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientVendorError) and exc.possibly_charged:
            self.stats.possibly_charged += 1
        if isinstance(exc, RateLimitedError):
            self.consecutive_429 += 1
            if exc.retry_after is not None:
                wait = min(max(exc.retry_after, 0.0), policy.max_retry_after)
            elif policy.rate_limit_step is not None:
                wait = policy.rate_limit_step * self.consecutive_429
            else:
                wait = self._exponential(state.attempt_number)
        else:
            self.consecutive_429 = 0
            wait = self._exponential(state.attempt_number)
        self.stats.waits.append(wait)
        return wait

    def _exponential(self, attempt: int) -> float:
        policy = self.policy
        base = min(policy.max_backoff, policy.initial_backoff * (2 ** (attempt - 1)))
        return base + self.rng.uniform(0, policy.jitter)


class _Stop(stop_base):
    """Stop after ``max_attempts``, or when the next wait would take the total past ``max_wait``."""

    def __init__(self, policy: RetryPolicy, wait: _Wait) -> None:
        self.policy = policy
        self.wait = wait

    def __call__(self, state: RetryCallState) -> bool:
        # tenacity computes the upcoming wait before asking whether to stop.
        waits = self.wait.stats.waits
        stop = state.attempt_number >= self.policy.max_attempts or sum(waits) > self.policy.max_wait
        if stop and waits:
            waits.pop()  # that wait will not happen
        return stop


def _retrying_kwargs(policy: RetryPolicy, stats: CallStats, rng: random.Random | None) -> dict[str, object]:
    wait = _Wait(policy, stats, rng or random.Random())
    return {
        "retry": retry_if_exception(is_retryable),
        "wait": wait,
        "stop": _Stop(policy, wait),
        "reraise": True,
    }


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    stats: CallStats | None = None,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn`` under ``policy``; return its result or raise the last error."""
    stats = stats if stats is not None else CallStats()
    retrying = Retrying(sleep=sleep, **_retrying_kwargs(policy, stats, rng))  # type: ignore[arg-type]
    for attempt in retrying:
        with attempt:
            stats.attempts += 1
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
    """Await ``fn()`` under ``policy``; return its result or raise the last error."""
    stats = stats if stats is not None else CallStats()
    retrying = AsyncRetrying(sleep=sleep, **_retrying_kwargs(policy, stats, rng))  # type: ignore[arg-type]
    async for attempt in retrying:
        with attempt:
            stats.attempts += 1
            return await fn()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
