"""PostgresConsumer against a real PostgreSQL: COPY, exactly once, outages, bad rows.

Every test writes to its own uniquely named table (dropped afterwards). Outages are real:
backends killed with ``pg_terminate_backend``, the network cut by a TCP proxy, the table
locked so that a write times out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

import aioconveyor
from aioconveyor import AioConveyor, Batch, Consumer, Record, SettingError, StartupError
from aioconveyor.consumers import PostgresConsumer
from aioconveyor.consumers.postgres import SharedTableError, mask_dsn
from aioconveyor.kit import Tick
from aioconveyor.testing import wait_until
from support.proxy import TcpProxy
from support.services import free_port, host_port

PASSWORD = "s3cr3t-Pa55"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def q(name: str) -> str:
    """Quote an identifier on the test side (independently of the code under test)."""
    return '"' + name.replace('"', '""') + '"'


def with_password(dsn: str, *, port: int | None = None) -> str:
    """``dsn`` with a password (the test server trusts any) and optionally another port."""
    parts = urllib.parse.urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{parts.username or 'postgres'}:{PASSWORD}@{host}:{port or parts.port or 5432}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 20.0) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


class Counter:
    """A producer of numbered readings that remembers everything it produced."""

    def __init__(self, make: Callable[[int], Any] | None = None) -> None:
        self.make = make or (lambda n: {"seq": n, "temp": n / 4, "label": f"r{n}"})
        self.produced: list[tuple[datetime, Any]] = []

    def __call__(self, event_time: datetime) -> Any:
        item = self.make(len(self.produced))
        self.produced.append((event_time, item))
        return item


async def run(conv: AioConveyor, during: Callable[[], Awaitable[None]] | None = None,
              timeout: float = 40.0) -> AioConveyor:
    """Run ``conv`` on its own thread (as users do) until ``max_ticks``; await ``during``."""
    await asyncio.to_thread(conv.start)
    try:
        if during is not None:
            await during()
        assert await asyncio.to_thread(conv.join, timeout), "conveyor did not finish"
    finally:
        await asyncio.to_thread(conv.stop)
    assert conv.exception is None
    return conv


def assert_lane_clean(conv: AioConveyor, name: str) -> None:
    lane = conv.stats().consumer(name)
    assert lane.offered > 0
    assert (lane.delivered, lane.dropped, lane.failed) == (lane.offered, 0, 0), lane


@pytest.fixture
async def new_table(db: asyncpg.Connection) -> AsyncIterator[Callable[..., str]]:
    """Make unique table names; every one of them is dropped after the test."""
    made: list[str] = []

    def make(prefix: str = "aioc_pg_") -> str:
        name = f"{prefix}{uuid.uuid4().hex[:12]}"
        made.append(name)
        return name

    yield make
    for name in made:
        await db.execute(f"DROP TABLE IF EXISTS {q(name)}")


async def rows_of(db: asyncpg.Connection, table: str, columns: str = "*") -> list[Any]:
    return list(await db.fetch(f"SELECT {columns} FROM {q(table)} ORDER BY event_time"))


async def count(db: asyncpg.Connection, table: str) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {q(table)}"))


async def create_readings(db: asyncpg.Connection, table: str) -> None:
    await db.execute(
        f"CREATE TABLE {q(table)} (event_time timestamptz PRIMARY KEY, seq integer, "
        "temp double precision, label text, meta jsonb, note text)"
    )


async def assert_exactly_once(db: asyncpg.Connection, table: str, producer: Counter) -> None:
    """Every produced reading is in the table, once, with its own event_time."""
    got = await rows_of(db, table, "event_time, payload")
    expected = [(t, item) for t, item in producer.produced]
    assert [(r["event_time"], json.loads(r["payload"])) for r in got] == expected


# -- round trips through a real conveyor ------------------------------------------------


async def test_jsonb_mode_writes_exactly_what_was_produced(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    table = new_table()
    producer = Counter(lambda n: {"seq": n, "temp": n / 4, "ok": n % 2 == 0,
                                  "nested": {"list": [1, "two", None]}, "text": "é ✓"})
    sink = PostgresConsumer(postgres_dsn, table, create_table=True, batch_age=0.1)
    conv = await run(AioConveyor(producer, [sink], loop_interval=0.05, max_ticks=12,
                                 stop_timeout=20))

    await assert_exactly_once(db, table, producer)
    assert_lane_clean(conv, sink.name)
    assert (sink.written, sink.rejected) == (12, 0)
    key = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype = 'p'", q(table))
    assert key == "PRIMARY KEY (event_time)"


async def test_column_mode_maps_keys_to_columns_missing_null_extra_ignored(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    table = new_table()
    await create_readings(db, table)
    producer = Counter(lambda n: {"seq": n, "temp": n / 4, "label": f"r{n}",
                                  "meta": {"n": n, "tags": ["a"]}, "not_a_column": 1})
    sink = PostgresConsumer(postgres_dsn, table, ["seq", "temp", "label", "meta", "note"],
                            batch_size=4, batch_age=0.1)
    conv = await run(AioConveyor(producer, [sink], loop_interval=0.05, max_ticks=10,
                                 stop_timeout=20))

    got = [dict(r) for r in await rows_of(db, table)]
    assert [r.pop("event_time") for r in got] == [t for t, _ in producer.produced]
    assert [{**r, "meta": json.loads(r["meta"])} for r in got] == [
        {"seq": n, "temp": n / 4, "label": f"r{n}", "meta": {"n": n, "tags": ["a"]},
         "note": None}
        for n in range(10)
    ]
    assert_lane_clean(conv, sink.name)


@dataclasses.dataclass
class Reading:
    seq: int
    label: str


class Model:
    """Pydantic-like: only ``model_dump()``."""

    def __init__(self, seq: int, label: str) -> None:
        self.seq, self.label = seq, label

    def model_dump(self) -> dict[str, Any]:
        return {"seq": self.seq, "label": self.label}

    def __deepcopy__(self, memo: dict[int, Any]) -> Model:
        return Model(self.seq, self.label)


@pytest.mark.parametrize("kind", [Reading, Model], ids=["dataclass", "model_dump"])
async def test_dataclasses_and_models_are_written_in_both_modes(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str], kind: type
) -> None:
    columns_table, json_table = new_table(), new_table()
    await create_readings(db, columns_table)
    producer = Counter(lambda n: kind(n, f"r{n}"))
    by_column = PostgresConsumer(postgres_dsn, columns_table, ["seq", "label"],
                                 name="by-column", batch_age=0.1)
    as_json = PostgresConsumer(postgres_dsn, json_table, create_table=True, name="as-json",
                               batch_age=0.1)
    conv = await run(AioConveyor(producer, [by_column, as_json], loop_interval=0.05,
                                 max_ticks=6, stop_timeout=20))

    expected = [(t, {"seq": n, "label": f"r{n}"}) for n, (t, _) in enumerate(producer.produced)]
    got = await rows_of(db, columns_table, "event_time, seq, label")
    assert [(r["event_time"], {"seq": r["seq"], "label": r["label"]}) for r in got] == expected
    got = await rows_of(db, json_table, "event_time, payload")
    assert [(r["event_time"], json.loads(r["payload"])) for r in got] == expected
    assert_lane_clean(conv, "by-column")
    assert_lane_clean(conv, "as-json")


async def test_schema_qualified_table(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    schema, table = new_table("aioc_schema_"), new_table()
    await db.execute(f"CREATE SCHEMA {q(schema)}")
    try:
        async with PostgresConsumer(postgres_dsn, table, schema=schema,
                                    create_table=True) as sink:
            await sink({"a": 1}, T0)
        assert sink.target == f"{q(schema)}.{q(table)}"
        payload = await db.fetchval(f"SELECT payload FROM {q(schema)}.{q(table)}")
        assert json.loads(payload) == {"a": 1}
    finally:
        await db.execute(f"DROP SCHEMA {q(schema)} CASCADE")


async def test_time_column_may_be_timestamp_without_time_zone_but_not_text(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    naive, wrong = new_table(), new_table()
    await db.execute(f"CREATE TABLE {q(naive)} (event_time timestamp PRIMARY KEY, v int)")
    await db.execute(f"CREATE TABLE {q(wrong)} (event_time text PRIMARY KEY, v int)")
    async with PostgresConsumer(postgres_dsn, naive, ["v"]) as sink:
        await sink({"v": 1}, T0.astimezone(timezone(timedelta(hours=2))))
    assert await db.fetchval(f"SELECT event_time FROM {q(naive)}") == T0.replace(tzinfo=None)
    with pytest.raises(ValueError, match="must be a timestamptz"):
        await PostgresConsumer(postgres_dsn, wrong, ["v"]).open()


# -- exactly once ------------------------------------------------------------------------


async def test_writing_the_same_batch_twice_adds_nothing(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    """What a retry does after a commit whose acknowledgement was lost."""
    table = new_table()
    batch = Batch(Record({"seq": n}, T0 + timedelta(seconds=n)) for n in range(5))
    async with PostgresConsumer(postgres_dsn, table, create_table=True) as sink:
        await sink(batch, batch[-1].event_time)
        await sink(batch, batch[-1].event_time)
        await sink(batch[2].data, batch[2].event_time)

    assert await count(db, table) == 5
    assert (sink.written, sink.duplicates, sink.rejected) == (5, 6, 0)


async def test_killed_backends_mid_stream_lose_and_duplicate_nothing(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    table, app = new_table(), f"aioc-test-{uuid.uuid4().hex[:8]}"
    producer = Counter()
    sink = PostgresConsumer(postgres_dsn, table, create_table=True, batch_size=5,
                            batch_age=0.1, max_backoff=0.5,
                            server_settings={"application_name": app})
    killed = 0

    async def kill_when(rows: int) -> None:
        async def killed_some() -> bool:
            nonlocal killed
            if await count(db, table) < rows:
                return False
            n = await db.fetchval("SELECT count(pg_terminate_backend(pid)) FROM "
                                  "pg_stat_activity WHERE application_name = $1", app)
            killed += n
            return bool(n)
        await eventually(killed_some, f"a backend of {app} to kill after {rows} rows")

    async def kill_twice() -> None:
        await kill_when(8)
        await kill_when(20)

    conv = await run(AioConveyor(producer, [sink], loop_interval=0.05, max_ticks=40,
                                 stop_timeout=20), kill_twice)

    assert killed >= 2
    await assert_exactly_once(db, table, producer)
    assert_lane_clean(conv, sink.name)


async def test_network_outage_is_ridden_out_without_loss_or_duplicates(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    table = new_table()
    producer = Counter()
    with TcpProxy(*host_port(postgres_dsn, 5432)) as proxy:
        sink = PostgresConsumer(with_password(postgres_dsn, port=proxy.port), table,
                                create_table=True, batch_size=10, batch_age=0.1,
                                max_backoff=1.0, connect_timeout=2.0)

        async def outage() -> None:
            await eventually(lambda: _at_least(db, table, 5), "the first rows")
            proxy.cut()
            await asyncio.sleep(2.0)  # the outage itself: every write fails meanwhile
            proxy.restore()

        conv = await run(AioConveyor(producer, [sink], loop_interval=0.05, max_ticks=70,
                                     stop_timeout=30), outage)

    await assert_exactly_once(db, table, producer)
    assert_lane_clean(conv, sink.name)
    lane = conv.stats().consumer(sink.name)
    assert lane.errors >= 1 and lane.retries >= 1, lane
    assert lane.last_error is not None and PASSWORD not in lane.last_error
    assert f"consumer {sink.name} failed" in caplog.text
    assert PASSWORD not in caplog.text


async def _at_least(db: asyncpg.Connection, table: str, n: int) -> bool:
    return await db.fetchval("SELECT to_regclass($1) IS NOT NULL", q(table)) and \
        await count(db, table) >= n


async def test_write_cancelled_on_timeout_commits_nothing_and_is_retried(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = new_table()
    async with PostgresConsumer(postgres_dsn, table, create_table=True):
        pass  # creates the table
    producer = Counter()
    app = f"aioc-test-{uuid.uuid4().hex[:8]}"
    sink = PostgresConsumer(postgres_dsn, table, batch_age=0.1, max_backoff=0.5,
                            server_settings={"application_name": app})
    released = False
    backends = 0

    async def hold_lock_until_timeouts() -> None:
        nonlocal released, backends
        lock = db.transaction()
        await lock.start()
        await db.execute(f"LOCK TABLE {q(table)} IN ACCESS EXCLUSIVE MODE")
        try:
            assert await wait_until(lambda: conv.stats().consumer(sink.name).timeouts >= 3,
                                    timeout=20), "the write never timed out"

            async def no_orphans() -> bool:  # one per timed-out write if not cancelled
                nonlocal backends
                backends = await db.fetchval("SELECT count(*) FROM pg_stat_activity "
                                             "WHERE application_name = $1", app)
                return bool(backends <= 2)  # the pool's max_size

            await eventually(no_orphans, "cancelled writes to leave no backend behind", 5)
        finally:
            await lock.rollback()
            released = True

    conv = AioConveyor(producer, [Consumer(sink, timeout=0.3)], loop_interval=0.05,
                       max_ticks=8, stop_timeout=20)
    await run(conv, hold_lock_until_timeouts)

    assert released
    await assert_exactly_once(db, table, producer)
    assert_lane_clean(conv, sink.name)
    assert conv.stats().consumer(sink.name).abandoned == 0  # cancellation was honoured
    assert "never retrieved" not in caplog.text
    assert "active transaction" not in caplog.text


# -- bad data ----------------------------------------------------------------------------


async def test_a_bad_row_is_skipped_and_the_rest_of_its_batch_written(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = new_table()
    await db.execute(f"CREATE TABLE {q(table)} (event_time timestamptz PRIMARY KEY, "
                     "v integer CHECK (v >= 0), s text)")
    items: list[Any] = [
        {"v": 1, "s": "good"},
        {"v": "not a number", "s": "wrong type"},     # refused by asyncpg's encoder
        {"v": -1, "s": "check violation"},            # refused by PostgreSQL (23514)
        {"v": 2, "s": "nul \x00 byte"},               # refused by PostgreSQL (22021)
        ["not", "a", "mapping"],                      # refused before any SQL
        {"v": 3, "s": "good too"},
    ]
    batch = Batch(Record(item, T0 + timedelta(seconds=i)) for i, item in enumerate(items))
    caplog.set_level(logging.WARNING, logger="aioconveyor.consumers.postgres")
    async with PostgresConsumer(postgres_dsn, table, ["v", "s"]) as sink:
        await sink(batch, batch[-1].event_time)
        await sink(Batch(batch[1:3]), batch[2].event_time)  # same kinds again: not logged

    got = await rows_of(db, table, "event_time, v, s")
    assert [tuple(r) for r in got] == [(T0, 1, "good"), (T0 + timedelta(seconds=5), 3, "good too")]
    assert (sink.rejected, sink.written, sink.duplicates) == (6, 2, 0)
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 4, refused  # one line per kind of refusal
    assert any("CheckViolationError" in m and "2024-05-01T12:00:02" in m for m in refused)


async def test_a_batch_with_a_large_json_payload_is_written_off_the_loop(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A big batch is encoded on a worker thread (the loop keeps turning) and written whole."""
    from aioconveyor.consumers import postgres

    table = new_table()
    await create_readings(db, table)
    big = {"values": [{"i": i, "v": i / 7, "s": f"x{i}"} for i in range(20_000)]}
    items = [{"seq": n, "meta": big if n == 3 else {"n": n}} for n in range(1500)]
    batch = Batch(Record(item, T0 + timedelta(seconds=i)) for i, item in enumerate(items))
    threads: list[bool] = []
    build = postgres.PostgresConsumer._build

    def spy(self: PostgresConsumer, data: Any, event_time: datetime) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return build(self, data, event_time)

    monkeypatch.setattr(postgres.PostgresConsumer, "_build", spy)
    async with PostgresConsumer(postgres_dsn, table, ["seq", "meta"]) as sink:
        await sink(batch, batch[-1].event_time)
        for _ in range(2):  # small duplicates: a thread after the costly build, then inline
            await sink(Batch(batch[:2]), batch[1].event_time)
    assert threads == [False, False, True]
    got = await rows_of(db, table, "seq, meta")
    assert [(r["seq"], json.loads(r["meta"])) for r in got] == [
        (item["seq"], item["meta"]) for item in items]
    assert (sink.written, sink.duplicates, sink.rejected) == (1500, 4, 0)


async def test_values_that_are_not_json_are_refused_in_jsonb_mode(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    table = new_table()
    items = [{"x": float("nan")}, {"x": object()}, {"x": "\x00"}, [1, 2], 3]
    batch = Batch(Record(item, T0 + timedelta(seconds=i)) for i, item in enumerate(items))
    async with PostgresConsumer(postgres_dsn, table, create_table=True) as sink:
        await sink(batch, batch[-1].event_time)
    assert [json.loads(r["payload"]) for r in await rows_of(db, table)] == [[1, 2], 3]
    assert sink.rejected == 3


# -- safety ------------------------------------------------------------------------------


async def test_hostile_identifiers_cannot_inject_sql(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    victim = new_table("aioc_victim_")
    await db.execute(f"CREATE TABLE {q(victim)} (x int); INSERT INTO {q(victim)} VALUES (42)")
    hostile = new_table(f'x"; DROP TABLE {victim}; --')
    async with PostgresConsumer(postgres_dsn, hostile, create_table=True) as sink:
        await sink({"a": 1}, T0)

    assert await count(db, hostile) == 1
    assert await db.fetchval(f"SELECT x FROM {q(victim)}") == 42

    columns_table = new_table('y" (x int); DROP TABLE ')
    odd = 'a"b); DROP TABLE ' + victim + "; --"
    await db.execute(f"CREATE TABLE {q(columns_table)} (event_time timestamptz PRIMARY KEY, "
                     f"{q(odd)} text)")
    async with PostgresConsumer(postgres_dsn, columns_table, [odd]) as sink:
        await sink({odd: "fine"}, T0)
    assert await db.fetchval(f"SELECT {q(odd)} FROM {q(columns_table)}") == "fine"
    assert await db.fetchval(f"SELECT x FROM {q(victim)}") == 42


async def test_the_password_is_never_shown(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = with_password(postgres_dsn, port=free_port())  # nothing listens there
    sink = PostgresConsumer(dsn, "t", connect_timeout=2.0)
    assert PASSWORD not in repr(sink) and PASSWORD not in str(sink)
    assert sink.dsn is not None and "postgres:***@" in sink.dsn

    conv = AioConveyor(lambda t: {}, [Consumer(sink, startup="fail")], loop_interval=0.05,
                       max_ticks=1)
    with pytest.raises(StartupError) as failed:
        await asyncio.to_thread(conv.start)
    shown = [str(failed.value), repr(failed.value)]
    cause: BaseException | None = failed.value
    while cause is not None:
        shown.append(repr(cause))
        cause = cause.__cause__
    assert all(PASSWORD not in s for s in shown), shown
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=pw&sslmode=require",
         "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u:pw@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        (None, None),
    ],
)
def test_mask_dsn(dsn: str | None, masked: str | None) -> None:
    assert mask_dsn(dsn) == masked


async def test_open_explains_a_missing_unique_key(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    table = new_table()
    await db.execute(f"CREATE TABLE {q(table)} (event_time timestamptz, v int)")
    sink = PostgresConsumer(postgres_dsn, table, ["v"])
    with pytest.raises(ValueError, match=r"no unique index or primary key on exactly"):
        await sink.open()
    with pytest.raises(asyncpg.UndefinedTableError):
        await PostgresConsumer(postgres_dsn, new_table()).open()
    with pytest.raises(RuntimeError, match="is not open"):
        await sink({"v": 1}, T0)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"columns": ["v"], "create_table": True}, "JSONB mode"),
        ({"columns": ["v"], "key": ["w"]}, "not written"),
        ({"columns": ["v", "v"]}, "repeat"),
        ({"columns": "v"}, "sequence"),
        ({"time_column": None}, "needs a time_column"),
        ({"columns": ["v"], "time_column": None}, "key is required"),
        ({"pool": object(), "dsn": "postgresql://h/db"}, "either pool or dsn"),
        ({"batch_size": 0}, "batch_size"),
        ({"table": ""}, "table"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        PostgresConsumer(**kwargs)


def test_import_error_names_the_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['asyncpg'] = None\n"
        "import aioconveyor\n"
        "try:\n"
        "    from aioconveyor.consumers import PostgresConsumer\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True)
    assert 'pip install "aioconveyor[postgres]"' in out.stdout, out


# -- several producers in one table (issue 14) -----------------------------------------


def produced_by(producer: str, n: int, start: int = 0) -> Batch:
    """A batch of ``n`` readings of ``producer`` at the grid times T0 + start.. seconds,
    each record carrying its tick as the conveyor's lanes hand them over."""
    records = []
    for i in range(start, start + n):
        when = T0 + timedelta(seconds=i)
        tick = Tick(i, when, when.timestamp(), when.timestamp(), 0, producer)
        records.append(Record({"producer_seq": i, "by": producer}, when, tick))
    return Batch(records)


async def test_per_producer_rows_are_keyed_by_producer_and_grid_time_exactly_once(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    table = new_table()
    batches = [produced_by(p, 4) for p in ("inverter", "meter", "weather")]
    async with PostgresConsumer(postgres_dsn, table, create_table=True,
                                per_producer=True) as sink:
        assert sink.key == ("producer", "event_time") and sink.per_producer is True
        for _ in range(2):  # the second round is a retry of acknowledged commits
            for batch in batches:
                await sink(batch, batch[-1].event_time)

    rows = await db.fetch(f"SELECT producer, event_time, payload FROM {q(table)} "
                          "ORDER BY producer, event_time")
    assert [(r["producer"], r["event_time"], json.loads(r["payload"])) for r in rows] == [
        (rec.producer, rec.event_time, rec.data) for batch in batches for rec in batch]
    assert (sink.written, sink.duplicates, sink.rejected) == (12, 12, 0)
    key = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype = 'p'", q(table))
    assert key == "PRIMARY KEY (producer, event_time)"


async def test_a_table_with_a_producer_column_is_written_per_producer_by_default(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    table = new_table()
    await db.execute(f"CREATE TABLE {q(table)} (producer_seq int, event_time timestamptz, "
                     "by text, producer text NOT NULL, UNIQUE (event_time, producer))")
    sink = PostgresConsumer(postgres_dsn, table, ["producer_seq", "by"])
    assert sink.per_producer is None  # decided by the table
    async with sink:
        assert sink.per_producer is True and sink.key == ("producer", "event_time")
        assert sink.written_columns == ("event_time", "producer", "producer_seq", "by")
        for p in ("a", "b"):
            batch = produced_by(p, 3)
            await sink(batch, batch[-1].event_time)
    rows = await db.fetch(f"SELECT producer, by, producer_seq FROM {q(table)} "
                          "ORDER BY producer, event_time")
    assert [tuple(r) for r in rows] == [(p, p, i) for p in ("a", "b") for i in range(3)]


async def test_a_second_producer_into_a_table_without_the_column_fails_until_migrated(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    """Never skipped as duplicates: the call fails (the lane retries it) and says how to
    add the column; once added, the very next call writes, nothing lost or doubled."""
    table = new_table()
    first, second = produced_by("inverter", 3), produced_by("meter", 3)
    async with PostgresConsumer(postgres_dsn, table, create_table=True) as sink:
        assert sink.per_producer is False and sink.key == ("event_time",)
        await sink(first, first[-1].event_time)
        with pytest.raises(SharedTableError) as info:
            await sink(second, second[-1].event_time)
        message = str(info.value)
        assert "'inverter', 'meter'" in message and "ALTER TABLE" in message
        assert "DEFAULT 'inverter'" in message
        assert await count(db, table) == 3  # nothing of the failed call was written

        await db.execute(f"ALTER TABLE {q(table)} ADD COLUMN producer text NOT NULL "
                         f"DEFAULT 'inverter'")
        await db.execute(f"ALTER TABLE {q(table)} DROP CONSTRAINT {q(table + '_pkey')}, "
                         "ADD PRIMARY KEY (producer, event_time)")
        await sink(second, second[-1].event_time)  # the lane's retry
        assert sink.per_producer is True
        await sink(first, first[-1].event_time)  # already there: skipped
    rows = await db.fetch(f"SELECT producer, event_time FROM {q(table)} "
                          "ORDER BY producer, event_time")
    assert [tuple(r) for r in rows] == [(rec.producer, rec.event_time)
                                        for rec in [*first, *second]]
    assert (sink.written, sink.duplicates) == (6, 3)


async def test_one_producer_keeps_writing_an_old_table_and_an_own_key_is_trusted(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    old, own = new_table(), new_table()
    await db.execute(f"CREATE TABLE {q(own)} (event_time timestamptz, by text, "
                     "PRIMARY KEY (by, event_time))")
    async with PostgresConsumer(postgres_dsn, old, create_table=True) as single:
        for start in (0, 3):
            batch = produced_by("inverter", 3, start)
            await single(batch, batch[-1].event_time)
    assert await count(db, old) == 6
    async with PostgresConsumer(postgres_dsn, own, ["by"], key=["by", "event_time"]) as keyed:
        for p in ("a", "b"):  # the key tells the producers apart: no guard needed
            batch = produced_by(p, 2)
            await keyed(batch, batch[-1].event_time)
    assert await count(db, own) == 4 and keyed.per_producer is False


async def test_per_producer_true_needs_the_column(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    table = new_table()
    await db.execute(f"CREATE TABLE {q(table)} (event_time timestamptz PRIMARY KEY, v int)")
    sink = PostgresConsumer(postgres_dsn, table, ["v"], per_producer=True)
    with pytest.raises(ValueError, match=r"has no column 'producer' for per_producer=True: "
                                         r"ALTER TABLE"):
        await sink.open()


@pytest.mark.parametrize(
    ("kwargs", "name", "error"),
    [
        ({"per_producer": "yes"}, "per_producer", "must be True, False or None"),
        ({"producer_column": ""}, "producer_column", "non-empty str"),
        ({"columns": ["producer", "v"], "per_producer": True}, "per_producer",
         "leave it out of columns"),
        ({"per_producer": True, "producer_column": "event_time"}, "per_producer",
         "name it already"),
        ({"columns": ["v"], "key": ["producer", "event_time"], "per_producer": False},
         "key", "per_producer=False does not write"),
    ],
)
def test_bad_per_producer_arguments_are_named(kwargs: dict[str, Any], name: str,
                                              error: str) -> None:
    with pytest.raises(SettingError, match=error) as info:
        PostgresConsumer(**kwargs)
    assert info.value.name == name


def test_a_key_naming_the_producer_column_implies_per_producer() -> None:
    sink = PostgresConsumer(None, "t", ["v"], key=["producer", "event_time"])
    assert sink.per_producer is True
    assert sink.written_columns == ("event_time", "producer", "v")




async def test_three_producers_into_one_table_exactly_once_per_producer(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    table = new_table()
    counters = {name: Counter() for name in ("inverter", "meter", "weather")}
    sink = PostgresConsumer(postgres_dsn, table, create_table=True, per_producer=True,
                            batch_age=0.1)
    conv = AioConveyor(consumers=[sink], stop_timeout=20, producers=[
        aioconveyor.Producer(counters["inverter"], name="inverter", every=0.05, max_ticks=8),
        aioconveyor.Producer(counters["meter"], name="meter", every=0.1, max_ticks=5),
        aioconveyor.Producer(counters["weather"], name="weather", every=0.1, offset=0.05,
                             max_ticks=4),
    ])
    await run(conv)

    rows = await db.fetch(f"SELECT producer, event_time, payload FROM {q(table)} "
                          "ORDER BY producer, event_time")
    assert [(r["producer"], r["event_time"], json.loads(r["payload"])) for r in rows] == [
        (name, t, item) for name in sorted(counters) for t, item in counters[name].produced]
    assert sink.written == 8 + 5 + 4 and sink.duplicates == 0
    assert_lane_clean(conv, sink.name)


async def test_a_second_producer_added_to_an_old_table_waits_for_the_migration(
    postgres_dsn: str, db: asyncpg.Connection, new_table: Callable[..., str]
) -> None:
    """The one-producer table of a running conveyor meets a second producer: the lane
    fails and retries (nothing skipped as a duplicate), the table is migrated while it
    runs, and every row of both producers arrives exactly once."""
    table = new_table()
    solar, meter = Counter(), Counter()
    sink = PostgresConsumer(postgres_dsn, table, create_table=True, batch_age=0.05,
                            max_backoff=0.2)
    conv = AioConveyor(solar, [sink], loop_interval=0.05, name="solar", max_ticks=40,
                       stop_timeout=20)

    async def add_meter_then_migrate() -> None:
        await eventually(lambda: _at_least(db, table, 3), "the first rows of solar")
        conv.add_producer(meter, name="meter", every=0.05, max_ticks=10)
        assert await wait_until(lambda: conv.stats().consumer(sink.name).errors >= 1,
                                timeout=20), "the shared table was never refused"
        last = conv.stats().consumer(sink.name).last_error or ""
        assert "SharedTableError" in last and "ALTER TABLE" in last, last
        await db.execute(f"ALTER TABLE {q(table)} ADD COLUMN producer text NOT NULL "
                         "DEFAULT 'solar'")
        await db.execute(f"ALTER TABLE {q(table)} DROP CONSTRAINT {q(table + '_pkey')}, "
                         "ADD PRIMARY KEY (producer, event_time)")

    await run(conv, add_meter_then_migrate)
    rows = await db.fetch(f"SELECT producer, event_time, payload FROM {q(table)} "
                          "ORDER BY producer, event_time")
    assert [(r["producer"], r["event_time"], json.loads(r["payload"])) for r in rows] == [
        *(("meter", t, item) for t, item in meter.produced),
        *(("solar", t, item) for t, item in solar.produced)]
    assert sink.per_producer is True
