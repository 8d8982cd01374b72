"""A lane's delivery within one step (``Lane._deliver_now``, issue 14 point 9).

An async consumer of one item per call is first called without a coroutine of the lane's
own, and a call that returns at once goes from queued to delivered in one ledger section.
Everything else (a call that suspends, raises, is rejected, counts rejections itself, an
uncopyable payload) must come out exactly as through the lane's general path: in order,
in the consumer's own lane task, every item in one place.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer, Rejected, current_tick
from aioconveyor._lanes import Lane
from aioconveyor.testing import FakeClock

TICKS = 12


class Counter:
    """A producer returning 1, 2, 3, ... (or what ``make`` makes of n)."""

    def __init__(self, make: Callable[[int], Any] = lambda n: n) -> None:
        self.n = 0
        self.make = make

    async def __call__(self, event_time: datetime) -> Any:
        self.n += 1
        return self.make(self.n)


def run(produce: Any, consumers: list[Any], **kw: Any) -> AioConveyor:
    conv = AioConveyor(produce, consumers, loop_interval=1.0, clock=FakeClock(),
                       max_ticks=TICKS, seed=1, **kw)
    asyncio.run(conv.run())
    assert conv.exception is None
    return conv


def balanced(conv: AioConveyor) -> None:
    for c in conv.stats().consumers:
        assert c.offered == c.delivered + c.rejected + c.dropped + c.failed + c.queued \
            + c.in_flight
        assert c.queued == 0 and c.in_flight == 0


def test_the_fast_path_is_taken_for_a_plain_async_consumer() -> None:
    taken: list[int] = []
    calls: list[int] = []
    orig = Lane._deliver_now

    def spy(self: Lane) -> Any:
        calls.append(1)
        return orig(self)

    async def sink(data: int, event_time: datetime) -> None:
        taken.append(data)

    Lane._deliver_now = spy  # type: ignore[method-assign]
    try:
        conv = run(Counter(), [sink])
    finally:
        Lane._deliver_now = orig  # type: ignore[method-assign]
    assert taken == list(range(1, TICKS + 1))
    assert len(calls) == TICKS
    balanced(conv)
    assert conv.stats().consumers[0].delivered == TICKS


def test_the_call_runs_in_the_lane_task_with_its_tick_and_a_working_timeout() -> None:
    seen: list[tuple[str, bool]] = []

    async def sink(data: int, event_time: datetime) -> None:
        task = asyncio.current_task()
        assert task is not None
        if data % 2:  # entered in the first step (needs a task), left in the next
            async with asyncio.timeout(10):
                await asyncio.sleep(0)
        assert asyncio.current_task() is task
        tick = current_tick()
        seen.append((task.get_name(), tick is not None and tick.event_time == event_time))

    run(Counter(), [sink])
    assert len(seen) == TICKS
    assert all("lane[sink]" in name and ok for name, ok in seen)


def test_calls_that_suspend_keep_the_order_and_count_in_flight() -> None:
    taken: list[int] = []
    in_flight: list[int] = []
    conv_box: list[AioConveyor] = []

    async def slow(data: int, event_time: datetime) -> None:
        in_flight.append(conv_box[0].stats().consumers[0].in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        taken.append(data)

    conv = AioConveyor(Counter(), [slow], loop_interval=1.0, clock=FakeClock(),
                       max_ticks=TICKS, seed=1)
    conv_box.append(conv)
    asyncio.run(conv.run())
    assert taken == list(range(1, TICKS + 1))
    assert set(in_flight) <= {0, 1}  # queued until its first step ends, never lost
    balanced(conv)


def test_failures_retries_and_rejections_go_the_general_way() -> None:
    attempts: dict[int, int] = {}
    taken: list[int] = []

    async def flaky(data: int, event_time: datetime) -> None:
        attempts[data] = attempts.get(data, 0) + 1
        if data % 3 == 0:
            raise Rejected("no threes")
        if data % 2 == 0 and attempts[data] == 1:
            raise ValueError("once")
        if data == 7:
            raise ValueError("always")
        taken.append(data)

    conv = run(Counter(), [Consumer(flaky, retries=1, backoff=0.01, backoff_jitter=0)])
    s = conv.stats().consumers[0]
    assert taken == [n for n in range(1, TICKS + 1) if n % 3 and n != 7]
    assert s.rejected == len([n for n in range(1, TICKS + 1) if n % 3 == 0])
    assert s.failed == 1 and s.retries >= 1
    assert attempts[7] == 2
    balanced(conv)


def test_a_consumers_own_rejected_counter_is_honoured() -> None:
    class Skipping:
        def __init__(self) -> None:
            self.rejected = 0
            self.taken: list[int] = []

        async def __call__(self, data: int, event_time: datetime) -> None:
            if data % 4 == 0:
                self.rejected += 1
            else:
                self.taken.append(data)

    sink = Skipping()
    conv = run(Counter(), [Consumer(sink, name="skipping")])
    s = conv.stats().consumers[0]
    assert s.rejected == TICKS // 4
    assert s.delivered == TICKS - TICKS // 4
    balanced(conv)


def test_an_uncopyable_item_is_dropped_and_the_lane_goes_on() -> None:
    taken: list[Any] = []

    async def sink(data: Any, event_time: datetime) -> None:
        taken.append(data)

    def make(n: int) -> Any:
        return {"lock": threading.Lock()} if n == 5 else {"n": n}

    conv = run(Counter(make), [sink])
    s = conv.stats().consumers[0]
    assert [d["n"] for d in taken] == [n for n in range(1, TICKS + 1) if n != 5]
    assert s.dropped == 1
    balanced(conv)


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_a_base_exception_in_the_first_step_is_contained(kind: type[BaseException]) -> None:
    taken: list[int] = []

    async def sink(data: int, event_time: datetime) -> None:
        if data == 3:
            raise kind()
        taken.append(data)

    conv = run(Counter(), [sink])
    s = conv.stats().consumers[0]
    assert taken == [n for n in range(1, TICKS + 1) if n != 3]
    assert s.failed == 1 and s.restarts == 0
    balanced(conv)
