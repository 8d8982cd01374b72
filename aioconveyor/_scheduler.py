"""The tick loop: plan, sleep, run the producer, hand the result to the fan-out.

It never does time arithmetic itself: :class:`~aioconveyor._schedule.Planner` says when,
the :class:`~aioconveyor.Clock` sleeps, the producer runs, :class:`Fanout` delivers.
Its state (the last grid time fired) lives on the object, so a restarted scheduler task
continues on the same grid and never fires a grid time twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ._clock import Clock, timeout
from ._errors import ContainedError
from ._fanout import Fanout
from ._leader import Leader
from ._logs import LogLimiter
from ._schedule import Plan, Planner
from ._stats import ConveyorCounters
from ._tick import Tick
from ._workers import Caller, CallerBusy, guarded

__all__ = ["Scheduler"]

logger = logging.getLogger(__name__)

#: A change of (wall - monotonic) bigger than this between two looks is a clock step.
JUMP_THRESHOLD = 0.5


class Scheduler:
    """Calls the producer on the schedule, one call at a time, and fans out the results."""

    def __init__(
        self,
        produce: Callable[..., Any],
        planner: Planner,
        clock: Clock,
        fanout: Fanout,
        counters: ConveyorCounters,
        *,
        name: str,
        producer_timeout: float,
        error_backoff: float | None,
        max_ticks: int | None,
        on_finished: Callable[[], None],
        leader: Leader | None = None,
    ) -> None:
        self.produce = produce
        self.planner = planner
        self.clock = clock
        self.fanout = fanout
        self.counters = counters
        self.name = name
        self.producer_timeout = producer_timeout
        self.error_backoff = error_backoff
        self.max_ticks = max_ticks
        self.on_finished = on_finished
        self.leader = leader
        self.last_event: float | None = None
        self._caller = Caller(produce, f"aioconveyor[{name}].producer", clock)
        self._consecutive_errors = 0
        self._not_before: float | None = None
        self._clock_offset: float | None = None
        self._limiter = LogLimiter(now=clock.monotonic)
        self._missing_burst = 0

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        while self.max_ticks is None or self.counters.ticks < self.max_ticks:
            plan = self.planner.plan(self.last_event, self.clock.time(), self._not_before)
            self._not_before = None
            self._note_missed(plan)
            with self.counters.lock:
                self.counters.next_tick_time = plan.event_time
            await self.clock.sleep_until(plan.fire_at)
            woke = self.clock.time()
            self._check_clock_step()
            if self.planner.too_late(plan, woke):
                continue  # slept through it (blocked loop, suspend, clock step): plan again
            self.last_event = plan.event_time
            await self._tick(plan, woke)
        self.on_finished()

    def _note_missed(self, plan: Plan) -> None:
        if plan.missed:
            with self.counters.lock:
                self.counters.missed_ticks += plan.missed
            self._missing_burst += plan.missed
            if self._missing_burst == plan.missed:  # first miss of a burst
                logger.warning(
                    "conveyor %s: missed %d tick(s) before %s (producer overran, loop blocked "
                    "or clock stepped)", self.name, plan.missed,
                    datetime.fromtimestamp(plan.event_time, UTC).isoformat(),
                )
        elif self._missing_burst:
            logger.info("conveyor %s: back on schedule after %d missed tick(s)",
                        self.name, self._missing_burst)
            self._missing_burst = 0

    def _check_clock_step(self) -> None:
        offset = self.clock.time() - self.clock.monotonic()
        previous, self._clock_offset = self._clock_offset, offset
        if previous is not None and abs(offset - previous) > JUMP_THRESHOLD:
            with self.counters.lock:
                self.counters.clock_jumps += 1
            logger.warning("conveyor %s: wall clock stepped by %+.3f s; staying on the grid",
                           self.name, offset - previous)

    # -- one tick --------------------------------------------------------------------

    async def _tick(self, plan: Plan, woke: float) -> None:
        with self.counters.lock:
            index = self.counters.ticks
            self.counters.ticks += 1
            self.counters.last_tick_time = plan.event_time
            self.counters.record_lateness(max(0.0, woke - plan.fire_at))
        tick = Tick.make(index, plan.event_time, plan.fire_at, woke, plan.missed)
        if self.leader is not None and not await self._lead(tick):
            with self.counters.lock:
                self.counters.standby_ticks += 1
            return
        try:
            result = await self._call_producer(tick)
        except CallerBusy as busy:
            with self.counters.lock:
                self.counters.producer_skipped += 1
            self._limiter.log(
                logger, logging.ERROR, "busy",
                "conveyor %s: producer still running since its timeout %.0f s ago; tick %s "
                "skipped (no second call is started while one hangs)", self.name,
                self.clock.monotonic() - busy.since, tick.event_time.isoformat(),
            )
            return
        except Exception as exc:
            self._producer_failed(exc, tick)
            return
        self._consecutive_errors = 0
        if result is None:
            with self.counters.lock:
                self.counters.empty += 1
            return
        with self.counters.lock:
            self.counters.produced += 1
        await self.fanout.offer(result, tick)

    async def _lead(self, tick: Tick) -> bool:
        """Ask the leader backend whether to produce this tick; doubt means no."""
        assert self.leader is not None
        leader = self.leader
        try:
            async with timeout(self.clock, self.planner.grace(tick.event_time.timestamp())):
                leading = await guarded(leader.lead(tick.event_time))
        except Exception as exc:
            self._limiter.log(
                logger, logging.WARNING, "leader",
                "conveyor %s: leader check failed on tick %s (standing by): %s: %s",
                self.name, tick.event_time.isoformat(), type(exc).__name__, exc, exc=exc,
            )
            leading = False
        with self.counters.lock:
            self.counters.leader_role = leader.role
            self.counters.leader_since = leader.since
            self.counters.takeovers = leader.takeovers
        return bool(leading)

    async def _call_producer(self, tick: Tick) -> Any:
        future = await self._caller.call(tick, tick.event_time, timeout=self.producer_timeout)
        if future is None:
            with self.counters.lock:
                self.counters.producer_timeouts += 1
            hung = " (still running: no new call until it returns)" if self._caller.hung else ""
            raise TimeoutError(
                f"producer did not return within {self.producer_timeout:g} s{hung}"
            )
        return await self._caller.result(future, self.producer_timeout)

    def _producer_failed(self, exc: Exception, tick: Tick) -> None:
        with self.counters.lock:
            self.counters.producer_errors += 1
        self._consecutive_errors += 1
        original = exc.original if isinstance(exc, ContainedError) else exc
        self._limiter.log(
            logger, logging.ERROR, type(original).__qualname__,
            "conveyor %s: producer failed on tick %s: %s: %s",
            self.name, tick.event_time.isoformat(), type(original).__name__, exc, exc=exc,
        )
        if self.error_backoff is not None:
            period = self.planner.period(tick.event_time.timestamp())
            delay = min(self.error_backoff, period * 2 ** (self._consecutive_errors - 1))
            if delay > period:
                self._not_before = tick.event_time.timestamp() + delay

    def close(self) -> None:
        self._caller.close()
