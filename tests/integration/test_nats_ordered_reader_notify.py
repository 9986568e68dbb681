"""An ordered group's NATS cursor tells its reader when to take: it calls back as
messages arrive, and a watchdog calls back once the heartbeats went silent, with no
read waiting."""

from __future__ import annotations

import asyncio

import pytest
from proxy import TcpProxy
from servers import connect
from waits import eventually

from message_bus import Message, MessageType, PartitionKey
from message_bus.adapters.nats import JetStreamPublisher, JetStreamSource, StreamManager
from message_bus.adapters.ordered.store import StoreUnavailable
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
CONSUMER = "ordered__notify"


def payment(n: int) -> Message:
    payload = sample_payload(PAYMENT, payment_id=f"pay_{n}", amount="10.00")
    return Message.new(PAYMENT, PartitionKey.corridor("USD-EUR"), payload)


async def test_arrivals_call_back_and_take_hands_them_over_without_waiting(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await connect(nats_server.url)
    try:
        await StreamManager(client).apply()
        src = JetStreamSource(client, STREAM, PAYMENT, CONSUMER, idle_heartbeat=0.5)
        cursor = await src.open(1)
        calls: list[int] = []
        cursor.notify(lambda: calls.append(1))
        assert cursor.take(10) == []  # nothing yet: no wait, no error
        sent = [payment(n) for n in range(3)]
        async with JetStreamPublisher(client) as publisher:
            for message in sent:
                await publisher.publish(message)
        taken: list[str] = []

        def took_all() -> bool:
            taken.extend(r.message.id for r in cursor.take(10) if r.message is not None)
            return len(taken) == len(sent)

        await eventually(took_all, "the three messages to be taken")
        assert taken == [m.id for m in sent]
        assert len(calls) >= 1, "no call back for the arrivals"
        await cursor.close()
    finally:
        await client.close()


async def test_silent_heartbeats_call_back_and_take_raises(
    nats_server: EmbeddedNatsServer,
) -> None:
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = await connect(proxy.url)
        try:
            await StreamManager(client).apply()
            src = JetStreamSource(
                client, STREAM, PAYMENT, CONSUMER, pull_expires=2.0, idle_heartbeat=0.5
            )
            cursor = await src.open(1)
            woken = asyncio.Event()
            cursor.notify(woken.set)
            assert cursor.take(10) == []
            proxy.drop(downstream=True)
            woken.clear()
            async with asyncio.timeout(15):  # 2.5 heartbeats of 0.5 s, then the next check
                await woken.wait()
            with pytest.raises(StoreUnavailable, match="heartbeat"):
                cursor.take(10)
            proxy.drop()
            await cursor.close()
        finally:
            await client.close()
