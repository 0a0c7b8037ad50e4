"""Deprecated module, kept for one release: run reports live in modules of their own.

* :class:`~airflow_provider_bgremoval.operators.report.RunReportOperator` and
  :func:`~airflow_provider_bgremoval.operators.report.report_prefix`:
  :mod:`airflow_provider_bgremoval.operators.report`;
* :func:`~airflow_provider_bgremoval.run_summary.summarise_manifests` and
  :class:`~airflow_provider_bgremoval.run_summary.RunSummary`: :mod:`airflow_provider_bgremoval.run_summary`;
* :func:`~airflow_provider_bgremoval.contact_sheet.render_contact_sheet`,
  :func:`~airflow_provider_bgremoval.contact_sheet.contact_sheet_size` and
  :func:`~airflow_provider_bgremoval.contact_sheet.checkerboard`:
  :mod:`airflow_provider_bgremoval.contact_sheet`;
* ``REPORT_STATUSES`` is :data:`airflow_provider_bgremoval.pipeline.manifest.STATUSES`;
  ``manifest_run_prefix(destination_prefix, …)`` is
  :func:`airflow_provider_bgremoval.pipeline.manifest.manifest_run_prefix` of the destination's
  internal prefix.

Importing a name from here still works and warns (DeprecationWarning).
"""

from __future__ import annotations

import warnings

from airflow_provider_bgremoval._moved import moved_names
from airflow_provider_bgremoval.pipeline import manifest
from airflow_provider_bgremoval.pipeline.naming import INTERNAL_DIR, normalise_prefix

_REPORT = "airflow_provider_bgremoval.operators.report"
_SUMMARY = "airflow_provider_bgremoval.run_summary"
_SHEET = "airflow_provider_bgremoval.contact_sheet"

__getattr__ = moved_names(
    __name__,
    {
        "RunReportOperator": _REPORT,
        "report_prefix": _REPORT,
        "RunSummary": _SUMMARY,
        "summarise_manifests": _SUMMARY,
        "render_contact_sheet": _SHEET,
        "contact_sheet_size": _SHEET,
        "checkerboard": _SHEET,
        "REPORT_STATUSES": "airflow_provider_bgremoval.pipeline.manifest:STATUSES",
    },
)


def manifest_run_prefix(destination_prefix: str, dag_id: str, run_id: str) -> str:
    """
    Deprecated: where the bucket tasks of one DAG run write their manifests.

    :param destination_prefix: the bucket tasks' destination prefix.
    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    """
    warnings.warn(
        f"{__name__}.manifest_run_prefix is deprecated and will be removed in the next release: use "
        "airflow_provider_bgremoval.pipeline.manifest.manifest_run_prefix(internal_prefix, dag_id, run_id)",
        DeprecationWarning,
        stacklevel=2,
    )
    internal_prefix = f"{normalise_prefix(destination_prefix)}{INTERNAL_DIR}"
    return manifest.manifest_run_prefix(internal_prefix, dag_id, run_id)
