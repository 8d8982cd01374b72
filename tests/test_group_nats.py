"""NatsGroup in one process against the real NATS server with JetStream: one claim per
(producer, grid time), the split, the hand-over, its argument checks and its extra.

The fault tests with real processes are in ``test_fleet.py``. Waits poll with bounds.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import aioconveyor
from aioconveyor import NatsGroup, SettingError
from aioconveyor._leader import KeyedLeader
from support.proxy import TcpProxy
from support.services import NATS_URL, host_port, require_server

KEYS = [f"meter-{i:02d}" for i in range(20)]
STEP = 0.5


@pytest.fixture
def nats_url() -> str:
    require_server("NATS", NATS_URL, 4222)
    return NATS_URL


@pytest.fixture
async def make(nats_url: str) -> AsyncIterator[Callable[..., NatsGroup]]:
    group = f"test-{uuid.uuid4().hex[:10]}"
    made: list[NatsGroup] = []

    def build(name: str, **kwargs: Any) -> NatsGroup:
        kwargs.setdefault("check_interval", 0.2)
        kwargs.setdefault("preference_delay", 0.1)
        kwargs.setdefault("balance", 1.0)  # exact shares (10 + 10) keep these figures plain;
        # the default band is tested in test_rendezvous.py and, on PostgreSQL, test_fleet.py
        servers = kwargs.pop("servers", nats_url)
        member = NatsGroup(servers, group, name=name, **kwargs)
        made.append(member)
        return member

    try:
        yield build
    finally:
        for member in made:
            await member.close()


async def tick(members: list[NatsGroup], grants: Counter[tuple[str, float]]) -> list[int]:
    """One grid time: every member asked about every key; how many each was granted."""
    at = math.ceil(time.time() / STEP) * STEP
    await asyncio.sleep(max(0.0, at - time.time()))
    when = datetime.fromtimestamp(at, UTC)
    answers = await asyncio.gather(*(m.lead(when, key=k) for m in members for k in KEYS))
    for i, granted in enumerate(answers):
        if granted:
            grants[(KEYS[i % len(KEYS)], at)] += 1
    return [sum(answers[i * len(KEYS):(i + 1) * len(KEYS)]) for i in range(len(members))]


async def settle(members: list[NatsGroup], want: list[int],
                 grants: Counter[tuple[str, float]]) -> None:
    deadline = time.monotonic() + 15
    while sorted(await tick(members, grants)) != want:
        assert time.monotonic() < deadline, [m.group_stats() for m in members]


async def test_two_members_split_the_ticks_and_each_is_claimed_once(
    make: Callable[..., NatsGroup],
) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    grants: Counter[tuple[str, float]] = Counter()
    await settle([a, b], [10, 10], grants)
    for _ in range(3):
        assert sorted(await tick([a, b], grants)) == [10, 10]
    assert max(grants.values()) == 1
    assert a.members == ("a", "b") and set(a.owned).isdisjoint(b.owned)
    assert a.role == "leader" and a.role_of(a.owned[0]) == "leader"


async def test_a_member_that_leaves_is_replaced_from_the_next_tick(
    make: Callable[..., NatsGroup],
) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    grants: Counter[tuple[str, float]] = Counter()
    await settle([a, b], [10, 10], grants)
    await a.close()
    assert await tick([b], grants) == [20]  # the runner-up claims at once
    assert max(grants.values()) == 1 and b.members == ("b",)


async def test_a_silent_member_s_ticks_are_claimed_once_its_heartbeat_is_late(
    make: Callable[..., NatsGroup],
) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    grants: Counter[tuple[str, float]] = Counter()
    await settle([a, b], [10, 10], grants)
    assert await tick([a, b], grants) == [10, 10]
    await a._nc.close()  # gone without a goodbye: its heartbeat key stays, unrefreshed
    counts = [await tick([b], grants) for _ in range(4)]
    assert counts[-1] == [20]  # claimed once a is suspect (0.3 s), then a is dropped (0.6 s)
    assert max(grants.values()) == 1


async def test_an_unreachable_server_does_not_fail_the_start_and_it_joins_later(
    make: Callable[..., NatsGroup], nats_url: str,
) -> None:
    with TcpProxy(*host_port(nats_url, 4222)) as proxy:
        proxy.cut()  # refused for now
        a = make("a", servers=f"nats://127.0.0.1:{proxy.port}", connect_timeout=1)
        await a.open()
        grants: Counter[tuple[str, float]] = Counter()
        assert await tick([a], grants) == [0] and a.role == "unknown"
        proxy.restore()
        await settle([a], [20], grants)
        assert a.role == "leader" and max(grants.values()) == 1


def test_it_is_a_keyed_leader_whose_bad_arguments_are_named() -> None:
    member = NatsGroup("nats://127.0.0.1:4222", "g")
    assert isinstance(member, KeyedLeader)
    for kwargs, name in ((dict(group=""), "group"), (dict(servers=[]), "servers"),
                         (dict(bucket="a.b"), "bucket"), (dict(tries=0), "tries"),
                         (dict(check_interval=1, member_timeout=1), "member_timeout"),
                         (dict(preference_delay=0), "preference_delay")):
        arguments: dict[str, Any] = {"servers": "nats://127.0.0.1:4222", "group": "g",
                                     **kwargs}
        with pytest.raises(SettingError) as caught:
            NatsGroup(**arguments)
        assert caught.value.name == name, kwargs


def test_the_password_never_shows() -> None:
    member = NatsGroup("nats://u:s3cret-pw@127.0.0.1:4222", "g", name="x")
    assert "s3cret-pw" not in repr(member)


def test_exported_lazily_and_asks_for_the_extra_without_nats(tmp_path: Path) -> None:
    assert aioconveyor.NatsGroup is NatsGroup
    code = ("import sys\nsys.modules['nats'] = None\nimport aioconveyor\n"
            "try:\n    aioconveyor.NatsGroup('nats://localhost:4222', 'g')\n"
            "except ImportError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert 'pip install "aioconveyor[nats]"' in result.stdout, result.stderr
