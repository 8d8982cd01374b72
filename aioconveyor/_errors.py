"""Exceptions raised by aioconveyor.

The whole hierarchy::

    ConveyorError                      root of what aioconveyor raises on purpose
    ├── StartupError                   start() failed, e.g. a consumer's open() raised
    ├── RestartBudgetExceeded          a part had to be restarted too often: conveyor stopped
    ├── SettingError (ValueError,      a bad argument to a constructor or a bad config value:
    │       TypeError)                 ``.name`` says which (``queue_size``, ``consumers[2]``)
    ├── ConsumerTimeout (TimeoutError) one consumer call ran past its timeout (stats, logs)
    ├── ContainedError                 user code raised a BaseException (SystemExit, ...);
    │                                  caught so that it stays in its lane
    ├── RetryAfter                     raised *by a consumer*: wait this long, then retry
    └── Rejected                       raised *by a consumer*: bad data, don't retry

Every constructor (the conveyor, ``Consumer``, the schedules, the leader, the built-in
consumers) raises :class:`SettingError` for a bad or contradictory argument, at
construction time, before anything is opened.
"""

from __future__ import annotations

import email.utils
import re
import time
from datetime import datetime

__all__ = [
    "ConsumerTimeout",
    "ContainedError",
    "ConveyorError",
    "Rejected",
    "RestartBudgetExceeded",
    "RetryAfter",
    "SettingError",
    "StartupError",
    "retry_after_seconds",
]


class ConveyorError(Exception):
    """Root of the exceptions aioconveyor raises on purpose."""


class SettingError(ConveyorError, ValueError, TypeError):
    """An argument (or a config value) that cannot be used: wrong type, out of range, or
    contradicting another argument.

    ``name`` is the argument as the caller wrote it (``"queue_size"``, ``"consumers[2]"``,
    ``"sensors[0].key"``), ``value`` what was given, ``reason`` the message without the name
    (``"must be an int >= 1, got 0"``); ``str()`` is the two together. The config loader
    turns ``name`` into the TOML key (``consumers[1].queue_size``) without reading the text.

    It subclasses both ``ValueError`` and ``TypeError`` because before it existed the same
    mistake raised one or the other depending on where it was checked; code written
    against either (``except ValueError``, ``pytest.raises(TypeError)``) keeps working.
    """

    def __init__(self, name: str, value: object, reason: str, *,
                 subject: str | None = None) -> None:
        self.name = name
        self.value = value
        self.reason = reason
        self.subject = name if subject is None else subject
        super().__init__(f"{self.subject} {reason}" if self.subject else reason)

    def __reduce__(self) -> tuple[object, ...]:  # picklable, e.g. across processes
        return (_setting_error, (self.name, self.value, self.reason, self.subject))


def _setting_error(name: str, value: object, reason: str, subject: str) -> SettingError:
    return SettingError(name, value, reason, subject=subject)


class StartupError(ConveyorError):
    """The conveyor could not start (for example a consumer's ``open()`` raised)."""


class RestartBudgetExceeded(ConveyorError):
    """A part of the conveyor failed more often than the restart budget allows."""

    def __init__(self, component: str, restarts: int, window: float) -> None:
        super().__init__(
            f"{component} needed more than {restarts} restarts within {window:g} s"
        )
        self.component = component
        self.restarts = restarts
        self.window = window


class ConsumerTimeout(ConveyorError, TimeoutError):
    """A consumer call did not finish within its timeout."""

    def __init__(self, consumer: str, event_time: datetime | None, timeout: float) -> None:
        when = event_time.isoformat() if event_time is not None else "?"
        super().__init__(f"consumer {consumer!r} timed out after {timeout:g} s (tick {when})")
        self.consumer = consumer
        self.event_time = event_time
        self.timeout = timeout


class ContainedError(ConveyorError):
    """User code raised a ``BaseException`` that is not an ``Exception``.

    ``SystemExit`` (a helper calling ``sys.exit``), ``KeyboardInterrupt``, a
    ``CancelledError`` nobody asked for or ``GeneratorExit`` would end the event loop; the
    conveyor catches it at the call, wraps it in this, and treats it as that call failing.
    ``original`` is what was raised.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__}: {original}" if str(original)
                         else type(original).__name__)
        self.original = original


class RetryAfter(ConveyorError):
    """Raise from a consumer to make its lane wait ``seconds`` before retrying the same item.

    Typical use: an HTTP API answered 429 or 503 with a ``Retry-After`` header. Only the
    raising consumer's lane waits; the producer and the other consumers carry on.
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise SettingError("seconds", seconds, f"must be a number, got {seconds!r}")
        if not seconds >= 0 or seconds == float("inf"):
            raise SettingError("seconds", seconds,
                               f"must be a finite number >= 0, got {seconds!r}")
        super().__init__(message or f"retry after {seconds:g} s")
        self.seconds = float(seconds)


_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def retry_after_seconds(value: str | None, date: str | None = None, *,
                        now: float | None = None) -> float | None:
    """Seconds an HTTP ``Retry-After`` header asks to wait, or ``None`` if it says nothing
    usable (for :class:`RetryAfter`; 429 and 503 answers carry it).

    ``value`` is delta-seconds (``"120"``; a decimal fraction such as ``"1.5"``, which some
    servers send though RFC 9110 has only digits, is taken too) or an HTTP date. A date
    is counted from the answer's own ``Date`` header when there is one (so the server's
    clock and ours need not agree), else from ``now`` (default: the wall clock); a date in
    the past is 0. Negative, non-finite or other text is ``None``.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        until = email.utils.parsedate_to_datetime(value).timestamp()
        if date is not None:
            start = email.utils.parsedate_to_datetime(date).timestamp()
        else:
            start = time.time() if now is None else now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, until - start)


class Rejected(ConveyorError):
    """Raise from a consumer when data is bad and retrying cannot help.

    The lane does not retry: it counts the call's items as ``rejected`` (or only ``count``
    of them, the rest as delivered, e.g. after writing the good records of a batch), logs
    once, calls ``on_error`` and goes on with the next item.
    """

    def __init__(self, message: str = "", *, count: int | None = None) -> None:
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 1):
            raise SettingError("count", count, f"must be an int >= 1 or None, got {count!r}")
        super().__init__(message or "rejected")
        self.count = count
