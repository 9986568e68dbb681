"""Acknowledgements that can be confirmed, lost acks that are not rerun, and acks the
server refuses, on real nats-server processes (faults through the loopback proxy)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from proxy import TcpProxy
from servers import acks_denied_config, connect
from waits import eventually

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    SubscriberConfig,
)
from message_bus.adapters.nats import (
    JetStreamDeadLetters,
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
GROUP = "confirming"
KEY = PartitionKey.corridor("USD-EUR")


def payment(n: int = 0) -> Message:
    return Message.new(
        PAYMENT,
        KEY,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


def metered(
    client: NatsClient, registry: CollectorRegistry, **settings: object
) -> MetricsSubscriber:
    config = SubscriberConfig(consumer_group=GROUP, **settings)  # type: ignore[arg-type]
    inner = JetStreamSubscriber(client, PAYMENT, config, pull_expires=2.0, idle_heartbeat=0.5)
    return MetricsSubscriber(inner, registry)


def received(registry: CollectorRegistry, status: str) -> float:
    value = registry.get_sample_value(
        "message_bus_receive_total", {"message_type": PAYMENT.value, "status": status}
    )
    return value or 0.0


async def ack_floor(client: NatsClient) -> int:
    name = SubscriberConfig(consumer_group=GROUP).consumer_name
    info = await client.jetstream.consumer_info(STREAM, name)
    return info.ack_floor.stream_seq or 0


@pytest.mark.parametrize("confirm_acks", [False, True], ids=["fire_and_forget", "confirmed"])
async def test_an_ack_lost_with_the_connection_is_never_rerun_and_confirmed_acks_report_it(
    nats_server: EmbeddedNatsServer, confirm_acks: bool
) -> None:
    direct = await connect(nats_server.url)
    await StreamManager(direct).apply()
    registry = CollectorRegistry()
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = await connect(proxy.url)
        runs: list[int] = []

        async def handle(message: Message) -> None:
            runs.append(len(runs) + 1)
            if len(runs) == 1:
                proxy.drop(upstream=True)  # what the ACK is written into goes nowhere

        try:
            subscription = await metered(
                client, registry, ack_wait=2.0, confirm_acks=confirm_acks, ack_confirm_timeout=1.0
            ).subscribe(FunctionHandler(handle))
            await JetStreamPublisher(direct).publish(payment())
            await eventually(lambda: b"+ACK" in proxy.seen_upstream, "the ACK on the wire", 10.0)
            if confirm_acks:
                await eventually(
                    lambda: received(registry, "unconfirmed") == 1, "the unconfirmed outcome", 10.0
                )
            proxy.drop(upstream=False)
            proxy.cut()  # the connection with the lost ACK dies; the client reconnects

            async def acked() -> bool:
                return await ack_floor(direct) == 1

            await eventually(acked, "the redelivered message to be acked", 20.0)
            await subscription.drain()
        finally:
            await client.close()
            await direct.close()
    assert runs == [1], "the handler ran again for a message it had acked"
    if confirm_acks:
        assert (received(registry, "ack"), received(registry, "unconfirmed")) == (0, 1)
    else:
        assert received(registry, "ack") == 1


async def test_a_confirmed_ack_is_counted_as_ack_once_the_server_confirms_it(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await connect(nats_server.url)
    registry = CollectorRegistry()
    try:
        await StreamManager(client).apply()
        handled: list[str] = []

        async def handle(message: Message) -> None:
            handled.append(message.id)

        subscription = await metered(client, registry, confirm_acks=True).subscribe(
            FunctionHandler(handle)
        )
        await JetStreamPublisher(client).publish_many([payment(n) for n in range(20)])

        async def all_acked() -> bool:
            return await ack_floor(client) == 20

        await eventually(all_acked, "20 acked messages", 20.0)
        await eventually(lambda: received(registry, "ack") == 20, "20 confirmed acks", 10.0)
        await subscription.drain()
    finally:
        await client.close()
    assert len(handled) == 20
    assert received(registry, "unconfirmed") == 0


@pytest.mark.parametrize("confirm_acks", [False, True], ids=["fire_and_forget", "confirmed"])
async def test_a_subscription_denied_its_acks_fails_with_permission_denied(
    nats_server_factory: Callable[..., EmbeddedNatsServer], tmp_path: Path, confirm_acks: bool
) -> None:
    server = nats_server_factory(config_file=acks_denied_config(tmp_path))
    admin = await connect(server.url, user="admin", password="secret")
    worker = await connect(server.url, user="worker", password="secret")
    registry = CollectorRegistry()
    runs: list[str] = []

    async def handle(message: Message) -> None:
        runs.append(message.id)

    try:
        await StreamManager(admin).apply()
        subscription = await metered(
            worker, registry, ack_wait=1.0, max_deliver=2, confirm_acks=confirm_acks
        ).subscribe(FunctionHandler(handle))
        await JetStreamPublisher(admin).publish(payment())
        await eventually(lambda: not subscription.active, "the subscription to fail", 10.0)

        assert isinstance(subscription.error, PermissionDenied)
        assert subscription.error.subject.startswith("$js.ack.")
        with pytest.raises(PermissionDenied):
            await asyncio.wait_for(subscription.wait(), 10.0)
        with pytest.raises(PermissionDenied):
            await asyncio.wait_for(subscription.stop(), 10.0)
        failures = registry.get_sample_value(
            "message_bus_subscription_failures_total",
            {"message_type": PAYMENT.value, "reason": "permission_denied"},
        )
        assert failures == 1
        if confirm_acks:
            assert (received(registry, "ack"), received(registry, "unconfirmed")) == (0, 1)
        assert len(runs) == 1, f"handled {len(runs)} times"
        assert await JetStreamDeadLetters(admin).list() == []
    finally:
        await worker.close()
        await admin.close()
