"""The application object on the in-memory backend: typed handlers, follow-ups, injection,
middleware, one trace per payment, and config overrides that merge."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Literal

import msgspec
import pytest
from dependency_injector import providers
from dependency_injector.wiring import Provide, inject
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from message_bus import Message, MessageType, PartitionKey, PermanentError, SubscriberConfig
from message_bus.app import (
    Bus,
    BusSettings,
    Container,
    Context,
    build_container,
    resolve,
    shutdown_container,
    start_container,
)
from message_bus.app.handlers import follow_ups
from message_bus.app.middleware import Next
from message_bus.domain.errors import ValidationError
from message_bus.domain.payloads import PaymentInstruction
from message_bus.ports import Publisher, PublisherConfig
from message_bus.testing.samples import sample_payload

KEY = PartitionKey.corridor("USD-EUR")
FOLLOW_UPS = "ADAPTER_TRANSFERS"
VERDICT = "ScreeningVerdict"


class ScreeningVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """A screening worker's verdict on a payment: clear it or hold it."""

    payment_id: str
    screening: Literal["clear", "hold"]


@pytest.fixture
def verdicts() -> Iterator[MessageType]:
    """ScreeningVerdict registered (stored in SCREENING_VERDICTS) for one test, then removed."""
    registered = MessageType.register(
        VERDICT,
        "screening.verdict",
        payload=ScreeningVerdict,
        stream="SCREENING_VERDICTS",
        max_age=3600.0,
    )
    yield registered
    MessageType.unregister(registered)


def memory_bus(**subscriber: Any) -> Bus:
    settings = BusSettings(backend="memory", subscriber=SubscriberConfig(**subscriber))
    return Bus(settings)


def verdict(payment: PaymentInstruction, message: Message, hold: bool) -> Message:
    """The follow-up a screening worker returns for ``message`` (a registered type)."""
    screening = "hold" if hold else "clear"
    return message.reply(
        MessageType(VERDICT), {"payment_id": payment.payment_id, "screening": screening}
    )


def transfer(message: Message, **changes: Any) -> Message:
    """A valid AdapterTransfer follow-up of ``message``."""
    return message.reply(
        MessageType.ADAPTER_TRANSFER, sample_payload(MessageType.ADAPTER_TRANSFER, **changes)
    )


def instruction(number: int, creditor: str = "BANKDEFF") -> Message:
    payment = PaymentInstruction(
        payment_id=f"pay-{number}",
        amount=Decimal("250.00"),
        currency="USD",
        debtor_bank="BANKGB2L",
        creditor_bank=creditor,
    )
    return Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, payment)


async def settle(bus: Bus) -> None:
    broker = await resolve(bus.container.memory_broker())
    await broker.settle()


async def stored(bus: Bus, stream: str) -> int:
    broker = await resolve(bus.container.memory_broker())
    return broker.stream_info(stream).messages


def screening_service(bus: Bus, seen: list[Message]) -> None:
    """A screening worker returns a verdict as a follow-up; an audit reads it (needs the
    ``verdicts`` fixture)."""

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening", payload=PaymentInstruction)
    async def screen(payment: PaymentInstruction, message: Message) -> Message:
        return verdict(payment, message, hold=payment.creditor_bank == "BANKRU2M")

    @bus.handler(MessageType(VERDICT), group="audit")
    async def audit(message: Message) -> None:
        seen.append(message)


@pytest.mark.usefixtures("verdicts")
async def test_a_returned_message_is_published_with_correlation_causation_and_a_derived_id() -> (
    None
):
    bus = memory_bus()
    seen: list[Message] = []
    screening_service(bus, seen)
    async with bus:
        first, second = instruction(1), instruction(2, creditor="BANKRU2M")
        await bus.publisher.publish(first)
        await bus.publisher.publish(second)
        await settle(bus)
    by_cause = {m.causation_id: m for m in seen}
    assert set(by_cause) == {first.id, second.id}
    for cause in (first, second):
        follow_up = by_cause[cause.id]
        assert follow_up.correlation_id == cause.id
        assert follow_up.id == follow_ups(cause, cause)[0].id  # derived from (cause id, 0)
    assert by_cause[second.id].payload == {"payment_id": "pay-2", "screening": "hold"}


async def test_a_payload_that_does_not_fit_the_struct_is_dead_lettered_at_once() -> None:
    bus = memory_bus(max_deliver=5)
    calls: list[PaymentInstruction] = []

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening", payload=PaymentInstruction)
    async def screen(payment: PaymentInstruction) -> None:
        calls.append(payment)

    async with bus:
        bad = Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, {"payment_id": "pay-1"})
        # A producer that does not check its payloads sends one the Struct refuses.
        unchecked = await resolve(bus.container.publisher(validate_payloads=False))
        await unchecked.publish(bad)
        await settle(bus)
        dead = await resolve(bus.container.dead_letters())
        letters = await dead.list()
    assert calls == []
    assert len(letters) == 1
    assert letters[0].deliveries == 1
    assert "PaymentInstruction" in letters[0].reason


async def test_a_follow_up_its_type_refuses_is_dead_lettered_at_once_naming_the_field() -> None:
    bus = memory_bus(max_deliver=5)
    runs: list[str] = []

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening", payload=PaymentInstruction)
    async def screen(payment: PaymentInstruction, message: Message) -> Message:
        runs.append(payment.payment_id)
        return message.reply(MessageType.ADAPTER_TRANSFER, {"screening": "hold"})

    async with bus:
        payload = sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id="pay-9")
        await bus.publisher.publish(Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, payload))
        await settle(bus)
        letters = await (await resolve(bus.container.dead_letters())).list()
    assert runs == ["pay-9"]  # not retried: the same follow-up would be refused again
    assert len(letters) == 1
    assert letters[0].deliveries == 1
    assert "follow-up AdapterTransfer refused" in letters[0].reason
    assert "transfer_id" in letters[0].reason


class Services(Container):
    watchlist = providers.Object(frozenset({"BANKRU2M"}))


@inject
async def screen_with_watchlist(
    payment: PaymentInstruction,
    message: Message,
    watchlist: frozenset[str] = Provide[Services.watchlist],
) -> Message:
    return verdict(payment, message, hold=payment.creditor_bank in watchlist)


async def test_dependencies_are_injected_from_a_container_with_the_applications_providers(
    verdicts: MessageType,
) -> None:
    container = build_container(BusSettings(backend="memory"), Services)
    bus = Bus(container)
    seen: list[Message] = []
    bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening", payload=PaymentInstruction)(
        screen_with_watchlist
    )

    @bus.handler(verdicts, group="audit")
    async def audit(message: Message) -> None:
        seen.append(message)

    async with bus:
        await bus.publisher.publish(instruction(1, creditor="BANKRU2M"))
        await settle(bus)
    assert [m.payload for m in seen] == [{"payment_id": "pay-1", "screening": "hold"}]
    assert sys.modules[__name__] is not None


class CrashAfterPublishing:
    """A process that dies between the follow-up's publish and the ack, once."""

    def __init__(self) -> None:
        self.crashed = False

    async def __call__(self, ctx: Context, call_next: Next) -> Any:
        result = await call_next(ctx)
        if ctx.kind == "consume" and not self.crashed:
            self.crashed = True
            raise ConnectionError("process died before the ack")
        return result


async def test_a_redelivery_republishes_its_follow_up_under_the_same_id_so_it_is_stored_once() -> (
    None
):
    bus = memory_bus(nak_initial_delay=0.0)
    crash = CrashAfterPublishing()
    bus.use(crash)
    runs: list[int] = []

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening", payload=PaymentInstruction)
    async def screen(payment: PaymentInstruction, message: Message) -> list[Message]:
        runs.append(1)
        return [
            transfer(message, transfer_id=f"{payment.payment_id}-leg-1"),
            transfer(message, transfer_id=f"{payment.payment_id}-leg-2"),
        ]

    async with bus:
        await bus.publisher.publish(instruction(1))
        await settle(bus)
        assert crash.crashed
        assert len(runs) == 2
        assert await stored(bus, FOLLOW_UPS) == 2  # each follow-up once, not twice


async def test_middleware_runs_around_the_handler_and_each_publish_first_one_outermost() -> None:
    calls: list[str] = []

    def recorder(name: str) -> Any:
        async def middleware(ctx: Context, call_next: Next) -> Any:
            calls.append(f"{name}>{ctx.kind}")
            result = await call_next(ctx)
            calls.append(f"{name}<{ctx.kind}")
            return result

        return middleware

    bus = Bus(BusSettings(backend="memory"), middleware=[recorder("a"), recorder("b")])

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening")
    async def screen(message: Message) -> Message:
        calls.append("handler")
        return transfer(message)

    async with bus:
        await bus.publisher.publish(instruction(1))
        await settle(bus)
    assert calls == [
        "a>consume",
        "b>consume",
        "handler",
        "a>publish",
        "b>publish",
        "b<publish",
        "a<publish",
        "b<consume",
        "a<consume",
    ]


@pytest.mark.usefixtures("verdicts")
async def test_one_payment_is_one_trace_across_intake_worker_follow_up_and_audit() -> None:
    bus = memory_bus()
    exporter = InMemorySpanExporter()
    bus.container.tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    seen: list[Message] = []
    screening_service(bus, seen)
    async with bus:
        for number in range(3):
            await bus.publisher.publish(instruction(number))
        await settle(bus)
    assert len(seen) == 3
    spans = exporter.get_finished_spans()
    traces: dict[int, list[str]] = {}
    for span in spans:
        assert span.context is not None
        traces.setdefault(span.context.trace_id, []).append(span.name)
    assert len(traces) == 3, traces
    for names in traces.values():
        assert any(name.endswith("screen handle") for name in names)
        assert any(name.endswith("audit handle") for name in names)
        assert sum("publish" in name for name in names) == 2  # intake's and the follow-up's


@pytest.mark.usefixtures("verdicts")
async def test_the_handler_metrics_middleware_counts_runs_and_published_follow_ups() -> None:
    bus = memory_bus()
    screening_service(bus, [])
    async with bus:
        await bus.publisher.publish(instruction(1))
        await settle(bus)
    registry = bus.registry
    name = f"{__name__}.screening_service.<locals>.screen"
    assert (
        registry.get_sample_value("message_bus_handler_total", {"handler": name, "status": "ok"})
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "message_bus_handler_published_total",
            {"handler": name, "message_type": VERDICT},
        )
        == 1.0
    )


async def test_a_handler_returning_something_else_than_messages_is_dead_lettered() -> None:
    bus = memory_bus()

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening")
    async def screen(message: Message) -> object:
        return {"not": "a message"}

    async with bus:
        await bus.publisher.publish(instruction(1))
        await settle(bus)
        letters = await (await resolve(bus.container.dead_letters())).list()
    assert len(letters) == 1
    assert "return a Message" in letters[0].reason


def test_follow_ups_refuse_a_list_holding_something_else() -> None:
    cause = instruction(1)
    with pytest.raises(PermanentError, match="index 1"):
        follow_ups(cause, [cause.reply(MessageType.ADAPTER_TRANSFER, {}), "x"])


def test_registration_refuses_bad_handlers_before_any_io() -> None:
    bus = memory_bus()

    def plain(message: Message) -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening")(plain)  # type: ignore[type-var]

    async def two_unknowns(a: int, b: int) -> None:
        return None

    with pytest.raises(TypeError, match="a, b"):
        bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening")(two_unknowns)
    with pytest.raises(ValidationError) as bad_group:
        bus.handler(MessageType.PAYMENT_INSTRUCTION, group="bad group")
    assert bad_group.value.field == "consumer_group"
    with pytest.raises(ValidationError) as unknown:
        bus.handler(MessageType.PAYMENT_INSTRUCTION, group="g", max_concurency=3)
    assert unknown.value.field == "max_concurency"
    with pytest.raises(ValidationError) as bad_value:
        bus.handler(MessageType.PAYMENT_INSTRUCTION, group="g", max_concurrent=0)
    assert bad_value.value.field == "max_concurrent"
    with pytest.raises(ValidationError) as bad_type:
        bus.handler("PaymentInstruction", group="g")(plain)  # type: ignore[arg-type]
    assert bad_type.value.field == "message_type"
    assert bus.handlers == []


async def test_a_handler_override_merges_with_the_configured_subscriber_settings() -> None:
    bus = memory_bus(ack_wait=12.0, max_deliver=7)
    bus.handler(
        MessageType.PAYMENT_INSTRUCTION, group="screening", ordering="partition", partitions=8
    )(screen_with_watchlist)
    async with bus:
        subscriber = await resolve(
            bus.container.subscriber(
                MessageType.PAYMENT_INSTRUCTION, consumer_group="screening", ordering="partition"
            )
        )
        assert (subscriber.config.ack_wait, subscriber.config.max_deliver) == (12.0, 7)
        assert bus.subscriptions[bus.handlers[0].name].active


async def test_container_ports_merge_one_overridden_field_with_the_configured_rest() -> None:
    settings = BusSettings(
        backend="memory",
        subscriber=SubscriberConfig(ack_wait=12.0, max_deliver=7),
        publisher=PublisherConfig(max_retry_attempts=6, publish_timeout=9.0),
    )
    container = build_container(settings)
    await start_container(container)
    try:
        by_field = await resolve(
            container.subscriber(MessageType.PAYMENT_INSTRUCTION, max_concurrent=20)
        )
        assert (by_field.config.max_concurrent, by_field.config.ack_wait) == (20, 12.0)
        assert by_field.config.max_deliver == 7
        publisher = await resolve(container.publisher(publish_timeout=3.0))
        inner = publisher.inner.inner  # type: ignore[attr-defined]  # metrics(tracing(memory))
        assert (inner.config.publish_timeout, inner.config.max_retry_attempts) == (3.0, 6)
        with pytest.raises(ValidationError) as unknown:
            await resolve(container.subscriber(MessageType.PAYMENT_INSTRUCTION, max_concurency=20))
        assert unknown.value.field == "max_concurency"
    finally:
        await shutdown_container(container)


async def test_a_whole_subscriber_config_keeps_the_configured_fields_it_leaves_at_default() -> None:
    settings = BusSettings(
        backend="memory",
        subscriber=SubscriberConfig(ack_wait=12.0, max_deliver=7),
        publisher=PublisherConfig(max_retry_attempts=6, publish_timeout=9.0),
    )
    container = build_container(settings)
    await start_container(container)
    try:
        whole = await resolve(
            container.subscriber(
                MessageType.PAYMENT_INSTRUCTION, SubscriberConfig(consumer_group="audit")
            )
        )
        assert whole.config.consumer_group == "audit"
        assert (whole.config.ack_wait, whole.config.max_deliver) == (12.0, 7)
        publisher = await resolve(container.publisher(PublisherConfig(publish_timeout=3.0)))
        inner = publisher.inner.inner  # type: ignore[attr-defined]  # metrics(tracing(memory))
        assert (inner.config.publish_timeout, inner.config.max_retry_attempts) == (3.0, 6)
    finally:
        await shutdown_container(container)


@pytest.mark.usefixtures("verdicts")
async def test_serve_answers_healthz_readyz_and_metrics_then_drains_on_stop() -> None:
    bus = Bus(BusSettings(backend="memory"))
    bus.container.config.metrics.port.from_value(0)
    screening_service(bus, [])
    stop = asyncio.Event()
    urls: list[str] = []
    ready = asyncio.Event()

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    serving = asyncio.create_task(bus.serve(stop=stop, on_ready=on_ready))
    await asyncio.wait_for(ready.wait(), 30)  # the bus started and the health server listens
    host, port = urls[0].removeprefix("http://").split(":")
    answers = {path: await http_get(host, int(port), path) for path in ("/healthz", "/readyz")}
    metrics = await http_get(host, int(port), "/metrics")
    assert answers["/healthz"][0] == 200
    status, body = answers["/readyz"]
    assert status == 200, body
    assert '"ready": true' in body
    assert "subscription" in body
    assert "message_bus_handler_total" in metrics[1] or "message_bus_publish_total" in metrics[1]
    assert (await http_get(host, int(port), "/nope"))[0] == 404
    stop.set()
    assert await asyncio.wait_for(serving, 30) == 0


async def http_get(host: str, port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


@inject
async def forward_with_injected_publisher(
    message: Message, publisher: Publisher = Provide[Container.publisher]
) -> None:
    await publisher.publish(transfer(message, payment_id=message.payload["payment_id"]))


async def test_a_port_of_the_container_is_injected_awaited() -> None:
    bus = memory_bus()
    bus.handler(MessageType.PAYMENT_INSTRUCTION, group="forward")(forward_with_injected_publisher)
    async with bus:
        await bus.publisher.publish(instruction(1))
        # The broker's settle() does not wait for a handler suspended on something else,
        # and resolving an async provider takes more event-loop rounds than it watches.
        for _ in range(100):
            await settle(bus)
            if await stored(bus, FOLLOW_UPS):
                break
        assert await stored(bus, FOLLOW_UPS) == 1, "the injected publisher's follow-up"
