"""The vendor sandbox for integration tests: one server per session, Airflow connections pointing at it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox, run_sandbox

VENDOR_CONN_IDS = {"pixelcut": "pixelcut_default", "pixian": "pixian_default", "poof": "poof_default"}


def connection_env(
    sandbox: RunningSandbox, *, timeout: float = 30, max_retries: int = 3, requests_per_second: float = 0
) -> dict[str, str]:
    """
    ``AIRFLOW_CONN_*`` variables (JSON form) for the three vendors, pointing at ``sandbox``.

    ``requests_per_second`` is 0 (no request pacing) unless a test asks for it: pacing runs on the real
    clock, and the tests of pacing against the sandbox are in tests/integration/test_pacing.py.
    """
    extra = {"timeout": timeout, "max_retries": max_retries, "requests_per_second": requests_per_second}
    conns = {
        "pixelcut_default": {"conn_type": "pixelcut", "host": sandbox.url, "password": sandbox.pixelcut_key},
        "pixian_default": {
            "conn_type": "pixian",
            "host": sandbox.url,
            "login": sandbox.pixian_id,
            "password": sandbox.pixian_secret,
        },
        "poof_default": {"conn_type": "poof", "host": sandbox.url, "password": sandbox.poof_key},
    }
    return {
        f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps({**conn, "extra": extra})
        for conn_id, conn in conns.items()
    }


@pytest.fixture(scope="session")
def sandbox() -> Iterator[RunningSandbox]:
    """One sandbox per test session (tests reset it through :func:`vendor_connections`)."""
    with run_sandbox() as running:
        yield running


@pytest.fixture
def vendor_connections(sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> RunningSandbox:
    """A freshly reset sandbox with ``pixelcut_default``, ``pixian_default`` and ``poof_default`` set."""
    sandbox.admin.reset()
    for name, value in connection_env(sandbox).items():
        monkeypatch.setenv(name, value)
    return sandbox
