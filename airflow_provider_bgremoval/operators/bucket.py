"""Operators that process the images of a GCS prefix (or an explicit object list) through a vendor.

Data flows one way: bucket listing -> plan -> vendor call -> post-process -> conditional write ->
manifest -> XCom summary. Each task works on a
:class:`~airflow_provider_bgremoval.operators.bucket_job.BucketJob` (the job the credits pre-flight
prices); see :mod:`airflow_provider_bgremoval.pipeline` for the engine.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.credits import parse_credits
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators.bucket_job import BucketJobOperator, parse_count
from airflow_provider_bgremoval.operators.operations import GenerationParameters, RemovalParameters
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
from airflow_provider_bgremoval.pipeline.planning import DestinationCollisionError
from airflow_provider_bgremoval.pipeline.processors import ImageProcessor
from airflow_provider_bgremoval.pipeline.progress import summary_table
from airflow_provider_bgremoval.storage.gcs import JSON_LINES_CONTENT_TYPE, GcsStorage

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

#: Verdicts for images left pending because another run holds their claims.
ON_PENDING_CHOICES: tuple[str, ...] = ("fail", "warn")


class BucketImageOperator(BucketJobOperator):
    """
    Base class of the bucket operators: plan the job, run it through a vendor, write outputs and a manifest.

    The job's parameters (buckets, prefixes, filters, connections, limits) are documented on
    :class:`~airflow_provider_bgremoval.operators.bucket_job.BucketJobOperator`; these are the batch's:

    :param on_error: ``fail_at_end`` (fail if any image failed or was rejected), ``fail_rate`` (stop and
        fail once more than ``max_failure_rate`` of images fail) or ``continue`` (succeed with a report).
        Out of credits and authentication failures always fail the task, without retries.
    :param max_failure_rate: threshold for ``on_error="fail_rate"``.
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
    :param kwargs: the job's parameters.
    """

    ui_color = "#d9f0e3"

    def __init__(
        self,
        *,
        on_error: str = "fail_at_end",
        max_failure_rate: float = 0.1,
        claim_lease: float = 3600.0,
        progress_interval: float = 30.0,
        on_pending: str = "fail",
        drain_grace: float = DEFAULT_DRAIN_GRACE,
        manifest_checkpoint_rows: int = 500,
        manifest_checkpoint_seconds: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.on_error = on_error
        self.max_failure_rate = max_failure_rate
        self.claim_lease = claim_lease
        self.progress_interval = progress_interval
        self.on_pending = on_pending
        self.drain_grace = drain_grace
        self.manifest_checkpoint_rows = manifest_checkpoint_rows
        self.manifest_checkpoint_seconds = manifest_checkpoint_seconds
        self._runner: BatchRunner | None = None
        # Fail at DAG parse for what is already known.
        if on_error not in ON_ERROR_CHOICES:
            raise InvalidOptionError("on_error", f"{on_error!r} is not one of {', '.join(ON_ERROR_CHOICES)}")
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

    def execute(self, context: Context) -> dict[str, Any]:
        """Plan the job, run the batch, keep its record (manifest, summary) and judge it."""
        try:
            max_images = parse_count(self.max_images, "max_images")
            max_credits = parse_credits(self.max_credits, "max_credits")
            job = self.prepare_job()
            plan = job.plan_batch()
        except (InvalidOptionError, DestinationCollisionError) as exc:
            # Bad parameters and colliding outputs cannot be fixed by retrying: fail at once.
            raise AirflowFailException(str(exc)) from exc
        spec, storage, hook, processor = job.spec, job.storage, job.hook, job.processor
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
            keep_record = functools.partial(
                self._keep_record, context, storage, spec.destination_bucket, manifest_name, manifest
            )
            try:
                interrupt = run_batch(runner, cleanup=hook.aclose)
            except Exception as exc:  # a defect in the engine: keep the record, then fail
                keep_record(processor, strict=False)
                raise AirflowException(
                    f"{processor.vendor}: the batch stopped unexpectedly: {exc!r}"
                ) from exc
            summary = keep_record(processor, strict=interrupt is None and runner.result.interrupted is None)
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


class RemoveBackgroundOperator(RemovalParameters, BucketImageOperator):
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

    The image parameters are documented on
    :class:`~airflow_provider_bgremoval.operators.operations.RemovalParameters`, the bucket parameters
    on :class:`~airflow_provider_bgremoval.operators.bucket_job.BucketJobOperator` and the batch's on
    :class:`BucketImageOperator`.
    """


class GenerateBackgroundOperator(GenerationParameters, BucketImageOperator):
    """
    Generate new backgrounds (Pixelcut) behind the subjects of the images under a GCS prefix.

    Outputs are 1024x1024 JPEGs named like their sources with a ``.jpg`` extension. RGB sources have
    their background removed by Pixelcut first; RGBA sources (e.g. earlier cut-outs) keep their alpha.

    The scene parameters are documented on
    :class:`~airflow_provider_bgremoval.operators.operations.GenerationParameters`, the bucket
    parameters on :class:`~airflow_provider_bgremoval.operators.bucket_job.BucketJobOperator` and the
    batch's on :class:`BucketImageOperator`; ``conn_id`` must be a Pixelcut connection (default
    ``pixelcut_default``).
    """
