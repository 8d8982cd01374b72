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
from collections.abc import Callable
from datetime import UTC, datetime

from .._stats import ConsumerStats

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


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


class Ledger:
    """The counts of one lane, written in the loop and read from any thread under ``lock``.

    ``wall`` and ``mono`` read the conveyor's clock (for the times of errors and
    successes, and for how long a call or the oldest item has been waiting).
    """

    def __init__(self, name: str, lock: threading.Lock, *, wall: Callable[[], float],
                 mono: Callable[[], float]) -> None:
        self.name = name
        self.lock = lock
        self._wall = wall
        self._mono = mono
        self._places = [0] * len(_PLACES)
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
        self.state_since: float = wall()
        self.busy_since: Callable[[], float | None] = lambda: None  # monotonic
        self.oldest_queued: Callable[[], float | None] = lambda: None  # monotonic
        self.spooled: Callable[[], int] = lambda: 0

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
                self.state_since = self._wall()

    def error(self, text: str) -> None:
        """A call (or an ``open()``) failed with ``text``."""
        now = self._wall()
        with self.lock:
            self.errors += 1
            self.last_error = text
            self.last_error_time = now

    def outcome(self, success: bool) -> None:
        """A batch was settled: some of it arrived (``success``) or none of it did."""
        now = self._wall()
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
        now = self._mono()
        busy = self.busy_since()
        oldest = self.oldest_queued()
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
            spooled=self.spooled(),
            spool_bad=self.spool_bad,
        )
