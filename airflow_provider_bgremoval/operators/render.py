"""Render renditions from stored masters only: no vendor, no connection, 0 credits (docs/pipeline.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators.bucket import BucketImageOperator
from airflow_provider_bgremoval.operators.bucket_job import (
    MIN_PLANNING_CONCURRENCY,
    BucketJob,
    BucketJobOperator,
)
from airflow_provider_bgremoval.pipeline.planning import BatchSpec
from airflow_provider_bgremoval.pipeline.processors import ImageProcessor, RenderProcessor
from airflow_provider_bgremoval.pipeline.rendering import RenditionLayout
from airflow_provider_bgremoval.renditions import Rendition
from airflow_provider_bgremoval.storage.gcs import GcsStorage

#: Job parameters that mean nothing without a vendor (``max_images`` bounds vendor calls: there are none).
_VENDOR_ONLY = (
    "conn_id",
    "cost_per_image",
    "shard",
    "masters_prefix",
    "max_credits",
    "max_images",
    "max_credits_per_account",
    "failover_on",
    "retry_rejected_on_next",
    "circuit_breaker",
)


class RenderRenditionsOperator(BucketImageOperator):
    """
    Render renditions from the images under a prefix (the masters), never calling a vendor.

    A rendition added to a whole catalogue for free, laid out and skipped as the bucket operators' are
    (docs/pipeline.md, "Render-only").

    :param renditions: the renditions (docs/renditions.md), at least one (or a template rendering them).
    :param source_bucket: bucket of the masters.
    :param destination_bucket: bucket of the renditions.
    :param source_prefix: the masters' prefix (e.g. ``products/masters/``).
    :param destination_prefix: the rendition folders' parent (e.g. ``products/``).
    :param rendition_presets: user-defined presets by name.
    :param kwargs: the batch's other parameters (``include``, ``max_concurrency``, ``on_error``…).
    """

    template_fields: Sequence[str] = tuple(
        name for name in BucketJobOperator.template_fields if name not in _VENDOR_ONLY
    )
    ui_color = "#e8e3f4"

    def __init__(self, *, renditions: Sequence[Mapping[str, Any] | Rendition] | str, **kwargs: Any) -> None:
        for name in _VENDOR_ONLY:
            if kwargs.get(name) is not None:
                raise InvalidOptionError(name, "a render-only job has no vendor: leave it unset")
        super().__init__(conn_id="", renditions=renditions, **kwargs)

    def build_processor(
        self, hook: BackgroundRemovalHook[Any], cost: Decimal | None, *, chained: bool = False
    ) -> ImageProcessor:
        """The render-only stand-in for a vendor (never called)."""
        return RenderProcessor()

    def _masters_prefix(self) -> str | None:
        return None  # the sources are the masters

    def layout_of(
        self, spec: BatchSpec, renditions: tuple[Rendition, ...], extension: str = ""
    ) -> RenditionLayout:
        """
        The renditions' layout: the sources are the masters (of any extension).

        :param spec: the batch spec.
        :param renditions: the parsed renditions.
        :param extension: unused (the masters keep their own extensions).
        """
        return RenditionLayout(
            renditions,
            spec.destination_prefix,
            spec.source_prefix,
            destination_bucket=spec.destination_bucket,
            masters_bucket=spec.source_bucket,
        )

    def prepare_job(self) -> BucketJob:
        """The render-only job: storage, no hook, every source a master."""
        spec = self._spec()
        return BucketJob(
            spec=spec,
            storage=GcsStorage(gcp_conn_id=self.gcp_conn_id),
            hook=None,
            processor=RenderProcessor(),
            planning_concurrency=max(MIN_PLANNING_CONCURRENCY, int(self.max_concurrency)),
            renditions=self.layout_of(spec, self.parsed_renditions()),
            masters_are_sources=True,
        )
