"""A real headless browser for the status page's tests: Debian's Chromium driven by
Playwright (never a browser download: ``executable_path`` points at the system binary).

Locally a missing browser (or Playwright) skips its tests with the reason; under
``CI=true`` it fails them (``.ci/run`` installs ``chromium`` when it is missing).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from support.services import in_ci

CHROMIUM = os.environ.get("AIOCONVEYOR_TEST_CHROMIUM", "/usr/bin/chromium")

#: Headless, and quiet: no first-run work, no update checks, no sync, nothing sent out.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def require_browser() -> str:
    """The Chromium binary to drive; skips (locally) or fails (CI=true) without one."""
    missing = []
    if shutil.which(CHROMIUM) is None:
        missing.append(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver,"
                       " or set AIOCONVEYOR_TEST_CHROMIUM)")
    if importlib.util.find_spec("playwright") is None:
        missing.append('no Playwright (pip install -e ".[dev]")')
    if not missing:
        return CHROMIUM
    reason = "; ".join(missing)
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)
