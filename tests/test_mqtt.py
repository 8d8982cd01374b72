"""MqttConsumer against real Mosquitto brokers: the shared one (``mqtt_url``) and private
ones the tests stop, restart and freeze. What arrived is checked with a real subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
import pytest

import aioconveyor
from aioconveyor import (
    AioConveyor,
    Batch,
    Consumer,
    ConsumerStats,
    Record,
    SettingError,
    StartupError,
)
from aioconveyor.consumers import MqttConsumer
from aioconveyor.consumers.mqtt import (
    HaDiscovery,
    HaSensor,
    MqttConnectionError,
    MqttRecordError,
)
from aioconveyor.kit import Tick
from aioconveyor.testing import wait_until
from support.mosquitto import Mosquitto, require_mosquitto
from support.proxy import TcpProxy
from support.services import free_port, host_port

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SECRET = "s3cr3t-Pa55"


# -- helpers ---------------------------------------------------------------------------


def client_for(url: str, **kwargs: Any) -> aiomqtt.Client:
    host, port = host_port(url, 1883)
    return aiomqtt.Client(host, port, **kwargs)


class Subscriber:
    """A real client collecting everything published under ``topic_filter`` (QoS 1).

    ``persistent=True`` keeps one client id with ``clean_session=False`` and reconnects
    whenever the broker goes away, so the broker keeps (and later delivers) what it
    accepted for us meanwhile.
    """

    def __init__(self, url: str, topic_filter: str, *, persistent: bool = False) -> None:
        self.url = url
        self.topic_filter = topic_filter
        self.persistent = persistent
        self.client_id = f"aioconveyor-test-sub-{uuid.uuid4().hex[:12]}"
        self.messages: list[aiomqtt.Message] = []
        self.connects = 0
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run(), name="test-subscriber")
        done, _ = await asyncio.wait({self._task, asyncio.ensure_future(self._subscribed.wait())},
                                     timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            self._task.result()
        assert self._subscribed.is_set(), "subscriber did not subscribe within 10 s"
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                async with client_for(self.url, identifier=self.client_id,
                                      clean_session=not self.persistent) as client:
                    self.connects += 1
                    await client.subscribe(self.topic_filter, qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        self.messages.append(message)
            except aiomqtt.MqttError:
                if not self.persistent:
                    raise
                await asyncio.sleep(0.05)  # the broker is down: try again shortly

    def __len__(self) -> int:
        return len(self.messages)

    def json(self) -> list[Any]:
        return [json.loads(payload(m)) for m in self.messages]

    def event_times(self) -> set[str]:
        return {item["event_time"] for item in self.json()}

    async def wait_for(self, predicate: Callable[[], bool], what: str,
                       timeout: float = 10.0) -> None:
        assert await wait_until(predicate, timeout=timeout), (
            f"timed out waiting for {what}; got {len(self.messages)} message(s): "
            f"{[(str(m.topic), payload(m)) for m in self.messages[-10:]]}"
        )


def payload(message: aiomqtt.Message) -> bytes:
    assert isinstance(message.payload, bytes)
    return message.payload


async def retained(url: str, topic_filter: str, sentinel: str) -> dict[str, bytes]:
    """The retained messages under ``topic_filter`` right now (topic -> payload).

    Deterministic, no waiting: the broker sends the retained messages of a subscription
    before it routes anything we publish afterwards, so once our own (non-retained)
    ``sentinel`` message comes back we have seen them all.
    """
    found: dict[str, bytes] = {}
    async with client_for(url) as client:
        await client.subscribe(topic_filter, qos=1)
        await client.subscribe(sentinel, qos=1)
        await client.publish(sentinel, b"done", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                if str(message.topic) == sentinel and not message.retain:
                    return found
                if message.retain:
                    found[str(message.topic)] = payload(message)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def tcp_proxy(host: str, port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(host, port).start()
    try:
        yield proxy
    finally:
        proxy.close()
        proxy._loop.close()  # TcpProxy.close() leaves its loop open (a ResourceWarning later)


def lane(conv: AioConveyor, name: str = "mqtt") -> ConsumerStats:
    return conv.stats().consumer(name)


@dataclass
class Recorder:
    """A producer that remembers what it returned (it runs on the conveyor's thread)."""

    make: Callable[[int, datetime], Any]
    produced: list[tuple[datetime, Any]]
    stopped: bool = False

    def __call__(self, event_time: datetime) -> Any:
        if self.stopped:
            return None
        data = self.make(len(self.produced), event_time)
        self.produced.append((event_time, data))
        return data


def recorder(make: Callable[[int, datetime], Any]) -> Recorder:
    return Recorder(make, [])


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
async def prefix(mqtt_url: str) -> AsyncIterator[str]:
    """A topic prefix of this test's own on the shared broker; its retained messages are
    cleared afterwards."""
    base = f"aioconveyor-test/{uuid.uuid4().hex[:12]}"
    yield base
    leftovers = await retained(mqtt_url, f"{base}/#", f"{base}/.sentinel")
    async with client_for(mqtt_url) as client:
        for topic in leftovers:
            await client.publish(topic, b"", qos=1, retain=True)
    assert await retained(mqtt_url, f"{base}/#", f"{base}/.sentinel") == {}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private broker (with persistence) this test may stop, restart or freeze."""
    require_mosquitto()
    with Mosquitto(tmp_path, persistence=True) as private:
        yield private


# -- what arrives ----------------------------------------------------------------------


async def test_messages_match_what_was_produced(mqtt_url: str, prefix: str) -> None:
    produce = recorder(lambda n, t: {"device": f"dev{n % 2}", "n": n, "price": Decimal("1.5"),
                                     "seen": T0})
    consumer = MqttConsumer(mqtt_url, topic=f"{prefix}/{{device}}/state")
    async with Subscriber(mqtt_url, f"{prefix}/+/state") as sub:
        conv = AioConveyor(produce, [consumer], loop_interval=0.05, max_ticks=6)
        async with conv:
            assert await asyncio.to_thread(conv.join, 10)
        await sub.wait_for(lambda: len(sub) >= 6, "6 messages")
    assert lane(conv).delivered == 6 and lane(conv).errors == 0
    expected = [(f"{prefix}/{data['device']}/state",
                 {"device": data["device"], "n": data["n"], "price": 1.5,
                  "seen": "2024-05-01T12:00:00+00:00", "event_time": t.isoformat()})
                for t, data in produce.produced]
    got = [(str(m.topic), json.loads(payload(m))) for m in sub.messages]
    assert got == expected
    assert not any(m.retain for m in sub.messages)


async def test_batches_publish_every_record_in_order(mqtt_url: str, prefix: str) -> None:
    produce = recorder(lambda n, t: {"n": n})
    consumer = Consumer(MqttConsumer(mqtt_url, topic=f"{prefix}/batch"), batch_size=4,
                        batch_age=0.15)
    async with Subscriber(mqtt_url, f"{prefix}/batch") as sub:
        conv = AioConveyor(produce, [consumer], loop_interval=0.05, max_ticks=10)
        async with conv:
            assert await asyncio.to_thread(conv.join, 10)
        await sub.wait_for(lambda: len(sub) >= 10, "10 messages")
    assert [item["n"] for item in sub.json()] == list(range(10))
    assert [item["event_time"] for item in sub.json()] == [
        t.isoformat() for t, _ in produce.produced
    ]


async def test_raw_bytes_and_str_pass_through(mqtt_url: str, prefix: str) -> None:
    values: list[Any] = [b"\x00\xffraw", "text \u00e9", bytearray(b"ba"), b""]
    async with Subscriber(mqtt_url, f"{prefix}/raw") as sub:
        async with MqttConsumer(mqtt_url, topic=f"{prefix}/raw") as consumer:
            for i, value in enumerate(values):
                await consumer(value, T0.replace(second=i))
        await sub.wait_for(lambda: len(sub) == 4, "4 messages")
    assert [payload(m) for m in sub.messages] == [b"\x00\xffraw", "text \u00e9".encode(),
                                                  b"ba", b""]


async def test_user_encoder_decides_the_payload(mqtt_url: str, prefix: str) -> None:
    def encode(data: Any, event_time: datetime) -> str:
        return f"{data['v']}@{event_time:%H:%M:%S}"

    async with Subscriber(mqtt_url, f"{prefix}/enc") as sub:
        async with MqttConsumer(mqtt_url, topic=f"{prefix}/enc", encoder=encode) as consumer:
            await consumer({"v": 42}, T0)
            await consumer({"v": 7}, T0.replace(second=5))
        await sub.wait_for(lambda: len(sub) == 2, "2 messages")
    assert [payload(m) for m in sub.messages] == [b"42@12:00:00", b"7@12:00:05"]


async def test_event_time_key_can_be_renamed_or_left_out(mqtt_url: str, prefix: str) -> None:
    async with Subscriber(mqtt_url, f"{prefix}/+") as sub:
        async with (MqttConsumer(mqtt_url, topic=f"{prefix}/a", event_time_key="ts") as a,
                    MqttConsumer(mqtt_url, topic=f"{prefix}/b", event_time_key=None) as b):
            await a({"v": 1}, T0)
            await a({"v": 2, "ts": "mine"}, T0)  # a field of the record wins
            await b({"v": 3}, T0)
            await b([1, 2], T0)  # not a mapping: plain JSON
        await sub.wait_for(lambda: len(sub) == 4, "4 messages")
    assert sub.json() == [{"v": 1, "ts": T0.isoformat()}, {"v": 2, "ts": "mine"}, {"v": 3},
                          [1, 2]]


async def test_qos0_records_still_announce_availability_with_qos1(mqtt_url: str,
                                                                 prefix: str) -> None:
    async with Subscriber(mqtt_url, f"{prefix}/#") as sub:
        async with MqttConsumer(mqtt_url, topic=f"{prefix}/state", qos=0,
                                availability_topic=f"{prefix}/avail") as consumer:
            await consumer({"v": 1}, T0)
        await sub.wait_for(lambda: len(sub) == 3, "online, the record, offline")
    assert [(str(m.topic), payload(m), m.qos) for m in sub.messages] == [
        (f"{prefix}/avail", b"online", 1),
        (f"{prefix}/state", b'{"v":1,"event_time":"2024-05-01T12:00:00+00:00"}', 0),
        (f"{prefix}/avail", b"offline", 1),
    ]


# -- records that can never be published -----------------------------------------------


async def test_a_missing_topic_field_is_counted_and_the_others_still_arrive(
    mqtt_url: str, prefix: str
) -> None:
    produce = recorder(lambda n, t: {"n": n} if n % 3 == 1 else {"device": f"d{n}", "n": n})
    consumer = MqttConsumer(mqtt_url, topic=f"{prefix}/{{device}}/state")
    async with Subscriber(mqtt_url, f"{prefix}/+/state") as sub:
        conv = AioConveyor(produce, [consumer], loop_interval=0.05, max_ticks=9)
        async with conv:
            assert await asyncio.to_thread(conv.join, 15)
        good = [data["n"] for _, data in produce.produced if "device" in data]
        await sub.wait_for(lambda: len(sub) >= len(good), f"{len(good)} messages")
    stats = lane(conv)
    assert [item["n"] for item in sub.json()] == good == [0, 2, 3, 5, 6, 8]
    assert stats.errors == 3 and consumer.rejected == 3
    assert stats.rejected == 3 and stats.retries == 0 and stats.delivered == 6
    assert stats.dropped == 0 and stats.failed == 0
    assert stats.last_error is not None
    assert "MqttRecordError" in stats.last_error and "needs field 'device'" in stats.last_error


async def test_bad_records_in_a_batch_do_not_hold_back_the_good_ones(
    mqtt_url: str, prefix: str
) -> None:
    async with Subscriber(mqtt_url, f"{prefix}/#") as sub:
        async with MqttConsumer(mqtt_url, topic=f"{prefix}/{{device}}") as consumer:
            batch = Batch([Record({"device": "a", "v": 1}, T0), Record({"v": 2}, T0),
                           Record({"device": "b", "v": object()}, T0),
                           Record({"device": "c", "v": 4}, T0)])
            with pytest.raises(MqttRecordError, match="2 records could not be published") as info:
                await consumer(batch, T0)
            assert info.value.count == 2  # the lane counts 2 rejected, 2 delivered, no retry
        await sub.wait_for(lambda: len(sub) == 2, "2 messages")
    assert [(str(m.topic), json.loads(payload(m))["v"]) for m in sub.messages] == [
        (f"{prefix}/a", 1), (f"{prefix}/c", 4)]
    assert consumer.rejected == 2


async def test_one_bad_record_in_a_batch_counts_as_one_rejected(
    mqtt_url: str, prefix: str
) -> None:
    async with Subscriber(mqtt_url, f"{prefix}/#") as sub:
        async with MqttConsumer(mqtt_url, topic=f"{prefix}/{{device}}") as consumer:
            batch = Batch([Record({"device": "a", "v": 1}, T0), Record({"v": 2}, T0),
                           Record({"device": "c", "v": 3}, T0)])
            with pytest.raises(MqttRecordError, match="needs field 'device'") as info:
                await consumer(batch, T0)
            assert info.value.count == 1  # not the whole batch: 2 were published
            with pytest.raises(MqttRecordError) as alone:
                await consumer({"v": 4}, T0)
            assert alone.value.count is None  # a single record: the call's one item
        await sub.wait_for(lambda: len(sub) == 2, "2 messages")
    assert consumer.rejected == 2


async def test_an_encoder_that_fails_or_returns_junk_is_a_record_error(mqtt_url: str,
                                                                      prefix: str) -> None:
    def encode(data: Any, event_time: datetime) -> Any:
        return 12 if data is None else 1 / data

    async with MqttConsumer(mqtt_url, topic=f"{prefix}/x", encoder=encode) as consumer:
        with pytest.raises(MqttRecordError, match=r"encoder failed .* ZeroDivisionError"):
            await consumer(0, T0)
        with pytest.raises(MqttRecordError, match="must return bytes or str, got float"):
            await consumer(4, T0)
        with pytest.raises(MqttRecordError, match="must return bytes or str, got int"):
            await consumer(None, T0)


# -- faults ----------------------------------------------------------------------------


async def test_qos1_delivers_every_message_across_a_broker_restart(broker: Mosquitto) -> None:
    """Sound at-least-once check: the subscriber's session is persistent (clean_session off,
    QoS 1, broker persistence on), so whatever the broker acknowledged to the consumer
    reaches it even across the restart; anything the consumer failed to (re)publish is
    missing from what it received. The outage is real: the stats must show it."""
    produce = recorder(lambda n, t: {"n": n})
    consumer = MqttConsumer(broker.url, topic="plant/state", qos=1, max_backoff=0.3)
    async with Subscriber(broker.url, "plant/state", persistent=True) as sub:
        conv = AioConveyor(produce, [consumer], loop_interval=0.05, stop_timeout=15)
        async with conv:
            await sub.wait_for(lambda: len(sub) >= 5, "5 messages before the restart")
            await asyncio.to_thread(broker.stop)
            assert await wait_until(lambda: lane(conv).errors >= 2, timeout=10)
            during = len(produce.produced)
            assert await wait_until(lambda: len(produce.produced) >= during + 5, timeout=10)
            await asyncio.to_thread(broker.start)
            restarted = len(produce.produced)
            assert await wait_until(lambda: lane(conv).delivered > restarted, timeout=15)
            produce.stopped = True
            assert await wait_until(
                lambda: (s := lane(conv)).offered == len(produce.produced)
                and s.queued == s.in_flight == 0, timeout=15)
        expected = {t.isoformat() for t, _ in produce.produced}
        await sub.wait_for(lambda: expected <= sub.event_times(),
                           f"all {len(expected)} produced messages", timeout=15)
    stats = lane(conv)
    assert stats.offered == stats.delivered == len(produce.produced)
    assert stats.dropped == stats.failed == 0
    assert stats.errors >= 2 and stats.retries >= 2
    assert sub.connects >= 2  # the subscriber really lost the broker too
    assert len(produce.produced) - restarted >= 1 and during > 5


async def test_publishing_to_a_hung_broker_raises_instead_of_hanging(broker: Mosquitto) -> None:
    async with MqttConsumer(broker.url, topic="hung/state", keepalive=5,
                            timeout=1.0) as consumer:
        await consumer({"v": 1}, T0)
        broker.freeze()
        started = time.monotonic()
        with pytest.raises(MqttConnectionError, match="publish failed: Operation timed out"):
            async with asyncio.timeout(10):
                await consumer({"v": 2}, T0)
        assert time.monotonic() - started < 3
        with pytest.raises(MqttConnectionError, match="unreachable"):  # no CONNACK either
            async with asyncio.timeout(10):
                await consumer({"v": 3}, T0)
        broker.thaw()
        await consumer({"v": 4}, T0)  # reconnected


async def test_keepalive_notices_a_silent_broker_while_idle(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aioconveyor.consumers.mqtt")
    async with MqttConsumer(broker.url, topic="idle/state", keepalive=1,
                            timeout=1.0) as consumer:
        await consumer({"v": 1}, T0)
        broker.freeze()
        assert await wait_until(lambda: "lost the connection" in caplog.text, timeout=8)
        broker.thaw()
        await consumer({"v": 2}, T0)
    assert "lost the connection to mqtt://127.0.0.1" in caplog.text
    assert "Keep alive timeout" in caplog.text


async def test_a_cancelled_call_leaves_the_consumer_usable(broker: Mosquitto) -> None:
    """The lane cancels a call past its timeout; the next call must still work."""
    async with Subscriber(broker.url, "cancel/#") as sub:
        async with MqttConsumer(broker.url, topic="cancel/state", timeout=5.0) as consumer:
            broker.freeze()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await consumer({"v": 1}, T0)
            broker.thaw()
            await consumer({"v": 2}, T0)
        await sub.wait_for(lambda: {1, 2} <= {item["v"] for item in sub.json()},
                           "both messages (at least once)")


async def test_calls_cancelled_without_a_puback_for_too_long_force_a_reconnect(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """A lane timeout shorter than ``timeout`` cancels every publish to a hung broker; once
    no PUBACK came for ``timeout`` seconds the consumer stops trusting the connection."""
    caplog.set_level(logging.INFO, logger="aioconveyor.consumers.mqtt")
    async with MqttConsumer(broker.url, topic="stall/state", keepalive=60,
                            timeout=0.5) as consumer:
        await consumer({"v": 0}, T0)
        broker.freeze()
        deadline = time.monotonic() + 10
        while "no PUBACK" not in caplog.text:
            assert time.monotonic() < deadline, "the stalled connection was never given up"
            with contextlib.suppress(TimeoutError, MqttConnectionError):
                async with asyncio.timeout(0.2):  # the lane's timeout
                    await consumer({"v": 1}, T0)
        broker.thaw()
        await consumer({"v": 2}, T0)
    assert caplog.text.count("connected to") == 2


# -- availability, Last Will, discovery ------------------------------------------------


async def test_availability_online_last_will_offline_and_clean_close(
    mqtt_url: str, prefix: str
) -> None:
    host, port = host_port(mqtt_url, 1883)
    avail = f"{prefix}/avail"
    sentinel = f"{prefix}/.sentinel"
    with tcp_proxy(host, port) as proxy:
        consumer = MqttConsumer(f"mqtt://127.0.0.1:{proxy.port}", topic=f"{prefix}/state",
                                availability_topic=avail, max_backoff=0.3)
        async with Subscriber(mqtt_url, avail) as sub:
            conv = AioConveyor(lambda t: {"v": 1}, [consumer], loop_interval=0.1)
            async with conv:
                await sub.wait_for(lambda: [payload(m) for m in sub.messages] == [b"online"],
                                   "online")
                assert await retained(mqtt_url, avail, sentinel) == {avail: b"online"}
                proxy.cut()  # the connection dies without a DISCONNECT: the broker sends the will
                await sub.wait_for(lambda: b"offline" in [payload(m) for m in sub.messages],
                                   "the Last Will")
                assert await retained(mqtt_url, avail, sentinel) == {avail: b"offline"}
                assert await wait_until(lambda: lane(conv).errors >= 1, timeout=10)
                proxy.restore()  # the next tick reconnects and announces itself again
                await sub.wait_for(lambda: payload(sub.messages[-1]) == b"online",
                                   "online again")
            await sub.wait_for(lambda: payload(sub.messages[-1]) == b"offline", "clean close")
    assert [payload(m) for m in sub.messages] == [b"online", b"offline", b"online", b"offline"]
    assert await retained(mqtt_url, avail, sentinel) == {avail: b"offline"}
    assert lane(conv).errors >= 1 and lane(conv).dropped == 0


async def test_home_assistant_discovery_configs_are_retained(mqtt_url: str,
                                                             prefix: str) -> None:
    discovery = HaDiscovery(
        node_id="weather_1", device_name="Weather station", manufacturer="ACME",
        model="WS-2", prefix=f"{prefix}/ha",
        sensors=[
            HaSensor("temperature", "Temperature", unit="\u00b0C", device_class="temperature",
                     state_class="measurement"),
            HaSensor("wind-speed", "Wind", unit="m/s", icon="mdi:weather-windy"),
            HaSensor("items", "Items"),
        ],
    )
    state = f"{prefix}/weather/state"
    consumer = MqttConsumer(mqtt_url, topic=state, discovery=discovery)
    assert consumer.availability_topic == f"{prefix}/weather/availability"
    async with Subscriber(mqtt_url, state) as sub:
        async with consumer:
            await consumer({"temperature": 21.5, "wind-speed": 3, "items": 2}, T0)
            configs = await retained(mqtt_url, f"{prefix}/#", f"{prefix}/.sentinel")
        await sub.wait_for(lambda: len(sub) == 1, "the state message")
    assert sub.json() == [{"temperature": 21.5, "wind-speed": 3, "items": 2,
                           "event_time": T0.isoformat()}]
    ha = f"{prefix}/ha/sensor/weather_1"
    assert set(configs) == {f"{ha}/temperature/config", f"{ha}/wind-speed/config",
                            f"{ha}/items/config", consumer.availability_topic}
    assert configs[consumer.availability_topic] == b"online"
    device = {"identifiers": ["weather_1"], "name": "Weather station", "manufacturer": "ACME",
              "model": "WS-2"}
    common = {"state_topic": state, "device": device, "qos": 1,
              "availability_topic": consumer.availability_topic,
              "payload_available": "online", "payload_not_available": "offline"}
    temperature = json.loads(configs[f"{ha}/temperature/config"])
    assert temperature.pop("origin")["name"] == "aioconveyor"
    assert temperature == {**common, "name": "Temperature", "unique_id": "weather_1_temperature",
                           "value_template": "{{ value_json.temperature }}",
                           "unit_of_measurement": "\u00b0C", "device_class": "temperature",
                           "state_class": "measurement"}
    wind = json.loads(configs[f"{ha}/wind-speed/config"])
    assert wind["value_template"] == '{{ value_json["wind-speed"] }}'
    assert wind["unique_id"] == "weather_1_wind-speed" and wind["icon"] == "mdi:weather-windy"
    assert "device_class" not in wind and wind["unit_of_measurement"] == "m/s"
    items = json.loads(configs[f"{ha}/items/config"])  # value_json.items is dict.items in Jinja
    assert items["value_template"] == '{{ value_json["items"] }}'
    after = await retained(mqtt_url, f"{prefix}/#", f"{prefix}/.sentinel")
    assert after[consumer.availability_topic] == b"offline"  # clean close; configs stay
    assert set(after) == set(configs)


# -- secrets, settings, packaging ------------------------------------------------------


async def test_the_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    closed_port = free_port()
    consumer = MqttConsumer(f"mqtt://alice:{SECRET}@127.0.0.1:{closed_port}", topic="t",
                            timeout=1.0, max_backoff=0.2)
    assert SECRET not in repr(consumer) and SECRET not in consumer.url
    assert consumer.url == f"mqtt://alice:***@127.0.0.1:{closed_port}"
    other = MqttConsumer(host="127.0.0.1", port=closed_port, username="bob", password=SECRET)
    assert SECRET not in repr(other) and other.url == f"mqtt://bob:***@127.0.0.1:{closed_port}"
    conv = AioConveyor(lambda t: {"v": 1}, [consumer], loop_interval=0.05, stop_timeout=0.5)
    async with conv:
        assert await wait_until(lambda: lane(conv).errors >= 2, timeout=10)
    stats = lane(conv)
    assert stats.last_error is not None and "unreachable" in stats.last_error
    assert SECRET not in stats.last_error and "alice:***@" in stats.last_error
    assert SECRET not in caplog.text
    for bad in (f"http://alice:{SECRET}@host", f"mqtt://alice:{SECRET}@host:notaport",
                f"mqtt://alice:{SECRET}@host/path"):
        with pytest.raises(ValueError) as info:
            MqttConsumer(bad)
        assert SECRET not in str(info.value) and "alice:***@" in str(info.value)


ODD_PASSWORD = "r:ght/@#%"


@pytest.fixture
def login_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private broker that only lets alice (password ``ODD_PASSWORD``) in."""
    require_mosquitto()
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "alice", ODD_PASSWORD],
                   check=True, capture_output=True, timeout=30)
    with Mosquitto(tmp_path, anonymous=False,
                   extra_config=f"password_file {passwords}\n") as private:
        yield private


async def test_a_refused_login_fails_the_start_without_leaking_the_password(
    login_broker: Mosquitto,
) -> None:
    consumer = MqttConsumer(login_broker.url, username="alice", password=SECRET)
    conv = AioConveyor(lambda t: {"v": 1}, [Consumer(consumer, startup="fail")],
                       loop_interval=0.05)
    with pytest.raises(StartupError) as info:
        await conv.__aenter__()
    assert "refused the connection" in str(info.value) and SECRET not in str(info.value)
    assert SECRET not in repr(info.value.__cause__)


@pytest.mark.parametrize("secret", [urllib.parse.quote(ODD_PASSWORD, safe=""), ODD_PASSWORD],
                         ids=["percent-encoded", "raw"])
async def test_the_url_password_may_hold_any_character(login_broker: Mosquitto,
                                                        secret: str) -> None:
    consumer = MqttConsumer(f"mqtt://alice:{secret}@127.0.0.1:{login_broker.port}", topic="ok")
    assert consumer.url == f"mqtt://alice:***@127.0.0.1:{login_broker.port}"
    async with consumer:
        await consumer({"v": 1}, T0)


def test_url_parts_and_tls() -> None:
    c = MqttConsumer("mqtts://u%40x:p%3Aw@broker.example")
    assert (c.host, c.port, c.username, c.url) == ("broker.example", 8883, "u@x",
                                                   "mqtts://u%40x:***@broker.example:8883")
    assert c._tls is not None
    raw = MqttConsumer("mqtt://u:pa/ss@wo#rd@10.0.0.1:1999")  # unescaped odd characters
    assert (raw.host, raw.port, raw.url) == ("10.0.0.1", 1999, "mqtt://u:***@10.0.0.1:1999")
    plain = MqttConsumer("mqtts://h", tls=False, port=1884)
    assert plain._tls is None and plain.url == "mqtt://h:1884"
    assert MqttConsumer().url == "mqtt://localhost:1883"
    assert MqttConsumer("mqtt://[::1]:1884").url == "mqtt://[::1]:1884"
    assert MqttConsumer(topic="t", name="out").consumer_defaults == {
        "retries": 1_000_000, "backoff": 0.2, "max_backoff": 5.0}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"qos": 3}, "qos must be 0, 1 or 2, got 3"),
    ({"topic": "a/+/b"}, "wildcards"),
    ({"topic": "a/{device}/#"}, "wildcards"),
    ({"topic": "a/{}/b"}, "must be named"),
    ({"topic": "a/{device"}, "not a valid template"),
    ({"topic": ""}, "must not be empty"),
    ({"keepalive": 0}, "keepalive must be an int in 1..65535"),
    ({"timeout": float("nan")}, "timeout must be a finite number > 0"),
    ({"port": 70000}, "port must be an int in 1..65535"),
    ({"availability_topic": "a/#"}, "wildcards"),
    ({"password": "x"}, "a password needs a username"),
    ({"client_options": {"will": None}}, "client_options must not set ['will']"),
    ({"topic": "a/{device}", "discovery": HaDiscovery("n", "N", [HaSensor("k", "K")])},
     "discovery needs a fixed state topic"),
])
def test_bad_settings_are_rejected_with_a_clear_message(kwargs: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(ValueError) as info:
        MqttConsumer(**kwargs)
    assert message in str(info.value)


def test_bad_discovery_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="node_id may only use"):
        HaDiscovery("bad id", "N", [HaSensor("k", "K")])
    with pytest.raises(ValueError, match="must not be empty"):
        HaDiscovery("n", "N", [])
    with pytest.raises(ValueError, match="repeats object id"):
        HaDiscovery("n", "N", [HaSensor("a b", "A"), HaSensor("a_b", "B")])
    with pytest.raises(TypeError, match="HaSensor name must be a non-empty str"):
        HaSensor("k", "")


async def test_calling_before_open_is_a_clear_error() -> None:
    consumer = MqttConsumer(topic="t")
    with pytest.raises(RuntimeError, match="call open\\(\\) first"):
        await consumer({"v": 1}, T0)


def test_without_aiomqtt_the_import_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['aiomqtt'] = None\n"
        "try:\n"
        "    from aioconveyor.consumers import MqttConsumer\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without aiomqtt')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert 'pip install "aioconveyor[mqtt]"' in result.stdout


# -- topic fields that would change the topic's shape -----------------------------------


@pytest.mark.parametrize(("device", "held"), [
    ("kitchen/fridge", "'/'"), ("a+b", "'+'"), ("all#", "'#'"), ("nul\0", "'\\x00'"),
    ("/", "'/'"),
])
async def test_a_topic_field_holding_a_level_separator_or_wildcard_is_rejected(
    mqtt_url: str, prefix: str, device: str, held: str,
) -> None:
    records = [{"device": "ok1", "n": 1}, {"device": device, "n": 2}, {"device": "ok2", "n": 3}]
    produce = recorder(lambda n, t: records[n % 3])
    consumer = MqttConsumer(mqtt_url, topic=f"{prefix}/{{device}}/state")
    async with Subscriber(mqtt_url, f"{prefix}/#") as sub:
        conv = AioConveyor(produce, [consumer], loop_interval=0.05, max_ticks=3)
        async with conv:
            assert await asyncio.to_thread(conv.join, 15)
        await sub.wait_for(lambda: len(sub) >= 2, "2 messages")
    # nothing reached a topic nobody asked for (kitchen/fridge/state would be two levels)
    assert [str(m.topic) for m in sub.messages] == [f"{prefix}/ok1/state", f"{prefix}/ok2/state"]
    stats = lane(conv)
    assert (stats.rejected, stats.retries, stats.delivered, consumer.rejected) == (1, 0, 2, 1)
    assert stats.last_error is not None
    assert "field 'device'" in stats.last_error and f"which holds {held}" in stats.last_error


async def test_event_time_formats_may_add_levels_but_record_fields_may_not(
    mqtt_url: str, prefix: str,
) -> None:
    async with Subscriber(mqtt_url, f"{prefix}/#") as sub:
        async with MqttConsumer(mqtt_url, topic=f"{prefix}/{{event_time:%Y/%m}}/{{n}}") as c:
            await c({"n": 7}, T0)
            with pytest.raises(MqttRecordError, match=r"field 'n' .* holds '/'"):
                await c({"n": "7/8"}, T0)
        await sub.wait_for(lambda: len(sub) == 1, "1 message")
    assert [str(m.topic) for m in sub.messages] == [f"{prefix}/{T0:%Y/%m}/7"]


# -- several producers over one connection (issue 14) ----------------------------------


def by_producer(*items: tuple[str, Any]) -> Batch:
    """A batch whose records carry their producer's tick, as a lane hands them over."""
    records = []
    for i, (producer, data) in enumerate(items):
        when = T0 + timedelta(seconds=i)
        tick = None if producer is None else Tick(i, when, when.timestamp(),
                                                  when.timestamp(), 0, producer)
        records.append(Record(data, when, tick))
    return Batch(records)


async def test_the_producer_fills_its_topic_level_and_a_bad_or_missing_one_is_rejected(
    mqtt_url: str, prefix: str
) -> None:
    consumer = MqttConsumer(mqtt_url, topic=f"{prefix}/{{producer}}/state")
    batch = by_producer(("inverter", {"v": 1}), ("meter", {"v": 2}), ("a/b", {"v": 3}),
                        (None, {"v": 4}), (None, {"v": 5, "producer": "legacy"}))
    async with Subscriber(mqtt_url, f"{prefix}/#") as sub:
        async with consumer:
            with pytest.raises(MqttRecordError) as info:
                await consumer(batch, T0)
        await sub.wait_for(lambda: len(sub) == 3, "three state messages")
    assert [str(m.topic) for m in sub.messages] == [
        f"{prefix}/inverter/state", f"{prefix}/meter/state", f"{prefix}/legacy/state"]
    assert consumer.rejected == 2
    assert "2 records could not be published" in str(info.value)
    first = info.value.__cause__
    assert first is not None and "holds '/'" in str(first)


def three_devices(prefix: str) -> dict[str, HaDiscovery]:
    ha = f"{prefix}/ha"
    return {
        "inverter": HaDiscovery("inverter_1", "Inverter", prefix=ha, sensors=[
            HaSensor("power_w", "Power", unit="W", device_class="power")]),
        "meter": HaDiscovery("meter_1", "Meter", prefix=ha, sensors=[
            HaSensor("energy_kwh", "Energy", unit="kWh", device_class="energy",
                     state_class="total_increasing")]),
        "weather": HaDiscovery("weather_1", "Weather", prefix=ha, sensors=[
            HaSensor("temp", "Temperature", unit="\u00b0C"), HaSensor("wind", "Wind")]),
    }


async def test_a_home_assistant_device_per_producer_with_its_own_availability(
    mqtt_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioconveyor.consumers.mqtt")
    consumer = MqttConsumer(mqtt_url, topic=f"{prefix}/{{producer}}/state",
                            discovery=three_devices(prefix))
    bridge = f"{prefix}/availability"
    assert consumer.availability_topic == bridge
    assert consumer.device_availability_topic == f"{prefix}/{{producer}}/availability"
    sentinel = f"{prefix}/.sentinel"
    async with consumer:
        before = await retained(mqtt_url, f"{prefix}/#", sentinel)
        await consumer(by_producer(("inverter", {"power_w": 1200}),
                                   ("meter", {"energy_kwh": 7.5})), T0)
        during = await retained(mqtt_url, f"{prefix}/#", sentinel)
    after = await retained(mqtt_url, f"{prefix}/#", sentinel)

    ha = f"{prefix}/ha/sensor"
    configs = {f"{ha}/inverter_1/power_w/config", f"{ha}/meter_1/energy_kwh/config",
               f"{ha}/weather_1/temp/config", f"{ha}/weather_1/wind/config"}
    devices = {p: f"{prefix}/{p}/availability" for p in ("inverter", "meter", "weather")}
    assert set(before) == configs | set(devices.values()) | {bridge}
    assert before[bridge] == b"online"
    assert {before[t] for t in devices.values()} == {b"offline"}  # no record yet
    assert during[devices["inverter"]] == during[devices["meter"]] == b"online"
    assert during[devices["weather"]] == b"offline"
    assert {after[t] for t in [bridge, *devices.values()]} == {b"offline"}  # clean close

    wind = json.loads(before[f"{ha}/weather_1/wind/config"])
    assert wind["state_topic"] == f"{prefix}/weather/state"
    assert wind["device"] == {"identifiers": ["weather_1"], "name": "Weather"}
    assert wind["unique_id"] == "weather_1_wind"
    assert wind["availability_mode"] == "all"
    assert wind["availability"] == [
        {"topic": bridge, "payload_available": "online", "payload_not_available": "offline"},
        {"topic": devices["weather"], "payload_available": "online",
         "payload_not_available": "offline"}]
    assert "availability_topic" not in wind
    assert caplog.text.count("connected to") == 1  # one connection for the three devices


async def test_a_seen_device_is_online_again_after_a_reconnect(tmp_path: Path) -> None:
    """A broker without persistence forgets every retained message when restarted: the
    reconnect announces everything again, a device that has produced as online."""
    require_mosquitto()
    with Mosquitto(tmp_path) as broker:
        consumer = MqttConsumer(broker.url, topic="home/{producer}/state",
                                discovery=three_devices("home"))
        async with consumer:
            await consumer(by_producer(("meter", {"energy_kwh": 1})), T0)
            broker.stop()
            broker.start()
            assert await retained(broker.url, "home/#", "home/.sentinel") == {}
            with contextlib.suppress(MqttConnectionError):  # this call may meet the drop
                await consumer(by_producer(("inverter", {"power_w": 2})), T0)
            await consumer(by_producer(("inverter", {"power_w": 3})), T0)
            now = await retained(broker.url, "home/+/availability", "home/.sentinel")
    assert now == {"home/meter/availability": b"online",
                   "home/inverter/availability": b"online",
                   "home/weather/availability": b"offline"}


@pytest.mark.parametrize(("kwargs", "name", "message"), [
    ({"topic": "home/state", "discovery": {"a": HaDiscovery("a", "A", [HaSensor("k", "K")])}},
     "topic", "{producer} as its only field"),
    ({"topic": "home/{producer}/{room}",
      "discovery": {"a": HaDiscovery("a", "A", [HaSensor("k", "K")])}},
     "topic", "{producer} as its only field"),
    ({"topic": "h/{producer}", "discovery": {}}, "discovery", "must not be an empty mapping"),
    ({"topic": "h/{producer}", "discovery": {"a/b": HaDiscovery("a", "A", [HaSensor("k", "K")])}},
     "discovery['a/b']", "holds '/'"),
    ({"topic": "h/{producer}", "discovery": {"a": HaDiscovery("n", "A", [HaSensor("k", "K")]),
                                              "b": HaDiscovery("n", "B", [HaSensor("k", "K")])}},
     "discovery['b'].node_id", "repeats the node_id of discovery['a']"),
    ({"topic": "h/{producer}", "discovery": {"a": "not a device"}}, "discovery",
     "a mapping of producer names to HaDiscovery"),
    ({"topic": "h/{producer}", "device_availability_topic": "h/avail"},
     "device_availability_topic", "{producer} as its only field"),
    ({"topic": "h/{producer}", "availability_topic": "h/bridge/availability",
      "device_availability_topic": "h/{producer}/availability"},
     "device_availability_topic", "share one topic"),
])
def test_bad_per_producer_settings_name_the_argument(kwargs: dict[str, Any], name: str,
                                                     message: str) -> None:
    with pytest.raises(SettingError) as info:
        MqttConsumer(**kwargs)
    assert info.value.name == name and message in str(info.value), info.value




async def test_three_producers_one_connection_three_discovered_devices(
    mqtt_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioconveyor.consumers.mqtt")
    makers = {"inverter": lambda n, t: {"power_w": 1000 + n},
              "meter": lambda n, t: {"energy_kwh": n / 2},
              "weather": lambda n, t: {"temp": 20 + n, "wind": n}}
    recorders = {name: recorder(make) for name, make in makers.items()}
    consumer = MqttConsumer(mqtt_url, topic=f"{prefix}/{{producer}}/state",
                            discovery=three_devices(prefix))
    devices = {p: f"{prefix}/{p}/availability" for p in makers}
    async with Subscriber(mqtt_url, f"{prefix}/#") as sub:
        conv = AioConveyor(consumers=[consumer], producers=[
            aioconveyor.Producer(recorders[name], name=name, every=0.05, max_ticks=5)
            for name in makers])
        async with conv:
            await sub.wait_for(lambda: all(
                any(str(m.topic) == topic and payload(m) == b"online" for m in sub.messages)
                for topic in devices.values()), "every device online")
            assert await asyncio.to_thread(conv.join, 20)
        await sub.wait_for(lambda: payload(sub.messages[-1]) == b"offline", "the close")

    for name, rec in recorders.items():
        got = [json.loads(payload(m)) for m in sub.messages
               if str(m.topic) == f"{prefix}/{name}/state"]
        assert [g.pop("event_time") for g in got] == [t.isoformat() for t, _ in rec.produced]
        assert got == [data for _, data in rec.produced]
    for topic in devices.values():  # offline at connect, online with the first record, then off
        states = [payload(m) for m in sub.messages if str(m.topic) == topic]
        assert states == [b"offline", b"online", b"offline"], (topic, states)
    configs = [m for m in sub.messages if str(m.topic).endswith("/config")]
    assert {json.loads(payload(m))["device"]["name"] for m in configs} == {
        "Inverter", "Meter", "Weather"}
    assert caplog.text.count("connected to") == 1
    assert lane(conv).delivered == 15 and lane(conv).errors == 0
