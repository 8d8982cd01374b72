"""Bad input to the built-in consumers: bad arguments and data they cannot handle.

* Every public constructor besides the core's (see test_bad_input.py) refuses bad
  arguments at once, with a ValueError or TypeError whose message names the argument and
  the bad value. Arguments that may carry a password (``dsn``, ``url``, ``password``,
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

from aioconveyor import AioConveyor, PostgresLeader
from aioconveyor.consumers import CsvConsumer, MqttConsumer, PostgresConsumer, PrettyPrintConsumer
from aioconveyor.consumers.mqtt import HaDiscovery, HaSensor
from aioconveyor.testing import wait_until
from support.services import host_port

SENSORS = [HaSensor("temperature", "Temperature")]

REQUIRED: dict[Callable[..., Any], dict[str, Any]] = {
    PostgresConsumer: {},
    MqttConsumer: {},
    HaSensor: {"key": "temperature", "name": "Temperature"},
    HaDiscovery: {"node_id": "node", "device_name": "Device", "sensors": SENSORS},
    CsvConsumer: {"path": "readings.csv"},
    PrettyPrintConsumer: {},
    PostgresLeader: {"dsn": None, "key": "meter"},
}
"""What each constructor needs besides the bad argument."""

_DEFAULT = object()


def case(ctor: Callable[..., Any], exc: type[Exception], argument: str, value: Any,
         shown: Any = _DEFAULT, **others: Any) -> Any:
    """``ctor(argument=value, **others)`` must raise ``exc`` naming ``argument`` and
    ``shown`` (by default ``repr(value)``)."""
    kwargs = {**REQUIRED[ctor], **others, argument: value}
    text = repr(value) if shown is _DEFAULT else str(shown)
    label = f"{getattr(ctor, '__name__', ctor)}-{argument}={value!r}"
    return pytest.param(ctor, kwargs, exc, argument, text, id=label)


PG, MQTT, CSV, PRETTY, LEADER = (PostgresConsumer, MqttConsumer, CsvConsumer,
                                 PrettyPrintConsumer, PostgresLeader)

CASES = [
    # PostgresConsumer
    case(PG, TypeError, "dsn", 5432, "got int"),
    case(PG, TypeError, "table", 5),
    case(PG, ValueError, "table", "a\x00b"),
    case(PG, TypeError, "schema", ""),
    case(PG, TypeError, "columns", [5], "got 5"),
    case(PG, ValueError, "columns", []),
    case(PG, TypeError, "key", "event_time"),
    case(PG, TypeError, "key", [None], "got None"),
    case(PG, TypeError, "create_table", "yes"),
    case(PG, TypeError, "time_column", 5),
    case(PG, ValueError, "payload_column", "event_time"),
    case(PG, ValueError, "batch_age", -1),
    case(PG, TypeError, "retries", 1.5),
    case(PG, ValueError, "queue_size", 0),
    case(PG, ValueError, "timeout", -1),
    case(PG, ValueError, "max_backoff", math.nan),
    case(PG, ValueError, "ssl", "verify"),
    case(PG, TypeError, "ssl", 1),
    case(PG, TypeError, "server_settings", "statement_timeout=5"),
    case(PG, TypeError, "server_settings", {"statement_timeout": 5000},
         "server_settings['statement_timeout'] must be a str, got 5000"),
    case(PG, ValueError, "min_size", -1),
    case(PG, ValueError, "max_size", 0),
    case(PG, ValueError, "min_size", 3, "got 3 > 2", max_size=2),
    case(PG, ValueError, "connect_timeout", "10"),
    case(PG, ValueError, "connect_timeout", 0),
    case(PG, TypeError, "pool_options", ["max_queries"], "got list"),
    case(PG, TypeError, "name", 7),
    case(PG, TypeError, "logger", "aioconveyor"),
    # MqttConsumer
    case(MQTT, TypeError, "url", 1883, "got int"),
    case(MQTT, ValueError, "url", "tcp://broker:1883"),
    case(MQTT, ValueError, "url", "mqtt://broker:http"),
    case(MQTT, TypeError, "host", ""),
    case(MQTT, ValueError, "port", "1883"),
    case(MQTT, ValueError, "port", 0),
    case(MQTT, TypeError, "topic", b"state"),
    case(MQTT, ValueError, "topic", "a/\x00/b"),
    case(MQTT, ValueError, "qos", True),
    case(MQTT, TypeError, "retain", 1),
    case(MQTT, TypeError, "username", 5),
    case(MQTT, TypeError, "password", b"bytes", "got bytes", username="alice"),
    case(MQTT, TypeError, "tls", "yes"),
    case(MQTT, TypeError, "client_id", ""),
    case(MQTT, ValueError, "keepalive", 1.5),
    case(MQTT, ValueError, "timeout", -1),
    case(MQTT, TypeError, "encoder", "json"),
    case(MQTT, TypeError, "event_time_key", ""),
    case(MQTT, ValueError, "availability_topic", "a/+"),
    case(MQTT, TypeError, "discovery", {"node_id": "x"}),
    case(MQTT, TypeError, "name", ""),
    case(MQTT, ValueError, "retries", -1),
    case(MQTT, ValueError, "max_backoff", math.inf),
    case(MQTT, TypeError, "client_options", "protocol=5", "got str"),
    case(MQTT, TypeError, "client_options", {5: "x"}, "keys must be str, got 5"),
    case(MQTT, TypeError, "logger", "mqtt"),
    # HaSensor
    case(HaSensor, TypeError, "key", ""),
    case(HaSensor, TypeError, "key", 5),
    case(HaSensor, TypeError, "name", None),
    case(HaSensor, TypeError, "unit", 5),
    case(HaSensor, TypeError, "device_class", ""),
    case(HaSensor, TypeError, "state_class", 3),
    case(HaSensor, TypeError, "icon", b"mdi:x"),
    # HaDiscovery
    case(HaDiscovery, ValueError, "node_id", "a/b"),
    case(HaDiscovery, TypeError, "node_id", 5),
    case(HaDiscovery, TypeError, "device_name", ""),
    case(HaDiscovery, TypeError, "sensors", "temperature"),
    case(HaDiscovery, ValueError, "sensors", ()),
    case(HaDiscovery, TypeError, "sensors", [SENSORS[0], "humidity"], "sensors[1]"),
    case(HaDiscovery, ValueError, "prefix", "home/#"),
    case(HaDiscovery, TypeError, "prefix", ""),
    case(HaDiscovery, TypeError, "manufacturer", 5),
    case(HaDiscovery, TypeError, "model", ""),
    case(HaDiscovery, TypeError, "sw_version", 1.0),
    # CsvConsumer (most cases live in test_csv.py)
    case(CSV, TypeError, "path", None),
    case(CSV, TypeError, "fields", [""], "got ''"),
    case(CSV, ValueError, "extra", None),
    case(CSV, ValueError, "rotate", True),
    case(CSV, TypeError, "max_bytes", True),
    case(CSV, TypeError, "delimiter", 5),
    case(CSV, ValueError, "delimiter", "\n"),
    case(CSV, TypeError, "name", 5),
    # PrettyPrintConsumer (more in test_pretty.py)
    case(PRETTY, TypeError, "console", "stdout"),
    case(PRETTY, TypeError, "name", 5),
    case(PRETTY, TypeError, "max_string", 1.5),
    case(PRETTY, ValueError, "max_depth", 0),
    case(PRETTY, ValueError, "max_length", -3),
    case(PRETTY, TypeError, "max_rows", None),
    # PostgresLeader (more in test_leader.py)
    case(LEADER, TypeError, "dsn", b"postgresql://u:pw@h/db", "got bytes"),
    case(LEADER, TypeError, "key", 5),
    case(LEADER, ValueError, "keepalive", 0.5),
    case(LEADER, ValueError, "keepalive", "10"),
    case(LEADER, ValueError, "keepalive", math.inf),
    case(LEADER, ValueError, "connect_timeout", -1),
    case(LEADER, TypeError, "name", ""),
    case(LEADER, TypeError, "server_settings", "idle_session_timeout=30s"),
    case(LEADER, ValueError, "ssl", "on"),
    case(LEADER, TypeError, "ssl", 1.0),
    case(LEADER, TypeError, "logger", "leader"),
]


@pytest.mark.parametrize(("ctor", "kwargs", "exc", "argument", "shown"), CASES)
def test_bad_arguments_fail_at_construction_naming_argument_and_value(
    ctor: Callable[..., Any], kwargs: dict[str, Any], exc: type[Exception], argument: str,
    shown: str,
) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        ctor(**kwargs)
    message = str(info.value)
    assert type(info.value) is exc, f"{type(info.value).__name__}: {message}"
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
    with pytest.raises((TypeError, ValueError)) as info:
        ctor(**kwargs)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


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
