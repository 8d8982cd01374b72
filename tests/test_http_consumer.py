"""examples/http_consumer.py, the consumer of docs/writing-a-consumer.md, against a real HTTP
server (stdlib ``http.server`` on 127.0.0.1) through a real AioConveyor.

The server answers by path: ``/ok`` 200, ``/busy`` 429 with ``Retry-After`` (then 200),
``/date`` 503 with an HTTP-date ``Retry-After``, ``/bad`` 400, ``/hang`` nothing until the
test ends. The page's code is the example file's (checked here), and runs as it stands.
"""

from __future__ import annotations

import email.utils
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer, ConsumerStats, Rejected, RetryAfter
from aioconveyor.kit import retry_after_seconds
from aioconveyor.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "http_consumer.py"
PAGE = ROOT / "docs" / "writing-a-consumer.md"
TOKEN = "tok-5ecret-9f2a"
DATE = 1_794_999_600.0  # the stub's own clock for Date / HTTP-date Retry-After


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("http_consumer", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["http_consumer"] = module  # dataclasses / pickling look modules up by name
    spec.loader.exec_module(module)
    return module


http_consumer = load_example()
HttpJsonConsumer = http_consumer.HttpJsonConsumer


@dataclass
class Api:
    base: str
    clock: list[Any]  # [None] or [a FakeClock] whose time the server notes
    seen: list[tuple[float, str, list[Any], str | None]] = field(default_factory=list)
    busy: dict[str, int] = field(default_factory=dict)  # path -> 429s still to answer
    release: threading.Event = field(default_factory=threading.Event)

    def times(self, path: str) -> list[float]:
        start = self.seen[0][0]
        return [round(t - start, 6) for t, p, _, _ in self.seen if p == path]

    def delivered(self, path: str) -> list[Any]:
        return [row for _, p, rows, _ in self.seen if p == path for row in rows]


@pytest.fixture
def api() -> Iterator[Api]:
    state = Api(base="", clock=[None])

    class Handler(BaseHTTPRequestHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(DATE, usegmt=True)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            clock = state.clock[0]
            now = clock.monotonic() if clock is not None else time.monotonic()
            state.seen.append((now, self.path, [row["data"] for row in body],
                               self.headers.get("Authorization")))
            if self.path == "/hang":
                state.release.wait(30)
                return
            status, headers, reply = 200, {}, b""
            if self.path == "/busy" and state.busy.get(self.path, 0) > 0:
                state.busy[self.path] -= 1
                status, headers = 429, {"Retry-After": "1"}
            elif self.path.startswith("/wait/") and state.busy.get(self.path, 0) > 0:
                state.busy[self.path] -= 1
                status, headers = 429, {"Retry-After": self.path.removeprefix("/wait/")}
            elif self.path == "/date" and state.busy.get(self.path, 0) > 0:
                state.busy[self.path] -= 1
                status = 503
                headers = {"Retry-After": email.utils.formatdate(DATE + 30, usegmt=True)}
            elif self.path == "/bad":
                status, reply = 400, f'{{"error": "bad token {TOKEN}"}}'.encode()
            elif self.path == "/down":
                status = 502
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_port}"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def produce_counter() -> Any:
    n = iter(range(1_000_000))

    async def produce(event_time: datetime) -> dict[str, int]:
        return {"n": next(n)}

    return produce


async def run(sink: Any, ticks: int, clock: FakeClock | None = None, interval: float = 0.05,
              **settings: Any) -> ConsumerStats:
    options: dict[str, Any] = {"clock": clock} if clock is not None else {}
    conv = AioConveyor(produce_counter(), [Consumer(sink, **settings)], loop_interval=interval,
                       max_ticks=ticks, stop_timeout=60, **options)
    await conv.run()
    return conv.stats().consumer(sink.name)


# -- against the real server on the real clock --------------------------------------------


async def test_batches_arrive_as_json_with_the_token(api: Api) -> None:
    sink = HttpJsonConsumer(f"{api.base}/ok", token=TOKEN)
    stats = await run(sink, 6, batch_size=3, batch_age=10)
    assert api.delivered("/ok") == [{"n": i} for i in range(6)]
    assert [len(rows) for _, _, rows, _ in api.seen] == [3, 3]  # two batches of three
    assert {auth for *_, auth in api.seen} == {f"Bearer {TOKEN}"}
    assert (stats.delivered, stats.failed, stats.rejected, stats.errors) == (6, 0, 0, 0)


async def test_429_waits_as_told_then_sends_the_same_batch(api: Api) -> None:
    api.busy["/busy"] = 1
    sink = HttpJsonConsumer(f"{api.base}/busy")
    stats = await run(sink, 1)
    (first, _, rows1, _), (second, _, rows2, _) = api.seen
    assert 1.0 <= second - first < 1.5  # Retry-After: 1, the lane's own backoff unused
    assert rows1 == rows2 == [{"n": 0}]
    assert (stats.delivered, stats.retries, stats.failed) == (1, 1, 0)


async def test_400_is_rejected_without_retry_and_without_the_token(api: Api) -> None:
    sink = HttpJsonConsumer(f"{api.base}/bad", token=TOKEN)
    stats = await run(sink, 1, retries=5)
    assert len(api.seen) == 1  # never retried
    assert (stats.rejected, stats.delivered, stats.retries, stats.failed) == (1, 0, 0, 0)
    assert stats.last_error is not None and stats.last_error.startswith("Rejected: HTTP 400")
    assert "bad token ***" in stats.last_error and TOKEN not in stats.last_error


async def test_5xx_is_retried_with_the_lanes_backoff(api: Api) -> None:
    sink = HttpJsonConsumer(f"{api.base}/down")
    stats = await run(sink, 1, retries=2, backoff=0.05, backoff_jitter=0)
    assert len(api.seen) == 3
    assert (stats.failed, stats.retries) == (1, 2)
    assert stats.last_error == "HttpError: HTTP 502"


async def test_a_hanging_server_is_timed_out_by_the_consumer(api: Api) -> None:
    sink = HttpJsonConsumer(f"{api.base}/hang", token=TOKEN, timeout=0.3)
    started = time.monotonic()
    stats = await run(sink, 1, retries=0)
    assert time.monotonic() - started < 5
    assert len(api.seen) == 1
    assert (stats.failed, stats.timeouts, stats.abandoned) == (1, 0, 0)  # urllib gave up first
    assert stats.last_error is not None
    assert re.fullmatch(r"TimeoutError: <HttpJsonConsumer 'http' http://127\.0\.0\.1:\d+/hang>"
                        r": no answer within 0\.3 s", stats.last_error)


async def test_a_hang_past_the_lane_timeout_is_a_consumer_timeout(api: Api) -> None:
    sink = HttpJsonConsumer(f"{api.base}/hang", timeout=30)
    stats = await run(sink, 1, retries=0, timeout=0.3)
    assert (stats.failed, stats.timeouts) == (1, 1)
    assert stats.last_error is not None and stats.last_error.startswith("ConsumerTimeout")


async def test_refused_connection_is_an_error_without_the_password(api: Api) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_port
    server.server_close()  # nothing listens there now
    sink = HttpJsonConsumer(f"http://127.0.0.1:{port}/x?password=hunter22", token=TOKEN)
    assert "hunter22" not in repr(sink) and "password=***" in repr(sink)
    stats = await run(sink, 1, retries=0)
    assert stats.failed == 1 and stats.last_error is not None
    assert stats.last_error.startswith("ConnectionError: <HttpJsonConsumer 'http' http://")
    assert "hunter22" not in stats.last_error and TOKEN not in stats.last_error


async def test_records_that_are_not_json_are_rejected_the_rest_delivered(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    n = iter(range(100))

    async def produce(event_time: datetime) -> Any:
        i = next(n)
        return {i} if i % 2 else {"n": i}  # every other reading is a set: not JSON

    sink = HttpJsonConsumer(f"{api.base}/ok")
    conv = AioConveyor(produce, [Consumer(sink, batch_size=4, batch_age=10)],
                       loop_interval=0.02, max_ticks=8, stop_timeout=30)
    with caplog.at_level("WARNING", logger="http_consumer"):
        await conv.run()
    stats = conv.stats().consumer("http")
    assert api.delivered("/ok") == [{"n": 0}, {"n": 2}, {"n": 4}, {"n": 6}]
    assert (stats.delivered, stats.rejected, stats.failed) == (4, 4, 0)
    skipped = [r for r in caplog.records if r.name == "http_consumer"]
    assert len(skipped) == 1  # four alike, logged once (rate-limited)
    assert "skipped a record: Object of type set is not JSON serializable" in skipped[0].message


# -- on a FakeClock: exact retry times ------------------------------------------------------


async def test_batch_age_and_retry_after_on_a_fake_clock(api: Api) -> None:
    """consumer_defaults: a batch waits batch_age (5 s) for more records; a stop flushes."""
    clock = FakeClock(start=DATE, thread_grace=10.0)  # real HTTP on a busy machine
    api.clock[0] = clock
    api.busy["/wait/7"] = 1
    first_tick = clock.monotonic() + 60  # DATE is on the grid: the first tick is a minute on
    stats = await run(HttpJsonConsumer(f"{api.base}/wait/7"), 2, clock, interval=60)
    assert [t - first_tick for t, *_ in api.seen] == [5, 12, 60]
    assert api.delivered("/wait/7") == [{"n": 0}, {"n": 0}, {"n": 1}]
    assert stats.delivered == 2


async def test_retry_after_times_are_exact_on_a_fake_clock(api: Api) -> None:
    clock = FakeClock(start=DATE, thread_grace=10.0)  # real HTTP on a busy machine
    api.clock[0] = clock
    api.busy["/wait/7"] = 2
    stats = await run(HttpJsonConsumer(f"{api.base}/wait/7"), 2, clock, interval=60,
                      batch_size=1)
    assert api.times("/wait/7") == [0, 7, 14, 60]  # two 429s, then OK; next tick on the grid
    assert (stats.delivered, stats.retries) == (2, 2)


async def test_http_date_retry_after_counts_from_the_answers_date(api: Api) -> None:
    clock = FakeClock(start=DATE, thread_grace=10.0)  # real HTTP on a busy machine
    api.clock[0] = clock
    api.busy["/date"] = 1
    stats = await run(HttpJsonConsumer(f"{api.base}/date"), 1, clock, interval=60,
                      batch_size=1)
    assert api.times("/date") == [0, 30]
    assert stats.delivered == 1


async def test_a_long_retry_after_is_capped(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=DATE, thread_grace=10.0)  # real HTTP on a busy machine
    api.clock[0] = clock
    api.busy["/wait/86400"] = 1
    sink = HttpJsonConsumer(f"{api.base}/wait/86400", max_retry_after=120)
    with caplog.at_level("WARNING", logger="http_consumer"):
        stats = await run(sink, 3, clock, interval=100, batch_size=1)
    # waits 120 s, not a day: then the item of the tick at 100 s, queued meanwhile
    assert api.times("/wait/86400") == [0, 120, 120, 200]
    assert (stats.delivered, stats.retries) == (3, 1)
    assert any("asked to wait 86400 s; waiting 120 s" in r.message for r in caplog.records)


# -- the pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "date", "seconds"), [
    ("120", None, 120.0),
    (" 0 ", None, 0.0),
    (email.utils.formatdate(DATE + 90, usegmt=True), email.utils.formatdate(DATE, usegmt=True),
     90.0),
    (email.utils.formatdate(DATE - 90, usegmt=True), email.utils.formatdate(DATE, usegmt=True),
     0.0),  # already past: retry now
    (None, None, None),
    ("soon", None, None),
    ("-5", None, None),
    ("1.5", None, 1.5),  # not RFC 9110 (digits only), but sent by some servers
    ("inf", None, None),
    ("nan", None, None),
    ("1e3", None, None),
])
def test_retry_after_header(value: str | None, date: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, date) == seconds


def test_an_http_date_without_a_date_header_counts_from_now() -> None:
    soon = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= (retry_after_seconds(soon) or 0) <= 60


def test_what_the_consumer_raises_is_what_the_lane_understands() -> None:
    sink = HttpJsonConsumer("https://api.example.com/v1/readings", token=TOKEN)
    with pytest.raises(RetryAfter) as retry:
        sink._check(429, email.message_from_string("Retry-After: 3\n\n"), "")
    assert retry.value.seconds == 3
    with pytest.raises(Rejected):
        sink._check(404, email.message_from_string("\n"), "nope")
    with pytest.raises(http_consumer.HttpError):  # 429 without Retry-After: lane's backoff
        sink._check(429, email.message_from_string("\n"), "")
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpJsonConsumer("ftp://example.com/")
    assert sink.consumer_defaults["timeout"] == sink.timeout + 5
    assert repr(sink) == "<HttpJsonConsumer 'http' https://api.example.com/v1/readings>"


def test_the_example_runs_as_a_script() -> None:
    """``python examples/http_consumer.py``: its own FakeClock check against a stub API."""
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[(0.0, 429, [0]), (7.0, 200, [0]), (60.0, 400, [2])]"


# -- the docs page shows this very code -----------------------------------------------------


def page_blocks() -> list[tuple[bool, str]]:
    """(marked ``<!-- test -->``?, code) of every python block of the page."""
    text = PAGE.read_text()
    return [(bool(mark), code) for mark, code in
            re.findall(r"(<!-- test -->\n)?```python\n(.*?)\n```", text, re.S)]


def test_the_page_shows_the_whole_example_file_as_a_tested_block() -> None:
    marked = [code for mark, code in page_blocks() if mark]
    assert marked == [EXAMPLE.read_text().rstrip("\n")]


def test_every_excerpt_on_the_page_is_in_the_example_file() -> None:
    source = EXAMPLE.read_text()
    excerpts = [code for mark, code in page_blocks() if not mark]
    assert len(excerpts) >= 4
    for code in excerpts:
        assert code in source, code[:200]


def test_the_pages_tested_block_runs_like_the_docs_runner_runs_it(tmp_path: Path) -> None:
    """As tests/test_docs.py runs README blocks: ``python -c`` in an empty directory."""
    (code,) = [code for mark, code in page_blocks() if mark]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
