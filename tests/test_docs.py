"""The README's and the manual's commands and examples are real: they are checked and run here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.influx import influxd_url

__all__ = ["influxd_url"]  # a fixture, used by the blocks marked <!-- test: influx -->

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

DEMO_COMMAND = 'pip install -e ".[all]" && python -m aioconveyor'
TEST_COMMAND = 'pip install -e ".[all,dev]" && pytest'


def quick_start() -> str:
    return README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_quick_start_has_exactly_the_two_commands() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", quick_start(), re.S)
    assert commands == [DEMO_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command() -> None:
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


DOCS = ROOT / "docs"
MARKED = re.compile(r"<!-- test(?:: ([\w ]+))? -->\n```(python|toml)\n(.*?)\n```", re.S)


def documented_examples() -> list[tuple[str, str, str, str]]:
    """(page, tags, language, code) of every block marked <!-- test --> or
    <!-- test: TAGS --> in the README and the manual (docs/**/*.md).

    TAGS: "postgres" / "mqtt" / "nats" (the block needs that server: skipped locally, failed under
    CI=true when it is down), "toml" (a config file for ``aioconveyor run``), "module" (a
    python block whose first line is ``# file: NAME.py``: written next to the page's TOML
    blocks, so that they can name its functions). Python blocks run as a script in an empty
    folder and must end by themselves (``max_ticks``). A TOML block is written to
    ``conveyor.toml``, checked with ``aioconveyor check`` and run with ``--set
    conveyor.max_ticks=3 --set conveyor.interval=0.2`` (the documented convention: a config
    file runs until SIGTERM, the test bounds it); a file with ``[[producers]]`` tables gets
    ``max_ticks=3``, ``every=0.2`` and ``offset=0`` for each producer instead.
    """
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [(str(page.relative_to(ROOT)), tags or "", lang, code)
            for page in pages for tags, lang, code in MARKED.findall(page.read_text())]


def readme_examples() -> list[tuple[str, str, str, str]]:
    return [e for e in documented_examples() if e[0] == "README.md"]


def test_there_are_tested_examples() -> None:
    assert len(readme_examples()) >= 1
    assert len(documented_examples()) >= 15


def test_every_python_block_of_the_manual_is_tested() -> None:
    """A python block without a marker must say why it is not run (a fragment)."""
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        for match in re.finditer(r"(?:<!-- ([^>]*) -->\n)?```python\n", text):
            assert match.group(1) is not None, (
                f"{page.relative_to(ROOT)}: an untested python block; mark it <!-- test --> "
                "(or <!-- not tested: why -->)")


SERVER_FIXTURES = {"postgres": "postgres_dsn", "mqtt": "mqtt_url", "nats": "nats_url",
                   "redis": "redis_url",
                   "influx": "influxd_url"}  # influx: a private InfluxDB 1.x (support/influx.py)
SERVER_ENV = {"postgres": "POSTGRES_DSN", "mqtt": "MQTT_URL", "nats": "NATS_URL",
              "redis": "REDIS_URL", "influx": "INFLUX_URL"}


def example_id(value: object) -> str:
    return str(value).splitlines()[0][:40] if value else "-"


@pytest.mark.parametrize(("page", "tags", "lang", "code"), documented_examples(), ids=example_id)
def test_documented_example_runs(page: str, tags: str, lang: str, code: str, tmp_path: Path,
                                 request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    for tag in tags.split():
        if tag in SERVER_FIXTURES:  # skip locally / fail in CI if down
            url = request.getfixturevalue(SERVER_FIXTURES[tag])
            env[SERVER_ENV[tag]] = url
    if lang == "python":
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"{page}:\n{result.stderr}"
        return
    assert "toml" in tags.split(), f"{page}: a tested TOML block needs <!-- test: toml -->"
    (tmp_path / "conveyor.toml").write_text(code + "\n")
    for other_page, other_tags, _, module in documented_examples():
        if other_page == page and "module" in other_tags.split():
            name = re.fullmatch(r"# file: (\w+\.py)", module.splitlines()[0])
            assert name is not None, f"{page}: a module block starts with '# file: NAME.py'"
            (tmp_path / name[1]).write_text(module + "\n")
    bounds = ["--set", "conveyor.max_ticks=3", "--set", "conveyor.interval=0.2"]
    producers = len(re.findall(r"^\[\[producers\]\]", code, re.M))
    if producers:
        bounds = [arg for i in range(producers) for key in ("max_ticks=3", "every=0.2",
                                                            "offset=0")
                  for arg in ("--set", f"producers[{i}].{key}")]
    cli = [sys.executable, "-m", "aioconveyor"]
    checked = subprocess.run([*cli, "check", "conveyor.toml"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, f"{page}:\n{checked.stderr}"
    ran = subprocess.run([*cli, "run", "conveyor.toml", *bounds], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, f"{page}:\n{ran.stderr}"
    assert f" {3 * max(producers, 1)} ticks" in ran.stdout, ran.stdout


def test_demo_runs(tmp_path: Path) -> None:
    """The quick start's demo command (with a short run): readings reach the console and CSV."""
    csv_path = tmp_path / "demo.csv"
    result = subprocess.run(
        [sys.executable, "-m", "aioconveyor", "--interval", "0.1", "--count", "2",
         "--csv", str(csv_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "simulated" in result.stdout and "power_w" in result.stdout
    assert "summary: stopped (2 readings done)" in result.stdout
    assert len(csv_path.read_text().splitlines()) == 1 + 2
