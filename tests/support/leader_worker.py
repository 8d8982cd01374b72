"""One conveyor instance for the leader tests, run as its own process.

    python leader_worker.py --dsn DSN --key KEY --table TABLE --interval 0.2 --instance a
        [--leader-dsn DSN_THROUGH_A_PROXY]

Its producer inserts ``(event_time, instance)`` into TABLE over its own connection to
``--dsn`` (so it could always write; only the leader decides whether it does). The leader
connects to ``--leader-dsn`` (default ``--dsn``). It prints ``ready`` once ticking and,
after SIGTERM, one JSON line with its final stats, then exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import datetime
from typing import Any

import asyncpg

from aioconveyor import AioConveyor, PostgresLeader


class TableWriter:
    """The producer: one row per produced tick, written over its own connection."""

    def __init__(self, dsn: str, table: str, instance: str) -> None:
        self.dsn = dsn
        self.sql = f'INSERT INTO "{table}" (event_time, instance) VALUES ($1, $2)'
        self.instance = instance
        self.conn: Any = None

    async def __call__(self, event_time: datetime) -> str:
        if self.conn is None:  # made in the conveyor's own loop, on the first produced tick
            self.conn = await asyncpg.connect(self.dsn)
        await self.conn.execute(self.sql, event_time, self.instance)
        return self.instance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--leader-dsn")
    parser.add_argument("--key", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--instance", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    leader = PostgresLeader(args.leader_dsn or args.dsn, args.key, name=args.instance,
                            keepalive=2, connect_timeout=2)
    conv = AioConveyor(TableWriter(args.dsn, args.table, args.instance),
                       loop_interval=args.interval, leader=leader, name=args.instance)
    conv.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while not stop.wait(0.05) and conv.running:
        pass
    conv.stop()
    s = conv.stats()
    stats = {"role": s.leader_role, "takeovers": s.takeovers, "ticks": s.ticks,
             "produced": s.produced, "standby_ticks": s.standby_ticks,
             "producer_errors": s.producer_errors}
    sys.stdout.write(json.dumps(stats) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
