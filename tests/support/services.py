"""Where the real test servers are, and what to do when one is missing.

Locally a missing server skips its tests with a clear reason; under ``CI=true`` it fails,
so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import socket
import urllib.parse

import pytest

POSTGRES_DSN = os.environ.get(
    "AIOCONVEYOR_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
MQTT_URL = os.environ.get("AIOCONVEYOR_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
NATS_URL = os.environ.get("AIOCONVEYOR_TEST_NATS_URL", "nats://127.0.0.1:4222")

START_HINTS = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Mosquitto": "mosquitto -d -c /etc/mosquitto/mosquitto.conf",
    "NATS": "nats-server -js -a 127.0.0.1 -p 4222 &",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def require_server(service: str, url: str, default_port: int) -> None:
    """Skip (locally) or fail (CI=true) unless ``url``'s host:port accepts TCP connections."""
    host, port = host_port(url, default_port)
    try:
        with socket.create_connection((host, port), timeout=3):
            return
    except OSError as exc:
        reason = (f"{service} not reachable at {host}:{port} ({exc}); start it with: "
                  f"{START_HINTS.get(service, '')}")
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
