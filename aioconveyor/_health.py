"""Is the conveyor healthy? A pure judgement over a stats snapshot (no I/O).

Healthy means: running, the tick loop on time (``"scheduler"``: the earliest tick it
should have started is not overdue by more than ``bound`` seconds), and for every producer
still ticking (its own bound, see ``producer_bounds``; a finished one is fine):

* its tick not overdue by more than its bound (``"producer:<name>"``, as the loop being
  behind delays every producer: then both are named);
* no call of it running longer than its bound, and no call hung past its timeout for
  longer than it (a hung call is named even though the loop is on time: only that
  producer's ticks are skipped);
* not failing (or timing out) on every call for longer than its bound;

and for every consumer (its bound is ``bound`` plus its ``batch_age``):

* not quarantined (failed beyond its restart budget);
* not "connecting" (``open()`` failing) for longer than its bound;
* not failing (or rejected on) every item it settled for longer than its bound;
* no call running longer than its bound, and no item waiting longer than it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._stats import ConveyorStats, ProducerStats

__all__ = ["MAX_NAMED_PRODUCERS", "Health", "assess"]

#: At most this many producers are named in ``problems``; the rest are counted under
#: ``"producers"`` (ten thousand devices behind a blocked loop make one short answer).
MAX_NAMED_PRODUCERS = 20


@dataclass(frozen=True, slots=True)
class Health:
    """The verdict: ``ok``, and for each unhealthy part (``"conveyor"``, ``"scheduler"``,
    ``"producer:<name>"``, ``"producers"``, ``"consumer:<name>"``) a sentence saying why."""

    ok: bool
    problems: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "unhealthy", "problems": dict(self.problems)}


def assess(
    stats: ConveyorStats, *, now: datetime, bound: float,
    consumer_bounds: Mapping[str, float] | None = None,
    producer_bounds: Mapping[str, float] | None = None,
) -> Health:
    """Judge ``stats`` at wall time ``now`` (tz-aware). A producer's bound is
    ``producer_bounds[name]``, else ``bound``."""
    problems: dict[str, str] = {}
    if not stats.running:
        problems["conveyor"] = "not running"
    else:
        due = _loop_due(stats)
        if due is not None and (overdue := (now - due).total_seconds()) > bound:
            problems["scheduler"] = f"tick of {due.isoformat()} overdue by {overdue:.1f} s"
        _judge_producers(stats, now, bound, producer_bounds or {}, problems)
    for c in stats.consumers:
        limit = (consumer_bounds or {}).get(c.name, bound)
        since = c.state_since or now
        if c.state == "quarantined":
            problems[f"consumer:{c.name}"] = (
                f"quarantined since {since.isoformat()}: failed beyond its restart budget"
            )
        elif c.state == "connecting" and (now - since).total_seconds() > limit:
            problems[f"consumer:{c.name}"] = (
                f"not open for {(now - since).total_seconds():.1f} s: {c.last_error}"
            )
        elif (c.failing_since is not None
              and (now - c.failing_since).total_seconds() > limit):
            problems[f"consumer:{c.name}"] = (
                f"every item failed or was rejected for "
                f"{(now - c.failing_since).total_seconds():.1f} s "
                f"(failed {c.failed}, rejected {c.rejected}; last error: {c.last_error})"
            )
        elif c.busy_seconds > limit:
            problems[f"consumer:{c.name}"] = f"call running for {c.busy_seconds:.1f} s"
        elif c.oldest_queued_seconds > limit:
            problems[f"consumer:{c.name}"] = (
                f"{c.queued} item(s) waiting, the oldest for {c.oldest_queued_seconds:.1f} s"
            )
    return Health(not problems, problems)


def _loop_due(stats: ConveyorStats) -> datetime | None:
    """The earliest tick the loop itself has to start: of the producers waiting for their
    next tick (one whose call runs or hangs holds up only itself). A snapshot that lists no
    producer still ticking falls back on its ``next_tick_time``."""
    ticking = [p for p in stats.producers if p.state in _TICKING]
    if not ticking:
        return stats.next_tick_time
    waiting = [p.next_tick_time for p in ticking
               if p.state == "waiting" and p.next_tick_time is not None]
    return min(waiting) if waiting else None


_TICKING = frozenset({"waiting", "running", "hung"})


def _judge_producers(stats: ConveyorStats, now: datetime, bound: float,
                     bounds: Mapping[str, float], problems: dict[str, str]) -> None:
    unhealthy = 0
    for p in stats.producers:
        why = _producer_problem(p, now, bounds.get(p.name, bound))
        if why is None:
            continue
        unhealthy += 1
        if unhealthy <= MAX_NAMED_PRODUCERS:
            problems[f"producer:{p.name}"] = why
    if unhealthy > MAX_NAMED_PRODUCERS:
        problems["producers"] = (f"{unhealthy} producers unhealthy, the first "
                                 f"{MAX_NAMED_PRODUCERS} named")


def _producer_problem(p: ProducerStats, now: datetime, limit: float) -> str | None:
    """Why producer ``p`` is unhealthy at ``now`` (None if it is not)."""
    error = f"; last error: {p.last_error}" if p.last_error else ""
    if p.state == "hung":
        # it timed out (the error's time) and its call did not stop: every tick is skipped
        since = p.last_error_time or p.last_tick_time
        hung_for = math.inf if since is None else (now - since).total_seconds()
        if hung_for <= limit:
            return None
        when = "" if since is None else f" since {since.isoformat()} ({hung_for:.1f} s)"
        return (f"call hung past its timeout{when}, not returning; {p.skipped} tick(s) "
                f"skipped{error}")
    if p.state == "running" and p.last_tick_time is not None:
        running = (now - p.last_tick_time).total_seconds()
        if running > limit:
            return (f"call of tick {p.last_tick_time.isoformat()} running for "
                    f"{running:.1f} s{error}")
    if p.state == "waiting" and p.next_tick_time is not None:
        overdue = (now - p.next_tick_time).total_seconds()
        if overdue > limit:
            return (f"tick of {p.next_tick_time.isoformat()} overdue by {overdue:.1f} s, "
                    f"not started (the tick loop is behind){error}")
    if p.state != "finished" and p.failing_since is not None:
        failing = (now - p.failing_since).total_seconds()
        if failing > limit:
            return f"every call failed for {failing:.1f} s ({p.errors} errors){error}"
    return None
