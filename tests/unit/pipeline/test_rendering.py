"""Renditions in the engine over a real fake-gcs-server, the scripted processor standing in for a vendor."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image, ImageDraw

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.pipeline.engine import BatchRunner
from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter, read_manifest
from airflow_provider_bgremoval.pipeline.planning import BatchSpec, OutputIdentity, plan_batch
from airflow_provider_bgremoval.pipeline.processors import RenderProcessor
from airflow_provider_bgremoval.pipeline.rendering import (
    MASTER_MAX_BYTES,
    RenditionLayout,
    recorded_source,
    render_verdict,
)
from airflow_provider_bgremoval.renditions import parse_renditions
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo
from tests.unit.pipeline.test_engine import ScriptedProcessor

pytestmark = pytest.mark.integration

SPEC_KW = {"source_prefix": "raw/", "destination_prefix": "out/", "masters_prefix": "out/masters/"}


def cutout() -> bytes:
    """A master: an opaque disc on transparent pixels."""
    image = Image.new("RGBA", (120, 90), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((20, 15, 100, 75), fill=(200, 30, 30, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class CutoutProcessor(ScriptedProcessor):
    """The scripted vendor, answering with a real cut-out so the renditions have a subject."""

    async def process(self, data: bytes, filename: str, stats: Any = None) -> Any:
        result = await super().process(data, filename, stats)
        return type(result)(content=cutout(), content_type="image/png", vendor="fake")


def layout(*renditions: dict[str, Any]) -> RenditionLayout:
    return RenditionLayout(parse_renditions(list(renditions)), "out/", "out/masters/", ".png")


def batch(
    storage: GcsStorage, spec: BatchSpec, processor: ScriptedProcessor, renditions: RenditionLayout, **kw: Any
):
    async def go():
        plan = await plan_batch(
            storage,
            spec,
            extension=processor.extension,
            identity=OutputIdentity.of(processor),
            limits=processor.limits,
            renditions=renditions,
        )
        manifest = ManifestWriter()
        result = await BatchRunner(storage, processor, plan, manifest, **kw).run()
        return plan, result, read_manifest(manifest.getvalue())

    return asyncio.run(go())


@pytest.fixture
def buckets(gcs_bucket_factory: Callable[..., str], gcs_storage: GcsStorage) -> tuple[GcsStorage, str, str]:
    storage, src, dst = gcs_storage, gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    for name in ("raw/a.png", "raw/b/c.png"):
        image = Image.new("RGB", (120, 90), "white")
        out = io.BytesIO()
        image.save(out, format="PNG")
        storage.write(src, name, out.getvalue(), content_type="image/png")
    return storage, src, dst


WEB = {"name": "web", "format": "webp", "background": "transparent"}
THUMB = {"name": "thumb", "format": "jpeg", "size": 64, "background": "#ffffff"}


def test_a_later_rendition_is_render_only_free_and_not_stopped_by_budgets(buckets) -> None:
    storage, src, dst = buckets
    spec = BatchSpec(src, dst, **SPEC_KW)
    vendor = CutoutProcessor()
    plan, result, rows = batch(storage, spec, vendor, layout(WEB))
    assert len(vendor.calls) == 2 and plan.billable == 2 and plan.render == []
    assert {row["status"] for row in rows} == {"done"}
    assert result.renditions["web"]["done"] == 2
    # A new rendition: the masters are finished, so both sources are render-only (0 credits).
    plan, result, rows = batch(storage, spec, vendor, layout(WEB, THUMB), max_images=0, max_credits=0)
    assert len(vendor.calls) == 2 and plan.billable == 0 and len(plan.render) == 2
    assert result.credits_spent == 0 and result.counts["pending"] == 0
    assert {row["status"] for row in rows} == {"done"}
    assert {row["master"]["status"] for row in rows} == {"skipped"}
    assert result.renditions["web"]["skipped"] == 2 and result.renditions["thumb"]["done"] == 2
    thumb = Image.open(io.BytesIO(storage.read(dst, "out/thumb/b/c.jpg")))
    assert thumb.size == (64, 64) and thumb.convert("RGB").getpixel((0, 0)) == (255, 255, 255)
    # Everything finished: settled in planning, with each rendition reported.
    plan, result, rows = batch(storage, spec, vendor, layout(WEB, THUMB))
    assert plan.render == [] and plan.billable == 0
    assert {row["status"] for row in rows} == {"skipped"}
    assert [entry["status"] for entry in rows[0]["renditions"]] == ["skipped", "skipped"]


def test_a_stale_rendition_is_replaced_and_one_changed_meanwhile_is_not_overwritten(buckets) -> None:
    storage, src, dst = buckets
    spec = BatchSpec(src, dst, **SPEC_KW)
    vendor = CutoutProcessor()
    batch(storage, spec, vendor, layout(THUMB))
    first = storage.stat(dst, "out/thumb/a.jpg")
    assert first is not None
    changed = {**THUMB, "size": 100}  # another spec: both renditions are stale

    async def plan_only():
        return await plan_batch(
            storage,
            spec,
            extension=".png",
            identity=OutputIdentity.of(vendor),
            limits=vendor.limits,
            renditions=layout(changed),
        )

    plan = asyncio.run(plan_only())
    assert [
        t.existing.generation for item in plan.render for t in item.renditions if t.name.endswith("a.jpg")
    ] == [first.generation]
    # Someone rewrites b/c's rendition after planning: the generation-matched replace refuses it.
    storage.write(dst, "out/thumb/b/c.jpg", b"not ours", content_type="image/jpeg", if_generation_match=None)
    manifest = ManifestWriter()
    result = asyncio.run(BatchRunner(storage, vendor, plan, manifest).run())
    rows = {row["source"].rsplit("/raw/", 1)[1]: row for row in read_manifest(manifest.getvalue())}
    assert rows["a.png"]["renditions"][0]["status"] == "replaced"
    assert Image.open(io.BytesIO(storage.read(dst, "out/thumb/a.jpg"))).size == (100, 100)
    assert rows["b/c.png"]["status"] == "failed" and rows["b/c.png"]["error_code"] == "rendition_failed"
    assert rows["b/c.png"]["renditions"][0]["error_code"] == "rendition_conflict"
    assert storage.read(dst, "out/thumb/b/c.jpg") == b"not ours"
    assert result.bad_renditions == 1 and len(vendor.calls) == 2


def test_a_noncompliant_rendition_is_never_written(buckets) -> None:
    storage, src, dst = buckets
    spec = BatchSpec(src, dst, **SPEC_KW)
    wrong = {"name": "amazon", "preset": "amazon_main", "background": "#f4f4f4", "min_size": 100}
    _, result, rows = batch(storage, spec, CutoutProcessor(), layout(wrong, THUMB))
    assert result.renditions["amazon"]["rejected"] == 2 and result.renditions["thumb"]["done"] == 2
    assert all(row["status"] == "done" for row in rows)  # the master was paid for and stored
    entry = rows[0]["renditions"][0]
    assert entry["status"] == "rejected" and entry["error_code"] == "rendition_noncompliant"
    assert entry["compliant"] is False and entry["failed"]
    assert list(storage.list_objects(dst, "out/amazon/")) == []


def test_an_unreadable_master_fails_every_rendition_of_that_source(buckets) -> None:
    storage, src, dst = buckets
    spec = BatchSpec(src, dst, **SPEC_KW)
    vendor = CutoutProcessor()
    batch(storage, spec, vendor, layout(WEB))
    master = storage.stat(dst, "out/masters/a.png")
    assert master is not None
    storage.write(
        dst,
        master.name,
        b"\x89PNG broken",
        content_type="image/png",
        metadata=master.metadata,
        if_generation_match=master.generation,
    )
    _, result, rows = batch(storage, spec, vendor, layout(WEB, THUMB))
    row = next(row for row in rows if row["source"].endswith("/a.png"))
    # A new master generation makes every rendition of it stale: both are rendered again, and fail.
    assert row["status"] == "failed" and [e["status"] for e in row["renditions"]] == ["failed", "failed"]
    assert result.renditions["thumb"] == {"done": 1, "failed": 1}
    assert result.renditions["web"] == {"skipped": 1, "failed": 1}
    assert len(vendor.calls) == 2  # never paid again


def test_render_verdict_and_recorded_source() -> None:
    assert render_verdict([{"name": "a", "status": "done"}]) == ("done", None, None)
    assert render_verdict([{"name": "a", "status": "rejected"}, {"name": "b", "status": "failed"}]) == (
        "failed",
        "rendition_failed",
        "rendition(s) rejected: a; failed: b",
    )
    master = ObjectInfo(
        "b",
        "m/x.png",
        7,
        1,
        metadata={"bgremoval-source": "gs://s/raw/x.jpg", "bgremoval-source-generation": "3"},
    )
    assert (recorded_source(master).uri, recorded_source(master).generation) == ("gs://s/raw/x.jpg", 3)
    assert recorded_source(ObjectInfo("b", "old.png", 1, 1)).uri == "gs://b/old.png"


def test_explicit_source_objects_look_renditions_up_by_name(buckets) -> None:
    storage, src, dst = buckets
    spec = BatchSpec(src, dst, source_objects=["a.png"], **SPEC_KW)  # a few names: a stat each
    vendor = CutoutProcessor()
    _, result, rows = batch(storage, spec, vendor, layout(WEB))
    assert [row["status"] for row in rows] == ["done"] and result.renditions["web"]["done"] == 1
    plan, _, rows = batch(storage, spec, vendor, layout(WEB, THUMB))
    assert len(plan.render) == 1 and [e["status"] for e in rows[0]["renditions"]] == ["skipped", "done"]
    assert len(vendor.calls) == 1


def test_a_stop_request_leaves_render_only_items_pending(buckets) -> None:
    storage, src, dst = buckets
    spec = BatchSpec(src, dst, **SPEC_KW)
    vendor = CutoutProcessor()
    batch(storage, spec, vendor, layout(WEB))

    async def go():
        plan = await plan_batch(
            storage,
            spec,
            extension=".png",
            identity=OutputIdentity.of(vendor),
            limits=vendor.limits,
            renditions=layout(WEB, THUMB),
        )
        manifest = ManifestWriter()
        runner = BatchRunner(storage, vendor, plan, manifest)
        runner.request_stop("terminated", "the task was terminated")
        result = await runner.run()
        return result, read_manifest(manifest.getvalue())

    result, rows = asyncio.run(go())
    assert {row["status"] for row in rows} == {"pending"} and result.interrupted == "terminated"
    assert list(storage.list_objects(dst, "out/thumb/")) == []


def test_an_object_the_provider_did_not_render_is_never_replaced_without_overwrite(buckets) -> None:
    storage, src, dst = buckets
    storage.write(dst, "out/thumb/a.jpg", b"someone else's file", content_type="image/jpeg")
    vendor = CutoutProcessor()
    _, result, rows = batch(storage, BatchSpec(src, dst, **SPEC_KW), vendor, layout(WEB, THUMB))
    by_source = {row["source"].rsplit("/raw/", 1)[1]: row for row in rows}
    web, thumb = by_source["a.png"]["renditions"]
    assert web["status"] == "done"
    assert thumb["status"] == "rejected" and thumb["error_code"] == "output_exists"
    assert storage.read(dst, "out/thumb/a.jpg") == b"someone else's file"
    assert [e["status"] for e in by_source["b/c.png"]["renditions"]] == ["done", "done"]
    assert result.bad_renditions == 1
    # Render-only now (the masters are finished): still refused, and the row says why.
    plan, _, rows = batch(storage, BatchSpec(src, dst, **SPEC_KW), vendor, layout(WEB, THUMB))
    assert len(plan.render) == 1 and len(vendor.calls) == 2
    row = next(row for row in rows if row["source"].endswith("/a.png"))
    assert row["status"] == "rejected" and row["error_code"] == "output_exists"
    assert storage.read(dst, "out/thumb/a.jpg") == b"someone else's file"
    # overwrite=True: the foreign object is replaced by the rendition.
    _, _, rows = batch(storage, BatchSpec(src, dst, overwrite=True, **SPEC_KW), vendor, layout(WEB, THUMB))
    row = next(row for row in rows if row["source"].endswith("/a.png"))
    assert [e["status"] for e in row["renditions"]] == ["skipped", "replaced"]
    replaced = storage.stat(dst, "out/thumb/a.jpg")
    assert replaced is not None and (replaced.metadata or {})["bgremoval-rendition"] == "thumb"
    assert len(vendor.calls) == 2


def test_a_rendition_folder_over_the_sources_or_masters_of_the_same_bucket_is_refused() -> None:
    raw = parse_renditions([{"name": "raw", "format": "jpeg", "background": "#ffffff"}])
    sources = {"source_bucket": "shop", "source_prefix": "shop/raw/"}
    with pytest.raises(InvalidOptionError, match="overlaps the source prefix") as info:
        RenditionLayout(
            raw, "shop/", "shop/masters/", destination_bucket="shop", masters_bucket="shop", **sources
        )
    assert info.value.parameter == "renditions[0].name"
    elsewhere = RenditionLayout(
        raw, "shop/", "shop/masters/", destination_bucket="site", masters_bucket="site", **sources
    )
    assert elsewhere.name_of(raw[0], "shop/masters/a.png") == "shop/raw/a.jpg"
    # Masters at a bucket root: refused in their bucket, fine rendered into another one.
    with pytest.raises(InvalidOptionError, match="overlaps the masters prefix"):
        RenditionLayout(raw, "", "", destination_bucket="a", masters_bucket="a")
    assert (
        RenditionLayout(raw, "", "", destination_bucket="b", masters_bucket="a").name_of(raw[0], "p.png")
        == "raw/p.jpg"
    )


def test_a_master_over_the_size_limit_is_refused_unread(buckets) -> None:
    storage, src, dst = buckets
    spec = BatchSpec(src, dst, **SPEC_KW)
    vendor = CutoutProcessor()
    batch(storage, spec, vendor, layout(WEB))
    master = storage.stat(dst, "out/masters/a.png")
    assert master is not None and master.size > 64
    _, result, rows = batch(storage, spec, vendor, layout(WEB, THUMB), master_max_bytes=64)
    assert {row["status"] for row in rows} == {"failed"} and result.counts["failed"] == 2
    assert {row["error_code"] for row in rows} == {"ObjectTooLargeError"}
    assert {row["master"]["status"] for row in rows} == {"failed"}
    assert list(storage.list_objects(dst, "out/thumb/")) == [] and len(vendor.calls) == 2
    assert RenderProcessor.limits.max_bytes == MASTER_MAX_BYTES < 2**40  # the render-only job's bound too


def render_only_plan(storage: GcsStorage, src: str, dst: str, *renditions: dict[str, Any]):
    """A ``RenderRenditionsOperator`` plan: the sources under raw/ are the masters."""
    spec = BatchSpec(src, dst, source_prefix="raw/", destination_prefix="out/")
    lay = RenditionLayout(
        parse_renditions(list(renditions)), "out/", "raw/", destination_bucket=dst, masters_bucket=src
    )
    processor = RenderProcessor()
    return asyncio.run(
        plan_batch(
            storage,
            spec,
            extension=processor.extension,
            identity=OutputIdentity.of(processor),
            limits=processor.limits,
            renditions=lay,
            masters_are_sources=True,
        )
    )


def test_render_only_rows_have_no_destination_also_when_left_pending(buckets) -> None:
    storage, src, dst = buckets

    def run(stop: bool) -> list[dict[str, Any]]:
        manifest = ManifestWriter()
        runner = BatchRunner(storage, RenderProcessor(), render_only_plan(storage, src, dst, WEB), manifest)
        if stop:
            runner.request_stop("terminated", "the task was terminated")
        asyncio.run(runner.run())
        return read_manifest(manifest.getvalue())

    pending = run(stop=True)
    assert [row["status"] for row in pending] == ["pending", "pending"]
    assert [row["destination"] for row in pending] == [None, None]
    done = run(stop=False)
    assert [row["status"] for row in done] == ["done", "done"]
    assert [row["destination"] for row in done] == [None, None]


def test_failed_render_only_items_do_not_count_for_the_failure_rate(buckets) -> None:
    storage, src, dst = buckets
    png = io.BytesIO()
    Image.new("RGB", (120, 90), "white").save(png, format="PNG")
    for index in range(10):
        storage.write(src, f"raw/more/{index}.png", png.getvalue(), content_type="image/png")
    spec = BatchSpec(src, dst, **SPEC_KW)
    vendor = CutoutProcessor()
    batch(storage, spec, vendor, layout(WEB))  # 12 masters
    storage.write(src, "raw/new.png", png.getvalue(), content_type="image/png")
    # 12 render-only items fail (their masters are over the limit); the one billable image is done.
    _, result, rows = batch(
        storage,
        spec,
        vendor,
        layout(WEB, THUMB),
        master_max_bytes=64,
        on_error="fail_rate",
        max_failure_rate=0.1,
    )
    assert result.counts["failed"] == 12 and result.render_only["failed"] == 12
    assert result.halt is None and result.billable_counts == {"done": 1}
    assert len(vendor.calls) == 13


def test_an_interrupt_prices_only_the_billable_items_left_pending(buckets) -> None:
    storage, src, dst = buckets
    spec = BatchSpec(src, dst, **SPEC_KW)
    vendor = CutoutProcessor()
    batch(storage, spec, vendor, layout(WEB))
    png = io.BytesIO()
    Image.new("RGB", (120, 90), "white").save(png, format="PNG")
    storage.write(src, "raw/new.png", png.getvalue(), content_type="image/png")

    async def go():
        plan = await plan_batch(
            storage,
            spec,
            extension=".png",
            identity=OutputIdentity.of(vendor),
            limits=vendor.limits,
            renditions=layout(WEB, THUMB),
        )
        runner = BatchRunner(storage, vendor, plan, ManifestWriter())
        runner.request_stop("terminated", "the task was terminated")
        return plan, await runner.run()

    plan, result = asyncio.run(go())
    assert plan.billable == 1 and len(plan.render) == 2 and result.counts["pending"] == 3
    assert result.halt is not None and result.halt.remaining_images == 3
    assert result.halt.needed == vendor.cost_per_image * 1  # the two render-only items cost nothing
