"""Planning before spending: list, map names, refuse collisions, skip finished work, check locally.

Sources are planned in windows of :data:`WINDOW` in listing order: one name-range listing finds a
window's finished outputs, and the window's header checks run on a pool of ``concurrency`` threads, so
memory is bounded by a window, not by the prefix. Explicit ``source_objects`` out of name order are
planned in the given order, their outputs looked up in windows of their names in order. What
:func:`plan_batch` leaves billable is what the batch (and the credits pre-flight) pays for; the plan's
life: docs/pipeline.md ("The plan").
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice, pairwise
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from airflow_provider_bgremoval.exceptions import BgRemovalError, InputRejectedError, InvalidOptionError
from airflow_provider_bgremoval.imaging import (
    ImageInfo,
    InputLimits,
    check_limits,
    check_size,
    prepare_input,
    read_header,
)
from airflow_provider_bgremoval.pipeline.naming import (
    UnsafeNameError,
    destination_name,
    in_internal_folder,
    internal_prefix,
    normalise_prefix,
)
from airflow_provider_bgremoval.storage.exceptions import StorageError, gs_uri, split_gs_uri
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectFilter, ObjectInfo

if TYPE_CHECKING:
    from airflow_provider_bgremoval.pipeline.rendering import (
        RenditionLayout,
        RenditionTarget,
        WindowRenditions,
    )

log = logging.getLogger(__name__)

#: Bytes read from each source during planning for the header-only check.
HEADER_BYTES = 64 * 1024
#: Largest image (declared pixels) planning decodes in full when it holds the whole object: bounds the
#: memory of ``concurrency`` checks at once (a few KiB of flat colour can declare tens of megapixels).
FULL_CHECK_MAX_PIXELS = 4_000_000
#: Sources planned together: their finished outputs are found with one name-range listing.
WINDOW = 1000
#: An explicit ``source_objects`` window smaller than this looks its outputs up one by one.
_STAT_THRESHOLD = 200

# Object metadata recorded on every output (DESIGN.md decision 5).
META_SOURCE = "bgremoval-source"
META_SOURCE_GENERATION = "bgremoval-source-generation"
META_OPTIONS_HASH = "bgremoval-options-hash"
META_VENDOR = "bgremoval-vendor"
META_OPERATION = "bgremoval-operation"
META_REQUEST_ID = "bgremoval-request-id"
META_CREDITS = "bgremoval-credits"
META_WRITER = "bgremoval-writer"


#: The code of a row whose renditions are non-compliant (recorded by an earlier run, or certain from the
#: source's size at planning).
NONCOMPLIANT = "rendition_noncompliant"
#: What a settled row is (:attr:`PlannedOutcome.kind`), for the pre-flight's counts.
SETTLED_KINDS = ("already_done", "rejected_locally", "noncompliant_at_planning", "recorded_noncompliant")


class DestinationCollisionError(BgRemovalError, ValueError):
    """Two or more sources map to the same destination object; nothing was processed."""


def read_back_prefixes(
    source_bucket: str, source_prefix: str, destination_bucket: str | None, *outputs: str | None
) -> tuple[str, ...]:
    """
    The output prefixes that lie inside the source prefix of the same bucket: a listing of the source
    prefix would read their outputs back as sources (docs/pipeline.md, "Outputs inside the source
    prefix"). A listing batch is refused; explicit names inside them are rejected; the shard lister lists
    around them.

    :param source_bucket: the bucket of the sources.
    :param source_prefix: the source prefix (normalised).
    :param destination_bucket: the bucket of the outputs (``None``: not known, nothing is read back).
    :param outputs: the output prefixes (normalised; ``None`` entries are left out).
    """
    if destination_bucket != source_bucket:
        return ()
    inside = (prefix for prefix in outputs if prefix is not None and prefix.startswith(source_prefix))
    return tuple(dict.fromkeys(inside))


#: The bucket and prefix parameters, each with the bucket and prefix parameters of the place it names (a
#: ``gs://`` URI given as one is split into those two).
LOCATION_PARAMETERS: dict[str, tuple[str, str]] = {
    "source_bucket": ("source_bucket", "source_prefix"),
    "source_prefix": ("source_bucket", "source_prefix"),
    "destination_bucket": ("destination_bucket", "destination_prefix"),
    "destination_prefix": ("destination_bucket", "destination_prefix"),
    "masters_prefix": ("destination_bucket", "masters_prefix"),
}
#: What GCS takes in a bucket name, each end a letter or a digit.
_BUCKET_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_.-]*[a-z0-9])?")
_BUCKET_CHARACTER = re.compile(r"[a-z0-9_.-]")


def check_location(parameter: str, value: str | None) -> None:
    """
    Refuse a bucket or prefix that names nothing (``InvalidOptionError`` naming ``parameter``): a ``gs://``
    URI (GCS would take it as a name: nothing listed, nothing found), with the bucket and prefix it
    means; a bucket name GCS refuses (:func:`bucket_name_problem`); a missing bucket. A prefix may be
    ``None`` or empty.

    :param parameter: one of :data:`LOCATION_PARAMETERS`.
    :param value: its value.
    """
    is_bucket = parameter.endswith("_bucket")
    if value is None or value == "":
        if is_bucket:
            raise InvalidOptionError(parameter, "is required")
        return
    text = str(value)
    if text.strip().startswith("gs://"):
        bucket_parameter, prefix_parameter = LOCATION_PARAMETERS[parameter]
        bucket, name = split_gs_uri(text.strip())
        split = f"{bucket_parameter}={bucket!r}"
        if name or not is_bucket:
            split += f", {prefix_parameter}={name!r}"
        raise InvalidOptionError(
            parameter,
            f"{text!r} is a gs:// URI, which GCS would take as a name (nothing would be listed or found); "
            f"give the bucket and the prefix apart: {split}",
        )
    problem = bucket_name_problem(text) if is_bucket else None
    if problem is not None:
        raise InvalidOptionError(parameter, f"{text!r} is not a bucket name GCS accepts: it {problem}")


def bucket_name_problem(name: str) -> str | None:
    """
    What GCS's naming rules (https://cloud.google.com/storage/docs/buckets#naming) refuse in a bucket
    name, else ``None``: only lowercase letters, digits, ``-``, ``_`` and ``.``; a letter or digit at each
    end; 3 to 63 characters, up to 222 with dots, each dot-separated part at most 63; no ``goog`` prefix;
    not an IP address. (Its rule against "google" and close misspellings is GCS's to judge.)

    :param name: the bucket name.
    """
    others = "".join(sorted(set(_BUCKET_CHARACTER.sub("", name))))
    longest = 222 if "." in name else 63
    rules = (
        (bool(others), f"contains {others!r}: only lowercase letters, digits, '-', '_' and '.' are allowed"),
        (
            not 3 <= len(name) <= longest,
            f"has {len(name)} characters: a bucket name has 3 to 63 (up to 222 with dots)",
        ),
        (
            any(len(part) > 63 for part in name.split(".")),
            "has a dot-separated part longer than 63 characters",
        ),
        (not _BUCKET_NAME.fullmatch(name), "must start and end with a letter or a digit"),
        (name.startswith("goog"), "starts with 'goog', which GCS reserves"),
        (_is_ip_address(name), "is an IP address"),
    )
    return next((problem for broken, problem in rules if broken), None)


def _is_ip_address(name: str) -> bool:
    """True for an IPv4 address in dotted-decimal notation (``192.168.5.4``)."""
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _warn_leading_slash(parameter: str, prefix: str | None) -> None:
    """
    A prefix starting with ``/`` (a path join) is read without it (:func:`.normalise_prefix`, as ever):
    warned, as an object whose name does start with ``/`` (rare in GCS) is then never reached.
    """
    if prefix and prefix.startswith("/"):
        log.warning(
            "%s %r starts with '/': read as %r (a leading '/' is dropped; GCS object names rarely start "
            "with one, and objects whose names do are not reached); give it without the '/'",
            parameter,
            prefix,
            normalise_prefix(prefix),
        )


@dataclass(frozen=True)
class BatchSpec:
    """
    What a batch works on (everything except the vendor call itself).

    :param source_bucket: bucket of the source images.
    :param source_prefix: prefix listed for sources, and stripped from names to build destinations.
    :param source_objects: explicit object names instead of listing (still relative to ``source_prefix``).
    :param destination_bucket: bucket receiving the outputs.
    :param destination_prefix: prefix of the outputs.
    :param include: glob patterns a source must match (``*.jpg``), listed or explicit; ``None`` for all.
    :param exclude: glob patterns excluding sources (listed or explicit).
    :param overwrite: replace outputs made from another source generation or other options.
    :param masters_prefix: where the outputs (masters) go when renditions are made (``None``: under
        ``destination_prefix`` as without renditions); manifests and claims stay under ``destination_prefix``.

    Refused (``InvalidOptionError`` naming the parameter, before anything is listed): a bucket or prefix
    given as a ``gs://`` URI, a bucket name GCS refuses (:func:`check_location`), outputs a listing of the
    sources would read back. A prefix starting with ``/`` is read without it, with a warning.
    """

    source_bucket: str
    destination_bucket: str
    source_prefix: str = ""
    source_objects: Sequence[str] | None = None
    destination_prefix: str = ""
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    overwrite: bool = False
    masters_prefix: str | None = None

    def __post_init__(self) -> None:
        for parameter in LOCATION_PARAMETERS:
            check_location(parameter, getattr(self, parameter))
            if parameter.endswith("_prefix"):
                _warn_leading_slash(parameter, getattr(self, parameter))
        object.__setattr__(self, "source_prefix", normalise_prefix(self.source_prefix))
        object.__setattr__(self, "destination_prefix", normalise_prefix(self.destination_prefix))
        if self.masters_prefix is not None:
            object.__setattr__(self, "masters_prefix", normalise_prefix(self.masters_prefix))
        if self.source_objects is not None:  # explicit names: those inside ``read_back`` are rejected
            return
        for parameter in ("destination_prefix", "masters_prefix"):
            prefix = getattr(self, parameter)
            if prefix is not None and prefix in self.read_back:
                raise InvalidOptionError(
                    parameter,
                    f"{gs_uri(self.destination_bucket, prefix)} lies inside the source prefix "
                    f"{gs_uri(self.source_bucket, self.source_prefix)}: outputs would be read back as "
                    "sources",
                )

    @property
    def read_back(self) -> tuple[str, ...]:
        """The output prefixes a listing of the source prefix would read back (:func:`read_back_prefixes`)."""
        return read_back_prefixes(
            self.source_bucket,
            self.source_prefix,
            self.destination_bucket,
            self.destination_prefix,
            self.masters_prefix,
        )

    @property
    def output_prefix(self) -> str:
        """Where the outputs go: ``masters_prefix`` with renditions, else ``destination_prefix``."""
        return self.destination_prefix if self.masters_prefix is None else self.masters_prefix

    @property
    def internal_prefix(self) -> str:
        """Where the provider keeps manifests, reports and claims for this destination."""
        return internal_prefix(self.destination_prefix)


@dataclass(frozen=True)
class WorkItem:
    """
    One billable image.

    :param source: the source object, pinned to the generation that was planned.
    :param destination: destination object name.
    :param replace_generation: generation of a stale output to replace (``overwrite=True``), or ``None``.
    :param fully_checked: planning decoded the whole object as the run will (else header and size only).
    :param master: a finished master to render from (a render-only item: no claim, no vendor call).
    :param renditions: the source's renditions, with what exists of each (empty without renditions).
    :param accepted: with a chain whose accounts' input limits differ, the accounts whose own limits take
        it (bit ``i``: the chain's account ``i``), from its header; ``None``: every account (or unchecked).
    """

    source: ObjectInfo
    destination: str
    replace_generation: int | None = None
    fully_checked: bool = False
    master: ObjectInfo | None = None
    renditions: tuple[RenditionTarget, ...] = ()
    accepted: int | None = None

    @property
    def render_only(self) -> bool:
        """True when the master exists: only renditions are made (0 credits)."""
        return self.master is not None


@dataclass(frozen=True)
class PlannedOutcome:
    """
    A source settled during planning (no vendor call).

    :param source: the source object (or a stand-in for a missing one).
    :param destination: destination name when one could be computed.
    :param status: ``skipped``, ``rejected``, or ``failed`` (unreadable for its local check).
    :param code: reason code.
    :param message: human explanation.
    :param extra: more manifest fields (``master``, ``renditions``; ``vendor``: the vendor that made a
        finished output, from its metadata), if any.
    """

    source: ObjectInfo
    destination: str | None
    status: str
    code: str
    message: str
    extra: Mapping[str, Any] | None = None

    @property
    def kind(self) -> str:
        """
        One of :data:`SETTLED_KINDS` (each explained in docs/credits.md, the pre-flight's counts); a source
        unreadable for its check (``failed``) is ``rejected_locally``.
        """
        if self.status == "skipped":
            return "already_done"
        if self.code == NONCOMPLIANT:
            recorded = bool((self.extra or {}).get("render_only"))
            return "recorded_noncompliant" if recorded else "noncompliant_at_planning"
        return "rejected_locally"


@dataclass
class BatchPlan:
    """
    The result of planning.

    :param spec: the batch spec.
    :param items: billable work, in listing order.
    :param settled: sources skipped or rejected during planning.
    :param checked: the local checks ran (else every unfinished source is billable, unchecked).
    :param render: render-only items (a finished master, renditions to make): free, never billable.
    :param layout: the renditions its items' targets follow (``None``: none); the batch judges each item
        by its source's size before its call, as planning does (a plan kept unchecked has not).
    """

    spec: BatchSpec
    items: list[WorkItem] = field(default_factory=list)
    settled: list[PlannedOutcome] = field(default_factory=list)
    checked: bool = True
    render: list[WorkItem] = field(default_factory=list)
    layout: RenditionLayout | None = None

    def add(self, item: WorkItem) -> None:
        """Record a billable item (the :class:`PlanSink` protocol)."""
        self.items.append(item)

    def add_render(self, item: WorkItem) -> None:
        """Record a render-only item (0 credits)."""
        self.render.append(item)

    def settle(self, outcome: PlannedOutcome) -> None:
        """Record a source settled during planning (the :class:`PlanSink` protocol)."""
        self.settled.append(outcome)

    @property
    def billable(self) -> int:
        """Number of billable items."""
        return len(self.items)

    def samples(self, count: int) -> list[WorkItem]:
        """
        The first ``count`` billable items (e.g. for a test-mode estimate).

        :param count: how many.
        """
        return self.items[:count]

    @property
    def total(self) -> int:
        """Number of sources."""
        return len(self.items) + len(self.settled) + len(self.render)

    def count(self, status: str) -> int:
        """Number of settled sources with ``status``."""
        return sum(1 for outcome in self.settled if outcome.status == status)

    def count_kind(self, kind: str) -> int:
        """
        Number of settled sources of ``kind`` (:attr:`PlannedOutcome.kind`).

        :param kind: one of :data:`SETTLED_KINDS`.
        """
        return sum(1 for outcome in self.settled if outcome.kind == kind)

    @property
    def unverified_by_header_only(self) -> int:
        """Billable items checked by header only (see :attr:`WorkItem.fully_checked`)."""
        return self.header_only_among(len(self.items))

    def header_only_among(self, first: int) -> int:
        """
        How many of the first ``first`` billable items were checked by header only (within ``max_images``).

        :param first: number of leading items considered.
        """
        return sum(1 for item in self.items[: max(0, first)] if not item.fully_checked)

    def accepted_among(self, first: int) -> list[int | None]:
        """
        :attr:`WorkItem.accepted` of the first ``first`` billable items, in order.

        :param first: number of leading items considered.
        """
        return [item.accepted for item in self.items[: max(0, first)]]


class PlanSink(Protocol):
    """Where planning puts its verdicts: :class:`BatchPlan` in memory, or a plan kept in the bucket."""

    def add(self, item: WorkItem) -> None:
        """Record a billable item."""

    def add_render(self, item: WorkItem) -> None:
        """Record a render-only item (renditions of a finished master: 0 credits)."""

    def settle(self, outcome: PlannedOutcome) -> None:
        """Record a source settled during planning."""


#: The sink type :func:`plan_into` fills and returns.
SinkT = TypeVar("SinkT", bound=PlanSink)


@dataclass(frozen=True)
class OutputIdentity:
    """
    The outputs a batch accepts as finished: the ``(vendor, options fingerprint)`` pairs of its accounts
    (a failover chain's every account: docs/pipeline.md, "Failover").

    :param accepted: the ``(vendor, fingerprint)`` pairs, the primary's first.
    """

    accepted: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not self.accepted:
            raise InvalidOptionError("conn_id", "a batch needs at least one vendor account")

    @classmethod
    def of(cls, *processors: _Identified) -> OutputIdentity:
        """
        The identity accepting what any of ``processors`` makes (duplicates kept once, order kept).

        :param processors: objects with ``vendor`` and ``fingerprint`` (the chain's processors).
        """
        pairs = dict.fromkeys((processor.vendor, processor.fingerprint) for processor in processors)
        return cls(tuple(pairs))

    @property
    def vendor(self) -> str:
        """The primary's vendor."""
        return self.accepted[0][0]

    def accepts(self, metadata: Mapping[str, str]) -> bool:
        """
        True when ``metadata`` records a vendor and options hash of this identity.

        :param metadata: an output's object metadata.
        """
        return (metadata.get(META_VENDOR), metadata.get(META_OPTIONS_HASH)) in self.accepted


class _Identified(Protocol):
    vendor: str
    fingerprint: str


def made_by_vendor(output: ObjectInfo | None) -> str | None:
    """
    The vendor that made an output, as its metadata records it (``None``: not recorded).

    :param output: the output (or master), if any.
    """
    if output is None:
        return None
    return output.metadata.get(META_VENDOR) or None


def is_finished(existing: ObjectInfo, source: ObjectInfo, identity: OutputIdentity) -> bool:
    """
    True when ``existing`` records that it was made from ``source`` with options ``identity`` accepts.

    :param existing: the output object.
    :param source: the source object (pinned to its generation).
    :param identity: the accepted ``(vendor, fingerprint)`` pairs.
    """
    meta = existing.metadata or {}
    return (
        meta.get(META_SOURCE_GENERATION) == str(source.generation)
        and identity.accepts(meta)
        and meta.get(META_SOURCE) == source.uri
    )


def iter_sources(
    storage: GcsStorage, spec: BatchSpec, *, outputs: bool = False
) -> Iterator[tuple[str, ObjectInfo | StorageError | None]]:
    """
    The sources in order as ``(name, object)``; for an explicit name the object is ``None`` when it
    is absent, or the :class:`StorageError` that kept it from being looked up (that source alone fails).

    :param storage: the GCS storage.
    :param spec: what the batch works on.
    :param outputs: the sources are another job's outputs (masters): the listing skips the provider's
        own folder under the prefix (one more listing request).
    """
    if spec.source_objects is not None:
        yield from _explicit_sources(storage, spec)
        return
    skip = [internal_prefix(spec.source_prefix)] if outputs else []
    listing = list_sources(
        storage, spec.source_bucket, spec.source_prefix, include=spec.include, exclude=spec.exclude, skip=skip
    )
    for info in listing:
        yield info.name, info


def _explicit_names(spec: BatchSpec) -> list[str]:
    """
    The object names of ``spec.source_objects`` (:func:`_source_name`) that ``include``/``exclude`` keep,
    in the given order: the filters select explicit sources as they select a listing's.
    """
    keep = ObjectFilter(spec.include, spec.exclude)
    names = (_source_name(spec, str(raw)) for raw in spec.source_objects or ())
    return [name for name in names if keep.matches(name, spec.source_prefix)]


def _explicit_sources(
    storage: GcsStorage, spec: BatchSpec
) -> Iterator[tuple[str, ObjectInfo | StorageError | None]]:
    """Each explicit source the filters keep, looked up (:func:`iter_sources`); those left out are not."""
    names, given = _explicit_names(spec), len(spec.source_objects or ())
    if len(names) < given:
        log.info("include/exclude left out %d of the %d source_objects", given - len(names), given)
    for name in names:
        try:
            yield name, storage.stat(spec.source_bucket, name)
        except StorageError as exc:
            yield name, exc


def _source_name(spec: BatchSpec, raw: str) -> str:
    """
    The object name of an explicit source: a ``gs://`` URI names the object itself (in the source bucket,
    under the source prefix, else :class:`InvalidOptionError`), any other name is below the source prefix.
    """
    if not raw.startswith("gs://"):
        if spec.source_prefix and not raw.startswith(spec.source_prefix):
            return spec.source_prefix + raw.lstrip("/")
        return raw
    bucket, name = split_gs_uri(raw)
    if bucket != spec.source_bucket:
        raise InvalidOptionError(
            "source_objects", f"{gs_uri(bucket, name)} is not in source bucket {spec.source_bucket!r}"
        )
    if not name.startswith(spec.source_prefix):  # the prefix put before it would name another object
        raise InvalidOptionError(
            "source_objects",
            f"{gs_uri(bucket, name)} is not under the source prefix "
            f"{gs_uri(spec.source_bucket, spec.source_prefix)}",
        )
    return name


def list_sources(
    storage: GcsStorage,
    bucket: str,
    prefix: str,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    skip: Sequence[str] = (),
) -> Iterator[ObjectInfo]:
    """
    The objects under ``prefix`` in name order, filtered, never one under a ``skip`` folder: the listing
    asks only for the name ranges around those folders (a listing request per range and 1,000 names).

    :param storage: the GCS storage.
    :param bucket: the bucket.
    :param prefix: the prefix listed.
    :param include: pattern(s) a source must match.
    :param exclude: pattern(s) leaving sources out.
    :param skip: folders (each ending with ``/``; ``""``: every name) whose objects are never listed.
    """
    if "" in skip:
        return
    ranges: list[tuple[str, str | None]] = [("", None)]
    for folder in skip:
        ranges = [part for start, end in ranges for part in ranges_outside(folder, start, end)]
    for start, end in ranges:
        yield from storage.list_objects(
            bucket, prefix, include=include, exclude=exclude, start_offset=start or None, end_offset=end
        )


def outputs_between(storage: GcsStorage, spec: BatchSpec, first: str, last: str) -> Iterator[ObjectInfo]:
    """
    The destination objects named from ``first`` to ``last`` (inclusive), never the provider's own
    (a listing request per 1,000 names).

    :param storage: the GCS storage.
    :param spec: the batch spec (destination bucket and prefix).
    :param first: the lowest output name wanted.
    :param last: the highest output name wanted.
    """
    for start, end in ranges_outside(spec.internal_prefix, first, last + "\0"):
        yield from storage.list_objects(
            spec.destination_bucket, spec.output_prefix, start_offset=start, end_offset=end
        )


def ranges_outside(folder: str, first: str, end: str | None) -> list[tuple[str, str | None]]:
    """
    The name ranges ``[start, end)`` covering ``[first, end)`` without the names under ``folder``.

    :param folder: a folder name ending with ``/`` (names starting with it are left out).
    :param first: the lowest name wanted.
    :param end: the first name not wanted (``None``: no upper bound).
    """
    after_folder = folder[:-1] + chr(ord(folder[-1]) + 1)  # the first name past every "<folder>…"
    ranges = [(first, end)]
    if first < after_folder and (end is None or folder < end):
        ranges = [(first, folder), (after_folder, end)]
    return [(start, stop) for start, stop in ranges if stop is None or start < stop]


def _few(spec: BatchSpec, count: int) -> bool:
    """A small window of explicit ``source_objects``: look its outputs up one by one."""
    return spec.source_objects is not None and count < _STAT_THRESHOLD


def _existing_outputs(storage: GcsStorage, spec: BatchSpec, destinations: list[str]) -> dict[str, ObjectInfo]:
    """The existing outputs among ``destinations`` (one window): a name-range listing, or stats for a few."""
    if _few(spec, len(destinations)):
        infos = (storage.stat(spec.destination_bucket, name) for name in destinations)
        return {info.name: info for info in infos if info is not None}
    wanted = set(destinations)
    found = outputs_between(storage, spec, min(destinations), max(destinations))
    return {info.name: info for info in found if info.name in wanted}


class CheckedSource(NamedTuple):
    """
    What the local checks learnt of a source that passed them.

    :param info: its header.
    :param fully_checked: the whole object was decoded (see :attr:`WorkItem.fully_checked`).
    """

    info: ImageInfo
    fully_checked: bool


def check_source(storage: GcsStorage, source: ObjectInfo, limits: InputLimits, vendor: str) -> CheckedSource:
    """
    Raise the :class:`InputRejectedError` the run would raise for ``source`` (docs/reliability.md).

    :param storage: the GCS storage.
    :param source: the source object (pinned to its generation).
    :param limits: the vendor's input limits.
    :param vendor: vendor name (for the errors).
    :return: its header, and whether the whole object was decoded.
    """
    check_size(source.size, limits, vendor=vendor)  # the listing's size alone may decide
    data = storage.read_head(source.bucket, source.name, HEADER_BYTES, generation=source.generation)
    try:
        info = read_header(data, vendor=vendor)
    except InputRejectedError:
        if len(data) < HEADER_BYTES or source.size <= HEADER_BYTES:
            raise
        # The header may lie beyond the first bytes (e.g. a large EXIF block): read it all.
        data = storage.read(source.bucket, source.name, generation=source.generation)
        info = read_header(data, vendor=vendor)
    check_limits(info, source.size, limits, vendor=vendor)
    fully_checked = len(data) >= source.size and info.pixels <= FULL_CHECK_MAX_PIXELS
    if fully_checked:
        prepare_input(data, limits, vendor=vendor)  # decodes every pixel, as the run will
    return CheckedSource(info, fully_checked)


class _Collisions:
    """
    Sources that map to one output. A listing is in name order, names sharing a stem adjacent, so a stack
    of the stems on the current name's path is bounded memory; explicit ``source_objects`` keep all names.
    """

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self.open: dict[str, tuple[str, str]] = {}  # destination -> (stem, source name) of earlier names
        self.found: list[tuple[str, str, str]] = []

    def first(self, name: str, stem: str, destination: str) -> str | None:
        """
        The earlier source mapped to ``destination`` (recorded as a collision, unless it is this very
        name: an explicit name given twice is one source, planned once), or ``None``.
        """
        if self.ordered:  # the stems that are no prefix of this name can never recur
            while self.open and not name.startswith(next(reversed(self.open.values()))[0]):
                self.open.popitem()
        earlier = self.open.get(destination)
        if earlier is None:
            self.open[destination] = (stem, name)
            return None
        if earlier[1] != name:
            self.found.append((earlier[1], name, destination))
        return earlier[1]

    def raise_if_any(self) -> None:
        """Raise :class:`DestinationCollisionError` when any collision was found."""
        if not self.found:
            return
        shown = "; ".join(f"{a!r} and {b!r} -> {d!r}" for a, b, d in self.found[:10])
        more = f" (and {len(self.found) - 10} more)" if len(self.found) > 10 else ""
        raise DestinationCollisionError(
            f"{len(self.found)} source(s) would overwrite another source's output: {shown}{more}. "
            "Rename the sources, narrow include/exclude, or split the batch; nothing was processed.",
            code="destination_collision",
        )


def _windows(items: Iterator[WorkItem]) -> Iterator[list[WorkItem]]:
    """``items`` in lists of :data:`WINDOW` (``itertools.batched`` needs Python 3.12)."""
    while window := list(islice(items, WINDOW)):
        yield window


#: What mapping a source gives: an item to plan, or the source settled at once (missing, unsafe name).
_Mapped = WorkItem | PlannedOutcome


def _settling(mapped: Iterable[_Mapped], sink: PlanSink) -> Iterator[WorkItem]:
    """The items of ``mapped``, each settled source put in ``sink`` where it comes (lazily, as mapped)."""
    for entry in mapped:
        if isinstance(entry, WorkItem):
            yield entry
        else:
            sink.settle(entry)


def _out_of_order(spec: BatchSpec) -> bool:
    """Explicit names not in name order (a listing's order): :func:`plan_into` looks them up in order."""
    if spec.source_objects is None:
        return False
    names = _explicit_names(spec)
    return any(later < earlier for earlier, later in pairwise(names))


def _map_sources(
    sources: Iterable[tuple[str, ObjectInfo | StorageError | None]],
    spec: BatchSpec,
    extension: str,
    collisions: _Collisions,
    *,
    written: bool = True,
) -> Iterator[_Mapped]:
    """
    Map each source to its output (``written``: an object to be written, so never among the sources; a
    render-only job's masters only name theirs); missing and unsafe names come settled; note collisions. A
    listed prefix's ``_bgremoval/`` folders (the claims, manifests and contact sheets of a job whose
    outputs are these sources: the generate example reads the removal's cut-outs; deeper ones too, a
    prefix over several such jobs' destinations) hold no source: passed over.
    """
    read_back = spec.read_back
    listed = spec.source_objects is None
    for name, entry in sources:
        if listed and in_internal_folder(name.removeprefix(spec.source_prefix)):
            continue
        if entry is None or isinstance(entry, StorageError):
            unknown = ObjectInfo(bucket=spec.source_bucket, name=name, generation=0, size=0)
            yield _unknown_source(unknown, entry)
            continue
        try:
            _refuse_read_back(spec, read_back, name)
            dest = destination_name(name, spec.source_prefix, spec.output_prefix, extension)
            if written:
                _refuse_among_sources(spec, read_back, dest)
        except UnsafeNameError as exc:
            yield PlannedOutcome(entry, None, "rejected", "unsafe_name", str(exc))
            continue
        stem = spec.source_prefix + dest[len(spec.output_prefix) : len(dest) - len(extension)]
        if collisions.first(name, stem, dest) is None:
            yield WorkItem(entry, dest)


def _unknown_source(source: ObjectInfo, error: StorageError | None) -> PlannedOutcome:
    """An explicit source that does not exist (rejected), or that could not be looked up (failed)."""
    if error is None:
        return PlannedOutcome(source, None, "rejected", "not_found", "source object does not exist")
    message = f"{_NOT_PLANNED.format('looked up')}: {error}"
    return PlannedOutcome(source, None, "failed", type(error).__name__, message)


def _refuse_read_back(spec: BatchSpec, read_back: Sequence[str], name: str) -> None:
    """Raise :class:`UnsafeNameError` for an explicit source inside an output prefix (an output)."""
    for prefix in read_back:
        if name.startswith(prefix):
            raise UnsafeNameError(
                f"{gs_uri(spec.source_bucket, name)} is inside the output prefix "
                f"{gs_uri(spec.destination_bucket, prefix)}: an output is never read back as a source"
            )


def _refuse_among_sources(spec: BatchSpec, read_back: Sequence[str], destination: str) -> None:
    """
    Raise :class:`UnsafeNameError` when ``destination`` lies among the sources: in their bucket, under
    the source prefix and in no output prefix (a source prefix inside the output prefix, a folder below it
    named like the path between them: ``images/images/x.jpg`` -> ``images/x.png`` with ``images/`` read
    and ``""`` written), where it may be a source itself (``overwrite`` would replace it) or become one.
    """
    if spec.destination_bucket != spec.source_bucket or not destination.startswith(spec.source_prefix):
        return
    if any(destination.startswith(prefix) for prefix in read_back):
        return  # an output prefix inside the source prefix: outputs, never sources
    raise UnsafeNameError(
        f"its output {gs_uri(spec.destination_bucket, destination)} would lie inside the source prefix "
        f"{gs_uri(spec.source_bucket, spec.source_prefix)}, among the sources (it could replace one, "
        "or be read back as one)"
    )


#: Why a source a storage error kept from planning fails alone (``{}``: what could not be done).
_NOT_PLANNED = (
    "the source could not be {} at planning, so it was not planned (nothing sent or paid; "
    "the next run plans it again)"
)


def output_exists_message(existing: ObjectInfo, source: ObjectInfo) -> str:
    """
    Why an output that is not finished (:func:`is_finished`) is left alone: not made by the provider
    (``overwrite=True`` would replace an object of the user's), from another source, another
    generation of this one, or with other options.

    :param existing: the object at the output's name.
    :param source: the source object (pinned to its generation).
    """
    meta = existing.metadata or {}
    made_from = meta.get(META_SOURCE)
    if not made_from:
        return (
            "the destination exists and was not made by this provider (it records no source); "
            "set overwrite=True only to replace it"
        )
    if made_from != source.uri:
        why = f"was made from another source, {made_from}"
    elif meta.get(META_SOURCE_GENERATION) != str(source.generation):
        made = meta.get(META_SOURCE_GENERATION)
        why = f"was made from generation {made} of this source (now {source.generation})"
    else:
        why = f"was made with other options (vendor {meta.get(META_VENDOR)!r})"
    return f"the destination exists but {why}; set overwrite=True to replace it"


def _outcome(
    item: WorkItem, status: str, code: str, message: str, extra: Mapping[str, Any] | None = None
) -> PlannedOutcome:
    """The item settled during planning (the rest as :class:`PlannedOutcome`'s arguments)."""
    return PlannedOutcome(item.source, item.destination, status, code, message, extra)


@dataclass
class _Lookups:
    """
    What exists of planned items' outputs: the outputs found, and the renditions of each item's lookup
    window by its destination (unique among the items planned: a second source of one is a collision).
    """

    outputs: dict[str, ObjectInfo] = field(default_factory=dict)
    renditions: dict[str, WindowRenditions | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _Planner:
    """The plan's per-window steps, bound to one batch."""

    storage: GcsStorage
    spec: BatchSpec
    identity: OutputIdentity
    limits: InputLimits
    layout: RenditionLayout | None = None
    masters_are_sources: bool = False
    accounts: Sequence[tuple[str, InputLimits]] = ()

    def look_up(self, window: Sequence[WorkItem], found: _Lookups) -> _Lookups:
        """Add what exists of the window's outputs (none for render-only planning) and renditions."""
        if not self.masters_are_sources:
            destinations = [item.destination for item in window]
            found.outputs.update(_existing_outputs(self.storage, self.spec, destinations))
        renditions = self._renditions(window)
        found.renditions.update(dict.fromkeys((item.destination for item in window), renditions))
        return found

    def look_up_in_name_order(self, items: Iterable[WorkItem]) -> _Lookups:
        """
        What exists of explicit sources' outputs given in any order, looked up in windows of their names
        in order: the name ranges listed follow each other (one pass over the destination, as for a
        listing), where windows in the given order each listed nearly all of it, a pass per window.
        """
        found = _Lookups()
        for window in _windows(iter(sorted(items, key=lambda item: item.source.name))):
            self.look_up(window, found)
        return found

    def unfinished(
        self, window: Sequence[WorkItem], sink: PlanSink, found: _Lookups | None = None
    ) -> list[WorkItem]:
        """
        Settle the window's finished (and, without overwrite, foreign) outputs; return the rest.

        :param window: the items.
        :param sink: where settled sources go.
        :param found: what exists of their outputs, looked up beforehand (``None``: looked up now).
        """
        found = self.look_up(window, _Lookups()) if found is None else found
        if self.masters_are_sources:  # render-only planning: every source is a finished master
            for item in window:
                self._finished(item, item.source, found.renditions[item.destination], sink)
            return []
        to_check: list[WorkItem] = []
        for item in window:
            current = found.outputs.get(item.destination)
            renditions = found.renditions[item.destination]
            if current is None:
                to_check.append(self._with_renditions(item, renditions))
            elif is_finished(current, item.source, self.identity):
                self._finished(item, current, renditions, sink)
            elif self.spec.overwrite:
                stale = replace(item, replace_generation=current.generation)
                to_check.append(self._with_renditions(stale, renditions))
            else:
                message = output_exists_message(current, item.source)
                sink.settle(_outcome(item, "rejected", "output_exists", message))
        return to_check

    def _renditions(self, window: Sequence[WorkItem]) -> WindowRenditions | None:
        """The window's renditions and (unless ``overwrite``) non-compliance records, a listing a folder."""
        if self.layout is None:
            return None
        masters = [item.source.name if self.masters_are_sources else item.destination for item in window]
        return self.layout.window(
            self.storage,
            self.spec.destination_bucket,
            masters,
            stat=_few(self.spec, len(window)),
            records=not self.spec.overwrite,
        )

    def _with_renditions(self, item: WorkItem, found: WindowRenditions | None) -> WorkItem:
        """A billable item with its renditions (all to render: its master is still to be made)."""
        if found is None:
            return item
        return replace(item, renditions=found.targets(item.destination, None))

    def _finished(
        self, item: WorkItem, master: ObjectInfo, found: WindowRenditions | None, sink: PlanSink
    ) -> None:
        """A finished master: settled (skipped, recorded non-compliant), or render-only (renditions due)."""
        made_by = {"vendor": vendor} if (vendor := made_by_vendor(master)) else {}
        if found is None:
            message = "output exists from this source and options"
            sink.settle(_outcome(item, "skipped", "already_done", message, made_by or None))
            return
        name = item.source.name if self.masters_are_sources else item.destination
        targets = found.targets(name, master)
        if not all(target.settled for target in targets):
            sink.add_render(replace(item, master=master, renditions=targets))
            return
        status, code, message, extra = found.verdict(targets, master)
        destination = None if self.masters_are_sources else item.destination
        sink.settle(PlannedOutcome(item.source, destination, status, code, message, {**extra, **made_by}))

    def check(self, item: WorkItem) -> WorkItem | PlannedOutcome:
        """
        The item with its local verdict, else settled: rejected (by the checks, or every rendition out of
        reach), or failed when its pinned read failed (a source replaced or deleted since it was listed is
        never priced at one generation and processed at another).
        """
        try:
            checked = check_source(self.storage, item.source, self.limits, self.identity.vendor)
        except InputRejectedError as exc:
            return _outcome(item, "rejected", exc.code or "rejected", exc.message)
        except StorageError as exc:  # e.g. replaced or deleted since its listing: this source alone fails
            unreadable = _NOT_PLANNED.format("read for its local check")
            return _outcome(item, "failed", type(exc).__name__, f"{unreadable}: {exc}")
        if self.layout is not None and item.renditions:
            source = (checked.info.width, checked.info.height)
            found = self.layout.unreachable(self.spec.destination_bucket, item.renditions, source)
            if found is not None:
                message, facts = found
                return _outcome(item, "rejected", NONCOMPLIANT, message, {"renditions": facts})
        accepted = accepted_by(self.accounts, checked.info, item.source.size)
        return replace(item, fully_checked=checked.fully_checked, accepted=accepted)


def limits_rejection(
    vendor: str, limits: InputLimits, info: ImageInfo, size: int
) -> InputRejectedError | None:
    """
    The :class:`InputRejectedError` an account's own input limits raise for an image (``None``: they take
    it), checked before each account's call and per account at planning (:func:`accepted_by`).

    :param vendor: the account's vendor (for the error).
    :param limits: its input limits.
    :param info: the image's header.
    :param size: its bytes.
    """
    try:
        check_limits(info, size, limits, vendor=vendor)
    except InputRejectedError as exc:
        return exc
    return None


def accepted_by(accounts: Sequence[tuple[str, InputLimits]], info: ImageInfo, size: int) -> int | None:
    """
    The accounts whose own input limits take an image (:func:`limits_rejection`), as a bit mask in chain
    order.

    :param accounts: ``(vendor, limits)`` of each account of a chain whose limits differ (empty: ``None``).
    :param info: the image's header.
    :param size: its bytes.
    """
    if not accounts:
        return None
    taken = (limits_rejection(vendor, limits, info, size) is None for vendor, limits in accounts)
    return sum(1 << index for index, takes in enumerate(taken) if takes)


def _record(sink: PlanSink, verdicts: Iterable[WorkItem | PlannedOutcome]) -> None:
    for verdict in verdicts:
        if isinstance(verdict, WorkItem):
            sink.add(verdict)
        else:
            sink.settle(verdict)


def plan_into(
    storage: GcsStorage,
    spec: BatchSpec,
    sink: SinkT,
    *,
    extension: str,
    identity: OutputIdentity,
    limits: InputLimits,
    concurrency: int = 16,
    check: bool = True,
    sources: Iterable[tuple[str, ObjectInfo | StorageError | None]] | None = None,
    renditions: RenditionLayout | None = None,
    masters_are_sources: bool = False,
    account_limits: Sequence[tuple[str, InputLimits]] = (),
) -> SinkT:
    """
    Plan a batch into ``sink``, window by window; :class:`DestinationCollisionError` when two sources
    would produce the same output (raised once every source was seen, so it names them all).

    Without ``check`` no source is read: every unfinished source is billable, unchecked (an upper bound;
    the batch checks each file before its call, so a broken one is still never charged).

    Explicit ``source_objects`` out of name order are mapped whole first (they are in memory anyway) and
    their outputs (and renditions) looked up in windows of their names in order, one pass over the
    destination as for names in order; a window per 1,000 names in the given order listed nearly all of
    it (a quadratic number of listing pages). The plan and the order of its rows are as before.

    :param storage: the GCS storage.
    :param spec: what the batch works on.
    :param sink: receives the billable items and the settled sources, in listing order per window.
    :param extension: extension of the outputs (with the dot).
    :param identity: the ``(vendor, options hash)`` pairs a finished output may record.
    :param limits: the (primary) vendor's input limits for the local checks.
    :param concurrency: local checks (header reads) at once.
    :param check: run the local checks (a header read per unfinished source).
    :param sources: ``(name, object)`` pairs already listed (in name order when ``spec`` lists a
        prefix), instead of :func:`iter_sources` (the arrivals trigger plans only what is new).
    :param renditions: the renditions each source gets (``None``: none, a single output per source).
    :param masters_are_sources: every source is a finished master (render-only planning, no check).
    :param account_limits: ``(vendor, limits)`` of each account of a chain whose limits differ: the
        local checks note which accounts take each image (:attr:`WorkItem.accepted`).
    """
    listed = iter_sources(storage, spec, outputs=masters_are_sources) if sources is None else sources
    planner = _Planner(storage, spec, identity, limits, renditions, masters_are_sources, account_limits)
    collisions = _Collisions(ordered=spec.source_objects is None)
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="bgremoval-plan") as pool:
        mapped: Iterable[_Mapped] = _map_sources(
            listed, spec, extension, collisions, written=not masters_are_sources
        )
        found = None
        if sources is None and _out_of_order(spec):  # mapped whole, looked up in name order
            mapped = list(mapped)
            found = planner.look_up_in_name_order(item for item in mapped if isinstance(item, WorkItem))
        for window in _windows(_settling(mapped, sink)):
            unfinished = planner.unfinished(window, sink, found)
            _record(sink, pool.map(planner.check, unfinished) if check else unfinished)
    collisions.raise_if_any()
    return sink


def check_plan(
    storage: GcsStorage,
    plan: BatchPlan,
    *,
    identity: OutputIdentity,
    limits: InputLimits,
    concurrency: int = 16,
    renditions: RenditionLayout | None = None,
    account_limits: Sequence[tuple[str, InputLimits]] = (),
) -> BatchPlan:
    """
    The local checks on an unchecked plan's billable items: the plan :func:`plan_into` makes with
    ``check``, without listing the sources and outputs again (its rejections follow the earlier settled
    rows). Arguments as :func:`plan_into`'s.

    :param storage: the GCS storage.
    :param plan: a plan made without the local checks (``checked`` False).
    :param identity: the accepted ``(vendor, options hash)`` pairs.
    :param limits: the input limits checked.
    :param concurrency: local checks at once.
    :param renditions: the renditions each source gets.
    :param account_limits: each account's limits when a chain's differ.
    """
    planner = _Planner(storage, plan.spec, identity, limits, renditions, False, account_limits)
    checked = BatchPlan(plan.spec, settled=list(plan.settled), render=list(plan.render), layout=renditions)
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="bgremoval-plan") as pool:
        _record(checked, pool.map(planner.check, plan.items))
    _log_plan(checked)
    return checked


async def plan_batch(
    storage: GcsStorage,
    spec: BatchSpec,
    *,
    extension: str,
    identity: OutputIdentity,
    limits: InputLimits,
    concurrency: int = 16,
    check: bool = True,
    renditions: RenditionLayout | None = None,
    masters_are_sources: bool = False,
    account_limits: Sequence[tuple[str, InputLimits]] = (),
) -> BatchPlan:
    """Plan a batch in memory, off the event loop: :func:`plan_into` a :class:`BatchPlan` (same arguments)."""
    plan = await asyncio.to_thread(
        plan_into,
        storage,
        spec,
        BatchPlan(spec=spec, checked=check, layout=renditions),
        extension=extension,
        identity=identity,
        limits=limits,
        concurrency=concurrency,
        check=check,
        renditions=renditions,
        masters_are_sources=masters_are_sources,
        account_limits=account_limits,
    )
    _log_plan(plan)
    return plan


def _log_plan(plan: BatchPlan) -> None:
    log.info(
        "Planned %d source(s): %d billable (%d of them checked by header only), %d already done, "
        "%d rejected locally, %d non-compliant from the source's size, %d recorded non-compliant, "
        "%d render-only (0 credits)",
        plan.total,
        len(plan.items),
        plan.unverified_by_header_only,
        *(plan.count_kind(kind) for kind in SETTLED_KINDS),
        len(plan.render),
    )
