"""The demo's bookkeeping: its summary counts what the audit subscriber observed."""

from __future__ import annotations

from message_bus import Message, MessageType, PartitionKey
from message_bus.app.demo import _Audit


def proposal(cycle_id: str, payment_ids: list[str]) -> Message:
    return Message.new(
        MessageType.NETTING_PROPOSAL,
        PartitionKey.corridor("USD-EUR"),
        {"cycle_id": cycle_id, "corridor": "USD-EUR", "positions": {}, "payment_ids": payment_ids},
        message_id=cycle_id,
    )


async def test_a_redelivered_proposal_does_not_count_its_payments_as_doubled() -> None:
    audit = _Audit({"pay-1": 0.0, "pay-2": 0.0})
    message = proposal("cycle-1", ["pay-1", "pay-2"])

    await audit.handle(message)
    await audit.handle(message)  # the same proposal, delivered again

    assert audit.proposals == 1
    assert dict(audit.netted) == {"pay-1": 1, "pay-2": 1}
    assert len(audit.end_to_end) == 2


async def test_a_payment_in_two_proposals_is_counted_as_doubled() -> None:
    audit = _Audit({"pay-1": 0.0})

    await audit.handle(proposal("cycle-1", ["pay-1"]))
    await audit.handle(proposal("cycle-2", ["pay-1"]))

    assert audit.netted["pay-1"] == 2


async def test_proposals_of_an_earlier_run_are_not_counted() -> None:
    audit = _Audit({"pay-1": 0.0})

    await audit.handle(proposal("cycle-0", ["old-pay"]))

    assert audit.proposals == 0
    assert not audit.netted
