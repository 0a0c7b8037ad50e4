"""Per-vendor runtime state for latency, rate limits and fault injection (deterministic by seed)."""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass

from airflow_provider_bgremoval.sandbox.config import VENDORS, FaultConfig, FaultRule


@dataclass
class Decision:
    """The fault chosen for one request.

    :param fault: the fault kind, see :data:`~airflow_provider_bgremoval.sandbox.config.FAULT_KINDS`
    :param status: the status for ``error`` faults
    """

    fault: str
    status: int = 500


class VendorFaults:
    """Runtime fault state of one vendor.

    :param vendor: the vendor
    :param config: its fault settings
    :param seed: the sandbox seed (used when the settings carry none)
    :param set_at: the sandbox clock when the settings were set (rule windows count from it)
    """

    def __init__(self, vendor: str, config: FaultConfig, seed: int, set_at: float = 0.0) -> None:
        self.vendor = vendor
        self.config = config
        self.set_at = set_at
        base = config.seed if config.seed is not None else seed
        self._rng = random.Random(base * 1000 + VENDORS.index(vendor))
        self._lock = threading.Lock()
        self._ordinal = 0
        self._rules = [FaultRule(**vars(rule)) for rule in config.rules]
        self._window: deque[float] = deque()
        self._tokens: tuple[float, float] | None = None  # (tokens, when) of the token bucket
        self.inflight = 0

    def admit(self, now: float) -> bool:
        """Apply the requests-per-second and concurrency limits; ``False`` means answer 429.

        :param now: the sandbox clock
        """
        with self._lock:
            cfg = self.config
            if cfg.max_concurrency is not None and self.inflight >= cfg.max_concurrency:
                return False
            if cfg.rate_limit_rps is not None and not self._take_rate_slot(cfg.rate_limit_rps, now):
                return False
            self.inflight += 1
            return True

    def _take_rate_slot(self, rps: float, now: float) -> bool:
        """Count one request against the rate limit (the lock is held); ``False``: over the limit."""
        burst = self.config.rate_limit_burst
        if burst is not None:
            tokens, when = self._tokens or (burst, now)
            tokens = min(burst, tokens + (now - when) * rps)
            self._tokens = (tokens - 1, now) if tokens >= 1 else (tokens, now)
            return tokens >= 1
        while self._window and now - self._window[0] >= 1.0:
            self._window.popleft()
        if len(self._window) >= rps:
            return False
        self._window.append(now)
        return True

    def release(self) -> None:
        """Mark an admitted request as finished."""
        with self._lock:
            self.inflight -= 1

    def latency(self) -> float:
        """Seconds of latency for the next request (fixed + seeded jitter)."""
        with self._lock:
            jitter = self._rng.uniform(0, self.config.jitter_ms) if self.config.jitter_ms else 0.0
        return (self.config.latency_ms + jitter) / 1000.0

    def decide(self, now: float) -> tuple[int, Decision | None]:
        """Count the request and choose its fault (the first matching rule wins).

        One random number is drawn per rule per request, whatever matches, so the fault sequence
        only depends on the seed and the request order. A rule outside its time window does not
        apply (and its ``next`` is not used up).

        :param now: the sandbox clock
        :returns: the request's ordinal and the decision (``None``: behave normally)
        """
        elapsed = now - self.set_at
        with self._lock:
            self._ordinal += 1
            n = self._ordinal
            chosen: Decision | None = None
            for rule in self._rules:
                draw = self._rng.random()
                pick = self._rng.choice(rule.statuses)
                hit = n in rule.requests or rule.next > 0 or draw < rule.rate
                if hit and chosen is None and rule.in_window(elapsed):
                    if rule.next > 0 and n not in rule.requests:
                        rule.next -= 1
                    chosen = Decision(rule.fault, pick)
            return n, chosen

    def state(self, now: float) -> dict[str, object]:
        """Return the settings plus counters, for ``GET /_sandbox/state``: ``elapsed_s`` (sandbox
        seconds since the settings were set, what rule windows are compared with) and, per rule,
        ``active`` (inside its window now).

        :param now: the sandbox clock
        """
        elapsed = now - self.set_at
        with self._lock:
            data: dict[str, object] = dict(self.config.to_dict())
            rules = [{**rule.to_dict(), "active": rule.in_window(elapsed)} for rule in self._rules]
            data["elapsed_s"] = elapsed
            data["rules"] = rules
            data["requests_seen"] = self._ordinal
            data["inflight"] = self.inflight
            return data
