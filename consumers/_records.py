"""Turning what producers return into rows: shared by the built-in consumers.

A producer may return a mapping, a dataclass instance, a pydantic-like object (anything
with ``model_dump()``), or, when the lane batches, the lane hands over a
:class:`~aioconveyor.Batch` of :class:`~aioconveyor.Record`. These helpers flatten all of
that into ``(event_time, mapping)`` pairs and into JSON-ready values.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from collections.abc import Iterator, Mapping
from pathlib import PurePath
from typing import Any

from aioconveyor.kit import Batch, current_tick

__all__ = ["as_mapping", "iter_produced", "iter_records", "json_dumps", "producer_now",
           "to_jsonable"]


def as_mapping(data: Any) -> Mapping[str, Any]:
    """``data`` as a mapping of column/field name to value, or ``TypeError``."""
    if isinstance(data, Mapping):
        return data
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    dump = getattr(data, "model_dump", None)
    if callable(dump):
        result = dump()
        if isinstance(result, Mapping):
            return result
    raise TypeError(
        f"expected a mapping, a dataclass or an object with model_dump(), got "
        f"{type(data).__name__}"
    )


def iter_records(data: Any, event_time: dt.datetime) -> Iterator[tuple[dt.datetime, Any]]:
    """Yield ``(event_time, item)`` for one item, or for every record of a batch."""
    if isinstance(data, Batch):
        for record in data:
            yield record.event_time, record.data
    else:
        yield event_time, data


def producer_now() -> str:
    """The producer of the item being handled in this context ("" outside a conveyor, or
    when the conveyor does not name it)."""
    tick = current_tick()
    return "" if tick is None else tick.producer


def iter_produced(data: Any, event_time: dt.datetime) -> Iterator[tuple[dt.datetime, Any, str]]:
    """Yield ``(event_time, item, producer)`` for one item (its producer from the current
    tick), or for every record of a batch (each record's own producer)."""
    if isinstance(data, Batch):
        for record in data:
            yield record.event_time, record.data, record.producer
    else:
        yield event_time, data, producer_now()


def to_jsonable(value: Any) -> Any:
    """``json.dumps`` default hook: datetimes (ISO 8601), Decimal, UUID, enums, dataclasses,
    pydantic-like models, sets, bytes (base64) and paths."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, uuid.UUID | PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def json_dumps(value: Any) -> str:
    """Compact JSON with :func:`to_jsonable` for the types plain ``json`` rejects."""
    return json.dumps(value, default=to_jsonable, separators=(",", ":"), allow_nan=False)
