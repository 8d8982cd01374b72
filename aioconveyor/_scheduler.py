"""The tick loop of a conveyor: every producer's next tick in one heap, one sleeping task.

It never does time arithmetic itself: each :class:`~aioconveyor._producing.ProducerRun`
(through its :class:`~aioconveyor._schedule.Planner`) says when, the
:class:`~aioconveyor.Clock` sleeps until the earliest, and each due tick runs in a task
of its own, so a producer that is slow, hangs or fails never delays another. Ten thousand
producers cost one heap entry each, not a task and a timer each. A run's state (the last
grid time fired) lives on the run, so a restarted loop continues on the same grid.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from ._clock import Clock, wait_done
from ._producing import Offer, OfferNow, ProducerRun
from ._schedule import Plan
from ._stats import ConveyorCounters

__all__ = ["Scheduler"]

logger = logging.getLogger(__name__)

#: A change of (wall - monotonic) bigger than this between two looks is a clock step.
JUMP_THRESHOLD = 0.5

_Entry = tuple[float, int, ProducerRun, Plan]


class Scheduler:
    """Fires every producer's ticks on time and fans out what they produce."""

    def __init__(self, clock: Clock, offer: Offer, counters: ConveyorCounters, *,
                 name: str, on_finished: Callable[[], None],
                 offer_now: OfferNow | None = None) -> None:
        self.clock = clock
        self.counters = counters
        self.name = name
        self.on_finished = on_finished
        self._offer = offer
        self._offer_now: OfferNow = offer_now or (lambda data, tick, lanes: offer(data, tick,
                                                                                 lanes))
        self._runs: dict[str, ProducerRun] = {}
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._ticks: dict[ProducerRun, asyncio.Future[Any]] = {}  # ticks under way
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop's, in run()
        self._task: asyncio.Task[Any] | None = None  # the loop's task, while it sleeps
        self._sleeping_until: float | None = None
        self._woken = False  # _wake() cancelled the sleep (not a cancellation from outside)
        self._idle: asyncio.Future[None] | None = None  # the loop's wait, with nothing to do
        self._clock_offset: float | None = None
        self._unplanned: dict[ProducerRun, None] = {}  # runs to plan when the loop (re)starts
        self._failure: BaseException | None = None  # planning failed outside the loop
        self._started = False
        self._ended = False

    # -- producers -------------------------------------------------------------------

    @property
    def runs(self) -> Sequence[ProducerRun]:
        return tuple(self._runs.values())

    def run_of(self, name: str) -> ProducerRun:
        try:
            return self._runs[name]
        except KeyError:
            raise KeyError(f"no producer named {name!r}; have {list(self._runs)}") from None

    def add(self, run: ProducerRun) -> None:
        """Start ticking ``run`` (planned at once when the loop runs, else when it starts)."""
        if run.name in self._runs:
            raise ValueError(f"a producer named {run.name!r} exists already")
        self._runs[run.name] = run
        self._unplanned[run] = None
        if self._started:
            self._plan(run)

    async def remove(self, name: str, seconds: float) -> ProducerRun:
        """Stop ticking ``name``; a tick under way may finish within ``seconds`` (then it
        is cancelled). Returns the removed run (closed)."""
        run = self.run_of(name)
        run.removed = True  # its heap entry is skipped from now on
        del self._runs[name]
        task = self._ticks.get(run)
        if task is not None and not await wait_done(self.clock, task, seconds):
            task.cancel()
            await wait_done(self.clock, task, 1.0)
        run.close()
        return run

    def next_fire(self) -> float | None:
        """When the next tick of any producer is due (``clock.time()``), if one is.

        A hint, safe to read from any thread (the copier's): it never changes the heap, so
        the entry of a producer removed a moment ago may still answer."""
        heap = self._heap
        try:
            return heap[0][0]
        except IndexError:
            return None

    def _head(self) -> float | None:
        """:meth:`next_fire` for the loop itself, dropping removed producers' entries."""
        heap = self._heap
        while heap and heap[0][2].removed:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Sleep until the earliest tick, start every tick due, again; until cancelled."""
        self._started = True
        self._loop = loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for run in list(self._unplanned):  # at the start, and after a failure of planning
            if not run.removed:
                self._plan(run)
        clock, heap = self.clock, self._heap
        while True:
            if self._failure is not None:  # planning failed in a tick: this loop fails
                failure, self._failure = self._failure, None
                raise failure
            due = self._head()
            if due is None:
                self._idle = loop.create_future()
                try:
                    await self._idle
                finally:
                    self._idle = None
                continue
            if due > clock.time() and not await self._sleep_until(due, task):
                continue  # woken early: a producer with an earlier tick came
            woke = clock.time()
            self._check_clock_step(woke)
            while heap and heap[0][0] <= woke:
                _, _, run, plan = heapq.heappop(heap)
                if run.removed:
                    continue
                self._unplanned[run] = None  # until its tick has started
                if run.too_late(plan, woke):  # slept through it (blocked loop, suspend,
                    self._plan(run, woke)     # clock step): plan again, counted as missed
                    continue
                del self._unplanned[run]
                if run.direct:  # one task per tick: the call's
                    call = run.fire(plan, woke, self._offer_now, self._tick_over, loop)
                    if call is None:
                        self._tick_over(run, None, True)
                    else:
                        self._ticks[run] = call
                else:
                    self._ticks[run] = loop.create_task(
                        self._see_through(run, run.tick(plan, woke, self._offer)),
                        name=f"aioconveyor[{self.name}].tick")

    async def _sleep_until(self, due: float, task: asyncio.Task[Any] | None) -> bool:
        """Sleep until ``due``; False if woken early by :meth:`_wake`.

        The early wake cancels this task (as an ``asyncio.timeout`` scope would, without
        the scope's objects and look-ups on every sleep): a cancellation from outside
        that comes meanwhile is passed on, not taken for the wake."""
        if task is None:  # not in a task (never, in a conveyor): no early wake
            await self.clock.sleep_until(due)
            return True
        cancelling = task.cancelling()
        self._task, self._sleeping_until, self._woken = task, due, False
        try:
            await self.clock.sleep_until(due)
        except asyncio.CancelledError:
            if self._woken and task.uncancel() <= cancelling:
                return False
            raise
        finally:
            self._task = self._sleeping_until = None
        if self._woken:  # woken as the sleep ended by itself: the cancellation is moot
            task.uncancel()
        return True

    def _wake(self, fire_at: float = -math.inf) -> None:
        """A tick at ``fire_at`` was planned: wake the loop if it sleeps past it."""
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        elif (self._task is not None and self._sleeping_until is not None
              and fire_at < self._sleeping_until and not self._woken):
            self._woken = True
            self._task.cancel()

    def _plan(self, run: ProducerRun, now: float | None = None) -> None:
        """Plan ``run``'s next tick. If that raises (a schedule's maths), the run stays
        unplanned until the loop restarts, and the error ends the loop (the watchdog
        restarts it, within its budget)."""
        self._unplanned[run] = None
        plan = run.next_plan(self.clock.time() if now is None else now)
        del self._unplanned[run]
        if plan is None:
            self._finished_one()
            return
        heapq.heappush(self._heap, (plan.fire_at, next(self._seq), run, plan))
        if self._task is not None or self._idle is not None:
            self._wake(plan.fire_at)

    def _finished_one(self) -> None:
        # (a run counts its tick when it starts: wait until no tick is under way)
        if (not self._ended and self._runs and not self._ticks
                and all(r.finished for r in self._runs.values())):
            self._ended = True
            self.on_finished()

    def _replan(self, run: ProducerRun) -> None:
        """``run``'s tick is over: plan its next one."""
        if not run.removed:
            try:
                self._plan(run)
            except BaseException as exc:  # handed to the loop, which the watchdog watches
                self._failure = exc
                self._wake()

    def _tick_over(self, run: ProducerRun, rest: Awaitable[None] | None, replan: bool) -> None:
        """A direct tick (:meth:`ProducerRun.fire`) is over, but for ``rest`` of its
        fan-out (awaited in a task of its own before the next is planned)."""
        if rest is not None:
            self._ticks[run] = (self._loop or asyncio.get_running_loop()).create_task(
                self._see_through(run, rest), name=f"aioconveyor[{self.name}].tick")
            return
        self._ticks.pop(run, None)
        if replan:
            self._replan(run)

    async def _see_through(self, run: ProducerRun, work: Awaitable[None]) -> None:
        """The task of a tick (or of the rest of a direct tick's fan-out): await ``work``,
        then plan the run's next tick."""
        try:
            await work
        except asyncio.CancelledError:
            if isinstance(work, Coroutine):  # cancelled before it began: never awaited
                work.close()
            raise
        except BaseException:  # the producer's own failures are handled in the run: this
            # is ours, or a Schedule's (its maths for a backoff); the producer goes on
            logger.exception("conveyor %s: tick of producer %s failed", self.name, run.name)
        finally:
            if self._ticks.get(run) is asyncio.current_task():
                del self._ticks[run]
        self._replan(run)

    def _check_clock_step(self, now: float) -> None:
        offset = now - self.clock.monotonic()
        previous, self._clock_offset = self._clock_offset, offset
        if previous is not None and abs(offset - previous) > JUMP_THRESHOLD:
            with self.counters.lock:
                self.counters.clock_jumps += 1
            logger.warning("conveyor %s: wall clock stepped by %+.3f s; staying on the grid",
                           self.name, offset - previous)

    # -- the end ---------------------------------------------------------------------

    async def stop_ticks(self, seconds: float) -> None:
        """Cancel the ticks under way and wait for them (at most ``seconds`` each)."""
        for task in list(self._ticks.values()):
            task.cancel()
        for task in list(self._ticks.values()):
            await wait_done(self.clock, task, seconds)

    def close(self) -> None:
        for run in self._runs.values():
            run.close()

