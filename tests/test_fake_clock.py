"""The scheduler loop driven by FakeClock: hours of ticks in milliseconds, deterministic."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from aioconveyor import AioConveyor, current_tick
from aioconveyor.testing import FakeClock, MemoryConsumer

T0 = 1_794_999_600.0  # a whole hour: on every grid used below


def grid(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class Recorder:
    """A producer that notes when it ran, and may take fake time or step the clock."""

    def __init__(self, clock: FakeClock, *, work: dict[int, float] | None = None,
                 steps: dict[int, float] | None = None) -> None:
        self.clock = clock
        self.work = work or {}
        self.steps = steps or {}
        self.calls: list[tuple[datetime, float]] = []

    async def __call__(self, event_time: datetime) -> dict[str, object]:
        n = len(self.calls)
        self.calls.append((event_time, self.clock.time()))
        if n in self.steps:
            self.clock.step(self.steps[n])
        if n in self.work:
            await self.clock.sleep(self.work[n])
        return {"n": n}

    @property
    def event_times(self) -> list[datetime]:
        return [e for e, _ in self.calls]


async def run(clock: FakeClock, producer: Recorder, ticks: int, **kwargs: object) -> AioConveyor:
    sink = MemoryConsumer()
    conv = AioConveyor(producer, [sink], clock=clock, max_ticks=ticks, **kwargs)  # type: ignore[arg-type]
    await conv.run()
    assert sink.data == [{"n": i} for i in range(len(producer.calls))]
    return conv


async def test_ticks_land_exactly_on_the_grid_with_offset() -> None:
    clock = FakeClock(start=T0 + 3.3)
    producer = Recorder(clock)
    await run(clock, producer, 5, loop_interval=60, loop_offset=15)
    assert producer.event_times == [grid(T0 + 15 + 60 * k) for k in range(5)]
    assert [t for _, t in producer.calls] == [T0 + 15 + 60 * k for k in range(5)]


async def test_a_day_of_one_second_ticks_never_drifts() -> None:
    clock = FakeClock(start=T0 + 0.5)
    producer = Recorder(clock, work={i: 0.3 for i in range(0, 2000, 7)})
    conv = await run(clock, producer, 2000, loop_interval=1.0)
    assert producer.event_times[-1] == grid(T0 + 2000)
    assert conv.stats().missed_ticks == 0


async def test_overrun_skips_missed_ticks_and_counts_them() -> None:
    clock = FakeClock(start=T0 + 1)
    producer = Recorder(clock, work={1: 25})  # tick 1 (T0+20) runs until T0+45
    # the producer timeout runs on the fake clock too: allow the 25 s overrun
    conv = await run(clock, producer, 4, loop_interval=10, producer_timeout=60)
    assert producer.event_times == [grid(T0 + 10), grid(T0 + 20), grid(T0 + 50), grid(T0 + 60)]
    assert conv.stats().missed_ticks == 2


async def test_overrun_with_coalesce_runs_the_latest_missed_tick_once() -> None:
    clock = FakeClock(start=T0 + 1)
    producer = Recorder(clock, work={1: 25})  # tick for T0+20 ends at T0+45
    conv = await run(clock, producer, 4, loop_interval=10, misfire="coalesce", misfire_grace=6,
                     producer_timeout=60)
    assert producer.event_times == [grid(T0 + 10), grid(T0 + 20), grid(T0 + 40), grid(T0 + 50)]
    assert producer.calls[2][1] == T0 + 45  # ran at once, late, for T0+40
    assert conv.stats().missed_ticks == 1


async def test_wall_clock_step_forward_is_logged_and_skipped_without_a_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(start=T0 + 1)
    producer = Recorder(clock, steps={1: 3600.0})
    conv = await run(clock, producer, 4, loop_interval=10)
    times = producer.event_times
    assert times[:2] == [grid(T0 + 10), grid(T0 + 20)]
    assert times[2] >= grid(T0 + 3620)  # no catch-up burst for the skipped hour
    assert len(set(times)) == len(times)
    stats = conv.stats()
    assert stats.clock_jumps == 1 and stats.missed_ticks >= 359
    assert "wall clock stepped by +3600.000 s" in caplog.text


async def test_wall_clock_step_backward_never_repeats_a_grid_time() -> None:
    clock = FakeClock(start=T0 + 1)
    producer = Recorder(clock, steps={1: -3600.0})
    conv = await run(clock, producer, 4, loop_interval=10)
    assert producer.event_times == [grid(T0 + 10 * k) for k in range(1, 5)]
    assert conv.stats().clock_jumps == 1


async def test_eager_first_tick_and_max_ticks() -> None:
    clock = FakeClock(start=T0 + 4)
    producer = Recorder(clock)
    await run(clock, producer, 3, loop_interval=10, eager=True)
    assert producer.event_times == [grid(T0), grid(T0 + 10), grid(T0 + 20)]
    assert producer.calls[0][1] == T0 + 4


async def test_jitter_delays_start_but_not_event_time() -> None:
    clock = FakeClock(start=T0 + 1)
    producer = Recorder(clock)
    await run(clock, producer, 20, loop_interval=10, jitter=3.0, seed=7)
    for k, (event_time, started) in enumerate(producer.calls, start=1):
        assert event_time == grid(T0 + 10 * k)
        assert T0 + 10 * k <= started <= T0 + 10 * k + 3.0
    assert len({started - (T0 + 10 * k) for k, (_, started) in enumerate(producer.calls, 1)}) > 1


async def test_cron_schedule_ticks_on_cron_times() -> None:
    clock = FakeClock(start=T0 + 1)
    producer = Recorder(clock)
    await run(clock, producer, 3, cron="*/5 * * * *")
    first = (T0 // 300 + 1) * 300
    assert producer.event_times == [grid(first + 300 * k) for k in range(3)]


async def test_producer_errors_are_counted_and_backoff_skips_ticks() -> None:
    clock = FakeClock(start=T0 + 1)
    calls: list[datetime] = []

    async def flaky(event_time: datetime) -> int:
        calls.append(event_time)
        if len(calls) <= 3:
            raise RuntimeError("sensor offline")
        return len(calls)

    conv = AioConveyor(flaky, [], loop_interval=10, clock=clock, max_ticks=5, error_backoff=40)
    await conv.run()
    s = conv.stats()
    assert s.producer_errors == 3 and s.produced == 2
    # errors 1, 2, 3 back off 10, 20, 40 s: ticks after them move further apart
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(calls)]
    assert gaps == [10, 20, 40, 10]


async def test_current_tick_is_visible_to_producer_and_consumers() -> None:
    clock = FakeClock(start=T0 + 1)
    seen: list[tuple[str, int, datetime]] = []

    async def produce(event_time: datetime) -> str:
        tick = current_tick()
        assert tick is not None
        seen.append(("producer", tick.index, tick.event_time))
        return "x"

    def sync_consumer(data: str, event_time: datetime) -> None:
        tick = current_tick()
        assert tick is not None and tick.event_time == event_time
        seen.append(("sync", tick.index, tick.event_time))

    conv = AioConveyor(produce, [sync_consumer], loop_interval=10, clock=clock, max_ticks=2)
    await conv.run()
    assert sorted(seen) == sorted(
        [(who, i, grid(T0 + 10 * (i + 1))) for who in ("producer", "sync") for i in range(2)]
    )
    assert current_tick() is None


class TakeTurns:
    """A Leader backend that grants every other tick (the protocol, without a server)."""

    def __init__(self) -> None:
        self.asked = 0
        self.opened = self.closed = False
        self.role = "unknown"
        self.since: datetime | None = None
        self.takeovers = 0

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def lead(self, event_time: datetime) -> bool:
        self.asked += 1
        if self.asked == 5:
            raise ConnectionError("lost the lock connection")
        leading = self.asked % 2 == 1
        new_role = "leader" if leading else "standby"
        if new_role != self.role:
            self.role, self.since = new_role, event_time
            self.takeovers += leading
        return leading


async def test_only_the_leader_produces_and_doubt_means_standby() -> None:
    clock = FakeClock(start=T0 + 1)
    producer = Recorder(clock)
    leader = TakeTurns()
    conv = AioConveyor(producer, [], loop_interval=10, clock=clock, max_ticks=6, leader=leader)
    await conv.run()
    # asked 1..6: leads on 1, 3 (5 raised: stand by)
    assert producer.event_times == [grid(T0 + 10), grid(T0 + 30)]
    s = conv.stats()
    assert s.standby_ticks == 4 and s.ticks == 6
    assert (s.leader_role, s.takeovers) == ("standby", 2)
    assert leader.opened and leader.closed
