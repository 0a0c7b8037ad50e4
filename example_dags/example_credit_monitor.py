"""Credit monitoring: an hourly balance check and forecast of every vendor account, and a DAG that waits
for a top-up."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, BaseNotifier, Param, task

from airflow_provider_bgremoval.operators.monitor import CreditMonitorOperator
from airflow_provider_bgremoval.sensors.credits import CreditsSensor

log = logging.getLogger(__name__)

#: Connection id → the fewest credits that account should have. List only connections that exist:
#: a missing connection counts as a problem.
CREDIT_THRESHOLDS = {"pixelcut_default": 100, "pixian_default": 50, "poof_default": 20}
#: Where the monitor keeps each account's balance history, its run reports and charts.
CREDIT_HISTORY_BUCKET = "ops-credit-history"

MONITOR_DOC = """
### Vendor balances against thresholds and a 7-day forecast, every hour

**check_balances** reads the balance of every account in `CREDIT_THRESHOLDS` at the top of the file
(free calls) and logs one line per account: vendor, remaining credits, threshold. It adds the
reading to the account's history in the bucket `CREDIT_HISTORY_BUCKET`, computes how many credits
the account spends a day (top-ups do not count as spending) and forecasts the day its credits run
out, with a chart per account beside the run's report in that bucket.

When an account is below its threshold, its balance cannot be read, or its credits would run out
within 7 days, it calls `LowCreditsNotifier`. The forecast alert names the account, the balance,
the credits spent per day, the date and the top-up that covers the 7 days. A low or unreadable
account then fails the task; a forecast alone only warns. The notifier logs the alert and keeps it
in the XCom `low_balances`; pass any Airflow notifier instead, for example
`SmtpNotifier(to=..., html_content="{{ alert_text }}")`, to mail it.

**Before the first run:** one connection per account in `CREDIT_THRESHOLDS` (a missing connection
counts as a problem), and the bucket `CREDIT_HISTORY_BUCKET` with a `google_cloud_default`
connection that may write to it (else Application Default Credentials).
"""

TOPUP_DOC = """
### Wait until a vendor account is topped up

**wait_for_topup** waits until the account *Vendor connection* has at least *Minimum credits*,
deferred in the triggerer (no worker slot held), checking every 5 minutes at first and less often
later, for up to 12 hours. Then **resume** runs: here it logs the balance; in production it would
trigger the batch, e.g. with `TriggerDagRunOperator`. Trigger it by hand, or from your alerting.
"""


# [START howto_notifier_low_credits]
class LowCreditsNotifier(BaseNotifier):
    """Logs the alert and pushes the accounts to XCom ``low_balances``; replace it to alert elsewhere."""

    template_fields = ()

    def notify(self, context: Any) -> None:
        """
        Log one warning per account needing attention (low, unreadable or forecast to run out) and
        keep the list in XCom.

        :param context: the task context plus ``low_balances``, ``balances``, ``forecast_alerts`` and
            ``alert_text`` (one line per account).
        """
        for line in context["alert_text"].splitlines():
            self.log.warning("CREDITS: %s", line)
        context["ti"].xcom_push(key="low_balances", value=context["low_balances"])


# [END howto_notifier_low_credits]

with DAG(
    dag_id="example_credit_monitor",
    description="Hourly vendor balances vs thresholds and a 7-day forecast; alert before credits run out",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["bgremoval", "example", "credits"],
    doc_md=MONITOR_DOC,
) as monitor_dag:
    # [START howto_operator_credit_monitor]
    CreditMonitorOperator(
        task_id="check_balances",
        thresholds=CREDIT_THRESHOLDS,
        forecast_days=7,  # alert while a top-up still has 7 days to arrive
        history_bucket=CREDIT_HISTORY_BUCKET,
        observed_at="data_interval_end",  # hourly readings, evenly spaced
        on_low="fail",
        on_low_callback=LowCreditsNotifier(),
        retries=0,
    )
    # [END howto_operator_credit_monitor]


with DAG(
    dag_id="example_credit_monitor_wait_for_topup",
    description="Wait (deferred, in the triggerer) until a vendor account is topped up",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "topup_conn_id": Param(
            "pixelcut_default",
            type="string",
            title="Vendor connection",
            description="A vendor connection id.",
        ),
        "topup_min_credits": Param(
            100, type="number", minimum=0, title="Minimum credits", description="Wait until at least this."
        ),
    },
    tags=["bgremoval", "example", "credits"],
    doc_md=TOPUP_DOC,
) as topup_dag:
    # [START howto_sensor_credits_deferrable]
    wait = CreditsSensor(
        task_id="wait_for_topup",
        conn_id="{{ params.topup_conn_id }}",
        min_credits="{{ params.topup_min_credits }}",
        deferrable=True,
        poke_interval=timedelta(minutes=5).total_seconds(),
        exponential_backoff=True,
        timeout=timedelta(hours=12).total_seconds(),
    )
    # [END howto_sensor_credits_deferrable]

    @task
    def resume(balance: dict[str, Any]) -> dict[str, Any]:
        """
        Credits are back: hand over to the batch (here: log the balance).

        :param balance: the sensor's reading (vendor, remaining credits).
        """
        log.info("Topped up: %s has %s credits", balance.get("vendor"), balance.get("remaining"))
        return balance

    # Airflow's Task.__call__ types a task's arguments as its function's: not the XComArg it takes
    resume(wait.output)  # type: ignore[arg-type]
