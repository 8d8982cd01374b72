"""The ``aioconveyor`` command (also ``python -m aioconveyor``).

* ``aioconveyor [demo] [options]``: the demo (a simulated solar inverter; see ``demo.py``).
* ``aioconveyor run CONFIG``: run the conveyor a TOML file describes until SIGTERM / Ctrl-C.
* ``aioconveyor check CONFIG``: build everything CONFIG describes, open nothing, report.

Exit codes: 0 done (also after SIGINT / SIGTERM, which stop gracefully: queues drained,
consumers closed), 1 the conveyor failed (a consumer could not open, the watchdog gave up),
2 bad command line or config file, 130 a second signal forced the stop.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import NoReturn

from . import __version__
from .config import ConfigError, LoadedConfig, load_config, mask_secrets
from .conveyor import AioConveyor
from .errors import ConveyorError
from .stats import ConveyorStats

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_FORCED",
    "EXIT_OK",
    "LOG_FORMAT",
    "StopSignals",
    "force_exit",
    "main",
    "setup_logging",
    "summary_lines",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_FORCED = 130

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
"""Timestamped lines on stderr (journald keeps them as they are)."""

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

COMMANDS = """\
commands:
  aioconveyor [demo] [options]           the demo above (the default command)
  aioconveyor run CONFIG [--set K=V]     run the conveyor a TOML file describes, until
                                         SIGTERM or Ctrl-C (see: aioconveyor run --help)
  aioconveyor check CONFIG [--set K=V]   validate CONFIG: build everything, open nothing

exit codes: 0 done (also after Ctrl-C / SIGTERM), 1 the conveyor failed,
            2 bad arguments or config file, 130 stop forced by a second Ctrl-C
"""


def _echo(text: str = "", *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


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


# -- logging and summaries -------------------------------------------------------------


class _MaskingFormatter(logging.Formatter):
    """Formats like LOG_FORMAT, then masks passwords and the config's secrets."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__(LOG_FORMAT)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record), self.secrets)


class _MaskingFilter(logging.Filter):
    """For handlers with their own layout (rich): masks the message itself."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message, self.secrets)
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
    """What a run did, for humans: one line for the conveyor, one per consumer."""
    late = stats.lateness
    lines = [
        f"summary: stopped ({why}) after {elapsed:.1f} s: {stats.ticks} ticks, "
        f"{stats.produced} produced, {stats.empty} empty, {stats.producer_errors} producer "
        f"errors, {stats.missed_ticks} missed; lateness p50 {late.p50_ms:.1f} ms, "
        f"p99 {late.p99_ms:.1f} ms, max {late.max_ms:.1f} ms",
    ]
    for c in stats.consumers:
        line = (f"  {c.name}: {c.delivered} delivered, {c.errors} errors, {c.dropped} dropped, "
                f"{c.failed} failed, {c.queued} queued")
        if c.rejected:
            line += f", {c.rejected} rejected"
        if c.last_error:
            line += f"; last error: {c.last_error}"
        lines.append(mask_secrets(line, secrets))
    return lines


# -- argument types --------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _level(text: str) -> str:
    if text.upper() not in LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LEVELS)}, got {text!r}")
    return text.upper()


def _device(text: str) -> str:
    if not text or not all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in text):
        raise argparse.ArgumentTypeError(
            f"expected letters, digits, '_' and '-' only, got {text!r}")
    return text


# -- parsers ---------------------------------------------------------------------------


def demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioconveyor",
        description=(
            "The aioconveyor demo: a simulated solar inverter (power following the sun, "
            "energy, grid voltage and frequency, temperature) read on the wall-clock grid "
            "and fanned out to the console, a CSV file and, if asked, PostgreSQL and MQTT, "
            "with a live status panel. Needs no servers. Ctrl-C or SIGTERM stops it cleanly "
            "and prints a summary."
        ),
        epilog=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--interval", type=_positive, default=2.0, metavar="SECONDS",
                        help="seconds between readings, on the UTC clock grid (default: 2)")
    parser.add_argument("--offset", type=_non_negative, default=0.0, metavar="SECONDS",
                        help="shift of the grid, 0 <= offset < interval (default: 0)")
    parser.add_argument("--count", type=_count, default=None, metavar="N",
                        help="stop after N readings (default: run until Ctrl-C)")
    parser.add_argument("--csv", metavar="PATH", default=None,
                        help="CSV file to append to (default: a new file in the temp folder; "
                             "its path is printed at start)")
    parser.add_argument("--postgres", metavar="DSN", default=None,
                        help="also write to PostgreSQL, table aioconveyor_demo (created if "
                             "missing), e.g. postgresql://user:pass@localhost/db")
    parser.add_argument("--mqtt", metavar="URL", default=None,
                        help="also publish to MQTT, topic aioconveyor/demo/<device>/state, "
                             "e.g. mqtt://localhost:1883")
    parser.add_argument("--ha-discovery", action="store_true",
                        help="with --mqtt: announce the sensors to Home Assistant (MQTT "
                             "discovery under homeassistant/)")
    parser.add_argument("--device", type=_device, default="demo-inverter", metavar="ID",
                        help="device id used in the data, the MQTT topic and Home Assistant "
                             "(default: demo-inverter)")
    parser.add_argument("--speed", type=_positive, default=1.0, metavar="FACTOR",
                        help="time-lapse for the simulated sun: 720 runs a day in 2 minutes "
                             "(default: 1, the real time of day)")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="seed the simulation's noise for repeatable numbers")
    parser.add_argument("--quiet", action="store_true",
                        help="no per-reading tables and no live panel; only the start lines "
                             "and the summary")
    parser.add_argument("--log-level", type=_level, default="WARNING", metavar="LEVEL",
                        help=f"log level: {', '.join(LEVELS)} (default: WARNING)")
    parser.add_argument("--version", action="version", version=f"aioconveyor {__version__}")
    return parser


def _config_parser(command: str) -> argparse.ArgumentParser:
    what = {
        "run": "Run the conveyor CONFIG describes until SIGTERM or Ctrl-C, then stop "
               "gracefully (drain queues, close consumers) and print a summary.",
        "check": "Validate CONFIG: read it, fill in ${ENV} references, import the producer, "
                 "build the consumers and the conveyor, open nothing. Prints what it would run.",
    }[command]
    parser = argparse.ArgumentParser(
        prog=f"aioconveyor {command}", description=what, epilog=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, metavar="CONFIG", help="the TOML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the file, e.g. --set conveyor.interval=0.5 or "
                             "--set consumers[0].path=out.csv (VALUE is read as TOML, else as "
                             "text); may be repeated")
    default = "INFO" if command == "run" else "WARNING"
    parser.add_argument("--log-level", type=_level, default=default, metavar="LEVEL",
                        help=f"log level: {', '.join(LEVELS)} (default: {default})")
    if command == "run":
        parser.add_argument("--stats-interval", type=_non_negative, default=0.0,
                            metavar="SECONDS",
                            help="log a one-line status every SECONDS (default: 0, never)")
    return parser


# -- commands --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``aioconveyor`` and ``python -m aioconveyor``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and args[0] in ("demo", "run", "check") else "demo"
    if args and args[0] == command:
        args = args[1:]
    if command == "demo":
        return _demo(args)
    options = _config_parser(command).parse_args(args)
    if command == "check":
        return _check(options)
    return _run(options)


def _demo(argv: list[str]) -> int:
    parser = demo_parser()
    args = parser.parse_args(argv)
    if args.ha_discovery and args.mqtt is None:
        parser.error("--ha-discovery needs --mqtt URL")
    if args.offset >= args.interval:
        parser.error(f"--offset must be smaller than --interval ({args.interval:g}), "
                     f"got {args.offset:g}")
    from .demo import Demo, DemoOptions  # rich and the consumers load only for the demo

    options = DemoOptions(
        interval=args.interval, offset=args.offset, count=args.count, csv=args.csv,
        postgres=args.postgres, mqtt=args.mqtt, ha_discovery=args.ha_discovery,
        device=args.device, speed=args.speed, seed=args.seed, quiet=args.quiet,
    )
    try:
        demo = Demo(options)
    except (TypeError, ValueError) as exc:
        parser.error(mask_secrets(str(exc)))
    except ImportError as exc:  # an optional dependency is missing
        _echo(f"aioconveyor: error: {exc}", err=True)
        return EXIT_CONFIG
    setup_logging(args.log_level, handler=demo.log_handler())
    return demo.run()


def _load(options: argparse.Namespace) -> LoadedConfig | None:
    try:
        return load_config(options.config, overrides=options.set)
    except ConfigError as exc:
        _echo(f"aioconveyor: error: {exc}", err=True)
        return None


def _check(options: argparse.Namespace) -> int:
    setup_logging(options.log_level)
    loaded = _load(options)
    if loaded is None:
        return EXIT_CONFIG
    _echo(f"{options.config}: OK")
    for line in loaded.describe():
        _echo(f"  {line}")
    return EXIT_OK


@dataclass(slots=True)
class _Status:
    """Periodic one-line status in the log (``--stats-interval``)."""

    every: float
    due: float = 0.0

    def maybe_log(self, conv: AioConveyor) -> None:
        now = time.monotonic()
        if not self.every or now < self.due:
            return
        if self.due:
            s = conv.stats()
            parts = ", ".join(f"{c.name} {c.delivered}/{c.errors}/{c.dropped}/{c.queued}"
                              for c in s.consumers)
            logger.info("status: %d ticks, %d missed, %d producer errors; consumers "
                        "(delivered/errors/dropped/queued): %s", s.ticks, s.missed_ticks,
                        s.producer_errors, parts or "none")
        self.due = now + self.every


def _run(options: argparse.Namespace) -> int:
    secrets = setup_logging(options.log_level)
    loaded = _load(options)
    if loaded is None:
        return EXIT_CONFIG
    secrets.update(loaded.secrets)
    conv = loaded.conveyor
    logger.info("config %s", options.config)
    for line in loaded.describe():
        logger.info("%s", line)
    started = time.monotonic()
    why = "finished"
    status = _Status(options.stats_interval)
    with StopSignals() as stop:
        try:
            conv.start()
        except ConveyorError as exc:
            logger.error("conveyor %s could not start: %s", conv.name, exc)
            return EXIT_FAILED
        logger.info("conveyor %s running; SIGTERM or Ctrl-C stops it", conv.name)
        try:
            while conv.running:
                status.maybe_log(conv)
                if stop.wait(0.2):
                    why = stop.received or "signal"
                    logger.info("%s received: stopping (draining queues, closing consumers; "
                                "again to force)", why)
                    conv.stop()
                    break
            conv.join(conv.stop_timeout + 2.0)
        except KeyboardInterrupt:
            logger.warning("second signal: forced stop, queued items may be lost")
            force_exit()
    if conv.exception is not None:
        why = f"failed: {conv.exception}"
    elif why == "finished" and conv.max_ticks is not None:
        why = f"max_ticks {conv.max_ticks} reached"
    for line in summary_lines(conv.stats(), time.monotonic() - started, why, secrets):
        _echo(line)
    if conv.exception is not None:
        logger.error("conveyor %s failed: %s", conv.name, conv.exception)
        return EXIT_FAILED
    return EXIT_OK
