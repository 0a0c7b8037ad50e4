"""Provider registration: the metadata validates against Airflow's own schemas and Airflow finds it.

Runs on the newest Airflow (``make test``) and on the oldest supported one (``make test-compat``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from airflow_provider_bgremoval.get_provider_info import get_provider_info

DISTRIBUTION = "airflow-provider-bgremoval"
HOOKS = {
    "pixelcut": "airflow_provider_bgremoval.hooks.pixelcut.PixelcutHook",
    "pixian": "airflow_provider_bgremoval.hooks.pixian.PixianHook",
    "poof": "airflow_provider_bgremoval.hooks.poof.PoofHook",
}
AIRFLOW_VERSION = Version(importlib.metadata.version("apache-airflow-core"))
#: Airflow reads connection-form metadata from the provider info from 3.2 on (before: hook methods + FAB).
DECLARATIVE_UI = AIRFLOW_VERSION.release >= (3, 2)

pytestmark = pytest.mark.compat


def _airflow_schema(name: str) -> dict[str, Any]:
    return json.loads((importlib.resources.files("airflow") / name).read_text())


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    return get_provider_info()


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


# -- schema ----------------------------------------------------------------------------------------


def test_validates_against_airflow_provider_info_schema(info: dict[str, Any]) -> None:
    jsonschema.validate(info, _airflow_schema("provider_info.schema.json"))


def test_connection_types_validate_against_the_stricter_provider_yaml_schema(info: dict[str, Any]) -> None:
    schema = _airflow_schema("provider.yaml.schema.json")
    item_schema = schema["properties"]["connection-types"]["items"]
    if "definitions" in schema:
        item_schema = {**item_schema, "definitions": schema["definitions"]}
    for item in info["connection-types"]:
        jsonschema.validate(item, item_schema)


def test_conn_fields_are_valid_json_schemas(info: dict[str, Any]) -> None:
    for item in info["connection-types"]:
        for name, field in item["conn-fields"].items():
            jsonschema.Draft7Validator.check_schema(field["schema"])
            assert field["label"], name


def test_package_name_is_the_distribution_name(info: dict[str, Any]) -> None:
    assert info["package-name"] == DISTRIBUTION
    assert canonicalize_name(importlib.metadata.metadata(DISTRIBUTION)["Name"]) == DISTRIBUTION


def test_entry_point_is_registered() -> None:
    points = importlib.metadata.entry_points(group="apache_airflow_provider")
    ours = [p for p in points if p.dist is not None and canonicalize_name(p.dist.name) == DISTRIBUTION]
    assert len(ours) == 1
    assert ours[0].value == "airflow_provider_bgremoval.get_provider_info:get_provider_info"
    assert ours[0].load()() == get_provider_info()


def test_get_provider_info_imports_nothing_heavy() -> None:
    code = (
        "import sys; from airflow_provider_bgremoval.get_provider_info import get_provider_info; "
        "get_provider_info(); "
        "names = ('httpx', 'PIL', 'airflow', 'google.cloud.storage', 'tenacity'); "
        "heavy = [m for m in names if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


# -- what it names exists --------------------------------------------------------------------------


def test_connection_types(info: dict[str, Any]) -> None:
    declared = {item["connection-type"]: item["hook-class-name"] for item in info["connection-types"]}
    assert declared == HOOKS


@pytest.mark.parametrize(("conn_type", "dotted"), sorted(HOOKS.items()))
def test_hook_classes_import_and_agree(conn_type: str, dotted: str, info: dict[str, Any]) -> None:
    hook = _import(dotted)
    item = next(i for i in info["connection-types"] if i["connection-type"] == conn_type)
    assert hook.conn_type == conn_type
    assert hook.default_conn_name == f"{conn_type}_default"
    assert hook.hook_name == item["hook-name"]
    assert callable(getattr(hook, "test_connection", None))


def test_every_listed_module_imports(info: dict[str, Any]) -> None:
    integrations = {i["integration-name"] for i in info["integrations"]}
    modules = []
    for section in ("hooks", "operators", "sensors", "triggers"):
        for entry in info.get(section, []):
            assert entry["integration-name"] in integrations, (section, entry)
            modules += entry["python-modules"]
    assert modules
    for module in modules:
        importlib.import_module(module)


def _modules_defining(base: type, *, but_not: type | None = None) -> set[str]:
    """The package's modules that define a usable subclass of ``base`` (deprecated shims define none)."""
    import inspect
    import pkgutil

    import airflow_provider_bgremoval as package

    found = set()
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if not (inspect.isclass(value) and value.__module__ == module.__name__):
                continue
            excluded = but_not is not None and issubclass(value, but_not)
            if issubclass(value, base) and not excluded and _is_usable(value):
                found.add(module.__name__)
    return found


def _is_usable(cls: type) -> bool:
    """An operator with its own ``execute`` (a base holding parameters only is not registered)."""
    from airflow.sdk import BaseOperator

    return not issubclass(cls, BaseOperator) or cls.execute is not BaseOperator.execute


def _listed(info: dict[str, Any], section: str) -> set[str]:
    return {module for entry in info[section] for module in entry["python-modules"]}


def test_every_operator_sensor_and_trigger_module_is_registered(info: dict[str, Any]) -> None:
    from airflow.sdk import BaseOperator, BaseSensorOperator
    from airflow.triggers.base import BaseTrigger

    operators = _modules_defining(BaseOperator, but_not=BaseSensorOperator)
    assert "airflow_provider_bgremoval.operators.report" in operators  # RunReportOperator
    assert _listed(info, "operators") == operators
    assert _listed(info, "sensors") == _modules_defining(BaseSensorOperator)
    assert _listed(info, "triggers") == _modules_defining(BaseTrigger)
    for section in ("operators", "sensors", "triggers"):  # every vendor integration lists them all
        assert len({tuple(entry["python-modules"]) for entry in info[section]}) == 1, section


@pytest.mark.parametrize(("conn_type", "dotted"), sorted(HOOKS.items()))
def test_legacy_ui_field_behaviour_matches_the_provider_info(
    conn_type: str, dotted: str, info: dict[str, Any]
) -> None:
    """Before 3.2 Airflow asks the hook; both sources must say the same."""
    declared = next(i for i in info["connection-types"] if i["connection-type"] == conn_type)[
        "ui-field-behaviour"
    ]
    legacy = _import(dotted).get_ui_field_behaviour()
    assert sorted(legacy["hidden_fields"]) == sorted(declared["hidden-fields"])
    assert legacy["relabeling"] == declared["relabeling"]
    # the legacy form may add placeholders (e.g. for the raw "extra" JSON field it still shows)
    assert declared["placeholders"].items() <= legacy.get("placeholders", {}).items()


def test_ui_labels(info: dict[str, Any]) -> None:
    by_type = {i["connection-type"]: i for i in info["connection-types"]}
    assert by_type["pixelcut"]["ui-field-behaviour"]["relabeling"]["password"] == "API key"
    assert by_type["poof"]["ui-field-behaviour"]["relabeling"]["password"] == "API key"
    assert by_type["pixian"]["ui-field-behaviour"]["relabeling"]["password"] == "API secret"
    assert by_type["pixian"]["ui-field-behaviour"]["relabeling"]["login"] == "API id"
    assert "login" not in by_type["pixian"]["ui-field-behaviour"]["hidden-fields"]
    assert "test_mode" in by_type["pixian"]["conn-fields"]
    for item in by_type.values():
        assert {"timeout", "max_retries"} <= set(item["conn-fields"])
        assert "host" not in item["ui-field-behaviour"]["hidden-fields"]  # the base-URL override


# -- discovery by Airflow --------------------------------------------------------------------------


def _json_from(stdout: str) -> list[dict[str, Any]]:
    """The JSON list the CLI printed (log lines may surround it)."""
    start = stdout.index("[{")
    end = stdout.rindex("}]") + 2
    return json.loads(stdout[start:end])  # type: ignore[no-any-return]


def test_airflow_providers_list_shows_the_provider() -> None:
    """A fresh process discovers the provider through its entry point (no database needed, ~2 s)."""
    out = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "providers", "list", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ours = [p for p in _json_from(out.stdout) if p["package_name"] == DISTRIBUTION]
    assert len(ours) == 1
    assert ours[0]["version"] == importlib.metadata.version(DISTRIBUTION)
    assert "Pixelcut" in ours[0]["description"]


def _registered_hooks() -> Any:
    try:  # Airflow 3.2+: hooks moved to the task-SDK runtime manager
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime
    except ImportError:
        from airflow.providers_manager import ProvidersManager

        return ProvidersManager().hooks
    return ProvidersManagerTaskRuntime().hooks


def test_providers_manager_registers_the_hooks() -> None:
    hooks = _registered_hooks()
    for conn_type, dotted in HOOKS.items():
        info = hooks.get(conn_type)
        assert info is not None, conn_type
        assert info.hook_class_name == dotted
        assert info.package_name == DISTRIBUTION
        assert info.connection_type == conn_type
    assert hooks["pixian"].hook_name == "Pixian.AI"
    assert hooks["pixian"].connection_id_attribute_name == "pixian_conn_id"


def test_providers_manager_registers_the_ui_field_behaviour(info: dict[str, Any]) -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert DISTRIBUTION in manager.providers
    behaviours = manager.field_behaviours
    widgets = manager.connection_form_widgets
    for item in info["connection-types"]:
        conn_type = item["connection-type"]
        declared = item["ui-field-behaviour"]
        got = behaviours.get(conn_type)
        if not DECLARATIVE_UI and got is None:
            # Airflow < 3.2 takes the form from the hook methods, and only when Flask-AppBuilder is
            # installed; the legacy methods are checked against the provider info above.
            continue
        assert got is not None, conn_type
        assert sorted(got["hidden_fields"]) == sorted(declared["hidden-fields"])
        assert got["relabeling"] == declared["relabeling"]
        assert got["placeholders"] == declared["placeholders"]
        if DECLARATIVE_UI:
            for field in item["conn-fields"]:
                assert f"extra__{conn_type}__{field}" in widgets
