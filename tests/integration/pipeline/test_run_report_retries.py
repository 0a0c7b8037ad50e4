"""The run report of a DAG run whose shard was retried: what every try made is reported done.

Real Airflow (``dag.test()``), fake-gcs-server and the vendor sandbox (its charge log says what was paid).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.pipeline.test_bucket_pipeline import seed
from tests.integration.pipeline.test_retried_task import RETRIED_SHARDS, _photos

pytestmark = pytest.mark.integration

REPORTED = (
    RETRIED_SHARDS
    + """
    from airflow_provider_bgremoval.operators.report import RunReportOperator

    cutouts >> RunReportOperator(
        task_id="run_report", destination_bucket={dst!r}, destination_prefix="cut/", gcp_conn_id=None,
        trigger_rule="all_done_min_one_success", fail_on_upstream_failure=False,
    )
"""
)


def test_a_retry_that_had_no_budget_left_does_not_turn_its_earlier_tries_outputs_pending(
    vendor_connections: Any, gcs_storage: Any, gcs_bucket_factory: Any, dag_tester: Any
) -> None:
    sandbox = vendor_connections
    costs = sandbox.admin.settings()["costs"]
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    seed(gcs_storage, src, _photos("raw/", 20))
    sandbox.admin.settings(costs={"pixian_per_image": 2})  # the retried shard's try 2 has 1 credit left: < 2
    sandbox.admin.fail_next("pixian", count=1, fault="error", status=400)  # one shard's try 1 fails at end
    try:
        run = dag_tester.run(REPORTED.format(dag_id="reported_retry", src=src, dst=dst), "reported_retry")
    finally:
        sandbox.admin.settings(costs=costs)

    outputs = [o.name for o in gcs_storage.list_objects(dst, "cut/") if "_bgremoval" not in o.name]
    report = json.loads(gcs_storage.read(dst, run.xcom("run_report")["report_uri"].split("/", 3)[3]))
    assert len(outputs) == 4 and sandbox.admin.total_charged("pixian") == 8
    # was done 2, pending 8: the retry's pending rows (no budget left) hid the two its try 1 made
    assert report["counts"] == {"done": 4, "skipped": 0, "rejected": 0, "failed": 0, "pending": 6}
    assert float(report["credits_spent"]) == 8
    made = {f"gs://{src}/raw/{name.rpartition('/')[2]}" for name in outputs}
    assert len(report["pending"]) == 6 and not set(report["pending"]) & made
