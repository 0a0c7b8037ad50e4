"""The credit monitor: read the balances of several vendor connections and report the low ones."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier, BaseOperator
from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException, Stats
from airflow_provider_bgremoval.credit_chart import render_chart
from airflow_provider_bgremoval.credits import describe_error, parse_min_credits
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.forecast import (
    DEFAULT_BURN_WINDOW_DAYS,
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_MIN_SPAN_DAYS,
    Forecast,
    HistoryStore,
    Sample,
    as_utc,
    forecast,
    object_name,
    predecessor,
    spend_between,
)
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook, format_credits
from airflow_provider_bgremoval.operators.bucket_job import check_choice, is_template, run_coroutine
from airflow_provider_bgremoval.options import load_list
from airflow_provider_bgremoval.pipeline.naming import folder_name
from airflow_provider_bgremoval.results import AccountState
from airflow_provider_bgremoval.storage import DEFAULT_GCP_CONN_ID, GcsStorage, StorageError, gs_uri

if TYPE_CHECKING:
    from airflow.sdk import Context

ON_LOW_CHOICES = ("fail", "warn")
OBSERVED_AT_CHOICES = ("now", "data_interval_end", "logical_date")
#: Prefix of the monitor's metric names (docs/credits.md, "Metrics").
METRIC_PREFIX = "bgremoval.credits"
#: Account states whose credits cannot be spent: their readings are no measure of spend.
_CANNOT_SPEND = (AccountState.DORMANT.value, AccountState.SUSPENDED.value)


@dataclass(frozen=True)
class BalanceCheck:
    """
    One connection's balance against its threshold.

    :param conn_id: the connection.
    :param threshold: the minimum usable credits wanted.
    :param vendor: vendor name (``None`` when the connection could not be resolved).
    :param remaining: usable credits (``None`` when the balance could not be read).
    :param state: the account state.
    :param credit_pack: credit-pack or subscription-plan name.
    :param error: why the balance could not be read.
    :param expires_at: when the credits expire, where the vendor reports it (Pixian's ``useBefore``).
    """

    conn_id: str
    threshold: Decimal
    vendor: str | None = None
    remaining: Decimal | None = None
    state: str | None = None
    credit_pack: str | None = None
    error: str | None = None
    expires_at: datetime | None = None

    @property
    def low(self) -> bool:
        """True when the usable balance is below the threshold (equal is fine)."""
        return self.remaining is not None and self.remaining < self.threshold

    @property
    def ok(self) -> bool:
        """True when the balance was read and reaches the threshold."""
        return self.error is None and not self.low

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for XCom, logs and callbacks (``expires_at`` only where the vendor reports one)."""
        remaining = None if self.remaining is None else str(self.remaining)
        entry = {**asdict(self), "remaining": remaining, "threshold": str(self.threshold), "low": self.low}
        expires = entry.pop("expires_at")
        return entry if expires is None else {**entry, "expires_at": expires.isoformat()}

    def describe(self) -> str:
        """One log line: connection, vendor, remaining, threshold, verdict."""
        who = f"{self.conn_id} ({self.vendor or 'unknown vendor'})"
        threshold = format_credits(self.threshold)
        if self.remaining is None:
            return f"{who}: balance unavailable ({self.error}), threshold {threshold}"
        state = f" [{self.state}]" if self.state not in (None, "active") else ""
        verdict = "LOW" if self.low else "ok"
        remaining = format_credits(self.remaining)
        return f"{who}: {remaining} credits remaining{state}, threshold {threshold}: {verdict}"


def parse_thresholds(thresholds: Mapping[str, Any] | str) -> dict[str, Decimal]:
    """
    ``{conn_id: number}`` with exact Decimal thresholds.

    :param thresholds: connection id → minimum credits (number or numeric string), or the text a template
        renders that mapping as (JSON or Python, see :func:`~airflow_provider_bgremoval.options.load_list`).
    """
    thresholds = load_list(thresholds, "thresholds")
    if not isinstance(thresholds, Mapping) or not thresholds:
        raise InvalidOptionError("thresholds", "expected a non-empty {conn_id: minimum credits} mapping")
    return {
        str(conn_id): parse_min_credits(value, f"thresholds[{conn_id!r}]")
        for conn_id, value in thresholds.items()
    }


async def _acheck_one(conn_id: str, threshold: Decimal, hook_kwargs: Mapping[str, Any]) -> BalanceCheck:
    check = BalanceCheck(conn_id, threshold)
    try:
        hook = await BackgroundRemovalHook.aget_hook(conn_id, dict(hook_kwargs))
        check = replace(check, vendor=hook.wire_class.spec.name)
        async with aclosing(hook):
            balance = await hook.aget_balance()
    except Exception as exc:
        return replace(check, error=describe_error(exc))
    return replace(
        check,
        remaining=balance.remaining,
        state=balance.state.value,
        credit_pack=balance.credit_pack,
        expires_at=balance.expires_at,
    )


async def acheck_balances(thresholds: Mapping[str, Any] | str, **hook_kwargs: Any) -> list[BalanceCheck]:
    """
    Read every connection's balance concurrently (async hooks) and compare with its threshold.

    :param thresholds: connection id → minimum usable credits (or its text, :func:`parse_thresholds`).
    :param hook_kwargs: passed to every hook (e.g. ``timeout``).
    """
    checks = (
        _acheck_one(conn_id, value, hook_kwargs) for conn_id, value in parse_thresholds(thresholds).items()
    )
    return list(await asyncio.gather(*checks))


def check_balances(thresholds: Mapping[str, Any] | str, **hook_kwargs: Any) -> list[BalanceCheck]:
    """
    Sync :func:`acheck_balances` (e.g. inside a ``@task``).

    :param thresholds: connection id → minimum usable credits (or its text, :func:`parse_thresholds`).
    :param hook_kwargs: passed to every hook.
    """
    return run_coroutine(acheck_balances(thresholds, **hook_kwargs))


LowBalanceCallback = Callable[[list[dict[str, Any]]], None]


def emit_metrics(
    check: BalanceCheck, samples: Sequence[Sample], fc: Forecast | None, reading: Sample | None = None
) -> None:
    """
    Airflow metrics of one reading: ``bgremoval.credits.<metric>.<conn_id>`` (docs/credits.md, "Metrics").

    :param check: the balance read.
    :param samples: its history including this reading (empty without a history).
    :param fc: its forecast (``None`` without a history).
    :param reading: the reading recorded in ``samples`` (``None``: not recorded, no spend metrics);
        its spend is from the reading before it, which need not be the second newest.
    """
    if check.remaining is None:
        return
    name = object_name("", check.conn_id, "")  # only the characters stats names allow
    tags = {"conn_id": check.conn_id, "vendor": check.vendor or "unknown"}
    Stats.gauge(f"{METRIC_PREFIX}.remaining.{name}", float(check.remaining), tags=tags)
    earlier = None if reading is None else predecessor(samples, reading)
    if reading is not None and earlier is not None:
        Stats.gauge(f"{METRIC_PREFIX}.spent.{name}", float(spend_between(earlier, reading)), tags=tags)
        if reading.remaining > earlier.remaining:
            Stats.incr(f"{METRIC_PREFIX}.top_ups.{name}", tags=tags)
    if fc is not None and fc.burn_rate is not None:
        Stats.gauge(f"{METRIC_PREFIX}.burn_rate.{name}", float(fc.burn_rate), tags=tags)
        if fc.days_left is not None:
            Stats.gauge(f"{METRIC_PREFIX}.days_left.{name}", float(fc.days_left), tags=tags)
        if fc.alert:
            Stats.incr(f"{METRIC_PREFIX}.forecast_alerts.{name}", tags=tags)


#: The longest lead time a forecast may look ahead: a burn rate measured over the last
#: :data:`~airflow_provider_bgremoval.forecast.DEFAULT_BURN_WINDOW_DAYS` days says little about
#: the spend months away.
MAX_FORECAST_DAYS = 90


def parse_forecast_days(value: Any) -> float:
    """
    ``forecast_days`` as a positive number of days, at most :data:`MAX_FORECAST_DAYS`.

    :param value: a number or numeric string.
    """
    try:
        days = float(value)
    except (TypeError, ValueError):
        raise InvalidOptionError("forecast_days", f"{value!r} is not a number of days") from None
    if not math.isfinite(days) or days <= 0:
        raise InvalidOptionError("forecast_days", f"{value!r} must be a positive number of days")
    if days > MAX_FORECAST_DAYS:
        raise InvalidOptionError(
            "forecast_days",
            f"{value!r} is more than {MAX_FORECAST_DAYS} days: a burn rate measured over recent days "
            "cannot forecast that far; use a threshold for a long-range floor",
        )
    return days


def check_burn_window(window_days: float, min_span_days: float) -> None:
    """
    Refuse a burn-rate window that can never give a rate: not a positive number of days, or shorter
    than ``forecast_min_span_days`` (the spending intervals inside it can never span that minimum).

    :param window_days: ``burn_window_days``.
    :param min_span_days: ``forecast_min_span_days``.
    """
    if not math.isfinite(window_days) or window_days <= 0:
        raise InvalidOptionError("burn_window_days", f"{window_days!r} must be a positive number of days")
    if window_days < min_span_days:
        raise InvalidOptionError(
            "burn_window_days",
            f"{window_days:g} day(s) is shorter than forecast_min_span_days ({min_span_days:g}): "
            "no burn rate could ever be computed, so no forecast",
        )


class CreditMonitorOperator(BaseOperator):
    """
    Check the balances of several vendor connections in one task; call back and fail or warn on low ones.
    With ``forecast_days`` it keeps each account's balance history in GCS, forecasts the day its
    credits run out, or expire unused if the vendor reports an earlier expiry (Pixian's ``useBefore``),
    alerts when that is within ``forecast_days`` and writes a PNG chart per account.

    Returns ``{conn_id: BalanceCheck.as_dict()}`` (plus ``forecast`` and ``chart`` when forecasting);
    problem accounts, forecasts, metrics and retries: docs/credits.md.

    :param thresholds: connection id → minimum usable credits (templated; a template of the whole mapping,
        ``"{{ params.thresholds }}"``, may render it as JSON or Python text).
    :param on_low: ``"fail"`` or ``"warn"`` (forecast alerts alone never fail the task).
    :param on_low_callback: a callable receiving the problem accounts (dicts), or a ``BaseNotifier``
        whose context gets ``low_balances``, ``balances``, ``forecast_alerts`` and ``alert_text``.
    :param forecast_days: alert when credits would run out (or expire) within this many days; needs
        ``history_bucket``.
    :param history_bucket: the bucket of the balance histories, run reports and charts.
    :param history_prefix: their folder in it.
    :param history_limit: readings kept per connection.
    :param burn_window_days: days of history the burn rate is computed over.
    :param forecast_min_span_days: no burn rate, so no forecast, until the spending intervals in the
        window span this many days (a shorter span would turn a minute's drop into a daily rate).
    :param observed_at: the time recorded for the readings: ``"now"`` (when read), ``"data_interval_end"``
        or ``"logical_date"`` (the run's, e.g. to space a schedule's readings evenly); a reading dated
        before the history's newest (a cleared or backfilled run) is logged and not recorded.
    :param gcp_conn_id: the GCS connection (``None``: Application Default Credentials).
    """

    template_fields: Sequence[str] = ("thresholds",)
    template_fields_renderers = {"thresholds": "json"}
    ui_color = "#fdf1d6"

    def __init__(
        self,
        *,
        thresholds: Mapping[str, float | int | str] | str,
        on_low: str = "fail",
        on_low_callback: LowBalanceCallback | BaseNotifier | None = None,
        forecast_days: float | None = None,
        history_bucket: str | None = None,
        history_prefix: str = "_credit_history/",
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        burn_window_days: float = DEFAULT_BURN_WINDOW_DAYS,
        forecast_min_span_days: float = DEFAULT_MIN_SPAN_DAYS,
        observed_at: str = "now",
        gcp_conn_id: str | None = DEFAULT_GCP_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.thresholds = thresholds
        self.on_low = on_low
        self.on_low_callback = on_low_callback
        self.forecast_days = None if forecast_days is None else parse_forecast_days(forecast_days)
        self.history_bucket = history_bucket
        self.history_prefix = history_prefix
        self.history_limit = history_limit
        self.burn_window_days = burn_window_days
        self.forecast_min_span_days = forecast_min_span_days
        self.observed_at = observed_at
        self.gcp_conn_id = gcp_conn_id
        check_choice(on_low, ON_LOW_CHOICES, "on_low")
        check_choice(observed_at, OBSERVED_AT_CHOICES, "observed_at")
        if (forecast_days is None) != (history_bucket is None):
            raise InvalidOptionError(
                "forecast_days",
                "forecast_days and history_bucket go together (the forecast needs the history)",
            )
        if not math.isfinite(forecast_min_span_days) or forecast_min_span_days < 0:
            raise InvalidOptionError("forecast_min_span_days", "expected a number of days, 0 or more")
        check_burn_window(burn_window_days, forecast_min_span_days)
        if history_limit < 2:
            raise InvalidOptionError("history_limit", "a burn rate needs at least 2 readings")
        values = thresholds.values() if isinstance(thresholds, Mapping) else ()
        if not is_template(thresholds) and not any(map(is_template, values)):
            parse_thresholds(thresholds)  # fail at DAG parse for what is already known

    def execute(self, context: Context) -> dict[str, dict[str, Any]]:
        """Read every balance, log it, forecast, call back and fail or warn when any needs attention."""
        checks = check_balances(self.thresholds)
        for check in checks:
            self.log.log(logging.INFO if check.ok else logging.WARNING, "%s", check.describe())
        result = {check.conn_id: check.as_dict() for check in checks}
        forecasts, history_errors = self._forecast(checks, context, result)
        problems = [check for check in checks if not check.ok]
        alerts = [fc for fc in forecasts.values() if fc.alert]
        if problems or alerts:
            self._call_back(context, result, problems, alerts)
            self._verdict(checks, problems, alerts)
        if history_errors:  # after the alerts: a broken history must not hide a low balance
            raise AirflowException("credit history: " + "; ".join(history_errors))
        return result

    def reading_time(self, context: Context) -> datetime:
        """
        The time recorded for this run's readings (``observed_at``; a run without that date: now).

        :param context: the task context.
        """
        moment: Any = None if self.observed_at == "now" else context.get(self.observed_at)  # type: ignore[misc]
        return datetime.now(timezone.utc) if moment is None else as_utc(moment)

    def _forecast(
        self, checks: Sequence[BalanceCheck], context: Context, result: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Forecast], list[str]]:
        """
        With ``forecast_days``: record each reading, forecast, chart and report (``forecast``/``chart`` added
        to ``result``). Returns the forecasts and the history errors (an account without its history is not
        forecast); metrics either way.
        """
        if self.history_bucket is None:
            for check in checks:
                emit_metrics(check, [], None)
            return {}, []
        at = self.reading_time(context)
        storage = GcsStorage(self.gcp_conn_id)
        store = HistoryStore(storage, self.history_bucket, self.history_prefix, self.history_limit)
        dag_folder, run_id = folder_name(context["ti"].dag_id), folder_name(context.get("run_id") or "run")
        run_folder = f"{self.history_prefix}runs/{dag_folder}/{run_id}/"
        forecasts: dict[str, Forecast] = {}
        errors: list[str] = []
        for check in checks:
            if check.remaining is None:  # unreadable: the same keys as the others, nothing to forecast
                result[check.conn_id] = {**result[check.conn_id], "forecast": None, "chart": None}
                continue
            try:
                forecasts[check.conn_id] = self._forecast_one(store, run_folder, check, at, result)
            except Exception as exc:  # any failure: the thresholds and the callback must still run
                what = "history unavailable" if isinstance(exc, StorageError) else "forecast failed"
                errors.append(f"{check.conn_id}: {what} ({describe_error(exc)})")
                self.log.warning("%s", errors[-1], exc_info=not isinstance(exc, StorageError))
                result[check.conn_id] = {**result[check.conn_id], "forecast": None, "chart": None}
        report = json.dumps({"observed_at": at.isoformat(), "balances": result}, indent=2).encode()
        try:
            _replace(storage, self.history_bucket, f"{run_folder}report.json", report, "application/json")
            self.log.info("Run report and charts in %s", gs_uri(self.history_bucket, run_folder))
        except StorageError as exc:
            errors.append(f"run report not written ({describe_error(exc)})")
            self.log.warning("%s", errors[-1])
        return forecasts, errors

    def _forecast_one(
        self,
        store: HistoryStore,
        run_folder: str,
        check: BalanceCheck,
        at: datetime,
        result: dict[str, dict[str, Any]],
    ) -> Forecast:
        assert check.remaining is not None and self.forecast_days is not None
        reading = Sample(at, check.remaining, usable=check.state not in _CANNOT_SPEND)
        samples, recorded = store.record(check.conn_id, reading)
        fc = forecast(
            check.conn_id,
            check.vendor,
            samples,
            self.forecast_days,
            self.burn_window_days,
            self.forecast_min_span_days,
            check.expires_at,
        )
        emit_metrics(check, samples, fc, reading if recorded else None)
        self.log.log(logging.WARNING if fc.alert else logging.INFO, "%s", fc.describe())
        chart = object_name(run_folder, check.conn_id, ".png")
        _replace(store.storage, store.bucket, chart, render_chart(samples, fc), "image/png")
        entry = {"forecast": fc.as_dict(), "chart": gs_uri(store.bucket, chart)}
        result[check.conn_id] = {**result[check.conn_id], **entry}
        return fc

    def _call_back(
        self,
        context: Context,
        result: dict[str, dict[str, Any]],
        problems: Sequence[BalanceCheck],
        alerts: Sequence[Forecast],
    ) -> None:
        names = [check.conn_id for check in problems] + [fc.conn_id for fc in alerts]
        payload = [result[name] for name in dict.fromkeys(names)]
        if isinstance(self.on_low_callback, BaseNotifier):
            lines = [check.describe() for check in problems] + [fc.describe() for fc in alerts]
            notifier_context: Any = {
                **context,
                "low_balances": payload,
                "balances": list(result.values()),
                "forecast_alerts": [fc.as_dict() for fc in alerts],
                "alert_text": "\n".join(lines),
            }
            # A copy renders the templates: the operator's notifier keeps them for the next run in
            # this process (dag.test(), a task retried in line), instead of last run's rendered text.
            copy.copy(self.on_low_callback)(notifier_context)
        elif self.on_low_callback is not None:
            self.on_low_callback(payload)

    def _verdict(
        self,
        checks: Sequence[BalanceCheck],
        problems: Sequence[BalanceCheck],
        alerts: Sequence[Forecast],
    ) -> None:
        """Warn about forecast alerts; fail (``on_low="fail"``) or warn about low and unreadable accounts."""
        if alerts:
            self.log.warning(
                "%d account(s) forecast to run out or expire within %s day(s): %s",
                len(alerts),
                f"{self.forecast_days:g}",
                "; ".join(fc.describe() for fc in alerts),
            )
        if not problems:
            return
        message = f"{len(problems)} of {len(checks)} account(s) need attention: " + "; ".join(
            check.describe() for check in problems
        )
        if self.on_low == "warn":
            self.log.warning("%s", message)
            return
        if any(check.error is not None for check in problems):
            raise AirflowException(message)
        raise AirflowFailException(message)


def _replace(storage: GcsStorage, bucket: str, name: str, data: bytes, content_type: str) -> None:
    """Write a whole object: created, or replacing the generation just seen (never a partial write)."""
    info = storage.stat(bucket, name)
    storage.write(
        bucket,
        name,
        data,
        content_type=content_type,
        if_generation_match=0 if info is None else info.generation,
    )
