"""The contract suite against the NATS adapter on a real nats-server.

One server per module (scenarios name their groups and partition keys uniquely); every
scenario gets its own connection, publishers and subscribers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from message_bus.adapters.nats import (
    JetStreamDeadLetters,
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.domain.catalog import MessageType
from message_bus.ports.config import PublisherConfig, SubscriberConfig
from message_bus.ports.dead_letters import DeadLetters
from message_bus.ports.publisher import Publisher
from message_bus.ports.subscriber import Subscriber
from message_bus.testing import Features, applicable, run_scenario

FEATURES = Features(
    fake_clock=False,
    min_ack_wait=1.0,
    supports_request_reply=True,
    dead_letters_on_ack_wait_exhaustion=True,
    timeout=15.0,
    stream_limits=True,
)
_SETTLE = 0.3


class NatsHarness:
    """The NATS adapter as a :class:`~message_bus.testing.BusHarness`."""

    features = FEATURES

    def __init__(self, client: NatsClient) -> None:
        self.client = client
        self._publishers: list[JetStreamPublisher] = []
        self._subscribers: list[JetStreamSubscriber] = []

    @classmethod
    async def create(cls, url: str) -> NatsHarness:
        client = NatsClient(NatsConfig(urls=[url], reconnect_delay=0.05))
        await client.connect()
        await StreamManager(client).apply()
        return cls(client)

    def publisher(self, config: PublisherConfig | None = None) -> Publisher:
        if config is None:
            config = PublisherConfig(validate_payloads=False)
        publisher = JetStreamPublisher(self.client, config)
        self._publishers.append(publisher)
        return publisher

    def subscriber(
        self,
        message_type: MessageType,
        config: SubscriberConfig | None = None,
        *,
        ephemeral: bool = False,
    ) -> Subscriber:
        subscriber = JetStreamSubscriber(
            self.client,
            message_type,
            config,
            pull_expires=5.0,
            idle_heartbeat=1.0,
            ephemeral=ephemeral,
        )
        self._subscribers.append(subscriber)
        return subscriber

    def dead_letters(self) -> DeadLetters:
        return JetStreamDeadLetters(self.client)

    async def add_stream(self, message_type: MessageType) -> None:
        assert message_type.stream is not None
        await StreamManager(self.client).apply_stream(message_type.stream)

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def settle(self) -> None:
        await asyncio.sleep(_SETTLE)

    async def close(self) -> None:
        for subscriber in self._subscribers:
            await subscriber.close()
        for publisher in self._publishers:
            await publisher.close()
        await self.client.close()


@pytest.fixture(scope="module")
def contract_server() -> Iterator[EmbeddedNatsServer]:
    with EmbeddedNatsServer() as server:
        yield server


@pytest.mark.parametrize("name", [spec.name for spec in applicable(FEATURES)])
async def test_contract(name: str, contract_server: EmbeddedNatsServer) -> None:
    async def factory() -> NatsHarness:
        return await NatsHarness.create(contract_server.url)

    await run_scenario(name, factory)
