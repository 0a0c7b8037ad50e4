"""The credits pre-flight: can the balance pay for this batch? If not, halt before any image is sent.

:class:`CreditsCheckOperator` (and :class:`GenerateCreditsCheckOperator`) prepares the *same*
:class:`~airflow_provider_bgremoval.operators.bucket_job.BucketJob` as the bucket task it guards, from
the same parameters, plans it with the same code (:meth:`BucketJob.plan_batch
<airflow_provider_bgremoval.operators.bucket_job.BucketJob.plan_batch>` → ``plan_batch``), prices the
billable work with the same processor cost logic, and compares it with the balance. It spends 0
credits: planning is local plus GCS, the balance endpoint is free, and Pixian's optional estimate is a
free ``test=true`` call.

A pre-flight halt reports the same shape as the bucket pipeline's mid-batch halt
(:class:`~airflow_provider_bgremoval.pipeline.engine.HaltInfo`, reason ``insufficient_credits``), so
one alert can handle both.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException, AirflowSkipException
from airflow_provider_bgremoval.credits import (
    describe_error,
    has_enough,
    is_fatal_balance_error,
    parse_credits,
    parse_min_credits,
)
from airflow_provider_bgremoval.exceptions import InputRejectedError, InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators.bucket_job import (
    BucketJob,
    BucketJobOperator,
    is_template,
    parse_count,
)
from airflow_provider_bgremoval.operators.operations import GenerationParameters, RemovalParameters
from airflow_provider_bgremoval.pipeline.engine import HaltInfo
from airflow_provider_bgremoval.pipeline.planning import BatchPlan
from airflow_provider_bgremoval.results import AccountState, Balance
from airflow_provider_bgremoval.storage.gcs import GcsStorage

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

ON_INSUFFICIENT_CHOICES = ("fail", "skip")
#: Samples tried for Pixian's test-mode estimate when a sample is refused by the vendor.
_TEST_ESTIMATE_SAMPLES = 3
#: Parameters of the batch alone, which the pre-flight accepted while it inherited the bucket
#: operator; they are ignored with a DeprecationWarning until the next release.
_BATCH_ONLY_PARAMETERS = (
    "on_error",
    "max_failure_rate",
    "claim_lease",
    "progress_interval",
    "on_pending",
    "drain_grace",
    "manifest_checkpoint_rows",
    "manifest_checkpoint_seconds",
)


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


def _check_on_insufficient(value: Any) -> None:
    if value not in ON_INSUFFICIENT_CHOICES:
        raise InvalidOptionError(
            "on_insufficient", f"{value!r} is not one of {', '.join(ON_INSUFFICIENT_CHOICES)}"
        )


class CreditsPreflightOperator(BucketJobOperator):
    """
    The credits pre-flight of a bucket job (see :class:`CreditsCheckOperator`).

    The job (planning, processor, cost logic) is the bucket operator's own
    :class:`~airflow_provider_bgremoval.operators.bucket_job.BucketJob`; a subclass adds the
    operation's parameters (:class:`~airflow_provider_bgremoval.operators.operations.RemovalParameters`
    or :class:`~airflow_provider_bgremoval.operators.operations.GenerationParameters`).

    :param safety_margin: extra credits required on top of the estimate: a number of credits or a
        percentage of the estimate such as ``"10%"`` (templated).
    :param on_insufficient: ``"fail"`` (fail without retries) or ``"skip"`` (skip this task and,
        through the default trigger rule, everything downstream).
    :param use_test_estimate: Pixian only: price one image with a free ``test=true`` call on a sample
        (``X-Credits-Calculated``) instead of the cost table.
    :param kwargs: the bucket job's parameters (same meaning as on the bucket task; ``max_images`` and
        ``max_credits`` cap the estimate as they cap the batch). The batch's own parameters
        (``on_error``, ``claim_lease``…) are ignored, with a DeprecationWarning.
    """

    ui_color = "#fdf1d6"

    def __init__(
        self,
        *,
        safety_margin: float | int | str | None = None,
        on_insufficient: str = "fail",
        use_test_estimate: bool = False,
        **kwargs: Any,
    ) -> None:
        ignored = [name for name in _BATCH_ONLY_PARAMETERS if kwargs.pop(name, None) is not None]
        super().__init__(**kwargs)
        if ignored:
            warnings.warn(
                f"{type(self).__name__}: {', '.join(ignored)} only apply to the bucket task and are "
                "ignored by the pre-flight; passing them is deprecated",
                DeprecationWarning,
                stacklevel=3,
            )
        self.safety_margin = safety_margin
        self.on_insufficient = on_insufficient
        self.use_test_estimate = use_test_estimate
        if not is_template(on_insufficient):
            _check_on_insufficient(on_insufficient)
        if not is_template(safety_margin):
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

    def _price(self, job: BucketJob, plan: BatchPlan) -> tuple[Decimal, str]:
        if self.cost_per_image not in (None, ""):
            return job.processor.cost_per_image, "cost_per_image"
        if self.use_test_estimate and plan.items:
            return self.test_estimate(job.hook, job.storage, plan), "test_estimate"
        return job.processor.cost_per_image, "cost_table"

    # -- the check -----------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        """Plan, price, read the balance, and pass (estimate to XCom) or halt."""
        _check_on_insufficient(self.on_insufficient)
        margin = SafetyMargin.parse(self.safety_margin)
        max_images = parse_count(self.max_images, "max_images")
        max_credits = parse_credits(self.max_credits, "max_credits")
        job = self.prepare_job()  # exactly the bucket operator's job
        try:
            plan = job.plan_batch()
            cost, cost_source = self._price(job, plan)
            balance = self._balance(context, job.hook, job.processor.vendor, len(plan.items))
        finally:
            job.hook.close()
        billable = len(plan.items) if max_images is None else min(len(plan.items), max_images)
        needed = cost * billable
        if max_credits is not None:
            needed = min(needed, max_credits)
        extra = margin.on(needed) if billable else Decimal(0)
        estimate: dict[str, Any] = {
            "conn_id": self.conn_id,
            "vendor": job.processor.vendor,
            "operation": job.processor.operation,
            "sources": plan.total,
            "billable_images": billable,
            "planned_billable": len(plan.items),
            "checked_by_header_only": plan.header_only_among(billable),
            "already_done": plan.count("skipped"),
            "rejected_locally": plan.count("rejected"),
            "cost_per_image": str(cost),
            "cost_source": cost_source,
            "needed": str(needed),
            "safety_margin": str(margin),
            "margin_credits": str(extra),
            "required": str(needed + extra),
            "available": str(balance.remaining),
            "balance": balance.as_dict(),
            "sufficient": billable == 0 or has_enough(balance, needed + extra),
        }
        self._log_estimate(estimate)
        if estimate["sufficient"]:
            return estimate
        self._halt(context, estimate, balance)

    def _log_estimate(self, estimate: dict[str, Any]) -> None:
        log.info(
            "Credits pre-flight (%s, %s): %d billable of %d source(s) (%d done, %d rejected locally) x %s "
            "credits (%s) = %s; + margin %s = %s required; %s available: %s",
            self.conn_id,
            estimate["vendor"],
            estimate["billable_images"],
            estimate["sources"],
            estimate["already_done"],
            estimate["rejected_locally"],
            estimate["cost_per_image"],
            estimate["cost_source"],
            estimate["needed"],
            estimate["margin_credits"],
            estimate["required"],
            estimate["available"],
            "OK" if estimate["sufficient"] else "INSUFFICIENT",
        )
        if estimate["checked_by_header_only"]:
            log.info(
                "Credits pre-flight (%s): %s",
                self.conn_id,
                describe_header_only(estimate["billable_images"], estimate["checked_by_header_only"]),
            )

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

    def _halt(self, context: Context, estimate: dict[str, Any], balance: Balance) -> NoReturn:
        billable = estimate["billable_images"]
        margin_text = (
            f" incl. safety margin {estimate['margin_credits']}"
            if Decimal(estimate["margin_credits"])
            else ""
        )
        state = "" if balance.state is AccountState.ACTIVE else f" (account {balance.state.value})"
        message = (
            f"insufficient credits on {self.conn_id!r}: {billable} billable image(s) x "
            f"{estimate['cost_per_image']} credits need {estimate['required']}{margin_text}, "
            f"but only {estimate['available']} are available{state}"
        )
        halt = HaltInfo(
            reason="insufficient_credits",
            vendor=estimate["vendor"],
            message=message,
            remaining_images=billable,
            needed=Decimal(estimate["required"]),
            available=Decimal(estimate["available"]),
            fatal=self.on_insufficient == "fail",
        )
        ti = context["ti"]
        ti.xcom_push(key="estimate", value=estimate)
        ti.xcom_push(key="halt", value=halt.as_dict())
        text = (
            f"Credits pre-flight ({estimate['vendor']}): {message}. "
            "Nothing was charged; top up or shrink the batch."
        )
        if estimate["checked_by_header_only"]:
            text += f" ({describe_header_only(billable, estimate['checked_by_header_only'])}.)"
        if self.on_insufficient == "skip":
            raise AirflowSkipException(text)
        raise AirflowFailException(text)


#: Template fields the pre-flight adds to its operation's.
_PREFLIGHT_TEMPLATE_FIELDS = ("safety_margin", "on_insufficient")


class CreditsCheckOperator(RemovalParameters, CreditsPreflightOperator):
    """
    Pre-flight budget for
    :class:`~airflow_provider_bgremoval.operators.bucket.RemoveBackgroundOperator`: never start what
    you cannot finish.

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

    The pre-flight's parameters (``safety_margin``, ``on_insufficient``, ``use_test_estimate``: one
    free Pixian ``test=true`` call on a sample reads ``X-Credits-Calculated`` as the per-image cost)
    are documented on :class:`CreditsPreflightOperator`; the image parameters on
    :class:`~airflow_provider_bgremoval.operators.operations.RemovalParameters`.
    """

    template_fields: Sequence[str] = (*RemovalParameters.template_fields, *_PREFLIGHT_TEMPLATE_FIELDS)

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


class GenerateCreditsCheckOperator(GenerationParameters, CreditsPreflightOperator):
    """
    Pre-flight budget for
    :class:`~airflow_provider_bgremoval.operators.bucket.GenerateBackgroundOperator` (Pixelcut): same
    checks and results as :class:`CreditsCheckOperator`, priced with the generate-background cost
    (1 credit by default). ``use_test_estimate`` is not available for Pixelcut (raises).

    The pre-flight's parameters are documented on :class:`CreditsPreflightOperator`; the scene
    parameters on :class:`~airflow_provider_bgremoval.operators.operations.GenerationParameters`.
    """

    template_fields: Sequence[str] = (*GenerationParameters.template_fields, *_PREFLIGHT_TEMPLATE_FIELDS)
