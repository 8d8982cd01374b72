"""InfluxConsumer against real servers: a private InfluxDB 1.x and a private VictoriaMetrics.

Records go through a real AioConveyor and are read back through each server's own query
API (InfluxQL ``/query``; VictoriaMetrics ``/api/v1/export``) and compared exactly:
values, tags, nanosecond (VictoriaMetrics: millisecond) timestamps. Throttling (429 / 503
with ``Retry-After``), server errors and InfluxDB 2.x / 3.x style refusals come from a real
HTTP stage in front of the real store (``support.influx.Stage``).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import math
import subprocess
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer, ConsumerStats, SettingError
from aioconveyor.consumers import InfluxConsumer
from aioconveyor.consumers.influx import (
    InfluxAuthError,
    InfluxConnectionError,
    InfluxRecordError,
    InfluxServerError,
    encode_point,
    time_ns,
)
from aioconveyor.kit import Batch, Record, retry_after_seconds
from support.influx import (
    DATABASE,
    VICTORIA_PASSWORD,
    VICTORIA_USER,
    Answer,
    Stage,
    http,
    influx_rows,
    influxd_url,
    victoria_auth_url,
    victoria_count,
    victoria_points,
    victoria_url,
)
from support.services import free_port

__all__ = ["influxd_url", "victoria_auth_url", "victoria_url"]  # the fixtures, used here

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


class Recorder:
    """A producer named ``name`` that remembers every ``(event_time, data)`` it returned."""

    def __init__(self, name: str, make: Callable[[int, dt.datetime], Any]) -> None:
        self.name = name
        self.make = make
        self.produced: list[tuple[dt.datetime, Any]] = []

    def __call__(self, event_time: dt.datetime) -> Any:
        data = self.make(len(self.produced), event_time)
        self.produced.append((event_time, data))
        return data


def unique(prefix: str = "m") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def lane(conv: AioConveyor, name: str = "influx") -> ConsumerStats:
    return conv.stats().consumer(name)


async def run(produce: Recorder, consumer: Any, ticks: int, **settings: Any) -> AioConveyor:
    conv = AioConveyor(produce, [consumer], loop_interval=0.05, max_ticks=ticks,
                       stop_timeout=30, **settings)
    await conv.run()
    return conv


def ns(t: dt.datetime) -> int:
    return time_ns(t)


def ms(t: dt.datetime) -> int:
    return time_ns(t) // 1_000_000


# -- round trips --------------------------------------------------------------------------


async def test_influxdb_1x_stores_every_record_exactly(influxd_url: str) -> None:
    name = unique("meter")
    produce = Recorder(name, lambda n, t: {
        "site": "roof, west=1", "power": 1.5 + n, "count": n, "ok": n % 2 == 0,
        "note": f'say "hi" \\ {n}\nbye', "price": Decimal("0.25"), "missing": None,
    })
    consumer = InfluxConsumer(influxd_url, database=DATABASE, tags=["site"])
    conv = await run(produce, consumer, 5)
    assert (lane(conv).delivered, lane(conv).rejected, lane(conv).failed) == (5, 0, 0)
    expected = [{"time": ns(t), "site": "roof, west=1", "power": d["power"],
                 "count": d["count"], "ok": d["ok"], "note": d["note"], "price": 0.25}
                for t, d in produce.produced]
    assert influx_rows(influxd_url, name) == expected
    assert consumer.written == 5 and consumer.requests >= 1


async def test_names_with_special_characters_round_trip(influxd_url: str) -> None:
    measurement = unique("my meter,") + " x=1"
    produce = Recorder("p", lambda n, t: {"a tag=,": "v a,l=ue", "field, key=": n,
                                          "back\\slash": "c:\\temp"})
    consumer = InfluxConsumer(influxd_url, database=DATABASE, measurement=measurement,
                              tags=["a tag=,", "back\\slash"], static_tags={"host": "pi 4"})
    conv = await run(produce, consumer, 2)
    assert lane(conv).delivered == 2
    assert influx_rows(influxd_url, measurement) == [
        {"time": ns(t), "a tag=,": "v a,l=ue", "field, key=": d["field, key="],
         "back\\slash": "c:\\temp", "host": "pi 4"} for t, d in produce.produced]


async def test_victoria_metrics_stores_v1_and_v2_writes(victoria_url: str) -> None:
    name = unique("vm")
    produce = Recorder(name, lambda n, t: {"site": "roof", "power": 2.5 * n, "count": n,
                                           "ok": True})
    v1 = InfluxConsumer(victoria_url, api="v1", database="plant", tags=["site"], name="v1")
    v2 = InfluxConsumer(victoria_url, bucket="ignored", org="o", tags=["site"], name="v2",
                        measurement=f"{name}_v2", gzip=False)
    conv = AioConveyor(produce, [v1, v2], loop_interval=0.05, max_ticks=4, stop_timeout=30)
    await conv.run()
    assert lane(conv, "v1").delivered == lane(conv, "v2").delivered == 4
    expected = set()
    for t, d in produce.produced:
        for field in ("power", "count", "ok"):
            value = float(d[field])
            expected.add((f"{name}_{field}", (("db", "plant"), ("site", "roof")), value, ms(t)))
            expected.add((f"{name}_v2_{field}", (("site", "roof"),), value, ms(t)))
    assert victoria_points(victoria_url, f'{{__name__=~"{name}_.*"}}',
                           expect=len(expected)) == sorted(expected)


async def test_the_measurement_is_each_records_producer(victoria_url: str) -> None:
    from aioconveyor import Producer

    names = [unique("inverter"), unique("battery")]
    producers = [Producer(Recorder(n, lambda i, t: {"w": float(i)}), name=n, every=0.05,
                          max_ticks=3) for n in names]
    consumer = Consumer(InfluxConsumer(victoria_url, database="x"), batch_size=4, batch_age=0.1)
    conv = AioConveyor(consumers=[consumer], producers=producers, stop_timeout=30)
    await conv.run()
    assert lane(conv).delivered == 6
    for n in names:
        assert victoria_count(victoria_url, f'{{__name__="{n}_w"}}', expect=3) == 3


# -- refused records ----------------------------------------------------------------------


async def test_a_field_type_conflict_rejects_only_that_record(influxd_url: str) -> None:
    name = unique("conflict")
    produce = Recorder(name, lambda n, t: {"v": "text" if n == 2 else float(n)})
    sink = InfluxConsumer(influxd_url, database=DATABASE)
    conv = await run(produce, Consumer(sink, batch_size=5, batch_age=5), 5)
    stats = lane(conv)
    assert (stats.delivered, stats.rejected, stats.retries, stats.failed) == (4, 1, 0, 0)
    assert influx_rows(influxd_url, name) == [
        {"time": ns(t), "v": d["v"]} for t, d in produce.produced if d["v"] != "text"]
    assert sink.requests == 1  # the partial write is not sent again


async def test_lines_named_by_a_2x_style_400_are_dropped_and_the_rest_written(
    victoria_url: str,
) -> None:
    """InfluxDB 2.x refuses a whole batch with ``line N: ...``: the others are sent again."""
    name = unique("v2lines")

    def plan(n: int, lines: list[str]) -> Answer | None:
        bad = [i + 1 for i, line in enumerate(lines) if "bad=" in line]
        if not bad:
            return None
        text = "; ".join(f"line {i}: invalid field value" for i in bad)
        body = (b'{"code":"invalid","message":"failed to parse line protocol: errors '
                b'encountered on line(s): ' + text.encode() + b'"}')
        return 400, {"Content-Type": "application/json"}, body

    produce = Recorder(name, lambda n, t: {"bad" if n in (1, 3) else "ok": float(n)})
    with Stage(victoria_url, plan) as stage:
        consumer = Consumer(InfluxConsumer(stage.url, bucket="b"), batch_size=5, batch_age=5)
        conv = await run(produce, consumer, 5)
    assert (lane(conv).delivered, lane(conv).rejected, lane(conv).retries) == (3, 2, 0)
    assert stage.statuses() == [400, 204]
    assert len(stage.seen[1].lines) == 3 and not any("bad=" in x for x in stage.seen[1].lines)
    assert victoria_points(victoria_url, f'{{__name__=~"{name}_.*"}}', expect=3) == sorted(
        (f"{name}_ok", (), float(d["ok"]), ms(t)) for t, d in produce.produced if "ok" in d)


async def test_a_400_naming_no_line_is_halved_until_the_bad_record_is_found(
    victoria_url: str,
) -> None:
    name = unique("halve")

    def plan(n: int, lines: list[str]) -> Answer | None:
        if any("bad=" in line for line in lines):
            return 400, {}, b'{"error":"something is wrong"}'
        return None

    produce = Recorder(name, lambda n, t: {"bad" if n == 5 else "ok": float(n)})
    with Stage(victoria_url, plan) as stage:
        consumer = Consumer(InfluxConsumer(stage.url, database="d"), batch_size=8,
                            batch_age=5)
        conv = await run(produce, consumer, 8)
    assert (lane(conv).delivered, lane(conv).rejected) == (7, 1)
    assert victoria_count(victoria_url, f'{{__name__="{name}_ok"}}', expect=7) == 7
    assert stage.statuses().count(400) == 4  # 8 lines, then 4, 2 and 1 hold the bad one


async def test_a_400_about_the_request_is_retried_not_a_rejection(influxd_url: str) -> None:
    """InfluxDB 1.x without a database: ``400 database is required``, a setting to fix."""
    consumer = InfluxConsumer(influxd_url)  # no database: fine for VictoriaMetrics only
    async with consumer:
        with pytest.raises(InfluxServerError, match="HTTP 400: database is required"):
            await consumer(Batch([Record({"v": 1.0}, T0), Record({"v": 2.0}, T0)]), T0)
    assert consumer.requests == 1 and consumer.refused == 0


def test_the_lines_a_3x_partial_write_names_are_found() -> None:
    from aioconveyor.consumers.influx import _refused_lines

    body = ('{"error":"partial write of line protocol occurred","data":[{"original_line":'
            '"m f=x","line_number":2,"error_message":"No fields were provided"}]}')
    assert _refused_lines(body, ["m f=1", "m f=x", "m f=3"]) == {1}
    assert _refused_lines("line 9: out of range", ["m f=1"]) == set()


# -- retries ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured_and_the_batch_stored_once(victoria_url: str,
                                                                 status: int) -> None:
    name = unique("throttled")

    def plan(n: int, lines: list[str]) -> Answer | None:
        return (status, {"Retry-After": "1"}, b"slow down") if n < 2 else None

    produce = Recorder(name, lambda n, t: {"v": float(n)})
    with Stage(victoria_url, plan) as stage:
        consumer = Consumer(InfluxConsumer(stage.url, database="d"), batch_size=3,
                            batch_age=5)
        conv = await run(produce, consumer, 3)
    assert stage.statuses() == [status, status, 204]
    assert stage.seen[1].lines == stage.seen[0].lines == stage.seen[2].lines  # the same batch
    assert stage.seen[1].at - stage.seen[0].at >= 0.9  # it waited as told (a lower bound)
    stats = lane(conv)
    assert (stats.delivered, stats.retries, stats.rejected) == (3, 2, 0)
    assert victoria_count(victoria_url, f'{{__name__="{name}_v"}}', expect=3) == 3


async def test_a_server_error_is_retried_with_backoff(victoria_url: str) -> None:
    name = unique("flaky")

    def plan(n: int, lines: list[str]) -> Answer | None:
        return (500, {}, b"engine hiccup") if n == 0 else None

    produce = Recorder(name, lambda n, t: {"v": float(n)})
    with Stage(victoria_url, plan) as stage:
        consumer = Consumer(InfluxConsumer(stage.url, database="d"), batch_size=2,
                            batch_age=5, backoff=0.01)
        conv = await run(produce, consumer, 2)
    assert stage.statuses() == [500, 204]
    assert (lane(conv).delivered, lane(conv).retries) == (2, 1)
    assert victoria_count(victoria_url, f'{{__name__="{name}_v"}}', expect=2) == 2


async def test_a_retried_batch_that_had_been_stored_is_stored_once(victoria_url: str) -> None:
    """The store took the batch but the answer was lost (a 503 after forwarding)."""
    name = unique("twice")
    produce = Recorder(name, lambda n, t: {"v": float(n)})

    def plan(n: int, lines: list[str]) -> Answer | None:
        if n == 0:  # store it for real, then answer as if it failed
            http("POST", f"{victoria_url}/write?db=d", "\n".join(lines).encode())
            return 503, {"Retry-After": "0"}, b""
        return None

    with Stage(victoria_url, plan) as stage:
        consumer = Consumer(InfluxConsumer(stage.url, database="d"), batch_size=3,
                            batch_age=5)
        conv = await run(produce, consumer, 3)
    assert stage.statuses() == [503, 204]
    assert lane(conv).delivered == 3
    points = victoria_points(victoria_url, f'{{__name__="{name}_v"}}', expect=3)
    assert points == sorted((f"{name}_v", (("db", "d"),), float(d["v"]), ms(t))
                            for t, d in produce.produced)


async def test_an_unreachable_server_is_a_masked_connection_error() -> None:
    consumer = InfluxConsumer(f"http://user:hunter2pw@127.0.0.1:{free_port()}", database="d",
                              timeout=5)
    async with consumer:
        with pytest.raises(InfluxConnectionError) as caught:
            await consumer({"v": 1.0}, T0)
    assert "hunter2pw" not in str(caught.value) and "127.0.0.1" in str(caught.value)


# -- credentials --------------------------------------------------------------------------


async def test_basic_auth_works_and_a_wrong_password_is_a_clear_error(
    victoria_auth_url: str,
) -> None:
    name = unique("auth")
    good = InfluxConsumer(victoria_auth_url, database="d", username=VICTORIA_USER,
                          password=VICTORIA_PASSWORD)
    async with good:
        await good({"v": 1.0}, T0)
    creds = base64.b64encode(f"{VICTORIA_USER}:{VICTORIA_PASSWORD}".encode()).decode()
    points = victoria_points(victoria_auth_url, '{__name__="aioconveyor_v"}',
                             headers={"Authorization": f"Basic {creds}"})
    assert (("aioconveyor_v", (("db", "d"),), 1.0, ms(T0))) in points

    url = f"http://{VICTORIA_USER}:wrong-password-42@{victoria_auth_url[7:]}"
    bad = InfluxConsumer(url, database="d", measurement=name)
    token = InfluxConsumer(victoria_auth_url, bucket="b", token="s3cret-token-xyz")
    for consumer, secret in ((bad, "wrong-password-42"), (token, "s3cret-token-xyz")):
        assert secret not in repr(consumer)
        async with consumer:
            with pytest.raises(InfluxAuthError) as caught:
                await consumer({"v": 2.0}, T0)
        message = str(caught.value)
        assert "HTTP 401" in message and "refused our" in message
        assert secret not in message


async def test_an_auth_error_is_retried_and_logged_not_dropped(victoria_auth_url: str,
                                                              caplog: Any) -> None:
    consumer = Consumer(InfluxConsumer(victoria_auth_url, bucket="b", token="tok-secret-9"),
                        retries=2, backoff=0.01)
    produce = Recorder("p", lambda n, t: {"v": 1.0})
    with caplog.at_level(logging.WARNING):
        conv = await run(produce, consumer, 1)
    assert (lane(conv).delivered, lane(conv).failed, lane(conv).retries) == (0, 1, 2)
    assert "InfluxAuthError" in caplog.text or "refused our token" in caplog.text
    assert "tok-secret-9" not in caplog.text


# -- records that are not line protocol ---------------------------------------------------

BAD_RECORDS: list[tuple[Any, str]] = [
    ({"v": math.nan}, "field 'v' is nan; line protocol has no NaN or infinity"),
    ({"v": -math.inf}, "field 'v' is -inf; line protocol has no NaN or infinity"),
    ({"v": {"a": 1}}, "field 'v' is a dict; a field holds a number, a bool or a str"),
    ({"v": [1, 2]}, "field 'v' is a list; a field holds a number, a bool or a str"),
    ({"v": 2**63}, "field 'v': 9223372036854775808 does not fit a 64-bit integer"),
    ({"v": None}, "the record has no field with a value (line protocol needs at least one)"),
    ({}, "the record has no field with a value"),
    ({"site": "a\nb", "v": 1}, "tag 'site' 'a\\nb' holds a line break"),
    ({"site": "end\\", "v": 1}, "tag 'site' 'end\\\\' has a backslash at its end"),
    ({"site": ["x"], "v": 1}, "tag 'site' is a list; a tag holds a str or a number"),
    ({"new\nline": 1}, "field key 'new\\nline' holds a line break"),
    (object(), "a record must be a mapping, a dataclass, a model or a number"),
]


@pytest.mark.parametrize(("record", "message"), BAD_RECORDS, ids=[m for _, m in BAD_RECORDS])
def test_a_record_line_protocol_cannot_carry_is_refused_with_a_reason(record: Any,
                                                                     message: str) -> None:
    consumer = InfluxConsumer(database="d", tags=["site"])
    with pytest.raises(InfluxRecordError, match="^.*" + __import__("re").escape(message)):
        consumer.point(record, T0, "p")


async def test_bad_records_are_rejected_and_the_good_ones_of_the_batch_written(
    victoria_url: str, caplog: Any,
) -> None:
    name = unique("mixed")
    produce = Recorder(name, lambda n, t: {"v": math.nan if n == 1 else float(n)})
    consumer = Consumer(InfluxConsumer(victoria_url, database="d"), batch_size=4, batch_age=5)
    with caplog.at_level(logging.WARNING):
        conv = await run(produce, consumer, 4)
    assert (lane(conv).delivered, lane(conv).rejected, lane(conv).retries) == (3, 1, 0)
    assert victoria_count(victoria_url, f'{{__name__="{name}_v"}}', expect=3) == 3
    assert "field 'v' is nan" in caplog.text


def test_encoding_follows_the_line_protocol_rules() -> None:
    assert encode_point("m,1 x", {"b": "2", "a": "1 ,=", "e": "", "n": None},
                        {"f": 1.0, "i": -3, "t": True, "s": 'a"b\\c', "z": None}, 7) == (
        'm\\,1\\ x,a=1\\ \\,\\=,b=2 f=1.0,i=-3i,t=true,s="a\\"b\\\\c" 7')
    assert encode_point("m=x", {}, {"k=y z": False}) == "m=x k\\=y\\ z=false"


SHAPES: list[tuple[dict[str, Any], Any]] = [
    ({"tags": ["site"]}, {"site": "a b", "w": 1.5, "n": 3, "ok": False, "s": 'q"\\'}),
    ({"tags": ["site"], "static_tags": {"host": "pi", "site": "dflt"}}, {"w": 2.0}),
    ({"tags": ["site"], "static_tags": {"site": "dflt"}}, {"site": "own", "w": 2.0}),
    ({"fields": ["b", "a"]}, {"a": 1, "b": True, "c": "left out"}),
    ({"measurement": "fixed"}, {"e": Decimal("2.5"), "none": None, "big": -(2**63)}),
    ({"precision": "s"}, {"v": 1}),
    ({"precision": "us", "tags": ["t"]}, {"t": 7, "v": "x"}),
    ({}, 42),
]


@pytest.mark.parametrize(("options", "record"), SHAPES)
def test_the_consumers_lines_are_encode_point_lines(options: dict[str, Any], record: Any) -> None:
    consumer = InfluxConsumer(database="d", **options)
    when = dt.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    values = record if isinstance(record, dict) else {"value": record}
    tags = dict(options.get("static_tags", {}))
    tags |= {k: values[k] for k in options.get("tags", ()) if values.get(k)}
    fields = ({k: values[k] for k in options["fields"] if k in values} if "fields" in options
              else {k: v for k, v in values.items() if k not in options.get("tags", ())})
    divisor = {"ns": 1, "us": 1000, "s": 10**9}[options.get("precision", "ns")]
    expected = encode_point(options.get("measurement", "p"), tags, fields,
                            time_ns(when) // divisor)
    assert consumer.point(record, when, "p") == expected


def test_a_plain_value_is_the_value_field_and_time_is_exact() -> None:
    consumer = InfluxConsumer(database="d", measurement="temp", precision="ms")
    when = dt.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    assert consumer.point(21.5, when) == f"temp value=21.5 {time_ns(when) // 1_000_000}"
    assert time_ns(when) == 1_777_636_800_123_456_000
    assert time_ns(when.replace(tzinfo=None)) == time_ns(when)  # naive: UTC


def test_a_batch_takes_each_records_producer() -> None:
    consumer = InfluxConsumer(database="d")
    batch = Batch([Record({"v": 1}, T0), Record({"v": 2}, T0)])
    assert consumer._lines(batch, T0) == ([f"aioconveyor v=1i {ns(T0)}"] * 1
                                          + [f"aioconveyor v=2i {ns(T0)}"], 0)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds("Wed, 21 Oct 2026 07:28:10 GMT", "Wed, 21 Oct 2026 07:28:00 GMT") == 10
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    assert retry_after_seconds("-1") is None


# -- construction -------------------------------------------------------------------------

BAD_ARGUMENTS: list[tuple[dict[str, Any], str, str]] = [
    ({"url": "ftp://host"}, "url", "url must start with http:// or https://, got 'ftp://host'"),
    ({"url": "http://u:pw@host/?db=x"}, "url",
     "url must not have a query or fragment (the consumer adds the query), got "
     "'http://u:***@host/?db=x'"),
    ({"url": 5}, "url", "url must be a str or None, got int"),
    ({"url": "http://"}, "url", "url has no host, got 'http://'"),
    ({"api": "v3"}, "api", "api must be one of 'v1', 'v2', got 'v3'"),
    ({"api": "v2"}, "bucket", 'bucket is needed by api="v2", got None'),
    ({"database": "d", "bucket": "b"}, "database",
     "database cannot be combined with api=\"v2\" (v2 writes to a bucket); got database='d'"),
    ({"api": "v1", "org": "o"}, "org",
     "org cannot be combined with api=\"v1\" (v1 writes to a database); got org='o'"),
    ({"database": ""}, "database", "database must be a non-empty str, got ''"),
    ({"database": "d", "token": "t0ken", "username": "u"}, "token",
     "token cannot be combined with username/password (pass either a token or a username "
     "and password); got token='***'"),
    ({"database": "d", "password": "pw"}, "password",
     "a password needs a username (HTTP basic auth)"),
    ({"url": "http://u:p@h", "username": "v"}, "username",
     "username cannot be combined with a user in url"),
    ({"database": "d", "precision": "m"}, "precision",
     "precision must be one of 'ns', 'us', 'ms', 's', got 'm'"),
    ({"database": "d", "tags": "site"}, "tags",
     "tags must be a list of record keys, got 'site'"),
    ({"database": "d", "tags": ["a", "a"]}, "tags", "tags names a key twice, got ['a', 'a']"),
    ({"database": "d", "tags": ["a"], "fields": ["a"]}, "fields",
     "fields and tags both name ['a']; a key is a tag or a field"),
    ({"database": "d", "fields": []}, "fields", "fields must name at least one key"),
    ({"database": "d", "measurement": "a\nb"}, "measurement",
     "measurement cannot hold a line break"),
    ({"database": "d", "static_tags": {"k": "v\\"}}, "static_tags['k']",
     "has a backslash at its end"),
    ({"database": "d", "static_tags": {"k": 1}}, "static_tags['k']",
     "static_tags['k'] must be a str, got 1"),
    ({"database": "d", "gzip": "yes"}, "gzip", "gzip must be a bool, got 'yes'"),
    ({"database": "d", "timeout": 0}, "timeout", "timeout must be a finite number > 0, got 0"),
    ({"database": "d", "batch_size": 0}, "batch_size", "batch_size must be an int >= 1"),
    ({"database": "d", "max_retry_after": -1}, "max_retry_after",
     "max_retry_after must be a finite number >= 0, got -1"),
]


@pytest.mark.parametrize(("kwargs", "name", "message"), BAD_ARGUMENTS,
                         ids=[f"{n}:{m[:30]}" for _, n, m in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], name: str,
                                                   message: str) -> None:
    with pytest.raises(SettingError) as caught:
        InfluxConsumer(**kwargs)
    assert caught.value.name == name
    assert message in str(caught.value)
    for secret in ("pw", "t0ken"):
        assert f"'{secret}'" not in str(caught.value)


def test_api_is_inferred_and_secrets_never_shown() -> None:
    v1 = InfluxConsumer("http://admin:Pa55word!@db:8086/prefix/", database="d")
    assert v1.api == "v1" and v1._url == "http://db:8086/prefix/write"
    assert v1._params == {"db": "d", "precision": "ns"}
    assert "Pa55word" not in repr(v1) and "admin:***@db:8086" in repr(v1)
    v2 = InfluxConsumer("https://cloud.example", bucket="b", org="o", token="tok-123456")
    assert v2.api == "v2" and v2._url == "https://cloud.example/api/v2/write"
    assert v2._params == {"org": "o", "bucket": "b", "precision": "ns"}
    assert v2._headers["Authorization"] == "Token tok-123456"
    assert "tok-123456" not in repr(v2)
    assert InfluxConsumer().api == "v1"  # VictoriaMetrics takes /write without a database


def test_the_config_runner_knows_type_influx(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from aioconveyor._config import load_config

    (tmp_path / "meter_mod.py").write_text("def read(event_time):\n    return {'w': 1.0}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "c.toml"
    path.write_text('[producer]\nfunction = "meter_mod:read"\n[conveyor]\ninterval = 1\n'
                    '[[consumers]]\ntype = "influx"\nurl = "http://127.0.0.1:8428"\n'
                    'database = "solar"\ntags = ["site"]\nbatch_size = 50\n')
    loaded = load_config(path)
    sink = next(iter(loaded.specs.values())).fn
    assert isinstance(sink, InfluxConsumer) and sink.database == "solar"

    path.write_text('[producer]\nfunction = "meter_mod:read"\n[conveyor]\ninterval = 1\n'
                    '[[consumers]]\ntype = "influx"\nurl = "http://w:pw-1234@h:8086"\n'
                    'bucket = "b"\ntoken = "tok-98765"\n')
    with pytest.raises(Exception) as caught:  # token and a user in the url: contradictory
        load_config(path)
    assert "consumers[0].token" in str(caught.value)
    assert "tok-98765" not in str(caught.value) and "pw-1234" not in str(caught.value)
    path.write_text('[producer]\nfunction = "meter_mod:read"\n[conveyor]\ninterval = 1\n'
                    '[[consumers]]\ntype = "influx"\nurl = "http://h:8086"\n'
                    'bucket = "b"\ntoken = "tok-98765"\n')
    loaded = load_config(path)
    assert "tok-98765" in loaded.secrets
    assert "tok-98765" not in " ".join(loaded.consumers)


def test_without_aiohttp_the_import_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['aiohttp'] = None\n"
        "import aioconveyor.consumers\n"
        "try:\n"
        "    from aioconveyor.consumers import InfluxConsumer\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without aiohttp')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert 'pip install "aioconveyor[influx]"' in result.stdout


def test_a_shapes_encoder_hands_odd_values_to_the_checks() -> None:
    """The first record of a key shape compiles a fast encoder for its value types; a later
    record of the same shape with other values is still checked, escaped or refused."""
    consumer = InfluxConsumer(database="d", measurement="m", tags=["site"])
    when = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    stamp = time_ns(when)
    first = {"site": "a", "w": 1.5, "n": 3, "ok": True, "s": "x"}
    assert consumer.point(first, when) == f'm,site=a w=1.5,n=3i,ok=true,s="x" {stamp}'
    odd = [{"site": "a", "w": None, "n": 3, "ok": True, "s": 'q"\\'},
           {"site": "a", "w": 2, "n": 2.5, "ok": 1, "s": "y"},
           {"site": "a", "w": Decimal("2.5"), "n": True, "ok": False, "s": "z"}]
    for record in odd:
        fields = {k: v for k, v in record.items() if k != "site"}
        assert consumer.point(record, when) == encode_point("m", {"site": "a"}, fields, stamp)
    for bad, message in [(math.nan, "is nan"), (math.inf, "is inf"), ([1], "is a list"),
                         (2**63, "does not fit")]:
        with pytest.raises(InfluxRecordError, match=message):
            consumer.point(first | {"w": bad}, when)
    with pytest.raises(InfluxRecordError, match="line break"):
        consumer.point({"site": "a", "w\n": 1.0}, when)
    assert consumer.point({"site": "a", "w": 1.0, "z": None}, when) == f"m,site=a w=1.0 {stamp}"


def test_a_shapes_encoder_writes_static_and_record_tags_as_encode_point_does() -> None:
    consumer = InfluxConsumer(database="d", tags=["site", "zone"],
                              static_tags={"host": "pi", "site": "dflt"})
    when = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    records = [{"site": "a b", "w": 1.5}, {"zone": "z,1", "site": "", "w": 2.5},
               {"site": "a b", "w": 3.5}, {"zone": "z,1", "site": "", "w": 4.5},
               {"site": None, "w": 5.5}, {"site": "c", "w": 6.5}, {"site": "a b", "w": 7.5}]
    for record in records * 2:  # the second time round, every tag value is known
        tags = {"host": "pi", "site": "dflt"} | {
            k: v for k in ("site", "zone") if (v := record.get(k))}
        expected = encode_point("p", tags, {"w": record["w"]}, time_ns(when))
        assert consumer.point(record, when, "p") == expected
