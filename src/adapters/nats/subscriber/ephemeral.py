"""Ephemeral readers: a subscription whose own consumer is deleted when it closes."""

from __future__ import annotations

from message_bus.ports.subscriber import Subscription

from .consumer import ConsumerBinding

_DELETE_TIMEOUT = 2.0


class EphemeralSubscription(Subscription):
    """Wraps the subscription of an ephemeral consumer; deletes that consumer on close.

    The consumer belongs to this subscription alone (see :class:`ConsumerBinding`), so
    nothing it received, acknowledged or released concerns any consumer group. If the
    process dies first, the server deletes the consumer once it has been inactive for
    its ``inactive_threshold``.
    """

    def __init__(self, inner: Subscription, consumer: ConsumerBinding) -> None:
        self.inner = inner
        self.consumer = consumer
        self._deleted = False

    @property
    def active(self) -> bool:
        return self.inner.active

    async def stop(self) -> None:
        await self.inner.stop()
        await self._delete()

    async def drain(self) -> None:
        await self.inner.drain()
        await self._delete()

    async def _delete(self) -> None:
        if not self._deleted and not self.inner.active:
            self._deleted = True
            await self.consumer.delete(_DELETE_TIMEOUT)


__all__ = ["EphemeralSubscription"]
