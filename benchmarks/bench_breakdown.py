"""Where each microsecond of a core publish goes: the steps of ``Message.new`` and of
``Publisher.publish``, in nanoseconds per message, next to nats-py's ``publish`` of bare
bytes.

Every step runs over the same 2,000 distinct pre-built messages (8 corridors, the
benchmark's payload), best of ``--rounds`` rounds, timed with ``perf_counter`` around a
loop of the step alone; a step is the operation the codec performs, written out here on
the same objects (the codec's own route cache, encoder and id check). The two totals
are measured whole: ``publish()`` to a live connection and nats-py's ``publish()``, each
2,000 times in a row, which only fills the connection's outgoing buffer (it is written
out after the timed loop), so they are the Python-side cost of a publish. The rest of a
publish's time is the socket and the server: the last line writes the same commands,
pre-built, and times them until the server processed them (an ordered flush).

Run: ``python benchmarks/bench_breakdown.py`` (or ``bench_bus.py --only breakdown``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import bench_latency
import nats
from common import CORRIDORS, PAYLOAD, RAW_BODY

from message_bus import Message, MessageType, PartitionKey, PublisherConfig
from message_bus.adapters.nats import JetStreamPublisher, NatsClient, NatsConfig
from message_bus.adapters.nats.framing import BlockCodec
from message_bus.adapters.nats.internals import ordered_flush
from message_bus.domain.codec import JSON_ENCODER
from message_bus.domain.ids import new_message_id
from message_bus.domain.message import check_payload_numbers
from message_bus.ports.publisher import PublishReceipt

RAW_SUBJECT = "deltran.system.event.broadcast"
COUNT = 2_000
FLUSH_TIMEOUT = 60.0


@dataclass(frozen=True)
class Step:
    """One line of the table: nanoseconds per message."""

    name: str
    ns: float
    part_of: str = ""  # the total it is a step of


def best_ns(step: Callable[[], object], count: int, rounds: int) -> float:
    """Nanoseconds per message of ``step`` (one call does ``count`` messages), best of
    ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - began)
    return best / count * 1e9


def build(count: int) -> list[Message]:
    keys = [PartitionKey.corridor(c) for c in CORRIDORS]
    return [Message.new(MessageType.SYSTEM_EVENT, keys[i % 8], PAYLOAD) for i in range(count)]


def message_new_steps(count: int, rounds: int) -> list[Step]:
    """``Message.new`` and its steps."""
    key = PartitionKey.corridor("USD-EUR")
    system = MessageType.SYSTEM_EVENT

    def whole() -> None:
        for _ in range(count):
            Message.new(system, key, PAYLOAD)

    def ids() -> None:
        for _ in range(count):
            new_message_id()

    def clock() -> None:
        for _ in range(count):
            datetime.now(UTC)

    def keys() -> None:
        for i in range(count):
            PartitionKey.corridor(CORRIDORS[i & 7])

    def numbers() -> None:
        for _ in range(count):
            check_payload_numbers(PAYLOAD)

    moment = datetime.now(UTC)
    message_id = new_message_id()

    def struct() -> None:
        for _ in range(count):
            Message(
                id=message_id,
                message_type=system,
                partition_key=key,
                payload=PAYLOAD,
                created_at=moment,
            )

    total = "Message.new"
    return [
        Step(total, best_ns(whole, count, rounds)),
        Step("UUIDv7 id", best_ns(ids, count, rounds), total),
        Step("timestamp (datetime.now)", best_ns(clock, count, rounds), total),
        Step("payload number check", best_ns(numbers, count, rounds), total),
        Step("the struct itself", best_ns(struct, count, rounds), total),
        Step("PartitionKey.corridor (a key seen before)", best_ns(keys, count, rounds)),
    ]


def encode_steps(batch: Sequence[Message], rounds: int) -> list[Step]:
    """``BlockCodec.encode_pub`` and its steps, on the codec's own objects."""
    codec = BlockCodec()
    for message in batch:
        codec.encode_pub(message)  # the routes are cached, as after the first publish
    routes = codec._routes
    count = len(batch)
    encode = JSON_ENCODER.encode

    def whole() -> None:
        for message in batch:
            codec.encode_pub(message)

    def route() -> None:
        for message in batch:
            routes[id(message.message_type)][message.partition_key.suffix]

    def id_check() -> None:
        for message in batch:
            i = message.id
            _ = type(i) is str and 0 < len(i) <= 128 and i.isascii() and i.isprintable()

    def stamp() -> None:
        for message in batch:
            moment = message.created_at
            if moment.tzinfo is UTC and moment.microsecond:
                encode(moment)[1:-1]

    def body() -> None:
        for message in batch:
            encode(message.payload).find(b"null")

    parts = [codec.encode_pub(m) for m in batch]
    first = next(iter(next(iter(routes.values())).values()))
    pieces = [(m.id.encode(), encode(m.created_at)[1:-1], encode(m.payload)) for m in batch]

    def command() -> None:
        join = b"".join
        for encoded_id, created, text in pieces:
            size = first.static_size + len(encoded_id) + len(created)
            line = first.lines.get(size + len(text)) if size == first.usual_header else None
            if line is None:
                line = b"%s%d %d\r\n" % (first.pub_head, size, size + len(text))
            stamp_line, end = b"\r\nDeltran-Created-At: ", b"\r\n\r\n"
            join((line, first.block_prefix, encoded_id, stamp_line, created, end, text, b"\r\n"))

    def receipt() -> None:
        for message, part in zip(batch, parts, strict=True):
            PublishReceipt(message.id, part[3], None, None, False, part[4])

    total = "encode (BlockCodec.encode_pub)"
    return [
        Step(total, best_ns(whole, count, rounds)),
        Step("subject and static headers (cached per key)", best_ns(route, count, rounds), total),
        Step("id check", best_ns(id_check, count, rounds), total),
        Step("timestamp text", best_ns(stamp, count, rounds), total),
        Step("JSON body and its NaN scan", best_ns(body, count, rounds), total),
        Step("HPUB command in one buffer", best_ns(command, count, rounds), total),
        Step("the receipt (PublishReceipt)", best_ns(receipt, count, rounds)),
    ]


async def publish_steps(url: str, batch: Sequence[Message], rounds: int) -> list[Step]:
    """The whole ``publish()`` (Python side), nats-py's, and the wire."""
    count = len(batch)
    nc = await nats.connect(url)
    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
    await publisher.publish(batch[0])
    raw_best = bus_best = wire_best = float("inf")
    commands = b"".join(publisher._codec.encode_pub(m)[0] for m in batch)
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            for _ in range(count):
                await nc.publish(RAW_SUBJECT, RAW_BODY)
            raw_best = min(raw_best, time.perf_counter() - began)
            await ordered_flush(nc, FLUSH_TIMEOUT)
            began = time.perf_counter()
            for message in batch:
                await publisher.publish(message)
            bus_best = min(bus_best, time.perf_counter() - began)
            await client.flush()
            writer = publisher._core_writer
            assert writer is not None
            began = time.perf_counter()
            writer.write_live(commands, 0, len(commands), count)
            await client.flush()
            wire_best = min(wire_best, time.perf_counter() - began)
    finally:
        await publisher.close()
        await client.close()
        await nc.close()
    return [
        Step("publish() of a pre-built message, Python side", bus_best / count * 1e9),
        Step("nats-py publish() of bare bytes, Python side", raw_best / count * 1e9),
        Step("the wire: the same commands written pre-built", wire_best / count * 1e9),
    ]


async def breakdown(url: str, rounds: int = 30) -> list[Step]:
    """Measures every step and prints the table."""
    batch = build(COUNT)
    steps = message_new_steps(COUNT, rounds) + encode_steps(batch, rounds)
    steps += await publish_steps(url, batch, rounds)
    print(table(steps), flush=True)
    return steps


def table(steps: Sequence[Step]) -> str:
    lines = [f"{'where a core publish goes (ns per message)':<52} {'ns':>7}"]
    for step in steps:
        name = f"  {step.name}" if step.part_of else step.name
        lines.append(f"{name:<52} {step.ns:>7,.0f}")
    return "\n".join(lines)


async def main(url: str | None, rounds: int) -> None:
    with bench_latency.servers(url, "breakdown") as (fast, _):
        await breakdown(fast, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="use this server instead of an embedded one")
    parser.add_argument("--rounds", type=int, default=30)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.url, arguments.rounds))
