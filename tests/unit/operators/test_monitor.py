"""CreditMonitorOperator and check_balances over MockTransport vendors."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators.monitor import (
    BalanceCheck,
    CreditMonitorOperator,
    acheck_balances,
    check_balances,
)
from tests.support.balances import SECRETS, FakeVendors

THRESHOLDS = {"pixelcut_default": 100, "pixian_default": "50.5", "poof_default": 20}


def monitor(**kwargs: Any) -> CreditMonitorOperator:
    kwargs.setdefault("thresholds", THRESHOLDS)
    return CreditMonitorOperator(task_id="credit_monitor", **kwargs)


def execute(op: CreditMonitorOperator) -> Any:
    return op.execute({"ti": mock.MagicMock()})  # type: ignore[arg-type]


def test_all_ok_returns_every_balance(
    vendors: FakeVendors, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    vendors.set_pixelcut("100")
    vendors.set_pixian(50.5)
    vendors.set_poof(2000, 1234)
    with caplog.at_level(logging.INFO):
        result = execute(monitor())
    assert result == {
        "pixelcut_default": {
            "conn_id": "pixelcut_default",
            "vendor": "pixelcut",
            "remaining": "100",
            "threshold": "100",
            "state": "active",
            "credit_pack": None,
            "low": False,
            "error": None,
        },
        "pixian_default": {
            "conn_id": "pixian_default",
            "vendor": "pixian",
            "remaining": "50.5",
            "threshold": "50.5",
            "state": "active",
            "credit_pack": "pack_500",
            "low": False,
            "error": None,
        },
        "poof_default": {
            "conn_id": "poof_default",
            "vendor": "poof",
            "remaining": "766",
            "threshold": "20",
            "state": "active",
            "credit_pack": "Pro",
            "low": False,
            "error": None,
        },
    }
    logs = caplog.text + capsys.readouterr().out
    assert "pixelcut_default (pixelcut): 100 credits remaining, threshold 100: ok" in logs
    assert "poof_default (poof): 766 credits remaining, threshold 20: ok" in logs


def test_low_accounts_fail_listing_every_one(vendors: FakeVendors) -> None:
    vendors.set_pixelcut(99)
    vendors.set_pixian(900, state="dormant")
    vendors.set_poof(100, 50)
    with pytest.raises(AirflowFailException) as info:
        execute(monitor())
    message = str(info.value)
    assert message.startswith("2 of 3 account(s) need attention")
    assert "pixelcut_default (pixelcut): 99 credits remaining, threshold 100: LOW" in message
    assert "pixian_default (pixian): 0 credits remaining [dormant], threshold 50.5: LOW" in message
    assert "poof_default" not in message


def test_warn_mode_returns_and_calls_back(vendors: FakeVendors, capsys: pytest.CaptureFixture[str]) -> None:
    vendors.set_pixelcut(1)
    received: list[list[dict[str, Any]]] = []
    result = execute(monitor(on_low="warn", on_low_callback=received.append))
    assert result["pixelcut_default"]["low"] is True
    assert [[entry["conn_id"] for entry in call] for call in received] == [["pixelcut_default"]]
    assert received[0][0]["remaining"] == "1"
    assert "need attention" in capsys.readouterr().out


def test_callback_runs_before_failing(vendors: FakeVendors) -> None:
    vendors.set_poof(10, 10)
    received: list[Any] = []
    with pytest.raises(AirflowFailException):
        execute(monitor(on_low_callback=received.append))
    assert received and received[0][0]["conn_id"] == "poof_default"


def test_notifier_gets_the_context_with_low_balances(vendors: FakeVendors) -> None:
    class Recorder(BaseNotifier):
        template_fields = ("text",)

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text
            self.seen: list[Any] = []

        def notify(self, context: Any) -> None:
            self.seen.append((self.text, context["low_balances"], context["balances"]))

    vendors.set_pixelcut(5)
    notifier = Recorder(text="{{ low_balances | map(attribute='conn_id') | join(',') }} low")
    with pytest.raises(AirflowFailException):
        execute(monitor(on_low_callback=notifier))
    [(text, low, balances)] = notifier.seen
    assert text == "pixelcut_default low"
    assert [entry["conn_id"] for entry in low] == ["pixelcut_default"]
    assert len(balances) == 3


def test_unreadable_balance_is_a_retryable_failure(vendors: FakeVendors) -> None:
    vendors.script["pixian"] = [401]
    with pytest.raises(AirflowException) as info:
        execute(monitor())
    assert not isinstance(info.value, AirflowFailException)
    assert "pixian_default (pixian): balance unavailable (VendorAuthError" in str(info.value)
    for secret in SECRETS:
        assert secret not in str(info.value)


def test_missing_connection_is_reported(vendors: FakeVendors) -> None:
    [check] = check_balances({"ghost_conn": 1})
    assert check.error is not None
    assert check.vendor is None
    assert not check.ok


async def test_balances_are_read_concurrently(vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch) -> None:
    in_flight = 0
    peak = 0
    real = BackgroundRemovalHook.aget_balance

    async def slow_balance(self: BackgroundRemovalHook[Any]) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        try:
            return await real(self)
        finally:
            in_flight -= 1

    monkeypatch.setattr(BackgroundRemovalHook, "aget_balance", slow_balance)
    checks = await acheck_balances(THRESHOLDS)
    assert peak == 3
    assert [c.conn_id for c in checks] == list(THRESHOLDS)


def test_thresholds_validation() -> None:
    with pytest.raises(InvalidOptionError, match="thresholds"):
        monitor(thresholds={})
    with pytest.raises(InvalidOptionError, match="pixian_default"):
        monitor(thresholds={"pixian_default": "fifty"})
    with pytest.raises(InvalidOptionError, match="on_low"):
        monitor(on_low="panic")
    assert monitor(thresholds={"pixian_default": "{{ params.min }}"}).template_fields == ("thresholds",)


def test_balance_check_equal_is_not_low() -> None:
    assert not BalanceCheck("c", Decimal("10.5"), remaining=Decimal("10.5")).low
    assert BalanceCheck("c", Decimal("10.5"), remaining=Decimal("10.49")).low


def test_describe_writes_credit_amounts_as_people_do() -> None:
    check = BalanceCheck("pixian_default", Decimal("50.50"), "pixian", Decimal("1000.0"), "active")
    assert check.describe() == "pixian_default (pixian): 1000 credits remaining, threshold 50.5: ok"
    assert check.as_dict()["remaining"] == "1000.0"
