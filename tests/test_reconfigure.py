"""Consumers added, removed and replaced while the conveyor runs: nothing queued is lost."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer, StartupError
from aioconveyor.testing import MemoryConsumer, wait_until_blocking

FAST = 0.02


class Numbers:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, event_time: datetime) -> int:
        self.n += 1
        return self.n




class Slow(MemoryConsumer):
    async def __call__(self, data: Any, event_time: datetime) -> None:
        await asyncio.sleep(0.03)
        await super().__call__(data, event_time)


def test_a_consumer_added_while_running_receives_the_following_items() -> None:
    first = MemoryConsumer("first")
    with AioConveyor(Numbers(), [first], loop_interval=FAST) as conv:
        assert first.wait_for(3)
        late = MemoryConsumer("late")
        assert conv.add_consumer(late) == "late"
        assert late.wait_for(3)
        assert conv.consumer_names == ("first", "late")
        with pytest.raises(ValueError, match="a consumer named 'late' exists already"):
            conv.add_consumer(MemoryConsumer("late"))
        assert first.data[: len(late.data)] != late.data  # it joined midway
        assert late.data == list(range(late.data[0], late.data[0] + len(late.data)))
    assert [c.name for c in conv.stats().consumers] == ["first", "late"]


def test_adding_a_consumer_whose_open_fails_leaves_the_conveyor_as_it_was() -> None:
    class Broken:
        name = "broken"

        async def open(self) -> None:
            raise ConnectionRefusedError("no server")

        async def __call__(self, data: Any, event_time: datetime) -> None: ...

    sink = MemoryConsumer("sink")
    with AioConveyor(Numbers(), [sink], loop_interval=FAST) as conv:
        with pytest.raises(StartupError, match="'broken' failed to open"):
            conv.add_consumer(Broken())
        n = len(sink.data)
        assert sink.wait_for(n + 3)
        assert conv.consumer_names == ("sink",)


def test_a_removed_consumer_first_delivers_what_it_had_queued() -> None:
    slow, other = Slow("slow"), MemoryConsumer("other")
    with AioConveyor(Numbers(), [slow, other], loop_interval=0.01) as conv:
        assert wait_until_blocking(lambda: conv.stats().consumer("slow").queued >= 5)
        conv.remove_consumer("slow", timeout=10)
        offered = len(slow.data)
        assert slow.data == list(range(1, offered + 1))  # all it was given, in order
        assert conv.consumer_names == ("other",)
        assert other.wait_for(offered + 5)
        with pytest.raises(KeyError, match="no consumer named 'slow'"):
            conv.remove_consumer("slow")
    assert [c.name for c in conv.stats().consumers] == ["other"]


def test_replacing_a_consumer_loses_and_repeats_nothing() -> None:
    old, new = Slow("writer"), MemoryConsumer("writer")
    with AioConveyor(Numbers(), [old], loop_interval=0.01) as conv:
        assert wait_until_blocking(lambda: conv.stats().consumer("writer").queued >= 5)
        conv.replace_consumer("writer", new, timeout=10)
        assert new.wait_for(5)
    produced = conv.stats().produced
    assert sorted(old.data + new.data) == list(range(1, produced + 1))
    assert old.data == sorted(old.data) and new.data == sorted(new.data)
    assert max(old.data) < min(new.data)
    c = conv.stats().consumer("writer")  # one name, continuous counters
    assert c.delivered == produced and c.offered == produced


def test_replacing_a_spooled_consumer_keeps_every_item(tmp_path: Path) -> None:
    spool = tmp_path / "w.db"
    old, new = Slow("w"), MemoryConsumer("w")
    with AioConveyor(Numbers(), [Consumer(old, spool=spool)], loop_interval=0.01) as conv:
        assert wait_until_blocking(lambda: conv.stats().consumer("w").queued >= 5)
        conv.replace_consumer("w", Consumer(new, spool=spool), timeout=10)
        assert new.wait_for(5)
    assert sorted(old.data + new.data) == list(range(1, conv.stats().produced + 1))


def test_changing_consumers_needs_a_running_conveyor() -> None:
    conv = AioConveyor(Numbers(), [], loop_interval=FAST)
    with pytest.raises(RuntimeError, match="is not running"):
        conv.add_consumer(MemoryConsumer())
    with pytest.raises(TypeError, match="consumer must be callable"):
        conv.add_consumer(42)


def test_replacing_a_consumer_that_cannot_deliver_hands_its_backlog_over() -> None:
    async def down(data: int, event_time: datetime) -> None:
        raise ConnectionError("old server is gone")

    fixed = MemoryConsumer("db")
    spec = Consumer(down, name="db", retries=10**6, backoff=0.01, max_backoff=0.02)
    with AioConveyor(Numbers(), [spec], loop_interval=0.01) as conv:
        assert wait_until_blocking(lambda: conv.stats().consumer("db").queued >= 10)
        conv.replace_consumer("db", fixed, timeout=10)
        assert wait_until_blocking(lambda: conv.stats().consumer("db").queued == 0)
    produced = conv.stats().produced
    assert fixed.data == list(range(1, produced + 1))  # the old one's items too, in order
    c = conv.stats().consumer("db")
    assert (c.delivered, c.dropped, c.failed) == (produced, 0, 0)


def test_a_stop_during_a_replace_lets_the_hand_over_finish_and_every_item_is_accounted_for() -> None:
    import threading

    class Sticky(MemoryConsumer):
        """Each call takes a while, so the replace has a call in flight to wait for."""

        async def __call__(self, data: Any, event_time: datetime) -> None:
            await asyncio.sleep(0.3)
            await super().__call__(data, event_time)

    old, new = Sticky("sink"), MemoryConsumer("sink")
    conv = AioConveyor(Numbers(), [Consumer(old, queue_size=10**6)], loop_interval=0.01,
                       stop_timeout=5.0)
    conv.start()
    try:
        assert wait_until_blocking(lambda: conv.stats().consumer("sink").queued >= 5)
        replacing = threading.Thread(target=conv.replace_consumer, args=("sink", new))
        replacing.start()
        assert wait_until_blocking(lambda: conv.consumer_names == ("sink",)
                                   and conv._lane_settings[0].fn is new)
    finally:
        conv.stop()
    replacing.join(10)
    c = conv.stats().consumer("sink")
    assert c.queued == 0 and c.in_flight == 0
    assert c.offered == c.delivered + c.dropped + c.failed + c.rejected
    assert c.delivered == len(old.data) + len(new.data)
