"""8. Hot path: big payloads and many consumers at a 1 s interval (issue 12, point 7).

Two scenarios against the real :class:`~aioconveyor.AioConveyor` with the default
``SystemClock``, each row in a fresh process:

* *big*: the producer returns the same ~50 MB nested structure every tick (a dict holding a
  list of 110,000 small dicts of floats, ints and strings, built once), fanned out to 5
  consumers that only take ``len(data["rows"])``. By default every consumer gets its own
  ``copy.deepcopy``: that copying is what is measured.
* *many*: 10,000 trivial async consumers (distinct objects with distinct names) and a small
  payload (a dict of a few floats).

Each runs for a window of ``ticks`` grid times at ``loop_interval=1.0``. Peers in the same
run: the same scenario with every consumer ``Consumer(fn, copy=False)`` (the engine without
copies), and the *floor*: the same conveyor with no consumers at all.

Measured per row: missed ticks, producer lateness, delivery lag (consumer call minus grid
time), delivered %, CPU and wall time. The longest loop block is measured by a heartbeat
task in the conveyor's loop (started by the producer's first call): ``asyncio.sleep(0.01)``
in a loop, recording how much later than 10 ms each wake-up came.
"""

from __future__ import annotations

import asyncio
import copy
import math
import pickle
import random
import sys
import time
from datetime import datetime
from typing import Any

from ._util import Row, Section, Target, next_grid, percentile, run_worker, sleep_until

INTERVAL = 1.0
BIG_ROWS = 110_000
BIG_CONSUMERS = 5
MANY_CONSUMERS = 10_000
BEAT = 0.01
"""Seconds the heartbeat sleeps between wake-ups."""
BLOCK_LIMIT_MS = 100.0
LATENESS_LIMIT_MS = 5.0

COLUMNS = [
    ("label", "scenario / peer"), ("payload_mb", "payload MB"), ("consumers", "consumers"),
    ("expected", "ticks expected"), ("ticks", "ticks run"), ("missed", "missed"),
    ("stats_missed", "stats missed"), ("consumed_pct", "delivered %"),
    ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"),
    ("lag_p50_ms", "delivery lag p50 ms"),
    ("lag_max_ms", "delivery lag max ms"), ("block_max_ms", "longest block ms"),
    ("blocks_over_100ms", "blocks > 100 ms"), ("loop_blocked", "stats loop_blocked"),
    ("start_s", "start s"), ("cpu_s", "CPU s"), ("cpu_pct", "CPU %"), ("wall_s", "wall s"),
]


def big_payload(rows: int = BIG_ROWS) -> dict[str, Any]:
    """A realistic nested result: a dict holding a list of small dicts (about 50 MB)."""
    rng = random.Random(7)
    return {
        "source": "bench.hotpath",
        "unit": "degC",
        "rows": [{"id": i, "sensor": f"s{i % 1000:04d}", "t": 1.7e9 + i,
                  "value": rng.random(), "min": rng.random(), "max": rng.random()}
                 for i in range(rows)],
    }


def small_payload() -> dict[str, Any]:
    return {"t": 1.7e9, "value": 1.0, "min": 0.5, "max": 1.5}


def deep_size(obj: Any) -> int:
    """A rough size of ``obj`` in bytes: ``sys.getsizeof`` over dicts, lists and tuples,
    each object counted once (shared and interned objects once in all)."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple):
            stack.extend(o)
    return total


class Counter:
    """A trivial async consumer counting the items of ticks inside ``[lo, hi)``."""

    def __init__(self, name: str, touch: bool) -> None:
        self.name = name
        self.touch = touch
        self.lo = math.inf
        self.hi = math.inf
        self.count = 0
        self.rows = 0
        self.lags: list[float] = []  # call time minus grid time, s

    async def __call__(self, data: Any, event_time: datetime) -> None:
        now = time.time()
        if self.touch:
            self.rows = len(data["rows"])
        grid = event_time.timestamp()
        if self.lo <= grid < self.hi:
            self.count += 1
            self.lags.append(now - grid)


class Heartbeat:
    """Wakes every ``BEAT`` s in the loop; records how late each wake-up was."""

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []  # (wall time of the wake-up, extra s)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        before = time.monotonic()
        while True:
            await asyncio.sleep(BEAT)
            now = time.monotonic()
            self.gaps.append((time.time(), now - before - BEAT))
            before = now


def hotpath_run(scenario: str, copies: bool, ticks: int, measure_copy: bool = False) -> Row:
    """One conveyor at a 1 s interval for ``ticks`` grid times; measure every tick.

    ``scenario``: ``"big"`` (5 consumers of ~50 MB), ``"many"`` (10,000 trivial consumers)
    or ``"floor"`` (no consumers). ``copies=False`` wraps each consumer in
    ``Consumer(fn, copy=False)``.
    """
    from aioconveyor import AioConveyor, Consumer, current_tick

    row: Row = {"scenario": scenario, "copies": copies}
    if scenario == "big":
        data = big_payload()
        n = BIG_CONSUMERS
        row["payload_mb"] = deep_size(data) / 1e6
        if measure_copy:
            t = time.perf_counter()
            copy.deepcopy(data)
            row["deepcopy_ms"] = (time.perf_counter() - t) * 1000.0
            t = time.perf_counter()
            pickle.loads(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
            row["pickle_ms"] = (time.perf_counter() - t) * 1000.0
    else:
        data = small_payload()
        n = MANY_CONSUMERS if scenario == "many" else 0
        row["payload_mb"] = deep_size(data) / 1e6
    sinks = [Counter(f"c{i:05d}", touch=scenario == "big") for i in range(n)]
    consumers = [Consumer(s, copy=False) if not copies else s for s in sinks]

    stamps: list[tuple[float, float, float]] = []  # (grid, started, Tick.lateness)
    beat = Heartbeat()

    async def produce(event_time: datetime) -> dict[str, Any]:
        started = time.time()
        tick = current_tick()
        stamps.append((event_time.timestamp(), started,
                       tick.lateness if tick is not None else math.nan))
        beat.start()
        return data

    conv = AioConveyor(produce, consumers, loop_interval=INTERVAL, name=f"hotpath-{scenario}")
    wall0 = time.monotonic()
    conv.start()
    row["start_s"] = time.monotonic() - wall0
    t0 = next_grid(INTERVAL, 0.5)
    t1 = t0 + ticks * INTERVAL
    for s in sinks:  # hi first: a tick between the two assignments counts nowhere
        s.hi = t1 - 1e-6
        s.lo = t0 - 1e-6
    sleep_until(t0)
    cpu0, w0 = time.process_time(), time.monotonic()
    sleep_until(t1 - 0.05)  # before the grid time after the window: no tick outside it starts
    conv.stop(timeout=10.0)
    cpu1, w1 = time.process_time(), time.monotonic()
    stats = conv.stats()

    counted = [(g, s, lt) for g, s, lt in list(stamps) if t0 - 1e-6 <= g < t1 - 1e-6]
    late = [(s - g) * 1000.0 for g, s, _ in counted]
    lags = [lag * 1000.0 for s in sinks for lag in s.lags]
    gaps = [extra * 1000.0 for wall, extra in list(beat.gaps) if wall >= t0]
    cpu = cpu1 - cpu0
    row.update({
        "consumers": n, "expected": ticks, "ticks": len(counted),
        "missed": ticks - len(counted), "stats_missed": stats.missed_ticks,
        "consumed_pct": (100.0 * sum(s.count for s in sinks) / (ticks * n)) if n else math.nan,
        "p50_ms": percentile(late, 50), "p99_ms": percentile(late, 99),
        "max_ms": max(late) if late else math.nan,
        "tick_lateness_max_ms": max((lt * 1000.0 for _, _, lt in counted), default=math.nan),
        "stats_p50_ms": stats.lateness.p50_ms, "stats_p99_ms": stats.lateness.p99_ms,
        "stats_max_ms": stats.lateness.max_ms,
        "lag_p50_ms": percentile(lags, 50), "lag_p99_ms": percentile(lags, 99),
        "lag_max_ms": max(lags) if lags else math.nan,
        "block_max_ms": max(gaps) if gaps else math.nan,
        "blocks_over_100ms": sum(1 for g in gaps if g > BLOCK_LIMIT_MS),
        "beats": len(gaps), "loop_blocked": stats.loop_blocked,
        "cpu_s": cpu, "wall_s": w1 - w0, "cpu_pct": 100.0 * cpu / (w1 - w0),
        "total_wall_s": time.monotonic() - wall0,
    })
    return row


RUNS: tuple[tuple[str, bool, str], ...] = (
    ("big", True, f"{BIG_CONSUMERS} x 50 MB, deep copies (default)"),
    ("big", False, f"{BIG_CONSUMERS} x 50 MB, copy=False"),
    ("many", True, f"{MANY_CONSUMERS:,} trivial, deep copies (default)"),
    ("many", False, f"{MANY_CONSUMERS:,} trivial, copy=False"),
    ("floor", True, "no consumers (floor)"),
)


def run(quick: bool) -> Section:
    ticks = 6 if quick else 20
    section = Section(
        "hotpath", "Hot path: big payloads and many consumers at a 1 s interval", COLUMNS)
    for scenario, copies, label in RUNS:
        row = run_worker("bench.hotpath", "hotpath_run", timeout=240.0, scenario=scenario,
                         copies=copies, ticks=ticks,
                         measure_copy=scenario == "big" and copies)
        row["label"] = label
        section.rows.append(row)
    big = section.rows[0]
    section.notes = [
        f"{ticks} grid times at loop_interval=1.0 per row, default SystemClock, each row a "
        "fresh process; missed = grid times in the window the producer was never called for;"
        " stats missed = stats().missed_ticks at the end",
        f"payload: {BIG_ROWS:,} dicts of 6 fields in a list ({big['payload_mb']:.0f} MB by a "
        "recursive sys.getsizeof), the same object returned every tick; one copy.deepcopy of "
        f"it takes {big.get('deepcopy_ms', math.nan):.0f} ms here, one pickle round trip "
        f"{big.get('pickle_ms', math.nan):.0f} ms",
        "p50/p99/max = time.time() at the producer's first line minus the tick's grid time, "
        f"over the ticks run (with {ticks} ticks, p99 is the max); the JSON also has "
        "stats().lateness (wake-up minus planned start, every tick of the run)",
        f"longest block = the latest wake-up of a {BEAT * 1000:g} ms asyncio.sleep heartbeat "
        "in the conveyor's loop, minus 10 ms (from the first tick to the end of stop());"
        " stats loop_blocked = episodes the loop monitor saw (default block_threshold 1 s)",
        "delivery lag = time.time() at a consumer's first line minus the tick's grid time, "
        "over every call for a tick in the window (the last consumer of a tick waits for "
        "the copies and calls before it)",
        "delivered % = consumer calls for ticks in the window / (ticks expected x consumers);"
        " CPU = process CPU time from the first grid time until stop() returned, CPU % of "
        "that wall time (2 cores: up to 200 %)",
        "copy=False = every consumer wrapped in Consumer(fn, copy=False): the same engine "
        "without the deep copies; floor = the same producer with no consumers",
    ]
    for row, what in ((section.rows[0], f"{BIG_CONSUMERS} x 50 MB"),
                      (section.rows[2], f"{MANY_CONSUMERS:,} consumers")):
        section.targets += [
            Target(f"{what} at 1 s: missed ticks", "0", row["missed"], 0.0,
                   unit="ticks"),
            Target(f"{what} at 1 s: lateness p99", f"<= {LATENESS_LIMIT_MS:g} ms",
                   row["p99_ms"], LATENESS_LIMIT_MS, unit="ms"),
            Target(f"{what} at 1 s: longest loop block", f"<= {BLOCK_LIMIT_MS:g} ms",
                   row["block_max_ms"], BLOCK_LIMIT_MS, unit="ms"),
        ]
    return section
