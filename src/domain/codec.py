"""The wire codec: ``Message`` <-> (subject, headers, body), shared by every adapter.

The format is documented in ``docs/wire-format.md``; this module is its reference
implementation. Body: the payload as JSON. Envelope: NATS headers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from .catalog import MessageType
from .errors import DecodeError, ValidationError
from .message import Message, check_header, check_id
from .partition import DEFAULT_PARTITIONS, PartitionKey, check_partition_count, partition_of

if TYPE_CHECKING:
    from collections.abc import Sequence

H_MSG_ID = "Nats-Msg-Id"
H_TYPE = "Deltran-Type"
H_PARTITION_KEY = "Deltran-Partition-Key"
H_PARTITION = "Deltran-Partition"
H_PARTITIONS = "Deltran-Partitions"
H_CREATED_AT = "Deltran-Created-At"
H_CORRELATION_ID = "Deltran-Correlation-Id"
H_CAUSATION_ID = "Deltran-Causation-Id"
H_CONTENT_TYPE = "Content-Type"
CONTENT_TYPE_JSON = "application/json"

_ENVELOPE_HEADERS = frozenset(
    {
        H_MSG_ID,
        H_TYPE,
        H_PARTITION_KEY,
        H_PARTITION,
        H_PARTITIONS,
        H_CREATED_AT,
        H_CORRELATION_ID,
        H_CAUSATION_ID,
        H_CONTENT_TYPE,
    }
)
_RESERVED_PREFIXES = ("Nats-", "Deltran-", "nats-", "deltran-", "NATS-", "DELTRAN-")
_STATIC_HEADERS = frozenset({H_TYPE, H_PARTITION_KEY, H_PARTITION, H_PARTITIONS, H_CONTENT_TYPE})
_BLOCK_START = b"NATS/1.0\r\n"
_MSG_ID_LINE = b"\r\nNats-Msg-Id: "
_CREATED_AT_LINE = b"Deltran-Created-At: "
_MSG_ID_LINE_SIZE = len(_MSG_ID_LINE)
_CREATED_AT_LINE_SIZE = len(_CREATED_AT_LINE)
_ROUTES_MAX = 16384
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token: what a header name is
_EMPTY_HEADERS: Mapping[str, str] = MappingProxyType({})

_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder()


class Encoded(NamedTuple):
    """A message as it travels: subject, headers and body bytes."""

    subject: str
    headers: dict[str, str]
    body: bytes


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


class _DecodeRoute(NamedTuple):
    """The validated meaning of a header-block prefix (up to ``Nats-Msg-Id``)."""

    subject: str
    message_type: MessageType
    key: PartitionKey
    partition: int | None
    partitions: int | None


_decode_routes: dict[bytes, _DecodeRoute] = {}


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: ``2026-11-27T13:57:19.123456Z``."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


def _is_id(value: object) -> bool:
    """``check_id`` without the exception: 1-128 printable ASCII characters, no spaces."""
    return (
        type(value) is str
        and 0 < len(value) <= 128
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def _parse_header_lines(lines: Sequence[bytes]) -> dict[str, str] | None:
    """``Name: value`` lines as nats-py parses them, or None unless every line is one
    clean header with a distinct name (the caller then falls back to the full parse)."""
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        try:
            key = name.decode("ascii")
        except UnicodeDecodeError:
            return None
        if _TOKEN.fullmatch(key) is None or key in headers:
            return None
        headers[key] = value.strip().decode("utf-8", "replace")
    return headers


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with an offset (``Z`` or ``+hh:mm``) into UTC.

    Raises:
        ValueError: not an RFC 3339 timestamp with an offset.
    """
    if len(text) < 20 or text[10] not in "Tt":
        raise ValueError("not an RFC 3339 date-time")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("has no UTC offset")
    return moment.astimezone(UTC)


@lru_cache(maxsize=16384)
def _template(
    message_type: MessageType, suffix: str, partitions: int
) -> tuple[str, dict[str, str]]:
    headers = {H_TYPE: message_type.value, H_PARTITION_KEY: suffix}
    if suffix != "broadcast":
        headers[H_PARTITION] = str(partition_of(suffix, partitions))
        headers[H_PARTITIONS] = str(partitions)
    headers[H_CONTENT_TYPE] = CONTENT_TYPE_JSON
    return f"{message_type.subject_prefix}.{suffix}", headers


@lru_cache(maxsize=16384)
def _parse_key(suffix: str) -> PartitionKey:
    return PartitionKey.parse(suffix)


def encode_payload(payload: Any) -> bytes:
    """The payload as JSON bytes.

    Raises:
        ValidationError: the payload is not JSON-compatible.
    """
    try:
        return _encoder.encode(payload)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError("payload", payload, f"is not JSON-encodable: {exc}") from exc


class WireCodec:
    """Encodes and decodes messages per the wire format, with a fixed partition count.

    Encoding caches the subject and static headers of each (type, key), so the per
    message work is the body and three or four header values.
    """

    def __init__(self, partitions: int = DEFAULT_PARTITIONS) -> None:
        self.partitions = check_partition_count(partitions)
        self._routes: dict[int, dict[str, _Route]] = {}  # id(type member) -> suffix -> route

    def encode(self, message: Message) -> Encoded:
        """Encode ``message``; raises :class:`ValidationError` before any I/O if it can't.

        The envelope is checked again here (not only in ``Message.new``) because a
        ``Message`` built directly or with ``msgspec.structs.replace`` skips that check:
        nothing unchecked reaches a subject or a header.
        """
        check_id("id", message.id)
        subject, template = _template(
            message.message_type, message.partition_key.suffix, self.partitions
        )
        headers = template.copy()
        headers[H_MSG_ID] = message.id
        headers[H_CREATED_AT] = format_timestamp(message.created_at)
        if message.correlation_id is not None:
            headers[H_CORRELATION_ID] = check_id("correlation_id", message.correlation_id)
        if message.causation_id is not None:
            headers[H_CAUSATION_ID] = check_id("causation_id", message.causation_id)
        if message.headers:
            for name, value in message.headers.items():
                check_header(name, value)
            headers.update(message.headers)
        return Encoded(subject, headers, encode_payload(message.payload))

    def partition_of(self, message: Message) -> int | None:
        """The partition ``message`` is published to with this codec's partition count."""
        return message.partition_key.partition_number(self.partitions)

    def encode_block(self, message: Message) -> EncodedBlock:
        """Encode ``message`` with its headers serialized; the fast path of :meth:`encode`.

        Same checks, same headers in the same order (see :class:`EncodedBlock`). The
        subject and the static headers of each (type, key) are validated and
        serialized once, so the per message work is the id, the timestamp, the
        optional headers and the body.

        Raises:
            ValidationError: as :meth:`encode`.
        """
        try:  # keyed by the member's id: enum members hash in Python, ints in C
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
        if moment.tzinfo is UTC and moment.microsecond:  # else msgspec drops the fraction
            created = _encoder.encode(moment)[1:-1]  # RFC 3339 with "Z", as format_timestamp
        else:
            created = format_timestamp(moment).encode()
        if message.correlation_id is None and message.causation_id is None and not message.headers:
            block = b"%s%s\r\nDeltran-Created-At: %s\r\n\r\n" % (
                route.block_prefix,
                message_id.encode(),
                created,
            )
        else:
            block = self._block_with_options(route, message, created)
        try:
            body = _encoder.encode(message.payload)
        except (TypeError, ValueError, OverflowError):
            body = encode_payload(message.payload)  # raises the ValidationError
        return EncodedBlock(route.subject, block, body, route.partition)

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
        _parse_key(suffix)  # canonical: nothing but allow-listed tokens reaches the wire
        subject, template = _template(message_type, suffix, self.partitions)
        prefix = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in template.items())
        partition = template.get(H_PARTITION)
        route = _Route(
            subject,
            None if partition is None else int(partition),
            (prefix + H_MSG_ID + ": ").encode(),
        )
        routes = self._routes.setdefault(id(message_type), {})
        if len(routes) >= _ROUTES_MAX:
            routes.clear()
        routes[suffix] = route
        return route

    @staticmethod
    def _block_with_options(route: _Route, message: Message, created: bytes) -> bytes:
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

    def decode(self, subject: str, headers: Mapping[str, str] | None, body: bytes) -> Message:
        """Decode a received message.

        Raises:
            DecodeError: a header is missing or malformed, the subject does not match
                the headers (a misrouted message), or the body is not JSON.
        """
        if not headers:
            raise DecodeError("headers", "no headers: not a DelTran message")
        type_name = headers.get(H_TYPE)
        if type_name is None:
            raise DecodeError(H_TYPE, "missing")
        try:
            message_type = MessageType.from_wire(type_name)
        except KeyError:
            raise DecodeError(H_TYPE, f"unknown message type {type_name!r}") from None
        suffix = headers.get(H_PARTITION_KEY)
        if suffix is None:
            raise DecodeError(H_PARTITION_KEY, "missing")
        try:
            key = _parse_key(suffix)
        except ValidationError as exc:
            raise DecodeError(H_PARTITION_KEY, str(exc)) from None
        expected_subject = f"{message_type.subject_prefix}.{suffix}"
        if subject != expected_subject:
            raise DecodeError(
                "subject", f"{subject!r} does not match headers (expected {expected_subject!r})"
            )
        message_id = headers.get(H_MSG_ID)
        try:
            check_id(H_MSG_ID, message_id)
        except ValidationError as exc:
            raise DecodeError(H_MSG_ID, exc.reason if message_id else "missing") from None
        created_text = headers.get(H_CREATED_AT)
        if created_text is None:
            raise DecodeError(H_CREATED_AT, "missing")
        try:
            created_at = parse_timestamp(created_text)
        except ValueError as exc:
            raise DecodeError(H_CREATED_AT, f"{created_text!r}: {exc}") from None
        partition, partitions = self._decode_partition(headers, suffix)
        content_type = headers.get(H_CONTENT_TYPE)
        if content_type is not None and content_type.split(";")[0].strip() != CONTENT_TYPE_JSON:
            raise DecodeError(H_CONTENT_TYPE, f"unsupported {content_type!r}")
        try:
            payload = _decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise DecodeError("body", f"not JSON: {exc}") from None
        correlation_id = headers.get(H_CORRELATION_ID)
        causation_id = headers.get(H_CAUSATION_ID)
        for name, value in ((H_CORRELATION_ID, correlation_id), (H_CAUSATION_ID, causation_id)):
            if value is not None:
                try:
                    check_id(name, value)
                except ValidationError as exc:
                    raise DecodeError(name, exc.reason) from None
        user = {k: v for k, v in headers.items() if not k.startswith(_RESERVED_PREFIXES)}
        user.pop(H_CONTENT_TYPE, None)
        return Message(
            id=message_id,  # type: ignore[arg-type]  # checked above
            message_type=message_type,
            partition_key=key,
            payload=payload,
            created_at=created_at,
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers=MappingProxyType(user),
            partition=partition,
            partitions=partitions,
        )

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
            payload = _decoder.decode(body)
        except (ValueError, msgspec.DecodeError):
            return None
        correlation_id = causation_id = None
        user = _EMPTY_HEADERS
        if count > 4:
            options = _parse_header_lines(lines[2:-2])
            if options is None:
                return None
            correlation_id = options.pop(H_CORRELATION_ID, None)
            causation_id = options.pop(H_CAUSATION_ID, None)
            if (correlation_id is not None and not _is_id(correlation_id)) or (
                causation_id is not None and not _is_id(causation_id)
            ):
                return None
            if options:
                for name in options:
                    if name.startswith(_RESERVED_PREFIXES) or name == H_CONTENT_TYPE:
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

    @staticmethod
    def _decode_partition(headers: Mapping[str, str], suffix: str) -> tuple[int | None, int | None]:
        partition_text = headers.get(H_PARTITION)
        partitions_text = headers.get(H_PARTITIONS)
        if partition_text is None and partitions_text is None:
            return None, None
        if suffix == "broadcast":
            raise DecodeError(H_PARTITION, "a broadcast message has no partition")
        if partition_text is None or partitions_text is None:
            raise DecodeError(H_PARTITION, f"{H_PARTITION} and {H_PARTITIONS} go together")
        if not (partition_text.isascii() and partition_text.isdigit()):
            raise DecodeError(H_PARTITION, f"not a number: {partition_text!r}")
        if not (partitions_text.isascii() and partitions_text.isdigit()):
            raise DecodeError(H_PARTITIONS, f"not a number: {partitions_text!r}")
        partition, partitions = int(partition_text), int(partitions_text)
        try:
            expected = partition_of(suffix, partitions)
        except ValidationError as exc:
            raise DecodeError(H_PARTITIONS, exc.reason) from None
        if partition != expected:
            raise DecodeError(
                H_PARTITION, f"{partition} is not the partition of {suffix!r} ({expected})"
            )
        return partition, partitions


def _learn_decode_route(prefix: bytes) -> _DecodeRoute | None:
    """Validates a header-block prefix as :meth:`WireCodec.decode` validates those
    headers; caches and returns its meaning, or None if it is anything unusual."""
    if not prefix.startswith(_BLOCK_START):
        return None
    headers = _parse_header_lines(prefix[len(_BLOCK_START) :].split(b"\r\n"))
    if headers is None or not headers.keys() <= _STATIC_HEADERS:
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
        key = _parse_key(suffix)
        partition, partitions = WireCodec._decode_partition(headers, suffix)
    except (KeyError, ValidationError, DecodeError):
        return None
    route = _DecodeRoute(
        f"{message_type.subject_prefix}.{suffix}", message_type, key, partition, partitions
    )
    if len(_decode_routes) >= _ROUTES_MAX:
        _decode_routes.clear()
    _decode_routes[prefix] = route
    return route


__all__ = [
    "Encoded",
    "EncodedBlock",
    "WireCodec",
    "encode_payload",
    "format_timestamp",
    "parse_timestamp",
]
