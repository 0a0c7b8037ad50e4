"""The run's budgets over the pre-flight's shards, end to end: real Airflow (``dag.test()``), fake-gcs-server
and the vendor sandbox over sockets; the money is read from the sandbox's charge log.

``max_credits`` given to the pre-flight and the mapped bucket tasks bounds the run, not each mapped task:
each shard carries its share (docs/pipeline.md, "5. Shards").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_bgremoval.pipeline.plan_store import ShardRef
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.integration.pipeline.test_bucket_pipeline import encode, seed, studio_shot

pytestmark = pytest.mark.integration

SHARDED_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator
from airflow_provider_bgremoval.operators.sharding import PlannedShardsOperator

BATCH = dict(
    source_bucket={src!r},
    source_prefix="raw/",
    destination_bucket={dst!r},
    destination_prefix="cut/",
    gcp_conn_id=None,
    max_concurrency=2,
    **{budget!r},
)

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    check = CreditsCheckOperator(
        task_id="check_credits", max_shards={shards}, min_shard_size=1, retries=0, **BATCH
    )
    shards = PlannedShardsOperator(task_id="shards", preflight_task_id="check_credits")
    cutouts = RemoveBackgroundOperator.partial(
        task_id="cutouts", on_error="continue", retries=0, **BATCH
    ).expand(shard=shards.output)
    check >> shards >> cutouts
"""


@pytest.fixture
def env(
    vendor_connections: RunningSandbox, gcs_storage: GcsStorage, gcs_bucket_factory: Callable[..., str]
) -> Iterator[tuple[RunningSandbox, GcsStorage, str, str]]:
    """The sandbox (its cost table restored afterwards), the storage and two buckets."""
    costs = vendor_connections.admin.settings()["costs"]
    try:
        yield vendor_connections, gcs_storage, gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    finally:
        vendor_connections.admin.settings(costs=costs)


def _run(env: Any, dag_tester: Any, dag_id: str, images: int, shards: int, **budget: Any) -> Any:
    _, storage, src, dst = env
    seed(
        storage,
        src,
        {f"raw/item-{i:02d}.png": encode(studio_shot((96 + i, 80)), "PNG") for i in range(images)},
    )
    source = SHARDED_DAG.format(dag_id=dag_id, src=src, dst=dst, shards=shards, budget=budget)
    run = dag_tester.run(source, dag_id)
    assert run.state == "success", run.task_states()
    return run


def test_max_credits_bounds_the_run_when_the_vendor_charges_above_its_cost_table(
    env: Any, dag_tester: Any
) -> None:
    """Pixian charges 2 per image (X-Credits-Charged), its cost table says 1: the shards hold 10 images."""
    sandbox = env[0]
    sandbox.admin.settings(costs={"pixian_per_image": 2})
    run = _run(env, dag_tester, "sharded_dearer_charge", 20, 2, conn_id="pixian_default", max_credits=10)
    assert 0 < sandbox.admin.total_charged("pixian") <= 10  # each mapped task spent its share only
    refs = [ShardRef.model_validate(ref) for ref in run.xcom("shards")]
    assert [ref.max_credits for ref in refs] == [5, 5]
    assert sum(ref.images for ref in refs) == 10 == run.xcom("check_credits")["billable_images"]
    assert run.xcom("check_credits")["deferred_images"] == 10  # in no shard, named for a later run


def test_max_credits_bounds_a_chain_whose_dearer_account_pays(env: Any, dag_tester: Any) -> None:
    """The primary (1 credit) is empty, Poof (2 credits) pays: 10 credits buy 5 images, over 2 shards."""
    sandbox = env[0]
    sandbox.admin.settings(costs={"poof_per_image": 2})
    sandbox.admin.set_balance("pixian", 0)
    run = _run(
        env,
        dag_tester,
        "sharded_chain_budget",
        12,
        2,
        conn_id=["pixian_default", "poof_default"],
        cost_per_image={"pixian_default": 1, "poof_default": 2},
        max_credits=10,
    )
    assert 0 < sandbox.admin.total_charged("poof") <= 10
    assert sandbox.admin.total_charged("pixian") == 0
    estimate = run.xcom("check_credits")
    refs = [ShardRef.model_validate(ref) for ref in run.xcom("shards")]
    priced = sum(account["images"] for account in estimate["accounts"])
    assert sum(ref.images for ref in refs) == priced == estimate["billable_images"] == 5
    assert [ref.max_credits for ref in refs] == [6, 4]  # their 3 and 2 images at Poof's 2, as priced


@pytest.mark.parametrize("shards", [3, 4])
def test_max_credits_per_account_bounds_the_run_over_all_shards(
    env: Any, dag_tester: Any, shards: int
) -> None:
    """
    Pixian may spend 3 credits in the run: over the shards it spends 3, not 3 in each of them; the shard
    holding the 3 images priced on Pixian carries those 3 credits (4 shards by image count: 0.75 each,
    less than one image, so Pixian took none).
    """
    sandbox = env[0]
    budget = {"pixian_default": 3}
    conn_id = ["pixian_default", "poof_default"]
    run = _run(
        env,
        dag_tester,
        f"sharded_account_budget_{shards}",
        12,
        shards,
        conn_id=conn_id,
        max_credits_per_account=budget,
    )
    assert sandbox.admin.total_charged("pixian") == 3  # the 3 images priced on Pixian, the rest on Poof
    assert sandbox.admin.total_charged("poof") == 9
    refs = [ShardRef.model_validate(ref) for ref in run.xcom("shards")]
    shares = [3] + [0] * (shards - 1)
    assert [ref.max_credits_per_account for ref in refs] == [(("pixian_default", share),) for share in shares]
    assert sum(run.xcom("cutouts", map_index=index)["done"] for index in range(shards)) == 12
