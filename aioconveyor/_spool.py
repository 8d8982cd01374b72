"""A lane's queue kept on disk, so queued items survive a crash, ``kill -9`` or a reboot.

One SQLite file (stdlib ``sqlite3``, WAL journal) may hold the spools of several lanes,
told apart by lane name. An item is written when it is queued and deleted once it was
delivered or given up on; whatever is still in the file when a conveyor starts is put in
front of its queue again. Delivery is therefore at-least-once across crashes: make the
consumer idempotent (the built-in PostgreSQL consumer is) to get exactly-once.

Items are stored as JSON by default, with a small tagged codec that brings back exactly the
built-in types a poller produces: ``None``, ``bool``, ``int``, ``float`` (``nan`` and
``inf`` too), ``str``, ``bytes``, ``list``, ``tuple``, ``dict`` (any hashable keys of these
types), ``set``, ``frozenset``, ``datetime`` (naive, or with a fixed offset or a
``zoneinfo`` zone), ``date``, ``time``, ``timedelta``, ``Decimal`` and ``UUID``. Loading it
never runs code. Anything else (subclasses such as enums or named tuples included) is
refused by :meth:`Spool.add` with a ``TypeError``; ``format="pickle"`` stores any picklable
object instead, for a spool file as private as your code. The format is kept per row: a
JSON spool reads the rows a pickle one wrote as undecodable, it never unpickles them.

A row that cannot be decoded (a class renamed since it was pickled, a pickle row in a JSON
spool, a damaged row) does not stop the lane: :meth:`Spool.open` moves it to the table
``aioconveyor_spool_bad`` with the reason, counts it in :attr:`Spool.bad`, logs one warning
and returns the other rows, in order.

The file decides what the lane delivers, so only its user may change it: a new file and its
``-wal``/``-shm`` companions are created ``0600`` and new folders ``0700``, whatever the
umask. :meth:`Spool.open` raises ``PermissionError`` (naming the path, the mode or owner
found, and the fix) for a file or companion owned by another user or writable by group or
others, and for a folder owned by another user (root excepted) or writable by group or
others without the sticky bit; ``/tmp``-like sticky folders are fine. A file others can merely read
(older versions made them ``0644``) is tightened to ``0600`` and logged.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import pickle
import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterable
from dataclasses import astuple
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from ._spool_format import SpoolFormat
from ._tick import Tick

__all__ = ["Spool", "SpoolFormat"]

logger = logging.getLogger(__name__)

"""How :class:`Spool` stores new items: ``"json"`` (the default) or ``"pickle"``."""

_FORMATS = ("json", "pickle")

_TABLE = """
CREATE TABLE IF NOT EXISTS aioconveyor_spool (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    lane    TEXT NOT NULL,
    data    BLOB NOT NULL,
    tick    BLOB NOT NULL,
    format  TEXT NOT NULL DEFAULT 'pickle'
)
"""
# DEFAULT 'pickle': rows written by an older aioconveyor (which only knew pickle), even
# into a file this version created, are labelled for what they are.

_BAD_TABLE = """
CREATE TABLE IF NOT EXISTS aioconveyor_spool_bad (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    spool_id  INTEGER NOT NULL,
    lane      TEXT NOT NULL,
    data      BLOB,
    tick      BLOB,
    format    TEXT,
    error     TEXT NOT NULL,
    moved_at  TEXT NOT NULL
)
"""

_SHOWN_IDS = 5
"""How many ids of bad rows the warning of :meth:`Spool.open` names."""


class Spool:
    """Durable FIFO of one lane's items in a SQLite file.

    ``format`` is how new items are stored (``"json"`` or ``"pickle"``, see the module
    docstring); ``bad`` is how many undecodable rows the last :meth:`open` moved aside.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        lane: str,
        *,
        fsync: bool = False,
        format: SpoolFormat = "json",
    ) -> None:
        if format not in _FORMATS:
            raise ValueError(f"format must be 'json' or 'pickle', got {format!r}")
        self.path = Path(path)
        self.lane = lane
        self.fsync = fsync
        self.format: SpoolFormat = format
        self.bad = 0
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, lane={self.lane!r}, format={self.format!r})"

    def open(self) -> list[tuple[int, Any, Tick]]:
        """Open (creating) the file and return the items left from earlier runs, oldest first.

        Rows that cannot be decoded are moved to ``aioconveyor_spool_bad`` and counted in
        :attr:`bad` instead of being returned.
        """
        _prepare(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            _migrate(db)
            for companion in _companions(self.path):
                if _PRIVATE and companion.exists():  # SQLite made them like the file; be sure
                    os.chmod(companion, 0o600)
            rows = db.execute(
                "SELECT id, data, tick, format FROM aioconveyor_spool WHERE lane = ? ORDER BY id",
                (self.lane,),
            ).fetchall()
            good: list[tuple[int, Any, Tick]] = []
            bad: list[tuple[int, str]] = []
            for rowid, data, tick, fmt in rows:
                try:
                    item, when = self._decode(data, tick, fmt)
                except Exception as exc:
                    bad.append((rowid, _reason(fmt, exc)))
                else:
                    good.append((rowid, item, when))
            self.bad = len(bad)
            if bad:
                self._move_aside(db, bad)
        except BaseException:
            db.close()
            raise
        self._db = db
        return good

    def add(self, data: Any, tick: Tick) -> int:
        """Store one item; returns its id.

        Raises ``TypeError`` if ``data`` holds a type the JSON format cannot store (or, with
        ``format="pickle"``, if it cannot be pickled).
        """
        assert self._db is not None, "spool not open"
        if self.format == "json":
            blob: str | bytes = _dumps(data)
            when: str | bytes = _dumps(astuple(tick))
        else:
            blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
            when = pickle.dumps(astuple(tick))
        cur = self._db.execute(
            "INSERT INTO aioconveyor_spool (lane, data, tick, format) VALUES (?, ?, ?, ?)",
            (self.lane, blob, when, self.format),
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

    def _decode(self, data: Any, tick: Any, fmt: Any) -> tuple[Any, Tick]:
        if fmt == "json":
            return _loads(data), _tick(_loads(tick))
        if fmt == "pickle":
            if self.format != "pickle":
                raise _PickleRow()
            return pickle.loads(data), _tick(pickle.loads(tick))
        raise ValueError(f"unknown spool format {fmt!r}")

    def _move_aside(self, db: sqlite3.Connection, bad: list[tuple[int, str]]) -> None:
        moved_at = datetime.now(UTC).isoformat()
        db.execute("BEGIN IMMEDIATE")
        try:
            for rowid, error in bad:
                db.execute(
                    "INSERT INTO aioconveyor_spool_bad "
                    "(spool_id, lane, data, tick, format, error, moved_at) "
                    "SELECT id, lane, data, tick, format, ?, ? FROM aioconveyor_spool WHERE id = ?",
                    (error, moved_at, rowid),
                )
                db.execute("DELETE FROM aioconveyor_spool WHERE id = ?", (rowid,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        ids = ", ".join(str(rowid) for rowid, _ in bad[:_SHOWN_IDS])
        more = f" and {len(bad) - _SHOWN_IDS} more" if len(bad) > _SHOWN_IDS else ""
        logger.warning(
            "spool %s, lane %s: %d row(s) could not be decoded and were moved to table "
            "aioconveyor_spool_bad (ids %s%s); the first: %s",
            self.path, self.lane, len(bad), ids, more, bad[0][1],
        )


class _PickleRow(Exception):
    """A pickle row met by a JSON spool: never unpickled."""


def _reason(fmt: Any, exc: Exception) -> str:
    if isinstance(exc, _PickleRow):
        return ("row written with pickle; this spool uses format='json' and does not "
                "unpickle (open it with format='pickle' to load such rows)")
    return f"cannot decode this {fmt} row: {type(exc).__name__}: {exc}"


# --- permissions -------------------------------------------------------------------------
#
# The spool decides what a lane delivers (and, with pickle, what code runs), so only this
# user may change it: new files are 0600 and new folders 0700 whatever the umask; an
# existing file owned by someone else or writable by group or others is refused, so is a
# folder others can write to without the sticky bit (they could swap the file). A file
# others can only read (older versions made 0644 files) is tightened.

_PRIVATE = os.name == "posix"
"""Mode bits and owners mean something here (not on Windows)."""


def _companions(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _prepare(path: Path) -> None:
    """Create the folders and the file privately, or check those that exist."""
    if not _PRIVATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    folder = path.absolute().parent
    _make_folders(folder)
    _check_folder(folder)
    if not _create_file(path):
        _check_file(path, "spool file")
    for companion in _companions(path):
        if companion.exists():
            _check_file(companion, "spool journal")


def _make_folders(folder: Path) -> None:
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, 0o700)
        except FileExistsError:  # made meanwhile by someone else: checked like any other
            continue
        os.chmod(new, 0o700)  # mkdir's mode went through the umask
        logger.debug("created spool folder %s (mode 0700)", new)


def _check_folder(folder: Path) -> None:
    st = os.stat(folder)
    if st.st_uid not in (os.geteuid(), 0):
        raise PermissionError(
            f"spool folder {folder} is owned by uid {st.st_uid}, not by this process "
            f"(uid {os.geteuid()}) or root: its owner could replace the spool file. Put the "
            f"spool in a folder of your own (mkdir -m 700 ...)"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise PermissionError(
            f"spool folder {folder} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}) without the sticky bit: they could replace the "
            f"spool file. Fix it with: chmod go-w {folder}  (or chmod +t {folder})"
        )


def _create_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 (SQLite takes an empty file as a new database);
    false if it exists already."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)  # os.open's mode went through the umask
    finally:
        os.close(fd)
    logger.debug("created spool file %s (mode 0600)", path)
    return True


def _check_file(path: Path, what: str) -> None:
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise PermissionError(
            f"{what} {path} is owned by uid {st.st_uid}, not by this process (uid "
            f"{os.geteuid()}): its owner could feed this lane forged items. Use a file of "
            f"your own, or take this one over: chown {os.geteuid()} {path} && chmod 600 {path}"
        )
    if mode & 0o022:
        raise PermissionError(
            f"{what} {path} is writable by group or others (mode {mode:04o}): they could "
            f"feed this lane forged items. Fix it with: chmod 600 {path}"
        )
    if mode & 0o077:
        os.chmod(path, 0o600)
        logger.info("%s %s was readable by group or others (mode %04o); made it 0600",
                    what, path, mode)


def _migrate(db: sqlite3.Connection) -> None:
    """Create the tables, or add the ``format`` column to a file of an older version."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_TABLE)
        db.execute(_BAD_TABLE)
        columns = {row[1] for row in db.execute("PRAGMA table_info(aioconveyor_spool)")}
        if "format" not in columns:  # every row of the old schema is a pickle
            db.execute("ALTER TABLE aioconveyor_spool "
                       "ADD COLUMN format TEXT NOT NULL DEFAULT 'pickle'")
            logger.info("spool schema upgraded: existing rows marked as written with pickle")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _tick(fields: Any) -> Tick:
    """A :class:`Tick` from its stored fields, checked (a bad tick would fail far away)."""
    # 5 fields: written before ticks named their producer (read back with producer "")
    if not isinstance(fields, tuple | list) or len(fields) not in (5, 6):
        raise ValueError(f"not the 5 or 6 fields of a tick: {fields!r}")
    index, event_time, scheduled, started, missed, *rest = fields
    producer = rest[0] if rest else ""
    if not (type(index) is int and type(event_time) is datetime and type(missed) is int
            and isinstance(scheduled, int | float) and isinstance(started, int | float)
            and type(producer) is str):
        raise ValueError(f"not the fields of a tick: {fields!r}")
    return Tick(index, event_time, float(scheduled), float(started), missed, producer)


# --- the JSON codec ----------------------------------------------------------------------
#
# Plain JSON for None, bool, int, finite floats, str, list and dicts whose keys are str not
# starting with "$". Everything else is an object with exactly one key, the tag, e.g.
# {"$tuple": [1, 2]}; a dict that cannot be a plain object is {"$dict": [[key, value], ...]},
# so an object with a "$" key is always a tag. Decoding only builds the values listed here.

_SUPPORTED = ("None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset, "
              "datetime, date, time, timedelta, Decimal and uuid.UUID")


class _Unsupported(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value
        self.where: list[str] = []


def _dumps(value: Any) -> str:
    try:
        return json.dumps(_enc(value), allow_nan=False, separators=(",", ":"))
    except _Unsupported as exc:
        kind = type(exc.value)
        where = "".join(reversed(exc.where))
        raise TypeError(
            f"cannot spool a {kind.__module__}.{kind.__qualname__}"
            f"{f' (at data{where})' if where else ''}: the JSON spool format stores only "
            f"{_SUPPORTED} (exactly these types, not subclasses); for other objects set "
            f'spool_format="pickle", if the spool file is as private as your code'
        ) from None
    except RecursionError:
        raise ValueError("cannot spool a structure that contains itself "
                         "(or is nested too deeply)") from None


def _enc(v: Any) -> Any:
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return v
    if t is float:
        return v if math.isfinite(v) else {"$float": repr(v)}
    if t is list:
        return _enc_items(v, "[{}]")
    if t is dict:
        if all(type(k) is str and not k.startswith("$") for k in v):
            out = {}
            for k, x in v.items():
                try:
                    out[k] = _enc(x)
                except _Unsupported as exc:
                    exc.where.append(f"[{k!r}]")
                    raise
            return out
        pairs = []
        for k, x in v.items():
            try:
                pairs.append([_enc(k), _enc(x)])
            except _Unsupported as exc:
                exc.where.append(f"[{k!r}]")
                raise
        return {"$dict": pairs}
    if t is tuple:
        return {"$tuple": _enc_items(v, "[{}]")}
    if t is set or t is frozenset:
        return {f"${t.__name__}": _enc_items(v, " (an element)")}
    if t is bytes:
        return {"$bytes": base64.b64encode(v).decode("ascii")}
    if t is datetime:
        return {"$datetime": [v.replace(tzinfo=None).isoformat(), _enc_tz(v), v.fold]}
    if t is date:
        return {"$date": v.isoformat()}
    if t is time:
        return {"$time": [v.replace(tzinfo=None).isoformat(), _enc_tz(v), v.fold]}
    if t is timedelta:
        return {"$timedelta": [v.days, v.seconds, v.microseconds]}
    if t is Decimal:
        return {"$decimal": str(v)}
    if t is uuid.UUID:
        return {"$uuid": str(v)}
    raise _Unsupported(v)


def _enc_items(items: Iterable[Any], where: str) -> list[Any]:
    out = []
    for i, x in enumerate(items):
        try:
            out.append(_enc(x))
        except _Unsupported as exc:
            exc.where.append(where.format(i))
            raise
    return out


def _enc_tz(v: datetime | time) -> Any:
    """``None``, a zone key (``"Europe/Paris"``) or ``[offset µs]`` / ``[offset µs, name]``."""
    tz = v.tzinfo
    if tz is None:
        return None
    if type(tz) is timezone:
        offset, *name = tz.__getinitargs__()  # type: ignore[attr-defined]
        return [offset // timedelta(microseconds=1), *name]
    if type(tz) is ZoneInfo and tz.key is not None:
        return tz.key
    raise _Unsupported(tz)


def _dec_tz(spec: Any) -> tzinfo | None:
    if spec is None:
        return None
    if type(spec) is str:
        return ZoneInfo(spec)
    if type(spec) is list and 1 <= len(spec) <= 2 and type(spec[0]) is int:
        return timezone(timedelta(microseconds=spec[0]), *spec[1:])
    raise ValueError(f"not a time zone: {spec!r}")


def _dec_datetime(v: list[Any]) -> datetime:
    iso, tz, fold = v
    return datetime.fromisoformat(_str(iso)).replace(tzinfo=_dec_tz(tz), fold=fold)


def _dec_time(v: list[Any]) -> time:
    iso, tz, fold = v
    return time.fromisoformat(_str(iso)).replace(tzinfo=_dec_tz(tz), fold=fold)


def _dec_float(v: Any) -> float:
    if v not in ("nan", "inf", "-inf"):
        raise ValueError(f"not a special float: {v!r}")
    return float(v)


def _dec_timedelta(v: list[Any]) -> timedelta:
    days, seconds, microseconds = (_int(x) for x in v)
    return timedelta(days, seconds, microseconds)


def _str(v: Any) -> str:
    if type(v) is not str:
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _int(v: Any) -> int:
    if type(v) is not int:
        raise ValueError(f"expected an integer, got {v!r}")
    return v


def _list(v: Any) -> list[Any]:
    if type(v) is not list:
        raise ValueError(f"expected a list, got {v!r}")
    return v


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$float": _dec_float,
    "$tuple": lambda v: tuple(_list(v)),
    "$set": lambda v: set(_list(v)),
    "$frozenset": lambda v: frozenset(_list(v)),
    "$dict": lambda v: {k: x for k, x in _list(v)},
    "$bytes": lambda v: base64.b64decode(_str(v), validate=True),
    "$datetime": lambda v: _dec_datetime(_list(v)),
    "$date": lambda v: date.fromisoformat(_str(v)),
    "$time": lambda v: _dec_time(_list(v)),
    "$timedelta": lambda v: _dec_timedelta(_list(v)),
    "$decimal": lambda v: Decimal(_str(v)),
    "$uuid": lambda v: uuid.UUID(_str(v)),
}


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key.startswith("$"):
            decode = _DECODERS.get(key)
            if decode is None:
                raise ValueError(f"unknown tag {key!r}")
            return decode(value)
    elif any(key.startswith("$") for key in obj):
        raise ValueError(f"tag mixed with other keys: {sorted(obj)!r}")
    return obj


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: Any) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise ValueError(f"expected JSON text, got {type(text).__name__}")
    return json.loads(text, object_hook=_hook, parse_constant=_no_constant)
