"""The deprecated ``operators.credits`` module: every old name still imports, with a warning."""

from __future__ import annotations

import importlib

import pytest

from airflow_provider_bgremoval.operators import monitor, preflight

MOVED = {
    "CreditsCheckOperator": preflight.CreditsCheckOperator,
    "GenerateCreditsCheckOperator": preflight.GenerateCreditsCheckOperator,
    "CreditsPreflightMixin": preflight.CreditsPreflightOperator,
    "SafetyMargin": preflight.SafetyMargin,
    "describe_header_only": preflight.describe_header_only,
    "ON_INSUFFICIENT_CHOICES": preflight.ON_INSUFFICIENT_CHOICES,
    "CreditMonitorOperator": monitor.CreditMonitorOperator,
    "BalanceCheck": monitor.BalanceCheck,
    "check_balances": monitor.check_balances,
    "acheck_balances": monitor.acheck_balances,
    "parse_thresholds": monitor.parse_thresholds,
    "ON_LOW_CHOICES": monitor.ON_LOW_CHOICES,
}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_old_names_warn_and_are_the_new_objects(name: str) -> None:
    old = importlib.import_module("airflow_provider_bgremoval.operators.credits")
    with pytest.warns(DeprecationWarning, match=rf"operators\.credits\.{name} is deprecated"):
        assert getattr(old, name) is MOVED[name]


def test_from_import_still_works() -> None:
    with pytest.warns(DeprecationWarning, match="airflow_provider_bgremoval.operators.preflight"):
        from airflow_provider_bgremoval.operators.credits import CreditsCheckOperator
    assert CreditsCheckOperator is preflight.CreditsCheckOperator


def test_unknown_names_are_attribute_errors() -> None:
    old = importlib.import_module("airflow_provider_bgremoval.operators.credits")
    with pytest.raises(AttributeError, match="no attribute 'usable_credits'"):
        old.usable_credits  # noqa: B018
