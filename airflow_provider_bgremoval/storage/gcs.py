"""
Google Cloud Storage access for the provider: listing, reads and conditional writes.

:class:`GcsStorage` wraps one ``google.cloud.storage.Client`` (created lazily, shared by threads; the
async pipeline calls it through ``asyncio.to_thread``). Credentials come from
:mod:`airflow_provider_bgremoval.storage.credentials` (``google_cloud_default`` extras, ADC fallback,
``STORAGE_EMULATOR_HOST`` for fake-gcs-server).

Retries follow GCS's own rules
(`retry strategy <https://cloud.google.com/storage/docs/retry-strategy>`_):

* listing, ``stat`` and reads are idempotent and use ``DEFAULT_RETRY`` (429, 408, 5xx, connection
  errors, timeouts; exponential backoff; 120 s deadline by default);
* writes are retried **only when conditional** (``if_generation_match`` is an int: ``0`` for
  create-only, or the generation we expect to replace), which is what
  ``DEFAULT_RETRY_IF_GENERATION_SPECIFIED`` does; an unconditional overwrite
  (``if_generation_match=None``) is attempted exactly once.

**A retried create-only write can hit its own first attempt.** If attempt 1 reached the server and
created the object but the reply was lost (connection reset, timeout), attempt 2 gets HTTP 412
although the object is ours. On a 412, :meth:`GcsStorage.write` therefore reads the object's metadata
(one ``stat``) and treats the write as done when the object is provably ours:

* with ``idempotency_token``: the object carries that token in its metadata
  (:data:`WRITE_TOKEN_METADATA_KEY`) **and** the CRC32C/MD5 of our bytes. Any 412 counts, retried or
  not, so a task retry that repeats the same logical write with the same token also recognises it;
* without a token: only when one of our attempts failed in a way that may have reached the server,
  and the object has the CRC32C/MD5 of our bytes and every metadata pair we sent. (Another writer
  racing us with byte-identical content and metadata would be taken for us; the result is the same
  object, so nothing is lost.)

Otherwise :class:`~airflow_provider_bgremoval.storage.exceptions.ObjectExistsError` is raised with the
existing generation.

Uploads use google-cloud-storage's public ``Blob.upload_from_string`` with the precondition and the
payload's CRC32C. The library sends objects up to 8 MiB as one multipart request and larger ones as a
resumable upload whose first request carries the whole object's CRC32C (``crc32c_checksum_value``).
GCS checks ``ifGenerationMatch`` on both and creates the object only when all of it arrived with that
checksum, so a corrupted or partial object never becomes visible. (fake-gcs-server ignores the
precondition and the checksum on resumable uploads: see
:mod:`airflow_provider_bgremoval.testing.gcs_emulator`.)

**Environment lookups.** A ``requests`` session that trusts the environment (``trust_env``) re-reads
the proxy variables, ``NO_PROXY``, the CA-bundle variables and ``~/.netrc`` on every request, a sixth
of the client's CPU per image (docs/benchmarks.md). :class:`GcsStorage` decides once, when it creates
the client: with ``trust_env=None`` (the default) the session trusts the environment only when a
proxy applies to the GCS endpoint, with the semantics of ``requests.utils.get_environ_proxies`` (an
``http_proxy``/``https_proxy``/``all_proxy`` variable, unless ``NO_PROXY`` names the endpoint's host);
``trust_env=True`` or ``False`` decides explicitly. A CA bundle named by ``REQUESTS_CA_BUNDLE`` or
``CURL_CA_BUNDLE`` is honoured either way (it becomes the session's ``verify``); ``~/.netrc`` is read
only by a session that trusts the environment (GCS authenticates with OAuth tokens, not netrc).
"""

from __future__ import annotations

import base64
import enum
import fnmatch
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_bgremoval.storage.credentials import (
    DEFAULT_GCP_CONN_ID,
    resolve_gcs_credentials,
)
from airflow_provider_bgremoval.storage.exceptions import (
    DataCorruptionError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
    WriteConflictError,
)

if TYPE_CHECKING:
    import requests
    from google.api_core.retry import Retry
    from google.cloud import storage

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "JSON_LINES_CONTENT_TYPE",
    "WRITE_TOKEN_METADATA_KEY",
    "GcsStorage",
    "ObjectFilter",
    "ObjectInfo",
    "crc32c_b64",
    "md5_b64",
    "provider_user_agent",
]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 1000
#: Custom-metadata key that carries a write's idempotency token.
WRITE_TOKEN_METADATA_KEY = "bgremoval-write-token"
JSON_LINES_CONTENT_TYPE = "application/x-ndjson"
_LIST_FIELDS = "items(name,bucket,generation,size,contentType,md5Hash,crc32c,metadata,updated),nextPageToken"
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class _Unset(enum.Enum):
    UNSET = "UNSET"


_UNSET = _Unset.UNSET


def provider_user_agent() -> str:
    """``airflow-provider-bgremoval/<installed version>`` for GCS's User-Agent header."""
    from airflow_provider_bgremoval import __version__

    return f"airflow-provider-bgremoval/{__version__}"


def crc32c_b64(data: bytes) -> str:
    """CRC32C of ``data`` in GCS's notation (base64 of the big-endian 32-bit value)."""
    import google_crc32c

    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode("ascii")


def md5_b64(data: bytes) -> str:
    """MD5 of ``data`` in GCS's notation (base64 of the digest)."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


#: Variables naming a CA bundle, in the order ``requests`` reads them.
_CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def _proxy_applies(endpoint: str) -> bool:
    """Whether the environment configures a proxy that ``requests`` would apply to ``endpoint``."""
    from requests.utils import get_environ_proxies

    return any(key != "no" for key in get_environ_proxies(endpoint))  # "no" is NO_PROXY itself


def _configure_environment_lookups(session: requests.Session, endpoint: str, trust_env: bool | None) -> None:
    """Decide ``session.trust_env`` once and keep an environment CA bundle (module docstring)."""
    session.trust_env = _proxy_applies(endpoint) if trust_env is None else trust_env
    ca_bundle = next((os.environ[name] for name in _CA_BUNDLE_VARIABLES if os.environ.get(name)), None)
    if ca_bundle is not None:
        session.verify = ca_bundle


# --------------------------------------------------------------------------------------------- ObjectInfo
@dataclass(frozen=True)
class ObjectInfo:
    """
    What the provider needs to know about one GCS object (one generation of it).

    :param bucket: bucket name.
    :param name: object name.
    :param generation: the object's generation (changes on every replacement).
    :param size: size in bytes.
    :param content_type: MIME type, if set.
    :param md5_hash: base64 MD5 (absent for composite objects).
    :param crc32c: base64 CRC32C.
    :param metadata: custom metadata (``x-goog-meta-*``).
    :param updated: last modification time.
    """

    bucket: str
    name: str
    generation: int
    size: int
    content_type: str | None = None
    md5_hash: str | None = None
    crc32c: str | None = None
    metadata: dict[str, str] = field(default_factory=dict, hash=False)
    updated: datetime | None = None

    @property
    def uri(self) -> str:
        """``gs://bucket/name``."""
        return f"gs://{self.bucket}/{self.name}"

    @classmethod
    def from_blob(cls, blob: storage.Blob) -> ObjectInfo:
        """Build from a ``google.cloud.storage.Blob`` whose properties are loaded."""
        return cls(
            bucket=blob.bucket.name,
            name=blob.name,
            generation=int(blob.generation or 0),
            size=int(blob.size or 0),
            content_type=blob.content_type,
            md5_hash=blob.md5_hash,
            crc32c=blob.crc32c,
            metadata=dict(blob.metadata or {}),
            updated=blob.updated,
        )

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> ObjectInfo:
        """Build from a JSON API object resource (``storage#object``)."""
        updated_raw = resource.get("updated")
        updated = None
        if updated_raw:
            updated = datetime.fromisoformat(str(updated_raw).replace("Z", "+00:00"))
        return cls(
            bucket=str(resource["bucket"]),
            name=str(resource["name"]),
            generation=int(resource.get("generation") or 0),
            size=int(resource.get("size") or 0),
            content_type=resource.get("contentType"),
            md5_hash=resource.get("md5Hash"),
            crc32c=resource.get("crc32c"),
            metadata={str(k): str(v) for k, v in (resource.get("metadata") or {}).items()},
            updated=updated,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for manifests and XCom)."""
        return {
            "uri": self.uri,
            "bucket": self.bucket,
            "name": self.name,
            "generation": self.generation,
            "size": self.size,
            "content_type": self.content_type,
            "md5_hash": self.md5_hash,
            "crc32c": self.crc32c,
            "metadata": dict(self.metadata),
            "updated": self.updated.isoformat() if self.updated else None,
        }


# --------------------------------------------------------------------------------------------- patterns
def _as_patterns(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    return tuple(p for p in (v.strip() for v in value) if p)


class ObjectFilter:
    """
    Include/exclude glob patterns for object names.

    A pattern is an :mod:`fnmatch` glob (``*``, ``?``, ``[seq]``; ``*`` also crosses ``/``). It is
    tried against two forms of each name and matches if either matches:

    * the name **relative to the listing prefix** (``2026/11/sub/a.jpg`` under prefix ``2026/11/`` →
      ``sub/a.jpg``), so ``sub/*`` selects a sub-folder;
    * the **basename** (``a.jpg``), so ``*.jpg`` or ``IMG_*`` select files wherever they are.

    Matching is case-insensitive by default (``*.jpg`` matches ``A.JPG``). An object is kept when it
    matches at least one include pattern (or there are none) and no exclude pattern.

    :param include: pattern or patterns to keep; ``None``/empty keeps everything.
    :param exclude: pattern or patterns to drop (wins over ``include``).
    :param case_sensitive: match case exactly.
    """

    def __init__(
        self,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        *,
        case_sensitive: bool = False,
    ) -> None:
        self.case_sensitive = case_sensitive
        self.include = _as_patterns(include)
        self.exclude = _as_patterns(exclude)
        fold: Callable[[str], str] = (lambda s: s) if case_sensitive else str.casefold
        self._fold = fold
        self._include = tuple(fold(p) for p in self.include)
        self._exclude = tuple(fold(p) for p in self.exclude)

    def __repr__(self) -> str:
        return f"ObjectFilter(include={self.include!r}, exclude={self.exclude!r})"

    @property
    def is_noop(self) -> bool:
        """True when the filter keeps every name."""
        return not self._include and not self._exclude

    def matches(self, name: str, prefix: str = "") -> bool:
        """
        Whether ``name`` passes the filter.

        :param name: full object name.
        :param prefix: the listing prefix that ``name`` is relative to.
        """
        if self.is_noop:
            return True
        relative = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        relative = relative.lstrip("/")
        candidates = {self._fold(relative), self._fold(relative.rsplit("/", 1)[-1])}
        if self._include and not any(fnmatch.fnmatchcase(c, p) for p in self._include for c in candidates):
            return False
        return not any(fnmatch.fnmatchcase(c, p) for p in self._exclude for c in candidates)


# --------------------------------------------------------------------------------------------- errors
def _is_transient(exc: BaseException) -> bool:
    import requests
    import urllib3
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, api_exceptions.RetryError):
        return True
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS
    if isinstance(exc, auth_exceptions.TransportError):
        return True
    return isinstance(
        exc,
        ConnectionError
        | TimeoutError
        | requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError
        | urllib3.exceptions.HTTPError,
    )


#: What :func:`_translate` says after ``<action> gs://bucket/name`` on a checksum mismatch.
_CORRUPTED = ": checksum mismatch, the data was corrupted in transit"


def _translate(exc: Exception, action: str, bucket: str, name: str | None) -> StorageError:
    """Map a google/requests exception to the storage layer's errors (the original stays ``__cause__``)."""
    from google.api_core import exceptions as api_exceptions
    from google.cloud.storage.exceptions import DataCorruption

    if isinstance(exc, StorageError):
        return exc
    error: type[StorageError] = StorageError
    outcome = f" failed: {_named(exc)}"
    if isinstance(exc, api_exceptions.RetryError):
        cause = exc.cause if exc.cause is not None else exc
        error = StorageUnavailableError
        outcome = f" failed: GCS stayed unavailable until the retry deadline ({_named(cause)})"
    elif _is_transient(exc):
        error = StorageUnavailableError
    elif isinstance(exc, api_exceptions.Unauthorized | api_exceptions.Forbidden):
        error = StoragePermissionError
        outcome = f" refused ({exc.code}): the credentials lack permission; {_short(exc)}"
    elif isinstance(exc, api_exceptions.NotFound):
        error, outcome = ObjectNotFoundError, f": not found ({_short(exc)})"
    elif isinstance(exc, DataCorruption):
        error, outcome = DataCorruptionError, _CORRUPTED
    where = f"gs://{bucket}/{name}" if name is not None else f"gs://{bucket}"
    return error(f"{action} {where}{outcome}", bucket=bucket, name=name)


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------- storage
class GcsStorage:
    """
    Thread-safe access to GCS buckets with the provider's safety rules.

    One ``google.cloud.storage.Client`` is created on first use and shared by all threads.

    :param gcp_conn_id: Airflow connection of type ``google_cloud_platform`` (providers-google's
        extras ``project``, ``key_path``, ``keyfile_dict``, ``scope`` are honoured); ``None`` uses
        Application Default Credentials. Ignored for credentials when ``STORAGE_EMULATOR_HOST`` is set.
    :param project: project id for the client; default: the connection's ``project``, the key's or
        ADC's project (``"emulator"`` for an emulator).
    :param scopes: OAuth scopes; default: the connection's ``scope`` extra, else
        ``devstorage.read_write``.
    :param retry: retry policy for idempotent calls and conditional writes (a
        ``google.api_core.retry.Retry``); ``None`` disables retries. Default: GCS's ``DEFAULT_RETRY``.
    :param timeout: per-request timeout in seconds (or ``(connect, read)``).
    :param max_pool_connections: HTTP connections kept per host (use at least the number of threads).
    :param trust_env: whether the HTTP session reads proxy, CA-bundle and netrc settings from the
        environment on every request; ``None`` (default): only when a proxy applies to the GCS endpoint.
        A ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` bundle is honoured either way (module docstring).
    :param client: a ready ``storage.Client`` to use instead of resolving credentials (tests, the demo).
    """

    def __init__(
        self,
        gcp_conn_id: str | None = DEFAULT_GCP_CONN_ID,
        *,
        project: str | None = None,
        scopes: Sequence[str] | None = None,
        retry: Retry | _Unset | None = _UNSET,
        timeout: float | tuple[float, float] = 60.0,
        max_pool_connections: int = 32,
        trust_env: bool | None = None,
        client: storage.Client | None = None,
    ) -> None:
        self.gcp_conn_id = gcp_conn_id
        self.project = project
        self.scopes = tuple(scopes) if scopes else None
        self.retry: Retry | None
        if isinstance(retry, _Unset):
            from google.cloud.storage.retry import DEFAULT_RETRY

            self.retry = DEFAULT_RETRY
        else:
            self.retry = retry
        self.timeout = timeout
        self.max_pool_connections = max_pool_connections
        self.trust_env = trust_env
        self._client = client
        self._client_injected = client is not None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GcsStorage(gcp_conn_id={self.gcp_conn_id!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Operators are deep-copied and pickled by Airflow: never carry a live client or a lock.
        state = self.__dict__.copy()
        state.pop("_lock", None)
        if not self._client_injected:
            state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ client
    @property
    def client(self) -> storage.Client:
        """The shared ``storage.Client`` (created on first access)."""
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    client = self._client = self._make_client()
        return client

    def _make_client(self) -> storage.Client:
        import requests.adapters
        from google.api_core.client_info import ClientInfo
        from google.auth.credentials import AnonymousCredentials
        from google.auth.transport.requests import AuthorizedSession
        from google.cloud import storage

        resolved = resolve_gcs_credentials(self.gcp_conn_id, scopes=self.scopes)
        # An explicit session so the connection pool fits the pipeline's thread count.
        session = AuthorizedSession(
            resolved.credentials if resolved.credentials is not None else AnonymousCredentials()  # type: ignore[no-untyped-call]
        )
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=self.max_pool_connections, pool_maxsize=self.max_pool_connections
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        client = storage.Client(
            project=self.project or resolved.project,
            credentials=resolved.credentials,
            client_info=ClientInfo(user_agent=provider_user_agent()),  # type: ignore[no-untyped-call]
            _http=session,
        )
        _configure_environment_lookups(session, client.api_endpoint, self.trust_env)
        log.debug("GCS client ready (credentials: %s, project: %s)", resolved.source, client.project)
        return client

    def _retry(self, retry: Retry | _Unset | None) -> Retry | None:
        return self.retry if isinstance(retry, _Unset) else retry

    def _timeout(self, timeout: float | tuple[float, float] | None) -> float | tuple[float, float]:
        return self.timeout if timeout is None else timeout

    # ------------------------------------------------------------------ listing
    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        case_sensitive: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
        retry: Retry | _Unset | None = _UNSET,
        timeout: float | tuple[float, float] | None = None,
    ) -> Iterator[ObjectInfo]:
        """
        Yield the objects under ``prefix`` in name order, one page at a time (lazily).

        Only one page (``page_size`` objects) is held at a time, so a prefix of 100,000 objects streams.
        "Folder" placeholder objects (names ending in ``/``) are skipped. See :class:`ObjectFilter`
        for the pattern rules (relative name *or* basename; case-insensitive by default).

        :param bucket: bucket name.
        :param prefix: name prefix (``""`` for the whole bucket); include the trailing ``/`` for a folder.
        :param include: glob pattern(s) to keep, e.g. ``"*.jpg"`` or ``["*.jpg", "*.png"]``.
        :param exclude: glob pattern(s) to drop, e.g. ``"thumbs/*"``.
        :param case_sensitive: match patterns case-sensitively.
        :param page_size: objects per list request (GCS allows at most 1000).
        :param retry: retry policy for each page request (default: the instance's).
        :param timeout: per-request timeout (default: the instance's).
        :raises ObjectNotFoundError: the bucket does not exist.
        """
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        object_filter = ObjectFilter(include, exclude, case_sensitive=case_sensitive)
        return self._iter_objects(bucket, prefix, object_filter, page_size, self._retry(retry), timeout)

    def _iter_objects(
        self,
        bucket: str,
        prefix: str,
        object_filter: ObjectFilter,
        page_size: int,
        retry: Retry | None,
        timeout: float | tuple[float, float] | None,
    ) -> Iterator[ObjectInfo]:
        iterator = self.client.list_blobs(
            bucket,
            prefix=prefix or None,
            page_size=min(page_size, 1000),
            fields=_LIST_FIELDS,
            retry=retry,
            timeout=self._timeout(timeout),
        )
        seen = kept = 0
        try:
            for blob in iterator:
                seen += 1
                if blob.name.endswith("/"):
                    continue
                if not object_filter.matches(blob.name, prefix):
                    continue
                kept += 1
                yield ObjectInfo.from_blob(blob)
        except Exception as exc:
            raise _translate(exc, "listing", bucket, prefix or None) from exc
        log.debug("listed gs://%s/%s: %d objects, %d kept by %r", bucket, prefix, seen, kept, object_filter)

    # ------------------------------------------------------------------ metadata
    def stat(
        self,
        bucket: str,
        name: str,
        *,
        generation: int | None = None,
        retry: Retry | _Unset | None = _UNSET,
        timeout: float | tuple[float, float] | None = None,
    ) -> ObjectInfo | None:
        """
        The object's metadata, or ``None`` when it (or that generation, or the bucket) does not exist.

        :param bucket: bucket name.
        :param name: object name.
        :param generation: a specific generation (default: the live one).
        :param retry: retry policy (default: the instance's).
        :param timeout: per-request timeout (default: the instance's).
        """
        try:
            blob = self.client.bucket(bucket).get_blob(
                name, generation=generation, retry=self._retry(retry), timeout=self._timeout(timeout)
            )
        except Exception as exc:
            raise _translate(exc, "reading metadata of", bucket, name) from exc
        return ObjectInfo.from_blob(blob) if blob is not None else None

    # ------------------------------------------------------------------ reads
    def read(
        self,
        bucket: str,
        name: str,
        *,
        generation: int | None = None,
        max_bytes: int | None = None,
        retry: Retry | _Unset | None = _UNSET,
        timeout: float | tuple[float, float] | None = None,
    ) -> bytes:
        """
        Download an object, checksum-verified.

        :param bucket: bucket name.
        :param name: object name.
        :param generation: the generation that was planned. If the object has been replaced or deleted
            since, :class:`ObjectChangedError` is raised instead of silently reading other bytes.
        :param max_bytes: refuse objects larger than this. The download asks for at most
            ``max_bytes + 1`` bytes, so an oversized object is never downloaded in full.
        :param retry: retry policy (default: the instance's).
        :param timeout: per-request timeout (default: the instance's).
        :raises ObjectNotFoundError: the object does not exist.
        :raises ObjectChangedError: the pinned generation no longer exists.
        :raises ObjectTooLargeError: the object is larger than ``max_bytes``.
        :raises DataCorruptionError: the bytes do not match the object's checksum.
        """
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        # With a cap, at most max_bytes + 1 bytes (the range end is inclusive).
        data, crc32c = self._download(bucket, name, generation, max_bytes, retry, timeout)
        if max_bytes is None:
            return data  # checksum-verified by the library
        if len(data) > max_bytes:
            raise ObjectTooLargeError(
                f"gs://{bucket}/{name} is larger than the {max_bytes}-byte limit",
                bucket=bucket,
                name=name,
                max_bytes=max_bytes,
                size=None,
            )
        # The whole object arrived; the response headers carried its CRC32C (x-goog-hash).
        if crc32c and crc32c_b64(data) != crc32c:
            raise DataCorruptionError(f"reading gs://{bucket}/{name}{_CORRUPTED}", bucket=bucket, name=name)
        return data

    def read_head(
        self,
        bucket: str,
        name: str,
        nbytes: int,
        *,
        generation: int | None = None,
        retry: Retry | _Unset | None = _UNSET,
        timeout: float | tuple[float, float] | None = None,
    ) -> bytes:
        """
        The first ``nbytes`` bytes of an object (fewer if it is shorter), for header-only checks.

        :param bucket: bucket name.
        :param name: object name.
        :param nbytes: how many bytes to read (> 0).
        :param generation: the generation that was planned (see :meth:`read`).
        :param retry: retry policy (default: the instance's).
        :param timeout: per-request timeout (default: the instance's).
        :raises ObjectNotFoundError: the object does not exist.
        :raises ObjectChangedError: the pinned generation no longer exists.
        """
        if nbytes <= 0:
            raise ValueError("nbytes must be positive")
        data, _ = self._download(bucket, name, generation, nbytes - 1, retry, timeout)
        return data[:nbytes]

    def _download(
        self,
        bucket: str,
        name: str,
        generation: int | None,
        last_byte: int | None,
        retry: Retry | _Unset | None,
        timeout: float | tuple[float, float] | None,
    ) -> tuple[bytes, str | None]:
        """
        Bytes ``0..last_byte`` (inclusive; the whole object, checksum-verified, when ``None``) and the
        object's CRC32C from the response headers.
        """
        from google.api_core.exceptions import NotFound, RequestRangeNotSatisfiable

        blob = self.client.bucket(bucket).blob(name, generation=generation)
        ranged = last_byte is not None
        try:
            data: bytes = blob.download_as_bytes(
                start=0 if ranged else None,
                end=last_byte,
                checksum=None if ranged else "auto",  # the library skips checksums on ranges
                retry=self._retry(retry),
                timeout=self._timeout(timeout),
            )
        except RequestRangeNotSatisfiable:
            return b"", None  # an empty object has no byte 0
        except NotFound as exc:
            raise self._missing(bucket, name, generation) from exc
        except Exception as exc:
            raise _translate(exc, "reading", bucket, name) from exc
        return data, blob.crc32c

    def _missing(self, bucket: str, name: str, generation: int | None) -> StorageError:
        uri = f"gs://{bucket}/{name}"
        if generation is None:
            return ObjectNotFoundError(
                f"{uri} does not exist (or its bucket does not)", bucket=bucket, name=name
            )
        current = self.stat(bucket, name)
        if current is None:
            message = (
                f"{uri} generation {generation} no longer exists: the object was deleted after it was listed"
            )
        else:
            message = (
                f"{uri} generation {generation} no longer exists: the object was replaced after it was "
                f"listed (now generation {current.generation}); list again to process the new version"
            )
        return ObjectChangedError(
            message,
            bucket=bucket,
            name=name,
            expected_generation=generation,
            current_generation=current.generation if current is not None else None,
        )

    # ------------------------------------------------------------------ writes
    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        if_generation_match: int | None = 0,
        idempotency_token: str | None = None,
        retry: Retry | _Unset | None = _UNSET,
        timeout: float | tuple[float, float] | None = None,
    ) -> ObjectInfo:
        """
        Upload ``data`` as one object, atomically; create-only by default.

        :param bucket: bucket name.
        :param name: object name.
        :param data: the object's bytes.
        :param content_type: MIME type to store.
        :param metadata: custom metadata (string keys and values).
        :param if_generation_match: ``0`` (default): create only, fail if the object exists; an int
            generation: replace only that generation; ``None``: unconditional overwrite (use only when the
            user asked to overwrite; never retried, see the module docstring).
        :param idempotency_token: an id of this logical write, stored in the metadata under
            :data:`WRITE_TOKEN_METADATA_KEY`. On a 412, an object carrying the same token and our bytes
            is taken as this write having succeeded (a lost reply, or a task retry repeating it).
        :param retry: retry policy for conditional writes (default: the instance's); ignored (no retry)
            when ``if_generation_match`` is ``None``.
        :param timeout: per-request timeout (default: the instance's).
        :returns: the written object's metadata (or the already-present object that is provably ours).
        :raises ObjectExistsError: create-only write and the object exists (and is not ours).
        :raises WriteConflictError: generation-matched write and the live generation differs.
        :raises StorageUnavailableError: transient failures outlasted the retry policy.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        payload = bytes(data)
        meta = self._metadata(metadata, idempotency_token)
        crc, md5 = crc32c_b64(payload), md5_b64(payload)

        effective_retry = None if if_generation_match is None else self._retry(retry)
        attempts = 0

        def attempt() -> storage.Blob:
            nonlocal attempts
            attempts += 1
            blob = self.client.bucket(bucket).blob(name)
            blob.metadata = meta or None
            blob.upload_from_string(
                payload,
                content_type=content_type,
                if_generation_match=if_generation_match,
                checksum="crc32c",  # multipart: sent with the body, checked by the server
                crc32c_checksum_value=crc,  # resumable (> 8 MiB): sent first, checked when finalising
                retry=None,  # retried here, so that write() knows whether an attempt may have landed
                timeout=self._timeout(timeout),
            )
            return blob

        from google.api_core.exceptions import PreconditionFailed

        try:
            blob = effective_retry(attempt)() if effective_retry is not None else attempt()
        except PreconditionFailed as exc:
            assert if_generation_match is not None  # 412 needs a precondition
            return self._on_precondition_failed(
                bucket, name, if_generation_match, crc, md5, meta, idempotency_token, attempts, exc
            )
        except Exception as exc:
            raise _translate(exc, "writing", bucket, name) from exc
        info = ObjectInfo.from_blob(blob)
        log.debug(
            "wrote %s generation %s (%d bytes, %d attempt(s))", info.uri, info.generation, info.size, attempts
        )
        return info

    @staticmethod
    def _metadata(metadata: Mapping[str, str] | None, token: str | None) -> dict[str, str]:
        meta: dict[str, str] = {}
        for key, value in (metadata or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata keys and values must be str; got {key!r}: {type(value).__name__}")
            meta[key] = value
        if token is not None:
            if meta.get(WRITE_TOKEN_METADATA_KEY, token) != token:
                raise ValueError(
                    f"metadata key {WRITE_TOKEN_METADATA_KEY!r} is reserved for idempotency_token"
                )
            meta[WRITE_TOKEN_METADATA_KEY] = token
        return meta

    def _on_precondition_failed(
        self,
        bucket: str,
        name: str,
        expected: int,
        crc: str,
        md5: str,
        meta: Mapping[str, str],
        token: str | None,
        attempts: int,
        exc: Exception,
    ) -> ObjectInfo:
        uri = f"gs://{bucket}/{name}"
        existing = self.stat(bucket, name)
        if existing is not None and _is_our_write(existing, crc, md5, meta, token, retried=attempts > 1):
            log.info(
                "%s: precondition failed on attempt %d but the object (generation %s) is this write's "
                "result (%s); treating the write as done",
                uri,
                attempts,
                existing.generation,
                "same idempotency token" if token is not None else "an earlier attempt's reply was lost",
            )
            return existing
        current = existing.generation if existing is not None else None
        if expected == 0:
            raise ObjectExistsError(
                f"{uri} already exists (generation {current}); create-only write refused",
                bucket=bucket,
                name=name,
                expected_generation=0,
                current_generation=current,
            ) from exc
        state = f"is now generation {current}" if current is not None else "no longer exists"
        raise WriteConflictError(
            f"{uri} {state}, not the expected generation {expected}; write refused",
            bucket=bucket,
            name=name,
            expected_generation=expected,
            current_generation=current,
        ) from exc


def _is_our_write(
    existing: ObjectInfo,
    crc: str,
    md5: str,
    meta: Mapping[str, str],
    token: str | None,
    *,
    retried: bool,
) -> bool:
    """Whether the object found after a 412 is provably the result of this write (module docstring)."""
    if existing.crc32c != crc:
        return False
    if existing.md5_hash is not None and existing.md5_hash != md5:
        return False
    if token is not None:
        return existing.metadata.get(WRITE_TOKEN_METADATA_KEY) == token
    if not retried:
        return False
    return all(existing.metadata.get(k) == v for k, v in meta.items())
