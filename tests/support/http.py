"""Plain HTTP GETs against the ops endpoint: an error status is an answer, not an exception."""

from __future__ import annotations

import time
import urllib.error
import urllib.request


def get(url: str) -> tuple[int, bytes]:
    """The status and body of ``GET url`` (5 s timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        with exc:  # closes its socket (else a ResourceWarning may fail a later test)
            return exc.code, exc.read()


def wait_for_status(url: str, status: int, timeout: float = 10.0) -> bytes:
    """Poll ``GET url`` until it answers ``status`` (bounded); its body."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = get(url)
        if code == status:
            return body
        assert time.monotonic() < deadline, f"{url} stayed {code}: {body!r}"
        time.sleep(0.02)
