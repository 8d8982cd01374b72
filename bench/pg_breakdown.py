"""``python -m bench.pg_breakdown [--chunk N]``: where ``PostgresConsumer`` spends its time.

Not part of ``python -m bench``: it explains the PostgreSQL row of the targets. The same
200,000 rows as ``bench.postgres`` go into a fresh table in chunks of ``--chunk`` rows
(default 500, the consumer's default batch size), best of 3 runs each, in one process:

* raw ``copy_records_to_table`` of ready tuples on one connection (the benchmark's peer);
* the same with a ``pool.acquire()`` per chunk (what the consumer does per call);
* the consumer's row conversion alone: a :class:`~aioconveyor.Batch` of records (mappings)
  to the tuples COPY takes, the loop of ``PostgresConsumer.__call__`` (internals);
* ``PostgresConsumer._write`` of ready tuples (pool + COPY straight into the table);
* ``PostgresConsumer`` called directly with each batch (conversion + write, no conveyor).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from .postgres import COLUMNS, DSN, _count_and_drop, _setup, make_rows

ROWS = 200_000
REPEAT = 3


async def _best(work: Callable[[], Awaitable[None]],
                before: Callable[[], Awaitable[None]] | None = None) -> float:
    times = []
    for _ in range(REPEAT):
        if before is not None:
            await before()
        started = time.perf_counter()
        await work()
        times.append(time.perf_counter() - started)
    return min(times)


async def breakdown(chunk: int) -> dict[str, float]:
    import asyncpg

    from aioconveyor import Batch, Record
    from aioconveyor.consumers import PostgresConsumer
    from aioconveyor.consumers._records import iter_records
    from aioconveyor.consumers.postgres import _utc

    rows = make_rows(ROWS)
    chunks = [rows[i:i + chunk] for i in range(0, ROWS, chunk)]
    records = [Record(dict(zip(COLUMNS[1:], r[1:], strict=True)), r[0]) for r in rows]
    batches = [Batch(records[i:i + chunk]) for i in range(0, ROWS, chunk)]
    table = f"aioconveyor_breakdown_{os.getpid()}"
    out: dict[str, float] = {}

    await _setup(table)
    conn = await asyncpg.connect(DSN)
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=1)
    sink = PostgresConsumer(DSN, table, columns=COLUMNS[1:], key=("id",), name="pg")
    await sink.open()
    try:
        async def truncate() -> None:
            await conn.execute(f"TRUNCATE {table}")

        async def raw_copy() -> None:
            for c in chunks:
                await conn.copy_records_to_table(table, records=c, columns=COLUMNS)

        async def pooled_copy() -> None:
            for c in chunks:
                async with pool.acquire() as pooled:
                    await pooled.copy_records_to_table(table, records=c, columns=COLUMNS)

        async def convert() -> None:
            for b in batches:
                converted = [sink._row(_utc(when), item)
                             for when, item in iter_records(b, b[0].event_time)]
                assert len(converted) == len(b)

        async def write_tuples() -> None:
            for c in chunks:
                await sink._write(c)

        async def call_consumer() -> None:
            for b in batches:
                await sink(b, b[0].event_time)

        out["raw COPY of ready tuples, one connection"] = await _best(raw_copy, truncate)
        out["raw COPY, pool.acquire() per chunk"] = await _best(pooled_copy, truncate)
        out["consumer: row conversion only"] = await _best(convert)
        out["consumer: _write() of ready tuples"] = await _best(write_tuples, truncate)
        out["consumer called directly"] = await _best(call_consumer, truncate)
    finally:
        await sink.close()
        await pool.close()
        await conn.close()
        written = await _count_and_drop(table)
    assert written == ROWS, f"{written} of {ROWS} rows in the table"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_breakdown", description=__doc__)
    parser.add_argument("--chunk", type=int, default=500, help="rows per call (default 500)")
    args = parser.parse_args(argv)
    out = asyncio.run(breakdown(args.chunk))
    base = out["raw COPY of ready tuples, one connection"]
    print(f"{ROWS:,} rows in chunks of {args.chunk:,}, best of {REPEAT}")
    for name, seconds in out.items():
        per_chunk_ms = 1e3 * seconds / (ROWS / args.chunk)
        print(f"{name:42s} {seconds:6.3f} s {ROWS / seconds:10,.0f} rows/s "
              f"{per_chunk_ms:7.2f} ms/chunk {1e6 * seconds / ROWS:6.2f} us/row "
              f"{seconds / base:5.2f} x raw time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
