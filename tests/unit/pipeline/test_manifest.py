"""ManifestWriter: one JSON line per row, every field in declaration order, parts and the whole file."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import pytest

from airflow_provider_bgremoval.pipeline.manifest import ManifestRow, ManifestWriter, read_manifest


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
