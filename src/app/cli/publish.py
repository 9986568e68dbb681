"""The ``publish`` and ``request`` commands: send one message, print its receipt or reply."""

from __future__ import annotations

import argparse
import dataclasses

from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.message import Message
from message_bus.ports.publisher import check_request

from ..containers import Container
from .errors import EXIT_OK
from .output import message_json, out, receipt_line
from .payloads import typed_payload
from .session import load_command_settings, running_bus

__all__ = ["publish_command", "request_command"]


async def publish_command(args: argparse.Namespace, container: Container | None) -> int:
    """Publish one message and print its receipt.

    The payload is typed and checked against its type's Struct unless ``--raw``, which
    also switches the publisher's own check off (``validate_payloads=False``).
    """
    settings = load_command_settings(args)
    payload = typed_payload(args.payload, args.type, args.key, raw=args.raw)
    message = Message.new(
        args.type,
        args.key,
        payload,
        correlation_id=args.correlation_id,
        headers=dict(args.header) or None,
        message_id=args.message_id,
    )
    async with running_bus(settings, container) as bus:
        if args.raw:
            config = dataclasses.replace(bus.publisher_config(), validate_payloads=False)
            publisher = await bus.publisher(config=config)
        else:
            publisher = await bus.publisher()
        try:
            receipt = await publisher.publish(message)
        finally:
            await publisher.close()
    out(receipt_line(receipt))
    return EXIT_OK


async def request_command(args: argparse.Namespace, container: Container | None) -> int:
    """Send a request and print the reply as one JSON line."""
    settings = load_command_settings(args)
    catalog = container.catalog() if container is not None else StreamCatalog.default()
    check_request(args.type, args.timeout, catalog)  # before anything starts
    message = Message.new(args.type, args.key, typed_payload(args.payload, args.type, args.key))
    async with running_bus(settings, container) as bus:
        publisher = await bus.publisher()
        try:
            reply = await publisher.request(message, args.timeout)
        finally:
            await publisher.close()
    out(message_json(reply))
    return EXIT_OK
