"""``[[producers]]`` in a config file (issue 14): several producers, each on its own schedule,
routed to consumers by name; ``aioconveyor check`` shows the routing; a real run against
PostgreSQL and Mosquitto writes each producer's rows once, over one MQTT connection."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import aiomqtt
import asyncpg
import pytest

from aioconveyor import IntervalSchedule
from aioconveyor._config import ConfigError, load_config
from support.mosquitto import Mosquitto, require_mosquitto
from support.services import host_port

BIN = Path(sys.executable).parent / "aioconveyor"

DEVICES = """
    counts = {}

    def read(event_time, *, name, base=0):
        '''Gets its producer's name (the table's name =, passed on because it asks for it).'''
        n = counts[name] = counts.get(name, 0) + 1
        return {"n": n, "value": base + n}

    def plain(event_time):
        return {"v": 1}
"""


@pytest.fixture(autouse=True)
def restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_config puts the config's folder on sys.path; keep that within each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def devices(tmp_path: Path) -> str:
    """The module above, next to the config, under a unique name."""
    name = f"devices_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(DEVICES))
    return name


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conveyor.toml"
    path.write_text(textwrap.dedent(text))
    return path


def three(m: str) -> str:
    return f"""
        [conveyor]
        name = "home"

        [[producers]]
        name = "inverter"
        function = "{m}:read"
        every = 10
        offset = 2
        base = 1000
        consumers = ["db", "csv"]

        [[producers]]
        name = "meter"
        function = "{m}:read"
        every = 30

        [[producers]]
        name = "weather"
        function = "{m}:read"
        cron = "*/5 * * * *"
        cron_tz = "Europe/Berlin"
        consumers = ["csv"]
        timeout = 20

        [[consumers]]
        type = "csv"
        name = "db"
        path = "db.csv"

        [[consumers]]
        type = "csv"
        name = "csv"
        path = "out-{{producer}}.csv"

        [[consumers]]
        type = "pretty"
    """


# -- loading -----------------------------------------------------------------------------


def test_producers_tables_build_one_conveyor_routed_by_name(tmp_path: Path,
                                                            devices: str) -> None:
    loaded = load_config(config(tmp_path, three(devices)))
    conv = loaded.conveyor
    assert conv.producer_names == ("inverter", "meter", "weather")
    assert conv.consumer_names == ("db", "csv", "pretty")
    specs = loaded.producer_specs
    assert specs["inverter"].resolved_schedule() == IntervalSchedule(10, 2)
    assert specs["inverter"].consumers == ("db", "csv")
    assert specs["meter"].consumers is None  # all of them
    assert specs["weather"].cron == "*/5 * * * *" and str(specs["weather"].cron_tz) == (
        "Europe/Berlin")
    assert specs["weather"].timeout == 20
    # the function's own keywords are bound; name is passed on because read() takes it
    assert specs["inverter"].fn.keywords == {"name": "inverter", "base": 1000}  # type: ignore[attr-defined]
    assert list(loaded.tables.producers) == ["inverter", "meter", "weather"]
    assert loaded.tables.sections["producer"] is None
    assert loaded.describe() == [
        "conveyor 'home': 3 producers",
        f"producer inverter: every 10 s at +2 s: {devices}:read (base, name) -> db, csv",
        f"producer meter: every 30 s: {devices}:read (name) -> all consumers",
        f"producer weather: cron '*/5 * * * *' (Europe/Berlin): {devices}:read (name) -> csv",
        *[f"consumer {line}" for line in loaded.consumers],
    ]


def test_a_consumer_that_no_producer_feeds_is_pointed_out(tmp_path: Path,
                                                          devices: str) -> None:
    loaded = load_config(config(tmp_path, f"""
        [[producers]]
        function = "{devices}:plain"
        every = 1
        consumers = ["a"]
        [[consumers]]
        type = "pretty"
        name = "a"
        [[consumers]]
        type = "pretty"
        name = "b"
    """))
    assert loaded.conveyor.producer_names == ("plain",)  # named after its function
    assert loaded.describe()[-1] == "fed by no producer: b"


PRODUCER = '[[producers]]\nname = "p"\nfunction = "{m}:plain"\nevery = 1\n'
CONSUMERS = '[[consumers]]\ntype = "pretty"\nname = "screen"\n'


@pytest.mark.parametrize(("body", "key", "message"), [
    ('[producer]\nfunction = "{m}:plain"\n' + PRODUCER, "producers",
     "both a [producer] table and [[producers]] tables; keep one form"),
    (PRODUCER + 'consumers = ["scren"]\n' + CONSUMERS, "producers[0].consumers[0]",
     "no consumer named 'scren' (did you mean 'screen'?); the file's consumers: screen"),
    (PRODUCER + PRODUCER, "producers[1].name",
     "producer name 'p' (its name =) is taken by producers[0]"),
    ('[[producers]]\nfunction = "{m}:plain"\n[[producers]]\nfunction = "{m}:plain"\n',
     "producers[1].name", "producer name 'plain' (its function's name) is taken by producers[0]"),
    ("[conveyor]\ninterval = 5\n" + PRODUCER, "conveyor.interval",
     "with [[producers]] each producer has its own: write every = ... in its [[producers]]"),
    ("[conveyor]\nproducer_timeout = 5\n" + PRODUCER, "conveyor.producer_timeout",
     "write timeout = ... in its [[producers]] table"),
    ('[producers]\nfunction = "{m}:plain"\n', "producers",
     "expected [[producers]] tables (an array of tables, double brackets), got table"),
    ("producers = []\n", "producers", "an empty array"),
    ("[[producers]]\nevery = 1\n", "producers[0].function", "missing"),
    ('[[producers]]\nfunction = "{m}:plian"\n', "producers[0].function",
     "has no attribute 'plian' (did you mean 'plain'?)"),
    (PRODUCER + "evry = 2\n", "producers[0].evry", "plain() has no argument 'evry'"),
    (PRODUCER.replace("every = 1", "every = -1"), "producers[0].every", "> 0"),
    (PRODUCER + "offset = 3\n", "producers[0].offset", "must be in [0, "),
    (PRODUCER + "jitter = 2\n", "producers[0].jitter", "smaller than the tick period (1 s)"),
    (PRODUCER + 'misfire = "later"\n', "producers[0].misfire", "must be one of"),
    (PRODUCER + 'cron = "* * * * *"\n', "producers[0].cron", "cannot be combined with every"),
    ('[[producers]]\nfunction = "{m}:plain"\ncron = "* * * * *"\ncron_tz = "Mars/Olympus"\n',
     "producers[0].cron_tz", "unknown time zone 'Mars/Olympus'"),
    (PRODUCER + 'consumers = "screen"\n' + CONSUMERS, "producers[0].consumers",
     "must be a list of consumer names"),
    (PRODUCER + 'schedule = "x"\n', "producers[0].schedule", "a Schedule is a Python object"),
    ("[producerz]\n", "producerz", "unknown section (did you mean 'producer"),
])
def test_producer_errors_name_the_key(body: str, key: str, message: str, tmp_path: Path,
                                      devices: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, body.format(m=devices)))
    assert info.value.key == key, str(info.value)
    assert message in info.value.message, str(info.value)
    assert str(info.value).startswith(str(tmp_path / "conveyor.toml"))


def test_overrides_reach_producers_tables(tmp_path: Path, devices: str) -> None:
    loaded = load_config(config(tmp_path, three(devices)),
                         overrides=["producers[1].every=0.5", "producers[0].base=7"])
    assert loaded.producer_specs["meter"].every == 0.5
    assert loaded.producer_specs["inverter"].fn.keywords["base"] == 7  # type: ignore[attr-defined]


# -- the command line ----------------------------------------------------------------------


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)


def test_check_shows_which_producer_feeds_which_consumers(tmp_path: Path,
                                                          devices: str) -> None:
    path = config(tmp_path, three(devices))
    result = cli(tmp_path, "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:5] == [
        "  conveyor 'home': 3 producers",
        f"  producer inverter: every 10 s at +2 s: {devices}:read (base, name) -> db, csv",
        f"  producer meter: every 30 s: {devices}:read (name) -> all consumers",
        f"  producer weather: cron '*/5 * * * *' (Europe/Berlin): {devices}:read (name) -> csv",
    ]


@pytest.mark.parametrize("command", ["run", "check"])
def test_several_files_are_refused_with_a_pointer_to_producers_tables(
        command: str, tmp_path: Path, devices: str) -> None:
    a = config(tmp_path, three(devices))
    result = cli(tmp_path, command, str(a), "b.toml")
    assert result.returncode == 2
    assert "one CONFIG file per conveyor, got 2" in result.stderr
    assert "[[producers]] tables" in result.stderr
    assert not (tmp_path / "db.csv").exists()


def test_run_ticks_each_producer_on_its_own_grid_into_its_consumers(
        tmp_path: Path, devices: str) -> None:
    path = config(tmp_path, three(devices).replace("every = 10", "every = 0.1").replace(
        "offset = 2", "offset = 0.05\nmax_ticks = 4").replace(
        "every = 30", "every = 0.2\nmax_ticks = 3").replace(
        'cron = "*/5 * * * *"\n        cron_tz = "Europe/Berlin"', "every = 0.1\nmax_ticks = 2"))
    result = cli(tmp_path, "run", str(path))
    assert result.returncode == 0, result.stderr
    assert "every producer reached its max_ticks" in result.stderr
    assert "9 ticks" in result.stdout
    assert "  producer inverter: 4 ticks, 4 produced, 0 empty, 0 errors, 0 missed" in (
        result.stdout)
    assert "  producer weather: 2 ticks, 2 produced" in result.stdout

    def rows(name: str) -> list[dict[str, str]]:
        with (tmp_path / name).open(newline="") as fh:
            return list(csv.DictReader(fh))

    # db: the inverter and the meter (the meter feeds all); csv: one file per producer
    assert sorted(r["n"] for r in rows("db.csv")) == ["1", "1", "2", "2", "3", "3", "4"]
    assert [r["value"] for r in rows("out-inverter.csv")] == ["1001", "1002", "1003", "1004"]
    assert [r["n"] for r in rows("out-meter.csv")] == ["1", "2", "3"]
    assert [r["n"] for r in rows("out-weather.csv")] == ["1", "2"]
    inverter = [r["event_time"] for r in rows("out-inverter.csv")]
    assert all(datetime.fromisoformat(t).microsecond % 100_000 == 50_000
               for t in inverter), inverter  # on its own grid: every 0.1 s at +0.05 s


# -- three producers, shared consumers, real PostgreSQL and Mosquitto ----------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto (its log counts the connections)."""
    require_mosquitto()
    with Mosquitto(tmp_path) as mosquitto:
        yield mosquitto


async def retained(url: str, topic_filter: str) -> dict[str, bytes]:
    """The retained messages under ``topic_filter`` (our own sentinel ends the wait)."""
    host, port = host_port(url, 1883)
    sentinel = f"sentinel/{uuid.uuid4().hex}"
    found: dict[str, bytes] = {}
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(topic_filter, qos=1)
        await client.subscribe(sentinel, qos=1)
        await client.publish(sentinel, b"done", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                if str(message.topic) == sentinel:
                    return found
                if message.retain:
                    found[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError("unreachable")


def home(m: str, table: str) -> str:
    """Three devices into one PostgreSQL table, Home Assistant and a CSV file each."""
    sensor = '{ key = "value", name = "Value" }'
    return f"""
        [conveyor]
        name = "home"
        stop_timeout = 20

        [[producers]]
        name = "inverter"
        function = "{m}:read"
        every = 0.1
        max_ticks = 6
        base = 1000

        [[producers]]
        name = "meter"
        function = "{m}:read"
        every = 0.2
        offset = 0.1
        max_ticks = 4
        consumers = ["db", "ha"]

        [[producers]]
        name = "weather"
        function = "{m}:read"
        every = 0.15
        max_ticks = 5

        [[consumers]]
        type = "postgres"
        name = "db"
        dsn = "${{POSTGRES_DSN}}"
        table = "{table}"
        create_table = true
        per_producer = true
        batch_age = 0.1

        [[consumers]]
        type = "mqtt"
        name = "ha"
        url = "${{MQTT_URL}}"
        topic = "home/{{producer}}/state"

        [consumers.discovery.inverter]
        node_id = "inverter_1"
        device_name = "Inverter"
        prefix = "home/ha"
        sensors = [{sensor}]

        [consumers.discovery.meter]
        node_id = "meter_1"
        device_name = "Meter"
        prefix = "home/ha"
        sensors = [{sensor}]

        [consumers.discovery.weather]
        node_id = "weather_1"
        device_name = "Weather"
        prefix = "home/ha"
        sensors = [{sensor}]

        [[consumers]]
        type = "csv"
        name = "files"
        path = "{{producer}}.csv"
    """


def test_three_producers_into_postgres_mqtt_and_csv_exactly_once(
        tmp_path: Path, devices: str, postgres_dsn: str, broker: Mosquitto) -> None:
    table = f"aioc_cfg_{uuid.uuid4().hex[:12]}"
    path = config(tmp_path, home(devices, table))
    env = {**os.environ, "POSTGRES_DSN": postgres_dsn, "MQTT_URL": broker.url}
    try:
        result = subprocess.run([str(BIN), "run", str(path)], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=90, check=False)
        assert result.returncode == 0, result.stderr
        connections = broker.log.read_text().count("New client connected")
        db_rows = asyncio.run(fetch(postgres_dsn, table))
        kept = asyncio.run(retained(broker.url, "home/#"))
    finally:
        asyncio.run(drop(postgres_dsn, table))
    assert "15 ticks" in result.stdout, result.stdout

    # PostgreSQL: keyed (producer, event_time), each producer's rows once: the inverter's
    # and the weather's are exactly those of their CSV files; the meter feeds no CSV
    produced = {}
    for name in ("inverter", "weather"):
        with (tmp_path / f"{name}.csv").open(newline="") as fh:
            produced[name] = [(r["event_time"], int(r["n"])) for r in csv.DictReader(fh)]
    assert not (tmp_path / "meter.csv").exists()
    by_producer: dict[str, list[tuple[str, int]]] = {}
    for producer, when, payload in db_rows:
        by_producer.setdefault(producer, []).append((when, json.loads(payload)["n"]))
    assert sorted(by_producer) == ["inverter", "meter", "weather"]
    for name in ("inverter", "weather"):
        assert by_producer[name] == produced[name], name
    assert [n for _, n in by_producer["inverter"]] == [1, 2, 3, 4, 5, 6]
    assert [n for _, n in by_producer["weather"]] == [1, 2, 3, 4, 5]
    assert [n for _, n in by_producer["meter"]] == [1, 2, 3, 4]
    assert "db: 15 delivered, 0 errors, 0 dropped, 0 failed, 0 queued" in result.stdout

    # MQTT: one connection for the three devices, each announced with its own availability
    assert connections == 1, broker.log.read_text()
    bridge = "home/availability"
    assert kept[bridge] == b"offline"  # clean close (also the Last Will)
    for device, node in (("inverter", "inverter_1"), ("meter", "meter_1"),
                         ("weather", "weather_1")):
        own = f"home/{device}/availability"
        assert kept[own] == b"offline", sorted(kept)
        announced = json.loads(kept[f"home/ha/sensor/{node}/value/config"])
        assert announced["state_topic"] == f"home/{device}/state"
        assert announced["device"]["identifiers"] == [node]
        assert announced["availability_mode"] == "all"
        assert [a["topic"] for a in announced["availability"]] == [bridge, own]
    assert "ha: 15 delivered, 0 errors" in result.stdout


async def fetch(dsn: str, table: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f'SELECT producer, event_time, payload FROM "{table}" '
                                "ORDER BY producer, event_time")
    finally:
        await conn.close()
    return [(r["producer"], r["event_time"].isoformat(), r["payload"]) for r in rows]


async def drop(dsn: str, table: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
    finally:
        await conn.close()
