"""A Pixian account in test mode that reads dormant (no pack: Pixian's testing needs no purchase) chained with
Poof: the pre-flight and the batch agree that Pixian takes every image, free (dag.test(), fake-gcs-server,
the sandbox's balances and charge ledger; nothing of ours is mocked)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.integration.pipeline.test_renditions_pipeline import SOURCES
from tests.support.sandbox import connection_env

pytestmark = pytest.mark.integration

DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator

BATCH = dict(
    conn_id=["pixian_default", "poof_default"],
    cost_per_image={{"poof_default": 1}},
    source_bucket={src!r},
    source_prefix="raw/",
    destination_bucket={dst!r},
    destination_prefix="cut/",
    gcp_conn_id=None,
)
with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    check = CreditsCheckOperator(task_id="check_credits", retries=0, safety_margin=0, **BATCH)
    cutouts = RemoveBackgroundOperator(task_id="cutouts", retries=0, **BATCH)
    check >> cutouts
"""


def process_calls(sandbox: RunningSandbox, vendor: str) -> int:
    return sum(1 for request in sandbox.admin.requests(vendor) if request["kind"] == "process")


def test_a_dormant_test_mode_account_takes_the_batch_free_as_the_pre_flight_prices_it(
    vendor_connections: RunningSandbox,
    gcs_storage: GcsStorage,
    gcs_bucket_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    dag_tester,
) -> None:
    sandbox = vendor_connections
    name = "AIRFLOW_CONN_PIXIAN_DEFAULT"
    pixian = json.loads(connection_env(sandbox)[name])
    monkeypatch.setenv(name, json.dumps({**pixian, "extra": {**pixian["extra"], "test_mode": True}}))
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    for source, data in SOURCES.items():
        gcs_storage.write(src, source, data, content_type="image/png")
    sandbox.admin.set_balance("pixian", 0, state="dormant")
    sandbox.admin.set_balance("poof", 2)  # 3 images: Poof alone would be one short
    run = dag_tester.run(DAG.format(dag_id="test_mode_dormant", src=src, dst=dst), "test_mode_dormant")
    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    assert [(a["conn_id"], a["state"], a["images"]) for a in estimate["accounts"]] == [
        ("pixian_default", "dormant", 3),
        ("poof_default", "active", 0),
    ]
    assert (estimate["needed"], estimate["shortfall_images"]) == ("0", 0)
    # the batch: every image on Pixian in test mode, nothing charged, Poof never called
    assert process_calls(sandbox, "pixian") == 3 and process_calls(sandbox, "poof") == 0
    assert [charge["credits"] for charge in sandbox.admin.charges()] == [0, 0, 0]  # test calls: free
    assert len([o for o in gcs_storage.list_objects(dst, "cut/") if o.name.endswith(".png")]) == 3
