"""The credit monitor: read the balances of several vendor connections and report the low ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier, BaseOperator
from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.credits import describe_error, parse_min_credits
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook, format_credits
from airflow_provider_bgremoval.operators.bucket_job import check_choice, is_template, run_coroutine

if TYPE_CHECKING:
    from airflow.sdk import Context

ON_LOW_CHOICES = ("fail", "warn")


@dataclass(frozen=True)
class BalanceCheck:
    """
    One connection's balance against its threshold.

    :param conn_id: the connection.
    :param threshold: the minimum usable credits wanted.
    :param vendor: vendor name (``None`` when the connection could not be resolved).
    :param remaining: usable credits (``None`` when the balance could not be read).
    :param state: the account state.
    :param credit_pack: credit-pack or subscription-plan name.
    :param error: why the balance could not be read.
    """

    conn_id: str
    threshold: Decimal
    vendor: str | None = None
    remaining: Decimal | None = None
    state: str | None = None
    credit_pack: str | None = None
    error: str | None = None

    @property
    def low(self) -> bool:
        """True when the usable balance is below the threshold (equal is fine)."""
        return self.remaining is not None and self.remaining < self.threshold

    @property
    def ok(self) -> bool:
        """True when the balance was read and reaches the threshold."""
        return self.error is None and not self.low

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for XCom, logs and callbacks."""
        remaining = None if self.remaining is None else str(self.remaining)
        return {**asdict(self), "remaining": remaining, "threshold": str(self.threshold), "low": self.low}

    def describe(self) -> str:
        """One log line: connection, vendor, remaining, threshold, verdict."""
        who = f"{self.conn_id} ({self.vendor or 'unknown vendor'})"
        threshold = format_credits(self.threshold)
        if self.remaining is None:
            return f"{who}: balance unavailable ({self.error}), threshold {threshold}"
        state = f" [{self.state}]" if self.state not in (None, "active") else ""
        verdict = "LOW" if self.low else "ok"
        remaining = format_credits(self.remaining)
        return f"{who}: {remaining} credits remaining{state}, threshold {threshold}: {verdict}"


def parse_thresholds(thresholds: Mapping[str, Any]) -> dict[str, Decimal]:
    """
    ``{conn_id: number}`` with exact Decimal thresholds.

    :param thresholds: connection id → minimum credits (number or numeric string).
    """
    if not isinstance(thresholds, Mapping) or not thresholds:
        raise InvalidOptionError("thresholds", "expected a non-empty {conn_id: minimum credits} mapping")
    return {
        str(conn_id): parse_min_credits(value, f"thresholds[{conn_id!r}]")
        for conn_id, value in thresholds.items()
    }


async def _acheck_one(conn_id: str, threshold: Decimal, hook_kwargs: Mapping[str, Any]) -> BalanceCheck:
    check = BalanceCheck(conn_id, threshold)
    try:
        hook = await BackgroundRemovalHook.aget_hook(conn_id, dict(hook_kwargs))
        check = replace(check, vendor=hook.wire_class.spec.name)
        async with aclosing(hook):
            balance = await hook.aget_balance()
    except Exception as exc:
        return replace(check, error=describe_error(exc))
    return replace(
        check, remaining=balance.remaining, state=balance.state.value, credit_pack=balance.credit_pack
    )


async def acheck_balances(thresholds: Mapping[str, Any], **hook_kwargs: Any) -> list[BalanceCheck]:
    """
    Read every connection's balance concurrently (async hooks) and compare with its threshold.

    :param thresholds: connection id → minimum usable credits.
    :param hook_kwargs: passed to every hook (e.g. ``timeout``).
    """
    checks = (
        _acheck_one(conn_id, value, hook_kwargs) for conn_id, value in parse_thresholds(thresholds).items()
    )
    return list(await asyncio.gather(*checks))


def check_balances(thresholds: Mapping[str, Any], **hook_kwargs: Any) -> list[BalanceCheck]:
    """
    Sync :func:`acheck_balances` (e.g. inside a ``@task``).

    :param thresholds: connection id → minimum usable credits.
    :param hook_kwargs: passed to every hook.
    """
    return run_coroutine(acheck_balances(thresholds, **hook_kwargs))


LowBalanceCallback = Callable[[list[dict[str, Any]]], None]


class CreditMonitorOperator(BaseOperator):
    """
    Check the balances of several vendor connections in one task; call back and fail or warn on low ones.

    Returns ``{conn_id: BalanceCheck.as_dict()}``; problem accounts and retries: docs/credits.md.

    :param thresholds: connection id → minimum usable credits (templated).
    :param on_low: ``"fail"`` or ``"warn"``.
    :param on_low_callback: a callable receiving the problem accounts (dicts), or a ``BaseNotifier``
        whose context gets ``low_balances`` and ``balances``.
    """

    template_fields: Sequence[str] = ("thresholds",)
    template_fields_renderers = {"thresholds": "json"}
    ui_color = "#fdf1d6"

    def __init__(
        self,
        *,
        thresholds: Mapping[str, float | int | str],
        on_low: str = "fail",
        on_low_callback: LowBalanceCallback | BaseNotifier | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.thresholds = thresholds
        self.on_low = on_low
        self.on_low_callback = on_low_callback
        check_choice(on_low, ON_LOW_CHOICES, "on_low")
        if isinstance(thresholds, Mapping) and not any(is_template(v) for v in thresholds.values()):
            parse_thresholds(thresholds)

    def execute(self, context: Context) -> dict[str, dict[str, Any]]:
        """Read every balance, log it, call back and fail or warn when any is low."""
        checks = check_balances(self.thresholds)
        for check in checks:
            self.log.log(logging.INFO if check.ok else logging.WARNING, "%s", check.describe())
        result = {check.conn_id: check.as_dict() for check in checks}
        problems = [check for check in checks if not check.ok]
        if not problems:
            return result
        payload = [check.as_dict() for check in problems]
        if isinstance(self.on_low_callback, BaseNotifier):
            notifier_context: Any = {**context, "low_balances": payload, "balances": list(result.values())}
            self.on_low_callback(notifier_context)
        elif self.on_low_callback is not None:
            self.on_low_callback(payload)
        message = f"{len(problems)} of {len(checks)} account(s) need attention: " + "; ".join(
            check.describe() for check in problems
        )
        if self.on_low == "warn":
            self.log.warning("%s", message)
            return result
        if any(check.error is not None for check in problems):
            raise AirflowException(message)
        raise AirflowFailException(message)
