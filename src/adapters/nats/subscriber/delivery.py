"""JetStream deliveries: what the pull loop read, and the acknowledgements that settle them."""

from __future__ import annotations

from typing import NamedTuple, Protocol

from message_bus.domain.message import Message
from message_bus.ports.subscriber import Delivery, check_delay

ACK = b"+ACK"
NAK = b"-NAK"
IN_PROGRESS = b"+WPI"
TERM = b"+TERM"


def nak_payload(delay: float | None) -> bytes:
    """The ``-NAK`` payload asking for redelivery after ``delay`` seconds (None, 0: now)."""
    if not delay or delay <= 0:
        return NAK
    return b'-NAK {"delay": %d}' % int(delay * 1e9)


class Raw(NamedTuple):
    """A delivery as read from the inbox, before it is decoded.

    Built on the hot path with ``new_raw(Raw, (...))`` (``tuple.__new__``, which skips
    the generated ``__new__``); every field is positional in this order.
    """

    subject: bytes
    """The subject the message was published to."""
    reply: bytes
    """The ack subject: where its acknowledgements go."""
    body: bytes
    header_block: bytes | None
    """The raw ``NATS/1.0`` header block, or None."""
    stream: str
    attempt: int
    """The delivery count (1 on the first delivery)."""
    sequence: int
    """The stream sequence."""
    read_at: float
    """``time.monotonic()`` when it was read."""


new_raw = tuple.__new__
"""``new_raw(Raw, (subject, reply, ...))``: a :class:`Raw` at the cost of a tuple."""


def redirected(raw: Raw, reply: bytes, attempt: int) -> Raw:
    """``raw`` as its newer delivery ``attempt`` with ack subject ``reply``."""
    return Raw(
        raw.subject,
        reply,
        raw.body,
        raw.header_block,
        raw.stream,
        attempt,
        raw.sequence,
        raw.read_at,
    )


def ack_fields(reply: bytes) -> tuple[str, int, int]:
    """(stream, delivery count, stream sequence) from a JetStream ack subject.

    Raises:
        ValueError, IndexError: not an ack subject.
    """
    tokens = reply.split(b".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return tokens[2].decode(), int(tokens[4]), int(tokens[5])
    # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>...
    return tokens[4].decode(), int(tokens[6]), int(tokens[7])


class Settler(Protocol):
    """Where a :class:`JetStreamDelivery` sends its acknowledgements."""

    async def settle(self, reply: bytes, payload: bytes) -> None:
        """Sends ``payload`` (``+ACK``, ``-NAK``, ``+WPI``...) to the ack subject ``reply``."""

    async def dead_letter(self, raw: Raw, deliveries: int, reason: str) -> None:
        """Stores the dead letter of ``raw``, then TERMs it."""

    async def settle_ack(self, delivery: JetStreamDelivery) -> None:
        """Sends the ``+ACK`` of ``delivery`` (confirmed or not, as configured)."""

    @property
    def confirms_acks(self) -> bool:
        """Whether ACKs wait for the server's confirmation."""


class JetStreamDelivery(Delivery):
    """A JetStream delivery; settling maps to +ACK, -NAK, +TERM and +WPI.

    ``reply`` is the ack subject its acknowledgements go to: that of the newest delivery
    of the message (a redelivery that arrives while the handler runs supersedes it).
    ``acked`` tells whether ``ack`` was called.
    """

    def __init__(self, owner: Settler, raw: Raw, message: Message, subject: str) -> None:
        self.message = message
        self.subject = subject
        self.stream = raw.stream
        self.attempt = raw.attempt
        self.sequence = raw.sequence
        self.reply = raw.reply
        self.acked = False
        self._raw = raw
        self._owner = owner
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        self.acked = True
        await self._owner.settle_ack(self)

    async def nak(self, delay: float | None = None) -> None:
        check_delay(delay)
        if self._settled:
            return
        self._settled = True
        await self._owner.settle(self.reply, nak_payload(delay))

    async def term(self, reason: str) -> None:
        if self._settled:
            return
        self._settled = True
        raw = self._raw
        if raw.reply != self.reply:
            raw = redirected(raw, self.reply, raw.attempt)
        await self._owner.dead_letter(raw, self.attempt, reason)

    async def in_progress(self) -> None:
        if not self._settled:
            await self._owner.settle(self.reply, IN_PROGRESS)


__all__ = [
    "ACK",
    "IN_PROGRESS",
    "NAK",
    "TERM",
    "JetStreamDelivery",
    "Raw",
    "Settler",
    "ack_fields",
    "nak_payload",
    "new_raw",
    "redirected",
]
