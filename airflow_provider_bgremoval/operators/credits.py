"""Deprecated (one release): the pre-flight and the monitor have a module each; old names warn."""

from __future__ import annotations

from airflow_provider_bgremoval._moved import moved_names

_PREFLIGHT = "airflow_provider_bgremoval.operators.preflight"
_MONITOR = "airflow_provider_bgremoval.operators.monitor"

__getattr__ = moved_names(
    __name__,
    {
        _PREFLIGHT: "CreditsCheckOperator GenerateCreditsCheckOperator SafetyMargin describe_header_only "
        "ON_INSUFFICIENT_CHOICES",
        f"{_PREFLIGHT}:CreditsPreflightOperator": "CreditsPreflightMixin",
        _MONITOR: "CreditMonitorOperator BalanceCheck LowBalanceCallback "
        "check_balances acheck_balances parse_thresholds ON_LOW_CHOICES",
    },
)
