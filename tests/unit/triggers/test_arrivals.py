"""NewImagesTrigger: settle rules on a controllable clock, serialisation, watermark, restarts, poll cost.

The trigger runs for real (its listing, its plan of the new sources with the package's planning, its
processor identity from a real hook over an ``AIRFLOW_CONN_*`` connection) against the in-memory
storage of the planning tests; only the clock, the sleep and Airflow's asset state store are
replaced (the store by a dict with its ``aget``/``aset``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators.bucket import GenerateBackgroundOperator, RemoveBackgroundOperator
from airflow_provider_bgremoval.pipeline.planning import (
    META_OPTIONS_HASH,
    META_SOURCE,
    META_SOURCE_GENERATION,
    META_VENDOR,
)
from airflow_provider_bgremoval.pipeline.rendering import (
    META_MASTER,
    META_MASTER_GENERATION,
    META_RENDITION,
    META_RENDITION_FINGERPRINT,
)
from airflow_provider_bgremoval.storage.gcs import ObjectInfo
from airflow_provider_bgremoval.triggers.arrivals import Arrivals, NewImagesTrigger, Span, Watermark
from tests.support.connections import set_connection
from tests.support.memory_storage import MemoryStorage

BATCH: dict[str, Any] = {
    "conn_id": "pixian_default",
    "source_bucket": "src",
    "source_prefix": "incoming/",
    "destination_bucket": "dst",
    "destination_prefix": "cutouts/",
    "include": ["*.jpg", "*.png"],
    "output_format": "webp",
    "background_color": "#ffffff",
}
TIMING = {"poll_interval": 2.0, "settle_seconds": 10.0, "max_wait": 120.0}


@pytest.fixture(autouse=True)
def pixian(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pixian_default", "pixian", login="px-id", password="px-secret-123")
    set_connection(monkeypatch, "pixelcut_default", "pixelcut", password="sk-secret-123")


class StateStore:
    """Airflow's asset state store accessor as the triggerer injects it (``aget``/``aset``), in a dict."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.values.get(key, default)))

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))


class Stop(Exception):
    """Ends a timeline (the trigger polls forever)."""


class Timeline:
    """
    Runs a trigger on a fake clock: each sleep advances it; uploads happen at their scheduled times.

    :param storage: the in-memory buckets.
    :param until: the clock value that ends the run.
    """

    def __init__(self, storage: MemoryStorage, until: float) -> None:
        self.storage = storage
        self.until = until
        self.now = 0.0
        self.uploads: list[tuple[float, str]] = []
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.on_poll: Callable[[float], None] | None = None

    def upload(self, at: float, *names: str) -> None:
        self.uploads.extend((at, name) for name in names)

    def _deliver(self) -> None:
        due = [u for u in self.uploads if u[0] <= self.now]
        self.uploads = [u for u in self.uploads if u[0] > self.now]
        for _, name in sorted(due):
            self.storage.put("src", name, b"photo")

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.now > self.until:
            raise Stop
        self._deliver()
        await asyncio.sleep(0)

    def run(self, trigger: NewImagesTrigger) -> list[tuple[float, dict[str, Any]]]:
        trigger.clock = lambda: self.now  # type: ignore[method-assign]
        trigger.sleep = self.sleep  # type: ignore[method-assign]
        trigger.get_storage = lambda: self.storage  # type: ignore[method-assign,assignment,return-value]
        self._deliver()

        async def consume() -> None:
            event: TriggerEvent
            async for event in trigger.run():
                self.events.append((self.now, event.payload))

        try:
            asyncio.run(consume())
        except Stop:
            pass
        return self.events


def make(**overrides: Any) -> NewImagesTrigger:
    return NewImagesTrigger(**{**BATCH, **TIMING, **overrides})


def finish(storage: MemoryStorage, trigger: NewImagesTrigger, source: str, output: str) -> None:
    """Store ``output`` as the bucket task's finished output of ``source`` (its metadata)."""
    processor = trigger.build_processor(BackgroundRemovalHook.get_hook(trigger.conn_id))
    info = storage.info("src", source)
    meta = {
        META_SOURCE: info.uri,
        META_SOURCE_GENERATION: str(info.generation),
        META_OPTIONS_HASH: processor.fingerprint,
        META_VENDOR: processor.vendor,
    }
    storage.put("dst", output, b"cut-out", meta)


# -- serialisation ---------------------------------------------------------------------------------
def test_serialize_round_trips_with_primitives_only() -> None:
    trigger = make(vendor_options={"test": True}, max_size=(800, 600), min_batch=3, ordered_names=True)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_bgremoval.triggers.arrivals.NewImagesTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs["max_size"] == [800, 600] and kwargs["include"] == ["*.jpg", "*.png"]
    rebuilt = NewImagesTrigger(**kwargs)
    assert rebuilt == trigger and rebuilt.serialize() == trigger.serialize()
    assert rebuilt.state_key == trigger.state_key


def test_serialize_keeps_the_kwargs_order_airflow_hashes_and_hands_out_copies() -> None:
    """Airflow identifies an asset watcher's trigger by a hash of its kwargs in order (not sorted)."""
    trigger = make()
    _, kwargs = trigger.serialize()
    assert list(kwargs) == [
        *("source_bucket", "destination_bucket", "source_prefix", "destination_prefix", "conn_id"),
        *("operation", "include", "exclude", "overwrite", "gcp_conn_id", "poll_interval"),
        *("settle_seconds", "max_wait", "min_batch", "ordered_names", "output_format"),
        *("background_color", "crop", "margin", "max_size", "jpeg_quality", "vendor_options", "scene"),
        *("prompt", "negative_prompt", "image_transform", "renditions", "masters_prefix"),
        "rendition_presets",
    ]
    kwargs["include"].append("*.gif")
    assert trigger.serialize()[1]["include"] == ["*.jpg", "*.png"]


def test_serialize_round_trips_through_airflow_serde() -> None:
    from airflow.sdk.serde import deserialize, serialize

    trigger = make(include="*.jpg")
    _, kwargs = trigger.serialize()
    assert NewImagesTrigger(**deserialize(serialize(kwargs))) == trigger


def test_the_state_key_ignores_timing_but_not_what_is_watched() -> None:
    assert make().state_key == make(poll_interval=60, settle_seconds=300, min_batch=5).state_key
    assert make().state_key != make(output_format="png").state_key
    assert make().state_key != make(source_prefix="other/").state_key


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(InvalidOptionError, match="output_format"):
        make(output_format="gif")
    with pytest.raises(InvalidOptionError, match="destination_prefix"):
        make(destination_bucket="src", destination_prefix="incoming/cut/")
    with pytest.raises(InvalidOptionError, match="operation"):
        make(operation="upscale")
    with pytest.raises(InvalidOptionError):
        make(min_batch=0)
    with pytest.raises(InvalidOptionError, match="'outputformat'"):  # not an image parameter
        make(outputformat="png")


# -- the bucket operators' identity ------------------------------------------------------------------
def test_the_fingerprint_is_the_removal_operators() -> None:
    options = {**BATCH, "crop": True, "margin": "5%", "vendor_options": {"test": True}}
    trigger = NewImagesTrigger(**options)
    operator = RemoveBackgroundOperator(task_id="cut", **options)
    hook = BackgroundRemovalHook.get_hook("pixian_default")
    mine, theirs = trigger.build_processor(hook), operator.build_processor(hook, None)
    assert (mine.fingerprint, mine.vendor, mine.extension) == (theirs.fingerprint, theirs.vendor, ".webp")
    assert mine.fingerprint != make().build_processor(hook).fingerprint


def test_the_fingerprint_is_the_generation_operators() -> None:
    options = {**BATCH, "conn_id": "pixelcut_default", "scene": "marble"}
    for name in ("output_format", "background_color"):
        options.pop(name)
    trigger = NewImagesTrigger(operation="generate_background", **options)
    operator = GenerateBackgroundOperator(task_id="scenes", **options)
    hook = BackgroundRemovalHook.get_hook("pixelcut_default")
    assert trigger.build_processor(hook).fingerprint == operator.build_processor(hook, None).fingerprint
    pixian = BackgroundRemovalHook.get_hook("pixian_default")
    with pytest.raises(InvalidOptionError, match="Pixelcut") as mine:
        trigger.build_processor(pixian)
    with pytest.raises(InvalidOptionError) as theirs:
        operator.build_processor(pixian, None)
    assert str(mine.value) == str(theirs.value)  # one check, operations.processor_for, for both


def test_trigger_and_operators_build_processors_with_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_bgremoval.operators import operations

    calls: list[tuple[str, dict[str, Any]]] = []
    real = operations.processor_for

    def spy(operation: str, hook: Any, options: Any, cost: Any = None, **kwargs: Any) -> Any:
        calls.append((operation, dict(options)))
        return real(operation, hook, options, cost, **kwargs)

    monkeypatch.setattr(operations, "processor_for", spy)
    monkeypatch.setattr("airflow_provider_bgremoval.triggers.arrivals.processor_for", spy)
    hook = BackgroundRemovalHook.get_hook("pixian_default")
    make().build_processor(hook)
    RemoveBackgroundOperator(task_id="cut", **BATCH).build_processor(hook, None)
    assert [operation for operation, _ in calls] == ["remove_background"] * 2
    assert calls[0][1]["background_color"] == calls[1][1]["background_color"] == "#ffffff"


# -- settle rules ----------------------------------------------------------------------------------
def test_a_burst_fires_once_after_it_settled() -> None:
    storage = MemoryStorage()
    timeline = Timeline(storage, until=80)
    timeline.upload(3, *(f"incoming/a{i}.jpg" for i in range(3)))
    timeline.upload(7, "incoming/a3.jpg", "incoming/a4.png", "incoming/notes.txt")
    events = timeline.run(make())
    assert len(events) == 1
    at, payload = events[0]
    assert 7 + 10 <= at <= 7 + 10 + 2 * 2  # settle_seconds + 2 x poll_interval after the last upload
    assert payload["status"] == "new_images" and payload["settled_by"] == "settled"
    assert (payload["images"], payload["listed"], payload["finished"]) == (5, 5, 0)
    assert payload["watermark"]["generation"] == storage.info("src", "incoming/a4.png").generation
    assert payload["watermark"]["fires"] == 1 and payload["previous_watermark"]["generation"] == 0
    assert payload["source"] == "gs://src/incoming/" and payload["destination"] == "gs://dst/cutouts/"
    assert "objects" not in payload and len(json.dumps(payload)) < 600


def test_two_bursts_fire_twice_and_the_second_counts_only_its_own() -> None:
    timeline = Timeline(MemoryStorage(), until=120)
    timeline.upload(1, "incoming/a.jpg", "incoming/b.jpg")
    timeline.upload(40, "incoming/c.jpg")
    events = timeline.run(make())
    assert [payload["images"] for _, payload in events] == [2, 1]
    assert events[1][1]["previous_watermark"] == events[0][1]["watermark"]


def test_no_uploads_no_event() -> None:
    assert Timeline(MemoryStorage(), until=200).run(make()) == []


def test_a_trickle_that_never_settles_fires_at_max_wait() -> None:
    timeline = Timeline(MemoryStorage(), until=100)
    for second in range(1, 100, 5):
        timeline.upload(second, f"incoming/t{second:03d}.jpg")
    events = timeline.run(make(max_wait=30))
    assert events and events[0][1]["settled_by"] == "max_wait"
    assert 30 <= events[0][0] <= 34 and events[0][1]["waited_seconds"] >= 30


def test_fewer_than_min_batch_wait_for_max_wait() -> None:
    storage = MemoryStorage()
    timeline = Timeline(storage, until=100)
    timeline.upload(1, "incoming/a.jpg", "incoming/b.jpg")
    events = timeline.run(make(min_batch=5, max_wait=60))
    assert [(p["images"], p["settled_by"]) for _, p in events] == [(2, "max_wait")]
    assert 60 <= events[0][0] <= 64
    # the settled pair was planned once, not on every poll while it waited
    destination_listings = [entry for entry in storage.listings if entry[0] == "dst"]
    assert len(destination_listings) == 2


def test_min_batch_reached_fires_at_settle() -> None:
    timeline = Timeline(MemoryStorage(), until=60)
    timeline.upload(1, *(f"incoming/{i}.jpg" for i in range(5)))
    events = timeline.run(make(min_batch=5))
    assert [(p["images"], p["settled_by"]) for _, p in events] == [(5, "settled")]


# -- finished outputs and the watermark --------------------------------------------------------------
def test_images_with_finished_outputs_do_not_fire_and_advance_the_watermark() -> None:
    storage = MemoryStorage()
    store = StateStore()
    trigger = make()
    trigger.asset_state_store = store  # type: ignore[assignment]
    for name in ("a", "b"):
        storage.put("src", f"incoming/{name}.jpg", b"photo")
        finish(storage, trigger, f"incoming/{name}.jpg", f"cutouts/{name}.webp")
    storage.put("dst", "cutouts/c.webp", b"made from something else")
    storage.put("src", "incoming/c.jpg", b"photo")  # its output exists from another source: refused
    assert Timeline(storage, until=40).run(trigger) == []
    kept = Watermark.from_value(store.values[trigger.state_key])
    assert kept.generation == storage.info("src", "incoming/c.jpg").generation and kept.fires == 0


def test_the_backlog_fires_once_counting_only_the_unfinished() -> None:
    storage = MemoryStorage()
    trigger = make()
    storage.put("src", "incoming/done.jpg", b"photo")
    finish(storage, trigger, "incoming/done.jpg", "cutouts/done.webp")
    storage.put("src", "incoming/new.jpg", b"photo")
    events = Timeline(storage, until=40).run(trigger)
    assert [(p["images"], p["finished"], p["listed"]) for _, p in events] == [(1, 1, 2)]


def test_a_restarted_trigger_does_not_fire_again_for_what_it_fired_for() -> None:
    storage, store = MemoryStorage(), StateStore()
    first = make()
    first.asset_state_store = store  # type: ignore[assignment]
    timeline = Timeline(storage, until=40)
    timeline.upload(1, "incoming/a.jpg", "incoming/b.jpg")
    assert len(timeline.run(first)) == 1  # fired; the run has not written any output yet
    assert store.values[first.state_key]["fires"] == 1

    second = NewImagesTrigger(**first.serialize()[1])  # the triggerer rebuilds it from its kwargs
    second.asset_state_store = store  # type: ignore[assignment]
    again = Timeline(storage, until=60)
    again.upload(30, "incoming/c.jpg")
    events = again.run(second)
    assert [(p["images"], p["listed"]) for _, p in events] == [(1, 1)]
    assert events[0][1]["watermark"]["fires"] == 2


def test_a_state_store_unreadable_at_start_is_asked_again_and_nothing_fires_twice() -> None:
    storage, store = MemoryStorage(), StateStore()
    first = make()
    first.asset_state_store = store  # type: ignore[assignment]
    timeline = Timeline(storage, until=40)
    timeline.upload(1, "incoming/a.jpg")
    assert len(timeline.run(first)) == 1

    failures = iter([ConnectionError("state store unreachable")] * 2)
    real_aget = store.aget

    async def flaky_aget(key: str, default: Any = None) -> Any:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await real_aget(key, default)

    store.aget = flaky_aget  # type: ignore[method-assign]
    second = NewImagesTrigger(**first.serialize()[1])
    second.asset_state_store = store  # type: ignore[assignment]
    again = Timeline(storage, until=60)
    again.upload(30, "incoming/b.jpg")
    events = again.run(second)  # a.jpg was fired for: only b.jpg, once the store answered
    assert [(p["images"], p["listed"]) for _, p in events] == [(1, 1)]
    assert second.asset_state_store is store and store.values[second.state_key]["fires"] == 2


def test_a_restart_mid_settle_fires_once_for_the_burst() -> None:
    storage, store = MemoryStorage(), StateStore()
    first = make()
    first.asset_state_store = store  # type: ignore[assignment]
    timeline = Timeline(storage, until=6)  # stopped while the burst settles
    timeline.upload(1, "incoming/a.jpg", "incoming/b.jpg")
    assert timeline.run(first) == []
    second = NewImagesTrigger(**first.serialize()[1])
    second.asset_state_store = store  # type: ignore[assignment]
    events = Timeline(storage, until=60).run(second)
    assert [p["images"] for _, p in events] == [2]


@pytest.mark.parametrize("stored", [{"generation": "not-a-number"}, {"fires": [1]}])
def test_a_damaged_stored_watermark_restarts_empty_and_keeps_the_store(stored: dict[str, Any]) -> None:
    """A hand-edited value is read as the empty watermark; the store stays, so the next one is kept."""
    storage, store = MemoryStorage(), StateStore()
    trigger = make()
    store.values[trigger.state_key] = stored
    trigger.asset_state_store = store  # type: ignore[assignment]
    timeline = Timeline(storage, until=60)
    timeline.upload(1, "incoming/a.jpg")
    assert [p["images"] for _, p in timeline.run(trigger)] == [1]
    assert trigger.asset_state_store is store
    assert store.values[trigger.state_key]["fires"] == 1


def test_without_a_state_store_the_watermark_is_kept_in_memory() -> None:
    timeline = Timeline(MemoryStorage(), until=60)
    timeline.upload(1, "incoming/a.jpg")
    trigger = make()
    assert trigger.asset_state_store is None
    assert len(timeline.run(trigger)) == 1


def test_a_failed_listing_is_polled_again() -> None:
    storage = MemoryStorage()
    real = storage.list_objects
    failures = iter([True, True])

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if args[0] == "src" and next(failures, False):
            raise ConnectionError("listing timed out")
        return real(*args, **kwargs)

    storage.list_objects = flaky  # type: ignore[method-assign]
    storage.put("src", "incoming/a.jpg", b"photo")
    assert [p["images"] for _, p in Timeline(storage, until=40).run(make())] == [1]


# -- cost per poll -----------------------------------------------------------------------------------
def test_a_poll_lists_the_prefix_once_per_thousand_names() -> None:
    storage = MemoryStorage()
    for number in range(2500):
        storage.put("src", f"incoming/{number:05d}.txt", b"not a photo")
    Timeline(storage, until=20).run(make())
    source_listings = [entry for entry in storage.listings if entry[0] == "src"]
    assert len(source_listings) == 11  # polls at 0, 2, ..., 20
    assert storage.requests["list"] == 11 * 3  # 2,500 names: 3 pages each


def test_ordered_names_list_from_the_watermark() -> None:
    storage = MemoryStorage()
    for number in range(2500):
        storage.put("src", f"incoming/2026-11-{number:05d}.txt", b"old")
    timeline = Timeline(storage, until=80)
    timeline.upload(1, "incoming/2026-12-01T10.jpg")
    timeline.upload(40, "incoming/2026-12-01T11.jpg")
    events = timeline.run(make(ordered_names=True))
    assert [p["images"] for _, p in events] == [1, 1]
    starts = [start for bucket, _, start, _ in storage.listings if bucket == "src"]
    # the whole prefix is listed until a first source is accounted for, then only from the watermark
    first = starts.index("incoming/2026-12-01T10.jpg")
    assert set(starts[:first]) == {None} and first <= 1 + (1 + 10) // 2 + 1
    assert set(starts[first:]) == {"incoming/2026-12-01T10.jpg", "incoming/2026-12-01T11.jpg"}
    assert starts[-1] == "incoming/2026-12-01T11.jpg"
    after = [e for e in storage.listings if e[0] == "src" and e[2] is not None]
    ranges = [e for e in storage.listings if e[0] == "dst"]  # the output lookups of the two fires
    assert storage.requests["list"] == 3 * first + len(after) + len(ranges)  # 1 request a poll after


def test_the_source_prefixs_own_bgremoval_folder_is_no_arrival() -> None:
    """A job reading another job's outputs watches a prefix with that job's ``_bgremoval/`` folder: its
    manifests are no photos, and with ordered names they must not move the watermark's name past
    ``incoming/2026...`` ('_' sorts after digits), which hid every later upload."""
    storage = MemoryStorage()
    timeline = Timeline(storage, until=120)
    timeline.upload(1, "incoming/2026-12-01T10.jpg")
    timeline.upload(20, "incoming/_bgremoval/manifests/run/try-1.jsonl")  # the run's own objects
    timeline.upload(60, "incoming/2026-12-01T11.jpg")
    events = timeline.run(make(include=None, ordered_names=True))
    assert [(p["images"], p["listed"]) for _, p in events] == [(1, 1), (1, 1)]
    assert all("_bgremoval" not in p["watermark"]["name"] for _, p in events)


def test_arrivals_settle_rules_directly() -> None:
    arrivals = Arrivals()
    assert arrivals.ready(0, 10, 60) is None
    one = MemoryStorage().put("src", "incoming/a.jpg", b"x")
    arrivals.observe(Span(1, one.generation, one.name), 5)
    assert arrivals.ready(14, 10, 60) is None and arrivals.ready(15, 10, 60) == "settled"
    arrivals.evaluated = (arrivals.count, arrivals.newest)
    assert arrivals.ready(20, 10, 60) is None and arrivals.ready(65, 10, 60) == "max_wait"
    arrivals.observe(Span(), 66)
    assert arrivals.ready(100, 10, 60) is None


def test_a_failed_watermark_write_fires_nothing_until_it_is_kept() -> None:
    class FlakyStore(StateStore):
        failures = 1

        async def aset(self, key: str, value: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("the API server is restarting")
            await super().aset(key, value)

    store = FlakyStore()
    trigger = make()
    trigger.asset_state_store = store  # type: ignore[assignment]
    timeline = Timeline(MemoryStorage(), until=60)
    timeline.upload(1, "incoming/a.jpg")
    events = timeline.run(trigger)
    assert [p["images"] for _, p in events] == [1]  # one poll later, once the watermark was kept
    assert store.values[trigger.state_key]["fires"] == 1


# -- renditions: the trigger mirrors a renditions task -------------------------------------------------
RENDITIONS_BATCH: dict[str, Any] = {
    **{k: v for k, v in BATCH.items() if k not in ("output_format", "background_color")},
    "renditions": [{"name": "web", "format": "webp", "max_size": 512}, {"name": "shop", "preset": "square"}],
    "rendition_presets": {"square": {"format": "jpeg", "size": [400, 400], "background": "#ffffff"}},
}


def finish_rendition(storage: MemoryStorage, trigger: NewImagesTrigger, master: str, rendition: str) -> None:
    """Store ``rendition`` of the stored ``master`` as the bucket task renders it (its metadata)."""
    layout = trigger.rendition_layout(
        trigger.build_processor(BackgroundRemovalHook.get_hook(trigger.conn_id))
    )
    assert layout is not None
    wanted = next(r for r in layout.renditions if r.name == rendition)
    info = storage.info("dst", master)
    meta = {
        META_MASTER: info.uri,
        META_MASTER_GENERATION: str(info.generation),
        META_RENDITION: wanted.name,
        META_RENDITION_FINGERPRINT: wanted.fingerprint,
    }
    storage.put("dst", layout.name_of(wanted, master), b"rendition", meta)


def test_the_shared_batch_dict_with_renditions_builds_the_operators_layout() -> None:
    batch = {**RENDITIONS_BATCH, "masters_prefix": "originals/"}
    trigger = NewImagesTrigger(**batch)  # the documented pattern: one dict for the trigger and the task
    operator = RemoveBackgroundOperator(task_id="cut", **batch)
    hook = BackgroundRemovalHook.get_hook("pixian_default")
    processor = operator.build_processor(hook, None)
    assert trigger.spec == operator._spec() and trigger.spec.output_prefix == "originals/"
    assert trigger.rendition_layout(trigger.build_processor(hook)) == operator.rendition_layout(
        operator._spec(), processor
    )
    default = NewImagesTrigger(**RENDITIONS_BATCH)
    assert (
        default.spec.output_prefix
        == "cutouts/masters/"
        == RemoveBackgroundOperator(task_id="cut", **RENDITIONS_BATCH)._spec().output_prefix
    )
    assert (
        make().rendition_layout(make().build_processor(hook)) is None and make().spec.masters_prefix is None
    )


def test_renditions_serialise_as_primitives_and_shape_the_state_key() -> None:
    from airflow_provider_bgremoval.renditions import RenditionSpec, parse_renditions

    spec = RenditionSpec.coerce(
        {"name": "thumb", "format": "jpeg", "size": [256, 256], "background": "#f4f4f4"}
    )
    trigger = NewImagesTrigger(**{**RENDITIONS_BATCH, "renditions": [spec, *RENDITIONS_BATCH["renditions"]]})
    _, kwargs = trigger.serialize()
    assert json.loads(json.dumps(kwargs)) == kwargs
    rebuilt = NewImagesTrigger(**kwargs)
    assert rebuilt == trigger and rebuilt.state_key == trigger.state_key
    assert [r.fingerprint for r in rebuilt.parsed_renditions] == [
        r.fingerprint for r in trigger.parsed_renditions
    ]
    assert trigger.state_key != NewImagesTrigger(**RENDITIONS_BATCH).state_key
    # a validated rendition serialises as its spec's fields too
    [validated] = parse_renditions([spec])
    as_rendition = NewImagesTrigger(
        **{**RENDITIONS_BATCH, "renditions": [validated, *RENDITIONS_BATCH["renditions"]]}
    )
    assert as_rendition.serialize() == trigger.serialize()
    # without renditions the key is the one kept before the rendition parameters existed
    _, plain = make().serialize()
    before = {
        k: v for k, v in plain.items() if k not in ("renditions", "masters_prefix", "rendition_presets")
    }
    timing = ("poll_interval", "settle_seconds", "max_wait", "min_batch", "ordered_names")
    digest = hashlib.sha256(
        json.dumps({k: v for k, v in before.items() if k not in timing}, sort_keys=True).encode()
    ).hexdigest()
    assert make().state_key == f"bgremoval.arrivals:{digest[:16]}"


def test_a_preset_object_is_refused_at_construction() -> None:
    """The triggerer stores the kwargs as JSON: a ``Preset`` object would only fail later, out of sight."""
    from airflow_provider_bgremoval.renditions.compliance import Sides
    from airflow_provider_bgremoval.renditions.spec import Preset

    mine = Preset(name="mine", fields={"format": "jpeg", "min_size": 800}, rules=(Sides(min_long=800),))
    given = {
        **RENDITIONS_BATCH,
        "renditions": [{"name": "web", "preset": "mine"}],
        "rendition_presets": {"mine": mine},
    }
    with pytest.raises(InvalidOptionError, match="mappings of spec fields"):
        NewImagesTrigger(**given)


def test_bad_renditions_fail_at_construction() -> None:
    with pytest.raises(InvalidOptionError, match="renditions"):  # a master must be a lossless cut-out
        NewImagesTrigger(**{**RENDITIONS_BATCH, "output_format": "jpeg"})
    with pytest.raises(InvalidOptionError, match=r"renditions\[0\]"):
        NewImagesTrigger(**{**RENDITIONS_BATCH, "renditions": [{"name": "web", "format": "gif"}]})
    with pytest.raises(InvalidOptionError, match="masters"):
        NewImagesTrigger(**{**RENDITIONS_BATCH, "renditions": [{"name": "masters", "format": "png"}]})
    with pytest.raises(InvalidOptionError, match="at least one rendition"):  # as the operators: None, not []
        NewImagesTrigger(**{**RENDITIONS_BATCH, "renditions": []})
    overlapping = {  # a rendition folder in the source bucket on the photos' prefix: it would overwrite them
        **RENDITIONS_BATCH,
        "destination_bucket": "src",
        "destination_prefix": "",
        "renditions": [{"name": "incoming", "format": "png"}],
    }
    with pytest.raises(InvalidOptionError, match="source") as mine:
        NewImagesTrigger(**overlapping)
    with pytest.raises(InvalidOptionError) as theirs:
        RemoveBackgroundOperator(task_id="cut", **overlapping)
    assert str(mine.value) == str(theirs.value)
    with pytest.raises(InvalidOptionError, match="templated"):
        NewImagesTrigger(**{**RENDITIONS_BATCH, "renditions": "{{ params.renditions }}"})


def test_a_finished_master_with_a_missing_rendition_fires_render_only_work() -> None:
    storage = MemoryStorage()
    trigger = NewImagesTrigger(**RENDITIONS_BATCH, **TIMING)
    for name in ("a", "b", "c"):
        storage.put("src", f"incoming/{name}.jpg", b"photo")
    for name in ("a", "b"):  # masters made; b has all its renditions, a lacks "shop"
        finish(storage, trigger, f"incoming/{name}.jpg", f"cutouts/masters/{name}.png")
        finish_rendition(storage, trigger, f"cutouts/masters/{name}.png", "web")
    finish_rendition(storage, trigger, "cutouts/masters/b.png", "shop")
    events = Timeline(storage, until=40).run(trigger)
    assert [(p["images"], p["render_only"], p["finished"], p["listed"]) for _, p in events] == [(2, 1, 1, 3)]


def test_a_master_with_every_rendition_finished_fires_nothing() -> None:
    storage = MemoryStorage()
    trigger = NewImagesTrigger(**RENDITIONS_BATCH, **TIMING)
    storage.put("src", "incoming/a.jpg", b"photo")
    finish(storage, trigger, "incoming/a.jpg", "cutouts/masters/a.png")
    for rendition in ("web", "shop"):
        finish_rendition(storage, trigger, "cutouts/masters/a.png", rendition)
    # an output under destination_prefix itself is not the master: it does not finish the source
    assert Timeline(storage, until=40).run(trigger) == []
    storage.put("src", "incoming/b.jpg", b"photo")
    finish(storage, trigger, "incoming/b.jpg", "cutouts/b.png")
    events = Timeline(storage, until=40).run(trigger)
    assert [(p["images"], p["render_only"]) for _, p in events] == [(1, 0)]


def test_photos_a_fired_run_left_unfinished_wait_for_the_next_run() -> None:
    """docs/arrivals.md "Photos a fired run did not finish": no second event below the watermark."""
    storage, store = MemoryStorage(), StateStore()
    trigger = make(max_wait=30)
    trigger.asset_state_store = store  # type: ignore[assignment]
    first = Timeline(storage, until=40)
    first.upload(1, "incoming/a.jpg", "incoming/b.jpg")
    assert [p["images"] for _, p in first.run(trigger)] == [2]
    finish(storage, trigger, "incoming/a.jpg", "cutouts/a.webp")  # its run stopped after a.jpg (a budget)
    later = Timeline(storage, until=400)
    later.upload(300, "incoming/c.jpg")
    events = later.run(trigger)  # b.jpg is not fired for again, not even after many max_wait periods
    assert [(p["images"], p["listed"]) for _, p in events] == [(1, 1)]  # the next burst: its run plans all
    assert events[0][0] >= 300


# -- a failover chain: an output made by any vendor of the chain is finished ----------------------------


def test_a_chain_trigger_counts_outputs_of_any_of_its_vendors_as_finished() -> None:
    storage = MemoryStorage()
    chain = make(conn_id=["pixian_default", "pixelcut_default"])
    assert make().state_key != chain.state_key and NewImagesTrigger(**chain.serialize()[1]) == chain
    assert make(conn_id="pixian_default").state_key == make().state_key  # one id: the key of before
    by_secondary = make(conn_id="pixelcut_default")
    storage.put("src", "incoming/a.jpg", b"photo")
    finish(storage, make(), "incoming/a.jpg", "cutouts/a.webp")  # made by the primary's vendor
    storage.put("src", "incoming/b.jpg", b"photo")
    finish(storage, by_secondary, "incoming/b.jpg", "cutouts/b.webp")  # made by the secondary's
    storage.put("src", "incoming/c.jpg", b"photo")
    events = Timeline(storage, until=40).run(chain)
    assert [(p["images"], p["finished"]) for _, p in events] == [(1, 2)]
    # the primary alone does not accept the secondary's output: b would be refused (output_exists)
    alone = Timeline(storage, until=40).run(make())
    assert [(p["images"], p["finished"]) for _, p in alone] == [(1, 1)]


def test_a_chain_trigger_refuses_a_connection_listed_twice() -> None:
    with pytest.raises(InvalidOptionError, match="conn_id"):
        make(conn_id=["pixian_default", "pixian_default"])
    with pytest.raises(InvalidOptionError, match="vendor_options"):  # whose vendor's fields?
        make(conn_id=["pixian_default", "pixelcut_default"], vendor_options={"test": True})
    by_vendor = make(
        conn_id=["pixian_default", "pixelcut_default"], vendor_options={"pixian": {"test": True}}
    )
    assert by_vendor.options["vendor_options"] == {"pixian": {"test": True}}


# -- a listing longer than one page is no snapshot ------------------------------------------------------
class PagedStorage(MemoryStorage):
    """
    GCS's listing of the source bucket: each page of 1,000 names is its own request, made when the
    previous page is used up and starting after its last name, so an upload that lands between two
    requests is listed only if its name sorts after the names already listed. ``between_pages`` runs
    between two requests (an upload that lands meanwhile).
    """

    between_pages: Callable[[], None] | None = None

    def list_objects(  # type: ignore[override]
        self,
        bucket: str,
        prefix: str = "",
        *,
        include: Any = None,
        exclude: Any = None,
        start_offset: str | None = None,
        end_offset: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if bucket != "src":
            yield from super().list_objects(
                bucket,
                prefix,
                include=include,
                exclude=exclude,
                start_offset=start_offset,
                end_offset=end_offset,
            )
            return
        from airflow_provider_bgremoval.storage.gcs import ObjectFilter
        from tests.support.memory_storage import PAGE

        self.listings.append((bucket, prefix, start_offset, end_offset))
        keep, after = ObjectFilter(include, exclude), None
        while True:
            objects = self.buckets[bucket]
            names = sorted(
                name
                for name in objects
                if name.startswith(prefix)
                and (after is None or name > after)
                and (start_offset is None or name >= start_offset)
                and (end_offset is None or name < end_offset)
            )[:PAGE]
            page = [objects[name].info for name in names]
            self.requests["list"] += 1
            yield from (info for info in page if keep.matches(info.name, prefix))
            if len(page) < PAGE:
                return
            after = page[-1].name
            if self.between_pages is not None:
                self.between_pages()


def test_an_upload_during_a_paged_listing_is_not_passed_over_when_all_listed_are_finished() -> None:
    """A poll of 1,500 names is two requests. A new photo lands after the first (its name in the first
    page: not listed), then a re-upload of a finished photo lands (in the second page: listed). Every
    listed source is refused (the re-upload, without overwrite): the watermark must not move past the
    unlisted photo's generation, or it is never seen again and nothing fires for it."""
    storage, store = PagedStorage(), StateStore()
    trigger = make(max_wait=30)
    trigger.asset_state_store = store  # type: ignore[assignment]
    for number in range(1500):
        storage.put("src", f"incoming/p{number:04d}.jpg", b"photo")
        finish(storage, trigger, f"incoming/p{number:04d}.jpg", f"cutouts/p{number:04d}.webp")
    timeline = Timeline(storage, until=200)
    for second in range(20, 50, 4):  # re-uploads of a finished photo (refused): no settle, max_wait at 50
        timeline.upload(second, "incoming/p1400.jpg")

    def concurrent_uploads() -> None:
        if timeline.now >= 50 and "incoming/p0500-new.jpg" not in storage.buckets["src"]:
            storage.put("src", "incoming/p0500-new.jpg", b"photo")  # sorts into the page already listed
            storage.put("src", "incoming/p1499.jpg", b"photo")  # a re-upload, in the page still to come

    storage.between_pages = concurrent_uploads
    events = timeline.run(trigger)
    assert "incoming/p0500-new.jpg" in storage.buckets["src"]
    assert [(p["images"], p["rejected"]) for _, p in events] == [(1, 1)]
    new = storage.info("src", "incoming/p0500-new.jpg").generation
    assert events[0][1]["watermark"]["generation"] > new >= events[0][1]["previous_watermark"]["generation"]


# -- reading the vendor connection at start ---------------------------------------------------------------
def fail_connection_reads(monkeypatch: pytest.MonkeyPatch, failures: list[Exception]) -> list[str]:
    """Airflow's connection read (the triggerer's, via the SDK) raises ``failures`` first, then reads."""
    from airflow.sdk.definitions.connection import Connection

    real = Connection.async_get
    reads: list[str] = []
    pending = iter(failures)

    async def flaky(conn_id: str) -> Any:
        reads.append(conn_id)
        failure = next(pending, None)
        if failure is not None:
            raise failure
        return await real(conn_id)

    monkeypatch.setattr(Connection, "async_get", staticmethod(flaky))
    return reads


def test_a_connection_unreadable_at_start_is_read_again_and_the_watcher_fires(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The API server restarting (or a secrets backend timing out) as the triggerer starts the watcher:
    it waits a poll interval and reads again; it does not end (the triggerer restarts an ended watcher
    at once, in a loop of tracebacks, hammering what is already failing)."""
    reads = fail_connection_reads(monkeypatch, [ConnectionError("API server unreachable")] * 2)
    timeline = Timeline(MemoryStorage(), until=60)
    timeline.upload(1, "incoming/a.jpg")
    events = timeline.run(make())
    assert [p["images"] for _, p in events] == [1]
    assert reads == ["pixian_default"] * 3
    assert "API server unreachable" in caplog.text and "trying again in 2 s" in caplog.text


def test_a_connection_that_is_not_defined_ends_the_watcher_saying_which(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bad configuration does not mend by waiting: the trigger ends, and the log names the fix."""
    from airflow_provider_bgremoval._compat import AirflowNotFoundException

    with pytest.raises(AirflowNotFoundException, match="no_such_conn"):
        Timeline(MemoryStorage(), until=60).run(make(conn_id="no_such_conn"))
    assert "Watching gs://src/incoming/ stopped: vendor connection no_such_conn" in caplog.text


def test_a_connection_of_the_wrong_vendor_ends_the_watcher(caplog: pytest.LogCaptureFixture) -> None:
    trigger = make(operation="generate_background", output_format=None, background_color=None)
    with pytest.raises(InvalidOptionError, match="Pixelcut"):  # Pixian makes no backgrounds
        Timeline(MemoryStorage(), until=60).run(trigger)
    assert "gs://src/incoming/" in caplog.text and "pixian_default" in caplog.text


# -- bounded memory, equal keys, ordered names turned on later -------------------------------------------
class FreshInfoStorage(MemoryStorage):
    """GCS's listing of the source bucket: a new :class:`ObjectInfo` per listed object, as the client makes
    them (the store's own are not handed out), each one counted while something still holds it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alive: weakref.WeakSet[ObjectInfo] = weakref.WeakSet()
        self.most_alive = 0

    def list_objects(self, bucket: str, prefix: str = "", **kwargs: Any) -> Any:  # type: ignore[override]
        self.most_alive = max(self.most_alive, len(self.alive))
        for stored in super().list_objects(bucket, prefix, **kwargs):
            info = dataclasses.replace(stored) if bucket == "src" else stored
            if bucket == "src":
                self.alive.add(info)
                self.most_alive = max(self.most_alive, len(self.alive))
            yield info


def test_a_big_backlog_is_listed_and_planned_holding_a_bounded_number_of_sources() -> None:
    """The triggerer runs every watcher of the deployment: a first poll over a backlog of 100,000 photos
    held every listed object (about 670 bytes each, 64 MiB) while planning them. At most a page kept and
    a planning window of objects may be held, whatever the backlog."""
    storage, store = FreshInfoStorage(), StateStore()
    trigger = make()
    trigger.asset_state_store = store  # type: ignore[assignment]
    for number in range(5000):
        storage.put("src", f"incoming/p{number:05d}.jpg", b"photo")
    for number in range(0, 5000, 2):  # half of them finished
        finish(storage, trigger, f"incoming/p{number:05d}.jpg", f"cutouts/p{number:05d}.webp")
    events = Timeline(storage, until=20).run(trigger)
    assert [(p["images"], p["finished"], p["listed"]) for _, p in events] == [(2500, 2500, 5000)]
    newest = storage.info("src", "incoming/p04999.jpg")
    watermark = events[0][1]["watermark"]
    assert (watermark["generation"], watermark["name"], watermark["fires"]) == (
        newest.generation,
        newest.name,
        1,
    )
    assert storage.most_alive <= 2 * 1000


@pytest.mark.parametrize("same", ["", None, "cutouts/masters/", "cutouts/masters", "/cutouts/masters/"])
def test_an_empty_masters_prefix_is_the_default_and_keeps_the_state_key(same: str | None) -> None:
    """``naming.masters_prefix``: ``None`` and ``""`` both mean ``<destination_prefix>masters/``; equal
    meanings must give one watermark key (a new key starts an empty watermark: the backlog fires again)."""
    default = NewImagesTrigger(**RENDITIONS_BATCH)
    trigger = NewImagesTrigger(**RENDITIONS_BATCH, masters_prefix=same)
    assert trigger.spec == default.spec
    assert trigger.state_key == default.state_key and trigger.serialize() == default.serialize()


def test_masters_prefix_keys_follow_its_meaning() -> None:
    other = NewImagesTrigger(**RENDITIONS_BATCH, masters_prefix="masters/")
    assert other.state_key != NewImagesTrigger(**RENDITIONS_BATCH).state_key
    assert other.state_key == NewImagesTrigger(**RENDITIONS_BATCH, masters_prefix="masters").state_key
    assert make(masters_prefix="masters/").state_key == make().state_key  # no renditions: no masters
    assert make(masters_prefix="masters/").serialize() == make().serialize()


def test_ordered_names_turned_on_later_skip_no_upload_and_fire_none_twice() -> None:
    """Without ``ordered_names`` the watermark's name is only the highest name accounted for, and a prefix
    may hold names that do not sort by arrival (``IMG_0001.jpg`` sorts after ``20261201T...``): once the
    option is on, listing from that name hid every later upload."""
    storage, store = MemoryStorage(), StateStore()
    storage.put("src", "incoming/IMG_0001.jpg", b"photo")  # from before the time-ordered names
    before = make()
    before.asset_state_store = store  # type: ignore[assignment]
    assert [p["images"] for _, p in Timeline(storage, until=30).run(before)] == [1]

    after = make(ordered_names=True)
    after.asset_state_store = store  # type: ignore[assignment]
    assert after.state_key == before.state_key
    timeline = Timeline(storage, until=90)
    timeline.upload(1, "incoming/20261201T1800-a.jpg")
    timeline.upload(40, "incoming/20261201T1830-b.jpg")
    events = timeline.run(after)
    assert [(p["images"], p["listed"]) for _, p in events] == [(1, 1), (1, 1)]
    assert [p["watermark"]["name"] for _, p in events] == [
        "incoming/20261201T1800-a.jpg",
        "incoming/20261201T1830-b.jpg",
    ]
    starts = [start for bucket, _, start, _ in storage.listings if bucket == "src"]
    assert starts[-1] == "incoming/20261201T1830-b.jpg"  # listed from the watermark once it is a start


def test_no_rendition_presets_is_one_state_key() -> None:
    """``rendition_presets={}`` (no user preset) means ``None``; without renditions they mean nothing."""
    renditions = {"renditions": [{"name": "web", "format": "webp", "max_size": 512}]}
    plain = {k: v for k, v in RENDITIONS_BATCH.items() if k not in ("renditions", "rendition_presets")}
    without = NewImagesTrigger(**plain, **renditions)
    empty = NewImagesTrigger(**plain, **renditions, rendition_presets={})
    assert empty.state_key == without.state_key and empty.serialize() == without.serialize()
    presets = {"rendition_presets": RENDITIONS_BATCH["rendition_presets"]}
    assert make(**presets).state_key == make().state_key and make(**presets).serialize() == make().serialize()


def test_the_connection_secrets_are_in_no_kwargs_watermark_or_event() -> None:
    """The triggerer stores ``serialize()``'s kwargs and the event in the metadata DB: connection ids only."""
    store = StateStore()
    trigger = make(conn_id=["pixian_default", "pixelcut_default"], vendor_options={"pixian": {"test": True}})
    trigger.asset_state_store = store  # type: ignore[assignment]
    timeline = Timeline(MemoryStorage(), until=40)
    timeline.upload(1, "incoming/a.jpg")
    events = timeline.run(trigger)
    assert len(events) == 1
    stored = json.dumps([trigger.serialize(), store.values, events, trigger.state_key], default=str)
    assert not any(secret in stored for secret in ("px-secret-123", "sk-secret-123", "px-id"))
