"""The README's commands and examples are real: they are checked and run here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def readme_examples() -> list[tuple[str, str]]:
    """(server it needs or "", code) of every python block marked <!-- test --> or
    <!-- test: postgres|mqtt -->."""
    return re.findall(r"<!-- test(?:: (\w+))? -->\n```python\n(.*?)\n```", README, re.S)


def test_there_are_tested_examples() -> None:
    assert len(readme_examples()) >= 6


SERVER_FIXTURES = {"postgres": "postgres_dsn", "mqtt": "mqtt_url"}


@pytest.mark.parametrize(("needs", "code"), readme_examples(),
                         ids=lambda v: v.splitlines()[0][:40] if v else "-")
def test_readme_example_runs(needs: str, code: str, tmp_path: Path,
                             request: pytest.FixtureRequest) -> None:
    if needs:
        request.getfixturevalue(SERVER_FIXTURES[needs])  # skip locally / fail in CI if down
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


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
