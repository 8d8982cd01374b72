"""PostgresLeader against the real PostgreSQL: one producer per key, fast failover, no duplicates.

The process tests run conveyors as separate processes (``support/leader_worker.py``) that
each insert ``(event_time, instance)`` for every tick they produce into a table without a
unique key, so a grid time produced twice would show up as two rows.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import aioconveyor
from aioconveyor import AioConveyor, PostgresLeader
from aioconveyor._errors import ConveyorError
from aioconveyor._leader_postgres import lock_id_for
from support.proxy import proxied, proxy_to

INTERVAL = 0.2
FAILOVER_BOUND = 2 * INTERVAL + 0.5
"""Longest allowed gap between the old leader's last row and the new leader's first."""

WORKER = Path(__file__).parent / "support" / "leader_worker.py"


# -- helpers -----------------------------------------------------------------------------


class Db:
    """A synchronous handle on the test database for the process tests."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: Any = self.loop.run_until_complete(asyncpg.connect(dsn))

    def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(self.loop.run_until_complete(self.conn.fetch(sql, *args)))

    def execute(self, sql: str) -> None:
        self.loop.run_until_complete(self.conn.execute(sql))

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


@dataclass
class Row:
    event_time: float
    instance: str


class Table:
    """The rows the workers wrote, and checks on them."""

    def __init__(self, db: Db, name: str) -> None:
        self.db = db
        self.name = name

    def rows(self) -> list[Row]:
        records = self.db.fetch(
            f'SELECT event_time, instance FROM "{self.name}" ORDER BY event_time, instance'
        )
        return [Row(r["event_time"].timestamp(), r["instance"]) for r in records]

    def of(self, instance: str) -> list[Row]:
        return [r for r in self.rows() if r.instance == instance]

    def assert_each_grid_time_once_without_long_gaps(self) -> None:
        rows = self.rows()
        times = [r.event_time for r in rows]
        assert len(times) == len(set(times)), f"grid times produced twice: {rows}"
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps, default=0.0) <= FAILOVER_BOUND, f"gap of {max(gaps):.3f} s: {rows}"


class Worker:
    """One conveyor process; its stdout and stderr go to files (a pipe could fill up)."""

    def __init__(self, instance: str, argv: list[str], folder: Path) -> None:
        self.instance = instance
        self.out = folder / f"{instance}.out"
        self.err = folder / f"{instance}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err)

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def log(self) -> str:
        return f"--- {self.instance} stderr ---\n" + self.err.read_text()[-4000:]

    def wait_ready(self, timeout: float = 15.0) -> None:
        wait_until(lambda: "ready" in self.lines(), timeout, f"{self.instance} ready", self)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait for a graceful exit, return the final stats it printed."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=15) == 0, self.log()
        stats: dict[str, Any] = json.loads(self.lines()[-1])
        return stats

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               *workers: Worker) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s\n" + "\n".join(w.log() for w in workers))
        for w in workers:
            if w.proc.poll() is not None:
                pytest.fail(f"{w.instance} exited with {w.proc.returncode}\n{w.log()}")
        time.sleep(0.02)


def sleep_to_mid_tick() -> None:
    """Act half-way between two ticks, far from both instances' lock checks.

    Acting right at a tick could let the old leader pass its check an instant before the
    cut while the new one already gets the lock: both would produce that one grid time.
    That race is inherent (the README's idempotency note); the tests avoid it so that
    they can demand zero duplicates.
    """
    phase = time.time() % INTERVAL
    time.sleep((INTERVAL / 2 - phase) % INTERVAL)





@pytest.fixture
def key() -> str:
    return f"test-leader-{uuid.uuid4().hex}"


@pytest.fixture
def table(postgres_dsn: str) -> Iterator[Table]:
    db = Db(postgres_dsn)
    name = f"leader_test_{uuid.uuid4().hex[:12]}"
    db.execute(f'CREATE TABLE "{name}" (event_time timestamptz NOT NULL, '
               "instance text NOT NULL, written timestamptz DEFAULT clock_timestamp())")
    try:
        yield Table(db, name)
    finally:
        db.execute(f'DROP TABLE IF EXISTS "{name}"')
        db.close()


@pytest.fixture
def spawn(postgres_dsn: str, key: str, table: Table,
          tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(instance: str, leader_dsn: str | None = None) -> Worker:
        argv = [sys.executable, str(WORKER), "--dsn", postgres_dsn, "--key", key,
                "--table", table.name, "--interval", str(INTERVAL), "--instance", instance]
        if leader_dsn is not None:
            argv += ["--leader-dsn", leader_dsn]
        worker = Worker(instance, argv, tmp_path)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait(timeout=10)


def start_leader_then_standby(spawn: Callable[..., Worker], table: Table,
                              a_leader_dsn: str | None = None) -> tuple[Worker, Worker]:
    """Start ``a``, let it lead a few ticks, then start ``b`` and let it stand by a few."""
    a = spawn("a", a_leader_dsn)
    wait_until(lambda: len(table.of("a")) >= 3, 15, "rows from a", a)
    b = spawn("b")
    b.wait_ready()
    produced = len(table.rows())
    wait_until(lambda: len(table.rows()) >= produced + 3, 5, "more rows", a, b)
    assert {r.instance for r in table.rows()} == {"a"}
    return a, b


# -- two processes, one key --------------------------------------------------------------


def test_two_processes_on_one_key_only_the_lock_holder_produces(
    spawn: Callable[..., Worker], table: Table,
) -> None:
    a, b = spawn("a"), spawn("b")
    a.wait_ready()
    b.wait_ready()
    wait_until(lambda: len(table.rows()) >= 10, 15, "10 produced ticks", a, b)

    producers = {r.instance for r in table.rows()}
    assert len(producers) == 1, table.rows()
    leader, standby = (a, b) if producers == {"a"} else (b, a)
    standby_stats = standby.stop()  # the standby first, or the leader's exit would hand over
    leader_stats = leader.stop()
    assert (standby_stats["role"], standby_stats["takeovers"]) == ("standby", 0)
    assert standby_stats["produced"] == 0 and standby_stats["standby_ticks"] >= 5
    assert (leader_stats["role"], leader_stats["takeovers"]) == ("leader", 1)
    assert leader_stats["produced"] == len(table.rows())
    table.assert_each_grid_time_once_without_long_gaps()


def test_killed_leader_is_replaced_within_about_one_tick(
    spawn: Callable[..., Worker], table: Table,
) -> None:
    a, b = start_leader_then_standby(spawn, table)

    sleep_to_mid_tick()
    a.kill9()
    killed_at = time.time()
    wait_until(lambda: len(table.of("b")) >= 3, 10, "rows from b after the kill", b)

    last_a, first_b = table.of("a")[-1], table.of("b")[0]
    assert last_a.event_time < first_b.event_time
    assert first_b.event_time - killed_at <= FAILOVER_BOUND
    assert [r.instance for r in table.rows()] == ["a"] * len(table.of("a")) + \
        ["b"] * len(table.of("b"))
    table.assert_each_grid_time_once_without_long_gaps()
    stats = b.stop()
    assert (stats["role"], stats["takeovers"]) == ("leader", 1)


def test_cut_leader_connection_stops_it_and_the_standby_takes_over(
    spawn: Callable[..., Worker], table: Table, postgres_dsn: str,
) -> None:
    with proxy_to(postgres_dsn) as proxy:
        # only a's lock connection goes through the proxy; its producer could still write
        a, b = start_leader_then_standby(spawn, table, proxied(postgres_dsn, proxy.port))

        sleep_to_mid_tick()
        proxy.cut()
        cut_at = time.time()
        wait_until(lambda: len(table.of("b")) >= 3, 10, "rows from b after the cut", a, b)
        first_b = table.of("b")[0]
        assert first_b.event_time - cut_at <= FAILOVER_BOUND
        assert table.of("a")[-1].event_time < first_b.event_time

        proxy.restore()  # a reconnects, finds the lock taken, and stays a standby
        wait_until(lambda: proxy.connections >= 2, 10, "a's reconnection", a, b)
        produced = len(table.rows())
        wait_until(lambda: len(table.rows()) >= produced + 5, 10, "more rows", a, b)
        assert table.of("a")[-1].event_time < first_b.event_time

        a_stats = a.stop()
        b_stats = b.stop()
    assert (a_stats["role"], a_stats["takeovers"]) == ("standby", 1)
    assert a_stats["standby_ticks"] >= 5
    assert (b_stats["role"], b_stats["takeovers"]) == ("leader", 1)
    table.assert_each_grid_time_once_without_long_gaps()


# -- in one process ----------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


async def test_only_one_instance_leads_and_closing_hands_over(postgres_dsn: str,
                                                              key: str) -> None:
    a, b = PostgresLeader(postgres_dsn, key, name="a"), PostgresLeader(postgres_dsn, key, name="b")
    assert (a.role, a.since, a.takeovers) == ("unknown", None, 0)
    await a.open()
    await b.open()
    try:
        assert await a.lead(now()) and not await b.lead(now())
        assert await a.lead(now()) and not await b.lead(now())  # and it stays so
        assert (a.role, a.takeovers, b.role, b.takeovers) == ("leader", 1, "standby", 0)
        assert a.since is not None and a.since <= now()
        await a.close()
        assert not await a.lead(now())
        assert await b.lead(now())
        assert (b.role, b.takeovers) == ("leader", 1)
    finally:
        await a.close()
        await b.close()


async def test_conveyor_stats_show_role_and_takeovers(postgres_dsn: str, key: str) -> None:
    holder = PostgresLeader(postgres_dsn, key, name="holder")
    assert await holder.lead(now())

    async def produce(event_time: datetime) -> int:
        return 1

    try:
        conv = AioConveyor(produce, loop_interval=INTERVAL, max_ticks=3, name="waiting",
                           leader=PostgresLeader(postgres_dsn, key, name="waiting"))
        await asyncio.wait_for(conv.run(), 10)
        s = conv.stats()
        assert (s.ticks, s.produced, s.standby_ticks) == (3, 0, 3)
        assert (s.leader_role, s.takeovers) == ("standby", 0)
    finally:
        await holder.close()

    conv = AioConveyor(produce, loop_interval=INTERVAL, max_ticks=3, name="taking-over",
                       leader=PostgresLeader(postgres_dsn, key, name="taking-over"))
    await asyncio.wait_for(conv.run(), 10)
    s = conv.stats()
    # a lock query slower than the tick's grace (a loaded machine) leaves one tick standing by
    assert s.ticks == 3 and s.produced >= 2 and s.produced + s.standby_ticks == 3
    assert (s.leader_role, s.takeovers) == ("leader", 1)
    assert s.leader_since is not None


async def test_leader_whose_connection_is_cut_stands_by_at_once(
    postgres_dsn: str, key: str, caplog: pytest.LogCaptureFixture,
) -> None:
    other = PostgresLeader(postgres_dsn, key, name="other")
    with proxy_to(postgres_dsn) as proxy:
        cut = PostgresLeader(proxied(postgres_dsn, proxy.port), key, name="cut")
        try:
            assert await cut.lead(now()) and not await other.lead(now())
            proxy.cut()
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="aioconveyor._leader_postgres"):
                assert not await cut.lead(now())
            assert time.monotonic() - started < 1.0
            assert cut.role == "standby"
            assert [r.message for r in caplog.records if "lost leadership" in r.message]
            deadline = time.monotonic() + 5
            while not await other.lead(now()):  # the server frees the lock when it notices
                assert time.monotonic() < deadline, "the lock was not released"
                await asyncio.sleep(0.02)
            proxy.restore()
            assert not await cut.lead(now())  # reconnected, and the lock is taken
            assert (cut.role, cut.takeovers, other.takeovers) == ("standby", 1, 1)
        finally:
            await cut.close()
            await other.close()


async def test_sessions_ended_by_the_server_free_the_lock_and_reconnect(
    postgres_dsn: str, key: str,
) -> None:
    """pg_terminate_backend (an admin, a server restart) on the leader's and a standby's session."""
    a, b = PostgresLeader(postgres_dsn, key, name="a"), PostgresLeader(postgres_dsn, key, name="b")
    db = await asyncpg.connect(postgres_dsn)

    async def terminate(name: str) -> None:
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1", f"aioconveyor leader {name}")
        assert killed == 1

    try:
        assert await a.lead(now()) and not await b.lead(now())
        await terminate("a")
        assert not await a.lead(now())  # the leader's check fails: stand by at once
        assert a.role == "standby"
        assert await b.lead(now())  # the server ended the session, so the lock is free
        assert not await a.lead(now())  # reconnected; the lock is b's
        await terminate("a")  # now a standby: its dead connection is replaced in the same call
        assert not await a.lead(now()) and a.role == "standby"
        await terminate("a")  # which proves it: there is a (new) session to end again
        await b.close()
        assert await a.lead(now())
        assert (a.takeovers, b.takeovers) == (2, 1)
    finally:
        await a.close()
        await b.close()
        await db.close()


async def test_a_hung_leader_loses_the_lock_with_idle_session_timeout(
    postgres_dsn: str, key: str,
) -> None:
    """Keepalives cannot catch a frozen process (its kernel answers); the server setting can."""
    hung = PostgresLeader(postgres_dsn, key, name="hung",
                          server_settings={"idle_session_timeout": "300ms"})
    other = PostgresLeader(postgres_dsn, key, name="other")
    try:
        assert await hung.lead(now()) and not await other.lead(now())
        deadline = time.monotonic() + 5
        while not await other.lead(now()):  # "hung" asks nothing from now on
            assert time.monotonic() < deadline, "the hung leader kept the lock"
            await asyncio.sleep(0.05)
        assert not await hung.lead(now())  # back to life: its check fails, it stands by
        assert hung.role == "standby"
    finally:
        await hung.close()
        await other.close()


async def test_a_lock_answer_later_than_the_grace_serves_the_next_tick(
    postgres_dsn: str, key: str,
) -> None:
    leader = PostgresLeader(postgres_dsn, key, name="slow")
    try:
        with pytest.raises(TimeoutError):  # as the scheduler's grace timeout would cancel it
            await asyncio.wait_for(leader.lead(now()), 0.0001)
        assert leader.role == "unknown"
        assert await leader.lead(now())  # the connect went on in the background
        assert (leader.role, leader.takeovers) == ("leader", 1)
    finally:
        await leader.close()


async def test_password_never_shows_in_repr_logs_or_errors(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "s3cret-Pa55"
    unreachable = PostgresLeader(f"postgresql://postgres:{secret}@127.0.0.1:1/test", "k")
    bad_user = PostgresLeader(_with_user(postgres_dsn, "no_such_user", secret), "k")
    with caplog.at_level(logging.DEBUG):
        await unreachable.open()  # unreachable is not fatal: it stands by and retries
        assert not await unreachable.lead(now())
        with pytest.raises(Exception) as failed:
            await bad_user.open()  # a wrong user is
        await unreachable.close()
        await bad_user.close()
    assert "no_such_user" in str(failed.value)
    shown = [repr(unreachable), repr(bad_user), str(failed.value), repr(failed.value),
             caplog.text]
    assert not [s for s in shown if secret in s]
    assert "postgres:***@127.0.0.1:1" in repr(unreachable)


async def test_a_password_echoed_by_the_server_is_scrubbed(postgres_dsn: str) -> None:
    secret = f"s3cret{uuid.uuid4().hex[:8]}"  # also the user name: the server says it back
    leader = PostgresLeader(_with_user(postgres_dsn, secret, secret), "k")
    with pytest.raises(ConveyorError) as failed:
        await leader.open()
    await leader.close()
    assert "does not exist" in str(failed.value) or "authentication" in str(failed.value)
    assert secret not in str(failed.value) and failed.value.__cause__ is None


def _with_user(dsn: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    hosts = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{hosts}"))


def test_an_unparsable_dsn_fails_the_start_without_its_password() -> None:
    leader = PostgresLeader("postgresql://u:s3cret-Pa55@127.0.0.1:notaport/test", "k")
    with pytest.raises((ConveyorError, ValueError)) as failed:
        asyncio.run(leader.open())
    assert "s3cret" not in str(failed.value) and "s3cret" not in repr(failed.value)


def test_lock_id_is_stable_and_a_signed_64_bit_integer() -> None:
    assert lock_id_for("smoke") == 8218179300756824436  # pinned: hosts must agree forever
    assert lock_id_for("plant-1") == PostgresLeader(None, "plant-1").lock_id
    assert lock_id_for("plant-1") != lock_id_for("plant-2")
    assert all(-(2**63) <= lock_id_for(k) < 2**63 for k in ("a", "b", "ü" * 100))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="key must be a non-empty str"):
        PostgresLeader(None, "")
    with pytest.raises(ValueError, match="keepalive must be"):
        PostgresLeader(None, "k", keepalive=0)
    with pytest.raises(ValueError, match="connect_timeout must be"):
        PostgresLeader(None, "k", connect_timeout=float("nan"))
    with pytest.raises(TypeError, match="server_settings must be"):
        PostgresLeader(None, "k", server_settings=["idle_session_timeout"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dsn must be"):
        PostgresLeader(5432, "k")  # type: ignore[arg-type]


def test_exported_lazily_and_asks_for_the_extra_without_asyncpg(tmp_path: Path) -> None:
    assert aioconveyor.PostgresLeader is PostgresLeader
    code = (
        "import sys\n"
        "sys.modules['asyncpg'] = None  # as if not installed\n"
        "import aioconveyor\n"
        "cls = aioconveyor.PostgresLeader\n"
        "try:\n"
        "    cls('postgresql://localhost/db', 'k')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert 'pip install "aioconveyor[postgres]"' in result.stdout
