"""Event-driven scheduling under a real scheduler and triggerer: the arrival and publish example DAGs.

``example_process_on_arrival`` (an ``AssetWatcher`` with ``NewImagesTrigger`` → removal → outlet) and
``example_publish_cutouts`` (scheduled on the outlet) run under Airflow's components started
separately (API server, scheduler, DAG processor, triggerer; LocalExecutor), against fake-gcs-server
and the sandbox. The example files are served with their settings at the top rewritten: the test's
buckets, Poof, and short poll/settle values.

Bursts of uploads make exactly one run each, not before the burst settled; the cut-outs appear; the
publish DAG runs once per burst and lists exactly that burst's cut-outs; no burst, no run; a
triggerer restarted while a run is in progress does not fire again, and the charge ledger shows
every photo paid once. The arrival-to-cut-out latency is printed (a figure for docs/arrivals.md).
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.testing.standalone import AirflowRestClient, AirflowStandalone
from tests.integration.examples.conftest import EXAMPLES
from tests.support.sandbox import connection_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROCESS, PUBLISH = "example_process_on_arrival", "example_publish_cutouts"
POLL, SETTLE, MAX_WAIT = 1, 4, 120
#: The vendor's reply time in burst 2: the run outlasts the triggerer's restart (~20 s) and a settle.
VENDOR_LATENCY_MS = 28000
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def example(name: str, replacements: dict[str, str]) -> str:
    """An example DAG's source with its settings rewritten (each setting must be found exactly once)."""
    text = (EXAMPLES / f"{name}.py").read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{name}: {old!r} is no longer in the example"
        text = text.replace(old, new)
    return text


def serve_examples(dags: Path, src: str, dst: str) -> None:
    destination = {'"shop-cutouts", "cutouts/"': f'{dst!r}, "cutouts/"'}
    process = {
        'VENDOR_CONN_ID = "pixelcut_default"': 'VENDOR_CONN_ID = "poof_default"',
        'POOL = "pixelcut_api"': 'POOL = "poof_api"',
        '"shop-raw", "incoming/"': f'{src!r}, "incoming/"',
        "POLL_INTERVAL, SETTLE_SECONDS, MAX_WAIT = 30, 60, 900": (
            f"POLL_INTERVAL, SETTLE_SECONDS, MAX_WAIT = {POLL}, {SETTLE}, {MAX_WAIT}"
        ),
        **destination,
    }
    dags.mkdir()
    (dags / f"{PROCESS}.py").write_text(example(PROCESS, process))
    (dags / f"{PUBLISH}.py").write_text(example(PUBLISH, destination))


def runs(api: AirflowRestClient, dag_id: str) -> list[dict[str, Any]]:
    response = api.request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "id"})
    result: list[dict[str, Any]] = response.json()["dag_runs"]
    return result


def wait_for_runs(api: AirflowRestClient, dag_id: str, count: int, *, timeout: float) -> list[dict[str, Any]]:
    """Wait until ``dag_id`` has ``count`` runs, all finished; return them (oldest first)."""
    deadline = time.monotonic() + timeout
    while True:
        found = runs(api, dag_id)
        if len(found) >= count and all(r["state"] in ("success", "failed") for r in found):
            return found
        if time.monotonic() > deadline:
            states = [(r["dag_run_id"], r["state"]) for r in found]
            raise AssertionError(f"{dag_id}: {states}, wanted {count}")
        time.sleep(0.5)


def watcher_starts(airflow: AirflowStandalone) -> list[str]:
    """The watcher's start lines in the components' log (each names the watermark it resumed from)."""
    return [line for line in airflow.log_path.read_text().splitlines() if "from watermark" in line]


def wait_for_watcher(airflow: AirflowStandalone, starts: int, *, timeout: float) -> str:
    """Wait until the watcher has started ``starts`` times in all; its last start line."""
    deadline = time.monotonic() + timeout
    while len(found := watcher_starts(airflow)) < starts:
        assert time.monotonic() < deadline, airflow.log_tail()
        time.sleep(0.5)
    return found[-1]


def upload(storage: GcsStorage, bucket: str, photos: dict[str, bytes]) -> float:
    """Upload ``photos`` 0.4 s apart; return the time the last upload started."""
    started = 0.0
    for name, data in photos.items():
        time.sleep(0.4)
        started = time.time()
        storage.write(bucket, name, data, content_type="application/octet-stream")
    return started


def cutout_name(source: str) -> str:
    return "cutouts/" + source.removeprefix("incoming/").rsplit(".", 1)[0] + ".webp"


def latencies(storage: GcsStorage, src: str, dst: str, photos: dict[str, bytes]) -> list[float]:
    """Seconds from each photo's upload to its cut-out, by the emulator's object timestamps."""
    found = []
    for name in photos:
        source, output = storage.stat(src, name), storage.stat(dst, cutout_name(name))
        assert source is not None and output is not None, name
        assert source.updated is not None and output.updated is not None
        found.append((output.updated - source.updated).total_seconds())
    return found


def test_bursts_run_once_each_and_publish_what_they_made(
    vendor_connections: RunningSandbox,
    fake_gcs: Any,
    gcs_storage: GcsStorage,
    gcs_bucket_factory: Any,
    photo_bytes: dict[str, bytes],
    tmp_path: Path,
) -> None:
    sandbox, src, dst = vendor_connections, gcs_bucket_factory("raw"), gcs_bucket_factory("cut")
    pictures = list(photo_bytes.values())
    first = {f"incoming/a{i}.jpg": pictures[i % len(pictures)] for i in range(4)}
    second = {f"incoming/b{i}.png": pictures[(i + 1) % len(pictures)] for i in range(3)}
    serve_examples(tmp_path / "dags", src, dst)
    env = {**fake_gcs.env(), **connection_env(sandbox, timeout=60)}
    airflow = AirflowStandalone(
        tmp_path / "dags",
        home=tmp_path / "home",
        env=env,
        components=COMPONENTS,
        scheduled_runs=True,  # asset-triggered runs are scheduled runs
        startup_timeout=240,
    )
    with airflow:
        api = airflow.client
        for dag_id in (PROCESS, PUBLISH):
            api.wait_for_dag(dag_id, timeout=120)
            api.unpause(dag_id)
        api.set_pool("poof_api", 2)
        wait_for_watcher(airflow, 1, timeout=120)  # the triggerer picks the watcher up after the parse

        # no burst, no run
        time.sleep(SETTLE + 2 * POLL)
        assert runs(api, PROCESS) == []

        # burst 1: one run, not before the burst settled; the publish DAG lists its cut-outs
        last_upload = upload(gcs_storage, src, first)
        [run] = wait_for_runs(api, PROCESS, 1, timeout=180)
        assert run["state"] == "success", (api.task_states(PROCESS, run["dag_run_id"]), airflow.log_tail())
        assert run["run_type"] == "asset_triggered"
        queued = _timestamp(run["queued_at"])
        assert queued >= last_upload + SETTLE, "the run started before the burst settled"
        first_queued = queued - last_upload
        assert api.xcom(PROCESS, run["dag_run_id"], "remove_backgrounds")["done"] == len(first)
        [published] = wait_for_runs(api, PUBLISH, 1, timeout=120)
        assert published["state"] == "success", api.task_states(PUBLISH, published["dag_run_id"])
        made = api.xcom(PUBLISH, published["dag_run_id"], "new_cutouts")
        assert sorted(made) == sorted(f"gs://{dst}/{cutout_name(name)}" for name in first)
        assert sandbox.admin.total_charged("poof") == len(first)
        first_latency = latencies(gcs_storage, src, dst, first)

        # no burst, no run
        time.sleep(SETTLE + 3 * POLL)
        assert len(runs(api, PROCESS)) == 1 and len(runs(api, PUBLISH)) == 1

        # burst 2, slow vendor: restart the triggerer while its run is in progress (its calls take
        # longer than the restart, the restarted watcher's first poll and a settle together)
        sandbox.admin.set_faults("poof", latency_ms=VENDOR_LATENCY_MS)
        last_upload = upload(gcs_storage, src, second)
        deadline = time.monotonic() + 120
        while len(runs(api, PROCESS)) < 2:
            assert time.monotonic() < deadline, airflow.log_tail()
            time.sleep(0.3)
        airflow.restart_component("triggerer")
        restarted = time.time()
        resumed = wait_for_watcher(airflow, 2, timeout=120)
        assert "fires=2" in resumed, resumed  # it resumed from the watermark kept in the asset's store
        time.sleep(SETTLE + 2 * POLL)
        in_progress = gcs_storage.stat(dst, cutout_name(next(iter(second)))) is None  # printed below
        later = wait_for_runs(api, PROCESS, 2, timeout=240)
        sandbox.admin.clear_faults("poof")
        time.sleep(SETTLE + 2 * POLL)  # the restarted watcher polls the finished burst again
        later = wait_for_runs(api, PROCESS, 2, timeout=60)
        assert len(later) == 2, [r["dag_run_id"] for r in later]
        assert later[1]["state"] == "success", api.task_states(PROCESS, later[1]["dag_run_id"])
        second_queued = _timestamp(later[1]["queued_at"]) - last_upload
        assert second_queued >= SETTLE, "the run started before the burst settled"
        summaries = [api.xcom(PROCESS, r["dag_run_id"], "remove_backgrounds") for r in later]
        assert summaries[1]["done"] == len(second)
        published = wait_for_runs(api, PUBLISH, 2, timeout=120)
        assert len(published) == 2
        made = api.xcom(PUBLISH, published[1]["dag_run_id"], "new_cutouts")
        assert sorted(made) == sorted(f"gs://{dst}/{cutout_name(name)}" for name in second)
        second_latency = latencies(gcs_storage, src, dst, second)
        starts = watcher_starts(airflow)

    # every photo paid once, by the charge ledger; no run found nothing to do
    charges = sandbox.admin.charges("poof")
    assert len(charges) == len(first) + len(second)
    empty_runs = sum(1 for summary in summaries if summary["done"] == 0)
    assert empty_runs == 0
    print(
        f"\nlast upload -> run queued (poll {POLL} s, settle {SETTLE} s; bound settle + 2 x poll = "
        f"{SETTLE + 2 * POLL} s): burst 1 {first_queued:.1f} s, burst 2 {second_queued:.1f} s"
    )
    print(
        f"arrival -> cut-out: burst 1 ({len(first)} photos) median {statistics.median(first_latency):.1f} s, "
        f"max {max(first_latency):.1f} s; burst 2 ({len(second)} photos, {VENDOR_LATENCY_MS // 1000} s "
        "vendor latency, triggerer "
        f"restarted {restarted - last_upload:.1f} s after the last upload, its run still in progress "
        f"after the restarted watcher's first settle: {in_progress}) median "
        f"{statistics.median(second_latency):.1f} s, max {max(second_latency):.1f} s; "
        f"empty runs: {empty_runs}"
    )
    print("watcher starts:", *starts, sep="\n  ")


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
