"""The application object: handlers registered with a decorator, run on a container.

::

    bus = Bus(load_settings())

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening", payload=PaymentInstruction)
    @inject
    async def screen(
        instruction: PaymentInstruction,
        message: Message,
        publisher: Publisher = Provide[Container.publisher],
    ) -> Message:
        return message.reply(MessageType.COMPLIANCE_CHECK, {...})

    bus.run()  # or: deltran-bus run module:bus
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import ValidationError
from message_bus.ports import Publisher, SubscriberConfig, Subscription

from .asyncapi import Operation
from .config import BusSettings, load_settings
from .containers import Container, build_container, resolve, shutdown_container, start_container
from .handlers import HandlerSpec, RegisteredHandler
from .logs import configure_logging
from .loop import run as run_loop
from .middleware import MetricsMiddleware, Middleware, TracingMiddleware
from .overrides import merge_config
from .readiness import Readiness, check_readiness
from .runner import serve

__all__ = ["Bus"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class Bus:
    """Handlers registered with :meth:`handler`, started on a dependency-injector container.

    Args:
        settings: the settings (``load_settings()`` on first use if None) or a
            container built with :func:`build_container` (or a subclass with the
            application's own providers).
        middleware: hooks around every handler's run and every publish of what it
            returned (see :mod:`message_bus.app.middleware`); None: tracing and
            metrics (:class:`TracingMiddleware`, :class:`MetricsMiddleware`), the
            first outermost. :meth:`use` adds more, inside these.
        drain_timeout: seconds :meth:`stop` waits for handlers in flight (None:
            ``nats.drain_timeout``); what still runs then is cut off and redelivered.
    """

    def __init__(
        self,
        settings: BusSettings | Container | None = None,
        *,
        middleware: Sequence[Middleware] | None = None,
        drain_timeout: float | None = None,
    ) -> None:
        # A DeclarativeContainer's instances are DynamicContainers: not isinstance of it.
        self._settings = settings if isinstance(settings, BusSettings) else None
        self._container: Container | None = None
        if settings is not None and not isinstance(settings, BusSettings):
            self._container = settings
        self._middleware = list(middleware) if middleware is not None else None
        self._added: list[Middleware] = []
        self._drain_timeout = drain_timeout
        self._specs: list[HandlerSpec] = []
        self._subscriptions: dict[str, Subscription] = {}
        self._publisher: Publisher | None = None
        self._started = False

    # -- registration -------------------------------------------------------------------
    def handler(
        self,
        message_type: MessageType,
        *,
        group: str,
        payload: type[Any] | None = None,
        config: SubscriberConfig | None = None,
        **overrides: Any,
    ) -> Callable[[F], F]:
        """Register an ``async def`` to handle ``message_type`` in consumer ``group``.

        The function gets the payload converted to ``payload`` (a Struct; a payload
        that does not convert is dead-lettered), the :class:`Message` if it has a
        parameter annotated ``Message``, and its ``Provide[...]`` dependencies (with
        ``@inject``). Whatever it returns (a Message, a list of them, or None) is
        published before the ack, with correlation and causation set.

        Args:
            message_type: the type it consumes.
            group: its consumer group.
            payload: the type its payload is converted to (None: as decoded).
            config: SubscriberConfig whose non-default fields override the configured.
            overrides: SubscriberConfig fields (``ordering="partition"``,
                ``max_concurrent=20``), merged over the configured ones.

        Raises:
            ValidationError: a SubscriberConfig field or the group name is invalid.
            TypeError: the function is not an ``async def`` or has parameters the
                bus cannot fill.
            RuntimeError: the bus is already started.
        """
        merge_config(SubscriberConfig(), config, consumer_group=group, **overrides)  # check now
        fields = {**self._fields_of(config), **overrides}

        def register(function: F) -> F:
            if self._started:
                raise RuntimeError("register handlers before the bus starts")
            spec = HandlerSpec.of(function, message_type, group, payload, fields)
            if any(s.name == spec.name for s in self._specs):
                raise ValidationError("handler", spec.name, "is registered already")
            self._specs.append(spec)
            return function

        return register

    @staticmethod
    def _fields_of(config: SubscriberConfig | None) -> dict[str, Any]:
        if config is None:
            return {}
        defaults = SubscriberConfig()
        return {
            name: getattr(config, name)
            for name in SubscriberConfig.__dataclass_fields__
            if getattr(config, name) != getattr(defaults, name)
        }

    def use(self, middleware: Middleware) -> None:
        """Add ``middleware`` inside the ones the bus has (before it starts)."""
        if self._started:
            raise RuntimeError("add middleware before the bus starts")
        if not callable(middleware):
            raise TypeError(
                f"middleware must be an async callable (ctx, call_next), got {middleware!r}"
            )
        self._added.append(middleware)

    @property
    def handlers(self) -> list[HandlerSpec]:
        """The registered handlers, in registration order."""
        return list(self._specs)

    def asyncapi_operations(self) -> list[Operation]:
        """The registered handlers as AsyncAPI ``receive`` operations (what
        ``deltran-bus docs asyncapi --app module:bus`` documents): each handler's type,
        group and ordering (its own, else the configured subscribers')."""
        configured: SubscriberConfig = self.container.subscriber_config()
        return [
            Operation(
                spec.message_type,
                spec.group,
                spec.overrides.get("ordering", configured.ordering),
                handler=spec.name,
            )
            for spec in self._specs
        ]

    # -- the container ------------------------------------------------------------------
    @property
    def container(self) -> Container:
        """The container (built from the settings on first use)."""
        if self._container is None:
            self._container = build_container(self._settings or load_settings())
        return self._container

    @property
    def registry(self) -> CollectorRegistry:
        """The container's Prometheus registry."""
        registry: CollectorRegistry = self.container.registry()
        return registry

    @property
    def health_address(self) -> tuple[str, int]:
        """``metrics.host`` and ``metrics.port`` of the settings."""
        metrics = self.container.config.metrics
        return str(metrics.host()), int(metrics.port())

    @property
    def publisher(self) -> Publisher:
        """The bus's publisher (traced and measured), once started."""
        if self._publisher is None:
            raise RuntimeError("the bus is not started: `async with bus:` or `await bus.start()`")
        return self._publisher

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """Each handler's subscription, by handler name, once started."""
        return dict(self._subscriptions)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the container, wire it to the handlers' modules, subscribe every handler.

        If a subscription cannot start, what was started is stopped again.

        Raises:
            BusConnectionError: the broker cannot be reached.
            StreamError: a handler's stream does not exist.
        """
        if self._started:
            return
        container = self.container
        self._started = True
        try:
            await start_container(container)
            modules = sorted({s.function.__module__ for s in self._specs})
            container.wire(modules=[sys.modules[m] for m in modules if m in sys.modules])
            publisher: Publisher = await resolve(container.publisher())
            self._publisher = publisher
            middleware = self._chain(container)
            for spec in self._specs:
                subscriber = await resolve(
                    container.subscriber(
                        spec.message_type, consumer_group=spec.group, **spec.overrides
                    )
                )
                handler = RegisteredHandler(spec, publisher, middleware)
                self._subscriptions[spec.name] = await subscriber.subscribe(handler)
        except BaseException:
            await self.stop()
            raise

    def _chain(self, container: Container) -> list[Middleware]:
        if self._middleware is not None:
            return self._middleware + self._added
        builtin: list[Middleware] = [MetricsMiddleware(container.registry())]
        if container.config.tracing.enabled():
            builtin.insert(0, TracingMiddleware(container.tracer_provider()))
        return builtin + self._added

    async def stop(self) -> None:
        """Drain every subscription (handlers in flight finish and are acked, bounded by
        the drain timeout), then shut the container down. Idempotent."""
        if not self._started:
            return
        self._started = False
        container = self.container
        timeout = self._drain_timeout
        if timeout is None:
            timeout = float(container.config.nats.drain_timeout())
        subscriptions = list(self._subscriptions.values())
        self._subscriptions.clear()
        if subscriptions:
            draining = asyncio.gather(*(s.drain() for s in subscriptions), return_exceptions=True)
            try:
                await asyncio.wait_for(draining, timeout)
            except TimeoutError:
                log.warning("handlers still busy after %gs: stopping them", timeout)
                for subscription in subscriptions:
                    with contextlib.suppress(Exception):
                        await subscription.stop()
        self._publisher = None
        try:
            await shutdown_container(container)
        finally:
            with contextlib.suppress(Exception):
                container.unwire()

    async def readiness(self) -> Readiness:
        """Connected, the handlers' streams present, every subscription active."""
        if not self._started:
            return Readiness(ready=False, checks={"bus": "not started"})
        return await check_readiness(
            self.container, self._subscriptions, (s.message_type for s in self._specs)
        )

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- running --------------------------------------------------------------------------
    async def serve(
        self,
        *,
        stop: asyncio.Event | None = None,
        on_ready: Callable[[str], Awaitable[None] | None] | None = None,
    ) -> int:
        """Run until ``stop`` is set, SIGINT or SIGTERM; serve ``/metrics``, ``/healthz``
        and ``/readyz`` on ``metrics.host:metrics.port``; drain; return 0.

        Logs as the ``logging`` settings say (text or JSON lines on stderr, repeats
        rate-limited, the NATS secrets redacted), unless logging is configured already.
        """
        self._configure_logging()
        return await serve(self, stop=stop, on_ready=on_ready)

    def _configure_logging(self) -> None:
        container = self.container
        settings = container.config.logging
        secrets: tuple[str, ...] = ()
        with contextlib.suppress(Exception):  # a bad NATS config is reported by start()
            secrets = container.nats_config().secrets()
        configure_logging(
            settings.format(), repeat_window=float(settings.repeat_window()), secrets=secrets
        )

    def run(self, *, event_loop: str | None = None) -> int:
        """:meth:`serve` in a new event loop: the entry point of a service's ``main``.

        Args:
            event_loop: ``auto``, ``asyncio`` or ``uvloop``; None: ``DELTRAN_EVENT_LOOP``
                (default ``auto``: uvloop when installed, see :mod:`message_bus.app.loop`).

        Raises:
            ValidationError: the loop asked for is unknown or not installed.
        """
        return run_loop(self.serve(), event_loop=event_loop)
