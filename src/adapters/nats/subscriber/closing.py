"""Closing a subscription's inbox: handle what the server sent, unsubscribe, flush acks."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.subscription import Subscription as NatsSubscription

from message_bus.domain.errors import BusConnectionError, ClosedError

from ..client import NatsClient
from ..internals import ordered_flush, unsubscribe_now

log = logging.getLogger("message_bus.nats.subscriber")

STOP_TIMEOUT = 5.0
"""Seconds one step of a close may take (unsubscribing, flushing, cancelled handlers)."""


async def close_inbox(client: NatsClient, sub: NatsSubscription | None) -> None:
    """Unsubscribes, first handling what the server already sent if it is reachable."""
    if sub is None:
        return
    try:
        if client.is_connected:
            async with asyncio.timeout(STOP_TIMEOUT):
                # nats-py's drain writes its PING ahead of its UNSUB, so its PONG does not
                # mean the server stopped sending: first an UNSUB the server has processed,
                # so everything it sent before is read (and routed) by now.
                nc = client.connection
                await unsubscribe_now(nc, sub)
                await ordered_flush(nc, STOP_TIMEOUT)
                await sub.drain()  # type: ignore[no-untyped-call]
        elif not client.is_closed:
            await sub.unsubscribe()
    except (nats.errors.Error, TimeoutError, BusConnectionError, ClosedError) as exc:
        log.debug("closing a subscription: %s", exc)


async def flush_acks(client: NatsClient) -> None:
    """Makes sure settled acks reached the server, if it is reachable."""
    if client.is_connected:
        try:
            await ordered_flush(client.connection, STOP_TIMEOUT)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("flush after stop: %s", exc)


__all__ = ["STOP_TIMEOUT", "close_inbox", "flush_acks"]
