"""ManifestWriter: one JSON line per row, every field in declaration order, parts and the whole file."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, fields

import pytest

from airflow_provider_bgremoval.pipeline.manifest import (
    ManifestRow,
    ManifestWriter,
    collate_manifests,
    iter_manifest,
    manifest_part_name,
    read_manifest,
)
from airflow_provider_bgremoval.run_summary import manifests_to_read, summarise_manifests
from airflow_provider_bgremoval.storage.exceptions import (
    ObjectExistsError,
    StorageError,
    StorageUnavailableError,
)


def _row(index: int, **overrides: object) -> ManifestRow:
    values: dict[str, object] = {
        "source": f"gs://src/a/{index}.png",
        "source_generation": 1_700_000_000_000_000 + index,
        "destination": f"gs://dst/out/{index}.png",
        "status": "done",
        "vendor": "poof",
        "operation": "remove_background",
        "request_id": f"req-{index}",
        "credits": "1",
        "attempts": 1,
        "duration_ms": 210,
        "bytes_in": 1234,
        "bytes_out": 2345,
    }
    values.update(overrides)
    return ManifestRow(**values)  # type: ignore[arg-type]


def test_a_line_is_every_field_in_declaration_order() -> None:
    row = _row(1, error_message="naïve — ünïcode", credits_estimated=True)
    with ManifestWriter() as manifest:
        manifest.add(row)
        line = manifest.getvalue()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded = json.loads(line)
    assert list(decoded) == [f.name for f in fields(ManifestRow)]
    assert decoded == asdict(row)
    assert "naïve — ünïcode".encode() in line  # not escaped (ensure_ascii=False)


def test_rows_round_trip_and_parts_hold_only_new_rows() -> None:
    parts: list[tuple[int, bytes]] = []
    with ManifestWriter(lambda number, data: parts.append((number, data)), every_rows=2) as manifest:
        manifest.add(_row(1))
        assert not manifest.part_due()
        manifest.add(_row(2, status="failed", error_code="upload_failed", bytes_out=None))
        assert manifest.part_due()
        assert manifest.save_part() == 2
        manifest.add(_row(3, status="pending", credits=None))
        assert manifest.save_part() == 1
        whole = manifest.getvalue()
    assert [number for number, _ in parts] == [1, 2]
    assert b"".join(data for _, data in parts) == whole
    assert read_manifest(whole) == [
        asdict(_row(1)),
        asdict(_row(2, status="failed", error_code="upload_failed", bytes_out=None)),
        asdict(_row(3, status="pending", credits=None)),
    ]


def test_a_part_saved_from_a_mark_holds_exactly_the_rows_up_to_it() -> None:
    """The engine marks on its loop and saves on a thread while rows go on being added: the part holds
    the marked rows (count and bytes agree), the next part the rest, so no row is skipped."""
    parts: list[tuple[int, bytes]] = []
    with ManifestWriter(lambda number, data: parts.append((number, data)), every_rows=1) as manifest:
        manifest.add(_row(1))
        manifest.add(_row(2))
        mark = manifest.mark()
        manifest.add(_row(3))  # added after the mark, before the thread saves
        assert manifest.save_part(mark) == 2
        assert manifest.unsaved_rows == 1 and manifest.part_due()
        assert manifest.save_part(mark) == 0  # nothing new up to that mark
        assert manifest.save_part() == 1
        whole = manifest.getvalue()
    assert [len(read_manifest(data)) for _, data in parts] == [2, 1]
    assert b"".join(data for _, data in parts) == whole


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown manifest status"):
        _row(1, status="finished")


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x1c"])
def test_a_source_name_with_a_unicode_line_separator_stays_one_row(separator: str) -> None:
    """GCS names may hold U+2028, U+2029 or U+0085: written raw (``ensure_ascii=False``), each is
    inside its row, which only ``\\n`` ends."""
    rows = [_row(1, source=f"gs://src/shoe{separator}red.png"), _row(2)]
    with ManifestWriter() as manifest:
        for one in rows:
            manifest.add(one)
        data = manifest.getvalue()
    assert data.count(b"\n") == 2
    assert read_manifest(data) == [asdict(one) for one in rows]


@pytest.mark.integration
def test_a_part_whose_write_raised_is_offered_again_unchanged_and_later_parts_follow(buckets) -> None:
    """Part 2's create-only write lands but raises (its reply lost): the next checkpoint offers part 2
    again with the same bytes (the write recognises its own token and checksums), then part 3 with the
    rows since; after a SIGKILL the parts, folded as the report folds them, hold every row once."""
    storage, _, dst = buckets
    final = "o/_bgremoval/manifests/d/r/t/try-1.jsonl"
    lost: list[int] = []

    def store_part(number: int, data: bytes) -> None:  # as the bucket task stores a part
        name = manifest_part_name(final, number)
        storage.write(
            dst, name, data, content_type="application/x-ndjson", idempotency_token=f"manifest:o:{number}"
        )
        if number == 2 and not lost:
            lost.append(number)
            raise StorageUnavailableError("writing failed: GCS stayed unavailable", bucket=dst, name=name)

    with ManifestWriter(store_part, every_rows=1) as manifest:
        for index in range(10):
            manifest.add(_row(index))
            with contextlib.suppress(StorageError):  # the engine logs it and retries at the next checkpoint
                manifest.save_part()
        assert manifest.unsaved_rows == 0
    listed = [info.name for info in storage.list_objects(dst, "o/_bgremoval/manifests/")]
    assert listed == [manifest_part_name(final, number) for number in range(1, 11)]  # a row each
    objects = [(name, storage.read(dst, name)) for name in manifests_to_read(listed)]
    ((name, joined),) = collate_manifests(objects)
    assert name == final and read_manifest(joined) == [asdict(_row(index)) for index in range(10)]
    assert summarise_manifests([(f"gs://{dst}/{name}", joined)]).counts["done"] == 10


def test_a_part_offered_again_and_refused_as_existing_counts_as_saved() -> None:
    """A create-only sink that does not recognise its own landed write refuses the re-offered part as
    existing: only this task try writes under its part names, so the part is there and the next rows
    follow as the next part."""
    parts: dict[int, bytes] = {}
    lost: list[int] = []

    def create_only(number: int, data: bytes) -> None:
        if number in parts:
            raise ObjectExistsError(
                f"part {number} exists",
                bucket="b",
                name=f"p{number}",
                expected_generation=0,
                current_generation=1,
            )
        parts[number] = data
        if number == 2 and not lost:
            lost.append(number)
            raise StorageUnavailableError("writing failed: GCS stayed unavailable")

    with ManifestWriter(create_only, every_rows=1) as manifest:
        for index in range(6):
            manifest.add(_row(index))
            with contextlib.suppress(StorageError):
                manifest.save_part()
        assert manifest.unsaved_rows == 0 and manifest.parts_saved == 6
    ((_, joined),) = collate_manifests(
        (manifest_part_name("m/try-1.jsonl", n), data) for n, data in parts.items()
    )
    assert read_manifest(joined) == [asdict(_row(index)) for index in range(6)]


def _manifest(count: int, **overrides: object) -> bytes:
    with ManifestWriter() as writer:
        for index in range(count):
            writer.add(_row(index, account="poof_default", **overrides))
        return writer.getvalue()


def test_rows_read_back_share_their_field_names_and_repeated_values() -> None:
    rows = read_manifest(_manifest(10_003))  # over one parse's rows: a second parse holds the rest
    assert [row["source"] for row in rows] == [f"gs://src/a/{index}.png" for index in range(10_003)]
    assert rows[-1] == {**asdict(_row(10_002)), "account": "poof_default"}
    first, second = rows[0], rows[9_999]
    # a row parsed alone held its own copy of each of its 20 field names (and of "done", "poof", ...):
    # over a million rows, 2.2 GB where 0.8 GB do
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert all(first[key] is second[key] for key in ("status", "vendor", "operation", "credits", "account"))


def test_each_row_comes_with_its_line() -> None:
    data = _manifest(10_003) + '{"source": "gs://src/e\u2028f.png", "status": "done"}'.encode()  # no "\\n"
    rows = iter_manifest(data)
    first, line = next(rows)
    assert first["source"] == "gs://src/a/0.png" and line == data[: data.index(b"\n") + 1]
    *rest, (last, end) = rows
    assert len(rest) == 10_002 and last["source"] == "gs://src/e\u2028f.png"
    assert end.endswith(b'"done"}\n')  # every line "\\n"-ended, the last too
    assert b"".join(line for _, line in [(first, line), *rest]) + end[:-1] == data


def test_a_line_holding_two_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="hold 3 rows"):
        read_manifest(b'{"source": "a"}\n{"source": "b"},{"source": "c"}\n')


UPLOAD_FAILED = (
    "vendor result could not be stored (it was paid for): write gs://dst/out/1.png failed: ConnectionError: "
    "HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded with url: "
    "/upload/storage/v1/b/dst/o?uploadType=resumable&upload_id=ADPycdvSESSION-KEY (Caused by ...)"
)


def test_a_message_quoting_a_urls_query_is_recorded_without_its_values() -> None:
    handoff = {"account": "a", "reason": "outage", "message": "GET https://r.example/x.png?sig=SIGNED&e=1"}
    with ManifestWriter() as writer:
        writer.add(_row(1, status="failed", error_message=UPLOAD_FAILED, handoffs=[handoff]))
        writer.add(_row(2, status="failed", error_message="max_credits=3 reached"))
        data = writer.getvalue()
    # the upload session's URI lets anyone holding it write the object; a signed URL is a credential
    assert b"SESSION-KEY" not in data and b"SIGNED" not in data
    first, second = read_manifest(data)
    assert first["error_message"].endswith("/o?uploadType=…&upload_id=… (Caused by ...)")
    assert first["handoffs"] == [{**handoff, "message": "GET https://r.example/x.png?sig=…&e=…"}]
    assert list(first) == [field.name for field in fields(ManifestRow)]
    assert second["error_message"] == "max_credits=3 reached"  # no URL: unchanged


def test_a_renditions_upload_failure_quoting_a_urls_query_is_recorded_without_its_values() -> None:
    # a rendition's upload error (StorageError text) is a row message as the row's own is
    entry = {
        "name": "amazon",
        "status": "failed",
        "error_code": "upload_failed",
        "error_message": UPLOAD_FAILED,
    }
    ok = {"name": "web", "status": "done", "error_message": None}
    with ManifestWriter() as writer:
        writer.add(_row(1, renditions=[entry, ok]))
        data = writer.getvalue()
    assert b"SESSION-KEY" not in data
    [row] = read_manifest(data)
    assert row["renditions"][0]["error_message"].endswith("&upload_id=… (Caused by ...)")
    assert row["renditions"][1] == ok


@pytest.mark.parametrize("field", ["source", "destination", "error_message"])
def test_a_lone_surrogate_in_a_row_is_written_escaped_and_never_raises(field: str) -> None:
    # a name decoded with surrogateescape (os.fsdecode) or a message holding one: not UTF-8 encodable
    text = "gs://src/caf\udce9.png"
    with ManifestWriter(every_rows=1) as writer:
        writer.add(_row(1, status="failed", **{field: text}))
        writer.add(_row(2))
        data = writer.getvalue()
    data.decode("utf-8")  # the manifest stays UTF-8
    first, second = read_manifest(data)
    assert first[field] == text and second["source"] == "gs://src/a/2.png"
    assert writer.rows == 2
