"""Destination names and the default folders (pure functions)."""

from __future__ import annotations

from airflow_provider_bgremoval.pipeline.naming import masters_prefix


def test_the_masters_go_under_the_destination_prefix_unless_a_prefix_is_given() -> None:
    assert masters_prefix("products") == "products/masters/"
    assert masters_prefix("products/", "") == "products/masters/"
    assert masters_prefix("") == masters_prefix(None) == "masters/"
    assert masters_prefix("products/", "cutouts/") == "cutouts/"
