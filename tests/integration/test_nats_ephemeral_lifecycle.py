"""Ephemeral readers on real nats-server processes: a failure is reported like any
subscription's, their consumers are deleted however they close, the subscriber lets
go of them, and ``close`` stops every subscription even when one had failed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from servers import acks_denied_config, connect
from waits import eventually

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    StreamManager,
)
from message_bus.adapters.telemetry import MetricsSubscriber
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.domain.errors import PermissionDenied
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
KEY = PartitionKey.corridor("USD-EUR")
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}


def payment(n: int) -> Message:
    return Message.new(
        PAYMENT,
        KEY,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


def reader(client: NatsClient, config: SubscriberConfig | None = None) -> JetStreamSubscriber:
    return JetStreamSubscriber(client, PAYMENT, config, ephemeral=True, **FAST)  # type: ignore[arg-type]


async def consumers(client: NatsClient) -> list[str]:
    return sorted(info.name for info in await client.jetstream.consumers_info(STREAM))


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    await StreamManager(client).apply()
    yield client
    await client.close()


@pytest.fixture
async def denied(
    nats_server_factory: Callable[..., EmbeddedNatsServer], tmp_path: Path
) -> AsyncIterator[tuple[NatsClient, NatsClient]]:
    """An admin client, and a reader's client the server refuses every acknowledgement."""
    server = nats_server_factory(config_file=acks_denied_config(tmp_path, user="reader"))
    admin = await connect(server.url, user="admin", password="secret")
    worker = await connect(server.url, user="reader", password="secret")
    await StreamManager(admin).apply()
    yield admin, worker
    await worker.close()
    await admin.close()


async def test_an_ephemeral_reader_denied_its_acks_fails_visibly_and_its_consumer_is_deleted(
    denied: tuple[NatsClient, NatsClient],
) -> None:
    admin, worker = denied
    registry = CollectorRegistry()
    handled: list[str] = []

    async def record(message: Message) -> None:
        handled.append(message.id)

    subscriber = MetricsSubscriber(reader(worker), registry)
    subscription = await subscriber.subscribe(FunctionHandler(record))
    assert len(await consumers(admin)) == 1
    await JetStreamPublisher(admin).publish(payment(0))
    await eventually(lambda: not subscription.active, "the reader to fail", 10.0)

    assert isinstance(subscription.error, PermissionDenied)
    with pytest.raises(PermissionDenied):
        await asyncio.wait_for(subscription.wait(), 10.0)
    assert await consumers(admin) == [], "the failed reader's consumer was left on the server"
    failures = registry.get_sample_value(
        "message_bus_subscription_failures_total",
        {"message_type": PAYMENT.value, "reason": "permission_denied"},
    )
    assert failures == 1
    with pytest.raises(PermissionDenied):
        await asyncio.wait_for(subscription.stop(), 10.0)
    await asyncio.wait_for(subscriber.close(), 10.0)  # it had let go of the failed reader


async def test_close_stops_every_subscription_and_deletes_every_consumer_after_a_failed_one(
    denied: tuple[NatsClient, NatsClient],
) -> None:
    admin, worker = denied
    release = asyncio.Event()

    async def hold_one(message: Message) -> None:
        if message.payload["payment_id"] == "pay_0":
            await release.wait()

    subscriber = reader(worker, SubscriberConfig(max_concurrent=2))
    failing = await subscriber.subscribe(FunctionHandler(hold_one))
    publisher = JetStreamPublisher(admin)
    await publisher.publish(payment(0))  # held: the failed reader cannot finish closing
    await publisher.publish(payment(1))  # its ack is refused: the reader fails
    await eventually(lambda: not failing.active, "the first reader to fail", 10.0)
    await admin.jetstream.purge_stream(STREAM)
    healthy = await subscriber.subscribe(FunctionHandler(hold_one))
    assert len(await consumers(admin)) == 2

    closing = asyncio.create_task(subscriber.close())
    await asyncio.sleep(0)  # close() is now stopping the failed reader
    release.set()
    with pytest.raises(PermissionDenied):
        await asyncio.wait_for(closing, 20.0)

    assert not healthy.active, "close() left a subscription running after a failed one"
    assert await consumers(admin) == [], "close() left ephemeral consumers on the server"


async def test_a_stopped_ephemeral_reader_is_let_go_by_its_subscriber(client: NatsClient) -> None:
    async def nothing(message: Message) -> None:
        return None

    subscriber = reader(client)
    refs = []
    for _ in range(3):
        subscription = await subscriber.subscribe(FunctionHandler(nothing))
        await subscription.stop()
        refs.append(weakref.ref(subscription))
    del subscription
    gc.collect()
    kept = [ref for ref in refs if ref() is not None]
    assert not kept, f"the subscriber still holds {len(kept)} of 3 stopped readers"
    assert await consumers(client) == []
    await subscriber.close()


async def test_an_ephemeral_reader_waits_until_stopped_and_then_its_consumer_is_gone(
    client: NatsClient,
) -> None:
    async def nothing(message: Message) -> None:
        return None

    subscription = await reader(client).subscribe(FunctionHandler(nothing))
    waiting = asyncio.create_task(subscription.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    await subscription.stop()
    await asyncio.wait_for(waiting, 10.0)
    assert await consumers(client) == []


@pytest.mark.parametrize("key", [None, KEY], ids=["whole_stream", "partition_key"])
async def test_an_ephemeral_consumer_filters_only_its_own_subject(
    client: NatsClient, key: PartitionKey | None
) -> None:
    seen: list[str] = []

    async def record(message: Message) -> None:
        seen.append(message.payload["payment_id"])

    subscriber = reader(client, SubscriberConfig(partition_key=key))
    await JetStreamPublisher(client).publish(payment(0))
    subscription = await subscriber.subscribe(FunctionHandler(record))
    (info,) = await client.jetstream.consumers_info(STREAM)
    want = f"{PAYMENT.subject_prefix}.{key.suffix if key else '>'}"
    assert (info.config.filter_subjects or [info.config.filter_subject]) == [want]
    await eventually(lambda: seen == ["pay_0"], "the reader to read the stored payment", 10.0)
    await subscription.stop()
    await subscriber.close()
