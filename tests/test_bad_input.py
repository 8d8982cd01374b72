"""Every bad argument fails at construction with a SettingError: its .name is the argument,
its message names the argument and the value; contradicting arguments are errors too."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aioconveyor import (
    AioConveyor,
    Consumer,
    ConveyorError,
    CronSchedule,
    IntervalSchedule,
    Rejected,
    RetryAfter,
    SettingError,
)
from aioconveyor._config import ConfigError, load_config, parse_listen
from aioconveyor._demo import DemoOptions, InverterSimulator


async def produce(event_time: datetime) -> int:
    return 1


async def consume(data: Any, event_time: datetime) -> None: ...


CONVEYOR_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"loop_interval": 0}, "loop_interval", "loop_interval must be a finite number > 0, got 0"),
    ({"loop_interval": -5}, "loop_interval", "loop_interval must be a finite number > 0, got -5"),
    ({"loop_interval": math.nan}, "loop_interval",
     "loop_interval must be a finite number > 0, got nan"),
    ({"loop_interval": math.inf}, "loop_interval",
     "loop_interval must be a finite number > 0, got inf"),
    ({"loop_interval": True}, "loop_interval", "loop_interval must be a number, got True"),
    ({"loop_interval": "5"}, "loop_interval", "loop_interval must be a number, got '5'"),
    ({"loop_interval": 5, "loop_offset": 5}, "loop_offset",
     "loop_offset must be in [0, loop_interval) = [0, 5), got 5"),
    ({"loop_interval": 5, "loop_offset": -1}, "loop_offset", "got -1"),
    ({"loop_interval": 5, "loop_offset": "1"}, "loop_offset", "loop_offset must be a number"),
    ({"produce": 42}, "produce", "produce must be callable, got 42"),
    ({"consumers": [consume, "print"]}, "consumers[1]",
     "consumers[1] must be callable, got 'print'"),
    ({"consumers": consume}, "consumers", "consumers must be a list"),
    ({"consumers": "abc"}, "consumers", "consumers must be a list"),
    ({"cron": "every minute"}, "cron", "cron must be a valid cron expression, got 'every minute'"),
    ({"cron": 5}, "cron", "cron must be a str, got 5"),
    ({"cron": "* * * * *", "cron_tz": "Europe/Berlin"}, "cron_tz",
     "cron_tz must be a datetime.tzinfo, got 'Europe/Berlin'"),
    ({"schedule": object()}, "schedule", "schedule must have next_fire"),
    ({"misfire": "catch_up"}, "misfire",
     "misfire must be one of 'skip', 'coalesce', got 'catch_up'"),
    ({"misfire_grace": -1}, "misfire_grace", "misfire_grace must be a finite number >= 0, got -1"),
    ({"jitter": 5.0, "loop_interval": 5}, "jitter", "jitter must be smaller than the tick period"),
    ({"jitter": -0.1}, "jitter", "jitter must be a finite number >= 0"),
    ({"max_ticks": 0}, "max_ticks", "max_ticks must be an int >= 1, got 0"),
    ({"max_ticks": 2.5}, "max_ticks", "max_ticks must be an int >= 1, got 2.5 (float)"),
    ({"eager": "yes"}, "eager", "eager must be a bool, got 'yes'"),
    ({"producer_timeout": 0}, "producer_timeout",
     "producer_timeout must be a finite number > 0, got 0"),
    ({"consumer_timeout": -1}, "consumer_timeout", "consumer_timeout must be a finite number > 0"),
    ({"error_backoff": math.nan}, "error_backoff", "error_backoff must be a finite number > 0, got nan"),
    ({"restart_limit": -1}, "restart_limit", "restart_limit must be an int >= 0, got -1"),
    ({"restart_limit": "1"}, "restart_limit", "restart_limit must be an int >= 0, got '1' (str)"),
    ({"restart_window": 0}, "restart_window", "restart_window must be a finite number > 0"),
    ({"block_threshold": "1"}, "block_threshold", "block_threshold must be a number"),
    ({"stop_timeout": 0}, "stop_timeout", "stop_timeout must be a finite number > 0"),
    ({"name": ""}, "name", "name must be a non-empty str"),
    ({"clock": object()}, "clock", "clock must provide time()"),
    ({"seed": "x"}, "seed", "seed must be an int, got 'x' (str)"),
    ({"leader": object()}, "leader", "leader must provide open()"),
    ({"metrics_port": 70000}, "metrics_port", "metrics_port must be an int in 0..65535, got 70000"),
    ({"health_bound": 0}, "health_bound", "health_bound must be a finite number > 0, got 0"),
]
"""One bad argument each: (arguments, the SettingError's .name, text in its message)."""

CONTRADICTIONS: list[tuple[dict[str, Any], str, str]] = [
    ({"cron": "* * * * *", "loop_interval": 5}, "cron",
     "cron cannot be combined with loop_interval (give only one of loop_interval, cron and "
     "schedule)"),
    ({"schedule": IntervalSchedule(5), "cron": "* * * * *"}, "schedule",
     "schedule cannot be combined with cron"),
    ({"cron": "* * * * *", "loop_offset": 3}, "loop_offset",
     "loop_offset applies to loop_interval, not cron; got 3"),
    ({"schedule": IntervalSchedule(5), "loop_offset": 1}, "loop_offset",
     "loop_offset applies to loop_interval, not schedule"),
    ({"loop_interval": 5, "cron_tz": UTC}, "cron_tz",
     "cron_tz applies to cron only, not loop_interval"),
    ({"cron_tz": UTC}, "cron_tz", "cron_tz applies to cron only, not loop_interval"),
    ({"schedule": IntervalSchedule(5), "cron_tz": UTC}, "cron_tz",
     "cron_tz applies to cron only, not schedule"),
    ({"metrics_host": "0.0.0.0"}, "metrics_host",
     "metrics_host has no effect without metrics_port"),
    ({"consumers": [Consumer(consume, batch_age=2)]}, "batch_age",
     "batch_age cannot be combined with batch_size=1"),
    ({"consumers": [Consumer(consume, spool_format="pickle")]}, "spool_format",
     "spool_format applies to a spool, and spool is not set"),
]
"""Arguments that would make another one meaningless: an error naming both, never ignored."""


def assert_setting_error(info: pytest.ExceptionInfo[SettingError], name: str,
                         message: str) -> None:
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert info.value.name == name, str(info.value)
    assert message in str(info.value)
    assert str(info.value) == f"{info.value.subject} {info.value.reason}"


@pytest.mark.parametrize(("kwargs", "name", "message"), CONVEYOR_CASES + CONTRADICTIONS,
                         ids=[str(c[0]) for c in CONVEYOR_CASES + CONTRADICTIONS])
def test_conveyor_rejects_bad_arguments(kwargs: dict[str, Any], name: str, message: str) -> None:
    args: dict[str, Any] = {"produce": produce, "consumers": [consume]}
    args.update(kwargs)
    with pytest.raises(SettingError) as info:
        AioConveyor(**args)
    assert_setting_error(info, name, message)


def test_a_contradiction_names_both_arguments() -> None:
    for kwargs, _name, _message in CONTRADICTIONS:
        with pytest.raises(SettingError) as info:
            AioConveyor(produce, **{"consumers": [consume], **kwargs})
        named = [k for k in ("loop_interval", "loop_offset", "cron", "cron_tz", "schedule",
                             "metrics_host", "metrics_port", "batch_age", "batch_size",
                             "spool_format", "spool") if k in str(info.value)]
        assert len(named) >= 2, str(info.value)


def test_metrics_host_with_its_port_is_fine() -> None:
    conv = AioConveyor(produce, [], metrics_port=0, metrics_host="0.0.0.0")
    assert conv.metrics_host == "0.0.0.0"


def test_misfire_grace_applies_to_skip_too() -> None:
    """Not a contradiction: the grace also bounds how late a tick may still start."""
    conv = AioConveyor(produce, [], loop_interval=10, misfire="skip", misfire_grace=1)
    assert conv.planner.grace(0.0) == 1


CONSUMER_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"fn": None}, "consumer", "consumer must be callable, got None"),
    ({"timeout": 0}, "timeout", "timeout must be a finite number > 0, got 0"),
    ({"timeout": math.nan}, "timeout", "timeout must be a finite number > 0, got nan"),
    ({"retries": -1}, "retries", "retries must be an int >= 0, got -1"),
    ({"retries": 1.5}, "retries", "retries must be an int >= 0, got 1.5 (float)"),
    ({"backoff": 0}, "backoff", "backoff must be a finite number > 0, got 0"),
    ({"max_backoff": -2}, "max_backoff", "max_backoff must be a finite number > 0"),
    ({"backoff_jitter": 2}, "backoff_jitter", "backoff_jitter must be between 0 and 1, got 2"),
    ({"queue_size": 0}, "queue_size", "queue_size must be an int >= 1, got 0"),
    ({"queue_size": True}, "queue_size", "queue_size must be an int >= 1, got True (bool)"),
    ({"overflow": "drop_all"}, "overflow",
     "overflow must be one of 'drop_oldest', 'drop_newest', 'block', got 'drop_all'"),
    ({"batch_size": 0}, "batch_size", "batch_size must be an int >= 1, got 0"),
    ({"batch_age": -1}, "batch_age", "batch_age must be a finite number >= 0, got -1"),
    ({"copy": "no"}, "copy", "copy must be a bool, got 'no'"),
    ({"spool": 5}, "spool", "spool must be a str or os.PathLike file path, got 5"),
    ({"spool": ""}, "spool", "spool must be a non-empty file path, got ''"),
    ({"spool_format": "xml"}, "spool_format", "spool_format must be one of 'json', 'pickle'"),
    ({"startup": "later"}, "startup", "startup must be one of"),
    ({"on_error": "log"}, "on_error", "on_error must be callable, got 'log'"),
    ({"name": 3}, "name", "consumer name must be a non-empty str, got 3"),
]


@pytest.mark.parametrize(("kwargs", "name", "message"), CONSUMER_CASES,
                         ids=[str(c[0]) for c in CONSUMER_CASES])
def test_consumer_rejects_bad_settings(kwargs: dict[str, Any], name: str, message: str) -> None:
    args: dict[str, Any] = {"fn": consume}
    args.update(kwargs)
    with pytest.raises(SettingError) as info:
        Consumer(**args)
    assert_setting_error(info, name, message)


SCHEDULE_CASES: list[tuple[Callable[[], Any], str, str]] = [
    (lambda: IntervalSchedule(0), "interval", "interval must be a finite number > 0, got 0"),
    (lambda: IntervalSchedule("5"), "interval",  # type: ignore[arg-type]
     "interval must be a number, got '5'"),
    (lambda: IntervalSchedule(5, 5), "offset", "offset must be in [0, interval) = [0, 5), got 5"),
    (lambda: IntervalSchedule(5, math.nan), "offset", "offset must be a finite number"),
    (lambda: CronSchedule("every minute"), "expression",
     "expression must be a valid cron expression, got 'every minute'"),
    (lambda: CronSchedule(5), "expression", "expression must be a str"),  # type: ignore[arg-type]
    (lambda: CronSchedule("* * * * *", "UTC"), "tz",  # type: ignore[arg-type]
     "tz must be a datetime.tzinfo, got 'UTC'"),
    (lambda: RetryAfter("3"), "seconds", "seconds must be a number"),  # type: ignore[arg-type]
    (lambda: RetryAfter(-1), "seconds", "seconds must be a finite number >= 0, got -1"),
    (lambda: Rejected(count=0), "count", "count must be an int >= 1 or None, got 0"),
    (lambda: DemoOptions(interval=0), "interval", "interval must be a finite number > 0"),
    (lambda: DemoOptions(interval=2, offset=2), "offset", "offset must be smaller than interval"),
    (lambda: DemoOptions(count=0), "count", "count must be an int >= 1, got 0"),
    (lambda: DemoOptions(ha_discovery=True), "ha_discovery",
     "ha_discovery needs mqtt (the broker to announce to), got mqtt=None"),
    (lambda: DemoOptions(device=""), "device", "device must be a non-empty str"),
    (lambda: DemoOptions(speed=-1), "speed", "speed must be a finite number > 0"),
    (lambda: InverterSimulator(peak_w=True), "peak_w", "peak_w must be a number, got True"),
    (lambda: parse_listen(":9108"), "listen", 'missing the host: "127.0.0.1:9108"'),
]
"""Every other constructor with settings: (call, the SettingError's .name, message)."""


@pytest.mark.parametrize(("make", "name", "message"), SCHEDULE_CASES,
                         ids=[c[2][:40] for c in SCHEDULE_CASES])
def test_schedules_and_other_settings_name_their_own_argument(
    make: Callable[[], Any], name: str, message: str
) -> None:
    with pytest.raises(SettingError) as info:
        make()
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert info.value.name == name, str(info.value)
    assert message in str(info.value)


def test_setting_error_is_one_exception_for_both_kinds_of_mistake() -> None:
    """Callers that caught ValueError or TypeError before keep working."""
    wrongs: tuple[Any, ...] = ("1", -1)
    for wrong in wrongs:
        with pytest.raises(ValueError):
            AioConveyor(produce, [], restart_limit=wrong)
        with pytest.raises(TypeError):
            AioConveyor(produce, [], restart_limit=wrong)
    err = SettingError("queue_size", 0, "must be an int >= 1, got 0")
    assert isinstance(err, ConveyorError)
    assert (str(err), err.name, err.value) == ("queue_size must be an int >= 1, got 0",
                                               "queue_size", 0)
    assert pickle.loads(pickle.dumps(err)).name == "queue_size"


def test_bad_consumer_defaults_on_an_object_fail_at_construction() -> None:
    class Sink:
        consumer_defaults = {"batch_size": -3}

        async def __call__(self, data: Any, event_time: datetime) -> None: ...

    with pytest.raises(SettingError, match="batch_size must be an int >= 1, got -3") as info:
        AioConveyor(produce, [Sink()], loop_interval=1)
    assert info.value.name == "batch_size"


@pytest.mark.parametrize(("seconds", "exc"), [(-1, ValueError), (math.inf, ValueError),
                                              ("3", TypeError), (None, TypeError)])
def test_retry_after_validates_seconds(seconds: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="seconds"):
        RetryAfter(seconds)


def test_consumer_timeout_may_be_infinite() -> None:
    assert Consumer(consume, timeout=math.inf).timeout == math.inf


# -- the config loader names the TOML key from SettingError.name --------------------------

PRODUCER = '[producer]\nfunction = "builtins:print"\n'

TOML_CASES: list[tuple[str, str, str]] = [
    ('[[consumers]]\ntype = "pretty"\n[[consumers]]\ntype = "pretty"\nqueue_size = 0\n',
     "consumers[1].queue_size", "must be an int >= 1, got 0"),
    ('[[consumers]]\ntype = "csv"\npath = "x.csv"\nbatch_size = 1\nbatch_age = 2\n',
     "consumers[0].batch_age", "cannot be combined with batch_size=1"),
    ('[[consumers]]\ntype = "pretty"\nmax_depth = "deep"\n', "consumers[0].max_depth",
     "must be an int >= 1, got 'deep' (str)"),
    ('[[consumers]]\ntype = "mqtt"\ntopic = "home/{device}"\n[consumers.discovery]\n'
     'node_id = "x"\ndevice_name = "X"\nsensors = [{ key = "a", name = "A" }]\n',
     "consumers[0].topic", "cannot be combined with discovery"),
    ('[[consumers]]\ntype = "mqtt"\n[consumers.discovery]\nnode_id = "x"\ndevice_name = "X"\n'
     'sensors = [{ key = "a", name = "A" }, { key = "a", name = "B" }]\n',
     "consumers[0].discovery.sensors[1].key", "repeats object id 'a'"),
    ('[conveyor]\ninterval = 5\ncron_tz = "Europe/Berlin"\n', "conveyor.cron_tz",
     "applies to cron only, not loop_interval"),
    ('[conveyor]\ncron = "* * * * *"\noffset = 3\n', "conveyor.offset",
     "applies to loop_interval, not cron"),
    ('[conveyor]\nmetrics_host = "0.0.0.0"\n', "conveyor.metrics_host",
     "has no effect without metrics_port"),
    ('[conveyor]\nrestart_limit = "1"\n', "conveyor.restart_limit",
     "must be an int >= 0, got '1' (str)"),
]


@pytest.mark.parametrize(("body", "key", "message"), TOML_CASES, ids=[c[1] for c in TOML_CASES])
def test_config_loader_reports_the_key_of_the_setting_error(body: str, key: str, message: str,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(PRODUCER + body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key, str(info.value)
    assert message in info.value.message, str(info.value)
    assert str(info.value) == f"{path}: {key}: {info.value.message}"


def test_a_setting_error_of_a_producer_class_names_its_option(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text('[producer]\nfunction = "aioconveyor._demo:InverterSimulator"\npeak_w = 0\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "producer.peak_w"
    assert info.value.message == "must be a finite number > 0, got 0"


def test_aioconveyor_check_prints_the_key_and_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(PRODUCER + '[[consumers]]\ntype = "pretty"\nqueue_size = 0\n',
                    encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "aioconveyor", "check", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"aioconveyor: error: {path}: consumers[0].queue_size: must be an int >= 1, got 0")
