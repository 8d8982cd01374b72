"""One delivery attempt: call the consumer, classify what happened as an :class:`Outcome`.

It knows the retry policy (how many attempts, the backoff, ``RetryAfter``) but nothing of
queues: the lane decides what an outcome means for its items. A call that hangs past its
timeout is waited for here (the lane starts nothing else meanwhile), with a reminder in
the log while it lasts, so a hung consumer holds one thread, never one per timeout.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._clock import Clock, wait_done
from .._consumer import LaneSettings
from .._errors import ConsumerTimeout, ContainedError, Rejected, RetryAfter
from .._logs import LogLimiter
from .._secrets import mask_text, masked_error
from .._tick import Tick
from .._workers import Caller, CallTimeout, Started, is_awaitable
from .ledger import Ledger

__all__ = ["DELIVERED", "Attempt", "Delivery", "Later", "Outcome"]

logger = logging.getLogger("aioconveyor._lanes")

#: While a call hangs, the log is reminded after this long, then twice as long each time.
HUNG_REMINDER = 60.0


class Outcome(enum.Enum):
    """What one attempt came to."""

    DELIVERED = "delivered"  # the call returned (some items may have been rejected)
    REJECTED = "rejected"  # the consumer raised Rejected: no retry
    RETRY = "retry"  # it failed; try again after ``delay``
    FAILED = "failed"  # it failed and the retries are used up


@dataclass(frozen=True, slots=True)
class Attempt:
    """An outcome with its details."""

    outcome: Outcome
    rejected: int = 0  # items of the call counted as rejected
    delay: float = 0.0  # with RETRY: seconds to wait first
    error: Exception | None = None


#: The outcome of almost every call (immutable, so one for all).
DELIVERED = Attempt(Outcome.DELIVERED)


class Later:
    """What :meth:`Delivery.attempt_now` began and :meth:`Delivery.attempt` finishes: a
    call that suspended (a :class:`~aioconveyor._workers.Started`) or the awaitable a
    consumer returned, and the consumer's ``rejected`` count before the call."""

    __slots__ = ("rejected_before", "value")

    def __init__(self, value: Any, rejected_before: int | None) -> None:
        self.value = value
        self.rejected_before = rejected_before


class Delivery:
    """Calls one consumer and applies its retry policy."""

    def __init__(self, settings: LaneSettings, caller: Caller, ledger: Ledger, clock: Clock,
                 rng: random.Random | None, limiter: LogLimiter, *,
                 seed: str | None = None) -> None:
        """``rng``: draws the jitter; None makes one from ``seed`` when first needed (a
        ``Random`` is 2.5 KB and one more object per lane for the collector)."""
        self.settings = settings
        self.caller = caller
        self.ledger = ledger
        self.clock = clock
        self._rng = rng
        self._seed = seed
        self.limiter = limiter
        self._hung_for: float | None = None  # seconds a call run here has hung, if it has
        self._calling: datetime | None = None  # the event time of the call run here
        self._reminder = HUNG_REMINDER

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1, 2, ...): doubling, capped, jittered."""
        s = self.settings
        base = min(s.max_backoff, s.backoff * 2 ** (attempt - 1))
        if not s.backoff_jitter:
            return float(base)
        if self._rng is None:
            self._rng = random.Random(self._seed)
        return float(base * self._rng.uniform(1 - s.backoff_jitter, 1 + s.backoff_jitter))

    def attempt_now(self, payload: Any, n: int, tick: Tick,
                    retries_done: int) -> Attempt | Later:
        """:meth:`attempt` for an async consumer without a coroutine: its outcome when the
        call returns (or raises) without suspending, as most do; else a :class:`Later` to
        hand to ``attempt(later=...)``, which sees the call through."""
        # once per item per lane: _rejected_so_far() and _delivered() written out for
        # the usual consumer, which keeps no ``rejected`` counter and returns None
        rejected_before = getattr(self.settings.fn, "rejected", None)
        if rejected_before is not None and (not isinstance(rejected_before, int)
                                            or isinstance(rejected_before, bool)):
            rejected_before = None
        self._hung_for = None
        event_time = self._calling = tick.event_time
        try:
            result = self.caller.run_now(tick, payload, event_time)
        except Exception as exc:
            return self._failed(exc, n, tick, retries_done)
        if result is not None and (type(result) is Started or is_awaitable(result)):
            return Later(result, rejected_before)
        if rejected_before is None:
            return DELIVERED
        return self._delivered(rejected_before, n)

    async def attempt(self, payload: Any, n: int, tick: Tick, retries_done: int,
                      later: Later | None = None) -> Attempt:
        """Deliver ``payload`` (``n`` items, the last of ``tick``) once; ``later``: what
        :meth:`attempt_now` began."""
        s = self.settings
        event_time = tick.event_time
        rejected_before = self._rejected_so_far() if later is None else later.rejected_before
        try:
            if later is not None and type(later.value) is not Started:
                result = later.value  # it returned an awaitable: resolved below
                if is_awaitable(result):
                    await self.caller.resolve(result, s.timeout)
            elif self.caller.is_async:  # awaited in the lane's own task: no task per call
                self._hung_for = None
                self._calling = event_time
                started = self.clock.monotonic()
                try:
                    result = await self.caller.run_here(
                        tick, payload, event_time, timeout=s.timeout, on_hung=self._hung,
                        started=None if later is None else later.value)
                except CallTimeout:
                    if self._hung_for is None:  # cancelled in time (a hung one was counted)
                        self.ledger.bump("timeouts")
                    raise ConsumerTimeout(s.name, event_time, s.timeout) from None
                finally:
                    if self._hung_for is not None:
                        logger.info("consumer %s: the hung call for tick %s returned after "
                                    "about %.0f s", s.name, event_time.isoformat(),
                                    self.clock.monotonic() - started)
                if is_awaitable(result):  # an async __call__ that returned an awaitable
                    await self.caller.resolve(result, s.timeout)
            else:
                future = await self.caller.call(tick, payload, event_time, timeout=s.timeout)
                if future is None:
                    future = await self._timed_out(event_time)
                await self.caller.result(future, s.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed(exc, n, tick, retries_done)
        return self._delivered(rejected_before, n)

    def _delivered(self, rejected_before: int | None, n: int) -> Attempt:
        if rejected_before is None:
            return DELIVERED
        counted = max(0, (self._rejected_so_far() or 0) - rejected_before)
        return Attempt(Outcome.DELIVERED, rejected=min(n, counted)) if counted else DELIVERED

    def _hung(self, waited: float) -> float | None:
        """A call run here ignored its cancellation (from a timer, while it runs on):
        counted and logged once, then a reminder after HUNG_REMINDER s, doubling."""
        s = self.settings
        if self._hung_for is None:
            self._hung_for = waited
            self._reminder = HUNG_REMINDER
            self.ledger.bump("timeouts")
            self.ledger.bump("abandoned")
            self.limiter.log(
                logger, logging.ERROR, "hung",
                "consumer %s: call for tick %s hung past %g s; its task (it ignored "
                "cancellation) is left to finish and the lane starts no other call until it "
                "returns (new items wait in its queue)", s.name,
                self._calling.isoformat() if self._calling else "?", s.timeout,
            )
        else:
            self._hung_for = waited
            logger.warning("consumer %s: call still running after %.0f s", s.name, waited)
            self._reminder *= 2
        return self._reminder

    async def _timed_out(self, event_time: datetime) -> asyncio.Future[Any]:
        """The call ran past its timeout: cancelled (raise), or hung (wait for it)."""
        s = self.settings
        self.ledger.bump("timeouts")
        hung = self.caller.hung
        if hung is None:  # cancelled in time
            raise ConsumerTimeout(s.name, event_time, s.timeout)
        self.ledger.bump("abandoned")
        what = "thread" if not self.caller.is_async else "task (it ignored cancellation)"
        self.limiter.log(
            logger, logging.ERROR, "hung",
            "consumer %s: call for tick %s hung past %g s; its %s is left to finish and the "
            "lane starts no other call until it returns (new items wait in its queue)",
            s.name, event_time.isoformat(), s.timeout, what,
        )
        reminder = HUNG_REMINDER
        waited = s.timeout
        while not await wait_done(self.clock, hung, reminder):
            waited += reminder
            logger.warning("consumer %s: call for tick %s still running after %.0f s",
                           s.name, event_time.isoformat(), waited)
            reminder *= 2
        await self.caller.wait_hung()
        logger.info("consumer %s: the hung call returned after about %.0f s", s.name, waited)
        return hung

    def _failed(self, exc: Exception, n: int, tick: Tick, retries_done: int) -> Attempt:
        s = self.settings
        original = exc.original if isinstance(exc, ContainedError) else exc
        text, attached = masked_error(exc)
        self.ledger.error(f"{type(original).__name__}: {mask_text(str(exc))}")
        self.limiter.log(
            logger, logging.WARNING, ("error", type(original)),
            "consumer %s failed on tick %s: %s: %s",
            s.name, tick.event_time.isoformat(), type(original).__name__, text, exc=attached,
        )
        if isinstance(exc, Rejected):
            return Attempt(Outcome.REJECTED, rejected=n if exc.count is None
                           else min(n, exc.count), error=exc)
        if isinstance(exc, RetryAfter):
            return Attempt(Outcome.RETRY, delay=exc.seconds, error=exc)
        if retries_done < s.retries:
            return Attempt(Outcome.RETRY, delay=self.backoff(retries_done + 1), error=exc)
        self.limiter.log(
            logger, logging.ERROR, "give-up",
            "consumer %s: gave up on %d item(s) of tick %s after %d attempt(s)",
            s.name, n, tick.event_time.isoformat(), retries_done + 1,
        )
        return Attempt(Outcome.FAILED, error=exc)

    def _rejected_so_far(self) -> int | None:
        """The consumer object's own ``rejected`` counter, if it keeps one.

        Consumers that skip bad records (and still succeed) count them in an int attribute
        ``rejected``; what it grows by during a call is counted as rejected, not delivered.
        """
        value = getattr(self.settings.fn, "rejected", None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None
