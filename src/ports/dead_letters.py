"""The DeadLetters port: read dead letters and replay them."""

from __future__ import annotations

from abc import ABC, abstractmethod

from message_bus.domain.dead_letter import DeadLetter

from .publisher import PublishReceipt


class DeadLetters(ABC):
    """The dead-letter stream, as an operator sees it.

    ``replay`` republishes the original message (same id, same subject, same headers)
    to its stream, so a consumer group processes it again; JetStream deduplicates the
    replay itself if it is repeated within the duplicate window.
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
