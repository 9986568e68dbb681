"""``publish_many`` in slices against a real nats-server: core batches written as one
buffer per slice, JetStream batches pipelined slice by slice, and a bad message anywhere
in a large batch sending nothing at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import nats
import pytest
from proxy import TcpProxy
from servers import connect
from waits import eventually

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    PublishBatchError,
    PublisherConfig,
    PublishReceipt,
    ValidationError,
)
from message_bus.adapters.nats import JetStreamPublisher, NatsClient, StreamManager
from message_bus.adapters.nats import publisher as publisher_module
from message_bus.adapters.nats.framing import BlockCodec
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

EVENT = MessageType.SYSTEM_EVENT  # core-only: no stream
PAYMENT = MessageType.PAYMENT_INSTRUCTION
CORRIDORS = ["USD-EUR", "GBP-USD", "EUR-JPY", "AED-INR"]


def events(count: int) -> list[Message]:
    keys = [PartitionKey.corridor(c) for c in CORRIDORS]
    return [
        Message.new(EVENT, keys[n % len(keys)], sample_payload(EVENT, component=f"node-{n}"))
        for n in range(count)
    ]


def payments(count: int) -> list[Message]:
    key = PartitionKey.corridor("USD-EUR")
    return [
        Message.new(PAYMENT, key, sample_payload(PAYMENT, payment_id=f"pay_{n}"))
        for n in range(count)
    ]


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    await StreamManager(client).apply()
    yield client
    await client.close()


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of 100 core messages, 64 JetStream ones, and no slice encoded ahead: a
    batch of a few hundred takes the paths of a batch of millions."""
    monkeypatch.setattr(publisher_module, "PUB_BATCH", 100)
    monkeypatch.setattr(publisher_module, "_MIN_SLICE", 64)
    monkeypatch.setattr(publisher_module, "_SLICE_WINDOWS", 1)
    monkeypatch.setattr(publisher_module, "_CORE_SLICES_AHEAD", 1)


async def lose_connection(proxy: TcpProxy, client: NatsClient) -> None:
    """Cuts the client's connection and refuses new ones until ``proxy.refuse(False)``."""
    proxy.refuse()
    proxy.cut()
    await eventually(lambda: not client.is_connected, "the connection lost", 10.0)


class Received:
    """Every core message on ``deltran.system.>`` as it arrived, decoded."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._codec = BlockCodec()

    async def on_message(self, msg: nats.aio.msg.Msg) -> None:
        headers = dict(msg.headers or {})
        self.messages.append(self._codec.decode(msg.subject, headers, msg.data))


async def listen(url: str) -> tuple[nats.NATS, Received]:
    nc = await nats.connect(url)
    received = Received()
    await nc.subscribe("deltran.system.>", cb=received.on_message, pending_msgs_limit=-1)
    await nc.flush()
    return nc, received


@pytest.mark.parametrize("sliced", [False, True], ids=["encoded-ahead", "checked-first"])
async def test_a_core_batch_arrives_whole_in_order_with_its_receipts(
    client: NatsClient,
    nats_server: EmbeddedNatsServer,
    monkeypatch: pytest.MonkeyPatch,
    sliced: bool,
) -> None:
    if sliced:
        monkeypatch.setattr(publisher_module, "PUB_BATCH", 700)
        monkeypatch.setattr(publisher_module, "_CORE_SLICES_AHEAD", 1)
    nc, received = await listen(nats_server.url)
    batch = events(5000)
    publisher = JetStreamPublisher(client)
    try:
        receipts = await publisher.publish_many(batch)
        await eventually(lambda: len(received.messages) >= len(batch), "every core message", 30.0)
    finally:
        await nc.close()

    assert [m.id for m in received.messages] == [m.id for m in batch]
    assert received.messages[17].payload["component"] == "node-17"
    assert receipts == [
        PublishReceipt(m.id, m.subject, None, None, False, m.partition_key.partition_number())
        for m in batch
    ]


@pytest.mark.usefixtures("small_slices")
async def test_one_bad_message_at_the_end_of_a_large_core_batch_sends_nothing(
    nats_server: EmbeddedNatsServer,
) -> None:
    bad = Message.new(EVENT, PartitionKey.corridor("USD-EUR"), {"x": object()})
    batch = [*events(450), bad]
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = await connect(proxy.url)
        try:
            before = len(proxy.seen_upstream)
            with pytest.raises(ValidationError, match="payload"):
                await JetStreamPublisher(
                    client, PublisherConfig(validate_payloads=False)
                ).publish_many(batch)
            await client.flush()
            sent = proxy.seen_upstream[before:]
        finally:
            await client.close()

    assert b"HPUB deltran.system" not in sent


@pytest.mark.usefixtures("small_slices")
async def test_a_jetstream_batch_of_many_slices_is_stored_once_in_order(
    client: NatsClient,
) -> None:
    batch = payments(300)
    publisher = JetStreamPublisher(client, PublisherConfig(max_in_flight=16))

    receipts = await publisher.publish_many(batch)

    assert [r.sequence for r in receipts] == list(range(1, 301))
    assert [r.message_id for r in receipts] == [m.id for m in batch]
    info = await client.jetstream.stream_info("PAYMENT_INSTRUCTIONS")
    assert info.state.messages == 300


@pytest.mark.usefixtures("small_slices")
async def test_a_bad_message_in_the_last_jetstream_slice_stores_nothing(
    client: NatsClient,
) -> None:
    good = payments(251)
    bad = msgspec.structs.replace(good[-1], payload={"amount": float("inf")})  # past Message.new
    batch = [*good[:250], bad]
    publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))

    with pytest.raises(ValidationError, match=r"payload\.amount"):
        await publisher.publish_many(batch)

    info = await client.jetstream.stream_info("PAYMENT_INSTRUCTIONS")
    assert info.state.messages == 0


@pytest.mark.usefixtures("small_slices")
async def test_a_core_batch_waits_for_a_lost_connection_and_then_goes_out_whole(
    nats_server: EmbeddedNatsServer,
) -> None:
    nc, received = await listen(nats_server.url)
    batch = events(450)
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = await connect(proxy.url)
        publisher = JetStreamPublisher(client, PublisherConfig(publish_timeout=20.0))
        try:
            await lose_connection(proxy, client)
            publishing = asyncio.create_task(publisher.publish_many(batch))
            await asyncio.sleep(0)
            assert not publishing.done()
            proxy.refuse(False)
            receipts = await asyncio.wait_for(publishing, 30.0)
            await eventually(
                lambda: len(received.messages) >= len(batch), "every core message", 30.0
            )
        finally:
            await client.close()
            await nc.close()

    assert len(receipts) == len(batch)
    assert [m.id for m in received.messages] == [m.id for m in batch]


async def test_a_core_batch_over_the_servers_limit_reports_that_message_and_sends_the_rest(
    client: NatsClient, nats_server: EmbeddedNatsServer
) -> None:
    nc, received = await listen(nats_server.url)
    too_large = Message.new(
        EVENT, PartitionKey.corridor("USD-EUR"), sample_payload(EVENT, component="x" * 2_000_000)
    )
    batch = [*events(3), too_large, *events(3)]
    try:
        with pytest.raises(PublishBatchError) as refused:
            await JetStreamPublisher(client).publish_many(batch)
        await eventually(lambda: len(received.messages) >= 6, "the six that fit", 30.0)
    finally:
        await nc.close()

    outcomes = refused.value.results
    assert [isinstance(o, PublishReceipt) for o in outcomes] == [True] * 3 + [False] + [True] * 3
    assert {m.id for m in received.messages} == {m.id for i, m in enumerate(batch) if i != 3}


async def test_a_core_batch_the_server_stops_reading_fails_its_rest_within_the_timeout(
    nats_server: EmbeddedNatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_module, "PUB_BATCH", 500)
    monkeypatch.setattr(publisher_module, "_CORE_BACKLOG", 256 << 10)
    batch = events(20_000)  # about 7 MB: more than the sockets on the way hold
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = await connect(proxy.url)
        publisher = JetStreamPublisher(client, PublisherConfig(publish_timeout=1.0))
        try:
            proxy.delay(60.0)  # the proxy holds what it read: nothing more is read
            began = asyncio.get_running_loop().time()
            with pytest.raises(PublishBatchError) as stalled:
                await asyncio.wait_for(publisher.publish_many(batch), 30.0)
            took = asyncio.get_running_loop().time() - began
        finally:
            proxy.cut()
            await client.close()

    results = stalled.value.results
    written = [r for r in results if isinstance(r, PublishReceipt)]
    failed = [r for r in results if not isinstance(r, PublishReceipt)]
    assert len(results) == len(batch)
    assert written, "the first slices were queued before the socket filled"
    assert failed, "the rest failed instead of growing the buffer"
    assert results == written + failed  # the receipts come first, in input order
    assert all("did not take the batch" in str(error) for error in failed)
    assert took < 10.0


async def test_a_core_batch_without_a_connection_fails_within_one_timeout_not_one_each(
    nats_server: EmbeddedNatsServer,
) -> None:
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = await connect(proxy.url)
        publisher = JetStreamPublisher(client, PublisherConfig(publish_timeout=1.0))
        try:
            await lose_connection(proxy, client)
            began = asyncio.get_running_loop().time()
            with pytest.raises(PublishBatchError) as refused:
                await publisher.publish_many(events(8))
            took = asyncio.get_running_loop().time() - began
        finally:
            proxy.refuse(False)
            await client.close()

    assert len(refused.value.errors) == 8
    # one publish_timeout (1 s) for the batch; waiting it out per message took 5.3 s here
    assert took < 3.5, f"8 core messages without a connection took {took:.1f} s"
