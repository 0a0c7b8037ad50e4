"""The pooled pre-flight prices each image at the first account whose own input limits take it (dag.test(),
fake-gcs-server, the sandbox's balances; nothing of ours is mocked).

Pixelcut takes at most 6,000 px a side, Pixian 32 MP whatever the sides: a 7,000 x 1,000 photo only
Pixian takes, so the batch sends it past Pixelcut to Pixian (the engine's check before each account's
call), and the pre-flight must book it on Pixian's credits, not on Pixelcut's.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.integration.pipeline.test_renditions_pipeline import SOURCES

pytestmark = pytest.mark.integration

DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    CreditsCheckOperator(
        task_id="check_credits",
        conn_id=["pixelcut_default", "pixian_default"],
        cost_per_image=1,
        source_bucket={src!r},
        source_prefix="raw/",
        destination_bucket={dst!r},
        destination_prefix="cut/",
        gcp_conn_id=None,
        safety_margin=0,
        retries=0,
    )
"""


def wide_photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (7000, 1000), (200, 60, 60)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def env(vendor_connections: RunningSandbox, gcs_storage: GcsStorage, gcs_bucket_factory: Callable[..., str]):
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    photos = {**SOURCES, "raw/banner.png": wide_photo(), "raw/broken.png": b"not a PNG at all"}
    for name, data in photos.items():
        gcs_storage.write(src, name, data, content_type="image/png")
    return vendor_connections, src, dst


def shares(estimate: dict[str, Any]) -> list[tuple[str, int]]:
    return [(account["conn_id"], account["images"]) for account in estimate["accounts"]]


def test_the_checked_pass_prices_an_image_only_a_later_account_takes_there(env, dag_tester) -> None:
    sandbox, src, dst = env
    sandbox.admin.set_balance("pixelcut", 3)  # 3 + 1 under the unchecked bound of 5 (broken.png counted)
    sandbox.admin.set_balance("pixian", 1)
    run = dag_tester.run(DAG.format(dag_id="pooled_limits", src=src, dst=dst), "pooled_limits")
    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    assert estimate["local_checks"] == "plan"  # the checked pass: headers say which account takes each
    assert estimate["rejected_locally"] == 1  # broken.png
    assert shares(estimate) == [("pixelcut_default", 3), ("pixian_default", 1)]
    assert (estimate["shortfall_images"], estimate["needed"]) == (0, "4")
    # Pixian empty: the banner has no account that both takes and pays for it (the balance alone would)
    sandbox.admin.set_balance("pixian", 0)
    run = dag_tester.run(DAG.format(dag_id="pooled_limits_short", src=src, dst=dst), "pooled_limits_short")
    assert run.state == "failed"
    halt = run.xcom("check_credits", key="halt")
    assert halt["reason"] == "insufficient_credits" and halt["shortfall_images"] == 1
    assert [(a["conn_id"], a["images"]) for a in halt["accounts"]] == [
        ("pixelcut_default", 3),
        ("pixian_default", 0),
    ]
    assert sandbox.admin.charges("pixelcut") == [] and sandbox.admin.charges("pixian") == []


def test_an_account_that_could_not_pay_for_every_image_makes_the_pre_flight_read_headers(
    env, dag_tester
) -> None:
    sandbox, src, dst = env
    sandbox.admin.set_balance("pixelcut", 10)  # the pool covers all five, but Pixian alone could not: a
    sandbox.admin.set_balance("pixian", 0)  # header may show an image only Pixian takes (the banner)
    run = dag_tester.run(
        DAG.format(dag_id="pooled_limits_pixian_empty", src=src, dst=dst), "pooled_limits_pixian_empty"
    )
    assert run.state == "failed"
    halt = run.xcom("check_credits", key="halt")
    assert halt["reason"] == "insufficient_credits" and halt["shortfall_images"] == 1
    assert sandbox.admin.charges("pixelcut") == [] and sandbox.admin.charges("pixian") == []


def test_accounts_that_could_each_pay_for_every_image_pass_without_reading_headers(env, dag_tester) -> None:
    sandbox, src, dst = env
    sandbox.admin.set_balance("pixelcut", 10)  # each account alone covers all five: whichever account
    sandbox.admin.set_balance("pixian", 5)  # a header would name, it can pay
    run = dag_tester.run(
        DAG.format(dag_id="pooled_limits_unchecked", src=src, dst=dst), "pooled_limits_unchecked"
    )
    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    # Priced in chain order without a header read (each image's account is decided in the batch, by the
    # engine's check of every account's own limits before its call: docs/credits.md).
    assert estimate["local_checks"] == "batch"
    assert shares(estimate) == [("pixelcut_default", 5), ("pixian_default", 0)]
    assert sandbox.admin.charges("pixelcut") == [] and sandbox.admin.charges("pixian") == []
