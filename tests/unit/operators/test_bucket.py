"""The bucket operators' verdict on a finished batch."""

from __future__ import annotations

from collections import Counter

import pytest
from airflow.exceptions import AirflowException

from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.pipeline.engine import BatchResult

SUMMARY = {"manifest_uri": "gs://out/_bgremoval/manifest.jsonl", "total": 11, "claims_elsewhere": []}


def test_the_failure_rate_counts_billable_rows_only() -> None:
    op = RemoveBackgroundOperator(
        task_id="t",
        conn_id="pixian_default",
        source_bucket="raw",
        destination_bucket="out",
        gcp_conn_id=None,
        on_error="fail_rate",
        max_failure_rate=0.1,
    )
    # 5 images sent and done; 6 render-only sources failed (0 credits, no vendor call).
    rendered = BatchResult(counts=Counter(done=5, failed=6), render_only=Counter(failed=6), billable=5)
    op._verdict({}, "pixian", rendered, SUMMARY)  # type: ignore[arg-type]
    sent = BatchResult(counts=Counter(done=5, failed=6), billable=11)
    with pytest.raises(AirflowException, match="failure rate 55% is over max_failure_rate 10%"):
        op._verdict({}, "pixian", sent, SUMMARY)  # type: ignore[arg-type]
