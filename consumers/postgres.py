"""Write every record to a PostgreSQL table with asyncpg: COPY, exactly once, outage-proof.

Each call writes its rows with one binary ``COPY`` straight into the table, which stores
all of them or none. When some keys are there already (a batch retried after its commit
was acknowledged too late), it writes them in one transaction instead: ``COPY`` into a
temporary table, then ``INSERT ... SELECT ... ON CONFLICT (key) DO NOTHING``. A call
that fails half-way (lost connection, cancelled on timeout) commits nothing, and a call
that committed but never heard back is harmless to repeat: the rows already there are
skipped. The lane retries failed calls with capped backoff while new items queue, so a
PostgreSQL outage is ridden out without losing or duplicating rows (up to the queue size).

Two table shapes:

* **JSONB mode** (``columns=None``): ``(event_time timestamptz, payload jsonb)``; with
  ``create_table=True`` the table is created with ``event_time`` as its primary key.
* **Column mode** (``columns=[...]``): each key of a record becomes the column of the same
  name; ``event_time`` gets the tick's time. Missing keys are written as NULL, extra keys
  are ignored, values of ``json``/``jsonb`` columns are JSON-encoded.

A record PostgreSQL rejects (a value of the wrong type, a CHECK or NOT NULL violation...)
never poisons its batch: the batch is written again row by row, the bad rows are skipped,
counted in :attr:`PostgresConsumer.rejected` and logged once per kind (then rate-limited).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "aioconveyor.consumers.postgres needs asyncpg, which is not installed: "
        'pip install "aioconveyor[postgres]"'
    ) from exc

from aioconveyor import Consumer
from aioconveyor.kit import (
    CANCEL_GRACE,
    Batch,
    ConveyorError,
    LogLimiter,
    check,
    check_pg_ssl,
    encode_userinfo,
    mask_dsn,
    scrub,
    secrets_of,
)

from ._records import as_mapping, json_dumps, producer_now

__all__ = ["PostgresConsumer", "SharedTableError", "mask_dsn", "quote_ident"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

TIME_COLUMN = "event_time"
"""Default name of the column that receives each record's tick time."""

PAYLOAD_COLUMN = "payload"
"""Default name of the ``jsonb`` column in JSONB mode."""

PRODUCER_COLUMN = "producer"
"""Default name of the ``text`` column that receives each record's producer."""

_STAGE = "aioconveyor_stage"
"""The per-transaction temporary table rows are COPY-ed into (``ON COMMIT DROP``)."""

_ROLLBACK_GRACE = 0.8 * CANCEL_GRACE
"""Seconds a rollback after a cancelled write may take (within the lane's grace for a
cancelled call) before the connection is dropped instead."""

_JSON_TYPES = frozenset({"json", "jsonb"})

# What one bad row raises: a PostgreSQL data (22xxx) or integrity (23xxx) error, or the
# TypeError / ValueError / OverflowError asyncpg's binary encoders raise client-side.
# Never a connection error: those are raised so that the lane retries the whole batch.
_ROW_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    TypeError,
    ValueError,
    ArithmeticError,
)

_Row = tuple[Any, ...]
_Refused = tuple[object, BaseException]
"""A record that was refused: its event time, and why."""

#: A call with more records than this builds its rows (and JSON) on a worker thread.
OFFLOAD_ROWS = 1000
#: With JSON to encode, a call builds its rows on a worker thread unless the last build
#: took less than this (seconds): the first call, whose cost is unknown, goes to the thread.
OFFLOAD_SECONDS = 0.002


class SharedTableError(ConveyorError, ValueError):
    """Records of several producers reached a table that holds one producer's rows (it has
    no producer column, and the key is the default one): their rows would collide on the
    time column. The lane retries the call; add the column (the message says how) or give
    the producers tables of their own."""


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier: double-quoted, inner quotes doubled."""
    check.text("identifier", name, subject="an identifier", nul=False)
    return '"' + name.replace('"', '""') + '"'


def _check_mapping(what: str, value: object, *, secret: bool = False) -> None:
    """``value`` is None or a mapping of str keys (to str values unless ``secret``). The
    error names the offending entry; a ``secret`` one (it may hold a password) only by type
    or key."""
    if value is None:
        return
    if not secret:
        check.str_mapping(what, value)
        return
    if not isinstance(value, Mapping):
        check.fail(what, type(value).__name__,
                   f"must be a mapping or None, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            check.fail(what, f"<{type(value).__name__} with a key {k!r}>",
                       f"keys must be str, got {k!r}")


def _inserted(status: str) -> int:
    """Rows inserted, from a command status such as ``INSERT 0 17``."""
    return int(status.rsplit(" ", 1)[-1])


def _utc(event_time: object) -> datetime:
    if not isinstance(event_time, datetime):
        raise TypeError(f"event_time must be a datetime, got {type(event_time).__name__}")
    if event_time.tzinfo is None:  # a naive time is taken as UTC, never as local time
        return event_time.replace(tzinfo=UTC)
    return event_time


class PostgresConsumer:
    """Write records to a PostgreSQL table, exactly once, riding out outages.

    * ``dsn``: ``postgresql://user:password@host:port/database`` (``None``: the libpq
      ``PG*`` environment variables); or ``pool``: an asyncpg pool you own (not closed here).
    * ``table`` / ``schema``: where rows go (``schema=None``: the ``search_path``).
    * ``columns``: column mode, see the module docstring; ``None``: JSONB mode, the whole
      record JSON-encoded into ``payload_column``.
    * ``time_column``: the ``timestamptz`` column that receives each record's tick time;
      written first, or where ``columns`` lists it. ``None``: do not write the tick time.
    * ``key``: the columns of a unique index or primary key that make a row unique
      (default: ``(time_column,)``); rows whose key is already present are skipped, which
      is what makes retries safe. ``()``: skip rows that conflict with any unique index.
    * ``per_producer``: whether rows carry the name of their producer in
      ``producer_column`` (``text``), which then is part of the default key
      ``(producer_column, time_column)``: one table for several producers, exactly once
      per producer and grid time. ``None`` (default): yes if the table has that column
      (looked at by :meth:`open`), else no. A table without it holds one producer's rows:
      with the default key, records of a second producer make the call fail with
      :class:`SharedTableError` (retried, so nothing is lost while the queue has room, and
      the table is looked at again: add the column and the writes go on), never skipped
      as duplicates.
    * ``create_table``: JSONB mode only; ``CREATE TABLE IF NOT EXISTS`` with the key as
      primary key (and the producer's column with ``per_producer=True``).
    * ``batch_size``, ``batch_age``, ``retries``, ``max_backoff``, ``queue_size``,
      ``timeout``: the lane settings this consumer asks for (see :class:`aioconveyor.Consumer`).
    * ``ssl``, ``server_settings``, ``min_size``, ``max_size``, ``connect_timeout`` and
      ``pool_options`` (anything else ``asyncpg.create_pool`` accepts) configure the pool.
    """

    def __init__(
        self,
        dsn: str | None = None,
        table: str = "aioconveyor_events",
        columns: Sequence[str] | None = None,
        *,
        pool: Any = None,
        schema: str | None = None,
        create_table: bool = False,
        key: Sequence[str] | None = None,
        time_column: str | None = TIME_COLUMN,
        payload_column: str = PAYLOAD_COLUMN,
        per_producer: bool | None = None,
        producer_column: str = PRODUCER_COLUMN,
        batch_size: int = 500,
        batch_age: float = 0.5,
        retries: int = 1_000_000,
        max_backoff: float = 5.0,
        queue_size: int = 10_000,
        timeout: float | None = None,
        ssl: Any = None,
        server_settings: Mapping[str, str] | None = None,
        min_size: int = 1,
        max_size: int = 2,
        connect_timeout: float = 10.0,
        pool_options: Mapping[str, Any] | None = None,
        name: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        check.secret_text("dsn", dsn)
        check_pg_ssl(ssl)
        _check_mapping("server_settings", server_settings)
        _check_mapping("pool_options", pool_options, secret=True)
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            check.fail("logger", logger, f"must be a logging.Logger or None, got {logger!r}")
        self._pool_options = dict(pool_options or {})
        self._secrets = secrets_of(dsn, self._pool_options.get("password"))
        self._dsn = dsn
        if pool is not None:
            given = {n: v for n, v in (("dsn", dsn), ("ssl", ssl), ("server_settings",
                     server_settings), ("pool_options", pool_options)) if v is not None}
            if given:
                first = next(iter(given))  # dsn and pool_options may hold a password
                check.conflict(first, "***" if first in ("dsn", "pool_options")
                               else given[first], "pool",
                               f"pass either pool or {', '.join(given)}: a given pool "
                               "is used as it is")
        self._given_pool = pool
        self.table = self._identifier("table", table)
        self.schema = None if schema is None else self._identifier("schema", schema)
        self.time_column = (None if time_column is None
                            else self._identifier("time_column", time_column))
        self.create_table = check.boolean("create_table", create_table)
        self.create_table = create_table

        self.producer_column = self._identifier("producer_column", producer_column)
        if per_producer is not None and not isinstance(per_producer, bool):
            check.fail("per_producer", per_producer, "must be True, False or None (None: "
                       f"decided by the table's columns at open), got {per_producer!r}")

        self.columns: tuple[str, ...] | None
        if columns is None:
            if self.time_column is None:
                check.fail("time_column", None, "needs a time_column, got None",
                           subject="JSONB mode (columns=None)")
            self.payload_column = self._identifier("payload_column", payload_column)
            if self.payload_column == self.time_column:
                check.fail("payload_column", payload_column,
                           f"and time_column must differ, both are {payload_column!r}")
            self.columns = None
            written: list[str] = [self.time_column, self.payload_column]
        else:
            if create_table:
                check.conflict("create_table", create_table, "columns",
                               "create_table=True works in JSONB mode (columns=None) "
                               "only; create a table with columns yourself")
            if payload_column != PAYLOAD_COLUMN:
                check.conflict("payload_column", payload_column, "columns",
                               "payload_column is the JSONB column of columns=None")
            self.columns = self._column_list(columns)
            self.payload_column = payload_column
            written = list(self.columns)
            if self.time_column is not None and self.time_column not in written:
                written.insert(0, self.time_column)
        # a column that is something else already (listed in columns, filled from the
        # records as before; the time or payload column) never receives the producer
        self._producer_taken = self.producer_column in (
            *written, self.time_column, None if self.columns is not None else self.payload_column)
        if self._producer_taken and per_producer:
            check.conflict("per_producer", per_producer, "producer_column",
                           f"per_producer=True fills {self.producer_column!r} from each "
                           "record's producer, but columns, time_column or payload_column "
                           "name it already: leave it out of columns or pick another "
                           "producer_column")
        self._base_columns: tuple[str, ...] = tuple(written)

        if key is None:
            if self.time_column is None:
                check.fail("key", None, "is required when time_column=None: name the "
                                            "columns of the unique index that identifies a row")
        elif isinstance(key, str | bytes) or not isinstance(key, Sequence):
            check.fail("key", key, f"must be a sequence of column names, got {key!r}")
        self._key_given: tuple[str, ...] | None = (
            None if key is None else tuple(self._identifier("key", k) for k in key))
        if self._key_given is not None:
            if self.producer_column in self._key_given and not self._producer_taken:
                if per_producer is False:
                    check.fail("key", key, f"names {self.producer_column!r}, which "
                               "per_producer=False does not write")
                per_producer = True  # the key needs the producer's column
            could_write = [*written, self.producer_column] if per_producer else written
            missing = [k for k in self._key_given if k not in could_write]
            if missing:
                check.fail("key", key, f"columns {missing} are not written by this consumer "
                                           f"(it writes {could_write})")
            if create_table and not self._key_given:
                check.fail("key", key, "is needed by create_table=True (the primary key), "
                                           "got ()")
        self._per_producer_setting = per_producer
        self.per_producer: bool | None = per_producer
        """Whether rows carry their producer (``producer_column``, part of the default
        key); ``None`` until :meth:`open` has looked at the table (``per_producer=None``)."""
        self._recheck = False  # look at the table's columns again before the next write
        self._owner: str | None = None  # the one producer a table without the column holds

        if name is not None:
            check.text("name", name)
        self.name = name or f"postgres:{self.table}"
        self.consumer_defaults: dict[str, Any] = {
            "batch_size": batch_size, "batch_age": batch_age, "retries": retries,
            "max_backoff": max_backoff, "queue_size": queue_size,
        }
        """Lane settings unless overridden with :class:`aioconveyor.Consumer`."""
        if timeout is not None:
            self.consumer_defaults["timeout"] = timeout
        Consumer(self, **self.consumer_defaults)  # validates them, naming any bad one

        self._pool_args: dict[str, Any] = {
            "ssl": ssl, "min_size": self._count("min_size", min_size, 0),
            "max_size": self._count("max_size", max_size, 1),
            "timeout": self._seconds("connect_timeout", connect_timeout),
        }
        if server_settings is not None:
            self._pool_args["server_settings"] = dict(server_settings)
        if self._pool_args["min_size"] > self._pool_args["max_size"]:
            check.fail("min_size", min_size,
                       f"must be <= max_size, got {min_size} > {max_size}")
        self.connect_timeout: float = self._pool_args["timeout"]
        self._logger = logger or globals()["logger"]

        self.written = 0
        """Rows inserted so far."""
        self.duplicates = 0
        """Rows skipped because their key was already in the table (a retried write)."""
        self.rejected = 0
        """Records PostgreSQL (or the encoding) refused; skipped, the rest was written."""
        self._pool: Any = None
        self._held: Any = None  # the own pool's connection kept between calls
        self._json_positions: frozenset[int] = frozenset()
        self._json_values: frozenset[int] = frozenset()  # positions among _value_columns
        self._build_cost: float | None = None  # seconds the last call's rows took to build
        self._naive_time = False
        self._limiter = LogLimiter()
        self._target = (f"{quote_ident(self.schema)}.{quote_ident(self.table)}"
                        if self.schema else quote_ident(self.table))
        self._layout(per_producer is True)
        if self.columns is None:
            pk = ", ".join(quote_ident(k) for k in self.key)
            producer = (f"{quote_ident(self.producer_column)} text NOT NULL, "
                        if self.per_producer else "")
            self._sql_create = (
                f"CREATE TABLE IF NOT EXISTS {self._target} ("
                f"{quote_ident(self.written_columns[0])} timestamptz NOT NULL, {producer}"
                f"{quote_ident(self.payload_column)} jsonb, PRIMARY KEY ({pk}))"
            )

    def _layout(self, with_producer: bool) -> None:
        """The columns a row writes, the key and the statements, with or without the
        producer's column (known in __init__, or once open() has seen the table)."""
        written = list(self._base_columns)
        self._producer_index: int | None = None
        if with_producer:
            at = (written.index(self.time_column) + 1 if self.time_column in written else 0)
            written.insert(at, self.producer_column)
            self._producer_index = at
        self.written_columns: tuple[str, ...] = tuple(written)
        """Every column a row writes, in order."""
        self._time_index = (self.written_columns.index(self.time_column)
                            if self.time_column in self.written_columns else None)
        self._value_columns = tuple(c for i, c in enumerate(self.written_columns)
                                    if i not in (self._time_index, self._producer_index))
        pick = operator.itemgetter(*self._value_columns) if self._value_columns else None
        self._pick: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            (lambda m: ()) if pick is None
            else (lambda m: (pick(m),)) if len(self._value_columns) == 1
            else pick
        )
        if self._key_given is not None:
            self.key: tuple[str, ...] = self._key_given
        elif with_producer:
            assert self.time_column is not None
            self.key = (self.producer_column, self.time_column)
        else:
            assert self.time_column is not None
            self.key = (self.time_column,)
        # a table without the producer's column holds one producer's rows: with the
        # default key, a second producer's rows would be skipped as duplicates
        self._guarded = not with_producer and self._key_given is None
        cols = ", ".join(quote_ident(c) for c in self.written_columns)
        conflict = (f"ON CONFLICT ({', '.join(quote_ident(k) for k in self.key)}) DO NOTHING"
                    if self.key else "ON CONFLICT DO NOTHING")
        stage = f"pg_temp.{quote_ident(_STAGE)}"
        self._sql_stage = (f"CREATE TEMPORARY TABLE {quote_ident(_STAGE)} ON COMMIT DROP AS "
                           f"SELECT {cols} FROM {self._target} WITH NO DATA")
        self._sql_merge = (f"INSERT INTO {self._target} ({cols}) SELECT {cols} FROM {stage} "
                           f"{conflict}")
        values = ", ".join(f"${i}" for i in range(1, len(self.written_columns) + 1))
        self._sql_insert_one = f"INSERT INTO {self._target} ({cols}) VALUES ({values}) {conflict}"
        self._sql_check = (f"EXPLAIN INSERT INTO {self._target} ({cols}) SELECT {cols} "
                           f"FROM {self._target} WHERE false {conflict}")
        self._sql_types = f"SELECT {cols} FROM {self._target} LIMIT 0"

    # -- argument checks -------------------------------------------------------------

    @staticmethod
    def _identifier(what: str, value: object) -> str:
        return check.text(what, value, nul=False)

    @classmethod
    def _column_list(cls, columns: object) -> tuple[str, ...]:
        if isinstance(columns, str | bytes) or not isinstance(columns, Sequence):
            check.fail("columns", columns,
                       f"must be a sequence of column names or None, got {columns!r}")
        out = tuple(cls._identifier(f"columns[{i}]", c) for i, c in enumerate(columns))
        if not out:
            check.fail("columns", columns, "must name at least one column (None: JSONB "
                                               f"mode), got {columns!r}")
        if len(set(out)) != len(out):
            check.fail("columns", columns, f"must not repeat a column, got {list(out)!r}")
        return out

    @staticmethod
    def _count(what: str, value: object, minimum: int) -> int:
        return check.integer(what, value, minimum=minimum)

    @staticmethod
    def _seconds(what: str, value: object) -> float:
        return check.positive(what, value)

    # -- presentation ----------------------------------------------------------------

    @property
    def dsn(self) -> str | None:
        """The DSN with its password masked (the real one is never shown)."""
        return mask_dsn(self._dsn)

    @property
    def target(self) -> str:
        """The quoted, schema-qualified table name rows are written to."""
        return self._target

    def __repr__(self) -> str:
        where = "given pool" if self._given_pool is not None else repr(self.dsn)
        return f"<PostgresConsumer {self.name!r} table={self._target} {where}>"

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def _scrubbed(self, exc: BaseException) -> BaseException:
        """``exc`` itself, or a ConveyorError without the password if its text had it."""
        text = f"{exc}{exc.args!r}"
        if not any(s in text for s in self._secrets):
            return exc
        return ConveyorError(f"consumer {self.name!r}: {type(exc).__name__}: "
                             f"{self._scrub(str(exc))}")

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool (unless given), create the table if asked, and check the table.

        Fails (the conveyor then does not start) if PostgreSQL is unreachable, the table or
        a column is missing, or no unique index matches ``key``.
        """
        if self._pool is not None:
            return
        pool = self._given_pool
        try:
            if pool is None:
                dsn = None if self._dsn is None else encode_userinfo(self._dsn)
                pool = await asyncpg.create_pool(dsn, **self._pool_args,
                                                 **self._pool_options)
            try:
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    await self._prepare(conn)
            except BaseException:
                if pool is not self._given_pool:
                    pool.terminate()
                raise
        except Exception as exc:
            scrubbed = self._scrubbed(exc)
            if scrubbed is exc:
                raise
            raise scrubbed from None
        self._pool = pool
        self._logger.info("consumer %s: writing to %s at %s", self.name, self._target,
                          "a given pool" if self._given_pool is not None else self.dsn)

    async def _prepare(self, conn: Any) -> None:
        if self.columns is None and self.create_table:
            await conn.execute(self._sql_create)
        if self._per_producer_setting is not False and not self._producer_taken:
            has = self.producer_column in await self._table_columns(conn)
            if self._per_producer_setting is None:
                self._layout(has)
            elif not has:
                raise ValueError(
                    f"table {self._target} has no column {self.producer_column!r} for "
                    f"per_producer=True: {self._migration()}")
        self.per_producer = self._producer_index is not None
        statement = await conn.prepare(self._sql_types)
        types = [attr.type.name for attr in statement.get_attributes()]
        self._json_positions = frozenset(i for i, t in enumerate(types) if t in _JSON_TYPES)
        t = self._time_index
        self._json_values = frozenset(i if t is None or i < t else i - 1
                                      for i in self._json_positions if i != t)
        if self.time_column is not None:
            kind = types[self.written_columns.index(self.time_column)]
            if kind not in ("timestamptz", "timestamp"):
                raise ValueError(f"time_column {self.time_column!r} of {self._target} must be "
                                 f"a timestamptz (or timestamp) column, it is {kind}")
            self._naive_time = kind == "timestamp"
        try:
            await conn.execute(self._sql_check)
        except asyncpg.InvalidColumnReferenceError as exc:
            raise ValueError(
                f"table {self._target} has no unique index or primary key on exactly "
                f"{list(self.key)}: add one (it is what makes retries safe) or pass key= "
                f"({exc})"
            ) from exc

    async def _table_columns(self, conn: Any) -> set[str]:
        statement = await conn.prepare(f"SELECT * FROM {self._target} LIMIT 0")
        return {attr.name for attr in statement.get_attributes()}

    def _migration(self, first: str | None = None) -> str:
        """How to give the table a producer column (the rows already there get ``first``)."""
        column, time_column = quote_ident(self.producer_column), self.time_column or "?"
        default = "'" + (first or "<the producer of the existing rows>").replace("'", "''") + "'"
        return (f"ALTER TABLE {self._target} ADD COLUMN {column} text NOT NULL DEFAULT "
                f"{default}, then replace the unique key on ({time_column}) with one on "
                f"({self.producer_column}, {time_column}) (for a table made by "
                f"create_table=True: ALTER TABLE {self._target} DROP CONSTRAINT "
                f"{quote_ident(self.table + '_pkey')}, ADD PRIMARY KEY ({column}, "
                f"{quote_ident(time_column)}))")

    def _check_one_producer(self, data: Any) -> None:
        """A table without the producer's column (default key) takes one producer's rows."""
        if isinstance(data, Batch):
            names = {record.producer for record in data}
        else:
            names = {producer_now()}
        names.discard("")
        owner = self._owner
        others = sorted(names - {owner}) if owner is not None else sorted(names)
        if not others or (owner is None and len(others) == 1):
            return
        self._recheck = self._per_producer_setting is None
        producers = ", ".join(repr(n) for n in ([owner] if owner else []) + others)
        raise SharedTableError(
            f"consumer {self.name!r}: records of producers {producers} reached "
            f"{self._target}, which has no {self.producer_column!r} column: their rows "
            f"would collide on {self.time_column!r} and all but one be skipped. Give each "
            f"producer its own table, or add the column: {self._migration(owner or others[0])}"
            "; the next retry looks at the table again")

    def _note_owner(self, data: Any) -> None:
        if self._owner is None:
            name = (next((r.producer for r in data if r.producer), "")
                    if isinstance(data, Batch) else producer_now())
            self._owner = name or None

    async def close(self) -> None:
        """Close the pool this consumer created (a given pool is left open). Idempotent."""
        await self._release_held()
        pool, self._pool = self._pool, None
        if pool is None or pool is self._given_pool:
            return
        try:
            await pool.close()  # waits for connections in use; terminates them if cancelled
        except BaseException:
            pool.terminate()
            raise

    async def __aenter__(self) -> PostgresConsumer:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- writing ---------------------------------------------------------------------

    async def __call__(self, data: Any, event_time: datetime) -> None:
        """Write one record or a :class:`~aioconveyor.Batch`; raise if PostgreSQL is unreachable."""
        if self._pool is None:
            raise RuntimeError(f"consumer {self.name!r} is not open: use it in a conveyor, "
                               "in `async with`, or call open() first")
        if self._recheck:  # the table lacked the producer's column: is it there now?
            async with self._pool.acquire(timeout=self.connect_timeout) as conn:
                await self._prepare(conn)
            self._recheck = False
        if self._guarded:
            self._check_one_producer(data)
        n = len(data) if isinstance(data, Batch) else 1
        # Building the rows runs json.dumps over every JSON value: for a big batch (or one
        # big JSON payload) that is tens to hundreds of milliseconds of pure Python during
        # which the conveyor's loop, which runs this consumer, would run nothing else (no
        # tick, no other consumer). Such builds go to a worker thread; small ones, which
        # cost microseconds, stay inline, where a thread hop would cost more than the work.
        if n > OFFLOAD_ROWS or (self._encodes_json and (
                self._build_cost is None or self._build_cost >= OFFLOAD_SECONDS)):
            rows, refused = await asyncio.to_thread(self._build, data, event_time)
        else:
            rows, refused = self._build(data, event_time)
        if rows:
            try:
                inserted, refused_by_db = await self._write(rows)
            except Exception as exc:
                scrubbed = self._scrubbed(exc)
                if scrubbed is exc:
                    raise
                raise scrubbed from None
            # counted only once the write committed: a retried batch never counts twice
            self.written += inserted
            if self._guarded:
                self._note_owner(data)
            self.duplicates += len(rows) - inserted - len(refused_by_db)
            refused += refused_by_db
        for moment, error in refused:
            self._reject(moment, error)

    @property
    def _encodes_json(self) -> bool:
        return self.columns is None or bool(self._json_values)

    def _build(self, data: Any, event_time: datetime) -> tuple[list[_Row], list[_Refused]]:
        """The rows of one call, and the records refused; thread-safe (reads settings only)."""
        start = time.perf_counter()
        rows: list[_Row] = []
        refused: list[_Refused] = []
        row = self._row
        records: Any = (((r.data, r.event_time, r.producer) for r in data)
                        if isinstance(data, Batch) else ((data, event_time, producer_now()),))
        for item, when, producer in records:
            try:
                rows.append(row(when if type(when) is datetime and when.tzinfo is UTC
                                else _utc(when), item, producer))
            except (TypeError, ValueError) as exc:
                refused.append((when, exc))
        self._build_cost = time.perf_counter() - start
        return rows, refused

    def _row(self, event_time: datetime, item: Any, producer: str = "") -> _Row:
        if self.columns is None:
            try:
                value: Any = dict(as_mapping(item))
            except TypeError:
                value = item  # JSONB mode takes any JSON value, not only objects
            if self._producer_index is not None:
                return (self._time_value(event_time), producer, json_dumps(value))
            return (self._time_value(event_time), json_dumps(value))
        mapping = item if type(item) is dict else as_mapping(item)  # a dict: the fast path
        try:
            values: tuple[Any, ...] = self._pick(mapping)
        except KeyError:  # a missing key is written as NULL
            values = tuple(mapping.get(c) for c in self._value_columns)
        if self._json_values:
            values = tuple(json_dumps(v) if v is not None and i in self._json_values else v
                           for i, v in enumerate(values))
        t, p = self._time_index, self._producer_index
        if p is not None:
            if t is None:  # p == 0
                return (producer, *values)
            when = self._time_value(event_time) if self._naive_time else event_time
            if t == 0:  # p == 1
                return (when, producer, *values)
            return (*values[:t], when, producer, *values[t:])
        if t is None:
            return values
        when = self._time_value(event_time) if self._naive_time else event_time
        if t == 0:  # the usual layout: the time column first
            return (when, *values)
        return (*values[:t], when, *values[t:])

    def _time_value(self, event_time: datetime) -> datetime:
        if self._naive_time:  # a `timestamp` (no time zone) column: store UTC wall time
            return event_time.astimezone(UTC).replace(tzinfo=None)
        return event_time

    async def _write(self, rows: list[_Row]) -> tuple[int, list[_Refused]]:
        """Write ``rows`` exactly once: (rows inserted, rows refused one by one).

        Its own pool's connection is kept between calls (one call at a time per lane, and
        no acquire per batch); a connection from a given pool is borrowed per call.
        """
        pool = self._pool
        try:
            if pool is self._given_pool:
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    return await self._write_on(conn, rows)
            if self._held is None:
                self._held = await pool.acquire(timeout=self.connect_timeout)
            try:
                return await self._write_on(self._held, rows)
            except BaseException:
                await self._release_held()  # the pool resets it (or drops it if broken)
                raise
        except Exception:
            # PostgreSQL unreachable, restarted, or the connection was killed: make every
            # pooled connection reconnect on its next use, and let the lane retry the batch
            await pool.expire_connections()
            raise

    async def _release_held(self) -> None:
        conn, self._held = self._held, None
        if conn is None or self._pool is None:
            return
        try:
            async with asyncio.timeout(_ROLLBACK_GRACE):
                await self._pool.release(conn)
        except Exception:
            conn.terminate()

    async def _write_on(self, conn: Any, rows: list[_Row]) -> tuple[int, list[_Refused]]:
        try:  # fast path: one COPY straight into the table, all rows or none
            return await self._copy_direct(conn, rows), []
        except asyncpg.UniqueViolationError:
            pass  # some keys are there already (a retried batch): merge, skip them
        except _ROW_ERRORS as exc:
            if len(rows) == 1:
                return 0, [(self._row_time(rows[0]), exc)]
            return await _in_transaction(conn, lambda: self._one_by_one(conn, rows))
        try:
            return await _in_transaction(conn, lambda: self._copy(conn, rows)), []
        except _ROW_ERRORS as exc:
            if len(rows) == 1:
                return 0, [(self._row_time(rows[0]), exc)]
        return await _in_transaction(conn, lambda: self._one_by_one(conn, rows))

    async def _copy_direct(self, conn: Any, rows: list[_Row]) -> int:
        """COPY ``rows`` into the table itself (atomic: a key already there fails it all)."""
        status = await conn.copy_records_to_table(self.table, schema_name=self.schema,
                                                  records=rows, columns=self.written_columns)
        return _inserted(status)

    async def _copy(self, conn: Any, rows: list[_Row]) -> int:
        """COPY ``rows`` into the stage table, then merge it: the number of rows inserted."""
        await conn.execute(self._sql_stage)
        await conn.copy_records_to_table(_STAGE, schema_name="pg_temp", records=rows,
                                         columns=self.written_columns)
        return _inserted(await conn.execute(self._sql_merge))

    async def _one_by_one(self, conn: Any, rows: list[_Row]) -> tuple[int, list[_Refused]]:
        """Insert each row under its own savepoint: a bad row is refused alone."""
        inserted = 0
        refused: list[_Refused] = []
        for row in rows:

            async def insert(row: _Row = row) -> int:
                return _inserted(await conn.execute(self._sql_insert_one, *row))

            try:
                inserted += await _in_transaction(conn, insert)
            except _ROW_ERRORS as exc:
                refused.append((self._row_time(row), exc))
        return inserted, refused

    def _row_time(self, row: _Row) -> datetime | None:
        if self.time_column is None:
            return None
        moment = row[self.written_columns.index(self.time_column)]
        return moment if isinstance(moment, datetime) else None

    def _reject(self, when: object, exc: BaseException) -> None:
        self.rejected += 1
        kind = getattr(exc, "sqlstate", None) or type(exc).__name__
        self._limiter.log(
            self._logger, logging.WARNING, ("rejected", kind),
            "consumer %s: a record of %s was refused and skipped (%d so far); the rest of "
            "its batch was written to %s: %s: %s",
            self.name, when.isoformat() if isinstance(when, datetime) else "?",
            self.rejected, self._target, type(exc).__name__, self._scrub(str(exc)),
        )


async def _in_transaction(conn: Any, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` in a transaction (a savepoint if one is open): commit, or roll back.

    Also rolls back when cancelled (the lane's timeout): asyncpg first has the server
    cancel the interrupted statement, so no orphaned backend is left holding locks or a
    connection slot, and the connection goes back to the pool clean.
    """
    tx = conn.transaction()
    await tx.start()
    try:
        result = await work()
    except BaseException:
        await _roll_back(conn, tx)
        raise
    await tx.commit()
    return result


async def _roll_back(conn: Any, tx: Any) -> None:
    """Roll ``tx`` back within a short grace; if that fails, drop the connection."""
    if conn.is_closed():
        return
    try:
        async with asyncio.timeout(_ROLLBACK_GRACE):
            await tx.rollback()
    except (Exception, asyncio.CancelledError):
        conn.terminate()  # the pool replaces it; the server rolls back on disconnect
