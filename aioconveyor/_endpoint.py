"""The operations endpoint: the status page ``/`` and ``/status.json``, ``/metrics``
(Prometheus), ``/healthz`` and ``/readyz``.

A deliberately tiny HTTP/1.1 server on asyncio streams, running in the conveyor's own
loop (so a blocked loop shows up as a health check that times out, which is the truth).
One request per connection; only GET (and HEAD): nothing here changes anything.
``/metrics`` and ``/status.json`` are rendered in a worker thread: with thousands of
producers a scrape takes a while, and the ticks must not wait.

With :class:`OpsAuth` the page, ``/status.json`` and ``/metrics`` need credentials
(a bearer token, or HTTP basic auth), compared in constant time; ``/healthz`` and
``/readyz`` stay open for probes but tell an unauthenticated caller only the verdict.

Listening on a loopback address (the default), it answers only requests whose ``Host``
names a loopback host (``localhost``, ``127.0.0.1``, ``[::1]``...): a web page elsewhere
cannot read the data through a name of its own that resolves to 127.0.0.1 (DNS
rebinding). Listening on other addresses it serves any ``Host``; use credentials there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _validate
from ._health import Health

__all__ = ["OpsAuth", "OpsEndpoint"]

logger = logging.getLogger(__name__)

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 421: "Misdirected Request",
            503: "Service Unavailable"}

Headers = Sequence[tuple[str, str]]
Answer = tuple[int, str, bytes, Headers]

_REALM = "aioconveyor"
_PAGE_HEADERS: Headers = (
    # the page may talk to its own origin only: no CDN, no font, no other host, no frame
    ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
     "style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
     "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
)
_COMMON_HEADERS: Headers = (("X-Content-Type-Options", "nosniff"),)


@dataclass(frozen=True, slots=True, repr=False)
class OpsAuth:
    """Credentials for the status page, ``/status.json`` and ``/metrics``.

    ``token``: ``Authorization: Bearer <token>`` (Prometheus' ``authorization``), or basic
    auth with any user name and the token as the password (what a browser's login prompt
    sends). ``user`` and ``password``: basic auth (Prometheus' ``basic_auth``). Never
    shown: the repr and every error name the kind only.
    """

    token: str | None = None
    user: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None:
            if self.user is not None or self.password is not None:
                _validate.fail("metrics_auth", "***", "is a token or a (user, password) "
                                                      "pair, not both")
            _check_secret("metrics_auth", self.token, "the token", spaces=False)
        else:
            if self.user is None or self.password is None:
                _validate.fail("metrics_auth", "***", "needs a token or both a user and a "
                                                      "password")
            _check_secret("metrics_auth", self.user, "the user", spaces=True)
            if ":" in self.user:
                _validate.fail("metrics_auth", "***", "the user cannot contain ':' (basic "
                                                      "auth separates user and password "
                                                      "with it)")
            _check_secret("metrics_auth", self.password, "the password", spaces=True)

    @classmethod
    def of(cls, value: object) -> OpsAuth | None:
        """``None``, an :class:`OpsAuth`, a token (str) or a ``(user, password)`` pair."""
        if value is None or isinstance(value, OpsAuth):
            return value
        if isinstance(value, str):
            return cls(token=value)
        if isinstance(value, tuple | list) and len(value) == 2:
            return cls(user=value[0], password=value[1])
        _validate.fail("metrics_auth", type(value).__name__,
                       "must be a token (str), a (user, password) pair or None, got a "
                       f"{type(value).__name__}")

    def __repr__(self) -> str:
        return "<OpsAuth bearer token ***>" if self.token else "<OpsAuth basic user ***>"

    @property
    def challenges(self) -> tuple[str, ...]:
        """The ``WWW-Authenticate`` values of a 401, one header each (a browser reads one
        challenge per header, and answers only Basic with its login prompt)."""
        basic = f'Basic realm="{_REALM}", charset="UTF-8"'
        return (basic, f'Bearer realm="{_REALM}"') if self.token else (basic,)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries these credentials (every
        comparison in constant time, none skipped)."""
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            return self.token is not None and _same(credentials, self.token)
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, colon, password = decoded.partition(":")
        if not colon:
            return False
        if self.token is not None:
            return _same(password, self.token)
        assert self.user is not None and self.password is not None
        return _same(user, self.user) & _same(password, self.password)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _check_secret(name: str, value: object, what: str, *, spaces: bool) -> None:
    """A non-empty str without control characters (and spaces, for a token); the error
    says what is wrong, never the value."""
    if not isinstance(value, str) or not value:
        _validate.fail(name, "***", f"{what} must be a non-empty str, got "
                                    f"{'an empty str' if value == '' else type(value).__name__}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value) or (not spaces and " " in value):
        _validate.fail(name, "***", f"{what} cannot contain control characters"
                                    + ("" if spaces else " or spaces"))


class OpsEndpoint:
    """Serves the status page, metrics, health and readiness for one conveyor."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Callable[[], Health],
        ready: Callable[[], bool],
        metrics: Callable[[], tuple[bytes, str]] | None,
        status: Callable[[], bytes] | None = None,
        page: bytes | None = None,
        auth: OpsAuth | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._health = health
        self._ready = ready
        self._metrics = metrics
        self._status = status
        self._page = page
        self._auth = auth
        self._server: asyncio.Server | None = None
        self._loopback = False  # listening on loopback addresses only (set by start())

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually listened on (useful with port 0)."""
        assert self._server is not None, "endpoint not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        host, port = self.address
        self._loopback = all(_is_loopback(sock.getsockname()[0])
                             for sock in self._server.sockets)
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address needs brackets
        page = "the status page /, " if self._page is not None else ""
        logger.info("serving %s/metrics, /healthz and /readyz on http://%s:%d%s", page, shown,
                    port, " (credentials needed)" if self._auth else "")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # sockets of HTTP clients: network time, not an engine timer, so these limits
            # (here and at close) stay on the loop's real clock
            async with asyncio.timeout(5.0):
                request = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = request.partition(b"\r\n")
            if self._loopback and not _is_loopback_host(_header(rest, "host")):
                routed: Answer | Callable[[], Answer] = (
                    421, "text/plain", b"this endpoint answers to loopback host names only\n",
                    ())
            else:
                routed = self._route(line, _header(rest, "authorization"))
            if callable(routed):
                routed = await asyncio.to_thread(routed)
            status, ctype, body, headers = routed
            extra = "".join(f"{k}: {v}\r\n" for k, v in (*_COMMON_HEADERS, *headers))
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
                    "Connection: close\r\n\r\n").encode("latin-1")
            writer.write(head + (b"" if request.startswith(b"HEAD ") else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        except Exception:
            logger.exception("ops endpoint: request failed")
        finally:
            writer.close()

    def _route(self, line: bytes, authorization: str | None) -> Answer | Callable[[], Answer]:
        """The answer to a request line, or a function computing it in a worker thread."""
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n", ()
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET (this endpoint is read-only)\n", (
                ("Allow", "GET, HEAD"),)
        authorized = self._auth is None or self._auth.allows(authorization)
        if path == "/healthz":
            verdict = self._health()  # judged at the conveyor's clock's time
            document: dict[str, Any] = verdict.as_json()
            if not authorized:  # probes need no credentials; the reasons do
                del document["problems"]
            return (200 if verdict.ok else 503), "application/json", _json(document), ()
        if path == "/readyz":
            ready = self._ready()
            return (200 if ready else 503), "application/json", _json(
                {"status": "ready" if ready else "not ready"}), ()
        known = {"/metrics": self._metrics, "/status.json": self._status,
                 "/": self._page, "/index.html": self._page}
        if known.get(path) is None:
            return 404, "text/plain", b"not found: try /, /metrics, /healthz, /readyz\n", ()
        if not authorized:
            assert self._auth is not None
            return 401, "text/plain", b"authentication required\n", (
                *(("WWW-Authenticate", c) for c in self._auth.challenges),
                ("Cache-Control", "no-store"))
        if path == "/metrics":
            metrics = self._metrics
            assert metrics is not None

            def render_metrics() -> Answer:
                body, ctype = metrics()
                return 200, ctype, body, ()

            return render_metrics
        if path == "/status.json":
            status = self._status
            assert status is not None
            return lambda: (200, "application/json", status(), (("Cache-Control", "no-store"),))
        assert self._page is not None
        return 200, "text/html; charset=utf-8", self._page, _PAGE_HEADERS


def _is_loopback(address: str) -> bool:
    """An IP address of this machine's loopback interface (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_loopback_host(host: str | None) -> bool:
    """A ``Host`` header naming a loopback host, with or without its port (none at all,
    as from an HTTP/1.0 client on this machine, passes too: a browser always sends one)."""
    if host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:port
        return _is_loopback(name[1:].split("]", 1)[0])
    name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    name = name.rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or _is_loopback(name)


def _header(head: bytes, name: str) -> str | None:
    """The value of header ``name`` (lower case) in the request's header lines."""
    for raw in head.split(b"\r\n"):
        key, colon, value = raw.partition(b":")
        if colon and key.strip().lower() == name.encode():
            return value.strip().decode("latin-1")
    return None


def _json(value: object) -> bytes:
    return (json.dumps(value, sort_keys=True) + "\n").encode()
