"""Home-automation poller: read a local HTTP JSON endpoint every N seconds, on the clock
grid, and keep each reading in PostgreSQL and publish it over MQTT.

    python examples/home_poller.py --url http://192.168.1.40/status.json \\
        --postgres postgresql://home:secret@localhost/home --mqtt mqtt://localhost:1883

Without ``--url`` it reads this machine instead (load, memory, disk, CPU temperature).
Leave out ``--postgres`` or ``--mqtt`` to skip that destination; with neither, readings
are printed. Every option can come from the environment as well: ``POLL_URL``,
``POLL_INTERVAL``, ``POLL_COUNT``, ``POSTGRES_DSN``, ``POSTGRES_TABLE``, ``MQTT_URL``,
``MQTT_TOPIC``. Ctrl-C stops it gracefully (queued readings are still written).

:func:`read_endpoint` and :func:`read_system` are plain producers: ``conveyor.toml`` (next
to this file) runs the same poller as a service with ``aioconveyor run conveyor.toml``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from aioconveyor import AioConveyor


def read_endpoint(event_time: datetime, *, url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``url`` and return its JSON object (a non-object is wrapped as ``{"value": ...}``).

    A plain function: aioconveyor runs it in a worker thread, so the blocking ``urllib``
    call never stalls the event loop. An HTTP or network error raises; the conveyor logs
    and counts it, and the next tick comes as usual.
    """
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = json.load(response)
    return data if isinstance(data, dict) else {"value": data}


def _meminfo() -> dict[str, int]:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in
                                                   text.splitlines()) if v.strip()}


def _cpu_temperature() -> float | None:
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            return int(zone.read_text()) / 1000
        except (OSError, ValueError):
            continue
    return None


def read_system(event_time: datetime) -> dict[str, Any]:
    """This machine as a sensor: load average, memory and disk use, CPU temperature."""
    load1, load5, _ = os.getloadavg()
    mem = _meminfo()
    disk = shutil.disk_usage("/")
    used_mem = None
    if mem.get("MemTotal"):
        used_mem = round(100 * (1 - mem.get("MemAvailable", 0) / mem["MemTotal"]), 1)
    temperature = _cpu_temperature()
    return {
        "host": socket.gethostname(),
        "load_1m": round(load1, 2),
        "load_5m": round(load5, 2),
        "memory_used_pct": used_mem,
        "disk_used_pct": round(100 * disk.used / disk.total, 1),
        "cpu_temperature_c": None if temperature is None else round(temperature, 1),
    }


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("POLL_URL"),
                        help="JSON endpoint to poll (default: read this machine)")
    parser.add_argument("--interval", type=float,
                        default=float(os.environ.get("POLL_INTERVAL", "10")),
                        help="seconds between readings (default 10)")
    parser.add_argument("--count", type=int, default=_env_int("POLL_COUNT"),
                        help="stop after N readings (default: until Ctrl-C)")
    parser.add_argument("--postgres", default=os.environ.get("POSTGRES_DSN"), metavar="DSN",
                        help="PostgreSQL to write to (JSONB table, created if missing)")
    parser.add_argument("--table", default=os.environ.get("POSTGRES_TABLE", "home_readings"))
    parser.add_argument("--mqtt", default=os.environ.get("MQTT_URL"), metavar="URL",
                        help="MQTT broker to publish to, e.g. mqtt://localhost:1883")
    parser.add_argument("--topic", default=os.environ.get("MQTT_TOPIC", "home/poller/state"))
    args = parser.parse_args(argv)

    from functools import partial

    from aioconveyor.consumers import MqttConsumer, PostgresConsumer, PrettyPrintConsumer

    produce: Any = partial(read_endpoint, url=args.url) if args.url else read_system
    consumers: list[Any] = []
    if args.postgres:
        # JSONB mode: (event_time timestamptz primary key, payload jsonb); a retried write
        # never duplicates a row, and an outage is ridden out with retries meanwhile
        consumers.append(PostgresConsumer(args.postgres, table=args.table, create_table=True))
    if args.mqtt:
        consumers.append(MqttConsumer(args.mqtt, topic=args.topic))
    if not consumers:
        consumers.append(PrettyPrintConsumer())

    conv = AioConveyor(produce, consumers, loop_interval=args.interval, max_ticks=args.count,
                       name="home-poller")
    source = args.url or f"this machine ({socket.gethostname()})"
    print(f"polling {source} every {args.interval:g} s; Ctrl-C stops", flush=True)
    try:
        with conv:  # start() now, stop() (drain, close) when the block ends
            conv.join()
    except KeyboardInterrupt:
        pass  # leaving the with block has stopped the conveyor gracefully
    stats = conv.stats()
    print(f"{stats.ticks} readings, {stats.producer_errors} failed to read", flush=True)
    for c in stats.consumers:
        print(f"  {c.name}: {c.delivered} delivered, {c.errors} errors, {c.dropped} dropped",
              flush=True)
    return 1 if conv.exception is not None else 0


if __name__ == "__main__":
    sys.exit(main())
