"""Secrets never leak, and MQTT works over TLS with a login.

* Conveyors get a PostgreSQL DSN and an MQTT URL that hold a password, then live through
  real failures (a cut TCP proxy, a stopped broker, a refused login, a closed port); every
  log record at DEBUG (ours, asyncpg's, aiomqtt's and paho's), every repr, stats, health,
  /metrics, every exception and the demo's output are searched for the password.
* A private Mosquitto with a TLS listener (certificates made by trustme for this test) and
  a password file: a real conveyor publishes over mqtts://, a TLS subscriber receives every
  message; a wrong password and an untrusted certificate fail the start, clearly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import logging
import shutil
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest

from aioconveyor import AioConveyor, Consumer, PostgresLeader, StartupError
from aioconveyor.consumers import MqttConsumer, PostgresConsumer
from aioconveyor.testing import wait_until
from support.leaks import exception_texts, log_texts
from support.mosquitto import Mosquitto, require_mosquitto
from support.proxy import TcpProxy
from support.services import free_port, host_port
from support.tls import TlsFiles, make_tls

MARKER = "Kx7q"
"""In every piece of the password: finding it anywhere means (part of) a password leaked."""
SECRET = f"{MARKER}/{MARKER}:{MARKER}@{MARKER}#{MARKER}%{MARKER}"
"""The password: every character a URL parser could split on sits between two markers."""
WRONG = f"wrong-{MARKER}"
QUOTED = urllib.parse.quote(SECRET, safe="")
USER = "alice"

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


# -- helpers ---------------------------------------------------------------------------


def pg_dsn(dsn: str, port: int, password: str = QUOTED, **params: str) -> str:
    """``dsn`` with ``password`` (the test server trusts any) pointed at 127.0.0.1:port."""
    parts = urllib.parse.urlsplit(dsn)
    query = "&".join(filter(None, [parts.query, urllib.parse.urlencode(params)]))
    netloc = f"{parts.username or 'postgres'}:{password}@127.0.0.1:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def mqtt_url(port: int, password: str = QUOTED, scheme: str = "mqtt") -> str:
    return f"{scheme}://{USER}:{password}@127.0.0.1:{port}"


def assert_no_secret(texts: list[str]) -> None:
    leaks = [t for t in texts if MARKER in t or QUOTED in t]
    assert not leaks, "the password leaked:\n" + "\n---\n".join(leaks[:5])


def conveyor_texts(conv: AioConveyor) -> list[str]:
    """Everything a conveyor shows about itself."""
    texts = [repr(conv), str(conv.stats()), repr(conv.stats()), str(conv.health()),
             *exception_texts(conv.exception)]
    if conv.metrics_address is not None:
        host, port = conv.metrics_address
        for path in ("/metrics", "/healthz"):
            with contextlib.suppress(OSError):  # /healthz answers 503 while unhealthy
                with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
                    texts.append(r.read().decode())
    return texts


async def produce(event_time: datetime) -> dict[str, Any]:
    return {"power_w": 1234.5, "at": event_time.isoformat()}


def write_password_file(folder: Path, password: str = SECRET) -> Path:
    passwords = folder / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwords), USER, password],
                   check=True, capture_output=True, timeout=30)
    passwords.chmod(0o600)
    return passwords


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def login_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private plain-TCP broker that only lets alice (password ``SECRET``) in."""
    require_mosquitto()
    passwords = write_password_file(tmp_path)
    with Mosquitto(tmp_path, anonymous=False,
                   extra_config=f"password_file {passwords}\n") as broker:
        yield broker


def tls_mosquitto(folder: Path, tls: TlsFiles) -> Mosquitto:
    """A private broker whose only listener speaks TLS with ``tls``'s certificate and that
    wants alice's password (use it in ``with``: killed on exit)."""
    require_mosquitto()
    folder.mkdir(parents=True, exist_ok=True)
    passwords = write_password_file(folder)
    config = f"{tls.mosquitto_listener_config()}password_file {passwords}\n"
    return Mosquitto(folder, anonymous=False, extra_config=config)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, TlsFiles]]:
    """A TLS broker with a certificate for 127.0.0.1 from a CA of this test's own."""
    tls = make_tls(tmp_path)
    with tls_mosquitto(tmp_path, tls) as broker:
        yield broker, tls


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record at DEBUG, also from the libraries underneath."""
    caplog.set_level(logging.DEBUG)
    for name in ("aioconveyor", "asyncpg", "mqtt", "aiomqtt", "paho"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


# -- secrets ---------------------------------------------------------------------------


async def test_passwords_never_show_in_logs_reprs_stats_or_errors(
    postgres_dsn: str, db: asyncpg.Connection, login_broker: Mosquitto,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    shown: list[str] = []
    table, key = f"aioc_secret_{uuid.uuid4().hex[:12]}", f"secret-{uuid.uuid4().hex}"
    metrics_port = 0 if importlib.util.find_spec("prometheus_client") else None
    try:
        with TcpProxy(*host_port(postgres_dsn, 5432)) as proxy:
            dsn = pg_dsn(postgres_dsn, proxy.port)
            pg = PostgresConsumer(dsn, table, create_table=True, batch_age=0.05,
                                  max_backoff=0.2, connect_timeout=1.0)
            mqtt = MqttConsumer(mqtt_url(login_broker.port), topic="secure/state",
                                availability_topic="secure/availability", timeout=1.0,
                                max_backoff=0.2)
            leader = PostgresLeader(dsn, key, connect_timeout=1.0)
            writer = AioConveyor(produce, [pg, mqtt], loop_interval=0.05, stop_timeout=1.0,
                                 name="writer", metrics_port=metrics_port)
            led = AioConveyor(produce, [], loop_interval=0.05, leader=leader, stop_timeout=1.0,
                              name="led")
            shown += [repr(pg), repr(mqtt), repr(leader), repr(Consumer(pg, name="pg")),
                      str(pg.dsn), mqtt.url]

            async with writer, led:
                assert await wait_until(
                    lambda: min(c.delivered for c in writer.stats().consumers) >= 2
                    and led.stats().leader_role == "leader", timeout=15), writer.stats()
                shown += conveyor_texts(writer) + conveyor_texts(led)

                proxy.cut()  # PostgreSQL gone: writes, pool reconnects, the leader's check fail
                login_broker.stop()  # and the broker too: MQTT reconnects fail
                assert await wait_until(
                    lambda: min(c.errors for c in writer.stats().consumers) >= 3
                    and led.stats().leader_role == "standby", timeout=15), writer.stats()
                shown += conveyor_texts(writer) + conveyor_texts(led)
            shown += conveyor_texts(writer) + conveyor_texts(led)
            assert all(c.last_error for c in writer.stats().consumers)

        # start-up failures: a refused login, a closed port
        login_broker.start()
        refused = AioConveyor(produce, [Consumer(MqttConsumer(mqtt_url(login_broker.port, WRONG)),
                                                startup="fail")],
                              loop_interval=0.05)
        with pytest.raises(StartupError, match="refused the connection") as info:
            await asyncio.to_thread(refused.start)
        shown += exception_texts(info.value) + conveyor_texts(refused)

        closed = pg_dsn(postgres_dsn, free_port())
        unreachable = AioConveyor(produce, [Consumer(PostgresConsumer(closed, table, connect_timeout=1.0),
                                                    startup="fail")],
                                  loop_interval=0.05)
        with pytest.raises(StartupError, match="failed to open") as info:
            await asyncio.to_thread(unreachable.start)
        shown += exception_texts(info.value) + conveyor_texts(unreachable)

        lonely = AioConveyor(produce, [], loop_interval=0.05, max_ticks=3, name="lonely",
                             leader=PostgresLeader(closed, key, connect_timeout=1.0))
        async with lonely:  # unreachable: a standby that keeps trying
            assert await asyncio.to_thread(lonely.join, 15)
        assert lonely.stats().standby_ticks == 3
        shown += conveyor_texts(lonely)
    finally:
        await db.execute(f'DROP TABLE IF EXISTS "{table}"')

    records = debug_logs.records
    assert any(r.name.startswith("mqtt") for r in records)  # paho/aiomqtt did log at DEBUG
    assert any("cannot reach PostgreSQL" in r.getMessage() for r in records)
    assert any("***@127.0.0.1" in r.getMessage() for r in records)  # the URLs were logged
    assert_no_secret(shown + log_texts(records))


class Demo:
    """One ``python -m aioconveyor`` run, all its output in one file; killed at teardown."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log = tmp_path / f"demo-{uuid.uuid4().hex[:6]}.txt"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aioconveyor", "--quiet", "--log-level", "DEBUG",
                 "--csv", str(tmp_path / "demo.csv"), *args],
                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    runs: list[Demo] = []

    def start(*args: str) -> Demo:
        runs.append(Demo(tmp_path, *args))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


async def test_the_demo_never_prints_a_password(
    postgres_dsn: str, db: asyncpg.Connection, login_broker: Mosquitto,
    demo: Callable[..., Demo],
) -> None:
    # 1. a consumer cannot open (PostgreSQL on a closed port; MQTT with a wrong password):
    #    the demo runs its readings anyway (the lane retries), logging the failure
    unreachable = demo("--count", "2", "--interval", "0.1",
                       "--postgres", pg_dsn(postgres_dsn, free_port()))
    refused = demo("--count", "2", "--interval", "0.1",
                   "--mqtt", mqtt_url(login_broker.port, WRONG))
    for failed in (unreachable, refused):
        assert await asyncio.to_thread(failed.process.wait, 60) == 0, failed.output

    # 2. everything works, then PostgreSQL and the broker go away mid-run
    schema = f"aioc_secret_{uuid.uuid4().hex[:10]}"
    await db.execute(f'CREATE SCHEMA "{schema}"')
    try:
        with TcpProxy(*host_port(postgres_dsn, 5432)) as proxy:
            run = demo("--count", "12", "--interval", "0.25",
                       "--postgres", pg_dsn(postgres_dsn, proxy.port, search_path=schema),
                       "--mqtt", mqtt_url(login_broker.port))

            async def rows() -> int:
                exists = await db.fetchval("SELECT to_regclass($1) IS NOT NULL",
                                           f'"{schema}".aioconveyor_demo')
                if not exists:
                    return 0
                return int(await db.fetchval(f'SELECT count(*) FROM "{schema}".aioconveyor_demo'))

            deadline = time.monotonic() + 30
            while await rows() < 2:
                assert run.process.poll() is None, run.output
                assert time.monotonic() < deadline, run.output
                await asyncio.sleep(0.05)
            proxy.cut()
            login_broker.stop()
            assert await asyncio.to_thread(run.process.wait, 60) in (0, 1), run.output
    finally:
        await db.execute(f'DROP SCHEMA "{schema}" CASCADE')

    assert "consumer postgres: open() failed" in unreachable.output
    assert "consumer mqtt: open() failed" in refused.output
    assert f"{USER}:***@127.0.0.1:{login_broker.port} refused the connection" in refused.output
    assert "postgres:***@127.0.0.1" in run.output and f"{USER}:***@127.0.0.1" in run.output
    assert "lost the connection" in run.output and "DEBUG" in run.output
    assert_no_secret([unreachable.output, refused.output, run.output])


# -- MQTT over TLS with a login --------------------------------------------------------


async def test_mqtt_over_tls_with_a_password_delivers_every_message(
    tls_broker: tuple[Mosquitto, TlsFiles],
) -> None:
    broker, tls = tls_broker
    context = tls.client_context()
    topic = f"tls/{uuid.uuid4().hex[:8]}/state"
    received: list[aiomqtt.Message] = []
    subscribed = asyncio.Event()

    async def subscribe() -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port, username=USER, password=SECRET,
                                  tls_context=context) as client:
            await client.subscribe(topic, qos=1)
            subscribed.set()
            async for message in client.messages:
                received.append(message)

    subscriber = asyncio.create_task(subscribe())
    try:
        assert await wait_until(lambda: subscribed.is_set() or subscriber.done(), timeout=10)
        assert subscribed.is_set(), subscriber.exception()
        consumer = MqttConsumer(mqtt_url(broker.port, scheme="mqtts"), tls=context,
                                topic=topic)
        assert consumer.url == f"mqtts://{USER}:***@127.0.0.1:{broker.port}"
        produced: list[datetime] = []

        def readings(event_time: datetime) -> dict[str, int]:
            produced.append(event_time)
            return {"n": len(produced)}

        conv = AioConveyor(readings, [consumer], loop_interval=0.05, max_ticks=8)
        async with conv:
            assert await asyncio.to_thread(conv.join, 15)
        assert await wait_until(lambda: len(received) >= 8, timeout=10), received
    finally:
        subscriber.cancel()
        await asyncio.gather(subscriber, return_exceptions=True)

    lane = conv.stats().consumer("mqtt")
    assert (lane.delivered, lane.errors, lane.dropped) == (8, 0, 0), lane
    payloads = [json.loads(m.payload) for m in received
                if isinstance(m.payload, bytes | bytearray)]
    assert [(p["n"], p["event_time"]) for p in payloads] == [
        (n, t.isoformat()) for n, t in enumerate(produced, 1)]


def start_failure(consumer: MqttConsumer) -> str:
    """Start a conveyor with ``consumer``: the StartupError's text (checked for secrets)."""
    conv = AioConveyor(produce, [Consumer(consumer, startup="fail")], loop_interval=0.05)
    started = time.monotonic()
    with pytest.raises(StartupError) as info:
        conv.start()
    assert time.monotonic() - started < 15
    assert_no_secret(exception_texts(info.value))
    return str(info.value)


def collect_failed_tls_sockets() -> None:
    """paho-mqtt leaves its socket open when the TLS handshake fails (it lives on in the
    error's traceback until collected, then warns): collect it now, quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_a_wrong_password_over_tls_fails_the_start_without_showing_it(
    tls_broker: tuple[Mosquitto, TlsFiles],
) -> None:
    broker, tls = tls_broker
    error = start_failure(MqttConsumer(mqtt_url(broker.port, WRONG, scheme="mqtts"),
                                       tls=tls.client_context(), topic="tls/state"))
    assert "refused the connection" in error
    assert f"mqtts://{USER}:***@127.0.0.1:{broker.port}" in error


@pytest.mark.parametrize("trust", ["system CAs", "another CA", "wrong host name"])
def test_a_client_that_does_not_trust_the_certificate_cannot_start(
    tls_broker: tuple[Mosquitto, TlsFiles], tmp_path: Path, trust: str,
) -> None:
    broker, _ = tls_broker
    context: ssl.SSLContext | bool = True  # the system's CAs, which never signed ours
    try:
        with contextlib.ExitStack() as stack:
            if trust == "another CA":
                context = make_tls(tmp_path / "other").client_context()
            elif trust == "wrong host name":  # a CA we trust, a certificate for another name
                named = make_tls(tmp_path / "named", "broker.example")
                broker = stack.enter_context(tls_mosquitto(tmp_path / "named", named))
                context = named.client_context()
            error = start_failure(MqttConsumer(mqtt_url(broker.port, scheme="mqtts"),
                                               tls=context, topic="tls/state"))
    finally:
        collect_failed_tls_sockets()
    assert "has a TLS certificate we do not trust" in error
    assert "CERTIFICATE_VERIFY_FAILED" in error
    assert f"mqtts://{USER}:***@127.0.0.1:{broker.port}" in error
