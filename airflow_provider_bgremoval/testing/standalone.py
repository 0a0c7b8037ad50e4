"""
Run a real Airflow (``airflow standalone``: API server, scheduler, DAG processor, triggerer) for the
demo and for scheduler-level tests, and drive it through its REST API.

Everything the measured recipe needs (``OFFLINE-RECIPES.md``) is set for you: its own
``AIRFLOW_HOME`` and ``DAGS_FOLDER``, SQLite + LocalExecutor, ``PARALLELISM=4``, free ports for the
API server and both log servers with a matching ``API__BASE_URL``, a random ≥64-byte JWT secret,
and a known admin password (a passwords file) — or no auth at all with ``all_admins=True``. The
process group is started with ``setsid`` and stopped with ``kill -TERM -- -PGID`` (then ``KILL``),
also when the ``with`` block raises or is interrupted.

.. code-block:: python

    with AirflowStandalone(dags_folder="example_dags", env={"AIRFLOW_CONN_X": "..."}) as airflow:
        api = airflow.client
        api.wait_for_dag("example_bucket_remove_background")
        api.set_pool("pixelcut_api", 2)
        api.unpause("example_bucket_remove_background")
        run_id = api.trigger("example_bucket_remove_background", conf={})
        run = api.wait_for_run("example_bucket_remove_background", run_id, timeout=300)
        states = api.task_states("example_bucket_remove_background", run_id)

Scheduled runs are off by default (``[scheduler] use_job_schedule = False``), so only the runs you
trigger happen; pass ``scheduled_runs=True`` to let ``@daily``/``@hourly`` DAGs run on their own.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["AirflowRestClient", "AirflowStandalone", "StandaloneError", "free_port"]

log = logging.getLogger(__name__)

#: Components reported by ``/api/v2/monitor/health`` that must be healthy.
COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
#: Final DAG run states.
FINAL_RUN_STATES = frozenset({"success", "failed"})


class StandaloneError(RuntimeError):
    """Airflow did not start, stopped early, or a REST call or wait failed."""


def free_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port that is free right now.

    :param host: the interface.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class AirflowRestClient:
    """
    A small client for Airflow's public REST API (``/api/v2``).

    :param base_url: the API server, e.g. ``http://127.0.0.1:28080``.
    :param username: user for ``POST /auth/token`` (``None``: no auth, e.g. ``ALL_ADMINS``).
    :param password: its password.
    :param timeout: HTTP timeout in seconds.
    """

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._username = username
        self._password = password
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)
        self._token: str | None = None

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def __repr__(self) -> str:
        return f"AirflowRestClient({self.base_url!r}, username={self._username!r})"

    # -- plumbing ------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        if self._username is None:
            return {}
        if self._token is None:
            response = self._client.post(
                "/auth/token", json={"username": self._username, "password": self._password}
            )
            if response.status_code >= 400:
                raise StandaloneError(f"POST /auth/token: {response.status_code} {response.text[:300]}")
            self._token = str(response.json()["access_token"])
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """
        One API call; raises :class:`StandaloneError` on a 4xx/5xx not listed in ``ok``.

        :param method: HTTP method.
        :param path: path under the base URL (``/api/v2/...``).
        :param ok: error statuses returned instead of raised (e.g. ``(404,)``).
        :param kwargs: passed to ``httpx.Client.request``.
        """
        response = self._client.request(method, path, headers=self._headers(), **kwargs)
        if response.status_code == 401 and self._username is not None:
            self._token = None  # expired: log in again once
            response = self._client.request(method, path, headers=self._headers(), **kwargs)
        if response.status_code >= 400 and response.status_code not in ok:
            raise StandaloneError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health`` (no auth needed)."""
        response = self._client.get("/api/v2/monitor/health")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    # -- DAGs and runs -------------------------------------------------------------------------
    def import_errors(self) -> list[dict[str, Any]]:
        """The DAG import errors."""
        result: list[dict[str, Any]] = self.request("GET", "/api/v2/importErrors").json()["import_errors"]
        return result

    def wait_for_dag(self, dag_id: str, *, timeout: float = 120.0, poll: float = 1.0) -> dict[str, Any]:
        """
        Wait until the DAG processor has parsed ``dag_id``; fail early on an import error of it.

        :param dag_id: the DAG id.
        :param timeout: seconds.
        :param poll: seconds between checks.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = self.request("GET", f"/api/v2/dags/{dag_id}", ok=(404,))
            except httpx.TransportError as exc:
                if time.monotonic() > deadline:
                    raise StandaloneError(f"the API server does not answer ({exc})") from exc
                time.sleep(poll)
                continue
            if response.status_code == 200:
                result: dict[str, Any] = response.json()
                return result
            errors = [e for e in self.import_errors() if dag_id in str(e.get("filename", ""))]
            if errors:
                raise StandaloneError(f"{dag_id} has import errors: {errors}")
            if time.monotonic() > deadline:
                raise StandaloneError(f"{dag_id} was not parsed within {timeout:.0f} s")
            time.sleep(poll)

    def unpause(self, dag_id: str) -> None:
        """
        Unpause a DAG.

        :param dag_id: the DAG id.
        """
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """
        Create a manual DAG run; returns its run id.

        :param dag_id: the DAG id.
        :param conf: the run's conf (DAG params).
        """
        response = self.request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})}
        )
        return str(response.json()["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """
        A DAG run.

        :param dag_id: the DAG id.
        :param run_id: the run id.
        """
        result: dict[str, Any] = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()
        return result

    def wait_for_run(
        self, dag_id: str, run_id: str, *, timeout: float = 300.0, poll: float = 1.0
    ) -> dict[str, Any]:
        """
        Wait until the run is ``success`` or ``failed``; returns the run.

        :param dag_id: the DAG id.
        :param run_id: the run id.
        :param timeout: seconds.
        :param poll: seconds between checks.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                run = self.dag_run(dag_id, run_id)
            except httpx.TransportError as exc:  # a busy API server (SQLite, 2 cores): ask again
                if time.monotonic() > deadline:
                    raise StandaloneError(
                        f"{dag_id} {run_id}: the API server does not answer ({exc})"
                    ) from exc
                log.warning("Polling %s %s: %s; retrying", dag_id, run_id, exc)
                time.sleep(poll)
                continue
            if run["state"] in FINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise StandaloneError(
                    f"{dag_id} {run_id} still {run['state']} after {timeout:.0f} s: "
                    f"{self.task_states(dag_id, run_id)}"
                )
            time.sleep(poll)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """
        The run's task instances (mapped ones included).

        :param dag_id: the DAG id.
        :param run_id: the run id.
        """
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        result: list[dict[str, Any]] = self.request("GET", path, params={"limit": 1000}).json()[
            "task_instances"
        ]
        return result

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """
        ``task_id`` (``task_id[i]`` for mapped ones) → state.

        :param dag_id: the DAG id.
        :param run_id: the run id.
        """
        states: dict[str, str | None] = {}
        for ti in self.task_instances(dag_id, run_id):
            key = ti["task_id"] if ti.get("map_index", -1) < 0 else f"{ti['task_id']}[{ti['map_index']}]"
            states[key] = ti["state"]
        return dict(sorted(states.items()))

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", *, map_index: int = -1
    ) -> Any:
        """
        A task's XCom value (deserialised), or ``None`` when absent.

        :param dag_id: the DAG id.
        :param run_id: the run id.
        :param task_id: the task id.
        :param key: the XCom key.
        :param map_index: the map index (-1: not mapped).
        """
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        response = self.request(
            "GET",
            path,
            params={"map_index": map_index, "deserialize": "true", "stringify": "false"},
            ok=(404,),
        )
        return None if response.status_code == 404 else response.json().get("value")

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, *, map_index: int = -1
    ) -> str:
        """
        A task try's log as text (for diagnostics).

        :param dag_id: the DAG id.
        :param run_id: the run id.
        :param task_id: the task id.
        :param try_number: the try.
        :param map_index: the map index.
        """
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        response = self.request(
            "GET",
            path,
            params={"map_index": map_index, "full_content": "true"},
            headers={"Accept": "application/json"},
            ok=(404,),
        )
        if response.status_code == 404:
            return ""
        content = response.json().get("content")
        if isinstance(content, list):
            return "\n".join(
                str(item.get("event", item)) if isinstance(item, dict) else str(item) for item in content
            )
        return str(content)

    def set_pool(
        self, name: str, slots: int, *, description: str = "", include_deferred: bool = False
    ) -> None:
        """
        Create or update a pool.

        :param name: the pool name.
        :param slots: its slots.
        :param description: its description.
        :param include_deferred: whether deferred tasks take slots.
        """
        body = {
            "name": name,
            "slots": slots,
            "description": description,
            "include_deferred": include_deferred,
        }
        exists = self.request("GET", f"/api/v2/pools/{name}", ok=(404,)).status_code == 200
        if exists:
            self.request("PATCH", f"/api/v2/pools/{name}", json=body)
        else:
            self.request("POST", "/api/v2/pools", json=body)


class AirflowStandalone:
    """
    ``airflow standalone`` in its own ``AIRFLOW_HOME``, as a context manager.

    :param dags_folder: the DAGs folder to serve.
    :param home: ``AIRFLOW_HOME`` (default: a fresh temporary directory, removed on exit).
    :param env: extra environment for every component (connections, variables, emulator hosts).
    :param airflow_bin: the ``airflow`` executable (default: next to this Python).
    :param all_admins: no login at all (``SIMPLE_AUTH_MANAGER_ALL_ADMINS``) instead of a password.
    :param scheduled_runs: let the scheduler create scheduled runs (``use_job_schedule``).
    :param parallelism: ``[core] parallelism`` (worker processes of the LocalExecutor).
    :param startup_timeout: seconds to wait for all components to be healthy.
    :param stop_timeout: seconds between ``SIGTERM`` and ``SIGKILL`` of the process group.
    :param log_path: file receiving the components' output (default: ``<home>/standalone.log``).
    """

    def __init__(
        self,
        dags_folder: str | os.PathLike[str],
        *,
        home: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        airflow_bin: str | None = None,
        all_admins: bool = False,
        scheduled_runs: bool = False,
        parallelism: int = 4,
        startup_timeout: float = 120.0,
        stop_timeout: float = 20.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.dags_folder = Path(dags_folder).resolve()
        self._own_home = home is None
        self.home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="bgremoval-standalone-"))
        self.extra_env = dict(env or {})
        self.airflow_bin = airflow_bin or str(Path(sys.executable).with_name("airflow"))
        self.all_admins = all_admins
        self.scheduled_runs = scheduled_runs
        self.parallelism = parallelism
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_path = Path(log_path) if log_path is not None else self.home / "standalone.log"
        self.api_port = free_port()
        self.username = "admin"
        self.password = secrets.token_urlsafe(16)
        self._process: subprocess.Popen[bytes] | None = None
        self._client: AirflowRestClient | None = None

    @property
    def url(self) -> str:
        """The API server's base URL."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def client(self) -> AirflowRestClient:
        """The REST client (after :meth:`start`)."""
        if self._client is None:
            raise StandaloneError("Airflow is not started")
        return self._client

    @property
    def pid(self) -> int | None:
        """The ``airflow standalone`` process id (its process group id too)."""
        return self._process.pid if self._process is not None else None

    def environment(self) -> dict[str, str]:
        """The full environment the components run with."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
        env.pop("AIRFLOW_HOME", None)
        # standalone starts its components as ``airflow <component>``: put our airflow first on PATH.
        bin_dir = str(Path(self.airflow_bin).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(self.scheduled_runs),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            }
        )
        if self.all_admins:
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
        else:
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{self.username}:admin"
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(self.home / "passwords.json")
        env.update(self.extra_env)
        return env

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> AirflowStandalone:
        """Start ``airflow standalone`` and wait until every component is healthy."""
        if self._process is not None:
            return self
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.all_admins:
            (self.home / "passwords.json").write_text(json.dumps({self.username: self.password}))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [self.airflow_bin, "standalone"],
                cwd=self.home,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: its own process group, stopped as a whole
            )
        self._client = AirflowRestClient(
            self.url,
            username=None if self.all_admins else self.username,
            password=None if self.all_admins else self.password,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        log.info("Airflow standalone pid %s healthy at %s (log: %s)", self.pid, self.url, self.log_path)
        return self

    def _wait_healthy(self) -> None:
        assert self._process is not None and self._client is not None
        deadline = time.monotonic() + self.startup_timeout
        last: Any = None
        while True:
            if self._process.poll() is not None:
                raise StandaloneError(
                    f"airflow standalone exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                last = self._client.health()
                if all((last.get(name) or {}).get("status") == "healthy" for name in COMPONENTS):
                    return
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise StandaloneError(
                    f"Airflow not healthy after {self.startup_timeout:.0f} s (last: {last}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        """
        The last lines of the components' output.

        :param lines: how many.
        """
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        """``kill -TERM -- -PGID``, wait, then ``KILL`` what is left of the group; idempotent."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is None:
            return
        pgid = process.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("airflow standalone did not stop in %.0f s: killing the group", self.stop_timeout)
        deadline = time.monotonic() + 5.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            log.warning("Killing what is left of process group %s: %s", pgid, live_group_members(pgid))
            _signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass

    def cleanup(self) -> None:
        """Remove a temporary ``AIRFLOW_HOME`` created by this object."""
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> AirflowStandalone:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def live_group_members(pgid: int) -> list[int]:
    """
    Process ids in process group ``pgid`` that are still running (zombies excluded: in a container
    whose PID 1 does not reap orphans, killed processes can linger as zombies forever).

    :param pgid: the process group id.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux: ask the kernel about the whole group
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return sorted(members)


def _group_alive(pgid: int) -> bool:
    return bool(live_group_members(pgid))
