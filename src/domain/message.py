"""The message envelope."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, TypeVar

import msgspec

from .catalog import MessageType
from .errors import ValidationError
from .ids import new_message_id
from .partition import PartitionKey

T = TypeVar("T")

RESERVED_HEADER_PREFIXES = ("nats-", "deltran-")
RESERVED_HEADER_NAMES = frozenset({"content-type"})
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00\ud800-\udfff]")
_ID = re.compile(r"[!-~]{1,128}")  # printable ASCII, no space, no control characters
_EMPTY: Mapping[str, str] = MappingProxyType({})
_EDGE_SPACE = " \t\x0b\x0c"
"""What NATS clients strip from both ends of a header value (``bytes.strip`` and Go's
``textproto`` trim ASCII whitespace; CR and LF are refused anyway)."""
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PACK_PROBE = msgspec.msgpack.Encoder(decimal_format="string")
_SCALARS = frozenset({str, int, bool, type(None)})  # never NaN or infinite
"""What a non-finite number turns into in JSON: msgspec writes a NaN or infinite float
as ``null``, a NaN or infinite Decimal as ``"NaN"`` / ``"Infinity"``. A body without
any of them holds no non-finite number, so only such bodies are searched."""
_MAX_DEPTH = 1000


def check_header(name: object, value: object) -> None:
    """Raise :class:`ValidationError` unless ``name: value`` is a safe user header."""
    if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
        raise ValidationError("headers", name, "header name must be a non-empty HTTP token")
    lowered = name.lower()
    if lowered.startswith(RESERVED_HEADER_PREFIXES) or lowered in RESERVED_HEADER_NAMES:
        raise ValidationError(
            "headers", name, "header name is reserved (Nats-*, Deltran-*, Content-Type)"
        )
    if not isinstance(value, str):
        raise ValidationError(f"headers[{name!r}]", value, "header value must be a str")
    if _FORBIDDEN_IN_VALUE.search(value) is not None:
        raise ValidationError(
            f"headers[{name!r}]", value, "header value holds CR, LF or NUL, or a lone surrogate"
        )
    if value and (value[0] in _EDGE_SPACE or value[-1] in _EDGE_SPACE):
        raise ValidationError(
            f"headers[{name!r}]",
            value,
            "header value starts or ends with whitespace (NATS clients strip it in transit)",
        )


def check_payload_numbers(payload: Any, body: bytes | None = None) -> None:
    """Raise :class:`ValidationError` if ``payload`` holds a NaN or infinite number.

    JSON has no NaN or infinity: a float one would travel as ``null`` and a Decimal one
    as a string, so the handler would get something other than what was sent. The
    error's ``field`` is the JSON path of the first one (``payload.amount``,
    ``payload.legs[1].fee``).

    Args:
        payload: the payload (JSON-compatible values, msgspec Structs, dataclasses).
        body: ``payload`` already encoded as JSON, if the caller has it: a body without
            ``null``, ``NaN`` or ``Infinity`` needs no search.
    """
    if body is None:
        if type(payload) is dict:  # the common payload: flat, of strings and ints
            for value in payload.values():
                if type(value) not in _SCALARS:
                    break
            else:
                return
        if _all_finite(payload, decimals=True):
            return
    # One C search each (find: ``in`` on bytes tries the needle as an int first, at
    # twice the cost); a Decimal NaN or infinity is encoded as "NaN"/"Infinity", a
    # float one as null, which is also what None is.
    elif (
        body.find(b"NaN") < 0
        and body.find(b"Infinity") < 0
        and (body.find(b"null") < 0 or _all_finite(payload, decimals=False))
    ):
        return
    found = _non_finite(payload, "payload", 0)
    if found is not None:
        path, value = found
        raise ValidationError(path, value, "is not a finite number (JSON has no NaN or infinity)")


def _all_finite(payload: Any, *, decimals: bool) -> bool:
    """Whether every float in ``payload`` (and with ``decimals``, every Decimal) is
    finite, read from its MessagePack form (C, no walk in Python): there every float is
    ``0xcb`` and eight big-endian bytes, and a NaN or an infinity has all eleven
    exponent bits set, so it starts ``7f f`` or ``ff f``; a Decimal is its text. False
    when that cannot be told (a string that holds those bytes, or a payload MessagePack
    cannot encode): then the payload is walked."""
    try:
        packed = _PACK_PROBE.encode(payload)
    except (TypeError, ValueError, OverflowError):
        return False
    if decimals and (packed.find(b"NaN") >= 0 or packed.find(b"Infinity") >= 0):
        return False
    at = packed.find(b"\xcb")
    while at >= 0:
        if at + 2 < len(packed) and packed[at + 1] in (0x7F, 0xFF) and packed[at + 2] >= 0xF0:
            return False
        at = packed.find(b"\xcb", at + 1)
    return True


def _non_finite(value: Any, path: str, depth: int) -> tuple[str, Any] | None:
    """(JSON path, value) of the first NaN or infinite number in ``value``, else None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, Decimal):
        return None if value.is_finite() else (path, value)
    if depth >= _MAX_DEPTH or isinstance(value, str | bytes | int):
        return None
    children: Any
    names: tuple[str, ...] | None = None
    if isinstance(value, Mapping):
        children = ((_member(path, key), item) for key, item in value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        children = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    elif isinstance(value, msgspec.Struct):
        names = value.__struct_fields__
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = tuple(f.name for f in dataclasses.fields(value))
    else:
        return None
    if names is not None:
        children = ((f"{path}.{name}", getattr(value, name)) for name in names)
    for where, item in children:
        found = _non_finite(item, where, depth + 1)
        if found is not None:
            return found
    return None


def _member(path: str, key: object) -> str:
    """The JSON path of ``key`` in the object at ``path``: ``a.b`` or ``a['b c']``."""
    if isinstance(key, str) and _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def check_id(field: str, value: object) -> str:
    """Return ``value`` if it is a usable id (1-128 printable ASCII, no spaces), else raise."""
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise ValidationError(field, value, "must be 1-128 printable ASCII characters, no spaces")
    return value


def freeze_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """Validate user headers and return a read-only copy."""
    if not headers:
        return _EMPTY
    if not isinstance(headers, Mapping):
        raise ValidationError("headers", headers, "must be a mapping of str to str")
    for name, value in headers.items():
        check_header(name, value)
    return MappingProxyType(dict(headers))


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """An immutable DelTran message: what it is, where it goes, and what it carries.

    Create one with :meth:`Message.new`. Received messages also carry the partition
    number and count they were published with (``partition``, ``partitions``).

    Attributes:
        id: UUIDv7 string; the deduplication key on the wire (``Nats-Msg-Id``).
        message_type: a :class:`MessageType` of the catalog (built in or registered).
        partition_key: routing key; its canonical form is the subject suffix.
        payload: a JSON-compatible value or a msgspec Struct.
        created_at: creation time, UTC.
        correlation_id: id shared by every message of one flow (e.g. one payment).
        causation_id: id of the message that caused this one.
        headers: user headers (no reserved names, no CR/LF/NUL).
        partition: partition number the message was published to (None for broadcast
            or before publish).
        partitions: the partition count that number was computed with.
    """

    id: str
    message_type: MessageType
    partition_key: PartitionKey
    payload: Any
    created_at: datetime
    correlation_id: str | None = None
    causation_id: str | None = None
    headers: Mapping[str, str] = _EMPTY
    partition: int | None = None
    partitions: int | None = None

    @classmethod
    def new(
        cls,
        message_type: MessageType,
        partition_key: PartitionKey,
        payload: Any,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        created_at: datetime | None = None,
    ) -> Message:
        """Build a new message with a fresh UUIDv7 id and the current UTC time.

        Raises:
            ValidationError: a field is of the wrong type or unsafe for the wire.
        """
        if not isinstance(message_type, MessageType):
            raise ValidationError("message_type", message_type, "must be a MessageType")
        if not isinstance(partition_key, PartitionKey) or type(partition_key) is PartitionKey:
            raise ValidationError(
                "partition_key", partition_key, "must be built with PartitionKey.corridor/..."
            )
        if correlation_id is not None:
            check_id("correlation_id", correlation_id)
        if causation_id is not None:
            check_id("causation_id", causation_id)
        check_payload_numbers(payload)
        if created_at is None:
            created_at = datetime.now(UTC)  # already UTC: no conversion needed
        elif created_at.tzinfo is None:
            raise ValidationError("created_at", created_at, "must be timezone-aware")
        else:
            created_at = created_at.astimezone(UTC)
        return cls(
            id=new_message_id() if message_id is None else check_id("message_id", message_id),
            message_type=message_type,
            partition_key=partition_key,
            payload=payload,
            created_at=created_at,
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers=_EMPTY if headers is None else freeze_headers(headers),
        )

    @property
    def subject(self) -> str:
        """``deltran.{type_subject}.{partition suffix}``."""
        return f"{self.message_type.subject_prefix}.{self.partition_key.suffix}"

    def reply(
        self,
        message_type: MessageType,
        payload: Any,
        partition_key: PartitionKey | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """A message caused by this one: same correlation id, causation id = this id."""
        return Message.new(
            message_type,
            self.partition_key if partition_key is None else partition_key,
            payload,
            correlation_id=self.correlation_id or self.id,
            causation_id=self.id,
            headers=headers,
        )

    def with_headers(self, extra: Mapping[str, str]) -> Message:
        """A copy with ``extra`` user headers added (validated)."""
        merged = dict(self.headers)
        merged.update(extra)
        return msgspec.structs.replace(self, headers=freeze_headers(merged))

    def payload_as(self, payload_type: type[T]) -> T:
        """The payload converted and validated as ``payload_type`` (e.g. a msgspec Struct).

        Raises:
            ValidationError: the payload does not fit ``payload_type``.
        """
        if isinstance(self.payload, payload_type):
            return self.payload
        try:
            return msgspec.convert(self.payload, payload_type, strict=False)
        except msgspec.ValidationError as exc:
            raise ValidationError("payload", self.payload, str(exc)) from exc
