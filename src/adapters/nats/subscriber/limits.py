"""Handler time limits: ``max_handler_time`` for every handler of a subscription on one timer."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class HandlerLimit:
    """The time limit of one running handler: its deadline on the event loop's clock.

    Attributes:
        deadline: ``loop.time()`` at which the handler is cut off (set by
            :meth:`HandlerLimits.start`).
        timeout: the ``asyncio.timeout`` the handler runs under (no timer of its own:
            :class:`HandlerLimits` expires it); None until started.
        done: the handler returned (or was cancelled); nothing to cut off any more.
    """

    __slots__ = ("deadline", "done", "timeout")

    def __init__(self) -> None:
        self.deadline = 0.0
        self.done = False
        self.timeout: asyncio.Timeout | None = None


class HandlerLimits:
    """Cuts off the handlers of one subscription at ``max_handler_time``, on one timer.

    A handler starting has its :class:`HandlerLimit` started (an ``asyncio.timeout``
    without a timer, under which it runs) and marks it ``done`` when it returns.
    Handlers of one subscription share one ``max_handler_time``, so their deadlines come
    in the order they start: one timer, at the earliest deadline not yet done, cuts off
    those that are due and re-arms at the next one. No timer is scheduled or cancelled per handler.

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

    def start(self, entry: HandlerLimit) -> asyncio.Timeout:
        """Starts the limit of a handler starting now; returns the timeout to run it under."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        timeout = entry.timeout = asyncio.timeout(None)
        entry.deadline = loop.time() + self.max_time
        entry.done = False
        limits = self._limits
        while limits and limits[0].done:
            limits.popleft()
        if len(limits) > self._compact_at:  # done ones behind a long running one
            self._limits = limits = deque(e for e in limits if not e.done)
        limits.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.deadline, self._expire)
        return timeout

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now, limits = loop.time(), self._limits
        while limits and (limits[0].done or limits[0].deadline <= now):
            entry = limits.popleft()
            timeout = entry.timeout
            if not entry.done and timeout is not None and timeout.when() is None:
                with contextlib.suppress(RuntimeError):  # not entered, or already left
                    timeout.reschedule(now)
        if limits:
            self._timer = loop.call_at(limits[0].deadline, self._expire)

    def close(self) -> None:
        """Stops the timer (the subscription has closed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["HandlerLimit", "HandlerLimits"]
