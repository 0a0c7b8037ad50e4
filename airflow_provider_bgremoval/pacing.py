"""Request pacing: one hook's request rate, adapted to 429s (AIMD; why shards sharing an account
converge: docs/rate-limits.md). Retries and their waits stay in :mod:`.retry`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.retry import slot_wait_allowed


@dataclass(frozen=True)
class PacingPolicy:
    """
    How a hook paces its requests (the defaults and why: docs/rate-limits.md).

    :param requests_per_second: the account's limit, the most this hook sends (``None``: no cap, the
        rate is only adapted, from the first 429 on).
    :param decrease: factor applied to the rate on a 429 (once per round of requests sent at that rate).
    :param increase: a paced success adds ``increase · max(rate, limit / 8) / limit`` to the rate
        (``increase · rate² / limit`` per second; the limit: the cap, else the rate at the first 429).
    :param initial_fraction: the first rate as a fraction of the cap (a shard's guess of its share).
    :param slow_start: until the first 429, a paced success adds this fraction of the first rate.
    :param min_rate: the rate never goes below this (requests per second) nor below
        ``limit · min_fraction``, unless the cap is lower.
    :param min_fraction: see ``min_rate``.
    :param window: seconds; from one request per window up, the rate is a whole number of requests
        per window, so independent hooks' requests add up per vendor second (a margin over 1 s: jitter).
    """

    requests_per_second: float | None = None
    decrease: float = 0.7
    increase: float = 0.05
    initial_fraction: float = 0.125
    slow_start: float = 0.2
    min_rate: float = 0.1
    min_fraction: float = 1 / 64
    window: float = 1.03


def parse_requests_per_second(value: Any) -> float | None:
    """
    The ``requests_per_second`` connection extra: a positive number, ``0`` for no pacing at all, or empty.

    :param value: the extra's value.
    :return: the limit; ``0.0`` for "off"; ``None`` when unset (the vendor's default applies).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0 <= number < float("inf"):
        raise InvalidOptionError(
            "requests_per_second", f"{value!r} is not a number of requests per second (0: no pacing)"
        )
    return number


class Clock:
    """Real time for a :class:`Pacer`: ``time.monotonic``, ``time.sleep`` and ``asyncio.sleep``."""

    def now(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """
        Block for ``seconds``.

        :param seconds: how long.
        """
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """
        Wait ``seconds`` without blocking the event loop.

        :param seconds: how long.
        """
        await asyncio.sleep(seconds)


class ManualClock(Clock):
    """
    A clock that moves only when slept on or advanced: for pacing tests and simulations (no sleeps).

    :param start: the first reading.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.time = start

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        """
        Move the clock forward.

        :param seconds: how far.
        """
        self.time += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.advance(seconds)


class Pacer:
    """
    Spaces requests at an adaptive rate (thread-safe; callers do the waiting, so it serves sync and async).

    :param policy: the pacing policy.
    :param clock: the time it reads and its callers sleep on (tests pass a :class:`ManualClock`).
    """

    def __init__(self, policy: PacingPolicy, clock: Clock | None = None) -> None:
        self.policy = policy
        self.clock = clock or Clock()
        self._lock = threading.Lock()
        cap = policy.requests_per_second
        self._rate: float | None = None if cap is None else self._first_rate(cap)  # None: unpaced
        self._reference = cap  # the limit the additive increase is scaled by
        self._slow_start = True
        self._next = float("-inf")
        self._last_decrease = float("-inf")
        self._sent: deque[float] = deque()  # slots taken within the last second

    def _first_rate(self, cap: float) -> float:
        return min(cap, max(self.policy.min_rate, cap * self.policy.initial_fraction))

    @property
    def rate(self) -> float | None:
        """The current rate in requests per second (``None``: unpaced)."""
        return self._rate

    def interval(self, rate: float) -> float:
        """
        Seconds between two requests at ``rate``: a whole number of them per window, else ``1 / rate``.

        :param rate: requests per second.
        """
        per_window = int(rate * self.policy.window)
        return self.policy.window / per_window if per_window else 1.0 / rate

    def wait_time(self) -> float:
        """
        Seconds to wait before asking again; ``0.0``: a request may go now (its slot is taken). Asked in a
        retried call's attempt, the waits come out of the call's wait budget (:func:`.slot_wait_allowed`):
        once it is spent the request goes (a held or rate-limited vendor refuses it unbilled), so an
        image's call, and its claim, is not held back by the hook's other images for ever.
        """
        with self._lock:
            now = self.clock.now()
            # the next slot, or a hold (:meth:`hold`, also when unpaced)
            if now < self._next and (allowed := slot_wait_allowed(self._next - now)) > 0:
                return allowed
            if self._rate is not None:
                self._next = max(self._next, now) + self.interval(self._rate)
            self._sent.append(now)
            while now - self._sent[0] > 1.0:
                self._sent.popleft()
            return 0.0

    def on_success(self, *, paced: bool) -> None:
        """
        A request was answered, not with a 429: grow the rate if this hook is held back by it.

        :param paced: the request waited for its slot (a hook that is not held back keeps its rate).
        """
        with self._lock:
            rate, policy = self._rate, self.policy
            if rate is None or not paced:
                return
            if self._slow_start:
                rate += policy.slow_start * self._first_rate(policy.requests_per_second or rate)
            else:
                reference = self._reference or rate
                rate += policy.increase * max(rate, reference / 8) / reference
            cap = policy.requests_per_second
            self._rate = rate if cap is None else min(cap, rate)

    def hold(self, seconds: float) -> None:
        """
        Let no request go for ``seconds`` (a 503's ``Retry-After``: the service said when it is back);
        the rate is not changed: an unavailable service says nothing of the account's limit.

        :param seconds: how long.
        """
        with self._lock:
            self._next = max(self._next, self.clock.now() + seconds)

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        """
        A request was answered 429: cut the rate (once for all the requests sent before a cut).

        :param sent_at: when that request took its slot (its clock's ``now()`` then).
        :param retry_after: the vendor's ``Retry-After`` in seconds: no request goes before it is over.
        """
        with self._lock:
            now, policy = self.clock.now(), self.policy
            if retry_after:
                self._next = max(self._next, now + retry_after)
            if sent_at <= self._last_decrease:  # sent at the old rate: already reacted to
                return
            rate = self._rate if self._rate is not None else max(policy.min_rate, float(len(self._sent)))
            if self._reference is None:
                self._reference = rate
            floor = min(self._reference, max(policy.min_rate, self._reference * policy.min_fraction))
            self._rate = max(floor, rate * policy.decrease)
            self._slow_start = False
            self._last_decrease = now
            self._next = max(self._next, now + self.interval(self._rate))
