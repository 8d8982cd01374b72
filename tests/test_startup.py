"""Start-up while a server is down (``startup="retry"``, the default) and ``startup="fail"``.

Real servers: PostgreSQL behind a :class:`TcpProxy` that is not listening yet, a private
Mosquitto started after the conveyor (behind a proxy too, so that the test's subscriber is
in place before the conveyor gets through). The shared servers are never stopped.
"""

from __future__ import annotations

import asyncio
import csv
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest

from aioconveyor import AioConveyor, Consumer, StartupError
from aioconveyor.consumers import CsvConsumer, MqttConsumer, PostgresConsumer
from aioconveyor.testing import wait_until, wait_until_blocking
from support.http import get
from support.mosquitto import Mosquitto, require_mosquitto
from support.proxy import TcpProxy
from support.services import free_port, host_port

FAST = {"backoff": 0.05, "max_backoff": 0.2, "backoff_jitter": 0.0}


class Counter:
    """Producer of ``{"n": 0}``, ``{"n": 1}``, ...; remembers how many it made."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, event_time: datetime) -> dict[str, int]:
        self.n += 1
        return {"n": self.n - 1}


def readyz(conv: AioConveyor) -> int:
    assert conv.metrics_address is not None
    host, port = conv.metrics_address
    return get(f"http://{host}:{port}/readyz")[0]


def csv_ns(path: Path) -> list[int]:
    with path.open(newline="") as fh:
        return [int(row["n"]) for row in csv.DictReader(fh)]


def state(conv: AioConveyor, name: str) -> str:
    return conv.stats().consumer(name).state


async def stop(conv: AioConveyor) -> None:
    await asyncio.to_thread(conv.stop)
    assert conv.exception is None
    for c in conv.stats().consumers:  # nothing lost on the way
        assert (c.delivered, c.dropped, c.failed, c.queued) == (c.offered, 0, 0, 0), c


@pytest.fixture
async def table(db: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"aioc_startup_{uuid.uuid4().hex[:12]}"
    yield name
    await db.execute(f'DROP TABLE IF EXISTS "{name}"')


@pytest.fixture
def pg_proxy(postgres_dsn: str) -> Iterator[TcpProxy]:
    """A proxy to the test PostgreSQL, not listening yet (connects are refused)."""
    proxy = TcpProxy(*host_port(postgres_dsn, 5432))
    yield proxy
    proxy.close()


def dsn_on_port(postgres_dsn: str, port: int) -> str:
    host, old = host_port(postgres_dsn, 5432)
    return postgres_dsn.replace(f"{host}:{old}", f"127.0.0.1:{port}", 1)


class Broker:
    """A private Mosquitto (not started yet) behind a proxy (not listening yet), and a
    subscriber that collects what arrives on ``topic``."""

    def __init__(self, workdir: Path) -> None:
        self.mosquitto = Mosquitto(workdir)
        self.proxy = TcpProxy("127.0.0.1", self.mosquitto.port)
        self.topic = f"startup/{uuid.uuid4().hex[:8]}"
        self.received: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.proxy.port}"

    async def come_up(self) -> None:
        """Start the broker, subscribe, then let the conveyor through the proxy."""
        await asyncio.to_thread(self.mosquitto.start)
        subscribed = asyncio.Event()

        async def listen() -> None:
            async with aiomqtt.Client("127.0.0.1", self.mosquitto.port) as client:
                await client.subscribe(self.topic, qos=1)
                subscribed.set()
                async for message in client.messages:
                    assert isinstance(message.payload, bytes | bytearray)
                    self.received.append(json.loads(message.payload))

        self._task = asyncio.create_task(listen())
        async with asyncio.timeout(10):
            await subscribed.wait()
        await asyncio.to_thread(self.proxy.start)

    def ns(self) -> set[int]:
        return {m["n"] for m in self.received}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.proxy.close()
        self.mosquitto.kill()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    require_mosquitto()
    b = Broker(tmp_path)
    yield b
    await b.close()


# -- PostgreSQL down at start ------------------------------------------------------------


async def test_postgres_down_at_start_csv_goes_on_and_every_row_arrives_once(
    tmp_path: Path, postgres_dsn: str, pg_proxy: TcpProxy, db: asyncpg.Connection, table: str,
) -> None:
    out = tmp_path / "readings.csv"
    pg = PostgresConsumer(dsn_on_port(postgres_dsn, pg_proxy.port), table, create_table=True,
                          batch_age=0.05, connect_timeout=2.0, name="pg")
    conv = AioConveyor(Counter(), [CsvConsumer(out, ["n"], name="csv"), Consumer(pg, **FAST)],
                       loop_interval=0.05, metrics_port=0, stop_timeout=10.0)
    await asyncio.to_thread(conv.start)
    try:
        assert conv.running and not conv.ready
        assert await wait_until(lambda: conv.stats().consumer("csv").delivered >= 5), \
            conv.stats()
        assert state(conv, "pg") == "connecting"
        assert conv.stats().consumer("pg").open_errors >= 2  # retried, with backoff
        assert conv.stats().consumer("pg").queued >= 1
        assert await asyncio.to_thread(readyz, conv) == 503

        await asyncio.to_thread(pg_proxy.start)  # PostgreSQL reachable from now on
        assert await wait_until(lambda: conv.ready, timeout=20), conv.stats()
        assert state(conv, "pg") == "open"
        assert await asyncio.to_thread(readyz, conv) == 200
        n = conv.stats().produced
        assert await wait_until(lambda: conv.stats().consumer("pg").delivered > n, timeout=20)
    finally:
        await stop(conv)
    produced = conv.stats().produced
    assert csv_ns(out) == list(range(produced))  # every tick, in order, also while down
    rows = await db.fetch(f'SELECT event_time, payload FROM "{table}" ORDER BY event_time')
    assert sorted(json.loads(r["payload"])["n"] for r in rows) == list(range(produced))
    assert len({r["event_time"] for r in rows}) == len(rows) == produced  # exactly once


# -- MQTT down at start ------------------------------------------------------------------


async def test_mqtt_down_at_start_every_message_arrives_after_the_broker_comes_up(
    tmp_path: Path, broker: Broker,
) -> None:
    out = tmp_path / "readings.csv"
    mqtt = MqttConsumer(broker.url, topic=broker.topic, timeout=2.0, name="mqtt")
    conv = AioConveyor(Counter(), [CsvConsumer(out, ["n"], name="csv"), Consumer(mqtt, **FAST)],
                       loop_interval=0.05, stop_timeout=10.0, metrics_port=0)
    await asyncio.to_thread(conv.start)
    try:
        assert await wait_until(lambda: conv.stats().consumer("csv").delivered >= 5)
        assert conv.stats().consumer("mqtt").delivered == 0
        assert conv.stats().consumer("mqtt").state == "connecting"
        assert await asyncio.to_thread(readyz, conv) == 503
        await broker.come_up()
        assert await wait_until(lambda: conv.stats().consumer("mqtt").state == "open",
                                timeout=30)
        assert await asyncio.to_thread(readyz, conv) == 200
        n = conv.stats().produced
        assert await wait_until(lambda: broker.ns() >= set(range(n)), timeout=30), (
            conv.stats(), sorted(broker.ns()))
    finally:
        await stop(conv)
    produced = conv.stats().produced
    assert csv_ns(out) == list(range(produced))
    assert await wait_until(lambda: broker.ns() == set(range(produced)), timeout=10), (
        produced, sorted(broker.ns()))  # QoS 1: at least once, every tick's message


# -- both down at start ------------------------------------------------------------------


async def test_postgres_and_mqtt_down_at_start_both_deliver_once_up(
    tmp_path: Path, postgres_dsn: str, pg_proxy: TcpProxy, db: asyncpg.Connection, table: str,
    broker: Broker,
) -> None:
    out = tmp_path / "readings.csv"
    pg = PostgresConsumer(dsn_on_port(postgres_dsn, pg_proxy.port), table, create_table=True,
                          batch_age=0.05, connect_timeout=2.0, name="pg")
    mqtt = MqttConsumer(broker.url, topic=broker.topic, timeout=2.0, name="mqtt")
    conv = AioConveyor(
        Counter(),
        [CsvConsumer(out, ["n"], name="csv"), Consumer(pg, **FAST), Consumer(mqtt, **FAST)],
        loop_interval=0.05, metrics_port=0, stop_timeout=10.0,
    )
    await asyncio.to_thread(conv.start)
    try:
        assert await wait_until(lambda: conv.stats().consumer("csv").delivered >= 5)
        assert state(conv, "pg") == "connecting" and not conv.ready
        assert conv.stats().consumer("mqtt").delivered == 0
        assert await asyncio.to_thread(readyz, conv) == 503
        await asyncio.to_thread(pg_proxy.start)
        await broker.come_up()
        n = conv.stats().produced
        assert await wait_until(
            lambda: conv.ready and broker.ns() >= set(range(n))
            and conv.stats().consumer("pg").delivered >= n, timeout=30), conv.stats()
        assert await asyncio.to_thread(readyz, conv) == 200
    finally:
        await stop(conv)
    produced = conv.stats().produced
    assert csv_ns(out) == list(range(produced))
    rows = await db.fetch(f'SELECT event_time, payload FROM "{table}"')
    assert sorted(json.loads(r["payload"])["n"] for r in rows) == list(range(produced))
    assert len({r["event_time"] for r in rows}) == produced
    assert await wait_until(lambda: broker.ns() == set(range(produced)), timeout=10)


# -- startup="fail" ----------------------------------------------------------------------


class Tracked:
    """A consumer that records whether it was opened and closed."""

    def __init__(self) -> None:
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    def __call__(self, data: Any, event_time: datetime) -> None:
        pass


async def test_startup_fail_still_fails_the_start_and_closes_the_others(
    tmp_path: Path, postgres_dsn: str,
) -> None:
    dsn = dsn_on_port(postgres_dsn, free_port())  # nothing listens there
    tracked = Tracked()
    out = tmp_path / "readings.csv"
    conv = AioConveyor(Counter(), [
        Consumer(tracked, name="tracked"),
        CsvConsumer(out, ["n"], name="csv"),
        Consumer(PostgresConsumer(dsn, "t", connect_timeout=1.0, name="pg"), startup="fail"),
    ], loop_interval=0.05)
    with pytest.raises(StartupError, match="'pg' failed to open"):
        await asyncio.to_thread(conv.start)
    assert not conv.running and isinstance(conv.exception, StartupError)
    assert tracked.opened and tracked.closed
    # the writer thread ends once it has read its stop sentinel: soon, not necessarily yet
    assert wait_until_blocking(
        lambda: not any(t.name == "aioconveyor.csv[csv]" for t in threading.enumerate()))
    assert conv.stats().ticks == 0


# -- the backlog -------------------------------------------------------------------------


class Gated:
    """A consumer whose ``open()`` fails until :attr:`gate` is set; records what it gets."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.attempts = 0
        self.got: list[int] = []

    async def open(self) -> None:
        self.attempts += 1
        if not self.gate.is_set():
            raise ConnectionRefusedError("not yet")

    async def close(self) -> None:
        pass

    def __call__(self, data: dict[str, int], event_time: datetime) -> None:
        self.got.append(data["n"])


@pytest.mark.parametrize("spooled", [False, True], ids=["memory", "spool"])
async def test_the_backlog_queued_while_connecting_is_delivered_in_order(
    tmp_path: Path, spooled: bool,
) -> None:
    gated = Gated()
    spool = tmp_path / "gated.db" if spooled else None
    conv = AioConveyor(Counter(), [Consumer(gated, name="gated", spool=spool, **FAST)],
                       loop_interval=0.05)
    await asyncio.to_thread(conv.start)
    try:
        assert await wait_until(lambda: conv.stats().consumer("gated").queued >= 8)
        s = conv.stats().consumer("gated")
        assert s.state == "connecting" and s.delivered == 0 and gated.got == []
        if spooled:
            assert s.spooled >= 8
        assert gated.attempts >= 2
        gated.gate.set()
        n = conv.stats().produced
        assert await wait_until(lambda: len(gated.got) > n, timeout=20)
        assert conv.ready
    finally:
        await stop(conv)
    assert gated.got == list(range(conv.stats().produced))

