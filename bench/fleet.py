"""8. Scale on one machine (issue 14, point 8): many producers, two shared consumers.

* *10,000 producers*, each every 10 s, offsets spread evenly over the period (1,000 ticks/s
  in all), each feeding the same two in-memory async consumers.
* *100 producers at 100 Hz* each, offsets spread over the 10 ms period (10,000 ticks/s).

Peer: APScheduler 3, its ``AsyncIOScheduler`` with one ``interval`` job per producer
(``start_date`` on the producer's grid), whose job records its lateness, builds the item
and calls the same two consumers with ``copy.deepcopy`` copies through ``asyncio.gather``
(aioconveyor's lanes deep-copy the item for each consumer by default).

Each run is a fresh process; the peers are interleaved (aioconveyor, APScheduler,
aioconveyor, ...) and the median of the repeats is reported. Columns:

* *start-up*: constructing everything (10,000 ``Producer`` objects / ``add_job`` calls)
  and starting the scheduler, until ``start()`` returns (wall time);
* *delivered %*: consumer calls for ticks whose grid time lies in the window, over
  (grid times in the window x 2 consumers);
* *lateness*: ``time.time()`` at the producer's first line minus its grid time;
* *CPU %*: process CPU time (all threads) over the window / the window's wall time;
* *RSS*: resident set size at the end of the window.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ._peers import Sink, payload
from ._util import Row, Section, Target, percentile, ratio, rss_bytes, run_worker, sleep_until

PEERS = ("aioconveyor", "apscheduler")
SETTLE = 2.0
"""Seconds between the end of start-up and the start of the measured window."""


def _offsets(producers: int, period: float) -> list[float]:
    return [i * period / producers for i in range(producers)]


class _Stamps:
    """Lateness of the ticks whose grid time is inside the window."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.late: list[float] = []

    def add(self, planned: float, started: float) -> None:
        if self.lo <= planned < self.hi:
            self.late.append(started - planned)


def _conveyor(producers: int, period: float, stamps: _Stamps, sinks: list[Sink],
              clock: dict[str, Any] | None = None) -> Callable[[], None]:
    import aioconveyor

    async def produce(event_time: datetime) -> dict[str, Any]:
        started = time.time()
        stamps.add(event_time.timestamp(), started)
        return payload()

    conv = aioconveyor.AioConveyor(
        consumers=list(sinks), name="fleet",
        clock=None if clock is None else aioconveyor.SystemClock(**clock),
        producers=[aioconveyor.Producer(produce, name=f"p{i}", every=period, offset=offset)
                   for i, offset in enumerate(_offsets(producers, period))])
    conv.start()
    return conv.stop


def _apscheduler(producers: int, period: float, stamps: _Stamps, sinks: list[Sink],
                 clock: dict[str, Any] | None = None) -> Callable[[], None]:
    import threading

    from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    base = time.time() // period * period  # a start_date in the past: from the next one

    async def job(offset: float) -> None:
        started = time.time()
        k = round((started - base - offset) / period)  # lateness < period / 2
        planned = base + offset + k * period
        stamps.add(planned, started)
        data = payload()
        when = datetime.fromtimestamp(planned, UTC)
        await asyncio.gather(*(sink(copy.deepcopy(data), when) for sink in sinks))

    holder: dict[str, Any] = {}

    def setup() -> None:
        scheduler = AsyncIOScheduler(event_loop=loop, timezone=UTC)
        for offset in _offsets(producers, period):
            scheduler.add_job(job, "interval", seconds=period, args=(offset,),
                              start_date=datetime.fromtimestamp(base + offset, UTC))
        scheduler.start()
        holder["scheduler"] = scheduler
        ready.set()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(setup)
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True, name="bench-apscheduler")
    thread.start()
    ready.wait()

    def stop() -> None:
        def down() -> None:
            holder["scheduler"].shutdown(wait=False)
            loop.call_later(0.05, loop.stop)

        loop.call_soon_threadsafe(down)
        thread.join(10)

    return stop


def fleet_run(peer: str, producers: int, period: float, duration: float,
              clock: dict[str, Any] | None = None) -> Row:
    """Run ``producers`` producers every ``period`` s under ``peer``; measure a window of
    ``duration`` s that starts :data:`SETTLE` s after start-up."""
    stamps = _Stamps(0.0, 0.0)
    sinks = [Sink(f"sink{i}", 0.0, 0.0) for i in range(2)]
    rss0 = rss_bytes()
    started = time.perf_counter()
    start = _conveyor if peer == "aioconveyor" else _apscheduler
    stop = start(producers, period, stamps, sinks, clock)
    startup = time.perf_counter() - started
    # the window: whole ticks of the fleet's grid (grid times k * period / producers)
    step = period / producers
    w0 = (time.time() + SETTLE) // step * step + step / 2
    w1 = w0 + duration
    stamps.lo, stamps.hi = w0, w1
    for sink in sinks:
        sink.lo, sink.hi = w0, w1
    sleep_until(w0)
    cpu0 = time.process_time()
    sleep_until(w1)
    cpu1 = time.process_time()
    wall = time.time() - w0
    sleep_until(w1 + min(1.0, period))  # the window's last ticks deliver
    gc.collect()
    rss = rss_bytes()
    stop()
    expected = round(duration / step)
    late = [x * 1000.0 for x in stamps.late]
    consumed = sum(s.count for s in sinks)
    return {
        "peer": peer, "producers": producers, "period_s": period, "duration_s": duration,
        "expected": expected, "ticks": len(late),
        "ticks_pct": 100.0 * len(late) / expected,
        "delivered_pct": 100.0 * consumed / (2 * expected),
        "p50_ms": percentile(late, 50), "p99_ms": percentile(late, 99),
        "max_ms": max(late) if late else float("nan"),
        "cpu_pct": 100.0 * (cpu1 - cpu0) / wall,
        "cpu_ms_per_tick": 1000.0 * (cpu1 - cpu0) / max(1, len(late)),
        "rss_mib": rss / 2**20, "rss_growth_mib": (rss - rss0) / 2**20,
        "startup_s": startup,
    }


COLUMNS = [
    ("label", "fleet / peer"), ("ticks", "ticks (median)"), ("ticks_pct", "ticks %"),
    ("delivered_pct", "delivered %"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
    ("p99_max", "p99 worst run"), ("max_ms", "max ms"), ("cpu_pct", "CPU %"),
    ("cpu_x", "CPU x peer"), ("rss_mib", "RSS MiB"), ("rss_x", "RSS x peer"),
    ("startup_s", "start-up s"),
]

FLEETS = (("10,000 producers every 10 s", 10_000, 10.0),
          ("100 producers at 100 Hz", 100, 0.01))


def _median(rows: list[Row], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) == r.get(key)]
    return statistics.median(values) if values else float("nan")


def run(quick: bool) -> list[Section]:
    duration, repeats = (10.0, 1) if quick else (25.0, 2)
    section = Section(
        "fleet", "Scale: many producers feeding two shared consumers, vs APScheduler 3",
        COLUMNS,
        notes=[f"{duration:g} s measured per run ({SETTLE:g} s after start-up), {repeats} "
               "run(s) per peer, interleaved, each in a fresh process; medians (p99 worst "
               "run: the highest p99 of them)",
               "APScheduler 3: AsyncIOScheduler, one interval job per producer with its "
               "start_date on the producer's grid; the job deep-copies the item for each "
               "of the two consumers and calls them with asyncio.gather",
               "x peer = aioconveyor's median / APScheduler's (lower is better for us)",
               "start-up = constructing the producers (Producer objects / add_job) and "
               "starting, until start() returns"],
    )
    for label, producers, period in FLEETS:
        results: dict[str, list[Row]] = {peer: [] for peer in PEERS}
        for _ in range(repeats):
            for peer in PEERS:
                results[peer].append(run_worker("bench.fleet", "fleet_run", timeout=600,
                                                peer=peer, producers=producers,
                                                period=period, duration=duration))
        med = {peer: {k: _median(rows, k) for k in rows[0] if k != "peer"}
               for peer, rows in results.items()}
        for peer in PEERS:
            m = med[peer]
            section.rows.append({
                "label": f"{label}: {peer}", "ticks": m["ticks"], "ticks_pct": m["ticks_pct"],
                "delivered_pct": m["delivered_pct"], "p50_ms": m["p50_ms"],
                "p99_ms": m["p99_ms"], "p99_max": max(r["p99_ms"] for r in results[peer]),
                "max_ms": m["max_ms"], "cpu_pct": m["cpu_pct"],
                "cpu_x": ratio(m["cpu_pct"], med["apscheduler"]["cpu_pct"]),
                "rss_mib": m["rss_mib"],
                "rss_x": ratio(m["rss_mib"], med["apscheduler"]["rss_mib"]),
                "startup_s": m["startup_s"],
            })
        ours, aps = med["aioconveyor"], med["apscheduler"]
        section.targets += [
            Target(f"{label}: delivered", "= 100 %", ours["delivered_pct"], 100.0,
                   higher_is_better=True, unit="%"),
            Target(f"{label}: lateness p99", "<= 0.5 ms", ours["p99_ms"], 0.5, unit="ms"),
            Target(f"{label}: CPU vs APScheduler", "<= 1.0 x",
                   ratio(ours["cpu_pct"], aps["cpu_pct"]), 1.0, unit="x"),
            Target(f"{label}: RSS vs APScheduler", "<= 2.0 x",
                   ratio(ours["rss_mib"], aps["rss_mib"]), 2.0, unit="x"),
            Target(f"{label}: start-up", "<= 5 s", ours["startup_s"], 5.0, unit="s"),
        ]
    return [section]
