"""The batch engine over a real fake-gcs-server, with a scripted processor standing in for a vendor.

These exercise the engine's own rules (budgets, halts, failure semantics, claims, idempotency,
bounded concurrency); the vendor hooks are exercised end to end in tests/integration.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from PIL import Image

from airflow_provider_bgremoval.exceptions import (
    InputRejectedError,
    ResultDownloadError,
    TransientVendorError,
    VendorAuthError,
    VendorRequestError,
)
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.pipeline.claims import META_EXPIRES, ClaimStore
from airflow_provider_bgremoval.pipeline.engine import BatchRunner, run_batch
from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter, read_manifest
from airflow_provider_bgremoval.pipeline.planning import (
    META_OPTIONS_HASH,
    META_SOURCE,
    META_SOURCE_GENERATION,
    META_VENDOR,
    BatchSpec,
    DestinationCollisionError,
    OutputIdentity,
    plan_batch,
)
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import CallStats
from airflow_provider_bgremoval.storage.exceptions import StorageUnavailableError
from airflow_provider_bgremoval.storage.gcs import GcsStorage

pytestmark = pytest.mark.integration


def png(size: tuple[int, int] = (80, 60), color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


class ScriptedProcessor:
    """A processor whose outcome per file name is scripted; counts calls like a vendor's ledger."""

    vendor = "fake"
    operation = "remove_background"
    extension = ".png"
    limits = InputLimits(max_bytes=1_000_000, min_side=32, max_side=4000)

    def __init__(self, script: Callable[[str, int], Any] | None = None, *, delay: float = 0.0) -> None:
        self.script = script
        self.delay = delay
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fingerprint = "fp1"
        self.cost_per_image = Decimal(1)

    async def process(self, data: bytes, filename: str, stats: CallStats | None = None) -> ImageResult:
        self.calls.append(filename)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            outcome = self.script(filename, len(self.calls)) if self.script else None
            if isinstance(outcome, BaseException):
                raise outcome
            return ImageResult(
                content=png((40, 30), "blue"),
                content_type="image/png",
                vendor="fake",
                credits_charged=outcome if isinstance(outcome, Decimal) else None,
            )
        finally:
            self.in_flight -= 1


def seed(storage: GcsStorage, bucket: str, names: list[str], data: bytes | None = None) -> None:
    for name in names:
        storage.write(bucket, name, data if data is not None else png(), content_type="image/png")


def run(storage: GcsStorage, spec: BatchSpec, processor: ScriptedProcessor, **kwargs: Any):
    async def go():
        plan = await plan_batch(
            storage,
            spec,
            extension=processor.extension,
            identity=OutputIdentity.of(processor),
            limits=processor.limits,
        )
        manifest = ManifestWriter()
        runner = BatchRunner(storage, processor, plan, manifest, **kwargs)
        result = await runner.run()
        return plan, result, read_manifest(manifest.getvalue())

    return asyncio.run(go())


def test_processes_every_image_writes_metadata_and_rerun_skips(buckets) -> None:
    storage, src, dst = buckets
    names = [f"in/{i:03d}.jpg" for i in range(12)] + ["in/deep/a b #?ü.png"]
    seed(storage, src, names)
    spec = BatchSpec(
        source_bucket=src, source_prefix="in/", destination_bucket=dst, destination_prefix="out/"
    )
    processor = ScriptedProcessor()
    plan, result, rows = run(storage, spec, processor, max_concurrency=4)
    assert result.counts["done"] == 13 and len(processor.calls) == 13
    assert result.credits_spent == 13 and result.credits_estimated
    out = storage.stat(dst, "out/deep/a b #?ü.png")
    assert out is not None
    assert out.metadata["bgremoval-source"] == f"gs://{src}/in/deep/a b #?ü.png"
    assert out.metadata["bgremoval-options-hash"] == "fp1"
    assert {row["status"] for row in rows} == {"done"}
    # Rerun: everything is finished, nothing is paid for.
    processor2 = ScriptedProcessor()
    _, result2, rows2 = run(storage, spec, processor2)
    assert processor2.calls == []
    assert result2.counts["skipped"] == 13
    assert {row["error_code"] for row in rows2} == {"already_done"}


def test_changed_options_are_not_overwritten_without_overwrite(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, ["a.png"])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    run(storage, spec, ScriptedProcessor())
    other = ScriptedProcessor()
    other.fingerprint = "fp2"
    _, result, rows = run(storage, spec, other)
    assert other.calls == [] and rows[0]["error_code"] == "output_exists"
    spec_overwrite = BatchSpec(
        source_bucket=src, destination_bucket=dst, destination_prefix="o/", overwrite=True
    )
    _, result, _ = run(storage, spec_overwrite, other)
    assert result.counts["done"] == 1
    assert storage.stat(dst, "o/a.png").metadata["bgremoval-options-hash"] == "fp2"


def outputs_appearing_during_the_call(storage: Any, src: str, dst: str) -> Callable[[str, int], None]:
    """
    Seed ``mine.png`` and ``theirs.png``; during each call its output appears: ``theirs.png`` finished
    by another run (its metadata), ``mine.png`` as a foreign object.
    """
    seed(storage, src, ["mine.png", "theirs.png"])
    source = {name: storage.stat(src, name) for name in ("mine.png", "theirs.png")}

    def another_writer(name: str, count: int) -> None:
        info = source[name]
        assert info is not None
        finished = {
            META_SOURCE: info.uri,
            META_SOURCE_GENERATION: str(info.generation),
            META_VENDOR: "fake",
            META_OPTIONS_HASH: "fp1",
        }
        storage.write(
            dst, name, png(), content_type="image/png", metadata=finished if name == "theirs.png" else {}
        )

    return another_writer


def test_a_write_lost_to_another_run_is_skipped_and_to_a_foreign_object_failed(buckets) -> None:
    storage, src, dst = buckets
    another_writer = outputs_appearing_during_the_call(storage, src, dst)
    _, result, rows = run(
        storage, BatchSpec(source_bucket=src, destination_bucket=dst), ScriptedProcessor(another_writer)
    )
    by_name = {row["source"].rsplit("/", 1)[-1]: row for row in rows}
    assert (by_name["theirs.png"]["status"], by_name["theirs.png"]["error_code"]) == (
        "skipped",
        "done_concurrently",
    )
    assert (by_name["mine.png"]["status"], by_name["mine.png"]["error_code"]) == ("failed", "output_exists")
    assert result.credits_spent == 2  # both calls were paid; neither output was overwritten


def test_a_write_lost_to_a_foreign_object_releases_the_claim_and_one_lost_to_another_run_keeps_it(
    buckets,
) -> None:
    """Our output was not written where a foreign object is in the way: the claim is released (another
    run is not held back for a lease); a finished output another run wrote keeps the claim."""
    storage, src, dst = buckets
    another_writer = outputs_appearing_during_the_call(storage, src, dst)
    spec = BatchSpec(source_bucket=src, destination_bucket=dst)
    claims = ClaimStore(storage, dst, spec.internal_prefix, "dag/run1/t/-1")
    _, _, rows = run(storage, spec, ScriptedProcessor(another_writer), claims=claims)
    assert sorted((row["status"], row["error_code"]) for row in rows) == [
        ("failed", "output_exists"),
        ("skipped", "done_concurrently"),
    ]
    other = ClaimStore(storage, dst, spec.internal_prefix, "dag/run2/t/-1")
    generation = {name: storage.stat(src, name).generation for name in ("mine.png", "theirs.png")}
    assert other.acquire("mine.png", generation["mine.png"]) is None  # released
    assert other.acquire("theirs.png", generation["theirs.png"]) is not None  # still ours


def test_collisions_are_refused_before_any_call(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, ["x/a.jpg", "x/a.png", "x/b.jpg"])
    processor = ScriptedProcessor()
    spec = BatchSpec(source_bucket=src, source_prefix="x/", destination_bucket=dst)
    with pytest.raises(DestinationCollisionError, match=r"'x/a.jpg' and 'x/a.png'"):
        run(storage, spec, processor)
    assert processor.calls == []


def test_local_rejects_cost_nothing(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, ["good.png"])
    storage.write(src, "empty.png", b"", content_type="image/png")
    storage.write(src, "tiny.png", png((16, 16)), content_type="image/png")
    storage.write(src, "text.jpg", b"<html>not an image</html>", content_type="image/jpeg")
    processor = ScriptedProcessor()
    _, result, rows = run(
        storage, BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/"), processor
    )
    assert processor.calls == ["good.png"]
    codes = {
        row["source"].rsplit("/", 1)[1]: row["error_code"] for row in rows if row["status"] == "rejected"
    }
    assert codes == {
        "empty.png": "empty_file",
        "tiny.png": "resolution_too_low",
        "text.jpg": "unsupported_image",
    }


def test_auth_failure_is_fatal_for_the_batch(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, [f"{i}.png" for i in range(6)])
    processor = ScriptedProcessor(lambda n, c: VendorAuthError("revoked", vendor="fake", status_code=401))
    _, result, _ = run(
        storage, BatchSpec(source_bucket=src, destination_bucket=dst), processor, max_concurrency=2
    )
    assert result.halt is not None and result.halt.reason == "auth_failed" and result.halt.fatal
    assert result.counts["pending"] == 6 and len(processor.calls) == 2


def test_per_image_errors_do_not_stop_the_batch_and_failure_rate_does(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, [f"{i:02d}.png" for i in range(30)])

    def script(name: str, call: int) -> Any:
        if name.startswith("0"):
            return TransientVendorError("gave up", vendor="fake", status_code=503, possibly_charged=True)
        if name == "10.png":
            return InputRejectedError("no subject", vendor="fake", code="unknown_foreground")
        return None

    processor = ScriptedProcessor(script)
    _, result, rows = run(
        storage,
        BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="a/"),
        processor,
        max_concurrency=1,
    )
    assert result.counts == {"failed": 10, "rejected": 1, "done": 19}
    assert result.possibly_charged == 10
    processor = ScriptedProcessor(script)
    _, result, _ = run(
        storage,
        BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="b/"),
        processor,
        max_concurrency=1,
        on_error="fail_rate",
        max_failure_rate=0.5,
    )
    assert result.halt is not None and result.halt.reason == "failure_rate"
    assert result.counts["pending"] > 0 and len(processor.calls) < 30


def test_the_failure_rate_judges_only_images_sent_to_the_vendor(buckets) -> None:
    """
    20 images held by another run's live claims (pending, never sent) come first, then 40 whose billed
    calls fail: every image sent failed, so the batch halts after the first 10 sent, not after 21
    (with the pending rows diluting the rate to 10 of 30, then 11 of 31...).
    """
    storage, src, dst = buckets
    held, failing = [f"a{i:02d}.png" for i in range(20)], [f"b{i:02d}.png" for i in range(40)]
    seed(storage, src, held + failing)
    spec = BatchSpec(source_bucket=src, destination_bucket=dst)
    other = ClaimStore(storage, dst, spec.internal_prefix, "dag/other_run/t/-1")
    for name in held:
        assert other.acquire(name, storage.stat(src, name).generation) is None
    billed = ResultDownloadError("result URL answered 404; the call was billed", vendor="fake")
    processor = ScriptedProcessor(lambda name, call: billed)
    claims = ClaimStore(storage, dst, spec.internal_prefix, "dag/run/t/-1")
    _, result, rows = run(
        storage, spec, processor, claims=claims, max_concurrency=1, on_error="fail_rate", max_failure_rate=0.5
    )
    assert result.halt is not None and result.halt.reason == "failure_rate"
    assert result.halt.message.startswith("10 of 10 images sent to the vendor failed")
    assert processor.calls == failing[:10]
    assert result.pending_reasons == {"claimed_elsewhere": 20, "failure_rate": 30}


def test_concurrency_is_bounded(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, [f"{i}.png" for i in range(24)])
    processor = ScriptedProcessor(delay=0.02)
    _, result, _ = run(
        storage, BatchSpec(source_bucket=src, destination_bucket=dst), processor, max_concurrency=5
    )
    assert result.counts["done"] == 24
    assert processor.max_in_flight == 5


def test_an_image_costs_two_thread_hand_offs_claim_and_read_in_one(buckets, monkeypatch) -> None:
    """Claim + read run in one I/O-thread job, the output write in another (was three hand-offs)."""
    storage, src, dst = buckets
    seed(storage, src, [f"{i}.png" for i in range(3)])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    jobs: list[str] = []
    original = BatchRunner._blocking

    async def counting(self: BatchRunner, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        jobs.append(fn.__name__)
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(BatchRunner, "_blocking", counting)
    claims = ClaimStore(storage, dst, spec.internal_prefix, "dag/run/t/-1")
    _, result, _ = run(storage, spec, ScriptedProcessor(), claims=claims, max_concurrency=1)
    assert result.counts["done"] == 3
    assert sorted(jobs) == ["_acquire_then_read"] * 3 + ["write"] * 3


def test_a_source_replaced_after_its_claim_fails_alone_and_frees_the_claim(buckets, monkeypatch) -> None:
    """The read of the claim's hand-off fails: the image is failed (nothing paid), its claim released."""
    storage, src, dst = buckets
    seed(storage, src, ["a.png", "b.png"])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    claims = ClaimStore(storage, dst, spec.internal_prefix, "dag/run/t/-1")
    acquire = claims.acquire

    def acquire_then_replace(destination: str, generation: int = 0) -> Any:
        held = acquire(destination, generation)
        if destination == "o/a.png":  # the planned generation is gone before the read
            storage.write(src, "a.png", png(color="blue"), content_type="image/png", if_generation_match=None)
        return held

    monkeypatch.setattr(claims, "acquire", acquire_then_replace)
    processor = ScriptedProcessor()
    _, result, rows = run(storage, spec, processor, claims=claims)
    assert processor.calls == ["b.png"] and result.counts == {"done": 1, "failed": 1}
    (failed,) = [row for row in rows if row["status"] == "failed"]
    assert failed["error_code"] == "ObjectChangedError" and "no longer exists" in failed["error_message"]
    after = ClaimStore(storage, dst, spec.internal_prefix, "dag/other/t/-1")
    assert after.acquire("o/a.png", storage.stat(src, "a.png").generation) is None  # a new generation: free
    released = storage.stat(dst, claims._claim_name("o/a.png", failed["source_generation"]))
    assert released is not None and released.metadata[META_EXPIRES] == "0"


def test_claims_keep_overlapping_runs_from_paying_twice(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, [f"{i}.png" for i in range(8)])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    first = ClaimStore(storage, dst, spec.internal_prefix, "dag/run1/t/-1")
    generations = [storage.stat(src, f"{i}.png").generation for i in range(8)]  # claims are per generation
    for i in range(4):  # run 1 is busy with half of the images
        assert first.acquire(f"o/{i}.png", generations[i]) is None
    processor = ScriptedProcessor()
    claims = ClaimStore(storage, dst, spec.internal_prefix, "dag/run2/t/-1")
    _, result, rows = run(storage, spec, processor, claims=claims)
    assert sorted(processor.calls) == [f"{i}.png" for i in range(4, 8)]
    assert result.counts["pending"] == 4
    assert {row["error_code"] for row in rows if row["status"] == "pending"} == {"claimed_elsewhere"}
    # The same task instance (a retry) takes its own claims over at once.
    again = ClaimStore(storage, dst, spec.internal_prefix, "dag/run1/t/-1")
    assert again.acquire("o/0.png", generations[0]) is None
    # An expired claim can be taken over by anyone: an hour after GCS wrote it, by GCS's clock (read
    # from a write of the taker's own; its clock only counts the seconds since).
    late_clock = [1e12]
    late = ClaimStore(storage, dst, spec.internal_prefix, "dag/run3/t/-1", clock=lambda: late_clock[0])
    assert late.acquire("o/1.png", generations[1]) is not None  # live: a clock far ahead does not end it
    late_clock[0] += 3601
    assert late.acquire("o/1.png", generations[1]) is None


def _dead_try_then_its_retry(
    storage: GcsStorage, spec: BatchSpec, before_retry: Callable[[], None] = lambda: None
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """One plan; a try of ``dag/run1/t/0`` stores 4 images and dies with its claims held, then (after
    ``before_retry``) its retry runs the whole plan: the retry's result, rows and calls."""
    owner = "dag/run1/t/0"

    async def go() -> tuple[Any, list[dict[str, Any]], list[str]]:
        processor = ScriptedProcessor()
        identity, limits = OutputIdentity.of(processor), processor.limits
        plan = await plan_batch(
            storage, spec, extension=processor.extension, identity=identity, limits=limits
        )
        dead = ClaimStore(storage, spec.destination_bucket, spec.internal_prefix, owner)
        await BatchRunner(storage, processor, plan, ManifestWriter(), max_images=4, claims=dead).run()
        before_retry()
        retry_processor, manifest = ScriptedProcessor(), ManifestWriter()
        claims = ClaimStore(storage, spec.destination_bucket, spec.internal_prefix, owner)
        result = await BatchRunner(storage, retry_processor, plan, manifest, claims=claims).run()
        return result, read_manifest(manifest.getvalue()), retry_processor.calls

    return asyncio.run(go())


def test_a_retry_that_cannot_check_its_dead_try_s_outputs_pays_nothing_for_them(buckets, monkeypatch) -> None:
    """The retry takes its own claims over but the stat of their outputs fails: paying could buy those
    outputs a second time, so those images fail unpaid (the claim released as "output unknown", so
    the next taker looks first too); the images the dead try never reached are processed."""
    storage, src, dst = buckets
    seed(storage, src, [f"{i}.png" for i in range(8)])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    stat = storage.stat

    def failing_stat(bucket: str, name: str, **kwargs: Any) -> Any:
        if bucket == dst and name.startswith("o/") and "_bgremoval" not in name:
            raise StorageUnavailableError("stat failed: GCS stayed unavailable", bucket=bucket, name=name)
        return stat(bucket, name, **kwargs)

    with monkeypatch.context() as patch:
        result, rows, calls = _dead_try_then_its_retry(
            storage, spec, before_retry=lambda: patch.setattr(storage, "stat", failing_stat)
        )
    assert len(calls) == 4 and result.counts == {"failed": 4, "done": 4}  # was 8 calls: 4 paid twice
    failed = [row for row in rows if row["status"] == "failed"]
    assert {row["error_code"] for row in failed} == {"StorageUnavailableError"}
    assert all("nothing paid" in row["error_message"] for row in failed)
    assert {row["source"].rsplit("/", 1)[-1] for row in failed}.isdisjoint(calls)
    later = ScriptedProcessor()  # another run takes the released claims, looks, and skips the 4
    _, again, _ = run(
        storage, spec, later, claims=ClaimStore(storage, dst, spec.internal_prefix, "dag/run2/t/-1")
    )
    assert later.calls == [] and again.counts == {"skipped": 8}


def test_a_changed_source_is_paid_once_more_while_the_last_run_s_claims_are_live(buckets) -> None:
    """Claims are per source generation: a run that made the old output holds no claim on the new one,
    so a rerun with ``overwrite=True`` pays for the changed source at once (the other is skipped)."""
    storage, src, dst = buckets
    seed(storage, src, ["a.png", "b.png"])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/", overwrite=True)
    first = ScriptedProcessor()
    _, result, _ = run(
        storage, spec, first, claims=ClaimStore(storage, dst, spec.internal_prefix, "dag/run1/t/-1")
    )
    assert result.counts["done"] == 2  # run 1's claims stay live for the lease (an hour)
    old = storage.stat(src, "a.png")
    assert old is not None
    storage.write(  # a new generation of a.png
        src, "a.png", png(color="blue"), content_type="image/png", if_generation_match=old.generation
    )
    again = ScriptedProcessor()
    claims = ClaimStore(storage, dst, spec.internal_prefix, "dag/run2/t/-1")
    _, result, rows = run(storage, spec, again, claims=claims)
    assert again.calls == ["a.png"] and result.counts["done"] == 1 and result.counts["skipped"] == 1
    assert not result.counts["pending"]
    # the same generation is still protected: a third run finds run 2's live claim
    assert claims.acquire("o/a.png", storage.stat(src, "a.png").generation) is None  # its own claim
    other = ClaimStore(storage, dst, spec.internal_prefix, "dag/run3/t/-1")
    assert other.acquire("o/a.png", storage.stat(src, "a.png").generation) is not None


def test_a_retry_skips_what_its_dead_try_stored_under_its_claims(buckets) -> None:
    """A plan made before the try died lists every image; the retry takes its own claims over and
    skips the outputs the dead try stored instead of paying for them again."""
    storage, src, dst = buckets
    seed(storage, src, [f"{i}.png" for i in range(8)])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    result, rows, calls = _dead_try_then_its_retry(storage, spec)
    assert len(calls) == 4 and result.counts == {"skipped": 4, "done": 4}
    assert {row["error_code"] for row in rows if row["status"] == "skipped"} == {"already_done"}
    assert {row["source"].rsplit("/", 1)[-1] for row in rows if row["status"] == "skipped"}.isdisjoint(calls)


def _overlapping_runs(storage: GcsStorage, spec: BatchSpec) -> tuple[list[dict[str, Any]], ...]:
    """Runs A then B over one plan each (B planned while A was working); each run's rows and calls."""

    async def go() -> tuple[list[dict[str, Any]], ...]:
        processors = ScriptedProcessor(), ScriptedProcessor()
        identity, limits = OutputIdentity.of(processors[0]), processors[0].limits
        plans = [await plan_batch(storage, spec, extension=".png", identity=identity, limits=limits)]
        plans.append(await plan_batch(storage, spec, extension=".png", identity=identity, limits=limits))
        found = []
        for owner, processor, plan in zip(("dag/runA/t/-1", "dag/runB/t/-1"), processors, plans, strict=True):
            manifest = ManifestWriter()
            claims = ClaimStore(storage, spec.destination_bucket, spec.internal_prefix, owner)
            await BatchRunner(storage, processor, plan, manifest, claims=claims, writer_id=owner).run()
            found.append([*read_manifest(manifest.getvalue()), {"calls": processor.calls}])
        return tuple(found)

    return asyncio.run(go())


def _lose_the_reply_of_the_first_output_write(
    storage: GcsStorage, monkeypatch: pytest.MonkeyPatch, dst: str, *, stat_fails: bool = False
) -> None:
    """The first write of ``a.png`` to ``dst`` lands but raises (its reply lost, retries exhausted);
    with ``stat_fails`` the stat right after it fails too."""
    write, stat, lost = storage.write, storage.stat, []

    def losing_write(bucket: str, name: str, data: bytes, **kwargs: Any) -> Any:
        info = write(bucket, name, data, **kwargs)
        if (bucket, name) == (dst, "a.png") and not lost:
            lost.append(name)
            raise StorageUnavailableError("writing failed: GCS stayed unavailable", bucket=bucket, name=name)
        return info

    def failing_stat(bucket: str, name: str) -> Any:
        if (bucket, name) == (dst, "a.png") and lost == ["a.png"]:
            lost.append("stat")
            raise StorageUnavailableError("stat failed: GCS stayed unavailable", bucket=bucket, name=name)
        return stat(bucket, name)

    monkeypatch.setattr(storage, "write", losing_write)
    if stat_fails:
        monkeypatch.setattr(storage, "stat", failing_stat)


def test_an_output_write_that_landed_but_raised_is_done_and_keeps_its_claim(buckets, monkeypatch) -> None:
    """The write's reply was lost after GCS stored it: the stat finds this write's token and checksums,
    so the image is done (not upload_failed) and its claim stays; an overlapping run pays nothing."""
    storage, src, dst = buckets
    seed(storage, src, ["a.png"])
    _lose_the_reply_of_the_first_output_write(storage, monkeypatch, dst)
    first, second = _overlapping_runs(storage, BatchSpec(source_bucket=src, destination_bucket=dst))
    assert (first[0]["status"], first[0]["error_code"], first[0]["credits"]) == ("done", None, "1")
    assert (second[0]["status"], second[0]["error_code"]) == ("pending", "claimed_elsewhere")
    assert len(first[-1]["calls"]) + len(second[-1]["calls"]) == 1  # paid once


def test_an_output_write_that_raised_and_cannot_be_checked_lets_the_next_taker_look(
    buckets, monkeypatch
) -> None:
    """The write raised and the stat after it failed: the image fails upload_failed, and its claim is
    released so that the next run looks for an output before paying (it finds A's and skips it)."""
    storage, src, dst = buckets
    seed(storage, src, ["a.png"])
    _lose_the_reply_of_the_first_output_write(storage, monkeypatch, dst, stat_fails=True)
    first, second = _overlapping_runs(storage, BatchSpec(source_bucket=src, destination_bucket=dst))
    assert (first[0]["status"], first[0]["error_code"]) == ("failed", "upload_failed")
    assert "could not be checked" in first[0]["error_message"]
    assert (second[0]["status"], second[0]["error_code"]) == ("skipped", "already_done")
    assert len(first[-1]["calls"]) + len(second[-1]["calls"]) == 1  # paid once


def test_an_output_write_that_failed_and_stored_nothing_frees_its_claim_for_the_next_run(
    buckets, monkeypatch
) -> None:
    """The stat shows nothing was stored: the claim is released as "no output", the next run pays."""
    storage, src, dst = buckets
    seed(storage, src, ["a.png"])
    write = storage.write

    def refused(bucket: str, name: str, data: bytes, **kwargs: Any) -> Any:
        if (bucket, name) == (dst, "a.png"):
            raise StorageUnavailableError("writing failed: GCS stayed unavailable", bucket=bucket, name=name)
        return write(bucket, name, data, **kwargs)

    monkeypatch.setattr(storage, "write", refused)
    first, _ = _overlapping_runs(storage, BatchSpec(source_bucket=src, destination_bucket=dst))
    assert (first[0]["status"], first[0]["error_code"]) == ("failed", "upload_failed")
    assert "could not be checked" not in first[0]["error_message"]
    spec = BatchSpec(source_bucket=src, destination_bucket=dst)
    (claim,) = storage.list_objects(dst, spec.internal_prefix + "claims/")
    assert claim.metadata[META_EXPIRES] == "0"


def test_empty_prefix_is_nothing_to_do(buckets) -> None:
    storage, src, dst = buckets
    processor = ScriptedProcessor()
    plan, result, rows = run(
        storage, BatchSpec(source_bucket=src, source_prefix="none/", destination_bucket=dst), processor
    )
    assert plan.total == 0 and rows == [] and result.halt is None


def test_unsafe_names_are_rejected(buckets) -> None:
    storage, src, dst = buckets
    seed(storage, src, ["p/ok.png", "p/../escape.png", "p/back\\slash.png"])
    processor = ScriptedProcessor()
    _, result, rows = run(
        storage, BatchSpec(source_bucket=src, source_prefix="p/", destination_bucket=dst), processor
    )
    assert processor.calls == ["ok.png"]
    assert sorted(row["error_code"] for row in rows if row["status"] == "rejected") == [
        "unsafe_name",
        "unsafe_name",
    ]


@pytest.mark.timeout(60)
def test_the_grace_ending_while_a_settled_image_releases_its_claim_leaves_the_batch_and_the_claim_free(
    buckets,
) -> None:
    """
    A stop arrives during a call that then fails (settled ``failed``, still at the call stage): the
    grace (0 s) ends while its claim is being released. The image is not abandoned (its row stands), the
    batch returns its record through ``run_batch`` instead of a ``CancelledError``, and the claim is free.
    """
    storage, src, dst = buckets
    seed(storage, src, ["a.png"])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst)
    runners: list[BatchRunner] = []

    def stop_then_refuse(name: str, call: int) -> BaseException:
        runners[0].request_stop("terminated", "the task was terminated")
        return VendorRequestError("bad request", vendor="fake", status_code=400)

    processor = ScriptedProcessor(stop_then_refuse)
    plan = asyncio.run(
        plan_batch(
            storage, spec, extension=".png", identity=OutputIdentity.of(processor), limits=processor.limits
        )
    )
    manifest = ManifestWriter()
    claims = ClaimStore(storage, dst, spec.internal_prefix, "dag/run1/t/-1")
    runners.append(BatchRunner(storage, processor, plan, manifest, claims=claims, drain_grace=0.0))
    assert run_batch(runners[0]) is None
    rows = read_manifest(manifest.getvalue())
    assert [(row["status"], row["error_code"]) for row in rows] == [("failed", "VendorRequestError")]
    assert runners[0].result.interrupted == "terminated"
    other = ClaimStore(storage, dst, spec.internal_prefix, "dag/run2/t/-1")
    assert other.acquire("a.png", plan.items[0].source.generation) is None  # released, not live


class _RaisingRunner:
    """Stands in for a BatchRunner whose run fails with ``error`` (run_batch only awaits run())."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.stops: list[tuple[str, str]] = []

    async def run(self) -> None:
        await asyncio.sleep(0.6)  # outlast one 0.5 s wait of run_batch
        raise self.error

    def request_stop(self, code: str, message: str) -> None:
        self.stops.append((code, message))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("error", [TimeoutError("vendor took too long"), RuntimeError("bug")])
def test_run_batch_raises_the_batch_s_own_error(error: BaseException) -> None:
    """The batch's own error (a TimeoutError too) is raised, not taken for the wait's timeout."""
    runner = _RaisingRunner(error)
    with pytest.raises(type(error), match=str(error)):
        run_batch(runner)  # type: ignore[arg-type]
    assert runner.stops == []
