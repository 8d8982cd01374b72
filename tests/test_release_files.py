"""The files a release ships agree with each other: the README's systemd unit is the
example file, the version is written once, the documented cron forms work."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aioconveyor import AioConveyor, CronSchedule

ROOT = Path(__file__).resolve().parent.parent


def ts(hour: int, minute: int, second: int) -> float:
    """POSIX time of hour:minute:second UTC on 2026-01-01."""
    return datetime(2026, 1, 1, hour, minute, second, tzinfo=UTC).timestamp()


def test_the_documented_systemd_unit_is_the_shipped_file() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    blocks = [b for b in re.findall(r"```ini\n(.*?)```", text, re.S) if "[Service]" in b]
    shipped = (ROOT / "examples" / "aioconveyor.service").read_text(encoding="utf-8")
    unit = shipped[shipped.index("[Unit]"):].rstrip("\n") + "\n"  # without the header comment
    assert blocks, "no systemd unit in the README or the docs"
    for block in blocks:
        assert block == unit
    assert "RestartSec=" in unit


def test_version_is_written_in_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "aioconveyor.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert "## [0.1.0]" in changelog
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")


def test_six_field_cron_puts_seconds_last() -> None:
    # README: "six fields put **seconds last**, croniter's convention"
    every_10th_minute_at_30s = CronSchedule("*/10 * * * * 30")
    assert every_10th_minute_at_30s.next_fire(ts(12, 0, 0)) == ts(12, 0, 30)
    assert every_10th_minute_at_30s.next_fire(ts(12, 0, 30)) == ts(12, 10, 30)
    every_15_seconds = CronSchedule("* * * * * */15")
    start = ts(12, 0, 0)
    fires = [start]
    for _ in range(4):
        fires.append(every_15_seconds.next_fire(fires[-1]))
    assert [f - start for f in fires] == [0, 15, 30, 45, 60]
    assert every_15_seconds.count_between(start, start + 60) == 5


@pytest.mark.parametrize("expression", ["* * * * * 60", "* * * * * * * *"])
def test_bad_six_field_cron_is_refused(expression: str) -> None:
    with pytest.raises(ValueError, match="expression must be a valid cron expression"):
        CronSchedule(expression)
    with pytest.raises(ValueError, match="cron must be a valid cron expression"):
        AioConveyor(lambda t: None, [], cron=expression)  # named as the conveyor's argument


def test_max_step_cron_means_what_croniter_6_says() -> None:
    # croniter 7 reads "59/15" as minute 59 only (6.x: every 15 minutes, like */15); the
    # pin croniter<7 in pyproject.toml keeps today's meaning, and this test notices a bump
    schedule = CronSchedule("59/15 * * * *")
    assert schedule.next_fire(ts(12, 0, 0)) == ts(12, 15, 0)
