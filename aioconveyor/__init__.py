"""aioconveyor: call a producer on the wall-clock grid, fan copies out to many consumers.

``import aioconveyor`` is light: the built-in consumers (and their optional
dependencies) load only when you touch ``aioconveyor.consumers``, and ``ticks`` (the pull
face) and ``PostgresLeader`` when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import Clock, SystemClock
from ._consumer import (
    Batch,
    Consumer,
    ConsumerFunc,
    Overflow,
    Record,
    Startup,
    SupportsOpenClose,
)
from ._conveyor import AioConveyor
from ._errors import (
    ConsumerTimeout,
    ContainedError,
    ConveyorError,
    Rejected,
    RestartBudgetExceeded,
    RetryAfter,
    SettingError,
    StartupError,
)
from ._group import GroupStats
from ._health import Health
from ._leader import Leader
from ._producer import Producer
from ._schedule import CronSchedule, IntervalSchedule, Misfire, Schedule
from ._stats import ConsumerStats, ConveyorStats, LatenessStats, ProducerStats
from ._tick import Tick, current_tick

if TYPE_CHECKING:
    from ._group_nats import NatsGroup
    from ._group_postgres import PostgresGroup
    from ._leader_postgres import PostgresLeader
    from ._ticks import ticks

__all__ = [
    "AioConveyor",
    "Batch",
    "Clock",
    "Consumer",
    "ConsumerFunc",
    "ConsumerStats",
    "ConsumerTimeout",
    "ContainedError",
    "ConveyorError",
    "ConveyorStats",
    "CronSchedule",
    "GroupStats",
    "Health",
    "IntervalSchedule",
    "LatenessStats",
    "Leader",
    "Misfire",
    "NatsGroup",
    "Overflow",
    "PostgresGroup",
    "PostgresLeader",
    "Producer",
    "ProducerStats",
    "Record",
    "Rejected",
    "RestartBudgetExceeded",
    "RetryAfter",
    "Schedule",
    "SettingError",
    "Startup",
    "StartupError",
    "SupportsOpenClose",
    "SystemClock",
    "Tick",
    "__version__",
    "current_tick",
    "ticks",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "consumers":  # (`from . import consumers` here would call __getattr__ again)
        import aioconveyor.consumers

        return aioconveyor.consumers
    if name == "PostgresLeader":  # its module imports asyncpg only when one is created
        from ._leader_postgres import PostgresLeader

        return PostgresLeader
    if name == "NatsGroup":  # imports nats-py only when one is created
        from ._group_nats import NatsGroup

        return NatsGroup
    if name == "PostgresGroup":  # likewise
        from ._group_postgres import PostgresGroup

        return PostgresGroup
    if name == "ticks":  # the pull face (and the fake clock it knows) loads when asked for
        from ._ticks import ticks

        globals()["ticks"] = ticks
        return ticks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
