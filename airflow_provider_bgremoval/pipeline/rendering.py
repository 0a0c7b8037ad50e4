"""Renditions in the batch: where they go, when they are finished, and rendering + storing one image's.

Names, metadata, statuses and manifest fields: docs/pipeline.md ("Renditions"). A non-compliant rendition
is never written; its verdict is recorded instead, so a later run reports it again without reading the
master or rendering (docs/renditions.md, "Non-compliant renditions are recorded").
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import json
import logging
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from PIL import Image

from airflow_provider_bgremoval.exceptions import InvalidOptionError, ResultProcessingError
from airflow_provider_bgremoval.imaging import DEFAULT_RESULT_LIMITS, bomb_warnings_ignored
from airflow_provider_bgremoval.pipeline.naming import internal_prefix, output_stem
from airflow_provider_bgremoval.pipeline.planning import (
    HEADER_BYTES,
    META_SOURCE,
    META_SOURCE_GENERATION,
    META_WRITER,
    NONCOMPLIANT,
    BatchSpec,
)
from airflow_provider_bgremoval.renditions import (
    CheckResult,
    Master,
    RenderedRendition,
    RenderFailure,
    Rendition,
    prepare_master,
)
from airflow_provider_bgremoval.renditions.compliance import unreachable
from airflow_provider_bgremoval.renditions.renderer import largest_long_side, render_one, rendering_error
from airflow_provider_bgremoval.storage.exceptions import (
    StorageError,
    WriteConflictError,
    gs_uri,
    split_gs_uri,
)
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo

log = logging.getLogger(__name__)

META_MASTER = "bgremoval-master"
META_MASTER_GENERATION = "bgremoval-master-generation"
META_RENDITION = "bgremoval-rendition"
META_RENDITION_FINGERPRINT = "bgremoval-rendition-fingerprint"
META_COMPLIANT = "bgremoval-compliant"
#: On a non-compliance record: the required checks that failed (comma-separated, at most 512 characters).
META_FAILED_CHECKS = "bgremoval-failed-checks"
#: On a non-compliance record: when the verdict was recorded (ISO 8601, UTC).
META_RECORDED = "bgremoval-recorded"

#: The folder of the non-compliance records, inside the provider's folder of the rendition destination.
RECORDS_DIR = "noncompliant/"
_FAILED_CHECKS_MAX = 512

#: The largest master read for rendering: the largest decoded result any vendor documents
#: (:data:`~airflow_provider_bgremoval.imaging.DEFAULT_RESULT_LIMITS`) as uncompressed 8-bit RGBA. A real
#: master (compressed) is smaller; anything larger is refused unread (``ObjectTooLargeError``).
MASTER_MAX_BYTES = DEFAULT_RESULT_LIMITS.max_pixels * 4

#: The master pixels whose renditions one process renders at once (:class:`PixelBudget`): rendering one
#: holds about 20 bytes per master pixel at its peak (the prepared master, the canvas, the encoder's
#: buffers, the checks' decoding), so about 2 GB for this budget: two 50 MP masters, or 25 of 4 MP.
RENDER_PIXEL_BUDGET = 100_000_000

#: Vendor options that can make a cut-out larger than its source (padding, a target size, a shadow):
#: with any of them set, planning never judges a rendition by the source's size (VENDORS.md).
ENLARGING_VENDOR_OPTIONS = (
    "result_margin",
    "target_size",
    "margin",
    "margin_left",
    "margin_right",
    "margin_top",
    "margin_bottom",
    "shadow",
)

#: What can happen to one rendition of one source (the manifest's ``renditions[].status``).
RENDITION_STATUSES = ("done", "replaced", "skipped", "rejected", "failed")
#: The rendition statuses that make a task fail with ``on_error="fail_at_end"``.
BAD_RENDITION_STATUSES = ("rejected", "failed")


def rendition_finished(existing: ObjectInfo, rendition: Rendition, master: ObjectInfo) -> bool:
    """
    True when ``existing`` was rendered with ``rendition``'s spec from this generation of ``master``.

    :param existing: the rendition object found.
    :param rendition: the rendition wanted.
    :param master: the master it must have been rendered from.
    """
    meta = existing.metadata or {}
    return (
        meta.get(META_RENDITION_FINGERPRINT) == rendition.fingerprint
        and meta.get(META_MASTER_GENERATION) == str(master.generation)
        and meta.get(META_MASTER) == master.uri
    )


@dataclass(frozen=True)
class RenditionTarget:
    """
    One rendition of one source, as planned.

    :param rendition: the rendition.
    :param name: its object name.
    :param existing: the object found there (``None``: missing).
    :param finished: ``existing`` is up to date (rendered from the current master with this spec).
    :param record_name: the name of its non-compliance record (``""``: none is kept).
    :param record: the record found there, if it was looked up (of any master or spec).
    :param recorded: ``record`` judged this very spec on the current master: reported ``rejected`` again.
    """

    rendition: Rendition
    name: str
    existing: ObjectInfo | None = None
    finished: bool = False
    record_name: str = ""
    record: ObjectInfo | None = None
    recorded: bool = False

    @property
    def settled(self) -> bool:
        """Nothing to render: finished, or recorded non-compliant for this master and spec."""
        return self.finished or self.recorded

    def foreign_to(self, master: ObjectInfo) -> bool:
        """
        An object is in the way that is not a rendition of this name made from ``master`` (any generation
        of it: an earlier one is stale and replaced). A rendition of another master (another run rendering
        into this folder) is not ours to replace either.

        :param master: the master this image's renditions are made from.
        """
        if self.existing is None:
            return False
        meta = self.existing.metadata or {}
        return meta.get(META_RENDITION) != self.rendition.name or meta.get(META_MASTER) != master.uri

    def _rejected_facts(self, bucket: str, code: str, message: str) -> dict[str, Any]:
        """The manifest entry of a rendition not written (``rejected``), with why."""
        return {
            "name": self.rendition.name,
            "preset": self.rendition.spec.preset,
            "object": gs_uri(bucket, self.name),
            "fingerprint": self.rendition.fingerprint,
            "status": "rejected",
            "compliant": False,
            "error_code": code,
            "error_message": message,
        }

    def blocked_facts(self, bucket: str) -> dict[str, Any]:
        """The manifest entry of a rendition not written because a foreign object holds its name."""
        meta = (self.existing.metadata or {}) if self.existing is not None else {}
        other_master = meta.get(META_MASTER) if meta.get(META_RENDITION) == self.rendition.name else None
        what = (
            f"a rendition made from another master ({other_master})"
            if other_master
            else "an object the provider did not render"
        )
        message = f"{what} is at this name; not overwritten (set overwrite=True to replace it)"
        return self._rejected_facts(bucket, "output_exists", message)

    def settled_facts(self, bucket: str) -> dict[str, Any]:
        """The manifest entry of a settled rendition: skipped, or rejected as recorded."""
        if self.finished:
            assert self.existing is not None
            return {
                "name": self.rendition.name,
                "object": gs_uri(bucket, self.name),
                "generation": self.existing.generation,
                "fingerprint": self.rendition.fingerprint,
                "status": "skipped",
                "compliant": (self.existing.metadata or {}).get(META_COMPLIANT) == "true",
                "bytes": self.existing.size,
            }
        assert self.record is not None
        meta = self.record.metadata or {}
        failed = [name for name in meta.get(META_FAILED_CHECKS, "").split(",") if name]
        message = (
            f"recorded non-compliant on {_recorded_on(self.record)}, not re-rendered"
            f" (failed: {', '.join(failed) or 'see the record'})"
        )
        facts = self._rejected_facts(bucket, NONCOMPLIANT, message)
        return {**facts, "failed": failed, "record": self.record.uri}

    def _unreachable_facts(
        self, bucket: str, source: tuple[int, int], checks: Sequence[CheckResult]
    ) -> dict[str, Any]:
        """The manifest entry of a rendition whose ``source`` (width, height) cannot pass ``checks``."""
        failed = [check.name for check in checks]
        message = (
            f"a {source[0]}x{source[1]} px source cannot make it compliant without upscaling: "
            f"{'; '.join(f'{check.name}: {check.message}' for check in checks)}; set upscale=True to enlarge"
        )
        facts = self._rejected_facts(bucket, NONCOMPLIANT, message)
        return {**facts, "failed": failed, "checks": [check.as_dict() for check in checks]}


def _unreachable_checks(rendition: Rendition, source: tuple[int, int]) -> tuple[CheckResult, ...]:
    """The required checks ``rendition`` is certain to fail from a master no larger than ``source``."""
    longest = largest_long_side(source, rendition.spec)
    return () if longest is None else unreachable(rendition, longest)


def master_within_source(processor: Any) -> bool:
    """
    True when the vendor operation's cut-out is never larger than its source: a removal without an
    :data:`ENLARGING_VENDOR_OPTIONS` option (generate-background makes its own 1024 px scene).

    :param processor: the batch's :class:`~airflow_provider_bgremoval.pipeline.processors.ImageProcessor`.
    """
    if getattr(processor, "operation", None) != "remove_background":
        return False
    options: Any = getattr(processor, "vendor_options", None)
    fields = options.as_dict() if hasattr(options, "as_dict") else dict(options or {})
    return not any(fields.get(name) not in (None, "", False) for name in ENLARGING_VENDOR_OPTIONS)


def _recorded_on(record: ObjectInfo) -> str:
    """The date (UTC) a non-compliance record was written, from its metadata."""
    return (record.metadata or {}).get(META_RECORDED, "")[:10] or "an unknown date"


@dataclass(frozen=True)
class RenditionLayout:
    """
    Where a batch's renditions go and how their names follow from the masters'. A rendition folder may
    not overlap the masters' prefix, nor the sources', when that is in the destination bucket.

    :param renditions: the renditions (:func:`~airflow_provider_bgremoval.renditions.spec.parse_renditions`).
    :param destination_prefix: the rendition folders' parent (normalised, ends with ``/`` or empty).
    :param masters_prefix: where the masters are (the prefix stripped from a master's name for its stem).
    :param master_extension: the masters' extension, stripped too (``""``: any, by ``splitext``).
    :param destination_bucket: the renditions' bucket.
    :param masters_bucket: the masters' bucket.
    :param source_bucket: the source photos' bucket.
    :param source_prefix: the source photos' prefix (``None``: the masters are the sources).
    :param masters_within_source: every vendor of the batch makes masters no larger than their source
        (:func:`master_within_source`): planning may settle a source by its size (:meth:`unreachable`).
    """

    renditions: tuple[Rendition, ...]
    destination_prefix: str
    masters_prefix: str
    master_extension: str = ""
    destination_bucket: str = ""
    masters_bucket: str = ""
    source_bucket: str = ""
    source_prefix: str | None = None
    masters_within_source: bool = False

    @classmethod
    def of_batch(
        cls, spec: BatchSpec, renditions: tuple[Rendition, ...], extension: str = ""
    ) -> RenditionLayout:
        """
        The layout of a bucket batch: masters under ``spec.output_prefix`` of the destination bucket,
        rendition folders under its destination prefix, checked against its masters and sources.

        :param spec: the batch spec.
        :param renditions: the parsed renditions (empty: refused).
        :param extension: the masters' extension.
        """
        return cls(
            renditions,
            spec.destination_prefix,
            spec.output_prefix,
            extension,
            destination_bucket=spec.destination_bucket,
            masters_bucket=spec.destination_bucket,
            source_bucket=spec.source_bucket,
            source_prefix=spec.source_prefix,
        )

    def __post_init__(self) -> None:
        if not self.renditions:
            raise InvalidOptionError("renditions", "give at least one rendition (or leave renditions unset)")
        for index, rendition in enumerate(self.renditions):
            self._refuse_overlap(index, rendition, self.masters_bucket, self.masters_prefix, "masters")
            if self.source_prefix is not None:
                self._refuse_overlap(index, rendition, self.source_bucket, self.source_prefix, "source")

    def _refuse_overlap(self, index: int, rendition: Rendition, bucket: str, prefix: str, what: str) -> None:
        """Refuse a rendition folder in ``bucket`` that contains ``prefix`` or lies inside it."""
        folder = self.folder(rendition)
        if bucket != self.destination_bucket or not (folder.startswith(prefix) or prefix.startswith(folder)):
            return
        hint = (
            "move masters_prefix"
            if what == "masters"
            else "move destination_prefix (its renditions would overwrite the source photos)"
        )
        raise InvalidOptionError(
            f"renditions[{index}].name",
            f"{rendition.name!r}: its folder {folder} overlaps the {what} prefix "
            f"{prefix or '(the bucket root)'} of the same bucket; rename it or {hint}",
        )

    def folder(self, rendition: Rendition) -> str:
        """``<destination_prefix><name>/``."""
        return f"{self.destination_prefix}{rendition.name}/"

    def stem(self, master_name: str) -> str:
        """
        The master's name below the masters prefix, without its extension (:func:`.output_stem`, the
        outputs' rule: ``a.jpg`` and ``a.png`` share ``a``, which planning refuses as a collision).
        """
        relative = master_name.removeprefix(self.masters_prefix)
        if self.master_extension and relative.endswith(self.master_extension):
            return relative[: -len(self.master_extension)]
        return output_stem(relative)

    def name_of(self, rendition: Rendition, master_name: str) -> str:
        """The object name of ``rendition`` of the master ``master_name``."""
        return f"{self.folder(rendition)}{self.stem(master_name)}{rendition.spec.extension}"

    @property
    def records_prefix(self) -> str:
        """Where the non-compliance records are: ``<destination_prefix>_bgremoval/noncompliant/``."""
        return f"{internal_prefix(self.destination_prefix)}{RECORDS_DIR}"

    def record_name(self, rendition: Rendition, master_name: str) -> str:
        """
        The name of the non-compliance record of ``rendition`` of the master ``master_name``:
        ``<records prefix><stem>/<rendition name>``, so a window's records lie in one name range.

        :param rendition: the rendition.
        :param master_name: the master's object name.
        """
        return f"{self.records_prefix}{self.stem(master_name)}/{rendition.name}"

    @property
    def judged_by_source_size(self) -> bool:
        """
        Planning may settle a source by its size (:meth:`unreachable`): masters within their sources,
        every rendition with a required long-side minimum, no ``upscale``, no exact ``size``.
        """
        return self.masters_within_source and all(
            not rendition.spec.upscale and rendition.spec.size is None and unreachable(rendition, 0)
            for rendition in self.renditions
        )

    def unreachable(
        self, bucket: str, targets: Sequence[RenditionTarget], source: tuple[int, int]
    ) -> tuple[str, list[dict[str, Any]]] | None:
        """
        When every rendition of a source still to be sent is certain to be non-compliant from the source's
        size (``masters_within_source`` only): the row's message and the renditions' manifest entries.

        :param bucket: the destination bucket.
        :param targets: the source's renditions (:meth:`WindowRenditions.targets`).
        :param source: the source's ``(width, height)`` from its header.
        """
        if not self.masters_within_source or not targets:
            return None
        failing = [(target, _unreachable_checks(target.rendition, source)) for target in targets]
        if not all(checks for _, checks in failing):
            return None
        facts = [target._unreachable_facts(bucket, source, checks) for target, checks in failing]
        reasons = "; ".join(
            f"{target.rendition.name}: {checks[0].message} ({checks[0].name})" for target, checks in failing
        )
        message = (
            f"every rendition is certain to be non-compliant from the {source[0]}x{source[1]} px source "
            f"({reasons}); not sent to the vendor (0 credits); set upscale=True to enlarge"
        )
        return message, facts

    def window(
        self,
        storage: GcsStorage,
        bucket: str,
        master_names: Sequence[str],
        *,
        stat: bool = False,
        records: bool = True,
    ) -> WindowRenditions:
        """
        What exists of a planning window's renditions (one name-range listing per rendition folder, or a
        stat per name when ``stat``), its records looked up when needed.

        :param storage: the storage.
        :param bucket: the destination bucket.
        :param master_names: the window's masters' object names.
        :param stat: look names up one by one instead of listing ranges (a few explicit sources).
        :param records: consult the non-compliance records (``False`` with ``overwrite``: re-render them).
        """
        found: dict[str, ObjectInfo] = {}
        for rendition in self.renditions:
            names = {self.name_of(rendition, master) for master in master_names}
            found.update(_lookup(storage, bucket, self.folder(rendition), names, stat=stat))
        return WindowRenditions(self, storage, bucket, tuple(master_names), found, stat=stat, records=records)


@dataclass
class WindowRenditions:
    """
    One planning window's renditions: those found, and the non-compliance records, read only when a
    finished master of the window has a rendition to make.

    :param layout: the layout.
    :param storage: the storage.
    :param bucket: the destination bucket.
    :param masters: the window's masters' names.
    :param found: the renditions found.
    :param stat: look records up one by one.
    :param records: consult the records at all.
    """

    layout: RenditionLayout
    storage: GcsStorage
    bucket: str
    masters: tuple[str, ...]
    found: Mapping[str, ObjectInfo]
    stat: bool = False
    records: bool = True
    _listed: dict[str, ObjectInfo] | None = field(default=None, repr=False)

    def targets(self, master_name: str, master: ObjectInfo | None) -> tuple[RenditionTarget, ...]:
        """
        Every rendition of one master with what exists of it (finished only when ``master`` is known), an
        unfinished one of a finished master with its record, if any.

        :param master_name: the master's object name.
        :param master: the finished master (``None``: still to be made; nothing is finished, no record can
            match it).
        """
        targets = []
        for rendition in self.layout.renditions:
            name = self.layout.name_of(rendition, master_name)
            found = self.found.get(name)
            done = found is not None and master is not None and rendition_finished(found, rendition, master)
            targets.append(
                RenditionTarget(rendition, name, found, done, self.layout.record_name(rendition, master_name))
            )
        if master is None or not self.records or all(target.finished for target in targets):
            return tuple(targets)
        records = self._records([target.record_name for target in targets if not target.finished])
        return tuple(
            target if target.finished else _with_record(target, records, master) for target in targets
        )

    def verdict(
        self, targets: Sequence[RenditionTarget], master: ObjectInfo
    ) -> tuple[str, str, str, dict[str, Any]]:
        """
        The planning verdict of a finished master whose every rendition is settled: ``(status, code,
        message, extra manifest fields)``; ``skipped``, or ``rejected`` as a free render-only row when some
        are recorded non-compliant (docs/renditions.md, "Non-compliant renditions are recorded").

        :param targets: every rendition of the master (:meth:`targets`).
        :param master: the master.
        """
        extra: dict[str, Any] = {
            "master": {"object": master.uri, "generation": master.generation, "status": "skipped"},
            "renditions": [target.settled_facts(self.bucket) for target in targets],
        }
        recorded = [target.record for target in targets if target.recorded and target.record is not None]
        if not recorded:
            message = "master and every rendition exist from this source and options"
            return "skipped", "already_done", message, extra
        dates = ", ".join(sorted({_recorded_on(record) for record in recorded}))
        names = ", ".join(target.rendition.name for target in targets if target.recorded)
        extra["render_only"] = True  # BatchRunner._row's flag: a free row, outside the failure rate
        message = f"rendition(s) {names} recorded non-compliant on {dates}, not re-rendered"
        return "rejected", NONCOMPLIANT, message, extra

    def _records(self, names: Collection[str]) -> Mapping[str, ObjectInfo]:
        prefix = self.layout.records_prefix
        if self.stat:
            return _lookup(self.storage, self.bucket, prefix, names, stat=True)
        if self._listed is None:
            every = {
                self.layout.record_name(rendition, master)
                for master in self.masters
                for rendition in self.layout.renditions
            }
            self._listed = _lookup(self.storage, self.bucket, prefix, every, stat=False)
        return self._listed


def _with_record(
    target: RenditionTarget, records: Mapping[str, ObjectInfo], master: ObjectInfo
) -> RenditionTarget:
    """An unfinished target with its record, ``recorded`` when the record judged it on ``master``."""
    record = records.get(target.record_name)
    recorded = record is not None and rendition_finished(record, target.rendition, master)
    return replace(target, record=record, recorded=recorded)


def _lookup(
    storage: GcsStorage, bucket: str, prefix: str, names: Collection[str], *, stat: bool
) -> dict[str, ObjectInfo]:
    """The objects of ``names`` that exist: a stat each, or one listing of their range under ``prefix``."""
    if not names:
        return {}
    if stat:
        infos: Iterable[ObjectInfo | None] = (storage.stat(bucket, name) for name in sorted(names))
    else:
        infos = storage.list_objects(bucket, prefix, start_offset=min(names), end_offset=max(names) + "\0")
    return {info.name: info for info in infos if info is not None and info.name in names}


class PixelBudget:
    """
    Masters rendered at once, weighed by their pixels, first come first served: a batch of concurrency 16
    prepared sixteen 50 MP masters at once (about 16 GB), where the cores could render two.

    :param limit: the pixels that may be rendered at once; a larger master takes the whole budget.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._turns: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def held(self, pixels: int) -> Iterator[None]:
        """
        Wait for ``pixels`` of the budget (in turn), hold them while the block runs.

        :param pixels: the master's width x height.
        """
        weight = min(max(pixels, 1), self.limit)
        turn = object()
        with self._changed:
            self._turns.append(turn)
            self._changed.wait_for(lambda: self._turns[0] is turn and self.used + weight <= self.limit)
            self._turns.popleft()
            self.used += weight
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self.used -= weight
                self._changed.notify_all()


#: The process's budget, shared by every batch running in it.
RENDER_BUDGET = PixelBudget(RENDER_PIXEL_BUDGET)


def master_pixels(data: bytes) -> int:
    """The width x height a master's header declares (0 when it has none: it fails to decode anyway)."""
    try:
        with bomb_warnings_ignored(), Image.open(io.BytesIO(data)) as image:
            return int(image.width * image.height)
    except Exception:  # not an image: prepare_master says why
        return 0


def _turn_pixels(head: bytes, size: int, limit: int) -> int:
    """
    The pixels a stored master of ``size`` bytes weighs in a budget of ``limit``, from its first bytes
    (``head``): its header's, else the whole budget when its header lies beyond them (a large EXIF or
    ICC block) and its size is unknown; a master held whole without a header fails to decode anyway.
    """
    pixels = master_pixels(head)
    return pixels if pixels or size <= len(head) else limit


@dataclass(frozen=True)
class RenditionStage:
    """
    Renders one image's renditions from its master (decoded once) and stores them; blocking (a thread).

    :param storage: the storage.
    :param bucket: the destination bucket.
    :param writer_id: identity recorded on the renditions.
    :param overwrite: replace objects found at a rendition's name that are not renditions of it
        (else they are left alone and the rendition is ``rejected`` with ``output_exists``).
    :param budget: the master pixels rendered at once (default: the process's :data:`RENDER_BUDGET`).
    """

    storage: GcsStorage
    bucket: str
    writer_id: str
    overwrite: bool = False
    budget: PixelBudget = field(default=RENDER_BUDGET, compare=False, repr=False)

    def run(
        self, data: bytes, master: ObjectInfo, source: ObjectInfo, targets: Sequence[RenditionTarget]
    ) -> list[dict[str, Any]]:
        """
        Render the unsettled targets from the master's bytes and store them; every target's facts.

        :param data: the master's bytes.
        :param master: the master object (its generation is recorded on each rendition).
        :param source: the source photo the master was made from.
        :param targets: every rendition of this image (settled ones are reported, not rendered).
        """
        todo, facts = self._todo(master, targets)
        if todo:
            with self.budget.held(master_pixels(data)):  # the prepared master lives in this block only
                facts.update(self._render(data, master, source, todo))
        return [facts[target.rendition.name] for target in targets]

    def run_stored(
        self, master: ObjectInfo, source: ObjectInfo, targets: Sequence[RenditionTarget], max_bytes: int
    ) -> list[dict[str, Any]]:
        """
        :meth:`run` for a stored master (render-only): its turn of the budget is sized from a header read
        (:data:`~.planning.HEADER_BYTES`) and the master is read whole only in that turn, so a flight
        waiting for its turn holds no master. Both reads are pinned to ``master``'s generation: a master
        replaced in between fails the read (``ObjectChangedError``), never renders another version. A
        master no larger than a header read is read whole at once (one request), one over ``max_bytes``
        is refused by that read (``ObjectTooLargeError``) without a turn, and nothing is read when
        nothing is to be rendered. A read's :class:`StorageError` is raised (the image fails, unrendered).

        :param master: the master object (pinned to its generation).
        :param source: the source photo the master was made from.
        :param targets: every rendition of this image (settled ones are reported, not rendered).
        :param max_bytes: the largest master read (larger: ``ObjectTooLargeError``, not read whole).
        """
        todo, facts = self._todo(master, targets)
        if not todo:
            return [facts[target.rendition.name] for target in targets]
        read = functools.partial(
            self.storage.read, master.bucket, master.name, generation=master.generation, max_bytes=max_bytes
        )
        data = read() if master.size <= HEADER_BYTES or master.size > max_bytes else None
        head = data if data is not None else self._head(master)
        with self.budget.held(_turn_pixels(head, master.size, self.budget.limit)):
            facts.update(self._render(read() if data is None else data, master, source, todo))
        return [facts[target.rendition.name] for target in targets]

    def _head(self, master: ObjectInfo) -> bytes:
        """The master's first :data:`~.planning.HEADER_BYTES` bytes (pinned)."""
        return self.storage.read_head(master.bucket, master.name, HEADER_BYTES, generation=master.generation)

    def _todo(
        self, master: ObjectInfo, targets: Sequence[RenditionTarget]
    ) -> tuple[list[RenditionTarget], dict[str, dict[str, Any]]]:
        """The targets to render, and the facts of the others (settled, or blocked by a foreign object)."""
        blocked = [t for t in targets if not t.settled and t.foreign_to(master) and not self.overwrite]
        todo = [target for target in targets if not target.settled and target not in blocked]
        facts = {t.rendition.name: t.settled_facts(self.bucket) for t in targets if t.settled}
        facts.update((t.rendition.name, t.blocked_facts(self.bucket)) for t in blocked)
        return todo, facts

    def _render(
        self, data: bytes, master: ObjectInfo, source: ObjectInfo, todo: Sequence[RenditionTarget]
    ) -> dict[str, dict[str, Any]]:
        """
        Prepare the master once, then render and store each rendition in turn: one rendition's bytes
        are held at a time, and its failure is its own (the master and the others are kept and recorded).
        """
        try:
            prepared = prepare_master(data)
        except Exception as exc:  # the master does not decode (or memory ran out): every rendition fails
            error = exc if isinstance(exc, ResultProcessingError) else rendering_error("rendering", exc)
            failed = {t.rendition.name: RenderFailure(t.rendition, error) for t in todo}
            return {t.rendition.name: self._store(t, failed[t.rendition.name], master, source) for t in todo}
        return {t.rendition.name: self._render_one(prepared, t, master, source) for t in todo}

    def _render_one(
        self, prepared: Master, target: RenditionTarget, master: ObjectInfo, source: ObjectInfo
    ) -> dict[str, Any]:
        """Render and store one rendition; anything unforeseen fails this rendition alone."""
        try:
            return self._store(target, render_one(prepared, target.rendition), master, source)
        except Exception as exc:
            log.warning("Rendition %s of %s failed", target.name, master.uri, exc_info=exc)
            error = rendering_error(f"rendition {target.rendition.name!r}", exc)
            return self._store(target, RenderFailure(target.rendition, error), master, source)

    def _metadata(self, target: RenditionTarget, master: ObjectInfo, source: ObjectInfo) -> dict[str, str]:
        return {
            META_SOURCE: source.uri,
            META_SOURCE_GENERATION: str(source.generation),
            META_MASTER: master.uri,
            META_MASTER_GENERATION: str(master.generation),
            META_RENDITION: target.rendition.name,
            META_RENDITION_FINGERPRINT: target.rendition.fingerprint,
            META_COMPLIANT: "true",
            META_WRITER: self.writer_id,
        }

    def _store(
        self,
        target: RenditionTarget,
        outcome: RenderedRendition | RenderFailure,
        master: ObjectInfo,
        source: ObjectInfo,
    ) -> dict[str, Any]:
        facts = {"object": gs_uri(self.bucket, target.name), **outcome.facts()}
        if isinstance(outcome, RenderFailure):  # not written: why, as every entry not written says it
            facts.update(error_code=outcome.error.code, error_message=outcome.error.message)
            return facts
        if not outcome.compliant:  # never written: a feed reading the folder must not pick it up
            message = f"non-compliant ({', '.join(outcome.verdict.failed)}); not written"
            if target.existing is not None:  # an earlier rendition (another spec or master generation)
                message += (
                    f"; the object at this name (generation {target.existing.generation}) is left as it was"
                )
            facts.update(status="rejected", error_code=NONCOMPLIANT, error_message=message)
            record = self._record(target, outcome, master, source)
            if record is not None:
                facts["record"] = record.uri
            return facts
        replacing = target.existing.generation if target.existing is not None else 0
        try:
            written = self.storage.write(
                self.bucket,
                target.name,
                outcome.data,
                content_type=outcome.content_type,
                metadata=self._metadata(target, master, source),
                if_generation_match=replacing,
                idempotency_token=f"{self.writer_id}:{master.generation}:{target.rendition.fingerprint}",
            )
        except WriteConflictError:
            return self._conflict(target, master, facts)
        except StorageError as exc:
            facts.update(status="failed", error_code="upload_failed", error_message=str(exc))
            return facts
        facts.update(status="replaced" if replacing else "done", generation=written.generation)
        return facts

    def _record(
        self, target: RenditionTarget, outcome: RenderedRendition, master: ObjectInfo, source: ObjectInfo
    ) -> ObjectInfo | None:
        """
        Record the non-compliant verdict (create-only; a stale record of another master or spec is
        replaced, generation-matched). Best effort: without a record the next run renders it again.
        """
        if not target.record_name:
            return None
        recorded = datetime.now(timezone.utc).isoformat(timespec="seconds")
        metadata = {
            **self._metadata(target, master, source),
            META_COMPLIANT: "false",
            META_FAILED_CHECKS: _failed_checks(outcome.verdict.failed),
            META_RECORDED: recorded,
        }
        body = {
            "rendition": target.rendition.name,
            "object": gs_uri(self.bucket, target.name),
            "master": master.uri,
            "master_generation": master.generation,
            "fingerprint": target.rendition.fingerprint,
            "recorded": recorded,
            "failed": [c.as_dict() for c in outcome.verdict.checks if c.required and not c.passed],
        }
        try:
            return self._write_record(
                target, master, metadata, json.dumps(body, separators=(",", ":")).encode()
            )
        except StorageError as exc:
            log.warning(
                "Could not record %s as non-compliant (the next run renders it): %s", target.name, exc
            )
            return None

    def _write_record(
        self, target: RenditionTarget, master: ObjectInfo, metadata: dict[str, str], data: bytes
    ) -> ObjectInfo | None:
        expected = target.record.generation if target.record is not None else 0
        for _ in range(2):  # a record in the way (another master or spec): replace that generation
            try:
                return self.storage.write(
                    self.bucket,
                    target.record_name,
                    data,
                    content_type="application/json",
                    metadata=metadata,
                    if_generation_match=expected,
                    idempotency_token=f"{self.writer_id}:{master.generation}:{target.rendition.fingerprint}",
                )
            except WriteConflictError:
                current = self.storage.stat(self.bucket, target.record_name)
                if current is not None and rendition_finished(current, target.rendition, master):
                    return current  # this verdict is recorded already (an earlier try, another writer)
                expected = current.generation if current is not None else 0
        return None

    def _conflict(self, target: RenditionTarget, master: ObjectInfo, facts: dict[str, Any]) -> dict[str, Any]:
        """Another writer got there first: fine when it wrote this very rendition of this master."""
        try:
            current = self.storage.stat(self.bucket, target.name)
        except StorageError:
            current = None
        if current is not None and rendition_finished(current, target.rendition, master):
            facts.update(status="skipped", error_code="done_concurrently", generation=current.generation)
        else:
            message = "the rendition changed during the run; not overwritten (the next run renders it)"
            facts.update(status="failed", error_code="rendition_conflict", error_message=message)
        return facts


def _failed_checks(names: Sequence[str]) -> str:
    """The failed checks' names, comma-separated, as many as fit in a metadata value's budget."""
    kept: list[str] = []
    for name in names:
        if len(",".join([*kept, name])) > _FAILED_CHECKS_MAX:
            break
        kept.append(name)
    return ",".join(kept)


def recorded_source(master: ObjectInfo) -> ObjectInfo:
    """
    The source photo a stored master records (its ``bgremoval-source`` metadata), else the master itself.

    :param master: the master object.
    """
    meta = master.metadata or {}
    uri, generation = meta.get(META_SOURCE, ""), meta.get(META_SOURCE_GENERATION, "")
    bucket, name = split_gs_uri(uri)
    if not uri.startswith("gs://") or not name or not generation.isdecimal():
        return master
    return ObjectInfo(bucket=bucket, name=name, generation=int(generation), size=0)


def render_verdict(facts: Sequence[Mapping[str, Any]]) -> tuple[str, str | None, str | None]:
    """
    The row of a render-only source: ``(status, error code, message)`` from its renditions' statuses.

    :param facts: the renditions' manifest entries.
    """
    bad = {status: [f["name"] for f in facts if f["status"] == status] for status in BAD_RENDITION_STATUSES}
    message = "; ".join(f"{status}: {', '.join(names)}" for status, names in bad.items() if names)
    if bad["failed"]:
        return "failed", "rendition_failed", f"rendition(s) {message}"
    if bad["rejected"]:
        exists = all(f.get("error_code") == "output_exists" for f in facts if f["status"] == "rejected")
        return "rejected", "output_exists" if exists else NONCOMPLIANT, f"rendition(s) {message}"
    return "done", None, None
