"""Shutting the container down does not lose the acks of handlers in flight (real server).

A service that never stopped its subscriptions relies on the container's shutdown: it
closes the subscribers it handed out (the handlers in flight finish and are acked),
drains the connection so those acks reach the server, and only then closes it; bounded
by ``nats.drain_timeout``.
"""

from __future__ import annotations

import asyncio

import nats

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    apply_streams,
    build_container,
    resolve,
    shutdown_container,
    start_container,
)
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing import eventually
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
GROUP = SubscriberConfig(consumer_group="shutdown", ack_wait=30.0, max_concurrent=2)
WORK = 0.5
"""Seconds the handler still works after shutdown begins (its ack comes after that)."""


async def ack_state(url: str, consumer: str) -> tuple[int, int, int]:
    """(ack floor stream sequence, acks pending, redeliveries) of a consumer, read
    with a plain nats-py connection."""
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(STREAM, consumer)
    finally:
        await nc.close()
    return int(info.ack_floor.stream_seq), int(info.num_ack_pending), int(info.num_redelivered)


async def test_a_handler_in_flight_at_shutdown_gets_its_ack_through(
    nats_server: EmbeddedNatsServer,
) -> None:
    settings = load_settings(
        environ={"DELTRAN_BACKEND": "nats", "DELTRAN_NATS_URLS": nats_server.url}
    )
    container = build_container(settings)
    await start_container(container)
    started = asyncio.Event()
    finished: list[str] = []

    async def handle(message: Message) -> None:
        started.set()
        await asyncio.sleep(WORK)  # the work in flight when shutdown begins
        finished.append(message.id)

    try:
        await apply_streams(container)
        subscriber = await resolve(container.subscriber(PAYMENT, GROUP))
        await subscriber.subscribe(FunctionHandler(handle))  # never stopped by the service
        publisher = await resolve(container.publisher())
        sent = Message.new(PAYMENT, PartitionKey.corridor("USD-EUR"), sample_payload(PAYMENT))
        await publisher.publish(sent)
        await asyncio.wait_for(started.wait(), 20)
    finally:
        await asyncio.wait_for(shutdown_container(container), 30)

    assert finished == [sent.id], "the handler in flight was cut off"
    consumer = GROUP.consumer_name
    state: list[tuple[int, int, int]] = []

    async def acked() -> bool:
        state[:] = [await ack_state(nats_server.url, consumer)]
        return state[0][:2] == (1, 0)

    await eventually(acked, timeout=10.0, what="the ack of the handler in flight")
    assert state[0] == (1, 0, 0), f"(ack floor, pending, redelivered) = {state[0]}"


async def test_shutdown_with_a_stuck_handler_ends_within_the_drain_timeout(
    nats_server: EmbeddedNatsServer,
) -> None:
    settings = load_settings(
        environ={
            "DELTRAN_BACKEND": "nats",
            "DELTRAN_NATS_URLS": nats_server.url,
            "DELTRAN_NATS_DRAIN_TIMEOUT": "1.0",
        }
    )
    container = build_container(settings)
    await start_container(container)
    started = asyncio.Event()
    never = asyncio.Event()

    async def stuck(message: Message) -> None:
        started.set()
        await never.wait()

    try:
        await apply_streams(container)
        subscriber = await resolve(container.subscriber(PAYMENT, GROUP))
        await subscriber.subscribe(FunctionHandler(stuck))
        publisher = await resolve(container.publisher())
        await publisher.publish(
            Message.new(PAYMENT, PartitionKey.bank("BANKGB2L"), sample_payload(PAYMENT))
        )
        await asyncio.wait_for(started.wait(), 20)
    finally:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(shutdown_container(container), 30)
        took = loop.time() - began
        never.set()

    assert took < 1.0 + 3.0, f"shutdown took {took:.2f}s with a 1s drain timeout"
    assert not container.nats_client.initialized
