"""The credits ledger: per-vendor, per-key balances and the charge log.

All mutations hold one :class:`threading.Lock`, so the ledger is safe from the event loop, from
worker threads and from the admin API at the same time. A request first calls :meth:`Ledger.check`
(before any processing, so out-of-credit answers are cheap) and then :meth:`Ledger.charge` at the
moment its success response is committed; ``charge`` re-checks the balance atomically, so
concurrent requests can never overdraw an account.

An account can also **spend over simulated days** (:meth:`Ledger.set_spend`): it loses
``credits_per_day`` for every whole 86,400 seconds of the sandbox clock (``advance_clock`` moves it),
as if other users of the key were working, without entries in the charge log. The drain is settled
(balance lowered, ``used`` raised, never below 0) whenever the account is read or charged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from airflow_provider_bgremoval.sandbox.config import VENDORS, KeyConfig, SandboxConfig


def fingerprint(secret: str) -> str:
    """Return a short, non-reversible fingerprint of a key, safe to log.

    :param secret: the key (or Pixian API id)
    """
    return "fp_" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:12]


def as_number(value: Decimal) -> int | float:
    """Return ``value`` as an ``int`` when integral, else as a ``float`` (for JSON).

    :param value: the amount
    """
    return int(value) if value == value.to_integral_value() else float(value)


@dataclass
class Account:
    """One key's account.

    :param vendor: the vendor
    :param key: the key (Pixian: the API id)
    :param secret: the Pixian API secret
    :param balance: credits left
    :param used: credits used since the account was created (Poof ``usedCredits``)
    :param state: Pixian account state (``active``/``dormant``)
    :param spend_per_day: credits drained per simulated day (0: none)
    :param settled_at: the sandbox clock time the drain was last settled
    """

    vendor: str
    key: str
    secret: str | None
    balance: Decimal
    used: Decimal = Decimal(0)
    state: str = "active"
    spend_per_day: Decimal = Decimal(0)
    settled_at: float = 0.0

    def settle(self, now: float) -> None:
        """Apply the drain of every whole simulated day since :attr:`settled_at` (never below 0).

        Whole days keep the numbers exact while the real clock runs on between two admin calls.

        :param now: the sandbox clock
        """
        if self.spend_per_day <= 0 or now < self.settled_at:
            self.settled_at = now
            return
        days = int((now - self.settled_at) // 86400)
        drained = min(self.balance, self.spend_per_day * days)
        self.balance -= drained
        self.used += drained
        self.settled_at += days * 86400

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (never the key itself, only its fingerprint)."""
        return {
            "vendor": self.vendor,
            "key": fingerprint(self.key),
            "balance": as_number(self.balance),
            "used": as_number(self.used),
            "state": self.state,
            "spend_per_day": as_number(self.spend_per_day),
        }


class InsufficientCredits(Exception):
    """Raised by :meth:`Ledger.charge` when the balance does not cover the cost."""


class Ledger:
    """Balances and charges of every sandbox key.

    :param config: the sandbox configuration (keys and starting balances)
    :param clock: the sandbox clock (seconds), for spend over simulated days; default: monotonic time
    """

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[tuple[str, str], Account] = {}
        self._charges: list[dict[str, Any]] = []
        self._exhaust_after: dict[str, int | None] = dict.fromkeys(VENDORS)
        self.reset(config)

    def reset(self, config: SandboxConfig) -> None:
        """Restore the configured keys and balances and clear the charge log.

        :param config: the configuration to restore
        """
        with self._lock:
            self._accounts = {}
            for vendor in VENDORS:
                for entry in config.keys[vendor]:
                    self._accounts[(vendor, entry.key)] = self._new_account(vendor, entry)
            self._charges = []
            self._exhaust_after = {vendor: config.faults[vendor].exhaust_after for vendor in VENDORS}

    def _new_account(self, vendor: str, entry: KeyConfig) -> Account:
        account = Account(vendor, entry.key, entry.secret, entry.credits, state=entry.state)
        account.settled_at = self._clock()
        return account

    def _account(self, vendor: str, key: str | None) -> Account | None:
        """The live account with its drain settled (call with the lock held)."""
        account = self._accounts.get((vendor, key)) if key else None
        if account is not None:
            account.settle(self._clock())
        return account

    def set_spend(self, vendor: str, key: str, credits_per_day: Decimal) -> Account:
        """Make an account spend ``credits_per_day`` per simulated day of the sandbox clock (0 stops).

        :param vendor: the vendor
        :param key: the key (Pixian: the API id)
        :param credits_per_day: the drain
        :raises KeyError: for an unknown key
        """
        with self._lock:
            account = self._account(vendor, key)
            if account is None:
                raise KeyError(f"unknown {vendor} key")
            account.spend_per_day = credits_per_day
            return Account(**vars(account))

    def set_exhaust_after(self, vendor: str, count: int | None) -> None:
        """After ``count`` more successful charges of ``vendor``, drop the charged key to 0.

        :param vendor: the vendor
        :param count: the number of successes still allowed, or ``None`` to disable
        """
        with self._lock:
            self._exhaust_after[vendor] = count

    def get(self, vendor: str, key: str) -> Account | None:
        """Return a copy of an account, or ``None`` for an unknown key.

        :param vendor: the vendor
        :param key: the key (Pixian: the API id)
        """
        with self._lock:
            account = self._account(vendor, key)
            return None if account is None else Account(**vars(account))

    def authenticate(self, vendor: str, key: str | None, secret: str | None = None) -> bool:
        """Return whether ``key`` (and for Pixian ``secret``) is a known credential.

        :param vendor: the vendor
        :param key: the presented key (Pixian: the API id)
        :param secret: the presented Pixian API secret
        """
        if not key:
            return False
        with self._lock:
            account = self._accounts.get((vendor, key))
            if account is None:
                return False
            return vendor != "pixian" or account.secret == secret

    def set_balance(
        self,
        vendor: str,
        key: str,
        credits: Decimal | None = None,
        state: str | None = None,
        secret: str | None = None,
    ) -> Account:
        """Set (or create) an account's balance and/or Pixian state.

        :param vendor: the vendor
        :param key: the key (Pixian: the API id)
        :param credits: the new balance (unchanged when ``None``)
        :param state: the new Pixian state (unchanged when ``None``)
        :param secret: Pixian API secret, needed when the account is new
        """
        with self._lock:
            account = self._account(vendor, key)
            if account is None:
                account = Account(vendor, key, secret, Decimal(0), settled_at=self._clock())
                self._accounts[(vendor, key)] = account
            if secret is not None:
                account.secret = secret
            if credits is not None:
                account.balance = credits
            if state is not None:
                account.state = state
            return Account(**vars(account))

    def check(self, vendor: str, key: str, cost: Decimal) -> bool:
        """Return whether the account could pay ``cost`` now (and is active).

        :param vendor: the vendor
        :param key: the key
        :param cost: the credits the call would cost
        """
        with self._lock:
            account = self._account(vendor, key)
            return account is not None and account.state == "active" and account.balance >= cost

    def charge(self, vendor: str, key: str, cost: Decimal, endpoint: str, request_id: str) -> Decimal:
        """Charge ``cost`` credits, atomically, and record the charge.

        :param vendor: the vendor
        :param key: the key
        :param cost: the credits to charge (0 records a free call, e.g. Pixian test mode)
        :param endpoint: the endpoint path, for the charge log
        :param request_id: the request id, for the charge log
        :returns: the balance after the charge
        :raises InsufficientCredits: when the balance does not cover the cost
        """
        with self._lock:
            account = self._account(vendor, key)
            if account is None or account.balance < cost:
                raise InsufficientCredits(f"{vendor} balance too low")
            account.balance -= cost
            account.used += cost
            remaining = self._exhaust_after.get(vendor)
            if cost > 0 and remaining is not None:
                remaining -= 1
                self._exhaust_after[vendor] = remaining
                if remaining <= 0:
                    account.balance = Decimal(0)
                    self._exhaust_after[vendor] = None
            self._charges.append(
                {
                    "vendor": vendor,
                    "key": fingerprint(key),
                    "endpoint": endpoint,
                    "credits": as_number(cost),
                    "balance_after": as_number(account.balance),
                    "request_id": request_id,
                    "timestamp": time.time(),
                }
            )
            return account.balance

    def charges(self, vendor: str | None = None) -> list[dict[str, Any]]:
        """Return the charge log, optionally for one vendor.

        :param vendor: only this vendor's charges
        """
        with self._lock:
            return [dict(c) for c in self._charges if vendor is None or c["vendor"] == vendor]

    def accounts(self) -> list[dict[str, Any]]:
        """Return every account in JSON form (keys as fingerprints)."""
        with self._lock:
            now = self._clock()
            for account in self._accounts.values():
                account.settle(now)
            return [account.to_dict() for account in self._accounts.values()]
