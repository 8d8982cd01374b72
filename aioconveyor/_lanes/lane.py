"""A lane: one consumer's queue, delivered in order on a task of its own.

The lane only orchestrates: it opens the consumer (retrying while it fails, with items
queuing meanwhile), takes entries from its :class:`~.queue.LaneQueue`, makes the payload
(copies from the :class:`~.copier.Copier`), asks :class:`~.delivery.Delivery` for an
outcome, and settles the entries in the :class:`~.ledger.Ledger` accordingly. It never
computes grid times.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from .._clock import Clock, wait_done
from .._consumer import Batch, LaneSettings, Record
from .._errors import RetryAfter
from .._logs import LogLimiter
from .._secrets import mask_text, masked_error
from .._tick import Tick
from .._workers import Caller, call_in_loop
from .copier import Copier
from .delivery import DELIVERED, Attempt, Delivery, Later, Outcome
from .hooks import Hooks
from .ledger import Ledger, Place
from .queue import Entry, LaneQueue

if TYPE_CHECKING:
    from .._spool import Spool

__all__ = ["Lane", "LaneState"]

logger = logging.getLogger("aioconveyor._lanes")

#: What :meth:`Lane._payload_here` returns when the payload takes an await.
_LATER: Any = object()

_QUEUED = int(Place.QUEUED)

#: An ``open()`` gets at least this long (seconds) before it counts as failed.
MIN_OPEN_TIMEOUT = 30.0


class LaneState(enum.StrEnum):
    CONNECTING = "connecting"
    OPEN = "open"
    QUARANTINED = "quarantined"
    CLOSED = "closed"


class Lane:
    """Delivers one consumer's items, in order, on a task of its own."""

    def __init__(self, settings: LaneSettings, ledger: Ledger, *, conveyor: str, clock: Clock,
                 copier: Copier, rng: random.Random | None = None, seed: str | None = None,
                 generation: int = 1) -> None:
        """``rng`` (or one made from ``seed`` the first time a backoff is jittered) draws
        the backoff jitter."""
        self.settings = settings
        self.ledger = ledger
        self.clock = clock
        self.generation = generation  # > 1 for a lane that replaced another of its name
        suffix = f"@{generation}" if generation > 1 else ""
        self.task_name = f"aioconveyor[{conveyor}].lane[{settings.name}]{suffix}"
        self.state = LaneState.CONNECTING
        self._limiter = LogLimiter(now=clock.monotonic)
        spool: Spool | None = None
        if settings.spool is not None:  # sqlite3 and the codecs load only for a spool
            from .._spool import Spool

            spool = Spool(settings.spool, settings.name, format=settings.spool_format)
        self.queue = LaneQueue(settings.name, settings.queue_size, settings.overflow, ledger,
                               clock, self._limiter, spool)
        self._caller = Caller(settings.fn, self.task_name, clock)
        self.delivery = Delivery(settings, self._caller, ledger, clock, rng, self._limiter,
                                 seed=seed)
        self.hooks = (None if settings.on_delivered is None and settings.on_error is None
                      else Hooks(settings.name, self.task_name, settings.timeout, ledger, clock,
                                 self._limiter, on_delivered=settings.on_delivered,
                                 on_error=settings.on_error))
        self._copier = copier
        self._copy_cost: float | None = None  # seconds the last copy took
        self._open_failures = 0
        self._closing = False
        self._drain_deadline = math.inf
        self._successor: Lane | None = None  # the lane that replaced this one
        self._nap: asyncio.Future[None] | None = None  # a retry wait that may be cut short
        self._flight: list[Entry] | None = None  # the batch being delivered, until settled
        # one item per call to an async consumer, no spool, no hooks: each item is first
        # tried by _deliver_now(), without a coroutine or a list of its own
        self._fast = (not settings.batching and self._caller.is_async and self.hooks is None
                      and spool is None)
        ledger.live = self  # a reference, not a closure: one object less per lane
        ledger.set_state(self.state)

    @property
    def name(self) -> str:
        return self.settings.name

    # -- read by the ledger's snapshots (any thread) ----------------------------------

    def busy_since(self) -> float | None:
        return self._caller.busy_since

    def oldest_queued(self) -> float | None:
        return self.queue.oldest()

    def spooled(self) -> int:
        return self.queue.spooled

    def _set_state(self, state: LaneState) -> None:
        self.state = state
        self.ledger.set_state(state)

    # -- arriving --------------------------------------------------------------------

    def put(self, data: Any, tick: Tick, wake: bool = True) -> asyncio.Future[None] | None:
        """Queue ``data`` (shared, not yet copied); a future only when it must wait for
        room (``overflow="block"``). ``wake=False``: the caller wakes the lane later
        (``lane.queue.wake()``). The fan-out calls ``lane.queue.put`` itself (one call
        less per item per lane): a quarantined lane's queue refuses what arrives."""
        return self.queue.put(data, tick, wake)

    # -- opening and closing ---------------------------------------------------------

    def recover(self, recover: bool = True) -> None:
        """Open the spool (if any) and queue what an earlier run left in it; raises if the
        file cannot be used (a setting to fix, not a passing fault)."""
        if self.queue.spool is None:
            return
        if recover:
            self.queue.recover()
        else:  # the lane this one replaces is still delivering those
            self.queue.spool.open()

    @property
    def _open_timeout(self) -> float:
        return max(self.settings.timeout, MIN_OPEN_TIMEOUT)

    async def open(self) -> None:
        """Call the consumer's ``open()`` (or ``__aenter__``) once; raises what it raised."""
        fn = self.settings.fn
        opener = getattr(fn, "open", None)
        if opener is None and hasattr(fn, "__aenter__"):
            opener = fn.__aenter__
        if opener is not None:
            await call_in_loop(opener, self.clock, self._open_timeout)
        self._set_state(LaneState.OPEN)

    async def try_open(self) -> BaseException | None:
        """:meth:`open`, counting and logging a failure (once per burst); the error."""
        try:
            await self.open()
        except Exception as exc:
            self._open_failures += 1
            self.ledger.bump("open_errors")
            text, attached = masked_error(exc)
            self.ledger.error(f"open() failed: {type(exc).__name__}: {mask_text(str(exc))}")
            self._limiter.log(
                logger, logging.WARNING, "open",
                "consumer %s: open() failed (%s: %s); %d item(s) waiting, retrying with "
                "backoff", self.name, type(exc).__name__, text, len(self.queue),
                exc=attached,
            )
            return exc
        if self._open_failures:
            logger.info("consumer %s: open after %d failed attempt(s); delivering %d queued "
                        "item(s)", self.name, self._open_failures, len(self.queue))
        return None

    async def _connect(self) -> bool:
        """Retry ``open()`` with capped backoff until it works (True) or the lane closes."""
        while self.state is LaneState.CONNECTING:
            if self._open_failures:
                await self._sleep(self.delivery.backoff(self._open_failures))
            if self._closing or self._successor is not None:
                return False
            await self.try_open()
        return self.state is LaneState.OPEN

    async def close(self, budget: float) -> None:
        """Close the consumer (if it was opened) within ``budget`` seconds; never raises."""
        fn = self.settings.fn
        closer = None
        if self.state is LaneState.OPEN or self.state is LaneState.QUARANTINED:
            if hasattr(fn, "close") and hasattr(fn, "open"):
                closer = fn.close
            elif hasattr(fn, "__aexit__"):
                def closer() -> Any:
                    return fn.__aexit__(None, None, None)
        try:
            if closer is not None:
                await call_in_loop(closer, self.clock, max(budget, 0.01))
        except Exception:
            logger.exception("consumer %s: close failed", self.name)
        finally:
            self._caller.close()
            if self.hooks is not None:
                self.hooks.close()
            if self.queue.spool is not None:
                self.queue.spool.close()
            if self.state is not LaneState.QUARANTINED:
                self._set_state(LaneState.CLOSED)

    def exhausted(self, exc: BaseException) -> None:
        """Its task died too often (the supervisor's restart budget): quarantined."""
        self.quarantine(str(exc))

    def restarted(self) -> None:
        """Its task died and was started again."""
        self.ledger.bump("restarts")

    def quarantine(self, why: str) -> None:
        """Stop delivering for good: what is queued and what arrives counts as failed."""
        self._set_state(LaneState.QUARANTINED)
        self.queue.refuse("quarantined")
        n = self.queue.clear(Place.FAILED, f"quarantined: {why}")
        self.ledger.outcome(False)
        logger.error("consumer %s quarantined (%s); %d queued item(s) failed, and so will "
                     "every new one until the conveyor restarts", self.name, why, n)

    def begin_drain(self, deadline: float) -> None:
        """Finish what is queued (until ``deadline``, clock.monotonic()), then end :meth:`run`."""
        self._closing = True
        self._drain_deadline = deadline
        self.queue.wake()
        if self.state is LaneState.CONNECTING:
            self._wake()  # stop retrying open(); a delivery's retry wait runs its course

    def hand_over(self, successor: Lane) -> int:
        """Move everything queued here (not the batch in flight) to the front of
        ``successor``'s queue, oldest first; returns how many items moved.

        From now on a batch this lane would give up on (its call failing, or the drain
        deadline) goes to ``successor`` too, instead of being retried or dropped.
        """
        self._successor = successor
        self._wake()
        moved = self.queue.take_all()
        successor.queue.adopt(moved, Place.QUEUED, self.queue)
        return len(moved)

    def drop_remaining(self, why: str) -> int:
        """Give up on everything still queued (after the drain deadline): dropped, logged.

        A batch still in flight now is held by a call that ignored its cancellation (the
        lane's task was cancelled and did not end): given up on too, as the cancellation
        would have."""
        flight = self._flight
        if flight is not None:
            self._flight = None
            self._give_up(flight, "stop deadline reached")
        return self.queue.clear(Place.DROPPED, why)

    # -- delivering ------------------------------------------------------------------

    async def run(self) -> None:
        """The lane's task: open if needed, then take, deliver, repeat, until drained."""
        if self.state is LaneState.CONNECTING and not await self._connect():
            return
        q = self.queue
        items = q.entries  # tested directly: this loop runs once per item per consumer
        one = not self.settings.batching  # one item per call: taken without _take()
        fast = self._fast
        loop = asyncio.get_running_loop()  # once: each look-up is a system call (getpid)
        while True:
            # an idle lane waits here, on the queue's future itself (see LaneQueue.arrival):
            # the interval long, and nothing of the last delivery is kept meanwhile
            while not items and not self._closing:
                await q.arrival(loop)
            if fast and items:
                rest = self._deliver_now()
                if rest is not None:
                    await rest
                    del rest
                continue
            if one and items:
                entries = q.take(1)
            else:
                taken = await self._take()
                if taken is None:
                    return
                entries = taken
            await self._deliver(entries)
            del entries

    async def _take(self) -> list[Entry] | None:
        q = self.queue
        s = self.settings
        while True:
            while not len(q):
                if self._closing:
                    return None
                await q.wait()
            if s.batching and s.batch_age > 0:
                oldest = q.oldest()
                deadline = (self.clock.monotonic() if oldest is None else oldest) + s.batch_age
                while len(q) < s.batch_size and not self._closing:
                    remaining = deadline - self.clock.monotonic()
                    if remaining <= 0:
                        break
                    await q.wait(remaining)
            if len(q):  # a hand-over may have taken it all while the batch was collecting
                return q.take(s.batch_size)

    def _payload_here(self, entries: list[Entry]) -> Any:
        """The payload of a single item made without awaiting (no copy, or a cheap one
        made here); :data:`_LATER` when it takes :meth:`_payload` (a batch, a copy for
        the copier's thread)."""
        s = self.settings
        if s.batch_size > 1:
            return _LATER
        data = entries[0].data
        if not s.copy:
            return data
        made = self._copier.copy_here(data, self._copy_cost)
        if made is None:
            return _LATER
        data, self._copy_cost = made
        return data

    async def _payload(self, entries: list[Entry]) -> Any:
        s = self.settings
        if not s.batching:
            data = entries[0].data
            if not s.copy:
                return data
            data, self._copy_cost = await self._copier.copy(data, self._copy_cost)
            return data
        values = [e.data for e in entries]
        if s.copy:
            values, self._copy_cost = await self._copier.copy(values, self._copy_cost)
        return Batch(Record(v, e.tick.event_time, e.tick)
                     for v, e in zip(values, entries, strict=True))

    def _deliver_now(self) -> Coroutine[Any, Any, None] | None:
        """Deliver the oldest queued item (a lane with ``_fast`` set) within this step of
        the loop, as most deliveries go: None once it is settled; else the coroutine
        that sees it through (to await at once), its first attempt already begun.

        What :meth:`_deliver` does for one item, without its coroutine, its list and two
        of its three ledger sections: the cheap copy (:meth:`Copier.copy_here`) and the
        consumer's first step (:meth:`Delivery.attempt_now`) are made while the item is
        still counted as queued, and a call that returns at once moves it from queued to
        delivered in one section. Nothing else of the loop runs in between, so no code
        of the lane or the engine can see the item outside its place. Everything else (a
        copy for the thread, a call that suspends, fails or is rejected) moves it to in
        flight first and goes on in :meth:`_deliver`, exactly as if it had begun there.
        """
        entry = self.queue.take_now()
        handed = False
        try:
            data = entry.data
            if self.settings.copy:
                try:
                    made = self._copier.copy_here(data, self._copy_cost)
                except Exception as exc:  # an uncopyable object must not stop the lane
                    handed = True
                    self._uncopyable(self._in_flight(entry), exc)
                    return None
                if made is None:  # a copy for the copier's thread
                    handed = True
                    return self._deliver(self._in_flight(entry))
                data, self._copy_cost = made
            began = self.delivery.attempt_now(data, 1, entry.tick, 0)
            handed = True
            if began is DELIVERED:
                self.ledger.settled(1, 0, _QUEUED)
                return None
            return self._deliver(self._in_flight(entry), data, began)
        except BaseException:
            if not handed:  # still counted as queued: back where it was
                self.queue.push_front([entry], Place.QUEUED)
            raise

    def _in_flight(self, entry: Entry) -> list[Entry]:
        """``entry`` (taken by :meth:`_deliver_now`) moved to in flight, as a batch."""
        entries = [entry]
        self.ledger.move(1, Place.QUEUED, Place.IN_FLIGHT)
        self._flight = entries
        return entries

    def _uncopyable(self, entries: list[Entry], exc: Exception) -> None:
        """The payload of ``entries`` (in flight) cannot be copied: logged, dropped."""
        self._limiter.log(
            logger, logging.ERROR, "copy",
            "consumer %s: cannot deep-copy %s (set copy=False for this consumer): "
            "%s: %s", self.name, type(entries[-1].data).__name__, type(exc).__name__, exc,
            exc=exc,
        )
        if self._ours(entries):
            self.queue.forget(entries)
            self.ledger.move(len(entries), Place.IN_FLIGHT, Place.DROPPED)

    async def _deliver(self, entries: list[Entry], payload: Any = _LATER,
                       began: Attempt | Later | None = None) -> None:
        """Deliver ``entries`` (in flight); ``payload`` and ``began``: the payload made
        and the first attempt begun (:meth:`Delivery.attempt_now`) by
        :meth:`_deliver_now`."""
        n = len(entries)
        last = entries[-1]
        self._flight = entries
        try:
            try:
                if payload is _LATER:
                    payload = self._payload_here(entries)
                    if payload is _LATER:
                        payload = await self._payload(entries)
            except Exception as exc:  # an uncopyable object must not stop the lane
                self._uncopyable(entries, exc)
                return
            retries = 0
            delivery = self.delivery
            now = self._caller.is_async  # the call's first step without a coroutine
            while True:
                if began is not None:
                    result = (began if isinstance(began, Attempt)
                              else await delivery.attempt(payload, n, last.tick, retries,
                                                          later=began))
                    began = None
                elif now:
                    step = delivery.attempt_now(payload, n, last.tick, retries)
                    result = (step if isinstance(step, Attempt)
                              else await delivery.attempt(payload, n, last.tick, retries,
                                                          later=step))
                else:
                    result = await delivery.attempt(payload, n, last.tick, retries)
                if self._flight is not entries:  # given up on while its call hung
                    return
                if result.outcome is not Outcome.RETRY:
                    self._flight = None
                    self._settle(entries, result)
                    break
                if (self._successor is not None
                        or self.clock.monotonic() + result.delay > self._drain_deadline):
                    break
                await self._sleep(result.delay)
                if self._successor is not None:
                    break
                if not isinstance(result.error, RetryAfter):
                    retries += 1
                self.ledger.bump("retries")
            if self._ours(entries):
                self._give_up(entries, "stopping before a retry")
                return
        except asyncio.CancelledError:
            if self._ours(entries):
                self._give_up(entries, "stop deadline reached")
            raise
        except BaseException:
            if self._ours(entries):  # the lane itself failed: its supervisor restarts it
                self.queue.push_front(entries)
            raise
        if self.hooks is not None:
            await self._after(result, payload, last.tick)

    def _ours(self, entries: list[Entry]) -> bool:
        """True (once) while ``entries`` are still this lane's to settle.

        A consumer's call runs in the lane's task, so a call that ignores its cancellation
        keeps the task past the stop deadline; the engine then gives up on the batch
        (:meth:`drop_remaining`), and the call's late return must not settle it again."""
        if self._flight is not entries:
            return False
        self._flight = None
        return True

    def _settle(self, entries: list[Entry], result: Attempt) -> None:
        n = len(entries)
        if self.queue.spool is not None:
            self.queue.forget(entries)
        if result.outcome is Outcome.FAILED:
            self.ledger.move(n, Place.IN_FLIGHT, Place.FAILED)
            self.ledger.outcome(False)
            return
        self.ledger.settled(n, result.rejected)

    def _give_up(self, entries: list[Entry], why: str) -> None:
        """A batch not delivered because the lane is replaced or stopping."""
        n = len(entries)
        if self._successor is not None:  # not lost: the replacement delivers it
            self._successor.queue.adopt(entries, Place.IN_FLIGHT, self.queue)
        elif self.queue.spool is not None and any(e.spool_id is not None for e in entries):
            self.ledger.move(n, Place.IN_FLIGHT, Place.QUEUED)  # safe on disk for the next run
            self._limiter.log(
                logger, logging.WARNING, ("give-up", why),
                "consumer %s: %d item(s) of tick %s not delivered (%s); kept in spool %s",
                self.name, n, entries[-1].tick.event_time.isoformat(), why,
                self.queue.spool.path,
            )
        else:
            self.ledger.move(n, Place.IN_FLIGHT, Place.DROPPED)
            self._limiter.log(
                logger, logging.WARNING, ("give-up", why),
                "consumer %s: %d item(s) of tick %s not delivered (%s); counted as dropped "
                "(%d dropped so far)", self.name, n, entries[-1].tick.event_time.isoformat(),
                why, self.ledger.count(Place.DROPPED),
            )

    async def _after(self, result: Attempt, payload: Any, tick: Tick) -> None:
        if self.hooks is None:
            return
        if result.outcome is Outcome.DELIVERED:
            await self.hooks.delivered(payload, tick.event_time)
        else:
            await self.hooks.failed(result.error, payload, tick.event_time)

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the clock, cut short by a hand-over or the drain."""
        self._nap = asyncio.get_running_loop().create_future()
        try:
            await wait_done(self.clock, self._nap, seconds)
        finally:
            self._nap = None

    def _wake(self) -> None:
        nap = self._nap
        if nap is not None and not nap.done():
            nap.set_result(None)
