"""The package behaves like a library: light import, no side effects, right layout, typed."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import aioconveyor

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


def test_import_is_light_and_silent(tmp_path: Path) -> None:
    code = (
        "import logging, sys\n"
        "import aioconveyor\n"
        "heavy = [m for m in ('rich', 'asyncpg', 'aiomqtt', 'croniter', 'prometheus_client')\n"
        "         if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert not logging.getLogger().handlers, 'logging configured at import'\n"
        "import aioconveyor.consumers\n"
        "heavy = [m for m in ('rich', 'asyncpg', 'aiomqtt', 'nats') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_consumers_import_only_as_a_subpackage(tmp_path: Path) -> None:
    # an editable install puts the checkout on sys.path, so its consumers/ folder is
    # findable as a top-level module: importing it that way fails and says why (installed
    # from the wheel it is not there at all: tests/test_packaging.py)
    result = run_python(
        "import aioconveyor.consumers as c\n"
        "print(c.__name__, c.__file__.endswith('aioconveyor/consumers/__init__.py'))\n"
        "try:\n"
        "    import consumers\n"
        "except ImportError as exc:\n"
        "    print(exc)\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    name, _, error = result.stdout.partition("\n")
    assert name == "aioconveyor.consumers True"
    assert "import aioconveyor.consumers, not 'consumers'" in error


def public_modules() -> list[str]:
    names = ["aioconveyor", "aioconveyor.consumers"]
    for info in pkgutil.iter_modules(aioconveyor.__path__, "aioconveyor."):
        if not info.name.rpartition(".")[2].startswith("_"):
            names.append(info.name)
    return [*sorted(set(names) - {"aioconveyor.consumers"}), "aioconveyor.consumers"]


@pytest.mark.parametrize("name", public_modules())
def test_public_modules_have_a_sorted_all(name: str) -> None:
    module = importlib.import_module(name)
    if name.endswith("__main__"):
        return
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    if name != "aioconveyor.consumers":  # lazy names are checked by their own tests
        for attr in exported:
            assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_version_matches_metadata() -> None:
    from importlib.metadata import version

    assert aioconveyor.__version__ == version("aioconveyor")


@pytest.mark.parametrize("heavy", ["rich", "asyncpg", "aiomqtt", "prometheus_client", "nats"])
def test_import_aioconveyor_does_not_import(heavy: str, tmp_path: Path) -> None:
    result = run_python(f"import aioconveyor, sys; assert {heavy!r} not in sys.modules", tmp_path)
    assert result.returncode == 0, result.stderr


def imported_modules(path: Path) -> set[str]:
    """The aioconveyor modules ``path`` imports, anywhere in the file (also lazily)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                names.add(f"aioconveyor.{base}".rstrip("."))
                names.update(f"aioconveyor.{base}.{a.name}".replace("..", ".")
                             for a in node.names)
            else:
                names.add(base)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("aioconveyor.")}


def test_demo_and_process_do_not_import_the_cli() -> None:
    # cli imports demo (for the demo command) and process; neither imports cli back
    package = ROOT / "aioconveyor"
    assert "aioconveyor._cli" not in imported_modules(package / "_demo.py")
    assert not {"aioconveyor._cli", "aioconveyor._demo"} & imported_modules(package / "_process.py")
    assert "aioconveyor._demo" in imported_modules(package / "_cli.py")


@pytest.mark.parametrize("first", ["aioconveyor._demo", "aioconveyor._process", "aioconveyor._cli"])
def test_runner_modules_import_first_in_a_fresh_process(first: str, tmp_path: Path) -> None:
    result = run_python(f"import {first}", tmp_path)
    assert result.returncode == 0, result.stderr
