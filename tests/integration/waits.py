"""Waits with deadlines that the integration tests share: poll a condition, never sleep
a fixed time, and name what was waited for when the deadline passes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from message_bus.adapters.nats import NatsClient, StreamManager
from message_bus.adapters.nats.streams import StreamCatalog, StreamError


async def eventually(
    predicate: Callable[[], Awaitable[bool] | bool],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.02,
) -> None:
    """Polls ``predicate`` (plain or async) until it is true.

    Raises:
        AssertionError: naming ``what``, if it is still false after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        await asyncio.sleep(interval)


async def apply_r3(client: NatsClient, timeout: float = 30.0) -> None:
    """Applies the stream catalog with 3 replicas. The cluster launcher returns once its
    meta leader sees every node current, but placement can still find a peer offline
    for a moment on a loaded machine ("no suitable peers for placement"): that answer
    is asked again until ``timeout``; apply is idempotent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await StreamManager(client).apply(StreamCatalog.default(), replicas=3)
            return
        except StreamError as exc:
            if "no suitable peers" not in str(exc) or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.2)


__all__ = ["apply_r3", "eventually"]
