"""The batch engine: download -> vendor call -> post-process -> conditional upload, concurrently.

Memory is bounded by ``max_concurrency``: a fixed set of worker coroutines pulls work items one at a
time, so only in-flight images are held, whatever the batch size. Blocking storage calls run in a
dedicated thread pool sized to the concurrency.

Money rules:

* ``max_images`` / ``max_credits`` stop submitting cleanly when reached (remaining images pending);
* an out-of-credits or authentication failure stops submitting at once; in-flight calls finish and
  are written; everything not done is recorded as pending; the task then fails without retries;
* an output is written create-only (or generation-matched when replacing a stale output), and its
  metadata records what it was made from, so a rerun skips it and never pays twice;
* a claim per output keeps overlapping runs from paying for the same image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, TypeVar

from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InputRejectedError,
    InvalidOptionError,
    OutOfCreditsError,
    VendorAuthError,
)
from airflow_provider_bgremoval.pipeline.claims import ClaimStore
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
)
from airflow_provider_bgremoval.pipeline.processors import ImageProcessor
from airflow_provider_bgremoval.pipeline.progress import ProgressReporter
from airflow_provider_bgremoval.results import Balance
from airflow_provider_bgremoval.storage.exceptions import StorageError, WriteConflictError
from airflow_provider_bgremoval.storage.gcs import GcsStorage

log = logging.getLogger(__name__)
T = TypeVar("T")

OnError = Literal["fail_at_end", "fail_rate", "continue"]
ON_ERROR_CHOICES: tuple[str, ...] = ("fail_at_end", "fail_rate", "continue")
#: Finished images needed before the failure-rate rule can stop a batch.
FAILURE_RATE_MIN_SAMPLE = 10
#: Sample output URIs kept for XCom.
SAMPLE_OUTPUTS = 5
#: Done (source, output) pairs kept for lineage reporting.
LINEAGE_CAP = 1000


def _possibly_charged(exc: BgRemovalError) -> int:
    """Billed-but-lost attempts of a failed call (counted by the hook; else the error's own flag)."""
    counted = getattr(exc, "possibly_charged_attempts", None)
    if counted is not None:
        return int(counted)
    return int(bool(getattr(exc, "possibly_charged", False)))


@dataclass(frozen=True)
class HaltInfo:
    """
    Why a batch (or a pre-flight check) stopped before all billable work was done. The same shape
    is reported by the mid-batch halt and by the credits pre-flight, so one alert handles both.

    :param reason: ``out_of_credits``, ``auth_failed``, ``max_images``, ``max_credits``,
        ``failure_rate`` or ``insufficient_credits`` (pre-flight).
    :param vendor: vendor name.
    :param message: human explanation.
    :param remaining_images: images not processed because of the halt.
    :param needed: credits the remaining images need (estimate).
    :param available: credits available when the halt happened (``None`` when unknown).
    :param fatal: True when the task must fail without retries.
    """

    reason: str
    vendor: str
    message: str
    remaining_images: int = 0
    needed: Decimal | None = None
    available: Decimal | None = None
    fatal: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for XCom and alerts."""
        return {
            "reason": self.reason,
            "vendor": self.vendor,
            "message": self.message,
            "remaining_images": self.remaining_images,
            "needed": None if self.needed is None else str(self.needed),
            "available": None if self.available is None else str(self.available),
            "fatal": self.fatal,
        }


@dataclass
class BatchResult:
    """
    The outcome of :meth:`BatchRunner.run`.

    :param counts: sources per final status.
    :param credits_spent: credits charged (vendor-reported, or estimated from the cost table).
    :param credits_estimated: True when some of ``credits_spent`` is an estimate.
    :param possibly_charged: lost replies after a sent request (the vendor may have billed them).
    :param sample_outputs: a few output URIs.
    :param lineage: (source URI, output URI) pairs of done images, capped.
    :param halt: why the batch stopped early, if it did.
    :param duration_s: wall time of the run.
    :param billable: images that were planned as billable.
    """

    counts: Counter[str] = field(default_factory=Counter)
    credits_spent: Decimal = Decimal(0)
    credits_estimated: bool = False
    possibly_charged: int = 0
    sample_outputs: list[str] = field(default_factory=list)
    lineage: list[tuple[str, str]] = field(default_factory=list)
    halt: HaltInfo | None = None
    duration_s: float = 0.0
    billable: int = 0

    @property
    def processed_per_second(self) -> float:
        """Images sent through the vendor per second."""
        sent = self.counts["done"] + self.counts["failed"]
        return sent / self.duration_s if self.duration_s > 0 else 0.0


class BatchRunner:
    """
    Runs the billable part of a :class:`BatchPlan`.

    :param storage: the storage layer.
    :param processor: the vendor operation.
    :param plan: the plan (its settled rows are written to the manifest as they are).
    :param manifest: where rows go.
    :param max_concurrency: images in flight at once.
    :param max_images: stop after submitting this many images (``None``: no limit).
    :param max_credits: stop before spending more than this (``None``: no limit).
    :param on_error: ``fail_at_end``, ``fail_rate`` or ``continue`` (the verdict is the caller's; the
        runner only stops early for ``fail_rate``).
    :param max_failure_rate: failure rate above which ``fail_rate`` stops the batch.
    :param writer_id: identity recorded on outputs and claims.
    :param claims: claim store (``None`` disables claims).
    :param balance_probe: coroutine reading the balance after an out-of-credits halt (free call).
    :param progress_every_seconds: progress log interval.
    """

    def __init__(
        self,
        storage: GcsStorage,
        processor: ImageProcessor,
        plan: BatchPlan,
        manifest: ManifestWriter,
        *,
        max_concurrency: int = 16,
        max_images: int | None = None,
        max_credits: Decimal | None = None,
        on_error: str = "fail_at_end",
        max_failure_rate: float = 0.1,
        writer_id: str = "bgremoval",
        claims: ClaimStore | None = None,
        balance_probe: Callable[[], Awaitable[Balance]] | None = None,
        progress_every_seconds: float = 30.0,
    ) -> None:
        if max_concurrency < 1:
            raise InvalidOptionError("max_concurrency", "must be at least 1")
        if on_error not in ON_ERROR_CHOICES:
            raise InvalidOptionError("on_error", f"{on_error!r} is not one of {', '.join(ON_ERROR_CHOICES)}")
        if not 0 <= max_failure_rate <= 1:
            raise InvalidOptionError("max_failure_rate", "must be between 0 and 1")
        self.storage = storage
        self.processor = processor
        self.plan = plan
        self.manifest = manifest
        self.max_concurrency = max_concurrency
        self.max_images = max_images
        self.max_credits = max_credits
        self.on_error = on_error
        self.max_failure_rate = max_failure_rate
        self.writer_id = writer_id
        self.claims = claims
        self.balance_probe = balance_probe
        self.result = BatchResult(billable=len(plan.items))
        self._items: Iterator[WorkItem] = iter(plan.items)
        self._submitted = 0
        self._in_flight = 0
        self._finished = 0
        self._halt_reason: tuple[str, str, bool] | None = None  # (reason, message, fatal)
        self._halt_error: BgRemovalError | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._bad_in_run = 0
        self._max_seen_charge = Decimal(0)
        self.progress = ProgressReporter(
            len(plan.items), processor.vendor, every_seconds=progress_every_seconds
        )

    # -- helpers -------------------------------------------------------------------------------
    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _row(self, item_source: Any, destination: str | None, status: str, **fields: Any) -> None:
        row = ManifestRow(
            source=item_source.uri,
            source_generation=item_source.generation or None,
            destination=None
            if destination is None
            else f"gs://{self.plan.spec.destination_bucket}/{destination}",
            status=status,
            vendor=self.processor.vendor,
            operation=self.processor.operation,
            bytes_in=item_source.size or None,
            **fields,
        )
        self.manifest.add(row)
        self.result.counts[status] += 1

    def _halt(self, reason: str, message: str, *, fatal: bool, error: BgRemovalError | None = None) -> None:
        if self._halt_reason is None:
            self._halt_reason = (reason, message, fatal)
            self._halt_error = error
            log.warning("Stopping submissions: %s", message)

    def _next_item(self) -> WorkItem | None:
        if self._halt_reason is not None:
            return None
        if self.max_images is not None and self._submitted >= self.max_images:
            self._halt("max_images", f"max_images={self.max_images} reached", fatal=False)
            return None
        # Project with the dearest of the cost table and what the vendor actually charged so far.
        cost = max(self.processor.cost_per_image, self._max_seen_charge)
        if self.max_credits is not None:
            committed = self.result.credits_spent + cost * self._in_flight
            if committed + cost > self.max_credits:
                self._halt(
                    "max_credits",
                    f"max_credits={self.max_credits} reached (spent {self.result.credits_spent}, "
                    f"{self._in_flight} in flight at {cost} each)",
                    fatal=False,
                )
                return None
        item = next(self._items, None)
        if item is not None:
            self._submitted += 1
        return item

    def _credits_of(self, charged: Decimal | None) -> tuple[Decimal, bool]:
        if charged is not None:
            self._max_seen_charge = max(self._max_seen_charge, charged)
            return charged, False
        return self.processor.cost_per_image, True

    def _metadata(self, item: WorkItem, request_id: str | None, credits: Decimal) -> dict[str, str]:
        meta = {
            META_SOURCE: item.source.uri,
            META_SOURCE_GENERATION: str(item.source.generation),
            META_OPTIONS_HASH: self.processor.fingerprint,
            META_VENDOR: self.processor.vendor,
            META_OPERATION: self.processor.operation,
            META_CREDITS: str(credits),
            META_WRITER: self.writer_id,
        }
        if request_id:
            meta[META_REQUEST_ID] = request_id
        return meta

    def _check_failure_rate(self) -> None:
        if self.on_error != "fail_rate" or self._finished < FAILURE_RATE_MIN_SAMPLE:
            return
        bad = self._bad_in_run
        rate = bad / self._finished
        if rate > self.max_failure_rate:
            self._halt(
                "failure_rate",
                f"{bad} of {self._finished} images failed "
                f"({rate:.0%} > max_failure_rate {self.max_failure_rate:.0%})",
                fatal=False,
            )

    def _error_row(
        self, item: WorkItem, status: str, exc: BgRemovalError, code: str, message: str, duration_ms: int
    ) -> None:
        """Record a vendor call that ended in ``exc``, with its attempts and lost (maybe billed) replies."""
        lost = _possibly_charged(exc)
        self.result.possibly_charged += lost
        self._row(
            item.source,
            item.destination,
            status,
            error_code=code,
            error_message=message,
            request_id=exc.request_id,
            possibly_charged=lost,
            attempts=int(getattr(exc, "attempts", 0) or 0),
            duration_ms=duration_ms,
        )

    # -- one image -----------------------------------------------------------------------------
    async def _process(self, item: WorkItem) -> bool:
        """Process one image; True when its output exists afterwards (written by us or another run)."""
        started = time.monotonic()
        source, dest = item.source, item.destination

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        if self.claims is not None:
            try:
                holder = await self._blocking(self.claims.acquire, dest)
            except StorageError as exc:  # nothing was paid: this image alone fails, the batch goes on
                self._bad_in_run += 1
                self._row(
                    source,
                    dest,
                    "failed",
                    error_code=type(exc).__name__,
                    error_message=f"could not claim the output before the vendor call (nothing paid): {exc}",
                    duration_ms=elapsed(),
                )
                return False  # nothing held: release() is a no-op
            if holder is not None:
                self._row(
                    source,
                    dest,
                    "pending",
                    error_code="claimed_elsewhere",
                    error_message=f"another run is processing this output ({holder})",
                    duration_ms=elapsed(),
                )
                return False
        try:
            data = await self._blocking(
                self.storage.read, source.bucket, source.name, generation=source.generation
            )
        except StorageError as exc:
            self._bad_in_run += 1
            self._row(
                source,
                dest,
                "failed",
                error_code=type(exc).__name__,
                error_message=str(exc),
                duration_ms=elapsed(),
            )
            return False
        try:
            result = await self.processor.process(data, posixpath.basename(source.name) or "image")
        except InputRejectedError as exc:
            self._bad_in_run += 1
            self._error_row(item, "rejected", exc, exc.code or "rejected", exc.message, elapsed())
            return False
        except (OutOfCreditsError, VendorAuthError) as exc:
            reason = "out_of_credits" if isinstance(exc, OutOfCreditsError) else "auth_failed"
            self._halt(reason, str(exc), fatal=True, error=exc)
            self._error_row(item, "pending", exc, exc.code or reason, str(exc), elapsed())
            return False
        except BgRemovalError as exc:
            self._bad_in_run += 1
            self._error_row(item, "failed", exc, exc.code or type(exc).__name__, str(exc), elapsed())
            return False
        finally:
            del data
        credits, estimated = self._credits_of(result.credits_charged)
        self.result.credits_spent += credits
        self.result.credits_estimated |= estimated
        self.result.possibly_charged += result.possibly_charged_retries
        common = {
            "request_id": result.request_id,
            "credits": str(credits),
            "credits_estimated": estimated,
            "possibly_charged": result.possibly_charged_retries,
            "attempts": result.attempts,
        }
        try:
            await self._blocking(
                self.storage.write,
                self.plan.spec.destination_bucket,
                dest,
                result.content,
                content_type=result.content_type,
                metadata=self._metadata(item, result.request_id, credits),
                if_generation_match=item.replace_generation if item.replace_generation is not None else 0,
                idempotency_token=f"{self.writer_id}:{source.generation}:{self.processor.fingerprint}",
            )
        except WriteConflictError:
            try:
                current = await self._blocking(self.storage.stat, self.plan.spec.destination_bucket, dest)
            except StorageError:
                current = None
            if current is not None and is_finished(
                current, source, self.processor.fingerprint, self.processor.vendor
            ):
                self._row(
                    source,
                    dest,
                    "skipped",
                    error_code="done_concurrently",
                    error_message="another run wrote this output first",
                    duration_ms=elapsed(),
                    **common,
                )
            else:
                self._bad_in_run += 1
                self._row(
                    source,
                    dest,
                    "failed",
                    error_code="output_exists",
                    error_message="the destination appeared during the run; not overwritten",
                    duration_ms=elapsed(),
                    **common,
                )
            return True
        except StorageError as exc:
            self._bad_in_run += 1
            self._row(
                source,
                dest,
                "failed",
                error_code="upload_failed",
                error_message=f"vendor result could not be stored (it was paid for): {exc}",
                duration_ms=elapsed(),
                **common,
            )
            return False
        uri = f"gs://{self.plan.spec.destination_bucket}/{dest}"
        if len(self.result.sample_outputs) < SAMPLE_OUTPUTS:
            self.result.sample_outputs.append(uri)
        if len(self.result.lineage) < LINEAGE_CAP:
            self.result.lineage.append((source.uri, uri))
        self._row(source, dest, "done", duration_ms=elapsed(), bytes_out=len(result.content), **common)
        return True

    async def _process_and_release(self, item: WorkItem) -> None:
        written = await self._process(item)
        if not written and self.claims is not None:
            try:
                await self._blocking(self.claims.release, item.destination)
            except StorageError as exc:  # best effort: the claim's lease runs out by itself
                log.warning(
                    "Could not release the claim on %s (it expires with its lease): %s", item.destination, exc
                )

    async def _worker(self) -> None:
        while (item := self._next_item()) is not None:
            self._in_flight += 1
            try:
                await self._process_and_release(item)
            finally:
                self._in_flight -= 1
                self._finished += 1
                self._check_failure_rate()
                self.progress.update(self._finished, self.result.counts, self.result.credits_spent)

    # -- the run -------------------------------------------------------------------------------
    async def run(self) -> BatchResult:
        """Process every billable item (or until a halt) and return the result."""
        started = time.monotonic()
        for outcome in self.plan.settled:
            self._row(
                outcome.source,
                outcome.destination,
                outcome.status,
                error_code=outcome.code,
                error_message=outcome.message,
            )
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_concurrency + 2, thread_name_prefix="bgremoval-io"
        )
        try:
            workers = min(self.max_concurrency, max(1, len(self.plan.items)))
            await asyncio.gather(*(self._worker() for _ in range(workers)))
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None
        reason = self._halt_reason
        for item in self._items:  # never submitted
            code = reason[0] if reason else "not_started"
            message = reason[1] if reason else "not started"
            self._row(item.source, item.destination, "pending", error_code=code, error_message=message)
        self.result.duration_s = time.monotonic() - started
        if reason is not None:
            self.result.halt = await self._halt_info(reason)
        self.progress.update(self._finished, self.result.counts, self.result.credits_spent, force=True)
        return self.result

    async def _halt_info(self, reason: tuple[str, str, bool]) -> HaltInfo:
        code, message, fatal = reason
        pending = self.result.counts["pending"]
        available: Decimal | None = None
        if code == "out_of_credits" and self.balance_probe is not None:
            with contextlib.suppress(BgRemovalError):
                available = (await self.balance_probe()).remaining
        return HaltInfo(
            reason=code,
            vendor=self.processor.vendor,
            message=message,
            remaining_images=pending,
            needed=self.processor.cost_per_image * pending,
            available=available,
            fatal=fatal,
        )
