"""The JetStream publisher: acked publishes, retries, a circuit breaker, pipelined batches."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client

from message_bus.domain.catalog import MessageType, StreamCatalog
from message_bus.domain.codec import (
    H_MSG_ID,
    H_PARTITION,
    H_PARTITION_KEY,
    H_TYPE,
    Encoded,
    EncodedBlock,
    WireCodec,
)
from message_bus.domain.errors import (
    BusConnectionError,
    CircuitOpenError,
    ClosedError,
    DecodeError,
    NoRespondersError,
    PublishBatchError,
    PublishError,
    PublishFailure,
    PublishTimeout,
    RequestTimeout,
    ValidationError,
)
from message_bus.domain.message import Message
from message_bus.ports.config import PublisherConfig
from message_bus.ports.publisher import Publisher, PublishReceipt

from ._wire import (
    NO_RESPONDERS,
    PERMISSION_DENIED,
    TIMED_OUT,
    AckMux,
    MessageTooLarge,
    PubAckWire,
    Writer,
    header_block,
)
from .client import NatsClient

log = logging.getLogger("message_bus.nats.publisher")

_CLOSED = "closed"  # CircuitBreaker.CLOSED
_STREAM_FULL = 10077
_MESSAGE_TOO_LARGE = 10054
_LOOKUP_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One publish about to be retried (given to the ``on_retry`` hook).

    Attributes:
        message_id: The message's id (the retry reuses it).
        subject: Its subject.
        message_type: Its type, when known.
        attempt: The attempt that failed (1-based).
        delay: Seconds until the next attempt.
        error: Why the attempt failed.
    """

    message_id: str
    subject: str
    message_type: MessageType | None
    attempt: int
    delay: float
    error: PublishError


RetryHook = Callable[[RetryEvent], None]


class CircuitBreaker:
    """Fails fast after ``threshold`` consecutive failed publishes, for ``cooldown`` s.

    Closed: everything passes. Open: everything fails with the remaining cooldown.
    After the cooldown it is half-open: one probe passes, every other call still fails
    fast; the probe's success closes it, its failure opens it again. Only failures
    that say the broker is unavailable count (timeouts, disconnects, no responders);
    a rejection such as "stream full" proves the broker is up and counts as success.
    ``threshold == 0`` disables the breaker.
    """

    CLOSED = _CLOSED
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._state = self.CLOSED
        self._probing = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (open turns half-open lazily)."""
        if self._state == self.OPEN and self._clock() >= self._opened_at + self.cooldown:
            return self.HALF_OPEN
        return self._state

    def before(self) -> float | None:
        """None if a call may proceed, else the seconds until the breaker lets one through."""
        if self._state == self.CLOSED:
            return None
        if self._state == self.OPEN:
            remaining = self._opened_at + self.cooldown - self._clock()
            if remaining > 0:
                return remaining
            self._state = self.HALF_OPEN
        if self._probing:
            return self.cooldown or 0.001
        self._probing = True
        return None

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        self._state = self.CLOSED

    def failure(self) -> None:
        self._failures += 1
        probe_failed = self._state == self.HALF_OPEN
        self._probing = False
        if probe_failed or (
            self._state == self.CLOSED and self.threshold and self._failures >= self.threshold
        ):
            if self._state != self.OPEN:
                log.warning("circuit breaker open for %.1fs", self.cooldown)
            self._state = self.OPEN
            self._opened_at = self._clock()

    def release(self) -> None:
        """The call ended without an outcome (cancelled): let another probe through."""
        self._probing = False


def _counts_as_outage(error: PublishError) -> bool:
    """Whether a failed publish says the broker is unavailable (a breaker failure)."""
    return error.retryable or error.reason is PublishFailure.CONNECTION_CLOSED


class _Sender:
    """Publishes encoded messages with retries; shared by publishers and dead-lettering."""

    def __init__(
        self,
        client: NatsClient,
        config: PublisherConfig,
        on_retry: RetryHook | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.on_retry = on_retry
        self._mux: AckMux | None = None
        self._writer: Writer | None = None
        self._writer_of: Client | None = None

    async def mux(self) -> AckMux:
        mux = self._mux
        if mux is None:
            mux = self._mux = await self.client.ack_mux()
        return mux

    def live_writer(self) -> Writer | None:
        """The writer of the connection if it is up (and not draining) now, else None."""
        nc = self.client._nc
        if nc is None or nc._status != Client.CONNECTED:
            return None
        writer = self._writer
        if writer is None or self._writer_of is not nc:
            writer = self._writer = Writer(nc)
            self._writer_of = nc
        return writer

    def writer(self) -> Writer:
        """The writer of the current connection."""
        nc = self.client.connection
        writer = self._writer
        if writer is None or self._writer_of is not nc:
            writer = self._writer = Writer(nc)
            self._writer_of = nc
        return writer

    # -- one message -----------------------------------------------------------------------

    async def send(
        self,
        message_id: str,
        block: EncodedBlock,
        jetstream: bool,
        message_type: MessageType | None,
    ) -> PublishReceipt:
        """Publishes ``block`` with retries within ``publish_timeout``; raises the last error."""
        if not jetstream and self.client.is_connected:  # the core hot path: one write
            first = await self._write_core(message_id, block)
            if isinstance(first, PublishReceipt):
                return first
            if not first.retryable:
                raise first
        loop = asyncio.get_running_loop()
        config = self.config
        attempts = config.max_retry_attempts
        deadline = loop.time() + config.publish_timeout
        attempt = 1
        while True:
            timeout = (deadline - loop.time()) / (attempts - attempt + 1)
            if jetstream:
                outcome = await self._attempt_jetstream(message_id, block, timeout)
            else:
                outcome = await self._attempt_core(message_id, block, timeout)
            if isinstance(outcome, PublishReceipt):
                return outcome
            error = outcome
            remaining = deadline - loop.time()
            if not error.retryable or attempt >= attempts or remaining <= 0:
                raise error
            delay = min(random.uniform(0.0, config.retry_delay(attempt)), remaining * 0.5)
            if self.on_retry is not None:
                self._report_retry(message_id, block.subject, message_type, attempt, delay, error)
            await asyncio.sleep(delay)
            attempt += 1

    def _report_retry(
        self,
        message_id: str,
        subject: str,
        message_type: MessageType | None,
        attempt: int,
        delay: float,
        error: PublishError,
    ) -> None:
        assert self.on_retry is not None
        try:
            self.on_retry(RetryEvent(message_id, subject, message_type, attempt, delay, error))
        except Exception:  # a broken hook must not break publishing
            log.exception("on_retry hook failed")

    async def _attempt_jetstream(
        self, message_id: str, block: EncodedBlock, timeout: float
    ) -> PublishReceipt | PublishError:
        subject = block.subject
        client = self.client
        if not client.is_connected:
            failure = await self._await_connection(message_id, subject, timeout)
            if failure is not None:
                return failure
        try:
            mux = self._mux or await self.mux()
            ack = await mux.request(block, timeout)
        except MessageTooLarge as exc:
            return PublishError(
                message_id,
                subject,
                PublishFailure.MESSAGE_TOO_LARGE,
                retryable=False,
                detail=str(exc),
            )
        except ValidationError as exc:
            return PublishError(
                message_id, subject, PublishFailure.INVALID, retryable=False, detail=str(exc)
            )
        except (nats.errors.Error, ClosedError, BusConnectionError) as exc:
            return _connection_failure(message_id, subject, exc)
        if ack.error is None:
            if ack.seq > 0 and ack.stream:
                return PublishReceipt(
                    message_id, subject, ack.stream, ack.seq, ack.duplicate, block.partition
                )
            return _not_a_puback(message_id, subject, ack)
        return await self._classify(message_id, subject, ack, {})

    async def _attempt_core(
        self, message_id: str, block: EncodedBlock, timeout: float
    ) -> PublishReceipt | PublishError:
        if not self.client.is_connected:
            failure = await self._await_connection(message_id, block.subject, timeout)
            if failure is not None:
                return failure
        return await self._write_core(message_id, block)

    async def _write_core(
        self, message_id: str, block: EncodedBlock
    ) -> PublishReceipt | PublishError:
        subject = block.subject
        try:
            writer = self.writer()
            if writer.write(block):
                await writer.relieve()
        except MessageTooLarge as exc:
            return PublishError(
                message_id,
                subject,
                PublishFailure.MESSAGE_TOO_LARGE,
                retryable=False,
                detail=str(exc),
            )
        except ValidationError as exc:
            return PublishError(
                message_id, subject, PublishFailure.INVALID, retryable=False, detail=str(exc)
            )
        except (nats.errors.Error, ClosedError, BusConnectionError) as exc:
            return _connection_failure(message_id, subject, exc)
        return PublishReceipt(message_id, subject, None, None, False, block.partition)

    async def _await_connection(
        self, message_id: str, subject: str, timeout: float
    ) -> PublishError | None:
        try:
            if await self.client.wait_connected(timeout):
                return None
        except ClosedError:
            return PublishError(
                message_id,
                subject,
                PublishFailure.CONNECTION_CLOSED,
                retryable=False,
                detail="client closed",
            )
        return PublishError(
            message_id,
            subject,
            PublishFailure.DISCONNECTED,
            retryable=True,
            detail="NATS is unreachable",
        )

    async def _classify(
        self,
        message_id: str,
        subject: str,
        ack: PubAckWire,
        lookups: dict[str, bool | None],
    ) -> PublishError:
        """The bus error for a publish outcome that is not a PubAck."""
        if ack is TIMED_OUT:
            return PublishTimeout(message_id, subject, "no acknowledgement from JetStream")
        if ack is PERMISSION_DENIED:
            return PublishError(
                message_id, subject, PublishFailure.PERMISSION_DENIED, retryable=False,
                detail="the server refused publishing to this subject",
            )  # fmt: skip
        if ack is NO_RESPONDERS:
            if subject not in lookups:
                lookups[subject] = await self._stream_exists(subject)
            if lookups[subject] is False:
                return PublishError(
                    message_id, subject, PublishFailure.NO_STREAM, retryable=False,
                    detail="no stream captures this subject; apply the stream catalog",
                )  # fmt: skip
            return PublishError(
                message_id, subject, PublishFailure.NO_RESPONDERS, retryable=True,
                detail="the stream did not answer (leader election?)",
            )  # fmt: skip
        error = ack.error
        assert error is not None
        detail = f"{error.code}/{error.err_code}: {error.description}"
        if error.err_code == _STREAM_FULL and "maximum" in error.description:
            return PublishError(
                message_id, subject, PublishFailure.STREAM_FULL, retryable=False, detail=detail
            )
        if error.err_code == _MESSAGE_TOO_LARGE:
            return PublishError(
                message_id,
                subject,
                PublishFailure.MESSAGE_TOO_LARGE,
                retryable=False,
                detail=detail,
            )
        if error.code in (503, 408, 500) or error.code == 0:
            return PublishError(
                message_id, subject, PublishFailure.UNAVAILABLE, retryable=True, detail=detail
            )
        return PublishError(
            message_id, subject, PublishFailure.REJECTED, retryable=False, detail=detail
        )

    async def _stream_exists(self, subject: str) -> bool | None:
        """Whether some stream captures ``subject``; None if JetStream did not say."""
        request = json.dumps({"subject": subject}).encode()
        try:
            reply = await self.client.connection.request(
                "$JS.API.STREAM.NAMES", request, timeout=_LOOKUP_TIMEOUT
            )
            answer = json.loads(reply.data)
        except (nats.errors.Error, ValueError, TimeoutError):
            return None
        if not isinstance(answer, dict) or "error" in answer:
            return None
        return bool(answer.get("streams"))

    # -- a batch ------------------------------------------------------------------------------

    async def send_many(
        self,
        ids: Sequence[str],
        blocks: Sequence[EncodedBlock],
        jetstream: Sequence[bool],
        types: Sequence[MessageType | None],
    ) -> list[PublishReceipt | PublishError]:
        """Publishes a batch, pipelined; returns a receipt or error per input position."""
        count = len(blocks)
        results: list[PublishReceipt | PublishError | None] = [None] * count
        config = self.config
        attempts = config.max_retry_attempts
        attempt_timeout = config.publish_timeout / attempts
        todo = list(range(count))
        for attempt in range(1, attempts + 1):
            js_todo = [i for i in todo if jetstream[i]]
            core_todo = [i for i in todo if not jetstream[i]]
            for i in core_todo:
                results[i] = await self._attempt_core(ids[i], blocks[i], attempt_timeout)
            if js_todo:
                await self._pipeline(js_todo, ids, blocks, results, attempt_timeout)
            todo = [
                i
                for i in todo
                if isinstance(results[i], PublishError) and results[i].retryable  # type: ignore[union-attr]
            ]
            if not todo or attempt == attempts:
                break
            delay = random.uniform(0.0, config.retry_delay(attempt))
            if self.on_retry is not None:
                for i in todo:
                    error = results[i]
                    assert isinstance(error, PublishError)
                    self._report_retry(ids[i], blocks[i].subject, types[i], attempt, delay, error)
            await asyncio.sleep(delay)
        return results  # type: ignore[return-value]  # every position was set

    async def _pipeline(
        self,
        todo: list[int],
        ids: Sequence[str],
        blocks: Sequence[EncodedBlock],
        results: list[PublishReceipt | PublishError | None],
        timeout: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        client = self.client
        try:
            mux = self._mux or await self.mux()
        except (nats.errors.Error, ClosedError, BusConnectionError) as unusable:
            for i in todo:
                results[i] = _connection_failure(ids[i], blocks[i].subject, unusable)
            return
        writer = mux.writer
        window = self.config.max_in_flight
        batch = mux.batch(blocks, low_water=window * 3 // 4)
        done = 0
        try:
            while done < len(todo):
                if batch.outstanding >= window:
                    await batch.wait()
                if not client.is_connected:
                    first = todo[done]
                    subject = blocks[first].subject
                    failure = await self._await_connection(ids[first], subject, timeout)
                    if failure is not None:
                        for j in todo[done:]:
                            results[j] = PublishError(
                                ids[j], blocks[j].subject, failure.reason,
                                retryable=failure.retryable, detail=failure.detail,
                            )  # fmt: skip
                        break
                chunk = todo[done : done + window - batch.outstanding]
                done += len(chunk)
                for i, exc in mux.send_chunk(batch, chunk, loop.time() + timeout):
                    results[i] = _write_failure(ids[i], blocks[i].subject, exc)
                writer.kick()
                await writer.relieve()
            batch.low_water = 0
            while batch.outstanding > 0:
                await batch.wait()
        except BaseException:
            batch.abandon()
            raise
        outcomes = batch.outcomes
        lookups: dict[str, bool | None] = {}
        for i in batch.sent:
            ack = outcomes[i]
            assert ack is not None
            if ack.error is None and ack.seq > 0 and ack.stream:
                results[i] = PublishReceipt(
                    ids[i], blocks[i].subject, ack.stream, ack.seq, ack.duplicate,
                    blocks[i].partition,
                )  # fmt: skip
            elif ack.error is None:
                results[i] = _not_a_puback(ids[i], blocks[i].subject, ack)
            else:
                results[i] = await self._classify(ids[i], blocks[i].subject, ack, lookups)


def _write_failure(message_id: str, subject: str, error: Exception) -> PublishError:
    """The bus error for a publish that could not be queued."""
    if isinstance(error, MessageTooLarge):
        return PublishError(
            message_id,
            subject,
            PublishFailure.MESSAGE_TOO_LARGE,
            retryable=False,
            detail=str(error),
        )
    if isinstance(error, nats.errors.Error):
        return _connection_failure(message_id, subject, error)
    return PublishError(
        message_id, subject, PublishFailure.INVALID, retryable=False, detail=str(error)
    )


def block_of(encoded: Encoded, partition: int | None = None) -> EncodedBlock:
    """``encoded`` with its headers serialized, for the receipt's ``partition``.

    Raises:
        ValidationError: a header name or value holds CR, LF or NUL.
    """
    return EncodedBlock(encoded.subject, header_block(encoded.headers), encoded.body, partition)


def _connection_failure(message_id: str, subject: str, error: Exception) -> PublishError:
    """The bus error for a publish the connection refused (closed, draining, down)."""
    if isinstance(error, nats.errors.ConnectionClosedError | ClosedError):
        return PublishError(
            message_id,
            subject,
            PublishFailure.CONNECTION_CLOSED,
            retryable=False,
            detail=str(error),
        )
    if isinstance(error, nats.errors.ConnectionDrainingError):
        return PublishError(
            message_id,
            subject,
            PublishFailure.CONNECTION_DRAINING,
            retryable=False,
            detail=str(error),
        )
    return PublishError(
        message_id, subject, PublishFailure.DISCONNECTED, retryable=True, detail=str(error)
    )


def _not_a_puback(message_id: str, subject: str, ack: PubAckWire) -> PublishError:
    """A reply without an error that names no stream and sequence: something other than
    a stream answered the publish, so nothing says the message was stored."""
    return PublishError(
        message_id, subject, PublishFailure.NOT_A_PUBACK, retryable=False,
        detail=(
            f"the reply (stream {ack.stream!r}, seq {ack.seq}) is not a JetStream "
            "acknowledgement: something other than a stream answers on this subject"
        ),
    )  # fmt: skip


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
    * Retries: up to ``max_retry_attempts`` attempts within ``publish_timeout`` (each
      attempt gets an equal share of the remaining time), with exponential backoff
      and full jitter, only for failures that may pass: timeout, disconnected, no
      responders while the stream's leader is elected (503). Not retried, raised at
      once: stream full, message too large, permission denied, no stream for the
      subject (``PublishError.reason``: ``stream_full``, ``message_too_large``,
      ``permission_denied``, ``no_stream``).
    * A :class:`CircuitBreaker` fails fast (:class:`CircuitOpenError`) after
      ``circuit_breaker_threshold`` consecutive failed publishes.
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
        self._codec = WireCodec(self.config.partitions)
        self._sender = _Sender(client, self.config, on_retry)
        self.breaker = CircuitBreaker(
            self.config.circuit_breaker_threshold, self.config.circuit_breaker_cooldown
        )
        use_jetstream = self.config.use_jetstream
        self._jetstream: Mapping[MessageType, bool] = {
            t: use_jetstream and self.catalog.stream_for(t) is not None for t in MessageType
        }
        # ids of the members (enum members hash in Python; ints in C)
        self._core_types = frozenset(id(t) for t, js in self._jetstream.items() if not js)
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
        block = self._codec.encode_block(message)
        breaker = self.breaker
        if breaker._state != _CLOSED:  # before() lets a call through while closed
            retry_after = breaker.before()
            if retry_after is not None:
                raise CircuitOpenError(message.id, block.subject, retry_after)
        jetstream = id(message.message_type) not in self._core_types
        if not jetstream:  # the core hot path: append to the connection's buffer
            writer = self._sender.live_writer()
            if writer is not None:
                try:
                    over_limit = writer.write(block)
                except (MessageTooLarge, ValidationError, nats.errors.Error):
                    pass  # nothing was queued; the general path below reports it
                else:
                    if over_limit:
                        await writer.relieve()
                    if breaker._failures or breaker._state != _CLOSED:
                        breaker.success()
                    return PublishReceipt(
                        message.id, block.subject, None, None, False, block.partition
                    )
        try:
            receipt = await self._sender.send(message.id, block, jetstream, message.message_type)
        except PublishError as exc:
            if breaker.threshold:
                if _counts_as_outage(exc):
                    breaker.failure()
                else:
                    breaker.success()
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.success()
        return receipt

    async def publish_many(self, messages: Sequence[Message]) -> list[PublishReceipt]:
        if self._closed:
            raise ClosedError("the publisher was closed")
        encode = self._codec.encode_block
        blocks = [encode(message) for message in messages]
        if not blocks:
            return []
        ids = [message.id for message in messages]
        breaker = self.breaker
        if breaker.threshold:
            retry_after = breaker.before()
            if retry_after is not None:
                pairs = zip(ids, blocks, strict=True)
                raise PublishBatchError(
                    [CircuitOpenError(i, b.subject, retry_after) for i, b in pairs]
                )
        types = [message.message_type for message in messages]
        jetstream = self._jetstream
        try:
            results = await self._sender.send_many(
                ids, blocks, [jetstream[t] for t in types], types
            )
        except BaseException:
            breaker.release()
            raise
        errors = [r for r in results if isinstance(r, PublishError)]
        if breaker.threshold:
            if len(errors) < len(results) or not all(_counts_as_outage(e) for e in errors):
                breaker.success()
            else:
                for _ in errors:
                    breaker.failure()
        if errors:
            raise PublishBatchError(list(results))
        return results  # type: ignore[return-value]  # no errors in it

    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        if self._closed:
            raise ClosedError("the publisher was closed")
        if self._jetstream[message.message_type]:
            raise ValidationError(
                "message_type",
                message.message_type,
                "is stream-backed; request-reply needs a core-only type "
                "(RiskAssessment, ComplianceCheck, SystemEvent)",
            )
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


def receipt_partition(headers: Mapping[str, str]) -> int | None:
    """The partition number written in ``headers``, if any."""
    text = headers.get(H_PARTITION)
    return int(text) if text is not None and text.isdigit() else None


def message_id_of(headers: Mapping[str, str]) -> str:
    """The ``Nats-Msg-Id`` of ``headers`` (empty if missing)."""
    return headers.get(H_MSG_ID, "")


__all__ = ["CircuitBreaker", "JetStreamPublisher", "RetryEvent", "RetryHook", "decode_reply"]
