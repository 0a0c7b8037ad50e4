"""What ``max_images`` counts: images sent to the vendor, not images handed to the batch's workers.

``BatchRunner._next_billable`` (pipeline/engine.py) stopped at ``_submitted >= max_images``, counting every
billable item handed to a worker, so an image settled before any vendor call (refused by the local
checks of an unchecked plan, its source gone, claimed by another run) used up the cap as a paid one
did, and the run made fewer paid images than asked. Now an image in flight holds its place and one
settled without a call gives it back; no more than ``max_images`` calls start. The pre-flight's cap is
another count: ``PlanWriter.finish(max_items=...)`` puts the first ``max_items`` billable items into
shards, whatever the batch then makes of them (pinned below: a shard never holds more than it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from airflow_provider_bgremoval.imaging import prepare_input
from airflow_provider_bgremoval.pipeline.engine import BatchRunner
from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter, read_manifest
from airflow_provider_bgremoval.pipeline.plan_store import PlanWriter, plan_prefix, read_shard
from airflow_provider_bgremoval.pipeline.planning import BatchPlan, BatchSpec, OutputIdentity, plan_batch
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import CallStats
from tests.support.memory_storage import MemoryStorage
from tests.unit.pipeline.test_engine import ScriptedProcessor, png

SPEC = BatchSpec(source_bucket="src", destination_bucket="dst", destination_prefix="out/")


class LocalChecks(ScriptedProcessor):
    """A vendor whose hook checks each file before sending it, as the real hooks do (free refusal)."""

    async def process(self, data: bytes, filename: str, stats: CallStats | None = None) -> ImageResult:
        prepare_input(data, self.limits, vendor=self.vendor)  # raises InputRejectedError: nothing sent
        return await super().process(data, filename, stats)


def _sources() -> MemoryStorage:
    """``a.png`` is no image (an unchecked plan bills it; the batch refuses it for free), ``b..e`` are."""
    objects = {"a.png": b"not an image " * 10, **{f"{name}.png": png() for name in "bcde"}}
    return MemoryStorage(objects)


def _unchecked_plan(storage: MemoryStorage, processor: LocalChecks) -> BatchPlan:
    return asyncio.run(
        plan_batch(
            storage,  # type: ignore[arg-type]
            SPEC,
            extension=processor.extension,
            identity=OutputIdentity.of(processor),
            limits=processor.limits,
            check=False,  # the pre-flight's local_checks "batch": every unfinished source billable
        )
    )


def _run(storage: MemoryStorage, processor: LocalChecks, plan: BatchPlan, **kw: Any) -> Any:
    manifest = ManifestWriter()
    kw.setdefault("max_concurrency", 1)
    runner = BatchRunner(storage, processor, plan, manifest, **kw)  # type: ignore[arg-type]
    result = asyncio.run(runner.run())
    return result, {row["source"].rsplit("/", 1)[-1]: row for row in read_manifest(manifest.getvalue())}


def test_max_images_does_not_count_images_settled_before_any_vendor_call() -> None:
    """
    ``max_images=2`` over a plan whose first item the batch refuses locally and whose second source was
    deleted after planning: neither is sent, so neither uses up the cap; ``c`` and ``d`` are paid and
    ``e`` is left pending (halt ``max_images``). Before: both used it up, no call, 0 credits, 3 pending.
    """
    storage, processor = _sources(), LocalChecks()
    plan = _unchecked_plan(storage, processor)
    assert [item.source.name for item in plan.items] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    storage.delete("src", "b.png")  # gone after planning: its pinned read fails, nothing sent

    result, rows = _run(storage, processor, plan, max_images=2)

    assert processor.calls == ["c.png", "d.png"] and result.credits_spent == 2
    assert {name: (row["status"], row["error_code"]) for name, row in rows.items()} == {
        "a.png": ("rejected", "unsupported_image"),
        "b.png": ("failed", "ObjectChangedError"),
        "c.png": ("done", None),
        "d.png": ("done", None),
        "e.png": ("pending", "max_images"),
    }
    assert result.halt is not None and result.halt.reason == "max_images"
    assert result.halt.message == "max_images=2 reached" and result.halt.remaining_images == 1


def test_images_in_flight_hold_their_place_so_no_more_than_max_images_calls_start() -> None:
    """
    Five workers, ``max_images=2``: ``a`` and ``b`` take the two places while in flight, so no third
    image is started; ``a``, refused locally, gives its place to ``c``. Two calls, never more at once.
    """
    storage, processor = _sources(), LocalChecks(delay=0.05)
    plan = _unchecked_plan(storage, processor)

    result, rows = _run(storage, processor, plan, max_images=2, max_concurrency=5)

    assert sorted(processor.calls) == ["b.png", "c.png"] and processor.max_in_flight == 2
    assert {name: row["status"] for name, row in rows.items()} == {
        "a.png": "rejected",
        "b.png": "done",
        "c.png": "done",
        "d.png": "pending",
        "e.png": "pending",
    }
    assert result.halt is not None and result.halt.reason == "max_images" and result.credits_spent == 2


def test_the_pre_flights_cap_shards_the_first_billable_items_whatever_the_batch_makes_of_them() -> None:
    """
    With an unchecked plan, ``max_items=2`` (the run's ``max_images``) shards ``a.png`` (refused in the
    batch, unpaid) and ``b.png``: one image is paid this run, the other three are deferred.
    """
    storage, processor = _sources(), LocalChecks()
    identity = OutputIdentity.of(processor)
    prefix = plan_prefix(SPEC.internal_prefix, "dag", "run", "check", 1)
    writer = PlanWriter(storage, SPEC, prefix, identity, checked=False)  # type: ignore[arg-type]
    for item in _unchecked_plan(storage, processor).items:
        writer.add(item)
    [shard] = writer.finish(max_shards=1, min_shard_size=1, max_items=2)
    planned = read_shard(storage, SPEC, shard)  # type: ignore[arg-type]
    assert [item.source.name for item in planned.items] == ["a.png", "b.png"]

    result, rows = _run(storage, processor, planned)

    assert processor.calls == ["b.png"] and result.credits_spent == 1
    assert {name: row["status"] for name, row in rows.items()} == {"a.png": "rejected", "b.png": "done"}
