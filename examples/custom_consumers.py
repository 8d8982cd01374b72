"""Your own consumers: a plain function, a coroutine function, and a class that owns a
resource (opened and closed by the conveyor, in its own event loop).

    python examples/custom_consumers.py --interval 1 --count 5 --out readings.jsonl

* ``print_line`` is sync: it runs in a worker thread of its own, so blocking I/O is fine.
* ``post_reading`` is async: it must not block; ``await`` instead.
* ``JsonLinesFile`` opens its file in ``open()`` and closes it in ``close()``; with
  ``consumer_defaults`` it asks for batches, so it receives a :class:`aioconveyor.Batch`.
  ``Consumer(...)`` around it adds retries, whatever the class asked for.

Every consumer gets its own copy of each reading, on its own queue: a slow or failing one
never delays the others. Options also come from ``EXAMPLE_INTERVAL``, ``EXAMPLE_COUNT``,
``EXAMPLE_OUT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from aioconveyor import AioConveyor, Batch, Consumer, Record, current_tick


async def read_meter(event_time: datetime) -> dict[str, Any]:
    """The producer: a pretend electricity meter."""
    return {"power_w": round(random.uniform(200, 3000), 1),
            "voltage_v": round(random.gauss(230, 1.5), 1)}


def print_line(data: dict[str, Any], event_time: datetime) -> None:
    """Sync consumer: runs in its own worker thread."""
    tick = current_tick()  # the tick being delivered, also available in threads
    index = tick.index if tick is not None else "?"
    print(f"[sync]  tick {index} {event_time:%H:%M:%S.%f} {data['power_w']:8.1f} W", flush=True)


async def post_reading(data: dict[str, Any], event_time: datetime) -> None:
    """Async consumer: e.g. an HTTP POST with aiohttp/httpx; here a short await."""
    await asyncio.sleep(0.01)
    print(f"[async] posted {data['power_w']:.1f} W of {event_time:%H:%M:%S.%f}", flush=True)


class JsonLinesFile:
    """Class consumer: appends readings to a JSON-lines file it keeps open."""

    consumer_defaults = {"batch_size": 20, "batch_age": 0.5}
    """Lane settings this consumer asks for (``Consumer(...)`` settings win over them)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{self.path.name}"  # how logs and stats() call this consumer
        self.written = 0
        self._file: IO[str] | None = None

    async def open(self) -> None:
        """Called once before the first tick, in the conveyor's event loop."""
        self._file = await asyncio.to_thread(self.path.open, "a", encoding="utf-8")
        print(f"[class] opened {self.path}", flush=True)

    async def close(self) -> None:
        """Called once at stop, after the queue was drained (partial batches flushed)."""
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None
        print(f"[class] closed {self.path} after {self.written} lines", flush=True)

    async def __call__(self, data: Any, event_time: datetime) -> None:
        records = data if isinstance(data, Batch) else [Record(data, event_time)]
        text = "".join(json.dumps({"event_time": r.event_time.isoformat(), **r.data}) + "\n"
                       for r in records)
        await asyncio.to_thread(self._write, text)  # file I/O off the event loop
        self.written += len(records)

    def _write(self, text: str) -> None:
        assert self._file is not None, "open() was not called"
        self._file.write(text)
        self._file.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float,
                        default=float(os.environ.get("EXAMPLE_INTERVAL", "1")))
    parser.add_argument("--count", type=int, default=int(os.environ.get("EXAMPLE_COUNT", "5")))
    parser.add_argument("--out", default=os.environ.get("EXAMPLE_OUT", "readings.jsonl"))
    args = parser.parse_args(argv)

    jsonl = JsonLinesFile(args.out)
    conv = AioConveyor(
        read_meter,
        [
            print_line,
            Consumer(post_reading, timeout=2.0, retries=2),
            Consumer(jsonl, retries=3),
        ],
        loop_interval=args.interval,
        max_ticks=args.count,
    )
    with conv:
        conv.join()
    for c in conv.stats().consumers:
        print(f"{c.name}: {c.delivered} delivered, {c.errors} errors", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
