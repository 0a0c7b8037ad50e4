"""Credit forecasts: a bounded balance history per connection, its burn rate and the day credits run out.

The history of one connection is a JSON Lines object in GCS, one ``{"at", "remaining"}`` line per
reading, oldest first, at most ``limit`` lines (docs/credits.md, "Forecasts"). It is replaced only
with ``if_generation_match`` (created with ``0``), so two monitors writing at once never lose a
reading and a reader never sees a partial file.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from itertools import pairwise
from typing import Any

from airflow_provider_bgremoval.hooks.base import format_credits
from airflow_provider_bgremoval.storage.exceptions import WriteConflictError
from airflow_provider_bgremoval.storage.gcs import JSON_LINES_CONTENT_TYPE, GcsStorage

log = logging.getLogger(__name__)

#: Readings kept per connection: 30 days of hourly checks, about two years of daily ones (~45 KB).
DEFAULT_HISTORY_LIMIT = 720
#: Days of history the burn rate is computed over.
DEFAULT_BURN_WINDOW_DAYS = 14
#: The shortest span of spending intervals, in days, a burn rate is computed from (a shorter one
#: extrapolates a minute's drop to a day: a false alarm).
DEFAULT_MIN_SPAN_DAYS = 1.0
#: How much older than the newest recorded reading a new one may be and still be recorded (two
#: monitors racing); an older one (a cleared or backfilled run's date) is not recorded.
LATE_TOLERANCE = timedelta(minutes=5)
#: Beyond this many days a run-out is "not in sight" (and past the range of dates).
_HORIZON_DAYS = Decimal(36525)
#: Conditional-write attempts before a history update gives up (another writer kept winning).
_WRITE_ATTEMPTS = 10
_DAY = Decimal(86400)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Sample:
    """
    One balance reading.

    :param at: when it was read (timezone-aware, UTC).
    :param remaining: usable credits.
    :param usable: ``False`` when the account could not spend (dormant or suspended: its credits read
        as 0 but were not spent), so an interval ending or starting at this reading is no spend.
    """

    at: datetime
    remaining: Decimal
    usable: bool = True


def as_utc(value: datetime | str) -> datetime:
    """
    A timezone-aware UTC datetime from a datetime or an ISO 8601 string (naive means UTC).

    :param value: the time.
    """
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    # a plain datetime (Airflow's context dates are pendulum's, which mix badly with the stdlib's)
    return datetime.fromtimestamp(moment.timestamp(), timezone.utc)


def parse_history(data: bytes, name: str = "history") -> list[Sample]:
    """
    The readings of a history object, oldest first (blank lines ignored; an unreadable line, e.g.
    edited by hand, is skipped with a warning, and left out when the history is next written; of two
    lines at one time the last is the reading, as :func:`add_sample` keeps it).

    :param data: the object's bytes.
    :param name: the object, for the warning.
    """
    samples = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            reading = json.loads(line)
            remaining = Decimal(str(reading["remaining"]))
            if not remaining.is_finite():
                raise ValueError(f"remaining {reading['remaining']!r} is not a number of credits")
            usable = reading.get("usable", True)
            if not isinstance(usable, bool):
                raise ValueError(f"usable {usable!r} is not true or false")
            samples.append(Sample(as_utc(reading["at"]), remaining, usable))
        except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as exc:
            log.warning("%s line %d skipped, not a reading (%s: %s)", name, number, type(exc).__name__, exc)
    by_time = {sample.at: sample for sample in samples}  # a later line at the same time replaces
    return sorted(by_time.values(), key=lambda s: s.at)


def dump_history(samples: Iterable[Sample]) -> bytes:
    """
    The JSON Lines bytes of ``samples`` (``"usable": false`` only on a reading of an account that
    could not spend).

    :param samples: the readings, oldest first.
    """
    lines = (json.dumps(_line(s)) for s in samples)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _line(sample: Sample) -> dict[str, Any]:
    line: dict[str, Any] = {"at": sample.at.isoformat(), "remaining": format_credits(sample.remaining)}
    if not sample.usable:
        line["usable"] = False
    return line


def is_late(samples: Sequence[Sample], sample: Sample) -> bool:
    """
    True when ``sample`` is older than the newest reading by more than :data:`LATE_TOLERANCE`: a balance
    read now but dated in the past (a cleared or backfilled run) would replace or fake that time's reading.

    :param samples: the history, oldest first.
    :param sample: the new reading.
    """
    return bool(samples) and sample.at < samples[-1].at - LATE_TOLERANCE


def predecessor(samples: Sequence[Sample], sample: Sample) -> Sample | None:
    """
    The reading just before ``sample`` in the history (``None``: it is the first).

    :param samples: the history, oldest first.
    :param sample: a reading.
    """
    earlier = [s for s in samples if s.at < sample.at]
    return earlier[-1] if earlier else None


def add_sample(samples: Sequence[Sample], sample: Sample, limit: int = DEFAULT_HISTORY_LIMIT) -> list[Sample]:
    """
    ``samples`` with ``sample`` in time order; a reading at the same time is replaced (a retried task
    records once); only the newest ``limit`` readings are kept.

    :param samples: the history, oldest first.
    :param sample: the new reading.
    :param limit: how many readings to keep (at least 2).
    """
    merged = sorted([s for s in samples if s.at != sample.at] + [sample], key=lambda s: s.at)
    return merged[-max(limit, 2) :]


def spend_between(earlier: Sample, later: Sample) -> Decimal:
    """
    Credits spent from one reading to the next: the drop, or 0 when the balance rose (a top-up) or
    when either reading is of an account that could not spend (a pack gone dormant is no spend).

    :param earlier: the first reading.
    :param later: the next one.
    """
    if not (earlier.usable and later.usable):
        return Decimal(0)
    return max(earlier.remaining - later.remaining, Decimal(0))


def burn_rate(
    samples: Sequence[Sample],
    window_days: float = DEFAULT_BURN_WINDOW_DAYS,
    min_span_days: float = DEFAULT_MIN_SPAN_DAYS,
) -> Decimal | None:
    """
    Credits spent per day over the last ``window_days`` of readings: the drops of the intervals where the
    balance did not rise, over their total length; an interval with a top-up is left out entirely, and
    so is one starting or ending at a reading of an account that could not spend (dormant: its drop
    to 0 is no spend, its time no spending time) (docs/credits.md, "Forecasts"). ``None`` when those
    intervals span less than ``min_span_days``.
    The readings are taken in time order; two at one time make no interval (a drop with no time is
    no spend per day).

    :param samples: the history, oldest first.
    :param window_days: how far back to look from the newest reading.
    :param min_span_days: the shortest total length of the spending intervals giving a rate.
    """
    if len(samples) < 2:
        return None
    start = max(s.at for s in samples) - timedelta(days=window_days)
    recent = sorted((s for s in samples if s.at >= start), key=lambda s: s.at)
    spent, seconds = Decimal(0), Decimal(0)
    for earlier, later in pairwise(recent):
        if later.remaining > earlier.remaining or later.at <= earlier.at:
            continue  # a top-up, or a duplicated reading
        if not (earlier.usable and later.usable):
            continue  # the account could not spend (dormant): no spend, no spending time
        spent += earlier.remaining - later.remaining
        seconds += Decimal(str((later.at - earlier.at).total_seconds()))
    if seconds <= 0 or seconds < Decimal(str(min_span_days)) * _DAY:
        return None
    return spent * _DAY / seconds


@dataclass(frozen=True)
class Forecast:
    """
    When one account's credits run out at its current burn rate, or expire unused if that comes first.

    :param conn_id: the connection.
    :param vendor: the vendor name.
    :param remaining: usable credits at the newest reading.
    :param at: the time of the newest reading.
    :param burn_rate: credits per day (``None``: not enough history).
    :param forecast_days: the lead time wanted, in days.
    :param samples: readings the rate was computed from (the history's length).
    :param expires_at: when the credits expire, unspent or not (Pixian's ``useBefore``, when its pack
        goes dormant); ``None``: the vendor reports no expiry.
    """

    conn_id: str
    vendor: str | None
    remaining: Decimal
    at: datetime
    burn_rate: Decimal | None
    forecast_days: float
    samples: int
    expires_at: datetime | None = None

    @property
    def days_left(self) -> Decimal | None:
        """Days until the balance reaches 0 by burn (``None``: no spend, no rate yet, or beyond a century)."""
        if self.burn_rate is None or self.burn_rate <= 0:
            return None
        days = self.remaining / self.burn_rate
        return None if days > _HORIZON_DAYS else days

    @property
    def runs_out_at(self) -> datetime | None:
        """The moment the balance reaches 0 at the burn rate (``None``: not in sight, or past year 9999)."""
        return _after(self.at, self.days_left)

    @property
    def expires_in_days(self) -> Decimal | None:
        """
        Days from the newest reading until credits left then would expire (0 when already past);
        ``None``: no expiry, nothing left to expire, or beyond a century.
        """
        if self.expires_at is None or self.remaining <= 0:
            return None
        days = max(Decimal(str((self.expires_at - self.at).total_seconds())) / _DAY, Decimal(0))
        return None if days > _HORIZON_DAYS else days

    @property
    def limited_by(self) -> str | None:
        """What ends the credits' use first: ``"burn"``, ``"expiry"``, or ``None`` (neither in sight)."""
        burn, expiry = self.days_left, self.expires_in_days
        if expiry is not None and (burn is None or expiry < burn):
            return "expiry"
        return None if burn is None else "burn"

    @property
    def usable_days(self) -> Decimal | None:
        """Days the credits can still be spent: the earlier of running out by burn and expiring."""
        return self.expires_in_days if self.limited_by == "expiry" else self.days_left

    @property
    def usable_until(self) -> datetime | None:
        """The moment the credits can no longer be spent (``None``: not in sight, or past year 9999)."""
        return _after(self.at, self.usable_days)

    @property
    def expiring_credits(self) -> Decimal | None:
        """
        Credits that would expire unspent at the burn rate (0 when they run out first, or there is no
        balance); ``None`` without an expiry, or before a burn rate says how many.
        """
        if self.expires_at is None:
            return None
        expiry = self.expires_in_days
        if self.limited_by != "expiry" or expiry is None:
            return Decimal(0) if self.remaining <= 0 or self.limited_by == "burn" else None
        if self.burn_rate is None:
            return None
        return _floor(max(self.remaining - self.burn_rate * expiry, Decimal(0)), "0.01")

    @property
    def alert(self) -> bool:
        """True when the credits run out, or expire, in less than ``forecast_days``."""
        days = self.usable_days
        return days is not None and days < Decimal(str(self.forecast_days))

    @property
    def top_up(self) -> Decimal:
        """Whole credits that would make the balance last ``forecast_days`` (0 when it already does)."""
        if self.burn_rate is None:
            return Decimal(0)
        needed = self.burn_rate * Decimal(str(self.forecast_days)) - self.remaining
        return max(needed.to_integral_value(rounding=ROUND_CEILING), Decimal(0))

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for XCom, reports and notifiers."""
        rate, days, out, until = self.burn_rate, self.days_left, self.runs_out_at, self.usable_until
        expiring = self.expiring_credits
        return {
            "conn_id": self.conn_id,
            "vendor": self.vendor,
            "remaining": str(self.remaining),
            "at": self.at.isoformat(),
            "burn_rate": None if rate is None else format_rate(rate),
            "days_left": None if days is None else float(_floor(days, "0.01")),
            "runs_out_on": None if out is None else out.date().isoformat(),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
            "expiring_credits": None if expiring is None else format_credits(expiring),
            "usable_until": None if until is None else until.date().isoformat(),
            "limited_by": self.limited_by,
            "forecast_days": self.forecast_days,
            "top_up": format_credits(self.top_up),
            "alert": self.alert,
            "samples": self.samples,
        }

    def describe(self) -> str:
        """One line: account, balance, burn rate, run-out (or expiry) date and what covers the lead time."""
        who = f"{self.conn_id} ({self.vendor or 'unknown vendor'})"
        remaining = format_credits(self.remaining)
        if self.limited_by == "expiry":
            return f"{who}: {remaining} credits, {self._expiry_text()}"
        if self.burn_rate is None:
            return f"{who}: {remaining} credits, no burn rate yet ({self.samples} reading(s))"
        rate = format_rate(self.burn_rate)
        out, days = self.runs_out_at, self.days_left
        if out is None or days is None:
            sight = "no credits left" if self.remaining <= 0 else "no run-out in sight"
            return f"{who}: {remaining} credits, burning {rate} credits/day: {sight}"
        lead = _days(self.forecast_days)
        head = (
            f"{who}: {remaining} credits, burning {rate} credits/day, runs out on {out.date().isoformat()} "
            f"(in {_floor(days, '0.1')} days)"
        )
        if not self.alert:
            return f"{head}: lasts the {lead} forecast window"
        top_up = format_credits(self.top_up)
        return f"{head}: FORECAST LOW within {lead}; a top-up of {top_up} credits covers {lead}"

    def _expiry_text(self) -> str:
        """:meth:`describe` after the balance, when the credits expire before they run out."""
        assert self.expires_at is not None and self.expires_in_days is not None
        day = self.expires_at.date().isoformat()
        past = self.expires_at <= self.at  # the vendor still counted them (its state lagging)
        in_days = _floor(self.expires_in_days, "0.1")
        when = f"expired on {day}" if past else f"expire on {day} (in {in_days} days)"
        expiring = self.expiring_credits
        if self.burn_rate is None or expiring is None:
            text = f"no burn rate yet ({self.samples} reading(s)); they {when}, up to "
            text += f"{format_credits(self.remaining)} of them unused"
        else:
            rate = format_rate(self.burn_rate)
            text = f"burning {rate} credits/day, {when} before they run out: "
            text += f"{format_credits(expiring)} credits expire unused at this rate"
        lead = _days(self.forecast_days)
        if not self.alert:
            return f"{text}: lasts the {lead} forecast window"
        renew = "buy new credits" if past else f"buy new credits before {day}"
        return f"{text}: FORECAST LOW within {lead}; {renew} to keep the account usable"


def _after(moment: datetime, days: Decimal | None) -> datetime | None:
    """``moment`` plus ``days`` (``None``: no days, or past year 9999)."""
    if days is None:
        return None
    try:
        return moment + timedelta(days=float(days))
    except OverflowError:  # a reading dated near the end of the calendar
        return None


def format_rate(rate: Decimal) -> str:
    """
    A burn rate as text: to 0.01 credits/day, and a rate below that to two significant digits
    (0.004 a day is not "0": with a run-out date that would lie).

    :param rate: credits per day (0 or more).
    """
    if rate == 0 or abs(rate) >= Decimal("0.01"):
        return format_credits(rate.quantize(Decimal("0.01")))
    return format_credits(rate.quantize(Decimal(1).scaleb(rate.adjusted() - 1)))


def _floor(days: Decimal, step: str) -> Decimal:
    """``days`` rounded down to ``step``: 6.99 days left never reads as the 7-day lead time."""
    return days.quantize(Decimal(step), rounding=ROUND_FLOOR)


def _days(value: float) -> str:
    number = int(value) if float(value).is_integer() else value
    return f"{number} day" if number == 1 else f"{number} days"


def forecast(
    conn_id: str,
    vendor: str | None,
    samples: Sequence[Sample],
    forecast_days: float,
    window_days: float = DEFAULT_BURN_WINDOW_DAYS,
    min_span_days: float = DEFAULT_MIN_SPAN_DAYS,
    expires_at: datetime | None = None,
) -> Forecast:
    """
    The forecast from a connection's history (the newest reading is the current balance).

    :param conn_id: the connection.
    :param vendor: its vendor.
    :param samples: the history, oldest first (not empty; taken in time order).
    :param forecast_days: the lead time wanted.
    :param window_days: the burn-rate window.
    :param min_span_days: the shortest span of spending intervals giving a rate.
    :param expires_at: when the balance's credits expire, as the vendor reports it (``None``: never).
    """
    if not samples:
        raise ValueError("a forecast needs at least one reading")
    if not math.isfinite(forecast_days) or forecast_days <= 0:
        raise ValueError("forecast_days must be a positive number of days")
    ordered = sorted(samples, key=lambda s: s.at)
    newest = ordered[-1]
    rate = burn_rate(ordered, window_days, min_span_days)
    expiry = None if expires_at is None else as_utc(expires_at)
    return Forecast(conn_id, vendor, newest.remaining, newest.at, rate, forecast_days, len(samples), expiry)


def object_name(prefix: str, conn_id: str, suffix: str) -> str:
    """
    ``<prefix><conn_id><suffix>`` with characters GCS tools dislike replaced by ``_``.

    :param prefix: the folder (ends with ``/`` or is empty).
    :param conn_id: the connection id.
    :param suffix: e.g. ``.jsonl``.
    """
    return f"{prefix}{_UNSAFE_NAME.sub('_', conn_id)}{suffix}"


class HistoryStore:
    """
    The balance histories in ``gs://<bucket>/<prefix><conn_id>.jsonl``, updated by generation match.

    :param storage: the GCS access.
    :param bucket: the bucket.
    :param prefix: the folder of the histories (e.g. ``_credit_history/``).
    :param limit: readings kept per connection.
    """

    def __init__(
        self, storage: GcsStorage, bucket: str, prefix: str, limit: int = DEFAULT_HISTORY_LIMIT
    ) -> None:
        if limit < 2:
            raise ValueError("history_limit must be at least 2 (a burn rate needs two readings)")
        self.storage = storage
        self.bucket = bucket
        self.prefix = prefix
        self.limit = limit

    def name(self, conn_id: str) -> str:
        """
        The history object of a connection.

        :param conn_id: the connection.
        """
        return object_name(self.prefix, conn_id, ".jsonl")

    def load(self, conn_id: str) -> tuple[list[Sample], int]:
        """
        A connection's readings and the generation they were read at (``0``: no history yet).

        :param conn_id: the connection.
        """
        info = self.storage.stat(self.bucket, self.name(conn_id))
        if info is None:
            return [], 0
        data = self.storage.read(self.bucket, info.name)
        return parse_history(data, info.uri), info.generation

    def record(self, conn_id: str, sample: Sample) -> tuple[list[Sample], bool]:
        """
        Add a reading; retried when another writer got in first. Returns the history and whether the
        reading is in it: one older than the newest reading (:func:`is_late`) is logged, not recorded.

        :param conn_id: the connection.
        :param sample: the reading.
        """
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            samples, generation = self.load(conn_id)
            if is_late(samples, sample):
                log.warning(
                    "Reading of %s at %s not recorded: the history already has a newer one (%s); "
                    "a balance read now is not that time's balance",
                    conn_id,
                    sample.at.isoformat(),
                    samples[-1].at.isoformat(),
                )
                return samples, False
            updated = add_sample(samples, sample, self.limit)
            try:
                self.storage.write(
                    self.bucket,
                    self.name(conn_id),
                    dump_history(updated),
                    content_type=JSON_LINES_CONTENT_TYPE,
                    if_generation_match=generation,
                )
            except WriteConflictError:
                if attempt == _WRITE_ATTEMPTS:
                    raise
                log.info("History of %s changed while updating it (attempt %d); again", conn_id, attempt)
                time.sleep(random.uniform(0, 0.05 * attempt))  # jitter, so racing writers spread out
            else:
                return updated, True
        raise AssertionError("unreachable")  # the last attempt returns or raises
