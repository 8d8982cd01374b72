"""A lane's bounded queue: its overflow policy and optional spool, and nothing of delivery.

Items are queued as the producer returned them (one object shared by every lane); the
lane makes its own copy when it takes them (see :mod:`.copier`), so the fan-out of a tick
stays O(consumers) cheap appends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .._clock import Clock
from .._consumer import Overflow
from .._logs import LogLimiter
from .._tick import Tick
from .ledger import Ledger, Place

if TYPE_CHECKING:
    from .._spool import Spool

__all__ = ["Entry", "LaneQueue"]

logger = logging.getLogger("aioconveyor._lanes")

#: ``tuple.__new__``: makes an :class:`Entry` from its four fields in one C call.
_new_entry = tuple.__new__


class Entry(NamedTuple):
    """One queued item."""

    data: Any
    tick: Tick
    enqueued: float  # clock.monotonic() when it arrived
    spool_id: int | None = None


class LaneQueue:
    """FIFO of at most ``size`` entries; what does not fit is handled per ``overflow``.

    Every arrival and departure is written to the lane's :class:`Ledger`. With a
    :class:`~aioconveyor._spool.Spool`, each entry is also written to disk when it arrives
    and forgotten there once the lane settles it (:meth:`forget`).
    """

    def __init__(self, name: str, size: int, overflow: Overflow, ledger: Ledger,
                 clock: Clock, limiter: LogLimiter, spool: Spool | None = None) -> None:
        self.name = name
        self.size = size
        self.overflow = overflow
        self.ledger = ledger
        self.spool = spool
        self._clock = clock
        self._limiter = limiter
        self._items: deque[Entry] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # set while there is room; made by the first put that must wait for room (only
        # overflow="block" ever waits): one object less per lane for the others
        self._has_room: asyncio.Event | None = None
        self._spooled = 0
        self.refusing: str | None = None  # why every new item fails (a quarantined lane)
        self._plain = spool is None  # put() takes its quick way (no spool, not refusing)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def entries(self) -> deque[Entry]:
        """The queued entries themselves, for the lane's loop to test cheaply (read-only
        by convention: only this queue changes them)."""
        return self._items

    @property
    def spooled(self) -> int:
        """Entries held in the spool file."""
        return self._spooled

    def oldest(self) -> float | None:
        """Arrival time of the oldest entry (read from any thread)."""
        try:
            return self._items[0].enqueued
        except IndexError:
            return None

    # -- arriving --------------------------------------------------------------------

    def put(self, data: Any, tick: Tick, wake: bool = True) -> asyncio.Future[None] | None:
        """Queue ``data``; returns a future to await only if the policy is ``block`` and
        the queue is full (the item is queued when it resolves). ``wake=False`` leaves
        waking the lane to the caller (:meth:`wake`)."""
        items = self._items
        if self._plain and len(items) < self.size:
            # the usual case, once per item per lane: _append() written out, and the
            # entry made without the named tuple's Python-level __new__
            items.append(_new_entry(Entry, (data, tick, self._clock.monotonic(), None)))
            self.ledger.offer(1)
            if wake:
                waiter = self._waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            if self._has_room is not None and len(items) >= self.size:
                self._has_room.clear()
            return None
        if self.refusing is not None:
            self.ledger.offer(1, Place.FAILED)
            self._limiter.log(logger, logging.ERROR, "quarantined",
                              "consumer %s is %s; the item of tick %s counts as failed",
                              self.name, self.refusing, tick.event_time.isoformat())
            return None
        full = len(items) >= self.size
        if full and self.overflow is Overflow.DROP_NEWEST:
            self.ledger.offer(1, Place.DROPPED)
            self._dropped(tick, "queue full")
            return None
        entry = Entry(data, tick, self._clock.monotonic())
        if self.spool is not None:
            try:
                entry = entry._replace(spool_id=self.spool.add(data, tick))
                self._spooled += 1
            except Exception as exc:  # data the format cannot store, disk full: counted
                self.ledger.offer(1, Place.DROPPED)
                self._limiter.log(
                    logger, logging.ERROR, "spool",
                    "consumer %s: cannot spool the item of tick %s to %s: %s: %s",
                    self.name, tick.event_time.isoformat(), self.spool.path,
                    type(exc).__name__, exc, exc=exc,
                )
                return None
        if not full:
            self._append(entry, wake)
            return None
        if self.overflow is Overflow.DROP_OLDEST:
            old = self._items.popleft()
            self.forget([old])
            self.ledger.move(1, Place.QUEUED, Place.DROPPED)
            self._dropped(old.tick, "queue full")
            self._append(entry, wake)
            return None
        return asyncio.ensure_future(self._put_when_room(entry))

    def refuse(self, why: str) -> None:
        """From now on every item put counts as failed at once (``why``: the lane's
        state, for the log)."""
        self.refusing = why
        self._plain = False

    async def _put_when_room(self, entry: Entry) -> None:
        try:
            while len(self._items) >= self.size:
                if self._has_room is None:
                    self._has_room = asyncio.Event()
                self._has_room.clear()
                await self._has_room.wait()
        except asyncio.CancelledError:
            self.forget([entry])
            self.ledger.offer(1, Place.DROPPED)
            self._dropped(entry.tick, "stopped while waiting for room")
            raise
        self._append(entry)

    def _append(self, entry: Entry, wake: bool = True) -> None:
        self._items.append(entry)
        self.ledger.offer(1)
        if wake:
            self.wake()
        if len(self._items) >= self.size and self._has_room is not None:
            self._has_room.clear()

    def _dropped(self, tick: Tick, why: str) -> None:
        self._limiter.log(
            logger, logging.WARNING, ("drop", why),
            "consumer %s: %s; dropped the item of tick %s (%d dropped so far)",
            self.name, why, tick.event_time.isoformat(), self.ledger.count(Place.DROPPED),
        )

    def recover(self) -> int:
        """Queue what an earlier run left in the spool, ahead of anything new."""
        if self.spool is None:
            return 0
        left = self.spool.open()
        if self.spool.bad:
            self.ledger.bump("spool_bad", self.spool.bad)
        for spool_id, data, tick in reversed(left):
            self._items.appendleft(Entry(data, tick, self._clock.monotonic(), spool_id))
        self._spooled += len(left)
        self.ledger.offer(len(left))
        if left:
            self.wake()
            logger.info("consumer %s: %d item(s) recovered from spool %s",
                        self.name, len(left), self.spool.path)
        return len(left)

    def _room(self) -> None:
        if self._has_room is not None:
            self._has_room.set()

    # -- leaving ---------------------------------------------------------------------

    def arrival(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[None]:
        """A future that :meth:`wake` resolves (an entry arrived, or the lane is closing).

        The lane awaits it directly while idle: no coroutine and no timer around it, as an
        idle lane waits the whole interval and anything it keeps meanwhile ages into the
        collector's oldest generation, 10,000 times over with 10,000 consumers. ``loop``:
        the running loop, if the caller knows it (a look-up is a system call)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = (loop or asyncio.get_running_loop()).create_future()
        return waiter

    async def wait(self, seconds: float = math.inf) -> None:
        """Return once an entry arrives, :meth:`wake` is called or ``seconds`` passed."""
        # awaited directly, not through wait_done(): this runs once per lane per tick, and
        # the extra future and done-callback of wait_done() add up over 10,000 lanes. Only
        # wake() and the timer resolve it; a cancellation of the lane cancels it, harmlessly
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        timer = (None if seconds == math.inf
                 else self._clock.call_later(seconds, lambda: _resolve(waiter)))
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def wake(self) -> None:
        """Make :meth:`wait` return (an entry arrived, or the lane is closing)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, n: int) -> list[Entry]:
        """Take up to ``n`` entries, oldest first: they are now in flight."""
        items = self._items
        if n == 1 and items:
            entries = [items.popleft()]
        else:
            n = min(n, len(items))
            entries = [items.popleft() for _ in range(n)]
        self.ledger.move(n, Place.QUEUED, Place.IN_FLIGHT)
        if self._has_room is not None and len(items) < self.size:
            self._has_room.set()
        return entries

    def take_now(self) -> Entry:
        """Take the oldest entry (there is one) without moving it in the ledger: the
        caller settles it (from queued) or moves it to in flight before anything else of
        the loop runs (``Lane._deliver_now``)."""
        items = self._items
        entry = items.popleft()
        if self._has_room is not None and len(items) < self.size:
            self._has_room.set()
        return entry

    def push_front(self, entries: list[Entry], src: Place = Place.IN_FLIGHT) -> None:
        """Put ``entries`` (oldest first) back at the front, e.g. a batch whose delivery
        was interrupted."""
        self._items.extendleft(reversed(entries))
        self.ledger.move(len(entries), src, Place.QUEUED)
        if entries:
            self.wake()

    def adopt(self, entries: list[Entry], src: Place, old: LaneQueue) -> None:
        """Put ``entries`` from ``old`` (the queue of the lane this one replaces) at the
        front, moving them to this queue's spool if it is another file."""
        same_spool = (old.spool is not None and self.spool is not None
                      and os.fspath(old.spool.path) == os.fspath(self.spool.path)
                      and old.spool.format == self.spool.format)
        if same_spool:
            spooled = sum(e.spool_id is not None for e in entries)
            old._spooled -= spooled
            self._spooled += spooled
        else:
            old.forget(entries)
            if self.spool is not None:
                entries = [e._replace(spool_id=self.spool.add(e.data, e.tick)) for e in entries]
                self._spooled += len(entries)
            else:
                entries = [e._replace(spool_id=None) for e in entries]
        self.push_front(entries, src)

    def take_all(self) -> list[Entry]:
        """Remove every queued entry (for a hand-over); they stay counted as queued."""
        entries = list(self._items)
        self._items.clear()
        self._room()
        return entries

    def forget(self, entries: Iterable[Entry]) -> None:
        """Delete settled entries from the spool."""
        if self.spool is None:
            return
        ids = [e.spool_id for e in entries if e.spool_id is not None]
        if ids:
            self.spool.remove(ids)
            self._spooled -= len(ids)

    def clear(self, dst: Place, why: str) -> int:
        """Give up on everything queued (to ``dst``: dropped or failed); returns how many.

        With a spool the entries stay on disk for the next run; dropped ones (at a stop)
        then stay counted as queued.
        """
        n = len(self._items)
        self._items.clear()
        self._room()
        if n and self.spool is not None and dst is Place.DROPPED:
            logger.warning("consumer %s: %d queued item(s) not delivered (%s); kept in spool %s "
                           "for the next run", self.name, n, why, self.spool.path)
        elif n:
            self.ledger.move(n, Place.QUEUED, dst)
            logger.warning("consumer %s: %d queued item(s) not delivered (%s); counted as %s",
                           self.name, n, why, "dropped" if dst is Place.DROPPED else "failed")
        return n


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
