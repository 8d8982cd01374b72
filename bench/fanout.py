"""3. Fan-out scaling: 1, 10 and 100 trivial async consumers at 100 Hz.

aioconveyor gives each consumer its own lane (queue + task) and deep copy; the peers hand
every tick's deep copies to the consumers with ``asyncio.gather`` inside the tick.
"""

from __future__ import annotations

from ._peers import PEERS
from ._util import Row, Section, Target, ratio, run_worker

COLUMNS = [
    ("label", "consumers / peer"), ("ticks", "ticks"), ("delivered_pct", "ticks %"),
    ("consumed_pct", "delivered %"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"),
    ("p99_x", "p99 x aioconveyor"), ("cpu_s_per_1000", "CPU s / 1000 ticks"),
    ("cpu_x", "CPU x aioconveyor"),
]


def run(quick: bool) -> Section:
    duration = 2.0 if quick else 5.0
    section = Section(
        "fanout", "Fan-out scaling at 100 Hz", COLUMNS,
        notes=[f"{duration:g} s at 100 Hz per row; delivered % = consumer calls for ticks in "
               "the window / (expected ticks x consumers); p99 = producer start lateness"],
    )
    for n in (1, 10, 100):
        base: Row | None = None
        for peer in PEERS:
            row = run_worker("bench._peers", "tick_run", peer=peer, rate=100.0,
                             duration=duration, consumers=n)
            row["label"] = f"{n} {peer}"
            if base is None:
                base = row
            row["p99_x"] = ratio(row["p99_ms"], base["p99_ms"])
            row["cpu_x"] = ratio(row["cpu_s_per_1000"], base["cpu_s_per_1000"])
            section.rows.append(row)
        assert base is not None
        if n == 100:
            section.targets += [
                Target("100 consumers at 100 Hz delivered", ">= 99.9 %",
                       min(base["delivered_pct"], base["consumed_pct"]), 99.9,
                       higher_is_better=True, unit="%"),
                Target("100 consumers at 100 Hz lateness p99", "<= 3 ms", base["p99_ms"], 3.0,
                       unit="ms"),
            ]
    return section
