"""Core subscriptions: a queue-group subscription for core-only types, replies to requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
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
from ..internals import ordered_flush
from .closing import close_inbox, flush_acks
from .limits import HandlerLimit, HandlerLimits
from .workers import Workers

log = logging.getLogger("message_bus.nats.subscriber")


class CoreSubscription(Subscription):
    """A core NATS subscription in the group's queue group.

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
        codec: WireCodec,
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
        self._workers: Workers[Msg] | None = None
        self._stopping = False
        self._shutdown: asyncio.Task[None] | None = None
        self._started_closing = asyncio.Event()
        self._remove_listener: Any = None

    async def start(self) -> None:
        nc = self._client.connection
        workers = self._workers = Workers(
            self._capacity, self._deliver, f"deltran-{self._subject}", maxsize=self._capacity
        )
        try:
            self._sub = await nc.subscribe(
                self._subject,
                queue=self._queue,
                cb=self._on_message,
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

    async def _on_message(self, msg: Msg) -> None:
        assert self._workers is not None
        # Back-pressure: beyond max_concurrent waiting messages, nats-py buffers them
        # (and reports a slow consumer past its pending limits).
        await self._workers.put_wait(msg)

    async def _deliver(self, msg: Msg) -> None:
        try:
            message = self._codec.decode(msg.subject, msg.headers, msg.data)
        except DecodeError as exc:
            log.warning("dropped an undecodable core message on %s: %s", msg.subject, exc)
            return
        limit = self._limits.start(HandlerLimit())
        delivery = NatsCoreDelivery(self, msg, message)
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
        await close_inbox(self._client, self._sub)
        if self._workers is not None:
            await self._workers.finish(self._config.ack_wait)
        self._limits.close()
        await flush_acks(self._client)
        self._on_closed(self)


class NatsCoreDelivery(CoreDelivery):
    """A core NATS delivery; a request's reply goes to its reply subject."""

    def __init__(self, owner: CoreSubscription, msg: Msg, message: Message) -> None:
        super().__init__(message, msg.subject)
        self._msg = msg
        self._owner = owner

    async def respond(self, reply: Message) -> None:
        if self._msg.reply:
            await self._owner.respond(self._msg.reply, reply)


__all__ = ["CoreSubscription", "NatsCoreDelivery"]
