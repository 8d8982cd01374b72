"""``aioconveyor run|check conveyor.toml``: loading, validation, env interpolation, secrets,
and real runs in subprocesses (exit codes, signals, summaries)."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aioconveyor import AioConveyor, IntervalSchedule
from aioconveyor._config import (
    ConfigError,
    LoadedConfig,
    format_listen,
    load_config,
    mask_secrets,
    parse_listen,
)
from support.runner import Runner, kill_all
from support.services import free_port

BIN = Path(sys.executable).parent / "aioconveyor"


@pytest.fixture(autouse=True)
def restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_config puts the config's folder on sys.path; keep that within each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def module(tmp_path: Path) -> Callable[[str], str]:
    """Write a helper module next to the config file; returns its (unique) name."""

    def write(source: str) -> str:
        name = f"helpers_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


HELPERS = """
    from datetime import datetime

    async def produce(event_time, *, start=0, step=1):
        produce.n = getattr(produce, "n", -1) + 1
        return {"value": start + step * produce.n}

    def write_line(data, event_time, path="lines.txt", token=None):
        with open(path, "a") as fh:
            fh.write(f"{event_time.isoformat()} {data['value']}\\n")

    def on_error(exc, data, event_time):
        pass

    class Sink:
        def __init__(self, label, *, secret=None):
            self.label = label
        def __call__(self, data, event_time):
            pass

    def hang(data, event_time, marker="entered"):
        import pathlib, time
        pathlib.Path(marker).touch()
        time.sleep(60)

    not_callable = 42

    class Broken:
        def __init__(self):
            raise RuntimeError("no such device")
"""


def config(tmp_path: Path, text: str, name: str = "conveyor.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value


def load_text(tmp_path: Path, text: str, **kwargs: Any) -> LoadedConfig:
    return load_config(config(tmp_path, text), **kwargs)


def fail_text(tmp_path: Path, text: str, **kwargs: Any) -> ConfigError:
    return error_of(config(tmp_path, text), **kwargs)


# -- building --------------------------------------------------------------------------


def test_a_complete_file_builds_the_conveyor_and_opens_nothing(
    tmp_path: Path, module: Callable[[str], str], postgres_dsn: str, mqtt_url: str
) -> None:
    helpers = module(HELPERS)
    loaded = load_text(tmp_path, f"""
        [conveyor]
        name = "home"
        interval = 10
        offset = 2
        jitter = 0.5
        stop_timeout = 3
        producer_timeout = inf

        [producer]
        function = "{helpers}:produce"
        start = 100

        [[consumers]]
        type = "csv"
        path = "out/readings.csv"
        batch_size = 10

        [[consumers]]
        type = "pretty"

        [[consumers]]
        type = "{helpers}:write_line"
        path = "lines.txt"
        retries = 2
        timeout = 4.5
        on_error = "{helpers}:on_error"

        [[consumers]]
        type = "postgres"
        dsn = "{postgres_dsn}"
        table = "readings"
        create_table = true

        [[consumers]]
        type = "mqtt"
        url = "{mqtt_url}"
        topic = "home/inverter/state"
        timeout = 7
        [consumers.discovery]
        node_id = "inverter"
        device_name = "Inverter"
        sensors = [{{ key = "value", name = "Value", unit = "W" }}]
    """)
    conv = loaded.conveyor
    assert isinstance(conv, AioConveyor) and not conv.running
    assert conv.name == "home"
    assert conv.schedule == IntervalSchedule(10, 2)
    assert conv.stop_timeout == 3 and conv.producer_timeout == math.inf
    specs = conv._consumers
    assert [type(c.fn).__name__ for c in specs] == [
        "CsvConsumer", "PrettyPrintConsumer", "partial", "PostgresConsumer", "MqttConsumer"]
    assert specs[0].batch_size == 10
    assert specs[2].retries == 2 and specs[2].timeout == 4.5 and specs[2].on_error is not None
    assert specs[2].fn.keywords == {"path": "lines.txt"}
    mqtt = specs[4].fn
    assert mqtt.timeout == 7 and specs[4].timeout == 7  # the class's option and the lane's
    assert mqtt.discovery.sensors[0].unit == "W"
    assert not (tmp_path / "out").exists(), "check/load must not create files"
    assert loaded.producer == f"{helpers}:produce (start)"
    assert [line.split(":", 1)[0] for line in loaded.consumers] == [
        "csv", "pretty", "write_line", "postgres", "mqtt"]
    described = "\n".join(loaded.describe())
    assert "every 10 s at +2 s" in described and "home" in described


async def test_the_producer_gets_its_keyword_arguments(
    tmp_path: Path, module: Callable[[str], str]
) -> None:
    helpers = module(HELPERS)
    loaded = load_text(tmp_path, f"""
        [producer]
        function = "{helpers}:produce"
        start = 10
        step = 5
    """)
    produce = loaded.conveyor.produce
    assert [await produce(None) for _ in range(3)] == [{"value": 10}, {"value": 15},
                                                       {"value": 20}]


def test_cron_and_its_time_zone(tmp_path: Path, module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    loaded = load_text(tmp_path, f"""
        [conveyor]
        cron = "*/5 * * * *"
        cron_tz = "Europe/Berlin"
        [producer]
        function = "{helpers}:produce"
    """)
    assert "cron '*/5 * * * *' (Europe/Berlin)" in loaded.describe()[0]


def test_a_class_consumer_is_built_with_its_options(
    tmp_path: Path, module: Callable[[str], str]
) -> None:
    helpers = module(HELPERS)
    loaded = load_text(tmp_path, f"""
        [producer]
        function = "{helpers}:produce"
        [[consumers]]
        type = "{helpers}:Sink"
        label = "kitchen"
        name = "kitchen-sink"
        queue_size = 5
        spool = "spool/kitchen.db"
    """)
    [spec] = loaded.conveyor._consumers
    assert spec.fn.label == "kitchen"
    assert spec.name == "kitchen-sink" and spec.queue_size == 5
    assert spec.spool == str(tmp_path.resolve() / "spool" / "kitchen.db")  # next to the file
    assert not (tmp_path / "spool").exists()


# -- ${ENV} ----------------------------------------------------------------------------


def test_env_references_defaults_and_dollar_escapes(
    tmp_path: Path, module: Callable[[str], str]
) -> None:
    helpers = module(HELPERS)
    env = {"OUT": "/data", "EMPTY": ""}
    loaded = load_text(tmp_path, f"""
        [producer]
        function = "{helpers}:produce"
        [[consumers]]
        type = "{helpers}:Sink"
        label = "${{OUT}}/a-${{MISSING:-fallback}}-${{EMPTY:-default}}-$$HOME-$5"
    """, env=env)
    assert loaded.conveyor._consumers[0].fn.label == "/data/a-fallback-default-$HOME-$5"


def test_a_missing_env_variable_names_the_file_the_key_and_the_variable(
    tmp_path: Path, module: Callable[[str], str]
) -> None:
    helpers = module(HELPERS)
    err = fail_text(tmp_path, f"""
        [producer]
        function = "{helpers}:produce"
        [[consumers]]
        type = "postgres"
        dsn = "postgresql://app:${{DB_PASSWORD}}@db/home"
    """, env={})
    assert err.key == "consumers[0].dsn"
    assert str(err).startswith(f"{tmp_path / 'conveyor.toml'}: consumers[0].dsn: ")
    assert "environment variable DB_PASSWORD is not set" in str(err)


@pytest.mark.parametrize("value", ["${NOT VALID}", "${OPEN", "${}", "${1X}"])
def test_a_broken_env_reference_is_an_error(value: str, tmp_path: Path) -> None:
    err = fail_text(tmp_path, f"""
        [conveyor]
        name = "{value}"
    """, env={})
    assert err.key == "conveyor.name"
    assert "$$ for a literal $" in err.message


# -- errors name the file, the key and what was expected --------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    err = error_of(tmp_path / "nope.toml")
    assert str(err) == f"{tmp_path / 'nope.toml'}: no such file"


def test_broken_toml_says_where(tmp_path: Path) -> None:
    err = fail_text(tmp_path, """
        [conveyor]
        interval = = 5
    """)
    assert err.key is None
    assert "not valid TOML" in str(err) and "line 3" in str(err)


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("[conveyr]\n", "conveyr", "unknown section (did you mean 'conveyor'?); expected "
                                   "[conveyor], [producer] or [[producers]], [[consumers]], "
                                   "[leader] and [metrics]"),
        ("[conveyor]\nintervall = 5\n", "conveyor.intervall", "unknown option (did you mean 'interval'?); expected one of: interval, offset, "),
        ('[conveyor]\ninterval = "10"\n', "conveyor.interval", "must be a number, got '10'"),
        ("[conveyor]\ninterval = -1\n", "conveyor.interval", "must be a finite number > 0"),
        ("[conveyor]\ninterval = 10\noffset = 12\n", "conveyor.offset", "must be in [0, "),
        ("[conveyor]\ninterval = 60\njitter = 60\n", "conveyor.jitter",
         "must be smaller than the tick period (60 s)"),
        ("[conveyor]\ninterval = 5\nloop_interval = 5\n", "conveyor.loop_interval",
         "given twice"),
        ('[conveyor]\nmisfire = "later"\n', "conveyor.misfire", "must be one of 'skip', 'coalesce', got 'later'"),
        ('[conveyor]\ncron = "every minute"\n', "conveyor.cron", "valid cron expression"),
        ('[conveyor]\ncron = "* * * * *"\ncron_tz = "Mars/Olympus"\n', "conveyor.cron_tz",
         "unknown time zone 'Mars/Olympus'"),
        ("[conveyor]\nmax_ticks = 0\n", "conveyor.max_ticks", ">= 1"),
        ("conveyor = 5\n", "conveyor", "expected a table ([conveyor]), got integer"),
    ],
)
def test_conveyor_errors_name_the_key(body: str, key: str, message: str, tmp_path: Path,
                                      module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    err = fail_text(tmp_path, f'{body}[producer]\nfunction = "{helpers}:produce"\n')
    assert err.key == key, str(err)
    assert message in err.message
    assert str(err).startswith(str(tmp_path / "conveyor.toml"))


@pytest.mark.parametrize(
    ("producer", "key", "message"),
    [
        (None, "producer", "missing [producer] table"),
        ("start = 1", "producer.function", 'missing; expected "package.module:function"'),
        ('function = "{h}.produce"', "producer.function", "a colon between module and name"),
        ("function = 5", "producer.function", "got integer 5"),
        ('function = "no_such_module_xyz:f"', "producer.function",
         "no module named 'no_such_module_xyz'"),
        ('function = "{h}:prodce"', "producer.function",
         "has no attribute 'prodce' (did you mean 'produce'?)"),
        ('function = "{h}:not_callable"', "producer", "is not callable"),
        ('function = "{h}:produce"\nstrat = 1', "producer.strat",
         "has no argument 'strat' (did you mean 'start'?)"),
        ('function = "{h}:write_line"', "producer", "cannot be called as a producer"),
    ],
)
def test_producer_errors_name_the_key(producer: str | None, key: str, message: str,
                                      tmp_path: Path, module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    body = "" if producer is None else "[producer]\n" + producer.replace("{h}", helpers)
    err = fail_text(tmp_path, body + "\n")
    assert err.key == key, str(err)
    assert message in err.message


@pytest.mark.parametrize(
    ("consumer", "key", "message"),
    [
        ('path = "x.csv"', "consumers[0].type", 'missing; expected \'csv\''),
        ('type = "postgress"', "consumers[0].type",
         "unknown consumer type 'postgress' (did you mean 'postgres'?)"),
        ('type = "csv"', "consumers[0]", "missing required option 'path' for CsvConsumer"),
        ('type = "csv"\npth = "x.csv"', "consumers[0].pth",
         "unknown option for CsvConsumer (did you mean 'path'?); it takes: path, fields"),
        ('type = "csv"\npath = "x.csv"\nretries = -1', "consumers[0].retries",
         "must be an int >= 0, got -1"),
        ('type = "csv"\npath = "x.csv"\noverflow = "explode"', "consumers[0].overflow",
         "must be one of 'drop_oldest'"),
        ('type = "csv"\npath = "x.csv"\nrotate = "hourly"', "consumers[0].rotate",
         "must be None or 'daily'"),
        ('type = "csv"\npath = "x.csv"\nescape_formulas = "yes"', "consumers[0].escape_formulas",
         "must be a bool, got 'yes'"),
        ('type = "mqtt"\nport = 99999', "consumers[0].port", "must be an int in 1..65535"),
        ('type = "mqtt"\n[consumers.discovery]\nnode_id = "x"\ndevice_name = "X"\nsensors = 3',
         "consumers[0].discovery.sensors", "expected an array of tables"),
        ('type = "mqtt"\n[consumers.discovery]\nnode_id = "x"\ndevice_name = "X"\n'
         'sensors = [{ key = "a" }]', "consumers[0].discovery.sensors[0]",
         "missing required option 'name' for HaSensor"),
        ('type = "{h}:write_line"\npaht = "x"', "consumers[0].paht",
         "has no argument 'paht' (did you mean 'path'?)"),
        ('type = "{h}:produce"', "consumers[0]", "cannot be called as a consumer"),
        ('type = "{h}:Sink"', "consumers[0]", "missing required option 'label'"),
        ('type = "{h}:write_line"\non_error = "{h}:nope"', "consumers[0].on_error",
         "has no attribute 'nope'"),
        ('type = "{h}:write_line"\non_delivered = "{h}:on_error"', "consumers[0].on_delivered",
         "cannot be called as the on_delivered hook"),
        ('type = "{h}:Broken"', "consumers[0]", "Broken(...) raised RuntimeError: no such device"),
    ],
)
def test_consumer_errors_name_the_key(consumer: str, key: str, message: str, tmp_path: Path,
                                      module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    err = fail_text(tmp_path, f'[producer]\nfunction = "{helpers}:produce"\n'
                              f"[[consumers]]\n{consumer.replace('{h}', helpers)}\n")
    assert err.key == key, str(err)
    assert message in err.message


def test_consumers_must_be_an_array_of_tables(tmp_path: Path,
                                              module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    err = fail_text(tmp_path, f'consumers = ["csv"]\n[producer]\nfunction = "{helpers}:produce"\n')
    assert err.key == "consumers" and "array of tables" in err.message


def test_index_in_keys_counts_from_zero(tmp_path: Path, module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    err = fail_text(tmp_path, f"""
        [producer]
        function = "{helpers}:produce"
        [[consumers]]
        type = "pretty"
        [[consumers]]
        type = "pretty"
        max_rows = 0
    """)
    assert err.key == "consumers[1].max_rows" and "must be an int >= 1, got 0" in err.message


# -- --set overrides -------------------------------------------------------------------


def test_overrides_replace_values_before_validation(tmp_path: Path,
                                                    module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    loaded = load_text(tmp_path, f"""
        [conveyor]
        interval = 60
        [producer]
        function = "{helpers}:produce"
        [[consumers]]
        type = "{helpers}:Sink"
        label = "a"
    """, overrides=["conveyor.interval=0.5", "conveyor.max_ticks=3", "consumers[0].label=b",
                    'consumers.0.name="renamed"'])
    conv = loaded.conveyor
    assert conv.schedule == IntervalSchedule(0.5) and conv.max_ticks == 3
    assert conv._consumers[0].fn.label == "b" and conv._consumers[0].name == "renamed"


@pytest.mark.parametrize(("override", "message"), [
    ("interval", "expected KEY=VALUE"),
    ("consumers[3].label=x", "has 1 entries; '3' is not an index"),
    ("producer.function.x=1", "producer.function is not a table"),
])
def test_bad_overrides_are_config_errors(override: str, message: str, tmp_path: Path,
                                         module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    err = fail_text(tmp_path, f"""
        [producer]
        function = "{helpers}:produce"
        [[consumers]]
        type = "pretty"
    """, overrides=[override])
    assert err.key is not None and err.key.startswith("--set")
    assert message in err.message


# -- secrets ---------------------------------------------------------------------------


def test_mask_secrets_hides_url_passwords_password_pairs_and_known_values() -> None:
    text = ("postgresql://app:pa55w0rd@db/home host=db password=hunter2 user=x "
            "mqtts://u:p%40ss@broker:8883 token abcdef123")
    masked = mask_secrets(text, {"abcdef123"})
    assert masked == ("postgresql://app:***@db/home host=db password=*** user=x "
                      "mqtts://u:***@broker:8883 token ***")


def test_secrets_never_show_in_descriptions_or_errors(tmp_path: Path,
                                                      module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    env = {"DB_PASSWORD": "Tr0ub4dor", "API_TOKEN": "tok-123456", "PORT": "notaport"}
    text = f"""
        [producer]
        function = "{helpers}:produce"
        [[consumers]]
        type = "postgres"
        dsn = "postgresql://app:${{DB_PASSWORD}}@db/home"
        [[consumers]]
        type = "{helpers}:write_line"
        token = "${{API_TOKEN}}"
        [[consumers]]
        type = "{helpers}:Sink"
        label = "x"
        secret = "literal-secret-value"
    """
    loaded = load_text(tmp_path, text, env=env)
    shown = "\n".join(loaded.describe())
    for secret in ("Tr0ub4dor", "tok-123456", "literal-secret-value"):
        assert secret not in shown
        assert loaded.mask(f"error: {secret}!") == "error: ***!"
    assert "postgresql://app:***@db/home" in shown
    # an error later in the file must not echo a secret met earlier either
    err = fail_text(tmp_path, text + '[[consumers]]\ntype = "mqtt"\nurl = "mqtt://u:${DB_PASSWORD}@h:x"\n',
                    env=env)
    assert "Tr0ub4dor" not in str(err) and err.key == "consumers[3].url"


# -- the command line, for real --------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file written so far (a half-written last line is left out)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    return list(csv.DictReader(lines))


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            entry: str = "script") -> subprocess.CompletedProcess[str]:
    command = [str(BIN)] if entry == "script" else [sys.executable, "-m", "aioconveyor"]
    return subprocess.run([*command, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **(env or {})})


RUNNABLE = """
    [conveyor]
    interval = 0.05
    max_ticks = 3

    [producer]
    function = "{h}:produce"
    start = 40

    [[consumers]]
    type = "csv"
    path = "${{OUT_DIR:-.}}/readings.csv"

    [[consumers]]
    type = "pretty"

    [[consumers]]
    type = "{h}:write_line"
    path = "lines.txt"
"""


@pytest.mark.parametrize("entry", ["script", "module"])
def test_run_feeds_csv_pretty_and_a_custom_function(entry: str, tmp_path: Path,
                                                    module: Callable[[str], str]) -> None:
    path = config(tmp_path, RUNNABLE.format(h=module(HELPERS)))
    result = run_cli(tmp_path, "run", str(path), env={"OUT_DIR": str(tmp_path / "data")},
                     entry=entry)
    assert result.returncode == 0, result.stderr
    with (tmp_path / "data" / "readings.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["value"] for r in rows] == ["40", "41", "42"]
    lines = (tmp_path / "lines.txt").read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["40", "41", "42"]
    assert [line.split()[0] for line in lines] == [r["event_time"] for r in rows]
    assert result.stdout.count("pretty ·") == 3
    assert "summary: stopped (max_ticks 3 reached)" in result.stdout
    assert "write_line: 3 delivered, 0 errors, 0 dropped" in result.stdout
    # logs: timestamped lines on stderr
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    aioconveyor\._cli: "
                     r"conveyor produce running", result.stderr, re.M), result.stderr


def test_check_validates_without_running(tmp_path: Path, module: Callable[[str], str]) -> None:
    path = config(tmp_path, RUNNABLE.format(h=module(HELPERS)))
    result = run_cli(tmp_path, "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{path}: OK"
    assert "every 0.05 s" in result.stdout and "consumer write_line:" in result.stdout
    assert not (tmp_path / "readings.csv").exists() and not (tmp_path / "lines.txt").exists()


def test_check_of_a_broken_file_exits_2_naming_file_and_key(tmp_path: Path,
                                                            module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    path = config(tmp_path, f'[producer]\nfunction = "{helpers}:produce"\n'
                            '[[consumers]]\ntype = "csv"\npath = "x.csv"\nbatch_size = "big"\n')
    for command in ("check", "run"):
        result = run_cli(tmp_path, command, str(path))
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"aioconveyor: error: {path}: consumers[0].batch_size: must be an int "
            ">= 1, got 'big' (str)"), result.stderr
        assert result.stdout == ""


def test_invalid_toml_exits_2(tmp_path: Path) -> None:
    path = config(tmp_path, "[conveyor\ninterval = 5\n")
    result = run_cli(tmp_path, "check", str(path))
    assert result.returncode == 2
    assert f"{path}: not valid TOML" in result.stderr and "line 1" in result.stderr


def test_a_missing_env_variable_exits_2_and_keeps_secrets_out(
    tmp_path: Path, module: Callable[[str], str]
) -> None:
    helpers = module(HELPERS)
    path = config(tmp_path, f"""
        [producer]
        function = "{helpers}:produce"
        [[consumers]]
        type = "mqtt"
        url = "mqtt://${{MQTT_USER}}:${{MQTT_PASSWORD}}@broker"
    """)
    result = run_cli(tmp_path, "run", str(path), env={"MQTT_USER": "me"})
    assert result.returncode == 2
    assert f"{path}: consumers[0].url: environment variable MQTT_PASSWORD is not set" in (
        result.stderr)
    ok = run_cli(tmp_path, "check", str(path),
                 env={"MQTT_USER": "me", "MQTT_PASSWORD": "Sup3rSecret"})
    assert ok.returncode == 0, ok.stderr
    assert "Sup3rSecret" not in ok.stdout + ok.stderr
    assert "mqtt://me:***@broker:1883" in ok.stdout


def test_bad_command_line_exits_2(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "run")
    assert result.returncode == 2 and "the following arguments are required: CONFIG" in (
        result.stderr)
    result = run_cli(tmp_path, "check", "x.toml", "--log-level", "chatty")
    assert result.returncode == 2 and "--log-level" in result.stderr


def test_run_help_documents_set_and_log_level(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "run", "--help")
    assert result.returncode == 0
    for word in ("CONFIG", "--set", "KEY=VALUE", "--log-level", "--stats-interval", "SIGTERM"):
        assert word in result.stdout, word


def test_a_consumer_with_startup_fail_that_cannot_open_exits_1(
    tmp_path: Path, module: Callable[[str], str],
) -> None:
    (tmp_path / "readings.csv").write_text("some,other,file\n")
    text = RUNNABLE.format(h=module(HELPERS))
    text = text.replace('type = "csv"\n', 'type = "csv"\n    startup = "fail"\n', 1)
    path = config(tmp_path, text)
    assert load_config(path).conveyor._lane_settings[0].startup == "fail"
    result = run_cli(tmp_path, "run", str(path))
    assert result.returncode == 1
    assert "could not start" in result.stderr and "readings.csv" in result.stderr


def test_a_startup_setting_that_is_not_retry_or_fail_is_a_config_error(
    tmp_path: Path, module: Callable[[str], str],
) -> None:
    text = RUNNABLE.format(h=module(HELPERS))
    text = text.replace('type = "csv"\n', 'type = "csv"\n    startup = "later"\n', 1)
    error = fail_text(tmp_path, text)
    assert "startup" in str(error) and "later" in str(error)


def test_a_consumer_that_cannot_open_does_not_stop_the_runner(
    tmp_path: Path, module: Callable[[str], str], runner_processes: list[Runner],
) -> None:
    closed = free_port()  # nothing listens there: every open() is refused at once
    path = config(tmp_path, f"""
        [conveyor]
        interval = 0.05

        [producer]
        function = "{module(HELPERS)}:produce"

        [[consumers]]
        type = "csv"
        path = "readings.csv"

        [[consumers]]
        type = "postgres"
        name = "pg"
        dsn = "postgresql://postgres@127.0.0.1:{closed}/test"
        table = "t"
        connect_timeout = 1.0
        backoff = 0.05
        max_backoff = 0.1
        backoff_jitter = 0
    """)
    runner = Runner(tmp_path, path)
    runner_processes.append(runner)
    runner.wait_for_log(r"conveyor \S+ running")
    runner.wait_until(lambda: len(read_csv(tmp_path / "readings.csv")) >= 15, "15 CSV rows")
    assert runner.stop() == 0, runner.stderr
    rows = read_csv(tmp_path / "readings.csv")
    assert [int(r["value"]) for r in rows] == list(range(len(rows)))  # every tick, in order
    summary = re.search(r"^  pg: 0 delivered, (\d+) errors", runner.stdout, re.M)
    assert summary is not None, runner.stdout
    assert int(summary[1]) >= 5, runner.stdout  # open() was retried many times ...
    assert runner.stderr.count("consumer pg: open() failed") == 1, runner.stderr  # ... logged once
    assert "retrying with backoff" in runner.stderr
    assert "stopped (SIGTERM)" in runner.stdout


def test_a_conveyor_that_ends_by_an_error_exits_1(tmp_path: Path) -> None:
    # the schedule breaks (a BaseException from next_fire) on every call after the first
    # few: the scheduler fails on each restart, past restart_limit, and the conveyor ends
    (tmp_path / "doomed.py").write_text(textwrap.dedent("""
        from aioconveyor._schedule import IntervalSchedule

        class Doom(BaseException):
            pass

        _real = IntervalSchedule.next_fire
        calls = 0

        def next_fire(self, after):
            global calls
            calls += 1
            if calls > 20:
                raise Doom("the schedule broke")
            return _real(self, after)

        IntervalSchedule.next_fire = next_fire

        def produce(event_time):
            return {"value": calls}
    """))
    path = config(tmp_path, """
        [conveyor]
        interval = 0.05
        restart_limit = 1

        [producer]
        function = "doomed:produce"

        [[consumers]]
        type = "csv"
        path = "readings.csv"
    """)
    result = run_cli(tmp_path, "run", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "stopped (finished)" not in result.stdout
    assert "summary: stopped (failed: " in result.stdout, result.stdout
    assert re.search(r"ERROR +aioconveyor._cli: conveyor \S+ failed: .*restarts",
                     result.stderr), result.stderr
    assert "Doom" in result.stderr and read_csv(tmp_path / "readings.csv")


@pytest.fixture
def runner_processes() -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    kill_all(started)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for p in processes:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_runner_gracefully(
    sig: signal.Signals, tmp_path: Path, module: Callable[[str], str],
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    path = config(tmp_path, RUNNABLE.format(h=module(HELPERS)).replace("max_ticks = 3", ""))
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:
        process = subprocess.Popen([str(BIN), "run", str(path), "--stats-interval", "0.1"],
                                   cwd=tmp_path, stdout=o, stderr=e)
    spawned.append(process)
    lines = tmp_path / "lines.txt"
    deadline = time.monotonic() + 30
    while not (lines.exists() and len(lines.read_text().splitlines()) >= 3
               and "status: " in err.read_text()):
        assert process.poll() is None, err.read_text()
        assert time.monotonic() < deadline, "the runner did not deliver within 30 s"
        time.sleep(0.02)
    process.send_signal(sig)
    assert process.wait(30) == 0, err.read_text()
    stdout, stderr = out.read_text(), err.read_text()
    assert f"summary: stopped ({sig.name})" in stdout
    assert f"{sig.name} received: stopping" in stderr
    assert re.search(r"status: \d+ ticks, 0 missed, 0 producer errors; consumers "
                     r"\(delivered/errors/dropped/queued\): csv:readings.csv \d+/0/0/0", stderr)
    delivered = int(stdout.split("write_line: ", 1)[1].split(" delivered")[0])
    assert delivered == len(lines.read_text().splitlines())


def test_a_second_signal_forces_the_stop(tmp_path: Path, module: Callable[[str], str],
                                         spawned: list[subprocess.Popen[bytes]]) -> None:
    """The first SIGTERM waits for the drain (here: a hung consumer, up to 30 s); the second
    ends the process at once with exit code 130."""
    path = config(tmp_path, f"""
        [conveyor]
        interval = 0.05
        stop_timeout = 30
        [producer]
        function = "{module(HELPERS)}:produce"
        [[consumers]]
        type = "{module(HELPERS)}:hang"
        timeout = 60
    """)
    err = tmp_path / "err.txt"
    with err.open("w") as e:
        process = subprocess.Popen([str(BIN), "run", str(path)], cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=e)
    spawned.append(process)
    deadline = time.monotonic() + 30
    while not (tmp_path / "entered").exists():
        assert process.poll() is None and time.monotonic() < deadline, err.read_text()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    while "SIGTERM received: stopping" not in err.read_text():
        assert process.poll() is None and time.monotonic() < deadline, err.read_text()
        time.sleep(0.02)
    forced = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 130
    assert time.monotonic() - forced < 10, "the forced stop waited for the drain"
    assert "second signal: forced stop" in err.read_text()


# -- [leader] --------------------------------------------------------------------------


def test_a_postgres_leader_is_built_from_its_table(tmp_path: Path,
                                                   module: Callable[[str], str]) -> None:
    loaded = load_text(tmp_path, f"""
        [producer]
        function = "{module(HELPERS)}:produce"
        [leader]
        type = "postgres"
        dsn = "postgresql://app:${{PG_PASSWORD}}@db/home"
        key = "home-poller"
        keepalive = 5
    """, env={"PG_PASSWORD": "L3ad3rSecret"})
    leader = loaded.conveyor.leader
    assert type(leader).__name__ == "PostgresLeader"
    assert leader.key == "home-poller" and leader.keepalive == 5
    shown = "\n".join(loaded.describe())
    assert "leader: <PostgresLeader" in shown and "L3ad3rSecret" not in shown


@pytest.mark.parametrize(("table", "key", "message"), [
    ('dsn = "x"', "leader.type", 'missing; expected "postgres" or "package.module:attribute"'),
    ('type = "etcd"', "leader.type", "unknown leader type 'etcd'"),
    ('type = "postgres"\ndsn = "x"\nkey = "k"\nkeepalive = 0.5', "leader.keepalive",
     "must be at least 1 second"),
    ('type = "postgres"\ndsn = "x"\nkey = "k"\nttl = 5', "leader.ttl", "unknown option"),
    ('type = "postgres"\ndsn = "x"', "leader", "missing required option 'key'"),
    ('type = "{h}:Sink"\nlabel = "x"', "leader.type", "leader must provide open()"),
])
def test_leader_errors_name_the_key(table: str, key: str, message: str, tmp_path: Path,
                                    module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    err = fail_text(tmp_path, f'[producer]\nfunction = "{helpers}:produce"\n'
                              f"[leader]\n{table.replace('{h}', helpers)}\n")
    assert err.key == key, str(err)
    assert message in err.message


def test_run_with_a_postgres_leader_produces(tmp_path: Path, module: Callable[[str], str],
                                             postgres_dsn: str) -> None:
    # 0.25 s, not RUNNABLE's 0.05 s: a tick's leader check must answer within the tick's
    # grace (a fraction of the interval), and on a loaded machine the first lock round trip
    # can take longer than 50 ms's share; that tick then stands by (doubt means no).
    text = RUNNABLE.format(h=module(HELPERS)).replace("interval = 0.05", "interval = 0.25") + (
        f'[leader]\ntype = "postgres"\ndsn = "{postgres_dsn}"\nkey = "{unique_key()}"\n')
    result = run_cli(tmp_path, "run", str(config(tmp_path, text)))
    assert result.returncode == 0, result.stderr
    assert "summary: stopped (max_ticks 3 reached)" in result.stdout
    assert "write_line: 3 delivered" in result.stdout


# -- [metrics] -------------------------------------------------------------------------


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:9108", ("127.0.0.1", 9108)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost:65535", ("localhost", 65535)),
    ("[::1]:9108", ("::1", 9108)),
    ("[::]:0", ("::", 0)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected
    assert format_listen(*expected) == listen


def test_metrics_listen_sets_host_and_port(tmp_path: Path, module: Callable[[str], str]) -> None:
    loaded = load_text(tmp_path, f"""
        [producer]
        function = "{module(HELPERS)}:produce"
        [metrics]
        listen = "[::1]:9108"
    """)
    assert (loaded.conveyor.metrics_host, loaded.conveyor.metrics_port) == ("::1", 9108)
    assert "metrics: http://[::1]:9108/metrics, /healthz and /readyz" in loaded.describe()
    without = load_text(tmp_path, f'[producer]\nfunction = "{module(HELPERS)}:produce"\n')
    assert without.conveyor.metrics_port is None
    assert not any(line.startswith("metrics") for line in without.describe())


@pytest.mark.parametrize(("table", "key", "message"), [
    ("listen = 9108", "metrics.listen",
     'expected "host:port" like "127.0.0.1:9108" (or "[::1]:9108"), got integer 9108'),
    ('listen = "9108"', "metrics.listen", "got '9108' (no port)"),
    ('listen = ":9108"', "metrics.listen", 'missing the host: "127.0.0.1:9108"'),
    ('listen = "::1:9108"', "metrics.listen", 'an IPv6 address needs brackets: "[::1]:9108"'),
    ('listen = "[::1]9108"', "metrics.listen", "got '[::1]9108'"),
    ('listen = "localhost:http"', "metrics.listen",
     "the port must be a whole number 0..65535 (0: any free port), got 'http'"),
    ('listen = "localhost:70000"', "metrics.listen", "got '70000'"),
    ('listen = "local host:9108"', "metrics.listen", "a space in the host"),
    ('port = 9108', "metrics.port", "unknown option; expected: listen"),
    ('listn = "127.0.0.1:9108"', "metrics.listn", "unknown option (did you mean 'listen'?)"),
    ("", "metrics.listen", 'missing; expected "host:port"'),
])
def test_metrics_errors_name_the_key(table: str, key: str, message: str, tmp_path: Path,
                                     module: Callable[[str], str]) -> None:
    err = fail_text(tmp_path, f'[producer]\nfunction = "{module(HELPERS)}:produce"\n'
                              f"[metrics]\n{table}\n")
    assert err.key == key, str(err)
    assert message in err.message
    assert str(err).startswith(f"{tmp_path / 'conveyor.toml'}: {key}: ")


def test_metrics_must_be_a_table_and_given_once(tmp_path: Path,
                                                module: Callable[[str], str]) -> None:
    helpers = module(HELPERS)
    err = fail_text(tmp_path, f'metrics = "127.0.0.1:9108"\n[producer]\nfunction = "{helpers}:produce"\n')
    assert err.key == "metrics" and "expected a table ([metrics]), got string" in err.message
    err = fail_text(tmp_path, f'[conveyor]\nmetrics_port = 9100\n[producer]\nfunction = "{helpers}:produce"\n'
                              '[metrics]\nlisten = "127.0.0.1:9108"\n')
    assert err.key == "metrics.listen" and "also given as conveyor.metrics_port" in err.message


def test_metrics_without_prometheus_client_is_a_keyed_error(tmp_path: Path,
                                                            module: Callable[[str], str]) -> None:
    path = config(tmp_path, f'[producer]\nfunction = "{module(HELPERS)}:produce"\n'
                            '[metrics]\nlisten = "127.0.0.1:9108"\n')
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from aioconveyor._cli import main\n"
            f"sys.exit(main(['check', {str(path)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f'aioconveyor: error: {path}: metrics.listen: metrics_port needs prometheus-client: '
        'pip install "aioconveyor[metrics]"')


def test_check_shows_where_metrics_will_be_served(tmp_path: Path,
                                                  module: Callable[[str], str]) -> None:
    path = config(tmp_path, RUNNABLE.format(h=module(HELPERS))
                  + '[metrics]\nlisten = "127.0.0.1:9108"\n')
    result = run_cli(tmp_path, "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "  metrics: http://127.0.0.1:9108/metrics, /healthz and /readyz\n" in result.stdout
    broken = run_cli(tmp_path, "check", str(path), "--set", "metrics.listen=9108")
    assert broken.returncode == 2
    assert f"{path}: metrics.listen: expected \"host:port\"" in broken.stderr


def test_run_serves_metrics_from_the_metrics_table(
    tmp_path: Path, module: Callable[[str], str], runner_processes: list[Runner],
) -> None:
    text = RUNNABLE.format(h=module(HELPERS)).replace("max_ticks = 3", "")
    path = config(tmp_path, text + '[metrics]\nlisten = "127.0.0.1:9108"\n')
    runner = Runner(tmp_path, path, "--set", "metrics.listen=127.0.0.1:0")  # any free port
    runner_processes.append(runner)
    base = runner.base_url()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base) and not base.endswith(":9108")
    runner.wait_until(lambda: len((tmp_path / "lines.txt").read_text().splitlines()) >= 3
                      if (tmp_path / "lines.txt").exists() else False, "3 deliveries")
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        assert response.status == 200
        body = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families["aioconveyor_ticks"].samples[0].value >= 3
    assert families["aioconveyor_up"].samples[0].value == 1.0
    delivered = {s.labels["consumer"]: s.value
                 for s in families["aioconveyor_consumer_delivered"].samples}
    assert set(delivered) == {"csv:readings.csv", "pretty", "write_line"}
    assert delivered["write_line"] >= 3
    with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
        assert response.status == 200
    assert runner.stop() == 0, runner.stderr


def unique_key() -> str:
    return f"test-runner-{uuid.uuid4().hex[:8]}"


def test_console_script_is_installed() -> None:
    assert BIN.exists(), "pip install -e . should install the aioconveyor console script"


# -- the documented format -------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def documented_configs() -> list[str]:
    """TOML examples of the README and of the manual's config runner page (docs/config.md),
    except the ones marked ``<!-- test: ... -->`` (test_docs.py runs those themselves)."""
    blocks: list[str] = []
    for path in (ROOT / "README.md", ROOT / "docs" / "config.md"):
        if path.exists():
            blocks += [code for marker, code in re.findall(
                r"(<!-- test[^>]*-->\n)?```toml\n(.*?)\n```", path.read_text(), re.S)
                if not marker]
    return blocks


@pytest.mark.parametrize("text", documented_configs() or [
    pytest.param("", marks=pytest.mark.skip(reason="no TOML example in the README yet"))])
def test_documented_config_is_valid_and_is_the_example_file(text: str, tmp_path: Path) -> None:
    assert text in (ROOT / "examples" / "conveyor.toml").read_text(), (
        "the README's TOML example should be examples/conveyor.toml (which tests run)")
    sys.path.insert(0, str(ROOT / "examples"))  # home_poller.py
    loaded = load_text(tmp_path, text, env={"POSTGRES_DSN": "postgresql://u:pw@db/x"})
    assert loaded.conveyor.consumer_names == (
        "postgres:home_readings", "mqtt", "csv:readings-{date}.csv")
