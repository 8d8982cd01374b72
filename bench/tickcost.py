"""9. Cost per tick (issue 14, point 9): CPU per tick, punctuality at a CPU cost, import time.

Three tables, every peer measured in this same run, each row in a fresh process, the
peers interleaved (aioconveyor, peer, aioconveyor, peer, ...) and repeated, and the
median of the repeats reported, so a burst of load on the machine hits every peer alike:

* *CPU per tick*: 100 Hz with 1, 10 and 100 trivial async consumers. aioconveyor (its
  lanes deep-copy the item for every consumer) against APScheduler 3 (``AsyncIOScheduler``,
  an ``interval`` job that hands each consumer a ``copy.deepcopy`` through
  ``asyncio.gather``), and a naive ``asyncio.sleep`` loop doing the same.
* *Rates*: 10 Hz, 100 Hz and 1 kHz with one consumer: lateness, delivered % and CPU % of
  aioconveyor's default clock and both ends of its ``SystemClock(busy=...)`` setting
  (``busy=0``: never spins; ``busy=1``: spins as long as its margin asks), APScheduler 3 and
  the floor (a bare thread sleeping with ``time.sleep``, no event loop, no work).
* *Import*: ``from aioconveyor import AioConveyor`` against ``from
  apscheduler.schedulers.asyncio import AsyncIOScheduler`` (APScheduler with what its
  ``AsyncIOScheduler`` needs), wall time in fresh interpreters.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from ._util import ROOT, Row, Section, Target, ratio, run_worker


def statement_ms(statement: str) -> float:
    """Wall time of ``statement`` (an import) in a fresh interpreter, in ms: everything it
    loads, lazily exported names included (``-X importtime`` of one module would miss
    what a name loads on first use)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    # with byte-code caches, as an installed package has them: PYTHONDONTWRITEBYTECODE
    # would have aioconveyor (a source checkout) compiled on every import and not the peer
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True, env=env)
    return 1000.0 * float(proc.stdout.strip().splitlines()[-1])

CONSUMERS = (1, 10, 100)
CPU_PEERS = ("aioconveyor", "apscheduler", "naive")
RATE_RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("aioconveyor", "aioconveyor (default, busy=0.01)", {}),
    ("aioconveyor", "aioconveyor busy=0", {"clock": {"busy": 0.0}}),
    ("aioconveyor", "aioconveyor busy=1", {"clock": {"busy": 1.0}}),
    ("apscheduler", "apscheduler", {}),
    ("floor", "floor", {}),
)
IMPORTS = (("aioconveyor", "from aioconveyor import AioConveyor"),
           ("apscheduler", "from apscheduler.schedulers.asyncio import AsyncIOScheduler"))

CPU_COLUMNS = [
    ("label", "consumers / peer"), ("ticks", "ticks (median)"),
    ("consumed_pct", "delivered %"), ("cpu_ms", "CPU ms / tick"),
    ("cpu_min", "min"), ("cpu_max", "max"), ("cpu_x", "x aioconveyor"),
    ("p99_ms", "p99 ms"),
]
RATE_COLUMNS = [
    ("label", "rate / peer"), ("ticks", "ticks"), ("delivered_pct", "delivered %"),
    ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p99_max", "p99 worst run"),
    ("max_ms", "max ms"), ("cpu_pct", "CPU %"), ("cpu_ms", "CPU ms / tick"),
]
IMPORT_COLUMNS = [("what", "import"), ("module", "statement"), ("median_ms", "median ms"),
                  ("min_ms", "min ms"), ("x", "x aioconveyor")]


def _median(rows: list[Row], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) == r.get(key)]  # drop nan
    return statistics.median(values) if values else float("nan")


def _interleaved(runs: list[tuple[str, Callable[[], Row]]], repeats: int) -> dict[str, list[Row]]:
    """Each run ``repeats`` times, round-robin; the rows per label."""
    out: dict[str, list[Row]] = {label: [] for label, _ in runs}
    for _ in range(repeats):
        for label, fn in runs:
            out[label].append(fn())
    return out


def _tick(peer: str, rate: float, duration: float, consumers: int,
          options: dict[str, Any] | None = None) -> Callable[[], Row]:
    return lambda: run_worker("bench._peers", "tick_run", peer=peer, rate=rate,
                              duration=duration, consumers=consumers, options=options or {})


def cpu_section(quick: bool) -> Section:
    duration, repeats = (2.0, 2) if quick else (4.0, 3)
    section = Section(
        "tickcost_cpu", "Cost per tick: CPU at 100 Hz with 1, 10 and 100 consumers",
        CPU_COLUMNS,
        notes=[f"{duration:g} s at 100 Hz per run, {repeats} runs per row interleaved with "
               "the peers; CPU = process CPU time (all threads) / ticks in the window, "
               "median (min, max) of the runs",
               "x aioconveyor = the row's median CPU per tick / aioconveyor's (higher: the "
               "peer costs more)",
               "the peers deep-copy the item per consumer and call the consumers with "
               "asyncio.gather inside the job/loop; aioconveyor through its lanes"],
    )
    for n in CONSUMERS:
        runs = [(peer, _tick(peer, 100.0, duration, n)) for peer in CPU_PEERS]
        results = _interleaved(runs, repeats)
        base = _median(results["aioconveyor"], "cpu_s_per_1000")
        for peer in CPU_PEERS:
            rows = results[peer]
            cpu = [r["cpu_s_per_1000"] for r in rows]
            section.rows.append({
                "label": f"{n} {peer}", "ticks": _median(rows, "ticks"),
                "consumed_pct": _median(rows, "consumed_pct"), "cpu_ms": statistics.median(cpu),
                "cpu_min": min(cpu), "cpu_max": max(cpu),
                "cpu_x": ratio(statistics.median(cpu), base), "p99_ms": _median(rows, "p99_ms"),
            })
        aps = _median(results["apscheduler"], "cpu_s_per_1000")
        section.targets.append(Target(
            f"CPU per tick at 100 Hz, {n} consumer{'s' if n > 1 else ''}, vs APScheduler",
            "<= 1.0 x", ratio(base, aps), 1.0, unit="x"))
    return section


def rate_section(quick: bool) -> Section:
    plan = ((10.0, 3.0), (100.0, 2.0), (1000.0, 2.0)) if quick else (
        (10.0, 5.0), (100.0, 4.0), (1000.0, 4.0))
    repeats = 2 if quick else 3
    section = Section(
        "tickcost_rates", "Cost per tick: punctuality and CPU at 10 Hz, 100 Hz and 1 kHz",
        RATE_COLUMNS,
        notes=["one consumer; lateness = time.time() at the producer's first line minus the "
               "grid time; medians of the runs (p99 worst run: the highest p99 of them)",
               "busy = SystemClock(busy=...), the most of each sleep the clock may spend "
               "waiting actively (yielding) to start on time; the default is 0.01",
               "floor = a bare thread sleeping to absolute deadlines with time.sleep (no "
               "event loop, no work), skipping ticks it wakes up for more than half an "
               "interval late"],
    )
    for rate, duration in plan:
        runs = [(label, _tick(peer, rate, duration, 0 if peer == "floor" else 1, options))
                for peer, label, options in RATE_RUNS]
        results = _interleaved(runs, repeats)
        for _, label, _ in RATE_RUNS:
            rows = results[label]
            section.rows.append({
                "label": f"{rate:g} Hz {label}", "ticks": _median(rows, "ticks"),
                "delivered_pct": _median(rows, "delivered_pct"),
                "p50_ms": _median(rows, "p50_ms"), "p99_ms": _median(rows, "p99_ms"),
                "p99_max": max(r["p99_ms"] for r in rows), "max_ms": _median(rows, "max_ms"),
                "cpu_pct": _median(rows, "cpu_pct"), "cpu_ms": _median(rows, "cpu_s_per_1000"),
            })
        default = section.rows[-len(RATE_RUNS)]
        floor = section.rows[-1]
        hz = f"{rate:g} Hz"
        if rate < 1000:
            section.targets.append(
                Target(f"{hz} lateness p99", "<= 0.5 ms", default["p99_ms"], 0.5, unit="ms"))
        else:
            section.targets += [
                Target(f"{hz} CPU", "<= 25 %", default["cpu_pct"], 25.0, unit="%"),
                Target(f"{hz} lateness p99", "<= 0.2 ms", default["p99_ms"], 0.2, unit="ms"),
                Target(f"{hz} delivered vs the floor", ">= floor's",
                       default["delivered_pct"] - floor["delivered_pct"], 0.0,
                       higher_is_better=True, unit="% points"),
            ]
    return section


def import_section(quick: bool) -> Section:
    repeats = 5 if quick else 11
    section = Section("tickcost_import", "Cost per tick: import time against APScheduler",
                      IMPORT_COLUMNS,
                      notes=[f"wall time of the import statement in a fresh interpreter "
                             f"(time.perf_counter around it), {repeats} processes each, "
                             "interleaved, with byte-code caches (written by a first "
                             "uncounted run); asyncio is part of both"])
    times: dict[str, list[float]] = {what: [] for what, _ in IMPORTS}
    for _, statement in IMPORTS:  # writes the byte-code caches; not counted
        statement_ms(statement)
    for _ in range(repeats):
        for what, module in IMPORTS:
            times[what].append(statement_ms(module))
    base = statistics.median(times["aioconveyor"])
    for what, module in IMPORTS:
        median = statistics.median(times[what])
        section.rows.append({"what": what, "module": module, "median_ms": median,
                             "min_ms": min(times[what]), "x": ratio(median, base)})
    aps = section.rows[1]["median_ms"]
    section.targets.append(Target("import aioconveyor vs apscheduler", "<= 1.0 x",
                                  ratio(base, aps), 1.0, unit="x"))
    return section


def run(quick: bool) -> list[Section]:
    return [cpu_section(quick), rate_section(quick), import_section(quick)]
