"""Leader election: only one of several conveyors with the same key produces.

The core only knows the :class:`Leader` protocol. Before each tick the scheduler asks
``await leader.lead(event_time)`` for a producer without a leader key (the classic single
producer) and ``await leader.lead(event_time, key=key)`` for a producer with one, so that
each keyed producer is elected on its own. ``True`` means "you hold leadership now,
produce this tick", ``False`` means "stand by". An answer that does not come within the
tick's grace, or an exception, counts as ``False``: when in doubt, don't produce.

A leader written for one producer (``lead(self, event_time)`` only) still satisfies the
protocol and serves producers without a key; :func:`accepts_key` tells whether it can also
serve keyed ones. :class:`KeyedLeader` is the protocol of a leader that elects per key and
can be told that a key is no longer needed (``PostgresLeader`` is one).
"""

from __future__ import annotations

import inspect
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ["KeyedLeader", "Leader", "accepts_key"]


@runtime_checkable
class Leader(Protocol):
    """A leadership backend (PostgreSQL advisory locks ship with aioconveyor).

    ``role``, ``since`` and ``takeovers`` describe the instance's own leadership (the one
    asked for with ``key=None``).
    """

    async def open(self) -> None:
        """Connect (in the conveyor's loop). Called before the first tick."""
        ...

    async def close(self) -> None:
        """Give up every leadership and disconnect. Called at stop."""
        ...

    async def lead(self, event_time: datetime, key: str | None = None) -> bool:
        """Try to hold leadership for the tick at ``event_time``; True if held.

        ``key`` is the leader key of the producer asking (``None``: the producer without
        one). A backend that only accepts ``lead(event_time)`` serves producers without a
        key; see :func:`accepts_key`.
        """
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


@runtime_checkable
class KeyedLeader(Leader, Protocol):
    """A :class:`Leader` that elects each producer key separately."""

    def role_of(self, key: str | None = None) -> str:
        """The role of this instance for ``key`` (``None``: the instance's own key)."""
        ...

    async def release(self, key: str) -> None:
        """Give up ``key`` now (its producer was removed) so another instance can lead it."""
        ...


def accepts_key(leader: object) -> bool:
    """True if ``leader.lead`` takes ``key=`` (a :class:`KeyedLeader`, or a ``lead`` with a
    ``key`` parameter or ``**kwargs``): it can serve producers that have a leader key."""
    if isinstance(leader, KeyedLeader):
        return True
    lead = getattr(leader, "lead", None)
    if lead is None:
        return False
    try:
        parameters = inspect.signature(lead).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == "key" and p.kind is not p.POSITIONAL_ONLY)
               for p in parameters)
