"""
Credit monitoring: an hourly balance check of every vendor account, and a DAG that waits for a top-up.

``example_credit_monitor`` (hourly) reads the balance of each configured vendor connection (free
calls, concurrently) and compares it with its threshold. Each account gets a log line (vendor,
remaining, threshold). When any is below its threshold — or its balance cannot be read — the
notifier hook point :class:`LowCreditsNotifier` is called first and then the task fails with a
message naming every such account. Replace the notifier with your own (Slack, e-mail, PagerDuty:
any ``BaseNotifier`` or a plain callable taking the list of problem accounts).

``example_credit_monitor_wait_for_topup`` (manual, or triggered by your alerting) waits in the
triggerer — a deferrable :class:`CreditsSensor` holds no worker slot — until an account has at least
``min_credits`` again, then resumes (here: logs the new balance; in production, trigger the batch
DAG, e.g. with ``TriggerDagRunOperator``).

Settings: trigger ``conf``/params, else the Variable ``bgremoval_<name>``
(``bgremoval_credit_thresholds`` is JSON such as ``{"pixelcut_default": 100}``), else :data:`DEFAULTS`.
Only list connections that exist: a missing connection counts as a problem.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, BaseNotifier, Param, Variable, task

from airflow_provider_bgremoval.operators.credits import CreditMonitorOperator
from airflow_provider_bgremoval.sensors.credits import CreditsSensor

log = logging.getLogger(__name__)

#: Built-in defaults (lowest precedence).
DEFAULTS: dict[str, Any] = {
    "credit_thresholds": {"pixelcut_default": 100, "pixian_default": 50, "poof_default": 20},
    "topup_conn_id": "pixelcut_default",
    "topup_min_credits": 100,
}

#: How often the top-up sensor polls (the trigger backs off exponentially up to 15 minutes).
TOPUP_POLL_INTERVAL = timedelta(minutes=5)


def setting(params: dict[str, Any], name: str) -> Any:
    """Trigger ``conf``/param, else Variable ``bgremoval_<name>`` (JSON), else :data:`DEFAULTS`."""
    value = params.get(name)
    if value not in (None, ""):
        return value
    return Variable.get(f"bgremoval_{name}", default=DEFAULTS[name], deserialize_json=True)


class LowCreditsNotifier(BaseNotifier):
    """
    The notifier hook point: called with the task context plus ``low_balances`` and ``balances``.

    This one logs the alert and keeps it in XCom (``low_balances``) for a downstream or external
    consumer; subclass it or pass another notifier to send the alert somewhere.
    """

    template_fields = ()

    def notify(self, context: Any) -> None:
        """Log the low accounts and push them to XCom ``low_balances``."""
        low = context["low_balances"]
        for account in low:
            self.log.warning(
                "LOW CREDITS: %s (%s) has %s, threshold %s%s",
                account["conn_id"],
                account["vendor"],
                account["remaining"],
                account["threshold"],
                f" — {account['error']}" if account.get("error") else "",
            )
        context["ti"].xcom_push(key="low_balances", value=low)


with DAG(
    dag_id="example_credit_monitor",
    description="Hourly vendor balances vs thresholds; alert and fail when low",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    user_defined_macros={"setting": setting},
    params={
        "credit_thresholds": Param(
            None,
            type=["null", "object"],
            description=f"connection id -> minimum credits (default: {DEFAULTS['credit_thresholds']})",
        ),
    },
    tags=["bgremoval", "example", "credits"],
    doc_md=__doc__,
) as monitor_dag:
    CreditMonitorOperator(
        task_id="check_balances",
        thresholds="{{ setting(params, 'credit_thresholds') }}",
        on_low="fail",
        on_low_callback=LowCreditsNotifier(),
        retries=0,
    )


with DAG(
    dag_id="example_credit_monitor_wait_for_topup",
    description="Wait (deferred, in the triggerer) until a vendor account is topped up",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    render_template_as_native_obj=True,
    user_defined_macros={"setting": setting},
    params={
        "topup_conn_id": Param(None, type=["null", "string"], description="default: pixelcut_default"),
        "topup_min_credits": Param(None, type=["null", "number", "string"], description="default: 100"),
    },
    tags=["bgremoval", "example", "credits"],
    doc_md=__doc__,
) as topup_dag:
    wait = CreditsSensor(
        task_id="wait_for_topup",
        conn_id="{{ setting(params, 'topup_conn_id') }}",
        min_credits="{{ setting(params, 'topup_min_credits') }}",
        deferrable=True,
        poke_interval=TOPUP_POLL_INTERVAL.total_seconds(),
        exponential_backoff=True,
        timeout=timedelta(hours=12).total_seconds(),
    )

    @task
    def resume(balance: dict[str, Any]) -> dict[str, Any]:
        """Credits are back: hand over to the batch (here: report the balance)."""
        log.info("Topped up: %s has %s credits", balance.get("vendor"), balance.get("remaining"))
        return balance

    resume(wait.output)
