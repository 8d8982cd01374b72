"""Counters kept by the running conveyor, and the immutable snapshot ``stats()`` returns.

The loop thread updates counters under one lock; :meth:`ConveyorCounters.snapshot` reads
them under the same lock, so a snapshot taken from any thread is consistent.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._clock import Clock
    from ._lanes.ledger import Ledger

__all__ = ["ConsumerStats", "ConveyorStats", "LatenessStats"]

LATENESS_WINDOW = 1000
#: Upper bounds (seconds) of the tick lateness histogram buckets (Prometheus style).
LATENESS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class LatenessStats:
    """Tick start lateness: percentiles over the last ``samples`` ticks (milliseconds), and
    a histogram over all ticks (``buckets``: cumulative ``(upper bound s, count)`` pairs, the
    last bound ``inf``; ``sum_seconds`` and ``count`` as in Prometheus)."""

    p50_ms: float
    p99_ms: float
    max_ms: float
    samples: int
    buckets: tuple[tuple[float, int], ...] = ()
    sum_seconds: float = 0.0
    count: int = 0


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """One consumer lane. Items, not calls: a batch of 10 delivered counts 10.

    For every lane ``offered == delivered + rejected + dropped + failed + queued + in_flight``.
    """

    name: str
    offered: int
    delivered: int
    rejected: int
    dropped: int
    failed: int
    queued: int
    in_flight: int
    errors: int
    retries: int
    timeouts: int
    restarts: int
    abandoned: int
    hook_errors: int
    busy_seconds: float
    oldest_queued_seconds: float
    last_error: str | None
    last_error_time: datetime | None
    last_success_time: datetime | None
    state: str = "open"
    """``"connecting"`` (``open()`` not done yet, retrying), ``"open"``, ``"quarantined"``
    (failed beyond its restart budget: its items count as failed) or ``"closed"``."""
    state_since: datetime | None = None
    open_errors: int = 0
    failing_since: datetime | None = None
    """Since when every settled item failed or was rejected (None after a success)."""
    spooled: int = 0
    """Items kept in this lane's spool file (0 without one)."""
    spool_bad: int = 0
    """Spool rows that could not be read back at start: moved aside in the file, not lost."""


@dataclass(frozen=True, slots=True)
class ConveyorStats:
    """A consistent snapshot of the whole conveyor."""

    name: str
    running: bool
    ticks: int
    produced: int
    empty: int
    producer_errors: int
    producer_timeouts: int
    missed_ticks: int
    clock_jumps: int
    loop_blocked: int
    restarts: int
    standby_ticks: int
    producer_skipped: int
    leader_role: str | None
    leader_since: datetime | None
    takeovers: int
    lateness: LatenessStats
    last_tick_time: datetime | None
    next_tick_time: datetime | None
    consumers: tuple[ConsumerStats, ...]

    def consumer(self, name: str) -> ConsumerStats:
        """The stats of the consumer called ``name``."""
        for c in self.consumers:
            if c.name == name:
                return c
        raise KeyError(f"no consumer named {name!r}; have {[c.name for c in self.consumers]}")


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


@dataclass(slots=True)
class ConveyorCounters:
    """Mutable counters of the conveyor and its lanes."""

    name: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    ticks: int = 0
    produced: int = 0
    empty: int = 0
    producer_errors: int = 0
    producer_timeouts: int = 0
    missed_ticks: int = 0
    clock_jumps: int = 0
    loop_blocked: int = 0
    restarts: int = 0
    standby_ticks: int = 0
    producer_skipped: int = 0
    leader_role: str | None = None
    leader_since: datetime | None = None
    takeovers: int = 0
    last_tick_time: float | None = None
    next_tick_time: float | None = None
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=LATENESS_WINDOW))
    lateness_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    lateness_sum: float = 0.0
    lanes: list[Ledger] = field(default_factory=list)

    def record_lateness(self, seconds: float) -> None:
        """Add one tick's lateness (call with ``lock`` held)."""
        self.lateness.append(seconds)
        self.lateness_counts[bisect.bisect_left(LATENESS_BUCKETS, seconds)] += 1
        self.lateness_sum += seconds

    def lane(self, name: str, clock: Clock) -> Ledger:
        """A new lane's ledger, listed in the snapshots from now on."""
        from ._lanes.ledger import Ledger  # the lanes import the stats types, not the reverse

        ledger = Ledger(name, self.lock, clock=clock)
        with self.lock:
            self.lanes.append(ledger)
        return ledger

    def snapshot(self) -> ConveyorStats:
        with self.lock:
            late = sorted(self.lateness)
            return ConveyorStats(
                name=self.name,
                running=self.running,
                ticks=self.ticks,
                produced=self.produced,
                empty=self.empty,
                producer_errors=self.producer_errors,
                producer_timeouts=self.producer_timeouts,
                missed_ticks=self.missed_ticks,
                clock_jumps=self.clock_jumps,
                loop_blocked=self.loop_blocked,
                restarts=self.restarts,
                standby_ticks=self.standby_ticks,
                producer_skipped=self.producer_skipped,
                leader_role=self.leader_role,
                leader_since=self.leader_since,
                takeovers=self.takeovers,
                lateness=_lateness(late, self.lateness_counts, self.lateness_sum),
                last_tick_time=_utc(self.last_tick_time),
                next_tick_time=_utc(self.next_tick_time),
                consumers=tuple(lane.snapshot() for lane in self.lanes),
            )


def _lateness(ordered: list[float], counts: list[int], total: float) -> LatenessStats:
    cumulative = list(itertools.accumulate(counts))
    buckets = tuple(zip((*LATENESS_BUCKETS, math.inf), cumulative, strict=True))
    if not ordered:
        return LatenessStats(0.0, 0.0, 0.0, 0, buckets, total, cumulative[-1])

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000.0

    return LatenessStats(pct(0.50), pct(0.99), ordered[-1] * 1000.0, len(ordered), buckets,
                         total, cumulative[-1])
