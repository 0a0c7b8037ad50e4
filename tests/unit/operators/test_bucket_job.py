"""BucketJob and BucketJobOperator: the job the bucket operators run and the pre-flight prices."""

from __future__ import annotations

import warnings
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.hooks.pixian import PixianHook
from airflow_provider_bgremoval.operators import bucket_job
from airflow_provider_bgremoval.operators.bucket import (
    BucketImageOperator,
    GenerateBackgroundOperator,
    RemoveBackgroundOperator,
)
from airflow_provider_bgremoval.operators.bucket_job import BucketJobOperator, parse_count
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator, GenerateCreditsCheckOperator
from airflow_provider_bgremoval.pipeline.planning import BatchPlan, BatchSpec
from airflow_provider_bgremoval.pipeline.processors import GenerationProcessor, RemovalProcessor
from tests.support.balances import FakeVendors

BUCKETS = {"source_bucket": "raw", "destination_bucket": "out", "gcp_conn_id": None}


def test_prepare_builds_storage_hook_and_processor(vendors: FakeVendors) -> None:
    op = RemoveBackgroundOperator(
        task_id="t",
        conn_id="pixian_default",
        output_format="webp",
        destination_prefix="cut",
        cost_per_image="0.5",
        **BUCKETS,
    )
    job = op.prepare_job()
    assert job.spec == BatchSpec(source_bucket="raw", destination_bucket="out", destination_prefix="cut")
    assert isinstance(job.hook, PixianHook)
    assert isinstance(job.processor, RemovalProcessor)
    assert (job.processor.extension, job.processor.cost_per_image) == (".webp", Decimal("0.5"))
    assert job.planning_concurrency == 16
    assert vendors.requests == []  # preparing makes no call


def test_plan_runs_plan_batch_with_the_processors_identity(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def plan_batch(storage: Any, spec: BatchSpec, **kwargs: Any) -> BatchPlan:
        seen.update(kwargs, storage=storage)
        return BatchPlan(spec=spec)

    monkeypatch.setattr(bucket_job, "plan_batch", plan_batch)
    job = RemoveBackgroundOperator(
        task_id="t", conn_id="poof_default", max_concurrency=1, **BUCKETS
    ).prepare_job()
    plan = job.plan_batch()
    assert plan.spec == job.spec
    assert seen == {
        "storage": job.storage,
        "extension": job.processor.extension,
        "fingerprint": job.processor.fingerprint,
        "vendor": "poof",
        "limits": job.processor.limits,
        "concurrency": bucket_job.MIN_PLANNING_CONCURRENCY,  # planning never runs fewer than 4 checks
        "check": True,
    }


def test_the_batch_and_its_preflight_prepare_the_same_job(vendors: FakeVendors) -> None:
    params = {"conn_id": "pixelcut_default", "output_format": "jpeg", "crop": True, **BUCKETS}
    batch = RemoveBackgroundOperator(task_id="batch", **params).prepare_job()
    check = CreditsCheckOperator(task_id="check", **params).prepare_job()
    assert batch.spec == check.spec
    assert batch.processor.fingerprint == check.processor.fingerprint
    assert batch.processor.cost_per_image == check.processor.cost_per_image
    generate = GenerateBackgroundOperator(task_id="gen", scene="wood", **BUCKETS).prepare_job()
    generate_check = GenerateCreditsCheckOperator(task_id="gen_check", scene="wood", **BUCKETS).prepare_job()
    assert isinstance(generate.hook, PixelcutHook)
    assert isinstance(generate.processor, GenerationProcessor)
    assert generate.processor.fingerprint == generate_check.processor.fingerprint


def test_the_preflight_is_not_a_bucket_operator() -> None:
    """Composition: the pre-flight shares the job, not the batch (no batch parameters, no lineage)."""
    assert issubclass(CreditsCheckOperator, BucketJobOperator)
    assert not issubclass(CreditsCheckOperator, BucketImageOperator)
    assert not issubclass(GenerateCreditsCheckOperator, BucketImageOperator)
    check = CreditsCheckOperator(task_id="check", conn_id="poof_default", **BUCKETS)
    assert not hasattr(check, "on_error")
    assert not hasattr(check, "get_openlineage_facets_on_complete")


def test_batch_parameters_given_to_the_preflight_are_deprecated() -> None:
    with pytest.warns(DeprecationWarning, match="on_error, claim_lease only apply to the bucket task"):
        check = CreditsCheckOperator(
            task_id="check", conn_id="poof_default", on_error="continue", claim_lease=60, **BUCKETS
        )
    assert not hasattr(check, "claim_lease")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CreditsCheckOperator(task_id="quiet", conn_id="poof_default", **BUCKETS)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_images": "many"}, "max_images"),
        ({"max_credits": "-1"}, "max_credits"),
        ({"cost_per_image": "free"}, "cost_per_image"),
    ],
)
def test_job_parameters_are_checked_at_parse_for_every_operator(
    kwargs: dict[str, Any], parameter: str
) -> None:
    for operator in (RemoveBackgroundOperator, CreditsCheckOperator):
        with pytest.raises(InvalidOptionError, match=parameter):
            operator(task_id="t", conn_id="poof_default", **BUCKETS, **kwargs)


def test_templated_job_parameters_wait_for_rendering() -> None:
    op = CreditsCheckOperator(
        task_id="t",
        conn_id="poof_default",
        max_images="{{ params.n }}",
        max_credits="{{ params.c }}",
        cost_per_image="{{ params.cost }}",
        **BUCKETS,
    )
    assert {"max_images", "max_credits", "cost_per_image", "source_prefix"} <= set(op.template_fields)


def test_source_objects_must_be_a_list() -> None:
    op = RemoveBackgroundOperator(task_id="t", conn_id="poof_default", source_objects="a.jpg", **BUCKETS)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="source_objects"):
        op.prepare_job()


def test_parse_count() -> None:
    assert parse_count(None, "max_images") is None
    assert parse_count("", "max_images") is None
    assert parse_count("7", "max_images") == 7
    with pytest.raises(InvalidOptionError, match="at least 0"):
        parse_count(-1, "max_images")
