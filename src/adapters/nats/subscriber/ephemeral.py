"""Ephemeral readers: a subscription whose own consumer is deleted when it closes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from message_bus.domain.errors import SubscriptionError
from message_bus.ports.subscriber import Subscription

from .consumer import ConsumerBinding
from .pull import PullSubscription

_DELETE_TIMEOUT = 2.0

OnClosed = Callable[[Subscription], None]


class EphemeralSubscription(Subscription):
    """Wraps the subscription of an ephemeral consumer; deletes that consumer on close.

    The consumer belongs to this subscription alone (see :class:`ConsumerBinding`), so
    nothing it received, acknowledged or released concerns any consumer group. It is
    deleted once the inner subscription has closed, whatever closed it: ``stop``,
    ``drain``, or a failure (then ``error``, ``on_failure`` and ``wait`` report the
    inner subscription's failure). If the process dies first, the server deletes the
    consumer once it has been inactive for its ``inactive_threshold``.

    Args:
        consumer: The subscription's own ephemeral consumer.
        subscribe: Builds the inner subscription, given the callback it must call
            once it has closed.
        on_closed: Called with this subscription once its consumer is deleted.
    """

    def __init__(
        self,
        consumer: ConsumerBinding,
        subscribe: Callable[[OnClosed], PullSubscription],
        on_closed: OnClosed,
    ) -> None:
        self.consumer = consumer
        self._on_closed = on_closed
        self._deletion: asyncio.Task[None] | None = None
        self.inner = subscribe(self._inner_closed)

    async def start(self) -> None:
        """Create the consumer and start receiving."""
        await self.inner.start()

    @property
    def active(self) -> bool:
        return self.inner.active

    @property
    def error(self) -> SubscriptionError | None:
        return self.inner.error

    def on_failure(self, listener: Callable[[SubscriptionError], None]) -> None:
        self.inner.on_failure(listener)

    def fail(self, error: SubscriptionError) -> bool:
        return self.inner.fail(error)

    def raise_failure(self) -> None:
        self.inner.raise_failure()

    async def stop(self) -> None:
        try:
            await self.inner.stop()
        except BaseException:
            self._delete_if_stopped()  # it stopped, though not cleanly
            raise
        finally:
            await self._deleted()

    async def drain(self) -> None:
        try:
            await self.inner.drain()
        except BaseException:
            self._delete_if_stopped()
            raise
        finally:
            await self._deleted()

    async def wait(self) -> None:
        try:
            await self.inner.wait()
        finally:
            await self._deleted()

    def _inner_closed(self, inner: Subscription) -> None:
        self._begin_delete()

    def _delete_if_stopped(self) -> None:
        if not self.inner.active:
            self._begin_delete()

    def _begin_delete(self) -> None:
        if self._deletion is None:
            self._deletion = asyncio.ensure_future(self._delete())

    async def _delete(self) -> None:
        try:
            await self.consumer.delete(_DELETE_TIMEOUT)
        finally:
            self._on_closed(self)

    async def _deleted(self) -> None:
        """Wait for the consumer's deletion, if it has begun."""
        if self._deletion is not None:
            await asyncio.shield(self._deletion)


__all__ = ["EphemeralSubscription"]
