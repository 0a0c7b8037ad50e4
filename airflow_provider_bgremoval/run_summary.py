"""What one DAG run did, folded from the manifests its bucket tasks wrote (usable outside Airflow)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from airflow_provider_bgremoval.pipeline.manifest import STATUSES, collate_manifests, read_manifest


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
    :param rows: the final row of each source (manifest row dicts).
    :param accounts: per vendor connection, in order of first appearance: ``conn_id``, ``vendor``,
        ``done`` (final rows); over every try: ``images`` (rows it took the last call of),
        ``credits_spent``, ``possibly_charged`` (a handoff's lost replies on the account that handed the
        image on, the rest on the row's ``account``) and ``handed_on`` (by reason; docs/pipeline.md).
    :param possibly_charged: replies lost and possibly charged over every try (every row's).
    :param max_charge: per vendor connection, the largest charge one of its rows records.
    """

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    credits_spent: Decimal = Decimal(0)
    manifests: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    possibly_charged: int = 0
    max_charge: dict[str, Decimal] = field(default_factory=dict)

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
        The final rows with ``status``.

        :param status: one of :data:`~airflow_provider_bgremoval.pipeline.manifest.STATUSES`.
        """
        return [row for row in self.rows if row["status"] == status]


def summarise_manifests(manifests: Iterable[tuple[str, bytes]]) -> RunSummary:
    """
    Fold the manifests of one DAG run into a :class:`RunSummary` (a source's row is its latest try's,
    but a ``done`` row stands over a later try's ``skipped`` or ``pending`` one).

    :param manifests: ``(uri, bytes)`` of the manifest objects (``try-<n>.jsonl``), checkpoint parts included.
    """
    summary = RunSummary()
    latest: dict[str, dict[str, Any]] = {}
    done: dict[str, dict[str, Any]] = {}
    collated = sorted(collate_manifests(manifests), key=lambda item: _read_order(item[0]))
    collated.reverse()
    while collated:  # in try order; each manifest's bytes are let go once read: only the rows are kept
        uri, data = collated.pop()
        summary.manifests.append(uri)
        rows, data = read_manifest(data), b""
        for row in rows:
            summary.credits_spent += _decimal(row.get("credits"))
            summary._note_accounts(row)
            latest[row["source"]] = row
            if row["status"] == "done":
                done[row["source"]] = row
    for source, row in sorted(latest.items()):
        chosen = done.get(source, row) if row["status"] in _NOT_PROCESSED else row
        summary.rows.append(chosen)
        summary.counts[chosen["status"]] = summary.counts.get(chosen["status"], 0) + 1
        if chosen["status"] == "done" and chosen.get("account"):
            summary._account(chosen["account"], chosen.get("vendor"))["done"] += 1
    return summary
