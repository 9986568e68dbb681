"""The wire codec: ``Message`` <-> (subject, headers, body), shared by every adapter.

The format is documented in ``docs/wire-format.md``; this module is its reference
implementation. Body: the payload as JSON. Envelope: NATS headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple

import msgspec

from .catalog import MessageType
from .errors import DecodeError, ValidationError
from .message import Message, check_header, check_id, check_payload_numbers
from .partition import DEFAULT_PARTITIONS, PartitionKey, check_partition_count, partition_of

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
RESERVED_PREFIXES = ("Nats-", "Deltran-", "nats-", "deltran-", "NATS-", "DELTRAN-")
"""Header name prefixes of the envelope; user headers may not use them."""
STATIC_HEADERS = frozenset({H_TYPE, H_PARTITION_KEY, H_PARTITION, H_PARTITIONS, H_CONTENT_TYPE})
"""The envelope headers fixed by (type, key, partition count): the same for every message."""

JSON_ENCODER = msgspec.json.Encoder(decimal_format="string")
"""The body encoder (decimals as strings, so no amount loses precision)."""
JSON_DECODER = msgspec.json.Decoder()
"""The body decoder."""


class Encoded(NamedTuple):
    """A message as it travels: subject, headers and body bytes."""

    subject: str
    headers: dict[str, str]
    body: bytes


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: ``2026-11-27T13:57:19.123456Z``."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


def is_id(value: object) -> bool:
    """``check_id`` without the exception: 1-128 printable ASCII characters, no spaces."""
    return (
        type(value) is str
        and 0 < len(value) <= 128
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


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
def envelope_template(
    message_type: MessageType, suffix: str, partitions: int
) -> tuple[str, dict[str, str]]:
    """(subject, static envelope headers in wire order) of a (type, key suffix, partition
    count); cached. The caller copies the dict before changing it."""
    headers = {H_TYPE: message_type.value, H_PARTITION_KEY: suffix}
    if suffix != "broadcast":
        headers[H_PARTITION] = str(partition_of(suffix, partitions))
        headers[H_PARTITIONS] = str(partitions)
    headers[H_CONTENT_TYPE] = CONTENT_TYPE_JSON
    return f"{message_type.subject_prefix}.{suffix}", headers


@lru_cache(maxsize=16384)
def parse_key(suffix: str) -> PartitionKey:
    """The partition key of a canonical suffix (cached).

    Raises:
        ValidationError: not a canonical suffix.
    """
    return PartitionKey.parse(suffix)


def encode_payload(payload: Any) -> bytes:
    """The payload as JSON bytes.

    Raises:
        ValidationError: the payload is not JSON-compatible, or holds a NaN or infinite
            number (``field`` is its JSON path, e.g. ``payload.amount``).
    """
    try:
        body = JSON_ENCODER.encode(payload)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError("payload", payload, f"is not JSON-encodable: {exc}") from exc
    if b"null" in body:  # a float NaN or infinity would travel as null: look closer
        check_payload_numbers(payload, body)
    return body


class WireCodec:
    """Encodes and decodes messages per the wire format, with a fixed partition count.

    Encoding caches the subject and static headers of each (type, key), so the per
    message work is the body and three or four header values.
    """

    def __init__(self, partitions: int = DEFAULT_PARTITIONS) -> None:
        self.partitions = check_partition_count(partitions)

    def encode(self, message: Message) -> Encoded:
        """Encode ``message``; raises :class:`ValidationError` before any I/O if it can't.

        The envelope is checked again here (not only in ``Message.new``) because a
        ``Message`` built directly or with ``msgspec.structs.replace`` skips that check:
        nothing unchecked reaches a subject or a header.
        """
        check_id("id", message.id)
        subject, template = envelope_template(
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
            key = parse_key(suffix)
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
        partition, partitions = decode_partition(headers, suffix)
        content_type = headers.get(H_CONTENT_TYPE)
        if content_type is not None and content_type.split(";")[0].strip() != CONTENT_TYPE_JSON:
            raise DecodeError(H_CONTENT_TYPE, f"unsupported {content_type!r}")
        try:
            payload = JSON_DECODER.decode(body)
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
        user = {k: v for k, v in headers.items() if not k.startswith(RESERVED_PREFIXES)}
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


def decode_partition(headers: Mapping[str, str], suffix: str) -> tuple[int | None, int | None]:
    """(partition, partition count) of ``headers``, checked against ``suffix``; both None
    when the message carries none.

    Raises:
        DecodeError: they are malformed, or not the partition of ``suffix``.
    """
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


__all__ = [
    "JSON_DECODER",
    "JSON_ENCODER",
    "RESERVED_PREFIXES",
    "STATIC_HEADERS",
    "Encoded",
    "WireCodec",
    "decode_partition",
    "encode_payload",
    "envelope_template",
    "format_timestamp",
    "is_id",
    "parse_key",
    "parse_timestamp",
]
