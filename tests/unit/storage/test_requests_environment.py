"""The GCS session skips requests' per-request environment lookups only when nothing is configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_bgremoval.storage import gcs

NAMES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NETRC",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_nothing_configured(clean_env: pytest.MonkeyPatch) -> None:
    assert gcs._environment_configures_requests() is False


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "REQUESTS_CA_BUNDLE", "NO_PROXY"])
def test_proxy_or_ca_bundle_keeps_the_environment(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv(name, "x")
    assert gcs._environment_configures_requests() is True


def test_netrc_keeps_the_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine example.com login a password b\n")
    assert gcs._environment_configures_requests() is True


def test_the_session_follows_the_environment(clean_env: pytest.MonkeyPatch, fake_gcs: object) -> None:
    storage = gcs.GcsStorage(gcp_conn_id=None)
    assert storage.client._http.trust_env is False
    clean_env.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert gcs.GcsStorage(gcp_conn_id=None).client._http.trust_env is True
