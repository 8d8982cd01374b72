"""Log a recurring failure once with its traceback, then less and less often while it lasts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from ._clock import running_clock


@dataclass(slots=True)
class _Burst:
    last_line: float
    last_seen: float
    window: float
    suppressed: int = 0


class LogLimiter:
    """Rate limit for repeated messages of the same kind (key), once per burst.

    The first occurrence of a key is logged in full (with traceback). While it keeps
    recurring, the next line comes ``window`` seconds later saying how many repeats it
    stood for, and each further one twice as long after the previous (up to
    ``max_window``): a failure that lasts ten minutes writes four lines, not one per
    item. A key quiet for ``window`` seconds starts a new burst.

    ``now`` is the clock read. By default it is the ``monotonic`` of the clock of the
    conveyor whose code first asks (:func:`~aioconveyor._clock.running_clock`: a consumer's
    limiter follows a ``FakeClock`` like every engine timer), looked up once and then kept;
    outside any conveyor, ``time.monotonic`` until one is found.
    """

    def __init__(self, window: float = 60.0, *, max_window: float = 3600.0,
                 now: Callable[[], float] | None = None) -> None:
        self.window = window
        self.max_window = max_window
        self._now = now
        self._bursts: dict[Hashable, _Burst] = {}

    def _time(self) -> float:
        if self._now is None:
            clock = running_clock()
            if clock is None:
                return time.monotonic()
            self._now = clock.monotonic
            self._bursts.clear()  # times of another clock: not comparable with this one's
        return self._now()

    def check(self, key: Hashable) -> tuple[bool, bool, int]:
        """Return (log it?, first of a burst?, repeats suppressed since the last line)."""
        now = self._time()
        burst = self._bursts.get(key)
        if burst is None or now - burst.last_seen >= self.window:
            self._bursts[key] = _Burst(now, now, self.window)
            return True, True, burst.suppressed if burst is not None else 0
        burst.last_seen = now
        if now - burst.last_line >= burst.window:
            suppressed, burst.suppressed = burst.suppressed, 0
            burst.last_line = now
            burst.window = min(self.max_window, burst.window * 2)
            return True, False, suppressed
        burst.suppressed += 1
        return False, False, 0

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: Hashable,
        msg: str,
        *args: object,
        exc: BaseException | None = None,
    ) -> bool:
        """Log ``msg`` (with ``exc``'s traceback the first time) unless rate-limited;
        True if a line was written."""
        emit, first, suppressed = self.check(key)
        if not emit:
            return False
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        exc_info = exc if (first and exc is not None) else None
        logger.log(level, msg, *args, exc_info=exc_info)
        return True
