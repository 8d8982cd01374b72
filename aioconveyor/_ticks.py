"""The pull face: ticks on the conveyor's grid for a loop of your own.

:func:`ticks` returns one object that is both an iterator (blocking) and an async
iterator. It keeps no thread and no task: each ``next()`` asks the
:class:`~aioconveyor._schedule.Planner` for the next grid time (it never computes one
itself), waits for it on the :class:`~aioconveyor.Clock` and returns a
:class:`~aioconveyor.Tick`.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Iterator
from datetime import tzinfo

from . import _validate
from ._clock import Clock, SystemClock
from ._schedule import Misfire, Plan, Planner, Schedule, resolve_schedule
from ._tick import Tick
from .testing import FakeClock

__all__ = ["Ticks", "ticks"]

#: A blocking sleep is cut into pieces of at most this many seconds, so a wall-clock step
#: (or a suspend) is noticed within one piece, like :class:`~aioconveyor.SystemClock` does.
MAX_CHUNK = 1.0


class Ticks(Iterator[Tick], AsyncIterator[Tick]):
    """What :func:`ticks` returns: iterate it with ``for`` or ``async for`` (or both).

    The state (the last grid time handed out, the count) is shared by both faces, so a
    grid time is never handed out twice.
    """

    def __init__(self, planner: Planner, clock: Clock, max_ticks: int | None) -> None:
        self.planner = planner
        self.clock = clock
        self.max_ticks = max_ticks
        self.count = 0
        self.last_event: float | None = None

    def __repr__(self) -> str:
        return (f"<aioconveyor.ticks {self.planner.schedule!r} count={self.count} "
                f"max_ticks={self.max_ticks}>")

    def _done(self) -> bool:
        return self.max_ticks is not None and self.count >= self.max_ticks

    def _plan(self) -> Plan:
        return self.planner.plan(self.last_event, self.clock.time())

    def _take(self, plan: Plan, woke: float) -> Tick | None:
        """The tick for ``plan`` woken at ``woke``, or ``None`` if that is past the grace
        (then the caller plans again; the planner counts the grid time as missed)."""
        if self.planner.too_late(plan, woke):
            return None
        self.last_event = plan.event_time
        tick = Tick.make(self.count, plan.event_time, plan.fire_at, woke, plan.missed)
        self.count += 1
        return tick

    # -- blocking --------------------------------------------------------------------

    def __iter__(self) -> Ticks:
        return self

    def __next__(self) -> Tick:
        while not self._done():
            plan = self._plan()
            self._wait(plan.fire_at)
            tick = self._take(plan, self.clock.time())
            if tick is not None:
                return tick
        raise StopIteration

    def _wait(self, deadline: float) -> None:
        clock = self.clock
        if isinstance(clock, FakeClock):
            # a fake clock cannot be slept on synchronously: time is moved to the deadline
            remaining = deadline - clock.time()
            if remaining > 0:
                clock.advance(remaining)
            return
        while (remaining := deadline - clock.time()) > 0:
            time.sleep(min(remaining, MAX_CHUNK))

    # -- async -----------------------------------------------------------------------

    def __aiter__(self) -> Ticks:
        return self

    async def __anext__(self) -> Tick:
        while not self._done():
            plan = self._plan()
            await self.clock.sleep_until(plan.fire_at)
            tick = self._take(plan, self.clock.time())
            if tick is not None:
                return tick
        raise StopAsyncIteration


def ticks(
    every: float | None = None,
    offset: float = 0.0,
    *,
    cron: str | None = None,
    cron_tz: tzinfo | None = None,
    schedule: Schedule | None = None,
    misfire: Misfire | str = Misfire.SKIP,
    misfire_grace: float | None = None,
    eager: bool = False,
    jitter: float = 0.0,
    seed: int | None = None,
    max_ticks: int | None = None,
    clock: Clock | None = None,
) -> Ticks:
    """Ticks on the conveyor's grid, for a loop of your own: ``for tick in ticks(every=5)``
    or ``async for tick in ticks(every=5)``.

    Each item is a :class:`~aioconveyor.Tick` (``index``, ``event_time`` exactly on the
    grid, ``scheduled``, ``started``, ``missed_before``). The grid, the misfire rules and
    the arguments are those of :class:`~aioconveyor.AioConveyor`: ``every`` and ``offset``
    are its ``loop_interval`` and ``loop_offset`` (``k * every + offset`` seconds of the
    UTC epoch); or ``cron`` (with ``cron_tz``); or any :class:`~aioconveyor.Schedule`.
    Give exactly one of ``every``, ``cron`` and ``schedule``; a bad or contradicting
    argument raises :class:`~aioconveyor.SettingError` naming it.

    There is no thread and no task: the wait happens inside ``next()``. A caller that takes
    longer than a period between two ``next()`` calls misses grid times, handled by
    ``misfire``: with ``"skip"`` the next tick is the next future grid time and its
    ``missed_before`` says how many passed; with ``"coalesce"`` the latest passed one is
    returned at once (late, ``started > scheduled``) if it is no older than
    ``misfire_grace`` (default half a period). ``max_ticks`` ends the iteration.

    Waiting: ``async for`` awaits ``clock.sleep_until()``, so a
    :class:`~aioconveyor.testing.FakeClock` autojumps as it does for a conveyor. The
    blocking ``for`` sleeps with ``time.sleep()`` against ``clock.time()`` (default
    :class:`~aioconveyor.SystemClock`); a ``FakeClock``, which cannot be slept on
    synchronously, is instead moved forward with ``clock.advance()`` to the fire time, so
    plain tests run through hours of ticks at once (do not do that while a loop uses the
    same fake clock).
    """
    sched = resolve_schedule(every, offset, cron, cron_tz, schedule,
                             names=("every", "offset"), default_interval=None)
    if clock is not None and not isinstance(clock, Clock):
        _validate.fail("clock", clock,
                       "must provide time(), monotonic(), sleep_until(), sleep(), "
                       f"call_later() and track(), got {clock!r}")
    used: Clock = clock or SystemClock()
    _validate.boolean("eager", eager)
    now = used.time()
    period = sched.next_fire(now) - sched.prev_fire(now)
    spread = _validate.non_negative("jitter", jitter)
    if spread >= period:
        _validate.fail("jitter", jitter,
                       f"must be smaller than the tick period ({period:g} s), got {jitter!r}")
    limit = _validate.optional_integer("max_ticks", max_ticks, minimum=1)
    policy = _validate.choice("misfire", misfire, Misfire)
    grace = None if misfire_grace is None else _validate.non_negative("misfire_grace",
                                                                      misfire_grace)
    if seed is not None:
        _validate.integer("seed", seed, minimum=None)
    planner = Planner(sched, misfire=policy, misfire_grace=grace, jitter=spread, eager=eager,
                      rng=random.Random(seed))
    return Ticks(planner, used, limit)
