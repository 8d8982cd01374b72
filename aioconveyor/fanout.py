"""Per-consumer lanes: one bounded queue and one task per consumer.

The scheduler hands each result to :meth:`Fanout.offer`, which puts an independent deep
copy into every lane and returns at once (unless a lane uses the ``block`` overflow
policy). Each :class:`Lane` then delivers on its own: timeouts, retries with capped
exponential backoff and jitter, batching, and counting of everything that happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy as copy_module
import inspect
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, runtime_checkable

from . import _validate
from ._logs import LogLimiter
from .errors import ConsumerTimeout, Rejected, RetryAfter
from .spool import Spool
from .stats import LaneCounters
from .tick import Tick
from .workers import Caller, is_async_callable

__all__ = [
    "Batch",
    "Consumer",
    "ConsumerFunc",
    "Overflow",
    "Record",
    "SupportsOpenClose",
]

logger = logging.getLogger(__name__)


class Overflow(StrEnum):
    """What a lane does when its queue is full."""

    DROP_OLDEST = "drop_oldest"
    """Discard the oldest queued item to make room (default: freshest data wins)."""
    DROP_NEWEST = "drop_newest"
    """Discard the incoming item (keep the backlog in order)."""
    BLOCK = "block"
    """Make the scheduler wait for room: nothing dropped, but a stuck consumer then delays
    the producer and the other consumers (missed ticks are counted)."""


@runtime_checkable
class ConsumerFunc(Protocol):
    """A consumer: any callable ``(data, event_time)``, sync or async."""

    def __call__(self, data: Any, event_time: datetime, /) -> Any: ...


@runtime_checkable
class SupportsOpenClose(Protocol):
    """A consumer object that owns a resource, opened and closed in the conveyor's loop."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class Record(NamedTuple):
    """One produced item inside a :class:`Batch`."""

    data: Any
    event_time: datetime


class Batch(list[Record]):
    """What a batching consumer receives as ``data``: the records, oldest first.

    A distinct type so a consumer can tell a batch from a producer that returns a list.
    """


_UNSET_FIELDS = ("name",)


@dataclass(frozen=True, slots=True)
class Consumer:
    """Per-consumer settings around a plain callable.

    Every setting left as ``None`` falls back to the callable's own ``consumer_defaults``
    (a dict the built-in consumers provide), then to the library default below.

    * ``timeout``: seconds one call may take (default: twice the tick period, clamped to
      1..60 s; ``math.inf`` for none). A call past it is cancelled (async) or abandoned
      (sync, its thread replaced), counted, and retried per ``retries``.
    * ``retries`` (0): extra attempts after a failure, waiting ``backoff`` (0.5 s) doubling
      up to ``max_backoff`` (30 s), each with +-50 % jitter.
    * ``queue_size`` (1000) and ``overflow`` (``"drop_oldest"``, ``"drop_newest"``, ``"block"``).
    * ``batch_size`` (1: no batching) and ``batch_age`` (0 s): with ``batch_size > 1`` the
      consumer receives a :class:`Batch` of up to ``batch_size`` records, collected for at
      most ``batch_age`` seconds after the first one (0: whatever is queued right now).
    * ``copy`` (True): deep-copy the data for this consumer. ``False`` shares one object
      between consumers; use it only for immutable data.
    * ``spool`` (None): path of a SQLite file that keeps this consumer's queue on disk, so
      queued items survive a crash and are delivered after a restart (at-least-once).
    * ``on_delivered(data, event_time)`` / ``on_error(exc, data, event_time)`` (None):
      hooks, sync or async, called after a delivery and after an item (or batch) was given
      up on. A hook that raises or hangs is logged and counted, never breaks the lane.
    """

    fn: Any
    name: str | None = None
    timeout: float | None = None
    retries: int | None = None
    backoff: float | None = None
    max_backoff: float | None = None
    queue_size: int | None = None
    overflow: Overflow | str | None = None
    batch_size: int | None = None
    batch_age: float | None = None
    copy: bool | None = None
    spool: str | os.PathLike[str] | None = None
    on_delivered: Callable[..., Any] | None = None
    on_error: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        _validate.callable_("consumer", self.fn)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(f"consumer name must be a non-empty str, got {self.name!r}")
        if self.timeout is not None and self.timeout != math.inf:
            _validate.positive("timeout", self.timeout)
        _validate.optional_integer("retries", self.retries, minimum=0)
        _validate.optional_positive("backoff", self.backoff)
        _validate.optional_positive("max_backoff", self.max_backoff)
        _validate.optional_integer("queue_size", self.queue_size, minimum=1)
        if self.overflow is not None:
            overflow = _validate.choice("overflow", self.overflow, Overflow)
            object.__setattr__(self, "overflow", overflow)
        _validate.optional_integer("batch_size", self.batch_size, minimum=1)
        if self.batch_age is not None:
            _validate.non_negative("batch_age", self.batch_age)
        if self.copy is not None and not isinstance(self.copy, bool):
            raise TypeError(f"copy must be a bool, got {self.copy!r}")
        if self.spool is not None and not isinstance(self.spool, str | os.PathLike):
            raise TypeError(f"spool must be a file path, got {self.spool!r}")
        if self.spool is not None and not os.fspath(self.spool):
            raise ValueError(f"spool must be a file path, got {self.spool!r}")
        for hook in ("on_delivered", "on_error"):
            if getattr(self, hook) is not None:
                _validate.callable_(hook, getattr(self, hook))

    @classmethod
    def wrap(cls, obj: Any) -> Consumer:
        """``obj`` as a :class:`Consumer` (settings unchanged if it already is one)."""
        if isinstance(obj, Consumer):
            return obj
        _validate.callable_("consumers[...]", obj)
        return cls(obj)


@dataclass(frozen=True, slots=True)
class LaneSettings:
    """A :class:`Consumer` with every setting resolved to a concrete value."""

    fn: Any
    name: str
    is_async: bool
    timeout: float
    retries: int
    backoff: float
    max_backoff: float
    queue_size: int
    overflow: Overflow
    batch_size: int
    batch_age: float
    copy: bool
    spool: str | os.PathLike[str] | None
    on_delivered: Callable[..., Any] | None
    on_error: Callable[..., Any] | None

    @property
    def batching(self) -> bool:
        return self.batch_size > 1


_LIBRARY_DEFAULTS: dict[str, Any] = {
    "retries": 0,
    "backoff": 0.5,
    "max_backoff": 30.0,
    "queue_size": 1000,
    "overflow": Overflow.DROP_OLDEST,
    "batch_size": 1,
    "batch_age": 0.0,
    "copy": True,
}


def callable_name(fn: Any) -> str:
    """A readable name for a producer or consumer callable."""
    for candidate in (getattr(fn, "name", None), getattr(fn, "__qualname__", None)):
        if isinstance(candidate, str) and candidate:
            return candidate.rpartition("<locals>.")[2]
    inner = getattr(fn, "func", None)  # functools.partial
    if inner is not None and inner is not fn:
        return callable_name(inner)
    return type(fn).__name__


def resolve(consumers: Sequence[Consumer], default_timeout: float) -> list[LaneSettings]:
    """Resolve settings for every consumer and give each a unique name."""
    seen: dict[str, int] = {}
    out: list[LaneSettings] = []
    for spec in consumers:
        own = getattr(spec.fn, "consumer_defaults", None) or {}
        if not isinstance(own, dict):
            raise TypeError(f"consumer_defaults of {spec.fn!r} must be a dict, got {own!r}")
        defaults = Consumer(spec.fn, **own)  # validates the consumer's own defaults
        values: dict[str, Any] = {}
        for f in fields(Consumer):
            if f.name == "fn":
                continue
            v = getattr(spec, f.name)
            if v is None:
                v = getattr(defaults, f.name)
            if v is None:
                v = _LIBRARY_DEFAULTS.get(f.name)
            values[f.name] = v
        base = values.pop("name") or callable_name(spec.fn)
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        if values["timeout"] is None:
            values["timeout"] = default_timeout
        out.append(
            LaneSettings(fn=spec.fn, name=name, is_async=is_async_callable(spec.fn), **values)
        )
    return out


class _Entry(NamedTuple):
    record: Record
    tick: Tick
    enqueued: float
    spool_id: int | None = None


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


class Lane:
    """Delivers one consumer's copies, in order, on a task of its own."""

    #: Seconds a call cancelled at its timeout gets to finish its cleanup (e.g. a rollback)
    #: before the lane abandons it and counts it in ``abandoned``.
    CANCEL_GRACE = 0.5

    def __init__(self, settings: LaneSettings, counters: LaneCounters, conveyor: str,
                 generation: int = 1) -> None:
        self.settings = settings
        self.counters = counters
        self.generation = generation  # > 1 for a lane that replaced another of its name
        suffix = f"@{generation}" if generation > 1 else ""
        self.task_name = f"aioconveyor[{conveyor}].lane[{settings.name}]{suffix}"
        self._queue: deque[_Entry] = deque()
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._closing = False
        self._drain_deadline = math.inf
        self._caller = Caller(settings.fn, self.task_name)
        counters.busy_since = lambda: self._caller.busy_since
        self._limiter = LogLimiter()
        self._rng = random.Random()
        self._spool = Spool(settings.spool, settings.name) if settings.spool is not None else None
        self._successor: Lane | None = None  # the lane that replaced this one
        self._replaced = asyncio.Event()
        counters.oldest_queued = self._oldest_enqueued

    def _oldest_enqueued(self) -> float | None:
        """Monotonic enqueue time of the oldest waiting item (read from any thread)."""
        try:
            return self._queue[0].enqueued
        except IndexError:
            return None

    # -- putting ---------------------------------------------------------------------

    def _append(self, entry: _Entry) -> None:
        self._queue.append(entry)
        with self.counters.lock:
            self.counters.offered += 1
            self.counters.queued += 1
        self._has_items.set()
        if len(self._queue) >= self.settings.queue_size:
            self._has_room.clear()

    def _drop(self, entry: _Entry, why: str, *, offered: bool) -> None:
        if entry.spool_id is not None and self._spool is not None:
            self._spool.remove([entry.spool_id])
        with self.counters.lock:
            self.counters.dropped += 1
            if offered:
                self.counters.offered += 1
        self._limiter.log(
            logger, logging.WARNING, ("drop", why),
            "consumer %s: %s; dropped the item of tick %s (%d dropped so far)",
            self.settings.name, why, entry.record.event_time.isoformat(), self.counters.dropped,
        )

    async def put(self, data: Any, tick: Tick) -> None:
        """Queue one copy of ``data``; never waits unless the policy is ``block``."""
        if self.settings.copy:
            try:
                data = copy_module.deepcopy(data)
            except Exception as exc:  # an uncopyable object must not stop the fan-out
                self._limiter.log(
                    logger, logging.ERROR, "copy",
                    "consumer %s: cannot deep-copy %s (set copy=False for this consumer)",
                    self.settings.name, type(data).__name__, exc=exc,
                )
                self._drop(_Entry(Record(None, tick.event_time), tick, 0.0), "copy failed",
                           offered=True)
                return
        entry = _Entry(Record(data, tick.event_time), tick, time.monotonic())
        policy = self.settings.overflow
        full = len(self._queue) >= self.settings.queue_size
        if self._spool is not None and not (full and policy is Overflow.DROP_NEWEST):
            try:
                entry = entry._replace(spool_id=self._spool.add(data, tick))
            except Exception as exc:  # unpicklable data, disk full: counted, not fatal
                self._limiter.log(
                    logger, logging.ERROR, "spool",
                    "consumer %s: cannot spool the item of tick %s to %s: %s: %s",
                    self.settings.name, tick.event_time.isoformat(), self._spool.path,
                    type(exc).__name__, exc, exc=exc,
                )
                self._drop(entry, "spool write failed", offered=True)
                return
        if not full:
            self._append(entry)
            return
        if policy is Overflow.DROP_OLDEST:
            old = self._queue.popleft()
            with self.counters.lock:
                self.counters.queued -= 1
            self._drop(old, "queue full", offered=False)
            self._append(entry)
        elif policy is Overflow.DROP_NEWEST:
            self._drop(entry, "queue full", offered=True)
        else:
            try:
                while len(self._queue) >= self.settings.queue_size:
                    self._has_room.clear()
                    await self._has_room.wait()
            except asyncio.CancelledError:
                self._drop(entry, "stopped while waiting for room", offered=True)
                raise
            self._append(entry)

    # -- lifecycle -------------------------------------------------------------------

    @asynccontextmanager
    async def opened(self, close_budget: Callable[[], float],
                     recover: bool = True) -> AsyncIterator[Lane]:
        """Open the consumer object (``open()`` or ``__aenter__``), close it on exit."""
        fn = self.settings.fn
        if self._spool is not None:
            self._recover(self._spool, recover)
        try:
            if hasattr(fn, "open"):
                await _maybe_await(fn.open())
            elif hasattr(fn, "__aenter__"):
                await fn.__aenter__()
        except BaseException:
            if self._spool is not None:
                self._spool.close()
            raise
        try:
            yield self
        finally:
            await self._close(close_budget())

    def _recover(self, spool: Spool, recover: bool) -> None:
        """Queue what an earlier run left in the spool, ahead of anything new."""
        left = spool.open()
        if not recover:  # the lane this one replaces is still delivering those
            return
        for spool_id, data, tick in left:
            self._append(_Entry(Record(data, tick.event_time), tick, time.monotonic(), spool_id))
        if left:
            logger.info("consumer %s: %d item(s) recovered from spool %s",
                        self.settings.name, len(left), spool.path)

    async def _close(self, timeout: float) -> None:
        fn = self.settings.fn
        try:
            async with asyncio.timeout(max(timeout, 0.01)):
                if hasattr(fn, "close") and hasattr(fn, "open"):
                    await _maybe_await(fn.close())
                elif hasattr(fn, "__aexit__"):
                    await fn.__aexit__(None, None, None)
        except Exception:
            logger.exception("consumer %s: close failed", self.settings.name)
        finally:
            self._caller.close()
            if self._spool is not None:
                self._spool.close()

    def begin_drain(self, deadline: float) -> None:
        """Finish what is queued (until ``deadline``, loop time), then let :meth:`run` end."""
        self._closing = True
        self._drain_deadline = deadline
        self._has_items.set()

    def hand_over(self, successor: Lane) -> int:
        """Move everything queued here (not the call in flight) to the front of
        ``successor``'s queue, oldest first; returns how many items moved.

        From now on an item this lane would give up on (its call in flight failing, or the
        drain deadline) goes to ``successor`` too, instead of being retried or dropped.
        """
        self._successor = successor
        self._replaced.set()
        moved = list(self._queue)
        self._queue.clear()
        self._has_room.set()
        with self.counters.lock:
            self.counters.queued -= len(moved)
        self._give(moved)
        return len(moved)

    def _give(self, entries: list[_Entry]) -> None:
        """Put ``entries`` (oldest first) at the front of the successor's queue."""
        successor = self._successor
        assert successor is not None
        same_spool = (self._spool is not None and successor._spool is not None
                      and self._spool.path == successor._spool.path)
        for entry in reversed(entries):
            if not same_spool:
                if self._spool is not None and entry.spool_id is not None:
                    self._spool.remove([entry.spool_id])
                new_id = (successor._spool.add(entry.record.data, entry.tick)
                          if successor._spool is not None else None)
                entry = entry._replace(spool_id=new_id)
            successor._queue.appendleft(entry)
        if entries:
            with successor.counters.lock:
                successor.counters.queued += len(entries)
            successor._has_items.set()

    def drop_remaining(self, why: str) -> int:
        """Count everything still queued as dropped (after the drain deadline)."""
        n = len(self._queue)
        if n and self._spool is not None:
            self._queue.clear()  # they stay on disk, counted as queued, for the next run
            logger.warning("consumer %s: %d queued items not delivered (%s); kept in spool %s "
                           "for the next run", self.settings.name, n, why, self._spool.path)
        elif n:
            self._queue.clear()
            with self.counters.lock:
                self.counters.queued -= n
                self.counters.dropped += n
            logger.warning("consumer %s: %d queued items not delivered (%s)",
                           self.settings.name, n, why)
        self._has_room.set()
        return n

    # -- delivering ------------------------------------------------------------------

    async def run(self) -> None:
        """The lane's task: take, deliver, repeat; returns once drained after begin_drain()."""
        while (entries := await self._take()) is not None:
            await self._deliver(entries)

    async def _take(self) -> list[_Entry] | None:
        while not self._queue:
            if self._closing:
                return None
            self._has_items.clear()
            await self._has_items.wait()
        s = self.settings
        if s.batching and s.batch_age > 0:
            deadline = self._queue[0].enqueued + s.batch_age
            while len(self._queue) < s.batch_size and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._has_items.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._has_items.wait()
                except TimeoutError:
                    break
        n = min(s.batch_size, len(self._queue))
        entries = [self._queue.popleft() for _ in range(n)]
        with self.counters.lock:
            self.counters.queued -= n
            self.counters.in_flight += n
        if len(self._queue) < s.queue_size:
            self._has_room.set()
        return entries

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        base = min(s.max_backoff, s.backoff * 2 ** (attempt - 1))
        return float(base * self._rng.uniform(0.5, 1.5))

    async def _deliver(self, entries: list[_Entry]) -> None:
        s = self.settings
        n = len(entries)
        last = entries[-1]
        payload: Any = Batch(e.record for e in entries) if s.batching else last.record.data
        outcome = "failed"
        attempt = 0
        error: Exception | None = None
        raised_rejects = 0
        rejected_before = self._rejected_so_far()
        try:
            while True:
                try:
                    await self._call(payload, last.record.event_time, last.tick)
                except Exception as exc:
                    error = exc
                    self._record_error(exc, last.tick)
                    if isinstance(exc, Rejected):
                        outcome = "rejected"
                        raised_rejects = n if exc.count is None else min(n, exc.count)
                        break
                    if isinstance(exc, RetryAfter):
                        delay = exc.seconds
                    elif attempt < s.retries:
                        attempt += 1
                        delay = self._backoff(attempt)
                    else:
                        self._limiter.log(
                            logger, logging.ERROR, "give-up",
                            "consumer %s: gave up on %d item(s) of tick %s after %d attempt(s)",
                            s.name, n, last.record.event_time.isoformat(), attempt + 1,
                        )
                        break
                    if (self._successor is not None
                            or time.monotonic() + delay > self._drain_deadline):
                        outcome = "dropped"  # (or handed to the successor: see _settle)
                        break
                    self._replaced.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._replaced.wait()  # a replacement cuts the wait short
                    if self._successor is not None:
                        outcome = "dropped"  # handed to the successor: see _settle
                        break
                    with self.counters.lock:
                        self.counters.retries += 1
                else:
                    outcome = "delivered"
                    break
        except asyncio.CancelledError:
            outcome = "dropped"
            raise
        finally:
            rejected = raised_rejects
            if outcome in ("delivered", "rejected") and rejected_before is not None:
                counted = (self._rejected_so_far() or 0) - rejected_before
                rejected = min(n, max(rejected, counted))  # either way, counted once
            self._settle(entries, outcome, rejected)
        if outcome == "delivered" and s.on_delivered is not None:
            await self._hook("on_delivered", s.on_delivered, payload, last.record.event_time)
        elif outcome in ("failed", "rejected") and s.on_error is not None:
            await self._hook("on_error", s.on_error, error, payload, last.record.event_time)

    def _rejected_so_far(self) -> int | None:
        """The consumer object's own ``rejected`` counter, if it keeps one.

        Consumers that skip bad records (and still succeed) count them in an int attribute
        ``rejected``; what it grows by during a delivery is counted as rejected, not delivered.
        """
        value = getattr(self.settings.fn, "rejected", None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _settle(self, entries: list[_Entry], outcome: str, rejected: int = 0) -> None:
        """Count the outcome; forget delivered and failed items from the spool."""
        n = len(entries)
        if outcome == "dropped" and self._successor is not None:
            with self.counters.lock:
                self.counters.in_flight -= n
            self._give(entries)  # not lost: the replacement delivers them
            return
        spooled = self._spool is not None and entries[0].spool_id is not None
        if spooled and self._spool is not None and outcome != "dropped":
            self._spool.remove(e.spool_id for e in entries if e.spool_id is not None)
        with self.counters.lock:
            c = self.counters
            c.in_flight -= n
            if outcome in ("delivered", "rejected"):
                c.delivered += n - rejected
                c.rejected += rejected
                if n > rejected:
                    c.last_success_time = time.time()
            elif outcome == "dropped" and spooled:
                c.queued += n  # not delivered, but safe on disk for the next run
            elif outcome == "dropped":
                c.dropped += n
            else:
                c.failed += n

    async def _hook(self, which: str, hook: Callable[..., Any], *args: Any) -> None:
        """Run a user hook; whatever it does, the lane goes on."""
        s = self.settings
        try:
            async with asyncio.timeout(None if s.timeout == math.inf else s.timeout):
                if is_async_callable(hook):
                    await hook(*args)
                else:
                    await _maybe_await(await asyncio.to_thread(hook, *args))
        except Exception as exc:
            with self.counters.lock:
                self.counters.hook_errors += 1
            self._limiter.log(
                logger, logging.WARNING, ("hook", which),
                "consumer %s: %s hook failed: %s: %s", s.name, which, type(exc).__name__, exc,
                exc=exc,
            )

    def _record_error(self, exc: Exception, tick: Tick) -> None:
        with self.counters.lock:
            self.counters.errors += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            self.counters.last_error_time = time.time()
        self._limiter.log(
            logger, logging.WARNING, ("error", type(exc)),
            "consumer %s failed on tick %s: %s: %s",
            self.settings.name, tick.event_time.isoformat(), type(exc).__name__, exc, exc=exc,
        )

    async def _call(self, payload: Any, event_time: datetime, tick: Tick) -> None:
        s = self.settings
        future = await self._caller.call(tick, payload, event_time, timeout=s.timeout,
                                         cancel_grace=self.CANCEL_GRACE)
        if future is None:
            self._timed_out()
            raise ConsumerTimeout(s.name, event_time, s.timeout)
        await self._caller.result(future, s.timeout)

    def _timed_out(self) -> None:
        """Count a call that ran past its timeout (cancelled, or abandoned in its thread)."""
        with self.counters.lock:
            self.counters.timeouts += 1
            self.counters.restarts += 1
            if self._caller.abandoned:
                self.counters.abandoned += 1
        if self._caller.abandoned:
            what = "thread" if not self.settings.is_async else "call (it ignored cancellation)"
            logger.error("consumer %s: call hung past %g s; its %s was abandoned",
                         self.settings.name, self.settings.timeout, what)


class Fanout:
    """Hands every produced item to every lane, each its own copy."""

    def __init__(self, lanes: list[Lane]) -> None:
        self.lanes = lanes  # shared with the engine, which adds and removes lanes at run time

    async def offer(self, data: Any, tick: Tick) -> None:
        for lane in self.lanes:
            await lane.put(data, tick)

