"""What a process that runs a conveyor needs, shared by the command line (``cli.py``) and
the demo (``demo.py``): exit codes, SIGINT / SIGTERM / SIGHUP handling, logging set-up with
secrets masked, and the end-of-run summary.

It imports neither of them: ``cli`` imports ``demo`` (lazily, for the demo command) and both
import this module, so there is no import cycle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import NoReturn

from ._secrets import mask_text
from ._stats import ConveyorStats

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_FORCED",
    "EXIT_OK",
    "LOG_FORMAT",
    "ReloadSignal",
    "StopSignals",
    "force_exit",
    "setup_logging",
    "summary_lines",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_FORCED = 130

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
"""Timestamped lines on stderr (journald keeps them as they are)."""


def force_exit(code: int = EXIT_FORCED) -> NoReturn:
    """End the process now. A second signal means "do not wait": a normal exit would run
    the conveyor's atexit hook, which waits for the drain all over again."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# -- signals ---------------------------------------------------------------------------


class StopSignals:
    """While active, SIGINT and SIGTERM request a graceful stop: :attr:`event` is set and
    :attr:`received` names the signal. A second signal raises ``KeyboardInterrupt`` (force).

    Handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    def __init__(self, signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = tuple(signals)
        self.event = threading.Event()
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self.event.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a stop request; True if one came."""
        return self.event.wait(timeout)


class ReloadSignal:
    """While active, SIGHUP asks for a reload: the handler only sets :attr:`event`, and the
    main loop calls :meth:`take` and does the work outside the handler.

    Handlers can only be installed from the main thread, and only where SIGHUP exists
    (not on Windows); elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = getattr(signal, "SIGHUP", None)
        self.event = threading.Event()
        self._previous: object = None
        self._installed = False

    def __enter__(self) -> ReloadSignal:
        if self.signal is not None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signal, self._handle)
            self._installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._installed and self.signal is not None:
            signal.signal(self.signal, self._previous)  # type: ignore[arg-type]
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()

    def take(self) -> bool:
        """True (once) if a reload was asked for since the last call."""
        if not self.event.is_set():
            return False
        self.event.clear()
        return True


# -- logging and summaries -------------------------------------------------------------


class _MaskingFormatter(logging.Formatter):
    """Formats like LOG_FORMAT, then masks passwords and the config's secrets."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__(LOG_FORMAT)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record), self.secrets)


class _MaskingFilter(logging.Filter):
    """For handlers with their own layout (rich): masks the message itself."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def setup_logging(level: str, secrets: set[str] | None = None,
                  handler: logging.Handler | None = None) -> set[str]:
    """Send log records at ``level`` and above to ``handler`` (default: timestamped lines on
    stderr), masking secrets. Returns the set of secrets, to be filled in later."""
    secrets = set() if secrets is None else secrets
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_MaskingFormatter(secrets))
    else:
        handler.addFilter(_MaskingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return secrets


def summary_lines(stats: ConveyorStats, elapsed: float, why: str,
                  secrets: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """What a run did, for humans: one line for the conveyor, one per producer (if it has
    several), one per consumer."""
    late = stats.lateness
    lines = [
        f"summary: stopped ({why}) after {elapsed:.1f} s: {stats.ticks} ticks, "
        f"{stats.produced} produced, {stats.empty} empty, {stats.producer_errors} producer "
        f"errors, {stats.missed_ticks} missed; lateness p50 {late.p50_ms:.1f} ms, "
        f"p99 {late.p99_ms:.1f} ms, max {late.max_ms:.1f} ms",
    ]
    if len(stats.producers) > 1:  # one producer: the first line says it all
        for p in stats.producers:
            lines.append(mask_text(
                f"  producer {p.name}: {p.ticks} ticks, {p.produced} produced, {p.empty} "
                f"empty, {p.errors} errors, {p.missed_ticks} missed", secrets))
    for c in stats.consumers:
        line = (f"  {c.name}: {c.delivered} delivered, {c.errors} errors, {c.dropped} dropped, "
                f"{c.failed} failed, {c.queued} queued")
        if c.rejected:
            line += f", {c.rejected} rejected"
        if c.last_error:
            line += f"; last error: {c.last_error}"
        lines.append(mask_text(line, secrets))
    return lines
