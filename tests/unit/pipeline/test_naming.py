"""Destination names and the default folders (pure functions)."""

from __future__ import annotations

import pytest

from airflow_provider_bgremoval.operators.report import report_prefix
from airflow_provider_bgremoval.pipeline.manifest import manifest_object_name, manifest_run_prefix
from airflow_provider_bgremoval.pipeline.naming import (
    UnsafeNameError,
    destination_name,
    folder_name,
    masters_prefix,
)
from airflow_provider_bgremoval.pipeline.plan_store import plan_prefix


def test_the_masters_go_under_the_destination_prefix_unless_a_prefix_is_given() -> None:
    assert masters_prefix("products") == "products/masters/"
    assert masters_prefix("products/", "") == "products/masters/"
    assert masters_prefix("") == masters_prefix(None) == "masters/"
    assert masters_prefix("products/", "cutouts/") == "cutouts/"


@pytest.mark.parametrize(
    "run_ids", [("a/b", "a_b"), ("a:b", "a_b"), ("a/b", "a%2Fb"), ("a b", "a+b"), ("..", "%2E%2E")]
)
def test_every_folder_of_the_providers_own_objects_keeps_two_runs_apart(run_ids) -> None:
    """Plans, manifests and reports: one rule (folder_name), so one run never overwrites another's."""
    builders = {
        "plans": lambda run_id: plan_prefix("_bgremoval/", "dag", run_id, "check", 1),
        "manifests": lambda run_id: manifest_object_name("_bgremoval/", "dag", run_id, "cut", 3, 1),
        "reports": lambda run_id: report_prefix("", "dag", run_id),
    }
    for kind, build in builders.items():
        first, second = (build(run_id) for run_id in run_ids)
        assert first != second, kind
        assert first.count("/") == build("x").count("/"), kind  # one folder level for the run
    readable = "manual__2026-12-03T10:00:00.123+00:00"  # Airflow's own ids stay as they are
    assert report_prefix("cut", "dag", readable) == f"cut/_bgremoval/reports/dag/{readable}/"
    assert manifest_run_prefix("_bgremoval/", "dag", readable) == f"_bgremoval/manifests/dag/{readable}/"
    assert folder_name("a/b") == "a%2Fb" and folder_name(".") == "%2E"


def test_an_output_name_longer_than_gcs_stores_is_refused() -> None:
    """A source name GCS took (1,024 bytes) can grow past it: a longer destination prefix, an extension."""
    fits = "é" * 508 + ".jpg"  # 1,020 bytes: two per é
    assert destination_name(fits, "", "", ".png") == "é" * 508 + ".png"
    with pytest.raises(UnsafeNameError, match="1033 bytes, longer than the 1024 bytes"):
        destination_name("raw/" + fits, "raw/", "cutouts/2026/", ".png")
    with pytest.raises(UnsafeNameError, match="1025 bytes"):
        destination_name("x" * 1021, "", "", ".png")  # no extension: ".png" is added
    assert len(destination_name("x" * 1019 + ".jpg", "", "", ".webp").encode()) == 1024
