"""What ``max_images`` counts: images submitted to the batch, not images paid (a finding, pinned).

``BatchRunner._next_billable`` (pipeline/engine.py) stops at ``_submitted >= max_images``, counting every
billable item handed to a worker, so an image settled before any vendor call (refused by the local
checks of an unchecked plan, its source gone, claimed by another run) uses up the cap as a paid one
does. The pre-flight's cap is the same count: ``PlanWriter.finish(max_items=...)`` puts the first
``max_items`` billable items into shards, whatever the batch then makes of them. These tests pin that
behaviour; changing it is a change of the engine's cap (docs/pipeline.md, "Budgets").
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
    runner = BatchRunner(storage, processor, plan, manifest, max_concurrency=1, **kw)  # type: ignore[arg-type]
    result = asyncio.run(runner.run())
    return result, {row["source"].rsplit("/", 1)[-1]: row for row in read_manifest(manifest.getvalue())}


def test_max_images_counts_images_settled_before_any_vendor_call() -> None:
    """
    ``max_images=2`` over a plan whose first item the batch refuses locally and whose second source was
    deleted after planning: both use up the cap, no call is made, 0 credits are spent, and the three
    payable images are left pending (halt ``max_images``), where a cap of paid images would process two.
    """
    storage, processor = _sources(), LocalChecks()
    plan = _unchecked_plan(storage, processor)
    assert [item.source.name for item in plan.items] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    storage.delete("src", "b.png")  # gone after planning: its pinned read fails, nothing sent

    result, rows = _run(storage, processor, plan, max_images=2)

    assert processor.calls == [] and result.credits_spent == 0
    assert {name: (row["status"], row["error_code"]) for name, row in rows.items()} == {
        "a.png": ("rejected", "unsupported_image"),
        "b.png": ("failed", "ObjectChangedError"),
        "c.png": ("pending", "max_images"),
        "d.png": ("pending", "max_images"),
        "e.png": ("pending", "max_images"),
    }
    assert not any(row.get("credits") for row in rows.values())
    assert result.halt is not None and result.halt.reason == "max_images"
    assert result.halt.message == "max_images=2 reached" and result.halt.remaining_images == 3


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
