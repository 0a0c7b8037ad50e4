"""The deprecated ``reporting`` module: every old name still imports, with a warning."""

from __future__ import annotations

import pytest

from airflow_provider_bgremoval import contact_sheet, reporting, run_summary
from airflow_provider_bgremoval.operators import report
from airflow_provider_bgremoval.pipeline import manifest

MOVED = {
    "RunReportOperator": report.RunReportOperator,
    "report_prefix": report.report_prefix,
    "RunSummary": run_summary.RunSummary,
    "summarise_manifests": run_summary.summarise_manifests,
    "render_contact_sheet": contact_sheet.render_contact_sheet,
    "contact_sheet_size": contact_sheet.contact_sheet_size,
    "checkerboard": contact_sheet.checkerboard,
    "REPORT_STATUSES": manifest.STATUSES,  # one status tuple
}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_old_names_warn_and_are_the_new_objects(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"reporting\.{name} is deprecated"):
        assert getattr(reporting, name) is MOVED[name]


def test_manifest_run_prefix_keeps_its_old_signature() -> None:
    with pytest.warns(DeprecationWarning, match="pipeline.manifest.manifest_run_prefix"):
        prefix = reporting.manifest_run_prefix("cutouts", "dag", "manual__2026/11")
    assert prefix == "cutouts/_bgremoval/manifests/dag/manual__2026_11/"
    assert manifest.manifest_object_name(
        "cutouts/_bgremoval/", "dag", "manual__2026/11", "t", 0, 1
    ).startswith(prefix)
