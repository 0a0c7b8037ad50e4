"""Fixtures of the fault matrix: a seeded source bucket per module, a fresh destination per cell."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.testing.gcs_emulator import FakeGcsServer
from tests.faults.matrix import BATCH, seed, small_batch
from tests.support.gcs import fast_retry, unique_bucket_name
from tests.support.sandbox import connection_env


@dataclass
class Cell:
    """
    Everything a cell needs.

    :param sandbox: the reset vendor sandbox (connections set).
    :param storage: storage bound to the session's fake-gcs-server.
    :param src: the seeded source bucket (``raw/`` holds :data:`BATCH` images).
    :param objects: the seeded sources.
    :param dst: a fresh destination bucket.
    """

    sandbox: RunningSandbox
    storage: GcsStorage
    src: str
    objects: dict[str, bytes]
    dst: str
    fake_gcs: FakeGcsServer
    monkeypatch: pytest.MonkeyPatch

    def connections(self, *, timeout: float = 30, max_retries: int = 3) -> None:
        """Redefine the vendor connections (e.g. a short ``timeout`` extra or more retries)."""
        for name, value in connection_env(self.sandbox, timeout=timeout, max_retries=max_retries).items():
            self.monkeypatch.setenv(name, value)

    def new_bucket(self, hint: str = "dst") -> str:
        """Another fresh bucket."""
        name = unique_bucket_name(hint)
        self.fake_gcs.create_bucket(name)
        return name


@pytest.fixture(scope="module")
def seeded_source(fake_gcs: FakeGcsServer) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A source bucket with :data:`BATCH` small studio shots under ``raw/`` (read-only for every cell)."""
    storage = GcsStorage(gcp_conn_id=None, retry=fast_retry(10.0), timeout=10.0)
    bucket = unique_bucket_name("faults-src")
    fake_gcs.create_bucket(bucket)
    objects = small_batch(BATCH)
    seed(storage, bucket, objects)
    yield bucket, objects
    # Sources are never modified by any cell.
    for name, data in objects.items():
        assert storage.read(bucket, name) == data, f"source {name} changed"


@pytest.fixture
def cell(
    vendor_connections: RunningSandbox,
    gcs_storage: GcsStorage,
    seeded_source: tuple[str, dict[str, bytes]],
    fake_gcs: FakeGcsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Cell:
    """A reset sandbox, the seeded sources and a fresh destination bucket."""
    src, objects = seeded_source
    dst = unique_bucket_name("faults-dst")
    fake_gcs.create_bucket(dst)
    return Cell(vendor_connections, gcs_storage, src, objects, dst, fake_gcs, monkeypatch)
