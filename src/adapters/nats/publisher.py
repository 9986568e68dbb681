"""The JetStream publisher: acked publishes, retries, a circuit breaker, pipelined batches."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import nats.errors

from message_bus.domain.catalog import MessageType, StreamCatalog
from message_bus.domain.codec import H_PARTITION_KEY, H_TYPE, WireCodec
from message_bus.domain.errors import (
    BusConnectionError,
    CircuitOpenError,
    ClosedError,
    DecodeError,
    NoRespondersError,
    PublishBatchError,
    PublishError,
    PublishTimeout,
    RequestTimeout,
    ValidationError,
)
from message_bus.domain.message import Message
from message_bus.domain.payload_schema import check_payload
from message_bus.ports.config import PublisherConfig
from message_bus.ports.publisher import Publisher, PublishReceipt, check_request

from .breaker import CircuitBreaker
from .client import NatsClient
from .failures import WRITE_ERRORS, counts_as_outage
from .framing import PUB_BATCH, BlockCodec, EncodedBlock, PubBatch
from .internals import Writer
from .sender import RetryHook, Sender
from .windows import WindowGuard

_SLICE_WINDOWS = 8
"""A batch is sent in slices of this many windows (``max_in_flight``)..."""
_MIN_SLICE = 4096
"""... and of at least this many messages: between two slices the pipeline runs dry once."""
_CORE_BACKLOG = 8 << 20
"""Bytes of a core batch the transport may hold for the socket before the batch waits."""
_WRITTEN, _NOT_WRITTEN, _STALLED = "written", "not written", "stalled"
"""What became of a core slice (see ``JetStreamPublisher._write_core_slice``)."""
_CORE_SLICES_AHEAD = 16
"""Core slices (``PUB_BATCH`` messages each) a batch may encode before it sends any; a
larger batch is checked in a pass of its own first."""


class JetStreamPublisher(Publisher):
    """Publishes DelTran messages on NATS: JetStream for stream-backed types, core NATS
    for the core-only ones (or for every type when ``use_jetstream`` is False).

    * A JetStream publish returns only once the stream acknowledged it (PubAck); the
      receipt carries the stream, sequence and duplicate flag. ``Nats-Msg-Id`` is the
      message id, so a retry of a message the stream already stored is acknowledged as
      a duplicate instead of stored twice.
    * A core publish returns once the message is queued on a live connection; while
      the connection is down it waits for it (within the deadline) rather than
      buffering, so "published" never means "sitting in a reconnect buffer".
    * Retries, within ``publish_timeout``, only for failures that may pass: timeout,
      disconnected, no responders while the stream's leader is elected (503). Up to
      ``max_retry_attempts`` attempts wait for an answer (each gets an equal share of
      the remaining time), with exponential backoff and full jitter between them. A
      refusal that comes back at once (no responders, JetStream unavailable, a retry
      whose first copy is still being stored, a write on a lost connection) does not
      use up an attempt: it is asked again every ``initial_retry_delay`` (jittered)
      until the deadline, so a publish follows the cluster's recovery. A publish
      whose connection is lost while it awaits its ack goes out again on the next
      connection at once. Not retried, raised at once: stream full, message too
      large, permission denied, no stream for the subject (``PublishError.reason``:
      ``stream_full``, ``message_too_large``, ``permission_denied``, ``no_stream``).
    * A :class:`CircuitBreaker` fails fast (:class:`CircuitOpenError`) after
      ``circuit_breaker_threshold`` consecutive publishes that failed for an outage
      (timeout, no connection); no responders and "unavailable" come from a server
      that is up, while a cluster recovers, and do not count.
    * The first publish to each stream looks up the stream's duplicate window and
      refuses (:class:`DuplicateWindowError`, for that and every later publish to it)
      a window shorter than ``PublisherConfig.min_duplicate_window`` (twice
      ``publish_timeout``): a retry could arrive after the stream forgot the id and be
      stored as a second copy. Checked once per stream, not per message.
    * ``publish_many`` pipelines up to ``max_in_flight`` unacknowledged publishes on one
      reply inbox; every publish has a deadline and every reply, error or not,
      resolves it, so a batch never hangs. Failed positions are retried on their own.

    Args:
        client: A connected :class:`NatsClient`.
        config: Retry, timeout, breaker and batching settings.
        catalog: Which types are stream-backed (defaults to the design's table).
        on_retry: Called before every retry (e.g. to count retries in metrics).
    """

    def __init__(
        self,
        client: NatsClient,
        config: PublisherConfig | None = None,
        catalog: StreamCatalog | None = None,
        *,
        on_retry: RetryHook | None = None,
    ) -> None:
        self.client = client
        self.config = config if config is not None else PublisherConfig()
        self.catalog = catalog if catalog is not None else StreamCatalog.default()
        self._codec = BlockCodec(self.config.partitions)
        self._sender = Sender(client, self.config, on_retry)
        self.breaker = CircuitBreaker(
            self.config.circuit_breaker_threshold, self.config.circuit_breaker_cooldown
        )
        use_jetstream = self.config.use_jetstream
        # a type missing here (registered after this publisher was built) is core-only,
        # as it is for the catalog, which was built before it too
        # by the members' ids: enum members hash in Python, ints in C
        self._jetstream_ids = frozenset(
            id(t) for t in MessageType if use_jetstream and self.catalog.stream_for(t) is not None
        )
        self._validate = self.config.validate_payloads
        self._core_writer: Writer | None = None  # the live connection's, for core publishes
        self._slice = max(_MIN_SLICE, _SLICE_WINDOWS * self.config.max_in_flight)
        self._windows = WindowGuard(client, self.config, self.catalog)
        self._closed = False

    @property
    def on_retry(self) -> RetryHook | None:
        """The retry hook (settable, e.g. by telemetry after construction)."""
        return self._sender.on_retry

    @on_retry.setter
    def on_retry(self, hook: RetryHook | None) -> None:
        self._sender.on_retry = hook

    async def publish(self, message: Message) -> PublishReceipt:
        if self._closed:
            raise ClosedError("the publisher was closed")
        if self._validate:
            check_payload(message.message_type, message.payload)
        breaker = self.breaker
        if id(message.message_type) not in self._jetstream_ids:  # the core hot path
            command, size, body_size, subject, partition = self._codec.encode_pub(message)
            if not breaker.clean:  # before() lets every call through while clean
                retry_after = breaker.before()
                if retry_after is not None:
                    raise CircuitOpenError(message.id, subject, retry_after)
            writer = self._core_writer
            if writer is not None:
                try:  # appended to the connection's buffer, if it is up
                    over_limit = writer.write_live(command, size, body_size)
                except WRITE_ERRORS:
                    over_limit = None  # the general path below reports it
                if over_limit is not None:
                    if over_limit:
                        await writer.relieve()
                    if not breaker.clean:
                        breaker.success()
                    return PublishReceipt(message.id, subject, None, None, False, partition)
            # not connected now, or refused, or the first publish: the general path
            # (waits for a connection, retries, reports); it finds the current writer
            self._core_writer = self._sender.live_writer()
            return await self._send(message, self._codec.encode_block(message), jetstream=False)
        block = self._codec.encode_block(message)
        if not breaker.clean:
            retry_after = breaker.before()
            if retry_after is not None:
                raise CircuitOpenError(message.id, block.subject, retry_after)
        return await self._send(message, block, jetstream=True)

    async def _send(
        self, message: Message, block: EncodedBlock, *, jetstream: bool
    ) -> PublishReceipt:
        """Sends ``block`` through the sender (retries, breaker accounting)."""
        breaker = self.breaker
        started = breaker.now()
        try:
            deadline = None
            if id(message.message_type) in self._windows.pending:  # once per stream
                deadline = await self._check_window(message, block.subject)
            receipt = await self._sender.send(
                message.id,
                block,
                jetstream=jetstream,
                message_type=message.message_type,
                deadline=deadline,
            )
        except PublishError as exc:
            if breaker.threshold:
                if counts_as_outage(exc):
                    breaker.failure(started)
                else:
                    breaker.success()
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.success()
        return receipt

    async def _check_window(self, message: Message, subject: str) -> float:
        """Refuse a stream whose duplicate window is too short, looked up within the
        publish's own budget; return the publish's deadline (an event-loop time).

        Raises:
            DuplicateWindowError: the stream forgets ids sooner than a retry may come.
            PublishTimeout: the lookup took the whole budget.
        """
        loop = asyncio.get_running_loop()
        timeout = self.config.publish_timeout
        deadline = loop.time() + timeout
        await self._windows.check(message.message_type, timeout)
        if loop.time() >= deadline:
            raise PublishTimeout(message.id, subject, "no answer to the stream lookup")
        return deadline

    async def publish_many(self, messages: Sequence[Message]) -> list[PublishReceipt]:
        if self._closed:
            raise ClosedError("the publisher was closed")
        if self._validate:
            for message in messages:
                check_payload(message.message_type, message.payload)
        if not messages:
            return []
        codec = self._codec
        core = self._jetstream_ids.isdisjoint([id(m.message_type) for m in messages])
        size = PUB_BATCH if core else self._slice
        starts = range(0, len(messages), size)
        # Every message is checked before anything is sent: a batch of a few slices is
        # encoded ahead (which checks it); a larger one is checked first, then encoded
        # slice by slice, so what it holds does not grow with the batch.
        if len(starts) > (_CORE_SLICES_AHEAD if core else 1):
            codec.check_pubs(messages)
            ahead: list[PubBatch | list[EncodedBlock] | None] | None = None
        else:
            ahead = [self._encode(messages[start : start + size], core) for start in starts]
        pending = self._windows.pending
        if pending:
            for message_type in {m.message_type for m in messages if id(m.message_type) in pending}:
                await self._windows.check(message_type, self.config.publish_timeout)
        breaker = self.breaker
        if breaker.threshold:
            retry_after = breaker.before()
            if retry_after is not None:
                raise PublishBatchError(
                    [CircuitOpenError(m.id, m.subject, retry_after) for m in messages]
                )
        started = breaker.now()
        results: list[PublishReceipt | PublishError] = []
        try:
            for index, start in enumerate(starts):
                part = messages[start : start + size]
                encoded: PubBatch | list[EncodedBlock] | None
                if ahead is None:
                    encoded = self._encode(part, core)
                else:
                    encoded, ahead[index] = ahead[index], None  # not held once sent
                if isinstance(encoded, PubBatch):
                    written = await self._write_core_slice(encoded, results)
                    if written == _STALLED:  # the rest cannot be queued behind it
                        detail = "the connection did not take the batch within publish_timeout"
                        rest = messages[start + size :]
                        results += [PublishTimeout(m.id, m.subject, detail) for m in rest]
                        break
                    if written == _WRITTEN:
                        continue
                    encoded = self._codec.encode_blocks(part)
                assert encoded is not None
                results += await self._send_slice(part, encoded)
        except BaseException:
            breaker.release()
            raise
        errors = [r for r in results if isinstance(r, PublishError)]
        if breaker.threshold:
            if len(errors) < len(results) or not all(counts_as_outage(e) for e in errors):
                breaker.success()
            else:  # one batch, one outage seen
                breaker.failure(started)
        if errors:
            raise PublishBatchError(results)
        return results  # type: ignore[return-value]  # no errors in it

    def _encode(self, part: Sequence[Message], core: bool) -> PubBatch | list[EncodedBlock]:
        """``part`` encoded for :meth:`_write_core_slice` (core) or :meth:`_send_slice`."""
        return self._codec.encode_pubs(part) if core else self._codec.encode_blocks(part)

    async def _write_core_slice(
        self, batch: PubBatch, results: list[PublishReceipt | PublishError]
    ) -> str:
        """Writes a slice of core messages as one buffer to the live connection and adds
        its receipts to ``results`` (``_WRITTEN``); ``_NOT_WRITTEN`` when the connection
        is not up now or a message of it may be over the server's limit: then send it as
        a slice; ``_STALLED`` when it was written but the socket has not taken what
        waits for it within ``publish_timeout`` (the server does not read)."""
        writer = self._core_writer
        if writer is None:
            writer = self._core_writer = self._sender.live_writer()
            if writer is None:
                return _NOT_WRITTEN
        try:
            over_limit = writer.write_live(
                batch.commands, batch.largest, batch.body_bytes, len(batch.ids)
            )
        except WRITE_ERRORS:
            over_limit = None
        if over_limit is None:
            self._core_writer = None  # looked up again next time
            return _NOT_WRITTEN
        results += [
            PublishReceipt(message_id, route.subject, None, None, False, route.partition)
            for message_id, route in zip(batch.ids, batch.routes, strict=True)
        ]
        # to the socket now, so the server reads this slice while the next is encoded;
        # what the socket cannot take yet is bounded by waiting for it
        if writer.send_now() > _CORE_BACKLOG:
            if not await writer.drained(self.config.publish_timeout):
                return _STALLED
        elif over_limit:  # a transport that sends from nats-py's flusher only
            await writer.relieve()
        else:
            await asyncio.sleep(0)  # one turn of the loop: the socket takes what it can
        return _WRITTEN

    async def _send_slice(
        self, part: Sequence[Message], blocks: list[EncodedBlock]
    ) -> list[PublishReceipt | PublishError]:
        """Sends ``part`` (encoded as ``blocks``) through the sender: pipelined, with
        retries."""
        types = [message.message_type for message in part]
        jetstream = self._jetstream_ids
        return await self._sender.send_many(
            [message.id for message in part], blocks, [id(t) in jetstream for t in types], types
        )

    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        if self._closed:
            raise ClosedError("the publisher was closed")
        check_request(message.message_type, timeout, self.catalog)
        if self._validate:
            check_payload(message.message_type, message.payload)
        encoded = self._codec.encode(message)
        subject = encoded.subject
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if not await self.client.wait_connected(timeout):
                raise RequestTimeout(subject, timeout)
            reply = await self.client.connection.request(
                subject,
                encoded.body,
                timeout=max(0.001, deadline - loop.time()),
                headers=dict(encoded.headers),
            )
        except nats.errors.NoRespondersError:
            raise NoRespondersError(subject) from None
        except nats.errors.TimeoutError:
            raise RequestTimeout(subject, timeout) from None
        except nats.errors.MaxPayloadError:
            raise ValidationError(
                "payload", len(encoded.body), "exceeds the server's max_payload"
            ) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            raise ClosedError("the NATS connection is closed") from None
        except nats.errors.Error as exc:
            raise BusConnectionError(f"the request could not be sent: {exc}") from exc
        return decode_reply(self._codec, reply.headers, reply.data)

    async def close(self) -> None:
        self._closed = True


def decode_reply(codec: WireCodec, headers: Mapping[str, str] | None, body: bytes) -> Message:
    """Decodes a reply, which travels on an inbox rather than on its own subject.

    Raises:
        DecodeError: the reply is not a DelTran message.
    """
    if not headers or H_TYPE not in headers or H_PARTITION_KEY not in headers:
        raise DecodeError("headers", "the reply is not a DelTran message")
    try:
        prefix = MessageType.from_wire(headers[H_TYPE]).subject_prefix
    except KeyError:
        raise DecodeError(H_TYPE, f"unknown message type {headers[H_TYPE]!r}") from None
    return codec.decode(f"{prefix}.{headers[H_PARTITION_KEY]}", headers, body)


__all__ = ["JetStreamPublisher", "decode_reply"]
