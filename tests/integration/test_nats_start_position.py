"""Where a new group starts, on a real nats-server: the consumer's deliver policy and
metadata, a re-created consumer that resumes after its floor, and the ordered source's
start floors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.api import DeliverPolicy

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    StartPositionConflict,
    SubscriberConfig,
)
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
)
from message_bus.adapters.nats.subscriber.consumer import START_METADATA
from message_bus.adapters.nats.subscriber.stream_source import JetStreamSource
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
USD_EUR = PartitionKey.corridor("USD-EUR")
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}


def payment(n: int) -> Message:
    return Message.new(
        PAYMENT, USD_EUR, sample_payload(PAYMENT, payment_id=f"pay_{n}", amount="10.00")
    )


def subscriber(client: NatsClient, **config: object) -> JetStreamSubscriber:
    settings = SubscriberConfig(consumer_group="starters", **config)  # type: ignore[arg-type]
    return JetStreamSubscriber(client, PAYMENT, settings, **FAST)  # type: ignore[arg-type]


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.01)


class Recorder:
    def __init__(self) -> None:
        self.ids: list[str] = []

    async def handle(self, message: Message) -> None:
        self.ids.append(message.id)


async def test_a_new_group_consumer_records_its_start_in_its_metadata_and_policy(
    client: NatsClient,
) -> None:
    when = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)
    await subscriber(client, start=when).subscribe(Recorder())

    name = SubscriberConfig(consumer_group="starters").consumer_name
    info = await client.jetstream.consumer_info(STREAM, name)

    assert info.config.metadata is not None
    assert info.config.metadata[START_METADATA] == "time:2026-11-29T21:00:00.000000Z"
    assert info.config.deliver_policy == DeliverPolicy.BY_START_TIME
    assert info.config.opt_start_time == when


async def test_a_consumer_without_start_metadata_is_a_group_that_starts_from_the_first(
    client: NatsClient,
) -> None:
    """Consumers created before start positions existed carry no metadata: "first"."""
    name = SubscriberConfig(consumer_group="starters").consumer_name
    legacy = subscriber(client)
    await legacy.subscribe(Recorder())
    info = await client.jetstream.consumer_info(STREAM, name)
    config = info.config
    config.metadata = None
    await client.jetstream.add_consumer(STREAM, config=config)
    await legacy.close()

    await subscriber(client).subscribe(Recorder())  # joins, and records "first"
    recorded = (await client.jetstream.consumer_info(STREAM, name)).config.metadata
    assert recorded is not None
    assert recorded[START_METADATA] == "first"
    with pytest.raises(StartPositionConflict) as refused:
        await subscriber(client, start="new").subscribe(Recorder())
    assert (refused.value.value, refused.value.expected) == ("new", "first")


async def test_a_lost_consumer_of_a_group_that_started_from_new_resumes_after_its_floor(
    client: NatsClient,
) -> None:
    """Re-created after it was deleted, the consumer neither jumps to "new" (which would
    skip what was stored while it was gone) nor to the stream's start."""
    publisher = JetStreamPublisher(client)
    await publisher.publish_many([payment(n) for n in range(3)])
    recorder = Recorder()
    await subscriber(client, start="new").subscribe(recorder)
    name = SubscriberConfig(consumer_group="starters").consumer_name

    await client.jetstream.delete_consumer(STREAM, name)
    while_gone = [payment(n) for n in range(10, 13)]
    await publisher.publish_many(while_gone)

    await eventually(lambda: len(recorder.ids) >= 3, "3 deliveries after the re-creation")
    await asyncio.sleep(0)
    assert recorder.ids == [m.id for m in while_gone]
    info = await client.jetstream.consumer_info(STREAM, name)
    assert info.config.metadata is not None
    assert info.config.metadata[START_METADATA] == "new"


async def test_a_reader_in_no_group_starting_from_new_skips_the_retained_messages(
    client: NatsClient,
) -> None:
    publisher = JetStreamPublisher(client)
    await publisher.publish_many([payment(n) for n in range(3)])
    recorder = Recorder()
    reader = JetStreamSubscriber(
        client, PAYMENT, SubscriberConfig(start="new"), ephemeral=True, **FAST
    )  # type: ignore[arg-type]
    await reader.subscribe(recorder)

    new = [payment(n) for n in range(3, 5)]
    await publisher.publish_many(new)

    await eventually(lambda: len(recorder.ids) >= 2, "2 deliveries to the reader")
    assert recorder.ids == [m.id for m in new]
    await reader.close()


async def test_the_ordered_source_finds_the_floor_of_a_start_position(
    client: NatsClient,
) -> None:
    publisher = JetStreamPublisher(client)
    source = JetStreamSource(client, STREAM, PAYMENT, "floors")
    await publisher.publish_many([payment(n) for n in range(5)])
    third = (await client.jetstream.get_msg(STREAM, 3)).time
    assert third is not None

    assert await source.start_floor("first") == 0
    assert await source.start_floor("new") == 5
    assert await source.start_floor(third) == 2, "a message stored at the time is included"
    assert await source.start_floor(third + timedelta(microseconds=1)) >= 3
    assert await source.start_floor(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert await source.start_floor(datetime(2100, 1, 1, tzinfo=UTC)) == 5
    consumers = await client.jetstream.consumers_info(STREAM)
    assert [c.name for c in consumers] == [], "the probe consumers are deleted"
