"""The demo's scheduler path: ``example_bucket_remove_background`` under a real ``airflow standalone``.

Same components as ``make demo`` (:class:`~airflow_provider_bgremoval.testing.standalone.AirflowStandalone`,
the REST API to create the pool, unpause, trigger and follow the run), against fake-gcs-server and the
sandbox; the example DAG file is served unchanged from ``example_dags/``.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from airflow_provider_bgremoval.contact_sheet import contact_sheet_size
from airflow_provider_bgremoval.testing.standalone import AirflowStandalone, live_group_members
from tests.integration.examples.conftest import EXAMPLES, seed
from tests.support.sandbox import connection_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "example_bucket_remove_background"


def test_bucket_example_under_a_real_scheduler(
    vendor_connections, fake_gcs, gcs_storage, gcs_bucket_factory, images_dir, tmp_path
) -> None:
    sandbox = vendor_connections
    src, dst = gcs_bucket_factory("raw"), gcs_bucket_factory("cut")
    photos = {
        f"products/{p.name}": p.read_bytes() for p in sorted(images_dir.glob("*.*")) if p.suffix != ".md"
    }
    photos["products/broken.jpg"] = photos["products/rocket.jpg"][:2000]
    seed(gcs_storage, src, photos)
    good = len(photos) - 1
    conf = {
        "source_bucket": src,
        "source_prefix": "products/",
        "destination_bucket": dst,
        "destination_prefix": "cutouts/",
    }
    env = {**fake_gcs.env(), **connection_env(sandbox)}
    airflow = AirflowStandalone(EXAMPLES, home=tmp_path / "airflow", env=env, startup_timeout=240)
    with airflow:
        api = airflow.client
        api.wait_for_dag(DAG_ID, timeout=120)
        api.set_pool("pixelcut_api", 2)
        api.unpause(DAG_ID)

        run_id = api.trigger(DAG_ID, conf)
        run = api.wait_for_run(DAG_ID, run_id, timeout=300)
        states = api.task_states(DAG_ID, run_id)
        assert run["state"] == "success", (states, airflow.log_tail())
        assert set(states.values()) == {"success"}
        report = api.xcom(DAG_ID, run_id, "run_report")
        assert report["counts"]["done"] == good and report["counts"]["rejected"] == 1
        assert sandbox.admin.total_charged("pixelcut") == good and sandbox.admin.charges("poof") == []
        sheet_name = report["contact_sheet_uri"].split("/", 3)[3]
        sheet = Image.open(io.BytesIO(gcs_storage.read(dst, sheet_name)))
        assert sheet.format == "PNG" and sheet.size == contact_sheet_size(min(good, 6))

        # the low-credit halt, through the scheduler: both accounts of the chain short, nothing spent
        gcs_storage.write(
            src, "products/new/horse.png", photos["products/horse.png"], content_type="image/png"
        )
        sandbox.admin.set_balance("pixelcut", 0)
        sandbox.admin.set_balance("poof", 0)
        halted_id = api.trigger(DAG_ID, conf)
        halted = api.wait_for_run(DAG_ID, halted_id, timeout=300)
        assert halted["state"] == "failed"
        assert api.task_states(DAG_ID, halted_id)["check_credits"] == "failed"
        assert api.xcom(DAG_ID, halted_id, "check_credits", "halt")["reason"] == "insufficient_credits"
        assert sandbox.admin.total_charged() == good
        pgid = airflow.pid
    # every process of the group is gone after the with block (zombies left to a non-reaping PID 1
    # in containers do not count)
    assert pgid is not None
    assert live_group_members(pgid) == []
