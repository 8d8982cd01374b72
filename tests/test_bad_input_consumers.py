"""Bad input to the built-in consumers: bad arguments and data they cannot handle.

* Every public constructor besides the core's (see test_bad_input.py) refuses bad
  arguments at once, with a SettingError whose ``.name`` is the argument and whose
  message names the argument and the bad value. Arguments that may carry a password (``dsn``, ``url``, ``password``,
  ``pool_options``) name the value's *type* only. Cases already pinned by a consumer's own
  tests (test_postgres, test_mqtt, test_csv, test_pretty, test_leader) are not repeated.
* Records that one consumer cannot handle are rejected by that consumer alone, counted and
  logged once per kind, while it and the others go on delivering everything else.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest

from aioconveyor import AioConveyor, PostgresLeader, SettingError
from aioconveyor.consumers import CsvConsumer, MqttConsumer, PostgresConsumer, PrettyPrintConsumer
from aioconveyor.consumers.mqtt import HaBinarySensor, HaDiscovery, HaSensor
from aioconveyor.testing import wait_until
from support.services import host_port

SENSORS = [HaSensor("temperature", "Temperature")]

REQUIRED: dict[Callable[..., Any], dict[str, Any]] = {
    PostgresConsumer: {},
    MqttConsumer: {},
    HaSensor: {"key": "temperature", "name": "Temperature"},
    HaBinarySensor: {"key": "fault", "name": "Fault"},
    HaDiscovery: {"node_id": "node", "device_name": "Device", "sensors": SENSORS},
    CsvConsumer: {"path": "readings.csv"},
    PrettyPrintConsumer: {},
    PostgresLeader: {"dsn": None, "key": "meter"},
}
"""What each constructor needs besides the bad argument."""

_DEFAULT = object()


def case(ctor: Callable[..., Any], argument: str, value: Any, shown: Any = _DEFAULT, *,
         error_name: str | None = None, **others: Any) -> Any:
    """``ctor(argument=value, **others)`` must raise a SettingError whose ``.name`` is
    ``error_name`` (default: ``argument``) and whose message names ``argument`` and
    ``shown`` (by default ``repr(value)``)."""
    kwargs = {**REQUIRED[ctor], **others, argument: value}
    text = repr(value) if shown is _DEFAULT else str(shown)
    label = f"{getattr(ctor, '__name__', ctor)}-{argument}={value!r}"
    return pytest.param(ctor, kwargs, error_name or argument, argument, text, id=label)


PG, MQTT, CSV, PRETTY, LEADER = (PostgresConsumer, MqttConsumer, CsvConsumer,
                                 PrettyPrintConsumer, PostgresLeader)

CASES = [
    # PostgresConsumer
    case(PG, "dsn", 5432, "got int"),
    case(PG, "table", 5),
    case(PG, "table", "a\x00b"),
    case(PG, "schema", ""),
    case(PG, "columns", [5], "got 5", error_name="columns[0]"),
    case(PG, "columns", []),
    case(PG, "key", "event_time"),
    case(PG, "key", [None], "got None"),
    case(PG, "create_table", "yes"),
    case(PG, "time_column", 5),
    case(PG, "payload_column", "event_time"),
    case(PG, "batch_age", -1),
    case(PG, "retries", 1.5),
    case(PG, "queue_size", 0),
    case(PG, "timeout", -1),
    case(PG, "max_backoff", math.nan),
    case(PG, "ssl", "verify"),
    case(PG, "ssl", 1),
    case(PG, "server_settings", "statement_timeout=5"),
    case(PG, "server_settings", {"statement_timeout": 5000},
         "server_settings['statement_timeout'] must be a str, got 5000",
         error_name="server_settings['statement_timeout']"),
    case(PG, "min_size", -1),
    case(PG, "max_size", 0),
    case(PG, "min_size", 3, "got 3 > 2", max_size=2),
    case(PG, "connect_timeout", "10"),
    case(PG, "connect_timeout", 0),
    case(PG, "pool_options", ["max_queries"], "got list"),
    case(PG, "name", 7),
    case(PG, "logger", "aioconveyor"),
    # MqttConsumer
    case(MQTT, "url", 1883, "got int"),
    case(MQTT, "url", "tcp://broker:1883"),
    case(MQTT, "url", "mqtt://broker:http"),
    case(MQTT, "host", ""),
    case(MQTT, "port", "1883"),
    case(MQTT, "port", 0),
    case(MQTT, "topic", b"state"),
    case(MQTT, "topic", "a/\x00/b"),
    case(MQTT, "qos", True),
    case(MQTT, "retain", 1),
    case(MQTT, "username", 5),
    case(MQTT, "password", b"bytes", "got bytes", username="alice"),
    case(MQTT, "tls", "yes"),
    case(MQTT, "client_id", ""),
    case(MQTT, "keepalive", 1.5),
    case(MQTT, "timeout", -1),
    case(MQTT, "encoder", "json"),
    case(MQTT, "event_time_key", ""),
    case(MQTT, "availability_topic", "a/+"),
    case(MQTT, "discovery", {"node_id": "x"}),
    case(MQTT, "name", ""),
    case(MQTT, "retries", -1),
    case(MQTT, "max_backoff", math.inf),
    case(MQTT, "client_options", "protocol=5", "got str"),
    case(MQTT, "client_options", {5: "x"}, "keys must be str, got 5"),
    case(MQTT, "logger", "mqtt"),
    # HaSensor
    case(HaSensor, "key", ""),
    case(HaSensor, "key", 5),
    case(HaSensor, "name", None),
    case(HaSensor, "unit", 5),
    case(HaSensor, "device_class", ""),
    case(HaSensor, "state_class", 3),
    case(HaSensor, "icon", b"mdi:x"),
    case(HaSensor, "device_class", "volts"),
    case(HaSensor, "state_class", "total-increasing"),
    case(HaSensor, "unit", "W", device_class="energy"),
    case(HaSensor, "options", "on,off", device_class="enum"),
    case(HaSensor, "expire_after", -1),
    case(HaSensor, "suggested_display_precision", "2"),
    case(HaSensor, "entity_category", "config"),
    case(HaSensor, "extra", {"frc_upd": True}, "'frc_upd'", error_name="extra['frc_upd']"),
    # HaBinarySensor (with HaSensor, more in test_ha_discovery.py)
    case(HaBinarySensor, "key", ""),
    case(HaBinarySensor, "device_class", "fault"),
    case(HaBinarySensor, "payload_on", ""),
    case(HaBinarySensor, "payload_off", "ON"),
    case(HaBinarySensor, "off_delay", 1.5),
    case(HaBinarySensor, "icon", "flash"),
    case(HaBinarySensor, "entity_category", "config"),
    case(HaBinarySensor, "extra", {"unit_of_measurement": "W"}, "'unit_of_measurement'",
         error_name="extra['unit_of_measurement']"),
    # HaDiscovery
    case(HaDiscovery, "node_id", "a/b"),
    case(HaDiscovery, "node_id", 5),
    case(HaDiscovery, "device_name", ""),
    case(HaDiscovery, "sensors", "temperature"),
    case(HaDiscovery, "binary_sensors", [SENSORS[0]], "got HaSensor(", error_name="binary_sensors[0]"),
    case(HaDiscovery, "sensors", ()),
    case(HaDiscovery, "sensors", [SENSORS[0], "humidity"], "sensors[1]",
         error_name="sensors[1]"),
    case(HaDiscovery, "prefix", "home/#"),
    case(HaDiscovery, "prefix", ""),
    case(HaDiscovery, "manufacturer", 5),
    case(HaDiscovery, "model", ""),
    case(HaDiscovery, "sw_version", 1.0),
    # CsvConsumer (most cases live in test_csv.py)
    case(CSV, "path", None),
    case(CSV, "fields", [""], "got ''", error_name="fields[0]"),
    case(CSV, "extra", None),
    case(CSV, "rotate", True),
    case(CSV, "max_bytes", True),
    case(CSV, "delimiter", 5),
    case(CSV, "delimiter", "\n"),
    case(CSV, "name", 5),
    # PrettyPrintConsumer (more in test_pretty.py)
    case(PRETTY, "console", "stdout"),
    case(PRETTY, "name", 5),
    case(PRETTY, "max_string", 1.5),
    case(PRETTY, "max_depth", 0),
    case(PRETTY, "max_length", -3),
    case(PRETTY, "max_rows", None),
    # PostgresLeader (more in test_leader.py)
    case(LEADER, "dsn", b"postgresql://u:pw@h/db", "got bytes"),
    case(LEADER, "key", 5),
    case(LEADER, "keepalive", 0.5),
    case(LEADER, "keepalive", "10"),
    case(LEADER, "keepalive", math.inf),
    case(LEADER, "connect_timeout", -1),
    case(LEADER, "name", ""),
    case(LEADER, "server_settings", "idle_session_timeout=30s"),
    case(LEADER, "ssl", "on"),
    case(LEADER, "ssl", 1.0),
    case(LEADER, "logger", "leader"),
]


@pytest.mark.parametrize(("ctor", "kwargs", "name", "argument", "shown"), CASES)
def test_bad_arguments_fail_at_construction_naming_argument_and_value(
    ctor: Callable[..., Any], kwargs: dict[str, Any], name: str, argument: str, shown: str,
) -> None:
    with pytest.raises(SettingError) as info:
        ctor(**kwargs)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert info.value.name == name, message
    assert argument in message, message
    assert shown in message, message


SECRET = "hunter2-Kx7q"


@pytest.mark.parametrize(("ctor", "kwargs"), [
    (PG, {"dsn": f"postgresql://u:{SECRET}@h/db".encode()}),
    (PG, {"pool_options": [("password", SECRET)]}),
    (PG, {"pool_options": {"password": SECRET, 1: "x"}}),
    (MQTT, {"url": f"mqtt://u:{SECRET}@h".encode()}),
    (MQTT, {"url": f"mqtt://u:{SECRET}@h/path"}),
    (MQTT, {"username": "u", "password": SECRET.encode()}),
    (MQTT, {"password": SECRET}),
    (LEADER, {"dsn": f"postgresql://u:{SECRET}@h/db".encode(), "key": "k"}),
], ids=["pg-dsn-bytes", "pg-pool-options-list", "pg-pool-options-key", "mqtt-url-bytes",
        "mqtt-url-path", "mqtt-password-bytes", "mqtt-password-without-user", "leader-dsn"])
def test_arguments_that_may_hold_a_password_never_show_it(
    ctor: Callable[..., Any], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(SettingError) as info:
        ctor(**kwargs)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in repr(info.value.value)  # the attribute is masked too


def test_a_path_like_is_accepted_where_a_path_is() -> None:
    """The other side of the CSV path checks: pathlib paths are fine."""
    assert CsvConsumer(Path("readings.csv")).path == "readings.csv"


# -- data a consumer cannot handle -----------------------------------------------------


@asynccontextmanager
async def subscribed(url: str, topic: str) -> AsyncIterator[list[aiomqtt.Message]]:
    """Collect what is published to ``topic`` (QoS 1) while inside the block."""
    received: list[aiomqtt.Message] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client(*host_port(url, 1883)) as client:
            await client.subscribe(topic, qos=1)
            ready.set()
            async for message in client.messages:
                received.append(message)

    task = asyncio.create_task(listen())
    try:
        assert await wait_until(lambda: ready.is_set() or task.done(), timeout=10)
        if task.done():
            task.result()
        yield received
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def reading(n: int) -> dict[str, Any]:
    """Tick n's record. Every fourth is fine; the others each break one consumer."""
    kind = n % 4
    if kind == 1:  # JSON has no complex numbers: MQTT rejects it; CSV writes "(1+1j)"; the
        return {"seq": n, "v": n, "blob": complex(n, 1)}  # table has no blob column
    if kind == 2:  # not a CSV column under extra="error"; MQTT sends it; PostgreSQL ignores it
        return {"seq": n, "v": n, "note": "not a column"}
    if kind == 3:  # violates the table's CHECK (v >= 0)
        return {"seq": n, "v": -n}
    return {"seq": n} if n == 4 else {"seq": n, "v": n}  # a missing key is fine everywhere


async def test_data_one_consumer_cannot_handle_is_rejected_there_only(
    postgres_dsn: str, mqtt_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    ticks = 12
    table = f"aioc_bad_data_{uuid.uuid4().hex[:12]}"
    topic = f"aioconveyor-test/{uuid.uuid4().hex[:12]}/state"
    db = await asyncpg.connect(postgres_dsn)
    await db.execute(f'CREATE TABLE "{table}" (event_time timestamptz PRIMARY KEY, '
                     "seq integer NOT NULL, v integer CHECK (v >= 0))")
    try:
        pg = PostgresConsumer(postgres_dsn, table, ["seq", "v"], batch_age=0.05, name="pg")
        out = CsvConsumer(tmp_path / "readings.csv", fields=["seq", "v", "blob"],
                          extra="error", name="csv")
        mqtt = MqttConsumer(mqtt_url, topic=topic, name="mqtt")
        produced: list[datetime] = []

        def produce(event_time: datetime) -> dict[str, Any]:
            produced.append(event_time)
            return reading(len(produced) - 1)

        async with subscribed(mqtt_url, topic) as received:
            conv = AioConveyor(produce, [pg, out, mqtt], loop_interval=0.05, max_ticks=ticks,
                               stop_timeout=10)
            async with conv:
                assert await asyncio.to_thread(conv.join, 20)
            good = [n for n in range(ticks) if n % 4 != 1]
            assert await wait_until(lambda: len(received) >= len(good), timeout=10), received
            published = [json.loads(m.payload) for m in received
                         if isinstance(m.payload, bytes | bytearray)]
        rows = await db.fetch(f'SELECT event_time, seq, v FROM "{table}" ORDER BY seq')
    finally:
        await db.execute(f'DROP TABLE IF EXISTS "{table}"')
        await db.close()

    stats = conv.stats()
    for name in ("pg", "csv", "mqtt"):
        lane = stats.consumer(name)
        assert (lane.offered, lane.delivered, lane.rejected) == (ticks, 9, 3), lane
        assert (lane.dropped, lane.failed, lane.retries) == (0, 0, 0), lane
    assert (pg.rejected, out.rejected, mqtt.rejected) == (3, 3, 3)

    # MQTT: everything but the complex numbers, each with its own tick time
    assert [(p["seq"], p["event_time"]) for p in published] == [
        (n, produced[n].isoformat()) for n in range(ticks) if n % 4 != 1]
    # CSV: everything but the extra keys; a missing key is an empty cell
    with (tmp_path / "readings.csv").open(newline="", encoding="utf-8") as fh:
        written = list(csv.DictReader(fh))
    assert [(r["seq"], r["v"], r["blob"]) for r in written] == [
        (str(n), "" if n == 4 else str(reading(n)["v"]), str(reading(n).get("blob", "")))
        for n in range(ticks) if n % 4 != 2]
    # PostgreSQL: everything but the CHECK violations; a missing key is NULL
    assert [(r["event_time"], r["seq"], r["v"]) for r in rows] == [
        (produced[n], n, None if n == 4 else n) for n in range(ticks) if n % 4 != 3]

    def logged(fragment: str) -> int:
        return sum(fragment in r.getMessage() for r in caplog.records)

    assert logged("consumer mqtt failed on tick") == 1  # once per kind, not per record
    assert logged("cannot be encoded as JSON") == 1
    assert logged("consumer csv: skipped the record") == 1
    assert logged("consumer pg: a record of") == 1
