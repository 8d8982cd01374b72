"""Is the conveyor healthy? A pure judgement over a stats snapshot (no I/O).

Healthy means: running, the next tick not overdue by more than ``bound`` seconds, and for
every consumer (its bound is ``bound`` plus its ``batch_age``):

* not quarantined (failed beyond its restart budget);
* not "connecting" (``open()`` failing) for longer than its bound;
* not failing (or rejected on) every item it settled for longer than its bound;
* no call running longer than its bound, and no item waiting longer than it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._stats import ConveyorStats

__all__ = ["Health", "assess"]


@dataclass(frozen=True, slots=True)
class Health:
    """The verdict: ``ok``, and for each unhealthy part (``"conveyor"``, ``"scheduler"``,
    ``"consumer:<name>"``) a sentence saying why."""

    ok: bool
    problems: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "unhealthy", "problems": dict(self.problems)}


def assess(
    stats: ConveyorStats, *, now: datetime, bound: float,
    consumer_bounds: Mapping[str, float] | None = None,
) -> Health:
    """Judge ``stats`` at wall time ``now`` (tz-aware)."""
    problems: dict[str, str] = {}
    if not stats.running:
        problems["conveyor"] = "not running"
    elif stats.next_tick_time is not None:
        overdue = (now - stats.next_tick_time).total_seconds()
        if overdue > bound:
            problems["scheduler"] = (
                f"tick of {stats.next_tick_time.isoformat()} overdue by {overdue:.1f} s"
            )
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
