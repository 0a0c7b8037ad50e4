"""Deferrable credit waiting: :class:`CreditsTrigger` polls a vendor balance in the triggerer.

The trigger only *reads* balances (a free call on every vendor) through the hooks' async methods;
it never makes a billed call (DESIGN.md decision 4: a triggerer restart replays triggers). It holds
only primitives, reads its connection the async way and never blocks the event loop.

The helpers at the top (threshold parsing, error classification) are shared with
:class:`~airflow_provider_bgremoval.sensors.credits.CreditsSensor` so that poke, reschedule and
deferrable modes decide identically.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal, InvalidOperation
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_bgremoval._compat import AirflowNotFoundException
from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InvalidOptionError,
    InvalidVendorResponseError,
    OutOfCreditsError,
    RateLimitedError,
    TransientVendorError,
)
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.hooks.registry import aget_vendor_hook
from airflow_provider_bgremoval.results import Balance

log = logging.getLogger(__name__)

#: Longest wait between two polls when exponential backoff is on and no ``max_wait`` was given.
DEFAULT_MAX_POLL_INTERVAL = 900.0

#: Errors after which a later poll may succeed: logged, and polling goes on (until the timeout).
#: ``OutOfCreditsError`` from a balance endpoint means "nothing usable yet", which is what we wait for.
_POLL_AGAIN_ERRORS: tuple[type[BgRemovalError], ...] = (
    TransientVendorError,
    RateLimitedError,
    InvalidVendorResponseError,
    OutOfCreditsError,
)


def parse_min_credits(value: Any, parameter: str = "min_credits") -> Decimal:
    """
    A credit threshold as an exact :class:`~decimal.Decimal` (``Decimal(str(value))``: ``0.1`` stays 0.1).

    :param value: a number or a numeric string (e.g. a rendered template).
    :param parameter: the parameter name used in the error message.
    """
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidOptionError(parameter, f"{value!r} is not a number of credits")
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidOptionError(parameter, f"{value!r} is not a number of credits") from None
    if not number.is_finite() or number < 0:
        raise InvalidOptionError(parameter, f"{value!r} must be a non-negative number of credits")
    return number


def has_enough(balance: Balance, min_credits: Decimal) -> bool:
    """
    True when the *usable* balance reaches ``min_credits`` (equal passes).

    Dormant and suspended accounts have 0 usable credits, whatever number the vendor reports.

    :param balance: the normalised balance.
    :param min_credits: the threshold.
    """
    return usable_credits(balance) >= min_credits


def usable_credits(balance: Balance) -> Decimal:
    """
    Credits that can be spent now (0 for dormant or suspended accounts).

    :param balance: the normalised balance.
    """
    return balance.remaining if balance.usable else Decimal(0)


def is_fatal_balance_error(exc: BaseException) -> bool:
    """
    True when no later balance poll can succeed: bad credentials, a missing or misconfigured
    connection, or a 4xx the vendor will repeat. Transient failures (5xx, 429, timeouts, garbled
    replies) are not fatal: the poll is logged and polling continues until the sensor's timeout.

    :param exc: the error a balance call raised.
    """
    if isinstance(exc, _POLL_AGAIN_ERRORS):
        return False
    return isinstance(exc, (BgRemovalError, AirflowNotFoundException, ValueError, TypeError))


def describe_error(exc: BaseException) -> str:
    """A one-line description of a balance error (exception texts never carry secrets)."""
    return f"{type(exc).__name__}: {exc}"


class CreditsTrigger(BaseTrigger):
    """
    Poll a vendor account until its usable balance reaches ``min_credits``.

    Yields one event and returns:

    * ``{"status": "success", "conn_id", "min_credits", "balance": Balance.as_dict(), "polls"}``;
    * ``{"status": "error", "fatal": True, "message", "error_type", "conn_id"}`` for failures no
      later poll can fix (auth, missing connection, non-retryable 4xx). Transient failures are
      logged and polled again; the deferral ``timeout`` set by the sensor ends the wait.

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
        self.max_poll_interval = None if max_poll_interval is None else float(max_poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and primitive kwargs that rebuild this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "min_credits": self.min_credits,
                "poll_interval": self.poll_interval,
                "exponential_backoff": self.exponential_backoff,
                "max_poll_interval": self.max_poll_interval,
            },
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CreditsTrigger) and self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash(repr(self.serialize()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(conn_id={self.conn_id!r}, min_credits={self.min_credits!r})"

    async def get_hook(self) -> BackgroundRemovalHook[Any]:
        """The vendor hook for ``conn_id``, connection read without blocking (tests override this)."""
        return await aget_vendor_hook(self.conn_id)

    def next_interval(self, polls: int) -> float:
        """
        Seconds to wait after the ``polls``-th unsuccessful poll.

        :param polls: polls made so far (1 after the first).
        """
        if not self.exponential_backoff:
            return self.poll_interval
        cap = self.max_poll_interval if self.max_poll_interval is not None else DEFAULT_MAX_POLL_INTERVAL
        cap = max(cap, self.poll_interval)
        return float(min(cap, self.poll_interval * (2 ** min(max(polls - 1, 0), 32))))

    async def sleep(self, seconds: float) -> None:
        """Wait between polls (an ``asyncio.sleep``; tests may replace it to travel in time)."""
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
        try:
            while True:
                polls += 1
                try:
                    balance = await hook.aget_balance()
                except Exception as exc:
                    if is_fatal_balance_error(exc):
                        return self._error(exc, fatal=True)
                    log.warning(
                        "Balance poll %d on %s failed after retries (%s); polling again",
                        polls,
                        self.conn_id,
                        describe_error(exc),
                    )
                else:
                    if has_enough(balance, threshold):
                        log.info(
                            "%s (%s): %s usable credits, threshold %s: met after %d poll(s)",
                            self.conn_id,
                            balance.vendor,
                            usable_credits(balance),
                            threshold,
                            polls,
                        )
                        return {
                            "status": "success",
                            "conn_id": self.conn_id,
                            "min_credits": str(threshold),
                            "balance": balance.as_dict(),
                            "polls": polls,
                        }
                    log.info(
                        "%s (%s): %s usable credits (state %s), threshold %s: waiting",
                        self.conn_id,
                        balance.vendor,
                        usable_credits(balance),
                        balance.state.value,
                        threshold,
                    )
                await self.sleep(self.next_interval(polls))
        finally:
            await hook.aclose()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the threshold is met (or a fatal error), yield one event, return."""
        try:
            event = await self._poll()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not kill the triggerer: report it to the task
            event = self._error(exc, fatal=False)
        yield TriggerEvent(event)  # type: ignore[no-untyped-call]
