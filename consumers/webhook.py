"""POST (or PUT) every record, or every batch, as JSON to an HTTP endpoint (aiohttp).

The body of one record is a JSON object: a mapping's fields (a dataclass's, a model's
``model_dump()``) plus ``"event_time"`` (the grid time, ISO 8601) and ``"producer"`` (the
name of the record's producer), each added unless the record has that key already; any other
value goes in as ``{"data": value, "event_time": ..., "producer": ...}``. A
:class:`~aioconveyor.Batch` is one JSON array of such objects (``batch="array"``), or one
request per record (``batch="each"``). ``encoder(data, event_time)`` may return the JSON
value of a record instead.

The URL may hold ``{producer}`` (``https://api.example/v1/{producer}/readings``), filled
with the record's producer, percent-encoded; records of several producers in one batch
then become one request per URL. Every request carries an ``Idempotency-Key`` header,
``producer/event_time`` of its record (of its first and last record for an array), so the
receiver can recognise a request it has already handled.

Answers: 2xx is delivered. 429 and 503 with ``Retry-After`` (seconds or an HTTP date) make
the lane wait that long (:class:`~aioconveyor.RetryAfter`, at most ``max_retry_after``);
408, 429, 5xx, timeouts and connection errors are retried with the lane's backoff; any
other answer (3xx, 4xx) is :class:`~aioconveyor.Rejected`: counted, logged with its status
and the start of its body, never retried.

Delivery is *at least once*: a request whose answer was lost (a timeout, a dropped
connection, the lane's timeout) is sent again, with the same body and ``Idempotency-Key``.
A batch sent as several requests resumes its retry after the last request that succeeded.

Secrets (a password in the URL, ``auth``, ``token``, the values of ``Authorization`` and
other secret-looking headers and query parameters) never appear in ``repr``, logs or the
errors raised.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import re
import string
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from ssl import SSLContext
from typing import Any, NamedTuple
from urllib.parse import quote

from aioconveyor import __version__
from aioconveyor.kit import (
    Batch,
    ConveyorError,
    LogLimiter,
    Rejected,
    RetryAfter,
    check,
    mask_text,
    retry_after_seconds,
    secrets_of,
    split_url,
)

from ._records import as_mapping, iter_produced, to_jsonable

try:
    import aiohttp
except ImportError as exc:  # exercised in a subprocess by the tests
    raise ImportError(
        'WebhookConsumer needs the aiohttp package; install it with: '
        'pip install "aioconveyor[webhook]"'
    ) from exc

__all__ = [
    "WebhookConnectionError",
    "WebhookConsumer",
    "WebhookError",
    "WebhookHttpError",
    "WebhookRejected",
    "WebhookTimeoutError",
]

logger = logging.getLogger(__name__)

PRODUCER_FIELD = "producer"
"""The one field a URL template may hold: ``{producer}``."""

_FORMATTER = string.Formatter()
_EXCERPT = 200
"""Characters of an error answer's body kept for the log (whitespace collapsed)."""
_SECRET_NAME = re.compile(r"auth|token|secret|pass|key|cookie|signature|sig\b|credential",
                          re.I)
"""Header and query parameter names whose values are treated as secrets."""
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""A valid HTTP header name (RFC 9110 token)."""
_RETRIED = frozenset({408, 429})
"""Client errors that a retry may cure."""
_ENCODE = json.JSONEncoder(default=to_jsonable, separators=(",", ":"), allow_nan=False).encode
"""Compact JSON, with ``to_jsonable`` for datetimes, Decimal, UUIDs...: one encoder, built
once (``json.dumps`` with options builds one per call)."""


# -- errors ----------------------------------------------------------------------------


class WebhookError(ConveyorError):
    """Root of the errors :class:`WebhookConsumer` raises (the lane counts and logs them)."""


class WebhookHttpError(WebhookError):
    """The endpoint answered with an error a retry may cure: 5xx, 408, or 429 / 503
    without a usable ``Retry-After``. ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class WebhookConnectionError(WebhookError, ConnectionError):
    """No answer: the endpoint could not be reached, dropped the connection or did not
    answer within ``timeout`` (then also a :class:`TimeoutError`)."""


class WebhookTimeoutError(WebhookConnectionError, TimeoutError):
    """The endpoint did not answer within the consumer's ``timeout``."""


class WebhookRejected(WebhookError, Rejected):
    """The endpoint refused the records (3xx, 4xx other than 408 / 429), or a record
    cannot be encoded: a :class:`~aioconveyor.Rejected`, never retried. ``status`` is the
    HTTP status (``None`` for a record that could not be encoded)."""

    def __init__(self, message: str, *, status: int | None = None,
                 count: int | None = None) -> None:
        super().__init__(message, count=count)
        self.status = status


# -- Retry-After -----------------------------------------------------------------------


# -- the URL ---------------------------------------------------------------------------


class _Url(NamedTuple):
    template: str
    """The URL without its user info, ``{producer}`` unfilled."""
    username: str | None
    password: str | None
    templated: bool


def _parse_url(url: object) -> _Url:
    if not isinstance(url, str):
        check.fail("url", type(url).__name__,  # by type: it may hold a password
                   f"must be a str, got {type(url).__name__}")
    masked = mask_text(url, secrets_of(url))
    head, user, password, rest = split_url(url)
    scheme = head.removesuffix("://").lower()
    if scheme not in ("http", "https"):
        check.fail("url", masked,
                   f"must start with http:// or https://, got {masked!r}")
    try:
        parsed = list(_FORMATTER.parse(rest))
    except ValueError as exc:
        check.fail("url", masked, f"is not a valid template ({exc}): {masked!r}")
    templated = False
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field != PRODUCER_FIELD or spec or conversion:
            check.fail("url", masked, "may only hold the template field {producer} "
                                      f"(write a literal brace as {{{{ or }}}}), got {masked!r}")
        templated = True
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "{" in authority:
        check.fail("url", masked, f"{{producer}} cannot be in the host, got {masked!r}")
    sample = f"{head}{_FORMATTER.vformat(rest, (), {PRODUCER_FIELD: 'x'})}"
    try:
        parts = urllib.parse.urlsplit(sample)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        check.fail("url", masked, f"is not a valid URL ({exc}): {masked!r}")
    if not parts.hostname:
        check.fail("url", masked, f"has no host: {masked!r}")
    if parts.fragment:
        check.fail("url", masked, f"must not have a #fragment, got {masked!r}")
    if any(c.isspace() for c in sample):
        check.fail("url", masked, f"must not contain spaces (percent-encode them as %20), "
                                  f"got {masked!r}")
    return _Url(f"{head}{rest}", user or None, password, templated)


def _query_secrets(template: str) -> list[str]:
    """Values of the query parameters with secret-looking names (``?token=...``)."""
    query = urllib.parse.urlsplit(template).query
    out: list[str] = []
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=False):
        if _SECRET_NAME.search(key):
            out.append(value)
            out.append(urllib.parse.quote(value, safe=""))
            out.append(urllib.parse.quote_plus(value))
    for raw in query.split("&"):  # as written, escapes and all
        key, sep, value = raw.partition("=")
        if sep and value and _SECRET_NAME.search(urllib.parse.unquote_plus(key)):
            out.append(value)
    return out


# -- the consumer ----------------------------------------------------------------------


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class _Request(NamedTuple):
    url: str
    body: bytes
    key: str
    records: int
    """Records in the body."""


class WebhookConsumer:
    """Send every record (or batch) as JSON to an HTTP endpoint; see the module docstring.

    * ``url``: ``https://host/path``, may hold ``{producer}`` and a user and password
      (``https://user:password@host/...``, sent as HTTP basic auth, never shown).
    * ``method``: ``"POST"`` (default) or ``"PUT"``.
    * ``headers``: extra request headers (``{"X-Api-Key": "..."}``); the values of
      ``Authorization`` and of headers whose name looks secret are masked everywhere.
    * ``auth=(user, password)`` (basic auth) or ``token="..."`` (``Authorization: Bearer``):
      at most one of them, the URL's user info and an ``Authorization`` header.
    * ``timeout``: seconds one request may take (connect, send and answer). The lane's own
      ``timeout`` defaults to 5 s more.
    * ``batch``: how a :class:`~aioconveyor.Batch` is sent: ``"array"`` (one JSON array per
      batch and URL) or ``"each"`` (one request per record, in order).
    * ``encoder(data, event_time)``: the JSON value of one record, instead of the default
      object; ``event_time_key`` (``"event_time"``), ``producer_key`` (``"producer"``) and
      ``data_key`` (``"data"``) name the default object's fields (``None``: leave it out).
    * ``idempotency_header``: the header that carries ``producer/event_time`` of the
      request's record(s), ``"Idempotency-Key"`` by default (``None``: not sent).
    * ``max_retry_after``: the longest ``Retry-After`` honoured (s); longer asks are capped
      (and logged).
    * ``ssl``: an :class:`ssl.SSLContext` (private CA, client certificate), ``True``
      (default: verify with the system CAs) or ``False`` (do not verify: testing only).
    * ``retries`` / ``max_backoff``: the lane defaults (retry practically forever, at most
      ``max_backoff`` s apart). ``name``: the lane's name (default ``"webhook"``).
    """

    def __init__(
        self,
        url: str,
        *,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        auth: Sequence[str] | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        batch: str = "array",
        encoder: Callable[[Any, datetime], Any] | None = None,
        event_time_key: str | None = "event_time",
        producer_key: str | None = "producer",
        data_key: str = "data",
        idempotency_header: str | None = "Idempotency-Key",
        max_retry_after: float = 300.0,
        ssl: SSLContext | bool = True,
        name: str | None = None,
        retries: int = 1_000_000,
        max_backoff: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        parsed = _parse_url(url)
        self._template = parsed.template
        self._templated = parsed.templated
        if not isinstance(method, str) or method.upper() not in ("POST", "PUT"):
            check.fail("method", method, f"must be 'POST' or 'PUT', got {method!r}")
        self.method = method.upper()
        self.batch = check.one_of("batch", batch, ("array", "each"))
        self.timeout = check.positive("timeout", timeout)
        self.max_retry_after = check.positive("max_retry_after", max_retry_after)

        secrets: list[str] = [*secrets_of(url), *_query_secrets(parsed.template)]
        self.url = mask_text(url, secrets)
        """The URL as shown: passwords and secret query values masked."""
        extra = self._check_headers(headers, secrets)
        if token is not None:
            if not isinstance(token, str) or not token:
                check.fail("token", type(token).__name__,
                           f"must be a non-empty str or None, got {type(token).__name__}")
            if any(c in token for c in "\r\n\0"):
                check.fail("token", "***", "cannot contain line breaks or NUL",
                           subject="token")
        credentials: tuple[str, str] | None = None
        if auth is not None:
            if (isinstance(auth, str | bytes) or not isinstance(auth, Sequence)
                    or len(auth) != 2 or not all(isinstance(a, str) for a in auth)):
                size = (f" of {len(auth)}" if isinstance(auth, Sequence)
                        and not isinstance(auth, str | bytes) else "")
                check.fail("auth", type(auth).__name__,  # by type: it may hold a password
                           f"must be a (user, password) pair of str, got "
                           f"{type(auth).__name__}{size}")
            credentials = (auth[0], auth[1])
        elif parsed.username is not None or parsed.password is not None:
            credentials = (parsed.username or "", parsed.password or "")
        ways = [way for way, given in (
            ("auth", auth is not None), ("token", token is not None),
            ("url", parsed.username is not None or parsed.password is not None),
            ("headers", "authorization" in {k.lower() for k in extra}),
        ) if given]
        if len(ways) > 1:
            check.conflict(ways[1], "***", ways[0], "give one way to authenticate: auth, "
                           "token, a user and password in url or an Authorization header")
        if credentials is not None:
            if ":" in credentials[0]:
                check.fail("auth", "***", "the user name cannot contain ':' (basic auth)",
                           subject="auth")
            pair = f"{credentials[0]}:{credentials[1]}".encode()
            basic = f"Basic {base64.b64encode(pair).decode('ascii')}"
            extra["Authorization"] = basic
            secrets += [credentials[1], basic, basic.partition(" ")[2]]
        if token is not None:
            extra["Authorization"] = f"Bearer {token}"
            secrets += [token, extra["Authorization"]]
        if idempotency_header is not None:
            check.text("idempotency_header", idempotency_header)
            if not _TOKEN.fullmatch(idempotency_header):
                check.fail("idempotency_header", idempotency_header,
                           f"is not a valid header name, got {idempotency_header!r}")
            if idempotency_header.lower() in {k.lower() for k in extra}:
                check.conflict("idempotency_header", idempotency_header, "headers",
                               "the consumer sets this header itself; use "
                               "idempotency_header=None to send your own")
        self.idempotency_header = idempotency_header
        self._secrets = tuple(sorted({s for s in secrets if s and len(s) >= 3}, key=len,
                                     reverse=True))
        self._headers = {"User-Agent": f"aioconveyor/{__version__}",
                         "Content-Type": "application/json", **extra}

        if encoder is not None:
            check.callable_("encoder", encoder)
            for key, value, default in (("event_time_key", event_time_key, "event_time"),
                                        ("producer_key", producer_key, "producer"),
                                        ("data_key", data_key, "data")):
                if value != default:
                    check.conflict(key, value, "encoder",
                                   f"{key} shapes the default JSON object only")
        self.encoder = encoder
        for key, value in (("event_time_key", event_time_key), ("producer_key", producer_key)):
            if value is not None:
                check.text(key, value)
        check.text("data_key", data_key)
        if event_time_key is not None and event_time_key == producer_key:
            check.conflict("producer_key", producer_key, "event_time_key",
                           "the two fields need different names")
        self.event_time_key = event_time_key
        self.producer_key = producer_key
        self.data_key = data_key

        if not isinstance(ssl, bool | SSLContext):
            check.fail("ssl", ssl, f"must be an ssl.SSLContext or a bool, got {ssl!r}")
        self._ssl = ssl
        self.name = check.text("name", "webhook" if name is None else name)
        check.integer("retries", retries, minimum=0)
        check.positive("max_backoff", max_backoff)
        self.consumer_defaults: dict[str, Any] = {
            "retries": retries,
            "backoff": min(0.5, float(max_backoff)),
            "max_backoff": float(max_backoff),
            "timeout": self.timeout + 5.0,
        }
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            check.fail("logger", logger, f"must be a logging.Logger or None, got {logger!r}")
        self._log = logger if logger is not None else logging.getLogger(__name__)

        self.rejected = 0
        """Records refused by the endpoint or that could not be encoded (and were skipped)."""
        self._state = _State.NEW
        self._session: aiohttp.ClientSession | None = None
        self._limiter = LogLimiter()
        self._resume: tuple[object, int, int, str] | None = None
        """(the batch, requests already answered, records rejected so far, first reason)."""

    @staticmethod
    def _check_headers(headers: object, secrets: list[str]) -> dict[str, str]:
        if headers is None:
            return {}
        if not isinstance(headers, Mapping):
            check.fail("headers", type(headers).__name__,
                       f"must be a mapping of str to str or None, got {type(headers).__name__}")
        out: dict[str, str] = {}
        seen: set[str] = set()
        for key, value in headers.items():
            if not isinstance(key, str) or not _TOKEN.fullmatch(key):
                check.fail("headers", f"<a key {key!r}>",
                           f"keys must be valid header names, got {key!r}")
            secret = bool(_SECRET_NAME.search(key))
            shown = "***" if secret else repr(value)
            if not isinstance(value, str):
                check.fail(f"headers[{key!r}]", type(value).__name__,
                           f"must be a str, got {type(value).__name__}")
            if any(c in value for c in "\r\n\0"):
                check.fail(f"headers[{key!r}]", "***" if secret else value,
                           f"cannot contain line breaks or NUL, got {shown}")
            if key.lower() in seen:
                check.fail("headers", f"<a key {key!r}>",
                           f"names {key!r} twice (header names ignore case)")
            seen.add(key.lower())
            if key.lower() in ("content-length", "host", "transfer-encoding"):
                check.fail("headers", f"<a key {key!r}>",
                           f"must not set {key!r}: the HTTP client sets it")
            if secret:
                secrets.append(value)
                _scheme, _, credentials = value.partition(" ")
                if credentials:
                    secrets.append(credentials.strip())
            out[key] = value
        return out

    def __repr__(self) -> str:
        return (f"<WebhookConsumer {self.name!r} {self.method} {self.url} "
                f"batch={self.batch!r} {self._state.value}>")

    def _mask(self, text: str) -> str:
        return mask_text(text, self._secrets)

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Create the consumer's one HTTP session (in the running loop). Nothing is sent
        yet: an unreachable endpoint shows in the first delivery, which the lane retries."""
        if self._state is _State.OPEN:
            raise RuntimeError(f"WebhookConsumer {self.name!r} is already open; use one "
                               "instance per conveyor")
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=4)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False,
            auto_decompress=True,
        )
        self._state = _State.OPEN

    async def close(self) -> None:
        """Close the session and its connections. Idempotent."""
        session, self._session = self._session, None
        if self._state is _State.OPEN:
            self._state = _State.CLOSED
        if session is not None:
            await session.close()

    async def __aenter__(self) -> WebhookConsumer:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- delivering ------------------------------------------------------------------

    async def __call__(self, data: Any, event_time: datetime) -> None:
        """Send ``data`` (one record, or a :class:`~aioconveyor.Batch`)."""
        session = self._session
        if session is None:
            raise RuntimeError(f"WebhookConsumer {self.name!r} is {self._state.value}: "
                               "call open() first (the conveyor does)")
        requests, bad, reason = self._requests(data, event_time)
        done, rejected, first = 0, 0, ""
        resume = self._resume
        if resume is not None and resume[0] is data:  # a retry of a batch sent in part
            done, rejected, first = resume[1], resume[2], resume[3]
        self._resume = None
        try:
            for i in range(done, len(requests)):
                try:
                    await self._send(session, requests[i])
                except WebhookRejected as exc:
                    if len(requests) == 1 and not bad:
                        self.rejected += requests[i].records
                        raise
                    rejected += requests[i].records
                    self.rejected += requests[i].records
                    first = first or str(exc)
                done = i + 1
        except BaseException:
            if 0 < done < len(requests):
                self._resume = (data, done, rejected, first)
            raise
        if bad:
            self.rejected += bad
            if not requests and bad == 1:
                raise WebhookRejected(reason)
            rejected += bad
            first = first or reason
        if rejected:
            total = sum(r.records for r in requests) + bad
            raise WebhookRejected(f"{rejected} of {total} record(s) rejected; the first: "
                                  f"{first}", count=rejected)

    def _requests(self, data: Any, event_time: datetime) -> tuple[list[_Request], int, str]:
        """What to send for ``data``: the requests, how many records could not be encoded,
        and why the first of them could not."""
        values: list[tuple[str, Any, str, str]] = []  # (url, JSON value, producer, time)
        bad, reason = 0, ""
        url = self._template
        templated, value_of, append = self._templated, self._value, values.append
        plain = self.encoder is None  # a dict record's value is made inline (the usual case)
        time_key, producer_key = self.event_time_key, self.producer_key
        produced = (((r.event_time, r.data, r.producer) for r in data)
                    if isinstance(data, Batch) else iter_produced(data, event_time))
        for when, item, producer in produced:
            try:
                stamp = when.isoformat()
                if templated:
                    url = self._url_for(producer, stamp)
                if plain and type(item) is dict:
                    value = {**item}
                    if time_key is not None and time_key not in value:
                        value[time_key] = stamp
                    if producer_key is not None and producer_key not in value:
                        value[producer_key] = producer
                else:
                    value = value_of(item, when, stamp, producer)
                append((url, value, producer, stamp))
            except WebhookRejected as exc:  # the lane logs it with the call's outcome
                bad += 1
                reason = reason or str(exc)
        out: list[_Request] = []
        if self.batch == "each" or not isinstance(data, Batch):
            for url, value, producer, stamp in values:
                try:
                    out.append(_Request(url, _json(value, stamp).encode(),
                                        _key(producer, stamp), 1))
                except WebhookRejected as exc:
                    bad += 1
                    reason = reason or str(exc)
            return out, bad, reason
        groups: dict[str, list[tuple[str, Any, str, str]]]
        if templated:
            groups = {}
            for row in values:
                groups.setdefault(row[0], []).append(row)
        else:  # one URL: the batch is one array
            groups = {url: values} if values else {}
        for url, rows in groups.items():
            try:  # the whole array at once; record by record only to find a bad one
                array = _ENCODE([row[1] for row in rows])
            except Exception:
                good: list[tuple[str, Any, str, str]] = []
                texts: list[str] = []
                for row in rows:
                    try:
                        texts.append(_json(row[1], row[3]))
                        good.append(row)
                    except WebhookRejected as exc:
                        bad += 1
                        reason = reason or str(exc)
                if not good:
                    continue
                array = f"[{','.join(texts)}]"
                rows = good
            key = _key(rows[0][2], rows[0][3])
            if len(rows) > 1:
                key = f"{key}..{_key(rows[-1][2], rows[-1][3])}"
            out.append(_Request(url, array.encode(), key, len(rows)))
        return out, bad, reason

    def _url_for(self, producer: str, stamp: str) -> str:
        """The templated URL filled with ``producer``."""
        if not producer:
            raise WebhookRejected(
                f"url {self.url!r} needs the record's producer, and the record of "
                f"{stamp} has none (it did not come from a conveyor's producer)")
        return _FORMATTER.vformat(self._template, (), {PRODUCER_FIELD: quote(producer, safe="")})

    def _value(self, data: Any, when: datetime, stamp: str, producer: str) -> Any:
        """The JSON value of one record (not yet encoded)."""
        if self.encoder is not None:
            try:
                return self.encoder(data, when)
            except Exception as exc:
                raise WebhookRejected(f"encoder failed on the record of {stamp}: "
                                      f"{type(exc).__name__}: {exc}") from exc
        value: dict[str, Any]
        if type(data) is dict:  # the usual case, quickly
            value = {**data}
        else:
            try:
                fields = None if isinstance(data, str | bytes) else as_mapping(data)
            except TypeError:
                fields = None
            except Exception as exc:
                raise WebhookRejected(f"the record of {stamp} cannot be read as a mapping: "
                                      f"{type(exc).__name__}: {exc}") from exc
            value = {self.data_key: data} if fields is None else dict(fields)
        if self.event_time_key is not None and self.event_time_key not in value:
            value[self.event_time_key] = stamp
        if self.producer_key is not None and self.producer_key not in value:
            value[self.producer_key] = producer
        return value

    def _where(self, request: _Request) -> str:
        """``POST <url>`` of ``request`` as shown (secrets masked), for messages."""
        return f"{self.method} {self._mask(request.url)}"

    async def _send(self, session: aiohttp.ClientSession, request: _Request) -> None:
        """One request; returns on 2xx, else raises what the lane should do about it."""
        headers = ({} if self.idempotency_header is None
                   else {self.idempotency_header: request.key})
        try:
            async with session.request(self.method, request.url, data=request.body,
                                       headers=headers, allow_redirects=False) as response:
                status = response.status
                if 200 <= status < 300:
                    await response.read()  # the connection goes back to the pool
                    return
                detail = (await response.content.read(4 * _EXCERPT)).decode("utf-8", "replace")
                reason = response.reason or ""
                retry_after = response.headers.get("Retry-After")
                date = response.headers.get("Date")
                location = response.headers.get("Location")
        except TimeoutError:
            where = self._where(request)
            raise WebhookTimeoutError(f"{where}: no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:  # refused, reset, bad answer; may name the URL
            where = self._where(request)
            raise WebhookConnectionError(
                f"{where}: {type(exc).__name__}: {self._mask(str(exc))}") from None
        where = self._where(request)
        detail = " ".join(self._mask(detail).split())[:_EXCERPT]  # masked, then cut short
        text = f"{where}: HTTP {status}{' ' + reason if reason else ''}"
        if location is not None:
            text += f" (redirect to {self._mask(location)})"
        if detail:
            text += f": {detail}"
        if status in (429, 503):
            seconds = retry_after_seconds(retry_after, date)
            if seconds is not None:
                if seconds > self.max_retry_after:
                    self._limiter.log(self._log, logging.WARNING, "long retry-after",
                                      "webhook consumer %s: %s asked to wait %g s; waiting "
                                      "%g s (max_retry_after)", self.name, where, seconds,
                                      self.max_retry_after)
                    seconds = self.max_retry_after
                raise RetryAfter(seconds, f"{text} (retry after {seconds:g} s)")
        if status >= 500 or status in _RETRIED:
            raise WebhookHttpError(text, status)
        raise WebhookRejected(f"{text} (not retried)", status=status, count=request.records)


def _json(value: Any, stamp: str) -> str:
    """One record's JSON; a value JSON cannot hold rejects the record."""
    try:
        return _ENCODE(value)
    except Exception as exc:  # the data's own fault: retrying cannot help
        raise WebhookRejected(f"the record of {stamp} cannot be encoded as JSON: "
                              f"{type(exc).__name__}: {exc}") from exc


def _key(producer: str, stamp: str) -> str:
    """The idempotency key of one record: ``producer/event_time`` (the producer
    percent-encoded), or the time alone for a record without a producer."""
    return f"{quote(producer, safe='')}/{stamp}" if producer else stamp
