"""
pytest fixtures for GCS: one fake-gcs-server per test session, unique buckets per test.

Load with ``pytest_plugins = ["tests.support.gcs"]`` in the top-level ``tests/conftest.py``.

* ``fake_gcs`` (session): a running :class:`FakeGcsServer`; ``STORAGE_EMULATOR_HOST`` points at it
  from the first test that asks for it until the end of the session.
* ``make_bucket`` / ``gcs_bucket_factory`` (function): ``make_bucket("raw")`` creates and returns a
  bucket name unique to the calling test.
* ``gcs_bucket`` (function): one fresh bucket.
* ``gcs_storage`` (function): a :class:`GcsStorage` resolved through ``STORAGE_EMULATOR_HOST`` (the
  same path production code takes), with a short retry deadline.
* ``gcs_client`` (function): a raw ``google.cloud.storage.Client`` for seeding and inspecting buckets.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from airflow_provider_bgremoval.storage import GcsStorage
from airflow_provider_bgremoval.testing.gcs_emulator import FakeGcsServer

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud import storage

__all__ = [
    "fake_gcs",
    "fast_retry",
    "gcs_bucket",
    "gcs_bucket_factory",
    "gcs_client",
    "gcs_storage",
    "make_bucket",
    "unique_bucket_name",
]


def fast_retry(timeout: float = 10.0, *, on_error: Callable[[Exception], object] | None = None) -> Retry:
    """GCS's default retry predicate with short backoff (50 ms .. 0.5 s) and a ``timeout``-second deadline."""
    from google.api_core.retry import Retry
    from google.cloud.storage.retry import DEFAULT_RETRY

    return Retry(
        predicate=DEFAULT_RETRY._predicate,
        initial=0.05,
        maximum=0.5,
        multiplier=2.0,
        timeout=timeout,
        on_error=on_error,
    )


def unique_bucket_name(hint: str = "b") -> str:
    """A valid, unique bucket name (3-63 chars of ``[a-z0-9-]``) starting with ``hint``."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-") or "b"
    return f"{cleaned[:40]}-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    """One fake-gcs-server for the whole session, exported as ``STORAGE_EMULATOR_HOST``."""
    log_path = tmp_path_factory.mktemp("fake-gcs") / "server.log"
    server = FakeGcsServer(log_path=log_path)
    with server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env().items():
            mp.setenv(key, value)
        yield server


@pytest.fixture
def gcs_bucket_factory(fake_gcs: FakeGcsServer, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory: ``make("raw")`` creates a bucket unique to this test and returns its name."""

    def make(hint: str | None = None) -> str:
        name = unique_bucket_name(hint or request.node.name)
        fake_gcs.create_bucket(name)
        return name

    return make


@pytest.fixture
def make_bucket(gcs_bucket_factory: Callable[..., str]) -> Callable[..., str]:
    """Alias of ``gcs_bucket_factory``."""
    return gcs_bucket_factory


@pytest.fixture
def gcs_bucket(gcs_bucket_factory: Callable[..., str]) -> str:
    """One fresh, empty bucket."""
    return gcs_bucket_factory()


@pytest.fixture
def gcs_storage(fake_gcs: FakeGcsServer) -> GcsStorage:
    """A :class:`GcsStorage` reaching the emulator through ``STORAGE_EMULATOR_HOST`` (10 s retry deadline)."""
    return GcsStorage(gcp_conn_id=None, retry=fast_retry(10.0), timeout=10.0)


@pytest.fixture
def gcs_client(fake_gcs: FakeGcsServer) -> storage.Client:
    """A plain ``storage.Client`` bound to the emulator (for seeding and inspecting buckets)."""
    return fake_gcs.client()
