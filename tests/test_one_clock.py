"""One clock: every timer of the engine runs on the injected clock (issue 12, point 1).

Each test drives a real conveyor on a :class:`FakeClock` and asserts *exact* fake times:
retries and their backoff, ``max_backoff``, ``RetryAfter``, ``Rejected``, ``batch_age``,
consumer and producer timeouts, the stop deadline, the watchdog's restart window and
``health()``. Nothing sleeps in real time, so the whole file takes milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aioconveyor import AioConveyor, Consumer
from aioconveyor._consumer import Batch
from aioconveyor._errors import Rejected, RetryAfter
from aioconveyor._health import Health
from aioconveyor._stats import ConveyorCounters
from aioconveyor._watchdog import Supervisor
from aioconveyor.testing import FakeClock, MemoryConsumer

T0 = 1_794_999_600.0  # a whole hour: on every grid used below


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def turn_until(predicate: Callable[[], bool], turns: int = 100_000) -> None:
    """Let the loop (and the fake clock's autojump) turn until ``predicate()`` holds."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"still false after {turns} loop turns")


def once() -> Callable[[datetime], Any]:
    """A producer that returns one item (its tick's time) on the first tick only."""
    done = False

    async def produce(event_time: datetime) -> float | None:
        nonlocal done
        if done:
            return None
        done = True
        return event_time.timestamp()

    return produce


class Script:
    """An async consumer that notes the fake time of every call and then does what its
    script says for that call (raise an exception, or return); past the script it returns."""

    def __init__(self, clock: FakeClock, *steps: BaseException | None,
                 repeat: BaseException | None = None) -> None:
        self.clock = clock
        self.steps = list(steps)
        self.repeat = repeat
        self.times: list[float] = []
        self.received: list[Any] = []

    async def __call__(self, data: Any, event_time: datetime) -> None:
        n = len(self.times)
        self.times.append(self.clock.time())
        self.received.append(data)
        step = self.steps[n] if n < len(self.steps) else self.repeat
        if step is not None:
            raise step


# -- retries, backoff, RetryAfter, Rejected -------------------------------------------


async def test_three_retries_with_backoff_1_2_4_s_then_the_item_is_failed() -> None:
    clock = FakeClock(start=T0)
    sink = Script(clock, repeat=ValueError("always"))
    conv = AioConveyor(once(), [Consumer(sink, name="sink", retries=3, backoff=1,
                                         backoff_jitter=0)],
                       loop_interval=10, clock=clock, max_ticks=1, stop_timeout=60)
    await conv.run()
    assert sink.times == [T0 + 10, T0 + 11, T0 + 13, T0 + 17]
    assert gaps(sink.times) == [1, 2, 4]
    c = conv.stats().consumer("sink")
    assert (c.offered, c.failed, c.delivered, c.dropped) == (1, 1, 0, 0)
    assert (c.errors, c.retries) == (4, 3)
    assert clock.time() == T0 + 17  # the stop did not wait for anything else


async def test_max_backoff_caps_the_doubling() -> None:
    clock = FakeClock(start=T0)
    sink = Script(clock, repeat=ValueError("always"))
    conv = AioConveyor(once(), [Consumer(sink, name="sink", retries=5, backoff=2, max_backoff=5,
                                         backoff_jitter=0)],
                       loop_interval=10, clock=clock, max_ticks=1, stop_timeout=60)
    await conv.run()
    assert gaps(sink.times) == [2, 4, 5, 5, 5]
    assert conv.stats().consumer("sink").failed == 1


async def test_retry_after_waits_exactly_its_seconds_and_uses_up_no_retries() -> None:
    clock = FakeClock(start=T0)
    # retries=1: if a RetryAfter used it up, the first ValueError would fail the item
    sink = Script(clock, RetryAfter(7), RetryAfter(7), ValueError("one"), ValueError("two"))
    conv = AioConveyor(once(), [Consumer(sink, name="sink", retries=1, backoff=1,
                                         backoff_jitter=0)],
                       loop_interval=10, clock=clock, max_ticks=1, stop_timeout=60)
    await conv.run()
    assert sink.times == [T0 + 10, T0 + 17, T0 + 24, T0 + 25]
    c = conv.stats().consumer("sink")
    assert (c.failed, c.delivered, c.retries, c.errors) == (1, 0, 3, 4)


async def test_retry_after_then_success_is_delivered_7_s_later() -> None:
    clock = FakeClock(start=T0)
    sink = Script(clock, RetryAfter(7))  # retries=0 (the default): RetryAfter still retries
    conv = AioConveyor(once(), [Consumer(sink, name="sink")],
                       loop_interval=10, clock=clock, max_ticks=1, stop_timeout=60)
    await conv.run()
    assert sink.times == [T0 + 10, T0 + 17]
    c = conv.stats().consumer("sink")
    assert (c.delivered, c.failed, c.retries) == (1, 0, 1)
    assert c.last_success_time == at(T0 + 17)


async def test_rejected_is_not_retried_and_the_lane_goes_on() -> None:
    clock = FakeClock(start=T0)
    sink = Script(clock, Rejected("bad record"))

    async def produce(event_time: datetime) -> float:
        return event_time.timestamp()

    conv = AioConveyor(produce, [Consumer(sink, name="sink", retries=3, backoff=1,
                                          backoff_jitter=0)],
                       loop_interval=10, clock=clock, max_ticks=2, stop_timeout=60)
    await conv.run()
    assert sink.times == [T0 + 10, T0 + 20]  # no retry at T0 + 11: the next tick's item
    c = conv.stats().consumer("sink")
    assert (c.rejected, c.delivered, c.failed, c.retries) == (1, 1, 0, 0)


# -- batch_age ---------------------------------------------------------------------


async def test_batch_is_delivered_exactly_batch_age_after_its_first_item() -> None:
    clock = FakeClock(start=T0)
    calls: list[tuple[float, list[datetime]]] = []

    async def sink(batch: Batch, event_time: datetime) -> None:
        calls.append((clock.time(), [r.event_time for r in batch]))

    async def produce(event_time: datetime) -> float | None:
        # items on the ticks of T0+10, +20, +30 only: nothing arrives at the batch's deadline
        return event_time.timestamp() if event_time <= at(T0 + 30) else None

    conv = AioConveyor(produce, [Consumer(sink, name="sink", batch_size=10, batch_age=30)],
                       loop_interval=10, clock=clock, max_ticks=6, stop_timeout=60)
    await conv.run()
    assert calls == [(T0 + 40, [at(T0 + 10), at(T0 + 20), at(T0 + 30)])]
    assert conv.stats().consumer("sink").delivered == 3


async def test_a_full_batch_does_not_wait_for_batch_age() -> None:
    clock = FakeClock(start=T0)
    calls: list[tuple[float, int]] = []

    async def sink(batch: Batch, event_time: datetime) -> None:
        calls.append((clock.time(), len(batch)))

    async def produce(event_time: datetime) -> float:
        return event_time.timestamp()

    conv = AioConveyor(produce, [Consumer(sink, name="sink", batch_size=2, batch_age=30)],
                       loop_interval=10, clock=clock, max_ticks=4, stop_timeout=60)
    await conv.run()
    assert calls == [(T0 + 20, 2), (T0 + 40, 2)]


# -- timeouts ----------------------------------------------------------------------


async def test_a_consumer_call_times_out_at_exactly_its_timeout() -> None:
    clock = FakeClock(start=T0)
    times: list[float] = []
    cancelled: list[float] = []

    async def sink(data: Any, event_time: datetime) -> None:
        times.append(clock.time())
        if len(times) == 1:
            try:
                await clock.sleep(100)
            except asyncio.CancelledError:
                cancelled.append(clock.time())
                raise

    conv = AioConveyor(once(), [Consumer(sink, name="sink", timeout=5, retries=1, backoff=1,
                                         backoff_jitter=0)],
                       loop_interval=10, clock=clock, max_ticks=1, stop_timeout=60)
    await conv.run()
    assert cancelled == [T0 + 15]
    assert times == [T0 + 10, T0 + 16]  # the retry: timeout (5 s) then backoff (1 s)
    c = conv.stats().consumer("sink")
    assert (c.timeouts, c.retries, c.delivered, c.failed, c.abandoned) == (1, 1, 1, 0, 0)


async def test_a_producer_call_times_out_at_exactly_producer_timeout() -> None:
    clock = FakeClock(start=T0)
    calls: list[float] = []
    cancelled: list[float] = []

    async def produce(event_time: datetime) -> float:
        calls.append(clock.time())
        if len(calls) == 1:
            try:
                await clock.sleep(100)
            except asyncio.CancelledError:
                cancelled.append(clock.time())
                raise
        return event_time.timestamp()

    sink = MemoryConsumer("sink")
    conv = AioConveyor(produce, [sink], loop_interval=10, producer_timeout=3, clock=clock,
                       max_ticks=3)
    await conv.run()
    assert cancelled == [T0 + 13]
    assert calls == [T0 + 10, T0 + 20, T0 + 30]
    s = conv.stats()
    assert (s.producer_timeouts, s.producer_errors, s.missed_ticks) == (1, 1, 0)
    assert sink.data == [T0 + 20, T0 + 30]


# -- stop deadlines and the watchdog ------------------------------------------------


async def test_a_retry_that_would_end_past_the_drain_deadline_is_given_up_at_once() -> None:
    clock = FakeClock(start=T0)
    sink = Script(clock, repeat=ValueError("always"))
    # max_ticks=1: the stop begins right after the tick of T0+10, with 10 s to drain (the
    # last second kept for closing): the retry of T0+14 fits, the one of T0+22 does not
    conv = AioConveyor(once(), [Consumer(sink, name="sink", retries=5, backoff=4,
                                         backoff_jitter=0)],
                       loop_interval=10, clock=clock, max_ticks=1, stop_timeout=10)
    await conv.run()
    assert sink.times == [T0 + 10, T0 + 14]
    c = conv.stats().consumer("sink")
    assert (c.dropped, c.failed, c.queued, c.in_flight) == (1, 0, 0, 0)
    assert clock.time() == T0 + 14  # given up right away, not at the deadline


async def test_stop_timeout_cancels_a_hung_call_at_the_drain_deadline() -> None:
    clock = FakeClock(start=T0)
    cancelled: list[float] = []
    conv: AioConveyor | None = None

    async def sink(data: Any, event_time: datetime) -> None:
        try:
            await clock.sleep(10_000)
        except asyncio.CancelledError:
            cancelled.append(clock.time())
            raise

    async def produce(event_time: datetime) -> float | None:
        if event_time == at(T0 + 30):
            assert conv is not None
            conv.stop(timeout=20)  # from its own loop: returns at once, the engine stops
            return None
        return event_time.timestamp()

    conv = AioConveyor(produce, [Consumer(sink, name="sink", timeout=math.inf)],
                       loop_interval=10, clock=clock)
    await conv.run()
    # the stop began at T0+30 with 20 s; the last second is kept for closing the consumers
    assert cancelled == [T0 + 49]
    c = conv.stats().consumer("sink")
    # the item of T0+10 was in flight, the one of T0+20 queued: both dropped at the deadline
    assert (c.offered, c.dropped, c.delivered, c.queued, c.in_flight) == (2, 2, 0, 0, 0)
    assert c.busy_seconds == 0


async def test_supervisor_restart_window_reads_the_clock() -> None:
    clock = FakeClock(start=T0)
    counters = ConveyorCounters("c")
    deaths: list[float] = []
    exhausted: list[float] = []
    interval = {"s": 10.0}

    async def dies() -> None:
        await clock.sleep(interval["s"])
        deaths.append(clock.monotonic())
        raise RuntimeError("boom")

    sup = Supervisor(counters, clock, restarts=2, window=60)
    start = clock.monotonic()
    sup.watch("t", dies, lambda exc: exhausted.append(clock.monotonic()))
    # deaths at +10, +20 are restarted; the third (+30) is the third within 60 s: exhausted
    await turn_until(lambda: bool(exhausted))
    assert [d - start for d in deaths] == [10, 20, 30]
    assert [e - start for e in exhausted] == [30]
    assert counters.restarts == 2

    # 31 s apart, every death is outside the window of the one two before: never exhausted
    interval["s"] = 31.0
    deaths.clear()
    exhausted.clear()
    sup2 = Supervisor(counters, clock, restarts=2, window=60)
    start = clock.monotonic()
    sup2.watch("u", dies, lambda exc: exhausted.append(clock.monotonic()))
    await turn_until(lambda: len(deaths) >= 6)
    assert [d - start for d in deaths] == [31 * k for k in range(1, 7)]
    assert exhausted == []
    await sup2.stop()


async def test_supervisor_stop_waits_for_a_stubborn_task_on_the_clock() -> None:
    clock = FakeClock(start=T0, autojump=True)
    counters = ConveyorCounters("c")
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # ignores cancellation

    sup = Supervisor(counters, clock, restarts=1, window=60)
    sup.watch("t", stubborn, lambda exc: None)
    await asyncio.sleep(0)
    task = sup.task("t")
    assert task is not None
    start = clock.monotonic()
    try:
        await sup.stop(timeout=3)  # the grace runs on the fake clock: 3 fake seconds, not real
        waited, still_running = clock.monotonic() - start, not task.done()
    finally:
        release.set()  # let it end whatever happened (it would hang the loop's teardown)
        await asyncio.wait({task})
    assert waited == 3
    assert still_running


# -- health --------------------------------------------------------------------------


async def test_health_is_healthy_right_after_start_on_a_fake_clock() -> None:
    # the default start (November 2023) lies years before the real now: health() must read
    # the fake clock, not datetime.now() ("tick ... overdue by 96,155,007 s")
    clock = FakeClock()
    seen: list[tuple[float, Health]] = []
    conv: AioConveyor | None = None

    async def produce(event_time: datetime) -> float:
        assert conv is not None
        seen.append((clock.time(), conv.health()))
        return event_time.timestamp()

    sink = MemoryConsumer("sink")
    conv = AioConveyor(produce, [sink], loop_interval=10, clock=clock, max_ticks=3)
    await conv.run()
    assert [h for _, h in seen] == [Health(True, {})] * 3
    assert not conv.health().ok and set(conv.health().problems) == {"conveyor"}


async def test_health_names_a_consumer_failing_every_item_past_health_bound() -> None:
    clock = FakeClock(start=T0)
    verdicts: list[tuple[float, dict[str, str]]] = []
    conv: AioConveyor | None = None

    async def bad(data: Any, event_time: datetime) -> None:
        raise ValueError("down")

    async def produce(event_time: datetime) -> float:
        assert conv is not None
        verdicts.append((clock.time() - T0, dict(conv.health().problems)))
        return event_time.timestamp()

    good = MemoryConsumer("good")
    conv = AioConveyor(produce, [good, Consumer(bad, name="bad")], loop_interval=10,
                       clock=clock, max_ticks=6, health_bound=30)
    await conv.run()
    # "bad" fails from T0+10 on: failing for 30 s at T0+40 is within the bound, 40 s is not
    assert [t for t, p in verdicts if not p] == [10, 20, 30, 40]
    later = [(t, p) for t, p in verdicts if p]
    assert [t for t, _ in later] == [50, 60]
    for t, problems in later:
        assert set(problems) == {"consumer:bad"}
        assert problems["consumer:bad"].startswith(
            f"every item failed or was rejected for {t - 10:.1f} s")
    assert conv.stats().consumer("good").delivered == 6


async def test_healthz_endpoint_reads_the_fake_clock() -> None:
    clock = FakeClock()  # years behind the real now, as above
    answers: list[bytes] = []
    conv: AioConveyor | None = None

    async def produce(event_time: datetime) -> float:
        assert conv is not None
        if not answers:
            address = conv.metrics_address
            assert address is not None
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            answers.append(await reader.read())
            writer.close()
            await writer.wait_closed()
        return event_time.timestamp()

    conv = AioConveyor(produce, [MemoryConsumer("sink")], loop_interval=10, clock=clock,
                       max_ticks=2, metrics_port=0, producer_timeout=math.inf)
    await conv.run()
    (answer,) = answers
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b'{"problems": {}, "status": "ok"}\n')
