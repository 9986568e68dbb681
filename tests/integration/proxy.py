"""A loopback TCP proxy that injects network faults between a client and nats-server.

The proxy runs its own event loop in a daemon thread, so a test whose loop is busy (or
a test that is not async at all) still has a working network in between. Faults:

- ``cut()`` closes every open connection at once (both directions, like a reset);
- ``drop(upstream=..., downstream=...)`` silently discards bytes in one direction while
  the connection stays open (a black hole);
- ``delay(seconds)`` holds every chunk that long before forwarding it;
- ``refuse(True)`` closes new connections as soon as they are accepted;
- ``seen_upstream`` / ``seen_downstream`` record everything that went through (to check
  what a client sent on the wire, e.g. that a password never travels in plain text).

Usage::

    with TcpProxy("127.0.0.1", server.port) as proxy:
        url = proxy.url  # nats://127.0.0.1:<proxy port>
        ...
        proxy.cut()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

_CHUNK = 65536


class TcpProxy:
    """Forwards one local port to ``target_host:target_port``, with faults on demand."""

    def __init__(self, target_host: str, target_port: int, *, scheme: str = "nats") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.scheme = scheme
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._lock = threading.Lock()
        self._drop_up = False
        self._drop_down = False
        self._delay = 0.0
        self._refuse = False
        self._up = bytearray()
        self._down = bytearray()
        self.connections = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> TcpProxy:
        """Starts listening on a free loopback port; returns self."""
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Closes every connection and the listener, then stops the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close_all(listener=True))
        with contextlib.suppress(Exception):
            self._call(self._finish_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The URL a client connects to instead of the server's."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- faults

    def cut(self) -> None:
        """Closes every open connection now; new connections are still accepted."""
        self._call(self._close_all(listener=False))

    def drop(self, *, upstream: bool = False, downstream: bool = False) -> None:
        """Discards bytes client→server (``upstream``) and/or server→client."""
        with self._lock:
            self._drop_up = upstream
            self._drop_down = downstream

    def delay(self, seconds: float) -> None:
        """Holds every chunk ``seconds`` before forwarding it (0 turns it off)."""
        with self._lock:
            self._delay = seconds

    def refuse(self, on: bool = True) -> None:
        """Closes new connections as soon as they are accepted (while ``on``)."""
        with self._lock:
            self._refuse = on

    def heal(self) -> None:
        """Turns every fault off (drop, delay, refuse)."""
        self.drop()
        self.delay(0)
        self.refuse(False)

    @property
    def seen_upstream(self) -> bytes:
        """Every byte the clients sent so far (forwarded or dropped)."""
        with self._lock:
            return bytes(self._up)

    @property
    def seen_downstream(self) -> bytes:
        """Every byte the server sent so far (forwarded or dropped)."""
        with self._lock:
            return bytes(self._down)

    @property
    def open_connections(self) -> int:
        """Connections currently open through the proxy."""
        with self._lock:
            return len(self._writers) // 2

    # ----------------------------------------------------------------- internals

    def _call(self, coro: Any, timeout: float = 5.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _close_all(self, *, listener: bool) -> None:
        if listener and self._server is not None:
            self._server.close()
        with self._lock:
            writers = list(self._writers)
            self._writers.clear()
        for writer in writers:
            with contextlib.suppress(Exception):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # RST rather than FIN, like a dead peer or a middlebox dropping state.
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                writer.close()

    async def _finish_tasks(self) -> None:
        """Cancels and awaits every task left on the proxy's loop (connections being
        accepted or piped), so none is destroyed pending when the loop closes."""
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            refuse = self._refuse
        if refuse:
            writer.close()
            await _closed([writer])
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            await _closed([writer])
            return
        with self._lock:
            self._writers.update((writer, up_writer))
            self.connections += 1
        await asyncio.gather(
            self._pipe(reader, up_writer, lambda: self._drop_up, self._up),
            self._pipe(up_reader, writer, lambda: self._drop_down, self._down),
            return_exceptions=True,
        )
        with self._lock:
            self._writers.discard(writer)
            self._writers.discard(up_writer)
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()
        await _closed([writer, up_writer])

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        dropping: Callable[[], bool],
        seen: bytearray,
    ) -> None:
        try:
            while True:
                chunk = await reader.read(_CHUNK)
                if not chunk:
                    break
                with self._lock:
                    seen.extend(chunk)
                    delay = self._delay
                    drop = dropping()
                if delay:
                    await asyncio.sleep(delay)
                if drop:
                    continue
                writer.write(chunk)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def _closed(writers: list[asyncio.StreamWriter]) -> None:
    """Waits (bounded) until the transports are really closed, so no socket leaks."""
    if writers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True), 2
            )


__all__ = ["TcpProxy"]
