"""Deprecated module, kept for one release: the pre-flight and the monitor have a module each.

* :class:`~airflow_provider_bgremoval.operators.preflight.CreditsCheckOperator`,
  :class:`~airflow_provider_bgremoval.operators.preflight.GenerateCreditsCheckOperator` and
  :class:`~airflow_provider_bgremoval.operators.preflight.SafetyMargin`:
  :mod:`airflow_provider_bgremoval.operators.preflight`;
* :class:`~airflow_provider_bgremoval.operators.monitor.CreditMonitorOperator`,
  :func:`~airflow_provider_bgremoval.operators.monitor.check_balances` and friends:
  :mod:`airflow_provider_bgremoval.operators.monitor`.

Importing a name from here still works and warns (DeprecationWarning).
"""

from __future__ import annotations

from airflow_provider_bgremoval._moved import moved_names

_PREFLIGHT = "airflow_provider_bgremoval.operators.preflight"
_MONITOR = "airflow_provider_bgremoval.operators.monitor"

__getattr__ = moved_names(
    __name__,
    {
        "CreditsCheckOperator": _PREFLIGHT,
        "GenerateCreditsCheckOperator": _PREFLIGHT,
        "CreditsPreflightMixin": f"{_PREFLIGHT}:CreditsPreflightOperator",
        "SafetyMargin": _PREFLIGHT,
        "describe_header_only": _PREFLIGHT,
        "ON_INSUFFICIENT_CHOICES": _PREFLIGHT,
        "CreditMonitorOperator": _MONITOR,
        "BalanceCheck": _MONITOR,
        "LowBalanceCallback": _MONITOR,
        "check_balances": _MONITOR,
        "acheck_balances": _MONITOR,
        "parse_thresholds": _MONITOR,
        "ON_LOW_CHOICES": _MONITOR,
    },
)
