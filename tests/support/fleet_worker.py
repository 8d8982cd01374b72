"""One member of a producer group for the fleet tests, run as its own process.

    python fleet_worker.py --dsn DATA_DSN --group-dsn GROUP_DSN --group G --name a
        --table T --producers 300 --interval 1 --log PATH --status PATH

``--producers`` producers ``p000``... tick every ``--interval`` s; each one it produces
appends ``"<producer> <grid time>"`` to ``--log`` (this process's own file, written
unbuffered line by line, so a ``kill -9`` loses nothing written) and goes to a
``PostgresConsumer`` keyed on (producer, grid time) into ``--table``. Its
``PostgresGroup`` connects to ``--group-dsn`` (with ``--backend nats``: its ``NatsGroup``
to the NATS URL given there). ``--check-interval``, ``--session-timeout`` and ``--keepalive`` go to the group
(the fault tests set short ones). Every 0.2 s it replaces ``--status`` with
a JSON line of its group stats. It prints ``ready`` once started; after SIGTERM one JSON
line with its final stats, then exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from typing import Any, TextIO

from aioconveyor import AioConveyor, NatsGroup, PostgresGroup, Producer, current_tick
from aioconveyor.consumers import PostgresConsumer


class Produce:
    """Every producer's function: note the (producer, grid time) it produced, return it."""

    def __init__(self, log: TextIO, instance: str) -> None:
        self.log = log
        self.instance = instance

    async def __call__(self, event_time: datetime) -> dict[str, Any]:
        tick = current_tick()
        self.log.write(f"{tick.producer} {event_time.timestamp():.3f}\n")
        return {"instance": self.instance}


def status(group: PostgresGroup | NatsGroup) -> dict[str, Any]:
    g = group.group_stats()
    return {"members": list(g.members), "owned": len(g.owned), "assigned": g.assigned,
            "takeovers": g.takeovers, "handovers": g.handovers, "lost": g.lost,
            "agreed": g.agreed, "role": group.role,
            "round_trips": getattr(group, "round_trips", 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    for name in ("--dsn", "--group-dsn", "--group", "--name", "--table", "--log", "--status"):
        parser.add_argument(name, required=True)
    parser.add_argument("--producers", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--check-interval", type=float, default=1.0)
    parser.add_argument("--backend", choices=("postgres", "nats"), default="postgres")
    parser.add_argument("--session-timeout", type=float, default=None)
    parser.add_argument("--keepalive", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log = open(args.log, "a", buffering=1)
    group: PostgresGroup | NatsGroup
    if args.backend == "nats":  # --group-dsn is then the NATS URL
        group = NatsGroup(args.group_dsn, args.group, name=args.name,
                          check_interval=args.check_interval, connect_timeout=2)
    else:
        group = PostgresGroup(args.group_dsn, args.group, name=args.name,
                              check_interval=args.check_interval, connect_timeout=2,
                              session_timeout=args.session_timeout, keepalive=args.keepalive)
    produce = Produce(log, args.name)
    producers = [Producer(produce, name=f"p{i:03d}", every=args.interval)
                 for i in range(args.producers)]
    sink = PostgresConsumer(args.dsn, args.table, columns=["instance"], per_producer=True,
                            batch_age=0.2, max_backoff=0.5, connect_timeout=2)
    conv = AioConveyor(consumers=[sink], producers=producers, leader=group, name=args.name)
    conv.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    tmp = f"{args.status}.tmp"
    while not stop.wait(0.2) and conv.running:
        with open(tmp, "w") as f:
            json.dump(status(group), f)
        os.replace(tmp, args.status)
    conv.stop()
    s = conv.stats()
    final = {**status(group), "produced": s.produced, "standby_ticks": s.standby_ticks,
             "producer_errors": s.producer_errors}
    sys.stdout.write(json.dumps(final) + "\n")
    sys.stdout.flush()
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
