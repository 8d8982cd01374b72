"""SystemClock: sleeps end at the deadline, never before it, with and without timerfd."""

from __future__ import annotations

import asyncio
import time

import pytest

from aioconveyor import SystemClock


@pytest.mark.parametrize("precise", [True, False], ids=["timerfd", "asyncio"])
def test_sleep_until_never_wakes_early_and_is_punctual(precise: bool) -> None:
    clock = SystemClock(precise=precise)

    async def main() -> list[float]:
        late = []
        for _ in range(20):
            deadline = time.time() + 0.005
            await clock.sleep_until(deadline)
            late.append(time.time() - deadline)
        return late

    late = asyncio.run(main())
    assert min(late) >= 0
    assert sorted(late)[len(late) // 2] < 0.002  # generous: shared CI machines are noisy


def test_sleep_until_a_past_deadline_returns_at_once() -> None:
    clock = SystemClock()
    started = time.monotonic()
    asyncio.run(clock.sleep_until(time.time() - 10))
    assert time.monotonic() - started < 0.5


def test_long_sleeps_are_cut_into_chunks_and_cancellable() -> None:
    clock = SystemClock(max_chunk=0.01)

    async def main() -> None:
        task = asyncio.create_task(clock.sleep_until(time.time() + 3600))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_clock_serves_concurrent_sleepers_in_one_loop() -> None:
    clock = SystemClock()

    async def main() -> None:
        now = time.time()
        deadlines = [now + 0.01 * i for i in range(1, 6)]
        await asyncio.gather(*(clock.sleep_until(d) for d in deadlines))
        assert time.time() >= deadlines[-1]

    asyncio.run(main())


def test_fixed_margin_is_kept_within_the_sleep_and_off_with_busy_0() -> None:
    assert SystemClock(margin=0.0005)._margin(1.0) == 0.0005
    assert SystemClock(margin=0.0005)._margin(0.0002) == 0.0002  # never before the sleep
    assert SystemClock(margin=0.0005, busy=0.25)._margin(0.001) == 0.0005
    assert SystemClock(margin=0.0005, busy=0)._margin(1.0) == 0


@pytest.mark.parametrize("busy", [-0.1, 1.5, float("nan")])
def test_busy_must_be_a_share(busy: float) -> None:
    with pytest.raises(ValueError, match="busy"):
        SystemClock(busy=busy)


@pytest.mark.parametrize("busy", [0.0, 0.01, 1.0])
def test_sleep_until_is_punctual_at_both_ends_of_busy(busy: float) -> None:
    clock = SystemClock(busy=busy)

    async def main() -> list[float]:
        late = []
        for _ in range(20):
            deadline = time.time() + 0.002
            await clock.sleep_until(deadline)
            late.append(time.time() - deadline)
        return late

    late = asyncio.run(main())
    assert min(late) >= 0
    assert sorted(late)[len(late) // 2] < 0.002


def test_a_cancelled_sleep_leaves_the_loop_clean() -> None:
    clock = SystemClock()

    async def main() -> None:
        task = asyncio.create_task(clock.sleep_until(time.time() + 0.05))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await clock.sleep_until(time.time() + 0.01)  # a fresh timer, as punctual

    asyncio.run(main())
