"""Payments keep flowing while nodes of a 3-node cluster crash and hang, one at a time.

A seeded nemesis SIGKILLs or SIGSTOPs a random node every 1.5-3 s for 0.5-2 s (then
restarts or resumes it), for about 20 s, while one publisher with the default
configuration sends sequential payments the way an app would (publish; on PublishError,
the same message again). Afterwards every acknowledged payment is in the R3 stream
exactly once, publishing goes on after the last fault, and the circuit breaker never
opened (a quorum was always there).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import pytest

from message_bus import Message, MessageType, PartitionKey, PublisherConfig, PublishError
from message_bus.adapters.nats import JetStreamPublisher, NatsClient, NatsConfig, StreamManager
from message_bus.app.embedded import NatsCluster
from message_bus.testing.samples import sample_payload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

STREAM = "PAYMENT_INSTRUCTIONS"
SEED = 2
NEMESIS_SECONDS = 20.0
AFTER = 50
"""Payments published after the last fault (publishing resumed)."""
RETRY_SLEEP = 0.05
CORRIDORS = ["USD-EUR", "GBP-USD", "EUR-JPY", "AED-INR"]
T = TypeVar("T")


def payment(i: int) -> Message:
    return Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor(CORRIDORS[i % len(CORRIDORS)]),
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{i:06d}", amount="10.00"),
    )


async def nemesis(cluster: NatsCluster, rng: random.Random, until: float, log: list[str]) -> None:
    """One fault at a time: kill or freeze a random node, then heal it."""
    while True:
        gap, node, hold = rng.uniform(1.5, 3.0), rng.randrange(3), rng.uniform(0.5, 2.0)
        action = rng.choice(("kill", "stop"))
        if time.monotonic() + gap + hold > until:
            return
        await asyncio.sleep(gap)  # the schedule's pace, not a wait for a condition
        log.append(f"{action} nats-{node + 1} for {hold:.2f}s")
        if action == "kill":
            await asyncio.to_thread(cluster.kill_node, node)
            await asyncio.sleep(hold)
            await asyncio.to_thread(cluster.restart_node, node, wait_healthy=False)
        else:
            await asyncio.to_thread(cluster.freeze_node, node)
            try:
                await asyncio.sleep(hold)
            finally:
                cluster.thaw_node(node)


async def publish_until_acknowledged(
    publisher: JetStreamPublisher, message: Message, failures: collections.Counter[str]
) -> None:
    deadline = time.monotonic() + 60.0
    while True:
        try:
            await publisher.publish(message)
        except PublishError as exc:
            failures[str(exc.reason)] += 1
            assert time.monotonic() < deadline, f"{message.id} not acknowledged within 60 s"
            await asyncio.sleep(RETRY_SLEEP)
        else:
            return


async def settled(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``call()``, again while the cluster settles after the faults, within 60 s."""
    deadline = time.monotonic() + 60.0
    while True:
        try:
            return await call()
        except nats.errors.Error as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within 60 s: {exc!r}") from exc
            await asyncio.sleep(0.1)


async def stored_ids(client: NatsClient) -> list[str]:
    """Every Nats-Msg-Id of the stream, by sequence."""
    js = client.jetstream
    info = await settled(lambda: js.stream_info(STREAM), "the stream's info")
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await settled(lambda seq=seq: js.get_msg(STREAM, seq), f"sequence {seq}")  # type: ignore[misc]
        assert stored.headers is not None
        ids.append(stored.headers["Nats-Msg-Id"])
    return ids


async def test_payments_keep_flowing_and_none_is_lost_or_doubled_under_a_nemesis(
    nats_cluster: NatsCluster,
) -> None:
    client = NatsClient(NatsConfig(urls=nats_cluster.urls))
    await client.connect()
    await StreamManager(client).apply(replicas=3)
    publisher = JetStreamPublisher(client, PublisherConfig())
    acknowledged: list[str] = []
    failures: collections.Counter[str] = collections.Counter()
    faults: list[str] = []
    until = time.monotonic() + NEMESIS_SECONDS
    chaos = asyncio.create_task(nemesis(nats_cluster, random.Random(SEED), until, faults))
    i = 0
    try:
        while not chaos.done():
            message = payment(i)
            await publish_until_acknowledged(publisher, message, failures)
            acknowledged.append(message.id)
            i += 1
        await chaos  # raises what the nemesis met
        during = len(acknowledged)
        for _ in range(AFTER):
            message = payment(i)
            await publish_until_acknowledged(publisher, message, failures)
            acknowledged.append(message.id)
            i += 1
        ids = await stored_ids(client)
    finally:
        chaos.cancel()
        for node in range(3):
            nats_cluster.thaw_node(node)
        await publisher.close()
        await client.close()

    assert faults, "the nemesis did nothing"
    assert during > 0, f"nothing acknowledged during the faults {faults}; failures {failures}"
    stored = collections.Counter(ids)
    lost = [m for m in acknowledged if m not in stored]
    doubled = [m for m, n in stored.items() if n > 1]
    assert not lost, f"{len(lost)} acknowledged payments lost; faults {faults}"
    assert not doubled, f"{len(doubled)} payments stored twice; faults {faults}"
    assert len(ids) == len(stored)
    # One node at a time leaves a quorum: never an outage to fail fast on.
    assert not failures["circuit_open"], f"the breaker opened: {failures}; faults {faults}"
