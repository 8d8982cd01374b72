"""Leader election on a PostgreSQL session advisory lock: one active conveyor across hosts.

Every instance with the same ``key`` keeps one dedicated connection (never a pool) and
asks ``pg_try_advisory_lock`` for the lock derived from the key. The session that holds
the lock is the leader and produces; the others stand by and try again on every tick. A
session lock lives exactly as long as the session, so leadership moves as soon as
PostgreSQL ends the leader's session: at once when its process dies (the kernel closes
the socket) or the connection is cut, after the TCP keepalive set here when the leader
silently vanishes from the network.

The leader proves its session on every tick with one round trip before it produces; any
doubt (an error, no answer in time, cancellation) drops the connection and makes it a
standby at once. asyncpg is imported when the first :class:`PostgresLeader` is created,
so ``import aioconveyor`` stays light.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from . import _validate
from ._errors import ConveyorError
from ._logs import LogLimiter
from ._secrets import check_pg_ssl, encode_userinfo, mask_dsn, scrub, secrets_of

__all__ = ["PostgresLeader", "lock_id_for"]

logger = logging.getLogger(__name__)

LEADER = "leader"
STANDBY = "standby"
UNKNOWN = "unknown"

_LOCK_NAMESPACE = b"aioconveyor.leader:"
_PROBES = 3
"""Unanswered keepalive probes after which the server drops the leader's session."""


def lock_id_for(key: str) -> int:
    """The signed 64-bit advisory lock id of ``key``: stable across hosts, runs, versions.

    It is the first 8 bytes of ``sha256(b"aioconveyor.leader:" + key)``, so it does not
    collide with small integer lock ids other software tends to use.
    """
    _validate.text("key", key)
    digest = hashlib.sha256(_LOCK_NAMESPACE + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _import_asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as exc:
        raise ImportError(
            "aioconveyor.PostgresLeader needs asyncpg, which is not installed: "
            'pip install "aioconveyor[postgres]"'
        ) from exc
    return asyncpg


def _default_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class PostgresLeader:
    """Only the holder of a PostgreSQL advisory lock produces (a :class:`~aioconveyor.Leader`).

    * ``dsn``: ``postgresql://user:password@host:port/database`` of the **primary**
      (``None``: the libpq ``PG*`` environment variables). Connect directly or through a
      session-mode pooler: a transaction-mode pooler (PgBouncer's default) cannot hold a
      session lock. Multi-host DSNs pick the primary (``target_session_attrs=primary``).
    * ``key``: what the instances agree on; all conveyors with the same key elect one
      leader. Its lock id is :func:`lock_id_for` ``(key)``.
    * ``keepalive``: seconds of silence after which the server starts probing this
      connection (``tcp_keepalives_idle``; probes every ``keepalive / 3`` s, at least 1,
      three of them; ``tcp_user_timeout`` likewise). A leader that silently disappears from
      the network loses the lock after about ``2 * keepalive`` seconds.
    * ``connect_timeout``: seconds allowed to connect; each lock query gets the same bound
      (inside a conveyor each check is also bounded by the tick's grace).
    * ``ssl``: passed to ``asyncpg.connect`` (``True``, ``"require"``, an ``SSLContext``...).
    * ``server_settings``: session settings, over the ones above; e.g.
      ``{"idle_session_timeout": "30s"}`` (PostgreSQL 14+) so that a leader whose process
      hangs (its kernel still answers keepalives) loses the lock after 30 s without a check.
    * ``name``: this instance in logs and in ``pg_stat_activity.application_name``
      (default ``host:pid``).
    """

    def __init__(
        self,
        dsn: str | None,
        key: str,
        *,
        keepalive: float = 10.0,
        connect_timeout: float = 5.0,
        ssl: Any = None,
        server_settings: Mapping[str, str] | None = None,
        name: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        _validate.secret_text("dsn", dsn)
        self.lock_id = lock_id_for(key)
        self.key = key
        self.keepalive = _validate.positive("keepalive", keepalive)
        if self.keepalive < 1:
            _validate.fail("keepalive", keepalive, f"must be at least 1 second, got {keepalive!r}")
        self.connect_timeout = _validate.positive("connect_timeout", connect_timeout)
        if name is not None:
            _validate.text("name", name)
        self.name = name or _default_name()
        self._asyncpg = _import_asyncpg()
        self._dsn = dsn
        self._secrets = secrets_of(dsn)
        check_pg_ssl(ssl)
        self._ssl = ssl
        if server_settings is not None and not isinstance(server_settings, Mapping):
            _validate.fail("server_settings", server_settings,
                           f"must be a mapping of str to str, got {server_settings!r}")
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            _validate.fail("logger", logger, f"must be a logging.Logger or None, got {logger!r}")
        self._server_settings = {str(k): str(v) for k, v in (server_settings or {}).items()}
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._limiter = LogLimiter()
        self._conn: Any = None
        self._acquiring: asyncio.Task[bool | None] | None = None
        self._closed = False
        self._role = UNKNOWN
        self._since: datetime | None = None
        self._takeovers = 0

    def __repr__(self) -> str:
        return (f"<PostgresLeader {self.name!r} key={self.key!r} role={self._role} "
                f"dsn={mask_dsn(self._dsn)!r}>")

    # -- the Leader protocol ---------------------------------------------------------

    @property
    def role(self) -> str:
        """``"leader"``, ``"standby"``, or ``"unknown"`` (no answer from the server yet)."""
        return self._role

    @property
    def since(self) -> datetime | None:
        """When the current role began (UTC)."""
        return self._since

    @property
    def takeovers(self) -> int:
        """How many times this instance became leader."""
        return self._takeovers

    async def open(self) -> None:
        """Connect once, so that a wrong DSN, password or database fails the start.

        A server that is merely unreachable (refused, timed out, starting up, full) does not:
        this instance then starts as a standby and keeps trying on every tick.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; a PostgresLeader opens once")
        try:
            self._conn = await self._connect()
        except (OSError, TimeoutError, self._asyncpg.CannotConnectNowError,
                self._asyncpg.TooManyConnectionsError) as exc:
            self._log.warning("leader %s: PostgreSQL not reachable yet, standing by and "
                              "retrying every tick: %s", self.name, self._describe(exc))
        except Exception as exc:
            text = self._describe(exc)
            if text != f"{type(exc).__name__}: {exc}":
                raise ConveyorError(f"leader {self.name}: cannot connect: {text}") from None
            raise

    async def lead(self, event_time: datetime) -> bool:
        """True if this instance holds the lock for the tick at ``event_time``.

        The leader checks its session with one round trip; a standby (re)connects if it
        must and tries the lock. Any failure, or cancellation, answers False.
        """
        if self._closed:
            return False
        if self._role == LEADER:
            return await self._check()
        stale = self._acquiring is not None  # finished (or still running) since a past tick
        if self._acquiring is None:
            self._acquiring = asyncio.get_running_loop().create_task(
                self._acquire(), name=f"aioconveyor[{self.name}].leader.acquire"
            )
        # shielded: a connect slower than the tick's grace goes on and serves a later tick
        got = await asyncio.shield(self._acquiring)
        self._acquiring = None
        if got is None:  # no answer from the server: the role stays what it was
            return False
        if not got:
            self._set_role(STANDBY)
            return False
        self._takeovers += 1
        self._set_role(LEADER)
        return await self._check() if stale else True

    async def close(self) -> None:
        """Release the lock and disconnect (idempotent)."""
        self._closed = True
        task, self._acquiring = self._acquiring, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        conn, self._conn = self._conn, None
        was_leader = self._role == LEADER
        self._set_role(UNKNOWN, log=False)
        if conn is None or conn.is_closed():
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()", timeout=self.connect_timeout)
            await conn.close(timeout=self.connect_timeout)
        except Exception as exc:
            conn.terminate()  # closing the socket releases the lock just as well
            self._log.warning("leader %s: no clean goodbye (%s); connection dropped",
                              self.name, self._describe(exc))
        except BaseException:
            conn.terminate()
            raise
        finally:
            if was_leader:
                self._log.info("leader %s: released leadership of %r", self.name, self.key)

    # -- inside ----------------------------------------------------------------------

    async def _connect(self) -> Any:
        interval = max(1, round(self.keepalive / _PROBES))
        conn = await self._asyncpg.connect(
            None if self._dsn is None else encode_userinfo(self._dsn),
            timeout=self.connect_timeout,
            ssl=self._ssl,
            target_session_attrs="primary",
            server_settings={
                "application_name": f"aioconveyor leader {self.name}"[:63],
                "tcp_keepalives_idle": str(math.ceil(self.keepalive)),
                "tcp_keepalives_interval": str(interval),
                "tcp_keepalives_count": str(_PROBES),
                **self._server_settings,
            },
        )
        try:
            if conn.get_server_version() >= (12, 0) and \
                    "tcp_user_timeout" not in self._server_settings:
                user_timeout_ms = int(2 * self.keepalive * 1000)
                await conn.execute(f"SET tcp_user_timeout = {user_timeout_ms}",
                                   timeout=self.connect_timeout)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _acquire(self) -> bool | None:
        """(Re)connect if needed and try the lock: True got it, False busy, None failed."""
        while True:
            reused = self._conn is not None and not self._conn.is_closed()
            try:
                if not reused:
                    self._conn = await self._connect()
                got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)",
                                                self.lock_id, timeout=self.connect_timeout)
            except Exception as exc:
                self._drop()
                if reused:
                    continue  # it died since the last tick (server restart...): once, fresh
                self._limiter.log(
                    self._log, logging.WARNING, type(exc).__qualname__,
                    "leader %s: cannot reach PostgreSQL for %r, standing by: %s",
                    self.name, self.key, self._describe(exc),
                )
                return None
            except BaseException:
                self._drop()  # cancelled mid-query: the lock may be ours; closing frees it
                raise
            return bool(got)

    async def _check(self) -> bool:
        """One round trip on the lock's session; on any doubt give leadership up."""
        try:
            await self._conn.fetchval("SELECT 1", timeout=self.connect_timeout)
        except Exception as exc:
            self._lose(self._describe(exc))
            return False
        except BaseException:  # cancelled, e.g. by the conveyor's grace timeout
            self._lose("the check did not answer in time")
            raise
        return True

    def _lose(self, reason: str) -> None:
        self._drop()
        self._log.warning("leader %s: lost leadership of %r (%s); standing by, producing "
                          "nothing until the lock is ours again", self.name, self.key, reason)
        self._set_role(STANDBY, log=False)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    def _set_role(self, role: str, *, log: bool = True) -> None:
        if role == self._role:
            return
        self._role = role
        self._since = datetime.now(UTC)
        if not log:
            return
        if role == LEADER:
            self._log.info("leader %s: became leader of %r (takeover %d)", self.name,
                           self.key, self._takeovers)
        elif role == STANDBY:
            self._log.info("leader %s: standing by; %r is held by another instance",
                           self.name, self.key)

    def _describe(self, exc: BaseException) -> str:
        """``Type: message`` of ``exc`` with the password scrubbed out."""
        return scrub(f"{type(exc).__name__}: {exc}", self._secrets)
