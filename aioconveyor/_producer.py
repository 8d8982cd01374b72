"""What a producer is: its settings as given (:class:`Producer`) and as resolved.

A conveyor may have many producers, each with its own schedule, misfire rules, timeout,
error backoff, ``max_ticks``, leader key and routing (the consumers it feeds). The
``produce=`` argument of :class:`~aioconveyor.AioConveyor` is one of them, named like the
conveyor; :meth:`~aioconveyor.AioConveyor.add_producer` and ``producers=`` add more.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from . import _validate
from ._clock import Clock
from ._consumer import callable_name
from ._schedule import Misfire, Planner, Schedule, resolve_schedule

__all__ = ["Producer", "ProducerSettings", "default_timeout", "period_now"]


def default_timeout(period: float) -> float:
    """A call's default timeout for a tick period: twice the period, within 1..60 s."""
    return min(60.0, max(1.0, 2.0 * period))


def period_now(schedule: Schedule, clock: Clock) -> float:
    """The schedule's period around the clock's current time."""
    now = clock.time()
    return schedule.next_fire(now) - schedule.prev_fire(now)


@dataclass(frozen=True, slots=True)
class Producer:
    """One producer of a conveyor, with its own schedule and settings.

    * ``fn``: sync or async callable taking the tick's grid time (tz-aware UTC
      ``datetime``); returning ``None`` means "nothing this tick".
    * ``name``: unique in the conveyor (default: the callable's name); it is
      ``Tick.producer`` for everything it produces.
    * the schedule, one of: ``every`` seconds (+ ``offset``), ``cron`` (+ ``cron_tz``) or a
      :class:`~aioconveyor.Schedule`; default every 5 s.
    * ``consumers``: the names of the consumers it feeds (default ``None``: all of them).
    * ``jitter``, ``misfire``, ``misfire_grace``, ``eager``, ``max_ticks``,
      ``error_backoff``: as the conveyor's arguments of the same names (``loop_*`` aside).
    * ``timeout``: seconds one call may take (default: twice the period, within 1..60 s;
      ``math.inf`` for none).
    * ``leader_key``: with a leader backend, the key this producer's leadership is elected
      under (default: its name), so each producer can lead on a different instance.
    """

    fn: Callable[..., Any]
    name: str | None = None
    every: float | None = None
    offset: float = 0.0
    cron: str | None = None
    cron_tz: tzinfo | None = None
    schedule: Schedule | None = None
    consumers: Sequence[str] | None = None
    jitter: float = 0.0
    misfire: Misfire | str = Misfire.SKIP
    misfire_grace: float | None = None
    timeout: float | None = None
    error_backoff: float | None = None
    eager: bool = False
    max_ticks: int | None = None
    leader_key: str | None = None

    def __post_init__(self) -> None:
        _validate.callable_("produce", self.fn)
        if self.name is not None:
            _validate.text("name", self.name, subject="producer name")
        self.resolved_schedule()  # checks the schedule arguments now
        if self.consumers is not None:
            object.__setattr__(self, "consumers", routes("consumers", self.consumers))
        _validate.non_negative("jitter", self.jitter)
        object.__setattr__(self, "misfire", _validate.choice("misfire", self.misfire, Misfire))
        if self.misfire_grace is not None:
            _validate.non_negative("misfire_grace", self.misfire_grace)
        if self.timeout is not None and self.timeout != math.inf:
            _validate.positive("timeout", self.timeout)
        _validate.optional_positive("error_backoff", self.error_backoff)
        _validate.boolean("eager", self.eager)
        _validate.optional_integer("max_ticks", self.max_ticks, minimum=1)
        if self.leader_key is not None:
            _validate.text("leader_key", self.leader_key)

    @property
    def producer_name(self) -> str:
        return self.name or callable_name(self.fn)

    def resolved_schedule(self) -> Schedule:
        """The one schedule ``every`` / ``cron`` / ``schedule`` describe."""
        return resolve_schedule(self.every, self.offset, self.cron, self.cron_tz,
                                self.schedule, names=("every", "offset"))

    def settle(self, clock: Clock, seed: int | None) -> ProducerSettings:
        """These settings resolved against ``clock`` (the period decides the defaults)."""
        name = self.producer_name
        schedule = self.resolved_schedule()
        period = period_now(schedule, clock)
        if self.jitter >= period:
            _validate.fail("jitter", self.jitter, f"must be smaller than the tick period "
                                                  f"({period:g} s), got {self.jitter!r}")
        # a Random holds 2.5 kB of state: only producers with jitter get one
        rng = (random.Random(f"{seed}:{name}" if seed is not None else None)
               if self.jitter > 0 else None)
        planner = Planner(schedule, misfire=Misfire(self.misfire),
                          misfire_grace=self.misfire_grace, jitter=self.jitter,
                          eager=self.eager, rng=rng)
        consumers = None if self.consumers is None else tuple(self.consumers)
        return ProducerSettings(
            fn=self.fn, name=name, planner=planner,
            timeout=default_timeout(period) if self.timeout is None else self.timeout,
            error_backoff=self.error_backoff, max_ticks=self.max_ticks,
            consumers=consumers, leader_key=self.leader_key or name, period=period,
        )


def routes(name: str, value: object) -> tuple[str, ...]:
    """A list of consumer names, checked."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        _validate.fail(name, value, f"must be a list of consumer names, got {value!r}")
    out: list[str] = []
    for i, item in enumerate(value):
        _validate.text(f"{name}[{i}]", item, subject="consumer name")
        if item in out:
            _validate.fail(name, value, f"names {item!r} twice, got {value!r}")
        out.append(item)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    """A producer's settings, every one resolved."""

    fn: Callable[..., Any]
    name: str
    planner: Planner
    timeout: float
    error_backoff: float | None
    max_ticks: int | None
    consumers: tuple[str, ...] | None
    """The consumers it feeds; ``None``: all of them."""
    leader_key: str | None
    """``None``: the leader backend's own key (``lead(event_time)``)."""
    period: float
    """The schedule's period when the settings were resolved (defaults derive from it)."""

    @property
    def schedule(self) -> Schedule:
        return self.planner.schedule
