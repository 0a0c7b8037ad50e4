"""Claims: who is processing which output right now, so overlapping runs never pay twice.

How claims are held, taken over and cleaned up: docs/pipeline.md ("Never paying twice").
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.retry import ClaimHold, lease_margin
from airflow_provider_bgremoval.storage.exceptions import StorageError, WriteConflictError
from airflow_provider_bgremoval.storage.gcs import GcsStorage, ObjectInfo

META_OWNER = "bgremoval-claim-owner"
#: The expiry by the writer's clock (epoch seconds): what claims of earlier versions are judged by.
META_EXPIRES = "bgremoval-claim-expires"
META_DESTINATION = "bgremoval-claim-destination"
#: The lease in seconds: a live claim runs out this long after GCS wrote it (its ``updated``).
META_LEASE = "bgremoval-claim-lease"
#: A released claim's expiry: ``"0"`` when its output is known not to be stored (the next taker pays at
#: once), else ``"1"`` (epoch second 1: taken over as a lapsed lease, so the next taker looks for an
#: output first), both in the past by any reader's clock.
RELEASED_NOTHING_STORED, RELEASED_OUTPUT_UNKNOWN = "0", "1"


def parse_lease_seconds(value: Any, holds: Iterable[ClaimHold] = ()) -> float:
    """
    A claim lease (``claim_lease``): a finite number of seconds, or its numeric text; never a boolean;
    at least what one image may hold its claim before its output is stored (:func:`.lease_margin` of
    the run's connections' ``holds``; without them, :data:`.LEASE_MARGIN_SECONDS`, 1800 s, the
    defaults'): a claim is not renewed, so a shorter lease could run out while its vendor call runs,
    and another run taking the claim over would pay for the image again (a lease of 0 or less would
    expire every claim at once).

    :param value: the parameter value.
    :param holds: the holds of the run's connections (:meth:`.ClaimHold.of` their hooks), once known.
    :raises InvalidOptionError: naming ``claim_lease``.
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not 0 < seconds < math.inf:
        raise InvalidOptionError("claim_lease", f"{value!r} is not a positive, finite number of seconds")
    margin = lease_margin(holds)
    if seconds < margin.seconds:
        held = (
            "its vendor call with every retry and wait, then the read and the store, on the vendors' "
            "default connection settings"
            if margin.hold is None
            else f"on {margin.hold}; raise claim_lease to {margin.seconds:.0f} or more, or lower that "
            "connection's timeout or max_retries extra"
        )
        raise InvalidOptionError(
            "claim_lease",
            f"{seconds:g} s is shorter than the {margin.seconds:.0f} s one image may hold its claim before "
            f"its output is stored ({held}); a claim is not renewed, so a shorter lease could run out "
            "during the call, and another run could take the claim over and pay for the image again",
        )
    return seconds


def _seconds(text: str | None) -> float | None:
    """A number of seconds from claim metadata; ``None`` when missing or not a number."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


class _ServerTime(NamedTuple):
    """GCS's time (epoch seconds) of one of our writes, and our clock when its reply came."""

    updated: float
    local: float


class _HeldClaim(NamedTuple):
    """One claim of ours: its object, its generation, and when its lease runs out (epoch seconds)."""

    name: str
    generation: int
    expires: float


@dataclass(frozen=True)
class ClaimHolder:
    """
    Who holds a live claim on an output, and until when.

    :param owner: the holding task instance (``dag/run/task/map_index``), or a description when unknown.
    :param expires: when the holder's lease runs out (epoch seconds; 0 when unknown).
    """

    owner: str
    expires: float = 0.0

    @property
    def expires_iso(self) -> str:
        """
        The lease expiry as an ISO-8601 UTC timestamp (``unknown`` when not recorded, ``after 9999-12-31``
        past what a timestamp can say: a lease of millennia, or an unbounded expiry).
        """
        if not self.expires > 0:
            return "unknown"
        try:
            return datetime.fromtimestamp(self.expires, tz=timezone.utc).isoformat(timespec="seconds")
        except (OverflowError, ValueError, OSError):
            return "after 9999-12-31"

    def __str__(self) -> str:
        return f"{self.owner} (lease expires {self.expires_iso})"


@dataclass(eq=False)
class ClaimStore:
    """
    Create-only claim objects in the destination bucket. A claim's lease runs on GCS's clock: it ends
    ``lease_seconds`` after GCS wrote the claim (its ``updated``), judged against GCS's time now, which
    this store knows from its latest write's ``updated`` plus the seconds its own clock counted since;
    so no worker's clock being off (ahead: taking over live claims and paying twice) matters.

    :param storage: the storage layer.
    :param bucket: destination bucket.
    :param internal_prefix: the destination's ``_bgremoval/`` prefix.
    :param owner: identity of the claiming task instance.
    :param lease_seconds: how long a claim protects an output from other runs (finite, at least
        ``margin``).
    :param clock: wall clock (injectable for tests); only differences of its readings decide leases.
    :param holds: how long one image may hold its claim on each of the run's connections
        (:meth:`.ClaimHold.of` their hooks); their :func:`.lease_margin` is ``margin``, the least of
        a claim's lease the call stage keeps in hand for a call (none given: 1800 s, the defaults').
    :raises InvalidOptionError: ``lease_seconds`` is not a finite number of seconds, or shorter than
        one image may hold its claim (``claim_lease``).
    """

    storage: GcsStorage
    bucket: str
    internal_prefix: str
    owner: str
    _: KW_ONLY
    lease_seconds: float = 3600.0
    clock: Callable[[], float] = time.time
    holds: Sequence[ClaimHold] = ()

    def __post_init__(self) -> None:
        self.holds = tuple(self.holds)
        self.lease_seconds = parse_lease_seconds(self.lease_seconds, self.holds)
        #: Seconds of its lease an image keeps in hand for a call (its connections' longest hold).
        self.margin = lease_margin(self.holds).seconds
        self.prefix = f"{self.internal_prefix}claims/"
        self._held: dict[str, _HeldClaim] = {}  # destination -> our live claim
        #: Destinations whose claim object was already there (an earlier try of this task instance,
        #: or a holder whose lease ran out): their output may exist, so look before paying.
        self.taken_over: set[str] = set()
        self._gcs_time: _ServerTime | None = None  # from our latest write (None: none answered yet)
        self._gcs_time_lock = threading.Lock()

    def _claim_name(self, destination: str, source_generation: int) -> str:
        """A new generation of the source is new work, with a claim of its own (0: generation not known)."""
        key = f"{destination}\n{source_generation}" if source_generation else destination
        return self.prefix + hashlib.sha256(key.encode()).hexdigest()[:40]

    def _write(
        self, destination: str, name: str, generation: int, *, released: bool = False, looked: bool = True
    ) -> None:
        """
        Write our claim object over ``generation`` (0: create-only) and remember its new generation; a
        live claim records its lease (:data:`META_LEASE`, run from the write's ``updated``) and, for
        earlier versions, its expiry by our clock; a released claim expires at once:
        :data:`RELEASED_NOTHING_STORED` when its output is known not to be stored (``looked``), else
        :data:`RELEASED_OUTPUT_UNKNOWN` (taken over like a lapsed lease, so the next taker looks for an
        output). Not the release time: a reader whose clock is behind ours would see a live claim and
        leave the image pending, "another run is processing this output".
        """
        meta = {META_OWNER: self.owner, META_DESTINATION: destination}
        if released:
            meta[META_EXPIRES] = RELEASED_NOTHING_STORED if looked else RELEASED_OUTPUT_UNKNOWN
        else:
            meta[META_EXPIRES] = f"{self.clock() + self.lease_seconds:.0f}"
            meta[META_LEASE] = repr(self.lease_seconds)
        info = self._stored(name, meta, generation)
        if not released:
            self._held[destination] = _HeldClaim(name, info.generation, float(meta[META_EXPIRES]))

    def _stored(self, name: str, metadata: dict[str, str], generation: int | None) -> ObjectInfo:
        """Write the empty object ``name`` over ``generation``; its ``updated`` is GCS's time from now on."""
        info = self.storage.write(
            self.bucket,
            name,
            b"",
            content_type="text/plain",
            metadata=metadata,
            if_generation_match=generation,
        )
        if info.updated is not None:
            self._gcs_time = _ServerTime(info.updated.timestamp(), self.clock())
        return info

    def gcs_now(self) -> float:
        """
        GCS's time now (epoch seconds), never ahead of it: our latest write's ``updated`` (GCS wrote it
        before answering) plus the seconds our clock counted since its reply. Before any write of ours
        has answered, one is made: an empty clock object (``claims/clocks/<hash of the owner>``, one
        per task instance, overwritten by its next try); our own clock when GCS says no time.
        """
        with self._gcs_time_lock:  # one clock write at a time (GCS limits writes to one object name)
            if self._gcs_time is None:
                name = f"{self.prefix}clocks/{hashlib.sha256(self.owner.encode()).hexdigest()[:40]}"
                self._stored(name, {META_OWNER: self.owner}, None)
        known = self._gcs_time
        return self.clock() if known is None else known.updated + self.clock() - known.local

    def _live_until(self, current: ObjectInfo) -> float:
        """
        When another holder's claim ``current`` runs out (epoch seconds), or 0 when it has: released, or
        its lease over by GCS's clock (from its ``updated``); a claim of an earlier version (no lease
        recorded) by its writer's clock against ours, as it was then.
        """
        meta = current.metadata or {}
        recorded = meta.get(META_EXPIRES, "0")
        if recorded in (RELEASED_NOTHING_STORED, RELEASED_OUTPUT_UNKNOWN):
            return 0.0
        lease = _seconds(meta.get(META_LEASE))
        if lease is None or current.updated is None:
            expires, now = _seconds(recorded) or 0.0, self.clock()
        else:
            expires, now = current.updated.timestamp() + lease, self.gcs_now()
        return expires if expires > now else 0.0

    def lease_left(self, destination: str) -> float | None:
        """
        Seconds until our claim on ``destination`` expires by this store's clock (no request; negative
        once it has run out), ``None`` when we hold none: after that, another run may take it over and pay.

        :param destination: the output's object name.
        """
        held = self._held.get(destination)
        return None if held is None else held.expires - self.clock()

    def release(self, destination: str, *, output_unknown: bool = False) -> None:
        """
        Give up our claim on ``destination``: anyone may take it.

        :param destination: the output's object name.
        :param output_unknown: ``False``: its output was not written, so the next taker pays at once;
            ``True``: we cannot tell (a write that raised may have landed), so the next taker looks for
            an output before paying.
        """
        held = self._held.pop(destination, None)
        if held is not None:
            with suppress(WriteConflictError):  # taken over after our lease ran out: nothing of ours to free
                self._write(destination, held.name, held.generation, released=True, looked=not output_unknown)

    def _claim(self, destination: str, name: str, generation: int) -> None:
        """
        Write our live claim over ``generation``; a write that raised (not a refusal) may have landed:
        a claim found carrying our owner is released at once, best effort, as expired (it may also be
        an earlier try's, whose output the next taker then looks for), and the error is raised.
        """
        try:
            self._write(destination, name, generation)
        except WriteConflictError:
            raise
        except StorageError:
            with suppress(StorageError):
                current = self.storage.stat(self.bucket, name)
                if current is not None and (current.metadata or {}).get(META_OWNER) == self.owner:
                    self._write(destination, name, current.generation, released=True, looked=False)
            raise

    def acquire(self, destination: str, source_generation: int = 0) -> ClaimHolder | None:
        """
        Claim ``destination`` made from ``source_generation``.

        :param destination: the output's object name.
        :param source_generation: the source generation the output is made from (0: not known).
        :return: ``None`` on success, else the :class:`ClaimHolder` of a live claim.
        """
        name = self._claim_name(destination, source_generation)
        for _ in range(3):
            with suppress(WriteConflictError):
                self._claim(destination, name, 0)
                return None
            current = self.storage.stat(self.bucket, name)
            if current is None:
                continue  # vanished between the write and the look: try again
            meta = current.metadata or {}
            holder = meta.get(META_OWNER, "unknown")
            expires = 0.0 if holder == self.owner else self._live_until(current)
            if expires:
                return ClaimHolder(holder, expires)
            with suppress(WriteConflictError):  # somebody else took it over first: look again
                self._claim(destination, name, current.generation)
                if meta.get(META_EXPIRES) != RELEASED_NOTHING_STORED:  # else its holder stored no output
                    self.taken_over.add(destination)
                return None
        return ClaimHolder("unknown (claim contended)")
