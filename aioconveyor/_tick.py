"""The facts of one tick, reachable from inside producers and consumers."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Tick", "current_tick"]


@dataclass(frozen=True, slots=True)
class Tick:
    """One firing of the schedule.

    ``event_time`` is the grid time the tick is for (what producers and consumers receive);
    ``scheduled`` is when it was planned to start (grid time plus jitter, or later when a
    missed tick was coalesced); ``started`` is when the producer was actually called;
    ``producer`` is the name of the producer the tick belongs to (a conveyor may have many).
    """

    index: int
    event_time: datetime
    scheduled: float
    started: float
    missed_before: int = 0
    producer: str = ""

    @property
    def lateness(self) -> float:
        """Seconds between the planned start and the real start (>= 0 normally)."""
        return self.started - self.scheduled

    @classmethod
    def make(cls, index: int, grid: float, scheduled: float, started: float, missed: int,
             producer: str = "") -> Tick:
        return cls(index, datetime.fromtimestamp(grid, UTC), scheduled, started, missed,
                   producer)


_current: contextvars.ContextVar[Tick | None] = contextvars.ContextVar(
    "aioconveyor_tick", default=None
)


def current_tick() -> Tick | None:
    """The :class:`Tick` being produced or consumed in this context, or ``None`` outside one.

    Works in async and sync producers/consumers alike, without changing their signatures.
    """
    return _current.get()


def _set(tick: Tick | None) -> contextvars.Token[Tick | None]:
    return _current.set(tick)


def _reset(token: contextvars.Token[Tick | None]) -> None:
    _current.reset(token)
