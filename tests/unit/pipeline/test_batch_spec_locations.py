"""BatchSpec's buckets and prefixes: what GCS would never match is refused before anything is listed.

A ``gs://`` URI given as a bucket or a prefix, and a bucket name GCS refuses (its naming rules:
https://cloud.google.com/storage/docs/buckets#naming), name nothing: the listing found no object and the
run succeeded having processed nothing.
"""

from __future__ import annotations

import logging

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.pipeline.planning import BatchSpec, check_location, iter_sources
from tests.support.memory_storage import MemoryStorage

BUCKETS = {"source_bucket": "shop", "destination_bucket": "shop-cutouts"}


@pytest.mark.parametrize(
    ("given", "parameter", "split"),
    [
        (
            {"source_prefix": "gs://shop/2026/"},
            "source_prefix",
            "source_bucket='shop', source_prefix='2026/'",
        ),
        ({"source_bucket": "gs://shop"}, "source_bucket", "source_bucket='shop'"),
        (
            {"source_bucket": "gs://shop/2026/"},
            "source_bucket",
            "source_bucket='shop', source_prefix='2026/'",
        ),
        (
            {"destination_bucket": " gs://shop-cutouts"},
            "destination_bucket",
            "destination_bucket='shop-cutouts'",
        ),
        (
            {"destination_prefix": "gs://shop-cutouts/2026/"},
            "destination_prefix",
            "destination_bucket='shop-cutouts', destination_prefix='2026/'",
        ),
        (
            {"masters_prefix": "gs://shop-cutouts/masters/"},
            "masters_prefix",
            "destination_bucket='shop-cutouts', masters_prefix='masters/'",
        ),
    ],
)
def test_a_gs_uri_as_a_bucket_or_a_prefix_is_refused_with_the_split(
    given: dict[str, str], parameter: str, split: str
) -> None:
    """source_prefix='gs://shop/2026/' listed the objects named 'gs://shop/2026/…': none, a green run."""
    with pytest.raises(InvalidOptionError) as info:
        BatchSpec(**{**BUCKETS, **given})  # type: ignore[arg-type]
    assert info.value.parameter == parameter
    assert "gs:// URI" in str(info.value) and split in str(info.value)


@pytest.mark.parametrize(
    ("bucket", "why"),
    [
        ("s", "3 to 63"),
        ("ab", "3 to 63"),
        ("a" * 64, "3 to 63"),
        (".".join(["a" * 60] * 4), "222"),  # 243 characters with dots
        ("a" * 64 + ".com", "63"),  # a dot-separated part longer than 63
        ("Shop", "lowercase"),
        ("shop images", "' '"),
        ("shop/2026", "'/'"),
        ("shop\n", "'\\n'"),
        ("sh*p", "'*'"),
        ("-shop", "start and end"),
        ("shop_", "start and end"),
        ("shop.", "start and end"),
        ("goog-images", "goog"),
        ("192.168.5.4", "IP address"),
        ("", "is required"),
    ],
)
def test_a_bucket_name_gcs_refuses_is_refused(bucket: str, why: str) -> None:
    for parameter in ("source_bucket", "destination_bucket"):
        with pytest.raises(InvalidOptionError, match=rf"invalid '{parameter}'") as info:
            BatchSpec(**{**BUCKETS, parameter: bucket})  # type: ignore[arg-type]
        assert why in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "bucket",
    [
        "abc",
        "a" * 63,
        "shop_raw-2026",
        "1shop9",
        "cutouts.example.com",
        ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 30]),  # 222 characters, parts of at most 63
        "192.168.5",  # not an IP address
        "my-goog-images",  # 'goog' only refused as a prefix
    ],
)
def test_a_bucket_name_gcs_accepts_is_kept(bucket: str) -> None:
    spec = BatchSpec(
        source_bucket=bucket, destination_bucket=bucket, source_prefix="in/", destination_prefix="out/"
    )
    assert (spec.source_bucket, spec.destination_bucket) == (bucket, bucket)


def test_check_location_is_the_one_check_of_buckets_and_prefixes() -> None:
    check_location("source_prefix", "2026/")
    check_location("masters_prefix", None)
    check_location("source_prefix", "")
    with pytest.raises(InvalidOptionError, match=r"'destination_bucket'.*is required"):
        check_location("destination_bucket", None)
    with pytest.raises(InvalidOptionError, match=r"'source_bucket'.*Shop"):
        check_location("source_bucket", "Shop")


@pytest.mark.parametrize("parameter", ["source_prefix", "destination_prefix", "masters_prefix"])
def test_a_prefix_with_a_leading_slash_is_read_without_it_with_a_warning(
    parameter: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A leading '/' (a path join) is dropped, as ever, so '/2026/' lists '2026/…'; a warning says so:
    an object whose name does start with '/' is never reached."""
    kwargs = {"source_prefix": "in/", "destination_prefix": "cut/", parameter: "/2026/"}
    with caplog.at_level(logging.WARNING, logger="airflow_provider_bgremoval.pipeline.planning"):
        spec = BatchSpec(**BUCKETS, **kwargs)  # type: ignore[arg-type]
    assert getattr(spec, parameter) == "2026/"
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warned) == 1 and parameter in warned[0] and "'/2026/'" in warned[0] and "'2026/'" in warned[0]


def test_a_source_prefix_with_a_leading_slash_lists_the_prefix_without_it() -> None:
    storage = MemoryStorage({"2026/a.png": b"x", "/2026/b.png": b"x"}, bucket="shop")
    spec = BatchSpec(**BUCKETS, source_prefix="/2026/")
    assert [name for name, _ in iter_sources(storage, spec)] == ["2026/a.png"]  # type: ignore[arg-type]


def test_a_prefix_without_a_leading_slash_warns_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        BatchSpec(**BUCKETS, source_prefix="2026/", destination_prefix="", masters_prefix="m/")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
