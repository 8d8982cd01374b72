"""Calling user code (producers, consumers, their hooks) so that nothing it does escapes.

* Sync callables run on a :class:`SyncWorker`: one daemon thread fed by a queue.
* Async callables run as a named task, except a lane's consumer: that one is awaited in the
  lane's own task (:meth:`Caller.run_here`), with the same guarantees and no task per call.
* Whatever the call raises, ``BaseException`` included (``SystemExit``, ``KeyboardInterrupt``,
  a ``CancelledError`` nobody asked for, ``GeneratorExit``), reaches the caller as an
  ordinary exception: a :class:`~aioconveyor.ContainedError` wrapping it. It never
  unwinds the event loop.
* A call that runs past its timeout is cancelled (async). One that cannot be stopped (a sync
  call stuck in its thread, a coroutine ignoring cancellation) is *hung*: the
  :class:`Caller` keeps it, starts no other call until it returns, and so never holds more
  than one thread or task of abandoned work.

Every wait reads the conveyor's :class:`~aioconveyor.Clock`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import heapq
import inspect
import math
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from . import _tick as tick_module
from ._clock import Clock, SystemClock, running_clock, timeout, wait_done
from ._errors import ContainedError
from ._tick import Tick

__all__ = ["CallTimeout", "Caller", "CallerBusy", "Started", "SyncWorker", "call_in_loop",
           "consume", "guarded", "is_async_callable", "is_awaitable", "slot_add", "slot_discard"]


def is_async_callable(fn: object) -> bool:
    """True for coroutine functions, partials of them and objects with an async ``__call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and inspect.iscoroutinefunction(call)


#: Types of results that are never awaitable: checked first, as ``inspect.isawaitable``
#: asks an ABC (about a microsecond) for every producer result and consumer return.
_PLAIN = frozenset({type(None), dict, list, tuple, str, bytes, int, float, bool})


def is_awaitable(value: object) -> bool:
    """``inspect.isawaitable(value)``, quick for the usual plain results."""
    return type(value) not in _PLAIN and inspect.isawaitable(value)


def contain(exc: BaseException) -> Exception:
    """``exc`` as an ordinary exception: itself if it is one, else wrapped."""
    return exc if isinstance(exc, Exception) else ContainedError(exc)


async def guarded(awaitable: Awaitable[Any]) -> Any:
    """Await user code; any ``BaseException`` it raises comes out as an ``Exception``.

    A ``CancelledError`` passes through only when the running task was asked to cancel
    (``Task.cancelling()``): that one is ours.
    """
    try:
        return await awaitable
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise ContainedError(exc) from exc
    except Exception:
        raise
    except BaseException as exc:
        raise ContainedError(exc) from exc


async def call_in_loop(fn: Callable[[], Any], clock: Clock, seconds: float) -> Any:
    """Call ``fn()`` in the running loop and await what it returns, within ``seconds`` on
    ``clock``; anything it raises comes out as an ``Exception`` (``TimeoutError`` when the
    time is up). For a consumer's ``open()`` / ``close()``, which own loop resources."""
    async with timeout(clock, seconds):
        try:
            result = fn()
        except Exception:
            raise
        except BaseException as exc:
            raise ContainedError(exc) from exc
        if inspect.isawaitable(result):
            result = await guarded(result)
    return result


_Job = tuple[
    concurrent.futures.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...]
]


#: Call timeouts are rounded up to a multiple of this (seconds, on the clock) so that the
#: calls ending in the same slot share one timer: with 10,000 consumers a timer per call
#: (armed and then cancelled every tick) was the largest single cost of a tick on the loop.
#: A timeout therefore fires up to this much late, never early.
TIMEOUT_GRAIN = 0.01

#: Per loop, per clock (by id): the calls whose timeouts end in each slot.
_slots: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[int, _Slots],
] = weakref.WeakKeyDictionary()


class _Slots:
    """The call timeouts of one clock in one loop, by :data:`TIMEOUT_GRAIN` slot (what
    ends in each: waiter futures of :func:`_wait_call`, timeout watches of
    :meth:`Caller.run_here`, direct producer calls), behind one timer, armed for the
    earliest slot.

    A call that ends in time leaves its slot; an emptied slot is not swept at once. With
    the real clock its timer just runs out, finds nothing and is armed again for the first
    slot with calls in it (one timer per timeout's length, where a call that starts and
    ends every tick cost a timer armed and cancelled every tick). With any other clock
    (a fake one jumps ahead to the next timer when idle) an emptied first slot's timer is
    moved on or cancelled at the end of the loop's turn, so no timer is left pending for
    nothing."""

    __slots__ = ("armed", "clock", "heap", "items", "lazy", "loop", "sweep", "timer")

    def __init__(self, clock: Clock, loop: asyncio.AbstractEventLoop) -> None:
        self.clock = clock
        self.loop = loop
        self.items: dict[int, set[Any]] = {}  # slot number -> what ends in it
        self.heap: list[int] = []  # the slot numbers of items, earliest first
        self.timer: Any = None
        self.armed: int | None = None  # the slot the timer is armed for
        self.lazy = type(clock) is SystemClock
        self.sweep = False  # a _sweep is scheduled

    def add(self, seconds: float, item: Any) -> tuple[_Slots, int]:
        clock = self.clock
        n = math.ceil((clock.monotonic() + seconds) / TIMEOUT_GRAIN)
        items = self.items.get(n)
        if items is None:
            items = self.items[n] = set()
            heapq.heappush(self.heap, n)
            if self.armed is None or n < self.armed:
                self._arm(n)
        items.add(item)
        return self, n

    def discard(self, n: int, item: Any) -> None:
        items = self.items.get(n)
        if items is None:  # expired already
            return
        items.discard(item)
        if not items and not self.lazy and n == self.armed and not self.sweep:
            self.sweep = True
            self.loop.call_soon(self._sweep)

    def _sweep(self) -> None:
        self.sweep = False
        self._rearm()

    def _rearm(self) -> None:
        """Drop the emptied slots in front; the timer armed for the first slot left."""
        heap, items = self.heap, self.items
        while heap and not items.get(heap[0]):
            items.pop(heapq.heappop(heap), None)
        first = heap[0] if heap else None
        if first != self.armed:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.armed = None
            if first is not None:
                self._arm(first)

    def _arm(self, n: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.armed = n
        self.timer = self.clock.call_later(n * TIMEOUT_GRAIN - self.clock.monotonic(),
                                           self._fire)

    def _fire(self) -> None:
        if asyncio._get_running_loop() is not self.loop:  # a fake clock's advance() outside
            self.loop.call_soon(self._fire)  # the loop: expiring needs the loop running
            return
        limit = self.armed
        self.timer = self.armed = None
        heap, items = self.heap, self.items
        now = self.clock.monotonic() / TIMEOUT_GRAIN
        while heap and ((limit is not None and heap[0] <= limit) or heap[0] <= now):
            for item in items.pop(heapq.heappop(heap), ()):
                if isinstance(item, asyncio.Future):
                    if not item.done():
                        item.set_result(False)
                else:
                    item.expire()
        self._rearm()


def _slot_add(clock: Clock, seconds: float, item: Any,
              loop: asyncio.AbstractEventLoop | None = None) -> tuple[_Slots, int]:
    """Expire ``item`` once ``seconds`` passed on ``clock`` (up to :data:`TIMEOUT_GRAIN`
    later), on the timer shared by the slots; returns the key for :func:`_slot_discard`.
    ``loop``: the running loop, if the caller knows it (a look-up is a system call)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    per_clock = _slots.get(loop)
    if per_clock is None:
        per_clock = _slots[loop] = {}
    slots = per_clock.get(id(clock))
    if slots is None:
        slots = per_clock[id(clock)] = _Slots(clock, loop)
    return slots.add(seconds, item)


def _slot_discard(key: tuple[_Slots, int], item: Any) -> None:
    """``item`` ended before its timeout (see :class:`_Slots` for what follows)."""
    key[0].discard(key[1], item)


async def _wait_call(clock: Clock, future: asyncio.Future[Any], seconds: float) -> bool:
    """:func:`~aioconveyor._clock.wait_done` for the hot path of a call: the same (True if
    ``future`` is done within ``seconds``; never cancels it), with a timer shared per
    :data:`TIMEOUT_GRAIN` slot."""
    if future.done():
        return True
    if seconds == math.inf or seconds <= 0:
        return await wait_done(clock, future, seconds)
    waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_done(_: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_result(True)

    key = _slot_add(clock, seconds, waiter, waiter.get_loop())
    future.add_done_callback(on_done)
    try:
        return await waiter
    finally:
        future.remove_done_callback(on_done)
        _slot_discard(key, waiter)


class SyncWorker:
    """One daemon thread running calls one at a time, in order, in the caller's context.

    For a consumer's blocking code (a sync driver, file I/O, ``urllib``): ``await
    worker.call(fn, *args)`` runs ``fn(*args)`` on the thread while the loop goes on, and
    ``current_tick()`` works inside it. Whatever ``fn`` raises comes back from the await (a
    ``BaseException`` such as ``SystemExit`` as a ``ContainedError``). The thread starts on
    the first call; :meth:`close` lets it end. Give each consumer its own worker: calls
    queue behind a slow one, so consumers sharing one would delay each other.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, ctx, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = ctx.run(fn, *args)
            except BaseException as exc:  # handed to the awaiting side, never lost
                future.set_exception(contain(exc))
            else:
                future.set_result(result)

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Schedule ``fn(*args)`` on the thread (started on first use)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, contextvars.copy_context(), fn, args))
        return future

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Schedule ``fn(*args)`` on the thread; await the returned future in the loop.

        Inside a conveyor the work is reported to its clock (``Clock.track``), so a fake
        clock does not jump ahead while the thread is busy with it."""
        work = self.submit(fn, *args)
        clock = running_clock()
        if clock is not None:
            clock.track(work)
        return asyncio.wrap_future(work)

    def close(self) -> None:
        """Let the thread exit after the calls already queued (never blocks)."""
        self._jobs.put(None)


class CallerBusy(Exception):
    """The previous call has not returned yet (it hung): no new call was started."""

    def __init__(self, name: str, since: float) -> None:
        super().__init__(f"{name}: the previous call is still running")
        self.since = since


class CallTimeout(Exception):
    """A call run by :meth:`Caller.run_here` was cancelled at its timeout."""


class _CallTimeout:
    """The timeout of one call awaited in the caller's own task (:meth:`Caller.run_here`).

    Expired by its slot's shared timer, it cancels the call through the task's timeout
    scope (``asyncio.timeout``, which tells this cancellation from one of the task itself),
    then gives the call :attr:`Caller.CANCEL_GRACE` to end; past that the call is hung and
    ``on_hung`` is told, again and again as long as it asks (its reminders)."""

    __slots__ = ("clock", "hung", "loop", "on_hung", "scope", "started", "timer")

    def __init__(self, clock: Clock, scope: asyncio.Timeout, started: float,
                 on_hung: Callable[[float], float | None]) -> None:
        self.loop = asyncio.get_running_loop()  # a fake clock may fire timers from outside
        self.clock = clock
        self.scope = scope
        self.started = started
        self.on_hung = on_hung
        self.timer: Any = None
        self.hung = False

    def expire(self) -> None:
        if asyncio._get_running_loop() is not self.loop:  # a fake clock's advance() outside
            self.loop.call_soon(self.expire)  # the loop: the scope needs it running
            return
        if not self.scope.expired():
            self.scope.reschedule(self.loop.time())  # cancels the task
        self.timer = self.clock.call_later(Caller.CANCEL_GRACE, self._remind)

    def _remind(self) -> None:
        self.hung = True
        after = self.on_hung(self.clock.monotonic() - self.started)
        self.timer = None if after is None else self.clock.call_later(after, self._remind)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Caller:
    """Calls one user function (producer, consumer or hook), one call at a time.

    Async functions run as a named task, sync ones on this caller's own
    :class:`SyncWorker`; the current :class:`~aioconveyor.Tick` is visible inside either
    way. :meth:`call` waits at most ``timeout`` seconds on ``clock``. On a timeout the call
    is cancelled; a call that does not stop (sync, or a coroutine ignoring cancellation)
    becomes :attr:`hung`, and until it returns :meth:`call` raises :class:`CallerBusy`
    instead of starting another: a hung consumer costs one thread, never one per timeout.
    """

    #: Seconds a call cancelled at its timeout gets to finish its cleanup (e.g. a rollback)
    #: before it counts as hung.
    CANCEL_GRACE = 0.5

    def __init__(self, fn: Callable[..., Any], name: str, clock: Clock) -> None:
        self.fn = fn
        self.name = name
        self.clock = clock
        self.is_async = is_async_callable(fn)
        self._call_name = f"{name}.call"
        self.busy_since: float | None = None  # clock.monotonic() start of the call running
        self.hung: asyncio.Future[Any] | None = None  # the call left running after a timeout
        self._worker: SyncWorker | None = None

    def _start(self, tick: Tick | None, fn: Callable[..., Any],
               args: tuple[Any, ...],
               loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[Any]:
        token = tick_module._set(tick)
        try:
            if self.is_async if fn is self.fn else is_async_callable(fn):
                if loop is None:
                    loop = asyncio.get_running_loop()
                try:
                    call = fn(*args)
                except BaseException as exc:  # raised before its first await
                    failed: asyncio.Future[Any] = loop.create_future()
                    failed.set_exception(contain(exc))
                    return failed
                return loop.create_task(guarded(call), name=self._call_name)
            if self._worker is None:
                self._worker = SyncWorker(f"{self.name}.worker")
            work = self._worker.submit(fn, *args)
            self.clock.track(work)
            return asyncio.wrap_future(work)
        finally:
            tick_module._reset(token)

    def start(self, tick: Tick | None, *args: Any, fn: Callable[..., Any] | None = None,
              loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[Any]:
        """Start the call (no wait): its future. Raises :class:`CallerBusy` while an
        earlier call is :attr:`hung`. Whoever starts it sees to its timeout (as
        :meth:`call` does) and sets :attr:`busy_since` back to None when it ends.
        ``loop``: the running loop, if the caller knows it (a look-up is a system call)."""
        if self.hung is not None:
            if not self.hung.done():
                raise CallerBusy(self.name, self.busy_since or self.clock.monotonic())
            self.hung = None
            self.busy_since = None
        future = self._start(tick, self.fn if fn is None else fn, args, loop)
        self.busy_since = self.clock.monotonic()
        return future

    async def call(self, tick: Tick | None, *args: Any, timeout: float,
                   fn: Callable[..., Any] | None = None) -> asyncio.Future[Any] | None:
        """Start the call and wait for it: its finished future, or None after ``timeout``.

        ``fn`` calls another function of the same owner on the same worker (a consumer's
        ``open()``). Raises :class:`CallerBusy` while an earlier call is :attr:`hung`.
        """
        target = self.fn if fn is None else fn
        in_loop = self.is_async if target is self.fn else is_async_callable(target)
        future = self.start(tick, *args, fn=fn)
        try:
            if await _wait_call(self.clock, future, timeout):
                self.busy_since = None
                return future
        except asyncio.CancelledError:
            if in_loop:
                future.cancel()
            self.busy_since = None
            raise
        if in_loop:  # a task can be asked to stop; a thread cannot
            future.cancel()
            if await wait_done(self.clock, future, self.CANCEL_GRACE):
                self.busy_since = None
                consume(future)
                return None
        self.hung = future  # busy_since stays: health sees how long it has been stuck
        future.add_done_callback(consume)
        return None

    def run_now(self, tick: Tick | None, *args: Any) -> Any:
        """The first step of :meth:`run_here`'s call, in the running task, without a
        coroutine of its own: its result when it returns without suspending (what it
        raises comes out as :meth:`run_here` lets it out); else a :class:`Started` to
        hand to ``run_here(started=...)``, which goes on with it."""
        clock = self.clock
        started = self.busy_since = clock.monotonic()
        token = tick_module._current.set(tick)  # not _set(): once per item per lane
        try:
            try:
                call = self.fn(*args)
            except BaseException as exc:  # raised before its first await
                raise contain(exc) from None
            send = getattr(call, "send", None)
            if send is None:  # an awaitable that is no coroutine: awaited as it is
                return Started(call, _NOT_STARTED, started)
            try:
                first = send(None)
            except StopIteration as done:
                return done.value
            except BaseException as exc:
                _raise_contained(exc)
            return Started(call, first, started)
        finally:
            tick_module._current.reset(token)
            self.busy_since = None

    async def run_here(self, tick: Tick | None, *args: Any, timeout: float,
                       on_hung: Callable[[float], float | None],
                       started: Started | None = None) -> Any:
        """Call the async function and await it in the running task, not a task of its own.

        For a lane's consumer: :meth:`call` costs a task, a waiter future, a done-callback
        and about three loop callbacks per call, all of them alive across turns of the loop
        (so, with thousands of lanes, promoted to the collector's old generations and paid
        for in full collections). Awaited here, a consumer that returns without suspending
        costs its coroutine, and the lane's task does it all in one step. The guarantees
        are those of :meth:`call`:

        * the tick is visible inside (``current_tick()``: set in the task around the call);
        * whatever the call raises comes out as an ``Exception`` (:func:`guarded`), except
          a cancellation of the running task itself (a drain deadline), which passes;
        * at ``timeout`` (on the clock, a timer shared per :data:`TIMEOUT_GRAIN` slot) the
          call is cancelled and :class:`CallTimeout` raised;
        * a call still running :attr:`CANCEL_GRACE` after that cancellation is hung: the
          task keeps waiting for it (no other call starts meanwhile), ``on_hung(seconds
          since the call started)`` is called from a timer, and again after as many
          seconds as it returns (``None``: no more). When a hung call ends at last, its own
          outcome (result or exception) is returned as usual.
        """
        clock = self.clock
        if started is None:
            # the first step at once, in this task as `await` would run it (run_now). A
            # call that returns without suspending (most do: a counter, a buffer append)
            # cannot have run past a timeout, which only acts at a suspension: it costs no
            # timeout scope and no timer slot. Only one that suspends gets them.
            begun_now = self.run_now(tick, *args)
            if not isinstance(begun_now, Started):
                return begun_now
            started = begun_now
        begun = self.busy_since = started.started
        token = tick_module._set(tick)
        watch: _CallTimeout | None = None
        call, first = started.call, started.first
        try:
            async with asyncio.timeout(None) as scope:
                if 0 < timeout < math.inf:
                    watch = _CallTimeout(clock, scope, begun, on_hung)
                    key = _slot_add(clock, timeout, watch, watch.loop)
                try:
                    result = await guarded(call if first is _NOT_STARTED
                                           else _Resumed(call, first))
                finally:
                    if watch is not None:
                        _slot_discard(key, watch)
                        watch.close()
        except TimeoutError:
            if watch is not None and scope.expired():  # ours (hung or not), not the call's
                raise CallTimeout() from None
            raise
        finally:
            tick_module._reset(token)
            self.busy_since = None
        if watch is not None and scope.expired() and not watch.hung:
            raise CallTimeout()  # it swallowed the cancellation and returned: still a timeout
        return result

    async def wait_hung(self) -> asyncio.Future[Any] | None:
        """Wait until the hung call (if any) has returned; its future."""
        hung = self.hung
        if hung is None:
            return None
        await asyncio.wait({hung})
        self.hung = None
        self.busy_since = None
        return hung

    async def result(self, future: asyncio.Future[Any], seconds: float = math.inf) -> Any:
        """The call's result (raising its exception); a sync function that returned an
        awaitable has it awaited here, within ``seconds``."""
        return await self.resolve(future.result(), seconds)

    async def resolve(self, result: Any, seconds: float = math.inf) -> Any:
        """``result``, awaited within ``seconds`` if it is an awaitable."""
        if is_awaitable(result):
            async with timeout(self.clock, seconds):
                result = await guarded(result)
        return result

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


_NOT_STARTED: Any = object()


class Started:
    """A call whose first step :meth:`Caller.run_now` made and that suspended (or an
    awaitable that is no coroutine, not begun: ``first`` is ``_NOT_STARTED``)."""

    __slots__ = ("call", "first", "started")

    def __init__(self, call: Any, first: Any, started: float) -> None:
        self.call = call
        self.first = first
        self.started = started  # clock.monotonic() when it began


def _raise_contained(exc: BaseException) -> None:
    """Raise ``exc`` (from a call's first step) as :func:`guarded` would have."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise exc
        raise ContainedError(exc) from exc
    if isinstance(exc, Exception):
        raise exc
    raise ContainedError(exc) from exc


class _Resumed:
    """The rest of a coroutine whose first step already ran (it yielded ``first``):
    awaiting this goes on exactly as awaiting the coroutine would have (``yield from``:
    every value, send, throw and close passes through)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        self.first = None
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a finished future's exception so asyncio does not log it as never retrieved."""
    if future.done() and not future.cancelled():
        future.exception()


slot_add = _slot_add
slot_discard = _slot_discard
