"""Template fields fed by upstream tasks and whole-value templates, in real Airflow (``dag.test()``).

A budget and a connection computed upstream (``XComArg``) reach the pre-flight and the bucket task at
run time; a templated pool and a templated thresholds mapping (Params rendered as Python text) reach the
sensor and the monitor as the list and the mapping, not as one string.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage

pytestmark = pytest.mark.integration

UPSTREAM_DAG = """
from airflow.sdk import DAG, task
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:

    @task
    def pick_account():
        return "poof_default"

    @task
    def budget():
        return 2

    account, credits = pick_account(), budget()
    batch = dict(
        conn_id=account,
        max_credits=credits,
        source_bucket={src!r},
        source_prefix="raw/",
        destination_bucket={dst!r},
        destination_prefix="cut/",
        gcp_conn_id=None,
        max_concurrency=1,
    )
    check = CreditsCheckOperator(task_id="check_credits", retries=0, **batch)
    cutouts = RemoveBackgroundOperator(task_id="cutouts", retries=0, **batch)
    check >> cutouts
"""

PARAMS_DAG = """
from airflow.sdk import DAG, Param
from airflow_provider_bgremoval.operators.monitor import CreditMonitorOperator
from airflow_provider_bgremoval.sensors.credits import CreditsSensor

with DAG(
    {dag_id!r},
    schedule=None,
    catchup=False,
    params={{
        "pool": Param(["pixian_default", "poof_default"], type="array"),
        "floors": Param({{"pixian_default": 1, "poof_default": 1}}, type="object"),
    }},
) as dag:
    wait = CreditsSensor(
        task_id="wait_for_credits",
        conn_id="{{{{ params.pool }}}}",
        min_credits=10,
        pooling="total",
        poke_interval=0.2,
        timeout=30,
        retries=0,
    )
    monitor = CreditMonitorOperator(task_id="monitor", thresholds="{{{{ params.floors }}}}", retries=0)
    wait >> monitor
"""


@pytest.fixture
def env(
    vendor_connections: RunningSandbox, gcs_storage: GcsStorage, gcs_bucket_factory: Callable[..., str]
) -> tuple[RunningSandbox, GcsStorage, str, str]:
    return vendor_connections, gcs_storage, gcs_bucket_factory("src"), gcs_bucket_factory("dst")


def test_a_budget_and_a_connection_from_upstream_tasks(env: Any, dag_tester: Any, images_dir: Path) -> None:
    sandbox, storage, src, dst = env
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        storage.write(src, f"raw/{name}", (images_dir / name).read_bytes(), content_type="image/png")
    sandbox.admin.set_balance("poof", 10)
    run = dag_tester.run(
        UPSTREAM_DAG.format(dag_id="templated_upstream", src=src, dst=dst), "templated_upstream"
    )
    assert run.task_states() == {
        "pick_account": "success",
        "budget": "success",
        "check_credits": "success",
        "cutouts": "success",
    }
    summary = run.xcom("cutouts")
    assert (summary["done"], summary["pending"], summary["pending_reasons"]) == (2, 1, {"max_credits": 1})
    estimate = run.xcom("check_credits")
    assert (estimate["conn_id"], estimate["billable_images"], estimate["deferred_images"]) == (
        "poof_default",
        2,
        1,
    )
    assert sandbox.admin.total_charged("poof") == 2  # the budget the upstream task returned
    assert sandbox.admin.total_charged() == 2


def test_a_templated_pool_and_thresholds_mapping(env: Any, dag_tester: Any) -> None:
    sandbox = env[0]
    sandbox.admin.set_balance("pixian", 6)
    sandbox.admin.set_balance("poof", 6)  # 12 in all: the pool's total meets 10, neither alone does
    run = dag_tester.run(PARAMS_DAG.format(dag_id="templated_params"), "templated_params")
    assert run.task_states() == {"wait_for_credits": "success", "monitor": "success"}
    assert run.xcom("wait_for_credits")["met_by"] == ["pixian_default", "poof_default"]
    assert set(run.xcom("monitor")) == {"pixian_default", "poof_default"}
