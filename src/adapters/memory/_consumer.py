"""Consumers of the in-memory broker: durable groups on streams, core queue groups, workers.

Each subscription runs ``max_concurrent`` long-lived worker tasks; a worker takes one
delivery at a time from its source (the group, or the subscription's own core inbox),
runs the handler through :func:`run_handler`, and takes the next one at once when there
is a backlog (yielding to the event loop every ``YIELD_EVERY`` deliveries). Idle workers
wait in the source's FIFO of waiters, so the members of a group take turns. Nothing is
fetched ahead of a free worker, which is why ``drain`` of a stream subscription has
nothing to finish beyond the handlers in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from typing import TYPE_CHECKING

from message_bus.domain.catalog import MessageType
from message_bus.domain.codec import Encoded, WireCodec
from message_bus.domain.errors import DecodeError
from message_bus.domain.message import Message
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.subscriber import Delivery, MessageHandler, Subscription, run_handler

from ._store import Entry, Stream
from .clock import Timer

if TYPE_CHECKING:
    from .broker import InMemoryBroker

log = logging.getLogger("message_bus.memory")

IN_FLIGHT, DELAYED, READY = 0, 1, 2
YIELD_EVERY = 64
"""Deliveries a worker handles back to back before it yields to the event loop."""
CORE_INBOX_LIMIT = 512 * 1024
"""Messages a core subscription may hold unhandled before new ones are dropped (as a
NATS server drops messages for a slow consumer)."""


class Pending:
    """A message delivered to a group and not yet acknowledged or terminated."""

    __slots__ = ("deliveries", "gen", "state")

    def __init__(self) -> None:
        self.deliveries = 0
        self.gen = 0  # bumped on every state change; timers carry it to detect staleness
        self.state = READY


class Waiters:
    """Idle workers, first come first woken."""

    __slots__ = ("_broker", "_queue")

    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker
        self._queue: deque[tuple[asyncio.Future[None], Member]] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    async def wait(self, member: Member) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((waiter, member))
        try:
            await waiter
        finally:
            if waiter.done() and not waiter.cancelled():
                self._broker._woken -= 1

    def wake_one(self) -> None:
        queue = self._queue
        while queue:
            waiter = queue.popleft()[0]
            if not waiter.done():
                waiter.set_result(None)
                self._broker._woken += 1
                return

    def wake_member(self, member: Member) -> None:
        """Wake (and forget) every idle worker of ``member``."""
        keep: deque[tuple[asyncio.Future[None], Member]] = deque()
        for waiter, owner in self._queue:
            if owner is not member:
                keep.append((waiter, owner))
            elif not waiter.done():
                waiter.set_result(None)
                self._broker._woken += 1
        self._queue = keep


class Group:
    """A durable consumer group on one stream: its position, its pending deliveries, its
    redelivery timers. It lives in the broker, so it outlives its members."""

    def __init__(
        self,
        broker: InMemoryBroker,
        stream: Stream,
        name: str,
        subject_filter: str,
        exact: bool,
        config: SubscriberConfig,
    ) -> None:
        self.broker = broker
        self.stream = stream
        self.name = name
        self.subject_filter = subject_filter
        self.exact = exact
        self.config = config
        self.next_seq = stream.first_seq  # deliver policy "all": from the first stored
        self.pending: dict[int, Pending] = {}
        self.ready: list[int] = []  # heap of sequences due for redelivery
        self.waiters = Waiters(broker)
        self.members = 0
        self.redelivered = 0
        self._timers: list[tuple[float, int, int]] = []  # heap of (deadline, seq, gen)
        self._timer: Timer | None = None
        self._timer_when = 0.0

    def matches(self, subject: str) -> bool:
        if self.exact:
            return subject == self.subject_filter
        return subject.startswith(self.subject_filter)

    def has_work(self) -> bool:
        return bool(self.ready) or (
            len(self.pending) < self.config.max_ack_pending
            and self.next_seq <= self.stream.last_seq
        )

    def kick(self) -> None:
        """Wake one idle worker if there is something to take."""
        if self.waiters and self.has_work():
            self.waiters.wake_one()

    def take(self) -> tuple[int, int, Entry] | None:
        """The next delivery for a free worker: redeliveries first (lowest sequence
        first), then the next new message if ``max_ack_pending`` allows."""
        broker = self.broker
        now = broker.clock.now()
        pending, ready, stream = self.pending, self.ready, self.stream
        stream.expire(now)
        while ready:
            seq = heapq.heappop(ready)
            p = pending.get(seq)
            if p is None or p.state != READY:
                continue
            entry = stream.get(seq)
            if entry is None:  # expired while waiting for redelivery
                del pending[seq]
                continue
            self.redelivered += 1
            return self._deliver(seq, p, entry, now)
        if len(pending) >= self.config.max_ack_pending:
            return None
        seq = max(self.next_seq, stream.first_seq)
        last = stream.last_seq
        while seq <= last:
            entry = stream.entry(seq)
            seq += 1
            if self.matches(entry.encoded.subject):
                self.next_seq = seq
                p = Pending()
                pending[seq - 1] = p
                return self._deliver(seq - 1, p, entry, now)
        self.next_seq = seq
        return None

    def _deliver(self, seq: int, p: Pending, entry: Entry, now: float) -> tuple[int, int, Entry]:
        p.deliveries += 1
        p.gen += 1
        p.state = IN_FLIGHT
        self._schedule(now + self.config.ack_wait, seq, p.gen)
        self.broker._activity += 1
        return seq, p.deliveries, entry

    def ack(self, seq: int) -> None:
        # Acks apply by sequence, even from a delivery that was since redelivered: the
        # work is done, so the message must not be handled again.
        if self.pending.pop(seq, None) is not None:
            self.broker._activity += 1
            self.kick()

    def nak(self, seq: int, attempt: int, delay: float | None) -> None:
        p = self.pending.get(seq)
        if p is None or p.state != IN_FLIGHT or p.deliveries != attempt:
            return  # a stale delivery: the current one decides
        self.broker._activity += 1
        max_deliver = self.config.max_deliver
        if p.deliveries >= max_deliver:
            self._dead_letter(seq, p, f"max deliveries ({max_deliver}) exhausted: nak", None)
            del self.pending[seq]
            self.kick()
            return
        p.gen += 1
        if delay is None or delay <= 0:
            p.state = READY
            heapq.heappush(self.ready, seq)
            self.kick()
        else:
            p.state = DELAYED
            self._schedule(self.broker.clock.now() + delay, seq, p.gen)

    def term(self, seq: int, reason: str, entry: Entry | None) -> None:
        p = self.pending.get(seq)
        if p is None:
            return
        # The dead letter is stored before the message stops being pending.
        self._dead_letter(seq, p, reason, entry)
        del self.pending[seq]
        self.broker._activity += 1
        self.kick()

    def in_progress(self, seq: int, attempt: int) -> None:
        p = self.pending.get(seq)
        if p is None or p.state != IN_FLIGHT or p.deliveries != attempt:
            return
        p.gen += 1
        self._schedule(self.broker.clock.now() + self.config.ack_wait, seq, p.gen)

    def _dead_letter(self, seq: int, p: Pending, reason: str, entry: Entry | None) -> None:
        if not self.config.dead_letter:
            log.warning("dropping %s #%d of %s: %s", self.stream.name, seq, self.name, reason)
            return
        if entry is None:
            entry = self.stream.get(seq)
        if entry is None:
            log.warning("%s #%d expired before it could be dead-lettered", self.stream.name, seq)
            return
        self.broker._store_dead_letter(
            entry.encoded,
            reason=reason,
            stream=self.stream.name,
            sequence=seq,
            deliveries=p.deliveries,
            consumer_group=self.name,
        )

    def _schedule(self, when: float, seq: int, gen: int) -> None:
        timers = self._timers
        heapq.heappush(timers, (when, seq, gen))
        if self._timer is None or when < self._timer_when:
            self._arm(when)
        elif len(timers) > 2 * len(self.pending) + 1024:
            self._compact()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.broker.clock.call_at(when, self._on_timer)
        self._timer_when = when

    def _compact(self) -> None:
        pending = self.pending
        live = []
        for item in self._timers:
            p = pending.get(item[1])
            if p is not None and p.gen == item[2] and p.state != READY:
                live.append(item)
        heapq.heapify(live)
        self._timers = live

    def _on_timer(self) -> None:
        self._timer = None
        now = self.broker.clock.now()
        timers, pending = self._timers, self.pending
        changed = False
        while timers and timers[0][0] <= now:
            _, seq, gen = heapq.heappop(timers)
            p = pending.get(seq)
            if p is None or p.gen != gen:
                continue
            changed = True
            if p.state == IN_FLIGHT and p.deliveries >= self.config.max_deliver:
                reason = f"max deliveries ({self.config.max_deliver}) exhausted: ack wait expired"
                self._dead_letter(seq, p, reason, None)
                del pending[seq]
                continue
            p.state = READY
            p.gen += 1
            heapq.heappush(self.ready, seq)
        if timers:
            self._arm(timers[0][0])
        if changed:
            self.broker._activity += 1
            self.kick()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class StreamDelivery(Delivery):
    """A delivery from a group; settling it updates the group at once."""

    __slots__ = ("_entry", "_group", "_seq", "_settled")

    def __init__(self, group: Group, seq: int, attempt: int, entry: Entry, message: Message):
        self.message = message
        self.attempt = attempt
        self.stream = group.stream.name
        self.sequence = seq
        self.subject = entry.encoded.subject
        self._seq = seq
        self._group = group
        self._entry = entry
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._group.ack(self._seq)

    async def nak(self, delay: float | None = None) -> None:
        if not self._settled:
            self._settled = True
            self._group.nak(self._seq, self.attempt, delay)

    async def term(self, reason: str) -> None:
        if not self._settled:
            self._settled = True
            self._group.term(self._seq, reason, self._entry)

    async def in_progress(self) -> None:
        if not self._settled:
            self._group.in_progress(self._seq, self.attempt)


class CoreDelivery(Delivery):
    """A core (fire-and-forget) delivery: nothing to acknowledge, maybe a request to answer."""

    __slots__ = ("_codec", "_reply", "_settled")

    def __init__(
        self,
        codec: WireCodec,
        message: Message,
        subject: str,
        reply: asyncio.Future[Encoded] | None,
    ) -> None:
        self.message = message
        self.attempt = 1
        self.stream = None
        self.sequence = None
        self.subject = subject
        self._codec = codec
        self._reply = reply
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        self._settled = True

    async def nak(self, delay: float | None = None) -> None:
        self._settled = True

    async def term(self, reason: str) -> None:
        if not self._settled:
            self._settled = True
            log.warning("core message %s on %s dropped: %s", self.message.id, self.subject, reason)

    async def in_progress(self) -> None:
        return None

    async def respond(self, reply: Message) -> None:
        encoded = self._codec.encode(reply)
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(encoded)


class Member(Subscription):
    """One running subscription: ``max_concurrent`` workers over one source."""

    def __init__(
        self,
        broker: InMemoryBroker,
        message_type: MessageType,
        handler: MessageHandler,
        config: SubscriberConfig,
        waiters: Waiters,
    ) -> None:
        self.broker = broker
        self.message_type = message_type
        self.config = config
        self._handler = handler
        self._waiters = waiters
        self._stopping = False
        self._draining = False
        self._workers: list[asyncio.Task[None]] = []

    @property
    def active(self) -> bool:
        return not (self._stopping or self._draining)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        name = f"{self.message_type.value}:{self.config.consumer_name}"
        self._workers = [
            loop.create_task(self._work(), name=f"memory-worker:{name}:{i}")
            for i in range(self.config.max_concurrent)
        ]

    def _take(self) -> Delivery | None:
        raise NotImplementedError

    def _detach(self) -> None:
        """Receive nothing new (leave the group or the queue)."""
        raise NotImplementedError

    def _drop_fetched(self) -> None:
        """Release what was handed over but not started."""

    async def _work(self) -> None:
        handler, config, take = self._handler, self.config, self._take
        streak = 0
        while not self._stopping:
            delivery = take()
            if delivery is None:
                if self._draining:
                    return
                streak = 0
                await self._waiters.wait(self)
                continue
            streak += 1
            if streak >= YIELD_EVERY:  # a backlog of handlers that never suspend
                streak = 0  # must not starve the event loop
                await asyncio.sleep(0)
            try:
                await run_handler(handler, delivery, config)
            except Exception:
                log.exception("settling %s failed", delivery.subject)
                if not delivery.settled:
                    await delivery.nak(config.nak_delay(delivery.attempt))

    async def stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            if not self._draining:
                self._detach()
            self._drop_fetched()
            self._waiters.wake_member(self)
        await self._join()

    async def drain(self) -> None:
        if not (self._stopping or self._draining):
            self._draining = True
            self._detach()
            self._waiters.wake_member(self)
        await self._join()

    async def _join(self) -> None:
        current = asyncio.current_task()
        workers = [w for w in self._workers if w is not current]
        if workers:
            await asyncio.gather(*workers)
        self.broker._forget_member(self)


class StreamMember(Member):
    """A member of a durable group."""

    def __init__(
        self,
        broker: InMemoryBroker,
        message_type: MessageType,
        handler: MessageHandler,
        config: SubscriberConfig,
        group: Group,
    ) -> None:
        super().__init__(broker, message_type, handler, config, group.waiters)
        self.group = group
        group.members += 1

    def _take(self) -> Delivery | None:
        group = self.group
        while True:
            item = group.take()
            if item is None:
                return None
            seq, attempt, entry = item
            try:
                message = self.broker.codec.decode(*entry.encoded)
            except DecodeError as exc:
                group.term(seq, f"undecodable: {exc}", entry)
                continue
            group.kick()  # more work and idle workers: wake the next one
            return StreamDelivery(group, seq, attempt, entry, message)

    def _detach(self) -> None:
        self.group.members -= 1


class CoreMember(Member):
    """A core subscription: messages published while it is live, in its own inbox."""

    def __init__(
        self,
        broker: InMemoryBroker,
        message_type: MessageType,
        handler: MessageHandler,
        config: SubscriberConfig,
        subject_filter: str,
        exact: bool,
    ) -> None:
        super().__init__(broker, message_type, handler, config, Waiters(broker))
        self.subject_filter = subject_filter
        self.route: str | MessageType = subject_filter if exact else message_type
        self.queue_name = config.consumer_group
        self._inbox: deque[tuple[Encoded, asyncio.Future[Encoded] | None]] = deque()

    def push(self, encoded: Encoded, reply: asyncio.Future[Encoded] | None) -> None:
        inbox = self._inbox
        if len(inbox) >= CORE_INBOX_LIMIT:
            log.warning("slow consumer on %s: message dropped", encoded.subject)
            return
        inbox.append((encoded, reply))
        if self._waiters:
            self._waiters.wake_one()

    def _take(self) -> Delivery | None:
        inbox = self._inbox
        while inbox:
            encoded, reply = inbox.popleft()
            try:
                message = self.broker.codec.decode(*encoded)
            except DecodeError as exc:
                log.warning("undecodable core message on %s dropped: %s", encoded.subject, exc)
                continue
            self.broker._activity += 1
            if inbox and self._waiters:
                self._waiters.wake_one()
            return CoreDelivery(self.broker.codec, message, encoded.subject, reply)
        return None

    def _detach(self) -> None:
        self.broker._remove_core(self)

    def _drop_fetched(self) -> None:
        self._inbox.clear()


class CoreQueue:
    """A NATS queue group on one subject filter: each message goes to one member."""

    __slots__ = ("_next", "members")

    def __init__(self) -> None:
        self.members: list[CoreMember] = []
        self._next = 0

    def pick(self) -> CoreMember:
        members = self.members
        member = members[self._next % len(members)]
        self._next += 1
        return member
