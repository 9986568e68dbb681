"""Confirmed acknowledgements: JetStream's double ack, with one reply inbox per subscription.

An ACK sent with a reply subject is answered by the server (an empty message) once it
processed it. :class:`AckConfirmer` sends such ACKs with reply subjects under one
wildcard inbox, routes the answers to their waiters, and fails every waiter at once when
the connection drops (an ACK in the outgoing buffer of a dead connection may never
reach the server) or when the server refuses the ack subject.

Deadlines are kept in the order the ACKs were sent (they all wait the same time), and
one timer, set for the oldest, fails those that ran out: a confirmation costs no timer
of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import nats.errors
from nats.aio.subscription import Subscription as NatsSubscription

from ..client import ConnectionStatus, NatsClient
from ..internals import Writer, new_reply_prefix

log = logging.getLogger("message_bus.nats.subscriber")

_PENDING_MSGS = 1024 * 1024
_PENDING_BYTES = 64 * 1024 * 1024


class AckConfirmer:
    """Sends acknowledgements that the server confirms (see module doc)."""

    def __init__(self, client: NatsClient, writer: Writer, timeout: float) -> None:
        self._client = client
        self._writer = writer
        self._timeout = timeout
        self._expired = f"no confirmation within {timeout:g} s"
        self._deadlines: deque[tuple[float, bytes]] = deque()  # in the order sent
        self._timer: asyncio.TimerHandle | None = None
        prefix = new_reply_prefix(client.connection)
        self._subject = prefix + "*"
        self._prefix = prefix.encode()
        self._prefix_len = len(self._prefix)
        self._counter = 0
        # token -> (waiter, ack subject); a waiter's result is None (confirmed) or why not
        self._pending: dict[bytes, tuple[asyncio.Future[str | None], bytes]] = {}
        self._sub: NatsSubscription | None = None
        self._remove_listener = client.on_status(self._on_status)

    async def start(self) -> None:
        """Subscribes the reply inbox.

        Raises:
            nats.errors.Error: the inbox could not be subscribed.
        """
        self._sub = await self._client.subscribe_raw(
            self._subject,
            self._on_reply,
            pending_msgs_limit=_PENDING_MSGS,
            pending_bytes_limit=_PENDING_BYTES,
        )

    def _on_reply(self, subject: bytes, reply: bytes, data: bytes, block: bytes | None) -> None:
        pending = self._pending
        entry = pending.pop(subject[self._prefix_len :], None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(None)
        deadlines = self._deadlines  # drop the oldest deadlines that no longer wait
        while deadlines and deadlines[0][1] not in pending:
            deadlines.popleft()

    def _expire(self) -> None:
        """Fails the ACKs whose deadline passed; sets the timer for the next one."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending, deadlines = self._pending, self._deadlines
        while deadlines:
            deadline, token = deadlines[0]
            entry = pending.get(token)
            if entry is not None and deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            deadlines.popleft()
            if entry is not None:
                del pending[token]
                if not entry[0].done():
                    entry[0].set_result(self._expired)

    def _on_status(self, status: ConnectionStatus) -> None:
        if status is not ConnectionStatus.CONNECTED:
            self.fail_all(f"the connection is {status.value}")

    def fail_all(self, reason: str) -> None:
        """Every ACK still waiting is not confirmed, for ``reason``."""
        pending = self._pending
        self._pending = {}
        self._deadlines.clear()
        for waiter, _subject in pending.values():
            if not waiter.done():
                waiter.set_result(reason)

    def fail_subject(self, subject: str, reason: str) -> None:
        """ACKs sent to ``subject`` (as the server reports it, lower-cased) failed."""
        lowered = subject.lower()
        for token, (waiter, ack_subject) in list(self._pending.items()):
            if ack_subject.decode().lower() == lowered:
                del self._pending[token]
                if not waiter.done():
                    waiter.set_result(reason)

    async def confirm(self, ack_subject: bytes, payload: bytes) -> str | None:
        """Sends ``payload`` to ``ack_subject`` and waits for the server's confirmation
        (at most the confirmer's timeout).

        Returns:
            None once confirmed; otherwise why it was not (timeout, connection lost,
            permission denied, not sent).
        """
        if not self._client.is_connected:
            return "the connection is down"
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str | None] = loop.create_future()
        self._counter += 1
        token = b"%x" % self._counter
        try:
            self._writer.write_request(ack_subject, self._prefix + token, payload)
        except nats.errors.Error as exc:
            return f"not sent: {exc}"
        pending = self._pending
        pending[token] = (waiter, ack_subject)
        deadline = loop.time() + self._timeout
        self._deadlines.append((deadline, token))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)
        try:
            return await waiter
        finally:
            pending.pop(token, None)

    async def close(self) -> None:
        """Fails what still waits and unsubscribes the inbox."""
        self._remove_listener()
        self.fail_all("the subscription closed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sub, self._sub = self._sub, None
        if sub is not None and not self._client.is_closed:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("closing the ack confirmation inbox: %s", exc)


__all__ = ["AckConfirmer"]
