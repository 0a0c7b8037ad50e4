"""CreditsCheckOperator arithmetic and halts, with a synthetic plan and MockTransport vendors.

Planning itself is the bucket pipeline's ``plan_batch`` (exercised with fake-gcs-server in the
integration tests); here ``BucketJob.plan_batch()`` returns a prepared :class:`BatchPlan` so every branch
of the pricing and the verdict is checked quickly.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.bucket_job import BucketJob
from airflow_provider_bgremoval.operators.preflight import (
    CreditsCheckOperator,
    GenerateCreditsCheckOperator,
    SafetyMargin,
)
from airflow_provider_bgremoval.pipeline.halts import HaltInfo
from airflow_provider_bgremoval.pipeline.plan_store import ShardRef, read_shard
from airflow_provider_bgremoval.pipeline.planning import (
    META_OPTIONS_HASH,
    META_SOURCE,
    META_SOURCE_GENERATION,
    META_VENDOR,
    BatchPlan,
    BatchSpec,
    DestinationCollisionError,
    OutputIdentity,
    PlannedOutcome,
    WorkItem,
)
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutOptions
from tests.conftest import IMAGES
from tests.support.balances import FakeVendors

HALT_KEYS = set(HaltInfo("r", "v", "m").as_dict())


def make_plan(billable: int, done: int = 0, rejected: int = 0, header_only: int = 0) -> BatchPlan:
    """A plan whose last ``header_only`` billable items were checked by header only."""
    spec = BatchSpec(source_bucket="raw", destination_bucket="out")

    def info(i: int) -> ObjectInfo:
        return ObjectInfo(bucket="raw", name=f"img{i}.jpg", generation=i + 1, size=1000)

    plan = BatchPlan(spec=spec)
    plan.items = [
        WorkItem(info(i), f"img{i}.png", fully_checked=i < billable - header_only) for i in range(billable)
    ]
    plan.settled = [
        PlannedOutcome(info(100 + i), "x.png", "skipped", "already_done", "done") for i in range(done)
    ]
    plan.settled += [
        PlannedOutcome(info(200 + i), None, "rejected", "too_large", "big") for i in range(rejected)
    ]
    return plan


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> dict[str, BatchPlan]:
    """``planned["plan"] = make_plan(...)`` sets what ``plan_batch()`` returns; records the processor used."""
    box: dict[str, Any] = {"plan": make_plan(0)}

    def plan(self: BucketJob, *, check: bool = True) -> BatchPlan:
        box["processor"] = self.processor
        return box["plan"]

    monkeypatch.setattr(BucketJob, "plan_batch", plan)
    monkeypatch.setattr(
        GcsStorage, "read", lambda self, bucket, name, **kw: (IMAGES / "chelsea.png").read_bytes()
    )
    return box


def check(conn_id: str = "pixelcut_default", **kwargs: Any) -> CreditsCheckOperator:
    return CreditsCheckOperator(
        task_id="check_credits",
        conn_id=conn_id,
        source_bucket="raw",
        destination_bucket="out",
        gcp_conn_id=None,
        **kwargs,
    )


def run(op: CreditsCheckOperator) -> tuple[dict[str, Any] | None, dict[str, Any], BaseException | None]:
    ti = mock.MagicMock(dag_id="dag", run_id="manual__2026-12-01T10:00:00+00:00", task_id=op.task_id)
    ti.try_number = 1
    pushed: dict[str, Any] = {}

    def push(key: str, value: Any) -> None:
        pushed[key] = value

    ti.xcom_push.side_effect = push
    try:
        return op.execute({"ti": ti}), pushed, None  # type: ignore[arg-type]
    except (AirflowException, InvalidOptionError) as exc:
        return None, pushed, exc


# -- passing -------------------------------------------------------------------------------------
def test_passes_and_returns_the_estimate(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(40, done=7, rejected=3)
    vendors.set_pixelcut(100)
    estimate, pushed, error = run(check())
    assert error is None
    assert pushed == {}
    assert estimate == {
        "conn_id": "pixelcut_default",
        "vendor": "pixelcut",
        "operation": "remove_background",
        "sources": 50,
        "billable_images": 40,
        "planned_billable": 40,
        "deferred_images": 0,
        "local_checks": "plan",
        "checked_by_header_only": 0,
        "already_done": 7,
        "rejected_locally": 3,
        "cost_per_image": "1",
        "cost_source": "cost_table",
        "needed": "40",
        "safety_margin": "0",
        "margin_credits": "0",
        "required": "40",
        "available": "100",
        "balance": {"vendor": "pixelcut", "remaining": "100", "state": "active", "credit_pack": None},
        "sufficient": True,
    }
    assert [r.url.path for r in vendors.requests] == ["/v1/credits"]  # one free call, nothing billed


def test_images_checked_by_header_only_are_reported(
    vendors: FakeVendors, planned: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Pre-flight honesty: billable images too large to verify at planning are named as such."""
    planned["plan"] = make_plan(40, done=2, header_only=6)
    vendors.set_pixelcut(100)
    with caplog.at_level(logging.INFO, logger="airflow_provider_bgremoval.operators.preflight"):
        estimate, _, error = run(check())
    assert error is None
    assert estimate is not None
    assert (estimate["billable_images"], estimate["checked_by_header_only"]) == (40, 6)
    assert estimate["needed"] == "40"  # still counted billable: a truncated one costs nothing, later
    assert (
        "40 billable, of which 6 were checked by header only; a truncated body among them is rejected "
        "at run time without a charge"
    ) in caplog.text
    # max_images caps the batch to the first images: only the header-only ones among them count
    estimate, _, _ = run(check(max_images=36))
    assert estimate is not None
    assert (estimate["billable_images"], estimate["checked_by_header_only"]) == (36, 2)
    estimate, _, _ = run(check(max_images=30))
    assert estimate is not None
    assert estimate["checked_by_header_only"] == 0


def test_halt_names_the_images_checked_by_header_only(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(30, header_only=4)
    vendors.set_pixelcut(20)
    estimate, pushed, error = run(check())
    assert isinstance(error, AirflowFailException)
    assert "30 billable, of which 4 were checked by header only" in str(error)
    assert pushed["estimate"]["checked_by_header_only"] == 4


def test_equal_balance_passes(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(40)
    vendors.set_pixelcut(40)
    assert run(check())[0]["sufficient"] is True  # type: ignore[index]
    vendors.set_pixelcut("39.99")
    assert isinstance(run(check())[2], AirflowFailException)


def test_pixelcut_shadow_costs_four(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(10)
    vendors.set_pixelcut(40)
    estimate, _, error = run(check(vendor_options=PixelcutOptions(shadow=True)))
    assert error is None
    assert estimate["cost_per_image"] == "4"  # type: ignore[index]
    assert estimate["required"] == "40"  # type: ignore[index]


def test_cost_per_image_override_is_the_processors(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(8)
    vendors.set_poof(100, 90)
    estimate, _, error = run(check("poof_default", cost_per_image="1.25"))
    assert error is None
    assert planned["processor"].cost_per_image == Decimal("1.25")
    assert (estimate["cost_source"], estimate["needed"]) == ("cost_per_image", "10.00")  # type: ignore[index]


@pytest.mark.parametrize(
    ("margin", "balance", "ok", "required"),
    [
        ("10%", 110, True, "110"),
        ("10%", "109.9", False, "110"),
        (5, 105, True, "105"),
        ("5", 104, False, "105"),
    ],
)
def test_safety_margin(
    vendors: FakeVendors, planned: dict[str, Any], margin: Any, balance: Any, ok: bool, required: str
) -> None:
    planned["plan"] = make_plan(100)
    vendors.set_pixian(balance)
    estimate, pushed, error = run(check("pixian_default", safety_margin=margin))
    got = estimate if ok else pushed["estimate"]
    assert Decimal(got["required"]) == Decimal(required)
    assert (error is None) is ok


def test_max_images_and_max_credits_cap_the_estimate(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(100)
    vendors.set_pixelcut(30)
    estimate, _, error = run(check(max_images=25))
    assert error is None
    assert estimate["billable_images"] == 25  # type: ignore[index]
    estimate, _, error = run(check(max_credits=30))
    assert error is None
    assert estimate["needed"] == "30"  # type: ignore[index]


def test_the_estimate_counts_the_images_the_run_s_max_credits_pays_for(
    vendors: FakeVendors, planned: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """billable_images, the log and a halt name what the budget pays for (what the shards hold)."""
    planned["plan"] = make_plan(100)
    vendors.set_pixelcut(20)
    _, pushed, error = run(check(max_credits=30))
    assert isinstance(error, AirflowFailException)
    assert "30 billable image(s) x 1 credits need 30" in str(error)  # not "100 billable"
    assert (pushed["estimate"]["billable_images"], pushed["estimate"]["planned_billable"]) == (30, 100)
    assert pushed["halt"]["remaining_images"] == 30
    vendors.set_pixelcut(40)
    estimate, _, error = run(check(max_credits="30.5", cost_per_image=2))  # the cap's 0.5 buys none
    assert error is None and estimate is not None
    assert (estimate["billable_images"], estimate["needed"]) == (15, "30")
    # a chain: its primary (1 a credit) is empty, poof (2) pays; 10 credits buy 5 images, not 20
    planned["plan"] = make_plan(20)
    vendors.set_pixian(0)
    vendors.set_poof(100, 0)
    with caplog.at_level(logging.INFO, logger="airflow_provider_bgremoval.operators.preflight"):
        estimate, _, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS, max_credits=10))
    assert error is None and estimate is not None
    assert (estimate["billable_images"], estimate["needed"]) == (5, "10")
    assert "5 billable of 20 source(s)" in caplog.text
    assert "x the chain's credits (pixian_default 0 x 1, poof_default 5 x 2, 0 short) = 10" in caplog.text


def test_the_estimate_names_the_billable_images_left_for_a_later_run(
    vendors: FakeVendors, planned: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """deferred_images: billable images beyond the run's budget (the run report shows the estimate)."""
    planned["plan"] = make_plan(100)
    vendors.set_pixelcut(100)
    for budget, deferred in (({}, 0), ({"max_images": 60}, 40), ({"max_images": 60, "max_credits": 25}, 75)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="airflow_provider_bgremoval.operators.preflight"):
            estimate, _, error = run(check(**budget))
        assert error is None and estimate is not None
        assert (
            estimate["deferred_images"]
            == deferred
            == estimate["planned_billable"] - estimate["billable_images"]
        )
        assert (f"{deferred} wait for a later run (the batch records them pending)" in caplog.text) is bool(
            deferred
        )


def test_one_connections_estimate_counts_what_its_per_account_budget_pays_for(
    vendors: FakeVendors, planned: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """max_credits_per_account of the one connection bounds billable_images as max_credits does."""
    planned["plan"] = make_plan(12)
    vendors.set_pixelcut(100)
    budget = {"max_credits_per_account": {"pixelcut_default": 3}}
    with caplog.at_level(logging.INFO, logger="airflow_provider_bgremoval.operators.preflight"):
        estimate, _, error = run(check(**budget))
    assert error is None and estimate is not None
    assert (estimate["billable_images"], estimate["deferred_images"], estimate["needed"]) == (3, 9, "3")
    assert "max_credits_per_account) covers 3 of 12 billable image(s); 9 wait for a later run" in caplog.text
    estimate, _, error = run(check(max_credits=2, **budget))  # the smaller budget decides
    assert error is None and estimate is not None
    assert (estimate["billable_images"], estimate["deferred_images"]) == (2, 10)


def test_nothing_billable_passes_even_when_broke(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(0, done=12)
    vendors.set_pixian(0, state="dormant")
    estimate, _, error = run(check("pixian_default", safety_margin=10))
    assert error is None
    assert estimate["billable_images"] == 0  # type: ignore[index]
    assert estimate["required"] == "0"  # type: ignore[index]


def pixian_in_test_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pixian_default`` with the ``test_mode`` extra: its calls are free."""
    from tests.support.balances import PIXIAN_ID, PIXIAN_SECRET
    from tests.support.connections import set_connection

    set_connection(
        monkeypatch,
        "pixian_default",
        "pixian",
        login=PIXIAN_ID,
        password=PIXIAN_SECRET,
        extra={"test_mode": True},
    )


def test_pixian_test_mode_connection_costs_nothing(
    vendors: FakeVendors, planned: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pixian_in_test_mode(monkeypatch)
    planned["plan"] = make_plan(50)
    vendors.set_pixian(0)
    estimate, _, error = run(check("pixian_default"))
    assert error is None
    assert estimate["needed"] == "0"  # type: ignore[index]


# -- Pixian's test-mode estimate -------------------------------------------------------------------
def test_pixian_test_estimate_spends_nothing(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(20)
    vendors.calculated = "0.5"
    vendors.set_pixian("10")
    estimate, _, error = run(check("pixian_default", use_test_estimate=True))
    assert error is None
    assert vendors.billed == 0
    assert (estimate["cost_source"], estimate["cost_per_image"], estimate["needed"]) == (  # type: ignore[index]
        "test_estimate",
        "0.5",
        "10.0",
    )
    calls = [r.url.path for r in vendors.requests]
    assert calls == ["/api/v2/remove-background", "/api/v2/account"]


@pytest.mark.integration
@pytest.mark.parametrize("max_shards", [None, 2])
def test_a_test_estimate_whose_first_samples_are_junk_checks_the_files_for_real_ones(
    vendors: FakeVendors,
    gcs_storage: GcsStorage,
    gcs_bucket_factory: Any,
    max_shards: int | None,
) -> None:
    """
    macOS resource forks (``._0.png``…) sort first: the three samples of the unchecked plan were refused
    (no readable image) and the pre-flight failed ('refused every sample') although two photos could be
    priced.
    """
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    photo = (IMAGES / "horse.png").read_bytes()
    for number in range(3):
        gcs_storage.write(
            src, f"in/._{number}.png", b"\x00\x05\x16\x07 resource fork", content_type="image/png"
        )
    for name in ("a", "b"):
        gcs_storage.write(src, f"in/{name}.png", photo, content_type="image/png")
    vendors.calculated = "0.5"
    vendors.set_pixian(100)
    op = _sharded(src, dst, "pixian_default", use_test_estimate=True, max_shards=max_shards, min_shard_size=1)
    estimate, _, error = run(op)
    assert error is None and estimate is not None
    assert (estimate["cost_source"], estimate["cost_per_image"]) == ("test_estimate", "0.5")
    assert (estimate["billable_images"], estimate["rejected_locally"], estimate["local_checks"]) == (
        2,
        3,
        "plan",
    )
    assert vendors.billed == 0


def test_test_estimate_is_pixian_only(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    """Only the connection tells the vendor: refused at run time, without retries (retrying cannot help)."""
    planned["plan"] = make_plan(2)
    _, _, error = run(check("poof_default", use_test_estimate=True))
    assert isinstance(error, AirflowFailException)
    assert "only Pixian" in str(error)
    assert isinstance(error.__cause__, InvalidOptionError)


def test_test_estimate_excludes_cost_override() -> None:
    with pytest.raises(InvalidOptionError, match="use_test_estimate"):
        check("pixian_default", use_test_estimate=True, cost_per_image=2)


# -- halting ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("on_insufficient", "exc_type"), [("fail", AirflowFailException), ("skip", AirflowSkipException)]
)
def test_halt_shape_and_mode(
    vendors: FakeVendors, planned: dict[str, Any], on_insufficient: str, exc_type: type[BaseException]
) -> None:
    planned["plan"] = make_plan(30, done=5)
    vendors.set_poof(100, 80)  # 20 left
    _, pushed, error = run(check("poof_default", on_insufficient=on_insufficient, safety_margin="10%"))
    assert type(error) is exc_type
    assert "need 33" in str(error)
    assert "only 20 are available" in str(error)
    assert "Nothing was charged" in str(error)
    halt = pushed["halt"]
    # the same shape as the pipeline's mid-batch halt, with the one account it concerns (it had none)
    assert set(halt) == HALT_KEYS | {"conn_id"}
    assert halt == {
        "reason": "insufficient_credits",
        "vendor": "poof",
        "message": halt["message"],
        "remaining_images": 30,
        "needed": "33",
        "available": "20",
        "fatal": on_insufficient == "fail",
        "conn_id": "poof_default",
    }
    assert pushed["estimate"]["sufficient"] is False
    assert all(r.url.path == "/v1/me" for r in vendors.requests)


def test_dormant_account_halts_with_zero_available(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(3)
    vendors.set_pixian(900, state="dormant")
    _, pushed, error = run(check("pixian_default"))
    assert isinstance(error, AirflowFailException)
    assert "(account dormant)" in str(error)
    assert pushed["halt"]["available"] == "0"


@pytest.mark.parametrize("conn_id", [["pixelcut_default"], '["pixelcut_default"]'])
def test_one_connection_given_as_a_list_is_named_by_its_id(
    vendors: FakeVendors, planned: dict[str, Any], conn_id: Any
) -> None:
    """A list of one (or a template rendering one): the halt said "on ['pixelcut_default']"."""
    planned["plan"] = make_plan(30)
    vendors.set_pixelcut(20)
    _, pushed, error = run(check(conn_id))
    assert isinstance(error, AirflowFailException)
    assert "insufficient credits on 'pixelcut_default': 30 billable image(s)" in str(error)
    assert pushed["estimate"]["conn_id"] == "pixelcut_default"


def test_auth_failure_fails_at_once_with_a_halt(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(3)
    vendors.script["pixelcut"] = [401]
    _, pushed, error = run(check(on_insufficient="skip"))
    assert isinstance(error, AirflowFailException)
    assert pushed["halt"]["reason"] == "auth_failed"
    assert set(pushed["halt"]) == HALT_KEYS | {"conn_id"}
    assert pushed["halt"]["conn_id"] == "pixelcut_default"  # the account whose key was refused
    assert vendors.calls("pixelcut") == 1


def test_sources_sharing_an_output_fail_the_pre_flight_without_retries(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``a.png`` and ``a.jpg`` both make ``a.png``: no retry can plan that, as in the bucket operator."""

    def colliding(self: BucketJob, *, check: bool = True) -> BatchPlan:
        raise DestinationCollisionError("2 sources map to gs://out/a.png: gs://raw/a.jpg, gs://raw/a.png")

    monkeypatch.setattr(BucketJob, "plan_batch", colliding)
    vendors.set_pixelcut(100)
    _, pushed, error = run(check())
    assert isinstance(error, AirflowFailException) and "gs://raw/a.jpg" in str(error)
    assert pushed == {}


def test_transient_balance_failure_is_retryable(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(3)
    vendors.script["poof"] = [503] * 50
    _, pushed, error = run(check("poof_default"))
    assert isinstance(error, AirflowException)
    assert not isinstance(error, AirflowFailException)
    assert pushed == {}


# -- parameters ------------------------------------------------------------------------------------
def test_parameters_are_validated_at_parse() -> None:
    with pytest.raises(InvalidOptionError, match="on_insufficient"):
        check(on_insufficient="explode")
    with pytest.raises(InvalidOptionError, match="safety_margin"):
        check(safety_margin="-5%")
    with pytest.raises(InvalidOptionError, match="safety_margin"):
        check(safety_margin="lots")
    templated = check(safety_margin="{{ params.margin }}", on_insufficient="{{ params.mode }}")
    assert {"safety_margin", "on_insufficient", "source_prefix", "output_format"} <= set(
        templated.template_fields
    )


def test_safety_margin_parsing() -> None:
    assert SafetyMargin.parse(None).on(Decimal(50)) == 0
    assert SafetyMargin.parse("12.5%").on(Decimal(80)) == 10
    assert SafetyMargin.parse(3).on(Decimal(80)) == 3
    assert str(SafetyMargin.parse(" 10 % ")) == "10%"


def test_generate_preflight_is_pixelcut_generate(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(5)
    vendors.set_pixelcut(4)
    op = GenerateCreditsCheckOperator(
        task_id="check_generate",
        source_bucket="raw",
        destination_bucket="out",
        gcp_conn_id=None,
        scene="marble",
    )
    _, pushed, error = run(op)  # type: ignore[arg-type]
    assert isinstance(error, AirflowFailException)
    assert pushed["estimate"]["operation"] == "generate_background"
    assert pushed["halt"]["needed"] == "5"


# -- the run's one plan, kept in the bucket (max_shards; fake-gcs-server) ------------------------------
def _seed_batch(storage: GcsStorage, src: str, dst: str) -> str:
    """Nine photos (one already cut out by this batch) and one broken file; returns the options hash."""
    photo = (IMAGES / "horse.png").read_bytes()
    for number in range(9):
        storage.write(src, f"in/{number}.png", photo, content_type="image/png")
    storage.write(src, "in/broken.png", b"<html>not an image</html>", content_type="image/png")
    fingerprint = _sharded(src, dst).prepare_job().processor.fingerprint
    done = storage.stat(src, "in/0.png")
    assert done is not None
    meta = {
        META_SOURCE: done.uri,
        META_SOURCE_GENERATION: str(done.generation),
        META_OPTIONS_HASH: fingerprint,
        META_VENDOR: "pixelcut",
    }
    storage.write(dst, "cut/0.png", photo, content_type="image/png", metadata=meta)
    return fingerprint


def _sharded(
    src: str, dst: str, conn_id: str | list[str] = "pixelcut_default", **kwargs: Any
) -> CreditsCheckOperator:
    return CreditsCheckOperator(
        task_id="check_credits",
        conn_id=conn_id,
        source_bucket=src,
        source_prefix="in/",
        destination_bucket=dst,
        destination_prefix="cut/",
        gcp_conn_id=None,
        **kwargs,
    )


@pytest.mark.integration
def test_mapped_pre_flights_keep_one_plan_each(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket_factory: Any
) -> None:
    """
    A pre-flight mapped over source prefixes into one destination: each instance has its own plan
    folder (they shared dag, run, task and try, so the second's create-only chunk write was refused).
    """
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    photo = (IMAGES / "horse.png").read_bytes()
    for prefix, count in (("a/", 2), ("b/", 3)):
        for number in range(count):
            gcs_storage.write(src, f"{prefix}{number}.png", photo, content_type="image/png")
    vendors.set_pixelcut(100)
    plans = []
    for map_index, (prefix, count) in enumerate((("a/", 2), ("b/", 3))):
        op = _sharded(src, dst, max_shards=1, min_shard_size=1)
        op.source_prefix = prefix
        ti = mock.MagicMock(dag_id="dag", run_id="manual__1", task_id="check_credits", map_index=map_index)
        ti.try_number = 1
        pushed: dict[str, Any] = {}
        ti.xcom_push.side_effect = lambda key, value, pushed=pushed: pushed.__setitem__(key, value)
        estimate = op.execute({"ti": ti})  # type: ignore[arg-type]
        assert estimate["billable_images"] == count
        [ref] = [ShardRef.model_validate(ref) for ref in pushed["shards"]]
        assert ref.plan.endswith(f"/check_credits/map-{map_index}/try-1/")
        job = op.prepare_job()
        plan = read_shard(job.storage, job.spec, ref)
        assert [item.source.name for item in plan.items] == [f"{prefix}{n}.png" for n in range(count)]
        plans.append(ref.plan)
    assert len(set(plans)) == 2


@pytest.mark.integration
@pytest.mark.parametrize(("balance", "local_checks", "billable"), [(100, "batch", 9), (8, "plan", 8)])
def test_max_shards_keeps_the_plan_it_prices_and_prices_as_without(
    vendors: FakeVendors,
    gcs_storage: GcsStorage,
    gcs_bucket_factory: Any,
    balance: int,
    local_checks: str,
    billable: int,
) -> None:
    """Unchecked, the broken file is billable (an upper bound); a tight balance checks files, then prices."""
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    fingerprint = _seed_batch(gcs_storage, src, dst)
    vendors.set_pixelcut(balance)
    without, pushed_without, error = run(_sharded(src, dst))
    assert error is None and without is not None
    assert "shards" not in pushed_without and "shards" not in without
    kept, pushed, error = run(_sharded(src, dst, max_shards=3, min_shard_size=1))
    assert error is None and kept is not None

    assert {key: value for key, value in kept.items() if key != "shards"} == without
    assert (kept["sources"], kept["already_done"], kept["billable_images"]) == (10, 1, billable)
    assert (kept["local_checks"], kept["rejected_locally"]) == (local_checks, 9 - billable)
    refs = [ShardRef.model_validate(ref) for ref in pushed["shards"]]
    assert kept["shards"] == len(refs) == 3
    assert sum(ref.images for ref in refs) == billable  # the shards hold exactly what was priced
    assert sum(ref.settled[1] - ref.settled[0] for ref in refs) == 10 - billable
    for ref in refs:
        ref.check_matches(
            BatchSpec(src, dst, source_prefix="in/", destination_prefix="cut/"),
            OutputIdentity((("pixelcut", fingerprint),)),
        )
    plan = f"gs://{dst}/cut/_bgremoval/plans/dag/manual__2026-12-01T10:00:00+00:00/check_credits/try-1/"
    assert {ref.plan for ref in refs} == {plan + ("checked/" if local_checks == "plan" else "")}
    stored = [info.name for info in gcs_storage.list_objects(dst, "cut/_bgremoval/plans/")]
    assert all(name.endswith(".jsonl") for name in stored)
    assert [r.url.path for r in vendors.requests].count("/v1/credits") == 2  # one balance read per run


@pytest.mark.integration
def test_a_halted_preflight_still_names_its_plan_but_nothing_runs(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket_factory: Any
) -> None:
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    _seed_batch(gcs_storage, src, dst)
    vendors.set_pixelcut(3)
    _, pushed, error = run(_sharded(src, dst, max_shards=2, min_shard_size=1))
    assert isinstance(error, AirflowFailException)
    assert pushed["halt"]["reason"] == "insufficient_credits"
    assert pushed["estimate"]["billable_images"] == 8  # the checked plan was priced
    assert sum(ShardRef.model_validate(ref).images for ref in pushed["shards"]) == 8


@pytest.mark.integration
@pytest.mark.parametrize(("budget", "images"), [({"max_images": 4}, 4), ({"max_credits": 5.5}, 5)])
def test_the_runs_budget_bounds_what_all_shards_hold_together(
    vendors: FakeVendors,
    gcs_storage: GcsStorage,
    gcs_bucket_factory: Any,
    budget: dict[str, Any],
    images: int,
) -> None:
    """max_images / max_credits cap the run: the shards together hold what was priced, not 3x that."""
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    _seed_batch(gcs_storage, src, dst)
    vendors.set_pixelcut(100)
    estimate, pushed, error = run(_sharded(src, dst, max_shards=3, min_shard_size=1, **budget))
    assert error is None and estimate is not None
    assert estimate["planned_billable"] == 9
    assert sum(ShardRef.model_validate(ref).images for ref in pushed["shards"]) == images
    assert estimate["deferred_images"] == 9 - images  # in no shard: named for a later run
    shares = [ShardRef.model_validate(ref).max_credits for ref in pushed["shards"]]
    if "max_credits" in budget:  # each mapped task's share of max_credits: what its images were priced at
        assert shares == [Decimal(2), Decimal(2), Decimal(1)]
    else:
        assert shares == [None, None, None]


@pytest.mark.integration
def test_shards_priced_by_a_test_estimate_below_the_cost_table_process_every_image(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket_factory: Any
) -> None:
    """
    Pixian's test estimate says 0.5, its cost table 1 (what the batch reserves per image): max_credits=4
    pays for 4 images over 2 shards, each shard's share at 1 (2, not 1: at 0.5 each shard's second image
    stayed pending, halted max_credits). Every mapped task then processes all its images.
    """
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    photo = (IMAGES / "horse.png").read_bytes()
    for number in range(4):
        gcs_storage.write(src, f"in/{number}.png", photo, content_type="image/png")
    vendors.calculated = "0.5"
    batch = {"conn_id": "pixian_default", "max_credits": 4}
    estimate, pushed, error = run(
        _sharded(src, dst, use_test_estimate=True, max_shards=2, min_shard_size=1, **batch)
    )
    assert error is None and estimate is not None
    assert (estimate["cost_per_image"], estimate["needed"]) == ("0.5", "2.0")  # what Pixian says it charges
    assert (estimate["billable_images"], estimate["deferred_images"]) == (4, 0)
    refs = [ShardRef.model_validate(ref) for ref in pushed["shards"]]
    assert [(ref.images, ref.max_credits) for ref in refs] == [(2, 2), (2, 2)]
    for index, ref in enumerate(refs):
        ti = mock.MagicMock(
            dag_id="dag", run_id="manual__1", task_id="cutouts", map_index=index, try_number=1
        )
        task = RemoveBackgroundOperator(
            task_id="cutouts",
            source_bucket=src,
            source_prefix="in/",
            destination_bucket=dst,
            destination_prefix="cut/",
            gcp_conn_id=None,
            shard=ref.model_dump(mode="json"),
            **batch,
        )
        summary = task.execute({"ti": ti})  # type: ignore[arg-type]
        assert (summary["done"], summary["pending"], summary["halt"]) == (2, 0, None)


@pytest.mark.integration
def test_a_chains_shards_hold_what_the_pooled_allocation_priced(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket_factory: Any
) -> None:
    """The primary (1 credit an image) is empty and poof (2) pays: max_credits=10 buys 5 images, not 10."""
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    _seed_batch(gcs_storage, src, dst)
    vendors.set_pixian(0)
    vendors.set_poof(100, 0)
    op = _sharded(
        src, dst, CHAIN[:2], cost_per_image=TWO_COSTS, max_credits=10, max_shards=2, min_shard_size=1
    )
    estimate, pushed, error = run(op)
    assert error is None and estimate is not None
    refs = [ShardRef.model_validate(ref) for ref in pushed["shards"]]
    priced = sum(account["images"] for account in estimate["accounts"])
    assert [ref.images for ref in refs] == [3, 2] and priced == 5 == estimate["billable_images"]
    assert [ref.max_credits for ref in refs] == [6, 4]  # 10 credits in all: 3 and 2 images at poof's 2


@pytest.mark.integration
def test_each_chain_shard_gets_the_credits_the_pooled_allocation_priced_in_it(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket_factory: Any
) -> None:
    """
    Pixian (1 credit, 4 left) then poof (2): max_credits=10 prices 7 images, 4 x 1 + 3 x 2. The shard of
    the 4 on pixian gets 4, the shard of the 3 on poof 6 (by their image counts: 5.71 and 4.29, so one
    priced image stayed pending).
    """
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    _seed_batch(gcs_storage, src, dst)
    vendors.set_pixian(4)
    vendors.set_poof(100, 0)
    op = _sharded(
        src, dst, CHAIN[:2], cost_per_image=TWO_COSTS, max_credits=10, max_shards=2, min_shard_size=1
    )
    estimate, pushed, error = run(op)
    assert error is None and estimate is not None
    assert [(a["images"], a["credits"]) for a in estimate["accounts"]] == [(4, "4"), (3, "6")]
    refs = [ShardRef.model_validate(ref) for ref in pushed["shards"]]
    assert [(ref.images, ref.max_credits) for ref in refs] == [(4, 4), (3, 6)]
    assert sum(ref.max_credits or 0 for ref in refs) == Decimal(estimate["needed"]) == 10


@pytest.mark.integration
def test_each_shard_gets_the_credits_priced_on_a_budgeted_account_among_its_images(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket_factory: Any
) -> None:
    """
    max_credits_per_account={'pixian_default': 3} at 1 credit: the pooled allocation prices the first 3
    images on pixian; the shards holding them get those 3 credits (by image count 8 over 4 shards: 0.75
    each, so no shard could send one image there and poof took them at 2).
    """
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    _seed_batch(gcs_storage, src, dst)
    vendors.set_pixian(100)
    vendors.set_poof(100, 0)
    budget = {"pixian_default": 3}
    op = _sharded(
        src,
        dst,
        CHAIN[:2],
        cost_per_image=TWO_COSTS,
        max_credits_per_account=budget,
        max_shards=4,
        min_shard_size=1,
    )
    estimate, pushed, error = run(op)
    assert error is None and estimate is not None
    assert [(a["images"], a["credits"]) for a in estimate["accounts"]] == [(3, "3"), (5, "10")]
    refs = [ShardRef.model_validate(ref) for ref in pushed["shards"]]
    assert [ref.images for ref in refs] == [2, 2, 2, 2]
    shares = [ref.account_credits_within("pixian_default", None) for ref in refs]
    assert shares == [2, 1, 0, 0]  # every image priced on pixian fits its shard's share
    assert [ref.max_credits_per_account for ref in refs] == [(("pixian_default", share),) for share in shares]
    assert all(ref.max_credits is None for ref in refs)


@pytest.mark.integration
def test_one_connections_shards_hold_only_what_its_per_account_budget_pays_for(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket_factory: Any
) -> None:
    """max_credits_per_account={'pixelcut_default': 3} at 1: the shards hold 3 images (they held all 9,
    and 6 ended pending), each shard with the credits of its images."""
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    _seed_batch(gcs_storage, src, dst)
    vendors.set_pixelcut(100)
    budget = {"pixelcut_default": 3}
    op = _sharded(src, dst, max_credits_per_account=budget, max_shards=3, min_shard_size=1)
    estimate, pushed, error = run(op)
    assert error is None and estimate is not None
    assert (estimate["billable_images"], estimate["deferred_images"]) == (3, 6)
    refs = [ShardRef.model_validate(ref) for ref in pushed["shards"]]
    assert [ref.images for ref in refs] == [1, 1, 1]
    assert [ref.max_credits_per_account for ref in refs] == [(("pixelcut_default", 1),)] * 3


def test_shard_parameters_are_checked_at_parse_and_templatable() -> None:
    with pytest.raises(InvalidOptionError, match="max_shards"):
        check(max_shards="many")
    with pytest.raises(InvalidOptionError, match="min_shard_size"):
        check(min_shard_size=-1)
    for name in ("max_shards", "min_shard_size"):
        with pytest.raises(InvalidOptionError, match=f"{name}.*at least 1"):
            check(**{name: 0})
    templated = check(max_shards="{{ params.max_shards }}", min_shard_size="{{ params.size }}")
    assert {"max_shards", "min_shard_size"} <= set(templated.template_fields)


def test_more_shards_than_airflow_maps_are_refused_before_anything_is_planned(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_shards above Airflow's [core] max_map_length (1024) fails at parse, or once rendered."""
    with pytest.raises(InvalidOptionError, match=r"max_shards.*between 1 and 1024"):
        check(max_shards=1025)
    assert check(max_shards=1024).max_shards == 1024

    def keep_plan(self: BucketJob, prefix: str, *, check: bool = True) -> Any:
        raise AssertionError("the plan was listed and written")

    monkeypatch.setattr(BucketJob, "keep_plan", keep_plan)
    for name, rendered in (("max_shards", "2000"), ("min_shard_size", "0")):
        op = check(**{"max_shards": 4, name: "{{ params.value }}"})
        setattr(op, name, rendered)  # what rendering the template gives
        _, _, error = run(op)
        assert isinstance(error, AirflowFailException)  # a bad rendered value: no retry can fix it
        assert isinstance(error.__cause__, InvalidOptionError) and error.__cause__.parameter == name
    assert vendors.requests == []  # not even the balance was read


def test_renditions_are_validated_at_parse() -> None:
    renditions = [{"name": "thumb", "format": "jpeg", "size": 256}]
    with pytest.raises(InvalidOptionError, match="lossless PNG"):
        check(renditions=renditions, output_format="webp")
    assert check(renditions=renditions, max_shards=4).renditions == renditions  # a kept plan carries them
    assert check(renditions=renditions).renditions == renditions


# -- a failover chain: pooled pre-flight (docs/credits.md "Pooled pre-flight") ---------------------------
CHAIN = ["pixian_default", "poof_default", "pixelcut_default"]
COSTS = {"pixian_default": "1", "poof_default": "2", "pixelcut_default": "1"}
TWO_COSTS = {"pixian_default": "1", "poof_default": "2"}


def test_a_chain_prices_the_plan_in_chain_order_at_each_accounts_cost(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    planned["plan"] = make_plan(8, done=2)
    vendors.set_pixian(3)
    vendors.set_poof(100, 95)  # 5 left: 2 images at 2 credits
    vendors.set_pixelcut(10)
    estimate, pushed, error = run(
        check(CHAIN, cost_per_image=COSTS, max_credits_per_account={"pixelcut_default": 3})
    )
    assert error is None and pushed == {} and estimate is not None
    assert [(a["conn_id"], a["images"], a["credits"], a["usable"]) for a in estimate["accounts"]] == [
        ("pixian_default", 3, "3", "3"),
        ("poof_default", 2, "4", "5"),
        ("pixelcut_default", 3, "3", "3"),  # its balance is 10, its budget 3
    ]
    assert estimate["used_accounts"] == CHAIN and estimate["shortfall_images"] == 0
    assert (estimate["needed"], estimate["available"], estimate["sufficient"]) == ("10", "11", True)
    assert estimate["conn_id"] == CHAIN and estimate["vendor"] == "pixian"
    assert sorted(r.url.path for r in vendors.requests) == sorted(
        ["/v1/credits", "/v1/me", "/api/v2/account"]
    )


def test_a_chain_short_of_credits_halts_stating_the_pooled_shortfall(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    planned["plan"] = make_plan(7)
    vendors.set_pixian(2)
    vendors.set_poof(10, 7)  # 3 left: 1 image at 2 credits
    _, pushed, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS))
    assert isinstance(error, AirflowFailException)
    assert "insufficient pooled credits on pixian_default, poof_default" in str(error)
    assert "4 not covered by any account" in str(error)
    halt = pushed["halt"]
    assert halt["reason"] == "insufficient_credits" and halt["shortfall_images"] == 4
    assert "conn_id" not in halt  # no one account: each is in ``accounts``
    assert [(a["conn_id"], a["images"]) for a in halt["accounts"]] == [
        ("pixian_default", 2),
        ("poof_default", 1),
    ]
    assert pushed["estimate"]["used_accounts"] == CHAIN[:2]


def test_a_chain_short_only_of_its_safety_margin_says_so(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """Every image covered, the margin not: the halt said '0 not covered by any account'."""
    planned["plan"] = make_plan(5)
    vendors.set_pixian(3)
    vendors.set_poof(2, 0)
    costs = {"pixian_default": "1", "poof_default": "1"}
    _, pushed, error = run(check(CHAIN[:2], cost_per_image=costs, safety_margin=1))
    assert isinstance(error, AirflowFailException)
    assert "5 billable image(s), each covered, not the safety margin (" in str(error)
    assert "not covered by any account" not in str(error) and "failover_on" not in str(error)
    assert "6 required incl. safety margin 1, 5 usable in all" in str(error)
    assert pushed["halt"]["shortfall_images"] == 0


def test_a_chain_counts_its_shortfall_within_max_credits_as_one_connection_does(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """50 billable, 10 + 10 credits at 1, max_credits=15: the run spends 15 and stops, so it passes."""
    planned["plan"] = make_plan(50)
    vendors.set_pixian(10)
    vendors.set_poof(10, 0)
    costs = {"pixian_default": "1", "poof_default": "1"}
    estimate, pushed, error = run(check(CHAIN[:2], cost_per_image=costs, max_credits=15))
    assert error is None and pushed == {} and estimate is not None
    assert [(a["conn_id"], a["images"], a["credits"]) for a in estimate["accounts"]] == [
        ("pixian_default", 10, "10"),
        ("poof_default", 5, "5"),  # the cap leaves 5 of its 10
    ]
    assert (estimate["shortfall_images"], estimate["needed"], estimate["required"]) == (0, "15", "15")
    assert (estimate["available"], estimate["sufficient"]) == ("20", True)
    vendors.set_pixelcut(20)  # one connection with the same credits and cap: the same verdict
    alone, _, error = run(check("pixelcut_default", cost_per_image=1, max_credits=15))
    assert error is None and alone is not None
    assert (alone["needed"], alone["sufficient"]) == (estimate["needed"], True)
    common = set(alone) - {"available", "balance"}
    assert common <= set(estimate)  # one builder: a chain's estimate has every field of one connection's


def test_a_chain_short_within_max_credits_counts_only_what_the_cap_lets_run(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    planned["plan"] = make_plan(50)
    vendors.set_pixian(4)
    vendors.set_poof(10, 7)  # 3 left: 1 image at 2 credits
    estimate, pushed, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS, max_credits=12))
    assert isinstance(error, AirflowFailException) and estimate is None
    shares = [(a["conn_id"], a["images"]) for a in pushed["estimate"]["accounts"]]
    assert shares == [("pixian_default", 4), ("poof_default", 1)]  # 6 credits of the 12
    # 6 credits of the cap left, at the primary's 1 each: 6 images short (not the 45 left unplanned)
    assert pushed["halt"]["shortfall_images"] == 6 and pushed["estimate"]["needed"] == "12"
    assert "6 not covered by any account" in str(error)


def test_a_refused_key_in_a_chain_counts_as_no_credits(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    planned["plan"] = make_plan(4)
    vendors.script["pixian"] = [401]
    vendors.set_poof(10, 0)
    estimate, _, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS))
    assert error is None and estimate is not None
    assert [(a["state"], a["images"]) for a in estimate["accounts"]] == [("suspended", 0), ("active", 4)]
    assert estimate["used_accounts"] == ["poof_default"]


def test_a_chain_none_of_whose_keys_works_fails_at_once_as_one_connection_does(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """Every key refused: an auth failure without retries, not 'insufficient credits' (skipped with skip)."""
    planned["plan"] = make_plan(4)
    vendors.script["pixian"] = [401]
    vendors.script["poof"] = [401]
    _, pushed, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS, on_insufficient="skip"))
    assert isinstance(error, AirflowFailException)
    assert "could not read the balance of 'pixian_default'" in str(error)
    assert "no account of the chain can be read" in str(error)
    assert pushed["halt"]["reason"] == "auth_failed" and pushed["halt"]["vendor"] == "pixian"
    assert pushed["halt"]["conn_id"] == "pixian_default"  # the account the message names
    assert set(pushed["halt"]) == HALT_KEYS | {"conn_id"} and "estimate" not in pushed


def test_a_refused_primary_key_halts_when_the_chain_does_not_fail_over_on_auth(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """failover_on=['out_of_credits']: the batch's first call would fail on the primary, poof never paid."""
    planned["plan"] = make_plan(4)
    vendors.script["pixian"] = [401]
    vendors.set_poof(10, 0)
    op = check(CHAIN[:2], cost_per_image=TWO_COSTS, failover_on=["out_of_credits"])
    _, pushed, error = run(op)
    assert isinstance(error, AirflowFailException)
    assert "'pixian_default'" in str(error) and "does not fail over on auth_failed" in str(error)
    assert pushed["halt"]["reason"] == "auth_failed" and pushed["halt"]["conn_id"] == "pixian_default"
    vendors.script["poof"] = [401]  # a backup's refused key: the primary may pay for everything
    vendors.set_pixian(10)
    estimate, _, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS, failover_on=["out_of_credits"]))
    assert error is None and estimate is not None
    assert [(a["state"], a["images"]) for a in estimate["accounts"]] == [("active", 4), ("suspended", 0)]


def test_a_chain_prices_nothing_past_an_empty_account_it_does_not_fail_over_from(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """
    failover_on without out_of_credits: the batch halts when pixian (2 credits) runs out, so poof's
    balance pays for none of the 4 images (the pre-flight passed, pricing 2 on poof, and the run halted
    with 2 pending). A per-account budget always moves the rest on.
    """
    planned["plan"] = make_plan(4)
    vendors.set_pixian(2)
    vendors.set_poof(100, 0)
    op = check(CHAIN[:2], cost_per_image=TWO_COSTS, failover_on=["auth_failed", "outage"])
    _, pushed, error = run(op)
    assert isinstance(error, AirflowFailException) and "2 not covered by any account" in str(error)
    assert "failover_on leaves out out_of_credits, so the batch stops at the first account" in str(error)
    estimate = pushed["estimate"]
    assert [(a["conn_id"], a["images"]) for a in estimate["accounts"]] == [
        ("pixian_default", 2),
        ("poof_default", 0),
    ]
    assert (estimate["shortfall_images"], estimate["sufficient"]) == (2, False)
    vendors.set_pixian(0)  # an active, empty primary: out of credits at the first call, not passed over
    _, pushed, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS, failover_on=["auth_failed", "outage"]))
    assert isinstance(error, AirflowFailException) and pushed["estimate"]["shortfall_images"] == 4
    vendors.set_pixian(100)  # pixian stops at its budget of 2, not at its balance: poof takes the rest
    budget = {"pixian_default": 2}
    op = check(CHAIN[:2], cost_per_image=TWO_COSTS, failover_on=["outage"], max_credits_per_account=budget)
    estimate, _, error = run(op)
    assert error is None and estimate is not None
    assert [a["images"] for a in estimate["accounts"]] == [2, 2] and estimate["shortfall_images"] == 0
    vendors.script["pixian"] = [401]  # a refused key is passed over with auth_failed in failover_on
    estimate, _, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS, failover_on=["auth_failed"]))
    assert error is None and estimate is not None
    assert [a["images"] for a in estimate["accounts"]] == [0, 4]
    vendors.set_pixian(0)  # an empty primary with the default failover_on: poof pays, as before
    estimate, _, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS))
    assert error is None and estimate is not None
    assert [a["images"] for a in estimate["accounts"]] == [0, 4]


def test_a_chain_has_no_test_mode_estimate(vendors: FakeVendors, planned: dict[str, Any]) -> None:
    """A chain given as a list is refused at DAG parse; a templated one once rendered, without retries."""
    planned["plan"] = make_plan(2)
    with pytest.raises(InvalidOptionError, match="chain of connections") as info:
        check(CHAIN[:2], use_test_estimate=True)
    assert info.value.parameter == "use_test_estimate"
    op = check("{{ params.pool }}", use_test_estimate=True)
    op.conn_id = str(CHAIN[:2])  # what the default rendering prints for a list Param
    _, _, error = run(op)
    assert isinstance(error, AirflowFailException) and "chain of connections" in str(error)
    assert isinstance(error.__cause__, InvalidOptionError)
    assert error.__cause__.parameter == "use_test_estimate"


def test_generate_preflight_refuses_use_test_estimate_at_parse() -> None:
    """Pixian's free test-mode estimate prices a removal: generate-background is refused at DAG parse."""
    with pytest.raises(InvalidOptionError, match="only Pixian") as info:
        GenerateCreditsCheckOperator(
            task_id="g",
            source_bucket="raw",
            destination_bucket="out",
            gcp_conn_id=None,
            use_test_estimate=True,
        )
    assert info.value.parameter == "use_test_estimate"


def test_a_chain_prices_each_image_at_the_first_account_whose_limits_take_it(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """Two images only poof's limits take (bit 1), one no account takes: pixian's credits don't cover them."""
    plan = make_plan(5)
    masks = [0b11, 0b10, 0b11, 0b10, 0b00]
    plan.items = [replace(item, accepted=mask) for item, mask in zip(plan.items, masks, strict=True)]
    planned["plan"] = plan
    vendors.set_pixian(10)  # enough for all five at 1
    vendors.set_poof(10, 6)  # 4 left: 2 images at 2 credits
    estimate, pushed, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS))
    assert error is None and pushed == {} and estimate is not None
    assert [(a["conn_id"], a["images"], a["credits"]) for a in estimate["accounts"]] == [
        ("pixian_default", 2, "2"),
        ("poof_default", 2, "4"),
    ]
    assert (estimate["needed"], estimate["shortfall_images"], estimate["unaccepted_images"]) == ("6", 0, 1)
    # poof with only 1 image's worth: the other image pixian cannot take is short, priced at poof's cost
    vendors.set_poof(10, 8)
    _, pushed, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS))
    assert isinstance(error, AirflowFailException) and pushed["halt"]["shortfall_images"] == 1
    assert [a["images"] for a in pushed["estimate"]["accounts"]] == [2, 1]
    assert pushed["estimate"]["needed"] == "6"  # 2 x 1 + 1 x 2, and the short one at poof's 2


def test_images_no_account_takes_after_the_cap_are_deferred_not_unaccepted(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """max_credits=2 stops the allocation at the 3rd image: the 2 no account takes after it are deferred."""
    plan = make_plan(5)
    masks = [0b11, 0b11, 0b11, 0b00, 0b00]
    plan.items = [replace(item, accepted=mask) for item, mask in zip(plan.items, masks, strict=True)]
    planned["plan"] = plan
    vendors.set_pixian(10)
    vendors.set_poof(10, 0)
    estimate, _, error = run(check(CHAIN[:2], cost_per_image=TWO_COSTS, max_credits=2))
    assert error is None and estimate is not None
    images = sum(account["images"] for account in estimate["accounts"])
    assert (estimate["billable_images"], estimate["deferred_images"]) == (2, 3)
    assert (images, estimate["shortfall_images"], estimate["unaccepted_images"]) == (2, 0, 0)
    assert (
        estimate["billable_images"] == images + estimate["shortfall_images"] + estimate["unaccepted_images"]
    )


def test_the_counts_tell_local_rejections_from_rows_settled_without_a_check(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    plan = make_plan(2, done=3, rejected=1)
    source = ObjectInfo(bucket="raw", name="x.jpg", generation=1, size=10)
    recorded = {"render_only": True, "renditions": []}
    plan.settled += [
        PlannedOutcome(source, "x.png", "rejected", "rendition_noncompliant", "rec", recorded)
    ] * 2
    plan.settled += [PlannedOutcome(source, "y.png", "rejected", "rendition_noncompliant", "small", {})]
    planned["plan"] = plan
    vendors.set_pixelcut(10)
    estimate, _, error = run(check(renditions=[{"name": "web", "format": "webp"}]))
    assert error is None and estimate is not None
    assert (estimate["already_done"], estimate["rejected_locally"]) == (3, 1)
    assert (estimate["recorded_noncompliant"], estimate["noncompliant_at_planning"]) == (2, 1)
    assert estimate["sources"] == 2 + 3 + 1 + 2 + 1


def test_a_test_mode_run_is_free_and_makes_no_test_call(
    vendors: FakeVendors, planned: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pixian_in_test_mode(monkeypatch)
    planned["plan"] = make_plan(20)
    vendors.calculated = "0.5"
    vendors.set_pixian(0)
    estimate, _, error = run(check("pixian_default", use_test_estimate=True))
    assert error is None and estimate is not None
    assert (estimate["cost_source"], estimate["needed"], estimate["sufficient"]) == ("cost_table", "0", True)
    assert [r.url.path for r in vendors.requests] == ["/api/v2/account"]  # no test call: the run is free


def test_use_test_estimate_is_refused_before_planning(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned: list[bool] = []
    monkeypatch.setattr(BucketJob, "plan_batch", lambda self, *, check=True: planned.append(check))
    for conn_id in ("poof_default", str(CHAIN[:2])):  # a vendor, a rendered chain: known once rendered
        op = check("{{ params.conn }}", use_test_estimate=True)
        op.conn_id = conn_id
        _, _, error = run(op)
        assert isinstance(error, AirflowFailException)
        assert isinstance(error.__cause__, InvalidOptionError)
        assert error.__cause__.parameter == "use_test_estimate"
    assert planned == [] and vendors.requests == []


@pytest.mark.integration
def test_the_checked_pass_lists_the_sources_once(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A balance under the unchecked bound: the files are checked, without listing the prefix again."""
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    _seed_batch(gcs_storage, src, dst)
    listed: list[tuple[str, str]] = []
    real = GcsStorage.list_objects

    def counting(self: GcsStorage, bucket: str, prefix: str = "", **kwargs: Any) -> Any:
        listed.append((bucket, prefix))
        return real(self, bucket, prefix, **kwargs)

    monkeypatch.setattr(GcsStorage, "list_objects", counting)
    vendors.set_pixelcut(8)  # 9 unfinished, one broken: only the checked plan fits
    estimate, _, error = run(_sharded(src, dst))
    assert error is None and estimate is not None
    assert (estimate["local_checks"], estimate["billable_images"], estimate["rejected_locally"]) == (
        "plan",
        8,
        1,
    )
    # one listing of the sources, one pass over the outputs (two name ranges around cut/_bgremoval/)
    assert listed == [(src, "in/"), (dst, "cut/"), (dst, "cut/")]


def test_an_unusable_account_at_no_cost_takes_no_images(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """
    Pixian priced at 0 per image (test mode) but its key refused, or dormant: it took every image (0
    credits "paid" for any number), so the estimate passed on Poof's balance untouched while the batch
    failed over past Pixian and spent Poof's real credits on all of them.
    """
    planned["plan"] = make_plan(4)
    vendors.set_poof(3, 0)  # 3 images at 1: one short once Pixian takes none
    costs = {"pixian_default": "0", "poof_default": "1"}
    vendors.script["pixian"] = [401]
    _, pushed, error = run(check(CHAIN[:2], cost_per_image=costs))
    assert isinstance(error, AirflowFailException) and "1 not covered by any account" in str(error)
    accounts = pushed["estimate"]["accounts"]
    assert [(a["state"], a["images"]) for a in accounts] == [("suspended", 0), ("active", 3)]
    vendors.set_pixian(0, state="dormant")
    _, pushed, error = run(check(CHAIN[:2], cost_per_image=costs))
    assert isinstance(error, AirflowFailException) and pushed["halt"]["shortfall_images"] == 1
    assert [a["images"] for a in pushed["estimate"]["accounts"]] == [0, 3]
    vendors.set_pixian(0)  # an active account in test mode pays nothing for its calls: it takes them all
    estimate, _, error = run(check(CHAIN[:2], cost_per_image=costs))
    assert error is None and estimate is not None
    assert [a["images"] for a in estimate["accounts"]] == [4, 0] and estimate["needed"] == "0"


def _record_plan_checks(monkeypatch: pytest.MonkeyPatch) -> list[BatchPlan]:
    """Make ``BucketJob.check_plan`` mark the plan checked without reading; return the plans it was given."""
    checked: list[BatchPlan] = []

    def check_plan(self: BucketJob, plan: BatchPlan) -> BatchPlan:
        checked.append(plan)
        return replace(plan, checked=True)

    monkeypatch.setattr(BucketJob, "check_plan", check_plan)
    return checked


def test_an_unusable_account_at_no_cost_is_no_account_that_alone_pays_for_every_image(
    vendors: FakeVendors, planned: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Limits that differ (Pixian, Pixelcut): the unchecked bound passes only when each account alone pays
    for every image. A dormant Pixian at 0 per image counted as paying for all of them, so no header was
    read, although an image only Pixian's limits take cannot be paid for by anyone.
    """
    planned["plan"] = replace(make_plan(4), checked=False)
    checked = _record_plan_checks(monkeypatch)
    vendors.set_pixian(0, state="dormant")
    vendors.set_pixelcut(10)
    estimate, _, error = run(
        check(["pixian_default", "pixelcut_default"], cost_per_image={"pixian_default": 0})
    )
    assert error is None and estimate is not None
    assert len(checked) == 1 and estimate["local_checks"] == "plan"
    assert [a["images"] for a in estimate["accounts"]] == [0, 4]


def test_a_chains_safety_margin_counts_only_accounts_the_batch_can_reach(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """
    failover_on without out_of_credits: the batch stops when pixian runs out, so poof's 100 credits back
    no margin. 10 images on pixian's 10 credits with a margin of 5 passed on them (one connection with
    the same 10 credits halts), and a dearer image than estimated halted the run with images pending.
    """
    planned["plan"] = make_plan(10)
    vendors.set_pixian(10)
    vendors.set_poof(100, 0)
    costs = {"pixian_default": "1", "poof_default": "1"}
    op = check(CHAIN[:2], cost_per_image=costs, safety_margin=5, failover_on=["auth_failed", "outage"])
    _, pushed, error = run(op)
    assert isinstance(error, AirflowFailException)
    assert "each covered, not the safety margin" in str(error)
    assert "15 required incl. safety margin 5, 110 usable in all, 10 of them on the accounts" in str(error)
    estimate = pushed["estimate"]
    assert (estimate["available"], estimate["reachable_available"], estimate["sufficient"]) == (
        "110",
        "10",
        False,
    )
    estimate, _, error = run(
        check(CHAIN[:2], cost_per_image=costs, safety_margin=5)
    )  # it fails over: poof backs it
    assert error is None and estimate is not None
    assert (estimate["reachable_available"], estimate["sufficient"]) == ("110", True)
    vendors.set_pixian(100)  # pixian's budget moves the rest on: poof is reached, its credits count
    budget = {"pixian_default": 8}
    op = check(
        CHAIN[:2],
        cost_per_image=costs,
        safety_margin=5,
        failover_on=["outage"],
        max_credits_per_account=budget,
    )
    estimate, _, error = run(op)
    assert error is None and estimate is not None
    assert [a["images"] for a in estimate["accounts"]] == [8, 2] and estimate["reachable_available"] == "108"


def test_a_shortfall_is_priced_on_an_account_that_takes_calls(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """
    A dormant primary at 0 per image takes no image: the one image poof cannot pay for was priced at the
    primary's 0, so the halt read '3 required, 3 usable in all' (needed 3 for 4 images at poof's 1).
    """
    planned["plan"] = make_plan(4)
    vendors.set_poof(3, 0)
    vendors.set_pixian(0, state="dormant")
    _, pushed, error = run(check(CHAIN[:2], cost_per_image={"pixian_default": "0", "poof_default": "1"}))
    assert isinstance(error, AirflowFailException) and "; 4 required, 3 usable in all" in str(error)
    assert (pushed["halt"]["needed"], pushed["halt"]["shortfall_images"]) == ("4", 1)
    vendors.set_pixian(0)  # an active primary in test mode takes them all, free
    estimate, _, error = run(check(CHAIN[:2], cost_per_image={"pixian_default": "0", "poof_default": "1"}))
    assert error is None and estimate is not None and estimate["needed"] == "0"


def test_a_dormant_account_in_test_mode_takes_the_chains_images_free(
    vendors: FakeVendors, planned: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Pixian's test calls need no pack, and an account without one reads dormant: in test mode it takes
    calls at 0 per image. It took none, so 4 images on Poof's 3 credits halted '1 not covered by any
    account', although the batch sends them all to Pixian for free (as an active account at 0 credits).
    """
    pixian_in_test_mode(monkeypatch)
    planned["plan"] = make_plan(4)
    vendors.set_poof(3, 0)
    vendors.set_pixian(0, state="dormant")
    for failover_on in (None, ["outage"]):  # it takes them itself: no failover reason is needed
        op = check(CHAIN[:2], cost_per_image={"poof_default": "1"}, failover_on=failover_on)
        estimate, _, error = run(op)
        assert error is None and estimate is not None
        assert [(a["state"], a["images"]) for a in estimate["accounts"]] == [("dormant", 4), ("active", 0)]
        assert (estimate["needed"], estimate["shortfall_images"], estimate["sufficient"]) == ("0", 0, True)
    vendors.set_pixian(0, state="suspended")  # a suspended account takes no calls, test mode or not
    _, pushed, error = run(check(CHAIN[:2], cost_per_image={"poof_default": "1"}))
    assert isinstance(error, AirflowFailException) and pushed["halt"]["shortfall_images"] == 1
    vendors.script["pixian"] = [401]  # nor one whose key is refused
    vendors.set_pixian(0, state="dormant")
    _, pushed, error = run(check(CHAIN[:2], cost_per_image={"poof_default": "1"}))
    assert isinstance(error, AirflowFailException) and pushed["halt"]["shortfall_images"] == 1


def test_a_dormant_account_in_test_mode_by_its_options_takes_the_chains_images_free(
    vendors: FakeVendors, planned: dict[str, Any]
) -> None:
    """Test mode from the calls' own options (``PixianOptions(test=True)``), not the connection's extra."""
    planned["plan"] = make_plan(4)
    vendors.set_poof(3, 0)
    vendors.set_pixian(0, state="dormant")
    options = {"pixian": {"test": True}}
    estimate, _, error = run(check(CHAIN[:2], cost_per_image={"poof_default": "1"}, vendor_options=options))
    assert error is None and estimate is not None
    assert [a["images"] for a in estimate["accounts"]] == [4, 0] and estimate["needed"] == "0"
    options = {"pixian": {"test": False}}  # billed calls: the dormant account takes none
    _, pushed, error = run(check(CHAIN[:2], cost_per_image={"poof_default": "1"}, vendor_options=options))
    assert isinstance(error, AirflowFailException) and pushed["halt"]["shortfall_images"] == 1


def test_a_dormant_account_in_test_mode_pays_for_every_image_without_a_header_read(
    vendors: FakeVendors, planned: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Limits that differ (Pixian, Pixelcut): a test-mode Pixian, dormant, pays for every image (at 0), so
    the unchecked bound passes as it does for an active one; it was read as an account that pays for
    none, and every billable source's header was read.
    """
    pixian_in_test_mode(monkeypatch)
    planned["plan"] = replace(make_plan(4), checked=False)
    checked = _record_plan_checks(monkeypatch)
    vendors.set_pixian(0, state="dormant")
    vendors.set_pixelcut(10)
    estimate, _, error = run(check(["pixian_default", "pixelcut_default"]))
    assert error is None and estimate is not None
    assert checked == [] and estimate["local_checks"] == "batch"
    assert [a["images"] for a in estimate["accounts"]] == [4, 0]


def test_one_dormant_connection_in_test_mode_passes_free(
    vendors: FakeVendors, planned: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One connection: a test-mode account reading dormant runs its images free, as an active one."""
    pixian_in_test_mode(monkeypatch)
    planned["plan"] = make_plan(4)
    vendors.set_pixian(0, state="dormant")
    estimate, _, error = run(check("pixian_default", safety_margin="10%"))
    assert error is None and estimate is not None
    assert (estimate["billable_images"], estimate["needed"], estimate["sufficient"]) == (4, "0", True)
    assert estimate["balance"]["state"] == "dormant"
