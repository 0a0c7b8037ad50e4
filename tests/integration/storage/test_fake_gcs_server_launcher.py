"""The fake-gcs-server launcher used by the tests and the demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from airflow_provider_bgremoval.testing.gcs_emulator import (
    FakeGcsServer,
    FakeGcsServerError,
    find_fake_gcs_server_binary,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_binary_is_found() -> None:
    path = Path(find_fake_gcs_server_binary())
    assert path.is_file()
    assert os.access(path, os.X_OK)


def test_binary_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAKE_GCS_SERVER_BIN", str(tmp_path / "missing"))
    with pytest.raises(FakeGcsServerError, match="not found"):
        find_fake_gcs_server_binary()


def test_lifecycle_keeps_the_port(tmp_path: Path) -> None:
    server = FakeGcsServer(log_path=tmp_path / "gcs.log")
    assert "no port yet" in repr(server)
    with pytest.raises(FakeGcsServerError):
        _ = server.url
    with server:
        port, url = server.port, server.url
        assert url == f"http://127.0.0.1:{port}"
        assert server.env() == {"STORAGE_EMULATOR_HOST": url}
        assert server.running
        assert server.start() is server  # idempotent
        assert httpx.get(f"{url}/storage/v1/b").status_code == 200

        server.create_bucket("keep-me")
        server.create_bucket("keep-me")  # exist_ok
        client = server.client()
        client.bucket("keep-me").blob("a.txt").upload_from_string(b"a")
        assert [b.name for b in client.list_buckets()] == ["keep-me"]

        first_pid = server.pid
        server.stop()
        assert not server.running
        assert server.pid is None
        assert not _port_open(port)

        server.start()
        assert (server.port, server.url) == (port, url)
        assert server.pid != first_pid
        # Memory backend: bucket names come back (re-created), objects do not.
        assert [b.name for b in client.list_buckets()] == ["keep-me"]
        assert list(client.list_blobs("keep-me")) == []

        server.restart()
        assert server.port == port
        assert server.running
    assert not server.running
    assert not _port_open(port)
    assert (tmp_path / "gcs.log").exists()


def test_fixed_port_and_startup_failures(tmp_path: Path) -> None:
    with FakeGcsServer() as taken:
        # Port already in use: the binary exits and the error carries the log tail.
        clash = FakeGcsServer(taken.port, log_path=tmp_path / "clash.log", startup_timeout=5)
        with pytest.raises(FakeGcsServerError, match="exited with code"):
            clash.start()
        assert not clash.running

    broken = FakeGcsServer(binary="/bin/false", startup_timeout=5)
    with pytest.raises(FakeGcsServerError, match="exited with code 1"):
        broken.start()
    with pytest.raises(FakeGcsServerError, match="invalid bucket name"), FakeGcsServer() as server:
        server.create_bucket("x")  # too short for GCS naming rules


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.sh"
    # Ignores SIGTERM; answers nothing, so give it a tiny startup timeout and drive _spawn directly.
    script.write_text("#!/bin/sh\ntrap '' TERM\nwhile true; do sleep 0.05; done\n")
    script.chmod(0o755)
    server = FakeGcsServer(binary=str(script), startup_timeout=0.3, stop_timeout=0.2)
    with pytest.raises(FakeGcsServerError, match="did not answer"):
        server.start()
    assert not server.running  # the failed start stopped it (SIGTERM ignored -> SIGKILL)


def test_command_line_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_bgremoval.testing.gcs_emulator",
            "--bucket",
            "demo-raw",
            "--log-file",
            str(tmp_path / "cli.log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        listing = httpx.get(f"{url}/storage/v1/b").json()
        assert [b["name"] for b in listing["items"]] == ["demo-raw"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        port = int(url.rsplit(":", 1)[1])
        assert not _port_open(port)  # the server went down with the launcher
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
