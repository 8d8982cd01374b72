"""The conveyor for real: its own thread and loop, real time (short intervals, generous bounds)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest

from aioconveyor import (
    AioConveyor,
    Batch,
    Consumer,
    IntervalSchedule,
    RestartBudgetExceeded,
    RetryAfter,
    StartupError,
)
from aioconveyor.testing import FakeClock, MemoryConsumer, wait_until_blocking

FAST = 0.05


class Counter:
    """A producer returning 0, 1, 2, ... as dicts (mutable, to check copies)."""

    def __init__(self) -> None:
        self.n = 0

    async def __call__(self, event_time: datetime) -> dict[str, Any]:
        self.n += 1
        return {"n": self.n - 1, "event_time": event_time, "tags": ["a"]}


def assert_lanes_add_up(conv: AioConveyor) -> None:
    s = conv.stats()
    for c in s.consumers:
        assert c.offered == c.delivered + c.rejected + c.dropped + c.failed + c.queued + c.in_flight, c
        assert c.offered == s.produced, c


# -- the seed example ------------------------------------------------------------------


async def produce_arg(name: str, event_time: datetime) -> str:
    """toy producer (the seed README's, unchanged but for the print)"""
    return f"hello {name} {time.time()}"


def test_seed_example_runs_unchanged() -> None:
    received: list[tuple[str, datetime]] = []
    done = threading.Event()

    async def consume(data: str, event_time: datetime) -> int:
        """toy consumer"""
        received.append((data, event_time))
        if len(received) >= 6:
            done.set()
        return 0

    async def main() -> None:
        conv = AioConveyor(
            produce=partial(produce_arg, "paul"),
            consumers=[consume, consume],
            loop_interval=FAST,
        )
        conv.start()
        while conv.running and not done.is_set():  # noqa: ASYNC110 - the seed polls
            await asyncio.sleep(0.01)
        conv.stop()
        assert not conv.running

    asyncio.run(main())
    assert len(received) >= 6
    for data, event_time in received:
        assert data.startswith("hello paul ")
        assert event_time.tzinfo is UTC
        assert event_time.microsecond % 50_000 == 0  # exactly on the 0.05 s grid


def test_sync_and_async_producers_and_consumers_mix() -> None:
    got_sync: list[int] = []
    thread_names: set[str] = set()

    def produce(event_time: datetime) -> int:
        return int(event_time.timestamp() * 1000)

    def sync_consumer(data: int, event_time: datetime) -> None:
        thread_names.add(threading.current_thread().name)
        got_sync.append(data)

    sink = MemoryConsumer()
    with AioConveyor(produce, [sync_consumer, sink], loop_interval=FAST) as conv:
        assert sink.wait_for(4)
    assert got_sync[:4] == sink.data[:4]
    assert all("lane[sync_consumer]" in n for n in thread_names)
    assert_lanes_add_up(conv)


def test_async_with_and_run_in_callers_loop() -> None:
    async def main() -> None:
        sink = MemoryConsumer()
        async with AioConveyor(Counter(), [sink], loop_interval=FAST) as conv:
            assert conv.running
            assert await sink.async_wait_for(3)
        assert not conv.running

        sink2 = MemoryConsumer()
        conv2 = AioConveyor(Counter(), [sink2], loop_interval=FAST, max_ticks=3)
        await conv2.run()
        assert [d["n"] for d in sink2.data] == [0, 1, 2]

    asyncio.run(main())


def test_run_is_stopped_by_cancellation_and_drains() -> None:
    async def main() -> None:
        sink = MemoryConsumer()
        conv = AioConveyor(Counter(), [sink], loop_interval=FAST)
        task = asyncio.create_task(conv.run())
        assert await sink.async_wait_for(2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not conv.running
        assert_lanes_add_up(conv)

    asyncio.run(main())


# -- isolation -------------------------------------------------------------------------


def test_failing_hung_and_slow_consumers_do_not_disturb_a_normal_one() -> None:
    async def raising(data: Any, event_time: datetime) -> None:
        raise ValueError("disk on fire")

    async def hung(data: Any, event_time: datetime) -> None:
        await asyncio.Event().wait()

    def hung_sync(data: Any, event_time: datetime) -> None:
        threading.Event().wait(30)

    clock = FakeClock(thread_grace=0.3)  # the hung sync call holds fake time 0.3 s at most

    async def slow(data: Any, event_time: datetime) -> None:
        await clock.sleep(FAST * 3)

    sink = MemoryConsumer()
    producer = Counter()
    conv = AioConveyor(
        producer,
        [
            raising,
            Consumer(hung, timeout=0.2),
            Consumer(hung_sync, timeout=0.2),
            Consumer(slow, queue_size=2),
            sink,
        ],
        loop_interval=FAST,
        clock=clock,  # on time exactly, so "no tick missed" is a fact, not a race with load
    )
    with conv:
        assert sink.wait_for(20, timeout=20)
    s = conv.stats()
    # the normal consumer got every produced item, in order, none missing
    assert [d["n"] for d in sink.data] == list(range(s.produced))
    assert s.missed_ticks == 0
    assert s.consumer("raising").errors >= 10
    assert s.consumer("raising").failed == s.consumer("raising").errors
    assert s.consumer("raising").last_error == "ValueError: disk on fire"
    assert s.consumer("hung").timeouts >= 2
    hs = s.consumer("hung_sync")
    # one hung call, one thread: the lane waits for it instead of starting more
    assert hs.timeouts == 1 and hs.abandoned == 1 and hs.restarts == 0
    assert s.consumer("slow").dropped > 0
    assert_lanes_add_up(conv)


def test_each_consumer_gets_its_own_copy() -> None:
    seen_by_second: list[list[str]] = []

    def vandal(data: dict[str, Any], event_time: datetime) -> None:
        data["tags"].append("vandalised")
        data["n"] = -1

    async def second(data: dict[str, Any], event_time: datetime) -> None:
        await asyncio.sleep(0.01)  # let the vandal go first
        seen_by_second.append(list(data["tags"]))

    sink = MemoryConsumer()
    with AioConveyor(Counter(), [vandal, second, sink], loop_interval=FAST) as conv:
        assert sink.wait_for(3)
        assert wait_until_blocking(lambda: len(seen_by_second) >= 3)
    assert all(tags == ["a"] for tags in seen_by_second)
    assert [d["n"] for d in sink.data[:3]] == [0, 1, 2]
    assert conv.stats().consumer("vandal").delivered >= 3


def test_copy_false_shares_immutable_data() -> None:
    ids: list[set[int]] = []
    lock = threading.Lock()

    async def produce(event_time: datetime) -> tuple[int, ...]:
        return (1, 2, 3)

    def record(data: Any, event_time: datetime) -> None:
        with lock:
            ids.append({id(data)})

    spec = Consumer(record, copy=False)
    with AioConveyor(produce, [spec], loop_interval=FAST, max_ticks=2) as conv:
        assert conv.join(10)
    assert len(ids) == 2




# -- retries, batching, overflow -------------------------------------------------------


def test_retries_back_off_and_then_deliver() -> None:
    attempts: list[float] = []

    async def flaky(data: Any, event_time: datetime) -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("try again")

    with AioConveyor(Counter(), [Consumer(flaky, retries=5, backoff=0.05)], loop_interval=0.2,
                     max_ticks=1) as conv:
        assert conv.join(10)
    c = conv.stats().consumer("flaky")
    assert (c.delivered, c.errors, c.retries, c.failed) == (1, 2, 2, 0)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05  # 0.05 then 0.1, each with +-50 % jitter


def test_retry_after_delays_only_its_lane() -> None:
    calls: list[float] = []

    async def api(data: Any, event_time: datetime) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RetryAfter(0.3, "429 Too Many Requests")

    sink = MemoryConsumer()
    with AioConveyor(Counter(), [api, sink], loop_interval=FAST) as conv:
        assert wait_until_blocking(lambda: len(calls) >= 2)
        assert len(sink.data) >= 4  # the other lane kept going meanwhile
    assert calls[1] - calls[0] >= 0.3
    c = conv.stats().consumers[0]
    assert c.failed == 0 and c.retries >= 1


def test_batching_by_size_and_age_and_flush_at_stop() -> None:
    batches: list[Batch] = []

    async def batch_writer(data: Batch, event_time: datetime) -> None:
        assert isinstance(data, Batch)
        assert event_time == data[-1].event_time
        batches.append(data)

    spec = Consumer(batch_writer, batch_size=4, batch_age=10.0)
    with AioConveyor(Counter(), [spec], loop_interval=FAST, max_ticks=10) as conv:
        assert conv.join(10)
    sizes = [len(b) for b in batches]
    assert sizes == [4, 4, 2]  # the last two were flushed at stop, not waited for
    assert [r.data["n"] for b in batches for r in b] == list(range(10))
    assert conv.stats().consumers[0].delivered == 10


@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", "newest"), ("drop_newest", "oldest")])
def test_overflow_drops_are_counted_and_logged(
    policy: str, kept: str, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    got: list[int] = []

    def blocked(data: dict[str, Any], event_time: datetime) -> None:
        gate.wait(10)
        got.append(data["n"])

    conv = AioConveyor(Counter(), [Consumer(blocked, queue_size=3, overflow=policy, timeout=30)],
                       loop_interval=FAST)
    with conv:
        assert wait_until_blocking(lambda: conv.stats().consumers[0].dropped >= 3)
        produced_before_release = conv.stats().produced
        gate.set()
        assert wait_until_blocking(lambda: conv.stats().consumers[0].queued == 0)
    c = conv.stats().consumers[0]
    assert c.dropped >= 3
    assert "queue full" in caplog.text
    assert got[0] == 0  # the item in flight when the queue filled
    if kept == "oldest":
        assert got[1:4] == [1, 2, 3]
    else:
        assert got[1] > produced_before_release - 5
    assert_lanes_add_up(conv)


def test_block_policy_loses_nothing() -> None:
    async def slowish(data: Any, event_time: datetime) -> None:
        await asyncio.sleep(FAST * 2)

    sink = MemoryConsumer()
    conv = AioConveyor(Counter(), [Consumer(slowish, queue_size=1, overflow="block"), sink],
                       loop_interval=FAST, max_ticks=8)
    with conv:
        assert conv.join(20)
    c = conv.stats().consumers[0]
    assert (c.delivered, c.dropped) == (8, 0)
    assert conv.stats().missed_ticks > 0  # the backpressure is visible as missed ticks


# -- stop, lifecycle, watchdog ---------------------------------------------------------


def test_stop_drains_queued_items() -> None:
    async def slow(data: Any, event_time: datetime) -> None:
        await asyncio.sleep(0.1)

    conv = AioConveyor(Counter(), [Consumer(slow, timeout=5)], loop_interval=0.02)
    conv.start()
    assert wait_until_blocking(lambda: conv.stats().consumers[0].queued >= 5)
    conv.stop(timeout=10)
    c = conv.stats().consumers[0]
    assert c.queued == 0 and c.dropped == 0 and c.delivered == conv.stats().produced


def test_stop_timeout_bounds_stop_and_counts_the_rest_as_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stuck(data: Any, event_time: datetime) -> None:
        await asyncio.sleep(3600)

    conv = AioConveyor(Counter(), [Consumer(stuck, timeout=3600)], loop_interval=0.02)
    conv.start()
    assert wait_until_blocking(lambda: conv.stats().consumers[0].queued >= 3)
    t = time.monotonic()
    conv.stop(timeout=0.5)
    assert time.monotonic() - t < 3.0
    assert not conv.running
    c = conv.stats().consumers[0]
    assert c.delivered == 0 and c.dropped == conv.stats().produced
    assert "not delivered" in caplog.text


def test_lifecycle_misuse_is_a_clear_runtime_error() -> None:
    conv = AioConveyor(Counter(), [], loop_interval=FAST)
    conv.stop()  # stopping a conveyor that never started is fine
    conv.stop()
    with pytest.raises(RuntimeError, match="cannot start conveyor 'Counter': it is stopped"):
        conv.start()
    conv2 = AioConveyor(Counter(), [], loop_interval=FAST)
    conv2.start()
    try:
        with pytest.raises(RuntimeError, match="it is running"):
            conv2.start()
    finally:
        conv2.stop()
        conv2.stop()
    assert conv2.exception is None


def test_startup_failure_raises_and_closes_what_was_opened() -> None:
    events: list[str] = []

    class Resource:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        async def open(self) -> None:
            if self.fail:
                raise OSError("connection refused")
            events.append(f"open {self.name}")

        async def close(self) -> None:
            events.append(f"close {self.name}")

        async def __call__(self, data: Any, event_time: datetime) -> None: ...

    conv = AioConveyor(Counter(), [Resource("a"), Resource("b"),
                                   Consumer(Resource("c", fail=True), startup="fail")],
                       loop_interval=FAST)
    with pytest.raises(StartupError, match="'c' failed to open: OSError: connection refused"):
        conv.start()
    assert events == ["open a", "open b", "close b", "close a"]
    assert not conv.running and isinstance(conv.exception, StartupError)


def test_consumer_objects_open_and_close_in_the_conveyor_loop() -> None:
    loops: dict[str, Any] = {}

    class Owner:
        async def __aenter__(self) -> Owner:
            loops["open"] = asyncio.get_running_loop()
            return self

        async def __aexit__(self, *exc: object) -> None:
            loops["close"] = asyncio.get_running_loop()

        async def __call__(self, data: Any, event_time: datetime) -> None:
            loops["call"] = asyncio.get_running_loop()

    with AioConveyor(Counter(), [Owner()], loop_interval=FAST, max_ticks=1) as conv:
        assert conv.join(10)
    assert loops["open"] is loops["call"] is loops["close"]


class Meltdown(BaseException):
    """Escapes ``except Exception``: kills the task it is raised in."""


def test_a_consumer_raising_a_base_exception_stays_in_its_lane(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def crashes_once(data: Any, event_time: datetime) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Meltdown("boom")

    sink = MemoryConsumer()
    with AioConveyor(Counter(), [crashes_once, sink], loop_interval=FAST) as conv:
        assert sink.wait_for(5)
        assert wait_until_blocking(lambda: calls >= 3)
    s = conv.stats()
    assert s.restarts == 0  # nothing died: the call failed, the lane went on
    assert s.consumers[0].failed == 1 and s.consumers[0].errors == 1
    assert "consumer crashes_once failed on tick" in caplog.text and "Meltdown: boom" in caplog.text
    assert conv.exception is None
    assert_lanes_add_up(conv)


class _ExplodingRejectedCount:
    """A consumer whose ``rejected`` attribute raises: the lane's own task dies on it."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.calls = 0

    async def __call__(self, data: Any, event_time: datetime) -> None:
        self.calls += 1

    @property
    def rejected(self) -> int:
        if self.times:
            self.times -= 1
            raise Meltdown("junk attribute")
        return 0


def test_watchdog_restarts_a_dead_lane_and_the_conveyor_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    junk = _ExplodingRejectedCount(times=1)
    sink = MemoryConsumer()
    with AioConveyor(Counter(), [Consumer(junk, name="junk"), sink], loop_interval=FAST) as conv:
        assert sink.wait_for(5)
        assert wait_until_blocking(lambda: conv.stats().consumer("junk").delivered >= 3)
    s = conv.stats()
    assert s.restarts == 1 and s.consumer("junk").restarts == 1
    assert "restarting it" in caplog.text
    assert conv.exception is None
    assert_lanes_add_up(conv)  # the item it died on went back to its queue, not lost


class _DyingSchedule:
    """A schedule whose maths dies now and then: the scheduler task itself fails."""

    def __init__(self, period: float, die_at: set[int]) -> None:
        self.inner = IntervalSchedule(period)
        self.die_at = die_at
        self.calls = 0

    def next_fire(self, after: float) -> float:
        self.calls += 1
        if self.calls in self.die_at:
            raise Meltdown("schedule maths")
        return self.inner.next_fire(after)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_watchdog_restarts_the_scheduler_on_the_same_grid() -> None:
    seen: list[datetime] = []

    async def produce(event_time: datetime) -> int:
        seen.append(event_time)
        return len(seen)

    schedule = _DyingSchedule(FAST, die_at={4})
    with AioConveyor(produce, [], schedule=schedule) as conv:
        assert wait_until_blocking(lambda: len(seen) >= 5)
    assert conv.stats().restarts == 1
    assert len(set(seen)) == len(seen)  # no grid time fired twice across the restart


def test_a_lane_past_its_restart_budget_is_quarantined_and_the_rest_goes_on() -> None:
    junk = _ExplodingRejectedCount(times=10**9)
    sink = MemoryConsumer()
    conv = AioConveyor(Counter(), [Consumer(junk, name="junk"), sink], loop_interval=0.02,
                       restart_limit=3, restart_window=60)
    with conv:
        assert wait_until_blocking(lambda: conv.stats().consumer("junk").state == "quarantined")
        n = conv.stats().produced
        assert sink.wait_for(n + 5)  # the healthy lane and the producer go on
        health = conv.health()
        assert not health.ok and "quarantined" in health.problems["consumer:junk"]
        assert conv.running
    junk_stats = conv.stats().consumer("junk")
    assert junk_stats.failed >= 5 and junk_stats.delivered == 0
    assert conv.exception is None
    assert_lanes_add_up(conv)


def test_scheduler_past_its_restart_budget_stops_the_conveyor_with_the_reason() -> None:
    conv = AioConveyor(Counter(), [], schedule=_DyingSchedule(0.02, die_at=set(range(3, 10**4))),
                       restart_limit=3, restart_window=60)
    conv.start()
    assert conv.join(10)
    assert not conv.running
    assert isinstance(conv.exception, RestartBudgetExceeded)
    assert "scheduler" in str(conv.exception) and "more than 3 restarts" in str(conv.exception)

    async def via_run() -> None:
        conv2 = AioConveyor(Counter(), [], schedule=_DyingSchedule(0.02, die_at=set(range(3, 10**4))),
                            restart_limit=1)
        with pytest.raises(RestartBudgetExceeded):
            await conv2.run()

    asyncio.run(via_run())


def test_blocked_event_loop_is_detected_with_a_stack(caplog: pytest.LogCaptureFixture) -> None:
    async def blocks_the_loop(data: Any, event_time: datetime) -> None:
        time.sleep(0.6)  # noqa: ASYNC251 - the bug being detected

    caplog.set_level(logging.WARNING)
    conv = AioConveyor(Counter(), [blocks_the_loop], loop_interval=0.2, max_ticks=1,
                       block_threshold=0.2)
    with conv:
        assert conv.join(10)
    assert conv.stats().loop_blocked >= 1
    assert "event loop blocked" in caplog.text and "blocks_the_loop" in caplog.text


def test_producer_failures_are_counted_and_ticking_goes_on() -> None:
    n = 0

    def produce(event_time: datetime) -> int | None:
        nonlocal n
        n += 1
        if n % 3 == 0:
            raise RuntimeError("sensor timeout")
        if n % 3 == 1:
            return None  # nothing this tick
        return n

    sink = MemoryConsumer()
    with AioConveyor(produce, [sink], loop_interval=FAST, max_ticks=9) as conv:
        assert conv.join(10)
    s = conv.stats()
    assert (s.ticks, s.producer_errors, s.empty, s.produced) == (9, 3, 3, 3)
    assert sink.data == [2, 5, 8]


def test_hung_producer_times_out_and_ticking_goes_on() -> None:
    n = 0

    async def produce(event_time: datetime) -> int:
        nonlocal n
        n += 1
        if n == 2:
            await asyncio.sleep(3600)
        return n

    sink = MemoryConsumer()
    with AioConveyor(produce, [sink], loop_interval=FAST, producer_timeout=0.2) as conv:
        assert sink.wait_for(4)
    s = conv.stats()
    assert s.producer_timeouts == 1 and s.producer_errors == 1 and s.missed_ticks >= 2


def test_stats_add_up_under_load() -> None:
    async def sometimes_fails(data: dict[str, Any], event_time: datetime) -> None:
        if data["n"] % 4 == 0:
            raise ValueError("bad item")
        await asyncio.sleep(0.03)

    conv = AioConveyor(Counter(), [Consumer(sometimes_fails, queue_size=3), MemoryConsumer()],
                       loop_interval=0.01, max_ticks=60)
    with conv:
        assert conv.join(20)
    assert_lanes_add_up(conv)
    c = conv.stats().consumers[0]
    assert c.failed > 0 and c.delivered > 0


def test_empty_consumer_list_still_ticks() -> None:
    calls = 0

    def produce(event_time: datetime) -> int:
        nonlocal calls
        calls += 1
        return calls

    with AioConveyor(produce, [], loop_interval=FAST, max_ticks=3) as conv:
        assert conv.join(10)
    assert calls == 3 and conv.stats().produced == 3


def test_lateness_and_tick_stats_are_reported() -> None:
    with AioConveyor(Counter(), [], loop_interval=FAST, max_ticks=5) as conv:
        assert conv.join(10)
    s = conv.stats()
    assert s.ticks == 5 and s.lateness.samples == 5
    assert 0 <= s.lateness.p50_ms <= s.lateness.p99_ms <= s.lateness.max_ms < 1000 * FAST
    assert s.last_tick_time is not None and s.last_tick_time.tzinfo is UTC


def test_interpreter_exit_drains_a_conveyor_left_running(tmp_path: Any) -> None:
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "out.txt"
    script = textwrap.dedent(f"""
        import asyncio, time
        from aioconveyor import AioConveyor

        async def produce(event_time):
            return event_time.isoformat()

        async def slow_writer(data, event_time):
            await asyncio.sleep(0.03)
            with open({str(out)!r}, "a") as f:
                f.write(data + "\\n")

        conv = AioConveyor(produce, [slow_writer], loop_interval=0.01)
        conv.start()
        while conv.stats().consumers[0].queued < 10:
            time.sleep(0.01)
        print(conv.stats().produced)
        # no stop(): the interpreter exits with items still queued
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    produced_at_exit = int(result.stdout.strip())
    lines = out.read_text().splitlines()
    assert len(lines) >= produced_at_exit
    assert len(lines) == len(set(lines))
