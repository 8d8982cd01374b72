"""Shared helpers: subprocess workers, percentiles, tables, machine facts.

Every measurement runs in a fresh interpreter (``python -m bench._worker``), so one
library's threads, imports or garbage never disturb the next one's numbers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (what ``python -m bench`` runs from)."""

Row = dict[str, Any]


class WorkerError(RuntimeError):
    """A measurement subprocess failed; the message carries the end of its stderr."""


def run_worker(module: str, func: str, timeout: float = 300.0, **kwargs: Any) -> Row:
    """Run ``module.func(**kwargs)`` in a fresh interpreter and return its JSON result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "bench._worker", module, func, json.dumps(kwargs)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise WorkerError(f"{module}.{func}({kwargs}) exited {proc.returncode}:\n{tail}")
    result: Row = json.loads(lines[-1])
    return result


class CallDriven:
    """A ``FakeClock`` moved by the consumer's calls, for throughput benchmarks: each call
    the consumer starts (:meth:`started`) advances it one tick interval, so the next tick
    is produced while the call waits on the network, and one item always waits ready (as
    the raw peer always has its next message). Without autojump nothing polls the loop
    (``sleep(0)`` turns) while a request is on the network, which on a 2-core machine takes
    CPU from the client and the server alike. Run :meth:`drive` beside ``conv.run()``.
    """

    def __init__(self, interval: float = 1.0) -> None:
        from aioconveyor.testing import FakeClock

        self.interval = interval
        self.clock = FakeClock(autojump=False)
        self._started: Any = None

    def started(self) -> None:
        if self._started is not None:
            self._started.set()

    async def drive(self) -> None:
        import asyncio

        self._started = asyncio.Event()
        while not self._started.is_set():  # until the first call: the start-up's timers
            self.clock.advance(self.interval)
            await asyncio.sleep(0.001)
        while True:
            await self._started.wait()
            self._started.clear()
            self.clock.advance(self.interval)

    async def run(self, conv: Any) -> None:
        """``await conv.run()`` with the clock driven beside it."""
        import asyncio

        driver = asyncio.create_task(self.drive())
        try:
            await conv.run()
        finally:
            driver.cancel()


def settle_garbage() -> None:
    """Before a method's clock starts: collect, then freeze what exists (the test data), so
    that no collection in the timed part walks (or promotes) the setup's objects, which
    would charge the method with more the more objects its setup made."""
    import gc

    gc.collect()
    gc.freeze()


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def sleep_until(deadline: float) -> None:
    """Block the calling thread until ``time.time() >= deadline`` (to about 0.1 ms)."""
    while (remaining := deadline - time.time()) > 0:
        time.sleep(min(remaining, 0.5))


def next_grid(interval: float, lead: float) -> float:
    """The first multiple of ``interval`` (epoch seconds) at least ``lead`` s from now."""
    return math.ceil((time.time() + lead) / interval) * interval


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def ratio(value: float, base: float) -> float:
    """``value / base``, nan when either is missing or the base is zero."""
    if base == 0 or math.isnan(base) or math.isnan(value):
        return math.nan
    return value / base


# -- results -----------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    """One goal of issue 9, checked against a measured value."""

    name: str
    goal: str
    value: float
    limit: float
    higher_is_better: bool = False
    unit: str = ""

    @property
    def met(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def as_dict(self) -> Row:
        return {"name": self.name, "goal": self.goal, "value": self.value,
                "limit": self.limit, "unit": self.unit, "met": self.met}


@dataclass(slots=True)
class Section:
    """One benchmark's outcome: a table (rows of dicts), notes and the targets it checks."""

    name: str
    title: str
    columns: list[tuple[str, str]]  # (key in the rows, header)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, d: Row) -> Section:
        targets = [Target(t["name"], t["goal"], math.nan if t["value"] is None else t["value"],
                          t["limit"], unit=t["unit"],
                          higher_is_better=t["goal"].lstrip().startswith((">", "=")))
                   for t in d["targets"]]
        rows = [{k: math.nan if v is None else v for k, v in r.items()} for r in d["rows"]]
        return cls(d["name"], d["title"], [(k, h) for k, h in d["columns"]], rows,
                   d["notes"], targets, d["seconds"])

    def as_dict(self) -> Row:
        return {"name": self.name, "title": self.title,
                "columns": [list(c) for c in self.columns], "rows": self.rows,
                "notes": self.notes, "targets": [t.as_dict() for t in self.targets],
                "seconds": round(self.seconds, 1)}


def fmt(value: Any) -> str:
    """A table cell: floats with 3 significant-ish digits, nan as a dash."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.2f}".rstrip("0").rstrip(".") if magnitude < 100 else f"{value:.1f}"
        if magnitude >= 0.1:
            return f"{value:.2f}"
        if magnitude >= 0.001:
            return f"{value:.3f}"
        return f"{value:.1e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def text_table(columns: Sequence[tuple[str, str]], rows: Iterable[Row]) -> str:
    """A plain-text table for the terminal."""
    header = [h for _, h in columns]
    body = [[fmt(row.get(k, "")) for k, _ in columns] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    for cells in body:
        lines.append("  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ))
    return "\n".join(lines)


def markdown_table(columns: Sequence[tuple[str, str]], rows: Iterable[Row]) -> str:
    """The same table as GitHub markdown."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        cells = (fmt(row.get(k, "")).replace("|", "\\|") for k, _ in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the machine -------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return math.nan


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str:
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip()


def machine() -> Row:
    """What the numbers were measured on."""
    load = os.getloadavg()
    return {
        "commit": _commit(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "load_at_start": [round(x, 2) for x in load],
        "packages": {d: _version(d) for d in ("aioconveyor", "apscheduler", "asyncpg",
                                              "aiomqtt", "paho-mqtt", "uvloop")},
    }
