"""Fault injection on the core: hung, failing and dead consumers, flaky producers.

Each test bounds its own time; servers are not involved here (see test_postgres.py and
test_mqtt.py for database and broker outages).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import resource
import threading
import time
import tracemalloc
from datetime import datetime
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer
from aioconveyor.testing import FakeClock, MemoryConsumer, wait_until_blocking


class Numbers:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, event_time: datetime) -> int:
        self.n += 1
        return self.n


def test_a_hanging_async_consumer_is_cancelled_within_two_intervals_by_default() -> None:
    interval = 0.5  # default consumer timeout: 2 intervals (at least 1 s)
    started: list[float] = []

    async def hang(data: int, event_time: datetime) -> None:
        started.append(time.monotonic())
        await asyncio.Event().wait()

    sink = MemoryConsumer()
    conv = AioConveyor(Numbers(), [hang, sink], loop_interval=interval, stop_timeout=1.0)
    conv.start()
    try:
        assert wait_until_blocking(lambda: conv.stats().consumers[0].timeouts >= 1,
                                   timeout=2 * interval + 3)
        assert time.monotonic() - started[0] <= 2 * interval + 0.5
        assert wait_until_blocking(lambda: len(started) >= 2, timeout=5)  # the next call began
        produced = conv.stats().produced
        assert sink.wait_for(produced)
        assert sink.data == list(range(1, len(sink.data) + 1))  # 100 % delivery meanwhile
    finally:
        t = time.monotonic()
        conv.stop()
        assert time.monotonic() - t < 1.0 + 1.5  # stop() still keeps its timeout
    c = conv.stats().consumers[0]
    assert c.timeouts >= 1 and c.abandoned == 0  # cancellation was honoured


def test_a_hung_sync_consumer_holds_one_thread_and_starts_no_other_call() -> None:
    interval = 0.1
    release = threading.Event()
    started: list[float] = []

    def hang(data: int, event_time: datetime) -> None:
        started.append(time.monotonic())
        if len(started) > 3:  # the first calls work: every thread of the lane exists by then
            release.wait(60)

    sink = MemoryConsumer()
    conv = AioConveyor(Numbers(), [Consumer(hang, timeout=0.2, queue_size=5), sink],
                       loop_interval=interval, stop_timeout=1.0)
    conv.start()
    try:
        assert wait_until_blocking(lambda: len(started) >= 3, timeout=5)
        baseline = threading.active_count()
        assert wait_until_blocking(lambda: conv.stats().consumers[0].timeouts >= 1, timeout=5)
        assert sink.wait_for(sink_count := len(sink.data) + 20)  # past many timeouts
        assert len(started) == 4  # no second call while the fourth hangs
        assert threading.active_count() <= baseline  # the hung call kept its one thread
        c = conv.stats().consumers[0]
        assert c.timeouts == 1 and c.abandoned == 1 and c.dropped > 0  # its queue overflowed
        assert sink.data[:sink_count] == list(range(1, sink_count + 1))  # 100 % for the others
        release.set()  # the call returns: the lane goes on with what it has queued
        assert wait_until_blocking(lambda: len(started) >= 5, timeout=5)
    finally:
        release.set()
        conv.stop()


def test_a_producer_failing_on_a_fifth_of_ticks_is_counted_exactly() -> None:
    rng = random.Random(20261123)
    fails = [rng.random() < 0.2 for _ in range(300)]
    calls = 0

    async def flaky(event_time: datetime) -> int:
        nonlocal calls
        calls += 1
        if fails[calls - 1]:
            raise OSError("inverter did not answer")
        return calls

    sink = MemoryConsumer()
    conv = AioConveyor(flaky, [sink], loop_interval=1, clock=FakeClock(), max_ticks=300)
    asyncio.run(conv.run())
    s = conv.stats()
    assert s.ticks == 300 and s.producer_errors == sum(fails) > 40
    assert s.produced == 300 - sum(fails) == len(sink.data)


def test_a_consumer_that_always_raises_backs_off_boundedly_and_harms_no_one() -> None:
    attempts: list[float] = []

    async def broken(data: int, event_time: datetime) -> None:
        attempts.append(time.monotonic())
        raise ConnectionRefusedError("sink down")

    sink = MemoryConsumer()
    conv = AioConveyor(Numbers(), [Consumer(broken, retries=10**6, backoff=0.01, max_backoff=0.08,
                                            queue_size=20), sink],
                       loop_interval=0.01, max_ticks=150, stop_timeout=0.5)
    with conv:
        assert conv.join(20)
    gaps = [b - a for a, b in itertools.pairwise(attempts)][:10]  # while ticking, not at stop
    assert max(gaps) < 0.5  # capped at 0.08 s (+50 % jitter, + slack for a busy machine)
    assert sorted(gaps)[len(gaps) // 2] > 0.02  # and it really backs off
    s = conv.stats()
    assert sink.data == list(range(1, 151))
    c = s.consumers[0]
    assert c.queued + c.in_flight <= 21 and c.dropped > 0  # memory bounded by the queue
    assert c.offered == c.dropped + c.queued + c.in_flight + c.delivered + c.failed


def test_a_permanently_dead_sink_holds_its_queue_bound_and_memory_over_a_long_run() -> None:
    async def dead(data: Any, event_time: datetime) -> None:
        raise ConnectionError("no route to host")

    async def big(event_time: datetime) -> bytes:
        return bytes(10_000)

    clock = FakeClock(settle=5)
    conv = AioConveyor(big, [Consumer(dead, queue_size=100, retries=10**6, backoff=3600)],
                       loop_interval=1, clock=clock, max_ticks=5_000, stop_timeout=0.2)
    gc.collect()
    tracemalloc.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    asyncio.run(conv.run())
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    c = conv.stats().consumers[0]
    assert c.offered == 5_000 and c.dropped >= 5_000 - 101
    assert current < 5_000_000  # 100 queued items of 10 kB, not 5 000 of them (50 MB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000  # kB


def test_stop_during_an_outage_returns_in_time_and_reports_the_undelivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def unreachable(data: Any, event_time: datetime) -> None:
        await asyncio.sleep(0.05)
        raise ConnectionError("timed out")

    conv = AioConveyor(Numbers(), [Consumer(unreachable, name="pg", retries=10**6,
                                            backoff=0.05)], loop_interval=0.01)
    conv.start()
    assert wait_until_blocking(lambda: conv.stats().consumer("pg").queued >= 20)
    t = time.monotonic()
    conv.stop(timeout=0.5)
    assert time.monotonic() - t < 2.0
    c = conv.stats().consumer("pg")
    assert c.delivered == 0 and c.queued == 0 and c.dropped == conv.stats().produced
    assert "queued item(s) not delivered" in caplog.text
