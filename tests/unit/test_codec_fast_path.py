"""The fast paths give what the reference paths give.

The NATS codec's ``encode_block``/``decode_block`` against ``encode``/``decode``; the NATS
adapter's protocol parser, header-block reader and receipts against nats-py's and the
port's own.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from unittest import mock

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.protocol.parser import Parser
from strategies import messages
from vectors import VECTORS, message_of

from message_bus import DecodeError, Message, MessageType, PartitionKey, ValidationError, WireCodec
from message_bus.adapters.nats.framing import BlockCodec
from message_bus.adapters.nats.headers import header_block, headers_of
from message_bus.adapters.nats.internals import FastParser

codec = BlockCodec()


def _general_decode(codec: WireCodec, subject: str, block: bytes, body: bytes) -> Message:
    """What the subscriber decodes without the fast path: nats-py's header parse + decode."""
    headers = Client._parse_header_lines(block[len(b"NATS/1.0\r\n") :]) or None
    return codec.decode(subject, headers, body)


@given(messages(any_time=True), st.integers(min_value=1, max_value=4096))
def test_the_fast_encoding_is_the_reference_encoding_serialized(
    message: Message, partitions: int
) -> None:
    wire = BlockCodec(partitions)
    subject, headers, body = wire.encode(message)

    fast = wire.encode_block(message)

    assert (fast.subject, fast.header_block, fast.body) == (subject, header_block(headers), body)
    assert fast.partition == wire.partition_of(message)


@given(messages(any_time=True), st.integers(min_value=1, max_value=4096))
def test_the_core_publish_command_frames_the_reference_encoding(
    message: Message, partitions: int
) -> None:
    wire = BlockCodec(partitions)
    subject, headers, body = wire.encode(message)
    block = header_block(headers)

    command, size, body_size, pub_subject, partition = wire.encode_pub(message)

    framed = b"HPUB %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        len(block),
        len(block) + len(body),
        block,
        body,
    )
    assert command == framed
    assert (size, body_size, pub_subject) == (len(block) + len(body), len(body), subject)
    assert partition == wire.partition_of(message)


@given(st.lists(messages(any_time=True), max_size=12), st.integers(min_value=1, max_value=4096))
def test_a_core_batch_is_the_core_publish_commands_of_its_messages_in_order(
    batch: list[Message], partitions: int
) -> None:
    wire = BlockCodec(partitions)
    one_by_one = [wire.encode_pub(message) for message in batch]

    encoded = wire.encode_pubs(batch)

    assert encoded.commands == b"".join(pub[0] for pub in one_by_one)
    assert encoded.ids == [message.id for message in batch]
    assert [(r.subject, r.partition) for r in encoded.routes] == [p[3:] for p in one_by_one]
    assert encoded.largest >= max((pub[1] for pub in one_by_one), default=0)
    assert encoded.body_bytes == sum(pub[2] for pub in one_by_one)
    wire.check_pubs(batch)
    assert wire.encode_blocks(batch) == [wire.encode_block(message) for message in batch]


def test_a_core_batch_with_unusual_columns_still_encodes_each_message_as_the_single_path() -> None:
    key = PartitionKey.corridor("USD-EUR")
    plain = Message.new(MessageType.SYSTEM_EVENT, key, {"a": None, "b": [1, 2]})
    odd = [
        plain,
        msgspec.structs.replace(plain, payload=msgspec.Raw(b'{"a":\n1}')),  # a line break
        msgspec.structs.replace(plain, created_at=plain.created_at.replace(microsecond=0)),
        plain.with_headers({"X-Trace": "t1"}),
        Message.new(MessageType.SYSTEM_EVENT, key, {"n": 1}, correlation_id="c-1"),
    ]
    wire = BlockCodec()

    encoded = wire.encode_pubs(odd)

    assert encoded.commands == b"".join(wire.encode_pub(m)[0] for m in odd)
    assert wire.encode_blocks(odd) == [wire.encode_block(m) for m in odd]


@pytest.mark.parametrize(
    "zone",
    [timezone(timedelta(seconds=30)), timezone(timedelta(microseconds=1)), timezone(timedelta(0))],
    ids=["30s", "1us", "zero"],
)
def test_a_core_batch_writes_the_reference_timestamp_in_any_zone(zone: timezone) -> None:
    plain = Message.new(MessageType.SYSTEM_EVENT, PartitionKey.corridor("USD-EUR"), {"n": 1})
    moment = datetime(2026, 1, 5, 10, 0, 0, 123456, tzinfo=zone)
    odd = msgspec.structs.replace(plain, created_at=moment)
    wire = BlockCodec()

    encoded = wire.encode_pubs([plain, odd])

    assert encoded.commands == b"".join(wire.encode_pub(m)[0] for m in (plain, odd))
    assert wire.encode(odd)[1]["Deltran-Created-At"].encode() in encoded.commands
    assert wire.encode_blocks([plain, odd]) == [wire.encode_block(m) for m in (plain, odd)]


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        ({"correlation_id": "a b"}, {"payload": {"x": float("nan")}}, "correlation_id"),
        ({"headers": {"X-A": "a\rb"}}, {"payload": {"x": float("nan")}}, "headers"),
        ({"payload": {"x": float("nan")}}, {"partition_key": "corridor.USD-EUR"}, "payload.x"),
        (
            {"created_at": datetime(1, 1, 1, 0, 0, 0, 5, tzinfo=timezone(timedelta(hours=5)))},
            {"id": "two words"},
            None,
        ),
    ],
)
def test_a_batch_names_its_first_bad_message_as_the_single_path_does(
    first: dict[str, object], second: dict[str, object], match: str | None
) -> None:
    good = Message.new(MessageType.SYSTEM_EVENT, PartitionKey.corridor("USD-EUR"), {"n": 1})
    batch = [good, msgspec.structs.replace(good, **first), msgspec.structs.replace(good, **second)]
    wire = BlockCodec()
    with pytest.raises((ValidationError, OverflowError)) as single:  # a year-1 time overflows
        wire.encode_pub(batch[1])
    if match is not None:
        assert match in str(single.value)

    for encode in (wire.encode_pubs, wire.check_pubs, wire.encode_blocks):
        with pytest.raises(type(single.value)) as batched:
            encode(batch)
        assert str(batched.value) == str(single.value)


def test_checking_a_batch_first_checks_its_timestamps_too() -> None:
    good = Message.new(MessageType.SYSTEM_EVENT, PartitionKey.corridor("USD-EUR"), {"n": 1})
    early = datetime(1, 1, 1, 0, 0, 0, 5, tzinfo=timezone(timedelta(hours=5)))
    batch = [good] * 5000 + [msgspec.structs.replace(good, created_at=early)]

    with pytest.raises(OverflowError):  # as the single path: before anything is sent
        BlockCodec().check_pubs(batch)


def test_a_batch_compares_types_and_ids_by_identity_not_equality() -> None:
    good = Message.new(MessageType.SYSTEM_EVENT, PartitionKey.corridor("USD-EUR"), {"n": 1})
    wire = BlockCodec()
    wire.encode_pubs([good])
    for forged in (
        msgspec.structs.replace(good, message_type=mock.ANY),
        msgspec.structs.replace(good, correlation_id=mock.ANY),
        msgspec.structs.replace(good, causation_id=mock.ANY),
    ):
        with pytest.raises(ValidationError):
            wire.encode_pub(forged)
        with pytest.raises(ValidationError):
            wire.encode_pubs([good, forged])
        with pytest.raises(ValidationError):
            wire.check_pubs([good, forged])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"id": "two words"}, "id"),
        ({"payload": {"amount": float("nan")}}, "payload.amount"),
        ({"payload": {"x": object()}}, "payload"),
        ({"causation_id": "a\r\nb"}, "causation_id"),
        ({"headers": {"X-A": "a\r\nPUB x 0"}}, "CR, LF or NUL"),
        ({"partition_key": "corridor.USD-EUR"}, "partition_key"),
    ],
)
def test_one_bad_message_refuses_the_whole_core_batch_naming_it(
    change: dict[str, object], match: str
) -> None:
    good = [
        Message.new(MessageType.SYSTEM_EVENT, PartitionKey.corridor("USD-EUR"), {"n": i})
        for i in range(5000)  # more than one slice of the check
    ]
    batch = [*good[:4500], msgspec.structs.replace(good[0], **change), *good[4500:]]
    wire = BlockCodec()

    with pytest.raises(ValidationError, match=match):
        wire.check_pubs(batch)
    with pytest.raises(ValidationError, match=match):
        wire.encode_pubs(batch)


@given(messages(any_time=True), st.integers(min_value=1, max_value=4096))
def test_the_fast_decoding_returns_what_the_reference_decoding_returns(
    message: Message, partitions: int
) -> None:
    wire = BlockCodec(partitions)
    fast = wire.encode_block(message)

    decoded = wire.decode_block(fast.subject, fast.header_block, fast.body)

    assert decoded == _general_decode(wire, fast.subject, fast.header_block, fast.body)
    assert decoded is not None
    assert decoded.id == message.id
    assert decoded.created_at == message.created_at


def test_the_fast_encoding_matches_the_documented_vectors_in_order() -> None:
    for vector in VECTORS:
        message = message_of(vector)
        fast = BlockCodec(vector["partitions"]).encode_block(message)
        expected = "".join(f"{k}: {v}\r\n" for k, v in vector["wire"]["headers"].items())
        assert fast.subject == vector["wire"]["subject"]
        assert fast.header_block == f"NATS/1.0\r\n{expected}\r\n".encode()
        assert fast.body.decode() == vector["wire"]["body"]


def _good_block() -> tuple[str, bytes, bytes]:
    message = Message.new(
        MessageType.BANK_CONFIRMATION,
        PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKGB2L"),
        {"cycle_id": "c1"},
        correlation_id="corr-1",
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    fast = codec.encode_block(message)
    return fast.subject, fast.header_block, fast.body


def _lines(block: bytes) -> list[bytes]:
    return block.split(b"\r\n")[1:-2]


def _join(lines: list[bytes]) -> bytes:
    return b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@st.composite
def mangled(draw: st.DrawFn) -> tuple[str, bytes, bytes]:
    """A good message with one thing changed, as a foreign or broken producer might."""
    subject, block, body = _good_block()
    lines = _lines(block)
    kind = draw(st.sampled_from(["line", "swap", "dup", "drop", "insert", "byte", "subject"]))
    if kind == "line":
        lines[draw(st.integers(0, len(lines) - 1))] = draw(st.binary(max_size=40))
    elif kind == "swap":
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "dup":
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(draw(st.integers(0, len(lines))), lines[i])
    elif kind == "drop":
        del lines[draw(st.integers(0, len(lines) - 1))]
    elif kind == "insert":
        name = draw(
            st.sampled_from(
                ["Deltran-Type", "Nats-Msg-Id", "Content-Type", "X-A", "Deltran-Replay-Of"]
            )
        )
        value = draw(st.sampled_from(["NettingProposal", "other-id", "text/plain", " v ", "1"]))
        lines.insert(draw(st.integers(0, len(lines))), f"{name}:{value}".encode())
    elif kind == "subject":
        subject = draw(st.sampled_from([subject + "X", "deltran.netting.proposal.broadcast"]))
    block = _join(lines)
    if kind == "byte":
        raw = bytearray(block)
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        block = bytes(raw)
    return subject, block, body


@given(mangled())
def test_the_fast_decoding_never_accepts_what_the_reference_would_read_differently(
    wire: tuple[str, bytes, bytes],
) -> None:
    subject, block, body = wire

    fast = codec.decode_block(subject, block, body)

    try:
        reference = _general_decode(codec, subject, block, body)
    except DecodeError:
        assert fast is None
    else:
        assert fast is None or fast == reference


def test_a_misrouted_message_is_left_to_the_reference_decoding_which_rejects_it() -> None:
    _, block, body = _good_block()
    other = "deltran.bank.confirmation.corridor.GBP-USD.bank.BANKGB2L"

    assert codec.decode_block(other, block, body) is None
    with pytest.raises(DecodeError, match="subject"):
        _general_decode(codec, other, block, body)


def test_a_message_built_around_the_checks_is_still_refused_by_the_fast_encoding() -> None:
    good = Message.new(MessageType.PAYMENT_INSTRUCTION, PartitionKey.corridor("USD-EUR"), {})
    codec.encode_block(good)  # the route is cached: the checks still run per message
    forged = [
        (msgspec.structs.replace(good, headers={"Nats-Msg-Id": "other"}), "reserved"),
        (msgspec.structs.replace(good, headers={"X-A": "a\r\nPUB x 0"}), "CR, LF or NUL"),
        (msgspec.structs.replace(good, headers={"X-A": "lone \ud800"}), "lone surrogate"),
        (msgspec.structs.replace(good, id="two words"), "id"),
        (msgspec.structs.replace(good, id=""), "id"),
        (msgspec.structs.replace(good, causation_id="a\r\nb"), "causation_id"),
        (msgspec.structs.replace(good, correlation_id="x" * 129), "correlation_id"),
        (msgspec.structs.replace(good, partition_key="corridor.USD-EUR"), "partition_key"),
        (msgspec.structs.replace(good, message_type="PaymentInstruction"), "message_type"),
    ]
    for message, match in forged:
        with pytest.raises(ValidationError, match=match):
            codec.encode_block(message)
        with pytest.raises(ValidationError, match=match):
            codec.encode_pub(message)


class _RecordingConnection:
    """What a protocol parser calls on its connection, recorded in order."""

    def __init__(self, routed_sids: tuple[int, ...] = ()) -> None:
        self.events: list[tuple[object, ...]] = []
        self.stats = {"in_msgs": 0, "in_bytes": 0}
        self.raw_routes = {sid: self._route for sid in routed_sids}

    def _route(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.events.append(("msg", subject, reply, data, headers))

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.events.append(("msg", subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.events.append(("ping",))

    async def _process_pong(self) -> None:
        self.events.append(("pong",))

    async def _process_info(self, info: dict[str, object]) -> None:
        self.events.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.events.append(("err", err))


_subjects = st.sampled_from([b"deltran.a.b", b"_INBOX.x.y", b"$JS.ACK.S.C.1.2.3.4.0"])
_payloads = st.binary(max_size=40)


@st.composite
def protocol_items(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["msg", "hmsg", "ping", "pong", "ok", "info", "err"]))
    sid = draw(st.sampled_from([1, 2]))
    reply = draw(st.sampled_from([b"", b"_INBOX.r.1"]))
    subject = draw(_subjects)
    payload = draw(_payloads)
    reply_part = b" " + reply if reply else b""
    if kind == "msg":
        return b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, reply_part, len(payload), payload)
    if kind == "hmsg":
        block = draw(
            st.sampled_from([b"NATS/1.0\r\nA: 1\r\n\r\n", b"NATS/1.0 408 Request Timeout\r\n\r\n"])
        )
        total = len(block) + len(payload)
        head = b"HMSG %s %d%s %d %d\r\n" % (subject, sid, reply_part, len(block), total)
        return head + block + payload + b"\r\n"
    return {
        "ping": b"PING\r\n",
        "pong": b"PONG\r\n",
        "ok": b"+OK\r\n",
        "info": b'INFO {"server_id":"x"}\r\n',
        "err": b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n",
    }[kind]


async def _parse_in_chunks(parser: Parser, stream: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        await parser.parse(stream[start:cut])
        start = cut


@given(st.lists(protocol_items(), max_size=12), st.lists(st.integers(0, 600), max_size=8))
async def test_the_fast_parser_reads_every_stream_as_nats_py_does(
    items: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(items)
    cuts = [c for c in cuts if c <= len(stream)]
    reference, fast = _RecordingConnection(), _RecordingConnection(routed_sids=(1,))

    await _parse_in_chunks(Parser(reference), stream, cuts)
    await _parse_in_chunks(FastParser(fast), stream, cuts)

    assert fast.events == reference.events
    assert len(fast.events) == sum(1 for item in items if item != b"+OK\r\n")  # +OK: nothing


@pytest.mark.parametrize(
    "block",
    [
        b"NATS/1.0\r\nNats-Msg-Id: 1\r\nX: a b \r\n\r\n",
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 5\r\nNats-Last-Stream: 9\r\n\r\n",
        b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 7\r\n\r\n",
        b"NATS/1.0 409 Consumer Deleted\r\n\r\n",
        b"NATS/1.0 503\r\n\r\n",
        b"NATS/1.0 404 No Messages\r\n\r\n",
        b"NATS/1.0\r\n\r\n",
        b"NATS/1.0\r\nBad Name: x\r\nno colon\r\n\r\n",
    ],
)
async def test_the_header_block_reader_gives_what_nats_py_gives_a_msg(block: bytes) -> None:
    assert headers_of(block) == await Client()._process_headers(block)
