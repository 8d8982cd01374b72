"""Prometheus metrics for a conveyor, computed from ``stats()`` at scrape time.

Needs ``prometheus-client`` (``pip install "aioconveyor[metrics]"``), imported only here.
Names follow Prometheus conventions: ``aioconveyor_*_total`` counters, ``_seconds`` units,
labels ``conveyor``, ``consumer`` and ``producer``.

A conveyor may hold ten thousand producers, so each one gets a small set of series
(:data:`PRODUCER_SERIES` of them: eight counters, a five-bucket lateness histogram, its
next and last tick times and a hung flag); the per-state producer counts are one gauge for
the whole conveyor.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from ._lanes import LaneState
from ._stats import LATENESS_BUCKETS, ConveyorStats

__all__ = ["CONTENT_TYPE", "PRODUCER_SERIES", "render"]

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

_PRODUCER_COUNTERS = (
    ("ticks", "ticks", "Ticks this producer fired (produced, empty, failed or standby)."),
    ("produced", "produced", "This producer's results fanned out."),
    ("empty", "empty", "Ticks on which this producer returned None."),
    # (not "errors"/"timeouts"/"skipped": aioconveyor_producer_errors_total and the others
    # are the conveyor-wide sums, and a name must not have two label sets)
    ("call_errors", "errors", "Calls of this producer that raised or timed out."),
    ("call_timeouts", "timeouts", "Calls of this producer cancelled at their timeout."),
    ("missed_ticks", "missed_ticks", "Grid times this producer skipped."),
    ("skipped_ticks", "skipped",
     "Ticks skipped because this producer's previous call still hangs."),
    ("standby_ticks", "standby_ticks",
     "Ticks not produced because another instance leads this producer's key."),
)

#: The upper bounds kept in the per-producer lateness histogram: a subset of the
#: conveyor's buckets (cumulative counts stay exact), so a producer costs 7 series, not 18.
PRODUCER_LATENESS_BOUNDS = (0.001, 0.01, 0.1, 1.0, math.inf)
assert set(PRODUCER_LATENESS_BOUNDS) <= {*LATENESS_BUCKETS, math.inf}

#: The states counted by ``aioconveyor_producers``.
PRODUCER_STATES = ("waiting", "running", "hung", "finished")

#: Series per producer: the counters, the histogram (buckets, sum, count), 3 gauges.
PRODUCER_SERIES = len(_PRODUCER_COUNTERS) + len(PRODUCER_LATENESS_BOUNDS) + 2 + 3


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
        if s.group is not None:
            yield from _group_metrics(s)
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
        yield from _producer_families(s)


def _producer_families(s: ConveyorStats) -> Iterator[Any]:
    """The per-producer series (label ``producer``) and the producer counts by state."""
    labels = ["conveyor", "producer"]
    for metric, attr, doc in _PRODUCER_COUNTERS:
        family = CounterMetricFamily(f"aioconveyor_producer_{metric}", doc, labels=labels)
        for p in s.producers:
            family.add_metric([s.name, p.name], getattr(p, attr))
        yield family
    hist = HistogramMetricFamily(
        "aioconveyor_producer_tick_lateness_seconds",
        "This producer's tick start minus its planned time (coarse buckets).", labels=labels)
    for p in s.producers:
        kept = dict(p.lateness.buckets)
        buckets = [(_le(b), kept.get(b, 0)) for b in PRODUCER_LATENESS_BOUNDS]
        hist.add_metric([s.name, p.name], buckets, p.lateness.sum_seconds)
    yield hist
    for metric, attr, doc in (
        ("next_tick_timestamp_seconds", "next_tick_time",
         "Grid time (Unix seconds) of this producer's next tick (absent once finished)."),
        ("last_tick_timestamp_seconds", "last_tick_time",
         "Grid time (Unix seconds) of this producer's last tick."),
    ):
        gauge = GaugeMetricFamily(f"aioconveyor_producer_{metric}", doc, labels=labels)
        for p in s.producers:
            when = getattr(p, attr)
            if when is not None and not (attr == "next_tick_time" and p.state == "finished"):
                gauge.add_metric([s.name, p.name], when.timestamp())
        yield gauge
    hung = GaugeMetricFamily(
        "aioconveyor_producer_hung",
        "1 while this producer's call hangs past its timeout (its ticks are skipped).",
        labels=labels)
    for p in s.producers:
        hung.add_metric([s.name, p.name], 1.0 if p.state == "hung" else 0.0)
    yield hung
    states = GaugeMetricFamily(
        "aioconveyor_producers", "Producers in each state (waiting, running, hung, finished).",
        labels=["conveyor", "state"])
    counts = Counter(p.state for p in s.producers)
    for st in PRODUCER_STATES:
        states.add_metric([s.name, st], float(counts[st]))
    yield states


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def render(stats: Callable[[], ConveyorStats]) -> bytes:
    """The Prometheus text exposition of one conveyor's stats."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    return generate_latest(registry)


def _group_metrics(s: ConveyorStats) -> Iterator[Any]:
    """The series of a group member (``PostgresGroup``)."""
    g = s.group
    assert g is not None
    labels = ["conveyor", "group"]
    values = [s.name, g.group]
    for metric, doc, value in (
        ("members", "Live members of the group, as this instance sees them.", len(g.members)),
        ("owned_producers", "Producers this instance produces now.", len(g.owned)),
        ("assigned_producers", "Producers the assignment gives this instance.", g.assigned),
        ("agreed", "1 while every member runs the same producers.", 1.0 if g.agreed else 0.0),
    ):
        gauge = GaugeMetricFamily(f"aioconveyor_group_{metric}", doc, labels=labels)
        gauge.add_metric(values, value)
        yield gauge
    for metric, doc, count in (
        ("takeovers", "Producers this instance took.", g.takeovers),
        ("handovers", "Producers this instance handed over to another member.", g.handovers),
        ("lost", "Producers this instance lost with its session.", g.lost),
    ):
        counter = CounterMetricFamily(f"aioconveyor_group_{metric}", doc, labels=labels)
        counter.add_metric(values, count)
        yield counter
