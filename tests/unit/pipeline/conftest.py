"""Fixtures of the engine tests: buckets on fake-gcs-server, and the fake vendor balance endpoints."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from airflow_provider_bgremoval.pipeline.planning import BatchSpec
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.support.balances import sleeper, vendors  # noqa: F401 - pytest fixtures


@pytest.fixture
def buckets(gcs_bucket_factory: Callable[..., str], gcs_storage: GcsStorage) -> tuple[GcsStorage, str, str]:
    """The storage, a source bucket and a destination bucket."""
    return gcs_storage, gcs_bucket_factory("src"), gcs_bucket_factory("dst")


@pytest.fixture
def batch(
    gcs_bucket_factory: Callable[..., str], gcs_storage: GcsStorage
) -> tuple[GcsStorage, str, BatchSpec]:
    """The storage, a source bucket and a spec from it to a destination bucket."""
    src, dst = gcs_bucket_factory("src"), gcs_bucket_factory("dst")
    return gcs_storage, src, BatchSpec(source_bucket=src, destination_bucket=dst)
