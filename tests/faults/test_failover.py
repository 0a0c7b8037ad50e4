"""Failover across vendor accounts (issue "Accounts"): the bucket task with a chain of two accounts.

Each cell runs ``RemoveBackgroundOperator(conn_id=["pixian_default", "poof_default"])`` through real
Airflow (``dag.test()``) over sockets against the vendor sandbox (Pixian.AI the primary, Poof the
secondary) and fake-gcs-server, on the matrix's 50 studio shots. Besides the matrix invariants
(:func:`tests.faults.matrix.check_cell`: every source explained, nothing partial, the charge logs
of both vendors matching the manifest), each cell joins the sandbox's charge logs with its request
logs to name the image behind every charge, so "no image charged twice" is checked image by image,
on both vendors together.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_bgremoval.pipeline.accounts import BreakerPolicy
from tests.faults.conftest import Cell
from tests.faults.matrix import (
    BATCH,
    CONN_IDS,
    ChainRun,
    charges_by_image,
    check_cell,
    check_rerun,
    run_chain,
)

pytestmark = pytest.mark.integration

PRIMARY, SECONDARY = "pixian", "poof"
CHAIN = [CONN_IDS[PRIMARY], CONN_IDS[SECONDARY]]


def _run(cell: Cell, dag_tester: Any, dag_id: str, **arguments: Any) -> ChainRun:
    return run_chain(cell.sandbox, cell.storage, dag_tester, cell.src, cell.dst, dag_id, CHAIN, **arguments)


def _names(cell: Cell) -> Counter[str]:
    """Every source's file name once: what "each image charged exactly once" compares with."""
    return Counter(name.rsplit("/", 1)[-1] for name in cell.objects)


def _by_vendor(run: ChainRun, vendor: str) -> list[dict]:
    return [row for row in run.rows if row["status"] == "done" and row["vendor"] == vendor]


def _made_by(run: ChainRun) -> dict[str, str]:
    """Image file name -> the vendor the manifest says made it (done rows)."""
    return {row["source"].rsplit("/", 1)[-1]: row["vendor"] for row in run.rows if row["status"] == "done"}


# -- 1. the primary runs out at image 20 of 50 ---------------------------------------------------
def test_primary_out_of_credits_at_image_20_the_secondary_does_the_other_30(cell: Cell, dag_tester) -> None:
    """
    Pixian's balance drops to 0 after 20 charges, with 8 calls in flight: the refused calls and every
    image after them go to Poof in the same task. The charge logs sum to 50, each image once.
    """
    cell.sandbox.admin.set_faults(PRIMARY, exhaust_after=20, latency_ms=40)
    run = _run(cell, dag_tester, "failover_out_at_20")
    assert run.task_state == "success", run.summary
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["done"] == BATCH
    charged = run.charged_images
    assert sum(charged[PRIMARY].values()) == 20 and sum(charged[SECONDARY].values()) == 30
    assert charged[PRIMARY] + charged[SECONDARY] == _names(cell)  # 50 charges, one per image
    assert not set(charged[PRIMARY]) & set(charged[SECONDARY])  # no image charged on both
    # The manifest names the vendor and the account that made each image, as the vendors billed it.
    assert _made_by(run) == {
        **dict.fromkeys(charged[PRIMARY], PRIMARY),
        **dict.fromkeys(charged[SECONDARY], SECONDARY),
    }
    assert {row["account"] for row in _by_vendor(run, PRIMARY)} == {CONN_IDS[PRIMARY]}
    assert {row["account"] for row in _by_vendor(run, SECONDARY)} == {CONN_IDS[SECONDARY]}
    accounts = run.accounts
    # Images refused on Pixian while in flight say why they were handed on; none was made by Pixian.
    handed = [row for row in run.rows if row.get("handoffs")]
    assert len(handed) <= 8 and {row["vendor"] for row in handed} <= {SECONDARY}
    assert {(h["account"], h["reason"]) for row in handed for h in row["handoffs"]} <= {
        (CONN_IDS[PRIMARY], "out_of_credits")
    }
    primary, secondary = accounts[CONN_IDS[PRIMARY]], accounts[CONN_IDS[SECONDARY]]
    assert (primary["vendor"], primary["done"], Decimal(primary["credits_spent"])) == (PRIMARY, 20, 20)
    assert (secondary["vendor"], secondary["done"], Decimal(secondary["credits_spent"])) == (
        SECONDARY,
        30,
        30,
    )
    assert primary["state"] == "out_of_credits" and secondary["state"] == "active"
    print(
        f"out-at-20 cell: {dict(Counter(_made_by(run).values()))} done, 50 charges, 0 twice, "
        f"{len(handed)} refused in flight and handed on"
    )


# -- 2. the primary is down: the circuit opens, then half-opens and returns -----------------------
def _outage_ends_after(admin: Any, charges: int, stop: threading.Event) -> int | None:
    """Beside the task: once Poof has charged ``charges`` images, move the sandbox clock past the
    primary's outage window; return how many vendor requests were logged at that moment."""
    while len(admin.charges(SECONDARY)) < charges:
        if stop.wait(0.01):
            return None
    logged = len(admin.requests())
    admin.advance_clock(3600)
    return logged


def test_primary_outage_opens_the_circuit_and_the_batch_returns_after_the_window(
    cell: Cell, dag_tester
) -> None:
    """
    Every Pixian call answers 503 over a window of the sandbox clock (no hook retries, one call in
    flight so the order is exact). The first images each meet a 503 and go on to Poof; after the
    documented number of consecutive failures the circuit opens and images go straight to Poof;
    while the window lasts, each half-open probe (every 1 s) fails and re-opens it. Once Poof has
    made 20 images the test moves the sandbox clock past the window: the next probe succeeds, the
    circuit closes and the rest of the batch goes back to Pixian.

    Poof answers in no less than 150 ms, so the 15 images it makes while the circuit is open take
    longer than one cooldown (at least one probe fails), and at most 7 of the images left go to Poof
    before the next probe (the rest return to Pixian). The 1 s cooldown leaves a Poof call 850 ms of
    slack before the cooldown ends on a loaded machine (the first image after the circuit opens must
    go straight to Poof).
    """
    admin = cell.sandbox.admin
    cell.connections(max_retries=0)  # each 503 is one transient outcome for the breaker
    admin.outage(PRIMARY, 3600)
    admin.set_faults(SECONDARY, latency_ms=150)
    threshold = BreakerPolicy().consecutive_failures  # the documented default, not set below
    stop, ended = threading.Event(), []
    watcher = threading.Thread(target=lambda: ended.append(_outage_ends_after(admin, 20, stop)), daemon=True)
    watcher.start()
    try:
        run = _run(
            cell,
            dag_tester,
            "failover_outage",
            max_concurrency=1,
            circuit_breaker={"cooldown_seconds": 1.0, "max_cooldown_seconds": 1.0},
        )
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert run.task_state == "success", run.summary
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["done"] == BATCH and ended and ended[0] is not None, (run.counts, ended)
    charged = run.charged_images
    assert charged[PRIMARY] + charged[SECONDARY] == _names(cell)
    calls = [
        (r["vendor"], r["status"], r["seq"])
        for r in admin.requests()
        if r["kind"] == "process" and r["vendor"] in (PRIMARY, SECONDARY)
    ]
    order = [(vendor, status) for vendor, status, _ in calls]
    back = order.index((PRIMARY, 200))  # the first probe after the window: the circuit closes
    failures = [i for i, call in enumerate(order) if call == (PRIMARY, 503)]
    assert failures[-1] < back and calls[failures[-1]][2] <= ended[0] + 1  # 503s only inside the window
    # Closed: each of the first `threshold` images meets a 503 and goes on to Poof...
    assert order[: 2 * threshold] == [(PRIMARY, 503), (SECONDARY, 200)] * threshold
    # ...then open: images go straight to Poof; one half-open probe at a time, each failing and
    # its image going on to Poof.
    opened = order[2 * threshold : back]
    assert opened[0] == (SECONDARY, 200) and set(opened) == {(SECONDARY, 200), (PRIMARY, 503)}
    assert all(a != b for a, b in itertools.pairwise(opened) if a == (PRIMARY, 503))
    probes = opened.count((PRIMARY, 503))
    assert probes < opened.count((SECONDARY, 200))
    # Every image that met a 503 records the hand-on; each was then made by Poof.
    handed = [row for row in run.rows if row.get("handoffs")]
    assert len(handed) == threshold + probes and {row["vendor"] for row in handed} == {SECONDARY}
    assert {(h["account"], h["reason"]) for row in handed for h in row["handoffs"]} == {
        (CONN_IDS[PRIMARY], "outage")
    }
    # After the window: every later image is Pixian's.
    assert set(order[back:]) == {(PRIMARY, 200)} and len(order[back:]) >= 5
    assert sum(charged[PRIMARY].values()) == len(order[back:])
    primary = run.accounts[CONN_IDS[PRIMARY]]
    assert (primary["breaker"], primary["breaker_opened"], primary["state"]) == (
        "closed",
        1 + probes,
        "active",
    )
    assert (
        primary["done"] == len(order[back:])
        and run.accounts[CONN_IDS[SECONDARY]]["done"] == BATCH - primary["done"]
    )
    print(
        f"outage cell: opened after {threshold} x 503, {probes} failed probe(s), "
        f"{sum(charged[SECONDARY].values())} on Poof, {len(order[back:])} back on Pixian"
    )


# -- 3. both accounts out ---------------------------------------------------------------------------
def test_both_accounts_out_halts_with_every_image_pending_and_the_pooled_shortfall(
    cell: Cell, dag_tester
) -> None:
    """Pixian holds 0.5 credits (an image costs 1), Poof 0: nothing is paid, all 50 stay pending."""
    admin = cell.sandbox.admin
    admin.set_balance(PRIMARY, 0.5)
    admin.set_balance(SECONDARY, 0)
    run = _run(cell, dag_tester, "failover_both_out")
    assert run.task_state == "failed"
    check_cell(run, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert run.counts["pending"] == BATCH and run.charged_images == {PRIMARY: Counter(), SECONDARY: Counter()}
    halt = run.halt
    assert halt is not None and halt["reason"] == "out_of_credits" and halt["fatal"] is True
    assert halt["remaining_images"] == BATCH and halt["shortfall_images"] == BATCH
    assert Decimal(halt["needed"]) == BATCH and Decimal(halt["available"]) == Decimal("0.5")  # 0.5 + 0
    shortfall = {entry["conn_id"]: entry for entry in halt["accounts"]}
    assert list(shortfall) == CHAIN  # in chain order
    for conn_id, balance in zip(CHAIN, ("0.5", "0"), strict=True):
        entry = shortfall[conn_id]
        assert Decimal(entry["available"]) == Decimal(balance) and entry["covers"] == 0, entry
        assert Decimal(entry["needed"]) == BATCH and entry["state"] == "out_of_credits", entry
    assert f"Pooled shortfall: {BATCH} image(s) of {BATCH} pending" in halt["message"]
    assert run.summary["halt"] == halt


# -- 4. a rerun with the primary topped up pays nothing for what either vendor made ---------------
def test_rerun_with_the_primary_topped_up_charges_nothing_for_finished_images(cell: Cell, dag_tester) -> None:
    """
    Run 1: Pixian runs out after 20 images, Poof after 20 more: 10 images stay pending (halt).
    Run 2, Pixian topped up: the 40 outputs, made by either vendor, are skipped; only the 10 are
    paid, on Pixian. Over both runs every image was charged exactly once.
    """
    admin = cell.sandbox.admin
    admin.set_faults(PRIMARY, exhaust_after=20, latency_ms=40)
    admin.set_balance(SECONDARY, 20)
    first = _run(cell, dag_tester, "failover_rerun")
    assert first.task_state == "failed"
    check_cell(first, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    assert first.counts["done"] == 40 and first.counts["pending"] == 10
    assert first.halt is not None and first.halt["shortfall_images"] == 10
    assert len(_by_vendor(first, PRIMARY)) == 20 and len(_by_vendor(first, SECONDARY)) == 20

    admin.clear_faults(PRIMARY)
    admin.set_balance(PRIMARY, 1000)
    rerun = _run(cell, dag_tester, "failover_rerun")
    assert rerun.task_state == "success", rerun.summary
    check_cell(rerun, cell.storage, cell.dst, total=BATCH, exact_charges=True)
    check_rerun(first, rerun, total=BATCH)
    assert sum(rerun.charged_images[SECONDARY].values()) == 0
    assert sum(rerun.charged_images[PRIMARY].values()) == 10
    assert {row["vendor"] for row in rerun.rows if row["status"] == "done"} == {PRIMARY}
    everything = charges_by_image(cell.sandbox, PRIMARY) + charges_by_image(cell.sandbox, SECONDARY)
    assert everything == _names(cell)  # over both runs: each image charged once, by one vendor
