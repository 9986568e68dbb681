"""Dead-letter encoding: the original survives, the facts travel in headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from message_bus import DecodeError, Message, MessageType, PartitionKey, WireCodec
from message_bus.domain.dead_letter import (
    decode_dead_letter,
    encode_dead_letter,
    original_of,
    replay_of,
    unwrap_replay,
)

codec = WireCodec()


def test_a_dead_letter_keeps_the_original_and_records_why() -> None:
    message = Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor("USD-EUR"),
        {"payment_id": "p1"},
        headers={"x-tenant": "t1"},
    )
    original = codec.encode(message)
    failed_at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    dead = encode_dead_letter(
        original,
        reason="bad account\r\nNats-Msg-Id: forged",
        stream="PAYMENT_INSTRUCTIONS",
        sequence=42,
        deliveries=3,
        consumer_group="netting",
        consumer="deltran-consumer__netting",
        failed_at=failed_at,
    )
    assert dead.subject == "deltran.dlq.payment.instruction.corridor.USD-EUR"
    assert dead.headers["Nats-Msg-Id"] == "dlq:deltran-consumer__netting:PAYMENT_INSTRUCTIONS:42"
    assert "\n" not in dead.headers["Deltran-Dlq-Reason"]
    letter = decode_dead_letter(codec, *dead, dlq_sequence=7)
    assert letter.message.id == message.id
    assert letter.message.payload == {"payment_id": "p1"}
    assert dict(letter.message.headers) == {"x-tenant": "t1"}
    assert letter.reason == "bad account Nats-Msg-Id: forged"
    assert (letter.stream, letter.sequence, letter.deliveries) == ("PAYMENT_INSTRUCTIONS", 42, 3)
    assert letter.subject == message.subject
    assert letter.consumer_group == "netting"
    assert letter.consumer == "deltran-consumer__netting"
    assert letter.failed_at == failed_at
    assert letter.dlq_sequence == 7
    assert original_of(dead) == original


def test_a_message_that_is_not_a_dead_letter_is_refused() -> None:
    subject, headers, body = codec.encode(
        Message.new(MessageType.CHECKPOINT, PartitionKey.bank("BANKGB2L"), {})
    )
    with pytest.raises(DecodeError, match="not a dead letter"):
        decode_dead_letter(codec, subject, headers, body)


def test_a_replay_goes_to_the_consumer_that_dead_lettered_it_and_names_the_original() -> None:
    message = Message.new(MessageType.CHECKPOINT, PartitionKey.bank("BANKGB2L"), {"h": 1})
    dead = encode_dead_letter(
        codec.encode(message),
        reason="x",
        stream="CHECKPOINTS",
        sequence=3,
        deliveries=1,
        consumer_group="g",
        consumer="d__g",
        failed_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    replay = replay_of(dead, 9, 2)
    assert replay.subject == "deltran.replay.CHECKPOINTS.d__g"
    assert replay.headers["Nats-Msg-Id"] == f"replay-9-2-{message.id}"
    assert replay.headers["Deltran-Replay-Of"] == message.id
    assert replay.headers["Deltran-Replay-Subject"] == message.subject
    assert not any(name.startswith("Deltran-Dlq-") for name in replay.headers)
    carried = unwrap_replay(replay)
    assert carried.subject == message.subject
    assert codec.decode(*carried) == codec.decode(*codec.encode(message))
