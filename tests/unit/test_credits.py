"""The credit rules shared by the sensor, the trigger, the pre-flight and the monitor."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_bgremoval._compat import AirflowNotFoundException
from airflow_provider_bgremoval.credits import (
    describe_error,
    describe_poll_failure,
    has_enough,
    is_fatal_balance_error,
    parse_credits,
    parse_min_credits,
)
from airflow_provider_bgremoval.exceptions import (
    InvalidOptionError,
    OutOfCreditsError,
    TransientVendorError,
    VendorAuthError,
)
from airflow_provider_bgremoval.results import AccountState, Balance


@pytest.mark.parametrize(("value", "expected"), [(0, "0"), ("0.1", "0.1"), (0.1, "0.1"), (" 12 ", "12")])
def test_parse_min_credits_is_exact(value: Any, expected: str) -> None:
    assert parse_min_credits(value) == Decimal(expected)


@pytest.mark.parametrize("value", [None, "", "  ", True, "lots", "-1", "NaN", "Infinity"])
def test_parse_min_credits_refuses_what_is_not_a_credit_amount(value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="max_credits"):
        parse_min_credits(value, "max_credits")


def test_parse_credits_is_optional() -> None:
    assert parse_credits(None, "cost_per_image") is None
    assert parse_credits("", "cost_per_image") is None
    assert parse_credits("1.25", "cost_per_image") == Decimal("1.25")
    with pytest.raises(InvalidOptionError, match="cost_per_image"):
        parse_credits("-1", "cost_per_image")


@pytest.mark.parametrize(
    ("remaining", "state", "threshold", "enough"),
    [
        ("10", AccountState.ACTIVE, "10", True),  # equal passes
        ("9.99", AccountState.ACTIVE, "10", False),
        ("10", AccountState.UNKNOWN, "5", True),
        ("900", AccountState.DORMANT, "1", False),  # a dormant account can spend nothing
        ("900", AccountState.SUSPENDED, "1", False),
        ("0", AccountState.DORMANT, "0", True),  # a threshold of 0 always passes
        ("-3", AccountState.ACTIVE, "0", True),
    ],
)
def test_has_enough_uses_the_balance_usability(
    remaining: str, state: AccountState, threshold: str, enough: bool
) -> None:
    balance = Balance(vendor="pixian", remaining=Decimal(remaining), state=state)
    assert has_enough(balance, Decimal(threshold)) is enough


@pytest.mark.parametrize(
    ("exc", "fatal"),
    [
        (VendorAuthError("bad key", vendor="poof", status_code=401), True),
        (AirflowNotFoundException("no such connection"), True),
        (ValueError("bad extra"), True),
        (TransientVendorError("503", vendor="poof", status_code=503), False),
        (OutOfCreditsError("nothing left", vendor="pixian", status_code=402), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_is_fatal_balance_error(exc: BaseException, fatal: bool) -> None:
    assert is_fatal_balance_error(exc) is fatal


def test_describe_error_names_the_type() -> None:
    assert describe_error(ValueError("bad extra")) == "ValueError: bad extra"


def test_describe_poll_failure_says_it_polls_again() -> None:
    line = describe_poll_failure("pixian_default", ValueError("flaky"))
    assert line == "Balance poll on pixian_default failed after retries (ValueError: flaky); polling again"
