"""Credits pre-flight: price the bucket task's own job, halt if the balance cannot pay (docs/credits.md)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from itertools import groupby
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException, AirflowSkipException
from airflow_provider_bgremoval._moved import warn_moved
from airflow_provider_bgremoval.credits import (
    describe_error,
    has_enough,
    is_fatal_balance_error,
    parse_credits,
    parse_min_credits,
    takes_calls,
)
from airflow_provider_bgremoval.exceptions import InputRejectedError, InvalidOptionError
from airflow_provider_bgremoval.hooks.base import format_credits
from airflow_provider_bgremoval.hooks.pixian import PixianHook
from airflow_provider_bgremoval.operators.bucket import BucketImageOperator
from airflow_provider_bgremoval.operators.bucket_job import (
    BucketJob,
    BucketJobOperator,
    check_choice,
    is_template,
    parse_count,
    run_coroutine,
)
from airflow_provider_bgremoval.operators.operations import GenerationParameters, RemovalParameters
from airflow_provider_bgremoval.pipeline.accounts import Account, AccountChain
from airflow_provider_bgremoval.pipeline.halts import HaltInfo
from airflow_provider_bgremoval.pipeline.plan_store import (
    SAMPLES,
    PlanWriter,
    PricedRun,
    check_shard_limits,
    plan_prefix,
)
from airflow_provider_bgremoval.pipeline.planning import BatchPlan, DestinationCollisionError
from airflow_provider_bgremoval.pipeline.processors import RemovalProcessor
from airflow_provider_bgremoval.results import AccountState, Balance
from airflow_provider_bgremoval.storage.gcs import GcsStorage

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

ON_INSUFFICIENT_CHOICES = ("fail", "skip")
#: The batch's own parameters: the pre-flight ignores them with a DeprecationWarning until the next release.
_BATCH_ONLY_PARAMETERS = [
    name
    for name, parameter in inspect.signature(BucketImageOperator.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
]
#: The credit amounts of an estimate, written as a person writes them in logs and messages.
_AMOUNTS = ("cost_per_image", "needed", "margin_credits", "required", "available")


@dataclass(frozen=True)
class SafetyMargin:
    """
    Extra credits required on top of the estimate: an absolute number or a percentage of it.

    :param credits: absolute credits (unused with a percentage).
    :param percent: percentage of the estimate (``None`` when absolute).
    """

    credits: Decimal = Decimal(0)
    percent: Decimal | None = None

    @classmethod
    def parse(cls, value: Any) -> SafetyMargin:
        """
        ``None``/``0`` → no margin; ``5`` or ``"5"`` → 5 credits; ``"10%"`` → 10 % of the estimate.

        :param value: the ``safety_margin`` parameter.
        """
        if value in (None, ""):
            return cls()
        text = str(value).strip()
        if text.endswith("%"):
            return cls(percent=parse_min_credits(text[:-1], "safety_margin", unit="percent"))
        return cls(credits=parse_min_credits(value, "safety_margin"))

    def on(self, needed: Decimal) -> Decimal:
        """
        The margin in credits for an estimate of ``needed``.

        :param needed: the estimate.
        """
        return self.credits if self.percent is None else needed * self.percent / Decimal(100)

    def __str__(self) -> str:
        return str(self.credits) if self.percent is None else f"{self.percent}%"


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


class CreditsPreflightOperator(BucketJobOperator):
    """
    The credits pre-flight of a bucket job; a subclass adds the operation's parameters.

    :param safety_margin: extra credits required on top of the estimate: credits, or a percentage (``"10%"``).
    :param on_insufficient: ``"fail"`` (without retries) or ``"skip"`` (this task and its downstream).
    :param use_test_estimate: Pixian only: price an image with a free ``test=true`` call on a sample.
    :param max_shards: keep the plan in the bucket and push XCom ``shards``: at most this many shard
        descriptors for the mapped bucket tasks' ``shard`` (``None``: the plan is not kept).
    :param min_shard_size: fewest sources per shard (unless there are fewer).
    :param kwargs: the bucket job's parameters (:class:`BucketJobOperator`); the batch's own
        (``on_error``, ``claim_lease``…) are ignored, with a DeprecationWarning.
    """

    ui_color = "#fdf1d6"

    def __init__(
        self,
        *,
        safety_margin: float | int | str | None = None,
        on_insufficient: str = "fail",
        use_test_estimate: bool = False,
        max_shards: int | str | None = None,
        min_shard_size: int | str = 50,
        **kwargs: Any,
    ) -> None:
        ignored = [name for name in _BATCH_ONLY_PARAMETERS if kwargs.pop(name, None) is not None]
        super().__init__(**kwargs)
        if ignored:
            names = ", ".join(ignored)
            warn_moved(
                f"{type(self).__name__}({names})",
                f"{names} only apply to the bucket task; the pre-flight ignores them",
            )
        self.safety_margin = safety_margin
        self.on_insufficient = on_insufficient
        self.use_test_estimate = use_test_estimate
        self.max_shards = max_shards
        self.min_shard_size = min_shard_size
        if not is_template(on_insufficient):
            check_choice(on_insufficient, ON_INSUFFICIENT_CHOICES, "on_insufficient")
        if not is_template(safety_margin):
            SafetyMargin.parse(safety_margin)
        self._shard_limits()  # at DAG parse, not after a whole plan was listed and written
        self._check_test_estimate()  # what is known without a connection

    def _shard_limits(self) -> int | None:
        """
        ``max_shards`` (``None``: the plan is not kept), checked with ``min_shard_size`` before anything is
        planned (a templated value waits for rendering).
        """
        given = {name: getattr(self, name) for name in ("max_shards", "min_shard_size")}
        counts = {name: parse_count(value, name) for name, value in given.items() if not is_template(value)}
        check_shard_limits(counts.get("max_shards"), counts.get("min_shard_size"))
        return counts.get("max_shards")

    def _check_test_estimate(self) -> None:
        """
        Refuse a ``use_test_estimate`` that cannot apply whatever the connection: with ``cost_per_image``,
        for generate-background, or on a chain of connections (a templated ``conn_id``: once rendered).
        """
        if not self.use_test_estimate:
            return
        if self.cost_per_image not in (None, ""):
            raise InvalidOptionError(
                "use_test_estimate", "give either cost_per_image or use_test_estimate=True, not both"
            )
        if not isinstance(self, RemovalParameters):
            raise InvalidOptionError(
                "use_test_estimate",
                "only Pixian offers a free test-mode estimate, of a removal: generate-background is priced "
                "from its cost table or cost_per_image",
            )
        if not is_template(self.conn_id) and len(self.conn_ids()) > 1:
            raise InvalidOptionError(
                "use_test_estimate",
                "a chain of connections is priced from each one's cost: give cost_per_image",
            )

    def test_estimate_hook(self, job: BucketJob) -> PixianHook | None:
        """
        The hook ``use_test_estimate`` asks: ``None`` when not asked, or when the run's calls are in Pixian
        test mode themselves (then priced at 0 by the cost table).

        :param job: the prepared job.
        """
        if not self.use_test_estimate:
            return None
        self._check_test_estimate()  # conn_id rendered now
        hook = job.vendor_hook
        if not isinstance(hook, PixianHook) or not isinstance(self, RemovalParameters):
            raise InvalidOptionError(
                "use_test_estimate",
                f"only Pixian offers a free test-mode estimate (of a removal); "
                f"{self.conn_id!r} is a {hook.conn_type} connection",
            )
        return None if hook.is_test_mode(self.vendor_options) else hook

    def _test_estimate_hook_or_fail(self, job: BucketJob) -> PixianHook | None:
        """:meth:`test_estimate_hook`, a refused ``use_test_estimate`` failing the task without retries."""
        try:
            return self.test_estimate_hook(job)
        except InvalidOptionError as exc:  # retrying cannot fix it
            raise AirflowFailException(str(exc)) from exc

    def test_estimate(self, hook: PixianHook, storage: GcsStorage, plan: BatchPlan | PlanWriter) -> Decimal:
        """
        Pixian's free estimate of a removal: ``X-Credits-Calculated`` of a ``test=true`` call on a sample.

        :param hook: the Pixian hook (:meth:`test_estimate_hook`).
        :param storage: the GCS storage.
        :param plan: the batch plan.
        """
        assert isinstance(self, RemovalParameters)  # test_estimate_hook refused anything else
        last: InputRejectedError | None = None
        for item in plan.samples(SAMPLES):
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
            log.info(
                "Pixian test-mode estimate on %s: %s credits per image", item.source.uri, format_credits(cost)
            )
            return cost
        raise _SamplesRefusedError(f"Pixian refused every sample tried for the test-mode estimate: {last}")

    def _price(
        self, job: BucketJob, plan: BatchPlan | PlanWriter, hook: PixianHook | None
    ) -> tuple[Decimal, str]:
        if hook is not None and plan.billable:  # never with a cost_per_image (refused at parse)
            return self.test_estimate(hook, job.storage, plan), "test_estimate"
        source = "cost_table" if self.cost_per_image in (None, "") else "cost_per_image"
        return job.processor.cost_per_image, source

    def _priced(
        self,
        context: Context,
        job: BucketJob,
        plan: BatchPlan | PlanWriter,
        hook: PixianHook | None,
        max_shards: int | None,
    ) -> tuple[Decimal, str, BatchPlan | PlanWriter]:
        """
        :meth:`_price`; when Pixian refuses every sample of an unchecked plan (its first sources may be
        files no check would pass, e.g. macOS ``._name.jpg`` resource forks), the plan checked, priced
        on its samples.
        """
        try:
            return (*self._price(job, plan, hook), plan)
        except _SamplesRefusedError as exc:
            if plan.checked:
                raise
            log.warning("Credits pre-flight: %s; checking the files for samples a check passes", exc)
        plan = self._checked(context, job, plan, max_shards)
        return (*self._price(job, plan, hook), plan)

    def _checked(
        self, context: Context, job: BucketJob, plan: BatchPlan | PlanWriter, max_shards: int | None
    ) -> BatchPlan | PlanWriter:
        """An unchecked plan checked: in memory, or a kept plan planned again with the checks."""
        if isinstance(plan, BatchPlan):
            return job.check_plan(plan)
        return self._plan(context, job, max_shards, check=True)  # its items are not in memory

    def execute(self, context: Context) -> dict[str, Any]:
        """Plan, price, read the balance, and pass (estimate to XCom) or halt."""
        try:
            check_choice(self.on_insufficient, ON_INSUFFICIENT_CHOICES, "on_insufficient")
            margin = SafetyMargin.parse(self.safety_margin)
            max_shards = self._shard_limits()
            job = self.prepare_job()  # exactly the bucket operator's job
        except InvalidOptionError as exc:  # retrying cannot fix these
            raise AirflowFailException(str(exc)) from exc
        try:
            test_hook = self._test_estimate_hook_or_fail(job)
            # Unchecked, every unfinished source is billable: an upper bound the local checks only lower.
            plan = self._plan(context, job, max_shards, check=False)
            cost, cost_source, plan = self._priced(context, job, plan, test_hook, max_shards)
            balances = self._balances(context, job, plan.billable)
            estimate, pricing = self._estimate(job, plan, cost, cost_source, margin, balances)
            # Too close to call, or only a header can tell (which account of a chain takes an image):
            # check the files, price again.
            if not plan.checked and (
                not estimate["sufficient"] or self._limits_decide(job, estimate, balances)
            ):
                plan = self._checked(context, job, plan, max_shards)  # docs/credits.md
                estimate, pricing = self._estimate(job, plan, cost, cost_source, margin, balances)
        except DestinationCollisionError as exc:  # sources that share an output: retrying cannot fix it
            raise AirflowFailException(str(exc)) from exc
        finally:
            run_coroutine(job.aclose_hooks())
        if isinstance(plan, PlanWriter):
            estimate["shards"] = self._push_shards(context, job, plan, max_shards or 0, pricing)
        amounts = {key: format_credits(Decimal(estimate[key])) for key in _AMOUNTS}
        log.info(
            "Credits pre-flight (%(conn_id)s, %(vendor)s): %(billable_images)d billable of %(sources)d "
            "source(s) (%(already_done)d done, %(rejected_locally)d rejected locally) x %(price)s "
            "= %(needed)s; + margin %(margin_credits)s = %(required)s required; "
            "%(available)s available: %(verdict)s",
            {
                **estimate,
                **amounts,
                "price": _price_text(estimate, amounts),
                "verdict": "OK" if estimate["sufficient"] else "INSUFFICIENT",
            },
        )
        self._log_notes(estimate)
        if estimate["sufficient"]:
            return estimate
        self._halt(context, estimate, amounts)

    @staticmethod
    def _log_notes(estimate: Mapping[str, Any]) -> None:
        """What the estimate's figures leave unsaid: unread files, header-only checks, deferred images."""
        if estimate["local_checks"] == "batch" and estimate["billable_images"]:
            log.info(
                "Credits pre-flight (%s): the balance covers every unfinished source, so files were not read "
                "here; each is checked in the batch before its call (a broken one is never charged)",
                estimate["conn_id"],
            )
        if estimate["checked_by_header_only"]:
            note = describe_header_only(estimate["billable_images"], estimate["checked_by_header_only"])
            log.info("Credits pre-flight (%s): %s", estimate["conn_id"], note)
        if estimate["deferred_images"]:
            log.info(
                "Credits pre-flight (%s): the run's budget (max_images, max_credits, "
                "max_credits_per_account) covers %d of %d billable image(s); %d wait for a later run (%s)",
                estimate["conn_id"],
                estimate["billable_images"],
                estimate["planned_billable"],
                estimate["deferred_images"],
                "no shard holds them, so no manifest row records them"
                if "shards" in estimate
                else "the batch records them pending",
            )

    def _plan(
        self, context: Context, job: BucketJob, max_shards: int | None, *, check: bool
    ) -> BatchPlan | PlanWriter:
        """The run's plan: in memory, or kept in the bucket when ``max_shards`` is given."""
        if max_shards is None:
            return job.plan_batch(check=check)
        ti = context["ti"]
        try_number = int(getattr(ti, "try_number", 1) or 1)
        map_index = getattr(ti, "map_index", None)  # a mapped pre-flight: one plan folder per instance
        prefix = plan_prefix(
            job.spec.internal_prefix,
            ti.dag_id,
            ti.run_id,
            ti.task_id,
            try_number,
            map_index if isinstance(map_index, int) else None,
        )
        return job.keep_plan(prefix + ("checked/" if check else ""), check=check)

    @staticmethod
    def _limits_decide(job: BucketJob, estimate: Mapping[str, Any], balances: Sequence[Balance]) -> bool:
        """
        A chain whose accounts' limits differ passes unchecked only when each account alone pays for every
        billable image: only a header tells which account takes an image (docs/credits.md).
        """
        entries = estimate.get("accounts") or ()
        if not job.account_limits or not entries:
            return False
        wanted = int(estimate["billable_images"])
        return any(  # an account that takes no calls pays for none, also at 0 per image
            not takes_calls(balance) or Decimal(entry["usable"]) < Decimal(entry["cost_per_image"]) * wanted
            for entry, balance in zip(entries, balances, strict=True)
        )

    def _push_shards(
        self,
        context: Context,
        job: BucketJob,
        plan: PlanWriter,
        max_shards: int,
        pricing: Sequence[PricedRun],
    ) -> int:
        """Split the kept plan into shards holding what the estimate priced (:meth:`PlanWriter.finish`)."""
        images = sum(run.count for run in pricing)
        assert job.chain is not None
        min_shard_size = parse_count(self.min_shard_size, "min_shard_size") or 0
        refs = plan.finish(
            max_shards=max_shards,
            min_shard_size=min_shard_size,
            max_items=images,
            max_credits=parse_credits(self.max_credits, "max_credits"),
            account_credits={account.conn_id: account.budget for account in job.chain.accounts},
            pricing=pricing,
        )
        context["ti"].xcom_push(key="shards", value=[ref.model_dump(mode="json") for ref in refs])
        return len(refs)

    def _estimate(
        self,
        job: BucketJob,
        plan: BatchPlan | PlanWriter,
        cost: Decimal,
        cost_source: str,
        margin: SafetyMargin,
        balances: Sequence[Balance],
    ) -> tuple[dict[str, Any], list[PricedRun]]:
        """
        The estimate of ``plan`` (fields: docs/credits.md), a chain's pooled over its accounts; with how
        it priced its ``billable_images`` (what the shards hold), image by image in plan order.
        """
        max_images = parse_count(self.max_images, "max_images")
        max_credits = parse_credits(self.max_credits, "max_credits")
        billable = plan.billable if max_images is None else min(plan.billable, max_images)
        pooled: dict[str, Any] = {}
        if len(balances) > 1:  # the images the pooled allocation reaches within max_credits
            billable, pooled, pricing = self._pooled(
                job, plan.accepted_among(billable), balances, max_credits
            )
            needed = Decimal(pooled["needed"])
        else:  # the images max_credits and the account's budget pay for at the cost per image
            billable, pricing = self._single(job, billable, cost, max_credits)
            needed = cost * billable
        extra = margin.on(needed) if billable else Decimal(0)
        if pooled:
            # the margin is backed only by the accounts the batch reaches when one runs out
            reachable = Decimal(pooled["reachable_available"])
            sufficient = pooled["shortfall_images"] == 0 and reachable >= needed + extra
        else:
            sufficient = has_enough(balances[0], needed + extra)
        estimate = {
            "conn_id": self.conn_ids() if pooled else self.conn_ids()[0],
            "vendor": job.processor.vendor,
            "operation": job.processor.operation,
            "sources": plan.total,
            "billable_images": billable,
            "planned_billable": plan.billable,
            "deferred_images": plan.billable - billable,
            "local_checks": "plan" if plan.checked else "batch",
            "checked_by_header_only": plan.header_only_among(billable) if plan.checked else 0,
            "already_done": plan.count_kind("already_done"),
            "rejected_locally": plan.count_kind("rejected_locally"),
            "cost_per_image": str(cost),
            "cost_source": cost_source,
            "needed": str(needed),
            "safety_margin": str(margin),
            "margin_credits": str(extra),
            "required": str(needed + extra),
            **self._render_only(job, plan),
            "available": str(balances[0].remaining),
            **pooled,  # a chain's "available" is its accounts' usable credits in all
            "balance": balances[0].as_dict(),
            "sufficient": billable == 0 or sufficient,
        }
        return estimate, pricing

    @staticmethod
    def _single(
        job: BucketJob, billable: int, cost: Decimal, max_credits: Decimal | None
    ) -> tuple[int, list[PricedRun]]:
        """
        One connection's billable images: as many as ``max_credits`` and its ``max_credits_per_account``
        pay for at what the batch reserves per image (:func:`_reserved_per_image`), priced so in the shards.
        """
        assert job.chain is not None
        account = job.chain.primary
        reserved = _reserved_per_image(account, cost)
        if reserved > 0:
            for budget in (max_credits, account.budget):
                billable = billable if budget is None else min(billable, int(budget // reserved))
        return billable, [PricedRun(billable, account.conn_id, reserved)] if billable else []

    @staticmethod
    def _pooled(
        job: BucketJob,
        accepted: Sequence[int | None],
        balances: Sequence[Balance],
        max_credits: Decimal | None,
    ) -> tuple[int, dict[str, Any], list[PricedRun]]:
        """
        A chain's share of the estimate: each billable image at the first account whose limits take it
        and whose usable credits pay for it, within ``max_credits`` (docs/credits.md, "Pooled pre-flight");
        with how many of the first billable images that allocation reaches (what the shards hold) and
        where it priced each of them.
        """
        assert job.chain is not None
        accounts = list(job.chain.accounts)
        pool = _Pool(
            [account.unit_cost() for account in accounts],
            [_usable(account.budget, balance) for account, balance in zip(accounts, balances, strict=True)],
            max_credits,
            [_passes_on(job.chain, a.budget, b) for a, b in zip(accounts, balances, strict=True)],
            [takes_calls(balance) for balance in balances],
        )
        for mask, run in groupby(accepted):
            pool.take(sum(1 for _ in run), [i for i in range(len(accounts)) if mask is None or mask >> i & 1])
        entries = [
            {
                "conn_id": account.conn_id,
                "vendor": account.vendor,
                "cost_per_image": str(cost),
                "available": str(balance.remaining),
                "state": balance.state.value,
                "usable": str(usable),
                "images": images,
                "credits": str(cost * images),
            }
            for account, balance, cost, usable, images in zip(
                accounts, balances, pool.costs, pool.usable, pool.images, strict=True
            )
        ]
        needed = pool.needed if max_credits is None else min(pool.needed, max_credits)
        pricing = [
            PricedRun(count, None if index is None else accounts[index].conn_id, cost)
            for count, index, cost in pool.runs
        ]
        return (
            pool.reached,
            {
                "needed": str(needed),
                "available": str(sum(pool.usable, Decimal(0))),
                "reachable_available": str(pool.reachable_usable()),
                "accounts": entries,
                "used_accounts": [entry["conn_id"] for entry in entries if entry["images"]],
                "shortfall_images": pool.shortfall,
                "unaccepted_images": pool.unaccepted,
            },
            pricing,
        )

    @staticmethod
    def _render_only(job: BucketJob, plan: BatchPlan | PlanWriter) -> dict[str, Any]:
        """With renditions, the free sources: render-only, non-compliant by size, recorded non-compliant."""
        if job.renditions is None:
            return {}
        return {
            "render_only_images": len(plan.render) if isinstance(plan, BatchPlan) else plan.render_only,
            "noncompliant_at_planning": plan.count_kind("noncompliant_at_planning"),
            "recorded_noncompliant": plan.count_kind("recorded_noncompliant"),
        }

    def _balances(self, context: Context, job: BucketJob, billable: int) -> list[Balance]:
        """
        The balance of each account in chain order (one connection: its own, as always). A key refused in
        a chain counts as 0 credits (the batch fails over past it), unless no account can be read, or the
        primary's is refused and the chain does not fail over on ``auth_failed``: then it halts as one
        connection's refused key does (the batch's first call would fail).
        """
        assert job.chain is not None
        chain = job.chain
        readings = [self._balance(account) for account in chain.accounts]
        refused = [(a, r) for a, r in zip(chain.accounts, readings, strict=True) if isinstance(r, Exception)]
        if len(refused) == len(readings):  # one connection, or a chain none of whose keys works
            why = "; no account of the chain can be read" if len(readings) > 1 else ""
            self._auth_halt(context, *refused[0], billable, why)
        if refused and refused[0][0] is chain.primary and not chain.fails_over("auth_failed"):
            self._auth_halt(context, *refused[0], billable, "; the chain does not fail over on auth_failed")
        for account, exc in refused:
            log.warning(
                "Credits pre-flight: %r refused its key (%s); counted as 0 credits", account.conn_id, exc
            )
        none = {
            a.conn_id: Balance(vendor=a.vendor, remaining=Decimal(0), state=AccountState.SUSPENDED)
            for a, _ in refused
        }
        return [  # test mode as the account's calls run (their options, else the connection's extra)
            replace(r, test_mode=_in_test_mode(a)) if isinstance(r, Balance) else none[a.conn_id]
            for a, r in zip(chain.accounts, readings, strict=True)
        ]

    @staticmethod
    def _balance(account: Account) -> Balance | Exception:
        """An account's balance, or the error no later read can fix (a transient one is raised: retried)."""
        hook = account.hook
        assert hook is not None
        try:
            return hook.get_balance()
        except Exception as exc:
            if not is_fatal_balance_error(exc):
                raise AirflowException(
                    f"credits pre-flight on {account.conn_id!r}: could not read the balance "
                    f"({describe_error(exc)})"
                ) from exc
            return exc

    @staticmethod
    def _auth_halt(context: Context, account: Account, exc: Exception, billable: int, why: str) -> NoReturn:
        """Fail at once, without retries, with an ``auth_failed`` halt naming ``account`` (``why``: more)."""
        halt = HaltInfo(
            reason="auth_failed",
            vendor=account.vendor,
            message=f"could not read the balance of {account.conn_id!r}: {exc}{why}",
            remaining_images=billable,
            fatal=True,
            conn_id=account.conn_id,
        )
        context["ti"].xcom_push(key="halt", value=halt.as_dict())
        raise AirflowFailException(f"credits pre-flight: {halt.message}") from exc

    def _halt(self, context: Context, estimate: dict[str, Any], amounts: dict[str, str]) -> NoReturn:
        billable, header_only = estimate["billable_images"], estimate["checked_by_header_only"]
        margin = (
            f" incl. safety margin {amounts['margin_credits']}" if Decimal(estimate["margin_credits"]) else ""
        )
        account = estimate["balance"]["state"]
        state = "" if account == AccountState.ACTIVE.value else f" (account {account})"
        message = (
            f"insufficient credits on {estimate['conn_id']!r}: {billable} billable image(s) x "
            f"{amounts['cost_per_image']} credits need {amounts['required']}{margin}, "
            f"but only {amounts['available']} are available{state}"
        )
        pooled = estimate.get("accounts") or ()
        if pooled:
            message = _pooled_shortfall_text(estimate, amounts, margin, self.failover_on)
        halt = HaltInfo(
            reason="insufficient_credits",
            vendor=estimate["vendor"],
            message=message,
            remaining_images=billable,
            needed=Decimal(estimate["required"]),
            available=Decimal(estimate["available"]),
            fatal=self.on_insufficient == "fail",
            accounts=tuple(pooled),
            shortfall_images=estimate.get("shortfall_images"),
            conn_id=None if pooled else estimate["conn_id"],  # a chain's: every account, per account
        )
        context["ti"].xcom_push(key="estimate", value=estimate)
        context["ti"].xcom_push(key="halt", value=halt.as_dict())
        text = (
            f"Credits pre-flight ({estimate['vendor']}): {message}. "
            "Nothing was charged; top up or shrink the batch."
        )
        if header_only:
            text += f" ({describe_header_only(billable, header_only)}.)"
        if self.on_insufficient == "skip":
            raise AirflowSkipException(text)
        raise AirflowFailException(text)


def _pooled_shortfall_text(
    estimate: Mapping[str, Any], amounts: Mapping[str, str], margin: str, failover_on: Sequence[str]
) -> str:
    """
    A chain's halt message: the images no account covers (or the margin, when every image is covered),
    each account's share, and when the chain does not fail over out of credits, why its later accounts
    took none of them.
    """
    shares = "; ".join(
        f"{a['conn_id']} ({a['vendor']}): {a['usable']} usable at {a['cost_per_image']} per image "
        f"-> {a['images']} image(s)"
        for a in estimate["accounts"]
    )
    short = estimate["shortfall_images"]
    covered = f"{short} not covered by any account" if short else "each covered, not the safety margin"
    stops = (
        "; failover_on leaves out out_of_credits, so the batch stops at the first account its balance "
        "cannot pay for"
        if short and "out_of_credits" not in failover_on
        else ""
    )
    reachable = Decimal(estimate["reachable_available"])
    unreached = (
        f", {format_credits(reachable)} of them on the accounts the batch reaches before one that does "
        "not fail over when it runs out (failover_on leaves out out_of_credits)"
        if reachable != Decimal(estimate["available"])
        else ""
    )
    return (
        f"insufficient pooled credits on {', '.join(estimate['conn_id'])}: {estimate['billable_images']} "
        f"billable image(s), {covered} ({shares}){stops}; {amounts['required']} required{margin}, "
        f"{amounts['available']} usable in all{unreached}"
    )


class _SamplesRefusedError(AirflowException):
    """Pixian refused every sample tried for the test-mode estimate."""


def _price_text(estimate: Mapping[str, Any], amounts: Mapping[str, str]) -> str:
    """How the log prices the billable images: one cost, or a chain's allocation account by account."""
    pooled = estimate.get("accounts")
    if not pooled:
        return f"{amounts['cost_per_image']} credits ({estimate['cost_source']})"
    shares = ", ".join(f"{a['conn_id']} {a['images']} x {a['cost_per_image']}" for a in pooled)
    return f"the chain's credits ({shares}, {estimate['shortfall_images']} short)"


def _reserved_per_image(account: Account, estimate: Decimal) -> Decimal:
    """
    What the batch holds against the budgets for each image on ``account``: the dearer of the pre-flight's
    estimate and the account's unit cost (:meth:`Account.unit_cost`, what the batch reserves per image in
    flight). A test-mode estimate below the cost table must not buy, nor give a shard, fewer credits than
    the batch reserves: its last image would stay pending (docs/credits.md).

    :param account: the account the images are priced on.
    :param estimate: the pre-flight's cost per image (``cost_per_image``, the cost table or the estimate).
    """
    return max(estimate, account.unit_cost())


def _usable(budget: Decimal | None, balance: Balance) -> Decimal:
    """An account's usable credits for the run: its balance (0 when unusable), capped by its budget."""
    usable = balance.remaining if balance.usable else Decimal(0)
    return usable if budget is None else min(usable, budget)


def _in_test_mode(account: Account) -> bool:
    """
    Whether the account's calls run in Pixian's test mode (free): its removal options' ``test``, else its
    connection's ``test_mode`` extra (:meth:`PixianHook.is_test_mode`, as the batch sends them).
    """
    processor = account.processor
    return (
        isinstance(processor, RemovalProcessor)
        and isinstance(processor.hook, PixianHook)
        and processor.hook.is_test_mode(processor.vendor_options)
    )


def _passes_on(chain: AccountChain, budget: Decimal | None, balance: Balance) -> bool:
    """
    Whether the batch moves the images an account cannot pay for on to the next account: always when
    its ``max_credits_per_account`` stops it before its balance does; when its balance runs out, only
    with ``out_of_credits`` in ``failover_on``; an account that takes no calls (:func:`takes_calls`: a
    refused key, suspended, dormant unless in test mode) also with ``auth_failed``.
    """
    if chain.fails_over("out_of_credits"):
        return True
    if not takes_calls(balance):  # an active one may just be empty
        return chain.fails_over("auth_failed")
    return budget is not None and budget <= balance.remaining


@dataclass
class _Pool:
    """
    A chain's accounts taking images in order (the pooled pre-flight's allocation).

    :param costs: each account's cost per image.
    :param usable: each account's usable credits (what is left of them).
    :param cap: the credits ``max_credits`` leaves (``None``: no cap).
    :param passes: whether the images an account cannot pay for go on to the next one (the batch fails
        over when it is spent); else they are short (empty: every account passes them on).
    :param takes: whether each account takes calls at all (:func:`takes_calls`; empty: every one). One
        that does not takes no image whatever its cost: 0 usable credits at 0 per image pay for none.
    """

    costs: list[Decimal]
    usable: list[Decimal]
    cap: Decimal | None
    passes: Sequence[bool] = ()
    takes: Sequence[bool] = ()
    needed: Decimal = Decimal(0)
    shortfall: int = 0
    unaccepted: int = 0
    #: How many of the first images, in plan order, the allocation reaches before the cap leaves one out.
    reached: int = 0
    capped: bool = False

    def __post_init__(self) -> None:
        self.images = [0] * len(self.costs)
        self.left = list(self.usable)
        #: Where the reached images were priced, in plan order: ``(count, account index, cost)`` runs
        #: (account ``None``: no account accepts them, or none could pay: the shortfall).
        self.runs: list[tuple[int, int | None, Decimal]] = []

    def take(self, count: int, order: Sequence[int]) -> None:
        """
        ``count`` images the accounts ``order`` (indices, in chain order) accept, in turn.

        :param count: how many images.
        :param order: the accounts whose limits take them.
        """
        if self.capped:  # the cap left an earlier image out: the shards end before this one
            return
        if not order:  # the batch rejects them before any call
            self.unaccepted += count
            self._place(count, None, Decimal(0))
            self._reach(count, count)
            return
        wanted = count
        for index in order:
            cost = self.costs[index]
            left = self.left[index] if self.cap is None else min(self.left[index], self.cap)
            if self.takes and not self.takes[index]:
                images = 0
            else:
                images = count if cost <= 0 else min(count, int(max(left, Decimal(0)) // cost))
            self.images[index] += images
            self.left[index] -= cost * images
            self._place(images, index, cost)
            count -= images
            if count and self.passes and not self.passes[index]:
                break  # the batch halts there: no later account takes the rest
        first = self._shortfall_cost(order)
        short = count if self.cap is None or first <= 0 else min(count, int(self.cap // first))
        self.shortfall += short
        self._place(short, None, first)
        self._reach(wanted - count + short, wanted)

    def _shortfall_cost(self, order: Sequence[int]) -> Decimal:
        """
        What an image none of ``order`` pays for is priced at: the cost of the first of them that takes
        calls (an unusable account's 0 per image would price it at nothing), else the first one's.
        """
        open_ = [index for index in order if not self.takes or self.takes[index]]
        return self.costs[(open_ or order)[0]]

    def reachable_usable(self) -> Decimal:
        """
        The usable credits of the accounts the batch can reach when one runs out: up to the first that
        does not pass its images on (:func:`_passes_on`); what backs the safety margin.
        """
        last = next((i for i, passes in enumerate(self.passes) if not passes), len(self.usable) - 1)
        return sum(self.usable[: last + 1], Decimal(0))

    def _place(self, count: int, index: int | None, cost: Decimal) -> None:
        """Price ``count`` images at ``cost`` on account ``index`` (``None``: on none)."""
        if count:
            self.runs.append((count, index, cost))
        self.needed += cost * count
        if self.cap is not None:
            self.cap -= cost * count

    def _reach(self, covered: int, count: int) -> None:
        """The allocation reaches ``covered`` of the next ``count`` images (fewer: the cap stopped it)."""
        if not self.capped:
            self.reached += covered
            self.capped = covered < count


#: Template fields the pre-flight adds to its operation's.
_PREFLIGHT_TEMPLATE_FIELDS = ("safety_margin", "on_insufficient", "max_shards", "min_shard_size")


class CreditsCheckOperator(RemovalParameters, CreditsPreflightOperator):
    """
    Pre-flight budget for :class:`~airflow_provider_bgremoval.operators.bucket.RemoveBackgroundOperator`.

    Give it the bucket task's parameters and put it upstream; it returns the estimate, or pushes XCom
    ``estimate`` and ``halt`` and fails or skips (docs/credits.md). Parameters:
    :class:`CreditsPreflightOperator` (pre-flight), :class:`RemovalParameters` (image).
    """

    template_fields: Sequence[str] = (*RemovalParameters.template_fields, *_PREFLIGHT_TEMPLATE_FIELDS)


class GenerateCreditsCheckOperator(GenerationParameters, CreditsPreflightOperator):
    """
    Pre-flight budget for :class:`~airflow_provider_bgremoval.operators.bucket.GenerateBackgroundOperator`.

    As :class:`CreditsCheckOperator`, priced with the generate-background cost (no ``use_test_estimate``);
    scene parameters: :class:`GenerationParameters`.
    """

    template_fields: Sequence[str] = (*GenerationParameters.template_fields, *_PREFLIGHT_TEMPLATE_FIELDS)
