"""The batch engine: claim -> read -> vendor call -> store by ``max_concurrency`` workers, one recorder.

The call stage and failover are :mod:`.failover`, the budgets :mod:`.budgets`, the halts and the
balance read after one :mod:`.halts`. The money rules (budgets count money at risk, halts, draining)
are in docs/pipeline.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from airflow_provider_bgremoval._moved import moved_attribute, moved_names
from airflow_provider_bgremoval.exceptions import InputRejectedError, safe_excerpt
from airflow_provider_bgremoval.imaging import read_header
from airflow_provider_bgremoval.pipeline.accounts import Account, AccountChain
from airflow_provider_bgremoval.pipeline.budgets import Budgets
from airflow_provider_bgremoval.pipeline.claims import ClaimHolder, ClaimStore
from airflow_provider_bgremoval.pipeline.failover import CallStage
from airflow_provider_bgremoval.pipeline.flight import Flight
from airflow_provider_bgremoval.pipeline.halts import HaltInfo, Halts
from airflow_provider_bgremoval.pipeline.manifest import ManifestRow, ManifestWriter
from airflow_provider_bgremoval.pipeline.planning import (
    META_CREDITS,
    META_OPERATION,
    META_OPTIONS_HASH,
    META_REQUEST_ID,
    META_SOURCE,
    META_SOURCE_GENERATION,
    META_VENDOR,
    META_WRITER,
    NONCOMPLIANT,
    BatchPlan,
    WorkItem,
    is_finished,
    made_by_vendor,
)
from airflow_provider_bgremoval.pipeline.processors import ImageProcessor
from airflow_provider_bgremoval.pipeline.progress import ProgressReporter
from airflow_provider_bgremoval.pipeline.rendering import (
    BAD_RENDITION_STATUSES,
    MASTER_MAX_BYTES,
    RenditionStage,
    recorded_source,
    render_verdict,
)
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.storage.exceptions import StorageError, WriteConflictError, gs_uri
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo, is_our_write

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Names that moved out of this module with the split by job, kept for one release.
__getattr__ = moved_names(
    __name__, {"airflow_provider_bgremoval.pipeline.accounts": "FAILOVER_METRIC_PREFIX"}
)

ON_ERROR_CHOICES: tuple[str, ...] = ("fail_at_end", "fail_rate", "continue")
#: Finished images needed before the failure-rate rule can stop a batch.
FAILURE_RATE_MIN_SAMPLE = 10
#: Sample output URIs kept for XCom.
SAMPLE_OUTPUTS = 5
#: Seconds in-flight calls get to finish after a timeout or a termination (SIGKILL follows in 5 s).
DEFAULT_DRAIN_GRACE = 3.0

#: The pending code of an image whose calls on an account that then refused it (out of credits, key
#: refused, its limits) used its claim lease up: not sent to the next account (docs/pipeline.md, "Failover").
LEASE_SHORT = "lease_short"

#: How Airflow's interrupts are named in manifests and summaries.
_INTERRUPT_CODES = {
    "AirflowTaskTimeout": ("execution_timeout", "the task hit its execution_timeout"),
    "AirflowTaskTerminated": ("terminated", "the task was terminated"),
    "KeyboardInterrupt": ("interrupted", "the task was interrupted (SIGINT)"),
    "SystemExit": ("terminated", "the task process is exiting"),
}


@dataclass
class BatchResult:
    """
    The outcome of :meth:`BatchRunner.run` (also kept up to date while it runs).

    :param counts: sources per final status.
    :param credits_spent: credits known to be charged (vendor-reported, or from the cost table).
    :param credits_for_failed: the part of ``credits_spent`` for images without an output from this task.
    :param credits_estimated: True when some of ``credits_spent`` is an estimate.
    :param possibly_charged: replies lost after a sent request (the vendor may have billed them).
    :param sample_outputs: a few output URIs.
    :param halt: why the batch stopped early, if it did.
    :param interrupted: the interrupt code (``execution_timeout``, ``terminated``…) that drained the batch.
    :param claims_elsewhere: live claims of other runs that left images pending, per holder.
    :param pending_reasons: pending images per reason code (``max_credits``, ``claimed_elsewhere``…).
    :param duration_s: wall time of the run.
    :param billable: images that were planned as billable.
    :param renditions: per rendition name, sources per rendition status (``done``, ``replaced``…).
    :param render_only: the render-only rows (no vendor call) per final status; included in ``counts``.
    :param sent: the images sent to the vendor that ended ``done``, ``failed`` or ``rejected``, per status
        (what the failure rate of ``on_error="fail_rate"`` judges, during the run and at its end).
    """

    counts: Counter[str] = field(default_factory=Counter)
    credits_spent: Decimal = Decimal(0)
    credits_for_failed: Decimal = Decimal(0)
    credits_estimated: bool = False
    possibly_charged: int = 0
    sample_outputs: list[str] = field(default_factory=list)
    halt: HaltInfo | None = None
    interrupted: str | None = None
    claims_elsewhere: dict[str, tuple[ClaimHolder, int]] = field(default_factory=dict)
    pending_reasons: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    billable: int = 0
    renditions: dict[str, Counter[str]] = field(default_factory=dict)
    render_only: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)

    @property
    def billable_counts(self) -> Counter[str]:
        """Sources per final status without the render-only rows (what the failure rate judges)."""
        return self.counts - self.render_only

    @property
    def bad_renditions(self) -> int:
        """Renditions rejected (non-compliant) or failed."""
        return sum(counts[status] for counts in self.renditions.values() for status in BAD_RENDITION_STATUSES)

    @property
    def credits_for_outputs(self) -> Decimal:
        """Credits charged for the outputs this task wrote."""
        return self.credits_spent - self.credits_for_failed

    def note_claim_elsewhere(self, holder: ClaimHolder) -> None:
        """Count one image left pending because ``holder`` holds its claim."""
        known, count = self.claims_elsewhere.get(holder.owner, (holder, 0))
        latest = holder if holder.expires >= known.expires else known
        self.claims_elsewhere[holder.owner] = (latest, count + 1)

    def claims_elsewhere_summary(self) -> list[dict[str, Any]]:
        """Primitive form of :attr:`claims_elsewhere`: holder, lease expiry and image count."""
        return [
            {"holder": owner, "lease_expires": holder.expires_iso, "images": count}
            for owner, (holder, count) in sorted(self.claims_elsewhere.items())
        ]


@dataclass(eq=False, repr=False)
class BatchRunner:
    """
    Runs the billable part of a :class:`BatchPlan`.

    :param storage: the storage layer.
    :param processor: the vendor operation (of the primary account, with ``accounts``).
    :param plan: the plan (its settled rows are written to the manifest as they are).
    :param manifest: where rows go (and how often they are checkpointed).
    :param max_concurrency: images in flight at once.
    :param max_images: send at most this many images to the vendor (``None``: no limit). An image in
        flight holds its place; one settled without a call (refused locally, its source gone, claimed
        elsewhere, found done) gives it back, so the cap counts the images that reach a vendor.
    :param max_credits: never put more than this many credits at risk (``None``: no limit).
    :param on_error: ``fail_at_end``, ``fail_rate`` or ``continue`` (only ``fail_rate`` stops the run early).
    :param max_failure_rate: failure rate above which ``fail_rate`` stops the batch.
    :param writer_id: identity recorded on outputs and claims.
    :param claims: claim store (``None`` disables claims).
    :param progress_every_seconds: progress log interval.
    :param drain_grace: seconds in-flight vendor calls get to finish after :meth:`request_stop`.
    :param master_max_bytes: largest master a render-only item reads (larger: failed, not read whole).
    :param accounts: the failover chain (``None``: ``processor`` alone, docs/pipeline.md "Failover").
    """

    storage: GcsStorage
    processor: ImageProcessor
    plan: BatchPlan
    manifest: ManifestWriter
    _: KW_ONLY
    max_concurrency: int = 16
    max_images: int | None = None
    max_credits: Decimal | None = None
    on_error: str = "fail_at_end"
    max_failure_rate: float = 0.1
    writer_id: str = "bgremoval"
    claims: ClaimStore | None = None
    progress_every_seconds: float = 30.0
    drain_grace: float = DEFAULT_DRAIN_GRACE
    master_max_bytes: int = MASTER_MAX_BYTES
    accounts: AccountChain | None = None

    #: Deprecated: ``runner.budgets.credits_at_risk`` (kept for one release).
    credits_at_risk = moved_attribute("BatchRunner.credits_at_risk", "budgets.credits_at_risk")

    def __post_init__(self) -> None:  # the parameters are validated by the operator
        self.result = BatchResult(billable=len(self.plan.items))
        self.chain = self.accounts or AccountChain.single(self.processor)
        self.identity = self.chain.identity
        self._render_items: Iterator[WorkItem] = iter(self.plan.render)
        self._bucket = self.plan.spec.destination_bucket
        self._stage = RenditionStage(self.storage, self._bucket, self.writer_id, self.plan.spec.overwrite)
        self._flights: set[Flight] = set()
        self._output_unknown: set[str] = set()  # destinations a failed write may still have stored
        self.halts = Halts(self.chain)
        self.budgets = Budgets(self.chain, self._flights, self.halts, self.max_credits)
        self.calls = CallStage(self.chain, self.budgets, self.halts, self._settle_from_calls, self.claims)
        self._submitted = 0  # billable items handed to the workers: plan.items[:_submitted]
        self._unsent = 0  # of them, the ones settled without a vendor call (their max_images place is free)
        self._finished = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.progress = ProgressReporter(
            len(self.plan.items) + len(self.plan.render),
            "->".join(dict.fromkeys(account.vendor for account in self.chain.accounts)),  # pixian->poof
            every_seconds=self.progress_every_seconds,
        )

    def request_stop(self, code: str, message: str) -> None:
        """
        Stop submitting and drain: in-flight calls get ``drain_grace`` seconds (thread-safe).

        :param code: the reason code recorded on pending rows (``execution_timeout``, ``terminated``…).
        :param message: human explanation.
        """
        self.halts.stop = self.halts.stop or (code, message)
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: nothing left to drain
                self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self.halts.stop is None or self._grace_timer is not None:
            return
        code, message = self.halts.stop
        self.result.interrupted = code
        self.halts.record(code, message)
        log.warning(
            "%s: no new images are sent; %d call(s) in flight get %.1f s to finish and store their results",
            message,
            len(self._flights),
            self.drain_grace,
        )
        assert self._loop is not None
        self._grace_timer = self._loop.call_later(self.drain_grace, self._abandon_unanswered)

    def _abandon_unanswered(self) -> None:
        """
        The grace is over: give up unanswered vendor calls (results in hand are kept). An image already
        settled (its call failed, or it was left pending) is not cancelled: it is only releasing its claim.
        """
        for flight in list(self._flights):
            unanswered = flight.stage == "call" and not flight.recorded and not flight.stats.billed_reply
            if unanswered and flight.task is not None:
                flight.abandoned = True
                flight.task.cancel()

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _row(
        self,
        source: ObjectInfo,
        destination: str | None,
        status: str,
        render_only: bool = False,
        account: Account | None = None,
        vendor: str | None = None,
        **fields: Any,
    ) -> None:
        """One manifest row; its vendor: ``vendor`` (the maker of an existing output), else the account's."""
        if account is not None:
            account.counts[status] += 1
            fields["account"] = account.conn_id
        for entry in fields.get("renditions") or ():
            self.result.renditions.setdefault(entry["name"], Counter())[entry["status"]] += 1
        row = ManifestRow(
            source=source.uri,
            source_generation=source.generation or None,
            destination=destination and gs_uri(self._bucket, destination),
            status=status,
            vendor=vendor or (account or self.chain.primary).vendor,
            operation=self.processor.operation,
            bytes_in=source.size or None,
            **fields,
        )
        self.manifest.add(row)
        self.result.counts[status] += 1
        if render_only:
            self.result.render_only[status] += 1
        if status == "pending":
            self.result.pending_reasons[fields.get("error_code") or "pending"] += 1
        self._checkpoint_if_due()

    def _next_item(self) -> WorkItem | None:
        """The next billable item the budgets allow, else the next render-only one (free: never halted)."""
        if self.halts.stop is not None:
            return None
        billable = self._next_billable() if self.halts.halt is None else None
        return billable if billable is not None else next(self._render_items, None)

    def _next_billable(self) -> WorkItem | None:
        """
        The next billable item, if the budgets allow it. A budget is only found reached (a halt, an
        account leaving the chain) while an item is waiting: one used up by the last item halts nothing.
        """
        if self._submitted >= len(self.plan.items):
            return None
        if self._max_images_reached():
            return None
        account = self.chain.preferred()
        while account is not None and not self.budgets.fits(account):  # its budget is spent: it leaves
            account = self.chain.preferred()
        if account is None:
            self.halts.exhaust(self.chain)
            return None
        if not self.budgets.admits_next(self.result.credits_spent, self.result.possibly_charged):
            return None
        self._submitted += 1
        return self.plan.items[self._submitted - 1]

    def _max_images_reached(self) -> bool:
        """
        ``max_images`` has no place left: the images sent and those in flight (each may still be sent)
        fill it. It halts once none is in flight: until then one may be settled unsent and free its place
        (its worker then takes the next item; the last one to finish finds the halt).
        """
        if self.max_images is None or self._submitted - self._unsent < self.max_images:
            return False
        if not self.budgets.billable_flights():
            self.halts.record("max_images", f"max_images={self.max_images} reached")
        return True

    @staticmethod
    def _sent(flight: Flight, status: str) -> bool:
        """
        Whether a settled image may have reached a vendor (what ``max_images`` counts): it was given to an
        account, unless that refused it before any attempt (``rejected``: the hook's own input checks).
        """
        stats, local = flight.stats, status == "rejected"
        made = stats.attempts or stats.possibly_charged or stats.billed_reply or flight.result is not None
        return flight.account is not None and bool(made or not local)

    @staticmethod
    def _credits_of(account: Account, charged: Decimal | None) -> tuple[Decimal, bool]:
        if charged is not None:
            account.max_seen_charge = max(account.max_seen_charge, charged)
            return charged, False
        return account.processor.cost_per_image, True

    def _metadata(
        self, item: WorkItem, account: Account, request_id: str | None, credits: Decimal
    ) -> dict[str, str]:
        processor = account.processor
        return {
            META_SOURCE: item.source.uri,
            META_SOURCE_GENERATION: str(item.source.generation),
            META_OPTIONS_HASH: processor.fingerprint,
            META_VENDOR: processor.vendor,
            META_OPERATION: processor.operation,
            META_CREDITS: str(credits),
            META_WRITER: self.writer_id,
            **({META_REQUEST_ID: request_id} if request_id else {}),
        }

    def _check_failure_rate(self) -> None:
        finished = self.result.sent.total()
        if self.on_error != "fail_rate" or finished < FAILURE_RATE_MIN_SAMPLE:
            return
        bad = finished - self.result.sent["done"]
        rate = bad / finished
        if rate > self.max_failure_rate:
            self.halts.record(
                "failure_rate",
                f"{bad} of {finished} images sent to the vendor failed "
                f"({rate:.0%} > max_failure_rate {self.max_failure_rate:.0%})",
            )

    def _settle(
        self,
        flight: Flight,
        status: str,
        code: str | None = None,
        message: str | None = None,
        *,
        request_id: str | None = None,
        **fields: Any,
    ) -> None:
        """The image's one row with its cost."""
        if flight.recorded:
            log.warning(
                "%s was already recorded; ignoring a second outcome (%s)", flight.item.source.uri, status
            )
            return
        flight.recorded = True
        if not flight.item.render_only and not self._sent(flight, status):
            self._unsent += 1  # its max_images place is free again
        self.calls.report(flight, "neutral")  # a probe that ended without a verdict (stop, cancel, defect)
        self._count_finished(flight, status)
        stats, result, account = flight.stats, flight.result, flight.account
        lost = stats.possibly_charged
        if flight.abandoned and stats.attempt_in_flight:
            lost += 1  # the request was out when the call was given up: the vendor may bill it
        money: dict[str, Any] = {"possibly_charged": lost, "attempts": stats.attempts}
        if flight.handoffs:
            money["handoffs"] = flight.handoffs
        if account is not None:
            account.possibly_charged += lost - flight.lost_base
        if result is not None or stats.billed_reply:
            account = account or self.chain.primary
            credits, estimated = self._credits_of(
                account, result.credits_charged if result is not None else stats.credits_charged
            )
            account.credits_spent += credits
            self.result.credits_spent += credits
            self.result.credits_estimated |= estimated
            if status != "done":
                self.result.credits_for_failed += credits
            money.update(credits=str(credits), credits_estimated=estimated)
        self.result.possibly_charged += lost
        item = flight.item
        self._row(
            item.source,
            _destination_of(item),
            status,
            item.render_only,
            account,
            error_code=code,
            error_message=message,
            request_id=request_id if request_id is not None else (result.request_id if result else None),
            duration_ms=int((time.monotonic() - flight.started) * 1000),
            **money,
            **fields,
        )

    def _settle_from_calls(
        self, flight: Flight, status: str, code: str | None = None, message: str | None = None, **fields: Any
    ) -> None:
        """
        The call stage's recorder: :meth:`_settle`, with an image whose claim lease ran short before its
        next call (pending ``outage``) coded for what used the lease up. An image that had not waited for
        a probe (still at its ``call`` stage) lost it to its calls on an account that then refused it or
        could not take it: ``lease_short``; after an outage hand-off, or a wait, it stays ``outage``
        (no account was in an outage in the first case: its task failure said every one stayed in one).
        """
        if status == "pending" and code == "outage" and flight.stage == "call" and flight.handoffs:
            code = "outage" if flight.handoffs[-1]["reason"] == "outage" else LEASE_SHORT
        self._settle(flight, status, code, message, **fields)

    def _count_finished(self, flight: Flight, status: str | None = None) -> None:
        """One more finished image; one sent to the vendor (it has an account) counts in ``result.sent``."""
        self._finished += 1
        if flight.account is not None and status in ("done", "failed", "rejected"):
            self.result.sent[status] += 1

    def _settle_unexpected(self, flight: Flight, exc: Exception) -> None:
        """Anything our code did not foresee fails this image alone, with the charges it incurred."""
        log.warning(
            "Unexpected %s while processing %s (%s stage); the image is failed, the batch goes on",
            type(exc).__name__,
            flight.item.source.uri,
            flight.stage,
            exc_info=exc,
        )
        if flight.recorded:
            return
        paid = (
            "; the vendor call was billed" if flight.result is not None or flight.stats.billed_reply else ""
        )
        details = safe_excerpt(str(exc)) or "no details"
        message = f"unexpected {type(exc).__name__} during {flight.stage}: {details}{paid}"
        self._settle(flight, "failed", "internal_error", message)

    async def _fly(self, flight: Flight) -> None:
        try:
            if flight.item.render_only:
                await self._render_only(flight)
                return
            data = await self._claim_and_read(flight)
            if data is None or self._settled_by_size(flight, data):
                return
            flight.result = await self.calls.call(flight, data)
            del data
            if flight.result is not None:
                await self._store(flight, flight.result)
        except asyncio.CancelledError:
            if not flight.abandoned:
                raise
            if flight.recorded:  # settled before the cancellation reached it: its row stands
                return
            code, message = self.halts.stop or ("interrupted", "the batch was stopped")
            grace = f"the vendor had not answered within the {self.drain_grace:g} s grace"
            message = f"{message}; {grace}, so the call was abandoned (it may have been billed)"
            self._settle(flight, "pending", code, message)
        except Exception as exc:  # one image's failure never takes the batch down
            self._settle_unexpected(flight, exc)
        finally:
            if flight.claimed and not flight.output_exists:
                await self._release(flight)

    async def _claim_and_read(self, flight: Flight) -> bytes | None:
        """
        Claim the output, then read the source: one thread hand-off for both (unless the claim was
        taken over, when the output is looked for first). ``None``: the image was settled.
        """
        item = flight.item
        if self.claims is None:
            return await self._read(flight, item.source)
        try:
            holder, data = await self._blocking(self._acquire_then_read, item)
        except StorageError as exc:  # nothing was paid: this image alone fails, the batch goes on
            message = f"could not claim the output before the vendor call (nothing paid): {exc}"
            self._settle(flight, "failed", type(exc).__name__, message)
            return None
        if holder is not None:
            self.result.note_claim_elsewhere(holder)
            message = f"another run is processing this output: {holder}"
            self._settle(flight, "pending", "claimed_elsewhere", message)
            return None
        flight.claimed = True
        if item.destination in self.claims.taken_over:
            # Taken over (an earlier try of this task instance, or a holder whose lease ran out): skip
            # the image when that holder stored its output, and never pay without knowing it did not.
            earlier = "an earlier try stored this output (not paid again)"
            if await self._skipped_after_takeover(flight, earlier):
                return None
            return await self._read(flight, item.source)
        return self._read_outcome(flight, data)

    async def _skipped_after_takeover(self, flight: Flight, message: str) -> bool:
        """
        Settle a taken-over image whose earlier holder stored its output (skipped), or whose output cannot
        be checked (failed, nothing paid: paying could buy that output a second time). The claim of an
        unchecked one is released as "output unknown", so that the next taker looks first too.
        """
        destination = flight.item.destination
        try:
            current = await self._blocking(self.storage.stat, self._bucket, destination)
        except StorageError as exc:
            self._output_unknown.add(destination)
            reason = f"could not check if the claim's last holder stored the output (nothing paid): {exc}"
            self._settle(flight, "failed", type(exc).__name__, reason)
            return True
        return self._skipped_if_finished(flight, current, "already_done", message)

    def _read_outcome(self, flight: Flight, data: bytes | Exception | None) -> bytes | None:
        """The bytes :meth:`_acquire_then_read` read, else ``None``: its read error failed the image."""
        flight.stage = "read"
        if not isinstance(data, Exception):
            return data
        if not isinstance(data, StorageError):
            raise data
        self._settle(flight, "failed", type(data).__name__, str(data))
        return None

    def _acquire_then_read(self, item: WorkItem) -> tuple[ClaimHolder | None, bytes | Exception | None]:
        """
        In an I/O thread: the claim, then (taken, not over another holder's) the source's pinned bytes.
        A claim error is raised; a read error is returned as the data (the claim is held: released later).
        """
        assert self.claims is not None
        holder = self.claims.acquire(item.destination, item.source.generation)
        if holder is not None or item.destination in self.claims.taken_over:
            return holder, None
        try:
            source = item.source
            return None, self.storage.read(source.bucket, source.name, generation=source.generation)
        except Exception as exc:
            return None, exc

    async def _read(
        self, flight: Flight, obj: ObjectInfo, max_bytes: int | None = None, why: str = "", **fields: Any
    ) -> bytes | None:
        """``obj``'s pinned bytes, else ``None``: the image was settled failed (``why`` leads the reason)."""
        flight.stage = "read"
        read = functools.partial(
            self.storage.read, obj.bucket, obj.name, generation=obj.generation, max_bytes=max_bytes
        )
        return await self._or_failed(flight, read, why, **fields)

    async def _or_failed(self, flight: Flight, fn: Callable[[], T], why: str, **fields: Any) -> T | None:
        """``fn()`` in a thread, else ``None``: its :class:`StorageError` settled the image failed."""
        try:
            return await self._blocking(fn)
        except StorageError as exc:
            self._settle(flight, "failed", type(exc).__name__, f"{why}{exc}", **fields)
            return None

    def _settled_by_size(self, flight: Flight, data: bytes) -> bool:
        """
        Every rendition is certain to be non-compliant from the source's size: settled as planning settles
        it (:meth:`.RenditionLayout.unreachable`), not sent; a plan kept unchecked has not judged its items.
        """
        layout, item = self.plan.layout, flight.item
        if layout is None or not item.renditions or not layout.judged_by_source_size:
            return False
        try:
            info = read_header(data, vendor=self.chain.primary.vendor)
        except InputRejectedError:
            return False  # not an image: the call stage's local checks reject it (free)
        found = layout.unreachable(self._bucket, item.renditions, (info.width, info.height))
        if found is None:
            return False
        message, facts = found
        self._settle(flight, "rejected", NONCOMPLIANT, message, renditions=facts)
        return True

    async def _store(self, flight: Flight, result: ImageResult) -> None:
        flight.stage = "store"
        item = flight.item
        written = await self._write_output(flight, result)
        if written is None:
            return
        flight.output_exists = True
        if len(self.result.sample_outputs) < SAMPLE_OUTPUTS:
            self.result.sample_outputs.append(gs_uri(self._bucket, item.destination))
        renditions: dict[str, Any] = {}
        if item.renditions:  # from the bytes in hand: the master is not read back
            flight.stage = "render"
            master = self._master_facts(written, "replaced" if item.replace_generation else "done")
            facts = await self._blocking(
                self._stage.run, result.content, written, item.source, item.renditions
            )
            renditions = {"master": master, "renditions": facts}
        self._settle(flight, "done", bytes_out=len(result.content), **renditions)

    async def _write_output(self, flight: Flight, result: ImageResult) -> ObjectInfo | None:
        """The stored output (create-only, or over the stale generation), else ``None``: settled."""
        item, account = flight.item, flight.account or self.chain.primary
        credits, _ = self._credits_of(account, result.credits_charged)
        token = f"{self.writer_id}:{item.source.generation}:{account.processor.fingerprint}"
        try:
            return await self._blocking(
                self.storage.write,
                self._bucket,
                item.destination,
                result.content,
                content_type=result.content_type,
                metadata=self._metadata(item, account, result.request_id, credits),
                if_generation_match=item.replace_generation or 0,
                idempotency_token=token,
            )
        except WriteConflictError:
            # Another run wrote first (its output is finished: skipped, the claim stays), or something
            # else is in the way (ours was not written: failed, the claim is released).
            if not await self._skipped_as_finished(
                flight, "done_concurrently", "another run wrote this output first"
            ):
                message = "the destination appeared during the run; not overwritten"
                self._settle(flight, "failed", "output_exists", message)
        except StorageError as exc:
            return await self._landed_anyway(flight, result.content, token, exc)
        return None

    async def _landed_anyway(
        self, flight: Flight, content: bytes, token: str, exc: StorageError
    ) -> ObjectInfo | None:
        """
        A write that raised may have landed (its reply lost, a 5xx after GCS committed): the destination
        is our output when it carries this write's token and checksums; else the image fails
        ``upload_failed``, and unless the stat shows nothing there its claim is released so that the
        next taker looks for an output before paying (docs/pipeline.md, "Never paying twice").
        """
        destination = flight.item.destination
        try:
            current = await self._blocking(self.storage.stat, self._bucket, destination)
        except StorageError as stat_exc:
            current, unclear = None, f"; the destination could not be checked: {stat_exc}"
        else:
            if current is not None and is_our_write(current, content, token):
                log.info("%s: the write raised (%s) but its output landed", current.uri, exc)
                return current
            nothing_new = current is None or current.generation == flight.item.replace_generation
            unclear = "" if nothing_new else "; another object is at the destination"
        if unclear:
            self._output_unknown.add(destination)
        message = f"vendor result could not be stored (it was paid for): {exc}{unclear}"
        self._settle(flight, "failed", "upload_failed", message)
        return None

    @staticmethod
    def _master_facts(master: ObjectInfo, status: str) -> dict[str, Any]:
        return {"object": master.uri, "generation": master.generation, "status": status}

    async def _render_only(self, flight: Flight) -> None:
        """
        A finished master: render the missing or stale renditions and store them. Its master is read
        (pinned) in its turn of the render budget (:meth:`.RenditionStage.run_stored`): the ``render``
        stage includes that read, and a read error fails the image as before, nothing rendered.
        """
        item, master = flight.item, flight.item.master
        assert master is not None
        flight.stage = "render"
        source = item.source if master != item.source else recorded_source(master)
        why, failed = "the master could not be read (nothing paid): ", self._master_facts(master, "failed")
        render = functools.partial(
            self._stage.run_stored, master, source, item.renditions, self.master_max_bytes
        )
        facts = await self._or_failed(flight, render, why, master=failed, vendor=made_by_vendor(master))
        if facts is None:
            return
        status, code, message = render_verdict(facts)
        written = sum(f.get("bytes") or 0 for f in facts if f["status"] in ("done", "replaced"))
        self._settle(
            flight,
            status,
            code,
            message,
            bytes_out=written or None,
            master=self._master_facts(master, "skipped"),
            renditions=facts,
            vendor=made_by_vendor(master),
        )

    async def _skipped_as_finished(self, flight: Flight, code: str, message: str) -> bool:
        """Settle the image skipped if its stored output is finished (made from this source by the chain)."""
        try:
            current = await self._blocking(self.storage.stat, self._bucket, flight.item.destination)
        except StorageError:
            return False  # cannot tell
        return self._skipped_if_finished(flight, current, code, message)

    def _skipped_if_finished(
        self, flight: Flight, current: ObjectInfo | None, code: str, message: str
    ) -> bool:
        """Settle the image skipped if ``current`` (its destination) is finished (made from this source)."""
        if current is None or not is_finished(current, flight.item.source, self.identity):
            return False
        flight.output_exists = True  # finished: its claim stays
        self._settle(flight, "skipped", code, message, vendor=made_by_vendor(current))
        return True

    async def _release(self, flight: Flight) -> None:
        """
        Release the image's claim in a thread, shielded: a cancellation of the awaiting task neither
        drops the job (queued or running) nor skips it; the run's executor shutdown waits for it.
        """
        job = asyncio.get_running_loop().run_in_executor(
            self._executor, self._release_claim, flight.item.destination
        )
        await asyncio.shield(job)

    def _release_claim(self, destination: str) -> None:
        assert self.claims is not None
        try:
            self.claims.release(destination, output_unknown=destination in self._output_unknown)
        except Exception as exc:  # best effort: the claim's lease runs out by itself
            log.warning("Could not release the claim on %s (it expires with its lease): %s", destination, exc)

    async def _worker(self) -> None:
        while (item := self._next_item()) is not None:
            flight = Flight(item, task=asyncio.current_task())
            self._flights.add(flight)
            try:
                await self._fly(flight)
            finally:
                self._flights.discard(flight)
                if not flight.recorded:  # cancelled from outside: still one finished image
                    self._count_finished(flight)
                self._check_failure_rate()
                self.progress.update(self._finished, self.result.counts, self.result.credits_spent)

    def _checkpoint_if_due(self) -> None:
        idle = self._checkpoint_task is None or self._checkpoint_task.done()
        if idle and self.manifest.part_due():
            self._checkpoint_task = asyncio.create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        try:
            # The mark is taken here, on the loop that adds rows: the thread reads a consistent range.
            await self._blocking(self.manifest.save_part, self.manifest.mark())
        except Exception as exc:  # the rows stay spooled and are offered again at the next checkpoint
            log.warning("Could not checkpoint the manifest (retried at the next checkpoint): %s", exc)

    async def _checkpoint_ticker(self) -> None:
        while True:
            await asyncio.sleep(max(self.manifest.every_seconds, 0.05))
            self._checkpoint_if_due()

    async def run(self) -> BatchResult:
        """Process every billable item (or until a halt or a stop request) and return the result."""
        started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_concurrency + 2, thread_name_prefix="bgremoval-io"
        )
        ticker = asyncio.create_task(self._checkpoint_ticker())
        failures: list[BaseException] = []
        try:
            for outcome in self.plan.settled:
                self._row(
                    outcome.source,
                    outcome.destination,
                    outcome.status,
                    error_code=outcome.code,
                    error_message=outcome.message,
                    **(outcome.extra or {}),
                )
            if self.halts.stop is not None:
                self._begin_drain()
            workers = min(self.max_concurrency, max(1, len(self.plan.items) + len(self.plan.render)))
            outcomes = await asyncio.gather(*(self._worker() for _ in range(workers)), return_exceptions=True)
            # A worker's own cancellation is one image given up at the grace (the run's would have
            # cancelled the gather): never the batch's error.
            failures = [
                outcome
                for outcome in outcomes
                if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError)
            ]
        finally:
            self._record_unsubmitted()
            ticker.cancel()
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            if self._checkpoint_task is not None:
                with contextlib.suppress(BaseException):
                    await self._checkpoint_task
            self._executor.shutdown(wait=True)
            self._executor = None
            self.result.duration_s = time.monotonic() - started
        held = self.result.pending_reasons["claimed_elsewhere"]  # the holder pays for them, not this run
        self.result.halt = await self.halts.complete(
            pending=self.result.counts["pending"] - held,
            billable=self.result.billable_counts["pending"] - held,  # render-only: free (never claimed)
        )
        self.progress.update(self._finished, self.result.counts, self.result.credits_spent, force=True)
        if failures:
            raise failures[0]
        return self.result

    def _record_unsubmitted(self) -> None:
        halt = self.halts.halt
        code, message = self.halts.stop or (
            (halt.reason, halt.message) if halt else ("not_started", "not started")
        )
        for item in (*self.plan.items[self._submitted :], *self._render_items):
            self._row(
                item.source,
                _destination_of(item),
                "pending",
                item.render_only,
                vendor=made_by_vendor(item.master),
                error_code=code,
                error_message=message,
            )


def _destination_of(item: WorkItem) -> str | None:
    """The row's destination: none when the source is its own master (render-only, its renditions only)."""
    return None if item.master is not None and item.master == item.source else item.destination


def run_batch(
    runner: BatchRunner, *, cleanup: Callable[[], Coroutine[Any, Any, None]] | None = None
) -> BaseException | None:
    """
    Run ``runner`` on an event loop of its own thread and wait for it in this one.

    An interrupt of this (main) thread (``execution_timeout``, termination) only drains the batch
    (:meth:`BatchRunner.request_stop`); it is returned, to be re-raised once the record is stored.

    :param runner: the batch.
    :param cleanup: awaited on the batch's loop when the run ends (e.g. closing the hook's clients).
    :return: the interrupt raised while waiting, or ``None``.
    """

    async def main() -> BatchResult:
        try:
            return await runner.run()
        finally:
            if cleanup is not None:
                await cleanup()

    interrupt: BaseException | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bgremoval-batch") as pool:
        future = pool.submit(asyncio.run, main())
        while not future.done():
            try:
                concurrent.futures.wait([future], timeout=0.5)
            except BaseException as exc:  # an interrupt of this thread: drain the batch, re-raise later
                interrupt = interrupt or exc
                name = type(exc).__name__
                runner.request_stop(
                    *_INTERRUPT_CODES.get(name, ("interrupted", f"the task was interrupted ({name})"))
                )
        future.result()  # the batch's own error (its record is in the runner's result)
    return interrupt
