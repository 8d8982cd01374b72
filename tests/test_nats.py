"""NatsConsumer against the real NATS server with JetStream (127.0.0.1:4222), and against
private servers (a login, a token, TLS) started on free ports for the test.

* what a conveyor publishes comes back from the stream: payloads, subjects and the
  ``Nats-Msg-Id`` header (``producer/grid time``), one message per record, batches too;
* a retried message the stream already has is delivered, counted in ``duplicates`` and
  stored once; the connection cut several times through a TCP proxy still leaves every
  tick in the stream exactly once;
* the stream: created when asked (subjects, duplicate window), checked when named, a
  different existing configuration fails clearly;
* bad records are rejected (and counted) while the others of their batch are published;
  bad arguments raise SettingError naming the argument; secrets never show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from aioconveyor import AioConveyor, Batch, Consumer, Producer, Record, SettingError
from aioconveyor.consumers import NatsConsumer
from aioconveyor.consumers.nats import (
    MSG_ID,
    NatsConnectionError,
    NatsRecordError,
    NatsStream,
    NatsStreamError,
)
from aioconveyor.testing import wait_until
from support.proxy import proxy_to
from support.services import free_port, in_ci
from support.tls import make_tls

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """The test's own JetStream client (never through a proxy)."""
    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest.fixture
def tag() -> str:
    """A name of this test's own: its stream is ``tag.upper()``, its subjects ``tag.*``."""
    return f"aioc{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def streams(js: JetStreamContext) -> AsyncIterator[list[str]]:
    """Names of the streams to delete after the test."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)


@pytest.fixture
async def stream(js: JetStreamContext, tag: str, streams: list[str]) -> str:
    """A stream of this test's own on ``tag.>``, deleted afterwards."""
    name = tag.upper()
    streams.append(name)
    await js.add_stream(StreamConfig(name=name, subjects=[f"{tag}.>"], duplicate_window=120))
    return name


async def stored(js: JetStreamContext, stream: str) -> list[Any]:
    """Every message of ``stream``, in order."""
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    return [await js.get_msg(stream, seq)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)]


@contextlib.contextmanager
def private_server(tmp_path: Path, *args: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A nats-server of the test's own (with JetStream) on a free port of 127.0.0.1: its
    port and its process."""
    if not Path(NATS_SERVER).exists():
        reason = f"{NATS_SERVER} is not installed (apt-get install nats-server)"
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    port = free_port()
    store = tmp_path / f"js-{port}"
    proc = subprocess.Popen([NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js",
                             "-sd", str(store), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server {args} did not start") from None
                time.sleep(0.05)
        yield port, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (SIGSTOP has taken effect)."""
    states = [Path(f"/proc/{pid}/task/{t}/stat").read_text().rpartition(")")[2].split()[0]
              for t in os.listdir(f"/proc/{pid}/task")]
    return all(state in "Tt" for state in states)


def meter(event_time: datetime) -> dict[str, Any]:
    return {"power_w": 1200.5, "minute": event_time.minute}


# -- round trips -----------------------------------------------------------------------


async def test_what_a_conveyor_publishes_comes_back_from_the_stream(
    nats_url: str, js: JetStreamContext, tag: str, stream: str,
) -> None:
    produced: dict[str, list[datetime]] = {"meter": [], "inverter": []}

    def read_meter(event_time: datetime) -> dict[str, Any]:
        produced["meter"].append(event_time)
        return {"energy_kwh": 12.5, "n": len(produced["meter"])}

    def read_inverter(event_time: datetime) -> bytes:
        produced["inverter"].append(event_time)
        return b"raw\x00bytes"

    sink = NatsConsumer(nats_url, f"{tag}.{{producer}}.state", stream=stream)
    conv = AioConveyor(producers=[Producer(read_meter, name="meter", every=0.05, max_ticks=3),
                                  Producer(read_inverter, name="inverter", every=0.05,
                                           max_ticks=2)],
                       consumers=[sink], stop_timeout=10)
    await conv.run()
    stats = conv.stats().consumer("nats")
    assert (stats.delivered, stats.errors, stats.rejected) == (5, 0, 0)
    got = await stored(js, stream)
    assert len(got) == 5
    by_id = {m.headers[MSG_ID]: m for m in got}
    for producer, times in produced.items():
        for i, when in enumerate(times):
            message = by_id[f"{producer}/{when.isoformat()}"]
            assert message.subject == f"{tag}.{producer}.state"
            assert message.headers == {MSG_ID: f"{producer}/{when.isoformat()}",
                                       "Nats-Expected-Stream": stream}
            if producer == "inverter":
                assert message.data == b"raw\x00bytes"
            else:
                assert json.loads(message.data) == {"energy_kwh": 12.5, "n": i + 1,
                                                    "event_time": when.isoformat()}
    assert sink.duplicates == 0


async def test_a_batch_publishes_every_record_with_its_own_id(
    nats_url: str, js: JetStreamContext, tag: str, stream: str,
) -> None:
    sink = NatsConsumer(nats_url, f"{tag}.{{producer}}")
    conv = AioConveyor(meter, [Consumer(sink, batch_size=4, batch_age=60)],
                       loop_interval=0.02, max_ticks=8, stop_timeout=10)
    await conv.run()
    assert conv.stats().consumer("nats").delivered == 8
    got = await stored(js, stream)
    ids = [m.headers[MSG_ID] for m in got]
    assert len(ids) == len(set(ids)) == 8
    assert all(i.startswith("meter/") for i in ids) and all(m.subject == f"{tag}.meter"
                                                             for m in got)
    times = [datetime.fromisoformat(i.partition("/")[2]) for i in ids]
    assert times == sorted(times)  # in order, on the grid
    assert {json.loads(m.data)["event_time"] for m in got} == {t.isoformat() for t in times}


async def test_a_message_the_stream_already_has_is_delivered_once_and_counted(
    nats_url: str, js: JetStreamContext, tag: str, stream: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retry after a lost PubAck: the stream has the message and answers "duplicate"."""
    await js.publish(f"{tag}.fixed", b"first", headers={MSG_ID: T0.isoformat()})
    caplog.set_level(logging.INFO, "aioconveyor.consumers.nats")
    async with NatsConsumer(nats_url, f"{tag}.fixed") as sink:
        await sink({"v": 1}, T0)  # the same id (no producer outside a conveyor): a duplicate
        await sink({"v": 2}, T0 + timedelta(seconds=1))
        await sink({"v": 2}, T0 + timedelta(seconds=1))  # the lane's retry of the same item
    assert sink.duplicates == 2
    got = await stored(js, stream)
    assert [(m.headers[MSG_ID], m.data) for m in got] == [
        (T0.isoformat(), b"first"),
        ((T0 + timedelta(seconds=1)).isoformat(), b'{"v":2,"event_time":"2026-01-01T00:00:01+00:00"}'),
    ]
    assert "already in stream" in caplog.text


async def test_a_publish_without_a_puback_is_retried_and_stored_once(tmp_path: Path) -> None:
    """The server takes the message but its PubAck never comes (the server hangs): the call
    times out, and the retry on a new connection is recognised as a duplicate."""
    with private_server(tmp_path) as (port, proc):
        url = f"nats://127.0.0.1:{port}"
        async with NatsConsumer(url, "hang.x", stream=NatsStream("HANG"), timeout=1) as sink:
            os.kill(proc.pid, signal.SIGSTOP)
            assert await wait_until(lambda: stopped(proc.pid), timeout=10)
            try:
                with pytest.raises(NatsConnectionError, match="no PubAck within 1 s"):
                    await sink({"v": 1}, T0)
            finally:
                os.kill(proc.pid, signal.SIGCONT)  # it reads and stores the message now
            await sink({"v": 1}, T0)  # the lane's retry
        assert sink.duplicates == 1
        nc = await nats.connect(url)
        assert (await nc.jetstream().stream_info("HANG")).state.messages == 1
        await nc.close()


async def test_every_tick_is_in_the_stream_exactly_once_across_connection_cuts(
    nats_url: str, js: JetStreamContext, tag: str, streams: list[str],
) -> None:
    ticks = 60
    produced: list[datetime] = []

    def read(event_time: datetime) -> dict[str, Any]:
        produced.append(event_time)
        return {"n": len(produced)}

    name = tag.upper()
    streams.append(name)
    with proxy_to(nats_url, 4222) as proxy:
        sink = NatsConsumer(f"nats://127.0.0.1:{proxy.port}", f"{tag}.{{producer}}",
                            stream=NatsStream(name), timeout=2.0, max_backoff=0.2)
        conv = AioConveyor(read, [Consumer(sink, batch_size=5, batch_age=0.05)],
                           loop_interval=0.03, max_ticks=ticks, stop_timeout=30)
        run = asyncio.create_task(conv.run())
        lane = lambda: conv.stats().consumer("nats")  # noqa: E731
        for cut in range(3):  # bounded: three outages, each while ticks keep coming
            assert await wait_until(lambda n=10 * (cut + 1): lane().delivered >= n, timeout=30)
            errors = lane().errors
            await asyncio.to_thread(proxy.cut)
            assert await wait_until(lambda e=errors: lane().errors > e, timeout=30)  # noticed
            await asyncio.to_thread(proxy.restore)
        await asyncio.wait_for(run, timeout=60)
        assert proxy.connections >= 4  # reconnected after every cut
    logging.getLogger(__name__).info("%d duplicate(s) recognised", sink.duplicates)
    stats = conv.stats().consumer("nats")
    assert (stats.delivered, stats.dropped, stats.failed, stats.rejected) == (ticks, 0, 0, 0)
    got = await stored(js, name)
    ids = [m.headers[MSG_ID] for m in got]
    assert (await js.stream_info(name)).state.messages == ticks
    assert sorted(ids) == sorted(f"read/{t.isoformat()}" for t in produced)
    assert len(set(ids)) == ticks
    assert sorted(json.loads(m.data)["n"] for m in got) == list(range(1, ticks + 1))


# -- the stream ------------------------------------------------------------------------


async def test_the_stream_is_created_with_its_settings_and_reused(
    nats_url: str, js: JetStreamContext, tag: str, streams: list[str],
) -> None:
    name = tag.upper()
    streams.append(name)
    spec = NatsStream(name, duplicate_window=300, max_age=3600, max_msgs=1000,
                      storage="memory")
    async with NatsConsumer(nats_url, f"{tag}.{{producer}}.v1", stream=spec) as sink:
        with pytest.raises(NatsRecordError, match="needs the record's producer"):
            await sink({"v": 1}, T0)  # no producer outside a conveyor: the subject needs one
    info = (await js.stream_info(name)).config
    assert info.subjects == [f"{tag}.*.v1"]
    assert (info.duplicate_window, info.max_age, info.max_msgs) == (300, 3600, 1000)
    assert getattr(info.storage, "value", info.storage) == "memory"
    assert sink.rejected == 1
    async with NatsConsumer(nats_url, f"{tag}.{{producer}}.v1", stream=spec):
        pass  # the same settings: the existing stream is used as it is


async def test_an_existing_stream_with_other_settings_fails_clearly(
    nats_url: str, tag: str, stream: str,
) -> None:
    sink = NatsConsumer(nats_url, f"{tag}.{{producer}}",
                        stream=NatsStream(stream, subjects=[f"{tag}.>"], duplicate_window=60))
    with pytest.raises(NatsStreamError) as info:
        await sink.open()
    assert str(info.value) == (
        f"NATS server nats://127.0.0.1:4222: stream {stream!r} exists with another "
        "configuration: duplicate_window 120 s, not 60 s. Make NatsStream(...) match it, or "
        "change the stream (nats stream edit) yourself")
    await sink.close()


async def test_a_named_stream_must_exist(nats_url: str, tag: str) -> None:
    sink = NatsConsumer(nats_url, f"{tag}.x", stream=tag.upper())
    with pytest.raises(NatsStreamError, match=f"stream '{tag.upper()}' does not exist"):
        await sink.open()


async def test_a_subject_no_stream_captures_is_an_error_the_lane_retries(
    nats_url: str, tag: str,
) -> None:
    async with NatsConsumer(nats_url, f"{tag}.nowhere", timeout=2) as sink:
        with pytest.raises(NatsStreamError, match=f"no stream captures subject '{tag}.nowhere'"):
            await sink({"v": 1}, T0)


# -- bad records -----------------------------------------------------------------------


async def test_bad_records_are_rejected_and_the_rest_of_the_batch_is_published(
    nats_url: str, js: JetStreamContext, tag: str, stream: str,
) -> None:
    def encoder(data: Any, event_time: datetime) -> Any:
        if data == "boom":
            raise RuntimeError("cannot encode")
        return 42 if data == "junk" else data

    async with NatsConsumer(nats_url, f"{tag}.{{producer}}", encoder=encoder,
                            event_time_key="event_time") as sink:
        huge = "x" * (1024 * 1024 + 1)  # over the server's default max_payload (1 MiB)
        batch = Batch([Record("ok-1", T0), Record("boom", T0 + timedelta(seconds=1)),
                       Record("junk", T0 + timedelta(seconds=2)),
                       Record(huge, T0 + timedelta(seconds=3)),
                       Record("ok-2", T0 + timedelta(seconds=4)),
                       Record("twin", T0 + timedelta(seconds=4))])
        with pytest.raises(NatsRecordError) as info:
            await sink(batch, T0)
    assert sink.rejected == 6 and info.value.count == 6
    # no producer for {producer} (records made outside a conveyor): every one is named
    assert "needs the record's producer" in str(info.value)
    assert [m.data for m in await stored(js, stream)] == []

    async with NatsConsumer(nats_url, f"{tag}.fixed", encoder=encoder) as sink:
        with pytest.raises(NatsRecordError) as info:
            await sink(batch, T0)
    messages = [str(e) for e in [info.value, info.value.__cause__]]
    assert "4 records could not be published; the first: encoder failed on the record of " \
           "2026-01-01T00:00:01+00:00: RuntimeError: cannot encode" in messages[0]
    assert sink.rejected == 4
    assert [m.data for m in await stored(js, stream)] == [b"ok-1", b"ok-2"]


@pytest.mark.parametrize(("payload", "message"), [
    (lambda: {"v": float("nan")}, "cannot be encoded as JSON: ValueError"),
    (lambda: {"v": object()}, "cannot be encoded as JSON: TypeError"),
    (lambda: b"x" * (1024 * 1024), "more than the server's max_payload of 1048576 bytes"),
])
async def test_a_record_that_cannot_be_a_message_is_rejected(
    nats_url: str, tag: str, stream: str, payload: Any, message: str,
) -> None:
    async with NatsConsumer(nats_url, f"{tag}.x") as sink:
        with pytest.raises(NatsRecordError, match=message.replace("(", r"\(")):
            await sink(payload(), T0)


@pytest.mark.parametrize(("producer", "held"), [
    ("a.b", "'.'"), ("all*", "'*'"), ("rest>", "'>'"), ("two words", "' '"),
])
async def test_a_producer_name_that_is_not_one_subject_token_is_rejected(
    nats_url: str, js: JetStreamContext, tag: str, stream: str, producer: str, held: str,
) -> None:
    def good(event_time: datetime) -> int:
        return 1

    def bad(event_time: datetime) -> int:
        return 2

    sink = NatsConsumer(nats_url, f"{tag}.{{producer}}")
    conv = AioConveyor(producers=[Producer(good, name="good", every=0.05, max_ticks=2),
                                  Producer(bad, name=producer, every=0.05, max_ticks=1)],
                       consumers=[sink], stop_timeout=10)
    await conv.run()
    stats = conv.stats().consumer("nats")
    assert (stats.delivered, stats.rejected) == (2, 1)
    assert f"the producer name {producer!r}" in str(stats.last_error)
    assert f"holds {held}" in str(stats.last_error)
    assert [m.subject for m in await stored(js, stream)] == [f"{tag}.good"] * 2


# -- connections, logins, TLS ----------------------------------------------------------


async def test_an_unreachable_server_fails_the_open_and_the_lane_retries() -> None:
    closed = free_port()
    sink = NatsConsumer(f"nats://127.0.0.1:{closed}", "x.y", timeout=1)
    with pytest.raises(NatsConnectionError, match="unreachable") as info:
        await sink.open()
    assert info.value.refused is False


async def test_a_login_round_trip_and_a_refused_one_without_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    password = "pa:ss@wo/rd#1"
    caplog.set_level(logging.DEBUG)
    with private_server(tmp_path, "--user", "alice", "--pass", password) as (port, _):
        spec = NatsStream("LOGIN", subjects=["login.>"])
        quoted = password.replace("%", "%25")
        async with NatsConsumer(f"nats://alice:{quoted}@127.0.0.1:{port}", "login.x",
                                stream=spec) as sink:
            await sink({"v": 1}, T0)
            shown = [repr(sink), sink.url]
        async with NatsConsumer(f"nats://127.0.0.1:{port}", "login.x", user="alice",
                                password=password, stream="LOGIN") as sink:
            await sink({"v": 2}, T0 + timedelta(seconds=1))
        bad = NatsConsumer(f"nats://alice:wrong-{quoted}@127.0.0.1:{port}", "login.x")
        with pytest.raises(NatsConnectionError) as info:
            await bad.open()
        assert info.value.refused and "refused the login" in str(info.value)
        shown += [str(info.value), repr(bad), caplog.text]
        nc = await nats.connect(f"nats://127.0.0.1:{port}", user="alice", password=password)
        assert (await nc.jetstream().stream_info("LOGIN")).state.messages == 2
        await nc.close()
    assert sink.url == f"nats://alice:***@127.0.0.1:{port}"
    for text in shown:
        assert password not in text and "wrong-" not in text


async def test_a_token_login(tmp_path: Path) -> None:
    token = "s3cret-token"
    with private_server(tmp_path, "--auth", token) as (port, _):
        async with NatsConsumer(f"nats://{token}@127.0.0.1:{port}", "tok.x",
                                stream=NatsStream("TOK")) as sink:
            await sink({"v": 1}, T0)
        assert sink.url == f"nats://***@127.0.0.1:{port}"
        assert token not in repr(sink)
        bad = NatsConsumer(f"nats://127.0.0.1:{port}", "tok.x", token="wrong")
        with pytest.raises(NatsConnectionError, match="refused the login"):
            await bad.open()


async def test_tls_with_a_private_ca_and_an_untrusted_certificate(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    with private_server(tmp_path, "--tls", "--tlscert", str(tls.certfile),
                        "--tlskey", str(tls.keyfile)) as (port, _):
        async with NatsConsumer(f"tls://127.0.0.1:{port}", "secure.x",
                                stream=NatsStream("SECURE"), tls=tls.client_context()) as sink:
            await sink({"v": 1}, T0)
        assert sink.url.startswith("tls://")
        untrusted = NatsConsumer(f"tls://127.0.0.1:{port}", "secure.x", timeout=2)
        with pytest.raises(NatsConnectionError) as info:
            await untrusted.open()
        assert info.value.refused, info.value


# -- settings --------------------------------------------------------------------------


def test_url_parts_defaults_and_the_lane_settings() -> None:
    plain = NatsConsumer()
    assert (plain.url, plain.subject, plain.stream, plain.timeout) == (
        "nats://127.0.0.1:4222", "readings.{producer}", None, 5.0)
    assert plain.consumer_defaults == {"retries": 1_000_000, "backoff": 0.2, "max_backoff": 5.0}
    assert NatsConsumer("nats://u:p@h").url == "nats://u:***@h:4222"
    assert NatsConsumer("tls://[::1]:4443").url == "tls://[::1]:4443"
    assert NatsConsumer("nats://h", stream={"name": "S", "duplicate_window": 10}).stream == \
        NatsStream("S", duplicate_window=10)
    assert "p@ss" not in repr(NatsConsumer("nats://u:p@ss@h:1"))


BAD_SETTINGS = [
    # (arguments, SettingError.name, text in the message)
    ({"url": 4222}, "url", "url must be a str or None, got int"),
    ({"url": "http://h"}, "url", "must start with nats:// or tls://"),
    ({"url": "nats://h:99999"}, "url", "has a bad port"),
    ({"url": "nats://h/path"}, "url", "no path or query"),
    ({"subject": ""}, "subject", "subject must be a non-empty str"),
    ({"subject": "a..b"}, "subject", "has an empty token"),
    ({"subject": "a.*"}, "subject", "holds '*', a wildcard"),
    ({"subject": "a.>"}, "subject", "holds '>', a wildcard"),
    ({"subject": "a b"}, "subject", "holds ' ', whitespace"),
    ({"subject": "a.{device}"}, "subject", "may only hold the field {producer}"),
    ({"subject": "a.{producer!r}"}, "subject", "may only hold the field {producer}"),
    ({"subject": "a.{producer"}, "subject", "is not a valid template"),
    ({"password": "x"}, "password", "a password needs a user"),
    ({"user": "alice"}, "user", "user needs a password"),
    ({"user": "a", "password": "p", "token": "t"}, "token", "cannot be combined with"),
    ({"url": "nats://a:b@h", "user": "c", "password": "d"}, "user", "cannot be combined"),
    ({"credentials": "/x.creds", "token": "t"}, "credentials", "cannot be combined"),
    ({"credentials": 5}, "credentials", "must be a str or os.PathLike"),
    ({"tls": "yes"}, "tls", "tls must be an ssl.SSLContext or a bool, got 'yes'"),
    ({"url": "tls://h", "tls": False}, "tls", "cannot be combined with a tls:// url"),
    ({"timeout": 0}, "timeout", "timeout must be a finite number > 0, got 0"),
    ({"encoder": "json"}, "encoder", "encoder must be callable"),
    ({"encoder": bytes, "event_time_key": "ts"}, "event_time_key", "cannot be combined"),
    ({"pending_size": 100}, "pending_size", "must be an int >= 65536 (bytes), got 100"),
    ({"retries": -1}, "retries", "retries must be an int >= 0"),
    ({"max_backoff": 0}, "max_backoff", "max_backoff must be a finite number > 0"),
    ({"stream": "a.b"}, "name", "cannot hold '.'"),
    ({"stream": 5}, "stream", "must be a stream name, a NatsStream"),
    ({"stream": {"duplicate_window": 1}}, "stream", "needs a name"),
    ({"stream": {"name": "S", "window": 1}}, "stream", "unknown key(s) ['window']"),
    ({"stream": {"name": "S", "duplicate_window": 0}}, "duplicate_window", "> 0, got 0"),
    ({"stream": {"name": "S", "storage": "disk"}}, "storage", "'file', 'memory', got 'disk'"),
    ({"stream": {"name": "S", "replicas": 7}}, "replicas", "an int in 1..5, got 7"),
    ({"stream": {"name": "S", "subjects": "a.>"}}, "subjects", "must be a list of subjects"),
    ({"stream": {"name": "S", "subjects": ["a..b"]}}, "subjects[0]", "has an empty token"),
    ({"subject": "a.{producer}", "stream": NatsStream("S", subjects=["b.>"])}, "stream",
     "the stream's subjects do not capture 'a.*'"),
    ({"logger": "log"}, "logger", "must be a logging.Logger"),
]


@pytest.mark.parametrize(("kwargs", "name", "message"), BAD_SETTINGS,
                         ids=[f"{k}" for k, _, _ in BAD_SETTINGS])
def test_bad_settings_raise_a_setting_error_naming_the_argument(
    kwargs: dict[str, Any], name: str, message: str,
) -> None:
    with pytest.raises(SettingError) as info:
        NatsConsumer(**kwargs)
    assert info.value.name == name
    assert message in str(info.value)
    for secret in ("p@ss", "wrong"):
        assert secret not in str(info.value)


SECRET = "hunter2-Kx7q"


@pytest.mark.parametrize("kwargs", [
    {"url": f"nats://u:{SECRET}@h".encode()},
    {"url": f"nats://u:{SECRET}@h/path"},
    {"url": f"http://u:{SECRET}@h"},
    {"url": f"nats://u:{SECRET}@h:99999"},
    {"url": f"nats://{SECRET}@h", "token": "other"},
    {"user": "u", "password": SECRET.encode()},
    {"password": SECRET},
    {"token": SECRET, "user": "u", "password": "p"},
    {"token": SECRET.encode()},
], ids=["url-bytes", "url-path", "url-scheme", "url-port", "token-twice", "password-bytes",
        "password-without-user", "token-with-user", "token-bytes"])
def test_arguments_that_may_hold_a_secret_never_show_it(kwargs: dict[str, Any]) -> None:
    with pytest.raises(SettingError) as info:
        NatsConsumer(**kwargs)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in repr(info.value.value)


def test_credentials_need_nkeys_and_name_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nkeys", None)
    with pytest.raises(ImportError, match='pip install "nats-py\\[nkeys\\]"'):
        NatsConsumer(credentials="/etc/nats/user.creds")


def test_the_toml_type_builds_the_consumer(tmp_path: Path) -> None:
    from aioconveyor._config import load_config

    path = tmp_path / "conveyor.toml"
    path.write_text(
        '[conveyor]\ninterval = 1\n[producer]\nfunction = "aioconveyor._demo:InverterSimulator"\n'
        '[[consumers]]\ntype = "nats"\nurl = "nats://alice:${NATS_PASSWORD}@127.0.0.1:4222"\n'
        'subject = "pv.{producer}"\ntimeout = 3\n'
        '[consumers.stream]\nname = "PV"\nduplicate_window = 600\n')
    loaded = load_config(path, env={"NATS_PASSWORD": "hunter22"})
    sink = loaded.specs["nats"].fn
    assert isinstance(sink, NatsConsumer)
    assert sink.stream == NatsStream("PV", duplicate_window=600) and sink.timeout == 3
    assert "hunter22" not in "\n".join(loaded.consumers) and "hunter22" in loaded.secrets


async def test_calling_before_open_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="call open\\(\\) first"):
        await NatsConsumer()({"v": 1}, T0)


def test_without_nats_py_the_import_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['nats'] = None\n"
        "try:\n"
        "    from aioconveyor.consumers import NatsConsumer\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without nats-py')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert 'pip install "aioconveyor[nats]"' in result.stdout
