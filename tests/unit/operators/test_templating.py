"""Template fields given what Airflow resolves before ``execute()``, and whole-value templates of lists/dicts.

An ``XComArg`` (``budget_task()``) in a template field is checked once resolved, as a Jinja string is;
the default (non-native) rendering prints a list or dict Param as Python text, which is read back.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from airflow.sdk import DAG, task

from airflow_provider_bgremoval.credits import parse_credits
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.bucket_job import is_template
from airflow_provider_bgremoval.operators.monitor import CreditMonitorOperator, parse_thresholds
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator

BUCKETS = {"source_bucket": "raw", "destination_bucket": "out", "gcp_conn_id": None}
#: A template field → a value an upstream task could return for it.
UPSTREAM_VALUES = {
    "max_credits": 5,
    "max_images": 5,
    "cost_per_image": 2,
    "conn_id": "pixian_default",
    "output_format": "webp",
    "crop": True,
    "renditions": [{"name": "thumb", "format": "jpeg", "size": 256}],
}


def _rendered(op: Any, params: dict[str, Any], xcom: Any = None) -> Any:
    """``op`` with its template fields rendered as the task runner does before ``execute()``."""
    ti = mock.MagicMock()
    ti.xcom_pull.return_value = xcom
    op.render_template_fields({"params": params, "ti": ti})
    return op


def test_is_template_knows_what_airflow_resolves() -> None:
    with DAG("resolved", schedule=None) as dag:

        @task
        def budget() -> int:
            return 5

        assert is_template(budget())  # an XComArg
        assert is_template(budget().map(lambda credits: credits * 2))  # still one
        assert is_template(dag.param("budget", 5))  # a DAG param reference
    assert is_template("{{ params.budget }}")
    assert not any(map(is_template, ("5", 5, None, ["{{ x }}"], {"a": "b"})))


@pytest.mark.parametrize("operator", [RemoveBackgroundOperator, CreditsCheckOperator])
@pytest.mark.parametrize("field", sorted(UPSTREAM_VALUES))
def test_a_template_field_takes_an_xcomarg(operator: type, field: str) -> None:
    """``max_credits=budget_task()`` and the like pass DAG parse and are checked once resolved."""
    with DAG("xcomarg", schedule=None):

        @task
        def upstream() -> Any:
            return UPSTREAM_VALUES[field]

        kwargs: dict[str, Any] = {"conn_id": "pixian_default", **BUCKETS, field: upstream()}
        op = operator(task_id=f"cutouts_{field}", **kwargs)  # refused at DAG parse before the fix
    _rendered(op, {}, UPSTREAM_VALUES[field])
    assert getattr(op, field) == UPSTREAM_VALUES[field]
    op.check_accounts()  # what prepare_job() checks first, on the resolved values
    op.removal_options()
    assert op.parsed_renditions() or op.single_output
    assert parse_credits(op.max_credits, "max_credits") in (None, 5)


def test_a_resolved_xcomarg_is_still_checked() -> None:
    """What the upstream task returns goes through the same checks as a value given at parse."""
    with DAG("xcomarg_checked", schedule=None):

        @task
        def budget() -> str:
            return "lots"

        op = RemoveBackgroundOperator(
            task_id="cutouts", conn_id="pixian_default", max_credits=budget(), **BUCKETS
        )
    _rendered(op, {}, "lots")
    with pytest.raises(InvalidOptionError, match="max_credits"):
        parse_credits(op.max_credits, "max_credits")


def test_max_size_templated_from_an_array_param() -> None:
    """An array Param renders ``'[1000, 1000]'`` (a tuple ``'(1000, 800)'``): read as the pair it prints."""
    with DAG("max_size", schedule=None):
        op = RemoveBackgroundOperator(
            task_id="cutouts", conn_id="pixian_default", max_size="{{ params.box }}", **BUCKETS
        )
    assert _rendered(op, {"box": [1000, 1000]}).removal_options().max_size == (1000, 1000)
    op.max_size = "{{ params.box }}"
    assert _rendered(op, {"box": (1000, 800)}).removal_options().max_size == (1000, 800)
    op.max_size = "{{ params.box }}"
    with pytest.raises(InvalidOptionError, match="max_size"):
        _rendered(op, {"box": [1000, 0]}).removal_options()


def test_monitor_thresholds_templated_as_a_whole() -> None:
    """The monitor's only template field may be a template of the whole mapping (a dict Param)."""
    with DAG("monitor", schedule=None):
        op = CreditMonitorOperator(task_id="monitor", thresholds="{{ params.t }}")
    _rendered(op, {"t": {"pixian_default": 5, "poof_default": "2.5"}})
    assert op.thresholds == "{'pixian_default': 5, 'poof_default': '2.5'}"
    assert {conn: str(value) for conn, value in parse_thresholds(op.thresholds).items()} == {
        "pixian_default": "5",
        "poof_default": "2.5",
    }
    with pytest.raises(InvalidOptionError, match="thresholds"):
        parse_thresholds("['pixian_default']")


def test_monitor_thresholds_known_at_parse_are_checked_at_parse() -> None:
    with pytest.raises(InvalidOptionError, match="thresholds"):
        CreditMonitorOperator(task_id="monitor", thresholds='{"pixian_default": "lots"}')
    with DAG("monitor_xcom", schedule=None):

        @task
        def floors() -> dict[str, int]:
            return {"pixian_default": 5}

        CreditMonitorOperator(task_id="monitor_xcom", thresholds=floors())  # checked once resolved
