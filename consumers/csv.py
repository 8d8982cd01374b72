"""Append every record to a CSV file: ``event_time`` first, one header per file.

Rows are formatted and written on a dedicated thread (the event loop only awaits), flushed
row by row and, if asked, ``fsync``-ed after every call. Files can rotate daily (a ``{date}``
placeholder in the path) and by size (``max_bytes``: ``readings.csv``, ``readings.1.csv``,
...), and a ``{producer}`` placeholder writes one file per producer (each with its own
header and columns). Appending to an existing file reuses its header, so restarts never
write a second one.

A record that can never be written (not a mapping, extra keys under ``extra="error"``, a
value with no text form) is *rejected*: counted in :attr:`CsvConsumer.rejected`, logged once
per kind (then rate-limited), and skipped, while the other records of its batch are written.
I/O errors are raised, so the lane counts and retries them. A retry hands over the very
same object, so the consumer skips the records an earlier attempt already wrote (also when
that attempt overran its timeout and finished in the background) rather than repeat them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Literal

from aioconveyor.kit import Batch, LogLimiter, SyncWorker, check

from ._records import as_mapping, json_dumps, producer_now, to_jsonable

__all__ = ["CsvConsumer"]

logger = logging.getLogger(__name__)

TIME_COLUMN = "event_time"
"""Name of the first column: the tick's grid time, ISO 8601 in UTC."""

_EXTRA_POLICIES = ("ignore", "error")
_ROTATIONS = ("daily",)
_DATE = "{date}"
_PRODUCER = "{producer}"
_MAX_OPEN = 64
"""Files kept open at most (one per producer); the least recently written is closed."""
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet takes as the start of a formula (OWASP "CSV injection")."""


class _Rejected(Exception):
    """A record that can never be written; ``kind`` keys the rate-limited log line."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclasses.dataclass(slots=True)
class _OpenFile:
    """The file rows are currently appended to."""

    path: Path
    part: int
    handle: BinaryIO
    size: int
    has_rows: bool


@dataclasses.dataclass(slots=True)
class _Stream:
    """The rows of one producer (or of all, without ``{producer}`` in the path): its
    columns and the file it is appending to."""

    columns: list[str] | None
    file: _OpenFile | None = None
    base: Path | None = None


def _file_part(producer: str) -> str:
    """``producer`` as it fills ``{producer}`` in a path: one path segment, or _Rejected."""
    if not producer:
        raise _Rejected("producer", "the path has {producer}, but the record has no "
                                    "producer (it did not come from a conveyor's producer)")
    if producer in (".", "..") or any(c in producer for c in ("/", "\\", "\0")):
        raise _Rejected("producer", f"producer {producer!r} cannot fill {{producer}} in a "
                                    "path: no '/', '\\', NUL, '.' or '..'")
    return producer


def _utc(event_time: Any) -> datetime:
    if not isinstance(event_time, datetime):
        raise TypeError(f"event_time must be a datetime, got {type(event_time).__name__}")
    if event_time.tzinfo is None:  # a naive time is taken as UTC, never as local time
        return event_time.replace(tzinfo=UTC)
    return event_time.astimezone(UTC)


def _escaped(text: str) -> str:
    """``text`` made inert for spreadsheets: a leading ``'`` if it could start a formula."""
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def _cell(value: Any, escape_formulas: bool = False) -> Any:
    """One value as what ``csv.writer`` writes: text or a number, ``None`` as empty. With
    ``escape_formulas`` text (never a number) that a spreadsheet would run gets a ``'``."""
    if value is None:
        return ""
    if isinstance(value, int | float):  # bool is an int: written as True / False
        return value
    if isinstance(value, str):
        return _escaped(value) if escape_formulas else value
    if isinstance(value, Decimal):
        return str(value)  # exact, unlike to_jsonable's float
    if isinstance(value, Mapping | list | tuple):
        return json_dumps(value)
    try:
        converted = to_jsonable(value)
    except TypeError:
        kind: Any = type(value)
        if kind.__str__ is object.__str__ and kind.__repr__ is object.__repr__:
            # str() would only say "<Foo object at 0x...>": reject rather than write that
            raise TypeError(f"no text form for a value of type {kind.__name__}") from None
        return _escaped(str(value)) if escape_formulas else str(value)
    if isinstance(converted, str):
        return _escaped(converted) if escape_formulas else converted
    if isinstance(converted, int | float):
        return converted
    return json_dumps(converted)


def _part_path(base: Path, part: int) -> Path:
    """``readings.csv`` for part 0, then ``readings.1.csv``, ``readings.2.csv``..."""
    return base if part == 0 else base.with_name(f"{base.stem}.{part}{base.suffix}")


class CsvConsumer:
    """Append each record as a row of a CSV file (UTF-8, RFC 4180 quoting, ``\\r\\n``).

    * ``path``: the file; with ``rotate="daily"`` it must contain ``{date}``, replaced by
      the UTC date of each record's ``event_time`` (``"readings-{date}.csv"``). A
      ``{producer}`` in it is replaced by the name of the record's producer: one file
      (and header) per producer (``"data/{producer}.csv"``).
    * ``fields``: the columns after ``event_time``. ``None``: the header of an existing
      file, else the keys of the first record written to the file (later files keep them;
      with ``{producer}``, each producer's files have their own).
    * ``extra``: keys that are not columns are dropped (``"ignore"``, logged once in a
      while) or reject the whole record (``"error"``). Missing keys and ``None`` values
      are written as empty cells.
    * ``max_bytes``: start a new part (``readings.1.csv``...) rather than grow a file past
      this size; a part holds at least one row.
    * ``fsync``: ``os.fsync`` after every call, for data that must survive a power cut.
    * ``escape_formulas`` (default ``True``): a text cell starting with ``=``, ``+``, ``-``,
      ``@``, a tab or a carriage return is written with a leading ``'``, so a spreadsheet
      opening the file shows it instead of running it as a formula (OWASP "CSV
      injection"). Numbers (``-3.5``, ``Decimal``) are never touched, so numeric columns stay
      numeric; only text is, which is where an attacker-controlled value (a device name, a
      message) would arrive. The default is on because a data-logging file is exactly what
      people open in a spreadsheet, and one quote in a rare cell costs less than a formula
      run by surprise. ``False`` writes text exactly as given (for files read only by
      programs). The header (``event_time`` and the column names) is never changed.
    """

    consumer_defaults: dict[str, Any] = {"batch_size": 100, "retries": 2}
    """Lane settings unless overridden with :class:`aioconveyor.Consumer`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fields: Sequence[str] | None = None,
        *,
        extra: Literal["ignore", "error"] = "ignore",
        rotate: Literal["daily"] | None = None,
        max_bytes: int | None = None,
        fsync: bool = False,
        delimiter: str = ",",
        escape_formulas: bool = True,
        name: str | None = None,
    ) -> None:
        if isinstance(path, bytes) or not isinstance(path, str | os.PathLike):
            check.fail("path", path, f"must be a str or os.PathLike, got {path!r}")
        template = os.fspath(path)
        if not isinstance(template, str) or not template:
            check.fail("path", path, f"must be a non-empty file path, got {path!r}")
        if rotate is not None and (isinstance(rotate, bool) or rotate not in _ROTATIONS):
            check.fail("rotate", rotate, f"must be None or 'daily', got {rotate!r}")
        if rotate == "daily" and _DATE not in template:
            check.fail("path", path,
                       f"must contain {_DATE} with rotate='daily', got {template!r}")
        if rotate is None and _DATE in template:
            check.fail("path", path, f"{template!r} contains {_DATE}: pass rotate='daily' "
                                         "to rotate daily", subject="path")
        self.path = template
        self.per_producer = _PRODUCER in template
        """Whether the path has ``{producer}``: one file per producer."""
        self.fields = self._check_fields(fields)
        if extra not in _EXTRA_POLICIES:
            check.fail("extra", extra, f"must be 'ignore' or 'error', got {extra!r}")
        self.extra = extra
        self.rotate = rotate
        self.max_bytes = check.optional_integer("max_bytes", max_bytes, minimum=1)
        self.fsync = check.boolean("fsync", fsync)
        self.escape_formulas = check.boolean("escape_formulas", escape_formulas)
        if not isinstance(delimiter, str):
            check.fail("delimiter", delimiter,
                       f"must be a one-character str, got {delimiter!r}")
        if len(delimiter) != 1 or delimiter in '"\r\n':
            check.fail("delimiter", delimiter, "must be one character other than a quote "
                                                   f"or newline, got {delimiter!r}")
        self.delimiter = delimiter
        if name is not None:
            check.text("name", name)
        self.name = name or f"csv:{Path(template).name}"

        self.written = 0
        """Rows written (and flushed) so far."""
        self.rejected = 0
        """Records that could not be written and were skipped."""
        self._streams: dict[str, _Stream] = {}  # by producer ("" without {producer}),
        # the most recently written last
        self._synced: set[str] = set()  # the streams a call wrote to (fsync)
        self._worker: SyncWorker | None = None
        self._last: tuple[Any, datetime, int] | None = None  # (data, event_time, records done)
        self._limiter = LogLimiter()
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, delimiter=delimiter)

    @staticmethod
    def _check_fields(fields: Sequence[str] | None) -> tuple[str, ...] | None:
        if fields is None:
            return None
        if isinstance(fields, str | bytes) or not isinstance(fields, Sequence):
            check.fail("fields", fields,
                       f"must be a sequence of column names or None, got {fields!r}")
        out = tuple(fields)
        if not out:
            check.fail("fields", fields,
                       f"must name at least one column (or be None), got {fields!r}")
        for i, f in enumerate(out):
            if not isinstance(f, str) or not f:
                check.fail(f"fields[{i}]", f,
                           f"must hold non-empty str column names, got {f!r}",
                           subject="fields")
        if TIME_COLUMN in out:
            check.fail("fields", fields, f"must not include {TIME_COLUMN!r} (always the "
                                             f"first column), got {list(out)!r}")
        if len(set(out)) != len(out):
            check.fail("fields", fields, f"must not repeat a column, got {list(out)!r}")
        return out

    def __repr__(self) -> str:
        return f"<CsvConsumer {self.name!r} path={self.path!r}>"

    # -- lifecycle (called in the conveyor's loop) ------------------------------------

    def _thread(self) -> SyncWorker:
        if self._worker is None:
            self._worker = SyncWorker(f"aioconveyor.csv[{self.name}]")
        return self._worker

    async def open(self) -> None:
        """Start the writer thread; a fixed path is opened (and its header checked) now."""
        worker = self._thread()
        if self.rotate is None and not self.per_producer:
            try:
                await worker.call(self._switch, self._stream(""), Path(self.path))
            except BaseException:
                self._worker = None  # the lane does not call close() after a failed open()
                worker.close()
                raise

    async def close(self) -> None:
        """Flush and close the file and end the writer thread. Idempotent."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            await worker.call(self._close_files)
        finally:
            worker.close()
            self._last = None

    async def __aenter__(self) -> CsvConsumer:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def __call__(self, data: Any, event_time: datetime) -> None:
        """Write one record, or every record of a batch, then flush."""
        await self._thread().call(self._write, data, event_time)

    def _producer(self, data: Any, record: Any) -> str:
        """Which producer's stream a record goes to ("" without ``{producer}``)."""
        if not self.per_producer:
            return ""
        if isinstance(data, Batch):
            return _file_part(record.producer)
        return _file_part(producer_now())  # the writer thread runs in the caller's context

    # -- the writer thread ------------------------------------------------------------

    def _write(self, data: Any, event_time: datetime) -> None:
        records: list[Any] = list(data) if isinstance(data, Batch) else [(data, event_time)]
        done = 0
        last = self._last
        if last is not None and last[0] is data and last[1] == event_time:
            # The lane retries with the very same object: after a timeout (the earlier
            # attempt went on running here) or an I/O error. Skip what is already written.
            done = last[2]
        try:
            for record in records[done:]:
                item, when = record
                try:
                    self._write_one(when, item, self._producer(data, record))
                except _Rejected as rejected:
                    self._reject(rejected, when)
                else:
                    self.written += 1
                done += 1
            self._sync()
        except BaseException:
            self._close_files(quiet=True)  # start again from a clean file state next call
            raise
        finally:
            self._last = (data, event_time, done)

    def _write_one(self, event_time: Any, item: Any, producer: str = "") -> None:
        try:
            when = _utc(event_time)
        except TypeError as exc:
            raise _Rejected("event_time", str(exc)) from None
        base = self._base_path(when, producer)
        stream = self._stream(producer)
        if stream.file is None or base != stream.base:
            self._switch(stream, base)
        mapping = self._mapping(item)
        # a new file without fields: the first record written decides the columns
        columns = list(mapping) if stream.columns is None else stream.columns
        f = stream.file
        assert f is not None
        line = self._encode([when.isoformat(), *self._cells(mapping, columns, f.path)])
        stream.columns = columns
        self._synced.add(producer)
        if f.has_rows and self.max_bytes is not None and f.size + len(line) > self.max_bytes:
            f = self._roll(stream, f)
        if f.size == 0:
            self._append(f, self._encode([TIME_COLUMN, *columns]))
        self._append(f, line)
        f.handle.flush()  # row by row, so a retry after an I/O error knows what is written
        f.has_rows = True

    def _mapping(self, item: Any) -> Mapping[str, Any]:
        try:
            mapping = as_mapping(item)
            keys = list(mapping)
        except TypeError as exc:
            raise _Rejected("not a mapping", str(exc)) from None
        except Exception as exc:  # a model_dump() or a mapping that raises
            raise _Rejected("unreadable", f"{type(exc).__name__}: {exc}") from None
        odd = [k for k in keys if not isinstance(k, str)]
        if odd:
            raise _Rejected("key", f"keys must be str, got {odd[:5]!r}")
        return mapping

    def _cells(self, mapping: Mapping[str, Any], columns: list[str], path: Path) -> list[Any]:
        known = set(columns)
        extras = [k for k in mapping if k not in known]
        if extras:
            if self.extra == "error":
                raise _Rejected("extra keys", f"keys {extras!r} are not columns {columns!r}")
            self._limiter.log(
                logger, logging.WARNING, "ignored",
                "consumer %s: ignored keys %r that are not columns of %s",
                self.name, extras, path,
            )
        cells: list[Any] = []
        for column in columns:
            try:
                cells.append(_cell(mapping.get(column), self.escape_formulas))
            except (TypeError, ValueError) as exc:
                raise _Rejected("value", f"column {column!r}: {exc}") from None
        return cells

    def _encode(self, row: list[Any]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        try:
            self._writer.writerow(row)
            return self._buffer.getvalue().encode("utf-8")
        except (csv.Error, UnicodeError) as exc:
            raise _Rejected("value", f"{type(exc).__name__}: {exc}") from None

    def _reject(self, rejected: _Rejected, event_time: Any) -> None:
        self.rejected += 1
        when = event_time.isoformat() if isinstance(event_time, datetime) else repr(event_time)
        self._limiter.log(
            logger, logging.WARNING, ("rejected", rejected.kind),
            "consumer %s: skipped the record of tick %s (%s: %s); %d rejected so far",
            self.name, when, rejected.kind, rejected, self.rejected,
        )

    # -- files ------------------------------------------------------------------------

    def _base_path(self, when: datetime, producer: str = "") -> Path:
        path = self.path
        if self.rotate == "daily":
            path = path.replace(_DATE, when.date().isoformat())
        if self.per_producer:
            path = path.replace(_PRODUCER, producer)
        return Path(path)

    def _stream(self, producer: str) -> _Stream:
        """The stream of ``producer``, now the most recently used; a file beyond the
        :data:`_MAX_OPEN` most recent ones is closed (its columns are remembered)."""
        stream = self._streams.pop(producer, None)
        if stream is None:
            stream = _Stream(None if self.fields is None else list(self.fields))
        self._streams[producer] = stream
        if len(self._streams) > _MAX_OPEN:
            others = [v for k, v in self._streams.items() if v.file is not None and k != producer]
            for old in others[:len(others) - (_MAX_OPEN - 1)]:  # oldest first
                self._close(old)
        return stream

    def _switch(self, stream: _Stream, base: Path) -> None:
        """Append to ``base`` from now on: to its last existing part with size rotation."""
        self._close(stream)
        part = 0
        if self.max_bytes is not None:
            while _part_path(base, part + 1).exists():
                part += 1
        stream.file = self._open(stream, base, part)
        stream.base = base

    def _roll(self, stream: _Stream, full: _OpenFile) -> _OpenFile:
        """``full`` reached max_bytes: continue in the next empty part."""
        base = stream.base
        assert base is not None
        part = full.part + 1
        while (p := _part_path(base, part)).exists() and p.stat().st_size > 0:
            part += 1
        self._close(stream)
        stream.file = self._open(stream, base, part)
        stream.base = base
        return stream.file

    def _open(self, stream: _Stream, base: Path, part: int) -> _OpenFile:
        path = _part_path(base, part)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = self._read_header(path)
        if header is not None:
            stream.columns = header
        elif self.fields is not None:
            stream.columns = list(self.fields)
        handle = open(path, "ab")  # stays open across calls; closed by _close()
        try:
            size = os.fstat(handle.fileno()).st_size
            if size and not self._ends_with_newline(path):
                handle.write(b"\r\n")  # a row cut short by a crash stays on its own line
                size += 2
        except BaseException:
            handle.close()
            raise
        logger.debug("consumer %s: appending to %s", self.name, path)
        header_size = 0 if header is None else len(self._encode([TIME_COLUMN, *header]))
        return _OpenFile(path, part, handle, size, has_rows=size > header_size)

    def _read_header(self, path: Path) -> list[str] | None:
        """Columns of an existing file after ``event_time``; ``None`` when new or empty."""
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh, delimiter=self.delimiter), None)
        except FileNotFoundError:
            return None
        if header is None:
            return None
        if not header or header[0] != TIME_COLUMN:
            raise ValueError(
                f"{path} exists but its header {header!r} does not start with "
                f"{TIME_COLUMN!r}: not a file written by CsvConsumer (or another delimiter)"
            )
        columns = header[1:]
        if self.fields is not None and columns != list(self.fields):
            raise ValueError(
                f"{path} has columns {columns!r}, not fields {list(self.fields)!r}; "
                "use another path, or fields=None to reuse the file's columns"
            )
        return columns

    @staticmethod
    def _ends_with_newline(path: Path) -> bool:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) in (b"\n", b"\r")

    @staticmethod
    def _append(f: _OpenFile, data: bytes) -> None:
        f.handle.write(data)
        f.size += len(data)

    def _sync(self) -> None:
        synced, self._synced = self._synced, set()
        if not self.fsync:
            return
        for producer in synced:
            stream = self._streams.get(producer)
            if stream is not None and stream.file is not None:
                os.fsync(stream.file.handle.fileno())

    def _close_files(self, quiet: bool = False) -> None:
        """Close every open file (all of them, even if one fails; the first error is
        raised unless ``quiet``)."""
        self._synced = set()
        error: OSError | None = None
        for stream in self._streams.values():
            try:
                self._close(stream, quiet)
            except OSError as exc:
                error = error or exc
        if error is not None:
            raise error

    def _close(self, stream: _Stream, quiet: bool = False) -> None:
        f, stream.file = stream.file, None
        stream.base = None
        if f is None:
            return
        try:
            f.handle.flush()
            if self.fsync:
                os.fsync(f.handle.fileno())
        except OSError:
            if not quiet:
                raise
        finally:
            try:
                f.handle.close()
            except OSError:
                if not quiet:
                    raise
