"""Publish every record to a NATS JetStream stream (nats-py), exactly once per tick.

One record becomes one message on a subject that may name its producer
(``readings.{producer}``): JSON by default (a mapping gains an ``event_time`` key),
``bytes`` / ``str`` data passes through untouched, or an ``encoder`` of your own decides.
Every message carries the header ``Nats-Msg-Id: <producer>/<grid time>`` (ISO 8601, UTC),
so JetStream's duplicate window recognises a retried message and stores it once.

Delivery: a call returns once the stream has acknowledged every message (a PubAck). A
PubAck that says ``duplicate`` means the stream already had that message (an earlier attempt
whose acknowledgement was lost): it counts as delivered, and in
:attr:`NatsConsumer.duplicates`. When the server is unreachable, the connection drops or
no PubAck comes within ``timeout``, the call raises and the lane retries the same item
(practically forever) while new items wait in its bounded queue; the next call connects
again. So nothing is lost while the queue has room and nothing is stored twice while a
retry comes within the stream's duplicate window: delivery is *exactly once*.

A record that can never be published (its producer cannot fill a subject token, an encoder
that fails, a payload over the server's ``max_payload``) is reported through the lane as
:class:`~aioconveyor.Rejected` (counted as ``rejected``, never retried) and counted in
:attr:`NatsConsumer.rejected`; the other records of its batch are published first.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import inspect
import json
import logging
import math
import os
import re
import ssl
import string
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aioconveyor.kit import (
    ConveyorError,
    LogLimiter,
    Rejected,
    check,
    mask_text,
    secrets_of,
    split_url,
)

from ._records import as_mapping, iter_produced, producer_now, to_jsonable

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client as _Client
    from nats.js import JetStreamContext
    from nats.js.api import PubAck, StorageType, StreamConfig
except ImportError as exc:  # exercised in a subprocess by the tests
    raise ImportError(
        'NatsConsumer needs the nats-py package; install it with: pip install "aioconveyor[nats]"'
    ) from exc

__all__ = [
    "MSG_ID",
    "NatsConnectionError",
    "NatsConsumer",
    "NatsConsumerError",
    "NatsRecordError",
    "NatsStream",
    "NatsStreamError",
]

logger = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
"""The header JetStream deduplicates on: ``<producer>/<grid time>``."""

PRODUCER_FIELD = "producer"
"""The one field a subject template may hold (``readings.{producer}``)."""

_PASSTHROUGH = (bytes, bytearray, memoryview, str)
_FORMATTER = string.Formatter()
_BAD_TOKEN = re.compile(r"[\s.*>]")
"""What a subject token (or a producer name filling one) must not hold: whitespace, the
token separator ``.`` and the wildcards ``*`` and ``>``."""
_BAD_STREAM_NAME = re.compile(r"[\s.*>/\\]")
_HEADER_OVERHEAD = len("NATS/1.0\r\n\r\n")
_SKIPS_SUBJECT_VALIDATION = "skip_subject_validation" in inspect.signature(
    _Client.connect).parameters
"""nats-py's ``connect()`` takes ``skip_subject_validation`` (added in 2026, with its
client-side subject checks; older releases take neither)."""
_PENDING_SIZE = 8 * 1024 * 1024
_JSON = json.JSONEncoder(default=to_jsonable, separators=(",", ":"), allow_nan=False).encode
"""``_records.json_dumps`` with its encoder built once (``json.dumps`` with settings builds one
per call)."""


# -- errors ----------------------------------------------------------------------------


class NatsConsumerError(ConveyorError):
    """Root of the errors :class:`NatsConsumer` raises (the lane counts and logs them)."""


class NatsRecordError(NatsConsumerError, Rejected, ValueError):
    """A record that can never be published: a producer name that cannot fill a subject
    token, an encoder that failed, a payload over the server's ``max_payload``.

    A :class:`~aioconveyor.Rejected`: the lane counts it and does not retry it.
    """


class NatsConnectionError(NatsConsumerError, ConnectionError):
    """The server could not be reached, refused us, the connection dropped, or no PubAck
    came in time.

    ``refused`` is true when the server refused the login (bad credentials) or its TLS
    certificate failed verification: retrying will not help until the configuration changes.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class NatsStreamError(NatsConsumerError):
    """The stream is missing, exists with another configuration than :class:`NatsStream`
    asks for, or refused a message (no stream captures the subject, JetStream disabled).
    The lane retries; the log says what to change."""


# -- subjects --------------------------------------------------------------------------


def _template_fields(subject: str) -> list[str]:
    """The fields of ``subject`` (only ``{producer}`` is allowed), or SettingError."""
    try:
        parsed = list(_FORMATTER.parse(subject))
    except ValueError as exc:
        check.fail("subject", subject, f"is not a valid template ({exc}), got {subject!r}")
    fields: list[str] = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field != PRODUCER_FIELD or spec or conversion:
            check.fail("subject", subject, "may only hold the field {producer} (no format "
                       f"spec or conversion), got {subject!r}")
        fields.append(field)
    return fields


def _check_subject(name: str, subject: str, *, wildcards: bool = False) -> None:
    """A NATS subject: dot-separated tokens, none empty, none with whitespace, and (unless
    ``wildcards``) no ``*`` or ``>``."""
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token:
            check.fail(name, subject, f"has an empty token (a leading, trailing or double "
                       f"'.'), got {subject!r}")
        if wildcards and (token == "*" or (token == ">" and i == len(tokens) - 1)):
            continue
        bad = _BAD_TOKEN.search(token)
        if bad:
            what = ("a wildcard: records are published to one subject"
                    if bad[0] in "*>" else "whitespace")
            check.fail(name, subject, f"token {token!r} holds {bad[0]!r}, {what}; got "
                       f"{subject!r}")


def _wildcard(subject: str) -> str:
    """``subject`` with every token that holds ``{producer}`` replaced by ``*``: the subjects
    a template publishes to, as one filter."""
    return ".".join("*" if "{" in token else token for token in subject.split("."))


def _covers(pattern: str, subject: str) -> bool:
    """Whether the stream subject ``pattern`` captures every subject ``subject`` stands for
    (a ``*`` token of ``subject`` only by a ``*`` or ``>`` of the pattern)."""
    want, have = subject.split("."), pattern.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(want) > i
        if i >= len(want) or (token != "*" and token != want[i]):
            return False
    return len(want) == len(have)


def _grid_id(event_time: datetime) -> str:
    """The grid time as it appears in the message id: ISO 8601, in UTC when aware."""
    if event_time.tzinfo is not None and event_time.tzinfo is not UTC:
        event_time = event_time.astimezone(UTC)
    return event_time.isoformat()


# -- the stream ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsStream:
    """The stream the consumer creates on connect if it does not exist yet.

    ``subjects`` default to the consumer's subject with ``{producer}`` as ``*``.
    ``duplicate_window`` (seconds) is how long JetStream remembers a message id: a retry
    later than that would be stored again. ``max_age`` (seconds), ``max_msgs`` and
    ``max_bytes`` limit what the stream keeps (None: no limit); ``storage`` is ``"file"``
    or ``"memory"``; ``replicas`` 1 to 5. If a stream of that name exists with other
    settings than the ones given here, ``open()`` fails and says which.
    """

    name: str
    subjects: Sequence[str] | None = None
    duplicate_window: float = 120.0
    max_age: float | None = None
    max_msgs: int | None = None
    max_bytes: int | None = None
    storage: str = "file"
    replicas: int = 1

    def __post_init__(self) -> None:
        check.text("name", self.name, subject="NatsStream name")
        bad = _BAD_STREAM_NAME.search(self.name)
        if bad:
            check.fail("name", self.name, f"cannot hold {bad[0]!r} (a stream name has no "
                       f"whitespace, '.', '*', '>', '/' or '\\\\'), got {self.name!r}",
                       subject="NatsStream name")
        if self.subjects is not None:
            if isinstance(self.subjects, str) or not isinstance(self.subjects, Sequence):
                check.fail("subjects", self.subjects, "must be a list of subjects or None, "
                           f"got {self.subjects!r}", subject="NatsStream subjects")
            if not self.subjects:
                check.fail("subjects", self.subjects, "must not be empty (None: the "
                           "consumer's subject)", subject="NatsStream subjects")
            for i, subject in enumerate(self.subjects):
                check.text(f"subjects[{i}]", subject, subject=f"NatsStream subjects[{i}]")
                _check_subject(f"subjects[{i}]", subject, wildcards=True)
            object.__setattr__(self, "subjects", tuple(self.subjects))
        check.positive("duplicate_window", self.duplicate_window)
        check.optional_positive("max_age", self.max_age)
        check.optional_integer("max_msgs", self.max_msgs, minimum=1)
        check.optional_integer("max_bytes", self.max_bytes, minimum=1)
        check.one_of("storage", self.storage, ("file", "memory"))
        check.integer("replicas", self.replicas, minimum=1, maximum=5)

    @classmethod
    def of(cls, value: object) -> NatsStream:
        """``value`` if it is a NatsStream, or one made from a mapping (a TOML table)."""
        if isinstance(value, NatsStream):
            return value
        if isinstance(value, Mapping):
            fields = set(cls.__dataclass_fields__)
            unknown = sorted(str(k) for k in value if k not in fields)
            if unknown:
                check.fail("stream", dict(value), f"has unknown key(s) {unknown}; known: "
                           f"{sorted(fields)}")
            if "name" not in value:
                check.fail("stream", dict(value), "needs a name")
            return cls(**value)
        check.fail("stream", value, "must be a stream name, a NatsStream (a table with "
                   f"name, subjects, duplicate_window...) or None, got {value!r}")

    def config(self, subjects: Sequence[str]) -> StreamConfig:
        """The nats-py configuration that creates this stream."""
        return StreamConfig(
            name=self.name, subjects=list(subjects), duplicate_window=self.duplicate_window,
            max_age=self.max_age, max_msgs=self.max_msgs, max_bytes=self.max_bytes,
            storage=StorageType(self.storage), num_replicas=self.replicas,
        )

    def differences(self, have: StreamConfig, subjects: Sequence[str]) -> list[str]:
        """How the existing stream's configuration ``have`` differs from this one."""
        out: list[str] = []
        if set(have.subjects or ()) != set(subjects):
            out.append(f"subjects {sorted(have.subjects or ())}, not {sorted(subjects)}")
        if not math.isclose(have.duplicate_window or 0.0, self.duplicate_window):
            out.append(f"duplicate_window {have.duplicate_window or 0:g} s, not "
                       f"{self.duplicate_window:g} s")
        limits = (("max_age", have.max_age, self.max_age, " s"),
                  ("max_msgs", have.max_msgs, self.max_msgs, ""),
                  ("max_bytes", have.max_bytes, self.max_bytes, ""))
        for name, now, want, unit in limits:
            present = now if now is not None and now > 0 else None
            if present != want and not (present is not None and want is not None
                                        and math.isclose(present, want)):
                shown = "none" if present is None else f"{present:g}{unit}"
                wanted = "none" if want is None else f"{want:g}{unit}"
                out.append(f"{name} {shown}, not {wanted}")
        storage = getattr(have.storage, "value", have.storage)
        if storage != self.storage:
            out.append(f"storage {storage!r}, not {self.storage!r}")
        if (have.num_replicas or 1) != self.replicas:
            out.append(f"replicas {have.num_replicas}, not {self.replicas}")
        return out


# -- the consumer ----------------------------------------------------------------------


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class _Message(NamedTuple):
    subject: str
    payload: bytes
    msg_id: str
    event_time: datetime

    @property
    def when(self) -> str:
        return self.event_time.isoformat()


@dataclass(slots=True, eq=False)
class _Connection:
    """One nats-py connection, its JetStream contexts and a future done when it closes."""

    nc: _Client
    js: JetStreamContext
    """For the stream's management: each request waits at most ``timeout``."""
    publisher: JetStreamContext
    """For publishing: no timer per message; :meth:`NatsConsumer._publish` waits for a
    whole batch's PubAcks at most ``timeout``."""
    lost: asyncio.Future[None]
    unacked_since: float | None = None
    """When a publish was abandoned (the lane's timeout) before its PubAck came, if since."""

    @property
    def alive(self) -> bool:
        return not self.lost.done() and self.nc.is_connected

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)


class NatsConsumer:
    """Publish every record to a NATS JetStream stream; see the module docstring for the
    guarantees.

    * ``url``: ``nats://host:4222`` or ``tls://...`` (TLS); it may carry ``user:password@``
      or ``token@``. ``user`` / ``password``, ``token`` or ``credentials`` (a ``.creds``
      file: JWT and NKey seed) give them instead; ``tls`` is an :class:`ssl.SSLContext`,
      ``True`` (system CAs) or ``False``.
    * ``subject``: where records go; ``{producer}`` fills one token with the record's
      producer name (``"readings.{producer}"``).
    * ``stream``: None (JetStream finds the stream by subject), the name of an existing
      stream (checked on connect; messages must land there), or a :class:`NatsStream`
      (or a mapping of its fields) created on connect when missing.
    * ``timeout`` (s): the longest wait for a connect or a PubAck; a publish without a
      PubAck in time raises (the lane retries) and the connection is replaced.
    * ``encoder(data, event_time) -> bytes | str`` replaces the default payload: JSON (with
      ``event_time_key``, default ``"event_time"``, added to mappings unless present; None
      to leave it out), or the data itself when it is ``bytes`` / ``str``.
    * ``pending_size``: bytes nats-py may buffer before writing to the socket (bounded:
      a publish beyond it waits for the buffer to drain, at most ``timeout``).
    * ``retries`` / ``max_backoff``: the lane defaults (retry practically forever, at most
      ``max_backoff`` s apart).
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        subject: str = "readings.{producer}",
        *,
        stream: str | NatsStream | Mapping[str, Any] | None = None,
        credentials: str | os.PathLike[str] | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls: ssl.SSLContext | bool | None = None,
        timeout: float = 5.0,
        encoder: Callable[[Any, datetime], bytes | str] | None = None,
        event_time_key: str | None = "event_time",
        pending_size: int = _PENDING_SIZE,
        name: str | None = None,
        retries: int = 1_000_000,
        max_backoff: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        check.secret_text("url", url)
        if not url:
            check.fail("url", url, "must be a non-empty str like 'nats://127.0.0.1:4222'")
        check.secret_text("password", password)
        check.secret_text("token", token)
        scheme, url_user, url_password, rest = split_url(url, query=False)
        scheme = scheme.lower()
        if scheme not in ("nats://", "tls://"):
            check.fail("url", self._shown(url), "must start with nats:// or tls://, got "
                       f"{self._shown(url)!r}")
        parts = urllib.parse.urlsplit(f"{scheme}{rest}")
        try:
            port = parts.port or 4222
        except ValueError:
            check.fail("url", self._shown(url), "has a bad port (an int in 1..65535), got "
                       f"{self._shown(url)!r}")
        host = parts.hostname
        if not host or parts.path not in ("", "/") or parts.query or parts.fragment:
            check.fail("url", self._shown(url), "must be nats://[user:password@]host[:port] "
                       f"(no path or query), got {self._shown(url)!r}")
        self.host: str = host
        self.port: int = port
        if url_user is not None and url_password is None:  # nats://TOKEN@host
            url_user, url_token = None, url_user
        else:
            url_token = None
        if url_user is not None and (user is not None or password is not None):
            check.conflict("user", user, "a user in url", "give the login once")
        if url_token is not None and token is not None:
            check.conflict("token", "***", "a token in url", "give the token once")
        user = user if user is not None else url_user
        password = password if password is not None else url_password
        token = token if token is not None else url_token
        if user is not None:
            check.text("user", user)
        if (user is None) != (password is None):
            if user is None:
                check.fail("password", "***", "needs a user", subject="a password")
            check.fail("user", user, "needs a password (or give a token)")
        if token is not None:
            if not token:
                check.fail("token", "", "must be a non-empty str")
            if user is not None:
                check.conflict("token", "***", "user/password", "NATS takes one of them")
        if credentials is not None:
            check.path("credentials", credentials)
            if user is not None or token is not None:
                check.conflict("credentials", credentials, "user/password or token",
                               "a .creds file is the whole login")
            try:  # nats-py signs with nkeys, and imports it only when connecting
                importlib.import_module("nkeys")
            except ImportError as exc:
                raise ImportError('NatsConsumer(credentials=...) needs the nkeys package; '
                                  'install it with: pip install "nats-py[nkeys]"') from exc
        self._user, self._password, self._token = user, password, token
        self.credentials = None if credentials is None else os.fspath(credentials)

        if tls is None:
            tls = scheme == "tls://"
        if not isinstance(tls, ssl.SSLContext | bool):
            check.fail("tls", tls, f"must be an ssl.SSLContext or a bool, got {tls!r}")
        if tls is False and scheme == "tls://":
            check.conflict("tls", tls, "a tls:// url")
        self._tls: ssl.SSLContext | None = (
            tls if isinstance(tls, ssl.SSLContext) else ssl.create_default_context() if tls
            else None)

        if not isinstance(subject, str):
            check.fail("subject", subject, f"must be a str, got {subject!r}")
        check.text("subject", subject)
        self._templated = bool(_template_fields(subject))
        _check_subject("subject", subject.replace("{producer}", "p"))
        self.subject = subject

        self.stream: str | NatsStream | None
        self._stream_subjects: tuple[str, ...] = ()
        if stream is None or isinstance(stream, str):
            if stream is not None:
                NatsStream(stream)  # the same name rules
            self.stream = stream
        else:
            spec = NatsStream.of(stream)
            self._stream_subjects = tuple(spec.subjects or (_wildcard(subject),))
            target = _wildcard(subject)
            if not any(_covers(s, target) for s in self._stream_subjects):
                check.conflict("stream", spec.subjects, f"subject={subject!r}",
                               f"the stream's subjects do not capture {target!r}")
            self.stream = spec
        self._stream_name = None if self.stream is None else (
            self.stream if isinstance(self.stream, str) else self.stream.name)

        self.timeout = check.positive("timeout", timeout)
        if encoder is not None:
            check.callable_("encoder", encoder)
            if event_time_key != "event_time":
                check.conflict("event_time_key", event_time_key, "encoder",
                               "event_time_key shapes the default JSON payload only")
        self.encoder = encoder
        if event_time_key is not None:
            check.text("event_time_key", event_time_key)
        self.event_time_key = event_time_key
        self.pending_size = check.integer("pending_size", pending_size, minimum=65536,
                                          unit="bytes")
        self.name = check.text("name", "nats" if name is None else name)
        self._task_name = f"aioconveyor.nats[{self.name}].publish"
        # the bytes of a message's headers but its id: the status line, the id's key, and
        # the expected stream's header when there is a stream
        self._header_size = _HEADER_OVERHEAD + len(MSG_ID) + 4 + (
            0 if self._stream_name is None
            else len("Nats-Expected-Stream") + len(self._stream_name) + 4)
        check.integer("retries", retries, minimum=0)
        check.positive("max_backoff", max_backoff)
        self.consumer_defaults: dict[str, Any] = {
            "retries": retries,
            "backoff": min(0.2, float(max_backoff)),
            "max_backoff": float(max_backoff),
        }
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            check.fail("logger", logger, f"must be a logging.Logger or None, got {logger!r}")
        self._log = logger if logger is not None else logging.getLogger(__name__)

        self._secrets = secrets_of(url, password, token)
        netloc = f"[{host}]" if ":" in host else host
        self._server = f"{scheme}{netloc}:{port}"
        login = ""
        if user is not None:
            login = f"{urllib.parse.quote(user, safe='')}:***@"
        elif token is not None:
            login = "***@"
        self.url = f"{scheme}{login}{netloc}:{port}"
        """The server's URL with the password or token masked."""

        self.rejected = 0
        """Records that could never be published (and were skipped)."""
        self.duplicates = 0
        """Messages the stream already had (a retry of a stored message): delivered, not
        stored twice."""
        self._state = _State.NEW
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._limiter = LogLimiter()
        self._failed_connects = 0

    @staticmethod
    def _shown(url: str) -> str:
        return mask_text(url, secrets_of(url))

    def _mask(self, text: str) -> str:
        return mask_text(text, self._secrets)

    def __repr__(self) -> str:
        stream = "" if self._stream_name is None else f" stream={self._stream_name!r}"
        return (f"<NatsConsumer {self.name!r} {self.url} subject={self.subject!r}{stream} "
                f"{self._state.value}>")

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect once (in the running loop) and check or create the stream; raises
        :class:`NatsConnectionError` when the server is unreachable or refuses us, and
        :class:`NatsStreamError` when the stream is missing or configured otherwise. In a
        conveyor the lane then retries ``open()`` with backoff (queuing what arrives);
        once open, a lost connection is re-established by the next publish."""
        if self._state is _State.OPEN:
            raise RuntimeError(f"NatsConsumer {self.name!r} is already open; use one instance "
                               "per conveyor")
        self._state = _State.OPEN
        try:
            await self._connection()
        except BaseException:
            self._state = _State.CLOSED
            await self._wait_closing()
            raise

    async def close(self) -> None:
        """Flush and close the connection. Idempotent."""
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSED
        connecting = self._connecting
        if connecting is not None:
            await asyncio.wait({connecting}, timeout=self.timeout)
        conn, self._conn = self._conn, None
        if conn is not None:
            self._drop(conn)
        await self._wait_closing()

    async def __aenter__(self) -> NatsConsumer:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- publishing ------------------------------------------------------------------

    async def __call__(self, data: Any, event_time: datetime) -> None:
        """Publish ``data`` (one record, or a :class:`~aioconveyor.Batch`), awaiting every
        PubAck."""
        if self._state is not _State.OPEN:
            raise RuntimeError(f"NatsConsumer {self.name!r} is {self._state.value}: "
                               "call open() first (the conveyor does)")
        conn = await self._connection()
        messages: list[_Message] = []
        problems: list[NatsRecordError] = []
        ids: set[str] = set()
        max_payload = conn.max_payload
        fallback: str | None = None  # the current tick's producer, for records without one
        for when, item, producer in iter_produced(data, event_time):
            if not producer:
                if fallback is None:
                    fallback = producer_now()
                producer = fallback
            try:
                message = self._message(item, when, producer, max_payload)
                if message.msg_id in ids:
                    raise NatsRecordError(
                        f"the record of {message.when} has the message id {message.msg_id!r} "
                        "of an earlier record of the same call; JetStream would keep only "
                        "the first (one record per producer and grid time)")
            except NatsRecordError as exc:
                problems.append(exc)
            else:
                ids.add(message.msg_id)
                messages.append(message)
        if messages:
            await self._publish(conn, messages)
        if problems:
            self.rejected += len(problems)
            if len(problems) == 1:
                raise problems[0]
            raise NatsRecordError(f"{len(problems)} records could not be published; the first: "
                                  f"{problems[0]}", count=len(problems)) from problems[0]

    def _message(self, data: Any, event_time: datetime, producer: str,
                 max_payload: int) -> _Message:
        subject = self.subject
        if self._templated:
            if not producer:
                raise NatsRecordError(
                    f"subject {self.subject!r} needs the record's producer, and the record of "
                    f"{event_time.isoformat()} has none (it did not come from a conveyor's "
                    "producer)")
            bad = _BAD_TOKEN.search(producer)
            if bad:
                raise NatsRecordError(
                    f"subject {self.subject!r}: the producer name {producer!r} of the record "
                    f"of {event_time.isoformat()} holds {bad[0]!r}; a producer fills exactly "
                    "one subject token (no '.', '*', '>' or whitespace)")
            subject = subject.replace("{producer}", producer)
        when = event_time.isoformat()  # the JSON's event_time, and (in UTC) the grid id
        zone = event_time.tzinfo
        grid = when if zone is None or zone is UTC else _grid_id(event_time)
        msg_id = f"{producer}/{grid}" if producer else grid
        payload = self._payload(data, event_time, when)
        size = len(payload) + len(msg_id) + self._header_size
        if size > max_payload:
            raise NatsRecordError(f"the message of the record of {when} is {size} bytes "
                                  f"(payload and headers), more than the server's "
                                  f"max_payload of {max_payload} bytes")
        return _Message(subject, payload, msg_id, event_time)

    def _payload(self, data: Any, event_time: datetime, when: str) -> bytes:
        out: object
        if self.encoder is not None:
            try:
                out = self.encoder(data, event_time)
            except Exception as exc:
                raise NatsRecordError(f"encoder failed on the record of {when}: "
                                      f"{type(exc).__name__}: {exc}") from exc
        elif isinstance(data, _PASSTHROUGH):
            out = data
        else:
            out = self._json(data, when)
        if isinstance(out, str):
            return out.encode()
        if isinstance(out, bytes | bytearray | memoryview):
            return bytes(out)
        raise NatsRecordError(f"encoder must return bytes or str, got {type(out).__name__} "
                              f"for the record of {when}")

    def _json(self, data: Any, when: str) -> str:
        """The default payload: JSON, with ``event_time_key`` (``when``, the record's time
        in ISO 8601) added to a mapping."""
        value: Any = data
        if type(data) is dict:
            fields: Mapping[str, Any] = data
        else:
            try:
                fields = as_mapping(data)
            except TypeError:
                fields = None  # type: ignore[assignment]
            except Exception as exc:
                raise NatsRecordError(f"the record of {when} cannot be read as a mapping: "
                                      f"{type(exc).__name__}: {exc}") from exc
        if fields is not None:
            value = fields if isinstance(fields, dict) else dict(fields)
            key = self.event_time_key
            if key is not None and key not in value:
                # the ISO text json_dumps would make of the datetime, made here directly
                value = {**value, key: when}
        try:
            return _JSON(value)
        except Exception as exc:  # the data's own fault: retrying cannot help
            raise NatsRecordError(f"the record of {when} cannot be encoded as JSON: "
                                  f"{type(exc).__name__}: {exc}") from exc

    async def _publish(self, conn: _Connection, messages: Sequence[_Message]) -> None:
        """Publish every message at once, then wait for every PubAck, at most ``timeout``
        for them all, or until the connection closes (nats-py alone would wait for each
        PubAck until its own timer, one per message, runs out)."""
        spawn, publish = asyncio.get_running_loop().create_task, conn.publisher.publish
        stream, name = self._stream_name, self._task_name
        tasks = [  # a fresh headers dict each: nats-py adds the stream's header to it
            spawn(publish(m.subject, m.payload, stream=stream, headers={MSG_ID: m.msg_id}),
                  name=name)
            for m in messages
        ]
        acks = asyncio.gather(*tasks)  # fails with the first failed publish
        try:
            either: set[asyncio.Future[Any]] = {acks, conn.lost}
            # one timer for the batch, not one per message (nats-py's own timeout)
            await asyncio.wait(either, timeout=self.timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if not acks.done():
                if conn.lost.done():
                    raise nats.errors.ConnectionClosedError
                raise nats.errors.TimeoutError
            results: list[PubAck] = acks.result()
        except asyncio.CancelledError:  # the lane's timeout: remember, so a dead connection
            if not acks.done() and conn.unacked_since is None:  # is replaced (_connection)
                conn.unacked_since = time.monotonic()
            raise
        except Exception as exc:
            failed = _failed(tasks)
            message = messages[0] if failed is None else messages[tasks.index(failed)]
            raise self._failure(conn, exc, message) from exc
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: a second failure is not logged by asyncio
            if acks.done() and not acks.cancelled():
                acks.exception()
        conn.unacked_since = None
        duplicates = sum(1 for ack in results if ack.duplicate)
        if duplicates:
            self.duplicates += duplicates
            self._limiter.log(self._log, logging.INFO, "duplicates",
                              "NATS consumer %s: %d message(s) were already in stream %s "
                              "(retries of stored messages, not stored twice)", self.name,
                              duplicates, results[0].stream)

    def _failure(self, conn: _Connection, exc: Exception, message: _Message) -> Exception:
        """The error to raise for a failed publish (replacing the connection if it is
        dead or did not answer)."""
        where = f"publishing to {message.subject!r}"
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return NatsStreamError(f"NATS server {self.url}: no stream captures subject "
                                   f"{message.subject!r} (create one, or pass "
                                   "stream=NatsStream(...))")
        if isinstance(exc, nats.js.errors.APIError):
            return NatsStreamError(f"NATS server {self.url}: the stream refused the message "
                                   f"of {message.when} on {message.subject!r}: "
                                   f"{self._mask(str(exc))}")
        self._drop(conn)
        if isinstance(exc, nats.errors.TimeoutError):
            return NatsConnectionError(f"NATS server {self.url}: no PubAck within "
                                       f"{self.timeout:g} s {where}; reconnecting")
        if isinstance(exc, nats.errors.ConnectionClosedError):
            return NatsConnectionError(f"NATS server {self.url}: the connection closed "
                                       f"before every PubAck came ({where})")
        return NatsConnectionError(f"NATS server {self.url}: {where} failed: "
                                   f"{type(exc).__name__}: {self._mask(str(exc))}")

    # -- connection ------------------------------------------------------------------

    async def _connection(self) -> _Connection:
        """The live connection, connecting (once, shared by concurrent callers) if needed."""
        conn = self._conn
        if conn is not None:
            if (conn.alive and conn.unacked_since is not None
                    and time.monotonic() - conn.unacked_since > self.timeout):
                self._log.warning("NATS consumer %s: no PubAck from %s for %g s; reconnecting",
                                  self.name, self.url, self.timeout)
            elif conn.alive:
                return conn
            self._drop(conn)
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(
                self._connect(), name=f"aioconveyor.nats[{self.name}].connect")
        # shielded: a caller cancelled by its lane timeout leaves the connect running, and
        # the lane's next attempt picks up its result
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Connection:
        try:
            loop = asyncio.get_running_loop()
            lost: asyncio.Future[None] = loop.create_future()
            seen: list[Exception] = []

            async def on_error(exc: Exception) -> None:
                seen.append(exc)
                self._limiter.log(self._log, logging.DEBUG, ("nats", type(exc)),
                                  "NATS consumer %s: %s: %s", self.name, type(exc).__name__,
                                  self._mask(str(exc)))

            async def on_closed() -> None:
                if not lost.done():
                    lost.set_result(None)

            nc = _Client()
            options: dict[str, Any] = {}
            if self._tls is not None:
                options["tls"] = self._tls
                options["tls_hostname"] = self.host
            if self.credentials is not None:
                options["user_credentials"] = self.credentials
            if _SKIPS_SUBJECT_VALIDATION:
                # every subject is checked here (_check_subject at construction, a
                # producer's token per record: no whitespace, CR or LF), more strictly
                # than nats-py would check it again, three times, for every message
                options["skip_subject_validation"] = True
            try:
                await nc.connect(
                    servers=[self._server], user=self._user, password=self._password,
                    token=self._token, name=f"aioconveyor[{self.name}]",
                    allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0,
                    connect_timeout=max(1, math.ceil(self.timeout)),
                    pending_size=self.pending_size, flush_timeout=self.timeout,
                    error_cb=on_error, closed_cb=on_closed, **options,
                )
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), self.timeout)
                self._failed_connects += 1
                reason: BaseException = exc
                if isinstance(exc, nats.errors.NoServersError) and seen:
                    reason = seen[-1]
                text = self._mask(f"{type(reason).__name__}: {reason}".strip())
                untrusted = isinstance(reason, ssl.SSLCertVerificationError) or (
                    "CERTIFICATE_VERIFY_FAILED" in text)
                refused = untrusted or isinstance(reason, nats.errors.AuthorizationError) or (
                    "Authorization Violation" in text)
                what = ("has a TLS certificate we do not trust" if untrusted
                        else "refused the login" if refused else "unreachable")
                raise NatsConnectionError(f"NATS server {self.url} {what}: {text}",
                                          refused=refused) from None
            conn = _Connection(nc, nc.jetstream(timeout=self.timeout),
                               nc.jetstream(timeout=None), lost)
            try:
                if self._state is not _State.OPEN:
                    raise NatsConnectionError(f"NatsConsumer {self.name!r} closed while "
                                              "connecting")
                await self._ensure_stream(conn)
            except BaseException:
                self._drop(conn)
                raise
            self._conn = conn
            if self._failed_connects:
                self._log.info("NATS consumer %s: connected to %s after %d failed attempt(s)",
                               self.name, self.url, self._failed_connects)
            else:
                self._log.info("NATS consumer %s: connected to %s", self.name, self.url)
            self._failed_connects = 0
            return conn
        finally:
            self._connecting = None

    async def _ensure_stream(self, conn: _Connection) -> None:
        """Check that the named stream exists, or create the :class:`NatsStream`; fail
        clearly when a stream of that name is configured otherwise."""
        if self.stream is None:
            return
        name = self._stream_name
        assert name is not None
        try:
            try:
                info = await conn.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                if isinstance(self.stream, str):
                    raise NatsStreamError(
                        f"NATS server {self.url}: stream {name!r} does not exist; create it, "
                        "or pass stream=NatsStream(...) to have it created") from None
                try:
                    await conn.js.add_stream(self.stream.config(self._stream_subjects))
                except nats.js.errors.BadRequestError:  # created meanwhile by someone else
                    info = await conn.js.stream_info(name)
                else:
                    self._log.info("NATS consumer %s: created stream %s for %s", self.name,
                                   name, ", ".join(self._stream_subjects))
                    return
        except NatsStreamError:
            raise
        except nats.js.errors.APIError as exc:
            raise NatsStreamError(f"NATS server {self.url}: cannot use stream {name!r}: "
                                  f"{self._mask(str(exc))}") from exc
        except (nats.errors.Error, OSError) as exc:
            what = ("JetStream did not answer (is it enabled? nats-server -js)"
                    if isinstance(exc, nats.errors.TimeoutError | nats.errors.NoRespondersError)
                    else f"{type(exc).__name__}: {self._mask(str(exc))}")
            raise NatsConnectionError(f"NATS server {self.url}: checking stream {name!r}: "
                                      f"{what}") from exc
        if isinstance(self.stream, NatsStream):
            diffs = self.stream.differences(info.config, self._stream_subjects)
            if diffs:
                raise NatsStreamError(
                    f"NATS server {self.url}: stream {name!r} exists with another "
                    f"configuration: {'; '.join(diffs)}. Make NatsStream(...) match it, or "
                    "change the stream (nats stream edit) yourself")

    def _drop(self, conn: _Connection) -> None:
        """Forget ``conn`` and close it in the background (the next call reconnects)."""
        if self._conn is conn:
            self._conn = None
        if not conn.lost.done():
            conn.lost.set_result(None)
        if conn.nc.is_closed:
            return
        task = asyncio.get_running_loop().create_task(
            self._close_quietly(conn.nc), name=f"aioconveyor.nats[{self.name}].close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_quietly(self, nc: _Client) -> None:
        try:
            await asyncio.wait_for(nc.close(), self.timeout)
        except Exception as exc:
            self._log.debug("NATS consumer %s: closing the connection: %s: %s", self.name,
                            type(exc).__name__, self._mask(str(exc)))

    async def _wait_closing(self) -> None:
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=self.timeout + 1)


def _failed(tasks: Sequence[asyncio.Task[PubAck]]) -> asyncio.Task[PubAck] | None:
    """The first task that failed (not cancelled), if any."""
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            return task
    return None
