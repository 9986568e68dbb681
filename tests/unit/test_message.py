"""The envelope: ids, time, immutability, header safety, typed payloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import pytest

from message_bus import Message, MessageType, PartitionKey, ValidationError
from message_bus.domain.ids import UUIDv7Generator, uuid7_timestamp_ms
from message_bus.domain.payloads import BankConfirmation, PaymentInstruction

KEY = PartitionKey.corridor("USD-EUR")


def test_message_type_has_the_eleven_types_with_the_crates_names() -> None:
    assert [t.value for t in MessageType] == [
        "PaymentInstruction",
        "NettingProposal",
        "BankConfirmation",
        "SettlementFinalize",
        "SettlementProof",
        "Checkpoint",
        "AdapterTransfer",
        "AdapterResponse",
        "RiskAssessment",
        "ComplianceCheck",
        "SystemEvent",
    ]


@pytest.mark.parametrize(
    ("message_type", "prefix", "stream", "days"),
    [
        (MessageType.PAYMENT_INSTRUCTION, "deltran.payment.instruction", "PAYMENT_INSTRUCTIONS", 7),
        (MessageType.NETTING_PROPOSAL, "deltran.netting.proposal", "NETTING_PROPOSALS", 7),
        (MessageType.BANK_CONFIRMATION, "deltran.bank.confirmation", "BANK_CONFIRMATIONS", 7),
        (
            MessageType.SETTLEMENT_FINALIZE,
            "deltran.settlement.finalize",
            "SETTLEMENT_FINALIZATIONS",
            7,
        ),
        (MessageType.SETTLEMENT_PROOF, "deltran.settlement.proof", "SETTLEMENT_PROOFS", 30),
        (MessageType.CHECKPOINT, "deltran.consensus.checkpoint", "CHECKPOINTS", 30),
        (MessageType.ADAPTER_TRANSFER, "deltran.adapter.transfer", "ADAPTER_TRANSFERS", 3),
        (MessageType.ADAPTER_RESPONSE, "deltran.adapter.response", "ADAPTER_RESPONSES", 3),
        (MessageType.RISK_ASSESSMENT, "deltran.risk.assessment", None, None),
        (MessageType.COMPLIANCE_CHECK, "deltran.compliance.check", None, None),
        (MessageType.SYSTEM_EVENT, "deltran.system.event", None, None),
    ],
)
def test_each_type_knows_its_subject_prefix_and_stream(
    message_type: MessageType, prefix: str, stream: str | None, days: int | None
) -> None:
    assert message_type.subject_prefix == prefix
    spec = message_type.stream
    if stream is None:
        assert spec is None
        assert not message_type.is_stream_backed
    else:
        assert spec is not None
        assert spec.name == stream
        assert spec.subjects == (f"{prefix}.>",)
        assert spec.max_age == days * 86400  # type: ignore[operator]


def test_new_message_has_a_uuid7_id_utc_time_and_the_subject_of_its_key() -> None:
    before = datetime.now(UTC)
    message = Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, {"payment_id": "p1"})
    assert message.id[14] == "7"  # version nibble
    assert message.id[19] in "89ab"  # RFC 9562 variant
    assert message.created_at.tzinfo is UTC
    assert before <= message.created_at <= datetime.now(UTC)
    assert abs(uuid7_timestamp_ms(message.id) - message.created_at.timestamp() * 1000) < 50
    assert message.subject == "deltran.payment.instruction.corridor.USD-EUR"
    assert message.partition is None  # set by the codec at publish


def test_message_ids_sort_in_creation_order_even_within_one_millisecond() -> None:
    frozen = UUIDv7Generator(clock_ms=lambda: 1_700_000_000_000)
    ids = [frozen() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5000
    ticking = iter(range(1_700_000_000_000, 1_700_000_010_000))
    stepped = UUIDv7Generator(clock_ms=lambda: next(ticking))
    more = [stepped() for _ in range(100)]
    assert more == sorted(more)


def test_ids_stay_ordered_when_the_clock_steps_back() -> None:
    times = iter([1_700_000_000_005, 1_700_000_000_001, 1_700_000_000_002])
    gen = UUIDv7Generator(clock_ms=lambda: next(times))
    ids = [gen(), gen(), gen()]
    assert ids == sorted(ids)


def test_message_is_immutable() -> None:
    message = Message.new(
        MessageType.PAYMENT_INSTRUCTION, KEY, {"a": 1}, headers={"x-tenant": "t1"}
    )
    with pytest.raises(AttributeError):
        message.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        message.headers["x-tenant"] = "t2"  # type: ignore[index]


@pytest.mark.parametrize(
    ("headers", "field_fragment"),
    [
        ({"Nats-Msg-Id": "x"}, "reserved"),
        ({"nats-expected-stream": "x"}, "reserved"),
        ({"Deltran-Type": "x"}, "reserved"),
        ({"DELTRAN-PARTITION": "1"}, "reserved"),
        ({"Content-Type": "text/plain"}, "reserved"),
        ({"x-note": "a\r\nNats-Msg-Id: forged"}, "CR, LF or NUL"),
        ({"x-note": "a\nb"}, "CR, LF or NUL"),
        ({"x-note": "a\x00b"}, "CR, LF or NUL"),
        ({"bad name": "v"}, "HTTP token"),
        ({"bad:name": "v"}, "HTTP token"),
        ({"": "v"}, "HTTP token"),
        ({"x-n\r\n": "v"}, "HTTP token"),
        ({"x-number": 5}, "must be a str"),
    ],
)
def test_unsafe_user_headers_are_rejected(headers: dict[str, object], field_fragment: str) -> None:
    with pytest.raises(ValidationError, match=field_fragment) as caught:
        Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, {}, headers=headers)  # type: ignore[arg-type]
    assert caught.value.field.startswith("headers")


@pytest.mark.parametrize("bad", ["", "has space", "a\r\nb", "x" * 129, 17])
def test_bad_correlation_ids_are_rejected(bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, {}, correlation_id=bad)  # type: ignore[arg-type]
    assert caught.value.field == "correlation_id"


def test_message_type_and_key_must_be_the_real_things() -> None:
    with pytest.raises(ValidationError, match="message_type"):
        Message.new("PaymentInstruction", KEY, {})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="partition_key"):
        Message.new(MessageType.PAYMENT_INSTRUCTION, "corridor.USD-EUR", {})  # type: ignore[arg-type]


def test_naive_created_at_is_rejected_and_aware_is_converted_to_utc() -> None:
    with pytest.raises(ValidationError, match="created_at"):
        Message.new(MessageType.CHECKPOINT, KEY, {}, created_at=datetime(2026, 1, 1))
    plus_two = timezone(timedelta(hours=2))
    message = Message.new(
        MessageType.CHECKPOINT, KEY, {}, created_at=datetime(2026, 1, 1, 12, tzinfo=plus_two)
    )
    assert message.created_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert message.created_at.tzinfo is UTC


def test_reply_keeps_the_flow_correlated_and_names_its_cause() -> None:
    first = Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, {})
    second = first.reply(MessageType.NETTING_PROPOSAL, {"cycle": 1})
    third = second.reply(MessageType.BANK_CONFIRMATION, {}, PartitionKey.bank("BANKGB2L"))
    assert second.correlation_id == first.id
    assert second.causation_id == first.id
    assert third.correlation_id == first.id
    assert third.causation_id == second.id
    assert third.subject == "deltran.bank.confirmation.bank.BANKGB2L"


def test_typed_payloads_keep_money_exact() -> None:
    payment = PaymentInstruction(
        payment_id="pay_123",
        amount=Decimal("1000.10"),
        currency="USD",
        debtor_bank="BANKGB2L",
        creditor_bank="DEUTDEFF",
    )
    message = Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, payment)
    as_json = msgspec.json.decode(msgspec.json.encode(message.payload))
    assert as_json["amount"] == "1000.10"
    received = Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, as_json)
    assert received.payload_as(PaymentInstruction).amount == Decimal("1000.10")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (
            {
                "payment_id": "p",
                "amount": "-1",
                "currency": "USD",
                "debtor_bank": "BANKGB2L",
                "creditor_bank": "DEUTDEFF",
            },
            "amount",
        ),
        (
            {
                "payment_id": "p",
                "amount": "1",
                "currency": "usd",
                "debtor_bank": "BANKGB2L",
                "creditor_bank": "DEUTDEFF",
            },
            "currency",
        ),
        (
            {
                "payment_id": "p",
                "amount": "1",
                "currency": "USD",
                "debtor_bank": "BANK.GB",
                "creditor_bank": "DEUTDEFF",
            },
            "debtor_bank",
        ),
        (
            {
                "payment_id": "p",
                "currency": "USD",
                "debtor_bank": "BANKGB2L",
                "creditor_bank": "DEUTDEFF",
            },
            "amount",
        ),
    ],
)
def test_typed_payload_validation_names_the_bad_field(
    payload: dict[str, str], fragment: str
) -> None:
    message = Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, payload)
    with pytest.raises(ValidationError, match=fragment) as caught:
        message.payload_as(PaymentInstruction)
    assert caught.value.field == "payload"


def test_bank_confirmation_status_is_ack_or_nack() -> None:
    ok = Message.new(
        MessageType.BANK_CONFIRMATION,
        PartitionKey.bank("BANKGB2L"),
        {"cycle_id": "c1", "bank_id": "BANKGB2L", "status": "ACK"},
    )
    assert ok.payload_as(BankConfirmation).status == "ACK"
    bad = Message.new(
        MessageType.BANK_CONFIRMATION,
        PartitionKey.bank("BANKGB2L"),
        {"cycle_id": "c1", "bank_id": "BANKGB2L", "status": "MAYBE"},
    )
    with pytest.raises(ValidationError, match="status"):
        bad.payload_as(BankConfirmation)
