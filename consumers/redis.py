"""Append every record to a Redis stream (redis-py asyncio), exactly once per tick.

One record becomes one stream entry, written with ``XADD`` under an entry ID derived from
its grid time: ``<milliseconds since the epoch>-<microseconds within that millisecond>``
(:func:`entry_id`; a tick on a whole millisecond gets sequence ``0``). Each producer has a
stream of its own (``stream="readings:{producer}"``), so within a stream every tick has its
own, increasing ID, and a retried write of the same tick is refused by Redis itself ("The
ID specified in XADD is equal or smaller than the target stream top item"). The consumer
then looks the ID up: an entry with the same fields is already there, so the record counts
as delivered (:attr:`RedisStreamConsumer.duplicates`) and is not written twice.

A refused ID that is *not* in the stream belongs to a tick older than the stream's newest
entry (a clock stepped back, another writer on the same stream): Redis can never store it
there, so the record is reported as :class:`~aioconveyor.Rejected` (counted in
:attr:`RedisStreamConsumer.out_of_order`, logged), never dropped silently. The same goes
for an entry of that ID holding *different* fields (:attr:`RedisStreamConsumer.conflicts`).

A batch is one pipeline (``transaction=False``) of ``XADD`` commands, one round trip; every
entry's reply is handled on its own, so a refused duplicate never fails the rest. A lost
connection, a timeout or any other error raises, and the lane retries the same item (with
capped backoff, practically forever) while new items wait in its bounded queue; the client
reconnects on the next call. Delivery is *exactly once* per (stream, grid time).

Fields of an entry (``layout="flat"``, the default): each key of a mapping (dict,
dataclass, pydantic-like model) is a field; ``str`` and ``bytes`` values as they are,
``int`` and ``float`` as text (``21.5``, ``nan``), anything else as compact JSON (a JSON
string without its quotes: a datetime is its ISO 8601 text), plus ``event_time`` (the
grid time, ISO 8601) unless the record has that key. Data that is not a mapping is one
``data`` field. ``layout="json"``: one ``data`` field holding the whole record as JSON,
plus ``event_time``. Or an ``encoder(data, event_time)`` of your own returns the fields.
"""

from __future__ import annotations

import enum
import json
import logging
import string
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, NamedTuple

from aioconveyor.kit import (
    ConveyorError,
    LogLimiter,
    Rejected,
    check,
    mask_dsn,
    mask_text,
    secrets_of,
    split_url,
)

from ._records import as_mapping, iter_produced, json_dumps

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import parse_url
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import AuthenticationError, RedisError, ResponseError
except ImportError as exc:  # exercised in a subprocess by the tests
    raise ImportError(
        'RedisStreamConsumer needs the redis package; install it with: '
        'pip install "aioconveyor[redis]"'
    ) from exc

__all__ = [
    "RedisConnectionError",
    "RedisRecordError",
    "RedisStreamConsumer",
    "RedisStreamError",
    "entry_id",
]

logger = logging.getLogger(__name__)

PRODUCER_FIELD = "producer"
"""The stream template field the record's producer fills (``readings:{producer}``)."""
DATA_FIELD = "data"
"""The field holding data that is not a mapping (and the whole record with ``layout="json"``)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_REFUSED_ID = "equal or smaller than the target stream top item"
_FORMATTER = string.Formatter()
_OWN_OPTIONS = frozenset({
    "url", "host", "port", "db", "username", "password", "socket_timeout",
    "socket_connect_timeout", "retry", "retry_on_timeout", "retry_on_error",
    "decode_responses", "protocol", "single_connection_client", "connection_pool",
})
"""``redis.asyncio.Redis`` arguments ``client_options`` must not set: the consumer's own."""


# -- errors ----------------------------------------------------------------------------


class RedisStreamError(ConveyorError):
    """Root of the errors :class:`RedisStreamConsumer` raises (the lane counts and logs them).

    Raised as such for an error Redis answered to some entries (``OOM``, ``WRONGTYPE``,
    ``NOPERM``...): the lane retries the call, and the entries written meanwhile are then
    found in the stream and not written twice.
    """


class RedisRecordError(RedisStreamError, Rejected, ValueError):
    """A record that can never be stored: no field it could be written as, no producer to
    name its stream, a grid time not after the epoch, or a tick older than the stream's
    newest entry. A :class:`~aioconveyor.Rejected`: the lane counts it, never retries it."""


class RedisConnectionError(RedisStreamError, ConnectionError):
    """Redis could not be reached, refused the login, or the connection dropped or timed
    out mid-write. ``refused`` is true for a refused login (retrying cannot help until the
    configuration changes)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


# -- entry IDs and fields --------------------------------------------------------------


def entry_id(event_time: datetime) -> str:
    """The stream entry ID of a grid time: ``"<ms>-<µs within the ms>"``.

    ``2026-01-01T00:00:00.000250+00:00`` is ``1767225600000-250``; distinct grid times have
    distinct IDs in the same order. Redis needs an ID greater than ``0-0``: a naive
    datetime, or a time not after the Unix epoch, raises :class:`RedisRecordError`.
    """
    if event_time.tzinfo is None or event_time.utcoffset() is None:
        raise RedisRecordError(f"the record of {event_time.isoformat()} has a naive "
                               "event_time; an entry ID needs a timezone-aware one")
    us = (event_time - _EPOCH) // _US
    if us <= 0:
        raise RedisRecordError(
            f"the record of {event_time.isoformat()} is not after the Unix epoch; a Redis "
            "stream entry ID (milliseconds since the epoch) must be greater than 0-0")
    ms, seq = divmod(us, 1000)
    return f"{ms}-{seq}"


def _text(value: Any) -> bytes:
    """One field value: str and bytes as they are, int and float as text, the rest JSON."""
    fast = _FAST.get(type(value))
    if fast is not None:
        return fast(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, enum.Enum):
        return _text(value.value)
    if isinstance(value, bool) or value is None:
        return b"true" if value is True else b"false" if value is False else b"null"
    if isinstance(value, int):
        return int.__repr__(value).encode()
    if isinstance(value, float):
        return float.__repr__(value).encode()
    text = json_dumps(value)
    if text.startswith('"'):  # a datetime, UUID, str enum...: its text, not a JSON string
        text = json.loads(text)
    return text.encode("utf-8")


_FAST: dict[type, Callable[[Any], bytes]] = {
    str: str.encode,
    bytes: bytes,
    bool: lambda v: b"true" if v else b"false",
    int: lambda v: int.__repr__(v).encode(),
    float: lambda v: float.__repr__(v).encode(),
}
"""The exact types of most values, each with its conversion (one dict lookup)."""


def _name(key: Any) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    raise TypeError(f"field names must be str or bytes, got {key!r} ({type(key).__name__})")


def _flat(mapping: Mapping[Any, Any]) -> dict[bytes, bytes]:
    """A field per key of ``mapping``."""
    try:  # str keys, as nearly always
        return {k.encode(): _text(v) for k, v in mapping.items()}
    except AttributeError:
        return {_name(k): _text(v) for k, v in mapping.items()}


def _mapping(data: Any) -> Mapping[Any, Any] | None:
    """The record as a mapping (mapping, dataclass, ``model_dump()``), or None."""
    if type(data) is dict:
        return data
    if isinstance(data, str | bytes | bytearray | memoryview):
        return None
    try:
        return as_mapping(data)
    except TypeError:
        return None


class _Entry(NamedTuple):
    stream: str
    id: str
    fields: dict[bytes, bytes]
    when: str  # the grid time, for messages


class _Layout(enum.Enum):
    FLAT = "flat"
    JSON = "json"


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def _stream_fields(stream: str) -> set[str]:
    """The fields of a stream template: ``{producer}`` only (``{{`` / ``}}`` for braces)."""
    try:
        parsed = list(_FORMATTER.parse(stream))
    except ValueError as exc:
        check.fail("stream", stream, f"is not a valid template ({exc}); write a literal brace "
                                     f"as {{{{ or }}}}, got {stream!r}")
    fields: set[str] = set()
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field != PRODUCER_FIELD or spec or conversion:
            check.fail("stream", stream, "may only use the field {producer} (write a literal "
                                         f"brace as {{{{ or }}}}), got {stream!r}")
        fields.add(field)
    return fields


# -- the consumer ----------------------------------------------------------------------


class RedisStreamConsumer:
    """Append every record to a Redis stream; see the module docstring for the guarantees.

    * ``url``: ``redis://[user:password@]host:6379/0``, ``rediss://...`` (TLS, the system's
      CAs; more TLS settings through ``client_options``, e.g. ``{"ssl_ca_certs": path}``)
      or ``unix:///path/redis.sock``. The password may hold any character; ``password``
      gives it separately (not both). Neither shows in ``repr``, logs or errors.
    * ``stream``: the stream's key, with ``{producer}`` filled from the record's producer
      (a fixed name is fine for one producer; several would share its IDs).
    * ``maxlen``: trim each stream to about this many entries (``XADD MAXLEN ~``); ``None``
      keeps everything.
    * ``layout``: ``"flat"`` (a field per key) or ``"json"`` (one ``data`` field);
      ``event_time_field`` names the added grid-time field (``None``: none). Or an
      ``encoder(data, event_time) -> mapping of field to value`` decides the fields.
    * ``timeout`` (s): the longest wait for a connect or a reply; the lane's timeout is 5 s
      longer. ``retries`` / ``max_backoff``: the lane defaults (retry practically forever,
      at most ``max_backoff`` s apart).
    * ``client_options``: more ``redis.asyncio.Redis`` arguments (``ssl_ca_certs``,
      ``socket_keepalive_options``...).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        stream: str = "readings:{producer}",
        *,
        maxlen: int | None = None,
        layout: str = "flat",
        event_time_field: str | None = "event_time",
        encoder: Callable[[Any, datetime], Mapping[Any, Any]] | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        name: str = "redis",
        retries: int = 1_000_000,
        max_backoff: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not isinstance(url, str):
            check.fail("url", type(url).__name__,  # by type: it may hold a password
                       f"must be a str, got {type(url).__name__}")
        check.secret_text("password", password)
        head, username, url_password, rest = split_url(url)
        self._secrets = secrets_of(url, password, url_password)
        self.url = mask_text(mask_dsn(url) or url, self._secrets)
        """The server's URL with the password masked."""
        bare = f"{head}{rest}"  # no user info: the password may hold any character
        try:
            parse_url(bare)
        except ValueError as exc:
            check.fail("url", self.url, f"must look like redis://host:6379/0, rediss://host "
                                        f"or unix:///path: {exc}; got {self.url!r}")
        path = urllib.parse.urlsplit(bare).path
        if head.lower() != "unix://" and path not in ("", "/") and not path[1:].isdigit():
            # redis-py would quietly use database 0
            check.fail("url", self.url, f"must name the database by its number "
                                        f"(redis://host:6379/0), got {self.url!r}")
        if password is not None and url_password is not None:
            check.conflict("password", "***", "a password in url", "give it once")
        self._bare_url = bare
        self._username = username or None
        self._password = password if password is not None else url_password

        if not isinstance(stream, str) or not stream:
            check.fail("stream", stream, f"must be a non-empty str, got {stream!r}")
        self._per_producer = bool(_stream_fields(stream))
        self.stream = stream
        self.maxlen = check.optional_integer("maxlen", maxlen, minimum=1)
        self.layout = check.choice("layout", layout, _Layout).value
        if encoder is not None:
            check.callable_("encoder", encoder)
            if layout != "flat":
                check.conflict("layout", layout, "encoder", "the encoder decides the fields")
            if event_time_field != "event_time":
                check.conflict("event_time_field", event_time_field, "encoder",
                               "the encoder decides the fields")
        self.encoder = encoder
        if event_time_field is not None:
            check.text("event_time_field", event_time_field)
        self.event_time_field = event_time_field
        self._time_key = None if event_time_field is None else event_time_field.encode()
        self.timeout = check.positive("timeout", timeout)
        self.name = check.text("name", name)
        check.integer("retries", retries, minimum=0)
        check.positive("max_backoff", max_backoff)
        self.consumer_defaults: dict[str, Any] = {
            "retries": retries,
            "backoff": min(0.2, float(max_backoff)),
            "max_backoff": float(max_backoff),
            "timeout": self.timeout + 5.0,
        }
        if client_options is not None and not isinstance(client_options, Mapping):
            check.fail("client_options", type(client_options).__name__,
                       f"must be a mapping or None, got {type(client_options).__name__}")
        for key in client_options or {}:
            if not isinstance(key, str):
                check.fail("client_options", f"<a key {key!r}>", f"keys must be str, got {key!r}")
        clash = sorted(_OWN_OPTIONS & set(client_options or {}))
        if clash:
            check.fail("client_options", clash, f"must not set {clash}: use "
                                                "RedisStreamConsumer's own arguments")
        self._client_options = dict(client_options or {})
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            check.fail("logger", logger, f"must be a logging.Logger or None, got {logger!r}")
        self._log = logger if logger is not None else logging.getLogger(__name__)

        self.written = 0
        """Entries added to a stream."""
        self.duplicates = 0
        """Records whose entry was already in its stream (a retried write whose reply was
        lost): delivered, not written twice."""
        self.out_of_order = 0
        """Records older than their stream's newest entry: rejected (also in ``rejected``)."""
        self.conflicts = 0
        """Records whose ID its stream already holds with other fields: rejected (also in
        ``rejected``)."""
        self.rejected = 0
        """Records that could never be stored (and were skipped)."""
        self._state = _State.NEW
        self._client: aioredis.Redis | None = None
        self._limiter = LogLimiter()

    def __repr__(self) -> str:
        return (f"<RedisStreamConsumer {self.name!r} {self.url} stream={self.stream!r} "
                f"{self._state.value}>")

    def _mask(self, text: object) -> str:
        return mask_text(str(text), self._secrets)

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (in the running loop) and ``PING``; raises :class:`RedisConnectionError`
        when Redis is unreachable or refuses the login. In a conveyor the lane then retries
        ``open()`` with backoff (queuing what arrives meanwhile)."""
        if self._state is _State.OPEN:
            raise RuntimeError(f"RedisStreamConsumer {self.name!r} is already open; use one "
                               "instance per conveyor")
        client = aioredis.Redis.from_url(
            self._bare_url, username=self._username, password=self._password,
            socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),  # the lane retries, with its backoff and counts
            **self._client_options,
        )
        try:
            await client.ping()
        except BaseException as exc:
            await client.aclose()
            if isinstance(exc, RedisError | OSError):
                raise self._connection_error(exc, "cannot connect") from None
            raise
        self._client = client
        self._state = _State.OPEN
        self._log.info("Redis consumer %s: connected to %s", self.name, self.url)

    async def close(self) -> None:
        """Close the connections. Idempotent."""
        client, self._client = self._client, None
        if self._state is _State.OPEN:
            self._state = _State.CLOSED
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> RedisStreamConsumer:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- writing ---------------------------------------------------------------------

    async def __call__(self, data: Any, event_time: datetime) -> None:
        """Append ``data`` (one record, or a :class:`~aioconveyor.Batch`) to its stream(s)."""
        client = self._client
        if client is None:
            raise RuntimeError(f"RedisStreamConsumer {self.name!r} is {self._state.value}: "
                               "call open() first (the conveyor does)")
        entries: list[_Entry] = []
        problems: list[RedisRecordError] = []
        for when, item, producer in iter_produced(data, event_time):
            try:
                entries.append(self._entry(item, when, producer))
            except RedisRecordError as exc:
                problems.append(exc)
        if entries:
            problems += await self._write(client, entries)
        if problems:
            self.rejected += len(problems)
            if len(problems) == 1:
                problems[0].count = 1  # only this one: the lane counts the rest delivered
                raise problems[0]
            raise RedisRecordError(f"{len(problems)} records could not be stored; the first: "
                                   f"{problems[0]}", count=len(problems)) from problems[0]

    def _entry(self, data: Any, event_time: datetime, producer: str) -> _Entry:
        when = event_time.isoformat()
        if self._per_producer:
            if not producer:
                raise RedisRecordError(
                    f"stream {self.stream!r} needs the record's producer, and the record of "
                    f"{when} has none (it did not come from a conveyor's producer)")
            stream = _FORMATTER.vformat(self.stream, (), {PRODUCER_FIELD: producer})
        else:
            stream = self.stream
        return _Entry(stream, entry_id(event_time), self._fields(data, event_time, when), when)

    def _fields(self, data: Any, event_time: datetime, when: str) -> dict[bytes, bytes]:
        try:
            if self.encoder is not None:
                out = self.encoder(data, event_time)
                if not isinstance(out, Mapping):
                    raise TypeError(f"the encoder must return a mapping of field to value, "
                                    f"got {type(out).__name__}")
                fields = _flat(out)
            elif self.layout == "json":
                fields = {DATA_FIELD.encode(): json_dumps(data).encode("utf-8")}
            else:
                mapping = _mapping(data)
                if mapping is None:
                    fields = {DATA_FIELD.encode(): _text(data)}
                else:
                    fields = _flat(mapping)
            if self._time_key is not None and self.encoder is None:
                fields.setdefault(self._time_key, when.encode())
        except Exception as exc:  # the record's own fault: retrying cannot help
            what = "the encoder failed on" if self.encoder is not None else "cannot encode"
            raise RedisRecordError(f"{what} the record of {when}: {type(exc).__name__}: "
                                   f"{self._mask(exc)}") from exc
        if not fields:
            raise RedisRecordError(f"the record of {when} has no field to write (a stream "
                                   "entry needs at least one)")
        return fields

    async def _write(self, client: aioredis.Redis, entries: list[_Entry]) -> list[
            RedisRecordError]:
        """One pipeline of XADDs; the refused IDs are looked up. Returns the records that
        can never be stored; raises for anything a retry may cure."""
        pipe = client.pipeline(transaction=False)
        trim: tuple[Any, ...] = () if self.maxlen is None else (b"MAXLEN", b"~", self.maxlen)
        add = pipe.execute_command  # what pipe.xadd() does, without rebuilding its arguments
        for e in entries:
            add("XADD", e.stream, *trim, e.id, *chain.from_iterable(e.fields.items()))
        replies = await self._execute(pipe, "write")
        refused: list[_Entry] = []
        failed: list[tuple[_Entry, ResponseError]] = []
        for e, reply in zip(entries, replies, strict=True):
            if not isinstance(reply, ResponseError):
                self.written += 1
            elif _REFUSED_ID in str(reply):
                refused.append(e)
            else:
                failed.append((e, reply))
        problems = await self._check_refused(client, refused) if refused else []
        if failed:
            e, error = failed[0]
            raise RedisStreamError(
                f"Redis {self.url} refused {len(failed)} of {len(entries)} entries; the first, "
                f"{e.id} of stream {e.stream!r} (the record of {e.when}): "
                f"{self._mask(error)}")
        return problems

    async def _check_refused(self, client: aioredis.Redis,
                             refused: list[_Entry]) -> list[RedisRecordError]:
        """Refused IDs: already there with the same fields (a duplicate: delivered), with
        other fields (a conflict), or missing (older than the stream's newest entry)."""
        pipe = client.pipeline(transaction=False)
        for e in refused:
            pipe.xrange(e.stream, e.id, e.id, count=1)
        streams = sorted({e.stream for e in refused})
        for stream in streams:
            pipe.xrevrange(stream, "+", "-", count=1)
        replies = await self._execute(pipe, "look up refused entries")
        found, tops = replies[:len(refused)], replies[len(refused):]
        newest = {s: (t[0][0].decode() if t else "none") for s, t in zip(streams, tops,
                                                                           strict=True)}
        problems: list[RedisRecordError] = []
        duplicates = 0
        for e, stored in zip(refused, found, strict=True):
            if isinstance(stored, ResponseError):
                raise RedisStreamError(f"Redis {self.url}: looking up entry {e.id} of stream "
                                       f"{e.stream!r} failed: {self._mask(stored)}")
            if stored and stored[0][1] == e.fields:
                duplicates += 1
            elif stored:
                self.conflicts += 1
                problems.append(RedisRecordError(
                    f"stream {e.stream!r} already holds entry {e.id} with other fields; the "
                    f"record of {e.when} was not written (two producers writing one stream, "
                    "or two conveyors writing the same tick?)"))
            else:
                self.out_of_order += 1
                problems.append(RedisRecordError(
                    f"the record of {e.when} (entry {e.id}) is older than the newest entry of "
                    f"stream {e.stream!r} ({newest[e.stream]}) and was not written: Redis only "
                    "appends (a clock stepped back, or another writer on this stream?)"))
        if duplicates:
            self.duplicates += duplicates
            self._limiter.log(self._log, logging.INFO, "duplicates",
                              "Redis consumer %s: %d record(s) already in their stream (a "
                              "retried write whose reply was lost); not written again",
                              self.name, duplicates)
        if problems:
            self._limiter.log(self._log, logging.WARNING, "out of order",
                              "Redis consumer %s: %d record(s) not written: %s", self.name,
                              len(problems), problems[0])
        return problems

    async def _execute(self, pipe: Any, what: str) -> list[Any]:
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise self._connection_error(exc, f"{what} failed") from None
        return replies

    def _connection_error(self, exc: BaseException, what: str) -> RedisStreamError:
        text = self._mask(exc) or type(exc).__name__
        if isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(
                exc):
            return RedisConnectionError(f"Redis {self.url} refused the login: {text}",
                                        refused=True)
        if isinstance(exc, ResponseError):
            return RedisStreamError(f"Redis {self.url}: {what}: {text}")
        return RedisConnectionError(f"Redis {self.url}: {what}: {type(exc).__name__}: {text}")
