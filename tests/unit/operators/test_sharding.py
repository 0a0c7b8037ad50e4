"""Shards for ``.expand()``: the pre-flight's plan handed on, or a listing split into name lists."""

from __future__ import annotations

import asyncio
import io
from typing import Any
from unittest import mock

import pytest
from PIL import Image

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators.sharding import (
    ListImageShardsOperator,
    PlannedShardsOperator,
    split_into_shards,
)
from airflow_provider_bgremoval.pipeline.plan_store import AIRFLOW_MAX_MAP_LENGTH
from airflow_provider_bgremoval.pipeline.planning import (
    META_OPTIONS_HASH,
    META_SOURCE,
    META_SOURCE_GENERATION,
    META_VENDOR,
    BatchSpec,
    OutputIdentity,
    plan_batch,
)
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.vendors.poof import PoofWire

LIMITS = PoofWire.spec.limits


def _context(xcom: Any) -> tuple[dict[str, Any], mock.MagicMock]:
    ti = mock.MagicMock()
    ti.xcom_pull.return_value = xcom
    return {"ti": ti}, ti


def test_planned_shards_hands_on_the_preflights_xcom() -> None:
    shards = [{"plan": "gs://out/p/", "shard": n} for n in range(3)]
    context, ti = _context(shards)
    op = PlannedShardsOperator(task_id="shards", preflight_task_id="check_credits")
    assert op.execute(context) == shards  # type: ignore[arg-type]
    ti.xcom_pull.assert_called_once_with(task_ids="check_credits", key="shards")
    assert "preflight_task_id" in op.template_fields


def test_planned_shards_of_an_empty_plan_map_nothing() -> None:
    context, _ = _context([])
    assert PlannedShardsOperator(task_id="shards", preflight_task_id="check").execute(context) == []  # type: ignore[arg-type]


def test_planned_shards_fail_clearly_when_the_preflight_kept_no_plan() -> None:
    context, _ = _context(None)
    op = PlannedShardsOperator(task_id="shards", preflight_task_id="check_credits")
    with pytest.raises(
        AirflowFailException, match=r"'check_credits' kept no plan: give that pre-flight max_shards"
    ):
        op.execute(context)  # type: ignore[arg-type]


def test_split_into_shards_keeps_order_and_balances_sizes() -> None:
    names = [f"n{i:02d}" for i in range(10)]
    assert split_into_shards(names, max_shards=4) == [names[0:3], names[3:6], names[6:8], names[8:10]]
    assert split_into_shards(names, max_shards=16, min_shard_size=4) == [names[0:5], names[5:10]]
    assert split_into_shards(names, max_shards=3, min_shard_size=50) == [names]
    assert split_into_shards([], max_shards=3) == []


def test_split_into_shards_keeps_names_of_one_output_in_one_shard() -> None:
    # a.jpg and a.png make one output, a.png: in two tasks each would plan alone, miss the collision,
    # and both would pay before the second write was refused
    names = ["a.jpg", "a.k.jpg", "a.png", "b.jpg", "c.jpg", "c.webp"]
    shards = split_into_shards(names, max_shards=3)
    assert sorted(name for shard in shards for name in shard) == sorted(names)
    assert shards == [["a.jpg", "a.png"], ["a.k.jpg", "b.jpg"], ["c.jpg", "c.webp"]]
    assert split_into_shards(["x/.jpg", "x/.png", "x/a.jpg"], max_shards=3) == [
        ["x/.jpg"],
        ["x/.png"],
        ["x/a.jpg"],
    ]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_shards": 0}, "max_shards"),
        ({"max_shards": AIRFLOW_MAX_MAP_LENGTH + 1}, "max_shards"),
        ({"min_shard_size": 0}, "min_shard_size"),
    ],
)
def test_split_into_shards_refuses_bad_parameters(kwargs: dict[str, int], parameter: str) -> None:
    with pytest.raises(InvalidOptionError, match=parameter):
        split_into_shards(["a"], **kwargs)


@pytest.mark.integration
def test_list_image_shards_lists_once_and_splits(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    for name in [*(f"raw/{i:02d}.jpg" for i in range(7)), "raw/notes.txt", "other/x.jpg"]:
        gcs_storage.write(gcs_bucket, name, b"x", content_type="image/jpeg")
    op = ListImageShardsOperator(
        task_id="list",
        source_bucket=gcs_bucket,
        source_prefix="raw",
        include="*.jpg",
        max_shards=3,
        min_shard_size=1,
        gcp_conn_id=None,
    )
    shards = op.execute({})  # type: ignore[arg-type]
    assert shards == [
        ["raw/00.jpg", "raw/01.jpg", "raw/02.jpg"],
        ["raw/03.jpg", "raw/04.jpg"],
        ["raw/05.jpg", "raw/06.jpg"],
    ]


@pytest.mark.parametrize(
    ("destination", "skipped"),
    [
        ({}, ["2026/_bgremoval/"]),  # no destination given: the provider's folder only
        ({"destination_bucket": "cut", "destination_prefix": "2026/cutouts"}, ["2026/_bgremoval/"]),
        ({"destination_bucket": "shop", "destination_prefix": "web/"}, ["2026/_bgremoval/"]),
        (
            {"destination_bucket": "shop", "destination_prefix": "2026/cutouts"},
            ["2026/_bgremoval/", "2026/cutouts/"],
        ),
        (
            {"destination_bucket": "shop", "destination_prefix": "web/", "masters_prefix": "2026/m"},
            ["2026/_bgremoval/", "2026/m/"],
        ),
    ],
)
def test_the_lister_leaves_out_the_providers_folder_and_outputs_it_would_read_back(
    destination: dict[str, str], skipped: list[str]
) -> None:
    op = ListImageShardsOperator(task_id="list", source_bucket="shop", source_prefix="2026", **destination)
    assert op.skipped_folders() == skipped
    assert {"destination_bucket", "destination_prefix", "masters_prefix"} <= set(op.template_fields)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.integration
def test_listed_shards_of_a_same_bucket_layout_never_bill_an_output_again(
    gcs_storage: GcsStorage, gcs_bucket: str
) -> None:
    """
    Bucket ``shop``: sources under ``2026/``, cut-outs under ``2026/cutouts/`` from an earlier run. The
    lister given the destination lists neither the cut-outs nor any ``_bgremoval/`` object; one told
    nothing of it still skips the provider's folders, and planning its shards rejects the cut-outs as
    unsafe names: no output is paid for again as a source (``2026/cutouts/cutouts/shoe.png``).
    """
    photo = _png()
    shoe = gcs_storage.write(gcs_bucket, "2026/shoe.png", photo, content_type="image/png")
    gcs_storage.write(gcs_bucket, "2026/hat.png", photo, content_type="image/png")
    meta = {
        META_SOURCE: shoe.uri,
        META_SOURCE_GENERATION: str(shoe.generation),
        META_OPTIONS_HASH: "fp",
        META_VENDOR: "poof",
    }
    gcs_storage.write(gcs_bucket, "2026/cutouts/shoe.png", photo, content_type="image/png", metadata=meta)
    for internal in ("2026/_bgremoval/manifests/m.jsonl", "2026/cutouts/_bgremoval/claims/c.json"):
        gcs_storage.write(gcs_bucket, internal, b"{}", content_type="application/json")
    batch: dict[str, Any] = {"source_bucket": gcs_bucket, "source_prefix": "2026/"}
    outputs = {"destination_bucket": gcs_bucket, "destination_prefix": "2026/cutouts/"}

    def shards(**destination: str) -> list[list[str]]:
        op = ListImageShardsOperator(task_id="l", min_shard_size=1, gcp_conn_id=None, **batch, **destination)
        return op.execute({})  # type: ignore[arg-type]

    def billed(names: list[str]) -> tuple[list[str], dict[str, str]]:
        spec = BatchSpec(**batch, **outputs, source_objects=names)
        plan = asyncio.run(
            plan_batch(
                gcs_storage, spec, extension=".png", identity=OutputIdentity((("poof", "fp"),)), limits=LIMITS
            )
        )
        return [item.source.name for item in plan.items], {o.source.name: o.code for o in plan.settled}

    told = [name for shard in shards(**outputs) for name in shard]
    assert told == ["2026/hat.png", "2026/shoe.png"]
    assert billed(told) == (["2026/hat.png"], {"2026/shoe.png": "already_done"})

    untold = [name for shard in shards() for name in shard]
    assert untold == ["2026/cutouts/_bgremoval/claims/c.json", "2026/cutouts/shoe.png", *told]
    assert billed(untold) == (
        ["2026/hat.png"],
        {
            "2026/cutouts/_bgremoval/claims/c.json": "unsafe_name",
            "2026/cutouts/shoe.png": "unsafe_name",
            "2026/shoe.png": "already_done",
        },
    )


class _NoStorage(GcsStorage):
    """Any listing fails the test: a refusal must come before the prefix is listed."""

    def list_objects(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("listed before the parameters were checked")


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_shards": 0}, "max_shards"),
        ({"max_shards": AIRFLOW_MAX_MAP_LENGTH + 1}, "max_shards"),
        ({"max_shards": "sixteen"}, "max_shards"),
        ({"min_shard_size": 0}, "min_shard_size"),
        ({"min_shard_size": -5}, "min_shard_size"),
    ],
)
def test_the_lister_refuses_bad_shard_limits_at_dag_parse(kwargs: dict[str, Any], parameter: str) -> None:
    """They were checked only after the whole prefix was listed (a literal max_shards=0 parsed, then
    listed a million names before failing); 'sixteen' was a bare ValueError from int()."""
    with pytest.raises(InvalidOptionError, match=parameter):
        ListImageShardsOperator(task_id="list", source_bucket="shop", **kwargs)


@pytest.mark.parametrize(
    ("rendered", "parameter"),
    [
        ({"max_shards": "0"}, "max_shards"),
        ({"max_shards": ""}, "max_shards"),
        ({"max_shards": "many"}, "max_shards"),
        ({"min_shard_size": "0"}, "min_shard_size"),
    ],
)
def test_templated_shard_limits_are_checked_once_rendered_before_listing(
    monkeypatch: pytest.MonkeyPatch, rendered: dict[str, str], parameter: str
) -> None:
    monkeypatch.setattr("airflow_provider_bgremoval.operators.sharding.GcsStorage", _NoStorage)
    templated = dict.fromkeys(rendered, "{{ params.n }}")
    op = ListImageShardsOperator(task_id="list", source_bucket="shop", gcp_conn_id=None, **templated)
    for name, value in rendered.items():
        setattr(op, name, value)  # as Airflow renders it
    with pytest.raises(InvalidOptionError, match=parameter):
        op.execute({})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("layout", "parameter"),
    [
        ({"destination_bucket": "shop", "destination_prefix": "2026/"}, "destination_prefix"),
        ({"destination_bucket": "shop", "destination_prefix": "/2026"}, "destination_prefix"),
        (
            {"destination_bucket": "shop", "destination_prefix": "web/", "masters_prefix": "2026"},
            "masters_prefix",
        ),
        ({"source_prefix": "", "destination_bucket": "shop", "destination_prefix": ""}, "destination_prefix"),
    ],
)
def test_outputs_at_the_source_prefix_itself_are_refused_not_listed_as_nothing(
    monkeypatch: pytest.MonkeyPatch, layout: dict[str, str], parameter: str
) -> None:
    """Outputs written to the source prefix itself (same bucket): the lister listed around the whole
    prefix and returned no shard, so the run succeeded having processed nothing, silently."""
    monkeypatch.setattr("airflow_provider_bgremoval.operators.sharding.GcsStorage", _NoStorage)
    kwargs: dict[str, Any] = {"source_prefix": "2026", **layout}
    with pytest.raises(InvalidOptionError, match=rf"{parameter}.*is the source prefix"):
        ListImageShardsOperator(task_id="list", source_bucket="shop", **kwargs)
    templated = {name: "{{ params.p }}" for name in layout if name.endswith("prefix")}
    op = ListImageShardsOperator(task_id="list", source_bucket="shop", gcp_conn_id=None, **templated)
    for name, value in kwargs.items():
        setattr(op, name, value)  # as Airflow renders it
    with pytest.raises(InvalidOptionError, match=rf"{parameter}.*is the source prefix"):
        op.execute({})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("layout", "parameter"),
    [
        ({"source_prefix": "gs://shop/2026/"}, "source_prefix"),
        ({"source_bucket": "gs://shop"}, "source_bucket"),
        ({"destination_bucket": "gs://shop", "destination_prefix": "2026/cutouts/"}, "destination_bucket"),
        (
            {"destination_bucket": "shop", "destination_prefix": "gs://shop/2026/cutouts/"},
            "destination_prefix",
        ),
        ({"destination_bucket": "shop", "masters_prefix": "gs://shop/2026/m/"}, "masters_prefix"),
    ],
)
def test_uris_where_buckets_and_prefixes_belong_are_refused(
    monkeypatch: pytest.MonkeyPatch, layout: dict[str, str], parameter: str
) -> None:
    """source_prefix='gs://shop/2026/' listed the objects named 'gs://shop/2026/…' (none) and returned no
    shard: the run succeeded having processed nothing; a gs:// destination was not listed around."""
    monkeypatch.setattr("airflow_provider_bgremoval.operators.sharding.GcsStorage", _NoStorage)
    kwargs: dict[str, Any] = {"source_bucket": "shop", "source_prefix": "2026/", **layout}
    with pytest.raises(InvalidOptionError, match=rf"'{parameter}'.*gs://"):
        ListImageShardsOperator(task_id="list", **kwargs)
    op = ListImageShardsOperator(task_id="list", source_bucket="{{ params.b }}", gcp_conn_id=None)
    for name, value in kwargs.items():
        setattr(op, name, value)  # as Airflow renders it
    with pytest.raises(InvalidOptionError, match=rf"'{parameter}'.*gs://"):
        op.execute({})  # type: ignore[arg-type]


def test_a_bucket_name_gcs_refuses_is_refused_at_dag_parse_as_by_the_bucket_tasks() -> None:
    """The lister checks its layout with the bucket tasks' own rule (:func:`.check_location`)."""
    with pytest.raises(InvalidOptionError, match="not a bucket name GCS accepts") as refused:
        ListImageShardsOperator(task_id="list", source_bucket="Shop_Photos", gcp_conn_id=None)
    assert refused.value.parameter == "source_bucket"
