"""The fence around nats-py's internals: every access to a private nats-py name is here.

The hot paths bypass nats-py's per-message machinery through a few of its internals
(nats-py is pinned below 3, and :func:`check_internals` verifies every name listed in
:data:`INTERNALS` on every connection, so an upgrade that moves one fails at connect
time, in one place, naming what is missing):

* :class:`Connection` is nats-py's client with raw routes: messages of a subscription
  registered with :func:`route_raw` are handed to a plain function as the
  :class:`FastParser` reads them (subject, reply, payload, raw header block), without a
  ``Msg``, a header dict, a queue or a task.
* :class:`Writer` appends ready-made ``PUB``/``HPUB`` commands to nats-py's outgoing
  buffer and wakes nats-py's flusher once per burst (at the end of the current event
  loop step) instead of once per message. Header blocks come from the codec's
  ``encode_block`` or :func:`~.headers.header_block`, which guarantee they cannot
  corrupt the protocol stream; subjects are checked once each.
* :func:`ordered_flush` is a flush whose PONG proves the server processed everything
  queued before it (nats-py's own ``flush`` writes its PING ahead of the buffer).
* :class:`Connection` also refuses to send CONNECT (with the credentials) on a socket
  that is not TLS when TLS is required, and tells a peer that is not a NATS server
  (no INFO, or something else) from an unreachable one.
* :func:`unsubscribe_now`, :func:`new_reply_prefix`, :func:`is_live` and
  :func:`route_raw` are the few other places that need a private name.

No other module of the adapter reads or writes a private nats-py name.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, Protocol

import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    CRLF_SIZE,
    Parser,
)

from message_bus.domain.errors import ValidationError
from message_bus.domain.redaction import redact_url

from .failures import MessageTooLarge
from .headers import parse_header_lines

log = logging.getLogger("message_bus.nats")

_BAD_SUBJECT = re.compile(r"[\s\x00]")
_SAFE_SUBJECTS_MAX = 65536
_CONNECTED = Client.CONNECTED

INTERNALS: dict[str, tuple[str, ...]] = {
    "Client": (
        "_transport",
        "_pending",
        "_pending_data_size",
        "_max_pending_size",
        "_max_payload",
        "_flush_queue",
        "_flusher_task",
        "_flush_pending",
        "_status",
        "_pongs",
        "_inbox_prefix",
        "_nuid",
        "_send_unsubscribe",
        "_ps",
        "_process_msg",
        "_process_info",
        "_remove_sub",
        "_parse_header_lines",
        "_current_server",
        "_process_connect_init",
        "_connect_command",
        "stats",
    ),
    "TcpTransport": ("_io_writer",),
    "Parser": ("buf", "state", "msg_arg", "needed", "header_needed", "nc", "parse"),
    "Subscription": ("_id",),
}
"""Every nats-py name this module relies on that nats-py does not document, by class
(instance attributes included). The module constants of ``nats.protocol.parser`` it
imports fail at import time if they move."""


class UnsupportedClientError(RuntimeError):
    """The installed nats-py lacks internals the adapter relies on."""


def missing_internals(nc: Client) -> list[str]:
    """The names of :data:`INTERNALS` that ``nc``, its parser or a subscription lack."""
    parser = getattr(nc, "_ps", None)
    subscription = Subscription(nc, 0, "check")
    missing = [f"Client.{n}" for n in INTERNALS["Client"] if not hasattr(nc, n)]
    missing += [f"Parser.{n}" for n in INTERNALS["Parser"] if not hasattr(parser, n)]
    missing += [
        f"Subscription.{n}" for n in INTERNALS["Subscription"] if not hasattr(subscription, n)
    ]
    transport = TcpTransport()  # type: ignore[no-untyped-call]
    missing += [f"TcpTransport.{n}" for n in INTERNALS["TcpTransport"] if not hasattr(transport, n)]
    return missing


def check_internals(nc: Client) -> None:
    """Raises unless every name of :data:`INTERNALS` is where the adapter expects it.

    Raises:
        UnsupportedClientError: names which ones are missing.
    """
    missing = missing_internals(nc)
    if missing:
        raise UnsupportedClientError(
            f"unsupported nats-py version {version('nats-py')}: it lacks {', '.join(missing)}"
        )


RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
"""Receives (subject, reply, payload, header block or None) of each message of a raw
route, on the event loop, as nats-py's parser reads it; must not block."""


class TlsNotOfferedError(nats.errors.Error):
    """TLS is required, but the server does not offer it (its INFO does not require
    TLS, or the socket is not TLS when CONNECT is due).

    Attributes:
        url: the server's URL, redacted.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def __str__(self) -> str:
        return f"{self.url} does not offer TLS"


class NotNatsServerError(nats.errors.Error):
    """The peer accepted the connection but is not a NATS server: it sent no INFO
    within the connect timeout (an HTTP port waits for a request), or something else.

    Attributes:
        url: the server's URL, redacted.
        detail: what it did instead.
    """

    def __init__(self, url: str, detail: str) -> None:
        super().__init__()
        self.url = url
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.url} is not a NATS server: {self.detail}"


class Block(Protocol):
    """What :class:`Writer` sends: a subject, a serialized header block and a body."""

    @property
    def subject(self) -> str: ...
    @property
    def header_block(self) -> bytes: ...
    @property
    def body(self) -> bytes: ...


class FastParser(Parser):
    """nats-py's protocol parser with a fast lane for ``MSG`` and ``HMSG``.

    A control line is split instead of matched against nats-py's regular expressions
    (which try ``MSG`` first, so every ``HMSG`` costs two matches), the buffer is cut
    once per read instead of twice per message, and a message of a raw route goes
    straight to its handler. Anything else (INFO, PING, PONG, +OK, -ERR, or a line the
    lane does not recognise) is handed to nats-py's parser, which takes it from there:
    the two share the buffer and the state (``state``, ``msg_arg``, ``needed``,
    ``header_needed``) with the same meaning.
    """

    nc: Connection

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        nc = self.nc
        routes = nc.raw_routes
        stats = nc.stats
        pos = 0
        size = len(buf)
        try:
            while pos < size:
                if self.state == AWAITING_MSG_PAYLOAD:  # a control line read earlier
                    needed = self.needed
                    if size - pos < needed + CRLF_SIZE:
                        return
                    header_size = self.header_needed
                    arg = self.msg_arg
                    sid, subject, reply = arg["sid"], arg["subject"], arg["reply"]
                    self.header_needed = 0
                    self.state = AWAITING_CONTROL_LINE
                elif buf.startswith(b"HMSG ", pos) or buf.startswith(b"MSG ", pos):
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        return  # the rest of the line is still on its way
                    parts = bytes(buf[pos:end]).split()
                    count = len(parts)
                    if parts[0] == b"MSG":  # MSG <subject> <sid> [reply] <size>
                        if count not in (4, 5) or not parts[-1].isdigit():
                            break  # not a line this lane reads
                        reply = parts[3] if count == 5 else b""
                        header_size = 0
                    else:  # HMSG <subject> <sid> [reply] <header size> <total size>
                        if count not in (5, 6) or not (parts[-1].isdigit() and parts[-2].isdigit()):
                            break
                        reply = parts[3] if count == 6 else b""
                        header_size = int(parts[-2])
                    try:
                        sid = int(parts[2])
                    except ValueError:
                        break
                    subject = parts[1]
                    needed = int(parts[-1])
                    pos = end + CRLF_SIZE
                    if size - pos < needed + CRLF_SIZE:
                        self.msg_arg = {"subject": subject, "sid": sid, "reply": reply}
                        self.needed = needed
                        self.header_needed = header_size
                        self.state = AWAITING_MSG_PAYLOAD
                        return
                else:
                    break
                if header_size:
                    headers: bytes | None = bytes(buf[pos : pos + header_size])
                    payload = bytes(buf[pos + header_size : pos + needed])
                else:
                    headers = None
                    payload = bytes(buf[pos : pos + needed])
                pos += needed + CRLF_SIZE
                route = routes.get(sid)
                if route is not None:
                    stats["in_msgs"] += 1
                    stats["in_bytes"] += len(payload)
                    try:
                        route(subject, reply, payload, headers)
                    except Exception:  # a broken handler must not break the reader
                        log.exception("handling a message on %r failed", subject)
                else:
                    await nc._process_msg(sid, subject, reply, payload, headers)  # type: ignore[arg-type]
                    if self.buf is not buf:
                        return  # the parser was reset (reconnect): this buffer is stale
        finally:
            if pos and self.buf is buf:
                del buf[:pos]
        await super().parse()


class Connection(Client):
    """nats-py's client with three additions.

    * Raw routes (see the module doc): a subscription whose id is in ``raw_routes`` gets its
      messages as they are parsed, with no ``Msg``, header dict, queue or task.
    * A faster header parser (:func:`~.headers.parse_header_lines`, the same result
      as ``Client._parse_header_lines``, checked by the unit tests).
    * With ``require_tls``, a server whose INFO does not require TLS is refused, and
      CONNECT is never written on a socket that is not TLS, so credentials never
      travel in clear text, whatever the URL's scheme (nats-py itself upgrades only
      when the server asks for it). Reconnects go through the same checks.
    * A peer that accepts the connection but sends no INFO (an HTTP port, a black
      hole) or something that is not an INFO raises :class:`NotNatsServerError`;
      :attr:`awaiting_info` says whether an attempt is waiting for one right now.
    """

    require_tls = False

    def __init__(self) -> None:
        super().__init__()
        self.raw_routes: dict[int, RawHandler] = {}
        self.awaiting_info = False
        self.server_info: dict[str, Any] = {}
        if type(self._ps) is Parser:
            self._ps = FastParser(self)

    @property
    def server_url(self) -> str:
        """The URL of the server being connected to (or last tried), redacted."""
        server = self._current_server
        return "the server" if server is None else redact_url(server.uri.geturl())

    @property
    def uses_tls(self) -> bool:
        """Whether the connection's transport is TLS right now."""
        return self._transport_is_tls()

    def _transport_is_tls(self) -> bool:
        server = self._current_server
        if server is not None and server.uri.scheme == "wss":
            return True  # the websocket transport connects with TLS from the start
        transport = self._transport
        writer = transport._io_writer if isinstance(transport, TcpTransport) else None
        return writer is not None and writer.get_extra_info("ssl_object") is not None

    async def _process_connect_init(self) -> None:
        self.awaiting_info = True  # the socket is open; nats-py now reads the INFO
        try:
            await self._connect_init_or_close()
        except asyncio.CancelledError:
            raise  # the caller's deadline: awaiting_info tells it what was pending
        except TimeoutError as exc:
            if not self.awaiting_info:
                raise
            self.awaiting_info = False
            timeout = self.options["connect_timeout"]
            raise NotNatsServerError(
                self.server_url,
                f"it accepted the connection but sent no NATS INFO within {timeout:g}s "
                "(is it the HTTP monitoring port, or another service?)",
            ) from exc
        except nats.errors.Error as exc:
            if not self.awaiting_info:
                raise
            self.awaiting_info = False
            raise NotNatsServerError(
                self.server_url,
                "it closed the connection or answered something other than a NATS INFO "
                "(is it the HTTP monitoring port, or another service?)",
            ) from exc
        self.awaiting_info = False

    async def _connect_init_or_close(self) -> None:
        """nats-py's handshake; a failed one closes its socket (nats-py's reconnect loop
        would open the next one and leave this one to the garbage collector)."""
        try:
            await super()._process_connect_init()
        except Exception:
            transport = self._transport
            if transport is not None:
                transport.close()  # type: ignore[no-untyped-call]
            raise

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection:
            self.awaiting_info = False
            server = self._current_server
            wss = server is not None and server.uri.scheme == "wss"
            if self.require_tls and not wss and not info.get("tls_required"):
                raise TlsNotOfferedError(self.server_url)
            self.server_info = dict(info)  # the INFO of the server connected to
        await super()._process_info(info, initial_connection)

    def _connect_command(self) -> bytes:
        if self.require_tls and not self._transport_is_tls():
            raise TlsNotOfferedError(self.server_url)  # never credentials in clear text
        return super()._connect_command()

    async def _process_msg(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: bytes,  # None when the message has none (nats-py's annotation omits it)
    ) -> None:
        route = self.raw_routes.get(sid)
        if route is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            route(subject, reply, data, headers)
        except Exception:  # a broken handler must not break the connection's reader
            log.exception("handling a message on %r failed", subject)

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self.raw_routes.pop(sid, None)
        super()._remove_sub(sid, max_msgs)

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        return parse_header_lines(raw) or {}


class Writer:
    """Appends PUB/HPUB commands to a connection's outgoing buffer (see module doc).

    Every write either raises (nothing was queued) or queues the whole command and
    makes sure nats-py's flusher runs once the current burst of writes is over.

    Raises:
        UnsupportedClientError: nats-py's internals are not what this writer uses.
    """

    def __init__(self, nc: Client) -> None:
        check_internals(nc)
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

    def write_live(self, command: bytes, size: int, body_size: int, count: int = 1) -> bool | None:
        """Queues a complete ``HPUB`` command the codec built (``encode_pub``: subject
        allow-listed, header block safe) if the connection is up now; ``size`` is its
        header block and body, ``body_size`` its body. Or ``count`` such commands in
        one buffer (``encode_pubs``): then ``size`` is the largest one's (or more) and
        ``body_size`` their bodies'.

        Returns:
            None if the connection is not up (nothing was queued: not even to the
            reconnect buffer), else whether the buffer is now over its limit (then
            await :meth:`relieve`).

        Raises:
            MessageTooLarge: Over the server's max payload.
        """
        nc = self._nc
        if nc._status != _CONNECTED:
            return None
        if size > nc._max_payload:
            raise MessageTooLarge(size, nc._max_payload)
        # _append, inlined on this hot path
        pending = nc._pending_data_size + len(command)
        nc._pending.append(command)
        nc._pending_data_size = pending
        stats = nc.stats
        stats["out_msgs"] += count
        stats["out_bytes"] += body_size
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

    def send_now(self) -> int:
        """Hands the connection's outgoing buffer to the socket now (:func:`write_out`),
        so the server reads it while the caller goes on; returns the bytes the socket
        has not taken yet (kept by the transport until it can), 0 if not known. Another
        transport (a WebSocket sends only from its ``drain``) is left to nats-py's
        flusher, woken now."""
        nc = self._nc
        transport = nc._transport
        io_writer = transport._io_writer if isinstance(transport, TcpTransport) else None
        if io_writer is None:
            self.kick()
            return 0
        if not write_out(nc):
            return 0
        return io_writer.transport.get_write_buffer_size()

    async def drained(self, timeout: float) -> bool:
        """Waits until the socket took what the transport kept (see :meth:`send_now`);
        False if it did not within ``timeout`` seconds (the server does not read). A
        connection lost meanwhile ends the wait (nats-py reconnects; what it had not
        sent is lost, as for any core publish on a connection that dies)."""
        nc = self._nc
        if nc._status != _CONNECTED or nc._transport is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                await nc._transport.drain()  # type: ignore[no-untyped-call]
        except TimeoutError:
            return False
        except (OSError, RuntimeError, AttributeError):  # as nats-py's flusher catches them
            return True
        return True

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


def is_live(nc: Client | None) -> bool:
    """Whether ``nc`` is connected now (not reconnecting, not draining, not closed)."""
    return nc is not None and nc._status == _CONNECTED


def route_raw(nc: Client, sub: Subscription, handler: RawHandler) -> bool:
    """Sends the messages of ``sub`` to ``handler`` as they are read (a raw route).

    Returns:
        Whether the route is in place (False: ``nc`` is not a :class:`Connection`, and
        the subscription's own callback gets the messages).
    """
    if not isinstance(nc, Connection):
        return False
    nc.raw_routes[sub._id] = handler
    return True


async def unsubscribe_now(nc: Client, sub: Subscription) -> None:
    """Writes the UNSUB of ``sub`` to the connection at once, without draining it."""
    await nc._send_unsubscribe(sub._id)


def new_reply_prefix(nc: Client) -> str:
    """A fresh, unique reply-subject prefix under the connection's inbox prefix
    (ending in ``.``): the publisher's acknowledgements arrive on ``prefix + token``."""
    return f"{nc._inbox_prefix.decode()}.{nc._nuid.next().decode()}."


__all__ = [
    "INTERNALS",
    "Block",
    "Connection",
    "FastParser",
    "NotNatsServerError",
    "RawHandler",
    "TlsNotOfferedError",
    "UnsupportedClientError",
    "Writer",
    "check_internals",
    "is_live",
    "missing_internals",
    "new_reply_prefix",
    "ordered_flush",
    "route_raw",
    "unsubscribe_now",
    "write_out",
]
