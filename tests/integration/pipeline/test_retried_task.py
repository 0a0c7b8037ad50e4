"""A retried bucket task: its budgets hold across its tries, and its outlet announces what every try made.

Real Airflow (``dag.test()`` with ``retries=1, retry_delay=0``), fake-gcs-server and the vendor sandbox,
whose charge log is the proof of what was spent (docs/pipeline.md, "Budgets count money at risk").
"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_bgremoval.pipeline.plan_store import ShardRef
from tests.integration.pipeline.test_bucket_pipeline import encode, seed, studio_shot

pytestmark = pytest.mark.integration

PUBLISHER = Path(__file__).parents[3] / "example_dags" / "example_publish_cutouts.py"

RETRIED_TASK = """
from datetime import timedelta
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    RemoveBackgroundOperator(
        task_id="cutouts", conn_id="pixian_default",
        source_bucket={src!r}, source_prefix="raw/", destination_bucket={dst!r}, destination_prefix="cut/",
        gcp_conn_id=None, max_concurrency=1, {budget},
        retries=1, retry_delay=timedelta(seconds=0),
    )
"""

RETRIED_SHARDS = """
from datetime import timedelta
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator
from airflow_provider_bgremoval.operators.sharding import PlannedShardsOperator

BATCH = dict(conn_id="pixian_default", source_bucket={src!r}, source_prefix="raw/",
             destination_bucket={dst!r}, destination_prefix="cut/", gcp_conn_id=None, max_concurrency=1,
             max_credits=10)
with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    check = CreditsCheckOperator(task_id="check_credits", max_shards=2, min_shard_size=1, retries=0, **BATCH)
    shards = PlannedShardsOperator(task_id="shards", preflight_task_id="check_credits")
    cutouts = RemoveBackgroundOperator.partial(
        task_id="cutouts", retries=1, retry_delay=timedelta(seconds=0), **BATCH
    ).expand(shard=shards.output)
    check >> shards >> cutouts
"""

ANNOUNCING_TASK = """
from datetime import timedelta
from airflow.sdk import DAG, Asset
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

cutouts = Asset("gs://{dst}/cutouts/")
with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    RemoveBackgroundOperator(   # as example_process_on_arrival's task (on_error="continue", retries, outlet)
        task_id="remove_backgrounds", conn_id="pixian_default",
        source_bucket={src!r}, source_prefix="incoming/", destination_bucket={dst!r},
        destination_prefix="cutouts/", gcp_conn_id=None, max_concurrency=2, on_error="continue",
        outlets=[cutouts], execution_timeout=timedelta(seconds=3),
        retries=1, retry_delay=timedelta(seconds=0),
    )
"""


def _photos(prefix: str, count: int) -> dict[str, bytes]:
    return {f"{prefix}p-{i:02d}.png": encode(studio_shot((96 + i, 80)), "PNG") for i in range(count)}


@pytest.mark.parametrize(
    "budget",
    ["max_credits=3", "max_credits_per_account={'pixian_default': 3}"],
    ids=["max_credits", "max_credits_per_account"],
)
def test_a_retry_gets_only_what_the_earlier_tries_left_of_the_budget(
    budget: str, vendor_connections: Any, gcs_storage: Any, gcs_bucket_factory: Any, dag_tester: Any
) -> None:
    sandbox = vendor_connections
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    seed(gcs_storage, src, _photos("raw/", 10))
    # the first call is refused (400: nothing charged), so try 1 spends its 3 credits and fails at end
    sandbox.admin.fail_next("pixian", count=1, fault="error", status=400)
    source = RETRIED_TASK.format(dag_id="retried_budget", src=src, dst=dst, budget=budget)
    run = dag_tester.run(source, "retried_budget")

    assert sandbox.admin.total_charged("pixian") == 3  # was 6: try 2 got the whole budget again
    tries = sorted(o.name for o in gcs_storage.list_objects(dst, "cut/_bgremoval/manifests/"))
    assert [name.rpartition("/")[2] for name in tries if ".part-" not in name] == [
        "try-1.jsonl",
        "try-2.jsonl",
    ]
    summary = run.xcom("cutouts", "summary")
    assert summary["credits_spent"] == "0" and summary["done"] == 0  # nothing left to send
    assert summary["pending"] == 7 and summary["skipped"] == 3
    assert set(summary["pending_reasons"]) == {"max_credits"}


def test_a_retried_shard_stays_within_its_share(
    vendor_connections: Any, gcs_storage: Any, gcs_bucket_factory: Any, dag_tester: Any
) -> None:
    sandbox = vendor_connections
    costs = sandbox.admin.settings()["costs"]
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    seed(gcs_storage, src, _photos("raw/", 20))
    sandbox.admin.settings(costs={"pixian_per_image": 2})  # charged 2 against a cost table of 1
    sandbox.admin.fail_next("pixian", count=1, fault="error", status=400)  # one shard's try 1 fails at end
    try:
        run = dag_tester.run(RETRIED_SHARDS.format(dag_id="retried_shard", src=src, dst=dst), "retried_shard")
    finally:
        sandbox.admin.settings(costs=costs)

    refs = [ShardRef.model_validate(ref) for ref in run.xcom("check_credits", "shards")]
    assert sum(ref.max_credits or 0 for ref in refs) == 10
    # each shard's share is 5: 4 charged by shard 1, 4 by shard 0's try 1 and none by its try 2 (was 12:
    # try 2 took the whole share again; 1 credit left is less than the 2 each image costs)
    assert sandbox.admin.total_charged("pixian") == 8


def test_the_outlet_announces_and_the_publisher_lists_every_try_s_cutouts(
    vendor_connections: Any, gcs_storage: Any, gcs_bucket_factory: Any, dag_tester: Any
) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    sandbox = vendor_connections
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    seed(gcs_storage, src, _photos("incoming/", 12))
    sandbox.admin.set_faults("pixian", latency_ms=700)  # try 1 times out after some of the cut-outs
    try:
        source = ANNOUNCING_TASK.format(dag_id="announce_retried", src=src, dst=dst)
        dag_tester.run(source, "announce_retried")
    finally:
        sandbox.admin.clear_faults("pixian")
    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_dag_id == "announce_retried").all()
        extras = [dict(event.extra) for event in events]
    outputs = sorted(
        f"gs://{dst}/{o.name}"
        for o in gcs_storage.list_objects(dst, "cutouts/")
        if "_bgremoval" not in o.name
    )
    assert len(outputs) == 12 and len(extras) == 1
    (extra,) = extras
    assert [uri.rpartition("/")[2] for uri in extra["manifest_uris"]] == ["try-1.jsonl", "try-2.jsonl"]
    assert extra["manifest_uri"] == extra["manifest_uris"][-1]
    assert (extra["done"], extra["skipped"]) == (12, 0)  # was 2 and 10: the last try's counts only
    assert float(extra["credits"]) == sandbox.admin.total_charged("pixian") == 12

    # example_publish_cutouts' own task, on this event: it publishes every cut-out the run made (was 2)
    publisher = runpy.run_path(str(PUBLISHER), run_name="publisher_under_test")
    new_cutouts = publisher["dag"].get_task("new_cutouts").python_callable
    event = SimpleNamespace(source_run_id="announce_retried", extra=extra)
    made = new_cutouts(triggering_asset_events={publisher["cutouts"]: [event]})
    assert sorted(made) == outputs
