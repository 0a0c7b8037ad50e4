"""BucketJob and BucketJobOperator: the job the bucket operators run and the pre-flight prices."""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from decimal import Decimal
from typing import Any

import pytest
from PIL import Image

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.hooks.pixian import PixianHook
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.operators import bucket_job
from airflow_provider_bgremoval.operators.bucket import (
    BucketImageOperator,
    GenerateBackgroundOperator,
    RemoveBackgroundOperator,
)
from airflow_provider_bgremoval.operators.bucket_job import BucketJobOperator, parse_count
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator, GenerateCreditsCheckOperator
from airflow_provider_bgremoval.pipeline.plan_store import PricedRun, ShardRef
from airflow_provider_bgremoval.pipeline.planning import BatchPlan, BatchSpec, OutputIdentity
from airflow_provider_bgremoval.pipeline.processors import GenerationProcessor, RemovalProcessor
from tests.support.balances import PIXIAN_ID, PIXIAN_SECRET, FakeVendors
from tests.support.connections import set_connection
from tests.support.memory_storage import MemoryStorage

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
        "identity": OutputIdentity((("poof", job.processor.fingerprint),)),
        "limits": job.processor.limits,
        "concurrency": bucket_job.MIN_PLANNING_CONCURRENCY,  # planning never runs fewer than 4 checks
        "check": True,
        "account_limits": (),
        "renditions": None,
        "masters_are_sources": False,
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


# -- a shard of the run's plan (issue 12) ------------------------------------------------------------
def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(out, format="PNG")
    return out.getvalue()


def _kept_plan(sources: int = 10, shards: int = 2, **params: Any) -> tuple[MemoryStorage, list[ShardRef]]:
    """The pre-flight's job keeps a plan of ``sources`` images in (memory) GCS, in ``shards`` shards."""
    storage = MemoryStorage({f"img/{i:03d}.png": _png() for i in range(sources)}, bucket="raw")
    params = {"conn_id": "poof_default", **BUCKETS, **params}
    job = CreditsCheckOperator(task_id="check", **params).prepare_job()
    job = dataclasses.replace(job, storage=storage)  # type: ignore[arg-type]
    writer = job.keep_plan("_bgremoval/plans/dag/run/check/try-1/")
    bucket_job.run_coroutine(job.aclose_hooks())
    return storage, writer.finish(max_shards=shards, min_shard_size=1)


def test_a_shard_is_given_as_a_dict_or_a_json_string(vendors: FakeVendors) -> None:
    _, refs = _kept_plan()
    given = refs[1].model_dump(mode="json")
    assert "shard" in RemoveBackgroundOperator.template_fields
    for shard in (given, json.dumps(given)):
        op = RemoveBackgroundOperator(task_id="t", conn_id="poof_default", shard=shard, **BUCKETS)
        assert op.prepare_job().shard == refs[1]
    for empty in (None, ""):
        op = RemoveBackgroundOperator(task_id="t", conn_id="poof_default", shard=empty, **BUCKETS)
        assert op.prepare_job().shard is None


def test_a_shard_task_spends_at_most_its_share_of_each_accounts_budget(vendors: FakeVendors) -> None:
    """max_credits_per_account is the run's: over 3 shards each task's account budget is its third."""
    storage = MemoryStorage({f"img/{i:03d}.png": _png() for i in range(12)}, bucket="raw")
    chain = {"conn_id": ["poof_default", "pixian_default"], "max_credits_per_account": {"poof_default": 3}}
    job = dataclasses.replace(
        CreditsCheckOperator(task_id="check", **chain, **BUCKETS).prepare_job(), storage=storage
    )  # type: ignore[arg-type]
    writer = job.keep_plan("_bgremoval/plans/dag/run/check/try-1/")
    bucket_job.run_coroutine(job.aclose_hooks())
    assert job.chain is not None
    budgets = {account.conn_id: account.budget for account in job.chain.accounts}
    pricing = [PricedRun(12, "poof_default", Decimal("0.25"))]  # 4 images a shard: 1 credit on poof
    refs = writer.finish(max_shards=3, min_shard_size=1, account_credits=budgets, pricing=pricing)
    for own, expected in ((None, 1), ("0.5", Decimal("0.5")), (5, 1)):
        given = {"poof_default": own} if own is not None else {}
        params = {**chain, "max_credits_per_account": given}
        op = RemoveBackgroundOperator(task_id="t", shard=refs[2].model_dump(mode="json"), **params, **BUCKETS)
        shard_job = op.prepare_job()
        assert shard_job.chain is not None
        assert [a.budget for a in shard_job.chain.accounts] == [expected, None]  # the smaller, per account
        bucket_job.run_coroutine(shard_job.aclose_hooks())


def test_a_shard_task_budget_the_plan_carries_no_share_of_fails_without_retries(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the 2 mapped tasks would spend all of its own max_credits: retrying cannot fix that."""
    storage, refs = _kept_plan(sources=10, shards=2)
    op = RemoveBackgroundOperator(
        task_id="t", conn_id="poof_default", shard=refs[1].model_dump(mode="json"), max_credits=5, **BUCKETS
    )
    job = dataclasses.replace(op.prepare_job(), storage=storage)  # type: ignore[arg-type]
    monkeypatch.setattr(op, "prepare_job", lambda: job)
    with pytest.raises(AirflowFailException, match="shard 2 of 2 carries no share"):
        op.execute({"ti": None})  # type: ignore[typeddict-item]
    bucket_job.run_coroutine(job.aclose_hooks())
    assert vendors.requests == []


def test_shard_and_source_objects_are_exclusive(vendors: FakeVendors) -> None:
    _, refs = _kept_plan()
    op = RemoveBackgroundOperator(
        task_id="t",
        conn_id="poof_default",
        shard=refs[0].model_dump(mode="json"),
        source_objects=["img/000.png"],
        **BUCKETS,
    )
    with pytest.raises(InvalidOptionError, match="give either shard or source_objects") as excinfo:
        op.prepare_job()
    assert excinfo.value.parameter == "shard"


@pytest.mark.parametrize(
    "shard",
    [
        "not json",
        "[0, 10]",
        7,
        {"plan": "gs://out/p/"},
        {"items": [5, 2]},
        {"chunk_rows": 0},
        {"surprise": True},
    ],
)
def test_a_malformed_shard_is_refused_before_anything_is_read(vendors: FakeVendors, shard: Any) -> None:
    if isinstance(shard, dict) and "plan" not in shard:
        _, refs = _kept_plan()
        shard = {**refs[0].model_dump(mode="json"), **shard}
    op = RemoveBackgroundOperator(task_id="t", conn_id="poof_default", shard=shard, **BUCKETS)
    with pytest.raises(InvalidOptionError, match="not a shard of a plan") as excinfo:
        op.prepare_job()
    assert excinfo.value.parameter == "shard"
    assert vendors.requests == []


def test_a_shard_task_reads_its_shard_instead_of_planning(vendors: FakeVendors) -> None:
    storage, refs = _kept_plan(sources=10, shards=2)
    op = RemoveBackgroundOperator(
        task_id="t", conn_id="poof_default", shard=refs[1].model_dump(mode="json"), **BUCKETS
    )
    job = dataclasses.replace(op.prepare_job(), storage=storage)  # type: ignore[arg-type]
    storage.requests.clear()
    plan = job.plan_batch()
    job.hook.close()
    assert [item.source.name for item in plan.items] == [f"img/{i:03d}.png" for i in range(5, 10)]
    assert all(
        item.source.generation == storage.info("raw", item.source.name).generation for item in plan.items
    )
    assert plan.spec == job.spec
    assert storage.requests == {"read": 1}  # its one chunk: no listing, no stat, no header read
    assert vendors.requests == []


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"output_format": "webp"}, "options"),
        ({"conn_id": "pixian_default"}, "pixian"),
        ({"destination_prefix": "v2/"}, "v2/"),
        ({"destination_bucket": "elsewhere"}, "destination_bucket 'out' (this task: 'elsewhere')"),
        ({"overwrite": True}, "overwrite False (this task: True)"),
        # the same primary, but another chain: outputs of a vendor the plan does not hold would be re-paid
        ({"conn_id": ["poof_default", "pixian_default"]}, "vendors ['poof'] (this task: ['poof', 'pixian'])"),
    ],
)
def test_a_shard_planned_for_another_batch_is_refused(
    vendors: FakeVendors, changes: dict[str, Any], named: str
) -> None:
    storage, refs = _kept_plan()
    params = {"conn_id": "poof_default", **BUCKETS, **changes}
    op = RemoveBackgroundOperator(task_id="t", shard=refs[0].model_dump(mode="json"), **params)
    job = dataclasses.replace(op.prepare_job(), storage=storage)  # type: ignore[arg-type]
    storage.requests.clear()
    with pytest.raises(
        InvalidOptionError, match="give the pre-flight the bucket task's parameters"
    ) as excinfo:
        job.plan_batch()
    bucket_job.run_coroutine(job.aclose_hooks())
    assert named in str(excinfo.value)
    assert storage.requests == {}  # refused before reading the plan


@pytest.mark.parametrize(
    ("conn_id", "named"),
    [
        ("pixian_backup", "conn_id ['pixian_default', 'pixian_backup'] (this task: ['pixian_backup'])"),
        (["pixian_backup", "pixian_default"], "(this task: ['pixian_backup', 'pixian_default'])"),
        ("pixian_default", "(this task: ['pixian_default'])"),
    ],
)
def test_a_shard_priced_for_a_chain_of_one_vendor_is_refused_by_another_chain(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch, conn_id: Any, named: str
) -> None:
    """Two Pixian accounts share one identity, not one balance: the chain priced is the chain that runs."""
    set_connection(monkeypatch, "pixian_backup", "pixian", login=PIXIAN_ID, password=PIXIAN_SECRET)
    chain = ["pixian_default", "pixian_backup"]
    storage, refs = _kept_plan(conn_id=chain)
    assert refs[0].conn_ids == tuple(chain)
    given = refs[0].model_dump(mode="json")

    def plan(conn: Any, shard: dict[str, Any]) -> BatchPlan:
        op = RemoveBackgroundOperator(task_id="t", conn_id=conn, shard=shard, **BUCKETS)
        job = dataclasses.replace(op.prepare_job(), storage=storage)  # type: ignore[arg-type]
        assert job.identity == OutputIdentity.of(job.processor)  # the same outputs as the chain's
        try:
            return job.plan_batch()
        finally:
            bucket_job.run_coroutine(job.aclose_hooks())

    with pytest.raises(InvalidOptionError, match="planned for another batch") as excinfo:
        plan(conn_id, given)
    assert named in str(excinfo.value)
    assert plan(chain, given).billable == refs[0].images  # the chain it was priced for takes it
    # a descriptor written before the connections were kept is compared as before: by identity
    old = {key: value for key, value in given.items() if key != "conn_ids"}
    assert plan(conn_id, old).billable == refs[0].images


def test_keep_plan_streams_the_plan_into_the_bucket(vendors: FakeVendors) -> None:
    storage, refs = _kept_plan(sources=7, shards=3)
    assert storage.names("out") == [
        "_bgremoval/plans/dag/run/check/try-1/items-000000.jsonl"
    ]  # nothing settled: no settled chunk
    assert [ref.images for ref in refs] == [3, 2, 2]
    assert {ref.plan for ref in refs} == {"gs://out/_bgremoval/plans/dag/run/check/try-1/"}
    assert {(ref.vendor, ref.source_bucket, ref.destination_bucket) for ref in refs} == {
        ("poof", "raw", "out")
    }


RENDITIONS = [{"name": "amazon", "preset": "amazon_main"}, {"name": "thumb", "format": "webp", "size": 256}]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"output_format": "jpeg"}, "output_format"),
        ({"crop": True}, "crop"),
        ({"background_color": "#ffffff"}, "background_color"),
        ({"max_size": 512}, "max_size"),
    ],
)
def test_renditions_refuse_master_options_with_local_steps_at_parse(
    extra: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidOptionError, match=f"renditions.*{named}"):
        RemoveBackgroundOperator(
            task_id="t", conn_id="pixian_default", renditions=RENDITIONS, **extra, **BUCKETS
        )


def test_renditions_layout_masters_prefix_default_and_explicit(vendors: FakeVendors) -> None:
    op = RemoveBackgroundOperator(
        task_id="t", conn_id="pixian_default", destination_prefix="products", renditions=RENDITIONS, **BUCKETS
    )
    job = op.prepare_job()
    assert job.spec.masters_prefix == "products/masters/" and job.spec.output_prefix == "products/masters/"
    assert job.spec.internal_prefix == "products/_bgremoval/"  # manifests and claims stay put
    assert job.renditions is not None
    assert [r.name for r in job.renditions.renditions] == ["amazon", "thumb"]
    assert (
        job.renditions.name_of(job.renditions.renditions[1], "products/masters/a/b.png")
        == "products/thumb/a/b.webp"
    )
    adopted = RemoveBackgroundOperator(
        task_id="t",
        conn_id="pixian_default",
        destination_prefix="renditions",
        masters_prefix="cutouts/",
        renditions=RENDITIONS,
        **BUCKETS,
    ).prepare_job()
    assert adopted.spec.output_prefix == "cutouts/" and adopted.spec.destination_prefix == "renditions/"
    plain = RemoveBackgroundOperator(task_id="t", conn_id="pixian_default", **BUCKETS).prepare_job()
    assert plain.renditions is None and plain.spec.masters_prefix is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"renditions": [{"name": "masters", "format": "png"}]}, "renditions[0].name"),
        ({"renditions": RENDITIONS, "masters_prefix": "products/"}, "renditions[0].name"),
        ({"renditions": RENDITIONS, "shard": {"plan": "x"}}, "shard"),
    ],
)
def test_renditions_refuse_overlapping_folders_and_shards(
    vendors: FakeVendors, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidOptionError) as info:  # overlaps at parse, the shard once prepared
        RemoveBackgroundOperator(
            task_id="t", conn_id="pixian_default", destination_prefix="products/", **kwargs, **BUCKETS
        ).prepare_job()
    assert info.value.parameter == field


@pytest.mark.parametrize(
    ("destination_prefix", "name"),
    [("shop/", "raw"), ("", "shop"), ("shop/raw/", "x")],
)
def test_a_rendition_folder_overlapping_the_source_prefix_is_refused_at_parse(
    vendors: FakeVendors, destination_prefix: str, name: str
) -> None:
    job = {
        "task_id": "t",
        "conn_id": "pixian_default",
        "source_prefix": "shop/raw/",
        "destination_prefix": destination_prefix,
        "masters_prefix": "masters/",
        "renditions": [{"name": name, "format": "jpeg"}],
        "gcp_conn_id": None,
    }
    if not destination_prefix.startswith("shop/raw/"):  # (a destination inside the sources: refused anyway)
        with pytest.raises(InvalidOptionError, match="overlaps the source prefix") as info:
            RemoveBackgroundOperator(source_bucket="shop", destination_bucket="shop", **job)
        assert info.value.parameter == "renditions[0].name"
    other = RemoveBackgroundOperator(source_bucket="shop", destination_bucket="site", **job).prepare_job()
    assert other.renditions is not None  # another bucket: the sources are safe


def test_an_empty_renditions_list_is_refused_not_single_output() -> None:
    with pytest.raises(
        InvalidOptionError, match=r"give at least one rendition \(or leave renditions unset\)"
    ):
        RemoveBackgroundOperator(task_id="t", conn_id="pixian_default", renditions=[], **BUCKETS)
    plain = RemoveBackgroundOperator(task_id="t", conn_id="pixian_default", renditions=None, **BUCKETS)
    assert plain.single_output


def test_a_bad_rendition_spec_fails_at_parse() -> None:
    with pytest.raises(InvalidOptionError, match=r"renditions\[0\]"):
        RemoveBackgroundOperator(
            task_id="t", conn_id="pixian_default", renditions=[{"name": "x", "format": "gif"}], **BUCKETS
        )


def test_templated_renditions_are_read_once_rendered(vendors: FakeVendors) -> None:
    op = RemoveBackgroundOperator(
        task_id="t", conn_id="pixian_default", renditions="{{ params.r }}", **BUCKETS
    )
    assert "renditions" in op.template_fields
    for rendered in ('[{"name": "web", "format": "webp"}]', "[{'name': 'web', 'format': 'webp'}]"):
        op.renditions = rendered  # as Airflow leaves it: JSON, or the list as Jinja prints it
        job = op.prepare_job()
        assert job.renditions is not None and [r.name for r in job.renditions.renditions] == ["web"]
        assert job.spec.masters_prefix == "masters/"
    op.renditions = "None"  # only None is the single-output mode
    assert op.prepare_job().renditions is None and op.prepare_job().spec.masters_prefix is None
    op.renditions = "[]"
    with pytest.raises(InvalidOptionError, match="give at least one rendition"):
        op.prepare_job()
    op.renditions = "amazon please"
    with pytest.raises(InvalidOptionError, match="not a list") as info:
        op.prepare_job()
    assert info.value.parameter == "renditions"


# -- failover chains (docs/pipeline.md "Failover") ------------------------------------------------------

CHAIN = ["pixian_default", "poof_default", "pixelcut_default"]


def test_a_chain_builds_one_account_per_connection_with_its_own_cost_budget_and_breaker(
    vendors: FakeVendors,
) -> None:
    from airflow_provider_bgremoval.pipeline.accounts import BreakerPolicy

    op = RemoveBackgroundOperator(
        task_id="t",
        conn_id=CHAIN,
        cost_per_image={"poof_default": "2"},
        max_credits_per_account={"pixian_default": 5},
        circuit_breaker={"consecutive_failures": 2, "cooldown_seconds": 1},
        failover_on=["out_of_credits", "outage"],
        retry_rejected_on_next=True,
        **BUCKETS,
    )
    job = op.prepare_job()
    assert job.chain is not None and vendors.requests == []
    accounts = job.chain.accounts
    assert [(a.conn_id, a.vendor) for a in accounts] == [
        ("pixian_default", "pixian"),
        ("poof_default", "poof"),
        ("pixelcut_default", "pixelcut"),
    ]
    assert job.hook is accounts[0].hook and job.processor is accounts[0].processor
    assert accounts[1].processor.cost_per_image == 2
    assert accounts[0].processor.cost_per_image == accounts[0].hook.estimate_cost(None)
    assert [a.budget for a in accounts] == [5, None, None]
    policy = BreakerPolicy(consecutive_failures=2, cooldown_seconds=1)
    assert all(a.breaker.policy == policy for a in accounts)
    assert job.chain.failover_on == ("out_of_credits", "outage") and job.chain.retry_rejected_on_next
    assert job.identity.accepted == tuple((a.vendor, a.processor.fingerprint) for a in accounts)
    # The fingerprint rule: each account's is what a single-connection task of its vendor records.
    alone = RemoveBackgroundOperator(task_id="u", conn_id="poof_default", **BUCKETS).prepare_job()
    assert alone.processor.fingerprint == accounts[1].processor.fingerprint
    assert alone.chain is not None and [a.conn_id for a in alone.chain.accounts] == ["poof_default"]


def test_vendor_options_in_a_chain_apply_to_their_own_vendor(vendors: FakeVendors) -> None:
    from airflow_provider_bgremoval.vendors.pixian import PixianOptions

    typed = RemoveBackgroundOperator(
        task_id="t", conn_id=CHAIN[:2], vendor_options=PixianOptions(test=True), **BUCKETS
    ).prepare_job()
    pixian, poof = (a.processor for a in typed.chain.accounts)  # type: ignore[union-attr]
    assert isinstance(pixian, RemovalProcessor) and isinstance(poof, RemovalProcessor)
    assert pixian.vendor_options == PixianOptions(test=True) and poof.vendor_options is None
    by_vendor = RemoveBackgroundOperator(
        task_id="t", conn_id=CHAIN[:2], vendor_options={"poof": {"size": "preview"}}, **BUCKETS
    ).prepare_job()
    pixian, poof = (a.processor for a in by_vendor.chain.accounts)  # type: ignore[union-attr]
    assert pixian.vendor_options is None and poof.vendor_options == {"size": "preview"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"conn_id": ["pixian_default", "pixian_default"]}, "conn_id"),
        ({"conn_id": []}, "conn_id"),
        ({"failover_on": ["out_of_credits", "rejected"]}, "failover_on"),
        ({"circuit_breaker": {"consecutive_failures": 0}}, "circuit_breaker"),
        ({"circuit_breaker": {"cool": 3}}, "circuit_breaker"),
        ({"max_credits_per_account": {"other_conn": 3}}, "max_credits_per_account"),
        ({"max_credits_per_account": 3}, "max_credits_per_account"),
        ({"max_credits_per_account": {"poof_default": "lots"}}, "max_credits_per_account['poof_default']"),
        ({"cost_per_image": {"other_conn": 1}}, "cost_per_image"),
        ({"vendor_options": {"test": True}}, "vendor_options"),
    ],
)
def test_chain_parameters_are_validated_at_parse(kwargs: dict[str, Any], parameter: str) -> None:
    arguments = {"conn_id": CHAIN[:2], **kwargs}
    with pytest.raises(InvalidOptionError) as raised:
        RemoveBackgroundOperator(task_id="t", **arguments, **BUCKETS)
    assert raised.value.parameter == parameter


def test_one_connection_keeps_a_plain_vendor_options_mapping() -> None:
    RemoveBackgroundOperator(task_id="t", conn_id="pixian_default", vendor_options={"test": True}, **BUCKETS)


def test_generate_background_takes_a_chain_of_pixelcut_connections(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.connections import set_connection

    set_connection(monkeypatch, "pixelcut_spare", "pixelcut", password="sk-spare-123")
    job = GenerateBackgroundOperator(
        task_id="g", conn_id=["pixelcut_default", "pixelcut_spare"], scene="marble", **BUCKETS
    ).prepare_job()
    assert job.chain is not None
    first, second = (account.processor for account in job.chain.accounts)
    assert isinstance(first, GenerationProcessor) and isinstance(second, GenerationProcessor)
    assert first.fingerprint == second.fingerprint  # one vendor, same options: one identity
    assert job.identity.accepted == (("pixelcut", first.fingerprint),)
    with pytest.raises(InvalidOptionError, match="Pixelcut feature"):
        GenerateBackgroundOperator(
            task_id="g", conn_id=["pixelcut_default", "poof_default"], scene="marble", **BUCKETS
        ).prepare_job()


def test_one_close_closes_every_account_hooks_clients_from_sync_code_too(vendors: FakeVendors) -> None:
    """The pre-flight (sync) and the batch (its event loop) close a chain's hooks with one coroutine."""
    job = RemoveBackgroundOperator(task_id="t", conn_id=CHAIN, **BUCKETS).prepare_job()
    for hook in job.hooks:
        hook.get_balance()  # opens each hook's sync client
    assert len(job.hooks) == 3 and all(hook._client is not None for hook in job.hooks)
    bucket_job.run_coroutine(job.aclose_hooks())
    assert all(hook._client is None and hook._aclient is None for hook in job.hooks)


def test_a_shard_planned_for_a_chain_is_taken_by_the_same_chain_only(vendors: FakeVendors) -> None:
    chain = ["poof_default", "pixian_default"]
    storage, refs = _kept_plan(conn_id=chain)
    job = RemoveBackgroundOperator(task_id="t", conn_id=chain, **BUCKETS).prepare_job()
    assert refs[0].accepted == job.identity.accepted and len(refs[0].accepted) == 2
    ran = dataclasses.replace(job, storage=storage, shard=refs[0])  # type: ignore[arg-type]
    assert len(ran.plan_batch().items) == 5
    alone = RemoveBackgroundOperator(task_id="u", conn_id="poof_default", **BUCKETS).prepare_job()
    alone = dataclasses.replace(alone, storage=storage, shard=refs[0])  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match=r"vendors \['poof', 'pixian'\] \(this task: \['poof'\]\)"):
        alone.plan_batch()
    for closing in (job, alone):
        bucket_job.run_coroutine(closing.aclose_hooks())


def test_a_chain_plans_with_its_widest_limits(vendors: FakeVendors) -> None:
    """16x16 is under Pixelcut's 64 px minimum, not Pixian's: with Pixian in the chain it is billable."""
    storage = MemoryStorage({"img/small.png": _png()}, bucket="raw")
    alone = RemoveBackgroundOperator(task_id="a", conn_id="pixelcut_default", **BUCKETS).prepare_job()
    chain = RemoveBackgroundOperator(
        task_id="c", conn_id=["pixelcut_default", "pixian_default"], **BUCKETS
    ).prepare_job()
    [rejected] = dataclasses.replace(alone, storage=storage).plan_batch().settled  # type: ignore[arg-type]
    assert (rejected.status, rejected.code) == ("rejected", "resolution_too_low")
    plan = dataclasses.replace(chain, storage=storage).plan_batch()  # type: ignore[arg-type]
    assert [item.source.name for item in plan.items] == ["img/small.png"] and plan.settled == []
    assert alone.planning_limits == alone.processor.limits  # one connection: its own, as always
    pixelcut, pixian = (account.processor.limits for account in chain.chain.accounts)  # type: ignore[union-attr]
    assert (
        chain.planning_limits
        == bucket_job.widest_limits([pixelcut, pixian])
        == InputLimits(
            max_bytes=max(pixelcut.max_bytes, pixian.max_bytes),
            min_side=1,  # Pixian has no minimum
            max_side=None,  # nor a maximum side (its limit is in pixels)
            max_pixels=None,  # Pixelcut has no pixel limit
            formats=pixelcut.formats | pixian.formats,
        )
    )
    assert vendors.requests == []  # planning makes no call
    for job in (alone, chain):
        bucket_job.run_coroutine(job.aclose_hooks())


def test_widest_limits_takes_each_limit_from_the_most_permissive_account() -> None:
    small = InputLimits(max_bytes=10, min_side=64, max_side=6000, max_pixels=100, formats=frozenset({"PNG"}))
    large = InputLimits(max_bytes=20, min_side=32, max_side=8000, max_pixels=50, formats=frozenset({"JPEG"}))
    assert bucket_job.widest_limits([small]) is small
    assert bucket_job.widest_limits([small, large]) == InputLimits(
        max_bytes=20, min_side=32, max_side=8000, max_pixels=100, formats=frozenset({"PNG", "JPEG"})
    )
