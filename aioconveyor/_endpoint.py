"""The operations endpoint: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

A deliberately tiny HTTP/1.1 server on asyncio streams, running in the conveyor's own
loop (so a blocked loop shows up as a health check that times out, which is the truth).
One request per connection; only GET (and HEAD). ``/metrics`` is rendered in a worker
thread: with thousands of producers a scrape takes a while, and the ticks must not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from ._health import Health

__all__ = ["OpsEndpoint"]

logger = logging.getLogger(__name__)

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            503: "Service Unavailable"}


class OpsEndpoint:
    """Serves metrics, health and readiness for one conveyor."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Callable[[], Health],
        ready: Callable[[], bool],
        metrics: Callable[[], tuple[bytes, str]] | None,
    ) -> None:
        self.host = host
        self.port = port
        self._health = health
        self._ready = ready
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually listened on (useful with port 0)."""
        assert self._server is not None, "endpoint not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address needs brackets
        logger.info("serving /metrics, /healthz and /readyz on http://%s:%d", shown, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # sockets of HTTP clients: network time, not an engine timer, so these limits
            # (here and at close) stay on the loop's real clock
            async with asyncio.timeout(5.0):
                request = await reader.readuntil(b"\r\n\r\n")
            line = request.split(b"\r\n", 1)[0]
            routed = self._route(line)
            status, ctype, body = (await self._render() if routed is None else routed)
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (b"" if request.startswith(b"HEAD ") else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        except Exception:
            logger.exception("ops endpoint: request failed")
        finally:
            writer.close()

    async def _render(self) -> tuple[int, str, bytes]:
        assert self._metrics is not None
        body, ctype = await asyncio.to_thread(self._metrics)
        return 200, ctype, body

    def _route(self, line: bytes) -> tuple[int, str, bytes] | None:
        """The answer to a request line; ``None`` for ``/metrics`` (see :meth:`_render`)."""
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path == "/healthz":
            verdict = self._health()  # judged at the conveyor's clock's time
            return (200 if verdict.ok else 503), "application/json", _json(verdict.as_json())
        if path == "/readyz":
            ready = self._ready()
            return (200 if ready else 503), "application/json", _json(
                {"status": "ready" if ready else "not ready"})
        if path == "/metrics" and self._metrics is not None:
            return None
        return 404, "text/plain", b"not found: try /metrics, /healthz, /readyz\n"


def _json(value: object) -> bytes:
    return (json.dumps(value, sort_keys=True) + "\n").encode()
