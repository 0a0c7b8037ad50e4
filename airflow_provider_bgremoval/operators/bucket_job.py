"""The bucket job (what a bucket task works on) and the operator base that holds its parameters."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from abc import abstractmethod
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, TypeVar

from airflow.sdk import BaseOperator

from airflow_provider_bgremoval.credits import parse_credits
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.imaging import InputLimits
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.options import load_list as load_list  # noqa: PLC0414 (re-exported)
from airflow_provider_bgremoval.pipeline.accounts import (
    Account,
    AccountChain,
    BreakerPolicy,
    CircuitBreaker,
    parse_failover_on,
)
from airflow_provider_bgremoval.pipeline.naming import masters_prefix
from airflow_provider_bgremoval.pipeline.plan_store import PlanWriter, ShardRef, read_shard
from airflow_provider_bgremoval.pipeline.planning import (
    LOCATION_PARAMETERS,
    BatchPlan,
    BatchSpec,
    OutputIdentity,
    check_location,
    check_plan,
    plan_batch,
    plan_into,
)
from airflow_provider_bgremoval.pipeline.processors import ImageProcessor, RemovalProcessor
from airflow_provider_bgremoval.pipeline.rendering import RenditionLayout, master_within_source
from airflow_provider_bgremoval.renditions import Rendition, parse_renditions
from airflow_provider_bgremoval.retry import ClaimHold
from airflow_provider_bgremoval.storage.exceptions import gs_uri
from airflow_provider_bgremoval.storage.gcs import GcsStorage

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Fewest local checks planning runs at once, whatever ``max_concurrency`` is.
MIN_PLANNING_CONCURRENCY = 4


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """
    Run ``coro`` to completion from sync code, also inside a running event loop.

    :param coro: the coroutine.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


#: The parameters the rendition layout follows from (its checks wait for them to be rendered).
_LAYOUT_FIELDS = (
    "renditions",
    "source_bucket",
    "destination_bucket",
    "source_prefix",
    "source_objects",
    "destination_prefix",
    "masters_prefix",
    "shard",
)


def is_template(value: Any) -> bool:
    """
    True when ``value`` is a Jinja template or a value Airflow resolves before ``execute()`` (an
    ``XComArg`` such as ``budget_task()``, a mapped argument, ``dag.param(...)``): checked once rendered.

    :param value: a parameter value.
    """
    return (isinstance(value, str) and "{{" in value) or _resolved_at_run_time(value)


def _resolved_at_run_time(value: Any) -> bool:
    """
    An ``XComArg``, a mapped argument, a ``DagParam``: what Airflow's templater resolves before
    ``execute()`` (its private ``ResolveMixin``, known here by the two methods the templater calls).
    """
    return all(callable(getattr(type(value), name, None)) for name in ("resolve", "iter_references"))


def check_choice(value: Any, choices: Sequence[str], parameter: str) -> None:
    """
    Raise :class:`~airflow_provider_bgremoval.exceptions.InvalidOptionError` unless ``value`` is a choice.

    :param value: the parameter value.
    :param choices: the values allowed.
    :param parameter: the parameter name used in the error message.
    """
    if value not in choices:
        raise InvalidOptionError(parameter, f"{value!r} is not one of {', '.join(choices)}")


def parse_count(value: Any, parameter: str) -> int | None:
    """
    ``None`` (not given: ``None`` or ``""``) or a non-negative integer.

    :param value: an integer or an integer string.
    :param parameter: the parameter name used in the error message.
    """
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(parameter, f"{value!r} is not an integer") from None
    if number < 0:
        raise InvalidOptionError(parameter, "must be at least 0")
    return number


def warn_if_no_sources(spec: BatchSpec, sources: int) -> None:
    """
    Log a warning when planning found no source at all (not one listed, or kept by ``include`` /
    ``exclude``): the run does nothing and succeeds, which a typo in the bucket, the prefix or a pattern
    must not pass for. It names where it looked and the filters.

    :param spec: the batch spec.
    :param sources: the sources planned (:attr:`BatchPlan.total`).
    """
    if sources:
        return
    uri = gs_uri(spec.source_bucket, spec.source_prefix)
    where = f"nothing under {uri}"
    if spec.source_objects is not None:
        where = f"none of the {len(spec.source_objects)} source_objects (under {uri})"
    log.warning(
        "No source objects: %s is kept by include %s and exclude %s (the provider's own "
        "_bgremoval/ folders are never sources), so this task processes nothing. Check source_bucket, "
        "source_prefix (matched from the start of object names, case-sensitive), include and exclude",
        where,
        _patterns(spec.include),
        _patterns(spec.exclude),
    )


def _patterns(patterns: str | Sequence[str] | None) -> str:
    """Glob patterns as the warning shows them (``none`` when not given)."""
    given = [patterns] if isinstance(patterns, str) else list(patterns or ())
    return ", ".join(map(repr, given)) or "none"


@dataclass(frozen=True)
class BucketJob:
    """
    What one bucket task works on.

    :param spec: sources, outputs and filters.
    :param storage: the GCS storage.
    :param hook: the vendor hook (the caller closes it).
    :param processor: the vendor operation applied to each image.
    :param planning_concurrency: local checks planning runs at once.
    :param shard: the share of a plan kept in the bucket this task works on (instead of planning).
    :param renditions: the renditions of each source (``None``: one output per source, as always).
    :param masters_are_sources: the sources are masters already (render-only: no vendor call).
    :param chain: the vendor accounts in failover order (``hook`` and ``processor`` are its primary's);
        ``None`` for a render-only job.
    """

    spec: BatchSpec
    storage: GcsStorage
    hook: BackgroundRemovalHook[Any] | None
    processor: ImageProcessor
    planning_concurrency: int = MIN_PLANNING_CONCURRENCY
    shard: ShardRef | None = None
    renditions: RenditionLayout | None = None
    masters_are_sources: bool = False
    chain: AccountChain | None = None

    @property
    def hooks(self) -> list[BackgroundRemovalHook[Any]]:
        """Every vendor hook of the job (the caller closes them)."""
        if self.chain is None:
            return [] if self.hook is None else [self.hook]
        return [account.hook for account in self.chain.accounts if account.hook is not None]

    async def aclose_hooks(self) -> None:
        """Close every vendor hook's clients (on the batch's event loop; sync code: :func:`run_coroutine`)."""
        for hook in self.hooks:
            await hook.aclose()

    def claim_holds(self) -> list[ClaimHold]:
        """
        How long one image may hold its claim on each vendor connection of the job, from its hook's
        settings (``timeout``, ``max_retries``; each connection read unless it was: no vendor call).
        """
        return [ClaimHold.of(hook) for hook in self.hooks]

    @property
    def vendor_hook(self) -> BackgroundRemovalHook[Any]:
        """The vendor hook (a render-only job has none)."""
        if self.hook is None:
            raise InvalidOptionError("conn_id", "this job renders from stored masters and has no vendor")
        return self.hook

    @property
    def identity(self) -> OutputIdentity:
        """The outputs this job accepts as finished: the vendor and fingerprint of any of its accounts."""
        if self.chain is None:
            return OutputIdentity.of(self.processor)
        return self.chain.identity

    @property
    def conn_ids(self) -> tuple[str, ...] | None:
        """The job's connections in chain order (``None`` for a render-only job)."""
        if self.chain is None:
            return None
        return tuple(account.conn_id for account in self.chain.accounts)

    @property
    def planning_limits(self) -> InputLimits:
        """
        The input limits planning checks: a chain's widest (:func:`widest_limits`), so an image only
        another account takes stays billable; each account's own are checked before its call.
        """
        if self.chain is None:
            return self.processor.limits
        return widest_limits(account.processor.limits for account in self.chain.accounts)

    @property
    def account_limits(self) -> tuple[tuple[str, InputLimits], ...]:
        """``(vendor, limits)`` of each account of a chain whose limits differ (else empty)."""
        if self.chain is None or len({account.processor.limits for account in self.chain.accounts}) < 2:
            return ()
        return tuple((account.vendor, account.processor.limits) for account in self.chain.accounts)

    def check_plan(self, plan: BatchPlan) -> BatchPlan:
        """
        The local checks on an unchecked plan's billable items, without listing again (:func:`check_plan`).

        :param plan: the plan made with ``check=False``.
        """
        return check_plan(self.storage, plan, **self._checks())

    def plan_batch(self, *, check: bool = True) -> BatchPlan:
        """
        The batch's plan: the shard's part of the run's plan, or planned here (no vendor call).

        :param check: run the local checks when planning here (see :func:`plan_into`).
        """
        if self.shard is not None:
            self.shard.check_matches(self.spec, self.identity, self.conn_ids)
            return read_shard(self.storage, self.spec, self.shard, self.renditions)
        plan = run_coroutine(plan_batch(self.storage, self.spec, **self._planning(check)))
        warn_if_no_sources(self.spec, plan.total)
        return plan

    def keep_plan(self, prefix: str, *, check: bool = True) -> PlanWriter:
        """
        Plan the batch into the bucket under ``prefix`` (for mapped tasks to read; docs/pipeline.md).

        :param prefix: the plan folder (:func:`~airflow_provider_bgremoval.pipeline.plan_store.plan_prefix`).
        :param check: run the local checks (see :func:`plan_into`).
        """
        writer = PlanWriter(
            self.storage,
            self.spec,
            prefix,
            self.identity,
            checked=check,
            renditions=self.renditions,
            conn_ids=self.conn_ids,
        )
        plan_into(self.storage, self.spec, writer, **self._planning(check))
        warn_if_no_sources(self.spec, writer.total)
        return writer

    def _checks(self) -> dict[str, Any]:
        """What the local checks need of the job (:func:`check_plan`'s arguments)."""
        return {
            "identity": self.identity,
            "limits": self.planning_limits,
            "concurrency": self.planning_concurrency,
            "account_limits": self.account_limits,
            "renditions": self.renditions,
        }

    def _planning(self, check: bool) -> dict[str, Any]:
        """What planning needs of the job: the checks' arguments, the output extension, the sources' kind."""
        return {
            **self._checks(),
            "extension": self.processor.extension,
            "check": check and not self.masters_are_sources,
            "masters_are_sources": self.masters_are_sources and self.renditions is not None,
        }


class BucketJobOperator(BaseOperator):
    """
    Base of the operators that work on a :class:`BucketJob`; parameters in detail: docs/pipeline.md.

    :param conn_id: vendor connection (its type picks the vendor: ``pixelcut``, ``pixian``, ``poof``),
        or an ordered list of them: a failover chain, primary first (docs/pipeline.md, "Failover").
    :param source_bucket: bucket of the source images.
    :param destination_bucket: bucket for the outputs.
    :param source_prefix: prefix to list; kept out of output names.
    :param source_objects: explicit object names instead of listing (mappable).
    :param destination_prefix: prefix of the outputs.
    :param include: glob pattern(s) a source must match, e.g. ``"*.jpg"`` (empty: all).
    :param exclude: glob pattern(s) to leave out.
    :param overwrite: replace outputs made from another source generation or other options.
    :param gcp_conn_id: Google Cloud connection (ADC when absent; emulator via ``STORAGE_EMULATOR_HOST``).
    :param max_concurrency: images in flight at once in this task.
    :param max_images: send at most this many images to the vendor, then stop cleanly (an image settled
        without reaching the vendor, e.g. refused by the local checks, does not count).
    :param max_credits: spend at most this many credits, then stop cleanly.
    :param cost_per_image: credits per image for budgets and estimates (default: the vendor's cost table);
        a number for every account, or a mapping by ``conn_id``.
    :param max_credits_per_account: with a chain, credits each account may spend, by ``conn_id``
        (reached: the rest go on to the next account); ``max_credits`` stays the total.
    :param failover_on: what moves the rest of a chain's batch to the next account: any of
        ``out_of_credits``, ``auth_failed``, ``outage`` (default: all three).
    :param retry_rejected_on_next: with a chain, an image a vendor rejected is tried on the next account
        of another vendor.
    :param circuit_breaker: each account's circuit breaker settings (``consecutive_failures``,
        ``failure_rate``, ``window``, ``min_calls``, ``cooldown_seconds``, ``max_cooldown_seconds``;
        :class:`~airflow_provider_bgremoval.pipeline.accounts.BreakerPolicy`).
    :param shard: a shard of the run's plan (the pre-flight's XCom ``shards``, mapped): work on exactly it.
    :param renditions: renditions rendered locally from one master per source (docs/renditions.md):
        a list of specs (``{"name": "amazon", "preset": "amazon_main"}``…), or a template rendering one
        (``"{{ params.renditions }}"``); ``None``: one output per source.
    :param masters_prefix: where the masters go with ``renditions`` (``<destination_prefix>masters/``).
    :param rendition_presets: user-defined rendition presets by name.
    """

    template_fields: Sequence[str] = (
        "conn_id",
        "source_bucket",
        "source_prefix",
        "source_objects",
        "destination_bucket",
        "destination_prefix",
        "include",
        "exclude",
        "max_images",
        "max_credits",
        "cost_per_image",
        "gcp_conn_id",
        "shard",
        "masters_prefix",
        "renditions",
    )

    def __init__(
        self,
        *,
        conn_id: str | Sequence[str],
        source_bucket: str,
        destination_bucket: str,
        source_prefix: str = "",
        source_objects: Sequence[str] | None = None,
        destination_prefix: str = "",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        overwrite: bool = False,
        gcp_conn_id: str | None = "google_cloud_default",
        max_concurrency: int = 16,
        max_images: int | str | None = None,
        max_credits: float | str | None = None,
        cost_per_image: float | str | Mapping[str, float | str] | None = None,
        max_credits_per_account: Mapping[str, float | str] | None = None,
        failover_on: str | Sequence[str] | None = None,
        retry_rejected_on_next: bool = False,
        circuit_breaker: BreakerPolicy | Mapping[str, float] | None = None,
        shard: dict[str, Any] | str | None = None,
        renditions: Sequence[Mapping[str, Any] | Rendition] | str | None = None,
        masters_prefix: str | None = None,
        rendition_presets: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.source_bucket = source_bucket
        self.destination_bucket = destination_bucket
        self.source_prefix = source_prefix
        self.source_objects = source_objects
        self.destination_prefix = destination_prefix
        self.include = include
        self.exclude = exclude
        self.overwrite = overwrite
        self.gcp_conn_id = gcp_conn_id
        self.max_concurrency = max_concurrency
        self.max_images = max_images
        self.max_credits = max_credits
        self.cost_per_image = cost_per_image
        self.max_credits_per_account = max_credits_per_account
        self.failover_on = parse_failover_on(failover_on)
        self.retry_rejected_on_next = bool(retry_rejected_on_next)
        self.circuit_breaker = BreakerPolicy.create(circuit_breaker)
        self.shard = shard
        self.renditions = renditions
        self.masters_prefix = masters_prefix
        self.rendition_presets = rendition_presets
        if not is_template(renditions):
            self.parsed_renditions()  # fail at DAG parse on a bad spec or preset
        # Fail at DAG parse for what is already known (templated values are checked at run time).
        if int(max_concurrency) < 1:
            raise InvalidOptionError("max_concurrency", "must be at least 1")
        if not is_template(max_images):
            parse_count(max_images, "max_images")
        if not is_template(max_credits):
            parse_credits(max_credits, "max_credits")
        if conn_id != "" and not is_template(conn_id):  # "": a render-only job, no vendor
            self.check_accounts()
        self._check_locations()
        if not any(is_template(getattr(self, name)) for name in _LAYOUT_FIELDS) and not self.single_output:
            self.layout_of(self._spec(), self.parsed_renditions())  # folders overlapping masters or sources

    def _check_locations(self) -> None:
        """
        The buckets and prefixes not templated, at DAG parse (:func:`.check_location`): a ``gs://`` URI or
        a bucket name GCS refuses names nothing. Templated ones are checked once rendered, as the job's
        :class:`BatchSpec` is built (before anything is listed).
        """
        for parameter in LOCATION_PARAMETERS:
            value = getattr(self, parameter)
            if not is_template(value):
                check_location(parameter, value)

    @abstractmethod
    def build_processor(
        self, hook: BackgroundRemovalHook[Any], cost: Decimal | None, *, chained: bool = False
    ) -> ImageProcessor:
        """
        The vendor operation applied to each image (defined by the operation's parameters class).

        :param hook: the vendor hook.
        :param cost: the ``cost_per_image`` override, when given.
        :param chained: the hook is one of a chain's connections (vendor options per vendor).
        """

    def conn_ids(self) -> list[str]:
        """The vendor connections in chain order (one for a single ``conn_id``)."""
        value = self.conn_id
        if isinstance(value, str) and value.lstrip().startswith("["):
            value = load_list(value, "conn_id")  # a rendered template of a list
        ids = [value] if isinstance(value, str) else [str(conn) for conn in value or ()]
        if not ids or not all(ids):
            raise InvalidOptionError("conn_id", "give a connection id or a non-empty list of them")
        if len(set(ids)) != len(ids):
            raise InvalidOptionError("conn_id", f"a connection is listed twice: {ids}")
        return ids

    def _per_account(self, name: str, value: Any, ids: Sequence[str]) -> dict[str, Decimal | None]:
        """A credits amount per connection: one for all, or a mapping by ``conn_id`` (others: ``None``)."""
        if not isinstance(value, Mapping):
            amount = None if is_template(value) else parse_credits(value, name)
            return dict.fromkeys(ids, amount)
        unknown = sorted(set(map(str, value)) - set(ids))
        if unknown:
            raise InvalidOptionError(name, f"{', '.join(unknown)} not among conn_id {ids}")
        return {conn: parse_credits(value.get(conn), f"{name}[{conn!r}]") for conn in ids}

    def check_accounts(self) -> None:
        """Validate the chain's parameters (at DAG parse, or once rendered)."""
        ids = self.conn_ids()
        self.costs = self._per_account("cost_per_image", self.cost_per_image, ids)
        if self.max_credits_per_account is not None and not isinstance(self.max_credits_per_account, Mapping):
            raise InvalidOptionError("max_credits_per_account", "expected a mapping of credits by conn_id")
        self.budgets = self._per_account("max_credits_per_account", self.max_credits_per_account or {}, ids)

    def build_chain(self, shard: ShardRef | None = None) -> AccountChain:
        """
        The vendor accounts of the rendered parameters: a hook and processor each (no call yet).

        :param shard: the task's shard: each account's budget is the smaller of its own and the shard's
            share of it (the run's ``max_credits_per_account`` is spent once over all shards).
        """
        self.check_accounts()
        ids = self.conn_ids()
        accounts = []
        for conn in ids:
            hook = BackgroundRemovalHook.get_hook(conn)
            processor = self.build_processor(hook, self.costs[conn], chained=len(ids) > 1)
            budget = self.budgets[conn]  # on a shard: within the shard's share of it
            budget = budget if shard is None else shard.account_credits_within(conn, budget)
            accounts.append(Account(conn, processor, hook, budget, CircuitBreaker(self.circuit_breaker)))
        return AccountChain(accounts, self.failover_on, self.retry_rejected_on_next)

    def _spec(self) -> BatchSpec:
        objects = self.source_objects
        if isinstance(objects, str):
            raise InvalidOptionError("source_objects", "expected a list of object names, got a string")
        if objects is not None and self.shard not in (None, ""):
            raise InvalidOptionError("shard", "give either shard or source_objects, not both")
        return BatchSpec(
            source_bucket=self.source_bucket,
            destination_bucket=self.destination_bucket,
            source_prefix=self.source_prefix or "",
            source_objects=None if objects is None else list(objects),
            destination_prefix=self.destination_prefix or "",
            include=self.include,
            exclude=self.exclude,
            overwrite=bool(self.overwrite),
            masters_prefix=self._masters_prefix(),
        )

    def parsed_renditions(self) -> tuple[Rendition, ...]:
        """The validated renditions (a rendered template: the list as JSON or as Jinja prints it)."""
        return parse_renditions(load_list(self.renditions, "renditions"), self.rendition_presets)

    @property
    def single_output(self) -> bool:
        """No renditions: one output per source (only ``renditions=None``; an empty list is refused)."""
        return load_list(self.renditions, "renditions") is None

    def _masters_prefix(self) -> str | None:
        """With renditions: ``masters_prefix``, by default ``<destination_prefix>masters/``."""
        if self.single_output:
            return None
        return masters_prefix(self.destination_prefix, self.masters_prefix)

    def rendition_layout(self, spec: BatchSpec, processor: ImageProcessor) -> RenditionLayout | None:
        """
        Where the renditions go (``None`` without renditions); the master must be lossless with alpha.

        :param spec: the batch spec.
        :param processor: the vendor operation making the masters.
        """
        if self.single_output:
            return None
        layout = self.layout_of(spec, self.parsed_renditions(), processor.extension)
        check_master(processor)
        return layout

    def layout_of(
        self, spec: BatchSpec, renditions: tuple[Rendition, ...], extension: str = ""
    ) -> RenditionLayout:
        """
        The renditions' layout: masters under ``spec.output_prefix`` of the destination bucket.

        :param spec: the batch spec.
        :param renditions: the parsed renditions (empty: refused).
        :param extension: the masters' extension.
        """
        return RenditionLayout.of_batch(spec, renditions, extension)

    def prepare_job(self) -> BucketJob:
        """The job of the rendered parameters: validated, storage, hook and processor built (no call yet)."""
        spec = self._spec()
        shard = self._shard()
        chain = self.build_chain(shard)
        processors = [account.processor for account in chain.accounts]
        for processor in processors[1:]:  # every vendor of the chain makes masters of the same kind
            self.rendition_layout(spec, processor)
        layout = self.rendition_layout(spec, processors[0])
        if layout is not None:  # planning may judge renditions by the source's size (docs/renditions.md)
            layout = replace(layout, masters_within_source=all(map(master_within_source, processors)))
        return BucketJob(
            spec=spec,
            storage=GcsStorage(gcp_conn_id=self.gcp_conn_id),
            hook=chain.primary.hook,
            processor=processors[0],
            chain=chain,
            planning_concurrency=max(MIN_PLANNING_CONCURRENCY, int(self.max_concurrency)),
            shard=shard,
            renditions=layout,
        )

    def _shard(self) -> ShardRef | None:
        if self.shard in (None, ""):
            return None
        try:
            shard = json.loads(self.shard) if isinstance(self.shard, str) else self.shard
            return ShardRef.model_validate(shard)
        except ValueError as exc:  # pydantic's ValidationError and JSONDecodeError are ValueErrors
            raise InvalidOptionError("shard", f"not a shard of a plan: {exc}") from None


def widest_limits(limits: Iterable[InputLimits]) -> InputLimits:
    """
    The most permissive of several vendors' input limits, limit by limit (largest upload, smallest
    minimum side, largest maximum side and pixel count, ``None`` when any has none, every format).

    :param limits: the limits of a chain's accounts (at least one).
    """
    given = list(limits)
    first = given[0]
    if all(other == first for other in given):
        return first
    sides = [item.max_side for item in given]
    pixels = [item.max_pixels for item in given]
    return InputLimits(
        max_bytes=max(item.max_bytes for item in given),
        min_side=min(item.min_side for item in given),
        max_side=None if None in sides else max(side for side in sides if side is not None),
        max_pixels=None if None in pixels else max(count for count in pixels if count is not None),
        formats=frozenset().union(*(item.formats for item in given)),
    )


def check_master(processor: ImageProcessor) -> None:
    """
    Refuse a vendor operation that would not make a master (see :func:`check_master_options`).

    :param processor: the vendor operation (generate-background's JPEG is its master: no alpha).
    """
    if isinstance(processor, RemovalProcessor):
        check_master_options(processor.options)


def check_master_options(options: RemovalOptions) -> None:
    """
    Refuse removal options that would not make a master: the vendor's cut-out as a lossless PNG with alpha.

    :param options: the unified options.
    """
    local = [
        name for name in ("background_color", "margin", "max_size") if getattr(options, name) is not None
    ]
    local += ["crop"] if options.crop else []
    if options.output_format != "png":
        local.insert(0, "output_format")
    if local:
        raise InvalidOptionError(
            "renditions",
            f"with renditions the master is the vendor's cut-out as a lossless PNG with alpha: leave "
            f"{', '.join(local)} unset and put them in the renditions instead",
        )
