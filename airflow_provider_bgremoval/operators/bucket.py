"""The bucket operators: list -> plan -> vendor call -> post-process -> write -> manifest -> XCom summary.

The engine is :mod:`airflow_provider_bgremoval.pipeline`; the behaviour in detail: docs/pipeline.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.credits import parse_credits
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators.bucket_job import (
    BucketJob,
    BucketJobOperator,
    check_choice,
    is_template,
    parse_count,
)
from airflow_provider_bgremoval.operators.operations import GenerationParameters, RemovalParameters
from airflow_provider_bgremoval.pipeline.claims import ClaimStore, parse_lease_seconds
from airflow_provider_bgremoval.pipeline.engine import (
    DEFAULT_DRAIN_GRACE,
    LEASE_SHORT,
    ON_ERROR_CHOICES,
    BatchResult,
    BatchRunner,
    run_batch,
)
from airflow_provider_bgremoval.pipeline.manifest import (
    STATUSES,
    ManifestWriter,
    final_manifest_name,
    manifest_object_name,
    manifest_part_name,
)
from airflow_provider_bgremoval.pipeline.planning import DestinationCollisionError
from airflow_provider_bgremoval.pipeline.progress import summary_table
from airflow_provider_bgremoval.pipeline.rendering import RENDITION_STATUSES
from airflow_provider_bgremoval.run_summary import manifests_to_read, summarise_manifests
from airflow_provider_bgremoval.storage.exceptions import StorageError
from airflow_provider_bgremoval.storage.gcs import JSON_LINES_CONTENT_TYPE

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

#: Verdicts for images left pending because another run holds their claims.
ON_PENDING_CHOICES: tuple[str, ...] = ("fail", "warn")
#: The summary fields of the log's final table.
_TABLE_KEYS = (
    "total",
    *STATUSES,
    "credits_spent",
    "credits_for_failed",
    "possibly_charged",
    "duration_s",
    "manifest_uri",
)


class BucketImageOperator(BucketJobOperator):
    """
    Base of the bucket operators: plan the job, run it through a vendor, write outputs and a manifest.

    :param on_error: ``fail_at_end``, ``fail_rate`` (stop past ``max_failure_rate``) or ``continue``.
    :param max_failure_rate: threshold for ``on_error="fail_rate"``.
    :param claim_lease: seconds a claim keeps other runs from processing the same output (a finite
        number, or its numeric text, of at least what one image may hold its claim before its output
        is stored: 1800 on the default connection settings, more with a connection's larger
        ``timeout`` or ``max_retries`` extra, checked when the task starts; a claim is not renewed),
        counted by GCS's clock.
    :param progress_interval: seconds between progress lines at most.
    :param on_pending: ``fail`` or ``warn`` when images stay pending because other runs hold their claims.
    :param drain_grace: seconds in-flight calls get to store their billed results on timeout or SIGTERM.
    :param manifest_checkpoint_rows: checkpoint the manifest every this many rows...
    :param manifest_checkpoint_seconds: ...or every this many seconds, whichever comes first.
    :param kwargs: the job's parameters (:class:`BucketJobOperator`).
    """

    ui_color = "#d9f0e3"

    def __init__(
        self,
        *,
        on_error: str = "fail_at_end",
        max_failure_rate: float = 0.1,
        claim_lease: float | str = 3600.0,
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
        check_choice(on_error, ON_ERROR_CHOICES, "on_error")
        if not is_template(claim_lease):  # else checked when the task starts, before any work
            parse_lease_seconds(claim_lease)
        if not 0 <= float(max_failure_rate) <= 1:
            raise InvalidOptionError("max_failure_rate", "must be between 0 and 1")
        check_choice(on_pending, ON_PENDING_CHOICES, "on_pending")
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
            claim_lease = parse_lease_seconds(self.claim_lease)
            job = self.prepare_job()
            holds = job.claim_holds()  # a connection's timeout or retries may hold a claim longer
            parse_lease_seconds(claim_lease, holds)
            plan = job.plan_batch()
            max_credits = self._shard_budget(job, max_credits)
        except (InvalidOptionError, DestinationCollisionError) as exc:  # retrying cannot fix these
            raise AirflowFailException(str(exc)) from exc
        spec, vendor = job.spec, job.processor.vendor
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        owner = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{map_index}"
        try_number = int(getattr(ti, "try_number", 1) or 1)
        manifest_name = manifest_object_name(
            spec.internal_prefix, ti.dag_id, ti.run_id, ti.task_id, map_index, try_number
        )
        earlier = _earlier_tries(job, manifest_name, try_number)
        max_credits = _left_after_earlier_tries(job, max_credits, earlier)
        if plan.total == 0:
            log.info(
                "Nothing to do: no source objects under gs://%s/%s match the filters",
                spec.source_bucket,
                spec.source_prefix,
            )

        def store_part(number: int, data: bytes) -> None:
            self._store_manifest(job, manifest_part_name(manifest_name, number), data, f"{owner}:{number}")

        with ManifestWriter(
            store_part,
            every_rows=int(self.manifest_checkpoint_rows),
            every_seconds=float(self.manifest_checkpoint_seconds),
        ) as manifest:
            runner = self._runner = BatchRunner(
                job.storage,
                job.processor,
                plan,
                manifest,
                max_concurrency=int(self.max_concurrency),
                max_images=max_images,
                max_credits=max_credits,
                on_error=self.on_error,
                max_failure_rate=float(self.max_failure_rate),
                writer_id=owner,
                claims=ClaimStore(
                    job.storage,
                    spec.destination_bucket,
                    spec.internal_prefix,
                    owner,
                    lease_seconds=claim_lease,
                    holds=holds,
                ),
                progress_every_seconds=float(self.progress_interval),
                drain_grace=float(self.drain_grace),
                accounts=job.chain,
            )
            try:
                interrupt = run_batch(runner, cleanup=job.aclose_hooks)
            except Exception as exc:  # a defect in the engine: keep the record, then fail
                self._keep_record(context, job, manifest_name, manifest, strict=False)
                raise AirflowException(f"{vendor}: the batch stopped unexpectedly: {exc!r}") from exc
            strict = interrupt is None and runner.result.interrupted is None
            summary = self._keep_record(context, job, manifest_name, manifest, strict=strict)
            announced = earlier and self.outlets  # the event counts every try's rows (_announce)
            tries = [*earlier, (summary["manifest_uri"], manifest.getvalue())] if announced else []
        result = runner.result
        if interrupt is not None:
            raise interrupt
        if result.interrupted is not None:  # terminated through on_kill: drained, record kept
            raise AirflowException(
                f"{vendor}: {result.halt.message if result.halt else result.interrupted}; "
                f"{result.counts['done']} image(s) done, {result.counts['pending']} pending "
                f"(a retry skips what is done). Manifest: {summary['manifest_uri']}"
            )
        self._verdict(context, vendor, result, summary)
        self._announce(context, job, summary, tries)
        return summary

    @staticmethod
    def _shard_budget(job: BucketJob, max_credits: Decimal | None) -> Decimal | None:
        """
        The task's ``max_credits``: on a shard, the smaller of its own and the shard's share of the run's
        (each account's budget was shared out when the chain was built; docs/pipeline.md, "5. Shards").

        :param job: the prepared job.
        :param max_credits: the task's own ``max_credits``.
        """
        if job.shard is None:
            return max_credits
        max_credits = job.shard.credits_within(max_credits)
        accounts = job.chain.accounts if job.chain is not None else ()
        budgets = [f"{a.conn_id} {a.budget}" for a in accounts if a.budget is not None]
        log.info(
            "Shard %d of %d: %d billable image(s); max_credits %s, max_credits_per_account %s (the smaller "
            "of this task's and the shard's share of the run's)",
            job.shard.shard + 1,
            job.shard.shards,
            job.shard.images,
            "none" if max_credits is None else max_credits,
            ", ".join(budgets) or "none",
        )
        return max_credits

    def on_kill(self) -> None:
        """SIGTERM: drain the batch (stop submitting, let in-flight calls store their billed results)."""
        if self._runner is not None:
            self._runner.request_stop("terminated", "the task was terminated (SIGTERM)")

    @staticmethod
    def _store_manifest(job: BucketJob, name: str, data: bytes, token: str) -> None:
        job.storage.write(
            job.spec.destination_bucket,
            name,
            data,
            content_type=JSON_LINES_CONTENT_TYPE,
            idempotency_token=f"manifest:{token}",
        )

    def _keep_record(
        self, context: Context, job: BucketJob, name: str, manifest: ManifestWriter, *, strict: bool
    ) -> dict[str, Any]:
        """Store the final manifest (unless ``strict``, a failed store is only logged); push ``summary``."""
        assert self._runner is not None
        manifest_uri = f"gs://{job.spec.destination_bucket}/{name}"
        try:
            self._store_manifest(job, name, manifest.getvalue(), name)
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
        summary = _summary(job, self._runner, manifest_uri)
        table = summary_table({key: summary[key] for key in _TABLE_KEYS})
        log.info("Batch summary (%s):\n%s", job.processor.vendor, table)
        for holder in summary["claims_elsewhere"]:
            log.warning(
                "%(images)d image(s) left pending: another run holds their claims: %(holder)s (lease expires "
                "%(lease_expires)s). That run is processing them; if it died, they can be processed once the "
                "lease expires.",
                holder,
            )
        try:
            context["ti"].xcom_push(key="summary", value=summary)
        except Exception as exc:  # a terminated task may no longer push; the manifest has the record
            log.warning("Could not push the summary XCom: %s", exc)
        return summary

    def _verdict(self, context: Context, vendor: str, result: BatchResult, summary: dict[str, Any]) -> None:
        halt, counts, manifest_uri = result.halt, result.counts, summary["manifest_uri"]
        if halt is not None:
            context["ti"].xcom_push(key="halt", value=halt.as_dict())
            if halt.fatal or halt.reason == "failure_rate":
                available = "unknown" if halt.available is None else str(halt.available)
                error = AirflowFailException if halt.fatal else AirflowException
                done = result.billable_counts["done"]
                concerns = halt.vendor if halt.conn_id is None else f"{halt.vendor} ({halt.conn_id})"
                raise error(  # the halt names the account it concerns (after failover, not the primary)
                    f"{concerns}: {halt.message}. Stopped after {done} of {result.billable} "
                    f"billable images; {halt.remaining_images} image(s) remain pending "
                    f"(need about {halt.needed} credits; available: {available}){_held(result)}. "
                    f"Finished images are skipped on rerun. Manifest: {manifest_uri}"
                )
            log.warning(
                "Stopped early (%s): %s; %d image(s) left pending",
                halt.reason,
                halt.message,
                halt.remaining_images,
            )
        bad = counts["failed"] + counts["rejected"]
        if self.on_error == "fail_at_end" and (bad or result.bad_renditions):
            failed = result.bad_renditions
            renditions = f" ({failed} rendition(s) non-compliant or failed)" if failed else ""
            raise AirflowException(
                f"{vendor}: {counts['failed']} image(s) failed and {counts['rejected']} were rejected "
                f"of {summary['total']}{renditions}; see the manifest {manifest_uri}"
            )
        sent = result.sent.total()  # images sent to the vendor: what the run's halt judged too
        sent_bad = sent - result.sent["done"]
        if self.on_error == "fail_rate" and sent and sent_bad / sent > float(self.max_failure_rate):
            raise AirflowException(
                f"{vendor}: failure rate {sent_bad / sent:.0%} is over max_failure_rate "
                f"{float(self.max_failure_rate):.0%} ({sent_bad} of {sent} images sent to the vendor); "
                f"see the manifest {manifest_uri}"
            )
        self._pending_verdict(vendor, result, summary)

    def _pending_verdict(self, vendor: str, result: BatchResult, summary: dict[str, Any]) -> None:
        """
        Fail the task (retryably) for images left pending without a limit the user set: held by another
        run's claims (unless ``on_pending="warn"``), or whose claims' leases ran short before a call: in an
        outage (``outage``), or used up by calls on an account that then refused them (``lease_short``;
        docs/pipeline.md, "Failover").
        """
        manifest_uri = summary["manifest_uri"]
        held = summary["claims_elsewhere"]
        if held and self.on_pending == "fail":
            holders = "; ".join(
                f"{h['images']} held by {h['holder']} until {h['lease_expires']}" for h in held
            )
            raise AirflowException(
                f"{vendor}: {sum(h['images'] for h in held)} image(s) left pending because another "
                f"run holds their claims ({holders}); nothing was paid for them here. A retry after the "
                f"holder finishes skips what it wrote (on_pending='warn' accepts this as success). "
                f"Manifest: {manifest_uri}"
            )
        counts = {code: result.pending_reasons.get(code, 0) for code in _LEASE_RAN_SHORT}
        if any(counts.values()):
            why = "; ".join(f"{count} {_LEASE_RAN_SHORT[code]}" for code, count in counts.items() if count)
            raise AirflowException(
                f"{vendor}: {sum(counts.values())} image(s) left pending because their claims' leases ran "
                f"short before a call: {why}. They were not sent (again) and their claims were released; "
                f"their rows say what earlier calls may have cost. A retry sends them. "
                f"Manifest: {manifest_uri}"
            )

    def _announce(
        self, context: Context, job: BucketJob, summary: dict[str, Any], tries: list[tuple[str, bytes]]
    ) -> None:
        """
        Put the counts of the task instance's tries on the asset event of an outlet naming the destination
        (if any): the counts, the credits and the manifests of every try, so that what an earlier try
        made (this try's rows call it ``skipped``) is announced too (docs/arrivals.md).

        :param summary: this try's summary.
        :param tries: ``(URI, bytes)`` of every try's manifest, this one's last; empty on a first try
            (or when earlier tries left none): this try's summary says it all.
        """
        destination = f"gs://{job.spec.destination_bucket}/{job.spec.destination_prefix}".rstrip("/")
        extra: dict[str, Any] = {key: summary[key] for key in STATUSES}
        extra.update(credits=summary["credits_spent"])
        if tries:
            every_try = summarise_manifests(tries)
            extra.update({key: every_try.counts[key] for key in STATUSES})
            extra.update(credits=str(every_try.credits_spent))
        extra.update(
            manifest_uri=summary["manifest_uri"],
            manifest_uris=[uri for uri, _ in tries] or [summary["manifest_uri"]],
        )
        for outlet in self.outlets:
            if getattr(outlet, "uri", "").rstrip("/") == destination:
                context["outlet_events"][outlet].extra.update(extra)

    def lineage_datasets(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """
        Every dataset the task reads and writes, as ``(namespace, name)`` pairs: ``("gs://bucket", prefix)``;
        with renditions the masters and every rendition folder (docs/pipeline.md, "Progress and lineage").
        """
        spec = self._spec()
        sources = (f"gs://{spec.source_bucket}", spec.source_prefix or "/")
        if self.single_output:
            return [sources], [(f"gs://{spec.destination_bucket}", spec.destination_prefix or "/")]
        layout = self.layout_of(spec, self.parsed_renditions())
        masters = (f"gs://{layout.masters_bucket}", layout.masters_prefix or "/")
        folders = [(f"gs://{layout.destination_bucket}", layout.folder(r)) for r in layout.renditions]
        if masters == sources:
            return [sources], folders
        return [sources, masters], [masters, *folders]

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """
        OpenLineage inputs and outputs: :meth:`lineage_datasets`.

        :param task_instance: the finished task instance.
        """
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        inputs, outputs = self.lineage_datasets()
        return OperatorLineage(
            inputs=[Dataset(namespace=namespace, name=name) for namespace, name in inputs],
            outputs=[Dataset(namespace=namespace, name=name) for namespace, name in outputs],
        )


#: What used an image's claim lease up before a call, per pending code (the bucket task's failure says).
_LEASE_RAN_SHORT = {
    "outage": "in an outage (every account's circuit breaker open, or failing calls on the account that "
    "handed them on)",
    LEASE_SHORT: "after calls on an account that then refused them (out of credits, key refused) or could "
    "not take them had used the lease up",
}


def _held(result: BatchResult) -> str:
    """What a halt's message adds for the pending images another run's claims hold (not the halt's)."""
    held = result.pending_reasons["claimed_elsewhere"]
    return f"; {held} more pending are held by another run's claims (that run pays for them)" if held else ""


def _earlier_tries(job: BucketJob, manifest_name: str, try_number: int) -> list[tuple[str, bytes]]:
    """
    ``(URI, bytes)`` of the manifests the earlier tries of this task instance stored: each try's final
    manifest, or its checkpoint parts when it stored none (:func:`manifests_to_read`). A first try has none.

    :param job: the prepared job (its storage and destination bucket hold the manifests).
    :param manifest_name: this try's manifest name (``…/<task>/try-<n>.jsonl``).
    :param try_number: this try's number.
    :raises AirflowException: they cannot be read: the budgets they used are unknown, and a try is never
        run with the whole budget again (the next try reads them again).
    """
    if try_number <= 1:
        return []
    bucket, folder = job.spec.destination_bucket, manifest_name.rpartition("/")[0] + "/"
    finals = {f"{folder}try-{number}.jsonl" for number in range(1, try_number)}
    try:
        listed = [info.name for info in job.storage.list_objects(bucket, folder)]
        names = [name for name in manifests_to_read(listed) if final_manifest_name(name) in finals]
        return [(f"gs://{bucket}/{name}", job.storage.read(bucket, name)) for name in sorted(names)]
    except StorageError as exc:
        raise AirflowException(
            f"{job.processor.vendor}: try {try_number} cannot read the manifests of this task's earlier "
            f"tries under gs://{bucket}/{folder}, so it cannot tell what of the budgets they used; it sends "
            f"nothing rather than spend the whole budget again (a retry reads them again): {exc}"
        ) from exc


def _left_after_earlier_tries(
    job: BucketJob, max_credits: Decimal | None, earlier: list[tuple[str, bytes]]
) -> Decimal | None:
    """
    The budgets hold across a task's retries: take what the earlier tries put at risk (charged, and
    their lost replies at the unit cost) off ``max_credits`` and off each account's own budget (in
    place), never below 0 (docs/pipeline.md, "Budgets count money at risk"). Returns ``max_credits``'s rest.

    :param job: the prepared job (its accounts' budgets are the task's, or its shard's share).
    :param max_credits: this task's ``max_credits`` (its shard's share on a shard).
    :param earlier: the earlier tries' manifests (:func:`_earlier_tries`).
    :raises AirflowException: a manifest cannot be read (the budgets they used are unknown).
    """
    if not earlier:
        return max_credits
    try:
        spent = summarise_manifests(earlier)
    except (ValueError, KeyError, TypeError) as exc:  # a damaged manifest: what it spent is unknown
        raise AirflowException(
            f"{job.processor.vendor}: the manifests of this task's earlier tries cannot be read, so what "
            f"of the budgets they used is unknown; nothing is sent: {type(exc).__name__}: {exc}"
        ) from exc
    accounts = {account.conn_id: account for account in (job.chain.accounts if job.chain else ())}
    for conn_id, charge in spent.max_charge.items():  # the unit cost as if one try had gone on
        if conn_id in accounts:
            accounts[conn_id].max_seen_charge = max(accounts[conn_id].max_seen_charge, charge)
    default = max((a.unit_cost() for a in accounts.values()), default=job.processor.cost_per_image)
    at_risk, attributed = spent.credits_spent, 0
    for conn_id, entry in spent.accounts.items():
        account = accounts.get(conn_id)
        lost = int(entry["possibly_charged"])
        priced = (account.unit_cost() if account is not None else default) * lost
        at_risk, attributed = at_risk + priced, attributed + lost
        if account is not None and account.budget is not None:
            account.budget = max(Decimal(0), account.budget - entry["credits_spent"] - priced)
    at_risk += default * max(spent.possibly_charged - attributed, 0)
    left = None if max_credits is None else max(Decimal(0), max_credits - at_risk)
    budgets = [f"{a.conn_id} {a.budget}" for a in accounts.values() if a.budget is not None]
    log.info(
        "Earlier tries of this task instance (%s) charged %s credits and lost %d reply(s) (possibly "
        "charged): %s credits at risk. The budgets hold across retries: max_credits %s left, "
        "max_credits_per_account %s left",
        ", ".join(uri.rpartition("/")[2] for uri, _ in earlier),
        spent.credits_spent,
        spent.possibly_charged,
        at_risk,
        "none" if left is None else left,
        ", ".join(budgets) or "none",
    )
    return left


def _summary(job: BucketJob, runner: BatchRunner, manifest_uri: str) -> dict[str, Any]:
    """The task's summary: the XCom ``return_value`` and ``summary`` (fields: docs/pipeline.md)."""
    result = runner.result
    counts = result.counts
    return {
        "vendor": job.processor.vendor,
        "operation": job.processor.operation,
        "total": sum(counts.values()),
        **{status: counts[status] for status in STATUSES},
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
        **_rendition_summary(job, result),
        **_account_summary(job, runner),
    }


def _account_summary(job: BucketJob, runner: BatchRunner) -> dict[str, Any]:
    """Per vendor account (a render-only job has none): conn_id, vendor, images, credits, final state."""
    if job.chain is None:
        return {}
    accounts = runner.chain.summary()
    for account in accounts:
        log.info(
            "Account %(conn_id)s (%(vendor)s): %(done)d done of %(images)d image(s), %(credits_spent)s "
            "credits, %(state)s, breaker %(breaker)s (opened %(breaker_opened)d time(s))",
            account,
        )
    return {"accounts": accounts}


def _rendition_summary(job: BucketJob, result: BatchResult) -> dict[str, Any]:
    """With renditions: the masters' prefix and, per rendition, sources per status (docs/pipeline.md)."""
    if job.renditions is None:
        return {}
    return {
        "masters_prefix": f"gs://{job.spec.destination_bucket}/{job.spec.output_prefix}",
        "renditions": {
            rendition.name: {
                status: result.renditions.get(rendition.name, Counter())[status]
                for status in RENDITION_STATUSES
            }
            for rendition in job.renditions.renditions
        },
    }


class RemoveBackgroundOperator(RemovalParameters, BucketImageOperator):
    """
    Remove the backgrounds of the images under a GCS prefix (or of ``source_objects``) with any vendor.

    With ``renditions``, each source's one vendor call makes a master (the lossless cut-out, under
    ``masters_prefix``) and every rendition is rendered from it locally (docs/pipeline.md, "Renditions").
    Parameters: :class:`RemovalParameters` (image), :class:`BucketJobOperator` (job and renditions) and
    :class:`BucketImageOperator` (batch).

    :param kwargs: the parameters of the classes above.
    """


class GenerateBackgroundOperator(GenerationParameters, BucketImageOperator):
    """
    Generate new backgrounds (Pixelcut) behind the subjects of the images under a GCS prefix.

    Outputs are 1024x1024 JPEGs named like their sources with a ``.jpg`` extension. Parameters:
    :class:`GenerationParameters` (scene), :class:`BucketJobOperator` (job), :class:`BucketImageOperator`.
    """
