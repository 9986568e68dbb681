"""Checks, once per stream, that a stream's duplicate window outlives a publisher's retries.

A publish that lost its acknowledgement is retried with the same ``Nats-Msg-Id`` for
up to ``publish_timeout``; JetStream recognises the retry only while the id is within
the stream's duplicate window. Against a shorter window one ``publish()`` could store
two copies, so the publisher refuses such a stream (:class:`DuplicateWindowError`).
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors

from message_bus.domain.catalog import MessageType, StreamCatalog
from message_bus.domain.errors import DuplicateWindowError, MessageBusError
from message_bus.ports.config import PublisherConfig

from .client import NatsClient

log = logging.getLogger("message_bus.nats.publisher")


class WindowGuard:
    """Looks up each stream's duplicate window once, on the first publish to it.

    A window long enough is remembered and never looked up again; a window too short
    is remembered too, and every publish to that stream raises the same
    :class:`DuplicateWindowError` (the publisher refuses the stream; a new publisher
    checks again). A lookup that fails (no such stream, JetStream unreachable) is not
    remembered: the publish goes ahead and reports its own failure, and the next
    publish looks again. Concurrent first publishes share one lookup.

    Attributes:
        pending: ids of the message types whose stream was not found long enough yet
            (a set lookup keeps the publish hot path cheap).
    """

    def __init__(self, client: NatsClient, config: PublisherConfig, catalog: StreamCatalog) -> None:
        self.client = client
        self.config = config
        self._stream_of: dict[int, str] = {}
        if config.use_jetstream:
            for message_type in MessageType:
                spec = catalog.stream_for(message_type)
                if spec is not None:
                    self._stream_of[id(message_type)] = spec.name
        self.pending: set[int] = set(self._stream_of)
        self._refused: dict[str, float] = {}  # stream -> its (too short) window
        self._lookups: dict[str, asyncio.Future[None]] = {}

    async def check(self, message_type: MessageType, timeout: float) -> None:
        """Raise :class:`DuplicateWindowError` if ``message_type``'s stream forgets ids
        sooner than a publish may retry; look the stream up if not done yet.

        Waits at most ``timeout`` seconds (part of the publish's own budget): a lookup
        still running then goes on for later publishes, and this one goes ahead.
        """
        stream = self._stream_of.get(id(message_type))
        if stream is None or id(message_type) not in self.pending:
            return
        refused = self._refused.get(stream)
        if refused is not None:
            self.config.check_duplicate_window(stream, refused)  # raises, a fresh error
        if self.client.live_connection is None:
            return  # not now (reconnecting, draining): the publish handles it; checked later
        lookup = self._lookups.get(stream)
        if lookup is None:
            lookup = self._lookups[stream] = asyncio.ensure_future(self._look_up(stream))
            lookup.add_done_callback(lambda _: self._lookups.pop(stream, None))
        try:
            await asyncio.wait_for(asyncio.shield(lookup), timeout)
        except TimeoutError:
            return
        refused = self._refused.get(stream)
        if refused is not None:
            self.config.check_duplicate_window(stream, refused)  # raises

    async def _look_up(self, stream: str) -> None:
        timeout = self.client.config.api_timeout
        try:
            info = await asyncio.wait_for(self.client.jetstream.stream_info(stream), timeout)
        except nats.js.errors.NotFoundError:
            return  # the publish reports no_stream
        except (nats.errors.Error, MessageBusError, TimeoutError) as exc:
            log.info("duplicate window of %s not checked (%s); checking later", stream, exc)
            return
        window = float(info.config.duplicate_window or 0.0)
        try:
            self.config.check_duplicate_window(stream, window)
        except DuplicateWindowError as exc:
            log.error("refusing to publish to %s: %s", stream, exc)
            self._refused[stream] = window  # check() raises it, for every waiter
            return
        self.pending.difference_update(
            key for key, name in self._stream_of.items() if name == stream
        )


__all__ = ["WindowGuard"]
