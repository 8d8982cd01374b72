"""11. Redis Streams: entries/s of RedisStreamConsumer through the conveyor vs raw redis-py.

The same entries (a small mapping plus its ``event_time``, as the consumer writes them:
flat fields, values as text, an explicit ``<ms>-<seq>`` ID from the grid time) go to a fresh
stream of the local Redis, each method in a fresh process:

* ``raw redis-py``: one ``redis.asyncio.Redis``; ``CHUNK`` ``XADD`` commands with explicit
  IDs per pipeline (``transaction=False``), each entry's fields encoded to bytes as the
  consumer encodes them, every reply checked.
* ``conveyor``: ``AioConveyor`` whose producer returns a :class:`~aioconveyor.Batch` of
  ``CHUNK`` records per tick, written by ``RedisStreamConsumer`` (one pipeline per batch)
  with ``Consumer(batch_size=1, copy=False, overflow="block")``, ticking at 50 Hz on the
  real clock (``SystemClock(busy=0)``: no spinning before a tick) so the producer is
  always ahead and the consumer is the bottleneck. Timed
  from the first producer call to the first one that finds every entry written.

Both build their input first and then ``gc.freeze()`` it (the garbage collector would
otherwise walk the 200,000 pre-built records in every full collection).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ._util import Row, Section, Target, run_worker

URL = os.environ.get("AIOCONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHUNK = 2000
T0 = datetime(2026, 1, 1, tzinfo=UTC)

TABLE_COLUMNS = [
    ("method", "method"), ("entries", "entries"), ("seconds", "seconds"),
    ("entries_per_s", "entries/s"), ("vs_raw", "x raw redis-py"),
]


def make_entries(n: int) -> list[tuple[dict[str, Any], datetime]]:
    return [({"sensor": f"sensor-{i % 16}", "n": i, "value": i * 0.5, "ok": i % 2 == 0},
             T0 + timedelta(milliseconds=i)) for i in range(n)]


def _fields(data: dict[str, Any], when: datetime) -> dict[bytes, bytes]:
    """What RedisStreamConsumer writes for one of these records (layout="flat"), as bytes
    (redis-py passes bytes through without encoding them again)."""
    out = {k.encode(): (b"true" if v else b"false") if isinstance(v, bool)
           else v.encode() if isinstance(v, str) else repr(v).encode()
           for k, v in data.items()}
    out[b"event_time"] = when.isoformat().encode()
    return out


def _settle() -> None:
    """Before timing, in both peers: the pre-built input (a real producer holds no 200,000
    records) is moved out of the garbage collector's sight, so that its full collections,
    which would walk it again and again, do not weigh on either side."""
    gc.collect()
    gc.freeze()


def _id(when: datetime) -> str:
    us = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return f"{us // 1000}-{us % 1000}"


async def _raw(entries: list[tuple[dict[str, Any], datetime]], stream: str) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URL)
    try:
        await client.ping()
        _settle()
        started = time.perf_counter()
        for i in range(0, len(entries), CHUNK):
            pipe = client.pipeline(transaction=False)
            for data, when in entries[i:i + CHUNK]:
                pipe.xadd(stream, _fields(data, when), id=_id(when))  # type: ignore[arg-type]
            replies = await pipe.execute(raise_on_error=False)
            assert not any(isinstance(r, Exception) for r in replies), replies[:3]
        return time.perf_counter() - started
    finally:
        await client.delete(stream)
        await client.aclose()


async def _conveyor(entries: list[tuple[dict[str, Any], datetime]], stream: str) -> float:
    import redis.asyncio as aioredis

    from aioconveyor import AioConveyor, Batch, Consumer, Record, SystemClock
    from aioconveyor.consumers import RedisStreamConsumer

    records = [Record(data, when) for data, when in entries]
    _settle()
    first: list[float] = []
    last: list[float] = []
    finished = asyncio.Event()
    position = 0

    async def produce(event_time: datetime) -> Batch | None:
        nonlocal position
        if not first:
            first.append(time.perf_counter())
        if position < len(records):
            chunk = Batch(records[position:position + CHUNK])
            position += CHUNK
            return chunk
        if sink.written + sink.duplicates >= len(records) and not finished.is_set():
            last.append(time.perf_counter())  # the first tick after the last write
            finished.set()
        return None  # nothing more to offer

    sink = RedisStreamConsumer(URL, stream=stream, name="redis")
    consumer = Consumer(sink, batch_size=1, copy=False, overflow="block", queue_size=4)
    # 50 Hz on the real clock: 100,000 entries/s offered, so the producer is always ahead.
    # Writing a batch keeps the loop busy for tens of ms (encoding, redis-py packing 2,000
    # commands), so a tick often comes late: misfire="coalesce" with a long grace runs it
    # as soon as the loop is free instead of skipping it (skipped ticks would leave the
    # queue empty). Few ticks and busy=0 (no spinning before a tick: this is about
    # throughput), so the clock takes next to no CPU from the consumer or from Redis on a
    # small busy machine. A FakeClock would spin its autojump turns while the loop waits.
    logging.getLogger("aioconveyor").setLevel(logging.ERROR)
    conv = AioConveyor(produce, [consumer], loop_interval=0.02, clock=SystemClock(busy=0),
                       misfire="coalesce", misfire_grace=60.0, name="bench-redis")
    try:
        running = asyncio.create_task(conv.run())
        waiting = asyncio.create_task(finished.wait())
        await asyncio.wait({running, waiting}, timeout=600,
                           return_when=asyncio.FIRST_COMPLETED)
        running.cancel()  # a graceful stop: nothing is queued or in flight any more
        waiting.cancel()
        await asyncio.gather(running, waiting, return_exceptions=True)
        assert last, "not every entry was written within 600 s"
    finally:
        client = aioredis.Redis.from_url(URL)
        stored = await client.xlen(stream)
        await client.delete(stream)
        await client.aclose()
    stats = conv.stats().consumer("redis")
    assert stats.delivered == len(records) // CHUNK and stats.errors == 0, stats
    assert stored == sink.written == len(records), (stored, sink.written)
    return last[0] - first[0]


def redis_run(method: str, entries: int) -> Row:
    stream = f"aioconveyor-bench:{method}:{os.getpid()}"
    data = make_entries(entries)
    run = _raw if method == "raw" else _conveyor
    seconds = asyncio.run(run(data, stream))
    return {"entries": entries, "seconds": seconds, "entries_per_s": entries / seconds}


def run(quick: bool) -> Section:
    entries = 50_000 if quick else 200_000
    section = Section(
        "redis", "Redis Streams: entries/s to the local Redis", TABLE_COLUMNS,
        notes=[f"pipelines of {CHUNK} XADDs with explicit IDs: one per tick (conveyor), one "
               "per chunk (raw)",
               f"median of {3 if quick else 7} runs each, raw and conveyor interleaved, fresh "
               "processes; 'x raw' is the median of the ratios of the pairs run back to back"],
    )
    raws: list[Row] = []
    convs: list[Row] = []
    runs = 3 if quick else 7
    for _ in range(runs):
        raws.append(run_worker("bench.redis", "redis_run", timeout=600.0, method="raw",
                               entries=entries))
        convs.append(run_worker("bench.redis", "redis_run", timeout=600.0,
                                method="conveyor", entries=entries))
    # each pair ran back to back, under about the same load: the median of their ratios
    # is steadier on a busy machine than the ratio of the medians
    pairs = sorted(c["entries_per_s"] / r["entries_per_s"] for r, c in zip(raws, convs,
                                                                          strict=True))
    raw = sorted(raws, key=lambda r: r["entries_per_s"])[runs // 2]
    conv = sorted(convs, key=lambda r: r["entries_per_s"])[runs // 2]
    raw |= {"method": "raw redis-py", "vs_raw": 1.0}
    conv |= {"method": "conveyor + RedisStreamConsumer", "vs_raw": pairs[runs // 2]}
    section.rows += [raw, conv]
    section.targets.append(
        Target("Redis Streams consumer vs raw redis-py", ">= 90 %", 100 * conv["vs_raw"],
               90.0, higher_is_better=True, unit="%"))
    return section
