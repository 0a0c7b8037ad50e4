"""Money edges: a vendor's unusable result, budgets under billed-then-failed and lost replies,
``execution_timeout``, SIGTERM and SIGKILL, and claims held by other runs.

Each cell reproduced a defect first (issue "Money edges"): the batch aborting with no manifest on a
decompression-bomb result, ``max_credits`` overspent by failures and retries, a timed-out try
losing its record and its retry paying again, a green task with unexplained pending images.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from airflow_provider_bgremoval.hooks.poof import PoofHook
from airflow_provider_bgremoval.pipeline.claims import ClaimStore
from airflow_provider_bgremoval.pipeline.manifest import collate_manifests, read_manifest
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutOptions
from tests.faults.batch_worker import MANIFEST
from tests.faults.conftest import Cell
from tests.faults.matrix import BATCH, FAST_POLICY, check_cell, check_rerun, output_objects, run_batch

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


# -- a vendor stand-in whose results are decompression bombs -------------------------------------
def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A 70-odd-byte PNG whose header declares ``width`` x ``height`` RGBA pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def cutout_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (64, 64), (200, 30, 30, 255)).save(out, format="PNG")
    return out.getvalue()


class BombingPoof:
    """
    A Poof stand-in over a socket: ``POST /v1/remove`` answers 200 with an image and charges one
    credit; every third result is a decompression bomb.
    """

    def __init__(self) -> None:
        self.charges = 0
        self.bombs = 0
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with stand_in._lock:
                    stand_in.charges += 1
                    bomb = stand_in.charges % 3 == 0
                    stand_in.bombs += bomb
                body = bomb_png() if bomb else cutout_png()
                time.sleep(0.02)
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(body)))
                self.send_header("x-credits-charged", "1")
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bombing_poof(monkeypatch: pytest.MonkeyPatch) -> Iterator[BombingPoof]:
    stand_in = BombingPoof()
    conn = {
        "conn_type": "poof",
        "host": stand_in.url,
        "password": "stand-in-key",
        "extra": {"max_retries": 0},
    }
    monkeypatch.setenv("AIRFLOW_CONN_POOF_BOMBS", json.dumps(conn))
    yield stand_in
    stand_in.close()


async def test_a_bomb_result_fails_that_image_and_the_batch_goes_on(
    cell: Cell, bombing_poof: BombingPoof
) -> None:
    """Every third result declares 20000 x 20000 px: those images fail, billed; the rest are written."""
    hook = PoofHook("poof_bombs", retry_policy=FAST_POLICY)
    run = await run_batch(cell.sandbox, cell.storage, "poof", cell.src, cell.dst, hook=hook)
    check_cell(run, cell.storage, cell.dst, total=BATCH, money=False)
    failed = run.by_status("failed")
    assert len(failed) == bombing_poof.bombs > 0
    assert run.counts["done"] == BATCH - bombing_poof.bombs
    for row in failed:
        assert row["error_code"] in ("result_too_large", "result_processing_failed", "result_unreadable"), row
        assert row["credits"] == "1" and row["possibly_charged"] == 0, row  # billed for sure, counted
    # Every charge is accounted for: outputs and failed images separately.
    assert run.known_credits == bombing_poof.charges == BATCH
    assert run.result.credits_for_failed == bombing_poof.bombs
    assert run.result.credits_for_outputs == BATCH - bombing_poof.bombs


# -- budgets count money at risk -----------------------------------------------------------------
@pytest.mark.parametrize("concurrency", [1, 8])
async def test_max_credits_holds_when_billed_results_are_lost(cell: Cell, concurrency: int) -> None:
    """Pixelcut ``result_url`` mode, result URLs expired: billed calls that fail count against the budget."""
    vendor = "pixelcut"
    cell.sandbox.admin.settings(result_ttl_seconds=0)
    run = await run_batch(
        cell.sandbox,
        cell.storage,
        vendor,
        cell.src,
        cell.dst,
        vendor_options=PixelcutOptions(result_delivery="url"),
        max_credits=Decimal(5),
        max_concurrency=concurrency,
    )
    cell.sandbox.admin.settings(result_ttl_seconds=3600)
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.charged <= 5, f"charged {run.charged} with max_credits=5"
    assert (
        run.charged
        == run.result.credits_spent
        == run.result.credits_for_failed
        == len(run.by_status("failed"))
    )
    assert run.result.halt is not None and run.result.halt.reason == "max_credits"
    assert run.counts["pending"] == BATCH - run.counts["failed"]


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_max_credits_holds_when_replies_are_lost_and_retried(cell: Cell, concurrency: int) -> None:
    """Poof, every reply lost after the vendor billed it: retries after a lost reply must fit the budget."""
    vendor = "poof"
    run = await _poof_on_every_call(cell, "drop_after_processing", concurrency)
    assert run.charged <= 10, f"charged {run.charged} with max_credits=10"
    assert run.charged == run.possibly_charged  # every charge is a lost reply, each one counted
    assert run.result.halt is not None and run.result.halt.reason == "max_credits"
    await _rerun_clean(cell, vendor, run)


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_max_credits_holds_when_every_reply_is_cut_mid_body(cell: Cell, concurrency: int) -> None:
    """
    Poof, every 200 cut off mid-body: the vendor answered, so it billed each call. None is sent again
    (that would pay twice); each is a certain charge of its failed image, counted against the budget.
    """
    vendor = "poof"
    run = await _poof_on_every_call(cell, "drop_mid_body", concurrency)
    failed = run.by_status("failed")
    assert run.charged <= 10, f"charged {run.charged} with max_credits=10"
    assert run.charged == len(failed) == run.result.credits_for_failed and run.possibly_charged == 0
    assert all(row["attempts"] == 1 and row["possibly_charged"] == 0 for row in failed), failed
    assert run.result.halt is not None and run.result.halt.reason == "max_credits"
    await _rerun_clean(cell, vendor, run)


async def _poof_on_every_call(cell: Cell, fault: str, concurrency: int):  # type: ignore[no-untyped-def]
    """A ``max_credits=10`` batch on Poof with ``fault`` on every call, checked (exact charges)."""
    cell.sandbox.admin.set_faults("poof", fault=fault, rate=1.0)
    run = await run_batch(
        cell.sandbox,
        cell.storage,
        "poof",
        cell.src,
        cell.dst,
        max_credits=Decimal(10),
        max_concurrency=concurrency,
    )
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    return run


async def _rerun_clean(cell: Cell, vendor: str, first) -> None:  # type: ignore[no-untyped-def]
    cell.sandbox.admin.clear_faults(vendor)
    rerun = await run_batch(cell.sandbox, cell.storage, vendor, cell.src, cell.dst)
    check_cell(rerun, cell.storage, cell.dst, total=BATCH)
    check_rerun(first, rerun, total=BATCH)


# -- timeouts and terminations drain -------------------------------------------------------------
TIMEOUT_DAG = """
from datetime import timedelta
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    RemoveBackgroundOperator(
        task_id="cutouts",
        conn_id="pixian_default",
        source_bucket={src!r},
        source_prefix="raw/",
        destination_bucket={dst!r},
        destination_prefix="out/",
        max_concurrency=8,
        execution_timeout=timedelta(seconds=5),
        retries={retries},
        retry_delay=timedelta(seconds=0),
        manifest_checkpoint_rows=5,
    )
"""


def _manifests(cell: Cell) -> dict[str, list[dict]]:
    """Every manifest of the destination by name (checkpoint parts collated per try)."""
    objects = [
        (info.name, cell.storage.read(cell.dst, info.name))
        for info in cell.storage.list_objects(cell.dst, "out/_bgremoval/manifests/")
    ]
    return {name: read_manifest(data) for name, data in collate_manifests(objects)}


def test_dag_execution_timeout_drains_keeps_the_record_and_a_new_run_pays_only_the_rest(
    cell: Cell, dag_tester
) -> None:
    """
    Pixian answers in 1.5 s; the task times out after 5 s with 8 calls in flight. The in-flight calls
    finish within the grace and their outputs are stored; the manifest and the summary XCom are
    written; nothing stays claimed, so a new DAG run at once does exactly the rest.
    """
    vendor = "pixian"
    cell.sandbox.admin.set_faults(vendor, latency_ms=1500)
    source = TIMEOUT_DAG.format(dag_id="money_timeout", src=cell.src, dst=cell.dst, retries=0)
    started = time.monotonic()
    run = dag_tester.run(source, "money_timeout")
    elapsed = time.monotonic() - started
    assert run.task_states() == {"cutouts": "failed"}
    summary = run.xcom("cutouts", "summary")
    assert summary is not None, "no summary XCom after the timeout"
    assert summary["interrupted"] == "execution_timeout"
    rows = read_manifest(cell.storage.read(cell.dst, summary["manifest_uri"].split("/", 3)[3]))
    assert len(rows) == BATCH
    done = [r for r in rows if r["status"] == "done"]
    pending = [r for r in rows if r["status"] == "pending"]
    assert len(done) + len(pending) == BATCH and done and pending
    assert {r["error_code"] for r in pending} == {"execution_timeout"}
    charged = len(cell.sandbox.admin.charges(vendor))
    lost = sum(r["possibly_charged"] for r in rows)
    # Every billed result that reached the worker was stored; only abandoned calls may add charges.
    assert len(done) <= charged <= len(done) + lost
    assert lost <= 8  # 1.5 s calls finish within the 3 s grace (0 measured); a loaded box may abandon some
    assert len(output_objects(cell.storage, cell.dst, "out/")) == len(done)
    print(f"timeout cell: {len(done)} done, {len(pending)} pending, {charged} charged, {elapsed:.1f} s")

    cell.sandbox.admin.clear_faults(vendor)
    rerun = dag_tester.run(source.replace("seconds=5", "seconds=120"), "money_timeout")
    assert rerun.task_states() == {"cutouts": "success"}
    again = rerun.xcom("cutouts")
    assert again["done"] == len(pending) and again["skipped"] == len(done) and again["pending"] == 0
    # nobody paid twice, beyond calls abandoned at the grace
    assert len(cell.sandbox.admin.charges(vendor)) == BATCH + (charged - len(done))


def test_dag_execution_timeout_then_retry_pays_nothing_again(cell: Cell, dag_tester) -> None:
    """With ``retries=1`` the retry (same task instance) skips what the timed-out try stored."""
    vendor = "pixian"
    cell.sandbox.admin.set_faults(vendor, latency_ms=1500)
    source = TIMEOUT_DAG.format(dag_id="money_timeout_retry", src=cell.src, dst=cell.dst, retries=1)
    threading.Timer(6.0, cell.sandbox.admin.clear_faults, args=(vendor,)).start()  # the retry runs fast
    run = dag_tester.run(source, "money_timeout_retry")
    assert run.task_states() == {"cutouts": "success"}, run.task_states()
    manifests = _manifests(cell)
    first = next(rows for name, rows in manifests.items() if name.endswith("try-1.jsonl"))
    second = next(rows for name, rows in manifests.items() if name.endswith("try-2.jsonl"))
    stored = {r["source"] for r in first if r["status"] == "done"}
    lost = sum(r["possibly_charged"] for r in first)
    assert stored and len(first) == len(second) == BATCH
    assert {r["source"] for r in second if r["status"] == "skipped"} == stored
    assert sum(1 for r in second if r["status"] == "done") == BATCH - len(stored)
    assert BATCH <= len(cell.sandbox.admin.charges(vendor)) <= BATCH + lost


def _start_worker(cell: Cell, owner: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.batch_worker", "poof", cell.src, cell.dst, owner],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for_charges(cell: Cell, process: subprocess.Popen[bytes], count: int) -> None:
    deadline = time.monotonic() + 60
    while len(cell.sandbox.state.ledger.charges("poof")) < count:
        assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.005)


def test_sigterm_drains_stores_billed_results_and_releases_claims(cell: Cell) -> None:
    """
    SIGTERM after 15 charges with 8 calls in flight: the worker stops submitting, stores every
    billed result, writes its whole manifest and releases its claims, so another run (a different
    task instance) does the rest at once and nothing is paid twice.
    """
    cell.sandbox.admin.set_faults("poof", latency_ms=150)
    process = _start_worker(cell, "faults/manual__term/cutouts/-1")
    try:
        _wait_for_charges(cell, process, 15)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=20) == 3, process.stderr.read().decode()[-2000:] if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rows = read_manifest(cell.storage.read(cell.dst, MANIFEST))
    assert len(rows) == BATCH
    done = {r["destination"] for r in rows if r["status"] == "done"}
    assert {r["error_code"] for r in rows if r["status"] != "done"} == {"terminated"}
    written = output_objects(cell.storage, cell.dst, "out/")
    assert {f"gs://{cell.dst}/{name}" for name in written} == done
    assert len(cell.sandbox.admin.charges("poof")) == len(done)  # no billed result thrown away
    cell.sandbox.admin.clear_faults("poof")
    other = asyncio.run(
        run_batch(cell.sandbox, cell.storage, "poof", cell.src, cell.dst, owner="faults/b/t/-1")
    )
    check_cell(other, cell.storage, cell.dst, total=BATCH)
    assert other.counts["pending"] == 0 and other.counts["done"] == BATCH - len(done)
    assert len(cell.sandbox.admin.charges("poof")) == BATCH
    print(f"SIGTERM cell: {len(done)} stored before exit, {BATCH - len(done)} pending, 0 paid twice")


@pytest.mark.slow
def test_sigkill_leaves_every_row_up_to_the_last_checkpoint(cell: Cell) -> None:
    """A SIGKILLed worker writes no final manifest; its checkpoint parts hold the rows it had recorded."""
    cell.sandbox.admin.set_faults("poof", latency_ms=150)
    process = _start_worker(cell, "faults/manual__kill/cutouts/-1")
    try:
        _wait_for_charges(cell, process, 30)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    written = output_objects(cell.storage, cell.dst, "out/")
    manifests = _manifests(cell)
    assert list(manifests) == [MANIFEST], "only checkpoint parts, collated under the final name"
    rows = manifests[MANIFEST]
    assert len({r["source"] for r in rows}) == len(rows)
    recorded_done = {r["destination"] for r in rows if r["status"] == "done"}
    assert recorded_done <= {f"gs://{cell.dst}/{name}" for name in written}
    # At most one checkpoint's worth (5 rows) plus the rows added while a part uploads (≤ 8 in flight
    # settling meanwhile, and the outputs written but not yet recorded at the kill) is lost.
    assert len(recorded_done) >= len(written) - 16, (len(recorded_done), len(written))
    print(
        f"SIGKILL cell: {len(recorded_done)} of {len(written)} written outputs recorded in checkpoint parts"
    )


# -- claims held elsewhere -----------------------------------------------------------------------
PENDING_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    RemoveBackgroundOperator(
        task_id="cutouts",
        conn_id="poof_default",
        source_bucket={src!r},
        source_prefix="raw/",
        destination_bucket={dst!r},
        destination_prefix="out/",
        retries=0,
        {extra}
    )
"""


@pytest.mark.parametrize("on_pending", ["fail", "warn"])
def test_pending_claims_of_another_run_are_explained(cell: Cell, dag_tester, on_pending: str, caplog) -> None:
    """8 outputs claimed by a live run elsewhere: the verdict follows ``on_pending``; holders are named."""
    holder = "other_dag/manual__x/cutouts/-1"
    claims = ClaimStore(cell.storage, cell.dst, "out/_bgremoval/", holder)
    for name in sorted(cell.objects)[:8]:
        generation = cell.storage.stat(cell.src, name).generation  # claims are per source generation
        assert (
            claims.acquire("out/" + name.removeprefix("raw/").rsplit(".", 1)[0] + ".png", generation) is None
        )
    extra = "" if on_pending == "fail" else "on_pending='warn',"
    run = dag_tester.run(
        PENDING_DAG.format(dag_id=f"money_pending_{on_pending}", src=cell.src, dst=cell.dst, extra=extra),
        f"money_pending_{on_pending}",
    )
    summary = run.xcom("cutouts", "summary")
    assert summary["pending"] == 8 and summary["pending_reasons"] == {"claimed_elsewhere": 8}
    (held,) = summary["claims_elsewhere"]
    assert held["holder"] == holder and held["images"] == 8 and held["lease_expires"] != "unknown"
    assert run.task_states() == {"cutouts": "failed" if on_pending == "fail" else "success"}
    assert any(holder in r.getMessage() and "lease expires" in r.getMessage() for r in caplog.records)
    assert len(cell.sandbox.admin.charges("poof")) == BATCH - 8


SIGTERM_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

with DAG("money_sigterm", schedule=None, catchup=False) as dag:
    RemoveBackgroundOperator(
        task_id="cutouts",
        conn_id="poof_default",
        source_bucket={src!r},
        source_prefix="raw/",
        destination_bucket={dst!r},
        destination_prefix="out/",
        max_concurrency=8,
        retries=0,
    )
"""


def test_dag_sigterm_through_airflows_task_runner_drains(cell: Cell, airflow_db: None) -> None:
    """
    SIGTERM to a process running ``dag.test()``: Airflow's task runner calls the operator's
    ``on_kill``, the batch drains, every billed result is stored, and the task fails with its
    manifest and summary written.
    """
    cell.sandbox.admin.set_faults("poof", latency_ms=150)
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "money_sigterm.py"
    path.write_text(SIGTERM_DAG.format(src=cell.src, dst=cell.dst))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.dag_runner", str(path), "money_sigterm"],
            cwd=REPO,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for_charges(cell, process, 15)
            os.kill(process.pid, signal.SIGTERM)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        path.unlink(missing_ok=True)
    assert process.returncode == 0, err.decode()[-3000:]
    outcome = json.loads(out.decode().strip().splitlines()[-1])
    assert outcome["states"] == {"cutouts": "failed"}
    summary = outcome["summary"]
    assert summary["interrupted"] == "terminated", summary
    rows = read_manifest(cell.storage.read(cell.dst, summary["manifest_uri"].split("/", 3)[3]))
    assert len(rows) == BATCH
    done = {r["destination"] for r in rows if r["status"] == "done"}
    assert {r["error_code"] for r in rows if r["status"] != "done"} == {"terminated"}
    written = {f"gs://{cell.dst}/{name}" for name in output_objects(cell.storage, cell.dst, "out/")}
    assert written == done
    assert len(cell.sandbox.admin.charges("poof")) == len(done)  # no billed result thrown away
    print(f"dag SIGTERM cell: {len(done)} stored, {BATCH - len(done)} pending")
