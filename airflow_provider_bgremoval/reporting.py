"""Deprecated (one release): run reports live in ``operators.report``, ``run_summary``, ``contact_sheet``."""

from __future__ import annotations

from airflow_provider_bgremoval._moved import moved_names, warn_moved
from airflow_provider_bgremoval.pipeline import manifest
from airflow_provider_bgremoval.pipeline.naming import internal_prefix

__getattr__ = moved_names(
    __name__,
    {
        "airflow_provider_bgremoval.operators.report": "RunReportOperator report_prefix",
        "airflow_provider_bgremoval.run_summary": "RunSummary summarise_manifests",
        "airflow_provider_bgremoval.contact_sheet": "render_contact_sheet contact_sheet_size checkerboard",
        "airflow_provider_bgremoval.pipeline.manifest:STATUSES": "REPORT_STATUSES",
    },
)


def manifest_run_prefix(destination_prefix: str, dag_id: str, run_id: str) -> str:
    """
    Deprecated: where the bucket tasks of one DAG run write their manifests.

    :param destination_prefix: the bucket tasks' destination prefix.
    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    """
    warn_moved(
        f"{__name__}.manifest_run_prefix",
        f"use {manifest.__name__}.manifest_run_prefix(internal_prefix, dag_id, run_id)",
    )
    return manifest.manifest_run_prefix(internal_prefix(destination_prefix), dag_id, run_id)
