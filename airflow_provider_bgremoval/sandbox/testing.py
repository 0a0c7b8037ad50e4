"""Run the sandbox in-process (for pytest and scripts): :func:`run_sandbox`."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from airflow_provider_bgremoval.sandbox.admin import SandboxAdmin
from airflow_provider_bgremoval.sandbox.app import SandboxApp, create_app
from airflow_provider_bgremoval.sandbox.config import (
    DEFAULT_PIXELCUT_KEY,
    DEFAULT_PIXIAN_ID,
    DEFAULT_PIXIAN_SECRET,
    DEFAULT_POOF_KEY,
    SandboxConfig,
)
from airflow_provider_bgremoval.sandbox.state import SandboxState


@dataclass
class RunningSandbox:
    """A sandbox served on a local port.

    :param url: the base URL, e.g. ``http://127.0.0.1:54321`` (the Pixelcut and Pixian hosts; Poof's
        base URL is ``url + "/v1"``)
    :param admin: an admin client bound to it
    :param app: the ASGI app (``app.state`` is the in-memory :class:`~.state.SandboxState`)
    """

    url: str
    admin: SandboxAdmin
    app: SandboxApp

    @property
    def state(self) -> SandboxState:
        """The sandbox's in-memory state (ledger, faults, logs)."""
        return self.app.state

    @property
    def poof_base_url(self) -> str:
        """The base URL to give Poof clients (``.../v1``)."""
        return self.url + "/v1"

    pixelcut_key: str = DEFAULT_PIXELCUT_KEY
    pixian_id: str = DEFAULT_PIXIAN_ID
    pixian_secret: str = DEFAULT_PIXIAN_SECRET
    poof_key: str = DEFAULT_POOF_KEY


def free_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Bind a listening TCP socket (port 0 picks a free port).

    :param host: the interface
    :param port: the port
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def _config(config: SandboxConfig | dict[str, Any] | None, overrides: dict[str, Any]) -> SandboxConfig:
    if isinstance(config, SandboxConfig):
        if overrides:
            raise TypeError("pass either a SandboxConfig or configuration keywords, not both")
        return config
    merged = dict(config or {})
    merged.update(overrides)
    return SandboxConfig.from_dict(merged)


@contextlib.contextmanager
def run_sandbox(
    config: SandboxConfig | dict[str, Any] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 10.0,
    **overrides: Any,
) -> Iterator[RunningSandbox]:
    """Serve the sandbox with uvicorn in a background thread; stop it on exit.

    Example::

        with run_sandbox(result_ttl_seconds=5, faults={"poof": {"latency_ms": 50}}) as sandbox:
            httpx.get(sandbox.url + "/v1/credits", headers={"X-API-KEY": sandbox.pixelcut_key})
            sandbox.admin.set_balance("pixelcut", 3)

    :param config: a :class:`~.config.SandboxConfig`, or its JSON form as a dict
    :param host: the interface to bind (loopback by default)
    :param port: the port (0: a free one)
    :param log_level: uvicorn's log level
    :param startup_timeout: seconds to wait for the server to come up
    :param overrides: configuration keys (as in the JSON form), merged over ``config``
    """
    app = create_app(_config(config, overrides))
    sock = free_socket(host, port)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="bgremoval-sandbox", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the sandbox did not start")
        time.sleep(0.005)
    display_host = f"[{host}]" if ":" in host else host
    url = f"http://{display_host}:{bound_port}"
    admin = SandboxAdmin(url)
    try:
        yield RunningSandbox(url=url, admin=admin, app=app)
    finally:
        admin.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
