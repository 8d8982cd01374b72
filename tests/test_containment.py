"""Containment (issue 12): whatever user code raises or however long it hangs, the conveyor,
its other lanes and its logs stay sane; health and metrics say what is wrong."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer, RestartBudgetExceeded, StartupError
from aioconveyor._errors import ContainedError
from aioconveyor._schedule import IntervalSchedule
from aioconveyor.testing import FakeClock, MemoryConsumer, wait_until_blocking
from support.http import get

TICKS = 20


class Custom(BaseException):
    """A BaseException of the user's own."""


#: What user code may raise: every BaseException the engine must contain, and an ordinary one.
RAISED: dict[str, Callable[[], BaseException]] = {
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
    "CancelledError": asyncio.CancelledError,  # raised by the user, not asked for by us
    "GeneratorExit": GeneratorExit,
    "Custom": Custom,
    "ValueError": lambda: ValueError("plain"),
}
KINDS = sorted(RAISED)


class Counter:
    """A producer returning 1, 2, 3, ..."""

    def __init__(self) -> None:
        self.n = 0

    async def __call__(self, event_time: datetime) -> int:
        self.n += 1
        return self.n


def naming(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    """The log records (WARNING and up) whose message names ``name``."""
    return [r for r in caplog.records
            if r.levelno >= logging.WARNING and name in r.getMessage()]


def fake_run(produce: Callable[..., Any], consumers: list[Any], **kw: Any) -> AioConveyor:
    """Run a conveyor for TICKS ticks of 1 s on a FakeClock (in this thread's loop)."""
    conv = AioConveyor(produce, consumers, loop_interval=1.0, clock=FakeClock(),
                       max_ticks=TICKS, seed=1, **kw)
    asyncio.run(conv.run())
    return conv


def assert_unharmed(conv: AioConveyor, sink: MemoryConsumer, expected: list[int]) -> None:
    """The conveyor ended by max_ticks, not by an error, and the healthy lane got it all."""
    assert conv.exception is None
    assert not conv.running
    s = conv.stats()
    assert s.ticks == TICKS
    assert s.restarts == 0 and all(c.restarts == 0 for c in s.consumers)
    assert sink.data == expected  # 100 %, in order


# -- point 3: every BaseException is contained, wherever it is raised --------------------


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_consumer_raising_anything_fails_its_items_only(
    kind: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"failing-{kind}-{mode}"

    async def async_fails(data: Any, event_time: datetime) -> None:
        raise RAISED[kind]()

    def sync_fails(data: Any, event_time: datetime) -> None:  # runs on the lane's thread
        raise RAISED[kind]()

    caplog.set_level(logging.INFO)
    sink = MemoryConsumer("sink")
    fn = async_fails if mode == "async" else sync_fails
    conv = fake_run(Counter(), [sink, Consumer(fn, name=name)])
    assert_unharmed(conv, sink, list(range(1, TICKS + 1)))
    bad = conv.stats().consumer(name)
    assert (bad.errors, bad.failed, bad.delivered) == (TICKS, TICKS, 0)
    assert bad.last_error is not None and kind in bad.last_error
    # one burst (20 s < the limiter's 60 s window): the failure once, its give-up once
    lines = naming(caplog, name)
    assert sum("failed on tick" in r.getMessage() for r in lines) == 1
    assert sum("gave up" in r.getMessage() for r in lines) == 1
    assert len(lines) == 2, [r.getMessage() for r in lines]


class _FailingOpen:
    """A consumer whose ``open()`` raises ``kind`` twice, then works."""

    def __init__(self, kind: str, failures: int = 2) -> None:
        self.kind = kind
        self.failures = failures
        self.opens = 0
        self.received: list[int] = []

    def _open(self) -> None:
        self.opens += 1
        if self.opens <= self.failures:
            raise RAISED[self.kind]()

    async def __call__(self, data: int, event_time: datetime) -> None:
        self.received.append(data)


class _AsyncOpen(_FailingOpen):
    async def open(self) -> None:
        await asyncio.sleep(0)
        self._open()

    async def close(self) -> None:
        pass


class _SyncOpen(_FailingOpen):
    def open(self) -> None:
        self._open()

    def close(self) -> None:
        pass


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("kind", KINDS)
def test_open_raising_anything_is_retried_while_the_items_queue(
    kind: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"opening-{kind}-{mode}"
    consumer = _AsyncOpen(kind) if mode == "async" else _SyncOpen(kind)
    caplog.set_level(logging.INFO)
    sink = MemoryConsumer("sink")
    conv = fake_run(Counter(), [sink, Consumer(consumer, name=name)])  # startup="retry"
    assert_unharmed(conv, sink, list(range(1, TICKS + 1)))
    s = conv.stats().consumer(name)
    assert s.open_errors == 2 and s.errors == 2 and consumer.opens == 3
    assert consumer.received == list(range(1, TICKS + 1))  # queued meanwhile, then delivered
    assert s.last_error is not None and kind in s.last_error
    lines = naming(caplog, name)
    assert len(lines) == 1 and "open() failed" in lines[0].getMessage()


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("hook", ["on_delivered", "on_error"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_hook_raising_anything_is_counted_and_the_lane_goes_on(
    kind: str, hook: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"hooked-{kind}-{hook}-{mode}"
    calls: list[int] = []

    async def async_hook(*args: Any) -> None:
        calls.append(1)
        raise RAISED[kind]()

    def sync_hook(*args: Any) -> None:
        calls.append(1)
        raise RAISED[kind]()

    received: list[int] = []

    async def consumer(data: int, event_time: datetime) -> None:
        received.append(data)
        if hook == "on_error":
            raise ValueError("for on_error")

    caplog.set_level(logging.INFO)
    sink = MemoryConsumer("sink")
    spec = Consumer(consumer, name=name,
                    **{hook: async_hook if mode == "async" else sync_hook})
    conv = fake_run(Counter(), [sink, spec])
    assert_unharmed(conv, sink, list(range(1, TICKS + 1)))
    s = conv.stats().consumer(name)
    assert received == list(range(1, TICKS + 1)) and len(calls) == TICKS
    assert s.hook_errors == TICKS
    if hook == "on_delivered":
        assert (s.delivered, s.failed) == (TICKS, 0)
    else:
        assert (s.delivered, s.failed) == (0, TICKS)
    hook_lines = [r for r in naming(caplog, name) if "hook failed" in r.getMessage()]
    assert len(hook_lines) == 1 and kind in hook_lines[0].getMessage()


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_producer_raising_anything_costs_only_that_tick(
    kind: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    n = 0

    def next_value() -> int:
        nonlocal n
        n += 1
        if n % 3 == 0:
            raise RAISED[kind]()
        return n

    async def async_produce(event_time: datetime) -> int:
        return next_value()

    def sync_produce(event_time: datetime) -> int:
        return next_value()

    caplog.set_level(logging.INFO)
    sink = MemoryConsumer("sink")
    conv = fake_run(async_produce if mode == "async" else sync_produce, [sink], name="prod")
    expected = [i for i in range(1, TICKS + 1) if i % 3]
    assert_unharmed(conv, sink, expected)
    s = conv.stats()
    assert s.producer_errors == TICKS // 3 and s.produced == len(expected)
    lines = [r for r in caplog.records if "producer failed" in r.getMessage()]
    assert len(lines) == 1 and "prod" in lines[0].getMessage()
    assert kind in lines[0].getMessage()


# -- whenever the loop ends by an error, conv.exception says why --------------------------


class Meltdown(BaseException):
    """The engine's own code failing (here: the schedule's maths)."""


class _DyingSchedule:
    """A schedule whose maths dies from its ``die_from``-th call on: the scheduler fails."""

    def __init__(self, period: float, die_from: int) -> None:
        self.inner = IntervalSchedule(period)
        self.die_from = die_from
        self.calls = 0

    def next_fire(self, after: float) -> float:
        self.calls += 1
        if self.calls >= self.die_from:
            raise Meltdown("schedule maths")
        return self.inner.next_fire(after)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_the_scheduler_past_its_budget_ends_the_conveyor_and_says_why() -> None:
    sink = MemoryConsumer("sink")
    conv = AioConveyor(Counter(), [sink], schedule=_DyingSchedule(1.0, die_from=5),
                       clock=FakeClock(), restart_limit=2, restart_window=600)

    with pytest.raises(RestartBudgetExceeded) as raised:
        asyncio.run(conv.run())
    assert conv.exception is raised.value
    assert "scheduler" in str(conv.exception)
    assert conv.stats().restarts == 2
    assert not conv.running and sink.data  # it ticked before it died


def test_a_consumer_whose_open_raises_anything_with_startup_fail_says_why() -> None:
    sink = MemoryConsumer("sink")
    conv = AioConveyor(Counter(), [sink, Consumer(_SyncOpen("SystemExit", failures=10),
                                                  name="strict", startup="fail")],
                       loop_interval=1.0, clock=FakeClock())
    with pytest.raises(StartupError, match="strict"):
        asyncio.run(conv.run())
    assert isinstance(conv.exception, StartupError)
    cause = conv.exception.__cause__
    assert isinstance(cause, ContainedError) and isinstance(cause.original, SystemExit)
    assert not conv.running and conv.stats().ticks == 0


# -- point 4: the figure of one hung sync consumer ---------------------------------------


def test_a_sync_consumer_hung_for_ten_minutes_costs_one_thread_and_a_few_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """10 minutes of fake time at 0.2 s (3000 ticks) with one sync consumer stuck in its
    first call the whole time.

    Counted: ``threading.active_count()`` of the whole process, sampled by the producer on
    every tick from the moment the stuck call has started. At that baseline the conveyor's
    threads are its loop thread, the loop monitor, the copier and the stuck lane's worker
    (the producer, the healthy lane and FakeClock are async: no threads); a new thread per
    timeout would show up as growth. Log lines: every record whose message names the stuck
    consumer: the hang, its doubling reminders, the queue's overflow drops (queue_size
    1000, drop_oldest: once per burst, then at doubling intervals) and what the stop gave up.
    """
    release = threading.Event()
    stuck_in_call = threading.Event()
    calls = 0

    def stuck(data: Any, event_time: datetime) -> None:
        nonlocal calls
        calls += 1
        stuck_in_call.set()
        release.wait(120)  # released at the end of the test

    baseline: int | None = None
    peak = 0
    own_threads: set[str] = set()
    n = 0

    async def produce(event_time: datetime) -> int:
        nonlocal baseline, peak, n
        n += 1
        if stuck_in_call.is_set():
            count = threading.active_count()
            baseline = count if baseline is None else baseline
            peak = max(peak, count)
            own_threads.update(t.name for t in threading.enumerate()
                               if t.name.startswith("aioconveyor[figure]"))
        return n

    caplog.set_level(logging.INFO)
    sink = MemoryConsumer("sink")
    conv = AioConveyor(produce, [sink, Consumer(stuck, name="stuck")], loop_interval=0.2,
                       clock=FakeClock(), max_ticks=3000, name="figure")
    try:
        conv.start()
        assert conv.join(60)
        s = conv.stats()
        lines = [r.getMessage() for r in caplog.records if "stuck" in r.getMessage()]
    finally:
        release.set()
    assert conv.exception is None and s.ticks == 3000
    assert sink.data == list(range(1, 3001))  # the healthy lane: 100 % of the ticks, in order
    assert calls == 1  # no second call while the first hangs
    assert baseline is not None and peak <= baseline + 2, (baseline, peak)
    assert own_threads == {"aioconveyor[figure]", "aioconveyor[figure].loop-monitor",
                           "aioconveyor[figure].copier",
                           "aioconveyor[figure].lane[stuck].worker"}
    assert len(lines) <= 10, lines
    assert any("hung past" in line for line in lines)
    assert any("queue full" in line for line in lines)
    stuck_stats = s.consumer("stuck")
    assert (stuck_stats.timeouts, stuck_stats.abandoned, stuck_stats.delivered) == (1, 1, 0)
    assert stuck_stats.dropped == 3000  # overflow, then the stop gave up on the rest


# -- point 6: stop() while start() is still opening ---------------------------------------


class _SlowOpen:
    """A consumer whose ``open()`` takes 0.3 s of real time."""

    def __init__(self) -> None:
        self.opening = threading.Event()
        self.opened = threading.Event()

    async def open(self) -> None:
        self.opening.set()
        await asyncio.sleep(0.3)
        self.opened.set()

    async def close(self) -> None:
        pass

    async def __call__(self, data: Any, event_time: datetime) -> None:
        pass


@pytest.mark.parametrize("attempt", range(20))
def test_stop_while_start_is_opening_stops_the_conveyor(attempt: int) -> None:
    slow = _SlowOpen()
    conv = AioConveyor(Counter(), [Consumer(slow, name="slow")], loop_interval=0.05,
                       eager=True, stop_timeout=1.0)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            conv.start()
        except BaseException as exc:
            errors.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    if attempt % 2:  # in the middle of open()
        assert wait_until_blocking(slow.opening.is_set)
        assert not slow.opened.is_set()
    else:  # as early as it comes: start() has its thread, the loop may not run yet
        assert wait_until_blocking(lambda: conv._thread is not None)
    asked = time.monotonic()
    conv.stop()
    took = time.monotonic() - asked
    assert not conv.running
    assert conv._thread is None or not conv._thread.is_alive()
    assert took < conv.stop_timeout + 1.0, took
    starter.join(5)
    assert not starter.is_alive() and not errors
    assert conv.exception is None
    assert conv.stats().ticks == 0  # honoured before the first tick


def test_items_left_at_stop_are_logged_with_their_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def slow(data: Any, event_time: datetime) -> None:
        await asyncio.sleep(30)

    caplog.set_level(logging.INFO)
    conv = AioConveyor(Counter(), [Consumer(slow, name="slow", timeout=math.inf)],
                       loop_interval=0.02, eager=True, stop_timeout=0.5)
    conv.start()
    assert wait_until_blocking(lambda: conv.stats().consumer("slow").queued >= 5)
    asked = time.monotonic()
    conv.stop()
    assert time.monotonic() - asked < conv.stop_timeout + 1.0
    assert not conv.running
    s = conv.stats().consumer("slow")
    queued = [m for r in caplog.records
              if (m := re.search(r"slow: (\d+) queued item\(s\) not delivered", r.getMessage()))]
    in_flight = [m for r in caplog.records
                 if (m := re.search(r"slow: (\d+) item\(s\) of tick .* not delivered",
                                    r.getMessage()))]
    assert len(queued) == 1 and len(in_flight) == 1
    assert int(queued[0][1]) >= 5 and int(in_flight[0][1]) == 1
    assert s.dropped == int(queued[0][1]) + 1 and s.delivered == 0 and s.queued == 0


# -- point 9: health sees a consumer that fails every item, or is quarantined -------------


class _JunkRejectedCount:
    """A consumer whose ``rejected`` attribute raises: its lane's own task dies on it, so
    it runs past its restart budget and is quarantined."""

    async def __call__(self, data: Any, event_time: datetime) -> None:
        pass

    @property
    def rejected(self) -> int:
        raise Meltdown("junk attribute")


class _NeverOpens:
    async def open(self) -> None:
        raise OSError("connection refused")

    async def close(self) -> None:
        pass

    async def __call__(self, data: Any, event_time: datetime) -> None:
        pass


def test_health_judges_failing_every_item_against_failing_now_and_then() -> None:
    """On a FakeClock, the producer records ``conv.health()`` at every tick (bound 2 s at
    0.2 s ticks): the consumer failing every item turns unhealthy once that has lasted
    more than 2 s; the one failing every third item never does."""

    async def always(data: int, event_time: datetime) -> None:
        raise ValueError("always")

    async def flaky(data: int, event_time: datetime) -> None:
        if data % 3 == 0:
            raise ValueError("now and then")

    verdicts: list[dict[str, str]] = []
    n = 0

    async def produce(event_time: datetime) -> int:
        nonlocal n
        n += 1
        verdicts.append(dict(conv.health().problems))
        return n

    sink = MemoryConsumer("sink")
    conv = AioConveyor(produce, [sink, Consumer(always, name="always"),
                                 Consumer(flaky, name="flaky")],
                       loop_interval=0.2, clock=FakeClock(), max_ticks=100, health_bound=2.0)
    asyncio.run(conv.run())
    assert sink.data == list(range(1, 101))
    assert conv.stats().consumer("flaky").failed == 33
    # tick k sees the failures of ticks 1 .. k-1: "always" has failed for (k - 2) * 0.2 s
    assert all("consumer:always" not in v for v in verdicts[:10])
    assert all("every item failed" in v["consumer:always"] for v in verdicts[13:])
    assert all(set(v) <= {"consumer:always"} for v in verdicts)  # flaky, sink: healthy


def url(conv: AioConveyor, path: str) -> str:
    address = conv.metrics_address
    assert address is not None
    return f"http://{address[0]}:{address[1]}{path}"


def test_healthz_is_503_naming_the_consumer_failing_every_item_and_the_quarantined_one() -> None:
    async def always(data: int, event_time: datetime) -> None:
        raise ValueError("always")

    async def flaky(data: int, event_time: datetime) -> None:
        if data % 2:
            raise ValueError("now and then")

    sink = MemoryConsumer("sink")
    conv = AioConveyor(Counter(), [sink, Consumer(always, name="always"),
                                   Consumer(flaky, name="flaky"),
                                   Consumer(_JunkRejectedCount(), name="junk")],
                       loop_interval=0.05, health_bound=0.3, restart_limit=1,
                       metrics_port=0)
    with conv:
        assert wait_until_blocking(
            lambda: {"consumer:always", "consumer:junk"} <= set(conv.health().problems))
        code, body = get(url(conv, "/healthz"))
        assert sink.wait_for(conv.stats().produced)  # the healthy lane is not held up
    assert code == 503
    verdict = json.loads(body)
    assert verdict["status"] == "unhealthy"
    assert "every item failed" in verdict["problems"]["consumer:always"]
    assert "ValueError: always" in verdict["problems"]["consumer:always"]
    assert "quarantined" in verdict["problems"]["consumer:junk"]
    assert "consumer:flaky" not in verdict["problems"]
    assert "consumer:sink" not in verdict["problems"]
    assert conv.exception is None


# -- metrics: a consumer's state, open() errors, skipped producer calls -------------------


def test_metrics_show_consumer_states_open_errors_and_skipped_ticks() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    release = threading.Event()
    n = 0

    def produce(event_time: datetime) -> int:
        nonlocal n
        n += 1
        if n == 5:
            release.wait(20)  # hangs past producer_timeout: the next ticks are skipped
        return n

    sink = MemoryConsumer("sink")
    door = Consumer(_NeverOpens(), name="door", backoff=0.02, max_backoff=0.02,
                    backoff_jitter=0)
    conv = AioConveyor(produce, [sink, door, Consumer(_JunkRejectedCount(), name="junk")],
                       loop_interval=0.05, producer_timeout=0.1, restart_limit=1,
                       metrics_port=0, name="meter")
    try:
        with conv:
            assert wait_until_blocking(
                lambda: conv.stats().producer_skipped >= 2
                and conv.stats().consumer("door").open_errors >= 2
                and conv.stats().consumer("junk").state == "quarantined")
            code, body = get(url(conv, "/metrics"))
            s = conv.stats()
    finally:
        release.set()
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    skipped = families["aioconveyor_producer_skipped"].samples
    assert skipped[0].name == "aioconveyor_producer_skipped_total"
    assert skipped[0].labels == {"conveyor": "meter"} and skipped[0].value >= 2
    opens = {x.labels["consumer"]: x.value
             for x in families["aioconveyor_consumer_open_errors"].samples}
    assert opens["door"] >= 2 and opens["sink"] == 0 and opens["junk"] == 0
    assert opens["door"] <= s.consumer("door").open_errors  # scraped before the snapshot
    states: dict[str, dict[str, float]] = {}
    for x in families["aioconveyor_consumer_state"].samples:
        states.setdefault(x.labels["consumer"], {})[x.labels["state"]] = x.value
    assert states["sink"] == {"connecting": 0, "open": 1, "quarantined": 0, "closed": 0}
    assert states["door"] == {"connecting": 1, "open": 0, "quarantined": 0, "closed": 0}
    assert states["junk"] == {"connecting": 0, "open": 0, "quarantined": 1, "closed": 0}
