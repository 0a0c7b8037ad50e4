"""Provider registration for Airflow's ProvidersManager. Imports nothing heavy (runs in every component)."""

from __future__ import annotations

from typing import Any

_PACKAGE = "airflow_provider_bgremoval"
_INTEGRATIONS = ("Pixelcut", "Pixian.AI", "Poof")
#: Modules of ``airflow_provider_bgremoval.operators`` that define operators (every one is listed).
_OPERATORS = ("bucket", "preflight", "monitor", "report", "sharding")

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
}


def _connection_type(
    conn_type: str,
    hook: str,
    hook_name: str,
    *,
    relabeling: dict[str, str],
    hidden: list[str],
    placeholders: dict[str, str],
    extra_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "connection-type": conn_type,
        "hook-class-name": f"{_PACKAGE}.hooks.{hook}",
        "hook-name": hook_name,
        "ui-field-behaviour": {
            "hidden-fields": hidden,
            "relabeling": relabeling,
            "placeholders": placeholders,
        },
        "conn-fields": {**_COMMON_FIELDS, **(extra_fields or {})},
    }


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata (validated against Airflow's provider-info schema in tests)."""
    return {
        "package-name": "airflow-provider-bgremoval",
        "name": "Background Removal (Pixelcut, Pixian.AI, Poof)",
        # Plain words: Airflow's Providers page strips RST syntax, links only bare URLs and drops the
        # space after each link. The vendors' documentation is each integration's external-doc-url.
        "description": (
            "Remove and generate image backgrounds in Google Cloud Storage buckets with Pixelcut, "
            "Pixian.AI and Poof."
        ),
        "integrations": [
            {
                "integration-name": "Pixelcut",
                "external-doc-url": "https://www.pixelcut.ai/docs",
                "tags": ["service"],
            },
            {
                "integration-name": "Pixian.AI",
                "external-doc-url": "https://pixian.ai/api",
                "tags": ["service"],
            },
            {"integration-name": "Poof", "external-doc-url": "https://docs.poof.bg/", "tags": ["service"]},
        ],
        "hooks": [
            {"integration-name": "Pixelcut", "python-modules": [f"{_PACKAGE}.hooks.pixelcut"]},
            {"integration-name": "Pixian.AI", "python-modules": [f"{_PACKAGE}.hooks.pixian"]},
            {"integration-name": "Poof", "python-modules": [f"{_PACKAGE}.hooks.poof"]},
        ],
        # The credits sensor, trigger and operators serve every vendor (picked by connection type).
        "operators": [
            {"integration-name": name, "python-modules": [f"{_PACKAGE}.operators.{m}" for m in _OPERATORS]}
            for name in _INTEGRATIONS
        ],
        "sensors": [
            {"integration-name": name, "python-modules": [f"{_PACKAGE}.sensors.credits"]}
            for name in _INTEGRATIONS
        ],
        "triggers": [
            {"integration-name": name, "python-modules": [f"{_PACKAGE}.triggers.credits"]}
            for name in _INTEGRATIONS
        ],
        "connection-types": [
            _connection_type(
                "pixelcut",
                "pixelcut.PixelcutHook",
                "Pixelcut",
                relabeling={"password": "API key", "host": "Base URL override"},
                hidden=["schema", "login", "port"],
                placeholders={"host": "https://api.developer.pixelcut.ai", "password": "sk_..."},
            ),
            _connection_type(
                "pixian",
                "pixian.PixianHook",
                "Pixian.AI",
                relabeling={"login": "API id", "password": "API secret", "host": "Base URL override"},
                hidden=["schema", "port"],
                placeholders={"host": "https://api.pixian.ai", "login": "px..."},
                extra_fields={
                    "test_mode": {
                        "label": "Test mode",
                        "description": "Send test=true: free, watermarked results (for integration tests).",
                        "schema": {"type": ["boolean", "null"], "default": False},
                    },
                },
            ),
            _connection_type(
                "poof",
                "poof.PoofHook",
                "Poof",
                relabeling={"password": "API key", "host": "Base URL override"},
                hidden=["schema", "login", "port"],
                placeholders={"host": "https://api.poof.bg", "password": "pk_..."},
            ),
        ],
    }
