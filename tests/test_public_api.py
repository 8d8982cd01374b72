"""The public surface is small and deliberate: these names, nothing more, nothing less.

Everything else lives in modules whose names start with an underscore. Changing a list
here is changing the API: say so in CHANGELOG.md.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import aioconveyor

PUBLIC = {
    "aioconveyor": [
        "AioConveyor", "Batch", "Clock", "Consumer", "ConsumerFunc", "ConsumerStats",
        "ConsumerTimeout", "ContainedError", "ConveyorError", "ConveyorStats", "CronSchedule",
        "GroupStats",
        "Health", "IntervalSchedule", "LatenessStats", "Leader", "Misfire", "NatsGroup", "Overflow",
        "PostgresGroup",
        "PostgresLeader",
        "Producer",
        "ProducerStats", "Record", "Rejected", "RestartBudgetExceeded", "RetryAfter",
        "Schedule", "SettingError", "Startup", "StartupError", "SupportsOpenClose",
        "SystemClock", "Tick", "__version__", "current_tick", "ticks",
    ],
    "aioconveyor.testing": ["FakeClock", "MemoryConsumer", "wait_until", "wait_until_blocking"],
    "aioconveyor.consumers": [
        "CsvConsumer", "HaBinarySensor", "HaDiscovery", "HaSensor", "InfluxConsumer",
        "MqttConsumer", "NatsConsumer", "PostgresConsumer", "PrettyPrintConsumer",
        "RedisStreamConsumer", "WebhookConsumer",
    ],
    "aioconveyor.consumers.csv": ["CsvConsumer"],
    "aioconveyor.consumers.pretty": ["PrettyPrintConsumer"],
}
"""``aioconveyor.kit`` is pinned in tests/test_kit.py; the MQTT and PostgreSQL consumer
modules export their helpers too (checked for sortedness by tests/test_package.py)."""


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_exactly_the_public_api(module: str) -> None:
    assert list(importlib.import_module(module).__all__) == PUBLIC[module]


def test_every_other_module_is_private() -> None:
    public = {"aioconveyor.testing", "aioconveyor.kit", "aioconveyor.consumers",
              "aioconveyor.__main__"}
    for info in pkgutil.iter_modules(aioconveyor.__path__, "aioconveyor."):
        last = info.name.rpartition(".")[2]
        assert info.name in public or last.startswith("_"), f"{info.name} is neither public nor _private"


def test_every_public_name_is_documented_in_the_api_reference() -> None:
    from pathlib import Path

    reference = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    missing = [n for n in PUBLIC["aioconveyor"] if f"aioconveyor.{n}" not in reference]
    assert not missing, f"docs/api.md lacks {missing}"
