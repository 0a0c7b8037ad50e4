"""GcsStorage: patterns, ObjectInfo mapping, error mapping, own-write detection, environment lookups."""

from __future__ import annotations

import copy
import http.client
import json
import os
import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import pytest
import requests
from google.api_core import exceptions as api_exceptions
from google.cloud import storage

from airflow_provider_bgremoval.storage import (
    WRITE_TOKEN_METADATA_KEY,
    GcsStorage,
    ObjectExistsError,
    ObjectFilter,
    ObjectInfo,
    StorageError,
)
from airflow_provider_bgremoval.storage.exceptions import (
    DataCorruptionError,
    ObjectChangedError,
    ObjectNotFoundError,
    StoragePermissionError,
    StorageUnavailableError,
)
from airflow_provider_bgremoval.storage.gcs import (
    BUCKET_METADATA_SWITCH,
    _is_our_write,
    _proxy_applies,
    _translate,
    crc32c_b64,
    md5_b64,
    skip_bucket_metadata_reads,
)


# ----------------------------------------------------------------------------- patterns
@pytest.mark.parametrize(
    ("name", "include", "exclude", "expected"),
    [
        ("2026/11/a.jpg", "*.jpg", None, True),
        ("2026/11/sub/deep/a.jpg", "*.jpg", None, True),
        ("2026/11/A.JPG", "*.jpg", None, True),  # case-insensitive by default
        ("2026/11/a.jpeg", "*.jpg", None, False),
        ("2026/11/a.jpeg", ["*.jpg", "*.jpeg"], None, True),
        ("2026/11/sub/a.jpg", "sub/*", None, True),  # relative to the prefix
        ("2026/11/other/a.jpg", "sub/*", None, False),
        ("2026/11/thumbs/a.jpg", "*.jpg", "thumbs/*", False),  # exclude wins
        ("2026/11/a.jpg", None, "*.png", True),
        ("2026/11/IMG_0001.png", "img_*", None, True),  # basename
        ("2026/11/x/IMG_0001.png", "IMG_????.png", None, True),
        ("2026/11/a.jpg", "2026/*", None, False),  # patterns are relative to the prefix
        ("2026/11/a.jpg", [], [], True),
        ("2026/11/a.jpg", "  ", None, True),  # blank patterns are ignored
    ],
)
def test_object_filter(
    name: str, include: str | list[str] | None, exclude: str | list[str] | None, expected: bool
) -> None:
    assert ObjectFilter(include, exclude).matches(name, "2026/11/") is expected


def test_object_filter_case_sensitive() -> None:
    f = ObjectFilter("*.jpg", case_sensitive=True)
    assert f.matches("a.jpg")
    assert not f.matches("A.JPG")


def test_object_filter_without_prefix_and_prefix_without_slash() -> None:
    assert ObjectFilter("sub/*.jpg").matches("sub/a.jpg")
    assert ObjectFilter("sub/*.jpg").matches("2026/11/sub/a.jpg", "2026/11")  # leading '/' stripped
    assert ObjectFilter().matches("any/name.txt", "any/")  # no patterns: everything is kept
    assert "include=('*.jpg',)" in repr(ObjectFilter("*.jpg"))


# ----------------------------------------------------------------------------- ObjectInfo
RESOURCE = {
    "kind": "storage#object",
    "bucket": "shop-raw",
    "name": "2026/11/a b#?é.jpg",
    "generation": "1795303387240945",
    "metageneration": "1",
    "size": "5",
    "contentType": "image/jpeg",
    "md5Hash": "XUFAKrxLKna5cZ2REBfFkg==",
    "crc32c": "mnG7TA==",
    "metadata": {"source-generation": "7"},
    "updated": "2026-11-21T23:23:07.240Z",
}


def _from_resource(resource: dict[str, str | dict[str, str]]) -> ObjectInfo:
    client = storage.Client(project="p", credentials=_anonymous())
    blob = storage.Blob(resource["name"], client.bucket(str(resource["bucket"])))
    blob._set_properties(resource)
    return ObjectInfo.from_blob(blob)


def test_object_info_from_blob() -> None:
    from_blob = _from_resource(RESOURCE)
    assert from_blob.generation == 1795303387240945
    assert from_blob.size == 5
    assert from_blob.metadata == {"source-generation": "7"}
    assert from_blob.updated == datetime(2026, 11, 21, 23, 23, 7, 240000, tzinfo=timezone.utc)
    assert from_blob.uri == "gs://shop-raw/2026/11/a b#?é.jpg"
    assert (from_blob.content_type, from_blob.md5_hash, from_blob.crc32c) == (
        "image/jpeg",
        "XUFAKrxLKna5cZ2REBfFkg==",
        "mnG7TA==",
    )


def test_object_info_is_frozen_hashable_and_picklable() -> None:
    info = _from_resource(RESOURCE)
    with pytest.raises(AttributeError):
        info.size = 6  # type: ignore[misc]
    assert len({info, _from_resource(RESOURCE)}) == 1
    assert pickle.loads(pickle.dumps(info)) == info


def test_object_info_defaults_for_sparse_resources() -> None:
    info = _from_resource({"bucket": "b", "name": "n"})
    assert (info.generation, info.size, info.metadata, info.updated) == (0, 0, {}, None)


def test_checksums_use_gcs_notation() -> None:
    assert crc32c_b64(b"hello") == "mnG7TA=="
    assert md5_b64(b"hello") == "XUFAKrxLKna5cZ2REBfFkg=="


# ----------------------------------------------------------------------------- own-write detection
def _existing(data: bytes, metadata: dict[str, str]) -> ObjectInfo:
    return ObjectInfo("b", "n", 5, len(data), "image/png", md5_b64(data), crc32c_b64(data), metadata)


@pytest.mark.parametrize(
    ("stored", "stored_meta", "ours_meta", "token", "retried", "expected"),
    [
        # token: same token + same bytes, retried or not
        (b"x", {WRITE_TOKEN_METADATA_KEY: "t1"}, {}, "t1", False, True),
        (b"x", {WRITE_TOKEN_METADATA_KEY: "t1"}, {}, "t1", True, True),
        (b"x", {WRITE_TOKEN_METADATA_KEY: "t2"}, {}, "t1", True, False),
        (b"y", {WRITE_TOKEN_METADATA_KEY: "t1"}, {}, "t1", True, False),  # same token, other bytes
        # no token: only after a retry, same bytes and metadata
        (b"x", {"k": "v"}, {"k": "v"}, None, True, True),
        (b"x", {"k": "v"}, {"k": "v"}, None, False, False),
        (b"x", {"k": "other"}, {"k": "v"}, None, True, False),
        (b"y", {"k": "v"}, {"k": "v"}, None, True, False),
    ],
)
def test_is_our_write(
    stored: bytes,
    stored_meta: dict[str, str],
    ours_meta: dict[str, str],
    token: str | None,
    retried: bool,
    expected: bool,
) -> None:
    ours = b"x"
    result = _is_our_write(
        _existing(stored, stored_meta), crc32c_b64(ours), md5_b64(ours), ours_meta, token, retried=retried
    )
    assert result is expected


def test_is_our_write_tolerates_missing_md5() -> None:  # composite objects have no MD5
    existing = ObjectInfo("b", "n", 5, 1, None, None, crc32c_b64(b"x"), {WRITE_TOKEN_METADATA_KEY: "t"})
    assert _is_our_write(existing, crc32c_b64(b"x"), md5_b64(b"x"), {}, "t", retried=False)


# ----------------------------------------------------------------------------- write argument checks
def test_metadata_must_be_strings() -> None:
    with pytest.raises(TypeError, match="must be str"):
        GcsStorage._metadata({"n": 1}, None)  # type: ignore[dict-item]


def test_token_key_is_reserved() -> None:
    with pytest.raises(ValueError, match="reserved"):
        GcsStorage._metadata({WRITE_TOKEN_METADATA_KEY: "a"}, "b")
    assert GcsStorage._metadata({"k": "v"}, "t") == {"k": "v", WRITE_TOKEN_METADATA_KEY: "t"}


def test_write_rejects_text() -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        GcsStorage(client=object()).write("b", "n", "text", content_type="text/plain")  # type: ignore[arg-type]


def test_bad_arguments_fail_before_any_request() -> None:
    gcs = GcsStorage(client=object())  # any request would fail with AttributeError
    with pytest.raises(ValueError, match="page_size"):
        gcs.list_objects("b", page_size=0)
    with pytest.raises(ValueError, match="nbytes"):
        gcs.read_head("b", "n", 0)
    with pytest.raises(ValueError, match="max_bytes"):
        gcs.read("b", "n", max_bytes=-1)


def test_list_objects_is_lazy() -> None:
    # Nothing is requested until the first item is pulled.
    GcsStorage(client=object()).list_objects("b", "p/")


def test_storage_survives_deepcopy_and_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    gcs = GcsStorage("my_conn", timeout=5.0)
    _ = gcs.client
    for clone in (copy.deepcopy(gcs), pickle.loads(pickle.dumps(gcs))):
        assert clone.gcp_conn_id == "my_conn"
        assert clone.timeout == 5.0
        assert clone._client is None  # rebuilt lazily in the new process
        assert clone.client is not gcs.client
    assert repr(gcs) == "GcsStorage(gcp_conn_id='my_conn')"


# ----------------------------------------------------------------------------- error mapping
@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (api_exceptions.ServiceUnavailable("down"), StorageUnavailableError),
        (api_exceptions.TooManyRequests("slow down"), StorageUnavailableError),
        (api_exceptions.RetryError("deadline", cause=ConnectionError("refused")), StorageUnavailableError),
        (requests.exceptions.ConnectionError("refused"), StorageUnavailableError),
        (requests.exceptions.ReadTimeout("slow"), StorageUnavailableError),
        (api_exceptions.Forbidden("no"), StoragePermissionError),
        (api_exceptions.Unauthorized("no"), StoragePermissionError),
        (api_exceptions.NotFound("gone"), ObjectNotFoundError),
        (api_exceptions.BadRequest("bad"), StorageError),
    ],
)
def test_translate(exc: Exception, expected: type[StorageError]) -> None:
    error = _translate(exc, "reading", "bkt", "obj")
    assert type(error) is expected
    assert error.uri == "gs://bkt/obj"
    assert "gs://bkt/obj" in str(error)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            api_exceptions.RetryError("deadline", cause=ConnectionError("refused")),
            "reading gs://bkt/obj failed: GCS stayed unavailable until the retry deadline "
            "(ConnectionError: refused)",
        ),
        (requests.exceptions.ReadTimeout("slow"), "reading gs://bkt/obj failed: ReadTimeout: slow"),
        (
            api_exceptions.Forbidden("no"),
            "reading gs://bkt/obj refused (403): the credentials lack permission; 403 no",
        ),
        (api_exceptions.NotFound("gone"), "reading gs://bkt/obj: not found (404 gone)"),
        (api_exceptions.BadRequest("bad"), "reading gs://bkt/obj failed: BadRequest: 400 bad"),
        (  # a resumable upload's session URI: its upload_id lets anyone holding it write the object
            requests.exceptions.ConnectionError(
                "PUT https://storage.googleapis.com/upload/storage/v1/b/bkt/o?uploadType=resumable"
                "&upload_id=ABPnzm5SeCrEt-session failed"
            ),
            "reading gs://bkt/obj failed: ConnectionError: PUT https://storage.googleapis.com/upload/storage/"
            "v1/b/bkt/o?uploadType=…&upload_id=… failed",
        ),
    ],
)
def test_translate_messages(exc: Exception, message: str) -> None:
    assert str(_translate(exc, "reading", "bkt", "obj")) == message


class _RefusedCredentials(google.auth.credentials.Credentials):
    """Credentials whose token request fails, as a revoked key's or a denied impersonation's does."""

    def __init__(self, retryable: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.retryable = retryable

    def refresh(self, request: Any) -> None:
        raise google.auth.exceptions.RefreshError(
            "invalid_grant: Invalid JWT Signature.", {"error": "invalid_grant"}, retryable=self.retryable
        )


@pytest.mark.parametrize(
    ("retryable", "expected"), [(False, StoragePermissionError), (True, StorageUnavailableError)]
)
def test_credentials_that_cannot_get_a_token(
    monkeypatch: pytest.MonkeyPatch, retryable: bool, expected: type[StorageError]
) -> None:
    """A revoked key (or an impersonation the target refuses) fails every call before it is sent: a
    permission error, not a plain StorageError ('failed: RefreshError'); a token endpoint that stayed
    unavailable (google-auth's retryable refresh error) is an outage."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    client = storage.Client(project="p", credentials=_RefusedCredentials(retryable))
    gcs = GcsStorage(client=client, retry=None)
    with pytest.raises(expected, match="the credentials could not get an access token") as caught:
        gcs.stat("bkt", "a.png")
    assert type(caught.value) is expected
    assert "invalid_grant" in str(caught.value)


@pytest.mark.parametrize(
    "exc", [http.client.IncompleteRead(b"part", 10), http.client.RemoteDisconnected("closed")]
)
def test_http_client_failures_are_outages(exc: Exception) -> None:
    """Retried by google-cloud-storage's own policy, so transient: a plain StorageError before."""
    assert type(_translate(exc, "reading", "bkt", "obj")) is StorageUnavailableError


def test_translate_keeps_storage_errors_and_names_a_bucket() -> None:
    original = StorageError("mine", bucket="b")
    assert _translate(original, "writing", "b", "n") is original
    assert str(_translate(api_exceptions.BadRequest("x"), "listing", "b", None)).startswith(
        "listing gs://b failed"
    )


def test_translate_data_corruption() -> None:
    from google.cloud.storage.exceptions import DataCorruption

    error = _translate(DataCorruption(None, "bad"), "reading", "b", "n")  # type: ignore[no-untyped-call]
    assert isinstance(error, DataCorruptionError)
    assert str(error) == "reading gs://b/n: checksum mismatch, the data was corrupted in transit"


def test_errors_pickle_with_their_attributes() -> None:
    err = ObjectExistsError("exists", bucket="b", name="n", expected_generation=0, current_generation=7)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.bucket, clone.name, clone.current_generation, str(clone)) == ("b", "n", 7, "exists")
    changed = ObjectChangedError("c", bucket="b", name="n", expected_generation=1, current_generation=None)
    assert isinstance(changed, ObjectNotFoundError)
    assert StorageError("x", bucket="b").uri == "gs://b"
    assert StorageError("x").uri is None


def _anonymous() -> object:
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()  # type: ignore[no-untyped-call]


# ----------------------------------------------------------------------------- environment lookups
# The session reads requests' environment settings per request only when a proxy applies to the
# endpoint (or ``trust_env`` says so); a CA bundle from the environment is honoured either way.
PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
CA_BUNDLE_NAMES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
GCS = "https://storage.googleapis.com"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in (*PROXY_NAMES, *CA_BUNDLE_NAMES, "NETRC"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


@pytest.fixture
def emulator_env(clean_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A client can be built without credentials; nothing connects."""
    clean_env.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    return clean_env


def test_nothing_configured(clean_env: pytest.MonkeyPatch) -> None:
    assert _proxy_applies(GCS) is False


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "ALL_PROXY"])
def test_a_proxy_keeps_the_environment(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv(name, "http://proxy.invalid:3128")
    assert _proxy_applies(GCS) is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NO_PROXY", "example.com"),  # NO_PROXY alone configures no proxy
        ("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem"),  # a CA bundle is not a proxy
        ("CURL_CA_BUNDLE", "/etc/ssl/bundle.pem"),
    ],
)
def test_settings_that_are_not_proxies(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    assert _proxy_applies(GCS) is False


def test_a_netrc_alone_is_not_a_proxy(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine example.com login a password b\n")
    assert _proxy_applies(GCS) is False


@pytest.mark.parametrize(
    ("no_proxy", "applies"),
    [
        ("storage.googleapis.com", False),
        (".googleapis.com", False),
        ("*", False),
        ("example.com,127.0.0.1", True),
    ],
)
def test_no_proxy_for_the_endpoint(clean_env: pytest.MonkeyPatch, no_proxy: str, applies: bool) -> None:
    clean_env.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    clean_env.setenv("NO_PROXY", no_proxy)
    assert _proxy_applies(GCS) is applies


def test_the_session_follows_the_environment(clean_env: pytest.MonkeyPatch, fake_gcs: object) -> None:
    assert GcsStorage(gcp_conn_id=None).client._http.trust_env is False
    clean_env.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert GcsStorage(gcp_conn_id=None).client._http.trust_env is True


def test_no_proxy_naming_the_emulator_keeps_the_session_off(emulator_env: pytest.MonkeyPatch) -> None:
    emulator_env.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    emulator_env.setenv("NO_PROXY", "127.0.0.1")
    assert GcsStorage(gcp_conn_id=None).client._http.trust_env is False


@pytest.mark.parametrize("proxy", [None, "http://proxy.invalid:3128"])
@pytest.mark.parametrize("trust_env", [True, False])
def test_explicit_trust_env_wins(
    emulator_env: pytest.MonkeyPatch, proxy: str | None, trust_env: bool
) -> None:
    if proxy is not None:
        emulator_env.setenv("HTTP_PROXY", proxy)
    assert GcsStorage(gcp_conn_id=None, trust_env=trust_env).client._http.trust_env is trust_env


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"REQUESTS_CA_BUNDLE": "/ca/requests.pem"}, "/ca/requests.pem"),
        ({"CURL_CA_BUNDLE": "/ca/curl.pem"}, "/ca/curl.pem"),
        ({"REQUESTS_CA_BUNDLE": "/ca/requests.pem", "CURL_CA_BUNDLE": "/ca/curl.pem"}, "/ca/requests.pem"),
        ({}, True),  # requests' own default: certifi's bundle
    ],
)
@pytest.mark.parametrize("trust_env", [None, True, False])
def test_a_ca_bundle_from_the_environment_is_honoured(
    emulator_env: pytest.MonkeyPatch, variables: dict[str, str], expected: str | bool, trust_env: bool | None
) -> None:
    for name, value in variables.items():
        emulator_env.setenv(name, value)
    session = GcsStorage(gcp_conn_id=None, trust_env=trust_env).client._http
    # What requests will verify a request to GCS against, whether or not it reads the environment.
    assert session.merge_environment_settings(GCS, {}, None, None, None)["verify"] == expected


# ----------------------------------------------------------------------------- bucket metadata reads
@pytest.mark.parametrize(
    ("environment", "switched", "after"),
    [
        ({}, True, "true"),  # neither set: the library's background bucket reads are turned off
        ({BUCKET_METADATA_SWITCH: "false"}, False, "false"),  # the user's own choice stands
        ({"ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES": "True"}, False, None),  # tracing wants the metadata
        ({"ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES": "0"}, True, "true"),
    ],
)
def test_bucket_metadata_reads_are_skipped_unless_the_environment_decides(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], switched: bool, after: str | None
) -> None:
    monkeypatch.delenv(BUCKET_METADATA_SWITCH, raising=False)
    monkeypatch.delenv("ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    assert skip_bucket_metadata_reads() is switched
    assert os.environ.get(BUCKET_METADATA_SWITCH) == after


# ----------------------------------------------------------------------------- secrets in the cause chain
SESSION_URL = (
    "https://storage.googleapis.com/upload/storage/v1/b/bkt/o?uploadType=resumable&name=a.png"
    "&upload_id=ABPnzm5SeCrEt-session"
)


def _max_retries() -> Exception:
    import urllib3

    reason = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
    pool = urllib3.HTTPSConnectionPool("storage.googleapis.com", 443)
    return urllib3.exceptions.MaxRetryError(pool, SESSION_URL.removeprefix(GCS), reason)


@pytest.mark.parametrize(
    "make",
    [
        lambda: api_exceptions.RetryError(
            "Timeout of 120.0s exceeded",
            cause=api_exceptions.ServiceUnavailable(f"PUT {SESSION_URL}: backend down"),
        ),
        lambda: requests.exceptions.ConnectionError(_max_retries()),
        lambda: api_exceptions.BadRequest(f"PUT {SESSION_URL}: bad"),
    ],
    ids=["retry-deadline", "connection", "bad-request"],
)
def test_a_resumable_sessions_upload_id_never_reaches_a_traceback(make: Any) -> None:
    """The message hid the session's upload_id (anyone holding it may write the object), but the
    google-cloud exception kept as __cause__ quoted it in clear: the traceback Airflow logs for a failed
    task printed it (a 9 MiB master whose upload hit GCS's 503s until the retry deadline)."""
    import traceback

    original = make()

    def fail() -> None:
        try:
            raise original
        except Exception as exc:
            raise _translate(exc, "writing", "bkt", "a.png") from exc

    with pytest.raises(StorageError) as caught:
        fail()
    printed = "".join(traceback.format_exception(caught.value))
    assert caught.value.__cause__ is original  # the cause is kept, its type and chain unchanged
    assert "upload_id=" in printed and "SeCrEt" not in printed


class _Answers(requests.Session):
    """A session answering each request with a canned status (JSON body), recording nothing else."""

    is_mtls = False  # as google-auth's AuthorizedSession, which the library asks

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        status, body = self.answer(str(method), str(url))
        response = requests.Response()
        response.status_code, response._content = status, json.dumps(body).encode()
        response.headers["Content-Type"] = "application/json"
        response.request = requests.Request(str(method), str(url)).prepare()
        return response


def test_a_create_refused_by_an_object_gone_since_says_so() -> None:
    """412 on a create-only write, then the stat finds nothing (deleted in between, e.g. by a lifecycle
    rule): the error said 'already exists (generation None)'."""

    def answer(method: str, url: str) -> tuple[int, dict[str, Any]]:
        if "/upload/" in url:
            return 412, {"error": {"code": 412, "message": "At least one of the pre-conditions failed."}}
        return 404, {"error": {"code": 404, "message": "No such object: b/out/a.png"}}

    client = storage.Client(project="p", credentials=_anonymous(), _http=_Answers(answer))
    gcs = GcsStorage(client=client, retry=None)
    with pytest.raises(ObjectExistsError) as caught:
        gcs.write("b", "out/a.png", b"x", content_type="image/png")
    assert str(caught.value) == (
        "gs://b/out/a.png existed when the create-only write was refused (412) and is gone since; "
        "create-only write refused"
    )
    assert (caught.value.expected_generation, caught.value.current_generation) == (0, None)
