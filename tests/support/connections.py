"""Airflow connections for tests, supplied the way users do: ``AIRFLOW_CONN_<ID>`` environment JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest


def set_connection(
    monkeypatch: pytest.MonkeyPatch,
    conn_id: str,
    conn_type: str,
    *,
    password: str | None = None,
    login: str | None = None,
    host: str | None = None,
    port: int | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Define connection ``conn_id`` for the current test through its environment variable."""
    payload: dict[str, Any] = {"conn_type": conn_type}
    for key, value in (("password", password), ("login", login), ("host", host), ("port", port)):
        if value is not None:
            payload[key] = value
    if extra:
        payload["extra"] = extra
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(payload))


class SleepRecorder:
    """A fake ``sleep`` for retry tests: records the waits instead of sleeping (time travel)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        """Async variant."""
        self.waits.append(seconds)
