"""The fan-out of one tick: every lane gets the produced item, in O(lanes) cheap steps.

No copies are made here: each lane copies the item when it takes it for delivery (see
:mod:`aioconveyor.lanes.copier`), so neither a big payload nor many consumers hold up
the tick loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .lanes import Lane
from .tick import Tick

__all__ = ["Fanout"]


#: After this many lanes the fan-out lets the loop turn once: every lane it handed an item
#: to wakes up in the next turn, and a turn running thousands of them would hold the loop
#: (and the next tick) for as long as they all take.
CHUNK = 256


class Fanout:
    """Hands every produced item to every lane."""

    def __init__(self, lanes: list[Lane]) -> None:
        self.lanes = lanes  # shared with the engine, which adds and removes lanes at run time

    async def offer(self, data: Any, tick: Tick) -> None:
        for i, lane in enumerate(tuple(self.lanes), 1):
            waiter = lane.put(data, tick)
            if waiter is not None:  # overflow="block" and the lane is full
                await waiter
            elif i % CHUNK == 0:
                await asyncio.sleep(0)
