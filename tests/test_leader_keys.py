"""PostgresLeader per producer key: each key elected on its own, all over one connection.

Against the real PostgreSQL. Real-time waits only poll for what the server decides (a lock
freed when it notices a closed connection), with generous bounds; the idle release and
``proof_age`` run on a ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from aioconveyor import Leader, PostgresLeader
from aioconveyor._leader import KeyedLeader, accepts_key
from aioconveyor._leader_postgres import lock_id_for
from aioconveyor.testing import FakeClock
from support.proxy import proxied, proxy_to

KEYS = [f"meter-{i}" for i in range(6)]


def now() -> datetime:
    return datetime.now(UTC)


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 10.0) -> None:
    """Poll ``check`` until it is true (the server frees a lock when it notices a cut)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        await asyncio.sleep(0.02)





@pytest.fixture
def key() -> str:
    return f"test-keys-{uuid.uuid4().hex}"


@pytest.fixture
async def make(postgres_dsn: str, key: str) -> AsyncIterator[Callable[..., PostgresLeader]]:
    """``make("a", dsn=None, **kwargs)``: a PostgresLeader on the test's key, closed at the end."""
    made: list[PostgresLeader] = []

    def build(name: str, dsn: str | None = None, **kwargs: Any) -> PostgresLeader:
        leader = PostgresLeader(dsn or postgres_dsn, key, name=f"{name}-{key[-8:]}", **kwargs)
        made.append(leader)
        return leader

    try:
        yield build
    finally:
        for leader in made:
            await leader.close()


async def lead_all(leader: PostgresLeader, keys: list[str]) -> dict[str, bool]:
    """Ask for every key at the same moment, as producers on the same grid time would."""
    answers = await asyncio.gather(*(leader.lead(now(), key=k) for k in keys))
    return dict(zip(keys, answers, strict=True))


async def connections_of(db: asyncpg.Connection, leader: PostgresLeader) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        f"aioconveyor leader {leader.name}")
    return count


# -- election per key --------------------------------------------------------------------


async def test_each_key_has_exactly_one_leader_across_two_instances(
    make: Callable[..., PostgresLeader],
) -> None:
    a, b = make("a"), make("b")
    assert all((await lead_all(a, KEYS[:3])).values())  # a asks first for the first three
    assert all((await lead_all(b, KEYS[3:])).values())  # b for the others
    for _ in range(3):  # and from now on both ask for every key, every tick
        of_a, of_b = await lead_all(a, KEYS), await lead_all(b, KEYS)
        assert [k for k in KEYS if of_a[k]] == KEYS[:3]
        assert [k for k in KEYS if of_b[k]] == KEYS[3:]
        assert all(of_a[k] != of_b[k] for k in KEYS)
    assert [a.role_of(k) for k in KEYS] == ["leader"] * 3 + ["standby"] * 3
    assert [b.role_of(k) for k in KEYS] == ["standby"] * 3 + ["leader"] * 3
    assert [a.takeovers_of(k) for k in KEYS] == [1, 1, 1, 0, 0, 0]
    assert a.since_of(KEYS[0]) is not None and a.since_of(KEYS[0]) <= now()  # type: ignore[operator]
    assert set(a.keys) == set(KEYS)
    # the instance's own key (producers without a key) is one more election of its own
    assert (a.role, b.role) == ("unknown", "unknown")
    assert await b.lead(now()) and not await a.lead(now())
    assert (a.role, a.role_of(None), b.role, b.takeovers) == ("standby", "standby", "leader", 1)


async def test_a_producer_key_is_the_instance_key_slash_the_producer_key(
    make: Callable[..., PostgresLeader], key: str,
) -> None:
    a = make("a")
    assert a.lock_name() == key and a.lock_name("meter") == f"{key}/meter"
    assert lock_id_for(a.lock_name("meter")) != a.lock_id
    assert await a.lead(now(), key="meter")
    # a conveyor configured with "<key>/meter" competes for that producer's leadership
    single = PostgresLeader(a._dsn, f"{key}/meter", name=f"single-{key[-8:]}")
    try:
        assert not await single.lead(now())
        await a.release("meter")
        assert await single.lead(now())
    finally:
        await single.close()


async def test_one_connection_per_instance_whatever_the_number_of_keys(
    make: Callable[..., PostgresLeader], db: asyncpg.Connection,
) -> None:
    a, b = make("a"), make("b")
    await a.open()
    keys = [f"device-{i}" for i in range(50)]
    for _ in range(2):
        await lead_all(a, keys)
        await lead_all(b, keys)
        await a.lead(now())
        await b.lead(now())
    assert (await connections_of(db, a), await connections_of(db, b)) == (1, 1)
    held = await db.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.granted AND s.application_name = $1",
        f"aioconveyor leader {a.name}")
    assert held == 51  # its own key and the fifty producer keys, on that one session


async def test_keys_asked_at_the_same_moment_share_one_round_trip(
    make: Callable[..., PostgresLeader],
) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    keys = [f"device-{i}" for i in range(1000)]
    start = a.round_trips
    assert all((await lead_all(a, keys)).values())  # 1,000 lock tries in one query
    assert a.round_trips == start + 1
    assert all((await lead_all(a, keys)).values())  # all held: one SELECT 1 proves them all
    assert a.round_trips == start + 2
    start = b.round_trips
    assert not any((await lead_all(b, keys)).values())
    assert b.round_trips == start + 1


# -- failover per key --------------------------------------------------------------------


async def test_cut_connection_fails_its_keys_over_and_the_other_keeps_its_own(
    make: Callable[..., PostgresLeader], postgres_dsn: str,
) -> None:
    with proxy_to(postgres_dsn) as proxy:
        a, b = make("a", proxied(postgres_dsn, proxy.port)), make("b")
        assert all((await lead_all(a, KEYS[:3])).values())
        assert all((await lead_all(b, KEYS[3:])).values())
        assert not any((await lead_all(b, KEYS[:3])).values())

        proxy.cut()
        started = time.monotonic()
        assert not any((await lead_all(a, KEYS)).values())  # in doubt: none of a's keys
        assert time.monotonic() - started < 2.0
        assert [a.role_of(k) for k in KEYS[:3]] == ["standby"] * 3

        async def b_took_over() -> bool:
            answers = await lead_all(b, KEYS)
            assert all(answers[k] for k in KEYS[3:]), "b lost a key it held"
            return all(answers.values())

        await eventually(b_took_over, "takeover of a's keys by b")
        proxy.restore()  # a reconnects, finds every lock taken and stays a standby
        assert not any((await lead_all(a, KEYS)).values())
        assert proxy.connections == 2
        assert [b.takeovers_of(k) for k in KEYS] == [1, 1, 1, 1, 1, 1]
        assert [a.takeovers_of(k) for k in KEYS] == [1, 1, 1, 0, 0, 0]


async def test_a_session_ended_by_the_server_hands_every_key_over(
    make: Callable[..., PostgresLeader], db: asyncpg.Connection,
) -> None:
    a, b = make("a"), make("b")
    assert all((await lead_all(a, KEYS)).values()) and await a.lead(now())
    assert await db.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE application_name = $1", f"aioconveyor leader {a.name}") == 1
    assert not any((await lead_all(a, KEYS)).values())  # its check fails: all stand by
    await eventually(lambda: _all_true(lead_all(b, KEYS)), "b leading every key")
    assert not any((await lead_all(a, KEYS)).values())  # reconnected; the locks are b's
    assert await a.lead(now())  # its own key was not b's to take: a leads it again


async def _all_true(answers: Awaitable[dict[str, bool]]) -> bool:
    return all((await answers).values())


async def test_a_cancelled_check_gives_up_only_its_own_key(
    make: Callable[..., PostgresLeader],
) -> None:
    a, b = make("a"), make("b")
    assert all((await lead_all(a, ["slow", "fine"])).values())
    check = asyncio.create_task(a.lead(now(), key="slow"))
    await asyncio.sleep(0)  # asked, not answered yet
    check.cancel()  # as the scheduler's grace timeout would
    with pytest.raises(asyncio.CancelledError):
        await check
    assert (a.role_of("slow"), a.role_of("fine")) == ("standby", "leader")
    assert await a.lead(now(), key="fine")  # same session: that key never wavered
    assert await b.lead(now(), key="slow")  # the other key was unlocked, not dropped


async def test_close_releases_every_key(make: Callable[..., PostgresLeader]) -> None:
    a, b = make("a"), make("b")
    assert all((await lead_all(a, KEYS)).values()) and await a.lead(now())
    await a.close()
    assert (a.role, a.role_of(KEYS[0])) == ("unknown", "unknown")
    assert not await a.lead(now(), key=KEYS[0])
    assert all((await lead_all(b, KEYS)).values()) and await b.lead(now())


# -- keys that stop being asked ----------------------------------------------------------


async def test_release_hands_a_key_over_at_once(make: Callable[..., PostgresLeader]) -> None:
    a, b = make("a"), make("b")
    assert all((await lead_all(a, ["removed", "kept"])).values())
    assert not await b.lead(now(), key="removed")
    await a.release("removed")
    await a.release("never-asked")  # unknown keys are ignored
    assert a.keys == ("kept",) and a.role_of("removed") == "unknown"
    assert await b.lead(now(), key="removed")
    assert await a.lead(now(), key="kept") and not await b.lead(now(), key="kept")
    assert not await a.lead(now(), key="removed")  # asked again: a standby like any other


async def test_a_key_no_longer_asked_is_released_after_release_after(
    make: Callable[..., PostgresLeader],
) -> None:
    clock = FakeClock(autojump=False)
    a, b = make("a", release_after=60, clock=clock), make("b")
    assert all((await lead_all(a, ["removed", "kept", "hourly"])).values())
    clock.advance(100)
    assert await a.lead(now(), key="hourly")  # its period is now known: 100 s
    for _ in range(7):  # "kept" is asked every 10 s, "removed" no more
        clock.advance(10)
        assert await a.lead(now(), key="kept")
    await a.lead(now(), key="kept")  # a round trip after the sweep: the unlock went first
    assert a.role_of("removed") == "unknown" and "removed" not in a.keys
    assert await b.lead(now(), key="removed")
    assert not await b.lead(now(), key="kept")
    assert not await b.lead(now(), key="hourly")  # 70 s idle, but under 3 of its periods
    clock.advance(240)
    await a.lead(now(), key="kept")
    assert await b.lead(now(), key="hourly")  # 310 s idle: released


async def test_proof_age_lets_a_leader_answer_from_a_recent_check(
    make: Callable[..., PostgresLeader],
) -> None:
    clock = FakeClock(autojump=False)
    a, b = make("a", proof_age=1.0, clock=clock), make("b")
    assert all((await lead_all(a, KEYS[:3])).values())
    sent = a.round_trips
    assert all((await lead_all(a, KEYS[:3])).values())
    assert a.round_trips == sent  # proven 0 s ago: no query
    assert not await b.lead(now(), key=KEYS[0])
    clock.advance(1.5)
    assert all((await lead_all(a, KEYS[:3])).values())
    assert a.round_trips == sent + 1  # too old: one fresh check for the three


# -- the protocol ------------------------------------------------------------------------


class OneProducerLeader:
    """A third-party leader written before producer keys existed."""

    role = "leader"
    since: datetime | None = None
    takeovers = 1

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def lead(self, event_time: datetime) -> bool:
        return True


class ForwardingLeader(OneProducerLeader):
    async def lead(self, event_time: datetime, **options: Any) -> bool:
        return True


def test_a_leader_without_key_still_is_a_leader_but_does_not_accept_keys() -> None:
    old = OneProducerLeader()
    assert isinstance(old, Leader) and not isinstance(old, KeyedLeader)
    assert not accepts_key(old)
    assert accepts_key(ForwardingLeader())
    keyed = PostgresLeader(None, "k")
    assert isinstance(keyed, Leader) and isinstance(keyed, KeyedLeader) and accepts_key(keyed)
    assert not accepts_key(object())


async def test_bad_keys_and_arguments_are_named(make: Callable[..., PostgresLeader]) -> None:
    with pytest.raises(TypeError, match="key must be a non-empty str"):
        await make("a").lead(now(), key="")
    with pytest.raises(ValueError, match="release_after must be"):
        PostgresLeader(None, "k", release_after=0)
    with pytest.raises(ValueError, match="proof_age must be"):
        PostgresLeader(None, "k", proof_age=-1)
    with pytest.raises(TypeError, match="clock must be a Clock"):
        PostgresLeader(None, "k", clock="fake")  # type: ignore[arg-type]


# -- two conveyors, several producers each: every producer elected on its own -------------


def test_two_conveyors_elect_each_producer_separately_and_hand_over_a_removed_one(
    postgres_dsn: str, key: str,
) -> None:
    from aioconveyor import AioConveyor, Producer
    from aioconveyor.testing import MemoryConsumer, wait_until_blocking

    made: dict[str, list[tuple[str, datetime]]] = {"a": [], "b": []}

    def device(instance: str, producer: str) -> Callable[[datetime], str]:
        def produce(event_time: datetime) -> str:
            made[instance].append((producer, event_time))
            return producer
        return produce

    names = [f"dev{i}" for i in range(4)]

    def conveyor(instance: str) -> AioConveyor:
        leader = PostgresLeader(postgres_dsn, key, name=f"{instance}-{key[-8:]}")
        return AioConveyor(consumers=[MemoryConsumer()], leader=leader, name=instance,
                           producers=[Producer(device(instance, n), name=n, every=0.05)
                                      for n in names])

    a, b = conveyor("a"), conveyor("b")
    with a, b:
        def roles() -> dict[str, tuple[str | None, str | None]]:
            sa, sb = a.stats(), b.stats()
            return {n: (sa.producer(n).leader_role, sb.producer(n).leader_role) for n in names}

        # every producer has exactly one leader: one instance leads it, the other stands by
        assert wait_until_blocking(lambda: all(
            set(r) == {"leader", "standby"} for r in roles().values()), 20), roles()
        held_by_a = [n for n, (ra, _) in roles().items() if ra == "leader"]
        victim = held_by_a[0] if held_by_a else names[0]
        owner, other = (a, b) if held_by_a else (b, a)
        owner.remove_producer(victim)  # releases its key at once: the other takes it over
        assert wait_until_blocking(
            lambda: other.stats().producer(victim).leader_role == "leader", 20)
        assert wait_until_blocking(lambda: other.stats().producer(victim).produced > 0, 20)
    for n in names:  # never both for one (producer, grid time)
        ta = {t for p, t in made["a"] if p == n}
        tb = {t for p, t in made["b"] if p == n}
        assert not ta & tb, n
