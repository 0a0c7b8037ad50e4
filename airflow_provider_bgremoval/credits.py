"""Credit rules (parsing, thresholds, fatal balance errors) shared by the sensor, trigger and operators."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from airflow_provider_bgremoval._compat import AirflowNotFoundException
from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InvalidOptionError,
    InvalidVendorResponseError,
    OutOfCreditsError,
    RateLimitedError,
    TransientVendorError,
)
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook, format_credits
from airflow_provider_bgremoval.results import AccountState, Balance

#: How a list of accounts is pooled: ``any`` (one account has enough) or ``total`` (their sum).
POOLING_CHOICES = ("any", "total")

#: Errors after which a later poll may succeed (``OutOfCreditsError``: nothing usable yet, as waited for).
_POLL_AGAIN_ERRORS = (TransientVendorError, RateLimitedError, InvalidVendorResponseError, OutOfCreditsError)
_FATAL_ERRORS = (BgRemovalError, AirflowNotFoundException, ValueError, TypeError)


def parse_min_credits(value: Any, parameter: str = "min_credits", unit: str = "credits") -> Decimal:
    """
    A credit amount as an exact :class:`~decimal.Decimal` (``Decimal(str(value))``: ``0.1`` stays 0.1).

    :param value: a number or a numeric string (e.g. a rendered template).
    :param parameter: the parameter name used in the error message.
    :param unit: what the number counts, for the error message.
    """
    try:  # None, True and "" are no numbers either: Decimal("None") etc. refuses them
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidOptionError(parameter, f"{value!r} is not a number of {unit}") from None
    if not number.is_finite() or number < 0:
        raise InvalidOptionError(parameter, f"{value!r} must be a non-negative number of {unit}")
    return number


def parse_credits(value: Any, parameter: str) -> Decimal | None:
    """
    An optional credit amount: ``None`` when not given (``None`` or ``""``), else :func:`parse_min_credits`.

    :param value: a number, a numeric string, ``None`` or ``""``.
    :param parameter: the parameter name used in the error message.
    """
    return None if value in (None, "") else parse_min_credits(value, parameter)


def has_enough(balance: Balance, min_credits: Decimal) -> bool:
    """
    True when the account can spend ``min_credits`` now (equal passes; 0 always passes).

    :param balance: the normalised balance (dormant and suspended accounts can spend nothing).
    :param min_credits: the threshold.
    """
    return min_credits <= 0 or (balance.usable and balance.remaining >= min_credits)


def takes_calls(balance: Balance) -> bool:
    """
    True when the account takes calls at all, whatever they cost: active or unknown (also with no credits
    left: at 0 per image its calls are free), or dormant with its calls in test mode (Pixian's test calls
    need no pack, and an account without one reads dormant). Never suspended, nor with its key refused.

    :param balance: the account's balance (:attr:`~.Balance.test_mode`: its calls run in test mode).
    """
    if balance.state in (AccountState.ACTIVE, AccountState.UNKNOWN):
        return True
    return balance.test_mode and balance.state is AccountState.DORMANT


def describe_wait(conn_id: str, balance: Balance, threshold: Decimal) -> str:
    """
    The log line of one balance poll: usable credits against the threshold, ``met`` or ``waiting``.

    :param conn_id: the connection.
    :param balance: its balance.
    :param threshold: the credits waited for.
    """
    state = "" if balance.state is AccountState.ACTIVE else f" (state {balance.state.value})"
    verdict = "met" if has_enough(balance, threshold) else "waiting"
    return (
        f"{conn_id} ({balance.vendor}): {format_credits(balance.remaining)} usable credits{state}, "
        f"threshold {format_credits(threshold)}: {verdict}"
    )


def is_fatal_balance_error(exc: BaseException) -> bool:
    """
    True when no later balance poll can succeed (bad credentials, a missing connection, a repeated 4xx).

    :param exc: the error a balance call raised.
    """
    return isinstance(exc, _FATAL_ERRORS) and not isinstance(exc, _POLL_AGAIN_ERRORS)


def describe_error(exc: BaseException) -> str:
    """
    A one-line description of a balance error (exception texts never carry secrets).

    :param exc: the error.
    """
    return f"{type(exc).__name__}: {exc}"


def describe_poll_failure(conn_id: str, exc: BaseException) -> str:
    """
    The log line of a failed balance poll that a later poll may fix.

    :param conn_id: the connection.
    :param exc: the error the balance call raised after its retries.
    """
    return f"Balance poll on {conn_id} failed after retries ({describe_error(exc)}); polling again"


# ----- pooled accounts ----------------------------------------------------------------------------


def parse_min_images(value: Any) -> int:
    """
    A whole, positive number of images.

    :param value: a number or numeric string.
    """
    number = parse_min_credits(value, "min_images", unit="images")
    if number != number.to_integral_value() or number == 0:
        raise InvalidOptionError("min_images", f"{value!r} must be a whole number of images, at least 1")
    return int(number)


@dataclass(frozen=True)
class PoolTarget:
    """
    What a pool of accounts waits for: ``min_credits`` credits, or ``min_images`` images, each account
    at its own cost per image.

    :param conn_ids: the accounts, in order.
    :param pooling: ``any`` (one account alone) or ``total`` (the sum of the usable balances).
    :param min_credits: credits wanted (``None`` when counting images).
    :param min_images: images wanted (``None`` when counting credits).
    :param costs: cost per image of each account (with ``min_images``: every account's, ``0`` for
        free calls; a missing one is an :class:`InvalidOptionError`).
    """

    conn_ids: tuple[str, ...]
    pooling: str
    min_credits: Decimal | None = None
    min_images: int | None = None
    costs: Mapping[str, Decimal] | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_CHOICES:  # anything but "any" would be read as "total"
            choices = ", ".join(POOLING_CHOICES)
            raise InvalidOptionError("pooling", f"{self.pooling!r} is not one of {choices}")
        if self.min_images is None:
            return
        missing = [c for c in self.conn_ids if c not in (self.costs or {})]
        if missing:  # counting images needs every account's cost; a missing one is not a free account
            raise InvalidOptionError("costs", f"min_images needs a cost per image for {', '.join(missing)}")

    @classmethod
    def parse(
        cls,
        conn_ids: Sequence[str],
        pooling: str | None,
        min_credits: Any,
        min_images: Any,
        costs: Mapping[str, Any] | None,
    ) -> PoolTarget:
        """
        A target from a sensor's or trigger's parameters (raises on a bad one: a fatal error).

        :param conn_ids: the accounts, in order.
        :param pooling: ``any`` or ``total`` (``None``: ``any``).
        :param min_credits: credits wanted, as given (``None`` when counting images).
        :param min_images: images wanted, as given (``None`` when counting credits).
        :param costs: each account's cost per image, as given (strings or numbers, read exactly as
            :func:`parse_min_credits`: ``0.1`` is 0.1; a negative one is refused, not free).
        """
        return cls(
            tuple(conn_ids),
            pooling or "any",
            min_credits=None if min_credits is None else parse_min_credits(min_credits),
            min_images=None if min_images is None else parse_min_images(min_images),
            costs={c: parse_min_credits(cost, f"costs[{c!r}]") for c, cost in (costs or {}).items()},
        )

    @property
    def unit(self) -> str:
        """``credits`` or ``images``."""
        return "credits" if self.min_images is None else "images"

    @property
    def needed(self) -> Decimal:
        """The amount waited for, in :attr:`unit`."""
        return Decimal(self.min_images) if self.min_images is not None else Decimal(self.min_credits or 0)

    def amount(self, conn_id: str, balance: Balance) -> Decimal:
        """
        What one account contributes: its usable credits, or the whole images they pay for.

        :param conn_id: the account.
        :param balance: its balance (dormant and suspended accounts have no usable credits; at 0 per
            image, an account that takes calls (:func:`takes_calls`) pays for any number of images).
        """
        usable = balance.remaining if balance.usable else Decimal(0)
        if self.min_images is None:
            return usable
        cost = (self.costs or {})[conn_id]
        if cost <= 0:  # free calls: no limit, where the account takes them
            return Decimal(self.min_images) if takes_calls(balance) else Decimal(0)
        return (usable / cost).to_integral_value(rounding=ROUND_FLOOR)

    def verdict(self, readings: Mapping[str, Balance | BaseException]) -> PoolVerdict:
        """
        Whether the pool has enough now.

        :param readings: each account's balance, or the error reading it.
        """
        amounts = {c: self.amount(c, r) for c, r in readings.items() if isinstance(r, Balance)}
        total = sum(amounts.values(), Decimal(0))
        if self.pooling == "any":
            met_by = tuple(c for c in self.conn_ids if c in amounts and amounts[c] >= self.needed)
            met = bool(met_by) or self.needed <= 0
        else:
            met = total >= self.needed
            met_by = tuple(c for c in self.conn_ids if amounts.get(c, Decimal(0)) > 0) if met else ()
        return PoolVerdict(self, met, met_by, amounts, total, dict(readings))


@dataclass(frozen=True)
class PoolVerdict:
    """
    One poll of a pool.

    :param target: what was waited for.
    :param met: whether it has enough.
    :param met_by: ``any``: the accounts that have enough alone; ``total``: the accounts contributing.
    :param amounts: each readable account's contribution (credits or images).
    :param total: their sum.
    :param readings: each account's balance or error.
    """

    target: PoolTarget
    met: bool
    met_by: tuple[str, ...]
    amounts: Mapping[str, Decimal]
    total: Decimal
    readings: Mapping[str, Balance | BaseException]

    @property
    def fatal_error(self) -> str | None:
        """The first error no later poll can fix (bad credentials, a missing connection), if any."""
        for conn_id in self.target.conn_ids:
            reading = self.readings.get(conn_id)
            if isinstance(reading, BaseException) and is_fatal_balance_error(reading):
                return f"{conn_id}: {describe_error(reading)}"
        return None

    def as_dict(self) -> dict[str, Any]:
        """The XCom value and event payload: what was wanted, who has what, and who met it."""
        target = self.target
        balances = {c: r.as_dict() if isinstance(r, Balance) else None for c, r in self.readings.items()}
        errors = {c: describe_error(r) for c, r in self.readings.items() if isinstance(r, BaseException)}
        return {
            "pooling": target.pooling,
            "conn_ids": list(target.conn_ids),
            "unit": target.unit,
            "needed": format_credits(target.needed),
            "total": format_credits(self.total),
            "amounts": {c: format_credits(a) for c, a in self.amounts.items()},
            "costs": {c: str(v) for c, v in (target.costs or {}).items()},
            "met": self.met,
            "met_by": list(self.met_by),
            "balances": balances,
            "errors": errors,
        }

    def describe(self) -> str:
        """One log line: each account's contribution, the pooled amount against the target, the verdict."""
        target, unit = self.target, self.target.unit
        parts = []
        for conn_id in target.conn_ids:
            reading = self.readings.get(conn_id)
            if isinstance(reading, Balance):
                parts.append(f"{conn_id} ({reading.vendor}) {format_credits(self.amounts[conn_id])}")
            else:
                parts.append(f"{conn_id} unavailable ({describe_error(reading) if reading else 'not read'})")
        pooled = (
            f"one account with {format_credits(target.needed)}"
            if target.pooling == "any"
            else (f"{format_credits(self.total)} in total of {format_credits(target.needed)}")
        )
        verdict = f"met by {', '.join(self.met_by)}" if self.met else "waiting"
        return f"pool ({target.pooling}) in {unit}: {'; '.join(parts)}; wanted {pooled}: {verdict}"


async def _aread(conn_id: str) -> Balance | BaseException:
    try:
        async with aclosing(await BackgroundRemovalHook.aget_hook(conn_id)) as hook:
            return await hook.aget_balance()
    except Exception as exc:  # reported per account; the verdict decides
        return exc


async def aread_pool(conn_ids: Sequence[str]) -> dict[str, Balance | BaseException]:
    """
    Every account's balance (a free call), read concurrently; an account that fails gives its error.

    :param conn_ids: the accounts.
    """
    readings = await asyncio.gather(*(_aread(conn_id) for conn_id in conn_ids))
    return dict(zip(conn_ids, readings, strict=True))
