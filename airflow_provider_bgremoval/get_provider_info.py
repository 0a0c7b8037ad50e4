"""Provider registration for Airflow's ProvidersManager. Imports nothing heavy (runs in every component)."""

from __future__ import annotations

from typing import Any

_PACKAGE = "airflow_provider_bgremoval"
#: Every module with operators, sensors, triggers; each serves every vendor (picked by connection type).
_MODULES = {
    "operators": ("bucket", "preflight", "monitor", "report", "sharding", "render"),
    "sensors": ("credits",),
    "triggers": ("credits", "arrivals"),
}
_COMMON_FIELDS: dict[str, Any] = {
    "timeout": {
        "label": "Timeout (s)",
        "description": "Idle/read timeout of one HTTP call in seconds.",
        "schema": {"type": ["number", "null"], "minimum": 1},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of a failed call (429, 5xx, network) before giving up.",
        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
    },
    "requests_per_second": {
        "label": "Requests per second",
        "description": "The account's request-rate limit (empty: the vendor's documented rate; 0: no "
        "pacing). Each task paces itself under it and slows down on 429s.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
}
_API_KEY = {"relabeling": {"password": "API key"}, "hidden": ["schema", "login", "port"]}
#: integration name, docs URL, connection form (host: the base-URL override); the hook is ``<Type>Hook``.
_VENDORS: dict[str, dict[str, Any]] = {
    "pixelcut": {
        "name": "Pixelcut",
        "docs": "https://www.pixelcut.ai/docs",
        **_API_KEY,
        "placeholders": {"host": "https://api.developer.pixelcut.ai", "password": "sk_..."},
    },
    "pixian": {
        "name": "Pixian.AI",
        "docs": "https://pixian.ai/api",
        "relabeling": {"login": "API id", "password": "API secret"},
        "hidden": ["schema", "port"],
        "placeholders": {"host": "https://api.pixian.ai", "login": "px..."},
        "fields": {
            "test_mode": {
                "label": "Test mode",
                "description": "Send test=true: free, watermarked results (for integration tests).",
                "schema": {"type": ["boolean", "null"], "default": False},
            },
        },
    },
    "poof": {
        "name": "Poof",
        "docs": "https://docs.poof.bg/",
        **_API_KEY,
        "placeholders": {"host": "https://api.poof.bg", "password": "pk_..."},
    },
}


def _connection_type(conn_type: str, vendor: dict[str, Any]) -> dict[str, Any]:
    return {
        "connection-type": conn_type,
        "hook-class-name": f"{_PACKAGE}.hooks.{conn_type}.{conn_type.capitalize()}Hook",
        "hook-name": vendor["name"],
        "ui-field-behaviour": {
            "hidden-fields": vendor["hidden"],
            "relabeling": {**vendor["relabeling"], "host": "Base URL override"},
            "placeholders": vendor["placeholders"],
        },
        "conn-fields": {**_COMMON_FIELDS, **vendor.get("fields", {})},
    }


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata (validated against Airflow's provider-info schema in tests)."""
    names = [vendor["name"] for vendor in _VENDORS.values()]
    sections = {
        section: [
            {"integration-name": name, "python-modules": [f"{_PACKAGE}.{section}.{m}" for m in modules]}
            for name in names
        ]
        for section, modules in _MODULES.items()
    }
    return {
        "package-name": "airflow-provider-bgremoval",
        "name": "Background Removal (Pixelcut, Pixian.AI, Poof)",
        # Plain words: the Providers page strips RST and mangles links (vendor docs: external-doc-url).
        "description": (
            "Remove and generate image backgrounds in Google Cloud Storage buckets with Pixelcut, "
            "Pixian.AI and Poof."
        ),
        "integrations": [
            {"integration-name": vendor["name"], "external-doc-url": vendor["docs"], "tags": ["service"]}
            for vendor in _VENDORS.values()
        ],
        "hooks": [
            {"integration-name": vendor["name"], "python-modules": [f"{_PACKAGE}.hooks.{conn_type}"]}
            for conn_type, vendor in _VENDORS.items()
        ],
        **sections,
        "connection-types": [_connection_type(conn_type, vendor) for conn_type, vendor in _VENDORS.items()],
    }
