"""Write every record to InfluxDB (1.x, 2.x, 3.x) or VictoriaMetrics as line protocol.

One consumer for the two write APIs that speak InfluxDB line protocol over HTTP:

* ``api="v1"``: ``POST /write?db=<database>&precision=ns`` (InfluxDB 1.x, InfluxDB 3's v1
  compatibility endpoint, VictoriaMetrics);
* ``api="v2"``: ``POST /api/v2/write?org=<org>&bucket=<bucket>&precision=ns`` with
  ``Authorization: Token ...`` (InfluxDB 2.x, 3.x, InfluxDB Cloud, VictoriaMetrics).

Each record becomes one point: its measurement is the name of the record's producer (or
``measurement=``), the keys named in ``tags`` become tags, the other keys (or those named
in ``fields``) become fields, and the tick's grid time is the point's timestamp in
nanoseconds. A batch of records is one request body, gzip-compressed.

A point is identified by (measurement, tags, time): writing the same point again replaces
it with the same values. That makes a retried batch idempotent, so the lane can retry
anything that failed (a lost connection, a timeout, a 5xx, a 429 / 503 with
``Retry-After``) without storing anything twice.

A record the server refuses (a 400 naming its line, or a field type conflict) is rejected
without a retry; the rest of its batch is written. A record that cannot be written as line
protocol at all (NaN, a nested value, a newline in a tag) is rejected before the request.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import gzip as gzip_module
import itertools
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

try:
    import aiohttp
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "aioconveyor.consumers.influx needs aiohttp, which is not installed: "
        'pip install "aioconveyor[influx]"'
    ) from exc

from aioconveyor import Consumer
from aioconveyor.kit import (
    Batch,
    ConveyorError,
    LogLimiter,
    Rejected,
    RetryAfter,
    check,
    current_tick,
    mask_text,
    mask_url,
    retry_after_seconds,
    secrets_of,
    split_url,
)

from ._records import as_mapping

__all__ = [
    "InfluxAuthError",
    "InfluxConnectionError",
    "InfluxConsumer",
    "InfluxError",
    "InfluxRecordError",
    "InfluxServerError",
    "encode_point",
    "time_ns",
]

logger = logging.getLogger(__name__)

DEFAULT_MEASUREMENT: Final = "aioconveyor"
"""The measurement of a record whose producer has no name (written outside a conveyor)."""

VALUE_FIELD: Final = "value"
"""The field a record that is a plain number, bool or string is written to."""

_PRECISIONS: Final = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_INT64: Final = 2**63
_ERROR_BODY: Final = 65_536  # bytes of an error answer read (1.x lists every bad line)
_CACHE_SIZE: Final = 100_000  # escaped names remembered (then forgotten, and again)
_MAX_SPLITS: Final = 64  # how deep a refused batch is halved to find its bad records


class InfluxError(ConveyorError):
    """Root of the errors :class:`InfluxConsumer` raises (the lane counts and logs them)."""


class InfluxRecordError(InfluxError, Rejected, ValueError):
    """A record that cannot be written as line protocol (NaN, a nested value, a newline in
    a tag, no fields at all). A :class:`~aioconveyor.Rejected`: counted, never retried."""


class InfluxAuthError(InfluxError, PermissionError):
    """The server refused our credentials (401) or their rights (403). Raised on every
    attempt (the lane logs it and retries with backoff, the records wait in its queue):
    nothing is written until the token or password is fixed."""


class InfluxServerError(InfluxError):
    """The server answered with an error a retry may cure: 5xx, 429 or 503 without
    ``Retry-After``, 404 (no such database or bucket yet)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if detail else f"HTTP {status}")
        self.status = status


class InfluxConnectionError(InfluxError, ConnectionError):
    """The server could not be reached, or gave no answer within ``timeout``."""


# -- line protocol ------------------------------------------------------------------------

_MEASUREMENT_ESCAPES: Final = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESCAPES: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STRING_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"'})
_AMBIGUOUS: Final = re.compile(r"\\(?:$|[ ,=])")
"""A backslash that would merge with an escape (or the separator after it): servers
disagree on whether ``\\\\`` is one backslash, so such names are refused."""


def _name(what: str, value: str, table: dict[int, str]) -> str:
    """``value`` escaped as a measurement, tag key, tag value or field key."""
    if "\n" in value or "\r" in value:
        raise InfluxRecordError(f"{what} {value!r} holds a line break, which line protocol "
                                "cannot carry")
    if _AMBIGUOUS.search(value):
        raise InfluxRecordError(f"{what} {value!r} has a backslash at its end or before a "
                                "space, comma or '=', which servers read differently")
    return value.translate(table)


def _field_value(key: str, value: Any) -> str | None:
    """``value`` as a line-protocol field value; ``None`` for a missing one (``None``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise InfluxRecordError(f"field {key!r}: {value} does not fit a 64-bit integer")
        return f"{value}i"
    if isinstance(value, float | decimal.Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise InfluxRecordError(f"field {key!r} is {value!r}; line protocol has no NaN "
                                    "or infinity (leave the key out for no value)")
        return repr(number)
    if isinstance(value, str):
        return f'"{value.translate(_STRING_ESCAPES)}"'
    if isinstance(value, enum.Enum):
        return _field_value(key, value.value)
    raise InfluxRecordError(
        f"field {key!r} is a {type(value).__name__}; a field holds a number, a bool or a "
        "str (flatten nested values, or pick the keys with fields=[...])")


def _tag_value(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool | int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InfluxRecordError(f"tag {key!r} is {value!r}, not a tag value")
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise InfluxRecordError(f"tag {key!r} is a {type(value).__name__}; a tag holds "
                                "a str or a number")
    return text or None  # an empty tag is no tag


def time_ns(event_time: dt.datetime) -> int:
    """``event_time`` as integer nanoseconds since the epoch, exactly (a naive time is UTC)."""
    if event_time.tzinfo is None:
        event_time = event_time.replace(tzinfo=dt.UTC)
    return (event_time - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def encode_point(measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any],
                 timestamp: int | None = None) -> str:
    """One line of line protocol (without the newline).

    Tags are sorted by key (what the servers prefer) and left out when ``None`` or empty;
    fields keep their order and are left out when ``None``. Integers get the ``i`` suffix,
    strings are quoted with ``"`` and ``\\`` escaped. Raises :class:`InfluxRecordError` for
    what line protocol cannot carry: NaN or infinity, a nested value, a line break in a
    name, no field at all.
    """
    if not measurement:
        raise InfluxRecordError("the measurement is empty")
    parts = [_name("measurement", measurement, _MEASUREMENT_ESCAPES)]
    for key in sorted(tags):
        text = _tag_value(key, tags[key])
        if text is not None:
            if not key:
                raise InfluxRecordError("a tag key is empty")
            parts.append(f",{_name('tag key', key, _KEY_ESCAPES)}="
                         f"{_name(f'tag {key!r}', text, _KEY_ESCAPES)}")
    encoded: list[str] = []
    for key, value in fields.items():
        text = _field_value(key, value)
        if text is not None:
            if not isinstance(key, str) or not key:
                raise InfluxRecordError(f"a field key is {key!r}, not a non-empty str")
            encoded.append(f"{_name('field key', key, _KEY_ESCAPES)}={text}")
    if not encoded:
        raise InfluxRecordError(f"measurement {measurement!r}: the record has no field with "
                                "a value (line protocol needs at least one)")
    line = f"{''.join(parts)} {','.join(encoded)}"
    return line if timestamp is None else f"{line} {timestamp}"


# -- per-shape encoders -------------------------------------------------------------------

_SHAPES: Final = 1_024  # record shapes remembered (then forgotten, and again)
_UNKNOWN: Final = object()
_FAST_KINDS: Final = {  # source text of the guard and of the f-string piece
    float: ("type({v}) is float and {v} - {v} == 0.0", "{{{v}!r}}"),  # finite
    int: ("type({v}) is int and -I <= {v} < I", "{{{v}}}i"),
    bool: ("type({v}) is bool", "{{'true' if {v} else 'false'}}"),
    str: (r"""type({v}) is str and '"' not in {v} and '\\' not in {v}""", r'\"{{{v}}}\"'),
}
"""The value types a shape's encoder writes itself: (its guard, its f-string piece). Any
other value (None, NaN, a Decimal, an enum, a quote in a str) fails the guard and takes
the general path, which checks and escapes it or refuses it."""

ShapeEncoder = Callable[[Mapping[str, Any], str, Mapping[str, str], int], "str | None"]
"""``encoder(values, head, escaped, timestamp)``: the line of a record whose measurement
(escaped) is ``head``, or ``None`` for the general path."""
TagPlan = tuple[tuple[str, str, bool, "str | None"], ...]
"""Every tag key in order: (key, ``",key="``, whether records may carry it, its static
value escaped)."""


def _shape_encoder(shape: tuple[Any, ...], values: Mapping[str, Any], skip: frozenset[str],
                   plan: TagPlan) -> ShapeEncoder | None:
    """A function writing the line of a record with the keys ``shape`` (in that order) as
    one f-string. It returns ``None`` (the general path then checks and encodes
    the record) for a record whose field values are not all of the types ``values`` (the
    first record of the shape) has, or whose tag values are not strings already escaped
    once (in ``escaped``). ``None`` for a shape with a key or value the general path must
    look at.

    The generated source holds only generated names (``v0``, ``P0``); the keys, their
    escaped names and the static tags are constants of its namespace, never its text."""
    namespace: dict[str, Any] = {"I": _INT64}
    loads: list[str] = []
    guards: list[str] = []
    pieces: list[str] = ["{head}"]
    present = set(shape)
    for n, (key, prefix, from_record, static) in enumerate(plan):
        if from_record and key in present:
            if type(values[key]) is not str:
                return None
            namespace[f"T{n}"], namespace[f"Q{n}"] = key, prefix
            loads.append(f"    e{n} = values[T{n}]\n"
                         f"    e{n} = escaped.get(e{n}) if type(e{n}) is str else None\n"
                         f"    if e{n} is None:\n"
                         "        return None\n")
            pieces.append(f"{{Q{n}}}{{e{n}}}")
        elif static:
            namespace[f"Q{n}"] = f"{prefix}{static}"
            pieces.append(f"{{Q{n}}}")
    pieces.append(" ")
    fields = 0
    for key in shape:
        if key in skip:
            continue
        kind = _FAST_KINDS.get(type(values[key]))
        if kind is None or not isinstance(key, str) or not key:
            return None
        try:
            name = _name("field key", key, _KEY_ESCAPES)
        except InfluxRecordError:
            return None
        i = fields
        fields += 1
        namespace[f"K{i}"] = key
        namespace[f"P{i}"] = f"{',' if i else ''}{name}="
        loads.append(f"    v{i} = values[K{i}]\n")
        guards.append(kind[0].format(v=f"v{i}"))
        pieces.append(f"{{P{i}}}{kind[1].format(v=f'v{i}')}")
    if not fields:
        return None
    pieces.append(" {timestamp}")
    source = (f"def encode(values, head, escaped, timestamp):\n{''.join(loads)}"
              f"    if {' and '.join(guards)}:\n"
              f"        return f\"{''.join(pieces)}\"\n"
              "    return None\n")
    exec(source, namespace)  # generated from the fixed templates above, no record text
    encoder: ShapeEncoder = namespace["encode"]
    return encoder


# -- answers ------------------------------------------------------------------------------

_LINE_NUMBER: Final = re.compile(r'\bline (\d+)\b|"line_number"\s*:\s*(\d+)')
"""``line 3: ...`` (InfluxDB 2.x) and ``"line_number": 3`` (InfluxDB 3.x), 1-based."""
_UNPARSED: Final = re.compile(r"unable to parse '((?:[^'\\]|\\.)*)'")
"""``unable to parse '<the line>': why`` (InfluxDB 1.x)."""
_DROPPED: Final = re.compile(r"\bdropped=(\d+)")
_REQUEST_ERROR: Final = re.compile(
    r"database is required|database not found|bucket.{0,40}not found|organization.{0,40}"
    r"not found|precision", re.I)
"""A 400 about the request (a setting), not about a record: retried, never rejected."""


def _refused_lines(detail: str, lines: Sequence[str]) -> set[int]:
    """The indexes of the lines an error answer names, by number or by their text."""
    numbers = [int(a or b) for a, b in _LINE_NUMBER.findall(detail)]
    found = {n - 1 for n in numbers if 1 <= n <= len(lines)}
    texts = {m.replace("\\'", "'") for m in _UNPARSED.findall(_json_unescape(detail))}
    if texts:
        found |= {i for i, line in enumerate(lines) if line in texts}
    return found


def _json_unescape(detail: str) -> str:
    """The text of a JSON error answer's message (``{"error": "..."}``), else ``detail``."""
    try:
        body = json.loads(detail)
    except ValueError:
        return detail
    if isinstance(body, dict):
        message = body.get("error", body.get("message"))
        if isinstance(message, str):
            return message
    return detail


# -- the consumer -------------------------------------------------------------------------


def _names(what: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        check.fail(what, value, f"must be a list of record keys, got {value!r}")
    keys = tuple(value)
    for i, key in enumerate(keys):
        check.text(f"{what}[{i}]", key, subject=f"{what}[{i}]")
    if len(set(keys)) != len(keys):
        check.fail(what, value, f"names a key twice, got {value!r}")
    return keys


class InfluxConsumer:
    """Write records as line protocol to InfluxDB or VictoriaMetrics; see the module
    docstring for the guarantees.

    * ``url``: the server's base URL (``http://host:8086``, with a path prefix if it sits
      behind one); ``user:password@`` in it is sent as HTTP basic auth.
    * ``api``: ``"v1"`` (``/write``, with ``database``) or ``"v2"`` (``/api/v2/write``, with
      ``bucket`` and ``org``); ``None``: v2 if ``bucket`` or ``org`` is given, else v1.
    * ``token``: ``Authorization: Token <token>`` (InfluxDB 2.x / 3.x, or a 1.x
      ``user:password``); or ``username`` / ``password``: HTTP basic auth (InfluxDB 1.x,
      VictoriaMetrics ``-httpAuth.*``).
    * ``measurement``: the measurement of every point; ``None``: the record's producer name.
    * ``tags``: record keys written as tags (sorted; a missing or empty one is left out);
      ``static_tags``: tags added to every point (a record's own non-empty tag of the same
      key wins).
    * ``fields``: record keys written as fields; ``None``: every other key. ``None`` values
      are left out; a record that is a plain number, bool or str is the field ``value``.
    * ``precision``: of the timestamps: ``"ns"`` (default), ``"us"``, ``"ms"`` or ``"s"``.
    * ``gzip``: compress request bodies. ``timeout``: seconds one request may take (the
      lane's own timeout is 5 s longer). ``max_retry_after``: the longest ``Retry-After``
      wait honoured (longer ones are cut to it, with a warning).
    * ``batch_size``, ``batch_age``, ``retries``, ``max_backoff``, ``queue_size``: the lane
      settings this consumer asks for (see :class:`aioconveyor.Consumer`).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8086",
        *,
        api: str | None = None,
        database: str | None = None,
        retention_policy: str | None = None,
        bucket: str | None = None,
        org: str | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        measurement: str | None = None,
        tags: Sequence[str] = (),
        static_tags: Mapping[str, str] | None = None,
        fields: Sequence[str] | None = None,
        precision: str = "ns",
        gzip: bool = True,
        timeout: float = 10.0,
        max_retry_after: float = 300.0,
        batch_size: int = 1000,
        batch_age: float = 1.0,
        retries: int = 1_000_000,
        max_backoff: float = 5.0,
        queue_size: int = 10_000,
        name: str | None = None,
    ) -> None:
        check.secret_text("url", url)
        check.secret_text("token", token)
        check.secret_text("password", password)
        if not url:
            check.fail("url", url, "must be a non-empty str, got ''")
        head, url_user, url_password, rest = split_url(url, query=False)
        if head.lower() not in ("http://", "https://"):
            check.fail("url", mask_url(url), "must start with http:// or https://, got "
                                             f"{mask_url(url)!r}")
        if "?" in rest or "#" in rest:
            check.fail("url", mask_url(url), "must not have a query or fragment (the "
                       f"consumer adds the query), got {mask_url(url)!r}")
        if not urllib.parse.urlsplit(head + rest).hostname:
            check.fail("url", mask_url(url), f"has no host, got {mask_url(url)!r}")
        self.url = mask_url(url)
        """The server's URL, password masked."""
        self._base = head + rest.rstrip("/")
        if url_user is not None and (username is not None or password is not None):
            check.conflict("username", username, "a user in url",
                           "give the credentials in one place")
        if url_user is not None:
            username, password = url_user, url_password
        if username is not None:
            check.text("username", username)
        if password is not None and username is None:
            check.fail("password", "***", "needs a username (HTTP basic auth)",
                       subject="a password")
        if token is not None:
            if not token:
                check.fail("token", "", "must be a non-empty str, got ''")
            if username is not None:
                check.conflict("token", "***", "username/password",
                               "pass either a token or a username and password")

        if api is None:
            api = "v2" if bucket is not None or org is not None else "v1"
        self.api: str = check.one_of("api", api, ("v1", "v2"))
        for key, value in (("database", database), ("retention_policy", retention_policy),
                           ("bucket", bucket), ("org", org)):
            if value is not None:
                check.text(key, value)
        if self.api == "v1":
            for key, value in (("bucket", bucket), ("org", org)):
                if value is not None:
                    check.conflict(key, value, 'api="v1"', "v1 writes to a database")
            if retention_policy is not None and database is None:
                check.fail("retention_policy", retention_policy, "needs a database")
            params = {"db": database, "rp": retention_policy}
        else:
            for key, value in (("database", database), ("retention_policy", retention_policy)):
                if value is not None:
                    check.conflict(key, value, 'api="v2"', "v2 writes to a bucket")
            if bucket is None:
                check.fail("bucket", None, 'is needed by api="v2", got None')
            params = {"org": org, "bucket": bucket}
        self.database = database
        self.bucket = bucket
        self.org = org
        self.precision: str = check.one_of("precision", precision, tuple(_PRECISIONS))
        self._divisor = _PRECISIONS[self.precision]
        params["precision"] = self.precision
        self._params = {k: v for k, v in params.items() if v is not None}
        self._url = f"{self._base}{'/write' if self.api == 'v1' else '/api/v2/write'}"

        if measurement is not None:
            check.text("measurement", measurement)
            if "\n" in measurement or _AMBIGUOUS.search(measurement):
                check.fail("measurement", measurement, "cannot hold a line break or a "
                           f"backslash at its end or before a space or comma, got "
                           f"{measurement!r}")
        self.measurement = measurement
        self.tags = _names("tags", tags)
        self.static_tags = check.str_mapping("static_tags", static_tags) or {}
        for key, value in self.static_tags.items():
            try:
                _name("tag key", key, _KEY_ESCAPES)
                _name(f"tag {key!r}", value, _KEY_ESCAPES)
            except InfluxRecordError as exc:
                check.fail(f"static_tags[{key!r}]", value, str(exc))
            if not key:
                check.fail("static_tags", static_tags, "has an empty key")
        self.fields = None if fields is None else _names("fields", fields)
        if self.fields is not None:
            both = sorted(set(self.fields) & set(self.tags))
            if both:
                check.fail("fields", fields, f"and tags both name {both}; a key is a tag "
                           "or a field")
            if not self.fields:
                check.fail("fields", fields, "must name at least one key (None: every key "
                           "that is not a tag), got []")
        self._tag_keys = frozenset(self.tags)
        self.gzip = check.boolean("gzip", gzip)
        self.timeout = check.positive("timeout", timeout)
        self.max_retry_after = check.non_negative("max_retry_after", max_retry_after)

        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip:
            self._headers["Content-Encoding"] = "gzip"
        basic = None
        if token is not None:
            self._headers["Authorization"] = f"Token {token}"
        elif username is not None:
            basic = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        self._secrets = secrets_of(url, token, password, basic)

        if name is not None:
            check.text("name", name)
        self.name = name or "influx"
        self.consumer_defaults: dict[str, Any] = {
            "batch_size": batch_size, "batch_age": batch_age, "retries": retries,
            "max_backoff": max_backoff, "queue_size": queue_size, "timeout": timeout + 5,
        }
        """Lane settings unless overridden with :class:`aioconveyor.Consumer`."""
        Consumer(self, **self.consumer_defaults)  # validates them, naming any bad one

        self.written = 0
        """Points the server stored (acknowledged)."""
        self.refused = 0
        """Records rejected: refused by the server, or not representable as line protocol."""
        self.requests = 0
        """HTTP requests sent (a refused record's batch takes more than one)."""
        self._session: aiohttp.ClientSession | None = None
        self._limiter = LogLimiter()
        self._escaped: dict[str, str] = {}  # tag values and field keys, escaped
        self._measurements: dict[str, str] = {}
        # every tag key in order: (key, ",key=", whether records may carry it, its static
        # value escaped)
        self._tag_plan: TagPlan = tuple(
            (key, f",{_name('tag key', key, _KEY_ESCAPES)}=", key in self._tag_keys,
             _name(f"tag {key!r}", self.static_tags[key], _KEY_ESCAPES)
             if self.static_tags.get(key) else None)
            for key in sorted(self._tag_keys | set(self.static_tags)))
        self._skip = self._tag_keys if self.fields is None else frozenset()
        self._shapes: dict[tuple[Any, ...], ShapeEncoder | None] = {}  # by their keys
        self._days: dict[int, int] = {}  # microseconds since the epoch of each day

    def __repr__(self) -> str:
        target = (f"db={self.database!r}" if self.api == "v1"
                  else f"org={self.org!r} bucket={self.bucket!r}")
        return f"<InfluxConsumer {self.name!r} {self.api} {self.url} {target}>"

    def _mask(self, text: str) -> str:
        return mask_text(text, self._secrets)

    async def open(self) -> None:
        """The HTTP session (one keep-alive connection) this consumer owns."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=4))

    async def close(self) -> None:
        """Close the session; safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> InfluxConsumer:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- records into lines

    def point(self, data: Any, event_time: dt.datetime, producer: str = "") -> str:
        """The line of one record (:class:`InfluxRecordError` if it has none): the same
        as :func:`encode_point` of its measurement, tags, fields and time."""
        return self._encode([(data, event_time)], [producer], None)[0]

    def _lines(self, data: Any, event_time: dt.datetime) -> tuple[list[str], int]:
        """The lines of a record or a batch, and how many records had none (logged)."""
        records: Sequence[tuple[Any, dt.datetime]]
        if isinstance(data, Batch):
            records = data  # a Record unpacks as (data, event_time)
            producers = None if self.measurement else [r.producer for r in data]
        else:
            tick = current_tick()
            records, producers = [(data, event_time)], [
                "" if tick is None else tick.producer]
        lines = self._encode(records, producers, self._skipped)
        return lines, len(records) - len(lines)

    def _skipped(self, data: Any, event_time: dt.datetime, exc: InfluxRecordError) -> None:
        self._limiter.log(logger, logging.WARNING, ("record", type(data)),
                          "consumer %s: rejected a record of %s: %s", self.name,
                          event_time.isoformat(), exc)

    def _encode(self, records: Iterable[tuple[Any, dt.datetime]],
                producers: Iterable[str] | None,
                skipped: Callable[[Any, dt.datetime, InfluxRecordError], None] | None,
                ) -> list[str]:
        """The line of each record, in order: the same as :func:`encode_point` of its
        measurement, tags, fields and time, with the escaped names remembered and the common
        value types on a fast path (a batch of a thousand records is encoded on the loop).
        A record that has none is handed to ``skipped`` (``None``: raised)."""
        names = self._escaped
        if len(names) > _CACHE_SIZE:
            names.clear()
        heads = self._measurements
        if len(heads) > _CACHE_SIZE:
            heads.clear()
        shapes, days = self._shapes, self._days
        plan, skip = self._tag_plan, self._skip
        nano, divisor = self.precision == "ns", self._divisor // 1000
        only = self.fields
        fixed = self.measurement
        fixed_head = None if fixed is None else _name("measurement", fixed,
                                                      _MEASUREMENT_ESCAPES)
        lines: list[str] = []
        line = lines.append
        for (data, event_time), producer in zip(
                records, itertools.repeat("") if producers is None else producers,
                strict=False):
            try:
                if type(data) is dict:
                    values: Mapping[str, Any] = data
                elif isinstance(data, bool | int | float | str | decimal.Decimal):
                    values = {VALUE_FIELD: data}
                else:
                    try:
                        values = as_mapping(data)
                    except TypeError as exc:
                        raise InfluxRecordError(
                            "a record must be a mapping, a dataclass, a model or a number: "
                            f"{exc}") from None
                if fixed_head is not None:
                    head = fixed_head
                else:
                    measurement = producer or DEFAULT_MEASUREMENT
                    head = heads.get(measurement) or heads.setdefault(
                        measurement, _name("measurement", measurement, _MEASUREMENT_ESCAPES))
                if event_time.tzinfo is None:
                    event_time = event_time.replace(tzinfo=dt.UTC)
                since = event_time - _EPOCH
                day = days.get(since.days)
                if day is None:
                    if len(days) >= _CACHE_SIZE:
                        days.clear()
                    day = days[since.days] = since.days * 86_400_000_000
                micros = day + since.seconds * 1_000_000 + since.microseconds
                stamp = micros * 1000 if nano else micros // divisor
                text = None
                if only is None and type(values) is dict:
                    shape = tuple(values)
                    encoder = shapes.get(shape, _UNKNOWN)
                    if encoder is _UNKNOWN:
                        if len(shapes) >= _SHAPES:
                            shapes.clear()
                        encoder = shapes[shape] = _shape_encoder(shape, values, skip, plan)
                    if encoder is not None:
                        text = encoder(values, head, names, stamp)  # type: ignore[operator]
                if text is None:
                    text = self._general(values, head, fixed or producer or DEFAULT_MEASUREMENT)
                    text = f"{text} {stamp}"
                line(text)
            except InfluxRecordError as exc:
                if skipped is None:
                    raise
                skipped(data, event_time, exc)
        return lines

    def _general(self, values: Mapping[str, Any], head: str, measurement: str) -> str:
        """The tags and fields of a record after ``head``, each value checked and escaped
        on its own (the general path: for what no shape encoder writes, and for
        ``fields=[...]``)."""
        names = self._escaped
        for key, prefix, from_record, static in self._tag_plan:
            value = values.get(key) if from_record else None
            if value is None:
                text = static
            else:
                text = names.get(value) if type(value) is str else None
                if text is None:
                    raw = _tag_value(key, value)
                    if raw is None:
                        text = static
                    else:
                        text = _name(f"tag {key!r}", raw, _KEY_ESCAPES)
                        if type(value) is str:
                            names[value] = text
            if text:
                head = f"{head}{prefix}{text}"
        return f"{head} {self._fields(values, measurement)}"

    def _fields(self, values: Mapping[str, Any], measurement: str) -> str:
        """The fields of a record, checked and escaped one by one."""
        names, skip, only = self._escaped, self._skip, self.fields
        fields: list[str] = []
        add = fields.append
        for key, value in (values.items() if only is None
                           else [(k, values[k]) for k in only if k in values]):
            if value is None or (skip and key in skip):
                continue
            try:
                name = names[key]
            except KeyError:
                if not isinstance(key, str) or not key:
                    raise InfluxRecordError(
                        f"a field key is {key!r}, not a non-empty str") from None
                name = names[key] = _name("field key", key, _KEY_ESCAPES)
            kind = type(value)
            if kind is float and value - value == 0.0:  # finite
                add(f"{name}={value!r}")
            elif kind is int and -_INT64 <= value < _INT64:
                add(f"{name}={value}i")
            elif kind is bool:
                add(f"{name}=true" if value else f"{name}=false")
            elif kind is str and '"' not in value and "\\" not in value:
                add(f'{name}="{value}"')
            else:
                text = _field_value(key, value)  # raises for what cannot be carried
                if text is not None:
                    add(f"{name}={text}")
        if not fields:
            raise InfluxRecordError(
                f"measurement {measurement!r}: the record has no field with a value (line "
                "protocol needs at least one)")
        return ",".join(fields)

    async def __call__(self, data: Any, event_time: dt.datetime) -> None:
        if self._session is None:
            raise RuntimeError(f"{self!r} is not open")
        lines, bad = self._lines(data, event_time)
        refused = await self._write(lines, 0) if lines else 0
        self.written += len(lines) - refused
        self.refused += bad + refused
        if bad + refused:
            total = len(lines) + bad
            rest = "; the rest was written" if bad + refused < total else ""
            raise InfluxRecordError(
                f"{bad + refused} of {total} record(s) rejected ({bad} not line protocol, "
                f"{refused} refused by the server){rest}", count=bad + refused)

    # -- requests

    async def _post(self, lines: Sequence[str]) -> tuple[int, Mapping[str, str], str]:
        """One POST; the status, headers and (for an error) the start of the body."""
        assert self._session is not None
        body = ("\n".join(lines) + "\n").encode()
        if self.gzip:
            body = gzip_module.compress(body, compresslevel=1, mtime=0)
        self.requests += 1
        try:
            async with self._session.post(self._url, params=self._params, data=body,
                                          headers=self._headers) as answer:
                detail = ""
                if answer.status >= 300:
                    detail = (await answer.content.read(_ERROR_BODY)).decode("utf-8",
                                                                               "replace")
                return answer.status, answer.headers, detail
        except TimeoutError:
            raise InfluxConnectionError(
                f"{self!r}: no answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise InfluxConnectionError(f"{self!r}: {self._mask(str(exc))}") from None

    async def _write(self, lines: Sequence[str], depth: int) -> int:
        """Write ``lines``; how many of them the server refused (the others are stored).
        Raises what the lane should retry."""
        status, headers, detail = await self._post(lines)
        if 200 <= status < 300:
            return 0
        text = self._mask(_json_unescape(detail))
        short = " ".join(text.split())[:300]
        if status in (400, 422):
            named = _refused_lines(detail, lines)
            dropped = sum(int(n) for n in _DROPPED.findall(text))
            if "partial write" in text and (named or dropped):
                self._refusal(status, short)
                return min(len(lines), len(named) + dropped)  # the others are stored
            if named:
                self._refusal(status, short)
                if len(named) >= len(lines):
                    return len(lines)
                rest = [line for i, line in enumerate(lines) if i not in named]
                return len(named) + await self._write(rest, depth + 1)
        if status == 400 and _REQUEST_ERROR.search(text):  # the request, not the data
            raise InfluxServerError(status, short)
        if status in (400, 413, 422):  # which line is unknown (413: too big): halve it
            if len(lines) > 1 and depth < _MAX_SPLITS:
                half = len(lines) // 2
                return (await self._write(lines[:half], depth + 1)
                        + await self._write(lines[half:], depth + 1))
            self._refusal(status, f"{short} (the line: {lines[0][:200]})")
            return len(lines)
        if status in (401, 403):
            what = ("token" if self._headers.get("Authorization", "").startswith("Token ")
                    else "credentials")
            raise InfluxAuthError(f"{self!r}: HTTP {status}, the server refused our {what}"
                                  f": {short}")
        if status in (429, 503):
            seconds = retry_after_seconds(headers.get("Retry-After"), headers.get("Date"))
            if seconds is not None:
                if seconds > self.max_retry_after:
                    self._limiter.log(logger, logging.WARNING, "long retry-after",
                                      "consumer %s: the server asked to wait %g s; "
                                      "waiting %g s", self.name, seconds,
                                      self.max_retry_after)
                    seconds = self.max_retry_after
                raise RetryAfter(seconds, f"HTTP {status}: retry after {seconds:g} s")
        if 400 <= status < 500 and status not in (404, 408, 429):
            self._refusal(status, short)
            return len(lines)
        raise InfluxServerError(status, short)

    def _refusal(self, status: int, detail: str) -> None:
        self._limiter.log(logger, logging.WARNING, ("refused", status),
                          "consumer %s: the server refused record(s), HTTP %d: %s",
                          self.name, status, detail)
