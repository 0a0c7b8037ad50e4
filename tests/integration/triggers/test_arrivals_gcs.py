"""NewImagesTrigger against fake-gcs-server, and the bucket operator's outlet event under dag.test().

Real parts: the emulated buckets over HTTP, the vendor sandbox, the hooks reading ``AIRFLOW_CONN_*``,
Airflow's ``dag.test()`` (which records asset events in the metadata DB). The trigger runs on the
real clock with short settle and poll values; only Airflow's asset state store is a dict (the
triggerer injects the real one; the scheduler test uses it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.triggers.arrivals import NewImagesTrigger, Watermark

pytestmark = pytest.mark.integration

DAG_ID = "arrivals_outlet"
DAG = """
from airflow.sdk import DAG, Asset
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    RemoveBackgroundOperator(
        task_id="cutouts", retries=0, max_concurrency=4,
        outlets=[Asset("gs://{dst}/cut/"), Asset("gs://{dst}/elsewhere/")],
        **{batch!r},
    )
"""


class StateStore:
    """The asset state store's ``aget``/``aset``, in a dict (JSON round trip, as Airflow stores it)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.values.get(key, default)))

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))


async def first_event(trigger: NewImagesTrigger, within: float) -> dict[str, Any] | None:
    """The trigger's first event payload, or ``None`` when it fires nothing within ``within`` seconds."""

    async def consume() -> dict[str, Any]:
        event: TriggerEvent
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger stopped")

    try:
        return await asyncio.wait_for(consume(), within)
    except TimeoutError:
        return None


@pytest.fixture
def batch(gcs_bucket_factory: Callable[..., str]) -> dict[str, Any]:
    return {
        "conn_id": "poof_default",
        "source_bucket": gcs_bucket_factory("raw"),
        "source_prefix": "incoming/",
        "destination_bucket": gcs_bucket_factory("cut"),
        "destination_prefix": "cut/",
        "include": ["*.jpg", "*.png"],
        "output_format": "png",
        "gcp_conn_id": None,
    }


def watcher(batch: dict[str, Any], store: StateStore) -> NewImagesTrigger:
    trigger = NewImagesTrigger(**batch, poll_interval=0.2, settle_seconds=1.0, max_wait=30)
    trigger.asset_state_store = store  # type: ignore[assignment]
    return trigger


def test_trigger_fires_for_a_burst_then_the_run_finishes_it_and_nothing_fires_again(
    vendor_connections: RunningSandbox,
    gcs_storage: GcsStorage,
    batch: dict[str, Any],
    photo_bytes: dict[str, bytes],
    dag_tester: Any,
) -> None:
    sandbox, src, dst = vendor_connections, batch["source_bucket"], batch["destination_bucket"]
    photos = {f"incoming/{name}": data for name, data in list(photo_bytes.items())[:4]}
    for name, data in photos.items():
        gcs_storage.write(src, name, data, content_type="application/octet-stream")
    gcs_storage.write(src, "incoming/readme.txt", b"not a photo", content_type="text/plain")
    store = StateStore()

    event = asyncio.run(first_event(watcher(batch, store), within=20))
    assert event is not None
    assert (event["images"], event["listed"], event["finished"]) == (len(photos), len(photos), 0)
    newest = max(gcs_storage.stat(src, name).generation for name in photos)  # type: ignore[union-attr]
    assert event["watermark"]["generation"] == newest  # GCS generations: creation times in µs
    assert sandbox.admin.charges() == []  # listing only

    run = dag_tester.run(DAG.format(dag_id=DAG_ID, dst=dst, batch=batch), DAG_ID)
    assert run.state == "success", run.task_states()
    summary = run.xcom("cutouts")
    assert summary["done"] == len(photos)
    assert sandbox.admin.total_charged("poof") == len(photos)

    # the outlet naming the destination carries the counts; the other outlet only its plain event
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.uri, AssetEvent.extra)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_run_id == run.dag_run.run_id)
        ).all()
    extras = dict(rows)
    assert extras[f"gs://{dst}/cut"] == {
        "done": len(photos),
        "skipped": 0,
        "rejected": 0,
        "failed": 0,
        "pending": 0,
        "credits": summary["credits_spent"],
        "manifest_uri": summary["manifest_uri"],
        "manifest_uris": [summary["manifest_uri"]],  # one try: its own manifest
    }
    assert extras[f"gs://{dst}/elsewhere"] == {}

    # a restarted trigger (same state store) and a fresh one (no state) both find nothing to do
    assert asyncio.run(first_event(watcher(batch, store), within=3)) is None
    fresh = StateStore()
    assert asyncio.run(first_event(watcher(batch, fresh), within=3)) is None
    [kept] = fresh.values.values()
    assert Watermark.from_value(kept).generation == newest  # all finished: advanced without an event

    # a new photo fires again, counting only itself
    gcs_storage.write(src, "incoming/late.png", photos[next(iter(photos))], content_type="image/png")
    late = asyncio.run(first_event(watcher(batch, store), within=20))
    assert late is not None and (late["images"], late["listed"]) == (1, 1)
    assert late["previous_watermark"]["generation"] == newest
    assert sandbox.admin.total_charged("poof") == len(photos)


RENDITIONS_DAG_ID = "arrivals_renditions"


def test_a_renditions_batch_shared_with_the_task_fires_render_only_for_a_stale_rendition(
    vendor_connections: RunningSandbox,
    gcs_storage: GcsStorage,
    batch: dict[str, Any],
    photo_bytes: dict[str, bytes],
    dag_tester: Any,
) -> None:
    sandbox, src, dst = vendor_connections, batch["source_bucket"], batch["destination_bucket"]
    batch = {**batch, "renditions": [{"name": "web", "format": "webp", "max_size": 256}]}
    photos = {f"incoming/{name}": data for name, data in list(photo_bytes.items())[:2]}
    for name, data in photos.items():
        gcs_storage.write(src, name, data, content_type="application/octet-stream")
    store = StateStore()
    event = asyncio.run(first_event(watcher(batch, store), within=20))
    assert event is not None and (event["images"], event["render_only"]) == (len(photos), 0)

    run = dag_tester.run(DAG.format(dag_id=RENDITIONS_DAG_ID, dst=dst, batch=batch), RENDITIONS_DAG_ID)
    assert run.state == "success", run.task_states()
    assert run.xcom("cutouts")["done"] == len(photos)
    charged = sandbox.admin.total_charged("poof")
    assert charged == len(photos)

    # masters under cut/masters/ and every rendition finished: nothing to do for a fresh watcher
    assert asyncio.run(first_event(watcher(batch, StateStore()), within=3)) is None

    # a rendition made stale (another spec's object in its place): render-only work, 0 credits
    stale = "cut/web/" + next(iter(photos)).removeprefix("incoming/").rsplit(".", 1)[0] + ".webp"
    current = gcs_storage.stat(dst, stale)
    assert current is not None  # the task wrote it where the trigger's layout looks for it
    gcs_storage.write(dst, stale, b"old", content_type="image/webp", if_generation_match=current.generation)
    again = asyncio.run(first_event(watcher(batch, StateStore()), within=20))
    assert again is not None
    assert (again["images"], again["render_only"], again["finished"]) == (1, 1, len(photos) - 1)
    assert sandbox.admin.total_charged("poof") == charged
