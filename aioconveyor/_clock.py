"""Where time comes from: the single time source of the engine.

Every timer of a conveyor (ticks, retries and backoff, ``batch_age``, ``RetryAfter``, call
and open timeouts, the watchdog's restart window, the loop monitor, stop deadlines and
``health()``) reads the conveyor's :class:`Clock`, so a fake one
(:class:`aioconveyor.testing.FakeClock`) makes all of it deterministic and fast.
:func:`wait_done` and :func:`timeout` are the two ways the engine bounds a wait on a clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import math
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "Timer", "running_clock", "timeout", "wait_done"]


class Timer(Protocol):
    """What :meth:`Clock.call_later` returns: a callback that can still be called off."""

    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """Wall time, monotonic time and a way to sleep until a wall time."""

    def time(self) -> float:
        """Wall-clock POSIX seconds (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go backwards (for measuring durations)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``time() >= deadline`` (or soon after): a wall-clock grid time."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on the monotonic clock."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object], *,
                   background: bool = False) -> Timer:
        """Call ``callback()`` in the running loop once ``delay`` monotonic seconds passed.

        ``background`` marks a timer that only observes (the loop monitor's heartbeat): a
        fake clock never jumps ahead just to fire one.
        """
        ...

    def track(self, work: concurrent.futures.Future[Any]) -> None:
        """Note work the loop waits for outside itself (a sync call on a thread).

        A fake clock waits a little (real time) for it before jumping ahead; the real
        clock ignores it.
        """
        ...


class SystemClock:
    """The real clocks, with a punctual sleep whose CPU cost is bounded.

    asyncio timers wake up to about a millisecond late (epoll has millisecond timeouts).
    On Linux the sleep therefore waits on a ``timerfd`` armed for the wall-clock deadline
    (``CLOCK_REALTIME``, absolute), which the kernel fires within microseconds; the thread
    itself still needs a moment to be scheduled again (a sleeping virtual CPU takes 0.1 to
    0.3 ms), so the timer is armed ``margin`` seconds early and the rest is spent yielding
    to the loop (``sleep(0)``), re-reading the wall clock each time: punctual, but that
    stretch keeps a core busy.

    With ``margin=None`` (the default) the margin follows the wake-up delays actually
    seen: their 95th percentile plus 0.1 ms, between 0.1 and 1 ms (never more than the
    sleep). ``busy`` bounds the stretch spent waiting actively: at most ``busy`` times
    the sleep (0.01, the default), and at most 0.1 ms unless ``busy=1``. When more than
    that is left after the first wake-up,
    the clock sleeps once more on the timer, until a few tens of microseconds before the
    deadline (as early as such short sleeps are seen to wake late: a virtual CPU idle
    for a moment wakes far faster than one idle for milliseconds), and spins only that:
    nearly as punctual as spinning the whole margin, at about the CPU of not spinning.
    ``busy=0`` never wakes early nor spins (the least CPU: a tick is as late as the
    machine wakes, like a thread in ``time.sleep``); ``busy=1`` spins the whole margin
    (the most punctual: at 1 kHz about a third of a core).

    Elsewhere (or with ``precise=False``) the sleep uses asyncio timers and yields for the
    last ``spin`` seconds. Either way long sleeps are cut into pieces of at most
    ``max_chunk`` seconds, so a wall-clock step or a suspend is noticed within a chunk.
    """

    def __init__(self, *, spin: float = 0.002, max_chunk: float = 1.0,
                 precise: bool = True, margin: float | None = None,
                 busy: float = 0.01) -> None:
        if not 0.0 <= busy <= 1.0:  # also refuses nan
            raise ValueError(f"busy must be a share between 0 and 1, got {busy!r}")
        self.spin = spin
        self.max_chunk = max_chunk
        self.margin = margin
        self.busy = busy
        self.precise = precise and _timerfd_available()
        self._late: deque[float] = deque(maxlen=64)  # recent timer wake-up delays
        self._wakes = 0
        self._auto_margin = _DEFAULT_MARGIN
        self._near_late: deque[float] = deque(maxlen=16)  # wake-up delays of short sleeps
        self._auto_near = _DEFAULT_NEAR
        self._timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Waker]] = (
            weakref.WeakKeyDictionary()
        )

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # the loop's clock is time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], object], *,
                   background: bool = False) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    def track(self, work: concurrent.futures.Future[Any]) -> None:
        pass

    async def sleep_until(self, deadline: float) -> None:
        if self.precise:
            await self._sleep_timerfd(deadline)
            return
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                return
            if remaining > self.spin:
                await asyncio.sleep(min(remaining - self.spin, self.max_chunk))
            else:
                await asyncio.sleep(0)

    def _margin(self, remaining: float) -> float:
        """How early the (first) timer is armed for a sleep of ``remaining`` seconds."""
        if self.busy == 0:
            return 0.0
        margin = self._auto_margin if self.margin is None else self.margin
        return min(margin, remaining)

    def _note_wake(self, late: float) -> None:
        self._late.append(late)
        self._wakes += 1
        # every 16th wake-up (the window stays full at 64: its length cannot tell)
        if self.margin is None and self._wakes % 16 == 0:
            ordered = sorted(self._late)
            p95 = ordered[int(0.95 * (len(ordered) - 1))]
            self._auto_margin = min(_MAX_MARGIN, max(_MIN_MARGIN, p95 + _MIN_MARGIN))

    async def _sleep_timerfd(self, deadline: float) -> None:
        now = time.time()
        total = deadline - now
        if total <= 0:
            return
        busy = self.busy
        # the most this sleep may spend waiting actively (but with busy=1, when a second
        # short sleep can do it, at most _MAX_SPIN)
        budget = total * busy if busy >= 1.0 else min(total * busy, _MAX_SPIN)
        wake_at = deadline - self._margin(total)
        loop = waker = None
        try:
            if wake_at > now:
                loop = asyncio.get_running_loop()
                waker = self._take_waker(loop)
                while now < wake_at:
                    target = min(wake_at, now + self.max_chunk)
                    await waker.wait(target)
                    now = time.time()
                    if target == wake_at:
                        self._note_wake(max(0.0, now - wake_at))
            if deadline - now > budget > 0:
                # spinning the rest would take more than `busy` allows: sleep once more, a
                # short sleep (a virtual CPU idle for a moment wakes within microseconds)
                near_at = deadline - self._auto_near
                if near_at > now:
                    if waker is None:
                        loop = asyncio.get_running_loop()
                        waker = self._take_waker(loop)
                    await waker.wait(near_at)
                    now = time.time()
                    self._note_near(max(0.0, now - near_at))
        except BaseException:
            if waker is not None:
                waker.close()
            raise
        if waker is not None:
            self._timers[loop].append(waker)  # type: ignore[index]
        while time.time() < deadline:  # noqa: ASYNC110 - the deliberate last short stretch
            await asyncio.sleep(0)

    def _take_waker(self, loop: asyncio.AbstractEventLoop) -> _Waker:
        wakers = self._timers.get(loop)
        if wakers is None:
            wakers = self._timers[loop] = []
            weakref.finalize(loop, _close_all, wakers)
        return wakers.pop() if wakers else _Waker(loop)

    def _note_near(self, late: float) -> None:
        near = self._near_late
        near.append(late)
        if len(near) == near.maxlen:  # every 16th wake-up
            ordered = sorted(near)
            near.clear()
            self._auto_near = min(_MAX_NEAR, ordered[int(_NEAR_QUANTILE * (len(ordered) - 1))])


_running: contextvars.ContextVar[Clock | None] = contextvars.ContextVar(
    "aioconveyor_clock", default=None
)


def running_clock() -> Clock | None:
    """The clock of the conveyor whose loop runs this code (None outside a conveyor).

    Set for everything the engine runs (its tasks inherit it), so work a consumer sends to
    a thread of its own can be reported with ``track()`` (see ``SyncWorker.call``).
    """
    return _running.get()



class ClockedBackend:
    """What a leader backend needs of a clock: the one it was given (``self._clock``), or
    else the clock of the conveyor that first asks it (:func:`running_clock`), or else a
    plain :class:`SystemClock`; looked up once, then kept."""

    _clock: Clock | None

    def _time(self) -> Clock:
        if self._clock is None:
            self._clock = running_clock() or SystemClock(precise=False)
        return self._clock

    def _now(self) -> float:
        return self._time().monotonic()

async def wait_done(clock: Clock, future: asyncio.Future[Any], seconds: float) -> bool:
    """Wait for ``future`` at most ``seconds`` on ``clock`` (``math.inf``: no limit); True if
    it is done. Never cancels it.

    A done-callback and one timer: several times cheaper than ``asyncio.wait`` on this hot
    path (one call per consumer per tick).
    """
    if future.done():
        return True
    waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def settle(result: bool) -> None:
        if not waiter.done():
            waiter.set_result(result)

    def on_done(_: asyncio.Future[Any]) -> None:
        settle(True)

    future.add_done_callback(on_done)
    timer = None if seconds == math.inf else clock.call_later(seconds, lambda: settle(False))
    try:
        return await waiter
    finally:
        future.remove_done_callback(on_done)
        if timer is not None:
            timer.cancel()


@asynccontextmanager
async def timeout(clock: Clock, seconds: float | None) -> AsyncIterator[None]:
    """Like ``asyncio.timeout(seconds)``, but ``seconds`` pass on ``clock``.

    Raises ``TimeoutError`` when the time is up; ``None`` or ``math.inf`` means no limit.
    """
    async with asyncio.timeout(None) as scope:
        timer = None
        if seconds is not None and seconds != math.inf:
            loop = asyncio.get_running_loop()

            def expire() -> None:
                if not scope.expired():
                    scope.reschedule(loop.time())

            timer = clock.call_later(seconds, expire)
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()


_DEFAULT_MARGIN = 0.0003
_MIN_MARGIN = 0.0001
_MAX_MARGIN = 0.001
#: The second, short sleep ends this long before the deadline at first, then as early as
#: that many of its recent wake-up delays (the quantile), at most _MAX_NEAR.
_DEFAULT_NEAR = 0.00002
_NEAR_QUANTILE = 0.75
_MAX_NEAR = 0.0001
#: Below busy=1, a sleep spins at most this long (seconds) after its first wake-up.
_MAX_SPIN = 0.0001


def _close_all(wakers: list[_Waker]) -> None:
    while wakers:
        wakers.pop().timer.close()  # the loop is gone, and its selector with it


class _Waker:
    """A timerfd that stays registered with its loop's selector between sleeps.

    Adding and removing the reader around every sleep cost two ``epoll_ctl`` calls and
    the selector's bookkeeping on each tick; registered once, a sleep is an arm, a future
    and the fd's read when it fires."""

    __slots__ = ("loop", "timer", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timer = _TimerFd()
        self.waiter: asyncio.Future[None] | None = None
        try:
            loop.add_reader(self.timer.fd, self._fired)
        except BaseException:
            self.timer.close()
            raise

    def _fired(self) -> None:
        self.timer.clear()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, at: float) -> None:
        """Return once the wall clock reached ``at`` (or soon after)."""
        waiter = self.waiter = self.loop.create_future()
        self.timer.arm(at)
        try:
            await waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        """Unregister and close the fd (a sleep that ended with an exception)."""
        try:
            self.loop.remove_reader(self.timer.fd)
        finally:
            self.timer.close()


# -- timerfd (Linux): os.timerfd_* on Python >= 3.13, else libc through ctypes --------------

_CLOCK_REALTIME = 0
_TFD_TIMER_ABSTIME = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000

_libc: Any = None
_itimerspec: Any = None
_checked: bool | None = None


def _timerfd_available() -> bool:
    """True when timerfds can be used (Linux); loads libc through ctypes once if needed."""
    global _checked, _libc, _itimerspec
    if _checked is not None:
        return _checked
    _checked = False
    if not sys.platform.startswith("linux"):
        return False
    if hasattr(os, "timerfd_create"):
        _checked = True
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int,
                                         ctypes.POINTER(Itimerspec), ctypes.c_void_p]
        fd = libc.timerfd_create(_CLOCK_REALTIME, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            return False
        os.close(fd)
    except (OSError, AttributeError, ImportError):
        return False
    _libc, _itimerspec = libc, Itimerspec
    _checked = True
    return True


class _TimerFd:
    """One non-blocking ``CLOCK_REALTIME`` timerfd, armed for absolute wall-clock times."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        if _libc is None:
            self.fd: int = os.timerfd_create(  # type: ignore[attr-defined,unused-ignore]
                _CLOCK_REALTIME, flags=_TFD_NONBLOCK | _TFD_CLOEXEC
            )
        else:
            self.fd = _libc.timerfd_create(_CLOCK_REALTIME, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if self.fd < 0:
                raise OSError(_errno(), "timerfd_create failed")

    def arm(self, at: float) -> None:
        """Make the fd readable once the wall clock reaches ``at`` (POSIX seconds)."""
        if _libc is None:
            os.timerfd_settime(  # type: ignore[attr-defined,unused-ignore]
                self.fd, flags=_TFD_TIMER_ABSTIME, initial=at
            )
            return
        spec = _itimerspec()
        sec = int(at)
        spec.it_value.tv_sec = sec
        spec.it_value.tv_nsec = int((at - sec) * 1e9)
        if _libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, spec, None) != 0:
            raise OSError(_errno(), "timerfd_settime failed")

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()
