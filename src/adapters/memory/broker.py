"""The in-memory broker and the ports it hands out: JetStream's semantics, through the real codec.

The broker owns the streams, the durable groups of each stream, the core routes and the
dead-letter stream; the consumer modules get a :class:`ConsumerHost` from it and use
nothing else of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from message_bus.adapters.ordered.member import OrderedSubscription
from message_bus.adapters.ordered.store import group_prefix
from message_bus.domain.catalog import MessageType, StreamCatalog
from message_bus.domain.codec import H_MSG_ID, H_PARTITION, Encoded, WireCodec
from message_bus.domain.dead_letter import (
    H_DLQ_STREAM,
    H_DLQ_SUBJECT,
    REPLAYED_SUBJECT_PREFIX,
    DeadLetter,
    Replay,
    decode_dead_letter,
    decode_replay_marker,
    encode_dead_letter,
    encode_replay_marker,
    foreign_entry,
    header_lines,
    replay_of,
    unwrap_replay,
)
from message_bus.domain.errors import (
    AlreadyReplayedError,
    ClosedError,
    NoRespondersError,
    NotFoundError,
    PublishBatchError,
    PublishError,
    PublishFailure,
    RequestTimeout,
    StartPositionConflict,
    ValidationError,
)
from message_bus.domain.message import Message
from message_bus.domain.partition import DEFAULT_PARTITIONS, check_partition_count
from message_bus.domain.payload_schema import check_payload
from message_bus.ports.config import PublisherConfig, SubscriberConfig, ephemeral_consumer_name
from message_bus.ports.dead_letters import DeadLetters
from message_bus.ports.publisher import Publisher, PublishReceipt, check_request
from message_bus.ports.subscriber import MessageHandler, Subscriber, Subscription, check_handler

from ._core import CoreMember, CoreRoutes
from ._durable import StreamMember
from ._group import Group, subject_filter
from ._host import Activity, ConsumerHost
from ._ordered import (
    KeyValues,
    MemoryDeadLetterSink,
    MemoryGroupStore,
    MemorySource,
    StreamWatch,
)
from ._store import Refused, Stream
from .clock import Clock, SystemClock

log = logging.getLogger("message_bus.memory")


def _refused(encoded: Encoded, refused: Refused) -> PublishError:
    """The publish error of a message its stream refused (as JetStream's 10077 / 10054)."""
    reason = PublishFailure.MESSAGE_TOO_LARGE if refused.too_large else PublishFailure.STREAM_FULL
    message_id = encoded.headers.get(H_MSG_ID, "")
    return PublishError(message_id, encoded.subject, reason, retryable=False, detail=str(refused))


@dataclass(frozen=True, slots=True)
class StreamState:
    """A stream's contents at one moment.

    Attributes:
        name: the stream.
        messages: messages stored (expired ones are gone).
        first_sequence: sequence of the oldest stored message (``last_sequence + 1``
            when empty).
        last_sequence: sequence of the newest message ever stored (0 if none).
    """

    name: str
    messages: int
    first_sequence: int
    last_sequence: int


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """A durable consumer group's position.

    Attributes:
        stream: the stream it consumes.
        name: its consumer name (``SubscriberConfig.consumer_name``).
        delivered_sequence: the highest stream sequence delivered at least once.
        ack_pending: delivered and neither acknowledged nor terminated.
        redelivered: deliveries that were redeliveries, since the group was created.
        members: live subscriptions in the group.
    """

    stream: str
    name: str
    delivered_sequence: int
    ack_pending: int
    redelivered: int
    members: int


class InMemoryBroker:
    """A broker with JetStream's semantics, in memory: a product feature for tests, demos
    and benchmarks, not a mock.

    Every message is encoded by :class:`WireCodec` when published and decoded again for
    each delivery, so nothing is shared by reference between publisher and handler.

    * Streams come from ``catalog`` (plus the dead-letter stream); each keeps messages by
      sequence until ``max_age`` and deduplicates on ``Nats-Msg-Id`` within
      ``duplicate_window``. A publish of a stream-backed type is stored (also when the
      publisher does not use JetStream, as a NATS server's stream captures its
      subjects); only a JetStream publish gets the stream and sequence in its receipt.
    * Consumer groups are durable and live in the broker, keyed by stream and
      ``SubscriberConfig.consumer_name``; a new group starts at the first stored
      message. The latest member's config sets the group's ``ack_wait``,
      ``max_deliver`` and ``max_ack_pending``. Workers take one message at a time, so
      nothing is fetched ahead (``fetch_batch`` has no effect).
    * Core delivery (core-only types, or ``use_jetstream=False`` subscribers) reaches the
      subscriptions live at publish time, one member per queue group
      (``consumer_group``). ``request`` is always core: it is not stored.
    * All time comes from ``clock``. With a :class:`ManualClock`, ``clock.advance(s)``
      fires due ack-wait expiries and NAK delays and wakes idle workers; then
      ``await broker.settle()`` lets the woken workers hand their deliveries to handlers.

    Args:
        clock: time source (default :class:`SystemClock`).
        catalog: the streams (default :meth:`StreamCatalog.default`).
        duplicate_window: seconds a message id is remembered for deduplication.
        partitions: the partition count of publishers created without a config.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        catalog: StreamCatalog | None = None,
        duplicate_window: float = 120.0,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        ok = isinstance(duplicate_window, int | float) and not isinstance(duplicate_window, bool)
        if not ok or not math.isfinite(duplicate_window) or duplicate_window <= 0:
            raise ValidationError("duplicate_window", duplicate_window, "must be a positive number")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.catalog = catalog if catalog is not None else StreamCatalog.default()
        self.partitions = check_partition_count(partitions)
        self.codec = WireCodec(self.partitions)
        self._duplicate_window = float(duplicate_window)
        self._streams: dict[str, Stream] = {}
        for spec in self.catalog.all_streams():
            self._streams.setdefault(spec.name, Stream(spec, float(duplicate_window)))
        self._dead = self._streams[self.catalog.dead_letters.name]
        # The durable groups by (stream, consumer name); a publish of a stream-backed type
        # goes to its target: the stream and the groups on it (one list per stream).
        self._groups: dict[tuple[str, str], Group] = {}
        stream_groups: dict[str, list[Group]] = {name: [] for name in self._streams}
        self._targets: dict[MessageType, tuple[Stream, list[Group]]] = {
            message_type: (self._streams[spec.name], stream_groups[spec.name])
            for message_type, spec in self.catalog.streams.items()
        }
        self._members: set[Subscription] = set()
        self._requests: set[asyncio.Future[Encoded]] = set()
        self._closed = False
        # Progress counters read by settle(), bumped by the broker and its consumers.
        self._activity = Activity()
        self._host = ConsumerHost(
            self.clock, self.codec, self._activity, self._store_dead_letter, self._members.discard
        )
        self._core = CoreRoutes(self._activity)
        # Ordered groups: their records, and the readers to wake when a stream grows.
        self._key_values = KeyValues()
        self._watches: dict[str, StreamWatch] = {}

    # -- ports ----------------------------------------------------------------------

    def publisher(self, config: PublisherConfig | None = None) -> InMemoryPublisher:
        """A publisher; without a config it uses the broker's partition count."""
        if config is None:
            config = PublisherConfig(partitions=self.partitions)
        return InMemoryPublisher(self, config)

    def subscriber(
        self,
        message_type: MessageType,
        config: SubscriberConfig | None = None,
        *,
        ephemeral: bool = False,
    ) -> InMemorySubscriber:
        """A subscriber of ``message_type`` (default :class:`SubscriberConfig`).

        With ``ephemeral=True`` it is a reader in no group: each subscription reads the
        stream from its first stored message through a group of its own (a fresh name,
        forgotten when the subscription ends) that never dead-letters, and a core-only
        type without a queue group; it takes nothing from any consumer group.
        """
        return InMemorySubscriber(
            self, message_type, config or SubscriberConfig(), ephemeral=ephemeral
        )

    def dead_letters(self) -> InMemoryDeadLetters:
        """The dead-letter stream, as the :class:`DeadLetters` port."""
        return InMemoryDeadLetters(self)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def close(self) -> None:
        """Stop every subscription (in-flight handlers finish) and refuse further use.

        Idempotent. Requests still waiting for a reply fail with :class:`ClosedError`.
        """
        if not self._closed:
            self._closed = True
            for request in self._requests:
                if not request.done():
                    request.set_exception(ClosedError("broker closed"))
        for member in list(self._members):
            await member.stop()
        for group in self._groups.values():
            group.cancel_timer()

    async def __aenter__(self) -> InMemoryBroker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- introspection --------------------------------------------------------------

    async def settle(self, *, max_rounds: int = 100_000) -> None:
        """Let the event loop run until the broker is quiet.

        Quiet means: no worker woken and not yet running, and no broker event (publish,
        delivery, ack, nak, term, timer) during three consecutive event-loop rounds.
        So every delivery that is due has reached its handler, and every handler that
        could finish without waiting on something outside the broker has finished.
        Handlers suspended on other things (a sleep, an event) are not waited for.

        Raises:
            TimeoutError: still busy after ``max_rounds`` rounds (a handler loop that
                never stops producing work).
        """
        activity, quiet = self._activity, 0
        for _ in range(max_rounds):
            before = activity.events
            await asyncio.sleep(0)
            if activity.woken == 0 and activity.events == before:
                quiet += 1
                if quiet >= 3:
                    return
            else:
                quiet = 0
        raise TimeoutError(f"broker still busy after {max_rounds} event-loop rounds")

    def stream_info(self, name: str) -> StreamState:
        """The current state of stream ``name``.

        Raises:
            NotFoundError: no such stream (also a ``KeyError``).
        """
        stream = self._streams.get(name)
        if stream is None:
            raise NotFoundError("stream", name)
        stream.expire(self.clock.now())
        return StreamState(name, len(stream), stream.first_seq, stream.last_seq)

    def consumer_info(self, stream: str, consumer_name: str) -> ConsumerState:
        """The state of the durable group ``consumer_name`` on ``stream``.

        Raises:
            NotFoundError: no such group (also a ``KeyError``).
        """
        group = self._groups.get((stream, consumer_name))
        if group is None:
            raise NotFoundError("consumer group", (stream, consumer_name))
        return ConsumerState(
            stream,
            consumer_name,
            group.next_seq - 1,
            len(group.pending),
            group.redelivered,
            group.members,
        )

    # -- internals used by the publisher, subscriber and dead letters below ----------

    def add_stream(self, message_type: MessageType) -> None:
        """Give a type registered after the broker was built its stream (the type's
        :attr:`~MessageType.stream`, limits included), as ``streams apply`` does on NATS.

        Raises:
            ValidationError: the type is core-only, or its stream already exists.
        """
        spec = message_type.stream
        if spec is None:
            raise ValidationError("message_type", message_type.value, "has no stream")
        if spec.name in self._streams or message_type in self._targets:
            raise ValidationError("stream", spec.name, "already exists")
        stream = self._streams[spec.name] = Stream(spec, self._duplicate_window)
        self._targets[message_type] = (stream, [])
        streams = {**self.catalog.streams, message_type: spec}
        self.catalog = StreamCatalog(streams, self.catalog.dead_letters)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(f"{what}: broker closed")

    def _publish(
        self, encoded: Encoded, message_type: MessageType, jetstream: bool
    ) -> PublishReceipt:
        target = self._targets.get(message_type)
        stream: Stream | None = None
        seq: int | None = None
        duplicate = False
        if target is not None:
            stream, groups = target
            try:
                seq, duplicate = stream.store(encoded, self.clock.now())
            except Refused as exc:
                raise _refused(encoded, exc) from None
            if not duplicate:
                self._activity.events += 1
                subject = encoded.subject
                for group in groups:
                    if group.waiters.queue and group.matches(subject):
                        group.kick()
                if self._watches:
                    self._stored(stream.name)
        core = self._core
        if core.queues:
            core.route(encoded, message_type, None)
        headers = encoded.headers
        written = headers.get(H_PARTITION)
        partition = None if written is None else int(written)
        if jetstream and stream is not None:
            return PublishReceipt(
                headers[H_MSG_ID], encoded.subject, stream.name, seq, duplicate, partition
            )
        return PublishReceipt(headers[H_MSG_ID], encoded.subject, partition=partition)

    def _attach(
        self,
        message_type: MessageType,
        handler: MessageHandler,
        config: SubscriberConfig,
        *,
        ephemeral: bool = False,
    ) -> Subscription:
        target = self._targets.get(message_type) if config.use_jetstream else None
        member: StreamMember | CoreMember
        if ephemeral:
            # A queue group of its own for a core type; no dead letters from a reader.
            config = dataclasses.replace(
                config, consumer_group=ephemeral_consumer_name(), dead_letter=False
            )
        if target is not None:
            if ephemeral:
                group = self._ephemeral_group(target, message_type, config)
            else:
                group = self._group(target, message_type, config)
            member = StreamMember(self._host, handler, config, group)
        else:
            subject, exact = subject_filter(message_type, config.partition_key)
            route = subject if exact else message_type
            member = CoreMember(self._host, handler, config, route, self._core)
            self._core.add(member)
        self._members.add(member)
        member.start()
        return member

    def _stored(self, stream: str) -> None:
        watch = self._watches.get(stream)
        if watch is not None:
            watch.stored()

    async def _attach_ordered(
        self, message_type: MessageType, handler: MessageHandler, config: SubscriberConfig
    ) -> Subscription:
        """A member of an ordered group (``ordering="partition"``); see ``docs/ordering.md``."""
        target = self._targets.get(message_type) if config.use_jetstream else None
        if target is None:
            raise ValidationError(
                "ordering",
                config.ordering,
                f"{message_type.value} is not stream-backed: only a stream can be read in order",
            )
        stream = target[0]
        watch = self._watches.setdefault(stream.name, StreamWatch())
        activity = self._activity

        def on_event() -> None:
            activity.events += 1

        consumer = config.consumer_name
        member = OrderedSubscription(
            handler,
            config,
            store=MemoryGroupStore(self._key_values, group_prefix(stream.name, consumer), on_event),
            source=MemorySource(stream, message_type, consumer, self._host, watch),
            sink=MemoryDeadLetterSink(self._host, stream.name, config.consumer_group, consumer),
            clock=self.clock,
            on_event=on_event,
            on_closed=self._members.discard,
        )
        self._members.add(member)
        try:
            await member.start()
        except BaseException:
            self._members.discard(member)
            raise
        return member

    def _group(
        self,
        target: tuple[Stream, list[Group]],
        message_type: MessageType,
        config: SubscriberConfig,
    ) -> Group:
        stream, groups = target
        key = (stream.name, config.consumer_name)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(self._host, stream, message_type, config)
            groups.append(group)
            return group
        wanted, _ = subject_filter(message_type, config.partition_key)
        if group.subject_filter != wanted:
            raise ValidationError(
                "consumer_name",
                config.consumer_name,
                f"already consumes {group.subject_filter!r} on {stream.name}",
            )
        if group.start != config.start_token:
            raise StartPositionConflict(config.consumer_name, config.start_token, group.start)
        group.config = config
        return group

    def _ephemeral_group(
        self,
        target: tuple[Stream, list[Group]],
        message_type: MessageType,
        config: SubscriberConfig,
    ) -> Group:
        stream, groups = target
        group = Group(self._host, stream, message_type, config, name=ephemeral_consumer_name())
        groups.append(group)

        def forget(empty: Group) -> None:
            empty.cancel_timer()
            if empty in groups:
                groups.remove(empty)

        group.on_empty = forget
        return group

    def _store_dead_letter(
        self,
        original: Encoded,
        *,
        reason: str,
        stream: str,
        sequence: int,
        deliveries: int,
        consumer_group: str,
        consumer: str,
    ) -> None:
        dead = encode_dead_letter(
            unwrap_replay(original),  # a replay copy fails as the message it carries
            reason=reason,
            stream=stream,
            sequence=sequence,
            deliveries=deliveries,
            consumer_group=consumer_group,
            consumer=consumer,
            failed_at=self.clock.utcnow(),
        )
        try:
            self._dead.store(dead, self.clock.now())
        except Refused as exc:  # DEAD_LETTERS is full: the group keeps the message
            raise _refused(dead, exc) from None
        self._activity.events += 1

    def _store_replay(self, copy: Encoded, message_type: MessageType) -> PublishReceipt:
        """Stores a replay copy in the stream of ``message_type`` for the one group whose
        replay subject it is on (no core subscriber sees it)."""
        stream, groups = self._targets[message_type]
        try:
            seq, duplicate = stream.store(copy, self.clock.now())
        except Refused as exc:
            raise _refused(copy, exc) from None
        if not duplicate:
            self._activity.events += 1
            for group in groups:
                if group.waiters.queue and group.matches(copy.subject):
                    group.kick()
            self._stored(stream.name)
        return PublishReceipt(copy.headers[H_MSG_ID], copy.subject, stream.name, seq, duplicate)


class InMemoryPublisher(Publisher):
    """Publishes into an :class:`InMemoryBroker`; see :class:`Publisher` for the contract.

    The broker accepts or rejects a message at once, so the config's timeout, retry and
    circuit-breaker settings never come into play; ``use_jetstream`` and ``partitions``
    do.
    """

    def __init__(self, broker: InMemoryBroker, config: PublisherConfig) -> None:
        self.config = config
        self._broker = broker
        self._codec = (
            broker.codec if config.partitions == broker.partitions else WireCodec(config.partitions)
        )
        self._jetstream = config.use_jetstream
        self._validate = config.validate_payloads
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("publisher closed")
        self._broker._check_open("publish")

    def _encode(self, message: Message) -> Encoded:
        if not isinstance(message, Message):
            raise ValidationError("message", message, "must be a Message")
        if self._validate:
            check_payload(message.message_type, message.payload)
        return self._codec.encode(message)

    async def publish(self, message: Message) -> PublishReceipt:
        self._check()
        return self._broker._publish(self._encode(message), message.message_type, self._jetstream)

    async def publish_many(self, messages: Sequence[Message]) -> list[PublishReceipt]:
        """Publish a batch; every message is encoded (validated) before any is stored.
        Messages a stream refuses (full) do not stop the others: a
        :class:`PublishBatchError` then holds each one's receipt or error."""
        self._check()
        encoded = [self._encode(message) for message in messages]
        publish, jetstream = self._broker._publish, self._jetstream
        results: list[PublishReceipt | PublishError] = []
        for m, e in zip(messages, encoded, strict=True):
            try:
                results.append(publish(e, m.message_type, jetstream))
            except PublishError as exc:
                results.append(exc)
        if any(isinstance(r, PublishError) for r in results):
            raise PublishBatchError(results)
        return results  # type: ignore[return-value]  # no errors: all receipts

    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        self._check()
        broker = self._broker
        check_request(message.message_type, timeout, broker.catalog)
        encoded = self._encode(message)
        reply: asyncio.Future[Encoded] = asyncio.get_running_loop().create_future()
        if not broker._core.route(encoded, message.message_type, reply):
            raise NoRespondersError(encoded.subject)

        def expire() -> None:
            if not reply.done():
                reply.set_exception(RequestTimeout(encoded.subject, timeout))

        clock = broker.clock
        timer = clock.call_at(clock.now() + timeout, expire)
        broker._requests.add(reply)
        try:
            answer = await reply
        finally:
            timer.cancel()
            broker._requests.discard(reply)
        return broker.codec.decode(*answer)

    async def close(self) -> None:
        self._closed = True


class InMemorySubscriber(Subscriber):
    """Subscribes to one message type of an :class:`InMemoryBroker`.

    Each :meth:`subscribe` starts one member with ``max_concurrent`` workers, so the
    ``max_concurrent`` bound holds per subscription (a subscriber normally runs one).
    """

    def __init__(
        self,
        broker: InMemoryBroker,
        message_type: MessageType,
        config: SubscriberConfig,
        *,
        ephemeral: bool = False,
    ) -> None:
        if not isinstance(message_type, MessageType):
            raise ValidationError("message_type", message_type, "must be a MessageType")
        if not isinstance(config, SubscriberConfig):
            raise ValidationError("config", config, "must be a SubscriberConfig")
        self.message_type = message_type
        self.config = config
        self.ephemeral = ephemeral
        self._broker = broker
        self._subscriptions: list[Subscription] = []
        self._closed = False

    async def subscribe(self, handler: MessageHandler) -> Subscription:
        if self._closed:
            raise ClosedError("subscriber closed")
        self._broker._check_open("subscribe")
        check_handler(handler)
        if self.config.ordered and not self.ephemeral:
            member = await self._broker._attach_ordered(self.message_type, handler, self.config)
        else:
            member = self._broker._attach(
                self.message_type, handler, self.config, ephemeral=self.ephemeral
            )
        self._subscriptions.append(member)
        return member

    async def close(self) -> None:
        self._closed = True
        for subscription in self._subscriptions:
            await subscription.stop()


class InMemoryDeadLetters(DeadLetters):
    """The broker's ``DEAD_LETTERS`` stream; see :class:`DeadLetters` for the contract.

    As on JetStream, a replay copy is stored in the original stream on the replay
    subject of the group that dead-lettered it, and a replay marker in the dead-letter
    stream records each replay.
    """

    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker

    def _replays(self) -> dict[int, list[Replay]]:
        stream = self._broker._dead
        replays: dict[int, list[Replay]] = {}
        for _, entry in stream.entries_from(stream.first_seq, len(stream)):
            if entry.encoded.subject.startswith(REPLAYED_SUBJECT_PREFIX + "."):
                marker = decode_replay_marker(entry.encoded.headers)
                if marker is not None:
                    replays.setdefault(marker[0], []).append(marker[1])
        return replays

    async def list(self, limit: int = 100) -> list[DeadLetter]:
        broker = self._broker
        stream = broker._dead
        stream.expire(broker.clock.now())
        if limit < 1:
            return []
        replays = self._replays()
        letters: list[DeadLetter] = []
        for seq, entry in stream.entries_from(stream.first_seq, len(stream)):
            if len(letters) >= limit:
                break
            subject, headers, body = entry.encoded
            if subject.startswith(REPLAYED_SUBJECT_PREFIX + "."):
                continue
            if H_DLQ_SUBJECT not in headers:
                block = header_lines(headers)
                stored_at = broker.clock.utcnow()
                letters.append(foreign_entry(subject, block, headers, body, seq, stored_at))
                continue
            ordered = tuple(sorted(replays.get(seq, []), key=lambda r: r.count))
            letters.append(decode_dead_letter(broker.codec, *entry.encoded, seq, replays=ordered))
        return letters

    async def replay(self, dlq_sequence: int, force: bool = False) -> PublishReceipt:
        broker = self._broker
        broker._check_open("replay")
        broker._dead.expire(broker.clock.now())
        entry = broker._dead.get(dlq_sequence)
        if entry is None or H_DLQ_SUBJECT not in entry.encoded.headers:
            raise NotFoundError("dead letter", dlq_sequence)
        done = self._replays().get(dlq_sequence, [])
        if done and not force:
            raise AlreadyReplayedError(dlq_sequence, max(r.count for r in done))
        count = max((r.count for r in done), default=0) + 1
        copy = replay_of(entry.encoded, dlq_sequence, count)
        message = broker.codec.decode(*unwrap_replay(copy))
        spec = broker.catalog.stream_for(message.message_type)
        if spec is None:
            raise ValidationError(
                "message_type", message.message_type, "is not stream-backed: nothing to replay to"
            )
        named = entry.encoded.headers.get(H_DLQ_STREAM)
        if spec.name != named:
            raise ValidationError(H_DLQ_STREAM, named, f"is not {spec.name}")
        receipt = broker._store_replay(copy, message.message_type)
        assert receipt.stream is not None
        assert receipt.sequence is not None
        replay = Replay(
            broker.clock.utcnow(), receipt.stream, receipt.sequence, receipt.message_id, count
        )
        broker._dead.store(encode_replay_marker(dlq_sequence, replay), broker.clock.now())
        return receipt
