"""A group of instances that split their producers, coordinated by PostgreSQL.

Every member keeps one dedicated connection and in it:

* a **member lock**: the session advisory lock ``(group id, member id)`` (two 32-bit
  keys, both derived from names with ``blake2b``). The members of a group are the sessions
  that hold such a lock, listed from ``pg_locks``: a member exists exactly as long as its
  session, and two live instances cannot share a name;
* a shared **digest lock** ``(group id + 1, digest of the producer keys it runs)``: when
  every member shows the same digest they run the same producers and the balanced
  assignment applies; otherwise plain rendezvous hashing, which needs no agreement;
* one **producer lock** (``lock_id_for(f"{group}/{producer key}")``, the lock a
  :class:`~aioconveyor.PostgresLeader` with ``key=group`` would take) per producer the
  assignment gives it.

A *check* every ``check_interval`` seconds is one statement: it lists the members, tries
the producer locks newly assigned to this member and gives back the ones assigned
elsewhere; one answer proves the session and with it every lock it holds. A producer's
tick is granted without a round trip of its own while this member holds its lock, the
last check is at most ``2 * check_interval`` old, and the lock was taken before the tick's
grid time (so a new owner starts at the next grid time after the old one let go). On a
planned change the old owner produces the producer's next tick, lets it finish, and only
then unlocks; the new owner, refused until then, tries again half a period after each of
the producer's ticks and at every check.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import _validate
from ._clock import Clock, ClockedBackend, Timer, timeout
from ._errors import ConveyorError
from ._group import GroupStats, assignment
from ._leader_postgres import _PROBES, _default_name, _import_asyncpg, lock_id_for
from ._logs import LogLimiter
from ._secrets import check_pg_ssl, encode_userinfo, mask_dsn, scrub, secrets_of

__all__ = ["GroupMember", "PostgresGroup", "group_id_for", "member_id_for"]

logger = logging.getLogger(__name__)

LEADER = "leader"
STANDBY = "standby"
UNKNOWN = "unknown"

_APP = "aioconveyor group "
_AGREE_CHECKS = 3
"""Checks a member's set of producers must stay the same before it is shown, and a
difference between members must last before the plain assignment takes over."""
_NAMED = 5
"""Producers named in one log line about many."""
_JOIN_SQL = "SELECT pg_try_advisory_lock($1::int, $2::int)"
_DIGEST_SQL = ("SELECT pg_advisory_unlock_shared($1::int, $2::int) "
               "WHERE $2::int >= 0 UNION ALL "
               "SELECT pg_try_advisory_lock_shared($1::int, $3::int) WHERE $3::int >= 0")
_CHECK_SQL = """
WITH u AS (
  SELECT count(*) FILTER (WHERE pg_advisory_unlock(id)) AS n
  FROM unnest($3::bigint[]) AS t(id)
), g AS (
  SELECT coalesce(array_agg(id), '{}') AS got
  FROM unnest($4::bigint[]) AS t(id) WHERE pg_try_advisory_lock(id)
), m AS (
  SELECT l.pid, l.classid::bigint AS c, l.objid::bigint AS o
  FROM pg_locks l
  WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
    AND l.classid IN ($1::bigint::oid, $2::bigint::oid)
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT g.got, u.n, m.pid, m.c, m.o, a.application_name
FROM g CROSS JOIN u LEFT JOIN m ON true LEFT JOIN pg_stat_activity a ON a.pid = m.pid
"""
_HOLDERS_SQL = """
SELECT l.pid, (l.classid::bigint << 32) | l.objid::bigint AS id
FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _id31(prefix: bytes, text: str) -> int:
    digest = hashlib.blake2b(prefix + text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def group_id_for(group: str) -> int:
    """The first key of the group's member locks (even, 0 ≤ id < 2**31)."""
    return _id31(b"aioconveyor.group:", group) & ~1


def member_id_for(group: str, name: str) -> int:
    """The second key of a member's lock: its identity in the group (0 ≤ id < 2**31)."""
    return _id31(b"aioconveyor.member:", f"{group}\n{name}")


def _digest(names: Iterable[str]) -> int:
    return _id31(b"aioconveyor.keys:", "\n".join(sorted(names)))


def _names(slots: list[_Slot]) -> str:
    shown = ", ".join(s.name for s in slots[:_NAMED])
    return shown + (f" and {len(slots) - _NAMED} more" if len(slots) > _NAMED else "")


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One live member as :meth:`PostgresGroup.members_now` lists it."""

    member_id: int
    name: str
    pid: int
    producers: tuple[str, ...]
    """The producer keys whose locks its session holds (of the keys asked about)."""


@dataclass(slots=True, eq=False)
class _Slot:
    """One producer key of this member."""

    key: str | None
    name: str
    """The lock name (``group`` or ``group/key``): what is hashed and locked."""
    lock_id: int
    held: bool = False
    session: int = 0
    acquired: float = math.inf
    """Wall time (POSIX s) of the answer that brought the lock: ticks after it are ours."""
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    leaving: bool = False
    left_at: float = 0.0
    granted_since_loss: bool = False
    asked: float = -math.inf
    gap: float = 0.0
    takeovers: int = 0
    gone: bool = False


class PostgresGroup(ClockedBackend):
    """Members of one group split its producers; each produced by one live member only.

    Use it as ``leader=`` of every instance (all with the same producers and the same
    ``group``). It is a :class:`~aioconveyor.Leader`: the scheduler asks it about every
    producer's tick, and it answers from what the last check established.

    * ``dsn``: the **primary** (as for :class:`~aioconveyor.PostgresLeader`; a
      transaction-mode pooler cannot hold session locks).
    * ``group``: what the members agree on.
    * ``name``: this member, unique in the group (default ``host:pid``); two live sessions
      cannot hold the same name (the second waits until the first is gone).
    * ``check_interval``: seconds between checks (one statement each, whatever the number
      of producers). A producer's tick is granted only on a check at most twice this old.
    * ``balance``: the band of shares around the mean: every member holds at most
      ``balance`` times the mean and at least ``2 - balance`` times it (default ``1.05``:
      within 5 %, and a join or leave moves about the ideal 1/N; ``1.0``: exact shares, at
      the price of about 1.3/N moved per change in fleets of a hundred; see
      :func:`aioconveyor._rendezvous.assign`).
    * ``session_timeout``: the server ends a session quiet for this long
      (``idle_session_timeout``, PostgreSQL 14+), so a paused or hung member loses its
      producers; default ``max(5, 5 * check_interval)``, ``0`` leaves it to the server.
    * ``keepalive``: TCP keepalive of the session (a silently vanished member loses its
      locks after about ``2 * keepalive`` s); at least ``2 * check_interval``.
    * ``connect_timeout``: seconds to connect; each check gets the same bound.
    * ``ssl``, ``server_settings``, ``logger``: as for ``PostgresLeader``.
    * ``release_after``: a producer key not asked about for this long (and three of its
      periods) is released (its producer was removed).
    * ``clock``: the time source (default: the conveyor's).
    """

    def __init__(
        self,
        dsn: str | None,
        group: str,
        *,
        name: str | None = None,
        check_interval: float = 1.0,
        balance: float = 1.05,
        session_timeout: float | None = None,
        keepalive: float = 10.0,
        connect_timeout: float = 5.0,
        ssl: Any = None,
        server_settings: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
        release_after: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        _validate.secret_text("dsn", dsn)
        self.group = _validate.text("group", group)
        if name is not None:
            _validate.text("name", name)
        self.name = name or _default_name()
        self.check_interval = _validate.positive("check_interval", check_interval)
        self.balance = _validate.positive("balance", balance)
        if not 1.0 <= balance <= 2.0:
            _validate.fail("balance", balance, f"must be between 1.0 and 2.0, got {balance!r}")
        if session_timeout is None:
            session_timeout = max(5.0, 5 * self.check_interval)
        self.session_timeout = _validate.non_negative("session_timeout", session_timeout)
        if 0 < self.session_timeout < 3 * self.check_interval:
            _validate.fail("session_timeout", session_timeout,
                           f"must be 0 or at least 3 * check_interval "
                           f"({3 * self.check_interval:g}), got {session_timeout!r}")
        self.keepalive = _validate.positive("keepalive", keepalive)
        if self.keepalive < max(1.0, 2 * self.check_interval):
            _validate.fail("keepalive", keepalive,
                           f"must be at least 1 and at least 2 * check_interval "
                           f"({2 * self.check_interval:g}), got {keepalive!r}")
        self.connect_timeout = _validate.positive("connect_timeout", connect_timeout)
        self.release_after = _validate.positive("release_after", release_after)
        if clock is not None and not isinstance(clock, Clock):
            _validate.fail("clock", clock, f"must be a Clock or None, got {clock!r}")
        if server_settings is not None and not isinstance(server_settings, Mapping):
            _validate.fail("server_settings", server_settings,
                           f"must be a mapping of str to str, got {server_settings!r}")
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            _validate.fail("logger", logger, f"must be a logging.Logger or None, got {logger!r}")
        check_pg_ssl(ssl)
        self._asyncpg = _import_asyncpg()
        self._dsn = dsn
        self._secrets = secrets_of(dsn)
        self._ssl = ssl
        self._server_settings = {str(k): str(v) for k, v in (server_settings or {}).items()}
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._limiter = LogLimiter()
        self._clock = clock
        self.group_id = group_id_for(group)
        self.member_id = member_id_for(group, self.name)
        self._me = str(self.member_id)
        self._conn: Any = None
        self._session = 0
        self._joined = False
        self._closed = False
        self._slots: dict[str | None, _Slot] = {}
        self._keys_version = 0
        self._members: tuple[str, ...] = ()
        self._member_names: dict[str, str] = {}
        self._agreed = False
        self._digest = -1  # the digest lock held (-1: none)
        self._keys_changed = -math.inf  # when the set of producer keys last changed
        self._disagree_since: float | None = None
        self._assigned: dict[str, str] = {}
        self._assigned_for: tuple[Any, ...] = ()
        self._proven_at = -math.inf
        self._proven_wall = -math.inf
        self._proven_session = 0
        self._round_trips = 0
        self._takeovers = 0
        self._handovers = 0
        self._lost = 0
        self._role = UNKNOWN
        self._since: datetime | None = None
        self._members_since: datetime | None = None
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._retry: Timer | None = None
        self._retry_at = math.inf
        self._released: list[asyncio.Future[None]] = []
        self._swept = -math.inf
        self._stats = self._snapshot()

    def __repr__(self) -> str:
        return (f"<PostgresGroup {self.group!r} member={self.name!r} role={self._role} "
                f"dsn={mask_dsn(self._dsn)!r}>")

    # -- the Leader protocol ---------------------------------------------------------

    @property
    def role(self) -> str:
        """``"leader"`` while it produces at least one producer, ``"standby"`` while a
        member producing none, ``"unknown"`` while not a member (not connected)."""
        return self._role

    @property
    def since(self) -> datetime | None:
        """When the current role began (UTC)."""
        return self._since

    @property
    def takeovers(self) -> int:
        """Producer locks this member took."""
        return self._takeovers

    @property
    def handovers(self) -> int:
        """Producers this member gave up because the assignment moved them."""
        return self._handovers

    @property
    def round_trips(self) -> int:
        """Statements sent to PostgreSQL so far."""
        return self._round_trips

    async def open(self) -> None:
        """Connect and join once, so that a wrong DSN or password fails the start; a server
        merely unreachable does not (the member joins at a later check)."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; a PostgresGroup opens once")
        try:
            await self._join()
        except (OSError, TimeoutError, self._asyncpg.CannotConnectNowError,
                self._asyncpg.TooManyConnectionsError) as exc:
            self._drop()
            self._log.warning("group %s: member %s: PostgreSQL not reachable yet, retrying "
                              "every %g s: %s", self.group, self.name, self.check_interval,
                              self._describe(exc))
        except Exception as exc:
            self._drop()
            text = self._describe(exc)
            if text != f"{type(exc).__name__}: {exc}":
                raise ConveyorError(f"group {self.group}: cannot connect: {text}") from None
            raise
        self._kick()

    async def close(self) -> None:
        """Leave the group: give up every producer and the membership, disconnect."""
        if self._closed:
            return
        self._closed = True
        for timer in (self._retry,):
            if timer is not None:
                timer.cancel()
        task, self._pump = self._pump, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._settle_released()
        held = [s for s in self._slots.values() if s.held]
        conn, self._conn = self._conn, None
        for slot in self._slots.values():
            slot.held = False
        self._set_role(UNKNOWN)
        self._stats = self._snapshot()
        if conn is None or conn.is_closed():
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()", timeout=self.connect_timeout)
            await conn.close(timeout=self.connect_timeout)
        except Exception as exc:
            conn.terminate()
            self._log.warning("group %s: member %s: no clean goodbye (%s); connection "
                              "dropped", self.group, self.name, self._describe(exc))
        except BaseException:
            conn.terminate()
            raise
        self._log.info("group %s: member %s left, giving up %d producers", self.group,
                       self.name, len(held))

    async def lead(self, event_time: datetime, key: str | None = None) -> bool:
        """True if this member produces ``key``'s tick at ``event_time``: it holds the
        producer's lock, took it before ``event_time``, and its last check is fresh. No
        round trip: the checks run on their own, every ``check_interval``."""
        return self._grant(event_time, key)

    def role_of(self, key: str | None = None) -> str:
        """``"leader"`` if this member produces ``key`` now, ``"standby"`` if another
        member does (or nobody yet), ``"unknown"`` if the key is not known or not joined."""
        slot = self._slots.get(key)
        if slot is None or not self._joined:
            return UNKNOWN
        return LEADER if self._producing(slot) else STANDBY

    async def release(self, key: str) -> None:
        """Forget producer key ``key`` (its producer was removed), giving its lock back."""
        _validate.text("key", key)
        slot = self._slots.get(key)
        if slot is None:
            return
        self._forget(slot)
        if self._closed or self._pump is None or not slot.held:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._released.append(done)
        self._kick()
        await asyncio.shield(done)

    # -- what it shows ---------------------------------------------------------------

    def group_stats(self) -> GroupStats:
        """This member's view of the group (safe from any thread: an immutable snapshot
        replaced after every check)."""
        return self._stats

    @property
    def members(self) -> tuple[str, ...]:
        """The names of the live members at the last check."""
        return self._stats.members

    @property
    def owned(self) -> tuple[str, ...]:
        """The producer keys this member produces now."""
        return self._stats.owned

    def assignment(self) -> dict[str | None, str]:
        """Each known producer key's member name, as this member computes it now."""
        by_name = {s.name: s.key for s in self._slots.values()}
        return {by_name[n]: self._member_names.get(m, m)
                for n, m in self._current_assignment().items() if n in by_name}

    async def members_now(self, keys: Iterable[str | None] = ()) -> list[GroupMember]:
        """The live members of the group and which of ``keys``' locks each holds, asked
        over a connection of its own (the ``aioconveyor group`` command uses it)."""
        conn = await self._asyncpg.connect(
            None if self._dsn is None else encode_userinfo(self._dsn),
            timeout=self.connect_timeout, ssl=self._ssl,
            server_settings={"application_name": "aioconveyor group (inspect)"})
        try:
            rows = await conn.fetch(_CHECK_SQL, self.group_id, self.group_id + 1, [], [],
                                    timeout=self.connect_timeout)
            holders = await conn.fetch(_HOLDERS_SQL, timeout=self.connect_timeout)
        finally:
            await conn.close(timeout=self.connect_timeout)
        ids = {lock_id_for(self.lock_name(k)): k for k in keys}
        held: dict[int, list[str]] = {}
        for row in holders:
            lock = row["id"] - (1 << 64) if row["id"] >= 1 << 63 else row["id"]
            if lock in ids:
                held.setdefault(row["pid"], []).append(self.lock_name(ids[lock]))
        found = []
        for row in rows:
            if row["pid"] is None or row["c"] != self.group_id:
                continue
            found.append(GroupMember(row["o"], self._name_of(row["application_name"], row["o"]),
                                     row["pid"], tuple(sorted(held.get(row["pid"], [])))))
        return sorted(found, key=lambda m: m.name)

    # -- answering a tick ------------------------------------------------------------

    def _grant(self, event_time: datetime, key: str | None) -> bool:
        if self._closed:
            return False
        slot = self._slot(key)
        now = self._now()
        if now - slot.asked > 1e-3:
            if slot.asked > -math.inf:
                slot.gap = now - slot.asked
            slot.asked = now
        if not self._fresh(now) or not slot.held or slot.session != self._session:
            self._want(slot)
            return False
        if slot.acquired >= event_time.timestamp():
            return False  # taken during this tick: ours from the next grid time
        if slot.leaving:
            if slot.granted_since_loss or slot.inflight:
                return False
            slot.granted_since_loss = True
        elif self._current_assignment().get(slot.name) != self._me:
            return False
        task = asyncio.current_task()
        if task is not None:
            slot.inflight.add(task)
            task.add_done_callback(functools.partial(self._tick_done, slot))
        return True

    def _tick_done(self, slot: _Slot, task: asyncio.Task[Any]) -> None:
        slot.inflight.discard(task)
        if slot.leaving and not slot.inflight and not self._closed:
            self._kick()  # its last tick is over: hand it over now

    def _want(self, slot: _Slot) -> None:
        """A producer assigned here whose lock is not ours: try again half a period after
        this tick (when the old owner has finished its last one), and at every check."""
        if not self._joined or self._current_assignment().get(slot.name) != self._me:
            return
        delay = (slot.gap if slot.gap > 0 else self.check_interval) / 2
        at = self._now() + delay
        if at >= self._retry_at - 1e-3:
            return
        if self._retry is not None:
            self._retry.cancel()
        self._retry_at = at
        self._retry = self._time().call_later(delay, self._retry_now, background=True)

    def _retry_now(self) -> None:
        self._retry, self._retry_at = None, math.inf
        if not self._closed:
            self._kick()

    def _producing(self, slot: _Slot) -> bool:
        return (slot.held and slot.session == self._session and not slot.leaving
                and self._current_assignment().get(slot.name) == self._me)

    def _fresh(self, now: float) -> bool:
        """Whether the last check stands for a tick now: at most two checks old on the
        monotonic clock *and* on the wall clock (a resumed VM's monotonic clock may have
        stood still while its session was ended)."""
        limit = 2 * self.check_interval
        wall = self._time().time() - self._proven_wall
        return (self._conn is not None and not self._conn.is_closed()
                and self._proven_session == self._session
                and now - self._proven_at <= limit and -limit <= wall <= limit)

    # -- the checks ------------------------------------------------------------------

    def _kick(self) -> None:
        if self._closed:
            return
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name=f"aioconveyor[{self.name}].group[{self.group}]")
        self._wake.set()

    async def _run(self) -> None:
        clock = self._time()
        while not self._closed:
            again = False
            self._wake.clear()  # a kick during the check runs another one right after
            try:
                again = await self._check()
            except Exception as exc:
                self._broken(self._describe(exc))
            except BaseException:
                self._broken("closing", log=False)
                raise
            finally:
                self._settle_released()
                self._stats = self._snapshot()
            if again or self._wake.is_set():
                continue
            try:
                async with timeout(clock, self.check_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _check(self) -> bool:
        """One check; True if the member list changed and producers wait for a try."""
        if self._conn is None or self._conn.is_closed():
            if self._conn is not None or self._joined:
                self._broken("the connection was closed")
            try:
                await self._join()
            except Exception as exc:
                self._drop()
                self._limiter.log(
                    self._log, logging.WARNING, type(exc).__qualname__,
                    "group %s: member %s cannot join, producing nothing: %s", self.group,
                    self.name, self._describe(exc))
                return False
            if not self._joined:
                return False
        now = self._now()
        if now - self._swept >= self.release_after / 4:
            self._swept = now
            self._sweep()
        await self._swap_digest()
        unlocks = [s for s in self._slots.values() if s.held and self._may_go(s, now)]
        mine = self._current_assignment(refresh=True)
        tries = [s for s in self._slots.values()
                 if not s.held and not s.gone and mine.get(s.name) == self._me]
        sent, sent_wall = self._now(), self._time().time()
        self._round_trips += 1
        rows = await self._conn.fetch(
            _CHECK_SQL, self.group_id, self.group_id + 1, [s.lock_id for s in unlocks],
            [s.lock_id for s in tries], timeout=self.connect_timeout)
        answered = self._time().time()
        self._proven_at, self._proven_session = sent, self._session
        self._proven_wall = sent_wall
        got = set(rows[0]["got"]) if rows else set()
        for slot in unlocks:
            slot.held = False
            slot.inflight.clear()
            if slot.leaving and not slot.gone:
                self._handovers += 1
            slot.leaving = False
        gained = []
        for slot in tries:
            if slot.lock_id in got:
                slot.held, slot.session, slot.acquired = True, self._session, answered
                slot.takeovers += 1
                self._takeovers += 1
                gained.append(slot)
                if slot.gone:
                    slot.leaving = True
        handed = [s for s in unlocks if not s.gone]
        if handed:
            self._log.info("group %s: member %s handed over %d producers: %s", self.group,
                           self.name, len(handed), _names(handed))
        if gained:
            self._log.info("group %s: member %s took %d producers: %s", self.group,
                           self.name, len(gained), _names(gained))
        changed = self._see(rows)
        mine = self._current_assignment(refresh=True)
        waiting = False
        for slot in self._slots.values():
            assigned_here = mine.get(slot.name) == self._me and not slot.gone
            if slot.held and not assigned_here and not slot.leaving:
                slot.leaving, slot.left_at, slot.granted_since_loss = True, now, False
            elif slot.held and assigned_here and slot.leaving:
                slot.leaving = False
            elif not slot.held and assigned_here:
                waiting = True
        if any(s.held and self._may_go(s, self._now()) for s in self._slots.values()):
            self._wake.set()  # given back at once, next round
        self._update_role()
        return changed and waiting

    def _may_go(self, slot: _Slot, now: float) -> bool:
        """A lock to give back now: released, or moved and its last tick done."""
        if slot.gone:
            return True
        if not slot.leaving or slot.inflight:
            return False
        return slot.granted_since_loss or \
            now - slot.left_at >= 1.5 * max(slot.gap, self.check_interval)

    def _see(self, rows: list[Any]) -> bool:
        """Take the member list of a check; True if it changed."""
        members: dict[int, str] = {}
        digests: dict[int, int] = {}
        names: dict[str, str] = {}
        for row in rows:
            if row["pid"] is None:
                continue
            if row["c"] == self.group_id:
                members[row["pid"]] = str(row["o"])
                names[str(row["o"])] = self._name_of(row["application_name"], row["o"])
            else:
                digests[row["pid"]] = row["o"]
        if self._me not in members.values():
            raise ConveyorError("this member's lock is gone from pg_locks")
        view = tuple(sorted(members.values()))
        # A member that shows no digest yet (it just joined: its producers have not all
        # ticked) is taken to run the same ones, and a difference must last a few checks
        # (not one member seeing a new producer's first tick before the others): else
        # every join would flap the assignment.
        own = _digest(s.name for s in self._slots.values() if not s.gone)
        differ = any(digests.get(pid, own) != own for pid in members)
        now = self._now()
        if not differ:
            self._disagree_since = None
        elif self._disagree_since is None:
            self._disagree_since = now
        agreed = self._disagree_since is None or \
            now - self._disagree_since < _AGREE_CHECKS * self.check_interval
        changed = view != self._members
        if changed:
            joined = sorted(names[m] for m in set(view) - set(self._members))
            left = sorted(self._member_names.get(m, m) for m in set(self._members) - set(view))
            self._members_since = datetime.now(UTC)
            self._log.info("group %s: member %s sees %d members%s%s", self.group, self.name,
                           len(view), f"; joined: {', '.join(joined)}" if joined else "",
                           f"; left: {', '.join(left)}" if left else "")
        if agreed != self._agreed and view:
            if agreed:
                self._log.info("group %s: member %s: every member runs the same producers: "
                               "balanced assignment", self.group, self.name)
            else:
                self._log.warning("group %s: member %s: the members run different producers "
                                  "(digests %s, own %d): plain rendezvous assignment",
                                  self.group, self.name, sorted(set(digests.values())), own)
        self._members, self._member_names, self._agreed = view, names, agreed
        return changed

    async def _swap_digest(self) -> None:
        """Show the producers this member runs (a shared lock on their digest), once the
        set has stayed the same for a few checks; while it changes, show none (a member
        without a digest counts as agreeing)."""
        names = [s.name for s in self._slots.values() if not s.gone]
        digest = _digest(names)
        if digest == self._digest:
            return
        settled = self._now() - self._keys_changed >= _AGREE_CHECKS * self.check_interval
        if not names or not settled:
            if self._digest < 0:
                return
            digest = -1
        self._round_trips += 1
        rows = await self._conn.fetch(_DIGEST_SQL, self.group_id + 1, self._digest, digest,
                                      timeout=self.connect_timeout)
        if digest >= 0 and not rows[-1][0]:
            raise ConveyorError("the shared digest lock was refused")
        self._digest = digest

    def _current_assignment(self, refresh: bool = False) -> dict[str, str]:
        """The assignment for the members seen; a change of the producer keys is taken in
        at the next check (``refresh``), not at every new producer's first tick (300 new
        producers would compute it 300 times in a row)."""
        inputs = (self._members, self._keys_version, self._agreed)
        if inputs != self._assigned_for and (refresh or inputs[0::2] != self._assigned_for[0::2]):
            names = [s.name for s in self._slots.values() if not s.gone]
            self._assigned = assignment(names, self._members, balanced=self._agreed,
                                        balance=self.balance)
            self._assigned_for = inputs
        return self._assigned

    async def _join(self) -> None:
        self._conn = await self._connect()
        self._digest = -1
        self._round_trips += 1
        ok = await self._conn.fetchval(_JOIN_SQL, self.group_id, self.member_id,
                                       timeout=self.connect_timeout)
        if not ok:
            self._drop()
            self._limiter.log(
                self._log, logging.WARNING, "name",
                "group %s: another live session holds the member name %r (or its id %d); "
                "waiting for it to end", self.group, self.name, self.member_id)
            return
        self._joined = True
        self._log.info("group %s: member %s joined", self.group, self.name)

    def _broken(self, reason: str, *, log: bool = True) -> None:
        """The session is in doubt: drop it; every producer stops at once."""
        self._drop()
        lost = [s for s in self._slots.values() if s.held]
        for slot in self._slots.values():
            slot.held = slot.leaving = False
            slot.inflight.clear()
        self._lost += len(lost)
        was = self._joined
        self._joined = False
        self._members, self._agreed = (), False
        self._update_role()
        if log and (lost or was):
            self._log.warning("group %s: member %s lost its session (%s); producing nothing "
                              "(%d producers dropped) until it rejoins", self.group,
                              self.name, reason, len(lost))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    # -- bookkeeping -----------------------------------------------------------------

    def lock_name(self, key: str | None) -> str:
        """What is hashed and locked for producer key ``key``: ``group/key`` (``None``:
        ``group``); the lock id is ``lock_id_for`` of it."""
        return self.group if key is None else f"{self.group}/{key}"

    def _slot(self, key: str | None) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            if key is not None:
                _validate.text("key", key)
            name = self.lock_name(key)
            slot = self._slots[key] = _Slot(key, name, lock_id_for(name))
            self._keys_version += 1
            self._keys_changed = self._now()
            self._kick()  # show the new set, and try its lock soon
        return slot

    def _forget(self, slot: _Slot) -> None:
        slot.gone = True
        if not slot.held:
            del self._slots[slot.key]
        self._keys_version += 1
        self._keys_changed = self._now()

    def _sweep(self) -> None:
        now = self._now()
        for slot in list(self._slots.values()):
            idle = now - slot.asked
            if slot.asked > -math.inf and idle >= max(self.release_after, 3 * slot.gap):
                self._forget(slot)

    def _settle_released(self) -> None:
        for slot in [s for s in self._slots.values() if s.gone and not s.held]:
            del self._slots[slot.key]
        done, self._released = self._released, []
        for future in done:
            if not future.done():
                future.set_result(None)

    def _update_role(self) -> None:
        if not self._joined:
            self._set_role(UNKNOWN)
        elif any(self._producing(s) for s in self._slots.values()):
            self._set_role(LEADER)
        else:
            self._set_role(STANDBY)

    def _set_role(self, role: str) -> None:
        if role != self._role:
            self._role = role
            self._since = datetime.now(UTC)

    def _snapshot(self) -> GroupStats:
        mine = self._current_assignment() if self._joined else {}
        owned = tuple(sorted(s.key if s.key is not None else "" for s in self._slots.values()
                             if self._joined and self._producing(s)))
        return GroupStats(
            group=self.group, name=self.name,
            members=tuple(sorted(self._member_names.get(m, m) for m in self._members)),
            owned=owned, assigned=sum(1 for m in mine.values() if m == self._me),
            producers=sum(1 for s in self._slots.values() if not s.gone),
            takeovers=self._takeovers, handovers=self._handovers, lost=self._lost,
            agreed=self._agreed, since=self._members_since)

    def _name_of(self, application_name: str | None, member_id: int) -> str:
        if application_name and application_name.startswith(_APP):
            return application_name[len(_APP):]
        return f"#{member_id}"


    async def _connect(self) -> Any:
        interval = max(1, round(self.keepalive / _PROBES))
        settings = {
            "application_name": f"{_APP}{self.name}"[:63],
            "tcp_keepalives_idle": str(math.ceil(self.keepalive)),
            "tcp_keepalives_interval": str(interval),
            "tcp_keepalives_count": str(_PROBES),
        }
        conn = await self._asyncpg.connect(
            None if self._dsn is None else encode_userinfo(self._dsn),
            timeout=self.connect_timeout, ssl=self._ssl, target_session_attrs="primary",
            server_settings={**settings, **self._server_settings})
        try:
            version = conn.get_server_version()
            if version >= (12, 0) and "tcp_user_timeout" not in self._server_settings:
                await conn.execute(f"SET tcp_user_timeout = {int(2 * self.keepalive * 1000)}",
                                   timeout=self.connect_timeout)
            if version >= (14, 0) and self.session_timeout > 0 and \
                    "idle_session_timeout" not in self._server_settings:
                await conn.execute(
                    f"SET idle_session_timeout = {int(self.session_timeout * 1000)}",
                    timeout=self.connect_timeout)
        except BaseException:
            conn.terminate()
            raise
        self._session += 1
        return conn

    def _describe(self, exc: BaseException) -> str:
        return scrub(f"{type(exc).__name__}: {exc}", self._secrets)
