"""Counters kept by the running conveyor, and the immutable snapshot ``stats()`` returns.

The loop thread updates counters under one lock; :meth:`ConveyorCounters.snapshot` reads
them under the same lock, so a snapshot taken from any thread is consistent.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["ConsumerStats", "ConveyorStats", "LatenessStats"]

LATENESS_WINDOW = 1000


@dataclass(frozen=True, slots=True)
class LatenessStats:
    """Tick start lateness over the last ``samples`` ticks, in milliseconds."""

    p50_ms: float
    p99_ms: float
    max_ms: float
    samples: int


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """One consumer lane. Items, not calls: a batch of 10 delivered counts 10.

    For every lane ``offered == delivered + dropped + failed + queued + in_flight``.
    """

    name: str
    offered: int
    delivered: int
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
    last_error: str | None
    last_error_time: datetime | None
    last_success_time: datetime | None


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
class LaneCounters:
    """Mutable counters of one lane (written by the loop thread under ``lock``)."""

    name: str
    lock: threading.Lock
    offered: int = 0
    delivered: int = 0
    dropped: int = 0
    failed: int = 0
    queued: int = 0
    in_flight: int = 0
    errors: int = 0
    retries: int = 0
    timeouts: int = 0
    restarts: int = 0
    abandoned: int = 0
    hook_errors: int = 0
    last_error: str | None = None
    last_error_time: float | None = None
    last_success_time: float | None = None

    def snapshot(self) -> ConsumerStats:
        return ConsumerStats(
            name=self.name,
            offered=self.offered,
            delivered=self.delivered,
            dropped=self.dropped,
            failed=self.failed,
            queued=self.queued,
            in_flight=self.in_flight,
            errors=self.errors,
            retries=self.retries,
            timeouts=self.timeouts,
            restarts=self.restarts,
            abandoned=self.abandoned,
            hook_errors=self.hook_errors,
            last_error=self.last_error,
            last_error_time=_utc(self.last_error_time),
            last_success_time=_utc(self.last_success_time),
        )


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
    leader_role: str | None = None
    leader_since: datetime | None = None
    takeovers: int = 0
    last_tick_time: float | None = None
    next_tick_time: float | None = None
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=LATENESS_WINDOW))
    lanes: list[LaneCounters] = field(default_factory=list)

    def lane(self, name: str) -> LaneCounters:
        counters = LaneCounters(name, self.lock)
        self.lanes.append(counters)
        return counters

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
                leader_role=self.leader_role,
                leader_since=self.leader_since,
                takeovers=self.takeovers,
                lateness=_lateness(late),
                last_tick_time=_utc(self.last_tick_time),
                next_tick_time=_utc(self.next_tick_time),
                consumers=tuple(lane.snapshot() for lane in self.lanes),
            )


def _lateness(ordered: list[float]) -> LatenessStats:
    if not ordered:
        return LatenessStats(0.0, 0.0, 0.0, 0)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000.0

    return LatenessStats(pct(0.50), pct(0.99), ordered[-1] * 1000.0, len(ordered))
