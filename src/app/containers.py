"""The composition root: the only module that names concrete adapter classes.

A dependency-injector container builds everything from :class:`BusSettings`:

* ``config``: a strict ``Configuration`` fed from the settings (:func:`build_container`);
* ``backend``: ``memory``, ``nats`` or ``embedded``, from ``config.backend``; tests swap
  it in one line: ``container.backend.override("memory")``;
* resources with an async lifecycle: ``memory_broker``, ``embedded_server`` (a local
  nats-server), ``nats_client`` (connect/close); ``connection`` selects the one the
  backend needs, so only that one is ever started;
* ports, wrapped in the telemetry decorators (metrics in the container's own
  ``registry``, spans to its ``tracer_provider``): ``publisher(config=None, **fields)``,
  ``subscriber(message_type, config=None, ephemeral=False, **fields)``,
  ``dead_letters()``; the fields given (``max_concurrent=20``, or those where a whole
  ``config`` differs from the defaults) override the configured ones, the rest are kept;
* the example service: ``payment_intake()``, ``netting_worker()``, ``bank_confirmer()``,
  and ``netting_worker_config()``, the netting workers' group config (an ordered group
  over the settings' ``partitions``).

Ports depend on a connection, so the container hands them out awaited::

    async with open_container(load_settings()) as container:
        publisher = await container.publisher()
        subscriber = await container.subscriber(MessageType.PAYMENT_INSTRUCTION)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from dependency_injector import containers, providers
from opentelemetry.sdk.resources import Resource as OtelResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry

from message_bus.adapters.memory import InMemoryBroker
from message_bus.adapters.memory.clock import Clock, SystemClock
from message_bus.adapters.telemetry import (
    BusMetrics,
    MetricsPublisher,
    MetricsSubscriber,
    TracingPublisher,
    TracingSubscriber,
)
from message_bus.domain.catalog import MessageType, StreamCatalog
from message_bus.ports import (
    DeadLetters,
    Publisher,
    PublisherConfig,
    Subscriber,
    SubscriberConfig,
)

from .config import (
    BACKENDS,
    BusSettings,
    publisher_config_from,
    stream_catalog_from,
    subscriber_config_from,
)
from .embedded import EmbeddedNatsServer
from .overrides import merge_config
from .service import BankConfirmer, NettingWorker, PaymentIntake, netting_config

if TYPE_CHECKING:
    # Imported where used, so the memory backend never loads the NATS client library.
    from message_bus.adapters.nats import (
        NatsClient,
        NatsConfig,
        RetryEvent,
        StreamManager,
        StreamReport,
    )

__all__ = [
    "Container",
    "Telemetry",
    "apply_streams",
    "build_container",
    "open_container",
    "resolve",
    "shutdown_container",
    "start_container",
    "start_in_thread",
]


T = TypeVar("T")
log = logging.getLogger(__name__)


async def resolve(provided: T | Awaitable[T]) -> T:
    """What a provider gave, awaited when it is awaitable.

    Providers that depend on an async resource (every port, the example service, the
    embedded server) hand out awaitables; ``await resolve(container.payment_intake())``
    reads well and keeps the provider's static type.
    """
    if inspect.isawaitable(provided):
        return cast("T", await provided)
    return provided


class Telemetry:
    """Wraps ports in the metrics and tracing decorators of one registry and provider."""

    def __init__(
        self, metrics: BusMetrics, tracer_provider: TracerProvider, *, tracing: bool = True
    ) -> None:
        self.metrics = metrics
        self.tracer_provider = tracer_provider
        self.tracing = tracing

    def publisher(self, inner: Publisher) -> Publisher:
        """``inner`` measured, and traced if tracing is on (the span is inside the timing)."""
        traced = TracingPublisher(inner, self.tracer_provider) if self.tracing else inner
        return MetricsPublisher(traced, self.metrics)

    def retried(self, event: RetryEvent) -> None:
        """The NATS publisher's retry hook: count the retry."""
        kind = event.message_type if event.message_type is not None else "unknown"
        self.metrics.record_retry(kind)

    def subscriber(self, inner: Subscriber) -> Subscriber:
        """``inner`` with measured, and traced, handlers."""
        metered = MetricsSubscriber(inner, self.metrics)
        return TracingSubscriber(metered, self.tracer_provider) if self.tracing else metered


def _backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; one of {', '.join(BACKENDS)}")
    return name


def _tracer_provider(service_name: str, sample_ratio: float) -> TracerProvider:
    # No exporter by default: spans still carry trace context across the bus; an
    # application adds its exporter with tracer_provider.add_span_processor(...).
    return TracerProvider(
        resource=OtelResource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        shutdown_on_exit=False,
    )


def _nats_config(values: Mapping[str, Any], urls: list[str]) -> NatsConfig:
    from message_bus.adapters.nats import NatsConfig

    return NatsConfig(**{**values, "urls": list(urls)})


async def _memory_broker(
    clock: Clock, catalog: StreamCatalog, duplicate_window: float, partitions: int
) -> AsyncIterator[InMemoryBroker]:
    broker = InMemoryBroker(
        clock=clock, catalog=catalog, duplicate_window=duplicate_window, partitions=partitions
    )
    try:
        yield broker
    finally:
        await broker.close()


async def start_in_thread(start: Callable[[], object], stop: Callable[[], object]) -> None:
    """Run the blocking ``start`` in a thread; ``stop`` what it started if cancelled.

    A thread cannot be cancelled: when the caller is (Ctrl-C, a timeout), ``start``
    is let finish and ``stop`` then runs, so nothing started is left running.
    """
    starting = asyncio.ensure_future(asyncio.to_thread(start))
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # a failed start cleans up after itself
            await asyncio.shield(starting)
        await asyncio.to_thread(stop)
        raise


async def _embedded_server(
    port: int, data_dir: str | None, binary: str | None
) -> AsyncIterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(port=port, store_dir=data_dir, binary=binary)
    await start_in_thread(server.start, server.stop)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def _nats_client(
    config: NatsConfig, metrics: BusMetrics, subscribers: weakref.WeakSet[Subscriber]
) -> AsyncIterator[NatsClient]:
    from message_bus.adapters.nats import NatsClient

    client = NatsClient(config)
    client.on_status(lambda status: metrics.set_connection_status(status.value))
    try:
        await client.connect()
        yield client
    finally:
        await _drain(client, subscribers, config.drain_timeout)


async def _drain(
    client: NatsClient, subscribers: weakref.WeakSet[Subscriber], timeout: float
) -> None:
    """Close ``client`` without losing the acks of handlers in flight.

    Every subscriber the container handed out is closed first (its handlers in flight
    finish and their deliveries are settled; nothing new starts), then the client
    drains, so the acks written last are flushed before the connection closes. Both
    steps together take at most about ``timeout`` seconds; what is still running then
    is cut off (its messages are redelivered after ``ack_wait``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    open_subscribers = list(subscribers)
    if open_subscribers and not client.is_closed:
        closing = asyncio.gather(*(s.close() for s in open_subscribers), return_exceptions=True)
        try:
            await asyncio.wait_for(closing, timeout)
        except TimeoutError:
            log.warning("subscribers still busy after drain_timeout (%gs): closing anyway", timeout)
    if loop.time() < deadline:
        await client.drain()  # nats-py bounds it by the same drain_timeout
    await client.close()


def _server_urls(server: EmbeddedNatsServer) -> list[str]:
    return [server.url]


def _memory_publisher(
    config: PublisherConfig | None = None,
    *,
    broker: InMemoryBroker,
    default_config: PublisherConfig,
    telemetry: Telemetry,
    **overrides: Any,
) -> Publisher:
    merged = merge_config(default_config, config, **overrides)
    return telemetry.publisher(broker.publisher(merged))


def _nats_publisher(
    config: PublisherConfig | None = None,
    *,
    client: NatsClient,
    default_config: PublisherConfig,
    catalog: StreamCatalog,
    telemetry: Telemetry,
    **overrides: Any,
) -> Publisher:
    from message_bus.adapters.nats import JetStreamPublisher

    merged = merge_config(default_config, config, **overrides)
    inner = JetStreamPublisher(client, merged, catalog=catalog, on_retry=telemetry.retried)
    return telemetry.publisher(inner)


def _memory_subscriber(
    message_type: MessageType,
    config: SubscriberConfig | None = None,
    *,
    broker: InMemoryBroker,
    default_config: SubscriberConfig,
    telemetry: Telemetry,
    ephemeral: bool = False,
    **overrides: Any,
) -> Subscriber:
    merged = merge_config(default_config, config, **overrides)
    inner = broker.subscriber(message_type, merged, ephemeral=ephemeral)
    return telemetry.subscriber(inner)


def _nats_subscriber(
    message_type: MessageType,
    config: SubscriberConfig | None = None,
    *,
    client: NatsClient,
    default_config: SubscriberConfig,
    catalog: StreamCatalog,
    publisher_config: PublisherConfig,
    telemetry: Telemetry,
    opened: weakref.WeakSet[Subscriber],
    ephemeral: bool = False,
    **overrides: Any,
) -> Subscriber:
    from message_bus.adapters.nats import JetStreamSubscriber

    inner = JetStreamSubscriber(
        client,
        message_type,
        merge_config(default_config, config, **overrides),
        catalog=catalog,
        publisher_config=publisher_config,  # for the dead letters it publishes
        ephemeral=ephemeral,
    )
    opened.add(inner)  # closed (handlers in flight settled) before the client closes
    return telemetry.subscriber(inner)


def _memory_dead_letters(*, broker: InMemoryBroker) -> DeadLetters:
    return broker.dead_letters()


def _nats_dead_letters(
    *, client: NatsClient, catalog: StreamCatalog, publisher_config: PublisherConfig
) -> DeadLetters:
    from message_bus.adapters.nats import JetStreamDeadLetters

    return JetStreamDeadLetters(client, catalog=catalog, publisher_config=publisher_config)


def _stream_manager(client: NatsClient) -> StreamManager:
    from message_bus.adapters.nats import StreamManager

    return StreamManager(client)


class Container(containers.DeclarativeContainer):
    """Wires configuration, connection, telemetry-decorated ports and the example service."""

    config = providers.Configuration(strict=True)

    backend = providers.Callable(_backend, config.backend)
    catalog = providers.Singleton(stream_catalog_from, config.streams)
    clock = providers.Singleton(SystemClock)

    registry = providers.Singleton(CollectorRegistry)
    metrics = providers.Singleton(BusMetrics.for_registry, registry)
    tracer_provider = providers.Singleton(
        _tracer_provider, config.tracing.service_name, config.tracing.sample_ratio
    )
    telemetry = providers.Singleton(
        Telemetry, metrics, tracer_provider, tracing=config.tracing.enabled
    )

    publisher_config = providers.Factory(publisher_config_from, config)
    subscriber_config = providers.Factory(subscriber_config_from, config)

    # -- connections (async resources; only the selected one is ever started) -------
    memory_broker = providers.Resource(
        _memory_broker,
        clock=clock,
        catalog=catalog,
        duplicate_window=config.streams.duplicate_window,
        partitions=config.partitions,
    )
    embedded_server = providers.Resource(
        _embedded_server,
        port=config.embedded.port,
        data_dir=config.embedded.data_dir,
        binary=config.embedded.binary,
    )
    nats_urls = providers.Selector(
        backend,
        nats=config.nats.urls,
        embedded=providers.Callable(_server_urls, embedded_server),
    )
    nats_config = providers.Factory(_nats_config, config.nats, urls=nats_urls)
    nats_subscribers: providers.Singleton[weakref.WeakSet[Subscriber]] = providers.Singleton(
        weakref.WeakSet
    )
    nats_client = providers.Resource(
        _nats_client, config=nats_config, metrics=metrics, subscribers=nats_subscribers
    )
    connection = providers.Selector(
        backend, memory=memory_broker, nats=nats_client, embedded=nats_client
    )

    # -- ports ---------------------------------------------------------------------------
    _nats_publisher_factory = providers.Factory(
        _nats_publisher,
        client=nats_client,
        default_config=publisher_config,
        catalog=catalog,
        telemetry=telemetry,
    )
    publisher = providers.Selector(
        backend,
        memory=providers.Factory(
            _memory_publisher,
            broker=memory_broker,
            default_config=publisher_config,
            telemetry=telemetry,
        ),
        nats=_nats_publisher_factory,
        embedded=_nats_publisher_factory,
    )
    _nats_subscriber_factory = providers.Factory(
        _nats_subscriber,
        client=nats_client,
        default_config=subscriber_config,
        catalog=catalog,
        publisher_config=publisher_config,
        telemetry=telemetry,
        opened=nats_subscribers,
    )
    subscriber = providers.Selector(
        backend,
        memory=providers.Factory(
            _memory_subscriber,
            broker=memory_broker,
            default_config=subscriber_config,
            telemetry=telemetry,
        ),
        nats=_nats_subscriber_factory,
        embedded=_nats_subscriber_factory,
    )
    _nats_dead_letters_factory = providers.Factory(
        _nats_dead_letters, client=nats_client, catalog=catalog, publisher_config=publisher_config
    )
    dead_letters = providers.Selector(
        backend,
        memory=providers.Factory(_memory_dead_letters, broker=memory_broker),
        nats=_nats_dead_letters_factory,
        embedded=_nats_dead_letters_factory,
    )
    stream_manager = providers.Factory(_stream_manager, nats_client)

    # -- the example service ---------------------------------------------------------------
    payment_intake = providers.Factory(PaymentIntake, publisher=publisher)
    netting_worker_config = providers.Factory(netting_config, subscriber_config)
    netting_worker = providers.Factory(
        NettingWorker, publisher=publisher, ordered=netting_worker_config.provided.ordered
    )
    bank_confirmer = providers.Factory(BankConfirmer, publisher=publisher)


C = TypeVar("C", bound=Container)


@overload
def build_container(settings: BusSettings | None = None) -> Container: ...
@overload
def build_container(settings: BusSettings | None, container_class: type[C]) -> C: ...
def build_container(
    settings: BusSettings | None = None, container_class: type[Container] = Container
) -> Container:
    """A container configured from ``settings`` (defaults if None); nothing started yet.

    Args:
        settings: the configuration.
        container_class: :class:`Container` or a subclass declaring the application's
            own providers (``class Services(Container): watchlist = providers.Object(...)``).
    """
    container = container_class()
    container.config.from_dict((settings or BusSettings()).to_dict())
    return container


async def start_container(container: Container) -> None:
    """Start the selected backend's connection (server, client or broker).

    The ``embedded`` backend's server is the container's own, so its streams are applied
    right away (a fresh server has none, and a stream-backed publish would find no
    stream). If the start fails or is cancelled, what it had started is shut down again.

    Raises:
        BusConnectionError: the NATS servers cannot be reached.
        EmbeddedServerError: the embedded nats-server cannot start.
    """
    try:
        container.metrics()  # register the bus's series, so /metrics shows them from the start
        await container.connection()
        if container.backend() == "embedded":
            await apply_streams(container)
    except BaseException:
        await shutdown_container(container)
        raise


_SHUTDOWN_ORDER = ("nats_client", "embedded_server", "memory_broker")


async def shutdown_container(container: Container) -> None:
    """Close what :func:`start_container` started: client, then server, then broker.

    The NATS client is closed only after the subscribers the container handed out were
    closed and the connection drained, bounded by ``nats.drain_timeout``: a handler in
    flight at shutdown finishes and its ack reaches the server. The memory broker
    stops its subscriptions the same way.
    """
    for name in _SHUTDOWN_ORDER:
        resource = getattr(container, name)
        if resource.initialized:
            result = resource.shutdown()
            if inspect.isawaitable(result):
                await result


async def apply_streams(container: Container) -> list[StreamReport]:
    """Create or update the catalog's streams on the NATS backends (idempotent).

    Replicas and duplicate window come from ``config.streams``. The memory backend has
    its streams built in: nothing to do, an empty list is returned.

    Returns:
        The stream manager's report per stream; ``problems`` names a stream whose
        duplicate window is shorter than the configured publishers' retry budget.
    """
    if container.backend() == "memory":
        return []
    manager = await resolve(container.stream_manager())
    return await manager.apply(
        container.catalog(),
        replicas=container.config.streams.replicas(),
        duplicate_window=container.config.streams.duplicate_window(),
        publisher=container.publisher_config(),
    )


@contextlib.asynccontextmanager
async def open_container(
    settings: BusSettings | None = None, *, backend: str | None = None
) -> AsyncIterator[Container]:
    """A started container, shut down on exit.

    Args:
        settings: configuration (defaults if None).
        backend: overrides ``settings.backend`` (``memory``, ``nats``, ``embedded``).
    """
    container = build_container(settings)
    if backend is not None:
        container.backend.override(_backend(backend))
    try:
        await start_container(container)
        yield container
    finally:
        await shutdown_container(container)
