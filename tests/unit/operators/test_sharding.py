"""Shards for ``.expand()``: the pre-flight's plan handed on, or a listing split into name lists."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators.sharding import (
    ListImageShardsOperator,
    PlannedShardsOperator,
    split_into_shards,
)
from airflow_provider_bgremoval.pipeline.plan_store import AIRFLOW_MAX_MAP_LENGTH
from airflow_provider_bgremoval.storage.gcs import GcsStorage


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
