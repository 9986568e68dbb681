"""Consumers of the in-memory broker: durable groups on streams, core queue groups, workers.

Each subscription runs ``max_concurrent`` long-lived worker tasks; a worker takes one
delivery at a time from its source (the group, or the subscription's own core inbox),
runs the handler through :func:`run_handler`, and takes the next one at once when there
is a backlog (yielding to the event loop every ``YIELD_EVERY`` deliveries). Idle workers
wait in the source's FIFO of waiters, so the members of a group take turns. Nothing is
fetched ahead of a free worker: a stream subscription that stops or drains has nothing
to release or finish beyond the handlers in flight.
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
from message_bus.domain.partition import PartitionKey
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.outcome import ACK_WAIT_EXPIRED, max_deliveries_reason
from message_bus.ports.subscriber import CoreDelivery as PortCoreDelivery
from message_bus.ports.subscriber import (
    Delivery,
    MessageHandler,
    Subscription,
    run_handler,
    settle_failure,
)

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


def subject_filter(message_type: MessageType, key: PartitionKey | None) -> tuple[str, bool]:
    """What a consumer of ``message_type`` filtered to ``key`` receives: one exact subject
    (``(subject, True)``) or every subject of the type (``(prefix + ".", False)``)."""
    if key is None:
        return f"{message_type.subject_prefix}.", False
    return f"{message_type.subject_prefix}.{key.suffix}", True


class Pending:
    """A message delivered to a group and not yet acknowledged or terminated."""

    __slots__ = ("deliveries", "gen", "state")

    def __init__(self) -> None:
        self.deliveries = 0
        self.gen = 0  # bumped on every state change; timers carry it to detect staleness
        self.state = READY


class Waiters:
    """Idle workers, first come first woken; ``queue`` is empty when none is idle."""

    __slots__ = ("_broker", "queue")

    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker
        self.queue: deque[tuple[asyncio.Future[None], Member]] = deque()

    async def wait(self, member: Member) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append((waiter, member))
        try:
            await waiter
        finally:
            if waiter.done() and not waiter.cancelled():
                self._broker._woken -= 1

    def _wake(self, waiter: asyncio.Future[None]) -> bool:
        if waiter.done():  # its worker was cancelled
            return False
        waiter.set_result(None)
        self._broker._woken += 1
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


class Group:
    """A durable consumer group on one stream: its position, its pending deliveries, its
    redelivery timers. It lives in the broker, so it outlives its members."""

    def __init__(
        self,
        broker: InMemoryBroker,
        stream: Stream,
        message_type: MessageType,
        config: SubscriberConfig,
    ) -> None:
        self.broker = broker
        self.stream = stream
        self.name = config.consumer_name
        self.subject_filter, self.exact = subject_filter(message_type, config.partition_key)
        # An unfiltered group on a stream of its type alone takes every stored message.
        self.everything = not self.exact and stream.spec.subjects == (f"{self.subject_filter}>",)
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
        return self.everything or subject.startswith(self.subject_filter)

    def kick(self) -> None:
        """Wake one idle worker if there is something to take."""
        if self.waiters.queue and (
            self.ready
            or (
                len(self.pending) < self.config.max_ack_pending
                and self.next_seq <= self.stream.last_seq
            )
        ):
            self.waiters.wake_one()

    def take(self) -> tuple[int, int, Entry] | None:
        """The next delivery for a free worker: redeliveries first (lowest sequence
        first), then the next new message if ``max_ack_pending`` allows."""
        now = self.broker.clock.now()
        pending, ready, stream = self.pending, self.ready, self.stream
        if now >= stream.expires_at:
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
        seq, last = max(self.next_seq, stream.first_seq), stream.last_seq
        everything = self.everything
        while seq <= last:
            entry = stream.entry(seq)
            seq += 1
            if everything or self.matches(entry.encoded.subject):
                self.next_seq = seq
                p = pending[seq - 1] = Pending()
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

    def _current(self, seq: int, attempt: int) -> Pending | None:
        """The pending record of ``seq`` if delivery ``attempt`` is still the live one."""
        p = self.pending.get(seq)
        if p is None or p.state != IN_FLIGHT or p.deliveries != attempt:
            return None
        return p

    def ack(self, seq: int) -> None:
        # Acks apply by sequence, even from a delivery that was since redelivered (as on
        # JetStream): the work is done, so the message must not be handled again.
        if self.pending.pop(seq, None) is not None:
            self.broker._activity += 1
            self.kick()

    def nak(self, seq: int, attempt: int, delay: float | None) -> None:
        p = self._current(seq, attempt)
        if p is None:
            return  # a stale delivery: the current one decides
        max_deliver = self.config.max_deliver
        if p.deliveries >= max_deliver:
            self._give_up(seq, p, max_deliveries_reason(max_deliver, "nak"), None)
            return
        self.broker._activity += 1
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
        if p is not None:
            self._give_up(seq, p, reason, entry)

    def in_progress(self, seq: int, attempt: int) -> None:
        p = self._current(seq, attempt)
        if p is not None:
            p.gen += 1
            self._schedule(self.broker.clock.now() + self.config.ack_wait, seq, p.gen)

    def _give_up(self, seq: int, p: Pending, reason: str, entry: Entry | None) -> None:
        """Dead-letter ``seq`` (unless the group drops them), then stop delivering it:
        the dead letter is stored before the message stops being pending."""
        if self.config.dead_letter:
            self._dead_letter(seq, p.deliveries, reason, entry)
        else:
            log.warning("dropping %s #%d of %s: %s", self.stream.name, seq, self.name, reason)
        del self.pending[seq]
        self.broker._activity += 1
        self.kick()

    def _dead_letter(self, seq: int, deliveries: int, reason: str, entry: Entry | None) -> None:
        stream = self.stream
        if entry is None:
            stream.expire(self.broker.clock.now())
            entry = stream.get(seq)
        if entry is None:
            log.warning("%s #%d expired before it could be dead-lettered", stream.name, seq)
            return
        self.broker._store_dead_letter(
            entry.encoded,
            reason=reason,
            stream=stream.name,
            sequence=seq,
            deliveries=deliveries,
            consumer_group=self.config.consumer_group,
            consumer=self.name,
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
        max_deliver = self.config.max_deliver
        due = False
        while timers and timers[0][0] <= now:
            _, seq, gen = heapq.heappop(timers)
            p = pending.get(seq)
            if p is None or p.gen != gen:
                continue
            if p.state == IN_FLIGHT and p.deliveries >= max_deliver:
                reason = max_deliveries_reason(max_deliver, ACK_WAIT_EXPIRED)
                self._give_up(seq, p, reason, None)
                continue
            due = True
            p.state = READY
            p.gen += 1
            heapq.heappush(self.ready, seq)
        if timers:
            self._arm(timers[0][0])
        if due:
            self.broker._activity += 1
            self.kick()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Delivery(Delivery):
    __slots__ = ("_settled",)

    def __init__(
        self, message: Message, attempt: int, stream: str | None, seq: int | None, subject: str
    ) -> None:
        self.message = message
        self.attempt = attempt
        self.stream = stream
        self.sequence = seq
        self.subject = subject
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled


class StreamDelivery(_Delivery):
    """A delivery from a group; settling it updates the group at once."""

    __slots__ = ("_entry", "_group", "_seq")

    def __init__(self, group: Group, seq: int, attempt: int, entry: Entry, message: Message):
        super().__init__(message, attempt, group.stream.name, seq, entry.encoded.subject)
        self._group = group
        self._seq = seq
        self._entry = entry

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


class CoreDelivery(PortCoreDelivery):
    """A core (fire-and-forget) delivery: nothing to acknowledge, maybe a request to answer."""

    def __init__(
        self,
        codec: WireCodec,
        message: Message,
        subject: str,
        reply: asyncio.Future[Encoded] | None,
    ) -> None:
        super().__init__(message, subject)
        self._codec = codec
        self._reply = reply

    async def respond(self, reply: Message) -> None:
        encoded = self._codec.encode(reply)
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(encoded)


class Member(Subscription):
    """One running subscription: ``max_concurrent`` workers over one source.

    ``stop`` and ``drain`` wait for the handlers in flight, except for handlers that are
    themselves waiting in a ``stop`` or ``drain`` (a handler that stops its own
    subscription), so that no two handlers wait for each other. Cancelling the wait does
    not cancel the handlers.
    """

    def __init__(
        self,
        broker: InMemoryBroker,
        handler: MessageHandler,
        config: SubscriberConfig,
        waiters: Waiters,
        name: str,
    ) -> None:
        self.broker = broker
        self.config = config
        self.name = name
        self._handler = handler
        self._waiters = waiters
        self._stopping = False
        self._draining = False
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0

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
                self.broker._forget_member(self)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await run_handler(self._handler, delivery, self.config)
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

    async def _join(self) -> None:
        joining = self.broker._joining
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


class StreamMember(Member):
    """A member of a durable group."""

    def __init__(
        self,
        broker: InMemoryBroker,
        handler: MessageHandler,
        config: SubscriberConfig,
        group: Group,
    ) -> None:
        super().__init__(
            broker, handler, config, group.waiters, f"{group.stream.name}:{group.name}"
        )
        self.group = group
        group.members += 1

    def _take(self) -> Delivery | None:
        if self._draining:  # nothing was fetched ahead: nothing left to finish
            return None
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

    def _release(self) -> None:
        self.group.kick()


class CoreMember(Member):
    """A core subscription: messages published while it is live, in its own inbox."""

    def __init__(
        self,
        broker: InMemoryBroker,
        handler: MessageHandler,
        config: SubscriberConfig,
        route: str | MessageType,
    ) -> None:
        shown = route.value if isinstance(route, MessageType) else route
        name = f"core:{shown}:{config.consumer_group}"
        super().__init__(broker, handler, config, Waiters(broker), name)
        self.route = route
        self.queue_name = config.consumer_group
        self._inbox: deque[tuple[Encoded, asyncio.Future[Encoded] | None]] = deque()

    def push(self, encoded: Encoded, reply: asyncio.Future[Encoded] | None) -> None:
        inbox = self._inbox
        if len(inbox) >= CORE_INBOX_LIMIT:
            log.warning("slow consumer on %s: message dropped", encoded.subject)
            return
        inbox.append((encoded, reply))
        if self._waiters.queue:
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
            if inbox and self._waiters.queue:
                self._waiters.wake_one()
            return CoreDelivery(self.broker.codec, message, encoded.subject, reply)
        return None

    def _detach(self) -> None:
        self.broker._remove_core(self)

    def _release(self) -> None:
        if self._stopping:
            self._inbox.clear()  # core: what was not handled is gone, as on NATS


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
