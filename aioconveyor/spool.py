"""A lane's queue kept on disk, so queued items survive a crash, ``kill -9`` or a reboot.

One SQLite file (stdlib ``sqlite3``, WAL journal) may hold the spools of several lanes,
told apart by lane name. An item is written when it is queued and deleted once it was
delivered or given up on; whatever is still in the file when a conveyor starts is put in
front of its queue again. Delivery is therefore at-least-once across crashes: make the
consumer idempotent (the built-in PostgreSQL consumer is) to get exactly-once.

Items are stored with :mod:`pickle`, so the spool file must be as private as your code.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
from collections.abc import Iterable
from dataclasses import astuple
from pathlib import Path
from typing import Any

from .tick import Tick

__all__ = ["Spool"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aioconveyor_spool (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    lane    TEXT NOT NULL,
    data    BLOB NOT NULL,
    tick    BLOB NOT NULL
)
"""


class Spool:
    """Durable FIFO of one lane's items in a SQLite file."""

    def __init__(self, path: str | os.PathLike[str], lane: str, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.lane = lane
        self.fsync = fsync
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, lane={self.lane!r})"

    def open(self) -> list[tuple[int, Any, Tick]]:
        """Open (creating) the file and return the items left from earlier runs, oldest first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
        db.execute(_SCHEMA)
        self._db = db
        rows = db.execute(
            "SELECT id, data, tick FROM aioconveyor_spool WHERE lane = ? ORDER BY id", (self.lane,)
        ).fetchall()
        return [(rowid, pickle.loads(data), Tick(*pickle.loads(tick)))
                for rowid, data, tick in rows]

    def add(self, data: Any, tick: Tick) -> int:
        """Store one item; returns its id. Raises if ``data`` cannot be pickled."""
        assert self._db is not None, "spool not open"
        blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        cur = self._db.execute(
            "INSERT INTO aioconveyor_spool (lane, data, tick) VALUES (?, ?, ?)",
            (self.lane, blob, pickle.dumps(astuple(tick))),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def remove(self, ids: Iterable[int]) -> None:
        """Forget delivered (or given-up) items."""
        assert self._db is not None, "spool not open"
        self._db.executemany("DELETE FROM aioconveyor_spool WHERE id = ?", [(i,) for i in ids])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
