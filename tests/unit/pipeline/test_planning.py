"""Planning's local checks: the estimate and the run agree on truncated files (issue 10, pre-flight honesty).

A file planning already holds whole (at most ``HEADER_BYTES``, or read whole because its header lay
further in) is decoded in full there, with the run's own check, so a truncated one is rejected at
planning with the run's code and message. A larger one is billable but counted as checked by header
only; the run then rejects a truncated body locally, before any vendor call. Planning's GCS requests
stay what they were: one header read per source (and a whole read only for a header beyond it).

The first tests use an in-memory stand-in for the storage that counts requests
(:mod:`tests.support.memory_storage`); the last one runs planning against fake-gcs-server.
"""

from __future__ import annotations

import asyncio
import io
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from airflow_provider_bgremoval.exceptions import InputRejectedError, InvalidOptionError
from airflow_provider_bgremoval.hooks.poof import PoofHook
from airflow_provider_bgremoval.imaging import InputLimits, prepare_input
from airflow_provider_bgremoval.pipeline import planning
from airflow_provider_bgremoval.pipeline.planning import (
    FULL_CHECK_MAX_PIXELS,
    HEADER_BYTES,
    META_OPTIONS_HASH,
    META_SOURCE,
    META_SOURCE_GENERATION,
    META_VENDOR,
    WINDOW,
    BatchPlan,
    BatchSpec,
    DestinationCollisionError,
    OutputIdentity,
    PlannedOutcome,
    check_plan,
    check_source,
    iter_sources,
    list_sources,
    outputs_between,
    plan_batch,
    ranges_outside,
)
from airflow_provider_bgremoval.pipeline.processors import RenderProcessor
from airflow_provider_bgremoval.pipeline.rendering import RenditionLayout
from airflow_provider_bgremoval.renditions.spec import parse_renditions
from airflow_provider_bgremoval.storage.exceptions import StoragePermissionError
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo
from airflow_provider_bgremoval.vendors.poof import PoofWire
from tests.support.connections import SleepRecorder, set_connection
from tests.support.memory_storage import MemoryStorage

LIMITS = PoofWire.spec.limits
VENDOR = "poof"
IDENTITY = OutputIdentity(((VENDOR, "fp"),))


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _plan(objects: dict[str, bytes], **kwargs: Any) -> tuple[BatchPlan, MemoryStorage]:
    """Plan ``objects`` in memory (``kwargs``: more of ``plan_batch``'s arguments, ``limits`` included)."""
    storage = MemoryStorage(objects)
    plan = asyncio.run(
        plan_batch(
            storage,  # type: ignore[arg-type]
            BatchSpec(source_bucket="src", destination_bucket="dst"),
            extension=".png",
            identity=IDENTITY,
            **{"limits": LIMITS, **kwargs},
        )
    )
    return plan, storage


def _run_verdict(data: bytes) -> InputRejectedError:
    """What the run says about ``data``: the local check prepare_input makes before any call."""
    with pytest.raises(InputRejectedError) as info:
        prepare_input(data, LIMITS, vendor=VENDOR)
    return info.value


@pytest.fixture(scope="module")
def photos(images_dir: Path) -> dict[str, bytes]:
    data = {name: (images_dir / name).read_bytes() for name in ("horse.png", "astronaut.jpg")}
    data.update({name: (images_dir / name).read_bytes() for name in ("rocket.jpg", "chelsea.png")})
    assert len(data["horse.png"]) <= HEADER_BYTES and len(data["astronaut.jpg"]) <= HEADER_BYTES
    assert len(data["rocket.jpg"]) > HEADER_BYTES and len(data["chelsea.png"]) > HEADER_BYTES
    return data


def _truncated(data: bytes, keep: int | None = None) -> bytes:
    return data[: keep if keep is not None else len(data) * 2 // 3]


def test_truncated_small_files_are_rejected_at_planning_with_the_runs_verdict(
    photos: dict[str, bytes],
) -> None:
    objects = {f"cut-{name}": _truncated(photos[name]) for name in ("horse.png", "astronaut.jpg")}
    plan, storage = _plan(objects)
    assert plan.items == []
    rejected = {outcome.source.name: outcome for outcome in plan.settled}
    for name, data in objects.items():
        run = _run_verdict(data)
        assert run.code == "malformed_image"
        assert (rejected[name].status, rejected[name].code, rejected[name].message) == (
            "rejected",
            run.code,
            run.message,
        )
    assert storage.requests["read_head"] == 2
    assert storage.requests["read"] == 0


def test_truncated_large_files_are_billable_but_counted_as_checked_by_header_only(
    photos: dict[str, bytes],
) -> None:
    objects = {
        f"cut-{name}": _truncated(photos[name], HEADER_BYTES + 20_000)
        for name in ("rocket.jpg", "chelsea.png")
    }
    plan, storage = _plan(objects)
    assert [item.source.name for item in plan.items] == sorted(objects)
    assert [item.fully_checked for item in plan.items] == [False, False]
    assert plan.unverified_by_header_only == 2
    for data in objects.values():  # the run finds the damage and rejects locally (no vendor call)
        assert _run_verdict(data).code == "malformed_image"
    assert (storage.requests["read_head"], storage.requests["read"]) == (2, 0)


def test_intact_files_small_are_fully_checked_large_by_header(photos: dict[str, bytes]) -> None:
    plan, _ = _plan(dict(photos))
    checked = {item.source.name: item.fully_checked for item in plan.items}
    assert checked == {"astronaut.jpg": True, "horse.png": True, "chelsea.png": False, "rocket.jpg": False}
    assert plan.unverified_by_header_only == 2
    assert plan.header_only_among(2) == 1  # astronaut.jpg, chelsea.png in listing order


def test_planning_makes_the_same_gcs_requests_as_a_header_only_check(photos: dict[str, bytes]) -> None:
    objects = dict(photos)
    objects.update({f"cut-{name}": _truncated(data) for name, data in photos.items()})
    objects["empty.png"] = b""
    objects["notes.jpg"] = b"<html>not an image</html>"
    plan, storage = _plan(objects)
    # one listing of the sources, one name-range listing of their outputs, one header read per source
    assert storage.requests == {"list": 2, "read_head": len(objects)}
    codes = {o.source.name: o.code for o in plan.settled}
    assert codes == {
        "cut-astronaut.jpg": "malformed_image",
        "cut-horse.png": "malformed_image",
        "empty.png": "empty_file",
        "notes.jpg": "unsupported_image",
    }
    assert len(plan.items) == 6
    assert plan.unverified_by_header_only == 4  # the four large ones, intact or cut


def _jpeg_with_late_header(size: tuple[int, int] = (64, 64)) -> bytes:
    """A JPEG whose frame header lies beyond the first HEADER_BYTES (a 100 KB ICC profile first)."""
    data = _save(Image.new("RGB", size, "teal"), "JPEG", icc_profile=b"\x00" * 100_000)
    assert data.find(b"\xff\xc0") > HEADER_BYTES
    return data


def test_a_header_beyond_the_first_bytes_is_read_whole_and_then_fully_checked() -> None:
    intact = _jpeg_with_late_header()
    cut = intact[:-300]
    plan, storage = _plan({"late.jpg": intact, "late-cut.jpg": cut})
    assert [(item.source.name, item.fully_checked) for item in plan.items] == [("late.jpg", True)]
    [rejected] = plan.settled
    assert (rejected.source.name, rejected.code, rejected.message) == (
        "late-cut.jpg",
        "malformed_image",
        _run_verdict(cut).message,
    )
    assert (storage.requests["read_head"], storage.requests["read"]) == (2, 2)  # as before


def test_a_small_file_declaring_many_pixels_is_checked_by_header_only() -> None:
    """A few KiB of flat colour can declare megapixels: planning bounds the memory of its decode."""
    side = int(FULL_CHECK_MAX_PIXELS**0.5) + 10
    flat = _save(Image.new("L", (side, side), 128), "PNG")
    assert len(flat) <= HEADER_BYTES
    small = _save(Image.new("L", (200, 200), 128), "PNG")
    plan, _ = _plan({"flat.png": flat, "small.png": small})
    assert {item.source.name: item.fully_checked for item in plan.items} == {
        "flat.png": False,
        "small.png": True,
    }


def test_conversions_do_not_reject(photos: dict[str, bytes]) -> None:
    cmyk = _save(Image.new("CMYK", (80, 60), (0, 255, 255, 0)), "JPEG")
    gray16 = _save(Image.new("I;16", (80, 60), 30_000), "PNG")
    frames = [Image.new("RGB", (80, 60), c) for c in ("red", "blue")]
    gif = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    plan, _ = _plan({"cmyk.jpg": cmyk, "gray16.png": gray16, "anim.gif": gif})
    assert plan.settled == []
    assert all(item.fully_checked for item in plan.items)


def test_check_source_verdicts(photos: dict[str, bytes]) -> None:
    storage = MemoryStorage({"a.png": photos["horse.png"], "b.png": _truncated(photos["horse.png"])})

    def verdict(name: str) -> Any:
        info = storage.info("src", name)
        return check_source(storage, info, LIMITS, VENDOR)  # type: ignore[arg-type]

    checked = verdict("a.png")  # no rejection, and fully checked
    assert checked.fully_checked is True
    assert (checked.info.width, checked.info.height) == Image.open(io.BytesIO(photos["horse.png"])).size
    with pytest.raises(InputRejectedError) as rejection:
        verdict("b.png")
    assert rejection.value.code == "malformed_image"


# -- windows, finished-output look-ups and collisions (issue 12) ---------------------------------------

DONE_META = {META_OPTIONS_HASH: "fp", META_VENDOR: VENDOR}


@pytest.fixture(scope="module")
def tiny_png() -> bytes:
    return _save(Image.new("RGB", (16, 16), "white"), "PNG")


def _plan_in(storage: MemoryStorage, spec: BatchSpec) -> BatchPlan:
    return asyncio.run(
        plan_batch(
            storage,  # type: ignore[arg-type]
            spec,
            extension=".png",
            identity=IDENTITY,
            limits=LIMITS,
        )
    )


def _finish(storage: MemoryStorage, spec: BatchSpec, source: str, output: str) -> None:
    """Store ``output`` as this batch's finished output of ``source``."""
    info = storage.info(spec.source_bucket, source)
    meta = {**DONE_META, META_SOURCE: info.uri, META_SOURCE_GENERATION: str(info.generation)}
    storage.put(spec.destination_bucket, output, b"cut-out", meta)


def _claims(storage: MemoryStorage, bucket: str, internal: str, count: int) -> None:
    """``count`` claim objects in the provider's internal folder, as a busy destination holds."""
    for number in range(count):
        storage.put(bucket, f"{internal}claims/{number:05d}.json", b"{}")


def _destination_listings(storage: MemoryStorage) -> list[tuple[str | None, str | None]]:
    return [(start, end) for bucket, _, start, end in storage.listings if bucket == "dst"]


def test_sources_are_planned_in_windows_with_name_range_output_lookups(tiny_png: bytes) -> None:
    """2,500 sources: three windows, each finding its finished outputs with one name-range listing."""
    names = [f"raw/P-{i:04d}.jpg" for i in range(600)] + [f"raw/p-{i:04d}.jpg" for i in range(1900)]
    storage = MemoryStorage(dict.fromkeys(names, tiny_png))
    spec = BatchSpec(
        source_bucket="src", source_prefix="raw/", destination_bucket="dst", destination_prefix="cut/"
    )
    finished = names[::10]  # a tenth already done, in every window
    for name in finished:
        _finish(storage, spec, name, "cut/" + name.removeprefix("raw/").replace(".jpg", ".png"))
    _claims(storage, "dst", spec.internal_prefix, 3000)  # "cut/_bgremoval/" sorts between P- and p-
    storage.put("dst", "cut/notes.txt", b"a foreign object inside a window's range")

    plan = _plan_in(storage, spec)

    assert WINDOW == 1000
    assert plan.total == len(names) and plan.count("skipped") == len(finished)
    assert plan.billable == len(names) - len(finished)
    assert {o.code for o in plan.settled} == {"already_done"}
    # window 1 = P-0000..P-0599 + p-0000..p-0399 spans the internal folder: its range is split around it
    assert _destination_listings(storage) == [
        ("cut/P-0000.png", "cut/_bgremoval/"),
        ("cut/_bgremoval0", "cut/p-0399.png\0"),
        ("cut/p-0400.png", "cut/p-1399.png\0"),
        ("cut/p-1400.png", "cut/p-1899.png\0"),
    ]
    listed_outputs = sorted(name for name in storage.listed if name.startswith("cut/"))
    internal = storage.names("dst", spec.internal_prefix)
    assert len(internal) == 3000 and not set(listed_outputs) & set(internal)
    assert listed_outputs == [name for name in storage.names("dst") if name not in internal]  # each once
    # 3 source pages + 4 output ranges of < 1,000 names; one header read per unfinished source
    assert storage.requests == {"list": 7, "read_head": plan.billable}


def test_a_range_over_the_internal_folder_at_the_destination_root(tiny_png: bytes) -> None:
    """Destination prefix "": ``Z.png`` < ``_bgremoval/`` < ``a.png``; the claims are never listed."""
    storage = MemoryStorage(dict.fromkeys(["Z.jpg", "_bgremoval.jpg", "_bgremoval0.jpg", "a.jpg"], tiny_png))
    spec = BatchSpec(source_bucket="src", destination_bucket="dst")
    assert spec.internal_prefix == "_bgremoval/"
    for source in ("Z.jpg", "_bgremoval.jpg", "_bgremoval0.jpg", "a.jpg"):
        _finish(storage, spec, source, source.replace(".jpg", ".png"))
    _claims(storage, "dst", spec.internal_prefix, 5000)

    plan = _plan_in(storage, spec)

    assert plan.billable == 0
    assert sorted(o.source.name for o in plan.settled if o.code == "already_done") == sorted(
        ["Z.jpg", "_bgremoval.jpg", "_bgremoval0.jpg", "a.jpg"]
    )
    dst_listed = [name for name in storage.listed if name in storage.buckets["dst"]]
    assert sorted(dst_listed) == ["Z.png", "_bgremoval.png", "_bgremoval0.png", "a.png"]  # not one claim
    assert _destination_listings(storage) == [("Z.png", "_bgremoval/"), ("_bgremoval0", "a.png\0")]
    assert storage.requests["list"] == 3


def test_outputs_between_yields_the_range_and_nothing_of_the_provider() -> None:
    storage = MemoryStorage()
    spec = BatchSpec(source_bucket="src", destination_bucket="dst", destination_prefix="out")
    inside = [
        "out/Y.png",
        "out/Z.png",
        "out/_bgremoval",
        "out/_bgremoval.png",
        "out/_bgremoval0.png",
        "out/a.png",
    ]
    outside = ["out/X.png", "out/b.png", "outX.png", "other/Z.png"]
    for name in [*inside, *outside]:
        storage.put("dst", name, b"x")
    _claims(storage, "dst", "out/_bgremoval/", 50)
    storage.put("dst", "out/_bgremoval/reports/r/report.json", b"{}")

    found = [info.name for info in outputs_between(storage, spec, "out/Y.png", "out/a.png")]  # type: ignore[arg-type]

    assert found == inside
    assert not [name for name in storage.listed if name.startswith("out/_bgremoval/")]
    # a range that does not reach the internal folder is one listing
    storage.listings.clear()
    assert [i.name for i in outputs_between(storage, spec, "out/a.png", "out/b.png")] == [
        "out/a.png",
        "out/b.png",
    ]  # type: ignore[arg-type]
    assert storage.listings == [("dst", "out/", "out/a.png", "out/b.png\0")]


def test_ranges_outside_leave_out_the_folder_only() -> None:
    assert ranges_outside("o/_b/", "o/", None) == [("o/", "o/_b/"), ("o/_b0", None)]
    assert ranges_outside("o/_b/", "o/a", "o/b") == [("o/a", "o/b")]  # past the folder: one range
    assert ranges_outside("o/_b/", "o/A", "o/B") == [("o/A", "o/B")]  # before it
    assert ranges_outside("o/_b/", "o/_b/x", "o/_b/y") == []  # inside it: nothing to list
    assert ranges_outside("o/_b/", "o/_b/x", "o/c") == [("o/_b0", "o/c")]


def test_a_prefix_holding_another_jobs_internal_folder_plans_none_of_it() -> None:
    """
    The generate example reads the removal's cut-outs: their ``_bgremoval/`` folder holds the run
    report's ``contact-sheet.png``, which ``include="*.png"`` matches. It is passed over, not rejected
    (a rejection failed a ``fail_at_end`` task on every run after a removal's report).
    """
    png = _save(Image.new("RGBA", (64, 64), (255, 0, 0, 255)), "PNG")
    storage = MemoryStorage()
    storage.put("shop", "cutouts/a.png", png)
    storage.put("shop", "cutouts/_bgremoval/reports/d/r/contact-sheet.png", png)
    spec = BatchSpec(
        source_bucket="shop", source_prefix="cutouts/", destination_bucket="scenes", include="*.png"
    )
    plan = asyncio.run(
        plan_batch(storage, spec, extension=".jpg", identity=IDENTITY, limits=LIMITS)  # type: ignore[arg-type]
    )
    assert [item.source.name for item in plan.items] == ["cutouts/a.png"] and plan.settled == []
    assert storage.requests["list"] == 2  # no request more: one listing of the sources, one of outputs


def test_a_listing_of_outputs_as_sources_skips_the_providers_folder() -> None:
    """A render job reading a bucket job's outputs never pages through its claims, plans and manifests."""
    storage = MemoryStorage()
    spec = BatchSpec(source_bucket="masters", destination_bucket="renditions", source_prefix="cutouts/")
    names = ["cutouts/A.png", "cutouts/_bgremoval.png", "cutouts/a.png", "cutouts/z/_bgremoval/x.png"]
    for name in names:
        storage.put("masters", name, b"x")
    _claims(storage, "masters", "cutouts/_bgremoval/", 50)

    assert [name for name, _ in iter_sources(storage, spec, outputs=True)] == names  # type: ignore[arg-type]
    assert not [name for name in storage.listed if name.startswith("cutouts/_bgremoval/")]
    assert len(storage.listings) == 2  # the name ranges either side of the provider's folder


def test_list_sources_lists_around_every_skipped_folder() -> None:
    """The shard lister's listing: the name ranges around each folder left out, nested ones included."""
    storage = MemoryStorage()
    names = [
        "p/_bgremoval/m.jsonl",
        "p/a.png",
        "p/cut.png",
        "p/cut/x.png",
        "p/cut/_bgremoval/c",
        "p/cut0.png",
    ]
    for name in names:
        storage.put("b", name, b"x")
    skip = ["p/_bgremoval/", "p/cut/"]

    found = [info.name for info in list_sources(storage, "b", "p/", skip=skip)]  # type: ignore[arg-type]

    assert found == ["p/a.png", "p/cut.png", "p/cut0.png"]
    assert not [name for name in storage.listed if name.startswith(tuple(skip))]
    assert storage.listings == [
        ("b", "p/", None, "p/_bgremoval/"),
        ("b", "p/", "p/_bgremoval0", "p/cut/"),
        ("b", "p/", "p/cut0", None),
    ]
    assert list(list_sources(storage, "b", "", skip=[""])) == []  # type: ignore[arg-type]  # all skipped


def test_explicit_names_inside_the_destination_in_the_source_prefix_are_rejected_not_billed(
    tiny_png: bytes,
) -> None:
    """
    Same bucket, outputs inside the source prefix: a listing is refused at parse; explicit names (a
    listing's shards) inside the destination prefix, its ``_bgremoval/`` folder or the masters prefix
    are an earlier run's outputs, rejected as unsafe names with no read, so an output is never paid for
    again as a source (it would make ``2026/cutouts/cutouts/shoe.png``).
    """
    storage = MemoryStorage(dict.fromkeys(["2026/shoe.png", "2026/hat.png"], tiny_png), bucket="shop")
    layout: dict[str, Any] = {
        "source_bucket": "shop",
        "destination_bucket": "shop",
        "source_prefix": "2026/",
        "destination_prefix": "2026/cutouts/",
    }
    with pytest.raises(InvalidOptionError, match=r"destination_prefix.*lies inside the source prefix"):
        BatchSpec(**layout)
    outputs = ["gs://shop/2026/cutouts/shoe.png", "cutouts/_bgremoval/claims/0.json"]  # URI, relative
    spec = BatchSpec(**layout, source_objects=[*outputs, "2026/hat.png", "2026/shoe.png"])
    shoe = storage.info("shop", "2026/shoe.png")  # its cut-out, a real PNG an earlier run made
    meta = {**DONE_META, META_SOURCE: shoe.uri, META_SOURCE_GENERATION: str(shoe.generation)}
    storage.put("shop", "2026/cutouts/shoe.png", tiny_png, meta)
    storage.put("shop", "2026/cutouts/_bgremoval/claims/0.json", b"{}")

    plan = _plan_in(storage, spec)

    assert [item.source.name for item in plan.items] == ["2026/hat.png"]
    verdicts = {o.source.name: (o.status, o.code, o.kind) for o in plan.settled}
    assert verdicts == {
        "2026/cutouts/shoe.png": ("rejected", "unsafe_name", "rejected_locally"),
        "2026/cutouts/_bgremoval/claims/0.json": ("rejected", "unsafe_name", "rejected_locally"),
        "2026/shoe.png": ("skipped", "already_done", "already_done"),
    }
    message = next(o.message for o in plan.settled if o.source.name == "2026/cutouts/shoe.png")
    assert message == (
        "gs://shop/2026/cutouts/shoe.png is inside the output prefix gs://shop/2026/cutouts/: "
        "an output is never read back as a source"
    )
    assert storage.requests["read_head"] == 1  # the photo only: no output is read
    assert spec.read_back == ("2026/cutouts/",)

    masters = BatchSpec(
        **{**layout, "destination_prefix": "web/"}, masters_prefix="2026/m/", source_objects=["2026/m/a.png"]
    )
    assert masters.read_back == ("2026/m/",)
    storage.put("shop", "2026/m/a.png", tiny_png)
    assert [(o.code, o.source.name) for o in _plan_in(storage, masters).settled] == [
        ("unsafe_name", "2026/m/a.png")
    ]
    # outputs outside the source prefix, or in another bucket: nothing is read back
    assert (
        BatchSpec(**{**layout, "source_prefix": "2026/raw/", "destination_prefix": "2026/"}).read_back == ()
    )
    assert BatchSpec(**{**layout, "destination_bucket": "cut"}).read_back == ()


def _collisions(excinfo: pytest.ExceptionInfo[DestinationCollisionError]) -> list[tuple[str, str, str]]:
    """The ``(earlier source, later source, output)`` triples the error names."""
    return re.findall(r"'([^']*)' and '([^']*)' -> '([^']*)'", str(excinfo.value))


def test_collisions_within_a_window_and_across_window_boundaries(tiny_png: bytes) -> None:
    names = [f"f-{i:04d}.jpg" for i in range(900)]
    names += ["a.jpg", "a.png", "b", "b.png", "c.jp.png", "c.jpeg", "c.png", "d.jpg", "d.jpg.png"]
    names += ["k.0", *(f"k.1/{i:04d}.jpg" for i in range(1200)), "k.2"]  # 1,200 names between k.0 and k.2
    names += ["zz.jpg", "zz.png"]
    ordered = sorted(names)
    assert ordered.index("k.0") < WINDOW <= 2 * WINDOW <= ordered.index("k.2")  # windows 1 and 3
    storage = MemoryStorage(dict.fromkeys(names, tiny_png))

    with pytest.raises(DestinationCollisionError) as excinfo:
        _plan_in(storage, BatchSpec(source_bucket="src", destination_bucket="dst"))

    assert excinfo.value.code == "destination_collision"
    assert _collisions(excinfo) == [
        ("a.jpg", "a.png", "a.png"),
        ("b", "b.png", "b.png"),
        ("c.jpeg", "c.png", "c.png"),  # c.jp.png -> c.jp.png, listed between them, collides with nothing
        ("k.0", "k.2", "k.png"),
        ("zz.jpg", "zz.png", "zz.png"),
    ]
    assert str(excinfo.value).startswith(
        "[destination_collision] 5 source(s) would overwrite another source's output"
    )


def test_a_collision_at_a_window_boundary(tiny_png: bytes) -> None:
    names = [f"f-{i:04d}.jpg" for i in range(WINDOW - 1)] + ["g.jpg", "g.webp"]  # g.jpg ends window 1
    storage = MemoryStorage(dict.fromkeys(names, tiny_png))
    with pytest.raises(DestinationCollisionError) as excinfo:
        _plan_in(storage, BatchSpec(source_bucket="src", destination_bucket="dst"))
    assert _collisions(excinfo) == [("g.jpg", "g.webp", "g.png")]


def test_more_than_ten_collisions_are_counted_and_the_first_ten_named(tiny_png: bytes) -> None:
    names = [f"{i:02d}.{ext}" for i in range(12) for ext in ("jpg", "png")]
    storage = MemoryStorage(dict.fromkeys(names, tiny_png))
    with pytest.raises(DestinationCollisionError, match=r"\] 12 source\(s\).*\(and 2 more\)") as excinfo:
        _plan_in(storage, BatchSpec(source_bucket="src", destination_bucket="dst"))
    assert len(_collisions(excinfo)) == 10


def test_explicit_source_objects_in_any_order_still_find_collisions(tiny_png: bytes) -> None:
    names = [f"n-{i:04d}.jpg" for i in range(1500)] + ["x.jpg", "x.png", "y", "y.webp"]
    storage = MemoryStorage(dict.fromkeys(names, tiny_png))
    shuffled = ["x.png", *random.Random(12).sample(names[:1500], 1500), "y.webp", "gs://src/y", "x.jpg"]
    with pytest.raises(DestinationCollisionError) as excinfo:
        _plan_in(storage, BatchSpec(source_bucket="src", destination_bucket="dst", source_objects=shuffled))
    assert _collisions(excinfo) == [("y.webp", "y", "y.png"), ("x.png", "x.jpg", "x.png")]


def test_explicit_source_objects_find_their_finished_outputs(tiny_png: bytes) -> None:
    """Unordered names: a few are looked up one by one, a large window by one name range."""
    names = [f"n-{i:04d}.jpg" for i in range(1200)]
    storage = MemoryStorage(dict.fromkeys(names, tiny_png))
    spec_few = BatchSpec(
        source_bucket="src", destination_bucket="dst", source_objects=["n-0007.jpg", "n-0003.jpg"]
    )
    _finish(storage, spec_few, "n-0003.jpg", "n-0003.png")
    plan = _plan_in(storage, spec_few)
    assert [i.source.name for i in plan.items] == ["n-0007.jpg"]
    assert [(o.source.name, o.code) for o in plan.settled] == [("n-0003.jpg", "already_done")]
    assert storage.requests == {"stat": 4, "read_head": 1}  # 2 sources + 2 outputs, no listing

    for name in names[::7]:
        if name != "n-0003.jpg":
            _finish(storage, spec_few, name, name.replace(".jpg", ".png"))
    storage.requests.clear()
    shuffled = random.Random(3).sample(names, len(names))
    plan = _plan_in(
        storage, BatchSpec(source_bucket="src", destination_bucket="dst", source_objects=shuffled)
    )
    done = {o.source.name for o in plan.settled if o.code == "already_done"}
    assert done == {*names[::7], "n-0003.jpg"}
    assert [i.source.name for i in plan.items] == [n for n in shuffled if n not in done]  # the given order
    assert storage.requests["list"] == 2  # one range per window of 1,000 (then 200) names
    assert storage.requests["stat"] == len(names)  # each given source is looked up (the listing is skipped)


def test_an_explicit_source_that_cannot_be_looked_up_fails_alone_at_planning(
    tiny_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stat that raises (a permission, GCS down after its retries) fails that source, not the plan."""
    storage = MemoryStorage(dict.fromkeys(["a.png", "b.png", "c.png"], tiny_png))
    stat = storage.stat

    def denied_for_b(bucket: str, name: str) -> ObjectInfo | None:
        if name == "b.png":
            raise StoragePermissionError("reading gs://src/b.png: 403 denied", bucket=bucket, name=name)
        return stat(bucket, name)

    monkeypatch.setattr(storage, "stat", denied_for_b)
    names = ["a.png", "b.png", "gone.png", "c.png"]
    plan = _plan_in(storage, BatchSpec(source_bucket="src", destination_bucket="dst", source_objects=names))

    assert [item.source.name for item in plan.items] == ["a.png", "c.png"]
    verdicts = {o.source.name: (o.status, o.code) for o in plan.settled}
    assert verdicts == {
        "b.png": ("failed", "StoragePermissionError"),
        "gone.png": ("rejected", "not_found"),
    }
    [failed] = [o for o in plan.settled if o.status == "failed"]
    assert failed.message == (
        "the source could not be looked up at planning, so it was not planned (nothing sent or paid; "
        "the next run plans it again): reading gs://src/b.png: 403 denied"
    )


def test_the_collision_check_of_a_listing_holds_only_the_stems_on_the_current_path() -> None:
    """Bounded memory: a listing is in name order, so a stem no prefix of the current name is dropped."""
    ordered = planning._Collisions(ordered=True)
    for i in range(3000):
        name = f"d{i // 1000}/{i:05d}.jpg"
        assert ordered.first(name, name[:-4], name[:-4] + ".png") is None
        assert len(ordered.open) == 1
    assert ordered.first("e.0", "e", "e.png") is None
    assert ordered.first("e.1/x.jpg", "e.1/x", "e.1/x.png") is None
    assert len(ordered.open) == 2  # e stays open below e.1/x: e.2 may still come
    assert ordered.first("e.2", "e", "e.png") == "e.0"
    explicit = planning._Collisions(ordered=False)  # any order: every destination is kept
    for name in ("b.jpg", "a.jpg", "c.jpg"):
        explicit.first(name, name[:-4], name[:-4] + ".png")
    assert len(explicit.open) == 3
    explicit.raise_if_any()  # none found: no error


# -- against fake-gcs-server, and the run's own hook ------------------------------------------------


@pytest.mark.integration
def test_plan_on_gcs_agrees_with_the_hooks_local_check(
    photos: dict[str, bytes],
    gcs_storage: GcsStorage,
    gcs_bucket_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real range reads, and the run's verdict taken from the vendor hook itself (0 vendor requests)."""
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    objects = {
        "small-cut.png": _truncated(photos["horse.png"]),
        "small.jpg": photos["astronaut.jpg"],
        "large-cut.jpg": _truncated(photos["rocket.jpg"], HEADER_BYTES + 20_000),
        "large.png": photos["chelsea.png"],
    }
    for name, data in objects.items():
        gcs_storage.write(src, name, data, content_type="application/octet-stream")
    plan = asyncio.run(
        plan_batch(
            gcs_storage,
            BatchSpec(source_bucket=src, destination_bucket=dst),
            extension=".png",
            identity=IDENTITY,
            limits=LIMITS,
        )
    )
    assert {(i.source.name, i.fully_checked) for i in plan.items} == {
        ("small.jpg", True),
        ("large-cut.jpg", False),
        ("large.png", False),
    }
    assert plan.unverified_by_header_only == 2

    set_connection(monkeypatch, "poof_default", "poof", password="pk_planning_test_0123456789")
    vendor_requests: list[httpx.Request] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        vendor_requests.append(request)
        return httpx.Response(500)

    hook = PoofHook(transport=httpx.MockTransport(vendor), sleep=SleepRecorder())
    [planned_reject] = plan.settled
    for name in ("small-cut.png", "large-cut.jpg"):
        with pytest.raises(InputRejectedError) as info:
            hook.remove_background(gcs_storage.read(src, name), filename=name)
        assert info.value.local is True
        assert info.value.code == "malformed_image"
        if name == planned_reject.source.name:
            assert (planned_reject.code, planned_reject.message) == (info.value.code, info.value.message)
    assert planned_reject.source.name == "small-cut.png"
    assert vendor_requests == []  # nothing was sent, so nothing was charged
    hook.close()


@pytest.mark.integration
def test_output_ranges_on_gcs_skip_the_internal_folder(
    tiny_png: bytes, gcs_storage: GcsStorage, gcs_bucket_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fake-gcs-server honours the name ranges: 1,500 claims at the destination root are never listed."""
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    spec = BatchSpec(source_bucket=src, destination_bucket=dst)
    client = gcs_storage.client
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: client.bucket(dst).blob(f"_bgremoval/claims/{n:05d}").upload_from_string(b"{}"),
                range(1500),
            )
        )
    for name in ("Z.jpg", "a.jpg", "b.jpg"):
        info = gcs_storage.write(src, name, tiny_png, content_type="image/png")
        if name != "b.jpg":
            meta = {**DONE_META, META_SOURCE: info.uri, META_SOURCE_GENERATION: str(info.generation)}
            gcs_storage.write(
                dst, name.replace(".jpg", ".png"), b"cut", content_type="image/png", metadata=meta
            )
    listed: list[tuple[str, int]] = []
    session = gcs_storage.client._http
    real = session.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = real(method, url, *args, **kwargs)
        if method == "GET" and f"/b/{dst}/o?" in url:
            listed.append((url, len(response.json().get("items", []))))
        return response

    monkeypatch.setattr(session, "request", request)
    plan = asyncio.run(plan_batch(gcs_storage, spec, extension=".png", identity=IDENTITY, limits=LIMITS))
    assert [i.source.name for i in plan.items] == ["b.jpg"]
    assert sorted((o.source.name, o.code) for o in plan.settled) == [
        ("Z.jpg", "already_done"),
        ("a.jpg", "already_done"),
    ]
    assert [count for _, count in listed] == [1, 1]  # Z.png, then a.png: no claim in either range
    assert all("startOffset=" in url and "endOffset=" in url for url, _ in listed)


def test_a_finished_output_s_outcome_names_the_vendor_that_made_it(tiny_png: bytes) -> None:
    """The row of an output made earlier names its maker (in a chain: not necessarily the primary)."""
    storage = MemoryStorage({"a.jpg": tiny_png, "b.jpg": tiny_png})
    spec = BatchSpec(source_bucket="src", destination_bucket="dst")
    _finish(storage, spec, "a.jpg", "a.png")
    plan = _plan_in(storage, spec)
    assert [(o.source.name, o.code, o.extra) for o in plan.settled] == [
        ("a.jpg", "already_done", {"vendor": VENDOR})
    ]


# -- Checking an unchecked plan without listing again; which accounts of a chain take each image ---------


def test_checking_an_unchecked_plan_reads_headers_but_lists_nothing_again(photos: dict[str, bytes]) -> None:
    objects = {
        "a.png": photos["horse.png"],
        "b.png": _truncated(photos["horse.png"]),
        "c.jpg": photos["rocket.jpg"],
    }
    storage = MemoryStorage(objects)
    spec = BatchSpec(source_bucket="src", destination_bucket="dst")
    kwargs: dict[str, Any] = {"identity": IDENTITY, "limits": LIMITS}
    unchecked = asyncio.run(plan_batch(storage, spec, extension=".png", check=False, **kwargs))  # type: ignore[arg-type]
    assert unchecked.billable == 3 and storage.requests["read_head"] == 0
    listed = storage.requests["list"]
    storage.requests.clear()
    checked = check_plan(storage, unchecked, **kwargs)  # type: ignore[arg-type]
    assert storage.requests["list"] == 0 and storage.requests["read_head"] == 3
    fresh = asyncio.run(plan_batch(MemoryStorage(objects), spec, extension=".png", **kwargs))  # type: ignore[arg-type]
    assert checked.checked and [i.source.name for i in checked.items] == [i.source.name for i in fresh.items]
    assert [(o.source.name, o.code) for o in checked.settled] == [
        (o.source.name, o.code) for o in fresh.settled
    ]
    assert [i.fully_checked for i in checked.items] == [i.fully_checked for i in fresh.items]
    assert listed >= 2  # the sources and the outputs: what the second pass no longer repeats


def _plan_listed(storage: Any, spec: BatchSpec, listed: list[tuple[str, ObjectInfo | None]]) -> BatchPlan:
    """Plan ``listed`` (a listing taken earlier) with the header checks."""
    plan = BatchPlan(spec=spec)
    kwargs: dict[str, Any] = {"identity": IDENTITY, "limits": LIMITS}
    return planning.plan_into(storage, spec, plan, extension=".png", sources=listed, **kwargs)


def test_a_source_replaced_or_deleted_after_its_listing_fails_alone_at_planning(tiny_png: bytes) -> None:
    """
    The listing is taken, then ``b.png`` is replaced and ``c.png`` deleted before their header checks:
    each is settled failed (``ObjectChangedError``), priced at no generation; the plan goes on with the
    rest, and so does checking a plan kept unchecked.
    """
    storage: Any = MemoryStorage(dict.fromkeys(["a.png", "b.png", "c.png", "d.png"], tiny_png))
    spec = BatchSpec(source_bucket="src", destination_bucket="dst")
    listed = list(iter_sources(storage, spec))
    listed_generation = {name: info.generation for name, info in listed if info is not None}
    kwargs: dict[str, Any] = {"identity": IDENTITY, "limits": LIMITS}
    unchecked = asyncio.run(plan_batch(storage, spec, extension=".png", check=False, **kwargs))
    replaced = storage.put("src", "b.png", tiny_png)
    storage.delete("src", "c.png")

    for plan in (_plan_listed(storage, spec, listed), check_plan(storage, unchecked, **kwargs)):
        assert [item.source.name for item in plan.items] == ["a.png", "d.png"]
        assert plan.total == 4
        failed = {o.source.name: o for o in plan.settled}
        assert sorted(failed) == ["b.png", "c.png"]
        for name, outcome in failed.items():
            verdict = (outcome.status, outcome.code, outcome.kind)
            assert verdict == ("failed", "ObjectChangedError", "rejected_locally")
            assert (outcome.destination, outcome.source.generation) == (name, listed_generation[name])
            assert outcome.message == (
                "the source could not be read for its local check at planning, so it was not planned "
                f"(nothing sent or paid; the next run plans it again): gs://src/{name} generation "
                f"{listed_generation[name]} no longer exists"
            )

    again = _plan_in(storage, spec)  # the next run plans the new generation
    assert [(i.source.name, i.source.generation) for i in again.items] == [
        ("a.png", listed_generation["a.png"]),
        ("b.png", replaced.generation),
        ("d.png", listed_generation["d.png"]),
    ]


@pytest.mark.integration
def test_a_source_replaced_after_its_listing_on_gcs_fails_alone_at_planning(
    tiny_png: bytes, gcs_storage: GcsStorage, gcs_bucket_factory: Any
) -> None:
    """On fake-gcs-server: the pinned range read's ``ObjectChangedError`` names the new generation."""
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    for name in ("a.png", "b.png"):
        gcs_storage.write(src, name, tiny_png, content_type="image/png")
    spec = BatchSpec(source_bucket=src, destination_bucket=dst)
    listed = list(iter_sources(gcs_storage, spec))
    now = gcs_storage.write(src, "b.png", tiny_png, content_type="image/png", if_generation_match=None)

    plan = _plan_listed(gcs_storage, spec, listed)

    assert [item.source.name for item in plan.items] == ["a.png"]
    [outcome] = plan.settled
    assert (outcome.source.name, outcome.status, outcome.code) == ("b.png", "failed", "ObjectChangedError")
    assert outcome.message.endswith(
        f"gs://{src}/b.png generation {outcome.source.generation} no longer exists: the object was replaced "
        f"after it was listed (now generation {now.generation}); list again to process the new version"
    )


def test_the_local_checks_note_which_accounts_of_a_chain_take_each_image() -> None:
    small = _save(Image.new("RGB", (100, 80), "white"), "PNG")
    large = _save(Image.new("RGB", (1200, 900), "white"), "PNG")
    narrow = InputLimits(max_bytes=10_000_000, max_pixels=500_000)
    wide = InputLimits(max_bytes=10_000_000, max_pixels=2_000_000)
    plan, _ = _plan(
        {"a.png": small, "b.png": large}, limits=wide, account_limits=(("pixian", narrow), ("poof", wide))
    )
    assert plan.accepted_among(2) == [0b11, 0b10]  # the large one only the second account takes
    assert plan.accepted_among(1) == [0b11]
    info = planning.read_header(large, vendor="poof")
    assert planning.accepted_by((("pixian", narrow),), info, len(large)) == 0
    assert planning.accepted_by((), info, len(large)) is None  # one set of limits: every account
    # the one check both planning and the batch (before an account's call) run on an account's limits
    refusal = planning.limits_rejection("pixian", narrow, info, len(large))
    assert refusal is not None and (refusal.code, refusal.vendor) == ("too_many_pixels", "pixian")
    assert planning.limits_rejection("poof", wide, info, len(large)) is None


def test_settled_rows_have_one_kind_each() -> None:
    source = ObjectInfo(bucket="src", name="a.png", generation=1, size=1)

    def kind(status: str, code: str, extra: dict[str, Any] | None = None) -> str:
        return PlannedOutcome(source, None, status, code, "", extra).kind

    assert kind("skipped", "already_done") == "already_done"
    assert kind("rejected", "rendition_noncompliant", {"render_only": True}) == "recorded_noncompliant"
    assert kind("rejected", "rendition_noncompliant", {"renditions": []}) == "noncompliant_at_planning"
    for code in ("not_found", "unsafe_name", "output_exists", "malformed_image", "file_too_large"):
        assert kind("rejected", code) == "rejected_locally"
    plan = BatchPlan(spec=BatchSpec(source_bucket="src", destination_bucket="dst"))
    for status, code in (("skipped", "already_done"), ("rejected", "not_found")):
        plan.settle(PlannedOutcome(source, None, status, code, ""))
    assert [plan.count_kind(k) for k in planning.SETTLED_KINDS] == [1, 1, 0, 0]


def test_a_source_whose_output_name_would_be_too_long_for_gcs_is_rejected_unread(tiny_png: bytes) -> None:
    """A 1,020-byte source name under a longer destination prefix: GCS would refuse the output's write
    after the vendor was paid, so planning rejects it (unsafe_name), reads nothing and bills nothing."""
    long_name = "raw/" + "x" * 1012 + ".png"  # 1,020 bytes, as GCS stores it
    storage = MemoryStorage({long_name: tiny_png, "raw/short.png": tiny_png})
    spec = BatchSpec(
        source_bucket="src",
        destination_bucket="dst",
        source_prefix="raw/",
        destination_prefix="cutouts/2026/",
    )

    plan = _plan_in(storage, spec)

    assert [item.destination for item in plan.items] == ["cutouts/2026/short.png"]
    [outcome] = plan.settled
    assert (outcome.source.name, outcome.status, outcome.code) == (long_name, "rejected", "unsafe_name")
    assert "1029 bytes, longer than the 1024 bytes GCS allows" in outcome.message
    assert storage.requests["read_head"] == 1  # the short one only


def test_an_explicit_uri_outside_the_source_prefix_is_refused_not_read_as_another_object(
    tiny_png: bytes,
) -> None:
    """``gs://src/other/x.png`` names that object: the source prefix put before it named ``raw/other/x.png``,
    another object, which was then planned (and paid for) in its place, or reported not found."""
    storage = MemoryStorage({"raw/other/x.png": tiny_png, "other/x.png": tiny_png, "raw/y.png": tiny_png})
    spec = BatchSpec(
        source_bucket="src",
        destination_bucket="dst",
        source_prefix="raw/",
        source_objects=["gs://src/raw/y.png", "gs://src/other/x.png"],
    )
    with pytest.raises(InvalidOptionError, match=r"gs://src/other/x.png is not under the source prefix"):
        _plan_in(storage, spec)
    inside = BatchSpec(**{**spec.__dict__, "source_objects": ["gs://src/raw/y.png", "other/x.png"]})
    assert [item.source.name for item in _plan_in(storage, inside).items] == ["raw/y.png", "raw/other/x.png"]


def test_an_explicit_source_named_twice_is_planned_once_not_refused_as_a_collision(tiny_png: bytes) -> None:
    """``x.png`` and ``gs://src/x.png`` (or one name twice) are one source: one item, one row; the batch
    was refused whole ("1 source(s) would overwrite another source's output: 'x.png' and 'x.png'")."""
    storage = MemoryStorage({"x.png": tiny_png, "y.png": tiny_png})
    names = ["x.png", "y.png", "gs://src/x.png", "x.png"]
    spec = BatchSpec(source_bucket="src", destination_bucket="dst", source_objects=names)
    plan = _plan_in(storage, spec)
    assert [item.source.name for item in plan.items] == ["x.png", "y.png"]
    assert plan.settled == []
    assert storage.requests["read_head"] == 2
    storage.put("src", "x.jpg", tiny_png)
    other = BatchSpec(**{**spec.__dict__, "source_objects": [*names, "x.jpg"]})
    with pytest.raises(DestinationCollisionError, match=re.escape("'x.png' and 'x.jpg' -> 'x.png'")):
        _plan_in(storage, other)


def test_a_prefix_over_several_jobs_destinations_plans_none_of_their_internal_folders() -> None:
    """
    A generate job over ``cutouts/`` reading the monthly removals' ``cutouts/2026-11/`` and
    ``cutouts/2026-12/``: their ``_bgremoval/`` folders' contact sheets (``include="*.png"``) were
    billable images, paid for, and their claims and plans (no include) rejected, failing the run.
    """
    png = _save(Image.new("RGBA", (64, 64), (255, 0, 0, 255)), "PNG")
    storage = MemoryStorage()
    for name in (
        "cutouts/2026-11/a.png",
        "cutouts/2026-11/_bgremoval/reports/d/r/contact-sheet.png",
        "cutouts/2026-11/_bgremoval/claims/0",
        "cutouts/2026-12/b.png",
        "cutouts/2026-12/x_bgremoval/c.png",  # a folder of the user's, not the provider's
    ):
        storage.put("shop", name, png)
    spec = BatchSpec(source_bucket="shop", source_prefix="cutouts/", destination_bucket="scenes")
    plan = _plan_in(storage, spec)
    sources = ["cutouts/2026-11/a.png", "cutouts/2026-12/b.png", "cutouts/2026-12/x_bgremoval/c.png"]
    assert [item.source.name for item in plan.items] == sources and plan.settled == []


def test_an_output_that_would_lie_among_the_sources_is_rejected_so_no_source_is_replaced(
    tiny_png: bytes,
) -> None:
    """
    ``images/`` read and the bucket's root written: ``images/images/x.jpg``'s output is
    ``images/x.png``, a source itself. With ``overwrite=True`` it was planned to replace that photo
    (its generation as the stale output's); without, it was paid for on a later run once moved.
    """
    storage = MemoryStorage(bucket="shop")
    for name in ("images/x.png", "images/images/x.jpg", "images/y.png"):
        storage.put("shop", name, tiny_png)
    spec = BatchSpec(source_bucket="shop", source_prefix="images/", destination_bucket="shop", overwrite=True)

    plan = _plan_in(storage, spec)

    assert [(item.source.name, item.destination) for item in plan.items] == [
        ("images/x.png", "x.png"),
        ("images/y.png", "y.png"),
    ]
    assert all(item.replace_generation is None for item in plan.items)
    [outcome] = plan.settled
    assert (outcome.source.name, outcome.status, outcome.code) == (
        "images/images/x.jpg",
        "rejected",
        "unsafe_name",
    )
    assert outcome.message == (
        "its output gs://shop/images/x.png would lie inside the source prefix gs://shop/images/, among "
        "the sources (it could replace one, or be read back as one)"
    )
    # another bucket, or explicit names whose output prefix lies inside the source prefix: as before
    other = _plan_in(storage, BatchSpec(**{**spec.__dict__, "destination_bucket": "cut"}))
    assert len(other.items) == 3
    inside = BatchSpec(**{**spec.__dict__, "destination_prefix": "images/out/", "source_objects": ["x.png"]})
    assert [item.destination for item in _plan_in(storage, inside).items] == ["images/out/x.png"]


def test_explicit_names_in_a_providers_folder_below_the_prefix_are_rejected_unread(tiny_png: bytes) -> None:
    """Shards listed over several jobs' destinations named their contact sheets: they were paid for."""
    storage = MemoryStorage()
    sheet = "cutouts/2026-11/_bgremoval/reports/d/r/contact-sheet.png"
    for name in ("cutouts/2026-11/a.png", sheet):
        storage.put("src", name, tiny_png)
    spec = BatchSpec(
        source_bucket="src",
        source_prefix="cutouts/",
        destination_bucket="dst",
        source_objects=["cutouts/2026-11/a.png", sheet],
    )
    plan = _plan_in(storage, spec)
    assert [item.source.name for item in plan.items] == ["cutouts/2026-11/a.png"]
    assert [(o.source.name, o.code) for o in plan.settled] == [(sheet, "unsafe_name")]
    assert "inside the provider's own _bgremoval/ folder" in plan.settled[0].message
    assert storage.requests["read_head"] == 1


def test_an_output_left_alone_says_why_it_is_not_finished(tiny_png: bytes) -> None:
    """Every such output read 'made from another source generation or other options; set overwrite=True',
    also an object of the user's that the provider never made, which overwrite=True would replace."""
    storage = MemoryStorage(dict.fromkeys(("mine.png", "moved.png", "new.png", "opts.png"), tiny_png))
    gen = {name: storage.info("src", name).generation for name in ("moved.png", "new.png", "opts.png")}
    storage.put("dst", "mine.png", tiny_png)  # the user's own object, no provider metadata
    outputs = {
        "moved.png": {META_SOURCE: "gs://src/old.jpg", META_SOURCE_GENERATION: str(gen["moved.png"])},
        "new.png": {META_SOURCE: "gs://src/new.png", META_SOURCE_GENERATION: "7"},
        "opts.png": {META_SOURCE: "gs://src/opts.png", META_SOURCE_GENERATION: str(gen["opts.png"])},
    }
    for name, meta in outputs.items():
        storage.put("dst", name, tiny_png, {**DONE_META, **meta})
    storage.put("dst", "opts.png", tiny_png, {**outputs["opts.png"], META_VENDOR: "pixian"})

    plan = _plan_in(storage, BatchSpec(source_bucket="src", destination_bucket="dst"))

    assert plan.items == []
    messages = {o.source.name: (o.code, o.message) for o in plan.settled}
    tail = "; set overwrite=True to replace it"
    assert messages == {
        "mine.png": (
            "output_exists",
            "the destination exists and was not made by this provider (it records no source); "
            "set overwrite=True only to replace it",
        ),
        "moved.png": (
            "output_exists",
            f"the destination exists but was made from another source, gs://src/old.jpg{tail}",
        ),
        "new.png": (
            "output_exists",
            "the destination exists but was made from generation 7 of this source "
            f"(now {gen['new.png']}){tail}",
        ),
        "opts.png": (
            "output_exists",
            f"the destination exists but was made with other options (vendor 'pixian'){tail}",
        ),
    }


def test_a_render_only_jobs_masters_are_never_refused_as_lying_among_the_sources(tiny_png: bytes) -> None:
    """A render-only job writes no output at its masters' mapped names (only renditions, named from the
    masters), so a master whose mapped name falls under its masters prefix is rendered, not rejected."""
    storage = MemoryStorage(bucket="shop")
    for name in ("out/masters/a.png", "out/masters/masters/b.png"):
        storage.put("shop", name, tiny_png)
    spec = BatchSpec("shop", "shop", source_prefix="out/masters/", destination_prefix="out/")
    thumb = {"name": "thumb", "format": "jpeg", "size": 8, "background": "#ffffff"}
    lay = RenditionLayout(
        parse_renditions([thumb]), "out/", "out/masters/", destination_bucket="shop", masters_bucket="shop"
    )
    processor = RenderProcessor()
    plan = asyncio.run(
        plan_batch(
            storage,  # type: ignore[arg-type]
            spec,
            extension=processor.extension,
            identity=OutputIdentity.of(processor),
            limits=processor.limits,
            renditions=lay,
            masters_are_sources=True,
        )
    )
    assert plan.settled == []
    assert [item.source.name for item in plan.render] == ["out/masters/a.png", "out/masters/masters/b.png"]
