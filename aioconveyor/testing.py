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
import concurrent.futures
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

__all__ = ["FakeClock", "MemoryConsumer", "wait_until", "wait_until_blocking"]


class _FakeTimer:
    """One pending callback of a :class:`FakeClock` (what ``call_later`` returns)."""

    __slots__ = ("callback", "cancelled", "deadline", "loop", "seq")

    def __init__(self, deadline: float, seq: int, callback: Callable[[], object],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.loop = loop
        self.cancelled = False

    def __lt__(self, other: _FakeTimer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A :class:`~aioconveyor.Clock` whose time only moves when told (or autojumps).

    Every timer of a conveyor runs on it: ticks, retries and backoff, ``batch_age``,
    ``RetryAfter``, call timeouts, the restart window, stop deadlines and ``health()``.

    * :meth:`advance` moves both clocks forward, firing every timer due in deadline order
      (each sees the clock at its own deadline);
    * :meth:`step` moves only the wall clock (an NTP step or a manual clock change),
      forwards or backwards, like a real clock jump;
    * :meth:`sleep` is for producers and consumers that want to simulate taking time.

    With ``autojump`` time jumps to the next timer once the loop has had ``settle`` turns
    with nothing to do. A sync call running on a thread holds the jump for up to
    ``thread_grace`` real seconds (so a quick sync consumer is not timed out by a jump);
    one still running after that counts as hung and no longer holds time back.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, autojump: bool = True,
                 settle: int = 50, thread_grace: float = 5.0) -> None:
        self._mono = 1000.0
        self._offset = start - self._mono
        self.autojump = autojump
        self.settle = settle
        self.thread_grace = thread_grace
        self._timers: list[_FakeTimer] = []  # the ones that may make time jump
        self._background: list[_FakeTimer] = []  # observers only (the loop monitor)
        self._seq = itertools.count()
        self._jumper: asyncio.Task[None] | None = None
        self._threads: list[tuple[concurrent.futures.Future[Any], float]] = []

    def time(self) -> float:
        return self._mono + self._offset

    def monotonic(self) -> float:
        return self._mono

    def step(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (may be negative); monotonic time is unchanged."""
        self._offset += seconds

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on both clocks, firing every timer due in deadline order.

        Call it from the loop that runs the conveyor (for a conveyor on its own thread,
        rely on autojump instead).
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        target = self._mono + seconds
        while (timer := self._pop_due(target)) is not None:
            self._mono = max(self._mono, timer.deadline)
            timer.callback()
        self._mono = target

    def _pop_due(self, target: float) -> _FakeTimer | None:
        """The earliest live timer due by ``target`` of either heap, removed from it."""
        for heap in (self._timers, self._background):
            while heap and heap[0].cancelled:
                heapq.heappop(heap)
        fg, bg = self._timers, self._background
        heap = fg if fg and (not bg or fg[0] < bg[0]) else bg
        if heap and heap[0].deadline <= target:
            return heapq.heappop(heap)
        return None

    def call_later(self, delay: float, callback: Callable[[], object], *,
                   background: bool = False) -> _FakeTimer:
        loop = asyncio.get_running_loop()
        timer = _FakeTimer(self._mono + max(0.0, delay), next(self._seq), callback, loop)
        heapq.heappush(self._background if background else self._timers, timer)
        if not background and self.autojump and (self._jumper is None or self._jumper.done()):
            self._jumper = loop.create_task(self._autojump(), name="FakeClock.autojump")
        return timer

    def track(self, work: concurrent.futures.Future[Any]) -> None:
        self._threads.append((work, time.monotonic()))

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await fut
        finally:
            timer.cancel()

    async def sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - self.time()) > 0:
            await self.sleep(remaining)

    def _threads_busy(self) -> bool:
        """A sync call is still running (started less than ``thread_grace`` real seconds
        ago), or has just finished: its result reaches the loop by a callback that has to
        run before time may move on."""
        now = time.monotonic()
        busy = False
        running: list[tuple[concurrent.futures.Future[Any], float]] = []
        for work, started in self._threads:
            if work.done():
                busy = True  # finished since the last look: one more settle for its result
            elif now - started < self.thread_grace:
                busy = True
                running.append((work, started))
        self._threads = running
        return busy

    async def _autojump(self) -> None:
        while True:
            for _ in range(self.settle):
                await asyncio.sleep(0)
            # work still under way (a tick takes several turns) holds the jump a while; a
            # loop that is never idle (something polling with sleep(0)) still gets time
            for _ in range(4 * self.settle):
                if _pending_callbacks() == 0:
                    break
                await asyncio.sleep(0)
            if self._threads_busy():
                await asyncio.sleep(0.001)  # real time: let the thread finish its call
                continue
            while self._timers and self._timers[0].cancelled:
                heapq.heappop(self._timers)
            if not self._timers:
                return
            self.advance(max(0.0, self._timers[0].deadline - self._mono))


def _pending_callbacks() -> int:
    """Callbacks ready to run in this loop besides the caller's own wake-up (asyncio's
    ready queue; 0 where a loop does not expose it)."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    return 0 if ready is None else len(ready)


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
