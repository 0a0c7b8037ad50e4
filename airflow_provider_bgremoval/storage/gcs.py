"""GCS listing, checksum-verified reads and create-only writes through one shared client (docs/storage.md)."""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import EllipsisType
from typing import TYPE_CHECKING, Any

from airflow_provider_bgremoval import USER_AGENT
from airflow_provider_bgremoval.exceptions import redact_query, safe_excerpt
from airflow_provider_bgremoval.storage import exceptions as errors
from airflow_provider_bgremoval.storage.credentials import DEFAULT_GCP_CONN_ID, resolve_gcs_credentials

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud import storage

log = logging.getLogger(__name__)

#: Custom-metadata key that carries a write's idempotency token.
WRITE_TOKEN_METADATA_KEY = "bgremoval-write-token"
JSON_LINES_CONTENT_TYPE = "application/x-ndjson"
#: What a listing returns per object; not ``updated``, which nothing decides on (``stat`` returns it).
_LIST_FIELDS = "items(name,bucket,generation,size,contentType,md5Hash,crc32c,metadata),nextPageToken"
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def crc32c_b64(data: bytes) -> str:
    """CRC32C of ``data`` in GCS's notation (base64 of the big-endian 32-bit value)."""
    import google_crc32c

    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode("ascii")


def md5_b64(data: bytes) -> str:
    """MD5 of ``data`` in GCS's notation (base64 of the digest)."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _proxy_applies(endpoint: str) -> bool:
    """Whether the environment configures a proxy that ``requests`` would apply to ``endpoint``."""
    from requests.utils import get_environ_proxies

    return any(key != "no" for key in get_environ_proxies(endpoint))  # "no" is NO_PROXY itself


#: google-cloud-storage's switch for its background bucket-metadata reads (docs/storage.md).
BUCKET_METADATA_SWITCH = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"
_TRACES_SWITCH = "ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES"
_TRUE = frozenset({"1", "true", "yes", "on"})  # the library's reading of its switches


def skip_bucket_metadata_reads() -> bool:
    """
    Turn off google-cloud-storage's background ``buckets.get`` per bucket and client (a trace-span
    attribute, read even with its tracing off) unless the environment sets the switch or the tracing.

    :returns: whether this call set the switch.
    """
    tracing = os.environ.get(_TRACES_SWITCH, "").strip().lower() in _TRUE
    if tracing or BUCKET_METADATA_SWITCH in os.environ:
        return False
    os.environ[BUCKET_METADATA_SWITCH] = "true"
    log.debug("set %s=true for this process (docs/storage.md)", BUCKET_METADATA_SWITCH)
    return True


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
    :param updated: last modification time (``None`` from a listing; not part of equality).
    """

    bucket: str
    name: str
    generation: int
    size: int
    content_type: str | None = None
    md5_hash: str | None = None
    crc32c: str | None = None
    metadata: dict[str, str] = field(default_factory=dict, hash=False)
    updated: datetime | None = field(default=None, compare=False)  # listings leave it out

    @property
    def uri(self) -> str:
        """``gs://bucket/name``."""
        return errors.gs_uri(self.bucket, self.name)

    @classmethod
    def from_blob(cls, blob: storage.Blob, *, updated: bool = True) -> ObjectInfo:
        """
        Build from a ``google.cloud.storage.Blob`` whose properties are loaded.

        :param blob: the blob.
        :param updated: read the modification time (listings don't: parsing it cost a third of planning).
        """
        return cls(
            bucket=blob.bucket.name,
            name=blob.name,
            generation=int(blob.generation or 0),
            size=int(blob.size or 0),
            content_type=blob.content_type,
            md5_hash=blob.md5_hash,
            crc32c=blob.crc32c,
            metadata=dict(blob.metadata or {}),
            updated=blob.updated if updated else None,
        )


def _as_patterns(value: str | Sequence[str] | None) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value or ()
    return tuple(v.strip() for v in values if v.strip())


class ObjectFilter:
    """
    Include/exclude :mod:`fnmatch` globs for object names, matched as docs/storage.md describes.

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
        self.include = _as_patterns(include)
        self.exclude = _as_patterns(exclude)
        self._fold: Callable[[str], str] = (lambda s: s) if case_sensitive else str.casefold
        self._include = tuple(map(self._fold, self.include))
        self._exclude = tuple(map(self._fold, self.exclude))

    def __repr__(self) -> str:
        return f"ObjectFilter(include={self.include!r}, exclude={self.exclude!r})"

    def matches(self, name: str, prefix: str = "") -> bool:
        """
        Whether ``name`` passes the filter.

        :param name: full object name.
        :param prefix: the listing prefix that ``name`` is relative to.
        """
        relative = (name[len(prefix) :] if prefix and name.startswith(prefix) else name).lstrip("/")
        candidates = {self._fold(relative), self._fold(relative.rsplit("/", 1)[-1])}
        if self._include and not any(fnmatch.fnmatchcase(c, p) for p in self._include for c in candidates):
            return False
        return not any(fnmatch.fnmatchcase(c, p) for p in self._exclude for c in candidates)


#: What :func:`_translate` says after ``<action> gs://bucket/name`` on a checksum mismatch.
_CORRUPTED = ": checksum mismatch, the data was corrupted in transit"


def _translate(exc: Exception, action: str, bucket: str, name: str | None) -> errors.StorageError:
    """Map a google/requests exception to the storage layer's errors (the original stays ``__cause__``)."""
    import http.client

    import requests
    import urllib3
    from google.api_core import exceptions as api_exceptions
    from google.auth.exceptions import RefreshError, TransportError
    from google.cloud.storage.exceptions import DataCorruption

    if isinstance(exc, errors.StorageError):
        return exc
    redact_chain(exc)  # it becomes the error's __cause__, printed with its traceback
    error: type[errors.StorageError] = errors.StorageError
    outcome = f" failed: {_named(exc)}"
    if isinstance(exc, api_exceptions.RetryError):
        cause = exc.cause if exc.cause is not None else exc
        error = errors.StorageUnavailableError
        outcome = f" failed: GCS stayed unavailable until the retry deadline ({_named(cause)})"
    elif isinstance(exc, RefreshError):  # no access token: google-auth already retried what it could
        error = errors.StorageUnavailableError if exc.retryable else errors.StoragePermissionError
        outcome = f" failed: the credentials could not get an access token ({_named(exc)})"
    elif (isinstance(exc, api_exceptions.GoogleAPICallError) and exc.code in _TRANSIENT_STATUS) or isinstance(
        exc,
        TransportError
        | ConnectionError
        | TimeoutError
        | http.client.HTTPException  # IncompleteRead, BadStatusLine: retryable for the library too
        | requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError
        | urllib3.exceptions.HTTPError,
    ):
        error = errors.StorageUnavailableError
    elif isinstance(exc, api_exceptions.Unauthorized | api_exceptions.Forbidden):
        error = errors.StoragePermissionError
        outcome = f" refused ({exc.code}): the credentials lack permission; {safe_excerpt(str(exc), 300)}"
    elif isinstance(exc, api_exceptions.NotFound):
        error, outcome = errors.ObjectNotFoundError, f": not found ({safe_excerpt(str(exc), 300)})"
    elif isinstance(exc, DataCorruption):
        error, outcome = errors.DataCorruptionError, _CORRUPTED
    # a resumable upload's session URI (its upload_id lets anyone holding it write the object) or a
    # signed URL may be quoted by the library's exception: its query values never reach a message
    return error(f"{action} {errors.gs_uri(bucket, name)}{redact_query(outcome)}", bucket=bucket, name=name)


def redact_chain(exc: BaseException) -> None:
    """
    Redact URL query values (:func:`.redact_query`) in the texts of ``exc`` and of the exceptions it
    carries (arguments, cause, context, a ``RetryError``'s cause, urllib3's ``reason``), in place: a
    google-cloud exception quoting a resumable session's URL, whose ``upload_id`` lets anyone holding it
    write the object, is kept as a storage error's ``__cause__`` and printed with its traceback.

    :param exc: the exception about to be chained.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.args = tuple(redact_query(a) if isinstance(a, str) else a for a in current.args)
        message = getattr(current, "message", None)
        if isinstance(message, str):  # google-api-core's errors print their ``message``
            with contextlib.suppress(AttributeError):
                setattr(current, "message", redact_query(message))  # noqa: B010 (any exception type)
        carried = (*current.args, current.__cause__, current.__context__)
        carried += (getattr(current, "cause", None), getattr(current, "reason", None))
        pending.extend(item for item in carried if isinstance(item, BaseException))


def _default_retry() -> Retry:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {safe_excerpt(str(exc), 300)}"


class GcsStorage:
    """
    Thread-safe access to GCS buckets with the provider's safety rules (docs/storage.md).

    :param gcp_conn_id: a ``google_cloud_platform`` connection; ``None``: Application Default Credentials.
    :param project: project id for the client; default: the connection's, the key's or ADC's.
    :param scopes: OAuth scopes; default: the connection's ``scope`` extra, else ``devstorage.read_write``.
    :param retry: retry policy for idempotent calls and conditional writes; ``None``: no retries.
    :param timeout: per-request timeout in seconds (or ``(connect, read)``).
    :param max_pool_connections: HTTP connections kept per host (at least the number of threads).
    :param trust_env: read proxy/CA/netrc settings from the environment; ``None``: only if a proxy applies.
    :param client: a ready ``storage.Client`` instead of resolving credentials (tests, the demo).
    """

    def __init__(
        self,
        gcp_conn_id: str | None = DEFAULT_GCP_CONN_ID,
        *,
        project: str | None = None,
        scopes: Sequence[str] | None = None,
        retry: Retry | EllipsisType | None = ...,
        timeout: float | tuple[float, float] = 60.0,
        max_pool_connections: int = 32,
        trust_env: bool | None = None,
        client: storage.Client | None = None,
    ) -> None:
        self.gcp_conn_id = gcp_conn_id
        self.project = project
        self.scopes = tuple(scopes) if scopes else None
        self.retry = _default_retry() if isinstance(retry, EllipsisType) else retry
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

    @property
    def client(self) -> storage.Client:
        """The shared ``storage.Client`` (created on first access)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> storage.Client:
        import requests.adapters
        from google.api_core.client_info import ClientInfo
        from google.auth.credentials import AnonymousCredentials
        from google.auth.transport.requests import AuthorizedSession
        from google.cloud import storage

        skip_bucket_metadata_reads()
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
            client_info=ClientInfo(user_agent=USER_AGENT),  # type: ignore[no-untyped-call]
            _http=session,
        )
        # Environment lookups are decided once; a CA bundle from the environment is kept either way.
        session.trust_env = _proxy_applies(client.api_endpoint) if self.trust_env is None else self.trust_env
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca_bundle:
            session.verify = ca_bundle
        log.debug("GCS client ready (credentials: %s, project: %s)", resolved.source, client.project)
        return client

    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        case_sensitive: bool = False,
        page_size: int = 1000,
        start_offset: str | None = None,
        end_offset: str | None = None,
    ) -> Iterator[ObjectInfo]:
        """
        Yield the objects under ``prefix`` in name order, lazily; "folder" placeholders are skipped.

        :param bucket: bucket name.
        :param prefix: name prefix (``""``: the whole bucket; a folder ends with ``/``).
        :param include: :class:`ObjectFilter` pattern(s) to keep, e.g. ``"*.jpg"``.
        :param exclude: pattern(s) to drop, e.g. ``"thumbs/*"``.
        :param case_sensitive: match patterns case-sensitively.
        :param page_size: objects per list request (at most 1000).
        :param start_offset: only names ``>=`` this (a name range: one request per 1,000 names in it).
        :param end_offset: only names ``<`` this.
        """
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        object_filter = ObjectFilter(include, exclude, case_sensitive=case_sensitive)

        def objects() -> Iterator[ObjectInfo]:  # lazy: nothing is asked before the first object is
            iterator = self.client.list_blobs(
                bucket,
                prefix=prefix or None,
                start_offset=start_offset,
                end_offset=end_offset,
                page_size=min(page_size, 1000),
                fields=_LIST_FIELDS,
                retry=self.retry,
                timeout=self.timeout,
            )
            seen = kept = 0
            try:
                for blob in iterator:
                    seen += 1
                    if not blob.name.endswith("/") and object_filter.matches(blob.name, prefix):
                        kept += 1
                        yield ObjectInfo.from_blob(blob, updated=False)
            except Exception as exc:
                raise _translate(exc, "listing", bucket, prefix or None) from exc
            log.debug(
                "listed gs://%s/%s: %d objects, %d kept by %r", bucket, prefix, seen, kept, object_filter
            )

        return objects()

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        """
        The live object's metadata, or ``None`` when it (or the bucket) does not exist.

        :param bucket: bucket name.
        :param name: object name.
        """
        try:
            blob = self.client.bucket(bucket).get_blob(name, retry=self.retry, timeout=self.timeout)
        except Exception as exc:
            raise _translate(exc, "reading metadata of", bucket, name) from exc
        return ObjectInfo.from_blob(blob) if blob is not None else None

    def read(
        self, bucket: str, name: str, *, generation: int | None = None, max_bytes: int | None = None
    ) -> bytes:
        """
        Download an object, checksum-verified (:class:`DataCorruptionError` on a mismatch).

        :param bucket: bucket name.
        :param name: object name.
        :param generation: the generation that was planned; :class:`ObjectChangedError` if it is gone.
        :param max_bytes: :class:`ObjectTooLargeError` above this (at most ``max_bytes + 1`` bytes are read).
        """
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        data, crc32c = self._download(bucket, name, generation, max_bytes)
        if max_bytes is None:
            return data  # checksum-verified by the library
        if len(data) > max_bytes:
            message = f"{errors.gs_uri(bucket, name)} is larger than the {max_bytes}-byte limit"
            raise errors.ObjectTooLargeError(
                message, bucket=bucket, name=name, max_bytes=max_bytes, size=None
            )
        # The whole object arrived; the response headers carried its CRC32C (x-goog-hash).
        if crc32c and crc32c_b64(data) != crc32c:
            raise errors.DataCorruptionError(
                f"reading {errors.gs_uri(bucket, name)}{_CORRUPTED}", bucket=bucket, name=name
            )
        return data

    def read_head(self, bucket: str, name: str, nbytes: int, *, generation: int | None = None) -> bytes:
        """
        The first ``nbytes`` bytes of an object (fewer if it is shorter), for header-only checks.

        :param bucket: bucket name.
        :param name: object name.
        :param nbytes: how many bytes to read (> 0).
        :param generation: the generation that was planned (as in :meth:`read`).
        """
        if nbytes <= 0:
            raise ValueError("nbytes must be positive")
        return self._download(bucket, name, generation, nbytes - 1)[0][:nbytes]

    def _download(
        self, bucket: str, name: str, generation: int | None, last_byte: int | None
    ) -> tuple[bytes, str | None]:
        """Bytes ``0..last_byte`` (all, checksum-verified, when ``None``) and the object's CRC32C."""
        from google.api_core.exceptions import NotFound, RequestRangeNotSatisfiable

        blob = self.client.bucket(bucket).blob(name, generation=generation)
        ranged = last_byte is not None
        try:
            data: bytes = blob.download_as_bytes(
                start=0 if ranged else None,
                end=last_byte,
                checksum=None if ranged else "auto",  # the library skips checksums on ranges
                retry=self.retry,
                timeout=self.timeout,
            )
        except RequestRangeNotSatisfiable:
            return b"", None  # an empty object has no byte 0
        except NotFound as exc:
            raise self._missing(bucket, name, generation) from exc
        except Exception as exc:
            raise _translate(exc, "reading", bucket, name) from exc
        return data, blob.crc32c

    def _missing(self, bucket: str, name: str, generation: int | None) -> errors.StorageError:
        uri = errors.gs_uri(bucket, name)
        if generation is None:
            return errors.ObjectNotFoundError(
                f"{uri} does not exist (or its bucket does not)", bucket=bucket, name=name
            )
        current = self.stat(bucket, name)
        now = current.generation if current is not None else None
        fate = "deleted after it was listed"
        if now is not None:
            fate = (
                f"replaced after it was listed (now generation {now}); list again to process the new version"
            )
        message = f"{uri} generation {generation} no longer exists: the object was {fate}"
        return errors.ObjectChangedError(
            message, bucket=bucket, name=name, expected_generation=generation, current_generation=now
        )

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
    ) -> ObjectInfo:
        """
        Upload ``data`` as one object, atomically; create-only by default.

        :param bucket: bucket name.
        :param name: object name.
        :param data: the object's bytes.
        :param content_type: MIME type to store.
        :param metadata: custom metadata (string keys and values).
        :param if_generation_match: ``0``: create only; a generation: replace only it; ``None``: overwrite.
        :param idempotency_token: an id of this logical write, to recognise it after a 412 (docs/storage.md).
        :returns: the written object's metadata (or the present object that is provably ours).
        :raises WriteConflictError: the precondition failed (:class:`ObjectExistsError` when create-only).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        payload = bytes(data)
        meta = self._metadata(metadata, idempotency_token)
        crc, md5 = crc32c_b64(payload), md5_b64(payload)
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
                timeout=self.timeout,
            )
            return blob

        from google.api_core.exceptions import PreconditionFailed

        retry = self.retry if if_generation_match is not None else None
        try:
            blob = retry(attempt)() if retry is not None else attempt()
        except PreconditionFailed as exc:
            assert if_generation_match is not None  # 412 needs a precondition
            existing = self.stat(bucket, name)
            token = idempotency_token
            if existing is not None and _is_our_write(existing, crc, md5, meta, token, retried=attempts > 1):
                why = "same idempotency token" if token is not None else "an earlier attempt's reply was lost"
                log.info(
                    "%s: precondition failed on attempt %d but generation %s is this write's result (%s)",
                    existing.uri,
                    attempts,
                    existing.generation,
                    why,
                )
                return existing
            redact_chain(exc)  # a resumable upload's 412 quotes its session URL
            raise _conflict(bucket, name, if_generation_match, existing) from exc
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


def _conflict(
    bucket: str, name: str, expected: int, existing: ObjectInfo | None
) -> errors.WriteConflictError:
    """The error for a failed precondition that was not this write's own earlier attempt."""
    current = existing.generation if existing is not None else None
    if expected == 0:
        state = (
            f"already exists (generation {current})"
            if current is not None
            else "existed when the create-only write was refused (412) and is gone since"
        )
        message = f"{errors.gs_uri(bucket, name)} {state}; create-only write refused"
        error: type[errors.WriteConflictError] = errors.ObjectExistsError
    else:
        state = f"is now generation {current}" if current is not None else "no longer exists"
        message = (
            f"{errors.gs_uri(bucket, name)} {state}, not the expected generation {expected}; write refused"
        )
        error = errors.WriteConflictError
    return error(message, bucket=bucket, name=name, expected_generation=expected, current_generation=current)


def is_our_write(existing: ObjectInfo, data: bytes, token: str) -> bool:
    """
    Whether ``existing`` is provably what a write of ``data`` with ``idempotency_token=token`` stored
    (its checksums and token match; docs/storage.md): a caller whose write raised can tell from a stat
    that it landed anyway.

    :param existing: the object found at the write's name.
    :param data: the bytes the write sent.
    :param token: the write's idempotency token.
    """
    return _is_our_write(existing, crc32c_b64(data), md5_b64(data), {}, token, retried=True)


def _is_our_write(
    existing: ObjectInfo, crc: str, md5: str, meta: Mapping[str, str], token: str | None, *, retried: bool
) -> bool:
    """Whether the object found after a 412 is provably the result of this write (docs/storage.md)."""
    if existing.crc32c != crc or existing.md5_hash not in (None, md5):
        return False
    if token is not None:
        return existing.metadata.get(WRITE_TOKEN_METADATA_KEY) == token
    return retried and all(existing.metadata.get(k) == v for k, v in meta.items())
