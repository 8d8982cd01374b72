"""A consumer of your own: post batches of readings as JSON to an HTTP API.

Built only on the public API (``aioconveyor.kit``) and the standard library, the way the
built-in consumers are. ``python examples/http_consumer.py`` tries it against a stub API
on 127.0.0.1 through a conveyor on a FakeClock; ``docs/writing-a-consumer.md`` walks
through it.
"""

from __future__ import annotations

import email.message
import json
import logging
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from aioconveyor.kit import (
    Batch,
    LogLimiter,
    Rejected,
    RetryAfter,
    SyncWorker,
    mask_text,
    retry_after_seconds,
    secrets_of,
)

logger = logging.getLogger(__name__)


class HttpError(Exception):
    """The API answered with an error a retry may cure (5xx, or 429 without Retry-After)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if detail else f"HTTP {status}")
        self.status = status


class HttpJsonConsumer:
    """POST each batch to ``url`` as a JSON array of ``{"event_time", "data"}`` objects.

    * 2xx: delivered. 429 or 503 with ``Retry-After``: the lane waits that long (at most
      ``max_retry_after``) and sends the same batch again. Any other 4xx: rejected, never
      retried. 5xx, timeouts and refused connections: raised, so the lane retries them
      with its backoff.
    * ``token`` is sent as ``Authorization: Bearer ...``; it and any password in ``url``
      never appear in ``repr``, logs or error messages.
    * ``timeout``: seconds one request may take; the lane's own timeout is 5 s longer, so
      urllib gives up first and the worker thread is free for the next batch.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0,
                 max_retry_after: float = 300.0, name: str = "http") -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        self.url = url
        self.name = name
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self.consumer_defaults: dict[str, Any] = {
            "batch_size": 100, "batch_age": 5.0, "retries": 5, "timeout": timeout + 5,
        }
        self._headers = {"Content-Type": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._secrets = secrets_of(url, token)
        self._limiter = LogLimiter()
        self._worker: SyncWorker | None = None

    def __repr__(self) -> str:
        return f"<HttpJsonConsumer {self.name!r} {self._mask(self.url)}>"

    def _mask(self, text: str) -> str:
        return mask_text(text, self._secrets)

    async def open(self) -> None:
        """One thread of this consumer's own for the blocking urllib calls."""
        self._worker = SyncWorker(f"http[{self.name}]")

    async def close(self) -> None:
        """Let the thread end once the request in progress (if any) is done."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    async def __call__(self, data: Any, event_time: datetime) -> None:
        if self._worker is None:
            raise RuntimeError(f"{self!r} is not open")
        records = data if isinstance(data, Batch) else [(data, event_time)]
        rows: list[str] = []
        for item, when in records:
            try:
                rows.append(json.dumps({"event_time": when.isoformat(), "data": item}))
            except (TypeError, ValueError) as exc:
                self._limiter.log(logger, logging.WARNING, ("not json", type(item)),
                                  "consumer %s: skipped a record: %s", self.name, exc)
        bad = len(records) - len(rows)
        if not rows:
            raise Rejected(f"none of the {bad} record(s) is JSON")
        body = f"[{','.join(rows)}]".encode()
        status, headers, detail = await self._worker.call(self._post, body)
        self._check(status, headers, detail)
        if bad:  # the good ones are delivered; the lane counts these as rejected
            raise Rejected(f"{bad} record(s) not JSON", count=bad)

    def _post(self, body: bytes) -> tuple[int, email.message.Message, str]:
        """On the worker thread: one POST; the status, headers and start of the body."""
        request = urllib.request.Request(self.url, data=body, headers=self._headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers, ""
        except urllib.error.HTTPError as exc:  # an answer, just not a 2xx one
            with exc:
                return exc.code, exc.headers, exc.read(300).decode("utf-8", "replace")
        except TimeoutError:
            raise TimeoutError(f"{self!r}: no answer within {self.timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS; its text may hold the URL
            raise ConnectionError(f"{self!r}: {self._mask(str(exc))}") from None

    def _check(self, status: int, headers: email.message.Message, detail: str) -> None:
        """Turn a non-2xx answer into what the lane should do about it."""
        if 200 <= status < 300:
            return
        detail = self._mask(" ".join(detail.split())[:200])
        if status in (429, 503):
            seconds = retry_after_seconds(headers.get("Retry-After"), headers.get("Date"))
            if seconds is not None:
                if seconds > self.max_retry_after:
                    self._limiter.log(logger, logging.WARNING, "long retry-after",
                                      "consumer %s: the API asked to wait %g s; waiting %g s",
                                      self.name, seconds, self.max_retry_after)
                    seconds = self.max_retry_after
                raise RetryAfter(seconds, f"HTTP {status}: retry after {seconds:g} s")
        if 400 <= status < 500 and status not in (408, 429):
            raise Rejected(str(HttpError(status, detail)))
        raise HttpError(status, detail)


# -- trying it out: a stub API on 127.0.0.1, a conveyor on a FakeClock ----------------


def main() -> None:
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from aioconveyor import AioConveyor, Consumer
    from aioconveyor.testing import FakeClock

    clock = FakeClock(start=1_794_999_600.0)
    answers = [429, 200, 400]  # busy (wait 7 s), then OK, then a bad request
    seen: list[tuple[float, int, list[Any]]] = []

    class StubApi(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = answers.pop(0)
            seen.append((clock.monotonic(), status, [row["data"] for row in body]))
            reply = b'{"error": "no such sensor"}' if status == 400 else b""
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "7")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), StubApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink = HttpJsonConsumer(f"http://127.0.0.1:{server.server_port}/readings",
                            token="s3cret-token")
    assert "s3cret" not in repr(sink)

    async def produce(event_time: datetime) -> int:
        return len(seen)

    conv = AioConveyor(produce, [Consumer(sink, batch_size=2, batch_age=0)],
                       loop_interval=60, clock=clock, max_ticks=2, stop_timeout=60)
    try:
        asyncio.run(conv.run())
    finally:
        server.shutdown()
        server.server_close()
    start = seen[0][0]
    print([(t - start, status, data) for t, status, data in seen])
    assert [(t - start, status) for t, status, _ in seen] == [(0, 429), (7, 200), (60, 400)]
    stats = conv.stats().consumer("http")
    assert (stats.delivered, stats.rejected, stats.retries) == (1, 1, 1)


if __name__ == "__main__":
    main()
