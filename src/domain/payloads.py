"""Typed payloads of the eleven DelTran message types, checked at publish.

Money is ``Decimal`` (never float) and travels as a JSON string, so no amount is
rounded on the way. BICs and corridors are checked with the domain's own rules
(:func:`~message_bus.domain.partition.check_bic`, ``check_corridor``), both when a
Struct is built in code and when a dict is converted to one. Wire types accept unknown
fields, so producers can add fields without breaking older consumers.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

import msgspec

from .errors import ValidationError
from .partition import BIC_PATTERN, CORRIDOR_PATTERN, check_bic, check_corridor

Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Bic = Annotated[str, msgspec.Meta(pattern=f"^{BIC_PATTERN}$")]
CorridorId = Annotated[str, msgspec.Meta(pattern=f"^{CORRIDOR_PATTERN}$")]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 (or BLAKE3-256) digest as 64 lower-case hex digits."""


def _money(field: str, value: Decimal, *, positive: bool = True) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValidationError(field, value, "must be a finite decimal")
    if positive and value <= 0:
        raise ValidationError(field, value, "must be a positive decimal")


def _check_payment(amount: Decimal, debtor: str, creditor: str, corridor: str | None) -> None:
    """The checks a payment between two banks shares: a positive amount, two BICs and,
    if given, a corridor."""
    _money("amount", amount)
    check_bic(debtor, "debtor_bank")
    check_bic(creditor, "creditor_bank")
    if corridor is not None:
        check_corridor(corridor, "corridor")


def _bics(field: str, banks: Iterable[str]) -> None:
    for bank in banks:
        check_bic(bank, f"{field}[{bank!r}]")


def _positions(field: str, positions: dict[str, Decimal]) -> None:
    for bank, amount in positions.items():
        check_bic(bank, f"{field}[{bank!r}]")
        _money(f"{field}[{bank!r}]", amount, positive=False)


class ConfirmationStatus(StrEnum):
    """A bank's answer to a netting proposal."""

    ACK = "ACK"
    NACK = "NACK"


class TransferStatus(StrEnum):
    """Where a transfer handed to a bank adapter stands."""

    ACCEPTED = "ACCEPTED"
    SETTLED = "SETTLED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"


class RiskLevel(StrEnum):
    """The outcome of a risk assessment."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class ComplianceResult(StrEnum):
    """The outcome of a sanctions/AML screening."""

    CLEAR = "CLEAR"
    REVIEW = "REVIEW"
    HIT = "HIT"


class Severity(StrEnum):
    """How serious a system event is."""

    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class PaymentInstruction(msgspec.Struct, frozen=True, kw_only=True):
    """A bank's instruction to pay ``amount`` in ``currency`` to another bank."""

    payment_id: Identifier
    amount: Decimal
    currency: Currency
    debtor_bank: Bic
    creditor_bank: Bic
    corridor: CorridorId | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        _check_payment(self.amount, self.debtor_bank, self.creditor_bank, self.corridor)


class NettingProposal(msgspec.Struct, frozen=True, kw_only=True):
    """A proposed netting cycle: net positions per bank for one corridor."""

    cycle_id: Identifier
    corridor: CorridorId
    positions: dict[str, Decimal]
    """Net position per BIC; positive = the bank receives."""
    payment_ids: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        check_corridor(self.corridor, "corridor")
        _positions("positions", self.positions)


class BankConfirmation(msgspec.Struct, frozen=True, kw_only=True):
    """A bank's ACK or NACK of a netting cycle (see :class:`ConfirmationStatus`)."""

    cycle_id: Identifier
    bank_id: Bic
    status: Literal["ACK", "NACK"]
    reason: str | None = None

    def __post_init__(self) -> None:
        check_bic(self.bank_id, "bank_id")


class SettlementFinalize(msgspec.Struct, frozen=True, kw_only=True):
    """The order to settle a netting cycle every bank confirmed: pay the net positions."""

    cycle_id: Identifier
    corridor: CorridorId
    currency: Currency
    positions: dict[str, Decimal]
    """Net position per BIC; positive = the bank receives; sums to zero."""
    confirmed_by: list[str] = msgspec.field(default_factory=list)
    """The BICs whose confirmations the finalization rests on."""

    def __post_init__(self) -> None:
        check_corridor(self.corridor, "corridor")
        _positions("positions", self.positions)
        _bics("confirmed_by", self.confirmed_by)


class SettlementProof(msgspec.Struct, frozen=True, kw_only=True):
    """Evidence that a cycle settled: the digest of its transfers and when it settled."""

    cycle_id: Identifier
    corridor: CorridorId
    proof_hash: Digest
    settled_at: datetime
    transfer_ids: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        check_corridor(self.corridor, "corridor")


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A consensus checkpoint: the settled state up to ``height``, by digest."""

    checkpoint_id: Identifier
    height: Annotated[int, msgspec.Meta(ge=0)]
    state_hash: Digest
    created_at: datetime
    cycle_ids: list[str] = msgspec.field(default_factory=list)


class AdapterTransfer(msgspec.Struct, frozen=True, kw_only=True):
    """A transfer handed to a bank's adapter (the rail that moves the money)."""

    transfer_id: Identifier
    amount: Decimal
    currency: Currency
    debtor_bank: Bic
    creditor_bank: Bic
    cycle_id: Identifier | None = None
    payment_id: Identifier | None = None
    corridor: CorridorId | None = None

    def __post_init__(self) -> None:
        _check_payment(self.amount, self.debtor_bank, self.creditor_bank, self.corridor)


class AdapterResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A bank adapter's answer about a transfer."""

    transfer_id: Identifier
    status: TransferStatus
    bank_reference: str | None = None
    reason: str | None = None


class RiskAssessment(msgspec.Struct, frozen=True, kw_only=True):
    """A risk check of a payment: the request names the payment, the reply adds
    ``level`` and ``score``."""

    payment_id: Identifier
    amount: Decimal | None = None
    corridor: CorridorId | None = None
    level: RiskLevel | None = None
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    reasons: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.amount is not None:
            _money("amount", self.amount)
        if self.corridor is not None:
            check_corridor(self.corridor, "corridor")


class ComplianceCheck(msgspec.Struct, frozen=True, kw_only=True):
    """A sanctions/AML screening of a payment's parties: the reply adds ``result``."""

    payment_id: Identifier
    debtor_bank: Bic | None = None
    creditor_bank: Bic | None = None
    result: ComplianceResult | None = None
    lists_checked: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.debtor_bank is not None:
            check_bic(self.debtor_bank, "debtor_bank")
        if self.creditor_bank is not None:
            check_bic(self.creditor_bank, "creditor_bank")


class SystemEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something operators should know about, broadcast to every service."""

    event: Identifier
    """What happened, e.g. ``netting.cycle_closed`` or ``adapter.degraded``."""
    severity: Severity = Severity.INFO
    component: str | None = None
    detail: str | None = None
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


__all__ = [
    "AdapterResponse",
    "AdapterTransfer",
    "BankConfirmation",
    "Bic",
    "Checkpoint",
    "ComplianceCheck",
    "ComplianceResult",
    "ConfirmationStatus",
    "CorridorId",
    "Currency",
    "Digest",
    "Identifier",
    "NettingProposal",
    "PaymentInstruction",
    "RiskAssessment",
    "RiskLevel",
    "SettlementFinalize",
    "SettlementProof",
    "Severity",
    "SystemEvent",
    "TransferStatus",
]
