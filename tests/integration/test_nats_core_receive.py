"""Core subscriptions on a real nats-server: a message read is handled in the next event
loop step, headers in any layout decode, and a slow consumer drops new messages past its
limit, saying so."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from servers import connect
from waits import eventually

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    PublisherConfig,
    SubscriberConfig,
)
from message_bus.adapters.nats import JetStreamPublisher, JetStreamSubscriber, NatsClient
from message_bus.adapters.nats.framing import BlockCodec
from message_bus.adapters.nats.internals import Connection, FastParser
from message_bus.adapters.nats.subscriber import core
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.domain.codec import WireCodec

EVENT = MessageType.SYSTEM_EVENT
RAW = PublisherConfig(validate_payloads=False)  # {"n": n} payloads
BROADCAST = PartitionKey.broadcast()


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    yield client
    await client.close()


def event(n: int) -> Message:
    return Message.new(EVENT, BROADCAST, {"n": n})


def hmsg(sid: int, message: Message) -> bytes:
    """The bytes a server sends for ``message`` to subscription ``sid``."""
    block = BlockCodec().encode_block(message)
    header, body = block.header_block, block.body
    head = b"HMSG %s %d %d %d\r\n" % (
        block.subject.encode(),
        sid,
        len(header),
        len(header) + len(body),
    )
    return head + header + body + b"\r\n"


async def test_a_core_message_is_handled_in_the_event_loop_step_after_it_is_read(
    client: NatsClient,
) -> None:
    handled: list[int] = []

    async def handle(message: Message) -> None:
        handled.append(message.payload["n"])

    subscriber = JetStreamSubscriber(client, EVENT, SubscriberConfig(consumer_group="steps"))
    subscription = await subscriber.subscribe(FunctionHandler(handle))
    sid = subscription._sub._id  # type: ignore[attr-defined]  # its id on the wire
    nc = client.connection
    assert isinstance(nc, Connection)
    parser = FastParser(nc)
    for n in range(3):
        await parser.parse(hmsg(sid, event(n)))  # as if the server had just sent it
        await asyncio.sleep(0)  # one step
        assert handled == list(range(n + 1)), f"message {n} was not handled one step after"
    await subscription.stop()
    await subscriber.close()


async def test_headers_in_another_layout_and_request_replies_still_work(
    client: NatsClient,
) -> None:
    """A client in another language lays headers out its own way: the fast decode
    declines, the full decode reads it; a request's reply reaches the requester."""
    seen: list[int] = []

    async def handle(message: Message) -> Message:
        seen.append(message.payload["n"])
        return Message.new(EVENT, BROADCAST, {"answer": message.payload["n"] * 2})

    subscriber = JetStreamSubscriber(client, EVENT, SubscriberConfig(consumer_group="layout"))
    subscription = await subscriber.subscribe(FunctionHandler(handle))
    encoded = WireCodec().encode(event(7))
    headers: dict[str, Any] = dict(reversed(list(encoded.headers.items())))
    nc = client.connection
    reply = await nc.request(encoded.subject, encoded.body, timeout=10, headers=headers)
    assert seen == [7]
    assert json.loads(reply.data) == {"answer": 14}
    await subscription.stop()
    await subscriber.close()


async def test_an_undecodable_core_message_is_dropped_and_the_next_one_handled(
    client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    async def handle(message: Message) -> None:
        seen.append(message.payload["n"])

    subscriber = JetStreamSubscriber(client, EVENT, SubscriberConfig(consumer_group="junk"))
    subscription = await subscriber.subscribe(FunctionHandler(handle))
    nc = client.connection
    with caplog.at_level(logging.WARNING, logger="message_bus.nats.subscriber"):
        await nc.publish("deltran.system.event.broadcast", b"not a bus message")
        async with JetStreamPublisher(client, RAW) as publisher:
            await publisher.publish(event(1))
        await eventually(lambda: seen == [1], "the valid message after the junk to be handled")
    assert "dropped an undecodable core message" in caplog.text
    await subscription.stop()
    await subscriber.close()


async def test_a_slow_core_consumer_drops_new_messages_past_its_limit_and_says_so(
    client: NatsClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "PENDING_MSGS_LIMIT", 5)
    gate = asyncio.Event()
    seen: list[int] = []

    async def handle(message: Message) -> None:
        await gate.wait()
        seen.append(message.payload["n"])

    config = SubscriberConfig(consumer_group="slow", max_concurrent=1)
    subscriber = JetStreamSubscriber(client, EVENT, config)
    subscription = await subscriber.subscribe(FunctionHandler(handle))
    with caplog.at_level(logging.WARNING, logger="message_bus.nats.subscriber"):
        async with JetStreamPublisher(client, RAW) as publisher:
            for n in range(20):
                await publisher.publish(event(n))
        await eventually(
            lambda: "slow consumer on deltran.system.event.>" in caplog.text,
            "the slow consumer warning",
        )
        gate.set()
        async with JetStreamPublisher(client, RAW) as publisher:
            await publisher.publish(event(100))  # room again: handled, and the drops counted
        await eventually(lambda: 100 in seen, "the message sent once there was room")
    *kept, last = seen
    assert last == 100
    # Five wait. A sixth is kept when the worker takes one into its handler while the
    # burst still arrives: the first one to come after that (any, on a loaded machine).
    assert kept[:5] == [0, 1, 2, 3, 4], kept
    assert len(kept) in (5, 6), kept
    assert kept == sorted(set(kept)), kept
    drops = re.findall(r"(\d+) messages dropped", caplog.text)
    assert sum(map(int, drops)) == 20 - len(kept), caplog.text
    await subscription.stop()
    await subscriber.close()
