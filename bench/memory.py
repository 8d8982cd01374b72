"""6. Memory: RSS growth over 1,000,000 ticks with two trivial consumers.

Ticks are driven by :class:`aioconveyor.testing.FakeClock` (time jumps to the next grid
point as soon as the loop is idle), so a million ticks take a minute or two instead of
days; everything else (scheduler, lanes, deep copies, stats) is the real engine. RSS is
read from /proc after ``gc.collect()`` once the run is warm (1 % of the ticks, at least
10,000) and again at the last tick. The naive peer runs the same producer and consumers in
a plain ``for`` loop with ``await asyncio.sleep(0)`` between ticks.
"""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import UTC, datetime
from typing import Any

from ._peers import Sink, payload
from ._util import Row, Section, Target, rss_bytes, run_worker

MIB = 1024 * 1024
COLUMNS = [
    ("peer", "peer"), ("ticks", "ticks"), ("rss_warm_mib", "RSS warm MiB"),
    ("rss_end_mib", "RSS end MiB"), ("growth_kib", "growth KiB"),
    ("ticks_per_s", "ticks/s (fake clock)"),
]


class _Sampler:
    def __init__(self, ticks: int) -> None:
        self.warm_at = max(10_000, ticks // 100)
        self.last = ticks - 1
        self.rss: dict[str, int] = {}
        self.t_warm = 0.0
        self.t_end = 0.0

    def at(self, index: int) -> None:
        if index == self.warm_at:
            gc.collect()
            self.rss["warm"] = rss_bytes()
            self.t_warm = time.perf_counter()
        elif index == self.last:
            gc.collect()
            self.rss["end"] = rss_bytes()
            self.t_end = time.perf_counter()

    def row(self, peer: str, ticks: int) -> Row:
        return {"peer": peer, "ticks": ticks, "rss_warm_mib": self.rss["warm"] / MIB,
                "rss_end_mib": self.rss["end"] / MIB,
                "growth_kib": (self.rss["end"] - self.rss["warm"]) / 1024,
                "ticks_per_s": (self.last - self.warm_at) / (self.t_end - self.t_warm)}


def memory_run(peer: str, ticks: int) -> Row:
    sampler = _Sampler(ticks)
    sinks = [Sink(f"sink{i}", 0.0, float("inf")) for i in range(2)]
    if peer == "aioconveyor":
        from aioconveyor import AioConveyor, current_tick
        from aioconveyor.testing import FakeClock

        async def produce(event_time: datetime) -> dict[str, Any]:
            tick = current_tick()
            assert tick is not None
            sampler.at(tick.index)
            return payload()

        conv = AioConveyor(produce, list(sinks), loop_interval=0.001, max_ticks=ticks,
                           clock=FakeClock(settle=5), name="bench")
        asyncio.run(conv.run())
        assert conv.stats().ticks == ticks
    else:
        import copy

        async def naive() -> None:
            for k in range(ticks):
                sampler.at(k)
                data = payload()
                when = datetime.fromtimestamp(1_700_000_000 + k / 1000, UTC)
                await asyncio.gather(*(s(copy.deepcopy(data), when) for s in sinks))
                await asyncio.sleep(0)

        asyncio.run(naive())
    return sampler.row(peer, ticks)


def run(quick: bool) -> Section:
    ticks = 100_000 if quick else 1_000_000
    section = Section(
        "memory", f"Memory: RSS growth over {ticks:,} ticks (FakeClock)", COLUMNS,
        notes=["ticks driven by aioconveyor.testing.FakeClock(settle=5); growth = RSS at "
               "the last tick - RSS once warm, both after gc.collect()"],
    )
    for peer in ("aioconveyor", "naive"):
        section.rows.append(run_worker("bench.memory", "memory_run", timeout=900.0,
                                       peer=peer, ticks=ticks))
    growth = section.rows[0]["growth_kib"] / 1024
    goal = "<= 1 MB over 1M ticks" + (" (quick: 100k ticks)" if quick else "")
    section.targets.append(Target("RSS growth", goal, growth, 1.0, unit="MiB"))
    return section
