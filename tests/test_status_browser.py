"""The status page in a real headless browser (Debian's Chromium, driven by Playwright).

A conveyor with two producers and three consumers (one fails every call) runs on the real
clock; the browser logs in, reads the figures from the page, waits for refreshes and
checks they advanced, that the failing consumer is marked as failing, that no secret and
no other host is involved, and takes a screenshot. ``AIOCONVEYOR_STATUS_SCREENSHOT=PATH``
also writes it to PATH (how docs/img/status-page.png was made), after a longer history.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from aioconveyor import AioConveyor, Consumer, Producer
from aioconveyor.testing import MemoryConsumer
from support.browser import CHROMIUM_ARGS, require_browser

pytestmark = pytest.mark.timeout(180)

PASSWORD = "br0wser-S3cret"
WAIT_MS = 30_000  # every wait below is bounded by this (a busy machine)


async def meter(event_time: datetime) -> dict[str, Any]:
    return {"w": 1}


async def inverter(event_time: datetime) -> dict[str, Any]:
    return {"v": 2}


async def broker(data: Any, event_time: datetime) -> None:
    raise ConnectionError(f"mqtt://poller:{PASSWORD}@127.0.0.1:1 refused the connection")


def figure(page: Any, row: str, field: str) -> int:
    """A number as the page shows it (``1,234``), read from the DOM."""
    text = page.inner_text(f'{row} [data-field="{field}"]').strip()
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", text), text
    return int(text.replace(",", ""))


def test_the_status_page_in_a_real_browser(tmp_path: Path) -> None:
    chromium = require_browser()
    from playwright.sync_api import sync_playwright

    conv = AioConveyor(
        producers=[Producer(meter, every=0.25, name="meter"),
                   Producer(inverter, every=0.5, offset=0.1, name="inverter")],
        consumers=[MemoryConsumer("readings"), MemoryConsumer("archive"),
                   Consumer(broker, name="broker", retries=0)],
        metrics_port=0, metrics_auth=("ops", PASSWORD), health_bound=1.0, name="home-poller")
    keep = os.environ.get("AIOCONVEYOR_STATUS_SCREENSHOT")
    with conv, sync_playwright() as pw:
        address = conv.metrics_address
        assert address is not None
        origin = f"{address[0]}:{address[1]}"
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                http_credentials={"username": "ops", "password": PASSWORD},
                viewport={"width": 1360, "height": 600})
            requests: list[str] = []
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            response = page.goto(f"http://{origin}/")
            assert response is not None and response.status == 200
            page.wait_for_selector('[data-consumer="broker"]', timeout=WAIT_MS)
            meter_row, readings = '[data-producer="meter"]', '[data-consumer="readings"]'
            ticks = figure(page, meter_row, "ticks")
            delivered = figure(page, readings, "delivered")
            assert page.inner_text("#name") == "home-poller"
            # without the credentials the data is refused
            assert page.evaluate(
                "() => fetch('status.json', {credentials: 'omit'}).then(r => r.status)") == 401
            assert page.inner_text(f'{meter_row} [data-field="schedule"]') == "every 0.25 s"
            assert re.fullmatch(r"\d+(\.\d+)? ms",
                                page.inner_text(f'{meter_row} [data-field="p99"]'))

            # a refresh (every 2 s) shows figures that went on
            refreshes = int(page.get_attribute("body", "data-refreshes") or 0)
            page.wait_for_function("n => Number(document.body.dataset.refreshes) > n",
                                   arg=refreshes, timeout=WAIT_MS)
            page.wait_for_function(
                """([row, n]) => Number(document.querySelector(row + ' [data-field="ticks"]')
                                        .textContent.replace(/,/g, '')) > n""",
                arg=[meter_row, ticks], timeout=WAIT_MS)
            assert figure(page, meter_row, "ticks") > ticks
            assert figure(page, readings, "delivered") > delivered
            assert figure(page, '[data-producer="inverter"]', "ticks") >= 1
            assert re.fullmatch(r"just now|[\d.]+ s ago",
                                page.inner_text(f'{meter_row} [data-field="last_tick"]'))

            # the failing lane stands out: a word and a colour, and the verdict names it
            page.wait_for_function(
                "() => document.getElementById('health').dataset.status === 'unhealthy'",
                timeout=WAIT_MS)
            failing = page.locator('[data-consumer="broker"]')
            assert failing.get_attribute("data-condition") == "failing"
            assert "is-bad" in (failing.get_attribute("class") or "")
            assert failing.locator('[data-field="condition"]').inner_text() == "failing"
            assert figure(page, '[data-consumer="broker"]', "errors") >= 1
            assert "refused the connection" in failing.locator(
                '[data-field="last_error"]').inner_text()
            for name in ("readings", "archive"):
                row = page.locator(f'[data-consumer="{name}"]')
                assert row.get_attribute("data-condition") == "ok"
                assert row.locator('[data-field="condition"]').inner_text() == "open"
            assert page.inner_text("#health").lower() == "unhealthy"  # CSS: upper case
            assert "consumer:broker" in page.inner_text("#problems")

            # the lateness chart fills in (one point per 2 s sample)
            points = 8 if keep else 2
            page.wait_for_function(
                """([row, n]) => Number(document.querySelector(row + ' svg.chart')
                                        .dataset.points) >= n""",
                arg=[meter_row, points], timeout=WAIT_MS + points * 2500)

            assert PASSWORD not in page.content()
            shot = tmp_path / "status-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if keep:
                shutil.copyfile(shot, keep)
            context.close()
        finally:
            browser.close()

    # the page talked to its own endpoint only, and only read
    hosts = {urllib.parse.urlsplit(url).netloc for url in requests
             if not url.startswith("data:")}
    assert hosts == {origin}, requests
    paths = [urllib.parse.urlsplit(url).path for url in requests if not url.startswith("data:")]
    assert set(paths) <= {"/", "/status.json"}, paths
    assert paths.count("/status.json") >= 2


def test_a_browser_logs_in_with_the_token_as_its_password() -> None:
    """With a bearer token the login prompt (basic auth) takes the token as the password:
    the browser must see a Basic challenge of its own (one per WWW-Authenticate header)."""
    chromium = require_browser()
    from playwright.sync_api import sync_playwright

    token = "t0ken-" + PASSWORD
    conv = AioConveyor(meter, [MemoryConsumer("readings")], loop_interval=0.25,
                       metrics_port=0, metrics_auth=token, name="tokened")
    with conv, sync_playwright() as pw:
        address = conv.metrics_address
        assert address is not None
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                http_credentials={"username": "anyone", "password": token})
            page = context.new_page()
            response = page.goto(f"http://{address[0]}:{address[1]}/")
            assert response is not None and response.status == 200
            page.wait_for_selector('[data-consumer="readings"]', timeout=WAIT_MS)
            assert page.inner_text("#name") == "tokened"
            context.close()
        finally:
            browser.close()
