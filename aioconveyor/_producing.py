"""One producer at work: what its next tick is, and what one tick does.

A :class:`ProducerRun` never sleeps and never owns a task: the
:class:`~aioconveyor._scheduler.Scheduler` keeps every producer's next tick in one heap,
and runs :meth:`ProducerRun.tick` when it is due. The grid state (the last grid time
fired, an error backoff) lives here, so a producer never fires a grid time twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ._clock import Clock, timeout
from ._errors import ContainedError
from ._lanes import Lane
from ._leader import Leader
from ._logs import LogLimiter
from ._producer import ProducerSettings
from ._schedule import Plan
from ._stats import ConveyorCounters, ProducerCounters
from ._tick import Tick
from ._workers import Caller, CallerBusy, guarded

__all__ = ["ProducerRun"]

logger = logging.getLogger("aioconveyor._scheduler")

#: What a run hands its results to: ``offer(data, tick, lanes)``.
Offer = Callable[[Any, Tick, Sequence[Lane]], Awaitable[None]]


class ProducerRun:
    """The state of one producer in a running conveyor."""

    __slots__ = ("_caller", "_consecutive_errors", "_missing_burst", "_not_before",
                 "clock", "conveyor", "counters", "lanes", "last_event", "leader", "limiter",
                 "removed", "settings", "totals")

    def __init__(self, settings: ProducerSettings, counters: ProducerCounters,
                 totals: ConveyorCounters, clock: Clock, *, conveyor: str,
                 lanes: Sequence[Lane], limiter: LogLimiter,
                 leader: Leader | None = None, last_event: float | None = None) -> None:
        self.settings = settings
        self.counters = counters
        self.totals = totals
        self.clock = clock
        self.conveyor = conveyor
        self.lanes = lanes  # the lanes it feeds (the engine's own list when it feeds all)
        self.limiter = limiter
        self.leader = leader
        self.last_event = last_event
        self.removed = False
        self._caller = Caller(settings.fn, f"aioconveyor[{conveyor}].producer[{settings.name}]",
                              clock)
        self._consecutive_errors = 0
        self._not_before: float | None = None
        self._missing_burst = 0

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def label(self) -> str:
        """How logs name it: the conveyor, and the producer when they differ."""
        if self.settings.name == self.conveyor:
            return f"conveyor {self.conveyor}"
        return f"conveyor {self.conveyor} producer {self.settings.name}"

    @property
    def finished(self) -> bool:
        limit = self.settings.max_ticks
        return limit is not None and self.counters.ticks >= limit

    # -- planning --------------------------------------------------------------------

    def next_plan(self, now: float) -> Plan | None:
        """The next tick to fire, or ``None`` once ``max_ticks`` is reached."""
        if self.finished:
            with self.totals.lock:
                self.counters.state = "finished"
            return None
        plan = self.settings.planner.plan(self.last_event, now, self._not_before)
        self._not_before = None
        self._note_missed(plan)
        with self.totals.lock:
            self.counters.next_tick_time = plan.event_time
            self.counters.state = "hung" if self.hung else "waiting"
        return plan

    @property
    def hung(self) -> bool:
        """A call past its timeout is still running (ticks are skipped until it returns)."""
        hung = self._caller.hung
        return hung is not None and not hung.done()

    def too_late(self, plan: Plan, woke: float) -> bool:
        return self.settings.planner.too_late(plan, woke)

    def _note_missed(self, plan: Plan) -> None:
        if plan.missed:
            with self.totals.lock:
                self.counters.missed_ticks += plan.missed
            self._missing_burst += plan.missed
            if self._missing_burst == plan.missed:  # first miss of a burst
                logger.warning(
                    "%s: missed %d tick(s) before %s (producer overran, loop blocked "
                    "or clock stepped)", self.label, plan.missed,
                    datetime.fromtimestamp(plan.event_time, UTC).isoformat(),
                )
        elif self._missing_burst:
            logger.info("%s: back on schedule after %d missed tick(s)", self.label,
                        self._missing_burst)
            self._missing_burst = 0

    # -- one tick --------------------------------------------------------------------

    async def tick(self, plan: Plan, woke: float, offer: Offer) -> None:
        """Run the tick for ``plan`` (woken at ``woke``): lead, produce, offer the result."""
        self.last_event = plan.event_time
        counters = self.counters
        with self.totals.lock:
            index = counters.ticks
            counters.ticks += 1
            counters.last_tick_time = plan.event_time
            counters.state = "running"
            self.totals.record_lateness(counters, max(0.0, woke - plan.fire_at))
        tick = Tick.make(index, plan.event_time, plan.fire_at, woke, plan.missed,
                         self.settings.name)
        if self.leader is not None and not await self._lead(tick):
            with self.totals.lock:
                counters.standby_ticks += 1
            return
        try:
            result = await self._call(tick)
        except CallerBusy as busy:
            with self.totals.lock:
                counters.skipped += 1
                counters.state = "hung"
            self.limiter.log(
                logger, logging.ERROR, (self.settings.name, "busy"),
                "%s: producer still running since its timeout %.0f s ago; tick %s "
                "skipped (no second call is started while one hangs)", self.label,
                self.clock.monotonic() - busy.since, tick.event_time.isoformat(),
            )
            return
        except Exception as exc:
            self._failed(exc, tick)
            return
        self._consecutive_errors = 0
        if result is None:
            with self.totals.lock:
                counters.empty += 1
            return
        with self.totals.lock:
            counters.produced += 1
        await offer(result, tick, self.lanes)  # even when removed meanwhile: it was made

    async def _lead(self, tick: Tick) -> bool:
        """Ask the leader backend whether to produce this tick; doubt means no."""
        assert self.leader is not None
        leader, key = self.leader, self.settings.leader_key
        try:
            grace = self.settings.planner.grace(tick.event_time.timestamp())
            async with timeout(self.clock, grace):
                asked = (leader.lead(tick.event_time) if key is None
                         else leader.lead(tick.event_time, key=key))
                leading = bool(await guarded(asked))
        except Exception as exc:
            self.limiter.log(
                logger, logging.WARNING, (self.settings.name, "leader"),
                "%s: leader check failed on tick %s (standing by): %s: %s",
                self.label, tick.event_time.isoformat(), type(exc).__name__, exc, exc=exc,
            )
            leading, role = False, "unknown"
        else:
            role = "leader" if leading else "standby"
        with self.totals.lock:
            self.counters.leader_role = role
            self.totals.leader_role = leader.role
            self.totals.leader_since = leader.since
            self.totals.takeovers = leader.takeovers
        return leading

    async def _call(self, tick: Tick) -> Any:
        caller, limit = self._caller, self.settings.timeout
        future = await caller.call(tick, tick.event_time, timeout=limit)
        if future is None:
            with self.totals.lock:
                self.counters.timeouts += 1
                if caller.hung:
                    self.counters.state = "hung"
            hung = " (still running: no new call until it returns)" if caller.hung else ""
            raise TimeoutError(f"producer did not return within {limit:g} s{hung}")
        return await caller.result(future, limit)

    def _failed(self, exc: Exception, tick: Tick) -> None:
        original = exc.original if isinstance(exc, ContainedError) else exc
        with self.totals.lock:
            self.counters.errors += 1
            self.counters.last_error = f"{type(original).__name__}: {original}"
            self.counters.last_error_time = self.clock.time()
        self._consecutive_errors += 1
        self.limiter.log(
            logger, logging.ERROR, (self.settings.name, type(original).__qualname__),
            "%s: producer failed on tick %s: %s: %s",
            self.label, tick.event_time.isoformat(), type(original).__name__, original,
            exc=exc,
        )
        backoff = self.settings.error_backoff
        if backoff is not None:
            planner = self.settings.planner
            period = planner.period(tick.event_time.timestamp())
            delay = min(backoff, period * 2 ** (self._consecutive_errors - 1))
            if delay > period:
                self._not_before = tick.event_time.timestamp() + delay

    def close(self) -> None:
        self._caller.close()
