"""Durable spool (queued items survive stop, crash and kill -9) and per-consumer hooks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from aioconveyor import AioConveyor, Batch, Consumer
from aioconveyor.testing import MemoryConsumer, wait_until_blocking

FAST = 0.02


async def produce(event_time: datetime) -> dict[str, Any]:
    return {"t": event_time.isoformat()}




def test_items_not_delivered_at_stop_are_delivered_by_the_next_run(tmp_path: Path) -> None:
    spool = tmp_path / "lane.db"

    async def dead_sink(data: Any, event_time: datetime) -> None:
        raise ConnectionError("database down")

    first = AioConveyor(produce, [Consumer(dead_sink, name="db", spool=spool, retries=10**6,
                                           backoff=0.01, max_backoff=0.05)],
                        loop_interval=FAST)
    first.start()
    assert wait_until_blocking(lambda: first.stats().produced >= 10)
    first.stop(timeout=0.5)
    s1 = first.stats().consumer("db")
    assert s1.delivered == 0 and s1.dropped == 0 and s1.failed == 0
    pending = s1.queued
    assert pending == first.stats().produced  # every item kept, none dropped

    sink = MemoryConsumer()
    second = AioConveyor(produce, [Consumer(sink, name="db", spool=spool)], loop_interval=FAST)
    with second:
        assert sink.wait_for(pending + 3)
    times = [d["t"] for d in sink.data]
    assert times == sorted(times) and len(set(times)) == len(times)  # in order, once each
    assert second.stats().consumer("db").offered == second.stats().produced + pending

    third = AioConveyor(produce, [Consumer(MemoryConsumer(), name="db", spool=spool)],
                        loop_interval=FAST, max_ticks=1)
    with third:
        assert third.join(10)
    assert third.stats().consumer("db").offered == 1  # nothing left over from the second run


def test_a_conveyor_killed_with_sigkill_leaves_its_backlog_for_the_next(tmp_path: Path) -> None:
    spool = tmp_path / "spool.db"
    script = textwrap.dedent(f"""
        import sys, time
        from aioconveyor import AioConveyor, Consumer

        async def produce(event_time):
            return event_time.isoformat()

        async def unreachable(data, event_time):
            raise ConnectionError("cut")

        conv = AioConveyor(produce, [Consumer(unreachable, name="pg", spool={str(spool)!r},
                                              retries=10**6, backoff=0.01, max_backoff=0.02)],
                           loop_interval={FAST})
        conv.start()
        while conv.stats().produced < 15:
            time.sleep(0.01)
        print("ready", flush=True)
        time.sleep(3600)
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            proc.kill()

    got: list[str] = []
    done = threading.Event()

    def writer(data: str, event_time: datetime) -> None:
        got.append(data)
        if len(got) >= 15:
            done.set()

    conv = AioConveyor(produce, [Consumer(writer, name="pg", spool=spool)], loop_interval=60)
    with conv:  # the next tick is up to a minute away: everything received is backlog
        assert done.wait(10)
    assert len(got) >= 15 and len(set(got)) == len(got) and got == sorted(got)


def test_unpicklable_data_is_counted_and_the_lane_goes_on(tmp_path: Path) -> None:
    n = 0

    async def sometimes_a_lock(event_time: datetime) -> Any:
        nonlocal n
        n += 1
        return threading.Lock() if n == 2 else n

    sink = MemoryConsumer()
    spec = Consumer(sink, spool=tmp_path / "s.db", copy=False)
    with AioConveyor(sometimes_a_lock, [spec], loop_interval=FAST, max_ticks=4) as conv:
        assert conv.join(10)
    assert sink.data == [1, 3, 4]
    c = conv.stats().consumers[0]
    assert c.dropped == 1 and c.delivered == 3


def test_hooks_see_deliveries_and_final_failures() -> None:
    delivered: list[Any] = []
    errors: list[tuple[str, Any]] = []

    async def on_delivered(data: Any, event_time: datetime) -> None:
        delivered.append(data)

    def on_error(exc: BaseException, data: Any, event_time: datetime) -> None:  # sync hook
        errors.append((str(exc), data))

    def odd_fails(data: int, event_time: datetime) -> None:
        if data % 2:
            raise ValueError(f"odd {data}")

    n = 0

    def produce_n(event_time: datetime) -> int:
        nonlocal n
        n += 1
        return n

    spec = Consumer(odd_fails, on_delivered=on_delivered, on_error=on_error, retries=1,
                    backoff=0.001)
    with AioConveyor(produce_n, [spec], loop_interval=FAST, max_ticks=6) as conv:
        assert conv.join(10)
    assert delivered == [2, 4, 6]
    assert errors == [("odd 1", 1), ("odd 3", 3), ("odd 5", 5)]
    c = conv.stats().consumers[0]
    assert (c.delivered, c.failed, c.errors, c.hook_errors) == (3, 3, 6, 0)


def test_a_broken_or_hung_hook_never_breaks_the_lane() -> None:
    async def bad_hook(data: Any, event_time: datetime) -> None:
        raise RuntimeError("hook bug")

    async def hung_hook(data: Any, event_time: datetime) -> None:
        await asyncio.sleep(3600)

    a, b = MemoryConsumer("a"), MemoryConsumer("b")
    conv = AioConveyor(produce, [Consumer(a, on_delivered=bad_hook),
                                 Consumer(b, on_delivered=hung_hook, timeout=0.05)],
                       loop_interval=FAST, max_ticks=5)
    with conv:
        assert conv.join(10)
    s = conv.stats()
    assert [c.delivered for c in s.consumers] == [5, 5]
    assert [c.hook_errors for c in s.consumers] == [5, 5]


def test_batches_are_spooled_and_recovered_whole(tmp_path: Path) -> None:
    spool = tmp_path / "b.db"

    async def down(data: Batch, event_time: datetime) -> None:
        raise ConnectionError("down")

    first = AioConveyor(produce, [Consumer(down, name="x", spool=spool, batch_size=4,
                                           retries=10**6, backoff=0.01)],
                        loop_interval=FAST)
    first.start()
    assert wait_until_blocking(lambda: first.stats().produced >= 9)
    first.stop(timeout=0.3)
    pending = first.stats().consumer("x").queued

    batches: list[Batch] = []

    async def up(data: Batch, event_time: datetime) -> None:
        batches.append(data)

    second = AioConveyor(produce, [Consumer(up, name="x", spool=spool, batch_size=4)],
                         loop_interval=60)
    with second:
        assert wait_until_blocking(lambda: sum(len(b) for b in batches) >= pending)
    times = [r.data["t"] for b in batches for r in b]
    assert len(times) == pending and times == sorted(times)


def test_records_a_consumer_rejects_are_counted_apart_from_deliveries() -> None:
    class Picky:
        """Skips odd numbers as bad data, like the built-in consumers skip bad records."""

        def __init__(self) -> None:
            self.rejected = 0
            self.written: list[int] = []

        async def __call__(self, data: Batch, event_time: datetime) -> None:
            for record in data:
                if record.data % 2:
                    self.rejected += 1
                else:
                    self.written.append(record.data)

    n = 0

    def produce_n(event_time: datetime) -> int:
        nonlocal n
        n += 1
        return n

    picky = Picky()
    with AioConveyor(produce_n, [Consumer(picky, batch_size=3)], loop_interval=FAST,
                     max_ticks=7) as conv:
        assert conv.join(10)
    c = conv.stats().consumers[0]
    assert picky.written == [2, 4, 6]
    assert (c.delivered, c.rejected, c.offered) == (3, 4, 7)


def test_rejected_data_is_counted_not_retried_and_reported_to_on_error() -> None:
    from aioconveyor import Rejected

    calls: list[int] = []
    reported: list[str] = []

    async def strict(data: Batch, event_time: datetime) -> None:
        calls.append(len(data))
        bad = [r.data for r in data if r.data % 3 == 0]
        if bad:  # write the good ones, then say how many were bad
            raise Rejected(f"not a valid reading: {bad}", count=len(bad))

    n = 0

    def produce_n(event_time: datetime) -> int:
        nonlocal n
        n += 1
        return n

    spec = Consumer(strict, batch_size=3, retries=5, on_error=lambda e, d, t: reported.append(str(e)))
    with AioConveyor(produce_n, [spec], loop_interval=FAST, max_ticks=9) as conv:
        assert conv.join(10)
    c = conv.stats().consumers[0]
    assert (c.delivered, c.rejected, c.retries, c.failed) == (6, 3, 0, 0)
    assert sum(calls) == 9  # nothing was tried twice
    assert len(reported) == 3 and "not a valid reading" in reported[0]
