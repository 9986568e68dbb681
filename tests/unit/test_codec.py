"""The wire codec: what goes on the wire, and that bad bytes give typed errors."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import messages
from vectors import VECTORS, message_of

from message_bus import DecodeError, Message, MessageType, PartitionKey, ValidationError, WireCodec

codec = WireCodec()


@given(messages(), st.integers(min_value=1, max_value=4096))
def test_every_message_survives_the_wire_unchanged(message: Message, partitions: int) -> None:
    wire = WireCodec(partitions)
    subject, headers, body = wire.encode(message)
    back = wire.decode(subject, headers, body)
    assert back.id == message.id
    assert back.message_type is message.message_type
    assert back.partition_key == message.partition_key
    assert back.payload == message.payload
    assert back.created_at == message.created_at
    assert back.correlation_id == message.correlation_id
    assert back.causation_id == message.causation_id
    assert dict(back.headers) == dict(message.headers)
    assert back.partition == message.partition_key.partition_number(partitions)
    assert back.partitions == (None if back.partition is None else partitions)
    assert wire.encode(back) == (subject, headers, body)


def test_encoding_matches_the_documented_vectors() -> None:
    for vector in VECTORS:
        message = message_of(vector)
        subject, headers, body = WireCodec(vector["partitions"]).encode(message)
        assert subject == vector["wire"]["subject"]
        assert headers == vector["wire"]["headers"]
        assert body.decode() == vector["wire"]["body"]
        back = WireCodec(vector["partitions"]).decode(subject, headers, body)
        expected = vector["wire"]["headers"].get("Deltran-Partition")
        assert back.partition == (None if expected is None else int(expected))
        assert back.payload == vector["message"]["payload"]


def test_a_foreign_client_may_send_rfc3339_with_nanoseconds_and_an_offset() -> None:
    subject, headers, body = codec.encode(
        Message.new(MessageType.SYSTEM_EVENT, PartitionKey.broadcast(), {"event": "x"})
    )
    headers["Deltran-Created-At"] = "2026-11-27T15:57:19.123456789+02:00"
    back = codec.decode(subject, headers, body)
    assert back.created_at == datetime(2026, 11, 27, 13, 57, 19, 123456, tzinfo=UTC)


def _good() -> tuple[str, dict[str, str], bytes]:
    message = Message.new(
        MessageType.PAYMENT_INSTRUCTION, PartitionKey.corridor("USD-EUR"), {"payment_id": "p1"}
    )
    return codec.encode(message)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s, h, b: (s, None, b), "headers"),
        (
            lambda s, h, b: (s, {k: v for k, v in h.items() if k != "Deltran-Type"}, b),
            "Deltran-Type",
        ),
        (lambda s, h, b: (s, {**h, "Deltran-Type": "Payment"}, b), "Deltran-Type"),
        (lambda s, h, b: (s, {k: v for k, v in h.items() if k != "Nats-Msg-Id"}, b), "Nats-Msg-Id"),
        (lambda s, h, b: (s, {**h, "Nats-Msg-Id": "has space"}, b), "Nats-Msg-Id"),
        (
            lambda s, h, b: (s, {**h, "Deltran-Partition-Key": "corridor.usd-eur"}, b),
            "Deltran-Partition-Key",
        ),
        (lambda s, h, b: (s, {**h, "Deltran-Partition-Key": "corridor.GBP-USD"}, b), "subject"),
        (lambda s, h, b: ("deltran.payment.instruction.corridor.GBP-USD", h, b), "subject"),
        (lambda s, h, b: ("deltran.netting.proposal.corridor.USD-EUR", h, b), "subject"),
        (lambda s, h, b: (s, {**h, "Deltran-Partition": "7"}, b), "Deltran-Partition"),
        (lambda s, h, b: (s, {**h, "Deltran-Partition": "x"}, b), "Deltran-Partition"),
        (lambda s, h, b: (s, {**h, "Deltran-Partitions": "0"}, b), "Deltran-Partitions"),
        (
            lambda s, h, b: (s, {k: v for k, v in h.items() if k != "Deltran-Partitions"}, b),
            "Deltran-Partition",
        ),
        (lambda s, h, b: (s, {**h, "Deltran-Created-At": "yesterday"}, b), "Deltran-Created-At"),
        (
            lambda s, h, b: (s, {**h, "Deltran-Created-At": "2026-11-27T13:57:19"}, b),
            "Deltran-Created-At",
        ),
        (
            lambda s, h, b: (s, {k: v for k, v in h.items() if k != "Deltran-Created-At"}, b),
            "Deltran-Created-At",
        ),
        (lambda s, h, b: (s, {**h, "Content-Type": "application/xml"}, b), "Content-Type"),
        (lambda s, h, b: (s, {**h, "Deltran-Correlation-Id": "a b"}, b), "Deltran-Correlation-Id"),
        (lambda s, h, b: (s, h, b"{not json"), "body"),
        (lambda s, h, b: (s, h, b"\xff\xfe"), "body"),
    ],
)
def test_bad_wire_input_gives_a_decode_error_naming_the_part(mutate: Any, field: str) -> None:
    with pytest.raises(DecodeError) as caught:
        codec.decode(*mutate(*_good()))
    assert caught.value.field == field
    assert caught.value.reason


@given(
    st.binary(max_size=64), st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6)
)
def test_arbitrary_bytes_and_headers_never_escape_as_anything_but_decode_error(
    body: bytes, headers: dict[str, str]
) -> None:
    subject, good_headers, _ = _good()
    for candidate in (headers, {**good_headers, **headers}):
        with contextlib.suppress(DecodeError):
            codec.decode(subject, candidate, body)


def test_a_payload_that_is_not_json_is_rejected_before_any_io() -> None:
    message = Message.new(MessageType.PAYMENT_INSTRUCTION, PartitionKey.corridor("USD-EUR"), {1j})
    with pytest.raises(ValidationError) as caught:
        codec.encode(message)
    assert caught.value.field == "payload"


def test_broadcast_messages_carry_no_partition_headers() -> None:
    _, headers, _ = codec.encode(
        Message.new(MessageType.SYSTEM_EVENT, PartitionKey.broadcast(), {"event": "halt"})
    )
    assert "Deltran-Partition" not in headers
    assert "Deltran-Partitions" not in headers


def test_partition_count_is_part_of_the_codec() -> None:
    with pytest.raises(ValidationError, match="partitions"):
        WireCodec(0)
    message = Message.new(MessageType.PAYMENT_INSTRUCTION, PartitionKey.corridor("USD-EUR"), {})
    assert WireCodec(256).encode(message).headers["Deltran-Partitions"] == "256"


def test_a_message_built_around_the_checks_is_still_refused_at_encode() -> None:
    import msgspec

    good = Message.new(MessageType.PAYMENT_INSTRUCTION, PartitionKey.corridor("USD-EUR"), {})
    forged = msgspec.structs.replace(good, headers={"Nats-Msg-Id": "other"})
    with pytest.raises(ValidationError, match="reserved"):
        codec.encode(forged)
    with pytest.raises(ValidationError, match="id"):
        codec.encode(msgspec.structs.replace(good, id="two words"))
    with pytest.raises(ValidationError, match="causation_id"):
        codec.encode(msgspec.structs.replace(good, causation_id="a\r\nb"))
