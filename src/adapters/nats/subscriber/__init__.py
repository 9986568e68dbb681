"""The JetStream subscriber facade: picks a pull or core subscription per message type.

The subscriber is split by concern: :mod:`.consumer` manages the group's durable
consumer, :mod:`.workers` is the worker pool, :mod:`.pull` the pull loop (with the
deliveries of :mod:`.delivery`, the in-flight bookkeeping of :mod:`.inflight` and the
confirmed acknowledgements of :mod:`.confirm`), :mod:`.core` core subscriptions, and
:mod:`.closing` how a subscription's inbox is closed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import nats.errors
import nats.js.errors

from message_bus.adapters.ordered.clock import LoopClock
from message_bus.adapters.ordered.member import OrderedSubscription
from message_bus.domain.catalog import MessageType, StreamCatalog
from message_bus.domain.codec import WireCodec
from message_bus.domain.errors import (
    BusConnectionError,
    ClosedError,
    StreamError,
    ValidationError,
)
from message_bus.ports.config import PublisherConfig, SubscriberConfig
from message_bus.ports.subscriber import (
    MessageHandler,
    Subscriber,
    Subscription,
    check_handler,
)

from ..client import NatsClient
from ..framing import BlockCodec
from ..group_store import KvGroupStore
from ..sender import Sender
from .consumer import DEFAULT_INACTIVE_THRESHOLD, ConsumerBinding
from .core import CoreSubscription
from .dead_letter_sink import NatsDeadLetterSink
from .ephemeral import EphemeralSubscription
from .pull import PullSubscription
from .stream_source import JetStreamSource


class JetStreamSubscriber(Subscriber):
    """Consumes one message type from NATS.

    Stream-backed types (with ``use_jetstream``) are consumed through one durable pull
    consumer per (stream, consumer name): every member of a consumer group binds to the
    same consumer, so members share the work, and a group that restarts resumes where
    it stopped. The consumer is created if absent (explicit acks, ``ack_wait``, no
    server-side delivery limit, ``max_ack_pending``, filter from ``partition_key``,
    deliver all); see :class:`PullSubscription` for the fetch loop. The subscriber
    enforces ``max_deliver`` itself, so a message is never dropped by the server: a
    dead letter that cannot be stored (dead-letter stream missing or unavailable) is
    NAKed and dead-lettered on a later delivery.

    Each delivery is decoded with :class:`BlockCodec` and settled by :func:`run_handler`:
    ACK, NAK with the delay computed from the delivery count, or TERM with a dead
    letter. Dead letters are published to ``DEAD_LETTERS`` and acknowledged by
    JetStream before the TERM is sent (publish-before-term), so a dead letter is
    durable even if the process dies right after. A message that cannot be decoded is
    dead-lettered with the decode error; a delivery past ``max_deliver`` (its last
    allowed delivery timed out, or its dead letter could not be stored) is
    dead-lettered without running the handler.

    While a handler runs, the subscription keeps its delivery alive (``+WPI``) and
    never starts a second handler for the same stream sequence; a handler past
    ``max_handler_time`` is cancelled and its message NAKed. With ``confirm_acks``
    every ACK waits for the server's confirmation, and a subscription the server
    refuses its acknowledgements fails with ``PermissionDenied``.

    Core-only types (or ``use_jetstream=False``) use a core subscription in a queue
    group named after the consumer group; a handler's reply answers the request.

    With ``ephemeral=True`` the subscriber is a reader in no group: each
    subscription consumes the stream (from its start, or just the partition key's
    messages) through an ephemeral consumer of its own under a fresh name, deleted
    once the subscription has closed, by ``stop``, ``drain`` or a failure (or by the
    server after ``inactive_threshold`` seconds without pull requests, if the process
    dies). Its acknowledgements concern
    that consumer alone, and it never dead-letters (a TERM is only the reader's). On
    core-only types it subscribes without a queue group, so it takes nothing from any
    group either.

    Args:
        client: A connected :class:`NatsClient`.
        message_type: The type to consume.
        config: Group, durable name, concurrency and redelivery settings.
        catalog: Which stream holds the type (defaults to the design's table).
        publisher_config: Retry settings for storing dead letters and sending replies.
        pull_expires: Seconds a pull request lingers on the server.
        idle_heartbeat: Seconds between the server's heartbeats on an idle pull request
            (at most half of ``pull_expires``); 2.5 missed heartbeats make the
            subscription ask again.
        ephemeral: Read through ephemeral consumers instead of the group's durable one
            (``consumer_group`` and ``durable_name`` are then not used).
        inactive_threshold: Seconds an ephemeral consumer outlives a reader that died
            (at least twice ``pull_expires``).
    """

    def __init__(
        self,
        client: NatsClient,
        message_type: MessageType,
        config: SubscriberConfig | None = None,
        catalog: StreamCatalog | None = None,
        *,
        publisher_config: PublisherConfig | None = None,
        pull_expires: float = 15.0,
        idle_heartbeat: float = 3.0,
        ephemeral: bool = False,
        inactive_threshold: float = DEFAULT_INACTIVE_THRESHOLD,
    ) -> None:
        if not 0 < idle_heartbeat * 2 <= pull_expires:
            raise ValidationError(
                "idle_heartbeat", idle_heartbeat, "must be > 0 and at most half of pull_expires"
            )
        if not inactive_threshold >= 2 * pull_expires:
            raise ValidationError(
                "inactive_threshold", inactive_threshold, "must be at least twice pull_expires"
            )
        self.client = client
        self.message_type = message_type
        self.config = config if config is not None else SubscriberConfig()
        self.ephemeral = ephemeral
        self.inactive_threshold = inactive_threshold
        if ephemeral:
            self.config = dataclasses.replace(self.config, dead_letter=False)
        self.catalog = catalog if catalog is not None else StreamCatalog.default()
        self.publisher_config = (
            publisher_config
            if publisher_config is not None
            else PublisherConfig(circuit_breaker_threshold=0)
        )
        self.pull_expires = pull_expires
        self.idle_heartbeat = idle_heartbeat
        self._codec = BlockCodec()
        self._dead_letter_sender = Sender(client, self.publisher_config)
        spec = self.catalog.stream_for(message_type) if self.config.use_jetstream else None
        self.stream = spec.name if spec is not None else None
        self._subscriptions: list[Subscription] = []
        self._closed = False

    async def subscribe(self, handler: MessageHandler) -> Subscription:
        if self._closed:
            raise ClosedError("the subscriber was closed")
        check_handler(handler)
        ordered = self.config.ordered and not self.ephemeral
        if ordered and self.stream is None:
            raise ValidationError(
                "ordering",
                self.config.ordering,
                f"{self.message_type.value} is not stream-backed: only a stream can be read "
                "in order",
            )
        if not await self.client.wait_connected(self.client.config.connection_timeout):
            raise BusConnectionError("NATS is unreachable")
        if ordered:
            return await self._subscribe_ordered(handler)
        subscription: PullSubscription | CoreSubscription | EphemeralSubscription
        if self.stream is None:
            subscription = CoreSubscription(
                self.client,
                handler,
                self.message_type,
                self.config,
                queue_group=not self.ephemeral,
                codec=self._codec,
                reply_codec=WireCodec(self.publisher_config.partitions),
                on_closed=self._forget,
            )
        else:
            binding = ConsumerBinding(
                self.client,
                self.stream,
                self.config,
                self.message_type,
                ephemeral=self.ephemeral,
                inactive_threshold=self.inactive_threshold,
            )

            def pull(on_closed: Callable[[Subscription], None]) -> PullSubscription:
                return PullSubscription(
                    self.client,
                    handler,
                    binding,
                    self.config,
                    codec=self._codec,
                    dead_letter_sender=self._dead_letter_sender,
                    pull_expires=self.pull_expires,
                    idle_heartbeat=self.idle_heartbeat,
                    on_closed=on_closed,
                )

            subscription = (
                EphemeralSubscription(binding, pull, self._forget)
                if self.ephemeral
                else pull(self._forget)
            )
        try:
            await subscription.start()
        except nats.errors.Error as exc:
            raise BusConnectionError(f"could not subscribe: {exc}") from exc
        self._subscriptions.append(subscription)
        return subscription

    async def _subscribe_ordered(self, handler: MessageHandler) -> Subscription:
        """A member of an ordered group (``ordering="partition"``; ``docs/ordering.md``):
        its records in the ``DELTRAN_ORDERED`` bucket (created with the stream's replicas
        if ``streams apply`` has not), the stream read through ephemeral consumers of
        its own, dead letters stored as a shared group's."""
        stream = self.stream
        assert stream is not None
        consumer = self.config.consumer_name
        replicas = await self._stream_replicas(stream)
        subscription = OrderedSubscription(
            handler,
            self.config,
            store=KvGroupStore(
                self.client,
                stream,
                consumer,
                replicas=replicas,
                timeout=self.client.config.api_timeout,
            ),
            source=JetStreamSource(
                self.client,
                stream,
                self.message_type,
                consumer,
                codec=self._codec,
                batch=self.config.fetch_batch,
                inactive_threshold=self.inactive_threshold,
                pull_expires=self.pull_expires,
                idle_heartbeat=self.idle_heartbeat,
            ),
            sink=NatsDeadLetterSink(
                self.client,
                self.config.consumer_group,
                consumer,
                codec=self._codec,
                publisher_config=self.publisher_config,
            ),
            clock=LoopClock(),
            on_closed=self._forget,
        )
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def _stream_replicas(self, stream: str) -> int:
        """The replicas of ``stream`` (the ordered groups' bucket gets as many).

        Raises:
            StreamError: the stream does not exist.
            BusConnectionError: the server did not answer.
        """
        try:
            info = await self.client.jetstream.stream_info(stream)
        except nats.js.errors.NotFoundError as exc:
            raise StreamError(
                stream, "not found: apply the stream catalog first (deltran-bus streams apply)"
            ) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusConnectionError(f"stream {stream}: {exc}") from exc
        return int(info.config.num_replicas or 1)

    def _forget(self, subscription: Subscription) -> None:
        """Told by a subscription that it closed: :meth:`close` need not stop it.

        An ephemeral one tells once its consumer is deleted, so until then
        :meth:`close` still waits for that deletion.
        """
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    async def close(self) -> None:
        """Stop every subscription, even when one of them raises (it had failed).

        Raises:
            SubscriptionError: the first failure a subscription's ``stop`` raised,
                once every subscription is stopped.
        """
        self._closed = True
        first: Exception | None = None
        for subscription in list(self._subscriptions):
            try:
                await subscription.stop()
            except Exception as exc:  # noqa: BLE001  # the others are stopped first
                if first is None:
                    first = exc
        if first is not None:
            raise first


__all__ = ["JetStreamSubscriber"]
