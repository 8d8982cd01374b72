"""One lane's ledger: where each of its items is, and what happened to it.

Every item offered to a lane is in exactly one :class:`Place` at a time, and only
:meth:`Ledger.move` changes that, subtracting from one place what it adds to another. So
``offered == delivered + rejected + dropped + failed + queued + in_flight`` holds by
construction: ``offered`` is not a counter but the sum of the places. The other figures
(errors, retries, timeouts, ...) count events, not items.
"""

from __future__ import annotations

import enum
import threading
from array import array
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from .._stats import ConsumerStats

if TYPE_CHECKING:
    from .._clock import Clock

__all__ = ["Ledger", "Place"]


class Place(enum.IntEnum):
    """Where an item of a lane is."""

    QUEUED = 0
    IN_FLIGHT = 1
    DELIVERED = 2
    REJECTED = 3
    DROPPED = 4
    FAILED = 5


_PLACES = tuple(Place)
_IN_FLIGHT, _DELIVERED, _REJECTED = int(Place.IN_FLIGHT), int(Place.DELIVERED), int(Place.REJECTED)


class Live(Protocol):
    """What a ledger reads from its lane for a snapshot (from any thread)."""

    def busy_since(self) -> float | None:
        """clock.monotonic() start of the call running, if any."""
        ...

    def oldest_queued(self) -> float | None:
        """clock.monotonic() arrival of the oldest queued item, if any."""
        ...

    def spooled(self) -> int:
        """Items held in the lane's spool file."""
        ...


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


class Ledger:
    """The counts of one lane, written in the loop and read from any thread under ``lock``.

    ``clock`` is the conveyor's (for the times of errors and successes, and for how long a
    call or the oldest item has been waiting); :attr:`live` is the lane delivering now.

    There is one per consumer, so it holds references, not callables of its own: with
    10,000 consumers every object a lane keeps is 10,000 more for each full collection.
    """

    def __init__(self, name: str, lock: threading.Lock, *, clock: Clock) -> None:
        self.name = name
        self.lock = lock
        self._clock = clock
        # an array, not a list: ints in an array are no object the collector tracks
        self._places = array("q", bytes(8 * len(_PLACES)))
        self.state = "connecting"
        self.errors = 0
        self.retries = 0
        self.timeouts = 0
        self.restarts = 0
        self.abandoned = 0
        self.hook_errors = 0
        self.open_errors = 0
        self.spool_bad = 0
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.last_success_time: float | None = None
        self.failing_since: float | None = None  # wall time of the first failure since a success
        self.state_since: float = clock.time()
        self.live: Live | None = None  # set by the lane (a replacement takes it over)

    # -- items -----------------------------------------------------------------------

    def offer(self, n: int = 1, to: Place = Place.QUEUED) -> None:
        """``n`` new items arrive at ``to`` (queued, or straight to dropped or failed)."""
        with self.lock:
            self._places[to] += n

    def move(self, n: int, src: Place, dst: Place) -> None:
        """``n`` items go from ``src`` to ``dst``."""
        if n <= 0 or src is dst:
            return
        with self.lock:
            self._places[src] -= n
            self._places[dst] += n

    def settled(self, n: int, rejected: int = 0, src: int = _IN_FLIGHT) -> None:
        """A batch of ``n`` in-flight items was delivered, ``rejected`` of them refused:
        :meth:`move` and :meth:`outcome` in one go (once per item per consumer).

        ``src=Place.QUEUED``: the lane took the item and its call returned within one
        step of the loop (see ``Lane._deliver_now``), so it goes from queued to delivered
        in one section: no other code of the loop could have seen it in flight."""
        now = self._clock.time()
        with self.lock:
            p = self._places
            p[src] -= n
            p[_DELIVERED] += n - rejected
            if rejected:
                p[_REJECTED] += rejected
            if n > rejected:
                self.last_success_time = now
                if self.failing_since is not None:
                    self.failing_since = None
            elif self.failing_since is None:
                self.failing_since = now

    def count(self, place: Place) -> int:
        return self._places[place]

    @property
    def offered(self) -> int:
        return sum(self._places)

    # -- events ----------------------------------------------------------------------

    def set_state(self, state: str) -> None:
        with self.lock:
            if state != self.state:
                self.state = state
                self.state_since = self._clock.time()

    def error(self, text: str) -> None:
        """A call (or an ``open()``) failed with ``text``."""
        now = self._clock.time()
        with self.lock:
            self.errors += 1
            self.last_error = text
            self.last_error_time = now

    def outcome(self, success: bool) -> None:
        """A batch was settled: some of it arrived (``success``) or none of it did."""
        now = self._clock.time()
        with self.lock:
            if success:
                self.last_success_time = now
                self.failing_since = None
            elif self.failing_since is None:
                self.failing_since = now

    def bump(self, field: str, n: int = 1) -> None:
        """Count an event: ``retries``, ``timeouts``, ``restarts``, ``abandoned``, ..."""
        with self.lock:
            setattr(self, field, getattr(self, field) + n)

    # -- reading ---------------------------------------------------------------------

    def snapshot(self) -> ConsumerStats:
        """A snapshot (call with ``lock`` held)."""
        now = self._clock.monotonic()
        live = self.live
        busy = None if live is None else live.busy_since()
        oldest = None if live is None else live.oldest_queued()
        p = self._places
        return ConsumerStats(
            name=self.name,
            offered=sum(p),
            delivered=p[Place.DELIVERED],
            rejected=p[Place.REJECTED],
            dropped=p[Place.DROPPED],
            failed=p[Place.FAILED],
            queued=p[Place.QUEUED],
            in_flight=p[Place.IN_FLIGHT],
            errors=self.errors,
            retries=self.retries,
            timeouts=self.timeouts,
            restarts=self.restarts,
            abandoned=self.abandoned,
            hook_errors=self.hook_errors,
            busy_seconds=0.0 if busy is None else max(0.0, now - busy),
            oldest_queued_seconds=0.0 if oldest is None else max(0.0, now - oldest),
            last_error=self.last_error,
            last_error_time=_utc(self.last_error_time),
            last_success_time=_utc(self.last_success_time),
            state=self.state,
            state_since=_utc(self.state_since),
            open_errors=self.open_errors,
            failing_since=_utc(self.failing_since),
            spooled=0 if live is None else live.spooled(),
            spool_bad=self.spool_bad,
        )
