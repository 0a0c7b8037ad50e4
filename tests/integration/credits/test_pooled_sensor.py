"""The pooled CreditsSensor end to end: real Airflow (``dag.test()``, its inline triggerer) and the sandbox.

Two accounts at different costs per image wait, deferred, until together they pay for 6 images; a
thread tops one up through the sandbox admin API once the trigger has polled, and the task resumes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox

pytestmark = pytest.mark.integration

POOL_DAG = """
from airflow.sdk import DAG, task
from airflow_provider_bgremoval.sensors.credits import CreditsSensor

with DAG("credits_pooled_sensor", schedule=None, catchup=False) as dag:
    wait = CreditsSensor(
        task_id="wait_for_pool",
        conn_id=["pixian_default", "poof_default"],
        min_images=6,
        pooling="total",
        cost_per_image={"pixian_default": "0.5"},  # poof: its cost table's 1 credit
        deferrable=True,
        poke_interval=0.2,
        timeout=120,
    )

    @task
    def after(pool):
        return pool["met_by"]

    after(wait.output)
"""


def account_polls(sandbox: RunningSandbox, vendor: str) -> int:
    return sum(1 for r in sandbox.admin.requests(vendor) if r["kind"] == "account")


def test_deferred_pool_resumes_when_the_accounts_together_can_pay(
    vendor_connections: RunningSandbox,
    dag_tester: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sandbox = vendor_connections
    sandbox.admin.set_balance("pixian", 1.5)  # 3 images at 0.5
    sandbox.admin.set_balance("poof", 1)  # 1 image

    def top_up() -> None:
        deadline = time.monotonic() + 60
        while account_polls(sandbox, "poof") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        sandbox.admin.set_balance("poof", 3)  # 3 + 3 = 6 images

    helper = threading.Thread(target=top_up, daemon=True)
    helper.start()
    run = dag_tester.run(POOL_DAG, "credits_pooled_sensor")
    helper.join(timeout=5)
    assert run.state == "success", run.task_states()
    pool = run.xcom("wait_for_pool")
    assert (pool["unit"], pool["needed"], pool["total"]) == ("images", "6", "6")
    assert pool["amounts"] == {"pixian_default": "3", "poof_default": "3"}
    assert run.xcom("after") == ["pixian_default", "poof_default"]
    assert account_polls(sandbox, "poof") >= 3  # low at first, polled by the trigger, then met
    assert sandbox.admin.charges() == []
    out = capsys.readouterr()
    logs = caplog.text + out.out + out.err
    assert "running trigger in line" in logs  # the sensor deferred; dag.test() ran its trigger
    assert "pool (total) in images" in logs and "waiting" in logs and "met by" in logs
