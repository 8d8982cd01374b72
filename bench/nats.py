"""NATS JetStream: msg/s of NatsConsumer through the conveyor vs raw nats-py.

The same JSON messages (a small mapping plus its ``event_time``, as the consumer encodes
it), each with its ``Nats-Msg-Id`` header (the grid time), go to a stream of the run's own
on the local NATS server (memory storage, so the disk of a shared machine adds no noise;
created before and deleted after each run), in a fresh process per run:

* ``raw nats-py``: one connection; ``CHUNK`` ``js.publish`` calls at a time concurrently
  (``asyncio.gather``), each awaiting its PubAck, which is how the consumer publishes a
  batch. The payload is JSON-encoded per message, as the consumer must.
* ``conveyor``: ``AioConveyor`` whose producer returns a :class:`~aioconveyor.Batch` of
  ``CHUNK`` records per tick, published by ``NatsConsumer`` (all of a batch at once, then
  every PubAck awaited) with ``Consumer(batch_size=1, copy=False, overflow="block")``;
  ticks come every 20 ms of the real clock, far more than the server takes, so the consumer
  is the bottleneck (a ``FakeClock`` would jump ahead while the PubAcks are on the
  network and time the calls out). The clock is ``SystemClock(busy=0)``: the default spins
  up to a tenth of each sleep to start ticks on time, which here would take a tenth of the
  loop from the consumer; throughput, not punctuality, is measured. Timed from the first
  producer call to the end of the last successful delivery (all PubAcks received).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ._util import Row, Section, Target, ratio, run_worker

URL = os.environ.get("AIOCONVEYOR_TEST_NATS_URL", "nats://127.0.0.1:4222")
CHUNK = 500
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MSG_ID = "Nats-Msg-Id"
TICK = 0.02
"""Seconds between ticks: a batch of ``CHUNK`` every 20 ms offers far more than the server
takes, so the consumer is the bottleneck (``overflow="block"`` holds the producer back)."""

TABLE_COLUMNS = [
    ("method", "method"), ("messages", "messages"), ("seconds", "seconds"),
    ("msg_per_s", "msg/s"), ("vs_raw", "x raw nats-py"), ("cpu_us", "CPU µs/msg"),
]


def make_messages(n: int) -> list[tuple[dict[str, Any], datetime]]:
    return [({"sensor": f"sensor-{i % 16}", "n": i, "value": i * 0.5, "ok": i % 2 == 0},
             T0 + timedelta(milliseconds=i)) for i in range(n)]


async def _stream(subject: str) -> tuple[Any, str]:
    """A connection and a fresh stream capturing ``subject``."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    name = f"BENCH_{os.getpid()}"
    nc = await nats.connect(URL)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[subject], duplicate_window=120,
                                     storage=StorageType.MEMORY))
    return nc, name


async def _check_and_drop(nc: Any, name: str, expected: int) -> None:
    js = nc.jetstream()
    info = await js.stream_info(name)
    assert info.state.messages == expected, (info.state.messages, expected)
    await js.delete_stream(name)
    await nc.close()


async def _raw(messages: list[tuple[dict[str, Any], datetime]],
               subject: str) -> tuple[float, float]:
    import nats

    admin, name = await _stream(subject)
    nc = await nats.connect(URL)
    js = nc.jetstream(timeout=10)
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(messages), CHUNK):
        await asyncio.gather(*(
            js.publish(subject, json.dumps({**data, "event_time": when.isoformat()},
                                           separators=(",", ":")).encode(),
                       headers={MSG_ID: when.isoformat()})
            for data, when in messages[i:i + CHUNK]
        ))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    await nc.close()
    await _check_and_drop(admin, name, len(messages))
    return seconds, cpu


class _Timed:
    """The consumer, noting when each successful call ended (the real clock)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.name = sink.name
        self.last = 0.0
        self.last_cpu = 0.0

    async def open(self) -> None:
        await self.sink.open()

    async def close(self) -> None:
        await self.sink.close()

    async def __call__(self, data: Any, event_time: datetime) -> None:
        await self.sink(data, event_time)
        self.last = time.perf_counter()
        self.last_cpu = time.process_time()


async def _conveyor(messages: list[tuple[dict[str, Any], datetime]],
                    subject: str) -> tuple[float, float]:
    from aioconveyor import AioConveyor, Batch, Consumer, Record, SystemClock
    from aioconveyor.consumers import NatsConsumer

    admin, name = await _stream(subject)
    records = [Record(data, when) for data, when in messages]
    first: list[float] = []
    position = 0

    async def produce(event_time: datetime) -> Batch:
        nonlocal position
        if not first:
            first.extend((time.perf_counter(), time.process_time()))
        chunk = Batch(records[position:position + CHUNK])
        position += CHUNK
        return chunk

    sink = NatsConsumer(URL, subject, timeout=10, name="nats")
    timed = _Timed(sink)
    consumer = Consumer(timed, name="nats", batch_size=1, copy=False, overflow="block",
                        queue_size=4, timeout=60)
    conv = AioConveyor(produce, [consumer], loop_interval=TICK, max_ticks=len(records) // CHUNK,
                       name="bench-nats", stop_timeout=60, clock=SystemClock(busy=0))
    await conv.run()
    stats = conv.stats().consumer("nats")
    assert stats.delivered == len(records) // CHUNK and stats.errors == 0, stats
    assert sink.duplicates == 0
    await _check_and_drop(admin, name, len(messages))
    return timed.last - first[0], timed.last_cpu - first[1]


def nats_run(method: str, messages: int) -> Row:
    subject = f"aioconveyor.bench.{os.getpid()}"
    data = make_messages(messages)
    if method == "raw":
        seconds, cpu = asyncio.run(_raw(data, subject))
    else:
        seconds, cpu = asyncio.run(_conveyor(data, subject))
    return {"messages": messages, "seconds": seconds, "msg_per_s": messages / seconds,
            "cpu_us": 1e6 * cpu / messages}


def run(quick: bool) -> Section:
    messages, rounds = (5_000, 5) if quick else (20_000, 9)
    section = Section(
        "nats", "NATS JetStream: messages/s to the local nats-server (memory storage)",
        TABLE_COLUMNS,
        notes=[f"batches of {CHUNK} messages per tick (conveyor) and per gather (raw), every "
               "message with its Nats-Msg-Id and its PubAck awaited",
               f"{rounds} rounds of {messages:,} messages, each raw then conveyor at once after "
               "it (a fresh process per run): the rows are the median run of each method, "
               "the ratio is the median of the rounds' own ratios (a run's rate varies by "
               "1.5x on a shared machine; neighbours in time share its load)"],
    )
    pairs: list[tuple[Row, Row]] = []
    for _ in range(rounds):
        raw = run_worker("bench.nats", "nats_run", timeout=600.0, method="raw",
                         messages=messages)
        conv = run_worker("bench.nats", "nats_run", timeout=600.0, method="conveyor",
                          messages=messages)
        pairs.append((raw, conv))
    middle = rounds // 2
    ratios = sorted(ratio(c["msg_per_s"], r["msg_per_s"]) for r, c in pairs)
    raws = sorted((r for r, _ in pairs), key=lambda row: row["msg_per_s"])
    convs = sorted((c for _, c in pairs), key=lambda row: row["msg_per_s"])
    section.rows += [
        raws[middle] | {"method": "raw nats-py (js.publish, gather)", "vs_raw": 1.0},
        convs[middle] | {"method": "conveyor + NatsConsumer", "vs_raw": ratios[middle]},
    ]
    section.notes.append(f"the rounds' ratios: {', '.join(f'{r:.2f}' for r in ratios)}")
    cpu = [sorted(row["cpu_us"] for row in rows)[middle] for rows in (raws, convs)]
    section.notes.append(f"CPU of the process per message, median: raw {cpu[0]:.0f} µs, "
                         f"conveyor {cpu[1]:.0f} µs (the scheduler, lane and consumer "
                         "included)")
    section.targets.append(Target("NATS consumer vs raw nats-py JetStream", ">= 90 %",
                                  100 * ratios[middle], 90.0, higher_is_better=True, unit="%"))
    return section
