"""The credit rules shared by the sensor, the trigger, the pre-flight and the monitor."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_bgremoval._compat import AirflowNotFoundException
from airflow_provider_bgremoval.credits import (
    PoolTarget,
    describe_error,
    describe_poll_failure,
    has_enough,
    is_fatal_balance_error,
    parse_credits,
    parse_min_credits,
    parse_min_images,
    takes_calls,
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


# -- pooled accounts -------------------------------------------------------------------------------
def bal(vendor: str, remaining: str, state: AccountState = AccountState.ACTIVE) -> Balance:
    return Balance(vendor=vendor, remaining=Decimal(remaining), state=state)


POOL = ("pixian_default", "poof_default")


def test_pool_any_needs_one_account_with_enough() -> None:
    target = PoolTarget(POOL, "any", min_credits=Decimal(10))
    verdict = target.verdict({"pixian_default": bal("pixian", "9.5"), "poof_default": bal("poof", "6")})
    assert not verdict.met and verdict.total == Decimal("15.5")
    verdict = target.verdict({"pixian_default": bal("pixian", "9.5"), "poof_default": bal("poof", "10")})
    assert verdict.met and verdict.met_by == ("poof_default",)
    assert verdict.describe() == (
        "pool (any) in credits: pixian_default (pixian) 9.5; poof_default (poof) 10; "
        "wanted one account with 10: met by poof_default"
    )


def test_pool_total_sums_usable_balances_dormant_counts_zero() -> None:
    target = PoolTarget(POOL, "total", min_credits=Decimal(15))
    readings: dict[str, Balance | BaseException] = {
        "pixian_default": bal("pixian", "9.5"),
        "poof_default": bal("poof", "6"),
    }
    verdict = target.verdict(readings)
    assert verdict.met and verdict.met_by == POOL and verdict.total == Decimal("15.5")
    readings["pixian_default"] = bal("pixian", "0", AccountState.DORMANT)
    assert not target.verdict(readings).met


def test_pool_in_images_each_account_at_its_own_cost() -> None:
    costs = {"pixian_default": Decimal("0.75"), "poof_default": Decimal(2)}
    target = PoolTarget(POOL, "total", min_images=10, costs=costs)
    # 5 credits at 0.75 pay for 6 images; 9 at 2 for 4: 10 in total
    verdict = target.verdict({"pixian_default": bal("pixian", "5"), "poof_default": bal("poof", "9")})
    assert verdict.met and dict(verdict.amounts) == {"pixian_default": 6, "poof_default": 4}
    assert verdict.as_dict()["unit"] == "images" and verdict.as_dict()["total"] == "10"
    assert not PoolTarget(POOL, "any", min_images=10, costs=costs).verdict(verdict.readings).met
    free = PoolTarget(
        POOL, "any", min_images=3, costs={"pixian_default": Decimal(0), "poof_default": Decimal(2)}
    )
    assert free.verdict({"pixian_default": bal("pixian", "1")}).met_by == ("pixian_default",)


def test_pool_in_images_needs_every_accounts_cost() -> None:
    # a missing cost is no free account (which would meet any min_images at once)
    with pytest.raises(InvalidOptionError, match="cost per image for poof_default"):
        PoolTarget(POOL, "any", min_images=3, costs={"pixian_default": Decimal(1)})
    with pytest.raises(InvalidOptionError, match="pixian_default, poof_default"):
        PoolTarget(POOL, "total", min_images=3)
    assert PoolTarget(POOL, "total", min_credits=Decimal(3)).unit == "credits"  # credits need no costs


def test_pool_errors_fatal_and_transient() -> None:
    target = PoolTarget(POOL, "any", min_credits=Decimal(5))
    readings: dict[str, Balance | BaseException] = {
        "pixian_default": TransientVendorError("HTTP 503", vendor="pixian", status_code=503),
        "poof_default": bal("poof", "6"),
    }
    verdict = target.verdict(readings)
    assert verdict.met and verdict.fatal_error is None  # met by the readable account
    readings["poof_default"] = VendorAuthError("invalid API key", vendor="poof", status_code=401)
    verdict = target.verdict(readings)
    assert not verdict.met and verdict.fatal_error is not None
    assert verdict.fatal_error.startswith("poof_default: VendorAuthError")
    assert verdict.as_dict()["balances"] == {"pixian_default": None, "poof_default": None}
    assert set(verdict.as_dict()["errors"]) == set(POOL)


@pytest.mark.parametrize("bad", [0, "1.5", -2, "many"])
def test_min_images_is_a_whole_positive_number(bad: Any) -> None:
    with pytest.raises(InvalidOptionError, match="min_images"):
        parse_min_images(bad)
    assert parse_min_images("12") == 12


def test_pool_costs_are_parsed_exactly_and_never_negative() -> None:
    # a float cost is read as written (Decimal(0.1) is 0.1000000000000000055...: 1 credit paid 9 images)
    target = PoolTarget.parse(["pixian_default"], "total", None, 10, {"pixian_default": 0.1})
    assert target.amount("pixian_default", bal("pixian", "1")) == 10
    # a negative or non-finite cost is no free account: it would meet any min_images at once
    for bad in ("-1", "NaN", "a lot"):
        with pytest.raises(InvalidOptionError, match=r"costs\['pixian_default'\]"):
            PoolTarget.parse(["pixian_default"], "any", None, 3, {"pixian_default": bad})


def test_pool_in_images_an_unusable_or_unreadable_account_at_no_cost_pays_for_none() -> None:
    # 0 usable credits at 0 per image are no free account: only a usable one pays for any number
    costs = {"pixian_default": Decimal(0), "poof_default": Decimal(1)}
    for pooling in ("any", "total"):
        target = PoolTarget(POOL, pooling, min_images=3, costs=costs)
        for pixian in (
            bal("pixian", "0", AccountState.DORMANT),
            bal("pixian", "5", AccountState.SUSPENDED),
            VendorAuthError("invalid API key", vendor="pixian", status_code=401),
            TransientVendorError("HTTP 503", vendor="pixian", status_code=503),
        ):
            verdict = target.verdict({"pixian_default": pixian, "poof_default": bal("poof", "2")})
            assert not verdict.met and verdict.amounts.get("pixian_default", Decimal(0)) == 0
        verdict = target.verdict({"pixian_default": bal("pixian", "1"), "poof_default": bal("poof", "0")})
        assert verdict.met and verdict.met_by == ("pixian_default",)


def test_pool_refuses_an_unknown_pooling() -> None:
    # "Any" or a typo was taken as "total": the pool met on the sum when one account alone was wanted
    for pooling in ("Any", "sum", ""):
        with pytest.raises(InvalidOptionError, match="pooling"):
            PoolTarget(POOL, pooling, min_credits=Decimal(5))
    with pytest.raises(InvalidOptionError, match="pooling"):
        PoolTarget.parse(POOL, "totl", 5, None, None)
    assert PoolTarget.parse(POOL, None, 5, None, None).pooling == "any"


def test_pool_in_images_at_no_cost_counts_every_account_that_takes_calls() -> None:
    """
    The pre-flight's rule (takes_calls): at 0 per image an account that takes calls pays for any number,
    credits or not: an active one with none left, or a dormant one whose calls run in test mode (no pack
    needed). Both were counted 0 images (no usable credits), so a min_images sensor waited for ever.
    """
    costs = {"pixian_default": Decimal(0), "poof_default": Decimal(1)}
    empty = Balance(vendor="pixian", remaining=Decimal(0))
    testing = Balance(vendor="pixian", remaining=Decimal(0), state=AccountState.DORMANT, test_mode=True)
    for pooling in ("any", "total"):
        target = PoolTarget(POOL, pooling, min_images=3, costs=costs)
        for pixian in (empty, testing):
            verdict = target.verdict({"pixian_default": pixian, "poof_default": bal("poof", "0")})
            assert verdict.met and verdict.met_by == ("pixian_default",)
            assert verdict.amounts["pixian_default"] == 3
        suspended = Balance(
            vendor="pixian", remaining=Decimal(0), state=AccountState.SUSPENDED, test_mode=True
        )
        assert not target.verdict({"pixian_default": suspended, "poof_default": bal("poof", "0")}).met
    dearer = PoolTarget(POOL, "total", min_images=3, costs={**costs, "pixian_default": Decimal(1)})
    assert dearer.amount("pixian_default", testing) == 0  # a cost per image: its credits decide


def test_takes_calls() -> None:
    assert takes_calls(Balance(vendor="poof", remaining=Decimal(0)))
    assert takes_calls(Balance(vendor="pixian", remaining=Decimal(0), state=AccountState.UNKNOWN))
    dormant = Balance(vendor="pixian", remaining=Decimal(0), state=AccountState.DORMANT)
    assert not takes_calls(dormant) and takes_calls(replace(dormant, test_mode=True))
    suspended = replace(dormant, state=AccountState.SUSPENDED)
    assert not takes_calls(suspended) and not takes_calls(replace(suspended, test_mode=True))
