"""The launcher's pure parts and its process handling (no Airflow started here)."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_provider_bgremoval.testing import standalone
from airflow_provider_bgremoval.testing.standalone import (
    CELERY_EXECUTOR,
    WORKER_HOSTNAME_ENV,
    AirflowStandalone,
    CeleryWorker,
    StandaloneError,
    live_group_members,
    live_session_members,
    worker_hostname,
)

#: A session leader whose child puts itself in a process group of its own, as Airflow's task
#: runner does; both sleep.
SESSION_WITH_OWN_GROUP_CHILD = """
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def test_worker_hostname_is_the_workers_name_else_the_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_HOSTNAME_ENV, "worker-a")
    assert worker_hostname() == "worker-a"
    monkeypatch.delenv(WORKER_HOSTNAME_ENV)
    assert worker_hostname() == socket.getfqdn()


def test_celery_needs_separate_components(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="components"):
        AirflowStandalone(tmp_path, home=tmp_path / "home", executor=CELERY_EXECUTOR)


def test_celery_environment_and_a_workers_own_home(tmp_path: Path) -> None:
    airflow = AirflowStandalone(
        tmp_path,
        home=tmp_path / "home",
        executor=CELERY_EXECUTOR,
        components=("api-server", "scheduler", "dag-processor"),
        broker_url="redis://127.0.0.1:6399/0",
    )
    env = airflow.environment()
    assert env["AIRFLOW__CORE__EXECUTOR"] == CELERY_EXECUTOR
    assert env["AIRFLOW__CELERY__BROKER_URL"] == env["AIRFLOW__CELERY__RESULT_BACKEND"]
    worker = airflow.worker_environment("worker-b", tmp_path / "w")
    assert worker["AIRFLOW_HOME"] == str(tmp_path / "w") != env["AIRFLOW_HOME"]
    assert worker[WORKER_HOSTNAME_ENV] == "worker-b"
    # the same database and execution API as the components
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
        assert worker[key] == env[key]
    module, _, name = worker["AIRFLOW__CORE__HOSTNAME_CALLABLE"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is worker_hostname
    # only the components started are waited for (no triggerer here)
    assert airflow._required_health() == ("metadatabase", "scheduler", "dag_processor")


def test_workers_need_the_celery_executor(tmp_path: Path) -> None:
    airflow = AirflowStandalone(tmp_path, home=tmp_path / "home")
    with pytest.raises(StandaloneError, match="CELERY_EXECUTOR"):
        airflow.start_celery_worker("worker-a")
    assert airflow._required_health() == standalone.COMPONENTS


def test_local_settings_land_in_every_home(tmp_path: Path) -> None:
    airflow = AirflowStandalone(tmp_path, home=tmp_path / "home", local_settings="X = 1\n")
    airflow._prepare_home(tmp_path / "home" / "workers" / "a")
    assert (tmp_path / "home/workers/a/config/airflow_local_settings.py").read_text() == "X = 1\n"


def test_kill_takes_the_processes_in_groups_of_their_own(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    process = subprocess.Popen(
        [sys.executable, "-c", SESSION_WITH_OWN_GROUP_CHILD], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    child = int(process.stdout.readline())
    worker = CeleryWorker("worker-a", tmp_path, process, log)
    deadline = time.monotonic() + 10
    while child in live_group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # the child leaves the leader's group
    assert live_group_members(process.pid) == [process.pid]
    assert worker.members() == sorted([process.pid, child])
    assert sorted(worker.kill()) == sorted([process.pid, child])
    assert live_session_members(process.pid) == []
    assert process.returncode == -9


def test_only_separately_started_components_can_be_restarted(tmp_path: Path) -> None:
    with pytest.raises(StandaloneError, match="triggerer"):
        AirflowStandalone(tmp_path, home=tmp_path / "home").restart_component("triggerer")
    split = AirflowStandalone(tmp_path, home=tmp_path / "home", components=("api-server", "scheduler"))
    with pytest.raises(StandaloneError, match="triggerer"):
        split.restart_component("triggerer")
