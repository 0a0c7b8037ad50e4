"""CreditMonitorOperator and check_balances over MockTransport vendors."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.sdk.observability.stats import Stats

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators import monitor as monitor_module
from airflow_provider_bgremoval.operators.monitor import (
    BalanceCheck,
    CreditMonitorOperator,
    acheck_balances,
    check_balances,
)
from airflow_provider_bgremoval.storage.gcs import GcsStorage
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


# ----- forecasts ----------------------------------------------------------------------------------

DAY0 = datetime(2026, 3, 1, 8, tzinfo=timezone.utc)


def forecasting(bucket: str, **kwargs: Any) -> CreditMonitorOperator:
    kwargs.setdefault("thresholds", {"poof_default": 20})
    return monitor(
        forecast_days=7, history_bucket=bucket, gcp_conn_id=None, observed_at="logical_date", **kwargs
    )


def run_on(op: CreditMonitorOperator, day: int) -> Any:
    ti = mock.MagicMock(dag_id="credit_dag")
    context = {"ti": ti, "run_id": f"day_{day}", "logical_date": DAY0 + timedelta(days=day)}
    return op.execute(context)  # type: ignore[arg-type]


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, float, dict[str, Any]]]:
    """Airflow's Stats calls, recorded (Airflow's own object; the monitor under test is real)."""
    seen: list[tuple[str, str, float, dict[str, Any]]] = []
    monkeypatch.setattr(
        Stats, "gauge", lambda name, value, *a, tags=None, **k: seen.append(("gauge", name, value, tags))
    )
    monkeypatch.setattr(
        Stats, "incr", lambda name, count=1, *a, tags=None, **k: seen.append(("incr", name, count, tags))
    )
    return seen


def test_forecast_alert_calls_back_warns_and_charts(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket: str, metrics: list[Any]
) -> None:
    received: list[list[dict[str, Any]]] = []
    op = forecasting(gcs_bucket, on_low_callback=received.append)
    for day, used in enumerate((1000, 1100, 1200)):  # 1000, 900, 800 credits left: 100 a day
        vendors.set_poof(2000, used)
        result = run_on(op, day)
    assert received == []  # 800 credits last 8 days: no alert
    fc = result["poof_default"]["forecast"]
    assert (fc["burn_rate"], fc["runs_out_on"], fc["alert"], fc["samples"]) == ("100", "2026-03-11", False, 3)
    vendors.set_poof(2000, 1350)  # 650 left: 6.5 days at 100/day
    result = run_on(op, 3)  # on_low="fail", but a forecast alone never fails the task
    [[entry]] = received
    assert entry["conn_id"] == "poof_default" and entry["low"] is False
    assert entry["forecast"]["alert"] is True  # 650 left at 350/3 a day: 5.6 days
    assert (entry["forecast"]["top_up"], entry["forecast"]["burn_rate"]) == ("167", "116.67")
    chart = result["poof_default"]["chart"]
    assert chart == f"gs://{gcs_bucket}/_credit_history/runs/credit_dag/day_3/poof_default.png"
    png = gcs_storage.read(gcs_bucket, chart.split("/", 3)[3])
    assert png.startswith(b"\x89PNG")
    report = json.loads(gcs_storage.read(gcs_bucket, "_credit_history/runs/credit_dag/day_3/report.json"))
    assert report["balances"]["poof_default"]["forecast"]["runs_out_on"] == "2026-03-09"
    tags = {"conn_id": "poof_default", "vendor": "poof"}
    assert all(seen_tags == tags for *_, seen_tags in metrics)
    gauges = {name: value for kind, name, value, _ in metrics if kind == "gauge"}  # the last of each
    assert gauges["bgremoval.credits.remaining.poof_default"] == 650
    assert gauges["bgremoval.credits.spent.poof_default"] == 150
    assert gauges["bgremoval.credits.burn_rate.poof_default"] == pytest.approx(350 / 3)
    assert gauges["bgremoval.credits.days_left.poof_default"] == pytest.approx(650 / (350 / 3))
    assert ("incr", "bgremoval.credits.forecast_alerts.poof_default", 1, tags) in metrics


def test_a_top_up_counts_and_a_rerun_records_once(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket: str, metrics: list[Any]
) -> None:
    op = forecasting(gcs_bucket)
    for day, used in enumerate((1000, 1100, 500)):  # the third day: +600 (top-up)
        vendors.set_poof(2000, used)
        result = run_on(op, day)
    run_on(op, 2)  # a retried run: same logical date, one reading
    assert result["poof_default"]["forecast"]["burn_rate"] == "100"
    assert result["poof_default"]["forecast"]["samples"] == 3
    history = gcs_storage.read(gcs_bucket, "_credit_history/poof_default.jsonl").decode().splitlines()
    assert len(history) == 3
    assert (
        "incr",
        "bgremoval.credits.top_ups.poof_default",
        1,
        {"conn_id": "poof_default", "vendor": "poof"},
    ) in metrics
    assert not any(name.startswith("bgremoval.credits.spent") and value < 0 for _, name, value, _ in metrics)


def test_threshold_still_fails_with_forecasting(vendors: FakeVendors, gcs_bucket: str) -> None:
    vendors.set_poof(2000, 1990)
    with pytest.raises(AirflowFailException, match="poof_default \\(poof\\): 10 credits remaining"):
        run_on(forecasting(gcs_bucket), 0)


def test_notifier_gets_forecast_alerts_and_alert_text(vendors: FakeVendors, gcs_bucket: str) -> None:
    class Recorder(BaseNotifier):
        template_fields = ("text",)

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text
            self.seen: list[Any] = []

        def notify(self, context: Any) -> None:
            self.seen.append((self.text, context["forecast_alerts"]))

    notifier = Recorder("{{ alert_text }}")
    op = forecasting(gcs_bucket, on_low_callback=notifier, on_low="warn")
    for day, used in enumerate((1500, 1700)):
        vendors.set_poof(2000, used)
        run_on(op, day)
    [(text, alerts)] = notifier.seen
    assert notifier.text == "{{ alert_text }}"  # rendered on a copy: the next run renders afresh
    assert text == (
        "poof_default (poof): 300 credits, burning 200 credits/day, runs out on 2026-03-03 (in 1.5 days): "
        "FORECAST LOW within 7 days; a top-up of 1100 credits covers 7 days"
    )
    assert [a["conn_id"] for a in alerts] == ["poof_default"]


def test_forecast_options_are_validated(gcs_bucket: str) -> None:
    with pytest.raises(InvalidOptionError, match="forecast_days"):
        monitor(forecast_days=7)
    with pytest.raises(InvalidOptionError, match="forecast_days"):
        monitor(forecast_days=0, history_bucket=gcs_bucket)
    with pytest.raises(InvalidOptionError, match="more than 90 days"):
        monitor(forecast_days=365, history_bucket=gcs_bucket)
    assert monitor(forecast_days=90, history_bucket=gcs_bucket).forecast_days == 90
    with pytest.raises(InvalidOptionError, match="observed_at"):
        monitor(observed_at="yesterday")
    with pytest.raises(InvalidOptionError, match="history_limit"):
        monitor(forecast_days=7, history_bucket=gcs_bucket, history_limit=1)


def test_metrics_without_history(vendors: FakeVendors, metrics: list[Any]) -> None:
    execute(monitor())
    names = {name for _, name, _, _ in metrics}
    assert names == {f"bgremoval.credits.remaining.{conn}" for conn in THRESHOLDS}


def test_a_missing_history_bucket_fails_retryably_after_the_alerts(
    vendors: FakeVendors, fake_gcs: Any
) -> None:
    vendors.set_poof(2000, 1990)  # 10 left: under the threshold of 20
    received: list[list[dict[str, Any]]] = []
    op = forecasting("no-such-bucket-for-credit-history", on_low="warn", on_low_callback=received.append)
    with pytest.raises(AirflowException, match="poof_default: history unavailable") as info:
        run_on(op, 0)
    assert not isinstance(info.value, AirflowFailException)
    assert [entry["conn_id"] for entry in received[0]] == ["poof_default"]  # the low balance was alerted
    assert received[0][0]["forecast"] is None


def run_at(op: CreditMonitorOperator, at: datetime, run_id: str) -> Any:
    context = {"ti": mock.MagicMock(dag_id="credit_dag"), "run_id": run_id, "logical_date": at}
    return op.execute(context)  # type: ignore[arg-type]


def history_lines(gcs_storage: GcsStorage, bucket: str, conn_id: str) -> list[dict[str, Any]]:
    data = gcs_storage.read(bucket, f"_credit_history/{conn_id}.jsonl").decode()
    return [json.loads(line) for line in data.splitlines()]


def test_an_idle_large_account_is_forecast_without_overflow(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket: str
) -> None:
    # 0.1 credits spent in 14 days of 100,000: the run-out date would be past year 9999
    op = forecasting(gcs_bucket, thresholds={"pixian_default": 20})
    vendors.set_pixian("100000")
    run_on(op, 0)
    vendors.set_pixian("99999.9")
    fc = run_on(op, 14)["pixian_default"]["forecast"]
    assert (fc["burn_rate"], fc["days_left"], fc["runs_out_on"], fc["alert"]) == ("0.0071", None, None, False)


def test_a_hand_edited_history_line_is_skipped(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [
        '{"at": "2026-03-01T08:00:00+00:00", "remaining": "1000"}',
        '{"at": "2026-03-02T08:00:00+00:00", "remaining": "12 credits"}',
        '{"at": "2026-03-03T08:00:00+00:00", "remaining": "800"}',
    ]
    name = "_credit_history/poof_default.jsonl"
    gcs_storage.write(
        gcs_bucket, name, ("\n".join(lines) + "\n").encode(), content_type="application/x-ndjson"
    )
    received: list[list[dict[str, Any]]] = []
    op = forecasting(gcs_bucket, on_low="warn", on_low_callback=received.append)
    vendors.set_poof(2000, 1990)  # 10 left: under the threshold of 20
    result = run_on(op, 4)
    assert [entry["conn_id"] for entry in received[0]] == ["poof_default"]
    assert result["poof_default"]["forecast"]["burn_rate"] == "247.5"  # 990 in 4 days
    assert "line 2 skipped, not a reading (InvalidOperation" in caplog.text
    assert [line["remaining"] for line in history_lines(gcs_storage, gcs_bucket, "poof_default")] == [
        "1000",
        "800",
        "10",
    ]


def test_a_broken_forecast_never_hides_a_low_balance(
    vendors: FakeVendors, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_chart(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("chart renderer broke")

    monkeypatch.setattr(monitor_module, "render_chart", broken_chart)  # an unexpected failure
    vendors.set_poof(2000, 1990)
    received: list[list[dict[str, Any]]] = []
    op = forecasting(gcs_bucket, on_low_callback=received.append)
    with pytest.raises(AirflowFailException, match="poof_default \\(poof\\): 10 credits remaining"):
        run_on(op, 0)  # the threshold's verdict, after the callback
    assert received[0][0]["conn_id"] == "poof_default" and received[0][0]["forecast"] is None
    op = forecasting(gcs_bucket, on_low="warn", on_low_callback=received.append)
    with pytest.raises(
        AirflowException, match="poof_default: forecast failed \\(RuntimeError: chart renderer"
    ):
        run_on(op, 1)  # warn mode: the broken forecast still fails the task, retryably, after the alert
    assert len(received) == 2


def test_a_short_reading_span_gives_no_forecast(vendors: FakeVendors, gcs_bucket: str) -> None:
    received: list[list[dict[str, Any]]] = []
    op = forecasting(gcs_bucket, on_low_callback=received.append)
    for minute, used in enumerate((1000, 1001)):  # 1000 then 999 a minute apart: not 1440 a day
        vendors.set_poof(2000, used)
        result = run_at(op, DAY0 + timedelta(minutes=minute), f"m{minute}")
    assert result["poof_default"]["forecast"]["burn_rate"] is None and received == []
    eager = forecasting(gcs_bucket, on_low_callback=received.append, forecast_min_span_days=0)
    vendors.set_poof(2000, 1002)
    result = run_at(eager, DAY0 + timedelta(minutes=2), "m2")
    assert result["poof_default"]["forecast"]["burn_rate"] == "1440" and len(received) == 1
    with pytest.raises(InvalidOptionError, match="forecast_min_span_days"):
        forecasting(gcs_bucket, forecast_min_span_days=-1)


def test_a_cleared_old_run_does_not_rewrite_the_past(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket: str, metrics: list[Any]
) -> None:
    op = forecasting(gcs_bucket)
    for day, used in enumerate((1000, 1100, 1200)):  # 1000, 900, 800 left
        vendors.set_poof(2000, used)
        run_on(op, day)
    metrics.clear()
    vendors.set_poof(2000, 1500)  # 500 left today; day 1's run cleared and run again
    result = run_on(op, 1)
    assert [line["remaining"] for line in history_lines(gcs_storage, gcs_bucket, "poof_default")] == [
        "1000",
        "900",
        "800",
    ]
    assert result["poof_default"]["remaining"] == "500"  # the threshold sees today's balance
    assert result["poof_default"]["forecast"]["remaining"] == "800"  # the history's newest reading
    names = {name for _, name, _, _ in metrics}
    assert "bgremoval.credits.remaining.poof_default" in names
    assert not any(".spent." in name or ".top_ups." in name for name in names)


def test_spent_is_from_the_readings_predecessor(
    vendors: FakeVendors, gcs_bucket: str, metrics: list[Any]
) -> None:
    op = forecasting(gcs_bucket)
    for day, used in enumerate((1000, 1100)):  # 1000, 900 left
        vendors.set_poof(2000, used)
        run_on(op, day)
    vendors.set_poof(2000, 1200)  # 800 left on day 2
    run_on(op, 2)
    vendors.set_poof(2000, 1180)  # 820 read a minute before day 2's reading by a racing monitor
    metrics.clear()
    run_at(op, DAY0 + timedelta(days=2, minutes=-1), "racing")
    gauges = {name: value for kind, name, value, _ in metrics if kind == "gauge"}
    assert gauges["bgremoval.credits.spent.poof_default"] == 80  # from day 1's 900, not day 2's 800


def test_a_dormant_pixian_account_is_no_spend(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket: str, metrics: list[Any]
) -> None:
    # 50 a day; on day 2 the pack went dormant (its 950 credits frozen, read as 0 usable), on day 3 a
    # new pack was bought. The drop to 0 is no spend: the rate stays 50, not (50+950+50)/3 a day.
    received: list[list[dict[str, Any]]] = []
    op = forecasting(
        gcs_bucket, thresholds={"pixian_default": 10}, on_low="warn", on_low_callback=received.append
    )
    for day, (credits, state) in enumerate(
        ((1000, "active"), (950, "active"), (950, "dormant"), (1450, "active"), (1400, "active"))
    ):
        vendors.set_pixian(credits, state=state)
        metrics.clear()
        result = run_on(op, day)
        if state == "dormant":
            spent = {name: value for kind, name, value, _ in metrics if ".spent." in name}
            assert spent == {"bgremoval.credits.spent.pixian_default": 0}
            assert result["pixian_default"]["remaining"] == "0"
    fc = result["pixian_default"]["forecast"]
    assert (fc["burn_rate"], fc["days_left"], fc["alert"]) == ("50", 28.0, False)
    lines = history_lines(gcs_storage, gcs_bucket, "pixian_default")
    assert [line.get("usable", True) for line in lines] == [True, True, False, True, True]
    assert len(received) == 1  # only day 2's LOW threshold, never a forecast alert


def test_a_burn_window_that_can_never_give_a_rate_is_refused(gcs_bucket: str) -> None:
    # The spending intervals inside a 12-hour window can never span the 1-day minimum: the monitor
    # said "no burn rate yet (N reading(s))" forever and never alerted.
    with pytest.raises(InvalidOptionError, match="burn_window_days"):
        forecasting(gcs_bucket, burn_window_days=0.5)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidOptionError, match="burn_window_days"):
            forecasting(gcs_bucket, burn_window_days=bad, forecast_min_span_days=0)
    assert forecasting(gcs_bucket, burn_window_days=0.5, forecast_min_span_days=0.5).burn_window_days == 0.5


def test_a_pixian_pack_expiring_before_its_credits_run_out_alerts(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket: str, metrics: list[Any]
) -> None:
    # 10 credits a day of 1000: 98 days by burn, but the pack goes dormant (its credits unusable) on
    # day 6. The forecast said the credits last 98 days and never alerted.
    received: list[list[dict[str, Any]]] = []
    op = forecasting(
        gcs_bucket, thresholds={"pixian_default": 10}, on_low="warn", on_low_callback=received.append
    )
    for day, credits in enumerate((1000, 990, 980)):
        vendors.bodies["pixian"] = {
            "creditPack": "pack_1000",
            "state": "active",
            "useBefore": "2026-03-07T08:00:00Z",
            "credits": credits,
        }
        result = run_on(op, day)
    entry = result["pixian_default"]
    assert entry["expires_at"] == "2026-03-07T08:00:00+00:00"
    fc = entry["forecast"]
    assert (fc["days_left"], fc["runs_out_on"]) == (98.0, "2026-06-09")  # by burn
    assert (fc["limited_by"], fc["usable_until"], fc["expiring_credits"], fc["alert"]) == (
        "expiry",
        "2026-03-07",
        "940",
        True,
    )
    assert len(received) == 3 and received[-1][0]["forecast"]["expiring_credits"] == "940"
    report = json.loads(gcs_storage.read(gcs_bucket, "_credit_history/runs/credit_dag/day_2/report.json"))
    assert report["balances"]["pixian_default"]["expires_at"] == "2026-03-07T08:00:00+00:00"
    assert ("incr", "bgremoval.credits.forecast_alerts.pixian_default", 1, mock.ANY) in metrics
    check = BalanceCheck("c", Decimal(1), "pixian", Decimal(5), "active")
    assert "expires_at" not in check.as_dict()  # a vendor reporting no expiry: the shape as before


def test_an_unreadable_account_has_the_forecast_keys_of_the_others(
    vendors: FakeVendors, gcs_storage: GcsStorage, gcs_bucket: str
) -> None:
    # Forecasting: a readable account's entry had "forecast" and "chart", an unreadable one's had
    # neither key (a callback's entry["forecast"] raised KeyError, failing an on_low="warn" task).
    vendors.set_poof(2000, 1000)
    received: list[list[dict[str, Any]]] = []
    op = forecasting(
        gcs_bucket,
        thresholds={"poof_default": 20, "ghost_conn": 1},
        on_low="warn",
        on_low_callback=received.append,
    )
    result = run_on(op, 0)
    assert result["poof_default"]["chart"] is not None
    assert (result["ghost_conn"]["forecast"], result["ghost_conn"]["chart"]) == (None, None)
    [[entry]] = received
    assert entry["conn_id"] == "ghost_conn" and entry["forecast"] is None
    report = json.loads(gcs_storage.read(gcs_bucket, "_credit_history/runs/credit_dag/day_0/report.json"))
    assert report["balances"]["ghost_conn"]["chart"] is None
