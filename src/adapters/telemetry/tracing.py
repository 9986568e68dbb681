"""OpenTelemetry spans around any port, with W3C trace context carried in headers.

Spans follow the OpenTelemetry messaging semantic conventions:

* ``publish``: a PRODUCER span ``publish {template}`` per message (``publish_many``
  too: one span per message, each ending with that message's own result, carrying
  ``messaging.batch.message_count``). Its context is written into the message's
  ``traceparent`` / ``tracestate`` headers.
* ``request``: a CLIENT span ``request {template}``, whose context travels the same way.
* handling a delivery: a CONSUMER span ``process {template}``, child of the context
  found in the message's headers, current while the handler runs, so everything the
  handler publishes joins the same trace: one payment's flow is one trace.

``{template}`` is the low-cardinality destination ``deltran.{type_subject}.{partition_key}``
(``messaging.destination.template``); the concrete subject is
``messaging.destination.name``. A failure records the exception, sets ``error.type``
and the ERROR status. Consumer spans also carry the delivery attempt and the outcome
the delivery is settled with (``deltran.delivery.outcome``), as ``run_handler``
reports it, and end once it is settled: a handler cut off at ``max_handler_time`` is a
failure (``error.type`` ``TimeoutError``, outcome ``nak`` or ``dead``), and so is an ACK
the broker did not confirm (``AckNotConfirmed``, outcome ``unconfirmed``). A handler
cancelled because its subscription stopped settles nothing: its span ends without an
outcome.

Propagation uses the W3C TraceContext propagator directly, not the globally
configured one, so the wire format does not depend on process-wide settings.

A span the sampler drops costs only its creation and the propagated context (which
still carries the trace, unsampled): samplers see the constant attributes of the
operation, and the per-message ones are set only on spans that are recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextvars import Token
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import PublishBatchError
from message_bus.domain.message import Message
from message_bus.ports import (
    Delivery,
    MessageHandler,
    Outcome,
    Publisher,
    PublishReceipt,
    Subscriber,
    SubscriberConfig,
    Subscription,
)
from message_bus.ports.outcome import handler_time_reason
from message_bus.ports.subscriber import check_handler

from .outcome import delivery_or_none, handler_outcome

# Attribute names of the messaging semantic conventions (opentelemetry.semconv
# messaging_attributes / error_attributes), spelled out: that module is incubating.
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_DESTINATION_TEMPLATE: Final = "messaging.destination.template"
MESSAGING_DESTINATION_PARTITION_ID: Final = "messaging.destination.partition.id"
MESSAGING_DESTINATION_SUBSCRIPTION_NAME: Final = "messaging.destination.subscription.name"
MESSAGING_CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_MESSAGE_CONVERSATION_ID: Final = "messaging.message.conversation_id"
MESSAGING_BATCH_MESSAGE_COUNT: Final = "messaging.batch.message_count"
ERROR_TYPE: Final = "error.type"

# The bus's own attributes.
DELTRAN_MESSAGE_TYPE: Final = "deltran.message.type"
DELTRAN_STREAM: Final = "deltran.stream.name"
DELTRAN_STREAM_SEQUENCE: Final = "deltran.stream.sequence"
DELTRAN_DUPLICATE: Final = "deltran.publish.duplicate"
DELTRAN_DELIVERY_ATTEMPT: Final = "deltran.delivery.attempt"
DELTRAN_DELIVERY_OUTCOME: Final = "deltran.delivery.outcome"

TRACER_NAME: Final = "message_bus"
DEFAULT_SYSTEM: Final = "nats"

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_TRACEPARENT: Final = "traceparent"
_NO_PARENT: Final = Context()

_Attributes = dict[str, AttributeValue]


def destination_template(message_type: MessageType) -> str:
    """The low-cardinality destination of ``message_type``'s subjects."""
    return f"{message_type.subject_prefix}.{{partition_key}}"


def _fail(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_attribute(ERROR_TYPE, type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))


def _ended(span: Span, token: Token[Context]) -> None:
    otel_context.detach(token)
    span.end()


def _accepted(span: Span, receipt: PublishReceipt) -> None:
    if not span.is_recording():
        return
    attributes: _Attributes = {DELTRAN_DUPLICATE: receipt.duplicate}
    if receipt.partition is not None:
        attributes[MESSAGING_DESTINATION_PARTITION_ID] = str(receipt.partition)
    if receipt.stream is not None:
        attributes[DELTRAN_STREAM] = receipt.stream
    if receipt.sequence is not None:
        attributes[DELTRAN_STREAM_SEQUENCE] = receipt.sequence
    span.set_attributes(attributes)


def _end(spans: list[Span]) -> None:
    for span in spans:
        span.end()


def _with_context(message: Message, context: Context | None = None) -> Message:
    """``message`` with the trace context (current, or ``context``) in its headers."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context)
    return message.with_headers(carrier) if carrier else message


def _tracer(tracer_provider: TracerProvider | None) -> Tracer:
    provider = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
    return provider.get_tracer(TRACER_NAME)


class _SendKind:
    """Span name and constant attributes of one operation on one message type."""

    __slots__ = ("attributes", "name")

    def __init__(self, operation: str, message_type: MessageType, system: str) -> None:
        template = destination_template(message_type)
        self.name = f"{operation} {template}"
        self.attributes: _Attributes = {
            MESSAGING_SYSTEM: system,
            MESSAGING_OPERATION_NAME: operation,
            MESSAGING_OPERATION_TYPE: "send",
            MESSAGING_DESTINATION_TEMPLATE: template,
            DELTRAN_MESSAGE_TYPE: message_type.value,
        }

    def start(self, tracer: Tracer, kind: SpanKind, message: Message) -> Span:
        """A span for ``message``, not yet current; per-message attributes if recorded."""
        span = tracer.start_span(self.name, kind=kind, attributes=self.attributes)
        if span.is_recording():
            attributes: _Attributes = {
                MESSAGING_DESTINATION_NAME: message.subject,
                MESSAGING_MESSAGE_ID: message.id,
            }
            if message.correlation_id is not None:
                attributes[MESSAGING_MESSAGE_CONVERSATION_ID] = message.correlation_id
            span.set_attributes(attributes)
        return span


class TracingPublisher(Publisher):
    """A :class:`Publisher` that traces every call and propagates the trace in headers.

    The message ``inner`` receives is a copy of the caller's with ``traceparent`` (and
    ``tracestate`` if any) headers set to the publish span; its id is unchanged, so
    deduplication is unaffected.

    Args:
        inner: the publisher to trace.
        tracer_provider: where spans go; None uses the global provider.
        system: the ``messaging.system`` attribute.
    """

    def __init__(
        self,
        inner: Publisher,
        tracer_provider: TracerProvider | None = None,
        *,
        system: str = DEFAULT_SYSTEM,
    ) -> None:
        self.inner = inner
        self._tracer = _tracer(tracer_provider)
        self._system = system
        self._publish: dict[MessageType, _SendKind] = {}
        self._request: dict[MessageType, _SendKind] = {}

    def _kind(
        self, cache: dict[MessageType, _SendKind], operation: str, message: Message
    ) -> _SendKind:
        kind = cache.get(message.message_type)
        if kind is None:
            kind = cache[message.message_type] = _SendKind(
                operation, message.message_type, self._system
            )
        return kind

    async def publish(self, message: Message) -> PublishReceipt:
        span = self._kind(self._publish, "publish", message).start(
            self._tracer, SpanKind.PRODUCER, message
        )
        context = trace.set_span_in_context(span)
        token = otel_context.attach(context)
        try:
            receipt = await self.inner.publish(_with_context(message, context))
        except Exception as exc:
            _fail(span, exc)
            raise
        else:
            _accepted(span, receipt)
            return receipt
        finally:
            _ended(span, token)

    async def publish_many(self, messages: Sequence[Message]) -> list[PublishReceipt]:
        count = len(messages)
        spans: list[Span] = []
        try:
            carried: list[Message] = []
            for message in messages:
                kind = self._kind(self._publish, "publish", message)
                span = kind.start(self._tracer, SpanKind.PRODUCER, message)
                if span.is_recording():
                    span.set_attribute(MESSAGING_BATCH_MESSAGE_COUNT, count)
                spans.append(span)
                carried.append(_with_context(message, trace.set_span_in_context(span)))
            receipts = await self.inner.publish_many(carried)
        except PublishBatchError as exc:
            for span, result in zip(spans, exc.results, strict=False):
                if isinstance(result, PublishReceipt):
                    _accepted(span, result)
                else:
                    _fail(span, result)
            _end(spans)
            raise
        except BaseException as exc:
            if isinstance(exc, Exception):
                for span in spans:
                    _fail(span, exc)
            _end(spans)
            raise
        for span, receipt in zip(spans, receipts, strict=False):
            _accepted(span, receipt)
        _end(spans)
        return receipts

    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        span = self._kind(self._request, "request", message).start(
            self._tracer, SpanKind.CLIENT, message
        )
        context = trace.set_span_in_context(span)
        token = otel_context.attach(context)
        try:
            return await self.inner.request(_with_context(message, context), timeout)
        except Exception as exc:
            _fail(span, exc)
            raise
        finally:
            _ended(span, token)

    async def close(self) -> None:
        await self.inner.close()


class _TracedHandler:
    """Runs a handler inside a CONSUMER span that continues the message's trace."""

    __slots__ = ("_attributes", "_config", "_handler", "_name", "_tracer")

    def __init__(
        self,
        handler: MessageHandler,
        tracer: Tracer,
        name: str,
        attributes: _Attributes,
        config: SubscriberConfig,
    ) -> None:
        self._handler = handler
        self._tracer = tracer
        self._name = name
        self._attributes = attributes
        self._config = config

    async def handle(self, message: Message) -> Message | None:
        # Only the message's own headers choose the parent, never an ambient context
        # (without a traceparent the propagator finds nothing either).
        headers = message.headers
        parent = _PROPAGATOR.extract(headers, _NO_PARENT) if _TRACEPARENT in headers else None
        delivery = delivery_or_none()
        span = self._tracer.start_span(
            self._name,
            context=_NO_PARENT if parent is None else parent,
            kind=SpanKind.CONSUMER,
            attributes=self._attributes,
        )
        recording = span.is_recording()
        if recording:
            span.set_attributes(_delivery_attributes(message, delivery))
        run = _Run(span, self._config.max_handler_time)
        if delivery is not None:
            # The span ends once run_handler reports the outcome it settled with: after
            # a cut-off at max_handler_time, or the broker's answer to a confirmed ACK.
            delivery.on_outcome(run.settled)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            reply = await self._handler.handle(message)
        except Exception as exc:
            run.failed(exc)
            if delivery is None:
                run.settled(handler_outcome(None, self._config, exc))
            raise
        except BaseException as exc:  # cancelled: a cut-off, a stop, or a stray one
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                run.cancelled = True
            else:
                # Raised while nothing cancelled this task: a failure, which the
                # adapter settles after run_handler reported nothing (None).
                run.stray = handler_outcome(delivery, self._config, exc)
                run.failed(exc)
            if delivery is None:
                run.settled(None)
            raise
        else:
            if delivery is None:
                run.settled(handler_outcome(None, self._config, None))
            return reply
        finally:
            otel_context.detach(token)


class _Run:
    """The CONSUMER span of one handler run, ended with the outcome of its delivery."""

    __slots__ = ("cancelled", "ended", "error", "max_handler_time", "span", "stray")

    def __init__(self, span: Span, max_handler_time: float) -> None:
        self.span = span
        self.max_handler_time = max_handler_time
        self.error = False
        self.cancelled = False
        self.stray: Outcome | None = None
        """The outcome the policy gives a stray ``CancelledError`` the handler raised."""
        self.ended = False

    def failed(self, error: BaseException) -> None:
        self.error = True
        if self.span.is_recording():
            _fail(self.span, error)

    def settled(self, outcome: Outcome | None) -> None:
        if self.ended:
            return
        self.ended = True
        if outcome is None:
            outcome = self.stray  # run_handler let it through; the adapter settles it
        span = self.span
        if outcome is not None and span.is_recording():
            span.set_attribute(DELTRAN_DELIVERY_OUTCOME, outcome)
            if outcome is Outcome.UNCONFIRMED:
                _failed_as(span, "AckNotConfirmed", "the broker did not confirm the ACK")
            elif self.cancelled and outcome in _FAILURES and not self.error:
                _failed_as(span, "TimeoutError", handler_time_reason(self.max_handler_time))
        span.end()


_FAILURES: Final = frozenset({Outcome.NAK, Outcome.TERM, Outcome.DEAD})


def _failed_as(span: Span, error_type: str, description: str) -> None:
    span.add_event("exception", {"exception.type": error_type, "exception.message": description})
    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, description))


def _delivery_attributes(message: Message, delivery: Delivery | None) -> _Attributes:
    attributes: _Attributes = {MESSAGING_MESSAGE_ID: message.id}
    if message.correlation_id is not None:
        attributes[MESSAGING_MESSAGE_CONVERSATION_ID] = message.correlation_id
    if message.partition is not None:
        attributes[MESSAGING_DESTINATION_PARTITION_ID] = str(message.partition)
    if delivery is None:
        attributes[MESSAGING_DESTINATION_NAME] = message.subject
    else:
        attributes[MESSAGING_DESTINATION_NAME] = delivery.subject
        attributes[DELTRAN_DELIVERY_ATTEMPT] = delivery.attempt
        if delivery.stream is not None:
            attributes[DELTRAN_STREAM] = delivery.stream
        if delivery.sequence is not None:
            attributes[DELTRAN_STREAM_SEQUENCE] = delivery.sequence
    return attributes


class TracingSubscriber(Subscriber):
    """A :class:`Subscriber` whose handlers run in CONSUMER spans continuing the trace
    carried by each message's ``traceparent`` header (a new trace if it has none).

    Args:
        inner: the subscriber to trace.
        tracer_provider: where spans go; None uses the global provider.
        system: the ``messaging.system`` attribute.
    """

    def __init__(
        self,
        inner: Subscriber,
        tracer_provider: TracerProvider | None = None,
        *,
        system: str = DEFAULT_SYSTEM,
    ) -> None:
        self.inner = inner
        self.message_type = inner.message_type
        self.config = inner.config
        self._tracer = _tracer(tracer_provider)
        template = destination_template(self.message_type)
        self._name = f"process {template}"
        self._attributes: _Attributes = {
            MESSAGING_SYSTEM: system,
            MESSAGING_OPERATION_NAME: "process",
            MESSAGING_OPERATION_TYPE: "process",
            MESSAGING_DESTINATION_TEMPLATE: template,
            MESSAGING_CONSUMER_GROUP_NAME: self.config.consumer_group,
            MESSAGING_DESTINATION_SUBSCRIPTION_NAME: self.config.consumer_name,
            DELTRAN_MESSAGE_TYPE: self.message_type.value,
        }

    async def subscribe(self, handler: MessageHandler) -> Subscription:
        check_handler(handler)  # before wrapping it: the wrapper would pass the check
        traced = _TracedHandler(handler, self._tracer, self._name, self._attributes, self.config)
        return await self.inner.subscribe(traced)

    async def close(self) -> None:
        await self.inner.close()
