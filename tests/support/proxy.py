"""A TCP proxy on 127.0.0.1 that tests can cut and restore, to fake a network outage.

It runs its own event loop in a daemon thread, so it works no matter which loop or thread
the code under test uses::

    with TcpProxy("127.0.0.1", 5432) as proxy:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        ...
        proxy.cut()        # drop every connection and refuse new ones
        proxy.restore()    # accept again
        proxy.silence()    # a silent partition: no byte goes through, no socket closes
        proxy.speak()      # the partition heals: what waited is forwarded
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import urllib.parse
from collections.abc import Iterator
from types import TracebackType

from .services import free_port, host_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self._flowing: asyncio.Event | None = None  # made in the proxy loop

    # -- called from the test thread -------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Close every proxied connection and stop listening (connects are refused)."""
        self._call(self._cut())

    def restore(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def silence(self) -> None:
        """Forward no byte in either direction and close no socket (new connections are
        accepted and held): a silent partition, as a dropped route or a dead switch."""
        self._call(self._set_flowing(False))

    def speak(self) -> None:
        """End a :meth:`silence`: forward again, what waited first."""
        self._call(self._set_flowing(True))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    # -- inside the proxy loop -------------------------------------------------------

    async def _set_flowing(self, flowing: bool) -> None:
        event = self._event()
        if flowing:
            event.set()
        else:
            event.clear()

    def _event(self) -> asyncio.Event:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                      reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        self._event().set()  # a cut ends a silence: its waiting pipes see the aborts

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        flowing = self._event()
        self._writers.add(writer)
        await flowing.wait()  # silent: accepted, and nothing more
        if writer.is_closing():  # cut while it waited
            self._writers.discard(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._writers.discard(writer)
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while True:
                    await flowing.wait()
                    data = await src.read(65536)
                    if not data:
                        break
                    await flowing.wait()  # read before the silence: held until it ends
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


@contextlib.contextmanager
def proxy_to(dsn: str, default_port: int = 5432) -> Iterator[TcpProxy]:
    """A started proxy to the server of ``dsn``, closed (with its loop) at the end."""
    proxy = TcpProxy(*host_port(dsn, default_port)).start()
    try:
        yield proxy
    finally:
        proxy.close()
        proxy._loop.close()  # TcpProxy.close() leaves its loop open (a ResourceWarning later)


def proxied(dsn: str, port: int) -> str:
    """``dsn`` pointed at a proxy on 127.0.0.1:``port``."""
    parts = urllib.parse.urlsplit(dsn)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))
