"""The publisher follows a cluster's recovery: a stream between leaders, a lost connection.

A publish refused at once while a stream's leader is elected is asked again until the
deadline (it does not burn its attempts in a fraction of a second); a publish whose
connection is lost before its acknowledgement is sent again on the next connection at
once, with the same id, instead of waiting out its share of the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from proxy import TcpProxy
from waits import eventually

from message_bus import Message, MessageType, PartitionKey, PublisherConfig
from message_bus.adapters.nats import (
    JetStreamPublisher,
    NatsClient,
    NatsConfig,
    RetryEvent,
    StreamManager,
)
from message_bus.app.embedded import EmbeddedNatsServer, NatsCluster
from message_bus.domain.catalog import StreamCatalog
from message_bus.testing.samples import sample_payload

STREAM = "PAYMENT_INSTRUCTIONS"


def payment(n: int) -> Message:
    return Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor("USD-EUR"),
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


async def stored_ids(client: NatsClient) -> list[str]:
    info = await client.jetstream.stream_info(STREAM)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await client.jetstream.get_msg(STREAM, seq)
        assert stored.headers is not None
        ids.append(stored.headers["Nats-Msg-Id"])
    return ids


@pytest.fixture
async def cluster_client(nats_cluster: NatsCluster) -> AsyncIterator[NatsClient]:
    client = NatsClient(NatsConfig(urls=nats_cluster.urls, reconnect_delay=0.05))
    await client.connect()
    await StreamManager(client).apply(replicas=3)
    yield client
    await client.close()


async def test_a_publish_while_the_stream_elects_a_leader_waits_for_the_new_leader(
    nats_cluster: NatsCluster, cluster_client: NatsClient
) -> None:
    await JetStreamPublisher(cluster_client).publish(payment(0))
    info = await cluster_client.jetstream.stream_info(STREAM)
    assert info.cluster is not None
    names = [node.server_name for node in nats_cluster.nodes]
    leader = names.index(str(info.cluster.leader))
    # The publisher talks to the other nodes only: its connection outlives the leader.
    others = [url for i, url in enumerate(nats_cluster.urls) if i != leader]
    client = NatsClient(NatsConfig(urls=others, reconnect_delay=0.05))
    await client.connect()
    retries: list[RetryEvent] = []
    config = PublisherConfig(
        publish_timeout=30.0, max_retry_attempts=3, circuit_breaker_threshold=0
    )
    publisher = JetStreamPublisher(client, config, on_retry=retries.append)
    lookups = 0  # "does a stream capture this subject?", asked on no responders

    async def count(_msg: object) -> None:
        nonlocal lookups
        lookups += 1

    await client.connection.subscribe("$JS.API.STREAM.NAMES", cb=count)
    await client.flush()
    await asyncio.to_thread(nats_cluster.kill_node, leader)
    message = payment(1)
    try:
        receipt = await publisher.publish(message)
        await client.flush()
    finally:
        await client.close()

    assert receipt.sequence == 2
    assert not receipt.duplicate
    # A publish that meets the election is refused (no responders) until the new leader
    # answers; under load the election may be over before it is sent (no retry then).
    assert {event.message_id for event in retries} <= {message.id}
    if any(event.error.reason == "no_responders" for event in retries):
        assert lookups == 1, "the stream lookup is asked once per publish, not once per attempt"
    else:
        assert lookups <= 1


async def test_a_publish_whose_connection_is_lost_is_sent_again_at_once_with_its_id(
    nats_server: EmbeddedNatsServer,
) -> None:
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = NatsClient(
            NatsConfig(urls=[proxy.url], reconnect_delay=0.05, reconnect_max_delay=0.1)
        )
        await client.connect()
        await StreamManager(client).apply(StreamCatalog.default(), replicas=1)
        # Each attempt may wait 10 s for its acknowledgement.
        config = PublisherConfig(
            publish_timeout=30.0, max_retry_attempts=3, circuit_breaker_threshold=0
        )
        publisher = JetStreamPublisher(client, config)
        await publisher.publish(payment(0))
        message = payment(1)
        proxy.drop(downstream=True)  # the server stores it; its acknowledgement is lost
        publishing = asyncio.create_task(publisher.publish(message))
        await eventually(
            lambda: message.id.encode() in proxy.seen_upstream, "the publish reaching the server"
        )
        proxy.heal()
        proxy.cut()
        try:
            receipt = await asyncio.wait_for(publishing, 5.0)
            ids = await stored_ids(client)
        finally:
            publishing.cancel()
            await client.close()

    assert receipt.sequence == 2
    assert receipt.duplicate, "the retry was not deduplicated against the stored message"
    assert ids[1:] == [message.id]


async def test_a_retry_of_a_publish_the_stream_still_processes_waits_for_its_outcome(
    nats_cluster: NatsCluster, cluster_client: NatsClient
) -> None:
    await JetStreamPublisher(cluster_client).publish(payment(0))
    info = await cluster_client.jetstream.stream_info(STREAM)
    assert info.cluster is not None
    names = [node.server_name for node in nats_cluster.nodes]
    leader = names.index(str(info.cluster.leader))
    followers = [i for i in range(3) if i != leader]
    client = NatsClient(NatsConfig(urls=[nats_cluster.urls[leader]]))
    await client.connect()
    retries: list[RetryEvent] = []
    # 1 s per attempt: the first one times out while the leader cannot reach a quorum,
    # and its retry (same id) finds the first copy still in process (409, 10158).
    config = PublisherConfig(
        publish_timeout=20.0, max_retry_attempts=20, circuit_breaker_threshold=0
    )
    publisher = JetStreamPublisher(client, config, on_retry=retries.append)
    message = payment(1)
    for node in followers:
        await asyncio.to_thread(nats_cluster.freeze_node, node)
    try:
        publishing = asyncio.create_task(publisher.publish(message))
        await eventually(
            lambda: publishing.done() or any("10158" in e.error.detail for e in retries),
            "a retry finding its first copy in process",
        )
    finally:
        for node in followers:
            nats_cluster.thaw_node(node)
    try:
        receipt = await publishing
        ids = await stored_ids(client)
    finally:
        await client.close()

    assert receipt.sequence == 2
    assert ids[1:] == [message.id]
