"""RenderRenditionsOperator: a render-only job with no vendor."""

from __future__ import annotations

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators.render import RenderRenditionsOperator
from airflow_provider_bgremoval.pipeline.processors import RenderProcessor

KW = {"source_bucket": "shop", "destination_bucket": "shop", "gcp_conn_id": None}


def test_the_job_renders_from_the_sources_with_no_hook_and_no_cost() -> None:
    op = RenderRenditionsOperator(
        task_id="r",
        source_prefix="products/masters",
        destination_prefix="products",
        renditions=[{"name": "thumb", "format": "jpeg", "size": 256}],
        **KW,
    )
    job = op.prepare_job()
    assert job.spec.exclude is None  # the provider's own folder is left out by the source listing itself
    assert job.hook is None and job.masters_are_sources
    assert isinstance(job.processor, RenderProcessor) and job.processor.cost_per_image == 0
    assert job.spec.masters_prefix is None and job.spec.source_prefix == "products/masters/"
    assert job.renditions is not None
    assert (
        job.renditions.name_of(job.renditions.renditions[0], "products/masters/a/b.png")
        == "products/thumb/a/b.jpg"
    )
    with pytest.raises(InvalidOptionError):
        _ = job.vendor_hook


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"renditions": []}, "renditions"),
        ({"renditions": [{"name": "x", "size": 0}]}, "renditions[0].size"),
        ({"renditions": [{"name": "x"}], "conn_id": "pixian_default"}, "conn_id"),
        ({"renditions": [{"name": "x"}], "max_credits": 5}, "max_credits"),
        ({"renditions": [{"name": "x"}], "max_images": 10}, "max_images"),
        ({"renditions": [{"name": "x"}], "failover_on": ["outage"]}, "failover_on"),
        ({"renditions": [{"name": "x"}], "circuit_breaker": {"window": 5}}, "circuit_breaker"),
        ({"renditions": [{"name": "x"}], "max_credits_per_account": {"a": 1}}, "max_credits_per_account"),
    ],
)
def test_refuses_vendor_parameters_and_bad_renditions_at_parse(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        RenderRenditionsOperator(task_id="r", source_prefix="m/", destination_prefix="out/", **kwargs, **KW)
    assert info.value.parameter == field


def test_a_rendition_with_no_name_or_given_as_a_preset_s_name_is_refused_clearly_at_parse() -> None:
    # the message was "field required (got ArgsKwargs((), {'format': 'jpeg', ...)"
    for renditions, field in (
        ([{"preset": "amazon_main"}], "renditions[0].name"),
        (["ebay"], "renditions[0]"),
    ):
        with pytest.raises(InvalidOptionError) as info:
            RenderRenditionsOperator(
                task_id="r", source_prefix="m/", destination_prefix="out/", renditions=renditions, **KW
            )
        assert info.value.parameter == field and "ArgsKwargs" not in str(info.value)
        assert "'name': " in str(info.value)


def test_a_rendition_folder_inside_the_masters_is_refused_in_their_bucket_only() -> None:
    op = RenderRenditionsOperator(
        task_id="r", source_prefix="products/", destination_prefix="out/", renditions=[{"name": "x"}], **KW
    )
    assert op.prepare_job().renditions is not None  # different prefixes: fine
    inside = {"source_prefix": "products/masters/", "destination_prefix": "products/"}
    with pytest.raises(InvalidOptionError, match="overlaps the masters prefix"):
        RenderRenditionsOperator(renditions=[{"name": "masters"}], task_id="r", **inside, **KW)
    # Masters at the root of another bucket: the renditions cannot touch them.
    other = RenderRenditionsOperator(
        task_id="r",
        source_bucket="masters-a",
        destination_bucket="renditions-b",
        renditions=[{"name": "x"}],
        gcp_conn_id=None,
    )
    layout = other.prepare_job().renditions
    assert layout is not None and layout.name_of(layout.renditions[0], "products/a.png") == "x/products/a.png"


def test_lineage_reads_the_masters_and_writes_every_rendition_folder() -> None:
    op = RenderRenditionsOperator(
        task_id="r",
        source_prefix="products/masters",
        destination_prefix="products",
        renditions=[{"name": "thumb", "format": "jpeg", "size": 256}, {"name": "web", "format": "webp"}],
        source_bucket="shop",
        destination_bucket="site",
        gcp_conn_id=None,
    )
    inputs, outputs = op.lineage_datasets()
    assert inputs == [("gs://shop", "products/masters/")]  # the masters are its sources: read, not written
    assert outputs == [("gs://site", "products/thumb/"), ("gs://site", "products/web/")]
