"""Valid example payloads of the eleven DelTran types, for tests and examples."""

from __future__ import annotations

import copy
from typing import Any

from message_bus.domain.catalog import MessageType

__all__ = ["sample_payload"]

_PROOF = "9f2c" * 16

_SAMPLES: dict[str, dict[str, Any]] = {
    "PaymentInstruction": {
        "payment_id": "pay-1",
        "amount": "1000.00",
        "currency": "USD",
        "debtor_bank": "BANKUS33",
        "creditor_bank": "BANKDEFF",
        "corridor": "USD-EUR",
    },
    "NettingProposal": {
        "cycle_id": "cycle-1",
        "corridor": "USD-EUR",
        "positions": {"BANKUS33": "-1000.00", "BANKDEFF": "1000.00"},
        "payment_ids": ["pay-1"],
    },
    "BankConfirmation": {"cycle_id": "cycle-1", "bank_id": "BANKUS33", "status": "ACK"},
    "SettlementFinalize": {
        "cycle_id": "cycle-1",
        "corridor": "USD-EUR",
        "currency": "USD",
        "positions": {"BANKUS33": "-1000.00", "BANKDEFF": "1000.00"},
        "confirmed_by": ["BANKUS33", "BANKDEFF"],
    },
    "SettlementProof": {
        "cycle_id": "cycle-1",
        "corridor": "USD-EUR",
        "proof_hash": _PROOF,
        "settled_at": "2026-11-27T13:57:19.123456Z",
        "transfer_ids": ["tr-1"],
    },
    "Checkpoint": {
        "checkpoint_id": "cp-1",
        "height": 1,
        "state_hash": _PROOF,
        "created_at": "2026-11-27T13:57:19.123456Z",
        "cycle_ids": ["cycle-1"],
    },
    "AdapterTransfer": {
        "transfer_id": "tr-1",
        "amount": "1000.00",
        "currency": "USD",
        "debtor_bank": "BANKUS33",
        "creditor_bank": "BANKDEFF",
        "cycle_id": "cycle-1",
    },
    "AdapterResponse": {"transfer_id": "tr-1", "status": "SETTLED", "bank_reference": "REF-1"},
    "RiskAssessment": {"payment_id": "pay-1", "amount": "1000.00", "corridor": "USD-EUR"},
    "ComplianceCheck": {
        "payment_id": "pay-1",
        "debtor_bank": "BANKUS33",
        "creditor_bank": "BANKDEFF",
    },
    "SystemEvent": {"event": "node.started", "severity": "INFO", "component": "netting"},
}


def sample_payload(message_type: MessageType, **changes: Any) -> dict[str, Any]:
    """A valid payload of a built-in type as a JSON-ready dict, with ``changes`` applied
    (a change to ``None`` removes the field). Each call returns a new payload, nested
    lists and dicts included, so a test may change it in place.

    Raises:
        KeyError: ``message_type`` is not one of the eleven built-in types.
    """
    payload = copy.deepcopy(_SAMPLES[message_type.value])
    for name, value in changes.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload
