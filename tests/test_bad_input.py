"""Every bad argument fails at construction with a message naming the argument and value."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer, RetryAfter


async def produce(event_time: datetime) -> int:
    return 1


async def consume(data: Any, event_time: datetime) -> None: ...


CONVEYOR_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"loop_interval": 0}, ValueError, "loop_interval must be a finite number > 0, got 0"),
    ({"loop_interval": -5}, ValueError, "loop_interval must be a finite number > 0, got -5"),
    ({"loop_interval": math.nan}, ValueError, "loop_interval must be a finite number, got nan"),
    ({"loop_interval": math.inf}, ValueError, "loop_interval must be a finite number, got inf"),
    ({"loop_interval": True}, TypeError, "loop_interval must be a number, got True"),
    ({"loop_interval": "5"}, TypeError, "loop_interval must be a number, got '5'"),
    ({"loop_interval": 5, "loop_offset": 5}, ValueError, "loop_offset must be in [0, loop_interval)"),
    ({"loop_interval": 5, "loop_offset": -1}, ValueError, "got -1"),
    ({"loop_interval": 5, "loop_offset": "1"}, TypeError, "loop_offset must be a number"),
    ({"produce": 42}, TypeError, "produce must be callable, got 42"),
    ({"consumers": [consume, "print"]}, TypeError, "consumers[1] must be callable, got 'print'"),
    ({"consumers": consume}, TypeError, "consumers must be a list"),
    ({"consumers": "abc"}, TypeError, "consumers must be a list"),
    ({"cron": "every minute"}, ValueError, "cron must be a valid cron expression, got 'every minute'"),
    ({"cron": 5}, TypeError, "cron must be a str, got 5"),
    ({"cron": "* * * * *", "loop_interval": 5}, ValueError, "give only one of"),
    ({"cron": "* * * * *", "loop_offset": 3}, ValueError, "loop_offset applies to loop_interval"),
    ({"schedule": object()}, TypeError, "schedule must have next_fire"),
    ({"misfire": "catch_up"}, ValueError, "misfire must be one of 'skip', 'coalesce', got 'catch_up'"),
    ({"misfire_grace": -1}, ValueError, "misfire_grace must be a finite number >= 0, got -1"),
    ({"jitter": 5.0, "loop_interval": 5}, ValueError, "jitter must be smaller than the tick period"),
    ({"jitter": -0.1}, ValueError, "jitter must be a finite number >= 0"),
    ({"max_ticks": 0}, ValueError, "max_ticks must be >= 1, got 0"),
    ({"max_ticks": 2.5}, TypeError, "max_ticks must be an int, got 2.5"),
    ({"eager": "yes"}, TypeError, "eager must be a bool, got 'yes'"),
    ({"producer_timeout": 0}, ValueError, "producer_timeout must be a finite number > 0, got 0"),
    ({"consumer_timeout": -1}, ValueError, "consumer_timeout must be a finite number > 0"),
    ({"error_backoff": math.nan}, ValueError, "error_backoff must be a finite number, got nan"),
    ({"restart_limit": -1}, ValueError, "restart_limit must be >= 0, got -1"),
    ({"restart_window": 0}, ValueError, "restart_window must be a finite number > 0"),
    ({"block_threshold": "1"}, TypeError, "block_threshold must be a number"),
    ({"stop_timeout": 0}, ValueError, "stop_timeout must be a finite number > 0"),
    ({"name": ""}, TypeError, "name must be a non-empty str"),
    ({"clock": object()}, TypeError, "clock must provide time()"),
    ({"seed": "x"}, TypeError, "seed must be an int"),
]


@pytest.mark.parametrize(("kwargs", "exc", "message"), CONVEYOR_CASES,
                         ids=[str(c[0]) for c in CONVEYOR_CASES])
def test_conveyor_rejects_bad_arguments(
    kwargs: dict[str, Any], exc: type[Exception], message: str
) -> None:
    args: dict[str, Any] = {"produce": produce, "consumers": [consume]}
    args.update(kwargs)
    with pytest.raises(exc) as info:
        AioConveyor(**args)
    assert message in str(info.value)


CONSUMER_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"fn": None}, TypeError, "consumer must be callable, got None"),
    ({"timeout": 0}, ValueError, "timeout must be a finite number > 0, got 0"),
    ({"timeout": math.nan}, ValueError, "timeout must be a finite number, got nan"),
    ({"retries": -1}, ValueError, "retries must be >= 0, got -1"),
    ({"retries": 1.5}, TypeError, "retries must be an int, got 1.5"),
    ({"backoff": 0}, ValueError, "backoff must be a finite number > 0, got 0"),
    ({"max_backoff": -2}, ValueError, "max_backoff must be a finite number > 0"),
    ({"queue_size": 0}, ValueError, "queue_size must be >= 1, got 0"),
    ({"queue_size": True}, TypeError, "queue_size must be an int, got True"),
    ({"overflow": "drop_all"}, ValueError,
     "overflow must be one of 'drop_oldest', 'drop_newest', 'block', got 'drop_all'"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
    ({"batch_age": -1}, ValueError, "batch_age must be a finite number >= 0, got -1"),
    ({"copy": "no"}, TypeError, "copy must be a bool, got 'no'"),
    ({"name": 3}, TypeError, "consumer name must be a non-empty str, got 3"),
]


@pytest.mark.parametrize(("kwargs", "exc", "message"), CONSUMER_CASES,
                         ids=[str(c[0]) for c in CONSUMER_CASES])
def test_consumer_rejects_bad_settings(
    kwargs: dict[str, Any], exc: type[Exception], message: str
) -> None:
    args: dict[str, Any] = {"fn": consume}
    args.update(kwargs)
    with pytest.raises(exc) as info:
        Consumer(**args)
    assert message in str(info.value)


def test_bad_consumer_defaults_on_an_object_fail_at_construction() -> None:
    class Sink:
        consumer_defaults = {"batch_size": -3}

        async def __call__(self, data: Any, event_time: datetime) -> None: ...

    with pytest.raises(ValueError, match="batch_size must be >= 1, got -3"):
        AioConveyor(produce, [Sink()], loop_interval=1)


@pytest.mark.parametrize(("seconds", "exc"), [(-1, ValueError), (math.inf, ValueError),
                                              ("3", TypeError), (None, TypeError)])
def test_retry_after_validates_seconds(seconds: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="seconds"):
        RetryAfter(seconds)


def test_consumer_timeout_may_be_infinite() -> None:
    assert Consumer(consume, timeout=math.inf).timeout == math.inf
