"""Credits operators: the pre-flight budget check and the multi-account credit monitor.

* :class:`CreditsCheckOperator` (and :class:`GenerateCreditsCheckOperator`) plans a batch with the
  *same code* as the bucket operators (:meth:`BucketImageOperator.plan` → ``plan_batch``), prices the
  billable work with the same processor cost logic, and compares it with the balance. It spends 0
  credits: planning is local plus GCS, the balance endpoint is free, and Pixian's optional estimate
  is a free ``test=true`` call.
* :class:`CreditMonitorOperator` (and :func:`check_balances` / :func:`acheck_balances`) reads the
  balances of several connections concurrently and reports the ones under their thresholds.

A pre-flight halt reports the same shape as the bucket pipeline's mid-batch halt
(:class:`~airflow_provider_bgremoval.pipeline.engine.HaltInfo`, reason ``insufficient_credits``), so
one alert can handle both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseNotifier, BaseOperator
from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException, AirflowSkipException
from airflow_provider_bgremoval.exceptions import InputRejectedError, InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.hooks.registry import aget_vendor_hook
from airflow_provider_bgremoval.operators.bucket import (
    BucketImageOperator,
    GenerateBackgroundOperator,
    RemoveBackgroundOperator,
    parse_count,
    parse_credits,
    run_coroutine,
)
from airflow_provider_bgremoval.pipeline.engine import HaltInfo
from airflow_provider_bgremoval.pipeline.planning import BatchPlan
from airflow_provider_bgremoval.pipeline.processors import ImageProcessor
from airflow_provider_bgremoval.results import AccountState, Balance
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.triggers.credits import (
    describe_error,
    is_fatal_balance_error,
    parse_min_credits,
    usable_credits,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

ON_INSUFFICIENT_CHOICES = ("fail", "skip")
ON_LOW_CHOICES = ("fail", "warn")
#: Samples tried for Pixian's test-mode estimate when a sample is refused by the vendor.
_TEST_ESTIMATE_SAMPLES = 3


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


@dataclass(frozen=True)
class SafetyMargin:
    """
    Extra credits required on top of the estimate: an absolute number or a percentage of it.

    :param credits: absolute credits (``None`` when a percentage).
    :param percent: percentage of the estimate (``None`` when absolute).
    """

    credits: Decimal | None = None
    percent: Decimal | None = None

    @classmethod
    def parse(cls, value: Any) -> SafetyMargin:
        """
        ``None``/``0`` → no margin; ``5`` or ``"5"`` → 5 credits; ``"10%"`` → 10 % of the estimate.

        :param value: the ``safety_margin`` parameter.
        """
        if value in (None, ""):
            return cls(credits=Decimal(0))
        text = str(value).strip()
        if text.endswith("%"):
            try:
                percent = Decimal(text[:-1].strip())
            except (InvalidOperation, ValueError):
                raise InvalidOptionError("safety_margin", f"{value!r} is not a percentage") from None
            if not percent.is_finite() or percent < 0:
                raise InvalidOptionError("safety_margin", "must be a non-negative percentage")
            return cls(percent=percent)
        return cls(credits=parse_min_credits(value, "safety_margin"))

    def on(self, needed: Decimal) -> Decimal:
        """
        The margin in credits for an estimate of ``needed``.

        :param needed: the estimate.
        """
        if self.percent is not None:
            return needed * self.percent / Decimal(100)
        return self.credits or Decimal(0)

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.credits or 0)


def describe_header_only(billable: int, header_only: int) -> str:
    """
    The pre-flight's honesty note about images planning could check by header only.

    :param billable: billable images in the estimate.
    :param header_only: how many of them were checked by header only.
    """
    return (
        f"{billable} billable, of which {header_only} were checked by header only; a truncated body "
        "among them is rejected at run time without a charge"
    )


class CreditsPreflightMixin(BucketImageOperator):
    """
    Turns a bucket operator into its own pre-flight check (see :class:`CreditsCheckOperator`).

    Put it first in the bases: ``class X(CreditsPreflightMixin, RemoveBackgroundOperator)``; the
    planning, the processor and the cost logic are then literally the bucket operator's.

    :param safety_margin: extra credits required on top of the estimate: a number of credits or a
        percentage of the estimate such as ``"10%"`` (templated).
    :param on_insufficient: ``"fail"`` (fail without retries) or ``"skip"`` (skip this task and,
        through the default trigger rule, everything downstream).
    :param use_test_estimate: Pixian only: price one image with a free ``test=true`` call on a sample
        (``X-Credits-Calculated``) instead of the cost table.
    :param kwargs: the bucket operator's parameters (same meaning; ``max_images`` and
        ``max_credits`` cap the estimate as they cap the batch).
    """

    def __init__(
        self,
        *,
        safety_margin: float | int | str | None = None,
        on_insufficient: str = "fail",
        use_test_estimate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.safety_margin = safety_margin
        self.on_insufficient = on_insufficient
        self.use_test_estimate = use_test_estimate
        if not _is_template(on_insufficient) and on_insufficient not in ON_INSUFFICIENT_CHOICES:
            raise InvalidOptionError(
                "on_insufficient", f"{on_insufficient!r} is not one of {', '.join(ON_INSUFFICIENT_CHOICES)}"
            )
        if not _is_template(safety_margin):
            SafetyMargin.parse(safety_margin)
        if use_test_estimate and self.cost_per_image not in (None, ""):
            raise InvalidOptionError(
                "use_test_estimate", "give either cost_per_image or use_test_estimate=True, not both"
            )

    # -- pricing -------------------------------------------------------------------------------
    def test_estimate(
        self, hook: BackgroundRemovalHook[Any], storage: GcsStorage, plan: BatchPlan
    ) -> Decimal:
        """
        Price one image with a free vendor test call on a sample of the plan (vendor-specific).

        :param hook: the vendor hook.
        :param storage: the GCS storage.
        :param plan: the batch plan (its first billable items are the samples).
        """
        raise InvalidOptionError("use_test_estimate", f"{type(self).__name__} has no test-mode estimate")

    def _price(
        self,
        hook: BackgroundRemovalHook[Any],
        processor: ImageProcessor,
        storage: GcsStorage,
        plan: BatchPlan,
    ) -> tuple[Decimal, str]:
        if self.cost_per_image not in (None, ""):
            return processor.cost_per_image, "cost_per_image"
        if self.use_test_estimate and plan.items:
            return self.test_estimate(hook, storage, plan), "test_estimate"
        return processor.cost_per_image, "cost_table"

    # -- the check -----------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        """Plan, price, read the balance, and pass (estimate to XCom) or halt."""
        if self.on_insufficient not in ON_INSUFFICIENT_CHOICES:
            raise InvalidOptionError(
                "on_insufficient",
                f"{self.on_insufficient!r} is not one of {', '.join(ON_INSUFFICIENT_CHOICES)}",
            )
        margin = SafetyMargin.parse(self.safety_margin)
        max_images = parse_count(self.max_images, "max_images")
        max_credits = parse_credits(self.max_credits, "max_credits")
        spec, storage, hook, processor = self.prepare()  # exactly the bucket operator's set-up
        try:
            plan = self.plan(storage, processor, spec)
            cost, cost_source = self._price(hook, processor, storage, plan)
            balance = self._balance(context, hook, processor.vendor, len(plan.items))
        finally:
            hook.close()

        billable = len(plan.items) if max_images is None else min(len(plan.items), max_images)
        header_only = plan.header_only_among(billable)
        needed = cost * billable
        if max_credits is not None:
            needed = min(needed, max_credits)
        extra = margin.on(needed) if billable else Decimal(0)
        required = needed + extra
        available = usable_credits(balance)
        sufficient = billable == 0 or available >= required
        estimate: dict[str, Any] = {
            "conn_id": self.conn_id,
            "vendor": processor.vendor,
            "operation": processor.operation,
            "sources": plan.total,
            "billable_images": billable,
            "planned_billable": len(plan.items),
            "checked_by_header_only": header_only,
            "already_done": plan.count("skipped"),
            "rejected_locally": plan.count("rejected"),
            "cost_per_image": str(cost),
            "cost_source": cost_source,
            "needed": str(needed),
            "safety_margin": str(margin),
            "margin_credits": str(extra),
            "required": str(required),
            "available": str(available),
            "balance": balance.as_dict(),
            "sufficient": sufficient,
        }
        log.info(
            "Credits pre-flight (%s, %s): %d billable of %d source(s) (%d done, %d rejected locally) x %s "
            "credits (%s) = %s; + margin %s = %s required; %s available: %s",
            self.conn_id,
            processor.vendor,
            billable,
            plan.total,
            plan.count("skipped"),
            plan.count("rejected"),
            cost,
            cost_source,
            needed,
            extra,
            required,
            available,
            "OK" if sufficient else "INSUFFICIENT",
        )
        if header_only:
            log.info("Credits pre-flight (%s): %s", self.conn_id, describe_header_only(billable, header_only))
        if sufficient:
            return estimate
        self._halt(context, processor.vendor, estimate, billable, required, available, balance)

    def _balance(
        self, context: Context, hook: BackgroundRemovalHook[Any], vendor: str, billable: int
    ) -> Balance:
        try:
            return hook.get_balance()
        except Exception as exc:
            if not is_fatal_balance_error(exc):
                raise AirflowException(
                    f"credits pre-flight on {self.conn_id!r}: could not read the balance "
                    f"({describe_error(exc)})"
                ) from exc
            halt = HaltInfo(
                reason="auth_failed",
                vendor=vendor,
                message=f"could not read the balance of {self.conn_id!r}: {exc}",
                remaining_images=billable,
                fatal=True,
            )
            context["ti"].xcom_push(key="halt", value=halt.as_dict())
            raise AirflowFailException(f"credits pre-flight: {halt.message}") from exc

    def _halt(
        self,
        context: Context,
        vendor: str,
        estimate: dict[str, Any],
        billable: int,
        required: Decimal,
        available: Decimal,
        balance: Balance,
    ) -> NoReturn:
        margin_text = (
            f" incl. safety margin {estimate['margin_credits']}"
            if Decimal(estimate["margin_credits"])
            else ""
        )
        state = "" if balance.state is AccountState.ACTIVE else f" (account {balance.state.value})"
        message = (
            f"insufficient credits on {self.conn_id!r}: {billable} billable image(s) x "
            f"{estimate['cost_per_image']} credits need {required}{margin_text}, "
            f"but only {available} are available{state}"
        )
        halt = HaltInfo(
            reason="insufficient_credits",
            vendor=vendor,
            message=message,
            remaining_images=billable,
            needed=required,
            available=available,
            fatal=self.on_insufficient == "fail",
        )
        ti = context["ti"]
        ti.xcom_push(key="estimate", value=estimate)
        ti.xcom_push(key="halt", value=halt.as_dict())
        text = f"Credits pre-flight ({vendor}): {message}. Nothing was charged; top up or shrink the batch."
        if estimate["checked_by_header_only"]:
            text += f" ({describe_header_only(billable, estimate['checked_by_header_only'])}.)"
        if self.on_insufficient == "skip":
            raise AirflowSkipException(text)
        raise AirflowFailException(text)


class CreditsCheckOperator(CreditsPreflightMixin, RemoveBackgroundOperator):
    """
    Pre-flight budget for :class:`RemoveBackgroundOperator`: never start what you cannot finish.

    Give it the same parameters as the bucket task it guards. It plans the batch with the same code
    (finished outputs and local rejects are not billable), prices each billable image with the
    vendor's cost table (or ``cost_per_image``, or Pixian's free test-mode estimate), adds the
    ``safety_margin`` and compares with the usable balance (dormant accounts: 0). It charges nothing.

    .. code-block:: python

        check = CreditsCheckOperator(
            task_id="check_credits",
            conn_id="pixian_default",
            source_bucket="shop-raw",
            source_prefix="2026/11/",
            destination_bucket="shop-cutouts",
            destination_prefix="2026/11/",
            output_format="webp",
            safety_margin="10%",
            on_insufficient="fail",
        )
        check >> RemoveBackgroundOperator(task_id="cutouts", ...same parameters...)

    Passes → returns the estimate (XCom ``return_value``): ``conn_id``, ``vendor``, ``operation``,
    ``sources``, ``billable_images``, ``planned_billable``, ``checked_by_header_only`` (billable
    images too large to verify without downloading them: a truncated one is rejected at run time,
    free), ``already_done``, ``rejected_locally``, ``cost_per_image``,
    ``cost_source``, ``needed``, ``safety_margin``, ``margin_credits``, ``required``, ``available``,
    ``balance``, ``sufficient``.
    Halts → pushes XCom ``halt`` (the pipeline's ``HaltInfo`` shape, reason ``insufficient_credits``,
    ``needed`` = estimate + margin) and ``estimate``, then fails without retries
    (``on_insufficient="fail"``) or skips (``"skip"``).

    :param safety_margin: extra credits required: a number or a percentage such as ``"10%"``.
    :param on_insufficient: ``"fail"`` or ``"skip"``.
    :param use_test_estimate: Pixian only: one free ``test=true`` call on a sample reads
        ``X-Credits-Calculated`` as the per-image cost.

    The bucket and image parameters are those of :class:`RemoveBackgroundOperator`.
    """

    template_fields: Sequence[str] = (
        *RemoveBackgroundOperator.template_fields,
        "safety_margin",
        "on_insufficient",
    )
    ui_color = "#fdf1d6"
    operation_name = "remove_background"

    def test_estimate(
        self, hook: BackgroundRemovalHook[Any], storage: GcsStorage, plan: BatchPlan
    ) -> Decimal:
        """
        Pixian's free estimate: a ``test=true`` call on a sample, read from ``X-Credits-Calculated``.

        Tries up to three samples when the vendor refuses one image.

        :param hook: the vendor hook (must be Pixian).
        :param storage: the GCS storage.
        :param plan: the batch plan.
        """
        from airflow_provider_bgremoval.hooks.pixian import PixianHook

        if not isinstance(hook, PixianHook):
            raise InvalidOptionError(
                "use_test_estimate",
                f"only Pixian offers a free test-mode estimate; "
                f"{self.conn_id!r} is a {hook.conn_type} connection",
            )
        last: InputRejectedError | None = None
        for item in plan.items[:_TEST_ESTIMATE_SAMPLES]:
            data = storage.read(item.source.bucket, item.source.name, generation=item.source.generation)
            try:
                cost = hook.estimate_with_test_call(
                    data,
                    options=self.removal_options(),
                    vendor_options=self.vendor_options,
                    filename=item.source.name.rsplit("/", 1)[-1],
                )
            except InputRejectedError as exc:
                log.warning(
                    "Pixian refused sample %s for the estimate (%s); trying another", item.source.uri, exc
                )
                last = exc
                continue
            log.info("Pixian test-mode estimate on %s: %s credits per image", item.source.uri, cost)
            return cost
        raise AirflowException(f"Pixian refused every sample tried for the test-mode estimate: {last}")


class GenerateCreditsCheckOperator(CreditsPreflightMixin, GenerateBackgroundOperator):
    """
    Pre-flight budget for :class:`GenerateBackgroundOperator` (Pixelcut): same checks and results as
    :class:`CreditsCheckOperator`, priced with the generate-background cost (1 credit by default).

    :param safety_margin: extra credits required: a number or a percentage such as ``"10%"``.
    :param on_insufficient: ``"fail"`` or ``"skip"``.
    :param use_test_estimate: not available for Pixelcut (raises).
    """

    template_fields: Sequence[str] = (
        *GenerateBackgroundOperator.template_fields,
        "safety_margin",
        "on_insufficient",
    )
    ui_color = "#fdf1d6"
    operation_name = "generate_background"


# -- credit monitor -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BalanceCheck:
    """
    One connection's balance against its threshold.

    :param conn_id: the connection.
    :param threshold: the minimum usable credits wanted.
    :param vendor: vendor name (``None`` when the connection could not be resolved).
    :param remaining: usable credits (``None`` when the balance could not be read).
    :param state: the account state.
    :param plan: plan or credit-pack name.
    :param error: why the balance could not be read.
    """

    conn_id: str
    threshold: Decimal
    vendor: str | None = None
    remaining: Decimal | None = None
    state: str | None = None
    plan: str | None = None
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
        return {
            "conn_id": self.conn_id,
            "vendor": self.vendor,
            "remaining": None if self.remaining is None else str(self.remaining),
            "threshold": str(self.threshold),
            "state": self.state,
            "plan": self.plan,
            "low": self.low,
            "error": self.error,
        }

    def describe(self) -> str:
        """One log line: connection, vendor, remaining, threshold, verdict."""
        who = f"{self.conn_id} ({self.vendor or 'unknown vendor'})"
        if self.error is not None:
            return f"{who}: balance unavailable ({self.error}), threshold {self.threshold}"
        state = f" [{self.state}]" if self.state not in (None, "active") else ""
        verdict = "LOW" if self.low else "ok"
        return f"{who}: {self.remaining} credits remaining{state}, threshold {self.threshold}: {verdict}"


def parse_thresholds(thresholds: Mapping[str, Any]) -> dict[str, Decimal]:
    """
    ``{conn_id: number}`` with exact Decimal thresholds.

    :param thresholds: connection id → minimum credits (number or numeric string).
    """
    if not isinstance(thresholds, Mapping) or not thresholds:
        raise InvalidOptionError(
            "thresholds", "expected a non-empty mapping of connection id -> minimum credits"
        )
    return {
        str(conn_id): parse_min_credits(value, f"thresholds[{conn_id!r}]")
        for conn_id, value in thresholds.items()
    }


async def _acheck_one(conn_id: str, threshold: Decimal, hook_kwargs: Mapping[str, Any]) -> BalanceCheck:
    hook: BackgroundRemovalHook[Any] | None = None
    try:
        hook = await aget_vendor_hook(conn_id, **hook_kwargs)
        balance = await hook.aget_balance()
    except Exception as exc:
        vendor = hook.wire_class.name if hook is not None else None
        return BalanceCheck(conn_id=conn_id, threshold=threshold, vendor=vendor, error=describe_error(exc))
    finally:
        if hook is not None:
            await hook.aclose()
    return BalanceCheck(
        conn_id=conn_id,
        threshold=threshold,
        vendor=balance.vendor,
        remaining=usable_credits(balance),
        state=balance.state.value,
        plan=balance.plan,
    )


async def acheck_balances(thresholds: Mapping[str, Any], **hook_kwargs: Any) -> list[BalanceCheck]:
    """
    Read every connection's balance concurrently (async hooks) and compare with its threshold.

    :param thresholds: connection id → minimum usable credits.
    :param hook_kwargs: passed to every hook (e.g. ``timeout``).
    """
    parsed = parse_thresholds(thresholds)
    return list(
        await asyncio.gather(*(_acheck_one(conn_id, value, hook_kwargs) for conn_id, value in parsed.items()))
    )


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
    Check the balances of several vendor connections in one task.

    .. code-block:: python

        CreditMonitorOperator(
            task_id="credit_monitor",
            thresholds={"pixelcut_default": 100, "pixian_default": "50.5", "poof_default": 20},
            on_low="fail",
            on_low_callback=SlackNotifier(text="Low credits: {{ low_balances }}"),
        )

    Balances are read concurrently (free calls). Each account gets a log line with vendor,
    remaining credits and threshold. The return value (XCom) maps every connection id to
    ``{conn_id, vendor, remaining, threshold, state, plan, low, error}``.

    When an account is below its threshold (equal is fine; dormant accounts count as 0), or its
    balance cannot be read, ``on_low_callback`` is called first, then the task fails with a message
    listing every such account (``on_low="fail"``: without retries when only balances are low, as a
    retryable failure when a balance could not be read) or logs a warning (``on_low="warn"``).

    :param thresholds: connection id → minimum usable credits (templated; numbers or numeric strings).
    :param on_low: ``"fail"`` or ``"warn"``.
    :param on_low_callback: a callable receiving the list of problem accounts (dicts as above), or an
        Airflow notifier (``BaseNotifier``) called with the task context plus ``low_balances`` and
        ``balances``.
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
        if on_low not in ON_LOW_CHOICES:
            raise InvalidOptionError("on_low", f"{on_low!r} is not one of {', '.join(ON_LOW_CHOICES)}")
        if isinstance(thresholds, Mapping) and not any(_is_template(v) for v in thresholds.values()):
            parse_thresholds(thresholds)

    def execute(self, context: Context) -> dict[str, dict[str, Any]]:
        """Read every balance, log it, call back and fail or warn when any is low."""
        checks = check_balances(self.thresholds)
        for check in checks:
            if check.ok:
                self.log.info("%s", check.describe())
            else:
                self.log.warning("%s", check.describe())
        result = {check.conn_id: check.as_dict() for check in checks}
        problems = [check for check in checks if not check.ok]
        if not problems:
            return result
        payload = [check.as_dict() for check in problems]
        self._notify(context, payload, list(result.values()))
        message = f"{len(problems)} of {len(checks)} account(s) need attention: " + "; ".join(
            check.describe() for check in problems
        )
        if self.on_low == "warn":
            self.log.warning("%s", message)
            return result
        if any(check.error is not None for check in problems):
            raise AirflowException(message)
        raise AirflowFailException(message)

    def _notify(
        self, context: Context, problems: list[dict[str, Any]], balances: list[dict[str, Any]]
    ) -> None:
        callback = self.on_low_callback
        if callback is None:
            return
        if isinstance(callback, BaseNotifier):
            notifier_context: Any = {**context, "low_balances": problems, "balances": balances}
            callback(notifier_context)
        else:
            callback(problems)
