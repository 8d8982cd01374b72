"""Deep copies for the lanes, kept off the event loop once they are not cheap.

Every lane takes its own copy of an item when it is about to deliver it, not when the
tick fans out, so a tick costs the loop O(consumers) appends whatever the payload. A lane
copies inline while its copies are measured to be cheap (below :data:`INLINE_LIMIT`), and
on the conveyor's copier thread otherwise, so a 50 MB payload never blocks the loop.

The object a producer returns is therefore read by the copies after the producer has
returned it: a producer must hand over a new object each tick (or a copy of the state it
keeps), not change one it returned before.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from ..clock import Clock
from ..workers import SyncWorker

__all__ = ["Copier", "CopyCost"]

#: A lane whose last copy took longer than this (seconds) makes the next one on a thread.
INLINE_LIMIT = 0.0005


def _timed_copy(data: Any) -> tuple[Any, float]:
    # perf_counter measures the CPU work of one copy (to choose where the next one runs);
    # it is not a timer, so it stays off the conveyor's Clock on purpose
    start = time.perf_counter()
    result = copy.deepcopy(data)
    return result, time.perf_counter() - start


class CopyCost:
    """What one lane's last copy cost (seconds), or None before its first."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: float | None = None


class Copier:
    """One per conveyor: the thread that makes the big copies, shared by its lanes."""

    def __init__(self, name: str, clock: Clock) -> None:
        self._clock = clock
        self._worker = SyncWorker(f"aioconveyor[{name}].copier")

    async def copy(self, data: Any, cost: CopyCost) -> Any:
        """A deep copy of ``data``; raises what ``copy.deepcopy`` raises."""
        if cost.last is not None and cost.last < INLINE_LIMIT:
            result, cost.last = _timed_copy(data)
            return result
        work = self._worker.submit(_timed_copy, data)
        self._clock.track(work)
        result, cost.last = await asyncio.wrap_future(work)
        return result

    def close(self) -> None:
        self._worker.close()
