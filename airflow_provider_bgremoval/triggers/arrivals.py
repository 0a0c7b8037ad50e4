"""Event-driven scheduling on new photos: :class:`NewImagesTrigger` watches a source prefix (lists only).

Use it in an ``AssetWatcher``; a DAG scheduled on that asset runs once per settled burst of uploads
(docs/arrivals.md: the watermark, the settle rules, the cost per poll, restarts).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_bgremoval._compat import AirflowNotFoundException
from airflow_provider_bgremoval.exceptions import BgRemovalError, InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators.bucket_job import check_master_options, is_template, load_list
from airflow_provider_bgremoval.operators.operations import (
    OPERATIONS,
    generation_options_of,
    image_parameters,
    processor_for,
    removal_options_of,
    vendor_options_for,
)
from airflow_provider_bgremoval.pipeline import naming
from airflow_provider_bgremoval.pipeline.planning import (
    BatchSpec,
    DestinationCollisionError,
    OutputIdentity,
    PlannedOutcome,
    WorkItem,
    plan_into,
)
from airflow_provider_bgremoval.pipeline.processors import ImageProcessor
from airflow_provider_bgremoval.pipeline.rendering import RenditionLayout
from airflow_provider_bgremoval.renditions import Rendition, RenditionSpec, parse_renditions
from airflow_provider_bgremoval.storage.exceptions import gs_uri
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo

log = logging.getLogger(__name__)

#: The rendition parameters (left out of the state key when unset, so it is the one kept before them).
_RENDITION_PARAMETERS = ("renditions", "masters_prefix", "rendition_presets")
#: The polling parameters (not part of the state key: retiming a watcher keeps its watermark).
_TIMING_PARAMETERS = ("poll_interval", "settle_seconds", "max_wait", "min_batch", "ordered_names")

#: Errors reading the vendor connections that waiting does not mend (a missing connection, bad options).
_CONFIGURATION_ERRORS = (BgRemovalError, AirflowNotFoundException, ValueError, TypeError)

#: Key prefix of the watermark in the watched asset's state store.
STATE_KEY_PREFIX = "bgremoval.arrivals:"

#: Most sources beyond the watermark a poll keeps to plan them (a page of the listing). A longer listing
#: (a backlog) is summarised and listed again when it settles, so that a trigger's memory, in the
#: triggerer every watcher shares, does not grow with the prefix.
KEPT_SOURCES = 1000


@dataclass
class Span:
    """
    Sources of a listing, summarised: how many, their highest generation and their highest name.

    :param count: how many.
    :param generation: their highest generation (0: none).
    :param name: their highest name (``""``: none).
    """

    count: int = 0
    generation: int = 0
    name: str = ""

    def add(self, info: ObjectInfo) -> None:
        """
        Count one more source.

        :param info: the source.
        """
        self.count += 1
        self.generation = max(self.generation, info.generation)
        self.name = max(self.name, info.name)


@dataclass
class Listing:
    """
    One poll's sources beyond the watermark: their span, and the sources themselves while there are at
    most :data:`KEPT_SOURCES` (else ``None``: planning lists them again).

    :param span: how many, their newest generation and highest name.
    :param sources: the sources in name order, or ``None`` when more than :data:`KEPT_SOURCES`.
    """

    span: Span = field(default_factory=Span)
    sources: list[ObjectInfo] | None = field(default_factory=list)

    def add(self, info: ObjectInfo) -> None:
        """
        Record one more listed source (dropping those kept once there are too many).

        :param info: the source.
        """
        self.span.add(info)
        if self.sources is not None and len(self.sources) < KEPT_SOURCES:
            self.sources.append(info)
        else:
            self.sources = None


@dataclass(frozen=True)
class Watermark:
    """
    How far the trigger has accounted for the source prefix: every source whose generation is at most
    ``generation`` was fired for, or found finished. GCS generations are creation times in microseconds.

    :param generation: the highest source generation accounted for (0: nothing yet).
    :param name: the highest source name accounted for (with ``ordered``: since it became the listing's
        start with ``ordered_names``).
    :param fires: events fired so far.
    :param ordered: ``name`` is a listing start: it was kept with ``ordered_names``, from sources newer
        than the watermark before. A name kept without it is only the highest one seen, and an older
        photo's name may sort after every later upload (``IMG_0001.jpg`` after ``20261201T...``).
    """

    generation: int = 0
    name: str = ""
    fires: int = 0
    ordered: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the event payload, the asset state store)."""
        return asdict(self)

    @classmethod
    def from_value(cls, value: Any) -> Watermark:
        """
        A watermark from its stored form (anything else: the empty watermark).

        :param value: what the state store returned.
        """
        if not isinstance(value, Mapping):
            return cls()
        try:
            return cls(
                int(value.get("generation") or 0),
                str(value.get("name") or ""),
                int(value.get("fires") or 0),
                value.get("ordered") is True,
            )
        except (TypeError, ValueError):  # damaged or hand-edited: start again (claims stop double pay)
            log.warning("The stored watermark %r does not parse: starting from an empty one", value)
            return cls()

    @property
    def start(self) -> str | None:
        """Where a listing with ``ordered_names`` starts (``None``: the whole prefix)."""
        return self.name if self.ordered and self.name else None

    def advanced(self, sources: Span, *, fired: bool, ordered: bool) -> Watermark:
        """
        The watermark once ``sources`` are accounted for. With ``ordered_names``, a name kept without it is
        no start: the first one kept is the highest of these sources alone (later uploads than it).

        :param sources: the sources beyond this watermark that were evaluated.
        :param fired: an event is fired for them.
        :param ordered: the trigger has ``ordered_names``.
        """
        generation = max(self.generation, sources.generation)
        fires = self.fires + (1 if fired else 0)
        if ordered and not self.ordered:
            if not sources.count:
                return Watermark(generation, self.name, fires)
            return Watermark(generation, sources.name, fires, ordered=True)
        return Watermark(generation, max(self.name, sources.name), fires, ordered=ordered)


@dataclass
class Arrivals:
    """
    What the polls saw beyond the watermark, on the trigger's monotonic clock (the settle rules).

    :param count: sources beyond the watermark in the last listing.
    :param newest: their highest generation.
    :param changed_at: when ``count``/``newest`` last changed.
    :param first_seen_at: when sources beyond the watermark were first seen (for ``max_wait``).
    :param evaluated: the ``(count, newest)`` last found too few to fire (not evaluated again).
    """

    count: int = 0
    newest: int = 0
    changed_at: float | None = None
    first_seen_at: float | None = None
    evaluated: tuple[int, int] | None = None

    def observe(self, sources: Span, now: float) -> None:
        """
        Record one poll's sources beyond the watermark.

        :param sources: the span of the sources listed beyond the watermark.
        :param now: the clock.
        """
        if (sources.count, sources.generation) != (self.count, self.newest):
            self.count, self.newest, self.changed_at = sources.count, sources.generation, now
        if sources.count and self.first_seen_at is None:
            self.first_seen_at = now
        if not sources.count:
            self.first_seen_at = None

    def ready(self, now: float, settle_seconds: float, max_wait: float) -> str | None:
        """
        ``"settled"`` (no change for ``settle_seconds``), ``"max_wait"`` (waiting that long), or ``None``.

        :param now: the clock.
        :param settle_seconds: quiet time that settles a burst.
        :param max_wait: longest wait since the first source was seen.
        """
        if not self.count or self.changed_at is None or self.first_seen_at is None:
            return None
        if now - self.first_seen_at >= max_wait:
            return "max_wait"
        if now - self.changed_at >= settle_seconds and self.evaluated != (self.count, self.newest):
            return "settled"
        return None


@dataclass(frozen=True)
class PlanCounts:
    """
    The verdicts of the new sources' plan (the trigger needs counts, not items).

    :param billable: sources without a finished output (a vendor call each).
    :param render_only: sources with a finished master and a rendition missing or stale (0 credits).
    :param finished: sources whose output (and every rendition) is finished.
    :param rejected: sources the run would refuse (``output_exists`` without ``overwrite``).
    """

    billable: int = 0
    render_only: int = 0
    finished: int = 0
    rejected: int = 0

    @property
    def unfinished(self) -> int:
        """Sources the bucket task has work for."""
        return self.billable + self.render_only


class _CountingSink:
    """The plan's verdicts as counts (a :class:`~airflow_provider_bgremoval.pipeline.planning.PlanSink`
    keeping no item: the trigger's memory does not grow with the sources planned)."""

    def __init__(self) -> None:
        self.billable = self.render_only = 0
        self.settled: Counter[str] = Counter()

    def add(self, item: WorkItem) -> None:
        self.billable += 1

    def add_render(self, item: WorkItem) -> None:
        self.render_only += 1

    def settle(self, outcome: PlannedOutcome) -> None:
        self.settled[outcome.status] += 1

    def counts(self) -> PlanCounts:
        return PlanCounts(self.billable, self.render_only, self.settled["skipped"], self.settled["rejected"])


@dataclass
class Planned:
    """
    A settled poll's plan of the sources beyond the watermark: its counts and what it may account for.

    :param listed_before: the newest generation an earlier, completed listing held.
    :param counts: the plan's verdicts.
    :param sources: every source planned.
    :param older: those of them no newer than ``listed_before`` (all a poll without an event passes).
    """

    listed_before: int
    counts: PlanCounts = field(default_factory=PlanCounts)
    sources: Span = field(default_factory=Span)
    older: Span = field(default_factory=Span)

    def tally(self, sources: Iterable[ObjectInfo]) -> Iterator[ObjectInfo]:
        """
        ``sources``, each counted into :attr:`sources` (and :attr:`older`) as it is planned.

        :param sources: the sources beyond the watermark, in name order.
        """
        for info in sources:
            self.sources.add(info)
            if info.generation <= self.listed_before:
                self.older.add(info)
            yield info


def _primitive(value: Any) -> Any:
    """
    Parameters as JSON primitives: typed options and rendition specs as their fields (a validated
    rendition as its spec's), tuples as lists.
    """
    if isinstance(value, Rendition):
        value = value.spec
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): _primitive(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_primitive(v) for v in value]
    return value


class NewImagesTrigger(BaseEventTrigger):
    """
    Fire when images without a finished output (the bucket operators' rule) arrived under a source
    prefix and settled: at least ``min_batch`` wait and nothing new came for ``settle_seconds``, or they
    waited ``max_wait``. It only lists, never calls a vendor. The event: ``{"status": "new_images",
    "images", "render_only", "finished", "rejected", "listed", "settled_by", "waited_seconds", "source",
    "destination", "watermark", "previous_watermark"}``; the watermark, kept in the asset's state store,
    stops a restarted triggerer firing twice (docs/arrivals.md). Give the image parameters of the bucket
    task the asset schedules (share one dict between both).

    :param source_bucket: bucket of the photos.
    :param destination_bucket: bucket of the outputs.
    :param source_prefix: prefix watched.
    :param destination_prefix: prefix of the outputs.
    :param conn_id: the bucket task's vendor connection (read, never called: it shapes the fingerprint),
        or its failover chain (a list): an output made by any of them counts as finished.
    :param operation: ``remove_background`` (RemoveBackgroundOperator) or ``generate_background``.
    :param include: glob pattern(s) a photo must match, as the bucket task's.
    :param exclude: glob pattern(s) to leave out.
    :param overwrite: the bucket task replaces outputs made from another generation or other options.
    :param gcp_conn_id: Google Cloud connection (ADC when absent; the emulator via ``STORAGE_EMULATOR_HOST``).
    :param poll_interval: seconds between two listings of the source prefix.
    :param settle_seconds: quiet seconds (no new object) that settle a burst.
    :param max_wait: fire after images have waited this long, settled or not, however few.
    :param min_batch: fewest waiting images a settled burst fires for (fewer wait for ``max_wait``).
    :param ordered_names: names sort by arrival (``incoming/20261201T1800-…``): list from the watermark's
        name only (one request per poll whatever the prefix holds). A name kept while it was off is no
        start: the whole prefix is listed until a source beyond the watermark is accounted for.
    :param renditions: as the bucket task's (docs/pipeline.md "Renditions"): a source whose master is
        finished but a rendition missing or stale counts as an image to process (render-only, 0 credits).
    :param masters_prefix: as the bucket task's (with ``renditions``; ``<destination_prefix>masters/``).
    :param rendition_presets: as the bucket task's (user-defined presets, as mappings of spec fields).
    :param image_options: the image parameters, as the bucket task's (same names and defaults:
        :data:`~airflow_provider_bgremoval.operators.operations.IMAGE_FIELDS`, the removal ones and the
        generation ones); ``vendor_options`` as a mapping of the vendor options' fields (with a chain, a
        mapping by vendor name).
    """

    def __init__(
        self,
        source_bucket: str,
        destination_bucket: str,
        source_prefix: str = "",
        destination_prefix: str = "",
        *,
        conn_id: str | Sequence[str],
        operation: str = "remove_background",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        overwrite: bool = False,
        gcp_conn_id: str | None = "google_cloud_default",
        poll_interval: float = 30.0,
        settle_seconds: float = 60.0,
        max_wait: float = 900.0,
        min_batch: int = 1,
        ordered_names: bool = False,
        renditions: Sequence[Mapping[str, Any] | Rendition | RenditionSpec] | str | None = None,
        masters_prefix: str | None = None,
        rendition_presets: Mapping[str, Any] | None = None,
        **image_options: Any,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if is_template(renditions):
            raise InvalidOptionError("renditions", "a trigger is not templated: give the list itself")
        self.renditions: Any = _primitive(load_list(renditions, "renditions"))
        self.rendition_presets: Any = _primitive(rendition_presets)
        self.parsed_renditions = self._parse_renditions(renditions, rendition_presets)
        # The rendition parameters by their meaning (one meaning, one state key and one set of kwargs):
        # no presets for ``{}`` or without renditions; no masters_prefix for the default (``None``, ``""``:
        # naming.masters_prefix; or the default spelled out) or without renditions, else normalised.
        if self.single_output or not self.rendition_presets:
            self.rendition_presets = None
        masters = None
        if not self.single_output:
            masters = naming.normalise_prefix(naming.masters_prefix(destination_prefix, masters_prefix))
        default = naming.masters_prefix(destination_prefix)
        self.masters_prefix: str | None = None if masters in (None, default) else masters
        self.spec = BatchSpec(
            source_bucket=source_bucket,
            destination_bucket=destination_bucket,
            source_prefix=source_prefix,
            destination_prefix=destination_prefix,
            include=[include] if isinstance(include, str) else _primitive(include),
            exclude=[exclude] if isinstance(exclude, str) else _primitive(exclude),
            overwrite=bool(overwrite),
            masters_prefix=masters,
        )
        if operation not in OPERATIONS:
            raise InvalidOptionError("operation", f"{operation!r} is not one of {', '.join(OPERATIONS)}")
        self.conn_id: str | list[str] = conn_id if isinstance(conn_id, str) else [str(c) for c in conn_id]
        self.conn_ids = [self.conn_id] if isinstance(self.conn_id, str) else self.conn_id
        if not self.conn_ids or len(set(self.conn_ids)) != len(self.conn_ids):
            raise InvalidOptionError(
                "conn_id", f"give one connection id or a list of distinct ones: {conn_id!r}"
            )
        self.operation, self.gcp_conn_id = operation, gcp_conn_id
        self.poll_interval, self.settle_seconds = float(poll_interval), float(settle_seconds)
        self.max_wait, self.min_batch = float(max_wait), int(min_batch)
        self.ordered_names = bool(ordered_names)
        if self.poll_interval <= 0 or self.settle_seconds < 0 or self.max_wait <= 0 or self.min_batch < 1:
            raise InvalidOptionError(
                "poll_interval",
                "poll_interval and max_wait must be positive, settle_seconds not "
                "negative, min_batch at least 1",
            )
        self.options = {name: _primitive(value) for name, value in image_parameters(image_options).items()}
        vendor_options_for(self.options["vendor_options"], None, chained=len(self.conn_ids) > 1)
        if operation == "generate_background":  # fail at DAG parse on bad options, as the operators do
            generation_options_of(self.options)
        elif not self.single_output:  # unified options: this one check covers every vendor of a chain
            check_master_options(removal_options_of(self.options))
        else:
            removal_options_of(self.options)
        if not self.single_output:  # a rendition folder overlapping the masters or sources: refused here too
            RenditionLayout.of_batch(self.spec, self.parsed_renditions, "")

    def _parse_renditions(self, given: Any, presets: Mapping[str, Any] | None) -> tuple[Rendition, ...]:
        """The validated renditions; those given must survive serialisation unchanged."""
        parsed = parse_renditions(self.renditions, self.rendition_presets)
        as_given = parse_renditions(load_list(given, "renditions"), presets)
        try:  # a Preset object passes through as itself: the triggerer could not store it
            json.dumps([self.renditions, self.rendition_presets])
            round_trips = [r.fingerprint for r in parsed] == [r.fingerprint for r in as_given]
        except TypeError:
            round_trips = False
        if not round_trips:
            raise InvalidOptionError(
                "renditions",
                "give the renditions and presets as mappings of spec fields (a trigger "
                "serialises to primitives, and these do not round-trip)",
            )
        return parsed

    @property
    def single_output(self) -> bool:
        """No renditions: one output per source (only ``renditions=None``; an empty list is refused)."""
        return self.renditions is None

    # -- serialisation ---------------------------------------------------------------------------------
    def serialize(self) -> tuple[str, dict[str, Any]]:
        """
        Class path and primitive kwargs that rebuild this trigger. Their order is part of the trigger's
        identity: Airflow hashes an asset watcher's kwargs unsorted, so a new order recreates the
        triggers of every deployed watcher.
        """
        spec = self.spec
        kwargs: dict[str, Any] = {
            "source_bucket": spec.source_bucket,
            "destination_bucket": spec.destination_bucket,
            "source_prefix": spec.source_prefix,
            "destination_prefix": spec.destination_prefix,
            "conn_id": self.conn_id,
            "operation": self.operation,
            "include": None if spec.include is None else list(spec.include),
            "exclude": None if spec.exclude is None else list(spec.exclude),
            "overwrite": spec.overwrite,
            "gcp_conn_id": self.gcp_conn_id,
            **{name: getattr(self, name) for name in _TIMING_PARAMETERS},
            **self.options,
            **{name: getattr(self, name) for name in _RENDITION_PARAMETERS},
        }
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NewImagesTrigger) and self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash(json.dumps(self.serialize(), sort_keys=True, default=str))

    @property
    def state_key(self) -> str:
        """The watermark's key in the asset state store: what is watched and what finishes it."""
        _, kwargs = self.serialize()
        identity = {
            k: v
            for k, v in kwargs.items()
            if k not in _TIMING_PARAMETERS
            and not (k in _RENDITION_PARAMETERS and v is None)  # the keys before renditions
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        return f"{STATE_KEY_PREFIX}{digest[:16]}"

    # -- what finishes an image: the bucket operators' processor identity -----------------------------------
    def build_processor(self, hook: BackgroundRemovalHook[Any], *, chained: bool = False) -> ImageProcessor:
        """
        The bucket task's processor (extension, fingerprint, vendor, limits); it is never called.

        :param hook: the vendor hook of ``conn_id`` (or of one connection of the chain).
        :param chained: the hook is one of a chain's connections (vendor options per vendor).
        """
        return processor_for(self.operation, hook, self.options, chained=chained)

    def rendition_layout(self, processor: ImageProcessor) -> RenditionLayout | None:
        """
        Where the bucket task's renditions go (``None`` without renditions), as the operators lay them out.

        :param processor: the bucket task's processor (it makes the masters).
        """
        if self.single_output:
            return None
        return RenditionLayout.of_batch(self.spec, self.parsed_renditions, processor.extension)

    async def get_processors(self) -> list[ImageProcessor]:
        """The processor of each connection in chain order, read without blocking (tests override this)."""
        processors = []
        for conn_id in self.conn_ids:
            async with aclosing(await BackgroundRemovalHook.aget_hook(conn_id)) as hook:
                processors.append(self.build_processor(hook, chained=len(self.conn_ids) > 1))
        return processors

    def get_storage(self) -> GcsStorage:
        """The GCS storage (tests override this)."""
        return GcsStorage(gcp_conn_id=self.gcp_conn_id)

    # -- clock and state (tests replace them) -------------------------------------------------------------
    def clock(self) -> float:
        """The monotonic clock the settle rules run on."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """
        Wait between polls.

        :param seconds: how long.
        """
        await asyncio.sleep(seconds)

    async def load_watermark(self) -> Watermark:
        """The watermark kept in the watched asset's state store (empty without a store)."""
        if self.asset_state_store is None:
            return Watermark()
        try:
            stored = await self.asset_state_store.aget(self.state_key)
        except ValueError as exc:  # a trigger watching several assets: no single store to read
            log.warning("No asset state store for the watermark (%s): kept in memory only", exc)
            self.asset_state_store = None
            return Watermark()
        return Watermark.from_value(stored)

    # -- polling ------------------------------------------------------------------------------------------
    def new_sources(self, storage: GcsStorage, watermark: Watermark) -> Iterator[ObjectInfo]:
        """
        The sources beyond ``watermark``, in name order, lazily (blocking: run in a thread). The source
        prefix's own ``_bgremoval/`` folder holds no source (the planning passes it over too): its objects
        neither settle a burst nor move the watermark's name (with ``ordered_names``, ``_`` sorts after
        digits). With ``ordered_names``, the listing starts at the watermark's name once it is a start.

        :param storage: the GCS storage.
        :param watermark: the current watermark.
        """
        spec = self.spec
        own_folder = naming.internal_prefix(spec.source_prefix)
        listing = storage.list_objects(
            spec.source_bucket,
            spec.source_prefix,
            include=spec.include,
            exclude=spec.exclude,
            start_offset=watermark.start if self.ordered_names else None,
        )
        for info in listing:
            if info.generation > watermark.generation and not info.name.startswith(own_folder):
                yield info

    def list_new(self, storage: GcsStorage, watermark: Watermark) -> Listing:
        """
        One poll's listing of the sources beyond ``watermark`` (blocking: run in a thread); at most
        :data:`KEPT_SOURCES` of them are kept.

        :param storage: the GCS storage.
        :param watermark: the current watermark.
        """
        listing = Listing()
        for info in self.new_sources(storage, watermark):
            listing.add(info)
        return listing

    def plan_new(
        self,
        storage: GcsStorage,
        processors: Sequence[ImageProcessor],
        listing: Listing,
        watermark: Watermark,
        listed_before: int,
    ) -> Planned:
        """
        Plan the sources beyond ``watermark`` as the bucket task would, without reading them (blocking:
        run in a thread): those ``listing`` kept, or, for a longer listing, those a new listing finds.

        :param storage: the GCS storage.
        :param processors: the bucket task's processors, primary first (what makes an output finished).
        :param listing: this poll's listing.
        :param watermark: the current watermark.
        :param listed_before: the newest generation an earlier, completed listing held.
        """
        planned = Planned(listed_before)
        sources = self.new_sources(storage, watermark) if listing.sources is None else listing.sources
        try:
            planned.counts = self.count_unfinished(storage, processors, planned.tally(sources))
        except DestinationCollisionError as exc:  # the run refuses the batch and says why: let it
            log.warning("New sources collide (the run will refuse them): %s", exc)
            planned.counts = PlanCounts(billable=planned.sources.count)
        return planned

    def count_unfinished(
        self, storage: GcsStorage, processors: Sequence[ImageProcessor], sources: Iterable[ObjectInfo]
    ) -> PlanCounts:
        """
        Plan ``sources`` as the bucket task would, without reading them, window by window (blocking: run
        in a thread); :class:`DestinationCollisionError` when two would make one output.

        :param storage: the GCS storage.
        :param processors: the bucket task's processors, primary first (what makes an output finished).
        :param sources: the sources beyond the watermark, in name order.
        """
        processor = processors[0]
        return plan_into(
            storage,
            self.spec,
            _CountingSink(),
            extension=processor.extension,
            identity=OutputIdentity.of(*processors),
            limits=processor.limits,
            check=False,
            sources=((info.name, info) for info in sources),
            renditions=self.rendition_layout(processor),
        ).counts()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll forever; yield an event per settled burst of images without a finished output."""
        source = gs_uri(self.spec.source_bucket, self.spec.source_prefix)
        processors = await self._first_processors(source)
        storage = self.get_storage()
        watermark = await self._first_watermark()
        arrivals = Arrivals()
        log.info("Watching %s from watermark %s", source, watermark)
        listed_before = watermark.generation  # the newest generation an earlier, completed listing held
        while True:
            try:
                listing = await asyncio.to_thread(self.list_new, storage, watermark)
                arrivals.observe(listing.span, self.clock())
                event, watermark, arrivals = await self._consider(
                    processors, storage, listing, arrivals, watermark, listed_before
                )
                listed_before = max(listed_before, listing.span.generation)
            except Exception as exc:  # a storage or state-store error: the next poll tries again
                log.warning("Poll of %s failed: %s", source, exc)
            else:
                if event is not None:
                    yield event
            await self.sleep(self.poll_interval)

    async def _first_processors(self, source: str) -> list[ImageProcessor]:
        """
        The bucket task's processors. A connection that cannot be read yet (the API server restarting, a
        secrets backend timing out) is read again each poll interval: an ended trigger would be restarted
        by the triggerer at once, in a loop of tracebacks. A missing connection or bad options end it.

        :param source: the watched prefix (for the log).
        """
        while True:
            try:
                return await self.get_processors()
            except _CONFIGURATION_ERRORS as exc:
                log.error(
                    "Watching %s stopped: vendor connection %s or the trigger's options are wrong: %s",
                    source,
                    ", ".join(self.conn_ids),
                    exc,
                )
                raise
            except Exception as exc:  # transient: the watcher waits, it does not die
                log.warning(
                    "Reading the vendor connection %s failed: %s; trying again in %g s",
                    ", ".join(self.conn_ids),
                    exc,
                    self.poll_interval,
                )
            await self.sleep(self.poll_interval)

    async def _first_watermark(self) -> Watermark:
        """The kept watermark; a state store that cannot be read yet is asked again each poll interval
        (starting from an empty one would fire again for every unfinished photo)."""
        while True:
            try:
                return await self.load_watermark()
            except Exception as exc:  # a transient state-store error: the watcher waits, it does not die
                log.warning("Reading the watermark failed: %s; trying again in %g s", exc, self.poll_interval)
            await self.sleep(self.poll_interval)

    async def _consider(
        self,
        processors: Sequence[ImageProcessor],
        storage: GcsStorage,
        listing: Listing,
        arrivals: Arrivals,
        watermark: Watermark,
        listed_before: int = 0,
    ) -> tuple[TriggerEvent | None, Watermark, Arrivals]:
        """
        One poll's decision: the event to fire (if any), the watermark and arrivals after it.

        A listing of more than one page is no snapshot: a photo that lands while it runs is left out when
        its name sorts into a page already read, while a later upload sorting after it is listed. Without
        an event (no run will plan the prefix), the watermark therefore only passes the sources an earlier,
        completed listing held too (``listed_before``: every object older than those was listed in full);
        the newer ones are evaluated again at the next poll.
        """
        now = self.clock()
        reason = arrivals.ready(now, self.settle_seconds, self.max_wait)
        if reason is None:
            return None, watermark, arrivals
        planned = await asyncio.to_thread(
            self.plan_new, storage, processors, listing, watermark, listed_before
        )
        counts = planned.counts
        enough = counts.unfinished >= self.min_batch or (reason == "max_wait" and counts.unfinished)
        if counts.unfinished and not enough:  # too few after a settled burst: wait for more or max_wait
            arrivals.evaluated = (arrivals.count, arrivals.newest)
            log.info("%d image(s) waiting, fewer than min_batch=%d", counts.unfinished, self.min_batch)
            return None, watermark, arrivals
        accounted = planned.sources if enough else planned.older
        new = watermark.advanced(accounted, fired=bool(enough), ordered=self.ordered_names)
        if self.asset_state_store is not None and new != watermark:  # first: never fire twice for these
            await self.asset_state_store.aset(self.state_key, new.as_dict())
        if not enough:
            log.info(
                "%d new source(s), all finished or refused: watermark %s (%d listed for the first time: "
                "evaluated again)",
                planned.sources.count,
                new,
                planned.sources.count - accounted.count,
            )
            return None, new, Arrivals()
        waited = now - (arrivals.first_seen_at or now)
        log.info(
            "%d image(s) to process (%s after %.1f s): watermark %s", counts.unfinished, reason, waited, new
        )
        spec = self.spec
        payload = {
            "status": "new_images",
            "images": counts.unfinished,
            "render_only": counts.render_only,
            "finished": counts.finished,
            "rejected": counts.rejected,
            "listed": planned.sources.count,
            "settled_by": reason,
            "waited_seconds": round(waited, 1),
            "source": gs_uri(spec.source_bucket, spec.source_prefix),
            "destination": gs_uri(spec.destination_bucket, spec.destination_prefix),
            "watermark": new.as_dict(),
            "previous_watermark": watermark.as_dict(),
        }
        return TriggerEvent(payload), new, Arrivals()  # type: ignore[no-untyped-call]
