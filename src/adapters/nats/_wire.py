"""Low-level NATS plumbing shared by the publisher, subscriber and dead-letter reader.

The hot paths bypass nats-py's per-message machinery, through a few of its internals
(checked when a :class:`Writer` is built; nats-py is pinned below 3):

* Raw routes: messages of a subscription made with :meth:`NatsClient.subscribe_raw`
  are handed to a plain function as the connection's parser (``client._Parser``) reads
  them (subject, reply, payload, raw header block), without a ``Msg``, a header dict,
  a queue or a task.
* :class:`Writer` appends ready-made ``PUB``/``HPUB`` commands to nats-py's outgoing
  buffer and wakes nats-py's flusher once per burst (at the end of the current event
  loop step) instead of once per message. Header blocks come from
  :meth:`WireCodec.encode_block` or :func:`header_block`, which guarantee they cannot
  corrupt the protocol stream; subjects are checked once each.
* :class:`AckMux` awaits JetStream publish acknowledgements on one wildcard inbox per
  connection. A reply resolves its waiter whatever it says (PubAck, API error, 503 no
  responders), and every waiter has a deadline, so nothing hangs (nats.py #985).
* :func:`ordered_flush` is a flush whose PONG proves the server processed everything
  queued before it (nats-py's own ``flush`` writes its PING ahead of the buffer).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import nats.errors
from nats.aio.client import Client

from message_bus.domain.errors import ValidationError

if TYPE_CHECKING:
    from .client import NatsClient

log = logging.getLogger("message_bus.nats")

_BAD_SUBJECT = re.compile(r"[\s\x00]")
_HEADER_NAME_SPACE = re.compile(r"[\s\x1c-\x1f]")  # what str.isspace() matches in ASCII
_SAFE_SUBJECTS_MAX = 65536
_REPLY_PENDING_MSGS = 1024 * 1024
_REPLY_PENDING_BYTES = 256 * 1024 * 1024
_CONNECTED = Client.CONNECTED
_INTERNALS = (
    "_transport",
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_max_payload",
    "_flush_queue",
    "_flusher_task",
    "_flush_pending",
    "_status",
    "stats",
)

RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
"""Receives (subject, reply, payload, header block or None) of each message of a raw
route, on the event loop, as nats-py's parser reads it; must not block."""


class MessageTooLarge(Exception):
    """The encoded message exceeds the server's ``max_payload``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{size} bytes exceed the server's max_payload of {limit} bytes")


class Block(Protocol):
    """What :class:`Writer` sends: a subject, a serialized header block and a body."""

    @property
    def subject(self) -> str: ...
    @property
    def header_block(self) -> bytes: ...
    @property
    def body(self) -> bytes: ...


def header_block(headers: Mapping[str, str]) -> bytes:
    """The ``NATS/1.0`` header block of ``headers``.

    Raises:
        ValidationError: a name or value holds CR, LF or NUL (it would corrupt the
            protocol stream).
    """
    text = "NATS/1.0\r\n" + "".join([f"{k}: {v}\r\n" for k, v in headers.items()]) + "\r\n"
    lines = len(headers) + 2
    if text.count("\n") != lines or text.count("\r") != lines or "\x00" in text:
        raise ValidationError("headers", dict(headers), "names and values must not hold CR/LF/NUL")
    return text.encode()


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: value`` lines as ``nats.aio.client.Client._parse_header_lines`` parses
    them (the unit tests check it): names ASCII without whitespace, values stripped and
    decoded as UTF-8 with replacement; other lines skipped."""
    headers: dict[str, str] = {}
    space = _HEADER_NAME_SPACE.search
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if space(key) is None:
            headers[key] = value.strip().decode("utf-8", "replace")
    return headers


def headers_of(block: bytes | None) -> dict[str, str] | None:
    """The headers nats-py would give a ``Msg`` with this raw header block.

    An inline status (``NATS/1.0 408 Request Timeout``) becomes ``Status`` and
    ``Description`` entries.
    """
    if not block or len(block) <= 8:
        return None
    headers: dict[str, str] = {}
    rest = block[8:]
    if rest[:1] == b" ":
        line = block[9:]
        status = line[:3].strip().decode("ascii", "replace")
        description = line[4 : len(line) - 4]
        if status.isdigit():
            headers["Status"] = status
        rest = rest[rest.find(b"\r\n") + 2 :]
        if description:
            cut = description.find(b"\r\n")
            if cut > 0:
                headers["Description"] = description[:cut].decode("utf-8", "replace")
                headers.update(parse_header_lines(description[cut + 2 :]))
            else:
                headers["Description"] = description.decode("utf-8", "replace")
    if len(rest) > 2:
        headers.update(parse_header_lines(block[10:]))
    return headers or None


def parse_header_block(raw: bytes) -> dict[str, str]:
    """Parses a ``NATS/1.0`` header block (as stored by JetStream) into a dict."""
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().decode("ascii", "replace")] = value.strip().decode(
                "utf-8", "replace"
            )
    return headers


def raw_block_of(headers: Mapping[str, str] | None) -> bytes | None:
    """The header block of a ``Msg``'s headers (for a raw route's fallback path)."""
    if not headers:
        return None
    rest = dict(headers)
    status = rest.pop("Status", None)
    description = ""
    for key in list(rest):
        if key == "Description":
            description = str(rest.pop(key))
    first = "NATS/1.0" if status is None else f"NATS/1.0 {status} {description}".rstrip()
    lines = "".join(f"{k}: {v}\r\n" for k, v in rest.items())
    return f"{first}\r\n{lines}\r\n".encode()


class Writer:
    """Appends PUB/HPUB commands to a connection's outgoing buffer (see module doc).

    Every write either raises (nothing was queued) or queues the whole command and
    makes sure nats-py's flusher runs once the current burst of writes is over.

    Raises:
        RuntimeError: nats-py's internals are not what this writer uses.
    """

    def __init__(self, nc: Client) -> None:
        missing = [name for name in _INTERNALS if not hasattr(nc, name)]
        if missing:
            raise RuntimeError(f"unsupported nats-py version: Client lacks {missing}")
        self._nc = nc
        self._heads: dict[str, bytes] = {}
        self._kick_scheduled = False
        self._inline_flushes: set[asyncio.Future[Any]] = set()

    @property
    def max_payload(self) -> int:
        """The server's limit on one message (headers and body)."""
        return int(self._nc.max_payload)

    def _head(self, subject: str) -> bytes:
        """``HPUB {subject} `` for a subject checked once: no whitespace, no NUL."""
        if not subject or _BAD_SUBJECT.search(subject) is not None:
            raise ValidationError("subject", subject, "holds whitespace or NUL")
        heads = self._heads
        if len(heads) >= _SAFE_SUBJECTS_MAX:
            heads.clear()
        head = heads[subject] = f"HPUB {subject} ".encode()
        return head

    def write(self, block: Block, reply: bytes = b"") -> bool:
        """Queues ``block`` as one HPUB (``reply``: the reply subject, or empty).

        Returns:
            Whether the buffer is now over its limit: then await :meth:`relieve`.

        Raises:
            ValidationError: The subject holds whitespace or NUL.
            MessageTooLarge: Over the server's max payload.
            nats.errors.Error: The connection refused it (closed, draining, buffer full).
        """
        header = block.header_block
        body = block.body
        header_size = len(header)
        total = header_size + len(body)
        nc = self._nc
        if total > nc._max_payload:
            raise MessageTooLarge(total, nc._max_payload)
        subject = block.subject
        head = self._heads.get(subject) or self._head(subject)
        if reply:
            command = b"%s%s %d %d\r\n%s%s\r\n" % (head, reply, header_size, total, header, body)
        else:
            command = b"%s%d %d\r\n%s%s\r\n" % (head, header_size, total, header, body)
        # _append, inlined on this hot path
        pending = nc._pending_data_size + len(command)
        if nc._status != _CONNECTED:
            self._check_state(pending)
        nc._pending.append(command)
        nc._pending_data_size = pending
        stats = nc.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += len(body)
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)
        limit = nc._max_pending_size
        return limit > 0 and pending > limit

    def write_request(self, subject: bytes, reply: bytes, payload: bytes) -> bool:
        """Queues a PUB of ``payload`` to ``subject`` with a reply subject (checked by
        the caller: no whitespace). Returns and raises as :meth:`write`."""
        command = b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)
        return self._append(command, len(payload))

    def write_reply(self, subject: bytes, payload: bytes) -> bool:
        """Queues a PUB of ``payload`` (an acknowledgement) to a server-given subject.

        Returns and raises as :meth:`write`.
        """
        command = b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload)
        return self._append(command, len(payload))

    def _check_state(self, pending: int) -> None:
        """Raises unless a command may be queued (``pending``: the buffer's size with it)."""
        nc = self._nc
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        if not nc.is_connected and pending > nc._max_pending_size:
            raise nats.errors.OutboundBufferLimitError  # the reconnect buffer is full

    def _append(self, command: bytes, size: int) -> bool:
        nc = self._nc
        pending = nc._pending_data_size + len(command)
        if nc._status != _CONNECTED:
            self._check_state(pending)
        nc._pending.append(command)
        nc._pending_data_size = pending
        stats = nc.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)
        limit = nc._max_pending_size
        return limit > 0 and pending > limit

    def _kick(self) -> None:
        self._kick_scheduled = False
        self.kick()

    def kick(self) -> None:
        """Wakes nats-py's flusher now, if anything waits to be written."""
        nc = self._nc
        queue = nc._flush_queue
        if not nc._pending_data_size or queue is None or not queue.empty() or not nc.is_connected:
            return  # nothing to write, a flush is already due, or the reconnect will write
        task = nc._flusher_task
        if task is None or task.done():  # nats-py then flushes inline
            flush = asyncio.ensure_future(nc._flush_pending())
            self._inline_flushes.add(flush)
            flush.add_done_callback(self._inline_flushes.discard)
        else:
            queue.put_nowait(asyncio.get_running_loop().create_future())

    def write_out(self) -> None:
        """Hands what is queued to the socket now (see :func:`write_out`), or wakes the
        flusher if that is not possible (draining, reconnecting)."""
        if not write_out(self._nc):
            self.kick()

    async def relieve(self) -> None:
        """Waits until nats-py wrote out its buffer (after a write over its limit)."""
        nc = self._nc
        if nc.is_connected and nc._pending_data_size > nc._max_pending_size > 0:
            await nc._flush_pending(force_flush=True)


def write_out(nc: Client) -> bool:
    """Hands nats-py's outgoing buffer to the socket now, as its flusher would, without
    waiting for the flusher's turn on the event loop (which still applies the socket's
    back-pressure on its next run). Returns False (and does nothing) unless connected."""
    transport = nc._transport
    if nc._status != _CONNECTED or transport is None:
        return False
    if nc._pending_data_size:
        pending = nc._pending
        nc._pending = []
        nc._pending_data_size = 0
        transport.writelines(pending)
    return True


async def ordered_flush(nc: Client, timeout: float) -> None:
    """Waits until the server has processed everything queued so far.

    ``Client.flush`` writes its PING straight to the socket, ahead of commands still in
    the outgoing buffer, so its PONG can come back before they were even sent. Here the
    buffer goes out first, then the PING (both synchronously, so nothing can come
    between them).

    Raises:
        nats.errors.FlushTimeoutError: No PONG within ``timeout``.
        nats.errors.Error: As ``Client.flush`` (not connected, closed).
    """
    if nc._status != _CONNECTED or nc._transport is None or not hasattr(nc, "_pongs"):
        await nc.flush(timeout=timeout)  # type: ignore[arg-type]
        return
    pong: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    write_out(nc)
    nc._pongs.append(pong)
    nc._transport.write(b"PING\r\n")
    done, _ = await asyncio.wait({pong}, timeout=timeout)  # never cancel: nats-py resolves it
    if not done:
        raise nats.errors.FlushTimeoutError


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
        "_chunks",
        "_event",
        "_mux",
        "blocks",
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
        self._chunks: collections.deque[tuple[float, int, int]] = collections.deque()

    def resolve(self, index: int, outcome: PubAckWire) -> None:
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            self.outstanding -= 1
            if self.outstanding <= self.low_water:
                self._event.set()

    def _expire_overdue(self, now: float) -> None:
        chunks, pending, outcomes = self._chunks, self._mux._pending, self.outcomes
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
        timeout = self._chunks[0][0] - loop.time() if self._chunks else 0.0
        if timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    await self._event.wait()
            except TimeoutError:
                pass
        self._expire_overdue(loop.time())

    def abandon(self) -> None:
        """Forgets every outstanding publish (the caller was cancelled)."""
        pending = self._mux._pending
        for index in self.sent:
            pending.pop(self.tokens[index], None)
        self._chunks.clear()


class AckMux:
    """Routes JetStream publish acknowledgements to their waiters (see module doc)."""

    def __init__(self, client: NatsClient) -> None:
        self._client = client
        nc = client.connection
        self.writer = Writer(nc)
        self._nc = nc
        prefix = f"{nc._inbox_prefix.decode()}.{nc._nuid.next().decode()}."
        self._subject = prefix + "*"
        self._prefix = prefix.encode()
        self._prefix_len = len(self._prefix)
        # token -> (AckBatch, position) or (future, subject)
        self._pending: dict[bytes, tuple[Any, Any]] = {}
        self._counter = 0
        self._remove_listener = client.on_permission_denied(self._on_permission_denied)

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
        entry = self._pending.pop(subject[self._prefix_len :], None)
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
        for token, (target, key) in list(self._pending.items()):
            entry_subject = target.blocks[key].subject if target.__class__ is AckBatch else key
            if entry_subject.lower() == lowered:
                del self._pending[token]
                if target.__class__ is AckBatch:
                    target.resolve(key, PERMISSION_DENIED)
                elif not target.done():
                    target.set_result(PERMISSION_DENIED)

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
        self._pending[token] = (future, block.subject)
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
            self._pending.pop(token, None)

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
        pending, prefix, write = self._pending, self._prefix, self.writer.write
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
        batch._chunks.append((deadline, start, len(sent)))
        return failed


def decode_stored_message(raw: dict[str, Any]) -> tuple[str, dict[str, str], bytes, int]:
    """(subject, headers, body, sequence) of a ``STREAM.MSG.GET`` response's message."""
    hdrs = raw.get("hdrs")
    headers = parse_header_block(base64.b64decode(hdrs)) if hdrs else {}
    data = raw.get("data")
    body = base64.b64decode(data) if data else b""
    return str(raw["subject"]), headers, body, int(raw["seq"])


__all__ = [
    "NO_RESPONDERS",
    "PERMISSION_DENIED",
    "TIMED_OUT",
    "AckBatch",
    "AckMux",
    "ApiErrorWire",
    "Block",
    "MessageTooLarge",
    "PubAckWire",
    "RawHandler",
    "Writer",
    "decode_stored_message",
    "header_block",
    "headers_of",
    "ordered_flush",
    "parse_ack",
    "parse_header_block",
    "parse_header_lines",
    "raw_block_of",
    "write_out",
]
