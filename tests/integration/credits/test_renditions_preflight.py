"""The credits pre-flight with renditions: render-only sources are priced at 0 (dag.test(), fake-gcs-server,
the sandbox's balance and charge ledger)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.integration.pipeline.test_renditions_pipeline import SOURCES, studio_shot

pytestmark = pytest.mark.integration

DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator

BATCH = dict(
    conn_id="pixian_default",
    source_bucket={src!r},
    source_prefix="raw/",
    destination_bucket={dst!r},
    destination_prefix={dst_prefix!r},
    gcp_conn_id=None,
    max_concurrency=3,
    {extra}
)
with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    check = CreditsCheckOperator(task_id="check_credits", retries=0, safety_margin=0, **BATCH)
    cutouts = RemoveBackgroundOperator(task_id="cutouts", retries=0, **BATCH)
    check >> cutouts
"""
WEB = {"name": "web", "format": "webp", "max_size": 1024, "background": "transparent"}
THUMB = {"name": "thumb", "format": "jpeg", "size": [256, 256], "background": "#f4f4f4", "margin": "6%"}


def dag(dag_id: str, src: str, dst: str, dst_prefix: str = "products/", **extra: Any) -> str:
    text = "".join(f"{key}={value!r}, " for key, value in extra.items())
    return DAG.format(dag_id=dag_id, src=src, dst=dst, dst_prefix=dst_prefix, extra=text)


def calls_made(sandbox: RunningSandbox) -> int:
    """Processing calls the sandbox received (balance reads are free and not counted)."""
    return sum(1 for request in sandbox.admin.requests("pixian") if request["kind"] == "process")


@pytest.fixture
def env(vendor_connections: RunningSandbox, gcs_storage: GcsStorage, gcs_bucket_factory: Callable[..., str]):
    sandbox, storage, src, dst = (
        vendor_connections,
        gcs_storage,
        gcs_bucket_factory("src"),
        gcs_bucket_factory("dst"),
    )
    for name, data in SOURCES.items():
        storage.write(src, name, data, content_type="image/png")
    return sandbox, storage, src, dst


def test_render_only_sources_are_priced_at_zero_and_pass_an_empty_account(env, dag_tester) -> None:
    sandbox, storage, src, dst = env
    sandbox.admin.set_balance("pixian", 3)
    run = dag_tester.run(dag("pre_renditions", src, dst, renditions=[WEB]), "pre_renditions")
    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    assert (estimate["billable_images"], estimate["render_only_images"], estimate["needed"]) == (3, 0, "3")
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)
    # An empty account; a new rendition for every source: render-only, priced at 0, the pre-flight passes.
    sandbox.admin.set_balance("pixian", 0)
    run = dag_tester.run(dag("pre_renditions", src, dst, renditions=[WEB, THUMB]), "pre_renditions")
    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    assert estimate["billable_images"] == 0 and estimate["render_only_images"] == len(SOURCES)
    assert (estimate["needed"], estimate["sufficient"]) == ("0", True)
    assert run.xcom("cutouts")["renditions"]["thumb"]["done"] == len(SOURCES)
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)
    # One new photo plus a third rendition: only the photo is priced, and the empty account halts the run.
    storage.write(src, "raw/new.png", studio_shot((1200, 1000)), content_type="image/png")
    square = {"name": "square", "format": "png", "aspect": "1:1"}
    run = dag_tester.run(dag("pre_renditions", src, dst, renditions=[WEB, THUMB, square]), "pre_renditions")
    assert run.state == "failed"
    estimate = run.xcom("check_credits", key="estimate")
    assert (estimate["billable_images"], estimate["render_only_images"], estimate["needed"]) == (1, 3, "1")
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)


def test_adopting_single_output_pngs_as_masters_pays_nothing(env, dag_tester) -> None:
    sandbox, storage, src, dst = env
    sandbox.admin.set_balance("pixian", 10)
    # Last year: single-output cut-outs, PNG, no local steps.
    run = dag_tester.run(dag("pre_adopt_old", src, dst, dst_prefix="cutouts/"), "pre_adopt_old")
    assert run.state == "success", run.task_states()
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)
    calls = calls_made(sandbox)
    # Now: renditions, with the old outputs as the masters. Found finished: render-only, 0 calls.
    adopt = dag("pre_adopt", src, dst, dst_prefix="shop/", masters_prefix="cutouts/", renditions=[WEB, THUMB])
    run = dag_tester.run(adopt, "pre_adopt")
    assert run.state == "success", run.task_states()
    assert run.xcom("check_credits")["render_only_images"] == len(SOURCES)
    summary = run.xcom("cutouts")
    assert summary["credits_spent"] == "0" and summary["renditions"]["web"]["done"] == len(SOURCES)
    assert calls_made(sandbox) == calls
    assert storage.stat(dst, "shop/thumb/bags/tote.jpg") is not None
    assert list(storage.list_objects(dst, "shop/masters/")) == []
    # Outputs made with local steps are not masters: adopting them would pay again, so it is refused.
    flattened = dag(
        "pre_adopt_jpeg",
        src,
        dst,
        dst_prefix="shop/",
        masters_prefix="cutouts/",
        renditions=[WEB],
        output_format="jpeg",
    )
    with pytest.raises(AssertionError, match="lossless PNG"):
        dag_tester.run(flattened, "pre_adopt_jpeg")  # refused at DAG parse (an import error)
    assert calls_made(sandbox) == calls
