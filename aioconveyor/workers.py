"""Run blocking (sync) producers and consumers off the event loop.

Each sync callable gets its own :class:`SyncWorker`: one daemon thread fed by a queue. A
call that hangs cannot be killed in Python, so on timeout the worker is *abandoned* (its
thread finishes the hung call whenever it can, then exits) and a fresh worker takes over.
Daemon threads never hold up interpreter exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from . import tick as tick_module
from .tick import Tick

__all__ = ["Caller", "SyncWorker", "is_async_callable"]


def is_async_callable(fn: object) -> bool:
    """True for coroutine functions, partials of them and objects with an async ``__call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and inspect.iscoroutinefunction(call)


_Job = tuple[
    concurrent.futures.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...]
]


class SyncWorker:
    """One daemon thread running calls one at a time, in the caller's context."""

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
            except BaseException as exc:  # handed to the awaiting lane, never lost
                future.set_exception(exc)
            else:
                future.set_result(result)

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Schedule ``fn(*args)`` on the thread; await the returned future in the loop."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, contextvars.copy_context(), fn, args))
        return asyncio.wrap_future(future)

    def close(self) -> None:
        """Let the thread exit after the calls already queued (never blocks)."""
        self._jobs.put(None)


async def _finished_within(future: asyncio.Future[Any], timeout: float) -> bool:
    """Wait for ``future`` at most ``timeout`` seconds (``math.inf``: no limit); True if done.

    A done-callback and one timer: several times cheaper than ``asyncio.wait`` on this hot
    path (one call per consumer per tick).
    """
    if future.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[bool] = loop.create_future()

    def settle(result: bool) -> None:
        if not waiter.done():
            waiter.set_result(result)

    def on_done(_: asyncio.Future[Any]) -> None:
        settle(True)

    future.add_done_callback(on_done)
    timer = None if timeout == math.inf else loop.call_later(timeout, settle, False)
    try:
        return await waiter
    finally:
        future.remove_done_callback(on_done)
        if timer is not None:
            timer.cancel()


class Caller:
    """Calls one user function (producer or consumer), one call at a time.

    Async functions run as a named task, sync ones on this caller's own
    :class:`SyncWorker`; the current :class:`~aioconveyor.tick.Tick` is visible inside either
    way. :meth:`call` waits at most ``timeout`` seconds; on a timeout the call is cancelled,
    and a sync call (which cannot be cancelled) costs its worker: it is abandoned, and the
    next call gets a fresh thread.
    """

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name
        self.is_async = is_async_callable(fn)
        self.busy_since: float | None = None  # monotonic start of the call in progress
        self.abandoned = False  # after a timeout: the call had to be left running
        self._worker: SyncWorker | None = None

    def _start(self, tick: Tick, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        token = tick_module._set(tick)
        try:
            if self.is_async:
                call = self.fn(*args)
                if inspect.iscoroutine(call):
                    return asyncio.get_running_loop().create_task(call, name=f"{self.name}.call")
                future: asyncio.Future[Any] = asyncio.ensure_future(call)
                return future
            if self._worker is None:
                self._worker = SyncWorker(f"{self.name}.worker")
            return self._worker.call(self.fn, *args)
        finally:
            tick_module._reset(token)

    async def call(self, tick: Tick, *args: Any, timeout: float,
                   cancel_grace: float = 0.5) -> asyncio.Future[Any] | None:
        """Start the call and wait for it: its finished future, or None after ``timeout``.

        On a timeout the call is cancelled and given ``cancel_grace`` seconds to finish its
        cleanup; :attr:`abandoned` then says whether it had to be left behind (a sync call's
        thread, or a coroutine that ignored cancellation).
        """
        future = self._start(tick, args)
        self.busy_since = time.monotonic()
        try:
            if await _finished_within(future, timeout):
                return future
        except asyncio.CancelledError:
            future.cancel()
            raise
        finally:
            self.busy_since = None
        future.cancel()
        if not self.is_async:
            if self._worker is not None:
                self._worker.close()  # stuck in the call: leave the thread behind
                self._worker = None
            self.abandoned = True
        else:
            settled, _ = await asyncio.wait({future}, timeout=cancel_grace)
            self.abandoned = not settled
        return None

    @staticmethod
    async def result(future: asyncio.Future[Any], timeout: float = math.inf) -> Any:
        """The call's result (raising its exception); a sync function that returned a
        coroutine has it awaited here."""
        result = future.result()
        if inspect.isawaitable(result):
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                result = await result
        return result

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None
