"""One member of a test fleet: a ``fleet_worker.py`` process with its log of what it
produced, its status file and its stderr, for tests/test_fleet.py and test_fleet_faults.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WORKER = Path(__file__).parent / "fleet_worker.py"


def figure(name: str, value: Any) -> None:
    """Note a figure for the docs in $AIOCONVEYOR_FLEET_FIGURES (a JSON file), if set."""
    path = os.environ.get("AIOCONVEYOR_FLEET_FIGURES")
    if not path:
        return
    figures = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    figures[name] = value
    Path(path).write_text(json.dumps(figures, indent=1, sort_keys=True))


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll ``check`` until true (bounded); the wall time it became true."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.1)
    return time.time()


class Member:
    """``fleet_worker.py`` named ``name``, writing into ``folder``, with ``args`` (the
    databases, the group, the producers...)."""

    def __init__(self, folder: Path, name: str, args: Sequence[str]) -> None:
        self.name = name
        self.log = folder / f"{name}.log"
        self.status_path = folder / f"{name}.json"
        self.stderr = open(folder / f"{name}.err", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "--name", name, "--log", str(self.log),
             "--status", str(self.status_path), *args],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return {}

    def produced(self) -> list[tuple[str, float]]:
        """Every (producer, grid time) it logged producing, the time rounded to 1 ms."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.append((parts[0], round(float(parts[1]), 3)))
        return out

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then its last JSON line (its stats) once it has exited."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.stderr.close()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return dict(json.loads(lines[-1])) if lines else {}
