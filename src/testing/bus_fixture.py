"""The ``bus`` test fixture: an in-memory bus on a manual clock that records what it published.

The pytest plugin (:mod:`message_bus.testing.pytest_plugin`) hands a fresh
:class:`BusFixture` to every test that asks for ``bus``; it works without pytest too::

    async with BusFixture() as bus:
        await bus.subscribe(MessageType.PAYMENT_INSTRUCTION, handler)
        await bus.publish(message)
        await bus.settle()
        bus.assert_published(MessageType.PAYMENT_INSTRUCTION, count=1)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from message_bus.adapters.memory import InMemoryBroker, ManualClock
from message_bus.domain.catalog import MessageType, StreamCatalog
from message_bus.domain.codec import WireCodec
from message_bus.domain.dead_letter import DeadLetter
from message_bus.domain.message import Message
from message_bus.domain.partition import DEFAULT_PARTITIONS
from message_bus.ports.config import PublisherConfig, SubscriberConfig
from message_bus.ports.dead_letters import DeadLetters
from message_bus.ports.publisher import Publisher, PublishReceipt
from message_bus.ports.subscriber import (
    FunctionHandler,
    MessageHandler,
    Subscriber,
    Subscription,
)

from .recorder import PublishedLog, RecordingPublisher, Where

if TYPE_CHECKING:
    from message_bus.app.bus import Bus
    from message_bus.app.config import BusSettings
    from message_bus.app.containers import Container

__all__ = ["BusFixture", "RecordingBroker"]

Handler = MessageHandler | Callable[[Message], Awaitable[Message | None]]
"""What :meth:`BusFixture.subscribe` takes: a handler object or an ``async def``."""


class RecordingBroker(InMemoryBroker):
    """An :class:`InMemoryBroker` whose publishers record what they publish in ``log``.

    Every publisher it hands out records, also those a container wired to it creates
    (under the container's telemetry decorators), so a test sees what the code under
    test published whichever way it got its publisher.

    Args:
        log: where accepted messages are recorded.
        **kwargs: as for :class:`InMemoryBroker`.
    """

    def __init__(self, log: PublishedLog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = log

    def publisher(self, config: PublisherConfig | None = None) -> Publisher:  # type: ignore[override]
        inner = super().publisher(config)
        return RecordingPublisher(inner, self.log, WireCodec(inner.config.partitions))


class BusFixture:
    """A test's message bus: an in-memory broker with JetStream's semantics on a
    :class:`ManualClock`, recording every message its publishers accept.

    Time moves only when the test says so (:meth:`advance`), so ack waits, NAK delays
    and handler time limits are tested without sleeping.

    Args:
        clock: the broker's clock (default: a new :class:`ManualClock`).
        catalog: the streams (default: the DelTran catalog).
        partitions: the partition count of publishers created without a config.
        duplicate_window: seconds a message id is remembered for deduplication.

    Attributes:
        clock: the manual clock.
        broker: the :class:`RecordingBroker`.
        log: the :class:`PublishedLog` of accepted messages.
    """

    def __init__(
        self,
        *,
        clock: ManualClock | None = None,
        catalog: StreamCatalog | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        duplicate_window: float = 120.0,
    ) -> None:
        self.clock = clock if clock is not None else ManualClock()
        self.log = PublishedLog()
        self.broker = RecordingBroker(
            self.log,
            clock=self.clock,
            catalog=catalog,
            partitions=partitions,
            duplicate_window=duplicate_window,
        )
        self._publisher: Publisher | None = None
        self._containers: list[Container] = []
        self._apps: list[Bus] = []

    # -- ports ---------------------------------------------------------------------------

    def publisher(self, config: PublisherConfig | None = None) -> Publisher:
        """A recording publisher on this bus's broker."""
        return self.broker.publisher(config)

    def subscriber(
        self,
        message_type: MessageType,
        config: SubscriberConfig | None = None,
        *,
        ephemeral: bool = False,
    ) -> Subscriber:
        """A subscriber on this bus's broker (see :meth:`InMemoryBroker.subscriber`)."""
        return self.broker.subscriber(message_type, config, ephemeral=ephemeral)

    def dead_letters(self) -> DeadLetters:
        """The dead-letter stream."""
        return self.broker.dead_letters()

    async def publish(self, message: Message) -> PublishReceipt:
        """Publish ``message`` with this bus's own recording publisher."""
        if self._publisher is None:
            self._publisher = self.publisher()
        return await self._publisher.publish(message)

    async def subscribe(
        self,
        message_type: MessageType,
        handler: Handler,
        config: SubscriberConfig | None = None,
    ) -> Subscription:
        """Subscribe ``handler`` (an object with ``async handle`` or an ``async def``).

        The subscription is stopped when the bus closes.
        """
        if not hasattr(handler, "handle") and inspect.iscoroutinefunction(handler):
            handler = FunctionHandler(handler)
        return await self.subscriber(message_type, config).subscribe(handler)  # type: ignore[arg-type]

    async def container(self, settings: BusSettings | None = None) -> Container:
        """A started :class:`~message_bus.app.containers.Container` on this bus.

        The container runs the ``memory`` backend on this bus's broker and clock, so
        what its publishers publish is recorded here; it is shut down when the bus
        closes.

        Args:
            settings: the container's settings (default :class:`BusSettings`); their
                ``backend`` is replaced by ``memory``.
        """
        from dependency_injector import providers

        from message_bus.app.config import BusSettings
        from message_bus.app.containers import build_container, start_container

        chosen = settings if settings is not None else BusSettings()
        container = build_container(dataclasses.replace(chosen, backend="memory"))
        container.clock.override(providers.Object(self.clock))
        container.memory_broker.override(providers.Resource(given_broker, self.broker))
        await start_container(container)
        self._containers.append(container)
        return container

    async def start(self, app: Bus) -> Bus:
        """Start a service's :class:`~message_bus.app.bus.Bus` on this bus: its own
        container (with the service's providers) switches to the ``memory`` backend on
        this broker and clock, so its handlers receive what is published here and what
        they return is recorded. The app is stopped when the bus closes.

        Args:
            app: a Bus that has not started.
        """
        from dependency_injector import providers

        container = app.container
        container.config.backend.override("memory")
        container.clock.override(providers.Object(self.clock))
        container.memory_broker.override(providers.Resource(given_broker, self.broker))
        await app.start()
        self._apps.append(app)
        return app

    # -- time ----------------------------------------------------------------------------

    async def settle(self) -> None:
        """Run the event loop until the broker is quiet: every delivery that is due has
        reached its handler, and every handler that waits on nothing outside the broker
        has finished (see :meth:`InMemoryBroker.settle`)."""
        await self.broker.settle()

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward (firing ack-wait expiries, NAK delays and
        handler time limits that fall due), then :meth:`settle`."""
        self.clock.advance(seconds)
        await self.broker.settle()

    # -- what happened ---------------------------------------------------------------------

    def published(self, message_type: MessageType | None = None) -> list[Message]:
        """The messages of ``message_type`` (all if None) that publishers of this bus
        published, in order, as handlers receive them (payloads are plain JSON)."""
        return self.log.published(message_type)

    def assert_published(
        self,
        message_type: MessageType,
        *,
        count: int | None = None,
        where: Where | None = None,
    ) -> list[Message]:
        """Assert what was published; see :meth:`PublishedLog.assert_published`.

        ``count`` is exact (default: at least one; ``0``: none); ``where`` is a
        predicate on the message or payload fields that must equal the given values.
        Returns the matching messages.
        """
        __tracebackhide__ = True
        return self.log.assert_published(message_type, count=count, where=where)

    async def dead_lettered(self, limit: int = 100) -> list[DeadLetter]:
        """The dead letters stored so far, oldest first."""
        return await self.broker.dead_letters().list(limit)

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """Shut down the containers handed out, then the broker (in-flight handlers
        finish). Idempotent."""
        from message_bus.app.containers import shutdown_container

        apps, self._apps = self._apps, []
        for app in apps:
            await app.stop()
        containers, self._containers = self._containers, []
        for container in containers:
            await shutdown_container(container)
        await self.broker.close()

    async def __aenter__(self) -> BusFixture:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def given_broker(broker: InMemoryBroker) -> AsyncIterator[InMemoryBroker]:
    """An async resource that hands out ``broker`` and leaves closing it to its owner."""
    yield broker
