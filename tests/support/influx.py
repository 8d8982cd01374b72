"""Private InfluxDB 1.x and VictoriaMetrics servers for the tests, and an HTTP stage in
front of them that throttles or refuses on purpose.

Each server runs from its Debian package's binary (``influxd``, ``victoria-metrics``) on a
free loopback port with its data in a temporary folder, started once per test session and
stopped at its end. A missing binary skips its tests locally and fails them under
``CI=true`` (``.ci/run`` installs the packages when they are missing).
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support.services import free_port, in_ci

INFLUXD = "influxd"
VICTORIA = "victoria-metrics"
INSTALL_HINT = ("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
                "influxdb victoria-metrics")
DATABASE = "test"
"""The database the private influxd has from the start."""


def require_binary(name: str) -> str:
    """The path of ``name``; skip (locally) or fail (CI=true) when it is not installed."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if found is None:
        reason = f"{name} is not installed; install it with: {INSTALL_HINT}"
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    return found


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One plain request; the status and the body (an HTTP error is an answer too)."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


@dataclass
class Server:
    """One private server process; ``url`` is its base URL."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    folder: Path
    log: Path

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def wait_ready(self, path: str, ok: Callable[[int], bool], deadline: float = 60.0) -> None:
        """Poll ``path`` until ``ok(status)``, at most ``deadline`` seconds (bounded)."""
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            if self.process.poll() is not None:
                break
            try:
                status, _ = http("GET", self.url + path, timeout=2)
                if ok(status):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.url}{path}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _spawn(name: str, argv: list[str], folder: Path, port: int) -> Server:
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=folder)
    return Server(name, f"http://127.0.0.1:{port}", process, folder, log)


def start_influxd() -> Server:
    """A private InfluxDB 1.x with the database ``test``."""
    binary = require_binary(INFLUXD)
    folder = Path(tempfile.mkdtemp(prefix="aioconveyor-influxd-"))
    port, rpc = free_port(), free_port()
    config = folder / "influxd.conf"
    config.write_text(
        "reporting-disabled = true\n"
        f'bind-address = "127.0.0.1:{rpc}"\n'
        f'[meta]\n  dir = "{folder / "meta"}"\n'
        f'[data]\n  dir = "{folder / "data"}"\n  wal-dir = "{folder / "wal"}"\n'
        "  query-log-enabled = false\n"
        "[monitor]\n  store-enabled = false\n"
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
        "[continuous_queries]\n  enabled = false\n"
    )
    server = _spawn("influxd", [binary, "run", "-config", str(config)], folder, port)
    server.wait_ready("/ping", lambda status: status == 204)
    status, body = http("POST", f"{server.url}/query",
                        urllib.parse.urlencode({"q": f"CREATE DATABASE {DATABASE}"}).encode())
    assert status == 200, body
    return server


def start_victoria(*, username: str | None = None, password: str | None = None) -> Server:
    """A private VictoriaMetrics keeping every timestamp (100 years of retention); with
    ``username``/``password`` it asks for HTTP basic auth (``-httpAuth.*``)."""
    binary = require_binary(VICTORIA)
    folder = Path(tempfile.mkdtemp(prefix="aioconveyor-victoria-"))
    port = free_port()
    argv = [binary, f"-storageDataPath={folder / 'data'}", f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y", "-search.latencyOffset=0s", "-loggerLevel=ERROR",
            # a point written again (a retried batch) replaces itself, as in InfluxDB
            "-dedup.minScrapeInterval=1ms"]
    if username is not None:
        argv += [f"-httpAuth.username={username}", f"-httpAuth.password={password or ''}"]
    server = _spawn("victoria-metrics", argv, folder, port)
    server.wait_ready("/health", lambda status: status in (200, 401))
    return server


# -- reading back -------------------------------------------------------------------------


def influxql(server_url: str, query: str, database: str = DATABASE) -> list[dict[str, Any]]:
    """The series of an InfluxQL query, timestamps in nanoseconds."""
    params = urllib.parse.urlencode({"db": database, "q": query, "epoch": "ns"})
    status, body = http("GET", f"{server_url}/query?{params}")
    assert status == 200, body
    result = json.loads(body)["results"][0]
    assert "error" not in result, result
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def influx_rows(server_url: str, measurement: str) -> list[dict[str, Any]]:
    """Every point of ``measurement`` as a dict of column to value (``time`` in ns)."""
    rows = []
    for series in influxql(server_url, f'SELECT * FROM "{measurement}"'):
        for values in series["values"]:
            rows.append({k: v for k, v in zip(series["columns"], values, strict=True)
                         if v is not None})
    return rows


def victoria_export(server_url: str, match: str = '{__name__=~".+"}',
                    headers: dict[str, str] | None = None, *, expect: int = 1,
                    deadline: float = 15.0) -> list[dict[str, Any]]:
    """Every series matching ``match``: ``{"metric", "values", "timestamps" (ms)}``.

    What was just written becomes readable a moment later: this polls (bounded by
    ``deadline``) until at least ``expect`` samples are there, then returns what is."""
    until = time.monotonic() + deadline
    params = urllib.parse.urlencode({"match[]": match})
    while True:
        status, body = http("GET", f"{server_url}/internal/force_flush", headers=headers)
        assert status == 200, body
        status, body = http("GET", f"{server_url}/api/v1/export?{params}", headers=headers)
        assert status == 200, body
        series = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if sum(len(s["values"]) for s in series) >= expect or time.monotonic() > until:
            return series
        time.sleep(0.1)


def victoria_points(server_url: str, match: str = '{__name__=~".+"}',
                    headers: dict[str, str] | None = None, *, expect: int = 1,
                    ) -> list[tuple[str, tuple[tuple[str, str], ...], float, int]]:
    """Every sample as ``(name, sorted labels, value, timestamp in ms)``, sorted (a sample
    stored twice is there twice)."""
    points = []
    for series in victoria_export(server_url, match, headers, expect=expect):
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        for value, stamp in zip(series["values"], series["timestamps"], strict=True):
            points.append((name, tuple(sorted(labels.items())), value, stamp))
    return sorted(points)


def victoria_count(server_url: str, match: str, *, expect: int = 1) -> int:
    """How many samples match (a point written twice would count twice, but the private
    server deduplicates samples of the same series and millisecond)."""
    return sum(len(series["values"])
               for series in victoria_export(server_url, match, expect=expect))


# -- a stage in front of a real server ----------------------------------------------------


@dataclass
class Seen:
    """One request the stage got: when (monotonic), the answer it gave, the body's lines."""

    at: float
    status: int
    lines: list[str]


Answer = tuple[int, dict[str, str], bytes]
"""``(status, headers, body)`` the stage answers with itself instead of forwarding."""


@dataclass
class Stage:
    """An HTTP server on 127.0.0.1 in front of ``upstream``: ``plan`` decides, request by
    request, whether to answer itself (throttle, refuse) or to forward to the real server.

    ``plan(n, lines)`` gets the request's number (0-based) and its body's lines, and returns
    an :data:`Answer` or ``None`` (forward). Every request is recorded in ``seen``.
    """

    upstream: str
    plan: Callable[[int, list[str]], Answer | None]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def __enter__(self) -> Stage:
        stage = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                raw = (gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip"
                       else body)
                lines = raw.decode().splitlines()
                with lock:
                    number = len(stage.seen)
                    answer = stage.plan(number, lines)
                    seen = Seen(time.monotonic(), 0, lines)
                    stage.seen.append(seen)
                if answer is None:
                    forward = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("host", "content-length", "connection")}
                    status, reply = http("POST", stage.upstream + self.path, body, forward)
                    headers: dict[str, str] = {}
                else:
                    status, headers, reply = answer
                seen.status = status
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="influx-stage",
                         daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def statuses(self) -> list[int]:
        return [seen.status for seen in self.seen]


def session_server(start: Callable[[], Server]) -> Iterator[str]:
    """Start a server for the session; yield its URL; stop it at the end."""
    server = start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def influxd_url() -> Iterator[str]:
    """URL of a private InfluxDB 1.x (database ``test``) for this test session."""
    yield from session_server(start_influxd)


@pytest.fixture(scope="session")
def victoria_url() -> Iterator[str]:
    """URL of a private VictoriaMetrics for this test session."""
    yield from session_server(start_victoria)


VICTORIA_USER = "writer"
VICTORIA_PASSWORD = "pa:ss@w0rd/Secret"


@pytest.fixture(scope="session")
def victoria_auth_url() -> Iterator[str]:
    """URL (no credentials in it) of a private VictoriaMetrics that asks for basic auth
    (:data:`VICTORIA_USER` / :data:`VICTORIA_PASSWORD`)."""
    yield from session_server(lambda: start_victoria(username=VICTORIA_USER,
                                                     password=VICTORIA_PASSWORD))
