"""The dead-letter stream on JetStream: list dead letters, replay them."""

from __future__ import annotations

import base64
import builtins
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import nats.errors

from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.codec import H_MSG_ID, H_PARTITION, Encoded, WireCodec, parse_timestamp
from message_bus.domain.dead_letter import (
    H_DLQ_STREAM,
    H_DLQ_SUBJECT,
    REPLAYED_SUBJECT_PREFIX,
    DeadLetter,
    Replay,
    decode_dead_letter,
    decode_replay_marker,
    encode_replay_marker,
    foreign_entry,
    replay_marker_subject,
    replay_of,
    unwrap_replay,
)
from message_bus.domain.errors import (
    AlreadyReplayedError,
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
    consumer and changes nothing. Every entry is listed: a dead letter whose original
    cannot be decoded (a foreign message) with its raw view, an entry that something
    else wrote there as such; replay markers (``deltran.dlq.replayed.{seq}``) are
    attached to their dead letters as ``replays``.

    ``replay`` publishes a copy of the original to the replay subject of the consumer
    that dead-lettered it (``deltran.replay.{stream}.{consumer}``, in the stream it
    came from), so only that group handles it again, under its original id; then it
    records a replay marker. A dead letter that has a marker is replayed again only
    with ``force``.

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

    async def _get(self, request: dict[str, Any]) -> _Stored | None:
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
        """Up to ``limit`` dead letters, oldest first, each with its replays.

        Raises:
            BusConnectionError: JetStream did not answer, or the stream is missing.
        """
        entries: builtins.list[_Stored] = []
        replays: dict[int, builtins.list[Replay]] = {}
        sequence = 1
        filter_subject = self.catalog.dead_letters.subjects[0]
        while len(entries) < limit:
            stored = await self._get({"seq": sequence, "next_by_subj": filter_subject})
            if stored is None:
                break
            sequence = stored.sequence + 1
            if not _note_marker(stored, replays):
                entries.append(stored)
        if len(entries) >= limit:  # the markers of these letters may come later
            markers = f"{REPLAYED_SUBJECT_PREFIX}.>"
            while (
                stored := await self._get({"seq": sequence, "next_by_subj": markers})
            ) is not None:
                sequence = stored.sequence + 1
                _note_marker(stored, replays)
        return [self._letter(entry, replays.get(entry.sequence, [])) for entry in entries]

    def _letter(self, stored: _Stored, replays: builtins.list[Replay]) -> DeadLetter:
        ordered = tuple(sorted(replays, key=lambda r: r.count))
        try:
            return decode_dead_letter(
                self._codec,
                stored.subject,
                stored.headers,
                stored.body,
                stored.sequence,
                parse_block=headers_of,
                replays=ordered,
            )
        except DecodeError:
            log.warning("%s #%d is not a dead letter", self.stream, stored.sequence)
            return foreign_entry(
                stored.subject,
                stored.block,
                stored.headers,
                stored.body,
                stored.sequence,
                stored.time,
            )

    async def _latest_replay(self, dlq_sequence: int) -> Replay | None:
        stored = await self._get({"last_by_subj": replay_marker_subject(dlq_sequence)})
        if stored is None:
            return None
        marker = decode_replay_marker(stored.headers)
        return marker[1] if marker is not None and marker[0] == dlq_sequence else None

    async def replay(self, dlq_sequence: int, force: bool = False) -> PublishReceipt:
        """Replays dead letter ``dlq_sequence`` to the group that dead-lettered it (see
        the port), and records the replay.

        Only a DelTran message of a stream-backed type is replayed, to the replay
        subject of the stream its own headers name: whatever else a stored entry says,
        a replay never publishes anywhere else (say, to a ``$JS.API`` subject).

        Raises:
            NotFoundError: no dead letter with that sequence (also a ``KeyError``).
            AlreadyReplayedError: it was replayed before and ``force`` is False.
            DecodeError: the entry is not a dead letter of a DelTran message (nothing
                is published).
            ValidationError: its type is not stream-backed in the catalog, or it names
                another stream than its type's (nothing is published).
            PublishError: the original stream did not accept it.
            BusConnectionError: JetStream did not answer.
        """
        stored = await self._get({"seq": dlq_sequence})
        if stored is None or H_DLQ_SUBJECT not in stored.headers:
            raise NotFoundError("dead letter", dlq_sequence)
        latest = await self._latest_replay(dlq_sequence)
        if latest is not None and not force:
            raise AlreadyReplayedError(dlq_sequence, latest.count)
        count = 1 if latest is None else latest.count + 1
        dead = Encoded(stored.subject, stored.headers, stored.body)
        copy = replay_of(dead, dlq_sequence, count, parse_block=headers_of)
        # Raises DecodeError unless the subject is the one the message's headers name.
        message = self._codec.decode(*unwrap_replay(copy))
        spec = self.catalog.stream_for(message.message_type)
        if spec is None:
            raise ValidationError(
                "message_type", message.message_type, "is not stream-backed: nothing to replay to"
            )
        if spec.name != stored.headers.get(H_DLQ_STREAM):
            raise ValidationError(
                H_DLQ_STREAM, stored.headers.get(H_DLQ_STREAM), f"is not {spec.name}"
            )
        message_id = copy.headers[H_MSG_ID]
        try:
            receipt = await self._sender.send(
                message_id,
                block_of(copy, _partition_in(copy.headers)),
                jetstream=True,
                message_type=None,
            )
        except PublishError:
            log.error("replay of %s #%d failed", self.stream, dlq_sequence)
            raise
        assert receipt.stream is not None
        assert receipt.sequence is not None
        marker = encode_replay_marker(
            dlq_sequence,
            Replay(datetime.now(UTC), receipt.stream, receipt.sequence, message_id, count),
        )
        await self._sender.send(
            marker.headers[H_MSG_ID], block_of(marker), jetstream=True, message_type=None
        )
        return receipt


class _Stored(NamedTuple):
    """A message read from the stream with ``STREAM.MSG.GET``."""

    subject: str
    block: bytes
    headers: dict[str, str]
    body: bytes
    sequence: int
    time: datetime


def _note_marker(stored: _Stored, replays: dict[int, builtins.list[Replay]]) -> bool:
    """Records ``stored`` in ``replays`` if it is a replay marker; whether it was one."""
    if not stored.subject.startswith(REPLAYED_SUBJECT_PREFIX + "."):
        return False
    marker = decode_replay_marker(stored.headers)
    if marker is None:
        return False
    replays.setdefault(marker[0], []).append(marker[1])
    return True


def _stored_message(raw: dict[str, Any]) -> _Stored:
    """A ``STREAM.MSG.GET`` response's message."""
    hdrs = raw.get("hdrs")
    block = base64.b64decode(hdrs) if hdrs else b""
    headers = (headers_of(block) or {}) if block else {}
    data = raw.get("data")
    body = base64.b64decode(data) if data else b""
    try:
        time = parse_timestamp(str(raw.get("time", "")))
    except ValueError:
        time = datetime(1970, 1, 1, tzinfo=UTC)
    return _Stored(str(raw["subject"]), block, headers, body, int(raw["seq"]), time)


def _partition_in(headers: Mapping[str, str]) -> int | None:
    """The partition number written in ``headers``, if any."""
    text = headers.get(H_PARTITION)
    return int(text) if text is not None and text.isdigit() else None


__all__ = ["JetStreamDeadLetters"]
