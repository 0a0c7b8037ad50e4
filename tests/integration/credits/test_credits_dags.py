"""Credits end to end: real Airflow (``dag.test()``), fake-gcs-server and the vendor sandbox over sockets.

* the pre-flight halts a DAG when the balance is too low and charges nothing; after a top-up the
  same DAG passes and processes; finished outputs and local rejects are not counted;
* the deferrable sensor waits in the (inline) triggerer and resumes when the balance is raised
  through the sandbox admin API;
* the credit monitor reads the three vendors' balance quirks from the sandbox.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage

pytestmark = pytest.mark.integration

PREFLIGHT_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator

BATCH = dict(
    conn_id={conn_id!r},
    source_bucket={src!r},
    source_prefix="raw/",
    destination_bucket={dst!r},
    destination_prefix="cut/",
    output_format="png",
    gcp_conn_id=None,
    max_concurrency=4,
)

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    check = CreditsCheckOperator(task_id="check_credits", retries=0, {check_extra} **BATCH)
    cutouts = RemoveBackgroundOperator(task_id="cutouts", retries=0, on_error="continue", **BATCH)
    check >> cutouts
"""

SENSOR_DAG = """
from airflow.sdk import DAG, task
from airflow_provider_bgremoval.sensors.credits import CreditsSensor

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    wait = CreditsSensor(
        task_id="wait_for_credits",
        conn_id={conn_id!r},
        min_credits={min_credits!r},
        deferrable=True,
        poke_interval=0.2,
        timeout=120,
    )

    @task
    def after(balance):
        return balance["remaining"]

    after(wait.output)
"""


@pytest.fixture
def env(
    vendor_connections: RunningSandbox, gcs_storage: GcsStorage, gcs_bucket_factory: Callable[..., str]
) -> tuple[RunningSandbox, GcsStorage, str, str]:
    return vendor_connections, gcs_storage, gcs_bucket_factory("src"), gcs_bucket_factory("dst")


@pytest.fixture
def sources(images_dir: Path) -> dict[str, bytes]:
    """Three real photos and one object that is not an image (rejected locally, never billed)."""
    return {
        "raw/chelsea.png": (images_dir / "chelsea.png").read_bytes(),
        "raw/coffee.png": (images_dir / "coffee.png").read_bytes(),
        "raw/rocket.jpg": (images_dir / "rocket.jpg").read_bytes(),
        "raw/notes.jpg": b"this is not an image at all" * 10,
    }


def seed(storage: GcsStorage, bucket: str, objects: dict[str, bytes]) -> None:
    for name, data in objects.items():
        storage.write(bucket, name, data, content_type="application/octet-stream")


def outputs(storage: GcsStorage, bucket: str) -> list[str]:
    return sorted(o.name for o in storage.list_objects(bucket, "cut/") if not o.name.startswith("cut/_"))


@pytest.mark.parametrize("vendor", ["pixelcut", "pixian", "poof"])
def test_preflight_halts_charges_nothing_then_passes_after_top_up(
    env: Any, dag_tester: Any, sources: dict[str, bytes], vendor: str
) -> None:
    sandbox, storage, src, dst = env
    seed(storage, src, sources)
    conn_id = f"{vendor}_default"
    source = PREFLIGHT_DAG.format(
        dag_id=f"credits_preflight_{vendor}",
        conn_id=conn_id,
        src=src,
        dst=dst,
        check_extra="safety_margin=1,",
    )
    sandbox.admin.set_balance(vendor, 3)  # 3 billable images x 1 + margin 1 = 4 needed

    run = dag_tester.run(source, f"credits_preflight_{vendor}")
    assert run.state == "failed"
    assert run.task_states() == {"check_credits": "failed", "cutouts": "upstream_failed"}
    halt = run.xcom("check_credits", key="halt")
    assert halt == {
        "reason": "insufficient_credits",
        "vendor": vendor,
        "message": halt["message"],
        "remaining_images": 3,
        "needed": "4",
        "available": halt["available"],
        "fatal": True,
        "conn_id": conn_id,
    }
    assert Decimal(halt["available"]) == 3
    estimate = run.xcom("check_credits", key="estimate")
    assert (estimate["sources"], estimate["billable_images"], estimate["rejected_locally"]) == (4, 3, 1)
    assert sandbox.admin.charges() == []  # the pre-flight spent nothing
    assert not any(r["kind"] == "process" for r in sandbox.admin.requests())
    assert outputs(storage, dst) == []
    for name, data in sources.items():
        assert storage.read(src, name) == data

    sandbox.admin.set_balance(vendor, 4)
    run = dag_tester.run(source, f"credits_preflight_{vendor}")
    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    assert (estimate["needed"], estimate["required"], estimate["sufficient"]) == ("3", "4", True)
    assert run.xcom("cutouts")["done"] == 3
    assert outputs(storage, dst) == ["cut/chelsea.png", "cut/coffee.png", "cut/rocket.png"]
    assert sandbox.admin.total_charged(vendor) == 3

    # Finished outputs are not billable: with an empty account the pre-flight still passes.
    sandbox.admin.set_balance(vendor, 0)
    run = dag_tester.run(source, f"credits_preflight_{vendor}")
    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    assert (estimate["billable_images"], estimate["already_done"], estimate["needed"]) == (0, 3, "0")
    assert sandbox.admin.total_charged(vendor) == 3


def test_preflight_skip_skips_downstream(env: Any, dag_tester: Any, sources: dict[str, bytes]) -> None:
    sandbox, storage, src, dst = env
    seed(storage, src, sources)
    sandbox.admin.set_balance("poof", 2)
    source = PREFLIGHT_DAG.format(
        dag_id="credits_preflight_skip",
        conn_id="poof_default",
        src=src,
        dst=dst,
        check_extra='on_insufficient="skip",',
    )
    run = dag_tester.run(source, "credits_preflight_skip")
    assert run.task_states() == {"check_credits": "skipped", "cutouts": "skipped"}
    halt = run.xcom("check_credits", key="halt")
    assert (halt["reason"], halt["fatal"], halt["needed"], halt["available"]) == (
        "insufficient_credits",
        False,
        "3",
        "2",
    )
    assert sandbox.admin.charges() == []


def test_preflight_pixian_test_estimate_is_free(env: Any, dag_tester: Any, sources: dict[str, bytes]) -> None:
    sandbox, storage, src, dst = env
    seed(storage, src, sources)
    sandbox.admin.set_balance("pixian", 2.5)
    source = PREFLIGHT_DAG.format(
        dag_id="credits_preflight_pixian_test",
        conn_id="pixian_default",
        src=src,
        dst=dst,
        check_extra="use_test_estimate=True,",
    )
    run = dag_tester.run(source, "credits_preflight_pixian_test")
    assert run.task_states()["check_credits"] == "failed"
    estimate = run.xcom("check_credits", key="estimate")
    assert estimate["cost_source"] == "test_estimate"
    assert Decimal(estimate["cost_per_image"]) > 0
    assert Decimal(estimate["needed"]) == 3 * Decimal(estimate["cost_per_image"])
    calls = [r for r in sandbox.admin.requests("pixian") if r["kind"] == "process"]
    assert len(calls) == 1  # one sample, in test mode
    assert [c["credits"] for c in sandbox.admin.charges()] == [0]  # logged as a free test call
    assert sandbox.admin.total_charged() == 0
    assert sandbox.admin.get_balance("pixian") == 2.5


def account_polls(sandbox: RunningSandbox, vendor: str) -> int:
    return sum(1 for r in sandbox.admin.requests(vendor) if r["kind"] == "account")


def raise_balance_after_polls(
    sandbox: RunningSandbox, vendor: str, polls: int, credits: float
) -> threading.Thread:
    """Top the account up from another thread once the sensor has polled ``polls`` times."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while account_polls(sandbox, vendor) < polls and time.monotonic() < deadline:
            time.sleep(0.05)
        sandbox.admin.set_balance(vendor, credits)

    thread = threading.Thread(target=run, name="top-up", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("vendor", "low", "high", "minimum"), [("pixian", 1.25, 7.75, "7.5"), ("poof", 1, 8, "8")]
)
def test_deferrable_sensor_waits_and_resumes_after_top_up(
    vendor_connections: RunningSandbox,
    dag_tester: Any,
    vendor: str,
    low: float,
    high: float,
    minimum: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sandbox = vendor_connections
    sandbox.admin.set_balance(vendor, low)
    # poll 1 is the sensor's synchronous poke on the worker; polls 2+ come from the trigger.
    helper = raise_balance_after_polls(sandbox, vendor, 3, high)
    dag_id = f"credits_sensor_{vendor}"
    run = dag_tester.run(
        SENSOR_DAG.format(dag_id=dag_id, conn_id=f"{vendor}_default", min_credits=minimum), dag_id
    )
    helper.join(timeout=5)
    assert run.state == "success", run.task_states()
    balance = run.xcom("wait_for_credits")
    assert balance["vendor"] == vendor
    assert Decimal(balance["remaining"]) == Decimal(str(high))
    assert Decimal(run.xcom("after")) == Decimal(str(high))
    assert account_polls(sandbox, vendor) >= 4
    assert sandbox.admin.charges() == []
    out = capsys.readouterr()
    logs = caplog.text + out.out + out.err
    assert "running trigger in line" in logs  # the sensor deferred; dag.test() ran its trigger
    assert "usable credits, threshold" in logs and "poll(s)" in logs  # the trigger's own log lines


def test_deferrable_sensor_auth_failure_fails_without_waiting(
    vendor_connections: RunningSandbox, dag_tester: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = vendor_connections
    monkeypatch.setenv(
        "AIRFLOW_CONN_POOF_DEFAULT",
        json.dumps({"conn_type": "poof", "host": sandbox.url, "password": "pk_wrong_key"}),
    )
    started = time.monotonic()
    run = dag_tester.run(
        SENSOR_DAG.format(dag_id="credits_sensor_auth", conn_id="poof_default", min_credits=1),
        "credits_sensor_auth",
    )
    assert run.task_states()["wait_for_credits"] == "failed"
    assert account_polls(sandbox, "poof") == 1
    assert time.monotonic() - started < 60


MONITOR_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.monitor import CreditMonitorOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    CreditMonitorOperator(
        task_id="credit_monitor",
        thresholds={{"pixelcut_default": 10, "pixian_default": "2.5", "poof_default": 5}},
        on_low={on_low!r},
        retries=0,
    )
"""


def test_credit_monitor_reads_every_vendor_quirk(vendor_connections: RunningSandbox, dag_tester: Any) -> None:
    sandbox = vendor_connections
    sandbox.admin.settings(pixelcut_credits_type="string")  # Pixelcut sends "credits_remaining": "12"
    sandbox.admin.set_balance("pixelcut", 12)
    sandbox.admin.set_balance("pixian", 2.25, state="active")  # fractional, under 2.5
    sandbox.admin.set_balance("poof", 4)  # maxCredits - usedCredits
    run = dag_tester.run(
        MONITOR_DAG.format(dag_id="credits_monitor_warn", on_low="warn"), "credits_monitor_warn"
    )
    assert run.state == "success", run.task_states()
    result = run.xcom("credit_monitor")
    assert {k: (v["remaining"], v["low"]) for k, v in result.items()} == {
        "pixelcut_default": ("12", False),
        "pixian_default": ("2.25", True),
        "poof_default": ("4", True),
    }

    sandbox.admin.set_balance("pixian", 40, state="dormant")
    run = dag_tester.run(
        MONITOR_DAG.format(dag_id="credits_monitor_fail", on_low="fail"), "credits_monitor_fail"
    )
    assert run.state == "failed"
    assert sandbox.admin.charges() == []
