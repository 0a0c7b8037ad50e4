"""Scale-out: list a prefix once and split it into shards for ``.expand()`` (docs/pipeline.md)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.pipeline.naming import normalise_prefix
from airflow_provider_bgremoval.storage.gcs import GcsStorage

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Airflow's default ``[core] max_map_length``.
AIRFLOW_MAX_MAP_LENGTH = 1024


def split_into_shards(
    names: Sequence[str], *, max_shards: int = 16, min_shard_size: int = 1
) -> list[list[str]]:
    """
    Split ``names`` into at most ``max_shards`` contiguous shards of nearly equal size, in order.

    :param names: the object names.
    :param max_shards: at most this many shards.
    :param min_shard_size: no shard smaller than this (unless there are fewer names).
    """
    if not 1 <= max_shards <= AIRFLOW_MAX_MAP_LENGTH:
        raise InvalidOptionError("max_shards", f"must be between 1 and {AIRFLOW_MAX_MAP_LENGTH}")
    if min_shard_size < 1:
        raise InvalidOptionError("min_shard_size", "must be at least 1")
    if not names:
        return []
    count = max(1, min(max_shards, len(names) // min_shard_size))
    base, extra = divmod(len(names), count)
    bounds = [index * base + min(index, extra) for index in range(count + 1)]
    return [list(names[start:end]) for start, end in pairwise(bounds)]


class ListImageShardsOperator(BaseOperator):
    """
    List the images under a prefix and return them as shards (a list of object-name lists).

    :param source_bucket: bucket to list.
    :param source_prefix: prefix to list.
    :param include: glob pattern(s) a source must match.
    :param exclude: glob pattern(s) to leave out.
    :param max_shards: at most this many shards (mapped task instances).
    :param min_shard_size: do not make shards smaller than this.
    :param gcp_conn_id: Google Cloud connection.
    """

    template_fields: Sequence[str] = (
        "source_bucket",
        "source_prefix",
        "include",
        "exclude",
        "max_shards",
        "min_shard_size",
    )

    def __init__(
        self,
        *,
        source_bucket: str,
        source_prefix: str = "",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        max_shards: int = 16,
        min_shard_size: int = 50,
        gcp_conn_id: str | None = "google_cloud_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_bucket = source_bucket
        self.source_prefix = source_prefix
        self.include = include
        self.exclude = exclude
        self.max_shards = max_shards
        self.min_shard_size = min_shard_size
        self.gcp_conn_id = gcp_conn_id

    def execute(self, context: Context) -> list[list[str]]:
        """List the prefix (filtered) and return its shards."""
        storage = GcsStorage(gcp_conn_id=self.gcp_conn_id)
        prefix = normalise_prefix(self.source_prefix)
        listing = storage.list_objects(self.source_bucket, prefix, include=self.include, exclude=self.exclude)
        names = [info.name for info in listing]
        shards = split_into_shards(
            names, max_shards=int(self.max_shards), min_shard_size=int(self.min_shard_size)
        )
        self.log.info(
            "Listed %d object(s) under gs://%s/%s into %d shard(s)",
            len(names),
            self.source_bucket,
            self.source_prefix,
            len(shards),
        )
        return shards
