"""2. CPU: seconds of CPU per 1000 ticks at 100 Hz, and CPU while idle at a 30 s interval.

CPU is the process CPU clock (all threads: the loop, aioconveyor's loop monitor) over the
measured window, each peer in a fresh process.
"""

from __future__ import annotations

from ._peers import PEERS
from ._util import Section, Target, ratio, run_worker

COLUMNS = [
    ("peer", "peer"), ("ticks", "ticks at 100 Hz"), ("cpu_s_per_1000", "CPU s / 1000 ticks"),
    ("busy_x", "x aioconveyor"), ("idle_window_s", "idle window s"),
    ("idle_cpu_pct", "idle CPU % (30 s interval)"), ("idle_x", "x aioconveyor"),
]


def run(quick: bool) -> Section:
    busy_s = 3.0 if quick else 10.0
    window = 5.0 if quick else 20.0
    section = Section(
        "cpu", "CPU: per 1000 ticks at 100 Hz, and idle at a 30 s interval", COLUMNS,
        notes=[f"100 Hz for {busy_s:g} s ({busy_s * 100:.0f} ticks, scaled to 1000); idle: "
               f"{window:g} s window at a 30 s interval, starting 1 s after start-up"],
    )
    base_busy = base_idle = None
    for peer in PEERS:
        busy = run_worker("bench._peers", "tick_run", peer=peer, rate=100.0, duration=busy_s)
        idle = run_worker("bench._peers", "idle_run", peer=peer, interval=30.0, window=window)
        if base_busy is None:
            base_busy, base_idle = busy["cpu_s_per_1000"], idle["cpu_pct"]
        assert base_idle is not None
        section.rows.append({
            "peer": peer, "ticks": busy["ticks"], "cpu_s_per_1000": busy["cpu_s_per_1000"],
            "busy_x": ratio(busy["cpu_s_per_1000"], base_busy), "idle_window_s": window,
            "idle_cpu_pct": idle["cpu_pct"], "idle_x": ratio(idle["cpu_pct"], base_idle),
        })
    aio = section.rows[0]
    section.targets.append(
        Target("idle CPU at a 30 s interval", "<= 0.5 %", aio["idle_cpu_pct"], 0.5, unit="%"))
    return section
