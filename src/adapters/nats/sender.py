"""Sending encoded messages to NATS with retries: the one send path of the adapter.

A JetStream publish, a core publish, a pipelined batch, a dead letter and a replay all
go through :class:`Sender`; what NATS refused is turned into a :class:`PublishError`
by :func:`~.failures.publish_failure` (writes) and by the sender's reading of JetStream's
replies (stream full, no stream, permission denied, ...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import (
    BusConnectionError,
    ClosedError,
    PublishError,
    PublishFailure,
    PublishTimeout,
)
from message_bus.ports.config import PublisherConfig
from message_bus.ports.publisher import PublishReceipt

from .acks import (
    CONNECTION_LOST,
    NO_RESPONDERS,
    PERMISSION_DENIED,
    TIMED_OUT,
    AckMux,
    PubAckWire,
    shared_ack_mux,
)
from .client import NatsClient
from .failures import WRITE_ERRORS, answered, publish_failure
from .framing import EncodedBlock
from .internals import Writer

log = logging.getLogger("message_bus.nats.publisher")

_STREAM_FULL = 10077
"""JSStreamStoreFailedF: with "maximum messages/bytes exceeded", a stream at its limit
with discard=new refusing a message (code 503, which alone would read as transient)."""
_FULL_ELSEWHERE = frozenset({10023, 10047, 10002})
"""JetStream's storage is used up, not the stream's limit: 10023 "insufficient resources"
(the server's ``max_file_store``/``max_memory_store``; code 503), 10047 "insufficient
storage resources available", 10002 "resource limits exceeded for account". A retry
cannot be stored either, so these are ``stream_full`` too, not a transient to retry."""
_MESSAGE_TOO_LARGE = 10054
_IN_PROCESS = 10158
"""A retry found the first copy of its id still being stored (not yet committed)."""
_LOOKUP_TIMEOUT = 1.0
_MIN_REFUSED_DELAY = 0.005
"""Seconds at least between two attempts that were refused at once (a bound on the loop)."""
_WAITED_OUT = 0.95
"""Share of its time an attempt must have used to count as one that waited (a timer may
fire a hair early)."""


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


class Sender:
    """Publishes encoded messages with retries; shared by publishers, dead-lettering and
    replays (see :class:`~.publisher.JetStreamPublisher` for the retry rules)."""

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
        """The connection's acknowledgement multiplexer."""
        mux = self._mux
        if mux is None:
            mux = self._mux = await shared_ack_mux(self.client)
        return mux

    def live_writer(self) -> Writer | None:
        """The writer of the connection if it is up (and not draining) now, else None."""
        nc = self.client.live_connection
        if nc is None:
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
        *,
        jetstream: bool,
        message_type: MessageType | None,
        deadline: float | None = None,
    ) -> PublishReceipt:
        """Publishes ``block`` with retries within ``publish_timeout`` (or until
        ``deadline``, an event-loop time, when the caller's budget started earlier);
        raises the last error."""
        if not jetstream and self.client.is_connected:  # the core hot path: one write
            first = await self._write_core(message_id, block)
            if isinstance(first, PublishReceipt):
                return first
            if not first.retryable:
                raise first
        loop = asyncio.get_running_loop()
        config = self.config
        attempts = config.max_retry_attempts
        if deadline is None:
            deadline = loop.time() + config.publish_timeout
        attempt = 1  # every attempt, as reported to on_retry
        waited = 0  # attempts that waited their share of the deadline out
        lookups: dict[str, bool | None] = {}  # asked once per publish, not per attempt
        while True:
            timeout = (deadline - loop.time()) / (attempts - waited)
            began = loop.time()
            if jetstream:
                outcome = await self._attempt_jetstream(message_id, block, timeout, lookups)
            else:
                outcome = await self._attempt_core(message_id, block, timeout)
            if isinstance(outcome, PublishReceipt):
                return outcome
            error = outcome
            now = loop.time()
            remaining = deadline - now
            if not error.retryable or remaining <= 0:
                raise error
            if isinstance(error, PublishTimeout) or now - began >= timeout * _WAITED_OUT:
                waited += 1
                if waited >= attempts:
                    raise error
                delay = random.uniform(0.0, config.retry_delay(waited))
            else:  # refused at once while the cluster recovers: keep the attempt, and
                # ask again at the first delay's pace, to follow the recovery closely
                delay = max(_MIN_REFUSED_DELAY, random.uniform(0.0, config.initial_retry_delay))
            delay = min(delay, remaining * 0.5)
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
        self,
        message_id: str,
        block: EncodedBlock,
        timeout: float,
        lookups: dict[str, bool | None],
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
        except WRITE_ERRORS as exc:
            return publish_failure(message_id, subject, exc)
        if ack.error is None:
            if ack.seq > 0 and ack.stream:
                return PublishReceipt(
                    message_id, subject, ack.stream, ack.seq, ack.duplicate, block.partition
                )
            return _not_a_puback(message_id, subject, ack)
        return await self._classify(message_id, subject, ack, lookups)

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
        except WRITE_ERRORS as exc:
            return publish_failure(message_id, subject, exc)
        return PublishReceipt(message_id, subject, None, None, False, block.partition)

    async def _await_connection(
        self, message_id: str, subject: str, timeout: float
    ) -> PublishError | None:
        try:
            if await self.client.wait_connected(timeout):
                return None
        except ClosedError:
            return publish_failure(message_id, subject, ClosedError("client closed"))
        return publish_failure(message_id, subject, BusConnectionError("NATS is unreachable"))

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
        if ack is CONNECTION_LOST:
            return PublishError(
                message_id, subject, PublishFailure.DISCONNECTED, retryable=True,
                detail="the connection was lost before JetStream acknowledged the publish",
            )  # fmt: skip
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
        full = error.err_code == _STREAM_FULL and "maximum" in error.description
        if full or error.err_code in _FULL_ELSEWHERE:
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
        if error.err_code == _IN_PROCESS:  # its outcome is coming: ask again
            return PublishError(
                message_id, subject, PublishFailure.UNAVAILABLE, retryable=True, detail=detail
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
        loop = asyncio.get_running_loop()
        config = self.config
        attempts = config.max_retry_attempts
        deadline = loop.time() + config.publish_timeout
        attempt = 1
        waited = 0  # rounds in which a publish waited (timed out or found no connection)
        lookups: dict[str, bool | None] = {}  # asked once per subject and batch
        todo = list(range(count))
        while True:
            timeout = (deadline - loop.time()) / (attempts - waited)
            js_todo = [i for i in todo if jetstream[i]]
            core_todo = [i for i in todo if not jetstream[i]]
            down: PublishError | None = None  # no connection this round: the rest fail alike
            for i in core_todo:
                if down is not None:
                    results[i] = _alike(down, ids[i], blocks[i].subject)
                    continue
                outcome = await self._attempt_core(ids[i], blocks[i], timeout)
                results[i] = outcome
                if isinstance(outcome, PublishError) and not self.client.is_connected:
                    down = outcome
            if js_todo:
                await self._pipeline(js_todo, ids, blocks, results, timeout, lookups)
            failed: list[PublishError] = []
            retry: list[int] = []
            for i in todo:
                result = results[i]
                if isinstance(result, PublishError) and result.retryable:
                    failed.append(result)
                    retry.append(i)
            todo = retry
            if attempt == 1:  # a large batch's first round may outlast the deadline:
                # its retries still get their share of the time
                share = config.publish_timeout * (attempts - 1) / attempts
                deadline = max(deadline, loop.time() + share)
            remaining = deadline - loop.time()
            if not todo or remaining <= 0:
                break
            if all(answered(error) for error in failed):  # refused at once: keep the attempt
                delay = max(_MIN_REFUSED_DELAY, random.uniform(0.0, config.initial_retry_delay))
            else:
                waited += 1
                if waited >= attempts:
                    break
                delay = random.uniform(0.0, config.retry_delay(waited))
            delay = min(delay, remaining * 0.5)
            if self.on_retry is not None:
                for i, error in zip(todo, failed, strict=True):
                    self._report_retry(ids[i], blocks[i].subject, types[i], attempt, delay, error)
            await asyncio.sleep(delay)
            attempt += 1
        return results  # type: ignore[return-value]  # every position was set

    async def _pipeline(
        self,
        todo: list[int],
        ids: Sequence[str],
        blocks: Sequence[EncodedBlock],
        results: list[PublishReceipt | PublishError | None],
        timeout: float,
        lookups: dict[str, bool | None],
    ) -> None:
        loop = asyncio.get_running_loop()
        client = self.client
        try:
            mux = self._mux or await self.mux()
        except WRITE_ERRORS as unusable:
            for i in todo:
                results[i] = publish_failure(ids[i], blocks[i].subject, unusable)
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
                            results[j] = _alike(failure, ids[j], blocks[j].subject)
                        break
                chunk = todo[done : done + window - batch.outstanding]
                done += len(chunk)
                for i, exc in mux.send_chunk(batch, chunk, loop.time() + timeout):
                    results[i] = publish_failure(ids[i], blocks[i].subject, exc)
                writer.kick()
                await writer.relieve()
            batch.low_water = 0
            while batch.outstanding > 0:
                await batch.wait()
        except BaseException:
            batch.abandon()
            raise
        outcomes = batch.outcomes
        streams: dict[str, str] = {}  # one copy of each stream's name for the receipts
        for i in batch.sent:
            ack = outcomes[i]
            assert ack is not None
            if ack.error is None and ack.seq > 0 and ack.stream:
                stream = streams.setdefault(ack.stream, ack.stream)
                results[i] = PublishReceipt(
                    ids[i], blocks[i].subject, stream, ack.seq, ack.duplicate,
                    blocks[i].partition,
                )  # fmt: skip
            elif ack.error is None:
                results[i] = _not_a_puback(ids[i], blocks[i].subject, ack)
            else:
                results[i] = await self._classify(ids[i], blocks[i].subject, ack, lookups)


def _alike(failure: PublishError, message_id: str, subject: str) -> PublishError:
    """``failure``, for another message of the batch that failed for the same reason."""
    return PublishError(
        message_id, subject, failure.reason, retryable=failure.retryable, detail=failure.detail
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


__all__ = ["RetryEvent", "RetryHook", "Sender"]
