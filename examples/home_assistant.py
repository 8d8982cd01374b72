"""Home Assistant over MQTT, with discovery: this machine's load, memory, disk and CPU
temperature appear in Home Assistant as one device with four sensors, no YAML needed.

    python examples/home_assistant.py --mqtt mqtt://user:pass@homeassistant.local:1883

On every (re)connect the MQTT consumer publishes, retained, one discovery config per
sensor under ``homeassistant/sensor/<node_id>/<key>/config`` and ``online`` on the
availability topic; each reading is one JSON message on the state topic; a clean stop
publishes ``offline`` (and the broker does the same via the Last Will if the process
dies). Options also come from ``MQTT_URL``, ``HA_NODE_ID``, ``HA_PREFIX``,
``POLL_INTERVAL`` and ``POLL_COUNT``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys

from home_poller import read_system  # the producer of home_poller.py, next to this file

from aioconveyor import AioConveyor
from aioconveyor.consumers.mqtt import HaDiscovery, HaSensor, MqttConsumer

SENSORS = [
    HaSensor("load_1m", "Load (1 min)", state_class="measurement", icon="mdi:gauge"),
    HaSensor("memory_used_pct", "Memory used", unit="%", state_class="measurement",
             icon="mdi:memory"),
    HaSensor("disk_used_pct", "Disk used", unit="%", state_class="measurement",
             icon="mdi:harddisk"),
    HaSensor("cpu_temperature_c", "CPU temperature", unit="°C", device_class="temperature",
             state_class="measurement"),
]


def main(argv: list[str] | None = None) -> int:
    host = socket.gethostname()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqtt", default=os.environ.get("MQTT_URL", "mqtt://localhost:1883"),
                        metavar="URL", help="the broker Home Assistant listens to")
    parser.add_argument("--node-id", default=os.environ.get(
        "HA_NODE_ID", re.sub(r"[^A-Za-z0-9_-]", "_", f"aioconveyor_{host}")),
        help="the device's id in Home Assistant (letters, digits, _ and -)")
    parser.add_argument("--prefix", default=os.environ.get("HA_PREFIX", "homeassistant"),
                        help="Home Assistant's discovery prefix (default homeassistant)")
    parser.add_argument("--interval", type=float,
                        default=float(os.environ.get("POLL_INTERVAL", "30")))
    parser.add_argument("--count", type=int, default=int(os.environ.get("POLL_COUNT", "0")),
                        help="stop after N readings (default 0: until Ctrl-C)")
    args = parser.parse_args(argv)

    discovery = HaDiscovery(
        node_id=args.node_id,
        device_name=f"{host} (aioconveyor)",
        sensors=SENSORS,
        manufacturer="aioconveyor",
        model="system monitor example",
        prefix=args.prefix,
    )
    mqtt = MqttConsumer(
        args.mqtt,
        topic=f"aioconveyor/{args.node_id}/state",
        # availability_topic defaults to aioconveyor/<node_id>/availability with discovery
        discovery=discovery,
    )
    conv = AioConveyor(read_system, [mqtt], loop_interval=args.interval,
                       max_ticks=args.count or None, name="home-assistant")
    print(f"publishing to {mqtt.url} as {args.node_id!r} every {args.interval:g} s; "
          "Ctrl-C stops", flush=True)
    try:
        with conv:
            conv.join()
    except KeyboardInterrupt:
        pass
    c = conv.stats().consumer(mqtt.name)
    print(f"{c.delivered} readings published, {c.errors} errors", flush=True)
    return 1 if conv.exception is not None else 0


if __name__ == "__main__":
    sys.exit(main())
