"""PrettyPrintConsumer: readable tables on a rich console, whatever the data is."""

from __future__ import annotations

import dataclasses
import io
import itertools
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aioconveyor import AioConveyor, Batch, Consumer, Record
from aioconveyor.consumers import PrettyPrintConsumer
from aioconveyor.testing import MemoryConsumer

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make(name: str = "pretty", **kwargs: Any) -> tuple[PrettyPrintConsumer, io.StringIO]:
    out = io.StringIO()
    return PrettyPrintConsumer(Console(file=out, width=100), name=name, **kwargs), out


def run_conveyor(produce: Callable[[datetime], Any], consumers: list[Any], ticks: int) -> None:
    conv = AioConveyor(produce, consumers, loop_interval=0.05, max_ticks=ticks)
    conv.start()
    assert conv.join(timeout=10), "conveyor did not finish in time"
    assert conv.exception is None


@dataclasses.dataclass
class Reading:
    sensor: str
    watts: float


class Model:
    def model_dump(self) -> dict[str, Any]:
        return {"kind": "model", "level": 3}


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("str exploded too")


class VeryBrokenRepr:
    def __repr__(self) -> str:
        raise Unprintable


class BrokenModel:
    def model_dump(self) -> dict[str, Any]:
        raise ValueError("cannot dump")


class BrokenMapping(dict[str, int]):
    def items(self) -> Any:
        raise RuntimeError("no items")


class HugeRepr:
    def __repr__(self) -> str:
        return "x" * 1_000_000


def recursive_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"name": "loop"}
    d["self"] = d
    return d


def recursive_list() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


def test_records_show_values_tick_time_and_consumer_name() -> None:
    pretty, out = make("inverter")
    memory = MemoryConsumer()
    counter = itertools.count()
    run_conveyor(lambda t: {"power_w": 1000 + next(counter), "status": "ok"},
                 [pretty, memory], ticks=3)

    text = out.getvalue()
    assert text.count("inverter") == 3
    for event_time in memory.event_times:
        assert event_time.isoformat() in text
    for value in ("power_w", "1000", "1001", "1002", "status", "'ok'"):
        assert value in text


def test_batches_show_every_record_with_its_own_time() -> None:
    pretty, out = make()
    memory = MemoryConsumer()
    counter = itertools.count()
    run_conveyor(lambda t: {"n": next(counter)},
                 [Consumer(pretty, batch_size=3, batch_age=0.5), memory], ticks=3)

    text = out.getvalue()
    for event_time in memory.event_times:
        assert event_time.isoformat() in text
    assert "(1/3)" in text and "(3/3)" in text


async def test_a_batch_renders_mixed_records() -> None:
    pretty, out = make()
    t1 = T0 + timedelta(seconds=5)
    await pretty(Batch([Record({"a": 1}, T0), Record("plain text", t1), Record(None, t1)]), t1)
    await pretty.close()
    text = out.getvalue()
    assert f"{T0.isoformat()} (1/3)" in text and f"{t1.isoformat()} (3/3)" in text
    assert "'plain text'" in text and "None" in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Reading("roof", 1234.5), ["sensor", "'roof'", "1234.5"]),
        (Model(), ["kind", "'model'", "level"]),
        ({1: "int key", (2, 3): "tuple key"}, ["1", "(2, 3)", "'tuple key'"]),
        ([1, 2, 3], ["[1, 2, 3]"]),
        ("[bold red]not markup[/]", ["[bold red]not markup[/]"]),
    ],
)
async def test_mappings_dataclasses_models_and_others(value: Any, expected: list[str]) -> None:
    pretty, out = make()
    await pretty(value, T0)
    await pretty.close()
    text = out.getvalue()
    for fragment in expected:
        assert fragment in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (BrokenRepr(), "repr exploded"),
        (VeryBrokenRepr(), "VeryBrokenRepr"),
        ({"inner": BrokenRepr()}, "inner"),
        (BrokenModel(), "BrokenModel"),
        (BrokenMapping(a=1), "BrokenMapping"),
        (recursive_dict(), "'loop'"),
        (recursive_list(), "[1, ...]"),
        (b"\x00\xffbytes", "bytes"),
        (None, "None"),
        (object, "object"),
    ],
    ids=["raising-repr", "repr-and-str-raise", "raising-value", "raising-model_dump",
         "raising-items", "recursive-dict", "recursive-list", "bytes", "none", "a-class"],
)
async def test_odd_objects_never_raise(value: Any, expected: str) -> None:
    pretty, out = make("odd")
    await pretty(value, T0)
    await pretty.close()
    text = out.getvalue()
    assert f"odd · {T0.isoformat()}" in text
    assert expected in text


@pytest.mark.parametrize(
    "value",
    [HugeRepr(), "s" * 1_000_000, list(range(100_000)), {f"k{i}": i for i in range(10_000)},
     {"deep": [[[[[[[[[[1]]]]]]]]]]}],
    ids=["huge-repr", "huge-str", "huge-list", "huge-dict", "deep"],
)
async def test_huge_values_are_truncated(value: Any) -> None:
    pretty, out = make(max_rows=10)
    await pretty(value, T0)
    await pretty.close()
    text = out.getvalue()
    assert 0 < len(text) < 20_000
    assert "…" in text or "..." in text or "+" in text


async def test_many_fields_end_with_a_count_of_the_rest() -> None:
    pretty, out = make(max_rows=3)
    await pretty({f"f{i}": i for i in range(10)}, T0)
    await pretty.close()
    text = out.getvalue()
    assert "f2" in text and "f3" not in text and "7 more fields" in text


async def test_printing_runs_off_the_event_loop() -> None:
    class Recorder(io.StringIO):
        threads: set[str] = set()

        def write(self, s: str) -> int:
            self.threads.add(threading.current_thread().name)
            return super().write(s)

    out = Recorder()
    pretty = PrettyPrintConsumer(Console(file=out, width=100), name="watch")
    await pretty({"a": 1}, T0)
    await pretty.close()
    assert out.threads and threading.current_thread().name not in out.threads


def test_show_and_render_work_without_a_loop() -> None:
    pretty, out = make()
    pretty.show({"a": 1}, T0)
    assert "a" in out.getvalue() and T0.isoformat() in out.getvalue()
    assert pretty.render(Batch([Record(1, T0), Record(2, T0)]), T0) is not None


def test_default_console_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    pretty = PrettyPrintConsumer()
    pretty.show({"hello": "world"}, T0)
    assert "world" in capsys.readouterr().out


def test_rich_is_imported_only_when_a_pretty_consumer_is_made(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from aioconveyor.consumers import pretty\n"
        "assert 'rich' not in sys.modules, 'imported on module import'\n"
        "pretty.PrettyPrintConsumer()\n"
        "assert 'rich' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("kwargs", "error", "shown"),
    [
        ({"console": sys.stdout}, TypeError, "console"),
        ({"name": ""}, TypeError, "name"),
        ({"max_rows": 0}, ValueError, "max_rows"),
        ({"max_length": "10"}, TypeError, "max_length"),
        ({"max_string": -1}, ValueError, "max_string"),
        ({"max_depth": True}, TypeError, "max_depth"),
    ],
)
def test_bad_constructor_arguments_name_the_argument_and_value(
    kwargs: dict[str, Any], error: type[Exception], shown: str
) -> None:
    with pytest.raises(error) as info:
        PrettyPrintConsumer(**kwargs)
    assert shown in str(info.value)
    assert repr(next(iter(kwargs.values()))) in str(info.value)
