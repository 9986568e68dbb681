"""Runs a service until SIGINT or SIGTERM: start, serve health and metrics, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry

from .health import HealthServer
from .loop import running_loop_name
from .readiness import Readiness

__all__ = [
    "Runnable",
    "serve",
    "signals_set",
]

log = logging.getLogger(__name__)


class Runnable(Protocol):
    """What :func:`serve` runs (a :class:`~message_bus.app.bus.Bus` is one)."""

    async def start(self) -> None:
        """Connect and start every handler."""
        ...

    async def stop(self) -> None:
        """Drain the handlers (bounded) and disconnect."""
        ...

    async def readiness(self) -> Readiness:
        """Connected, streams present, every subscription active."""
        ...

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry ``/metrics`` shows."""
        ...

    @property
    def health_address(self) -> tuple[str, int]:
        """Host and port of ``/metrics``, ``/healthz`` and ``/readyz``."""
        ...


async def serve(
    service: Runnable,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
) -> int:
    """Run ``service`` until ``stop`` is set, SIGINT or SIGTERM; return the exit code 0.

    Starts the service, then serves ``/metrics``, ``/healthz`` and ``/readyz`` on its
    health address. On a signal the health server closes and the service stops: its
    handlers in flight finish and are acked (the service bounds the drain), then it
    disconnects. A signal during the start stops the service once it is started.

    Args:
        service: what to run.
        stop: an event that ends the run like a signal (tests set it).
        on_ready: called with the health server's URL once everything runs.
    """
    stop = stop or asyncio.Event()
    with signals_set(stop):
        await service.start()
        try:
            host, port = service.health_address
            server = HealthServer(service.registry, service.readiness, host=host, port=port)
            await server.start()
            try:
                log.info(
                    "serving /metrics /healthz /readyz on %s (event loop: %s)",
                    server.url,
                    running_loop_name(),
                )
                if on_ready is not None:
                    waiting = on_ready(server.url)
                    if waiting is not None:
                        await waiting
                await stop.wait()
                log.info("stopping: draining the handlers in flight")
            finally:
                await server.close()
        finally:
            await service.stop()
    return 0


@contextlib.contextmanager
def signals_set(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (where the loop can handle signals)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if sys.platform != "win32":
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
