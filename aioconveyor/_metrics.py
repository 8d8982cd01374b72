"""Prometheus metrics for a conveyor, computed from ``stats()`` at scrape time.

Needs ``prometheus-client`` (``pip install "aioconveyor[metrics]"``), imported only here.
Names follow Prometheus conventions: ``aioconveyor_*_total`` counters, ``_seconds`` units,
labels ``conveyor`` and ``consumer``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ._lanes import LaneState
from ._stats import ConveyorStats

__all__ = ["CONTENT_TYPE", "render"]

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        'metrics need prometheus-client: pip install "aioconveyor[metrics]"'
    ) from exc

CONTENT_TYPE = CONTENT_TYPE_LATEST

_CONVEYOR_COUNTERS = (
    ("ticks", "ticks", "Ticks fired (produced, empty, failed or standby)."),
    ("produced", "produced", "Producer results fanned out."),
    ("empty_ticks", "empty", "Ticks whose producer returned None."),
    ("producer_errors", "producer_errors", "Producer calls that raised or timed out."),
    ("producer_timeouts", "producer_timeouts", "Producer calls cancelled at their timeout."),
    ("producer_skipped", "producer_skipped",
     "Ticks skipped because the producer's previous call still hangs."),
    ("missed_ticks", "missed_ticks", "Grid times skipped (overrun, blocked loop, clock step)."),
    ("standby_ticks", "standby_ticks", "Ticks not produced because another instance leads."),
    ("clock_jumps", "clock_jumps", "Wall-clock steps detected."),
    ("loop_blocked", "loop_blocked", "Episodes of a blocked event loop."),
    ("restarts", "restarts", "Tasks restarted by the watchdog."),
)

_CONSUMER_COUNTERS = (
    ("delivered", "Items delivered."),
    ("rejected", "Items the consumer skipped as bad data (the rest of their batch went on)."),
    ("errors", "Failed delivery attempts."),
    ("retries", "Delivery retries."),
    ("dropped", "Items dropped (queue overflow, stop timeout, unspoolable)."),
    ("failed", "Items given up on after their retries."),
    ("timeouts", "Calls past their timeout."),
    ("restarts", "Workers restarted after a timeout or a crash."),
    ("hook_errors", "on_delivered/on_error hooks that failed."),
    ("open_errors", "Failed open() calls (retried with backoff)."),
)


class _StatsCollector:
    def __init__(self, stats: Callable[[], ConveyorStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        labels = [s.name]
        for metric, attr, doc in _CONVEYOR_COUNTERS:
            family = CounterMetricFamily(f"aioconveyor_{metric}", doc, labels=["conveyor"])
            family.add_metric(labels, getattr(s, attr))
            yield family
        up = GaugeMetricFamily("aioconveyor_up", "1 while the conveyor runs.", labels=["conveyor"])
        up.add_metric(labels, 1.0 if s.running else 0.0)
        yield up
        if s.leader_role is not None:
            lead = GaugeMetricFamily("aioconveyor_leader", "1 while this instance leads.",
                                     labels=["conveyor"])
            lead.add_metric(labels, 1.0 if s.leader_role == "leader" else 0.0)
            yield lead
            takeovers = CounterMetricFamily("aioconveyor_leader_takeovers",
                                            "Times this instance became leader.",
                                            labels=["conveyor"])
            takeovers.add_metric(labels, s.takeovers)
            yield takeovers
        late = s.lateness
        hist = HistogramMetricFamily("aioconveyor_tick_lateness_seconds",
                                     "Tick start minus its planned time.", labels=["conveyor"])
        hist.add_metric(labels, [(_le(b), c) for b, c in late.buckets], late.sum_seconds)
        yield hist
        for metric, doc in _CONSUMER_COUNTERS:
            family = CounterMetricFamily(f"aioconveyor_consumer_{metric}", doc,
                                         labels=["conveyor", "consumer"])
            for c in s.consumers:
                family.add_metric([s.name, c.name], getattr(c, metric))
            yield family
        for metric, attr, doc in (
            ("queue_depth", "queued", "Items waiting in the consumer's queue."),
            ("in_flight", "in_flight", "Items being delivered right now."),
        ):
            gauge = GaugeMetricFamily(f"aioconveyor_consumer_{metric}", doc,
                                      labels=["conveyor", "consumer"])
            for c in s.consumers:
                gauge.add_metric([s.name, c.name], getattr(c, attr))
            yield gauge
        state = GaugeMetricFamily(
            "aioconveyor_consumer_state",
            "1 for the consumer's current state (connecting, open, quarantined, closed), "
            "0 for the others.", labels=["conveyor", "consumer", "state"])
        for c in s.consumers:
            for st in LaneState:
                state.add_metric([s.name, c.name, st.value], 1.0 if c.state == st else 0.0)
        yield state


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def render(stats: Callable[[], ConveyorStats]) -> bytes:
    """The Prometheus text exposition of one conveyor's stats."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    return generate_latest(registry)
