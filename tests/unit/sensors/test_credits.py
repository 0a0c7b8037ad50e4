"""CreditsSensor in every mode, over MockTransport vendors: thresholds, quirks, failures, deferral."""

from __future__ import annotations

import inspect
import logging
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from airflow.sdk import DAG, PokeReturnValue, task
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.sensors.credits import CreditsSensor
from airflow_provider_bgremoval.triggers.credits import DEFAULT_MAX_POLL_INTERVAL, CreditsTrigger
from tests.support.balances import SECRETS, FakeVendors

CONNS = {"pixelcut": "pixelcut_default", "pixian": "pixian_default", "poof": "poof_default"}


def sensor(conn_id: str = "pixelcut_default", min_credits: Any = 10, **kwargs: Any) -> CreditsSensor:
    kwargs.setdefault("poke_interval", 0)
    kwargs.setdefault("timeout", 60)
    return CreditsSensor(task_id="credits", conn_id=conn_id, min_credits=min_credits, **kwargs)


def context() -> dict[str, Any]:
    ti = mock.MagicMock()
    ti.get_first_reschedule_date.return_value = None
    return {"ti": ti}


def poke(s: CreditsSensor) -> PokeReturnValue:
    return s.poke(context())  # type: ignore[arg-type]


# -- thresholds and vendor quirks ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("balance", "minimum", "done"),
    [(100, 99, True), (100, 100, True), (100, "100", True), (100, 101, False), (0, 0, True), (0, 1, False)],
)
def test_poke_thresholds_pixelcut(vendors: FakeVendors, balance: int, minimum: Any, done: bool) -> None:
    vendors.set_pixelcut(balance)
    result = poke(sensor(min_credits=minimum))
    assert result.is_done is done
    if done:
        assert result.xcom_value == {
            "vendor": "pixelcut",
            "remaining": str(balance),
            "state": "active",
            "credit_pack": None,
        }
    else:
        assert result.xcom_value is None


@pytest.mark.parametrize("credits", ["42", 42, "42.0"])
def test_pixelcut_credits_as_string_or_number(vendors: FakeVendors, credits: Any) -> None:
    vendors.set_pixelcut(credits)
    assert poke(sensor(min_credits=42)).is_done
    assert not poke(sensor(min_credits="42.01")).is_done


@pytest.mark.parametrize(
    ("credits", "minimum", "done"),
    [
        (10.1, "10.1", True),  # equal, fractional
        (10.1, 10.1, True),  # a float threshold is compared as Decimal(str(10.1)), not 10.0999...
        (0.3, 0.3, True),
        ("0.30000001", "0.3", True),
        (10.1, "10.10000001", False),
        (123.5, 123.49, True),
    ],
)
def test_pixian_fractional_thresholds_are_exact(
    vendors: FakeVendors, credits: Any, minimum: Any, done: bool
) -> None:
    vendors.set_pixian(credits)
    assert poke(sensor("pixian_default", minimum)).is_done is done


def test_pixian_dormant_counts_as_zero(vendors: FakeVendors) -> None:
    vendors.set_pixian(500, state="dormant")
    assert not poke(sensor("pixian_default", 1)).is_done
    result = poke(sensor("pixian_default", 0))
    assert result.is_done
    assert result.xcom_value["remaining"] == "0"
    assert result.xcom_value["state"] == "dormant"


def test_poof_remaining_is_max_minus_used(vendors: FakeVendors) -> None:
    vendors.set_poof(2000, 1234)
    result = poke(sensor("poof_default", 766))
    assert result.is_done
    assert result.xcom_value == {
        "vendor": "poof",
        "remaining": "766",
        "state": "active",
        "credit_pack": "Pro",
    }
    assert not poke(sensor("poof_default", 767)).is_done
    vendors.set_poof(100, 150)  # over-used: clamped at 0
    assert not poke(sensor("poof_default", "0.5")).is_done


@pytest.mark.parametrize("bad", ["abc", -1, "-0.5", "nan", "inf", None, True])
def test_bad_threshold_is_refused_at_parse(bad: Any) -> None:
    with pytest.raises(InvalidOptionError, match="min_credits"):
        sensor(min_credits=bad)


def test_templated_threshold_is_checked_at_run(vendors: FakeVendors) -> None:
    s = sensor(min_credits="{{ params.need }}")
    assert "min_credits" in s.template_fields
    s.min_credits = "not-a-number"  # what a bad render leaves: retrying cannot help
    with pytest.raises(AirflowFailException, match="min_credits"):
        poke(s)


# -- poke mode -------------------------------------------------------------------------------------
def test_poke_mode_waits_until_enough(vendors: FakeVendors) -> None:
    vendors.set_pixelcut(5)

    def top_up(vendor: str, calls: int) -> None:
        if calls == 3:
            vendors.set_pixelcut(50)

    vendors.on_request = top_up
    result = sensor(min_credits=10).execute(context())  # type: ignore[arg-type]
    assert result["remaining"] == "50"
    assert vendors.calls("pixelcut") == 3


def test_poke_mode_timeout_and_soft_fail(vendors: FakeVendors) -> None:
    vendors.set_pixelcut(5)
    with pytest.raises(AirflowSensorTimeout):
        sensor(min_credits=10, timeout=0).execute(context())  # type: ignore[arg-type]
    with pytest.raises(AirflowSkipException):
        sensor(min_credits=10, timeout=0, soft_fail=True).execute(context())  # type: ignore[arg-type]


def test_poke_mode_exponential_backoff_is_the_base_sensors(vendors: FakeVendors) -> None:
    vendors.set_pixelcut(5)
    s = sensor(min_credits=10, timeout=0, exponential_backoff=True, poke_interval=5, max_wait=7)
    assert s._get_next_poke_interval(0.0, lambda: 0.0, 5) <= 7


# -- reschedule mode -------------------------------------------------------------------------------
def test_reschedule_mode_raises_reschedule(vendors: FakeVendors) -> None:
    vendors.set_pixelcut(5)
    s = sensor(min_credits=10, mode="reschedule", poke_interval=120)
    with pytest.raises(AirflowRescheduleException) as info:
        s.execute(context())  # type: ignore[arg-type]
    assert info.value.reschedule_date is not None
    assert vendors.calls("pixelcut") == 1
    vendors.set_pixelcut(10)
    assert s.execute(context())["remaining"] == "10"  # type: ignore[arg-type]


# -- deferrable ------------------------------------------------------------------------------------
def test_deferrable_defaults_to_config() -> None:
    default = inspect.signature(CreditsSensor.__init__).parameters["deferrable"].default
    assert default is False  # [operators] default_deferrable defaults to false


def test_deferrable_pokes_once_then_defers(vendors: FakeVendors) -> None:
    vendors.set_pixian("9.5")
    s = sensor("pixian_default", "10.25", deferrable=True, poke_interval=30, timeout=3600)
    with pytest.raises(TaskDeferred) as info:
        s.execute(context())  # type: ignore[arg-type]
    assert vendors.calls("pixian") == 1
    trigger = info.value.trigger
    assert isinstance(trigger, CreditsTrigger)
    assert info.value.method_name == "execute_complete"
    assert info.value.timeout == timedelta(seconds=3600)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_bgremoval.triggers.credits.CreditsTrigger"
    assert kwargs == {
        "conn_id": "pixian_default",
        "min_credits": "10.25",
        "poll_interval": 30.0,
        "exponential_backoff": False,
        "max_poll_interval": DEFAULT_MAX_POLL_INTERVAL,
    }
    assert CreditsTrigger(**kwargs) == trigger


def test_deferrable_passes_backoff_to_trigger(vendors: FakeVendors) -> None:
    vendors.set_pixelcut(0)
    s = sensor(
        min_credits=1,
        deferrable=True,
        poke_interval=10,
        exponential_backoff=True,
        max_wait=timedelta(minutes=2),
    )
    with pytest.raises(TaskDeferred) as info:
        s.execute(context())  # type: ignore[arg-type]
    trigger = info.value.trigger
    assert trigger.exponential_backoff is True
    assert trigger.max_poll_interval == 120.0


def test_deferrable_does_not_defer_when_enough(vendors: FakeVendors) -> None:
    vendors.set_poof(100, 0)
    result = sensor("poof_default", 100, deferrable=True).execute(context())  # type: ignore[arg-type]
    assert result["remaining"] == "100"


def test_execute_complete_events() -> None:
    s = sensor(deferrable=True)
    balance = {"vendor": "pixelcut", "remaining": "12", "state": "active", "credit_pack": None}
    event = {
        "status": "success",
        "balance": balance,
        "min_credits": "10",
        "polls": 3,
        "conn_id": "pixelcut_default",
    }
    assert s.execute_complete(context(), event) == balance  # type: ignore[arg-type]
    with pytest.raises(AirflowFailException, match="bad key"):
        s.execute_complete(context(), {"status": "error", "fatal": True, "message": "bad key"})  # type: ignore[arg-type]
    with pytest.raises(AirflowException, match="boom") as info:
        s.execute_complete(context(), {"status": "error", "fatal": False, "message": "boom"})  # type: ignore[arg-type]
    assert not isinstance(info.value, AirflowFailException)
    with pytest.raises(AirflowException, match="without a trigger event"):
        s.execute_complete(context(), None)  # type: ignore[arg-type]


# -- failures --------------------------------------------------------------------------------------
@pytest.mark.parametrize("vendor", ["pixelcut", "pixian", "poof"])
@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_auth_failure_fails_at_once(
    vendors: FakeVendors,
    vendor: str,
    mode: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    vendors.script[vendor] = [401]
    kwargs: dict[str, Any] = {"deferrable": True} if mode == "deferrable" else {"mode": mode}
    s = sensor(CONNS[vendor], 1, **kwargs)
    with caplog.at_level(logging.DEBUG), pytest.raises(AirflowFailException) as info:
        s.execute(context())  # type: ignore[arg-type]
    assert "VendorAuthError" in str(info.value)
    assert vendors.calls(vendor) == 1  # not retried
    logs = caplog.text + capsys.readouterr().out
    for secret in SECRETS:
        assert secret not in str(info.value)
        assert secret not in logs


def test_auth_failure_with_soft_fail_skips(vendors: FakeVendors) -> None:
    vendors.script["poof"] = [401, 401]
    with pytest.raises(AirflowSkipException):
        sensor("poof_default", 1, soft_fail=True).execute(context())  # type: ignore[arg-type]
    with pytest.raises(AirflowSkipException):
        sensor("poof_default", 1, soft_fail=True, deferrable=True).execute(context())  # type: ignore[arg-type]


def test_missing_connection_fails_at_once(vendors: FakeVendors) -> None:
    with pytest.raises(AirflowFailException, match="nope_conn"):
        sensor("nope_conn", 1).execute(context())  # type: ignore[arg-type]


def test_5xx_is_retried_then_polling_continues(
    vendors: FakeVendors, sleeper: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # One poke: the hook retries the 503s (time travel); the poke still succeeds on the 3rd attempt.
    vendors.set_pixelcut(20)
    vendors.script["pixelcut"] = [503, 502]
    assert poke(sensor(min_credits=10)).is_done
    assert vendors.calls("pixelcut") == 3
    assert len(sleeper.waits) == 2

    # A poke whose retries are all exhausted is logged and not fatal; the next poke succeeds.
    vendors.requests.clear()
    vendors.script["pixelcut"] = [503] * 6
    with caplog.at_level(logging.WARNING):
        result = sensor(min_credits=10).execute(context())  # type: ignore[arg-type]
    assert result["remaining"] == "20"
    assert vendors.calls("pixelcut") == 7  # 6 failed attempts (one poke) + 1
    assert "failed after retries" in caplog.text + capsys.readouterr().out


def test_5xx_until_timeout_times_out_not_fails(vendors: FakeVendors) -> None:
    vendors.script["pixian"] = [500] * 50
    with pytest.raises(AirflowSensorTimeout):
        sensor("pixian_default", 1, timeout=0).execute(context())  # type: ignore[arg-type]


def test_secrets_are_masked(vendors: FakeVendors) -> None:
    with mock.patch("airflow_provider_bgremoval.hooks.base.mask_secret") as masked:
        poke(sensor(min_credits=1))
    masked.assert_any_call("sk_unit_pixelcut_secret_0123456789")


def test_credit_amounts_are_logged_as_people_write_them(
    vendors: FakeVendors, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    vendors.set_pixian("1000.0")  # Pixian's own notation
    with caplog.at_level(logging.INFO):
        result = poke(sensor("pixian_default", "12.50"))
    assert result.xcom_value["remaining"] == "1000.0"  # XCom keeps the vendor's value
    logs = caplog.text + capsys.readouterr().out
    assert "1000 usable credits" in logs
    assert "threshold 12.5: met" in logs
    assert "1000.0" not in logs


# -- pooled accounts -------------------------------------------------------------------------------
POOL = ["pixian_default", "poof_default"]


def pool_sensor(**kwargs: Any) -> CreditsSensor:
    kwargs.setdefault("poke_interval", 0)
    kwargs.setdefault("timeout", 60)
    return CreditsSensor(task_id="credits", conn_id=POOL, **kwargs)


def test_pool_any_waits_for_one_account(vendors: FakeVendors) -> None:
    vendors.set_pixian("9.5")
    vendors.set_poof(100, 94)
    s = pool_sensor(min_credits=10, pooling="any")
    assert not poke(s).is_done
    vendors.set_poof(100, 90)
    result = poke(s)
    assert result.is_done
    pool = result.xcom_value
    assert (pool["met_by"], pool["total"], pool["unit"]) == (["poof_default"], "19.5", "credits")
    assert pool["balances"]["poof_default"]["remaining"] == "10"


def test_pool_total_in_images_at_each_vendors_cost(vendors: FakeVendors) -> None:
    vendors.set_pixian("4.5")  # 4.5 credits at 1.5 per image: 3 images
    vendors.set_poof(100, 98)  # 2 credits at the cost table's 1: 2 images
    s = pool_sensor(min_images=5, pooling="total", cost_per_image={"pixian_default": "1.5"})
    pool = poke(s).xcom_value
    assert pool["amounts"] == {"pixian_default": "3", "poof_default": "2"}
    assert pool["costs"] == {"pixian_default": "1.5", "poof_default": "1"}
    assert pool["met_by"] == POOL
    assert not poke(
        pool_sensor(min_images=6, pooling="total", cost_per_image={"pixian_default": 1.5})
    ).is_done


def test_a_cost_for_a_connection_not_watched_fails_at_once(vendors: FakeVendors) -> None:
    # a typo ('pixian_defualt') would price pixian_default at its vendor's cost table instead
    s = pool_sensor(min_images=5, pooling="total", cost_per_image={"pixian_defualt": "1.5"})
    with pytest.raises(AirflowFailException, match="'pixian_defualt' is not one of the connections"):
        poke(s)
    assert vendors.requests == []


def test_pool_fatal_error_fails_unless_met(vendors: FakeVendors) -> None:
    vendors.set_poof(100, 0)
    vendors.script["pixian"] = [401, 401]
    assert poke(pool_sensor(min_credits=50)).is_done  # poof alone has enough
    with pytest.raises(AirflowFailException, match="pixian_default: VendorAuthError"):
        poke(pool_sensor(min_credits=500))
    with pytest.raises(AirflowFailException, match="ghost"):
        poke(CreditsSensor(task_id="c", conn_id=["ghost"], min_images=1, poke_interval=0))


def test_pool_defers_to_a_pool_trigger_that_round_trips(vendors: FakeVendors) -> None:
    from airflow.sdk.serde import deserialize, serialize

    vendors.set_pixian("1")
    vendors.set_poof(100, 99)
    s = pool_sensor(min_images=4, pooling="total", deferrable=True, poke_interval=30, timeout=600)
    with pytest.raises(TaskDeferred) as info:
        s.execute(context())  # type: ignore[arg-type]
    trigger = info.value.trigger
    path, kwargs = trigger.serialize()
    assert kwargs == {
        "conn_id": POOL,
        "min_credits": None,
        "poll_interval": 30.0,
        "exponential_backoff": False,
        "max_poll_interval": DEFAULT_MAX_POLL_INTERVAL,
        "pooling": "total",
        "min_images": 4,
        "costs": {"pixian_default": "1", "poof_default": "1"},
    }
    assert CreditsTrigger(**deserialize(serialize(kwargs))) == trigger
    pool = {"met": True, "met_by": POOL, "total": "4"}
    event = {"status": "success", "conn_id": POOL, "pool": pool, "polls": 2}
    assert s.execute_complete(context(), event) == pool  # type: ignore[arg-type]


def test_pool_options_are_validated() -> None:
    with pytest.raises(InvalidOptionError, match="min_credits"):
        CreditsSensor(task_id="c", conn_id=POOL)
    with pytest.raises(InvalidOptionError, match="min_credits"):
        CreditsSensor(task_id="c", conn_id=POOL, min_credits=1, min_images=1)
    with pytest.raises(InvalidOptionError, match="pooling"):
        CreditsSensor(task_id="c", conn_id=POOL, min_credits=1, pooling="some")
    with pytest.raises(InvalidOptionError, match="conn_id"):
        CreditsSensor(task_id="c", conn_id=[], min_credits=1)
    with pytest.raises(InvalidOptionError, match="min_images"):
        CreditsSensor(task_id="c", conn_id=POOL, min_images="2.5")
    assert (
        "min_images" in CreditsSensor(task_id="c", conn_id=POOL, min_images="{{ params.n }}").template_fields
    )


# -- names kept for one release ---------------------------------------------------------------------
def test_get_hook_still_answers_and_warns(vendors: FakeVendors) -> None:
    with pytest.warns(DeprecationWarning, match=r"CreditsSensor\.get_hook\(\) is deprecated"):
        hook = sensor("poof_default").get_hook()
    assert hook.conn_id == "poof_default"


def test_pool_target_still_answers_with_each_accounts_cost_and_warns(vendors: FakeVendors) -> None:
    s = pool_sensor(min_images=5, pooling="total", cost_per_image={"pixian_default": "1.5"})
    with pytest.warns(DeprecationWarning, match=r"CreditsSensor\.pool_target\(\) is deprecated"):
        target = s.pool_target()
    assert target.conn_ids == tuple(POOL)
    assert target.min_images == 5
    assert {k: str(v) for k, v in target.costs.items()} == {"pixian_default": "1.5", "poof_default": "1"}


def test_pool_target_of_a_one_connection_sensor_still_answers(vendors: FakeVendors) -> None:
    with pytest.warns(DeprecationWarning, match=r"CreditsSensor\.pool_target\(\) is deprecated"):
        target = sensor("poof_default", min_credits=10).pool_target()
    assert (target.conn_ids, target.pooling, target.min_credits, target.min_images) == (
        ("poof_default",),
        "any",
        10,
        None,
    )


def test_a_templated_pool_renders_as_the_list(vendors: FakeVendors) -> None:
    """A template of a list Param renders as Python text: the sensor reads it back as the pool."""
    vendors.set_pixian("30")
    vendors.set_poof(100, 70)
    s = sensor("{{ params.pool }}", min_credits=50, pooling="total")
    s.render_template_fields({"params": {"pool": POOL}})  # type: ignore[arg-type]
    assert (s.conn_ids, s.pooled) == (POOL, True)
    pool = poke(s).xcom_value
    assert pool["met_by"] == POOL  # 30 + 30 credits: the pool's total, not one unknown connection
    s.conn_id = "[]"
    with pytest.raises(AirflowFailException, match="non-empty list"):
        poke(s)


def test_a_pool_and_a_threshold_from_upstream_tasks_pass_dag_parse() -> None:
    """An XComArg in a template field is checked once resolved, as a Jinja template is."""
    with DAG("pool_from_xcom", schedule=None):

        @task
        def pick_pool() -> list[str]:
            return POOL

        @task
        def floor() -> int:
            return 50

        s = CreditsSensor(task_id="credits", conn_id=pick_pool(), min_credits=floor(), pooling="total")
    ti = mock.MagicMock()
    ti.xcom_pull.side_effect = [POOL, 50]  # conn_id, then min_credits (template_fields order)
    s.render_template_fields({"ti": ti})  # type: ignore[arg-type]
    assert (s.conn_ids, s.min_credits, s.pooled) == (POOL, 50, True)


def test_deferrable_defers_when_the_connection_cannot_be_read_yet(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first poke cannot read the connection (the API server restarting): the wait goes to the
    # triggerer, which reads it again, instead of poking on in the worker slot.
    from airflow_provider_bgremoval.hooks import base

    real = base.aget_connection
    failures = [RuntimeError("API_SERVER_ERROR: connection lookup timed out")]

    async def flaky(conn_id: str) -> Any:
        if failures:
            raise failures.pop()
        return await real(conn_id)

    monkeypatch.setattr(base, "aget_connection", flaky)
    vendors.set_pixelcut(0)
    s = sensor(min_credits=10, deferrable=True, poke_interval=30, timeout=3600)
    with pytest.raises(TaskDeferred) as info:
        s.execute(context())  # type: ignore[arg-type]
    assert vendors.calls("pixelcut") == 0  # deferred after the one failed poke
    assert info.value.timeout == timedelta(seconds=3600)


def test_a_pool_whose_cost_connection_cannot_be_read_yet_pokes_again(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    # min_images without cost_per_image: each account's vendor cost is read from its connection before
    # the poll. A lookup that timed out (the API server restarting) failed the task at once, without
    # retries (AirflowFailException; with soft_fail: skipped), where one connection is read again.
    from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook

    real = BackgroundRemovalHook.get_connection
    failures = [RuntimeError("API_SERVER_ERROR: connection lookup timed out")]

    def flaky(conn_id: str) -> Any:
        if failures:
            raise failures.pop()
        return real(conn_id)

    monkeypatch.setattr(BackgroundRemovalHook, "get_connection", staticmethod(flaky))
    vendors.set_pixian("3")
    vendors.set_poof(100, 98)
    s = pool_sensor(min_images=1, deferrable=True, soft_fail=True)
    assert not poke(s).is_done  # logged; read again at the next poke (no trigger without its costs)
    assert vendors.requests == []
    assert poke(s).is_done
    monkeypatch.setattr(BackgroundRemovalHook, "get_connection", staticmethod(lambda conn_id: real("ghost")))
    with pytest.raises(AirflowFailException, match="ghost"):  # a missing connection stays fatal
        poke(s)
