"""Subscriptions to durable groups: members that take a group's deliveries, and those deliveries."""

from __future__ import annotations

from message_bus.domain.dead_letter import unwrap_replay
from message_bus.domain.errors import DecodeError
from message_bus.domain.message import Message
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.subscriber import Delivery, MessageHandler, check_delay

from ._group import Group
from ._host import ConsumerHost
from ._store import Entry
from ._worker import Member


class StreamDelivery(Delivery):
    """A delivery from a group; settling it updates the group at once."""

    __slots__ = ("_entry", "_group", "_seq", "_settled")

    def __init__(
        self, group: Group, seq: int, attempt: int, entry: Entry, message: Message, subject: str
    ):
        self.message = message
        self.attempt = attempt
        self.stream = group.stream.name
        self.sequence = seq
        self.subject = subject
        self._settled = False
        self._group = group
        self._seq = seq
        self._entry = entry

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._group.ack(self._seq)

    async def nak(self, delay: float | None = None) -> None:
        check_delay(delay)
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


class StreamMember(Member):
    """A member of a durable group."""

    def __init__(
        self,
        host: ConsumerHost,
        handler: MessageHandler,
        config: SubscriberConfig,
        group: Group,
    ) -> None:
        super().__init__(host, handler, config, group.waiters, f"{group.stream.name}:{group.name}")
        self.group = group
        self._decode = host.codec.decode
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
                # A replay copy is decoded as the message it carries.
                original = unwrap_replay(entry.encoded)
                message = self._decode(*original)
            except DecodeError as exc:
                group.term(seq, f"undecodable: {exc}", entry)
                continue
            group.kick()  # more work and idle workers: wake the next one
            return StreamDelivery(group, seq, attempt, entry, message, original.subject)

    def _detach(self) -> None:
        group = self.group
        group.members -= 1
        if group.members == 0 and group.on_empty is not None:
            group.on_empty(group)

    def _finished(self, delivery: Delivery) -> None:
        if isinstance(delivery, StreamDelivery) and delivery.sequence is not None:
            self.group.finished(delivery.sequence, delivery.attempt)

    def _release(self) -> None:
        self.group.kick()
