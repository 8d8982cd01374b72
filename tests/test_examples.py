"""Every example in examples/ runs, briefly, against the real servers where it uses them.

Each run gets its own PostgreSQL schema, MQTT topics and Home Assistant discovery prefix
(so parallel runs never mix), and the retained messages it left are cleared afterwards.
"""

from __future__ import annotations

import asyncio
import configparser
import csv
import json
import os
import shlex
import subprocess
import sys
import threading
import tomllib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aioconveyor._process import EXIT_CONFIG
from support.services import host_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent / "aioconveyor"

Messages = dict[str, list[bytes]]


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def endpoint() -> Iterator[str]:
    """A local JSON endpoint like a room sensor's: every GET is a new reading."""
    served = iter(range(1_000_000))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/status.json":
                self.send_error(404)
                return
            n = next(served)
            body = json.dumps({"temperature_c": 20 + n / 10, "humidity_pct": 40 + n,
                               "n": n}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/status.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def _sql(dsn: str, *queries: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [await conn.fetch(q) for q in queries]
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema(postgres_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """A fresh schema; yields (schema, a DSN whose search_path is that schema)."""
    schema = f"examples_{uuid.uuid4().hex[:10]}"
    await _sql(postgres_dsn, f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in postgres_dsn else "?"
    try:
        yield schema, f"{postgres_dsn}{sep}search_path={schema}"
    finally:
        await _sql(postgres_dsn, f'DROP SCHEMA "{schema}" CASCADE')


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def run_and_listen(
    command: list[str], *, mqtt_url: str, topics: list[str], done: Callable[[Messages], bool],
    cwd: Path, env: dict[str, str] | None = None, timeout: float = 30.0,
) -> tuple[int, str, str, Messages]:
    """Subscribe to ``topics``, run ``command`` to its end and collect messages until
    ``done(messages)``; the process is killed and retained topics are cleared afterwards."""
    import aiomqtt

    host, port = host_port(mqtt_url, 1883)
    messages: Messages = defaultdict(list)
    async with aiomqtt.Client(host, port) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                messages[str(message.topic)].append(bytes(message.payload))  # type: ignore[arg-type]
                if done(messages):
                    return

        collector = asyncio.create_task(collect())
        process = await asyncio.create_subprocess_exec(
            *command, cwd=cwd, env={**os.environ, **(env or {})},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await process.communicate()
                assert process.returncode == 0, stdout.decode() + stderr.decode()
                await collector
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            collector.cancel()
            for topic in list(messages):  # leave no retained config or availability behind
                await client.publish(topic, b"", qos=1, retain=True)
    return process.returncode, stdout.decode(), stderr.decode(), messages


def states(messages: Messages, topic: str) -> list[dict[str, Any]]:
    return [json.loads(p) for p in messages.get(topic, []) if p]


# -- home_poller.py --------------------------------------------------------------------


async def test_home_poller_writes_endpoint_readings_to_postgres_and_mqtt(
    tmp_path: Path, endpoint: str, pg_schema: tuple[str, str], mqtt_url: str
) -> None:
    schema, dsn = pg_schema
    topic = f"{unique('test')}/poller/state"
    env = {"POLL_URL": endpoint, "POLL_INTERVAL": "0.1", "POLL_COUNT": "3",
           "POSTGRES_DSN": dsn, "MQTT_URL": mqtt_url, "MQTT_TOPIC": topic}
    code, stdout, _, messages = await run_and_listen(
        [sys.executable, str(EXAMPLES / "home_poller.py")], env=env, cwd=tmp_path,
        mqtt_url=mqtt_url, topics=[topic], done=lambda m: len(m[topic]) >= 3,
    )
    assert code == 0
    assert f"polling {endpoint} every 0.1 s" in stdout
    assert "3 readings, 0 failed to read" in stdout
    published = states(messages, topic)
    assert [m["n"] for m in published] == [0, 1, 2]
    [rows] = await _sql(dsn, f'SELECT event_time, payload FROM "{schema}".home_readings '
                             "ORDER BY event_time")
    assert [json.loads(r["payload"])["n"] for r in rows] == [0, 1, 2]
    assert [r["event_time"] for r in rows] == [
        datetime.fromisoformat(m["event_time"]) for m in published]


def test_home_poller_reads_this_machine_with_no_servers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "home_poller.py"), "--count", "2", "--interval", "0.05"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items()
             if k not in ("POLL_URL", "POSTGRES_DSN", "MQTT_URL")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("load_1m") == 2 and "disk_used_pct" in result.stdout
    assert "2 readings, 0 failed to read" in result.stdout


# -- custom_consumers.py ---------------------------------------------------------------


def test_custom_consumers_sync_async_and_class(tmp_path: Path) -> None:
    out = tmp_path / "meter.jsonl"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "custom_consumers.py"), "--count", "3",
         "--interval", "0.05", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"[class] opened {out}"
    assert sum(line.startswith("[sync]  tick ") for line in lines) == 3
    assert sum(line.startswith("[async] posted ") for line in lines) == 3
    assert f"[class] closed {out} after 3 lines" in lines
    assert lines[-3:] == ["print_line: 3 delivered, 0 errors",
                          "post_reading: 3 delivered, 0 errors",
                          "jsonl:meter.jsonl: 3 delivered, 0 errors"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(set(r) == {"event_time", "power_w", "voltage_v"} for r in rows)
    times = [r["event_time"] for r in rows]
    assert times == sorted(set(times))


# -- home_assistant.py -----------------------------------------------------------------


async def test_home_assistant_example_announces_its_sensors(tmp_path: Path,
                                                            mqtt_url: str) -> None:
    node, prefix = unique("node"), unique("ha")
    state, availability = f"aioconveyor/{node}/state", f"aioconveyor/{node}/availability"
    code, stdout, _, messages = await run_and_listen(
        [sys.executable, str(EXAMPLES / "home_assistant.py"), "--mqtt", mqtt_url,
         "--node-id", node, "--prefix", prefix, "--count", "3", "--interval", "0.1"],
        cwd=tmp_path, mqtt_url=mqtt_url,
        topics=[f"{prefix}/sensor/{node}/+/config", state, availability],
        done=lambda m: len(m[state]) >= 3 and m[availability][-1:] == [b"offline"],
    )
    assert code == 0 and "3 readings published, 0 errors" in stdout
    configs = {t.split("/")[-2]: json.loads(p[0]) for t, p in messages.items()
               if t.endswith("/config")}
    assert set(configs) == {"load_1m", "memory_used_pct", "disk_used_pct", "cpu_temperature_c"}
    temperature = configs["cpu_temperature_c"]
    assert temperature["state_topic"] == state
    assert temperature["availability_topic"] == availability
    assert temperature["unit_of_measurement"] == "°C"
    assert temperature["value_template"] == "{{ value_json.cpu_temperature_c }}"
    assert temperature["device"]["identifiers"] == [node]
    assert all(set(configs) <= set(s) for s in states(messages, state))
    assert messages[availability][0] == b"online"


# -- conveyor.toml and the systemd unit ------------------------------------------------


def example_config() -> dict[str, Any]:
    return tomllib.loads((EXAMPLES / "conveyor.toml").read_text())


async def test_example_config_runs_against_the_real_servers(
    tmp_path: Path, endpoint: str, pg_schema: tuple[str, str], mqtt_url: str
) -> None:
    schema, dsn = pg_schema
    node, prefix = unique("poller"), unique("ha")
    topic = f"{node}/state"
    overrides = ["conveyor.interval=0.1", "conveyor.jitter=0", "conveyor.max_ticks=3",
                 f"consumers[1].topic={topic}", f"consumers[1].discovery.node_id={node}",
                 f"consumers[1].discovery.prefix={prefix}"]
    env = {"POLL_URL": endpoint, "POSTGRES_DSN": dsn, "MQTT_URL": mqtt_url,
           "STATE_DIRECTORY": str(tmp_path)}
    code, stdout, stderr, messages = await run_and_listen(
        [str(BIN), "run", str(EXAMPLES / "conveyor.toml"),
         *(arg for o in overrides for arg in ("--set", o))],
        env=env, cwd=tmp_path, mqtt_url=mqtt_url,
        topics=[topic, f"{prefix}/sensor/{node}/+/config", f"{node}/availability"],
        done=lambda m: len(m[topic]) >= 3 and m[f"{node}/availability"][-1:] == [b"offline"],
    )
    assert code == 0, stderr
    assert "summary: stopped (max_ticks 3 reached)" in stdout
    for name in ("postgres:home_readings", "mqtt", "csv:readings-{date}.csv"):
        assert f"{name}: 3 delivered, 0 errors, 0 dropped" in stdout
    assert [m["n"] for m in states(messages, topic)] == [0, 1, 2]
    assert sorted(t.split("/")[-2] for t in messages if t.endswith("/config")) == [
        "humidity_pct", "temperature_c"]
    [rows] = await _sql(dsn, f'SELECT payload FROM "{schema}".home_readings ORDER BY event_time')
    assert [json.loads(r["payload"])["n"] for r in rows] == [0, 1, 2]
    assert [r["n"] for r in daily_csv_rows(tmp_path)] == ["0", "1", "2"]


def daily_csv_rows(folder: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(folder.glob("readings-*.csv")):  # one file per UTC day
        with path.open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def test_example_config_checks_and_names_a_missing_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_DSN"}
    missing = subprocess.run([str(BIN), "check", str(EXAMPLES / "conveyor.toml")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                             check=False)
    assert missing.returncode == EXIT_CONFIG
    assert "conveyor.toml: consumers[0].dsn: environment variable POSTGRES_DSN is not set" in (
        missing.stderr)
    env["POSTGRES_DSN"] = "postgresql://home:N0tTh1sOne@db.local/home"
    ok = subprocess.run([str(BIN), "check", str(EXAMPLES / "conveyor.toml")], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "N0tTh1sOne" not in ok.stdout + ok.stderr
    assert "postgresql://home:***@db.local/home" in ok.stdout


def test_systemd_unit_runs_the_config_and_stops_it_gracefully(tmp_path: Path) -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(EXAMPLES / "aioconveyor.service")
    service = unit["Service"]
    start = shlex.split(service["ExecStart"])
    pre = shlex.split(service["ExecStartPre"])
    assert Path(start[0]).name == "aioconveyor" and start[1] == "run"
    assert pre[:1] == start[:1] and pre[1] == "check" and pre[2] == start[2]
    assert start[2].endswith("conveyor.toml")
    help_text = subprocess.run([str(BIN), "run", "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    for flag in (a for a in start[3:] if a.startswith("--")):
        assert flag in help_text, f"ExecStart uses an unknown flag {flag}"
    assert service["KillSignal"] == "SIGTERM"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the runner reloads on SIGHUP
    assert "SIGHUP" in help_text
    # systemd must wait longer than the conveyor's own drain (plus the runner's margin)
    stop_timeout = example_config()["conveyor"]["stop_timeout"]
    assert int(service["TimeoutStopSec"]) > stop_timeout + 2
    assert service["RestartPreventExitStatus"] == str(EXIT_CONFIG)
    assert service["Restart"] == "on-failure"
    assert "STATE_DIRECTORY" in example_config()["consumers"][2]["path"]
    assert service["StateDirectory"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_examples_readme_lists_every_example() -> None:
    listed = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.iterdir():
        if path.name != "README.md" and not path.name.startswith((".", "__")):
            assert f"`{path.name}`" in listed, path.name
