"""Prometheus metrics around any publisher and subscriber: names, labels and what is counted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from fakes import STREAM, DeliveringSubscriber, RecordingPublisher
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from message_bus import (
    CircuitOpenError,
    ClosedError,
    Message,
    MessageType,
    NoRespondersError,
    PartitionKey,
    PermanentError,
    PublishBatchError,
    PublishError,
    PublishFailure,
    PublishTimeout,
    RequestTimeout,
    RetryableError,
    SubscriberConfig,
    ValidationError,
)
from message_bus.adapters.memory import InMemoryBroker
from message_bus.adapters.telemetry import BusMetrics, MetricsPublisher, MetricsSubscriber
from message_bus.ports import (
    FunctionHandler,
    current_delivery,
)
from message_bus.testing.samples import sample_payload

PAYMENT = "PaymentInstruction"


def payment(corridor: str = "USD-EUR") -> Message:
    return Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor(corridor),
        sample_payload(MessageType.PAYMENT_INSTRUCTION, corridor=corridor, currency=corridor[:3]),
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


async def subscribed(
    registry: CollectorRegistry,
    handle: Callable[[Message], Awaitable[Message | None]],
    config: SubscriberConfig | None = None,
) -> DeliveringSubscriber:
    inner = DeliveringSubscriber(config)
    await MetricsSubscriber(inner, registry).subscribe(FunctionHandler(handle))
    return inner


async def test_the_exposition_has_exactly_the_bus_metric_names_and_labels(
    registry: CollectorRegistry,
) -> None:
    publisher = MetricsPublisher(RecordingPublisher(), registry)
    await publisher.publish(payment())
    await publisher.request(payment())

    async def fail(message: Message) -> None:
        raise PermanentError("bad")

    subscriber = await subscribed(registry, fail)
    await subscriber.deliver(payment(), attempt=2)
    metrics = BusMetrics.for_registry(registry)
    metrics.set_connection_status("connected")
    metrics.record_retry(MessageType.PAYMENT_INSTRUCTION)

    text = generate_latest(registry).decode()
    labels_by_sample = {
        sample.name: set(sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert {
        "message_bus_publish_total": {"message_type", "status"},
        "message_bus_publish_duration_seconds_count": {"message_type"},
        "message_bus_receive_total": {"message_type", "status"},
        "message_bus_process_duration_seconds_count": {"message_type"},
        "nats_connection_status": {"status"},
        "message_bus_publish_retries_total": {"message_type"},
        "message_bus_redeliveries_total": {"message_type"},
        "message_bus_dead_letters_total": {"message_type", "reason"},
        "message_bus_in_flight": {"message_type"},
        "message_bus_request_total": {"message_type", "status"},
        "message_bus_request_duration_seconds_count": {"message_type"},
    }.items() <= labels_by_sample.items()
    assert (
        'message_bus_publish_total{message_type="PaymentInstruction",status="success"} 1.0' in text
    )
    assert "_total_total" not in text


async def test_a_publish_is_counted_as_success_and_its_duration_observed(
    registry: CollectorRegistry,
) -> None:
    publisher = MetricsPublisher(RecordingPublisher(), registry)

    await publisher.publish(payment())
    await publisher.publish(payment("GBP-USD"))

    assert value(registry, "message_bus_publish_total", message_type=PAYMENT, status="success") == 2
    assert value(registry, "message_bus_publish_duration_seconds_count", message_type=PAYMENT) == 2


async def test_every_publish_status_of_a_type_is_exposed_from_its_first_publish(
    registry: CollectorRegistry,
) -> None:
    await MetricsPublisher(RecordingPublisher(), registry).publish(payment())

    for status in ("duplicate", "error", "timeout", "rejected"):
        sample = registry.get_sample_value(
            "message_bus_publish_total", {"message_type": PAYMENT, "status": status}
        )
        assert sample == 0.0


async def test_a_duplicate_receipt_is_counted_as_duplicate(registry: CollectorRegistry) -> None:
    publisher = MetricsPublisher(RecordingPublisher(duplicate=True), registry)

    await publisher.publish(payment())

    assert (
        value(registry, "message_bus_publish_total", message_type=PAYMENT, status="duplicate") == 1
    )
    assert value(registry, "message_bus_publish_total", message_type=PAYMENT, status="success") == 0


@pytest.mark.parametrize(
    ("make_error", "status"),
    [
        (lambda m: PublishTimeout(m.id, m.subject), "timeout"),
        (
            lambda m: PublishError(m.id, m.subject, PublishFailure.NO_STREAM, retryable=False),
            "rejected",
        ),
        (lambda m: ValidationError("payload", 1, "not JSON"), "rejected"),
        (
            lambda m: PublishError(m.id, m.subject, PublishFailure.DISCONNECTED, retryable=True),
            "error",
        ),
        (lambda m: CircuitOpenError(m.id, m.subject, 1.0), "error"),
        (lambda m: ClosedError("closed"), "error"),
    ],
)
async def test_a_failed_publish_is_counted_by_its_error_and_the_error_reaches_the_caller(
    registry: CollectorRegistry, make_error: Callable[[Message], Exception], status: str
) -> None:
    inner = RecordingPublisher()
    message = payment()
    error = make_error(message)
    inner.failures[message.id] = error

    with pytest.raises(type(error)) as caught:
        await MetricsPublisher(inner, registry).publish(message)

    assert caught.value is error
    assert value(registry, "message_bus_publish_total", message_type=PAYMENT, status=status) == 1
    assert value(registry, "message_bus_publish_duration_seconds_count", message_type=PAYMENT) == 1


async def test_each_message_of_a_batch_is_counted_by_its_own_result(
    registry: CollectorRegistry,
) -> None:
    inner = RecordingPublisher()
    ok, late, refused = payment(), payment(), payment()
    inner.failures[late.id] = PublishTimeout(late.id, late.subject)
    inner.failures[refused.id] = PublishError(
        refused.id, refused.subject, PublishFailure.REJECTED, retryable=False
    )

    with pytest.raises(PublishBatchError):
        await MetricsPublisher(inner, registry).publish_many([ok, late, refused])

    for status in ("success", "timeout", "rejected"):
        assert (
            value(registry, "message_bus_publish_total", message_type=PAYMENT, status=status) == 1
        )
    assert value(registry, "message_bus_publish_duration_seconds_count", message_type=PAYMENT) == 3


async def test_a_published_batch_returns_the_receipts_and_counts_every_message(
    registry: CollectorRegistry,
) -> None:
    inner = RecordingPublisher()
    messages = [payment(), payment("GBP-USD")]

    receipts = await MetricsPublisher(inner, registry).publish_many(messages)

    assert [r.message_id for r in receipts] == [m.id for m in messages]
    assert value(registry, "message_bus_publish_total", message_type=PAYMENT, status="success") == 2


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "success"),
        (RequestTimeout("deltran.risk.assessment.corridor.USD-EUR", 1.0), "timeout"),
        (NoRespondersError("deltran.risk.assessment.corridor.USD-EUR"), "no_responders"),
        (ClosedError("closed"), "error"),
    ],
)
async def test_a_request_is_counted_by_its_outcome(
    registry: CollectorRegistry, error: Exception | None, status: str
) -> None:
    inner = RecordingPublisher()
    inner.request_error = error
    publisher = MetricsPublisher(inner, registry)
    request = Message.new(
        MessageType.RISK_ASSESSMENT, PartitionKey.corridor("USD-EUR"), {"amount": "1"}
    )

    if error is None:
        reply = await publisher.request(request)
        assert reply.causation_id == request.id
    else:
        with pytest.raises(type(error)):
            await publisher.request(request)

    labels = {"message_type": "RiskAssessment"}
    assert value(registry, "message_bus_request_total", status=status, **labels) == 1
    assert value(registry, "message_bus_request_duration_seconds_count", **labels) == 1
    assert value(registry, "message_bus_publish_total", status="success", **labels) == 0


async def returns(message: Message) -> None:
    return None


async def raises_retryable(message: Message) -> None:
    raise RetryableError("bank offline")


async def raises_bug(message: Message) -> None:
    raise RuntimeError("bug")


async def raises_permanent(message: Message) -> None:
    raise PermanentError("unknown account")


async def acks_then_raises(message: Message) -> None:
    await current_delivery().ack()
    raise RuntimeError("after ack")


async def naks_then_returns(message: Message) -> None:
    await current_delivery().nak(5.0)


@pytest.mark.parametrize(
    ("handle", "attempt", "stream", "outcome"),
    [
        (returns, 1, STREAM, "ack"),
        (raises_retryable, 1, STREAM, "nak"),
        (raises_bug, 2, STREAM, "nak"),
        (raises_bug, 3, STREAM, "dead"),
        (raises_retryable, 3, None, "nak"),
        (raises_permanent, 1, STREAM, "term"),
        (acks_then_raises, 1, STREAM, "explicit"),
        (naks_then_returns, 3, STREAM, "explicit"),
    ],
)
async def test_a_delivery_is_counted_with_the_outcome_run_handler_settles_it_with(
    registry: CollectorRegistry,
    handle: Callable[[Message], Awaitable[None]],
    attempt: int,
    stream: str | None,
    outcome: str,
) -> None:
    subscriber = await subscribed(registry, handle, SubscriberConfig(max_deliver=3))

    settled_with = await subscriber.deliver(payment(), attempt=attempt, stream=stream)

    assert settled_with == outcome
    assert value(registry, "message_bus_receive_total", message_type=PAYMENT, status=outcome) == 1
    total = sum(
        value(registry, "message_bus_receive_total", message_type=PAYMENT, status=s)
        for s in ("ack", "nak", "term", "dead", "explicit", "decode_error")
    )
    assert total == 1
    assert value(registry, "message_bus_process_duration_seconds_count", message_type=PAYMENT) == 1


@pytest.mark.parametrize(
    ("handle", "attempt", "reason"),
    [(raises_permanent, 1, "term"), (raises_bug, 3, "max_deliver")],
)
async def test_a_dead_lettered_delivery_is_counted_with_a_low_cardinality_reason(
    registry: CollectorRegistry,
    handle: Callable[[Message], Awaitable[None]],
    attempt: int,
    reason: str,
) -> None:
    subscriber = await subscribed(registry, handle, SubscriberConfig(max_deliver=3))

    await subscriber.deliver(payment(), attempt=attempt)

    labels = {"message_type": PAYMENT}
    assert value(registry, "message_bus_dead_letters_total", reason=reason, **labels) == 1
    assert (
        sum(
            value(registry, "message_bus_dead_letters_total", reason=r, **labels)
            for r in ("term", "max_deliver")
        )
        == 1
    )


async def test_no_dead_letter_is_counted_when_dead_lettering_is_off_or_the_type_is_core_only(
    registry: CollectorRegistry,
) -> None:
    off = await subscribed(registry, raises_permanent, SubscriberConfig(dead_letter=False))
    await off.deliver(payment())
    core = await subscribed(registry, raises_permanent)
    await core.deliver(payment(), stream=None)

    assert value(registry, "message_bus_receive_total", message_type=PAYMENT, status="term") == 2
    assert (
        value(registry, "message_bus_dead_letters_total", message_type=PAYMENT, reason="term") == 0
    )


async def test_only_deliveries_after_the_first_count_as_redeliveries(
    registry: CollectorRegistry,
) -> None:
    subscriber = await subscribed(registry, returns)

    await subscriber.deliver(payment(), attempt=1)
    await subscriber.deliver(payment(), attempt=2)
    await subscriber.deliver(payment(), attempt=3)

    assert value(registry, "message_bus_redeliveries_total", message_type=PAYMENT) == 2


async def test_in_flight_counts_handlers_running_now(registry: CollectorRegistry) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(message: Message) -> None:
        started.set()
        await release.wait()

    subscriber = await subscribed(registry, slow)
    running = asyncio.create_task(subscriber.deliver(payment()))
    await asyncio.wait_for(started.wait(), 5)
    assert value(registry, "message_bus_in_flight", message_type=PAYMENT) == 1

    release.set()
    assert await asyncio.wait_for(running, 5) == "ack"
    assert value(registry, "message_bus_in_flight", message_type=PAYMENT) == 0


async def test_a_cancelled_handler_is_not_counted_and_leaves_nothing_in_flight(
    registry: CollectorRegistry,
) -> None:
    started = asyncio.Event()

    async def stuck(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    subscriber = await subscribed(registry, stuck)
    running = asyncio.create_task(subscriber.deliver(payment()))
    await asyncio.wait_for(started.wait(), 5)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert value(registry, "message_bus_in_flight", message_type=PAYMENT) == 0
    assert value(registry, "message_bus_process_duration_seconds_count", message_type=PAYMENT) == 0


async def test_a_handler_called_outside_a_subscriber_is_counted_by_its_result(
    registry: CollectorRegistry,
) -> None:
    inner = DeliveringSubscriber()
    await MetricsSubscriber(inner, registry).subscribe(FunctionHandler(raises_permanent))
    assert inner.handler is not None

    with pytest.raises(PermanentError):
        await inner.handler.handle(payment())

    assert value(registry, "message_bus_receive_total", message_type=PAYMENT, status="term") == 1
    assert (
        value(registry, "message_bus_dead_letters_total", message_type=PAYMENT, reason="term") == 0
    )


def test_the_connection_status_gauge_marks_only_the_current_status(
    registry: CollectorRegistry,
) -> None:
    metrics = BusMetrics(registry)

    metrics.set_connection_status("connected")
    metrics.set_connection_status("reconnecting")

    statuses = ("connected", "disconnected", "reconnecting", "closed")
    assert {s: value(registry, "nats_connection_status", status=s) for s in statuses} == {
        "connected": 0,
        "disconnected": 0,
        "reconnecting": 1,
        "closed": 0,
    }
    with pytest.raises(ValueError, match="connection status"):
        metrics.set_connection_status("CONNECTED")


def test_retries_and_decode_errors_are_counted_through_the_hooks(
    registry: CollectorRegistry,
) -> None:
    metrics = BusMetrics.for_registry(registry)

    metrics.record_retry(MessageType.PAYMENT_INSTRUCTION)
    metrics.record_retry(MessageType.PAYMENT_INSTRUCTION)
    metrics.record_decode_error(MessageType.PAYMENT_INSTRUCTION)
    metrics.record_dead_letter(MessageType.PAYMENT_INSTRUCTION, "term")

    assert value(registry, "message_bus_publish_retries_total", message_type=PAYMENT) == 2
    assert (
        value(registry, "message_bus_receive_total", message_type=PAYMENT, status="decode_error")
        == 1
    )
    assert (
        value(registry, "message_bus_dead_letters_total", message_type=PAYMENT, reason="term") == 1
    )
    with pytest.raises(ValueError, match="dead-letter reason"):
        metrics.record_dead_letter(MessageType.PAYMENT_INSTRUCTION, "bank offline")


def test_one_registry_has_one_bus_metrics_and_registries_are_independent(
    registry: CollectorRegistry,
) -> None:
    metrics = BusMetrics.for_registry(registry)
    other = CollectorRegistry()

    assert BusMetrics.for_registry(registry) is metrics
    assert MetricsPublisher(RecordingPublisher(), registry).metrics is metrics
    assert MetricsSubscriber(DeliveringSubscriber(), registry).metrics is metrics
    assert BusMetrics.for_registry(other) is not metrics
    with pytest.raises(ValueError, match="already has bus metrics"):
        BusMetrics(registry)


def test_a_name_clash_registers_no_bus_metric_at_all(registry: CollectorRegistry) -> None:
    Gauge("message_bus_in_flight", "someone else's", registry=registry)

    with pytest.raises(ValueError, match="message_bus_in_flight"):
        BusMetrics.for_registry(registry)

    assert "message_bus_publish_total" not in generate_latest(registry).decode()


async def test_the_decorators_delegate_close_and_keep_the_subscriber_settings(
    registry: CollectorRegistry,
) -> None:
    inner_publisher = RecordingPublisher()
    config = SubscriberConfig(consumer_group="settlement", max_deliver=5)
    inner_subscriber = DeliveringSubscriber(config)
    subscriber = MetricsSubscriber(inner_subscriber, registry)

    async with MetricsPublisher(inner_publisher, registry):
        pass
    await subscriber.close()

    assert inner_publisher.closed
    assert inner_subscriber.closed
    assert subscriber.message_type is MessageType.PAYMENT_INSTRUCTION
    assert subscriber.config is config


async def test_on_the_memory_broker_a_failing_payment_is_counted_nak_then_dead(
    registry: CollectorRegistry,
) -> None:
    async with InMemoryBroker() as broker:
        publisher = MetricsPublisher(broker.publisher(), registry)
        config = SubscriberConfig(max_deliver=2, nak_initial_delay=0)
        subscriber = MetricsSubscriber(
            broker.subscriber(MessageType.PAYMENT_INSTRUCTION, config), registry
        )
        subscription = await subscriber.subscribe(FunctionHandler(raises_bug))
        message = payment()
        await publisher.publish(message)
        await publisher.publish(message)
        await asyncio.wait_for(broker.settle(), 5)
        await subscription.stop()
        (dead,) = await broker.dead_letters().list()

    assert dead.message.id == message.id
    labels = {"message_type": PAYMENT}
    assert value(registry, "message_bus_publish_total", status="success", **labels) == 1
    assert value(registry, "message_bus_publish_total", status="duplicate", **labels) == 1
    assert value(registry, "message_bus_receive_total", status="nak", **labels) == 1
    assert value(registry, "message_bus_receive_total", status="dead", **labels) == 1
    assert value(registry, "message_bus_redeliveries_total", **labels) == 1
    assert value(registry, "message_bus_dead_letters_total", reason="max_deliver", **labels) == 1
    assert value(registry, "message_bus_in_flight", **labels) == 0
