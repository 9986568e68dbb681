"""The AsyncAPI 3.0.0 document of a bus: channels, messages, headers, payload schemas, groups.

:func:`asyncapi_document` describes the catalog's message types (one channel per type,
addressed ``deltran.{type_subject}.{partitionKey}``), the envelope headers of the wire
format, the payload schema of each type (from its msgspec Struct), a ``send`` operation
per type and a ``receive`` operation per consumer group that handles it, and the servers
of the settings. :func:`dump_json` and :func:`dump_yaml` write it.

Handler registrations come in as plain :class:`Operation` records, so anything that
registers handlers (an application object, a list in a test) can feed the document.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import msgspec

from message_bus.domain import payloads
from message_bus.domain.catalog import SUBJECT_ROOT, MessageType, StreamCatalog, StreamSpec
from message_bus.domain.codec import (
    CONTENT_TYPE_JSON,
    H_CAUSATION_ID,
    H_CONTENT_TYPE,
    H_CORRELATION_ID,
    H_CREATED_AT,
    H_MSG_ID,
    H_PARTITION,
    H_PARTITION_KEY,
    H_PARTITIONS,
    H_TYPE,
)
from message_bus.domain.errors import ValidationError
from message_bus.domain.partition import MAX_PARTITIONS
from message_bus.ports.config import ORDERINGS, Ordering, check_consumer_name_part

from .config import BusSettings

__all__ = [
    "ASYNCAPI_VERSION",
    "PARTITION_KEY_PARAMETER",
    "Operation",
    "asyncapi_document",
    "channel_id",
    "dump_json",
    "dump_yaml",
    "payload_struct",
]

ASYNCAPI_VERSION = "3.0.0"
PARTITION_KEY_PARAMETER = "partitionKey"
"""The channel parameter standing for the partition key suffix of a subject."""

_REF_TEMPLATE = "#/components/schemas/{name}"
_NATS_BINDING_VERSION = "0.1.0"
_DAY = 24 * 60 * 60.0
_KEY_EXAMPLES = ["corridor.USD-EUR", "bank.BANKGB2L", "corridor.USD-EUR.bank.BANKGB2L", "broadcast"]
_MESSAGE_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[!-~]+$"}
_FREE_FORM = {
    "type": "object",
    "description": "Free-form JSON: this type has no payload Struct.",
    "additionalProperties": True,
}


@dataclass(frozen=True, slots=True)
class Operation:
    """One handler registration: a consumer group that receives one message type.

    Each becomes a ``receive`` operation of the type's channel. An application object
    that registers handlers turns each registration into one of these.

    Attributes:
        message_type: the type the handler receives.
        group: the consumer group (members share the messages; each group sees all).
        ordering: ``"none"`` (a shared group) or ``"partition"`` (an ordered group).
        handler: the handler's name, shown in the document (optional).
    """

    message_type: MessageType
    group: str
    ordering: Ordering = "none"
    handler: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.message_type, MessageType):
            raise ValidationError("message_type", self.message_type, "must be a MessageType")
        check_consumer_name_part("group", self.group)
        if self.ordering not in ORDERINGS:
            raise ValidationError("ordering", self.ordering, f"must be one of {ORDERINGS}")
        if self.handler is not None and (
            not isinstance(self.handler, str) or not self.handler.strip()
        ):
            raise ValidationError("handler", self.handler, "must be a non-empty str or None")


def channel_id(message_type: MessageType) -> str:
    """The channel (and message) id of a type in the document: its wire name."""
    return message_type.value


def payload_struct(message_type: MessageType) -> type[msgspec.Struct] | None:
    """The payload Struct of a type: the one the catalog holds for it (a registered
    type's ``payload``), else the Struct of :mod:`message_bus.domain.payloads` named as
    the type's wire name, or None (a free-form payload)."""
    registered = message_type.payload_type
    if registered is not None:
        return registered
    found = getattr(payloads, message_type.value, None)
    if isinstance(found, type) and issubclass(found, msgspec.Struct):
        return found
    return None


def asyncapi_document(
    catalog: StreamCatalog | None = None,
    operations: Iterable[Operation] = (),
    *,
    settings: BusSettings | None = None,
    message_types: Iterable[MessageType] | None = None,
    payload_types: Mapping[MessageType, type[msgspec.Struct] | None] | None = None,
    title: str = "DelTran message bus",
    version: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the catalog's types and the given handlers.

    Args:
        catalog: the streams (default: :meth:`StreamCatalog.default`); a type with no
            stream is core NATS (request-reply or broadcast).
        operations: the handler registrations; each is a ``receive`` operation
            (duplicates of one type and group are one operation).
        settings: the servers come from ``settings.nats.urls`` (credentials never
            appear), and the partition count from ``settings.partitions``; None: no servers.
        message_types: the types to describe (default: every :class:`MessageType`).
        payload_types: a payload Struct per type, overriding :func:`payload_struct`
            (None for a type: free-form).
        title: the document's title.
        version: the described API's version (default: this package's version).
        description: the document's description (default: a summary of the bus).

    Raises:
        ValidationError: an operation is not an :class:`Operation`, or names a type that
            is not described.
    """
    catalog = StreamCatalog.default() if catalog is None else catalog
    types = list(MessageType if message_types is None else dict.fromkeys(message_types))
    structs = {t: payload_struct(t) for t in types}
    if payload_types is not None:
        structs.update({t: s for t, s in payload_types.items() if t in structs})
    ops = _checked_operations(operations, types)
    partitions = settings.partitions if settings is not None else None

    schemas = _payload_schemas(structs)
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    doc_operations: dict[str, Any] = {}
    for message_type in types:
        cid = channel_id(message_type)
        stream = catalog.stream_for(message_type)
        channels[cid] = _channel(message_type, stream)
        messages[cid] = _message(message_type, structs[message_type], partitions)
        doc_operations[f"send{cid}"] = _send(message_type, stream)
    for op in ops:
        doc_operations[f"receive{channel_id(op.message_type)}-{op.group}"] = _receive(
            op, catalog.stream_for(op.message_type)
        )

    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title,
            "version": version if version is not None else _package_version(),
            "description": description if description is not None else _DESCRIPTION,
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": CONTENT_TYPE_JSON,
    }
    if settings is not None:
        document["servers"] = _servers(settings)
    document["channels"] = channels
    document["operations"] = doc_operations
    document["components"] = {
        "schemas": schemas,
        "messages": messages,
        "parameters": {PARTITION_KEY_PARAMETER: _partition_key_parameter()},
    }
    return document


def dump_json(document: Mapping[str, Any]) -> str:
    """The document as indented JSON, ending with a newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def dump_yaml(document: Mapping[str, Any]) -> str:
    """The document as block-style YAML (every string quoted, so nothing is retyped)."""
    if not document:
        return "{}\n"
    lines: list[str] = []
    _yaml_mapping(document, 0, lines)
    return "\n".join(lines) + "\n"


_DESCRIPTION = (
    "DelTran's payment-settlement messages over NATS JetStream. Every subject is "
    f"`{SUBJECT_ROOT}.{{type_subject}}.{{partitionKey}}`; the body is the JSON payload and "
    "the envelope travels in headers (see docs/wire-format.md). Stream-backed types are "
    "delivered at least once to every consumer group; the members of a group share its "
    "messages (an ordered group handles each partition in stream order)."
)


def _package_version() -> str:
    try:
        return metadata.version("deltran-message-bus")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _checked_operations(
    operations: Iterable[Operation], types: Sequence[MessageType]
) -> list[Operation]:
    seen: dict[tuple[MessageType, str], Operation] = {}
    for op in operations:
        if not isinstance(op, Operation):
            raise ValidationError("operations", op, "must hold Operation records")
        if op.message_type not in types:
            raise ValidationError(
                "operations", op, f"names {op.message_type.value}, which is not described"
            )
        key = (op.message_type, op.group)
        earlier = seen.get(key)
        if earlier is not None and earlier.ordering != op.ordering:
            raise ValidationError(
                "operations",
                op,
                f"group {op.group!r} of {op.message_type.value} is registered both "
                f"{earlier.ordering!r} and {op.ordering!r}",
            )
        seen.setdefault(key, op)
    return list(seen.values())


def _payload_schemas(structs: Mapping[MessageType, type[msgspec.Struct] | None]) -> dict[str, Any]:
    present = list(dict.fromkeys(s for s in structs.values() if s is not None))
    if not present:
        return {}
    _, components = msgspec.json.schema_components(present, ref_template=_REF_TEMPLATE)
    return dict(sorted(components.items()))


def _payload_ref(struct: type[msgspec.Struct] | None) -> dict[str, Any]:
    if struct is None:
        return dict(_FREE_FORM)
    return {"$ref": _REF_TEMPLATE.format(name=struct.__name__)}


def _channel(message_type: MessageType, stream: StreamSpec | None) -> dict[str, Any]:
    cid = channel_id(message_type)
    if stream is None:
        kind = (
            "core NATS broadcast (no stream): every subscriber receives it while connected"
            if message_type is MessageType.SYSTEM_EVENT
            else "core NATS request-reply (no stream): one member of a group answers"
        )
    else:
        kind = (
            f"stream `{stream.name}` ({', '.join(stream.subjects)}), kept "
            f"{_duration(stream.max_age)}; at-least-once delivery, deduplicated on "
            f"`{H_MSG_ID}`"
        )
    channel: dict[str, Any] = {
        "address": f"{message_type.subject_prefix}.{{{PARTITION_KEY_PARAMETER}}}",
        "title": cid,
        "description": f"{cid} messages: {kind}.",
        "messages": {cid: {"$ref": f"#/components/messages/{cid}"}},
        "parameters": {
            PARTITION_KEY_PARAMETER: {"$ref": f"#/components/parameters/{PARTITION_KEY_PARAMETER}"}
        },
    }
    if stream is not None:
        channel["x-deltran-stream"] = {
            "name": stream.name,
            "subjects": list(stream.subjects),
            "maxAgeSeconds": stream.max_age,
        }
    return channel


def _duration(seconds: float) -> str:
    days = seconds / _DAY
    if days >= 1 and math.isclose(days, round(days)):
        return f"{round(days)} day{'s' if round(days) != 1 else ''}"
    return f"{seconds:g} s"


def _message(
    message_type: MessageType, struct: type[msgspec.Struct] | None, partitions: int | None
) -> dict[str, Any]:
    cid = channel_id(message_type)
    message: dict[str, Any] = {
        "name": cid,
        "title": cid,
        "contentType": CONTENT_TYPE_JSON,
        "headers": _headers(message_type, partitions),
        "payload": _payload_ref(struct),
    }
    doc = (struct.__doc__ or "").strip().splitlines() if struct is not None else []
    if doc:
        message["summary"] = doc[0]
    return message


def _headers(message_type: MessageType, partitions: int | None) -> dict[str, Any]:
    count: dict[str, Any] = {"type": "string", "pattern": r"^[1-9][0-9]{0,3}$"}
    count["description"] = f"Partition count the number was computed with (1..{MAX_PARTITIONS})" + (
        f"; this deployment publishes {partitions}." if partitions is not None else "."
    )
    properties: dict[str, Any] = {
        H_MSG_ID: {
            **_MESSAGE_ID,
            "description": "Message id (a UUIDv7); JetStream deduplicates retries on it.",
        },
        H_TYPE: {"type": "string", "const": message_type.value, "description": "Wire name."},
        H_PARTITION_KEY: {
            "type": "string",
            "description": "Canonical partition key: the subject's suffix.",
            "examples": list(_KEY_EXAMPLES),
        },
        H_PARTITION: {
            "type": "string",
            "pattern": r"^(0|[1-9][0-9]{0,3})$",
            "description": "Partition number, decimal; absent for broadcast.",
        },
        H_PARTITIONS: count,
        H_CREATED_AT: {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 creation time (produced as UTC with microseconds).",
        },
        H_CORRELATION_ID: {
            **_MESSAGE_ID,
            "description": "Id shared by one flow (one payment).",
        },
        H_CAUSATION_ID: {
            **_MESSAGE_ID,
            "description": "Id of the message that caused this one.",
        },
        H_CONTENT_TYPE: {"type": "string", "const": CONTENT_TYPE_JSON},
        "traceparent": {
            "type": "string",
            "pattern": r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C Trace Context: one payment's flow is one trace.",
        },
        "tracestate": {"type": "string", "description": "W3C Trace Context vendor state."},
    }
    return {
        "type": "object",
        "description": (
            "Envelope headers. User headers may be added; they may not start with "
            "`Nats-` or `Deltran-`, and no value holds CR, LF or NUL."
        ),
        "required": [H_MSG_ID, H_TYPE, H_PARTITION_KEY, H_CREATED_AT],
        "properties": properties,
        "additionalProperties": {"type": "string"},
    }


def _partition_key_parameter() -> dict[str, Any]:
    return {
        "description": (
            "The partition key suffix (one or more subject tokens): `corridor.{AAA-BBB}`, "
            "`bank.{BIC}`, `corridor.{AAA-BBB}.bank.{BIC}` or `broadcast`. Tokens are "
            "checked against allow-lists (currency pair, BIC) before any subject exists."
        ),
        "examples": list(_KEY_EXAMPLES),
    }


def _send(message_type: MessageType, stream: StreamSpec | None) -> dict[str, Any]:
    cid = channel_id(message_type)
    if stream is None:
        summary = f"Send a {cid} on core NATS (no stream)."
    else:
        summary = (
            f"Publish a {cid}; the publish returns when stream {stream.name} has stored it "
            "(retries reuse the message id, so the stream keeps one copy)."
        )
    return {
        "action": "send",
        "channel": {"$ref": f"#/channels/{cid}"},
        "title": f"Publish {cid}",
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{cid}/messages/{cid}"}],
    }


def _receive(op: Operation, stream: StreamSpec | None) -> dict[str, Any]:
    cid = channel_id(op.message_type)
    how = (
        "ordered: each partition is owned by one member and handled in stream order"
        if op.ordering == "partition"
        else "shared: members share the messages, in no particular order"
    )
    where = f"a durable consumer on stream {stream.name}" if stream is not None else "core NATS"
    receive: dict[str, Any] = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{cid}"},
        "title": f"{op.group} receives {cid}",
        "summary": f"Consumer group `{op.group}` ({how}; {where}).",
        "messages": [{"$ref": f"#/channels/{cid}/messages/{cid}"}],
        "x-deltran-consumer-group": op.group,
        "x-deltran-ordering": op.ordering,
    }
    if op.handler is not None:
        receive["x-deltran-handler"] = op.handler
    if stream is None:  # a core subscription: the group is a NATS queue group
        receive["bindings"] = {"nats": {"queue": op.group, "bindingVersion": _NATS_BINDING_VERSION}}
    return receive


def _servers(settings: BusSettings) -> dict[str, Any]:
    servers: dict[str, Any] = {}
    for index, url in enumerate(settings.nats.urls):
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        scheme = parts.scheme or "nats"
        server: dict[str, Any] = {
            "host": host,
            "protocol": "nats" if scheme in ("nats", "tls") else scheme,
            "description": f"NATS server ({scheme}://)"
            + (" with TLS" if settings.nats.requires_tls else ""),
        }
        servers[f"nats-{index}"] = server
    return servers


# -- YAML ---------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$.\-]*$")
_MAX_IMPLICIT_KEY = 1000
_YAML_WORDS = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"})


_YAML_UNSAFE = re.compile(
    "[^\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


def _yaml_string(text: str) -> str:
    """A double-quoted YAML string: quotes and backslashes escaped, and every character that
    YAML does not print as itself (controls, line separators, BOM) as an escape."""
    body = text.replace("\\", "\\\\").replace('"', '\\"')

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return f'"{_YAML_UNSAFE.sub(escape, body)}"'


def _yaml_key(key: str) -> str:
    if _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_WORDS:
        return key
    return _yaml_string(key)


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError("document", value, "holds a non-finite number")
        mantissa, e, exponent = repr(value).partition("e")
        if e and "." not in mantissa:  # YAML 1.1 reads ``1e-05`` as a string, ``1.0e-05`` not
            mantissa += ".0"
        return f"{mantissa}{e}{exponent}"
    if isinstance(value, str):
        return _yaml_string(value)
    raise ValidationError("document", value, "holds a value that is not JSON")


def _yaml_mapping(mapping: Mapping[str, Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key, value in mapping.items():
        shown = _yaml_key(str(key))
        if len(shown) > _MAX_IMPLICIT_KEY:  # YAML allows longer keys only as explicit ones
            lines.append(f"{pad}? {shown}")
            shown = ""
        head = f"{pad}{shown}:"
        if isinstance(value, Mapping) and value:
            lines.append(head)
            _yaml_mapping(value, indent + 2, lines)
        elif isinstance(value, list) and value:
            lines.append(head)
            _yaml_sequence(value, indent + 2, lines)
        else:
            lines.append(f"{head} {_yaml_inline_empty(value)}")


def _yaml_sequence(items: Sequence[Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in items:
        if isinstance(item, Mapping) and item:
            nested: list[str] = []
            _yaml_mapping(item, indent + 2, nested)
            lines.append(f"{pad}- {nested[0][indent + 2 :]}")
            lines.extend(nested[1:])
        elif isinstance(item, list) and item:
            lines.append(f"{pad}-")
            _yaml_sequence(item, indent + 2, lines)
        else:
            lines.append(f"{pad}- {_yaml_inline_empty(item)}")


def _yaml_inline_empty(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _yaml_scalar(value)
