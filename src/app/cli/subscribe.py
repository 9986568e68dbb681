"""The ``subscribe`` command: receive as a consumer group member, one JSON line a message."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from message_bus.domain.message import Message
from message_bus.ports import FunctionHandler, Subscription, current_delivery

from ..containers import Container
from .errors import EXIT_OK
from .output import message_json, out
from .parser import PROG
from .session import load_command_settings, running_bus

__all__ = ["subscribe_command"]


async def subscribe_command(args: argparse.Namespace, container: Container | None) -> int:
    """Print each message received until ``--count`` messages or ``--timeout`` seconds.

    With ``--count`` messages are handled one at a time and fetched one at a time, so
    the group keeps every message after the last one printed. Fewer than ``--count``
    before the timeout is said on stderr, and is not a failure.
    """
    settings = load_command_settings(args)
    changes: dict[str, Any] = {"partition_key": args.key}
    if args.group:
        changes["consumer_group"] = args.group
    if args.durable:
        changes["durable_name"] = args.durable
    if args.count is not None:
        # One at a time, in order, and fetch no more than the next one.
        changes["max_concurrent"] = 1
        changes["fetch_batch"] = 1
    config = settings.subscriber_config(**changes)
    received = 0
    enough = asyncio.Event()
    started = asyncio.Event()
    subscription: Subscription | None = None
    stopping: list[asyncio.Task[None]] = []

    async def show(message: Message) -> None:
        nonlocal received
        delivery = current_delivery()
        await started.wait()
        if enough.is_set():
            # Fetched while stopping: hand it back to the group at once (this costs it
            # one delivery attempt, as any fetched-but-unprocessed message does).
            await delivery.nak(0)
            return
        received += 1
        out(message_json(message, delivery.attempt))
        if args.count is not None and received >= args.count and subscription is not None:
            enough.set()
            # Stop fetching before this handler returns (its return is the ACK).
            stopping.append(asyncio.create_task(subscription.stop()))
            await asyncio.sleep(0)

    async with running_bus(settings, container) as bus:
        subscriber = await bus.subscriber(args.type, config)
        try:
            subscription = await subscriber.subscribe(FunctionHandler(show))
            started.set()
            try:
                await asyncio.wait_for(enough.wait(), args.timeout)
            except TimeoutError:
                pass
            finally:
                await subscription.stop()
                await asyncio.gather(*stopping)
        finally:
            await subscriber.close()
    if args.count is not None and received < args.count:
        print(f"{PROG}: received {received} of {args.count} messages", file=sys.stderr)
    return EXIT_OK
