"""An ordered group's reader on NATS: an ephemeral consumer without acks, pulled ahead."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any, NamedTuple

import nats.errors
from nats.aio.subscription import Subscription as NatsSubscription

from message_bus.adapters.ordered.source import Cursor, Record
from message_bus.adapters.ordered.store import StoreUnavailable
from message_bus.domain.catalog import MessageType
from message_bus.domain.codec import H_PARTITION_KEY, Encoded
from message_bus.domain.dead_letter import replay_subject, unwrap_replay
from message_bus.domain.errors import (
    DecodeError,
    MessageBusError,
    StreamError,
    ValidationError,
)
from message_bus.ports.config import StartPosition, ephemeral_consumer_name

from ..client import ConnectionStatus, NatsClient
from ..framing import BlockCodec
from ..headers import headers_of
from ..internals import Writer
from .closing import close_inbox
from .delivery import ack_fields

log = logging.getLogger("message_bus.nats.ordered")

_JS_API = "$JS.API"
_STREAM_NOT_FOUND = 10059
_DELETE_TIMEOUT = 2.0
_SILENT_HEARTBEATS = 2.5
"""Missed idle heartbeats after which a cursor's pull requests count as lost."""


def _nothing() -> None:
    return None


class StoredMessage(NamedTuple):
    """A record's message as read from the stream: what its dead letter needs."""

    stream: str
    subject: bytes
    header_block: bytes | None
    body: bytes


def _positive(field: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValidationError(field, value, "must be a finite number > 0 of seconds")
    return float(value)


class JetStreamSource:
    """:class:`~message_bus.adapters.ordered.source.StreamSource` of one message type's
    stream, as one ordered group (consumer name ``consumer``) reads it.

    Each :meth:`open` creates an ephemeral consumer of its own
    (:func:`ephemeral_consumer_name`): no acknowledgements (``ack_policy none``), from
    the start sequence (or the stream's first, if later), filtering the type's subjects
    and the group's replay subject ``deltran.replay.{stream}.{consumer}``, R1 in memory.
    The server deletes it ``inactive_threshold`` seconds after its reader died.

    Args:
        client: A connected :class:`NatsClient`.
        stream: The type's stream.
        message_type: The type read.
        consumer: The group's consumer name (its dead letters are replayed to it).
        codec: Decodes the messages (default: a :class:`BlockCodec`).
        batch: Messages per pull request; two requests are kept in flight.
        inactive_threshold: Seconds the server keeps a consumer whose reader died.
        pull_expires: Seconds a pull request waits on the server for messages.
        idle_heartbeat: Seconds between the server's heartbeats on a waiting pull
            request; 2.5 missed ones make :meth:`Cursor.read` raise
            :class:`StoreUnavailable`.
    """

    def __init__(
        self,
        client: NatsClient,
        stream: str,
        message_type: MessageType,
        consumer: str,
        *,
        codec: BlockCodec | None = None,
        batch: int = 256,
        inactive_threshold: float = 30.0,
        pull_expires: float = 10.0,
        idle_heartbeat: float = 2.0,
    ) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
            raise ValidationError("batch", batch, "must be an int in 1..10000")
        self.inactive_threshold = _positive("inactive_threshold", inactive_threshold)
        self.pull_expires = _positive("pull_expires", pull_expires)
        self.idle_heartbeat = _positive("idle_heartbeat", idle_heartbeat)
        if not self.idle_heartbeat * 2 <= self.pull_expires:
            raise ValidationError("idle_heartbeat", idle_heartbeat, "must be <= pull_expires / 2")
        if not self.pull_expires < self.inactive_threshold:
            raise ValidationError(
                "inactive_threshold", inactive_threshold, "must exceed pull_expires"
            )
        self.replay_subject = replay_subject(stream, consumer)  # checks both tokens
        self.client = client
        self._stream = stream
        self.message_type = message_type
        self.consumer = consumer
        self.codec = codec if codec is not None else BlockCodec()
        self.batch = batch
        self.filter_subjects = [f"{message_type.subject_prefix}.>", self.replay_subject]

    @property
    def stream(self) -> str:
        return self._stream

    async def _api(self, subject: str, request: dict[str, Any] | None) -> dict[str, Any]:
        """A JetStream API answer; a missing stream raises :class:`StreamError`, anything
        else that went wrong :class:`StoreUnavailable`."""
        try:
            nc = self.client.connection
            payload = b"" if request is None else json.dumps(request).encode()
            reply = await nc.request(subject, payload, timeout=self.client.config.api_timeout)
            answer: dict[str, Any] = json.loads(reply.data)
        except (nats.errors.Error, TimeoutError, OSError, ValueError, MessageBusError) as exc:
            raise StoreUnavailable(f"stream {self._stream}: {exc!r}") from exc
        error = answer.get("error")
        if error is not None:
            if error.get("err_code") == _STREAM_NOT_FOUND:
                raise StreamError(self._stream, "does not exist; apply the stream catalog first")
            raise StoreUnavailable(
                f"stream {self._stream}: {error.get('description')} (code {error.get('err_code')})"
            )
        return answer

    async def generation(self) -> str:
        """The stream's creation time, as JetStream reports it.

        Raises:
            StreamError: The stream does not exist.
            StoreUnavailable: JetStream did not answer.
        """
        answer = await self._api(f"{_JS_API}.STREAM.INFO.{self._stream}", None)
        return str(answer["created"])

    async def start_floor(self, start: StartPosition) -> int:
        """The sequence before a new group's start (see the seam's doc). For a time,
        JetStream itself finds the first message stored at or after it: a consumer
        created at that time (and deleted at once, never pulled) has delivered up to
        just before it.

        Raises:
            StreamError: The stream does not exist.
            StoreUnavailable: JetStream did not answer.
        """
        if start == "first":
            return 0
        if start == "new":
            answer = await self._api(f"{_JS_API}.STREAM.INFO.{self._stream}", None)
            return int(answer["state"]["last_seq"])
        name = ephemeral_consumer_name()
        config = {
            "name": name,
            "description": f"DelTran {self.message_type.value} start of {self.consumer}",
            "deliver_policy": "by_start_time",
            "opt_start_time": start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "ack_policy": "none",
            "inactive_threshold": int(self.inactive_threshold * 1e9),
            "num_replicas": 1,
            "mem_storage": True,
        }
        request = {"stream_name": self._stream, "config": config, "action": "create"}
        try:
            answer = await self._api(f"{_JS_API}.CONSUMER.CREATE.{self._stream}.{name}", request)
        finally:
            await self.delete_consumer(name)
        return int(answer["delivered"]["stream_seq"])

    async def open(self, start: int) -> Cursor:
        """A cursor from ``start`` (>= 1) over the group's subjects.

        Raises:
            ValidationError: ``start`` is not an int >= 1.
            StreamError: The stream does not exist.
            StoreUnavailable: JetStream did not answer.
        """
        if isinstance(start, bool) or not isinstance(start, int) or start < 1:
            raise ValidationError("start", start, "must be an int >= 1")
        if not self.client.is_connected:
            raise StoreUnavailable(f"stream {self._stream}: NATS is not connected")
        name = ephemeral_consumer_name()
        config = {
            "name": name,
            "description": f"DelTran {self.message_type.value} ordered reader of {self.consumer}",
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": start,
            "ack_policy": "none",
            "replay_policy": "instant",
            "filter_subjects": self.filter_subjects,
            "inactive_threshold": int(self.inactive_threshold * 1e9),
            "num_replicas": 1,
            "mem_storage": True,
        }
        request = {"stream_name": self._stream, "config": config, "action": "create"}
        cursor = JetStreamCursor(self, name)
        await cursor.subscribe()
        try:
            await self._api(f"{_JS_API}.CONSUMER.CREATE.{self._stream}.{name}", request)
        except BaseException:
            await cursor.close()
            raise
        cursor.start()
        return cursor

    async def delete_consumer(self, name: str) -> None:
        """Deletes an ephemeral consumer of this source (best effort, bounded; without a
        connection the server deletes it after ``inactive_threshold``)."""
        if not self.client.is_connected:
            return
        try:
            nc = self.client.connection
            await nc.request(
                f"{_JS_API}.CONSUMER.DELETE.{self._stream}.{name}", b"", timeout=_DELETE_TIMEOUT
            )
        except (nats.errors.Error, TimeoutError, OSError, MessageBusError) as exc:
            log.debug("consumer %s on %s not deleted: %s", name, self._stream, exc)

    def record(self, raw: tuple[bytes, bytes, bytes, bytes | None]) -> Record:
        """The record of a message as read (subject, reply, body, header block)."""
        subject_bytes, reply, body, block = raw
        sequence = ack_fields(reply)[2]
        subject = subject_bytes.decode("utf-8", "replace")
        stored = StoredMessage(self._stream, subject_bytes, block, body)
        message = self.codec.decode_block(subject, block, body)
        if message is not None:
            return Record(sequence, subject, message.partition_key.suffix, message, "", stored)
        headers = headers_of(block) or {}
        original = unwrap_replay(Encoded(subject, headers, body))
        key = original.headers.get(H_PARTITION_KEY)
        try:
            message = self.codec.decode(*original)
        except (DecodeError, ValidationError) as exc:
            return Record(sequence, subject, key, None, f"undecodable: {exc}", stored)
        return Record(sequence, subject, message.partition_key.suffix, message, "", stored)


class JetStreamCursor:
    """Reads an ephemeral consumer of a :class:`JetStreamSource` (see its doc).

    Messages arrive on a raw inbox route (no ``Msg``, no task per message) and wait in
    a buffer, and the callback given to :meth:`notify` hears of each; :meth:`take`
    empties the buffer without waiting, :meth:`read` waits for it. Two pull requests
    of ``batch`` messages are kept in flight while the buffer holds less than a batch,
    so a busy stream is read without a round trip per batch. Status replies give back
    the unused part of a request (404, 408, 409), idle heartbeats prove the requests
    are alive. :meth:`take` and :meth:`read` raise :class:`StoreUnavailable` once the
    consumer is gone (deleted, lost by a server restart: 409 Consumer Deleted, 503 no
    responders), the connection dropped, or the heartbeats went silent: the caller
    reopens at its own position.
    """

    def __init__(self, source: JetStreamSource, name: str) -> None:
        self.source = source
        self.name = name
        self._buffer: collections.deque[tuple[bytes, bytes, bytes, bytes | None]] = (
            collections.deque()
        )
        self._outstanding = 0
        self._failure: str | None = None
        self._closed = False
        self._wake = asyncio.Event()
        self._sub: NatsSubscription | None = None
        self._writer: Writer | None = None
        self._next = f"{_JS_API}.CONSUMER.MSG.NEXT.{source.stream}.{name}".encode()
        self._inbox = b""
        self._request = b'{"batch":%d,"expires":%d,"idle_heartbeat":%d}' % (
            source.batch,
            int(source.pull_expires * 1e9),
            int(source.idle_heartbeat * 1e9),
        )
        self._last_seen = time.monotonic()
        self._remove_listener: Any = None
        self._notify: Callable[[], None] = _nothing
        self._watchdog: asyncio.TimerHandle | None = None

    async def subscribe(self) -> None:
        """Subscribes the inbox (before the consumer exists, so nothing is missed)."""
        try:
            nc = self.source.client.connection
            self._writer = Writer(nc)
            inbox = nc.new_inbox()
            self._inbox = inbox.encode()
            self._sub = await self.source.client.subscribe_raw(inbox, self._on_message)
        except (nats.errors.Error, OSError, MessageBusError) as exc:
            raise StoreUnavailable(f"stream {self.source.stream}: {exc!r}") from exc

    def start(self) -> None:
        """Starts watching the connection and asks for the first batches."""
        self._remove_listener = self.source.client.on_status(self._on_status)
        self._ask()

    def _on_status(self, status: ConnectionStatus) -> None:
        if status is not ConnectionStatus.CONNECTED:
            self._fail(f"the connection is {status.value}")

    def _fail(self, why: str) -> None:
        if self._failure is None:
            self._failure = why
        self._wake.set()
        self._notify()

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, block: bytes | None) -> None:
        self._last_seen = time.monotonic()
        if reply:
            if self._outstanding > 0:
                self._outstanding -= 1
            self._buffer.append((subject, reply, data, block))
            self._wake.set()
            self._notify()
            return
        headers = headers_of(block) or {}
        status = headers.get("Status")
        if status == "100":  # idle heartbeat
            return
        if status in ("404", "408", "409"):
            description = headers.get("Description", "")
            if status == "409" and "Consumer Deleted" in description:
                self._fail("its consumer was deleted")
                return
            pending = headers.get("Nats-Pending-Messages", "")
            if pending.isdigit():
                self._outstanding = max(0, self._outstanding - int(pending))
            else:
                self._outstanding = 0
            if status == "409":
                log.info("ordered reader %s: 409 %s", self.name, description)
            self._wake.set()
            self._notify()  # its taker asks again
            return
        self._fail(f"pull refused: {status} {headers.get('Description', '')}".strip())

    def _ask(self) -> None:
        """Keeps two pull requests in flight while the buffer is short of a batch."""
        writer = self._writer
        if writer is None or self._failure is not None or self._closed:
            return
        batch = self.source.batch
        asked = False
        while self._outstanding + len(self._buffer) <= batch:
            try:
                writer.write_request(self._next, self._inbox, self._request)
            except nats.errors.Error as exc:
                self._fail(f"cannot ask for messages: {exc!r}")
                return
            if not asked:
                self._last_seen = time.monotonic()
            self._outstanding += batch
            asked = True
        if asked:
            writer.write_out()

    def notify(self, wake: Callable[[], None]) -> None:
        """Calls ``wake`` whenever records arrive or the cursor fails; a watchdog timer
        (every ``idle_heartbeat``) fails it once the server's heartbeats went silent, so
        a caller that only waits for ``wake`` notices that too."""
        self._notify = wake
        if self._watchdog is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(self.source.idle_heartbeat, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        if self._closed or self._failure is not None:
            return
        waited = time.monotonic() - self._last_seen
        if not self._buffer and waited > self.source.idle_heartbeat * _SILENT_HEARTBEATS:
            self._fail(f"no heartbeat for {waited:.1f}s")
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.source.idle_heartbeat, self._watch)

    def take(self, limit: int) -> list[Record]:
        """The records that arrived and were not taken yet (at most ``limit``, maybe
        none), without waiting; asks for more as the buffer empties.

        Raises:
            StoreUnavailable: the buffer is empty and the consumer or the connection is
                gone, or the heartbeats went silent (reopen).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError("limit", limit, "must be an int >= 1")
        buffer = self._buffer
        if not buffer:
            if self._failure is not None:
                raise StoreUnavailable(f"ordered reader {self.name}: {self._failure}")
            if self._closed:
                raise StoreUnavailable(f"ordered reader {self.name}: closed")
            self._ask()
            waited = time.monotonic() - self._last_seen
            if waited > self.source.idle_heartbeat * _SILENT_HEARTBEATS:
                self._failure = f"no heartbeat for {waited:.1f}s"
                raise StoreUnavailable(f"ordered reader {self.name}: {self._failure}")
            return []
        record = self.source.record
        records = [record(buffer.popleft()) for _ in range(min(limit, len(buffer)))]
        self._ask()
        return records

    async def read(self, limit: int) -> list[Record]:
        """The next records (1 to ``limit``), waiting while there are none.

        Raises:
            StoreUnavailable: the consumer or the connection is gone (reopen).
        """
        silence = self.source.idle_heartbeat * _SILENT_HEARTBEATS
        while True:
            self._wake.clear()
            records = self.take(limit)
            if records:
                return records
            waited = time.monotonic() - self._last_seen
            try:
                async with asyncio.timeout(max(0.0, silence - waited) + 0.001):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Deletes the consumer (best effort) and unsubscribes; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._notify = _nothing
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._remove_listener is not None:
            self._remove_listener()
        await close_inbox(self.source.client, self._sub)
        self._buffer.clear()
        await self.source.delete_consumer(self.name)


__all__ = ["JetStreamCursor", "JetStreamSource", "StoredMessage"]
