"""Is the conveyor healthy? A pure judgement over a stats snapshot (no I/O).

Healthy means: running, the next tick not overdue by more than ``bound`` seconds, and
for every consumer neither a call running longer than its bound nor an item waiting
longer than it (a consumer's bound is ``bound`` plus its ``batch_age``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .stats import ConveyorStats

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
        if c.busy_seconds > limit:
            problems[f"consumer:{c.name}"] = f"call running for {c.busy_seconds:.1f} s"
        elif c.oldest_queued_seconds > limit:
            problems[f"consumer:{c.name}"] = (
                f"{c.queued} item(s) waiting, the oldest for {c.oldest_queued_seconds:.1f} s"
            )
    return Health(not problems, problems)
