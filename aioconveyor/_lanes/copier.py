"""Deep copies for the lanes, kept off the event loop once they are not cheap.

Every lane takes its own copy of an item when it is about to deliver it, not when the
tick fans out, so a tick costs the loop O(consumers) appends whatever the payload. A lane
copies inline while its copies are measured to be cheap (below :data:`INLINE_LIMIT`), and
on the conveyor's copier thread otherwise, so a 50 MB payload never blocks the loop.

The object a producer returns is therefore read by the copies after the producer has
returned it: a producer must hand over a new object each tick (or a copy of the state it
keeps), not change one it returned before.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from typing import Any

from .._clock import Clock
from .._workers import SyncWorker

__all__ = ["Copier"]

#: A lane whose last copy took longer than this (seconds) makes the next one on a thread.
INLINE_LIMIT = 0.0005


#: On the copier thread, a copy lets go of the GIL after about this much work (seconds).
SLICE = 0.001
#: ... for this long (seconds): long enough for a thread waiting for the GIL to take it.
PAUSE = 0.00005
#: Lists and dicts with fewer items than this are copied without a look at the time.
SLICED_MIN = 64
#: The copier thread stands aside from this long (seconds) before a tick's time ...
HOLD_BEFORE = 0.03
#: ... until this long after it.
HOLD_AFTER = 0.005


def _timed_copy(data: Any) -> tuple[Any, float]:
    # perf_counter measures the CPU work of one copy (to choose where the next one runs);
    # it is not a timer, so it stays off the conveyor's Clock on purpose
    start = time.perf_counter()
    result = deep_copy(data)
    return result, time.perf_counter() - start


#: Types ``copy.deepcopy`` returns as they are (immutable, exact types: not subclasses).
_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes})
#: Plain data (see :func:`deep_copy`) deeper or wider than this goes to ``copy.deepcopy``.
PLAIN_DEPTH = 8
PLAIN_ITEMS = 256


class _NotPlain(Exception):
    pass


def deep_copy(data: Any) -> Any:
    """``copy.deepcopy(data)``, several times quicker for the usual small payload.

    Plain data (dicts and lists, at most :data:`PLAIN_DEPTH` deep and :data:`PLAIN_ITEMS`
    wide, of ``str``/``int``/``float``/``bool``/``None``/``bytes``/``complex`` keys and
    values, each container appearing once) is copied without deepcopy's memo and dispatch
    (about 4 us for a three-item dict, per consumer per tick); the result is the same as
    deepcopy's: new containers, the same immutable values. Anything else, or a container
    met twice (shared or cyclic: deepcopy keeps those shared), is left to
    ``copy.deepcopy``."""
    cls = type(data)
    if cls in _ATOMIC:
        return data
    atomic = _ATOMIC
    if cls is dict and len(data) <= PLAIN_ITEMS:
        for k, v in data.items():
            if type(k) not in atomic or type(v) not in atomic:
                break
        else:  # flat: a new dict of the same values is what deepcopy makes
            return data.copy()
    elif cls is list and len(data) <= PLAIN_ITEMS:
        for v in data:
            if type(v) not in atomic:
                break
        else:
            return data.copy()
    if cls is dict or cls is list:
        try:
            return _plain(data, set(), 0)
        except _NotPlain:
            pass
    return copy.deepcopy(data)


def _plain(x: Any, seen: set[int], depth: int) -> Any:
    cls = type(x)
    if (cls is not dict and cls is not list) or depth > PLAIN_DEPTH or len(x) > PLAIN_ITEMS:
        raise _NotPlain
    if id(x) in seen:
        raise _NotPlain
    seen.add(id(x))
    atomic = _ATOMIC
    if cls is list:
        return [v if type(v) in atomic else _plain(v, seen, depth + 1) for v in x]
    y = {}
    for k, v in x.items():
        if type(k) not in atomic:
            raise _NotPlain
        y[k] = v if type(v) in atomic else _plain(v, seen, depth + 1)
    return y


class _Slicer:
    """One copy on the copier thread, made in slices (see :meth:`copy`)."""

    __slots__ = ("clock", "held", "mark", "next_tick", "paused")

    def __init__(self, clock: Clock, next_tick: Callable[[], float | None] | None) -> None:
        self.clock = clock
        self.next_tick = next_tick
        self.mark = time.perf_counter()  # end of the last pause
        self.paused = 0.0  # seconds spent pausing, left out of the copy's cost
        self.held: float | None = None  # the tick already stood aside for

    def copy(self, data: Any) -> tuple[Any, float]:
        """:func:`_timed_copy` for the copier thread: the same copy, made in slices.

        ``copy.deepcopy`` is pure Python and holds the GIL; the loop thread, woken for a
        tick, waits for the GIL up to ``sys.getswitchinterval()`` (5 ms) each time it has
        let go of it (every ``epoll``), which made ticks 5-11 ms late while a 50 MB copy
        ran. So a long list is copied a slice of items at a time and a long dict item by
        item, all with the one memo of ``deepcopy`` (shared and recursive objects come out
        as ``deepcopy`` makes them), and after about :data:`SLICE` of work the thread
        sleeps :data:`PAUSE`, which hands the GIL to the loop if it is waiting. Around
        each tick's time (from :data:`HOLD_BEFORE` before to :data:`HOLD_AFTER` after) it
        stands aside entirely, so that neither a slice nor a garbage collection its
        allocations set off (tens of ms with millions of objects, GIL held) delays the
        tick. (The switch interval and the collector are process-wide: a library leaves
        them alone.)
        """
        start = self.mark = time.perf_counter()
        result = self._sliced(data, {})
        return result, time.perf_counter() - start - self.paused

    def _sliced(self, x: Any, memo: dict[int, Any]) -> Any:
        cls = type(x)
        if cls is not list and cls is not dict:
            return copy.deepcopy(x, memo)
        d = id(x)
        if d in memo:
            return memo[d]
        y: Any
        if cls is list:  # as copy._deepcopy_list
            y = []
            memo[d] = y
            if len(x) < SLICED_MIN:
                y.extend([self._sliced(item, memo) for item in x])
            else:
                step = SLICED_MIN
                i = 0
                while i < len(x):
                    t = time.perf_counter()
                    # the slice is kept alive by the memo (as deepcopy keeps what it
                    # copied), so no later object can reuse its id
                    y.extend(copy.deepcopy(x[i:i + step], memo))
                    i += step
                    took = time.perf_counter() - t
                    step = max(1, min(4 * step, int(step * SLICE / took) if took > 0
                                      else 4 * step))
                    self._pause()
        else:  # as copy._deepcopy_dict
            y = {}
            memo[d] = y
            check = len(x) >= SLICED_MIN
            for key, value in x.items():
                y[copy.deepcopy(key, memo)] = self._sliced(value, memo)
                if check:
                    self._pause()
        memo.setdefault(id(memo), []).append(x)  # as copy._keep_alive
        return y

    def _pause(self) -> None:
        now = time.perf_counter()
        if now - self.mark < SLICE:
            return
        wait = PAUSE
        due = self.next_tick() if self.next_tick is not None else None
        if due is not None and due != self.held:
            until = due - self.clock.time()
            if -HOLD_AFTER < until < HOLD_BEFORE:  # at most once per tick, whatever the clock
                self.held = due
                wait = max(PAUSE, until + HOLD_AFTER)
        time.sleep(wait)
        self.mark = time.perf_counter()
        self.paused += self.mark - now


class Copier:
    """One per conveyor: the thread that makes the big copies, shared by its lanes."""

    def __init__(self, name: str, clock: Clock,
                 next_tick: Callable[[], float | None] | None = None) -> None:
        """``next_tick``: the time (``clock.time()``) of the next tick, if known; read
        from the copier thread."""
        self._clock = clock
        self._next_tick = next_tick
        self._worker = SyncWorker(f"aioconveyor[{name}].copier")
        # what the last copy of any lane cost (seconds): where a lane's first copy is made.
        # Sending the first copies of 10,000 lanes to the thread kept 10,000 futures and
        # callbacks alive for a whole tick, and the collector's full runs paid for them
        self._last: float | None = None

    def copy_here(self, data: Any, last: float | None) -> tuple[Any, float] | None:
        """The copy made at once, in the loop, when it is known to be cheap (the lane's
        last copy, or before its first the last copy of any lane, took less than
        :data:`INLINE_LIMIT`); None when it is for the thread (:meth:`copy`). A plain
        call: no coroutine for the common, cheap case."""
        if last is None:
            last = self._last
        if last is None or last >= INLINE_LIMIT:
            return None
        start = time.perf_counter()  # _timed_copy() written out: once per item per lane
        made = deep_copy(data)
        cost = self._last = time.perf_counter() - start
        return made, cost

    async def copy(self, data: Any, last: float | None) -> tuple[Any, float]:
        """A deep copy of ``data`` and what it cost (seconds), given what the lane's last
        copy cost (None before its first: then the last copy of any lane counts); raises
        what ``copy.deepcopy`` raises.

        The lane keeps the cost as a float of its own, not in an object: one object less
        per lane for the collector."""
        if last is None:  # the lane's first copy: as costly as the last one made, probably
            last = self._last  # (every lane copies the same item of a tick)
        if last is not None and last < INLINE_LIMIT:
            result = _timed_copy(data)
        else:
            work = self._worker.submit(_Slicer(self._clock, self._next_tick).copy, data)
            self._clock.track(work)
            result = await asyncio.wrap_future(work)
        self._last = result[1]
        return result

    def close(self) -> None:
        self._worker.close()
