"""An ordered group's dead letters on NATS: stored in ``DEAD_LETTERS`` like any group's."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from message_bus.adapters.ordered.source import Record
from message_bus.domain.dead_letter import encode_dead_letter
from message_bus.domain.errors import ValidationError
from message_bus.ports.config import PublisherConfig

from ..client import NatsClient
from ..framing import BlockCodec, block_of
from ..originals import original_of
from ..sender import Sender
from .stream_source import StoredMessage

log = logging.getLogger("message_bus.nats.ordered")


class NatsDeadLetterSink:
    """:class:`~message_bus.adapters.ordered.source.DeadLetterSink` on ``DEAD_LETTERS``.

    A dead letter is exactly what a shared group's subscription stores
    (:func:`encode_dead_letter`: the reason, original subject, stream, sequence,
    deliveries, group and consumer in headers; kept raw when the message cannot be
    decoded or its headers cannot be carried, see :func:`~.originals.original_of`),
    under the same ``Nats-Msg-Id`` (``dlq:{consumer}:{stream}:{seq}``), so storing one
    record's dead letter twice stores it once. There is nothing to acknowledge: the
    ordered group's reader takes no acks. :meth:`dead_letter` returns once JetStream
    confirmed the dead letter, and raises if it did not.

    Args:
        client: A connected :class:`NatsClient`.
        consumer_group: The group, as dead letters name it.
        consumer: The group's consumer name (replays of the dead letter go to it).
        codec: Decides whether a message is kept raw (default: a :class:`BlockCodec`).
        publisher_config: Retry settings for storing dead letters.
    """

    def __init__(
        self,
        client: NatsClient,
        consumer_group: str,
        consumer: str,
        *,
        codec: BlockCodec | None = None,
        publisher_config: PublisherConfig | None = None,
    ) -> None:
        self.client = client
        self.consumer_group = consumer_group
        self.consumer = consumer
        self.codec = codec if codec is not None else BlockCodec()
        self._sender = Sender(
            client,
            publisher_config
            if publisher_config is not None
            else PublisherConfig(circuit_breaker_threshold=0),
        )

    async def dead_letter(self, record: Record, deliveries: int, reason: str) -> None:
        """Stores the dead letter of ``record``, read by a :class:`~.stream_source.JetStreamSource`.

        Raises:
            ValidationError: ``record`` was not read from NATS.
            PublishError: It was not stored.
        """
        stored = record.raw
        if not isinstance(stored, StoredMessage):
            raise ValidationError("record.raw", type(stored).__name__, "not read from NATS")
        original, raw_header_block = original_of(
            self.codec, stored.subject, stored.header_block, stored.body
        )
        dead = encode_dead_letter(
            original,
            reason=reason,
            stream=stored.stream,
            sequence=record.sequence,
            deliveries=deliveries,
            consumer_group=self.consumer_group,
            consumer=self.consumer,
            failed_at=datetime.now(UTC),
            raw_header_block=raw_header_block,
        )
        await self._sender.send(
            dead.headers["Nats-Msg-Id"], block_of(dead), jetstream=True, message_type=None
        )
        log.warning(
            "dead-lettered %s #%d after %d deliveries: %s",
            stored.stream,
            record.sequence,
            deliveries,
            reason,
        )


__all__ = ["NatsDeadLetterSink"]
