"""The status page's data: ``/status.json``, one document built from ``stats()`` and the
health verdict, plus a short lateness history per producer for its chart.

Read-only and secret-free: every free text (last errors, health reasons) goes through
:func:`~aioconveyor._secrets.mask_text`, and nothing else of a consumer is shown than its
name and its counters. Times are Unix seconds on the conveyor's clock (``now`` is in the
document, so the page says "12 s ago" against the conveyor's time, not the browser's).

The history is sampled on the injected clock (a background timer: it never moves a fake
clock) every :data:`HISTORY_INTERVAL` seconds: for each producer that ticked in between,
one point with the ticks' count, their mean lateness (exact, from the histogram's sum) and
their p99 (estimated, the upper bound of its bucket), kept for :data:`HISTORY_SECONDS`.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from ._health import Health
from ._secrets import mask_text
from ._stats import LATENESS_BUCKETS, ConsumerStats, ConveyorStats, ProducerStats

if TYPE_CHECKING:
    from ._clock import Clock, Timer
    from ._stats import ConveyorCounters

__all__ = ["HISTORY_INTERVAL", "HISTORY_SECONDS", "MAX_PRODUCERS", "SCHEMA", "LatenessHistory",
           "StatusBoard", "page"]

logger = logging.getLogger(__name__)

SCHEMA = 1
"""The version of the ``/status.json`` document (raised when a field changes meaning)."""

HISTORY_INTERVAL = 2.0
"""Seconds between two samples of the lateness history (the page refreshes as often)."""

HISTORY_SECONDS = 300.0
"""How far back the history goes (the chart's width): five minutes."""

MAX_PRODUCERS = 200
"""At most this many producers are listed (and sampled); ``producers_total`` counts all."""

_BOUNDS = (*LATENESS_BUCKETS, math.inf)


def page() -> bytes:
    """The status page: one self-contained HTML file shipped in the package."""
    return resources.files("aioconveyor").joinpath("_status_page.html").read_bytes()


class LatenessHistory:
    """A bounded ring of lateness points per producer, sampled on ``clock``."""

    def __init__(self, counters: ConveyorCounters, clock: Clock, *,
                 interval: float = HISTORY_INTERVAL, keep: float = HISTORY_SECONDS,
                 limit: int = MAX_PRODUCERS) -> None:
        self._counters = counters
        self._clock = clock
        self.interval = interval
        self.keep = keep
        self._limit = limit
        self._size = max(1, math.ceil(keep / interval))
        self._lock = threading.Lock()  # points are read by the endpoint's worker thread
        self._points: dict[str, deque[tuple[float, int, float, float]]] = {}
        self._last: dict[str, tuple[tuple[int, ...], float]] = {}
        self._timer: Timer | None = None
        self._stopped = False

    def start(self) -> None:
        """Call in the conveyor's loop: take the baseline and sample from now on."""
        self._stopped = False
        self.sample()
        self._schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()

    def _schedule(self) -> None:
        if not self._stopped:
            self._timer = self._clock.call_later(self.interval, self._tick, background=True)

    def _tick(self) -> None:
        try:
            self.sample()
        except Exception:  # a chart is never worth the conveyor: log, keep sampling
            logger.exception("status page: sampling the lateness history failed")
        self._schedule()

    def sample(self) -> None:
        """One point for each producer that ticked since the previous sample."""
        now = self._clock.time()
        totals = self._counters.lateness_totals(self._limit)
        with self._lock:
            seen = set()
            for name, counts, total, largest in totals:
                seen.add(name)
                before = self._last.get(name)
                self._last[name] = (counts, total)
                if before is None:
                    continue  # the baseline
                old_counts, old_total = before
                if sum(counts) < sum(old_counts):  # removed and added again: a new start
                    old_counts, old_total = (0,) * len(counts), 0.0
                delta = [a - b for a, b in zip(counts, old_counts, strict=True)]
                n = sum(delta)
                if n <= 0:
                    continue
                mean_ms = max(0.0, total - old_total) / n * 1000.0
                p99_ms = _p99(delta, n, largest) * 1000.0
                ring = self._points.setdefault(name, deque(maxlen=self._size))
                ring.append((now, n, mean_ms, p99_ms))
            for gone in self._last.keys() - seen:
                del self._last[gone]
                self._points.pop(gone, None)

    def points(self, name: str, now: float) -> list[list[float]]:
        """``[time, ticks, mean ms, p99 ms]`` of producer ``name`` within :attr:`keep`."""
        with self._lock:
            ring = tuple(self._points.get(name, ()))
        return [[round(t, 3), n, round(mean, 3), round(p99, 3)]
                for t, n, mean, p99 in ring if now - t <= self.keep]


def _p99(delta: list[int], n: int, largest: float) -> float:
    """The upper bound of the bucket the 99th percentile of ``delta`` falls in (capped at
    the largest lateness ever seen)."""
    rank = max(1, math.ceil(0.99 * n))
    i = bisect.bisect_left(list(itertools.accumulate(delta)), rank)
    return min(_BOUNDS[i], largest)


@dataclass(frozen=True, slots=True)
class StatusBoard:
    """Builds the ``/status.json`` document of one running conveyor."""

    stats: Callable[[], ConveyorStats]
    health: Callable[[ConveyorStats, datetime], Health]
    """The verdict over a snapshot at a time (the same snapshot the document shows)."""
    schedules: Callable[[], Mapping[str, str]]
    """Each producer's schedule, described (``every 10 s at +2 s``)."""
    clock: Clock
    started: float
    """Clock time of the start (uptime counts from it)."""
    history: LatenessHistory | None = None
    leader: bool = False
    """Whether a leader backend is configured."""

    def render(self) -> bytes:
        return (json.dumps(self.document(), separators=(",", ":"), allow_nan=False)
                + "\n").encode()

    def document(self) -> dict[str, Any]:
        now = self.clock.time()
        s = self.stats()
        verdict = self.health(s, datetime.fromtimestamp(now, UTC))
        problems = {part: mask_text(why) for part, why in verdict.problems.items()}
        schedules = self.schedules()
        shown = s.producers[:MAX_PRODUCERS]
        return {
            "schema": SCHEMA,
            "name": s.name,
            "running": s.running,
            "now": round(now, 3),
            "started": round(self.started, 3),
            "uptime_seconds": round(max(0.0, now - self.started), 3),
            "health": {"status": "ok" if verdict.ok else "unhealthy", "problems": problems},
            "leader": None if not self.leader else {
                "role": s.leader_role, "since": _ts(s.leader_since), "takeovers": s.takeovers},
            "totals": {
                "ticks": s.ticks, "produced": s.produced, "missed_ticks": s.missed_ticks,
                "producer_errors": s.producer_errors, "clock_jumps": s.clock_jumps,
                "loop_blocked": s.loop_blocked, "restarts": s.restarts,
            },
            "history": None if self.history is None else {
                "interval_seconds": self.history.interval, "seconds": self.history.keep},
            "producers_total": len(s.producers),
            "producers": [self._producer(p, schedules, problems, now) for p in shown],
            "consumers": [_consumer(c, problems) for c in s.consumers],
        }

    def _producer(self, p: ProducerStats, schedules: Mapping[str, str],
                  problems: Mapping[str, str], now: float) -> dict[str, Any]:
        problem = problems.get(f"producer:{p.name}")
        if p.state == "hung":
            condition = "hung"
        elif p.state != "finished" and p.failing_since is not None:
            condition = "failing"
        elif problem is not None:
            condition = "unhealthy"
        elif p.state == "finished":
            condition = "finished"
        else:
            condition = "ok"
        late = p.lateness
        return {
            "name": p.name,
            "schedule": schedules.get(p.name, "?"),
            "state": p.state,
            "condition": condition,
            "problem": problem,
            "next_tick": None if p.state == "finished" else _ts(p.next_tick_time),
            "last_tick": _ts(p.last_tick_time),
            "ticks": p.ticks, "produced": p.produced, "empty": p.empty,
            "missed": p.missed_ticks, "skipped": p.skipped, "errors": p.errors,
            "timeouts": p.timeouts, "standby_ticks": p.standby_ticks,
            "lateness": {"p50_ms": round(late.p50_ms, 3), "p99_ms": round(late.p99_ms, 3),
                         "max_ms": round(late.max_ms, 3)},
            "history": [] if self.history is None else self.history.points(p.name, now),
            "last_error": _masked(p.last_error),
            "last_error_time": _ts(p.last_error_time),
            "failing_since": _ts(p.failing_since),
            "leader_role": p.leader_role,
            "consumers": None if p.consumers is None else list(p.consumers),
        }


def _consumer(c: ConsumerStats, problems: Mapping[str, str]) -> dict[str, Any]:
    problem = problems.get(f"consumer:{c.name}")
    if c.state in ("quarantined", "connecting", "closed"):
        condition = c.state
    elif c.failing_since is not None:
        condition = "failing"
    elif problem is not None:
        condition = "unhealthy"
    else:
        condition = "ok"
    return {
        "name": c.name,
        "state": c.state,
        "state_since": _ts(c.state_since),
        "condition": condition,
        "problem": problem,
        "delivered": c.delivered, "errors": c.errors, "retries": c.retries,
        "dropped": c.dropped, "failed": c.failed, "rejected": c.rejected,
        "queued": c.queued, "in_flight": c.in_flight, "spooled": c.spooled,
        "timeouts": c.timeouts, "restarts": c.restarts, "open_errors": c.open_errors,
        "last_error": _masked(c.last_error),
        "last_error_time": _ts(c.last_error_time),
        "last_success": _ts(c.last_success_time),
        "failing_since": _ts(c.failing_since),
    }


def _ts(when: datetime | None) -> float | None:
    return None if when is None else round(when.timestamp(), 3)


def _masked(text: str | None) -> str | None:
    return None if text is None else mask_text(text)
