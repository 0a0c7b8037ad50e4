"""
The GCS session reads requests' environment settings per request only when a proxy applies to the
endpoint (or ``trust_env`` says so); a CA bundle from the environment is honoured either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_bgremoval.storage import gcs

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
    assert gcs._proxy_applies(GCS) is False


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "ALL_PROXY"])
def test_a_proxy_keeps_the_environment(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv(name, "http://proxy.invalid:3128")
    assert gcs._proxy_applies(GCS) is True


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
    assert gcs._proxy_applies(GCS) is False


def test_a_netrc_alone_is_not_a_proxy(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine example.com login a password b\n")
    assert gcs._proxy_applies(GCS) is False


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
    assert gcs._proxy_applies(GCS) is applies


def test_the_session_follows_the_environment(clean_env: pytest.MonkeyPatch, fake_gcs: object) -> None:
    storage = gcs.GcsStorage(gcp_conn_id=None)
    assert storage.client._http.trust_env is False
    clean_env.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert gcs.GcsStorage(gcp_conn_id=None).client._http.trust_env is True


def test_no_proxy_naming_the_emulator_keeps_the_session_off(emulator_env: pytest.MonkeyPatch) -> None:
    emulator_env.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    emulator_env.setenv("NO_PROXY", "127.0.0.1")
    assert gcs.GcsStorage(gcp_conn_id=None).client._http.trust_env is False


@pytest.mark.parametrize("proxy", [None, "http://proxy.invalid:3128"])
@pytest.mark.parametrize("trust_env", [True, False])
def test_explicit_trust_env_wins(
    emulator_env: pytest.MonkeyPatch, proxy: str | None, trust_env: bool
) -> None:
    if proxy is not None:
        emulator_env.setenv("HTTP_PROXY", proxy)
    assert gcs.GcsStorage(gcp_conn_id=None, trust_env=trust_env).client._http.trust_env is trust_env


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
    session = gcs.GcsStorage(gcp_conn_id=None, trust_env=trust_env).client._http
    # What requests will verify a request to GCS against, whether or not it reads the environment.
    assert session.merge_environment_settings(GCS, {}, None, None, None)["verify"] == expected
