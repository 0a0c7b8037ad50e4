"""The credit forecast end to end: 14 simulated days of spend with a top-up, the alert on the right day.

Real parts only: the vendor sandbox over sockets (its balance drains 50 credits per simulated day,
``set_spend`` + ``advance_clock``), fake-gcs-server for the history, run reports and charts, real
Airflow ``dag.test()`` runs (one per simulated day, the day being the run's logical date), and
Airflow's ``SmtpNotifier`` sending to a real SMTP server (aiosmtpd) started by the test.
"""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from PIL import Image

from airflow_provider_bgremoval.credit_chart import CHART_SIZE, FORECAST
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage

pytestmark = pytest.mark.integration

DAY0 = datetime(2026, 3, 1, 8, tzinfo=timezone.utc)
DAG_ID = "credits_forecast_14_days"
FORECAST_DAG = """
from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.monitor import CreditMonitorOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    CreditMonitorOperator(
        task_id="credit_monitor",
        thresholds={{"pixian_default": 10}},
        forecast_days=7,
        history_bucket={bucket!r},
        gcp_conn_id=None,
        observed_at="logical_date",
        retries=0,
        on_low_callback=SmtpNotifier(
            to="ops@example.com",
            from_email="airflow@example.com",
            subject="Credits run out soon: {{{{ forecast_alerts | map(attribute='conn_id') | join(', ') }}}}",
            html_content="<pre>{{{{ alert_text }}}}</pre>",
        ),
    )
"""


class Inbox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    """A real SMTP server on a free loopback port and the ``smtp_default`` connection to it."""
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    extra = {"disable_tls": True, "disable_ssl": True, "timeout": 10, "retry_limit": 0}
    conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))
    try:
        yield handler
    finally:
        controller.stop()


def html_body(mail: Message) -> str:
    parts = [part for part in mail.walk() if part.get_content_type() == "text/html"]
    return "".join(part.get_payload(decode=True).decode() for part in parts)  # type: ignore[union-attr]


def balance_of(day: int) -> int:
    """600 on day 0, -50 a day, +200 topped up on day 4: 350 on day 9, 300 on day 10."""
    return 600 - 50 * day + (200 if day >= 4 else 0)


def test_fourteen_days_of_spend_and_a_top_up_alert_on_day_ten_by_mail(
    vendor_connections: RunningSandbox,
    gcs_storage: GcsStorage,
    gcs_bucket: str,
    inbox: Inbox,
    airflow_db: None,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    sandbox = vendor_connections
    sandbox.admin.set_balance("pixian", 600)
    sandbox.admin.set_spend("pixian", 50)
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{DAG_ID}.py"
    path.write_text(FORECAST_DAG.format(dag_id=DAG_ID, bucket=gcs_bucket))
    mails_by_day: dict[int, list[Message]] = {}
    try:
        dag = DagBag(dag_folder=str(path)).get_dag(DAG_ID)
        assert dag is not None
        for day in range(14):
            if day:
                sandbox.admin.advance_clock(86400)  # one simulated day of spend
            if day == 4:
                sandbox.admin.set_balance("pixian", sandbox.admin.get_balance("pixian") + 200)
            assert sandbox.admin.get_balance("pixian") == balance_of(day)
            before = len(inbox.messages)
            run = dag.test(logical_date=DAY0 + timedelta(days=day))
            assert str(run.state) == "success", day  # a forecast alert alone does not fail the task
            mails_by_day[day] = inbox.messages[before:]
    finally:
        path.unlink(missing_ok=True)

    # 350 credits at 50/day on day 9 last exactly the 7 days; 300 on day 10 do not.
    assert [day for day, mails in mails_by_day.items() if mails] == [10, 11, 12, 13]
    [mail] = mails_by_day[10]
    assert mail["To"] == "ops@example.com" and mail["From"] == "airflow@example.com"
    assert mail["Subject"] == "Credits run out soon: pixian_default"
    body = html_body(mail)
    assert (
        "pixian_default (pixian): 300 credits, burning 50 credits/day, runs out on 2026-03-17 "
        "(in 6.0 days): FORECAST LOW within 7 days; a top-up of 50 credits covers 7 days"
    ) in body
    # the notifier's templates are rendered afresh each day: 150 left on day 13
    assert "150 credits, burning 50 credits/day" in html_body(mails_by_day[13][0])
    assert "a top-up of 200 credits covers 7 days" in html_body(mails_by_day[13][0])

    history = gcs_storage.read(gcs_bucket, "_credit_history/pixian_default.jsonl").decode().splitlines()
    assert len(history) == 14
    assert json.loads(history[4]) == {"at": "2026-03-05T08:00:00+00:00", "remaining": "600"}
    charts = sorted(  # run ids are manual__<when the run was made>: in day order
        o.name
        for o in gcs_storage.list_objects(gcs_bucket, "_credit_history/runs/")
        if o.name.endswith(".png")
    )
    assert len(charts) == 14
    day10 = charts[10]
    chart = Image.open(io.BytesIO(gcs_storage.read(gcs_bucket, day10)))
    assert (chart.format, chart.size) == ("PNG", CHART_SIZE)
    assert any(pixel == FORECAST for pixel in chart.convert("RGB").get_flattened_data())
    assert sandbox.admin.charges() == []  # balance reads are free
