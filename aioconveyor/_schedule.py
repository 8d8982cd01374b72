"""When to tick: schedules and the pure planning rules. No I/O, no asyncio.

Times are POSIX seconds (UTC wall clock) as floats. A schedule answers two questions,
"what is the first fire time strictly after t?" and "what is the last fire time at or
before t?"; :class:`Planner` turns those answers plus the misfire policy into the next
:class:`Plan` for the scheduler loop.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from . import _validate
from ._errors import SettingError

__all__ = [
    "CronSchedule",
    "IntervalSchedule",
    "Misfire",
    "Plan",
    "Planner",
    "Schedule",
    "resolve_schedule",
    "schedule_text",
]

#: Times this close to a grid point count as on it (absorbs float rounding at epoch scale).
TOLERANCE = 1e-6


@runtime_checkable
class Schedule(Protocol):
    """Anything that can say when the next tick is."""

    def next_fire(self, after: float) -> float:
        """The first fire time strictly later than ``after``."""
        ...

    def prev_fire(self, at: float) -> float:
        """The last fire time at or before ``at``."""
        ...

    def count_between(self, start: float, end: float) -> int:
        """How many fire times lie in the closed range ``[start, end]``."""
        ...


@dataclass(frozen=True, slots=True)
class IntervalSchedule:
    """Fire at ``k * interval + offset`` seconds of the UTC epoch, for every integer k."""

    interval: float
    offset: float = 0.0

    def __post_init__(self) -> None:
        interval = _validate.positive("interval", self.interval)
        offset = _validate.number("offset", self.offset)
        if not 0 <= offset < interval:
            _validate.fail("offset", self.offset,
                           f"must be in [0, interval) = [0, {interval:g}), got {self.offset!r}")
        object.__setattr__(self, "interval", interval)
        object.__setattr__(self, "offset", offset)

    def index(self, t: float) -> int:
        """The k of the last grid point at or before ``t``."""
        return math.floor((t - self.offset + TOLERANCE) / self.interval)

    def at(self, k: int) -> float:
        return k * self.interval + self.offset

    def next_fire(self, after: float) -> float:
        return self.at(self.index(after) + 1)

    def prev_fire(self, at: float) -> float:
        return self.at(self.index(at))

    def count_between(self, start: float, end: float) -> int:
        if end < start:
            return 0
        first = math.ceil((start - self.offset - TOLERANCE) / self.interval)
        return max(0, self.index(end) - first + 1)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """Fire on a cron expression evaluated in ``tz`` (default UTC).

    Five fields (minute hour day month weekday), or six with **seconds as the last field**
    (croniter's convention): ``"*/10 * * * * 30"`` fires at second 30 of every 10th minute.
    """

    expression: str
    tz: tzinfo = UTC
    _cron: Any = field(init=False, repr=False, compare=False)

    #: Counting missed fire times stops here (a long suspend could otherwise iterate for ages).
    COUNT_LIMIT = 100_000

    def __post_init__(self) -> None:
        from croniter import croniter  # runtime dependency, imported only when cron is used

        if not isinstance(self.expression, str):
            _validate.fail("expression", self.expression,
                           f"must be a str, got {self.expression!r}")
        if not isinstance(self.tz, tzinfo):
            _validate.fail("tz", self.tz, f"must be a datetime.tzinfo, got {self.tz!r}")
        if not self.expression.strip() or not croniter.is_valid(self.expression):
            _validate.fail("expression", self.expression,
                           f"must be a valid cron expression, got {self.expression!r}")
        object.__setattr__(self, "_cron", croniter)

    def _iter(self, t: float) -> Any:
        return self._cron(self.expression, datetime.fromtimestamp(t, self.tz))

    def next_fire(self, after: float) -> float:
        return float(self._iter(after + TOLERANCE).get_next(float))

    def prev_fire(self, at: float) -> float:
        before = float(self._iter(at).get_prev(float))
        following = self.next_fire(before)
        return following if following <= at + TOLERANCE else before

    def count_between(self, start: float, end: float) -> int:
        count = 0
        t = self.next_fire(start - 2 * TOLERANCE)
        while t <= end + TOLERANCE and count < self.COUNT_LIMIT:
            count += 1
            t = self.next_fire(t)
        return count


def schedule_text(schedule: Schedule | None) -> str:
    """``every 10 s at +2 s`` or ``cron '*/5 * * * *' (UTC)``; repr for anything else."""
    if isinstance(schedule, IntervalSchedule):
        text = f"every {schedule.interval:g} s"
        return text + (f" at +{schedule.offset:g} s" if schedule.offset else "")
    if isinstance(schedule, CronSchedule):
        return f"cron {schedule.expression!r} ({schedule.tz})"
    return repr(schedule)


class Misfire(StrEnum):
    """What to do with grid times that passed while the producer was still running."""

    SKIP = "skip"
    """Count them as missed and wait for the next grid time (the default)."""
    COALESCE = "coalesce"
    """Run once, now, for the latest of them if it is within ``misfire_grace``."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The scheduler's next step: run the tick for ``event_time`` at ``fire_at``."""

    event_time: float
    fire_at: float
    missed: int = 0


class Planner:
    """Pure rules from (schedule, last tick, now) to the next :class:`Plan`.

    * a grid time still in the future is fired at that time plus a random jitter;
    * grid times that already passed (the producer overran, the clock stepped forward,
      the loop was blocked) are *missed*: with ``Misfire.SKIP`` they are counted and the
      next future grid time is planned; with ``Misfire.COALESCE`` the latest of them runs
      once, immediately, when it is no older than the grace;
    * a wake-up later than the grace after ``fire_at`` is not fired (:meth:`too_late`):
      the caller plans again and the tick counts as missed.
    """

    __slots__ = ("_rng", "eager", "jitter", "misfire", "misfire_grace", "schedule")

    def __init__(
        self,
        schedule: Schedule,
        *,
        misfire: Misfire = Misfire.SKIP,
        misfire_grace: float | None = None,
        jitter: float = 0.0,
        eager: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.schedule = schedule
        self.misfire = misfire
        self.misfire_grace = misfire_grace
        self.jitter = jitter
        self.eager = eager
        self._rng = rng

    def period(self, event_time: float) -> float:
        """Time from ``event_time`` to the following fire time."""
        return self.schedule.next_fire(event_time) - event_time

    def grace(self, event_time: float) -> float:
        """How late a tick may start and still run (default: half the period)."""
        if self.misfire_grace is not None:
            return self.misfire_grace
        return self.period(event_time) / 2

    def _jitter(self) -> float:
        if self.jitter <= 0:
            return 0.0
        if self._rng is None:  # made when first needed: a Random holds 2.5 kB of state
            self._rng = random.Random()
        return self._rng.uniform(0.0, self.jitter)

    def _future(self, after: float, missed: int) -> Plan:
        t = self.schedule.next_fire(after)
        return Plan(t, t + self._jitter(), missed)

    def plan(self, last: float | None, now: float, not_before: float | None = None) -> Plan:
        """The next tick after the one for grid time ``last`` (``None``: the first one).

        ``not_before`` (producer error backoff) makes grid times before it count as missed;
        a grid time equal to it may run.
        """
        earliest = now if not_before is None else max(now, not_before - 2 * TOLERANCE)
        if last is None:
            if self.eager and not_before is None:
                return Plan(self.schedule.prev_fire(now), now, 0)
            return self._future(earliest, 0)
        nxt = self.schedule.next_fire(last)
        if nxt > earliest:
            return Plan(nxt, max(nxt + self._jitter(), earliest), 0)
        missed = self.schedule.count_between(nxt, earliest)
        if self.misfire is Misfire.COALESCE:
            latest = self.schedule.prev_fire(earliest)
            if earliest - latest <= self.grace(latest):
                return Plan(latest, earliest, missed - 1)
        return self._future(earliest, missed)

    def too_late(self, plan: Plan, woke: float) -> bool:
        """True when a wake-up at ``woke`` is past the grace for ``plan``."""
        return woke - plan.fire_at > self.grace(plan.event_time)


def resolve_schedule(
    interval: float | None,
    offset: float,
    cron: str | None,
    cron_tz: tzinfo | None,
    schedule: Schedule | None,
    *,
    names: tuple[str, str] = ("loop_interval", "loop_offset"),
    default_interval: float | None = 5.0,
) -> Schedule:
    """The one schedule that ``interval`` / ``cron`` / ``schedule`` describe; any argument
    that the chosen one would ignore is an error, not silently dropped.

    ``names`` are the caller's names of the interval and offset arguments (used in the
    messages); with ``default_interval=None`` one of the three must be given.
    """
    interval_name, offset_name = names
    given = [n for n, v in ((interval_name, interval), ("cron", cron),
                            ("schedule", schedule)) if v is not None]
    if len(given) > 1:
        value = {"cron": cron, "schedule": schedule}[given[1]]
        _validate.conflict(given[1], value, given[0],
                           f"give only one of {interval_name}, cron and schedule")
    if not given and default_interval is None:
        _validate.fail(interval_name, interval,
                       f"is needed: give one of {interval_name}, cron and schedule")
    if cron_tz is not None and cron is None:
        _validate.fail("cron_tz", cron_tz,
                       f"applies to cron only, not {given[0] if given else interval_name}; "
                       f"got cron_tz={cron_tz!r}")
    if schedule is not None:
        if offset != 0:
            _validate.fail(offset_name, offset,
                           f"applies to {interval_name}, not schedule (build the offset into "
                           f"the schedule); got {offset_name}={offset!r}")
        if not isinstance(schedule, Schedule):
            _validate.fail("schedule", schedule,
                           f"must have next_fire/prev_fire/count_between, got {schedule!r}")
        return schedule
    if cron is not None:
        if offset != 0:
            _validate.fail(offset_name, offset,
                           f"applies to {interval_name}, not cron; got {offset!r}")
        try:
            return CronSchedule(cron) if cron_tz is None else CronSchedule(cron, cron_tz)
        except SettingError as exc:  # its own names (expression, tz) to the caller's
            name = {"expression": "cron", "tz": "cron_tz"}.get(exc.name, exc.name)
            raise SettingError(name, exc.value, exc.reason) from None
    checked = _validate.positive(interval_name,
                                 default_interval if interval is None else interval)
    start = _validate.number(offset_name, offset)
    if not 0 <= start < checked:
        _validate.fail(offset_name, offset,
                       f"must be in [0, {interval_name}) = [0, {checked:g}), got {offset!r}")
    return IntervalSchedule(checked, start)
