"""The DeadLetters port: read dead letters and replay them."""

from __future__ import annotations

from abc import ABC, abstractmethod

from message_bus.domain.dead_letter import DeadLetter

from .publisher import PublishReceipt


class DeadLetters(ABC):
    """The dead-letter stream, as an operator sees it.

    ``replay`` republishes the original message (same id, same subject, same headers)
    to its stream, so a consumer group processes it again. The id is kept so that
    consumers' own idempotency still recognises the payment; the price is that a replay
    inside the duplicate window of the original publish (or of an earlier replay) is
    deduplicated: the receipt says ``duplicate=True`` and nothing is redelivered.
    """

    @abstractmethod
    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first."""

    @abstractmethod
    async def replay(self, dlq_sequence: int) -> PublishReceipt:
        """Republish dead letter ``dlq_sequence`` to its original subject.

        Raises:
            KeyError: no dead letter with that sequence.
        """
