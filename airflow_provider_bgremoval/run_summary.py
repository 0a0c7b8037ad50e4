"""What one DAG run did, folded from the manifests its bucket tasks wrote (usable outside Airflow)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from airflow_provider_bgremoval.pipeline.manifest import (
    STATUSES,
    collate_manifests,
    final_manifest_name,
    iter_manifest,
    read_manifest,
)


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except (InvalidOperation, ValueError):
        return Decimal(0)


def _count(value: Any) -> int:
    """A row's count field as a number (absent or unreadable: 0)."""
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


#: Statuses of a later try that did nothing with a source: an earlier try's ``done`` row stands (a retry
#: skips what an earlier try made, or leaves it pending when it stops before reaching it: a budget the
#: earlier try spent, a halt, an interrupt).
_NOT_PROCESSED = frozenset({"skipped", "pending"})
#: The end of a task try's final manifest's name (its checkpoint parts end ``try-<n>.part-<k>.jsonl``).
_FINAL = re.compile(r"try-(\d+)\.jsonl$")
#: What separates a checkpoint part's name from its final manifest's stem (``manifest_part_name``).
_PART_MARK = ".part-"


def _try_number(name: str) -> int:
    match = _FINAL.search(name)
    return int(match.group(1)) if match else 0


def _read_order(name: str) -> tuple[int, list[str | int]]:
    """
    When a manifest is folded: by try number, then by name with its numbers compared as numbers, so
    that shard ``task.10`` comes after ``task.2``: a cleared run whose plan grew to more shards runs its
    new shards' first tries after the old shards' first tries (a source moved to shard 10 then has its
    try-1 row after the one shard 2 wrote, by name it came before).
    """
    parts = re.split(r"(\d+)", name)
    return _try_number(name), [int(part) if index % 2 else part for index, part in enumerate(parts)]


def manifests_to_read(names: Iterable[str]) -> list[str]:
    """
    Of the ``.jsonl`` names listed in a run's manifest folder, those :func:`summarise_manifests` needs:
    each task try's final manifest, or its checkpoint parts when it has none (a try stopped before
    storing it); the parts of a try whose final manifest exists hold nothing more and are not read.

    :param names: object names (or URIs), in any order; other names are dropped.
    """
    listed = [name for name in names if name.endswith(".jsonl")]
    finals = {name for name in listed if _FINAL.search(name)}
    return [
        name for name in listed if name in finals or f"{name.rpartition(_PART_MARK)[0]}.jsonl" not in finals
    ]


@dataclass
class RunSummary:
    """
    What one DAG run did, from its manifests.

    :param counts: sources by final status (``done`` wins over a later ``skipped`` or ``pending`` of the
        same run: that later try did not process the source).
    :param credits_spent: credits charged over every try of the run.
    :param manifests: ``gs://`` URIs of the manifests read.
    :param rows: the final row of each source (manifest row dicts), in source name order; when
        :attr:`kept` is set, only the first :attr:`kept` of each status (:attr:`counts` stays exact).
    :param accounts: per vendor connection, in order of first appearance: ``conn_id``, ``vendor``,
        ``done`` (final rows); over every try: ``images`` (rows it took the last call of),
        ``credits_spent``, ``possibly_charged`` (a handoff's lost replies on the account that handed the
        image on, the rest on the row's ``account``) and ``handed_on`` (by reason; docs/pipeline.md).
    :param possibly_charged: replies lost and possibly charged over every try (every row's).
    :param max_charge: per vendor connection, the largest charge one of its rows records.
    :param vendors: the vendors of the final rows, sorted (every source's, whatever :attr:`kept` is).
    :param kept: the most rows :attr:`rows` holds per status (``None``: every row).
    """

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    credits_spent: Decimal = Decimal(0)
    manifests: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    possibly_charged: int = 0
    max_charge: dict[str, Decimal] = field(default_factory=dict)
    vendors: list[str] = field(default_factory=list)
    kept: int | None = None

    def _account(self, conn_id: str, vendor: Any) -> dict[str, Any]:
        return self.accounts.setdefault(
            conn_id,
            {
                "conn_id": conn_id,
                "vendor": vendor,
                "done": 0,
                "images": 0,
                "credits_spent": Decimal(0),
                "possibly_charged": 0,
                "handed_on": {},
            },
        )

    def _note_accounts(self, row: dict[str, Any]) -> None:
        """One row on its account (an image, credits, lost replies) and on the accounts that handed it on."""
        own = self._account(row["account"], row.get("vendor")) if row.get("account") else None
        lost = _count(row.get("possibly_charged"))
        self.possibly_charged += lost
        for handoff in row.get("handoffs") or ():
            entry = self._account(str(handoff.get("account")), handoff.get("vendor"))
            reason = handoff.get("reason")
            entry["handed_on"][reason] = entry["handed_on"].get(reason, 0) + 1
            share = min(_count(handoff.get("possibly_charged")), lost)
            entry["possibly_charged"] += share
            lost -= share
        if own is not None:
            charged = _decimal(row.get("credits"))
            own["images"] += 1
            own["credits_spent"] += charged
            own["possibly_charged"] += lost
            self.max_charge[row["account"]] = max(self.max_charge.get(row["account"], Decimal(0)), charged)

    def account_summary(self) -> list[dict[str, Any]]:
        """:attr:`accounts` in primitive form (credits as text)."""
        return [entry | {"credits_spent": str(entry["credits_spent"])} for entry in self.accounts.values()]

    def by_status(self, status: str) -> list[dict[str, Any]]:
        """
        The final rows with ``status`` (with :attr:`kept`, the first of them: ``counts[status]`` says
        how many there are).

        :param status: one of :data:`~airflow_provider_bgremoval.pipeline.manifest.STATUSES`.
        """
        return [row for row in self.rows if row["status"] == status]


#: The final-row store's page cache in KiB (:class:`_FinalRows`): what folding a run holds in memory
#: beyond one manifest, whatever its number of sources.
_CACHE_KIB = 8192
_PLACES = ", ".join(f"'{status}'" for status in sorted(_NOT_PROCESSED))
#: Each source's latest row (``line``: its row id in ``line``) and, when that is not ``done``, its
#: latest ``done`` row (``done_*``); ``chosen`` is its final row (:func:`summarise_manifests`).
_SCHEMA = f"""
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
PRAGMA cache_size = -{_CACHE_KIB};
CREATE TABLE line (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE final (
    source TEXT PRIMARY KEY, status TEXT NOT NULL, account, vendor, line INTEGER NOT NULL,
    done_account, done_vendor, done_line INTEGER
) WITHOUT ROWID;
CREATE VIEW chosen AS SELECT
    source,
    CASE WHEN stands THEN 'done' ELSE status END AS status,
    CASE WHEN stands THEN done_account ELSE account END AS account,
    CASE WHEN stands THEN done_vendor ELSE vendor END AS vendor,
    CASE WHEN stands THEN done_line ELSE line END AS line
FROM (SELECT *, status IN ({_PLACES}) AND done_line IS NOT NULL AS stands FROM final);
"""
_UPSERT = """
INSERT INTO final (source, status, account, vendor, line) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (source) DO UPDATE SET
    done_account = CASE WHEN excluded.status = 'done' THEN NULL WHEN status = 'done' THEN account
        ELSE done_account END,
    done_vendor = CASE WHEN excluded.status = 'done' THEN NULL WHEN status = 'done' THEN vendor
        ELSE done_vendor END,
    done_line = CASE WHEN excluded.status = 'done' THEN NULL WHEN status = 'done' THEN line
        ELSE done_line END,
    status = excluded.status, account = excluded.account, vendor = excluded.vendor, line = excluded.line
"""
#: The final rows, the first ``?`` of each status by source name, in source name order.
_KEPT = """
SELECT data FROM (
    SELECT source, line, row_number() OVER (PARTITION BY status ORDER BY source) AS place FROM chosen
) AS kept JOIN line ON line.id = kept.line WHERE place <= ? ORDER BY source
"""
#: Rows stored, and kept rows parsed (as :func:`.read_manifest` parses them: sharing their keys), at once.
_ROWS_PER_BATCH = 10_000


def _scalar(value: Any) -> Any:
    """A row's ``account`` or ``vendor`` as stored: ``None`` when absent, empty or not a plain value."""
    return value if value and isinstance(value, (str, int, float)) else None


class _FinalRows:
    """
    Each source's final row over the tries folded so far, in a temporary SQLite database (a file the
    connection deletes when closed): memory stays at its page cache (:data:`_CACHE_KIB`), whatever the
    number of sources; the disk holds every row read once.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("")
        self._db.executescript(_SCHEMA)
        self._lines = 0
        self._keys: list[tuple[str, str, Any, Any, int]] = []  # waiting to be stored, with their lines
        self._waiting: list[tuple[int, bytes]] = []

    def add(self, row: dict[str, Any], line: bytes) -> None:
        """
        A row of a later try than the rows added before (or of the same try), with its line.

        :raises TypeError: its ``source`` or ``status`` is not text.
        """
        source, status = row["source"], row["status"]
        if not isinstance(source, str) or not isinstance(status, str):
            raise TypeError(f"a manifest row's source and status must be text: {type(source).__name__}")
        self._keys.append(
            (source, status, _scalar(row.get("account")), _scalar(row.get("vendor")), self._lines)
        )
        self._waiting.append((self._lines, line))
        self._lines += 1
        if len(self._waiting) >= _ROWS_PER_BATCH:
            self.store()

    def store(self) -> None:
        """Store the rows waiting (at the latest every ``_ROWS_PER_BATCH`` rows)."""
        self._db.executemany("INSERT INTO line VALUES (?, ?)", self._waiting)
        self._db.executemany(_UPSERT, self._keys)
        self._keys, self._waiting = [], []

    def fill(self, summary: RunSummary, keep: int | None) -> None:
        """Put the final rows' counts, ``done`` per account, vendors and kept rows on ``summary``."""
        self.store()
        for status, count in self._db.execute("SELECT status, count(*) FROM chosen GROUP BY status"):
            summary.counts[status] = summary.counts.get(status, 0) + count
        done = "SELECT account, count(*) FROM chosen WHERE status = 'done' AND account IS NOT NULL GROUP BY 1"
        for account, count in self._db.execute(done):
            summary._account(account, None)["done"] += count  # made by _note_accounts, with its vendor
        vendors = self._db.execute("SELECT DISTINCT vendor FROM chosen WHERE vendor IS NOT NULL")
        summary.vendors = sorted({str(vendor) for (vendor,) in vendors})
        cursor = self._db.execute(_KEPT, (self._lines if keep is None else keep,))
        while batch := cursor.fetchmany(_ROWS_PER_BATCH):
            summary.rows += read_manifest(b"".join(data for (data,) in batch))

    def close(self) -> None:
        """Delete the database."""
        self._db.close()


def summarise_manifests(manifests: Iterable[tuple[str, bytes]], *, keep: int | None = None) -> RunSummary:
    """
    Fold the manifests of one DAG run into a :class:`RunSummary` (a source's row is its latest try's,
    but a ``done`` row stands over a later try's ``skipped`` or ``pending`` one).

    Every manifest's bytes are taken at once: for a run's stored manifests, :func:`summarise_stored`
    reads one at a time.

    :param manifests: ``(uri, bytes)`` of the manifest objects (``try-<n>.jsonl``), checkpoint parts included.
    :param keep: the most final rows of each status to keep (:attr:`RunSummary.rows`); ``None``: all.
    """
    collated = dict(collate_manifests(manifests))
    return _summarise({name: [name] for name in collated}, collated.pop, keep)


def summarise_stored(
    names: Iterable[str], read: Callable[[str], bytes], *, keep: int | None = None
) -> RunSummary:
    """
    :func:`summarise_manifests` over the manifests listed in a run's manifest folder, each read when it
    is folded and let go before the next (:func:`manifests_to_read` says which are).

    :param names: the URIs listed (of any object: those not to read are dropped).
    :param read: reads a URI's bytes.
    :param keep: the most final rows of each status to keep (:attr:`RunSummary.rows`); ``None``: all.
    """
    tries: dict[str, list[str]] = {}
    for name in manifests_to_read(names):
        tries.setdefault(final_manifest_name(name), []).append(name)
    return _summarise({final: sorted(parts, key=_read_order) for final, parts in tries.items()}, read, keep)


def _summarise(tries: dict[str, list[str]], read: Callable[[str], bytes], keep: int | None) -> RunSummary:
    """
    Fold the tries in :func:`_read_order`, each from its objects read in order: its final manifest, or
    its checkpoint parts.

    :param tries: per try, its final manifest's URI and the URIs of the objects holding its rows.
    """
    summary, final = RunSummary(kept=keep), _FinalRows()
    try:
        for uri in sorted(tries, key=_read_order):
            summary.manifests.append(uri)
            for name in tries[uri]:
                _fold(summary, final, read(name))
        final.fill(summary, keep)
    finally:
        final.close()
    return summary


def _fold(summary: RunSummary, final: _FinalRows, data: bytes) -> None:
    """One manifest's rows: credits and accounts over every try, and each source's latest row."""
    for row, line in iter_manifest(data):
        summary.credits_spent += _decimal(row.get("credits"))
        summary._note_accounts(row)
        final.add(row, line)
    final.store()  # before the next manifest is read: its lines are not held with it
