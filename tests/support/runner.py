"""``aioconveyor run`` in a real subprocess: wait for its log lines, find its endpoint, signal
it, and always end it (``kill_all`` in a fixture's teardown)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent / "aioconveyor"


class Runner:
    """One ``aioconveyor run CONFIG`` process; stdout and stderr go to files in ``cwd``."""

    def __init__(self, cwd: Path, config: Path, *args: str, env: dict[str, str] | None = None,
                 tag: str = "runner") -> None:
        self.out, self.err = cwd / f"{tag}.out", cwd / f"{tag}.err"
        with self.out.open("w") as o, self.err.open("w") as e:
            self.process = subprocess.Popen([str(BIN), "run", str(config), *args], cwd=cwd,
                                            stdout=o, stderr=e, env=env)

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    def wait_until(self, predicate: Callable[[], object], what: str,
                   timeout: float = 20.0) -> None:
        """Poll ``predicate`` until true; fail (with the log) if the process ends or time
        runs out."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.process.poll() is None, (
                f"runner exited ({self.process.returncode}) waiting for {what}:\n{self.stderr}")
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.stderr}"
            time.sleep(0.02)

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> re.Match[str]:
        """The ``count``-th match of regex ``pattern`` in stderr, once it is there."""
        self.wait_until(lambda: len(re.findall(pattern, self.stderr, re.M)) >= count,
                        f"log line {pattern!r} (x{count})", timeout)
        return list(re.finditer(pattern, self.stderr, re.M))[count - 1]

    def base_url(self) -> str:
        """``http://host:port`` of the ops endpoint, from the runner's start line."""
        return self.wait_for_log(r"metrics and health on (http://\S+?)\)")[1]

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def kill_all(runners: list[Runner]) -> None:
    """For fixtures' teardown: kill whatever is still alive."""
    for runner in runners:
        if runner.process.poll() is None:
            runner.process.kill()
            runner.process.wait(10)


def write(path: Path, text: str) -> Path:
    """Write ``text`` (dedented) so that a reader never sees half of it: temp file, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(textwrap.dedent(text))
    tmp.replace(path)
    return path
