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
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SyncWorker", "is_async_callable"]


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
