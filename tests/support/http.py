"""Plain HTTP GETs against the ops endpoint: an error status is an answer, not an exception."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(url: str) -> tuple[int, bytes]:
    """The status and body of ``GET url`` (5 s timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
