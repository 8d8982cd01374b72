"""Operations endpoint: Prometheus metrics scraped over real HTTP, health and readiness."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aioconveyor import AioConveyor, Consumer
from aioconveyor._health import assess
from aioconveyor.testing import MemoryConsumer
from support.http import get, wait_for_status

FAST = 0.05


async def produce(event_time: datetime) -> dict[str, Any]:
    return {"t": event_time.isoformat()}



def test_metrics_are_served_in_prometheus_format() -> None:
    sink = MemoryConsumer("sink")

    async def failing(data: Any, event_time: datetime) -> None:
        raise ValueError("nope")

    conv = AioConveyor(produce, [sink, Consumer(failing, name="bad")], loop_interval=FAST,
                       metrics_port=0, name="meter")
    with conv:
        assert sink.wait_for(5)
        address = conv.metrics_address
        assert address is not None
        code, body = get(f"http://{address[0]}:{address[1]}/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    ticks = families["aioconveyor_ticks"].samples
    assert ticks[0].labels == {"conveyor": "meter"} and ticks[0].value >= 5
    delivered = {s.labels["consumer"]: s.value for s in families["aioconveyor_consumer_delivered"].samples}
    assert delivered["sink"] >= 5 and delivered["bad"] == 0
    errors = {s.labels["consumer"]: s.value for s in families["aioconveyor_consumer_errors"].samples}
    assert errors["bad"] >= 5
    hist = families["aioconveyor_tick_lateness_seconds"]
    assert hist.type == "histogram"
    count = next(s for s in hist.samples if s.name.endswith("_count")).value
    inf_bucket = next(s for s in hist.samples if s.labels.get("le") == "+Inf").value
    assert count == inf_bucket >= 5
    assert "aioconveyor_consumer_queue_depth" in families
    assert families["aioconveyor_up"].samples[0].value == 1.0


def test_health_flips_to_503_on_a_hung_consumer_and_back_after_the_restart() -> None:
    calls = 0

    async def hangs_once(data: Any, event_time: datetime) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            await asyncio.sleep(3600)

    conv = AioConveyor(produce, [Consumer(hangs_once, name="flaky", timeout=1.5)],
                       loop_interval=FAST, metrics_port=0, health_bound=0.4)
    with conv:
        address = conv.metrics_address
        assert address is not None
        base = f"http://{address[0]}:{address[1]}"
        assert get(f"{base}/readyz")[0] == 200
        body = json.loads(wait_for_status(f"{base}/healthz", 503))
        assert body["status"] == "unhealthy"
        assert "consumer:flaky" in body["problems"]
        wait_for_status(f"{base}/healthz", 200)  # the watchdog cancelled it; deliveries resume
        assert conv.stats().consumer("flaky").timeouts == 1
        assert get(f"{base}/nope")[0] == 404
    assert conv.metrics_address is None


def test_health_judgement_is_pure() -> None:
    with AioConveyor(produce, [MemoryConsumer("m")], loop_interval=FAST, max_ticks=2) as conv:
        assert conv.join(10)
    stopped = conv.stats()
    assert assess(stopped, now=datetime.now(UTC), bound=1).problems == {"conveyor": "not running"}
    from dataclasses import replace

    running = replace(stopped, running=True,
                      next_tick_time=datetime(2030, 1, 1, tzinfo=UTC))
    assert assess(running, now=datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC), bound=2).ok
    late = assess(running, now=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=5), bound=2)
    assert not late.ok and "overdue by 5.0 s" in late.problems["scheduler"]


def test_bad_metrics_port_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"metrics_port must be an int in 0\.\.65535, got 70000"):
        AioConveyor(produce, [], metrics_port=70000)
    with pytest.raises(TypeError, match="metrics_port must be an int"):
        AioConveyor(produce, [], metrics_port="9108")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="health_bound must be a finite number > 0"):
        AioConveyor(produce, [], health_bound=0)


def test_metrics_without_prometheus_client_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from aioconveyor import AioConveyor\n"
        "try:\n"
        "    AioConveyor(lambda t: 1, [], metrics_port=0)\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert 'pip install "aioconveyor[metrics]"' in out
