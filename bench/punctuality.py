"""1. Punctuality: how late each tick's producer starts, against its grid time.

aioconveyor, a naive ``asyncio.sleep`` loop and APScheduler 3 run the same trivial async
producer at 10 Hz, 100 Hz and 1 kHz, each in a fresh process, one after the other.
"""

from __future__ import annotations

from typing import Any

from ._peers import PEERS
from ._util import Row, Section, Target, ratio, run_worker

FULL = ((10.0, 10.0), (100.0, 5.0), (1000.0, 5.0))
QUICK = ((10.0, 3.0), (100.0, 2.0), (1000.0, 2.0))

RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    *((peer, peer, {}) for peer in PEERS),
    ("aioconveyor", "aioconveyor precise=False", {"clock": "spin"}),
    ("floor", "floor", {}),
)

COLUMNS = [
    ("label", "rate / peer"), ("ticks", "ticks"), ("delivered_pct", "delivered %"),
    ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"),
    ("drift_ms", "drift ms"), ("trend_ms", "trend ms"), ("p99_x", "p99 x aioconveyor"),
    ("cpu_pct", "CPU %"),
]


def run(quick: bool) -> Section:
    section = Section(
        "punctuality", "Punctuality: producer start minus grid time", COLUMNS,
        notes=[
            "lateness = time.time() at the producer's first line minus the tick's grid time;"
            " naive's grid is t0 + k*interval, APScheduler's is its scheduled_run_time",
            "delivered = ticks planned in the window that started before it ended (missed "
            "ticks are not run, so they count only here, not in the lateness columns)",
            "drift = last tick's lateness - first's; trend = median lateness of the last 10 %"
            " of ticks - median of the first 10 % (the noise-free drift)",
            "p99 x aioconveyor = the peer's p99 divided by aioconveyor's (higher: the peer "
            "is worse)",
            "aioconveyor precise=False = SystemClock(precise=False): asyncio timers and a "
            "2 ms spin (the sleep before the timerfd change, and what non-Linux systems get)",
            "floor = not a scheduler but the machine's limit: a bare thread sleeping to "
            "absolute deadlines with time.sleep, skipping a tick it wakes up for more than half"
            " an interval late (aioconveyor's default grace)",
        ],
    )
    for rate, duration in QUICK if quick else FULL:
        base: Row | None = None
        for peer, label, options in RUNS:
            row = run_worker("bench._peers", "tick_run", peer=peer, rate=rate,
                             duration=duration, options=options)
            row["label"] = f"{rate:g} Hz {label}"
            if base is None:
                base = row
            row["p99_x"] = ratio(row["p99_ms"], base["p99_ms"])
            section.rows.append(row)
        assert base is not None
        hz = f"{rate:g} Hz"
        if rate < 1000:
            section.targets += [
                Target(f"{hz} lateness p99", "<= 0.5 ms", base["p99_ms"], 0.5, unit="ms"),
                Target(f"{hz} drift (trend)", "zero: abs(trend) <= 0.1 ms",
                       abs(base["trend_ms"]), 0.1, unit="ms"),
            ]
        else:
            section.targets += [
                Target(f"{hz} ticks delivered", ">= 99.9 %", base["delivered_pct"], 99.9,
                       higher_is_better=True, unit="%"),
                Target(f"{hz} lateness p99", "<= 0.5 ms", base["p99_ms"], 0.5, unit="ms"),
            ]
    return section
