"""One image in flight through the engine's stages (claim -> read -> call -> store), and what it has cost."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_bgremoval.exceptions import BgRemovalError
from airflow_provider_bgremoval.pipeline.accounts import Account
from airflow_provider_bgremoval.pipeline.planning import WorkItem
from airflow_provider_bgremoval.results import ImageResult
from airflow_provider_bgremoval.retry import CallStats


@dataclass(eq=False)
class Flight:
    """
    One image on its way through claim -> read -> call -> store, and what it has cost so far.

    :param item: the planned image.
    :param stats: the live record of its vendor calls (attempts, lost replies, credits charged).
    """

    item: WorkItem
    stats: CallStats = field(default_factory=CallStats)
    started: float = field(default_factory=time.monotonic)
    stage: str = "claim"
    #: The worker task carrying it (cancelled after the drain grace).
    #:
    #: :meta private:
    task: asyncio.Task[Any] | None = None
    claimed: bool = False
    result: ImageResult | None = None
    output_exists: bool = False  # its finished output is stored (ours or another run's): the claim stays
    recorded: bool = False
    abandoned: bool = False
    account: Account | None = None  # the account of the current (or last) call
    probe: bool = False  # that call is its account's half-open probe
    outcome_due: bool = False  # its outcome is still owed to the account's breaker
    lost_base: int = 0  # lost replies of the call stats booked to earlier accounts
    tried: list[Account] = field(default_factory=list)  # accounts this image may not go back to
    handoffs: list[dict[str, Any]] = field(default_factory=list)  # why earlier accounts handed it on
    last_error: BgRemovalError | None = None

    def unbooked_lost(self) -> int:
        """Lost replies of ``stats`` not yet booked to an earlier account: the current account's share."""
        return self.stats.possibly_charged - self.lost_base
