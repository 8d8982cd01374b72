"""Awkward passwords never leak: one table of passwords, written *unencoded* into DSNs and
broker URLs (where ``#``, ``/``, ``?``, ``@`` split a naive URL parser in the wrong place),
checked in every place a password could show: reprs, log records of failing connections,
the errors of ``open()`` and ``StartupError``, ``aioconveyor check`` / ``run`` output,
``PostgresLeader`` and ``/metrics``. Every piece of every password holds ``MARKER``: finding
it anywhere means (part of) a password leaked. Servers are real (closed ports are real
closed ports); the test PostgreSQL trusts any password, so a good DSN also connects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import urllib.parse
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aioconveyor import AioConveyor, Consumer, PostgresLeader, StartupError
from aioconveyor._secrets import (
    encode_userinfo,
    mask_dsn,
    mask_text,
    mask_url,
    scrub,
    secrets_of,
    split_url,
)
from aioconveyor.consumers import MqttConsumer, PostgresConsumer
from aioconveyor.testing import wait_until
from support.leaks import exception_texts, log_texts
from support.runner import BIN
from support.services import free_port, host_port

M = "Kx7q"
MARKER = M

PASSWORDS = [
    f"{M}#{M}", f"{M}/{M}", f"{M}?{M}", f"{M}@{M}", f"{M}:{M}", f"{M} {M}", f"{M}%{M}",
    f"{M}%40{M}", f"{M}'{M}", f'{M}"{M}', f"{M}é€😀{M}", f"{M}&{M}", f"{M}={M}", f"{M}\\",
    f"{M}/{M}@{M}#{M}?{M}", f"{M}@{M}/{M}", f"{M}?x=1@{M}", f"{M}#{M}@{M}", f"{M}%2F{M}",
    f"{M}:{M}@{M}:{M}", f"{M};{M},{M}", f"{M}+{M}", f"{M} {M}@{M}", f"{M}\\'{M}",
    f"{M}%{M}%", f"{M}[{M}]{M}", f"{M}/{M}?sslmode=disable&{M}",
]
IDS = [f"pw{i}" for i in range(len(PASSWORDS))]


def pg_dsn(password: str, port: int, *, database: str = "test") -> str:
    """A DSN with ``password`` written as it is (unencoded)."""
    return f"postgresql://postgres:{password}@127.0.0.1:{port}/{database}"


def assert_no_secret(texts: list[str]) -> None:
    leaks = [t for t in texts if MARKER in t]
    assert not leaks, "the password leaked:\n" + "\n---\n".join(leaks[:5])


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("aioconveyor", "asyncpg", "mqtt", "aiomqtt", "paho"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


async def produce(event_time: datetime) -> dict[str, Any]:
    return {"power_w": 1.5}


# -- the masking functions themselves ---------------------------------------------------


@pytest.mark.parametrize("password", PASSWORDS, ids=IDS)
def test_masking_hides_every_awkward_password(password: str) -> None:
    dsn = pg_dsn(password, 5432)
    assert mask_dsn(dsn) == "postgresql://postgres:***@127.0.0.1:5432/test"
    assert mask_url(f"mqtt://alice:{password}@h:1") == "mqtt://alice:***@h:1"
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    keyword = f"host=db password='{quoted}' user=x"
    assert mask_dsn(keyword) == "host=db password=*** user=x"
    for text in (f"failed: {dsn} (refused)", f"dsn={dsn!r}", f"connecting to {keyword}"):
        assert_no_secret([mask_text(text)])
    # every spelling is known: a server repeating the password (raw or decoded) is scrubbed
    secrets = secrets_of(dsn)
    assert password in secrets and urllib.parse.unquote(password) in secrets
    assert scrub(f"password {urllib.parse.unquote(password)} is wrong", secrets) == (
        "password *** is wrong")
    assert password in secrets_of(keyword)
    assert MARKER not in scrub(password + "|" + urllib.parse.unquote(password), secrets)


@pytest.mark.parametrize("password", PASSWORDS, ids=IDS)
def test_an_unencoded_password_is_encoded_for_the_driver(password: str) -> None:
    encoded = encode_userinfo(pg_dsn(password, 5432))
    parts = urllib.parse.urlsplit(encoded)  # what asyncpg's own parser sees
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 5432, "/test")
    assert urllib.parse.unquote(parts.netloc.rpartition("@")[0].partition(":")[2]) == (
        urllib.parse.unquote(password))


@pytest.mark.parametrize(("dsn", "masked"), [
    ("postgresql://u:pw@db/home?application_name=me@work",
     "postgresql://u:***@db/home?application_name=me@work"),
    ("postgresql://db:5432/home?application_name=me@work",
     "postgresql://db:5432/home?application_name=me@work"),
    ("postgresql://u:a@b/c@db/home", "postgresql://u:***@db/home"),  # more masked, never less
    ("postgresql://u@db/home?password=a b&sslmode=require",
     "postgresql://u@db/home?password=***&sslmode=require"),
    ("postgresql://u:x@[::1]:5432,h2:5433/home", "postgresql://u:***@[::1]:5432,h2:5433/home"),
    ("host=db password = 'a \\' b' sslpassword=k user=x",
     "host=db password = *** sslpassword=*** user=x"),
    ("postgresql://db/home", "postgresql://db/home"),
])
def test_mask_dsn_reads_the_user_info_like_a_person_would(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked


def test_a_valid_dsn_is_passed_to_the_driver_unchanged() -> None:
    for dsn in ("postgresql://u:p%40w@db/home?application_name=me@work",
                "postgresql://db:5432/home?application_name=me@work", "host=db password=x"):
        assert encode_userinfo(dsn) == dsn


@pytest.mark.parametrize("password", PASSWORDS, ids=IDS)
def test_the_mqtt_url_takes_any_character_in_the_password(password: str) -> None:
    assert split_url(f"mqtt://alice:{password}@127.0.0.1:1884", query=False) == (
        "mqtt://", "alice", urllib.parse.unquote(password), "127.0.0.1:1884")
    consumer = MqttConsumer(f"mqtt://alice:{password}@127.0.0.1:1884", topic="t")
    assert (consumer.username, consumer.host, consumer.port) == ("alice", "127.0.0.1", 1884)
    assert consumer.url == "mqtt://alice:***@127.0.0.1:1884"


# -- the consumers, the leader, the conveyor --------------------------------------------


@pytest.mark.parametrize("password", PASSWORDS, ids=IDS)
async def test_failing_connections_never_show_the_password(
    password: str, debug_logs: pytest.LogCaptureFixture,
) -> None:
    closed = free_port()  # bound, then closed again: nothing listens there
    dsn = pg_dsn(password, closed)
    pg = PostgresConsumer(dsn, "t", connect_timeout=1.0)
    mqtt = MqttConsumer(f"mqtt://alice:{password}@127.0.0.1:{closed}", topic="t", timeout=1.0)
    leader = PostgresLeader(dsn, "k", connect_timeout=1.0)
    shown = [repr(pg), str(pg.dsn), repr(mqtt), mqtt.url, repr(leader)]
    with pytest.raises(Exception) as failed:
        await pg.open()
    shown += exception_texts(failed.value)
    with pytest.raises(Exception) as failed:  # unreachable: open() raises, the lane retries
        await mqtt.open()
    shown += exception_texts(failed.value)
    await mqtt.close()
    await leader.open()  # unreachable is not fatal: it stands by and retries
    assert not await leader.lead(datetime.now().astimezone())
    shown.append(repr(leader))
    await leader.close()

    conv = AioConveyor(produce, [Consumer(PostgresConsumer(dsn, "t", connect_timeout=1.0),
                                          startup="fail")], loop_interval=0.05)
    with pytest.raises(StartupError) as info:
        await asyncio.to_thread(conv.start)
    shown += [*exception_texts(info.value), repr(conv), str(conv.stats())]
    assert "postgres:***@127.0.0.1" in "".join(shown)
    assert_no_secret(shown + log_texts(debug_logs.records))


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.parametrize("password", PASSWORDS, ids=IDS)
async def test_an_unencoded_password_connects_and_never_shows(
    password: str, postgres_dsn: str, mqtt_url: str, db: asyncpg.Connection,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    pg_host, pg_port = host_port(postgres_dsn, 5432)
    mq_host, mq_port = host_port(mqtt_url, 1883)
    dsn = f"postgresql://postgres:{password}@{pg_host}:{pg_port}/test"
    table = f"aioc_pw_{uuid.uuid4().hex[:10]}"
    pg = PostgresConsumer(dsn, table, create_table=True, batch_age=0.05)
    mqtt = MqttConsumer(f"mqtt://alice:{password}@{mq_host}:{mq_port}", topic="aioc/pw")
    leader = PostgresLeader(dsn, f"aioc-pw-{uuid.uuid4().hex}")
    conv = AioConveyor(produce, [pg, mqtt], loop_interval=0.05, leader=leader, metrics_port=0,
                       stop_timeout=2.0)
    shown: list[str] = []
    try:
        async with conv:
            assert await wait_until(
                lambda: min(c.delivered for c in conv.stats().consumers) >= 1, timeout=15
            ), conv.stats()
            assert conv.metrics_address is not None
            host, port = conv.metrics_address
            shown.append(await asyncio.to_thread(fetch, f"http://{host}:{port}/metrics"))
            shown += [repr(conv), repr(pg), repr(mqtt), repr(leader), str(conv.stats()),
                      str(conv.health())]
    finally:
        await db.execute(f'DROP TABLE IF EXISTS "{table}"')
    assert "aioconveyor" in shown[0]
    assert_no_secret(shown + log_texts(debug_logs.records))


# -- the command line -------------------------------------------------------------------


def toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a TOML basic string


def test_check_and_run_never_print_the_password(tmp_path: Path) -> None:
    closed = free_port()
    (tmp_path / "produce.py").write_text("def produce(event_time):\n    return {'x': 1}\n")
    consumers = "".join(
        f'[[consumers]]\ntype = "postgres"\ndsn = {toml_string(pg_dsn(pw, closed))}\n'
        f'table = "t{i}"\nname = "pg{i}"\nconnect_timeout = 1.0\n'
        f'[[consumers]]\ntype = "mqtt"\nurl = {toml_string(f"mqtt://a:{pw}@127.0.0.1:{closed}")}\n'
        f'name = "mq{i}"\n'
        for i, pw in enumerate(PASSWORDS))
    config = tmp_path / "conveyor.toml"
    config.write_text(f'[conveyor]\ninterval = 0.1\n[producer]\nfunction = "produce:produce"\n'
                      f'{consumers}')
    check = subprocess.run([str(BIN), "check", str(config)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "postgres:***@127.0.0.1" in check.stdout + check.stderr
    outputs = [check.stdout, check.stderr]
    for i, pw in enumerate(PASSWORDS):  # one failing start per password (each fails at once)
        single = tmp_path / f"single{i}.toml"
        single.write_text(
            f'[conveyor]\ninterval = 0.1\n[producer]\nfunction = "produce:produce"\n'
            f'[[consumers]]\ntype = "postgres"\ndsn = {toml_string(pg_dsn(pw, closed))}\n'
            f'connect_timeout = 1.0\nstartup = "fail"\n'
            f'[leader]\ntype = "postgres"\ndsn = {toml_string(pg_dsn(pw, closed))}\n'
            f'key = "k"\nconnect_timeout = 1.0\n')
        run = subprocess.run([str(BIN), "run", str(single), "--log-level", "DEBUG"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert run.returncode != 0, run.stderr
        assert "***@127.0.0.1" in run.stderr, run.stderr
        outputs += [run.stdout, run.stderr]
    assert_no_secret(outputs)


def test_a_users_consumer_error_text_is_masked_in_the_logs_and_the_stats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A consumer of the user's (not a built-in: it masks nothing itself) whose exceptions
    carry a DSN with its password, when it opens, when it is called, and in its hook: the
    lane's log lines and ``last_error`` show the error masked, and no traceback (which
    would print the text again) is attached to those lines."""
    from aioconveyor.testing import FakeClock

    secret = "Pl4nted-pw-9"
    dsn = f"postgresql://app:{secret}@db.invalid/x"
    opened = 0

    class Leaky:
        name = "leaky"

        async def open(self) -> None:
            nonlocal opened
            opened += 1
            if opened == 1:
                raise ConnectionError(f"cannot reach {dsn}")

        async def __call__(self, data: Any, event_time: datetime) -> None:
            raise OSError(f"write to {dsn} failed") from ValueError(f"{dsn} said no")

    def hook(*args: Any) -> None:
        raise RuntimeError(f"alerting via {dsn} failed")

    async def produce(event_time: datetime) -> int:
        return 1

    caplog.set_level(logging.DEBUG)
    conv = AioConveyor(produce, [Consumer(Leaky(), retries=0, on_error=hook)],
                       loop_interval=1.0, clock=FakeClock(), max_ticks=5)
    conv.start()
    assert conv.join(60) and conv.exception is None
    stats = conv.stats().consumer("leaky")
    assert stats.open_errors == 1 and stats.failed == 5 and stats.hook_errors >= 1
    texts = log_texts(caplog.records)
    assert not [t for t in texts if secret in t]
    assert stats.last_error is not None and secret not in stats.last_error
    assert "app:***@db.invalid" in stats.last_error
    withheld = [r for r in caplog.records if "traceback withheld" in r.getMessage()]
    assert len(withheld) >= 3 and all(r.exc_info is None for r in withheld)
