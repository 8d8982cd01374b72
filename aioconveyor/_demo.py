"""The demo behind ``python -m aioconveyor``: a simulated solar inverter on the clock grid.

:class:`InverterSimulator` is the producer: AC power following a daylight curve with
passing clouds and noise, energy accumulating from it, grid voltage and frequency wandering
around their nominal values, and the heat-sink temperature following ambient plus load.
:class:`Demo` fans every reading out to a :class:`PrettyPrintConsumer` and a
:class:`CsvConsumer` (plus PostgreSQL and MQTT when asked) and shows a live status panel.
No servers are needed unless ``--postgres`` / ``--mqtt`` are given.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _validate
from ._consumer import Consumer
from ._conveyor import AioConveyor
from ._errors import ConveyorError
from ._process import EXIT_FAILED, EXIT_OK, LOG_FORMAT, StopSignals, force_exit, summary_lines
from ._secrets import mask_text
from ._stats import ConveyorStats
from .consumers.csv import CsvConsumer
from .consumers.postgres import PostgresConsumer  # asyncpg loads when it connects
from .consumers.pretty import PrettyPrintConsumer

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from .consumers.mqtt import MqttConsumer

__all__ = ["Demo", "DemoOptions", "InverterSimulator", "daylight"]

logger = logging.getLogger(__name__)

FIELDS = ("device", "state", "power_w", "energy_kwh", "grid_voltage_v", "grid_frequency_hz",
          "temperature_c")
"""The keys of every reading, in CSV column order (after ``event_time``)."""

PANEL_PRODUCERS = 12
"""At most this many producers get a row of the panel's producer table."""

POSTGRES_TABLE = "aioconveyor_demo"
MQTT_TOPIC = "aioconveyor/_demo/{device}/state"
DEMO_STATES = ("producing", "sleeping")
"""The inverter's ``state`` values (an ``enum`` sensor's options in Home Assistant)."""


def daylight(hour: float, sunrise: float = 6.0, sunset: float = 20.0) -> float:
    """Clear-sky share of peak power at local ``hour`` (0-24): 0 at night, 1 at solar noon."""
    if not sunrise < hour < sunset:
        return 0.0
    return float(math.sin(math.pi * (hour - sunrise) / (sunset - sunrise)) ** 1.5)


class InverterSimulator:
    """A rooftop PV inverter (``peak_w`` watts), simulated; an async producer.

    The sun follows the machine's local time of day; ``speed`` runs the simulated day
    faster (720: a day in two minutes). Each call integrates the energy since the previous
    reading, so ``energy_kwh`` accumulates like a real meter. ``seed`` makes it repeatable.
    """

    name = "inverter"

    def __init__(self, device: str = "demo-inverter", *, peak_w: float = 5000.0,
                 speed: float = 1.0, seed: int | None = None) -> None:
        self.device = _validate.text("device", device)
        self.peak_w = _validate.positive("peak_w", peak_w)
        self.speed = _validate.positive("speed", speed)
        _validate.optional_integer("seed", seed, minimum=None)
        self.latest: dict[str, Any] | None = None
        """The last reading (read by the status panel)."""
        self._rng = random.Random(seed)
        self._start: float | None = None
        self._last: float | None = None
        self._power = 0.0
        self._energy = 0.0
        self._cloud = 0.9
        self._voltage = 230.0 + self._rng.uniform(-2.0, 2.0)
        self._temperature: float | None = None

    def local_hour(self, event_time: datetime) -> float:
        """The simulated local time of day, in hours, for the tick at ``event_time``."""
        t = event_time.timestamp()
        start = t if self._start is None else self._start
        local = datetime.fromtimestamp(start + (t - start) * self.speed).astimezone()
        return local.hour + local.minute / 60 + local.second / 3600

    async def __call__(self, event_time: datetime) -> dict[str, Any]:
        rng = self._rng
        t = event_time.timestamp()
        hour = self.local_hour(event_time)
        if self._start is None:
            self._start = t
        dt_hours = 0.0 if self._last is None else max(0.0, t - self._last) * self.speed / 3600
        self._last = t

        # clouds drift slowly between overcast and clear
        self._cloud += rng.gauss(0.0, 0.04) + (0.85 - self._cloud) * 0.05
        self._cloud = min(1.0, max(0.3, self._cloud))
        sun = daylight(hour)
        power = 0.0 if sun == 0 else max(0.0, self.peak_w * sun * self._cloud
                                         * (1 + rng.gauss(0.0, 0.02)))
        self._energy += (power + self._power) / 2 * dt_hours / 1000
        self._power = power

        # the grid: voltage wanders around 230 V and rises a little when feeding in
        self._voltage += rng.gauss(0.0, 0.3) + (230.5 - self._voltage) * 0.1
        voltage = self._voltage + 2.0 * power / self.peak_w
        frequency = 50.0 + rng.gauss(0.0, 0.015)

        # heat sink: ambient (warmest in the afternoon) plus load, with thermal inertia
        ambient = 10.0 + 8.0 * daylight(hour - 1.5)
        target = ambient + 30.0 * power / self.peak_w
        if self._temperature is None:
            self._temperature = target
        else:
            self._temperature += (target - self._temperature) * (1 - math.exp(-dt_hours * 6))
        reading = {
            "device": self.device,
            "state": DEMO_STATES[0] if power > 0 else DEMO_STATES[1],
            "power_w": round(power, 1),
            "energy_kwh": round(self._energy, 4),
            "grid_voltage_v": round(voltage, 1),
            "grid_frequency_hz": round(frequency, 3),
            "temperature_c": round(self._temperature + rng.gauss(0.0, 0.1), 1),
        }
        self.latest = reading
        return reading


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the command line chose (see ``aioconveyor --help``)."""

    interval: float = 2.0
    offset: float = 0.0
    count: int | None = None
    csv: str | None = None
    postgres: str | None = None
    mqtt: str | None = None
    ha_discovery: bool = False
    device: str = "demo-inverter"
    speed: float = 1.0
    seed: int | None = None
    quiet: bool = False
    status_port: int | None = None
    """Serve the status page (and /metrics, /healthz) on 127.0.0.1 at this port (0: any)."""

    def __post_init__(self) -> None:
        interval = _validate.positive("interval", self.interval)
        offset = _validate.non_negative("offset", self.offset)
        if offset >= interval:
            _validate.fail("offset", self.offset,
                           f"must be smaller than interval ({interval:g}), got {self.offset!r}")
        _validate.optional_integer("count", self.count, minimum=1)
        for name in ("csv", "postgres", "mqtt"):
            if getattr(self, name) is not None:
                _validate.text(name, getattr(self, name))
        _validate.boolean("ha_discovery", self.ha_discovery)
        if self.ha_discovery and self.mqtt is None:
            _validate.fail("ha_discovery", True, "needs mqtt (the broker to announce to), "
                                                 "got mqtt=None")
        _validate.text("device", self.device)
        _validate.positive("speed", self.speed)
        _validate.optional_integer("seed", self.seed, minimum=None)
        _validate.boolean("quiet", self.quiet)
        _validate.optional_integer("status_port", self.status_port, minimum=0, maximum=65535)


def _clock_time(when: datetime | None) -> str:
    return "-" if when is None else f"{when.astimezone():%H:%M:%S.%f}"[:-3]


def default_csv_path() -> Path:
    """A new file in the temp folder, named after the current time and this process (so
    demos started in the same second never share a file)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"aioconveyor-demo-{stamp}-{os.getpid()}.csv"


class Demo:
    """The demo's conveyor, its consumers and its console; :meth:`run` runs it.

    Creating it checks every option (:class:`~aioconveyor.SettingError`) and opens
    nothing.
    """

    def __init__(self, options: DemoOptions, console: Console | None = None) -> None:
        from rich.console import Console

        self.options = options
        self.console = console or Console(highlight=False)
        self.inverter = InverterSimulator(options.device, speed=options.speed, seed=options.seed)
        self.csv_path = Path(options.csv) if options.csv else default_csv_path()
        consumers: list[Any] = []
        if not options.quiet:
            consumers.append(PrettyPrintConsumer(self.console, name="pretty"))
        self.csv = CsvConsumer(self.csv_path, FIELDS, name="csv")
        # the demo's own file: one it cannot use is a mistake to report at once, not a
        # server that may come back (PostgreSQL and MQTT retry while they are down)
        consumers.append(Consumer(self.csv, startup="fail"))
        self.destinations = [("CSV", str(self.csv_path))]
        if options.postgres is not None:
            pg = PostgresConsumer(options.postgres, table=POSTGRES_TABLE, create_table=True,
                                  name="postgres")
            consumers.append(pg)
            self.destinations.append(("PostgreSQL", f"table {POSTGRES_TABLE} at {pg.dsn}"))
        if options.mqtt is not None:
            consumers.append(self._mqtt(options.mqtt))
        self.conveyor = AioConveyor(
            self.inverter, consumers, loop_interval=options.interval,
            loop_offset=options.offset, max_ticks=options.count, name="inverter",
            seed=options.seed, metrics_port=options.status_port,
        )
        offset = f" + {options.offset:g} s" if options.offset else ""
        self.schedules = {"inverter": f"every {options.interval:g} s{offset}"}
        """How each producer is scheduled, for the panel."""
        self.show_panel = not options.quiet and self.console.is_terminal

    def _mqtt(self, url: str) -> MqttConsumer:
        # here, not at the top: without the [mqtt] extra the import raises ImportError
        from .consumers.mqtt import HaDiscovery, HaSensor, MqttConsumer

        topic = MQTT_TOPIC.format(device=self.options.device)
        discovery = None
        if self.options.ha_discovery:
            discovery = HaDiscovery(
                node_id=f"aioconveyor_{self.options.device}",
                device_name=f"aioconveyor demo inverter ({self.options.device})",
                manufacturer="aioconveyor", model="simulated PV inverter",
                sensors=[
                    HaSensor("power_w", "Power", unit="W", device_class="power",
                             state_class="measurement"),
                    HaSensor("energy_kwh", "Energy", unit="kWh", device_class="energy",
                             state_class="total_increasing"),
                    HaSensor("grid_voltage_v", "Grid voltage", unit="V",
                             device_class="voltage", state_class="measurement"),
                    HaSensor("grid_frequency_hz", "Grid frequency", unit="Hz",
                             device_class="frequency", state_class="measurement"),
                    HaSensor("temperature_c", "Temperature", unit="°C",
                             device_class="temperature", state_class="measurement"),
                    HaSensor("state", "State", device_class="enum",
                             options=list(DEMO_STATES), icon="mdi:solar-power"),
                ],
            )
        mqtt = MqttConsumer(url, topic=topic, discovery=discovery, name="mqtt")
        where = f"{topic} at {mqtt.url}"
        if discovery is not None:
            where += f" (Home Assistant discovery under {discovery.prefix}/)"
        self.destinations.append(("MQTT", where))
        return mqtt

    # -- output ------------------------------------------------------------------------

    def say(self, text: str = "", style: str | None = None) -> None:
        self.console.print(mask_text(text), style=style, markup=False, highlight=False,
                           soft_wrap=True)

    def log_handler(self) -> logging.Handler:
        """Log records above the live panel on a terminal, else timestamped on stderr."""
        if self.console.is_terminal:
            from rich.logging import RichHandler

            return RichHandler(console=self.console, show_path=False)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        return handler

    def panel(self) -> RenderableType:
        """The live status panel: ticks, next tick, lateness, every consumer's counters."""
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        s = self.conveyor.stats()
        late = s.lateness
        head = Table.grid(padding=(0, 3))
        head.add_column(style="bold")
        head.add_column()
        nxt = "-"
        done = self.options.count is not None and s.ticks >= self.options.count
        if s.next_tick_time is not None and not done:
            wait = max(0.0, s.next_tick_time.timestamp() - time.time())
            nxt = f"{s.next_tick_time.astimezone():%H:%M:%S.%f}"[:-3] + f"  (in {wait:.1f} s)"
        of = f" of {self.options.count}" if self.options.count else ""
        head.add_row("ticks", f"{s.ticks}{of}   missed {s.missed_ticks}   producer errors "
                              f"{s.producer_errors}")
        head.add_row("next tick", nxt)
        head.add_row("lateness", f"p50 {late.p50_ms:.2f} ms   p99 {late.p99_ms:.2f} ms   "
                                 f"max {late.max_ms:.2f} ms")
        reading = self.inverter.latest
        if reading is not None:
            head.add_row("latest", f"{reading['power_w']:,.1f} W   {reading['energy_kwh']:.4f} "
                                   f"kWh   {reading['grid_voltage_v']:.1f} V   "
                                   f"{reading['temperature_c']:.1f} °C   {reading['state']}")
            if reading["state"] == "sleeping" and self.options.speed == 1:
                head.add_row("", Text("night here: try --speed 720 (a day in 2 minutes)",
                                      style="dim"))
        lanes = Table(box=None, padding=(0, 1), header_style="bold")
        names = [c.name for c in s.consumers]
        lanes.add_column("consumer", no_wrap=True, min_width=max(map(len, [*names, "consumer"])))
        for column in ("delivered", "errors", "dropped", "queued"):
            lanes.add_column(column, justify="right", no_wrap=True, min_width=len(column))
        lanes.add_column("last error", overflow="ellipsis", no_wrap=True, max_width=60)
        for c in s.consumers:
            lanes.add_row(c.name, str(c.delivered),
                          Text(str(c.errors), style="red" if c.errors else ""),
                          Text(str(c.dropped), style="yellow" if c.dropped else ""),
                          str(c.queued + c.in_flight), Text(mask_text(c.last_error or "")))
        return Panel(Group(head, Text(""), self._producer_table(s), Text(""), lanes),
                     title="aioconveyor demo · simulated inverter",
                     subtitle="Ctrl-C stops", border_style="cyan", expand=False)

    def _producer_table(self, s: ConveyorStats) -> RenderableType:
        """One row per producer: schedule, ticks, last/next tick, lateness, errors, state,
        the consumers it feeds (the first :data:`PANEL_PRODUCERS`, then a count)."""
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, padding=(0, 1), header_style="bold")
        for column in ("producer", "schedule", "ticks", "last tick", "next tick",
                       "p99 ms", "errors", "state", "feeds"):
            right = column in ("ticks", "p99 ms", "errors")
            table.add_column(column, justify="right" if right else "left", no_wrap=True)
        styles = {"hung": "red", "running": "cyan", "finished": "dim"}
        for p in s.producers[:PANEL_PRODUCERS]:
            nxt = "-" if p.state == "finished" else _clock_time(p.next_tick_time)
            table.add_row(
                p.name, self.schedules.get(p.name, "?"), str(p.ticks),
                _clock_time(p.last_tick_time), nxt, f"{p.lateness.p99_ms:.2f}",
                Text(str(p.errors), style="red" if p.errors else ""),
                Text(p.state, style=styles.get(p.state, "")),
                "all" if p.consumers is None else ", ".join(p.consumers))
        if len(s.producers) > PANEL_PRODUCERS:
            table.add_row(f"... {len(s.producers) - PANEL_PRODUCERS} more", *[""] * 8)
        return table

    # -- running -----------------------------------------------------------------------

    def run(self) -> int:
        """Run until ``count`` readings, SIGINT or SIGTERM; print a summary; the exit code."""
        o = self.options
        until = f"{o.count} readings" if o.count else "until Ctrl-C"
        self.say(f"aioconveyor demo: a simulated {self.inverter.peak_w / 1000:g} kW solar "
                 f"inverter, read every {o.interval:g} s on the clock grid, {until}.",
                 style="bold")
        for what, where in self.destinations:
            self.say(f"  {what + ':':<12}{where}")
        started = time.monotonic()
        with StopSignals() as stop:
            try:
                self.conveyor.start()
            except ConveyorError as exc:
                self.say(f"error: {exc}", style="red")
                return EXIT_FAILED
            if (address := self.conveyor.metrics_address) is not None:
                host, port = address
                self.say(f"  status page: http://{host}:{port}/", style="bold")
            try:
                why = self._wait(stop)
            except KeyboardInterrupt:
                self.say("forced stop: queued readings may be lost", style="red")
                force_exit()
        conv = self.conveyor
        if conv.exception is not None:
            why = f"failed: {conv.exception}"
        for line in summary_lines(conv.stats(), time.monotonic() - started, why):
            self.say(line)
        self.say(f"CSV: {self.csv_path} ({self.csv.written} rows written this run)")
        return EXIT_FAILED if conv.exception is not None else EXIT_OK

    def _wait(self, stop: StopSignals) -> str:
        conv = self.conveyor
        live = None
        if self.show_panel:
            from rich.live import Live

            live = Live(console=self.console, get_renderable=self.panel, refresh_per_second=4)
            live.start()
        try:
            while conv.running:
                if stop.wait(0.1):
                    self.say(f"{stop.received}: stopping (draining queues, closing consumers; "
                             "again to force)", style="yellow")
                    conv.stop()
                    conv.join(conv.stop_timeout + 2.0)
                    return stop.received or "signal"
            conv.join(conv.stop_timeout + 2.0)
            return f"{o} readings done" if (o := self.options.count) else "finished"
        finally:
            if live is not None:
                live.stop()
