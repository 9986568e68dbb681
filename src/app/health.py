"""A small asyncio HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .readiness import Readiness

__all__ = ["HealthServer"]

log = logging.getLogger(__name__)

_REQUEST_TIMEOUT = 10.0
_MAX_HEADER_LINES = 100
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serves the registry's metrics and the bus's health over HTTP/1.1 (one request per
    connection).

    * ``/metrics``: the Prometheus text format of ``registry``;
    * ``/healthz``: 200 while the process runs (its event loop answers);
    * ``/readyz``: 200 when ``readiness()`` says ready, else 503; the body is JSON with
      every check (``{"ready": false, "checks": {"connection": "not connected ..."}}``).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Callable[[], Awaitable[Readiness]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._registry = registry
        self._readiness = readiness
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one picked when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the health server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        """Listen on ``host:port``.

        Raises:
            OSError: the port is taken or the address is not available.
        """
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def close(self) -> None:
        """Stop listening and close the open connections; idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                request = await reader.readline()
                for _ in range(_MAX_HEADER_LINES):
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                status, content_type, body = await self._answer(request)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that is slow, gone or not speaking HTTP gets nothing
        except Exception:
            log.exception("health server request failed")
        finally:
            writer.close()

    async def _answer(self, request: bytes) -> tuple[int, str, bytes]:
        parts = request.decode("latin-1").split()
        if len(parts) < 2:
            raise ValueError("not an HTTP request line")
        method, target = parts[0], parts[1].split("?", 1)[0]
        if target not in ("/metrics", "/healthz", "/readyz"):
            return 404, "text/plain; charset=utf-8", b"not found: /metrics /healthz /readyz\n"
        if method != "GET":
            return 405, "text/plain; charset=utf-8", b"GET only\n"
        if target == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if target == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        readiness = await self._readiness()
        body = json.dumps({"ready": readiness.ready, "checks": dict(readiness.checks)})
        return (200 if readiness.ready else 503), "application/json", body.encode() + b"\n"
