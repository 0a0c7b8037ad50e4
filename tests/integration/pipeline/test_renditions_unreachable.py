"""Renditions no master can make compliant: settled at planning, never paid for (dag.test(), fake-gcs-server,
the sandbox's balance and charge ledger; nothing of ours is mocked).

A rendition with a ``min_size`` and no ``upscale`` can never be larger than what its source allows (a
cut-out is never larger than its source; docs/renditions.md, "Renditions no source can make
compliant"): when every rendition of a source is certain to fail that way, the source is settled at
planning without a vendor call, and the pre-flight does not price it.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_bgremoval.pipeline.claims import META_DESTINATION, META_EXPIRES
from airflow_provider_bgremoval.pipeline.manifest import read_manifest
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.integration.credits.test_renditions_preflight import WEB, calls_made, dag
from tests.integration.credits.test_renditions_preflight import env as preflight_env  # noqa: F401
from tests.integration.pipeline.test_renditions_pipeline import SOURCES, studio_shot

pytestmark = pytest.mark.integration

AMAZON = {"name": "amazon", "preset": "amazon_main"}  # min_size 1000, fill 0.85 on 1:1, no upscale
#: 700 px on its long side: a 1:1 canvas at fill 0.85 reaches 824 px at most, short of Amazon's 1,000
TINY = studio_shot((700, 600))


def rows(storage: GcsStorage, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    bucket, _, name = summary["manifest_uri"].removeprefix("gs://").partition("/")
    return {row["source"].rsplit("/raw/", 1)[1]: row for row in read_manifest(storage.read(bucket, name))}


@pytest.fixture
def env(preflight_env):  # noqa: F811 - the pre-flight suite's buckets, with the tiny photo added
    sandbox, storage, src, dst = preflight_env
    storage.write(src, "raw/tiny.png", TINY, content_type="image/png")
    return sandbox, storage, src, dst


def test_a_source_too_small_for_every_rendition_is_never_sent_nor_priced(env, dag_tester) -> None:
    sandbox, storage, src, dst = env
    sandbox.admin.set_balance("pixian", len(SOURCES))  # under the unchecked bound of 4: files are checked
    calls = calls_made(sandbox)
    run = dag_tester.run(dag("unreachable_amazon", src, dst, renditions=[AMAZON]), "unreachable_amazon")
    # the batch fails at the end (on_error="fail_at_end"): one rendition is non-compliant, as after a render
    assert run.task_states() == {"check_credits": "success", "cutouts": "failed"}
    estimate = run.xcom("check_credits")
    assert (estimate["local_checks"], estimate["billable_images"], estimate["needed"]) == ("plan", 3, "3")
    assert (estimate["noncompliant_at_planning"], estimate["rejected_locally"]) == (1, 0)
    assert estimate["sufficient"] is True  # 3 credits pay for the 3 images that can comply
    assert calls_made(sandbox) - calls == len(SOURCES) and len(sandbox.admin.charges("pixian")) == len(
        SOURCES
    )
    summary = run.xcom("cutouts", key="summary")
    assert (summary["renditions"]["amazon"]["done"], summary["renditions"]["amazon"]["rejected"]) == (3, 1)
    tiny = rows(storage, summary)["tiny.png"]
    assert (tiny["status"], tiny["error_code"]) == ("rejected", "rendition_noncompliant")
    assert "700x600 px source" in tiny["error_message"] and "set upscale=True" in tiny["error_message"]
    assert "at most 824 px on the long side (1000 wanted)" in tiny["error_message"]
    (amazon,) = tiny["renditions"]
    assert amazon["status"] == "rejected" and amazon["failed"] == ["min_size", "long_side_min_1000"]
    assert storage.stat(dst, "products/masters/tiny.png") is None  # nothing made, nothing recorded
    assert list(storage.list_objects(dst, "products/_bgremoval/noncompliant/")) == []
    # The next run settles it again from the header, still without a call.
    sandbox.admin.set_balance("pixian", 0)
    run = dag_tester.run(dag("unreachable_amazon", src, dst, renditions=[AMAZON]), "unreachable_amazon")
    assert run.xcom("check_credits")["billable_images"] == 0
    assert calls_made(sandbox) - calls == len(SOURCES)


def test_one_rendition_that_can_comply_makes_the_source_billable(env, dag_tester) -> None:
    sandbox, storage, src, dst = env
    sandbox.admin.set_balance("pixian", 10)
    charges = len(sandbox.admin.charges("pixian"))
    run = dag_tester.run(dag("unreachable_some", src, dst, renditions=[AMAZON, WEB]), "unreachable_some")
    assert run.task_states() == {"check_credits": "success", "cutouts": "failed"}  # amazon, as before
    assert run.xcom("check_credits")["billable_images"] == 4
    assert len(sandbox.admin.charges("pixian")) - charges == 4  # the tiny source pays for its web rendition
    tiny = rows(storage, run.xcom("cutouts", key="summary"))["tiny.png"]
    amazon, web = tiny["renditions"]
    assert web["status"] == "done"
    assert (
        amazon["status"] == "rejected" and amazon["record"]
    )  # judged after the render and recorded, as before
    assert "min_size" in amazon["failed"]


SHARDED = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator
from airflow_provider_bgremoval.operators.sharding import PlannedShardsOperator

BATCH = dict(
    conn_id="pixian_default", source_bucket={src!r}, source_prefix="raw/", destination_bucket={dst!r},
    destination_prefix="products/", gcp_conn_id=None, renditions={renditions!r},
)
with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    check = CreditsCheckOperator(task_id="check_credits", max_shards=2, min_shard_size=1, retries=0, **BATCH)
    shards = PlannedShardsOperator(task_id="shards", preflight_task_id="check_credits")
    check >> shards >> RemoveBackgroundOperator.partial(
        task_id="cutouts", max_concurrency=2, on_error="continue", retries=0, **BATCH
    ).expand(shard=shards.output)
"""


def test_a_checked_kept_plan_settles_the_source_too_small_so_no_shard_pays_for_it(env, dag_tester) -> None:
    sandbox, storage, src, dst = env
    sandbox.admin.set_balance("pixian", len(SOURCES))  # under the unchecked bound of 4: files are checked
    calls = calls_made(sandbox)
    source = SHARDED.format(dag_id="unreachable_sharded", src=src, dst=dst, renditions=[AMAZON])
    run = dag_tester.run(source, "unreachable_sharded")
    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    assert (estimate["local_checks"], estimate["billable_images"]) == ("plan", len(SOURCES))
    assert estimate["noncompliant_at_planning"] == 1
    assert calls_made(sandbox) - calls == len(SOURCES)
    summaries = [run.xcom("cutouts", key="summary", map_index=index) for index in range(2)]
    found = [row for summary in summaries for row in rows(storage, summary).values()]
    tiny = [row for row in found if row["source"].endswith("/raw/tiny.png")]
    assert [(row["status"], row["error_code"]) for row in tiny] == [("rejected", "rendition_noncompliant")]


def test_a_kept_plan_left_unchecked_never_pays_for_the_source_too_small(env, dag_tester) -> None:
    sandbox, storage, src, dst = env
    sandbox.admin.set_balance("pixian", 100)  # covers the unchecked bound: the pre-flight reads no file
    calls, charges = calls_made(sandbox), len(sandbox.admin.charges("pixian"))
    source = SHARDED.format(dag_id="unreachable_unchecked", src=src, dst=dst, renditions=[AMAZON])
    run = dag_tester.run(source, "unreachable_unchecked")
    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    assert (estimate["local_checks"], estimate["billable_images"]) == ("batch", len(SOURCES) + 1)
    assert estimate["noncompliant_at_planning"] == 0  # the plan the shards run has the tiny source billable
    assert calls_made(sandbox) - calls == len(SOURCES)  # the mapped task judged it from the bytes in hand
    assert len(sandbox.admin.charges("pixian")) - charges == len(SOURCES)
    summaries = [run.xcom("cutouts", key="summary", map_index=index) for index in range(2)]
    found = [row for summary in summaries for row in rows(storage, summary).values()]
    (tiny,) = [row for row in found if row["source"].endswith("/raw/tiny.png")]
    assert (tiny["status"], tiny["error_code"]) == ("rejected", "rendition_noncompliant")
    assert "700x600 px source" in tiny["error_message"] and "set upscale=True" in tiny["error_message"]
    assert (tiny["possibly_charged"], tiny["attempts"], tiny["credits"]) == (0, 0, None)
    (amazon,) = tiny["renditions"]
    assert amazon["status"] == "rejected" and amazon["failed"] == ["min_size", "long_side_min_1000"]
    assert storage.stat(dst, "products/masters/tiny.png") is None  # nothing made, nothing recorded
    assert list(storage.list_objects(dst, "products/_bgremoval/noncompliant/")) == []
    claims = storage.list_objects(dst, "products/_bgremoval/claims/")
    tiny_claims = [
        claim for claim in claims if claim.metadata[META_DESTINATION] == "products/masters/tiny.png"
    ]
    assert [claim.metadata[META_EXPIRES] for claim in tiny_claims] == ["0"]  # released, as a local rejection
