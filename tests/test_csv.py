"""CsvConsumer: rows that read back with the csv module, one header, rotation, rejects."""

from __future__ import annotations

import csv
import dataclasses
import enum
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import aioconveyor
from aioconveyor import AioConveyor, Batch, Consumer, Record, StartupError
from aioconveyor.consumers import CsvConsumer
from aioconveyor.kit import Tick
from aioconveyor.testing import FakeClock, MemoryConsumer

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def read_lines(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def run_conveyor(produce: Callable[[datetime], Any], consumers: list[Any], ticks: int,
                 **kwargs: Any) -> AioConveyor:
    """Run a real conveyor (its own thread and loop) for ``ticks`` ticks of 0.05 s."""
    conv = AioConveyor(produce, consumers, loop_interval=0.05, max_ticks=ticks, **kwargs)
    conv.start()
    assert conv.join(timeout=10), "conveyor did not finish in time"
    assert conv.exception is None
    return conv


def counting(make: Callable[[int], Any]) -> Callable[[datetime], Any]:
    counter = itertools.count()
    return lambda event_time: make(next(counter))


@dataclasses.dataclass
class Reading:
    sensor: str
    value: float


class Model:
    """Stands in for a pydantic model: only model_dump() matters."""

    def __init__(self, sensor: str, value: float) -> None:
        self.sensor, self.value = sensor, value

    def model_dump(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "value": self.value}


class Colour(enum.Enum):
    RED = "red"


# -- through a real conveyor ---------------------------------------------------------


def test_rows_read_back_equal_produced_data(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    sink = CsvConsumer(path)
    memory = MemoryConsumer()
    data = counting(lambda i: {"n": i, "temp": 20.5 + i / 3, "label": f'a,b "{i}"\nline 2'})
    run_conveyor(data, [sink, memory], ticks=5)

    assert read_lines(path)[0] == ["event_time", "n", "temp", "label"]
    rows = read_rows(path)
    assert [{k: v for k, v in r.items() if k != "event_time"} for r in rows] == [
        {k: str(v) for k, v in d.items()} for d in memory.data
    ]
    assert [float(r["temp"]) for r in rows] == [d["temp"] for d in memory.data]  # exact
    assert [datetime.fromisoformat(r["event_time"]) for r in rows] == memory.event_times
    for r in rows:
        assert r["event_time"].endswith("+00:00")
    assert sink.written == 5 and sink.rejected == 0


def test_second_conveyor_on_same_file_appends_without_second_header(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    run_conveyor(counting(lambda i: {"n": i, "v": i * 2}), [CsvConsumer(path)], ticks=3)
    # keys in another order: the file's header decides the columns
    run_conveyor(counting(lambda i: {"v": -i, "n": 100 + i}), [CsvConsumer(path)], ticks=3)

    lines = read_lines(path)
    assert [line for line in lines if line[0] == "event_time"] == [["event_time", "n", "v"]]
    rows = read_rows(path)
    assert [r["n"] for r in rows] == ["0", "1", "2", "100", "101", "102"]
    assert [r["v"] for r in rows] == ["0", "2", "4", "0", "-1", "-2"]


def test_batched_lane_writes_every_record_with_its_own_time(tmp_path: Path) -> None:
    path = tmp_path / "batched.csv"
    sink = CsvConsumer(path)
    memory = MemoryConsumer()
    conv = run_conveyor(counting(lambda i: {"n": i}), [
        Consumer(sink, batch_size=4, batch_age=0.5), memory,
    ], ticks=8)

    rows = read_rows(path)
    assert [r["n"] for r in rows] == [str(i) for i in range(8)]
    assert [datetime.fromisoformat(r["event_time"]) for r in rows] == memory.event_times
    assert conv.stats().consumer(sink.name).delivered == 8


def test_bad_record_is_counted_and_the_rest_of_its_batch_written(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    sink = CsvConsumer(path)
    data = counting(lambda i: ["not", "a", "mapping"] if i == 2 else {"n": i})
    conv = run_conveyor(data, [Consumer(sink, batch_size=5, batch_age=0.5)], ticks=5)

    assert [r["n"] for r in read_rows(path)] == ["0", "1", "3", "4"]
    assert sink.rejected == 1 and sink.written == 4
    stats = conv.stats().consumer(sink.name)
    assert stats.errors == 0 and stats.failed == 0  # a rejected record is not retried


def test_dataclass_and_model_dump_inputs(tmp_path: Path) -> None:
    path = tmp_path / "objects.csv"
    data = counting(lambda i: Reading("a", i + 0.5) if i % 2 else Model("b", i + 0.25))
    run_conveyor(data, [CsvConsumer(path)], ticks=4)

    assert read_lines(path)[0] == ["event_time", "sensor", "value"]
    assert [(r["sensor"], r["value"]) for r in read_rows(path)] == [
        ("b", "0.25"), ("a", "1.5"), ("b", "2.25"), ("a", "3.5"),
    ]


async def test_daily_rotation_through_a_conveyor_across_midnight(tmp_path: Path) -> None:
    midnight = datetime(2024, 5, 2, tzinfo=UTC).timestamp()
    sink = CsvConsumer(tmp_path / "day-{date}.csv", rotate="daily")
    conv = AioConveyor(counting(lambda i: {"n": i}), [sink], loop_interval=60,
                       clock=FakeClock(start=midnight - 150), max_ticks=5)
    await conv.run()

    files = listing(tmp_path)
    assert files == ["day-2024-05-01.csv", "day-2024-05-02.csv"]
    total = 0
    for name in files:
        rows = read_rows(tmp_path / name)
        total += len(rows)
        assert {datetime.fromisoformat(r["event_time"]).date().isoformat() for r in rows} == {
            name[4:14]
        }
    assert total == 5


def test_a_write_past_its_timeout_is_not_repeated_by_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync, slow = os.fsync, threading.Event()

    def slow_first_fsync(fd: int) -> None:
        if not slow.is_set():
            slow.set()
            time.sleep(0.3)  # the lane gives up after 0.1 s and retries meanwhile
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_first_fsync)
    path = tmp_path / "slow.csv"
    sink = CsvConsumer(path, fsync=True)
    conv = run_conveyor(counting(lambda i: {"n": i}), [
        Consumer(sink, timeout=0.1, retries=10, backoff=0.01, batch_size=1),
    ], ticks=2, stop_timeout=5)

    assert [r["n"] for r in read_rows(path)] == ["0", "1"]
    stats = conv.stats().consumer(sink.name)
    assert stats.timeouts >= 1 and stats.retries >= 1 and stats.delivered == 2


def test_fields_mismatch_with_existing_file_fails_at_start(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    path.write_text("event_time,a,b\r\n", encoding="utf-8")
    sink = CsvConsumer(path, ["a", "c"], name="mismatch")
    conv = AioConveyor(lambda t: {"a": 1}, [Consumer(sink, startup="fail")], loop_interval=0.05)
    with pytest.raises(StartupError, match="columns"):
        conv.start()

    def writer_thread_alive() -> bool:
        return any(t.name == "aioconveyor.csv[mismatch]" for t in threading.enumerate())

    deadline = time.monotonic() + 5
    while writer_thread_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not writer_thread_alive()


# -- direct calls: formats, policies, files --------------------------------------------


async def test_fields_fix_the_columns_missing_keys_empty_extra_keys_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "fields.csv"
    async with CsvConsumer(path, ["a", "b"]) as sink:
        await sink({"a": 1, "b": 2}, T0)
        await sink({"b": 3}, T0)
        await sink({"a": 4, "b": None, "zzz": 5}, T0)
    assert read_lines(path)[0] == ["event_time", "a", "b"]
    assert [(r["a"], r["b"]) for r in read_rows(path)] == [("1", "2"), ("", "3"), ("4", "")]
    assert sink.rejected == 0
    assert "zzz" in caplog.text


async def test_extra_error_rejects_the_record_but_writes_the_others(tmp_path: Path) -> None:
    path = tmp_path / "strict.csv"
    async with CsvConsumer(path, ["a"], extra="error") as sink:
        await sink(Batch([Record({"a": 1}, T0), Record({"a": 2, "b": 3}, T0),
                          Record({}, T0), Record({"a": 4}, T0)]), T0)
    assert [r["a"] for r in read_rows(path)] == ["1", "", "4"]
    assert (sink.written, sink.rejected) == (3, 1)


async def test_first_record_fixes_columns_when_fields_is_none(tmp_path: Path) -> None:
    path = tmp_path / "auto.csv"
    async with CsvConsumer(path) as sink:
        await sink(Batch([Record(42, T0), Record({"x": 1, "y": 2}, T0),
                          Record({"y": 3, "z": 4}, T0)]), T0)
    assert read_lines(path)[0] == ["event_time", "x", "y"]
    assert [(r["x"], r["y"]) for r in read_rows(path)] == [("1", "2"), ("", "3")]
    assert sink.rejected == 1  # the int; the rejected record did not decide the columns


async def test_rejections_are_logged_once_per_kind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aioconveyor.consumers.csv")
    async with CsvConsumer(tmp_path / "r.csv", ["a"], extra="error") as sink:
        for i in range(5):
            await sink(i, T0)  # not a mapping
            await sink({"a": i, "b": i}, T0)  # extra key
    assert sink.rejected == 10
    messages = [r.getMessage() for r in caplog.records if r.name.endswith(".csv")]
    assert len(messages) == 2
    assert any("not a mapping" in m for m in messages)
    assert any("extra keys" in m for m in messages)


async def test_values_are_written_in_a_form_that_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "values.csv"
    row = {
        "text": "comma, quote \" and\r\nnewlines",
        "int": 7, "float": 0.1, "bool": True, "none": None,
        "decimal": Decimal("1.10000000000000000001"),
        "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "day": date(2024, 1, 2),
        "nested": {"a": [1, 2], "at": datetime(2024, 1, 1, tzinfo=UTC)},
        "bytes": b"\x00\xff", "enum": Colour.RED, "reading": Reading("s", 1.0),
    }
    async with CsvConsumer(path) as sink:
        await sink(row, T0)
    (got,) = read_rows(path)
    assert got == {
        "event_time": "2024-05-01T12:00:00+00:00",
        "text": row["text"], "int": "7", "float": "0.1", "bool": "True", "none": "",
        "decimal": "1.10000000000000000001",
        "when": "2024-01-02T03:04:05+00:00", "day": "2024-01-02",
        "nested": '{"a":[1,2],"at":"2024-01-01T00:00:00+00:00"}',
        "bytes": "AP8=", "enum": "red", "reading": '{"sensor":"s","value":1.0}',
    }


async def test_value_without_a_text_form_rejects_only_its_record(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    async with CsvConsumer(path, ["v"]) as sink:
        await sink(Batch([Record({"v": object()}, T0), Record({"v": 1}, T0),
                          Record({"v": float("nan")}, T0)]), T0)
    assert [r["v"] for r in read_rows(path)] == ["1", "nan"]
    assert sink.rejected == 1


async def test_event_time_is_iso_utc_even_from_another_zone(tmp_path: Path) -> None:
    path = tmp_path / "tz.csv"
    paris = timezone(timedelta(hours=2))
    async with CsvConsumer(path) as sink:
        await sink({"a": 1}, datetime(2024, 5, 1, 14, 0, 0, 250000, tzinfo=paris))
    assert read_rows(path)[0]["event_time"] == "2024-05-01T12:00:00.250000+00:00"


async def test_daily_rotation_names_files_by_the_utc_date_of_event_time(
    tmp_path: Path,
) -> None:
    sink = CsvConsumer(tmp_path / "{date}" / "readings-{date}.csv", rotate="daily")
    late = datetime(2024, 5, 1, 23, 59, 59, tzinfo=UTC)
    async with sink:
        await sink({"n": 1}, late)
        await sink(Batch([Record({"n": 2}, late), Record({"n": 3}, late + timedelta(seconds=1)),
                          Record({"n": 4}, datetime(2024, 5, 2, 1, 0, tzinfo=timezone(
                              timedelta(hours=3))))]), late)  # 2024-05-01 22:00 UTC
    day1 = tmp_path / "2024-05-01" / "readings-2024-05-01.csv"
    day2 = tmp_path / "2024-05-02" / "readings-2024-05-02.csv"
    assert [r["n"] for r in read_rows(day1)] == ["1", "2", "4"]
    assert [r["n"] for r in read_rows(day2)] == ["3"]
    assert read_lines(day2)[0] == ["event_time", "n"]  # the new file gets a header too


async def test_size_rotation_starts_numbered_parts_each_with_a_header(
    tmp_path: Path,
) -> None:
    base = tmp_path / "log.csv"
    async with CsvConsumer(base, max_bytes=200) as sink:
        for i in range(20):
            await sink({"n": i, "pad": "x" * 10}, T0)
    async with CsvConsumer(base, max_bytes=200) as sink:  # a restart continues the last part
        for i in range(20, 25):
            await sink({"n": i, "pad": "x" * 10}, T0)

    parts = [base] + [tmp_path / f"log.{k}.csv" for k in range(1, 20)]
    parts = [p for p in parts if p.exists()]
    assert len(parts) > 3
    assert listing(tmp_path) == sorted(p.name for p in parts)
    numbers: list[str] = []
    for p in parts:
        assert p.stat().st_size <= 200
        assert read_lines(p)[0] == ["event_time", "n", "pad"]
        numbers += [r["n"] for r in read_rows(p)]
    assert numbers == [str(i) for i in range(25)]


async def test_a_row_larger_than_max_bytes_gets_a_part_of_its_own(tmp_path: Path) -> None:
    base = tmp_path / "big.csv"
    async with CsvConsumer(base, max_bytes=50) as sink:
        await sink({"v": "small"}, T0)
        await sink({"v": "x" * 100}, T0)
        await sink({"v": "after"}, T0)
    assert [r["v"] for r in read_rows(base)] == ["small"]
    assert [r["v"] for r in read_rows(tmp_path / "big.1.csv")] == ["x" * 100]
    assert [r["v"] for r in read_rows(tmp_path / "big.2.csv")] == ["after"]


async def test_existing_header_is_reused_and_a_cut_last_line_is_ended(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    path.write_bytes(b"event_time,b,a\r\n2024-01-01T00:00:00+00:00,1,2\r\n2024-01-01T00:0")
    async with CsvConsumer(path) as sink:
        await sink({"a": "A", "b": "B", "c": "C"}, T0)
    lines = read_lines(path)
    assert lines[0] == ["event_time", "b", "a"]
    assert lines[-1] == ["2024-05-01T12:00:00+00:00", "B", "A"]
    assert len(lines) == 4


async def test_a_file_not_written_by_csvconsumer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="event_time"):
        async with CsvConsumer(path):
            pass
    assert path.read_text(encoding="utf-8") == "a,b\n1,2\n"


async def test_io_errors_are_raised_for_the_lane_to_retry(tmp_path: Path) -> None:
    (tmp_path / "x-2024-05-01.csv").mkdir()  # the file of that day cannot be opened
    async with CsvConsumer(tmp_path / "x-{date}.csv", rotate="daily") as sink:
        with pytest.raises(OSError):
            await sink({"a": 1}, T0)
        await sink({"a": 2}, T0 + timedelta(days=1))  # the next file works
    assert [r["a"] for r in read_rows(tmp_path / "x-2024-05-02.csv")] == ["2"]


async def test_a_retried_batch_skips_the_records_already_written(tmp_path: Path) -> None:
    blocked = tmp_path / "x-2024-05-02.csv"
    blocked.mkdir()
    batch = Batch([Record({"n": 1}, T0), Record({"n": 2}, T0 + timedelta(days=1)),
                   Record({"n": 3}, T0 + timedelta(days=1))])
    async with CsvConsumer(tmp_path / "x-{date}.csv", rotate="daily") as sink:
        with pytest.raises(OSError):
            await sink(batch, T0 + timedelta(days=1))
        blocked.rmdir()
        await sink(batch, T0 + timedelta(days=1))  # what the lane does on retry
        await sink({"n": 1}, T0)  # another object: written again
    assert [r["n"] for r in read_rows(tmp_path / "x-2024-05-01.csv")] == ["1", "1"]
    assert [r["n"] for r in read_rows(blocked)] == ["2", "3"]
    assert sink.written == 4


async def test_file_writes_and_fsync_run_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        threads.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    async with CsvConsumer(tmp_path / "sync.csv", fsync=True, name="durable") as sink:
        await sink({"a": 1}, T0)
    assert threads and threading.current_thread().name not in threads
    assert all("durable" in t for t in threads)


def test_default_name_and_lane_defaults(tmp_path: Path) -> None:
    sink = CsvConsumer(tmp_path / "r.csv")
    assert sink.name == "csv:r.csv"
    Consumer(sink, **sink.consumer_defaults)  # valid lane settings


@pytest.mark.parametrize(
    ("kwargs", "error", "shown"),
    [
        ({"path": b"r.csv"}, TypeError, ["path", "b'r.csv'"]),
        ({"path": 123}, TypeError, ["path", "123"]),
        ({"path": ""}, ValueError, ["path", "''"]),
        ({"fields": "a,b"}, TypeError, ["fields", "'a,b'"]),
        ({"fields": ["a", 1]}, TypeError, ["fields", "1"]),
        ({"fields": ["a", "a"]}, ValueError, ["fields", "['a', 'a']"]),
        ({"fields": []}, ValueError, ["fields", "[]"]),
        ({"fields": ["event_time"]}, ValueError, ["fields", "['event_time']"]),
        ({"extra": "add"}, ValueError, ["extra", "'add'"]),
        ({"rotate": "weekly"}, ValueError, ["rotate", "'weekly'"]),
        ({"rotate": "daily"}, ValueError, ["{date}", "'r.csv'"]),
        ({"path": "r-{date}.csv"}, ValueError, ["rotate", "'r-{date}.csv'"]),
        ({"max_bytes": 0}, ValueError, ["max_bytes", "0"]),
        ({"max_bytes": 1.5}, TypeError, ["max_bytes", "1.5"]),
        ({"fsync": "yes"}, TypeError, ["fsync", "'yes'"]),
        ({"delimiter": ";;"}, ValueError, ["delimiter", "';;'"]),
        ({"delimiter": '"'}, ValueError, ["delimiter", "'\"'"]),
        ({"name": ""}, TypeError, ["name", "''"]),
    ],
)
def test_bad_constructor_arguments_name_the_argument_and_value(
    kwargs: dict[str, Any], error: type[Exception], shown: list[str]
) -> None:
    kwargs = {"path": "r.csv", **kwargs}
    with pytest.raises(error) as info:
        CsvConsumer(**kwargs)
    for fragment in shown:
        assert fragment in str(info.value)


# -- spreadsheet formulas (OWASP "CSV injection") ----------------------------------------

FORMULAS = ["=1+2", "+1", "-cmd|' /C calc'!A0", "@SUM(A1)", "\tx", "\rx",
            '=HYPERLINK("http://evil.example","x")']


async def test_text_that_a_spreadsheet_would_run_is_escaped_by_default(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    when = datetime(2024, 5, 1, tzinfo=UTC)
    async with CsvConsumer(path, fields=[f"c{i}" for i in range(len(FORMULAS))] + [
            "neg", "dec", "plain", "dash_in_middle"]) as consumer:
        await consumer({**{f"c{i}": f for i, f in enumerate(FORMULAS)}, "neg": -3.5,
                        "dec": Decimal("-2.25"), "plain": "ok", "dash_in_middle": "a-b"}, when)
    row = read_rows(path)[0]
    assert [row[f"c{i}"] for i in range(len(FORMULAS))] == [f"'{f}" for f in FORMULAS]
    # numbers stay numbers: a negative reading is not a formula
    assert (row["neg"], row["dec"], row["plain"], row["dash_in_middle"]) == (
        "-3.5", "-2.25", "ok", "a-b")


async def test_escape_formulas_false_writes_text_as_given(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    async with CsvConsumer(path, fields=["f"], escape_formulas=False) as consumer:
        await consumer({"f": "=1+2"}, datetime(2024, 5, 1, tzinfo=UTC))
    assert read_rows(path)[0]["f"] == "=1+2"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_escape_formulas_must_be_a_bool(tmp_path: Path, value: Any) -> None:
    with pytest.raises(TypeError, match=r"escape_formulas must be a bool, got"):
        CsvConsumer(tmp_path / "x.csv", escape_formulas=value)


# -- one file per producer (issue 14) --------------------------------------------------


def by_producer(*items: tuple[str, dict[str, Any]], start: int = 0) -> Batch:
    """A batch whose records carry their producer's tick, as a lane hands them over."""
    records = []
    for i, (producer, data) in enumerate(items, start):
        when = T0 + timedelta(seconds=i)
        tick = Tick(i, when, when.timestamp(), when.timestamp(), 0, producer)
        records.append(Record(data, when, tick))
    return Batch(records)


async def test_producer_in_the_path_writes_one_file_per_producer_with_its_own_header(
    tmp_path: Path,
) -> None:
    batch = by_producer(("inverter", {"power_w": 1}), ("meter", {"energy_kwh": 2.5}),
                        ("inverter", {"power_w": 3}), ("weather", {"temp": -1, "wind": 4}))
    async with CsvConsumer(tmp_path / "data" / "{producer}.csv") as sink:
        assert sink.per_producer
        await sink(batch, batch[-1].event_time)
        await sink(by_producer(("meter", {"energy_kwh": 3.0}), start=4), T0)
    assert listing(tmp_path / "data") == ["inverter.csv", "meter.csv", "weather.csv"]
    assert read_lines(tmp_path / "data" / "inverter.csv") == [
        ["event_time", "power_w"], [batch[0].event_time.isoformat(), "1"],
        [batch[2].event_time.isoformat(), "3"]]
    assert [r["energy_kwh"] for r in read_rows(tmp_path / "data" / "meter.csv")] == [
        "2.5", "3.0"]
    assert read_rows(tmp_path / "data" / "weather.csv") == [
        {"event_time": batch[3].event_time.isoformat(), "temp": "-1", "wind": "4"}]
    assert (sink.written, sink.rejected) == (5, 0)


async def test_producer_and_date_make_a_folder_per_producer_and_a_file_per_day(
    tmp_path: Path,
) -> None:
    day = by_producer(("a", {"v": 1}), ("b", {"v": 2}))
    next_day = Batch(Record(r.data, r.event_time + timedelta(days=1), r.tick) for r in day)
    async with CsvConsumer(tmp_path / "{producer}" / "{date}.csv", rotate="daily",
                           fields=["v"]) as sink:
        await sink(day, T0)
        await sink(next_day, T0)
    for producer in ("a", "b"):
        assert listing(tmp_path / producer) == ["2024-05-01.csv", "2024-05-02.csv"]
    assert read_lines(tmp_path / "b" / "2024-05-02.csv")[1][1] == "2"


async def test_a_record_without_a_usable_producer_name_is_rejected_alone(
    tmp_path: Path,
) -> None:
    batch = by_producer(("ok", {"v": 1}), ("../escape", {"v": 2}), ("a/b", {"v": 3}),
                        ("", {"v": 4}))
    async with CsvConsumer(tmp_path / "{producer}.csv") as sink:
        await sink(batch, T0)
        await sink({"v": 5}, T0)  # called outside a conveyor: no producer at all
    assert listing(tmp_path) == ["ok.csv"]
    assert (sink.written, sink.rejected) == (1, 4)


async def test_more_producers_than_open_files_keep_one_header_per_file(
    tmp_path: Path,
) -> None:
    names = [f"device{n:03}" for n in range(150)]  # more than the files kept open
    async with CsvConsumer(tmp_path / "{producer}.csv") as sink:
        for round_ in range(2):
            batch = by_producer(*((n, {"n": i, "round": round_}) for i, n in enumerate(names)))
            await sink(batch, T0)
    assert len(listing(tmp_path)) == 150
    for i, name in enumerate(names):
        assert [(r["n"], r["round"]) for r in read_rows(tmp_path / f"{name}.csv")] == [
            (str(i), "0"), (str(i), "1")]




def test_three_producers_write_a_file_each_through_a_conveyor(tmp_path: Path) -> None:
    makers: dict[str, Callable[[int], dict[str, Any]]] = {
        "inverter": lambda n: {"power_w": 1000 + n},
        "meter": lambda n: {"energy_kwh": n / 2, "phase": "L1"},
        "weather": lambda n: {"temp": 20 + n},
    }
    produced: dict[str, list[tuple[datetime, dict[str, Any]]]] = {n: [] for n in makers}

    def producer_of(name: str) -> Callable[[datetime], Any]:
        def produce(event_time: datetime) -> Any:
            item = makers[name](len(produced[name]))
            produced[name].append((event_time, item))
            return item
        return produce

    sink = CsvConsumer(tmp_path / "{producer}.csv")
    conv = AioConveyor(consumers=[sink], producers=[
        aioconveyor.Producer(producer_of(name), name=name, every=0.05, max_ticks=4)
        for name in makers])
    conv.start()
    assert conv.join(timeout=10), "conveyor did not finish in time"
    assert conv.exception is None

    assert listing(tmp_path) == ["inverter.csv", "meter.csv", "weather.csv"]
    for name, rows in produced.items():
        lines = read_lines(tmp_path / f"{name}.csv")
        assert lines[0] == ["event_time", *rows[0][1]]
        assert lines[1:] == [[t.isoformat(), *(str(v) for v in item.values())]
                             for t, item in rows]
    assert sink.written == 12 and sink.rejected == 0
