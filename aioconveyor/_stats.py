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

from ._group import GroupStats

if TYPE_CHECKING:
    from ._clock import Clock
    from ._lanes.ledger import Ledger

__all__ = ["ConsumerStats", "ConveyorStats", "LatenessStats", "ProducerStats"]

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
class ProducerStats:
    """One producer of the conveyor (a conveyor may have many; see ``add_producer``).

    ``lateness`` percentiles are estimated from the producer's histogram (the upper bound
    of the bucket they fall in); the conveyor-wide ``ConveyorStats.lateness`` is exact over
    the last ticks of all producers.
    """

    name: str
    ticks: int
    produced: int
    empty: int
    errors: int
    timeouts: int
    missed_ticks: int
    skipped: int
    standby_ticks: int
    lateness: LatenessStats
    last_tick_time: datetime | None
    next_tick_time: datetime | None
    state: str
    """``"waiting"`` (for its next tick), ``"running"`` (a call in progress), ``"hung"``
    (a call past its timeout that did not stop: ticks are skipped until it returns) or
    ``"finished"`` (``max_ticks`` reached). A removed producer leaves the list; its counts
    stay in the conveyor's totals."""
    consumers: tuple[str, ...] | None
    """The consumers it feeds (``None``: all of them)."""
    leader_role: str | None
    """``"leader"``, ``"standby"`` or ``"unknown"`` with a leader backend, else ``None``."""
    last_error: str | None
    last_error_time: datetime | None
    failing_since: datetime | None = None
    """Since when every call failed (or timed out); None after a call that returned."""


@dataclass(frozen=True, slots=True)
class ConveyorStats:
    """A consistent snapshot of the whole conveyor.

    The tick counts (``ticks``, ``produced``, ``empty``, ``producer_errors``,
    ``producer_timeouts``, ``missed_ticks``, ``standby_ticks``, ``producer_skipped``) are
    sums over all its producers, removed ones included; ``producers`` has each one's own.
    """

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
    producers: tuple[ProducerStats, ...] = ()
    group: GroupStats | None = None
    """With a group backend as leader (``PostgresGroup``): its members, the producers this
    instance owns, takeovers and handovers; else ``None``."""

    def consumer(self, name: str) -> ConsumerStats:
        """The stats of the consumer called ``name``."""
        for c in self.consumers:
            if c.name == name:
                return c
        raise KeyError(f"no consumer named {name!r}; have {[c.name for c in self.consumers]}")

    def producer(self, name: str) -> ProducerStats:
        """The stats of the producer called ``name``."""
        for p in self.producers:
            if p.name == name:
                return p
        raise KeyError(f"no producer named {name!r}; have {[p.name for p in self.producers]}")


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


#: The tick counts kept per producer and summed for the conveyor (stats name -> own name).
TOTALS = (("ticks", "ticks"), ("produced", "produced"), ("empty", "empty"),
          ("producer_errors", "errors"), ("producer_timeouts", "timeouts"),
          ("missed_ticks", "missed_ticks"), ("standby_ticks", "standby_ticks"),
          ("producer_skipped", "skipped"))


class ProducerCounters:
    """Mutable counters of one producer (updated with the conveyor's lock held).

    Slotted and small: a conveyor may hold ten thousand of them.
    """

    __slots__ = ("consumers", "empty", "errors", "failing_since", "last_error",
                 "last_error_time", "last_tick_time", "lateness_counts", "lateness_max",
                 "lateness_sum",
                 "leader_role", "missed_ticks", "name", "next_tick_time", "produced",
                 "skipped", "standby_ticks", "state", "ticks", "timeouts")

    def __init__(self, name: str, consumers: tuple[str, ...] | None = None) -> None:
        self.name = name
        self.consumers = consumers
        self.ticks = self.produced = self.empty = self.errors = self.timeouts = 0
        self.missed_ticks = self.skipped = self.standby_ticks = 0
        self.last_tick_time: float | None = None
        self.next_tick_time: float | None = None
        self.state = "waiting"
        self.leader_role: str | None = None
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.failing_since: float | None = None
        self.lateness_counts: list[int] | None = None  # made on the first tick
        self.lateness_sum = 0.0
        self.lateness_max = 0.0

    def snapshot(self) -> ProducerStats:
        counts = self.lateness_counts or [0] * (len(LATENESS_BUCKETS) + 1)
        return ProducerStats(
            name=self.name, ticks=self.ticks, produced=self.produced, empty=self.empty,
            errors=self.errors, timeouts=self.timeouts, missed_ticks=self.missed_ticks,
            skipped=self.skipped, standby_ticks=self.standby_ticks,
            lateness=_estimated(counts, self.lateness_sum, self.lateness_max),
            last_tick_time=_utc(self.last_tick_time), next_tick_time=_utc(self.next_tick_time),
            state=self.state, consumers=self.consumers, leader_role=self.leader_role,
            last_error=self.last_error, last_error_time=_utc(self.last_error_time),
            failing_since=_utc(self.failing_since),
        )


@dataclass(slots=True)
class ConveyorCounters:
    """Mutable counters of the conveyor, its producers and its lanes."""

    name: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    clock_jumps: int = 0
    loop_blocked: int = 0
    restarts: int = 0
    leader_role: str | None = None
    leader_since: datetime | None = None
    takeovers: int = 0
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=LATENESS_WINDOW))
    lateness_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    lateness_sum: float = 0.0
    lanes: list[Ledger] = field(default_factory=list)
    producers: dict[str, ProducerCounters] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)  # totals of removed producers

    def record_lateness(self, producer: ProducerCounters, seconds: float) -> None:
        """Add one tick's lateness (call with ``lock`` held)."""
        self.lateness.append(seconds)
        bucket = bisect.bisect_left(LATENESS_BUCKETS, seconds)
        self.lateness_counts[bucket] += 1
        self.lateness_sum += seconds
        counts = producer.lateness_counts
        if counts is None:
            counts = producer.lateness_counts = [0] * (len(LATENESS_BUCKETS) + 1)
        counts[bucket] += 1
        producer.lateness_sum += seconds
        if seconds > producer.lateness_max:
            producer.lateness_max = seconds

    def lane(self, name: str, clock: Clock) -> Ledger:
        """A new lane's ledger, listed in the snapshots from now on."""
        from ._lanes.ledger import Ledger  # the lanes import the stats types, not the reverse

        ledger = Ledger(name, self.lock, clock=clock)
        with self.lock:
            self.lanes.append(ledger)
        return ledger

    def producer(self, name: str, consumers: tuple[str, ...] | None = None) -> ProducerCounters:
        """A producer's counters, listed from now on (its name must be new)."""
        counters = ProducerCounters(name, consumers)
        with self.lock:
            self.producers[name] = counters
        return counters

    def retire(self, name: str) -> None:
        """Forget producer ``name``; its counts stay in the conveyor's totals."""
        with self.lock:
            gone = self.producers.pop(name, None)
            if gone is not None:
                for _, own in TOTALS:
                    self.retired[own] = self.retired.get(own, 0) + getattr(gone, own)

    def lateness_totals(self, limit: int) -> list[tuple[str, tuple[int, ...], float, float]]:
        """``(name, bucket counts, sum s, max s)`` of the first ``limit`` producers' lateness
        histograms (read-only, for the status page's history; cheaper than a snapshot)."""
        empty = (0,) * (len(LATENESS_BUCKETS) + 1)
        with self.lock:
            return [(p.name, tuple(p.lateness_counts) if p.lateness_counts else empty,
                     p.lateness_sum, p.lateness_max)
                    for p in itertools.islice(self.producers.values(), limit)]

    def snapshot(self) -> ConveyorStats:
        with self.lock:
            late = sorted(self.lateness)
            producers = tuple(p.snapshot() for p in self.producers.values())
            totals = {total: self.retired.get(own, 0)
                      + sum(getattr(p, own) for p in self.producers.values())
                      for total, own in TOTALS}
            last = [p.last_tick_time for p in self.producers.values()
                    if p.last_tick_time is not None]
            upcoming = [p.next_tick_time for p in self.producers.values()
                        if p.next_tick_time is not None and p.state != "finished"]
            return ConveyorStats(
                name=self.name,
                running=self.running,
                clock_jumps=self.clock_jumps,
                loop_blocked=self.loop_blocked,
                restarts=self.restarts,
                leader_role=self.leader_role,
                leader_since=self.leader_since,
                takeovers=self.takeovers,
                lateness=_lateness(late, self.lateness_counts, self.lateness_sum),
                last_tick_time=_utc(max(last)) if last else None,
                next_tick_time=_utc(min(upcoming)) if upcoming else None,
                consumers=tuple(lane.snapshot() for lane in self.lanes),
                producers=producers,
                **totals,
            )


def _estimated(counts: list[int], total: float, largest: float) -> LatenessStats:
    """Percentiles from a histogram: the upper bound of the bucket each falls in (capped
    at the largest value seen)."""
    cumulative = list(itertools.accumulate(counts))
    n = cumulative[-1]
    buckets = tuple(zip((*LATENESS_BUCKETS, math.inf), cumulative, strict=True))
    if n == 0:
        return LatenessStats(0.0, 0.0, 0.0, 0, buckets, total, 0)

    def pct(p: float) -> float:
        rank = max(1, math.ceil(p * n))
        i = bisect.bisect_left(cumulative, rank)
        bound = (*LATENESS_BUCKETS, math.inf)[i]
        return min(bound, largest) * 1000.0

    return LatenessStats(pct(0.50), pct(0.99), largest * 1000.0, n, buckets, total, n)


def _lateness(ordered: list[float], counts: list[int], total: float) -> LatenessStats:
    cumulative = list(itertools.accumulate(counts))
    buckets = tuple(zip((*LATENESS_BUCKETS, math.inf), cumulative, strict=True))
    if not ordered:
        return LatenessStats(0.0, 0.0, 0.0, 0, buckets, total, cumulative[-1])

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000.0

    return LatenessStats(pct(0.50), pct(0.99), ordered[-1] * 1000.0, len(ordered), buckets,
                         total, cumulative[-1])
