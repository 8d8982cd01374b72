"""A group of instances that split their producers, coordinated by NATS JetStream.

The second implementation of the group protocol (the first: :mod:`._group_postgres`),
on a JetStream key-value bucket (``bucket``, created if missing, its entries living
``claim_ttl`` seconds):

* **Members** put ``<group>.m.<member>`` every ``check_interval`` (a heartbeat holding
  their name and the digest of their producer keys) and watch ``<group>.m.*``: a member is
  live while its last heartbeat is at most ``member_timeout`` old (on the watcher's own
  clock); one that leaves deletes its key, which the others see at once.
* **Claims.** Each tick is claimed with ``create("<group>.c.<producer>.<grid ms>")``,
  which JetStream refuses if the key exists: one claim per (producer, grid time), so no
  tick is produced twice. The assigned member (balanced rendezvous hashing over the live
  members, as in ``PostgresGroup``) claims at the grid time; the next ones in the key's
  rendezvous order (``tries`` in all) claim ``preference_delay`` seconds later each, so
  the preferred member wins while it is alive. The runner-up claims only while the ones
  before it are *suspect* (their heartbeat more than ``1.5 * check_interval`` old): a busy
  member that is merely late keeps its ticks (the work stays balanced), a dead one's are
  claimed from the first tick after its heartbeat is late.

nats-py is imported when the first :class:`NatsGroup` is created (extra ``nats``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import _rendezvous, _validate
from ._clock import Clock, ClockedBackend, timeout
from ._group import GroupStats, assignment
from ._leader_postgres import _default_name
from ._logs import LogLimiter
from ._secrets import mask_text, scrub, secrets_of

__all__ = ["NatsGroup", "NatsGroupMember"]

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_AGREE_CHECKS = 3


def _token(text: str) -> str:
    """``text`` as one KV key token: itself when it is plain, else ``h`` + a hash."""
    if _TOKEN.fullmatch(text):
        return text
    return "h" + hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def _digest(names: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(names)).encode("utf-8"),
                           digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class NatsGroupMember:
    """One live member as :meth:`NatsGroup.members_now` lists it."""

    name: str
    token: str
    """Its key token in the bucket (``<group>.m.<token>``): what the assignment hashes."""
    age: float
    """Seconds since its last heartbeat was written (server time, as the members use)."""
    digest: str
    """The digest of its producer keys ("" while they settle)."""


def _import_nats() -> Any:
    try:
        import nats
        import nats.js.errors
    except ImportError as exc:
        raise ImportError("aioconveyor.NatsGroup needs nats-py, which is not installed: "
                          'pip install "aioconveyor[nats]"') from exc
    return nats


class NatsGroup(ClockedBackend):
    """Members of one group split its producers; each tick claimed once in JetStream.

    * ``servers``: the NATS URL(s) (``nats://user:password@host:4222``, or a list).
    * ``group``: what the members agree on; ``name``: this member (default ``host:pid``).
    * ``bucket``: the key-value bucket (created with ``history=1`` and ``ttl=claim_ttl``
      if missing; default ``aioconveyor_groups``, shared by groups).
    * ``check_interval``: seconds between heartbeats; ``member_timeout``: a member whose
      heartbeat is older is gone (default ``3 * check_interval``).
    * ``preference_delay``: seconds each member after the preferred one waits past the
      grid time before it claims, when the ones before it are suspect; ``tries``: how many
      members (in the key's order) may claim a tick (the others never do).
    * ``balance``: as for ``PostgresGroup``.
    * ``claim_ttl``: seconds a claim is kept; longer than the producers' misfire grace.
    * ``connect_timeout``: seconds to connect; each claim gets the same bound.
    * ``options``: more ``nats.connect`` keywords (``tls``, ``user_credentials``...).
    * ``logger``, ``clock``: as for ``PostgresGroup``.
    """

    def __init__(
        self,
        servers: str | list[str],
        group: str,
        *,
        name: str | None = None,
        bucket: str = "aioconveyor_groups",
        check_interval: float = 1.0,
        member_timeout: float | None = None,
        preference_delay: float = 0.2,
        tries: int = 2,
        balance: float = 1.05,
        claim_ttl: float = 120.0,
        connect_timeout: float = 5.0,
        options: Mapping[str, Any] | None = None,
        logger: logging.Logger | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(servers, str):
            _validate.secret_text("servers", servers)
            server_list = [servers]
        elif isinstance(servers, list) and servers and all(isinstance(s, str) and s
                                                            for s in servers):
            server_list = list(servers)
        else:
            _validate.fail("servers", type(servers).__name__,
                           "must be a NATS URL or a non-empty list of them")
        self.group = _validate.text("group", group)
        if name is not None:
            _validate.text("name", name)
        self.name = name or _default_name()
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", bucket):
            _validate.fail("bucket", bucket,
                           f"must be 1-64 letters, digits, '_' or '-', got {bucket!r}")
        self.bucket = bucket
        self.check_interval = _validate.positive("check_interval", check_interval)
        if member_timeout is None:
            member_timeout = 3 * self.check_interval
        self.member_timeout = _validate.positive("member_timeout", member_timeout)
        if self.member_timeout < 2 * self.check_interval:
            _validate.fail("member_timeout", member_timeout,
                           f"must be at least 2 * check_interval "
                           f"({2 * self.check_interval:g}), got {member_timeout!r}")
        self.preference_delay = _validate.positive("preference_delay", preference_delay)
        self.tries = _validate.integer("tries", tries, minimum=1)
        self.balance = _validate.positive("balance", balance)
        if not 1.0 <= balance <= 2.0:
            _validate.fail("balance", balance, f"must be between 1.0 and 2.0, got {balance!r}")
        self.claim_ttl = _validate.positive("claim_ttl", claim_ttl)
        self.connect_timeout = _validate.positive("connect_timeout", connect_timeout)
        if options is not None and not isinstance(options, Mapping):
            _validate.fail("options", type(options).__name__, "must be a mapping or None")
        if clock is not None and not isinstance(clock, Clock):
            _validate.fail("clock", clock, f"must be a Clock or None, got {clock!r}")
        self._nats = _import_nats()
        self._servers = server_list
        self._secrets: frozenset[str] = frozenset(
            secret for s in server_list for secret in secrets_of(s))
        self._options = dict(options or {})
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._limiter = LogLimiter()
        self._clock = clock
        self._g = _token(group)
        self._me = _token(self.name)
        self._nc: Any = None
        self._kv: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._seen: dict[str, tuple[float, str, str]] = {}  # token -> (when, name, digest)
        self._members: tuple[str, ...] = ()
        self._keys: dict[str | None, str] = {}  # producer key -> its name (hashed, shown)
        self._keys_changed = -math.inf
        self._keys_version = 0
        self._disagree_since: float | None = None
        self._agreed = True
        self._assigned: dict[str, str] = {}
        self._assigned_for: tuple[Any, ...] = ()
        self._owned: set[str | None] = set()
        self._takeovers = 0
        self._handovers = 0
        self._lost = 0
        self._role = "unknown"
        self._since: datetime | None = None
        self._members_since: datetime | None = None
        self._stats = self._snapshot()

    def __repr__(self) -> str:
        servers = ",".join(mask_text(s, self._secrets) for s in self._servers)
        return f"<NatsGroup {self.group!r} member={self.name!r} role={self._role} {servers}>"

    # -- the Leader protocol ---------------------------------------------------------

    @property
    def role(self) -> str:
        """``"leader"`` while it produces a producer, ``"standby"`` while connected and
        producing none, ``"unknown"`` while not connected."""
        return self._role

    @property
    def since(self) -> datetime | None:
        """When the current role began (UTC)."""
        return self._since

    @property
    def takeovers(self) -> int:
        """Ticks this member claimed for a producer assigned to another member."""
        return self._takeovers

    async def open(self) -> None:
        """Connect, make sure the bucket exists, start the heartbeat and the watcher.

        A server that cannot be reached yet does not fail the start: the member claims
        nothing and tries again every ``check_interval`` (logged)."""
        try:
            await self._connect()
        except Exception as exc:
            self._log.warning("group %s: member %s: NATS not reachable yet, retrying every "
                              "%g s: %s", self.group, self.name, self.check_interval,
                              self._describe(exc))
            self._tasks = [asyncio.get_running_loop().create_task(
                self._connect_later(), name=f"aioconveyor[{self.name}].group.connect")]

    async def _connect_later(self) -> None:
        clock = self._time()
        while not self._closed:
            await clock.sleep(self.check_interval)
            try:
                await self._connect()
                return
            except Exception as exc:
                self._limiter.log(self._log, logging.WARNING, "connect",
                                  "group %s: member %s: NATS still not reachable: %s",
                                  self.group, self.name, self._describe(exc))

    async def _connect(self) -> None:
        nats = self._nats
        nc = await nats.connect(
            servers=self._servers, connect_timeout=self.connect_timeout,
            name=f"aioconveyor group {self.name}", allow_reconnect=True,
            max_reconnect_attempts=1,  # the first connect: fail, and retry at our pace
            reconnect_time_wait=min(1.0, self.check_interval),
            error_cb=self._nats_error, **self._options)
        nc.options["max_reconnect_attempts"] = -1  # once connected: reconnect for ever
        if self._closed:
            await nc.close()
            return
        js = nc.jetstream(timeout=self.connect_timeout)
        try:
            try:
                kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                kv = await js.create_key_value(bucket=self.bucket, history=1,
                                               ttl=self.claim_ttl)
        except BaseException:  # no JetStream, no rights...: not half connected
            await nc.close()
            raise
        self._nc, self._kv = nc, kv
        loop = asyncio.get_running_loop()
        self._tasks += [
            loop.create_task(self._heartbeats(), name=f"aioconveyor[{self.name}].group.beat"),
            loop.create_task(self._watch(), name=f"aioconveyor[{self.name}].group.watch"),
        ]
        self._seen[self._me] = (self._now(), self.name, "")
        self._refresh()

    async def _nats_error(self, exc: Exception) -> None:
        """nats-py's error callback: one rate-limited line instead of its tracebacks."""
        self._limiter.log(self._log, logging.WARNING, ("nats", type(exc).__qualname__),
                          "group %s: member %s: NATS: %s", self.group, self.name,
                          self._describe(exc))

    async def close(self) -> None:
        """Leave the group (delete the heartbeat, so the others see it at once) and
        disconnect."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        nc, self._nc = self._nc, None
        if nc is None:
            return
        try:
            if self._kv is not None:
                await asyncio.wait_for(self._kv.delete(f"{self._g}.m.{self._me}"),
                                       self.connect_timeout)
        except Exception as exc:
            self._log.warning("group %s: member %s: no clean goodbye: %s", self.group,
                              self.name, self._describe(exc))
        finally:
            try:
                await asyncio.wait_for(nc.close(), self.connect_timeout)
            except Exception:
                pass
        self._owned.clear()
        self._set_role("unknown")
        self._stats = self._snapshot()

    async def lead(self, event_time: datetime, key: str | None = None) -> bool:
        """Claim ``key``'s tick at ``event_time`` if this member is among the first
        ``tries`` for it; True if the claim is ours."""
        if self._closed or self._kv is None or not self._nc.is_connected:
            return False
        name = self._name_of(key)
        order = self._order(name)
        rank = order.index(self._me) if self._me in order else len(order)
        if rank >= self.tries or not all(self._suspect(m) for m in order[:rank]):
            self._owned.discard(key)  # not among the first, or the ones before are alive
            self._update_role()
            return False
        if rank:
            await self._time().sleep_until(event_time.timestamp()
                                           + rank * self.preference_delay)
        claim = f"{self._g}.c.{_token(name)}.{round(event_time.timestamp() * 1000)}"
        try:
            async with timeout(self._time(), self.connect_timeout):
                await self._kv.create(claim, self._me.encode())
        except self._nats.js.errors.KeyWrongLastSequenceError:
            self._owned.discard(key)
            self._update_role()
            return False
        except Exception as exc:
            self._lost += 1
            self._owned.discard(key)
            self._limiter.log(self._log, logging.WARNING, type(exc).__qualname__,
                              "group %s: member %s cannot claim ticks: %s", self.group,
                              self.name, self._describe(exc))
            self._update_role()
            return False
        if rank:
            self._takeovers += 1
        self._owned.add(key)
        self._update_role()
        return True

    def role_of(self, key: str | None = None) -> str:
        """``"leader"`` if this member claimed ``key``'s last tick, else ``"standby"``."""
        return "leader" if key in self._owned else "standby"

    async def release(self, key: str) -> None:
        """Forget producer key ``key`` (its producer was removed)."""
        _validate.text("key", key)
        if self._keys.pop(key, None) is not None:
            self._keys_changed = self._now()
            self._keys_version += 1
        self._owned.discard(key)

    # -- what it shows ---------------------------------------------------------------

    def lock_name(self, key: str | None) -> str:
        """What is hashed and claimed for producer key ``key``: ``group/key`` (``None``:
        ``group``), as in ``PostgresGroup``."""
        return self.group if key is None else f"{self.group}/{key}"

    async def members_now(self) -> list[NatsGroupMember]:
        """The live members of the group (a heartbeat at most ``member_timeout`` old), read
        from the bucket over a connection of its own; joins nothing (the ``aioconveyor
        group`` command uses it)."""
        nats = self._nats
        nc = await nats.connect(servers=self._servers, connect_timeout=self.connect_timeout,
                                name="aioconveyor group (inspect)", allow_reconnect=False,
                                max_reconnect_attempts=0, **self._options)
        found: list[NatsGroupMember] = []
        try:
            js = nc.jetstream(timeout=self.connect_timeout)
            try:
                kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                return []
            watcher = await kv.watch(f"{self._g}.m.*")
            try:
                async with timeout(self._time(), self.connect_timeout):
                    async for entry in watcher:
                        if entry is None:  # the current values are all in
                            break
                        member = self._member_of(entry)
                        if member is not None and member.age <= self.member_timeout:
                            found.append(member)
            finally:
                await watcher.stop()
        finally:
            await nc.close()
        return sorted(found, key=lambda m: m.name)

    def assignment_of(self, keys: Iterable[str | None],
                      members: Iterable[NatsGroupMember]) -> dict[str, str]:
        """Each of ``keys``' names (``lock_name``) and the name of the member it is
        assigned to among ``members`` (balanced when their digests agree)."""
        listed = list(members)
        names = {self.lock_name(k) for k in keys}
        digests = {m.digest for m in listed if m.digest}
        by_token = {m.token: m.name for m in listed}
        planned = assignment(names, by_token, balanced=len(digests) <= 1,
                             balance=self.balance)
        return {n: by_token[t] for n, t in planned.items()}

    def _member_of(self, entry: Any) -> NatsGroupMember | None:
        if entry.operation in ("DEL", "PURGE") or entry.value is None:
            return None
        try:
            body = json.loads(entry.value)
        except ValueError:
            return None
        token = entry.key.rsplit(".", 1)[-1]
        age = 0.0
        if entry.created is not None:
            age = max(0.0, self._time().time() - entry.created.timestamp())
        return NatsGroupMember(str(body.get("name", token)), token, age,
                               str(body.get("digest", "")))

    def group_stats(self) -> GroupStats:
        """This member's view of the group (safe from any thread: a snapshot replaced at
        every heartbeat and membership change)."""
        return self._stats

    def _snapshot(self) -> GroupStats:
        mine = self._current_assignment()
        return GroupStats(
            group=self.group, name=self.name,
            members=tuple(sorted(self._seen[m][1] for m in self._members if m in self._seen)),
            owned=tuple(sorted(k if k is not None else "" for k in self._owned)),
            assigned=sum(1 for m in mine.values() if m == self._me),
            producers=len(self._keys), takeovers=self._takeovers,
            handovers=self._handovers, lost=self._lost, agreed=self._agreed,
            since=self._members_since)

    @property
    def members(self) -> tuple[str, ...]:
        """The names of the live members (in the conveyor's loop)."""
        return self._snapshot().members

    @property
    def owned(self) -> tuple[str, ...]:
        """The producer keys whose last tick this member claimed (in the conveyor's loop)."""
        return self._snapshot().owned

    # -- inside ----------------------------------------------------------------------

    def _name_of(self, key: str | None) -> str:
        name = self._keys.get(key)
        if name is None:
            name = self._keys[key] = self.group if key is None else f"{self.group}/{key}"
            self._keys_changed = self._now()
            self._keys_version += 1
        return name

    def _suspect(self, member: str) -> bool:
        """Whether ``member``'s heartbeat is late: older than ``1.5 * check_interval``."""
        seen = self._seen.get(member)
        return seen is None or self._now() - seen[0] > 1.5 * self.check_interval

    def _order(self, name: str) -> list[str]:
        """The members in the order they claim ``name``'s ticks: its assigned member,
        then the rest by rendezvous weight."""
        owner = self._current_assignment().get(name)
        ranked = _rendezvous.ranking(name, self._members)
        if owner is not None:
            ranked.remove(owner)
            ranked.insert(0, owner)
        return ranked

    def _current_assignment(self, refresh: bool = False) -> dict[str, str]:
        """As in ``PostgresGroup``: new producer keys are taken in at the next refresh."""
        inputs = (self._members, self._keys_version, self._agreed)
        if inputs != self._assigned_for and (refresh or inputs[0::2] != self._assigned_for[0::2]):
            before = self._assigned
            self._assigned = assignment(list(self._keys.values()), self._members,
                                        balanced=self._agreed, balance=self.balance)
            self._assigned_for = inputs
            self._handovers += sum(1 for k, m in before.items()
                                   if m == self._me and self._assigned.get(k, m) != m)
        return self._assigned

    async def _heartbeats(self) -> None:
        clock = self._time()
        while not self._closed:
            try:
                digest = ""
                if self._keys and clock.monotonic() - self._keys_changed >= \
                        _AGREE_CHECKS * self.check_interval:
                    digest = _digest(list(self._keys.values()))
                body = json.dumps({"name": self.name, "digest": digest}).encode()
                async with timeout(clock, self.connect_timeout):
                    await self._kv.put(f"{self._g}.m.{self._me}", body)
                self._seen[self._me] = (clock.monotonic(), self.name, digest)
            except Exception as exc:
                self._limiter.log(self._log, logging.WARNING, "beat",
                                  "group %s: member %s: heartbeat failed: %s", self.group,
                                  self.name, self._describe(exc))
            self._refresh()
            await clock.sleep(self.check_interval)

    async def _watch(self) -> None:
        while not self._closed:
            try:
                watcher = await self._kv.watch(f"{self._g}.m.*")
                async for entry in watcher:
                    if entry is None:
                        continue
                    member = entry.key.rsplit(".", 1)[-1]
                    if entry.operation in ("DEL", "PURGE") or entry.value is None:
                        if member != self._me:
                            self._seen.pop(member, None)
                    else:
                        try:
                            body = json.loads(entry.value)
                        except ValueError:
                            continue
                        age = 0.0  # an old heartbeat (a member gone before we started)
                        if entry.created is not None:  # counts from when it was written
                            age = max(0.0, self._time().time() - entry.created.timestamp())
                        seen = (self._now() - age, str(body.get("name", member)),
                                str(body.get("digest", "")))
                        self._seen[member] = seen
                    self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._limiter.log(self._log, logging.WARNING, "watch",
                                  "group %s: member %s: watching the members failed: %s",
                                  self.group, self.name, self._describe(exc))
                await self._time().sleep(self.check_interval)

    def _refresh(self) -> None:
        """The live members from the heartbeats seen, and whether they agree."""
        now = self._now()
        live = {m: v for m, v in self._seen.items()
                if m == self._me or now - v[0] <= self.member_timeout}
        view = tuple(sorted(live))
        if view != self._members:
            names = sorted(v[1] for v in live.values())
            self._log.info("group %s: member %s sees %d members: %s", self.group, self.name,
                           len(view), ", ".join(names))
            self._members_since = datetime.now(UTC)
            self._members = view
        own = _digest(list(self._keys.values()))
        differ = any(v[2] and v[2] != own for v in live.values())
        if not differ:
            self._disagree_since = None
        elif self._disagree_since is None:
            self._disagree_since = now
        self._agreed = self._disagree_since is None or \
            now - self._disagree_since < _AGREE_CHECKS * self.check_interval
        self._current_assignment(refresh=True)
        self._update_role()
        self._stats = self._snapshot()

    def _update_role(self) -> None:
        if self._nc is None or not self._nc.is_connected:
            self._set_role("unknown")
        else:
            self._set_role("leader" if self._owned else "standby")

    def _set_role(self, role: str) -> None:
        if role != self._role:
            self._role = role
            self._since = datetime.now(UTC)


    def _describe(self, exc: BaseException) -> str:
        return scrub(f"{type(exc).__name__}: {exc}", self._secrets)
