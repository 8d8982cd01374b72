"""The fan-out of one tick: every lane gets the produced item, in O(lanes) cheap steps.

No copies are made here: each lane copies the item when it takes it for delivery (see
:mod:`aioconveyor._lanes.copier`), so neither a big payload nor many consumers hold up
the tick loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any

from ._clock import Clock
from ._lanes import Lane
from ._tick import Tick

__all__ = ["Fanout"]


#: Lanes woken per turn of the loop: every lane handed an item wakes up in the next turn,
#: and a turn running thousands of them would hold the loop (and the next tick) for as
#: long as they all take.
CHUNK = 256
#: After this many appends (a few microseconds each) the fan-out lets the loop turn once.
PUT_CHUNK = 1024
#: No more lanes are woken from this long (seconds) before the next tick's time until
#: :data:`RESUME_AFTER` after it: the lanes already woken finish their few turns, and the
#: tick finds the loop free instead of behind a backlog of lane work.
HOLD_BEFORE = 0.15
RESUME_AFTER = 0.005


class Fanout:
    """Hands every produced item to every lane."""

    def __init__(self, lanes: list[Lane], clock: Clock | None = None,
                 next_tick: Callable[[], float | None] | None = None) -> None:
        """``next_tick``: the time (``clock.time()``) of the next tick, if known."""
        self.lanes = lanes  # shared with the engine, which adds and removes lanes at run time
        self._clock = clock
        self._next_tick = next_tick
        self._asleep: deque[Lane] = deque()  # lanes with an item that are still to be woken
        self._waking: object = None  # the callback to come (a handle or a clock timer)

    async def offer(self, data: Any, tick: Tick, lanes: Sequence[Lane] | None = None) -> None:
        """Queue ``data`` on every lane (or on ``lanes``: those its producer feeds); returns
        once it is queued everywhere.

        The first :data:`CHUNK` lanes are woken at once, the others :data:`CHUNK` per
        turn of the loop afterwards, by a callback: the tick loop does not wait for them.
        (It used to wake them itself, yielding every 256 lanes, and each yield waited for
        a whole turn of lanes at work: with 10,000 consumers the fan-out outlasted the
        interval and ticks were missed.) An item is queued in order either way; a lane
        not yet woken takes it when woken, or when it next looks at its queue.
        """
        asleep = self._asleep
        for i, lane in enumerate(tuple(self.lanes if lanes is None else lanes), 1):
            later = i > CHUNK
            waiter = lane.queue.put(data, tick, not later)
            if waiter is not None:  # overflow="block" and the lane is full
                await waiter
            elif later:
                asleep.append(lane)
            if i % PUT_CHUNK == 0:
                await asyncio.sleep(0)
        if asleep and self._waking is None:
            self._waking = asyncio.get_running_loop().call_soon(self._wake_some)

    def offer_now(self, data: Any, tick: Tick,
                  lanes: Sequence[Lane] | None = None) -> Coroutine[Any, Any, None] | None:
        """:meth:`offer` without a task when it need not wait (no lane full with
        ``overflow="block"``, at most :data:`PUT_CHUNK` lanes): ``None`` once ``data`` is
        queued everywhere, else a coroutine that does the rest (to await)."""
        targets = tuple(self.lanes if lanes is None else lanes)
        if len(targets) > PUT_CHUNK:
            return self.offer(data, tick, targets)
        asleep = self._asleep
        for i, lane in enumerate(targets, 1):
            later = i > CHUNK
            waiter = lane.queue.put(data, tick, not later)
            if waiter is not None:  # overflow="block" and the lane is full
                return self._offer_rest(waiter, data, tick, targets[i:])
            if later:
                asleep.append(lane)
        if asleep and self._waking is None:
            self._waking = asyncio.get_running_loop().call_soon(self._wake_some)
        return None

    async def _offer_rest(self, waiter: Awaitable[Any], data: Any, tick: Tick,
                          lanes: Sequence[Lane]) -> None:
        await waiter
        await self.offer(data, tick, lanes)

    def _wake_some(self, held: bool = False) -> None:
        """Wake the next :data:`CHUNK` lanes, after letting a tick that is about due go
        first; ``held``: this call comes after such a wait, and wakes its chunk whatever
        (with many producers a tick is always about due: holding again would starve)."""
        self._waking = None
        clock, due = self._clock, self._next_tick() if self._next_tick is not None else None
        if not held and clock is not None and due is not None:
            until = due - clock.time()
            if 0 < until < HOLD_BEFORE:  # the next tick goes first
                self._waking = clock.call_later(until + RESUME_AFTER,
                                                partial(self._wake_some, True))
                return
        asleep = self._asleep
        for _ in range(min(CHUNK, len(asleep))):
            asleep.popleft().queue.wake()
        self._waking = (asyncio.get_running_loop().call_soon(self._wake_some) if asleep
                        else None)
