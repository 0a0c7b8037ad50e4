"""summarise_manifests: one final row per source over every try, credits over every try."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from airflow_provider_bgremoval.pipeline.manifest import STATUSES, manifest_part_name
from airflow_provider_bgremoval.run_summary import (
    RunSummary,
    manifests_to_read,
    summarise_manifests,
    summarise_stored,
)

FOLDER = "gs://out/_bgremoval/manifests/dag/run/task"


def lines(*rows: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def test_latest_try_wins_but_done_stays_done() -> None:
    summary = summarise_manifests(
        [
            (
                f"{FOLDER}/try-2.jsonl",
                lines(
                    {"source": "a", "status": "skipped"}, {"source": "b", "status": "done", "credits": "1"}
                ),
            ),
            (
                f"{FOLDER}/try-1.jsonl",
                lines(
                    {"source": "a", "status": "done", "credits": "1.5"},
                    {"source": "b", "status": "failed", "credits": "1"},
                ),
            ),
        ]
    )
    assert [(row["source"], row["status"]) for row in summary.rows] == [("a", "done"), ("b", "done")]
    assert summary.counts == {"done": 2, "skipped": 0, "rejected": 0, "failed": 0, "pending": 0}
    assert summary.credits_spent == Decimal("3.5")  # the failed try's charge counts too
    assert summary.manifests == [f"{FOLDER}/try-1.jsonl", f"{FOLDER}/try-2.jsonl"]


def test_a_try_that_left_only_checkpoint_parts_is_read_from_them() -> None:
    final = f"{FOLDER}/try-1.jsonl"
    summary = summarise_manifests(
        [
            (manifest_part_name(final, 2), lines({"source": "b", "status": "pending"})),
            (manifest_part_name(final, 1), lines({"source": "a", "status": "done", "credits": "x"})),
        ]
    )
    assert summary.manifests == [final]
    assert summary.by_status("done") == [{"source": "a", "status": "done", "credits": "x"}]
    assert summary.by_status("pending") == [{"source": "b", "status": "pending"}]
    assert summary.credits_spent == 0  # an unreadable amount counts as nothing


def test_empty_run() -> None:
    assert summarise_manifests([]) == RunSummary()
    assert tuple(RunSummary().counts) == STATUSES


def test_per_account_block_of_a_failover_chain() -> None:
    handoff = {"account": "px", "vendor": "pixian", "reason": "out_of_credits", "code": "402", "message": "-"}
    summary = summarise_manifests(
        [
            (
                f"{FOLDER}/try-1.jsonl",
                lines(
                    {"source": "a", "status": "done", "credits": "1", "account": "px", "vendor": "pixian"},
                    {
                        "source": "b",
                        "status": "done",
                        "credits": "2",
                        "account": "pf",
                        "vendor": "poof",
                        "handoffs": [handoff],
                    },
                    {"source": "c", "status": "pending", "account": "pf", "vendor": "poof"},
                    {"source": "d", "status": "skipped"},
                ),
            )
        ]
    )
    assert summary.account_summary() == [
        {
            "conn_id": "px",
            "vendor": "pixian",
            "done": 1,
            "images": 1,
            "credits_spent": "1",
            "possibly_charged": 0,
            "handed_on": {"out_of_credits": 1},
        },
        {
            "conn_id": "pf",
            "vendor": "poof",
            "done": 1,
            "images": 2,  # every row it took the last call of, done or not
            "credits_spent": "2",
            "possibly_charged": 0,
            "handed_on": {},
        },
    ]


def test_a_rows_lost_replies_are_split_over_its_chain_and_every_try_counts() -> None:
    """Handoff shares go to the accounts that handed the image on, the rest to the row's account."""

    def handoff(account: str, lost: int | None) -> dict[str, Any]:
        entry = {"account": account, "vendor": account, "reason": "outage", "code": "503", "message": "-"}
        return entry if lost is None else entry | {"possibly_charged": lost}

    summary = summarise_manifests(
        [
            (
                f"{FOLDER}/try-1.jsonl",
                lines(
                    {"source": "a", "status": "failed", "account": "px", "possibly_charged": 2},
                    {
                        "source": "b",
                        "status": "done",
                        "credits": "1",
                        "account": "pf",
                        "possibly_charged": 4,
                        "handoffs": [handoff("px", 1), handoff("pc", 2)],
                    },
                ),
            ),
            (  # try 2 made "a" on pf after px lost one more reply; a manifest from before handoff
                # shares (no possibly_charged on the entry) books the row's lost replies to its account
                f"{FOLDER}/try-2.jsonl",
                lines(
                    {
                        "source": "a",
                        "status": "done",
                        "credits": "1",
                        "account": "pf",
                        "possibly_charged": 1,
                        "handoffs": [handoff("px", 1)],
                    },
                    {"source": "b", "status": "skipped"},
                    {
                        "source": "c",
                        "status": "done",
                        "credits": "1",
                        "account": "pf",
                        "possibly_charged": 3,
                        "handoffs": [handoff("px", None)],
                    },
                ),
            ),
        ]
    )
    figures = {
        e["conn_id"]: (e["images"], e["possibly_charged"], e["done"]) for e in summary.accounts.values()
    }
    assert figures == {"px": (1, 2 + 1 + 1, 0), "pc": (0, 2, 0), "pf": (3, 1 + 0 + 3, 3)}
    assert sum(lost for _, lost, _ in figures.values()) == 2 + 4 + 1 + 3  # every row's, once


def test_only_the_manifests_that_hold_the_record_are_read() -> None:
    """A try's final manifest holds every row of its checkpoint parts: the parts are read only without it."""
    final, stopped = f"{FOLDER}/try-1.jsonl", f"{FOLDER}.1/try-2.jsonl"
    names = [
        manifest_part_name(final, 1),
        manifest_part_name(final, 2),
        final,
        manifest_part_name(stopped, 1),  # try 2 of another task stopped before its final manifest
        manifest_part_name(stopped, 2),
        f"{FOLDER}/notes.txt",
    ]
    assert manifests_to_read(names) == [final, manifest_part_name(stopped, 1), manifest_part_name(stopped, 2)]
    assert manifests_to_read([]) == []


def test_a_retry_that_leaves_an_earlier_tries_output_pending_does_not_undo_it() -> None:
    # try 1 made a and b, then failed at end; try 2 had nothing left of max_credits (or halted, or was
    # interrupted) before it reached them: its rows say pending, the outputs of try 1 are there
    summary = summarise_manifests(
        [
            (
                f"{FOLDER}/try-1.jsonl",
                lines(
                    {"source": "a", "status": "done", "credits": "2", "account": "px", "vendor": "pixian"},
                    {"source": "b", "status": "done", "credits": "2", "account": "px", "vendor": "pixian"},
                    {"source": "c", "status": "failed", "error_code": "1000"},
                ),
            ),
            (
                f"{FOLDER}/try-2.jsonl",
                lines(
                    {"source": "a", "status": "pending", "error_code": "max_credits"},
                    {"source": "b", "status": "skipped", "error_code": "already_done"},
                    {"source": "c", "status": "pending", "error_code": "max_credits"},
                ),
            ),
        ]
    )
    assert [(row["source"], row["status"]) for row in summary.rows] == [
        ("a", "done"),
        ("b", "done"),
        ("c", "pending"),  # never made: still pending
    ]
    assert (summary.counts["done"], summary.counts["pending"]) == (2, 1)  # was 1 done, 2 pending
    assert summary.accounts["px"]["done"] == 2
    assert summary.credits_spent == Decimal(4)


def test_a_large_run_is_summarised_in_a_fraction_of_the_rows_memory() -> None:
    import gc
    import tracemalloc

    from airflow_provider_bgremoval.pipeline.manifest import ManifestRow, ManifestWriter

    def manifest(shard: int, count: int) -> tuple[str, bytes]:
        with ManifestWriter() as writer:
            for index in range(count):
                name = f"products/2026/12/{shard}-{index:07d}"
                writer.add(
                    ManifestRow(
                        source=f"gs://raw/{name}.jpg",
                        source_generation=1_733_300_000_000_000 + index,
                        destination=f"gs://cut/cutouts/{name}.png",
                        status="done",
                        vendor="pixelcut",
                        operation="remove_background",
                        request_id=f"req-{index:012x}",
                        credits="1",
                        attempts=1,
                        duration_ms=1234,
                        bytes_in=345_678,
                        bytes_out=234_567,
                        account="pixelcut_default",
                    )
                )
            return f"{FOLDER}.{shard}/try-1.jsonl", writer.getvalue()

    gc.collect()
    tracemalloc.start()
    try:
        summary = summarise_manifests(manifest(shard, 5_000) for shard in range(4))
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.counts["done"] == 20_000 and summary.credits_spent == 20_000
    # each row held its own copies of its field names and the manifests' bytes were kept to the end:
    # about 2.25 kB a row (2.2 GB for a run of a million images); now about 0.85 kB
    assert held / 20_000 < 1_200


def test_shards_are_folded_in_their_numbers_order_not_their_names() -> None:
    # a run cleared after more photos arrived: its new plan has 11 shards; a source failed by shard 2's
    # first try (before the clear) was made by shard 10's first try (after it)
    run = "gs://out/_bgremoval/manifests/dag/run/cutouts"
    summary = summarise_manifests(
        [
            (f"{run}.10/try-1.jsonl", lines({"source": "a", "status": "done", "credits": "1"})),
            (f"{run}.2/try-1.jsonl", lines({"source": "a", "status": "failed", "error_code": "1000"})),
            (f"{run}.2/try-2.jsonl", lines({"source": "b", "status": "done", "credits": "1"})),
        ]
    )
    # was 1 done and 1 failed: by name, "cutouts.10" < "cutouts.2"
    assert (summary.counts["done"], summary.counts["failed"]) == (2, 0)
    assert summary.manifests == [f"{run}.2/try-1.jsonl", f"{run}.10/try-1.jsonl", f"{run}.2/try-2.jsonl"]


def test_kept_rows_are_capped_per_status_and_the_totals_stay_exact() -> None:
    # a run of many images keeps only the rows a report shows: the first of each status by source name
    first = [
        {"source": f"s{index}", "status": "failed", "vendor": "poof", "credits": "1"} for index in range(6)
    ]
    first.append({"source": "z", "status": "done", "vendor": "late", "credits": "1", "account": "px"})
    second = [
        {"source": "s0", "status": "done", "vendor": "poof", "credits": "1", "account": "px"},  # made now
        {"source": "z", "status": "skipped", "vendor": "late"},  # an earlier try's done row stands
        {"source": "p1", "status": "pending"},
        {"source": "p0", "status": "pending"},
        {"source": "p2", "status": "pending"},
    ]
    summary = summarise_manifests(
        [(f"{FOLDER}/try-1.jsonl", lines(*first)), (f"{FOLDER}/try-2.jsonl", lines(*second))], keep=2
    )
    assert summary.counts == {"done": 2, "skipped": 0, "rejected": 0, "failed": 5, "pending": 3}
    assert summary.kept == 2
    assert [(row["source"], row["status"]) for row in summary.rows] == [
        ("p0", "pending"),
        ("p1", "pending"),
        ("s0", "done"),
        ("s1", "failed"),
        ("s2", "failed"),
        ("z", "done"),
    ]
    assert summary.by_status("done")[1] == first[-1]  # the row itself, from try 1
    assert summary.vendors == ["late", "poof"]  # every final row's, kept or not
    assert summary.accounts["px"]["done"] == 2
    assert summary.credits_spent == 8
    everything = summarise_manifests([(f"{FOLDER}/try-1.jsonl", lines(*first))])
    assert everything.kept is None and len(everything.rows) == 7


def test_stored_manifests_are_read_one_at_a_time_in_the_order_they_are_folded() -> None:
    """Each object is read when its try is folded (never all of them first), and only the ones needed."""
    shard2, shard10 = f"{FOLDER}.2/try-1.jsonl", f"{FOLDER}.10/try-1.jsonl"
    retry = f"{FOLDER}.2/try-2.jsonl"  # stopped before its final manifest: its parts hold its rows
    objects = {
        f"gs://out/{FOLDER}.10/notes.txt": b"not a manifest",
        shard10: lines({"source": "a", "status": "done", "credits": "1"}),
        manifest_part_name(shard2, 1): lines({"source": "a", "status": "failed"}),
        shard2: lines({"source": "a", "status": "failed"}, {"source": "b", "status": "failed"}),
        manifest_part_name(retry, 10): lines({"source": "c", "status": "done", "credits": "1"}),
        manifest_part_name(retry, 9): lines({"source": "b", "status": "done", "credits": "1"}),
    }
    reads: list[str] = []

    def read(uri: str) -> bytes:
        reads.append(uri)
        return objects[uri]

    summary = summarise_stored(objects, read, keep=1)
    assert reads == [shard2, shard10, manifest_part_name(retry, 9), manifest_part_name(retry, 10)]
    assert summary.manifests == [shard2, shard10, retry]
    assert summary.counts == {"done": 3, "skipped": 0, "rejected": 0, "failed": 0, "pending": 0}
    assert [row["source"] for row in summary.rows] == ["a"]
    assert summary.credits_spent == 3
