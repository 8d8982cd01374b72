"""11. Webhook: requests/s of WebhookConsumer through the conveyor vs raw aiohttp.

One local HTTP server (aiohttp.web in a process of its own, on 127.0.0.1 and a free port)
parses every body as JSON, counts the records and answers 204. Against it, each method in
a fresh process, the same bodies (a small mapping plus ``event_time`` and ``producer``,
compact JSON, with the same ``Content-Type`` and ``Idempotency-Key`` headers):

* ``batch each``: one record per request, one request after the other. Raw: one
  ``aiohttp.ClientSession`` posting them in a loop, JSON-encoding each (with one
  ``json.JSONEncoder`` built beforehand; an array is encoded in one call). Conveyor: a
  producer returning a :class:`~aioconveyor.Batch` of ``CHUNK`` records per tick (every
  10 ms on the real clock, more than the consumer can send: it is the bottleneck), sent by
  ``WebhookConsumer(batch="each")``.
* ``array``: ``ARRAY`` records per request as one JSON array (records/s). Raw: posting the
  arrays in a loop; conveyor: a Batch of ``ARRAY`` records per tick, ``batch="array"``,
  ticks driven by a ``FakeClock`` so they come as fast as the consumer takes them (a real
  clock would need a tick every millisecond).
* ``each``: one record per *tick*, each its own request (the way a webhook is usually
  fed), ticks driven by a ``FakeClock`` so they come as fast as the consumer takes them:
  this adds the engine's cost per tick.

The ``FakeClock`` is moved by hand (``autojump=False``): each call the consumer starts
advances it one interval, so the next tick is produced while the request is on the
network and one item always waits ready (as the raw loop always has its next body). Its
autojump would instead turn the loop over (``sleep(0)``) while a request waits for its
answer, taking CPU from the client and the server on a 2-core machine (measured here:
about 0.3 ms of CPU per request). With ``timeout=math.inf`` no timer but the ticks is due.

The conveyor runs with ``Consumer(copy=False, overflow="block", queue_size=4,
timeout=math.inf)`` and is timed from the first producer call to the last delivery; raw
from the first request to the last answer. The server's counts are checked after each run.
Raw and conveyor runs alternate, ``RUNS`` of each (``--quick``: 5); the fastest of each
counts (on a shared machine the other processes' load only ever slows a run down), next to
the median of the ratios of the pairs run one after the other.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from ._util import ROOT, CallDriven, Row, Section, Target, ratio, run_worker, settle_garbage

CHUNK = 500
ARRAY = 100
RUNS = 9
"""Runs of each method per row (``--quick``: 5)."""
T0 = datetime(2026, 1, 1, tzinfo=UTC)

TABLE_COLUMNS = [
    ("method", "method"), ("mode", "mode"), ("requests", "requests"), ("records", "records"),
    ("seconds", "seconds"), ("req_per_s", "requests/s"), ("rec_per_s", "records/s"),
    ("vs_raw", "x raw aiohttp"), ("pairs", "median x raw of the pairs"),
    ("cpu_us", "client CPU µs/request"),
]

SERVER = r"""
import json, sys
from aiohttp import web

counts = {"requests": 0, "records": 0}

async def hook(request):
    body = json.loads(await request.read())
    counts["requests"] += 1
    counts["records"] += len(body) if isinstance(body, list) else 1
    return web.Response(status=204)

async def stats(request):
    return web.json_response(counts)

app = web.Application()
app.router.add_post("/hook", hook)
app.router.add_get("/stats", stats)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def make_records(n: int) -> list[tuple[dict[str, Any], datetime]]:
    return [({"sensor": f"sensor-{i % 16}", "n": i, "value": i * 0.5, "ok": i % 2 == 0},
             T0 + timedelta(milliseconds=i)) for i in range(n)]


def _stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url.replace("/hook", "/stats"), timeout=10) as response:
        result: dict[str, int] = json.loads(response.read())
    return result


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
"""The raw client's JSON encoder, built once (as the consumer's is)."""


def _value(data: dict[str, Any], when: datetime, producer: str) -> dict[str, Any]:
    return {**data, "event_time": when.isoformat(), "producer": producer}


def _key(when: datetime, producer: str) -> str:
    return f"{producer}/{when.isoformat()}" if producer else when.isoformat()


async def _raw(mode: str, url: str,
               records: list[tuple[dict[str, Any], datetime]]) -> tuple[float, float]:
    import aiohttp

    producer = "bench" if mode == "each" else ""
    settle_garbage()
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        started, cpu = time.perf_counter(), time.process_time()
        if mode == "array":
            for i in range(0, len(records), ARRAY):
                chunk = records[i:i + ARRAY]
                body = _ENCODE([_value(d, w, producer) for d, w in chunk]).encode()
                key = f"{_key(chunk[0][1], producer)}..{_key(chunk[-1][1], producer)}"
                async with session.post(url, data=body, headers={"Idempotency-Key": key}) as r:
                    await r.read()
                    assert r.status == 204, r.status
        else:
            for data, when in records:
                async with session.post(url, data=_ENCODE(_value(data, when, producer)).encode(),
                                        headers={"Idempotency-Key": _key(when, producer)}) as r:
                    await r.read()
                    assert r.status == 204, r.status
        return time.perf_counter() - started, time.process_time() - cpu


async def _conveyor(mode: str, url: str,
                    records: list[tuple[dict[str, Any], datetime]]) -> tuple[float, float]:
    from aioconveyor import AioConveyor, Batch, Consumer, Record
    from aioconveyor.consumers import WebhookConsumer

    chunk = {"each": 1, "batch each": CHUNK, "array": ARRAY}[mode]
    items = [Record(data, when) for data, when in records]
    settle_garbage()
    ticks = len(records) // chunk
    first: list[float] = []
    last: list[float] = []
    position = 0

    async def produce(event_time: datetime) -> Any:
        nonlocal position
        if not first:
            first.extend((time.perf_counter(), time.process_time()))
        if position >= len(records):
            return None  # all handed over: nothing this tick
        if mode == "each":
            data = records[position][0]
            position += 1
            return data
        batch = Batch(items[position:position + chunk])
        position += chunk
        return batch

    driven = CallDriven()

    class Timed(WebhookConsumer):
        """Notes when the last record was delivered, then stops the conveyor (not by
        ``max_ticks``: the stop deadline on a FakeClock would jump over a request in flight).
        Each call it starts lets the next tick come (``drive``)."""

        calls = 0

        async def __call__(self, data: Any, event_time: datetime) -> None:
            driven.started()
            await super().__call__(data, event_time)
            Timed.calls += 1
            if Timed.calls == ticks:
                last.extend((time.perf_counter(), time.process_time()))
                conv.stop()

    sink = Timed(url, batch="array" if mode == "array" else "each", name="webhook")
    consumer = Consumer(sink, batch_size=1, copy=False, overflow="block", queue_size=4,
                        timeout=math.inf)
    if mode == "batch each":  # the real clock: 500 requests a tick take longer than 10 ms
        conv = AioConveyor(produce, [consumer], loop_interval=0.01, name="bench",
                           stop_timeout=600)
        await conv.run()
    else:  # a FakeClock moved by each call the consumer starts (bench._util.CallDriven)
        conv = AioConveyor(produce, [consumer], loop_interval=1.0, clock=driven.clock,
                           name="bench", stop_timeout=600)
        await driven.run(conv)
    stats = conv.stats().consumer("webhook")
    assert stats.delivered == ticks and stats.errors == 0 and last, stats
    return last[0] - first[0], last[1] - first[1]


def webhook_run(method: str, mode: str, url: str, records: int) -> Row:
    import aiohttp  # noqa: F401 - imported before the clocks start, as by an application

    if method != "raw":
        import aioconveyor.consumers.webhook
        import aioconveyor.testing  # noqa: F401

    data = make_records(records)
    before = _stats(url)
    runner = _raw if method == "raw" else _conveyor
    seconds, cpu = asyncio.run(runner(mode, url, data))
    after = _stats(url)
    requests = records // ARRAY if mode == "array" else records
    assert after["records"] - before["records"] == records, (before, after)
    assert after["requests"] - before["requests"] == requests, (before, after)
    return {"requests": requests, "records": records, "seconds": seconds,
            "req_per_s": requests / seconds, "rec_per_s": records / seconds,
            "cpu_us": 1e6 * cpu / requests}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=ROOT,
                            env=dict(os.environ), stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/hook"
    deadline = time.monotonic() + 30
    while True:
        try:
            _stats(url)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the benchmark's HTTP server did not start") from None
            time.sleep(0.05)


def run(quick: bool) -> Section:
    repeats = 5 if quick else RUNS
    counts = {"batch each": 3_000 if quick else 10_000, "array": 30_000 if quick else 100_000,
              "each": 3_000 if quick else 10_000}
    section = Section(
        "webhook", "Webhook: requests/s to a local aiohttp server", TABLE_COLUMNS,
        notes=["one server process (aiohttp.web: parses each body, answers 204), the client "
               "in a fresh process per row; requests one after the other on one session",
               f"batch each: a Batch of {CHUNK} records per tick (every 10 ms), one request "
               f"per record; array: {ARRAY} records per request as a JSON array, a tick each; "
               "each: one record per tick, one request each; array and each on a FakeClock "
               "advanced by each call the consumer starts (no autojump polling the loop)",
               f"raw and conveyor runs alternate, {repeats} of each: the rows are the fastest "
               "run of each (on a shared, busy machine the least disturbed), next to the median of "
               "the ratios of the runs made one after the other; client CPU: the lowest "
               "process_time over the same span as the wall time (the conveyor's start and "
               "stop excluded)"],
    )
    proc, url = _start_server()
    try:
        for mode, records in counts.items():
            runs: dict[str, list[Row]] = {"raw": [], "conveyor": []}
            for _ in range(repeats):
                for method in ("raw", "conveyor"):
                    runs[method].append(run_worker(
                        "bench.webhook", "webhook_run", timeout=900.0, method=method,
                        mode=mode, url=url, records=records))
            raw, conv = (dict(min(runs[m], key=lambda r: r["seconds"]))
                         for m in ("raw", "conveyor"))
            for method, row in (("raw", raw), ("conveyor", conv)):
                row["cpu_us"] = min(r["cpu_us"] for r in runs[method])
            pairs = sorted(c["rec_per_s"] / r["rec_per_s"]
                           for r, c in zip(runs["raw"], runs["conveyor"], strict=True))
            raw |= {"method": "raw aiohttp", "mode": mode, "vs_raw": 1.0, "pairs": 1.0}
            conv |= {"method": "conveyor + WebhookConsumer", "mode": mode,
                     "vs_raw": ratio(conv["rec_per_s"], raw["rec_per_s"]),
                     "pairs": statistics.median(pairs)}
            section.rows += [raw, conv]
            section.targets.append(
                Target(f"Webhook consumer vs raw aiohttp, {mode}", ">= 90 %",
                       100 * conv["vs_raw"], 90.0, higher_is_better=True, unit="%"))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return section
