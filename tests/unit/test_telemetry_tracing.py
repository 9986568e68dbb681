"""OpenTelemetry spans around any publisher and subscriber, with the trace carried in headers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fakes import STREAM, DeliveringSubscriber, RecordingPublisher
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.semconv._incubating.attributes import messaging_attributes as semconv
from opentelemetry.trace import SpanKind, StatusCode

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    PermanentError,
    PublishBatchError,
    PublishError,
    PublishFailure,
    PublishTimeout,
    RetryableError,
    SubscriberConfig,
)
from message_bus.adapters.memory import InMemoryBroker
from message_bus.adapters.telemetry import TracingPublisher, TracingSubscriber
from message_bus.adapters.telemetry import tracing as attrs
from message_bus.ports import (
    FunctionHandler,
    MessageHandler,
)
from message_bus.testing.samples import sample_payload

TEMPLATE = "deltran.payment.instruction.{partition_key}"


def payment(corridor: str = "USD-EUR", **kwargs: str) -> Message:
    return Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor(corridor),
        sample_payload(MessageType.PAYMENT_INSTRUCTION, corridor=corridor, currency=corridor[:3]),
        correlation_id=kwargs.get("correlation_id"),
        headers={k: v for k, v in kwargs.items() if k != "correlation_id"} or None,
    )


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def only(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> ReadableSpan:
    matching = [span for span in spans if span.kind is kind]
    assert len(matching) == 1, matching
    return matching[0]


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def subscribed(
    provider: TracerProvider, handler: MessageHandler, config: SubscriberConfig | None = None
) -> DeliveringSubscriber:
    inner = DeliveringSubscriber(config)
    await TracingSubscriber(inner, provider).subscribe(handler)
    return inner


async def accept(message: Message) -> None:
    return None


def test_attribute_names_are_those_of_the_messaging_semantic_conventions() -> None:
    assert attrs.MESSAGING_SYSTEM == semconv.MESSAGING_SYSTEM
    assert attrs.MESSAGING_OPERATION_NAME == semconv.MESSAGING_OPERATION_NAME
    assert attrs.MESSAGING_OPERATION_TYPE == semconv.MESSAGING_OPERATION_TYPE
    assert attrs.MESSAGING_DESTINATION_NAME == semconv.MESSAGING_DESTINATION_NAME
    assert attrs.MESSAGING_DESTINATION_TEMPLATE == semconv.MESSAGING_DESTINATION_TEMPLATE
    assert attrs.MESSAGING_DESTINATION_PARTITION_ID == semconv.MESSAGING_DESTINATION_PARTITION_ID
    assert (
        attrs.MESSAGING_DESTINATION_SUBSCRIPTION_NAME
        == semconv.MESSAGING_DESTINATION_SUBSCRIPTION_NAME
    )
    assert attrs.MESSAGING_CONSUMER_GROUP_NAME == semconv.MESSAGING_CONSUMER_GROUP_NAME
    assert attrs.MESSAGING_MESSAGE_ID == semconv.MESSAGING_MESSAGE_ID
    assert attrs.MESSAGING_MESSAGE_CONVERSATION_ID == semconv.MESSAGING_MESSAGE_CONVERSATION_ID
    assert attrs.MESSAGING_BATCH_MESSAGE_COUNT == semconv.MESSAGING_BATCH_MESSAGE_COUNT
    assert semconv.MessagingOperationTypeValues.SEND.value == "send"
    assert semconv.MessagingOperationTypeValues.PROCESS.value == "process"


async def test_a_publish_is_a_producer_span_with_the_messaging_attributes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    message = payment(correlation_id="payment-42")

    receipt = await TracingPublisher(RecordingPublisher(), provider).publish(message)

    span = only(exporter.get_finished_spans(), SpanKind.PRODUCER)
    assert span.name == f"publish {TEMPLATE}"
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "messaging.system": "nats",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.template": TEMPLATE,
        "messaging.destination.name": "deltran.payment.instruction.corridor.USD-EUR",
        "messaging.destination.partition.id": str(receipt.partition),
        "messaging.message.id": message.id,
        "messaging.message.conversation_id": "payment-42",
        "deltran.message.type": "PaymentInstruction",
        "deltran.stream.name": STREAM,
        "deltran.stream.sequence": 1,
        "deltran.publish.duplicate": False,
    }


async def test_the_published_message_carries_the_publish_span_as_traceparent(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inner = RecordingPublisher()
    message = payment(**{"x-bank-ref": "ref-1"})

    await TracingPublisher(inner, provider).publish(message)

    (sent,) = inner.published
    span = only(exporter.get_finished_spans(), SpanKind.PRODUCER)
    assert sent.headers["traceparent"] == traceparent_of(span)
    assert sent.headers["x-bank-ref"] == "ref-1"
    assert sent.id == message.id
    assert sent.payload == message.payload
    assert "traceparent" not in message.headers


async def test_an_unsampled_publish_still_carries_its_trace_and_the_handler_continues_it(
    exporter: InMemorySpanExporter,
) -> None:
    dropping = TracerProvider(sampler=ALWAYS_OFF)
    dropping.add_span_processor(SimpleSpanProcessor(exporter))
    inner = RecordingPublisher()
    seen: list[trace.SpanContext] = []

    async def record_context(message: Message) -> None:
        seen.append(trace.get_current_span().get_span_context())

    await TracingPublisher(inner, dropping).publish(payment())
    subscriber = await subscribed(dropping, FunctionHandler(record_context))
    outcome = await subscriber.deliver(inner.published[0])

    version, trace_id, _span_id, flags = inner.published[0].headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1 == 0  # the trace travels, marked not sampled
    assert outcome == "ack"
    assert f"{seen[0].trace_id:032x}" == trace_id
    assert exporter.get_finished_spans() == ()
    dropping.shutdown()


async def test_a_publish_inside_a_span_continues_its_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with provider.get_tracer("test").start_as_current_span("accept payment") as outer:
        await TracingPublisher(RecordingPublisher(), provider).publish(payment())

    span = only(exporter.get_finished_spans(), SpanKind.PRODUCER)
    assert span.parent is not None
    assert span.parent.span_id == outer.get_span_context().span_id
    assert span.context is not None
    assert span.context.trace_id == outer.get_span_context().trace_id


async def test_a_failed_publish_records_the_error_on_its_span_and_reaches_the_caller(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inner = RecordingPublisher()
    message = payment()
    inner.failures[message.id] = PublishTimeout(message.id, message.subject)

    with pytest.raises(PublishTimeout):
        await TracingPublisher(inner, provider).publish(message)

    span = only(exporter.get_finished_spans(), SpanKind.PRODUCER)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "PublishTimeout"
    assert [event.name for event in span.events] == ["exception"]


async def test_each_message_of_a_batch_gets_its_own_span_and_its_own_result(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inner = RecordingPublisher()
    ok, refused = payment(), payment("GBP-USD")
    inner.failures[refused.id] = PublishError(
        refused.id, refused.subject, PublishFailure.REJECTED, retryable=False
    )

    with pytest.raises(PublishBatchError):
        await TracingPublisher(inner, provider).publish_many([ok, refused])

    spans = {
        (span.attributes or {})["messaging.message.id"]: span
        for span in exporter.get_finished_spans()
    }
    assert set(spans) == {ok.id, refused.id}
    assert spans[ok.id].status.status_code is StatusCode.UNSET
    assert spans[refused.id].status.status_code is StatusCode.ERROR
    assert all(s.kind is SpanKind.PRODUCER for s in spans.values())
    assert all((s.attributes or {})["messaging.batch.message_count"] == 2 for s in spans.values())
    (sent,) = inner.published
    assert sent.headers["traceparent"] == traceparent_of(spans[ok.id])


async def test_a_published_batch_returns_the_receipts_in_order(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    messages = [payment(), payment("GBP-USD"), payment("EUR-JPY")]

    receipts = await TracingPublisher(RecordingPublisher(), provider).publish_many(messages)

    assert [r.message_id for r in receipts] == [m.id for m in messages]
    assert len(exporter.get_finished_spans()) == 3


async def test_a_request_is_a_client_span_whose_context_travels_with_the_request(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inner = RecordingPublisher()
    request = Message.new(
        MessageType.RISK_ASSESSMENT, PartitionKey.corridor("USD-EUR"), {"amount": "1"}
    )

    reply = await TracingPublisher(inner, provider).request(request)

    span = only(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert span.name == "request deltran.risk.assessment.{partition_key}"
    assert inner.requests[0].headers["traceparent"] == traceparent_of(span)
    assert reply.causation_id == request.id


async def test_processing_is_a_consumer_span_child_of_the_publish_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broker = RecordingPublisher()
    await TracingPublisher(broker, provider).publish(payment(correlation_id="payment-42"))
    config = SubscriberConfig(consumer_group="settlement")
    subscriber = await subscribed(provider, FunctionHandler(accept), config)

    outcome = await subscriber.deliver(broker.published[0], attempt=2)

    spans = exporter.get_finished_spans()
    producer, consumer = only(spans, SpanKind.PRODUCER), only(spans, SpanKind.CONSUMER)
    assert outcome == "ack"
    assert consumer.name == f"process {TEMPLATE}"
    assert consumer.parent is not None
    assert producer.context is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.context is not None
    assert consumer.context.trace_id == producer.context.trace_id
    attributes = dict(consumer.attributes or {})
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.consumer.group.name"] == "settlement"
    assert attributes["messaging.destination.subscription.name"] == config.consumer_name
    assert attributes["messaging.message.conversation_id"] == "payment-42"
    assert attributes["deltran.delivery.attempt"] == 2
    assert attributes["deltran.stream.sequence"] == 7
    assert attributes["deltran.delivery.outcome"] == "ack"


async def test_what_a_handler_publishes_joins_the_trace_of_the_message_it_handles(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broker = RecordingPublisher()
    publisher = TracingPublisher(broker, provider)
    await publisher.publish(payment())

    async def confirm(message: Message) -> None:
        await publisher.publish(message.reply(MessageType.BANK_CONFIRMATION, {"ok": True}))

    subscriber = await subscribed(provider, FunctionHandler(confirm))
    await subscriber.deliver(broker.published[0])

    spans = exporter.get_finished_spans()
    consumer = only(spans, SpanKind.CONSUMER)
    payment_span, confirmation_span = (s for s in spans if s.kind is SpanKind.PRODUCER)
    assert consumer.parent is not None
    assert payment_span.context is not None
    assert consumer.parent.span_id == payment_span.context.span_id
    assert confirmation_span.parent is not None
    assert consumer.context is not None
    assert confirmation_span.parent.span_id == consumer.context.span_id
    assert len({s.context.trace_id for s in spans if s.context is not None}) == 1


async def test_a_message_without_trace_context_starts_a_new_trace_whatever_span_is_current(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    subscriber = await subscribed(provider, FunctionHandler(accept))

    with provider.get_tracer("test").start_as_current_span("consume loop"):
        await subscriber.deliver(payment())

    consumer = only(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert consumer.parent is None


@pytest.mark.parametrize(
    ("error", "attempt", "outcome"),
    [
        (RetryableError("bank offline"), 1, "nak"),
        (RuntimeError("bug"), 3, "dead"),
        (PermanentError("unknown account"), 1, "term"),
    ],
)
async def test_a_failing_handler_marks_its_span_as_an_error_with_the_outcome(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    error: Exception,
    attempt: int,
    outcome: str,
) -> None:
    async def fail(message: Message) -> None:
        raise error

    subscriber = await subscribed(provider, FunctionHandler(fail), SubscriberConfig(max_deliver=3))

    assert await subscriber.deliver(payment(), attempt=attempt) == outcome

    consumer = only(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert consumer.status.status_code is StatusCode.ERROR
    assert (consumer.attributes or {})["deltran.delivery.outcome"] == outcome
    assert (consumer.attributes or {})["error.type"] == type(error).__qualname__
    assert [event.name for event in consumer.events] == ["exception"]


async def test_the_tracing_subscriber_keeps_the_inner_subscriber_settings(
    provider: TracerProvider,
) -> None:
    config = SubscriberConfig(consumer_group="netting")
    inner = DeliveringSubscriber(config)

    subscriber = TracingSubscriber(inner, provider)

    assert subscriber.message_type is MessageType.PAYMENT_INSTRUCTION
    assert subscriber.config is config


async def test_a_payment_through_the_memory_broker_is_one_trace_from_publish_to_process(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with InMemoryBroker() as broker:
        publisher = TracingPublisher(broker.publisher(), provider)
        subscriber = TracingSubscriber(broker.subscriber(MessageType.PAYMENT_INSTRUCTION), provider)
        handled: list[Message] = []

        async def handle(message: Message) -> None:
            handled.append(message)

        subscription = await subscriber.subscribe(FunctionHandler(handle))
        receipt = await publisher.publish(payment(correlation_id="payment-42"))
        await asyncio.wait_for(broker.settle(), 5)
        await subscription.stop()

    assert [m.id for m in handled] == [receipt.message_id]
    spans = exporter.get_finished_spans()
    producer, consumer = only(spans, SpanKind.PRODUCER), only(spans, SpanKind.CONSUMER)
    assert producer.context is not None
    assert consumer.context is not None
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.context.trace_id == producer.context.trace_id
    assert (consumer.attributes or {})["deltran.delivery.outcome"] == "ack"
    assert (consumer.attributes or {})["deltran.stream.name"] == STREAM
