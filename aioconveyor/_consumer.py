"""What a consumer is, and its settings: :class:`Consumer` and what it resolves to.

A consumer is any callable ``(data, event_time)``, sync or async; an object may add
``open()`` / ``close()`` (or be an async context manager). :class:`Consumer` wraps one
with per-consumer settings; :func:`resolve` fills in every setting, giving each
consumer a unique name, before the conveyor starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, get_args, runtime_checkable

from . import _validate
from ._spool_format import SpoolFormat
from ._tick import Tick
from ._workers import is_async_callable

__all__ = [
    "Batch",
    "Consumer",
    "ConsumerFunc",
    "LaneSettings",
    "Overflow",
    "Record",
    "Startup",
    "SupportsOpenClose",
    "callable_name",
    "resolve",
]

SPOOL_FORMATS: tuple[str, ...] = get_args(SpoolFormat)


class Overflow(StrEnum):
    """What a lane does when its queue is full."""

    DROP_OLDEST = "drop_oldest"
    """Discard the oldest queued item to make room (default: freshest data wins)."""
    DROP_NEWEST = "drop_newest"
    """Discard the incoming item (keep the backlog in order)."""
    BLOCK = "block"
    """Make the scheduler wait for room: nothing dropped, but a stuck consumer then delays
    the producer and the other consumers (missed ticks are counted)."""


class Startup(StrEnum):
    """What the conveyor does when a consumer's ``open()`` fails at start."""

    RETRY = "retry"
    """Start anyway: the lane is "connecting", queues (and spools) what arrives, retries
    ``open()`` with capped backoff and delivers the backlog in order once open (default)."""
    FAIL = "fail"
    """``start()`` / ``run()`` raise :class:`~aioconveyor.StartupError`."""


@runtime_checkable
class ConsumerFunc(Protocol):
    """A consumer: any callable ``(data, event_time)``, sync or async."""

    def __call__(self, data: Any, event_time: datetime, /) -> Any: ...


@runtime_checkable
class SupportsOpenClose(Protocol):
    """A consumer object that owns a resource, opened and closed in the conveyor's loop."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class _RecordFields(NamedTuple):
    data: Any
    event_time: datetime


class Record(_RecordFields):
    """One produced item inside a :class:`Batch`: ``(data, event_time)``, which unpacks as a
    pair, plus the :class:`Tick` it came from (``tick``, ``None`` if unknown) and its
    producer's name (``producer``)."""

    tick: Tick | None

    def __new__(cls, data: Any, event_time: datetime, tick: Tick | None = None) -> Record:
        self = super().__new__(cls, data, event_time)
        self.tick = tick
        return self

    @property
    def producer(self) -> str:
        """The name of the producer of this record ("" if unknown)."""
        return "" if self.tick is None else self.tick.producer

    def __repr__(self) -> str:
        return (f"Record(data={self.data!r}, event_time={self.event_time!r}, "
                f"producer={self.producer!r})")


class Batch(list[Record]):
    """What a batching consumer receives as ``data``: the records, oldest first.

    A distinct type so a consumer can tell a batch from a producer that returns a list.
    """


@dataclass(frozen=True, slots=True)
class Consumer:
    """Per-consumer settings around a plain callable.

    Every setting left as ``None`` falls back to the callable's own ``consumer_defaults``
    (a dict the built-in consumers provide), then to the library default below.

    * ``timeout``: seconds one call may take (default: twice the tick period, clamped to
      1..60 s; ``math.inf`` for none). A call past it is cancelled (async) or abandoned
      (sync, its thread replaced), counted, and retried per ``retries``.
    * ``retries`` (0): extra attempts after a failure, waiting ``backoff`` (0.5 s) doubling
      up to ``max_backoff`` (30 s), each with +-``backoff_jitter`` (0.5: +-50 %) jitter
      (0 for exact waits; ``seed=`` of the conveyor makes the jitter repeatable).
    * ``queue_size`` (1000) and ``overflow`` (``"drop_oldest"``, ``"drop_newest"``, ``"block"``).
    * ``batch_size`` (1: no batching) and ``batch_age`` (0 s): with ``batch_size > 1`` the
      consumer receives a :class:`Batch` of up to ``batch_size`` records, collected for at
      most ``batch_age`` seconds after the first one (0: whatever is queued right now).
    * ``copy`` (True): deep-copy the data for this consumer. ``False`` shares one object
      between consumers; use it only for immutable data.
    * ``spool`` (None): path of a SQLite file that keeps this consumer's queue on disk, so
      queued items survive a crash and are delivered after a restart (at-least-once).
    * ``spool_format`` (``"json"``): how spooled items are stored; ``"pickle"`` (opt-in)
      stores any picklable object but loading it can run code: keep such a file private.
    * ``startup`` (``"retry"``): what a failing ``open()`` at start does; ``"fail"`` makes
      ``start()`` raise :class:`~aioconveyor.StartupError` (see :class:`Startup`).
    * ``on_delivered(data, event_time)`` / ``on_error(exc, data, event_time)`` (None):
      hooks, sync or async, called after a delivery and after an item (or batch) was given
      up on. A hook that raises or hangs is logged and counted, never breaks the lane.
    """

    fn: Any
    name: str | None = None
    timeout: float | None = None
    retries: int | None = None
    backoff: float | None = None
    max_backoff: float | None = None
    backoff_jitter: float | None = None
    queue_size: int | None = None
    overflow: Overflow | str | None = None
    batch_size: int | None = None
    batch_age: float | None = None
    copy: bool | None = None
    spool: str | os.PathLike[str] | None = None
    spool_format: SpoolFormat | None = None
    startup: Startup | str | None = None
    on_delivered: Callable[..., Any] | None = None
    on_error: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        _validate.callable_("consumer", self.fn)
        if self.name is not None:
            _validate.text("name", self.name, subject="consumer name")
        if self.timeout is not None and self.timeout != math.inf:
            _validate.positive("timeout", self.timeout)
        _validate.optional_integer("retries", self.retries, minimum=0)
        _validate.optional_positive("backoff", self.backoff)
        _validate.optional_positive("max_backoff", self.max_backoff)
        if self.backoff_jitter is not None:
            jitter = _validate.non_negative("backoff_jitter", self.backoff_jitter)
            if jitter > 1:
                _validate.fail("backoff_jitter", self.backoff_jitter,
                               f"must be between 0 and 1, got {jitter!r}")
        _validate.optional_integer("queue_size", self.queue_size, minimum=1)
        if self.overflow is not None:
            overflow = _validate.choice("overflow", self.overflow, Overflow)
            object.__setattr__(self, "overflow", overflow)
        _validate.optional_integer("batch_size", self.batch_size, minimum=1)
        if self.batch_age is not None:
            _validate.non_negative("batch_age", self.batch_age)
        if self.copy is not None:
            _validate.boolean("copy", self.copy)
        if self.spool is not None:
            _validate.path("spool", self.spool)
        if self.spool_format is not None:
            _validate.one_of("spool_format", self.spool_format, SPOOL_FORMATS)
        if self.startup is not None:
            object.__setattr__(self, "startup", _validate.choice("startup", self.startup, Startup))
        for hook in ("on_delivered", "on_error"):
            if getattr(self, hook) is not None:
                _validate.callable_(hook, getattr(self, hook))

    @classmethod
    def wrap(cls, obj: Any) -> Consumer:
        """``obj`` as a :class:`Consumer` (settings unchanged if it already is one)."""
        if isinstance(obj, Consumer):
            return obj
        _validate.callable_("consumers[...]", obj)
        return cls(obj)


@dataclass(frozen=True, slots=True)
class LaneSettings:
    """A :class:`Consumer` with every setting resolved to a concrete value."""

    fn: Any
    name: str
    is_async: bool
    timeout: float
    retries: int
    backoff: float
    max_backoff: float
    backoff_jitter: float
    queue_size: int
    overflow: Overflow
    batch_size: int
    batch_age: float
    copy: bool
    spool: str | os.PathLike[str] | None
    spool_format: SpoolFormat
    startup: Startup
    on_delivered: Callable[..., Any] | None
    on_error: Callable[..., Any] | None

    @property
    def batching(self) -> bool:
        return self.batch_size > 1


_LIBRARY_DEFAULTS: dict[str, Any] = {
    "retries": 0,
    "backoff": 0.5,
    "max_backoff": 30.0,
    "backoff_jitter": 0.5,
    "queue_size": 1000,
    "overflow": Overflow.DROP_OLDEST,
    "batch_size": 1,
    "batch_age": 0.0,
    "copy": True,
    "spool_format": "json",
    "startup": Startup.RETRY,
}


def callable_name(fn: Any) -> str:
    """A readable name for a producer or consumer callable."""
    for candidate in (getattr(fn, "name", None), getattr(fn, "__qualname__", None)):
        if isinstance(candidate, str) and candidate:
            return candidate.rpartition("<locals>.")[2]
    inner = getattr(fn, "func", None)  # functools.partial
    if inner is not None and inner is not fn:
        return callable_name(inner)
    return type(fn).__name__


def resolve(consumers: Sequence[Consumer], default_timeout: float) -> list[LaneSettings]:
    """Resolve settings for every consumer and give each a unique name."""
    seen: dict[str, int] = {}
    out: list[LaneSettings] = []
    for spec in consumers:
        own = getattr(spec.fn, "consumer_defaults", None) or {}
        if not isinstance(own, dict):
            _validate.fail("consumer_defaults", own, f"must be a dict, got {own!r}",
                           subject=f"consumer_defaults of {spec.fn!r}")
        defaults = Consumer(spec.fn, **own)  # validates the consumer's own defaults
        values: dict[str, Any] = {}
        for f in fields(Consumer):
            if f.name == "fn":
                continue
            v = getattr(spec, f.name)
            if v is None:
                v = getattr(defaults, f.name)
            if v is None:
                v = _LIBRARY_DEFAULTS.get(f.name)
            values[f.name] = v
        if spec.batch_age and values["batch_size"] == 1:
            _validate.conflict("batch_age", spec.batch_age, "batch_size=1",
                               "batch_age is how long a batch collects")
        if spec.spool_format is not None and values["spool"] is None:
            _validate.fail("spool_format", spec.spool_format,
                           "applies to a spool, and spool is not set; got "
                           f"spool_format={spec.spool_format!r}")
        base = values.pop("name") or callable_name(spec.fn)
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        if values["timeout"] is None:
            values["timeout"] = default_timeout
        out.append(
            LaneSettings(fn=spec.fn, name=name, is_async=is_async_callable(spec.fn), **values)
        )
    return out
