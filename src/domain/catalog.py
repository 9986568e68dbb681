"""Message types, their subjects and payloads, and the JetStream streams that hold them."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NoReturn

import msgspec

from . import payloads as p
from .errors import ValidationError

SUBJECT_ROOT = "deltran"
DEAD_LETTER_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.dlq"

_DAY = 24 * 60 * 60.0

_WIRE_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
_SUBJECT_TOKENS = re.compile(r"[a-z][a-z0-9_-]{0,31}(?:\.[a-z][a-z0-9_-]{0,31}){0,3}")
_STREAM_NAME = re.compile(r"[A-Z][A-Z0-9_-]{0,63}")
_RESERVED_TOKENS = frozenset({"dlq", "replay"})
"""First subject tokens no type may use: the dead-letter and replay subjects'."""


Storage = Literal["file", "memory"]
Discard = Literal["new", "old"]
STORAGES: tuple[Storage, ...] = ("file", "memory")
DISCARDS: tuple[Discard, ...] = ("new", "old")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamLimits:
    """What a stream may hold, and what it does when it is full.

    ``None`` means no limit (JetStream's ``-1``). When ``max_msgs`` or ``max_bytes`` is
    set, the stream is *full* once it reaches it, and ``discard`` says what happens to
    the next message: ``new`` (the default when a limit is set) refuses it, and the
    publisher raises ``PublishError(reason=stream_full)`` at once; ``old`` stores it and
    deletes the oldest messages to make room. A payment the bus accepted is never
    deleted to make room unless ``old`` was chosen.

    Attributes:
        max_msgs: messages the stream may hold.
        max_bytes: bytes the stream may hold (JetStream counts subject, headers, body
            and a small per-message overhead).
        max_msg_size: bytes one message (headers and body) may have; a bigger one is
            refused with ``message_too_large`` whatever ``discard`` says.
        storage: ``file`` or ``memory`` (cannot change on an existing stream).
        replicas: copies on a cluster; None = the deployment's ``streams.replicas``.
        discard: ``new`` or ``old``; None = ``new`` if a size or count limit is set,
            else ``old`` (nothing is ever discarded for lack of room then).
    """

    max_msgs: int | None = None
    max_bytes: int | None = None
    max_msg_size: int | None = None
    storage: Storage = "file"
    replicas: int | None = None
    discard: Discard | None = None

    def __post_init__(self) -> None:
        for name in ("max_msgs", "max_bytes", "max_msg_size"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(name, value, "must be an integer >= 1 (omit: no limit)")
        if self.storage not in STORAGES:
            raise ValidationError("storage", self.storage, f"must be one of {', '.join(STORAGES)}")
        replicas = self.replicas
        if replicas is not None and (
            isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5
        ):
            raise ValidationError("replicas", replicas, "must be an integer in 1..5")
        if self.discard is not None and self.discard not in DISCARDS:
            raise ValidationError("discard", self.discard, f"must be one of {', '.join(DISCARDS)}")

    @property
    def bounded(self) -> bool:
        """Whether a count or size limit can fill the stream."""
        return self.max_msgs is not None or self.max_bytes is not None

    @property
    def discard_policy(self) -> Discard:
        """What a full stream does: ``discard`` if given, else ``new`` when bounded."""
        if self.discard is not None:
            return self.discard
        return "new" if self.bounded else "old"

    def merged(self, override: StreamLimits) -> StreamLimits:
        """These limits with every field ``override`` sets (not None, storage not file)
        replacing this one's."""
        changes = {
            name: getattr(override, name)
            for name in ("max_msgs", "max_bytes", "max_msg_size", "replicas", "discard")
            if getattr(override, name) is not None
        }
        if override.storage != "file":
            changes["storage"] = override.storage
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for tables and logs: ``max_msgs=1000, discard=new``."""
        parts = [
            f"{name}={getattr(self, name)}"
            for name in ("max_msgs", "max_bytes", "max_msg_size")
            if getattr(self, name) is not None
        ]
        parts.append(f"discard={self.discard_policy}")
        if self.storage != "file":
            parts.append(f"storage={self.storage}")
        return ", ".join(parts)


NO_LIMITS = StreamLimits()
"""No count, size or message-size limit: only the max age removes messages."""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream: its name, the subjects it captures, how long it keeps them,
    and its limits.

    Retention is always Limits; storage, replicas and the count and size limits come
    from ``limits`` (set by configuration, see ``streams.limits``); the duplicate window
    comes from configuration because it depends on the deployment.
    """

    name: str
    subjects: tuple[str, ...]
    max_age: float
    """Seconds a message is kept."""
    limits: StreamLimits = NO_LIMITS
    """Count and size limits, storage, replicas and discard policy."""


class CatalogConflictError(ValidationError):
    """A message type cannot be registered: its name, subject or stream is taken.

    Attributes (besides :class:`ValidationError`'s ``field``, ``value`` and ``reason``):
        existing: the wire name of the type that already holds it.
    """

    def __init__(self, field: str, value: Any, existing: str) -> None:
        self.existing = existing
        super().__init__(field, value, f"is already used by message type {existing!r}")


class _CatalogMeta(type):
    """Makes the class itself the catalog: ``for t in MessageType``, ``len``, ``in``
    and ``MessageType["PAYMENT_INSTRUCTION"]``, like an ``Enum``."""

    def __iter__(cls) -> Iterator[MessageType]:
        return iter(tuple(_BY_WIRE_NAME.values()))

    def __len__(cls) -> int:
        return len(_BY_WIRE_NAME)

    def __contains__(cls, item: object) -> bool:
        return isinstance(item, MessageType) and _BY_WIRE_NAME.get(item.value) is item

    def __getitem__(cls, name: str) -> MessageType:
        for message_type in _BY_WIRE_NAME.values():
            if message_type.name == name:
                return message_type
        raise KeyError(name)


class MessageType(metaclass=_CatalogMeta):
    """A message type of the catalog; the eleven DelTran types are built in.

    Behaves like an ``Enum`` member (``.name``, ``.value`` = the wire name,
    ``MessageType("PaymentInstruction")``, iteration over the class in registration
    order, identity comparison) and is registered with :meth:`register`. Instances are
    immutable and unique per wire name, so they are hashable and compare by identity.
    """

    __slots__ = ("_payload", "_stream", "name", "subject_prefix", "type_subject", "value")

    name: str
    """``PAYMENT_INSTRUCTION``: the upper-case attribute name."""
    value: str
    """``PaymentInstruction``: the wire name (the ``Deltran-Type`` header)."""
    type_subject: str
    """The subject tokens of this type, e.g. ``payment.instruction``."""
    subject_prefix: str
    """``deltran.{type_subject}``: every subject of this type starts with it."""
    _stream: StreamSpec | None
    _payload: type[msgspec.Struct] | None

    PAYMENT_INSTRUCTION: ClassVar[MessageType]
    NETTING_PROPOSAL: ClassVar[MessageType]
    BANK_CONFIRMATION: ClassVar[MessageType]
    SETTLEMENT_FINALIZE: ClassVar[MessageType]
    SETTLEMENT_PROOF: ClassVar[MessageType]
    CHECKPOINT: ClassVar[MessageType]
    ADAPTER_TRANSFER: ClassVar[MessageType]
    ADAPTER_RESPONSE: ClassVar[MessageType]
    RISK_ASSESSMENT: ClassVar[MessageType]
    COMPLIANCE_CHECK: ClassVar[MessageType]
    SYSTEM_EVENT: ClassVar[MessageType]

    def __new__(cls, value: str | MessageType) -> MessageType:
        """The registered type whose wire name is ``value`` (like ``Enum(value)``).

        Raises:
            ValueError: no such type.
        """
        if isinstance(value, MessageType):
            return value
        found = _BY_WIRE_NAME.get(value) if isinstance(value, str) else None
        if found is None:
            raise ValueError(f"{value!r} is not a registered MessageType")
        return found

    @classmethod
    def _create(
        cls,
        name: str,
        value: str,
        type_subject: str,
        stream: StreamSpec | None,
        payload: type[msgspec.Struct] | None,
    ) -> MessageType:
        self = object.__new__(cls)
        for attribute, item in (
            ("name", name),
            ("value", value),
            ("type_subject", type_subject),
            ("subject_prefix", f"{SUBJECT_ROOT}.{type_subject}"),
            ("_stream", stream),
            ("_payload", payload),
        ):
            object.__setattr__(self, attribute, item)
        return self

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"MessageType is immutable: cannot set {name!r}")

    def __repr__(self) -> str:
        return f"<MessageType.{self.name}: {self.value!r}>"

    def __str__(self) -> str:
        return f"MessageType.{self.name}"

    def __reduce__(self) -> tuple[type[MessageType], tuple[str]]:
        return MessageType, (self.value,)

    @property
    def stream(self) -> StreamSpec | None:
        """The default stream holding this type, or None for core-only types."""
        return self._stream

    @property
    def is_stream_backed(self) -> bool:
        """Whether this type is persisted in a stream by default."""
        return self._stream is not None

    @property
    def payload_type(self) -> type[msgspec.Struct] | None:
        """The Struct its payloads are checked against at publish; None = free-form."""
        return self._payload

    @property
    def is_builtin(self) -> bool:
        """Whether this is one of the eleven DelTran types of the default catalog."""
        return self.value in _BUILTIN_NAMES

    @classmethod
    def from_wire(cls, name: str) -> MessageType:
        """Look a type up by its wire name (``PaymentInstruction``).

        Raises:
            KeyError: no such type.
        """
        return _BY_WIRE_NAME[name]

    @classmethod
    def register(
        cls,
        name: str,
        subject: str,
        *,
        payload: type[msgspec.Struct] | None = None,
        stream: str | None = None,
        max_age: float = 7 * _DAY,
        limits: StreamLimits = NO_LIMITS,
    ) -> MessageType:
        """Add a message type of one's own to the catalog and return it.

        Register types before building the container or any publisher and subscriber
        (e.g. at import time of the module that defines the payload Struct): the
        default :class:`StreamCatalog` and the adapters read the catalog when built.

        Args:
            name: the wire name, CamelCase (``FraudAlert``); its upper-snake form
                (``FRAUD_ALERT``) is the type's ``name``.
            subject: 1-4 lower-case subject tokens (``fraud.alert``); subjects are
                ``deltran.{subject}.{partition key}``.
            payload: the msgspec Struct every payload is checked against at publish
                (None: payloads are free-form JSON).
            stream: the JetStream stream storing the type (``FRAUD_ALERTS``); None makes
                it core-only (request-reply and broadcast, nothing stored).
            max_age: seconds the stream keeps a message (default 7 days).
            limits: the stream's count and size limits and discard policy.

        Raises:
            CatalogConflictError: the name, subject or stream is already used (a subject
                may not equal, contain or be contained in another type's subject).
            ValidationError: an argument is malformed.
        """
        check_wire_name(name)
        check_type_subject(subject)
        if payload is not None and not (
            isinstance(payload, type) and issubclass(payload, msgspec.Struct)
        ):
            raise ValidationError("payload", payload, "must be a msgspec.Struct subclass")
        spec = None
        if stream is not None:
            check_stream_name(stream)
            age_ok = isinstance(max_age, int | float) and not isinstance(max_age, bool)
            if not age_ok or not 0 < max_age < float("inf"):
                raise ValidationError("max_age", max_age, "must be a finite number of seconds > 0")
            if not isinstance(limits, StreamLimits):
                raise ValidationError("limits", limits, "must be a StreamLimits")
            subjects = (f"{SUBJECT_ROOT}.{subject}.>",)
            spec = StreamSpec(stream, subjects, float(max_age), limits)
        attribute = _upper_snake(name)
        for existing in _BY_WIRE_NAME.values():
            if existing.value == name or existing.name == attribute:
                raise CatalogConflictError("name", name, existing.value)
            if _overlaps(existing.type_subject, subject):
                raise CatalogConflictError("subject", subject, existing.value)
            taken = existing.stream.name if existing.stream is not None else None
            if spec is not None and taken == spec.name:
                raise CatalogConflictError("stream", stream, existing.value)
        if stream == DEAD_LETTER_STREAM.name:
            raise CatalogConflictError("stream", stream, "dead letters")
        message_type = cls._create(attribute, name, subject, spec, payload)
        _BY_WIRE_NAME[name] = message_type
        return message_type

    @classmethod
    def unregister(cls, message_type: MessageType) -> None:
        """Remove a registered type (for tests); the eleven built-in types stay.

        Raises:
            ValidationError: ``message_type`` is a built-in type.
        """
        if message_type.is_builtin:
            raise ValidationError("message_type", message_type.value, "is built in")
        if _BY_WIRE_NAME.get(message_type.value) is message_type:
            del _BY_WIRE_NAME[message_type.value]
            _RETIRED.append(message_type)  # kept alive: caches keyed by id() stay right


def check_wire_name(name: object) -> str:
    """Return ``name`` if it can name a message type on the wire (``FraudAlert``)."""
    if not isinstance(name, str) or _WIRE_NAME.fullmatch(name) is None:
        raise ValidationError(
            "name", name, "must be CamelCase: a capital letter, then letters and digits (<= 64)"
        )
    return name


def check_type_subject(subject: object) -> str:
    """Return ``subject`` if it can be a type's subject tokens (``fraud.alert``)."""
    if not isinstance(subject, str) or _SUBJECT_TOKENS.fullmatch(subject) is None:
        raise ValidationError(
            "subject",
            subject,
            "must be 1-4 dot-separated tokens of lower-case letters, digits, '_' or '-'",
        )
    if subject.split(".")[0] in _RESERVED_TOKENS:
        raise ValidationError(
            "subject", subject, f"may not start with {sorted(_RESERVED_TOKENS)} (reserved)"
        )
    return subject


def check_stream_name(name: object) -> str:
    """Return ``name`` if it can name a JetStream stream (``FRAUD_ALERTS``)."""
    if not isinstance(name, str) or _STREAM_NAME.fullmatch(name) is None:
        raise ValidationError(
            "stream", name, "must be upper-case letters, digits, '_' or '-' (<= 64)"
        )
    return name


def _overlaps(a: str, b: str) -> bool:
    """Whether subjects under ``a`` and under ``b`` can be the same or nest."""
    ta, tb = a.split("."), b.split(".")
    n = min(len(ta), len(tb))
    return ta[:n] == tb[:n]


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def _stream(name: str, type_subject: str, days: int) -> StreamSpec:
    return StreamSpec(name, (f"{SUBJECT_ROOT}.{type_subject}.>",), days * _DAY)


_BY_WIRE_NAME: dict[str, MessageType] = {}
_RETIRED: list[MessageType] = []

_BUILTINS: tuple[tuple[str, str, str, StreamSpec | None, type[msgspec.Struct]], ...] = (
    (
        "PAYMENT_INSTRUCTION",
        "PaymentInstruction",
        "payment.instruction",
        _stream("PAYMENT_INSTRUCTIONS", "payment.instruction", 7),
        p.PaymentInstruction,
    ),
    (
        "NETTING_PROPOSAL",
        "NettingProposal",
        "netting.proposal",
        _stream("NETTING_PROPOSALS", "netting.proposal", 7),
        p.NettingProposal,
    ),
    (
        "BANK_CONFIRMATION",
        "BankConfirmation",
        "bank.confirmation",
        _stream("BANK_CONFIRMATIONS", "bank.confirmation", 7),
        p.BankConfirmation,
    ),
    (
        "SETTLEMENT_FINALIZE",
        "SettlementFinalize",
        "settlement.finalize",
        _stream("SETTLEMENT_FINALIZATIONS", "settlement.finalize", 7),
        p.SettlementFinalize,
    ),
    (
        "SETTLEMENT_PROOF",
        "SettlementProof",
        "settlement.proof",
        _stream("SETTLEMENT_PROOFS", "settlement.proof", 30),
        p.SettlementProof,
    ),
    (
        "CHECKPOINT",
        "Checkpoint",
        "consensus.checkpoint",
        _stream("CHECKPOINTS", "consensus.checkpoint", 30),
        p.Checkpoint,
    ),
    (
        "ADAPTER_TRANSFER",
        "AdapterTransfer",
        "adapter.transfer",
        _stream("ADAPTER_TRANSFERS", "adapter.transfer", 3),
        p.AdapterTransfer,
    ),
    (
        "ADAPTER_RESPONSE",
        "AdapterResponse",
        "adapter.response",
        _stream("ADAPTER_RESPONSES", "adapter.response", 3),
        p.AdapterResponse,
    ),
    ("RISK_ASSESSMENT", "RiskAssessment", "risk.assessment", None, p.RiskAssessment),
    ("COMPLIANCE_CHECK", "ComplianceCheck", "compliance.check", None, p.ComplianceCheck),
    ("SYSTEM_EVENT", "SystemEvent", "system.event", None, p.SystemEvent),
)
for _name, _value, _subject, _spec, _payload in _BUILTINS:
    _BY_WIRE_NAME[_value] = MessageType._create(_name, _value, _subject, _spec, _payload)
    type.__setattr__(MessageType, _name, _BY_WIRE_NAME[_value])
_BUILTIN_NAMES = frozenset(_BY_WIRE_NAME)

DEFAULT_STREAMS: dict[MessageType, StreamSpec] = {
    t: t.stream for t in MessageType if t.stream is not None
}
"""The stream of each stream-backed built-in type; RiskAssessment, ComplianceCheck and
SystemEvent are core-only (request-reply and broadcast) and have none."""

DEAD_LETTER_STREAM = StreamSpec("DEAD_LETTERS", (f"{DEAD_LETTER_SUBJECT_PREFIX}.>",), 30 * _DAY)
"""Where TERMed and exhausted messages go, with the reason in headers."""


@dataclass(frozen=True, slots=True)
class StreamCatalog:
    """The streams a deployment uses: the defaults, optionally changed or extended.

    Attributes:
        streams: stream spec per stream-backed message type.
        dead_letters: the dead-letter stream.
    """

    streams: dict[MessageType, StreamSpec]
    dead_letters: StreamSpec = DEAD_LETTER_STREAM

    @classmethod
    def default(cls) -> StreamCatalog:
        """The catalog from the design table plus the streams of registered types."""
        return cls({t: t.stream for t in MessageType if t.stream is not None})

    def stream_for(self, message_type: MessageType) -> StreamSpec | None:
        """The stream holding ``message_type``, or None if it is core-only."""
        return self.streams.get(message_type)

    def all_streams(self) -> tuple[StreamSpec, ...]:
        """Every stream, dead letters last."""
        return (*self.streams.values(), self.dead_letters)

    def with_max_age(self, message_type: MessageType, max_age: float) -> StreamCatalog:
        """A copy whose stream for ``message_type`` keeps messages ``max_age`` seconds."""
        spec = self.streams[message_type]
        streams = dict(self.streams)
        streams[message_type] = dataclasses.replace(spec, max_age=max_age)
        return StreamCatalog(streams, self.dead_letters)

    def with_limits(
        self,
        default: StreamLimits | None = None,
        per_stream: Mapping[str, StreamLimits] | None = None,
    ) -> StreamCatalog:
        """A copy whose streams have ``default``'s limits, then each stream named in
        ``per_stream`` (by stream name) also that entry's (fields it sets win).

        Raises:
            ValidationError: ``per_stream`` names a stream the catalog does not have.
        """
        per_stream = dict(per_stream or {})
        known = {spec.name for spec in self.all_streams()}
        for name in per_stream:
            if name not in known:
                raise ValidationError(
                    "streams.limits", name, f"is not a stream of the catalog ({sorted(known)})"
                )

        def limited(spec: StreamSpec) -> StreamSpec:
            limits = spec.limits.merged(default) if default is not None else spec.limits
            if spec.name in per_stream:
                limits = limits.merged(per_stream[spec.name])
            return dataclasses.replace(spec, limits=limits)

        streams = {t: limited(spec) for t, spec in self.streams.items()}
        return StreamCatalog(streams, limited(self.dead_letters))
