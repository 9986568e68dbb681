"""Core subscriptions: a queue-group subscription for core-only types, replies to requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.subscription import Subscription as NatsSubscription

from message_bus.domain.catalog import MessageType
from message_bus.domain.codec import WireCodec
from message_bus.domain.errors import BusConnectionError, DecodeError
from message_bus.domain.message import Message
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.subscriber import (
    CoreDelivery,
    MessageHandler,
    Subscription,
    run_handler,
)

from ..client import ConnectionStatus, NatsClient
from ..framing import BlockCodec
from ..headers import headers_of
from ..internals import ordered_flush
from .closing import close_inbox, flush_acks
from .limits import HandlerLimit, HandlerLimits
from .workers import Workers

log = logging.getLogger("message_bus.nats.subscriber")

PENDING_MSGS_LIMIT = 512 * 1024
"""Core messages a subscription holds unhandled before it drops new ones (nats-py's own
default for a subscription: core NATS drops messages for a slow consumer)."""
PENDING_BYTES_LIMIT = 128 * 1024 * 1024
"""Bytes of core messages a subscription holds unhandled before it drops new ones."""

Raw = tuple[bytes, bytes, bytes, "bytes | None"]
"""A core message as read: subject, reply subject, body, header block."""


class CoreSubscription(Subscription):
    """A core NATS subscription in the group's queue group.

    Messages come on a raw route (see :mod:`..internals`): the parser hands each one to
    the worker pool as it reads it, with no ``Msg``, no header dict and no task of
    nats-py's in between, so a handler starts in the event loop step after its message
    was read. Beyond ``PENDING_MSGS_LIMIT`` messages or ``PENDING_BYTES_LIMIT`` bytes
    waiting, new messages are dropped with a warning, as core NATS drops them for a
    slow consumer.

    Args:
        client: The connection to subscribe on.
        handler: Runs once per message; its reply answers a request.
        message_type: The type to receive (its subject, filtered by the partition key).
        config: Queue group, concurrency and partition key.
        codec: Decodes messages.
        reply_codec: Encodes replies.
        on_closed: Called with this subscription once it has closed.
        queue_group: Join the group's queue group (False: receive every message, as a
            reader in no group).
    """

    def __init__(
        self,
        client: NatsClient,
        handler: MessageHandler,
        message_type: MessageType,
        config: SubscriberConfig,
        *,
        codec: BlockCodec,
        reply_codec: WireCodec,
        on_closed: Callable[[Subscription], None],
        queue_group: bool = True,
    ) -> None:
        self._handler = handler
        self._client = client
        self._queue = config.consumer_group if queue_group else ""
        self._config = config
        self._codec = codec
        self._reply_codec = reply_codec
        self._on_closed = on_closed
        key = config.partition_key
        self._subject = f"{message_type.subject_prefix}.{key.suffix if key else '>'}"
        self._capacity = config.max_concurrent
        self._limits = HandlerLimits(config.max_handler_time, config.max_concurrent)
        self._sub: NatsSubscription | None = None
        self._workers: Workers[Raw] | None = None
        self._pending_bytes = 0
        self._dropped = 0
        self._finishing = False
        self._stopping = False
        self._shutdown: asyncio.Task[None] | None = None
        self._started_closing = asyncio.Event()
        self._remove_listener: Any = None

    async def start(self) -> None:
        nc = self._client.connection
        workers = self._workers = Workers(self._capacity, self._deliver, f"deltran-{self._subject}")
        try:
            self._sub = await self._client.subscribe_raw(
                self._subject, self._on_message, queue=self._queue
            )
            await ordered_flush(nc, self._client.config.connection_timeout)  # the SUB is in effect
        except BaseException:
            self._stopping = True
            if self._sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await self._sub.unsubscribe()
            await workers.finish()  # idle: they exit at once
            raise
        self._remove_listener = self._client.on_status(self._on_status)

    def _on_status(self, status: ConnectionStatus) -> None:
        if status is ConnectionStatus.CLOSED:
            self._begin_close()

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, block: bytes | None) -> None:
        workers = self._workers
        if workers is None or self._finishing:
            return  # routed after the close gave up unsubscribing: nobody would handle it
        size = len(data) + (len(block) if block else 0)
        if (
            len(workers.items) >= PENDING_MSGS_LIMIT
            or self._pending_bytes + size > PENDING_BYTES_LIMIT
        ):
            if not self._dropped:
                log.warning(
                    "slow consumer on %s: %d messages wait for a handler; dropping new ones",
                    self._subject,
                    len(workers.items),
                )
            self._dropped += 1
            return
        if self._dropped:
            log.warning("slow consumer on %s: %d messages dropped", self._subject, self._dropped)
            self._dropped = 0
        self._pending_bytes += size
        workers.put((subject, reply, data, block))

    async def _deliver(self, raw: Raw) -> None:
        subject_bytes, reply, data, block = raw
        self._pending_bytes -= len(data) + (len(block) if block else 0)
        subject = subject_bytes.decode("utf-8", "replace")
        try:
            message = self._codec.decode_block(subject, block, data)
            if message is None:
                message = self._codec.decode(subject, headers_of(block), data)
        except DecodeError as exc:
            log.warning("dropped an undecodable core message on %s: %s", subject, exc)
            return
        limit = self._limits.start(HandlerLimit())
        delivery = NatsCoreDelivery(self, subject, reply.decode() if reply else "", message)
        try:
            await run_handler(self._handler, delivery, self._config, limit=limit)
        finally:
            limit.done = True

    async def respond(self, reply_subject: str, reply: Message) -> None:
        encoded = self._reply_codec.encode(reply)
        try:
            await self._client.connection.publish(
                reply_subject, encoded.body, headers=dict(encoded.headers)
            )
        except nats.errors.Error as exc:
            raise BusConnectionError(f"could not send the reply: {exc}") from exc

    @property
    def active(self) -> bool:
        return not self._stopping

    async def stop(self) -> None:
        await self._close()

    async def drain(self) -> None:
        await self._close()

    async def wait(self) -> None:
        await self._started_closing.wait()
        assert self._shutdown is not None
        await asyncio.shield(self._shutdown)

    async def _close(self) -> None:
        closing = self._begin_close()
        if self._workers is not None and self._workers.owns(asyncio.current_task()):
            return  # called by a handler: the close completes once the handler returns
        await asyncio.shield(closing)

    def _begin_close(self) -> asyncio.Task[None]:
        if self._shutdown is None:
            self._stopping = True
            self._shutdown = asyncio.ensure_future(self._run_close())
            self._started_closing.set()
        return self._shutdown

    async def _run_close(self) -> None:
        # Core messages cannot be redelivered: stop and drain both handle what arrived.
        if self._remove_listener is not None:
            self._remove_listener()
        await close_inbox(self._client, self._sub)  # what arrived until then is handled
        self._finishing = True
        if self._workers is not None:
            await self._workers.finish(self._config.ack_wait)
        self._limits.close()
        await flush_acks(self._client)
        self._on_closed(self)


class NatsCoreDelivery(CoreDelivery):
    """A core NATS delivery; a request's reply goes to its reply subject."""

    def __init__(self, owner: CoreSubscription, subject: str, reply: str, message: Message) -> None:
        super().__init__(message, subject)
        self._reply = reply
        self._owner = owner

    async def respond(self, reply: Message) -> None:
        if self._reply:
            await self._owner.respond(self._reply, reply)


__all__ = ["CoreSubscription", "NatsCoreDelivery"]
