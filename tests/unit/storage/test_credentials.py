"""Credential resolution: emulator, connection keys (bare and prefixed extras), ADC fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.exceptions import DefaultCredentialsError
from google.oauth2 import service_account

from airflow_provider_bgremoval import USER_AGENT
from airflow_provider_bgremoval.storage import credentials as creds_module
from airflow_provider_bgremoval.storage.credentials import (
    DEFAULT_SCOPES,
    EMULATOR_PROJECT,
    get_extra_field,
    parse_scopes,
    resolve_gcs_credentials,
)
from airflow_provider_bgremoval.storage.exceptions import StorageConfigError
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.support.connections import set_connection

GCP = "google_cloud_platform"
PREFIX = "extra__google_cloud_platform__"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


@pytest.fixture(scope="module")
def service_account_info() -> dict[str, str]:
    """A syntactically real service-account key (fresh RSA key; not valid anywhere)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "key-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "bgremoval@key-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


class AdcRecorder:
    """Stands in for ``google.auth.default``."""

    def __init__(self, project: str | None = "adc-project") -> None:
        self.calls: list[dict[str, Any]] = []
        self.credentials = object()
        self.project = project

    def __call__(self, scopes: Any = None, **kwargs: Any) -> tuple[object, str | None]:
        self.calls.append({"scopes": scopes, **kwargs})
        return self.credentials, self.project


@pytest.fixture
def adc(monkeypatch: pytest.MonkeyPatch) -> AdcRecorder:
    recorder = AdcRecorder()
    monkeypatch.setattr("google.auth.default", recorder)
    return recorder


@pytest.fixture(autouse=True)
def _no_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    # The session's fake-gcs fixture may have exported it; these tests decide themselves.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", raising=False)


@pytest.fixture
def masked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(creds_module, "mask_secret", seen.append)
    return seen


def test_emulator_skips_credentials(monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    resolved = resolve_gcs_credentials()
    assert resolved.source == "emulator"
    assert resolved.credentials is None
    assert resolved.project == EMULATOR_PROJECT
    assert adc.calls == []


def test_emulator_takes_project_from_connection(
    monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder, service_account_info: dict[str, str]
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    set_connection(
        monkeypatch,
        "google_cloud_default",
        GCP,
        extra={"project": "conn-project", "keyfile_dict": json.dumps(service_account_info)},
    )
    resolved = resolve_gcs_credentials()
    assert (resolved.source, resolved.project, resolved.credentials) == ("emulator", "conn-project", None)
    assert adc.calls == []


def test_undefined_connection_falls_back_to_adc(adc: AdcRecorder) -> None:
    resolved = resolve_gcs_credentials("no_such_connection")
    assert resolved.source == "adc"
    assert resolved.credentials is adc.credentials
    assert resolved.project == "adc-project"
    assert adc.calls == [{"scopes": list(DEFAULT_SCOPES)}]


def test_no_connection_id_goes_straight_to_adc(adc: AdcRecorder) -> None:
    assert resolve_gcs_credentials(None).source == "adc"
    assert len(adc.calls) == 1


def test_connection_without_key_uses_adc_with_its_project_and_scopes(
    monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder
) -> None:
    set_connection(
        monkeypatch,
        "google_cloud_default",
        GCP,
        extra={"project": "conn-project", "scope": "https://a/s1, https://a/s2 ,"},
    )
    resolved = resolve_gcs_credentials()
    assert resolved.source == "adc"
    assert resolved.project == "conn-project"
    assert adc.calls == [{"scopes": ["https://a/s1", "https://a/s2"]}]


def test_explicit_scopes_win(monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder) -> None:
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"scope": "https://a/s1"})
    resolve_gcs_credentials(scopes=["https://x/y"])
    assert adc.calls == [{"scopes": ["https://x/y"]}]


@pytest.mark.parametrize("as_string", [True, False], ids=["json-string", "dict"])
@pytest.mark.parametrize("prefix", ["", PREFIX], ids=["bare", "prefixed"])
def test_keyfile_dict(
    monkeypatch: pytest.MonkeyPatch,
    adc: AdcRecorder,
    masked: list[str],
    service_account_info: dict[str, str],
    as_string: bool,
    prefix: str,
) -> None:
    keyfile: Any = json.dumps(service_account_info) if as_string else service_account_info
    set_connection(monkeypatch, "gcp_key", GCP, extra={f"{prefix}keyfile_dict": keyfile})
    resolved = resolve_gcs_credentials("gcp_key")
    assert resolved.source == "keyfile_dict"
    assert isinstance(resolved.credentials, service_account.Credentials)
    assert resolved.credentials.service_account_email == service_account_info["client_email"]
    assert resolved.credentials.scopes == list(DEFAULT_SCOPES)
    assert resolved.project == "key-project"  # from the key when the connection names none
    assert adc.calls == []
    assert masked == [service_account_info["private_key"]]
    assert service_account_info["private_key"] not in repr(resolved)


@pytest.mark.parametrize("as_string", [True, False], ids=["json-string", "dict"])
def test_keyfile_dict_with_escaped_newlines_in_its_private_key(
    monkeypatch: pytest.MonkeyPatch, masked: list[str], service_account_info: dict[str, str], as_string: bool
) -> None:
    """A key whose JSON was escaped twice (its private key holds ``\\n``, not newlines), as pasted into
    many connections: providers-google reads it; it was refused as 'not a usable service-account key'."""
    escaped = {
        **service_account_info,
        "private_key": service_account_info["private_key"].replace("\n", "\\n"),
    }
    keyfile: Any = json.dumps(escaped) if as_string else escaped
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"keyfile_dict": keyfile})
    resolved = resolve_gcs_credentials()
    assert isinstance(resolved.credentials, service_account.Credentials)
    assert resolved.credentials.service_account_email == service_account_info["client_email"]
    assert service_account_info["private_key"] in masked  # the key as used is masked, not only as written


def test_keyfile_dict_project_and_scope_from_connection(
    monkeypatch: pytest.MonkeyPatch, masked: list[str], service_account_info: dict[str, str]
) -> None:
    set_connection(
        monkeypatch,
        "google_cloud_default",
        GCP,
        extra={
            f"{PREFIX}project": "conn-project",
            f"{PREFIX}scope": "https://www.googleapis.com/auth/cloud-platform",
            f"{PREFIX}keyfile_dict": json.dumps(service_account_info),
        },
    )
    resolved = resolve_gcs_credentials()
    assert resolved.project == "conn-project"
    assert resolved.credentials is not None
    assert resolved.credentials.scopes == ["https://www.googleapis.com/auth/cloud-platform"]  # type: ignore[attr-defined]


def test_key_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, adc: AdcRecorder, service_account_info: dict[str, str]
) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(service_account_info))
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"key_path": str(key_file)})
    resolved = resolve_gcs_credentials()
    assert resolved.source == "key_path"
    assert isinstance(resolved.credentials, service_account.Credentials)
    assert resolved.project == "key-project"
    assert adc.calls == []


def test_key_path_calls_from_service_account_file(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    fake = object()

    def from_file(path: str, scopes: Any = None) -> object:
        calls.append((path, scopes))
        return fake

    monkeypatch.setattr(service_account.Credentials, "from_service_account_file", from_file)
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={f"{PREFIX}key_path": "/keys/sa.json"})
    resolved = resolve_gcs_credentials()
    assert resolved.credentials is fake
    assert calls == [("/keys/sa.json", list(DEFAULT_SCOPES))]


def test_missing_key_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"key_path": str(tmp_path / "nope.json")})
    with pytest.raises(StorageConfigError, match="does not exist on this worker"):
        resolve_gcs_credentials()


def test_key_path_must_be_json(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"key_path": "/keys/sa.p12"})
    with pytest.raises(StorageConfigError, match="JSON service-account key file"):
        resolve_gcs_credentials()


def test_key_path_and_keyfile_dict_are_exclusive(
    monkeypatch: pytest.MonkeyPatch, service_account_info: dict[str, str]
) -> None:
    set_connection(
        monkeypatch,
        "google_cloud_default",
        GCP,
        extra={"key_path": "/k.json", "keyfile_dict": json.dumps(service_account_info)},
    )
    with pytest.raises(StorageConfigError, match="mutually exclusive"):
        resolve_gcs_credentials()


def test_broken_keyfile_dict_never_echoes_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "-----BEGIN PRIVATE KEY-----SECRETSECRET"
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"keyfile_dict": "{" + secret})
    with pytest.raises(StorageConfigError) as excinfo:
        resolve_gcs_credentials()
    assert "not valid JSON" in str(excinfo.value)
    assert "SECRETSECRET" not in str(excinfo.value)
    assert excinfo.value.__cause__ is None


def test_unusable_keyfile_dict_never_echoes_the_secret(
    monkeypatch: pytest.MonkeyPatch, masked: list[str]
) -> None:
    set_connection(
        monkeypatch,
        "google_cloud_default",
        GCP,
        extra={"keyfile_dict": json.dumps({"type": "service_account", "private_key": "SECRETSECRET"})},
    )
    with pytest.raises(StorageConfigError, match="not a usable service-account key") as excinfo:
        resolve_gcs_credentials()
    assert "SECRETSECRET" not in str(excinfo.value)
    assert masked == ["SECRETSECRET"]


# ----------------------------------------------------------------------------- impersonation
def test_impersonation_chain_acts_as_its_last_account_through_the_others(
    monkeypatch: pytest.MonkeyPatch, masked: list[str], service_account_info: dict[str, str]
) -> None:
    """providers-google's ``impersonation_chain`` extra: the key's account impersonates the chain's
    last one through the delegates before it; it was ignored (every call went out as the key's account)."""
    from google.auth import impersonated_credentials

    target = "bgremoval-writer@other-project.iam.gserviceaccount.com"
    set_connection(
        monkeypatch,
        "google_cloud_default",
        GCP,
        extra={
            "keyfile_dict": json.dumps(service_account_info),
            f"{PREFIX}impersonation_chain": f"hop@key-project.iam.gserviceaccount.com, {target}",
        },
    )
    resolved = resolve_gcs_credentials()
    credentials = resolved.credentials
    assert isinstance(credentials, impersonated_credentials.Credentials)
    assert credentials.service_account_email == target
    assert credentials._delegates == ["hop@key-project.iam.gserviceaccount.com"]
    assert credentials._target_scopes == list(DEFAULT_SCOPES)
    source = credentials._source_credentials
    assert isinstance(source, service_account.Credentials)
    assert source.service_account_email == service_account_info["client_email"]
    assert (resolved.source, resolved.impersonated, resolved.project) == (
        "keyfile_dict",
        target,
        "other-project",
    )


@pytest.mark.parametrize("chain", ["writer@p.iam.gserviceaccount.com", ["writer@p.iam.gserviceaccount.com"]])
def test_impersonation_from_adc_keeps_the_connection_project(
    monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder, chain: Any
) -> None:
    from google.auth import impersonated_credentials
    from google.auth.credentials import AnonymousCredentials

    adc.credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    set_connection(
        monkeypatch,
        "google_cloud_default",
        GCP,
        extra={"project": "conn-project", "scope": "https://a/s1", "impersonation_chain": chain},
    )
    resolved = resolve_gcs_credentials()
    assert isinstance(resolved.credentials, impersonated_credentials.Credentials)
    assert isinstance(resolved.credentials._source_credentials, AnonymousCredentials)  # a copy of ADC's
    assert resolved.credentials._delegates == []
    assert resolved.credentials._target_scopes == ["https://a/s1"]
    assert adc.calls == [{"scopes": [CLOUD_PLATFORM]}]
    assert (resolved.source, resolved.project) == ("adc", "conn-project")


def test_no_impersonation_without_a_chain(monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder) -> None:
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"impersonation_chain": " , "})
    resolved = resolve_gcs_credentials()
    assert resolved.credentials is adc.credentials and resolved.impersonated is None
    assert adc.calls == [{"scopes": list(DEFAULT_SCOPES)}]


def test_password_protected_key_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, masked: list[str], service_account_info: dict[str, str]
) -> None:
    """An encrypted PEM (``BEGIN ENCRYPTED PRIVATE KEY``) raised a bare TypeError out of the task."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()
    keyfile = json.dumps({**service_account_info, "private_key": pem})
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"keyfile_dict": keyfile})
    with pytest.raises(
        StorageConfigError, match=r"not a usable service-account key \(TypeError\)"
    ) as excinfo:
        resolve_gcs_credentials()
    assert pem.splitlines()[1] not in str(excinfo.value)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


def test_unreadable_key_path_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "key.json"
    folder.mkdir()  # a folder where the key file should be (a volume mounted at the wrong path)
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"key_path": str(folder)})
    with pytest.raises(StorageConfigError, match="cannot be read on this worker"):
        resolve_gcs_credentials()


# ------------------------------------------------------------------- providers-google's other key options
#: A Workload/Workforce Identity Federation configuration (file-sourced token); it holds no secret itself.
#: A workforce pool: google-auth then asks no project number from the network while loading it.
FEDERATION = {
    "type": "external_account",
    "audience": "//iam.googleapis.com/locations/global/workforcePools/pool/providers/p",
    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "token_url": "https://sts.googleapis.com/v1/token",
    "credential_source": {"file": "/var/run/token"},
}


@pytest.mark.parametrize("form", ["dict", "json-string", "path"])
def test_credential_config_file_is_read_not_replaced_by_adc(
    monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder, tmp_path: Path, form: str
) -> None:
    """providers-google's ``credential_config_file`` (path, JSON text or object): it was ignored and the
    worker's own Application Default Credentials, another identity, were used."""
    from google.auth import identity_pool

    value: Any = FEDERATION if form == "dict" else json.dumps(FEDERATION)
    if form == "path":
        path = tmp_path / "federation.json"
        path.write_text(value)
        value = str(path)
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={f"{PREFIX}credential_config_file": value})
    resolved = resolve_gcs_credentials()
    assert isinstance(resolved.credentials, identity_pool.Credentials)
    assert resolved.credentials.scopes == list(DEFAULT_SCOPES)
    assert resolved.source == "credential_config_file"
    assert adc.calls == []


def test_unusable_credential_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch, "google_cloud_default", GCP, extra={"credential_config_file": '{"type": "nonsense"}'}
    )
    with pytest.raises(
        StorageConfigError, match="'credential_config_file' is not a usable credential config"
    ):
        resolve_gcs_credentials()


def test_missing_credential_config_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = str(tmp_path / "federation.json")
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"credential_config_file": missing})
    with pytest.raises(StorageConfigError, match="'credential_config_file' does not exist on this worker"):
        resolve_gcs_credentials()


@pytest.mark.parametrize(
    ("value", "anonymous"), [(True, True), ("true", True), ("false", False), (False, False)]
)
def test_is_anonymous(monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder, value: Any, anonymous: bool) -> None:
    from google.auth.credentials import AnonymousCredentials

    set_connection(monkeypatch, "google_cloud_default", GCP, extra={"is_anonymous": value})
    resolved = resolve_gcs_credentials()
    assert isinstance(resolved.credentials, AnonymousCredentials) is anonymous
    assert (resolved.source == "is_anonymous") is anonymous
    assert len(adc.calls) == (0 if anonymous else 1)


@pytest.mark.parametrize("option", ["key_secret_name", "idp_issuer_url"])
def test_key_options_this_provider_cannot_read_are_refused_not_replaced_by_adc(
    monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder, option: str
) -> None:
    set_connection(monkeypatch, "google_cloud_default", GCP, extra={option: "gcp-key"})
    with pytest.raises(StorageConfigError, match=f"extra '{option}' is not supported by this provider"):
        resolve_gcs_credentials()
    assert adc.calls == []


def test_key_options_are_mutually_exclusive(
    monkeypatch: pytest.MonkeyPatch, service_account_info: dict[str, str]
) -> None:
    extra = {
        "keyfile_dict": json.dumps(service_account_info),
        "credential_config_file": json.dumps(FEDERATION),
    }
    set_connection(monkeypatch, "google_cloud_default", GCP, extra=extra)
    with pytest.raises(StorageConfigError, match="'keyfile_dict' and 'credential_config_file' are mutually"):
        resolve_gcs_credentials()


def test_no_adc_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_adc(**kwargs: Any) -> Any:
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr("google.auth.default", no_adc)
    with pytest.raises(StorageConfigError, match="STORAGE_EMULATOR_HOST"):
        resolve_gcs_credentials()


def test_get_extra_field_follows_providers_google() -> None:
    assert get_extra_field({"project": "a", f"{PREFIX}project": "b"}, "project") == "a"
    assert get_extra_field({f"{PREFIX}project": "b"}, "project") == "b"
    assert get_extra_field({"project": ""}, "project") is None
    assert get_extra_field({}, "project") is None


def test_parse_scopes() -> None:
    assert parse_scopes(None) is None
    assert parse_scopes(" ,") is None
    assert parse_scopes("a, b") == ["a", "b"]
    assert parse_scopes(["a", " b "]) == ["a", "b"]


# ----------------------------------------------------------------------------- GcsStorage client wiring
def test_client_uses_resolved_credentials_and_user_agent(
    monkeypatch: pytest.MonkeyPatch, masked: list[str], service_account_info: dict[str, str]
) -> None:
    set_connection(
        monkeypatch,
        "google_cloud_default",
        GCP,
        extra={"project": "conn-project", "keyfile_dict": json.dumps(service_account_info)},
    )
    gcs = GcsStorage()
    client = gcs.client
    assert client is gcs.client  # created once
    assert client.project == "conn-project"
    assert isinstance(client._credentials, service_account.Credentials)
    assert USER_AGENT in client._connection.user_agent
    assert USER_AGENT.startswith("airflow-provider-bgremoval/")


def test_client_in_emulator_mode(monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder) -> None:
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    client = GcsStorage().client
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client._connection.API_BASE_URL == "http://127.0.0.1:9"
    assert client.project == EMULATOR_PROJECT
    assert adc.calls == []


def test_explicit_project_wins(monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    assert GcsStorage(project="mine").client.project == "mine"


@pytest.mark.parametrize("prefix", ["", PREFIX], ids=["bare", "prefixed"])
def test_anonymous_access_cannot_impersonate(
    monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder, prefix: str
) -> None:
    """An anonymous identity cannot ask the IAM Credentials API for another account's token: every call
    failed at GCS with 'the credentials could not get an access token', naming neither extra."""
    set_connection(
        monkeypatch,
        "gcp_public",
        GCP,
        extra={
            f"{prefix}is_anonymous": True,
            f"{prefix}impersonation_chain": "writer@p.iam.gserviceaccount.com",
        },
    )
    with pytest.raises(
        StorageConfigError, match=r"connection 'gcp_public': 'is_anonymous' and 'impersonation_chain'"
    ):
        resolve_gcs_credentials("gcp_public")
    assert adc.calls == []


def test_a_key_pasted_into_google_application_credentials_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, service_account_info: dict[str, str]
) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS holding the key itself instead of its path (a Kubernetes secret
    mapped to the variable): google-auth says 'File <value> was not found.', and that text, the whole
    private key, was put in the StorageConfigError and its cause, logged with the failed task."""
    import traceback

    pasted = json.dumps(service_account_info)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", pasted)
    with pytest.raises(StorageConfigError) as caught:
        resolve_gcs_credentials(None)
    printed = "".join(traceback.format_exception(caught.value))
    secret = service_account_info["private_key"].splitlines()[1]
    assert secret not in printed and "PRIVATE KEY" not in printed
    assert "no GCP credentials" in str(caught.value)
    assert "File $GOOGLE_APPLICATION_CREDENTIALS was not found" in str(caught.value)


def test_adc_failure_reason_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = str(tmp_path / "adc.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", missing)
    with pytest.raises(StorageConfigError, match=r"\(File \$GOOGLE_APPLICATION_CREDENTIALS was not found"):
        resolve_gcs_credentials(None)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(broken))
    with pytest.raises(StorageConfigError, match=r"is not a valid json file\. \(JSONDecodeError\)"):
        resolve_gcs_credentials(None)


@pytest.mark.parametrize(
    "extra",
    [
        '{"keyfile_dict": "{\\"private_key\\": \\"SECRETSECRET\\"", }',  # a quote lost in hand-editing
        '["SECRETSECRET"]',  # JSON, but not an object of extras
    ],
    ids=["not-json", "not-an-object"],
)
def test_a_connection_whose_extra_cannot_be_read_is_refused_not_replaced_by_adc(
    monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder, extra: str
) -> None:
    """Airflow reads an extra that is not JSON as no extras at all (it logs the parse error), so the
    connection's key was never seen and the task ran as the worker's Application Default Credentials,
    another identity and project."""
    import traceback

    connection = json.dumps({"conn_type": GCP, "extra": extra})
    monkeypatch.setenv("AIRFLOW_CONN_GCP_BROKEN", connection)
    with pytest.raises(StorageConfigError, match=r"connection 'gcp_broken': its extra is not a JSON object"):
        resolve_gcs_credentials("gcp_broken")
    assert adc.calls == []
    with pytest.raises(StorageConfigError) as caught:
        resolve_gcs_credentials("gcp_broken")
    assert "SECRETSECRET" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize("extra", ["", "{}", " { } ", "  "])
def test_an_empty_extra_still_means_adc(
    monkeypatch: pytest.MonkeyPatch, adc: AdcRecorder, extra: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_GCP_EMPTY", json.dumps({"conn_type": GCP, "extra": extra}))
    assert resolve_gcs_credentials("gcp_empty").source == "adc"
