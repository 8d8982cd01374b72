"""``aioconveyor health URL``: exit 0 on 200, 1 otherwise (503 with its problems, connection
refused, no answer in time), against real endpoints of real runner processes."""

from __future__ import annotations

import socket
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.http import get
from support.runner import BIN, Runner, kill_all, write
from support.services import free_port


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    kill_all(started)


def health(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "health", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def status_of(url: str) -> int:
    return get(url)[0]


def start_runner(tmp_path: Path, runners: list[Runner], consumer: str,
                 conveyor: str = "", listen: str = "127.0.0.1:0") -> Runner:
    name = f"health_helpers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import pathlib
        import time

        def produce(event_time):
            return {"t": event_time.isoformat()}

        def fine(data, event_time):
            pass

        def hang(data, event_time):
            pathlib.Path("entered").touch()
            time.sleep(30)
    """))
    path = write(tmp_path / "conveyor.toml", f"""
        [conveyor]
        interval = 0.1
        stop_timeout = 1
        {conveyor}
        [producer]
        function = "{name}:produce"
        [[consumers]]
        type = "{name}:{consumer}"
        timeout = 30
        [metrics]
        listen = "{listen}"
    """)
    runner = Runner(tmp_path, path)
    runners.append(runner)
    return runner


def test_a_healthy_conveyor_exits_0(tmp_path: Path, runners: list[Runner]) -> None:
    runner = start_runner(tmp_path, runners, "fine")
    base = runner.base_url()
    result = health(f"{base}/healthz")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"healthy: {base}/healthz: HTTP 200 (ok)\n"
    assert result.stderr == ""
    no_path = health(base, "--timeout", "2")  # no path: /healthz
    assert no_path.returncode == 0 and no_path.stdout.startswith(f"healthy: {base}/healthz:")
    ready = health(f"{base}/readyz")
    assert ready.returncode == 0 and ready.stdout == f"healthy: {base}/readyz: HTTP 200 (ready)\n"
    assert runner.stop() == 0, runner.stderr


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_endpoint(tmp_path: Path, runners: list[Runner]) -> None:
    runner = start_runner(tmp_path, runners, "fine", listen="[::1]:0")
    base = runner.base_url()
    assert base.startswith("http://[::1]:")
    result = health(base)
    assert result.returncode == 0 and result.stdout == f"healthy: {base}/healthz: HTTP 200 (ok)\n"
    assert runner.stop() == 0, runner.stderr


def test_a_hung_consumer_past_health_bound_exits_1_with_the_problem(
    tmp_path: Path, runners: list[Runner],
) -> None:
    runner = start_runner(tmp_path, runners, "hang", conveyor="health_bound = 0.5")
    base = runner.base_url()
    runner.wait_until(lambda: (tmp_path / "entered").exists(), "the hanging call")
    runner.wait_until(lambda: status_of(f"{base}/healthz") == 503, "/healthz answering 503")
    result = health(f"{base}/healthz")
    assert result.returncode == 1
    assert result.stdout == ""
    line = result.stderr
    assert line.startswith(f"unhealthy: {base}/healthz: HTTP 503 (unhealthy): consumer:hang: "
                           "call running for "), line
    assert line.endswith(" s\n") and line.count("\n") == 1
    assert health(f"{base}/readyz").returncode == 0  # ready, just not healthy
    missing = health(f"{base}/nothing-here")
    assert missing.returncode == 1
    assert missing.stderr == (f"unhealthy: {base}/nothing-here: HTTP 404: not found: try "
                              "/, /metrics, /healthz, /readyz\n")


def test_connection_refused_exits_1() -> None:
    url = f"http://127.0.0.1:{free_port()}/healthz"
    result = health(url)
    assert result.returncode == 1
    assert result.stderr == (f"unhealthy: {url}: connection refused (is the conveyor running, "
                             "with [metrics] listen?)\n")


def test_no_answer_within_the_timeout_exits_1() -> None:
    """A blocked event loop accepts connections (the kernel does) but never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/healthz"
        started = time.monotonic()
        result = health(url, "--timeout", "0.3")
        assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert result.stderr == f"unhealthy: {url}: no answer within 0.3 s\n"


@pytest.mark.parametrize(("args", "message"), [
    (["127.0.0.1:9108"], "expected an http:// URL like http://127.0.0.1:9108/healthz"),
    (["http://127.0.0.1:http/healthz"], "Port could not be cast to integer value"),
    (["http://127.0.0.1:9108/healthz", "--timeout", "0"], "expected a number > 0"),
    ([], "the following arguments are required: URL"),
])
def test_a_bad_command_line_exits_2(args: list[str], message: str) -> None:
    result = health(*args)
    assert result.returncode == 2
    assert "usage: aioconveyor health" in result.stderr and message in result.stderr


def test_health_help_shows_an_example() -> None:
    result = health("--help")
    assert result.returncode == 0
    assert "aioconveyor health http://127.0.0.1:9108/healthz" in result.stdout
