"""RunReportOperator over an in-memory bucket: what it reads, what it writes, how it judges upstream."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from PIL import Image

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.operators import report
from airflow_provider_bgremoval.operators.report import (
    REPORT_LIST_MAX,
    RunReportOperator,
    parse_estimate,
    report_prefix,
)
from airflow_provider_bgremoval.pipeline.manifest import ManifestRow, ManifestWriter, manifest_object_name
from airflow_provider_bgremoval.storage.exceptions import (
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageUnavailableError,
)
from airflow_provider_bgremoval.storage.gcs import ObjectInfo


def png(colour: tuple[int, int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (40, 30), colour).save(out, format="PNG")
    return out.getvalue()


class MemoryStorage:
    """The three ``GcsStorage`` calls the report makes, over a dict."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.generations: dict[tuple[str, str], int] = {}  # 1 unless set
        self.reads: list[tuple[str, str, int | None, int | None]] = []

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        for (b, name), data in sorted(self.objects.items()):
            if b == bucket and name.startswith(prefix):
                yield ObjectInfo(bucket=b, name=name, generation=1, size=len(data))

    def read(
        self, bucket: str, name: str, *, generation: int | None = None, max_bytes: int | None = None
    ) -> bytes:
        self.reads.append((bucket, name, generation, max_bytes))
        if (bucket, name) not in self.objects:
            raise ObjectNotFoundError(f"gs://{bucket}/{name} does not exist", bucket=bucket, name=name)
        live = self.generations.get((bucket, name), 1)
        if generation is not None and generation != live:
            raise ObjectChangedError(
                f"gs://{bucket}/{name} generation {generation} no longer exists",
                bucket=bucket,
                name=name,
                expected_generation=generation,
                current_generation=live,
            )
        data = self.objects[bucket, name]
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLargeError(
                f"gs://{bucket}/{name} is too large",
                bucket=bucket,
                name=name,
                max_bytes=max_bytes,
                size=len(data),
            )
        return data

    def write(self, bucket: str, name: str, data: bytes, **kwargs: Any) -> ObjectInfo:
        self.objects[bucket, name] = data
        return ObjectInfo(bucket=bucket, name=name, generation=1, size=len(data))


def row(source: str, status: str, **extra: Any) -> dict[str, Any]:
    destination = f"gs://out/cut/{source}.png" if status in ("done", "skipped") else None
    return {"source": f"gs://raw/{source}.jpg", "destination": destination, "status": status, **extra}


def manifest(*rows: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], bytes]:
    storage = MemoryStorage()
    monkeypatch.setattr(report, "GcsStorage", lambda gcp_conn_id: storage)
    objects = storage.objects
    for name in ("a", "b", "c"):
        objects["raw", f"{name}.jpg"] = png((200, 30, 40, 255))
        objects["out", f"cut/{name}.png"] = png((200, 30, 40, 128))
    # try 1 did "a", failed "b"; try 2 skipped "a" (done before) and did "b"; "c" pending; "d" rejected
    first = manifest_object_name("cut/_bgremoval/", "dag", "manual__1", "cutouts", 0, 1)
    second = manifest_object_name("cut/_bgremoval/", "dag", "manual__1", "cutouts", 0, 2)
    objects["out", first] = manifest(
        row("a", "done", vendor="poof", credits="1"),
        row("b", "failed", vendor="poof", credits="1", error_code="result_empty", error_message="empty"),
    )
    objects["out", second] = manifest(
        row("a", "skipped", vendor="poof"),
        row("b", "done", vendor="poof", credits="1"),
        row("c", "pending", vendor="poof"),
        row("d", "rejected", vendor="poof", error_code="too_large", error_message="big"),
    )
    objects["out", "cut/_bgremoval/manifests/other_dag/manual__1/t/try-1.jsonl"] = manifest(row("z", "done"))
    return objects


def run(op: RunReportOperator, states: dict[str, str] | None = None) -> tuple[Any, mock.MagicMock]:
    ti = mock.MagicMock(dag_id="dag", run_id="manual__1")
    ti.get_task_states.return_value = {"manual__1": states or {}}
    return op.execute({"ti": ti}), ti  # type: ignore[arg-type]


def reported_accounts(
    bucket: dict[tuple[str, str], bytes], prefix: str, summaries: list[Any]
) -> tuple[Any, mock.MagicMock]:
    """The run report's account block, its bucket task ``cutouts`` having pushed ``summaries``; the ti."""
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix=prefix)
    op.upstream_task_ids.add("cutouts")
    ti = mock.MagicMock(dag_id="dag", run_id="manual__1")
    ti.get_task_states.return_value = {"manual__1": {"cutouts": "success"}}
    ti.xcom_pull.return_value = summaries
    op.execute({"ti": ti})  # type: ignore[arg-type]
    written = json.loads(bucket["out", f"{report_prefix(prefix, 'dag', 'manual__1')}report.json"])
    return written["accounts"], ti


def test_report_and_contact_sheet(bucket: dict[tuple[str, str], bytes]) -> None:
    op = RunReportOperator(
        task_id="run_report",
        destination_bucket="out",
        destination_prefix="cut",
        estimate="{'needed': '3', 'sufficient': True}",
        gcp_conn_id=None,
    )
    result, _ = run(op)
    folder = report_prefix("cut", "dag", "manual__1")
    assert folder == "cut/_bgremoval/reports/dag/manual__1/"
    assert result == {
        "report_uri": f"gs://out/{folder}report.json",
        "contact_sheet_uri": f"gs://out/{folder}contact-sheet.png",
        "counts": {"done": 2, "skipped": 0, "rejected": 1, "failed": 0, "pending": 1},
        "credits_spent": "3",
        "manifests": [
            "gs://out/cut/_bgremoval/manifests/dag/manual__1/cutouts.0/try-1.jsonl",
            "gs://out/cut/_bgremoval/manifests/dag/manual__1/cutouts.0/try-2.jsonl",
        ],
        "sample_pairs": 2,
    }
    written = json.loads(bucket["out", f"{folder}report.json"])
    assert written["estimate"] == {"needed": "3", "sufficient": True}
    assert written["vendors"] == ["poof"]
    assert written["rejected"] == [{"source": "gs://raw/d.jpg", "error_code": "too_large", "message": "big"}]
    assert written["pending"] == ["gs://raw/c.jpg"]
    assert [pair["source"] for pair in written["sample_pairs"]] == ["gs://raw/a.jpg", "gs://raw/b.jpg"]
    with Image.open(io.BytesIO(bucket["out", f"{folder}contact-sheet.png"])) as sheet:
        assert sheet.format == "PNG"


def test_no_processed_images_no_contact_sheet(bucket: dict[tuple[str, str], bytes]) -> None:
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="elsewhere")
    result, _ = run(op)
    assert result["contact_sheet_uri"] is None
    assert result["counts"] == {"done": 0, "skipped": 0, "rejected": 0, "failed": 0, "pending": 0}


def test_failed_upstream_fails_after_writing(bucket: dict[tuple[str, str], bytes]) -> None:
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut")
    op.upstream_task_ids.add("cutouts")
    with pytest.raises(AirflowFailException, match="upstream task\\(s\\) did not succeed: cutouts"):
        run(op, {"cutouts": "failed"})
    assert ("out", f"{report_prefix('cut', 'dag', 'manual__1')}report.json") in bucket
    result, _ = run(op, {"cutouts": "success"})
    assert result["counts"]["done"] == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("None", None),
        ({"needed": "3"}, {"needed": "3"}),
        ('{"needed": "3"}', {"needed": "3"}),
        ("{'needed': '3'}", {"needed": "3"}),
        ("[1, 2]", {"raw": [1, 2]}),
        ("not an estimate", {"raw": "not an estimate"}),
    ],
)
def test_parse_estimate(value: Any, expected: Any) -> None:
    assert parse_estimate(value) == expected


def test_a_chains_accounts_block_joins_the_manifests_with_the_tasks_final_states(
    bucket: dict[tuple[str, str], bytes],
) -> None:
    name = manifest_object_name("chain/_bgremoval/", "dag", "manual__1", "cutouts", -1, 1)
    handoff = {"account": "px", "vendor": "pixian", "reason": "out_of_credits", "code": "402", "message": "-"}
    bucket["out", name] = manifest(
        row("a", "done", vendor="pixian", account="px", credits="1"),
        row("b", "done", vendor="poof", account="pf", credits="2", handoffs=[handoff]),
    )
    final = {
        "images": 1,  # the task's summary agrees with its manifest (one try)
        "possibly_charged": 0,
        "state": "out_of_credits",
        "state_message": "no credits",
        "breaker": "closed",
        "breaker_opened": 0,
    }
    summaries = [{"accounts": [{"conn_id": "px", "vendor": "pixian", "done": 1, **final}]}]
    accounts, ti = reported_accounts(bucket, "chain", summaries)
    assert accounts == [
        {
            "conn_id": "px",
            "vendor": "pixian",
            "done": 1,
            "credits_spent": "1",
            "handed_on": {"out_of_credits": 1},
            **final,
            "shard_states": {"out_of_credits": 1},
        },
        {
            "conn_id": "pf",
            "vendor": "poof",
            "done": 1,
            "images": 1,
            "credits_spent": "2",
            "possibly_charged": 0,
            "handed_on": {},
        },
    ]
    assert ti.xcom_pull.call_args.kwargs == {"task_ids": ["cutouts"], "key": "summary"}


def test_mapped_shards_accounts_are_aggregated_not_the_last_shard_read(
    bucket: dict[tuple[str, str], bytes],
) -> None:
    """Three shards of a chain: shard 1 ran Pixian out of credits, shards 0 and 2 did not."""
    out_of_credits = {"account": "px", "vendor": "pixian", "reason": "out_of_credits", "possibly_charged": 0}
    for shard, rows in enumerate(
        (
            [row("a", "done", vendor="pixian", account="px", credits="1")],
            [row("b", "done", vendor="poof", account="pf", credits="2", handoffs=[out_of_credits])],
            [row("c", "done", vendor="pixian", account="px", credits="1", possibly_charged=1)],
        )
    ):
        bucket["out", manifest_object_name("chain/_bgremoval/", "dag", "manual__1", "cutouts", shard, 1)] = (
            manifest(*rows)
        )

    def account(conn_id: str, images: int, state: str = "active", **fields: Any) -> dict[str, Any]:
        return {
            "conn_id": conn_id,
            "images": images,
            "possibly_charged": 0,
            "state": state,
            "state_message": None if state == "active" else f"{conn_id}: {state}",
            "breaker": "closed",
            "breaker_opened": 0,
            **fields,
        }

    summaries = [  # one summary per mapped task, in map order
        {"accounts": [account("px", 1), account("pf", 0)]},
        {"accounts": [account("px", 0, "out_of_credits", breaker_opened=1), account("pf", 1)]},
        {"accounts": [account("px", 1, possibly_charged=1), account("pf", 0, breaker="open")]},
    ]
    (px, pf), _ = reported_accounts(bucket, "chain", summaries)
    assert px == {
        "conn_id": "px",
        "vendor": "pixian",
        "done": 2,
        "credits_spent": "2",
        "handed_on": {"out_of_credits": 1},
        "images": 2,  # the manifests' rows, as the shards' summaries say (one try each)
        "possibly_charged": 1,
        "state": "out_of_credits",  # the worst of its shards, not the last one's "active"
        "state_message": "px: out_of_credits",
        "breaker": "closed",
        "breaker_opened": 1,
        "shard_states": {"active": 2, "out_of_credits": 1},
    }
    assert (pf["images"], pf["state"], pf["breaker"], pf["shard_states"]) == (
        1,
        "active",
        "open",
        {"active": 3},
    )


@pytest.mark.parametrize(
    ("states", "worst"),
    [
        (["active", "max_credits"], "max_credits"),
        (["max_credits", "out_of_credits", "active"], "out_of_credits"),
        (["out_of_credits", "auth_failed"], "auth_failed"),
        (["active", "active"], "active"),
    ],
)
def test_an_accounts_run_state_is_the_worst_of_its_shards(states: list[str], worst: str) -> None:
    summaries = [{"accounts": [{"conn_id": "px", "state": state, "images": 1}]} for state in states]
    assert report.account_states(summaries)["px"]["state"] == worst


def test_an_account_entry_without_a_state_counts_in_no_shard_state() -> None:
    summaries = [
        {"accounts": [{"conn_id": "px", "state": "active", "images": 1}]},
        {"accounts": [{"conn_id": "px", "breaker": "open", "breaker_opened": 1}]},  # no state
    ]
    assert report.account_states(summaries) == {
        "px": {
            "state": "active",
            "state_message": None,
            "breaker": "open",
            "breaker_opened": 1,
            "shard_states": {"active": 1},  # not {"active": 1, "None": 1}
        }
    }


def test_a_retried_tasks_accounts_count_every_try_not_only_the_last_try_s_summary(
    bucket: dict[tuple[str, str], bytes],
) -> None:
    """Try 1 lost replies on px and failed "b"; try 2 lost one more there and handed "b" on to pf.
    Airflow cleared try 1's summary XCom: the accounts' images and lost replies come from both tries."""
    tries = [manifest_object_name("retry/_bgremoval/", "dag", "manual__1", "cutouts", -1, n) for n in (1, 2)]
    bucket["out", tries[0]] = manifest(
        row("a", "done", vendor="pixian", account="px", credits="1", possibly_charged=1),
        row("b", "failed", vendor="pixian", account="px", possibly_charged=2, error_code="timeout"),
    )
    outage = {"account": "px", "vendor": "pixian", "reason": "outage", "code": "503", "possibly_charged": 1}
    bucket["out", tries[1]] = manifest(
        row("a", "skipped", vendor="pixian"),
        row("b", "done", vendor="poof", account="pf", credits="2", possibly_charged=1, handoffs=[outage]),
    )
    states = {"state": "active", "state_message": None}
    last_try = {  # try 2's summary, the only one Airflow kept
        "accounts": [
            {
                "conn_id": "px",
                "vendor": "pixian",
                "done": 0,
                "images": 0,
                "credits_spent": "0",
                "possibly_charged": 1,
                **states,
                "breaker": "open",
                "breaker_opened": 1,
            },
            {
                "conn_id": "pf",
                "vendor": "poof",
                "done": 1,
                "images": 1,
                "credits_spent": "2",
                "possibly_charged": 0,
                **states,
                "breaker": "closed",
                "breaker_opened": 0,
            },
        ]
    }
    accounts, _ = reported_accounts(bucket, "retry", [last_try])
    px, pf = accounts
    assert px == {
        "conn_id": "px",
        "vendor": "pixian",
        "done": 1,
        "images": 2,  # "a" and "b" of try 1 (try 2's summary: 0)
        "credits_spent": "1",
        "possibly_charged": 1 + 2 + 1,  # try 1's rows, and its share of try 2's "b" (summary: 1)
        "handed_on": {"outage": 1},
        **states,
        "breaker": "open",
        "breaker_opened": 1,
        "shard_states": {"active": 1},
    }
    assert (pf["images"], pf["possibly_charged"], pf["credits_spent"]) == (1, 0, "2")
    assert sum(entry["possibly_charged"] for entry in accounts) == 1 + 2 + 1  # every row, once


def test_the_report_lists_only_its_runs_manifests_and_reads_each_try_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A destination with 300 past runs (manifests, reports, plans, claims); this run: 3 shards, one with
    12 checkpoint parts and its final manifest, one whose try stopped before its final (parts only)."""
    from airflow_provider_bgremoval.pipeline.manifest import manifest_part_name
    from tests.support.memory_storage import MemoryStorage as CountingStorage

    storage = CountingStorage()
    internal = "cut/_bgremoval/"
    for past in range(300):
        run_id = f"scheduled__2026-{1 + past // 28:02d}-{1 + past % 28:02d}T00:00:00+00:00"
        for shard in range(3):
            name = manifest_object_name(internal, "dag", run_id, "cutouts", shard, 1)
            storage.put("out", name, manifest(row(f"p{past}-{shard}", "done", credits="1")))
        storage.put("out", f"{report_prefix('cut', 'dag', run_id)}report.json", b"{}")
        storage.put("out", f"{internal}plans/dag/{run_id}/check/try-1/items-000000.jsonl", b"{}\n")
        storage.put("out", f"{internal}claims/p{past}.json", b"{}")
    finals = [manifest_object_name(internal, "dag", "manual__1", "cutouts", shard, 1) for shard in range(3)]
    for part in range(1, 13):  # shard 0: checkpoints, then its final manifest holding every row
        storage.put(
            "out", manifest_part_name(finals[0], part), manifest(row(f"a{part}", "done", credits="1"))
        )
    storage.put("out", finals[0], manifest(*(row(f"a{part}", "done", credits="1") for part in range(1, 13))))
    storage.put("out", finals[1], manifest(row("b", "done", credits="1")))
    for part in (1, 2):  # shard 2: killed before its final manifest: its parts are the record
        storage.put("out", manifest_part_name(finals[2], part), manifest(row(f"c{part}", "pending")))
    monkeypatch.setattr(report, "GcsStorage", lambda gcp_conn_id: storage)
    op = RunReportOperator(
        task_id="run_report", destination_bucket="out", destination_prefix="cut", sample_size=0
    )
    result, _ = run(op)

    assert result["counts"] == {"done": 13, "skipped": 0, "rejected": 0, "failed": 0, "pending": 2}
    assert result["credits_spent"] == "13"
    run_folder = f"{internal}manifests/dag/manual__1/"
    assert storage.listed and all(name.startswith(run_folder) for name in storage.listed)
    assert len(storage.listed) == 12 + 1 + 1 + 2  # this run's objects only, not 300 runs' 1,800
    assert storage.requests["list"] == 1
    read = sorted(name for _, name in storage.reads)
    assert read == sorted([finals[0], finals[1], *(manifest_part_name(finals[2], part) for part in (1, 2))])


def test_a_source_name_with_a_unicode_line_separator_is_reported(
    bucket: dict[tuple[str, str], bytes],
) -> None:
    """A row whose source name holds U+2028 (legal in GCS names, written raw) is one row of the report."""
    name = manifest_object_name("cut/_bgremoval/", "dag", "manual__1", "cutouts", 0, 3)
    with ManifestWriter() as writer:  # as the bucket task writes it
        writer.add(
            ManifestRow(
                source="gs://raw/e\u2028f.jpg",
                source_generation=1,
                destination=None,
                status="rejected",
                vendor="poof",
                operation="remove_background",
                error_code="too_large",
                error_message="big",
            )
        )
        bucket["out", name] = writer.getvalue()
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut")
    result, _ = run(op)
    assert result["counts"]["rejected"] == 2
    written = json.loads(bucket["out", f"{report_prefix('cut', 'dag', 'manual__1')}report.json"])
    assert {"source": "gs://raw/e\u2028f.jpg", "error_code": "too_large", "message": "big"} in written[
        "rejected"
    ]


def test_a_deleted_sample_source_is_drawn_unreadable_and_the_report_is_written(
    bucket: dict[tuple[str, str], bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    """A processed source removed after the run (by a user, a lifecycle rule): its tile says
    "unreadable", the contact sheet and report.json are written."""
    del bucket["raw", "a.jpg"]
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut")
    result, _ = run(op)
    folder = report_prefix("cut", "dag", "manual__1")
    assert result["contact_sheet_uri"] == f"gs://out/{folder}contact-sheet.png"
    assert json.loads(bucket["out", f"{folder}report.json"])["counts"]["done"] == 2
    assert "gs://raw/a.jpg is drawn unreadable" in capsys.readouterr().out  # the task log


def test_a_sample_over_the_read_cap_is_drawn_unreadable_and_the_report_is_written(
    bucket: dict[tuple[str, str], bytes], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cut-out larger than ``SAMPLE_MAX_BYTES`` is not read whole: its tile says "unreadable"."""
    monkeypatch.setattr(report, "SAMPLE_MAX_BYTES", len(bucket["out", "cut/a.png"]) - 1)
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut")
    result, _ = run(op)
    folder = report_prefix("cut", "dag", "manual__1")
    assert result["contact_sheet_uri"] == f"gs://out/{folder}contact-sheet.png"
    assert json.loads(bucket["out", f"{folder}report.json"])["counts"]["done"] == 2
    assert (
        "gs://out/cut/a.png is drawn unreadable: gs://out/cut/a.png is too large" in capsys.readouterr().out
    )


def test_sample_reads_are_pinned_to_the_row_s_generations_and_capped(
    bucket: dict[tuple[str, str], bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    """The source at the row's ``source_generation``, the master at its recorded generation, each with a
    size cap: a source replaced since the run is not shown as if it were the one processed."""
    storage = report.GcsStorage(gcp_conn_id=None)  # type: ignore[call-arg] # the fixture's storage
    name = manifest_object_name("cut/_bgremoval/", "dag", "manual__1", "other", None, 1)
    master = {"object": "gs://out/m/e.png", "generation": 7, "status": "done"}
    bucket["out", name] = manifest(
        row("e", "done", vendor="poof", credits="1", source_generation=5, master=master, renditions=[])
        | {"destination": None}
    )
    bucket["raw", "e.jpg"], bucket["out", "m/e.png"] = png((1, 2, 3, 255)), png((1, 2, 3, 128))
    storage.generations["raw", "e.jpg"], storage.generations["out", "m/e.png"] = 6, 7  # e.jpg replaced
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut")
    odd = row("f", "done", vendor="poof", credits="1", source_generation="\u00b2")  # int() refuses it
    bucket["out", name] = bucket["out", name] + manifest(odd)
    op.sample_size = 4
    result, _ = run(op)
    assert result["sample_pairs"] == 4 and result["contact_sheet_uri"] is not None
    samples = [r for r in storage.reads if not r[1].endswith(".jsonl")]
    assert ("raw", "f.jpg", None, report.SAMPLE_MAX_BYTES) in samples  # read unpinned, not a crash
    written = json.loads(bucket["out", f"{report_prefix('cut', 'dag', 'manual__1')}report.json"])
    pairs = {pair["source"]: pair["output"] for pair in written["sample_pairs"]}
    assert pairs["gs://raw/e.jpg"] == "gs://out/m/e.png"  # render-only: the master it was rendered from
    assert ("raw", "e.jpg", 5, report.SAMPLE_MAX_BYTES) in samples
    assert ("out", "m/e.png", 7, report.SAMPLE_MAX_BYTES) in samples
    assert ("raw", "a.jpg", None, report.SAMPLE_MAX_BYTES) in samples  # the row records no generation
    logged = capsys.readouterr().out  # the task log
    assert "gs://raw/e.jpg is drawn unreadable" in logged and "gs://out/m/e.png" not in logged


def test_a_contact_sheet_that_cannot_be_written_leaves_the_report(
    bucket: dict[tuple[str, str], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = report.GcsStorage(gcp_conn_id=None)  # type: ignore[call-arg] # the fixture's storage
    write = storage.write

    def failing_sheet(bucket_name: str, name: str, data: bytes, **kwargs: Any) -> ObjectInfo:
        if name.endswith("contact-sheet.png"):
            raise StorageUnavailableError(
                "writing failed: GCS stayed unavailable", bucket=bucket_name, name=name
            )
        return write(bucket_name, name, data, **kwargs)

    monkeypatch.setattr(storage, "write", failing_sheet)
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut")
    result, _ = run(op)
    folder = report_prefix("cut", "dag", "manual__1")
    assert result["contact_sheet_uri"] is None
    assert json.loads(bucket["out", f"{folder}report.json"])["contact_sheet_uri"] is None


def test_a_failed_rows_url_query_is_not_copied_into_the_report(bucket: dict[tuple[str, str], bytes]) -> None:
    # a manifest written before its messages were redacted: an upload session's URI in the failure
    name = manifest_object_name("cut/_bgremoval/", "dag", "manual__1", "cutouts", 1, 1)
    message = "write gs://out/cut/e.png failed: ... url: /upload/storage/v1/b/out/o?upload_id=SESSION-KEY"
    bucket["out", name] = manifest(row("e", "failed", error_code="upload_failed", error_message=message))
    run(RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut"))
    written = bucket["out", f"{report_prefix('cut', 'dag', 'manual__1')}report.json"]
    assert b"SESSION-KEY" not in written
    failed = json.loads(written)["failed"]
    redacted = message.replace("SESSION-KEY", "…")
    assert failed == [{"source": "gs://raw/e.jpg", "error_code": "upload_failed", "message": redacted}]


class CopyingStorage(MemoryStorage):
    """Reads return new bytes, as GCS reads do (the dict's own objects are not what the report holds)."""

    def read(
        self, bucket: str, name: str, *, generation: int | None = None, max_bytes: int | None = None
    ) -> bytes:
        return bytes(memoryview(super().read(bucket, name, generation=generation, max_bytes=max_bytes)))


def test_the_contact_sheet_holds_thumbnails_not_every_samples_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tracemalloc

    storage = CopyingStorage()
    monkeypatch.setattr(report, "GcsStorage", lambda gcp_conn_id: storage)
    photo = io.BytesIO()
    Image.frombytes("RGB", (700, 500), os.urandom(700 * 500 * 3)).save(photo, format="PNG")  # ~1 MB
    names = [f"p{index}" for index in range(6)]
    for name in names:
        storage.objects["raw", f"{name}.jpg"] = storage.objects["out", f"cut/{name}.png"] = photo.getvalue()
    first = manifest_object_name("cut/_bgremoval/", "dag", "manual__1", "cutouts", 0, 1)
    rows = (row(name, "done", vendor="poof", credits="1") for name in names)
    storage.objects["out", first] = manifest(*rows)
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut")
    tracemalloc.start()
    try:
        result, _ = run(op)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["sample_pairs"] == 6 and result["contact_sheet_uri"]
    # the 12 images' bytes were all held until the sheet was drawn: 12 MB here (a dozen 50 MB cut-outs: 600)
    assert peak < 5 * len(photo.getvalue())  # now about 1.2 times one image


def test_a_sample_whose_read_fails_unexpectedly_is_drawn_unreadable_and_the_sheet_is_written(
    bucket: dict[tuple[str, str], bytes], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = report.GcsStorage(gcp_conn_id=None)  # the fixture's MemoryStorage
    read = storage.read

    def flaky(bucket_name: str, name: str, **kwargs: Any) -> bytes:
        if name == "b.jpg":
            raise RuntimeError("the client library failed in a way nobody translated")
        return read(bucket_name, name, **kwargs)

    monkeypatch.setattr(storage, "read", flaky)
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut")
    result, _ = run(op)
    assert result["contact_sheet_uri"] is not None  # was None: one sample lost the whole sheet
    assert result["sample_pairs"] == 2
    assert "gs://raw/b.jpg is drawn unreadable: RuntimeError" in capsys.readouterr().out  # the task log


def test_a_large_runs_report_lists_the_first_sources_of_each_status_and_counts_every_one(
    bucket: dict[tuple[str, str], bytes],
) -> None:
    """A run of many images: ``report.json`` lists the first REPORT_LIST_MAX sources of a status by name."""
    many = REPORT_LIST_MAX + 3
    failed = [row(f"f{index:05d}", "failed", error_code="1000", error_message="no") for index in range(many)]
    pending = [row(f"p{index:05d}", "pending") for index in range(many)]
    name = manifest_object_name("cut/_bgremoval/", "dag", "manual__1", "cutouts", 1, 1)
    bucket["out", name] = manifest(*reversed(failed), *pending, row("zz", "rejected", vendor="pixian"))
    op = RunReportOperator(task_id="run_report", destination_bucket="out", destination_prefix="cut")
    result, _ = run(op)
    assert result["counts"] == {"done": 2, "skipped": 0, "rejected": 2, "failed": many, "pending": many + 1}
    written = json.loads(bucket["out", f"{report_prefix('cut', 'dag', 'manual__1')}report.json"])
    assert [entry["source"] for entry in written["failed"]] == [
        f"gs://raw/f{index:05d}.jpg" for index in range(REPORT_LIST_MAX)
    ]
    assert written["pending"] == [
        "gs://raw/c.jpg",
        *(f"gs://raw/p{index:05d}.jpg" for index in range(REPORT_LIST_MAX - 1)),
    ]
    assert [entry["source"] for entry in written["rejected"]] == ["gs://raw/d.jpg", "gs://raw/zz.jpg"]
    assert written["vendors"] == ["pixian", "poof"]
    assert written["total"] == 2 + 2 + 2 * many + 1
    assert written["listed_max"] == REPORT_LIST_MAX
