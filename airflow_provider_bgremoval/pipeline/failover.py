"""The engine's call stage: the vendor call on the chain's account for it, and failover to the next one.

Which account takes a call, when an image is handed on, when the chain halts: docs/pipeline.md ("Failover").
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from dataclasses import dataclass
from typing import Any, Protocol

from airflow_provider_bgremoval._moved import moved_names
from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InputRejectedError,
    OutOfCreditsError,
    TransientVendorError,
    safe_excerpt,
)
from airflow_provider_bgremoval.imaging import read_header
from airflow_provider_bgremoval.pipeline.accounts import Account, AccountChain, failover_metric
from airflow_provider_bgremoval.pipeline.budgets import Budgets
from airflow_provider_bgremoval.pipeline.claims import ClaimStore
from airflow_provider_bgremoval.pipeline.flight import Flight
from airflow_provider_bgremoval.pipeline.halts import Halts
from airflow_provider_bgremoval.pipeline.planning import limits_rejection
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import CallStats

log = logging.getLogger(__name__)
#: Names that moved out of this module, kept for one release (the margin is the claims' now).
__getattr__ = moved_names(__name__, {"airflow_provider_bgremoval.retry": "LEASE_MARGIN_SECONDS"})

#: What used a waiting image's lease up (the message of ``CallStage._lease_runs_short``).
_WAITED = "every account of the chain stayed in an outage (circuit breakers open)"


def _refusal_reason(exc: BgRemovalError) -> str:
    """The failover reason of an error after which no call on its account succeeds (``fatal_for_batch``)."""
    return "out_of_credits" if isinstance(exc, OutOfCreditsError) else "auth_failed"


def _not_sent(flight: Flight) -> str:
    """What a pending row says of an image not sent (again): what its earlier calls may have cost."""
    if flight.account is None:
        return "this image was not sent (nothing paid)"
    lost = flight.stats.possibly_charged
    if not lost:
        return "this image was not sent again (nothing paid for its earlier calls)"
    return f"this image was not sent again; {lost} reply(s) lost on its earlier calls may have been billed"


class Settle(Protocol):
    """The engine's recorder: the image's one row with what it cost (``request_id=`` among the fields)."""

    def __call__(
        self, flight: Flight, status: str, code: str | None = None, message: str | None = None, **fields: Any
    ) -> None: ...


@dataclass(eq=False)
class CallStage:
    """
    Sends an image to the chain's account for it; failover moves it on, a refusal for good halts.

    :param chain: the run's accounts.
    :param budgets: the run's budgets (a call must fit them).
    :param halts: the run's halts and stop request.
    :param settle: the engine's recorder (an image the stage gives up on is settled here).
    :param claims: the run's claims (``None``: no claims): a wait for a probe, or a handoff, ends before
        its image's lease runs short: with the claims' ``ClaimStore.margin`` or less left (the
        longest a call on one of the run's connections may hold its claim, at least
        :data:`~airflow_provider_bgremoval.retry.LEASE_MARGIN_SECONDS`); sent later, another run taking
        the lapsed claim over could pay for it too.
    """

    chain: AccountChain
    budgets: Budgets
    halts: Halts
    settle: Settle
    claims: ClaimStore | None = None

    async def call(self, flight: Flight, data: bytes) -> ImageResult | None:
        """
        The vendor call on the chain's account for it, moved on to the next account on failover.

        :param flight: the image.
        :param data: its bytes.
        :return: the result, or ``None`` when the image was settled instead.
        """
        name = posixpath.basename(flight.item.source.name) or "image"
        while True:
            account = await self._account_for(flight, data)
            if account is None:
                return None
            flight.stage = "call"
            flight.stats.retry_guard = self.budgets.retry_guard(account)
            try:
                result = await account.processor.process(data, name, flight.stats)
            except BgRemovalError as exc:
                if not self._after_call_error(flight, account, exc):
                    return None
            else:
                self.report(flight, "success")
                return result

    def _settle_not_sent(self, flight: Flight, code: str, why: str, request_id: str | None = None) -> None:
        """Settle pending an image not sent (again); ``request_id``: its last call's, if it had one."""
        self.settle(flight, "pending", code, f"{why}; {_not_sent(flight)}", request_id=request_id)

    async def _account_for(self, flight: Flight, data: bytes) -> Account | None:
        """
        The account for the image's next call; ``None`` when it is settled instead (a stop request, no
        account left, a wait for a probe as long as its claim's lease allows). The stop and the lease are
        looked at on every pass, so a wait for a probe never ends in a call after them.
        """
        while True:
            if self.halts.stop is not None:
                self._settle_not_sent(flight, *self.halts.stop)
                return None
            choice = self.chain.choose(flight.tried, self.budgets.fits)
            if isinstance(choice, tuple):
                account, probe = choice
                rejection = self._local_rejection(account, data)
                if rejection is None:
                    return account if self._sendable(flight, account, probe) else None
                if probe:
                    account.breaker.record("neutral", probe=True)
                flight.tried.append(account)
                self._hand_on(flight, account, "rejected", rejection)
                continue
            if choice is None:
                self._no_account(flight)
                return None
            if self._lease_runs_short(flight, _WAITED):
                return None
            flight.stage = "wait"  # every account left is in an outage: wait for the first probe
            await asyncio.sleep(min(max(choice, 0.01), 0.5))

    def _sendable(self, flight: Flight, account: Account, probe: bool) -> bool:
        """
        The image goes to ``account``: it fits ``max_credits`` there, and an image handed on from an
        earlier account (whose calls, with every retry, took part of its claim's lease) still has more
        than the claims' margin of it left; else it is settled pending (not sent again).
        """
        earlier = ", ".join(dict.fromkeys(handoff["account"] for handoff in flight.handoffs))
        handed_on = flight.account is not None  # it was sent before: this call is on another account
        if handed_on and self._lease_runs_short(flight, f"its calls on {earlier or 'earlier accounts'} took"):
            if probe:  # the probe is not made: the breaker lets the next one through
                account.breaker.record("neutral", probe=True)
            return False
        return self._admitted(flight, account, probe)

    def _lease_runs_short(self, flight: Flight, what: str) -> bool:
        """
        Settle the image pending (``outage``, not sent, its claim released unpaid) once its claim has
        the claims' ``ClaimStore.margin`` or less left: while every account is in an outage, or
        before it is sent to the next account. A clock read, no request: its lease end is known since
        the claim was written.

        :param what: what used the lease up (the message says it went on until the margin was reached).
        """
        if self.claims is None:
            return False
        left, margin = self.claims.lease_left(flight.item.destination), self.claims.margin
        if left is None or left > margin:
            return False
        why = (
            f"{what} until {max(left, 0):.0f} s were left of this image's claim lease, less than the "
            f"{margin:.0f} s a call may take; its claim is released so that no run pays "
            f"for it twice (a retry sends it)"
        )
        self._settle_not_sent(flight, "outage", why)
        return True

    def _admitted(self, flight: Flight, account: Account, probe: bool) -> bool:
        """The call fits ``max_credits`` at ``account``'s cost: it goes there (else: settled pending)."""
        refusal = self.budgets.refusal(flight, account, probe)
        if refusal is not None:
            self._settle_not_sent(flight, "max_credits", refusal)
            return False
        previous = flight.account
        if previous is not None and previous is not account:  # its lost replies stay booked there
            previous.possibly_charged += flight.unbooked_lost()
            flight.lost_base = flight.stats.possibly_charged
        flight.account, flight.probe, flight.outcome_due = account, probe, True
        return True

    def _local_rejection(self, account: Account, data: bytes) -> InputRejectedError | None:
        """The account's own input limits on the bytes in hand (free), when the chain's limits differ."""
        limits = account.processor.limits
        if all(other.processor.limits == limits for other in self.chain.accounts):
            return None  # planning checked these (a chain's widest)
        try:
            info = read_header(data, vendor=account.vendor)
        except InputRejectedError as exc:  # not an image: no account takes it
            return exc
        return limits_rejection(account.vendor, limits, info, len(data))

    def report(self, flight: Flight, outcome: str) -> None:
        """
        Report the call's outcome to its account's breaker (once per call).

        :param flight: the image.
        :param outcome: ``success``, ``transient`` or ``neutral`` (:meth:`.CircuitBreaker.record`).
        """
        account = flight.account
        if flight.outcome_due and account is not None:
            flight.outcome_due = False
            opened = account.breaker.times_opened
            account.breaker.record(outcome, probe=flight.probe)
            if account.breaker.times_opened > opened:
                failover_metric("breaker_opened", account)
                log.warning(
                    "Account %s (%s): circuit breaker open (%d time(s) so far); new images go on to the "
                    "next account until a probe succeeds",
                    account.conn_id,
                    account.vendor,
                    account.breaker.times_opened,
                )

    def _hand_on(self, flight: Flight, account: Account, reason: str, exc: BgRemovalError) -> None:
        """
        Note on the image's row why ``account`` handed it on, with the lost replies of its calls there
        (what :meth:`_admitted` books to it; ``0`` for an account that refused the image without a call).
        """
        flight.last_error = exc
        flight.handoffs.append(
            {
                "account": account.conn_id,
                "vendor": account.vendor,
                "reason": reason,
                "code": exc.code,
                "message": safe_excerpt(exc.message),
                "possibly_charged": flight.unbooked_lost() if account is flight.account else 0,
            }
        )
        log.info("%s: %s on %s, handed on", flight.item.source.uri, reason, account.conn_id)
        failover_metric("handoffs", account, reason=reason)

    def _untried(self, flight: Flight, other_vendor_than: str | None = None) -> bool:
        return any(
            account not in flight.tried and account.vendor != other_vendor_than
            for account in self.chain.usable()
        )

    def _after_call_error(self, flight: Flight, account: Account, exc: BgRemovalError) -> bool:
        """Settle the failed call, or return True to move the image on to the next account."""
        if flight.stats.attempts == 0:  # a processor that does not fill in the live record: its error has it
            flight.stats = exc.call or CallStats(possibly_charged=int(exc.possibly_charged))
        self.report(flight, "transient" if isinstance(exc, TransientVendorError) else "neutral")
        if exc.fatal_for_batch:  # no further call on this account can succeed
            reason = _refusal_reason(exc)
            if self.chain.fails_over(reason) and len(self.chain.accounts) > 1:  # one: halts as always
                self.chain.disable(account, reason, str(exc))
                if self.chain.usable():
                    self._hand_on(flight, account, reason, exc)
                    return True
            self._halt_on(flight, account, reason, exc)
            return False
        if not flight.stats.billed_reply and self._moves_on(flight, account, exc):  # paid: stays here
            return True
        self._settle_call_error(flight, exc)
        return False

    def _moves_on(self, flight: Flight, account: Account, exc: BgRemovalError) -> bool:
        """True when the image goes on to the next account (after an outage; a rejection, if asked)."""
        chain = self.chain
        if isinstance(exc, TransientVendorError) and "outage" in chain.failover_on:
            flight.tried.append(account)  # an outage here: the image goes on, never back
            if self._untried(flight) and self.budgets.may_retry():
                self._hand_on(flight, account, "outage", exc)
                return True
            return False
        if (
            isinstance(exc, InputRejectedError)
            and chain.retry_rejected_on_next
            and self._untried(flight, other_vendor_than=account.vendor)
        ):
            flight.tried.extend(a for a in chain.accounts if a.vendor == account.vendor)
            self._hand_on(flight, account, "rejected", exc)
            return True
        return False

    def _halt_on(self, flight: Flight, account: Account, reason: str, exc: BgRemovalError) -> None:
        """An account refused for good and nothing takes over: halt, the image stays pending."""
        if self.chain.usable() or len(self.chain.accounts) == 1:
            self.halts.record(reason, str(exc), fatal=True, vendor=account.vendor, account=account)
        else:
            self.halts.exhaust(self.chain)
        self._settle_error(flight, "pending", reason, exc)

    def _no_account(self, flight: Flight) -> None:
        """No account is left for this image: settle it with what the last one said."""
        exc = flight.last_error
        if not self.chain.usable():
            self.halts.exhaust(self.chain)
            halt = self.halts.halt
            assert halt is not None
            # pending for the halt (the last account to leave), not for an earlier account's refusal
            # (its handoff keeps that account's code and message)
            refusal_id = exc.request_id if exc is not None and exc.fatal_for_batch else None
            self._settle_not_sent(flight, halt.reason, halt.message, refusal_id)
            return
        if exc is not None and exc.fatal_for_batch:
            self._settle_error(flight, "pending", _refusal_reason(exc), exc)
        elif exc is not None:
            self._settle_call_error(flight, exc)
        else:  # unreachable: an image is only refused by every account after their answers
            self.settle(flight, "failed", "no_account", "no account of the chain could take this image")

    def _settle_call_error(self, flight: Flight, exc: BgRemovalError) -> None:
        if isinstance(exc, InputRejectedError):
            self._settle_error(flight, "rejected", "rejected", exc, exc.message)
        else:
            self._settle_error(flight, "failed", type(exc).__name__, exc)

    def _settle_error(
        self, flight: Flight, status: str, code: str, exc: BgRemovalError, message: str | None = None
    ) -> None:
        """Settle the image with ``exc``'s code (else ``code``), request id, message (else ``str(exc)``)."""
        message = str(exc) if message is None else message
        self.settle(flight, status, exc.code or code, message, request_id=exc.request_id)
