"""The DeadLetters port: read dead letters and replay them."""

from __future__ import annotations

from abc import ABC, abstractmethod

from message_bus.domain.dead_letter import DeadLetter

from .publisher import PublishReceipt


class DeadLetters(ABC):
    """The dead-letter stream, as an operator sees it.

    ``list`` shows every dead letter, also one whose original cannot be decoded (a
    foreign message, or one whose headers could not be carried over): its ``message``
    is None and ``raw`` holds the original subject, header block and body as received.
    Each dead letter lists its replays.

    ``replay`` hands the original message back to the one consumer (group, durable,
    filter) that dead-lettered it, and to no other group: a group that acknowledged
    the message never sees it again. The handler receives it under its original
    message id (so idempotency by ``message.id`` holds), as a new delivery in the same
    stream. The replay is recorded in the dead-letter stream (when, where the copy
    was stored), so it survives restarts and shows in ``list``; replaying a dead
    letter again needs ``force=True``.
    """

    @abstractmethod
    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first."""

    @abstractmethod
    async def replay(self, dlq_sequence: int, force: bool = False) -> PublishReceipt:
        """Hand dead letter ``dlq_sequence`` back to the group that dead-lettered it.

        Returns the receipt of the replay copy (its stream and sequence).

        Raises:
            NotFoundError: no dead letter with that sequence (also a ``KeyError``).
            AlreadyReplayedError: it was replayed before, and ``force`` is False.
            DecodeError: its original is not a DelTran message (nothing is published).
            PublishError: the original stream did not take it back.
        """
