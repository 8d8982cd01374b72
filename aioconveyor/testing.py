"""Test doubles for users' own tests (and ours): a fake clock and a recording consumer.

``FakeClock`` replaces the wall and monotonic clocks of a conveyor (``clock=``), so the
scheduler runs through hours of ticks in milliseconds, deterministically::

    clock = FakeClock(start=1_700_000_000.0)
    conv = AioConveyor(produce, [sink], loop_interval=60, clock=clock, max_ticks=10)
    await conv.run()          # returns as soon as 10 ticks were fired, in fake time

With ``autojump`` (the default) time jumps straight to the next sleeper's deadline once
the loop has nothing else to do, like trio's ``MockClock(autojump_threshold=0)``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

__all__ = ["FakeClock", "MemoryConsumer", "wait_until", "wait_until_blocking"]


class FakeClock:
    """A :class:`~aioconveyor.clock.Clock` whose time only moves when told (or autojumps).

    * :meth:`advance` moves both clocks forward, waking sleepers in deadline order;
    * :meth:`step` moves only the wall clock (an NTP step or a manual clock change),
      forwards or backwards, like a real clock jump;
    * :meth:`sleep` is for producers and consumers that want to simulate taking time.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, autojump: bool = True,
                 settle: int = 50) -> None:
        self._mono = 1000.0
        self._offset = start - self._mono
        self.autojump = autojump
        self.settle = settle
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._jumper: asyncio.Task[None] | None = None

    def time(self) -> float:
        return self._mono + self._offset

    def monotonic(self) -> float:
        return self._mono

    def step(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (may be negative); monotonic time is unchanged."""
        self._offset += seconds

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on both clocks and wake everything due."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def sleep(self, seconds: float) -> None:
        await self._sleep_mono(self._mono + max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - self.time()) > 0:
            await self._sleep_mono(self._mono + remaining)

    async def _sleep_mono(self, until: float) -> None:
        if until <= self._mono:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (until, next(self._seq), fut))
        if self.autojump and (self._jumper is None or self._jumper.done()):
            self._jumper = asyncio.get_running_loop().create_task(self._autojump())
        await fut

    async def _autojump(self) -> None:
        while True:
            for _ in range(self.settle):
                await asyncio.sleep(0)
            live = [s for s in self._sleepers if not s[2].done()]
            if not live:
                return
            self.advance(max(0.0, min(s[0] for s in live) - self._mono))


class MemoryConsumer:
    """A consumer that records every ``(data, event_time)`` it receives, thread-safely.

    ``wait_for(n)`` blocks (from any thread) until ``n`` items arrived, so tests never
    need to sleep and hope. Use ``await consumer.async_wait_for(n)`` inside a loop.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.items: list[tuple[Any, datetime]] = []
        self._cond = threading.Condition()

    async def __call__(self, data: Any, event_time: datetime) -> None:
        with self._cond:
            self.items.append((data, event_time))
            self._cond.notify_all()

    @property
    def data(self) -> list[Any]:
        with self._cond:
            return [d for d, _ in self.items]

    @property
    def event_times(self) -> list[datetime]:
        with self._cond:
            return [t for _, t in self.items]

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` items were received; False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.items) >= n, timeout)

    async def async_wait_for(self, n: int, timeout: float = 10.0) -> bool:
        return await wait_until(lambda: len(self.items) >= n, timeout)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
                     poll: float = 0.005) -> bool:
    """Poll ``predicate`` in the running loop until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True


def wait_until_blocking(predicate: Callable[[], bool], timeout: float = 10.0,
                        poll: float = 0.005) -> bool:
    """Poll ``predicate`` from plain (non-async) code until it is true or ``timeout`` passes.

    For tests that drive a conveyor from the main thread: a bounded wait on a condition,
    never a sleep that hopes the work is done.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True
