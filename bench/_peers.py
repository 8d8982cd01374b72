"""The same trivial producer (and consumers) run by aioconveyor and by its peers.

* ``aioconveyor``: ``AioConveyor(produce, sinks, loop_interval=...)``, started on its thread.
* ``naive``: ``while True: produce(); await asyncio.sleep(interval)`` (the loop everyone
  writes first), fanning out with ``asyncio.gather`` over deep copies.
* ``apscheduler``: APScheduler 3 ``AsyncIOScheduler`` with an ``interval`` job whose
  ``start_date`` is on the grid, fanning out like ``naive``.

Each runs its own event loop on a thread; the calling thread only sleeps and reads the
process CPU clock. A tick is recorded as ``(planned, started)``: the grid time it is for
and the wall time the producer actually began.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from ._util import Row, next_grid, percentile, sleep_until

PEERS = ("aioconveyor", "naive", "apscheduler")
START_LEAD = 0.6
"""Seconds between starting a runner and the first grid time measured."""

Stamps = list[tuple[float, float]]


class Sink:
    """A trivial async consumer that counts the items of ticks inside the window."""

    def __init__(self, name: str, lo: float, hi: float) -> None:
        self.name = name
        self.lo = lo
        self.hi = hi
        self.count = 0

    async def __call__(self, data: Any, event_time: datetime) -> None:
        if self.lo <= event_time.timestamp() < self.hi:
            self.count += 1


class Runner(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def payload() -> dict[str, Any]:
    """What the trivial producer returns."""
    return {"sensor": "bench", "value": 1.0, "ok": True}


async def _fan_out(sinks: Sequence[Sink], data: Any, event_time: datetime) -> None:
    await asyncio.gather(*(sink(copy.deepcopy(data), event_time) for sink in sinks))


class ConveyorRunner:
    def __init__(self, interval: float, t0: float, stamps: Stamps, sinks: Sequence[Sink],
                 **options: Any) -> None:
        from aioconveyor import AioConveyor, SystemClock

        clock = options.pop("clock", None)
        if clock == "spin":  # the pre-timerfd sleep, for comparison
            options["clock"] = SystemClock(precise=False)
        elif isinstance(clock, dict):
            options["clock"] = SystemClock(**clock)

        async def produce(event_time: datetime) -> dict[str, Any]:
            started = time.time()
            stamps.append((event_time.timestamp(), started))
            return payload()

        self.conv = AioConveyor(produce, list(sinks), loop_interval=interval, name="bench",
                                **options)

    def start(self) -> None:
        self.conv.start()

    def stop(self) -> None:
        self.conv.stop()


class _ThreadLoop:
    """An event loop on a daemon thread, set up by ``setup`` inside it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, daemon=True, name="bench-peer")

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self.setup)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def setup(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        self.loop.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.teardown)
        self._thread.join(10)


class NaiveRunner(_ThreadLoop):
    def __init__(self, interval: float, t0: float, stamps: Stamps,
                 sinks: Sequence[Sink]) -> None:
        super().__init__()
        self.interval, self.t0, self.stamps, self.sinks = interval, t0, stamps, sinks
        self.task: asyncio.Task[None] | None = None

    async def produce(self, planned: float) -> dict[str, Any]:
        started = time.time()
        self.stamps.append((planned, started))
        return payload()

    async def main(self) -> None:
        await asyncio.sleep(max(0.0, self.t0 - time.time()))
        k = 0
        while True:
            planned = self.t0 + k * self.interval
            data = await self.produce(planned)
            if self.sinks:
                await _fan_out(self.sinks, data, datetime.fromtimestamp(planned, UTC))
            k += 1
            await asyncio.sleep(self.interval)

    def setup(self) -> None:
        self.task = self.loop.create_task(self.main())

    def teardown(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.loop.call_later(0.05, self.loop.stop)


class ApschedulerRunner(_ThreadLoop):
    def __init__(self, interval: float, t0: float, stamps: Stamps,
                 sinks: Sequence[Sink]) -> None:
        super().__init__()
        self.interval, self.t0, self.stamps, self.sinks = interval, t0, stamps, sinks
        self._planned: deque[float] = deque()
        self.scheduler: Any = None

    async def job(self) -> None:
        started = time.time()
        planned = self._planned.popleft() if self._planned else float("nan")
        self.stamps.append((planned, started))
        data = payload()
        if self.sinks:
            await _fan_out(self.sinks, data, datetime.fromtimestamp(planned, UTC))

    def _submitted(self, event: Any) -> None:
        self._planned.append(event.scheduled_run_times[-1].timestamp())

    def setup(self) -> None:
        from apscheduler.events import EVENT_JOB_SUBMITTED  # type: ignore[import-untyped]
        from apscheduler.schedulers.asyncio import (  # type: ignore[import-untyped]
            AsyncIOScheduler,
        )

        self.scheduler = AsyncIOScheduler(event_loop=self.loop, timezone=UTC)
        self.scheduler.add_listener(self._submitted, EVENT_JOB_SUBMITTED)
        self.scheduler.add_job(self.job, "interval", seconds=self.interval,
                               start_date=datetime.fromtimestamp(self.t0, UTC))
        self.scheduler.start()

    def teardown(self) -> None:
        self.scheduler.shutdown(wait=False)
        self.loop.call_later(0.05, self.loop.stop)


class FloorRunner:
    """The machine's floor: a plain thread sleeping to absolute deadlines (no event loop),
    skipping a grid time it wakes up for more than half an interval late (as aioconveyor's
    default grace does). No consumers."""

    def __init__(self, interval: float, t0: float, stamps: Stamps,
                 sinks: Sequence[Sink]) -> None:
        self.interval, self.t0, self.stamps = interval, t0, stamps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="bench-floor")

    def _main(self) -> None:
        k = 0
        while not self._stop.is_set():
            planned = self.t0 + k * self.interval
            while (remaining := planned - time.time()) > 0:
                time.sleep(remaining)
            started = time.time()
            if started - planned <= self.interval / 2:
                self.stamps.append((planned, started))
                payload()
                k += 1
            else:
                k = int((started - self.t0) / self.interval) + 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def make_runner(peer: str, interval: float, t0: float, stamps: Stamps,
                sinks: Sequence[Sink], **options: Any) -> Runner:
    factories: dict[str, Callable[..., Runner]] = {
        "aioconveyor": ConveyorRunner, "naive": NaiveRunner, "apscheduler": ApschedulerRunner,
        "floor": FloorRunner,
    }
    return factories[peer](interval, t0, stamps, sinks, **options)


def _trend(late: list[float]) -> float:
    """Median lateness of the last 10 % of ticks minus that of the first 10 %."""
    if len(late) < 2:
        return float("nan")
    n = max(1, len(late) // 10)
    return percentile(late[-n:], 50) - percentile(late[:n], 50)


def tick_run(peer: str, rate: float, duration: float, consumers: int = 0,
             options: dict[str, Any] | None = None) -> Row:
    """Run ``peer`` at ``rate`` Hz for ``duration`` s of grid time; measure every tick.

    Counted: ticks planned inside ``[t0, t0 + duration)`` that started before the window
    ended (plus half an interval). Lateness = started - planned; drift = the last counted
    tick's lateness minus the first's; CPU = process CPU time over the window.
    """
    interval = 1.0 / rate
    t0 = next_grid(interval, START_LEAD)
    t1 = t0 + duration
    stamps: Stamps = []
    sinks = [Sink(f"sink{i}", t0 - 1e-6, t1 - 1e-6) for i in range(consumers)]
    runner = make_runner(peer, interval, t0, stamps, sinks, **(options or {}))
    runner.start()
    sleep_until(t0)
    cpu0 = time.process_time()
    sleep_until(t1)
    cpu1 = time.process_time()
    sleep_until(t1 + interval)
    runner.stop()

    expected = round(duration * rate)
    counted = [(p, s) for p, s in list(stamps)
               if t0 - 1e-6 <= p < t1 - 1e-6 and s < t1 + interval / 2]
    late = [(s - p) * 1000.0 for p, s in counted]
    cpu = cpu1 - cpu0
    row: Row = {
        "peer": peer, "rate_hz": rate, "duration_s": duration, "consumers": consumers,
        "expected": expected, "ticks": len(counted),
        "delivered_pct": 100.0 * len(counted) / expected,
        "p50_ms": percentile(late, 50), "p99_ms": percentile(late, 99),
        "max_ms": max(late) if late else float("nan"),
        "drift_ms": late[-1] - late[0] if late else float("nan"),
        "trend_ms": _trend(late),
        "cpu_s": cpu, "cpu_pct": 100.0 * cpu / duration,
        "cpu_s_per_1000": 1000.0 * cpu / len(counted) if counted else float("nan"),
    }
    if consumers:
        got = sum(s.count for s in sinks)
        row["consumed_pct"] = 100.0 * got / (expected * consumers)
    return row


def idle_run(peer: str, interval: float, window: float, settle: float = 1.0) -> Row:
    """CPU used by ``peer`` over ``window`` s while waiting between ticks ``interval`` apart."""
    t0 = next_grid(interval, START_LEAD)
    stamps: Stamps = []
    runner = make_runner(peer, interval, t0, stamps, [])
    runner.start()
    start = time.time() + settle
    sleep_until(start)
    cpu0 = time.process_time()
    sleep_until(start + window)
    cpu1 = time.process_time()
    runner.stop()
    cpu = cpu1 - cpu0
    return {"peer": peer, "interval_s": interval, "window_s": window, "cpu_s": cpu,
            "cpu_pct": 100.0 * cpu / window, "ticks_in_window": sum(
                1 for _, s in stamps if start <= s < start + window)}
