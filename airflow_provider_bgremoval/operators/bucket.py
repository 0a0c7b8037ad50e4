"""Operators that process the images of a GCS prefix (or an explicit object list) through a vendor.

Data flows one way: bucket listing -> plan -> vendor call -> post-process -> conditional write ->
manifest -> XCom summary. See :mod:`airflow_provider_bgremoval.pipeline` for the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Coroutine, Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.hooks.registry import get_vendor_hook
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.pipeline.claims import ClaimStore
from airflow_provider_bgremoval.pipeline.engine import (
    DEFAULT_DRAIN_GRACE,
    ON_ERROR_CHOICES,
    BatchResult,
    BatchRunner,
    HaltInfo,
    run_batch,
)
from airflow_provider_bgremoval.pipeline.manifest import (
    ManifestWriter,
    manifest_object_name,
    manifest_part_name,
)
from airflow_provider_bgremoval.pipeline.planning import (
    BatchPlan,
    BatchSpec,
    DestinationCollisionError,
    plan_batch,
)
from airflow_provider_bgremoval.pipeline.processors import (
    GenerationProcessor,
    ImageProcessor,
    RemovalProcessor,
)
from airflow_provider_bgremoval.pipeline.progress import summary_table
from airflow_provider_bgremoval.storage.gcs import JSON_LINES_CONTENT_TYPE, GcsStorage
from airflow_provider_bgremoval.vendors.pixelcut import (
    PixelcutGenerateOptions,
    PixelcutImageTransform,
    parse_scene,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Verdicts for images left pending because another run holds their claims.
ON_PENDING_CHOICES: tuple[str, ...] = ("fail", "warn")


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, also when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def parse_credits(value: Any, parameter: str) -> Decimal | None:
    """``None`` or a non-negative Decimal from a number or numeric string."""
    if value in (None, ""):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidOptionError(parameter, f"{value!r} is not a number") from None
    if not number.is_finite() or number < 0:
        raise InvalidOptionError(parameter, "must be a non-negative number")
    return number


def parse_count(value: Any, parameter: str, *, minimum: int = 0) -> int | None:
    """``None`` or an integer ≥ ``minimum``."""
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(parameter, f"{value!r} is not an integer") from None
    if number < minimum:
        raise InvalidOptionError(parameter, f"must be at least {minimum}")
    return number


class BucketImageOperator(BaseOperator):
    """
    Base class of the bucket operators: plan, run through a vendor, write outputs and a manifest.

    :param conn_id: vendor connection (its type picks the vendor: ``pixelcut``, ``pixian``, ``poof``).
    :param source_bucket: bucket of the source images.
    :param destination_bucket: bucket for the outputs.
    :param source_prefix: prefix to list; kept out of output names.
    :param source_objects: explicit object names instead of listing (mappable).
    :param destination_prefix: prefix of the outputs.
    :param include: glob pattern(s) a source must match, e.g. ``"*.jpg"``.
    :param exclude: glob pattern(s) to leave out.
    :param overwrite: replace outputs made from another source generation or other options.
    :param gcp_conn_id: Google Cloud connection (ADC when absent; emulator via ``STORAGE_EMULATOR_HOST``).
    :param max_concurrency: images in flight at once in this task.
    :param max_images: process at most this many billable images, then stop cleanly.
    :param max_credits: spend at most this many credits, then stop cleanly.
    :param on_error: ``fail_at_end`` (fail if any image failed or was rejected), ``fail_rate`` (stop and
        fail once more than ``max_failure_rate`` of images fail) or ``continue`` (succeed with a report).
        Out of credits and authentication failures always fail the task, without retries.
    :param max_failure_rate: threshold for ``on_error="fail_rate"``.
    :param cost_per_image: credits per image for budgets and estimates (default: the vendor's cost table).
    :param claim_lease: seconds a claim keeps other runs from processing the same output.
    :param progress_interval: seconds between progress lines at most.
    :param on_pending: verdict when images stay ``pending`` because another run holds their claims:
        ``fail`` (default: the task fails, retryably, naming the holder and its lease expiry, so a green
        task always means every planned image is finished or was held back by a limit you set) or
        ``warn`` (succeed with a warning and the holders in the summary).
    :param drain_grace: seconds in-flight vendor calls get to finish and store their billed results
        after ``execution_timeout`` or a termination (SIGTERM); keep it under Airflow's SIGTERM→SIGKILL
        escalation (5 s). Calls still unanswered then are abandoned and counted as possibly charged.
    :param manifest_checkpoint_rows: checkpoint the manifest to the bucket every this many rows…
    :param manifest_checkpoint_seconds: …or every this many seconds, whichever comes first (a worker
        killed with SIGKILL leaves every row up to its last checkpoint).
    """

    template_fields: Sequence[str] = (
        "conn_id",
        "source_bucket",
        "source_prefix",
        "source_objects",
        "destination_bucket",
        "destination_prefix",
        "include",
        "exclude",
        "max_images",
        "max_credits",
        "gcp_conn_id",
    )
    ui_color = "#d9f0e3"
    operation_name: ClassVar[str] = "process"

    def __init__(
        self,
        *,
        conn_id: str,
        source_bucket: str,
        destination_bucket: str,
        source_prefix: str = "",
        source_objects: Sequence[str] | None = None,
        destination_prefix: str = "",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        overwrite: bool = False,
        gcp_conn_id: str | None = "google_cloud_default",
        max_concurrency: int = 16,
        max_images: int | str | None = None,
        max_credits: float | str | None = None,
        on_error: str = "fail_at_end",
        max_failure_rate: float = 0.1,
        cost_per_image: float | str | None = None,
        claim_lease: float = 3600.0,
        progress_interval: float = 30.0,
        on_pending: str = "fail",
        drain_grace: float = DEFAULT_DRAIN_GRACE,
        manifest_checkpoint_rows: int = 500,
        manifest_checkpoint_seconds: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.source_bucket = source_bucket
        self.destination_bucket = destination_bucket
        self.source_prefix = source_prefix
        self.source_objects = source_objects
        self.destination_prefix = destination_prefix
        self.include = include
        self.exclude = exclude
        self.overwrite = overwrite
        self.gcp_conn_id = gcp_conn_id
        self.max_concurrency = max_concurrency
        self.max_images = max_images
        self.max_credits = max_credits
        self.on_error = on_error
        self.max_failure_rate = max_failure_rate
        self.cost_per_image = cost_per_image
        self.claim_lease = claim_lease
        self.progress_interval = progress_interval
        self.on_pending = on_pending
        self.drain_grace = drain_grace
        self.manifest_checkpoint_rows = manifest_checkpoint_rows
        self.manifest_checkpoint_seconds = manifest_checkpoint_seconds
        self._runner: BatchRunner | None = None
        # Fail at DAG parse for what is already known (templated values are checked at run time).
        if on_error not in ON_ERROR_CHOICES:
            raise InvalidOptionError("on_error", f"{on_error!r} is not one of {', '.join(ON_ERROR_CHOICES)}")
        if int(max_concurrency) < 1:
            raise InvalidOptionError("max_concurrency", "must be at least 1")
        if not 0 <= float(max_failure_rate) <= 1:
            raise InvalidOptionError("max_failure_rate", "must be between 0 and 1")
        if on_pending not in ON_PENDING_CHOICES:
            raise InvalidOptionError(
                "on_pending", f"{on_pending!r} is not one of {', '.join(ON_PENDING_CHOICES)}"
            )
        if float(drain_grace) < 0:
            raise InvalidOptionError("drain_grace", "must not be negative")
        if int(manifest_checkpoint_rows) < 1 or float(manifest_checkpoint_seconds) <= 0:
            raise InvalidOptionError(
                "manifest_checkpoint_rows", "checkpoints need at least 1 row and a positive interval"
            )
        for name in ("max_images",):
            if not _is_template(getattr(self, name)):
                parse_count(getattr(self, name), name)
        for name in ("max_credits", "cost_per_image"):
            if not _is_template(getattr(self, name)):
                parse_credits(getattr(self, name), name)

    # -- for subclasses ------------------------------------------------------------------------
    def build_processor(self, hook: BackgroundRemovalHook[Any], cost: Decimal | None) -> ImageProcessor:
        """The vendor operation applied to each image."""
        raise TypeError(f"{type(self).__name__} must define build_processor()")

    def get_hook(self) -> BackgroundRemovalHook[Any]:
        """The vendor hook for ``conn_id``."""
        return get_vendor_hook(self.conn_id)

    # -- shared --------------------------------------------------------------------------------
    def _spec(self) -> BatchSpec:
        def patterns(value: str | Sequence[str] | None) -> Sequence[str] | None:
            if value in (None, "", []):
                return None
            return [value] if isinstance(value, str) else list(value)

        objects = self.source_objects
        if isinstance(objects, str):
            raise InvalidOptionError("source_objects", "expected a list of object names, got a string")
        return BatchSpec(
            source_bucket=self.source_bucket,
            destination_bucket=self.destination_bucket,
            source_prefix=self.source_prefix or "",
            source_objects=None if objects is None else list(objects),
            destination_prefix=self.destination_prefix or "",
            include=patterns(self.include),
            exclude=patterns(self.exclude),
            overwrite=bool(self.overwrite),
        )

    def plan(self, storage: GcsStorage, processor: ImageProcessor, spec: BatchSpec) -> BatchPlan:
        """Plan the batch (shared with the credits pre-flight)."""
        return run_coroutine(
            plan_batch(
                storage,
                spec,
                extension=processor.extension,
                fingerprint=processor.fingerprint,
                vendor=processor.vendor,
                limits=processor.limits,
                concurrency=max(4, int(self.max_concurrency)),
            )
        )

    def prepare(self) -> tuple[BatchSpec, GcsStorage, BackgroundRemovalHook[Any], ImageProcessor]:
        """Validate the rendered parameters and build the storage, hook and processor (no calls)."""
        spec = self._spec()
        cost = parse_credits(self.cost_per_image, "cost_per_image")
        storage = GcsStorage(gcp_conn_id=self.gcp_conn_id)
        hook = self.get_hook()
        return spec, storage, hook, self.build_processor(hook, cost)

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            max_images = parse_count(self.max_images, "max_images")
            max_credits = parse_credits(self.max_credits, "max_credits")
            spec, storage, hook, processor = self.prepare()
            plan = self.plan(storage, processor, spec)
        except (InvalidOptionError, DestinationCollisionError) as exc:
            # Bad parameters and colliding outputs cannot be fixed by retrying: fail at once.
            raise AirflowFailException(str(exc)) from exc
        ti = context["ti"]
        owner = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', -1)}"
        if plan.total == 0:
            where = f"gs://{spec.source_bucket}/{spec.source_prefix}"
            log.info("Nothing to do: no source objects under %s match the filters", where)
        manifest_name = manifest_object_name(
            spec.internal_prefix,
            ti.dag_id,
            ti.run_id,
            ti.task_id,
            getattr(ti, "map_index", None),
            int(getattr(ti, "try_number", 1) or 1),
        )

        def store_part(number: int, data: bytes) -> None:
            storage.write(
                spec.destination_bucket,
                manifest_part_name(manifest_name, number),
                data,
                content_type=JSON_LINES_CONTENT_TYPE,
                idempotency_token=f"manifest:{owner}:{number}",
            )

        with ManifestWriter(
            store_part,
            every_rows=int(self.manifest_checkpoint_rows),
            every_seconds=float(self.manifest_checkpoint_seconds),
        ) as manifest:
            runner = self._runner = BatchRunner(
                storage,
                processor,
                plan,
                manifest,
                max_concurrency=int(self.max_concurrency),
                max_images=max_images,
                max_credits=max_credits,
                on_error=self.on_error,
                max_failure_rate=float(self.max_failure_rate),
                writer_id=owner,
                claims=ClaimStore(
                    storage,
                    spec.destination_bucket,
                    spec.internal_prefix,
                    owner,
                    lease_seconds=self.claim_lease,
                ),
                balance_probe=hook.aget_balance,
                progress_every_seconds=float(self.progress_interval),
                drain_grace=float(self.drain_grace),
            )
            try:
                interrupt = run_batch(runner, cleanup=hook.aclose)
            except Exception as exc:  # a defect in the engine: keep the record, then fail
                self._keep_record(
                    context,
                    storage,
                    spec.destination_bucket,
                    manifest_name,
                    manifest,
                    processor,
                    strict=False,
                )
                raise AirflowException(
                    f"{processor.vendor}: the batch stopped unexpectedly: {exc!r}"
                ) from exc
            summary = self._keep_record(
                context,
                storage,
                spec.destination_bucket,
                manifest_name,
                manifest,
                processor,
                strict=interrupt is None and runner.result.interrupted is None,
            )
        result = runner.result
        self._report_lineage(hook, result)
        if interrupt is not None:
            raise interrupt
        if result.interrupted is not None:  # terminated through on_kill: drained, record kept
            raise AirflowException(
                f"{processor.vendor}: {result.halt.message if result.halt else result.interrupted}; "
                f"{result.counts['done']} image(s) done, {result.counts['pending']} pending "
                f"(a retry skips what is done). Manifest: {summary['manifest_uri']}"
            )
        self._verdict(context, processor, result, summary)
        return summary

    def on_kill(self) -> None:
        """SIGTERM: drain the batch (stop submitting, let in-flight calls store their billed results)."""
        runner = self._runner
        if runner is not None:
            runner.request_stop("terminated", "the task was terminated (SIGTERM)")

    def _keep_record(
        self,
        context: Context,
        storage: GcsStorage,
        bucket: str,
        manifest_name: str,
        manifest: ManifestWriter,
        processor: ImageProcessor,
        *,
        strict: bool,
    ) -> dict[str, Any]:
        """
        Store the final manifest and push the summary, however the batch ended.

        On success the summary is also the task's return value; when the task then fails (verdict,
        interrupt, defect) the ``summary`` XCom is what downstream alerts read. With ``strict``, a
        manifest that cannot be stored fails the task; otherwise (the task is failing anyway) it is
        logged, and the checkpoint parts hold the rows saved so far.
        """
        assert self._runner is not None
        result = self._runner.result
        manifest_uri = f"gs://{bucket}/{manifest_name}"
        try:
            storage.write(
                bucket,
                manifest_name,
                manifest.getvalue(),
                content_type=JSON_LINES_CONTENT_TYPE,
                idempotency_token=f"manifest:{manifest_name}",
            )
        except Exception as exc:
            if strict:
                raise
            log.error(
                "Could not store the final manifest %s (its checkpoint parts hold %d of %d rows): %s",
                manifest_uri,
                manifest.rows - manifest.unsaved_rows,
                manifest.rows,
                exc,
            )
        summary = self._summary(processor, result, manifest_uri)
        log.info("Batch summary (%s):\n%s", processor.vendor, summary_table(self._table(summary)))
        self._warn_about_claims(result)
        try:
            context["ti"].xcom_push(key="summary", value=summary)
        except Exception as exc:  # a terminated task may no longer push; the manifest has the record
            log.warning("Could not push the summary XCom: %s", exc)
        return summary

    @staticmethod
    def _warn_about_claims(result: BatchResult) -> None:
        for holder in result.claims_elsewhere_summary():
            log.warning(
                "%d image(s) left pending: another run holds their claims: %s (lease expires %s). "
                "That run is processing them; if it died, they can be processed once the lease expires.",
                holder["images"],
                holder["holder"],
                holder["lease_expires"],
            )

    def _summary(self, processor: ImageProcessor, result: BatchResult, manifest_uri: str) -> dict[str, Any]:
        counts = result.counts
        return {
            "vendor": processor.vendor,
            "operation": processor.operation,
            "total": sum(counts.values()),
            "done": counts["done"],
            "skipped": counts["skipped"],
            "rejected": counts["rejected"],
            "failed": counts["failed"],
            "pending": counts["pending"],
            "credits_spent": str(result.credits_spent),
            "credits_for_outputs": str(result.credits_for_outputs),
            "credits_for_failed": str(result.credits_for_failed),
            "credits_estimated": result.credits_estimated,
            "possibly_charged": result.possibly_charged,
            "pending_reasons": dict(result.pending_reasons),
            "claims_elsewhere": result.claims_elsewhere_summary(),
            "interrupted": result.interrupted,
            "manifest_uri": manifest_uri,
            "sample_outputs": list(result.sample_outputs),
            "halt": result.halt.as_dict() if result.halt else None,
            "duration_s": round(result.duration_s, 3),
        }

    @staticmethod
    def _table(summary: dict[str, Any]) -> dict[str, object]:
        keys = (
            "total",
            "done",
            "skipped",
            "rejected",
            "failed",
            "pending",
            "credits_spent",
            "credits_for_failed",
            "possibly_charged",
            "duration_s",
            "manifest_uri",
        )
        return {key: summary[key] for key in keys}

    def _verdict(
        self, context: Context, processor: ImageProcessor, result: BatchResult, summary: dict[str, Any]
    ) -> None:
        halt: HaltInfo | None = result.halt
        counts = result.counts
        if halt is not None:
            # The same key and shape as the credits pre-flight's halt, so one alert serves both.
            context["ti"].xcom_push(key="halt", value=halt.as_dict())
        if halt is not None and (halt.fatal or halt.reason == "failure_rate"):
            available = "unknown" if halt.available is None else str(halt.available)
            message = (
                f"{processor.vendor}: {halt.message}. Stopped after {counts['done']} of {result.billable} "
                f"billable images; {halt.remaining_images} image(s) remain pending "
                f"(need about {halt.needed} credits; available: {available}). "
                f"Finished images are skipped on rerun. Manifest: {summary['manifest_uri']}"
            )
            if halt.fatal:
                raise AirflowFailException(message)
            raise AirflowException(message)
        if halt is not None:
            log.warning(
                "Stopped early (%s): %s; %d image(s) left pending",
                halt.reason,
                halt.message,
                halt.remaining_images,
            )
        bad = counts["failed"] + counts["rejected"]
        if self.on_error == "fail_at_end" and bad:
            raise AirflowException(
                f"{processor.vendor}: {counts['failed']} image(s) failed and "
                f"{counts['rejected']} were rejected "
                f"of {summary['total']}; see the manifest {summary['manifest_uri']}"
            )
        sent = counts["done"] + counts["failed"] + counts["rejected"]
        if self.on_error == "fail_rate" and sent and bad / sent > float(self.max_failure_rate):
            raise AirflowException(
                f"{processor.vendor}: failure rate {bad / sent:.0%} is over max_failure_rate "
                f"{float(self.max_failure_rate):.0%}; see the manifest {summary['manifest_uri']}"
            )
        held = result.claims_elsewhere_summary()
        if held and self.on_pending == "fail":
            holders = "; ".join(
                f"{h['images']} held by {h['holder']} until {h['lease_expires']}" for h in held
            )
            raise AirflowException(
                f"{processor.vendor}: {sum(h['images'] for h in held)} image(s) left pending because another "
                f"run holds their claims ({holders}); nothing was paid for them here. A retry after the "
                f"holder finishes skips what it wrote (on_pending='warn' accepts this as success). "
                f"Manifest: {summary['manifest_uri']}"
            )

    def _report_lineage(self, hook: BackgroundRemovalHook[Any], result: BatchResult) -> None:
        """Report each source and output object to Airflow's hook-lineage collector (OpenLineage)."""
        try:
            from airflow.sdk.lineage import get_hook_lineage_collector
        except ImportError:  # pragma: no cover - older SDKs
            return
        collector = get_hook_lineage_collector()
        for source_uri, output_uri in result.lineage:
            collector.add_input_asset(context=hook, uri=source_uri)
            collector.add_output_asset(context=hook, uri=output_uri)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage inputs and outputs (imported lazily: OpenLineage is optional)."""
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        spec = self._spec()
        return OperatorLineage(
            inputs=[Dataset(namespace=f"gs://{spec.source_bucket}", name=spec.source_prefix or "/")],
            outputs=[
                Dataset(namespace=f"gs://{spec.destination_bucket}", name=spec.destination_prefix or "/")
            ],
        )


class RemoveBackgroundOperator(BucketImageOperator):
    """
    Remove the backgrounds of the images under a GCS prefix with any vendor.

    .. code-block:: python

        RemoveBackgroundOperator(
            task_id="cutouts",
            conn_id="pixelcut_default",
            source_bucket="shop-raw",
            source_prefix="2026/11/",
            destination_bucket="shop-cutouts",
            destination_prefix="2026/11/",
            output_format="webp",
            background_color="#ffffff",
            crop=True,
            margin="5%",
        )

    :param output_format: ``png``, ``jpeg`` or ``webp``.
    :param background_color: flatten on this colour (``None``: transparent).
    :param crop: crop to the subject.
    :param margin: margin around the cropped subject (CSS-style, px or %).
    :param max_size: fit the result into ``(width, height)``.
    :param jpeg_quality: quality of lossy outputs.
    :param vendor_options: the vendor's typed options (e.g. ``PixelcutOptions(shadow=...)``).

    The bucket parameters are documented on :class:`BucketImageOperator`.
    """

    template_fields: Sequence[str] = (
        *BucketImageOperator.template_fields,
        "output_format",
        "background_color",
        "crop",
        "margin",
        "max_size",
    )
    operation_name = "remove_background"

    def __init__(
        self,
        *,
        output_format: str = "png",
        background_color: str | None = None,
        crop: bool | str = False,
        margin: str | None = None,
        max_size: Any = None,
        jpeg_quality: int = 90,
        vendor_options: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_format = output_format
        self.background_color = background_color
        self.crop = crop
        self.margin = margin
        self.max_size = max_size
        self.jpeg_quality = jpeg_quality
        self.vendor_options = vendor_options
        if not any(_is_template(v) for v in (output_format, background_color, crop, margin, max_size)):
            self.removal_options()  # fail at DAG parse on bad options

    def removal_options(self) -> RemovalOptions:
        """The validated unified options."""
        return RemovalOptions.create(
            output_format=self.output_format,
            background_color=self.background_color,
            crop=self.crop,
            margin=self.margin,
            max_size=self.max_size,
            jpeg_quality=self.jpeg_quality,
        )

    def build_processor(self, hook: BackgroundRemovalHook[Any], cost: Decimal | None) -> ImageProcessor:
        """A :class:`RemovalProcessor` with this operator's options."""
        return RemovalProcessor(hook, self.removal_options(), self.vendor_options, cost_per_image=cost)


class GenerateBackgroundOperator(BucketImageOperator):
    """
    Generate new backgrounds (Pixelcut) behind the subjects of the images under a GCS prefix.

    Outputs are 1024x1024 JPEGs named like their sources with a ``.jpg`` extension. RGB sources have
    their background removed by Pixelcut first; RGBA sources (e.g. earlier cut-outs) keep their alpha.

    :param scene: a preset scene: ``marble``, ``wood``, ``industrial``, ``linen``, ``brick`` or ``counter``.
    :param prompt: a description of the scene (not together with ``scene``).
    :param negative_prompt: comma-separated attributes to avoid (not together with ``scene``).
    :param image_transform: placement of the subject: ``{"scale": 0.8, "x_center": 0.5, "y_center": 0.6}``.

    The bucket parameters are documented on :class:`BucketImageOperator`; ``conn_id`` must be a
    Pixelcut connection (default ``pixelcut_default``).
    """

    template_fields: Sequence[str] = (
        *BucketImageOperator.template_fields,
        "scene",
        "prompt",
        "negative_prompt",
    )
    operation_name = "generate_background"

    def __init__(
        self,
        *,
        conn_id: str = "pixelcut_default",
        scene: str | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        image_transform: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.scene = scene
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.image_transform = image_transform
        if not any(_is_template(v) for v in (scene, prompt, negative_prompt)):
            self.generate_options()  # fail at DAG parse on bad or conflicting options

    def generate_options(self) -> PixelcutGenerateOptions:
        """The validated generate-background options."""
        return PixelcutGenerateOptions(
            scene=parse_scene(self.scene or None),
            prompt=self.prompt or None,
            negative_prompt=self.negative_prompt or None,
            image_transform=PixelcutImageTransform.coerce(self.image_transform),
        )

    def build_processor(self, hook: BackgroundRemovalHook[Any], cost: Decimal | None) -> ImageProcessor:
        """A :class:`GenerationProcessor` (Pixelcut only)."""
        if not isinstance(hook, PixelcutHook):
            raise InvalidOptionError(
                "conn_id",
                f"generate-background is a Pixelcut feature; "
                f"{self.conn_id!r} is a {hook.conn_type} connection",
            )
        return GenerationProcessor(hook, self.generate_options(), cost_per_image=cost)
