"""An in-memory stand-in for the part of :class:`GcsStorage` planning and the plan store use.

It behaves like GCS where planning depends on it (name order, ``prefix`` plus ``start_offset`` /
``end_offset`` ranges, 1,000 names per listing page, generations, create-only writes, reads pinned to a
generation that is gone) and counts every request by kind, the items each listing returned and the
objects each read fetched, so tests can assert what planning asked for.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_bgremoval.storage.exceptions import (
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    WriteConflictError,
)
from airflow_provider_bgremoval.storage.gcs import ObjectFilter, ObjectInfo

#: Names per listing page (GCS's largest page).
PAGE = 1000


@dataclass
class _Stored:
    data: bytes
    info: ObjectInfo


@dataclass
class MemoryStorage:
    """
    Buckets of objects in memory; ``MemoryStorage({"a.png": b"..."})`` seeds bucket ``src``.

    :param objects: the source bucket's objects.
    :param bucket: the source bucket's name.
    """

    objects: Mapping[str, bytes] = field(default_factory=dict)
    bucket: str = "src"
    #: requests by kind: ``list`` (one per page), ``stat``, ``read_head``, ``read``, ``write``
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    #: every listing call as ``(bucket, prefix, start_offset, end_offset)``
    listings: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    #: every object name a listing returned (before the include/exclude filter)
    listed: list[str] = field(default_factory=list)
    #: every ``(bucket, name)`` read whole
    reads: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.buckets: dict[str, dict[str, _Stored]] = collections.defaultdict(dict)
        self._generation = 0
        for name, data in self.objects.items():
            self.put(self.bucket, name, data)

    def put(
        self, bucket: str, name: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Store an object (a new generation), without counting a request."""
        self._generation += 1
        info = ObjectInfo(
            bucket=bucket,
            name=name,
            generation=self._generation,
            size=len(data),
            metadata=dict(metadata or {}),
        )
        self.buckets[bucket][name] = _Stored(bytes(data), info)
        return info

    def delete(self, bucket: str, name: str) -> None:
        """Remove an object, without counting a request."""
        del self.buckets[bucket][name]

    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        start_offset: str | None = None,
        end_offset: str | None = None,
        **_: Any,
    ) -> Iterator[ObjectInfo]:
        """The objects under ``prefix`` in ``[start_offset, end_offset)``, in name order, lazily."""
        self.listings.append((bucket, prefix, start_offset, end_offset))
        names = [
            name
            for name in sorted(self.buckets[bucket])
            if name.startswith(prefix)
            and (start_offset is None or name >= start_offset)
            and (end_offset is None or name < end_offset)
        ]
        keep = ObjectFilter(include, exclude)
        self.requests["list"] += 1
        for index, name in enumerate(names):
            if index and index % PAGE == 0:
                self.requests["list"] += 1
            self.listed.append(name)
            if not name.endswith("/") and keep.matches(name, prefix):
                yield self.buckets[bucket][name].info

    def stat(self, bucket: str, name: str, **_: Any) -> ObjectInfo | None:
        """The live object's metadata, or ``None``."""
        self.requests["stat"] += 1
        stored = self.buckets[bucket].get(name)
        return stored.info if stored is not None else None

    def _live(self, bucket: str, name: str, generation: int | None) -> bytes:
        stored = self.buckets[bucket].get(name)
        if generation is None:
            if stored is None:
                raise ObjectNotFoundError(f"gs://{bucket}/{name} does not exist", bucket=bucket, name=name)
            return stored.data
        if stored is None or stored.info.generation != generation:
            now = stored.info.generation if stored is not None else None
            raise ObjectChangedError(
                f"gs://{bucket}/{name} generation {generation} no longer exists",
                bucket=bucket,
                name=name,
                expected_generation=generation,
                current_generation=now,
            )
        return stored.data

    def read_head(self, bucket: str, name: str, nbytes: int, *, generation: int | None = None) -> bytes:
        """The first ``nbytes`` bytes of an object."""
        self.requests["read_head"] += 1
        return self._live(bucket, name, generation)[:nbytes]

    def read(self, bucket: str, name: str, *, generation: int | None = None, **_: Any) -> bytes:
        """A whole object."""
        self.requests["read"] += 1
        self.reads.append((bucket, name))
        return self._live(bucket, name, generation)

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        if_generation_match: int | None = 0,
        idempotency_token: str | None = None,
    ) -> ObjectInfo:
        """Create (``if_generation_match=0``, the default) or replace an object."""
        self.requests["write"] += 1
        current = self.buckets[bucket].get(name)
        live = current.info.generation if current is not None else 0
        if if_generation_match is not None and if_generation_match != live:
            error = ObjectExistsError if if_generation_match == 0 else WriteConflictError
            raise error(
                f"gs://{bucket}/{name} is generation {live}, not {if_generation_match}",
                bucket=bucket,
                name=name,
                expected_generation=if_generation_match,
                current_generation=live or None,
            )
        return self.put(bucket, name, data, metadata)

    def info(self, bucket: str, name: str) -> ObjectInfo:
        """An object's metadata (no request counted)."""
        return self.buckets[bucket][name].info

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        """The object names under ``prefix`` (no request counted)."""
        return sorted(name for name in self.buckets[bucket] if name.startswith(prefix))
