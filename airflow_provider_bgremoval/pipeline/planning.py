"""Planning before spending: list, map names, refuse collisions, skip finished work, check locally.

What :func:`plan_batch` leaves billable is what the batch (and the credits pre-flight) pays for; header
checks of truncated files: docs/reliability.md ("Truncated files").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from airflow_provider_bgremoval.exceptions import BgRemovalError, InputRejectedError, InvalidOptionError
from airflow_provider_bgremoval.imaging import (
    InputLimits,
    check_limits,
    check_size,
    prepare_input,
    read_header,
)
from airflow_provider_bgremoval.pipeline.naming import (
    UnsafeNameError,
    destination_name,
    internal_prefix,
    normalise_prefix,
)
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo

log = logging.getLogger(__name__)

#: Bytes read from each source during planning for the header-only check.
HEADER_BYTES = 64 * 1024
#: Largest image (declared pixels) planning decodes in full when it holds the whole object: bounds the
#: memory of ``concurrency`` checks at once (a few KiB of flat colour can declare tens of megapixels).
FULL_CHECK_MAX_PIXELS = 4_000_000
#: Below this many sources, destinations are looked up one by one instead of listing the prefix.
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


class DestinationCollisionError(BgRemovalError, ValueError):
    """Two or more sources map to the same destination object; nothing was processed."""


@dataclass(frozen=True)
class BatchSpec:
    """
    What a batch works on (everything except the vendor call itself).

    :param source_bucket: bucket of the source images.
    :param source_prefix: prefix listed for sources, and stripped from names to build destinations.
    :param source_objects: explicit object names instead of listing (still relative to ``source_prefix``).
    :param destination_bucket: bucket receiving the outputs.
    :param destination_prefix: prefix of the outputs.
    :param include: glob patterns a source must match (``*.jpg``); ``None`` for all.
    :param exclude: glob patterns excluding sources.
    :param overwrite: replace outputs made from another source generation or other options.
    """

    source_bucket: str
    destination_bucket: str
    source_prefix: str = ""
    source_objects: Sequence[str] | None = None
    destination_prefix: str = ""
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("source_bucket", "destination_bucket"):
            if not getattr(self, name):
                raise InvalidOptionError(name, "is required")
        object.__setattr__(self, "source_prefix", normalise_prefix(self.source_prefix))
        object.__setattr__(self, "destination_prefix", normalise_prefix(self.destination_prefix))
        if (
            self.source_bucket == self.destination_bucket
            and self.source_objects is None
            and self.destination_prefix.startswith(self.source_prefix)
        ):
            raise InvalidOptionError(
                "destination_prefix",
                f"gs://{self.destination_bucket}/{self.destination_prefix} lies inside the source prefix "
                f"gs://{self.source_bucket}/{self.source_prefix}: outputs would be read back as sources",
            )

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
    """

    source: ObjectInfo
    destination: str
    replace_generation: int | None = None
    fully_checked: bool = False


@dataclass(frozen=True)
class PlannedOutcome:
    """
    A source settled during planning (no vendor call).

    :param source: the source object (or a stand-in for a missing one).
    :param destination: destination name when one could be computed.
    :param status: ``skipped`` or ``rejected``.
    :param code: reason code.
    :param message: human explanation.
    """

    source: ObjectInfo
    destination: str | None
    status: str
    code: str
    message: str


@dataclass
class BatchPlan:
    """
    The result of planning.

    :param spec: the batch spec.
    :param items: billable work, in listing order.
    :param settled: sources skipped or rejected during planning.
    """

    spec: BatchSpec
    items: list[WorkItem] = field(default_factory=list)
    settled: list[PlannedOutcome] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Number of sources."""
        return len(self.items) + len(self.settled)

    def count(self, status: str) -> int:
        """Number of settled sources with ``status``."""
        return sum(1 for outcome in self.settled if outcome.status == status)

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


def is_finished(existing: ObjectInfo, source: ObjectInfo, fingerprint: str, vendor: str) -> bool:
    """True when ``existing`` records that it was made from ``source`` with the same options."""
    meta = existing.metadata or {}
    return (
        meta.get(META_SOURCE_GENERATION) == str(source.generation)
        and meta.get(META_OPTIONS_HASH) == fingerprint
        and meta.get(META_VENDOR) == vendor
        and meta.get(META_SOURCE) == source.uri
    )


def iter_sources(storage: GcsStorage, spec: BatchSpec) -> Iterator[tuple[str, ObjectInfo | None]]:
    """The sources in order as ``(name, object)``; the object is ``None`` for a listed name that is absent."""
    if spec.source_objects is None:
        for info in storage.list_objects(
            spec.source_bucket, spec.source_prefix, include=spec.include, exclude=spec.exclude
        ):
            yield info.name, info
        return
    for raw in spec.source_objects:
        name = str(raw)
        if name.startswith("gs://"):
            bucket, _, name = name[5:].partition("/")
            if bucket != spec.source_bucket:
                raise InvalidOptionError(
                    "source_objects", f"gs://{bucket}/{name} is not in source bucket {spec.source_bucket!r}"
                )
        if spec.source_prefix and not name.startswith(spec.source_prefix):
            name = spec.source_prefix + name.lstrip("/")
        yield name, storage.stat(spec.source_bucket, name)


def _existing_outputs(storage: GcsStorage, spec: BatchSpec, destinations: list[str]) -> dict[str, ObjectInfo]:
    if len(destinations) < _STAT_THRESHOLD:
        infos = (storage.stat(spec.destination_bucket, name) for name in destinations)
        return {info.name: info for info in infos if info is not None}
    return {
        info.name: info
        for info in storage.list_objects(spec.destination_bucket, spec.destination_prefix)
        if not info.name.startswith(spec.internal_prefix)
    }


def check_source(storage: GcsStorage, source: ObjectInfo, limits: InputLimits, vendor: str) -> bool:
    """
    Raise the :class:`InputRejectedError` the run would raise for ``source`` (docs/reliability.md).

    :param storage: the GCS storage.
    :param source: the source object (pinned to its generation).
    :param limits: the vendor's input limits.
    :param vendor: vendor name (for the errors).
    :return: True when the whole object was decoded (see :attr:`WorkItem.fully_checked`).
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
    return fully_checked


def _settle(
    plan: BatchPlan, source: ObjectInfo, destination: str | None, status: str, code: str, message: str
) -> None:
    plan.settled.append(PlannedOutcome(source, destination, status, code, message))


def _list_and_map(storage: GcsStorage, spec: BatchSpec, extension: str, plan: BatchPlan) -> list[WorkItem]:
    """List the sources and map each to its output; settle missing and unsafe names; refuse collisions."""
    candidates: list[WorkItem] = []
    by_destination: dict[str, str] = {}
    collisions: list[tuple[str, str, str]] = []
    for name, entry in iter_sources(storage, spec):
        if entry is None:
            missing = ObjectInfo(bucket=spec.source_bucket, name=name, generation=0, size=0)
            _settle(plan, missing, None, "rejected", "not_found", "source object does not exist")
            continue
        try:
            dest = destination_name(name, spec.source_prefix, spec.destination_prefix, extension)
        except UnsafeNameError as exc:
            _settle(plan, entry, None, "rejected", "unsafe_name", str(exc))
            continue
        first = by_destination.setdefault(dest, name)
        if first != name:
            collisions.append((first, name, dest))
        else:
            candidates.append(WorkItem(entry, dest))
    if collisions:
        shown = "; ".join(f"{a!r} and {b!r} -> {d!r}" for a, b, d in collisions[:10])
        more = f" (and {len(collisions) - 10} more)" if len(collisions) > 10 else ""
        raise DestinationCollisionError(
            f"{len(collisions)} source(s) would overwrite another source's output: {shown}{more}. "
            "Rename the sources, narrow include/exclude, or split the batch; nothing was processed.",
            code="destination_collision",
        )
    return candidates


async def plan_batch(
    storage: GcsStorage,
    spec: BatchSpec,
    *,
    extension: str,
    fingerprint: str,
    vendor: str,
    limits: InputLimits,
    concurrency: int = 16,
) -> BatchPlan:
    """
    Plan a batch; :class:`DestinationCollisionError` when two sources would produce the same output.

    :param storage: the GCS storage.
    :param spec: what the batch works on.
    :param extension: extension of the outputs (with the dot).
    :param fingerprint: the options hash finished outputs must record.
    :param vendor: vendor name finished outputs must record.
    :param limits: the vendor's input limits for the local checks.
    :param concurrency: local checks (header reads) at once.
    """
    plan = BatchPlan(spec=spec)
    candidates = await asyncio.to_thread(_list_and_map, storage, spec, extension, plan)
    destinations = [item.destination for item in candidates]
    existing = await asyncio.to_thread(_existing_outputs, storage, spec, destinations)
    to_check: list[WorkItem] = []
    for item in candidates:  # finished (and, without overwrite, foreign) outputs are settled
        current = existing.get(item.destination)
        if current is None:
            to_check.append(item)
        elif is_finished(current, item.source, fingerprint, vendor):
            message = "output exists from this source and options"
            _settle(plan, item.source, item.destination, "skipped", "already_done", message)
        elif spec.overwrite:
            to_check.append(replace(item, replace_generation=current.generation))
        else:
            message = (
                "the destination exists but was made from another source generation or other options; "
                "set overwrite=True to replace it"
            )
            _settle(plan, item.source, item.destination, "rejected", "output_exists", message)

    def check(item: WorkItem) -> WorkItem | PlannedOutcome:
        try:
            fully_checked = check_source(storage, item.source, limits, vendor)
        except InputRejectedError as exc:
            return PlannedOutcome(
                item.source, item.destination, "rejected", exc.code or "rejected", exc.message
            )
        return replace(item, fully_checked=fully_checked)

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="bgremoval-plan") as pool:
        verdicts = await asyncio.to_thread(list, pool.map(check, to_check))
    plan.items.extend(verdict for verdict in verdicts if isinstance(verdict, WorkItem))
    plan.settled.extend(verdict for verdict in verdicts if isinstance(verdict, PlannedOutcome))
    log.info(
        "Planned %d source(s): %d billable (%d of them checked by header only), %d already done, "
        "%d rejected locally",
        plan.total,
        len(plan.items),
        plan.unverified_by_header_only,
        plan.count("skipped"),
        plan.count("rejected"),
    )
    return plan
