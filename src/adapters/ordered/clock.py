"""Time for ordered groups: a monotonic clock with timers, the event loop's or a fake one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol


class Timer(Protocol):
    """A scheduled callback that can still be cancelled."""

    def cancel(self) -> None:
        """Do not run the callback (no-op if it already ran)."""


class Clock(Protocol):
    """What an ordered group reads time from (the in-memory broker's clock is one)."""

    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    def utcnow(self) -> datetime:
        """Wall-clock time, UTC."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once ``now()`` reaches ``when``."""
        ...


class LoopClock:
    """Real time: ``time.monotonic`` and the running event loop's timers."""

    def now(self) -> float:
        return time.monotonic()

    def utcnow(self) -> datetime:
        return datetime.now(UTC)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        loop = asyncio.get_running_loop()
        return loop.call_at(loop.time() + (when - time.monotonic()), callback)


async def sleep(clock: Clock, seconds: float) -> None:
    """Wait ``seconds`` on ``clock`` (a fake clock: until it is advanced that far)."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    timer = clock.call_at(clock.now() + seconds, wake)
    try:
        await future
    finally:
        timer.cancel()


__all__ = ["Clock", "LoopClock", "Timer", "sleep"]
