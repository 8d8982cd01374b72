"""``aioconveyor group CONFIG`` for a ``[leader] type = "nats-group"`` config, against the
NATS server of the test machine (a group and a bucket of its own, deleted at the end)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from support.services import NATS_URL, require_server


@pytest.fixture
def bucket() -> Iterator[str]:
    require_server("NATS", NATS_URL, 4222)
    name = f"aioconveyor_cli_{uuid.uuid4().hex[:8]}"
    yield name

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_key_value(name)
        except Exception:
            pass  # never created
        finally:
            await nc.close()
    asyncio.run(delete())


def test_the_group_command_prints_the_members_and_the_assignment_of_a_nats_group(
    bucket: str, tmp_path: Path,
) -> None:
    group = f"cli-{uuid.uuid4().hex[:8]}"
    (tmp_path / "meters.py").write_text(
        "def read(event_time, meter):\n    return {'meter': meter}\n")
    producers = "".join(f'\n[[producers]]\nname = "m{i}"\nfunction = "meters:read"\n'
                        f'meter = "{i}"\nevery = 0.2\n' for i in range(4))

    def config(name: str) -> str:
        return (f'[conveyor]\nname = "{name}"\n\n[leader]\ntype = "nats-group"\n'
                f'servers = "{NATS_URL}"\ngroup = "{group}"\nbucket = "{bucket}"\n'
                f'name = "{name}"\ncheck_interval = 0.2\n' + producers)

    (tmp_path / "a.toml").write_text(config("host-a"))
    (tmp_path / "b.toml").write_text(config("host-b"))
    cli = [sys.executable, "-m", "aioconveyor"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def show() -> subprocess.CompletedProcess[str]:
        shown = subprocess.run([*cli, "group", "a.toml"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=30, check=False)
        assert shown.returncode == 0, shown.stderr
        return shown

    idle = show()  # no bucket yet: nobody
    assert f"group '{group}' (NATS bucket {bucket}): 0 members, 4 producers" in idle.stdout
    assert "assigned to nobody: 4" in idle.stdout
    runs = [subprocess.Popen([*cli, "run", f"{n}.toml"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n in ("a", "b")]
    try:
        deadline = time.monotonic() + 30
        while True:
            shown = show()
            if ": 2 members, 4 producers" in shown.stdout:
                break
            assert time.monotonic() < deadline, shown.stdout
            time.sleep(0.2)
        lines = shown.stdout.splitlines()
        a = next(line for line in lines if line.strip().startswith("host-a: assigned "))
        b = next(line for line in lines if line.strip().startswith("host-b: assigned "))
        assert int(a.split()[2]) + int(b.split()[2]) == 4, shown.stdout
        listed = [n.strip(",") for line in (a, b) for n in line.split(": ", 1)[1].split()
                  if n.startswith(f"{group}/m")]
        assert sorted(listed) == [f"{group}/m{i}" for i in range(4)], shown.stdout
        assert "heartbeat" in a and "heartbeat" in b
    finally:
        for run in runs:
            run.terminate()
        for run in runs:
            run.communicate(timeout=30)
    gone = show()  # both left (their heartbeats deleted)
    assert ": 0 members, 4 producers" in gone.stdout
