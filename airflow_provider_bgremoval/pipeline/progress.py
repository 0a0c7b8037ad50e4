"""Progress lines for task logs: at least every 10 % or every 30 s, plus a final summary table."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from decimal import Decimal

log = logging.getLogger(__name__)

#: The statuses a progress line counts.
_SHOWN = ("done", "failed", "rejected", "pending")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@dataclass(eq=False)
class ProgressReporter:
    """
    Logs batch progress.

    :param total: number of billable images.
    :param vendor: vendor name for the log lines.
    :param every_seconds: log at least this often while images finish.
    :param clock: monotonic clock (injectable for tests).
    :param logger: where to log.
    """

    total: int
    vendor: str
    _: KW_ONLY
    every_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    logger: logging.Logger | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._last_time = self.started
        self._last_done = 0
        self._last_said: tuple[int, tuple[int, ...], Decimal] | None = None  # the last line's figures
        self.lines = 0

    def update(
        self, finished: int, counts: Mapping[str, int], credits: Decimal, *, force: bool = False
    ) -> None:
        """
        Report ``finished`` of ``total`` if a 10 % step or 30 s has passed since the last line.

        :param finished: images finished so far.
        :param counts: rows per status.
        :param credits: credits spent so far.
        :param force: the batch ended: the final line (unless the last line said it), with no ETA
            (images left are pending: nothing is left to wait for).
        """
        now = self.clock()
        step = max(1, self.total // 10)
        figures = tuple(counts.get(status, 0) for status in _SHOWN)
        if force and self._last_said == (finished, figures, credits):
            return  # the last line already said it (not so when rows were added since: pending ones)
        if not force and finished - self._last_done < step and now - self._last_time < self.every_seconds:
            return
        self._last_done, self._last_time = finished, now
        self._last_said = finished, figures, credits
        self.lines += 1
        elapsed = max(now - self.started, 1e-9)
        rate = finished / elapsed * 60.0
        eta = "unknown" if not finished else _duration((self.total - finished) / (finished / elapsed))
        eta = "none (ended)" if force else eta
        percent = 100 * finished // self.total if self.total else 100  # rounded down: 100 % is all done
        (self.logger or log).info(
            "[%s] %d/%d (%d%%) done=%d failed=%d rejected=%d pending=%d"
            " | %.1f images/min | ETA %s | credits %s",
            self.vendor,
            finished,
            self.total,
            percent,
            *figures,
            rate,
            eta,
            credits,
        )


def summary_table(rows: Mapping[str, object]) -> str:
    """A two-column text table for the final log line."""
    width = max((len(key) for key in rows), default=0)
    return "\n".join(f"  {key.ljust(width)}  {value}" for key, value in rows.items())
