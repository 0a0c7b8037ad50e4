"""
GCP credentials without ``apache-airflow-providers-google``: providers-google's connection extras, then
Application Default Credentials; none for an emulator. Resolution order and key handling: docs/storage.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_bgremoval._compat import AirflowNotFoundException, get_connection, mask_secret
from airflow_provider_bgremoval.options import parse_flag
from airflow_provider_bgremoval.storage.exceptions import StorageConfigError

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

log = logging.getLogger(__name__)

DEFAULT_GCP_CONN_ID = "google_cloud_default"
#: Least privilege for what the provider does (list, read, create objects). Override with ``scope``.
DEFAULT_SCOPES: tuple[str, ...] = ("https://www.googleapis.com/auth/devstorage.read_write",)
#: Project reported to the emulator when the connection names none.
EMULATOR_PROJECT = "emulator"
#: Scope of the identity that impersonates (the IAM Credentials API accepts no narrower one).
IMPERSONATION_SOURCE_SCOPES: tuple[str, ...] = ("https://www.googleapis.com/auth/cloud-platform",)


@dataclasses.dataclass(frozen=True)
class ResolvedCredentials:
    """
    Outcome of :func:`resolve_gcs_credentials`.

    :param credentials: google-auth credentials, or ``None`` for the emulator (anonymous).
    :param project: project id to give ``storage.Client``, if known.
    :param source: where they came from: ``emulator``, ``keyfile_dict``, ``key_path``,
        ``credential_config_file``, ``is_anonymous`` or ``adc``.
    :param impersonated: the service account these credentials act as (``impersonation_chain``), if any.
    """

    credentials: Credentials | None = dataclasses.field(repr=False)  # never shown: it can carry tokens
    project: str | None
    source: str
    impersonated: str | None = None


def get_extra_field(extras: Mapping[str, Any], field: str) -> Any:
    """
    A connection extra as providers-google reads it: the bare key if present, else the prefixed one.

    :param extras: the connection's ``extra_dejson``.
    :param field: bare field name (``project``, ``key_path``, ``keyfile_dict``, ``scope``).
    """
    if field in extras:
        return extras[field] or None
    return extras.get(f"extra__google_cloud_platform__{field}") or None


def parse_scopes(value: Any) -> list[str] | None:
    """A ``scope`` or ``impersonation_chain`` extra (comma-separated or a list) as a list, or ``None``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [s.strip() for s in items if s and s.strip()] or None


def _load_extras(gcp_conn_id: str) -> Mapping[str, Any] | None:
    """
    The connection's extras, or ``None`` when the connection is not defined; an extra that is not a
    JSON object is refused (Airflow reads one that is not JSON as no extras: its key would go unseen
    and Application Default Credentials, another identity, be used).
    """
    try:
        conn = get_connection(gcp_conn_id)  # keeps the key material out of dag.test()'s DEBUG log
    except AirflowNotFoundException:
        return None
    extras = conn.extra_dejson  # registers its secrets with the masker
    if isinstance(extras, Mapping) and (extras or _empty_object(conn.extra)):
        return extras
    raise StorageConfigError(
        f"connection {gcp_conn_id!r}: its extra is not a JSON object of settings (not shown: it may "
        "hold a key); fix it rather than run as another identity"
    )


def _empty_object(raw: str | None) -> bool:
    """Whether a connection's raw extra holds no settings: blank, or an empty JSON object."""
    if raw is None or not raw.strip():
        return True
    try:
        return bool(json.loads(raw) == {})
    except ValueError:
        return False


def resolve_gcs_credentials(
    gcp_conn_id: str | None = DEFAULT_GCP_CONN_ID,
    *,
    scopes: Sequence[str] | None = None,
) -> ResolvedCredentials:
    """
    Resolve credentials and project for google-cloud-storage (order: docs/storage.md).

    :param gcp_conn_id: a ``google_cloud_platform`` connection id; ``None``: ADC (or the emulator).
    :param scopes: OAuth scopes; default: the connection's ``scope`` extra, else :data:`DEFAULT_SCOPES`.
    :raises StorageConfigError: conflicting or unreadable key settings, or no credentials found.
    """
    extras = _load_extras(gcp_conn_id) if gcp_conn_id else None
    fields: Mapping[str, Any] = extras if extras is not None else {}
    conn_project = get_extra_field(fields, "project")

    emulator_host = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator_host:
        log.info("STORAGE_EMULATOR_HOST is set: the GCS emulator at %s, without credentials", emulator_host)
        return ResolvedCredentials(None, str(conn_project or EMULATOR_PROJECT), "emulator")

    effective_scopes = list(scopes or parse_scopes(get_extra_field(fields, "scope")) or DEFAULT_SCOPES)
    chain = parse_scopes(get_extra_field(fields, "impersonation_chain")) or []
    # The identity that impersonates calls the IAM Credentials API: it needs its scope, not the storage one.
    source_scopes = list(IMPERSONATION_SOURCE_SCOPES) if chain else effective_scopes
    key = _from_connection_key(fields, gcp_conn_id, source_scopes)
    if key is None:
        undefined = extras is None and gcp_conn_id
        why = (
            f"connection {gcp_conn_id!r} is not defined" if undefined else "no service-account key configured"
        )
        log.info("%s: using Application Default Credentials", why)
        key = ("adc", *_from_adc(gcp_conn_id, source_scopes))
    source, credentials, found_project = key
    if chain:
        credentials = _impersonate(credentials, chain, effective_scopes)
        found_project = _project_of_service_account(chain[-1]) or found_project
        log.info("GCS credentials: %s impersonating %s", source, chain[-1])
    project = conn_project or found_project
    return ResolvedCredentials(
        credentials, str(project) if project else None, source, impersonated=chain[-1] if chain else None
    )


def _impersonate(source: Credentials, chain: list[str], scopes: list[str]) -> Credentials:
    """
    Short-lived credentials of the chain's last service account, obtained by ``source`` through the
    accounts before it (each granting the one before it Service Account Token Creator), as providers-google.
    """
    from google.auth import impersonated_credentials

    return impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
        source_credentials=source, target_principal=chain[-1], delegates=chain[:-1], target_scopes=scopes
    )


def _project_of_service_account(email: str) -> str | None:
    """The project of ``name@project.iam.gserviceaccount.com`` (providers-google's default), else ``None``."""
    _, _, domain = email.partition("@")
    project, _, rest = domain.partition(".")
    return project if project and rest == "iam.gserviceaccount.com" else None


#: providers-google's key options: mutually exclusive; without one, Application Default Credentials.
_KEY_OPTIONS = ("key_path", "keyfile_dict", "credential_config_file", "key_secret_name", "is_anonymous")
#: providers-google extras this provider cannot act on: refused, never replaced by another identity (ADC).
_UNSUPPORTED_OPTIONS = ("key_secret_name", "idp_issuer_url")


def _is_set(fields: Mapping[str, Any], option: str) -> bool:
    value = get_extra_field(fields, option)
    if option == "is_anonymous" and value is not None:  # a boolean form field, or its text
        return parse_flag(value, parameter="is_anonymous")
    return bool(value)


def _key_option(fields: Mapping[str, Any], where: str) -> str | None:
    """The connection's one key option, or ``None`` (ADC); anonymous access impersonates no one."""
    given = [option for option in _KEY_OPTIONS if _is_set(fields, option)]
    if len(given) > 1:
        raise StorageConfigError(f"{where}: {' and '.join(map(repr, given))} are mutually exclusive")
    for option in _UNSUPPORTED_OPTIONS:
        if get_extra_field(fields, option):
            raise StorageConfigError(
                f"{where}: extra {option!r} is not supported by this provider, which reads 'keyfile_dict', "
                "'key_path', 'credential_config_file' or 'is_anonymous' (else Application Default "
                "Credentials): configure one of them rather than run as another identity"
            )
    if given == ["is_anonymous"] and parse_scopes(get_extra_field(fields, "impersonation_chain")):
        raise StorageConfigError(
            f"{where}: 'is_anonymous' and 'impersonation_chain' exclude each other: an anonymous "
            "identity cannot obtain another account's token; remove one of them"
        )
    return given[0] if given else None


def _from_connection_key(
    fields: Mapping[str, Any], gcp_conn_id: str | None, scopes: list[str]
) -> tuple[str, Credentials, Any] | None:
    """The source, credentials and project from the connection's key option, or ``None`` (none set)."""
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError

    where = f"connection {gcp_conn_id!r}"
    option = _key_option(fields, where)
    if option is None:
        return None
    if option == "is_anonymous":
        log.info("GCS credentials: anonymous (connection %r sets is_anonymous)", gcp_conn_id)
        return option, AnonymousCredentials(), None  # type: ignore[no-untyped-call]
    key, load, what, kind = _key_loader(option, get_extra_field(fields, option), where)
    try:  # errors name the key's place and the exception's type only, never the key
        credentials, project = load(key, scopes=scopes)
    except FileNotFoundError:
        raise StorageConfigError(f"{what} does not exist on this worker") from None
    except OSError as exc:  # a folder, no read permission
        raise StorageConfigError(f"{what} cannot be read on this worker ({type(exc).__name__})") from None
    except (ValueError, KeyError, TypeError, DefaultCredentialsError) as exc:  # TypeError: an encrypted key
        raise StorageConfigError(f"{what} is not a usable {kind} ({type(exc).__name__})") from None
    log.info("GCS credentials: %s from connection %r (%s)", kind, gcp_conn_id, option)
    return option, credentials, project


_Loader = Callable[..., "tuple[Credentials, Any]"]


def _key_loader(option: str, value: Any, where: str) -> tuple[Any, _Loader, str, str]:
    """What to load for ``option`` and how: ``(key, load, what, kind)``."""
    from google.oauth2 import service_account

    def service_account_key(load: Callable[..., Credentials]) -> _Loader:
        def loaded(key: Any, scopes: list[str]) -> tuple[Credentials, Any]:
            credentials = load(key, scopes=scopes)
            return credentials, getattr(credentials, "project_id", None)

        return loaded

    kind = "service-account key"
    if option == "keyfile_dict":
        key = _keyfile_info(value, f"{where}: extra 'keyfile_dict'")
        return (
            key,
            service_account_key(service_account.Credentials.from_service_account_info),
            f"{where}: 'keyfile_dict'",
            kind,
        )
    if option == "key_path":
        path = str(value)
        if not path.endswith(".json"):  # providers-google refuses legacy P12 keys as well
            raise StorageConfigError(f"{where}: 'key_path' must name a JSON service-account key file")
        return (
            path,
            service_account_key(service_account.Credentials.from_service_account_file),
            f"{where}: key file {path!r}",
            kind,
        )
    return value, _load_credential_config, f"{where}: 'credential_config_file'", "credential configuration"


def _load_credential_config(value: Any, scopes: list[str]) -> tuple[Credentials, Any]:
    """
    providers-google's ``credential_config_file``: the path of a credential configuration file (e.g.
    Workload Identity Federation's), or its content as JSON text or an object.
    """
    import google.auth

    if isinstance(value, str) and not value.lstrip().startswith("{"):  # a path, not JSON text
        if not os.path.exists(value):  # google-auth says DefaultCredentialsError
            raise FileNotFoundError(value)
        return google.auth.load_credentials_from_file(value, scopes=scopes)  # type: ignore[no-untyped-call]
    info = dict(value) if isinstance(value, Mapping) else json.loads(value)
    if not isinstance(info, dict):
        raise ValueError("not a JSON object")
    return google.auth.load_credentials_from_dict(info, scopes=scopes)  # type: ignore[no-untyped-call]


def _keyfile_info(raw: Any, what: str) -> dict[str, Any]:
    """The ``keyfile_dict`` extra as a dict, its private key registered with the secret masker."""
    try:
        info = dict(raw) if isinstance(raw, Mapping) else json.loads(raw)
    except (TypeError, ValueError):
        info = None
    if not isinstance(info, dict):  # never echo key material
        raise StorageConfigError(f"{what} is not valid JSON of a key object (got {type(raw).__name__})")
    private_key = info.get("private_key")
    if isinstance(private_key, str) and private_key:
        mask_secret(private_key)  # through _compat: not logged in clear by dag.test()
        if "\\n" in private_key:  # a key whose JSON was escaped twice; providers-google reads it too
            info["private_key"] = private_key.replace("\\n", "\n")
            mask_secret(info["private_key"])
    return info


def _from_adc(gcp_conn_id: str | None, scopes: list[str]) -> tuple[Credentials, Any]:
    """Application Default Credentials and their project."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, project = google.auth.default(scopes=scopes)
    except DefaultCredentialsError as exc:
        raise StorageConfigError(
            "no GCP credentials: define the Airflow connection "
            f"{gcp_conn_id or DEFAULT_GCP_CONN_ID!r} with 'keyfile_dict' or 'key_path', configure "
            "Application Default Credentials, or set STORAGE_EMULATOR_HOST for an emulator "
            f"({_adc_failure(exc)})"
        ) from None  # its text may quote GOOGLE_APPLICATION_CREDENTIALS
    return credentials, project


#: The variable google-auth reads first; it should name a file, but sometimes holds a pasted key.
_ADC_VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"


def _adc_failure(exc: Exception) -> str:
    """
    google-auth's reason, without :data:`_ADC_VARIABLE`'s value (its messages quote the "file name",
    the whole key when the key itself was put in the variable) and naming a wrapped error by type only.
    """
    message, *wrapped = exc.args or (str(exc),)
    reason = str(message)
    value = os.environ.get(_ADC_VARIABLE)
    if value:
        reason = reason.replace(value, f"${_ADC_VARIABLE}")
    return " ".join([reason, *(f"({type(item).__name__})" for item in wrapped[:1])])
