"""The per-task-instance manifest: one JSON line per source, spooled to a temporary file.

New rows are checkpointed to the bucket as numbered parts while the batch runs; the whole file is
uploaded when it ends. Paths and fields: docs/pipeline.md ("Manifest and XCom").
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import IO, Any

from airflow_provider_bgremoval.exceptions import redact_query
from airflow_provider_bgremoval.pipeline.naming import folder_name
from airflow_provider_bgremoval.storage.exceptions import WriteConflictError

#: Final states of a source.
STATUSES = ("done", "skipped", "rejected", "failed", "pending")


@dataclass(frozen=True)
class ManifestRow:
    """
    What happened to one source.

    :param source: ``gs://`` URI of the source.
    :param source_generation: the source generation that was planned.
    :param destination: ``gs://`` URI of the output (when one was computed).
    :param status: one of :data:`STATUSES`.
    :param vendor: the vendor that made the output: the image's last call's, or for an output that
        already exists (skipped, render-only) the one its ``bgremoval-vendor`` metadata records.
    :param operation: operation name.
    :param request_id: the vendor's request id, when known.
    :param credits: credits charged (text), when a vendor call succeeded.
    :param credits_estimated: True when ``credits`` comes from the cost table, not the vendor.
    :param possibly_charged: attempts whose reply was lost after the request was sent (billing unknown).
    :param error_code: reason code for anything but ``done``.
    :param error_message: human explanation.
    :param attempts: HTTP attempts of the vendor call.
    :param duration_ms: wall time spent on this source.
    :param bytes_in: size of the source.
    :param bytes_out: size of the output.
    :param master: with renditions: the master's ``object``, ``generation`` and ``status``.
    :param renditions: with renditions: one entry per rendition (name, object, status, facts, checks).
    :param account: the vendor connection (``conn_id``) of the image's last call, when it reached one.
    :param handoffs: in a failover chain, why earlier accounts handed the image on (``account``,
        ``vendor``, ``reason``, ``code``, ``message`` each, and ``possibly_charged``: the lost replies
        of this image booked to that account; the rest of the row's are its ``account``'s).
    """

    source: str
    source_generation: int | None
    destination: str | None
    status: str
    vendor: str
    operation: str
    request_id: str | None = None
    credits: str | None = None
    credits_estimated: bool = False
    possibly_charged: int = 0
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    duration_ms: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    master: dict[str, Any] | None = None
    renditions: list[dict[str, Any]] | None = None
    account: str | None = None
    handoffs: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown manifest status {self.status!r}")


def _redacted_entries(entries: list[dict[str, Any]] | None, key: str) -> list[dict[str, Any]] | None:
    """``entries`` (handoffs, renditions) with each one's ``key`` message redacted (:func:`redact_query`)."""
    if not entries:
        return entries
    return [
        {**entry, key: redact_query(text)} if isinstance(text := entry.get(key), str) else entry
        for entry in entries
    ]


def _redacted_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """
    A row's fields, its ``error_message``, its handoffs' and its renditions' messages redacted
    (:func:`redact_query`).
    """
    message = fields.get("error_message")
    return {
        **fields,
        "error_message": redact_query(message) if message else message,
        "handoffs": _redacted_entries(fields.get("handoffs"), "message"),
        "renditions": _redacted_entries(fields.get("renditions"), "error_message"),
    }


def _json_line(fields: dict[str, Any]) -> bytes:
    """
    One row's line: UTF-8 with non-ASCII characters unescaped; a row holding a lone surrogate (a name
    decoded with ``surrogateescape``, a message quoting one), which UTF-8 cannot encode, is written with
    every non-ASCII character escaped instead (the same JSON value, read back alike), never raising.
    """
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    try:
        line = text.encode()
    except UnicodeEncodeError:
        line = json.dumps(fields, separators=(",", ":")).encode()
    return line + b"\n"


@dataclass(eq=False)
class ManifestWriter:
    """
    Spools :class:`ManifestRow` objects as JSON lines; new rows go to ``part_sink`` as numbered checkpoint
    parts when :meth:`part_due` (docs/pipeline.md, "Manifest and XCom").

    :param part_sink: stores one part: ``(part number, bytes)``; ``None`` disables checkpoints.
    :param every_rows: checkpoint once this many rows are waiting.
    :param every_seconds: checkpoint rows that have waited this long.
    :param clock: monotonic clock (injectable for tests).
    """

    part_sink: Callable[[int, bytes], None] | None = None
    _: KW_ONLY
    every_rows: int = 500
    every_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="bgremoval-manifest-")  # noqa: SIM115 - closed by close()
        self.rows = 0
        self._size = 0
        self._saved_rows = 0
        self._saved_size = 0
        self._saved_at = self.clock()
        self.parts_saved = 0
        self._offered: tuple[int, int] | None = None  # the rows of a part whose write raised

    def add(self, row: ManifestRow) -> None:
        """
        Append one row (its messages, its handoffs' and renditions' too, with the values of any URL's
        query redacted: :func:`redact_query`).
        """
        # The row's own field dict (every value is a primitive): ``asdict`` deep-copies each field and
        # cost 4x the encoding itself, once per image.
        fields = vars(row)
        if (row.error_message and "=" in row.error_message) or row.handoffs or row.renditions:
            fields = _redacted_fields(fields)
        line = _json_line(fields)
        self._file.write(line)
        self.rows += 1
        self._size += len(line)

    @property
    def unsaved_rows(self) -> int:
        """Rows not yet in a checkpointed part."""
        return self.rows - self._saved_rows

    def part_due(self) -> bool:
        """True when the rows waiting should be checkpointed now."""
        if self.part_sink is None or not self.unsaved_rows:
            return False
        return self.unsaved_rows >= self.every_rows or self.clock() - self._saved_at >= self.every_seconds

    def mark(self) -> tuple[int, int]:
        """
        The rows added so far and their bytes, flushed to the spool file: taken on the thread that adds
        rows, it tells a part saved on another thread exactly what to hold.
        """
        self._file.flush()
        return self.rows, self._size

    def save_part(self, upto: tuple[int, int] | None = None) -> int:
        """
        Hand the new rows to ``part_sink``, return how many (after an error: next time, the failed
        part first, unchanged).

        :param upto: a :meth:`mark`: save the rows up to it (on another thread while rows are added:
            the row count and the bytes then agree); ``None``: every row added so far.
        """
        rows, size = self.mark() if upto is None else upto
        if self.part_sink is None:
            return 0
        saved = 0
        if self._offered is not None:  # first the part whose write raised, with exactly its bytes
            try:
                saved = self._save(*self._offered)
            except WriteConflictError:  # it is there: only this task try writes under its part names
                saved = self._advance(*self._offered)
        return saved + self._save(rows, size)

    def _save(self, rows: int, size: int) -> int:
        """
        Save the rows from the last saved one up to ``(rows, size)`` as the next part. A write that
        raised may have landed: until it is saved, that part is offered again with the same number and
        bytes (the sink's create-only write recognises it as its own; a refusal means it is there), so
        a reader joining the parts in order never sees a row twice or misses one.
        """
        assert self.part_sink is not None
        if rows <= self._saved_rows:
            return 0
        data = os.pread(self._file.fileno(), size - self._saved_size, self._saved_size)
        self._offered = rows, size
        self.part_sink(self.parts_saved + 1, data)
        return self._advance(rows, size)

    def _advance(self, rows: int, size: int) -> int:
        """The next part, holding the rows up to ``(rows, size)``, is stored."""
        self._offered = None
        self.parts_saved += 1
        saved, self._saved_rows, self._saved_size = rows - self._saved_rows, rows, size
        self._saved_at = self.clock()
        return saved

    def getvalue(self) -> bytes:
        """The whole manifest."""
        self._file.flush()
        return os.pread(self._file.fileno(), self._size, 0)

    def close(self) -> None:
        """Delete the spool file."""
        self._file.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: Rows parsed as one JSON array by :func:`read_manifest`.
_ROWS_PER_PARSE = 10_000
#: Row fields whose few values :func:`read_manifest` shares between rows.
_REPEATED = ("status", "vendor", "operation", "credits", "error_code", "account")


def read_manifest(data: bytes) -> list[dict[str, Any]]:
    """
    Parse a manifest's bytes back into rows, one per ``\\n``-ended line (:func:`iter_manifest`).

    :raises ValueError: a line is not one JSON value.
    """
    return [row for row, _ in iter_manifest(data)]


def iter_manifest(data: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """
    Each row of a manifest's bytes with its line (``\\n``-ended), one per ``\\n``-ended line: rows are
    written with ``ensure_ascii=False``, so a source name's U+2028, U+2029 or U+0085 (legal in GCS names)
    is in a row raw, and ``str.splitlines`` would split the row there.

    Lines are parsed ``_ROWS_PER_PARSE`` at a time as one JSON array, so that the rows of a parse
    share their field names' strings (a row parsed alone holds its own copies: twice the memory), and
    the values of ``_REPEATED`` are shared too; only one parse's lines are split out of ``data`` at a time.

    :raises ValueError: a line is not one JSON value.
    """
    lines = (line if line.endswith(b"\n") else line + b"\n" for line in io.BytesIO(data) if line.strip())
    start = 0
    while chunk := list(itertools.islice(lines, _ROWS_PER_PARSE)):
        parsed = json.loads(b"[" + b",".join(chunk) + b"]")
        if len(parsed) != len(chunk):  # a line holding more than one value ("{...},{...}")
            raise ValueError(f"manifest lines {start + 1}-{start + len(chunk)} hold {len(parsed)} rows")
        for row in parsed:  # the values most rows repeat held once (a million "done" strings are 50 MB)
            for key in _REPEATED if isinstance(row, dict) else ():
                if type(value := row.get(key)) is str:
                    row[key] = sys.intern(value)
        yield from zip(parsed, chunk, strict=True)
        start += len(chunk)


def manifest_part_name(manifest_name: str, part: int) -> str:
    """
    The object name of checkpoint part ``part`` of the manifest ``manifest_name``.

    :param manifest_name: the final manifest's name (``…/try-<n>.jsonl``).
    :param part: part number, from 1.
    """
    return f"{manifest_name.removesuffix('.jsonl')}.part-{part:05d}.jsonl"


_PART = re.compile(r"^(?P<manifest>.*)\.part-(?P<part>\d+)\.jsonl$")


def final_manifest_name(name: str) -> str:
    """
    The final manifest a checkpoint part belongs to (:func:`manifest_part_name`); a final manifest's
    own name for any other name.

    :param name: an object name (or URI).
    """
    match = _PART.match(name)
    return name if match is None else f"{match['manifest']}.jsonl"


def collate_manifests(objects: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """
    One ``(name, bytes)`` manifest per task try: its final manifest, or else its checkpoint parts joined
    in order under the final manifest's name.

    :param objects: ``(name or URI, bytes)`` of the ``.jsonl`` objects found.
    """
    finals: dict[str, bytes] = {}
    parts: dict[str, list[tuple[int, bytes]]] = {}
    for name, data in objects:
        match = _PART.match(name)
        if match is None:
            finals[name] = data
        else:
            parts.setdefault(f"{match['manifest']}.jsonl", []).append((int(match["part"]), data))
    joined = {name: b"".join(data for _, data in sorted(numbered)) for name, numbered in parts.items()}
    return sorted({**joined, **finals}.items())


def manifest_run_prefix(internal_prefix: str, dag_id: str, run_id: str) -> str:
    """
    The folder of one DAG run's manifests (a folder per task instance below it).

    :param internal_prefix: the provider's folder (``BatchSpec.internal_prefix``).
    :param dag_id: the DAG id.
    :param run_id: the DAG run id (each id one folder name: :func:`~.naming.folder_name`).
    """
    return f"{internal_prefix}manifests/{folder_name(dag_id)}/{folder_name(run_id)}/"


def manifest_object_name(
    internal_prefix: str, dag_id: str, run_id: str, task_id: str, map_index: int | None, try_number: int
) -> str:
    """The documented manifest path for a task instance."""
    task = folder_name(task_id if map_index is None or map_index < 0 else f"{task_id}.{map_index}")
    return f"{manifest_run_prefix(internal_prefix, dag_id, run_id)}{task}/try-{try_number}.jsonl"
