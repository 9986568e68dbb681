"""Message types, their subjects and the JetStream streams that hold them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

SUBJECT_ROOT = "deltran"
DEAD_LETTER_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.dlq"

_DAY = 24 * 60 * 60.0


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream: its name, the subjects it captures and how long it keeps them.

    Retention is always Limits and storage is always file; replicas and the duplicate
    window come from configuration because they depend on the deployment.
    """

    name: str
    subjects: tuple[str, ...]
    max_age: float
    """Seconds a message is kept."""


class MessageType(enum.Enum):
    """The eleven DelTran message types; the value is the type's wire name."""

    PAYMENT_INSTRUCTION = "PaymentInstruction"
    NETTING_PROPOSAL = "NettingProposal"
    BANK_CONFIRMATION = "BankConfirmation"
    SETTLEMENT_FINALIZE = "SettlementFinalize"
    SETTLEMENT_PROOF = "SettlementProof"
    CHECKPOINT = "Checkpoint"
    ADAPTER_TRANSFER = "AdapterTransfer"
    ADAPTER_RESPONSE = "AdapterResponse"
    RISK_ASSESSMENT = "RiskAssessment"
    COMPLIANCE_CHECK = "ComplianceCheck"
    SYSTEM_EVENT = "SystemEvent"

    @property
    def type_subject(self) -> str:
        """The subject tokens of this type, e.g. ``payment.instruction``."""
        return _TYPE_SUBJECTS[self]

    @property
    def subject_prefix(self) -> str:
        """``deltran.{type_subject}``: every subject of this type starts with it."""
        return _SUBJECT_PREFIXES[self]

    @property
    def stream(self) -> StreamSpec | None:
        """The default stream holding this type, or None for core-only types."""
        return DEFAULT_STREAMS.get(self)

    @property
    def is_stream_backed(self) -> bool:
        """Whether this type is persisted in a stream by default."""
        return self in DEFAULT_STREAMS

    @classmethod
    def from_wire(cls, name: str) -> MessageType:
        """Look a type up by its wire name (``PaymentInstruction``).

        Raises:
            KeyError: no such type.
        """
        return _BY_WIRE_NAME[name]


_TYPE_SUBJECTS: dict[MessageType, str] = {
    MessageType.PAYMENT_INSTRUCTION: "payment.instruction",
    MessageType.NETTING_PROPOSAL: "netting.proposal",
    MessageType.BANK_CONFIRMATION: "bank.confirmation",
    MessageType.SETTLEMENT_FINALIZE: "settlement.finalize",
    MessageType.SETTLEMENT_PROOF: "settlement.proof",
    MessageType.CHECKPOINT: "consensus.checkpoint",
    MessageType.ADAPTER_TRANSFER: "adapter.transfer",
    MessageType.ADAPTER_RESPONSE: "adapter.response",
    MessageType.RISK_ASSESSMENT: "risk.assessment",
    MessageType.COMPLIANCE_CHECK: "compliance.check",
    MessageType.SYSTEM_EVENT: "system.event",
}
_SUBJECT_PREFIXES = {t: f"{SUBJECT_ROOT}.{s}" for t, s in _TYPE_SUBJECTS.items()}
_BY_WIRE_NAME = {t.value: t for t in MessageType}


def _stream(name: str, message_type: MessageType, days: int) -> StreamSpec:
    return StreamSpec(name, (f"{_SUBJECT_PREFIXES[message_type]}.>",), days * _DAY)


DEFAULT_STREAMS: dict[MessageType, StreamSpec] = {
    MessageType.PAYMENT_INSTRUCTION: _stream(
        "PAYMENT_INSTRUCTIONS", MessageType.PAYMENT_INSTRUCTION, 7
    ),
    MessageType.NETTING_PROPOSAL: _stream("NETTING_PROPOSALS", MessageType.NETTING_PROPOSAL, 7),
    MessageType.BANK_CONFIRMATION: _stream("BANK_CONFIRMATIONS", MessageType.BANK_CONFIRMATION, 7),
    MessageType.SETTLEMENT_FINALIZE: _stream(
        "SETTLEMENT_FINALIZATIONS", MessageType.SETTLEMENT_FINALIZE, 7
    ),
    MessageType.SETTLEMENT_PROOF: _stream("SETTLEMENT_PROOFS", MessageType.SETTLEMENT_PROOF, 30),
    MessageType.CHECKPOINT: _stream("CHECKPOINTS", MessageType.CHECKPOINT, 30),
    MessageType.ADAPTER_TRANSFER: _stream("ADAPTER_TRANSFERS", MessageType.ADAPTER_TRANSFER, 3),
    MessageType.ADAPTER_RESPONSE: _stream("ADAPTER_RESPONSES", MessageType.ADAPTER_RESPONSE, 3),
}
"""The stream of each stream-backed type; RiskAssessment, ComplianceCheck and
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
        """The catalog from the design table."""
        return cls(dict(DEFAULT_STREAMS))

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
        streams[message_type] = StreamSpec(spec.name, spec.subjects, max_age)
        return StreamCatalog(streams, self.dead_letters)
