"""The batch's budgets: ``max_credits`` and ``max_credits_per_account`` count money at risk.

At risk: credits charged, lost replies (possibly charged) and a reservation per image in flight, each
priced at its own account (docs/pipeline.md, "Budgets count money at risk" and "Failover").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from decimal import Decimal

from airflow_provider_bgremoval.pipeline.accounts import Account, AccountChain
from airflow_provider_bgremoval.pipeline.flight import Flight
from airflow_provider_bgremoval.pipeline.halts import Halts


@dataclass(eq=False)
class Budgets:
    """
    Whether the next image, call or retry fits the budgets; a budget reached halts (or disables an account).

    :param chain: the run's accounts (each with its own ``budget``).
    :param flights: the images in flight (the engine's live set).
    :param halts: the run's halts.
    :param max_credits: never put more than this many credits at risk in total (``None``: no limit).
    """

    chain: AccountChain
    flights: Set[Flight]
    halts: Halts
    max_credits: Decimal | None = None

    def unit_cost(self) -> Decimal:
        """Credits one image is expected to cost on the account that takes the next one."""
        return self.cost_of(self.chain.next_account())

    def cost_of(self, account: Account, charged: Mapping[Account, Decimal] | None = None) -> Decimal:
        """
        Credits one image is expected to cost on ``account``: its :meth:`Account.unit_cost`, or more when
        a reply in flight there was billed more (``X-Credits-Charged``) and is not settled yet (the
        account learns that charge only when its image is settled; the budgets must know it at once).

        :param account: one of the chain's accounts.
        :param charged: the largest charge in flight per account (``_charged_in_flight``), if known.
        """
        charged = self._charged_in_flight() if charged is None else charged
        return max(account.unit_cost(), charged.get(account, Decimal(0)))

    def _charged_in_flight(self) -> dict[Account, Decimal]:
        """Per account, the largest charge of a billed reply in flight there (not settled yet)."""
        charged: dict[Account, Decimal] = {}
        for flight in self.billable_flights():
            charge = flight.stats.credits_charged
            if flight.account is not None and flight.stats.billed_reply and charge is not None:
                charged[flight.account] = max(charged.get(flight.account, charge), charge)
        return charged

    def credits_at_risk(self, account: Account | None = None) -> Decimal:
        """
        What ``max_credits`` bounds: charged, lost replies and a reservation per image in flight.

        :param account: only what is at risk on this account (``max_credits_per_account``); ``None``: all.
        """
        accounts = self.chain.accounts if account is None else (account,)
        charged = self._charged_in_flight()
        at_risk = sum(
            (each.credits_spent + self.cost_of(each, charged) * each.possibly_charged for each in accounts),
            Decimal(0),
        )
        # an image not yet at a vendor: the account that would take it
        default = self.cost_of(self.chain.next_account(), charged)
        for flight in self.billable_flights():
            if account is None or flight.account is account:
                cost = default if flight.account is None else self.cost_of(flight.account, charged)
                at_risk += cost * flight.unbooked_lost() + self._reservation(flight, cost, charged)
        return at_risk

    def billable_flights(self) -> list[Flight]:
        """The images in flight that put credits at risk (not yet recorded, not render-only)."""
        return [f for f in self.flights if not f.recorded and not f.item.render_only]

    def _reservation(
        self, flight: Flight, default: Decimal, charged: Mapping[Account, Decimal] | None = None
    ) -> Decimal:
        """
        What ``flight``'s call holds: its charge once billed (a reported 0 included: the engine books it
        as charged), else its account's cost (or ``default``); a billed reply without a charge: the cost.
        """
        cost = default if flight.account is None else self.cost_of(flight.account, charged)
        charge = flight.stats.credits_charged
        return charge if flight.stats.billed_reply and charge is not None else cost

    def admits_next(self, charged: Decimal, lost: int) -> bool:
        """
        Whether ``max_credits`` leaves room for one more image at the next account's cost (if not: halt).

        :param charged: credits charged so far (for the message).
        :param lost: replies lost and possibly charged so far (for the message).
        """
        account = self.chain.next_account()
        cost = self.cost_of(account)
        if self.max_credits is None or self.credits_at_risk() + cost <= self.max_credits:
            return True
        self.halts.record(
            "max_credits",
            f"max_credits={self.max_credits} reached (charged {charged}, "
            f"{lost} reply(s) lost and possibly charged, "
            f"{self._in_flight_summary()}; the next image costs {cost} on {account.conn_id} "
            f"({account.vendor}))",
            account=account,
        )
        return False

    def refusal(self, flight: Flight, account: Account, probe: bool) -> str | None:
        """
        Why ``max_credits`` refuses ``flight``'s call on ``account`` at its cost (``None``: it fits).

        An image is admitted at the preferred account's cost; handed on (or sent as a dearer
        account's half-open probe) it may cost more. If that does not fit, the batch halts
        ``max_credits`` and the image is to be settled pending, not sent (docs/pipeline.md, "Failover").
        """
        if self.max_credits is None:
            return None
        others = self.credits_at_risk() - self._reservation(flight, self.unit_cost())
        cost = self.cost_of(account)
        if others + cost <= self.max_credits:
            return None
        if probe:  # the probe is not made: the breaker lets the next one through
            account.breaker.record("neutral", probe=True)
        message = (
            f"max_credits={self.max_credits} reached: the next call on {account.conn_id} "
            f"({account.vendor}) costs {cost} and {others} credits are charged or at risk"
        )
        self.halts.record("max_credits", message, account=account)
        return message

    def fits(self, account: Account) -> bool:
        """Whether ``account``'s own budget allows one more image (if not, it leaves the chain)."""
        return self._account_fits(account, self.cost_of(account), "")

    def may_retry(self, account: Account | None = None) -> bool:
        """
        Retry guard: a retry after a lost reply must fit the budgets (its reservation already does).

        :param account: the account the retry goes to: its own budget must fit too; ``None``: the total
            only (an image about to move on, whose next account is checked when it is chosen).
        """
        if self.max_credits is not None and self.credits_at_risk() > self.max_credits:
            self.halts.record(
                "max_credits",
                f"max_credits={self.max_credits} reached: a lost reply leaves no room to retry "
                f"({self.credits_at_risk()} credits charged or at risk)",
            )
            return False
        return account is None or self._account_fits(
            account, Decimal(0), ": a lost reply leaves no room to retry"
        )

    def _account_fits(self, account: Account, next_cost: Decimal, why: str) -> bool:
        """Whether ``next_cost`` more fits ``account``'s own budget; if not, it leaves the chain."""
        if account.budget is None:
            return True
        at_risk = self.credits_at_risk(account)
        if at_risk + next_cost <= account.budget:
            return True
        message = (
            f"max_credits_per_account[{account.conn_id!r}]={account.budget} reached{why} "
            f"({at_risk} credits charged or at risk)"
        )
        self.chain.disable(account, "max_credits", message)
        return False

    def retry_guard(self, account: Account) -> Callable[[BaseException], bool]:
        """
        The retry guard of a call on ``account`` (:meth:`may_retry` with its own budget).

        :param account: the account taking the call.
        """
        return lambda _exc: self.may_retry(account)

    def _in_flight_summary(self) -> str:
        """The images in flight, each priced at its own account (``2 in flight: 3 on poof_conn...``)."""
        default = self.unit_cost()
        held: Counter[tuple[str, Decimal]] = Counter()
        for flight in self.billable_flights():
            where = flight.account.conn_id if flight.account is not None else "not yet sent"
            held[(where, self._reservation(flight, default))] += 1
        parts = ", ".join(f"{n} at {cost} ({where})" for (where, cost), n in sorted(held.items()))
        return f"{sum(held.values())} in flight" + (f": {parts}" if parts else "")
