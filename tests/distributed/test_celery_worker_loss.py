"""
``example_bucket_remove_background`` under the CeleryExecutor: two workers, a Redis broker, one worker
killed mid-shard (``make test-distributed``; see ``docs/executors.md``).

Real parts only: Debian's ``redis-server``; Airflow's API server, scheduler and DAG processor as
separate processes on SQLite; two ``airflow celery worker`` processes, each with its own
``AIRFLOW_HOME`` and hostname (nothing shared between them but the buckets and the Airflow DB);
fake-gcs-server; the vendor sandbox with 2 s replies. The example DAG file is served unchanged; the
deployment sets short heartbeat timeouts and, through a cluster policy (``airflow_local_settings``),
a short retry delay.

While a ``remove_background`` shard runs on each worker, one worker is killed — every process of it,
task runner included, with ``SIGKILL``. The scheduler finds the task's heartbeat gone, the retry runs
on the other worker and finishes. Checked: both workers ran shards; every source has exactly one
output; the manifests account for every source once; the sandbox's request log shows no image paid
twice except images whose call was in flight at the kill.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_provider_bgremoval.pipeline.manifest import manifest_run_prefix
from airflow_provider_bgremoval.pipeline.planning import META_WRITER
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.testing.standalone import (
    CELERY_EXECUTOR,
    AirflowRestClient,
    AirflowStandalone,
    CeleryWorker,
    live_group_members,
)
from tests.distributed.redis_broker import RedisServer
from tests.support.sandbox import connection_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "example_bucket_remove_background"
#: The example DAG, served unchanged (alone in its DAGs folder: the DAG processor parses one file).
EXAMPLE_DAG = REPO / "example_dags" / f"{DAG_ID}.py"
MAPPED_TASK = "remove_background"
POOL = "pixelcut_api"
#: 4 shards of 24: with 2 s replies and 8 calls in flight per shard, about 6 s of calls per shard.
IMAGES = 96
SHARDS = 4
LATENCY_MS = 2000
#: The victim's shard is killed after its first round of calls (``max_concurrency``) is stored.
FIRST_ROUND = 8

#: The deployment's cluster policy: a short retry delay for every task (the example DAG's own
#: ``retry_delay`` of 2 minutes stays what users get).
LOCAL_SETTINGS = """\
from datetime import timedelta


def task_policy(task):
    task.retry_delay = timedelta(seconds=2)
"""
#: Heartbeats often, a dead task runner found after 12 s.
TIMINGS = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "12",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    "MALLOC_ARENA_MAX": "2",
}


#: Outputs stored so far by the shard of a map index.
Probe = Callable[[int], int]


@dataclass
class Kill:
    """What was running when the worker was killed."""

    worker: CeleryWorker
    map_index: int
    at: float
    running: dict[int, str]
    runners: list[int]
    killed: list[int]


def photos() -> dict[str, bytes]:
    """``IMAGES`` small distinct PNGs with distinct file names (the sandbox logs the upload's name)."""
    objects = {}
    for i in range(IMAGES):
        image = Image.new("RGB", (96, 96), (i * 37 % 256, i * 91 % 256, 200))
        image.paste((255, 255, 255), (24, 24, 72, 72))
        out = io.BytesIO()
        image.save(out, format="PNG")
        objects[f"products/img-{i:03d}.png"] = out.getvalue()
    return objects


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def running_shards(api: AirflowRestClient, run_id: str) -> dict[int, str]:
    """Map index → hostname of the mapped task's running instances."""
    return {
        int(ti["map_index"]): str(ti.get("hostname") or "")
        for ti in api.task_instances(DAG_ID, run_id)
        if ti["task_id"] == MAPPED_TASK and ti["map_index"] >= 0 and ti["state"] == "running"
    }


def image_calls(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    """The sandbox's Pixelcut remove-background requests (each names its image: the upload's name)."""
    return [r for r in sandbox.admin.requests("pixelcut") if r.get("kind") == "process"]


def shard_outputs(gcs_client: Any, bucket: str, map_index: int, before: float | None = None) -> set[str]:
    """
    File names of the outputs one shard has written (their writer metadata names its task
    instance), or only those created before ``before`` (a time stamp).
    """
    suffix = f"/{MAPPED_TASK}/{map_index}"
    return {
        Path(blob.name).name
        for blob in gcs_client.list_blobs(bucket, prefix="cutouts/")
        if "_bgremoval/" not in blob.name
        and (blob.metadata or {}).get(META_WRITER, "").endswith(suffix)
        and (before is None or blob.time_created.timestamp() < before)
    }


def kill_mid_shard(api: AirflowRestClient, run_id: str, workers: list[CeleryWorker], probe: Probe) -> Kill:
    """
    Wait until both workers run a shard and the victim's shard has stored its first round of
    outputs, then half a reply longer (its next calls are in flight), then kill every process of
    the victim.
    """
    victim = workers[0]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        running = running_shards(api, run_id)
        mine = sorted(i for i, host in running.items() if host == victim.name)
        if mine and set(running.values()) >= {w.name for w in workers} and probe(mine[0]) >= FIRST_ROUND:
            time.sleep(LATENCY_MS / 2000)
            runners = [p for p in victim.members() if p not in live_group_members(victim.pid)]
            at = time.time()
            killed = victim.kill()
            return Kill(victim, mine[0], at, running, runners, killed)
        time.sleep(0.2)
    raise AssertionError(f"never saw a shard on each worker: {api.task_states(DAG_ID, run_id)}")


def image_of(call: dict[str, Any]) -> str | None:
    """The file name a call uploaded (``None``: dropped before the vendor read it)."""
    image = (call.get("params") or {}).get("image")
    return None if image is None else str(image).removeprefix("<file ").removesuffix(">")


def in_flight_at_kill(
    calls: list[dict[str, Any]], kill: Kill, shard: set[str], stored: set[str]
) -> list[dict[str, Any]]:
    """
    The killed worker's calls whose result was not stored when it died: started before the kill,
    and either dropped (the vendor saw the disconnect and billed nothing; nothing else disconnects)
    or billed for an image of its shard that had no output yet.
    """
    flying = []
    for call in calls:
        if call["timestamp"] - call["duration_ms"] / 1000 >= kill.at:
            continue
        if not call.get("charged"):
            if call["timestamp"] >= kill.at:
                flying.append(call)
        elif image_of(call) in shard - stored:
            flying.append(call)
    return flying


def manifest_rows(gcs_client: Any, bucket: str, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """The final manifest of every try of the mapped task (name → rows)."""
    prefix = manifest_run_prefix("cutouts/_bgremoval/", DAG_ID, run_id)
    manifests = {}
    for blob in gcs_client.list_blobs(bucket, prefix=prefix):
        if ".part-" in blob.name or f"/{MAPPED_TASK}" not in blob.name:
            continue
        lines = blob.download_as_bytes().decode().splitlines()
        manifests[blob.name.removeprefix(prefix)] = [json.loads(line) for line in lines if line]
    return manifests


def shard_rows(manifests: dict[str, list[dict[str, Any]]], map_index: int) -> list[dict[str, Any]]:
    """The manifest rows of one shard (its sources), over its tries."""
    return [
        row
        for name, rows in manifests.items()
        if name.startswith(f"{MAPPED_TASK}.{map_index}/")
        for row in rows
    ]


def tries_by_worker(api: AirflowRestClient, run_id: str) -> Counter[str]:
    """How many tries of the mapped task each hostname ran."""
    counts: Counter[str] = Counter()
    for ti in api.task_instances(DAG_ID, run_id):
        if ti["task_id"] == MAPPED_TASK and ti["map_index"] >= 0:
            for attempt in api.task_tries(DAG_ID, run_id, MAPPED_TASK, ti["map_index"]):
                counts[str(attempt.get("hostname"))] += 1
    return counts


def start_cluster(tmp_path: Path, env: dict[str, str], broker: str) -> AirflowStandalone:
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy2(EXAMPLE_DAG, dags / EXAMPLE_DAG.name)
    return AirflowStandalone(
        dags,
        home=tmp_path / "airflow",
        env={**env, **TIMINGS},
        executor=CELERY_EXECUTOR,
        components=("api-server", "scheduler", "dag-processor"),
        broker_url=broker,
        local_settings=LOCAL_SETTINGS,
        startup_timeout=240,
    )


def test_a_worker_killed_mid_shard_is_retried_on_the_other_without_paying_twice(
    vendor_connections: RunningSandbox,
    fake_gcs: Any,
    gcs_storage: Any,
    gcs_client: Any,
    gcs_bucket_factory: Callable[..., str],
    redis: RedisServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    sandbox = vendor_connections
    sandbox.admin.set_balance("pixelcut", 10_000)
    sandbox.admin.set_faults("pixelcut", latency_ms=LATENCY_MS)
    src, dst = gcs_bucket_factory("raw"), gcs_bucket_factory("cut")
    sources = photos()
    for name, data in sources.items():
        gcs_storage.write(src, name, data, content_type="image/png")
    conf = {
        "source_bucket": src,
        "source_prefix": "products/",
        "destination_bucket": dst,
        "destination_prefix": "cutouts/",
        "max_shards": SHARDS,
    }
    env = {**fake_gcs.env(), **connection_env(sandbox)}
    with start_cluster(tmp_path, env, redis.url) as airflow:
        workers = [airflow.start_celery_worker(name) for name in ("worker-a", "worker-b")]
        api = airflow.client
        api.wait_for_dag(DAG_ID, timeout=180)
        api.set_pool(POOL, SHARDS)
        api.unpause(DAG_ID)
        run_id = api.trigger(DAG_ID, conf)

        kill = kill_mid_shard(api, run_id, workers, lambda i: len(shard_outputs(gcs_client, dst, i)))
        run = api.wait_for_run(DAG_ID, run_id, timeout=300)
        states = api.task_states(DAG_ID, run_id)
        assert run["state"] == "success", (states, airflow.log_tail(), workers[1].log_path)
        retried = api.task_tries(DAG_ID, run_id, MAPPED_TASK, kill.map_index)
        per_worker = tries_by_worker(api, run_id)
    survivor = workers[1].name

    # the killed shard: its first try on the victim, its retry on the other worker, finished
    assert [t["hostname"] for t in retried] == [kill.worker.name, survivor], retried
    assert retried[-1]["state"] == "success"
    assert set(per_worker) == {kill.worker.name, survivor}, per_worker

    # every source exactly one output; the provider's own objects are not outputs
    outputs = sorted(
        b.name for b in gcs_client.list_blobs(dst, prefix="cutouts/") if "/_bgremoval/" not in f"/{b.name}"
    )
    assert outputs == sorted(f"cutouts/{Path(n).name}" for n in sources)

    # the final manifests: one row per source over the shards, each done or skipped (finished by the
    # killed try); the killed try wrote no final manifest
    manifests = manifest_rows(gcs_client, dst, run_id)
    rows = [row for name in manifests for row in manifests[name]]
    assert sorted(r["source"] for r in rows) == sorted(f"gs://{src}/{n}" for n in sources)
    statuses = Counter(r["status"] for r in rows)
    assert set(statuses) <= {"done", "skipped"}, statuses
    assert not any(name.endswith(f".{kill.map_index}/try-1.jsonl") for name in manifests), manifests

    # the kill: mid-shard, task runner included (Airflow gives it a process group of its own)
    assert kill.runners and set(kill.runners) <= set(kill.killed), kill
    stored = shard_outputs(gcs_client, dst, kill.map_index, before=kill.at)
    assert len(stored) >= FIRST_ROUND, stored

    # money: each image paid once, but for images whose call was in flight at the kill
    calls = image_calls(sandbox)
    billed = [c for c in calls if c.get("charged")]
    paid = Counter(image_of(c) for c in billed)
    assert set(paid) == {Path(n).name for n in sources}
    twice = {image for image, count in paid.items() if count > 1}
    shard = {r["source"].rsplit("/", 1)[-1] for r in shard_rows(manifests, kill.map_index)}
    in_flight = in_flight_at_kill(calls, kill, shard, stored)
    dropped = [c for c in in_flight if not c.get("charged")]
    assert max(paid.values()) <= 2, paid
    assert twice <= {image_of(c) for c in in_flight}, (
        f"paid twice: {len(twice)} {sorted(twice)}; stored before the kill: {len(stored)}; "
        f"in flight: {len(in_flight)}"
    )
    # the retry kept what the killed try stored
    assert statuses["skipped"] >= len(stored), (statuses, stored)
    manifest_credits = sum(Decimal(str(r.get("credits") or 0)) for r in rows if r["status"] == "done")
    assert len(billed) == manifest_credits + statuses["skipped"] + len(twice)

    figures = (
        f"distributed: shard tries per worker {dict(sorted(per_worker.items()))}, images {IMAGES}, "
        f"paid calls {len(billed)}, duplicate paid calls {len(twice)}, in flight on the killed worker "
        f"{len(in_flight)} ({len(dropped)} dropped unbilled), killed shard {kill.map_index} on "
        f"{kill.worker.name} with {len(stored)} outputs stored ({statuses['skipped']} kept by the retry), "
        f"wall {time.monotonic() - started:.0f} s"
    )
    with capsys.disabled():
        print(f"\n{figures}")
