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
import weakref
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, tzinfo
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _clock as clock_module
from . import _validate
from ._clock import Clock, SystemClock, timeout, wait_done
from ._consumer import Consumer, LaneSettings, Startup, callable_name, resolve
from ._endpoint import OpsAuth
from ._errors import ConveyorError, RestartBudgetExceeded, StartupError
from ._fanout import CHUNK, Fanout
from ._health import Health, assess
from ._lanes import Copier, Lane, LaneState, Ledger
from ._leader import KeyedLeader, Leader, accepts_key
from ._logs import LogLimiter
from ._producer import Producer, ProducerSettings, default_timeout, period_now
from ._producing import ProducerRun
from ._schedule import Misfire, Planner, Schedule, resolve_schedule
from ._scheduler import Scheduler
from ._stats import ConveyorCounters, ConveyorStats
from ._watchdog import LoopMonitor, Supervisor
from ._workers import guarded

if TYPE_CHECKING:
    from ._endpoint import OpsEndpoint
    from ._status import LatenessHistory

__all__ = ["AioConveyor"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger(__name__)

_live: weakref.WeakSet[AioConveyor] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    """At interpreter exit, let running conveyors drain briefly instead of vanishing."""
    for conv in list(_live):
        if conv.running:
            logger.info("conveyor %s: interpreter exiting, stopping it", conv.name)
            conv.stop()


atexit.register(_stop_all_at_exit)


def _producer_spec(argument: str, produce: Any,
                   settings: dict[str, Any] | None = None) -> Producer:
    """``produce`` as a :class:`Producer` (a callable with ``settings``, or one already)."""
    if isinstance(produce, Producer):
        if settings:
            _validate.conflict(next(iter(settings)), next(iter(settings.values())),
                               "a Producer(...)", "put the setting into the Producer")
        return produce
    _validate.callable_(argument, produce)
    try:
        return Producer(produce, **(settings or {}))
    except TypeError:  # an unknown keyword
        allowed = [f.name for f in dataclasses.fields(Producer) if f.name != "fn"]
        unknown = [k for k in settings or () if k not in allowed]
        if not unknown:
            raise
        _validate.fail(unknown[0], (settings or {})[unknown[0]],
                       f"is not a producer setting (they are: {', '.join(allowed)})")


#: The conveyor arguments that describe its ``produce=`` producer, with their defaults.
_PRODUCE_ARGUMENTS: dict[str, Any] = {
    "loop_interval": None, "loop_offset": 0.0, "cron": None, "cron_tz": None,
    "schedule": None, "eager": False, "jitter": 0.0, "max_ticks": None,
    "misfire": Misfire.SKIP, "misfire_grace": None, "producer_timeout": None,
    "error_backoff": None,
}


def _refuse_without_produce(**given: Any) -> None:
    """Without ``produce=`` the producer arguments would be silently ignored: refuse them."""
    for name, default in _PRODUCE_ARGUMENTS.items():
        value = given[name]
        if value is not default and value != default:
            _validate.fail(name, value,
                           "describes the produce= producer, and none was given; give each "
                           "producer its own settings (Producer(...), add_producer(...)); "
                           f"got {name}={value!r}")


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


_METRICS_HOST = "127.0.0.1"

#: The period the defaults derive from when the conveyor has no producer to go by.
_DEFAULT_PERIOD = 5.0


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
      :class:`~aioconveyor.Schedule` via ``schedule=``.
    * ``producers``: more producers (:class:`~aioconveyor.Producer`), each on its own
      schedule, feeding all consumers or the ones it names; ``produce`` may then be left
      out (see also :meth:`add_producer` and the :meth:`producer` decorator).
    """

    def __init__(
        self,
        produce: Callable[..., Any] | None = None,
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
        metrics_host: str = _METRICS_HOST,
        metrics_auth: str | tuple[str, str] | None = None,
        health_bound: float | None = None,
        producers: Sequence[Producer | Callable[..., Any]] = (),
    ) -> None:
        self.produce = None if produce is None else _validate.callable_("produce", produce)
        if isinstance(consumers, str | bytes) or not isinstance(consumers, Sequence):
            _validate.fail("consumers", consumers,
                           "must be a list of callables or Consumer(...) objects, "
                           f"got {consumers!r} ({type(consumers).__name__})")
        for i, c in enumerate(consumers):
            if not isinstance(c, Consumer):
                _validate.callable_(f"consumers[{i}]", c)
        self._consumers = [Consumer.wrap(c) for c in consumers]

        if clock is not None and not isinstance(clock, Clock):
            _validate.fail("clock", clock,
                           "must provide time(), monotonic(), sleep_until(), sleep(), "
                           f"call_later() and track(), got {clock!r}")
        self.clock: Clock = clock or SystemClock()
        if produce is None:
            _refuse_without_produce(
                loop_interval=loop_interval, loop_offset=loop_offset, cron=cron,
                cron_tz=cron_tz, schedule=schedule, eager=eager, jitter=jitter,
                max_ticks=max_ticks, misfire=misfire, misfire_grace=misfire_grace,
                producer_timeout=producer_timeout, error_backoff=error_backoff)
        if seed is not None:
            _validate.integer("seed", seed, minimum=None)
        self.seed = seed
        if isinstance(producers, str | bytes) or not isinstance(producers, Sequence):
            _validate.fail("producers", producers,
                           "must be a list of Producer(...) objects or callables, "
                           f"got {producers!r} ({type(producers).__name__})")
        more = [_producer_spec(f"producers[{i}]", p) for i, p in enumerate(producers)]
        more_settings = [spec.settle(self.clock, seed) for spec in more]

        # the classic single producer (produce= and the loop_* arguments), if given
        self.schedule: Schedule | None = None
        self.planner: Planner | None = None
        self.max_ticks: int | None = None
        self.producer_timeout: float | None = None
        self.error_backoff: float | None = None
        periods = [period_now(s.schedule, self.clock) for s in more_settings]
        if produce is not None:
            self.schedule = resolve_schedule(loop_interval, loop_offset, cron, cron_tz,
                                             schedule)
            _validate.boolean("eager", eager)
            period = period_now(self.schedule, self.clock)
            periods.insert(0, period)
            jitter = _validate.non_negative("jitter", jitter)
            if jitter >= period:
                _validate.fail("jitter", jitter, f"must be smaller than the tick period "
                                                 f"({period:g} s), got {jitter!r}")
            self.max_ticks = _validate.optional_integer("max_ticks", max_ticks, minimum=1)
            misfire = _validate.choice("misfire", misfire, Misfire)
            if misfire_grace is not None:
                _validate.non_negative("misfire_grace", misfire_grace)
            self.producer_timeout = self._timeout("producer_timeout", producer_timeout,
                                                  period)
            self.error_backoff = _validate.optional_positive("error_backoff", error_backoff)
            self.planner = Planner(self.schedule, misfire=misfire, misfire_grace=misfire_grace,
                                   jitter=jitter, eager=eager, rng=random.Random(seed))
        # the shortest period decides the conveyor-wide defaults
        period = min(periods) if periods else _DEFAULT_PERIOD
        self.consumer_timeout = self._timeout("consumer_timeout", consumer_timeout, period)
        self.restart_limit = _validate.integer("restart_limit", restart_limit, minimum=0)
        self.restart_window = _validate.positive("restart_window", restart_window)
        self.block_threshold = _validate.positive("block_threshold", block_threshold)
        self.stop_timeout = _validate.positive("stop_timeout", stop_timeout)
        if name is not None:
            _validate.text("name", name)
        self.name = name or (callable_name(produce) if produce is not None else "conveyor")
        if leader is not None and not isinstance(leader, Leader):
            _validate.fail("leader", leader,
                           f"must provide open(), close(), lead() and role, got {leader!r}")
        self.leader = leader
        self.metrics_port = _validate.optional_integer("metrics_port", metrics_port, minimum=0,
                                                       maximum=65535)
        _validate.text("metrics_host", metrics_host)
        if self.metrics_port is None and metrics_host != _METRICS_HOST:
            _validate.fail("metrics_host", metrics_host,
                           "has no effect without metrics_port (give the port too, or drop "
                           f"the host); got metrics_host={metrics_host!r}")
        if self.metrics_port is not None:
            try:
                importlib.import_module("prometheus_client")
            except ImportError as exc:
                raise ImportError(
                    'metrics_port needs prometheus-client: pip install "aioconveyor[metrics]"'
                ) from exc
        self.metrics_host = metrics_host
        self.metrics_auth = OpsAuth.of(metrics_auth)
        """Credentials for the status page, ``/status.json`` and ``/metrics`` (never shown)."""
        if self.metrics_port is None and self.metrics_auth is not None:
            _validate.fail("metrics_auth", "***",
                           "has no effect without metrics_port (give the port too, or drop "
                           "the credentials)")
        self._health_bound_given = health_bound is not None
        self.health_bound = (max(3 * period, 10.0) if health_bound is None
                             else _validate.positive("health_bound", health_bound))
        # settings of every consumer are resolved (and checked) now, not in the thread
        self._lane_settings = resolve(self._consumers, self.consumer_timeout)
        self._consumer_bounds = {
            s.name: self.health_bound + s.batch_age for s in self._lane_settings
        }

        self._counters = ConveyorCounters(self.name)
        self._ledgers = [self._counters.lane(s.name, self.clock) for s in self._lane_settings]
        self._producers: list[ProducerSettings] = []
        self._producer_names: set[str] = set()  # theirs: a name is checked in O(1)
        if produce is not None:
            assert self.planner is not None and self.producer_timeout is not None
            self._register(ProducerSettings(
                fn=produce, name=self.name, planner=self.planner,
                timeout=self.producer_timeout, error_backoff=self.error_backoff,
                max_ticks=self.max_ticks, consumers=None, leader_key=None, period=periods[0],
            ), "produce")
        for i, settings in enumerate(more_settings):
            self._register(settings, f"producers[{i}]")
        self._state = _State.NEW
        self._stop_timeout_asked: float | None = None  # stop() came while starting
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: _Engine | None = None
        self._exception: BaseException | None = None

    @staticmethod
    def _timeout(name: str, value: float | None, period: float) -> float:
        if value is None:
            return default_timeout(period)
        if value == math.inf:
            return math.inf
        return _validate.positive(name, value)

    def __repr__(self) -> str:
        if self.schedule is not None and len(self._producers) == 1:
            return f"<AioConveyor {self.name!r} {self._state.value} {self.schedule!r}>"
        return (f"<AioConveyor {self.name!r} {self._state.value} "
                f"{len(self._producers)} producers>")

    # -- producers -------------------------------------------------------------------

    def _register(self, settings: ProducerSettings, argument: str) -> None:
        """Add a producer's settings (checked: name, routes) and its counters; before the
        start, and by the engine while running."""
        self._check_producer(settings, argument)
        self._producers.append(settings)
        self._producer_names.add(settings.name)
        self._counters.producer(settings.name, settings.consumers)

    def _replace_settings(self, settings: ProducerSettings) -> None:
        """Put ``settings`` in the place of the producer of the same name (checked)."""
        index = self._index_of(settings.name)
        self._check_producer(settings, "produce", replacing=settings.name)
        self._producers[index] = settings
        with self._counters.lock:
            self._counters.producers[settings.name].consumers = settings.consumers

    def _check_producer(self, settings: ProducerSettings, argument: str,
                        replacing: str | None = None) -> None:
        """A name not taken (but by the producer it replaces), consumers that exist."""
        consumers = [s.name for s in self._lane_settings]
        if settings.name != replacing and settings.name in self._producer_names:
            _validate.fail(argument, settings.fn,
                           f"is named {settings.name!r} like another producer; give it "
                           "another name= (producer names are unique in a conveyor)")
        unknown = [c for c in settings.consumers or () if c not in consumers]
        if unknown:
            _validate.fail("consumers", list(settings.consumers or ()),
                           f"of producer {settings.name!r} names {unknown!r}, which the "
                           f"conveyor does not have (its consumers: {list(consumers)})")

    @property
    def _producer_bounds(self) -> dict[str, float]:
        """Each producer's health bound: ``health_bound`` if given, else three of its
        periods (at least 10 s)."""
        if self._health_bound_given:
            return {p.name: self.health_bound for p in self._producers}
        return {p.name: max(3 * p.period, 10.0) for p in self._producers}

    @property
    def producer_names(self) -> tuple[str, ...]:
        """The names of the producers, as used in logs, ``Tick.producer`` and ``stats()``."""
        return tuple(p.name for p in self._producers)

    def add_producer(self, produce: Producer | Callable[..., Any], /, *,
                     timeout: float | None = None, **settings: Any) -> str:
        """Add a producer: a :class:`~aioconveyor.Producer`, or a callable with the
        keyword arguments of ``Producer`` (``every=``, ``offset=``, ``cron=``, ``name=``,
        ``consumers=[...]``, ...). Returns its name.

        Before the start it is registered; while running it starts ticking at once (from
        any thread, like :meth:`add_consumer`; ``timeout`` bounds the wait). Raises
        :class:`~aioconveyor.SettingError` for bad settings, a name already taken or a
        consumer it names that the conveyor does not have.
        """
        spec = _producer_spec("produce", produce, settings)
        resolved = spec.settle(self.clock, self.seed)
        with self._lock:
            if self._state is _State.NEW:
                self._register(resolved, "produce")
                return resolved.name
        return self._call_engine(lambda e, deadline: e.add_producer(resolved), timeout)

    def producer(self, fn: F | None = None, /, **settings: Any) -> Any:
        """Decorator form of :meth:`add_producer`, before the start::

            @conv.producer(every=10, offset=2)
            async def inverter(event_time): ...

        ``@conv.producer`` without arguments ticks every 5 s. Returns the function itself.
        """
        if fn is not None:
            self.add_producer(fn, **settings)
            return fn

        def register(f: F) -> F:
            self.add_producer(f, **settings)
            return f

        return register

    def remove_producer(self, name: str, timeout: float | None = None) -> None:
        """Stop ticking producer ``name``. A tick under way may finish (its result is
        delivered) within ``timeout`` (default ``stop_timeout``), then it is cancelled.
        Its counts stay in the conveyor's totals."""
        with self._lock:
            if self._state is _State.NEW:
                self._unregister(name)
                return
        self._call_engine(lambda e, deadline: e.remove_producer(name, deadline), timeout)

    def replace_producer(self, name: str, produce: Producer | Callable[..., Any], /, *,
                         timeout: float | None = None, **settings: Any) -> None:
        """Swap producer ``name`` for a new function and/or settings (same keywords as
        :meth:`add_producer`; the name stays). It continues on the grid after the last
        tick the old one fired (a tick under way finishes first, within ``timeout``);
        its stats go on under the same name."""
        spec = _producer_spec("produce", produce, settings)
        resolved = dataclasses.replace(spec.settle(self.clock, self.seed), name=name)
        if spec.leader_key is None:
            resolved = dataclasses.replace(resolved, leader_key=self._leader_key_of(name))
        with self._lock:
            if self._state is _State.NEW:
                self._replace_settings(resolved)
                return
        self._call_engine(lambda e, deadline: e.replace_producer(name, resolved, deadline),
                          timeout)

    def _leader_key_of(self, name: str) -> str | None:
        for p in self._producers:
            if p.name == name:
                return p.leader_key
        return name

    def _index_of(self, name: str) -> int:
        for i, p in enumerate(self._producers):
            if p.name == name:
                return i
        raise KeyError(f"no producer named {name!r}; have {list(self.producer_names)}")

    def _unregister(self, name: str) -> None:
        del self._producers[self._index_of(name)]
        self._producer_names.discard(name)
        self._counters.retire(name)

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
        stats = self._counters.snapshot()
        group_stats = getattr(self.leader, "group_stats", None)
        if callable(group_stats):  # a group backend (PostgresGroup) shows its view
            stats = dataclasses.replace(stats, group=group_stats())
        return stats

    def health(self, now: datetime | None = None) -> Health:
        """Healthy while running, ticking on time (every producer within its own bound:
        ``health_bound`` if given, else three of its periods, at least 10 s), and every
        consumer delivering within ``health_bound`` (plus its ``batch_age``); else says
        which part is not (``"scheduler"``, ``"producer:<name>"``, ``"consumer:<name>"``;
        see :func:`aioconveyor._health.assess` for the rules). ``now`` defaults to the
        clock's."""
        when = now or datetime.fromtimestamp(self.clock.time(), UTC)
        return self._judge(self.stats(), when)

    def _judge(self, stats: ConveyorStats, now: datetime) -> Health:
        """The health verdict over ``stats`` (a snapshot already taken) at ``now``."""
        return assess(stats, now=now, bound=self.health_bound,
                      consumer_bounds=self._consumer_bounds,
                      producer_bounds=self._producer_bounds)

    @property
    def ready(self) -> bool:
        """Running, with every consumer open (``/readyz``)."""
        return self.running and all(c.state == LaneState.OPEN for c in self.stats().consumers)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where the status page ``/``, ``/status.json``, ``/metrics``, ``/healthz`` and
        ``/readyz`` are served (while running)."""
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
        with self._lock:
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
            if self._exception is None:  # something escaped the engine: say so, never hide it
                self._exception = exc
            if not isinstance(exc, ConveyorError):
                logger.error("conveyor %s: event loop ended with an error", self.name, exc_info=exc)
        finally:
            with self._lock:
                self._state = _State.STOPPED
            self._finished.set()
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
            elif self._state is _State.STARTING:
                # recorded under the lock: the engine checks it before it starts ticking
                self._stop_timeout_asked = timeout
            loop, engine = self._loop, self._engine
        if loop is not None and engine is not None:
            try:
                loop.call_soon_threadsafe(engine.request_stop, timeout)
            except RuntimeError:  # the loop already closed
                pass
        if self._in_own_loop():
            return  # cannot wait for ourselves; the loop finishes after this callback
        # the facade waits in real time for a real thread; the engine's deadline is on its clock
        if not self._finished.wait(timeout + 1.0):
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
        future = asyncio.run_coroutine_threadsafe(engine.within(call, timeout), loop)
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
        self.clock = conv.clock
        counters = conv._counters
        self.counters = counters
        self.copier = Copier(conv.name, conv.clock, self._next_tick)
        self.lanes = [self._lane(settings, ledger)
                      for settings, ledger in zip(conv._lane_settings, conv._ledgers,
                                                  strict=True)]
        self.failure: BaseException | None = None
        self._deadline: float | None = None
        self._stop_event = asyncio.Event()
        self._changes: set[asyncio.Task[Any]] = set()  # add/remove/replace calls under way
        self.supervisor = Supervisor(counters, conv.clock, restarts=conv.restart_limit,
                                     window=conv.restart_window)
        self.fanout = Fanout(self.lanes, conv.clock, self._next_tick)
        self.scheduler = Scheduler(conv.clock, self.fanout.offer, counters, name=conv.name,
                                   on_finished=self._ticks_done,
                                   offer_now=self.fanout.offer_now)
        self._limiter = LogLimiter(now=conv.clock.monotonic)  # shared by every producer
        self._warned_keys = False
        for settings in conv._producers:
            self.scheduler.add(self._producer_run(settings))
        self.monitor = LoopMonitor(counters, conv.name, conv.block_threshold, conv.clock)
        self.endpoint: OpsEndpoint | None = None
        self.history: LatenessHistory | None = None

    def _next_tick(self) -> float | None:
        return self.scheduler.next_fire()

    def _producer_run(self, settings: ProducerSettings,
                      last_event: float | None = None) -> ProducerRun:
        counters = self.counters.producers[settings.name]
        leader = self.conv.leader
        if settings.leader_key is not None and leader is not None and not accepts_key(leader):
            # a Leader whose lead() takes no key= answers for the whole instance
            if not self._warned_keys:
                self._warned_keys = True
                logger.warning("conveyor %s: the leader backend %r elects no per-producer "
                               "keys (its lead() takes no key=); every producer follows "
                               "its one election", self.conv.name, leader)
            settings = dataclasses.replace(settings, leader_key=None)
        return ProducerRun(settings, counters, self.counters, self.clock,
                           conveyor=self.conv.name, lanes=self._route(settings.consumers),
                           limiter=self._limiter, leader=self.conv.leader,
                           last_event=last_event)

    def _route(self, names: tuple[str, ...] | None) -> list[Lane]:
        """The lanes a producer feeds: all (the engine's own list, kept up to date) or the
        ones named."""
        if names is None:
            return self.lanes
        return [lane for lane in self.lanes if lane.name in names]

    def _reroute(self) -> None:
        for run in self.scheduler.runs:
            if run.settings.consumers is not None:
                run.lanes = self._route(run.settings.consumers)

    def _lane(self, settings: LaneSettings, ledger: Ledger, generation: int = 1) -> Lane:
        conv = self.conv
        seed = None if conv.seed is None else f"{conv.seed}:{settings.name}"
        return Lane(settings, ledger, conveyor=conv.name, clock=conv.clock, copier=self.copier,
                    seed=seed, generation=generation)

    def request_stop(self, timeout: float | None = None) -> None:
        """Begin a graceful stop that must be over within ``timeout`` seconds of the clock."""
        deadline = self.clock.monotonic() + (self.conv.stop_timeout if timeout is None
                                             else timeout)
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline
        self._stop_event.set()

    async def within(self, call: Callable[[_Engine, float], Coroutine[Any, Any, T]],
                     timeout: float) -> T:
        """Run an add/remove/replace ``call`` with a deadline ``timeout`` from now (clock).

        A stop that comes meanwhile lets it finish first (see :meth:`_shutdown`)."""
        task = asyncio.current_task()
        assert task is not None
        self._changes.add(task)
        try:
            return await call(self, self.clock.monotonic() + timeout)
        finally:
            self._changes.discard(task)

    def _ticks_done(self) -> None:
        runs = self.scheduler.runs
        if len(runs) == 1:
            logger.info("conveyor %s: max_ticks (%d) reached, stopping", self.conv.name,
                        runs[0].settings.max_ticks)
        else:
            logger.info("conveyor %s: every producer reached its max_ticks, stopping",
                        self.conv.name)
        self.request_stop()

    def _budget_exceeded(self, exc: RestartBudgetExceeded) -> None:
        self.failure = exc
        self.request_stop()

    def _watch_lane(self, lane: Lane) -> None:
        # bound methods, not closures: each closure is two objects more per lane
        self.supervisor.watch(lane.task_name, lane.run, lane.exhausted,
                              on_restart=lane.restarted)

    @property
    def scheduler_name(self) -> str:
        return f"aioconveyor[{self.conv.name}].scheduler"

    def _startup_error(self, lane: Lane, exc: BaseException) -> StartupError:
        err = StartupError(
            f"conveyor {self.conv.name!r}: consumer {lane.name!r} "
            f"failed to open: {type(exc).__name__}: {exc}"
        )
        err.__cause__ = exc
        return err

    def _recover(self, lane: Lane, recover: bool = True) -> None:
        try:
            lane.recover(recover)
        except Exception as exc:
            raise StartupError(
                f"conveyor {self.conv.name!r}: consumer {lane.name!r} cannot use its spool: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def _open_all(self) -> None:
        """Open every consumer at once; one with ``startup="fail"`` that fails stops the
        start, the others keep retrying on their own task."""
        for lane in self.lanes:
            self._recover(lane)
        errors = await asyncio.gather(*(lane.try_open() for lane in self.lanes))
        for lane, error in zip(self.lanes, errors, strict=True):
            if error is not None and lane.settings.startup is Startup.FAIL:
                raise self._startup_error(lane, error)

    async def _close_lanes(self) -> None:
        for i, lane in enumerate(reversed(self.lanes), 1):
            await lane.close(self._close_budget())
            if i % CHUNK == 0:  # thousands of lanes: let the loop turn now and then
                await asyncio.sleep(0)
        self.copier.close()

    # -- consumers added, removed or replaced while running ---------------------------

    def _find(self, name: str) -> Lane:
        for lane in self.lanes:
            if lane.name == name:
                return lane
        raise KeyError(f"no consumer named {name!r}; have {[x.name for x in self.lanes]}")

    def _check_running(self) -> None:
        if self._stop_event.is_set():
            raise RuntimeError(f"conveyor {self.conv.name!r} is stopping")

    def _sync_settings(self) -> None:
        conv = self.conv
        conv._lane_settings = [lane.settings for lane in self.lanes]
        conv._consumer_bounds = {s.name: conv.health_bound + s.batch_age
                                 for s in conv._lane_settings}
        self._reroute()

    # -- producers added, removed or replaced while running ---------------------------

    async def add_producer(self, settings: ProducerSettings) -> str:
        self._check_running()
        self.conv._register(settings, "produce")
        self.scheduler.add(self._producer_run(settings))
        logger.info("conveyor %s: producer %s added", self.conv.name, settings.name)
        return settings.name

    async def remove_producer(self, name: str, deadline: float) -> None:
        self._check_running()
        run = await self.scheduler.remove(name, self._budget(deadline))
        self.conv._unregister(name)
        await self._release(run)
        logger.info("conveyor %s: producer %s removed", self.conv.name, name)

    async def _release(self, run: ProducerRun) -> None:
        """Give up a removed producer's leader key at once (else it times out)."""
        leader, key = self.conv.leader, run.settings.leader_key
        if key is None or not isinstance(leader, KeyedLeader):
            return
        try:
            async with timeout(self.clock, self._close_budget()):
                await guarded(leader.release(key))
        except Exception:
            logger.exception("conveyor %s: releasing the leader key %r failed (it expires "
                             "on its own)", self.conv.name, key)

    async def replace_producer(self, name: str, settings: ProducerSettings,
                               deadline: float) -> None:
        self._check_running()
        self.scheduler.run_of(name)  # KeyError if there is none
        self.conv._replace_settings(settings)  # checked before the old one stops
        old = await self.scheduler.remove(name, self._budget(deadline))
        self.scheduler.add(self._producer_run(settings, last_event=old.last_event))
        logger.info("conveyor %s: producer %s replaced", self.conv.name, name)

    async def _open_new(self, lane: Lane, recover: bool = True) -> None:
        """Open a lane added or swapped in while running; raises StartupError (a caller is
        there to see it)."""
        self._recover(lane, recover)
        try:
            await lane.open()
        except Exception as exc:
            await lane.close(self._close_budget())
            raise self._startup_error(lane, exc) from exc

    async def add_lane(self, spec: Consumer) -> str:
        self._check_running()
        (settings,) = resolve([spec], self.conv.consumer_timeout)
        if any(lane.name == settings.name for lane in self.lanes):
            raise ValueError(f"a consumer named {settings.name!r} exists already; give another "
                             "name= or use replace_consumer()")
        ledger = self.counters.lane(settings.name, self.clock)
        lane = self._lane(settings, ledger)
        try:
            await self._open_new(lane)
        except BaseException:
            with self.counters.lock:
                self.counters.lanes.remove(ledger)
            raise
        self.lanes.append(lane)
        self._watch_lane(lane)
        self._sync_settings()
        logger.info("conveyor %s: consumer %s added", self.conv.name, settings.name)
        return settings.name

    async def remove_lane(self, name: str, deadline: float) -> None:
        self._check_running()
        lane = self._find(name)
        feeding = [run.name for run in self.scheduler.runs
                   if run.settings.consumers is not None and name in run.settings.consumers]
        if feeding:
            raise ValueError(f"consumer {name!r} is named by producer(s) {feeding}: "
                             "replace or remove them first (their items would go nowhere)")
        self.lanes.remove(lane)  # from now on it gets no new items
        self._sync_settings()
        await self._drain_lane(lane, deadline, "consumer removed")
        await lane.close(self._budget(deadline))
        with self.counters.lock:
            self.counters.lanes.remove(lane.ledger)
        logger.info("conveyor %s: consumer %s removed", self.conv.name, name)

    async def replace_lane(self, name: str, spec: Consumer, deadline: float) -> None:
        self._check_running()
        old = self._find(name)
        (settings,) = resolve([dataclasses.replace(spec, name=name)], self.conv.consumer_timeout)
        new = self._lane(settings, old.ledger, generation=old.generation + 1)
        same_spool = (settings.spool is not None and old.settings.spool is not None
                      and os.fspath(settings.spool) == os.fspath(old.settings.spool)
                      and settings.spool_format == old.settings.spool_format)
        # if this fails, the old one goes on; a shared spool's items come from the old lane
        await self._open_new(new, recover=not same_spool)
        self.lanes[self.lanes.index(old)] = new  # the next item goes to the new one
        moved = old.hand_over(new)  # and so does the old one's backlog, in order
        self._sync_settings()
        # the old one finishes its call in flight (or hands that batch over too) before the
        # new one starts, so the order holds across the swap
        await self._drain_lane(old, deadline, "consumer replaced")
        self._watch_lane(new)
        await old.close(self._budget(deadline))
        logger.info("conveyor %s: consumer %s replaced (%d queued items handed over)",
                    self.conv.name, name, moved)

    async def _drain_lane(self, lane: Lane, deadline: float, why: str) -> None:
        task = self.supervisor.task(lane.task_name)
        self.supervisor.forget(lane.task_name)
        lane.begin_drain(deadline)
        if task is not None and not task.done():
            if not await wait_done(self.clock, task, self._budget(deadline, 0.0)):
                task.cancel()
                await wait_done(self.clock, task, 1.0)  # a last grace for its cleanup
        lane.drop_remaining(f"{why}, drain timeout reached")

    def _budget(self, deadline: float, floor: float = 0.05) -> float:
        return max(floor, deadline - self.clock.monotonic())

    async def run(self, ready: Callable[[], None]) -> None:
        token = clock_module._running.set(self.clock)  # inherited by every task we start
        try:
            await self._run(ready)
        finally:
            clock_module._running.reset(token)

    async def _run(self, ready: Callable[[], None]) -> None:
        conv = self.conv
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._close_lanes)
            await self._open_all()
            if conv.leader is not None:
                leader = conv.leader
                try:
                    await leader.open()
                except Exception as exc:
                    raise StartupError(
                        f"conveyor {conv.name!r}: leader backend failed to open: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                stack.push_async_callback(self._close_leader, leader)
            if conv.metrics_port is not None:
                self.endpoint = self._make_endpoint()
                await self.endpoint.start()
                stack.push_async_callback(self.endpoint.close)
                assert self.history is not None
                self.history.start()
                stack.callback(self.history.stop)
            self.monitor.start()
            stack.callback(self.monitor.stop)
            for lane in self.lanes:
                self._watch_lane(lane)
            with conv._lock:  # a stop() during start is honoured before the first tick
                early = conv._stop_timeout_asked
            if early is not None:
                self.request_stop(early)
            else:
                self.supervisor.watch(self.scheduler_name, self.scheduler.run,
                                      self._budget_exceeded)
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
                with self.counters.lock:
                    self.counters.running = False

    def _make_endpoint(self) -> OpsEndpoint:
        from . import _metrics as metrics
        from ._endpoint import OpsEndpoint

        conv = self.conv

        from ._schedule import schedule_text
        from ._status import LatenessHistory, StatusBoard, page

        def render() -> tuple[bytes, str]:
            return metrics.render(conv.stats), metrics.CONTENT_TYPE

        def schedules() -> dict[str, str]:
            return {p.name: schedule_text(p.schedule) for p in tuple(conv._producers)}

        self.history = LatenessHistory(self.counters, self.clock)
        board = StatusBoard(stats=conv.stats, health=conv._judge, schedules=schedules,
                            clock=self.clock, started=self.clock.time(),
                            history=self.history, leader=conv.leader is not None)
        assert conv.metrics_port is not None
        return OpsEndpoint(conv.metrics_host, conv.metrics_port, health=conv.health,
                           ready=lambda: conv.ready, metrics=render, status=board.render,
                           page=page(), auth=conv.metrics_auth)

    async def _close_leader(self, leader: Leader) -> None:
        try:
            async with timeout(self.clock, self._close_budget()):
                await guarded(leader.close())
        except Exception:
            logger.exception("conveyor %s: leader backend close failed", self.conv.name)

    def _close_budget(self) -> float:
        if self._deadline is None:
            return self.conv.stop_timeout
        return self._budget(self._deadline)

    async def _shutdown(self) -> None:
        assert self._deadline is not None
        deadline = self._deadline
        reserve = min(1.0, (deadline - self.clock.monotonic()) / 4)  # kept for closing
        self.supervisor.pause()
        await self.supervisor.stop([self.scheduler_name], timeout=1.0)
        await self.scheduler.stop_ticks(1.0)
        self.scheduler.close()
        drain_until = deadline - max(0.0, reserve)
        if self._changes:  # a replace under way hands its backlog over before we drain
            changes = asyncio.gather(*self._changes, return_exceptions=True)
            await wait_done(self.clock, changes, self._budget(drain_until, 0.0))
        # with thousands of lanes, in chunks: waking them all in one turn, and one gather
        # of all their tasks, held the loop for a whole burst (and its garbage collection)
        for i, lane in enumerate(tuple(self.lanes), 1):
            lane.begin_drain(drain_until)
            if i % CHUNK == 0:
                await asyncio.sleep(0)
        tasks = [t for lane in self.lanes
                 if (t := self.supervisor.task(lane.task_name)) is not None and not t.done()]
        for task in tasks:  # one at a time: most are done by the time their turn comes
            if not task.done() and not await wait_done(self.clock, task,
                                                       self._budget(drain_until, 0.0)):
                break
        await self.supervisor.stop(timeout=0.5)
        for lane in self.lanes:
            lane.drop_remaining("stop timeout reached" if lane.state is LaneState.OPEN
                                else f"stopped while its consumer was {lane.state}")
