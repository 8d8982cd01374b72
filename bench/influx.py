"""InfluxDB line protocol: points/s of InfluxConsumer through the conveyor vs raw aiohttp.

Both write the same records (a tag and three fields each, millisecond-spaced timestamps)
as gzip-compressed line-protocol batches of ``CHUNK`` points to ``/write`` of the same
private VictoriaMetrics (started here on a free loopback port, data in a temporary folder),
each method in a fresh process:

* ``raw aiohttp``: one ``aiohttp.ClientSession``; each batch is encoded with a plain
  f-string per point (tag escaped, integer ``i`` suffix, nanosecond timestamp), gzipped
  and POSTed, one request after the other: what a hand-written client must do, no checks.
* ``conveyor``: ``AioConveyor`` whose producer returns a :class:`~aioconveyor.Batch` of
  ``CHUNK`` records per tick, written by ``InfluxConsumer`` (which also checks every value:
  NaN, nested values, line breaks) with ``Consumer(batch_size=1, copy=False,
  overflow="block", queue_size=4)`` and a tick every ``TICK`` s on ``SystemClock(busy=0)``
  (the real clock, never spinning: a ``FakeClock`` cannot see aiohttp's requests in flight
  and would jump to the stop deadline), more often than a request completes, so the
  consumer is the bottleneck.

Timed from the first batch to the last answer (wall clock for points/s; the client
process's CPU time, which depends less on the machine's load, for µs/point); the test
data is built and frozen (``gc.freeze()``) before the clock starts. Afterwards
the points of each run are counted in the server (``/api/v1/export``): every one stored.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ._util import Row, Section, Target, ratio, run_worker, settle_garbage

CHUNK = 1000
TICK = 0.002
QUEUE = 4
"""Seconds between ticks: far less than a request takes, so the lane's queue stays full."""
T0 = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TABLE_COLUMNS = [
    ("method", "method"), ("runs", "runs"), ("points", "points"), ("seconds", "seconds"),
    ("points_per_s", "points/s"), ("vs_raw", "x raw aiohttp"),
    ("cpu_us", "client CPU µs/point"),
]


def make_records(n: int) -> list[tuple[dict[str, Any], datetime]]:
    return [({"site": f"site-{i % 8}", "power_w": i * 0.5, "energy_wh": i, "ok": i % 2 == 0},
             T0 + timedelta(milliseconds=i)) for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Victoria:
    """A private VictoriaMetrics for the benchmark's runs."""

    def __init__(self) -> None:
        binary = shutil.which("victoria-metrics")
        if binary is None:
            raise RuntimeError("victoria-metrics is not installed (apt-get install "
                               "victoria-metrics)")
        self.folder = Path(tempfile.mkdtemp(prefix="aioconveyor-bench-vm-"))
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [binary, f"-storageDataPath={self.folder}", f"-httpListenAddr=127.0.0.1:{port}",
             "-retentionPeriod=100y", "-loggerLevel=ERROR", "-dedup.minScrapeInterval=1ms"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until = time.monotonic() + 60
        while time.monotonic() < until:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("victoria-metrics did not start")

    def count(self, metric: str, expect: int) -> int:
        """Samples of ``metric``, polled (bounded) until ``expect`` are readable."""
        until = time.monotonic() + 30
        params = urllib.parse.urlencode({"match[]": f'{{__name__="{metric}"}}'})
        while True:
            urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30).close()
            with urllib.request.urlopen(f"{self.url}/api/v1/export?{params}",
                                        timeout=60) as answer:
                got = sum(len(json.loads(line)["values"])
                          for line in answer.read().decode().splitlines() if line.strip())
            if got >= expect or time.monotonic() > until:
                return got
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _line(measurement: str, data: dict[str, Any], when: datetime) -> str:
    """The raw peer's encoder: one f-string, no checks."""
    site = data["site"].replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")
    ns = (when - EPOCH) // timedelta(microseconds=1) * 1000
    return (f"{measurement},site={site} power_w={data['power_w']!r},"
            f"energy_wh={data['energy_wh']}i,ok={'true' if data['ok'] else 'false'} {ns}")


async def _raw(url: str, measurement: str,
               records: list[tuple[dict[str, Any], datetime]]) -> tuple[float, float]:
    import aiohttp

    headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip"}
    settle_garbage()
    async with aiohttp.ClientSession() as session:
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(records), CHUNK):
            lines = [_line(measurement, data, when) for data, when in records[i:i + CHUNK]]
            body = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1, mtime=0)
            async with session.post(f"{url}/write", params={"precision": "ns"}, data=body,
                                    headers=headers) as answer:
                assert answer.status == 204, answer.status
        return time.perf_counter() - started, time.process_time() - cpu


async def _conveyor(url: str, measurement: str,
                    records: list[tuple[dict[str, Any], datetime]]) -> tuple[float, float]:
    from aioconveyor import AioConveyor, Batch, Consumer, Record, SystemClock
    from aioconveyor.consumers import InfluxConsumer

    # the producer cannot keep up with TICK while the queue is full: those ticks are
    # missed on purpose, not worth a warning each
    logging.getLogger("aioconveyor").setLevel(logging.ERROR)
    batch = [Record(data, when) for data, when in records]
    settle_garbage()
    first: list[float] = []
    position = 0
    batches = len(records) // CHUNK

    async def produce(event_time: datetime) -> Batch:
        nonlocal position
        if not first:
            first.extend((time.perf_counter(), time.process_time()))
        chunk = Batch(batch[position:position + CHUNK])
        position += CHUNK
        return chunk

    last: list[float] = []

    class Timed(InfluxConsumer):
        """Notes when the last batch was written: the conveyor's stop (closing the
        session, joining its threads) is not part of the throughput, as the raw peer's
        session close is not."""

        calls = 0

        async def __call__(self, data: Any, event_time: datetime) -> None:
            await super().__call__(data, event_time)
            Timed.calls += 1
            if Timed.calls == batches:
                last.extend((time.perf_counter(), time.process_time()))

    sink = Timed(url, measurement=measurement, tags=["site"], name="influx")
    consumer = Consumer(sink, batch_size=1, copy=False, overflow="block", queue_size=QUEUE,
                        timeout=math.inf)
    # busy=0: the clock never spins for punctuality, which would take turns of the loop
    # (and CPU of the server's core) from the consumer; throughput is what is measured
    conv = AioConveyor(produce, [consumer], loop_interval=TICK, clock=SystemClock(busy=0),
                       max_ticks=batches, name="bench-influx", stop_timeout=600)
    await conv.run()
    ended, cpu = last
    stats = conv.stats().consumer("influx")
    assert stats.delivered == batches and stats.errors == 0, stats
    assert sink.written == len(records), (sink.written, stats)
    return ended - first[0], cpu - first[1]


def influx_run(method: str, url: str, points: int) -> Row:
    measurement = f"bench_{method}_{time.time_ns()}"
    data = make_records(points)
    runner = _raw if method == "raw" else _conveyor
    seconds, cpu = asyncio.run(runner(url, measurement, data))
    return {"points": points, "seconds": seconds, "points_per_s": points / seconds,
            "cpu_us": cpu / points * 1e6, "measurement": measurement}


def _median_row(runs: list[Row]) -> Row:
    """The run with the median throughput, and how many runs there were."""
    ordered = sorted(runs, key=lambda row: row["points_per_s"])
    return ordered[len(ordered) // 2] | {"runs": len(runs)}


def run(quick: bool) -> Section:
    points, repeats = (50_000, 3) if quick else (100_000, 9)
    section = Section(
        "influx", "InfluxDB line protocol: points/s to a private VictoriaMetrics",
        TABLE_COLUMNS,
        notes=[f"batches of {CHUNK} points, gzip level 1, one request at a time (both)",
               "the raw peer encodes each point with one f-string and no checks; the "
               "consumer checks every value (NaN, nested values, line breaks, escapes)",
               f"each row: the median of {repeats} runs, raw and conveyor interleaved, "
               "each in a fresh process; every point of every run counted in the server"],
    )
    server = Victoria()
    try:
        runs: dict[str, list[Row]] = {"raw": [], "conveyor": []}
        for _ in range(repeats):
            for method in ("raw", "conveyor"):
                row = run_worker("bench.influx", "influx_run", timeout=600.0, method=method,
                                 url=server.url, points=points)
                stored = server.count(f"{row.pop('measurement')}_power_w", points)
                assert stored == points, f"{method}: {stored} of {points} points stored"
                runs[method].append(row)
    finally:
        server.stop()
    raw, conv = _median_row(runs["raw"]), _median_row(runs["conveyor"])
    raw |= {"method": "raw aiohttp", "vs_raw": 1.0}
    conv |= {"method": "conveyor + InfluxConsumer",
             "vs_raw": ratio(conv["points_per_s"], raw["points_per_s"])}
    section.rows += [raw, conv]
    section.targets.append(Target("InfluxDB consumer vs raw aiohttp", ">= 90 %",
                                  100 * conv["vs_raw"], 90.0, higher_is_better=True, unit="%"))
    return section
