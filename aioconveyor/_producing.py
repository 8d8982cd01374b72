"""One producer at work: what its next tick is, and what one tick does.

A :class:`ProducerRun` never sleeps and never owns a task: the
:class:`~aioconveyor._scheduler.Scheduler` keeps every producer's next tick in one heap,
and runs :meth:`ProducerRun.tick` when it is due. The grid state (the last grid time
fired, an error backoff) lives here, so a producer never fires a grid time twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
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
from ._workers import (
    Caller,
    CallerBusy,
    consume,
    guarded,
    is_awaitable,
    slot_add,
    slot_discard,
)

__all__ = ["ProducerRun"]

logger = logging.getLogger("aioconveyor._scheduler")

#: What a run hands its results to: ``offer(data, tick, lanes)``.
Offer = Callable[[Any, Tick, Sequence[Lane]], Awaitable[None]]
#: The same without a task when it need not wait: None, or the rest to await.
OfferNow = Callable[[Any, Tick, Sequence[Lane]], Awaitable[None] | None]


class ProducerRun:
    """The state of one producer in a running conveyor."""

    __slots__ = ("_caller", "_consecutive_errors", "_last_missed", "_missing_burst", "_not_before",
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
        self._missing_burst = 0  # ticks missed since the burst began
        self._last_missed = 0.0  # when the last of them was noticed (clock.monotonic)

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
        """Count missed ticks; log the first of a burst, then reminders at doubling
        intervals (the shared limiter), and "back on schedule" only after a whole limiter
        window without a miss: a producer that overruns every other tick writes a few
        lines an hour, not two per tick."""
        now = self.clock.monotonic()
        if plan.missed:
            with self.totals.lock:
                self.counters.missed_ticks += plan.missed
            self._missing_burst += plan.missed
            self._last_missed = now
            self.limiter.log(
                logger, logging.WARNING, ("missed", self.settings.name),
                "%s: missed %d tick(s) before %s (producer overran, loop blocked "
                "or clock stepped; %d in this burst)", self.label, plan.missed,
                datetime.fromtimestamp(plan.event_time, UTC).isoformat(), self._missing_burst,
            )
        elif self._missing_burst and now - self._last_missed >= self.limiter.window:
            logger.info("%s: back on schedule after %d missed tick(s)", self.label,
                        self._missing_burst)
            self._missing_burst = 0

    # -- one tick --------------------------------------------------------------------

    @property
    def direct(self) -> bool:
        """Its ticks take one task, the call's own (:meth:`fire`): an async producer with
        no leader to ask first."""
        return self.leader is None and self._caller.is_async

    def _begin(self, plan: Plan, woke: float) -> Tick:
        """The tick for ``plan`` begins: counted (one locked section), and made."""
        self.last_event = event = plan.event_time
        counters = self.counters
        with self.totals.lock:
            index = counters.ticks
            counters.ticks += 1
            counters.last_tick_time = event
            counters.state = "running"
            self.totals.record_lateness(counters, max(0.0, woke - plan.fire_at))
        return Tick.make(index, event, plan.fire_at, woke, plan.missed, self.settings.name)

    def fire(self, plan: Plan, woke: float, offer_now: OfferNow,
             end: Callable[[ProducerRun, Awaitable[None] | None, bool], None],
             loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any] | None:
        """Start the tick for ``plan`` without a task of its own (:attr:`direct` runs):
        the call runs in its task, and what follows (counting, the fan-out) in its
        done-callback, which then calls ``end(run, rest, replan)``: ``rest`` is what of
        the fan-out still has to be awaited (a full lane with ``overflow="block"``),
        ``replan`` False if the call was cancelled from outside (the tick is abandoned).
        The same guarantees as :meth:`tick`. Returns the call's future, or None when no
        call was started (the tick is over, ``end`` not called). ``loop``: the running
        loop (looked up once by the caller: each look-up costs a system call)."""
        tick = self._begin(plan, woke)
        try:
            call = self._caller.start(tick, tick.event_time, loop=loop)
        except CallerBusy as busy:
            self._busy(busy, tick)
            return None
        _DirectCall(self, tick, call, offer_now, end, loop)
        return call

    async def tick(self, plan: Plan, woke: float, offer: Offer) -> None:
        """Run the tick for ``plan`` (woken at ``woke``): lead, produce, offer the result."""
        tick = self._begin(plan, woke)
        counters = self.counters
        if self.leader is not None and not await self._lead(tick):
            with self.totals.lock:
                counters.standby_ticks += 1
            return
        try:
            returned, result = await self._call(tick)
        except CallerBusy as busy:
            self._busy(busy, tick)
            return
        except Exception as exc:
            self._failed(exc, tick)
            return
        if returned and self._produced(result):
            await offer(result, tick, self.lanes)  # even when removed meanwhile: it was made

    def _produced(self, result: Any) -> bool:
        """Count a call's result; True if there is something to offer."""
        self._consecutive_errors = 0
        with self.totals.lock:
            self.counters.failing_since = None
            if result is None:
                self.counters.empty += 1
                return False
            self.counters.produced += 1
        return True

    def _busy(self, busy: CallerBusy, tick: Tick) -> None:
        with self.totals.lock:
            self.counters.skipped += 1
            self.counters.state = "hung"
        self.limiter.log(
            logger, logging.ERROR, (self.settings.name, "busy"),
            "%s: producer still running since its timeout %.0f s ago; tick %s "
            "skipped (no second call is started while one hangs)", self.label,
            self.clock.monotonic() - busy.since, tick.event_time.isoformat(),
        )

    def _timed_out(self, tick: Tick, hung: bool) -> None:
        limit = self.settings.timeout
        with self.totals.lock:
            self.counters.timeouts += 1
            if hung:
                self.counters.state = "hung"
        more = " (still running: no new call until it returns)" if hung else ""
        self._failed(TimeoutError(f"producer did not return within {limit:g} s{more}"), tick)

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

    async def _call(self, tick: Tick) -> tuple[bool, Any]:
        """Call the producer: ``(True, its result)``, or ``(False, None)`` when it timed
        out (counted as such)."""
        caller, limit = self._caller, self.settings.timeout
        future = await caller.call(tick, tick.event_time, timeout=limit)
        if future is None:
            self._timed_out(tick, hung=caller.hung is not None)
            return False, None
        return True, await caller.result(future, limit)

    def _failed(self, exc: Exception, tick: Tick) -> None:
        original = exc.original if isinstance(exc, ContainedError) else exc
        with self.totals.lock:
            self.counters.errors += 1
            self.counters.last_error = f"{type(original).__name__}: {original}"
            self.counters.last_error_time = now = self.clock.time()
            if self.counters.failing_since is None:
                self.counters.failing_since = now
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


class _DirectCall:
    """One call of a :attr:`~ProducerRun.direct` run, seen through to its end: its
    timeout (a timer shared per slot, see ``_workers.TIMEOUT_GRAIN``), then its result,
    from its done-callback (as :meth:`Caller.call` and :meth:`ProducerRun.tick` would)."""

    __slots__ = ("call", "end", "grace", "key", "loop", "offer_now", "run", "tick",
                 "timed_out")

    def __init__(self, run: ProducerRun, tick: Tick, call: asyncio.Future[Any],
                 offer_now: OfferNow,
                 end: Callable[[ProducerRun, Awaitable[None] | None, bool], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.run, self.tick, self.call, self.offer_now, self.end = run, tick, call, offer_now, end
        self.loop = loop
        self.timed_out = False
        self.grace: Any = None  # the cancelled call's time to end, after its timeout
        limit = run.settings.timeout
        self.key = slot_add(run.clock, limit, self, loop) if 0 < limit < math.inf else None
        call.add_done_callback(self._done)

    def expire(self) -> None:
        """The timeout: cancel the call, and give it ``Caller.CANCEL_GRACE`` to end."""
        if asyncio._get_running_loop() is not self.loop:  # a fake clock's advance() outside
            self.loop.call_soon(self.expire)  # the loop
            return
        self.key = None
        if self.call.done() or self.timed_out:
            return
        self.timed_out = True
        self.call.cancel()
        self.grace = self.run.clock.call_later(Caller.CANCEL_GRACE, self._hung)

    def _hung(self) -> None:
        """Still running after its grace: hung. Ticks are skipped until it returns."""
        if self.call.done():  # its done-callback is on its way
            return
        self.grace = None
        caller = self.run._caller
        caller.hung = self.call  # busy_since stays: health sees how long it is stuck
        self.call.add_done_callback(consume)
        self._finish(lambda: self.run._timed_out(self.tick, hung=True))

    def _done(self, call: asyncio.Future[Any]) -> None:
        if self.key is not None:
            slot_discard(self.key, self)
            self.key = None
        if self.timed_out:
            if self.grace is None:  # a hung call that returned at last: nothing to do
                return
            self.grace.cancel()
            self.grace = None
            self.run._caller.busy_since = None
            consume(call)
            self._finish(lambda: self.run._timed_out(self.tick, hung=False))
            return
        self.run._caller.busy_since = None
        if call.cancelled():  # from outside (a stop, a removal): the tick is abandoned
            self.end(self.run, None, False)
            return
        self._finish(self._settle)

    def _settle(self) -> Awaitable[None] | None:
        run, call = self.run, self.call
        exc = call.exception()
        if exc is not None:
            run._failed(exc if isinstance(exc, Exception) else ContainedError(exc), self.tick)
            return None
        result = call.result()
        if is_awaitable(result):  # an async producer that returned an awaitable
            return self._resolve(result)
        if run._produced(result):
            return self.offer_now(result, self.tick, run.lanes)
        return None

    async def _resolve(self, awaitable: Any) -> None:
        run = self.run
        try:
            result = await run._caller.resolve(awaitable, run.settings.timeout)
        except Exception as exc:
            run._failed(exc, self.tick)
            return
        if run._produced(result):
            rest = self.offer_now(result, self.tick, run.lanes)
            if rest is not None:
                await rest

    def _finish(self, step: Callable[[], Awaitable[None] | None]) -> None:
        rest = None
        try:
            rest = step()
        except BaseException:  # ours, or a Schedule's maths (for a backoff): the producer
            # goes on, as a tick task's failure would
            logger.exception("%s: tick failed", self.run.label)
        self.end(self.run, rest, True)
