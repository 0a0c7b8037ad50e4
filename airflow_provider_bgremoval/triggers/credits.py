"""Deferrable credit waiting: :class:`CreditsTrigger` polls a balance (a free call) in the triggerer."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_bgremoval.credits import (
    PoolTarget,
    aread_pool,
    describe_poll_failure,
    describe_wait,
    has_enough,
    is_fatal_balance_error,
    parse_min_credits,
)
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook

log = logging.getLogger(__name__)

#: Longest wait between two polls when exponential backoff is on and no ``max_wait`` was given.
DEFAULT_MAX_POLL_INTERVAL = 900.0
#: Shortest first wait with exponential backoff (as the base sensor's backoff: at least 1 s).
MIN_BACKOFF_INTERVAL = 1.0


class PollLog(Protocol):
    """Where a poll's verdict is logged: the trigger's logger, or the sensor task's log."""

    def info(self, msg: str, /, *args: Any) -> Any: ...

    def warning(self, msg: str, /, *args: Any) -> Any: ...


@dataclass(frozen=True)
class Poll:
    """
    One poll's outcome, the same for the sensor's poke and the trigger's loop: met, fatal, or neither.

    :param met: the target is met: the balance's (a pool: the verdict's) ``as_dict()``.
    :param fatal: a failure no later poll can fix: the error, or a pool's account error as text.
    """

    met: dict[str, Any] | None = None
    fatal: BaseException | str | None = None


class CreditsTrigger(BaseTrigger):
    """
    Poll a vendor account until its usable balance reaches ``min_credits``; yield one event.
    With a list of connections, poll the pool until it has enough (``pooling``, docs/credits.md).

    * ``{"status": "success", "conn_id", "min_credits", "balance": Balance.as_dict(), "polls"}``
      (a pool: ``{"status": "success", "conn_id": [...], "pool": PoolVerdict.as_dict(), "polls"}``);
    * ``{"status": "error", "fatal", "message", "error_type", "conn_id"}``: ``fatal`` for failures no
      later poll can fix. Transient failures are logged and polled again until the deferral timeout.

    :param conn_id: the vendor connection (its type picks the hook), or a list of them (a pool); one
        connection with ``min_images`` is polled as a pool of one (its event carries ``pool``).
    :param min_credits: the threshold, as a string (exact decimal); ``None`` with ``min_images``.
    :param poll_interval: seconds between polls.
    :param exponential_backoff: double the wait after each unsuccessful poll (capped).
    :param max_poll_interval: cap of one wait with exponential backoff (default 900 s).
    :param pooling: a pool's rule, ``any`` or ``total``.
    :param min_images: a pool's target in images (instead of ``min_credits``).
    :param costs: a pool's cost per image for each connection, as strings (with ``min_images``:
        every connection's; a missing one is a fatal ``InvalidOptionError`` event, not a free account).
    """

    def __init__(
        self,
        conn_id: str | Sequence[str],
        min_credits: str | None,
        poll_interval: float = 60.0,
        exponential_backoff: bool = False,
        max_poll_interval: float | None = None,
        pooling: str | None = None,
        min_images: int | None = None,
        costs: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.conn_id: str | list[str] = conn_id if isinstance(conn_id, str) else [str(c) for c in conn_id]
        self.min_credits = None if min_credits is None else str(min_credits)
        self.pooling = pooling
        self.min_images = min_images
        self.costs = None if costs is None else {str(k): str(v) for k, v in costs.items()}
        self.poll_interval = float(poll_interval)
        self.exponential_backoff = bool(exponential_backoff)
        self.max_poll_interval = float(
            DEFAULT_MAX_POLL_INTERVAL if max_poll_interval is None else max_poll_interval
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and primitive kwargs that rebuild this trigger."""
        names = ["conn_id", "min_credits", "poll_interval", "exponential_backoff", "max_poll_interval"]
        pool = (self.pooling, self.min_images, self.costs)
        if self.pooled or any(value is not None for value in pool):  # else its five kwargs, as before
            names += ["pooling", "min_images", "costs"]
        kwargs = {name: getattr(self, name) for name in names}
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CreditsTrigger) and self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash(repr(self.serialize()))

    @property
    def pooled(self) -> bool:
        """True when this trigger polls a pool: a list of connections, or one connection in images."""
        return isinstance(self.conn_id, list) or self.min_images is not None

    @property
    def conn_ids(self) -> list[str]:
        """The connections polled, in order (one for a single connection)."""
        return list(self.conn_id) if isinstance(self.conn_id, list) else [self.conn_id]

    async def get_hook(self) -> BackgroundRemovalHook[Any]:
        """The vendor hook for ``conn_id``, connection read without blocking (tests override this)."""
        return await BackgroundRemovalHook.aget_hook(str(self.conn_id))

    def pool_target(self) -> PoolTarget:
        """What the pool waits for (raises on a bad target: a fatal error)."""
        return PoolTarget.parse(self.conn_ids, self.pooling, self.min_credits, self.min_images, self.costs)

    def next_interval(self, polls: int) -> float:
        """
        Seconds to wait after the ``polls``-th unsuccessful poll (with exponential backoff: doubling from
        ``poll_interval``, or from :data:`MIN_BACKOFF_INTERVAL` when that is shorter).

        :param polls: polls made so far (1 after the first).
        """
        if not self.exponential_backoff:
            return self.poll_interval
        base = max(self.poll_interval, MIN_BACKOFF_INTERVAL)  # 0 doubled would poll in a tight loop
        cap = max(self.max_poll_interval, base)
        return float(min(cap, base * (2 ** min(max(polls - 1, 0), 32))))

    async def sleep(self, seconds: float) -> None:
        """Wait between polls (tests replace it to travel in time)."""
        await asyncio.sleep(seconds)

    async def poll_account(
        self,
        hook: BackgroundRemovalHook[Any],
        threshold: Decimal,
        polls: int | None = None,
        logger: PollLog = log,
    ) -> Poll:
        """
        One balance poll of the single account (the sensor's poke, a step of :meth:`run`).

        :param hook: the account's open hook.
        :param threshold: the credits waited for.
        :param polls: the poll's number, for the log (``None``: a poke).
        :param logger: where the verdict is logged.
        """
        conn_id = str(self.conn_id)
        try:
            balance = await hook.aget_balance()
        except Exception as exc:
            if is_fatal_balance_error(exc):
                return Poll(fatal=exc)
            logger.warning(
                "%s%s", "" if polls is None else f"Poll {polls}: ", describe_poll_failure(conn_id, exc)
            )
            return Poll()
        logger.info("%s", _numbered(describe_wait(conn_id, balance, threshold), polls))
        return Poll(met=balance.as_dict() if has_enough(balance, threshold) else None)

    async def poll_pool(
        self,
        target: PoolTarget,
        polls: int | None = None,
        logger: PollLog = log,
    ) -> Poll:
        """
        One poll of every account of the pool (the sensor's poke, a step of :meth:`run`).

        :param target: what the pool waits for (:meth:`pool_target`).
        :param polls: the poll's number, for the log (``None``: a poke).
        :param logger: where the verdict is logged.
        """
        verdict = target.verdict(await aread_pool(target.conn_ids))
        logger.info("%s", _numbered(verdict.describe(), polls))
        return Poll(met=verdict.as_dict()) if verdict.met else Poll(fatal=verdict.fatal_error)

    def _error(self, exc: BaseException | str, *, fatal: bool) -> dict[str, Any]:
        pool = isinstance(exc, str)  # a pool's account error
        return {
            "status": "error",
            "fatal": fatal,
            "conn_id": self.conn_id,
            "error_type": "PoolAccountError" if pool else type(exc).__name__,
            "message": f"credits check on {'pool' if pool else 'connection'} {self.conn_id!r} failed: {exc}",
        }

    async def _repeat(self, poll: Callable[[int], Awaitable[Poll]], met: dict[str, Any]) -> dict[str, Any]:
        """Poll until met or fatal; the event (``met``: the success event's fields but the reading's)."""
        polls = 0
        while True:
            polls += 1
            outcome = await poll(polls)
            if outcome.fatal is not None:
                return self._error(outcome.fatal, fatal=True)
            if outcome.met is not None:
                key = "pool" if self.pooled else "balance"
                return {"status": "success", "conn_id": self.conn_id, **met, key: outcome.met, "polls": polls}
            await self.sleep(self.next_interval(polls))

    async def _poll(self) -> dict[str, Any]:
        try:
            target = self.pool_target() if self.pooled else parse_min_credits(self.min_credits)
        except Exception as exc:  # a bad target: nothing will change that
            return self._error(exc, fatal=True)
        if isinstance(target, PoolTarget):
            return await self._repeat(lambda polls: self.poll_pool(target, polls), {})
        hooks: list[BackgroundRemovalHook[Any]] = []  # the account's hook, once it could be made
        try:
            poll = functools.partial(self._poll_with_hook, hooks, target)
            return await self._repeat(poll, {"min_credits": str(target)})
        finally:
            for hook in hooks:
                await hook.aclose()

    async def _poll_with_hook(
        self, hooks: list[BackgroundRemovalHook[Any]], threshold: Decimal, polls: int
    ) -> Poll:
        """
        :meth:`poll_account`, the hook made first if not yet: a connection that cannot be read yet (the
        API server restarting, a secrets backend timing out) is read again at the next poll, as the
        sensor's poke does; a missing connection or a bad one is fatal.
        """
        if not hooks:
            try:
                hooks.append(await self.get_hook())
            except Exception as exc:
                if is_fatal_balance_error(exc):
                    return Poll(fatal=exc)
                log.warning("Poll %d: %s", polls, describe_poll_failure(str(self.conn_id), exc))
                return Poll()
        return await self.poll_account(hooks[0], threshold, polls)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the threshold is met (or a fatal error), yield one event, return."""
        try:
            event = await self._poll()
        except Exception as exc:  # a bug must not kill the triggerer (cancellation is no Exception)
            event = self._error(exc, fatal=False)
        yield TriggerEvent(event)  # type: ignore[no-untyped-call]


def _numbered(text: str, polls: int | None) -> str:
    return text if polls is None else f"{text} after {polls} poll(s)"
