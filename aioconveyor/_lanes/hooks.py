"""A lane's ``on_delivered`` / ``on_error`` hooks: whatever they do, the lane goes on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .._clock import Clock
from .._logs import LogLimiter
from .._secrets import masked_error
from .._workers import Caller, CallerBusy
from .ledger import Ledger

__all__ = ["Hooks"]

logger = logging.getLogger("aioconveyor._lanes")


class Hooks:
    """Runs the hooks of one lane, each through its own :class:`Caller`: an error, a
    ``BaseException`` or a hang is counted in ``hook_errors`` and logged once per burst;
    a hook still hung from an earlier call is skipped (and counted) rather than started
    again."""

    def __init__(self, name: str, task_name: str, timeout: float, ledger: Ledger,
                 clock: Clock, limiter: LogLimiter, *,
                 on_delivered: Callable[..., Any] | None,
                 on_error: Callable[..., Any] | None) -> None:
        self.name = name
        self.timeout = timeout
        self.ledger = ledger
        self.limiter = limiter
        self._callers = {
            which: Caller(hook, f"{task_name}.{which}", clock)
            for which, hook in (("on_delivered", on_delivered), ("on_error", on_error))
            if hook is not None
        }

    async def delivered(self, payload: Any, event_time: Any) -> None:
        await self._run("on_delivered", payload, event_time)

    async def failed(self, error: BaseException | None, payload: Any, event_time: Any) -> None:
        await self._run("on_error", error, payload, event_time)

    async def _run(self, which: str, *args: Any) -> None:
        caller = self._callers.get(which)
        if caller is None:
            return
        try:
            future = await caller.call(None, *args, timeout=self.timeout)
            if future is None:
                raise TimeoutError(f"did not return within {self.timeout:g} s")
            await caller.result(future, self.timeout)
        except asyncio.CancelledError:
            raise
        except (Exception, CallerBusy) as exc:
            self.ledger.bump("hook_errors")
            text, attached = masked_error(exc)
            self.limiter.log(
                logger, logging.WARNING, ("hook", which),
                "consumer %s: %s hook failed: %s: %s", self.name, which, type(exc).__name__,
                text, exc=attached,
            )

    def close(self) -> None:
        for caller in self._callers.values():
            caller.close()
