"""``python -m aioconveyor``: a small demo that works on a bare machine.

A toy producer makes a greeting every ``--interval`` seconds on the clock grid and two
consumers print it, like the original aioconveyor example.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from datetime import datetime
from functools import partial
from time import time

from . import AioConveyor

logger = logging.getLogger("aioconveyor.demo")


async def produce_arg(name: str, event_time: datetime) -> str:
    """Toy producer."""
    data = f"hello {name} {time():.3f}"
    print("<<< produce:", data)
    return data


async def consume(data: str, event_time: datetime) -> int:
    """Toy consumer."""
    print(f"consume: {data} @ {event_time.isoformat()} >>>")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aioconveyor", description=__doc__)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between ticks (default 1)")
    parser.add_argument("--count", type=int, default=5, help="stop after N ticks (default 5)")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conv = AioConveyor(produce=partial(produce_arg, "paul"), consumers=[consume, consume],
                       loop_interval=args.interval, max_ticks=args.count)
    print(f"aioconveyor demo: {args.count} ticks every {args.interval:g} s (Ctrl-C stops)")
    try:
        asyncio.run(conv.run())
    except KeyboardInterrupt:
        pass
    s = conv.stats()
    print(f"done: {s.ticks} ticks, {sum(c.delivered for c in s.consumers)} deliveries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
