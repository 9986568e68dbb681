"""A group whose stream is deleted and applied again reads the new stream from its start."""

from __future__ import annotations

import asyncio
import logging

import pytest
from waits import eventually

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    StreamManager,
)
from message_bus.adapters.nats.subscriber.consumer import ConsumerBinding
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
USD_EUR = PartitionKey.corridor("USD-EUR")
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}
CONFIG = SubscriberConfig(consumer_group="settlement")


def payment(n: int) -> Message:
    return Message.new(
        PAYMENT,
        USD_EUR,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


async def server_ack_floor(client: NatsClient) -> int:
    info = await client.jetstream.consumer_info(STREAM, CONFIG.consumer_name)
    return int(info.ack_floor.stream_seq) if info.ack_floor is not None else 0


async def wait_for_server_ack_floor(client: NatsClient, floor: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    while (found := await server_ack_floor(client)) < floor:
        assert loop.time() < deadline, f"ack floor {found} never reached {floor} within 20s"
        await asyncio.sleep(0.05)


async def recreate_stream(client: NatsClient) -> None:
    await client.jetstream.delete_stream(STREAM)
    await StreamManager(client).apply()


async def test_a_group_reads_a_recreated_stream_from_its_start_with_one_warning(
    client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def record(message: Message) -> None:
        seen.append(message.payload["payment_id"])

    publisher = JetStreamPublisher(client)
    first = JetStreamSubscriber(client, PAYMENT, CONFIG, **FAST)  # type: ignore[arg-type]
    subscription = await first.subscribe(FunctionHandler(record))
    for n in range(1, 6):
        await publisher.publish(payment(n))
    await eventually(lambda: len(seen) >= 5, "the first 5 payments")
    await wait_for_server_ack_floor(client, 5)
    await subscription.stop()
    await first.close()

    # A restarted member binds and learns the group's ack floor (5) from the server.
    second = JetStreamSubscriber(client, PAYMENT, CONFIG, **FAST)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="message_bus.nats.subscriber"):
        subscription = await second.subscribe(FunctionHandler(record))
        await recreate_stream(client)
        for n in range(6, 11):
            receipt = await publisher.publish(payment(n))
            assert receipt.sequence == n - 5  # the new stream counts from 1 again
        await eventually(lambda: len(seen) >= 10, "the 5 payments of the new stream")
    await subscription.stop()
    await second.close()

    assert seen == [f"pay_{n}" for n in range(1, 11)]
    renewed = [r for r in caplog.records if "is a new stream" in r.getMessage()]
    assert len(renewed) == 1, [r.getMessage() for r in caplog.records]
    assert renewed[0].levelno == logging.WARNING


async def test_a_new_stream_already_past_the_old_floor_is_still_read_from_its_start(
    client: NatsClient,
) -> None:
    publisher = JetStreamPublisher(client)
    for n in range(1, 6):
        await publisher.publish(payment(n))
    binding = ConsumerBinding(client, STREAM, CONFIG, PAYMENT)
    await binding.ensure()
    # The group handles all 5 (acked on the server directly, as its members would).
    sub = await client.jetstream.pull_subscribe_bind(CONFIG.consumer_name, STREAM)
    for msg in await sub.fetch(5, timeout=10):
        await msg.ack_sync()
    assert await binding.refresh(5.0)
    assert binding.ack_floor == 5

    await recreate_stream(client)
    for n in range(6, 14):  # 8 messages: the new stream's last sequence (8) > old floor (5)
        await publisher.publish(payment(n))
    await binding.ensure()

    info = await client.jetstream.consumer_info(STREAM, CONFIG.consumer_name)
    assert info.num_pending == 8
    assert binding.ack_floor == 0


async def test_a_consumer_lost_on_the_same_stream_still_resumes_after_its_ack_floor(
    client: NatsClient,
) -> None:
    publisher = JetStreamPublisher(client)
    for n in range(1, 6):
        await publisher.publish(payment(n))
    binding = ConsumerBinding(client, STREAM, CONFIG, PAYMENT)
    await binding.ensure()
    sub = await client.jetstream.pull_subscribe_bind(CONFIG.consumer_name, STREAM)
    for msg in await sub.fetch(3, timeout=10):
        await msg.ack_sync()
    assert await binding.refresh(5.0)
    await sub.unsubscribe()

    await client.jetstream.delete_consumer(STREAM, CONFIG.consumer_name)
    await binding.ensure()

    info = await client.jetstream.consumer_info(STREAM, CONFIG.consumer_name)
    assert info.num_pending == 2  # 4 and 5: 1-3 were acknowledged


async def test_a_member_follows_a_consumer_another_member_recreated_on_a_new_stream(
    client: NatsClient,
) -> None:
    publisher = JetStreamPublisher(client)
    for n in range(1, 6):
        await publisher.publish(payment(n))
    old = ConsumerBinding(client, STREAM, CONFIG, PAYMENT)
    await old.ensure()
    sub = await client.jetstream.pull_subscribe_bind(CONFIG.consumer_name, STREAM)
    for msg in await sub.fetch(5, timeout=10):
        await msg.ack_sync()
    await sub.unsubscribe()
    assert await old.refresh(5.0)
    assert old.ack_floor == 5

    await recreate_stream(client)
    for n in range(6, 14):
        await publisher.publish(payment(n))
    other = ConsumerBinding(client, STREAM, CONFIG, PAYMENT)  # another member, restarted
    await other.ensure()
    sub = await client.jetstream.pull_subscribe_bind(CONFIG.consumer_name, STREAM)
    for msg in await sub.fetch(2, timeout=10):
        await msg.ack_sync()
    await sub.unsubscribe()

    # The first member notices the consumer is not the one it bound, and binds again.
    assert not await old.refresh(5.0)
    await old.ensure()
    assert old.ack_floor == 2
    await client.jetstream.delete_consumer(STREAM, CONFIG.consumer_name)
    await old.ensure()

    info = await client.jetstream.consumer_info(STREAM, CONFIG.consumer_name)
    assert info.num_pending == 6  # 3-8 of the new stream: none skipped, none repeated
