"""NATS framing of the wire format: messages to and from ready-made header blocks.

:class:`BlockCodec` is the domain's :class:`WireCodec` plus the adapter's fast paths:
:meth:`~BlockCodec.encode_pub` writes a message as one complete ``HPUB`` command (the
header block of ``encode``'s headers and the body), :meth:`~BlockCodec.encode_pubs` a
batch of them into one buffer, :meth:`~BlockCodec.encode_block` the header block and
body apart, and :meth:`~BlockCodec.decode_block` reads a block laid out that way without
building a header dict. They give exactly what the general ``encode``/``decode`` give
(the unit tests hold them to it); anything unusual falls back to the general path. The
subject and the static headers of each (type, key) are validated and serialized once,
so the per message work is the id, the timestamp, the optional headers and the body.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import chain, repeat
from operator import add, attrgetter, is_
from types import MappingProxyType
from typing import NamedTuple

import msgspec

from message_bus.domain.catalog import MessageType
from message_bus.domain.codec import (
    CONTENT_TYPE_JSON,
    H_CAUSATION_ID,
    H_CONTENT_TYPE,
    H_CORRELATION_ID,
    H_MSG_ID,
    H_PARTITION,
    H_PARTITION_KEY,
    H_TYPE,
    JSON_DECODER,
    JSON_ENCODER,
    RESERVED_PREFIXES,
    STATIC_HEADERS,
    Encoded,
    WireCodec,
    decode_partition,
    encode_payload,
    envelope_template,
    format_timestamp,
    is_id,
    parse_key,
    parse_timestamp,
)
from message_bus.domain.errors import DecodeError, ValidationError
from message_bus.domain.message import Message, check_header, check_id, check_payload_numbers
from message_bus.domain.partition import DEFAULT_PARTITIONS, PartitionKey

from .headers import BLOCK_START, header_block, parse_header_lines

_MSG_ID_LINE = b"\r\nNats-Msg-Id: "
_CREATED_AT_LINE = b"Deltran-Created-At: "
_MSG_ID_LINE_SIZE = len(_MSG_ID_LINE)
_CREATED_AT_LINE_SIZE = len(_CREATED_AT_LINE)
_TIMESTAMP_LINE_SIZE = len(b"\r\nDeltran-Created-At: \r\n\r\n")
"""What the header block holds around the id and the timestamp value, after the prefix."""
_STAMP_SIZE = len(b"2026-11-27T13:57:19.123456Z")
"""A timestamp in UTC with microseconds, as ``format_timestamp`` writes it."""
_static_size = attrgetter("static_size")
_usual_header = attrgetter("usual_header")
_tzinfo = attrgetter("tzinfo")
_subject = attrgetter("subject")
_partition = attrgetter("partition")
_lines = attrgetter("lines")
_block_prefix = attrgetter("block_prefix")
_message_type = attrgetter("message_type")
_suffix = attrgetter("partition_key.suffix")
_correlation_id = attrgetter("correlation_id")
_causation_id = attrgetter("causation_id")
_headers = attrgetter("headers")
_id = attrgetter("id")
_created_at = attrgetter("created_at")
_payload = attrgetter("payload")
_UUID_SIZE = 36
_LINES_MAX = 32
"""Command lines a route remembers (one per message size)."""
_STAMP_LINE = b"\r\nDeltran-Created-At: "
_END = b"\r\n\r\n"
_CRLF = b"\r\n"
_ROUTES_MAX = 16384
PUB_BATCH = 4096
"""Messages a core batch encodes into one buffer and writes at once."""
_EMPTY_HEADERS: MappingProxyType[str, str] = MappingProxyType({})


class EncodedBlock(msgspec.Struct, frozen=True, gc=False):
    """A message as it travels, with its headers already serialized.

    ``header_block`` is the NATS header block of exactly the headers
    :meth:`WireCodec.encode` produces, in the same order: ``NATS/1.0`` CRLF, one
    ``Name: value`` CRLF per header, CRLF; UTF-8.
    """

    subject: str
    header_block: bytes
    body: bytes
    partition: int | None


class _Route(NamedTuple):
    """What (type, key, partition count) fixes on the wire, validated once."""

    subject: str
    partition: int | None
    block_prefix: bytes  # header block up to the Nats-Msg-Id value
    pub_head: bytes  # "HPUB <subject> "
    static_size: int  # header block size less the id and the timestamp
    usual_header: int  # the header block's size with a UUID id and a usual timestamp
    lines: dict[int, bytes]  # size of the message -> its "HPUB <subject> <sizes>" line


def _pub_line(route: _Route, header_size: int, size: int) -> bytes:
    """``HPUB <subject> <header size> <size>`` CRLF; remembered per route for messages
    of the usual header size (the sizes of a route's messages repeat)."""
    line = b"%s%d %d\r\n" % (route.pub_head, header_size, size)
    if header_size == route.usual_header and len(route.lines) < _LINES_MAX:
        route.lines[size] = line
    return line


PubCommand = tuple[bytes, int, int, str, int | None]
"""A message as one complete ``HPUB`` command (see :meth:`BlockCodec.encode_pub`): the
command, its header block and body size, its body size, its subject and partition. A
plain tuple: it is made and taken apart once per core publish."""


class _Columns(NamedTuple):
    """A batch's messages column by column, checked (see :meth:`BlockCodec._columns`)."""

    routes: list[_Route]
    ids: list[str]
    stamps: list[bytes]  # timestamps as JSON text, without quotes
    bodies: list[bytes]
    special: set[int]
    """``id()`` of the messages to encode on their own: optional headers, or a timestamp
    that is not in UTC with microseconds."""


class PubBatch(NamedTuple):
    """Messages as ``HPUB`` commands in one buffer (see :meth:`BlockCodec.encode_pubs`)."""

    commands: bytes
    ids: list[str]
    routes: list[_Route]
    largest: int
    """At least the header block and body size of the largest message."""
    body_bytes: int


class _DecodeRoute(NamedTuple):
    """The validated meaning of a header-block prefix (up to ``Nats-Msg-Id``)."""

    subject: str
    message_type: MessageType
    key: PartitionKey
    partition: int | None
    partitions: int | None


_decode_routes: dict[bytes, _DecodeRoute] = {}


class BlockCodec(WireCodec):
    """:class:`WireCodec` with the NATS fast paths (see the module doc).

    Encoding caches, per (type, key), the subject and the static part of the header
    block, validated and serialized once, so the per message work is the id, the
    timestamp, the optional headers and the body.
    """

    def __init__(self, partitions: int = DEFAULT_PARTITIONS) -> None:
        super().__init__(partitions)
        self._routes: dict[int, dict[str, _Route]] = {}  # id(type member) -> suffix -> route

    def encode_block(self, message: Message) -> EncodedBlock:
        """Encode ``message`` with its headers serialized; the fast path of :meth:`encode`.

        Same checks, same headers in the same order (see :class:`EncodedBlock`): the
        header block and body of :meth:`encode_pub`'s command, for publishes that add a
        reply subject (JetStream's acknowledgement inbox).

        Raises:
            ValidationError: as :meth:`encode`.
        """
        command, size, body_size, subject, partition = self.encode_pub(message)
        start = command.index(b"\r\n") + 2  # after the HPUB line
        split = start + size - body_size
        return EncodedBlock(subject, command[start:split], command[split:-2], partition)

    def encode_pub(self, message: Message) -> PubCommand:
        """``message`` as one complete NATS ``HPUB`` command without a reply subject:
        ``HPUB <subject> <header size> <total size>`` CRLF, the header block
        :meth:`encode_block` gives, the body, CRLF; built in one step, for writing to
        a connection as it is (the core publish path).

        Returns:
            (command, header block and body size (what ``max_payload`` limits), body
            size, subject, partition).

        Raises:
            ValidationError: as :meth:`encode`.
        """
        # one function, no helper calls on the way: a call costs a tenth of a publish
        try:
            route = self._routes[id(message.message_type)][message.partition_key.suffix]
        except (KeyError, AttributeError):
            route = self._route(message)
        message_id = message.id
        if not (  # _is_id, inlined
            type(message_id) is str
            and 0 < len(message_id) <= 128
            and message_id.isascii()
            and message_id.isprintable()
            and " " not in message_id
        ):
            check_id("id", message_id)
        moment = message.created_at
        if moment.tzinfo is UTC and moment.microsecond:
            created = JSON_ENCODER.encode(moment)[1:-1]
        else:
            created = format_timestamp(moment).encode()
        if message.correlation_id is None and message.causation_id is None and not message.headers:
            block = None
        else:
            block = self._block_with_options(route, message, created)
        try:
            body = JSON_ENCODER.encode(message.payload)
        except (TypeError, ValueError, OverflowError):
            body = encode_payload(message.payload)
        if body.find(b"null") >= 0:
            check_payload_numbers(message.payload, body)
        body_size = len(body)
        if block is None:
            encoded_id = message_id.encode()
            header_size = route.static_size + len(encoded_id) + len(created)
            size = header_size + body_size
            line = route.lines.get(size) if header_size == route.usual_header else None
            if line is None:
                line = _pub_line(route, header_size, size)
            command = b"".join(
                (line, route.block_prefix, encoded_id, _STAMP_LINE, created, _END, body, _CRLF)
            )
        else:
            header_size = len(block)
            command = b"%s%d %d\r\n%s%s\r\n" % (
                route.pub_head,
                header_size,
                header_size + body_size,
                block,
                body,
            )
        return command, header_size + body_size, body_size, route.subject, route.partition

    def encode_pubs(self, messages: Sequence[Message]) -> PubBatch:
        """The ``HPUB`` commands of ``messages``, joined into one buffer: exactly what
        :meth:`encode_pub` gives for each, in order (the core batch path).

        The columns that cost most one by one are made one call each for the whole
        batch: the bodies and the timestamps are encoded as JSON lines and split, and
        the ids are checked as one joined text. A message with optional headers, or a
        timestamp not in UTC with microseconds, is encoded on its own; a batch with
        anything unusual in a column (an id that is not a ``str``, a payload that does
        not encode, a ``msgspec.Raw`` body with a line break) is encoded message by
        message, which names what is wrong.

        Raises:
            ValidationError: as :meth:`encode` (for the first bad message).
        """
        columns = self._checked_columns(messages)
        if columns is None:  # something unusual: one by one, as the single path does
            return self._one_by_one(messages)
        routes, ids, stamps, bodies, special = columns
        body_sizes = list(map(len, bodies))
        if not special and set(map(len, ids)) == {_UUID_SIZE}:
            # the common batch: every message has its route's usual header size, so the
            # whole buffer is one join of columns made in C, without a loop in Python
            sizes = list(map(add, map(_usual_header, routes), body_sizes))
            lines = list(map(dict.get, map(_lines, routes), sizes))
            if None in lines:
                for at, line in enumerate(lines):
                    if line is None:
                        route = routes[at]
                        lines[at] = _pub_line(route, route.usual_header, sizes[at])
            columns_of_commands = zip(
                lines,
                map(_block_prefix, routes),
                map(str.encode, ids),
                repeat(_STAMP_LINE),
                stamps,
                repeat(_END),
                bodies,
                repeat(_CRLF),
            )
            return PubBatch(
                b"".join(chain.from_iterable(columns_of_commands)),
                ids,
                routes,
                max(sizes, default=0),
                sum(body_sizes),
            )
        commands: list[bytes] = []
        push = commands.append
        join = b"".join
        largest = 0
        for message, route, message_id, created, body in zip(
            messages, routes, ids, stamps, bodies, strict=True
        ):
            if id(message) in special:  # optional headers, or an unusual timestamp
                command, size, _, _, _ = self.encode_pub(message)
            else:
                encoded_id = message_id.encode()
                header_size = route.static_size + len(encoded_id) + _STAMP_SIZE
                size = header_size + len(body)
                line = route.lines.get(size) if header_size == route.usual_header else None
                if line is None:
                    line = _pub_line(route, header_size, size)
                prefix = route.block_prefix
                command = join((line, prefix, encoded_id, _STAMP_LINE, created, _END, body, _CRLF))
            push(command)
            largest = max(largest, size)
        return PubBatch(join(commands), ids, routes, largest, sum(body_sizes))

    def encode_blocks(self, messages: Sequence[Message]) -> list[EncodedBlock]:
        """:meth:`encode_block` of every message of ``messages``, in order, built from
        the checked columns of :meth:`encode_pubs` (the JetStream batch path).

        Raises:
            ValidationError: as :meth:`encode` (for the first bad message).
        """
        columns = self._checked_columns(messages)
        if columns is None:
            return [self.encode_block(message) for message in messages]
        routes, ids, stamps, bodies, special = columns
        blocks = map(
            b"".join,
            zip(
                map(_block_prefix, routes),
                map(str.encode, ids),
                repeat(_STAMP_LINE),
                stamps,
                repeat(_END),
            ),
        )
        encoded = list(
            map(EncodedBlock, map(_subject, routes), blocks, bodies, map(_partition, routes))
        )
        if special:  # optional headers, or an unusual timestamp: encoded on their own
            for at, message in enumerate(messages):
                if id(message) in special:
                    encoded[at] = self.encode_block(message)
        return encoded

    def check_pubs(self, messages: Sequence[Message]) -> None:
        """Raise the :class:`ValidationError` :meth:`encode_pub` would raise for the first
        bad message of ``messages``, without building commands; in slices of
        ``PUB_BATCH``, so the memory it takes does not grow with the batch."""
        for start in range(0, len(messages), PUB_BATCH):
            chunk = messages[start : start + PUB_BATCH]
            columns = self._checked_columns(chunk)
            if columns is None:
                special = None  # every message on its own
            else:
                special = columns.special
                if not special:
                    continue
            for message in chunk:
                if special is None or id(message) in special:
                    self.encode_pub(message)  # checks what the columns left to it

    def _checked_columns(self, messages: Sequence[Message]) -> _Columns | None:
        """:meth:`_columns`, whose checks run column by column: when one refuses a
        message, the messages are checked one by one, in order, so the error names the
        first bad message, as the single path would."""
        try:
            return self._columns(messages)
        except ValidationError as refused:
            for message in messages:
                self.encode_pub(message)
            raise refused from None

    def _columns(self, messages: Sequence[Message]) -> _Columns | None:
        """The checked columns of ``messages`` (see :class:`_Columns`), or None when a
        column is unusual (see :meth:`encode_pubs`).

        Raises:
            ValidationError: a type or key is refused, an id is not one, or a payload
                holds a NaN or an infinite number (not necessarily the first bad message's
                error: see :meth:`_checked_columns`).
        """
        count = len(messages)
        # column by column in C (map, set, all) where it can be: a Python loop per
        # message costs more than the rest of the column; identities, never equality
        types = list(map(_message_type, messages))
        routes: list[_Route] | None = None
        if count and len(set(map(id, types))) == 1:  # one type: one table of routes
            table = self._routes.get(id(types[0]))
            if table is not None:
                try:
                    routes = list(map(table.__getitem__, map(_suffix, messages)))
                except (KeyError, AttributeError, TypeError):
                    routes = None  # a key seen for the first time, or not a key
        if routes is None:
            routes = [self._route_of(message) for message in messages]
        special: set[int] = set()  # id() of the messages to encode one by one
        if not (
            all(map(is_, map(_correlation_id, messages), repeat(None)))
            and all(map(is_, map(_causation_id, messages), repeat(None)))
            and not any(map(_headers, messages))
        ):
            special = {
                id(m)
                for m in messages
                if m.correlation_id is not None or m.causation_id is not None or m.headers
            }
        ids = list(map(_id, messages))
        moments = list(map(_created_at, messages))
        if set(map(type, ids)) != {str} or set(map(type, moments)) != {datetime}:
            return None
        joined = "".join(ids)
        if not (
            joined.isascii()
            and joined.isprintable()
            and " " not in joined
            and min(map(len, ids)) > 0
            and max(map(len, ids)) <= 128
        ):
            return None
        try:
            lines = JSON_ENCODER.encode_lines(list(map(_payload, messages)))
        except (TypeError, ValueError, OverflowError):
            return None
        bodies = lines.split(b"\n")
        if len(bodies) != count + 1:  # a msgspec.Raw with a line break
            return None
        del bodies[count:]  # the empty text after the last line break
        if lines.find(b"null") >= 0:  # a float NaN or infinity would travel as null
            for message, body in zip(messages, bodies, strict=True):
                if body.find(b"null") >= 0:
                    check_payload_numbers(message.payload, body)
        stamps = JSON_ENCODER.encode_lines(moments)[1:-2].split(b'"\n"')
        # msgspec writes an aware time in its own zone (rounding the offset to the
        # minute): only times in UTC with microseconds are the text the codec writes
        if set(map(id, map(_tzinfo, moments))) != {id(UTC)} or set(map(len, stamps)) != {
            _STAMP_SIZE
        }:
            special.update(
                id(m)
                for m, stamp in zip(messages, stamps, strict=True)
                if m.created_at.tzinfo is not UTC or len(stamp) != _STAMP_SIZE
            )
        return _Columns(routes, ids, stamps, bodies, special)

    def _route_of(self, message: Message) -> _Route:
        try:
            return self._routes[id(message.message_type)][message.partition_key.suffix]
        except (KeyError, AttributeError, TypeError):
            return self._route(message)

    def _one_by_one(self, messages: Sequence[Message]) -> PubBatch:
        """:meth:`encode_pubs` through :meth:`encode_pub`, message by message."""
        pubs = [self.encode_pub(message) for message in messages]
        return PubBatch(
            b"".join(pub[0] for pub in pubs),
            [message.id for message in messages],
            [self._route_of(message) for message in messages],
            max((pub[1] for pub in pubs), default=0),
            sum(pub[2] for pub in pubs),
        )

    def _route(self, message: Message) -> _Route:
        message_type = message.message_type
        if not isinstance(message_type, MessageType):
            raise ValidationError("message_type", message_type, "must be a MessageType")
        key = message.partition_key
        if not isinstance(key, PartitionKey) or type(key) is PartitionKey:
            raise ValidationError(
                "partition_key", key, "must be built with PartitionKey.corridor/..."
            )
        suffix = key.suffix
        parse_key(suffix)  # canonical: nothing but allow-listed tokens reaches the wire
        subject, template = envelope_template(message_type, suffix, self.partitions)
        prefix = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in template.items())
        partition = template.get(H_PARTITION)
        block_prefix = (prefix + H_MSG_ID + ": ").encode()
        route = _Route(
            subject,
            None if partition is None else int(partition),
            block_prefix,
            f"HPUB {subject} ".encode(),  # the subject's tokens are allow-listed
            len(block_prefix) + _TIMESTAMP_LINE_SIZE,
            len(block_prefix) + _TIMESTAMP_LINE_SIZE + _UUID_SIZE + _STAMP_SIZE,
            {},
        )
        routes = self._routes.setdefault(id(message_type), {})
        if len(routes) >= _ROUTES_MAX:
            routes.clear()
        routes[suffix] = route
        return route

    @staticmethod
    def _block_with_options(route: _Route, message: Message, created: bytes) -> bytes:
        """The whole header block of a message with optional headers."""
        parts = [route.block_prefix, message.id.encode(), b"\r\nDeltran-Created-At: ", created]
        if message.correlation_id is not None:
            check_id("correlation_id", message.correlation_id)
            parts += (b"\r\nDeltran-Correlation-Id: ", message.correlation_id.encode())
        if message.causation_id is not None:
            check_id("causation_id", message.causation_id)
            parts += (b"\r\nDeltran-Causation-Id: ", message.causation_id.encode())
        if message.headers:
            for name, value in message.headers.items():
                check_header(name, value)
                try:
                    parts.append(f"\r\n{name}: {value}".encode())
                except UnicodeEncodeError:
                    raise ValidationError(
                        f"headers[{name!r}]", value, "header value is not valid Unicode"
                    ) from None
        parts.append(b"\r\n\r\n")
        return b"".join(parts)

    def decode_block(self, subject: str, block: bytes | None, body: bytes) -> Message | None:
        """The fast path of :meth:`decode`, for a header block laid out as
        :meth:`encode_block` lays it out.

        Returns the message :meth:`decode` would return for ``block``'s headers (as
        nats-py parses them), or None when the block is laid out otherwise or
        anything in it is wrong: then parse the headers and call :meth:`decode`,
        which accepts any layout and names what is wrong. The static part of the
        block (type, key, partition, content type) is validated once per distinct
        prefix; the rest is checked for every message as :meth:`decode` checks it.
        """
        if not block:
            return None
        cut = block.find(_MSG_ID_LINE)
        if cut < 0:
            return None
        prefix = block[:cut]
        route = _decode_routes.get(prefix)
        if route is None:
            route = _learn_decode_route(prefix)
            if route is None:
                return None
        if subject != route.subject:
            return None
        lines = block[cut + _MSG_ID_LINE_SIZE :].split(b"\r\n")
        count = len(lines)
        if count < 4 or lines[-1] or lines[-2] or not lines[1].startswith(_CREATED_AT_LINE):
            return None
        message_id = lines[0].strip().decode("utf-8", "replace")
        if not (  # _is_id, inlined
            0 < len(message_id) <= 128
            and message_id.isascii()
            and message_id.isprintable()
            and " " not in message_id
        ):
            return None
        created_text = lines[1][_CREATED_AT_LINE_SIZE:].strip().decode("utf-8", "replace")
        try:
            if len(created_text) == 27 and created_text[10] == "T" and created_text[26] == "Z":
                created_at = datetime.fromisoformat(created_text)  # what encode produces
            else:
                created_at = parse_timestamp(created_text)
            payload = JSON_DECODER.decode(body)
        except (ValueError, msgspec.DecodeError):
            return None
        correlation_id = causation_id = None
        user = _EMPTY_HEADERS
        if count > 4:
            options = parse_header_lines(b"\r\n".join(lines[2:-2]), strict=True)
            if options is None:
                return None
            correlation_id = options.pop(H_CORRELATION_ID, None)
            causation_id = options.pop(H_CAUSATION_ID, None)
            if (correlation_id is not None and not is_id(correlation_id)) or (
                causation_id is not None and not is_id(causation_id)
            ):
                return None
            if options:
                for name in options:
                    if name.startswith(RESERVED_PREFIXES) or name == H_CONTENT_TYPE:
                        return None  # a second envelope header, or one decode ignores
                user = MappingProxyType(options)
        return Message(
            id=message_id,
            message_type=route.message_type,
            partition_key=route.key,
            payload=payload,
            created_at=created_at,
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers=user,
            partition=route.partition,
            partitions=route.partitions,
        )


def _learn_decode_route(prefix: bytes) -> _DecodeRoute | None:
    """Validates a header-block prefix as :meth:`WireCodec.decode` validates those
    headers; caches and returns its meaning, or None if it is anything unusual."""
    if not prefix.startswith(BLOCK_START):
        return None
    headers = parse_header_lines(prefix[len(BLOCK_START) :], strict=True)
    if headers is None or not headers.keys() <= STATIC_HEADERS:
        return None
    type_name = headers.get(H_TYPE)
    suffix = headers.get(H_PARTITION_KEY)
    content_type = headers.get(H_CONTENT_TYPE)
    if type_name is None or suffix is None:
        return None
    if content_type is not None and content_type.split(";")[0].strip() != CONTENT_TYPE_JSON:
        return None
    try:
        message_type = MessageType.from_wire(type_name)
        key = parse_key(suffix)
        partition, partitions = decode_partition(headers, suffix)
    except (KeyError, ValidationError, DecodeError):
        return None
    route = _DecodeRoute(
        f"{message_type.subject_prefix}.{suffix}", message_type, key, partition, partitions
    )
    if len(_decode_routes) >= _ROUTES_MAX:
        _decode_routes.clear()
    _decode_routes[prefix] = route
    return route


def block_of(encoded: Encoded, partition: int | None = None) -> EncodedBlock:
    """``encoded`` with its headers serialized, for the receipt's ``partition``.

    Raises:
        ValidationError: a header name or value holds CR, LF or NUL.
    """
    return EncodedBlock(encoded.subject, header_block(encoded.headers), encoded.body, partition)


__all__ = ["PUB_BATCH", "BlockCodec", "EncodedBlock", "PubBatch", "PubCommand", "block_of"]
