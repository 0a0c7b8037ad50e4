"""The run's one plan kept in the bucket, read by the mapped bucket tasks (docs/pipeline.md, "The plan").

The pre-flight streams its billable, settled and render-only rows into JSON Lines chunks under
:func:`plan_prefix` and returns :class:`ShardRef` descriptors (XCom), each naming a slice of every sequence;
a mapped task reads its slices and processes exactly what was priced, looking nothing up again.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from itertools import pairwise
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.pipeline.naming import folder_name
from airflow_provider_bgremoval.pipeline.planning import (
    BatchPlan,
    BatchSpec,
    OutputIdentity,
    PlannedOutcome,
    WorkItem,
)
from airflow_provider_bgremoval.pipeline.rendering import RenditionLayout, RenditionTarget
from airflow_provider_bgremoval.renditions import Rendition
from airflow_provider_bgremoval.storage.exceptions import gs_uri, split_gs_uri
from airflow_provider_bgremoval.storage.gcs import JSON_LINES_CONTENT_TYPE, GcsStorage, ObjectInfo

#: Rows per chunk object.
CHUNK_ROWS = 1000
#: At most this many rows (billable and settled) per shard unless ``max_shards`` is reached: a mapped
#: task's memory is bounded by its shard, not by the prefix.
MAX_SHARD_ROWS = 20_000
#: Billable items the writer keeps in memory as samples (e.g. for Pixian's test-mode estimate).
SAMPLES = 3
#: Airflow's default ``[core] max_map_length``.
AIRFLOW_MAX_MAP_LENGTH = 1024


def plan_prefix(
    internal_prefix: str,
    dag_id: str,
    run_id: str,
    task_id: str,
    try_number: int,
    map_index: int | None = None,
) -> str:
    """
    The folder of one planning task try's plan: each id one folder name (:func:`~.naming.folder_name`),
    so two runs never share a folder, nor two mapped instances of one task (``map-<n>/``).

    :param internal_prefix: the provider's folder (``BatchSpec.internal_prefix``).
    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    :param task_id: the planning task's id.
    :param try_number: the planning task's try.
    :param map_index: the planning task's map index (``None`` or negative: not mapped; its folder is as
        it always was).
    """
    parts = "/".join(folder_name(value) for value in (dag_id, run_id, task_id))
    mapped = "" if map_index is None or map_index < 0 else f"map-{map_index}/"
    return f"{internal_prefix}plans/{parts}/{mapped}try-{try_number}/"


def check_shard_limits(max_shards: int | None, min_shard_size: int | None) -> None:
    """
    Refuse shard limits Airflow's mapping or the split cannot honour.

    :param max_shards: at most this many shards (1 to :data:`AIRFLOW_MAX_MAP_LENGTH`; ``None``: not given).
    :param min_shard_size: fewest sources per shard (at least 1; ``None``: not given).
    """
    for name, value in (("max_shards", max_shards), ("min_shard_size", min_shard_size)):
        if value is not None and value < 1:
            raise InvalidOptionError(name, "must be at least 1")
    if max_shards is not None and max_shards > AIRFLOW_MAX_MAP_LENGTH:
        raise InvalidOptionError(
            "max_shards",
            f"must be between 1 and {AIRFLOW_MAX_MAP_LENGTH} (Airflow's default [core] max_map_length)",
        )


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """
    ``shards`` contiguous ``[start, stop)`` ranges covering ``range(count)``, sizes differing by at most 1.

    :param count: number of rows.
    :param shards: number of ranges (at least 1).
    """
    base, extra = divmod(count, shards)
    bounds = [index * base + min(index, extra) for index in range(shards + 1)]
    return list(pairwise(bounds))


@dataclass(frozen=True)
class PricedRun:
    """
    ``count`` consecutive billable items, in plan order, the pre-flight priced at ``cost`` each on one
    account (its allocation: a chain's pooled one, or one connection's cost per image).

    :param count: how many items.
    :param conn_id: the account they were priced on (``None``: on none, e.g. no account accepts them).
    :param cost: credits per item, never below what the batch reserves per image on that account (its
        unit cost): a shard's budget share is the sum, so a lower test-mode estimate would leave its last
        image pending.
    """

    count: int
    conn_id: str | None
    cost: Decimal


def priced_credits(
    pricing: Sequence[PricedRun], bounds: Sequence[tuple[int, int]]
) -> list[dict[str | None, Decimal]]:
    """
    The credits ``pricing`` placed on each range of billable items, by account, in one pass.

    :param pricing: the runs, in plan order, from item 0.
    :param bounds: contiguous ``[start, stop)`` ranges from item 0 (:func:`shard_bounds`).
    """
    placed: list[dict[str | None, Decimal]] = [{} for _ in bounds]
    shard, position = 0, 0
    for run in pricing:
        end = position + run.count
        while position < end and shard < len(bounds):
            taken = min(end, bounds[shard][1]) - position
            if taken > 0:
                credits = placed[shard]
                credits[run.conn_id] = credits.get(run.conn_id, Decimal(0)) + run.cost * taken
                position += taken
            if position >= bounds[shard][1]:
                shard += 1
        position = end
    return placed


def _tidy(credits: Decimal) -> Decimal:
    """``4.000000`` as ``4``, ``1.250000`` as ``1.25`` (never in exponent notation)."""
    return credits.quantize(Decimal(1)) if credits == credits.to_integral_value() else credits.normalize()


def _smaller(own: Decimal | None, share: Decimal | None) -> Decimal | None:
    """The smaller of two budgets (``None``: no budget)."""
    if share is None:
        return own
    return share if own is None else min(own, share)


def _span(span: tuple[int, int]) -> tuple[int, int]:
    if not 0 <= span[0] <= span[1]:
        raise ValueError(f"a [start, stop) range needs 0 <= start <= stop, got {list(span)}")
    return span


def _unset(value: Any) -> bool:
    """A descriptor field left out of the XCom: not given (``None`` or empty)."""
    return value is None or value == ()


#: ``[start, stop)`` of a sequence's rows.
Span = Annotated[tuple[int, int], AfterValidator(_span)]


class ShardRef(BaseModel):
    """
    One mapped task's share of a plan kept in the bucket (the XCom a bucket task's ``shard`` takes).

    :param plan: ``gs://`` URI of the plan folder.
    :param shard: this shard's number, from 0.
    :param shards: number of shards of the plan.
    :param items: ``[start, stop)`` of the billable items.
    :param settled: ``[start, stop)`` of the settled sources (recorded in this task's manifest).
    :param chunk_rows: rows per chunk object.
    :param source_bucket: the planned batch's source bucket.
    :param destination_bucket: the planned batch's destination bucket.
    :param destination_prefix: the planned batch's destination prefix.
    :param accepted: the ``(vendor, options hash)`` pairs the plan was made for: every account of its
        chain, the primary's first (:attr:`OutputIdentity.accepted`).
    :param overwrite: the planned batch's ``overwrite`` (its items may replace stale outputs).
    :param render: ``[start, stop)`` of the render-only items (renditions of finished masters).
    :param renditions: the planned renditions as ``(name, spec fingerprint)`` pairs, in order (``None``:
        planned without renditions).
    :param conn_ids: the connections of the chain the plan was priced for, in order (``None``: a
        descriptor written before they were kept; then only ``accepted`` is compared).
    :param max_credits: this shard's share of the run's ``max_credits``: the credits the pre-flight
        priced its billable items at (``None``: no share).
    :param max_credits_per_account: this shard's share of each account's ``max_credits_per_account``, as
        ``(conn_id, credits)`` pairs: the credits the pre-flight priced on that account among its items
        (accounts without a budget are left out).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan: Annotated[str, Field(pattern=r"^gs://[^/]+/")]
    shard: Annotated[int, Field(ge=0)]
    shards: Annotated[int, Field(ge=1)]
    items: Span
    settled: Span
    chunk_rows: Annotated[int, Field(ge=1)]
    source_bucket: str
    destination_bucket: str
    destination_prefix: str
    accepted: Annotated[tuple[tuple[str, str], ...], Field(min_length=1)]
    overwrite: bool = False
    render: Span = (0, 0)
    renditions: tuple[tuple[str, str], ...] | None = None
    # kept out of the XCom when not given: a descriptor stays as small as before
    conn_ids: Annotated[tuple[str, ...] | None, Field(exclude_if=_unset)] = None
    max_credits: Annotated[Decimal | None, Field(ge=0, exclude_if=_unset)] = None
    max_credits_per_account: Annotated[
        tuple[tuple[str, Annotated[Decimal, Field(ge=0)]], ...], Field(exclude_if=_unset)
    ] = ()

    @model_validator(mode="after")
    def _shard_of_shards(self) -> ShardRef:
        if self.shard >= self.shards:
            raise ValueError(f"shard {self.shard} of {self.shards} (shards are numbered from 0)")
        return self

    @property
    def images(self) -> int:
        """Billable images in this shard."""
        return self.items[1] - self.items[0]

    @property
    def vendor(self) -> str:
        """The vendor of the plan's primary account."""
        return self.accepted[0][0]

    def credits_within(self, own: Decimal | None) -> Decimal | None:
        """
        The task's ``max_credits`` on this shard: the smaller of its own and the shard's share.

        :param own: the bucket task's ``max_credits`` (``None``: none given).
        :raises InvalidOptionError: the task has a ``max_credits`` the plan was not priced with, and this
            shard is one of several with billable items (each mapped task would spend all of it).
        """
        if self.max_credits is None:
            self._check_unshared("max_credits", own)
        return _smaller(own, self.max_credits)

    def account_credits_within(self, conn_id: str, own: Decimal | None) -> Decimal | None:
        """
        An account's ``max_credits_per_account`` on this shard: the smaller of the task's and the share.

        :param conn_id: the account's connection id.
        :param own: the bucket task's budget for that account (``None``: none given).
        :raises InvalidOptionError: as :meth:`credits_within`, for that account's budget.
        """
        shares = dict(self.max_credits_per_account)
        if conn_id not in shares:
            self._check_unshared(f"max_credits_per_account[{conn_id!r}]", own)
        return _smaller(own, shares.get(conn_id))

    def _check_unshared(self, parameter: str, own: Decimal | None) -> None:
        """
        Refuse a budget of the bucket task's that the plan carries no share of, when several shards have
        billable items: every mapped task would take the whole budget (the run would spend it per shard).
        """
        if own is None or self.shards < 2 or not self.images:
            return
        raise InvalidOptionError(
            parameter,
            f"this task has a budget of {_tidy(own)} credits but shard {self.shard + 1} of {self.shards} "
            "carries no share of it (the pre-flight was given none), so every mapped task would spend up "
            f"to {_tidy(own)}; give the pre-flight the bucket task's {parameter.partition('[')[0]}",
        )

    def check_matches(
        self, spec: BatchSpec, identity: OutputIdentity, conn_ids: Sequence[str] | None = None
    ) -> None:
        """
        Raise :class:`InvalidOptionError` unless the plan was made for this batch (buckets, destination
        prefix, overwrite, every account's vendor and options, and the connections, in chain order),
        naming what differs.

        :param spec: the bucket task's batch spec.
        :param identity: the bucket task's output identity (its chain's vendors and options hashes).
        :param conn_ids: the bucket task's connections in chain order, compared when the shard names its
            own (two accounts of one vendor share an identity, not a balance).
        """
        compared = None if conn_ids is None or self.conn_ids is None else tuple(conn_ids)
        wanted = _batch_facts(spec, identity.accepted, compared)
        planned = _batch_facts(self, self.accepted, None if compared is None else self.conn_ids)
        differ = [
            f"{key} {planned[key]!r} (this task: {wanted[key]!r})"
            for key in wanted
            if planned[key] != wanted[key]
        ]
        if differ:
            raise InvalidOptionError(
                "shard",
                f"the shard was planned for another batch: {'; '.join(differ)}; "
                "give the pre-flight the bucket task's parameters",
            )


#: The batch a plan was made for, besides its accounts (kept in every :class:`ShardRef`).
_BATCH_KEYS = ("source_bucket", "destination_bucket", "destination_prefix", "overwrite")


def _batch_facts(
    batch: BatchSpec | ShardRef,
    accepted: tuple[tuple[str, str], ...],
    conn_ids: tuple[str, ...] | None,
) -> dict[str, Any]:
    """What :meth:`ShardRef.check_matches` compares, in the order its message names them."""
    return {
        **{key: getattr(batch, key) for key in _BATCH_KEYS},
        "vendors": [vendor for vendor, _ in accepted],
        "options": [fingerprint for _, fingerprint in accepted],
        **({} if conn_ids is None else {"conn_id": list(conn_ids)}),
    }


#: The fields of a source in a row, in the order written (with ``bucket`` and ``metadata``: an object's).
_SOURCE_FIELDS = ("name", "generation", "size", "content_type", "md5_hash", "crc32c")


def _object_row(info: ObjectInfo | None) -> dict[str, Any] | None:
    """A master, a rendition or a record as found at planning (its metadata is what is judged)."""
    if info is None:
        return None
    return {"bucket": info.bucket, **_source_row(info), "metadata": info.metadata}


def _object(row: dict[str, Any] | None) -> ObjectInfo | None:
    return None if row is None else ObjectInfo(**row)


def _target_row(target: RenditionTarget) -> dict[str, Any]:
    row = {each.name: getattr(target, each.name) for each in fields(target)}
    objects = {"existing": _object_row(target.existing), "record": _object_row(target.record)}
    return {**row, "rendition": target.rendition.name, **objects}


def _source_row(info: ObjectInfo) -> dict[str, Any]:
    return {key: getattr(info, key) for key in _SOURCE_FIELDS}


def _item_row(item: WorkItem) -> dict[str, Any]:
    return {
        **_source_row(item.source),
        "destination": item.destination,
        "replace_generation": item.replace_generation,
        "fully_checked": item.fully_checked,
        "master": _object_row(item.master),
        "renditions": [_target_row(target) for target in item.renditions],
    }


def _settled_row(outcome: PlannedOutcome) -> dict[str, Any]:
    return {
        **_source_row(outcome.source),
        "destination": outcome.destination,
        "status": outcome.status,
        "code": outcome.code,
        "message": outcome.message,
        "extra": dict(outcome.extra) if outcome.extra is not None else None,
    }


def _source(bucket: str, row: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(bucket=bucket, **{key: row[key] for key in _SOURCE_FIELDS})


@dataclass(eq=False)
class _ChunkStream:
    """One sequence of chunk objects (``items-000000.jsonl``…), written as rows arrive."""

    write: Callable[[str, bytes], None]
    kind: str
    rows: int = 0
    _buffer: list[bytes] = field(default_factory=list)

    def append(self, row: dict[str, Any]) -> None:
        self._buffer.append(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        self.rows += 1
        if len(self._buffer) == CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.write(chunk_name(self.kind, (self.rows - 1) // CHUNK_ROWS), b"".join(self._buffer))
            self._buffer.clear()


def chunk_name(kind: str, number: int) -> str:
    """
    The name of chunk ``number`` of sequence ``kind`` (``items`` or ``settled``) inside a plan folder.

    :param kind: ``items`` or ``settled``.
    :param number: chunk number, from 0.
    """
    return f"{kind}-{number:06d}.jsonl"


@dataclass(eq=False)
class PlanWriter:
    """
    A :class:`~airflow_provider_bgremoval.pipeline.planning.PlanSink` that keeps the plan in the bucket.

    Memory holds one chunk per sequence, a few samples and one flag per billable item (header-only or not).

    :param storage: the GCS storage.
    :param spec: the planned batch.
    :param prefix: the plan folder (:func:`plan_prefix`).
    :param identity: the outputs planned for (every account's vendor and options hash).
    :param checked: the local checks run (else every unfinished source is billable, unchecked).
    :param renditions: the renditions planned (``None``: one output per source); the shards name their
        fingerprints, so a bucket task with other renditions refuses them.
    :param conn_ids: the connections of the chain planned for, in order (the shards name them, so a
        bucket task with another chain refuses them; ``None``: not named).
    """

    storage: GcsStorage
    spec: BatchSpec
    prefix: str
    identity: OutputIdentity
    checked: bool = True
    renditions: RenditionLayout | None = None
    conn_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self._items = _ChunkStream(self._write, "items")
        self._settled = _ChunkStream(self._write, "settled")
        self._render = _ChunkStream(self._write, "render")
        self._header_only = bytearray()
        self._accepted: list[int | None] | None = None  # only once an item names its accounts
        self._kinds: Counter[str] = Counter()
        self._samples: list[WorkItem] = []

    def _write(self, name: str, data: bytes) -> None:
        self.storage.write(
            self.spec.destination_bucket,
            self.prefix + name,
            data,
            content_type=JSON_LINES_CONTENT_TYPE,
            idempotency_token=f"plan:{self.prefix}{name}",
        )

    def add(self, item: WorkItem) -> None:
        """Record a billable item."""
        self._items.append(_item_row(item))
        if item.accepted is not None and self._accepted is None:
            self._accepted = [None] * len(self._header_only)
        if self._accepted is not None:
            self._accepted.append(item.accepted)
        self._header_only.append(not item.fully_checked)
        if len(self._samples) < SAMPLES:
            self._samples.append(item)

    def add_render(self, item: WorkItem) -> None:
        """Record a render-only item (a finished master, renditions to make: 0 credits)."""
        self._render.append(_item_row(item))

    @property
    def render_only(self) -> int:
        """Number of render-only items."""
        return self._render.rows

    def settle(self, outcome: PlannedOutcome) -> None:
        """Record a source settled during planning."""
        self._settled.append(_settled_row(outcome))
        self._kinds[outcome.kind] += 1

    @property
    def billable(self) -> int:
        """Number of billable items."""
        return self._items.rows

    @property
    def total(self) -> int:
        """Number of sources."""
        return self._items.rows + self._settled.rows + self._render.rows

    def count_kind(self, kind: str) -> int:
        """Number of settled sources of ``kind`` (:attr:`~.planning.PlannedOutcome.kind`)."""
        return self._kinds[kind]

    def header_only_among(self, first: int) -> int:
        """How many of the first ``first`` billable items were checked by header only."""
        return sum(self._header_only[: max(0, first)])

    def accepted_among(self, first: int) -> list[int | None]:
        """The accounts taking each of the first ``first`` billable items (``WorkItem.accepted``)."""
        first = min(max(0, first), len(self._header_only))
        return [None] * first if self._accepted is None else self._accepted[:first]

    def samples(self, count: int) -> list[WorkItem]:
        """The first ``count`` (at most :data:`SAMPLES`) billable items."""
        return self._samples[:count]

    def finish(
        self,
        *,
        max_shards: int,
        min_shard_size: int,
        max_items: int | None = None,
        max_credits: Decimal | None = None,
        account_credits: Mapping[str, Decimal | None] | None = None,
        pricing: Sequence[PricedRun] = (),
    ) -> list[ShardRef]:
        """
        Store the last chunks and split the plan into shards of at least ``min_shard_size`` sources (at
        most :data:`MAX_SHARD_ROWS` unless ``max_shards`` is reached), billable items spread evenly.

        :param max_shards: at most this many shards.
        :param min_shard_size: fewest sources per shard (unless there are fewer).
        :param max_items: only the first this many billable items go into shards (the run's budget:
            ``max_images`` / ``max_credits`` apply to the run, not once per shard); the rest wait for a
            later run.
        :param max_credits: the run's ``max_credits``: each shard's share is what ``pricing`` placed on
            its items, so the mapped tasks together never spend more than the pre-flight priced.
        :param account_credits: each account's ``max_credits_per_account`` by ``conn_id`` (``None``: no
            budget): each shard's share is what ``pricing`` placed on its items on that account.
        :param pricing: how the pre-flight priced the billable items going into shards (all of them,
            in plan order), needed with a budget.
        """
        check_shard_limits(max_shards, min_shard_size)
        for stream in (self._items, self._settled, self._render):
            stream.flush()
        billable = self.billable if max_items is None else min(self.billable, max_items)
        total = billable + self._settled.rows + self._render.rows
        if not total:
            return []
        wanted = max(total // min_shard_size, math.ceil(total / MAX_SHARD_ROWS), 1)
        count = min(max_shards, wanted)
        plan = gs_uri(self.spec.destination_bucket, self.prefix)
        # billable items spread evenly, and the settled sources so that every shard has its share of sources;
        # render-only items (free, never bounded by the budget) spread evenly too
        items = shard_bounds(billable, count)
        totals = shard_bounds(billable + self._settled.rows, count)
        renders = shard_bounds(self._render.rows, count)
        planned = {
            "accepted": self.identity.accepted,
            "renditions": _fingerprints(self.renditions),
            "conn_ids": self.conn_ids,
            **{key: getattr(self.spec, key) for key in _BATCH_KEYS},
        }
        shares = _shares(items, pricing, max_credits, account_credits or {})
        shards = zip(items, totals, renders, shares, strict=True)
        return [
            ShardRef(
                plan=plan,
                shard=number,
                shards=count,
                items=part,
                settled=(start - part[0], stop - part[1]),
                chunk_rows=CHUNK_ROWS,
                render=render,
                **planned,
                **share,
            )
            for number, (part, (start, stop), render, share) in enumerate(shards)
        ]


def _shares(
    items: list[tuple[int, int]],
    pricing: Sequence[PricedRun],
    max_credits: Decimal | None,
    account_credits: Mapping[str, Decimal | None],
) -> list[dict[str, Any]]:
    """
    Each shard's :class:`ShardRef` budget fields (:meth:`PlanWriter.finish`; no billable item: none): the
    credits ``pricing`` placed on its items, at the cost the batch reserves per image (:class:`PricedRun`).
    """
    budgeted = [conn for conn, budget in account_credits.items() if budget is not None]
    if max_credits is None and not budgeted:
        return [{} for _ in items]
    priced, held = sum(run.count for run in pricing), items[-1][1] if items else 0
    if priced != held:
        raise ValueError(f"the pricing covers {priced} billable item(s), the shards hold {held}")
    return [
        {
            "max_credits": _tidy(sum(placed.values(), Decimal(0))) if max_credits is not None else None,
            "max_credits_per_account": tuple(
                (conn, _tidy(placed.get(conn, Decimal(0)))) for conn in budgeted
            ),
        }
        if stop > start
        else {}
        for (start, stop), placed in zip(items, priced_credits(pricing, items), strict=True)
    ]


def _rows(storage: GcsStorage, shard: ShardRef, kind: str, span: tuple[int, int]) -> Iterator[dict[str, Any]]:
    """The rows ``[start, stop)`` of one sequence, reading only the chunks they lie in."""
    start, stop = span
    if start >= stop:
        return
    bucket, prefix = split_gs_uri(shard.plan)
    for number in range(start // shard.chunk_rows, (stop - 1) // shard.chunk_rows + 1):
        name = prefix + chunk_name(kind, number)
        lines = storage.read(bucket, name).splitlines()
        first = number * shard.chunk_rows
        needed = min(stop, first + shard.chunk_rows) - first
        if len(lines) < needed:  # a chunk holds chunk_rows rows but the last: this one was not the writer's
            raise _changed(bucket, name, f"holds {len(lines)} row(s), the shard needs {needed}")
        for offset, line in enumerate(lines):
            if start <= first + offset < stop:
                try:
                    row = json.loads(line)
                except ValueError:
                    raise _changed(bucket, name, f"row {first + offset} is not JSON") from None
                yield row


def _changed(bucket: str, name: str, what: str) -> InvalidOptionError:
    """A chunk that is not what the pre-flight wrote (checksum-verified reads: a retry reads it again)."""
    return InvalidOptionError(
        "shard",
        f"{gs_uri(bucket, name)} {what}: the plan was changed after the pre-flight wrote it; "
        "run the pre-flight again",
    )


def read_shard(
    storage: GcsStorage, spec: BatchSpec, shard: ShardRef, layout: RenditionLayout | None = None
) -> BatchPlan:
    """
    The shard's part of the plan, as the :class:`BatchPlan` a bucket task runs.

    :param storage: the GCS storage.
    :param spec: the bucket task's batch spec (checked against the plan's by the caller).
    :param shard: the shard descriptor.
    :param layout: the bucket task's renditions (refused unless the plan was made for the same ones).
    """
    renditions = _check_renditions(shard, layout)
    plan = BatchPlan(spec=spec, layout=layout)
    for row in _rows(storage, shard, "items", shard.items):
        plan.add(_work_item(spec, row, renditions))
    for row in _rows(storage, shard, "render", shard.render):
        plan.add_render(_work_item(spec, row, renditions))
    for row in _rows(storage, shard, "settled", shard.settled):
        texts = (row["destination"], row["status"], row["code"], row["message"])
        plan.settle(PlannedOutcome(_source(spec.source_bucket, row), *texts, row.get("extra")))
    return plan


def _fingerprints(layout: RenditionLayout | None) -> tuple[tuple[str, str], ...] | None:
    return None if layout is None else tuple((r.name, r.fingerprint) for r in layout.renditions)


def _check_renditions(shard: ShardRef, layout: RenditionLayout | None) -> dict[str, Rendition]:
    """The bucket task's renditions by name, when they are the plan's (same names, same fingerprints)."""
    if _fingerprints(layout) != shard.renditions:
        planned = ", ".join(name for name, _ in shard.renditions or ())
        raise InvalidOptionError(
            "shard",
            f"the shard was planned with other renditions ({planned or 'none'}, or other specs); "
            "give the pre-flight the bucket task's renditions",
        )
    return {} if layout is None else {rendition.name: rendition for rendition in layout.renditions}


def _work_item(spec: BatchSpec, row: dict[str, Any], renditions: dict[str, Rendition]) -> WorkItem:
    targets = tuple(
        RenditionTarget(
            **{
                **target,
                "rendition": renditions[target["rendition"]],
                "existing": _object(target["existing"]),
                "record": _object(target["record"]),
            }
        )
        for target in row.get("renditions") or ()
    )
    return WorkItem(
        _source(spec.source_bucket, row),
        row["destination"],
        row["replace_generation"],
        row["fully_checked"],
        master=_object(row.get("master")),
        renditions=targets,
    )
