"""A member of an ordered group in a process of its own, logging what it handles, to be killed.

Fault tests and the benchmark start several of these against a real server, SIGKILL one,
and read the logs: one JSON object per line, written and flushed before and after each
handler run (the kernel keeps what was written when the process is killed)::

    python -m message_bus.testing.ordered_member --url nats://127.0.0.1:4222 \\
        --group g1 --name m1 --log m1.jsonl --work-ms 2

Lines: ``{"ev": "ready"}`` once subscribed; ``{"ev": "owned", "partitions": [...]}``
whenever the member's partitions change; ``{"ev": "start" | "end", "id", "key", "n",
"seq", "attempt"}`` around each handler run. Every line has ``member`` and ``t``
(``time.monotonic_ns()``, comparable across processes of one host).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from typing import IO, Any

from message_bus.adapters.nats import JetStreamSubscriber, NatsClient, NatsConfig
from message_bus.domain.catalog import MessageType
from message_bus.domain.message import Message
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.subscriber import current_delivery


class Log:
    """One member's JSON-lines log."""

    def __init__(self, out: IO[str], member: str) -> None:
        self.out = out
        self.member = member

    def write(self, event: str, **fields: Any) -> None:
        record = {"ev": event, "member": self.member, "t": time.monotonic_ns(), **fields}
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()


async def run(args: argparse.Namespace) -> None:
    if args.debug:
        logging.basicConfig(level=logging.WARNING, format="%(created).6f %(name)s %(message)s")
        logging.getLogger("message_bus.ordered").setLevel(logging.DEBUG)
    client = NatsClient(NatsConfig(urls=[args.url], name=args.name, reconnect_delay=0.05))
    await client.connect()
    config = SubscriberConfig(
        consumer_group=args.group,
        ordering="partition",
        partitions=args.partitions,
        failover_timeout=args.failover,
        max_concurrent=args.max_concurrent,
        ack_wait=max(args.failover, 1.0),
    )
    work = args.work_ms / 1000
    with open(args.log, "a", encoding="utf-8") as out:  # noqa: ASYNC230  # a local file, line by line
        log = Log(out, args.name)

        async def handle(message: Message) -> None:
            delivery = current_delivery()
            fields = {
                "id": message.id,
                "key": message.partition_key.suffix,
                "n": message.payload.get("n") if isinstance(message.payload, dict) else None,
                "seq": delivery.sequence,
                "attempt": delivery.attempt,
            }
            log.write("start", **fields)
            if work:
                await asyncio.sleep(work)
            log.write("end", **fields)

        class Handler:
            async def handle(self, message: Message) -> None:
                await handle(message)

        subscriber = JetStreamSubscriber(client, MessageType(args.message_type), config)
        subscription = await subscriber.subscribe(Handler())
        log.write("ready")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        owned: frozenset[int] = frozenset()
        while not stop.is_set():
            now = frozenset(getattr(subscription, "owned", frozenset()))
            if now != owned:
                owned = now
                log.write("owned", partitions=sorted(owned))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
        await subscription.stop()
        log.write("stopped")
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--message-type", default=MessageType.PAYMENT_INSTRUCTION.value)
    parser.add_argument("--partitions", type=int, default=32)
    parser.add_argument("--failover", type=float, default=2.0)
    parser.add_argument("--max-concurrent", type=int, default=10)
    parser.add_argument("--work-ms", type=float, default=1.0)
    parser.add_argument("--debug", action="store_true", help="log the group's moves to stderr")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
