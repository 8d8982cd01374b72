"""Leader election: only one of several conveyors with the same key produces.

The core only knows the :class:`Leader` protocol. Before each tick the scheduler asks
``await leader.lead(event_time)``; ``True`` means "you hold leadership now, produce this
tick", ``False`` means "stand by". An answer that does not come within the tick's grace,
or an exception, counts as ``False``: when in doubt, don't produce.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ["Leader"]


@runtime_checkable
class Leader(Protocol):
    """A leadership backend (PostgreSQL advisory locks ship with aioconveyor)."""

    async def open(self) -> None:
        """Connect (in the conveyor's loop). Called before the first tick."""
        ...

    async def close(self) -> None:
        """Give up leadership and disconnect. Called at stop."""
        ...

    async def lead(self, event_time: datetime) -> bool:
        """Try to hold leadership for the tick at ``event_time``; True if held."""
        ...

    @property
    def role(self) -> str:
        """``"leader"``, ``"standby"`` or ``"unknown"`` (not connected)."""
        ...

    @property
    def since(self) -> datetime | None:
        """When the current role began."""
        ...

    @property
    def takeovers(self) -> int:
        """How many times this instance became leader."""
        ...
