"""The sandbox configuration: its JSON form, the shorthands, and errors that name the setting."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter

from airflow_provider_bgremoval.sandbox.config import (
    DEFAULT_PIXIAN_ID,
    ConfigError,
    FaultConfig,
    FaultRule,
    KeyConfig,
    SandboxConfig,
    parse_padding,
    to_decimal,
)


def test_defaults() -> None:
    config = SandboxConfig()
    assert [entry.key for entry in config.keys["pixian"]] == [DEFAULT_PIXIAN_ID]
    assert set(config.keys) == set(config.faults) == {"pixelcut", "pixian", "poof"}
    assert config.costs.to_dict()["pixelcut_shadow"] == 3.0


def test_the_documented_example() -> None:
    config = SandboxConfig.from_dict(
        {
            "seed": "7",
            "result_ttl_seconds": 3600,
            "pixelcut_credits_type": "string",
            "public_base_url": "http://sandbox.test/",
            "keys": {
                "pixelcut": {"sk_live_like": 50},
                "pixian": {"my_id": {"secret": "my_secret", "credits": "12.5", "state": "dormant"}},
            },
            "costs": {"pixian_per_image": 0.25},
            "faults": {"poof": {"latency_ms": 200, "error_rate": 0.1}},
        }
    )
    assert config.seed == 7
    assert config.public_base_url == "http://sandbox.test"
    assert config.keys["pixelcut"] == [KeyConfig("sk_live_like", credits=Decimal(50))]
    assert config.keys["pixian"] == [KeyConfig("my_id", Decimal("12.5"), "my_secret", "dormant")]
    assert [entry.key for entry in config.keys["poof"]] == ["pk_sandbox_poof_key"]  # default kept
    assert config.costs.pixian_per_image == Decimal("0.25")
    assert config.faults["poof"].rules == [FaultRule("error", rate=0.1)]


def test_fault_shorthands() -> None:
    single = FaultConfig.from_dict({"fault": "error", "status": 503, "next": 1, "apply_to": "account"})
    assert single.rules == [FaultRule("error", next=1, statuses=[503])]
    assert single.apply_to == ["account"]
    assert FaultConfig.from_dict({"fault": "slow"}).rules == [FaultRule("slow", rate=1.0)]
    both = FaultConfig.from_dict(
        {"rules": [{"fault": "empty_body", "requests": [2]}], "error_rate": 0.5, "error_statuses": [502]}
    )
    assert both.rules == [FaultRule("empty_body", requests=[2]), FaultRule("error", rate=0.5, statuses=[502])]
    assert FaultConfig.from_dict({"apply_to": ["all"]}).apply_to == ["process", "account"]
    assert FaultRule.from_dict({"fault": "error", "status": 500, "statuses": [429]}).statuses == [429]


def test_round_trip() -> None:
    config = FaultConfig.from_dict({"fault": "error", "requests": [1, 3], "latency_ms": 5, "seed": 9})
    assert FaultConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["rules"] == [
        {
            "fault": "error",
            "rate": 0.0,
            "next": 0,
            "requests": [1, 3],
            "statuses": [500, 502, 503],
            "from_s": 0.0,
            "until_s": None,
        }
    ]


def test_a_window_without_a_selector_covers_every_request_in_it() -> None:
    outage = FaultConfig.from_dict({"rules": [{"fault": "error", "status": 503, "until_s": 20}]})
    assert outage.rules == [FaultRule("error", rate=1.0, statuses=[503], until_s=20)]
    later = FaultConfig.from_dict({"fault": "error", "from_s": 5, "until_s": 25})
    assert later.rules == [FaultRule("error", rate=1.0, from_s=5, until_s=25)]
    # a selector inside a window is kept as given
    assert FaultRule.from_dict({"fault": "slow", "next": 2, "until_s": 9}) == FaultRule(
        "slow", next=2, until_s=9
    )
    assert FaultConfig.from_dict(outage.to_dict()) == outage


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kyes": {}}, "unknown configuration settings: kyes"),
        ({"keys": {"acme": {"k": 1}}}, "keys.acme: unknown vendor 'acme'"),
        ({"faults": {"acme": {}}}, "faults.acme: unknown vendor 'acme'"),
        ({"keys": {"pixian": {"an_id": 5}}}, "pixian key 'an_id' needs a secret"),
        ({"keys": {"poof": {"k": {"state": "asleep"}}}}, "keys.poof.0.state: Input should be 'active'"),
        ({"keys": {"poof": {"k": {"credit": 1}}}}, "unknown configuration settings: keys.poof.0.credit"),
        (
            {"costs": {"poof_per_image": -1}},
            "costs.poof_per_image: Input should be greater than or equal to 0",
        ),
        ({"costs": {"poof_per_image": True}}, "costs.poof_per_image: must be a number"),
        ({"costs": {"free": 0}}, "unknown configuration settings: costs.free"),
        ({"pixelcut_credits_type": "float"}, "pixelcut_credits_type: Input should be 'number' or 'string'"),
        ({"faults": {"poof": {"fault": "explode"}}}, "unknown fault 'explode'"),
        (
            {"faults": {"poof": {"fault": "error", "status": 200}}},
            "Input should be greater than or equal to 400",
        ),
        ({"faults": {"poof": {"error_rate": 1.5}}}, "rate: Input should be less than or equal to 1"),
        ({"faults": {"poof": {"latency_ms": -1}}}, "latency_ms: Input should be greater than or equal to 0"),
        (
            {"faults": {"poof": {"apply_to": ["billing"]}}},
            "apply_to.0: Input should be 'process' or 'account'",
        ),
        ({"faults": {"poof": {"rate": 0.5}}}, "unknown configuration settings: faults.poof.rate"),
        ({"faults": {"poof": {"fault": "error", "from_s": 9, "until_s": 3}}}, "until_s (3.0) must be after"),
        ({"faults": {"poof": {"fault": "error", "until_s": 0}}}, "until_s: Input should be greater than 0"),
        ({"faults": {"poof": {"fault": "error", "from_s": -1}}}, "from_s: Input should be greater than or"),
    ],
)
def test_errors_name_the_setting(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        SandboxConfig.from_dict(data)


def test_update_changes_only_runtime_settings_validated() -> None:
    config = SandboxConfig()
    config.update({"costs": {"pixian_per_image": "0.5"}, "allow_private_urls": "false"})
    assert config.costs.pixian_per_image == Decimal("0.5")
    assert config.costs.pixelcut_shadow == Decimal(3)  # the other costs are kept
    assert config.allow_private_urls is False
    for bad, message in (
        ({"seed": 3}, "unknown settings: seed"),
        ({"result_ttl_seconds": "soon"}, "result_ttl"),
    ):
        with pytest.raises(ConfigError, match=message):
            config.update(bad)
    assert config.seed == 0 and config.result_ttl_seconds == 3600.0


def test_to_decimal() -> None:
    assert to_decimal("2.5", "credits") == Decimal("2.5")
    for bad in (-1, "lots", True, "NaN"):
        with pytest.raises(ConfigError, match="credits must be a finite number >= 0"):
            to_decimal(bad, "credits")


def test_json_schema() -> None:
    schema = TypeAdapter(SandboxConfig).json_schema()
    assert schema["additionalProperties"] is False
    assert "keys" in schema["properties"] and "faults" in schema["properties"]


@pytest.mark.parametrize("retry_after", [-1, "inf", "nan"])
def test_retry_after_is_a_finite_number_of_seconds(retry_after: Any) -> None:
    # a negative or non-finite Retry-After is no delta-seconds: refused when configured
    with pytest.raises(ConfigError, match="retry_after"):
        FaultConfig.from_dict({"retry_after": retry_after})


def test_poof_crop_padding_is_validated_as_a_padding() -> None:
    assert SandboxConfig().poof_crop_padding == "10%"  # generation B's documented default
    assert SandboxConfig.from_dict({"poof_crop_padding": "0"}).poof_crop_padding == "0"
    assert parse_padding("10%,7.5%") == (0.1, 0.075)
    assert parse_padding(" 0.25 ") == (0.25, 0.25)
    for bad in ("wide", "-1%", "1,2,3", "", "10px"):
        with pytest.raises(ConfigError, match="poof_crop_padding"):
            SandboxConfig.from_dict({"poof_crop_padding": bad})


def test_pixian_use_before_is_an_iso_8601_time() -> None:
    assert SandboxConfig.from_dict({"pixian_use_before": "2027-01-31T00:00:00Z"}).pixian_use_before
    assert SandboxConfig.from_dict({"pixian_use_before": "2027-01-31"}).pixian_use_before == "2027-01-31"
    with pytest.raises(ConfigError, match="pixian_use_before"):
        SandboxConfig.from_dict({"pixian_use_before": "next week"})


def test_retry_after_format() -> None:
    assert FaultConfig().retry_after_format == "seconds"
    assert FaultConfig.from_dict({"retry_after_format": "http-date"}).retry_after_format == "http-date"
    with pytest.raises(ConfigError, match="retry_after_format"):
        FaultConfig.from_dict({"retry_after_format": "minutes"})
