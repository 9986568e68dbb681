"""Dead letters kept safe and raw, listed with their replays, replayed to one group only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus import (
    AlreadyReplayedError,
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    PermanentError,
    SubscriberConfig,
    ValidationError,
    WireCodec,
)
from message_bus.adapters.memory import InMemoryBroker
from message_bus.adapters.nats.headers import header_block
from message_bus.app.cli import run_cli
from message_bus.app.cli.output import dead_letter_table
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    Container,
    build_container,
    shutdown_container,
    start_container,
)
from message_bus.domain.codec import Encoded
from message_bus.domain.dead_letter import (
    DeadLetter,
    RawMessage,
    Replay,
    decode_dead_letter,
    decode_replay_marker,
    encode_dead_letter,
    encode_replay_marker,
    raw_of,
    replay_of,
    replay_subject,
    unwrap_replay,
)
from message_bus.testing.samples import sample_payload

codec = WireCodec()
PAYMENT = MessageType.PAYMENT_INSTRUCTION
FAILED_AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def payment(n: int = 0) -> Message:
    key = PartitionKey.corridor("USD-EUR")
    return Message.new(PAYMENT, key, sample_payload(PAYMENT, payment_id=f"pay_{n}"))


def dead_letter_of(original: Encoded, raw_header_block: bytes | None = None) -> Encoded:
    return encode_dead_letter(
        original,
        reason="rejected",
        stream="PAYMENT_INSTRUCTIONS",
        sequence=7,
        deliveries=1,
        consumer_group="netting",
        consumer="d__netting",
        failed_at=FAILED_AT,
        raw_header_block=raw_header_block,
    )


# -- the safe form -------------------------------------------------------------------------


@given(block=st.binary(max_size=300), body=st.binary(max_size=300), subject=st.text(max_size=40))
def test_a_raw_dead_letter_keeps_the_header_block_and_body_byte_for_byte(
    block: bytes, body: bytes, subject: str
) -> None:
    dead = dead_letter_of(Encoded(subject, {}, body), raw_header_block=block)

    raw = raw_of(dead)
    assert (raw.header_block, raw.body) == (block, body)
    header_block(dead.headers)  # its own headers are always sendable
    assert [n for n in dead.headers if n.lower().startswith("nats-")] == ["Nats-Msg-Id"]
    letter = decode_dead_letter(codec, *dead, dlq_sequence=3)
    assert letter.raw is not None
    assert (letter.raw.header_block, letter.raw.body) == (block, body)


_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
_values = st.text(st.characters(codec="utf-8"), max_size=20)


@given(extra=st.dictionaries(_names, _values, max_size=5))
def test_a_dead_letter_never_carries_nats_headers_and_is_always_sendable(
    extra: dict[str, str],
) -> None:
    original = codec.encode(payment())
    headers = {**original.headers, **extra, "Nats-Msg-Id": original.headers["Nats-Msg-Id"]}

    dead = dead_letter_of(Encoded(original.subject, headers, original.body))

    header_block(dead.headers)  # raises if a name or value could corrupt the protocol
    assert [n for n in dead.headers if n.lower().startswith("nats-")] == ["Nats-Msg-Id"]
    assert dead.headers["Deltran-Dlq-Message-Id"] == original.headers["Nats-Msg-Id"]
    letter = decode_dead_letter(codec, *dead, dlq_sequence=1)
    assert letter.reason == "rejected"
    assert letter.message is not None or letter.raw is not None


def test_a_poison_header_makes_the_dead_letter_raw_and_the_message_still_decodes() -> None:
    original = codec.encode(payment())
    headers = {**original.headers, "Nats-Expected-Stream": "PAYMENT_INSTRUCTIONS"}

    dead = dead_letter_of(Encoded(original.subject, headers, original.body))

    assert "Nats-Expected-Stream" not in dead.headers
    assert b"Nats-Expected-Stream: PAYMENT_INSTRUCTIONS" in dead.body
    letter = decode_dead_letter(codec, *dead, dlq_sequence=1)
    assert letter.message is not None
    assert letter.message.id == original.headers["Nats-Msg-Id"]
    assert letter.raw is not None
    assert letter.raw.headers["Nats-Expected-Stream"] == "PAYMENT_INSTRUCTIONS"


def test_a_raw_dead_letter_with_a_malformed_length_still_lists() -> None:
    dead = dead_letter_of(Encoded("deltran.x", {}, b"body"), raw_header_block=b"")
    dead.headers["Deltran-Dlq-Raw-Header-Bytes"] = "999"

    letter = decode_dead_letter(codec, *dead, dlq_sequence=1)

    assert letter.message is None
    assert letter.raw is not None
    assert letter.raw.body == dead.body


# -- replay subjects and markers -----------------------------------------------------------


def _token(text: str) -> bool:
    return bool(text) and all("!" <= c <= "~" for c in text) and "." not in text


@given(stream=st.text(max_size=12), consumer=st.text(max_size=12))
def test_a_replay_subject_is_made_of_two_tokens_or_refused(stream: str, consumer: str) -> None:
    valid = _token(stream) and stream not in ("*", ">") and _token(consumer)
    valid = valid and consumer not in ("*", ">")
    if not valid:
        with pytest.raises(ValidationError, match=r"^invalid (stream|consumer) "):
            replay_subject(stream, consumer)
        return
    assert replay_subject(stream, consumer) == f"deltran.replay.{stream}.{consumer}"


@given(
    dlq_sequence=st.integers(1, 2**63),
    sequence=st.integers(1, 2**63),
    count=st.integers(1, 1000),
    moment=st.datetimes(timezones=st.just(UTC)),
)
def test_a_replay_marker_reads_back(
    dlq_sequence: int, sequence: int, count: int, moment: datetime
) -> None:
    replay = Replay(moment, "PAYMENT_INSTRUCTIONS", sequence, f"replay-{count}", count)

    marker = encode_replay_marker(dlq_sequence, replay)

    assert marker.subject == f"deltran.dlq.replayed.{dlq_sequence}"
    assert decode_replay_marker(marker.headers) == (dlq_sequence, replay)


def test_a_message_that_is_no_marker_reads_as_none() -> None:
    assert decode_replay_marker(None) is None
    assert decode_replay_marker({"Deltran-Replayed-Dead-Letter": "x"}) is None


def test_a_replay_of_a_raw_dead_letter_drops_the_poison_nats_headers() -> None:
    message = payment()
    original = codec.encode(message)
    block = header_block({**original.headers, "Nats-Expected-Last-Sequence": "5"})
    dead = dead_letter_of(Encoded(original.subject, {}, original.body), raw_header_block=block)

    copy = replay_of(dead, 4)

    assert copy.subject == "deltran.replay.PAYMENT_INSTRUCTIONS.d__netting"
    assert [n for n in copy.headers if n.lower().startswith("nats-")] == ["Nats-Msg-Id"]
    carried = unwrap_replay(copy)
    assert codec.decode(*carried).id == message.id


# -- in memory -----------------------------------------------------------------------------


async def test_a_replay_that_fails_again_is_dead_lettered_as_the_original() -> None:
    async with InMemoryBroker() as broker:

        async def reject(message: Message) -> None:
            raise PermanentError("still rejected")

        config = SubscriberConfig(consumer_group="netting")
        await broker.subscriber(PAYMENT, config).subscribe(FunctionHandler(reject))
        sent = payment()
        await broker.publisher().publish(sent)
        await broker.settle()
        [first] = await broker.dead_letters().list()
        assert first.dlq_sequence is not None

        receipt = await broker.dead_letters().replay(first.dlq_sequence)
        await broker.settle()

        listed = await broker.dead_letters().list()
        assert [d.dlq_sequence for d in listed] == [1, 3]  # 2 is the replay marker
        again = listed[1]
        assert again.message is not None
        assert again.message.id == sent.id
        assert again.subject == sent.subject
        assert (again.stream, again.sequence) == (receipt.stream, receipt.sequence)
        assert again.consumer == config.consumer_name
        assert listed[0].replayed is not None
        assert listed[0].replayed.sequence == receipt.sequence
        assert again.replayed is None
        await broker.dead_letters().replay(3)  # a new dead letter: replayed once more
        await broker.settle()
        assert len(await broker.dead_letters().list()) == 3


# -- command line --------------------------------------------------------------------------


@pytest.fixture
async def bus() -> AsyncIterator[Container]:
    container = build_container(load_settings(environ={"DELTRAN_BACKEND": "memory"}))
    await start_container(container)
    yield container
    await shutdown_container(container)


async def test_dlq_replay_needs_force_the_second_time_and_ls_shows_the_replays(
    bus: Container, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DELTRAN_BACKEND", "DELTRAN_NATS_URLS", "DELTRAN_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    async def reject(message: Message) -> None:
        raise PermanentError("invalid payment instruction")

    subscriber = await bus.subscriber(PAYMENT, SubscriberConfig(consumer_group="netting"))
    await subscriber.subscribe(FunctionHandler(reject))
    payload = json.dumps({"payment_id": "pay-x", "amount": "-1"})
    argv = ["publish", "PaymentInstruction", "corridor.USD-EUR", payload, "--raw"]
    assert await run_cli(argv, container=bus) == 0
    dead_letters = await bus.dead_letters()
    for _ in range(500):  # bounded: the worker dead-letters it on its first delivery
        if await dead_letters.list():
            break
        await asyncio.sleep(0.01)
    capsys.readouterr()

    first = await run_cli(["dlq", "replay", "1"], container=bus)
    second = await run_cli(["dlq", "replay", "1"], container=bus)
    refused = capsys.readouterr().err
    forced = await run_cli(["dlq", "replay", "1", "--force"], container=bus)
    assert await run_cli(["dlq", "ls"], container=bus) == 0
    listing = capsys.readouterr().out

    assert (first, second, forced) == (0, 1, 0)
    assert "not replayed again: already replayed" in refused
    assert "--force" in refused
    assert "REPLAYED" in listing
    assert "(2x)" in listing
    with pytest.raises(AlreadyReplayedError):
        await dead_letters.replay(1)


def test_dlq_ls_shows_a_foreign_message_raw_and_a_replayed_one_with_its_replay() -> None:
    subject = "deltran.payment.instruction.corridor.USD-EUR"
    foreign = DeadLetter(
        message=None,
        reason="undecodable: cannot decode headers: no headers",
        subject=subject,
        stream="PAYMENT_INSTRUCTIONS",
        sequence=1,
        deliveries=1,
        consumer_group="netting",
        failed_at=FAILED_AT,
        dlq_sequence=1,
        raw=RawMessage(subject, b"NATS/1.0\r\nX-Poison: a\x00b\r\n\r\n", b'{"test": "data"}', {}),
    )
    replayed = DeadLetter(
        message=payment(),
        reason="rejected",
        subject=subject,
        stream="PAYMENT_INSTRUCTIONS",
        sequence=2,
        deliveries=1,
        consumer_group="netting",
        failed_at=FAILED_AT,
        dlq_sequence=2,
        replays=(Replay(FAILED_AT, "PAYMENT_INSTRUCTIONS", 9, "replay-2-1-x", 1),),
    )

    lines = dead_letter_table([foreign, replayed]).splitlines()

    assert lines[1].split()[:2] == ["1", "(raw)"]
    assert "2026-11-27 12:00:00->PAYMENT_INSTRUCTIONS#9" in lines[2]
    assert lines[3] == f"raw dead letter 1: subject {subject}"
    assert lines[4] == "  headers: NATS/1.0\\r\\nX-Poison: a\\x00b\\r\\n\\r\\n"
    assert lines[5] == '  body: {"test": "data"}'
