"""The local 3-node cluster launcher against real nats-server processes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from message_bus.adapters.nats.placement import PLACEMENT_WAIT, place
from message_bus.app.embedded import NatsCluster

STREAM = "PAYMENT_INSTRUCTIONS"
SUBJECT = "deltran.payment.instruction.corridor.USD-EUR"
log = logging.getLogger(__name__)


@asynccontextmanager
async def connected(servers: str | list[str]) -> AsyncIterator[Client]:
    nc = await nats.connect(servers, max_reconnect_attempts=1, connect_timeout=2)
    try:
        yield nc
    finally:
        await nc.close()


async def create_r3_stream(js: JetStreamContext) -> None:
    """Creates the stream on all three nodes; a node that has not reported its statistics
    to the meta leader yet makes placement refuse it for a moment, which is asked again."""
    config = StreamConfig(name=STREAM, subjects=["deltran.payment.instruction.>"], num_replicas=3)
    await place(lambda: js.add_stream(config), PLACEMENT_WAIT, log, f"stream {STREAM}")


async def publish(js: JetStreamContext, n: int, *, within: float = 15.0) -> None:
    """Publishes payment ``n``, retrying with the same message id until the stream acks.

    The id makes JetStream drop a retry whose first attempt was stored after all.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            await js.publish(
                SUBJECT, b'{"n": %d}' % n, timeout=1, headers={"Nats-Msg-Id": f"pay-{n}"}
            )
            return
        except nats.errors.Error:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def stream_messages_on(cluster: NatsCluster, index: int) -> int:
    """Messages node ``index`` holds in its own replica of the stream (``/jsz``)."""
    jsz = await asyncio.to_thread(cluster.node(index).monitor, "jsz?streams=true")
    for account in jsz[1].get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] == STREAM:
                return int(stream["state"]["messages"])
    return 0


async def wait_for_replica(cluster: NatsCluster, index: int, messages: int) -> None:
    """Waits (up to 30 s) until node ``index``'s replica holds ``messages`` messages."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30.0
    held = await stream_messages_on(cluster, index)
    while held != messages:
        if loop.time() > deadline:
            pytest.fail(f"node {index} holds {held} messages after 30 s, expected {messages}")
        await asyncio.sleep(0.05)
        held = await stream_messages_on(cluster, index)


def node_index(cluster: NatsCluster, name: str | None) -> int:
    return [node.server_name for node in cluster.nodes].index(name or "")


def test_cluster_forms_with_routes_and_a_meta_leader(nats_cluster: NatsCluster) -> None:
    names = {node.server_name for node in nats_cluster.nodes}

    assert len(set(nats_cluster.urls)) == 3
    assert nats_cluster.meta_leader() is not None
    for node in nats_cluster.nodes:
        varz = node.monitor("varz")[1]
        routez = node.monitor("routez")[1]
        assert varz["cluster"]["name"] == nats_cluster.cluster_name
        assert varz["jetstream"]["config"]["sync_always"] is True
        assert {route["remote_name"] for route in routez["routes"]} == names - {node.server_name}
        assert node.monitor("jsz")[1]["meta_cluster"]["cluster_size"] == 3


async def test_r3_stream_is_stored_on_every_node(nats_cluster: NatsCluster) -> None:
    async with connected(nats_cluster.urls) as nc:
        js = nc.jetstream(timeout=30)
        await create_r3_stream(js)
        await publish(js, 1)
        info = await js.stream_info(STREAM)

    assert info.config.num_replicas == 3
    assert info.cluster is not None
    assert info.cluster.replicas is not None
    assert len(info.cluster.replicas) == 2
    for index in range(3):
        await wait_for_replica(nats_cluster, index, 1)


async def test_stream_works_while_a_node_is_down_and_after_it_restarts(
    nats_cluster: NatsCluster,
) -> None:
    async with connected(nats_cluster.urls) as setup:
        js = setup.jetstream(timeout=30)
        await create_r3_stream(js)
        leader = node_index(nats_cluster, (await js.stream_info(STREAM)).cluster.leader)  # type: ignore[union-attr]
    victim = (leader + 1) % 3
    survivors = [nats_cluster.urls[i] for i in range(3) if i != victim]

    async with connected(survivors) as nc:
        js = nc.jetstream(timeout=30)
        for n in range(5):
            await publish(js, n)
        nats_cluster.kill_node(victim)
        for n in range(5, 10):
            await publish(js, n)  # two of three replicas are a quorum
        await asyncio.to_thread(nats_cluster.restart_node, victim)
        await wait_for_replica(nats_cluster, victim, 10)
        await publish(js, 10)
        info = await js.stream_info(STREAM)
        last = await js.get_msg(STREAM, info.state.last_seq)

    assert info.state.messages == 11
    assert last.data == b'{"n": 10}'


@pytest.mark.slow
async def test_stream_fails_over_when_its_leader_is_killed(nats_cluster: NatsCluster) -> None:
    async with connected(nats_cluster.urls) as setup:
        js = setup.jetstream(timeout=30)
        await create_r3_stream(js)
        old_leader = (await js.stream_info(STREAM)).cluster.leader  # type: ignore[union-attr]
    victim = node_index(nats_cluster, old_leader)
    survivors = [nats_cluster.urls[i] for i in range(3) if i != victim]

    async with connected(survivors) as nc:
        js = nc.jetstream(timeout=30)
        for n in range(5):
            await publish(js, n)
        nats_cluster.kill_node(victim)
        for n in range(5, 10):
            await publish(js, n)  # retried until a new leader is elected
        info = await js.stream_info(STREAM)
        assert info.cluster is not None
        assert info.cluster.leader != old_leader
        await asyncio.to_thread(nats_cluster.restart_node, victim)
        await wait_for_replica(nats_cluster, victim, 10)
        info = await js.stream_info(STREAM)

    assert info.state.messages == 10  # nothing lost, nothing doubled by the retries
