"""A real Airflow (scheduler, triggerer, dag-processor, API server) for tests: ``airflow standalone``.

Usage::

    with AirflowStandalone(tmp_path, dags={"my_dag.py": source}, env={"AIRFLOW_CONN_X": "..."}) as af:
        run_id = af.trigger_dag("my_dag")
        run = af.wait_for_run("my_dag", run_id, timeout=120)
        states = af.task_instances("my_dag", run_id)

Settings follow OFFLINE-RECIPES.md: its own ``AIRFLOW_HOME`` and DAGS_FOLDER, SQLite + LocalExecutor,
``PARALLELISM=4``, a free API port with the matching ``BASE_URL``, free log-server ports, a 64+ byte
JWT secret, DAGs unpaused at creation, and the simple auth manager with every user an admin (so the
REST API needs no token). The process runs in its own session (``setsid``) and the whole process
group is terminated on exit, whatever happens in the ``with`` block. The environment of the test
process is not inherited for Airflow settings (``AIRFLOW__*``/``AIRFLOW_HOME``/``AIRFLOW_CONN_*``):
pass what the DAGs need through ``env``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

TERMINAL_RUN_STATES = frozenset({"success", "failed"})


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StandaloneError(RuntimeError):
    """``airflow standalone`` did not start, or a run did not finish in time (the log tail is attached)."""


class AirflowStandalone:
    """
    ``airflow standalone`` as a context manager with a small REST client.

    :param workdir: a fresh directory for AIRFLOW_HOME (``home/``), the DAGs (``dags/``) and the log.
    :param dags: DAG files to write into the DAGS_FOLDER before start: file name -> source.
    :param env: extra environment (e.g. ``AIRFLOW_CONN_*`` for the DAGs' connections).
    :param startup_timeout: seconds to wait for every component to report healthy.
    :param parallelism: ``[core] parallelism`` (each slot may be a worker process).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        dags: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 90.0,
        parallelism: int = 4,
    ) -> None:
        self.workdir = Path(workdir)
        self.home = self.workdir / "home"
        self.dags_folder = self.workdir / "dags"
        self.log_path = self.workdir / "standalone.log"
        self.dags = dict(dags or {})
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.parallelism = parallelism
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.client = httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)

    # -- lifecycle -----------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        """The environment ``airflow standalone`` runs with."""
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")) and key != "AIRFLOW_HOME"
        }
        bin_dir = str(Path(sys.executable).parent)  # standalone starts its components as `airflow ...`
        settings = {
            "PATH": os.pathsep.join([bin_dir, inherited.get("PATH", "")]),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "PYTHONUNBUFFERED": "1",
        }
        return {**inherited, **settings, **self.extra_env}

    def start(self) -> AirflowStandalone:
        """Write the DAGs, start ``airflow standalone`` in its own session, wait until healthy."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        for name, source in self.dags.items():
            (self.dags_folder / name).write_text(source)
        airflow = Path(sys.executable).with_name("airflow")
        self._log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(airflow), "standalone"],
            cwd=self.workdir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: one process group to terminate as a whole
        )
        try:
            self.wait_healthy(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 15.0) -> None:
        """Terminate the whole process group (SIGTERM, then SIGKILL after ``grace`` seconds)."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            # Children that outlived the leader are still in the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        self.client.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> AirflowStandalone:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 80) -> str:
        """The last lines of the standalone log (all components)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, message: str) -> StandaloneError:
        return StandaloneError(f"{message}\n--- airflow standalone log (tail) ---\n{self.log_tail()}")

    # -- REST ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any] | None:
        """``/api/v2/monitor/health``, or ``None`` while the API server is not answering."""
        try:
            response = self.client.get("/api/v2/monitor/health")
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_healthy(self, timeout: float) -> None:
        """Wait until metadatabase, scheduler, triggerer and dag processor are healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise self._fail(f"airflow standalone exited with {self.process.returncode}")
            health = self.health()
            if health and all(
                (health.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            ):
                return
            time.sleep(0.5)
        raise self._fail(f"airflow standalone was not healthy after {timeout:.0f} s: {self.health()}")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the REST API (``/api/v2/...``) and return the JSON reply; raise on errors."""
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise self._fail(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the dag processor has parsed ``dag_id`` (without import errors)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.client.get(f"/api/v2/dags/{dag_id}")
            if response.status_code == 200:
                return dict(response.json())
            time.sleep(0.5)
        errors = self.client.get("/api/v2/importErrors").text[:2000]
        raise self._fail(f"DAG {dag_id!r} was not parsed within {timeout:.0f} s; import errors: {errors}")

    def trigger_dag(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Unpause ``dag_id`` (once parsed) and create a run; return its run id."""
        self.wait_for_dag(dag_id)
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        run = self.request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})}
        )
        return str(run["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The run as the REST API shows it."""
        return dict(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``task_id`` (``task_id[i]`` when mapped) -> state."""
        reply = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        states: dict[str, str | None] = {}
        for ti in reply["task_instances"]:
            index = ti.get("map_index", -1)
            key = ti["task_id"] if index in (None, -1) else f"{ti['task_id']}[{index}]"
            states[key] = ti.get("state")
        return states

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """A task's XCom value (deserialised by the API)."""
        reply = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        )
        return reply.get("value")

    def wait_for_run(
        self, dag_id: str, run_id: str, *, timeout: float = 120.0, poll: float = 0.5
    ) -> dict[str, Any]:
        """Poll the run until it succeeds or fails; return it (raise with the log tail on timeout)."""
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.dag_run(dag_id, run_id)
            if run.get("state") in TERMINAL_RUN_STATES:
                return run
            time.sleep(poll)
        raise self._fail(
            f"run {run_id} of {dag_id} still {run.get('state')!r} after {timeout:.0f} s; "
            f"tasks: {self.task_instances(dag_id, run_id)}"
        )
