"""The DeadLetters port: read dead letters and replay them."""

from __future__ import annotations

from abc import ABC, abstractmethod

from message_bus.domain.dead_letter import DeadLetter

from .publisher import PublishReceipt


class DeadLetters(ABC):
    """The dead-letter stream, as an operator sees it.

    ``replay`` republishes the original message (same subject, headers and body) to its
    stream under the id ``replay-{dlq_sequence}-{original id}``, so every consumer group
    processes it again even inside the duplicate window of the original publish; the
    original id travels in ``Deltran-Replay-Of``. Repeating the same replay inside the
    duplicate window is deduplicated (``duplicate=True``, nothing redelivered).
    """

    @abstractmethod
    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first."""

    @abstractmethod
    async def replay(self, dlq_sequence: int) -> PublishReceipt:
        """Republish dead letter ``dlq_sequence`` to its original subject.

        Raises:
            NotFoundError: no dead letter with that sequence (also a ``KeyError``).
            PublishError: the original stream did not take it back.
        """
