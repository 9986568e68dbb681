"""The contract harness for the in-memory adapter."""

from __future__ import annotations

import asyncio
from datetime import datetime

from message_bus.adapters.memory import InMemoryBroker, ManualClock
from message_bus.adapters.memory.clock import Clock
from message_bus.domain.catalog import MessageType
from message_bus.ports.config import PublisherConfig, SubscriberConfig
from message_bus.ports.dead_letters import DeadLetters
from message_bus.ports.publisher import Publisher
from message_bus.ports.subscriber import Subscriber

from .harness import Features


class MemoryHarness:
    """An :class:`InMemoryBroker` as a :class:`~message_bus.testing.BusHarness`.

    With a :class:`ManualClock` (the default) ``advance`` moves the clock and then
    settles the broker, so no scenario waits in real time for a timer.

    Args:
        clock: the broker's clock (default: a new :class:`ManualClock`).
        timeout: the bound on every wait for a delivery (seconds, real time).
    """

    def __init__(self, clock: Clock | None = None, *, timeout: float = 10.0) -> None:
        self.clock = clock if clock is not None else ManualClock()
        self.broker = InMemoryBroker(clock=self.clock)
        fake = isinstance(self.clock, ManualClock)
        self.features = Features(
            fake_clock=fake,
            min_ack_wait=0.0 if fake else 0.05,
            timeout=timeout,
            stream_limits=True,
        )

    @classmethod
    async def create(cls) -> MemoryHarness:
        """A :data:`~message_bus.testing.HarnessFactory`: a fresh broker on a ManualClock."""
        return cls()

    def publisher(self, config: PublisherConfig | None = None) -> Publisher:
        if config is None:
            config = PublisherConfig(partitions=self.broker.partitions, validate_payloads=False)
        return self.broker.publisher(config)

    def subscriber(
        self,
        message_type: MessageType,
        config: SubscriberConfig | None = None,
        *,
        ephemeral: bool = False,
    ) -> Subscriber:
        return self.broker.subscriber(message_type, config, ephemeral=ephemeral)

    def dead_letters(self) -> DeadLetters:
        return self.broker.dead_letters()

    async def add_stream(self, message_type: MessageType) -> None:
        """Create the stream of a type registered after the harness was built."""
        self.broker.add_stream(message_type)

    async def advance(self, seconds: float) -> None:
        if isinstance(self.clock, ManualClock):
            self.clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)
        await self.broker.settle()

    async def settle(self) -> None:
        await self.broker.settle()

    def utcnow(self) -> datetime:
        """The broker's wall-clock time (its clock's ``utcnow()``)."""
        return self.clock.utcnow()

    async def close(self) -> None:
        await self.broker.close()
