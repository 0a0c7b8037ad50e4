"""Renditions in the batch: where they go, when they are finished, and rendering + storing one image's.

A master is the vendor's lossless cut-out (or any stored image, for :class:`RenderRenditionsOperator`);
each rendition of it is written to ``<destination_prefix><rendition name>/<relative stem><ext>`` with
metadata naming its source, its master (and generation) and its spec fingerprint. Layout, statuses and
the manifest fields: docs/pipeline.md ("Renditions").
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_bgremoval.exceptions import InvalidOptionError, ResultProcessingError, safe_excerpt
from airflow_provider_bgremoval.imaging import DEFAULT_RESULT_LIMITS
from airflow_provider_bgremoval.pipeline.naming import INTERNAL_DIR
from airflow_provider_bgremoval.pipeline.planning import (
    META_SOURCE,
    META_SOURCE_GENERATION,
    META_WRITER,
    BatchSpec,
)
from airflow_provider_bgremoval.renditions import (
    RenderedRendition,
    RenderFailure,
    Rendition,
    prepare_master,
    render,
)
from airflow_provider_bgremoval.storage.exceptions import StorageError, WriteConflictError
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo

META_MASTER = "bgremoval-master"
META_MASTER_GENERATION = "bgremoval-master-generation"
META_RENDITION = "bgremoval-rendition"
META_RENDITION_FINGERPRINT = "bgremoval-rendition-fingerprint"
META_COMPLIANT = "bgremoval-compliant"

#: The largest master read for rendering: the largest decoded result any vendor documents
#: (:data:`~airflow_provider_bgremoval.imaging.DEFAULT_RESULT_LIMITS`) as uncompressed 8-bit RGBA. A real
#: master (compressed) is smaller; anything larger is refused unread (``ObjectTooLargeError``).
MASTER_MAX_BYTES = DEFAULT_RESULT_LIMITS.max_pixels * 4

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
    """

    rendition: Rendition
    name: str
    existing: ObjectInfo | None = None
    finished: bool = False

    @property
    def foreign(self) -> bool:
        """An object is in the way that is not a rendition of this name (no master recorded on it)."""
        if self.existing is None:
            return False
        meta = self.existing.metadata or {}
        return meta.get(META_RENDITION) != self.rendition.name or not meta.get(META_MASTER)

    def blocked_facts(self, bucket: str) -> dict[str, Any]:
        """The manifest entry of a rendition not written because a foreign object holds its name."""
        return {
            "name": self.rendition.name,
            "preset": self.rendition.spec.preset,
            "object": f"gs://{bucket}/{self.name}",
            "fingerprint": self.rendition.fingerprint,
            "status": "rejected",
            "compliant": False,
            "error_code": "output_exists",
            "error_message": "an object the provider did not render is at this name; "
            "not overwritten (set overwrite=True to replace it)",
        }

    def skipped_facts(self, bucket: str) -> dict[str, Any]:
        """The manifest entry of a finished rendition."""
        assert self.existing is not None
        return {
            "name": self.rendition.name,
            "object": f"gs://{bucket}/{self.name}",
            "generation": self.existing.generation,
            "fingerprint": self.rendition.fingerprint,
            "status": "skipped",
            "compliant": (self.existing.metadata or {}).get(META_COMPLIANT) == "true",
            "bytes": self.existing.size,
        }


@dataclass(frozen=True)
class RenditionLayout:
    """
    Where a batch's renditions go and how their names follow from the masters'.

    :param renditions: the renditions (:func:`~airflow_provider_bgremoval.renditions.spec.parse_renditions`).
    :param destination_prefix: the rendition folders' parent (normalised, ends with ``/`` or empty).
    :param masters_prefix: where the masters are (the prefix stripped from a master's name for its stem).
    :param master_extension: the masters' extension, stripped too (``""``: any, by ``splitext``).
    :param destination_bucket: the renditions' bucket (the overlap checks compare it with the others).
    :param masters_bucket: the masters' bucket (a rendition folder may not overlap the masters prefix
        when it is the destination bucket).
    :param source_bucket: the source photos' bucket.
    :param source_prefix: the source photos' prefix (``None``: the masters are the sources); a rendition
        folder may not overlap it when ``source_bucket`` is the destination bucket.
    """

    renditions: tuple[Rendition, ...]
    destination_prefix: str
    masters_prefix: str
    master_extension: str = ""
    destination_bucket: str = ""
    masters_bucket: str = ""
    source_bucket: str = ""
    source_prefix: str | None = None

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
            if rendition.name + "/" == INTERNAL_DIR:
                raise InvalidOptionError(f"renditions[{index}].name", "is the provider's own folder")

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
        """The master's name below the masters prefix, without its extension."""
        relative = master_name.removeprefix(self.masters_prefix)
        if self.master_extension and relative.endswith(self.master_extension):
            return relative[: -len(self.master_extension)]
        stem, _ = posixpath.splitext(relative)
        return stem if posixpath.basename(stem) else relative

    def name_of(self, rendition: Rendition, master_name: str) -> str:
        """The object name of ``rendition`` of the master ``master_name``."""
        return f"{self.folder(rendition)}{self.stem(master_name)}{rendition.spec.extension}"

    def existing(
        self, storage: GcsStorage, bucket: str, master_names: Sequence[str], *, stat: bool = False
    ) -> dict[str, ObjectInfo]:
        """
        The renditions that exist for ``master_names`` (a window): one name-range listing per rendition
        folder (or a stat per name when ``stat``, for a few explicit sources).

        :param storage: the storage.
        :param bucket: the destination bucket.
        :param master_names: the masters' object names.
        :param stat: look each name up instead of listing ranges.
        """
        found: dict[str, ObjectInfo] = {}
        for rendition in self.renditions:
            names = {self.name_of(rendition, master) for master in master_names}
            if not names:
                continue
            if stat:
                infos: Iterable[ObjectInfo | None] = (storage.stat(bucket, name) for name in sorted(names))
            else:
                infos = storage.list_objects(
                    bucket, self.folder(rendition), start_offset=min(names), end_offset=max(names) + "\0"
                )
            found.update((info.name, info) for info in infos if info is not None and info.name in names)
        return found

    def targets(
        self, master_name: str, existing: Mapping[str, ObjectInfo], master: ObjectInfo | None
    ) -> tuple[RenditionTarget, ...]:
        """
        Every rendition of one master, with what exists of it (finished only when ``master`` is known).

        :param master_name: the master's object name.
        :param existing: the renditions found (:meth:`existing`).
        :param master: the finished master (``None``: a master is still to be made, nothing is finished).
        """
        targets = []
        for rendition in self.renditions:
            name = self.name_of(rendition, master_name)
            found = existing.get(name)
            done = found is not None and master is not None and rendition_finished(found, rendition, master)
            targets.append(RenditionTarget(rendition, name, found, done))
        return tuple(targets)


@dataclass(frozen=True)
class RenditionStage:
    """
    Renders one image's renditions from its master (decoded once) and stores them; blocking (a thread).

    :param storage: the storage.
    :param bucket: the destination bucket.
    :param writer_id: identity recorded on the renditions.
    :param overwrite: replace objects found at a rendition's name that are not renditions of it
        (else they are left alone and the rendition is ``rejected`` with ``output_exists``).
    """

    storage: GcsStorage
    bucket: str
    writer_id: str
    overwrite: bool = False

    def run(
        self, data: bytes, master: ObjectInfo, source: ObjectInfo, targets: Sequence[RenditionTarget]
    ) -> list[dict[str, Any]]:
        """
        Render the unfinished targets from ``data`` (the master's bytes) and store them; their facts.

        :param data: the master's bytes.
        :param master: the master object (its generation is recorded on each rendition).
        :param source: the source photo the master was made from.
        :param targets: every rendition of this image (finished ones are reported as skipped).
        """
        blocked = [t for t in targets if not t.finished and t.foreign and not self.overwrite]
        todo = [target for target in targets if not target.finished and target not in blocked]
        facts = {t.rendition.name: t.skipped_facts(self.bucket) for t in targets if t.finished}
        facts.update((t.rendition.name, t.blocked_facts(self.bucket)) for t in blocked)
        if todo:
            try:
                outcomes = render(prepare_master(data), [target.rendition for target in todo])
            except Exception as exc:  # the master does not decode (or memory ran out): every rendition fails
                error = exc if isinstance(exc, ResultProcessingError) else _render_error(exc)
                outcomes = [RenderFailure(target.rendition, error) for target in todo]
            for target, outcome in zip(todo, outcomes, strict=True):
                facts[target.rendition.name] = self._store(target, outcome, master, source)
        return [facts[target.rendition.name] for target in targets]

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
        facts = {"object": f"gs://{self.bucket}/{target.name}", **outcome.facts()}
        if isinstance(outcome, RenderFailure):
            return facts
        if not outcome.compliant:  # never written: a feed reading the folder must not pick it up
            facts.update(status="rejected", error_code="rendition_noncompliant")
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


def _render_error(exc: Exception) -> ResultProcessingError:
    detail = safe_excerpt(str(exc), 120) or "no details"
    return ResultProcessingError(
        f"rendering failed ({type(exc).__name__}: {detail})", code="rendition_failed"
    )


def recorded_source(master: ObjectInfo) -> ObjectInfo:
    """
    The source photo a stored master records (its ``bgremoval-source`` metadata), else the master itself.

    :param master: the master object.
    """
    meta = master.metadata or {}
    uri, generation = meta.get(META_SOURCE, ""), meta.get(META_SOURCE_GENERATION, "")
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    if not uri.startswith("gs://") or not name or not generation.isdigit():
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
        return "rejected", "output_exists" if exists else "rendition_noncompliant", f"rendition(s) {message}"
    return "done", None, None


def rendition_counts(facts: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """
    Per rendition name, how many sources ended in each status (for the summary).

    :param facts: the manifest's ``renditions`` entries of every row.
    """
    counts: dict[str, dict[str, int]] = {}
    for entry in facts:
        per = counts.setdefault(str(entry["name"]), dict.fromkeys(RENDITION_STATUSES, 0))
        per[str(entry["status"])] = per.get(str(entry["status"]), 0) + 1
    return counts
