"""Renditions in the engine over a real fake-gcs-server, the scripted processor standing in for a vendor."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image, ImageDraw

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.pipeline.claims import ClaimStore
from airflow_provider_bgremoval.pipeline.engine import BatchRunner
from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter, read_manifest
from airflow_provider_bgremoval.pipeline.planning import (
    HEADER_BYTES,
    BatchSpec,
    DestinationCollisionError,
    OutputIdentity,
    outputs_between,
    plan_batch,
)
from airflow_provider_bgremoval.pipeline.processors import RenderProcessor
from airflow_provider_bgremoval.pipeline.rendering import (
    MASTER_MAX_BYTES,
    RENDER_BUDGET,
    RENDER_PIXEL_BUDGET,
    PixelBudget,
    RenditionLayout,
    RenditionStage,
    RenditionTarget,
    master_pixels,
    master_within_source,
    recorded_source,
    render_verdict,
)
from airflow_provider_bgremoval.renditions import parse_renditions
from airflow_provider_bgremoval.renditions.compliance import Measured, Rule
from airflow_provider_bgremoval.renditions.spec import Preset
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo
from airflow_provider_bgremoval.vendors.pixian import PixianOptions
from airflow_provider_bgremoval.vendors.poof import PoofOptions
from tests.support.memory_storage import MemoryStorage
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
    storage: GcsStorage,
    spec: BatchSpec,
    processor: ScriptedProcessor,
    renditions: RenditionLayout,
    check: bool = True,
    **kw: Any,
):
    async def go():
        plan = await plan_batch(
            storage,
            spec,
            extension=processor.extension,
            identity=OutputIdentity.of(processor),
            limits=processor.limits,
            check=check,
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
    # Metadata anyone can write: a "digit" int() refuses (superscript two) is no generation, not a crash.
    odd = replace(master, metadata={**(master.metadata or {}), "bgremoval-source-generation": "\u00b2"})
    assert recorded_source(odd) is odd


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


def test_a_rendition_made_from_another_master_is_not_replaced_without_overwrite(buckets) -> None:
    """Another job rendering into this folder (its master elsewhere): its rendition is not ours to replace;
    a rendition of our own master's earlier generation is stale and replaced (the test above)."""
    storage, src, dst = buckets
    theirs = {
        "bgremoval-rendition": "thumb",
        "bgremoval-master": "gs://another-shop/masters/a.png",
        "bgremoval-master-generation": "7",
    }
    storage.write(dst, "out/thumb/a.jpg", b"their thumb", content_type="image/jpeg", metadata=theirs)
    vendor = CutoutProcessor()
    _, result, rows = batch(storage, BatchSpec(src, dst, **SPEC_KW), vendor, layout(WEB, THUMB))
    row = next(row for row in rows if row["source"].endswith("/a.png"))
    web, thumb = row["renditions"]
    assert web["status"] == "done" and thumb["status"] == "rejected"
    assert thumb["error_code"] == "output_exists"
    assert "made from another master (gs://another-shop/masters/a.png)" in thumb["error_message"]
    assert storage.read(dst, "out/thumb/a.jpg") == b"their thumb" and result.bad_renditions == 1
    # overwrite=True: replaced by ours.
    _, _, rows = batch(storage, BatchSpec(src, dst, overwrite=True, **SPEC_KW), vendor, layout(WEB, THUMB))
    row = next(row for row in rows if row["source"].endswith("/a.png"))
    assert [e["status"] for e in row["renditions"]] == ["skipped", "replaced"]
    replaced = storage.stat(dst, "out/thumb/a.jpg")
    assert replaced is not None
    assert (replaced.metadata or {})["bgremoval-master"].endswith("/out/masters/a.png")


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


def test_render_only_masters_sharing_a_stem_are_refused_before_anything_is_read_or_written() -> None:
    # raw/a.png and raw/a.jpg would make one out/web/a.webp (naming.output_stem, the removal path's rule):
    # refused as a removal batch's a.jpg and a.png are, naming both, not one rendition silently lost
    jpeg = io.BytesIO()
    Image.new("RGB", (120, 90), "white").save(jpeg, format="JPEG")
    storage = MemoryStorage({"raw/a.png": cutout(), "raw/a.jpg": jpeg.getvalue(), "raw/b.png": cutout()})
    with pytest.raises(DestinationCollisionError, match=r"'raw/a\.jpg' and 'raw/a\.png'"):
        render_only_plan(storage, "src", "dst", WEB)  # type: ignore[arg-type]
    assert storage.reads == [] and storage.requests["write"] == 0 and storage.names("dst") == []
    lay = RenditionLayout(parse_renditions([WEB]), "out/", "raw/")
    (web,) = lay.renditions
    assert lay.name_of(web, "raw/a.jpg") == lay.name_of(web, "raw/a.png") == "out/web/a.webp"
    assert lay.record_name(web, "raw/.png") == "out/_bgremoval/noncompliant/.png/web"  # output_stem's rule


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


# -- Non-compliance records: a rejected rendition is settled without a read (MemoryStorage counts requests)

WRONG = {"name": "amazon", "preset": "amazon_main", "background": "#f4f4f4", "min_size": 100}
FIXED = {"name": "amazon", "preset": "amazon_main", "upscale": True}  # 1000 px from the 120 px master


def memory_buckets() -> MemoryStorage:
    png = io.BytesIO()
    Image.new("RGB", (120, 90), "white").save(png, format="PNG")
    return MemoryStorage({"raw/a.png": png.getvalue(), "raw/b/c.png": png.getvalue()})


def by_source(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["source"].rsplit("/raw/", 1)[1]: row for row in rows}


def memory_batch(storage: MemoryStorage, vendor: ScriptedProcessor, *renditions: dict[str, Any], **kw: Any):
    return batch(storage, BatchSpec("src", "dst", **SPEC_KW, **kw), vendor, layout(*renditions))  # type: ignore[arg-type]


def test_a_noncompliant_rendition_is_recorded_and_the_next_run_settles_it_without_a_read() -> None:
    storage, vendor = memory_buckets(), CutoutProcessor()
    _, result, rows = memory_batch(storage, vendor, WRONG, THUMB)
    assert result.renditions["amazon"]["rejected"] == 2 and len(vendor.calls) == 2
    assert storage.names("dst", "out/amazon/") == []  # never written
    records = storage.names("dst", "out/_bgremoval/noncompliant/")
    assert records == ["out/_bgremoval/noncompliant/a/amazon", "out/_bgremoval/noncompliant/b/c/amazon"]
    record = storage.info("dst", records[0])
    master = storage.info("dst", "out/masters/a.png")
    amazon = by_source(rows)["a.png"]["renditions"][0]
    assert amazon["record"] == f"gs://dst/{records[0]}"
    meta = record.metadata
    assert meta["bgremoval-master"] == master.uri
    assert meta["bgremoval-master-generation"] == str(master.generation)
    assert meta["bgremoval-rendition-fingerprint"] == amazon["fingerprint"]
    assert meta["bgremoval-compliant"] == "false" and meta["bgremoval-writer"]
    assert (
        meta["bgremoval-failed-checks"].split(",") == amazon["failed"] and "border_white" in amazon["failed"]
    )
    assert meta["bgremoval-recorded"].startswith(datetime.now(timezone.utc).strftime("%Y-%m-%d")[:4])

    # The next run: settled at planning, no master read, no render, no write.
    storage.requests.clear()
    plan, result, rows = memory_batch(storage, vendor, WRONG, THUMB)
    assert plan.render == [] and plan.billable == 0
    # sources, masters, the two rendition folders, and ONE listing of the window's records
    assert storage.requests == {"list": 5}
    assert storage.listings[-1][1:] == (
        "out/_bgremoval/noncompliant/",
        "out/_bgremoval/noncompliant/a/amazon",
        "out/_bgremoval/noncompliant/b/c/thumb\0",
    )
    assert [row["status"] for row in rows] == ["rejected", "rejected"]
    assert {row["error_code"] for row in rows} == {"rendition_noncompliant"}
    assert "recorded non-compliant on 20" in rows[0]["error_message"]
    amazon, thumb = by_source(rows)["a.png"]["renditions"]
    assert thumb["status"] == "skipped"
    assert amazon["status"] == "rejected" and amazon["error_code"] == "rendition_noncompliant"
    assert amazon["error_message"].startswith("recorded non-compliant on ")
    assert "not re-rendered" in amazon["error_message"] and amazon["failed"] == meta[
        "bgremoval-failed-checks"
    ].split(",")
    # The same verdict as the run that rendered it: the renditions are bad, the rows are free.
    assert result.renditions["amazon"]["rejected"] == 2 and result.bad_renditions == 2
    assert result.render_only["rejected"] == 2 and result.billable_counts["rejected"] == 0
    assert len(vendor.calls) == 2


def test_a_recorded_rendition_is_rendered_again_for_a_new_spec_a_new_master_or_overwrite() -> None:
    storage, vendor = memory_buckets(), CutoutProcessor()
    memory_batch(storage, vendor, WRONG, THUMB)
    # overwrite=True: the records are not consulted, both are rendered (and rejected) again; the
    # create-only record write then finds the same verdict recorded, and keeps it.
    before = storage.info("dst", "out/_bgremoval/noncompliant/a/amazon")
    storage.requests.clear()
    plan, result, _ = memory_batch(storage, vendor, WRONG, THUMB, overwrite=True)
    assert len(plan.render) == 2 and storage.requests["read"] == 2
    assert result.renditions["amazon"]["rejected"] == 2
    assert (storage.requests["write"], storage.requests["stat"]) == (2, 2)  # each refused, then looked at
    assert storage.info("dst", "out/_bgremoval/noncompliant/a/amazon") == before
    # A new master generation for a.png: its record is stale, so it is rendered again (and replaced).
    master = storage.info("dst", "out/masters/a.png")
    old_record = storage.info("dst", "out/_bgremoval/noncompliant/a/amazon")
    storage.put("dst", master.name, storage.buckets["dst"][master.name].data, master.metadata)
    storage.requests.clear()
    plan, result, rows = memory_batch(storage, vendor, WRONG, THUMB)
    assert [item.source.name for item in plan.render] == ["raw/a.png"]
    assert storage.reads[-1] == ("dst", "out/masters/a.png") and storage.requests["read"] == 1
    new_record = storage.info("dst", "out/_bgremoval/noncompliant/a/amazon")
    assert new_record.generation != old_record.generation
    assert new_record.metadata["bgremoval-master-generation"] == str(
        storage.info("dst", master.name).generation
    )
    # The preset is fixed: another fingerprint, so it is rendered, compliant, and written.
    storage.requests.clear()
    plan, result, rows = memory_batch(storage, vendor, FIXED, THUMB)
    assert len(plan.render) == 2 and result.renditions["amazon"]["done"] == 2
    assert storage.names("dst", "out/amazon/") == ["out/amazon/a.jpg", "out/amazon/b/c.jpg"]
    # ... and then everything is finished: the records are not even listed.
    storage.requests.clear()
    plan, result, rows = memory_batch(storage, vendor, FIXED, THUMB)
    assert storage.requests == {"list": 4} and {row["status"] for row in rows} == {"skipped"}
    assert len(vendor.calls) == 2  # never paid again
    # A changed source with overwrite=True: a new master, judged again; a record of the old master in
    # the way (unknown to a billable item) is replaced, generation-matched.
    storage.put("src", "raw/b/c.png", storage.buckets["src"]["raw/b/c.png"].data)
    stale = storage.info("dst", "out/_bgremoval/noncompliant/b/c/amazon")  # WRONG's, of the old master
    memory_batch(storage, vendor, WRONG, THUMB, overwrite=True)
    record = storage.info("dst", "out/_bgremoval/noncompliant/b/c/amazon")
    assert len(vendor.calls) == 3 and record.generation != stale.generation
    assert record.metadata["bgremoval-master-generation"] == str(
        storage.info("dst", "out/masters/b/c.png").generation
    )


def test_records_of_explicit_sources_are_looked_up_by_name_and_only_when_needed() -> None:
    storage, vendor = memory_buckets(), CutoutProcessor()
    memory_batch(storage, vendor, WRONG, THUMB, source_objects=["a.png"])
    storage.requests.clear()
    plan, _, rows = memory_batch(storage, vendor, WRONG, THUMB, source_objects=["a.png"])
    # the source, its master, its two renditions and the missing one's record: a stat each
    assert storage.requests == {"stat": 5} and plan.render == []
    assert rows[0]["status"] == "rejected" and rows[0]["renditions"][0]["status"] == "rejected"


def test_render_only_records_settle_the_next_run_and_stay_out_of_output_listings() -> None:
    storage = memory_buckets()
    for name in ("raw/a.png", "raw/b/c.png"):
        storage.put("src", name, cutout())
    lay = RenditionLayout(
        parse_renditions([WRONG, THUMB]), "out/", "raw/", destination_bucket="dst", masters_bucket="src"
    )
    spec = BatchSpec("src", "dst", source_prefix="raw/", destination_prefix="out/")

    def run() -> tuple[Any, Any, list[dict[str, Any]]]:
        async def go():
            processor = RenderProcessor()
            plan = await plan_batch(
                storage,  # type: ignore[arg-type]
                spec,
                extension=processor.extension,
                identity=OutputIdentity.of(processor),
                limits=processor.limits,
                renditions=lay,
                masters_are_sources=True,
            )
            manifest = ManifestWriter()
            result = await BatchRunner(storage, processor, plan, manifest).run()  # type: ignore[arg-type]
            return plan, result, read_manifest(manifest.getvalue())

        return asyncio.run(go())

    _, result, rows = run()
    assert [row["status"] for row in rows] == ["rejected", "rejected"] and result.render_only["rejected"] == 2
    assert storage.names("dst", "out/_bgremoval/noncompliant/") == [
        "out/_bgremoval/noncompliant/a/amazon",
        "out/_bgremoval/noncompliant/b/c/amazon",
    ]
    storage.requests.clear()
    plan, result, rows = run()
    # the masters in two name ranges (either side of a provider folder under them), then as before
    assert plan.render == [] and storage.requests == {"list": 5} and storage.reads[-1][0] == "src"
    assert len(storage.reads) == 2  # the first run's two master reads, none since
    assert [row["status"] for row in rows] == ["rejected", "rejected"]
    assert result.render_only["rejected"] == 2 and result.renditions["thumb"]["skipped"] == 2
    # A records listing never yields the outputs' listing its internal folder.
    names = [
        info.name
        for info in outputs_between(
            storage, BatchSpec("src", "dst", destination_prefix="out/"), "out/", "out/~"
        )
    ]  # type: ignore[arg-type]
    assert names and not any("_bgremoval" in name for name in names)


# -- Renditions no master can make compliant: settled at planning, no vendor call (MemoryStorage) --------

AMAZON = {"name": "amazon", "preset": "amazon_main"}  # fill 0.85 on 1:1, min_size 1000, no upscale
WEB = {"name": "web", "format": "webp", "max_size": 1024}


def photo(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 60, 60)).save(out, format="PNG")
    return out.getvalue()


def bounded(*renditions: dict[str, Any]) -> RenditionLayout:
    return replace(layout(*renditions), masters_within_source=True)


def small_and_big() -> MemoryStorage:
    return MemoryStorage({"raw/small.png": photo((800, 600)), "raw/big.png": photo((1300, 1000))})


def test_a_source_no_rendition_can_make_compliant_is_settled_at_planning_without_a_call() -> None:
    storage, vendor = small_and_big(), CutoutProcessor()
    plan, result, rows = batch(storage, BatchSpec("src", "dst", **SPEC_KW), vendor, bounded(AMAZON))
    assert vendor.calls == ["big.png"] and plan.billable == 1  # 1300 px could reach 1000: paid, judged
    assert plan.count_kind("noncompliant_at_planning") == 1 and plan.count_kind("rejected_locally") == 0
    small = by_source(rows)["small.png"]
    assert (small["status"], small["error_code"]) == ("rejected", "rendition_noncompliant")
    assert "800x600 px source" in small["error_message"] and "upscale=True" in small["error_message"]
    assert "amazon: at most 942 px on the long side (1000 wanted) (min_size)" in small["error_message"]
    assert "0 credits" in small["error_message"]
    (amazon,) = small["renditions"]
    assert (amazon["status"], amazon["error_code"], amazon["compliant"]) == (
        "rejected",
        "rendition_noncompliant",
        False,
    )
    assert amazon["failed"] == ["min_size", "long_side_min_1000"]
    assert amazon["object"] == "gs://dst/out/amazon/small.jpg"
    assert [check["message"] for check in amazon["checks"]] == [
        "at most 942 px on the long side (1000 wanted)"
    ] * 2
    # the same verdict as a rendition judged after its render: a bad rendition, a free row
    assert result.renditions["amazon"]["rejected"] == 2 and result.bad_renditions == 2
    assert result.billable_counts["rejected"] == 1 and result.counts["done"] == 1
    # nothing is written for it: no master, no record (a record names the master it judged)
    assert storage.names("dst", "out/masters/") == ["out/masters/big.png"]
    assert storage.names("dst", "out/_bgremoval/noncompliant/") == ["out/_bgremoval/noncompliant/big/amazon"]


def test_a_source_with_one_reachable_rendition_is_still_processed() -> None:
    storage, vendor = small_and_big(), CutoutProcessor()
    plan, result, rows = batch(storage, BatchSpec("src", "dst", **SPEC_KW), vendor, bounded(AMAZON, WEB))
    assert (
        sorted(vendor.calls) == ["big.png", "small.png"] and plan.count_kind("noncompliant_at_planning") == 0
    )
    amazon, web = by_source(rows)["small.png"]["renditions"]
    assert web["status"] == "done"
    assert amazon["status"] == "rejected" and amazon["record"]  # judged after its render, recorded, as before


@pytest.mark.parametrize(
    ("rendition", "within"),
    [
        ({**AMAZON, "upscale": True}, True),  # upscale may enlarge it to 1000 px
        ({"name": "exact", "format": "jpeg", "size": 2048}, True),  # an exact canvas: not the source's
        (AMAZON, False),  # a vendor that may enlarge the cut-out
    ],
    ids=["upscale", "exact-size", "unbounded-master"],
)
def test_planning_never_settles_what_the_source_does_not_bound(
    rendition: dict[str, Any], within: bool
) -> None:
    storage, vendor = small_and_big(), CutoutProcessor()
    chosen = replace(layout(rendition), masters_within_source=within)
    plan, _, _ = batch(storage, BatchSpec("src", "dst", **SPEC_KW), vendor, chosen)
    assert plan.billable == 2 and len(vendor.calls) == 2


def test_a_master_is_within_its_source_unless_an_option_can_enlarge_it() -> None:
    removal = SimpleNamespace(operation="remove_background", vendor_options=None)
    assert master_within_source(removal)
    assert master_within_source(replace_ns(removal, vendor_options=PoofOptions(size="preview")))
    assert master_within_source(replace_ns(removal, vendor_options=PixianOptions(max_pixels=1_000_000)))
    assert not master_within_source(
        replace_ns(removal, vendor_options=PixianOptions(target_size=(2000, 2000)))
    )
    assert not master_within_source(replace_ns(removal, vendor_options={"result_margin": "10%"}))
    assert not master_within_source(replace_ns(removal, vendor_options={"shadow": True}))
    # generate-background makes its own 1024 px scene, whatever the source's size
    assert not master_within_source(SimpleNamespace(operation="generate_background", vendor_options=None))


def replace_ns(namespace: SimpleNamespace, **changes: Any) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(namespace), **changes})


def test_a_layout_is_judged_by_source_size_only_when_every_rendition_has_a_bounded_minimum() -> None:
    assert bounded(AMAZON).judged_by_source_size
    assert bounded(AMAZON, {"name": "ebay", "preset": "ebay"}).judged_by_source_size
    assert not bounded(AMAZON, WEB).judged_by_source_size  # the web rendition may always comply
    assert not bounded({**AMAZON, "upscale": True}).judged_by_source_size
    assert not layout(AMAZON).judged_by_source_size  # masters that may be larger than their source


def test_an_unchecked_plan_s_source_too_small_for_every_rendition_is_settled_before_its_call() -> None:
    """A plan kept unchecked (its shards run as they are): the engine gives planning's verdict, unpaid."""
    spec, vendor = BatchSpec("src", "dst", **SPEC_KW), CutoutProcessor()
    checked, _, checked_rows = batch(small_and_big(), spec, vendor, bounded(AMAZON))
    storage, vendor = small_and_big(), CutoutProcessor()
    claims = ClaimStore(storage, "dst", spec.internal_prefix, "test-run")  # type: ignore[arg-type]
    plan, result, rows = batch(
        storage,  # type: ignore[arg-type]
        spec,
        vendor,
        bounded(AMAZON),
        check=False,
        claims=claims,
    )
    assert plan.billable == 2 and not plan.checked  # both planned billable: nothing was read
    assert vendor.calls == ["big.png"]  # the small source is never sent
    small, planned = by_source(rows)["small.png"], by_source(checked_rows)["small.png"]
    for key in ("status", "error_code", "error_message", "renditions", "destination"):
        assert small[key] == planned[key], key  # the row planning writes for it
    assert (small["possibly_charged"], small["attempts"], small["credits"]) == (0, 0, None)
    assert result.credits_spent == 1 and result.counts["rejected"] == 1 and result.counts["done"] == 1
    assert result.renditions["amazon"]["rejected"] == 2
    other = ClaimStore(storage, "dst", spec.internal_prefix, "another-run")  # type: ignore[arg-type]
    generation = {name: by_source(rows)[name]["source_generation"] for name in ("small.png", "big.png")}
    assert other.acquire("out/masters/small.png", generation["small.png"]) is None  # released
    assert other.acquire("out/masters/big.png", generation["big.png"]) is not None  # its output's claim stays
    assert storage.names("dst", "out/masters/") == ["out/masters/big.png"]
    assert storage.names("dst", "out/_bgremoval/noncompliant/") == ["out/_bgremoval/noncompliant/big/amazon"]


SPEC = BatchSpec("src", "dst", **SPEC_KW)


def test_an_unchecked_plan_s_source_with_one_reachable_rendition_is_still_sent() -> None:
    storage, vendor = small_and_big(), CutoutProcessor()
    _, result, _ = batch(storage, SPEC, vendor, bounded(AMAZON, WEB), check=False)  # type: ignore[arg-type]
    assert sorted(vendor.calls) == ["big.png", "small.png"] and result.renditions["web"]["done"] == 2


def test_sources_settled_by_size_before_their_call_do_not_count_for_the_failure_rate() -> None:
    """As planning's rows: a checked plan and an unchecked one stop (or not) alike."""
    storage = MemoryStorage({f"raw/small{i:02}.png": photo((800, 600)) for i in range(12)})
    storage.put("src", "raw/big.png", photo((1300, 1000)))
    vendor = CutoutProcessor()
    rated = {"on_error": "fail_rate", "max_failure_rate": 0.0}
    _, result, _ = batch(storage, SPEC, vendor, bounded(AMAZON), check=False, **rated)  # type: ignore[arg-type]
    assert result.halt is None and vendor.calls == ["big.png"]
    assert (result.counts["rejected"], result.counts["done"]) == (12, 1)


# -- One rendition's failure is its own


@dataclass(frozen=True)
class Broken(Rule):
    """A user's rule whose own code raises on every rendition it judges."""

    def _check(self, measured: Measured) -> tuple[bool, str]:
        raise ZeroDivisionError("the user's rule divided by zero")


def test_a_rendition_whose_check_raises_fails_alone_the_master_and_the_others_are_kept() -> None:
    storage, vendor = memory_buckets(), CutoutProcessor()
    renditions = parse_renditions(
        [WEB, {"name": "shop", "preset": "checked"}, THUMB],
        presets={"checked": Preset("checked", {"format": "png"}, rules=(Broken(),))},
    )
    layout = RenditionLayout(renditions, "out/", "out/masters/", ".png")
    spec = BatchSpec("src", "dst", **SPEC_KW)
    _, result, rows = batch(storage, spec, vendor, layout)  # type: ignore[arg-type]
    # before: the whole image's renditions failed 'rendering failed (ZeroDivisionError ...)'
    assert result.renditions["web"] == {"done": 2} and result.renditions["thumb"] == {"done": 2}
    assert result.renditions["shop"] == {"failed": 2}
    assert storage.names("dst", "out/web/") == ["out/web/a.webp", "out/web/b/c.webp"]
    assert storage.names("dst", "out/shop/") == []
    for row in rows:
        assert row["status"] == "done" and row["master"]["status"] == "done"
        web, shop, thumb = row["renditions"]
        assert (web["status"], thumb["status"]) == ("done", "done")
        assert shop["status"] == "failed" and shop["error"]["code"] == "rendition_failed"
        assert "rendition 'shop' failed (ZeroDivisionError" in shop["error"]["message"]
        # like every entry not written (docs/pipeline.md): they were missing from a failed rendering
        assert shop["error_code"] == "rendition_failed"
        assert shop["error_message"] == shop["error"]["message"]
    # the next run renders the failed one only, from the stored masters, unpaid
    _, result, rows = batch(storage, spec, vendor, layout)  # type: ignore[arg-type]
    assert len(vendor.calls) == 2 and result.renditions["web"] == {"skipped": 2}
    assert {row["error_code"] for row in rows} == {"rendition_failed"}


# -- Memory: the masters rendered at once are bounded by their pixels


class SlowWrites(MemoryStorage):
    """Writes that take a while, counting how many images' renditions are being stored at once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lock = threading.Lock()
        self.writing: set[str] = set()
        self.most = 0

    def write(self, bucket: str, name: str, data: bytes, **kw: Any) -> ObjectInfo:
        stem = name.rsplit("/", 1)[-1]
        with self.lock:
            self.writing.add(stem)
            self.most = max(self.most, len(self.writing))
        time.sleep(0.2)
        with self.lock:
            self.writing.discard(stem)
            return super().write(bucket, name, data, **kw)


def _render_at_once(budget: PixelBudget | None, images: int) -> SlowWrites:
    storage = SlowWrites()
    (rendition,) = parse_renditions([WEB])
    kw: dict[str, Any] = {} if budget is None else {"budget": budget}
    stage = RenditionStage(storage, "dst", "w", **kw)
    master = ObjectInfo(bucket="dst", name="out/masters/m.png", generation=1, size=1)
    threads = [
        threading.Thread(
            target=stage.run,
            args=(cutout(), master, master, [RenditionTarget(rendition, f"out/web/{index}.webp")]),
        )
        for index in range(images)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(storage.names("dst", "out/web/")) == images
    return storage


def test_the_masters_rendered_at_once_are_bounded_by_their_pixels() -> None:
    # four 120x90 masters on a budget of 1.5 of them: one at a time (a batch of concurrency 16 held
    # sixteen prepared 50 MP masters, ~1 GB each at their peak; the process's budget is two of them)
    assert _render_at_once(PixelBudget(120 * 90 * 3 // 2), 4).most == 1
    assert _render_at_once(PixelBudget(120 * 90 * 2), 4).most == 2
    assert _render_at_once(None, 4).most >= 3  # the process's budget: small masters are not held back
    assert RENDER_PIXEL_BUDGET == 100_000_000 and RENDER_BUDGET.used == 0


def test_a_master_over_the_budget_is_rendered_alone_and_in_turn() -> None:
    budget = PixelBudget(100)
    order: list[str] = []

    def small() -> None:
        with budget.held(1):
            order.append("small")

    with budget.held(10**9):  # larger than the budget: takes all of it
        assert budget.used == 100
        waiter = threading.Thread(target=small)
        waiter.start()
        waiter.join(0.05)
        assert waiter.is_alive() and order == []  # waits for the large one
    waiter.join(5)
    assert order == ["small"] and budget.used == 0
    assert master_pixels(cutout()) == 120 * 90 and master_pixels(b"not an image") == 0


def test_a_noncompliant_rendition_says_why_and_that_an_earlier_one_is_left_at_its_name() -> None:
    storage, vendor = memory_buckets(), CutoutProcessor()
    memory_batch(storage, vendor, FIXED)  # compliant: written
    earlier = storage.info("dst", "out/amazon/a.jpg")
    _, _, rows = memory_batch(storage, vendor, WRONG)  # the spec changed: rendered again, non-compliant
    entry = by_source(rows)["a.png"]["renditions"][0]
    assert entry["status"] == "rejected" and entry["error_code"] == "rendition_noncompliant"
    # before: no error_message at all, and nothing said the earlier rendition is still at the name
    message = entry["error_message"]
    assert message.startswith("non-compliant (") and "border_white" in message and "not written" in message
    assert f"(generation {earlier.generation}) is left as it was" in message
    assert storage.info("dst", "out/amazon/a.jpg").generation == earlier.generation


# -- Memory: a render-only flight reads its stored master only in its turn of the budget


class AskedBudget(PixelBudget):
    """A :class:`PixelBudget` noting the pixels each flight asks for (``asked``, released once per ask)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.pixels: list[int] = []
        self.asked = threading.Semaphore(0)

    @contextlib.contextmanager
    def held(self, pixels: int) -> Iterator[None]:
        self.pixels.append(pixels)
        self.asked.release()
        with super().held(pixels):
            yield


class HeldWrites(MemoryStorage):
    """Rendition writes wait for ``release``; ``writing`` is set when the first one starts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.writing, self.release = threading.Event(), threading.Event()

    def write(self, bucket: str, name: str, data: bytes, **kw: Any) -> ObjectInfo:
        if name.startswith("out/web/"):
            self.writing.set()
            assert self.release.wait(10)
        return super().write(bucket, name, data, **kw)


class ReplacedAfterHead(MemoryStorage):
    """Each header read is followed by a new generation of the object (same bytes): another writer."""

    def read_head(self, bucket: str, name: str, nbytes: int, *, generation: int | None = None) -> bytes:
        head = super().read_head(bucket, name, nbytes, generation=generation)
        self.put(bucket, name, self.buckets[bucket][name].data)
        return head


def noisy_master(seed: int = 0) -> bytes:
    """A 300x300 cut-out of noise: a PNG larger than a header read (a smaller one is read whole at once)."""
    image = Image.frombytes("RGBA", (300, 300), random.Random(seed).randbytes(300 * 300 * 4))
    out = io.BytesIO()
    image.save(out, format="PNG")
    assert len(out.getvalue()) > HEADER_BYTES
    return out.getvalue()


def render_only_runner(
    storage: MemoryStorage, budget: PixelBudget | None = None
) -> tuple[BatchRunner, ManifestWriter]:
    """A render-only batch of ``storage``'s raw/ masters (its request counts reset after planning)."""
    plan = render_only_plan(storage, "src", "dst", WEB)  # type: ignore[arg-type]
    storage.requests.clear()
    storage.reads.clear()
    manifest = ManifestWriter()
    runner = BatchRunner(storage, RenderProcessor(), plan, manifest)  # type: ignore[arg-type]
    if budget is not None:
        runner._stage = replace(runner._stage, budget=budget)
    return runner, manifest


def test_a_render_only_flight_reads_its_master_only_in_its_turn_of_the_render_budget() -> None:
    storage = HeldWrites({"raw/a.png": noisy_master(1), "raw/b.png": noisy_master(2)})
    budget = AskedBudget(300 * 300)  # one master at a time
    runner, manifest = render_only_runner(storage, budget)
    read_while_waiting: list[str] = []

    def look_while_a_renders() -> None:
        assert storage.writing.wait(10) and budget.asked.acquire(timeout=10)  # a.png in its turn
        assert budget.asked.acquire(timeout=10)  # and b.png waiting for its turn
        read_while_waiting.extend(name for _, name in storage.reads)
        storage.release.set()

    helper = threading.Thread(target=look_while_a_renders)
    helper.start()
    asyncio.run(runner.run())
    helper.join(10)
    assert [row["status"] for row in read_manifest(manifest.getvalue())] == ["done", "done"]
    # before: ['raw/a.png', 'raw/b.png']: b.png's flight held its whole master while it waited
    assert read_while_waiting == ["raw/a.png"]
    assert budget.pixels == [300 * 300] * 2  # each turn sized from its header read
    assert storage.requests["read_head"] == 2 and storage.reads == [
        ("src", "raw/a.png"),
        ("src", "raw/b.png"),
    ]
    assert storage.names("dst", "out/web/") == ["out/web/a.webp", "out/web/b.webp"]


def test_a_small_master_is_read_whole_in_one_request() -> None:
    storage = MemoryStorage({"raw/a.png": cutout()})
    assert len(cutout()) <= HEADER_BYTES
    runner, manifest = render_only_runner(storage)
    asyncio.run(runner.run())
    assert [row["status"] for row in read_manifest(manifest.getvalue())] == ["done"]
    assert storage.requests["read"] == 1 and storage.requests["read_head"] == 0


def test_a_master_replaced_between_its_header_and_its_full_read_fails_unrendered() -> None:
    storage = ReplacedAfterHead({"raw/a.png": noisy_master()})
    runner, manifest = render_only_runner(storage)
    asyncio.run(runner.run())
    [row] = read_manifest(manifest.getvalue())
    # the full read is pinned to the planned generation: the one the header read sized is the one rendered
    assert (row["status"], row["error_code"]) == ("failed", "ObjectChangedError")
    assert row["error_message"].startswith("the master could not be read (nothing paid): ")
    assert row["master"]["status"] == "failed" and storage.names("dst", "out/web/") == []


def test_a_master_whose_header_is_past_the_header_read_takes_the_whole_budget() -> None:
    # a JPEG with 100 KB of ICC profile before its frame header: its size is unknown from 64 KiB
    jpeg = io.BytesIO()
    Image.new("RGB", (120, 90), "white").save(jpeg, format="JPEG", icc_profile=bytes(100_000))
    storage, budget = MemoryStorage({"raw/a.jpg": jpeg.getvalue()}), AskedBudget(10**6)
    assert master_pixels(jpeg.getvalue()[:HEADER_BYTES]) == 0
    runner, _ = render_only_runner(storage, budget)
    asyncio.run(runner.run())
    assert budget.pixels == [10**6] and storage.requests["read_head"] == 1
