"""ClaimStore over a real fake-gcs-server: releases, and claim writes that raised but may have landed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.pipeline.claims import META_EXPIRES, META_OWNER, ClaimHolder, ClaimStore
from airflow_provider_bgremoval.pipeline.planning import BatchSpec
from airflow_provider_bgremoval.retry import LEASE_MARGIN_SECONDS
from airflow_provider_bgremoval.storage.exceptions import StorageUnavailableError
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.unit.pipeline.test_engine import ScriptedProcessor, run, seed

pytestmark = pytest.mark.integration

PREFIX = "o/_bgremoval/"


def _lose_claim_replies(storage: GcsStorage, monkeypatch: pytest.MonkeyPatch, times: int = 1) -> list[str]:
    """The next ``times`` claim writes land but raise (their replies lost, retries exhausted)."""
    write, lost = storage.write, []

    def losing_write(bucket: str, name: str, data: bytes, **kwargs: Any) -> Any:
        info = write(bucket, name, data, **kwargs)
        if "/claims/" in name and len(lost) < times:
            lost.append(name)
            raise StorageUnavailableError("writing failed: GCS stayed unavailable", bucket=bucket, name=name)
        return info

    monkeypatch.setattr(storage, "write", losing_write)
    return lost


def _claims(storage: GcsStorage, dst: str) -> list[dict[str, str]]:
    return [dict(info.metadata) for info in storage.list_objects(dst, PREFIX + "claims/")]


def test_releases_say_whether_the_next_taker_must_look_for_an_output(buckets) -> None:
    storage, _, dst = buckets
    clock = [1_000_000.0]
    mine = ClaimStore(storage, dst, PREFIX, "dag/run1/t/-1", clock=lambda: clock[0])
    assert mine.acquire("a.png", 1) is None and mine.acquire("b.png", 1) is None
    mine.release("a.png")  # nothing stored: the next taker pays at once
    mine.release("b.png", output_unknown=True)  # a write raised: it may have landed
    by_expiry = sorted(meta[META_EXPIRES] for meta in _claims(storage, dst))
    assert by_expiry == ["0", "1"]
    other = ClaimStore(storage, dst, PREFIX, "dag/run2/t/-1", clock=lambda: clock[0] + 1)
    assert other.acquire("a.png", 1) is None and other.acquire("b.png", 1) is None
    assert other.taken_over == {"b.png"}


def test_a_claim_create_that_landed_but_raised_is_released(buckets, monkeypatch) -> None:
    """The claim is there under our owner though the write raised: it is released at once, not left
    live for the lease (other runs would leave the image pending for an hour)."""
    storage, _, dst = buckets
    lost = _lose_claim_replies(storage, monkeypatch)
    mine = ClaimStore(storage, dst, PREFIX, "dag/run1/t/-1")
    with pytest.raises(StorageUnavailableError):
        mine.acquire("a.png", 1)
    assert len(lost) == 1
    (meta,) = _claims(storage, dst)
    assert meta[META_OWNER] == "dag/run1/t/-1" and float(meta[META_EXPIRES]) <= mine.clock()
    other = ClaimStore(storage, dst, PREFIX, "dag/run2/t/-1")
    assert other.acquire("a.png", 1) is None  # free now
    assert other.taken_over == {"a.png"}  # released as expired: the taker looks for an output first


def test_a_lost_claim_reply_fails_the_image_unpaid_and_the_next_run_makes_it(buckets, monkeypatch) -> None:
    storage, src, dst = buckets
    seed(storage, src, ["a.png"])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    _lose_claim_replies(storage, monkeypatch)
    first = ScriptedProcessor()
    _, _, rows = run(storage, spec, first, claims=ClaimStore(storage, dst, PREFIX, "dag/run1/t/-1"))
    assert (rows[0]["status"], rows[0]["error_code"], first.calls) == (
        "failed",
        "StorageUnavailableError",
        [],
    )
    second = ScriptedProcessor()
    _, result, rows = run(storage, spec, second, claims=ClaimStore(storage, dst, PREFIX, "dag/run2/t/-1"))
    assert result.counts["done"] == 1 and second.calls == ["a.png"]  # not pending claimed_elsewhere


@pytest.mark.parametrize("lease", [0, -1, 0.0, float("nan"), float("inf"), "3600s", "", None, True, [3600]])
def test_a_lease_that_is_not_a_positive_finite_number_is_refused(gcs_storage: GcsStorage, lease: Any) -> None:
    """A lease of 0 or less expires every claim at once (two runs both pay); text or ``None`` would fail
    each image with a TypeError. Refused when the store is made, naming the operator's parameter."""
    with pytest.raises(InvalidOptionError) as caught:
        ClaimStore(gcs_storage, "dst", PREFIX, "dag/run1/t/-1", lease_seconds=lease)
    assert caught.value.parameter == "claim_lease"


def test_a_numeric_lease_text_is_read_as_seconds(gcs_storage: GcsStorage) -> None:
    store = ClaimStore(gcs_storage, "dst", PREFIX, "dag/run1/t/-1", lease_seconds="5400")  # type: ignore[arg-type]
    assert store.lease_seconds == 5400.0


@pytest.mark.parametrize("lease", [1, 90, "600", 1799.9])
def test_a_lease_shorter_than_one_image_s_stay_is_refused(gcs_storage: GcsStorage, lease: Any) -> None:
    """A claim is not renewed during its image's call: with ``lease_seconds=1`` it lapsed while the
    vendor call ran (Pixian's policy alone may take 1560 s), and another run took it over and paid
    again. The minimum is the 1800 s the engine keeps in hand for a call (LEASE_MARGIN_SECONDS)."""
    with pytest.raises(InvalidOptionError, match="shorter than the 1800 s") as caught:
        ClaimStore(gcs_storage, "dst", PREFIX, "dag/run1/t/-1", lease_seconds=lease)
    assert caught.value.parameter == "claim_lease"
    shortest = ClaimStore(gcs_storage, "dst", PREFIX, "dag/run1/t/-1", lease_seconds=LEASE_MARGIN_SECONDS)
    assert shortest.lease_seconds == 1800.0


def test_lease_left_counts_down_our_held_claim_by_the_store_s_clock_without_a_request(
    buckets, monkeypatch
) -> None:
    storage, _, dst = buckets
    clock = [1_000_000.0]
    mine = ClaimStore(storage, dst, PREFIX, "dag/run1/t/-1", lease_seconds=2000, clock=lambda: clock[0])
    assert mine.lease_left("a.png") is None  # not claimed
    assert mine.acquire("a.png", 1) is None
    clock[0] += 1650

    def no_request(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("lease_left made a storage request")

    monkeypatch.setattr(storage, "stat", no_request)
    monkeypatch.setattr(storage, "write", no_request)
    assert mine.lease_left("a.png") == 350.0
    clock[0] += 400
    assert mine.lease_left("a.png") == -50.0  # run out: another run may take it over
    monkeypatch.undo()
    mine.release("a.png")
    assert mine.lease_left("a.png") is None


def test_a_claim_held_for_millennia_leaves_the_image_pending_naming_its_holder(buckets) -> None:
    """A valid ``claim_lease`` of 10**12 s puts the expiry past year 9999: the other run's image failed
    ``internal_error`` ('unexpected ValueError during claim: year 33715 is out of range') instead of
    pending ``claimed_elsewhere``."""
    storage, src, dst = buckets
    seed(storage, src, ["a.png"])
    spec = BatchSpec(source_bucket=src, destination_bucket=dst, destination_prefix="o/")
    source = storage.stat(src, "a.png")
    assert source is not None
    holder = ClaimStore(storage, dst, PREFIX, "dag/run0/t/-1", lease_seconds=1e12)
    assert holder.acquire("o/a.png", source.generation) is None
    processor = ScriptedProcessor()
    _, result, rows = run(storage, spec, processor, claims=ClaimStore(storage, dst, PREFIX, "dag/run2/t/-1"))
    assert (rows[0]["status"], rows[0]["error_code"], processor.calls) == ("pending", "claimed_elsewhere", [])
    assert "dag/run0/t/-1 (lease expires after 9999-12-31)" in rows[0]["error_message"]
    assert result.claims_elsewhere_summary() == [
        {"holder": "dag/run0/t/-1", "lease_expires": "after 9999-12-31", "images": 1}
    ]


@pytest.mark.parametrize(
    ("expires", "shown"),
    [
        (0.0, "unknown"),
        (float("nan"), "unknown"),
        (float("inf"), "after 9999-12-31"),
        (1e20, "after 9999-12-31"),
    ],
)
def test_a_claim_expiry_is_always_printable(expires: float, shown: str) -> None:
    assert ClaimHolder("x", expires).expires_iso == shown
    assert str(ClaimHolder("x", 86400.0)) == "x (lease expires 1970-01-02T00:00:00+00:00)"


@pytest.mark.parametrize("output_unknown", [False, True])
def test_a_released_claim_is_free_for_a_reader_whose_clock_is_behind(buckets, output_unknown: bool) -> None:
    """A claim released as expired carried the release time: a run whose clock was a few seconds behind
    the releaser's saw a live claim and left the image pending ('another run is processing this
    output'), failing the task with on_pending='fail'."""
    storage, _, dst = buckets
    mine = ClaimStore(storage, dst, PREFIX, "dag/run1/t/-1", clock=lambda: 1_000_000.0)
    assert mine.acquire("a.png", 1) is None
    mine.release("a.png", output_unknown=output_unknown)
    behind = ClaimStore(storage, dst, PREFIX, "dag/run2/t/-1", clock=lambda: 1_000_000.0 - 5)
    assert behind.acquire("a.png", 1) is None
    assert behind.taken_over == ({"a.png"} if output_unknown else set())


class _Skewed:
    """A worker's wall clock: the real time plus ``skew`` seconds, moved on by hand with ``advance``."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def advance(self, seconds: float) -> None:
        self.skew += seconds

    def __call__(self) -> float:
        return time.time() + self.skew


def _count_writes(storage: GcsStorage, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the objects written from now on (the writes go through unchanged)."""
    write, names = storage.write, []

    def counted(bucket: str, name: str, data: bytes, **kwargs: Any) -> Any:
        names.append(name)
        return write(bucket, name, data, **kwargs)

    monkeypatch.setattr(storage, "write", counted)
    return names


@pytest.mark.parametrize(
    ("holder_skew", "reader_skew"),
    [(-3300, 600), (0, 3601), (0, 10**9)],
    ids=["55min-into-its-hour-reader-10min-ahead", "reader-an-hour-ahead", "reader-decades-ahead"],
)
def test_a_live_claim_is_not_taken_over_by_a_worker_whose_clock_runs_ahead(
    buckets, monkeypatch, holder_skew: float, reader_skew: float
) -> None:
    """
    The expiry was the holder's clock plus the lease, judged by the reader's clock: a worker 10 minutes
    ahead took over a claim in the last 10 minutes of its hour (here: written by a holder whose clock
    says it is 55 minutes in) while its vendor call could still be running, and paid for the image
    again. The lease now runs on GCS's clock: from the claim's ``updated`` for the lease it records,
    against GCS's time now, which the reader gets from a write of its own (one small object, once).
    """
    storage, _, dst = buckets
    holder = ClaimStore(storage, dst, PREFIX, "dag/run1/t/-1", clock=_Skewed(holder_skew))
    assert holder.acquire("a.png", 1) is None
    written = storage.stat(dst, holder._claim_name("a.png", 1))
    assert written is not None and written.updated is not None
    writes = _count_writes(storage, monkeypatch)
    ahead = ClaimStore(storage, dst, PREFIX, "dag/run2/t/-1", clock=_Skewed(reader_skew))
    found = ahead.acquire("a.png", 1)
    assert found is not None and found.owner == "dag/run1/t/-1", found
    assert found.expires == pytest.approx(written.updated.timestamp() + 3600, abs=1)  # GCS's clock
    assert ahead.taken_over == set()
    assert ahead.acquire("a.png", 1) is not None  # GCS's time is known now: no more clock writes
    assert [name.startswith(PREFIX + "claims/clocks/") for name in writes] == [False, True, False]


@pytest.mark.parametrize("reader_skew", [-600.0, 0.0, 600.0, -1e9])
def test_a_claim_whose_lease_ran_out_on_gcs_s_clock_is_taken_over_whatever_the_reader_s_clock(
    buckets, monkeypatch, reader_skew: float
) -> None:
    """The reader's own claim write tells it GCS's time (no extra request); its clock only counts the
    seconds since: the holder's claim is live until an hour after GCS wrote it, then taken over (and
    its output looked for first), whether the reader's clock is behind, right or ahead."""
    storage, _, dst = buckets
    holder = ClaimStore(storage, dst, PREFIX, "dag/run1/t/-1")
    assert holder.acquire("a.png", 1) is None
    reader_clock = _Skewed(reader_skew)
    reader = ClaimStore(storage, dst, PREFIX, "dag/run2/t/-1", clock=reader_clock)
    assert reader.acquire("b.png", 1) is None
    writes = _count_writes(storage, monkeypatch)
    reader_clock.advance(3590)
    found = reader.acquire("a.png", 1)  # 10 s of its lease left by GCS's clock
    assert found is not None and found.owner == "dag/run1/t/-1", found
    reader_clock.advance(12)
    assert reader.acquire("a.png", 1) is None
    assert reader.taken_over == {"a.png"}
    assert not any("/clocks/" in name for name in writes)


def test_a_claim_of_an_earlier_version_without_a_recorded_lease_runs_on_its_writer_s_clock(buckets) -> None:
    """A claim written before leases were recorded carries only its expiry (its writer's clock): it is
    judged as it was, by the reader's clock."""
    storage, _, dst = buckets
    name = ClaimStore(storage, dst, PREFIX, "x")._claim_name("a.png", 1)
    meta = {META_OWNER: "dag/old/t/-1", META_EXPIRES: "2000000"}
    storage.write(dst, name, b"", content_type="text/plain", metadata=meta)
    before = ClaimStore(storage, dst, PREFIX, "dag/run2/t/-1", clock=lambda: 1_999_000.0)
    assert before.acquire("a.png", 1) == ClaimHolder("dag/old/t/-1", 2_000_000.0)
    after = ClaimStore(storage, dst, PREFIX, "dag/run2/t/-1", clock=lambda: 2_000_001.0)
    assert after.acquire("a.png", 1) is None and after.taken_over == {"a.png"}
