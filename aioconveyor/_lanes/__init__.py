"""Per-consumer lanes, split by responsibility.

* :mod:`.ledger`: where every item of a lane is (queued, in flight, delivered, ...), so
  every count ``stats()`` shows is derived from one place;
* :mod:`.queue`: the bounded queue with its overflow policy and optional spool;
* :mod:`.delivery`: one call of the consumer (timeout, hung calls) classified as an
  :class:`~.delivery.Outcome`, and the retry policy;
* :mod:`.hooks`: ``on_delivered`` / ``on_error``, contained;
* :mod:`.copier`: deep copies, inline while cheap and on a thread once they are not;
* :mod:`.lane`: orchestration only: open (with retry), take, deliver, settle.
"""

from __future__ import annotations

from .copier import Copier
from .lane import Lane, LaneState
from .ledger import Ledger

__all__ = ["Copier", "Lane", "LaneState", "Ledger"]
