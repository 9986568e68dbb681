"""Waits with deadlines that the integration tests share: poll a condition, never sleep
a fixed time, and name what was waited for when the deadline passes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


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


__all__ = ["eventually"]
