"""The status page's data over real HTTP: ``/status.json`` (its documented schema, its
history), no secrets anywhere, and the optional credentials."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer, Producer, SettingError
from aioconveyor import _endpoint as endpoint_module
from aioconveyor._config import ConfigError, load_config
from aioconveyor._stats import ConveyorCounters
from aioconveyor._status import SCHEMA, LatenessHistory
from aioconveyor.consumers.mqtt import MqttConsumer
from aioconveyor.consumers.postgres import PostgresConsumer
from aioconveyor.testing import FakeClock, MemoryConsumer, wait_until_blocking
from support.http import get
from support.services import free_port

ROOT = Path(__file__).resolve().parent.parent
FAST = 0.05
PLANTED = "pl4nted-S3cret"


async def meter(event_time: datetime) -> dict[str, Any]:
    return {"w": 1}


async def inverter(event_time: datetime) -> dict[str, Any]:
    return {"v": 2}


async def broken(data: Any, event_time: datetime) -> None:
    raise ConnectionError(f"cannot reach postgresql://app:{PLANTED}@db.invalid/x")


def two_producers(**kwargs: Any) -> AioConveyor:
    return AioConveyor(
        producers=[Producer(meter, every=FAST, name="meter"),
                   Producer(inverter, every=2 * FAST, offset=FAST / 2, name="inverter")],
        consumers=[MemoryConsumer("db"), Consumer(broken, name="broker", retries=0)],
        metrics_port=0, name="house", **kwargs)


def base_url(conv: AioConveyor) -> str:
    address = conv.metrics_address
    assert address is not None
    return f"http://{address[0]}:{address[1]}"


def status(conv: AioConveyor) -> dict[str, Any]:
    code, body = get(f"{base_url(conv)}/status.json")
    assert code == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


def paths(value: Any, prefix: str = "") -> set[str]:
    """Every key of a JSON document as a dotted path, list items as ``[]``."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            found.add(path)
            if key != "problems":  # its keys are the unhealthy parts, not fields
                found |= paths(item, path)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for item in value:
            found |= paths(item, f"{prefix}[]")
    return found


def documented_fields() -> set[str]:
    """The field table of docs/operating.md's /status.json section."""
    text = (ROOT / "docs" / "operating.md").read_text()
    section = text.split("### The data: `/status.json`", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.M))


def test_status_json_has_the_documented_schema() -> None:
    with two_producers() as conv:
        assert wait_until_blocking(lambda: conv.stats().consumer("broker").errors >= 3, 10)
        assert wait_until_blocking(lambda: all(p.ticks >= 2 for p in conv.stats().producers), 10)
        doc = status(conv)
    leader_fields = {"leader.role", "leader.since", "leader.takeovers"}  # null here
    assert paths(doc) == documented_fields() - leader_fields
    assert doc["schema"] == SCHEMA and doc["name"] == "house" and doc["running"] is True
    assert doc["uptime_seconds"] >= 0 and doc["now"] >= doc["started"]
    assert doc["leader"] is None and doc["producers_total"] == 2
    meter_, inverter_ = doc["producers"]
    assert (meter_["name"], meter_["schedule"]) == ("meter", "every 0.05 s")
    assert inverter_["schedule"] == "every 0.1 s at +0.025 s"
    assert meter_["ticks"] >= 2 and meter_["condition"] == "ok"
    assert meter_["next_tick"] > meter_["last_tick"]
    db, bad = doc["consumers"]
    assert (db["condition"], db["state"]) == ("ok", "open") and db["delivered"] >= 1
    assert bad["condition"] == "failing" and bad["errors"] >= 3 and bad["last_success"] is None
    assert bad["last_error"].startswith("ConnectionError: cannot reach")


class AlwaysLeader:
    """A leader backend of one instance: it always leads."""

    def __init__(self) -> None:
        self.since: datetime | None = None
        self.takeovers = 0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def lead(self, event_time: datetime, key: str | None = None) -> bool:
        if self.since is None:
            self.since, self.takeovers = event_time, 1
        return True

    @property
    def role(self) -> str:
        return "leader" if self.since is not None else "unknown"


def test_the_leader_role_is_shown_where_a_leader_is_configured() -> None:
    with two_producers(leader=AlwaysLeader()) as conv:
        assert wait_until_blocking(lambda: conv.stats().ticks >= 3, 10)
        doc = status(conv)
    assert {f for f in documented_fields() if f.startswith("leader")} <= paths(doc)
    assert doc["leader"]["role"] == "leader" and doc["leader"]["takeovers"] == 1
    assert doc["leader"]["since"] <= doc["now"]
    assert {p["leader_role"] for p in doc["producers"]} == {"leader"}


def test_a_consumer_that_cannot_open_shows_as_connecting() -> None:
    dsn = f"postgresql://app:{PLANTED}@127.0.0.1:{free_port()}/test"
    conv = AioConveyor(meter, [PostgresConsumer(dsn, table="t", name="pg")],
                       loop_interval=FAST, metrics_port=0)
    with conv:
        assert wait_until_blocking(lambda: conv.stats().consumer("pg").open_errors >= 1, 10)
        (pg,) = status(conv)["consumers"]
    assert (pg["state"], pg["condition"]) == ("connecting", "connecting")
    assert pg["last_error"] and pg["open_errors"] >= 1


def test_no_secret_reaches_the_page_the_data_or_the_metrics() -> None:
    closed = free_port()
    consumers = [
        PostgresConsumer(f"postgresql://app:{PLANTED}@127.0.0.1:{closed}/test", table="t",
                         name="pg"),
        MqttConsumer(f"mqtt://user:{PLANTED}@127.0.0.1:{closed}", topic="t", name="mqtt"),
        Consumer(broken, name="broker", retries=0),
    ]
    conv = AioConveyor(meter, consumers, loop_interval=FAST, metrics_port=0, health_bound=0.2)
    with conv:
        assert wait_until_blocking(lambda: all(c.last_error for c in conv.stats().consumers), 15)
        assert wait_until_blocking(lambda: not conv.health().ok, 10)
        base = base_url(conv)
        bodies = {path: get(f"{base}{path}") for path in ("/", "/status.json", "/metrics",
                                                          "/healthz")}
    assert {path: code for path, (code, _) in bodies.items()} == {
        "/": 200, "/status.json": 200, "/metrics": 200, "/healthz": 503}
    for path, (_, body) in bodies.items():
        assert PLANTED.encode() not in body, path
    doc = json.loads(bodies["/status.json"][1])
    broker = next(c for c in doc["consumers"] if c["name"] == "broker")
    assert "postgresql://app:***@db.invalid/x" in broker["last_error"]
    assert any("***" in why for why in doc["health"]["problems"].values())


def test_the_page_is_one_self_contained_file() -> None:
    with AioConveyor(meter, [], loop_interval=FAST, metrics_port=0) as conv:
        request = urllib.request.Request(f"{base_url(conv)}/")
        with urllib.request.urlopen(request, timeout=5) as response:
            page = response.read().decode()
            headers = response.headers
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert "status.json" in page and "<script>" in page and "<style>" in page
    # nothing from elsewhere: no URL with a host, no external script, style or font
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert not re.search(r"""(?:src|href|action)\s*=\s*["'](?:[a-z]+:)?//""", page)
    assert re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page) == [
        "data:,", "status.json", "metrics", "healthz"]
    assert "@import" not in page and "url(" not in page and "@font-face" not in page


def test_only_get_and_head() -> None:
    with AioConveyor(meter, [], loop_interval=FAST, metrics_port=0) as conv:
        request = urllib.request.Request(f"{base_url(conv)}/status.json", method="POST",
                                         data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        info.value.close()
        head = urllib.request.Request(f"{base_url(conv)}/status.json", method="HEAD")
        with urllib.request.urlopen(head, timeout=5) as response:
            assert response.status == 200 and response.read() == b""
    assert info.value.code == 405


@pytest.mark.parametrize("host, code", [
    ("evil.example", 421), ("evil.example:8080", 421), ("127.0.0.1.evil.example", 421),
    ("10.0.0.1", 421), ("localhost", 200), ("LOCALHOST:9", 200), ("127.0.0.1", 200),
    ("127.1.2.3:80", 200), ("[::1]:9", 200), ("app.localhost", 200),
])
def test_on_loopback_only_loopback_host_names_are_answered(host: str, code: int) -> None:
    # a page of evil.example whose name is re-pointed at 127.0.0.1 (DNS rebinding) sends
    # its own name as Host: it gets nothing, not even the health verdict
    with AioConveyor(meter, [], loop_interval=FAST, metrics_port=0) as conv:
        for path in ("/", "/status.json", "/metrics", "/healthz"):
            request = urllib.request.Request(f"{base_url(conv)}{path}", headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer, body = response.status, response.read()
            except urllib.error.HTTPError as exc:
                with exc:
                    answer, body = exc.code, exc.read()
            assert answer == code, (path, body)
            if code == 421:
                assert b"loopback" in body and b"house" not in body


async def test_history_is_sampled_on_the_injected_clock() -> None:
    clock = FakeClock(autojump=False)
    counters = ConveyorCounters("c")
    p = counters.producer("p")
    history = LatenessHistory(counters, clock, interval=2.0, keep=10.0)
    history.start()  # the baseline
    with counters.lock:
        counters.record_lateness(p, 0.0004)
        counters.record_lateness(p, 0.0006)
    clock.advance(2.0)
    (point,) = history.points("p", clock.time())
    t, n, mean_ms, p99_ms = point
    assert (t, n) == (pytest.approx(clock.time()), 2)
    assert mean_ms == pytest.approx(0.5) and p99_ms == pytest.approx(0.6)  # capped at max
    clock.advance(2.0)  # no tick in between: no point
    assert len(history.points("p", clock.time())) == 1
    for _ in range(10):
        with counters.lock:
            counters.record_lateness(p, 0.002)
        clock.advance(2.0)
    points = history.points("p", clock.time())
    assert len(points) == 5  # bounded: the last 10 s at one point per 2 s
    assert all(x[2] == pytest.approx(2.0) for x in points)
    counters.retire("p")
    clock.advance(2.0)
    assert history.points("p", clock.time()) == []
    history.stop()
    clock.advance(10.0)  # stopped: no timer left behind


# -- credentials -----------------------------------------------------------------------


def request(url: str, authorization: str | None = None) -> tuple[int, bytes, Any]:
    headers = {} if authorization is None else {"Authorization": authorization}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=5) as response:
            return int(response.status), response.read(), response.headers
    except urllib.error.HTTPError as exc:
        with exc:  # closes its socket
            return exc.code, exc.read(), exc.headers


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def compare_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Records every call of hmac.compare_digest made by the endpoint (and still answers)."""
    calls: list[tuple[bytes, bytes]] = []
    real = endpoint_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(endpoint_module.hmac, "compare_digest", spy)
    return calls


def test_a_token_guards_the_page_the_data_and_the_metrics(
        compare_spy: list[tuple[bytes, bytes]]) -> None:
    token = "tok-" + PLANTED
    with two_producers(metrics_auth=token, health_bound=0.2) as conv:
        base = base_url(conv)
        assert wait_until_blocking(lambda: not conv.health().ok, 10)
        for path in ("/", "/status.json", "/metrics"):
            code, body, headers = request(base + path)
            assert code == 401, path
            assert headers.get_all("WWW-Authenticate") == [
                'Basic realm="aioconveyor", charset="UTF-8"', 'Bearer realm="aioconveyor"']
            assert request(base + path, "Bearer wrong")[0] == 401
            assert request(base + path, f"Bearer {token}")[0] == 200, path
            assert request(base + path, basic("anyone", token))[0] == 200, path
            assert request(base + path, basic(token, "nope"))[0] == 401, path
        # probes need no credentials, but the reasons do
        code, body, _ = request(base + "/healthz")
        assert code == 503 and json.loads(body) == {"status": "unhealthy"}
        code, body, _ = request(base + "/healthz", f"Bearer {token}")
        assert code == 503 and "consumer:broker" in json.loads(body)["problems"]
        assert request(base + "/readyz")[0] == 200
    assert (b"wrong", token.encode()) in compare_spy  # compared in constant time
    assert (token.encode(), token.encode()) in compare_spy
    assert token not in repr(conv) and token not in repr(conv.metrics_auth)


def test_basic_auth_needs_the_user_and_the_password(
        compare_spy: list[tuple[bytes, bytes]]) -> None:
    with two_producers(metrics_auth=("ops", PLANTED)) as conv:
        url = base_url(conv) + "/status.json"
        code, _, headers = request(url)
        assert code == 401
        assert headers.get_all("WWW-Authenticate") == [
            'Basic realm="aioconveyor", charset="UTF-8"']
        assert request(url, basic("ops", PLANTED))[0] == 200
        assert request(url, basic("ops", "guess"))[0] == 401
        assert request(url, basic("root", PLANTED))[0] == 401
        assert request(url, f"Bearer {PLANTED}")[0] == 401  # no token configured
        assert request(url, "Basic !!notbase64")[0] == 401
    # both parts compared every time (a wrong user does not skip the password)
    assert (b"root", b"ops") in compare_spy and (PLANTED.encode(), PLANTED.encode()) in compare_spy
    assert PLANTED not in repr(conv.metrics_auth)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"metrics_auth": "t"}, "metrics_auth has no effect without metrics_port"),
    ({"metrics_port": 0, "metrics_auth": "two words"}, "cannot contain control characters "
                                                       "or spaces"),
    ({"metrics_port": 0, "metrics_auth": ""}, "the token must be a non-empty str"),
    ({"metrics_port": 0, "metrics_auth": ("a:b", "pw")}, "the user cannot contain ':'"),
    ({"metrics_port": 0, "metrics_auth": ("ops", "")}, "the password must be a non-empty str"),
    ({"metrics_port": 0, "metrics_auth": 42}, "must be a token (str), a (user, password) pair"),
])
def test_bad_credentials_are_refused_without_showing_them(kwargs: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(SettingError) as info:
        AioConveyor(meter, [], **kwargs)
    assert info.value.name == "metrics_auth" and message in str(info.value)
    secret = kwargs["metrics_auth"]
    for part in (secret if isinstance(secret, tuple) else (secret,)):
        if isinstance(part, str) and len(part) > 2:
            assert part not in str(info.value)


def write(tmp_path: Path, metrics: str) -> Path:
    path = tmp_path / "conveyor.toml"
    path.write_text('[conveyor]\ninterval = 1\n[producer]\nfunction = "json:dumps"\n'
                    f'[metrics]\nlisten = "127.0.0.1:0"\n{metrics}')
    return path


def test_metrics_credentials_from_a_config_file(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, 'token = "${OPS_TOKEN}"\n'),
                         env={"OPS_TOKEN": PLANTED})
    assert loaded.conveyor.metrics_auth is not None
    assert loaded.conveyor.metrics_auth.token == PLANTED
    assert PLANTED in loaded.secrets
    described = "\n".join(loaded.describe())
    assert "status page: http://127.0.0.1:0/ (credentials needed)" in described
    assert PLANTED not in described
    loaded = load_config(write(tmp_path, f'user = "ops"\npassword = "{PLANTED}"\n'))
    auth = loaded.conveyor.metrics_auth
    assert auth is not None and (auth.user, auth.password) == ("ops", PLANTED)
    assert PLANTED in loaded.secrets


@pytest.mark.parametrize(("metrics", "key", "message"), [
    ('user = "ops"\n', "metrics.password", "missing: basic auth needs a user and a password"),
    (f'password = "{PLANTED}"\n', "metrics.user",
     "missing: basic auth needs a user and a password"),
    (f'token = "{PLANTED}"\nuser = "ops"\npassword = "x"\n', "metrics.token",
     "a token or a user and a password, not both"),
    (f'token = "two {PLANTED}"\n', "metrics.token", "cannot contain control characters or "
                                                    "spaces"),
    ('tokn = "x"\n', "metrics.tokn", "unknown option (did you mean 'token'?)"),
])
def test_bad_metrics_credentials_in_a_config_file(tmp_path: Path, metrics: str, key: str,
                                                  message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, metrics))
    assert info.value.key == key and message in info.value.message
    assert PLANTED not in str(info.value)


def test_the_demo_prints_the_status_page_url(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aioconveyor", "--status-port", "0", "--interval", "0.1",
         "--count", "3", "--quiet", "--csv", str(tmp_path / "demo.csv")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^  status page: http://127\.0\.0\.1:\d+/$", result.stdout, re.M), \
        result.stdout


def test_run_logs_the_status_page_url(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    result = subprocess.run(
        [sys.executable, "-m", "aioconveyor", "run", str(path), "--set", "conveyor.interval=0.1",
         "--set", "conveyor.max_ticks=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert re.search(r"status page: http://127\.0\.0\.1:\d+/\n", result.stderr), result.stderr
