"""The run's one plan kept in the bucket: chunks, shards, reading a shard back, and its descriptor.

The storage is the in-memory stand-in of :mod:`tests.support.memory_storage`, which counts every
request and records every object read, so a shard is shown to read only the chunks its ranges touch.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from pydantic import ValidationError

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.pipeline.plan_store import (
    AIRFLOW_MAX_MAP_LENGTH,
    CHUNK_ROWS,
    MAX_SHARD_ROWS,
    SAMPLES,
    PlanWriter,
    PricedRun,
    ShardRef,
    chunk_name,
    plan_prefix,
    priced_credits,
    read_shard,
    shard_bounds,
)
from airflow_provider_bgremoval.pipeline.planning import (
    SETTLED_KINDS,
    BatchPlan,
    BatchSpec,
    OutputIdentity,
    PlannedOutcome,
    WorkItem,
)
from airflow_provider_bgremoval.pipeline.rendering import RenditionLayout, RenditionTarget
from airflow_provider_bgremoval.renditions import parse_renditions
from airflow_provider_bgremoval.storage.gcs import JSON_LINES_CONTENT_TYPE, ObjectInfo
from tests.support.memory_storage import MemoryStorage

SPEC = BatchSpec(
    source_bucket="raw", destination_bucket="out", source_prefix="in/", destination_prefix="cut/"
)
PREFIX = plan_prefix(SPEC.internal_prefix, "dag", "manual__2026-12-01T10:00:00+00:00", "check", 1)
PLAN_URI = f"gs://out/{PREFIX}"
POOF = OutputIdentity((("poof", "fp"),))


def _source(number: int, **fields: Any) -> ObjectInfo:
    return ObjectInfo(
        bucket="raw", name=f"in/{number:06d}.jpg", generation=10_000 + number, size=number, **fields
    )


def _item(number: int) -> WorkItem:
    return WorkItem(_source(number), f"cut/{number:06d}.png")


def _done(number: int) -> PlannedOutcome:
    return PlannedOutcome(_source(number), f"cut/{number:06d}.png", "skipped", "already_done", "done")


def _writer(storage: MemoryStorage, spec: BatchSpec = SPEC) -> PlanWriter:
    return PlanWriter(storage, spec, PREFIX, POOF)  # type: ignore[arg-type]


def _written(items: int, settled: int) -> tuple[MemoryStorage, PlanWriter]:
    """A writer that received ``items`` billable items and ``settled`` settled sources, interleaved."""
    storage = MemoryStorage()
    writer = _writer(storage)
    for number in range(max(items, settled)):
        if number < items:
            writer.add(_item(number))
        if number < settled:
            writer.settle(_done(1_000_000 + number))
    return storage, writer


def _read_all(storage: MemoryStorage, refs: list[ShardRef]) -> list[BatchPlan]:
    return [read_shard(storage, SPEC, ref) for ref in refs]  # type: ignore[arg-type]


# -- chunks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [0, 1, 999, 1000, 1001, 2500])
def test_rows_are_stored_in_chunks_of_chunk_rows(rows: int) -> None:
    storage, writer = _written(rows, rows // 2)
    writes_before_finish = storage.requests["write"]
    assert writes_before_finish == rows // CHUNK_ROWS + (rows // 2) // CHUNK_ROWS  # full chunks go at once
    refs = writer.finish(max_shards=1, min_shard_size=1)

    items = [n for n in storage.names("out", PREFIX) if n.removeprefix(PREFIX).startswith("items-")]
    settled = [n for n in storage.names("out", PREFIX) if n.removeprefix(PREFIX).startswith("settled-")]
    assert items == [PREFIX + chunk_name("items", k) for k in range(math.ceil(rows / CHUNK_ROWS))]
    assert settled == [PREFIX + chunk_name("settled", k) for k in range(math.ceil(rows // 2 / CHUNK_ROWS))]
    assert storage.requests == ({"write": len(items) + len(settled)} if rows else {})
    for name in items:
        lines = storage.buckets["out"][name].data.splitlines()
        last = name == items[-1]
        assert len(lines) == (rows - CHUNK_ROWS * (len(items) - 1) if last else CHUNK_ROWS)
    if not rows:
        assert refs == []
        return
    [ref] = refs
    assert (ref.items, ref.settled, ref.shard, ref.shards) == ((0, rows), (0, rows // 2), 0, 1)
    [plan] = _read_all(storage, refs)
    assert [item.source.name for item in plan.items] == [_item(n).source.name for n in range(rows)]
    assert len(plan.settled) == rows // 2
    assert storage.requests["read"] == len(items) + len(settled)  # each chunk read once


def test_chunks_are_json_lines_written_create_only_under_the_plan_folder() -> None:
    storage, writer = _written(3, 2)
    writer.finish(max_shards=2, min_shard_size=1)
    assert storage.names("out") == [PREFIX + "items-000000.jsonl", PREFIX + "settled-000000.jsonl"]
    assert PREFIX.startswith("cut/_bgremoval/plans/dag/")
    first = storage.buckets["out"][PREFIX + "items-000000.jsonl"].data.splitlines()[0]
    assert json.loads(first)["name"] == "in/000000.jpg"
    with pytest.raises(Exception, match="is generation"):  # a chunk is never overwritten
        storage.write("out", PREFIX + "items-000000.jsonl", b"", content_type=JSON_LINES_CONTENT_TYPE)


def test_the_writer_counts_and_samples_like_a_batch_plan() -> None:
    storage = MemoryStorage()
    writer = _writer(storage)
    memory = BatchPlan(spec=SPEC)
    outcomes = [
        _done(90),
        PlannedOutcome(_source(91), None, "rejected", "unsafe_name", "bad"),
        PlannedOutcome(_source(92), "cut/x.png", "rejected", "output_exists", "foreign"),
    ]
    for sink in (writer, memory):
        for number in range(5):
            sink.add(WorkItem(_source(number), f"cut/{number}.png", fully_checked=number % 2 == 0))
        for outcome in outcomes:
            sink.settle(outcome)
    assert (writer.billable, writer.total) == (memory.billable, memory.total) == (5, 8)
    assert [writer.count_kind(k) for k in SETTLED_KINDS] == [memory.count_kind(k) for k in SETTLED_KINDS]
    assert [writer.count_kind(k) for k in SETTLED_KINDS] == [1, 2, 0, 0]
    assert [memory.count(s) for s in ("skipped", "rejected", "done")] == [1, 2, 0]
    for first in range(7):
        assert writer.header_only_among(first) == memory.header_only_among(first)
    assert writer.samples(10) == memory.items[:SAMPLES]
    assert writer.samples(2) == memory.samples(2)


# -- shards ----------------------------------------------------------------------------------------
def test_shard_bounds_are_contiguous_and_differ_by_at_most_one() -> None:
    assert shard_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert shard_bounds(0, 3) == [(0, 0), (0, 0), (0, 0)]
    assert shard_bounds(2, 3) == [(0, 1), (1, 2), (2, 2)]
    for count, shards in ((1001, 7), (5, 5), (20_000, 1)):
        bounds = shard_bounds(count, shards)
        assert bounds[0][0] == 0 and bounds[-1][1] == count
        assert all(a[1] == b[0] for a, b in pairwise(bounds))
        sizes = {stop - start for start, stop in bounds}
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("sources", "max_shards", "min_shard_size", "expected"),
    [
        (1000, 4, 1, 4),  # max_shards caps
        (1000, 16, 300, 3),  # 1000 // 300
        (1000, 16, 50, 16),
        (10, 8, 50, 1),  # fewer sources than min_shard_size: one shard
        (3, 8, 1, 3),
        (1, AIRFLOW_MAX_MAP_LENGTH, 1, 1),
    ],
)
def test_shard_count(sources: int, max_shards: int, min_shard_size: int, expected: int) -> None:
    storage, writer = _written(sources // 2, sources - sources // 2)
    refs = writer.finish(max_shards=max_shards, min_shard_size=min_shard_size)
    assert len(refs) == expected
    assert [ref.shard for ref in refs] == list(range(expected))
    assert {ref.shards for ref in refs} == {expected}
    plans = _read_all(storage, refs)
    sizes = [plan.total for plan in plans]
    assert sum(sizes) == sources and max(sizes) - min(sizes) <= 1  # sources, billable or not, spread evenly
    assert min(sizes) >= min(min_shard_size, sources)


def test_max_shard_rows_bounds_a_shard_below_max_shards() -> None:
    """45,000 sources with min_shard_size 100,000: still 3 shards of 15,000 (a task's memory is bounded)."""
    storage, writer = _written(30_000, 15_000)
    refs = writer.finish(max_shards=16, min_shard_size=100_000)
    assert len(refs) == math.ceil(45_000 / MAX_SHARD_ROWS) == 3
    assert all(ref.images + ref.settled[1] - ref.settled[0] <= MAX_SHARD_ROWS for ref in refs)
    # max_shards wins over the bound
    storage, writer = _written(30_000, 15_000)
    assert len(writer.finish(max_shards=2, min_shard_size=1)) == 2


def test_new_work_of_a_rerun_is_spread_over_every_shard() -> None:
    """A +1 % rerun of 1,000 sources (the 10 new ones listed last) over 4 shards: 3/3/2/2 billable."""
    storage = MemoryStorage()
    writer = _writer(storage)
    for number in range(990):
        writer.settle(_done(number))
    for number in range(990, 1000):
        writer.add(_item(number))
    refs = writer.finish(max_shards=4, min_shard_size=50)
    assert [ref.images for ref in refs] == [3, 3, 2, 2]
    assert [ref.settled[1] - ref.settled[0] for ref in refs] == [247, 247, 248, 248]
    plans = _read_all(storage, refs)
    assert [item.source.name for plan in plans for item in plan.items] == [
        _item(n).source.name for n in range(990, 1000)
    ]
    assert sorted(o.source.name for plan in plans for o in plan.settled) == [
        _done(n).source.name for n in range(990)
    ]


def test_the_runs_budget_bounds_the_billable_items_of_all_shards_together() -> None:
    """``max_items`` (the run's max_images / max_credits) applies to the run, not once per shard."""
    storage, writer = _written(items=100, settled=20)
    refs = writer.finish(max_shards=4, min_shard_size=1, max_items=10)
    assert [ref.images for ref in refs] == [3, 3, 2, 2]
    plans = _read_all(storage, refs)
    assert [item.source.name for plan in plans for item in plan.items] == [
        _item(n).source.name for n in range(10)
    ]  # the first ten in plan order; the other 90 wait for a later run
    assert sum(len(plan.settled) for plan in plans) == 20


@pytest.mark.parametrize(
    ("pricing", "bounds", "placed"),
    [
        ([(12, "a", "1")], [(0, 4), (4, 8), (8, 12)], [{"a": "4"}, {"a": "4"}, {"a": "4"}]),
        # the pooled allocation: 4 at the cheap primary, then 3 at the dearer next account
        ([(4, "a", "1"), (3, "b", "2")], [(0, 4), (4, 7)], [{"a": "4"}, {"b": "6"}]),
        (
            [(4, "a", "1"), (3, "b", "2")],
            [(0, 3), (3, 5), (5, 7)],
            [{"a": "3"}, {"a": "1", "b": "2"}, {"b": "4"}],
        ),
        (
            [(2, None, "0"), (1, "a", "0.25")],
            [(0, 1), (1, 1), (1, 3)],
            [{None: "0"}, {}, {None: "0", "a": "0.25"}],
        ),
        ([], [(0, 0), (0, 0)], [{}, {}]),
    ],
)
def test_a_shards_credits_are_what_the_pricing_placed_on_its_items(
    pricing: list[tuple[int, str | None, str]],
    bounds: list[tuple[int, int]],
    placed: list[dict[str | None, str]],
) -> None:
    runs = [PricedRun(count, conn, Decimal(cost)) for count, conn, cost in pricing]
    got = priced_credits(runs, bounds)
    assert got == [{conn: Decimal(credits) for conn, credits in part.items()} for part in placed]
    total = sum((run.cost * run.count for run in runs), Decimal(0))
    assert sum((sum(part.values(), Decimal(0)) for part in got), Decimal(0)) == total


def test_the_runs_max_credits_is_shared_out_over_the_shards() -> None:
    """Each mapped task gets its share of the run's ``max_credits``, not the whole budget again."""
    storage, writer = _written(items=100, settled=20)
    pricing = [PricedRun(10, "a_conn", Decimal("1.05"))]
    refs = writer.finish(
        max_shards=4, min_shard_size=1, max_items=10, max_credits=Decimal("10.5"), pricing=pricing
    )
    assert [(ref.images, ref.max_credits) for ref in refs] == [
        (3, Decimal("3.15")),
        (3, Decimal("3.15")),
        (2, Decimal("2.1")),
        (2, Decimal("2.1")),
    ]
    assert sum(ref.max_credits or 0 for ref in refs) == Decimal("10.5")
    for ref in refs:  # the task's own max_credits applies when smaller; the share otherwise
        data = ref.model_dump(mode="json")
        assert ShardRef.model_validate(json.loads(json.dumps(data))) == ref
        assert ref.credits_within(None) == ref.max_credits
        assert ref.credits_within(Decimal(1)) == 1
        assert ref.credits_within(Decimal(100)) == ref.max_credits


@pytest.mark.parametrize(
    ("pricing", "shards", "shares"),
    [
        # a_conn's 3 credits buy 3 images at 1: the shard holding them gets all 3 (was 0.75 each: none sent)
        ([(3, "a_conn", "1"), (9, "b_conn", "2")], 4, ["3", "0", "0", "0"]),
        # 5 images at 1, the first of 12 over 3 shards: 4, 1, 0 (was 1.666 each: 3 images in all)
        ([(5, "a_conn", "1"), (7, "b_conn", "2")], 3, ["4", "1", "0"]),
    ],
)
def test_each_accounts_budget_is_shared_out_as_the_pricing_placed_it(
    pricing: list[tuple[int, str, str]], shards: int, shares: list[str]
) -> None:
    """
    ``max_credits_per_account`` is the run's too: each shard holds the credits the pre-flight priced on
    that account among its items, so every image priced there fits its shard's share.
    """
    _, writer = _written(items=12, settled=0)
    budget = Decimal(pricing[0][0])
    budgets = {"a_conn": budget, "b_conn": None, "c_conn": Decimal("0.5")}
    runs = [PricedRun(count, conn, Decimal(cost)) for count, conn, cost in pricing]
    refs = writer.finish(max_shards=shards, min_shard_size=1, account_credits=budgets, pricing=runs)
    assert [ref.max_credits_per_account for ref in refs] == [
        (("a_conn", Decimal(share)), ("c_conn", Decimal(0))) for share in shares
    ]  # an account without a budget is left out; one the pricing left unused gets 0 in every shard
    assert sum(int((ref.account_credits_within("a_conn", None) or 0) // 1) for ref in refs) == budget
    assert [ref.max_credits for ref in refs] == [None] * shards
    ref = refs[0]
    assert ref.account_credits_within("a_conn", None) == Decimal(shares[0])
    assert ref.account_credits_within("a_conn", Decimal("0.5")) == Decimal("0.5")
    with pytest.raises(InvalidOptionError, match="carries no share"):  # every shard would spend 7
        ref.account_credits_within("b_conn", Decimal(7))
    assert ref.account_credits_within("b_conn", None) is None
    assert ShardRef.model_validate(json.loads(json.dumps(ref.model_dump(mode="json")))) == ref
    assert "max_credits_per_account" not in _ref()  # none given: kept out of the XCom, as before
    assert ShardRef.model_validate(_ref()).account_credits_within("a_conn", Decimal(2)) == 2


def test_a_budget_needs_the_pricing_of_every_item_in_the_shards() -> None:
    _, writer = _written(items=4, settled=0)
    with pytest.raises(ValueError, match="covers 3 billable item"):
        writer.finish(
            max_shards=2,
            min_shard_size=1,
            max_credits=Decimal(9),
            pricing=[PricedRun(3, "a_conn", Decimal(1))],
        )


def test_a_tasks_budget_the_plan_has_no_share_of_is_refused_on_a_shard_of_several() -> None:
    """
    A pre-flight given no ``max_credits`` (or no ``max_credits_per_account``) sets no share: a mapped task
    with its own would spend all of it, once per shard (4 shards, max_credits=10: up to 40 charged).
    """
    _, writer = _written(items=8, settled=4)
    refs = writer.finish(max_shards=4, min_shard_size=1)
    assert [ref.images for ref in refs] == [2, 2, 2, 2]
    for ref in refs:
        with pytest.raises(InvalidOptionError, match=r"max_credits.*shard \d of 4 carries no share"):
            ref.credits_within(Decimal(10))
        with pytest.raises(InvalidOptionError, match=r"max_credits_per_account\['a_conn'\]"):
            ref.account_credits_within("a_conn", Decimal(3))
        assert ref.credits_within(None) is None  # no budget anywhere: the balance bounds the run
        assert ref.account_credits_within("a_conn", None) is None
    _, writer = _written(items=0, settled=4)  # no billable item in the shards: nothing to spend
    for ref in writer.finish(max_shards=2, min_shard_size=1):
        assert ref.credits_within(Decimal(10)) == 10
        assert ref.account_credits_within("a_conn", Decimal(3)) == 3


def test_a_descriptor_without_a_share_leaves_the_tasks_budget_as_it_is() -> None:
    """A descriptor written before shares were kept (or without ``max_credits``) reads as no share."""
    old = _ref()
    assert "max_credits" not in old  # not given: kept out of the XCom
    ref = ShardRef.model_validate(old)
    assert ref.max_credits is None
    assert ref.credits_within(None) is None and ref.credits_within(Decimal(7)) == 7
    with pytest.raises(ValidationError, match="max_credits"):
        ShardRef.model_validate({**old, "max_credits": "-1"})


def test_an_empty_plan_has_no_shard_and_writes_nothing() -> None:
    storage = MemoryStorage()
    assert _writer(storage).finish(max_shards=4, min_shard_size=1) == []
    assert storage.requests == {}


def test_a_plan_with_nothing_billable_still_shards_its_settled_sources() -> None:
    storage, writer = _written(0, 100)
    refs = writer.finish(max_shards=4, min_shard_size=25)
    assert [ref.images for ref in refs] == [0, 0, 0, 0]
    assert [plan.count("skipped") for plan in _read_all(storage, refs)] == [25, 25, 25, 25]
    assert storage.reads == [("out", PREFIX + "settled-000000.jsonl")] * 4  # no items chunk exists


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_shards": 0, "min_shard_size": 1}, "max_shards"),
        ({"max_shards": AIRFLOW_MAX_MAP_LENGTH + 1, "min_shard_size": 1}, "max_shards"),
        ({"max_shards": 4, "min_shard_size": 0}, "min_shard_size"),
    ],
)
def test_finish_refuses_bad_shard_parameters(kwargs: dict[str, int], parameter: str) -> None:
    _, writer = _written(5, 5)
    with pytest.raises(InvalidOptionError, match=parameter):
        writer.finish(**kwargs)


def test_descriptors_name_the_plan_and_what_it_was_made_for() -> None:
    _, writer = _written(4, 0)
    [ref] = writer.finish(max_shards=1, min_shard_size=10)
    assert ref.model_dump(mode="json") == {
        "plan": PLAN_URI,
        "shard": 0,
        "shards": 1,
        "items": [0, 4],
        "settled": [0, 0],
        "chunk_rows": CHUNK_ROWS,
        "source_bucket": "raw",
        "destination_bucket": "out",
        "destination_prefix": "cut/",
        "accepted": [["poof", "fp"]],
        "overwrite": False,
        "render": [0, 0],
        "renditions": None,
    }
    assert len(json.dumps(ref.model_dump(mode="json"))) < 400  # XCom stays small, whatever the shard's size


# -- reading a shard -------------------------------------------------------------------------------
def test_a_shard_reads_only_the_chunks_its_ranges_touch() -> None:
    storage, writer = _written(2500, 2500)
    refs = writer.finish(max_shards=3, min_shard_size=1)
    assert [ref.items for ref in refs] == [(0, 834), (834, 1667), (1667, 2500)]
    expected_chunks = [[0], [0, 1], [1, 2]]
    for ref, chunks in zip(refs, expected_chunks, strict=True):
        storage.reads.clear()
        storage.requests.clear()
        plan = read_shard(storage, SPEC, ref)  # type: ignore[arg-type]
        assert storage.reads == [("out", PREFIX + chunk_name("items", k)) for k in chunks] + [
            ("out", PREFIX + chunk_name("settled", k)) for k in chunks
        ]
        assert storage.requests == {"read": 2 * len(chunks)}  # no listing, no stat, no header read
        assert [item.source.name for item in plan.items] == [_item(n).source.name for n in range(*ref.items)]


def test_every_field_of_items_and_settled_sources_survives_the_round_trip() -> None:
    storage = MemoryStorage()
    writer = _writer(storage)
    fields = {"content_type": "image/jpeg", "md5_hash": "1B2M2Y8AsgTpgAmY7PhCfg==", "crc32c": "AAAAAA=="}
    odd = ObjectInfo(bucket="raw", name='in/façade "quoted" ✓ 雪.jpg', generation=2**62, size=0, **fields)
    items = [
        WorkItem(
            odd, 'cut/façade "quoted" ✓ 雪.png', replace_generation=1_700_000_000_000_001, fully_checked=True
        ),
        WorkItem(_source(2), "cut/000002.png", replace_generation=None, fully_checked=False),
    ]
    outcomes = [
        PlannedOutcome(
            ObjectInfo(bucket="raw", name="in/gone.jpg", generation=0, size=0),
            None,
            "rejected",
            "not_found",
            "source object does not exist",
        ),
        PlannedOutcome(_source(3, content_type=None), None, "rejected", "unsafe_name", "backslash in 'a\\b'"),
        PlannedOutcome(
            _source(4, **fields), "cut/000004.png", "skipped", "already_done", "déjà fait\tok\u2028\x85\r\n"
        ),
    ]
    for item in items:
        writer.add(item)
    for outcome in outcomes:
        writer.settle(outcome)
    [ref] = writer.finish(max_shards=1, min_shard_size=1)
    plan = read_shard(storage, SPEC, ref)  # type: ignore[arg-type]
    assert plan.spec == SPEC
    assert plan.items == items
    assert plan.settled == outcomes


# -- the descriptor --------------------------------------------------------------------------------
def _ref(**changes: Any) -> dict[str, Any]:
    _, writer = _written(10, 10)
    [ref] = writer.finish(max_shards=1, min_shard_size=1)
    return {**ref.model_dump(mode="json"), **changes}


@pytest.mark.parametrize(
    ("chunk", "keep", "error"),
    [
        ("items-000001.jsonl", 200, "holds 200 row"),  # shard 0 needs rows 1000-1249, shard 1 the rest
        ("items-000002.jsonl", 0, "holds 0 row"),  # the last chunk (500 rows) emptied
        ("settled-000000.jsonl", 3, "holds 3 row"),
    ],
)
def test_a_chunk_shorter_than_the_plan_wrote_is_refused_not_read_as_fewer_items(
    chunk: str, keep: int, error: str
) -> None:
    """A chunk replaced by a shorter one (deleted, rewritten): the shard's items were missing silently."""
    storage, writer = _written(items=2500, settled=10)
    refs = writer.finish(max_shards=2, min_shard_size=1)
    stored = storage.buckets["out"][PREFIX + chunk]
    storage.put("out", PREFIX + chunk, b"".join(stored.data.splitlines(keepends=True)[:keep]))
    touched = [ref for ref in refs if any(f"{PREFIX}{chunk}" == name for name in _chunks_of(ref))]
    for ref in touched:
        with pytest.raises(InvalidOptionError, match=error) as info:
            read_shard(storage, SPEC, ref)  # type: ignore[arg-type]
        assert info.value.parameter == "shard" and "run the pre-flight again" in str(info.value)
    storage.put("out", PREFIX + chunk, stored.data.replace(b'{"name"', b'{"name', 1))  # a broken row
    with pytest.raises(InvalidOptionError, match="is not JSON"):
        read_shard(storage, SPEC, touched[0])  # type: ignore[arg-type]


def _chunks_of(ref: ShardRef) -> list[str]:
    """The chunk objects a shard's ranges touch."""
    names = []
    for kind, (start, stop) in (("items", ref.items), ("settled", ref.settled)):
        if start < stop:
            numbers = range(start // ref.chunk_rows, (stop - 1) // ref.chunk_rows + 1)
            names += [PREFIX + chunk_name(kind, number) for number in numbers]
    return names


def test_a_descriptor_survives_json_and_xcom() -> None:
    data = _ref()
    ref = ShardRef.model_validate(json.loads(json.dumps(data)))
    assert ref.model_dump(mode="json") == data
    assert ref.items == (0, 10) and ref.images == 10


def test_a_descriptor_refuses_extra_and_missing_keys_and_is_frozen() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ShardRef.model_validate(_ref(items_override=[0, 1]))
    data = _ref()
    del data["accepted"]
    with pytest.raises(ValidationError, match="accepted"):
        ShardRef.model_validate(data)
    ref = ShardRef.model_validate(_ref())
    with pytest.raises(ValidationError, match="frozen"):
        ref.items = (0, 1)  # type: ignore[misc]
    assert hash(ref) == hash(ShardRef.model_validate(_ref()))


@pytest.mark.parametrize(
    "changes",
    [
        {"items": [5, 2]},
        {"settled": [-1, 3]},
        {"items": [0, 1, 2]},
        {"chunk_rows": 0},
        {"shard": 1, "shards": 1},
        {"shard": -1},
        {"plan": "out/plan/"},
        {"accepted": []},
    ],
)
def test_a_malformed_descriptor_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ShardRef.model_validate(_ref(**changes))


@pytest.mark.parametrize(
    ("spec", "accepted", "named"),
    [
        (
            BatchSpec(source_bucket="other", destination_bucket="out", destination_prefix="cut/"),
            (("poof", "fp"),),
            "other",
        ),
        (
            BatchSpec(source_bucket="raw", destination_bucket="elsewhere", destination_prefix="cut/"),
            (("poof", "fp"),),
            "elsewhere",
        ),
        (
            BatchSpec(source_bucket="raw", destination_bucket="out", destination_prefix="v2/"),
            (("poof", "fp"),),
            "v2/",
        ),
        (SPEC, (("pixian", "fp"),), "vendors ['poof'] (this task: ['pixian'])"),
        (SPEC, (("poof", "fp-crop"),), "options ['fp'] (this task: ['fp-crop'])"),
        # a chain: every account counts, in order (an output of any of them is taken as finished)
        (SPEC, (("poof", "fp"), ("pixian", "fp-x")), "vendors ['poof'] (this task: ['poof', 'pixian'])"),
        (
            BatchSpec(
                source_bucket="raw", destination_bucket="out", destination_prefix="cut/", overwrite=True
            ),
            (("poof", "fp"),),
            "overwrite False (this task: True)",
        ),
    ],
)
def test_check_matches_refuses_a_plan_made_for_another_batch(
    spec: BatchSpec, accepted: tuple[tuple[str, str], ...], named: str
) -> None:
    ref = ShardRef.model_validate(_ref())
    ref.check_matches(SPEC, POOF)  # the batch it was made for
    with pytest.raises(InvalidOptionError) as excinfo:
        ref.check_matches(spec, OutputIdentity(accepted))
    message = str(excinfo.value)
    assert excinfo.value.parameter == "shard"
    assert named in message
    assert "give the pre-flight the bucket task's parameters" in message


def test_check_matches_compares_the_chains_connections_when_the_shard_names_them() -> None:
    """Two accounts of one vendor share an identity, not a balance: the connections must match too."""
    storage = MemoryStorage()
    writer = PlanWriter(storage, SPEC, PREFIX, POOF, conn_ids=("poof_a", "poof_b"))  # type: ignore[arg-type]
    writer.add(_item(0))
    [ref] = writer.finish(max_shards=1, min_shard_size=1)
    assert ref.model_dump(mode="json")["conn_ids"] == ["poof_a", "poof_b"]
    ref.check_matches(SPEC, POOF, ["poof_a", "poof_b"])
    for other in (["poof_b"], ["poof_b", "poof_a"], ["poof_a"]):
        with pytest.raises(InvalidOptionError, match=r"conn_id \['poof_a', 'poof_b'\] \(this task"):
            ref.check_matches(SPEC, POOF, other)
    ref.check_matches(SPEC, POOF)  # a caller naming no connections compares the identity only
    old = ShardRef.model_validate(_ref())  # a descriptor without them: compared as before
    assert old.conn_ids is None and "conn_ids" not in _ref()
    old.check_matches(SPEC, POOF, ["poof_b"])


def test_plan_prefix_keeps_one_folder_per_run_whatever_its_id() -> None:
    assert plan_prefix("cut/_bgremoval/", "dag", "scheduled__2026-12-01T00:00:00+00:00", "check", 2) == (
        "cut/_bgremoval/plans/dag/scheduled__2026-12-01T00:00:00+00:00/check/try-2/"
    )
    slashed = plan_prefix("_bgremoval/", "dag", "backfill/2026/12/01", "check", 1)
    assert slashed == "_bgremoval/plans/dag/backfill%2F2026%2F12%2F01/check/try-1/"
    assert slashed.count("/") == "_bgremoval/plans/dag/x/check/try-1/".count("/")  # one folder level per part
    tries = {plan_prefix("_bgremoval/", "dag", "run", "check", n) for n in (1, 2)}
    assert len(tries) == 2  # a retried pre-flight never writes into its earlier try's plan
    mapped = [plan_prefix("_bgremoval/", "dag", "run", "check", 1, index) for index in (None, -1, 0, 1)]
    assert mapped[:2] == ["_bgremoval/plans/dag/run/check/try-1/"] * 2  # not mapped: as it always was
    assert mapped[2:] == [
        "_bgremoval/plans/dag/run/check/map-0/try-1/",
        "_bgremoval/plans/dag/run/check/map-1/try-1/",
    ]


@pytest.mark.parametrize(
    "run_ids",
    [
        ("a/b", "a_b"),  # the old mapping's collision
        ("a/b", "a%2Fb"),  # an id that looks like another's encoding
        ("a#b", "a_b"),
        ("a b", "a+b"),
        ("..", "%2E%2E"),
        ("x\ny", "x_ny"),
    ],
)
def test_runs_whose_ids_differ_only_in_mapped_characters_keep_separate_plans(run_ids) -> None:
    first, second = (plan_prefix("_bgremoval/", "dag", run_id, "check", 1) for run_id in run_ids)
    assert first != second
    for prefix in (first, second):
        run_folder = prefix.split("/")[3]
        assert run_folder not in ("", ".", "..")
        assert not set(run_folder) & set("#[]*?\n\r /")  # what GCS names dislike, and no new folder level


@pytest.mark.parametrize("part", ["dag_id", "task_id"])
def test_dag_and_task_ids_are_mapped_the_same_way(part) -> None:
    ids = {"dag_id": "dag", "task_id": "check"}
    folders = set()
    for value in ("a/b", "a_b"):
        ids[part] = value
        folders.add(plan_prefix("_bgremoval/", ids["dag_id"], "run", ids["task_id"], 1))
    assert len(folders) == 2
    assert all(folder.count("/") == "_bgremoval/plans/d/r/t/try-1/".count("/") for folder in folders)


def test_two_runs_whose_ids_differ_only_by_slash_and_underscore_both_plan_and_read_their_own() -> None:
    """With one shared folder the second run's create-only chunk writes were refused (another run's plan)."""
    storage = MemoryStorage()
    shards = {}
    for run_id, first in (("nightly/42", 0), ("nightly_42", 500)):
        prefix = plan_prefix(SPEC.internal_prefix, "dag", run_id, "check", 1)
        writer = PlanWriter(storage, SPEC, prefix, POOF)  # type: ignore[arg-type]
        for number in range(first, first + 3):
            writer.add(_item(number))
        shards[run_id] = writer.finish(max_shards=1, min_shard_size=1)
    for run_id, first in (("nightly/42", 0), ("nightly_42", 500)):
        (shard,) = shards[run_id]
        plan = read_shard(storage, SPEC, shard)  # type: ignore[arg-type]
        assert [item.source.generation for item in plan.items] == [
            10_000 + n for n in range(first, first + 3)
        ]


def test_a_plan_of_an_overwriting_batch_is_only_for_an_overwriting_task() -> None:
    """Its items may carry a stale output's generation to replace: a task without overwrite refuses it."""
    spec = BatchSpec(source_bucket="raw", destination_bucket="out", destination_prefix="cut/", overwrite=True)
    storage = MemoryStorage()
    writer = _writer(storage, spec)
    writer.add(WorkItem(_source(1), "cut/000001.png", replace_generation=77))
    [ref] = writer.finish(max_shards=1, min_shard_size=1)
    assert ref.overwrite is True
    ref.check_matches(spec, POOF)
    with pytest.raises(InvalidOptionError, match=r"overwrite True \(this task: False\)"):
        ref.check_matches(SPEC, POOF)


# -- renditions ------------------------------------------------------------------------------------
LAYOUT = RenditionLayout(
    parse_renditions([{"name": "web", "format": "webp"}, {"name": "thumb", "format": "jpeg", "size": 64}]),
    "cut/",
    "cut/masters/",
    ".png",
)


def _master(number: int) -> ObjectInfo:
    meta = {"bgremoval-source": f"gs://raw/in/{number:06d}.jpg", "bgremoval-source-generation": "7"}
    return ObjectInfo(
        bucket="out", name=f"cut/masters/{number:06d}.png", generation=50 + number, size=9, metadata=meta
    )


def _targets(number: int, master: ObjectInfo | None) -> tuple[RenditionTarget, ...]:
    """What planning found: web rendered (finished when the master is known), thumb recorded non-compliant."""
    name = f"cut/masters/{number:06d}.png"
    web, thumb = LAYOUT.renditions
    found = ObjectInfo(
        bucket="out",
        name=LAYOUT.name_of(web, name),
        generation=70 + number,
        size=5,
        metadata={
            "bgremoval-rendition": "web",
            "bgremoval-master": f"gs://out/{name}",
            "bgremoval-compliant": "true",
        },
    )
    record = ObjectInfo(
        bucket="out",
        name=LAYOUT.record_name(thumb, name),
        generation=90 + number,
        size=2,
        metadata={
            "bgremoval-failed-checks": "size,background",
            "bgremoval-recorded": "2026-11-30T10:00:00+00:00",
        },
    )
    return (
        RenditionTarget(web, found.name, found, master is not None, LAYOUT.record_name(web, name)),
        RenditionTarget(
            thumb, LAYOUT.name_of(thumb, name), None, False, record.name, record, master is not None
        ),
    )


def test_billable_and_render_only_items_carry_their_renditions_and_master_through_the_plan() -> None:
    storage = MemoryStorage()
    writer = PlanWriter(storage, SPEC, PREFIX, POOF, renditions=LAYOUT)  # type: ignore[arg-type]
    billable = WorkItem(
        _source(1), "cut/masters/000001.png", replace_generation=3, renditions=_targets(1, None)
    )
    render = [
        WorkItem(
            _source(n), f"cut/masters/{n:06d}.png", master=_master(n), renditions=_targets(n, _master(n))
        )
        for n in (2, 3, 4)
    ]
    facts = {"master": {"object": "gs://out/cut/masters/000005.png", "generation": 55, "status": "skipped"}}
    settled = PlannedOutcome(
        _source(5),
        "cut/masters/000005.png",
        "rejected",
        "rendition_noncompliant",
        "recorded",
        {**facts, "render_only": True},
    )
    writer.add(billable)
    for item in render:
        writer.add_render(item)
    writer.settle(settled)
    assert (writer.billable, writer.render_only, writer.total) == (1, 3, 5)
    refs = writer.finish(max_shards=2, min_shard_size=1)
    assert [ref.render for ref in refs] == [(0, 2), (2, 3)] and [ref.items for ref in refs] == [
        (0, 1),
        (1, 1),
    ]
    assert refs[0].renditions == (
        ("web", LAYOUT.renditions[0].fingerprint),
        ("thumb", LAYOUT.renditions[1].fingerprint),
    )
    assert len(json.dumps(refs[0].model_dump(mode="json"))) < 600  # XCom: a descriptor, never the rows
    storage.requests.clear()
    plans = [read_shard(storage, SPEC, ref, LAYOUT) for ref in refs]  # type: ignore[arg-type]
    # shard 0 reads the items and render chunks, shard 1 the render and settled ones: nothing else
    assert storage.requests == {"read": 4}
    assert plans[0].items == [billable] and plans[1].items == []
    assert plans[0].render + plans[1].render == render
    assert plans[0].settled + plans[1].settled == [settled]
    assert plans[0].render[0].renditions[1].recorded and plans[0].render[0].master == _master(2)


def test_a_shard_planned_with_other_renditions_or_none_is_refused() -> None:
    storage = MemoryStorage()
    writer = PlanWriter(storage, SPEC, PREFIX, POOF, renditions=LAYOUT)  # type: ignore[arg-type]
    writer.add(WorkItem(_source(1), "cut/masters/000001.png", renditions=_targets(1, None)))
    [ref] = writer.finish(max_shards=1, min_shard_size=1)
    other = RenditionLayout(
        parse_renditions([{"name": "web", "format": "png"}]), "cut/", "cut/masters/", ".png"
    )
    for layout in (None, other):
        with pytest.raises(InvalidOptionError, match="other renditions") as info:
            read_shard(storage, SPEC, ref, layout)  # type: ignore[arg-type]
        assert info.value.parameter == "shard"
    _, plain = _written(2, 0)
    [plain_ref] = plain.finish(max_shards=1, min_shard_size=1)
    assert plain_ref.renditions is None
    with pytest.raises(InvalidOptionError, match="other renditions"):
        read_shard(storage, SPEC, plain_ref, LAYOUT)  # type: ignore[arg-type]
