"""Planning's local checks: the estimate and the run agree on truncated files (issue 10, pre-flight honesty).

A file planning already holds whole (at most ``HEADER_BYTES``, or read whole because its header lay
further in) is decoded in full there, with the run's own check, so a truncated one is rejected at
planning with the run's code and message. A larger one is billable but counted as checked by header
only; the run then rejects a truncated body locally, before any vendor call. Planning's GCS requests
stay what they were: one header read per source (and a whole read only for a header beyond it).

The first tests use an in-memory stand-in for the storage that counts requests; the last one runs
planning against fake-gcs-server.
"""

from __future__ import annotations

import asyncio
import collections
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from airflow_provider_bgremoval.exceptions import InputRejectedError
from airflow_provider_bgremoval.hooks.poof import PoofHook
from airflow_provider_bgremoval.imaging import prepare_input
from airflow_provider_bgremoval.pipeline.planning import (
    FULL_CHECK_MAX_PIXELS,
    HEADER_BYTES,
    BatchPlan,
    BatchSpec,
    check_source,
    plan_batch,
)
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo
from airflow_provider_bgremoval.vendors.poof import PoofWire
from tests.support.connections import SleepRecorder, set_connection

LIMITS = PoofWire.spec.limits
VENDOR = "poof"


class MemoryStorage:
    """The part of :class:`GcsStorage` planning uses, over a dict, counting each kind of request."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.requests: collections.Counter[str] = collections.Counter()

    def _info(self, bucket: str, name: str) -> ObjectInfo:
        return ObjectInfo(bucket=bucket, name=name, generation=1, size=len(self.objects[name]))

    def list_objects(self, bucket: str, prefix: str = "", **_: Any) -> Iterator[ObjectInfo]:
        self.requests["list"] += 1
        if bucket == "src":
            yield from (self._info(bucket, name) for name in sorted(self.objects) if name.startswith(prefix))

    def stat(self, bucket: str, name: str, **_: Any) -> ObjectInfo | None:
        self.requests["stat"] += 1
        return self._info(bucket, name) if bucket == "src" and name in self.objects else None

    def read_head(self, bucket: str, name: str, nbytes: int, **_: Any) -> bytes:
        self.requests["read_head"] += 1
        return self.objects[name][:nbytes]

    def read(self, bucket: str, name: str, **_: Any) -> bytes:
        self.requests["read"] += 1
        return self.objects[name]


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _plan(objects: dict[str, bytes]) -> tuple[BatchPlan, MemoryStorage]:
    storage = MemoryStorage(objects)
    plan = asyncio.run(
        plan_batch(
            storage,  # type: ignore[arg-type]
            BatchSpec(source_bucket="src", destination_bucket="dst"),
            extension=".png",
            fingerprint="fp",
            vendor=VENDOR,
            limits=LIMITS,
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
        info = ObjectInfo(bucket="src", name=name, generation=1, size=len(storage.objects[name]))
        return check_source(storage, info, LIMITS, VENDOR)  # type: ignore[arg-type]

    assert verdict("a.png") is True  # no rejection, and fully checked
    with pytest.raises(InputRejectedError) as rejection:
        verdict("b.png")
    assert rejection.value.code == "malformed_image"


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
            fingerprint="fp",
            vendor=VENDOR,
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
