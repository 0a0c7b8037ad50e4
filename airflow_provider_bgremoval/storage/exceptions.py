"""
Errors raised by the GCS storage layer.

Every failure of :class:`~airflow_provider_bgremoval.storage.gcs.GcsStorage` surfaces as one of these
classes (the google-cloud exception is kept as ``__cause__``), so callers never need to import
``google.api_core.exceptions``:

* :class:`ObjectExistsError`: a create-only write found the object already there (the normal "someone
  else finished it first" outcome; not a failure of the pipeline).
* :class:`WriteConflictError`: a generation-matched write found another generation (or no object).
* :class:`ObjectNotFoundError` / :class:`ObjectChangedError`: the object (or the planned generation
  of it) is gone.
* :class:`ObjectTooLargeError`: a read exceeded its ``max_bytes`` cap.
* :class:`DataCorruptionError`: downloaded bytes failed their checksum.
* :class:`StorageUnavailableError`: transient errors outlasted the retry deadline (trying again later
  may work).
* :class:`StoragePermissionError`: 401/403 (fix the credentials; retrying cannot help).
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException

__all__ = [
    "DataCorruptionError",
    "ObjectChangedError",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ObjectTooLargeError",
    "StorageConfigError",
    "StorageError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "WriteConflictError",
]


class StorageError(AirflowException):
    """
    Base class of the storage layer's errors.

    :param message: human-readable explanation (never contains key material).
    :param bucket: bucket concerned, if any.
    :param name: object name concerned, if any.
    """

    def __init__(self, message: str, *, bucket: str | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.bucket = bucket
        self.name = name

    @property
    def uri(self) -> str | None:
        """``gs://bucket/name`` (or ``gs://bucket``) of the object concerned."""
        if self.bucket is None:
            return None
        return f"gs://{self.bucket}/{self.name}" if self.name is not None else f"gs://{self.bucket}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the keyword-only attributes across pickling (multiprocessing, Airflow serialisation).
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[StorageError], message: str, state: dict[str, object]) -> StorageError:
    obj = cls.__new__(cls)
    AirflowException.__init__(obj, message)
    obj.__dict__.update(state)
    return obj


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
    """
    Base of the errors that compare the generation a caller expected with the live one.

    :param message: human-readable explanation.
    :param bucket: bucket concerned.
    :param name: object name concerned.
    :param expected_generation: the generation the caller expected.
    :param current_generation: the live generation, or ``None`` if there is no object.
    """

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
