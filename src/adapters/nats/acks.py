"""JetStream publish acknowledgements: parsed, and routed to their waiters on one inbox.

:class:`AckMux` awaits JetStream publish acknowledgements on one wildcard inbox per
connection (:func:`shared_ack_mux`). A reply resolves its waiter whatever it says
(PubAck, API error, 503 no responders), and every waiter has a deadline, so nothing
hangs (nats.py #985). :class:`AckBatch` collects the outcomes of a pipelined burst.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Sequence
from typing import Any

import msgspec
import nats.errors

from message_bus.domain.errors import ValidationError

from .client import ConnectionStatus, NatsClient
from .failures import MessageTooLarge
from .headers import headers_of
from .internals import Block, Writer, new_reply_prefix

_REPLY_PENDING_MSGS = 1024 * 1024
_REPLY_PENDING_BYTES = 256 * 1024 * 1024


class ApiErrorWire(msgspec.Struct):
    """The ``error`` object of a JetStream API response."""

    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAckWire(msgspec.Struct):
    """A JetStream publish acknowledgement, or its error."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiErrorWire | None = None


_ack_decoder = msgspec.json.Decoder(PubAckWire)

NO_RESPONDERS = PubAckWire(error=ApiErrorWire(code=503, description="no responders"))
"""Outcome: nothing answered the publish (no stream captures the subject, or its
leader is being elected)."""
TIMED_OUT = PubAckWire(error=ApiErrorWire(code=408, description="no acknowledgement in time"))
"""Outcome: the deadline passed without a reply."""
PERMISSION_DENIED = PubAckWire(error=ApiErrorWire(code=403, description="permission denied"))
"""Outcome: the server refused the publish (permissions violation)."""
CONNECTION_LOST = PubAckWire(error=ApiErrorWire(description="connection lost"))
"""Outcome: the connection the publish went out on was lost before its reply came; the
reply cannot come on it any more (a retry with the same id is deduplicated)."""


def parse_ack(data: bytes, block: bytes | None) -> PubAckWire:
    """Turns a reply to a JetStream publish into an outcome; never raises."""
    if not data:
        headers = headers_of(block) or {}
        status = headers.get("Status", "")
        if status == "503":
            return NO_RESPONDERS
        code = int(status) if status.isdigit() else 0
        description = headers.get("Description", "")
        return PubAckWire(error=ApiErrorWire(code=code, description=description))
    try:
        return _ack_decoder.decode(data)
    except msgspec.DecodeError as exc:
        return PubAckWire(error=ApiErrorWire(description=f"malformed acknowledgement: {exc}"))


def _expire(future: asyncio.Future[PubAckWire]) -> None:
    if not future.done():
        future.set_result(TIMED_OUT)


class AckBatch:
    """Outcomes of a pipelined burst of JetStream publishes, by input position.

    The sender queues chunks with :meth:`AckMux.send_chunk` and calls :meth:`wait`
    when its window is full; :meth:`wait` returns when the number of outstanding
    acknowledgements drops to ``low_water`` or the oldest chunk's deadline passes (then
    every overdue publish of it is resolved as :data:`TIMED_OUT`).
    """

    __slots__ = (
        "_event",
        "_mux",
        "blocks",
        "chunks",
        "low_water",
        "outcomes",
        "outstanding",
        "sent",
        "tokens",
    )

    def __init__(self, mux: AckMux, blocks: Sequence[Block], low_water: int) -> None:
        size = len(blocks)
        self._mux = mux
        self.blocks = blocks
        self.outcomes: list[PubAckWire | None] = [None] * size
        self.tokens: list[bytes] = [b""] * size
        self.sent: list[int] = []  # positions, in the order they were sent
        self.outstanding = 0
        self.low_water = low_water
        self._event = asyncio.Event()
        # (deadline, start, end): sent[start:end] went out together with this deadline
        self.chunks: collections.deque[tuple[float, int, int]] = collections.deque()

    def resolve(self, index: int, outcome: PubAckWire) -> None:
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            self.outstanding -= 1
            if self.outstanding <= self.low_water:
                self._event.set()

    def _expire_overdue(self, now: float) -> None:
        chunks, pending, outcomes = self.chunks, self._mux.pending, self.outcomes
        while chunks and chunks[0][0] <= now:
            _deadline, start, end = chunks.popleft()
            for index in self.sent[start:end]:
                if outcomes[index] is None and pending.pop(self.tokens[index], None) is not None:
                    self.resolve(index, TIMED_OUT)

    async def wait(self) -> None:
        """Waits until at most ``low_water`` acks are outstanding or a chunk is overdue."""
        loop = asyncio.get_running_loop()
        self._expire_overdue(loop.time())
        if self.outstanding <= self.low_water:
            return
        self._event.clear()
        timeout = self.chunks[0][0] - loop.time() if self.chunks else 0.0
        if timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    await self._event.wait()
            except TimeoutError:
                pass
        self._expire_overdue(loop.time())

    def abandon(self) -> None:
        """Forgets every outstanding publish (the caller was cancelled)."""
        pending = self._mux.pending
        for index in self.sent:
            pending.pop(self.tokens[index], None)
        self.chunks.clear()


class AckMux:
    """Routes JetStream publish acknowledgements to their waiters (see module doc)."""

    def __init__(self, client: NatsClient) -> None:
        self._client = client
        nc = client.connection
        self.writer = Writer(nc)
        prefix = new_reply_prefix(nc)
        self._subject = prefix + "*"
        self._prefix = prefix.encode()
        self._prefix_len = len(self._prefix)
        self.pending: dict[bytes, tuple[Any, Any]] = {}
        """Outstanding publishes: reply token -> (AckBatch, position) or (future, subject)."""
        self._counter = 0
        self._remove_listener = client.on_permission_denied(self._on_permission_denied)
        self._remove_status = client.on_status(self._on_status)

    async def start(self) -> None:
        await self._client.subscribe_raw(
            self._subject,
            self._on_reply,
            pending_msgs_limit=_REPLY_PENDING_MSGS,
            pending_bytes_limit=_REPLY_PENDING_BYTES,
        )

    def _token(self) -> bytes:
        self._counter += 1
        return b"%x" % self._counter

    def _on_reply(self, subject: bytes, reply: bytes, data: bytes, block: bytes | None) -> None:
        entry = self.pending.pop(subject[self._prefix_len :], None)
        if entry is None:
            return
        try:  # parse_ack's common case, inlined
            outcome = _ack_decoder.decode(data) if data else parse_ack(data, block)
        except msgspec.DecodeError:
            outcome = parse_ack(data, block)  # names what is malformed
        target, key = entry
        if target.__class__ is AckBatch:
            target.resolve(key, outcome)
        elif not target.done():
            target.set_result(outcome)

    def _on_permission_denied(self, subject: str) -> None:
        lowered = subject.lower()
        for token, (target, key) in list(self.pending.items()):
            entry_subject = target.blocks[key].subject if target.__class__ is AckBatch else key
            if entry_subject.lower() == lowered:
                del self.pending[token]
                if target.__class__ is AckBatch:
                    target.resolve(key, PERMISSION_DENIED)
                elif not target.done():
                    target.set_result(PERMISSION_DENIED)

    def _on_status(self, status: ConnectionStatus) -> None:
        """On a lost connection, resolves every outstanding publish as
        :data:`CONNECTION_LOST` at once, so it is retried on the next connection instead
        of waiting out its deadline for a reply that left with the old one."""
        if status is ConnectionStatus.CONNECTED or not self.pending:
            return
        entries = list(self.pending.values())
        self.pending.clear()
        for target, key in entries:
            if target.__class__ is AckBatch:
                target.resolve(key, CONNECTION_LOST)
            elif not target.done():
                target.set_result(CONNECTION_LOST)

    async def request(self, block: Block, timeout: float) -> PubAckWire:
        """Publishes one message to JetStream and waits for its outcome.

        Returns:
            The PubAck, the API error, :data:`NO_RESPONDERS`, :data:`TIMED_OUT` or
            :data:`PERMISSION_DENIED`.

        Raises:
            As :meth:`Writer.write` (nothing was sent).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PubAckWire] = loop.create_future()
        token = self._token()
        self.pending[token] = (future, block.subject)
        handle = loop.call_later(timeout, _expire, future)
        try:
            if self.writer.write(block, self._prefix + token):
                try:  # a stalled server must not hold the publish past its deadline
                    async with asyncio.timeout(timeout):
                        await self.writer.relieve()
                except TimeoutError:
                    return TIMED_OUT
            return await future
        finally:
            handle.cancel()
            self.pending.pop(token, None)

    def batch(self, blocks: Sequence[Block], low_water: int) -> AckBatch:
        """A new batch over ``blocks`` (positions index into it)."""
        return AckBatch(self, blocks, low_water)

    def send_chunk(
        self, batch: AckBatch, positions: Sequence[int], deadline: float
    ) -> list[tuple[int, Exception]]:
        """Queues the publishes of ``positions`` of ``batch``, each awaiting its ack
        until ``deadline``; returns the positions that were not sent, with why.

        Errors are :class:`ValidationError`, :class:`MessageTooLarge` or
        ``nats.errors.Error`` (see :meth:`Writer.write`).
        """
        pending, prefix, write = self.pending, self._prefix, self.writer.write
        blocks, tokens, sent = batch.blocks, batch.tokens, batch.sent
        start = len(sent)
        counter = self._counter
        failed: list[tuple[int, Exception]] = []
        for index in positions:
            counter += 1
            token = b"%x" % counter
            try:
                write(blocks[index], prefix + token)
            except (ValidationError, MessageTooLarge, nats.errors.Error) as exc:
                failed.append((index, exc))
                continue
            pending[token] = (batch, index)
            tokens[index] = token
            sent.append(index)
        self._counter = counter
        batch.outstanding += len(sent) - start
        batch.chunks.append((deadline, start, len(sent)))
        return failed


_muxes: weakref.WeakKeyDictionary[NatsClient, AckMux] = weakref.WeakKeyDictionary()
_starting: weakref.WeakKeyDictionary[NatsClient, asyncio.Lock] = weakref.WeakKeyDictionary()


async def shared_ack_mux(client: NatsClient) -> AckMux:
    """The acknowledgement multiplexer of ``client``'s connection, started on first use
    and shared by every publisher, dead-lettering subscriber and replay on it.

    Raises:
        ClosedError, BusConnectionError: the client is not connected.
        nats.errors.Error: the reply inbox could not be subscribed.
    """
    mux = _muxes.get(client)
    if mux is not None:
        return mux
    lock = _starting.setdefault(client, asyncio.Lock())
    async with lock:
        mux = _muxes.get(client)
        if mux is None:
            mux = AckMux(client)
            await mux.start()
            _muxes[client] = mux
        return mux


__all__ = [
    "CONNECTION_LOST",
    "NO_RESPONDERS",
    "PERMISSION_DENIED",
    "TIMED_OUT",
    "AckBatch",
    "AckMux",
    "ApiErrorWire",
    "PubAckWire",
    "parse_ack",
    "shared_ack_mux",
]
