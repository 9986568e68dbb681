"""An ordered group's reader and dead-letter sink on real nats-server processes: reads
in order from a start sequence, only its type's and its own group's replay subjects,
waits at the tail, keeps undecodable messages as records, reopens, deletes its consumer,
fails visibly when the connection drops, and stores dead letters once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.js.api import AckPolicy
from proxy import TcpProxy
from servers import connect
from waits import eventually

from message_bus import Message, MessageType, PartitionKey
from message_bus.adapters.nats import (
    JetStreamDeadLetters,
    JetStreamPublisher,
    JetStreamSource,
    NatsClient,
    NatsDeadLetterSink,
    StreamManager,
)
from message_bus.adapters.ordered.source import Cursor, Record
from message_bus.adapters.ordered.store import StoreUnavailable
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.domain.errors import StreamError, ValidationError
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
GROUP = "settlement"
CONSUMER = "ordered__settlement"
USD_EUR = PartitionKey.corridor("USD-EUR")
GBP = PartitionKey.bank("BANKGB2L")


def payment(n: int, key: PartitionKey = USD_EUR) -> Message:
    return Message.new(
        PAYMENT,
        key,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    await StreamManager(client).apply()
    yield client
    await client.close()


def source(client: NatsClient, consumer: str = CONSUMER, **options: float) -> JetStreamSource:
    options = {"pull_expires": 2.0, "idle_heartbeat": 0.5, **options}
    return JetStreamSource(client, STREAM, PAYMENT, consumer, **options)  # type: ignore[arg-type]


async def read_all(cursor: Cursor, count: int, limit: int = 100) -> list[Record]:
    records: list[Record] = []
    async with asyncio.timeout(30):
        while len(records) < count:
            records.extend(await cursor.read(limit))
    return records


async def read_until_it_fails(cursor: Cursor) -> None:
    """Reads what the cursor still has buffered until it raises (within 30 s)."""
    async with asyncio.timeout(30):
        while True:
            await cursor.read(100)


async def consumer_names(client: NatsClient) -> list[str]:
    return sorted(info.name for info in await client.jetstream.consumers_info(STREAM))


async def test_reads_in_order_from_a_start_sequence_with_keys_and_messages(
    client: NatsClient,
) -> None:
    messages = [payment(n, USD_EUR if n % 2 else GBP) for n in range(10)]
    async with JetStreamPublisher(client) as publisher:
        receipts = [await publisher.publish(m) for m in messages]
    cursor = await source(client).open(receipts[3].sequence)
    try:
        records = await read_all(cursor, 7, limit=3)
    finally:
        await cursor.close()

    assert [r.sequence for r in records] == [r.sequence for r in receipts[3:]]
    assert [r.message.id for r in records if r.message] == [m.id for m in messages[3:]]
    assert [r.key for r in records] == [m.partition_key.suffix for m in messages[3:]]
    assert {r.error for r in records} == {""}
    assert records[0].subject == "deltran.payment.instruction.corridor.USD-EUR"


async def test_a_start_before_the_streams_first_sequence_starts_at_its_first(
    client: NatsClient,
) -> None:
    async with JetStreamPublisher(client) as publisher:
        for n in range(5):
            await publisher.publish(payment(n))
    await client.jetstream.purge_stream(STREAM, seq=4)  # keeps 4 and 5

    cursor = await source(client).open(1)
    try:
        records = await read_all(cursor, 2)
    finally:
        await cursor.close()

    assert [r.sequence for r in records] == [4, 5]


async def test_other_groups_replays_are_skipped_and_its_own_are_read_as_the_original(
    client: NatsClient,
) -> None:
    sink = NatsDeadLetterSink(client, GROUP, CONSUMER)
    other_sink = NatsDeadLetterSink(client, "other", "other-group")
    dead_letters = JetStreamDeadLetters(client)
    async with JetStreamPublisher(client) as publisher:
        ours, theirs = payment(1), payment(2)
        await publisher.publish(ours)
        await publisher.publish(theirs)
        # another type of the bus, in its own stream: never read here
        await publisher.publish(
            Message.new(
                MessageType.NETTING_PROPOSAL,
                USD_EUR,
                sample_payload(MessageType.NETTING_PROPOSAL, cycle=1),
            )
        )
    cursor = await source(client).open(1)
    first = await read_all(cursor, 2)
    await sink.dead_letter(first[0], 3, "handler gave up")
    other_cursor = await source(client, "other-group").open(1)
    await other_sink.dead_letter((await read_all(other_cursor, 2))[1], 1, "not ours")
    await other_cursor.close()
    letters = {letter.consumer: letter for letter in await dead_letters.list()}
    await dead_letters.replay(letters["other-group"].dlq_sequence or 0)
    await dead_letters.replay(letters[CONSUMER].dlq_sequence or 0)
    async with JetStreamPublisher(client) as publisher:
        last = await publisher.publish(payment(3))

    try:
        records = await read_all(cursor, 2)
    finally:
        await cursor.close()

    replay, after = records
    assert replay.subject == f"deltran.replay.{STREAM}.{CONSUMER}"
    assert replay.message is not None
    assert replay.message.id == ours.id
    assert replay.key == "corridor.USD-EUR"
    assert after.sequence == last.sequence


async def test_a_cursor_waits_at_the_tail_and_returns_a_message_published_later(
    client: NatsClient,
) -> None:
    cursor = await source(client).open(1)
    try:
        reading = asyncio.ensure_future(cursor.read(10))
        await asyncio.sleep(0)  # the read is waiting: nothing is stored yet
        assert not reading.done()
        async with JetStreamPublisher(client) as publisher:
            receipt = await publisher.publish(payment(1))
        async with asyncio.timeout(30):
            records = await reading
        # several idle heartbeats later, the cursor still waits (it is not silent)
        waiting = asyncio.ensure_future(cursor.read(10))
        await asyncio.wait({waiting}, timeout=2.0)
        assert not waiting.done(), "the idle cursor to keep waiting"
        waiting.cancel()
    finally:
        await cursor.close()

    assert [r.sequence for r in records] == [receipt.sequence]


async def test_an_undecodable_message_is_a_record_with_an_error(client: NatsClient) -> None:
    await client.jetstream.publish(
        "deltran.payment.instruction.corridor.USD-EUR",
        b"not json",
        headers={"Deltran-Partition-Key": "corridor.USD-EUR"},
    )
    await client.jetstream.publish("deltran.payment.instruction.corridor.USD-EUR", b"{}")
    cursor = await source(client).open(1)
    try:
        first, second = await read_all(cursor, 2)
    finally:
        await cursor.close()

    assert first.message is None
    assert first.error.startswith("undecodable")
    assert first.key == "corridor.USD-EUR"
    assert second.message is None
    assert second.key is None
    assert second.error


async def test_reopening_at_an_earlier_sequence_reads_again(client: NatsClient) -> None:
    async with JetStreamPublisher(client) as publisher:
        for n in range(5):
            await publisher.publish(payment(n))
    src = source(client)
    cursor = await src.open(1)
    assert [r.sequence for r in await read_all(cursor, 5)] == [1, 2, 3, 4, 5]
    await cursor.close()

    again = await src.open(2)
    try:
        assert [r.sequence for r in await read_all(again, 4)] == [2, 3, 4, 5]
    finally:
        await again.close()


async def test_close_deletes_the_cursors_consumer(client: NatsClient) -> None:
    src = source(client)
    cursor = await src.open(1)
    names = await consumer_names(client)
    assert len(names) == 1
    assert names[0].startswith("ephemeral-")
    info = await client.jetstream.consumer_info(STREAM, names[0])
    assert info.config.ack_policy == AckPolicy.NONE
    assert info.config.mem_storage
    assert info.config.num_replicas in (None, 0, 1)
    assert sorted(info.config.filter_subjects or []) == [
        "deltran.payment.instruction.>",
        f"deltran.replay.{STREAM}.{CONSUMER}",
    ]

    await cursor.close()
    await cursor.close()  # idempotent

    assert await consumer_names(client) == []
    with pytest.raises(StoreUnavailable):
        await cursor.read(1)


async def test_a_deleted_consumer_or_a_lost_connection_makes_read_raise(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await connect(nats_server.url)
    try:
        await StreamManager(client).apply()
        cursor = await source(client).open(1)
        (name,) = await consumer_names(client)
        await client.jetstream.delete_consumer(STREAM, name)
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(30):
                await cursor.read(1)
        await cursor.close()

        cursor = await source(client).open(1)
        nats_server.stop()
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(30):
                await cursor.read(1)
        await cursor.close()
    finally:
        await client.close()


async def test_generation_is_the_streams_creation_and_changes_when_it_is_recreated(
    client: NatsClient,
) -> None:
    src = source(client)
    first = await src.generation()
    assert first == await src.generation()
    await client.jetstream.delete_stream(STREAM)
    with pytest.raises(StreamError):
        await src.generation()
    with pytest.raises(StreamError):
        await src.open(1)
    await StreamManager(client).apply()

    assert await src.generation() != first


async def test_bad_arguments_are_refused_before_any_io(client: NatsClient) -> None:
    with pytest.raises(ValidationError, match="consumer"):
        JetStreamSource(client, STREAM, PAYMENT, "a.b")
    with pytest.raises(ValidationError, match="batch"):
        JetStreamSource(client, STREAM, PAYMENT, CONSUMER, batch=0)
    with pytest.raises(ValidationError, match="start"):
        await source(client).open(0)
    assert await consumer_names(client) == []


async def test_the_sink_stores_a_dead_letter_once_even_if_called_twice(
    client: NatsClient,
) -> None:
    message = payment(1)
    async with JetStreamPublisher(client) as publisher:
        await publisher.publish(message)
    cursor = await source(client).open(1)
    (record,) = await read_all(cursor, 1)
    await cursor.close()
    sink = NatsDeadLetterSink(client, GROUP, CONSUMER)

    await sink.dead_letter(record, 5, "max deliveries (5) reached")
    await sink.dead_letter(record, 5, "max deliveries (5) reached")

    (letter,) = await JetStreamDeadLetters(client).list()
    assert letter.message is not None
    assert letter.message.id == message.id
    assert (letter.reason, letter.deliveries) == ("max deliveries (5) reached", 5)
    assert (letter.stream, letter.sequence) == (STREAM, record.sequence)
    assert (letter.consumer_group, letter.consumer) == (GROUP, CONSUMER)
    assert letter.raw is None


async def test_the_sink_keeps_an_undecodable_message_raw(client: NatsClient) -> None:
    await client.jetstream.publish(
        "deltran.payment.instruction.corridor.USD-EUR", b"\x00garbage", headers={"X-Odd": "1"}
    )
    cursor = await source(client).open(1)
    (record,) = await read_all(cursor, 1)
    await cursor.close()

    await NatsDeadLetterSink(client, GROUP, CONSUMER).dead_letter(record, 1, record.error)

    async def stored() -> bool:
        return len(await JetStreamDeadLetters(client).list()) == 1

    await eventually(stored, "the dead letter to be listed")
    (letter,) = await JetStreamDeadLetters(client).list()
    assert letter.message is None
    assert letter.raw is not None
    assert letter.raw.body == b"\x00garbage"
    assert b"X-Odd: 1" in letter.raw.header_block
    assert letter.reason.startswith("undecodable")


async def test_a_reader_reopened_after_a_server_restart_goes_on_without_a_gap(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await connect(nats_server.url)
    try:
        await StreamManager(client).apply()
        async with JetStreamPublisher(client) as publisher:
            receipts = [await publisher.publish(payment(n)) for n in range(20)]
        src = source(client)
        cursor = await src.open(1)
        first = await read_all(cursor, 8, limit=8)
        await asyncio.to_thread(nats_server.restart)
        with pytest.raises(StoreUnavailable):  # its in-memory consumer is gone
            await read_until_it_fails(cursor)
        await cursor.close()
        assert await client.wait_connected(30.0), "the client to reconnect"

        position = first[-1].sequence + 1
        reopened: list[Cursor] = []

        async def reopen() -> bool:
            try:
                reopened.append(await src.open(position))
            except StoreUnavailable:
                return False
            return True

        await eventually(reopen, "the reader to reopen after the restart")
        rest = await read_all(reopened[0], 20 - len(first))
        await reopened[0].close()
    finally:
        await client.close()

    assert [r.sequence for r in first + rest] == [r.sequence for r in receipts]


async def test_a_reader_whose_heartbeats_went_silent_raises(
    nats_server: EmbeddedNatsServer,
) -> None:
    """A black hole between client and server: the connection looks up, nothing arrives."""
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = await connect(proxy.url)
        try:
            await StreamManager(client).apply()
            cursor = await source(client).open(1)
            proxy.drop(downstream=True)
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(StoreUnavailable, match="heartbeat"):
                await read_until_it_fails(cursor)
            silent_for = loop.time() - began
            proxy.drop()
            await cursor.close()
        finally:
            await client.close()

    assert silent_for < 10.0  # 2.5 idle heartbeats of 0.5 s, with a loaded machine's margin
