"""What a user gets from PyPI: the sdist and the wheel built once, installed in fresh
virtual environments (never ``--system-site-packages``), and used there.

Slow (one build per session and three venvs) and needing PyPI for the build backend and
the dependencies: every test is marked ``packaging`` (``pytest -m "not packaging"`` skips
them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import aioconveyor

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
CONSUMER_FILES = sorted(p.name for p in (ROOT / "consumers").glob("*.py"))


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                                 **(env or {})})
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@dataclass(frozen=True, slots=True)
class Dist:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out)
    (sdist,) = out.glob("aioconveyor-*.tar.gz")
    (wheel,) = out.glob("aioconveyor-*.whl")
    return Dist(sdist, wheel)


def fresh_venv(where: Path) -> Path:
    """A new virtual environment (its own site-packages only); returns its bin folder."""
    venv.create(where, with_pip=True, system_site_packages=False, clear=True)
    return where / ("Scripts" if os.name == "nt" else "bin")


@pytest.fixture(scope="session")
def wheel_venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel with every extra, its dependencies from PyPI."""
    bin_ = fresh_venv(tmp_path_factory.mktemp("wheel") / "venv")
    run(bin_ / "python", "-m", "pip", "install", "-q", f"{dist.wheel}[all]", cwd=ROOT)
    yield bin_


def test_twine_check_passes(dist: Dist) -> None:
    result = run(sys.executable, "-m", "twine", "check", "--strict", dist.sdist, dist.wheel,
                 cwd=ROOT)
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_holds_the_consumers_once_inside_the_package(dist: Dist) -> None:
    names = zipfile.ZipFile(dist.wheel).namelist()
    assert sorted(n.rpartition("/")[2] for n in names
                  if n.startswith("aioconveyor/consumers/")) == CONSUMER_FILES
    assert not [n for n in names if n.startswith("consumers/")]
    assert "aioconveyor/py.typed" in names
    assert "aioconveyor/_status_page.html" in names  # the status page, package data
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_sdist_holds_the_consumers_once_as_files(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as tar:
        members = {m.name.partition("/")[2]: m for m in tar.getmembers()}
    consumers = sorted(n.rpartition("/")[2] for n in members
                       if n.rpartition("/")[0].endswith("consumers") and n.endswith(".py"))
    assert consumers == CONSUMER_FILES  # once: not also as a top-level consumers/ folder
    assert members["aioconveyor/consumers/__init__.py"].isfile()
    assert not [n for n, m in members.items() if m.issym() or m.islnk()]
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml",
                 "aioconveyor/_status_page.html",
                 "examples/conveyor.toml", "examples/aioconveyor.service"):
        assert name in members, name


def test_sdist_installs_and_imports_the_consumers(dist: Dist, tmp_path: Path) -> None:
    bin_ = fresh_venv(tmp_path / "venv")
    run(bin_ / "python", "-m", "pip", "install", "-q", f"{dist.sdist}[postgres]", cwd=tmp_path)
    result = run(bin_ / "python", "-c",
                 "import importlib.util, aioconveyor\n"
                 "from aioconveyor.consumers import PostgresConsumer\n"
                 "assert PostgresConsumer.__module__ == 'aioconveyor.consumers.postgres'\n"
                 "assert importlib.util.find_spec('consumers') is None\n"
                 "print(aioconveyor.__version__)\n", cwd=tmp_path)
    assert result.stdout.strip() == aioconveyor.__version__


def test_installed_wheel_runs_the_seed_example(wheel_venv: Path, tmp_path: Path) -> None:
    script = tmp_path / "seed.py"
    script.write_text(textwrap.dedent("""\
        import importlib.metadata, importlib.util
        from datetime import datetime

        import aioconveyor
        from aioconveyor import AioConveyor

        got = []

        async def produce(event_time: datetime) -> dict[str, str]:
            return {"at": event_time.isoformat()}

        def keep(data: dict[str, str], event_time: datetime) -> None:
            got.append(data)

        conv = AioConveyor(produce=produce, consumers=[keep], loop_interval=0.05, max_ticks=2)
        conv.start()
        assert conv.join(30), "did not stop after max_ticks"
        assert conv.exception is None, conv.exception
        print(conv.stats().ticks, len(got), conv.stats().consumer("keep").delivered)
        assert aioconveyor.__version__ == importlib.metadata.version("aioconveyor")
        assert importlib.util.find_spec("consumers") is None
        """), encoding="utf-8")
    result = run(wheel_venv / "python", script, cwd=tmp_path, timeout=60)
    assert result.stdout.split() == ["2", "2", "2"]


def test_installed_wheel_serves_the_status_page(wheel_venv: Path, tmp_path: Path) -> None:
    script = tmp_path / "page.py"
    script.write_text(textwrap.dedent("""\
        import urllib.request

        from aioconveyor import AioConveyor

        conv = AioConveyor(lambda t: {"x": 1}, [], loop_interval=0.05, metrics_port=0)
        with conv:
            host, port = conv.metrics_address
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as answer:
                page = answer.read().decode()
            with urllib.request.urlopen(f"http://{host}:{port}/status.json", timeout=10) as a:
                data = a.read().decode()
        assert "<script>" in page and "status.json" in page, page[:200]
        print(len(page) > 1000, '"schema":1' in data)
        """), encoding="utf-8")
    result = run(wheel_venv / "python", script, cwd=tmp_path, timeout=60)
    assert result.stdout.split() == ["True", "True"]


def test_installed_wheel_checks_the_example_config(wheel_venv: Path, tmp_path: Path) -> None:
    result = run(wheel_venv / "aioconveyor", "check", ROOT / "examples" / "conveyor.toml",
                 cwd=tmp_path, timeout=60,
                 env={"POSTGRES_DSN": "postgresql://home:N0tTh1sOne@db.local/home"})
    assert "conveyor.toml: OK" in result.stdout
    assert "N0tTh1sOne" not in result.stdout + result.stderr


USER_SCRIPT = """\
from datetime import datetime

from aioconveyor import AioConveyor
from aioconveyor.consumers import PostgresConsumer


async def produce(event_time: datetime) -> dict[str, float]:
    return {"power_w": 1234.5}


def build(dsn: str) -> AioConveyor:
    sink = PostgresConsumer(dsn, table="readings")
    return AioConveyor(produce=produce, consumers=[sink], loop_interval=10.0)
"""


def test_mypy_strict_sees_the_consumers_after_an_editable_install(tmp_path: Path) -> None:
    bin_ = fresh_venv(tmp_path / "venv")
    run(bin_ / "python", "-m", "pip", "install", "-q", "-e", f"{ROOT}[all]", "mypy",
        cwd=tmp_path)
    (tmp_path / "my_poller.py").write_text(USER_SCRIPT, encoding="utf-8")
    # a mistake mypy can only see with the real types (not Any from a missing module)
    (tmp_path / "wrong.py").write_text(
        USER_SCRIPT + "\n\nnot_a_number: int = PostgresConsumer(table='x')\n", encoding="utf-8")
    env = {"MYPY_CACHE_DIR": str(tmp_path / "cache")}
    ok = run(bin_ / "mypy", "--strict", "my_poller.py", cwd=tmp_path, env=env)
    assert "Success" in ok.stdout
    wrong = subprocess.run([str(bin_ / "mypy"), "--strict", "wrong.py"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, check=False,
                           env={**os.environ, **env})
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert 'expression has type "PostgresConsumer"' in wrong.stdout, wrong.stdout
    assert "import-not-found" not in wrong.stdout
