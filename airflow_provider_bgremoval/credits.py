"""Credit rules (parsing, thresholds, fatal balance errors) shared by the sensor, trigger and operators."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
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
from airflow_provider_bgremoval.hooks.base import format_credits
from airflow_provider_bgremoval.results import AccountState, Balance

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
