"""The retry policy: whether, when and how often a vendor call repeats (see docs/retry-and-errors.md)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception

from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InvalidOptionError,
    RateLimitedError,
    TransientVendorError,
)

if TYPE_CHECKING:
    from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook

T = TypeVar("T")

#: Seconds of an image's claim kept besides its vendor call: the source's read before it and the
#: output's store after it (GCS requests of a few seconds each, with their own retries).
STORE_ALLOWANCE_SECONDS = 240.0
#: The shortest claim lease (``claim_lease``), and the least of it the engine keeps in hand for a call:
#: the longest :class:`ClaimHold` on the vendors' default settings for a result that comes in the reply
#: (Pixian: 7 attempts of up to 180 s, 300 s of waits, then :data:`STORE_ALLOWANCE_SECONDS`: 1800 s).
#: A vendor's result download (Pixelcut's: 2280 s) and a connection's ``timeout`` and ``max_retries``
#: extras make a hold longer, checked when the task starts (:func:`lease_margin`).
LEASE_MARGIN_SECONDS = 1800.0


@dataclass(frozen=True)
class RetryPolicy:
    """
    How a vendor call is retried.

    :param max_attempts: attempts in total, the first one included.
    :param max_wait: seconds of waiting in a call, in total, before giving up: between attempts, and
        for a request slot before each of them (:meth:`~airflow_provider_bgremoval.pacing.Pacer.wait_time`,
        :func:`slot_wait_allowed`).
    :param initial_backoff: first exponential wait in seconds.
    :param max_backoff: cap of one exponential wait.
    :param jitter: random seconds (0..jitter) added to exponential waits.
    :param rate_limit_step: linear step for consecutive 429s without ``Retry-After`` (``None``: exponential).
    :param max_retry_after: cap on a vendor's ``Retry-After``.
    """

    max_attempts: int = 6
    max_wait: float = 300.0
    initial_backoff: float = 0.25
    max_backoff: float = 5.0
    jitter: float = 0.25
    rate_limit_step: float | None = None
    max_retry_after: float = 120.0


def parse_max_retries(value: Any) -> int | None:
    """
    The ``max_retries`` connection extra: retries after the first attempt, a whole number (a negative
    one reads as 0: a single attempt), or empty.

    :param value: the extra's value (a number, or its text from a URI).
    :return: the retries; ``None`` when unset (the vendor's policy applies).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    whole = not isinstance(value, bool) and not (isinstance(value, float) and not value.is_integer())
    try:
        number = int(value) if whole else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise InvalidOptionError(
            "max_retries", f"{value!r} is not a whole number of retries (0: a single attempt)"
        )
    return max(0, number)


@dataclass(frozen=True)
class ClaimHold:
    """
    The longest one image may hold its claim on a connection before its output is stored: every attempt
    of its call running to the idle timeout, the policy's whole wait budget (retries' waits and request
    slots'), the same again for a result download when the vendor may answer with a result URL, then
    the read and the store (:data:`STORE_ALLOWANCE_SECONDS`). A claim is not renewed: its lease must
    outlast this.

    :param conn_id: the vendor connection.
    :param policy: its effective retry policy.
    :param timeout: its idle timeout in seconds.
    :param drivers: the connection's settings that lengthen it past the vendor's defaults
        (``timeout``, ``max_retries``).
    :param downloads: a call may be followed by a result download retried under the same policy
        (the vendor spec's ``result_download``).
    """

    conn_id: str
    policy: RetryPolicy
    timeout: float
    drivers: tuple[str, ...] = ()
    downloads: bool = False

    @classmethod
    def of(cls, hook: BackgroundRemovalHook[Any]) -> ClaimHold:
        """
        The hold on ``hook``'s connection, from its settings (the connection is read unless it was; no
        vendor call) and its effective retry policy (``max_retries`` applied).

        :param hook: the vendor hook.
        """
        timeout, policy = hook.get_settings().timeout, hook.retry_policy
        spec = hook.wire_class.spec
        longer = {
            "timeout": timeout > spec.default_timeout,
            "max_retries": policy.max_attempts > spec.retry_policy.max_attempts,
        }
        drivers = tuple(name for name, longer_ in longer.items() if longer_)
        return cls(hook.conn_id, policy, timeout, drivers, downloads=spec.result_download)

    @property
    def seconds(self) -> float:
        """The hold in seconds."""
        sequence = self.policy.max_attempts * self.timeout + self.policy.max_wait
        return sequence * (2 if self.downloads else 1) + STORE_ALLOWANCE_SECONDS

    def __str__(self) -> str:
        retries = self.policy.max_attempts - 1
        retried = (
            f"its max_retries extra: {retries}" if "max_retries" in self.drivers else f"max_retries {retries}"
        )
        timed = "its timeout extra" if "timeout" in self.drivers else "timeout"
        twice = ", for the call and again for its result download (a result URL)" if self.downloads else ""
        return (
            f"connection {self.conn_id!r}: {retries + 1} attempt(s) ({retried}) of up to {self.timeout:g} s "
            f"each ({timed}) and {self.policy.max_wait:g} s of waits{twice}, then "
            f"{STORE_ALLOWANCE_SECONDS:g} s for the read and the store"
        )


class LeaseMargin(NamedTuple):
    """Seconds of a claim's lease a call needs in hand, and the hold that sets them (``None``: the floor)."""

    seconds: float
    hold: ClaimHold | None


def lease_margin(holds: Iterable[ClaimHold]) -> LeaseMargin:
    """
    The least of its claim's lease an image keeps in hand for a call, and the shortest ``claim_lease``:
    the longest of ``holds`` (a run's connections), never under :data:`LEASE_MARGIN_SECONDS`.

    :param holds: the holds of the run's connections (none: the floor).
    """
    longest = max(holds, key=lambda hold: hold.seconds, default=None)
    if longest is None or longest.seconds <= LEASE_MARGIN_SECONDS:
        return LeaseMargin(LEASE_MARGIN_SECONDS, None)
    return LeaseMargin(longest.seconds, longest)


def is_retryable(exc: BaseException) -> bool:
    """True for errors the policy may repeat."""
    return isinstance(exc, BgRemovalError) and exc.retryable


def is_lost_reply(exc: BaseException) -> bool:
    """True for a failed attempt the vendor may have billed: the request was sent, the reply lost."""
    return isinstance(exc, TransientVendorError) and exc.possibly_charged


@dataclass
class CallStats:
    """
    One call's retry outcome, filled in live; the hooks attach a :meth:`snapshot` to the result or error.

    :param attempts: attempts made.
    :param possibly_charged: lost replies: failed attempts whose request had been sent in full.
    :param waits: seconds slept before each retry.
    :param retry_guard: asked once before a retry after a lost reply; False re-raises that error.
    :param billed_reply: set by the hook when a billed request was answered 2xx.
    :param credits_charged: set by the hook: what the vendor said the answered request cost.
    :param attempt_in_flight: True while an attempt's request may be out (and after it was cancelled then).
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


#: The retried call whose attempt runs in this context (a thread's, an asyncio task's), if any.
_ATTEMPTING: ContextVar[_CallDecisions | None] = ContextVar("bgremoval_attempting", default=None)


def slot_wait_allowed(seconds: float) -> float:
    """
    How much of a ``seconds`` wait for a request slot (a :class:`~airflow_provider_bgremoval.pacing.Pacer`'s
    rate or hold) the call whose attempt asks may wait: what its policy's ``max_wait`` has left, taken
    from it (a :class:`ClaimHold` counts that much waiting). ``seconds`` outside a retried call.

    :param seconds: the wait the pacer would impose.
    :return: the wait allowed (``0``: the request goes now).
    """
    decisions = _ATTEMPTING.get()
    return seconds if decisions is None else decisions.take_wait(seconds)


@dataclass(eq=False)
class _CallDecisions:
    """
    One call's retry record, changed only by :meth:`attempt` and, within one, :meth:`take_wait`;
    ``wait`` and ``stop`` only read it.
    """

    policy: RetryPolicy
    stats: CallStats
    rng: random.Random
    attempts: int = 0  # of this call (``stats`` may be shared with an earlier call)
    slept: float = 0.0
    slot_waits: float = 0.0  # seconds allowed to waits for a request slot (:func:`slot_wait_allowed`)
    consecutive_429: int = 0
    last_error: BaseException | None = None
    jitter_sample: float = 0.0  # drawn once per failed attempt, so every read of the wait agrees
    guard_answers: dict[int, bool] = field(default_factory=dict)  # attempt -> retry allowed (asked once)

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """Count one attempt (and the wait slept before it); when it fails, record what decisions need."""
        if self.attempts:  # a retry: tenacity slept ``wait()`` before it
            seconds = float(self.wait())
            self.slept += seconds
            self.stats.waits.append(seconds)
        self.attempts += 1
        self.stats.attempts += 1
        self.stats.attempt_in_flight = True
        token = _ATTEMPTING.set(self)
        try:
            yield
        except BaseException as exc:
            # A cancelled attempt stays in flight (its request may have reached the vendor), unless
            # it was cancelled before its request went (the hook clears the flag while pacing).
            self.stats.attempt_in_flight &= not isinstance(exc, Exception)
            self.last_error = exc
            self.stats.possibly_charged += is_lost_reply(exc)
            self.consecutive_429 = self.consecutive_429 + 1 if isinstance(exc, RateLimitedError) else 0
            self.jitter_sample = self.rng.uniform(0, self.policy.jitter) if is_retryable(exc) else 0.0
            raise
        finally:
            _ATTEMPTING.reset(token)
        self.stats.attempt_in_flight = False

    def take_wait(self, seconds: float) -> float:
        """Allow up to ``seconds`` of a wait for a request slot from what the wait budget has left."""
        allowed = max(0.0, min(seconds, self.policy.max_wait - self.slept - self.slot_waits))
        self.slot_waits += allowed
        return allowed

    def wait(self, retry_state: RetryCallState | None = None) -> float:
        """tenacity's wait strategy: seconds to wait after the attempt that just failed."""
        policy, exc = self.policy, self.last_error
        retry_after = exc.retry_after if isinstance(exc, (RateLimitedError, TransientVendorError)) else None
        if retry_after is not None:  # a 429's, or a 503's (RFC 9110: the same meaning)
            return min(max(retry_after, 0.0), policy.max_retry_after)
        if isinstance(exc, RateLimitedError) and policy.rate_limit_step is not None:
            return policy.rate_limit_step * self.consecutive_429
        base = min(policy.max_backoff, policy.initial_backoff * 2.0 ** (self.attempts - 1))
        return base + self.jitter_sample

    def stop(self, retry_state: RetryCallState) -> bool:
        """tenacity's stop strategy: the attempt or wait bound is reached, or the retry guard refuses."""
        waited = self.slept + self.slot_waits
        if self.attempts >= self.policy.max_attempts or waited + self.wait() > self.policy.max_wait:
            return True
        guard, exc = self.stats.retry_guard, self.last_error
        if guard is None or exc is None or not is_lost_reply(exc):
            return False
        if self.attempts not in self.guard_answers:  # the guard may reserve budget: ask it once
            self.guard_answers[self.attempts] = bool(guard(exc))
        return not self.guard_answers[self.attempts]

    def strategies(self) -> dict[str, Any]:
        """The keyword arguments handed to tenacity, besides ``sleep``."""
        return {
            "retry": retry_if_exception(is_retryable),
            "wait": self.wait,
            "stop": self.stop,
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
    """
    Call ``fn`` under ``policy``; return its result or raise the last error.

    :param fn: one attempt.
    :param policy: the retry policy.
    :param sleep: waits between attempts (tests record instead of sleeping).
    :param stats: filled in as the call goes (its ``retry_guard`` included).
    :param rng: source of the jitter.
    """
    decisions = _CallDecisions(policy, stats if stats is not None else CallStats(), rng or random.Random())
    for attempt in Retrying(sleep=sleep, **decisions.strategies()):
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
    async for attempt in AsyncRetrying(sleep=sleep, **decisions.strategies()):
        with attempt, decisions.attempt():
            return await fn()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
