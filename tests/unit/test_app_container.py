"""The container: one line swaps the backend; ports come decorated with telemetry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from message_bus import (
    ClosedError,
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    SubscriberConfig,
)
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    Container,
    apply_streams,
    build_container,
    open_container,
    shutdown_container,
    start_container,
)
from message_bus.app.service import NettingWorker, PaymentIntake
from message_bus.testing.samples import sample_payload

NATS_SETTINGS = load_settings(environ={"DELTRAN_NATS_URLS": "nats://127.0.0.1:1"})


@pytest.fixture
async def container() -> AsyncIterator[Container]:
    container = build_container(NATS_SETTINGS)  # configured for a server that is not there
    container.backend.override("memory")  # the one line that swaps the backend
    await start_container(container)
    yield container
    await shutdown_container(container)


async def _receive_one(container: Container, message: Message) -> Message:
    received: asyncio.Queue[Message] = asyncio.Queue()

    async def keep(m: Message) -> None:
        received.put_nowait(m)

    subscriber = await container.subscriber(message.message_type)
    subscription = await subscriber.subscribe(FunctionHandler(keep))
    publisher = await container.publisher()
    await publisher.publish(message)
    got = await asyncio.wait_for(received.get(), 5)
    await subscription.stop()
    await publisher.close()
    await subscriber.close()
    return got


def _payment() -> Message:
    return Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor("USD-EUR"),
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id="p1"),
    )


async def test_overriding_the_backend_runs_everything_in_memory(container: Container) -> None:
    message = _payment()

    got = await _receive_one(container, message)

    assert got.id == message.id
    assert got.payload == sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id="p1")
    assert not container.nats_client.initialized
    assert not container.embedded_server.initialized


async def test_ports_are_measured_in_the_containers_registry(container: Container) -> None:
    await _receive_one(container, _payment())

    registry = container.registry()
    labels = {"message_type": "PaymentInstruction", "status": "success"}
    assert registry.get_sample_value("message_bus_publish_total", labels) == 1
    received = {"message_type": "PaymentInstruction", "status": "ack"}
    assert registry.get_sample_value("message_bus_receive_total", received) == 1


async def test_trace_context_travels_with_the_message(container: Container) -> None:
    got = await _receive_one(container, _payment())

    assert got.headers["traceparent"].startswith("00-")


async def test_an_injected_tracer_provider_sees_one_trace_per_message() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    container = build_container(NATS_SETTINGS)
    container.backend.override("memory")
    container.tracer_provider.override(provider)
    await start_container(container)
    try:
        await _receive_one(container, _payment())
    finally:
        await shutdown_container(container)

    spans = exporter.get_finished_spans()
    kinds = {span.kind for span in spans}
    assert kinds == {SpanKind.PRODUCER, SpanKind.CONSUMER}
    assert len({span.context.trace_id for span in spans}) == 1


async def test_a_sample_ratio_of_zero_records_no_span_but_still_carries_the_trace() -> None:
    settings = load_settings(
        environ={"DELTRAN_BACKEND": "memory", "DELTRAN_TRACING_SAMPLE_RATIO": "0"}
    )
    container = build_container(settings)
    exporter = InMemorySpanExporter()
    container.tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    await start_container(container)
    try:
        got = await _receive_one(container, _payment())
    finally:
        await shutdown_container(container)

    assert exporter.get_finished_spans() == ()
    assert got.headers["traceparent"].startswith("00-")


async def test_tracing_can_be_switched_off_by_configuration() -> None:
    settings = load_settings(environ={"DELTRAN_BACKEND": "memory", "DELTRAN_TRACING": "false"})
    container = build_container(settings)
    await start_container(container)
    try:
        got = await _receive_one(container, _payment())
    finally:
        await shutdown_container(container)

    assert "traceparent" not in got.headers


async def test_subscribers_default_to_the_configured_subscriber_settings() -> None:
    settings = load_settings(
        environ={"DELTRAN_BACKEND": "memory", "DELTRAN_CONSUMER_GROUP": "netting"}
    )
    container = build_container(settings)
    await start_container(container)
    try:
        default = await container.subscriber(MessageType.PAYMENT_INSTRUCTION)
        chosen = await container.subscriber(
            MessageType.PAYMENT_INSTRUCTION, SubscriberConfig(consumer_group="audit")
        )
    finally:
        await shutdown_container(container)

    assert default.config.consumer_group == "netting"
    assert chosen.config.consumer_group == "audit"


async def test_the_example_service_receives_ports_from_the_container(
    container: Container,
) -> None:
    intake = await container.payment_intake()
    worker = await container.netting_worker()

    assert isinstance(intake, PaymentIntake)
    assert isinstance(worker, NettingWorker)


async def test_shutdown_closes_the_broker_and_is_idempotent(container: Container) -> None:
    publisher = await container.publisher()

    await shutdown_container(container)
    await shutdown_container(container)

    with pytest.raises(ClosedError):
        await publisher.publish(_payment())


async def test_applying_streams_on_the_memory_backend_has_nothing_to_do(
    container: Container,
) -> None:
    assert await apply_streams(container) == []


async def test_an_unknown_backend_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="kafka"):
        async with open_container(NATS_SETTINGS, backend="kafka"):
            pass
