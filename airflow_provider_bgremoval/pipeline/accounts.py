"""Vendor accounts of a batch: the failover chain, each account's budget, state and circuit breaker.

The engine asks the :class:`AccountChain` which account takes the next call; vendor differences stay
data (each account's processor has its own vendor, cost, fingerprint and limits). The rules:
docs/pipeline.md ("Failover").
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_bgremoval._compat import Stats
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.forecast import object_name
from airflow_provider_bgremoval.pipeline.planning import OutputIdentity
from airflow_provider_bgremoval.pipeline.processors import ImageProcessor

if TYPE_CHECKING:
    from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook

log = logging.getLogger(__name__)

#: What may move the rest of a batch to the next account (``failover_on``); its default is every one.
DEFAULT_FAILOVER_ON: tuple[str, ...] = ("out_of_credits", "auth_failed", "outage")
#: Prefix of the failover metrics (docs/pipeline.md, "Failover"): ``<prefix>.<event>.<conn_id>``.
FAILOVER_METRIC_PREFIX = "bgremoval.failover"


def parse_failover_on(value: Any) -> tuple[str, ...]:
    """
    The validated ``failover_on`` reasons (a name or a list of names of :data:`DEFAULT_FAILOVER_ON`).

    :param value: the parameter value (``None``: the default).
    """
    if value is None:
        return DEFAULT_FAILOVER_ON
    reasons = (value,) if isinstance(value, str) else tuple(value)
    unknown = [reason for reason in reasons if reason not in DEFAULT_FAILOVER_ON]
    if unknown:
        raise InvalidOptionError(
            "failover_on", f"{', '.join(map(repr, unknown))} not one of {', '.join(DEFAULT_FAILOVER_ON)}"
        )
    return tuple(dict.fromkeys(reasons))


@dataclass(frozen=True)
class BreakerPolicy:
    """
    When an account's circuit breaker opens, and how it probes its way back (docs/pipeline.md).

    :param consecutive_failures: transient failures in a row that open it.
    :param failure_rate: share of transient failures over the last ``window`` calls that opens it.
    :param window: calls the failure rate looks at.
    :param min_calls: calls the window needs before the rate may open it.
    :param cooldown_seconds: seconds open before the first half-open probe.
    :param max_cooldown_seconds: cap of the cooldown, which doubles at each failed probe.
    """

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window: int = 20
    min_calls: int = 10
    cooldown_seconds: float = 30.0
    max_cooldown_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.window < 1 or self.min_calls < 1:
            raise InvalidOptionError(
                "circuit_breaker", "consecutive_failures, window and min_calls must be at least 1"
            )
        if not 0 < self.failure_rate <= 1:
            raise InvalidOptionError("circuit_breaker", "failure_rate must be over 0 and at most 1")
        if self.cooldown_seconds < 0 or self.max_cooldown_seconds < self.cooldown_seconds:
            raise InvalidOptionError(
                "circuit_breaker", "cooldown_seconds must be >= 0 and at most max_cooldown_seconds"
            )

    @classmethod
    def create(cls, value: BreakerPolicy | Mapping[str, Any] | None) -> BreakerPolicy:
        """
        The policy of a ``circuit_breaker`` parameter: a policy, a mapping of its fields, or ``None``.

        :param value: the parameter value.
        """
        if value is None:
            return cls()
        if isinstance(value, BreakerPolicy):
            return value
        if not isinstance(value, Mapping):
            raise InvalidOptionError("circuit_breaker", f"expected a mapping of settings, got {value!r}")
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise InvalidOptionError("circuit_breaker", f"unknown setting(s) {', '.join(unknown)}")
        try:
            settings = {
                name: float(raw) if name.endswith("seconds") or name == "failure_rate" else int(raw)
                for name, raw in value.items()
            }
        except (TypeError, ValueError):
            raise InvalidOptionError("circuit_breaker", f"not numbers: {dict(value)!r}") from None
        return cls(**settings)  # type: ignore[arg-type]


class CircuitBreaker:
    """
    One account's circuit breaker over *transient* call outcomes (5xx after retries, timeouts, lost replies).

    ``closed``, ``open`` and ``half_open`` (one probe at a time) as docs/pipeline.md ("Failover") says;
    calls started before it opened report their outcomes without changing the state.

    :param policy: thresholds and cooldowns.
    :param clock: monotonic seconds (injectable: tests are exact without sleeping).
    """

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.state = "closed"
        self.consecutive = 0
        self.recent: deque[bool] = deque(maxlen=policy.window)  # True: a transient failure
        self.cooldown = policy.cooldown_seconds
        self.opened_at = 0.0
        self.probing = False
        self.times_opened = 0

    def ready_in(self) -> float:
        """Seconds until :meth:`allow` may let a call through (0: now)."""
        if self.state == "closed" or (self.state == "half_open" and not self.probing):
            return 0.0
        if self.state == "half_open":
            return self.policy.cooldown_seconds or 0.05  # a probe is out: look again soon
        return max(0.0, self.opened_at + self.cooldown - self.clock())

    def allow(self) -> bool | None:
        """
        Whether a call may go now: ``False`` (probe it) when it is the half-open probe, ``None`` when not.

        :return: ``True`` for a normal call, ``False`` for a probe, ``None`` when no call may go.
        """
        if self.state == "open" and self.ready_in() == 0:
            self.state = "half_open"
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self.probing:
            self.probing = True
            return False
        return None

    def record(self, outcome: str, *, probe: bool) -> None:
        """
        One call's outcome.

        :param outcome: ``success``, ``transient`` (a transient failure) or ``neutral`` (a rejection,
            a 429, an out-of-credits reply: not the vendor's health).
        :param probe: the call was the half-open probe.
        """
        if probe:
            self.probing = False
            if outcome == "success":
                self._close()
            elif outcome == "transient":
                self._open(min(self.cooldown * 2, self.policy.max_cooldown_seconds))
            return
        if outcome == "neutral":
            return
        failed = outcome == "transient"
        self.recent.append(failed)
        self.consecutive = self.consecutive + 1 if failed else 0
        if self.state == "closed" and failed and self._tripped():
            self._open(self.policy.cooldown_seconds)

    def _tripped(self) -> bool:
        policy = self.policy
        if self.consecutive >= policy.consecutive_failures:
            return True
        sample = len(self.recent)
        return sample >= policy.min_calls and sum(self.recent) / sample > policy.failure_rate

    def _open(self, cooldown: float) -> None:
        self.state, self.cooldown, self.opened_at = "open", cooldown, self.clock()
        self.times_opened += 1

    def _close(self) -> None:
        self.state, self.consecutive, self.cooldown = "closed", 0, self.policy.cooldown_seconds
        self.recent.clear()


@dataclass(eq=False)
class Account:
    """
    One vendor connection of a chain, with what it has cost and whether it still takes calls.

    :param conn_id: the vendor connection id.
    :param processor: the operation with this account's vendor, options, cost and limits.
    :param hook: the connection's hook (its free balance endpoint after a halt), if any.
    :param budget: credits this account may put at risk (``max_credits_per_account``), or ``None``.
    :param breaker: the account's circuit breaker.
    """

    conn_id: str
    processor: ImageProcessor
    hook: BackgroundRemovalHook[Any] | None = None
    budget: Decimal | None = None
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(BreakerPolicy()))
    state: str = "active"
    state_message: str | None = None
    credits_spent: Decimal = Decimal(0)
    possibly_charged: int = 0
    max_seen_charge: Decimal = Decimal(0)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def vendor(self) -> str:
        """The account's vendor."""
        return self.processor.vendor

    @property
    def usable(self) -> bool:
        """True while the account takes calls (an open breaker is not final: it probes back)."""
        return self.state == "active"

    def unit_cost(self) -> Decimal:
        """Credits one image is expected to cost here: the dearer of the cost table and what was charged."""
        return max(self.processor.cost_per_image, self.max_seen_charge)

    def summary(self) -> dict[str, Any]:
        """Primitive form for the run summary and report."""
        return {
            "conn_id": self.conn_id,
            "vendor": self.vendor,
            "done": self.counts["done"],
            "images": sum(self.counts.values()),
            "credits_spent": str(self.credits_spent),
            "possibly_charged": self.possibly_charged,
            "state": self.state,
            "state_message": self.state_message,
            "breaker": self.breaker.state,
            "breaker_opened": self.breaker.times_opened,
        }


@dataclass(eq=False)
class AccountChain:
    """
    The ordered accounts of a batch (primary first) and the rules that move work between them.

    :param accounts: the accounts in chain order.
    :param failover_on: the reasons that move the rest of the batch to the next account.
    :param retry_rejected_on_next: retry an image a vendor rejected on the next account of another vendor.
    """

    accounts: Sequence[Account]
    failover_on: tuple[str, ...] = DEFAULT_FAILOVER_ON
    retry_rejected_on_next: bool = False
    last_disabled: Account | None = field(default=None, init=False)  # the account that left last

    def __post_init__(self) -> None:
        if not self.accounts:
            raise InvalidOptionError("conn_id", "a batch needs at least one vendor account")
        ids = [account.conn_id for account in self.accounts]
        if len(set(ids)) != len(ids):
            raise InvalidOptionError("conn_id", f"a connection is listed twice: {ids}")

    @classmethod
    def single(
        cls,
        processor: ImageProcessor,
        conn_id: str = "default",
        hook: BackgroundRemovalHook[Any] | None = None,
    ) -> AccountChain:
        """
        A chain of one account: the batch as it always was (no failover, no breaker gating).

        :param processor: the vendor operation.
        :param conn_id: the connection id recorded on rows.
        :param hook: the connection's hook (its balance is read after an out-of-credits halt), if any.
        """
        return cls([Account(conn_id, processor, hook)])

    @property
    def primary(self) -> Account:
        """The first account."""
        return self.accounts[0]

    @property
    def identity(self) -> OutputIdentity:
        """The outputs any account of the chain makes (what counts as finished)."""
        return OutputIdentity.of(*(account.processor for account in self.accounts))

    @property
    def gated(self) -> bool:
        """Breakers divert calls only in a chain that fails over on outages (one account: never)."""
        return len(self.accounts) > 1 and "outage" in self.failover_on

    def fails_over(self, reason: str) -> bool:
        """
        True when ``reason`` moves the work on (a per-account budget reached always does).

        :param reason: ``out_of_credits``, ``auth_failed``, ``outage`` or ``max_credits``.
        """
        return reason == "max_credits" or reason in self.failover_on

    def disable(self, account: Account, state: str, message: str) -> None:
        """
        Take ``account`` out of the chain for the rest of the run (counted; logged while others remain).

        :param account: one of :attr:`accounts`.
        :param state: ``out_of_credits``, ``auth_failed`` or ``max_credits`` (final for the run).
        :param message: why.
        """
        if account.usable:
            account.state, account.state_message = state, message
            self.last_disabled = account
            failover_metric("account_unusable", account, reason=state)
            if self.usable():
                log.warning("Account %s (%s) leaves the chain: %s", account.conn_id, account.vendor, message)

    def usable(self) -> list[Account]:
        """The accounts still taking calls, in chain order."""
        return [account for account in self.accounts if account.usable]

    def preferred(self) -> Account | None:
        """The first usable account whose breaker lets calls through (else the first usable one)."""
        usable = self.usable()
        ready = [account for account in usable if not self.gated or account.breaker.state == "closed"]
        candidates = ready or usable
        return candidates[0] if candidates else None

    def next_account(self) -> Account:
        """The account that takes the next image: the :meth:`preferred` one, else the primary."""
        return self.preferred() or self.primary

    def choose(
        self, skip: Sequence[Account], fits: Callable[[Account], bool]
    ) -> tuple[Account, bool] | float | None:
        """
        The account for a call, in chain order, skipping ``skip`` and accounts whose budget is spent.

        :param skip: accounts this image already tried.
        :param fits: whether the account's budget allows one more image (False disables it).
        :return: ``(account, probe)``; or the seconds until a breaker half-opens when every candidate
            is open; or ``None`` when no usable account is left for this image.
        """
        waits: list[float] = []
        for account in self.accounts:
            if not account.usable or account in skip or not fits(account):
                continue
            if not self.gated:
                return account, False
            allowed = account.breaker.allow()
            if allowed is not None:
                return account, not allowed
            waits.append(account.breaker.ready_in())
        return min(waits) if waits else None

    def summary(self) -> list[dict[str, Any]]:
        """Per account: conn_id, vendor, images, credits, state and breaker (the run summary's block)."""
        return [account.summary() for account in self.accounts]


def failover_metric(event: str, account: Account, **tags: str) -> None:
    """
    Count one failover event of ``account`` (``bgremoval.failover.<event>.<conn_id>``).

    :param event: ``account_unusable``, ``breaker_opened`` or ``handoffs``.
    :param account: the account concerned.
    :param tags: more metric tags (``reason``).
    """
    name = object_name("", account.conn_id, "")  # only the characters stats names allow
    tags = {"conn_id": account.conn_id, "vendor": account.vendor, **tags}
    Stats.incr(f"{FAILOVER_METRIC_PREFIX}.{event}.{name}", tags=tags)
