"""RedisStreamConsumer against the real Redis (``redis_url``), private servers (a password,
a server that never answers) and a TCP proxy that loses replies or cuts connections.

Every test writes to streams under a prefix of its own and deletes them afterwards (never
FLUSHALL: the server is shared). What arrived is read back with XRANGE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aioconveyor import AioConveyor, Batch, Consumer, Producer, Record, Rejected, SettingError
from aioconveyor.consumers import RedisStreamConsumer
from aioconveyor.consumers.redis import (
    RedisConnectionError,
    RedisRecordError,
    RedisStreamError,
    entry_id,
)
from aioconveyor.kit import Tick
from aioconveyor.testing import FakeClock, wait_until
from support.proxy import TcpProxy, proxied
from support.services import free_port, host_port, in_ci
from support.tls import TlsFiles, make_tls

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SECRET = "s3cr3t-Pa55"


# -- helpers ---------------------------------------------------------------------------


@dataclass
class Streams:
    """This test's own key prefix on the shared Redis, and a client to read it back."""

    prefix: str
    client: aioredis.Redis

    def key(self, name: str = "{producer}") -> str:
        return f"{self.prefix}:{name}"

    async def entries(self, stream: str) -> list[tuple[str, dict[str, str]]]:
        return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()})
                for i, f in await self.client.xrange(stream)]

    async def ids(self, stream: str) -> list[str]:
        return [i for i, _ in await self.entries(stream)]


@pytest.fixture
async def streams(redis_url: str) -> AsyncIterator[Streams]:
    client = aioredis.Redis.from_url(redis_url)
    prefix = f"aioconveyor-test:{uuid.uuid4().hex[:12]}"
    try:
        yield Streams(prefix, client)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def of(producer: str, data: Any, event_time: datetime) -> Record:
    """A record of ``producer`` (as a conveyor's lane hands it over)."""
    return Record(data, event_time, Tick(0, event_time, 0.0, 0.0, 0, producer))


def batch(*items: tuple[str, Any, datetime]) -> Batch:
    return Batch(of(p, d, t) for p, d, t in items)


class ReplyDropper(TcpProxy):
    """A proxy that forwards requests but, ``drop`` times, throws the server's reply away
    and cuts both connections: the command ran, its answer never came back. While ``hold``
    is set it keeps the replies back instead (a slow network), until :meth:`release`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.drop = 0
        self.dropped = 0
        self.hold = False
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []

    def release(self) -> None:
        """Send the replies held back to their connections (if still open)."""
        self.hold = False
        self._call(self._release())

    async def _release(self) -> None:
        for writer, data in self._held:
            if not writer.is_closing():
                writer.write(data)
        self._held.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))

        async def requests() -> None:
            try:
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                up_writer.transport.abort()

        async def replies() -> None:
            try:
                while data := await up_reader.read(65536):
                    if self.drop > 0:
                        self.drop -= 1
                        self.dropped += 1
                        break
                    if self.hold:
                        self._held.append((writer, data))
                        continue
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                writer.transport.abort()
                up_writer.transport.abort()

        await asyncio.gather(requests(), replies())
        self._writers.discard(writer)
        self._writers.discard(up_writer)


@contextlib.contextmanager
def started(proxy: TcpProxy) -> Iterator[TcpProxy]:
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
        proxy._loop.close()  # TcpProxy.close() leaves its loop open (a ResourceWarning later)


class PrivateRedis:
    """A redis-server of this test's own on a free port (a password, nothing saved)."""

    def __init__(self, tmp_path: Path, password: str | None = None,
                 tls: TlsFiles | None = None) -> None:
        self.port = free_port()
        conf = tmp_path / "redis.conf"
        lines = ["bind 127.0.0.1", 'save ""', "appendonly no", f"dir {tmp_path}"]
        if password is not None:
            quoted = password.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'requirepass "{quoted}"')
        if tls is None:
            lines.append(f"port {self.port}")
        else:  # TLS only
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {tls.certfile}",
                      f"tls-key-file {tls.keyfile}", f"tls-ca-cert-file {tls.cafile}",
                      "tls-auth-clients no"]
        conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    async def ready(self) -> None:
        async def up() -> bool:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return True
            return False

        for _ in range(200):  # bounded: about 10 s
            if await up():
                return
            assert self.process.poll() is None, "redis-server exited"
            await asyncio.sleep(0.05)
        raise AssertionError("the private redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.asynccontextmanager
async def private(tmp_path: Path, **options: Any) -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        reason = "redis-server is not installed"
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    server = PrivateRedis(tmp_path, **options)
    try:
        await server.ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    async with private(tmp_path, password="p@ss/w:rd?#" + SECRET) as server:
        yield server


async def run_until_delivered(conv: AioConveyor, items: int, consumer: str = "redis") -> None:
    """Run ``conv`` (on a FakeClock) until ``consumer`` has settled ``items`` items, then stop
    it with nothing in flight.

    Not ``max_ticks``: a FakeClock jumps to its next timer whenever the loop waits, also
    for a reply from Redis, so a stop deadline (and the call timeout: hence
    ``timeout=math.inf``) could pass during one real round trip. The producers return
    None once done; their later ticks offer nothing.
    """
    running = asyncio.create_task(conv.run())
    try:
        assert await wait_until(
            lambda: (s := conv.stats().consumer(consumer)).offered >= items
            and s.queued == s.in_flight == 0, timeout=30), conv.stats().consumer(consumer)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


# -- through a conveyor ----------------------------------------------------------------


async def test_every_tick_of_every_producer_is_one_entry_with_its_grid_time_id(
    streams: Streams, redis_url: str,
) -> None:
    produced: dict[str, list[datetime]] = {"inverter": [], "meter": []}

    def make(name: str, ticks: int) -> Any:
        def produce(event_time: datetime) -> dict[str, Any] | None:
            if len(produced[name]) == ticks:
                return None
            produced[name].append(event_time)
            return {"device": name, "n": len(produced[name]), "power_w": 1.5}
        return produce

    sink = RedisStreamConsumer(redis_url, stream=streams.key())
    conv = AioConveyor(producers=[
        Producer(make("inverter", 4), name="inverter", every=1.0),
        Producer(make("meter", 3), name="meter", every=2.0, offset=0.5),
    ], consumers=[Consumer(sink, timeout=math.inf)], clock=FakeClock(start=1_767_225_600.0))
    await run_until_delivered(conv, 7)
    for name, times in produced.items():
        entries = await streams.entries(streams.key(name))
        assert [i for i, _ in entries] == [entry_id(t) for t in times]
        assert [f for _, f in entries] == [
            {"device": name, "n": str(n), "power_w": "1.5", "event_time": t.isoformat()}
            for n, t in enumerate(times, 1)]
    assert len(produced["inverter"]) == 4 and len(produced["meter"]) == 3
    stats = conv.stats().consumer("redis")
    assert (stats.offered, stats.delivered, stats.rejected, stats.errors) == (7, 7, 0, 0)
    assert (sink.written, sink.duplicates, sink.rejected) == (7, 0, 0)


async def test_a_bad_record_in_a_lane_batch_is_the_only_one_rejected(
    streams: Streams, redis_url: str,
) -> None:
    times: list[datetime] = []

    def produce(event_time: datetime) -> dict[str, Any] | None:
        if len(times) == 6:
            return None
        times.append(event_time)
        return {"n": len(times), "bad": object()} if len(times) == 2 else {"n": len(times)}

    sink = RedisStreamConsumer(redis_url, stream=streams.key())
    conv = AioConveyor(producers=[Producer(produce, name="pv", every=1.0)],
                       consumers=[Consumer(sink, batch_size=3, batch_age=60, timeout=math.inf,
                                           copy=False)],
                       clock=FakeClock(start=1_767_225_600.0))
    await run_until_delivered(conv, 6)
    assert await streams.ids(streams.key("pv")) == [entry_id(t) for i, t in enumerate(times)
                                                    if i != 1]
    stats = conv.stats().consumer("redis")
    assert (stats.offered, stats.delivered, stats.rejected, stats.retries) == (6, 5, 1, 0)
    assert "cannot encode the record of" in (stats.last_error or "")


async def test_a_lost_reply_is_retried_by_the_lane_and_the_tick_is_stored_once(
    streams: Streams, redis_url: str,
) -> None:
    with started(ReplyDropper(*host_port(redis_url, 6379))) as proxy:
        assert isinstance(proxy, ReplyDropper)
        sink = RedisStreamConsumer(proxied(redis_url, proxy.port), stream=streams.key(),
                                   max_backoff=0.5)
        times: list[datetime] = []

        def produce(event_time: datetime) -> dict[str, int] | None:
            if len(times) == 5:
                return None
            times.append(event_time)
            if len(times) == 3:
                proxy.drop = 1  # the reply to this tick's XADD is lost
            return {"n": len(times)}

        conv = AioConveyor(producers=[Producer(produce, name="pv", every=10.0)],
                           consumers=[Consumer(sink, timeout=math.inf)],
                           clock=FakeClock(start=1_767_225_600.0))
        await run_until_delivered(conv, 5)
    assert proxy.dropped == 1
    assert await streams.ids(streams.key("pv")) == [entry_id(t) for t in times]
    stats = conv.stats().consumer("redis")
    assert (stats.offered, stats.delivered, stats.failed, stats.rejected) == (5, 5, 0, 0)
    assert stats.errors == stats.retries == 1
    assert (sink.written, sink.duplicates) == (4, 1)  # the retry found its entry stored
    assert "RedisConnectionError" in (stats.last_error or "")


async def test_a_resent_batch_stores_each_record_once(streams: Streams, redis_url: str) -> None:
    records = batch(*[("pv", {"n": i}, at(i)) for i in range(5)])
    async with RedisStreamConsumer(redis_url, stream=streams.key()) as sink:
        await sink(records, T0)
        await sink(records, T0)  # a retry of a call whose replies never came
        await sink(Batch(records[3:]), T0)
    assert await streams.ids(streams.key("pv")) == [entry_id(at(i)) for i in range(5)]
    assert (sink.written, sink.duplicates, sink.rejected) == (5, 7, 0)


async def test_a_batch_whose_replies_were_lost_is_stored_once_on_the_retry(
    streams: Streams, redis_url: str,
) -> None:
    records = batch(*[("pv", {"n": i}, at(i)) for i in range(50)])
    with started(ReplyDropper(*host_port(redis_url, 6379))) as proxy:
        assert isinstance(proxy, ReplyDropper)
        async with RedisStreamConsumer(proxied(redis_url, proxy.port),
                                       stream=streams.key()) as sink:
            proxy.drop = 1
            with pytest.raises(RedisConnectionError, match="write failed"):
                await sink(records, T0)
            stored = len(await streams.ids(streams.key("pv")))
            assert stored >= 1  # the request reached Redis, the answer did not come back
            await sink(records, T0)  # the client reconnects
    assert await streams.ids(streams.key("pv")) == [entry_id(at(i)) for i in range(50)]
    assert sink.duplicates == stored and sink.written == 50 - stored


async def test_a_call_cancelled_while_waiting_for_replies_leaves_no_stale_reply_behind(
    streams: Streams, redis_url: str,
) -> None:
    """The lane's timeout cancels a call whose replies are late; they arrive afterwards.
    The next calls must read their own replies, not those (the connection is dropped)."""
    first = batch(*[("pv", {"n": i}, at(i)) for i in range(20)])
    second = batch(*[("pv", {"n": i}, at(i)) for i in range(20, 40)])
    with started(ReplyDropper(*host_port(redis_url, 6379))) as proxy:
        assert isinstance(proxy, ReplyDropper)
        async with RedisStreamConsumer(proxied(redis_url, proxy.port),
                                       stream=streams.key()) as sink:
            proxy.hold = True
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await sink(first, T0)
            assert await wait_until(lambda: len(proxy._held) > 0, timeout=10)
            await asyncio.to_thread(proxy.release)
            await sink(second, T0)
            await sink(first, T0)  # the retry of the cancelled call: found stored
    assert await streams.ids(streams.key("pv")) == [entry_id(at(i)) for i in range(40)]
    assert (sink.written, sink.duplicates, sink.rejected) == (20, 20, 0)


async def test_cutting_the_connection_mid_stream_again_and_again_loses_and_doubles_nothing(
    streams: Streams, redis_url: str,
) -> None:
    """The real clock, ticks every 20 ms, the proxy cut five times while they flow: every
    tick is in the stream exactly once, in order, and the outages show in the stats."""
    with started(TcpProxy(*host_port(redis_url, 6379))) as proxy:
        sink = RedisStreamConsumer(proxied(redis_url, proxy.port), stream=streams.key(),
                                   max_backoff=0.1, timeout=2.0)
        times: list[datetime] = []
        stop = False

        def produce(event_time: datetime) -> dict[str, int] | None:
            if stop:
                return None
            times.append(event_time)
            return {"n": len(times)}

        conv = AioConveyor(producers=[Producer(produce, name="pv", every=0.02)],
                           consumers=[Consumer(sink, batch_size=5, batch_age=0.05)],
                           stop_timeout=30)
        async with conv:
            for cut in range(5):
                done = sink.written
                assert await wait_until(lambda d=done: sink.written >= d + 5, timeout=20)
                proxy.cut()
                errors = conv.stats().consumer("redis").errors
                assert await wait_until(
                    lambda e=errors: conv.stats().consumer("redis").errors > e, timeout=20), cut
                proxy.restore()
            stop = True
            assert await wait_until(
                lambda: (s := conv.stats().consumer("redis")).delivered == len(times)
                and s.queued == s.in_flight == 0, timeout=30)
    expected = [entry_id(t) for t in times]
    assert await streams.ids(streams.key("pv")) == expected
    stats = conv.stats().consumer("redis")
    assert stats.dropped == stats.failed == stats.rejected == 0
    assert stats.errors >= 5 and proxy.connections >= 6
    assert sink.written == len(expected)


async def test_maxlen_trims_each_stream_to_about_that_many_entries(
    streams: Streams, redis_url: str,
) -> None:
    async with RedisStreamConsumer(redis_url, stream=streams.key(), maxlen=50) as trimmed, \
            RedisStreamConsumer(redis_url, stream=streams.key("all-{producer}")) as full:
        for start in range(0, 1000, 100):
            records = batch(*[("pv", {"n": i}, at(i)) for i in range(start, start + 100)])
            await trimmed(records, T0)
            await full(records, T0)
    kept = await streams.ids(streams.key("pv"))
    assert 50 <= len(kept) < 1000  # "~": whole nodes are trimmed, never below maxlen
    assert kept[-50:] == [entry_id(at(i)) for i in range(950, 1000)]
    assert len(await streams.ids(streams.key("all-pv"))) == 1000


# -- IDs, fields -----------------------------------------------------------------------


def test_entry_ids_are_milliseconds_and_the_microseconds_within_them() -> None:
    assert entry_id(datetime(2026, 1, 1, tzinfo=UTC)) == "1767225600000-0"
    assert entry_id(datetime(2026, 1, 1, 0, 0, 0, 250, tzinfo=UTC)) == "1767225600000-250"
    assert entry_id(datetime(2026, 1, 1, 0, 0, 0, 1999, tzinfo=UTC)) == "1767225600001-999"
    assert entry_id(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == "0-1"
    plus_one = timezone(timedelta(hours=1))
    assert entry_id(datetime(2026, 1, 1, 1, tzinfo=plus_one)) == "1767225600000-0"


async def test_ticks_within_one_millisecond_get_distinct_ordered_ids(
    streams: Streams, redis_url: str,
) -> None:
    t = [T0 + timedelta(microseconds=us) for us in (0, 250, 500, 999, 1000)]
    async with RedisStreamConsumer(redis_url, stream=streams.key()) as sink:
        await sink(batch(*[("fast", {"n": i}, when) for i, when in enumerate(t)]), T0)
    ms = int(T0.timestamp() * 1000)
    assert await streams.ids(streams.key("fast")) == [
        f"{ms}-0", f"{ms}-250", f"{ms}-500", f"{ms}-999", f"{ms + 1}-0"]


@dataclass
class Reading:
    power_w: float
    ok: bool


async def test_fields_flat_json_or_from_an_encoder(streams: Streams, redis_url: str) -> None:
    record = {"s": "text", "b": b"\x00raw", "i": 7, "f": 0.1, "nan": math.nan, "t": True,
              "none": None, "d": Decimal("1.50"), "when": T0, "list": [1, "a"],
              "nested": {"x": 1}}
    iso = T0.isoformat()
    async with RedisStreamConsumer(redis_url, stream=streams.key("flat")) as flat:
        await flat(record, T0)
        await flat(Reading(230.5, False), at(1))
        await flat(42, at(2))
        await flat({"event_time": "mine"}, at(3))
    raw = await streams.client.xrange(streams.key("flat"))
    assert raw[0][1] == {
        b"s": b"text", b"b": b"\x00raw", b"i": b"7", b"f": b"0.1", b"nan": b"nan", b"t": b"true",
        b"none": b"null", b"d": b"1.5", b"when": iso.encode(), b"list": b'[1,"a"]',
        b"nested": b'{"x":1}', b"event_time": iso.encode()}
    assert [f for _, f in (await streams.entries(streams.key("flat")))[1:]] == [
        {"power_w": "230.5", "ok": "false", "event_time": at(1).isoformat()},
        {"data": "42", "event_time": at(2).isoformat()},
        {"event_time": "mine"}]

    async with RedisStreamConsumer(redis_url, stream=streams.key("json"), layout="json",
                                   event_time_field="ts") as as_json:
        await as_json({"v": [1.5, None]}, T0)
    assert await streams.entries(streams.key("json")) == [
        (entry_id(T0), {"data": '{"v":[1.5,null]}', "ts": iso})]

    def encoder(data: Any, event_time: datetime) -> dict[str, Any]:
        return {"watts": data["v"] * 1000, "at": int(event_time.timestamp())}

    async with RedisStreamConsumer(redis_url, stream=streams.key("enc"),
                                   encoder=encoder) as encoded:
        await encoded({"v": 1.5}, T0)
    assert await streams.entries(streams.key("enc")) == [
        (entry_id(T0), {"watts": "1500.0", "at": str(int(T0.timestamp()))})]


# -- what cannot be stored: counted, reported, the rest written --------------------------


async def test_an_older_tick_is_rejected_as_out_of_order_not_silently_dropped(
    streams: Streams, redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aioconveyor.consumers.redis")
    async with RedisStreamConsumer(redis_url, stream=streams.key()) as sink:
        await sink(batch(("pv", {"n": 2}, at(2))), T0)
        with pytest.raises(RedisRecordError) as info:
            await sink(batch(("pv", {"n": 1}, at(1)), ("pv", {"n": 3}, at(3))), T0)
    key = streams.key("pv")
    assert str(info.value) == (
        f"the record of {at(1).isoformat()} (entry {entry_id(at(1))}) is older than the "
        f"newest entry of stream {key!r} ({entry_id(at(3))}) and was not written: Redis only "
        "appends (a clock stepped back, or another writer on this stream?)")
    assert isinstance(info.value, Rejected)
    assert await streams.ids(key) == [entry_id(at(2)), entry_id(at(3))]
    assert (sink.written, sink.out_of_order, sink.rejected, sink.duplicates) == (2, 1, 1, 0)
    assert "1 record(s) not written" in caplog.text


async def test_a_different_record_with_a_stored_id_is_a_conflict(
    streams: Streams, redis_url: str,
) -> None:
    async with RedisStreamConsumer(redis_url, stream=streams.key("shared")) as sink:
        await sink(batch(("a", {"n": 1}, T0)), T0)
        with pytest.raises(RedisRecordError,
                           match=r"already holds entry .* with other fields; the record of "
                                 r".* was not written \(two producers writing one stream"):
            await sink(batch(("b", {"n": 2}, T0)), T0)
        await sink(batch(("a", {"n": 1}, T0)), T0)  # the same one again: a duplicate
    assert len(await streams.ids(streams.key("shared"))) == 1
    assert (sink.conflicts, sink.duplicates, sink.rejected) == (1, 1, 1)


async def test_bad_records_are_rejected_and_the_good_ones_of_their_batch_are_written(
    streams: Streams, redis_url: str,
) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    records = Batch([
        of("pv", {"n": 1}, at(1)),
        of("pv", {"bad": object()}, at(2)),
        of("pv", {1: "int key"}, at(3)),
        of("pv", {"n": 4}, epoch),
        Record({"n": 5}, at(5)),  # no producer to name its stream
        of("pv", {"n": 6}, datetime(2026, 1, 1)),  # naive
        of("pv", {"n": 7}, at(7)),
    ])
    messages: list[str] = []
    async with RedisStreamConsumer(redis_url, stream=streams.key(),
                                   event_time_field=None) as sink:
        with pytest.raises(RedisRecordError) as info:
            await sink(records, T0)
        for record in records[1:-1]:  # one at a time: each one's own message
            with pytest.raises(RedisRecordError) as one:
                await sink(Batch([record]), T0)
            messages.append(str(one.value))
        with pytest.raises(RedisRecordError, match="has no field to write"):
            await sink(batch(("pv", {}, at(8))), T0)
    assert await streams.ids(streams.key("pv")) == [entry_id(at(1)), entry_id(at(7))]
    assert info.value.count == 5 and sink.rejected == 5 + 5 + 1
    assert str(info.value) == f"5 records could not be stored; the first: {messages[0]}"
    assert messages == [
        f"cannot encode the record of {at(2).isoformat()}: TypeError: cannot encode object "
        "as JSON",
        f"cannot encode the record of {at(3).isoformat()}: TypeError: field names must be str "
        "or bytes, got 1 (int)",
        "the record of 1970-01-01T00:00:00+00:00 is not after the Unix epoch; a Redis stream "
        "entry ID (milliseconds since the epoch) must be greater than 0-0",
        f"stream {streams.key()!r} needs the record's producer, and the record of "
        f"{at(5).isoformat()} has none (it did not come from a conveyor's producer)",
        "the record of 2026-01-01T00:00:00 has a naive event_time; an entry ID needs a "
        "timezone-aware one",
    ]


async def test_an_encoder_that_fails_or_returns_junk_is_a_record_error(
    streams: Streams, redis_url: str,
) -> None:
    def broken(data: Any, event_time: datetime) -> Any:
        if data == 1:
            raise KeyError("power")
        return ["not", "a", "mapping"]

    async with RedisStreamConsumer(redis_url, stream=streams.key(), encoder=broken) as sink:
        with pytest.raises(RedisRecordError,
                           match=r"the encoder failed on the record of .*: KeyError: 'power'"):
            await sink(batch(("pv", 1, at(1))), T0)
        with pytest.raises(RedisRecordError, match="must return a mapping of field to value, "
                                                   "got list"):
            await sink(batch(("pv", 2, at(2))), T0)
    assert sink.rejected == 2


async def test_a_redis_error_on_some_entries_fails_the_call_for_a_retry(
    streams: Streams, redis_url: str,
) -> None:
    await streams.client.set(streams.key("not-a-stream"), "x")
    async with RedisStreamConsumer(redis_url, stream=streams.key()) as sink:
        with pytest.raises(RedisStreamError, match="refused 1 of 2 entries; the first, "
                                                   r".* WRONGTYPE") as info:
            await sink(batch(("ok", {"n": 1}, at(1)), ("not-a-stream", {"n": 2}, at(2))), T0)
        assert not isinstance(info.value, Rejected)  # the lane retries it
        await streams.client.delete(streams.key("not-a-stream"))
        await sink(batch(("ok", {"n": 1}, at(1)), ("not-a-stream", {"n": 2}, at(2))), T0)
    assert (sink.written, sink.duplicates) == (2, 1)


# -- connections, secrets --------------------------------------------------------------


async def test_an_unreachable_server_fails_open_with_a_connection_error() -> None:
    sink = RedisStreamConsumer(f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", timeout=2)
    with pytest.raises(RedisConnectionError, match="cannot connect") as info:
        await sink.open()
    assert SECRET not in str(info.value) and not info.value.refused
    with pytest.raises(RuntimeError, match=r"call open\(\) first"):
        await sink({"n": 1}, T0)


async def test_a_server_that_never_answers_is_timed_out_by_the_client() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = RedisStreamConsumer(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        with pytest.raises(RedisConnectionError, match="TimeoutError"):
            async with asyncio.timeout(10):
                await sink.open()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_password_may_hold_any_character_and_never_shows(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "p@ss/w:rd?#" + SECRET
    url = f"redis://default:{password}@127.0.0.1:{private_redis.port}/0"
    sink = RedisStreamConsumer(url, stream="s:{producer}")
    assert sink.url == f"redis://default:***@127.0.0.1:{private_redis.port}/0"
    async with sink:
        await sink(batch(("pv", {"n": 1}, T0)), T0)
        assert SECRET not in repr(sink)
    ticks: list[datetime] = []

    def meter(event_time: datetime) -> dict[str, int] | None:
        if len(ticks) == 2:
            return None
        ticks.append(event_time)
        return {"n": len(ticks)}

    conv = AioConveyor(meter, [Consumer(RedisStreamConsumer(
        f"redis://127.0.0.1:{private_redis.port}/0", password=password, name="by-arg"),
        timeout=math.inf)], loop_interval=1.0, clock=FakeClock())
    await run_until_delivered(conv, 2, "by-arg")
    assert conv.stats().consumer("by-arg").delivered == 2

    wrong = RedisStreamConsumer(f"redis://:wrong-{SECRET}@127.0.0.1:{private_redis.port}/0")
    with pytest.raises(RedisConnectionError, match="refused the login") as info:
        await wrong.open()
    assert info.value.refused
    nopass = RedisStreamConsumer(f"redis://127.0.0.1:{private_redis.port}/0")
    with pytest.raises(RedisConnectionError, match="refused the login"):
        await nopass.open()
    for text in (str(info.value), repr(wrong), caplog.text):
        assert SECRET not in text


async def test_rediss_verifies_the_server_certificate(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    async with private(tmp_path, tls=tls) as server:
        url = f"rediss://127.0.0.1:{server.port}/0"
        trusting = RedisStreamConsumer(url, stream="tls:{producer}",
                                       client_options={"ssl_ca_certs": str(tls.cafile)})
        async with trusting:
            await trusting(batch(("pv", {"n": 1}, T0)), T0)
        assert trusting.written == 1
        untrusting = RedisStreamConsumer(url, timeout=5)  # the system's CAs only
        with pytest.raises(RedisConnectionError, match=r"cannot connect: .*CERTIFICATE_VERIFY_FAILED"):
            await untrusting.open()
        plain = RedisStreamConsumer(f"redis://127.0.0.1:{server.port}/0", timeout=2)
        with pytest.raises(RedisConnectionError):  # a TLS port does not speak plain RESP
            await plain.open()


M = "Zq9xK"
ODD_PASSWORDS = [f"{M}#{M}", f"{M}/{M}", f"{M}?{M}", f"{M}@{M}", f"{M}:{M}", f"{M} {M}",
                 f"{M}%{M}", f"{M}'{M}", f"{M}é€😀{M}", f"{M}/{M}@{M}#{M}?{M}", f"{M}?x=1@{M}",
                 f"{M}:{M}@{M}:{M}", f"{M}[{M}]{M}"]


@pytest.mark.parametrize("password", ODD_PASSWORDS)
async def test_any_password_is_read_from_the_url_and_never_shown(
    password: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    closed = free_port()
    sink = RedisStreamConsumer(f"redis://alice:{password}@127.0.0.1:{closed}/3", timeout=1)
    assert sink.url == f"redis://alice:***@127.0.0.1:{closed}/3"
    assert (sink._username, sink._password, sink._bare_url) == (
        "alice", password, f"redis://127.0.0.1:{closed}/3")
    with pytest.raises(RedisConnectionError) as info:
        await sink.open()
    for text in (repr(sink), str(info.value), caplog.text):
        assert M not in text


def test_the_url_is_shown_masked_and_tls_comes_with_rediss() -> None:
    assert RedisStreamConsumer().url == "redis://127.0.0.1:6379/0"
    c = RedisStreamConsumer(f"rediss://alice:{SECRET}@cache.example:6380/2")
    assert c.url == "rediss://alice:***@cache.example:6380/2"
    assert repr(c) == ("<RedisStreamConsumer 'redis' rediss://alice:***@cache.example:6380/2 "
                       "stream='readings:{producer}' new>")
    assert RedisStreamConsumer(f"redis://h/0?password={SECRET}").url == "redis://h/0?password=***"
    assert RedisStreamConsumer(timeout=3).consumer_defaults == {
        "retries": 1_000_000, "backoff": 0.2, "max_backoff": 5.0, "timeout": 8.0}


@pytest.mark.parametrize(("kwargs", "name", "message"), [
    ({"url": 6379}, "url", "url must be a str, got int"),
    ({"url": f"http://u:{SECRET}@h"}, "url", "url must look like redis://host:6379/0, "
     "rediss://host or unix:///path: Redis URL must specify one of the following schemes "
     "(redis://, rediss://, unix://); got 'http://u:***@h'"),
    ({"url": f"redis://:{SECRET}@h/cache"}, "url", "url must name the database by its number "
     "(redis://host:6379/0), got 'redis://:***@h/cache'"),
    ({"url": f"redis://:{SECRET}@h", "password": "x"}, "password",
     "password cannot be combined with a password in url (give it once)"),
    ({"password": b"x"}, "password", "password must be a str or None, got bytes"),
    ({"stream": ""}, "stream", "stream must be a non-empty str, got ''"),
    ({"stream": b"s"}, "stream", "stream must be a non-empty str, got b's'"),
    ({"stream": "r:{device}"}, "stream", "stream may only use the field {producer} (write a "
     "literal brace as {{ or }}), got 'r:{device}'"),
    ({"stream": "r:{producer!r}"}, "stream", "may only use the field {producer}"),
    ({"stream": "r:{producer"}, "stream", "stream is not a valid template"),
    ({"maxlen": 0}, "maxlen", "maxlen must be an int >= 1, got 0"),
    ({"maxlen": 10.5}, "maxlen", "maxlen must be an int >= 1, got 10.5 (float)"),
    ({"layout": "csv"}, "layout", "layout must be one of 'flat', 'json', got 'csv'"),
    ({"event_time_field": ""}, "event_time_field",
     "event_time_field must be a non-empty str, got ''"),
    ({"encoder": "json"}, "encoder", "encoder must be callable, got 'json' (str)"),
    ({"encoder": dict, "layout": "json"}, "layout", "layout cannot be combined with encoder"),
    ({"encoder": dict, "event_time_field": None}, "event_time_field",
     "event_time_field cannot be combined with encoder (the encoder decides the fields)"),
    ({"timeout": 0}, "timeout", "timeout must be a finite number > 0, got 0"),
    ({"name": ""}, "name", "name must be a non-empty str, got ''"),
    ({"retries": -1}, "retries", "retries must be an int >= 0, got -1"),
    ({"max_backoff": math.inf}, "max_backoff", "max_backoff must be a finite number > 0"),
    ({"client_options": "ssl=1"}, "client_options",
     "client_options must be a mapping or None, got str"),
    ({"client_options": {5: 1}}, "client_options", "keys must be str, got 5"),
    ({"client_options": {"decode_responses": True, "retry": None}}, "client_options",
     "client_options must not set ['decode_responses', 'retry']: use RedisStreamConsumer's "
     "own arguments"),
    ({"logger": "redis"}, "logger", "logger must be a logging.Logger or None, got 'redis'"),
])
def test_bad_settings_fail_at_construction_naming_the_argument(
    kwargs: dict[str, Any], name: str, message: str,
) -> None:
    with pytest.raises(SettingError) as info:
        RedisStreamConsumer(**kwargs)
    assert info.value.name == name
    assert message in str(info.value)
    assert SECRET not in str(info.value)


def test_without_redis_the_import_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import aioconveyor, aioconveyor.consumers\n"
        "try:\n"
        "    from aioconveyor.consumers import RedisStreamConsumer\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without redis')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert 'pip install "aioconveyor[redis]"' in result.stdout


def test_importing_aioconveyor_does_not_import_redis(tmp_path: Path) -> None:
    code = ("import sys, aioconveyor, aioconveyor.consumers\n"
            "assert 'redis' not in sys.modules, 'redis imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_toml_type_redis_builds_the_consumer(tmp_path: Path) -> None:
    from aioconveyor._config import load_config

    path = tmp_path / "conveyor.toml"
    path.write_text(
        '[conveyor]\ninterval = 1\n\n[producer]\nfunction = "aioconveyor._demo:InverterSimulator"\n\n'
        f'[[consumers]]\ntype = "redis"\nurl = "redis://:{SECRET}@127.0.0.1:6379/0"\n'
        'stream = "pv:{producer}"\nmaxlen = 1000\nlayout = "json"\nretries = 3\n')
    loaded = load_config(path)
    sink = loaded.specs["redis"].fn
    assert isinstance(sink, RedisStreamConsumer)
    assert (sink.stream, sink.maxlen, sink.layout) == ("pv:{producer}", 1000, "json")
    assert sink.consumer_defaults["retries"] == 3
    assert loaded.consumers and all(SECRET not in line for line in loaded.consumers)
