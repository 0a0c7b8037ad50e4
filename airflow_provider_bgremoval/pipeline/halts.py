"""Why a batch stops early: the halt record, the stop request, and the balances read after a credits halt.

The rules (which halts are fatal, what a halt reports): docs/pipeline.md ("Halts", "Failover").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from typing import Any

from airflow_provider_bgremoval.exceptions import BgRemovalError
from airflow_provider_bgremoval.pipeline.accounts import Account, AccountChain

log = logging.getLogger(__name__)


#: Halt reasons that are an account's refusal of every further call (its state after the halt).
_REFUSALS = ("out_of_credits", "auth_failed")


@dataclass(frozen=True)
class HaltInfo:
    """
    Why a batch (or the credits pre-flight, same shape for one alert) stopped before all billable work.

    :param reason: ``out_of_credits``, ``max_credits``… (docs/pipeline.md, "Halts"), or an interrupt code.
    :param vendor: vendor name.
    :param message: human explanation.
    :param remaining_images: images not processed because of the halt.
    :param needed: credits the remaining images need (estimate).
    :param available: credits available when the halt happened (``None`` when unknown).
    :param fatal: True when the task must fail without retries.
    :param accounts: a failover chain's pooled shortfall, per account in chain order: ``conn_id``,
        ``vendor``, ``state``, ``cost_per_image``, ``needed`` (the pending images at its cost),
        ``available`` (its balance read after the halt, ``None`` when unknown) and ``covers``
        (images that balance pays for); empty for one connection.
    :param shortfall_images: pending images no account's balance covers (a chain; ``None``: unknown).
    :param conn_id: the connection the halt concerns, whose vendor ``vendor`` is and whose cost prices
        ``needed`` (in a chain, the account that refused, or the one the pending images would go to;
        every account unusable: the last one to leave); ``None`` when not known.
    """

    reason: str
    vendor: str
    message: str
    remaining_images: int = 0
    needed: Decimal | None = None
    available: Decimal | None = None
    fatal: bool = False
    accounts: tuple[dict[str, Any], ...] = ()
    shortfall_images: int | None = None
    conn_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for XCom and alerts (``conn_id`` when known, the pooled keys for a chain)."""
        return {
            key: str(value) if isinstance(value, Decimal) else value
            for key, value in asdict(self).items()
            if (key not in ("accounts", "shortfall_images") or self.accounts)
            and (key != "conn_id" or self.conn_id is not None)
        } | ({"accounts": [dict(entry) for entry in self.accounts]} if self.accounts else {})


@dataclass(eq=False)
class Halts:
    """
    A run's halt (the first one wins, but a fatal one over one that is not) and its stop request (an
    interrupt: drain, then store the record).

    :param chain: the run's accounts; a halt whose cause names no account concerns the one that takes
        the next image (:meth:`AccountChain.next_account`): it names its vendor and prices ``needed``.
    """

    chain: AccountChain
    halt: HaltInfo | None = None
    stop: tuple[str, str] | None = None  # an interrupt: (code, message)
    exhausted: bool = False  # the halt is a chain's every account unusable: state the pooled shortfall
    refused_by: Account | None = None  # the account whose refusal halted the run (its balance is read)
    halted_on: Account | None = None  # the account the pending images would go to (prices ``needed``)

    def record(
        self,
        reason: str,
        message: str,
        *,
        fatal: bool = False,
        vendor: str | None = None,
        account: Account | None = None,
    ) -> None:
        """
        Halt the run (no new image is submitted), unless it halted already: the first halt wins, but a
        fatal one (an account's refusal) replaces one that is not (a budget, the failure rate) while no
        interrupt is stopping the run, since it decides how the task ends (no retry); a halt not
        recorded is logged when its reason differs, never lost silently.

        :param reason: the reason code (docs/pipeline.md, "Halts").
        :param message: human explanation.
        :param fatal: the task must fail without retries.
        :param vendor: the vendor concerned (default: the account's).
        :param account: the account that refused the work (its balance is read after an out-of-credits
            halt); default: the one that takes the next image.
        """
        if not self._replaced_by(fatal):
            if self.halt is not None and self.halt.reason != reason:
                log.warning("Also (%s): %s; the run's halt stays %s", reason, message, self.halt.reason)
            return
        if self.halt is not None:
            log.warning("The halt %s is replaced by %s, which is fatal", self.halt.reason, reason)
        self.halted_on = account or self.chain.next_account()
        halted_on = self.halted_on
        self.halt = HaltInfo(
            reason, vendor or halted_on.vendor, message, fatal=fatal, conn_id=halted_on.conn_id
        )
        self.refused_by = account
        log.warning("Stopping submissions: %s", message)

    def _replaced_by(self, fatal: bool) -> bool:
        """Whether a new halt is recorded: there is none yet, or it is ``fatal`` and the one there is not."""
        return self.halt is None or (fatal and not self.halt.fatal and self.stop is None)

    def exhaust(self, chain: AccountChain) -> None:
        """
        Every account is unusable: halt as one connection would, naming each account's state.

        The halt is the last account's to leave (its reason, vendor and connection), and ``needed``
        prices what is left at its cost (never at the primary's, which may have left long before).

        :param chain: the run's accounts.
        """
        last = chain.last_disabled or chain.primary
        message = last.state_message or last.state
        fatal = last.state != "max_credits"
        if len(chain.accounts) > 1:
            states = "; ".join(
                f"{a.conn_id} ({a.vendor}): {a.state} ({a.state_message})" for a in chain.accounts
            )
            message = f"every account of the chain is unusable: {states}"
            self.exhausted = self.exhausted or self._replaced_by(fatal)
        self.record(last.state, message, fatal=fatal, account=last)

    async def complete(self, *, pending: int, billable: int) -> HaltInfo | None:
        """
        The halt (if any) with what is left; balances are read (free calls) only for a credits halt.

        ``needed`` prices the billable images left at the unit cost of the account they would go to
        (:attr:`halted_on`), not the primary's. Never after a stop request: the record must be stored
        before the task is killed. An account whose refusal halted the run while it stayed in the
        chain (one connection, or a reason not in ``failover_on``) now says so in its state, as one
        that left the chain for it does (the summary's ``accounts`` block said ``active``).

        :param pending: images left pending by the halt (not those another run's claims hold: that run
            pays for them, and they are not the halt's to report).
        :param billable: the billable part of them (render-only images are free).
        """
        if self.halt is None or self.halted_on is None:
            return None
        refused = self.refused_by
        if refused is not None and refused.usable and self.halt.reason in _REFUSALS and self.halt.fatal:
            refused.state, refused.state_message = self.halt.reason, self.halt.message
        halt = replace(self.halt, remaining_images=pending, needed=self.halted_on.unit_cost() * billable)
        if self.stop is not None:
            return halt
        accounts = self.chain.accounts
        if self.exhausted:
            return pooled_shortfall(halt, accounts, await read_balances(accounts), billable)
        if halt.reason == "out_of_credits" and self.refused_by is not None:
            (available,) = await read_balances([self.refused_by])
            return replace(halt, available=available)
        return halt


async def read_balances(accounts: Sequence[Account]) -> list[Decimal | None]:
    """
    The accounts' balances from their free endpoints, all at once, each read once with the short timeout
    of the connection test (``aget_balance(probe=True)``): a halt never waits on a flaky account's retries.

    Any error leaves that balance unknown (the vendor's, and one before the request: a connection that
    can no longer be read); the halt record it completes is never lost to it.

    :param accounts: the accounts to read.
    :return: per account, the remaining credits; ``None`` without a hook or on an error.
    """

    async def balance(account: Account) -> Decimal | None:
        if account.hook is None:
            return None
        try:
            return (await account.hook.aget_balance(probe=True)).remaining
        except BgRemovalError:
            return None
        except Exception as exc:  # the connection lookup, a secrets backend: not the vendor's answer
            log.warning("Could not read the balance of %s after the halt: %s", account.conn_id, exc)
            return None

    return list(await asyncio.gather(*map(balance, accounts)))


def pooled_shortfall(
    halt: HaltInfo, accounts: Sequence[Account], balances: Sequence[Decimal | None], billable: int
) -> HaltInfo:
    """
    Every account unusable: each balance against the pending images, priced in chain order at its cost.

    :param halt: the halt with its remaining images.
    :param accounts: the chain's accounts, in order.
    :param balances: their balances read after the halt (``None``: unknown).
    :param billable: the billable images left pending.
    """
    left = billable
    entries: list[dict[str, Any]] = []
    known: list[Decimal] = []
    for account, available in zip(accounts, balances, strict=True):
        cost = account.unit_cost()
        covers = min(left, int(available // cost)) if available is not None and cost > 0 else None
        left -= covers or 0
        known += [available] if available is not None else []
        entries.append(
            {
                "conn_id": account.conn_id,
                "vendor": account.vendor,
                "state": account.state,
                "cost_per_image": str(cost),
                "needed": str(cost * billable),
                "available": None if available is None else str(available),
                "covers": covers,
            }
        )
    unknown = any(entry["covers"] is None for entry in entries)
    pooled = "; ".join(
        f"{e['conn_id']} ({e['vendor']}, {e['state']}): {e['available'] or 'unknown'} available "
        f"at {e['cost_per_image']} per image"
        for e in entries
    )
    short = "unknown" if unknown else f"{left} image(s)"
    message = f"{halt.message}. Pooled shortfall: {short} of {halt.remaining_images} pending; {pooled}"
    return replace(
        halt,
        message=message,
        available=sum(known, Decimal(0)) if known else None,
        accounts=tuple(entries),
        shortfall_images=None if unknown else left,
    )
