"""The per-task-instance manifest: one JSON line per source, spooled to a temporary file.

Rows are written to disk as they are produced, so a batch of 100,000 sources does not hold its
manifest in memory; the file is uploaded create-only to the destination bucket when the batch ends.

Path: ``<destination_prefix>_bgremoval/manifests/<dag_id>/<run_id>/<task_id>[.<map_index>]/try-<n>.jsonl``.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from typing import IO, Any

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
    :param vendor: vendor name.
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

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown manifest status {self.status!r}")


class ManifestWriter:
    """Spools :class:`ManifestRow` objects as JSON lines and counts them by status."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="bgremoval-manifest-")  # noqa: SIM115 - closed by close()
        self.counts: Counter[str] = Counter()

    def add(self, row: ManifestRow) -> None:
        """Append one row."""
        self._file.write(json.dumps(asdict(row), separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        self.counts[row.status] += 1

    def getvalue(self) -> bytes:
        """The whole manifest."""
        self._file.flush()
        self._file.seek(0)
        data = self._file.read()
        self._file.seek(0, 2)
        return data

    def close(self) -> None:
        """Delete the spool file."""
        self._file.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_manifest(data: bytes) -> list[dict[str, Any]]:
    """Parse a manifest's bytes back into rows."""
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def manifest_object_name(
    internal_prefix: str, dag_id: str, run_id: str, task_id: str, map_index: int | None, try_number: int
) -> str:
    """The documented manifest path for a task instance."""
    safe_run = run_id.replace("/", "_")
    task = task_id if map_index is None or map_index < 0 else f"{task_id}.{map_index}"
    return f"{internal_prefix}manifests/{dag_id}/{safe_run}/{task}/try-{try_number}.jsonl"
