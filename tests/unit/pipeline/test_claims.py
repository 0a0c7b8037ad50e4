"""ClaimStore over a real fake-gcs-server: releases, and claim writes that raised but may have landed."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.pipeline.claims import META_EXPIRES, META_OWNER, ClaimHolder, ClaimStore
from airflow_provider_bgremoval.pipeline.planning import BatchSpec
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
    store = ClaimStore(gcs_storage, "dst", PREFIX, "dag/run1/t/-1", lease_seconds="90")  # type: ignore[arg-type]
    assert store.lease_seconds == 90.0


def test_lease_left_counts_down_our_held_claim_by_the_store_s_clock_without_a_request(
    buckets, monkeypatch
) -> None:
    storage, _, dst = buckets
    clock = [1_000_000.0]
    mine = ClaimStore(storage, dst, PREFIX, "dag/run1/t/-1", lease_seconds=600, clock=lambda: clock[0])
    assert mine.lease_left("a.png") is None  # not claimed
    assert mine.acquire("a.png", 1) is None
    clock[0] += 250

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
