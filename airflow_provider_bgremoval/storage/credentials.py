"""
GCP credentials without ``apache-airflow-providers-google``.

The provider reuses the connection users already have for Google Cloud (``google_cloud_default``,
type ``google_cloud_platform``, owned by providers-google) and reads the same extras providers-google
reads, bare or with the form prefix ``extra__google_cloud_platform__``:

* ``project``: project id (for the client's billing/quota project);
* ``keyfile_dict``: a service-account key, as a JSON string or a dict;
* ``key_path``: path of a service-account key file on the worker;
* ``scope``: comma-separated OAuth scopes.

Resolution order (:func:`resolve_gcs_credentials`):

1. ``STORAGE_EMULATOR_HOST`` is set: no credentials at all (google-cloud-storage then talks to the
   emulator anonymously); only ``project`` is read from the connection if it exists.
2. ``keyfile_dict`` (``key_path`` together with it is a configuration error, as in providers-google).
3. ``key_path``.
4. Otherwise (no connection id, connection not defined, or no key in it): Application Default
   Credentials via ``google.auth.default`` (gcloud ADC, ``GOOGLE_APPLICATION_CREDENTIALS``, Workload
   Identity, Composer's service account).

Key material is never logged or put in exception texts; the private key is registered with Airflow's
secret masker in case anything downstream prints it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_bgremoval.storage.exceptions import StorageConfigError

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

__all__ = [
    "DEFAULT_GCP_CONN_ID",
    "DEFAULT_SCOPES",
    "EMULATOR_ENV_VAR",
    "EMULATOR_PROJECT",
    "ResolvedCredentials",
    "resolve_gcs_credentials",
]

log = logging.getLogger(__name__)

DEFAULT_GCP_CONN_ID = "google_cloud_default"
#: Least privilege for what the provider does (list, read, create objects). Override with ``scope``.
DEFAULT_SCOPES: tuple[str, ...] = ("https://www.googleapis.com/auth/devstorage.read_write",)
EMULATOR_ENV_VAR = "STORAGE_EMULATOR_HOST"
#: Project reported to the emulator when the connection names none.
EMULATOR_PROJECT = "emulator"
_CONN_TYPE = "google_cloud_platform"


@dataclass(frozen=True)
class ResolvedCredentials:
    """
    Outcome of :func:`resolve_gcs_credentials`.

    :param credentials: google-auth credentials, or ``None`` for the emulator (anonymous).
    :param project: project id to give ``storage.Client``, if known.
    :param source: where they came from: ``emulator``, ``keyfile_dict``, ``key_path`` or ``adc``.
    :param emulator_host: the value of ``STORAGE_EMULATOR_HOST`` when ``source == "emulator"``.
    """

    credentials: Credentials | None
    project: str | None
    source: str
    emulator_host: str | None = None

    def __repr__(self) -> str:  # never show the credentials object (it can carry tokens)
        return f"ResolvedCredentials(source={self.source!r}, project={self.project!r})"


def get_extra_field(extras: Mapping[str, Any], field: str) -> Any:
    """
    Read a connection extra the way providers-google's ``GoogleBaseHook._get_field`` does.

    The bare key wins when present (even if empty); otherwise ``extra__google_cloud_platform__<field>``.

    :param extras: the connection's ``extra_dejson``.
    :param field: bare field name (``project``, ``key_path``, ``keyfile_dict``, ``scope``).
    """
    if field in extras:
        return extras[field] or None
    return extras.get(f"extra__{_CONN_TYPE}__{field}") or None


def parse_scopes(value: Any) -> list[str] | None:
    """Turn the ``scope`` extra (comma-separated string or list) into a list, or ``None`` if empty."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    scopes = [s.strip() for s in items if s and s.strip()]
    return scopes or None


def _load_extras(gcp_conn_id: str) -> Mapping[str, Any] | None:
    """The connection's extras, or ``None`` when the connection is not defined."""
    from airflow_provider_bgremoval._compat import AirflowNotFoundException, get_connection

    try:
        conn = get_connection(gcp_conn_id)  # keeps the key material out of dag.test()'s DEBUG log
    except AirflowNotFoundException:
        return None
    extras = conn.extra_dejson
    return extras if isinstance(extras, Mapping) else {}


def _mask(value: str) -> None:
    from airflow_provider_bgremoval._compat import mask_secret  # not logged in clear by dag.test()

    mask_secret(value)


def _keyfile_info(raw: Any, gcp_conn_id: str) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        info = dict(raw)
    elif isinstance(raw, str):
        try:
            info = json.loads(raw)
        except ValueError:
            # Do not echo the value: it is key material.
            raise StorageConfigError(
                f"connection {gcp_conn_id!r}: extra 'keyfile_dict' is not valid JSON"
            ) from None
        if not isinstance(info, dict):
            raise StorageConfigError(
                f"connection {gcp_conn_id!r}: extra 'keyfile_dict' must be a JSON object"
            )
    else:
        raise StorageConfigError(
            f"connection {gcp_conn_id!r}: extra 'keyfile_dict' must be a JSON string or an object, "
            f"not {type(raw).__name__}"
        )
    private_key = info.get("private_key")
    if isinstance(private_key, str) and private_key:
        _mask(private_key)
    return info


def resolve_gcs_credentials(
    gcp_conn_id: str | None = DEFAULT_GCP_CONN_ID,
    *,
    scopes: Sequence[str] | None = None,
) -> ResolvedCredentials:
    """
    Resolve credentials and project for google-cloud-storage (see the module docstring for the order).

    :param gcp_conn_id: Airflow connection id of a ``google_cloud_platform`` connection; ``None``
        skips the connection and goes to ADC (or the emulator).
    :param scopes: OAuth scopes; default: the connection's ``scope`` extra, else :data:`DEFAULT_SCOPES`.
    :raises StorageConfigError: conflicting or unreadable key settings, or no credentials found.
    """
    extras = _load_extras(gcp_conn_id) if gcp_conn_id else None
    fields: Mapping[str, Any] = extras if extras is not None else {}
    conn_project = get_extra_field(fields, "project")

    emulator_host = os.environ.get(EMULATOR_ENV_VAR)
    if emulator_host:
        log.info(
            "STORAGE_EMULATOR_HOST is set: using the GCS emulator at %s without credentials", emulator_host
        )
        return ResolvedCredentials(
            credentials=None,
            project=_first_project(conn_project, EMULATOR_PROJECT),
            source="emulator",
            emulator_host=emulator_host,
        )

    effective_scopes = list(scopes or parse_scopes(get_extra_field(fields, "scope")) or DEFAULT_SCOPES)
    key = _from_connection_key(fields, gcp_conn_id, effective_scopes)
    if key is not None:
        credentials, key_project, source = key
        return ResolvedCredentials(credentials, _first_project(conn_project, key_project), source)

    if extras is None and gcp_conn_id:
        log.info("connection %r is not defined: using Application Default Credentials", gcp_conn_id)
    else:
        log.info("no service-account key configured: using Application Default Credentials")
    credentials, adc_project = _from_adc(gcp_conn_id, effective_scopes)
    return ResolvedCredentials(credentials, _first_project(conn_project, adc_project), "adc")


def _from_connection_key(
    fields: Mapping[str, Any], gcp_conn_id: str | None, scopes: list[str]
) -> tuple[Credentials, Any, str] | None:
    """
    Credentials, the key's project and the source from the connection's key extras, or ``None``.

    :raises StorageConfigError: both ``key_path`` and ``keyfile_dict`` are set, or the key is unusable.
    """
    key_path = get_extra_field(fields, "key_path")
    keyfile_dict = get_extra_field(fields, "keyfile_dict")
    if key_path and keyfile_dict:
        raise StorageConfigError(
            f"connection {gcp_conn_id!r}: 'key_path' and 'keyfile_dict' are mutually exclusive; set only one"
        )
    if not (key_path or keyfile_dict):
        return None
    assert gcp_conn_id is not None  # extras come from a connection
    if keyfile_dict:
        return (*_from_keyfile_dict(keyfile_dict, gcp_conn_id, scopes), "keyfile_dict")
    return (*_from_key_path(key_path, gcp_conn_id, scopes), "key_path")


def _first_project(*candidates: Any) -> str | None:
    """The first non-empty project id among ``candidates``."""
    return next((str(project) for project in candidates if project), None)


def _from_keyfile_dict(raw: Any, gcp_conn_id: str, scopes: list[str]) -> tuple[Credentials, Any]:
    """Service-account credentials and the key's project from the ``keyfile_dict`` extra."""
    from google.oauth2 import service_account

    info = _keyfile_info(raw, gcp_conn_id)
    credentials = _load_service_account(
        service_account.Credentials.from_service_account_info,
        info,
        scopes,
        f"connection {gcp_conn_id!r}: 'keyfile_dict'",
    )
    log.info("GCS credentials: service-account key from connection %r (keyfile_dict)", gcp_conn_id)
    return credentials, info.get("project_id")


def _from_key_path(raw: Any, gcp_conn_id: str, scopes: list[str]) -> tuple[Credentials, Any]:
    """Service-account credentials and the key's project from the file named by ``key_path``."""
    from google.oauth2 import service_account

    path = os.fspath(str(raw))
    if not path.endswith(".json"):
        # providers-google refuses legacy P12 keys as well.
        raise StorageConfigError(
            f"connection {gcp_conn_id!r}: 'key_path' must name a JSON service-account key file"
        )
    try:
        credentials = _load_service_account(
            service_account.Credentials.from_service_account_file,
            path,
            scopes,
            f"connection {gcp_conn_id!r}: key file {path!r}",
        )
    except FileNotFoundError:
        raise StorageConfigError(
            f"connection {gcp_conn_id!r}: key file {path!r} does not exist on this worker"
        ) from None
    log.info("GCS credentials: service-account key file from connection %r (key_path)", gcp_conn_id)
    return credentials, getattr(credentials, "project_id", None)


def _load_service_account(
    load: Callable[..., Credentials], key: Any, scopes: list[str], what: str
) -> Credentials:
    """
    ``load(key, scopes=scopes)``; a key google-auth cannot use becomes :class:`StorageConfigError`.

    The error names ``what`` and the exception's type only: its text can quote key material.
    """
    try:
        return load(key, scopes=scopes)
    except (ValueError, KeyError) as exc:
        raise StorageConfigError(
            f"{what} is not a usable service-account key ({type(exc).__name__})"
        ) from None


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
            f"({exc})"
        ) from exc
    return credentials, project
