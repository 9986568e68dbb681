"""Middleware around a bus's handlers and around the publishes of what they return.

A middleware is any ``async def __call__(ctx, call_next)``: it may look at or change
``ctx``, must call ``await call_next(ctx)`` once to go on (or raise to stop), and
returns what ``call_next`` returned. The first middleware of a bus is the outermost.
``ctx.kind`` tells the two hooks apart: ``"consume"`` wraps a handler's run on one
delivery (the handler's outcome, and so the ack, is decided after it returns);
``"publish"`` wraps the publish of one message the handler returned.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram

from message_bus.domain.message import Message
from message_bus.ports import Delivery

__all__ = [
    "Context",
    "MetricsMiddleware",
    "Middleware",
    "Next",
    "TracingMiddleware",
    "run_chain",
]


@dataclass
class Context:
    """What a middleware sees.

    Attributes:
        kind: ``"consume"`` (a handler runs on ``message``) or ``"publish"`` (``message``
            is one the handler returned, about to be published).
        message: the message delivered (consume) or to be published (publish).
        handler: the handler's name (``module.function``).
        group: the handler's consumer group.
        delivery: the delivery being handled (its attempt, stream sequence).
        cause: for ``publish``, the delivered message that caused ``message``.
        extras: free room for middleware to pass values down the chain.
    """

    kind: Literal["consume", "publish"]
    message: Message
    handler: str
    group: str
    delivery: Delivery | None = None
    cause: Message | None = None
    extras: dict[str, Any] = field(default_factory=dict)


Next = Callable[[Context], Awaitable[Any]]


class Middleware(Protocol):
    """A hook around a handler's run and around each publish of what it returned."""

    async def __call__(self, ctx: Context, call_next: Next) -> Any:
        """Go on with ``await call_next(ctx)`` and return its result."""
        ...


async def run_chain(middleware: Sequence[Middleware], ctx: Context, last: Next) -> Any:
    """Run ``last(ctx)`` inside every middleware, the first one outermost."""

    async def step(index: int, current: Context) -> Any:
        if index == len(middleware):
            return await last(current)
        return await middleware[index](current, lambda after: step(index + 1, after))

    return await step(0, ctx)


class TracingMiddleware:
    """A span per handler run, and per publish of a returned message.

    The ports of the container are traced already (a CONSUMER span per delivery, a
    PRODUCER span per publish, ``traceparent`` carried in the headers); this adds an
    INTERNAL span named after the handler inside the CONSUMER span, so the handler's
    own work, and what it published, show under its name in the payment's one trace.
    """

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self._tracer = tracer_provider.get_tracer("message_bus.app")

    async def __call__(self, ctx: Context, call_next: Next) -> Any:
        name = f"{ctx.handler} {'handle' if ctx.kind == 'consume' else 'return'}"
        with self._tracer.start_as_current_span(
            name, kind=SpanKind.INTERNAL, record_exception=True, set_status_on_exception=False
        ) as span:
            span.set_attribute("messaging.consumer.group.name", ctx.group)
            span.set_attribute("messaging.message.id", ctx.message.id)
            span.set_attribute("messaging.message.type", ctx.message.message_type.value)
            try:
                return await call_next(ctx)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise


class MetricsMiddleware:
    """Counts and times handler runs, and counts the messages handlers returned.

    Series (in the container's registry, so ``/metrics`` shows them):
    ``message_bus_handler_total{handler,status}`` (``ok`` or the exception's class),
    ``message_bus_handler_duration_seconds{handler}`` and
    ``message_bus_handler_published_total{handler,message_type}``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._runs = Counter(
            "message_bus_handler_total",
            "Handler runs by handler and status (ok, or the exception's class).",
            ["handler", "status"],
            registry=registry,
        )
        self._duration = Histogram(
            "message_bus_handler_duration_seconds",
            "Seconds a handler ran on one delivery, with its middleware inside this one.",
            ["handler"],
            registry=registry,
        )
        self._published = Counter(
            "message_bus_handler_published_total",
            "Messages handlers returned and the bus published.",
            ["handler", "message_type"],
            registry=registry,
        )

    async def __call__(self, ctx: Context, call_next: Next) -> Any:
        if ctx.kind == "publish":
            result = await call_next(ctx)
            self._published.labels(ctx.handler, ctx.message.message_type.value).inc()
            return result
        started = time.perf_counter()
        status = "ok"
        try:
            return await call_next(ctx)
        except BaseException as exc:
            status = type(exc).__name__
            raise
        finally:
            self._duration.labels(ctx.handler).observe(time.perf_counter() - started)
            self._runs.labels(ctx.handler, status).inc()
