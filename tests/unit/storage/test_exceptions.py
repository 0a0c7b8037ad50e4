"""The storage errors' URI: one formatter for an object, a prefix or a bucket."""

from __future__ import annotations

from airflow_provider_bgremoval.storage import ObjectNotFoundError, StorageError, gs_uri, split_gs_uri


def test_gs_uri_of_an_object_a_prefix_and_a_bucket() -> None:
    assert gs_uri("b", "a/c.png") == "gs://b/a/c.png"
    assert gs_uri("b", "incoming/") == "gs://b/incoming/"
    assert gs_uri("b") == "gs://b"


def test_split_gs_uri_undoes_gs_uri() -> None:
    for bucket, name in [("b", "a/c.png"), ("b", "incoming/"), ("b", ""), ("b", "x y/%2F.jpg")]:
        assert split_gs_uri(gs_uri(bucket, name)) == (bucket, name)
    assert split_gs_uri("gs://b") == ("b", "")


def test_an_errors_uri_names_what_it_is_about() -> None:
    assert ObjectNotFoundError("gone", bucket="b", name="x.jpg").uri == "gs://b/x.jpg"
    assert StorageError("no bucket", bucket="b").uri == "gs://b"
    assert StorageError("local").uri is None
