"""What an ordered group reads and where its failures go: the stream-source seam.

Each member reads the stream itself, in order, from a sequence it chooses
(:class:`StreamSource`), and dead-letters through a :class:`DeadLetterSink`. The NATS
adapter reads through an ephemeral consumer without acknowledgements, the in-memory
adapter from its stream's log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from message_bus.domain.message import Message
from message_bus.ports.config import StartPosition


@dataclass(frozen=True, slots=True)
class Record:
    """One stored message as an ordered group reads it.

    Attributes:
        sequence: its stream sequence.
        subject: the subject it is stored under (a replay copy's: the replay subject).
        key: the canonical partition key suffix (``corridor.USD-EUR``), None if it
            cannot be known (a foreign message without ``Deltran-Partition-Key``).
        message: the decoded message (a replay copy: the message it carries), None if
            it cannot be decoded.
        error: why it cannot be decoded, else "".
        raw: what the adapter needs to dead-letter it (opaque here).
    """

    sequence: int
    subject: str
    key: str | None
    message: Message | None
    error: str
    raw: object


class Cursor(Protocol):
    """Reads a stream forward from one sequence.

    A member takes what was read with :meth:`take`, which never waits, and learns that
    there is more through the callback given to :meth:`notify`: no task and no wait per
    read, so a record reaches its partition in the event loop step after it arrived.
    """

    def notify(self, wake: Callable[[], None]) -> None:
        """From now on call ``wake`` (on the event loop, never from inside :meth:`take`)
        whenever :meth:`take` may have something new: records, or a failure to raise.
        Spurious calls are allowed."""
        ...

    def take(self, limit: int) -> list[Record]:
        """The records read and not taken yet (at most ``limit``; none if nothing is
        there yet), in sequence order, without waiting. Sequences only grow between
        calls, and :meth:`read` and :meth:`take` share them.

        Raises:
            StoreUnavailable: nothing is left to take and the stream cannot be read now
                (the caller reopens later).
        """
        ...

    async def read(self, limit: int) -> list[Record]:
        """The next records (at most ``limit``, at least one), in sequence order; waits
        while there are none (:meth:`take`, waiting).

        Raises:
            StoreUnavailable: the stream cannot be read now (the caller reopens later).
        """
        ...

    async def close(self) -> None:
        """Stop reading; idempotent."""
        ...


class StreamSource(Protocol):
    """One message type's stream, as one ordered group reads it."""

    @property
    def stream(self) -> str:
        """The stream's name."""
        ...

    async def generation(self) -> str:
        """Identifies the stream's current incarnation (changes if it is re-created).

        Raises:
            StoreUnavailable: the stream cannot be reached now.
        """
        ...

    async def open(self, start: int) -> Cursor:
        """A cursor at the first record with sequence >= ``start`` of the group's subjects.

        Raises:
            StoreUnavailable: the stream cannot be read now.
        """
        ...

    async def start_floor(self, start: StartPosition) -> int:
        """The stream sequence just before where a group created now at ``start``
        begins: 0 for ``"first"``, the last sequence for ``"new"``, and for a time
        the sequence before the first message stored at or after it (the last
        sequence if there is none).

        Raises:
            StoreUnavailable: the stream cannot be reached now.
        """
        ...


class DeadLetterSink(Protocol):
    """Stores dead letters of an ordered group's records."""

    async def dead_letter(self, record: Record, deliveries: int, reason: str) -> None:
        """Store the dead letter of ``record`` (idempotent per record).

        Raises:
            Exception: it was not stored (the partition holds and tries again).
        """
        ...


__all__ = ["Cursor", "DeadLetterSink", "Record", "StreamSource"]
