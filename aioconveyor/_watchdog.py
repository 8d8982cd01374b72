"""Keeping the conveyor alive: task supervision with a restart budget, and a blocked-loop alarm.

* :class:`Supervisor` runs the long-lived tasks (scheduler, one per lane). A task that dies
  (of anything, ``BaseException`` included) or returns when it should not is logged and
  started again, as long as its restart budget (``restarts`` within ``window`` seconds of
  the conveyor's clock) allows. Past it, a lane is quarantined and the others go on; only
  the engine's own task (the scheduler) past its budget stops the conveyor, with
  :class:`~aioconveyor.RestartBudgetExceeded` as its ``exception``.
* :class:`LoopMonitor` notices a blocked loop and logs the loop thread's stack once per
  episode.

Consumer calls that run past their timeout are handled in the lane itself (cancelled or,
for a sync call stuck in its thread, waited for without starting another), so the
watchdog never has to guess.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ._clock import Clock, Timer, wait_done
from ._errors import RestartBudgetExceeded
from ._stats import ConveyorCounters
from ._workers import guarded

logger = logging.getLogger(__name__)

__all__ = ["LoopMonitor", "Supervisor"]


@dataclass(slots=True)
class _Watched:
    name: str
    factory: Callable[[], Coroutine[Any, Any, None]]
    on_exhausted: Callable[[RestartBudgetExceeded], None]
    on_restart: Callable[[], None] | None
    task: asyncio.Task[None] | None = None
    restarts: deque[float] = field(default_factory=deque)
    finished: bool = False


class Supervisor:
    """Starts named tasks and restarts the ones that die, within a budget per task.

    A task past its budget is handed to its ``on_exhausted`` callback: the engine stops
    the conveyor when that is its own task (the scheduler), and quarantines a lane.
    Whatever a task raises, ``BaseException`` included, ends only that task.
    """

    def __init__(self, counters: ConveyorCounters, clock: Clock, *, restarts: int,
                 window: float) -> None:
        self.counters = counters
        self.clock = clock
        self.restarts = restarts
        self.window = window
        self._watched: dict[str, _Watched] = {}
        self._stopping = False

    def watch(
        self,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        on_exhausted: Callable[[RestartBudgetExceeded], None],
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        """Run ``factory()`` as task ``name`` and keep it running."""
        w = _Watched(name, factory, on_exhausted, on_restart)
        self._watched[name] = w
        self._start(w)

    def finished(self, name: str) -> None:
        """Mark ``name`` as allowed to end (it finished its job, e.g. max_ticks reached)."""
        self._watched[name].finished = True

    def task(self, name: str) -> asyncio.Task[None] | None:
        w = self._watched.get(name)
        return None if w is None else w.task

    def forget(self, name: str) -> None:
        """Stop watching ``name`` (a lane that was removed); it is not restarted again."""
        w = self._watched.pop(name, None)
        if w is not None:
            w.finished = True

    def _start(self, w: _Watched) -> None:
        w.task = asyncio.get_running_loop().create_task(guarded(w.factory()), name=w.name)
        w.task.add_done_callback(partial(self._on_done, w))

    def _on_done(self, w: _Watched, task: asyncio.Task[None]) -> None:
        if self._stopping or w.finished or task is not w.task:
            if not task.cancelled():
                task.exception()  # retrieved: nothing to report at shutdown
            return
        if task.cancelled():
            why = "was cancelled"
        elif (exc := task.exception()) is not None:
            why = f"died: {type(exc).__name__}: {exc}"
            logger.error("task %s died", w.name, exc_info=exc)
        else:
            why = "returned unexpectedly"
        now = self.clock.monotonic()
        while w.restarts and now - w.restarts[0] > self.window:
            w.restarts.popleft()
        if len(w.restarts) >= self.restarts:
            self._watched.pop(w.name, None)
            logger.error("task %s %s; restart budget (%d in %g s) exhausted",
                         w.name, why, self.restarts, self.window)
            w.on_exhausted(RestartBudgetExceeded(w.name, self.restarts, self.window))
            return
        w.restarts.append(now)
        with self.counters.lock:
            self.counters.restarts += 1
        if w.on_restart is not None:
            w.on_restart()
        logger.warning("task %s %s; restarting it (%d/%d in %g s)",
                       w.name, why, len(w.restarts), self.restarts, self.window)
        self._start(w)

    async def stop(self, names: list[str] | None = None, timeout: float = 1.0) -> None:
        """Stop supervising and cancel the given tasks (all by default); wait at most
        ``timeout`` seconds of the clock for them to end."""
        self._stopping = True
        tasks = [w.task for n, w in self._watched.items()
                 if w.task is not None and not w.task.done() and (names is None or n in names)]
        for t in tasks:
            t.cancel()
        if tasks:
            await wait_done(self.clock, asyncio.gather(*tasks, return_exceptions=True), timeout)

    def pause(self) -> None:
        """Stop restarting tasks (shutdown has begun)."""
        self._stopping = True


class LoopMonitor:
    """Notices when the event loop stops turning.

    A heartbeat timer on the conveyor's clock (a background one: it never makes a fake
    clock jump) stamps the clock's monotonic time every quarter ``threshold``; a small
    daemon thread checks the stamp, and when it is older than ``threshold`` (a coroutine
    is blocking the loop) logs the loop thread's stack once per episode.
    """

    def __init__(self, counters: ConveyorCounters, name: str, threshold: float,
                 clock: Clock) -> None:
        self.counters = counters
        self.name = name
        self.threshold = threshold
        self.clock = clock
        self._beat = clock.monotonic()
        self._stop = threading.Event()
        self._timer: Timer | None = None
        self._loop_thread_id = threading.get_ident()
        self._thread = threading.Thread(
            target=self._watch, name=f"aioconveyor[{name}].loop-monitor", daemon=True
        )

    def start(self) -> None:
        """Call in the loop: begin the heartbeat and the watching thread."""
        self._loop_thread_id = threading.get_ident()
        self._heartbeat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()

    def _heartbeat(self) -> None:
        self._beat = self.clock.monotonic()
        if not self._stop.is_set():
            self._timer = self.clock.call_later(self.threshold / 4, self._heartbeat,
                                                background=True)

    def _watch(self) -> None:
        blocked = False
        # the thread wakes in real time (it must run while the loop is stuck); what it
        # judges is the clock's time since the last beat
        while not self._stop.wait(self.threshold / 4):
            silent = self.clock.monotonic() - self._beat
            if silent > self.threshold and not blocked:
                blocked = True
                with self.counters.lock:
                    self.counters.loop_blocked += 1
                frame = sys._current_frames().get(self._loop_thread_id)
                stack = "".join(traceback.format_stack(frame)) if frame else "(no stack)"
                logger.warning(
                    "conveyor %s: event loop blocked for %.2f s; a coroutine is not yielding. "
                    "Loop thread stack:\n%s", self.name, silent, stack,
                )
            elif silent <= self.threshold and blocked:
                blocked = False
                logger.info("conveyor %s: event loop running again", self.name)
