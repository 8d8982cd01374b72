"""Reloading a running ``aioconveyor run``: what changed in the file, and applying it.

:func:`plan_reload` is the pure part: it compares the tables the running conveyor was
built from with the tables of the file as it is now. Consumers are matched by name (the
name the runner gives each one: its ``name =``, else the consumer's own, ``#2`` for
duplicates). A consumer whose table is the same (after ``--set`` and ``${ENV}``) is left
alone; a changed one is replaced, a missing one removed, a new one added. ``[[producers]]``
tables are matched by producer name the same way. ``[conveyor]``, ``[producer]``,
``[leader]`` and ``[metrics]`` cannot change while running (nor can a file switch between
``[producer]`` and ``[[producers]]``): the plan names them so the runner can say that they
need a restart.

:class:`Reloader` does the rest for the runner: re-read and validate the file (a broken
file is logged and ignored), plan, and apply the changes through the conveyor's
``remove_*`` / ``replace_*`` / ``add_*`` methods, which drain what old consumers had queued
before closing them and let a producer's tick under way finish. The order keeps every step
valid (a consumer cannot be removed while a producer names it, a producer cannot name a
consumer that is not there yet): producers removed and replaced first, then consumers
removed, replaced and added, then producers added (and the replacements that name a new
consumer, which ran in between with the routes that exist).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
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
    """What a reload changes: consumer names per kind of change, in file order, the same
    for ``[[producers]]`` (``producers_*``), and the sections that changed but need a
    restart."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()
    producers_added: tuple[str, ...] = ()
    producers_removed: tuple[str, ...] = ()
    producers_changed: tuple[str, ...] = ()
    producers_unchanged: tuple[str, ...] = ()

    @property
    def consumers_change(self) -> bool:
        """True if any consumer is added, removed or replaced."""
        return bool(self.added or self.removed or self.changed)

    @property
    def producers_change(self) -> bool:
        """True if any producer is added, removed or replaced."""
        return bool(self.producers_added or self.producers_removed or self.producers_changed)

    def summary(self) -> str:
        """One line for the log, e.g. ``1 replaced (csv), 1 added (mqtt), 2 unchanged``
        (then ``; producers: ...`` the same way, with ``[[producers]]``)."""

        def part(names: tuple[str, ...], what: str) -> str:
            return f"{len(names)} {what}" + (f" ({', '.join(names)})" if names else "")

        def parts(changed: tuple[str, ...], added: tuple[str, ...], removed: tuple[str, ...],
                  unchanged: tuple[str, ...]) -> str:
            return ", ".join([part(changed, "replaced"), part(added, "added"),
                              part(removed, "removed"), f"{len(unchanged)} unchanged"])

        text = parts(self.changed, self.added, self.removed, self.unchanged)
        if self.producers_change or self.producers_unchanged:
            text += "; producers: " + parts(self.producers_changed, self.producers_added,
                                            self.producers_removed, self.producers_unchanged)
        if self.restart_needed:
            tables = ", ".join(f"[{s}]" for s in self.restart_needed)
            text += f"; not applied (needs a restart): {tables}"
        return text


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    """(added, removed, changed, unchanged) names, in file order."""
    return (tuple(n for n in new if n not in old),
            tuple(n for n in old if n not in new),
            tuple(n for n, t in new.items() if n in old and old[n] != t),
            tuple(n for n, t in new.items() if n in old and old[n] == t))


def plan_reload(running: ConfigTables, new: ConfigTables) -> ReloadPlan:
    """Compare the tables of the running conveyor with the new ones (no I/O)."""
    added, removed, changed, unchanged = _diff(running.consumers, new.consumers)
    restart = [s for s in RESTART_SECTIONS if _section(running, s) != _section(new, s)]
    producers: tuple[tuple[str, ...], ...] = ((), (), (), ())
    if bool(running.producers) != bool(new.producers):  # [producer] <-> [[producers]]
        if "producer" not in restart:
            restart.insert(RESTART_SECTIONS.index("producer"), "producer")
    else:
        producers = _diff(running.producers, new.producers)
    return ReloadPlan(
        added=added, removed=removed, changed=changed, unchanged=unchanged,
        restart_needed=tuple(restart),
        producers_added=producers[0], producers_removed=producers[1],
        producers_changed=producers[2], producers_unchanged=producers[3],
    )


def _section(tables: ConfigTables, name: str) -> Any:
    value = tables.sections.get(name)
    return {} if value is None and name == "conveyor" else value  # no table: the defaults


class Reloader:
    """Re-reads a runner's config file and brings the running conveyor's consumers and
    producers in line.

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
        # the state of one reload() while it is applied
        self._loaded = loaded
        self._consumers: dict[str, Mapping[str, Any]] = {}
        self._producers: dict[str, Mapping[str, Any]] = {}
        self._failed: list[str] = []

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
        self._consumers = dict(self.running.consumers)
        self._producers = dict(self.running.producers)
        self._failed = []
        self._loaded = loaded
        later = self._producers_first(plan)
        self._apply_consumers(plan)
        self._producers_last(plan, later)
        self.running = ConfigTables(self.running.sections, self._consumers, self._producers)
        summary = plan.summary()
        if self._failed:
            summary += f"; failed (see above): {', '.join(self._failed)}"
        log = logger.warning if self._failed or plan.restart_needed else logger.info
        log("reload of %s: %s", path, summary)
        return plan

    def _producers_first(self, plan: ReloadPlan) -> list[str]:
        """Remove producers and replace the ones whose new routes exist already; returns
        the replacements that name a consumer yet to be added (done after the consumers,
        see :meth:`_producers_last`). Such a producer that still names a consumer about to
        go is given an interim version first: its new settings, routed to the consumers it
        keeps that stay, so that the consumer can be removed."""
        conv, timeout, loaded = self.conveyor, self.timeout, self._loaded
        for name in plan.producers_removed:
            if name not in conv.producer_names or self._apply(
                    "remove", "producer", name, partial(conv.remove_producer, name, timeout)):
                del self._producers[name]
            else:
                self._failed.append(f"producer {name}")
        staying = [n for n in conv.consumer_names if n not in plan.removed]
        later: list[str] = []
        for name in plan.producers_changed:
            spec = loaded.producer_specs[name]
            routes = spec.consumers
            if routes is not None and any(c in plan.added for c in routes):
                later.append(name)
                old = self.running.producers[name].get("consumers")
                if not isinstance(old, list) or not any(c in plan.removed for c in old):
                    continue
                spec = dataclasses.replace(spec, consumers=[c for c in routes if c in staying])
            if self._apply("replace", "producer", name,
                           partial(conv.replace_producer, name, spec, timeout=timeout)):
                if name not in later:
                    self._producers[name] = loaded.tables.producers[name]
            elif name not in later:
                self._failed.append(f"producer {name}")
        return later

    def _apply_consumers(self, plan: ReloadPlan) -> None:
        conv, timeout, loaded = self.conveyor, self.timeout, self._loaded
        for name in plan.removed:
            if name not in conv.consumer_names or self._apply(
                    "remove", "consumer", name, partial(conv.remove_consumer, name, timeout)):
                del self._consumers[name]
            else:
                self._failed.append(name)
        for name in (*plan.changed, *plan.added):
            spec = loaded.specs[name]
            if name in plan.changed:
                ok = self._apply("replace", "consumer", name,
                                 partial(conv.replace_consumer, name, spec, timeout))
            else:
                ok = self._apply("add", "consumer", name,
                                 partial(conv.add_consumer, spec, timeout))
            if ok:
                self._consumers[name] = loaded.tables.consumers[name]
            else:
                self._failed.append(name)

    def _producers_last(self, plan: ReloadPlan, later: list[str]) -> None:
        """The replacements that name new consumers, then the new producers."""
        conv, timeout, loaded = self.conveyor, self.timeout, self._loaded
        for name in (*later, *plan.producers_added):
            spec = loaded.producer_specs[name]
            if name in later:
                ok = self._apply("replace", "producer", name,
                                 partial(conv.replace_producer, name, spec, timeout=timeout))
            else:
                ok = self._apply("add", "producer", name,
                                 partial(conv.add_producer, spec, timeout=timeout))
            if ok:
                self._producers[name] = loaded.tables.producers[name]
            else:
                self._failed.append(f"producer {name}")

    def _apply(self, what: str, kind: str, name: str, call: Callable[[], object]) -> bool:
        try:
            call()
        except (ConveyorError, KeyError, ValueError, TypeError, RuntimeError,
                TimeoutError) as exc:
            keeps = {"remove": "it keeps running",
                     "replace": "the old one keeps running",
                     "add": "it is not running; the next reload tries again"}[what]
            logger.error("reload: could not %s %s %s (%s): %s: %s", what, kind, name, keeps,
                         type(exc).__name__, exc)
            return False
        return True  # the conveyor logs each change itself
