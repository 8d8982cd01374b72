"""A private Mosquitto broker on a free loopback port, for tests that stop, restart or
freeze the broker without disturbing the shared one::

    with Mosquitto(tmp_path, persistence=True) as broker:
        url = broker.url
        broker.stop()      # SIGTERM: clients see the connection close (state saved to disk)
        broker.start()     # same port, same persistence file
        broker.freeze()    # SIGSTOP: connections stay open but nothing answers
        broker.thaw()

The process is always killed on exit, whatever happened in the test.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

from .services import free_port, in_ci

MOSQUITTO = os.environ.get("AIOCONVEYOR_TEST_MOSQUITTO",
                           shutil.which("mosquitto") or "/usr/sbin/mosquitto")


def require_mosquitto() -> None:
    """Skip (locally) or fail (CI=true) when the mosquitto binary is missing."""
    if os.access(MOSQUITTO, os.X_OK):
        return
    reason = f"mosquitto binary not found at {MOSQUITTO} (apt-get install mosquitto)"
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


class Mosquitto:
    """One mosquitto process; ``persistence=True`` keeps sessions and queued QoS 1 messages
    across :meth:`stop` / :meth:`start` (it saves its database on SIGTERM)."""

    def __init__(self, workdir: Path, *, persistence: bool = False,
                 port: int | None = None, anonymous: bool = True,
                 extra_config: str = "") -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir) / f"mosquitto-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if anonymous else 'false'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            # run as root, mosquitto would switch to user "mosquitto", who cannot read our
            # private tmp dir: stay who we are (no effect for other users)
            f"user {getpass.getuser()}",
            "log_dest stdout",
            "log_type all",
        ]
        self.config.write_text("\n".join(lines) + "\n" + extra_config)
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen = False

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start the broker and return once it accepts connections."""
        if self.running:
            raise RuntimeError("the broker is already running")
        with self.log.open("ab") as log:
            self._process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)],
                                             stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}; "
                                   f"log:\n{self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"mosquitto did not listen on {self.port} "
                                       f"within {timeout:g} s") from None
                time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean broker shutdown: it saves its state), then wait for the exit."""
        process = self._process
        if process is None:
            return
        self.thaw()
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        self._process = None

    def kill(self) -> None:
        """SIGKILL, no questions asked (teardown)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the broker keeps its sockets open but answers nothing (a hung broker)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        if self._frozen and self._process is not None:
            self._process.send_signal(signal.SIGCONT)
        self._frozen = False

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()
