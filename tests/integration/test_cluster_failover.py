"""An R3 stream on a 3-node cluster keeps every acknowledged payment through a node crash.

One node is killed (SIGKILL) while payments are being published and restarted while
publishing goes on; every payment whose publish was acknowledged is consumed, exactly
once.
"""

from __future__ import annotations

import asyncio

import pytest

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    PublisherConfig,
    PublishError,
    SubscriberConfig,
)
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.app.embedded import NatsCluster
from message_bus.domain.catalog import StreamCatalog
from message_bus.testing.samples import sample_payload

pytestmark = pytest.mark.slow

TOTAL = 600
CORRIDORS = ["USD-EUR", "GBP-USD", "EUR-JPY", "AED-INR"]


def payment(i: int) -> Message:
    return Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor(CORRIDORS[i % len(CORRIDORS)]),
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{i:05d}", amount="10.00"),
    )


async def test_an_r3_stream_loses_and_doubles_nothing_when_a_node_dies_mid_publish(
    nats_cluster: NatsCluster,
) -> None:
    config = NatsConfig(urls=nats_cluster.urls, reconnect_delay=0.1, connection_timeout=2.0)
    client = NatsClient(config)
    await client.connect()
    await StreamManager(client).apply(StreamCatalog.default(), replicas=3)
    publisher = JetStreamPublisher(
        client,
        PublisherConfig(
            publish_timeout=10.0,
            max_retry_attempts=20,
            initial_retry_delay=0.05,
            max_retry_delay=0.5,
            circuit_breaker_threshold=0,
        ),
    )
    acknowledged: dict[str, int] = {}
    failed: list[str] = []
    victim = 1
    for i in range(TOTAL):
        if i == TOTAL // 3:
            await asyncio.to_thread(nats_cluster.kill_node, victim)
        if i == 2 * TOTAL // 3:
            await asyncio.to_thread(nats_cluster.restart_node, victim)
        message = payment(i)
        try:
            receipt = await publisher.publish(message)
        except PublishError:
            failed.append(message.payload["payment_id"])
            continue
        assert not receipt.duplicate
        acknowledged[message.payload["payment_id"]] = receipt.sequence or 0
    assert len(acknowledged) >= TOTAL * 0.9, f"too few publishes acknowledged: {failed[:5]}"
    assert len(set(acknowledged.values())) == len(acknowledged), "two payments share a sequence"

    deliveries: dict[str, int] = {}
    done = asyncio.Event()

    class Collect:
        async def handle(self, message: Message) -> None:
            payment_id = message.payload["payment_id"]
            deliveries[payment_id] = deliveries.get(payment_id, 0) + 1
            if acknowledged.keys() <= deliveries.keys():
                done.set()

    subscriber = JetStreamSubscriber(
        client,
        MessageType.PAYMENT_INSTRUCTION,
        SubscriberConfig(consumer_group="failover", ack_wait=5.0, max_concurrent=32),
    )
    subscription = await subscriber.subscribe(Collect())
    try:
        await asyncio.wait_for(done.wait(), timeout=30)
        await asyncio.sleep(0.5)  # let any late redelivery show up
    finally:
        await subscription.stop()
        await subscriber.close()
        await publisher.close()
        await client.close()

    lost = acknowledged.keys() - deliveries.keys()
    doubled = {k: n for k, n in deliveries.items() if n > 1}
    assert not lost, f"{len(lost)} acknowledged payments lost"
    assert not doubled, f"{len(doubled)} payments consumed twice"
