"""WebhookConsumer against a real HTTP server: aiohttp.web on 127.0.0.1, on a free port.

The server (:class:`Endpoint`) answers as each test plans it: fails (500), throttles (429 /
503 with ``Retry-After`` in seconds or as an HTTP date), hangs, rejects (400, 404), asks
for credentials (401), and records every request, with the conveyor's (fake) time it came
at. The conveyors run in the test's own loop (``await conv.run()``), next to the server.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from aioconveyor import AioConveyor, Batch, Consumer, Producer, Record, SettingError
from aioconveyor.consumers import WebhookConsumer
from aioconveyor.consumers.webhook import (
    WebhookConnectionError,
    WebhookHttpError,
    WebhookRejected,
    WebhookTimeoutError,
)
from aioconveyor.kit import RetryAfter, retry_after_seconds
from aioconveyor.testing import FakeClock
from support.leaks import exception_texts, log_texts
from support.services import free_port

START = 1_798_761_600.0  # 2027-01-01T00:00:00Z, on every grid used here
T0 = datetime.fromtimestamp(START, UTC)
TOKEN = "tok-3f9a-planted-secret"
PASSWORD = "p@ss w/rd#planted"


@dataclass
class Answer:
    """What the server answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    hang: bool = False
    retry_at: float | None = None
    """Retry-After as an HTTP date this many seconds after the answer's Date."""


@dataclass
class Seen:
    at: float
    method: str
    path: str
    headers: CIMultiDict[str]
    body: Any
    status: int


class Endpoint:
    """A real HTTP server whose next answers are planned (``plan``; 200 when empty)."""

    def __init__(self) -> None:
        self.plan: list[Answer] = []
        self.seen: list[Seen] = []
        self.clock: FakeClock | None = None
        self.require: str | None = None
        """The Authorization header needed (else 401, echoing what was sent)."""
        self.release = asyncio.Event()
        self.port = 0

    @property
    def accepted(self) -> list[Seen]:
        return [s for s in self.seen if 200 <= s.status < 300]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def now(self) -> float:
        return self.clock.monotonic() if self.clock is not None else time.monotonic()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        if self.require is not None and request.headers.get("Authorization") != self.require:
            answer = Answer(401, body=f"bad credentials: {request.headers.get('Authorization')}")
        else:
            answer = self.plan.pop(0) if self.plan else Answer()
        seen = Seen(self.now(), request.method, request.raw_path, request.headers.copy(), body,
                    0 if answer.hang else answer.status)
        self.seen.append(seen)
        if answer.hang:
            await self.release.wait()
        headers = dict(answer.headers)
        if answer.retry_at is not None:
            wall = self.clock.time() if self.clock is not None else time.time()
            headers["Date"] = email.utils.formatdate(wall, usegmt=True)
            headers["Retry-After"] = email.utils.formatdate(int(wall) + answer.retry_at,
                                                            usegmt=True)
        return web.Response(status=answer.status, headers=headers, text=answer.body)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    server = Endpoint()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def readings(n: int = 0) -> Any:
    """A producer returning ``{"n": 0}``, ``{"n": 1}``, ... and noting its grid times."""
    times: list[datetime] = []

    async def meter(event_time: datetime) -> dict[str, Any]:
        times.append(event_time)
        return {"n": len(times) - 1 + n}

    meter.times = times  # type: ignore[attr-defined]
    return meter


async def run(sink: WebhookConsumer, ticks: int, *, clock: FakeClock | None = None,
              interval: float = 60.0, produce: Any = None, **settings: Any) -> AioConveyor:
    """``ticks`` ticks of a producer named "meter" through ``sink``, in this loop."""
    conv = AioConveyor(produce or readings(), [Consumer(sink, **settings)],
                       loop_interval=interval if clock is not None else 0.05, clock=clock,
                       max_ticks=ticks, stop_timeout=600 if clock else 20, name="meter")
    await conv.run()
    return conv


def fake(endpoint: Endpoint) -> FakeClock:
    endpoint.clock = FakeClock(start=START, thread_grace=10.0)
    return endpoint.clock


def body(n: int, when: datetime, producer: str = "meter") -> dict[str, Any]:
    return {"n": n, "event_time": when.isoformat(), "producer": producer}


# -- ordinary operation --------------------------------------------------------------------


async def test_every_tick_is_posted_once_as_a_json_object(endpoint: Endpoint) -> None:
    meter = readings()
    sink = WebhookConsumer(endpoint.url("/v1/readings"))
    conv = await run(sink, 3, produce=meter)
    assert [s.body for s in endpoint.accepted] == [
        body(i, t) for i, t in enumerate(meter.times)]
    assert len(endpoint.seen) == 3
    first = endpoint.seen[0]
    assert (first.method, first.path) == ("POST", "/v1/readings")
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["Idempotency-Key"] == f"meter/{meter.times[0].isoformat()}"
    assert first.headers["User-Agent"].startswith("aioconveyor/")
    stats = conv.stats().consumer("webhook")
    assert (stats.delivered, stats.errors, stats.retries) == (3, 0, 0)
    assert sink._session is None  # closed with the conveyor


async def test_put_with_headers_and_own_field_names(endpoint: Endpoint) -> None:
    meter = readings()
    sink = WebhookConsumer(endpoint.url(), method="put", headers={"X-Site": "barn"},
                           event_time_key="ts", producer_key=None,
                           idempotency_header="X-Request-Id")
    await run(sink, 2, produce=meter)
    assert [(s.method, s.headers["X-Site"], s.headers["X-Request-Id"], s.body)
            for s in endpoint.accepted] == [
        ("PUT", "barn", f"meter/{t.isoformat()}", {"n": i, "ts": t.isoformat()})
        for i, t in enumerate(meter.times)]
    assert "Idempotency-Key" not in endpoint.seen[0].headers


async def test_a_record_that_is_not_a_mapping_goes_in_data(endpoint: Endpoint) -> None:
    async with WebhookConsumer(endpoint.url()) as sink:
        await sink(21.5, T0)
        await sink([1, 2], T0)
        await sink({"event_time": "mine", "v": 1}, T0)
    assert [s.body for s in endpoint.seen] == [
        {"data": 21.5, "event_time": T0.isoformat(), "producer": ""},
        {"data": [1, 2], "event_time": T0.isoformat(), "producer": ""},
        {"event_time": "mine", "v": 1, "producer": ""},  # the record's own key wins
    ]
    assert endpoint.seen[0].headers["Idempotency-Key"] == T0.isoformat()


async def test_an_encoder_decides_the_json_of_a_record(endpoint: Endpoint) -> None:
    def encoder(data: Any, event_time: datetime) -> Any:
        return {"t": int(event_time.timestamp()), "values": data}

    async with WebhookConsumer(endpoint.url(), encoder=encoder) as sink:
        await sink({"a": 1}, T0)
    assert endpoint.seen[0].body == {"t": int(START), "values": {"a": 1}}


async def test_a_batch_is_one_json_array(endpoint: Endpoint) -> None:
    clock = fake(endpoint)
    meter = readings()
    sink = WebhookConsumer(endpoint.url())
    conv = await run(sink, 6, clock=clock, produce=meter, batch_size=3, batch_age=1000)
    times = meter.times
    assert [s.body for s in endpoint.accepted] == [
        [body(i, times[i]) for i in range(3)], [body(i, times[i]) for i in range(3, 6)]]
    assert [s.headers["Idempotency-Key"] for s in endpoint.seen] == [
        f"meter/{times[0].isoformat()}..meter/{times[2].isoformat()}",
        f"meter/{times[3].isoformat()}..meter/{times[5].isoformat()}"]
    assert [s.at - endpoint.seen[0].at for s in endpoint.seen] == [0, 180]
    assert conv.stats().consumer("webhook").delivered == 6


async def test_batch_each_sends_one_request_per_record_in_order(endpoint: Endpoint) -> None:
    clock = fake(endpoint)
    meter = readings()
    sink = WebhookConsumer(endpoint.url(), batch="each")
    await run(sink, 4, clock=clock, produce=meter, batch_size=2, batch_age=1000)
    assert [s.body for s in endpoint.accepted] == [body(i, t) for i, t in enumerate(meter.times)]
    assert [s.headers["Idempotency-Key"] for s in endpoint.seen] == [
        f"meter/{t.isoformat()}" for t in meter.times]


async def test_the_url_template_sends_each_producer_to_its_own_url(endpoint: Endpoint) -> None:
    clock = fake(endpoint)
    sink = WebhookConsumer(endpoint.url("/site/{producer}/readings?fmt=json"))
    producers = [Producer(readings(), name="inverter", every=60, max_ticks=2),
                 Producer(readings(100), name="meter room", every=60, max_ticks=2)]
    conv = AioConveyor(producers=producers, consumers=[Consumer(sink, batch_size=4,
                                                               batch_age=1000)],
                       clock=clock, stop_timeout=600)
    await conv.run()
    by_path = {s.path: s.body for s in endpoint.accepted}
    assert sorted(by_path) == ["/site/inverter/readings?fmt=json",
                               "/site/meter%20room/readings?fmt=json"]
    assert [r["n"] for r in by_path["/site/inverter/readings?fmt=json"]] == [0, 1]
    assert [(r["n"], r["producer"]) for r in by_path["/site/meter%20room/readings?fmt=json"]] \
        == [(100, "meter room"), (101, "meter room")]
    assert conv.stats().consumer("webhook").delivered == 4


async def test_a_templated_url_rejects_a_record_without_a_producer(endpoint: Endpoint) -> None:
    async with WebhookConsumer(endpoint.url("/{producer}")) as sink:
        with pytest.raises(WebhookRejected, match="needs the record's producer"):
            await sink({"a": 1}, T0)
    assert endpoint.seen == []


# -- failures, throttling, timeouts: on a FakeClock, at exact times ---------------------------


async def test_a_server_error_is_retried_with_the_lanes_backoff(endpoint: Endpoint) -> None:
    clock = fake(endpoint)
    endpoint.plan = [Answer(500, body="oops"), Answer(502)]
    meter = readings()
    sink = WebhookConsumer(endpoint.url())
    conv = await run(sink, 2, clock=clock, produce=meter, backoff=2, backoff_jitter=0)
    t = [s.at - endpoint.seen[0].at for s in endpoint.seen]
    assert [(at, s.status) for at, s in zip(t, endpoint.seen, strict=True)] == [
        (0, 500), (2, 502), (6, 200), (60, 200)]
    assert [s.body for s in endpoint.accepted] == [body(0, meter.times[0]),
                                                   body(1, meter.times[1])]
    stats = conv.stats().consumer("webhook")
    assert (stats.delivered, stats.retries, stats.rejected) == (2, 2, 0)
    assert "WebhookHttpError" in (stats.last_error or "") and "HTTP 502" in stats.last_error


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_in_seconds_is_waited_exactly(endpoint: Endpoint, status: int) -> None:
    clock = fake(endpoint)
    endpoint.plan = [Answer(status, {"Retry-After": "7"})]
    sink = WebhookConsumer(endpoint.url())
    conv = await run(sink, 2, clock=clock)
    assert [(s.at - endpoint.seen[0].at, s.status) for s in endpoint.seen] == [
        (0, status), (7, 200), (60, 200)]
    assert len(endpoint.accepted) == 2
    assert conv.stats().consumer("webhook").retries == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_as_an_http_date_is_waited_exactly(endpoint: Endpoint,
                                                             status: int) -> None:
    clock = fake(endpoint)
    endpoint.plan = [Answer(status, retry_at=12)]
    sink = WebhookConsumer(endpoint.url())
    await run(sink, 1, clock=clock)
    assert [(s.at - endpoint.seen[0].at, s.status) for s in endpoint.seen] == [
        (0, status), (12, 200)]


async def test_a_long_retry_after_is_capped_and_logged(endpoint: Endpoint,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    clock = fake(endpoint)
    endpoint.plan = [Answer(429, {"Retry-After": "86400"})]
    sink = WebhookConsumer(endpoint.url(), max_retry_after=30)
    with caplog.at_level(logging.WARNING):
        await run(sink, 1, clock=clock)
    assert [s.at - endpoint.seen[0].at for s in endpoint.seen] == [0, 30]
    assert "asked to wait 86400 s; waiting 30 s (max_retry_after)" in caplog.text


@pytest.mark.parametrize("answer", [Answer(408), Answer(429), Answer(503),
                                    Answer(503, {"Retry-After": "soon"})],
                         ids=["408", "429", "503", "503-bad-retry-after"])
async def test_408_and_throttling_without_retry_after_use_the_backoff(
        endpoint: Endpoint, answer: Answer) -> None:
    clock = fake(endpoint)
    endpoint.plan = [answer]
    sink = WebhookConsumer(endpoint.url())
    await run(sink, 1, clock=clock, backoff=3, backoff_jitter=0)
    assert [(s.at - endpoint.seen[0].at, s.status) for s in endpoint.seen] == [
        (0, answer.status), (3, 200)]


async def test_a_hung_server_is_cancelled_at_the_lanes_timeout(endpoint: Endpoint) -> None:
    clock = fake(endpoint)
    endpoint.plan = [Answer(hang=True)]
    meter = readings()
    sink = WebhookConsumer(endpoint.url(), timeout=10)  # the lane's: 15 s
    conv = await run(sink, 2, clock=clock, produce=meter, backoff=1, backoff_jitter=0)
    t = [s.at - endpoint.seen[0].at for s in endpoint.seen]
    assert t[0] == 0 and t[1] == pytest.approx(16, abs=0.02) and t[2] == 60
    assert [s.body for s in endpoint.accepted] == [body(0, meter.times[0]),
                                                   body(1, meter.times[1])]
    stats = conv.stats().consumer("webhook")
    assert (stats.delivered, stats.timeouts, stats.retries) == (2, 1, 1)


async def test_after_a_cancelled_request_the_session_still_works(endpoint: Endpoint) -> None:
    endpoint.plan = [Answer(hang=True)]
    async with WebhookConsumer(endpoint.url()) as sink:
        session = sink._session
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await sink({"n": 0}, T0)
        await sink({"n": 1}, T0)
        assert sink._session is session and session is not None and not session.closed
    assert [s.body["n"] for s in endpoint.accepted] == [1]


async def test_a_server_that_does_not_answer_in_time_is_retried(endpoint: Endpoint) -> None:
    endpoint.plan = [Answer(hang=True)]
    meter = readings()
    sink = WebhookConsumer(endpoint.url(), timeout=0.3)
    conv = await run(sink, 1, produce=meter, backoff=0.05)
    assert [s.body for s in endpoint.accepted] == [body(0, meter.times[0])]
    stats = conv.stats().consumer("webhook")
    assert stats.delivered == 1 and stats.retries == 1
    assert "WebhookTimeoutError" in (stats.last_error or "")
    assert "no answer within 0.3 s" in (stats.last_error or "")


async def test_a_refused_connection_is_an_error_to_retry() -> None:
    port = free_port()
    sink = WebhookConsumer(f"http://admin:{PASSWORD}@127.0.0.1:{port}/hook?token={TOKEN}")
    async with sink:
        with pytest.raises(WebhookConnectionError) as info:
            await sink({"n": 0}, T0)
    assert not isinstance(info.value, WebhookRejected)
    assert f"127.0.0.1:{port}" in str(info.value)
    for text in exception_texts(info.value):
        assert PASSWORD not in text and TOKEN not in text


async def test_a_batch_sent_in_part_resumes_after_the_last_answered_request(
        endpoint: Endpoint) -> None:
    clock = fake(endpoint)
    endpoint.plan = [Answer(200), Answer(500), Answer(200), Answer(503, {"Retry-After": "5"})]
    meter = readings()
    sink = WebhookConsumer(endpoint.url(), batch="each")
    conv = await run(sink, 4, clock=clock, produce=meter, batch_size=4, batch_age=1000,
                     backoff=1, backoff_jitter=0)
    assert [s.body["n"] for s in endpoint.seen] == [0, 1, 1, 2, 2, 3]
    assert [s.body for s in endpoint.accepted] == [body(i, t) for i, t in enumerate(meter.times)]
    stats = conv.stats().consumer("webhook")
    assert (stats.delivered, stats.retries) == (4, 2)


# -- rejected: never retried --------------------------------------------------------------


async def test_client_errors_are_rejected_and_not_retried(
        endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    clock = fake(endpoint)
    endpoint.plan = [Answer(400, body='{"error":   "no such\n sensor"}'),
                     Answer(404, body="not here")]
    sink = WebhookConsumer(endpoint.url())
    with caplog.at_level(logging.WARNING):
        conv = await run(sink, 3, clock=clock)
    assert [(s.at - endpoint.seen[0].at, s.status) for s in endpoint.seen] == [
        (0, 400), (60, 404), (120, 200)]
    stats = conv.stats().consumer("webhook")
    assert (stats.delivered, stats.rejected, stats.retries) == (1, 2, 0)
    assert sink.rejected == 2
    assert (f"POST {endpoint.url()}: HTTP 400 Bad Request: "
            '{"error": "no such sensor"} (not retried)') in caplog.text
    assert "HTTP 404 Not Found: not here (not retried)" in (stats.last_error or "")


async def test_a_redirect_is_rejected_not_followed(endpoint: Endpoint) -> None:
    endpoint.plan = [Answer(302, {"Location": "/elsewhere"})]
    async with WebhookConsumer(endpoint.url()) as sink:
        with pytest.raises(WebhookRejected, match=r"HTTP 302 Found \(redirect to /elsewhere\)"):
            await sink({"n": 0}, T0)
    assert [s.path for s in endpoint.seen] == ["/hook"]


async def test_a_rejected_batch_counts_all_its_records(endpoint: Endpoint) -> None:
    endpoint.plan = [Answer(422)]
    batch = Batch([Record({"n": i}, T0 + timedelta(seconds=i)) for i in range(3)])
    async with WebhookConsumer(endpoint.url()) as sink:
        with pytest.raises(WebhookRejected) as info:
            await sink(batch, T0)
    assert info.value.count == 3 and info.value.status == 422


async def test_records_that_cannot_be_encoded_are_rejected_the_rest_sent(
        endpoint: Endpoint) -> None:
    batch = Batch([Record({"n": 0}, T0), Record({"n": object()}, T0),
                   Record({"n": 2}, T0 + timedelta(seconds=1))])
    async with WebhookConsumer(endpoint.url()) as sink:
        with pytest.raises(WebhookRejected, match=r"1 of 3 record.*cannot be encoded as JSON"
                           ) as info:
            await sink(batch, T0)
    assert info.value.count == 1
    assert [[r["n"] for r in s.body] for s in endpoint.accepted] == [[0, 2]]


async def test_each_rejects_one_record_and_sends_the_others(endpoint: Endpoint) -> None:
    endpoint.plan = [Answer(200), Answer(400, body="bad")]
    batch = Batch([Record({"n": i}, T0 + timedelta(seconds=i)) for i in range(3)])
    async with WebhookConsumer(endpoint.url(), batch="each") as sink:
        with pytest.raises(WebhookRejected, match=r"1 of 3 record.*HTTP 400") as info:
            await sink(batch, T0)
    assert info.value.count == 1
    assert [s.body["n"] for s in endpoint.accepted] == [0, 2]


# -- authentication and secrets -------------------------------------------------------------


def no_secret_in(texts: list[str], *secrets: str) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {text!r}"


async def test_a_bearer_token_is_sent_and_never_shown(
        endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    endpoint.require = f"Bearer {TOKEN}"
    right = WebhookConsumer(endpoint.url(), token=TOKEN, name="right")
    wrong = WebhookConsumer(endpoint.url(), token=TOKEN + "-wrong", name="wrong")
    with caplog.at_level(logging.DEBUG):
        conv = AioConveyor(readings(), [right, wrong], loop_interval=0.05, max_ticks=2,
                           name="meter")
        await conv.run()
    assert len(endpoint.accepted) == 2
    assert all(s.headers["Authorization"] == f"Bearer {TOKEN}" for s in endpoint.accepted)
    stats = conv.stats()
    assert stats.consumer("right").delivered == 2
    assert stats.consumer("wrong").rejected == 2  # 401: not retried
    assert "HTTP 401 Unauthorized: bad credentials: ***" in caplog.text
    no_secret_in([*log_texts(caplog.records), repr(right), repr(wrong), str(stats)], TOKEN)


async def test_basic_auth_from_the_url_or_auth(endpoint: Endpoint,
                                               caplog: pytest.LogCaptureFixture) -> None:
    basic = base64.b64encode(f"meter:{PASSWORD}".encode()).decode()
    endpoint.require = f"Basic {basic}"
    in_url = WebhookConsumer(f"http://meter:{PASSWORD}@127.0.0.1:{endpoint.port}/hook",
                             name="in-url")
    as_auth = WebhookConsumer(endpoint.url(), auth=("meter", PASSWORD), name="as-auth")
    wrong = WebhookConsumer(endpoint.url(), auth=("meter", PASSWORD + "x"), name="wrong")
    with caplog.at_level(logging.DEBUG):
        conv = AioConveyor(readings(), [in_url, as_auth, wrong], loop_interval=0.05,
                           max_ticks=1, name="meter")
        await conv.run()
    stats = conv.stats()
    assert (stats.consumer("in-url").delivered, stats.consumer("as-auth").delivered,
            stats.consumer("wrong").rejected) == (1, 1, 1)
    assert repr(in_url) == ("<WebhookConsumer 'in-url' POST "
                            f"http://meter:***@127.0.0.1:{endpoint.port}/hook batch='array' "
                            "closed>")
    wrong_basic = base64.b64encode(f"meter:{PASSWORD}x".encode()).decode()
    no_secret_in([*log_texts(caplog.records), repr(in_url), repr(as_auth), str(stats)],
                 PASSWORD, basic, wrong_basic)


async def test_secret_headers_and_query_values_are_masked(endpoint: Endpoint,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    endpoint.plan = [Answer(403, body=f"key {TOKEN} is not allowed here; token={TOKEN}")]
    sink = WebhookConsumer(f"{endpoint.url()}?api_key={TOKEN}&site=barn",
                           headers={"X-Api-Key": TOKEN})
    assert sink.url == f"{endpoint.url()}?api_key=***&site=barn"
    with caplog.at_level(logging.DEBUG):
        async with sink:
            with pytest.raises(WebhookRejected) as info:
                await sink({"n": 0}, T0)
    assert endpoint.seen[0].headers["X-Api-Key"] == TOKEN
    assert "HTTP 403 Forbidden: key *** is not allowed here; token=***" in str(info.value)
    no_secret_in([*exception_texts(info.value), *log_texts(caplog.records), repr(sink)], TOKEN)


# -- lifecycle ------------------------------------------------------------------------------


async def test_calls_need_an_open_consumer_and_close_is_idempotent(endpoint: Endpoint) -> None:
    sink = WebhookConsumer(endpoint.url())
    with pytest.raises(RuntimeError, match="call open"):
        await sink({"n": 0}, T0)
    await sink.open()
    with pytest.raises(RuntimeError, match="already open"):
        await sink.open()
    await sink.close()
    await sink.close()
    with pytest.raises(RuntimeError, match="is closed"):
        await sink({"n": 0}, T0)


def test_retry_after_values() -> None:
    date = "Fri, 01 Jan 2027 00:00:00 GMT"
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds(" 0 ") == 0
    assert retry_after_seconds("Fri, 01 Jan 2027 00:00:30 GMT", date) == 30
    assert retry_after_seconds("Thu, 31 Dec 2026 23:59:00 GMT", date) == 0  # in the past
    assert retry_after_seconds("Fri, 01 Jan 2027 00:01:00 GMT", now=START) == 60
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None
    assert issubclass(WebhookTimeoutError, TimeoutError)
    assert issubclass(WebhookHttpError, Exception) and not issubclass(WebhookHttpError,
                                                                      RetryAfter)


def test_without_aiohttp_the_import_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['aiohttp'] = None\n"
        "import aioconveyor.consumers\n"
        "try:\n"
        "    from aioconveyor.consumers import WebhookConsumer\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without aiohttp')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert 'pip install "aioconveyor[webhook]"' in result.stdout


def test_importing_the_consumers_does_not_import_aiohttp(tmp_path: Path) -> None:
    code = ("import sys, aioconveyor, aioconveyor.consumers\n"
            "assert 'aiohttp' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_the_documented_toml_consumer_of_type_webhook(tmp_path: Path) -> None:
    from aioconveyor._config import load_config

    toml = PAGE.read_text().split("tests/test_webhook.py loads this block -->\n```toml\n",
                                  1)[1].split("```", 1)[0]
    (tmp_path / "home_meter.py").write_text("def read(event_time):\n    return {'w': 1}\n")
    (tmp_path / "conveyor.toml").write_text(toml)
    loaded = load_config(tmp_path / "conveyor.toml", env={"WEBHOOK_TOKEN": TOKEN})
    spec = loaded.specs["webhook"]
    sink = spec.fn
    assert isinstance(sink, WebhookConsumer)
    assert (sink.batch, sink._headers["X-Site"], sink._headers["Authorization"]) == (
        "array", "barn", f"Bearer {TOKEN}")
    assert (spec.batch_size, spec.batch_age) == (20, 30)
    assert sink.url == "https://api.example.com/v1/sites/barn/{producer}"
    no_secret_in([*loaded.consumers, repr(sink)], TOKEN)


def test_a_bad_toml_value_names_its_key(tmp_path: Path) -> None:
    from aioconveyor._config import ConfigError, load_config

    (tmp_path / "home_meter.py").write_text("def read(event_time):\n    return {'w': 1}\n")
    (tmp_path / "conveyor.toml").write_text(
        '[producer]\nfunction = "home_meter:read"\n[[consumers]]\ntype = "webhook"\n'
        'url = "https://api.example/x"\nmethod = "GET"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "conveyor.toml")
    assert info.value.key == "consumers[0].method"
    assert "must be 'POST' or 'PUT', got 'GET'" in str(info.value)


# -- bad input: a clear SettingError at construction ------------------------------------------

URL = "https://api.example/hook"

BAD = [
    ({"url": 5}, "url", "url must be a str, got int"),
    ({"url": "ftp://api.example/x"}, "url",
     "url must start with http:// or https://, got 'ftp://api.example/x'"),
    ({"url": "api.example/x"}, "url",
     "url must start with http:// or https://, got 'api.example/x'"),
    ({"url": f"https://u:{PASSWORD}@/x"}, "url", "url has no host: 'https://u:***@/x'"),
    ({"url": "https://api.example/{device}"}, "url",
     "url may only hold the template field {producer} (write a literal brace as {{ or }}), "
     "got 'https://api.example/{device}'"),
    ({"url": "https://api.example/{producer!r}"}, "url",
     "url may only hold the template field {producer}"),
    ({"url": "https://api.example/{producer"}, "url",
     "url is not a valid template (expected '}' before end of string): "
     "'https://api.example/{producer'"),
    ({"url": "https://{producer}.example/x"}, "url",
     "url {producer} cannot be in the host, got 'https://{producer}.example/x'"),
    ({"url": "https://api.example:99999/x"}, "url", "url is not a valid URL"),
    ({"url": "https://api.example/a b"}, "url", "url must not contain spaces"),
    ({"url": "https://api.example/x#top"}, "url", "url must not have a #fragment"),
    ({"method": "GET"}, "method", "method must be 'POST' or 'PUT', got 'GET'"),
    ({"method": None}, "method", "method must be 'POST' or 'PUT', got None"),
    ({"batch": "lines"}, "batch", "batch must be one of 'array', 'each', got 'lines'"),
    ({"timeout": 0}, "timeout", "timeout must be a finite number > 0, got 0"),
    ({"timeout": "5"}, "timeout", "timeout must be a number, got '5' (str)"),
    ({"max_retry_after": -1}, "max_retry_after",
     "max_retry_after must be a finite number > 0, got -1"),
    ({"headers": ["X-A: 1"]}, "headers", "headers must be a mapping of str to str or None, "
                                          "got list"),
    ({"headers": {"X A": "1"}}, "headers", "headers keys must be valid header names, "
                                           "got 'X A'"),
    ({"headers": {"X-Count": 1}}, "headers['X-Count']", "must be a str, got int"),
    ({"headers": {"X-Api-Key": f"{TOKEN}\r\nX-Evil: 1"}}, "headers['X-Api-Key']",
     "headers['X-Api-Key'] cannot contain line breaks or NUL, got ***"),
    ({"headers": {"X-A": "1", "x-a": "2"}}, "headers",
     "headers names 'x-a' twice (header names ignore case)"),
    ({"headers": {"Content-Length": "5"}}, "headers",
     "headers must not set 'Content-Length': the HTTP client sets it"),
    ({"headers": {"Idempotency-Key": "x"}}, "idempotency_header",
     "idempotency_header cannot be combined with headers (the consumer sets this header "
     "itself; use idempotency_header=None to send your own); got "
     "idempotency_header='Idempotency-Key'"),
    ({"idempotency_header": "Idem Key"}, "idempotency_header",
     "idempotency_header is not a valid header name, got 'Idem Key'"),
    ({"idempotency_header": ""}, "idempotency_header",
     "idempotency_header must be a non-empty str, got ''"),
    ({"token": 12345}, "token", "token must be a non-empty str or None, got int"),
    ({"token": f"{TOKEN}\n"}, "token", "token cannot contain line breaks or NUL"),
    ({"auth": (PASSWORD,)}, "auth", "auth must be a (user, password) pair of str, "
                                    "got tuple of 1"),
    ({"auth": f"meter:{PASSWORD}"}, "auth", "auth must be a (user, password) pair of str, "
                                            "got str"),
    ({"auth": ("a:b", PASSWORD)}, "auth", "auth the user name cannot contain ':'"),
    ({"auth": ("meter", PASSWORD), "token": TOKEN}, "token",
     "token cannot be combined with auth (give one way to authenticate"),
    ({"url": f"https://meter:{PASSWORD}@api.example/x", "token": TOKEN}, "url",
     "url cannot be combined with token"),
    ({"token": TOKEN, "headers": {"Authorization": f"Bearer {TOKEN}"}}, "headers",
     "headers cannot be combined with token"),
    ({"encoder": "json"}, "encoder", "encoder must be callable, got 'json' (str)"),
    ({"encoder": json.dumps, "event_time_key": "ts"}, "event_time_key",
     "event_time_key cannot be combined with encoder (event_time_key shapes the default "
     "JSON object only); got event_time_key='ts'"),
    ({"event_time_key": ""}, "event_time_key", "event_time_key must be a non-empty str, "
                                               "got ''"),
    ({"producer_key": "event_time"}, "producer_key",
     "producer_key cannot be combined with event_time_key (the two fields need different "
     "names); got producer_key='event_time'"),
    ({"data_key": None}, "data_key", "data_key must be a non-empty str, got None"),
    ({"ssl": "yes"}, "ssl", "ssl must be an ssl.SSLContext or a bool, got 'yes'"),
    ({"name": ""}, "name", "name must be a non-empty str, got ''"),
    ({"retries": -1}, "retries", "retries must be an int >= 0, got -1"),
    ({"max_backoff": 0}, "max_backoff", "max_backoff must be a finite number > 0, got 0"),
    ({"logger": "log"}, "logger", "logger must be a logging.Logger or None, got 'log'"),
]
"""The documented table of docs/consumers/webhook.md, pinned: (arguments, name, message)."""


@pytest.mark.parametrize(("kwargs", "name", "message"), BAD,
                         ids=[f"{next(iter(k))}={next(iter(k.values()))!r}"[:50]
                              for k, _, _ in BAD])
def test_bad_arguments_raise_a_setting_error_naming_them(kwargs: dict[str, Any], name: str,
                                                        message: str) -> None:
    kwargs = {"url": URL, **kwargs}
    url = kwargs.pop("url")
    with pytest.raises(SettingError) as info:
        WebhookConsumer(url, **kwargs)
    assert info.value.name == name
    assert message in str(info.value)
    no_secret_in(exception_texts(info.value), PASSWORD, TOKEN)


PAGE = Path(__file__).resolve().parent.parent / "docs" / "consumers" / "webhook.md"


def documented_bad_input() -> list[tuple[str, str]]:
    """The rows of the page's bad-input table: (call, message)."""
    table = PAGE.read_text().split("## Bad input", 1)[1]
    return re.findall(r"^\| `(WebhookConsumer\(.*\))` \| `(.*)` \|$", table, re.M)


def test_the_bad_input_table_of_the_docs_has_rows() -> None:
    assert len(documented_bad_input()) >= 15


@pytest.mark.parametrize(("call", "message"), documented_bad_input(),
                         ids=[c[16:56] for c, _ in documented_bad_input()])
def test_every_row_of_the_documented_bad_input_table_is_true(call: str, message: str) -> None:
    call = call.replace("PASSWORD", PASSWORD).replace("TOKEN", TOKEN)
    with pytest.raises(SettingError) as info:
        eval(call, {"WebhookConsumer": WebhookConsumer, "URL": URL, "json": json})
    assert str(info.value) == message.replace("\\r\\n", "\r\n")
    no_secret_in(exception_texts(info.value), PASSWORD, TOKEN)
