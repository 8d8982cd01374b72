"""Built-in consumers, each loaded (with its optional dependency) on first use.

``from aioconveyor.consumers import PostgresConsumer`` imports asyncpg only then; without
the extra installed it raises ``ImportError`` naming the extra to install.

This folder is the top-level ``consumers/`` of the checkout; the package sees it through
the symlink ``aioconveyor/consumers`` and it is only ever imported as
``aioconveyor.consumers`` (the wheel and the sdist hold it there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if __name__ != "aioconveyor.consumers":  # an editable install puts the checkout on sys.path
    raise ImportError(f"import aioconveyor.consumers, not {__name__!r} (the checkout's folder)")

if TYPE_CHECKING:
    from .csv import CsvConsumer as CsvConsumer
    from .influx import InfluxConsumer as InfluxConsumer
    from .mqtt import HaBinarySensor as HaBinarySensor
    from .mqtt import HaDiscovery as HaDiscovery
    from .mqtt import HaSensor as HaSensor
    from .mqtt import MqttConsumer as MqttConsumer
    from .nats import NatsConsumer as NatsConsumer
    from .postgres import PostgresConsumer as PostgresConsumer
    from .pretty import PrettyPrintConsumer as PrettyPrintConsumer
    from .redis import RedisStreamConsumer as RedisStreamConsumer
    from .webhook import WebhookConsumer as WebhookConsumer

__all__ = [
    "CsvConsumer",
    "HaBinarySensor",
    "HaDiscovery",
    "HaSensor",
    "InfluxConsumer",
    "MqttConsumer",
    "NatsConsumer",
    "PostgresConsumer",
    "PrettyPrintConsumer",
    "RedisStreamConsumer",
    "WebhookConsumer",
]


def __getattr__(name: str) -> Any:
    # real imports, one module at a time: asyncpg, aiomqtt, nats-py, redis, aiohttp and rich
    # load only when asked for
    if name == "CsvConsumer":
        from .csv import CsvConsumer

        return CsvConsumer
    if name == "InfluxConsumer":
        from .influx import InfluxConsumer

        return InfluxConsumer
    if name in ("HaBinarySensor", "HaDiscovery", "HaSensor", "MqttConsumer"):
        from . import mqtt

        return getattr(mqtt, name)
    if name == "NatsConsumer":
        from .nats import NatsConsumer

        return NatsConsumer
    if name == "PostgresConsumer":
        from .postgres import PostgresConsumer

        return PostgresConsumer
    if name == "PrettyPrintConsumer":
        from .pretty import PrettyPrintConsumer

        return PrettyPrintConsumer
    if name == "RedisStreamConsumer":
        from .redis import RedisStreamConsumer

        return RedisStreamConsumer
    if name == "WebhookConsumer":
        from .webhook import WebhookConsumer

        return WebhookConsumer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
