"""Low-level NATS plumbing shared by the publisher, subscriber and dead-letter reader.

* :class:`Writer` puts pre-encoded messages on the connection. Subjects and headers
  come from :class:`WireCodec` (already validated), so it builds the ``HPUB`` command
  itself and appends it to nats-py's outgoing buffer, kicking nats-py's flusher once
  per burst instead of once per message. It checks the few things that protect the
  protocol stream (no whitespace in subjects, no CR/LF/NUL in headers, the server's
  max payload) and falls back to ``Client.publish`` if nats-py's internals change.
* :class:`AckMux` awaits JetStream publish acknowledgements on one wildcard inbox per
  connection. A reply resolves its waiter whatever it says (PubAck, API error, 503 no
  responders), and every waiter has a deadline, so nothing hangs (nats.py #985).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from message_bus.domain.errors import ValidationError

if TYPE_CHECKING:
    from .client import NatsClient

log = logging.getLogger("message_bus.nats")

_BAD_SUBJECT = re.compile(r"[\s\x00]")
_SAFE_SUBJECTS_MAX = 65536
_REPLY_PENDING_MSGS = 1024 * 1024
_REPLY_PENDING_BYTES = 256 * 1024 * 1024


class MessageTooLarge(Exception):
    """The encoded message exceeds the server's ``max_payload``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{size} bytes exceed the server's max_payload of {limit} bytes")


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


def status_of(msg: Msg) -> str | None:
    """The inline status (``"503"``, ``"408"``, ...) of a server status message."""
    headers = msg.headers
    if headers is None or msg.data:
        return None
    return headers.get("Status")


def description_of(msg: Msg) -> str:
    """The description of a status message (nats-py keys it with a str enum)."""
    for key, value in (msg.headers or {}).items():
        if key == "Description":
            return str(value)
    return ""


class Writer:
    """Writes PUB/HPUB commands for codec-built subjects and headers (see module doc)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._fast = all(
            hasattr(nc, name)
            for name in (
                "_send_command",
                "_flush_pending",
                "_flush_queue",
                "_pending_data_size",
                "_max_pending_size",
                "stats",
            )
        )
        self._safe_subjects: set[str] = set()

    @property
    def max_payload(self) -> int:
        """The server's limit on one message (headers and body)."""
        return int(self._nc.max_payload)

    def _check_subject(self, subject: str) -> None:
        if subject in self._safe_subjects:
            return
        if not subject or _BAD_SUBJECT.search(subject) is not None:
            raise ValidationError("subject", subject, "holds whitespace or NUL")
        if len(self._safe_subjects) >= _SAFE_SUBJECTS_MAX:
            self._safe_subjects.clear()
        self._safe_subjects.add(subject)

    async def publish(
        self,
        subject: str,
        reply: str,
        headers: Mapping[str, str] | None,
        body: bytes,
        *,
        kick: bool = True,
    ) -> None:
        """Queues one message on the connection.

        Args:
            subject: Destination subject.
            reply: Reply subject, or ``""``.
            headers: Headers, or ``None``.
            body: Payload.
            kick: Wake nats-py's flusher (set False inside a burst, then call
                :meth:`kick` once).

        Raises:
            ValidationError: The subject or headers would corrupt the protocol.
            MessageTooLarge: Over the server's max payload.
            nats.errors.Error: The connection refused it (closed, draining, buffer full).
        """
        # While reconnecting, the command waits in nats-py's reconnect buffer, which is
        # written out once the connection is back.
        nc = self._nc
        if not self._fast:
            if len(body) > nc.max_payload:
                raise MessageTooLarge(len(body), nc.max_payload)
            await nc.publish(subject, body, reply=reply, headers=dict(headers or {}))
            return
        self._check_subject(subject)
        if headers:
            hdr = header_block(headers)
            hdr_len = len(hdr)
            total = hdr_len + len(body)
            if total > nc.max_payload:
                raise MessageTooLarge(total, nc.max_payload)
            if reply:
                line = f"HPUB {subject} {reply} {hdr_len} {total}\r\n"
            else:
                line = f"HPUB {subject} {hdr_len} {total}\r\n"
            command = b"".join((line.encode(), hdr, body, b"\r\n"))
        else:
            if len(body) > nc.max_payload:
                raise MessageTooLarge(len(body), nc.max_payload)
            size = len(body)
            line = f"PUB {subject} {reply} {size}\r\n" if reply else f"PUB {subject} {size}\r\n"
            command = b"".join((line.encode(), body, b"\r\n"))
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        if not nc.is_connected and (
            nc._pending_data_size + len(command) > nc._max_pending_size
        ):  # the reconnect buffer is full, as nats-py's own publish checks
            raise nats.errors.OutboundBufferLimitError
        stats = nc.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += len(body)
        await nc._send_command(command)
        if kick and nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    async def kick(self) -> None:
        """Wakes nats-py's flusher so queued commands are written to the socket."""
        nc = self._nc
        queue = nc._flush_queue if self._fast else None
        if queue is not None and queue.empty() and nc.is_connected:
            await nc._flush_pending()


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


def parse_ack(msg: Msg) -> PubAckWire:
    """Turns a reply to a JetStream publish into an outcome; never raises."""
    data = msg.data
    if not data:
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status == "503":
            return NO_RESPONDERS
        code = int(status) if status.isdigit() else 0
        return PubAckWire(error=ApiErrorWire(code=code, description=description_of(msg)))
    try:
        return _ack_decoder.decode(data)
    except msgspec.DecodeError as exc:
        return PubAckWire(error=ApiErrorWire(description=f"malformed acknowledgement: {exc}"))


def _expire(future: asyncio.Future[PubAckWire]) -> None:
    if not future.done():
        future.set_result(TIMED_OUT)


class AckBatch:
    """Outcomes of a pipelined burst of JetStream publishes, by input position.

    The sender registers each publish with :meth:`AckMux.track` and calls
    :meth:`wait` when its window is full; :meth:`wait` returns when the number of
    outstanding acknowledgements drops to ``low_water`` or the oldest one's deadline
    passes (then every overdue publish is resolved as :data:`TIMED_OUT`).
    """

    __slots__ = ("_deadlines", "_event", "_mux", "low_water", "outcomes", "outstanding", "subjects")

    def __init__(self, mux: AckMux, size: int, low_water: int) -> None:
        self._mux = mux
        self.outcomes: list[PubAckWire | None] = [None] * size
        self.subjects: list[str] = [""] * size
        self.outstanding = 0
        self.low_water = low_water
        self._event = asyncio.Event()
        self._deadlines: collections.deque[tuple[float, str, int]] = collections.deque()

    def resolve(self, index: int, outcome: PubAckWire) -> None:
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            self.outstanding -= 1
            if self.outstanding <= self.low_water:
                self._event.set()

    def _expire_overdue(self, now: float) -> None:
        deadlines, pending = self._deadlines, self._mux._pending
        while deadlines:
            deadline, token, index = deadlines[0]
            if token in pending:
                if deadline > now:
                    return
                del pending[token]
                self.resolve(index, TIMED_OUT)
            deadlines.popleft()

    async def wait(self) -> None:
        """Waits until at most ``low_water`` acks are outstanding or one is overdue."""
        loop = asyncio.get_running_loop()
        self._expire_overdue(loop.time())
        if self.outstanding <= self.low_water:
            return
        self._event.clear()
        timeout = self._deadlines[0][0] - loop.time() if self._deadlines else 0.0
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
        for _deadline, token, _index in self._deadlines:
            pending.pop(token, None)
        self._deadlines.clear()


class AckMux:
    """Routes JetStream publish acknowledgements to their waiters (see module doc)."""

    def __init__(self, client: NatsClient) -> None:
        self._client = client
        nc = client.connection
        self.writer = Writer(nc)
        self._nc = nc
        self._prefix = f"{nc._inbox_prefix.decode()}.{nc._nuid.next().decode()}."
        self._prefix_len = len(self._prefix)
        self._pending: dict[str, tuple[Any, Any]] = {}
        self._counter = 0
        self._remove_listener = client.on_permission_denied(self._on_permission_denied)

    async def start(self) -> None:
        await self._nc.subscribe(
            self._prefix + "*",
            cb=self._on_reply,
            pending_msgs_limit=_REPLY_PENDING_MSGS,
            pending_bytes_limit=_REPLY_PENDING_BYTES,
        )

    def _token(self) -> str:
        self._counter += 1
        return format(self._counter, "x")

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject[self._prefix_len :], None)
        if entry is None:
            return
        target, key = entry
        if target.__class__ is AckBatch:
            target.resolve(key, parse_ack(msg))
        elif not target.done():
            target.set_result(parse_ack(msg))

    def _on_permission_denied(self, subject: str) -> None:
        lowered = subject.lower()
        for token, (target, key) in list(self._pending.items()):
            entry_subject = target.subjects[key] if target.__class__ is AckBatch else key
            if entry_subject.lower() == lowered:
                del self._pending[token]
                if target.__class__ is AckBatch:
                    target.resolve(key, PERMISSION_DENIED)
                elif not target.done():
                    target.set_result(PERMISSION_DENIED)

    async def request(
        self, subject: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> PubAckWire:
        """Publishes one message to JetStream and waits for its outcome.

        Returns:
            The PubAck, the API error, :data:`NO_RESPONDERS`, :data:`TIMED_OUT` or
            :data:`PERMISSION_DENIED`.

        Raises:
            As :meth:`Writer.publish` (nothing was sent).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PubAckWire] = loop.create_future()
        token = self._token()
        self._pending[token] = (future, subject)
        handle = loop.call_later(timeout, _expire, future)
        try:
            await self.writer.publish(subject, self._prefix + token, headers, body)
            return await future
        finally:
            handle.cancel()
            self._pending.pop(token, None)

    def batch(self, size: int, low_water: int) -> AckBatch:
        """A new batch of ``size`` positions."""
        return AckBatch(self, size, low_water)

    def track(self, batch: AckBatch, index: int, subject: str, deadline: float) -> str:
        """Registers position ``index`` of ``batch``; returns the reply subject to use."""
        token = self._token()
        self._pending[token] = (batch, index)
        batch.subjects[index] = subject
        batch.outstanding += 1
        batch._deadlines.append((deadline, token, index))
        return self._prefix + token

    def untrack(self, batch: AckBatch, index: int, reply: str) -> None:
        """Forgets a registration whose publish was not sent."""
        if self._pending.pop(reply[self._prefix_len :], None) is not None:
            batch.outstanding -= 1


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
    "MessageTooLarge",
    "PubAckWire",
    "Writer",
    "decode_stored_message",
    "description_of",
    "header_block",
    "parse_ack",
    "parse_header_block",
    "status_of",
]
