"""The worker pool: long-lived tasks that handle queued deliveries, none per message."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from .closing import STOP_TIMEOUT

log = logging.getLogger("message_bus.nats.subscriber")

T = TypeVar("T")


class Workers(Generic[T]):
    """``size`` long-lived tasks handling queued items; no task per message.

    Items wait in a deque. A parked worker is woken only when there is work and no
    other wake-up is on its way, and a worker that takes an item while more wait wakes
    the next one before handling it: handlers that suspend run ``size`` at once, while
    handlers that do not are run back to back by one worker, with one or two wake-ups
    per burst instead of one per message.
    """

    def __init__(self, size: int, handle: Callable[[T], Awaitable[None]], name: str) -> None:
        self.items: collections.deque[T | None] = collections.deque()
        self.busy = 0
        self.on_idle_slot: Callable[[], None] | None = None
        self._handle = handle
        self._name = name
        self._parked: list[asyncio.Future[None]] = []
        self._waking = False
        self._tasks = [
            asyncio.create_task(self._run(), name=f"{name}-worker-{i}") for i in range(size)
        ]

    def put(self, item: T) -> None:
        """Queues ``item`` (never blocks)."""
        self.items.append(item)
        if self._parked and not self._waking:
            self._wake()

    def _wake(self) -> None:
        parked = self._parked
        while parked:
            waiter = parked.pop()
            if not waiter.done():
                self._waking = True
                waiter.set_result(None)
                return

    async def _run(self) -> None:
        items = self.items
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        while True:
            if not items:
                waiter = loop.create_future()
                self._parked.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter.done() and not waiter.cancelled():
                        self._waking = False
                continue
            item = items.popleft()
            if item is None:
                return
            if items and self._parked and not self._waking:
                self._wake()
            self.busy += 1
            try:
                await self._handle(item)
            except Exception:  # never let one delivery kill the worker
                log.exception("%s: handling a delivery failed", self._name)
            except asyncio.CancelledError:
                # A handler may raise CancelledError without this task being cancelled
                # (it awaited a future someone else cancelled): that kills no worker.
                if task is None or task.cancelling():
                    raise
                log.warning("%s: a handler raised CancelledError", self._name)
            finally:
                self.busy -= 1
                if self.on_idle_slot is not None:
                    self.on_idle_slot()

    def owns(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether ``task`` is one of the workers (a handler is calling)."""
        return task is not None and task in self._tasks

    async def finish(self, timeout: float | None = None) -> None:
        """Lets every worker finish the queue (then its current item) and exit.

        Workers still busy after ``timeout`` seconds are cancelled (their handlers get
        a CancelledError; their unsettled deliveries are redelivered after ack_wait).
        """
        for _ in self._tasks:
            self.items.append(None)
        for waiter in self._parked:
            if not waiter.done():
                waiter.set_result(None)
        self._parked.clear()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current and not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.error(
                    "%s: %d handler(s) still running after %.1fs; cancelling them, their "
                    "deliveries will be redelivered",
                    self._name,
                    len(pending),
                    timeout,
                )
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=STOP_TIMEOUT)
                if pending:
                    log.error("%s: %d handler(s) ignore cancellation", self._name, len(pending))
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a worker only ends by the sentinel


__all__ = ["Workers"]
