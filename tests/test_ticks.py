"""aioconveyor.ticks(): the pull face, on the conveyor's grid, misfire rules and clock.

All on FakeClock: the blocking face advances the fake clock, the async face autojumps.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

import aioconveyor
from aioconveyor import IntervalSchedule, SettingError, Tick
from aioconveyor.testing import FakeClock

T0 = 1_700_000_000.0  # a multiple of 10 (and of 60 * 20)


def grid(ts: list[Tick]) -> list[float]:
    return [t.event_time.timestamp() for t in ts]


def test_sync_iteration_yields_exact_grid_times() -> None:
    clock = FakeClock(start=T0 + 1)
    got = list(aioconveyor.ticks(every=10, offset=2, clock=clock, max_ticks=4))
    assert grid(got) == [T0 + 2, T0 + 12, T0 + 22, T0 + 32]
    assert [t.index for t in got] == [0, 1, 2, 3]
    assert all(t.event_time.tzinfo is UTC for t in got)
    assert all(t.scheduled == t.started == t.event_time.timestamp() for t in got)
    assert all(t.missed_before == 0 for t in got)
    assert clock.time() == T0 + 32


def test_async_iteration_yields_the_same_grid() -> None:
    clock = FakeClock(start=T0 + 1)

    async def main() -> list[Tick]:
        return [t async for t in aioconveyor.ticks(every=10, offset=2, clock=clock,
                                                   max_ticks=4)]

    got = asyncio.run(main())
    assert grid(got) == [T0 + 2, T0 + 12, T0 + 22, T0 + 32]
    assert [t.lateness for t in got] == [0.0] * 4


def test_a_slow_caller_misses_ticks_with_skip() -> None:
    clock = FakeClock(start=T0 + 1)
    it = aioconveyor.ticks(every=10, clock=clock)
    first = next(it)
    assert first.event_time.timestamp() == T0 + 10
    clock.advance(35)  # the caller's work took 3.5 periods: T0+20, +30, +40 passed
    second = next(it)
    assert second.missed_before == 3
    assert second.event_time.timestamp() == T0 + 50
    assert second.index == 1
    assert next(it).missed_before == 0  # back on schedule


def test_a_slow_caller_gets_the_coalesced_tick() -> None:
    clock = FakeClock(start=T0 + 1)
    it = aioconveyor.ticks(every=10, clock=clock, misfire="coalesce")
    next(it)  # T0+10
    clock.advance(35)  # now T0+45: the latest passed grid time T0+40 is 5 s old (grace 5)
    late = next(it)
    assert late.event_time.timestamp() == T0 + 40
    assert late.started == late.scheduled == T0 + 45
    assert late.missed_before == 2  # T0+20 and T0+30
    assert next(it).event_time.timestamp() == T0 + 50


def test_coalesce_outside_the_grace_skips() -> None:
    clock = FakeClock(start=T0 + 1)
    it = aioconveyor.ticks(every=10, clock=clock, misfire="coalesce", misfire_grace=1)
    next(it)
    clock.advance(35)
    tick = next(it)
    assert (tick.event_time.timestamp(), tick.missed_before) == (T0 + 50, 3)


def test_a_slow_async_caller_misses_ticks_too() -> None:
    clock = FakeClock(start=T0 + 1)

    async def main() -> list[Tick]:
        it = aioconveyor.ticks(every=10, clock=clock, max_ticks=2)
        first = await anext(it)
        clock.advance(35)
        return [first, await anext(it)]

    first, second = asyncio.run(main())
    assert grid([first, second]) == [T0 + 10, T0 + 50]
    assert second.missed_before == 3


def test_cron() -> None:
    clock = FakeClock(start=T0 + 1)  # 2023-11-14 22:13:21 UTC
    got = list(aioconveyor.ticks(cron="*/5 * * * *", clock=clock, max_ticks=3))
    assert [t.event_time for t in got] == [
        datetime(2023, 11, 14, 22, m, tzinfo=UTC) for m in (15, 20, 25)
    ]


def test_a_schedule_object() -> None:
    clock = FakeClock(start=T0)
    got = list(aioconveyor.ticks(schedule=IntervalSchedule(20, 3), clock=clock, max_ticks=2))
    assert grid(got) == [T0 + 3, T0 + 23]


def test_eager_fires_the_current_slot_at_once() -> None:
    clock = FakeClock(start=T0 + 7)
    got = list(aioconveyor.ticks(every=10, clock=clock, eager=True, max_ticks=2))
    assert grid(got) == [T0, T0 + 10]
    assert got[0].started == T0 + 7


def test_jitter_is_seeded_and_stays_in_range() -> None:
    def run() -> list[float]:
        clock = FakeClock(start=T0 + 1)
        got = list(aioconveyor.ticks(every=10, jitter=2, seed=7, clock=clock, max_ticks=5))
        assert grid(got) == [T0 + 10 * k for k in range(1, 6)]
        return [t.scheduled - t.event_time.timestamp() for t in got]

    delays = run()
    assert delays == run()
    assert all(0 <= d <= 2 for d in delays)


def test_max_ticks_stops_both_faces() -> None:
    clock = FakeClock(start=T0)
    it = aioconveyor.ticks(every=1, clock=clock, max_ticks=2)
    assert len(list(it)) == 2
    with pytest.raises(StopIteration):
        next(it)

    async def more() -> list[Tick]:
        return [t async for t in it]

    assert asyncio.run(more()) == []  # the same object: its count is shared


def test_both_faces_share_one_grid() -> None:
    clock = FakeClock(start=T0 + 1)
    it = aioconveyor.ticks(every=10, clock=clock)
    first = next(it)

    async def one() -> Tick:
        return await anext(it)

    second = asyncio.run(one())
    assert grid([first, second, next(it)]) == [T0 + 10, T0 + 20, T0 + 30]


def test_a_wall_clock_step_backwards_does_not_repeat_a_grid_time() -> None:
    clock = FakeClock(start=T0 + 1)
    it = aioconveyor.ticks(every=10, clock=clock)
    assert next(it).event_time.timestamp() == T0 + 10
    clock.step(-25)  # NTP step back: wall time T0-15
    after = [next(it), next(it)]
    assert grid(after) == [T0 + 20, T0 + 30]
    assert [t.missed_before for t in after] == [0, 0]


def test_a_wall_clock_step_backwards_async() -> None:
    clock = FakeClock(start=T0 + 1)

    async def main() -> list[Tick]:
        it = aioconveyor.ticks(every=10, clock=clock, max_ticks=3)
        first = await anext(it)
        clock.step(-25)
        return [first, *[t async for t in it]]

    assert grid(asyncio.run(main())) == [T0 + 10, T0 + 20, T0 + 30]


@pytest.mark.parametrize(("kwargs", "name"), [
    ({}, "every"),
    ({"every": 0}, "every"),
    ({"every": "5"}, "every"),
    ({"every": 5, "offset": 5}, "offset"),
    ({"every": 5, "offset": -1}, "offset"),
    ({"every": 5, "cron": "* * * * *"}, "cron"),
    ({"every": 5, "schedule": IntervalSchedule(5)}, "schedule"),
    ({"cron": "* * * * *", "schedule": IntervalSchedule(5)}, "schedule"),
    ({"cron": "not cron"}, "cron"),
    ({"cron": "* * * * *", "offset": 1}, "offset"),
    ({"schedule": IntervalSchedule(5), "offset": 1}, "offset"),
    ({"schedule": object()}, "schedule"),
    ({"every": 5, "cron_tz": UTC}, "cron_tz"),
    ({"cron": "* * * * *", "cron_tz": "UTC"}, "cron_tz"),
    ({"every": 5, "misfire": "later"}, "misfire"),
    ({"every": 5, "misfire_grace": -1}, "misfire_grace"),
    ({"every": 5, "eager": 1}, "eager"),
    ({"every": 5, "jitter": 5}, "jitter"),
    ({"every": 5, "jitter": -0.1}, "jitter"),
    ({"every": 5, "seed": 1.5}, "seed"),
    ({"every": 5, "max_ticks": 0}, "max_ticks"),
    ({"every": 5, "max_ticks": True}, "max_ticks"),
    ({"every": 5, "clock": object()}, "clock"),
])
def test_bad_arguments_raise_setting_error_naming_them(kwargs: dict[str, object],
                                                        name: str) -> None:
    with pytest.raises(SettingError) as info:
        aioconveyor.ticks(**kwargs)  # type: ignore[arg-type]
    assert info.value.name == name
    assert str(info.value).startswith(name)


def test_the_conveyor_keeps_its_own_argument_names() -> None:
    with pytest.raises(SettingError, match=r"^loop_offset") as info:
        aioconveyor.AioConveyor(lambda t: None, loop_interval=5, loop_offset=5)
    assert info.value.name == "loop_offset"
    with pytest.raises(SettingError, match="give only one of loop_interval"):
        aioconveyor.AioConveyor(lambda t: None, loop_interval=5, cron="* * * * *")
