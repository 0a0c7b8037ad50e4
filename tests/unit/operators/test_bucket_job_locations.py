"""The bucket operators' buckets and prefixes, checked at DAG parse (templated: at task start, before any
listing), and an empty source listing reported as such, not as a quiet success."""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any
from unittest import mock

import pytest
from PIL import Image

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators import bucket_job, render
from airflow_provider_bgremoval.operators.bucket import GenerateBackgroundOperator, RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator
from airflow_provider_bgremoval.operators.render import RenderRenditionsOperator
from tests.support.balances import FakeVendors
from tests.support.memory_storage import MemoryStorage

BUCKETS = {"source_bucket": "shop", "destination_bucket": "shop-cutouts", "gcp_conn_id": None}
RENDITIONS = [{"name": "thumb", "format": "webp", "size": 256}]


def _operator(kind: type, **kwargs: Any) -> Any:
    """An operator of ``kind`` with the buckets above and ``kwargs``."""
    params = {**BUCKETS, **kwargs}
    if kind is RenderRenditionsOperator:
        return kind(task_id="t", renditions=RENDITIONS, **params)
    if kind is not GenerateBackgroundOperator:
        params.setdefault("conn_id", "poof_default")
    return kind(task_id="t", **params)


OPERATORS = [
    RemoveBackgroundOperator,
    GenerateBackgroundOperator,
    CreditsCheckOperator,
    RenderRenditionsOperator,
]
LITERALS = [
    ({"source_prefix": "gs://shop/2026/"}, "source_prefix", "source_bucket='shop', source_prefix='2026/'"),
    ({"source_bucket": "gs://shop"}, "source_bucket", "source_bucket='shop'"),
    ({"destination_bucket": "gs://shop-cutouts"}, "destination_bucket", "destination_bucket='shop-cutouts'"),
    ({"destination_prefix": "gs://shop-cutouts/2026/"}, "destination_prefix", "destination_prefix='2026/'"),
    ({"source_bucket": "Shop"}, "source_bucket", "lowercase"),
    ({"destination_bucket": "ab"}, "destination_bucket", "3 to 63"),
]


@pytest.mark.parametrize("kind", OPERATORS)
@pytest.mark.parametrize(("given", "parameter", "said"), LITERALS)
def test_a_literal_bucket_or_prefix_gcs_would_never_match_fails_at_dag_parse(
    kind: type, given: dict[str, str], parameter: str, said: str
) -> None:
    with pytest.raises(InvalidOptionError) as info:
        _operator(kind, **given)
    assert info.value.parameter == parameter
    assert said in str(info.value)


def test_a_gs_uri_masters_prefix_fails_at_dag_parse() -> None:
    with pytest.raises(InvalidOptionError, match=r"'masters_prefix'.*masters_prefix='m/'"):
        _operator(RemoveBackgroundOperator, renditions=RENDITIONS, masters_prefix="gs://shop-cutouts/m/")


def _rendered(op: Any, params: dict[str, Any]) -> Any:
    op.render_template_fields({"params": params, "ti": mock.MagicMock()})
    return op


@pytest.mark.parametrize("kind", [RemoveBackgroundOperator, CreditsCheckOperator, RenderRenditionsOperator])
@pytest.mark.parametrize(
    ("field", "value"),
    [("source_prefix", "gs://shop/2026/"), ("source_bucket", "gs://shop"), ("source_bucket", "b")],
)
def test_a_templated_one_fails_at_task_start_before_any_listing(
    kind: type, field: str, value: str, monkeypatch: pytest.MonkeyPatch, vendors: FakeVendors
) -> None:
    storage = MemoryStorage({"2026/a.png": b"x"}, bucket="shop")
    for module in (bucket_job, render):  # the storage either job would list with
        monkeypatch.setattr(module, "GcsStorage", lambda **_: storage)
    op = _operator(kind, **{field: "{{ params.where }}"})  # passes DAG parse: checked once rendered
    _rendered(op, {"where": value})
    with pytest.raises(AirflowFailException, match=rf"invalid '{field}'"):
        op.execute({"ti": mock.MagicMock()})
    assert not storage.requests and not storage.listings


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(out, "PNG")
    return out.getvalue()


def _job(storage: MemoryStorage, **kwargs: Any) -> bucket_job.BucketJob:
    job = _operator(CreditsCheckOperator, **kwargs).prepare_job()
    return dataclasses.replace(job, storage=storage)  # type: ignore[arg-type]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_an_empty_listing_is_a_warning_naming_the_bucket_prefix_and_filters(
    vendors: FakeVendors, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo'd prefix (``2062/``) planned 0 sources and the run succeeded with an INFO line only."""
    storage = MemoryStorage({"2026/a.png": _png(), "2026/b.jpg": _png()}, bucket="shop")
    job = _job(storage, source_prefix="2062/", include="*.png", exclude=["*_old.*"])
    with caplog.at_level(logging.WARNING):
        plan = job.plan_batch()
    assert plan.total == 0
    (warned,) = _warnings(caplog)
    assert "gs://shop/2062/" in warned and "'*.png'" in warned and "'*_old.*'" in warned
    assert "source_prefix" in warned  # says what to check
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the pre-flight's plan kept in the bucket: the same
        writer = job.keep_plan("_bgremoval/plans/dag/run/check/try-1/")
    assert writer.total == 0 and len(_warnings(caplog)) == 1
    bucket_job.run_coroutine(job.aclose_hooks())


def test_filters_leaving_no_explicit_source_is_a_warning_too(
    vendors: FakeVendors, caplog: pytest.LogCaptureFixture
) -> None:
    storage = MemoryStorage({"2026/a.png": _png()}, bucket="shop")
    job = _job(storage, source_prefix="2026/", source_objects=["a.png"], include="*.jpg")
    with caplog.at_level(logging.WARNING):
        assert job.plan_batch().total == 0
    (warned,) = _warnings(caplog)
    assert "source_objects" in warned and "'*.jpg'" in warned
    bucket_job.run_coroutine(job.aclose_hooks())


def test_a_listing_with_sources_warns_nothing(vendors: FakeVendors, caplog: pytest.LogCaptureFixture) -> None:
    storage = MemoryStorage({"2026/a.png": _png()}, bucket="shop")
    job = _job(storage, source_prefix="2026/", include="*.png")
    with caplog.at_level(logging.WARNING):
        assert job.plan_batch().total == 1
    assert _warnings(caplog) == []
    bucket_job.run_coroutine(job.aclose_hooks())
