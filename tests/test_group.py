"""PostgresGroup in one process against the real PostgreSQL: the split, the grants, the
hand-over, what it shows (stats, /metrics, the CLI) and its argument checks.

The fault tests with real processes and a private server are in ``test_fleet.py``. Waits
poll what the checks decide, with generous bounds.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aioconveyor import AioConveyor, PostgresGroup, Producer, SettingError
from aioconveyor._leader import KeyedLeader, accepts_key
from aioconveyor._rendezvous import capacity, floor_share
from support.http import get
from support.proxy import proxied, proxy_to

KEYS = [f"meter-{i:02d}" for i in range(20)]
STEP = 0.2


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str,
                     timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        await asyncio.sleep(0.02)


@pytest.fixture
def group() -> str:
    return f"test-group-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make(postgres_dsn: str, group: str) -> AsyncIterator[Callable[..., PostgresGroup]]:
    made: list[PostgresGroup] = []

    def build(name: str, dsn: str | None = None, **kwargs: Any) -> PostgresGroup:
        kwargs.setdefault("check_interval", STEP)
        member = PostgresGroup(dsn or postgres_dsn, group, name=f"{name}-{group[-6:]}",
                               **kwargs)
        made.append(member)
        return member

    try:
        yield build
    finally:
        for member in made:
            await member.close()


def grid_now() -> datetime:
    t = math.ceil(time.time() / STEP) * STEP
    return datetime.fromtimestamp(t, UTC)


async def tick(members: list[PostgresGroup], when: datetime,
               keys: list[str]) -> dict[str, list[str]]:
    """Every member asked about every key for one grid time, each ask in a task of its own
    (as the scheduler does): who was granted what."""
    async def ask(member: PostgresGroup, key: str) -> bool:
        return await member.lead(when, key=key)

    tasks = {(m.name, k): asyncio.create_task(ask(m, k)) for m in members for k in keys}
    await asyncio.gather(*tasks.values())
    granted: dict[str, list[str]] = {}
    for (name, key), task in tasks.items():
        if task.result():
            granted.setdefault(key, []).append(name)
    return granted


async def run_ticks(members: list[PostgresGroup], keys: list[str], until: Callable[[], bool],
                    grants: Counter[tuple[str, float]], timeout: float = 20.0) -> None:
    """Tick on the grid, counting every grant per (key, grid time), until ``until()``."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "not settled"
        when = grid_now()
        await asyncio.sleep(max(0.0, when.timestamp() - time.time()))
        for key, names in (await tick(members, when, keys)).items():
            grants[(key, when.timestamp())] += len(names)


def owned(members: list[PostgresGroup]) -> list[int]:
    return sorted(len(m.owned) for m in members)


def split(members: list[PostgresGroup]) -> bool:
    """Every member owns what the shared assignment gives it, and every share is within
    the band (9 to 11 of 20 keys for two members)."""
    plan = members[0].assignment()
    if set(plan) != set(KEYS) or any(m.assignment() != plan for m in members):
        return False
    lo, hi = floor_share(len(KEYS), len(members)), capacity(len(KEYS), len(members))
    return all(sorted(m.owned) == sorted(k for k, n in plan.items() if n == m.name)
               and lo <= len(m.owned) <= hi for m in members)


async def test_two_members_split_the_keys_and_each_grid_time_is_granted_once(
    make: Callable[..., PostgresGroup],
) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    grants: Counter[tuple[str, float]] = Counter()
    await run_ticks([a, b], KEYS, lambda: split([a, b]), grants)
    settled = len(grants)
    start = time.time()
    await run_ticks([a, b], KEYS, lambda: time.time() > start + 5 * STEP, grants)
    assert max(grants.values()) == 1  # never twice, from the first tick on
    later = list(grants.items())[settled:]
    times = {t for (_, t), _ in later}
    assert len(later) == len(KEYS) * len(times)  # and nothing missing once settled
    assert set(a.owned).isdisjoint(b.owned) and a.members == b.members
    assert a.group_stats().assigned == len(a.owned) and a.group_stats().agreed


async def test_a_closed_member_hands_its_keys_to_the_other(
    make: Callable[..., PostgresGroup],
) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    grants: Counter[tuple[str, float]] = Counter()
    await run_ticks([a, b], KEYS, lambda: split([a, b]), grants)
    await a.close()
    await run_ticks([b], KEYS, lambda: len(b.owned) == len(KEYS), grants)
    assert max(grants.values()) == 1
    assert b.group_stats().takeovers >= len(KEYS) and b.members == (b.name,)


async def test_a_cut_connection_stops_its_member_at_once_and_the_other_takes_over(
    make: Callable[..., PostgresGroup], postgres_dsn: str,
) -> None:
    with proxy_to(postgres_dsn) as proxy:
        a = make("a", dsn=proxied(postgres_dsn, proxy.port))
        b = make("b")
        await a.open()
        await b.open()
        grants: Counter[tuple[str, float]] = Counter()
        await run_ticks([a, b], KEYS, lambda: split([a, b]), grants)
        share = len(a.owned)
        proxy.cut()  # a's connection reset, and no new one for a while
        await eventually(lambda: a.owned == () and a.role == "unknown", "a standing down",
                         timeout=2 * STEP + 2)
        await run_ticks([a, b], KEYS, lambda: len(b.owned) == len(KEYS), grants)
        assert max(grants.values()) == 1
        assert a.group_stats().lost == share and b.members == (b.name,)
        proxy.restore()  # a rejoins and gets its share back, handed over by b
        await run_ticks([a, b], KEYS, lambda: split([a, b]), grants)
        assert max(grants.values()) == 1 and b.group_stats().handovers >= share


async def test_a_lock_taken_during_a_tick_serves_from_the_next_grid_time(
    make: Callable[..., PostgresGroup],
) -> None:
    a = make("a")
    await a.open()
    first = datetime.now(UTC)
    assert await a.lead(first, key="meter") is False  # asked first: not ours yet
    await eventually(lambda: a.owned == ("meter",), "the lock")
    assert await a.lead(first, key="meter") is False  # taken after that grid time
    assert await a.lead(datetime.now(UTC) + timedelta(seconds=1), key="meter") is True
    assert a.role == "leader" and a.role_of("meter") == "leader"


async def test_one_connection_per_member_whatever_the_number_of_producers(
    make: Callable[..., PostgresGroup], db: asyncpg.Connection,
) -> None:
    a = make("a")
    await a.open()
    keys = [f"p{i}" for i in range(200)]
    await tick([a], datetime.now(UTC), keys)
    await eventually(lambda: len(a.owned) == 200, "200 locks")
    sessions = await db.fetchval("SELECT count(*) FROM pg_stat_activity "
                                 "WHERE application_name = $1", f"aioconveyor group {a.name}")
    assert sessions == 1
    trips = a.round_trips
    await asyncio.sleep(6 * STEP)
    assert a.round_trips - trips <= 8  # about one check per STEP, not one per producer


async def test_a_second_live_member_with_the_same_name_waits(
    postgres_dsn: str, group: str,
) -> None:
    a = PostgresGroup(postgres_dsn, group, name="same", check_interval=STEP)
    b = PostgresGroup(postgres_dsn, group, name="same", check_interval=STEP)
    try:
        await a.open()
        await b.open()
        await a.lead(datetime.now(UTC), key="k")
        await eventually(lambda: a.owned == ("k",), "a's lock")
        assert b.role == "unknown" and not await b.lead(datetime.now(UTC), key="k")
        await a.close()
        await eventually(lambda: b.role != "unknown", "b joining once a is gone")
    finally:
        await a.close()
        await b.close()


def test_it_is_a_keyed_leader_whose_bad_arguments_are_named(postgres_dsn: str) -> None:
    member = PostgresGroup(postgres_dsn, "g")
    assert isinstance(member, KeyedLeader) and accepts_key(member)
    for kwargs, name in ((dict(group=""), "group"), (dict(check_interval=0), "check_interval"),
                         (dict(balance=0.9), "balance"),
                         (dict(check_interval=1, session_timeout=2), "session_timeout"),
                         (dict(check_interval=1, keepalive=1.5), "keepalive"),
                         (dict(name=""), "name")):
        arguments: dict[str, Any] = {"group": "g", **kwargs}
        with pytest.raises(SettingError) as caught:
            PostgresGroup(postgres_dsn, **arguments)
        assert caught.value.name == name, kwargs


def test_the_password_never_shows() -> None:
    member = PostgresGroup("postgresql://u:s3cret-pw@127.0.0.1:1/db", "g", name="x")
    assert "s3cret-pw" not in repr(member)


def test_a_conveyor_shows_its_group_in_stats_and_metrics(postgres_dsn: str, group: str) -> None:
    async def read(event_time: datetime) -> dict[str, int]:
        return {"v": 1}

    producers = [Producer(read, name=f"p{i}", every=0.1) for i in range(3)]
    member = PostgresGroup(postgres_dsn, group, name="solo", check_interval=STEP)
    conv = AioConveyor(producers=producers, consumers=[], leader=member, metrics_port=0,
                       name="solo")
    with conv:
        deadline = time.monotonic() + 15
        while conv.stats().produced < 6:
            assert time.monotonic() < deadline, conv.stats()
            time.sleep(0.05)
        stats = conv.stats()
        address = conv.metrics_address
        assert address is not None
        code, body = get(f"http://{address[0]}:{address[1]}/metrics")
    assert stats.group is not None and stats.group.members == ("solo",)
    assert sorted(stats.group.owned) == ["p0", "p1", "p2"] and stats.leader_role == "leader"
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    sample = families["aioconveyor_group_owned_producers"].samples[0]
    assert sample.labels == {"conveyor": "solo", "group": group} and sample.value == 3
    assert families["aioconveyor_group_members"].samples[0].value == 1
    assert families["aioconveyor_group_takeovers"].samples[0].value == 3


def test_the_group_command_prints_the_members_and_what_they_hold(
    postgres_dsn: str, group: str, tmp_path: Path,
) -> None:
    (tmp_path / "meters.py").write_text(
        "def read(event_time, meter):\n    return {'meter': meter}\n")
    producers = "".join(f'\n[[producers]]\nname = "m{i}"\nfunction = "meters:read"\n'
                        f'meter = "{i}"\nevery = 0.1\n' for i in range(3))
    (tmp_path / "fleet.toml").write_text(
        f'[conveyor]\nname = "x"\n\n[leader]\ntype = "postgres-group"\n'
        f'dsn = "{postgres_dsn}"\ngroup = "{group}"\nname = "host-a"\ncheck_interval = 0.2\n'
        + producers)
    cli = [sys.executable, "-m", "aioconveyor"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.Popen([*cli, "run", "fleet.toml"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            shown = subprocess.run([*cli, "group", "fleet.toml"], cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=30, check=False)
            assert shown.returncode == 0, shown.stderr
            if "host-a: assigned 3, holds 3" in shown.stdout:
                break
            assert time.monotonic() < deadline, shown.stdout
            time.sleep(0.2)
        assert f"group '{group}': 1 members, 3 producers" in shown.stdout
    finally:
        run.terminate()
        run.communicate(timeout=30)
    idle = subprocess.run([*cli, "group", "fleet.toml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert "0 members" in idle.stdout and "held by nobody: 3" in idle.stdout
