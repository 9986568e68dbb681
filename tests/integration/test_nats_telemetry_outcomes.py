"""Metrics and spans on real nats-server processes report what a delivery was settled
with: a handler cut off at ``max_handler_time``, and an ACK the server refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from servers import acks_denied_config, connect
from waits import eventually

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.adapters.nats import (
    JetStreamDeadLetters,
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    StreamManager,
)
from message_bus.adapters.telemetry import MetricsSubscriber, TracingSubscriber
from message_bus.adapters.telemetry import tracing as attrs
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
KEY = PartitionKey.corridor("USD-EUR")
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}


def payment() -> Message:
    return Message.new(
        PAYMENT,
        KEY,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id="pay_0", amount="10.00"),
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


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    await StreamManager(client).apply()
    yield client
    await client.close()


def consumer_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name.startswith("process")]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"message_type": PAYMENT.value, **labels})
    return value or 0.0


async def test_a_hung_last_delivery_cut_off_is_counted_dead_and_its_span_fails(
    client: NatsClient, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = CollectorRegistry()
    config = SubscriberConfig(consumer_group="cut", max_deliver=1, max_handler_time=0.5)
    inner = JetStreamSubscriber(client, PAYMENT, config, **FAST)  # type: ignore[arg-type]
    subscriber = MetricsSubscriber(TracingSubscriber(inner, provider), registry)
    release = asyncio.Event()

    async def hang(message: Message) -> None:
        await release.wait()

    subscription = await subscriber.subscribe(FunctionHandler(hang))
    try:
        await JetStreamPublisher(client).publish(payment())
        total = "message_bus_receive_total"
        await eventually(lambda: sample(registry, total, status="dead") == 1, "a dead count", 20.0)
        reason = {"reason": "max_deliver"}
        assert sample(registry, "message_bus_dead_letters_total", **reason) == 1
        assert len(await JetStreamDeadLetters(client).list()) == 1
        (span,) = consumer_spans(exporter)
        assert span.attributes is not None
        assert span.attributes[attrs.DELTRAN_DELIVERY_OUTCOME] == "dead"
        assert span.attributes[attrs.ERROR_TYPE] == "TimeoutError"
        assert span.status.status_code is StatusCode.ERROR
    finally:
        release.set()
        await subscription.stop()
        await subscriber.close()


async def test_an_ack_the_server_did_not_confirm_ends_the_span_as_unconfirmed(
    nats_server_factory: Callable[..., EmbeddedNatsServer],
    tmp_path: Path,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    server = nats_server_factory(config_file=acks_denied_config(tmp_path))
    admin = await connect(server.url, user="admin", password="secret")
    worker = await connect(server.url, user="worker", password="secret")
    registry = CollectorRegistry()

    async def handle(message: Message) -> None:
        return None

    try:
        await StreamManager(admin).apply()
        config = SubscriberConfig(consumer_group="confirming", confirm_acks=True, max_deliver=2)
        inner = JetStreamSubscriber(worker, PAYMENT, config, **FAST)  # type: ignore[arg-type]
        subscriber = MetricsSubscriber(TracingSubscriber(inner, provider), registry)
        subscription = await subscriber.subscribe(FunctionHandler(handle))
        await JetStreamPublisher(admin).publish(payment())
        await eventually(lambda: consumer_spans(exporter) != [], "the consumer span to end", 20.0)

        (span,) = consumer_spans(exporter)
        assert span.attributes is not None
        assert span.attributes[attrs.DELTRAN_DELIVERY_OUTCOME] == "unconfirmed"
        assert span.attributes[attrs.ERROR_TYPE] == "AckNotConfirmed"
        assert span.status.status_code is StatusCode.ERROR
        assert sample(registry, "message_bus_receive_total", status="unconfirmed") == 1
        assert sample(registry, "message_bus_receive_total", status="ack") == 0
        await eventually(lambda: not subscription.active, "the subscription to fail", 10.0)
    finally:
        await worker.close()
        await admin.close()
