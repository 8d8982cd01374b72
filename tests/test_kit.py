"""The consumer author's kit is the built-ins' only door into aioconveyor.

A third party can write a consumer as good as the built-in ones only if those use nothing
it cannot: every ``consumers/*.py`` imports ``aioconveyor`` (public names), the kit and its
own package, and nothing private; and the kit's names are pinned.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import aioconveyor
import aioconveyor.kit as kit

ROOT = Path(__file__).resolve().parent.parent
CONSUMERS = sorted((ROOT / "consumers").glob("*.py"))

KIT = [
    "Batch",
    "CANCEL_GRACE",
    "ConveyorError",
    "LogLimiter",
    "Record",
    "Rejected",
    "RetryAfter",
    "SettingError",
    "SyncWorker",
    "Tick",
    "check",
    "check_pg_ssl",
    "current_tick",
    "encode_userinfo",
    "mask_dsn",
    "mask_text",
    "mask_url",
    "retry_after_seconds",
    "scrub",
    "secrets_of",
    "split_url",
]

PUBLIC: dict[str, set[str]] = {
    "aioconveyor": set(aioconveyor.__all__),
    "aioconveyor.kit": set(kit.__all__),
}
"""The modules a consumer may import from, each with the names it may take."""

INSTALLED_AS = "aioconveyor.consumers"


def private_imports(source: str, filename: str = "<consumer>") -> list[str]:
    """Every import in ``source`` (a module of the consumers package) that reaches past the
    public API: ``line: what``. Imports nested in functions or ``if TYPE_CHECKING`` count."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name.startswith("aioconveyor.") and name not in PUBLIC and not (
                        name.startswith(INSTALLED_AS + ".")):
                    found.append(f"{node.lineno}: import {name}")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: must stay inside the consumers package
                if node.level > 1:
                    found.append(f"{node.lineno}: from {'.' * node.level}{node.module or ''}")
                continue
            module = node.module or ""
            if module == INSTALLED_AS or module.startswith(INSTALLED_AS + "."):
                continue
            if module != "aioconveyor" and not module.startswith("aioconveyor."):
                continue  # a third-party or stdlib module
            if module not in PUBLIC:
                found.append(f"{node.lineno}: from {module} import ...")
                continue
            for alias in node.names:
                if alias.name not in PUBLIC[module]:
                    found.append(f"{node.lineno}: from {module} import {alias.name}")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "aioconveyor"
              and node.attr not in PUBLIC["aioconveyor"] | {"kit", "consumers"}):
            found.append(f"{node.lineno}: aioconveyor.{node.attr}")
        elif (isinstance(node, ast.Call) and node.args
              and ast.unparse(node.func).rpartition(".")[2] in {"import_module", "__import__"}
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and node.args[0].value.startswith("aioconveyor.")
              and node.args[0].value not in PUBLIC):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_kit_all_is_pinned() -> None:
    assert kit.__all__ == KIT


def test_kit_all_is_sorted() -> None:
    assert kit.__all__ == sorted(kit.__all__)  # as tests/test_package.py wants every __all__


def test_every_kit_name_exists_and_is_documented() -> None:
    for name in kit.__all__:
        value = getattr(kit, name)
        if name.isupper():
            continue  # a constant: its docstring is in the source, checked below
        assert (value.__doc__ or "").strip(), f"aioconveyor.kit.{name} has no docstring"
    assert '"""Seconds an async consumer call cancelled' in Path(kit.__file__).read_text()


def test_kit_names_are_the_same_objects_as_the_top_level_ones() -> None:
    for name in set(kit.__all__) & set(aioconveyor.__all__):
        assert getattr(kit, name) is getattr(aioconveyor, name), name


def test_cancel_grace_is_the_lanes() -> None:
    from aioconveyor._workers import Caller

    assert kit.CANCEL_GRACE == Caller.CANCEL_GRACE > 0


def test_there_are_consumers_to_check() -> None:
    names = {p.name for p in CONSUMERS}
    assert {"csv.py", "mqtt.py", "postgres.py", "pretty.py", "_records.py"} <= names


@pytest.mark.parametrize("path", CONSUMERS, ids=lambda p: p.name)
def test_builtin_consumer_imports_only_public_api(path: Path) -> None:
    assert private_imports(path.read_text(), str(path)) == []


@pytest.mark.parametrize(("source", "expected"), [
    ("from aioconveyor._logs import LogLimiter", ["1: from aioconveyor._logs import ..."]),
    ("from aioconveyor._workers import Caller", ["1: from aioconveyor._workers import ..."]),
    ("from aioconveyor._errors import Rejected", ["1: from aioconveyor._errors import ..."]),
    ("import aioconveyor._secrets", ["1: import aioconveyor._secrets"]),
    ("from aioconveyor import _secrets", ["1: from aioconveyor import _secrets"]),
    ("from aioconveyor.kit import Caller", ["1: from aioconveyor.kit import Caller"]),
    ("from .. import workers", ["1: from .."]),
    ("import aioconveyor\nx = aioconveyor._workers.Caller", ["2: aioconveyor._workers"]),
    ("import importlib\nimportlib.import_module('aioconveyor._clock')",
     ["2: importlib.import_module('aioconveyor._clock')"]),
    ("raise ImportError('aioconveyor.consumers.postgres needs asyncpg')", []),
    ("def f():\n    from aioconveyor._tick import _set", ["2: from aioconveyor._tick import ..."]),
    ("from aioconveyor import Consumer, __version__\nfrom aioconveyor.kit import Batch\n"
     "from ._records import as_mapping\nfrom aioconveyor.consumers import CsvConsumer\n"
     "import asyncio\nimport aioconveyor.kit", []),
])
def test_the_check_catches_private_imports(source: str, expected: list[str]) -> None:
    assert private_imports(source) == expected


def test_a_consumers_log_limiter_follows_the_conveyors_fake_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A consumer's own ``LogLimiter()`` reads the conveyor's clock: 10 fake minutes of a
    failure write the first line and the doubling reminders (at 60, 180 and 420 s), the
    same on FakeClock as in real time (on time.monotonic the test's second of real time
    would show only the first line)."""
    import logging
    from datetime import datetime
    from typing import Any

    from aioconveyor import AioConveyor
    from aioconveyor.testing import FakeClock

    log = logging.getLogger("test.kit.limiter")
    limiter = kit.LogLimiter()

    async def flaky(data: Any, event_time: datetime) -> None:
        limiter.log(log, logging.WARNING, "down", "sink down at %s", event_time)

    async def produce(event_time: datetime) -> int:
        return 1

    caplog.set_level(logging.WARNING, logger="test.kit.limiter")
    conv = AioConveyor(produce, [flaky], loop_interval=1.0, clock=FakeClock(), max_ticks=600)
    conv.start()
    assert conv.join(60) and conv.exception is None
    lines = [r.getMessage() for r in caplog.records if r.name == "test.kit.limiter"]
    assert len(lines) == 4, lines  # at 0 s, then 60, 120 and 240 s after the line before
    assert "similar messages suppressed" in lines[1]
