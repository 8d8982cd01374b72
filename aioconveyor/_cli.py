"""The ``aioconveyor`` command (also ``python -m aioconveyor``).

* ``aioconveyor [demo] [options]``: the demo (a simulated solar inverter; see ``demo.py``).
* ``aioconveyor run CONFIG``: run the conveyor a TOML file describes until SIGTERM / Ctrl-C;
  SIGHUP re-reads CONFIG and applies its consumer and producer changes (see ``reload.py``).
* ``aioconveyor check CONFIG``: build everything CONFIG describes, open nothing, report
  (with ``[[producers]]``: which producer feeds which consumers, on which schedule).
* ``aioconveyor health URL``: ask a running conveyor's ``/healthz`` (exit 0 healthy, else 1),
  for Docker's ``HEALTHCHECK`` and other probes.
* ``aioconveyor ha-clear CONFIG [--producer NAME]``: remove the Home Assistant devices the
  file's MQTT consumers announce (empty retained payloads on their discovery topics).

Exit codes: 0 done (also after SIGINT / SIGTERM, which stop gracefully: queues drained,
consumers closed), 1 the conveyor failed (at start: a consumer with ``startup = "fail"``
could not open; later: the watchdog gave up, see ``conv.exception``), 2 bad command line or
config file, 130 a second signal forced the stop. A consumer with the default
``startup = "retry"`` that cannot open does not fail the run: its lane retries (logged once
per burst by the lane) and ``/readyz`` answers 503 until it is open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from ._config import ConfigError, LoadedConfig, format_listen, load_config
from ._conveyor import AioConveyor
from ._errors import ConveyorError
from ._process import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    ReloadSignal,
    StopSignals,
    force_exit,
    setup_logging,
    summary_lines,
)
from ._reload import Reloader
from ._secrets import mask_text

if TYPE_CHECKING:
    from ._group_nats import NatsGroup
    from ._group_postgres import PostgresGroup

__all__ = ["main"]

logger = logging.getLogger(__name__)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

COMMANDS = """\
commands:
  aioconveyor [demo] [options]           the demo above (the default command)
  aioconveyor run CONFIG [--set K=V]     run the conveyor a TOML file describes, until
                                         SIGTERM or Ctrl-C; SIGHUP reloads CONFIG
                                         (see: aioconveyor run --help)
  aioconveyor check CONFIG [--set K=V]   validate CONFIG: build everything, open nothing
  aioconveyor health URL [--timeout S]   exit 0 if URL (a running conveyor's /healthz)
                                         answers 200, else 1 and why
  aioconveyor ha-clear CONFIG [--producer NAME]
                                         remove the Home Assistant devices CONFIG's MQTT
                                         consumers announce (their retained configs)
  aioconveyor group CONFIG [--set K=V]   the live members of CONFIG's [leader] group
                                         (type = "postgres-group" or "nats-group") and
                                         the producers assigned to each

exit codes: 0 done (also after Ctrl-C / SIGTERM; health: healthy), 1 the conveyor
            failed (health: unhealthy or unreachable), 2 bad arguments or config file,
            130 stop forced by a second Ctrl-C
"""


def _echo(text: str = "", *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


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


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535 (0: any free port), "
                                         f"got {text!r}")
    return value


def _level(text: str) -> str:
    if text.upper() not in LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LEVELS)}, got {text!r}")
    return text.upper()


def _url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"expected an http:// URL like http://127.0.0.1:9108/healthz, got {text!r}")
    try:
        _ = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} in {text!r}") from None
    if parts.path in ("", "/"):
        parts = parts._replace(path="/healthz")
    return urllib.parse.urlunsplit(parts)


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
                        help="also publish to MQTT, topic aioconveyor/_demo/<device>/state, "
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
    parser.add_argument("--status-port", type=_port, default=None, metavar="PORT",
                        help="serve the live status page (and /metrics, /healthz) on "
                             "http://127.0.0.1:PORT/; 0 picks a free port; the URL is printed "
                             '(needs the [metrics] extra: pip install "aioconveyor[metrics]")')
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
               "gracefully (drain queues, close consumers) and print a summary. SIGHUP "
               "re-reads CONFIG: consumers and [[producers]] added, changed or removed there "
               "are added, replaced or removed without losing queued items; a broken file is "
               "logged and ignored; changes to [conveyor], [producer], [leader] and [metrics] "
               "need a restart.",
        "group": "Show the group of CONFIG's [leader] (type = \"postgres-group\" or "
                 "\"nats-group\"): its live members and how many producers each is assigned "
                 "(PostgreSQL: also how many it holds, and the producers nobody holds; NATS: "
                 "each member's heartbeat age and its producers). Connects to the server; "
                 "joins nothing.",
        "check": "Validate CONFIG: read it, fill in ${ENV} references, import the producer, "
                 "build the consumers and the conveyor, open nothing. Prints what it would run.",
        "ha-clear": "Remove from Home Assistant what the MQTT consumers of CONFIG announce: "
                    "publish an empty retained payload to every discovery config topic of "
                    "their devices and to the devices' availability topics (Home Assistant "
                    "then deletes the entities and devices). Stop the conveyor first: a "
                    "running one announces its devices again on every connect.",
    }[command]
    parser = argparse.ArgumentParser(
        prog=f"aioconveyor {command}", description=what, epilog=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, metavar="CONFIG",
                        help="the TOML file (one: several producers go in one file as "
                             "[[producers]] tables)")
    parser.add_argument("more", nargs="*", help=argparse.SUPPRESS)  # refused with a hint
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the file, e.g. --set conveyor.interval=0.5 or "
                             "--set consumers[0].path=out.csv (VALUE is read as TOML, else as "
                             "text); may be repeated")
    default = "INFO" if command == "run" else "WARNING"
    parser.add_argument("--log-level", type=_level, default=default, metavar="LEVEL",
                        help=f"log level: {', '.join(LEVELS)} (default: {default})")
    if command == "ha-clear":
        parser.add_argument("--producer", metavar="NAME", default=None,
                            help="only the device of this producer (with discovery = a table "
                                 "per producer); default: every device")
    if command == "run":
        parser.add_argument("--stats-interval", type=_non_negative, default=0.0,
                            metavar="SECONDS",
                            help="log a one-line status every SECONDS (default: 0, never)")
    return parser


def health_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioconveyor health",
        description=(
            "Ask a running conveyor whether it is healthy: GET URL (its /healthz, served "
            "with [metrics] listen = \"host:port\") and exit 0 if the answer is 200, else 1 "
            "with the reason in one line (the problems the conveyor reports, connection "
            "refused, no answer in time). For Docker's HEALTHCHECK, Kubernetes exec probes "
            "and scripts. Proxy settings of the environment are not used."
        ),
        epilog="example: aioconveyor health http://127.0.0.1:9108/healthz --timeout 3\n\n"
               + COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", type=_url, metavar="URL",
                        help="e.g. http://127.0.0.1:9108/healthz (a URL without a path means "
                             "/healthz; /readyz works too)")
    parser.add_argument("--timeout", type=_positive, default=5.0, metavar="SECONDS",
                        help="seconds to wait for the connection and for the answer; longer "
                             "counts as unhealthy (a blocked conveyor cannot answer) "
                             "(default: 5)")
    return parser


# -- commands --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``aioconveyor`` and ``python -m aioconveyor``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = (args[0] if args and args[0] in ("demo", "run", "check", "health", "ha-clear",
                                                 "group") else "demo")
    if args and args[0] == command:
        args = args[1:]
    if command == "demo":
        return _demo(args)
    if command == "health":
        return _health(health_parser().parse_args(args))
    parser = _config_parser(command)
    options = parser.parse_args(args)
    if options.more:
        files = " ".join([str(options.config), *options.more])
        parser.error(f"one CONFIG file per conveyor, got {1 + len(options.more)} ({files}); to "
                     "run several producers in one conveyor (sharing its consumers, one "
                     "connection each), describe them in one file as [[producers]] tables "
                     "(see docs/config.md, 'Many producers')")
    if command == "check":
        return _check(options)
    if command == "ha-clear":
        return _ha_clear(options)
    if command == "group":
        return _group(options)
    return _run(options)


def _demo(argv: list[str]) -> int:
    parser = demo_parser()
    args = parser.parse_args(argv)
    if args.ha_discovery and args.mqtt is None:
        parser.error("--ha-discovery needs --mqtt URL")
    if args.offset >= args.interval:
        parser.error(f"--offset must be smaller than --interval ({args.interval:g}), "
                     f"got {args.offset:g}")
    from ._demo import Demo, DemoOptions  # rich and the consumers load only for the demo

    try:
        options = DemoOptions(
            interval=args.interval, offset=args.offset, count=args.count, csv=args.csv,
            postgres=args.postgres, mqtt=args.mqtt, ha_discovery=args.ha_discovery,
            device=args.device, speed=args.speed, seed=args.seed, quiet=args.quiet,
            status_port=args.status_port,
        )
        demo = Demo(options)
    except (TypeError, ValueError) as exc:
        parser.error(mask_text(str(exc)))
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


def _ha_clear(options: argparse.Namespace) -> int:
    setup_logging(options.log_level)
    loaded = _load(options)
    if loaded is None:
        return EXIT_CONFIG
    producer: str | None = options.producer
    announcing = {name: spec.fn for name, spec in loaded.specs.items()
                  if callable(getattr(spec.fn, "clear_discovery", None))
                  and getattr(spec.fn, "discovery", None) is not None}
    if producer is not None:
        announcing = {n: c for n, c in announcing.items() if producer in c.devices}
    if not announcing:
        which = f" for producer {producer!r}" if producer is not None else ""
        _echo(f"aioconveyor: error: {options.config}: no MQTT consumer announces a Home "
              f"Assistant device{which} (a [consumers.discovery] table)", err=True)
        return EXIT_CONFIG
    failed = False
    for name, consumer in announcing.items():
        try:
            topics = asyncio.run(consumer.clear_discovery(producer))
        except (ConveyorError, OSError) as exc:
            _echo(f"aioconveyor: error: consumer {name}: {loaded.mask(str(exc))}", err=True)
            failed = True
            continue
        _echo(f"consumer {name}: cleared {len(topics)} retained topic(s) at {consumer.url}")
        for topic in topics:
            _echo(f"  {topic}")
    return EXIT_FAILED if failed else EXIT_OK


def _group(options: argparse.Namespace) -> int:
    setup_logging(options.log_level)
    loaded = _load(options)
    if loaded is None:
        return EXIT_CONFIG
    from ._group_nats import NatsGroup
    from ._group_postgres import PostgresGroup

    group = loaded.conveyor.leader
    if not isinstance(group, PostgresGroup | NatsGroup):
        _echo(f"aioconveyor: error: {options.config}: [leader] is not a group "
              '(type = "postgres-group" or "nats-group")', err=True)
        return EXIT_CONFIG
    keys: list[str | None] = (
        [p.leader_key or name for name, p in loaded.producer_specs.items()]
        if loaded.producer_specs else [None])
    try:
        if isinstance(group, NatsGroup):
            _group_nats(group, keys)
        else:
            _group_postgres(group, keys)
    except Exception as exc:
        _echo(f"aioconveyor: error: group {group.group}: {loaded.mask(str(exc))}", err=True)
        return EXIT_FAILED
    return EXIT_OK


def _group_postgres(group: PostgresGroup, keys: list[str | None]) -> None:
    from ._group import assignment

    members = asyncio.run(group.members_now(keys))
    names = {group.lock_name(k) for k in keys}
    planned = assignment(names, [str(m.member_id) for m in members], balanced=True,
                         balance=group.balance)
    held = {name for m in members for name in m.producers}
    _echo(f"group {group.group!r}: {len(members)} members, {len(names)} producers")
    for m in members:
        share = sum(1 for owner in planned.values() if owner == str(m.member_id))
        _echo(f"  {m.name}: assigned {share}, holds {len(m.producers)} (pid {m.pid})")
    orphans = sorted(names - held)
    if orphans:
        _echo(f"  held by nobody: {len(orphans)}: {_some(orphans)}")


def _group_nats(group: NatsGroup, keys: list[str | None]) -> None:
    members = asyncio.run(group.members_now())
    planned = group.assignment_of(keys, members)
    names = {group.lock_name(k) for k in keys}
    _echo(f"group {group.group!r} (NATS bucket {group.bucket}): {len(members)} members, "
          f"{len(names)} producers")
    for m in members:
        mine = sorted(n for n, owner in planned.items() if owner == m.name)
        _echo(f"  {m.name}: assigned {len(mine)} (heartbeat {m.age:.1f} s ago)"
              + (f": {_some(mine)}" if mine else ""))
    if not members:
        _echo(f"  assigned to nobody: {len(names)}: {_some(sorted(names))}")


def _some(names: list[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more"
                                       if len(names) > shown else "")


def _health(options: argparse.Namespace) -> int:
    url: str = options.url
    verdict, reason = _probe(url, options.timeout)
    _echo(f"{'healthy' if verdict else 'unhealthy'}: {url}: {reason}", err=not verdict)
    return EXIT_OK if verdict else EXIT_FAILED


def _probe(url: str, timeout: float) -> tuple[bool, str]:
    """GET ``url``: (True, why) on 200, else (False, why) in one line."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    request = urllib.request.Request(url, headers={
        "User-Agent": f"aioconveyor-health/{__version__}", "Accept": "application/json"})
    try:
        with opener.open(request, timeout=timeout) as response:
            status, body = int(response.status), response.read(65536)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(65536)
    except urllib.error.URLError as exc:
        return False, _unreachable(exc.reason, timeout)
    except (OSError, http.client.HTTPException) as exc:
        return False, _unreachable(exc, timeout)
    answer = f"HTTP {status}"
    with contextlib.suppress(ValueError):
        document = json.loads(body)
        if isinstance(document, dict) and isinstance(document.get("status"), str):
            answer += f" ({document['status']})"  # /healthz and /readyz
            problems = document.get("problems")
            if isinstance(problems, dict) and problems:
                answer += ": " + "; ".join(f"{k}: {v}" for k, v in problems.items())
            return status == 200, answer
    text = " ".join(body.decode("utf-8", "replace").split())
    if text:
        answer += f": {text[:200]}"
    return status == 200, answer


def _unreachable(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the conveyor running, with [metrics] listen?)"
    if isinstance(reason, BaseException):
        return f"cannot connect: {type(reason).__name__}: {reason}"
    return f"cannot connect: {reason}"


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
    with ReloadSignal() as hup:  # from the start: SIGHUP's default would end the process
        loaded = _load(options)
        if loaded is None:
            return EXIT_CONFIG
        secrets.update(loaded.secrets)
        return _run_loaded(options, loaded, secrets, hup)


def _run_loaded(options: argparse.Namespace, loaded: LoadedConfig, secrets: set[str],
                hup: ReloadSignal) -> int:
    conv = loaded.conveyor
    logger.info("config %s", options.config)
    for line in loaded.describe():
        logger.info("%s", line)
    started = time.monotonic()
    why = "finished"
    status = _Status(options.stats_interval)
    reloader = Reloader(conv, loaded, overrides=options.set, secrets=secrets)
    with StopSignals() as stop:
        try:
            conv.start()
        except ConveyorError as exc:
            logger.error("conveyor %s could not start: %s", conv.name, exc)
            return EXIT_FAILED
        address = conv.metrics_address
        endpoint = f" (metrics and health on http://{format_listen(*address)})" if address else ""
        reloads = ", SIGHUP reloads the config" if hup.signal is not None else ""
        logger.info("conveyor %s running%s; SIGTERM or Ctrl-C stops it%s", conv.name, endpoint,
                    reloads)
        if address:
            logger.info("status page: http://%s/", format_listen(*address))
        try:
            while conv.running:
                status.maybe_log(conv)
                if stop.wait(0.2):
                    why = stop.received or "signal"
                    logger.info("%s received: stopping (draining queues, closing consumers; "
                                "again to force)", why)
                    conv.stop()
                    break
                if hup.take() and not stop.event.is_set():
                    logger.info("SIGHUP received: reloading %s", options.config)
                    reloader.reload()
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
