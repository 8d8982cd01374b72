"""Network and server faults under a group of real processes (PostgresGroup, NatsGroup).

Every member is its own process (``support/fleet_worker.py``, as in ``test_fleet.py``),
logging each (producer, grid time) it produced to its own file: double production is
counted at the producers. One member's coordination connection goes through a
``support.proxy.TcpProxy`` that is made *silent* (no byte forwarded either way, no socket
closed: a dropped route); the NATS tests run a private ``nats-server`` with JetStream on
a free port that is killed and started again (the shared one on 4222 is never touched).
Short intervals, bounds counted in grid periods with slack, waits polling with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from support.fleet_member import Member, figure, wait_until
from support.proxy import TcpProxy
from support.services import POSTGRES_DSN, free_port, in_ci, require_server

NATS_SERVER = "/usr/sbin/nats-server"
PRODUCERS = 24
PERIOD = 1.0
CHECK = 0.5
"""check_interval of every member."""
SESSION_TIMEOUT = 2.0
"""PostgresGroup's session_timeout (at least 3 * CHECK)."""
KEEPALIVE = 1.0
SLACK = 2
"""Grid periods allowed over each documented bound (a loaded 2-core machine)."""


def sql(statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()
    asyncio.run(run())


def grid(t: float) -> float:
    """The first grid time at or after wall time ``t``."""
    return math.ceil(t / PERIOD) * PERIOD


class Fleet:
    def __init__(self, tmp: Path, backend: str) -> None:
        self.dir = tmp
        self.backend = backend
        self.group = f"faults-{uuid.uuid4().hex[:8]}"
        self.table = f"faults_{uuid.uuid4().hex[:8]}"
        sql(f'CREATE TABLE "{self.table}" (producer text, event_time timestamptz, '
            "instance text, PRIMARY KEY (producer, event_time))")
        self.members: dict[str, Member] = {}

    def spawn(self, name: str, coordinator: str) -> Member:
        member = self.members[name] = Member(self.dir, name, [
            "--dsn", POSTGRES_DSN, "--group-dsn", coordinator, "--group", self.group,
            "--table", self.table, "--producers", str(PRODUCERS), "--interval", str(PERIOD),
            "--backend", self.backend, "--check-interval", str(CHECK), "--session-timeout",
            str(SESSION_TIMEOUT), "--keepalive", str(KEEPALIVE)])
        return member

    def balanced(self, names: list[str]) -> bool:
        around = PRODUCERS / len(names)
        statuses = [self.members[n].status() for n in names]
        return all(len(s.get("members", ())) == len(names) and abs(s["owned"] - around) <= 2
                   for s in statuses)

    def produced(self) -> dict[str, list[tuple[str, float]]]:
        return {name: m.produced() for name, m in self.members.items()}

    def twice(self) -> list[tuple[str, float]]:
        counts: Counter[tuple[str, float]] = Counter()
        for produced in self.produced().values():
            counts.update(produced)
        return [k for k, n in counts.items() if n > 1]

    def latest(self) -> float:
        return max((t for p in self.produced().values() for _, t in p), default=0.0)

    def missing(self, start: float, end: float) -> list[tuple[str, float]]:
        """(producer, grid time) nobody produced, for grid times in [start, end]."""
        have = {k for p in self.produced().values() for k in p}
        times = [round(start + i * PERIOD, 3) for i in range(round((end - start) / PERIOD) + 1)]
        return [(f"p{i:03d}", t) for t in times for i in range(PRODUCERS)
                if (f"p{i:03d}", t) not in have]

    def close(self) -> None:
        for member in self.members.values():
            if member.proc.poll() is None:
                member.proc.kill()
            with contextlib.suppress(Exception):
                member.proc.communicate(timeout=10)
            member.stderr.close()
        with contextlib.suppress(Exception):
            sql(f'DROP TABLE IF EXISTS "{self.table}"')


def periods_to_resume(fleet: Fleet, since: float, bound: float) -> float:
    """Grid periods from ``since`` to the first grid time after which nothing is missing
    up to ``bound`` (0: nothing missing at all)."""
    gone = fleet.missing(grid(since), bound)
    return (max((t for _, t in gone), default=grid(since) - PERIOD) + PERIOD
            - grid(since)) / PERIOD


@pytest.fixture
def pg_fleet(tmp_path: Path) -> Iterator[Fleet]:
    require_server("PostgreSQL", POSTGRES_DSN, 5432)
    fleet = Fleet(tmp_path, "postgres")
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.mark.timeout(90)
def test_postgres_group_silent_partition_isolated_member_stops_before_the_others_take_over(
    pg_fleet: Fleet,
) -> None:
    fleet = pg_fleet
    with TcpProxy("127.0.0.1", 5432) as proxy:
        fleet.spawn("a", POSTGRES_DSN)
        fleet.spawn("b", POSTGRES_DSN)
        c = fleet.spawn("c", POSTGRES_DSN.replace(":5432/", f":{proxy.port}/"))
        steady = wait_until(lambda: fleet.balanced(["a", "b", "c"]), 40,
                            "3 members at 8 ± 2")
        start = grid(steady) + PERIOD
        wait_until(lambda: fleet.latest() >= start + 2 * PERIOD, 20, "steady periods")
        before = {p for p, t in c.produced() if t >= start}
        assert before, "c produced nothing in the steady state"

        proxy.silence()
        silenced = time.time()
        # c cannot check any more: it grants nothing once its last check is 2c old
        wait_until(lambda: c.status().get("owned") == 0, 10, "c producing nothing")
        # the server ends c's session (idle_session_timeout) after s; the others see it
        # at their next check and produce its share from the next grid time
        bound = grid(silenced + SESSION_TIMEOUT + 2 * CHECK + PERIOD) + SLACK * PERIOD
        wait_until(lambda: fleet.latest() >= bound + 2 * PERIOD, 30, "periods after the cut")
        assert fleet.missing(bound, fleet.latest() - PERIOD) == []
        c_times = [t for _, t in c.produced()]
        c_last = max(c_times)
        assert c_last <= grid(silenced + 2 * CHECK), (silenced, c_last)
        by = defaultdict(list)
        for name in ("a", "b"):
            for p, t in fleet.members[name].produced():
                if t >= start and p in before:
                    by[p].append(t)
        taken = min(min(ts) for ts in by.values())
        assert taken > c_last, (c_last, taken)  # c stopped before anyone took over
        assert set(by) == before
        assert fleet.twice() == []
        figure("pg_silent_partition_periods_to_takeover",
               periods_to_resume(fleet, silenced, bound))
        figure("pg_silent_partition_takeover_s", round(taken - silenced, 2))
        figure("pg_silent_partition_own_stop_s", round(c_last - silenced, 2))

        # the partition heals: c rejoins and takes a share back, still nothing twice
        proxy.speak()
        wait_until(lambda: fleet.balanced(["a", "b", "c"]), 30, "c back in the group")
        healed = fleet.latest()
        wait_until(lambda: fleet.latest() >= healed + 2 * PERIOD, 20, "periods after heal")
        assert fleet.missing(bound, fleet.latest() - PERIOD) == []
        assert fleet.twice() == []
        finals = {m.name: m.stop() for m in fleet.members.values()}
    assert all(f["producer_errors"] == 0 for f in finals.values()), finals
    assert finals["c"]["lost"] >= 1


# -- NatsGroup -------------------------------------------------------------------------


class PrivateNats:
    """A private nats-server with JetStream on a free loopback port and its own store."""

    def __init__(self) -> None:
        if not Path(NATS_SERVER).exists():
            reason = f"no {NATS_SERVER}"
            if in_ci():
                pytest.fail(f"CI=true: {reason}", pytrace=False)
            pytest.skip(reason)
        self.port = free_port()
        self.store = Path(tempfile.mkdtemp(prefix="aioconveyor-nats-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
             str(self.store), "-l", str(self.store / "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "nats-server died"
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return True
            return False
        wait_until(up, 20, "the private nats-server")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> PrivateNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        shutil.rmtree(self.store, ignore_errors=True)


@pytest.fixture
def nats_fleet(tmp_path: Path) -> Iterator[tuple[Fleet, PrivateNats]]:
    require_server("PostgreSQL", POSTGRES_DSN, 5432)
    with PrivateNats() as server:
        fleet = Fleet(tmp_path, "nats")
        try:
            yield fleet, server
        finally:
            fleet.close()


def assert_few_missing(fleet: Fleet, start: float, end: float) -> int:
    """At most 2 % of the ticks in [start, end] missing (a claim acknowledged after its
    tick's grace is a tick nobody produces, documented); how many were."""
    gone = fleet.missing(start, end)
    periods = round((end - start) / PERIOD) + 1
    assert len(gone) <= 0.02 * PRODUCERS * periods, gone[:20]
    return len(gone)


@pytest.mark.timeout(90)
def test_nats_group_resumes_after_the_server_restarts_never_twice(
    nats_fleet: tuple[Fleet, PrivateNats],
) -> None:
    fleet, server = nats_fleet
    for name in ("a", "b", "c"):
        fleet.spawn(name, server.url)
    steady = wait_until(lambda: fleet.balanced(["a", "b", "c"]), 40, "3 members at 8 ± 2")
    wait_until(lambda: fleet.latest() >= grid(steady) + 2 * PERIOD, 20, "steady periods")

    server.kill()
    time.sleep(2 * PERIOD)  # down for two periods: a real outage, not a hiccup
    server.start()
    back = time.time()
    # the clients reconnect (every min(1, c) s), heartbeats and claims go through again
    bound = grid(back + 2 * CHECK + PERIOD) + SLACK * PERIOD
    wait_until(lambda: fleet.latest() >= bound + 3 * PERIOD, 30, "periods after the restart")
    missed = assert_few_missing(fleet, bound, fleet.latest() - PERIOD)
    assert fleet.twice() == []
    figure("nats_restart_periods_to_resume", periods_to_resume(fleet, back, bound))
    figure("nats_restart_missing_after_bound", missed)
    finals = {m.name: m.stop() for m in fleet.members.values()}
    assert all(f["producer_errors"] == 0 for f in finals.values()), finals


@pytest.mark.timeout(90)
def test_nats_group_silent_partition_the_others_claim_its_ticks_never_twice(
    nats_fleet: tuple[Fleet, PrivateNats],
) -> None:
    fleet, server = nats_fleet
    with TcpProxy("127.0.0.1", server.port) as proxy:
        fleet.spawn("a", server.url)
        fleet.spawn("b", server.url)
        c = fleet.spawn("c", f"nats://127.0.0.1:{proxy.port}")
        steady = wait_until(lambda: fleet.balanced(["a", "b", "c"]), 40,
                            "3 members at 8 ± 2")
        start = grid(steady) + PERIOD
        wait_until(lambda: fleet.latest() >= start + 2 * PERIOD, 20, "steady periods")
        before = {p for p, t in c.produced() if t >= start}
        assert before

        proxy.silence()
        silenced = time.time()
        # c's claims get no answer (nothing produced); its heartbeat is late after 1.5c,
        # the runner-up claims its ticks preference_delay after the grid time
        bound = grid(silenced + 1.5 * CHECK + PERIOD) + SLACK * PERIOD
        wait_until(lambda: fleet.latest() >= bound + 3 * PERIOD, 30, "periods after the cut")
        missed = assert_few_missing(fleet, bound, fleet.latest() - PERIOD)
        c_last = max(t for _, t in c.produced())
        assert c_last <= grid(silenced), (silenced, c_last)
        taken = min(t for name in ("a", "b") for p, t in fleet.members[name].produced()
                    if p in before and t > c_last)
        assert fleet.twice() == []
        figure("nats_partition_takeover_s", round(taken - silenced, 2))
        figure("nats_partition_periods_to_takeover", periods_to_resume(fleet, silenced, bound))
        figure("nats_partition_missing_after_bound", missed)

        proxy.speak()
        wait_until(lambda: fleet.balanced(["a", "b", "c"]), 30, "c back in the group")
        healed = fleet.latest()
        wait_until(lambda: fleet.latest() >= healed + 2 * PERIOD, 20, "periods after heal")
        assert fleet.twice() == []
        finals = {m.name: m.stop() for m in fleet.members.values()}
    assert all(f["producer_errors"] == 0 for f in finals.values()), finals
