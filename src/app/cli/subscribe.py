"""The ``subscribe`` command: read a stream (or join a group), one JSON line a message."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from message_bus.domain.message import Message
from message_bus.ports import FunctionHandler, Subscription, current_delivery

from ..containers import Container
from .errors import EXIT_OK, CliError
from .output import message_json, out
from .parser import PROG
from .session import load_command_settings, running_bus

__all__ = ["subscribe_command"]


async def subscribe_command(args: argparse.Namespace, container: Container | None) -> int:
    """Print each message received until ``--count`` messages or ``--timeout`` seconds.

    Without ``--group`` the command is a reader in no group: it reads the stream from
    its start through an ephemeral consumer of its own, deleted when it exits, so it
    takes nothing from any service's group (and never dead-letters). With ``--group``
    it joins that consumer group and takes its share of the group's messages.
    ``--start`` (``first``, ``new`` or a time) says where the reader, or a group that
    does not exist yet, starts; an existing group with another start refuses it.

    With ``--count`` messages are handled one at a time and fetched one at a time, so
    a group keeps every message after the last one printed. Fewer than ``--count``
    before the timeout is said on stderr, and is not a failure.

    Raises:
        CliError: ``--durable`` without ``--group``.
    """
    if args.durable and not args.group:
        raise CliError("--durable needs --group (without --group nothing is durable)")
    settings = load_command_settings(args)
    changes: dict[str, Any] = {"partition_key": args.key}
    ephemeral = not args.group
    if args.group:
        changes["consumer_group"] = args.group
    if args.durable:
        changes["durable_name"] = args.durable
    if args.start is not None:
        changes["start"] = args.start  # checked by SubscriberConfig: names "start"
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
            # Fetched while stopping: hand it back at once (in a group this costs it one
            # delivery attempt, as any fetched-but-unprocessed message does).
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
        subscriber = await bus.subscriber(args.type, config, ephemeral=ephemeral)
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
