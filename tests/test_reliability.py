"""The durable spool through real failures: a conveyor writing to the real PostgreSQL is
killed with SIGKILL, and the next one, on the same spool file, delivers the backlog.

The first conveyor runs in a subprocess (``WORKER`` below) and writes every event_time it
produces to a file before returning the item. When the test asks it to, it stops producing
and says so once everything it produced is in its lane (and so in the spool); only then is
it killed. So "produced before the kill" is exactly the file's content, and the check is
sound: every one of those rows must end up in the table once, no more, no fewer.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aioconveyor import AioConveyor, Consumer
from aioconveyor.consumers import PostgresConsumer
from aioconveyor.testing import wait_until
from support.proxy import TcpProxy
from support.services import host_port

LANE = "pg"
"""The consumer name both runs use: a spool is keyed by it."""

WORKER = textwrap.dedent("""
    import asyncio, json, math, sys, time
    from pathlib import Path

    from aioconveyor import AioConveyor, Consumer
    from aioconveyor.consumers import PostgresConsumer

    mode, dsn, table, spool, workdir = sys.argv[1:6]
    work = Path(workdir)
    log = (work / "produced.txt").open("a", encoding="utf-8")
    stop_file = work / "stop-producing"
    produced = []
    stopped = False

    async def produce(event_time):
        global stopped
        if stop_file.exists():
            stopped = True
            return None
        produced.append(event_time)
        log.write(f"{len(produced) - 1} {event_time.isoformat()}\\n")
        log.flush()  # in the kernel before the item exists: SIGKILL cannot lose the line
        return {"seq": len(produced) - 1}

    class CrashAfterCommit:
        # Writes like the PostgresConsumer it wraps, then, once 5 rows are committed,
        # hangs in the call (until the SIGKILL): the lane never learns that the batch
        # was written, so its items are still in the spool.
        name = "pg"

        def __init__(self, inner):
            self.inner = inner
            self.consumer_defaults = inner.consumer_defaults

        async def open(self):
            await self.inner.open()

        async def close(self):
            await self.inner.close()

        async def __call__(self, data, event_time):
            await self.inner(data, event_time)
            if self.inner.written >= 5:
                print("committed", self.inner.written, flush=True)
                await asyncio.Event().wait()

    sink = PostgresConsumer(dsn, table, create_table=True, batch_size=4, batch_age=0.05,
                            max_backoff=0.2, connect_timeout=2.0)
    consumer = sink if mode == "outage" else CrashAfterCommit(sink)
    conv = AioConveyor(produce, [Consumer(consumer, name="pg", spool=spool, timeout=math.inf)],
                       loop_interval=0.05)
    conv.start()
    print("started", flush=True)
    while not (stopped and conv.stats().consumer("pg").offered == len(produced)):
        time.sleep(0.01)  # everything produced is now in the lane, hence in the spool
    lane = conv.stats().consumer("pg")
    print("quiet", json.dumps({"produced": len(produced), "delivered": lane.delivered,
                               "waiting": lane.queued + lane.in_flight}), flush=True)
    time.sleep(3600)  # the test kills us
""")


# -- helpers ---------------------------------------------------------------------------


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def via_port(dsn: str, port: int) -> str:
    """``dsn`` pointed at 127.0.0.1:``port`` (the TCP proxy) instead."""
    parts = urllib.parse.urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str,
                     timeout: float = 20.0) -> None:
    """Poll ``check`` (sync or async) until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await _value(check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


class Worker:
    """The first conveyor, as a subprocess whose output goes to files (never a full pipe)."""

    def __init__(self, workdir: Path, mode: str, dsn: str, table: str, spool: Path) -> None:
        self.workdir = workdir
        self.out = workdir / "worker.out"
        self.err = workdir / "worker.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", WORKER, mode, dsn, table, str(spool), str(workdir)],
                stdout=out, stderr=err,
            )

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    async def line(self, word: str, timeout: float = 20.0) -> str:
        """The first output line starting with ``word``, once it is there."""
        async def there() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}:\n"
                            f"{self.err.read_text()[-3000:]}")
            return any(line.startswith(word) for line in self.lines())
        await eventually(there, f"the worker to print {word!r}", timeout)
        return next(line for line in self.lines() if line.startswith(word))

    def produced(self) -> list[tuple[int, datetime]]:
        rows = (line.split() for line in (self.workdir / "produced.txt").read_text().splitlines())
        return [(int(seq), datetime.fromisoformat(when)) for seq, when in rows]

    def stop_producing(self) -> None:
        (self.workdir / "stop-producing").touch()

    def sigkill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        assert self.process.wait(timeout=10) == -signal.SIGKILL

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start first-run subprocesses; every one is killed at teardown, whatever happened."""
    started: list[Worker] = []

    def start(*args: Any) -> Worker:
        started.append(Worker(tmp_path, *args))
        return started[-1]

    yield start
    for w in started:
        w.kill()


@pytest.fixture
async def table(db: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"aioc_reliability_{uuid.uuid4().hex[:12]}"
    yield name
    await db.execute(f"DROP TABLE IF EXISTS {q(name)}")


async def count(db: asyncpg.Connection, table: str) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {q(table)}"))


def spooled(spool: Path) -> int:
    """Items of our lane still in the spool file."""
    with sqlite3.connect(spool) as conn:
        return int(conn.execute("SELECT count(*) FROM aioconveyor_spool WHERE lane = ?",
                                (LANE,)).fetchone()[0])


@dataclass
class SecondRun:
    offered: int
    delivered: int
    written: int
    duplicates: int


async def deliver_the_backlog(dsn: str, table: str, spool: Path) -> SecondRun:
    """A new conveyor on the same spool and consumer name, connected directly. It produces
    nothing: whatever it delivers comes from the spool."""
    async def nothing(event_time: datetime) -> None:
        return None

    sink = PostgresConsumer(dsn, table, batch_size=4, batch_age=0.05, max_backoff=0.2)
    conv = AioConveyor(nothing, [Consumer(sink, name=LANE, spool=spool)], loop_interval=60,
                       stop_timeout=10)
    await asyncio.to_thread(conv.start)
    try:
        def idle() -> bool:
            lane = conv.stats().consumer(LANE)
            return lane.queued == lane.in_flight == 0 and lane.offered > 0
        assert await wait_until(idle, timeout=20), conv.stats().consumer(LANE)
    finally:
        await asyncio.to_thread(conv.stop)
    lane = conv.stats().consumer(LANE)
    assert (lane.dropped, lane.failed, lane.rejected) == (0, 0, 0), lane
    return SecondRun(lane.offered, lane.delivered, sink.written, sink.duplicates)


async def assert_every_produced_row_once(db: asyncpg.Connection, table: str,
                                         produced: list[tuple[int, datetime]]) -> None:
    rows = await db.fetch(f"SELECT event_time, payload FROM {q(table)} ORDER BY event_time")
    got = [(json.loads(r["payload"])["seq"], r["event_time"]) for r in rows]
    assert got == produced  # same rows, same order, each once
    assert await db.fetchval(f"SELECT count(DISTINCT event_time) FROM {q(table)}") == len(rows)


# -- tests -----------------------------------------------------------------------------


async def test_spool_survives_sigkill_during_a_postgres_outage(
    postgres_dsn: str, db: asyncpg.Connection, table: str, tmp_path: Path,
    worker: Callable[..., Worker],
) -> None:
    spool = tmp_path / "spool.db"
    with TcpProxy(*host_port(postgres_dsn, 5432)) as proxy:
        first = worker("outage", via_port(postgres_dsn, proxy.port), table, spool)
        await first.line("started")
        await eventually(lambda: _at_least(db, table, 5), "the first rows through the proxy")

        proxy.cut()  # the outage: every write and reconnect fails from now on
        at_cut = len(first.produced())
        await eventually(lambda: len(first.produced()) >= at_cut + 12,
                         "rows produced during the outage")
        first.stop_producing()
        quiet = json.loads((await first.line("quiet")).split(" ", 1)[1])
        assert quiet["waiting"] >= 12, quiet  # rows queued in the lane (and the spool)
        first.sigkill()

    produced = first.produced()
    assert [seq for seq, _ in produced] == list(range(quiet["produced"]))
    before = await count(db, table)
    assert before < len(produced)  # the backlog is not in the table yet
    assert spooled(spool) >= len(produced) - before

    second = await deliver_the_backlog(postgres_dsn, table, spool)

    await assert_every_produced_row_once(db, table, produced)
    assert second.offered == second.delivered == second.written + second.duplicates
    assert second.written == len(produced) - before
    assert spooled(spool) == 0  # delivered items are forgotten


async def test_a_sigkill_between_commit_and_spool_removal_duplicates_nothing(
    postgres_dsn: str, db: asyncpg.Connection, table: str, tmp_path: Path,
    worker: Callable[..., Worker],
) -> None:
    """The worst moment for a crash: rows committed, the spool not yet told. The next run
    sends them again, and the PostgreSQL consumer's ON CONFLICT skips them."""
    spool = tmp_path / "spool.db"
    first = worker("crash-after-commit", postgres_dsn, table, spool)
    committed = int((await first.line("committed")).split()[1])
    first.stop_producing()
    quiet = json.loads((await first.line("quiet")).split(" ", 1)[1])
    assert quiet["delivered"] < committed  # the lane does not know the last batch went in
    first.sigkill()

    produced = first.produced()
    assert await count(db, table) == committed
    assert spooled(spool) == len(produced) - quiet["delivered"]

    second = await deliver_the_backlog(postgres_dsn, table, spool)

    await assert_every_produced_row_once(db, table, produced)
    assert second.duplicates == committed - quiet["delivered"] > 0  # re-sent, skipped
    assert second.written == len(produced) - committed
    assert spooled(spool) == 0


async def _at_least(db: asyncpg.Connection, table: str, n: int) -> bool:
    exists = await db.fetchval("SELECT to_regclass($1) IS NOT NULL", q(table))
    return bool(exists) and await count(db, table) >= n


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else result
