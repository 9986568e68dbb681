"""Subscriptions as worker pools: ``max_concurrent`` workers that take deliveries from one source.

Each subscription runs ``max_concurrent`` long-lived worker tasks; a worker takes one
delivery at a time from its source (a durable group, or the subscription's own core
inbox), runs the handler through :func:`run_handler`, and takes the next one at once when
there is a backlog (yielding to the event loop every ``YIELD_EVERY`` deliveries). Idle
workers wait in the source's FIFO of :class:`Waiters`, so the members of a group take
turns. Nothing is fetched ahead of a free worker: a stream subscription that stops or
drains has nothing to release or finish beyond the handlers in flight.

Every handler runs under ``max_handler_time`` on the broker's clock (a ManualClock
cuts it off only when advanced past it): then it is cancelled and its delivery failed
(NAK, or dead letter on its last allowed delivery). While it runs, its group keeps the
delivery alive (see :class:`~message_bus.adapters.memory._group.Group`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from message_bus.adapters.handler_limit import HandlerLimit
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.subscriber import (
    Delivery,
    MessageHandler,
    Subscription,
    run_handler,
    settle_failure,
)

from ._host import Activity, ConsumerHost
from .clock import Timer

log = logging.getLogger("message_bus.memory")

YIELD_EVERY = 64
"""Deliveries a worker handles back to back before it yields to the event loop."""


class Waiters:
    """Idle workers, first come first woken; ``queue`` is empty when none is idle."""

    __slots__ = ("_activity", "queue")

    def __init__(self, activity: Activity) -> None:
        self._activity = activity
        self.queue: deque[tuple[asyncio.Future[None], Member]] = deque()

    async def wait(self, member: Member) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append((waiter, member))
        try:
            await waiter
        finally:
            if waiter.done() and not waiter.cancelled():
                self._activity.woken -= 1

    def _wake(self, waiter: asyncio.Future[None]) -> bool:
        if waiter.done():  # its worker was cancelled
            return False
        waiter.set_result(None)
        self._activity.woken += 1
        return True

    def wake_one(self) -> None:
        queue = self.queue
        while queue and not self._wake(queue.popleft()[0]):
            pass

    def wake_member(self, member: Member) -> None:
        """Wake (and forget) every idle worker of ``member``."""
        items = list(self.queue)
        self.queue.clear()
        for item in items:
            if item[1] is member:
                self._wake(item[0])
            else:
                self.queue.append(item)


class Member(Subscription):
    """One running subscription: ``max_concurrent`` workers over one source.

    ``stop`` and ``drain`` wait for the handlers in flight, except for handlers that are
    themselves waiting in a ``stop`` or ``drain`` (a handler that stops its own
    subscription), so that no two handlers wait for each other. Cancelling the wait does
    not cancel the handlers.
    """

    def __init__(
        self,
        host: ConsumerHost,
        handler: MessageHandler,
        config: SubscriberConfig,
        waiters: Waiters,
        name: str,
    ) -> None:
        self.config = config
        self.name = name
        self._host = host
        self._handler = handler
        self._waiters = waiters
        self._stopping = False
        self._draining = False
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self._ended = asyncio.Event()
        self._limits: deque[HandlerLimit] = deque()
        self._limit_timer: Timer | None = None

    @property
    def active(self) -> bool:
        return not (self._stopping or self._draining)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._running = self.config.max_concurrent
        self._workers = [
            loop.create_task(self._work(), name=f"memory-worker:{self.name}:{i}")
            for i in range(self.config.max_concurrent)
        ]

    def _take(self) -> Delivery | None:
        """The next delivery for a free worker, or None (also once draining is done)."""
        raise NotImplementedError

    def _detach(self) -> None:
        """Receive nothing new (leave the group or the queue)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Give up what was handed over but not started (on stop); pass wake-ups on."""

    def _finished(self, delivery: Delivery) -> None:
        """The handler of ``delivery`` returned or was cancelled."""

    async def _work(self) -> None:
        take, streak = self._take, 0
        try:
            while not self._stopping:
                if streak >= YIELD_EVERY:  # a backlog of handlers that never suspend
                    streak = 0  # must not starve the event loop
                    await asyncio.sleep(0)
                    continue
                delivery = take()
                if delivery is not None:
                    streak += 1
                    await self._handle(delivery)
                elif self._draining:
                    return
                else:
                    streak = 0
                    await self._waiters.wait(self)
        finally:
            # A worker woken for work it no longer takes passes the wake-up on.
            self._release()
            self._running -= 1
            if self._running == 0:
                if self._limit_timer is not None:
                    self._limit_timer.cancel()
                    self._limit_timer = None
                self._host.forget(self)
                self._ended.set()

    def _limit(self) -> HandlerLimit:
        """The ``max_handler_time`` of a handler starting now (see :meth:`_on_limit`)."""
        clock = self._host.clock
        entry = HandlerLimit(clock.now() + self.config.max_handler_time)
        limits = self._limits
        while limits and limits[0].done:
            limits.popleft()
        if len(limits) > 2 * self.config.max_concurrent + 64:  # done ones behind a long one
            self._limits = limits = deque(e for e in limits if not e.done)
        limits.append(entry)
        if self._limit_timer is None:
            self._limit_timer = clock.call_at(entry.deadline, self._on_limit)
        return entry

    def _on_limit(self) -> None:
        """Cuts off the handlers whose ``max_handler_time`` is up; one timer per member,
        at the earliest deadline (handlers start in deadline order)."""
        clock = self._host.clock
        self._limit_timer = None
        now, limits = clock.now(), self._limits
        while limits and (limits[0].done or limits[0].deadline <= now):
            entry = limits.popleft()
            entry.cut_off()
        if limits:
            self._limit_timer = clock.call_at(limits[0].deadline, self._on_limit)

    async def _handle(self, delivery: Delivery) -> None:
        entry = self._limit()
        try:
            await run_handler(self._handler, delivery, self.config, limit=entry)
        except asyncio.CancelledError as exc:
            worker = asyncio.current_task()
            if worker is None or worker.cancelling():  # the worker itself is cancelled
                raise
            # The handler awaited something that was cancelled: this delivery failed
            # like any other, the worker goes on.
            await settle_failure(delivery, exc, self.config)
        except Exception:
            log.exception("settling %s failed", delivery.subject)
            if not delivery.settled:
                await delivery.nak(self.config.nak_delay(delivery.attempt))
        finally:
            entry.done = True
            self._finished(delivery)

    async def stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            if not self._draining:
                self._detach()
            self._waiters.wake_member(self)
            self._release()
        await self._join()

    async def drain(self) -> None:
        if not (self._stopping or self._draining):
            self._draining = True
            self._detach()
            self._waiters.wake_member(self)
        await self._join()

    async def wait(self) -> None:
        if self._workers:
            await self._ended.wait()

    async def _join(self) -> None:
        joining = self._host.joining
        current = asyncio.current_task()
        workers = [w for w in self._workers if not (w.done() or w is current or w in joining)]
        if not workers:
            return
        assert current is not None  # a coroutine awaited under asyncio runs in a task
        joining.add(current)
        try:
            await asyncio.wait(workers)
        finally:
            joining.discard(current)
