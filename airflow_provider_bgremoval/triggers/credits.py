"""Deferrable credit waiting: :class:`CreditsTrigger` polls a balance (a free call) in the triggerer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_bgremoval.credits import (
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


class CreditsTrigger(BaseTrigger):
    """
    Poll a vendor account until its usable balance reaches ``min_credits``; yield one event.

    * ``{"status": "success", "conn_id", "min_credits", "balance": Balance.as_dict(), "polls"}``;
    * ``{"status": "error", "fatal", "message", "error_type", "conn_id"}``: ``fatal`` for failures no
      later poll can fix. Transient failures are logged and polled again until the deferral timeout.

    :param conn_id: the vendor connection (its type picks the hook).
    :param min_credits: the threshold, as a string (exact decimal).
    :param poll_interval: seconds between polls.
    :param exponential_backoff: double the wait after each unsuccessful poll (capped).
    :param max_poll_interval: cap of one wait with exponential backoff (default 900 s).
    """

    def __init__(
        self,
        conn_id: str,
        min_credits: str,
        poll_interval: float = 60.0,
        exponential_backoff: bool = False,
        max_poll_interval: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.conn_id = str(conn_id)
        self.min_credits = str(min_credits)
        self.poll_interval = float(poll_interval)
        self.exponential_backoff = bool(exponential_backoff)
        self.max_poll_interval = float(
            DEFAULT_MAX_POLL_INTERVAL if max_poll_interval is None else max_poll_interval
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and primitive kwargs that rebuild this trigger."""
        names = ("conn_id", "min_credits", "poll_interval", "exponential_backoff", "max_poll_interval")
        kwargs = {name: getattr(self, name) for name in names}
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CreditsTrigger) and self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash(repr(self.serialize()))

    async def get_hook(self) -> BackgroundRemovalHook[Any]:
        """The vendor hook for ``conn_id``, connection read without blocking (tests override this)."""
        return await BackgroundRemovalHook.aget_hook(self.conn_id)

    def next_interval(self, polls: int) -> float:
        """
        Seconds to wait after the ``polls``-th unsuccessful poll.

        :param polls: polls made so far (1 after the first).
        """
        if not self.exponential_backoff:
            return self.poll_interval
        cap = max(self.max_poll_interval, self.poll_interval)
        return float(min(cap, self.poll_interval * (2 ** min(max(polls - 1, 0), 32))))

    async def sleep(self, seconds: float) -> None:
        """Wait between polls (tests replace it to travel in time)."""
        await asyncio.sleep(seconds)

    def _error(self, exc: BaseException, *, fatal: bool) -> dict[str, Any]:
        return {
            "status": "error",
            "fatal": fatal,
            "conn_id": self.conn_id,
            "error_type": type(exc).__name__,
            "message": f"credits check on connection {self.conn_id!r} failed: {exc}",
        }

    async def _poll(self) -> dict[str, Any]:
        try:
            threshold = parse_min_credits(self.min_credits)
            hook = await self.get_hook()
        except Exception as exc:  # bad threshold or missing connection: nothing will change that
            return self._error(exc, fatal=True)
        polls = 0
        async with aclosing(hook):
            while True:
                polls += 1
                try:
                    balance = await hook.aget_balance()
                except Exception as exc:
                    if is_fatal_balance_error(exc):
                        return self._error(exc, fatal=True)
                    log.warning("Poll %d: %s", polls, describe_poll_failure(self.conn_id, exc))
                else:
                    log.info("%s after %d poll(s)", describe_wait(self.conn_id, balance, threshold), polls)
                    if has_enough(balance, threshold):
                        return {
                            "status": "success",
                            "conn_id": self.conn_id,
                            "min_credits": str(threshold),
                            "balance": balance.as_dict(),
                            "polls": polls,
                        }
                await self.sleep(self.next_interval(polls))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the threshold is met (or a fatal error), yield one event, return."""
        try:
            event = await self._poll()
        except Exception as exc:  # a bug must not kill the triggerer (cancellation is no Exception)
            event = self._error(exc, fatal=False)
        yield TriggerEvent(event)  # type: ignore[no-untyped-call]
