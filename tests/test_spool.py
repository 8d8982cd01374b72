"""The spool file itself: the JSON codec, the pickle opt-in, bad rows moved aside, the
migration of files of older versions, and the permission rules."""

from __future__ import annotations

import enum
import importlib.resources
import io
import logging
import math
import os
import pickle
import sqlite3
import stat
import sys
import types
import uuid
import zoneinfo
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aioconveyor._spool import Spool
from aioconveyor._tick import Tick

TICK = Tick.make(7, 1_700_000_000.0, 1234.5, 1234.75, 2)


@dataclass
class Reading:
    """A custom class: only the pickle format stores it."""

    sensor: str
    value: float


executed: list[str] = []


def _record_execution() -> str:
    executed.append("unpickled")
    return "unpickled"


class Booby:
    """Unpickling it calls a function: a JSON spool must never do that."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_record_execution, ())


class Colour(enum.IntEnum):
    RED = 1


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    executed.clear()
    yield


def reopen(path: Path, lane: str = "lane", **kwargs: Any) -> tuple[Spool, list[tuple[int, Any, Tick]]]:
    spool = Spool(path, lane, **kwargs)
    return spool, spool.open()


def round_trip(path: Path, value: Any, **kwargs: Any) -> tuple[Any, Tick]:
    spool, _ = reopen(path, **kwargs)
    spool.add(value, TICK)
    spool.close()
    again, rows = reopen(path, **kwargs)
    again.close()
    ((_, data, tick),) = rows
    return data, tick


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (1 is not 1.0 is not True, a tuple is
    not a list, nan is nan, a datetime keeps its tzinfo and fold)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(same(k, k2) and same(v, v2) for k2, v2 in b.items()) for k, v in a.items())
    if isinstance(a, set | frozenset):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, datetime | time):
        return (a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.tzinfo == b.tzinfo
                and a.fold == b.fold and (a.tzinfo is None or a.tzname() == b.tzname()))
    return bool(a == b)


EVERY_TYPE: list[Any] = [
    None, True, False, 0, -1, 2**80, 1.5, -0.0, math.inf, -math.inf, "", "h\u00e9llo \U0001f600",
    "lone \ud800 surrogate", b"", b"\x00\xff raw", [], [1, [2, (3,)]], (), (1, "a", None),
    {"a": 1, "b": [1.5]}, {1: "int key", 2.5: "float key", (1, 2): "tuple key", None: 0},
    {"$tuple": "a key that looks like a tag", "x": 1}, {"$dict": 1}, set(), {1, "a", (2, 3)},
    frozenset({b"x", frozenset({1})}), datetime(2024, 3, 31, 1, 59, 59, 999999),
    datetime(2024, 3, 31, 12, tzinfo=UTC), datetime(2024, 3, 31, 12, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(2024, 3, 31, 12, tzinfo=timezone(timedelta(hours=1), "CET")),
    datetime(2024, 10, 27, 2, 30, tzinfo=ZoneInfo("Europe/Paris"), fold=1),
    date(1999, 12, 31), time(23, 59, 1, 5), time(8, tzinfo=timezone(timedelta(hours=9))),
    timedelta(days=-3, seconds=5, microseconds=7), Decimal("3.140"), Decimal("-0"),
    Decimal("NaN"), Decimal("1E+3"), uuid.UUID("12345678-1234-5678-1234-567812345678"),
]


@pytest.mark.parametrize("value", EVERY_TYPE, ids=repr)
def test_json_format_brings_back_every_supported_type_exactly(path: Path, value: Any) -> None:
    data, tick = round_trip(path, value)
    assert same(data, value), (data, value)
    with sqlite3.connect(path) as db:
        ((stored, fmt),) = db.execute("SELECT data, format FROM aioconveyor_spool").fetchall()
    assert fmt == "json" and isinstance(stored, str) and "pickle" not in stored
    assert tick == TICK and same(tick.event_time, TICK.event_time)


def test_nan_comes_back_as_a_float_nan(path: Path) -> None:
    data, _ = round_trip(path, {"v": math.nan})
    assert type(data["v"]) is float and math.isnan(data["v"])


def test_tuples_stay_tuples_and_lists_stay_lists(path: Path) -> None:
    data, _ = round_trip(path, {"t": (1, [2, (3, [4])]), "l": [(5,), []]})
    assert data == {"t": (1, [2, (3, [4])]), "l": [(5,), []]}
    assert type(data["t"]) is tuple and type(data["t"][1]) is list and type(data["t"][1][1]) is tuple
    assert type(data["l"][0]) is tuple


def test_time_zones_are_kept(path: Path) -> None:
    paris = datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))
    fixed = datetime(2024, 7, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=45)))
    data, _ = round_trip(path, [paris, fixed, paris.replace(tzinfo=None)])
    assert data[0].tzinfo is ZoneInfo("Europe/Paris") and data[0].utcoffset() == timedelta(hours=2)
    assert data[1].tzinfo == timezone(timedelta(hours=5, minutes=45))
    assert data[2].tzinfo is None
    assert data == [paris, fixed, paris.replace(tzinfo=None)]


def keyless_zone() -> ZoneInfo:
    """A zone read from a file: it has no key to store."""
    for folder in zoneinfo.TZPATH:
        if (Path(folder) / "UTC").is_file():
            return ZoneInfo.from_file(io.BytesIO((Path(folder) / "UTC").read_bytes()))
    tzif = importlib.resources.files("tzdata.zoneinfo").joinpath("UTC").read_bytes()
    return ZoneInfo.from_file(io.BytesIO(tzif))


leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
    | st.binary() | st.dates() | st.timedeltas() | st.uuids()
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.datetimes(timezones=st.none() | st.timezones() | st.just(UTC)
                   | st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23),
                                                      max_value=timedelta(hours=23))))
    | st.times(timezones=st.none() | st.just(UTC))
)
hashables = st.recursive(
    leaves.filter(lambda v: not (isinstance(v, Decimal) and v.is_snan())),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=6)
values = st.recursive(
    leaves,
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
                   | st.dictionaries(st.text(), inner, max_size=4)
                   | st.dictionaries(hashables, inner, max_size=4)
                   | st.sets(hashables, max_size=4) | st.frozensets(hashables, max_size=4)),
    max_leaves=20,
)


def test_nested_structures_round_trip(path: Path) -> None:
    spool, _ = reopen(path)

    @settings(max_examples=150, deadline=None)
    @given(values)
    def check(value: Any) -> None:
        rowid = spool.add(value, TICK)
        reader, rows = reopen(path)
        reader.close()
        spool.remove([rowid])
        assert [r[0] for r in rows] == [rowid]
        assert same(rows[0][1], value), (rows[0][1], value)

    check()
    spool.close()


@pytest.mark.parametrize(("value", "name"), [
    (Reading("a", 1.0), "Reading"), ({"ok": [1, object()]}, "object"),
    (Colour.RED, "Colour"), (bytearray(b"x"), "bytearray"),
    (datetime(2024, 1, 1, tzinfo=keyless_zone()), "ZoneInfo"),
])
def test_a_type_the_json_format_cannot_store_is_a_clear_type_error(
        path: Path, value: Any, name: str) -> None:
    spool, _ = reopen(path)
    with pytest.raises(TypeError, match=rf"cannot spool a \S*{name}.*spool_format=\"pickle\""):
        spool.add(value, TICK)
    assert spool.open() == []  # nothing half-written
    spool.close()


def test_the_unsupported_type_error_says_where_it_is(path: Path) -> None:
    spool, _ = reopen(path)
    with pytest.raises(TypeError, match=r"at data\['ok'\]\[1\]"):
        spool.add({"ok": [1, object()]}, TICK)
    spool.close()


def test_pickle_is_an_explicit_opt_in_for_custom_classes(path: Path) -> None:
    assert Spool(path, "lane").format == "json"
    data, tick = round_trip(path, [Reading("kitchen", 21.5)], format="pickle")
    assert data == [Reading("kitchen", 21.5)] and tick == TICK
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT format FROM aioconveyor_spool").fetchall() == [("pickle",)]


def test_format_must_be_json_or_pickle(path: Path) -> None:
    with pytest.raises(ValueError, match="format must be 'json' or 'pickle', got 'yaml'"):
        Spool(path, "lane", format="yaml")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Spool(path, "lane", "pickle")  # type: ignore[misc]


def test_a_json_row_is_read_by_a_pickle_spool(path: Path) -> None:
    spool, _ = reopen(path)
    spool.add((1, "a"), TICK)
    spool.close()
    again, rows = reopen(path, format="pickle")
    again.add(Reading("b", 2.0), TICK)
    again.close()
    _, rows = reopen(path, format="pickle")
    assert [r[1] for r in rows] == [(1, "a"), Reading("b", 2.0)]


def insert_raw(path: Path, lane: str, data: Any, tick: Any, fmt: str) -> int:
    with sqlite3.connect(path) as db:
        cur = db.execute("INSERT INTO aioconveyor_spool (lane, data, tick, format) VALUES (?, ?, ?, ?)",
                         (lane, data, tick, fmt))
        assert cur.lastrowid is not None
        return cur.lastrowid


def pickle_of_a_class_that_no_longer_exists() -> bytes:
    module = types.ModuleType("aioconveyor_test_gone")
    exec("class Renamed:\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        return pickle.dumps(module.Renamed())
    finally:
        del sys.modules[module.__name__]


def test_bad_rows_are_moved_aside_counted_and_logged_once(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool, _ = reopen(path, format="pickle")
    first = spool.add({"n": 1}, TICK)
    good_tick = pickle.dumps(astuple(TICK))
    garbage = insert_raw(path, "lane", "{not json", "[]", "json")
    gone = insert_raw(path, "lane", pickle_of_a_class_that_no_longer_exists(), good_tick, "pickle")
    middle = insert_raw(path, "lane", pickle.dumps("two"), good_tick, "pickle")
    bad_tick = insert_raw(path, "lane", "1", '{"$tuple": [1, 2]}', "json")
    future = insert_raw(path, "lane", "1", "1", "msgpack")
    last = spool.add({"n": 3}, TICK)
    spool.close()

    with caplog.at_level(logging.INFO, logger="aioconveyor._spool"):
        spool, rows = reopen(path, format="pickle")
    assert [(r[0], r[1]) for r in rows] == [(first, {"n": 1}), (middle, "two"), (last, {"n": 3})]
    assert spool.bad == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "4 row(s)" in message and "aioconveyor_spool_bad" in message
    assert f"ids {garbage}, {gone}, {bad_tick}, {future}" in message
    assert "JSONDecodeError" in message  # the first error

    with sqlite3.connect(path) as db:
        moved = db.execute("SELECT spool_id, lane, format, error, moved_at FROM aioconveyor_spool_bad "
                           "ORDER BY spool_id").fetchall()
        left = [i for (i,) in db.execute("SELECT id FROM aioconveyor_spool ORDER BY id")]
    assert [m[0] for m in moved] == [garbage, gone, bad_tick, future]
    assert [m[2] for m in moved] == ["json", "pickle", "json", "msgpack"]
    assert "aioconveyor_test_gone" in moved[1][3] and "unknown spool format" in moved[3][3]
    assert all(m[1] == "lane" and datetime.fromisoformat(m[4]).tzinfo is not None for m in moved)
    assert left == [first, middle, last]

    spool.close()
    caplog.clear()
    again, rows = reopen(path, format="pickle")  # moved once: the next open is clean
    assert again.bad == 0 and len(rows) == 3 and not caplog.records
    again.close()


def test_bad_rows_of_another_lane_are_left_alone(path: Path) -> None:
    Spool(path, "lane").open()
    other = insert_raw(path, "other", "{not json", "[]", "json")
    spool, rows = reopen(path)
    assert rows == [] and spool.bad == 0
    _, rows = reopen(path, "other")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT spool_id FROM aioconveyor_spool_bad").fetchall() == [(other,)]


def test_a_json_spool_never_unpickles_a_pickle_row(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool, _ = reopen(path, format="pickle")
    spool.add(Booby(), TICK)  # pickled now, would run a function when unpickled
    spool.close()
    assert executed == []
    with caplog.at_level(logging.WARNING, logger="aioconveyor._spool"):
        spool, rows = reopen(path)
    assert rows == [] and spool.bad == 1 and executed == []
    assert "written with pickle" in caplog.text and "format='pickle'" in caplog.text


OLD_SCHEMA = """
CREATE TABLE aioconveyor_spool (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    lane    TEXT NOT NULL,
    data    BLOB NOT NULL,
    tick    BLOB NOT NULL
)
"""


def old_file(path: Path, *items: Any) -> None:
    """A spool file as aioconveyor wrote it before the format column."""
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEMA)
        db.executemany("INSERT INTO aioconveyor_spool (lane, data, tick) VALUES (?, ?, ?)",
                       [("lane", pickle.dumps(i), pickle.dumps(astuple(TICK))) for i in items])


def test_an_old_file_is_migrated_and_read_with_the_pickle_format(path: Path) -> None:
    old_file(path, {"a": 1}, Reading("x", 1.0))
    spool, rows = reopen(path, format="pickle")
    assert [r[1] for r in rows] == [{"a": 1}, Reading("x", 1.0)]
    assert all(r[2] == TICK for r in rows) and spool.bad == 0
    spool.add("new", TICK)
    spool.close()
    with sqlite3.connect(path) as db:
        assert [f for (f,) in db.execute("SELECT format FROM aioconveyor_spool")] == ["pickle"] * 3
    _, rows = reopen(path, format="pickle")
    assert [r[1] for r in rows] == [{"a": 1}, Reading("x", 1.0), "new"]


def test_an_old_file_opened_with_json_moves_its_pickle_rows_aside_unexecuted(path: Path) -> None:
    old_file(path, Booby(), {"a": 1})
    spool, rows = reopen(path)
    assert rows == [] and spool.bad == 2 and executed == []
    spool.add({"b": 2}, TICK)
    spool.close()
    _, rows = reopen(path)
    assert [r[1] for r in rows] == [{"b": 2}]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM aioconveyor_spool_bad").fetchone() == (2,)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
NOBODY = 65534


@pytest.mark.usefixtures("permissive_umask")
def test_new_files_and_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "spool.db"
    spool, _ = reopen(path)
    spool.add(1, TICK)
    wal, shm = path.with_name("spool.db-wal"), path.with_name("spool.db-shm")
    assert wal.exists() and shm.exists()
    assert [mode(p) for p in (path, wal, shm)] == [0o600] * 3
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b")] == [0o700] * 2
    spool.close()
    assert mode(tmp_path) == 0o700  # an existing folder is not changed


def test_a_file_others_can_write_is_refused(path: Path) -> None:
    Spool(path, "lane").open()
    path.chmod(0o660)
    with pytest.raises(PermissionError, match=rf"{path} is writable by group or others \(mode 0660\).*chmod 600 {path}"):
        Spool(path, "lane").open()
    path.chmod(0o602)
    with pytest.raises(PermissionError, match="mode 0602"):
        Spool(path, "lane").open()


@needs_root
def test_a_file_owned_by_another_user_is_refused(path: Path) -> None:
    Spool(path, "lane").open()
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match=rf"{path} is owned by uid {NOBODY}, not by this process.*chown"):
        Spool(path, "lane").open()


def test_a_journal_others_can_write_is_refused(path: Path) -> None:
    Spool(path, "lane").open()
    with sqlite3.connect(path) as keep_open:  # holds the -wal file in place
        keep_open.execute("PRAGMA journal_mode=WAL")
        keep_open.execute("INSERT INTO aioconveyor_spool (lane, data, tick, format) VALUES ('x', '1', '1', 'json')")
        keep_open.commit()
        wal = path.with_name("spool.db-wal")
        wal.chmod(0o666)
        with pytest.raises(PermissionError, match=rf"spool journal {wal} is writable"):
            Spool(path, "lane").open()


def test_an_old_world_readable_file_and_journal_are_tightened(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old_file(path, {"a": 1})
    path.chmod(0o644)  # what older versions left
    with sqlite3.connect(path) as keep_open:
        keep_open.execute("PRAGMA journal_mode=WAL")
        keep_open.execute("INSERT INTO aioconveyor_spool (lane, data, tick) VALUES ('x', x'00', x'00')")
        keep_open.commit()
        wal = path.with_name("spool.db-wal")
        wal.chmod(0o644)
        with caplog.at_level(logging.INFO, logger="aioconveyor._spool"):
            spool, rows = reopen(path, format="pickle")
        assert mode(path) == 0o600 and mode(wal) == 0o600
        assert [r[1] for r in rows] == [{"a": 1}]
        spool.close()
    infos = [r.getMessage() for r in caplog.records if "readable by group or others" in r.getMessage()]
    assert len(infos) == 3 and all("mode 0644" in i for i in infos)  # the file, -wal, -shm
    assert str(path) in infos[0] and str(wal) in infos[1]


def test_a_folder_others_can_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match=rf"spool folder {shared} is writable by group or others \(mode 0777\) without the sticky bit"):
        Spool(shared / "spool.db", "lane").open()
    assert not (shared / "spool.db").exists()  # refused before anything was created
    shared.chmod(0o1777)  # like /tmp: others cannot remove or rename our file
    spool, rows = reopen(shared / "spool.db")
    assert rows == [] and mode(shared / "spool.db") == 0o600
    spool.close()


@needs_root
def test_a_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match=rf"spool folder {theirs} is owned by uid {NOBODY}"):
        Spool(theirs / "spool.db", "lane").open()


async def test_a_conveyor_delivers_the_good_rows_and_counts_the_bad_one(path: Path) -> None:
    """Through a conveyor: a row that no longer decodes is set aside (stats say so), the
    rest arrive in order, and the spool-format opt-in reaches the lane."""
    from aioconveyor import AioConveyor, Consumer
    from aioconveyor.testing import FakeClock, MemoryConsumer

    spool, _ = reopen(path, lane="sink")
    spool.add({"n": 1}, TICK)
    spool.add({"n": 2}, TICK)
    spool.close()
    insert_raw(path, "sink", "not json", '{"$tuple": [1, 2]}', "json")
    sink = MemoryConsumer("sink")
    conv = AioConveyor(lambda t: None, [Consumer(sink, spool=path)], loop_interval=60,
                       clock=FakeClock(), max_ticks=1)
    await conv.run()
    assert sink.data == [{"n": 1}, {"n": 2}]
    c = conv.stats().consumer("sink")
    assert c.spool_bad == 1 and c.delivered == 2 and c.spooled == 0

    with pytest.raises(ValueError, match="spool_format must be one of 'json', 'pickle'"):
        Consumer(sink, spool=path, spool_format="yaml")  # type: ignore[arg-type]
