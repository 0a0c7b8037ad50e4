"""
A Redis server for the Celery broker: Debian's ``redis-server`` on a free loopback port.

No persistence (``--save ''``, no append-only file), no daemon, its data directory in a temporary
folder; ``scripts/ensure-redis.sh`` installs the package when it is missing (``make test-distributed``
runs it first).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from airflow_provider_bgremoval.testing.standalone import free_port


class RedisServer:
    """
    ``redis-server`` as a context manager.

    :param workdir: its working directory (log file, nothing else: persistence is off).
    :param binary: the executable (default: ``redis-server`` on ``PATH``).
    :param startup_timeout: seconds to wait until it answers ``PING``.
    """

    def __init__(self, workdir: Path, *, binary: str | None = None, startup_timeout: float = 15.0) -> None:
        found = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise RuntimeError("redis-server is not installed: run scripts/ensure-redis.sh (apt-get)")
        self.binary = found
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "redis.log"
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait for ``PONG``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)]
        args += ["--logfile", str(self.log_path)]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while not self.ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log[-2000:]}")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        """Whether the server answers ``PING`` (a raw RESP exchange, no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the server (then kill it); idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
