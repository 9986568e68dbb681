"""Consumer names on a real nats-server: groups never share or rewrite another's consumer."""

from __future__ import annotations

import logging

import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from waits import eventually

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    SubscriberConfig,
    ValidationError,
)
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
)
from message_bus.adapters.nats.subscriber.consumer import ConsumerBinding
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
USD_EUR = PartitionKey.corridor("USD-EUR")
GBP_USD = PartitionKey.corridor("GBP-USD")
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}


def payment(n: int, key: PartitionKey) -> Message:
    return Message.new(
        PAYMENT,
        key,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


async def test_a_group_never_rewrites_the_filter_of_an_existing_consumer(
    client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    # The consumer an all-corridors group got under the old naming
    # (durable "d", group "g__corridor_USD-EUR"): the name a USD-EUR filtered group
    # "g" gets now.
    filtered = SubscriberConfig(durable_name="d", consumer_group="g", partition_key=USD_EUR)
    name = filtered.consumer_name
    assert name == "d__g__corridor_USD-EUR"
    await client.jetstream.add_consumer(
        STREAM,
        ConsumerConfig(
            name=name,
            durable_name=name,
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject="deltran.payment.instruction.>",
        ),
    )

    subscriber = JetStreamSubscriber(client, PAYMENT, filtered, **FAST)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as caught:
        await subscriber.subscribe(FunctionHandler(_ignore))
    await subscriber.close()

    assert caught.value.field == "consumer_name"
    assert caught.value.value == name
    assert "deltran.payment.instruction.>" in str(caught.value)
    info = await client.jetstream.consumer_info(STREAM, name)
    assert info.config.filter_subject == "deltran.payment.instruction.>"


async def test_an_all_corridors_group_and_a_filtered_group_each_get_their_messages(
    client: NatsClient,
) -> None:
    everything: list[str] = []
    usd_eur: list[str] = []

    async def record_all(message: Message) -> None:
        everything.append(message.payload["payment_id"])

    async def record_usd_eur(message: Message) -> None:
        usd_eur.append(message.payload["payment_id"])

    whole = SubscriberConfig(durable_name="d", consumer_group="g")
    part = SubscriberConfig(durable_name="d", consumer_group="g", partition_key=USD_EUR)
    subscribers = [
        JetStreamSubscriber(client, PAYMENT, whole, **FAST),  # type: ignore[arg-type]
        JetStreamSubscriber(client, PAYMENT, part, **FAST),  # type: ignore[arg-type]
    ]
    await subscribers[0].subscribe(FunctionHandler(record_all))
    await subscribers[1].subscribe(FunctionHandler(record_usd_eur))
    publisher = JetStreamPublisher(client)
    for n in range(10):
        await publisher.publish(payment(n, GBP_USD))
    for n in range(10, 15):
        await publisher.publish(payment(n, USD_EUR))

    await eventually(lambda: len(everything) >= 15, "15 payments in the all-corridors group")
    await eventually(lambda: len(usd_eur) >= 5, "5 payments in the USD-EUR group")
    for subscriber in subscribers:
        await subscriber.close()
    assert sorted(everything) == sorted(f"pay_{n}" for n in range(15))
    assert sorted(usd_eur) == sorted(f"pay_{n}" for n in range(10, 15))


async def test_a_group_whose_settings_drifted_is_updated_with_a_warning(
    client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    config = SubscriberConfig(durable_name="d", consumer_group="drift", ack_wait=30.0)
    first = JetStreamSubscriber(client, PAYMENT, config, **FAST)  # type: ignore[arg-type]
    await (await first.subscribe(FunctionHandler(_ignore))).stop()
    await first.close()

    changed = SubscriberConfig(durable_name="d", consumer_group="drift", ack_wait=10.0)
    second = JetStreamSubscriber(client, PAYMENT, changed, **FAST)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="message_bus.nats.subscriber"):
        await (await second.subscribe(FunctionHandler(_ignore))).stop()
    await second.close()

    info = await client.jetstream.consumer_info(STREAM, changed.consumer_name)
    assert info.config.ack_wait == pytest.approx(10.0)
    assert any("ack_wait: 30.0 -> 10.0" in r.getMessage() for r in caplog.records)


async def _ignore(message: Message) -> None:
    del message


async def test_a_consumer_created_by_someone_else_meanwhile_keeps_its_filter(
    client: NatsClient,
) -> None:
    # Between the binding's look-up (not found) and its creation, another process
    # creates the consumer of that name with another filter.
    filtered = SubscriberConfig(durable_name="d", consumer_group="race", partition_key=USD_EUR)
    binding = ConsumerBinding(client, STREAM, filtered, PAYMENT)
    await client.jetstream.add_consumer(
        STREAM,
        ConsumerConfig(
            name=binding.name,
            durable_name=binding.name,
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject="deltran.payment.instruction.>",
        ),
    )

    with pytest.raises(ValidationError) as caught:
        await binding._create(5.0)

    assert caught.value.field == "consumer_name"
    info = await client.jetstream.consumer_info(STREAM, binding.name)
    assert info.config.filter_subject == "deltran.payment.instruction.>"


async def test_a_consumer_created_alike_by_another_member_meanwhile_is_bound(
    client: NatsClient,
) -> None:
    config = SubscriberConfig(durable_name="d", consumer_group="twins", partition_key=USD_EUR)
    first = ConsumerBinding(client, STREAM, config, PAYMENT)
    second = ConsumerBinding(client, STREAM, config, PAYMENT)
    await first.ensure()

    await second._create(5.0)  # it had looked before the first created it

    names = [info.name for info in await client.jetstream.consumers_info(STREAM)]
    assert names == [config.consumer_name]
