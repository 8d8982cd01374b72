"""Where time comes from. The scheduler only talks to a :class:`Clock`, so tests can fake it."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Wall time, monotonic time and a way to sleep until a wall time."""

    def time(self) -> float:
        """Wall-clock POSIX seconds (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go backwards (for measuring durations)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``time() >= deadline`` (or soon after)."""
        ...


class SystemClock:
    """The real clocks, with a punctual sleep.

    asyncio timers wake up to about a millisecond late (epoll has millisecond timeouts), so
    the sleep ends ``spin`` seconds early and yields to the loop (``sleep(0)``) for the last
    stretch, re-reading the wall clock each time. Long sleeps are cut into pieces of at most
    ``max_chunk`` seconds so a wall-clock step or a suspend is noticed within a chunk.
    """

    def __init__(self, *, spin: float = 0.002, max_chunk: float = 1.0) -> None:
        self.spin = spin
        self.max_chunk = max_chunk

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                return
            if remaining > self.spin:
                await asyncio.sleep(min(remaining - self.spin, self.max_chunk))
            else:
                await asyncio.sleep(0)
