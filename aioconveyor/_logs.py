"""Log a recurring failure once with its traceback, then at most once per window."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable


class LogLimiter:
    """Rate limit for repeated messages of the same kind.

    ``first(key)`` is true the first time a key is seen (log it in full, with traceback);
    ``due(key)`` is true when the key was last logged more than ``window`` seconds ago and
    returns how many repeats were suppressed meanwhile, so the next line can say so.
    """

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def check(self, key: Hashable) -> tuple[bool, bool, int]:
        """Return (log it?, first time?, repeats suppressed since the last line)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or now - last >= self.window:
            self._last[key] = now
            return True, last is None, self._suppressed.pop(key, 0)
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        return False, False, 0

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: Hashable,
        msg: str,
        *args: object,
        exc: BaseException | None = None,
    ) -> None:
        """Log ``msg`` (with ``exc``'s traceback the first time) unless rate-limited."""
        emit, first, suppressed = self.check(key)
        if not emit:
            return
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        exc_info = exc if (first and exc is not None) else None
        logger.log(level, msg, *args, exc_info=exc_info)
