"""Scale-out: shards for ``.expand()``: of the pre-flight's plan, or of a listing (docs/pipeline.md)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators.bucket_job import is_template, parse_count
from airflow_provider_bgremoval.pipeline.naming import internal_prefix, normalise_prefix, output_stem
from airflow_provider_bgremoval.pipeline.plan_store import check_shard_limits, shard_bounds
from airflow_provider_bgremoval.pipeline.planning import check_location, list_sources, read_back_prefixes
from airflow_provider_bgremoval.storage.exceptions import gs_uri
from airflow_provider_bgremoval.storage.gcs import GcsStorage

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The parameters that place the listing and the outputs it lists around.
_LAYOUT_FIELDS = (
    "source_bucket",
    "source_prefix",
    "destination_bucket",
    "destination_prefix",
    "masters_prefix",
)


def split_into_shards(
    names: Sequence[str], *, max_shards: int = 16, min_shard_size: int = 1
) -> list[list[str]]:
    """
    Split ``names`` into at most ``max_shards`` contiguous shards of nearly equal size, in order, keeping
    names that make one output (``a.jpg`` and ``a.png``, :func:`.output_stem`) in one shard: planned in
    two tasks, each would miss the collision and both would pay before the second write was refused.

    :param names: the object names.
    :param max_shards: at most this many shards.
    :param min_shard_size: no shard smaller than this (unless there are fewer names).
    """
    check_shard_limits(max_shards, min_shard_size)
    if not names:
        return []
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(output_stem(name), []).append(name)
    count = max(1, min(max_shards, len(names) // min_shard_size))
    starts = [start for start, _ in shard_bounds(len(names), count)]
    shards: list[list[str]] = [[] for _ in starts]
    first = 0
    for group in groups.values():  # laid out in order: a group goes to the shard where it starts
        shards[bisect.bisect_right(starts, first) - 1].extend(group)
        first += len(group)
    return [shard for shard in shards if shard]


class ListImageShardsOperator(BaseOperator):
    """
    List the images under a prefix and return them as shards (a list of object-name lists).

    The listing never includes the provider's own folder under the prefix (``_bgremoval/``), nor, given
    the bucket task's destination, the outputs of a destination (or masters prefix) that lies inside the
    source prefix of the same bucket: they are listed around, so no output is sent again as a source
    (docs/pipeline.md, "Outputs inside the source prefix"). Refused before anything is listed
    (``InvalidOptionError``; at DAG parse unless templated): shard limits out of range, an output prefix
    that is the source prefix itself in the same bucket (nothing would be listed), a ``gs://`` URI given
    as a bucket or a prefix.

    :param source_bucket: bucket to list.
    :param source_prefix: prefix to list.
    :param include: glob pattern(s) a source must match.
    :param exclude: glob pattern(s) to leave out.
    :param max_shards: at most this many shards (mapped task instances), 1 to Airflow's default
        ``max_map_length``; checked at DAG parse (a templated one once rendered, before any listing).
    :param min_shard_size: do not make shards smaller than this (at least 1).
    :param destination_bucket: the bucket task's ``destination_bucket`` (``None``: not given).
    :param destination_prefix: the bucket task's ``destination_prefix``.
    :param masters_prefix: the bucket task's ``masters_prefix``, if it gives one.
    :param gcp_conn_id: Google Cloud connection.
    """

    template_fields: Sequence[str] = (
        "source_bucket",
        "source_prefix",
        "include",
        "exclude",
        "max_shards",
        "min_shard_size",
        "destination_bucket",
        "destination_prefix",
        "masters_prefix",
    )

    def __init__(
        self,
        *,
        source_bucket: str,
        source_prefix: str = "",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        max_shards: int | str = 16,
        min_shard_size: int | str = 50,
        destination_bucket: str | None = None,
        destination_prefix: str = "",
        masters_prefix: str | None = None,
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
        self.destination_bucket = destination_bucket
        self.destination_prefix = destination_prefix
        self.masters_prefix = masters_prefix
        self.gcp_conn_id = gcp_conn_id
        # at DAG parse, not after the whole prefix was listed (templated values: once rendered)
        self._shard_limits()
        if not any(is_template(getattr(self, name)) for name in _LAYOUT_FIELDS):
            self.skipped_folders()

    def _shard_limits(self) -> tuple[int, int]:
        """
        ``(max_shards, min_shard_size)``, checked (``InvalidOptionError``); a templated one waits for
        rendering (``0`` until then).
        """
        limits = {"max_shards": self.max_shards, "min_shard_size": self.min_shard_size}
        counts = {
            name: parse_count(value, name) or 0 for name, value in limits.items() if not is_template(value)
        }
        check_shard_limits(counts.get("max_shards"), counts.get("min_shard_size"))
        return counts.get("max_shards", 0), counts.get("min_shard_size", 0)

    def skipped_folders(self) -> list[str]:
        """
        The folders the listing leaves out: the provider's own, and the outputs read back. Outputs at
        the source prefix itself (same bucket) are refused: every name would be left out.
        """
        self._refuse_uris()
        prefix = normalise_prefix(self.source_prefix)
        masters = normalise_prefix(self.masters_prefix) if self.masters_prefix else None
        outputs = {"destination_prefix": normalise_prefix(self.destination_prefix), "masters_prefix": masters}
        read_back = read_back_prefixes(
            self.source_bucket, prefix, self.destination_bucket or None, *outputs.values()
        )
        for parameter, output in outputs.items():
            if output == prefix and output in read_back:
                raise InvalidOptionError(
                    parameter,
                    f"{gs_uri(self.source_bucket, output)} is the source prefix itself: every source "
                    "would be taken for an output and nothing listed; write the outputs to another "
                    "prefix or bucket",
                )
        return [internal_prefix(prefix), *read_back]

    def _refuse_uris(self) -> None:
        """
        Refuse a bucket or prefix that names nothing (:func:`.check_location`): a ``gs://`` URI (a prefix
        ``gs://shop/2026/`` lists the objects named so, none), or a bucket name GCS refuses; nothing
        would be listed, or listed around, without a word. An empty ``destination_bucket`` is the source's.
        """
        for parameter in _LAYOUT_FIELDS:
            value = getattr(self, parameter)
            if value or parameter != "destination_bucket":
                check_location(parameter, value)

    def execute(self, context: Context) -> list[list[str]]:
        """List the prefix (filtered, around :meth:`skipped_folders`) and return its shards."""
        max_shards, min_shard_size = self._shard_limits()  # rendered: before anything is listed
        skip = self.skipped_folders()
        storage = GcsStorage(gcp_conn_id=self.gcp_conn_id)
        prefix = normalise_prefix(self.source_prefix)
        listing = list_sources(
            storage, self.source_bucket, prefix, include=self.include, exclude=self.exclude, skip=skip
        )
        names = [info.name for info in listing]
        shards = split_into_shards(names, max_shards=max_shards, min_shard_size=min_shard_size)
        self.log.info(
            "Listed %d object(s) under gs://%s/%s (none under %s) into %d shard(s)",
            len(names),
            self.source_bucket,
            prefix,
            ", ".join(skip),
            len(shards),
        )
        return shards


class PlannedShardsOperator(BaseOperator):
    """
    Return the shards of the plan a credits pre-flight kept in the bucket, for ``.expand(shard=...)``.

    Airflow maps only over a task's return value, and the pre-flight returns its estimate; this task hands
    on the pre-flight's XCom ``shards`` and reads no object (docs/pipeline.md, "The plan").

    :param preflight_task_id: the pre-flight task (given ``max_shards``) whose plan to hand on.
    """

    template_fields: Sequence[str] = ("preflight_task_id",)

    def __init__(self, *, preflight_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preflight_task_id = preflight_task_id

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """The pre-flight's shard descriptors."""
        shards = context["ti"].xcom_pull(task_ids=self.preflight_task_id, key="shards")
        if shards is None:
            raise AirflowFailException(
                f"{self.preflight_task_id!r} kept no plan: give that pre-flight max_shards"
            )
        self.log.info("The plan of %r has %d shard(s)", self.preflight_task_id, len(shards))
        return list(shards)
