"""What every group backend shares: the stats of a group member, and the assignment rule.

A *group* is a set of instances that run the same producers and split them: each producer
is assigned to one live member by rendezvous hashing (:mod:`aioconveyor._rendezvous`), and
produced by it alone. :class:`GroupStats` is what ``conveyor.stats().group`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from . import _rendezvous

__all__ = ["GroupStats", "assignment"]


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One member's view of its group (``conveyor.stats().group``)."""

    group: str
    """The group's name."""
    name: str
    """This member's name."""
    members: tuple[str, ...]
    """The names of the live members, this one included, sorted (empty while not joined)."""
    owned: tuple[str, ...]
    """The producer keys this member produces now (assigned to it and locked or claimed)."""
    assigned: int
    """How many producers the assignment gives this member."""
    producers: int
    """How many producers this member knows (asked about and not released)."""
    takeovers: int
    """Producers this member took (a lock got, or a claim made after another member's)."""
    handovers: int
    """Producers this member gave up because the assignment moved them elsewhere."""
    lost: int
    """Producers this member lost with its connection or session (not handed over)."""
    agreed: bool
    """Every member runs the same producers, so the balanced assignment applies (else plain
    rendezvous hashing, which needs no agreement on the set)."""
    since: datetime | None
    """When the member list last changed."""


def assignment(keys: Iterable[str], members: Iterable[str], *, balanced: bool,
               balance: float) -> dict[str, str]:
    """Each key's member: balanced (:func:`~aioconveyor._rendezvous.assign`) when every
    member knows the same keys, else plain HRW (each key on its preferred member)."""
    if balanced:
        return _rendezvous.assign(keys, members, balance=balance)
    member_list = list(members)
    result: dict[str, str] = {}
    for key in keys:
        owner = _rendezvous.preferred(key, member_list)
        if owner is not None:
            result[key] = owner
    return result
