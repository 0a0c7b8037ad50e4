"""The deprecated modules ``operators.credits`` and ``reporting``: every old name still imports and warns."""

from __future__ import annotations

import importlib

import pytest

from airflow_provider_bgremoval import contact_sheet, reporting, run_summary
from airflow_provider_bgremoval.operators import monitor, preflight, report
from airflow_provider_bgremoval.pipeline import manifest

CREDITS_MOVED = {
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
REPORTING_MOVED = {
    "RunReportOperator": report.RunReportOperator,
    "report_prefix": report.report_prefix,
    "RunSummary": run_summary.RunSummary,
    "summarise_manifests": run_summary.summarise_manifests,
    "render_contact_sheet": contact_sheet.render_contact_sheet,
    "contact_sheet_size": contact_sheet.contact_sheet_size,
    "checkerboard": contact_sheet.checkerboard,
    "REPORT_STATUSES": manifest.STATUSES,  # one status tuple
}


# -- operators.credits -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CREDITS_MOVED))
def test_credits_old_names_warn_and_are_the_new_objects(name: str) -> None:
    old = importlib.import_module("airflow_provider_bgremoval.operators.credits")
    with pytest.warns(DeprecationWarning, match=rf"operators\.credits\.{name} is deprecated"):
        assert getattr(old, name) is CREDITS_MOVED[name]


def test_credits_from_import_still_works() -> None:
    with pytest.warns(DeprecationWarning, match="airflow_provider_bgremoval.operators.preflight"):
        from airflow_provider_bgremoval.operators.credits import CreditsCheckOperator
    assert CreditsCheckOperator is preflight.CreditsCheckOperator


def test_credits_unknown_names_are_attribute_errors() -> None:
    old = importlib.import_module("airflow_provider_bgremoval.operators.credits")
    with pytest.raises(AttributeError, match="no attribute 'usable_credits'"):
        old.usable_credits  # noqa: B018


# -- reporting -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REPORTING_MOVED))
def test_reporting_old_names_warn_and_are_the_new_objects(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"reporting\.{name} is deprecated"):
        assert getattr(reporting, name) is REPORTING_MOVED[name]


def test_manifest_run_prefix_keeps_its_old_signature() -> None:
    with pytest.warns(DeprecationWarning, match="pipeline.manifest.manifest_run_prefix"):
        prefix = reporting.manifest_run_prefix("cutouts", "dag", "manual__2026/11")
    assert prefix == "cutouts/_bgremoval/manifests/dag/manual__2026%2F11/"  # naming.folder_name
    assert manifest.manifest_object_name(
        "cutouts/_bgremoval/", "dag", "manual__2026/11", "t", 0, 1
    ).startswith(prefix)
