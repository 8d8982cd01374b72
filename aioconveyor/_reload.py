"""Reloading a running ``aioconveyor run``: what changed in the file, and applying it.

:func:`plan_reload` is the pure part: it compares the tables the running conveyor was
built from with the tables of the file as it is now. Consumers are matched by name (the
name the runner gives each one: its ``name =``, else the consumer's own, ``#2`` for
duplicates). A consumer whose table is the same (after ``--set`` and ``${ENV}``) is left
alone; a changed one is replaced, a missing one removed, a new one added. ``[conveyor]``,
``[producer]``, ``[leader]`` and ``[metrics]`` cannot change while running: the plan names
them so the runner can say that they need a restart.

:class:`Reloader` does the rest for the runner: re-read and validate the file (a broken
file is logged and ignored), plan, and apply the consumer changes through
``AioConveyor.remove_consumer`` / ``replace_consumer`` / ``add_consumer``, which drain
what the old consumers had queued before closing them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ._config import ConfigError, ConfigTables, LoadedConfig, load_config
from ._conveyor import AioConveyor
from ._errors import ConveyorError

__all__ = ["RESTART_SECTIONS", "ReloadPlan", "Reloader", "plan_reload"]

logger = logging.getLogger(__name__)

RESTART_SECTIONS = ("conveyor", "producer", "leader", "metrics")
"""Tables a running conveyor cannot take over: changing them needs a restart."""


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload changes: consumer names per kind of change, in file order, and the
    sections that changed but need a restart."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()

    @property
    def consumers_change(self) -> bool:
        """True if any consumer is added, removed or replaced."""
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        """One line for the log, e.g. ``1 replaced (csv), 1 added (mqtt), 2 unchanged``."""

        def part(names: tuple[str, ...], what: str) -> str:
            return f"{len(names)} {what}" + (f" ({', '.join(names)})" if names else "")

        text = ", ".join([part(self.changed, "replaced"), part(self.added, "added"),
                          part(self.removed, "removed"), f"{len(self.unchanged)} unchanged"])
        if self.restart_needed:
            tables = ", ".join(f"[{s}]" for s in self.restart_needed)
            text += f"; not applied (needs a restart): {tables}"
        return text


def plan_reload(running: ConfigTables, new: ConfigTables) -> ReloadPlan:
    """Compare the tables of the running conveyor with the new ones (no I/O)."""
    old_consumers, new_consumers = running.consumers, new.consumers
    return ReloadPlan(
        added=tuple(n for n in new_consumers if n not in old_consumers),
        removed=tuple(n for n in old_consumers if n not in new_consumers),
        changed=tuple(n for n, t in new_consumers.items()
                      if n in old_consumers and old_consumers[n] != t),
        unchanged=tuple(n for n, t in new_consumers.items()
                        if n in old_consumers and old_consumers[n] == t),
        restart_needed=tuple(s for s in RESTART_SECTIONS
                             if _section(running, s) != _section(new, s)),
    )


def _section(tables: ConfigTables, name: str) -> Any:
    value = tables.sections.get(name)
    return {} if value is None and name == "conveyor" else value  # no table: the defaults


class Reloader:
    """Re-reads a runner's config file and brings the running conveyor's consumers in line.

    ``running`` starts as the tables the conveyor was built from and follows what was
    actually applied: a consumer that failed to open on one reload is tried again on the
    next. New secrets are added to ``secrets`` (the set the log masks) before anything
    about the new file is logged.
    """

    def __init__(
        self,
        conveyor: AioConveyor,
        loaded: LoadedConfig,
        *,
        overrides: Sequence[str] = (),
        secrets: set[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.conveyor = conveyor
        self.path: Path = loaded.path
        self.overrides = tuple(overrides)
        self.secrets = set(loaded.secrets) if secrets is None else secrets
        self.timeout = timeout
        self.running = loaded.tables

    def reload(self) -> ReloadPlan | None:
        """Re-read the file and apply what can be applied; ``None`` if the file is unusable
        (then nothing changes). Blocks while old consumers drain; call it from the thread
        that handles the signal, never from the signal handler or the conveyor's loop."""
        path = os.fspath(self.path)
        try:
            loaded = load_config(self.path, overrides=self.overrides)
        except ConfigError as exc:
            logger.error("reload: %s; keeping the running configuration", exc)
            return None
        self.secrets.update(loaded.secrets)
        plan = plan_reload(self.running, loaded.tables)
        for section in plan.restart_needed:
            logger.warning("reload: [%s] changed in %s, which needs a restart: not applied "
                           "(the running conveyor keeps the old one)", section, path)
        consumers = dict(self.running.consumers)
        conv, timeout = self.conveyor, self.timeout
        failed: list[str] = []
        for name in plan.removed:
            if name not in conv.consumer_names or self._apply(
                    "remove", name, partial(conv.remove_consumer, name, timeout)):
                del consumers[name]
            else:
                failed.append(name)
        for name in (*plan.changed, *plan.added):
            spec = loaded.specs[name]
            if name in plan.changed:
                ok = self._apply("replace", name,
                                 partial(conv.replace_consumer, name, spec, timeout))
            else:
                ok = self._apply("add", name, partial(conv.add_consumer, spec, timeout))
            if ok:
                consumers[name] = loaded.tables.consumers[name]
            else:
                failed.append(name)
        self.running = ConfigTables(self.running.sections, consumers)
        summary = plan.summary()
        if failed:
            summary += f"; failed (see above): {', '.join(failed)}"
        log = logger.warning if failed or plan.restart_needed else logger.info
        log("reload of %s: %s", path, summary)
        return plan

    def _apply(self, what: str, name: str, call: Callable[[], object]) -> bool:
        try:
            call()
        except (ConveyorError, KeyError, ValueError, TypeError, RuntimeError,
                TimeoutError) as exc:
            keeps = {"remove": "it keeps running",
                     "replace": "the old one keeps running",
                     "add": "it is not running; the next reload tries again"}[what]
            logger.error("reload: could not %s consumer %s (%s): %s: %s", what, name, keeps,
                         type(exc).__name__, exc)
            return False
        return True  # the conveyor logs each change itself
