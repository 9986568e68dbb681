"""Core delivery: each live message to one member of every matching queue group, with replies."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TypeAlias

from message_bus.domain.catalog import MessageType
from message_bus.domain.codec import Encoded, WireCodec
from message_bus.domain.errors import DecodeError
from message_bus.domain.message import Message
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.subscriber import CoreDelivery, Delivery, MessageHandler

from ._host import Activity, ConsumerHost
from ._worker import Member, Waiters

log = logging.getLogger("message_bus.memory")

CORE_INBOX_LIMIT = 512 * 1024
"""Messages a core subscription may hold unhandled before new ones are dropped (as a
NATS server drops messages for a slow consumer)."""

Reply: TypeAlias = asyncio.Future[Encoded]
"""Where the answer to a request goes."""


class InMemoryCoreDelivery(CoreDelivery):
    """A core (fire-and-forget) delivery: nothing to acknowledge, maybe a request to answer."""

    def __init__(
        self, codec: WireCodec, message: Message, subject: str, reply: Reply | None
    ) -> None:
        super().__init__(message, subject)
        self._codec = codec
        self._reply = reply

    async def respond(self, reply: Message) -> None:
        encoded = self._codec.encode(reply)
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(encoded)


class CoreMember(Member):
    """A core subscription: messages published while it is live, in its own inbox."""

    def __init__(
        self,
        host: ConsumerHost,
        handler: MessageHandler,
        config: SubscriberConfig,
        route: str | MessageType,
        routes: CoreRoutes,
    ) -> None:
        shown = route.value if isinstance(route, MessageType) else route
        name = f"core:{shown}:{config.consumer_group}"
        super().__init__(host, handler, config, Waiters(host.activity), name)
        self.route = route
        self.queue_name = config.consumer_group
        self._routes = routes
        self._codec = host.codec
        self._activity = host.activity
        self._inbox: deque[tuple[Encoded, Reply | None]] = deque()

    def push(self, encoded: Encoded, reply: Reply | None) -> None:
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
                message = self._codec.decode(*encoded)
            except DecodeError as exc:
                log.warning("undecodable core message on %s dropped: %s", encoded.subject, exc)
                continue
            self._activity.events += 1
            if inbox and self._waiters.queue:
                self._waiters.wake_one()
            return InMemoryCoreDelivery(self._codec, message, encoded.subject, reply)
        return None

    def _detach(self) -> None:
        self._routes.remove(self)

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


class CoreRoutes:
    """The core queue groups by route: an exact subject, or a message type (all its subjects).

    ``queues`` is empty when no core subscription is live, so a publisher can skip
    :meth:`route` with one test.
    """

    __slots__ = ("_activity", "queues")

    def __init__(self, activity: Activity) -> None:
        self._activity = activity
        self.queues: dict[str | MessageType, dict[str, CoreQueue]] = {}

    def add(self, member: CoreMember) -> None:
        """Put ``member`` in its queue group on its route."""
        queues = self.queues.setdefault(member.route, {})
        queues.setdefault(member.queue_name, CoreQueue()).members.append(member)

    def remove(self, member: CoreMember) -> None:
        """Take ``member`` out of its queue group (no-op if it is not in it)."""
        queues = self.queues.get(member.route, {})
        queue = queues.get(member.queue_name)
        if queue is None or member not in queue.members:
            return
        queue.members.remove(member)
        if not queue.members:
            del queues[member.queue_name]
            if not queues:
                del self.queues[member.route]

    def route(self, encoded: Encoded, message_type: MessageType, reply: Reply | None) -> int:
        """Hand ``encoded`` to one member of every matching queue group; return how many."""
        reached = 0
        queues_by_route = self.queues
        for queues in (queues_by_route.get(message_type), queues_by_route.get(encoded.subject)):
            if queues:
                for queue in queues.values():
                    queue.pick().push(encoded, reply)
                    reached += 1
        if reached:
            self._activity.events += 1
        return reached
