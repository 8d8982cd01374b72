"""4. PostgreSQL: rows/s of PostgresConsumer through the conveyor vs raw asyncpg.

The same rows (6 columns: timestamptz, bigint primary key, text, float8, int, bool) go into
the same freshly truncated table of the same server, each method in a fresh process:

* ``raw COPY``: ``conn.copy_records_to_table`` in chunks of ``CHUNK`` rows (the consumer's
  default batch size), each its own implicit transaction;
* ``per-row INSERT``: one ``INSERT ... VALUES`` statement (and commit) per row, on fewer
  rows (it is slow), scaled to rows/s;
* ``conveyor``: ``AioConveyor`` whose producer returns a :class:`~aioconveyor.Batch` of
  ``CHUNK`` records per tick, delivered by ``PostgresConsumer`` (one binary COPY straight
  into the table per call; a staging table + ``INSERT ... ON CONFLICT DO NOTHING`` only
  when a key is there already, which never happens here) with
  ``Consumer(batch_size=1, copy=False, overflow="block")``; ticks are driven by
  ``FakeClock`` so the producer never waits for wall-clock time and the consumer is the
  bottleneck. Timed from the first producer call to the last successful delivery.
* ``conveyor, 1 row/tick``: the realistic shape (one record per tick, the lane batching
  ``CHUNK`` records per call), where the engine's tick rate is the limit.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ._util import Row, Section, Target, ratio, run_worker, settle_garbage

DSN = os.environ.get("AIOCONVEYOR_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CHUNK = 500
COLUMNS = ("event_time", "id", "sensor", "value", "status", "ok")
T0 = datetime(2026, 1, 1, tzinfo=UTC)

TABLE_COLUMNS = [
    ("method", "method"), ("rows", "rows"), ("seconds", "seconds"), ("rows_per_s", "rows/s"),
    ("vs_copy", "x raw COPY"), ("vs_insert", "x per-row INSERT"),
]


def make_rows(n: int) -> list[tuple[Any, ...]]:
    return [(T0 + timedelta(milliseconds=i), i, f"sensor-{i % 16}", i * 0.5, i % 7, i % 2 == 0)
            for i in range(n)]


async def _setup(table: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute(
            f"CREATE TABLE {table} (event_time timestamptz NOT NULL, id bigint PRIMARY KEY, "
            "sensor text, value double precision, status integer, ok boolean)"
        )
    finally:
        await conn.close()


async def _count_and_drop(table: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(DSN)
    try:
        count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        await conn.execute(f"DROP TABLE {table}")
    finally:
        await conn.close()
    return count


async def _raw(method: str, table: str, rows: list[tuple[Any, ...]]) -> float:
    import asyncpg

    conn = await asyncpg.connect(DSN)
    settle_garbage()
    try:
        started = time.perf_counter()
        if method == "copy":
            for i in range(0, len(rows), CHUNK):
                await conn.copy_records_to_table(table, records=rows[i:i + CHUNK],
                                                 columns=COLUMNS)
        else:
            sql = (f"INSERT INTO {table} ({', '.join(COLUMNS)}) "
                   "VALUES ($1, $2, $3, $4, $5, $6)")
            for row in rows:
                await conn.execute(sql, *row)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _conveyor(table: str, rows: list[tuple[Any, ...]], per_tick: int) -> float:
    from aioconveyor import AioConveyor, Batch, Consumer, Record
    from aioconveyor.consumers import PostgresConsumer
    from aioconveyor.testing import FakeClock

    records = [Record(dict(zip(COLUMNS[1:], r[1:], strict=True)), r[0]) for r in rows]
    settle_garbage()
    first: list[float] = []
    last: list[float] = [0.0]
    position = 0

    written = 0

    async def produce(event_time: datetime) -> Any:
        nonlocal position
        if not first:
            first.append(time.perf_counter())
        if position >= len(records):
            return None  # all handed over: nothing this tick
        chunk = records[position:position + per_tick]
        position += per_tick
        if per_tick == 1:  # one record per tick (written with the tick's time)
            return chunk[0].data
        return Batch(chunk)

    class Timed(PostgresConsumer):
        """Notes the end of each successful call on the clock of the start
        (``last_success_time`` is the conveyor's FakeClock), and stops the conveyor once
        every row is written (not ``max_ticks``: a FakeClock would jump over the stop
        deadline while a COPY waits for the server, dropping what is queued)."""

        async def __call__(self, data: Any, event_time: datetime) -> None:
            nonlocal written
            await super().__call__(data, event_time)
            last[0] = time.perf_counter()
            written += len(data) if isinstance(data, Batch) else 1
            if written == len(rows):
                conv.stop()

    sink = Timed(DSN, table, columns=COLUMNS[1:], key=("id",), name="pg")
    if per_tick == 1:  # the lane batches up to CHUNK records per call (the default)
        consumer = Consumer(sink, copy=False, overflow="block", queue_size=4 * CHUNK,
                            timeout=math.inf)
    else:
        consumer = Consumer(sink, batch_size=1, copy=False, overflow="block", queue_size=4,
                            timeout=math.inf)
    conv = AioConveyor(produce, [consumer], loop_interval=1.0, clock=FakeClock(),
                       name="bench-pg")
    await conv.run()
    stats = conv.stats().consumer("pg")
    assert stats.delivered == len(rows) // per_tick, stats
    return last[0] - first[0]


def pg_run(method: str, rows: int) -> Row:
    table = f"aioconveyor_bench_{os.getpid()}"
    data = make_rows(rows)
    asyncio.run(_setup(table))
    try:
        if method in ("copy", "insert"):
            seconds = asyncio.run(_raw(method, table, data))
        elif method == "conveyor":
            seconds = asyncio.run(_conveyor(table, data, CHUNK))
        else:
            seconds = asyncio.run(_conveyor(table, data, 1))
    finally:
        written = asyncio.run(_count_and_drop(table))
    assert written == rows, f"{method}: {written} of {rows} rows in the table"
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def run(quick: bool) -> Section:
    n = 20_000 if quick else 200_000
    n_insert = 1_000 if quick else 5_000
    n_tick = 5_000 if quick else 20_000
    section = Section(
        "postgres", f"PostgreSQL: {n:,} rows of 6 columns", TABLE_COLUMNS,
        notes=[f"chunks of {CHUNK} rows for COPY and the conveyor; per-row INSERT on "
               f"{n_insert:,} rows; '1 row/tick' on {n_tick:,} rows (FakeClock-driven)",
               "conveyor rows: the producer returns a Batch of records per tick; the "
               "consumer writes each call with one COPY straight into the table; staging + "
               "ON CONFLICT only when a key exists (exactly-once)"],
    )
    results: dict[str, Row] = {}
    for method, label, count in (("copy", "raw asyncpg COPY", n),
                                 ("insert", "raw per-row INSERT", n_insert),
                                 ("conveyor", f"conveyor + PostgresConsumer ({CHUNK} rows/tick)",
                                  n),
                                 ("tick", "conveyor + PostgresConsumer (1 row/tick)", n_tick)):
        row = run_worker("bench.postgres", "pg_run", timeout=600.0, method=method, rows=count)
        row["method"] = label
        results[method] = row
        section.rows.append(row)
    for row in section.rows:
        row["vs_copy"] = ratio(row["rows_per_s"], results["copy"]["rows_per_s"])
        row["vs_insert"] = ratio(row["rows_per_s"], results["insert"]["rows_per_s"])
    conv = results["conveyor"]
    section.targets += [
        Target("PostgreSQL consumer vs raw COPY", ">= 80 %", 100 * conv["vs_copy"], 80.0,
               higher_is_better=True, unit="%"),
        Target("PostgreSQL consumer vs per-row INSERT", ">= 50 x", conv["vs_insert"], 50.0,
               higher_is_better=True, unit="x"),
    ]
    return section
