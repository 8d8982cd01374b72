"""5. MQTT: msg/s of MqttConsumer through the conveyor vs raw aiomqtt, QoS 0 and 1.

The same JSON messages (a small mapping plus its ``event_time``, as the consumer encodes
it) go to the same local Mosquitto topic, each method in a fresh process:

* ``raw aiomqtt``: one ``aiomqtt.Client``; QoS 0 publishes one after the other (each
  returns once handed to the socket layer); QoS 1 publishes ``CHUNK`` messages at a time
  concurrently (``asyncio.gather``) and waits for their PUBACKs, which is how the consumer
  publishes a batch. The payload is JSON-encoded per message, as the consumer must.
* ``conveyor``: ``AioConveyor`` whose producer returns a :class:`~aioconveyor.Batch` of
  ``CHUNK`` records per tick, published by ``MqttConsumer`` (QoS 0: one message after the
  other; QoS 1: all of a batch at once, then every PUBACK awaited) with
  ``Consumer(batch_size=1, copy=False, overflow="block", timeout=math.inf)``; ticks come
  from a ``FakeClock`` that each call of the consumer advances (``bench._util.CallDriven``:
  the next batch is ready while one is published, and nothing polls the loop meanwhile),
  so the consumer is the bottleneck. Timed with ``perf_counter`` from the first producer
  call to the end of the last successful call (QoS 1: all PUBACKs received).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ._util import CallDriven, Row, Section, Target, ratio, run_worker, settle_garbage

URL = os.environ.get("AIOCONVEYOR_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
CHUNK = 500
T0 = datetime(2026, 1, 1, tzinfo=UTC)

TABLE_COLUMNS = [
    ("method", "method"), ("qos", "QoS"), ("messages", "messages"), ("seconds", "seconds"),
    ("msg_per_s", "msg/s"), ("vs_raw", "x raw aiomqtt"),
]


def make_messages(n: int) -> list[tuple[dict[str, Any], datetime]]:
    return [({"sensor": f"sensor-{i % 16}", "n": i, "value": i * 0.5, "ok": i % 2 == 0},
             T0 + timedelta(milliseconds=i)) for i in range(n)]


def _host_port() -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(URL)
    return parts.hostname or "127.0.0.1", parts.port or 1883


async def _raw(qos: int, messages: list[tuple[dict[str, Any], datetime]], topic: str) -> float:
    import aiomqtt

    host, port = _host_port()
    settle_garbage()
    async with aiomqtt.Client(host, port) as client:
        started = time.perf_counter()
        if qos == 0:
            for data, when in messages:
                payload = json.dumps({**data, "event_time": when.isoformat()},
                                     separators=(",", ":"))
                await client.publish(topic, payload.encode(), qos=0)
        else:
            for i in range(0, len(messages), CHUNK):
                await asyncio.gather(*(
                    client.publish(topic, json.dumps({**data, "event_time": when.isoformat()},
                                                     separators=(",", ":")).encode(), qos=qos)
                    for data, when in messages[i:i + CHUNK]
                ))
        return time.perf_counter() - started


async def _conveyor(qos: int, messages: list[tuple[dict[str, Any], datetime]],
                    topic: str) -> float:
    from aioconveyor import AioConveyor, Batch, Consumer, Record
    from aioconveyor.consumers import MqttConsumer

    records = [Record(data, when) for data, when in messages]
    settle_garbage()
    first: list[float] = []
    last: list[float] = [0.0]
    position = 0

    ticks = len(records) // CHUNK
    calls = 0
    driven = CallDriven()

    async def produce(event_time: datetime) -> Batch | None:
        nonlocal position
        if not first:
            first.append(time.perf_counter())
        if position >= len(records):
            return None  # all handed over: nothing this tick
        chunk = Batch(records[position:position + CHUNK])
        position += CHUNK
        return chunk

    host, port = _host_port()

    class Timed(MqttConsumer):
        """Notes the end of each successful call on the clock of the start
        (``last_success_time`` is the conveyor's FakeClock), and stops the conveyor after
        the last (not ``max_ticks``: a FakeClock would jump over the stop deadline while
        a call waits for the broker, dropping what is queued)."""

        async def __call__(self, data: Any, event_time: datetime) -> None:
            nonlocal calls
            driven.started()
            await super().__call__(data, event_time)
            last[0] = time.perf_counter()
            calls += 1
            if calls == ticks:
                conv.stop()

    sink = Timed(host=host, port=port, topic=topic, qos=qos, name="mqtt")
    consumer = Consumer(sink, batch_size=1, copy=False, overflow="block", queue_size=4,
                        timeout=math.inf)
    conv = AioConveyor(produce, [consumer], loop_interval=1.0, clock=driven.clock,
                       name="bench-mqtt")
    await driven.run(conv)
    stats = conv.stats().consumer("mqtt")
    assert stats.delivered == ticks and stats.errors == 0, stats
    return last[0] - first[0]


def mqtt_run(method: str, qos: int, messages: int) -> Row:
    topic = f"aioconveyor/bench/{os.getpid()}"
    data = make_messages(messages)
    if method == "raw":
        seconds = asyncio.run(_raw(qos, data, topic))
    else:
        seconds = asyncio.run(_conveyor(qos, data, topic))
    return {"messages": messages, "seconds": seconds, "msg_per_s": messages / seconds}


def run(quick: bool) -> Section:
    counts = {0: 10_000 if quick else 100_000, 1: 5_000 if quick else 50_000}
    section = Section(
        "mqtt", "MQTT: messages/s to the local Mosquitto", TABLE_COLUMNS,
        notes=[f"batches of {CHUNK} messages per tick (conveyor) and per gather (raw QoS 1)",
               "the consumer publishes QoS 0 messages one after the other, like raw aiomqtt; "
               "QoS 1 all of a batch at once, then awaits every PUBACK"],
    )
    for qos in (0, 1):
        raw = run_worker("bench.mqtt", "mqtt_run", timeout=600.0, method="raw", qos=qos,
                         messages=counts[qos])
        conv = run_worker("bench.mqtt", "mqtt_run", timeout=600.0, method="conveyor",
                          qos=qos, messages=counts[qos])
        raw |= {"method": "raw aiomqtt", "qos": qos, "vs_raw": 1.0}
        conv |= {"method": "conveyor + MqttConsumer", "qos": qos,
                 "vs_raw": ratio(conv["msg_per_s"], raw["msg_per_s"])}
        section.rows += [raw, conv]
        section.targets.append(
            Target(f"MQTT consumer vs raw aiomqtt, QoS {qos}", ">= 90 %", 100 * conv["vs_raw"],
                   90.0, higher_is_better=True, unit="%"))
    return section
