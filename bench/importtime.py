"""7. Import time: ``python -X importtime -c "import X"``, median of several fresh processes."""

from __future__ import annotations

import statistics
import subprocess
import sys

from ._util import ROOT, Section, Target, ratio

MODULES = (
    ("aioconveyor", "aioconveyor"),
    ("apscheduler", "apscheduler.schedulers.asyncio"),
    ("asyncio (floor)", "asyncio"),
)
COLUMNS = [("what", "import"), ("module", "module"), ("median_ms", "median ms"),
           ("min_ms", "min ms"), ("x", "x aioconveyor")]


def import_ms(module: str) -> float:
    """Cumulative import time of ``module`` in a fresh interpreter, in ms."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    total = 0
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == module:
            total = int(parts[1])
    return total / 1000.0


def run(quick: bool) -> Section:
    repeats = 5 if quick else 11
    section = Section("importtime", "Import time", COLUMNS,
                      notes=[f"python -X importtime, cumulative time of the top module, "
                             f"{repeats} fresh processes each"])
    base = None
    for what, module in MODULES:
        times = [import_ms(module) for _ in range(repeats)]
        median = statistics.median(times)
        if base is None:
            base = median
        section.rows.append({"what": what, "module": module, "median_ms": median,
                             "min_ms": min(times), "x": ratio(median, base)})
    section.targets.append(Target("import aioconveyor", "<= 100 ms",
                                  section.rows[0]["median_ms"], 100.0, unit="ms"))
    return section
