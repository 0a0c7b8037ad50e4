"""GCS storage layer: credentials, listing, reads and conditional writes (docs/storage.md)."""

from __future__ import annotations

from airflow_provider_bgremoval.storage.credentials import (
    DEFAULT_GCP_CONN_ID,
    ResolvedCredentials,
    resolve_gcs_credentials,
)
from airflow_provider_bgremoval.storage.exceptions import (
    DataCorruptionError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageConfigError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
    WriteConflictError,
    gs_uri,
    split_gs_uri,
)
from airflow_provider_bgremoval.storage.gcs import (
    WRITE_TOKEN_METADATA_KEY,
    GcsStorage,
    ObjectFilter,
    ObjectInfo,
)

__all__ = [
    "DEFAULT_GCP_CONN_ID",
    "WRITE_TOKEN_METADATA_KEY",
    "DataCorruptionError",
    "GcsStorage",
    "ObjectChangedError",
    "ObjectExistsError",
    "ObjectFilter",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectTooLargeError",
    "ResolvedCredentials",
    "StorageConfigError",
    "StorageError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "WriteConflictError",
    "gs_uri",
    "resolve_gcs_credentials",
    "split_gs_uri",
]
