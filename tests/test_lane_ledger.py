"""The ledger invariant under random sequences (issue 12, point 2).

A hypothesis state machine drives a real :class:`~aioconveyor._lanes.Lane` on a
:class:`FakeClock` (advanced by hand, one event loop per test case), built the way the
engine builds one: items offered (with each overflow policy on small queues), deliveries
that succeed, raise, hang past their timeout, are ``Rejected`` or ask to ``RetryAfter``,
time passing, a drain with a deadline (what ``stop()`` and ``remove_consumer()`` do), and a
hand-over to a replacement lane (``replace_consumer()``).

After every step, under the ledger's lock: ``offered == delivered + rejected + dropped +
failed + queued + in_flight``, no count is negative, and every item is accounted for by
identity (each item is an int tag): the ones the consumer took delivery of, the rejected
ones and the queued ones are exactly that many, never overlap, and what is left is exactly
``failed + dropped + in_flight``. At the end everything is drained and every item is
delivered, rejected, failed or dropped.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aioconveyor._consumer import Batch, Consumer, LaneSettings, Overflow, resolve
from aioconveyor._errors import Rejected, RetryAfter
from aioconveyor._lanes import Copier, Lane, Ledger
from aioconveyor._stats import ConveyorCounters
from aioconveyor._tick import Tick
from aioconveyor.testing import FakeClock

TIMEOUT = 5.0  # of every consumer call
SETTLE = 40  # loop turns after every action: enough for a lane to finish reacting to it

ACTIONS = ("ok", "raise", "hang", "reject", "retry_after")


class ScriptedConsumer:
    """An async consumer doing, call by call, what the test queued (``ok`` once the script
    is empty), and noting by tag what it took delivery of or rejected."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.script: deque[tuple[str, float]] = deque()
        self.delivered: list[int] = []  # tags of calls that returned normally
        self.rejected: list[int] = []  # tags of calls that raised Rejected
        self.calls = 0

    async def __call__(self, data: Any, event_time: datetime) -> None:
        self.calls += 1
        tags = [r.data for r in data] if isinstance(data, Batch) else [data]
        action, arg = self.script.popleft() if self.script else ("ok", 0.0)
        if action == "raise":
            raise ValueError("scripted failure")
        if action == "hang":
            await self.clock.sleep(TIMEOUT * 100)  # cancelled at its timeout
        if action == "reject":
            self.rejected.extend(tags)
            raise Rejected("scripted rejection")
        if action == "retry_after":
            raise RetryAfter(arg)
        self.delivered.extend(tags)


class LaneLedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(start=1_794_999_600.0, autojump=False)
        self.consumer = ScriptedConsumer(self.clock)
        self.counters = ConveyorCounters("c")
        self.copier = Copier("c", self.clock)
        self.ledger: Ledger = self.counters.lane("sink", self.clock)
        self.settings: LaneSettings | None = None
        self.lanes: list[Lane] = []  # every lane made, oldest first; the last one is current
        self.tasks: dict[int, asyncio.Task[None]] = {}  # id(lane) -> its run() task
        self.deadlines: dict[int, float] = {}  # id(lane) -> its drain deadline
        self.finished: set[int] = set()  # lanes drained and done with (id)
        self.sent: list[int] = []  # every tag handed to put()
        self.blocked: tuple[int, asyncio.Future[None]] | None = None  # overflow="block" wait
        self.ticks = 0

    # -- helpers -----------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _settle(self) -> None:
        for _ in range(SETTLE):
            await asyncio.sleep(0)

    def settle(self) -> None:
        self.run(self._settle())
        self.reap()

    @property
    def current(self) -> Lane:
        return self.lanes[-1]

    def draining(self, lane: Lane) -> bool:
        return id(lane) in self.deadlines

    def new_lane(self) -> Lane:
        assert self.settings is not None
        lane = Lane(self.settings, self.ledger, conveyor="c", clock=self.clock,
                    copier=self.copier, rng=random.Random(0), generation=len(self.lanes) + 1)
        self.lanes.append(lane)
        return lane

    def start(self, lane: Lane) -> None:
        self.tasks[id(lane)] = self.loop.create_task(lane.run(), name=lane.task_name)

    def reap(self) -> None:
        """What the engine does once a drained lane's task ends (or its deadline passed):
        cancel it if still running, count what it left as dropped; a replacement waiting
        for its predecessor starts then."""
        for lane in self.lanes:
            key = id(lane)
            if key not in self.deadlines or key in self.finished:
                continue
            task = self.tasks.get(key)
            if task is not None and not task.done():
                if self.clock.monotonic() < self.deadlines[key]:
                    continue
                task.cancel()
                self.run(self._settle())
                assert task.done(), "a lane task did not end when cancelled"
            if task is not None:
                assert task.cancelled() or task.exception() is None, task.exception()
            lane.drop_remaining("drain deadline")
            self.finished.add(key)
            successor = lane._successor
            if successor is not None and id(successor) not in self.tasks:
                self.start(successor)
        for key, task in self.tasks.items():  # a lane task never dies of an error
            if task.done() and not task.cancelled():
                assert task.exception() is None, repr(task.exception())
                assert key in self.deadlines, "a lane task ended without being drained"

    # -- rules -------------------------------------------------------------------------

    @initialize(
        retries=st.integers(0, 2),
        queue_size=st.sampled_from([1, 2, 3, 1000]),
        overflow=st.sampled_from(list(Overflow)),
        batch=st.sampled_from([(1, 0.0), (3, 0.0), (3, 4.0)]),
    )
    def setup(self, retries: int, queue_size: int, overflow: Overflow,
              batch: tuple[int, float]) -> None:
        batch_size, batch_age = batch
        (self.settings,) = resolve([Consumer(
            self.consumer, name="sink", timeout=TIMEOUT, retries=retries, backoff=1,
            max_backoff=4, backoff_jitter=0, queue_size=queue_size, overflow=overflow,
            batch_size=batch_size, batch_age=batch_age, copy=False,
        )], TIMEOUT)

        async def open_first() -> None:
            lane = self.new_lane()
            await lane.open()
            self.start(lane)

        self.run(open_first())
        self.settle()

    @precondition(lambda self: self.blocked is None and not self.draining(self.current))
    @rule()
    def offer(self) -> None:
        tag = len(self.sent)
        self.sent.append(tag)
        now = self.clock.time()
        tick = Tick.make(self.ticks, now, now, now, 0)
        self.ticks += 1

        async def put() -> asyncio.Future[None] | None:  # in the loop, as the fan-out does
            return self.current.put(tag, tick)

        waiter = self.run(put())
        if waiter is not None:  # overflow="block" and full: the scheduler would wait here
            self.blocked = (tag, waiter)
        self.settle()

    @rule(action=st.sampled_from(ACTIONS), seconds=st.sampled_from([0.0, 3.0]))
    def next_call(self, action: str, seconds: float) -> None:
        self.consumer.script.append((action, seconds))

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0, 12.0]))
    def advance(self, seconds: float) -> None:
        # in steps of at most a second, the loop settling between them, as in real life
        left = seconds
        while left > 0:
            step = min(1.0, left)
            self.clock.advance(step)
            left -= step
            self.settle()

    @precondition(lambda self: not self.draining(self.current)
                  and all(id(lane) in self.finished for lane in self.lanes[:-1]))
    @rule(budget=st.sampled_from([0.5, 3.0, 10.0, 60.0]))
    def drain(self, budget: float) -> None:
        """A stop (or a removal): the scheduler stops (a put waiting for room is cancelled),
        the lane delivers what it has until the deadline.

        Not while a hand-over is under way: the engine's ``replace_consumer()`` and a stop
        at the same time are a known gap of the engine (see the report of issue 12), not of
        the lanes."""
        self._cancel_blocked()
        lane = self.current
        deadline = self.clock.monotonic() + budget
        self.deadlines[id(lane)] = deadline
        lane.begin_drain(deadline)
        self.settle()

    @precondition(lambda self: not self.draining(self.current)
                  and all(id(lane) in self.finished for lane in self.lanes[:-1]))
    @rule(budget=st.sampled_from([0.5, 3.0, 60.0]))
    def hand_over(self, budget: float) -> None:
        """``replace_consumer()``: open the new lane, send it new items and the old one's
        backlog, drain the old one, then start the new one."""
        old = self.current
        new = self.new_lane()
        self.run(new.open())
        old.hand_over(new)
        deadline = self.clock.monotonic() + budget
        self.deadlines[id(old)] = deadline
        old.begin_drain(deadline)
        self.settle()

    def _cancel_blocked(self) -> None:
        if self.blocked is not None:
            self.blocked[1].cancel()
            self.run(self._settle())

    # -- the invariant -----------------------------------------------------------------

    @invariant()
    def every_item_is_accounted_for(self) -> None:
        if self.settings is None:
            return
        if self.blocked is not None and self.blocked[1].done():
            self.blocked = None
        with self.ledger.lock:
            s = self.ledger.snapshot()
            queued_tags = [e.data for lane in self.lanes for e in lane.queue._items]
        places = (s.delivered, s.rejected, s.dropped, s.failed, s.queued, s.in_flight)
        assert all(n >= 0 for n in places), s
        assert all(n >= 0 for n in (s.errors, s.retries, s.timeouts, s.abandoned)), s
        assert s.offered == sum(places), s

        pending = {self.blocked[0]} if self.blocked is not None else set()
        offered = set(self.sent) - pending  # a put still waiting for room is not offered yet
        assert s.offered == len(offered), (s, len(offered))

        delivered = self.consumer.delivered
        rejected = self.consumer.rejected
        assert len(set(delivered)) == len(delivered), f"delivered twice: {delivered}"
        assert len(delivered) == s.delivered, (delivered, s)
        assert len(set(rejected)) == len(rejected), f"rejected twice: {rejected}"
        assert len(rejected) == s.rejected, (rejected, s)
        assert len(set(queued_tags)) == len(queued_tags), f"queued twice: {queued_tags}"
        assert len(queued_tags) == s.queued, (queued_tags, s)
        known = [set(delivered), set(rejected), set(queued_tags)]
        assert all(k <= offered for k in known), (known, offered)
        assert sum(map(len, known)) == len(set().union(*known)), f"an item in two places: {known}"
        rest = offered - set().union(*known)
        assert len(rest) == s.failed + s.dropped + s.in_flight, (sorted(rest), s)
        if all(id(lane) in self.finished for lane in self.lanes):
            assert s.in_flight == 0 and s.queued == 0, s

    def teardown(self) -> None:
        try:
            if self.settings is not None:
                self._cancel_blocked()
                for _ in range(100):  # a hand-over under way ends first (deadlines <= 60 s)
                    if all(id(lane) in self.finished for lane in self.lanes[:-1]):
                        break
                    self.advance(1.0)
                lane = self.current
                if not self.draining(lane):
                    self.deadlines[id(lane)] = self.clock.monotonic() + 30
                    lane.begin_drain(self.deadlines[id(lane)])
                self.settle()
                for _ in range(100):  # then the last lane (at most 60 s from now)
                    if all(id(lane) in self.finished for lane in self.lanes):
                        break
                    self.advance(1.0)
                assert all(id(lane) in self.finished for lane in self.lanes)
                self.every_item_is_accounted_for()
                s = self.ledger.snapshot()
                assert s.queued == s.in_flight == 0, s
                assert s.offered == len(self.sent), s
                for lane in self.lanes:
                    self.run(lane.close(1.0))
        finally:
            self.copier.close()
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()


LaneLedgerMachine.TestCase.settings = settings(
    max_examples=75, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLaneLedger = LaneLedgerMachine.TestCase


def test_hand_over_while_a_batch_is_collecting_does_not_kill_the_old_lane() -> None:
    """Found by the machine: a lane waiting out ``batch_age`` whose queue was handed over
    woke to an empty queue and died delivering an empty batch (IndexError)."""
    m = LaneLedgerMachine()
    m.setup(retries=0, queue_size=1000, overflow=Overflow.DROP_OLDEST, batch=(3, 4.0))
    m.offer()  # the lane now collects a batch for up to 4 s
    m.hand_over(budget=3.0)  # reap() asserts the old lane's task ended without an error
    m.every_item_is_accounted_for()
    m.advance(5.0)
    m.every_item_is_accounted_for()
    assert m.consumer.delivered == [0]
    m.teardown()
