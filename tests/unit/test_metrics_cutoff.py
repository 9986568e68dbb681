"""Telemetry reports what ``run_handler`` settled a delivery with, a handler cut off at
``max_handler_time`` and a stray ``CancelledError`` included; a stopped handler is not
counted, and its span still ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from fakes import DeliveringSubscriber
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.adapters.memory import InMemoryBroker, ManualClock
from message_bus.adapters.telemetry import MetricsSubscriber, TracingSubscriber
from message_bus.adapters.telemetry import tracing as attrs
from message_bus.ports import Subscriber
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
LIMIT = 2.0


def payment(kind: str) -> Message:
    payload = sample_payload(PAYMENT, payment_id=f"pay-{kind}", kind=kind)
    return Message.new(PAYMENT, PartitionKey.corridor("USD-EUR"), payload)


async def until(predicate: object, what: str, timeout: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


class Bus:
    """An in-memory broker on a manual clock, its subscriber measured and traced."""

    def __init__(self, provider: TracerProvider, max_deliver: int) -> None:
        self.clock = ManualClock()
        self.broker = InMemoryBroker(clock=self.clock)
        self.registry = CollectorRegistry()
        self.release = asyncio.Event()
        self.runs: list[str] = []
        config = SubscriberConfig(
            consumer_group="g",
            max_handler_time=LIMIT,
            max_deliver=max_deliver,
            nak_initial_delay=60.0,
            ack_wait=30.0,
        )
        inner: Subscriber = self.broker.subscriber(PAYMENT, config)
        self.subscriber = MetricsSubscriber(TracingSubscriber(inner, provider), self.registry)

    async def handle(self, message: Message) -> None:
        kind = message.payload["kind"]
        self.runs.append(kind)
        if kind == "hang":
            await self.release.wait()
        elif kind == "stray":
            cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled

    def received(self, status: str) -> float:
        value = self.registry.get_sample_value(
            "message_bus_receive_total", {"message_type": PAYMENT.value, "status": status}
        )
        return value or 0.0

    def dead_letters(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "message_bus_dead_letters_total", {"message_type": PAYMENT.value, "reason": reason}
        )
        return value or 0.0

    def processed(self) -> float:
        value = self.registry.get_sample_value(
            "message_bus_process_duration_seconds_count", {"message_type": PAYMENT.value}
        )
        return value or 0.0


@pytest.fixture
async def bus(provider: TracerProvider) -> AsyncIterator[Bus]:
    bus = Bus(provider, max_deliver=2)
    yield bus
    bus.release.set()
    await bus.broker.close()


def consumer_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name.startswith("process")]


async def cut_off(bus: Bus) -> None:
    """Let the clock pass max_handler_time; the broker cuts the handler off."""
    bus.clock.advance(LIMIT + 0.5)
    await bus.broker.settle()


async def test_a_handler_cut_off_at_max_handler_time_is_counted_as_nak_then_dead(
    bus: Bus, exporter: InMemorySpanExporter
) -> None:
    subscription = await bus.subscriber.subscribe(FunctionHandler(bus.handle))
    await bus.broker.publisher().publish(payment("hang"))
    await until(lambda: bus.runs == ["hang"], "the first delivery")

    await cut_off(bus)
    await until(lambda: bus.received("nak") == 1, "the cut-off counted as nak")
    (first,) = consumer_spans(exporter)
    assert first.attributes is not None
    assert first.attributes[attrs.DELTRAN_DELIVERY_OUTCOME] == "nak"
    assert first.attributes[attrs.ERROR_TYPE] == "TimeoutError"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == f"handler ran past max_handler_time ({LIMIT:g} s)"

    bus.clock.advance(61.0)  # the NAK's delay
    await bus.broker.settle()
    await until(lambda: bus.runs == ["hang", "hang"], "the last delivery")
    await cut_off(bus)
    await until(lambda: bus.received("dead") == 1, "the last cut-off counted as dead")
    assert bus.dead_letters("max_deliver") == 1
    assert len(await bus.broker.dead_letters().list()) == 1
    assert bus.processed() == 2
    last = consumer_spans(exporter)[-1]
    assert last.attributes is not None
    assert last.attributes[attrs.DELTRAN_DELIVERY_OUTCOME] == "dead"
    assert last.status.status_code is StatusCode.ERROR
    await subscription.stop()


async def test_a_stray_cancelled_error_is_counted_and_traced_once_as_a_failure(
    bus: Bus, exporter: InMemorySpanExporter
) -> None:
    subscription = await bus.subscriber.subscribe(FunctionHandler(bus.handle))
    await bus.broker.publisher().publish(payment("stray"))

    await until(lambda: bus.received("nak") == 1, "the stray cancel counted as nak")
    (span,) = consumer_spans(exporter)
    assert span.attributes is not None
    assert span.attributes[attrs.DELTRAN_DELIVERY_OUTCOME] == "nak"
    assert span.attributes[attrs.ERROR_TYPE] == "CancelledError"
    assert span.status.status_code is StatusCode.ERROR
    await subscription.stop()


async def test_a_handler_whose_task_is_cancelled_is_not_counted_and_its_span_ends(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = CollectorRegistry()
    inner = DeliveringSubscriber(SubscriberConfig(consumer_group="g", max_deliver=1))
    started = asyncio.Event()

    async def hang(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    await MetricsSubscriber(TracingSubscriber(inner, provider), registry).subscribe(
        FunctionHandler(hang)
    )
    running = asyncio.create_task(inner.deliver(payment("hang")))
    await asyncio.wait_for(started.wait(), 10.0)
    running.cancel()  # as a stopping subscription cancels its workers
    with pytest.raises(asyncio.CancelledError):
        await running

    (span,) = consumer_spans(exporter)
    assert span.attributes is not None
    assert attrs.DELTRAN_DELIVERY_OUTCOME not in span.attributes
    counted = [
        sample
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "message_bus_receive_total" and sample.value
    ]
    assert counted == [], "a delivery nobody settled was counted"


async def test_an_acked_delivery_is_counted_once_with_its_duration(
    bus: Bus, exporter: InMemorySpanExporter
) -> None:
    subscription = await bus.subscriber.subscribe(FunctionHandler(bus.handle))
    await bus.broker.publisher().publish(payment("fine"))

    await until(lambda: bus.received("ack") == 1, "the ack")
    assert bus.processed() == 1
    (span,) = consumer_spans(exporter)
    assert span.attributes is not None
    assert span.attributes[attrs.DELTRAN_DELIVERY_OUTCOME] == "ack"
    assert span.status.status_code is StatusCode.UNSET
    await subscription.stop()


async def test_a_stray_cancel_ends_its_span_even_if_the_adapter_settles_nothing(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inner = DeliveringSubscriber(SubscriberConfig(consumer_group="g", max_deliver=3))

    async def stray(message: Message) -> None:
        cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        cancelled.cancel()
        await cancelled

    await TracingSubscriber(inner, provider).subscribe(FunctionHandler(stray))
    with pytest.raises(asyncio.CancelledError):
        await inner.deliver(payment("stray"))  # this fake lets it through, unsettled

    (span,) = consumer_spans(exporter)
    assert span.attributes is not None
    assert span.attributes[attrs.DELTRAN_DELIVERY_OUTCOME] == "nak"
    assert span.attributes[attrs.ERROR_TYPE] == "CancelledError"
