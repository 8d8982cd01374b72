"""Built-in consumers, each loaded (with its optional dependency) on first use.

``from aioconveyor.consumers import PostgresConsumer`` imports asyncpg only then; without
the extra installed it raises ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .csv import CsvConsumer as CsvConsumer
    from .mqtt import HaDiscovery as HaDiscovery
    from .mqtt import HaSensor as HaSensor
    from .mqtt import MqttConsumer as MqttConsumer
    from .postgres import PostgresConsumer as PostgresConsumer
    from .pretty import PrettyPrintConsumer as PrettyPrintConsumer

__all__ = [
    "CsvConsumer",
    "HaDiscovery",
    "HaSensor",
    "MqttConsumer",
    "PostgresConsumer",
    "PrettyPrintConsumer",
]

_WHERE = {
    "CsvConsumer": ".csv",
    "HaDiscovery": ".mqtt",
    "HaSensor": ".mqtt",
    "MqttConsumer": ".mqtt",
    "PostgresConsumer": ".postgres",
    "PrettyPrintConsumer": ".pretty",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
