"""RenderRenditionsOperator end to end: renditions from stored masters, no vendor connection, 0 calls.

Real Airflow (dag.test), fake-gcs-server and the vendor sandbox (its request log proves no call).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import pytest
from PIL import Image

from airflow_provider_bgremoval.pipeline.manifest import read_manifest
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.integration.pipeline.test_renditions_pipeline import SOURCES, dag_source

pytestmark = pytest.mark.integration

RENDER_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.render import RenderRenditionsOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    RenderRenditionsOperator(
        task_id="render",
        source_bucket={dst!r},
        source_prefix="products/masters/",
        destination_bucket={dst!r},
        destination_prefix="products/",
        include="*.png",
        renditions={renditions!r},
        retries=0,
    )
"""
WEB = {"name": "web", "format": "webp", "max_size": 1024, "background": "transparent"}
THUMB = {"name": "thumb", "format": "jpeg", "size": [256, 256], "background": "#f4f4f4", "margin": "6%"}


def test_renders_a_new_rendition_for_the_catalogue_with_no_vendor_connection(
    vendor_connections: RunningSandbox,
    gcs_storage: GcsStorage,
    gcs_bucket_factory: Callable[..., str],
    dag_tester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox, storage = vendor_connections, gcs_storage
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    for name, data in SOURCES.items():
        storage.write(src, name, data, content_type="image/png")
    assert dag_tester.run(dag_source("render_paid", src, dst, [WEB]), "render_paid").state == "success"
    calls = len(sandbox.admin.requests("pixian"))
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)
    # No vendor connection at all from here on.
    for variable in [name for name in os.environ if name.startswith("AIRFLOW_CONN_")]:
        if not variable.startswith("AIRFLOW_CONN_GOOGLE"):
            monkeypatch.delenv(variable)
    source = RENDER_DAG.format(dag_id="render_only", dst=dst, renditions=[WEB, THUMB])
    run = dag_tester.run(source, "render_only")
    assert run.state == "success", run.task_states()
    summary = run.xcom("render")
    assert len(sandbox.admin.requests("pixian")) == calls  # 0 vendor calls
    assert summary["vendor"] == "local" and summary["credits_spent"] == "0"
    assert summary["done"] == len(SOURCES)
    assert summary["renditions"]["web"]["skipped"] == len(
        SOURCES
    )  # the same fingerprint as the bucket task's
    assert summary["renditions"]["thumb"]["done"] == len(SOURCES)
    bucket, _, name = summary["manifest_uri"].removeprefix("gs://").partition("/")
    rows = read_manifest(storage.read(bucket, name))
    assert {row["status"] for row in rows} == {"done"}
    for row in rows:
        assert row["destination"] is None and row["master"]["status"] == "skipped"
        stem = row["source"].rsplit("/products/masters/", 1)[1].removesuffix(".png")
        info = storage.stat(dst, f"products/thumb/{stem}.jpg")
        assert info is not None
        # The rendition records the photo its master was made from, not only the master.
        assert info.metadata["bgremoval-source"] == f"gs://{src}/raw/{stem}.png"
        assert info.metadata["bgremoval-master"] == row["source"]
        assert Image.open(io.BytesIO(storage.read(dst, info.name))).size == (256, 256)
    # The bucket task now finds every rendition finished: nothing paid, nothing rendered.
    again = RENDER_DAG.format(dag_id="render_again", dst=dst, renditions=[WEB, THUMB])
    rerun = dag_tester.run(again, "render_again")
    assert rerun.state == "success" and rerun.xcom("render")["skipped"] == len(SOURCES)
    assert len(sandbox.admin.requests("pixian")) == calls
