"""Handler time limits: ``max_handler_time`` for every handler of a subscription on one timer."""

from __future__ import annotations

import asyncio
from collections import deque

from message_bus.adapters.handler_limit import HandlerLimit


class HandlerLimits:
    """Cuts off the handlers of one subscription at ``max_handler_time``, on one timer.

    A handler starting has its :class:`HandlerLimit` started, runs under it, and leaves
    it (marking it ``done``) when it returns. Handlers of one subscription share one
    ``max_handler_time``, so their deadlines come in the order they start: one timer,
    at the earliest deadline not yet done, cuts off those that are due and re-arms at
    the next one. No timer is scheduled or cancelled per handler.

    Args:
        max_time: Seconds a handler may run.
        capacity: Handlers that run at once (bounds the done entries kept behind a long
            running one).
    """

    def __init__(self, max_time: float, capacity: int) -> None:
        self.max_time = max_time
        self._limits: deque[HandlerLimit] = deque()
        self._compact_at = 2 * capacity + 64
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, entry: HandlerLimit) -> HandlerLimit:
        """Starts the limit of a handler starting now; returns it, to run the handler under."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        entry.deadline = loop.time() + self.max_time
        entry.done = entry.cut = False
        limits = self._limits
        while limits and limits[0].done:
            limits.popleft()
        if len(limits) > self._compact_at:  # done ones behind a long running one
            self._limits = limits = deque(e for e in limits if not e.done)
        limits.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.deadline, self._expire)
        return entry

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now, limits = loop.time(), self._limits
        while limits and (limits[0].done or limits[0].deadline <= now):
            limits.popleft().cut_off()
        if limits:
            self._timer = loop.call_at(limits[0].deadline, self._expire)

    def close(self) -> None:
        """Stops the timer (the subscription has closed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["HandlerLimit", "HandlerLimits"]
