"""Typed payloads for the message types whose fields the bus can validate.

Money is ``Decimal`` (never float) and travels as a JSON string, so no amount is
rounded on the way. Wire types accept unknown fields, so producers can add fields
without breaking older consumers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec

Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Bic = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?$")]
CorridorId = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}-[A-Z]{3}$")]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


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
        if not self.amount.is_finite() or self.amount <= 0:
            raise ValueError(f"amount must be a positive finite decimal, got {self.amount}")


class NettingProposal(msgspec.Struct, frozen=True, kw_only=True):
    """A proposed netting cycle: net positions per bank for one corridor."""

    cycle_id: Identifier
    corridor: CorridorId
    positions: dict[str, Decimal]
    """Net position per BIC; positive = the bank receives."""
    payment_ids: list[str] = msgspec.field(default_factory=list)


class BankConfirmation(msgspec.Struct, frozen=True, kw_only=True):
    """A bank's ACK or NACK of a netting cycle."""

    cycle_id: Identifier
    bank_id: Bic
    status: Literal["ACK", "NACK"]
    reason: str | None = None
