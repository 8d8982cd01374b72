"""Stats, metrics and health per producer: ``/metrics`` labels, ``/healthz`` names, summary."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from aioconveyor import AioConveyor, Producer
from aioconveyor._health import MAX_NAMED_PRODUCERS, assess
from aioconveyor._metrics import PRODUCER_SERIES, render
from aioconveyor._process import summary_lines
from aioconveyor._stats import LatenessStats, ProducerStats
from aioconveyor.testing import FakeClock, MemoryConsumer
from support.http import get, wait_for_status

T0 = 1_794_999_600.0
FAST = 0.05


def grid(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)



def families(body: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def by_producer(family: Any) -> dict[str, float]:
    return {s.labels["producer"]: s.value for s in family.samples}


# -- /metrics ----------------------------------------------------------------------------


def test_metrics_have_per_producer_series_beside_the_unchanged_totals() -> None:
    async def meter(event_time: datetime) -> dict[str, Any]:
        return {"kwh": 1}

    async def broken(event_time: datetime) -> None:
        raise ValueError("no answer")

    sink = MemoryConsumer("sink")
    conv = AioConveyor(consumers=[sink], metrics_port=0, name="home", producers=[
        Producer(meter, name="meter", every=FAST),
        Producer(broken, name="broken", every=FAST, consumers=["sink"]),
    ])
    with conv:
        assert sink.wait_for(3)
        address = conv.metrics_address
        assert address is not None
        code, body = get(f"http://{address[0]}:{address[1]}/metrics")
    assert code == 200
    found = families(body)
    ticks = by_producer(found["aioconveyor_producer_ticks"])
    assert set(ticks) == {"meter", "broken"} and ticks["meter"] >= 3
    # the conveyor-wide series keep their names and meaning: sums over the producers
    (total,) = found["aioconveyor_ticks"].samples
    assert total.labels == {"conveyor": "home"} and total.value == sum(ticks.values())
    assert by_producer(found["aioconveyor_producer_produced"])["broken"] == 0
    errors = by_producer(found["aioconveyor_producer_call_errors"])
    assert errors["broken"] >= 1 and errors["meter"] == 0
    assert {s.labels["conveyor"] for s in found["aioconveyor_producer_ticks"].samples} == {"home"}
    hist = found["aioconveyor_producer_tick_lateness_seconds"]
    assert hist.type == "histogram"
    meter_samples = [s for s in hist.samples if s.labels["producer"] == "meter"]
    assert [s.labels["le"] for s in meter_samples if "le" in s.labels] == [
        "0.001", "0.01", "0.1", "1.0", "+Inf"]
    count = next(s.value for s in meter_samples if s.name.endswith("_count"))
    assert count == ticks["meter"]
    assert by_producer(found["aioconveyor_producer_hung"]) == {"meter": 0.0, "broken": 0.0}
    nxt = by_producer(found["aioconveyor_producer_next_tick_timestamp_seconds"])
    last = by_producer(found["aioconveyor_producer_last_tick_timestamp_seconds"])
    assert last["meter"] < nxt["meter"] <= last["meter"] + 2 * FAST + 1e-6
    states = {s.labels["state"]: s.value for s in found["aioconveyor_producers"].samples}
    assert set(states) == {"waiting", "running", "hung", "finished"} and sum(states.values()) == 2
    # no name has two label sets (the totals keep theirs, without "producer")
    names = [line.split("{")[0] for line in body.decode().splitlines()
             if line.startswith("# TYPE")]
    assert len(names) == len(set(names))
    for total in ("aioconveyor_producer_errors", "aioconveyor_producer_timeouts",
                  "aioconveyor_producer_skipped"):
        assert all("producer" not in x.labels for x in found[total].samples), total


def test_a_producer_costs_a_small_fixed_number_of_series() -> None:
    """Ten thousand devices is a real use: each producer adds PRODUCER_SERIES lines."""

    def lines(n: int) -> int:
        conv = AioConveyor(consumers=[MemoryConsumer("a")])
        for i in range(n):
            conv.add_producer(lambda t: 1, name=f"dev{i}", every=10)
        body = render(conv.stats).decode()
        return sum(1 for line in body.splitlines() if line and not line.startswith("#"))

    # (before the start, the next and last tick time gauges have no sample yet)
    assert lines(3) - lines(1) == 2 * (PRODUCER_SERIES - 2)
    assert PRODUCER_SERIES == 18


def test_a_finished_producer_has_no_next_tick_in_metrics() -> None:
    conv = AioConveyor(consumers=[MemoryConsumer("a")], producers=[
        Producer(lambda t: 1, name="once", every=FAST, max_ticks=1)])
    with conv:
        assert conv.join(10)
    found = families(render(conv.stats))
    assert found["aioconveyor_producer_next_tick_timestamp_seconds"].samples == []
    assert by_producer(found["aioconveyor_producer_last_tick_timestamp_seconds"])["once"] > 0
    states = {s.labels["state"]: s.value for s in found["aioconveyor_producers"].samples}
    assert states["finished"] == 1


# -- health ------------------------------------------------------------------------------


async def test_health_names_a_hung_and_a_stuck_producer_past_their_own_bounds() -> None:
    clock = FakeClock(start=T0 + 0.5)
    release = asyncio.Event()
    verdicts: list[tuple[float, dict[str, str]]] = []
    conv: AioConveyor | None = None

    async def watch(event_time: datetime) -> float:
        assert conv is not None
        verdicts.append((clock.time() - T0, dict(conv.health().problems)))
        return clock.time()

    async def hangs(event_time: datetime) -> None:
        while not release.is_set():  # ignores cancellation: hung past its timeout
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    async def slow(event_time: datetime) -> None:
        await release.wait()  # no timeout: its call simply runs on

    conv = AioConveyor(consumers=[MemoryConsumer()], clock=clock, producers=[
        Producer(watch, name="watch", every=1, max_ticks=30),
        Producer(hangs, name="hangs", every=1, timeout=2),     # bound: 10 s
        Producer(slow, name="slow", every=5, timeout=math.inf),  # bound: 15 s
        Producer(lambda t: 1, name="done", every=1, max_ticks=2),  # finished: fine
    ])
    task = asyncio.create_task(conv.run())
    try:
        while len(verdicts) < 30:  # noqa: ASYNC110 - turns of the loop, fake time
            await asyncio.sleep(0)
        stats = conv.stats()
    finally:
        release.set()
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert stats.producer("done").state == "finished"
    for t, problems in verdicts:
        # "hangs" timed out at T0+3 and never returned: unhealthy once hung for > 10 s;
        # "slow" has run since T0+5: unhealthy after 15 s; the loop itself stays on time
        expected = {"producer:hangs"} if t >= 14 else set()
        if t >= 21:
            expected.add("producer:slow")
        assert set(problems) == expected, (t, problems)
    problems = verdicts[-1][1]
    hung = stats.producer("hangs").last_error_time  # its timeout: hung since then
    assert hung is not None and grid(T0 + 3) <= hung < grid(T0 + 4)
    assert problems["producer:hangs"].startswith(
        f"call hung past its timeout since {hung.isoformat()} "
        f"({(grid(T0 + 30) - hung).total_seconds():.1f} s), not returning; ")
    assert "tick(s) skipped; last error: TimeoutError" in problems["producer:hangs"]
    assert problems["producer:slow"] == f"call of tick {grid(T0 + 5).isoformat()} running for 25.0 s"


def _producer(name: str, **changes: Any) -> ProducerStats:
    base = ProducerStats(
        name=name, ticks=1, produced=1, empty=0, errors=0, timeouts=0, missed_ticks=0,
        skipped=0, standby_ticks=0, lateness=LatenessStats(0.0, 0.0, 0.0, 0),
        last_tick_time=grid(T0), next_tick_time=grid(T0 + 10), state="waiting",
        consumers=None, leader_role=None, last_error=None, last_error_time=None)
    return replace(base, **changes)


def _stats_with(*producers: ProducerStats) -> Any:
    conv = AioConveyor(consumers=[MemoryConsumer()], producers=[
        Producer(lambda t: 1, name="x", every=10)])
    upcoming = [p.next_tick_time for p in producers
                if p.next_tick_time is not None and p.state != "finished"]
    return replace(conv.stats(), running=True, producers=producers,
                   next_tick_time=min(upcoming) if upcoming else None)


def test_a_loop_behind_names_the_scheduler_and_the_producers_it_delays() -> None:
    stats = _stats_with(_producer("meter"), _producer("api", next_tick_time=grid(T0 + 300)),
                        _producer("once", state="finished", next_tick_time=grid(T0)))
    now = grid(T0 + 10 + 12)
    verdict = assess(stats, now=now, bound=10, producer_bounds={"meter": 10, "api": 900})
    assert verdict.problems == {
        "scheduler": f"tick of {grid(T0 + 10).isoformat()} overdue by 12.0 s",
        "producer:meter": f"tick of {grid(T0 + 10).isoformat()} overdue by 12.0 s, not "
                          "started (the tick loop is behind)",
    }


def test_a_producer_running_long_is_its_own_problem_not_the_schedulers() -> None:
    stats = _stats_with(_producer("meter"),
                        _producer("stuck", state="running", next_tick_time=grid(T0),
                                  last_error="ValueError: earlier", last_error_time=grid(T0)))
    verdict = assess(stats, now=grid(T0 + 9), bound=5)
    assert set(verdict.problems) == {"producer:stuck"}
    assert verdict.problems["producer:stuck"] == (
        f"call of tick {grid(T0).isoformat()} running for 9.0 s; last error: ValueError: earlier")


def test_thousands_of_overdue_producers_make_a_short_answer() -> None:
    many = [_producer(f"dev{i}") for i in range(MAX_NAMED_PRODUCERS + 5)]
    verdict = assess(_stats_with(*many), now=grid(T0 + 60), bound=10)
    named = [k for k in verdict.problems if k.startswith("producer:")]
    assert len(named) == MAX_NAMED_PRODUCERS
    assert verdict.problems["producers"] == (
        f"{MAX_NAMED_PRODUCERS + 5} producers unhealthy, the first {MAX_NAMED_PRODUCERS} named")
    assert "scheduler" in verdict.problems


def test_healthz_names_a_hung_producer_over_http_and_recovers() -> None:
    release = threading.Event()

    def stuck(event_time: datetime) -> None:  # a sync call: cancelling cannot stop it
        if not release.is_set():
            release.wait(30)

    sink = MemoryConsumer("sink")
    conv = AioConveyor(consumers=[sink], metrics_port=0, health_bound=0.3, producers=[
        Producer(lambda t: 1, name="fine", every=FAST),
        Producer(stuck, name="stuck", every=FAST, timeout=0.1),
    ])
    with conv:
        address = conv.metrics_address
        assert address is not None
        base = f"http://{address[0]}:{address[1]}"
        try:
            body = json.loads(wait_for_status(f"{base}/healthz", 503))
            assert set(body["problems"]) == {"producer:stuck"}, body
            assert body["problems"]["producer:stuck"].startswith("call hung past its timeout")
            _, metrics = get(f"{base}/metrics")
            assert by_producer(families(metrics)["aioconveyor_producer_hung"])["stuck"] == 1.0
        finally:
            release.set()
        wait_for_status(f"{base}/healthz", 200)  # the call returned: it ticks again
        assert sink.wait_for(3)


def test_health_of_the_classic_single_producer_still_says_scheduler() -> None:
    with AioConveyor(lambda t: 1, [MemoryConsumer()], loop_interval=FAST, max_ticks=1) as conv:
        assert conv.join(10)
    late = replace(conv.stats(), running=True, next_tick_time=grid(T0))
    assert set(assess(late, now=grid(T0 + 60), bound=10).problems) == {"scheduler"}


# -- the end-of-run summary --------------------------------------------------------------


def test_summary_has_a_line_per_producer_when_there_are_several() -> None:
    clock = FakeClock(start=T0 + 0.5)

    def broken(event_time: datetime) -> None:
        raise OSError("meter offline")

    conv = AioConveyor(consumers=[MemoryConsumer("sink")], clock=clock, producers=[
        Producer(lambda t: 1, name="inverter", every=10, max_ticks=3),
        Producer(broken, name="meter", every=30, max_ticks=1),
    ])
    asyncio.run(conv.run())
    lines = summary_lines(conv.stats(), 30.0, "finished")
    assert lines[0].startswith("summary: stopped (finished) after 30.0 s: 4 ticks")
    assert lines[1].startswith("  producer inverter: 3 ticks, 3 produced, 0 empty, 0 errors, "
                               "0 missed; lateness p99 ")
    assert lines[2].startswith("  producer meter: 1 ticks, 0 produced, 0 empty, 1 errors")
    assert lines[2].endswith("; last error: OSError: meter offline")
    assert lines[3].startswith("  sink: 3 delivered")


def test_summary_of_a_single_producer_is_unchanged() -> None:
    with AioConveyor(lambda t: 1, [MemoryConsumer("sink")], loop_interval=FAST,
                     max_ticks=2) as conv:
        assert conv.join(10)
    lines = summary_lines(conv.stats(), 1.0, "finished")
    assert len(lines) == 2 and lines[1].startswith("  sink: 2 delivered")


def test_summary_of_thousands_of_producers_stays_short() -> None:
    conv = AioConveyor(consumers=[MemoryConsumer("sink")])
    for i in range(50):
        conv.add_producer(lambda t: 1, name=f"dev{i}", every=10)
    lines = summary_lines(conv.stats(), 1.0, "finished")
    producer_lines = [line for line in lines if line.startswith("  producer ")]
    assert len(producer_lines) == 10
    assert "  ... and 40 more producers (see stats() or /metrics)" in lines
