"""Keeping the conveyor alive: task supervision with a restart budget, and a blocked-loop alarm.

* :class:`Supervisor` runs the long-lived tasks (scheduler, one per lane). A task that dies
  of an exception, or returns when it should not, is logged and started again, as long as
  the restart budget (``restarts`` within ``window`` seconds, per task) allows. Past it,
  the supervisor reports :class:`~aioconveyor.errors.RestartBudgetExceeded` and the conveyor
  stops with that as its ``exception``.
* :class:`LoopMonitor` is a small daemon thread that expects a heartbeat from the loop; when
  the loop stops beating for ``threshold`` seconds (a coroutine is blocking it), it logs the
  loop thread's current stack once per episode.

Consumer calls that run past their timeout are handled in the lane itself (cancelled or,
for a sync call stuck in its thread, abandoned), so the watchdog never has to guess.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .errors import RestartBudgetExceeded
from .stats import ConveyorCounters, LaneCounters

logger = logging.getLogger(__name__)

__all__ = ["LoopMonitor", "Supervisor"]


@dataclass(slots=True)
class _Watched:
    name: str
    factory: Callable[[], Coroutine[Any, Any, None]]
    counters: LaneCounters | None
    task: asyncio.Task[None] | None = None
    restarts: deque[float] = field(default_factory=deque)
    finished: bool = False


class Supervisor:
    """Starts named tasks and restarts the ones that die, within a budget."""

    def __init__(
        self,
        counters: ConveyorCounters,
        *,
        restarts: int,
        window: float,
        on_budget_exceeded: Callable[[RestartBudgetExceeded], None],
    ) -> None:
        self.counters = counters
        self.restarts = restarts
        self.window = window
        self.on_budget_exceeded = on_budget_exceeded
        self._watched: dict[str, _Watched] = {}
        self._stopping = False

    def watch(
        self,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        counters: LaneCounters | None = None,
    ) -> None:
        """Run ``factory()`` as task ``name`` and keep it running."""
        w = _Watched(name, factory, counters)
        self._watched[name] = w
        self._start(w)

    def finished(self, name: str) -> None:
        """Mark ``name`` as allowed to end (it finished its job, e.g. max_ticks reached)."""
        self._watched[name].finished = True

    def task(self, name: str) -> asyncio.Task[None] | None:
        return self._watched[name].task

    def forget(self, name: str) -> None:
        """Stop watching ``name`` (a lane that was removed); it is not restarted again."""
        w = self._watched.pop(name, None)
        if w is not None:
            w.finished = True

    def _start(self, w: _Watched) -> None:
        w.task = asyncio.get_running_loop().create_task(w.factory(), name=w.name)
        w.task.add_done_callback(partial(self._on_done, w))

    def _on_done(self, w: _Watched, task: asyncio.Task[None]) -> None:
        if self._stopping or w.finished or task is not w.task:
            return
        if task.cancelled():
            why = "was cancelled"
        elif (exc := task.exception()) is not None:
            why = f"died: {type(exc).__name__}: {exc}"
            logger.error("task %s died", w.name, exc_info=exc)
        else:
            why = "returned unexpectedly"
        now = time.monotonic()
        while w.restarts and now - w.restarts[0] > self.window:
            w.restarts.popleft()
        if len(w.restarts) >= self.restarts:
            self._stopping = True
            logger.error("task %s %s; restart budget (%d in %g s) exhausted",
                         w.name, why, self.restarts, self.window)
            self.on_budget_exceeded(RestartBudgetExceeded(w.name, self.restarts, self.window))
            return
        w.restarts.append(now)
        with self.counters.lock:
            self.counters.restarts += 1
            if w.counters is not None:
                w.counters.restarts += 1
        logger.warning("task %s %s; restarting it (%d/%d in %g s)",
                       w.name, why, len(w.restarts), self.restarts, self.window)
        self._start(w)

    async def stop(self, names: list[str] | None = None, timeout: float = 1.0) -> None:
        """Stop supervising and cancel the given tasks (all by default)."""
        self._stopping = True
        tasks = [w.task for n, w in self._watched.items()
                 if w.task is not None and (names is None or n in names)]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def pause(self) -> None:
        """Stop restarting tasks (shutdown has begun)."""
        self._stopping = True


class LoopMonitor:
    """A daemon thread that notices when the event loop stops turning."""

    def __init__(self, counters: ConveyorCounters, name: str, threshold: float) -> None:
        self.counters = counters
        self.name = name
        self.threshold = threshold
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._loop_thread_id = threading.get_ident()
        self._thread = threading.Thread(
            target=self._watch, name=f"aioconveyor[{name}].loop-monitor", daemon=True
        )

    async def heartbeat(self) -> None:
        """Runs in the loop: beat every quarter threshold."""
        self._loop_thread_id = threading.get_ident()
        self._thread.start()
        try:
            while True:
                self._beat = time.monotonic()
                await asyncio.sleep(self.threshold / 4)
        finally:
            self._stop.set()

    def _watch(self) -> None:
        blocked = False
        while not self._stop.wait(self.threshold / 4):
            silent = time.monotonic() - self._beat
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
