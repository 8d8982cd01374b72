"""Leader election on PostgreSQL session advisory locks: one active producer across hosts.

Every instance keeps one dedicated connection (never a pool) and asks
``pg_try_advisory_lock`` for the lock derived from each key it is asked about: the
instance's own ``key`` for producers without a leader key, ``f"{key}/{producer_key}"`` for
each producer with one. The session that holds a key's lock leads that key and produces
it; the others stand by and try again on every tick. A session lock lives exactly as long
as the session, so leadership moves as soon as PostgreSQL ends the leader's session: at
once when its process dies (the kernel closes the socket) or the connection is cut, after
the TCP keepalive set here when the leader silently vanishes from the network.

All keys share the one connection. The questions of one moment (the producers ticking at
the same grid time) go out together in one round trip, ordered by a single task: one
``SELECT`` that tries the locks of the keys not held, or ``SELECT 1`` when every key asking
is already held, since one answer proves the whole session and with it every lock it
holds. A leader proves its session before it produces; any doubt (an error, no answer
within ``connect_timeout``) drops the connection and makes every key a standby at once,
while a check cancelled by its tick's grace gives up (unlocks) that key alone. asyncpg is
imported when the first :class:`PostgresLeader` is created, so ``import aioconveyor``
stays light.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import _validate
from ._clock import Clock, ClockedBackend, Timer
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
_TRY_SQL = "SELECT id FROM unnest($1::bigint[]) AS t(id) WHERE pg_try_advisory_lock(id)"
_UNLOCK_SQL = "SELECT count(pg_advisory_unlock(id)) FROM unnest($1::bigint[]) AS t(id)"
_NAMED = 5
"""Keys named in one log line about many."""


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


@dataclass(slots=True, eq=False)
class _Key:
    """One elected key: the instance's own (``key is None``) or a producer's."""

    key: str | None
    name: str
    lock_id: int
    role: str = UNKNOWN
    since: datetime | None = None
    takeovers: int = 0
    asked: float = -math.inf
    """When ``lead()`` last asked for it (the leader's clock, monotonic seconds)."""
    gap: float = 0.0
    """Between the last two different times it was asked: about its producer's period."""
    session: int = 0
    """The session that took its lock (while ``role == LEADER``)."""
    gone: bool = False
    """Released: no longer tracked; a lock it still gets is given back at once."""


class PostgresLeader(ClockedBackend):
    """Only the holder of a PostgreSQL advisory lock produces (a :class:`~aioconveyor.Leader`).

    * ``dsn``: ``postgresql://user:password@host:port/database`` of the **primary**
      (``None``: the libpq ``PG*`` environment variables). Connect directly or through a
      session-mode pooler: a transaction-mode pooler (PgBouncer's default) cannot hold a
      session lock. Multi-host DSNs pick the primary (``target_session_attrs=primary``).
    * ``key``: what the instances agree on; all conveyors with the same key elect one
      leader. Its lock id is :func:`lock_id_for` ``(key)``. A producer with a leader key
      ``k`` (``lead(event_time, key=k)``) is elected separately, on ``f"{key}/{k}"``.
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
    * ``release_after``: a producer key not asked for this many seconds, and for three of
      its own periods, is released (its producer was removed); see also :meth:`release`.
    * ``proof_age``: a leader's tick may be granted on a session check at most this many
      seconds old instead of a round trip of its own (0, the default: every tick waits for
      a fresh answer). Fewer queries with thousands of keys, a longer window for a
      duplicate around a handover.
    * ``clock``: the time source of ``release_after`` and ``proof_age`` (default: the
      conveyor's clock, so a ``FakeClock`` drives them too).
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
        release_after: float = 60.0,
        proof_age: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        _validate.secret_text("dsn", dsn)
        self.lock_id = lock_id_for(key)
        self.key = key
        self.keepalive = _validate.positive("keepalive", keepalive)
        if self.keepalive < 1:
            _validate.fail("keepalive", keepalive, f"must be at least 1 second, got {keepalive!r}")
        self.connect_timeout = _validate.positive("connect_timeout", connect_timeout)
        self.release_after = _validate.positive("release_after", release_after)
        self.proof_age = _validate.non_negative("proof_age", proof_age)
        if clock is not None and not isinstance(clock, Clock):
            _validate.fail("clock", clock, f"must be a Clock or None, got {clock!r}")
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
        self._clock = clock
        self._conn: Any = None
        self._session = 0  # +1 for every connection made: a lock belongs to one session
        self._closed = False
        self._own = _Key(None, key, self.lock_id)
        self._keys: dict[str, _Key] = {}
        self._pending: dict[_Key, list[asyncio.Future[bool]]] = {}
        self._unlocks: list[tuple[int, int]] = []  # (lock id, session) to give back
        self._released: list[asyncio.Future[None]] = []  # release() calls waiting for it
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._sweep_timer: Timer | None = None
        self._sweep_due = False
        self._proven_at = -math.inf  # when the last round trip that came back was sent
        self._proven_session = 0
        self._round_trips = 0

    def __repr__(self) -> str:
        return (f"<PostgresLeader {self.name!r} key={self.key!r} role={self._own.role} "
                f"dsn={mask_dsn(self._dsn)!r}>")

    # -- the Leader protocol ---------------------------------------------------------

    @property
    def role(self) -> str:
        """``"leader"``, ``"standby"``, or ``"unknown"`` (no answer from the server yet)."""
        return self._own.role

    @property
    def since(self) -> datetime | None:
        """When the current role began (UTC)."""
        return self._own.since

    @property
    def takeovers(self) -> int:
        """How many times this instance became leader."""
        return self._own.takeovers

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

    async def lead(self, event_time: datetime, key: str | None = None) -> bool:
        """True if this instance holds the lock of ``key`` for the tick at ``event_time``.

        ``key=None`` is the instance's own key; a producer key ``k`` is elected on
        ``f"{self.key}/{k}"``. A leader's session is proven with a round trip (shared with
        every key asking at the same moment); a standby (re)connects if it must and tries
        the lock. Any failure answers False; a leader whose answer does not come before the
        call is cancelled (the tick's grace) gives that key up.
        """
        if self._closed:
            return False
        state = self._own if key is None else self._key(key)
        now = self._now()
        if now > state.asked:
            if state.asked > -math.inf:
                state.gap = now - state.asked
            state.asked = now
        if state.role == LEADER and self._fresh(now):
            return True
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(state, []).append(answer)
        self._kick()
        try:
            return await answer
        except asyncio.CancelledError:
            if state.role == LEADER and not (self._closed or state.gone):
                self._give_up(state, "the check did not answer in time")
            raise

    async def close(self) -> None:
        """Release every lock and disconnect (idempotent)."""
        self._closed = True
        held = [s for s in self._states() if s.role == LEADER]
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        task, self._pump = self._pump, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._answer_all(self._pending)
        self._pending = {}
        self._settle_released()
        conn, self._conn = self._conn, None
        for state in self._states():
            self._set_role(state, UNKNOWN)
        if conn is None or conn.is_closed():
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()", timeout=self.connect_timeout)
            await conn.close(timeout=self.connect_timeout)
        except Exception as exc:
            conn.terminate()  # closing the socket releases the locks just as well
            self._log.warning("leader %s: no clean goodbye (%s); connection dropped",
                              self.name, self._describe(exc))
        except BaseException:
            conn.terminate()
            raise
        finally:
            if len(held) == 1:
                self._log.info("leader %s: released leadership of %r", self.name, held[0].name)
            elif held:
                self._log_keys(logging.INFO, "released leadership of", held)

    # -- per key ---------------------------------------------------------------------

    def lock_name(self, key: str | None = None) -> str:
        """What is elected for ``key``: ``self.key``, or ``f"{self.key}/{key}"``.

        Its lock id is :func:`lock_id_for` of it. A conveyor configured with the key
        ``"plant/meter"`` therefore competes for the same leadership as the producer key
        ``"meter"`` of a conveyor configured with ``"plant"``.
        """
        if key is None:
            return self.key
        _validate.text("key", key)
        return f"{self.key}/{key}"

    @property
    def keys(self) -> tuple[str, ...]:
        """The producer keys this instance tracks (asked for and not released)."""
        return tuple(self._keys)

    def role_of(self, key: str | None = None) -> str:
        """The role of this instance for ``key`` (``None``: its own key): ``"leader"``,
        ``"standby"``, or ``"unknown"`` (not asked yet, released, or no answer yet)."""
        state = self._find(key)
        return UNKNOWN if state is None else state.role

    def since_of(self, key: str | None = None) -> datetime | None:
        """When the role for ``key`` began (UTC)."""
        state = self._find(key)
        return None if state is None else state.since

    def takeovers_of(self, key: str | None = None) -> int:
        """How many times this instance became leader of ``key`` since it first asked."""
        state = self._find(key)
        return 0 if state is None else state.takeovers

    @property
    def round_trips(self) -> int:
        """Queries sent to PostgreSQL so far (lock tries, checks and releases)."""
        return self._round_trips

    async def release(self, key: str) -> None:
        """Give up producer key ``key`` now (its producer was removed), so that another
        instance can lead it at its next tick. Unknown keys are ignored."""
        _validate.text("key", key)
        state = self._keys.get(key)
        if state is None:
            return
        self._answer_all({state: self._pending.pop(state, [])})
        self._forget(state, "released")
        if self._closed or self._pump is None or not self._unlocks:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._released.append(done)
        self._kick()
        await asyncio.shield(done)

    # -- inside ----------------------------------------------------------------------

    def _key(self, key: str) -> _Key:
        state = self._keys.get(key)
        if state is None:
            name = self.lock_name(key)
            state = self._keys[key] = _Key(key, name, lock_id_for(name))
            self._arm_sweep()
        return state

    def _find(self, key: str | None) -> _Key | None:
        return self._own if key is None else self._keys.get(key)

    def _states(self) -> Iterable[_Key]:
        yield self._own
        yield from self._keys.values()


    def _fresh(self, now: float) -> bool:
        """Whether the session's last proof may stand for a leader's tick (``proof_age``)."""
        return (self.proof_age > 0 and self._proven_session == self._session
                and self._conn is not None and not self._conn.is_closed()
                and now - self._proven_at <= self.proof_age)

    def _kick(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name=f"aioconveyor[{self.name}].leader"
            )
        self._wake.set()

    def _arm_sweep(self) -> None:
        if self._sweep_timer is None and not self._closed:
            self._sweep_timer = self._time().call_later(
                self.release_after / 4, self._sweep_soon, background=True
            )

    def _sweep_soon(self) -> None:
        self._sweep_timer = None
        if self._closed:
            return
        self._sweep_due = True
        self._kick()
        if self._keys:
            self._arm_sweep()

    def _sweep(self, asking: Mapping[_Key, object]) -> None:
        """Release the producer keys nobody asked for in a while."""
        self._sweep_due = False
        now = self._now()
        for state in list(self._keys.values()):
            idle = now - state.asked
            if state not in asking and idle >= max(self.release_after, 3 * state.gap):
                self._forget(state, f"not asked for {idle:.0f} s")

    def _forget(self, state: _Key, why: str) -> None:
        assert state.key is not None
        del self._keys[state.key]
        state.gone = True
        if state.role == LEADER:
            self._unlocks.append((state.lock_id, state.session))
            self._log.info("leader %s: giving up leadership of %r (%s)", self.name,
                           state.name, why)
        self._set_role(state, UNKNOWN)

    def _give_up(self, state: _Key, reason: str) -> None:
        """One key's leader could not prove itself in time: stand by and unlock it."""
        self._unlocks.append((state.lock_id, state.session))
        self._set_role(state, STANDBY)
        self._log.warning("leader %s: lost leadership of %r (%s); standing by, producing "
                          "nothing until the lock is ours again", self.name, state.name, reason)
        self._kick()

    async def _run(self) -> None:
        """The one task that talks to PostgreSQL: a round trip for whatever is asked."""
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # the producers of the same grid time join this round
            batch = {state: answers for state, answers in self._pending.items()
                     if not all(answer.done() for answer in answers)}  # callers still there
            self._pending = {}
            try:
                if self._sweep_due:
                    self._sweep(batch)
                await self._round(batch)
            except Exception as exc:  # a bug here must not end leadership checks for good
                self._log.exception("leader %s: unexpected error, standing by", self.name)
                self._broken(self._describe(exc))
            except BaseException:  # cancelled (close) mid-query: the lock may be ours
                self._broken("closing", log=False)
                raise
            finally:
                self._answer_all(batch)
                self._settle_released()

    async def _round(self, batch: dict[_Key, list[asyncio.Future[bool]]]) -> None:
        unlocks, self._unlocks = self._unlocks, []
        ids = [lock_id for lock_id, session in unlocks if session == self._session]
        if ids and self._alive():
            try:
                self._round_trips += 1
                await self._conn.execute(_UNLOCK_SQL, ids, timeout=self.connect_timeout)
            except Exception as exc:
                self._broken(self._describe(exc))
        self._settle_released()
        if not batch:
            return
        held = [s for s in batch if s.role == LEADER]
        tries = [s for s in batch if s.role != LEADER]
        if held and not self._alive():
            self._broken("the connection was closed")
            held = []
        while True:
            reused = self._alive()
            sent = self._now()
            try:
                if not reused:
                    self._conn = await self._connect()
                self._round_trips += 1
                if tries:
                    rows = await self._conn.fetch(_TRY_SQL, [s.lock_id for s in tries],
                                                  timeout=self.connect_timeout)
                    got = {row[0] for row in rows}
                else:
                    await self._conn.fetchval("SELECT 1", timeout=self.connect_timeout)
                    got = set()
            except Exception as exc:
                if held:
                    self._broken(self._describe(exc))
                    held = []
                else:
                    self._drop()
                if reused and tries:
                    continue  # it died since the last tick (server restart...): once, fresh
                if tries:
                    self._limiter.log(
                        self._log, logging.WARNING, type(exc).__qualname__,
                        "leader %s: cannot reach PostgreSQL for %s, standing by: %s",
                        self.name, self._names(tries), self._describe(exc),
                    )
                return  # the roles of the keys tried stay what they were
            break
        self._proven_at, self._proven_session = sent, self._session
        for state in held:
            self._answer(batch[state], not state.gone)  # released meanwhile: not any more
        gained, standing = [], []
        for state in tries:
            if state.lock_id in got:
                state.session = self._session
                state.takeovers += 1
                self._set_role(state, LEADER)
                if state.gone:  # released while the try was on its way: give it back
                    self._unlocks.append((state.lock_id, state.session))
                    self._wake.set()
                    continue
                gained.append(state)
                self._answer(batch[state], True)
            elif state.role != STANDBY:
                self._set_role(state, STANDBY)
                if not state.gone:
                    standing.append(state)
        if gained:
            if len(gained) == 1:
                self._log.info("leader %s: became leader of %r (takeover %d)", self.name,
                               gained[0].name, gained[0].takeovers)
            else:
                self._log_keys(logging.INFO, "became leader of", gained)
        if standing:
            if len(standing) == 1:
                self._log.info("leader %s: standing by; %r is held by another instance",
                               self.name, standing[0].name)
            else:
                self._log_keys(logging.INFO, "standing by (held by others) for", standing)

    def _alive(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def _broken(self, reason: str, *, log: bool = True) -> None:
        """The session is in doubt: drop it, and every key it held stands by."""
        self._drop()
        lost = [s for s in self._states() if s.role == LEADER]
        for state in lost:
            self._set_role(state, STANDBY)
        if not lost or not log:
            return
        if len(lost) == 1:
            self._log.warning("leader %s: lost leadership of %r (%s); standing by, producing "
                              "nothing until the lock is ours again", self.name,
                              lost[0].name, reason)
        else:
            self._log_keys(logging.WARNING, f"lost leadership ({reason}) of", lost)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    @staticmethod
    def _answer(answers: list[asyncio.Future[bool]], value: bool) -> None:
        for answer in answers:
            if not answer.done():
                answer.set_result(value)

    def _answer_all(self, batch: Mapping[_Key, list[asyncio.Future[bool]]]) -> None:
        for answers in batch.values():
            self._answer(answers, False)

    def _settle_released(self) -> None:
        done, self._released = self._released, []
        for future in done:
            if not future.done():
                future.set_result(None)

    def _set_role(self, state: _Key, role: str) -> None:
        if role != state.role:
            state.role = role
            state.since = datetime.now(UTC)

    def _names(self, states: list[_Key]) -> str:
        shown = ", ".join(repr(s.name) for s in states[:_NAMED])
        more = f" and {len(states) - _NAMED} more" if len(states) > _NAMED else ""
        return shown + more

    def _log_keys(self, level: int, what: str, states: list[_Key]) -> None:
        self._log.log(level, "leader %s: %s %d keys: %s", self.name, what, len(states),
                      self._names(states))

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
        self._session += 1
        return conn

    def _describe(self, exc: BaseException) -> str:
        """``Type: message`` of ``exc`` with the password scrubbed out."""
        return scrub(f"{type(exc).__name__}: {exc}", self._secrets)
