"""Grid arithmetic and planning rules: pure functions, no sleeping."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aioconveyor._schedule import (
    TOLERANCE,
    CronSchedule,
    IntervalSchedule,
    Misfire,
    Plan,
    Planner,
)

EPOCH_NOW = 1_795_000_000.0

intervals = st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0])
times = st.floats(min_value=1.0e9, max_value=2.5e9, allow_nan=False)


@st.composite
def grids(draw: st.DrawFn) -> IntervalSchedule:
    interval = draw(intervals)
    offset = draw(st.floats(min_value=0.0, max_value=interval * 0.999))
    return IntervalSchedule(interval, offset)


def on_grid(s: IntervalSchedule, t: float) -> bool:
    k = (t - s.offset) / s.interval
    return abs(k - round(k)) * s.interval < 1e-5


@given(grids(), times)
def test_next_fire_is_the_first_grid_point_after(s: IntervalSchedule, t: float) -> None:
    n = s.next_fire(t)
    assert n > t
    assert n - t <= s.interval + 2 * TOLERANCE  # a point within TOLERANCE of t counts as t
    assert on_grid(s, n)


@given(grids(), times)
def test_prev_fire_is_the_last_grid_point_at_or_before(s: IntervalSchedule, t: float) -> None:
    p = s.prev_fire(t)
    assert p <= t + TOLERANCE
    assert t - p < s.interval + TOLERANCE
    assert on_grid(s, p)
    assert s.next_fire(p) > t - TOLERANCE


@given(grids(), times)
def test_walking_the_grid_never_drifts(s: IntervalSchedule, t: float) -> None:
    """Chaining next_fire 1000 times lands exactly where the formula says: no drift."""
    first = s.next_fire(t)
    k0 = s.index(first)
    cur = first
    for _ in range(1000):
        cur = s.next_fire(cur)
    assert s.index(cur) == k0 + 1000
    assert math.isclose(cur, s.at(k0 + 1000), rel_tol=0, abs_tol=1e-6)


@given(grids(), times, st.floats(min_value=0, max_value=50))
def test_count_between_counts_grid_points(s: IntervalSchedule, a: float, periods: float) -> None:
    b = a + periods * s.interval

    def near_tolerance_edge(x: float) -> bool:  # within float noise of the +-TOLERANCE edge
        d = abs(x - s.prev_fire(x + 3 * TOLERANCE))
        return abs(d - TOLERANCE) < TOLERANCE / 2 or abs(d - 2 * TOLERANCE) < TOLERANCE / 2

    assume(not near_tolerance_edge(a) and not near_tolerance_edge(b))
    expected, t = 0, s.next_fire(a - 2 * TOLERANCE)
    while t <= b + TOLERANCE:
        expected += 1
        t = s.next_fire(t)
    assert s.count_between(a, b) == expected


def test_offset_moves_the_grid() -> None:
    s = IntervalSchedule(60.0, 15.0)
    assert s.next_fire(EPOCH_NOW) % 60 == 15.0


def test_cron_every_five_minutes() -> None:
    c = CronSchedule("*/5 * * * *")
    n = c.next_fire(EPOCH_NOW)
    assert n % 300 == 0 and 0 < n - EPOCH_NOW <= 300
    assert c.prev_fire(n) == n
    assert c.prev_fire(n - 1) == n - 300
    assert c.count_between(n, n + 3600) == 13


def test_cron_with_seconds_field_and_timezone() -> None:
    from zoneinfo import ZoneInfo

    c = CronSchedule("0 7 * * * 30", ZoneInfo("Europe/Berlin"))  # 07:00:30 Berlin; seconds last
    n = c.next_fire(EPOCH_NOW)
    local = datetime.fromtimestamp(n, ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute, local.second) == (7, 0, 30)


@pytest.mark.parametrize("bad", ["", "not cron", "61 * * * *", "* * *"])
def test_bad_cron_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        CronSchedule(bad)


# -- Planner ---------------------------------------------------------------------------

GRID = IntervalSchedule(10.0)
T0 = 1_795_000_000.0  # on the 10 s grid


def test_first_tick_is_the_next_grid_point() -> None:
    assert Planner(GRID).plan(None, T0 + 3.2) == Plan(T0 + 10, T0 + 10, 0)


def test_eager_first_tick_runs_now_for_the_current_grid_point() -> None:
    assert Planner(GRID, eager=True).plan(None, T0 + 3.2) == Plan(T0, T0 + 3.2, 0)


def test_next_tick_follows_the_grid_not_the_wake_up() -> None:
    p = Planner(GRID).plan(T0, T0 + 0.7)  # the tick of T0 finished at T0 + 0.7
    assert p == Plan(T0 + 10, T0 + 10, 0)


def test_overrun_skips_ticks_and_counts_them() -> None:
    # producer for T0 ran 25 s: T0+10 and T0+20 passed meanwhile
    assert Planner(GRID).plan(T0, T0 + 25) == Plan(T0 + 30, T0 + 30, 2)


def test_overrun_with_coalesce_runs_once_now_within_grace() -> None:
    planner = Planner(GRID, misfire=Misfire.COALESCE, misfire_grace=6)
    assert planner.plan(T0, T0 + 25) == Plan(T0 + 20, T0 + 25, 1)


def test_coalesce_beyond_grace_skips() -> None:
    planner = Planner(GRID, misfire=Misfire.COALESCE, misfire_grace=2)
    assert planner.plan(T0, T0 + 25) == Plan(T0 + 30, T0 + 30, 2)


def test_late_wake_up_within_grace_still_runs() -> None:
    planner = Planner(GRID)
    plan = Planner(GRID).plan(T0, T0 + 1)
    assert not planner.too_late(plan, plan.fire_at + 4.9)  # default grace: half the period
    assert planner.too_late(plan, plan.fire_at + 5.1)


def test_clock_jump_forward_does_not_burst() -> None:
    """An hour's step forward yields one plan for the future, with the gap counted."""
    p = Planner(GRID).plan(T0, T0 + 3600.5)
    assert p.event_time == T0 + 3610 and p.missed == 360


def test_clock_jump_backward_never_repeats_a_grid_time() -> None:
    p = Planner(GRID).plan(T0, T0 - 3600)
    assert p.event_time == T0 + 10  # waits for the wall clock to come back, no duplicate


@given(st.floats(min_value=0.0, max_value=9.99), st.integers(0, 2**32))
def test_jitter_stays_within_bounds_and_off_the_event_time(jitter: float, seed: int) -> None:
    planner = Planner(GRID, jitter=jitter, rng=random.Random(seed))
    p = planner.plan(T0, T0 + 1)
    assert p.event_time == T0 + 10
    assert T0 + 10 <= p.fire_at <= T0 + 10 + jitter


def test_not_before_counts_backoff_ticks_as_missed() -> None:
    p = Planner(GRID).plan(T0, T0 + 1, not_before=T0 + 35)
    assert p == Plan(T0 + 40, T0 + 40, 3)
    p = Planner(GRID).plan(T0, T0 + 1, not_before=T0 + 30)
    assert p == Plan(T0 + 30, T0 + 30, 2)


@pytest.mark.parametrize(
    ("kwargs", "exc", "needle"),
    [
        ({"interval": 0}, ValueError, "^interval must be a finite number > 0, got 0"),
        ({"interval": -1}, ValueError, "^interval"),
        ({"interval": math.nan}, ValueError, "^interval must be a finite number > 0, got nan"),
        ({"interval": math.inf}, ValueError, "^interval"),
        ({"interval": True}, TypeError, "^interval must be a number, got True"),
        ({"interval": "5"}, TypeError, "^interval must be a number, got '5'"),
        ({"interval": 5, "offset": 5}, ValueError, "^offset must be in"),
        ({"interval": 5, "offset": -0.1}, ValueError, "^offset"),
    ],
)
def test_bad_grid_arguments(kwargs: dict[str, object], exc: type[Exception], needle: str) -> None:
    with pytest.raises(exc, match=needle.replace("(", r"\(").replace("[", r"\[")):
        IntervalSchedule(**kwargs)  # type: ignore[arg-type]


def test_event_times_are_exact_utc_datetimes() -> None:
    s = IntervalSchedule(0.1)
    t = s.next_fire(EPOCH_NOW + 0.05)
    assert datetime.fromtimestamp(t, UTC).microsecond % 100_000 == 0
