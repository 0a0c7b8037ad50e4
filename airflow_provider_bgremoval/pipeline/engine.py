"""The batch engine: claim -> read -> vendor call -> store by ``max_concurrency`` workers, one recorder.

The money rules (budgets count money at risk, halts, draining) are in docs/pipeline.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any, TypeVar

from airflow_provider_bgremoval._compat import Stats
from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InputRejectedError,
    OutOfCreditsError,
    TransientVendorError,
    VendorAuthError,
    safe_excerpt,
)
from airflow_provider_bgremoval.forecast import object_name
from airflow_provider_bgremoval.imaging import check_limits, read_header
from airflow_provider_bgremoval.pipeline.accounts import Account, AccountChain
from airflow_provider_bgremoval.pipeline.claims import ClaimHolder, ClaimStore
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
from airflow_provider_bgremoval.results import Balance, ImageResult
from airflow_provider_bgremoval.retry import CallStats
from airflow_provider_bgremoval.storage.exceptions import StorageError, WriteConflictError
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

ON_ERROR_CHOICES: tuple[str, ...] = ("fail_at_end", "fail_rate", "continue")
#: Finished images needed before the failure-rate rule can stop a batch.
FAILURE_RATE_MIN_SAMPLE = 10
#: Sample output URIs kept for XCom.
SAMPLE_OUTPUTS = 5
#: Seconds in-flight calls get to finish after a timeout or a termination (SIGKILL follows in 5 s).
DEFAULT_DRAIN_GRACE = 3.0

#: Prefix of the failover metrics (docs/pipeline.md, "Failover"): ``<prefix>.<event>.<conn_id>``.
FAILOVER_METRIC_PREFIX = "bgremoval.failover"

#: How Airflow's interrupts are named in manifests and summaries.
_INTERRUPT_CODES = {
    "AirflowTaskTimeout": ("execution_timeout", "the task hit its execution_timeout"),
    "AirflowTaskTerminated": ("terminated", "the task was terminated"),
    "KeyboardInterrupt": ("interrupted", "the task was interrupted (SIGINT)"),
    "SystemExit": ("terminated", "the task process is exiting"),
}


@dataclass(frozen=True)
class HaltInfo:
    """
    Why a batch (or the credits pre-flight, same shape for one alert) stopped before all billable work.

    :param reason: ``out_of_credits``, ``max_credits``… (docs/pipeline.md, "Halts"), or an interrupt code.
    :param vendor: vendor name.
    :param message: human explanation.
    :param remaining_images: images not processed because of the halt.
    :param needed: credits the remaining images need (estimate).
    :param available: credits available when the halt happened (``None`` when unknown).
    :param fatal: True when the task must fail without retries.
    :param accounts: a failover chain's pooled shortfall, per account in chain order: ``conn_id``,
        ``vendor``, ``state``, ``cost_per_image``, ``needed`` (the pending images at its cost),
        ``available`` (its balance read after the halt, ``None`` when unknown) and ``covers``
        (images that balance pays for); empty for one connection.
    :param shortfall_images: pending images no account's balance covers (a chain; ``None``: unknown).
    """

    reason: str
    vendor: str
    message: str
    remaining_images: int = 0
    needed: Decimal | None = None
    available: Decimal | None = None
    fatal: bool = False
    accounts: tuple[dict[str, Any], ...] = ()
    shortfall_images: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for XCom and alerts."""
        return {
            key: str(value) if isinstance(value, Decimal) else value
            for key, value in asdict(self).items()
            if key not in ("accounts", "shortfall_images") or self.accounts
        } | ({"accounts": [dict(entry) for entry in self.accounts]} if self.accounts else {})


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


@dataclass(eq=False)
class _Flight:
    """One image on its way through claim -> read -> call -> store, and what it has cost so far."""

    item: WorkItem
    stats: CallStats = field(default_factory=CallStats)
    started: float = field(default_factory=time.monotonic)
    stage: str = "claim"
    task: asyncio.Task[Any] | None = None
    claimed: bool = False
    result: ImageResult | None = None
    output_exists: bool = False
    recorded: bool = False
    abandoned: bool = False
    account: Account | None = None  # the account of the current (or last) call
    probe: bool = False  # that call is its account's half-open probe
    outcome_due: bool = False  # its outcome is still owed to the account's breaker
    lost_base: int = 0  # lost replies of the call stats booked to earlier accounts
    tried: list[Account] = field(default_factory=list)  # accounts this image may not go back to
    handoffs: list[dict[str, Any]] = field(default_factory=list)  # why earlier accounts handed it on
    last_error: BgRemovalError | None = None


@dataclass(eq=False, repr=False)
class BatchRunner:
    """
    Runs the billable part of a :class:`BatchPlan`.

    :param storage: the storage layer.
    :param processor: the vendor operation (of the primary account, with ``accounts``).
    :param plan: the plan (its settled rows are written to the manifest as they are).
    :param manifest: where rows go (and how often they are checkpointed).
    :param max_concurrency: images in flight at once.
    :param max_images: stop after submitting this many images (``None``: no limit).
    :param max_credits: never put more than this many credits at risk (``None``: no limit).
    :param on_error: ``fail_at_end``, ``fail_rate`` or ``continue`` (only ``fail_rate`` stops the run early).
    :param max_failure_rate: failure rate above which ``fail_rate`` stops the batch.
    :param writer_id: identity recorded on outputs and claims.
    :param claims: claim store (``None`` disables claims).
    :param balance_probe: coroutine reading the balance after an out-of-credits halt (free call).
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
    balance_probe: Callable[[], Awaitable[Balance]] | None = None
    progress_every_seconds: float = 30.0
    drain_grace: float = DEFAULT_DRAIN_GRACE
    master_max_bytes: int = MASTER_MAX_BYTES
    accounts: AccountChain | None = None

    def __post_init__(self) -> None:  # the parameters are validated by the operator
        self.result = BatchResult(billable=len(self.plan.items))
        self.chain = self.accounts or AccountChain.single(self.processor)
        self.identity = self.chain.identity
        self._last_disabled: Account | None = None
        self._items: Iterator[WorkItem] = iter(self.plan.items)
        self._render_items: Iterator[WorkItem] = iter(self.plan.render)
        spec = self.plan.spec
        self._stage = RenditionStage(self.storage, spec.destination_bucket, self.writer_id, spec.overwrite)
        self._flights: set[_Flight] = set()
        self._submitted = 0
        self._finished = 0
        self._billable_finished = 0  # what the failure rate judges: render-only items are not counted
        self._halt_reason: HaltInfo | None = None  # completed when the run ends
        self._exhausted = False  # the halt is a chain's every account unusable: state the pooled shortfall
        self._stop: tuple[str, str] | None = None  # an interrupt: (code, message)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._bad_in_run = 0
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
        self._stop = self._stop or (code, message)
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: nothing left to drain
                self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._stop is None or self._grace_timer is not None:
            return
        code, message = self._stop
        self.result.interrupted = code
        self._halt(code, message)
        log.warning(
            "%s: no new images are sent; %d call(s) in flight get %.1f s to finish and store their results",
            message,
            len(self._flights),
            self.drain_grace,
        )
        assert self._loop is not None
        self._grace_timer = self._loop.call_later(self.drain_grace, self._abandon_unanswered)

    def _abandon_unanswered(self) -> None:
        """The grace is over: give up unanswered vendor calls (results in hand are kept)."""
        for flight in list(self._flights):
            if flight.stage == "call" and not flight.stats.billed_reply and flight.task is not None:
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
        """
        Record one row; its vendor is ``vendor`` (the one that made an existing output), else the account's.
        """
        if account is not None:
            account.counts[status] += 1
            fields["account"] = account.conn_id
        for entry in fields.get("renditions") or ():
            self.result.renditions.setdefault(entry["name"], Counter())[entry["status"]] += 1
        row = ManifestRow(
            source=source.uri,
            source_generation=source.generation or None,
            destination=destination and f"gs://{self.plan.spec.destination_bucket}/{destination}",
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
        if self.manifest.part_due():
            self._schedule_checkpoint()

    def _halt(self, reason: str, message: str, *, fatal: bool = False, vendor: str | None = None) -> None:
        if self._halt_reason is None:
            self._halt_reason = HaltInfo(reason, vendor or self.processor.vendor, message, fatal=fatal)
            log.warning("Stopping submissions: %s", message)

    def _unit_cost(self) -> Decimal:
        """Credits one image is expected to cost on the account that takes the next one."""
        return (self.chain.preferred() or self.chain.primary).unit_cost()

    def credits_at_risk(self, account: Account | None = None) -> Decimal:
        """
        What ``max_credits`` bounds: charged, lost replies and a reservation per image in flight.

        :param account: only what is at risk on this account (``max_credits_per_account``); ``None``: all.
        """
        accounts = self.chain.accounts if account is None else (account,)
        at_risk = sum(
            (each.credits_spent + each.unit_cost() * each.possibly_charged for each in accounts), Decimal(0)
        )
        default = self._unit_cost()  # an image not yet at a vendor: the account that would take it
        for flight in self._billable_flights():
            if account is not None and flight.account is not account:
                continue
            cost = default if flight.account is None else flight.account.unit_cost()
            at_risk += cost * (flight.stats.possibly_charged - flight.lost_base)
            at_risk += self._reservation(flight, default)
        return at_risk

    def _billable_flights(self) -> list[_Flight]:
        """The images in flight that put credits at risk (not yet recorded, not render-only)."""
        return [f for f in self._flights if not f.recorded and not f.item.render_only]

    @staticmethod
    def _reservation(flight: _Flight, default: Decimal) -> Decimal:
        """
        What ``flight``'s call holds of a budget: its charge once billed, else its account's cost.

        :param flight: the image.
        :param default: the cost of an image not yet at a vendor.
        """
        cost = default if flight.account is None else flight.account.unit_cost()
        stats = flight.stats
        return (stats.credits_charged or cost) if stats.billed_reply else cost

    def _fits_total(self, flight: _Flight, account: Account, probe: bool) -> bool:
        """
        Whether ``max_credits`` allows ``flight``'s call on ``account``, repriced at its cost.

        An image is admitted at the preferred account's cost; handed on (or sent as a dearer
        account's half-open probe) it may cost more. If that does not fit, the batch halts
        ``max_credits`` and the image is settled pending, not sent (docs/pipeline.md, "Failover").
        """
        if self.max_credits is None:
            return True
        others = self.credits_at_risk() - self._reservation(flight, self._unit_cost())
        cost = account.unit_cost()
        if others + cost <= self.max_credits:
            return True
        if probe:  # the probe is not made: the breaker lets the next one through
            account.breaker.record("neutral", probe=True)
        message = (
            f"max_credits={self.max_credits} reached: the next call on {account.conn_id} "
            f"({account.vendor}) costs {cost} and {others} credits are charged or at risk"
        )
        self._halt("max_credits", message, vendor=account.vendor)
        self._settle(flight, "pending", "max_credits", f"{message}; this image was not sent")
        return False

    def _fits(self, account: Account) -> bool:
        """Whether ``account``'s own budget allows one more image (if not, it leaves the chain)."""
        if account.budget is None:
            return True
        at_risk = self.credits_at_risk(account)
        if at_risk + account.unit_cost() <= account.budget:
            return True
        message = (
            f"max_credits_per_account[{account.conn_id!r}]={account.budget} reached "
            f"({at_risk} credits charged or at risk)"
        )
        self._disable(account, "max_credits", message)
        return False

    def _disable(self, account: Account, state: str, message: str) -> None:
        if account.usable:
            account.disable(state, message)
            self._last_disabled = account
            _metric("account_unusable", account, reason=state)
            if self.chain.usable():
                log.warning("Account %s (%s) leaves the chain: %s", account.conn_id, account.vendor, message)

    def _halt_exhausted(self) -> None:
        """Every account is unusable: halt as one connection would, naming each account's state."""
        last = self._last_disabled or self.chain.primary
        message = last.state_message or last.state
        if len(self.chain.accounts) > 1:
            states = "; ".join(
                f"{a.conn_id} ({a.vendor}): {a.state} ({a.state_message})" for a in self.chain.accounts
            )
            message = f"every account of the chain is unusable: {states}"
            self._exhausted = self._exhausted or self._halt_reason is None
        self._halt(last.state, message, fatal=last.state != "max_credits", vendor=last.vendor)

    def _may_retry(self, _exc: BaseException) -> bool:
        """Retry guard: a retry after a lost reply must fit the budget (its reservation already does)."""
        if self.max_credits is None or self.credits_at_risk() <= self.max_credits:
            return True
        self._halt(
            "max_credits",
            f"max_credits={self.max_credits} reached: a lost reply leaves no room to retry "
            f"({self.credits_at_risk()} credits charged or at risk)",
        )
        return False

    def _next_item(self) -> WorkItem | None:
        """The next billable item the budgets allow, else the next render-only one (free: never halted)."""
        if self._stop is not None:
            return None
        if self._halt_reason is None:
            item = self._next_billable()
            if item is not None:
                return item
        return next(self._render_items, None)

    def _next_billable(self) -> WorkItem | None:
        if self.max_images is not None and self._submitted >= self.max_images:
            self._halt("max_images", f"max_images={self.max_images} reached")
            return None
        account = self.chain.preferred()
        while account is not None and not self._fits(account):  # its budget is spent: it leaves
            account = self.chain.preferred()
        if account is None:
            self._halt_exhausted()
            return None
        cost = self._unit_cost()
        if self.max_credits is not None and self.credits_at_risk() + cost > self.max_credits:
            self._halt(
                "max_credits",
                f"max_credits={self.max_credits} reached (charged {self.result.credits_spent}, "
                f"{self.result.possibly_charged} reply(s) lost and possibly charged, "
                f"{self._in_flight_summary()}; the next image costs {cost})",
            )
            return None
        item = next(self._items, None)
        if item is not None:
            self._submitted += 1
        return item

    def _in_flight_summary(self) -> str:
        """The images in flight, each priced at its own account (``2 in flight: 3 on poof_conn...``)."""
        default = self._unit_cost()
        held: Counter[tuple[str, Decimal]] = Counter()
        for flight in self._billable_flights():
            where = flight.account.conn_id if flight.account is not None else "not yet sent"
            held[(where, self._reservation(flight, default))] += 1
        parts = ", ".join(f"{n} at {cost} ({where})" for (where, cost), n in sorted(held.items()))
        return f"{sum(held.values())} in flight" + (f": {parts}" if parts else "")

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
        finished = self._billable_finished
        if self.on_error != "fail_rate" or finished < FAILURE_RATE_MIN_SAMPLE:
            return
        rate = self._bad_in_run / finished
        if rate > self.max_failure_rate:
            self._halt(
                "failure_rate",
                f"{self._bad_in_run} of {finished} images failed "
                f"({rate:.0%} > max_failure_rate {self.max_failure_rate:.0%})",
            )

    def _settle(
        self,
        flight: _Flight,
        status: str,
        code: str | None = None,
        message: str | None = None,
        *,
        request_id: str | None = None,
        **fields: Any,
    ) -> None:
        """Record the one row of ``flight`` with what it cost (billed: charged; lost: possibly)."""
        if flight.recorded:
            log.warning(
                "%s was already recorded; ignoring a second outcome (%s)", flight.item.source.uri, status
            )
            return
        flight.recorded = True
        self._breaker(flight, "neutral")  # a probe that ended without a verdict (stop, cancel, defect)
        self._count_finished(flight, bad=status in ("rejected", "failed"))
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

    def _count_finished(self, flight: _Flight, *, bad: bool = False) -> None:
        """One more finished image; a billable one also counts for the failure rate."""
        self._finished += 1
        if not flight.item.render_only:
            self._billable_finished += 1
            self._bad_in_run += int(bad)

    def _settle_unexpected(self, flight: _Flight, exc: Exception) -> None:
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
        paid = flight.result is not None or flight.stats.billed_reply
        self._settle(
            flight,
            "failed",
            "internal_error",
            f"unexpected {type(exc).__name__} during {flight.stage}: {safe_excerpt(str(exc)) or 'no details'}"
            + ("; the vendor call was billed" if paid else ""),
        )

    async def _fly(self, flight: _Flight) -> None:
        try:
            if flight.item.render_only:
                await self._render_only(flight)
                return
            if not await self._claim(flight):
                return
            data = await self._read(flight)
            if data is None:
                return
            flight.result = await self._call(flight, data)
            del data
            if flight.result is not None:
                await self._store(flight, flight.result)
        except asyncio.CancelledError:
            if not flight.abandoned:
                raise
            code, message = self._stop or ("interrupted", "the batch was stopped")
            self._settle(
                flight,
                "pending",
                code,
                f"{message}; the vendor had not answered within the {self.drain_grace:g} s grace, so the "
                "call was abandoned (it may have been billed)",
            )
        except Exception as exc:  # one image's failure never takes the batch down
            self._settle_unexpected(flight, exc)
        finally:
            if flight.claimed and not flight.output_exists:
                await self._release(flight)

    async def _claim(self, flight: _Flight) -> bool:
        if self.claims is None:
            return True
        try:
            item = flight.item
            holder = await self._blocking(self.claims.acquire, item.destination, item.source.generation)
        except StorageError as exc:  # nothing was paid: this image alone fails, the batch goes on
            self._settle(
                flight,
                "failed",
                type(exc).__name__,
                f"could not claim the output before the vendor call (nothing paid): {exc}",
            )
            return False
        if holder is not None:
            self.result.note_claim_elsewhere(holder)
            self._settle(
                flight, "pending", "claimed_elsewhere", f"another run is processing this output: {holder}"
            )
            return False
        flight.claimed = True
        if flight.item.destination in self.claims.taken_over:
            return not await self._stored_earlier(flight)
        return True

    async def _stored_earlier(self, flight: _Flight) -> bool:
        """
        A claim taken over (from an earlier try of this task instance, e.g. on a worker that died, or
        from a holder whose lease ran out): skip the image when that holder already stored its output.
        """
        try:
            current = await self._blocking(
                self.storage.stat, self.plan.spec.destination_bucket, flight.item.destination
            )
        except StorageError:
            return False  # cannot tell: the create-only write still protects the output
        if current is None or not is_finished(current, flight.item.source, self.identity):
            return False
        flight.output_exists = True  # finished: its claim stays
        message = "an earlier try stored this output (not paid again)"
        self._settle(flight, "skipped", "already_done", message, vendor=made_by_vendor(current))
        return True

    async def _read(self, flight: _Flight) -> bytes | None:
        flight.stage = "read"
        source = flight.item.source
        try:
            return await self._blocking(
                self.storage.read, source.bucket, source.name, generation=source.generation
            )
        except StorageError as exc:
            self._settle(flight, "failed", type(exc).__name__, str(exc))
            return None

    async def _call(self, flight: _Flight, data: bytes) -> ImageResult | None:
        """The vendor call, on the chain's account for it; failover moves it on to the next one."""
        name = posixpath.basename(flight.item.source.name) or "image"
        while True:
            if self._stop is not None:
                code, message = self._stop
                self._settle(flight, "pending", code, f"{message}; this image was not sent (nothing paid)")
                return None
            account = await self._account_for(flight, data)
            if account is None:
                return None
            flight.stage = "call"
            flight.stats.retry_guard = self._may_retry
            try:
                result = await account.processor.process(data, name, flight.stats)
            except BgRemovalError as exc:
                if not self._after_call_error(flight, account, exc):
                    return None
            else:
                self._breaker(flight, "success")
                return result

    async def _account_for(self, flight: _Flight, data: bytes) -> Account | None:
        """The account for the image's next call; ``None`` when it is settled instead (no account left)."""
        while True:
            choice = self.chain.choose(flight.tried, self._fits)
            if isinstance(choice, tuple):
                account, probe = choice
                rejection = self._local_rejection(account, data)
                if rejection is None:
                    if not self._fits_total(flight, account, probe):
                        return None
                    self._assign(flight, account, probe)
                    return account
                if probe:
                    account.breaker.record("neutral", probe=True)
                flight.tried.append(account)
                self._hand_on(flight, account, "rejected", rejection)
                continue
            if choice is None:
                self._no_account(flight)
                return None
            if self._stop is not None:
                code, message = self._stop
                self._settle(flight, "pending", code, f"{message}; this image was not sent (nothing paid)")
                return None
            flight.stage = "wait"  # every account left is in an outage: wait for the first probe
            await asyncio.sleep(min(max(choice, 0.01), 0.5))

    def _local_rejection(self, account: Account, data: bytes) -> InputRejectedError | None:
        """
        The account's own input limits, checked on the bytes in hand before its call (free).

        Planning checked a chain's widest limits: when the accounts' limits differ, each is checked here.
        """
        limits = account.processor.limits
        if all(other.processor.limits == limits for other in self.chain.accounts):
            return None  # planning checked these
        try:
            check_limits(read_header(data, vendor=account.vendor), len(data), limits, vendor=account.vendor)
        except InputRejectedError as exc:
            return exc
        return None

    def _assign(self, flight: _Flight, account: Account, probe: bool) -> None:
        previous = flight.account
        if previous is not None and previous is not account:  # its lost replies stay booked there
            previous.possibly_charged += flight.stats.possibly_charged - flight.lost_base
            flight.lost_base = flight.stats.possibly_charged
        flight.account, flight.probe, flight.outcome_due = account, probe, True

    def _breaker(self, flight: _Flight, outcome: str) -> None:
        """Report the call's outcome to its account's breaker (once per call)."""
        account = flight.account
        if flight.outcome_due and account is not None:
            flight.outcome_due = False
            opened = account.breaker.times_opened
            account.breaker.record(outcome, probe=flight.probe)
            if account.breaker.times_opened > opened:
                _metric("breaker_opened", account)
                log.warning(
                    "Account %s (%s): circuit breaker open (%d time(s) so far); new images go on to the "
                    "next account until a probe succeeds",
                    account.conn_id,
                    account.vendor,
                    account.breaker.times_opened,
                )

    def _hand_on(self, flight: _Flight, account: Account, reason: str, exc: BgRemovalError) -> None:
        """Note on the image's row why ``account`` handed it on."""
        flight.last_error = exc
        flight.handoffs.append(
            {
                "account": account.conn_id,
                "vendor": account.vendor,
                "reason": reason,
                "code": exc.code,
                "message": safe_excerpt(exc.message),
            }
        )
        log.info("%s: %s on %s, handed on", flight.item.source.uri, reason, account.conn_id)
        _metric("handoffs", account, reason=reason)

    def _untried(self, flight: _Flight, other_vendor_than: str | None = None) -> bool:
        return any(
            account not in flight.tried and account.vendor != other_vendor_than
            for account in self.chain.usable()
        )

    def _after_call_error(self, flight: _Flight, account: Account, exc: BgRemovalError) -> bool:
        """Settle the failed call, or return True to move the image on to the next account."""
        if flight.stats.attempts == 0:  # a processor that does not fill in the live record: its error has it
            flight.stats = exc.call or CallStats(possibly_charged=int(exc.possibly_charged))
        self._breaker(flight, "transient" if isinstance(exc, TransientVendorError) else "neutral")
        if isinstance(exc, (OutOfCreditsError, VendorAuthError)):
            reason = "out_of_credits" if isinstance(exc, OutOfCreditsError) else "auth_failed"
            if self.chain.fails_over(reason) and len(self.chain.accounts) > 1:  # one: halts as always
                self._disable(account, reason, str(exc))
                if self.chain.usable():
                    self._hand_on(flight, account, reason, exc)
                    return True
            self._halt_on(flight, account, reason, exc)
            return False
        if not flight.stats.billed_reply and self._moves_on(flight, account, exc):  # paid: stays here
            return True
        self._settle_call_error(flight, exc)
        return False

    def _moves_on(self, flight: _Flight, account: Account, exc: BgRemovalError) -> bool:
        """True when the image goes on to the next account (after an outage; a rejection, if asked)."""
        chain = self.chain
        if isinstance(exc, TransientVendorError) and "outage" in chain.failover_on:
            flight.tried.append(account)  # an outage here: the image goes on, never back
            if self._untried(flight) and self._may_retry(exc):
                self._hand_on(flight, account, "outage", exc)
                return True
            return False
        if (
            isinstance(exc, InputRejectedError)
            and chain.retry_rejected_on_next
            and self._untried(flight, other_vendor_than=account.vendor)
        ):
            flight.tried.extend(a for a in chain.accounts if a.vendor == account.vendor)
            self._hand_on(flight, account, "rejected", exc)
            return True
        return False

    def _halt_on(self, flight: _Flight, account: Account, reason: str, exc: BgRemovalError) -> None:
        """An account refused for good and nothing takes over: halt, the image stays pending."""
        if self.chain.usable() or len(self.chain.accounts) == 1:
            self._halt(reason, str(exc), fatal=True, vendor=account.vendor)
        else:
            self._halt_exhausted()
        self._settle(flight, "pending", exc.code or reason, str(exc), request_id=exc.request_id)

    def _no_account(self, flight: _Flight) -> None:
        """No account is left for this image: settle it with what the last one said."""
        exc = flight.last_error
        if not self.chain.usable():
            self._halt_exhausted()
            halt = self._halt_reason
            assert halt is not None
            if exc is None or isinstance(exc, (InputRejectedError, TransientVendorError)):
                self._settle(flight, "pending", halt.reason, f"{halt.message}; this image was not sent")
            else:
                self._settle(flight, "pending", exc.code or halt.reason, str(exc), request_id=exc.request_id)
            return
        if isinstance(exc, (OutOfCreditsError, VendorAuthError)):
            code = exc.code or ("out_of_credits" if isinstance(exc, OutOfCreditsError) else "auth_failed")
            self._settle(flight, "pending", code, str(exc), request_id=exc.request_id)
        elif exc is not None:
            self._settle_call_error(flight, exc)
        else:  # unreachable: an image is only refused by every account after their answers
            self._settle(flight, "failed", "no_account", "no account of the chain could take this image")

    def _settle_call_error(self, flight: _Flight, exc: BgRemovalError) -> None:
        if isinstance(exc, InputRejectedError):
            self._settle(flight, "rejected", exc.code or "rejected", exc.message, request_id=exc.request_id)
        else:
            self._settle(
                flight, "failed", exc.code or type(exc).__name__, str(exc), request_id=exc.request_id
            )

    async def _store(self, flight: _Flight, result: ImageResult) -> None:
        flight.stage = "store"
        item, bucket = flight.item, self.plan.spec.destination_bucket
        account = flight.account or self.chain.primary
        credits, _ = self._credits_of(account, result.credits_charged)
        try:
            written = await self._blocking(
                self.storage.write,
                bucket,
                item.destination,
                result.content,
                content_type=result.content_type,
                metadata=self._metadata(item, account, result.request_id, credits),
                if_generation_match=item.replace_generation or 0,
                idempotency_token=f"{self.writer_id}:{item.source.generation}:{account.processor.fingerprint}",
            )
        except WriteConflictError:
            await self._settle_conflict(flight)
            return
        except StorageError as exc:
            self._settle(
                flight,
                "failed",
                "upload_failed",
                f"vendor result could not be stored (it was paid for): {exc}",
            )
            return
        flight.output_exists = True
        if len(self.result.sample_outputs) < SAMPLE_OUTPUTS:
            self.result.sample_outputs.append(f"gs://{bucket}/{item.destination}")
        renditions: dict[str, Any] = {}
        if item.renditions:  # from the bytes in hand: the master is not read back
            flight.stage = "render"
            master = self._master_facts(written, "replaced" if item.replace_generation else "done")
            facts = await self._blocking(
                self._stage.run, result.content, written, item.source, item.renditions
            )
            renditions = {"master": master, "renditions": facts}
        self._settle(flight, "done", bytes_out=len(result.content), **renditions)

    @staticmethod
    def _master_facts(master: ObjectInfo, status: str) -> dict[str, Any]:
        return {"object": master.uri, "generation": master.generation, "status": status}

    async def _render_only(self, flight: _Flight) -> None:
        """A finished master: read it (pinned), render the missing or stale renditions, store them."""
        item, master = flight.item, flight.item.master
        assert master is not None
        flight.stage = "read"
        try:
            data = await self._blocking(
                self.storage.read,
                master.bucket,
                master.name,
                generation=master.generation,
                max_bytes=self.master_max_bytes,
            )
        except StorageError as exc:
            reason = f"the master could not be read (nothing paid): {exc}"
            self._settle(
                flight,
                "failed",
                type(exc).__name__,
                reason,
                master=self._master_facts(master, "failed"),
                vendor=made_by_vendor(master),
            )
            return
        flight.stage = "render"
        source = item.source if master != item.source else recorded_source(master)
        facts = await self._blocking(self._stage.run, data, master, source, item.renditions)
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

    async def _settle_conflict(self, flight: _Flight) -> None:
        """The create-only write lost: another run wrote first, or something else is in the way."""
        flight.output_exists = True  # not ours to release: the destination exists
        try:
            current = await self._blocking(
                self.storage.stat, self.plan.spec.destination_bucket, flight.item.destination
            )
        except StorageError:
            current = None
        if current is not None and is_finished(current, flight.item.source, self.identity):
            message = "another run wrote this output first"
            self._settle(flight, "skipped", "done_concurrently", message, vendor=made_by_vendor(current))
        else:
            self._settle(
                flight,
                "failed",
                "output_exists",
                "the destination appeared during the run; not overwritten",
            )

    async def _release(self, flight: _Flight) -> None:
        assert self.claims is not None
        try:
            await self._blocking(self.claims.release, flight.item.destination)
        except Exception as exc:  # best effort: the claim's lease runs out by itself
            log.warning(
                "Could not release the claim on %s (it expires with its lease): %s",
                flight.item.destination,
                exc,
            )

    async def _worker(self) -> None:
        while (item := self._next_item()) is not None:
            flight = _Flight(item, task=asyncio.current_task())
            self._flights.add(flight)
            try:
                await self._fly(flight)
            finally:
                self._flights.discard(flight)
                if not flight.recorded:  # cancelled from outside: still one finished image
                    self._count_finished(flight)
                self._check_failure_rate()
                self.progress.update(self._finished, self.result.counts, self.result.credits_spent)

    def _schedule_checkpoint(self) -> None:
        if self._checkpoint_task is None or self._checkpoint_task.done():
            self._checkpoint_task = asyncio.create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        try:
            await self._blocking(self.manifest.save_part)
        except Exception as exc:  # the rows stay spooled and are offered again at the next checkpoint
            log.warning("Could not checkpoint the manifest (retried at the next checkpoint): %s", exc)

    async def _checkpoint_ticker(self) -> None:
        while True:
            await asyncio.sleep(max(self.manifest.every_seconds, 0.05))
            if self.manifest.part_due():
                self._schedule_checkpoint()

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
            if self._stop is not None:
                self._begin_drain()
            workers = min(self.max_concurrency, max(1, len(self.plan.items) + len(self.plan.render)))
            outcomes = await asyncio.gather(*(self._worker() for _ in range(workers)), return_exceptions=True)
            failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
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
        if self._halt_reason is not None:
            self.result.halt = await self._halt_info(self._halt_reason)
        self.progress.update(self._finished, self.result.counts, self.result.credits_spent, force=True)
        if failures:
            raise failures[0]
        return self.result

    def _record_unsubmitted(self) -> None:
        halt = self._halt_reason
        code, message = self._stop or (
            (halt.reason, halt.message) if halt else ("not_started", "not started")
        )
        for item in (*self._items, *self._render_items):
            self._row(
                item.source,
                _destination_of(item),
                "pending",
                item.render_only,
                vendor=made_by_vendor(item.master),
                error_code=code,
                error_message=message,
            )

    async def _halt_info(self, halt: HaltInfo) -> HaltInfo:
        """
        The halt with what is left; balances are read (free calls) only for a credits halt.

        Never after a stop request: the record must be stored before the task is killed.
        """
        pending = self.result.counts["pending"]
        billable = self.result.billable_counts["pending"]  # render-only: free
        needed = self.processor.cost_per_image * billable
        halt = replace(halt, remaining_images=pending, needed=needed)
        if self._stop is not None:
            return halt
        if self._exhausted:
            return await self._pooled_shortfall(halt)
        available: Decimal | None = None
        if halt.reason == "out_of_credits" and self.balance_probe is not None:
            with contextlib.suppress(BgRemovalError):
                available = (await self.balance_probe()).remaining
        return replace(halt, available=available)

    async def _pooled_shortfall(self, halt: HaltInfo) -> HaltInfo:
        """Every account unusable: its balance (read at once, free) against the pending images at its cost."""
        left = billable = self.result.billable_counts["pending"]
        entries: list[dict[str, Any]] = []
        known: list[Decimal] = []
        balances = await asyncio.gather(*(_balance_of(account) for account in self.chain.accounts))
        for account, available in zip(self.chain.accounts, balances, strict=True):
            cost = account.unit_cost()
            covers = min(left, int(available // cost)) if available is not None and cost > 0 else None
            left -= covers or 0
            known += [available] if available is not None else []
            entries.append(
                {
                    "conn_id": account.conn_id,
                    "vendor": account.vendor,
                    "state": account.state,
                    "cost_per_image": str(cost),
                    "needed": str(cost * billable),
                    "available": None if available is None else str(available),
                    "covers": covers,
                }
            )
        unknown = any(entry["covers"] is None for entry in entries)
        pooled = "; ".join(
            f"{e['conn_id']} ({e['vendor']}, {e['state']}): {e['available'] or 'unknown'} available "
            f"at {e['cost_per_image']} per image"
            for e in entries
        )
        short = "unknown" if unknown else f"{left} image(s)"
        message = f"{halt.message}. Pooled shortfall: {short} of {halt.remaining_images} pending; {pooled}"
        return replace(
            halt,
            message=message,
            available=sum(known, Decimal(0)) if known else None,
            accounts=tuple(entries),
            shortfall_images=None if unknown else left,
        )


def _metric(event: str, account: Account, **tags: str) -> None:
    """Count one failover event of ``account`` (``bgremoval.failover.<event>.<conn_id>``)."""
    name = object_name("", account.conn_id, "")  # only the characters stats names allow
    tags = {"conn_id": account.conn_id, "vendor": account.vendor, **tags}
    Stats.incr(f"{FAILOVER_METRIC_PREFIX}.{event}.{name}", tags=tags)


async def _balance_of(account: Account) -> Decimal | None:
    """
    The account's balance from its free endpoint, one attempt with a short timeout (the probe path).

    :return: the remaining credits; ``None`` without a hook or on an error.
    """
    if account.hook is None:
        return None
    with contextlib.suppress(BgRemovalError):
        return (await account.hook.aget_balance(probe=True)).remaining
    return None


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
