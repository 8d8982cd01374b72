"""Show every record on a rich console: a key/value table per record, titled with the
consumer's name and the tick time.

Meant for humans watching a conveyor (demos, debugging). Any object renders: mappings,
dataclasses and models as tables, everything else through ``rich.pretty``; broken
``__repr__``, recursive structures and huge values are shown truncated rather than raised.
Rendering and printing run on a thread of their own, so a slow terminal never stalls the
event loop. rich is imported when the first consumer is created, not on import.
"""

from __future__ import annotations

import logging
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any

from aioconveyor.kit import LogLimiter, SyncWorker, check

from ._records import as_mapping, iter_records

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

__all__ = ["PrettyPrintConsumer"]

logger = logging.getLogger(__name__)

_MAX_CHARS = 2000
"""Characters of one rendered value, whatever its own ``__repr__`` returns."""


def _int_setting(name: str, value: object) -> int:
    return check.integer(name, value, minimum=1)


def _type_name(value: object) -> str:
    try:
        return type(value).__qualname__
    except Exception:  # a hostile metaclass
        return "object"


class PrettyPrintConsumer:
    """Print each record, or each record of a batch, to a :class:`rich.console.Console`.

    * ``console``: where to print (default: a new ``Console()`` on stdout); tests pass
      ``Console(file=io.StringIO(), width=100)`` and read the text back.
    * ``max_rows``: fields shown per record, then a "... N more" row.
    * ``max_length`` / ``max_string`` / ``max_depth``: how much of each value
      ``rich.pretty`` shows (items per container, characters per string, nesting levels).
    """

    consumer_defaults: dict[str, Any] = {"queue_size": 100}
    """A human reads this: keep only a short backlog (the default overflow drops the oldest)."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        name: str = "pretty",
        max_rows: int = 50,
        max_length: int = 20,
        max_string: int = 200,
        max_depth: int = 4,
    ) -> None:
        from rich.console import Console
        from rich.highlighter import ReprHighlighter

        if console is None:
            console = Console()
        elif not isinstance(console, Console):
            check.fail("console", console,
                       f"must be a rich.console.Console or None, got {console!r}")
        self.console = console
        self.name = check.text("name", name)
        self.max_rows = _int_setting("max_rows", max_rows)
        self.max_length = _int_setting("max_length", max_length)
        self.max_string = _int_setting("max_string", max_string)
        self.max_depth = _int_setting("max_depth", max_depth)
        self._worker: SyncWorker | None = None
        self._limiter = LogLimiter()
        self._highlighter = ReprHighlighter()

    def __repr__(self) -> str:
        return f"<PrettyPrintConsumer {self.name!r}>"

    # -- lifecycle --------------------------------------------------------------------

    def _thread(self) -> SyncWorker:
        if self._worker is None:
            self._worker = SyncWorker(f"aioconveyor.pretty[{self.name}]")
        return self._worker

    async def open(self) -> None:
        """Nothing to open; the printing thread starts with the first record."""

    async def close(self) -> None:
        """End the printing thread once what it was given is printed. Idempotent."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    async def __call__(self, data: Any, event_time: datetime) -> None:
        """Render ``data`` (one item or a batch) and print it."""
        await self._thread().call(self.show, data, event_time)

    # -- rendering (on the printing thread, or directly from sync code) ---------------

    def show(self, data: Any, event_time: datetime) -> None:
        """Render and print right away, in the calling thread."""
        self.console.print(self.render(data, event_time))

    def render(self, data: Any, event_time: datetime) -> RenderableType:
        """``data`` as a rich renderable: one table per record. Never raises for odd data."""
        from rich.console import Group

        records = list(iter_records(data, event_time))
        if len(records) == 1:
            return self._record(*records[0], "")
        n = len(records)
        return Group(*(self._record(when, item, f" ({i}/{n})")
                       for i, (when, item) in enumerate(records, 1)))

    def _record(self, event_time: Any, item: Any, suffix: str) -> RenderableType:
        from rich.table import Table
        from rich.text import Text

        when = event_time.isoformat() if isinstance(event_time, datetime) else repr(event_time)
        title = f"{self.name} · {when}{suffix}"
        table = Table(
            title=Text(title, style="bold"),
            min_width=min(len(title) + 4, self.console.width),
            title_justify="left",
        )
        rows = self._rows(item)
        if rows is None:  # not a mapping: the whole object, pretty-printed
            table.show_header = False
            table.add_column("value", overflow="fold")
            table.add_row(self._text(item, self.console.width - 4))
            return table
        table.add_column("field", style="cyan", overflow="fold")
        table.add_column("value", overflow="fold")
        width = max(20, self.console.width - max((len(k) for k, _ in rows if k), default=0) - 7)
        for key, value in rows:
            if key is None:  # the "... more" marker
                table.add_row(Text("…", style="dim"), Text(value, style="dim"))
            else:
                table.add_row(Text(key), self._text(value, width))
        return table

    def _rows(self, item: Any) -> list[tuple[str | None, Any]] | None:
        """``(key, value)`` pairs of a mapping-like item (capped), or ``None``."""
        try:
            mapping = as_mapping(item)
        except TypeError:
            return None
        except Exception as exc:  # a model_dump() that raises: show the object instead
            self._note("model", item, exc)
            return None
        try:
            rows: list[tuple[str | None, Any]] = [
                (self._key(k), v) for k, v in islice(mapping.items(), self.max_rows)
            ]
            hidden = len(mapping) - len(rows)
        except Exception as exc:
            self._note("items", item, exc)
            return None
        if hidden > 0:
            rows.append((None, f"{hidden} more field{'s' if hidden != 1 else ''}"))
        return rows

    def _key(self, key: object) -> str:
        text = key if isinstance(key, str) else self._text(key, 60).plain
        return text if len(text) <= self.max_string else text[: self.max_string] + "…"

    def _text(self, value: Any, width: int) -> Text:
        """``value`` through ``rich.pretty``, highlighted and capped at _MAX_CHARS."""
        from rich.pretty import pretty_repr
        from rich.text import Text

        try:
            shown = pretty_repr(
                value, max_width=max(20, width), max_length=self.max_length,
                max_string=self.max_string, max_depth=self.max_depth,
            )
        except Exception as exc:  # rich survives most broken objects; this is the last net
            self._note("repr", value, exc)
            shown = f"<unprintable {_type_name(value)}: {type(exc).__name__}>"
        if len(shown) > _MAX_CHARS:
            shown = f"{shown[:_MAX_CHARS]}… ({len(shown) - _MAX_CHARS} more characters)"
        text = Text(shown, overflow="fold")
        self._highlighter.highlight(text)
        return text

    def _note(self, what: str, value: object, exc: Exception) -> None:
        self._limiter.log(
            logger, logging.WARNING, (what, _type_name(value)),
            "consumer %s: could not render a %s (%s failed: %s)",
            self.name, _type_name(value), what, type(exc).__name__,
        )
