"""The Airflow-version shims in ``airflow_provider_bgremoval._compat``, on whichever Airflow is installed.

``make test-compat`` runs this on the oldest supported Airflow (3.1.x), ``make test`` on the newest.
"""

from __future__ import annotations

import importlib.metadata
from unittest import mock

import pytest
from packaging.version import Version

from airflow_provider_bgremoval import _compat
from tests.support.connections import set_connection

pytestmark = pytest.mark.compat

AIRFLOW = Version(importlib.metadata.version("apache-airflow-core"))
KEY = "sk_compat_SECRET_24680"


def test_mask_secret_uses_the_task_sdk_masker() -> None:
    from airflow.sdk.log import mask_secret

    assert _compat._mask_secret is mask_secret
    with mock.patch.object(_compat, "_mask_secret") as masker:
        _compat.mask_secret(KEY)
        _compat.mask_secret("")
        _compat.mask_secret(None)
    masker.assert_called_once_with(KEY)


def test_async_masking_is_detected_by_release() -> None:
    assert _compat._masks_asynchronously() is (AIRFLOW.release >= (3, 3, 2))


async def test_aget_connection_and_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "compat_conn", "poof", password=KEY, host="http://h", extra={"timeout": 9})
    conn = await _compat.aget_connection("compat_conn")
    assert conn.conn_id == "compat_conn"
    assert conn.password == KEY
    assert await _compat.aextra_dejson(conn) == {"timeout": 9}


async def test_blocking_masking_runs_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before 3.3.2 ``BaseHook.aget_connection`` can deadlock in the triggerer: it must not be used."""
    from airflow.sdk import BaseHook

    set_connection(monkeypatch, "compat_conn", "poof", password=KEY)
    monkeypatch.setattr(_compat, "_masks_asynchronously", lambda: False)
    with mock.patch.object(BaseHook, "aget_connection", side_effect=AssertionError("not on this release")):
        conn = await _compat.aget_connection("compat_conn")
    assert conn.password == KEY


async def test_extras_without_aextra_dejson() -> None:
    conn = mock.Mock(spec=["extra_dejson"], extra_dejson={"max_retries": 1})
    assert await _compat.aextra_dejson(conn) == {"max_retries": 1}
