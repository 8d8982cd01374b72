"""AioConveyor: settings, lifecycle, and the thread facade over one async engine.

``run()`` is the whole conveyor as a coroutine in the caller's loop. ``start()`` runs that
same coroutine in a fresh event loop on a named daemon thread, so blocking code on either
side cannot stall the other; ``stop()`` / ``join()`` / ``running`` / ``stats()`` work from
any thread. No scheduling logic lives in the thread code.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import enum
import importlib
import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, tzinfo
from types import TracebackType
from typing import Any, TypeVar

from . import _validate
from .clock import Clock, SystemClock
from .endpoint import OpsEndpoint
from .errors import ConveyorError, RestartBudgetExceeded, StartupError
from .fanout import Consumer, Fanout, Lane, callable_name, resolve
from .health import Health, assess
from .leader import Leader
from .schedule import CronSchedule, IntervalSchedule, Misfire, Planner, Schedule
from .scheduler import Scheduler
from .stats import ConveyorCounters, ConveyorStats
from .watchdog import LoopMonitor, Supervisor

__all__ = ["AioConveyor"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_live: weakref.WeakSet[AioConveyor] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    """At interpreter exit, let running conveyors drain briefly instead of vanishing."""
    for conv in list(_live):
        if conv.running:
            logger.info("conveyor %s: interpreter exiting, stopping it", conv.name)
            conv.stop()


atexit.register(_stop_all_at_exit)


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def _default_timeout(period: float) -> float:
    return min(60.0, max(1.0, 2.0 * period))


class AioConveyor:
    """Call ``produce(event_time)`` on a wall-clock grid and hand a copy of every result to
    each consumer ``consumer(data, event_time)``.

    See the README for every argument and the guarantees; in short:

    * ``produce``: sync or async callable taking the tick's grid time (tz-aware UTC
      ``datetime``); returning ``None`` means "nothing this tick".
    * ``consumers``: a list of callables ``(data, event_time)`` (sync or async, or objects
      with async ``open()``/``close()``), each optionally wrapped in :class:`Consumer` for
      per-consumer settings. An empty list is allowed: the producer still runs each tick.
    * ``loop_interval`` / ``loop_offset``: tick at ``k * loop_interval + loop_offset``
      seconds of the UTC epoch (default every 5 s); or ``cron="*/5 * * * *"``; or any
      :class:`~aioconveyor.schedule.Schedule` via ``schedule=``.
    """

    def __init__(
        self,
        produce: Callable[..., Any],
        consumers: Sequence[Any] = (),
        loop_interval: float | None = None,
        loop_offset: float = 0.0,
        *,
        cron: str | None = None,
        cron_tz: tzinfo | None = None,
        schedule: Schedule | None = None,
        eager: bool = False,
        jitter: float = 0.0,
        max_ticks: int | None = None,
        misfire: Misfire | str = Misfire.SKIP,
        misfire_grace: float | None = None,
        producer_timeout: float | None = None,
        error_backoff: float | None = None,
        consumer_timeout: float | None = None,
        restart_limit: int = 5,
        restart_window: float = 60.0,
        block_threshold: float = 1.0,
        stop_timeout: float = 5.0,
        name: str | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
        leader: Leader | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        health_bound: float | None = None,
    ) -> None:
        self.produce = _validate.callable_("produce", produce)
        if isinstance(consumers, str | bytes) or not isinstance(consumers, Sequence):
            raise TypeError(
                "consumers must be a list of callables or Consumer(...) objects, "
                f"got {consumers!r} ({type(consumers).__name__})"
            )
        for i, c in enumerate(consumers):
            if not isinstance(c, Consumer):
                _validate.callable_(f"consumers[{i}]", c)
        self._consumers = [Consumer.wrap(c) for c in consumers]

        given = [n for n, v in (("loop_interval", loop_interval), ("cron", cron),
                                ("schedule", schedule)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of loop_interval, cron and schedule, got {given}")
        if schedule is not None:
            if not isinstance(schedule, Schedule):
                raise TypeError(
                    f"schedule must have next_fire/prev_fire/count_between, got {schedule!r}"
                )
            self.schedule: Schedule = schedule
        elif cron is not None:
            if loop_offset:
                raise ValueError(
                    f"loop_offset applies to loop_interval, not cron; got {loop_offset!r}"
                )
            self.schedule = CronSchedule(cron) if cron_tz is None else CronSchedule(cron, cron_tz)
        else:
            self.schedule = IntervalSchedule(5.0 if loop_interval is None else loop_interval,
                                             loop_offset)
        if not isinstance(eager, bool):
            raise TypeError(f"eager must be a bool, got {eager!r}")
        now = time.time()
        period = self.schedule.next_fire(now) - self.schedule.prev_fire(now)
        jitter = _validate.non_negative("jitter", jitter)
        if jitter >= period:
            raise ValueError(
                f"jitter must be smaller than the tick period ({period:g} s), got {jitter!r}"
            )
        self.max_ticks = _validate.optional_integer("max_ticks", max_ticks, minimum=1)
        misfire = _validate.choice("misfire", misfire, Misfire)
        if misfire_grace is not None:
            _validate.non_negative("misfire_grace", misfire_grace)
        self.producer_timeout = self._timeout("producer_timeout", producer_timeout, period)
        self.consumer_timeout = self._timeout("consumer_timeout", consumer_timeout, period)
        self.error_backoff = _validate.optional_positive("error_backoff", error_backoff)
        self.restart_limit = _validate.integer("restart_limit", restart_limit, minimum=0)
        self.restart_window = _validate.positive("restart_window", restart_window)
        self.block_threshold = _validate.positive("block_threshold", block_threshold)
        self.stop_timeout = _validate.positive("stop_timeout", stop_timeout)
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        self.name = name or callable_name(produce)
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(
                f"clock must provide time(), monotonic() and sleep_until(), got {clock!r}"
            )
        self.clock: Clock = clock or SystemClock()
        if seed is not None:
            _validate.integer("seed", seed, minimum=-(2**63))
        if leader is not None and not isinstance(leader, Leader):
            raise TypeError(
                f"leader must provide open(), close(), lead() and role, got {leader!r}"
            )
        self.leader = leader
        self.metrics_port = _validate.optional_integer("metrics_port", metrics_port, minimum=0)
        if self.metrics_port is not None:
            if self.metrics_port > 65535:
                raise ValueError(f"metrics_port must be <= 65535, got {metrics_port!r}")
            try:
                importlib.import_module("prometheus_client")
            except ImportError as exc:
                raise ImportError(
                    'metrics_port needs prometheus-client: pip install "aioconveyor[metrics]"'
                ) from exc
        if not isinstance(metrics_host, str) or not metrics_host:
            raise TypeError(f"metrics_host must be a non-empty str, got {metrics_host!r}")
        self.metrics_host = metrics_host
        self.health_bound = (max(3 * period, 10.0) if health_bound is None
                             else _validate.positive("health_bound", health_bound))
        self.planner = Planner(self.schedule, misfire=misfire, misfire_grace=misfire_grace,
                               jitter=jitter, eager=eager, rng=random.Random(seed))
        # settings of every consumer are resolved (and checked) now, not in the thread
        self._lane_settings = resolve(self._consumers, self.consumer_timeout)
        self._consumer_bounds = {
            s.name: self.health_bound + s.batch_age for s in self._lane_settings
        }

        self._counters = ConveyorCounters(self.name)
        self._lane_counters = [self._counters.lane(s.name) for s in self._lane_settings]
        self._state = _State.NEW
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: _Engine | None = None
        self._exception: BaseException | None = None

    @staticmethod
    def _timeout(name: str, value: float | None, period: float) -> float:
        if value is None:
            return _default_timeout(period)
        if value == math.inf:
            return math.inf
        return _validate.positive(name, value)

    def __repr__(self) -> str:
        return f"<AioConveyor {self.name!r} {self._state.value} {self.schedule!r}>"

    # -- state -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True from a successful start until the conveyor has completely stopped."""
        return self._state in (_State.RUNNING, _State.STOPPING)

    @property
    def exception(self) -> BaseException | None:
        """Why the conveyor ended on its own (start-up failure, restart budget), else None."""
        return self._exception

    @property
    def consumer_names(self) -> tuple[str, ...]:
        """The names of the consumers, as used in logs and ``stats()``, in order."""
        return tuple(s.name for s in self._lane_settings)

    def stats(self) -> ConveyorStats:
        """A consistent snapshot of the counters; safe from any thread at any time."""
        return self._counters.snapshot()

    def health(self, now: datetime | None = None) -> Health:
        """Healthy while running, ticking on time, and every consumer delivering within
        ``health_bound`` (plus its ``batch_age``); else says which part is not."""
        return assess(self.stats(), now=now or datetime.now(UTC), bound=self.health_bound,
                      consumer_bounds=self._consumer_bounds)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where ``/metrics``, ``/healthz`` and ``/readyz`` are served (while running)."""
        engine = self._engine
        if engine is None or engine.endpoint is None or not self.running:
            return None
        return engine.endpoint.address

    def _claim(self, how: str) -> None:
        with self._lock:
            if self._state is not _State.NEW:
                raise RuntimeError(
                    f"cannot {how} conveyor {self.name!r}: it is {self._state.value}; "
                    "a conveyor runs once, create a new one to run again"
                )
            self._state = _State.STARTING

    # -- asyncio face ----------------------------------------------------------------

    async def run(self) -> None:
        """Run the conveyor in the current event loop until stopped (or ``max_ticks``).

        Raises :class:`StartupError` if it cannot start, and the watchdog's
        :class:`RestartBudgetExceeded` if it had to give up. Cancelling it stops gracefully.
        """
        self._claim("run")
        await self._main(None)

    async def _main(self, on_ready: Callable[[], None] | None) -> None:
        engine = _Engine(self)
        self._engine = engine
        self._loop = asyncio.get_running_loop()

        def ready() -> None:
            with self._lock:
                self._state = _State.RUNNING
            if on_ready is not None:
                on_ready()

        try:
            await engine.run(ready)
            if engine.failure is not None:
                raise engine.failure
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._exception = exc
            raise
        finally:
            with self._lock:
                self._state = _State.STOPPED
            self._finished.set()
            _live.discard(self)

    async def __aenter__(self) -> AioConveyor:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- thread face -----------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start the conveyor on its own daemon thread; returns once it is ticking.

        Raises :class:`StartupError` if start-up failed (e.g. a consumer's ``open()``
        raised) and ``RuntimeError`` if the conveyor was started before.
        """
        self._claim("start")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name=f"aioconveyor[{self.name}]", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise StartupError(f"conveyor {self.name!r} did not start within {timeout:g} s")
        if self._exception is not None:
            self._thread.join()
            exc = self._exception
            if isinstance(exc, ConveyorError):
                raise exc
            raise StartupError(f"conveyor {self.name!r} failed to start: {exc!r}") from exc
        _live.add(self)

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready.set))
        except BaseException as exc:
            if not isinstance(exc, ConveyorError | asyncio.CancelledError):
                logger.error("conveyor %s: event loop ended with an error", self.name, exc_info=exc)
        finally:
            ready.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop ticking, deliver what is queued (until ``timeout``, default ``stop_timeout``),
        close the consumers and end the thread. Idempotent; callable from any thread.

        Whatever is still queued when the time is up is counted as dropped and logged.
        """
        timeout = self.stop_timeout if timeout is None else _validate.positive("timeout", timeout)
        with self._lock:
            if self._state is _State.NEW:
                self._state = _State.STOPPED
                self._finished.set()
                return
            if self._state is _State.STOPPED:
                return
            if self._state is _State.RUNNING:
                self._state = _State.STOPPING
        deadline = time.monotonic() + timeout
        loop, engine = self._loop, self._engine
        if loop is not None and engine is not None:
            try:
                loop.call_soon_threadsafe(engine.request_stop, deadline)
            except RuntimeError:  # the loop already closed
                pass
        if self._in_own_loop():
            return  # cannot wait for ourselves; the loop finishes after this callback
        if not self._finished.wait(max(0.0, deadline - time.monotonic()) + 1.0):
            logger.warning("conveyor %s: still stopping after %g s; leaving its daemon thread",
                           self.name, timeout)
            return
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    # -- consumers while running -----------------------------------------------------

    def add_consumer(self, consumer: Any, timeout: float | None = None) -> str:
        """Open ``consumer`` (a callable or ``Consumer``) and start fanning out to it.

        Returns its name. Raises :class:`StartupError` if its ``open()`` fails, and
        ``ValueError`` if a consumer of that name exists. Call from outside the conveyor's
        loop (any thread; from its own loop use ``await asyncio.to_thread(...)``).
        """
        spec = self._checked_spec(consumer)
        return self._call_engine(lambda e, deadline: e.add_lane(spec), timeout)

    def remove_consumer(self, name: str, timeout: float | None = None) -> None:
        """Stop giving ``name`` new items, deliver what it has queued (until ``timeout``,
        default ``stop_timeout``), then close it. Leftovers are counted as dropped (or stay
        in its spool)."""
        self._call_engine(lambda e, deadline: e.remove_lane(name, deadline), timeout)

    def replace_consumer(self, name: str, consumer: Any, timeout: float | None = None) -> None:
        """Swap the consumer called ``name`` for ``consumer`` without losing items.

        The new one is opened first (if that fails the old one carries on and the error is
        raised); from then on new items go to it, while the old one delivers what it had
        queued (until ``timeout``) and is closed. Stats continue under the same name.
        """
        spec = self._checked_spec(consumer)
        self._call_engine(lambda e, deadline: e.replace_lane(name, spec, deadline), timeout)

    @staticmethod
    def _checked_spec(consumer: Any) -> Consumer:
        if not isinstance(consumer, Consumer):
            _validate.callable_("consumer", consumer)
        return Consumer.wrap(consumer)

    def _call_engine(
        self, call: Callable[[_Engine, float], Coroutine[Any, Any, T]], timeout: float | None
    ) -> T:
        timeout = self.stop_timeout if timeout is None else _validate.positive("timeout", timeout)
        loop, engine = self._loop, self._engine
        if self._state is not _State.RUNNING or loop is None or engine is None:
            raise RuntimeError(f"conveyor {self.name!r} is not running ({self._state.value})")
        if self._in_own_loop():
            raise RuntimeError("this blocks: from the conveyor's own loop use "
                               "await asyncio.to_thread(conveyor.<method>, ...)")
        deadline = time.monotonic() + timeout
        future = asyncio.run_coroutine_threadsafe(call(engine, deadline), loop)
        return future.result(timeout + self.stop_timeout + 1.0)

    def _in_own_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the conveyor has stopped (by ``stop()``, ``max_ticks`` or a failure).

        Returns True when it has stopped, False if ``timeout`` ran out first.
        """
        return self._finished.wait(timeout)

    def __enter__(self) -> AioConveyor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Engine:
    """One run of a conveyor, living entirely inside its event loop."""

    def __init__(self, conv: AioConveyor) -> None:
        self.conv = conv
        counters = conv._counters
        self.counters = counters
        self.lanes = [Lane(settings, lane_counters, conv.name)
                      for settings, lane_counters in zip(conv._lane_settings, conv._lane_counters,
                                                         strict=True)]
        self._lane_stacks: dict[Lane, AsyncExitStack] = {}
        self.failure: BaseException | None = None
        self._deadline: float | None = None
        self._stop_event = asyncio.Event()
        self.supervisor = Supervisor(
            counters, restarts=conv.restart_limit, window=conv.restart_window,
            on_budget_exceeded=self._budget_exceeded,
        )
        self.scheduler = Scheduler(
            conv.produce, conv.planner, conv.clock, Fanout(self.lanes), counters,
            name=conv.name, producer_timeout=conv.producer_timeout,
            error_backoff=conv.error_backoff, max_ticks=conv.max_ticks,
            on_finished=self._ticks_done, leader=conv.leader,
        )
        self.monitor = LoopMonitor(counters, conv.name, conv.block_threshold)
        self.endpoint: OpsEndpoint | None = None

    def request_stop(self, deadline: float | None = None) -> None:
        """Begin a graceful stop that must be over by ``deadline`` (monotonic seconds)."""
        if deadline is None:
            deadline = time.monotonic() + self.conv.stop_timeout
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline
        self._stop_event.set()

    def _ticks_done(self) -> None:
        self.supervisor.finished(self.scheduler_name)
        logger.info("conveyor %s: max_ticks (%d) reached, stopping", self.conv.name,
                    self.conv.max_ticks)
        self.request_stop()

    def _budget_exceeded(self, exc: RestartBudgetExceeded) -> None:
        self.failure = exc
        self.request_stop()

    @property
    def scheduler_name(self) -> str:
        return f"aioconveyor[{self.conv.name}].scheduler"

    async def _open_lane(self, lane: Lane, recover: bool = True) -> None:
        """Open a lane's consumer; its close is kept for :meth:`_retire` or shutdown."""
        stack = AsyncExitStack()
        try:
            await stack.enter_async_context(lane.opened(self._close_budget, recover))
        except Exception as exc:
            raise StartupError(
                f"conveyor {self.conv.name!r}: consumer {lane.settings.name!r} "
                f"failed to open: {type(exc).__name__}: {exc}"
            ) from exc
        self._lane_stacks[lane] = stack

    async def _close_lanes(self) -> None:
        for lane in reversed(list(self._lane_stacks)):
            await self._lane_stacks.pop(lane).aclose()

    # -- consumers added, removed or replaced while running ---------------------------

    def _find(self, name: str) -> Lane:
        for lane in self.lanes:
            if lane.settings.name == name:
                return lane
        raise KeyError(f"no consumer named {name!r}; have {[x.settings.name for x in self.lanes]}")

    def _check_running(self) -> None:
        if self._stop_event.is_set():
            raise RuntimeError(f"conveyor {self.conv.name!r} is stopping")

    def _sync_settings(self) -> None:
        conv = self.conv
        conv._lane_settings = [lane.settings for lane in self.lanes]
        conv._consumer_bounds = {s.name: conv.health_bound + s.batch_age
                                 for s in conv._lane_settings}

    async def add_lane(self, spec: Consumer) -> str:
        self._check_running()
        (settings,) = resolve([spec], self.conv.consumer_timeout)
        if any(lane.settings.name == settings.name for lane in self.lanes):
            raise ValueError(f"a consumer named {settings.name!r} exists already; give another "
                             "name= or use replace_consumer()")
        counters = self.counters.lane(settings.name)
        lane = Lane(settings, counters, self.conv.name)
        try:
            await self._open_lane(lane)
        except BaseException:
            with self.counters.lock:
                self.counters.lanes.remove(counters)
            raise
        self.lanes.append(lane)
        self.supervisor.watch(lane.task_name, lane.run, lane.counters)
        self._sync_settings()
        logger.info("conveyor %s: consumer %s added", self.conv.name, settings.name)
        return settings.name

    async def remove_lane(self, name: str, deadline: float) -> None:
        self._check_running()
        lane = self._find(name)
        self.lanes.remove(lane)  # from now on it gets no new items
        self._sync_settings()
        await self._retire(lane, deadline, "consumer removed")
        with self.counters.lock:
            self.counters.lanes.remove(lane.counters)
        logger.info("conveyor %s: consumer %s removed", self.conv.name, name)

    async def replace_lane(self, name: str, spec: Consumer, deadline: float) -> None:
        self._check_running()
        old = self._find(name)
        (settings,) = resolve([dataclasses.replace(spec, name=name)], self.conv.consumer_timeout)
        new = Lane(settings, old.counters, self.conv.name, generation=old.generation + 1)
        same_spool = (settings.spool is not None and old.settings.spool is not None
                      and os.fspath(settings.spool) == os.fspath(old.settings.spool))
        # if this fails, the old one goes on; a shared spool's items come from the old lane
        await self._open_lane(new, recover=not same_spool)
        self.lanes[self.lanes.index(old)] = new  # the next item goes to the new one
        moved = old.hand_over(new)  # and so does the old one's backlog, in order
        self._sync_settings()
        # the old one finishes its call in flight (or hands that item over too) before the
        # new one starts, so the order holds across the swap
        await self._drain_lane(old, deadline, "consumer replaced")
        self.supervisor.watch(new.task_name, new.run, new.counters)
        await self._lane_stacks.pop(old).aclose()
        logger.info("conveyor %s: consumer %s replaced (%d queued items handed over)",
                    self.conv.name, name, moved)

    async def _retire(self, lane: Lane, deadline: float, why: str) -> None:
        """Deliver what ``lane`` has queued (until ``deadline``), then close its consumer."""
        await self._drain_lane(lane, deadline, why)
        await self._lane_stacks.pop(lane).aclose()

    async def _drain_lane(self, lane: Lane, deadline: float, why: str) -> None:
        task = self.supervisor.task(lane.task_name)
        self.supervisor.forget(lane.task_name)
        lane.begin_drain(deadline)
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        lane.drop_remaining(f"{why}, drain timeout reached")

    async def run(self, ready: Callable[[], None]) -> None:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._close_lanes)
            for lane in self.lanes:
                await self._open_lane(lane)
            if self.conv.leader is not None:
                leader = self.conv.leader
                try:
                    await leader.open()
                except Exception as exc:
                    raise StartupError(
                        f"conveyor {self.conv.name!r}: leader backend failed to open: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                stack.push_async_callback(self._close_leader, leader)
            if self.conv.metrics_port is not None:
                self.endpoint = self._make_endpoint()
                await self.endpoint.start()
                stack.push_async_callback(self.endpoint.close)
            heartbeat = asyncio.get_running_loop().create_task(
                self.monitor.heartbeat(), name=f"aioconveyor[{self.conv.name}].heartbeat"
            )
            for lane in self.lanes:
                self.supervisor.watch(lane.task_name, lane.run, lane.counters)
            self.supervisor.watch(self.scheduler_name, self.scheduler.run)
            with self.counters.lock:
                self.counters.running = True
            ready()
            try:
                await self._stop_event.wait()
            except asyncio.CancelledError:
                self.request_stop()
                await self._shutdown()
                raise
            else:
                await self._shutdown()
            finally:
                heartbeat.cancel()
                with self.counters.lock:
                    self.counters.running = False

    def _make_endpoint(self) -> OpsEndpoint:
        from . import metrics

        conv = self.conv

        def render() -> tuple[bytes, str]:
            return metrics.render(conv.stats), metrics.CONTENT_TYPE

        assert conv.metrics_port is not None
        return OpsEndpoint(conv.metrics_host, conv.metrics_port, health=conv.health,
                           ready=lambda: conv.running, metrics=render)

    async def _close_leader(self, leader: Leader) -> None:
        try:
            async with asyncio.timeout(self._close_budget()):
                await leader.close()
        except Exception:
            logger.exception("conveyor %s: leader backend close failed", self.conv.name)

    def _close_budget(self) -> float:
        if self._deadline is None:
            return self.conv.stop_timeout
        return max(0.05, self._deadline - time.monotonic())

    async def _shutdown(self) -> None:
        assert self._deadline is not None
        deadline = self._deadline
        reserve = min(1.0, (deadline - time.monotonic()) / 4)  # kept for closing consumers
        self.supervisor.pause()
        await self.supervisor.stop([self.scheduler_name], timeout=1.0)
        self.scheduler.close()
        drain_until = deadline - max(0.0, reserve)
        for lane in self.lanes:
            lane.begin_drain(drain_until)
        tasks = [t for lane in self.lanes
                 if (t := self.supervisor.task(lane.task_name)) is not None and not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, drain_until - time.monotonic()))
        await self.supervisor.stop(timeout=0.5)
        for lane in self.lanes:
            lane.drop_remaining("stop timeout reached")
