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

For the CeleryExecutor (``airflow standalone`` forces the LocalExecutor) the components run as
separate processes and each worker gets its own ``AIRFLOW_HOME`` and hostname (``make
test-distributed``, ``docs/executors.md``):

.. code-block:: python

    with AirflowStandalone(
        "example_dags",
        executor=CELERY_EXECUTOR,
        components=("api-server", "scheduler", "dag-processor"),
        broker_url="redis://127.0.0.1:6390/0",
    ) as airflow:
        worker = airflow.start_celery_worker("worker-a")
        ...
        worker.kill()  # every process of it, task runners included

Scheduled runs are off by default (``[scheduler] use_job_schedule = False``), so only the runs you
trigger happen; pass ``scheduled_runs=True`` to let ``@daily``/``@hourly`` DAGs run on their own.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = [
    "CELERY_EXECUTOR",
    "AirflowRestClient",
    "AirflowStandalone",
    "CeleryWorker",
    "StandaloneError",
    "free_port",
    "live_group_members",
    "live_session_members",
    "worker_hostname",
]

log = logging.getLogger(__name__)

#: Components reported by ``/api/v2/monitor/health`` that must be healthy.
COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
#: The environment variable :func:`worker_hostname` reads (each Celery worker's own name).
WORKER_HOSTNAME_ENV = "BGREMOVAL_WORKER_HOSTNAME"
#: ``[core] executor`` for Celery (``apache-airflow-providers-celery``; Airflow 3 has no short alias).
CELERY_EXECUTOR = "airflow.providers.celery.executors.celery_executor.CeleryExecutor"
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

    def task_tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """
        Every try of one task instance (``try_number``, ``state``, ``hostname``, ...), oldest first.

        :param dag_id: the DAG id.
        :param run_id: the run id.
        :param task_id: the task id.
        :param map_index: the map index (-1: not mapped).
        """
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        if map_index < 0:
            path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries"
        tries: list[dict[str, Any]] = self.request("GET", path).json()["task_instances"]
        return sorted(tries, key=lambda t: int(t["try_number"]))

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


class CeleryWorker:
    """
    One ``airflow celery worker`` of an :class:`AirflowStandalone`, in its own session and its own
    ``AIRFLOW_HOME`` (its task logs stay there); made by :meth:`AirflowStandalone.start_celery_worker`.

    :param name: the worker's name; also the ``hostname`` its task instances record.
    :param home: its ``AIRFLOW_HOME``.
    :param process: the ``airflow celery worker`` process (its session leader).
    :param log_path: the file receiving its output.
    """

    def __init__(self, name: str, home: Path, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.home = home
        self.process = process
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"CeleryWorker({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int:
        """The worker's process id (its process group and session id too)."""
        return self.process.pid

    def members(self) -> list[int]:
        """The worker's live processes: its own group and the task runners' groups of its session."""
        return live_session_members(self.pid)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """
        Wait until Celery reports the worker ready (``... ready.`` in its output).

        :param timeout: seconds.
        """
        deadline = time.monotonic() + timeout
        while "ready." not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
                raise StandaloneError(f"celery worker {self.name} is not ready:\n{tail}")
            time.sleep(0.3)

    def kill(self) -> list[int]:
        """
        ``SIGKILL`` every process of the worker at once, as when its machine dies: its process group
        and the task runners, which Airflow puts in process groups of their own (a ``killpg`` of the
        worker's group alone leaves them running). Returns the pids killed.
        """
        killed = self.members()
        for pid in killed:
            _signal_pid(pid, signal.SIGKILL)
        _wait_gone(self.members, 10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        return killed

    def stop(self, timeout: float = 10.0) -> None:
        """
        ``SIGTERM`` the worker's group, then ``SIGKILL`` what is left of its session; idempotent.

        :param timeout: seconds between the two.
        """
        _stop_session(self.process, timeout)


class AirflowStandalone:
    """
    A real Airflow in its own ``AIRFLOW_HOME``, as a context manager: ``airflow standalone`` (one
    process, LocalExecutor), or the ``components`` as separate processes, e.g. for the
    CeleryExecutor with workers from :meth:`start_celery_worker` (see ``docs/executors.md``).

    :param dags_folder: the DAGs folder to serve.
    :param home: ``AIRFLOW_HOME`` (default: a fresh temporary directory, removed on exit).
    :param env: extra environment for every component (connections, variables, emulator hosts).
    :param airflow_bin: the ``airflow`` executable (default: next to this Python).
    :param all_admins: no login at all (``SIMPLE_AUTH_MANAGER_ALL_ADMINS``) instead of a password.
    :param scheduled_runs: let the scheduler create scheduled runs (``use_job_schedule``).
    :param parallelism: ``[core] parallelism`` (running tasks; the LocalExecutor's worker processes).
    :param startup_timeout: seconds to wait for all components to be healthy.
    :param stop_timeout: seconds between ``SIGTERM`` and ``SIGKILL`` of the process group.
    :param log_path: file receiving the components' output (default: ``<home>/standalone.log``).
    :param executor: ``[core] executor``; anything but the LocalExecutor needs ``components``
        (``airflow standalone`` forces the LocalExecutor).
    :param components: ``None`` runs ``airflow standalone``; a list such as
        ``("api-server", "scheduler", "dag-processor")`` runs ``airflow db migrate`` and then each
        ``airflow <component>`` in its own session.
    :param broker_url: ``[celery] broker_url`` (and result backend), e.g. ``redis://127.0.0.1:6390/0``.
    :param local_settings: the text of an ``airflow_local_settings.py`` (cluster policies) written to
        ``<home>/config/`` of every component and worker.
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
        executor: str = "LocalExecutor",
        components: Sequence[str] | None = None,
        broker_url: str | None = None,
        local_settings: str | None = None,
    ) -> None:
        if components is None and executor != "LocalExecutor":
            raise ValueError(
                f"airflow standalone runs only the LocalExecutor: pass components for {executor}"
            )
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
        self.executor = executor
        self.components = tuple(components) if components is not None else None
        self.broker_url = broker_url
        self.local_settings = local_settings
        self.api_port = free_port()
        self.username = "admin"
        self.password = secrets.token_urlsafe(16)
        self._processes: list[subprocess.Popen[bytes]] = []
        self.workers: list[CeleryWorker] = []
        self._client: AirflowRestClient | None = None
        self._jwt_secret = secrets.token_urlsafe(64)

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
        """The first process's id (``airflow standalone``; its process group id too)."""
        return self._processes[0].pid if self._processes else None

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
                "AIRFLOW__CORE__EXECUTOR": self.executor,
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
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(self.scheduled_runs),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            }
        )
        if self.broker_url is not None:
            env["AIRFLOW__CELERY__BROKER_URL"] = self.broker_url
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = self.broker_url
        if self.all_admins:
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
        else:
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{self.username}:admin"
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(self.home / "passwords.json")
        env.update(self.extra_env)
        return env

    def worker_environment(self, name: str, home: Path) -> dict[str, str]:
        """
        The environment of one Celery worker: the components' one with its own ``AIRFLOW_HOME``
        and a hostname of its own (:func:`worker_hostname`), so that several workers on one machine
        are told apart in the task instances.

        :param name: the worker's name.
        :param home: its ``AIRFLOW_HOME``.
        """
        env = self.environment()
        env["AIRFLOW_HOME"] = str(home)
        env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = f"{__name__}.worker_hostname"
        env[WORKER_HOSTNAME_ENV] = name
        return env

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> AirflowStandalone:
        """Start Airflow and wait until every component is healthy."""
        if self._processes:
            return self
        self._prepare_home(self.home)
        if not self.all_admins:
            (self.home / "passwords.json").write_text(json.dumps({self.username: self.password}))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._client = AirflowRestClient(
            self.url,
            username=None if self.all_admins else self.username,
            password=None if self.all_admins else self.password,
        )
        try:
            self._start_components(self.environment())
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        log.info("Airflow (pid %s) healthy at %s (log: %s)", self.pid, self.url, self.log_path)
        return self

    def _prepare_home(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        if self.local_settings is not None:
            (home / "config").mkdir(exist_ok=True)
            (home / "config" / "airflow_local_settings.py").write_text(self.local_settings)

    def _start_components(self, env: dict[str, str]) -> None:
        if self.components is None:
            self._processes.append(self._spawn(["standalone"], env, self.log_path))
            return
        with self.log_path.open("ab") as log_file:
            migrated = subprocess.run(
                [self.airflow_bin, "db", "migrate"],
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=self.startup_timeout,
                check=False,
            )
        if migrated.returncode != 0:
            raise StandaloneError(f"airflow db migrate exited with {migrated.returncode}:\n{self.log_tail()}")
        for component in self.components:
            self._processes.append(self._spawn([component], env, self.log_path))

    def _spawn(self, args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log_file:
            return subprocess.Popen(
                [self.airflow_bin, *args],
                cwd=env["AIRFLOW_HOME"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: its own session and process group, stopped as a whole
            )

    def start_celery_worker(
        self, name: str, *, concurrency: int = 1, ready_timeout: float = 120.0
    ) -> CeleryWorker:
        """
        Start ``airflow celery worker`` named ``name`` in ``<home>/workers/<name>`` and wait until it
        is ready (needs ``executor=CELERY_EXECUTOR`` and a ``broker_url``).

        :param name: the worker's name (its task instances' ``hostname``).
        :param concurrency: tasks it runs at once (``--concurrency``).
        :param ready_timeout: seconds to wait for it.
        """
        if self.executor != CELERY_EXECUTOR or self.broker_url is None:
            raise StandaloneError("Celery workers need executor=CELERY_EXECUTOR and a broker_url")
        home = self.home / "workers" / name
        self._prepare_home(home)
        args = ["celery", "worker", "--concurrency", str(concurrency), "--celery-hostname", f"{name}@%h"]
        args += ["--skip-serve-logs", "--without-gossip", "--without-mingle"]
        log_path = home / "worker.log"
        process = self._spawn(args, self.worker_environment(name, home), log_path)
        worker = CeleryWorker(name, home, process, log_path)
        self.workers.append(worker)
        worker.wait_ready(ready_timeout)
        return worker

    def restart_component(self, component: str) -> None:
        """
        Stop one of the ``components`` (its whole session) and start it again, e.g. the triggerer.

        :param component: a name given in ``components``.
        """
        if self.components is None or component not in self.components:
            raise StandaloneError(f"{component!r} is not one of the separately started components")
        index = self.components.index(component)
        _stop_session(self._processes[index], self.stop_timeout)
        self._processes[index] = self._spawn([component], self.environment(), self.log_path)

    def _required_health(self) -> tuple[str, ...]:
        if self.components is None:
            return COMPONENTS
        started = {c.replace("-", "_") for c in self.components}
        return tuple(name for name in COMPONENTS if name == "metadatabase" or name in started)

    def _wait_healthy(self) -> None:
        assert self._client is not None
        deadline = time.monotonic() + self.startup_timeout
        required = self._required_health()
        last: Any = None
        while True:
            for process in self._processes:
                if process.poll() is not None:
                    raise StandaloneError(
                        f"{process.args!r} exited with {process.returncode}:\n{self.log_tail()}"
                    )
            try:
                last = self._client.health()
                if all((last.get(name) or {}).get("status") == "healthy" for name in required):
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
        """
        Stop the workers, then the components: ``kill -TERM -- -PGID``, wait, then ``KILL`` what is
        left of each session (task runners included); idempotent.
        """
        if self._client is not None:
            self._client.close()
            self._client = None
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.stop(min(self.stop_timeout, 10.0))
        processes, self._processes = self._processes, []
        for process in processes:
            _stop_session(process, self.stop_timeout)

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


def worker_hostname() -> str:
    """
    ``[core] hostname_callable`` for several workers on one machine: the worker's name from
    ``$BGREMOVAL_WORKER_HOSTNAME`` (set by :meth:`AirflowStandalone.start_celery_worker`), else the
    machine's FQDN as Airflow's default.
    """
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()


def _stop_session(process: subprocess.Popen[bytes], timeout: float) -> None:
    sid = process.pid
    _signal_group(sid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in %.0f s: killing its session", process.args, timeout)
    _wait_gone(lambda: live_session_members(sid), 5.0)
    left = live_session_members(sid)
    if left:
        log.warning("Killing what is left of session %s: %s", sid, left)
        for pid in left:
            _signal_pid(pid, signal.SIGKILL)
        _wait_gone(lambda: live_session_members(sid), 5.0)
    with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored
        process.wait(timeout=5)


def _wait_gone(members: Callable[[], list[int]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while members() and time.monotonic() < deadline:
        time.sleep(0.1)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def live_group_members(pgid: int) -> list[int]:
    """
    Process ids in process group ``pgid`` that are still running (zombies excluded: in a container
    whose PID 1 does not reap orphans, killed processes can linger as zombies forever).

    :param pgid: the process group id.
    """
    return _live_members(2, pgid)


def live_session_members(sid: int) -> list[int]:
    """
    Process ids in session ``sid`` that are still running (zombies excluded), whatever their
    process group: Airflow's task runners put themselves in groups of their own.

    :param sid: the session id (the pid of the process started with ``setsid``).
    """
    return _live_members(3, sid)


def _live_members(field: int, value: int) -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux: ask the kernel about the group
        try:
            os.killpg(value, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [value]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may contain spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > field and fields[0] not in ("Z", "X") and int(fields[field]) == value:
            members.append(int(entry.name))
    return sorted(members)
