"""``python -m aioconveyor``: the simulated inverter, the demo run, its flags and signals.

Demo runs are real subprocesses with short intervals; the PostgreSQL and MQTT runs use the
real test servers (each run in its own schema / device topic, so parallel runs never mix).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aioconveyor._cli import main
from aioconveyor._demo import FIELDS, Demo, DemoOptions, InverterSimulator, daylight

# -- helpers ---------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until true; fail (never hang) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


class Run:
    """One demo subprocess, its output in files (a full pipe can never block it)."""

    def __init__(self, tmp_path: Path, args: list[str]) -> None:
        self.out = tmp_path / f"stdout-{uuid.uuid4().hex[:6]}.txt"
        self.err = self.out.with_name(self.out.name.replace("stdout", "stderr"))
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "aioconveyor", *args],
                                            cwd=tmp_path, stdout=out, stderr=err)

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start demo subprocesses; every one is killed at teardown, whatever happened."""
    runs: list[Run] = []

    def start(*args: str) -> Run:
        run = Run(tmp_path, list(args))
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aioconveyor", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)


# -- the simulated inverter ------------------------------------------------------------


def test_daylight_is_zero_at_night_and_peaks_at_solar_noon() -> None:
    assert daylight(3.0) == daylight(6.0) == daylight(20.0) == daylight(23.5) == 0.0
    assert daylight(13.0) == pytest.approx(1.0)
    assert 0 < daylight(8.0) < daylight(11.0) < daylight(13.0)


def local_time(hour: int) -> datetime:
    """A tick at ``hour`` o'clock local time (the simulated sun uses local time)."""
    return datetime.now().astimezone().replace(hour=hour, minute=0, second=0, microsecond=0)


async def test_inverter_sleeps_at_night_and_produces_by_day() -> None:
    night = await InverterSimulator(seed=1)(local_time(2))
    day = await InverterSimulator(seed=1)(local_time(13))
    assert night["power_w"] == 0.0 and night["state"] == "sleeping"
    assert 1000 < day["power_w"] <= 5000 * 1.1 and day["state"] == "producing"
    for reading in (night, day):
        assert tuple(reading) == FIELDS
        assert 220 < reading["grid_voltage_v"] < 240
        assert 49.9 < reading["grid_frequency_hz"] < 50.1
        assert -10 < reading["temperature_c"] < 60


async def test_energy_accumulates_from_power_over_time() -> None:
    inverter = InverterSimulator(seed=2)
    start = local_time(12)
    readings = [await inverter(start + timedelta(minutes=10 * i)) for i in range(7)]
    energies = [r["energy_kwh"] for r in readings]
    assert energies[0] == 0.0
    assert energies == sorted(energies)
    # an hour at 2-5 kW around noon: a few kWh
    assert 1.0 < energies[-1] < 5.0
    assert inverter.latest == readings[-1]


async def test_speed_runs_the_simulated_day_faster() -> None:
    inverter = InverterSimulator(speed=720, seed=3)
    midnight = local_time(0)
    await inverter(midnight)
    # 60 real seconds at 720x are 12 simulated hours: midnight -> noon
    assert inverter.local_hour(midnight + timedelta(seconds=60)) == pytest.approx(12.0)
    noon = await inverter(midnight + timedelta(seconds=60))
    assert noon["state"] == "producing"


async def test_a_seed_makes_readings_repeatable() -> None:
    when = local_time(10)
    assert await InverterSimulator(seed=7)(when) == await InverterSimulator(seed=7)(when)


@pytest.mark.parametrize("kwargs", [{"peak_w": 0}, {"speed": -1.0}, {"speed": float("nan")}])
def test_inverter_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        InverterSimulator(**kwargs)


def test_status_panel_shows_ticks_lateness_and_every_consumer(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=100)
    demo = Demo(DemoOptions(csv=str(tmp_path / "x.csv"), count=3), console)
    console.print(demo.panel())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for word in ("ticks", "0 of 3", "next tick", "lateness", "p99", "delivered", "errors",
                 "dropped", "queued", "pretty", "csv"):
        assert word in text, word
    assert not (tmp_path / "x.csv").exists(), "building the demo must open nothing"


def test_status_panel_has_a_producer_table(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=140)
    demo = Demo(DemoOptions(csv=str(tmp_path / "x.csv"), count=3, interval=0.5, offset=0.1),
                console)
    console.print(demo.panel())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for word in ("producer", "schedule", "last tick", "next tick", "p99 ms", "state", "feeds",
                 "inverter", "every 0.5 s + 0.1 s", "waiting", "all"):
        assert word in text, word


def test_status_panel_lists_many_producers_briefly(tmp_path: Path) -> None:
    from aioconveyor._demo import PANEL_PRODUCERS

    console = Console(file=io.StringIO(), width=140)
    demo = Demo(DemoOptions(csv=str(tmp_path / "x.csv")), console)
    for i in range(PANEL_PRODUCERS + 3):
        demo.conveyor.add_producer(lambda t: None, name=f"dev{i}", every=10,
                                   consumers=["csv"])
    console.print(demo.panel())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "... 4 more" in text and "dev0" in text and "csv" in text


# -- flags -----------------------------------------------------------------------------


def test_help_documents_every_flag_and_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--interval", "--offset", "--count", "--csv", "--postgres", "--mqtt",
                 "--ha-discovery", "--quiet", "--log-level", "--speed", "--device", "--seed"):
        assert flag in text, flag
    assert "aioconveyor run CONFIG" in text and "aioconveyor check CONFIG" in text
    assert "exit codes" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import aioconveyor

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"aioconveyor {aioconveyor.__version__}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0"], "--interval: expected a number > 0"),
        (["--interval", "soon"], "--interval: expected a number of seconds"),
        (["--count", "0"], "--count: expected a number >= 1"),
        (["--offset", "-1"], "--offset: expected a number >= 0"),
        (["--interval", "1", "--offset", "1"], "--offset must be smaller than --interval"),
        (["--ha-discovery"], "--ha-discovery needs --mqtt"),
        (["--log-level", "loud"], "--log-level: expected one of DEBUG"),
        (["--device", "my inverter"], "--device: expected letters, digits"),
        (["--mqtt", "http://broker"], "url must look like mqtt://"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_flag_exits_2_from_the_command_line(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--count", "-3")
    assert result.returncode == 2
    assert "--count: expected a number >= 1" in result.stderr
    assert "usage: aioconveyor" in result.stderr


# -- real runs -------------------------------------------------------------------------


def test_demo_writes_one_csv_row_per_reading_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "readings.csv"
    result = run_demo(tmp_path, "--count", "3", "--interval", "0.2", "--csv", str(out))
    assert result.returncode == 0, result.stderr
    rows = csv_rows(out)
    assert len(rows) == 3
    assert list(rows[0]) == ["event_time", *FIELDS]
    times = [datetime.fromisoformat(r["event_time"]) for r in rows]
    assert all(round(t.timestamp() * 1000) % 200 == 0 for t in times), "ticks on the 0.2 s grid"
    assert times == sorted(set(times)), "one row per tick, in order"
    text = result.stdout
    assert f"CSV:        {out}" in text.splitlines()[1]  # the path, printed at start
    assert text.count("power_w") == 3  # one pretty-printed table per reading
    assert "summary: stopped (3 readings done)" in text
    assert "pretty: 3 delivered, 0 errors, 0 dropped" in text
    assert "csv: 3 delivered, 0 errors, 0 dropped" in text


def test_demo_without_csv_flag_prints_where_its_csv_file_is(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--count", "1", "--interval", "0.05", "--quiet")
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[1]
    assert line.startswith("  CSV:")
    path = Path(line.split(":", 1)[1].strip())
    try:
        assert path.name.startswith("aioconveyor-demo-") and path.suffix == ".csv"
        assert len(csv_rows(path)) == 1
    finally:
        path.unlink(missing_ok=True)


def test_quiet_prints_only_the_start_lines_and_the_summary(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--count", "2", "--interval", "0.05", "--quiet",
                      "--csv", str(tmp_path / "q.csv"))
    assert result.returncode == 0, result.stderr
    assert "power_w" not in result.stdout
    assert "summary: stopped (2 readings done)" in result.stdout
    assert len(result.stdout.splitlines()) == 2 + 2 + 1  # start, summary (csv only), CSV line


def test_offset_shifts_the_grid(tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    result = run_demo(tmp_path, "--count", "2", "--interval", "0.2", "--offset", "0.05",
                      "--quiet", "--csv", str(out))
    assert result.returncode == 0, result.stderr
    for row in csv_rows(out):
        ms = round(datetime.fromisoformat(row["event_time"]).timestamp() * 1000)
        assert ms % 200 == 50


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_demo_cleanly_with_a_summary(
    sig: signal.Signals, tmp_path: Path, demo: Callable[..., Run]
) -> None:
    out = tmp_path / "live.csv"
    run = demo("--interval", "0.05", "--quiet", "--csv", str(out))
    wait_for(lambda: len(csv_rows(out)) >= 2, "the running demo to write two rows")
    run.process.send_signal(sig)
    assert run.wait(30) == 0, run.stderr
    text = run.stdout
    assert f"summary: stopped ({sig.name})" in text
    delivered = int(text.split("csv: ", 1)[1].split(" delivered")[0])
    assert delivered == len(csv_rows(out)) >= 2  # drained: every reading made it to the file
    assert "0 dropped" in text.split("csv: ", 1)[1]


def test_a_consumer_that_cannot_open_fails_the_demo_with_exit_1(tmp_path: Path) -> None:
    (tmp_path / "taken.csv").write_text("not,a,demo,file\n")
    result = run_demo(tmp_path, "--count", "1", "--interval", "0.05", "--quiet",
                      "--csv", str(tmp_path / "taken.csv"))
    assert result.returncode == 1
    assert "error:" in result.stdout and "taken.csv" in result.stdout


# -- with the real servers -------------------------------------------------------------


async def _pg(dsn: str, *queries: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [await conn.fetch(q) for q in queries]
    finally:
        await conn.close()


def test_demo_writes_its_readings_to_postgresql(tmp_path: Path, postgres_dsn: str) -> None:
    schema = f"demo_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg(postgres_dsn, f'CREATE SCHEMA "{schema}"'))
    try:
        sep = "&" if "?" in postgres_dsn else "?"
        dsn = f"{postgres_dsn}{sep}search_path={schema}"  # asyncpg: extra params are settings
        out = tmp_path / "pg.csv"
        result = run_demo(tmp_path, "--count", "3", "--interval", "0.2", "--quiet",
                          "--csv", str(out), "--postgres", dsn)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "postgres: 3 delivered, 0 errors" in result.stdout
        [rows] = asyncio.run(_pg(postgres_dsn, f'SELECT event_time, payload FROM "{schema}".'
                                               "aioconveyor_demo ORDER BY event_time"))
        assert len(rows) == 3
        assert [r["event_time"] for r in rows] == [
            datetime.fromisoformat(r["event_time"]) for r in csv_rows(out)]
        for row in rows:
            payload = json.loads(row["payload"])
            assert set(payload) == set(FIELDS) and payload["device"] == "demo-inverter"
    finally:
        asyncio.run(_pg(postgres_dsn, f'DROP SCHEMA "{schema}" CASCADE'))


def test_an_unreachable_database_neither_stops_the_demo_nor_shows_the_password(
    tmp_path: Path,
) -> None:
    # nothing listens on port 9: PostgreSQL keeps retrying (logged once), the CSV gets every
    # reading, the demo ends normally after --count, and the password is never shown
    out = tmp_path / "x.csv"
    result = run_demo(tmp_path, "--count", "4", "--interval", "0.1", "--quiet",
                      "--csv", str(out),
                      "--postgres", "postgresql://demo:S3cretPassw0rd@127.0.0.1:9/db")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(csv_rows(out)) == 4
    assert "csv: 4 delivered" in result.stdout
    assert "postgres: 0 delivered" in result.stdout and "open() failed" in result.stdout
    assert result.stderr.count("consumer postgres: open() failed") == 1, result.stderr
    assert "S3cretPassw0rd" not in result.stdout + result.stderr
    assert "postgresql://demo:***@127.0.0.1:9/db" in result.stdout


async def test_demo_publishes_readings_and_home_assistant_discovery_to_mqtt(
    tmp_path: Path, mqtt_url: str
) -> None:
    import aiomqtt

    from aioconveyor.consumers.mqtt import MqttConsumer

    device = f"test-{uuid.uuid4().hex[:8]}"
    node = f"aioconveyor_{device}"
    state_topic = f"aioconveyor/_demo/{device}/state"
    broker = MqttConsumer(mqtt_url)  # only to parse the URL the same way
    states: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    availability: list[str] = []
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(state_topic, qos=1)
        await client.subscribe(f"homeassistant/sensor/{node}/+/config", qos=1)
        await client.subscribe(f"aioconveyor/_demo/{device}/availability", qos=1)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aioconveyor", "--count", "3", "--interval", "0.2", "--quiet",
            "--csv", str(tmp_path / "m.csv"), "--mqtt", mqtt_url, "--ha-discovery",
            "--device", device, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(30):
                async for message in client.messages:
                    topic, payload = str(message.topic), bytes(message.payload)  # type: ignore[arg-type]
                    if topic == state_topic:
                        states.append(json.loads(payload))
                    elif topic.endswith("/config") and payload:
                        configs[topic] = json.loads(payload)
                    elif topic.endswith("/availability"):
                        availability.append(payload.decode())
                    if len(states) == 3 and availability[-1:] == ["offline"]:
                        break
                stdout, stderr = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            for topic in [*configs, f"aioconveyor/_demo/{device}/availability"]:
                await client.publish(topic, b"", qos=1, retain=True)  # clear retained messages
    assert process.returncode == 0, stderr.decode()
    assert "mqtt: 3 delivered, 0 errors" in stdout.decode()
    assert [tuple(s) for s in states] == [(*FIELDS, "event_time")] * 3
    assert {s["device"] for s in states} == {device}
    assert len(configs) == 6
    power = configs[f"homeassistant/sensor/{node}/power_w/config"]
    assert power["state_topic"] == state_topic
    assert power["unit_of_measurement"] == "W" and power["device_class"] == "power"
    assert power["device"]["identifiers"] == [node]
    assert availability[0] == "online" and availability[-1] == "offline"


def test_without_server_flags_the_demo_needs_no_server() -> None:
    """The quick start promises that a bare machine is enough."""
    demo = Demo(DemoOptions(csv=os.devnull), Console(file=io.StringIO()))
    assert [what for what, _ in demo.destinations] == ["CSV"]
    assert demo.conveyor.consumer_names == ("pretty", "csv")
