"""Publishing and consuming payments through node failures, the bus against raw nats-py.

Starts a 3-node cluster on loopback (the shipped ``cluster.conf``: ``sync_interval:
always``, every acknowledged write is on disk), R3 streams, and runs for ``--seconds``:

* the bus: one :class:`JetStreamPublisher` with its default configuration, sending
  sequential payments with unique ids; the caller loop is what an app would write:
  ``publish()``, and on :class:`PublishError` the same message again after a short sleep;
* raw nats-py, at the same time, on its own connection and its own subject
  (``raw.payment``, added to the same R3 stream, so both sides meet the same stream
  leader and the same elections): ``js.publish`` with a ``Nats-Msg-Id``, the same id
  again on any error after the same short sleep;
* one consumer group per side, each on its own connection, handling the payments while
  they are published: a :class:`JetStreamSubscriber` for the bus, a durable pull
  consumer with a ``fetch`` + ``ack`` loop for nats-py;
* a nemesis that, from a seeded schedule, SIGKILLs (``kill``) or SIGSTOPs (``stop``) a
  random node, or either (``both``), for 0.5-2 s (then restarts it / SIGCONTs it), and
  starts the next fault 1.5-3 s after the previous one healed: one node at a time, so a
  quorum always exists and publishing can always go on (``none``: no faults, a
  baseline).

Both sides run concurrently on one event loop, for the same ``--seconds``, so they meet
the same faults at the same moments (which node each connection lands on is still
chance: one run is noisy, compare several). Afterwards every node is healed and the
stream is read back: every acknowledged id must be stored exactly once (``lost``:
acknowledged, not stored; ``dup``: stored more than once; ``stored``: messages on the
side's subjects, which must all be distinct), and every acknowledged payment must have
been handled by the side's group (``twice``: handled again, which at-least-once delivery
allows, so it is reported, not failed).

``failures`` counts ``publish()`` calls that raised (the bus) and ``js.publish`` calls
that raised (nats-py): what the caller saw. ``gap s`` is the longest time without an
acknowledgement. Exit code 1 when anything acknowledged was lost or stored twice, or a
payment was never handled. ``-v`` prints the faults, each side's failures over time and
its acknowledgements per second.

Run: ``python benchmarks/bench_faults.py --seconds 35 --seed 7 --nemesis both``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
import nats.errors
from common import CORRIDORS
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    PublisherConfig,
    PublishError,
    SubscriberConfig,
)
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.app.embedded import NatsCluster
from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.errors import StreamError

STREAM = "PAYMENT_INSTRUCTIONS"
BUS_SUBJECTS = "deltran.payment.instruction.>"
RAW_SUBJECT = "raw.payment"
RAW_GROUP = "raw-group"
RETRY_SLEEP = 0.05
"""Seconds both caller loops sleep after a failed publish before retrying the same id."""
HEAL_TIMEOUT = 60.0
HANDLED_TIMEOUT = 90.0
READ_TIMEOUT = 120.0


@dataclass(frozen=True)
class Fault:
    """One fault of the schedule: after ``gap`` s of calm, ``action`` on ``node`` for ``hold`` s."""

    gap: float
    node: int
    action: str  # "kill" | "stop"
    hold: float


def schedule(seed: int, mode: str, seconds: float, nodes: int) -> list[Fault]:
    """The nemesis's faults for a run of ``seconds``, the same for the same seed."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    if mode == "none":  # a baseline: the same run without faults
        return faults
    elapsed = 0.0
    while True:
        gap = rng.uniform(1.5, 3.0)
        node = rng.randrange(nodes)
        action = mode if mode != "both" else rng.choice(("kill", "stop"))
        hold = rng.uniform(0.5, 2.0)
        elapsed += gap + hold
        if elapsed > seconds:
            return faults
        faults.append(Fault(gap, node, action, hold))


@dataclass
class Side:
    """What one publisher achieved."""

    name: str
    acked: list[str] = field(default_factory=list)
    failures: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    longest_gap: float = 0.0
    lost: int = -1
    duplicates: int = -1
    stored: int = -1

    events: list[tuple[float, str, str]] = field(default_factory=list)
    per_second: collections.Counter[int] = field(default_factory=collections.Counter)
    handled: collections.Counter[str] = field(default_factory=collections.Counter)

    def failed(self, reason: str, detail: str = "") -> None:
        self.failures += 1
        self.reasons[reason] += 1
        self.events.append((time.monotonic(), reason, detail))

    def ok(self) -> bool:
        """Nothing acknowledged lost or stored twice, everything acknowledged handled."""
        unhandled = set(self.acked) - self.handled.keys()
        return self.lost == 0 and self.duplicates == 0 and not unhandled


@dataclass
class Nemesis:
    """Applies the fault schedule to the cluster, one node at a time."""

    cluster: NatsCluster
    faults: list[Fault]
    log: list[str] = field(default_factory=list)
    _down: tuple[int, str] | None = None

    async def run(self, started: float) -> None:
        try:
            for fault in self.faults:
                await asyncio.sleep(fault.gap)  # the schedule's own pace, not a wait
                await self._begin(fault)
                self.log.append(
                    f"{time.monotonic() - started:6.2f}s {fault.action} nats-{fault.node + 1}"
                    f" for {fault.hold:.2f}s"
                )
                await asyncio.sleep(fault.hold)
                await self.heal()
        finally:
            await self.heal()

    async def _begin(self, fault: Fault) -> None:
        self._down = (fault.node, fault.action)
        if fault.action == "kill":
            await asyncio.to_thread(self.cluster.kill_node, fault.node)
        else:
            await asyncio.to_thread(self.cluster.freeze_node, fault.node)

    async def heal(self) -> None:
        down, self._down = self._down, None
        if down is None:
            return
        node, action = down
        if action == "kill":
            await asyncio.to_thread(self.cluster.restart_node, node, wait_healthy=False)
        else:
            self.cluster.thaw_node(node)


def payment(i: int, prefix: str) -> Message:
    return Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor(CORRIDORS[i % len(CORRIDORS)]),
        {"payment_id": f"{prefix}{i:07d}", "amount": "1000.00", "currency": "USD"},
    )


async def bus_publisher(publisher: JetStreamPublisher, side: Side, until: float) -> None:
    """The app's loop: publish; on PublishError, retry the same message."""
    i = 0
    last_ack = time.monotonic()
    while time.monotonic() < until:
        message = payment(i, "pay_")
        while time.monotonic() < until:
            try:
                await publisher.publish(message)
            except PublishError as exc:
                side.failed(str(exc.reason), f"{exc.detail} via {publisher.client.connected_url}")
                await asyncio.sleep(RETRY_SLEEP)
                continue
            now = time.monotonic()
            side.longest_gap = max(side.longest_gap, now - last_ack)
            last_ack = now
            side.acked.append(message.id)
            side.per_second[int(now)] += 1
            break
        i += 1


async def raw_publisher(nc: Client, side: Side, until: float) -> None:
    """nats-py's loop: js.publish with Nats-Msg-Id; on any error, retry the same id."""
    js = nc.jetstream()
    i = 0
    last_ack = time.monotonic()
    while time.monotonic() < until:
        msg_id = f"raw_{i:07d}"
        body = b'{"payment_id":"%s","amount":"1000.00","currency":"USD"}' % msg_id.encode()
        while time.monotonic() < until:
            try:
                await js.publish(RAW_SUBJECT, body, headers={"Nats-Msg-Id": msg_id})
            except Exception as exc:  # noqa: BLE001 - the raw loop retries on any error
                url = nc.connected_url.netloc if nc.connected_url else None
                side.failed(type(exc).__name__, f"via {url}")
                await asyncio.sleep(RETRY_SLEEP)
                continue
            now = time.monotonic()
            side.longest_gap = max(side.longest_gap, now - last_ack)
            last_ack = now
            side.acked.append(msg_id)
            side.per_second[int(now)] += 1
            break
        i += 1


async def raw_consumer(nc: Client, side: Side, consuming: asyncio.Event) -> None:
    """nats-py's group: fetch from a durable pull consumer, ack each message; on any
    error, try again after the short sleep."""
    js = nc.jetstream()
    sub = None
    while consuming.is_set():
        try:
            if sub is None:
                sub = await js.pull_subscribe_bind(RAW_GROUP, stream=STREAM)
            msgs = await sub.fetch(64, timeout=1.0)
        except nats.errors.TimeoutError:
            continue
        except Exception:  # noqa: BLE001 - the raw loop retries on any error
            await asyncio.sleep(RETRY_SLEEP)
            continue
        for msg in msgs:
            side.handled[(msg.headers or {}).get("Nats-Msg-Id", "")] += 1
            with contextlib.suppress(Exception):
                await msg.ack()


async def read_ids(nc: Client, stream: str, subjects: str) -> list[str]:
    """Every ``Nats-Msg-Id`` stored in ``stream`` on ``subjects``, in stream order (read
    with an ephemeral consumer, within ``READ_TIMEOUT``)."""
    js = nc.jetstream(timeout=5.0)
    deadline = time.monotonic() + READ_TIMEOUT
    while True:  # the cluster may still be electing leaders after the last fault
        try:
            sub = await js.pull_subscribe(
                subjects,
                stream=stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=DeliverPolicy.ALL,
                    filter_subject=subjects,
                    inactive_threshold=30.0,
                    num_replicas=1,
                    mem_storage=True,
                ),
            )
            total = (await sub.consumer_info()).num_pending or 0
            break
        except nats.errors.Error as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {stream} not possible in time: {exc!r}") from exc
            await asyncio.sleep(0.2)
    ids: list[str] = []
    try:
        while len(ids) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(ids)} of {total} messages of {stream} in time")
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await sub.fetch(1000, timeout=2.0):
                    ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return ids


async def stream_leader(nc: Client) -> str | None:
    """The server leading the stream now, if JetStream says."""
    try:
        info = await nc.jetstream(timeout=5.0).stream_info(STREAM)
    except nats.errors.Error:
        return None
    return info.cluster.leader if info.cluster else None


def check(side: Side, stored: list[str]) -> None:
    counts = collections.Counter(stored)
    side.stored = len(stored)
    side.duplicates = sum(n - 1 for n in counts.values() if n > 1)
    side.lost = sum(1 for i in set(side.acked) if i not in counts)
    if len(counts) != len(stored):
        side.duplicates = max(side.duplicates, len(stored) - len(counts))


async def apply_streams(client: NatsClient) -> None:
    """Applies the catalog, R3, again while a fresh cluster still counts a peer as offline
    (within ``HEAL_TIMEOUT``)."""
    deadline = time.monotonic() + HEAL_TIMEOUT
    while True:
        try:
            await StreamManager(client).apply(StreamCatalog.default(), replicas=3)
            return
        except StreamError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def timeline(side: Side, started: float) -> list[str]:
    """The side's failures, as runs of one reason less than a second apart."""
    lines: list[str] = []
    run: list[tuple[float, str, str]] = []
    for event in [*side.events, (float("inf"), "", "")]:
        if run and (event[1] != run[0][1] or event[0] - run[-1][0] > 1.0):
            first, last = run[0][0] - started, run[-1][0] - started
            lines.append(f"{first:6.2f}-{last:6.2f}s {run[0][1]} x{len(run)}: {run[0][2]}")
            run = []
        run.append(event)
    return lines


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g}s")
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> int:
    faults = schedule(args.seed, args.nemesis, args.seconds, 3)
    with NatsCluster(size=3) as cluster:
        urls = cluster.urls
        # The bus: its defaults (the original crate's), as an app would configure it.
        config = NatsConfig(urls=urls)
        pub_client = NatsClient(config)
        sub_client = NatsClient(config)
        await pub_client.connect()
        await sub_client.connect()
        await apply_streams(pub_client)
        publisher = JetStreamPublisher(pub_client, PublisherConfig(validate_payloads=False))

        async def quiet(error: Exception) -> None:  # nats-py prints a traceback by default
            pass

        raw = await nats.connect(servers=urls, max_reconnect_attempts=-1, error_cb=quiet)
        raw_sub = await nats.connect(servers=urls, max_reconnect_attempts=-1, error_cb=quiet)
        raw_js = raw.jetstream()
        # nats-py's subject in the bus's stream: one leader, so both meet the same elections
        stream = (await raw_js.stream_info(STREAM)).config
        stream.subjects = [*(stream.subjects or []), RAW_SUBJECT]
        await raw_js.update_stream(stream)
        await raw_js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=RAW_GROUP,
                filter_subject=RAW_SUBJECT,
                ack_wait=5.0,
                max_ack_pending=1000,
            ),
        )
        bus, rawside = Side("bus"), Side("nats-py")

        class Handle:
            async def handle(self, message: Message) -> None:
                bus.handled[message.id] += 1

        subscriber = JetStreamSubscriber(
            sub_client,
            MessageType.PAYMENT_INSTRUCTION,
            SubscriberConfig(consumer_group="faults-bench", ack_wait=5.0, max_concurrent=32),
        )
        subscription = await subscriber.subscribe(Handle())
        consuming = asyncio.Event()
        consuming.set()
        raw_consumer_task = asyncio.create_task(raw_consumer(raw_sub, rawside, consuming))

        nemesis = Nemesis(cluster, faults)
        started = time.monotonic()
        until = started + args.seconds
        await asyncio.gather(
            bus_publisher(publisher, bus, until),
            raw_publisher(raw, rawside, until),
            nemesis.run(started),
        )
        elapsed = time.monotonic() - started
        ports = {node.port: node.server_name for node in cluster.nodes}
        bus_node = ports.get(int((pub_client.connected_url or ":0").rpartition(":")[2]))
        raw_node = ports.get((raw.connected_url.port if raw.connected_url else 0) or 0)
        for i, node in enumerate(cluster.nodes):  # every node up and in the cluster
            if not node.is_running:
                await asyncio.to_thread(cluster.restart_node, i, wait_healthy=False)
        await eventually(
            lambda: all(node.healthz()[0] == 200 for node in cluster.nodes),
            HEAL_TIMEOUT,
            "every node healthy after the run",
        )
        for side in (bus, rawside):
            acked = set(side.acked)
            await eventually(
                lambda acked=acked, side=side: acked <= side.handled.keys(),  # type: ignore[misc]
                HANDLED_TIMEOUT,
                f"{side.name}'s group handling every acknowledged payment",
            )
        consuming.clear()
        await subscription.stop()
        await raw_consumer_task
        leader = await stream_leader(raw)
        check(bus, await read_ids(raw, STREAM, BUS_SUBJECTS))
        check(rawside, await read_ids(raw, STREAM, RAW_SUBJECT))
        await subscriber.close()
        await publisher.close()
        await pub_client.close()
        await sub_client.close()
        await raw.close()
        await raw_sub.close()

    print(f"nemesis {args.nemesis}, seed {args.seed}, {len(faults)} faults, {elapsed:.1f}s")
    print(f"  at the end: bus on {bus_node}, nats-py on {raw_node}, stream leader {leader}")
    if args.verbose:
        print("  nodes: " + ", ".join(f"nats-{i + 1} {url}" for i, url in enumerate(urls)))
        for line in nemesis.log:
            print("  " + line)
        for side in (rawside, bus):
            for line in timeline(side, started):
                print(f"  {side.name}: {line}")
            first = int(started)
            rates = [side.per_second[first + k] for k in range(int(args.seconds) + 1)]
            print(f"  {side.name} acked per second: {' '.join(map(str, rates))}")
    print(
        f"{'':10}{'acked':>8}{'failures':>10}{'lost':>6}{'dup':>5}{'stored':>8}{'gap s':>7}"
        f"{'handled':>9}{'twice':>7}"
    )
    for side in (rawside, bus):
        twice = sum(n - 1 for n in side.handled.values() if n > 1)
        print(
            f"{side.name:10}{len(side.acked):>8}{side.failures:>10}{side.lost:>6}"
            f"{side.duplicates:>5}{side.stored:>8}{side.longest_gap:>7.2f}"
            f"{len(side.handled):>9}{twice:>7}"
        )
        if side.reasons:
            print("  failures: " + ", ".join(f"{k} {n}" for k, n in side.reasons.most_common()))
    ratio = len(bus.acked) / len(rawside.acked) if rawside.acked else float("nan")
    print(f"ratio bus/nats-py acked: {ratio:.2f}x")
    return 0 if bus.ok() and rawside.ok() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=35.0, help="publishing time per side")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    parser.add_argument(
        "--nemesis",
        choices=("kill", "stop", "both", "none"),
        default="both",
        help="SIGKILL, SIGSTOP, either, or no faults (a baseline)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print the faults")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
