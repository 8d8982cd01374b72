"""Many producers in one conveyor: own grids, routing, isolation, changes at run time."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer, Producer, SettingError, current_tick
from aioconveyor.kit import Batch
from aioconveyor.testing import FakeClock, MemoryConsumer, wait_until_blocking

T0 = 1_794_999_600.0  # a whole hour: on every grid used below


def grid(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class Device:
    """A producer that notes the grid time and the clock at each call."""

    def __init__(self, clock: FakeClock, name: str) -> None:
        self.clock = clock
        self.name = name
        self.calls: list[tuple[datetime, float]] = []

    async def __call__(self, event_time: datetime) -> dict[str, Any]:
        self.calls.append((event_time, self.clock.time()))
        return {"device": self.name, "n": len(self.calls)}

    @property
    def event_times(self) -> list[datetime]:
        return [e for e, _ in self.calls]


class Tagged(MemoryConsumer):
    """A memory consumer that also notes each item's producer (from the tick facts)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.producers: list[str] = []

    async def __call__(self, data: Any, event_time: datetime) -> None:
        tick = current_tick()
        assert tick is not None
        self.producers.append(tick.producer)
        await super().__call__(data, event_time)


async def test_each_producer_ticks_on_its_own_grid_and_feeds_every_consumer() -> None:
    clock = FakeClock(start=T0 + 0.5)
    inverter, meter, weather = (Device(clock, n) for n in ("inverter", "meter", "weather"))
    sink = Tagged("sink")
    conv = AioConveyor(consumers=[sink], clock=clock, producers=[
        Producer(inverter, name="inverter", every=10, max_ticks=6),
        Producer(meter, name="meter", every=30, offset=5, max_ticks=2),
        Producer(weather, name="weather", cron="* * * * *", max_ticks=1),
    ])
    await conv.run()
    assert inverter.event_times == [grid(T0 + 10 * k) for k in range(1, 7)]
    assert meter.event_times == [grid(T0 + 5), grid(T0 + 35)]
    assert weather.event_times == [grid(T0 + 60)]
    # each call happened exactly at its grid time: nobody waited for anybody
    for device in (inverter, meter, weather):
        assert [t for _, t in device.calls] == [e.timestamp() for e in device.event_times]
    assert sorted(sink.producers) == sorted(["inverter"] * 6 + ["meter"] * 2 + ["weather"])
    stats = conv.stats()
    assert stats.ticks == 9 and stats.produced == 9
    assert [(p.name, p.ticks, p.state) for p in stats.producers] == [
        ("inverter", 6, "finished"), ("meter", 2, "finished"), ("weather", 1, "finished")]
    assert stats.producer("meter").next_tick_time == grid(T0 + 35)


async def test_routing_sends_each_producer_to_the_consumers_it_names() -> None:
    clock = FakeClock(start=T0 + 0.5)
    pg, mqtt, csv = Tagged("pg"), Tagged("mqtt"), Tagged("csv")
    conv = AioConveyor(consumers=[pg, mqtt, csv], clock=clock)
    conv.add_producer(Device(clock, "a"), name="a", every=10, max_ticks=3,
                      consumers=["pg", "mqtt"])
    conv.add_producer(Device(clock, "b"), name="b", every=10, offset=1, max_ticks=3,
                      consumers=["csv"])
    conv.add_producer(Device(clock, "c"), name="c", every=10, offset=2, max_ticks=3)
    await conv.run()
    assert sorted(pg.producers) == ["a"] * 3 + ["c"] * 3
    assert sorted(mqtt.producers) == ["a"] * 3 + ["c"] * 3
    assert sorted(csv.producers) == ["b"] * 3 + ["c"] * 3
    assert conv.stats().producer("b").consumers == ("csv",)
    assert conv.stats().producer("c").consumers is None
    for c in conv.stats().consumers:
        assert c.offered == c.delivered == 6


async def test_a_hung_producer_and_a_failing_one_do_not_delay_another() -> None:
    clock = FakeClock(start=T0 + 0.5)
    healthy = Device(clock, "healthy")
    stuck = asyncio.Event()

    async def hangs(event_time: datetime) -> None:
        while not stuck.is_set():  # ignores cancellation: hung until released
            try:
                await stuck.wait()
            except asyncio.CancelledError:
                continue

    def raises(event_time: datetime) -> None:
        raise SystemExit("a producer that exits the interpreter")

    sink = MemoryConsumer()
    conv = AioConveyor(consumers=[sink], clock=clock, producers=[
        Producer(healthy, name="healthy", every=1, max_ticks=30),
        Producer(hangs, name="hangs", every=1, timeout=2),
        Producer(raises, name="raises", every=1),
    ])
    task = asyncio.create_task(conv.run())
    try:
        while len(healthy.calls) < 30:  # noqa: ASYNC110 - turns of the loop, fake time
            await asyncio.sleep(0)
        # every tick of the healthy one started exactly on its grid time
        assert [t for _, t in healthy.calls] == [T0 + k for k in range(1, 31)]
        stats = conv.stats()
        assert stats.producer("healthy").lateness.max_ms == 0
        assert stats.producer("hangs").state == "hung"
        assert stats.producer("hangs").skipped > 20
        assert stats.producer("raises").errors >= 29  # (the 30th may still be on its thread)
        assert "SystemExit: a producer" in (stats.producer("raises").last_error or "")
        assert sink.data[:1] == [{"device": "healthy", "n": 1}]
    finally:
        stuck.set()  # (a hung coroutine left behind would hang the loop's teardown)
        task.cancel()  # the others have no max_ticks: stop it
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_conveyor_ends_when_every_producer_is_finished_not_before() -> None:
    clock = FakeClock(start=T0 + 0.5)
    short, long = Device(clock, "short"), Device(clock, "long")
    conv = AioConveyor(consumers=[], clock=clock, producers=[
        Producer(short, name="short", every=1, max_ticks=2),
        Producer(long, name="long", every=1, max_ticks=5),
    ])
    await conv.run()
    assert len(short.calls) == 2 and len(long.calls) == 5


def test_the_decorator_registers_producers_with_their_schedules() -> None:
    clock = FakeClock(start=T0 + 0.5)
    sink = MemoryConsumer()
    conv = AioConveyor(consumers=[sink], clock=clock)

    @conv.producer(every=10, offset=2, max_ticks=2)
    async def inverter(event_time: datetime) -> str:
        return f"inverter {event_time:%S}"

    @conv.producer
    def meter(event_time: datetime) -> str:  # every 5 s by default
        return f"meter {event_time:%S}"

    assert conv.producer_names == ("inverter", "meter")
    assert inverter.__name__ == "inverter"  # the function itself comes back

    async def main() -> None:
        task = asyncio.create_task(conv.run())
        while len(sink.items) < 6:  # noqa: ASYNC110 - turns of the loop, fake time
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sink.data[:6] == ["inverter 02", "meter 05", "meter 10", "inverter 12",
                             "meter 15", "meter 20"]


def test_producers_are_added_and_removed_from_another_thread_while_running() -> None:
    a_seen: list[datetime] = []
    b_seen: list[datetime] = []

    def a(event_time: datetime) -> str:
        a_seen.append(event_time)
        return "a"

    async def b(event_time: datetime) -> str:
        b_seen.append(event_time)
        return "b"

    sink = Tagged("sink")
    with AioConveyor(a, [sink], loop_interval=0.02) as conv:
        assert wait_until_blocking(lambda: len(a_seen) >= 2)
        done = threading.Event()
        names: list[str] = []

        def other_thread() -> None:
            names.append(conv.add_producer(b, every=0.02, offset=0.01))
            done.set()

        threading.Thread(target=other_thread).start()
        assert done.wait(10) and names == ["b"]
        assert wait_until_blocking(lambda: len(b_seen) >= 3)
        assert conv.producer_names == ("a", "b")
        conv.remove_producer("b")
        n = len(b_seen)
        more = len(a_seen) + 3
        assert wait_until_blocking(lambda: len(a_seen) >= more)
        assert len(b_seen) == n  # removed: no more calls
        stats = conv.stats()
        assert [p.name for p in stats.producers] == ["a"]
        assert stats.produced >= stats.producer("a").produced + n  # its counts stay in totals
    assert "b" in sink.producers and "a" in sink.producers
    assert len(set(b_seen)) == len(b_seen)


def test_a_producer_replaced_while_running_continues_on_the_grid() -> None:
    seen: list[tuple[str, datetime]] = []

    def old(event_time: datetime) -> str:
        seen.append(("old", event_time))
        return "old"

    def new(event_time: datetime) -> str:
        seen.append(("new", event_time))
        return "new"

    with AioConveyor(consumers=[MemoryConsumer()], producers=[
            Producer(old, name="dev", every=0.02)]) as conv:
        assert wait_until_blocking(lambda: len(seen) >= 3)
        conv.replace_producer("dev", new, every=0.02)
        assert wait_until_blocking(lambda: sum(1 for w, _ in seen if w == "new") >= 3)
        assert conv.producer_names == ("dev",)
        assert conv.stats().producer("dev").ticks == len(seen)  # stats continue
    times = [t for _, t in seen]
    assert times == sorted(times) and len(set(times)) == len(times)  # never a grid time twice


async def test_records_of_a_batch_carry_their_producer() -> None:
    clock = FakeClock(start=T0 + 0.5)
    batches: list[Batch] = []

    async def store(data: Batch, event_time: datetime) -> None:
        batches.append(data)

    conv = AioConveyor(consumers=[Consumer(store, batch_size=4, batch_age=5)], clock=clock,
                       producers=[Producer(Device(clock, "x"), name="x", every=1, max_ticks=2),
                                  Producer(Device(clock, "y"), name="y", every=1, max_ticks=2)])
    await conv.run()
    records = [r for b in batches for r in b]
    assert sorted(r.producer for r in records) == ["x", "x", "y", "y"]
    _, when = records[0]  # still unpacks as a pair
    assert isinstance(when, datetime)


def test_a_consumer_named_by_a_producer_cannot_be_removed_under_it() -> None:
    sink, other = MemoryConsumer("sink"), MemoryConsumer("other")
    with AioConveyor(consumers=[sink, other], producers=[
            Producer(lambda t: 1, name="p", every=0.05, consumers=["sink"])]) as conv:
        with pytest.raises(ValueError, match="named by producer"):
            conv.remove_consumer("sink")
        conv.remove_consumer("other")  # nobody names it: fine
        assert sink.wait_for(1)


def test_the_classic_single_producer_is_one_producer_named_like_the_conveyor() -> None:
    clock = FakeClock(start=T0 + 0.5)
    sink = Tagged("sink")
    conv = AioConveyor(Device(clock, "d"), [sink], loop_interval=10, clock=clock,
                       max_ticks=2, name="plant")
    asyncio.run(conv.run())
    assert conv.producer_names == ("plant",)
    assert sink.producers == ["plant", "plant"]
    assert conv.stats().producer("plant").ticks == 2


@pytest.mark.parametrize(("make", "name", "words"), [
    (lambda: AioConveyor(consumers=[], loop_interval=5), "loop_interval", "produce="),
    (lambda: AioConveyor(consumers=[], max_ticks=3), "max_ticks", "produce="),
    (lambda: AioConveyor(lambda t: 1, [], producers=[Producer(lambda t: 2)]), "producers[0]",
     "like another producer"),
    (lambda: AioConveyor(consumers=[MemoryConsumer("a")],
                         producers=[Producer(lambda t: 1, name="p", consumers=["b"])]),
     "consumers", "does not have"),
    (lambda: AioConveyor(producers="nope"), "producers", "list"),
    (lambda: Producer(lambda t: 1, every=5, cron="* * * * *"), "cron", "only one"),
    (lambda: Producer(lambda t: 1, every=5, offset=7), "offset", "[0, every)"),
    (lambda: Producer(lambda t: 1, consumers="pg"), "consumers", "list of consumer names"),
    (lambda: Producer(lambda t: 1, consumers=["pg", "pg"]), "consumers", "twice"),
    (lambda: Producer(lambda t: 1, misfire="later"), "misfire", "later"),
    (lambda: Producer(42), "produce", "callable"),
    (lambda: AioConveyor(consumers=[]).add_producer(lambda t: 1, evry=5), "evry",
     "not a producer setting"),
    (lambda: AioConveyor(consumers=[]).add_producer(Producer(lambda t: 1), every=5), "every",
     "Producer"),
    (lambda: AioConveyor(consumers=[]).add_producer(lambda t: 1, every=1, jitter=2), "jitter",
     "smaller than the tick period"),
])
def test_bad_producer_settings_are_refused_with_the_argument_named(
    make: Any, name: str, words: str,
) -> None:
    with pytest.raises(SettingError) as raised:
        make()
    assert raised.value.name == name
    assert words in str(raised.value)


def test_producer_names_are_unique_at_run_time_too() -> None:
    with AioConveyor(lambda t: 1, [], loop_interval=0.05, name="p") as conv:
        with pytest.raises(SettingError, match="like another producer"):
            conv.add_producer(lambda t: 2, name="p", every=1)
        with pytest.raises(KeyError):
            conv.remove_producer("nope")


async def test_health_names_a_producer_whose_every_call_fails_past_its_bound() -> None:
    clock = FakeClock(start=T0 + 0.5)
    calls = {"n": 0}

    def flaky(event_time: datetime) -> int:
        calls["n"] += 1
        if calls["n"] > 3:
            raise ConnectionError("inverter unreachable")
        return calls["n"]

    conv = AioConveyor(consumers=[MemoryConsumer()], clock=clock, producers=[
        Producer(flaky, name="inverter", every=1), Producer(lambda t: 1, name="ok", every=1)])
    task = asyncio.create_task(conv.run())
    try:
        while calls["n"] < 8:  # noqa: ASYNC110 - turns of the loop, fake time
            await asyncio.sleep(0)
        assert conv.health().ok  # failing for 4 s: within its bound (10 s)
        assert conv.stats().producer("inverter").failing_since == grid(T0 + 4)
        while calls["n"] < 20:  # noqa: ASYNC110 - turns of the loop, fake time
            await asyncio.sleep(0)
        health = conv.health()
        assert not health.ok, (clock.time() - T0, conv.stats().producer("inverter"))
        assert list(health.problems) == ["producer:inverter"]
        assert "every call failed" in health.problems["producer:inverter"]
        assert "ConnectionError: inverter unreachable" in health.problems["producer:inverter"]
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_producer_overrunning_every_other_tick_logs_a_few_lines_not_one_per_miss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """10 fake minutes at 1 s: every other call takes 1.5 s, so a tick is missed every
    2 s (300 in all). The misses are counted in full; the log gets the first one and the
    limiter's doubling reminders (60, 180, 420 s), and no "back on schedule" line between
    misses."""
    import logging

    clock = FakeClock()
    calls = 0

    async def flapping(event_time: datetime) -> int:
        nonlocal calls
        calls += 1
        if calls % 2 == 0:
            await clock.sleep(1.5)
        return calls

    caplog.set_level(logging.INFO, logger="aioconveyor")
    conv = AioConveyor(flapping, [MemoryConsumer()], loop_interval=1.0, clock=clock,
                       max_ticks=400, name="flap")
    conv.start()
    assert conv.join(60) and conv.exception is None
    missed = conv.stats().missed_ticks
    lines = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()
             or "back on schedule" in r.getMessage()]
    assert missed >= 150, missed
    assert 2 <= len(lines) <= 6, lines
    assert not any("back on schedule" in line for line in lines[:-1]), lines
