"""Running handlers keep their deliveries alive on a real nats-server: a handler that runs
past ``ack_wait`` is never run twice, and ``max_handler_time`` bounds a hung one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from proxy import TcpProxy
from waits import eventually

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    SubscriberConfig,
    current_delivery,
)
from message_bus.adapters.nats import (
    JetStreamDeadLetters,
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.adapters.nats.subscriber.pull import PullSubscription
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
KEY = PartitionKey.corridor("USD-EUR")


def payment(n: int = 0) -> Message:
    return Message.new(
        PAYMENT,
        KEY,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = NatsClient(NatsConfig(urls=[nats_server.url], reconnect_delay=0.05))
    await client.connect()
    await StreamManager(client).apply()
    yield client
    await client.close()


def subscriber(client: NatsClient, **settings: object) -> JetStreamSubscriber:
    config = SubscriberConfig(consumer_group="keepalive", **settings)  # type: ignore[arg-type]
    return JetStreamSubscriber(client, PAYMENT, config, pull_expires=2.0, idle_heartbeat=0.5)


async def consumer_counts(client: NatsClient) -> tuple[int, int, int]:
    """(ack floor, redelivered, pending acks) of the test group's consumer."""
    name = SubscriberConfig(consumer_group="keepalive").consumer_name
    info = await client.jetstream.consumer_info(STREAM, name)
    return info.ack_floor.stream_seq or 0, info.num_redelivered or 0, info.num_ack_pending or 0


@pytest.mark.parametrize("max_concurrent", [1, 4])
async def test_a_handler_running_past_ack_wait_runs_once_and_is_never_redelivered(
    client: NatsClient, max_concurrent: int
) -> None:
    runs: list[int] = []

    async def slow(message: Message) -> None:
        runs.append(current_delivery().attempt)
        await asyncio.sleep(2.6)  # 2.6 x ack_wait

    subscription = await subscriber(client, ack_wait=1.0, max_concurrent=max_concurrent).subscribe(
        FunctionHandler(slow)
    )
    await JetStreamPublisher(client).publish(payment())

    async def acked() -> bool:
        return (await consumer_counts(client))[0] == 1

    await eventually(acked, "the message to be acked", 20.0)
    await subscription.drain()
    floor, redelivered, pending = await consumer_counts(client)
    assert runs == [1], f"the handler ran {len(runs)} times"
    assert (floor, redelivered, pending) == (1, 0, 0)


async def test_a_slow_message_with_max_deliver_2_is_acked_and_never_dead_lettered(
    client: NatsClient,
) -> None:
    runs: list[int] = []

    async def slow(message: Message) -> None:
        runs.append(current_delivery().attempt)
        await asyncio.sleep(2.6)

    subscription = await subscriber(
        client, ack_wait=1.0, max_concurrent=1, max_deliver=2
    ).subscribe(FunctionHandler(slow))
    await JetStreamPublisher(client).publish(payment())

    async def acked() -> bool:
        return (await consumer_counts(client))[0] == 1

    await eventually(acked, "the message to be acked", 20.0)
    await subscription.drain()
    assert runs == [1]
    assert await JetStreamDeadLetters(client).list() == []


async def test_a_handler_past_max_handler_time_is_cancelled_and_its_message_nacked(
    client: NatsClient,
) -> None:
    runs: list[int] = []
    cancelled: list[int] = []

    async def hang_first(message: Message) -> None:
        attempt = current_delivery().attempt
        runs.append(attempt)
        if attempt == 1:
            try:
                await asyncio.sleep(30.0)
            except asyncio.CancelledError:
                cancelled.append(attempt)
                raise

    subscription = await subscriber(
        client, ack_wait=1.0, max_handler_time=1.5, nak_initial_delay=0.0, max_concurrent=2
    ).subscribe(FunctionHandler(hang_first))
    await JetStreamPublisher(client).publish(payment())

    async def acked() -> bool:
        return (await consumer_counts(client))[0] == 1

    await eventually(acked, "the second delivery to be acked", 20.0)
    await subscription.drain()
    assert runs == [1, 2]
    assert cancelled == [1]
    assert await JetStreamDeadLetters(client).list() == []


async def test_a_hung_last_delivery_is_dead_lettered_once_max_handler_time_passes(
    client: NatsClient,
) -> None:
    async def hang(message: Message) -> None:
        await asyncio.sleep(30.0)

    subscription = await subscriber(
        client, ack_wait=1.0, max_handler_time=1.0, max_deliver=1
    ).subscribe(FunctionHandler(hang))
    sent = payment()
    await JetStreamPublisher(client).publish(sent)
    reader = JetStreamDeadLetters(client)

    async def dead() -> bool:
        return len(await reader.list()) == 1

    await eventually(dead, "the dead letter", 20.0)
    await subscription.drain()
    [letter] = await reader.list()
    assert letter.message.id == sent.id
    assert letter.reason == "max deliveries (1) exhausted: handler ran past max_handler_time (1 s)"


async def test_a_redelivery_of_a_message_in_flight_is_superseded_not_run_again(
    nats_server: EmbeddedNatsServer,
) -> None:
    direct = NatsClient(NatsConfig(urls=[nats_server.url]))
    await direct.connect()
    await StreamManager(direct).apply()
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = NatsClient(NatsConfig(urls=[proxy.url], reconnect_delay=0.05))
        await client.connect()
        runs: list[int] = []
        resumed = asyncio.Event()

        async def slow(message: Message) -> None:
            runs.append(current_delivery().attempt)
            await asyncio.wait_for(resumed.wait(), 15.0)

        try:
            subscription = await subscriber(client, ack_wait=1.0, max_concurrent=2).subscribe(
                FunctionHandler(slow)
            )
            assert isinstance(subscription, PullSubscription)
            await JetStreamPublisher(direct).publish(payment())
            await eventually(lambda: runs == [1], "the first run", 10.0)
            proxy.drop(upstream=True)  # the keep-alive does not reach the server

            await eventually(
                lambda: subscription.superseded >= 1 or len(runs) > 1,
                "a redelivery while it runs",
                15.0,
            )
            assert runs == [1], "a redelivery of a running message started a second handler"
            proxy.drop(upstream=False)
            resumed.set()

            async def acked() -> bool:
                return (await consumer_counts(direct))[0] == 1

            await eventually(acked, "the ack of the newest delivery", 20.0)
            await subscription.drain()
        finally:
            resumed.set()
            await client.close()
            await direct.close()
    assert runs == [1], "a redelivery of a running message started a second handler"


async def test_a_core_handler_past_max_handler_time_is_cancelled(client: NatsClient) -> None:
    cancelled = asyncio.Event()
    handled: list[str] = []

    async def hang_first(message: Message) -> None:
        handled.append(message.id)
        if len(handled) > 1:
            return
        try:
            await asyncio.sleep(30.0)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    config = SubscriberConfig(consumer_group="core-limit", max_handler_time=0.5, max_concurrent=1)
    subscriber = JetStreamSubscriber(client, MessageType.SYSTEM_EVENT, config)
    subscription = await subscriber.subscribe(FunctionHandler(hang_first))
    publisher = JetStreamPublisher(client)
    key = PartitionKey.broadcast()
    for n in range(2):
        await publisher.publish(Message.new(MessageType.SYSTEM_EVENT, key, {"event": f"e{n}"}))
    await eventually(cancelled.is_set, "the hung core handler to be cancelled", 10.0)
    await eventually(lambda: len(handled) == 2, "the next core message on the freed worker", 10.0)
    await subscription.stop()
