"""The GCS storage errors, each with the google-cloud exception (if any) as ``__cause__``."""

from __future__ import annotations

from airflow_provider_bgremoval.exceptions import _KeywordError


def gs_uri(bucket: str, name: str | None = None) -> str:
    """
    ``gs://bucket/name``, or ``gs://bucket`` without a name (one formatter for every GCS URI).

    :param bucket: the bucket.
    :param name: the object name (or a prefix), if any.
    """
    return f"gs://{bucket}" if name is None else f"gs://{bucket}/{name}"


def split_gs_uri(uri: str) -> tuple[str, str]:
    """
    ``(bucket, name)`` of ``gs://bucket/name`` (the name is empty for ``gs://bucket``).

    :param uri: a ``gs://`` URI.
    """
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name


class StorageError(_KeywordError):
    """
    Base class of the storage layer's errors.

    :param message: human-readable explanation (never contains key material).
    :param bucket: bucket concerned, if any.
    :param name: object name concerned, if any.
    """

    def __init__(self, message: str, *, bucket: str | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.name = name

    @property
    def uri(self) -> str | None:
        """``gs://bucket/name`` (or ``gs://bucket``) of the object concerned."""
        return None if self.bucket is None else gs_uri(self.bucket, self.name)


class StorageConfigError(StorageError):
    """The GCP connection is misconfigured (e.g. both ``key_path`` and ``keyfile_dict``)."""


class StoragePermissionError(StorageError):
    """GCS answered 401 or 403: the credentials may not do this."""


class StorageUnavailableError(StorageError):
    """Transient failures (5xx, 429, connection errors, timeouts) outlasted the retry policy."""


class DataCorruptionError(StorageError):
    """Downloaded bytes do not match the object's checksum (corrupted in transit); reading again may work."""


class ObjectNotFoundError(StorageError):
    """The object (or its bucket) does not exist."""


class _GenerationMismatchError(StorageError):
    """Base of the errors that compare the generation a caller expected with the live one."""

    def __init__(
        self,
        message: str,
        *,
        bucket: str,
        name: str,
        expected_generation: int,
        current_generation: int | None,
    ) -> None:
        super().__init__(message, bucket=bucket, name=name)
        self.expected_generation = expected_generation
        self.current_generation = current_generation


class ObjectChangedError(ObjectNotFoundError, _GenerationMismatchError):
    """
    The generation that was planned no longer exists: the object was replaced or deleted meanwhile.

    :param expected_generation: the generation the caller pinned.
    :param current_generation: the live generation now, or ``None`` if the object is gone.
    """


class ObjectTooLargeError(StorageError):
    """
    A read would exceed its ``max_bytes`` cap.

    :param max_bytes: the cap.
    :param size: the object's size when known, else ``None`` (only "more than ``max_bytes``" is known).
    """

    def __init__(self, message: str, *, bucket: str, name: str, max_bytes: int, size: int | None) -> None:
        super().__init__(message, bucket=bucket, name=name)
        self.max_bytes = max_bytes
        self.size = size


class WriteConflictError(_GenerationMismatchError):
    """
    A conditional write failed its precondition (HTTP 412).

    :param expected_generation: the ``if_generation_match`` value sent (``0`` = "must not exist").
    :param current_generation: the generation found afterwards, or ``None`` if there is no object.
    """


class ObjectExistsError(WriteConflictError):
    """A create-only write (``if_generation_match=0``) found the object already present."""
