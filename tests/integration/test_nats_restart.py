"""Nothing is lost when the server restarts under a running publisher and subscriber."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    PublisherConfig,
    SubscriberConfig,
)
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

pytestmark = pytest.mark.slow

CORRIDORS = [PartitionKey.corridor(c) for c in ("USD-EUR", "GBP-USD", "EUR-JPY", "CHF-SGD")]


def payments(start: int, count: int) -> list[Message]:
    return [
        Message.new(
            MessageType.PAYMENT_INSTRUCTION,
            CORRIDORS[n % len(CORRIDORS)],
            sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
        )
        for n in range(start, start + count)
    ]


async def eventually(predicate: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("outage", ["restart", "kill"])
async def test_every_message_is_consumed_across_a_server_restart(
    nats_server: EmbeddedNatsServer, outage: str
) -> None:
    client = NatsClient(
        NatsConfig(urls=[nats_server.url], reconnect_delay=0.05, reconnect_max_delay=0.25)
    )
    await client.connect()
    await StreamManager(client).apply()
    publisher = JetStreamPublisher(
        client,
        PublisherConfig(publish_timeout=15.0, max_retry_attempts=10, max_retry_delay=0.5),
    )
    handled: Counter[str] = Counter()

    async def handle(message: Message) -> None:
        handled[message.id] += 1
        await asyncio.sleep(0.001)

    subscriber = JetStreamSubscriber(
        client,
        MessageType.PAYMENT_INSTRUCTION,
        SubscriberConfig(consumer_group="settlement", max_concurrent=16, ack_wait=5.0),
        idle_heartbeat=0.5,
        pull_expires=3.0,
    )
    subscription = await subscriber.subscribe(FunctionHandler(handle))
    before = payments(0, 200)
    after = payments(200, 1000)
    await publisher.publish_many(before)
    await eventually(lambda: len(handled) >= 50, timeout=10.0)

    async def publish_after() -> None:
        for start in range(0, len(after), 100):
            await publisher.publish_many(after[start : start + 100])

    publishing = asyncio.create_task(publish_after())
    if outage == "kill":
        await asyncio.to_thread(nats_server.kill)
        await asyncio.sleep(0.2)
    await asyncio.to_thread(nats_server.restart)
    await asyncio.wait_for(publishing, 20.0)

    await eventually(lambda: len(handled) == 1200, timeout=20.0)
    await subscription.drain()
    await client.close()

    assert set(handled) == {m.id for m in before + after}
