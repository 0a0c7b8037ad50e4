"""Planning explicit ``source_objects``: lookups in name order whatever the given order, and the filters.

In memory (:mod:`tests.support.memory_storage` counts every request by kind and each listed object).
"""

from __future__ import annotations

import asyncio
import io
import random
from typing import Any

import pytest
from PIL import Image

from airflow_provider_bgremoval.pipeline.planning import (
    META_OPTIONS_HASH,
    META_SOURCE,
    META_SOURCE_GENERATION,
    META_VENDOR,
    BatchPlan,
    BatchSpec,
    OutputIdentity,
    plan_batch,
)
from airflow_provider_bgremoval.pipeline.rendering import RenditionLayout
from airflow_provider_bgremoval.renditions.spec import parse_renditions
from airflow_provider_bgremoval.vendors.poof import PoofWire
from tests.support.memory_storage import MemoryStorage

IDENTITY = OutputIdentity((("poof", "fp"),))
SPEC: dict[str, Any] = {
    "source_bucket": "src",
    "source_prefix": "raw/",
    "destination_bucket": "dst",
    "destination_prefix": "cut/",
}
THUMB = {"name": "thumb", "format": "jpeg", "size": 8, "background": "#ffffff"}


@pytest.fixture(scope="module")
def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(out, format="PNG")
    return out.getvalue()


def _plan(storage: MemoryStorage, spec: BatchSpec, layout: RenditionLayout | None = None) -> BatchPlan:
    return asyncio.run(
        plan_batch(
            storage,  # type: ignore[arg-type]
            spec,
            extension=".png",
            identity=IDENTITY,
            limits=PoofWire.spec.limits,
            renditions=layout,
        )
    )


def _finish(storage: MemoryStorage, source: str, output: str) -> None:
    """Store ``output`` as the finished output of ``source`` (from this generation and options)."""
    info = storage.info("src", source)
    meta = {META_VENDOR: "poof", META_OPTIONS_HASH: "fp", META_SOURCE: info.uri}
    storage.put("dst", output, b"cut-out", {**meta, META_SOURCE_GENERATION: str(info.generation)})


def _counted(
    storage: MemoryStorage, given: list[str], layout: RenditionLayout | None = None, **spec: Any
) -> tuple[BatchPlan, dict[str, int], int]:
    """The plan of ``given``, the requests it made by kind and the objects its listings returned."""
    storage.requests.clear()
    storage.listed.clear()
    plan = _plan(storage, BatchSpec(**{**SPEC, **spec}, source_objects=given), layout)
    return plan, dict(storage.requests), len(storage.listed)


def _rows(plan: BatchPlan) -> tuple[list[str], list[tuple[str, str]]]:
    return [i.source.name for i in plan.items], [(o.source.name, o.code) for o in plan.settled]


@pytest.mark.parametrize("count", [200, 2000, 3000])
def test_explicit_names_in_any_order_make_the_requests_of_the_same_names_in_order(
    png: bytes, count: int
) -> None:
    """
    A rerun of ``count`` explicit names in no order (a tenth new): their outputs are looked up in windows
    of 1,000 names in name order, one pass over the destination (3 listing pages for 3,000 names, as for
    the names given in order). Windows in the given order each listed nearly the whole destination: 9
    pages and 8,089 of its 2,700 objects listed for 3,000 names (4 pages for 2,000; 400 pages and 399,327
    objects for 20,000 finished: quadratic). The plan is the one made before, its rows in the given order.
    """
    names = [f"raw/p-{i:05d}.jpg" for i in range(count)]
    storage = MemoryStorage(dict.fromkeys(names, png))
    new = set(names[::10])
    for name in names:
        if name not in new:
            _finish(storage, name, "cut/" + name.removeprefix("raw/").replace(".jpg", ".png"))
    shuffled = random.Random(7).sample(names, count)

    _, in_order, listed_in_order = _counted(storage, names)
    plan, requests, listed = _counted(storage, shuffled)

    pages = -(-count // 1000)
    assert in_order == requests == {"stat": count, "list": pages, "read_head": len(new)}
    assert listed == listed_in_order == count - len(new)  # each output listed once
    items, settled = _rows(plan)
    assert items == [name for name in shuffled if name in new]  # the given order
    assert settled == [(name, "already_done") for name in shuffled if name not in new]


def test_explicit_names_in_any_order_look_their_renditions_up_in_name_order(png: bytes) -> None:
    """With renditions, each rendition folder is listed in name-ordered windows too (once over)."""
    names = [f"raw/p-{i:04d}.jpg" for i in range(2500)]
    storage = MemoryStorage(dict.fromkeys(names, png))
    masters = {"masters_prefix": "cut/m/"}
    layout = RenditionLayout(parse_renditions([THUMB]), "cut/", "cut/m/", ".png")
    for name in names:
        stem = name.removeprefix("raw/").removesuffix(".jpg")
        _finish(storage, name, f"cut/m/{stem}.png")
        storage.put("dst", f"cut/thumb/{stem}.jpg", b"a rendition of another master")
    shuffled = random.Random(11).sample(names, len(names))

    in_order_plan, in_order, listed_in_order = _counted(storage, names, layout, **masters)
    plan, requests, listed = _counted(storage, shuffled, layout, **masters)

    assert requests == in_order and listed == listed_in_order == 2 * 2500  # masters and thumbs, once each
    assert requests["list"] == 3 + 3 + 3  # masters, renditions and records: 3 windows each
    assert [i.source.name for i in plan.render] == shuffled  # every thumb is to render again
    assert len(in_order_plan.render) == 2500


def test_explicit_names_out_of_order_keep_the_rows_of_missing_and_unsafe_names_in_place(png: bytes) -> None:
    """The settled rows come in the order they came before: a missing name's row where it was met."""
    names = [f"raw/p-{i:04d}.jpg" for i in range(1500)]
    storage = MemoryStorage(dict.fromkeys(names, png))
    for name in names[::3]:
        _finish(storage, name, "cut/" + name.removeprefix("raw/").replace(".jpg", ".png"))
    given = random.Random(2).sample(names, 1500)
    given[500:500] = ["raw/gone.jpg"]
    given[1200:1200] = ["gs://src/raw/gone-too.jpg"]

    plan, _, _ = _counted(storage, given)

    found = [name for name in given if "gone" not in name]
    window_one, window_two = found[:1000], found[1000:]  # the windows of 1,000 sources found
    done = set(names[::3])
    expected = [
        ("raw/gone.jpg", "not_found"),
        *[(name, "already_done") for name in window_one if name in done],
        ("raw/gone-too.jpg", "not_found"),
        *[(name, "already_done") for name in window_two if name in done],
    ]
    assert _rows(plan) == ([name for name in given if name in set(names) - done], expected)


def test_include_and_exclude_apply_to_explicit_names_as_to_a_listing(png: bytes) -> None:
    """
    docs/pipeline.md: include/exclude are matched against "the name below the prefix and the base name",
    and a source must match them (the operators' docstrings); an explicit name is a source. A name they
    leave out is left out as a listing leaves it out: not looked up, not read, no row.
    """
    objects = ["raw/a.jpg", "raw/b.png", "raw/thumbs/c.jpg", "raw/D.JPG"]
    storage = MemoryStorage(dict.fromkeys(objects, png))
    given = ["a.jpg", "b.png", "gs://src/raw/thumbs/c.jpg", "D.JPG", "missing.png"]

    plan, requests, _ = _counted(storage, given, include=["*.jpg"], exclude="thumbs/*")

    assert _rows(plan) == (["raw/a.jpg", "raw/D.JPG"], [])
    assert requests == {"stat": 2 + 2, "read_head": 2}  # a.jpg, D.JPG and their outputs: no other name
    listed = list(storage.list_objects("src", "raw/", include=["*.jpg"], exclude="thumbs/*"))
    assert [info.name for info in listed] == ["raw/D.JPG", "raw/a.jpg"]  # the same sources, listed

    plan, requests, _ = _counted(storage, given)  # no filter: every name is a source
    assert _rows(plan) == (
        ["raw/a.jpg", "raw/b.png", "raw/thumbs/c.jpg", "raw/D.JPG"],
        [("raw/missing.png", "not_found")],
    )
