"""The dead-letter stream on JetStream: list dead letters, replay them."""

from __future__ import annotations

import base64
import builtins
import json
import logging
from collections.abc import Mapping
from typing import Any

import nats.errors

from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.codec import H_MSG_ID, H_PARTITION, Encoded, WireCodec
from message_bus.domain.dead_letter import (
    H_DLQ_SUBJECT,
    DeadLetter,
    decode_dead_letter,
    replay_of,
)
from message_bus.domain.errors import (
    BusConnectionError,
    DecodeError,
    NotFoundError,
    PublishError,
    ValidationError,
)
from message_bus.ports.config import PublisherConfig
from message_bus.ports.dead_letters import DeadLetters
from message_bus.ports.publisher import PublishReceipt

from .client import NatsClient
from .framing import block_of
from .headers import headers_of
from .sender import Sender

log = logging.getLogger("message_bus.nats.dead_letters")

_NO_MESSAGE = 10037


class JetStreamDeadLetters(DeadLetters):
    """Reads ``DEAD_LETTERS`` with the stream's message-get API and replays from it.

    ``list`` walks the stream in sequence order (``next_by_subj`` gets), so it needs no
    consumer and changes nothing. A stored entry that is not a decodable dead letter
    (written by something else) is skipped with a warning. ``replay`` republishes the
    original message (same subject, headers and ``Nats-Msg-Id``) through JetStream and
    returns its PubAck receipt; within the original stream's duplicate window
    JetStream reports it as a duplicate instead of storing it again.

    Args:
        client: A connected :class:`NatsClient`.
        catalog: Names the dead-letter stream (defaults to the design's table).
        publisher_config: Retry settings for replays.
    """

    def __init__(
        self,
        client: NatsClient,
        catalog: StreamCatalog | None = None,
        *,
        publisher_config: PublisherConfig | None = None,
    ) -> None:
        self.client = client
        self.catalog = catalog if catalog is not None else StreamCatalog.default()
        self.stream = self.catalog.dead_letters.name
        self._codec = WireCodec()
        self._sender = Sender(
            client,
            publisher_config
            if publisher_config is not None
            else PublisherConfig(circuit_breaker_threshold=0),
        )

    async def _get(self, request: dict[str, Any]) -> tuple[str, dict[str, str], bytes, int] | None:
        subject = f"$JS.API.STREAM.MSG.GET.{self.stream}"
        try:
            reply = await self.client.connection.request(
                subject, json.dumps(request).encode(), timeout=self.client.config.api_timeout
            )
            answer = json.loads(reply.data)
        except nats.errors.NoRespondersError:
            raise BusConnectionError("JetStream is unavailable") from None
        except (nats.errors.Error, TimeoutError, ValueError) as exc:
            raise BusConnectionError(f"JetStream did not answer: {exc}") from exc
        error = answer.get("error")
        if error is not None:
            if error.get("err_code") == _NO_MESSAGE or error.get("code") == 404:
                return None
            raise BusConnectionError(f"reading {self.stream}: {error.get('description')}")
        return _stored_message(answer["message"])

    async def list(self, limit: int = 100) -> builtins.list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first.

        Raises:
            BusConnectionError: JetStream did not answer, or the stream is missing.
        """
        letters: builtins.list[DeadLetter] = []
        sequence = 1
        filter_subject = self.catalog.dead_letters.subjects[0]
        while len(letters) < limit:
            stored = await self._get({"seq": sequence, "next_by_subj": filter_subject})
            if stored is None:
                break
            subject, headers, body, dlq_sequence = stored
            sequence = dlq_sequence + 1
            try:
                letter = decode_dead_letter(self._codec, subject, headers, body, dlq_sequence)
            except DecodeError as exc:
                log.warning("skipping %s #%d: %s", self.stream, dlq_sequence, exc)
                continue
            letters.append(letter)
        return letters

    async def replay(self, dlq_sequence: int) -> PublishReceipt:
        """Republishes dead letter ``dlq_sequence`` to its original subject (see the port:
        under a derived id, so it is delivered even inside the duplicate window).

        Only a DelTran message of a stream-backed type is replayed, to the subject its
        own headers name (``deltran.{type}.{key}``): whatever else a stored entry says,
        a replay never publishes anywhere else (say, to a ``$JS.API`` subject).

        Raises:
            NotFoundError: no dead letter with that sequence (also a ``KeyError``).
            DecodeError: the entry is not a dead letter of a DelTran message (nothing
                is published).
            ValidationError: its type is not stream-backed in the catalog (nothing is
                published).
            PublishError: the original stream did not accept it.
            BusConnectionError: JetStream did not answer.
        """
        stored = await self._get({"seq": dlq_sequence})
        if stored is None:
            raise NotFoundError("dead letter", dlq_sequence)
        subject, headers, body, _ = stored
        if H_DLQ_SUBJECT not in headers:  # not a dead letter (list() skips it too)
            raise NotFoundError("dead letter", dlq_sequence)
        original = replay_of(Encoded(subject, headers, body), dlq_sequence)
        # Raises DecodeError unless the subject is the one the message's headers name.
        message = self._codec.decode(original.subject, original.headers, original.body)
        if self.catalog.stream_for(message.message_type) is None:
            raise ValidationError(
                "message_type", message.message_type, "is not stream-backed: nothing to replay to"
            )
        message_id = original.headers.get(H_MSG_ID, "")
        try:
            return await self._sender.send(
                message_id,
                block_of(original, _partition_in(original.headers)),
                jetstream=True,
                message_type=None,
            )
        except PublishError:
            log.error("replay of %s #%d failed", self.stream, dlq_sequence)
            raise


def _stored_message(raw: dict[str, Any]) -> tuple[str, dict[str, str], bytes, int]:
    """(subject, headers, body, sequence) of a ``STREAM.MSG.GET`` response's message."""
    hdrs = raw.get("hdrs")
    headers = (headers_of(base64.b64decode(hdrs)) or {}) if hdrs else {}
    data = raw.get("data")
    body = base64.b64decode(data) if data else b""
    return str(raw["subject"]), headers, body, int(raw["seq"])


def _partition_in(headers: Mapping[str, str]) -> int | None:
    """The partition number written in ``headers``, if any."""
    text = headers.get(H_PARTITION)
    return int(text) if text is not None and text.isdigit() else None


__all__ = ["JetStreamDeadLetters"]
