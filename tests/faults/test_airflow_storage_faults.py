"""Airflow and storage faults: a worker killed mid-batch, cleared/retried tasks, overlapping runs,
and fake-gcs-server going away during uploads."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.testing.gcs_emulator import FakeGcsServer
from tests.faults.conftest import Cell
from tests.faults.matrix import BATCH, check_cell, output_objects, run_batch, seed, small_batch
from tests.support.gcs import fast_retry, unique_bucket_name

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OWNER_A = "faults/manual__a/cutouts/-1"
OWNER_B = "faults/manual__b/cutouts/-1"


@pytest.mark.slow
def test_worker_killed_mid_batch_then_retried(cell: Cell) -> None:
    """
    A worker process running the batch is SIGKILLed while 8 calls are in flight. Then:

    1. another run (a different task instance) respects the dead worker's live claims: it leaves
       those images pending (``claimed_elsewhere``) and pays only for unclaimed ones;
    2. the task's retry (same task-instance identity) takes its own claims over and finishes.

    No written output is paid twice; no output is corrupt; the only extra charges are the calls
    that were in flight at the kill (billed by the vendor, their replies died with the process).
    """
    vendor = "poof"
    sandbox = cell.sandbox
    sandbox.admin.set_faults(vendor, latency_ms=150)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.batch_worker", vendor, cell.src, cell.dst, OWNER_A],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        # Kill mid-batch with calls in flight: after 15 charges, at a moment the vendor holds calls (a
        # wave of calls can end together, so the 15th charge alone may fall between two waves).
        while len(sandbox.state.ledger.charges(vendor)) < 15 or not sandbox.state.faults[vendor].inflight:
            assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.005)
        in_flight = sandbox.state.faults[vendor].inflight
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert in_flight > 0, "calls were in flight at the kill"
    # Let the calls that were in flight at the kill finish (and be billed) on the vendor side.
    deadline = time.monotonic() + 10
    while sandbox.state.faults[vendor].inflight > 0:
        assert time.monotonic() < deadline, "in-flight calls never finished on the vendor side"
        time.sleep(0.01)
    killed_charges = len(sandbox.admin.charges(vendor))
    written = output_objects(cell.storage, cell.dst, "out/")
    for name in written:  # what the dead worker wrote is complete
        from tests.faults.matrix import assert_decodes

        assert_decodes(cell.storage.read(cell.dst, name), name)
    lost_at_kill = killed_charges - len(written)
    assert 0 <= lost_at_kill <= 8

    # 1. A different run meanwhile: the dead worker's live claims are respected.
    sandbox.admin.clear_faults(vendor)
    other = asyncio.run(run_batch(sandbox, cell.storage, vendor, cell.src, cell.dst, owner=OWNER_B))
    check_cell(other, cell.storage, cell.dst, total=BATCH)
    assert other.counts["skipped"] == len(written)
    claimed = [r for r in other.rows if r["status"] == "pending"]
    assert all(r["error_code"] == "claimed_elsewhere" and OWNER_A in r["error_message"] for r in claimed)
    assert 0 < len(claimed) <= 8
    assert other.charged == other.counts["done"] == BATCH - len(written) - len(claimed)

    # 2. The killed task's retry (same task instance): takes its claims over, finishes the rest.
    retry = asyncio.run(run_batch(sandbox, cell.storage, vendor, cell.src, cell.dst, owner=OWNER_A))
    check_cell(retry, cell.storage, cell.dst, total=BATCH)
    assert retry.counts["done"] == len(claimed) and retry.counts["skipped"] == BATCH - len(claimed)
    assert retry.charged == len(claimed)
    total = len(sandbox.admin.charges(vendor))
    assert total == BATCH + lost_at_kill  # nothing written was paid twice
    assert len(output_objects(cell.storage, cell.dst, "out/")) == BATCH


async def test_cleared_task_rerun_takes_over_its_own_claims(cell: Cell) -> None:
    """
    A try that died after claiming its outputs (claims left live for an hour) is cleared and rerun:
    the same task-instance identity takes its claims over at once and pays each image once.
    """
    from airflow_provider_bgremoval.pipeline.claims import ClaimStore

    vendor = "pixian"
    dead_try = ClaimStore(cell.storage, cell.dst, "out/_bgremoval/", OWNER_A)
    for name in sorted(cell.objects)[:20]:
        generation = cell.storage.stat(cell.src, name).generation  # claims are per source generation
        assert (
            dead_try.acquire("out/" + name.removeprefix("raw/").rsplit(".", 1)[0] + ".png", generation)
            is None
        )
    stranger = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, owner=OWNER_B)
    check_cell(stranger, cell.storage, cell.dst, total=BATCH)
    assert stranger.counts["pending"] == 20 and stranger.counts["done"] == BATCH - 20
    rerun = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, owner=OWNER_A)
    check_cell(rerun, cell.storage, cell.dst, total=BATCH)
    assert rerun.counts["done"] == 20 and rerun.counts["skipped"] == BATCH - 20
    assert len(cell.sandbox.admin.charges(vendor)) == BATCH


@pytest.mark.parametrize("vendor", ["pixelcut", "poof"])
async def test_two_runs_overlapping_on_the_same_prefix(cell: Cell, vendor: str) -> None:
    """
    Two runs (different owners) plan and process the same 50 sources at the same time: claims and
    create-only writes decide every race, so each output is written once and paid once, and
    nothing is lost.
    """
    cell.sandbox.admin.set_faults(vendor, latency_ms=30)
    first, second = await asyncio.gather(
        run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, owner=OWNER_A, max_concurrency=4),
        run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst, owner=OWNER_B, max_concurrency=4),
    )
    for run in (first, second):
        check_cell(run, cell.storage, cell.dst, total=BATCH, written_elsewhere=True, money=False)
        for row in run.rows:
            assert row["status"] in ("done", "pending", "skipped"), row
            if row["status"] == "pending":
                assert row["error_code"] == "claimed_elsewhere", row
    done_a = {r["source"] for r in first.by_status("done")}
    done_b = {r["source"] for r in second.by_status("done")}
    assert not done_a & done_b, "an output was produced (and paid) by both runs"
    assert len(done_a | done_b) == BATCH
    assert len(cell.sandbox.admin.charges(vendor)) == BATCH == first.known_credits + second.known_credits
    outputs = output_objects(cell.storage, cell.dst, "out/")
    assert len(outputs) == BATCH
    writers = {info.metadata["bgremoval-writer"] for info in outputs.values()}
    assert writers <= {OWNER_A, OWNER_B}


# -- fake-gcs-server outages ----------------------------------------------------------------------
@pytest.fixture
def private_gcs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A private fake-gcs-server (stopping the session's would wipe every other test's buckets)."""
    server = FakeGcsServer(log_path=tmp_path / "gcs.log")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    try:
        yield server
    finally:
        server.stop()


async def _outage_during_uploads(cell: Cell, server: FakeGcsServer, storage: GcsStorage, down_for: float):
    vendor = "poof"
    src, dst = unique_bucket_name("outage-src"), unique_bucket_name("outage-dst")
    server.create_bucket(src)
    server.create_bucket(dst)
    objects = small_batch(20)
    seed(storage, src, objects)
    cell.sandbox.admin.set_faults(vendor, latency_ms=600)
    task = asyncio.create_task(run_batch(cell.sandbox, storage, vendor, src, dst, max_concurrency=20))
    deadline = time.monotonic() + 30
    while cell.sandbox.state.faults[vendor].inflight < 20:  # every source read, every call in flight
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.005)
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(down_for)  # the vendor answers meanwhile: the uploads meet a dead server
    await asyncio.to_thread(server.start)  # same port; buckets re-created empty (memory backend)
    run = await task
    return run, src, dst, objects


async def test_gcs_briefly_unavailable_during_uploads(cell: Cell, private_gcs: FakeGcsServer) -> None:
    """
    fake-gcs-server is down for 1.5 s exactly when 20 paid results are being uploaded: the
    create-only uploads are retried per GCS's rules (connection refused is retryable; the write is
    conditional, so retrying it is safe) and every result lands once — nothing lost, nothing paid
    twice. (The memory backend loses the sources on restart, so no rerun follows here.)
    """
    storage = GcsStorage(gcp_conn_id=None, retry=fast_retry(20.0), timeout=5.0)
    run, _, dst, objects = await _outage_during_uploads(cell, private_gcs, storage, 1.5)
    assert run.counts["done"] == len(objects), run.rows
    check_cell(run, storage, dst, total=len(objects), exact_charges=True)
    assert run.charged == len(objects)


async def test_gcs_down_past_the_retry_deadline(cell: Cell, private_gcs: FakeGcsServer) -> None:
    """
    fake-gcs-server stays down longer than the storage retry deadline: each paid result that cannot
    be stored is reported failed (``upload_failed``, "it was paid for", with its credits), the batch
    itself finishes and accounts for every source, and a rerun redoes those images — paying again,
    because the vendor result was never stored (a documented design limit).
    """
    storage = GcsStorage(gcp_conn_id=None, retry=fast_retry(1.0), timeout=2.0)
    run, src, dst, objects = await _outage_during_uploads(cell, private_gcs, storage, 3.0)
    check_cell(run, storage, dst, total=len(objects), exact_charges=True)
    failed = run.by_status("failed")
    assert failed, "the outage outlasted the retry deadline for some uploads"
    for row in failed:
        assert row["error_code"] == "upload_failed" and "paid for" in row["error_message"], row
        assert row["credits"] == "1"
    assert run.charged == len(objects)
    # Rerun (the sources must be seeded again: the memory backend lost them).
    seed(storage, src, objects)
    cell.sandbox.admin.clear_faults("poof")
    rerun = await run_batch(cell.sandbox, storage, "poof", src, dst)
    check_cell(rerun, storage, dst, total=len(objects), exact_charges=True)
    assert rerun.counts["done"] + rerun.counts["skipped"] == len(objects)
