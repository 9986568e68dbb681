"""The JetStream subscriber: a shared durable pull consumer per group, outcome-driven acks."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, ReplayPolicy

from message_bus.domain.catalog import MessageType, StreamCatalog
from message_bus.domain.codec import Encoded, WireCodec
from message_bus.domain.dead_letter import encode_dead_letter
from message_bus.domain.errors import (
    BusConnectionError,
    ClosedError,
    DecodeError,
    MessageBusError,
    PublishError,
    PublishFailure,
    ValidationError,
)
from message_bus.domain.message import Message
from message_bus.ports.config import PublisherConfig, SubscriberConfig
from message_bus.ports.outcome import ACK_WAIT_EXPIRED, max_deliveries_reason
from message_bus.ports.subscriber import (
    CoreDelivery,
    Delivery,
    MessageHandler,
    Subscriber,
    Subscription,
    run_handler,
    settle_failure,
)

from ._wire import Writer, headers_of, ordered_flush
from .client import ConnectionStatus, NatsClient
from .publisher import _Sender, block_of
from .streams import StreamError

log = logging.getLogger("message_bus.nats.subscriber")

_INBOX_PENDING_MSGS = 1024 * 1024
_INBOX_PENDING_BYTES = 256 * 1024 * 1024
_STOP_TIMEOUT = 5.0
_MAX_RECOVERY_DELAY = 2.0
_REBIND_TIMEOUT = 1.0
_UNAVAILABLE_PAUSE = 0.5
_MAX_KEPT_REASONS = 10_000


def _seconds(value: float | None) -> float:
    return round(float(value or 0.0), 6)


class _Consumer:
    """Finds or creates the group's durable pull consumer.

    ``ack_floor`` is the highest stream sequence below which the group acknowledged
    everything, as JetStream last reported it (at bind and on every :meth:`refresh`).
    A consumer that disappears under running subscriptions (deleted, or lost by the
    server) is re-created from just after that floor, never from the start of the
    stream: deliveries acknowledged since the last report may be handled again, none
    is skipped.
    """

    def __init__(
        self, client: NatsClient, stream: str, config: SubscriberConfig, message_type: MessageType
    ) -> None:
        self.client = client
        self.stream = stream
        self.name = config.consumer_name
        key = config.partition_key
        filter_subject = f"{message_type.subject_prefix}.{key.suffix if key else '>'}"
        self.config = ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=f"DelTran {message_type.value} consumer group {config.consumer_group}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=config.ack_wait,
            # Unlimited on the server: the subscriber counts deliveries itself and
            # dead-letters a delivery past max_deliver. A server-side limit would make
            # the NAK after a failed dead-letter store final, abandoning the message.
            max_deliver=-1,
            max_ack_pending=config.max_ack_pending,
            filter_subject=filter_subject,
            replay_policy=ReplayPolicy.INSTANT,
        )
        self.ack_floor = 0

    def _note(self, info: ConsumerInfo) -> None:
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else None
        if floor and floor > self.ack_floor:
            self.ack_floor = floor

    async def refresh(self, timeout: float) -> bool:
        """Updates ``ack_floor`` from JetStream; False if the consumer is gone.

        Errors other than "not found" are ignored (the next refresh tries again).
        """
        try:
            self._note(await self.client.jetstream.consumer_info(self.stream, self.name, timeout))
        except nats.js.errors.NotFoundError:
            return False
        except (nats.errors.Error, nats.js.errors.Error, MessageBusError, TimeoutError) as exc:
            log.debug("consumer %s: no ack floor (%s)", self.name, exc)
        return True

    def _drift(self, have: ConsumerConfig) -> list[str]:
        want = self.config
        lines = []
        for field in ("ack_wait", "max_deliver", "max_ack_pending", "filter_subject"):
            found, wanted = getattr(have, field), getattr(want, field)
            if field == "ack_wait":
                found, wanted = _seconds(found), _seconds(wanted)
            if found != wanted:
                lines.append(f"{field}: {found} -> {wanted}")
        return lines

    async def ensure(self, timeout: float | None = None) -> None:
        """Binds to the consumer, creating it if absent or updating drifted settings.

        A consumer created anew delivers the whole stream, unless this object saw an
        ack floor: then it starts just after it (see the class doc).

        Args:
            timeout: Seconds per JetStream API call (default: the client's api_timeout).

        Raises:
            StreamError: The stream does not exist or JetStream refused the consumer.
            BusConnectionError: JetStream did not answer.
        """
        js = self.client.jetstream
        try:
            try:
                info = await js.consumer_info(self.stream, self.name, timeout=timeout)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == 10059:
                    raise StreamError(
                        self.stream, "does not exist; apply the stream catalog first"
                    ) from None
                config = self.config
                if self.ack_floor:
                    config = dataclasses.replace(
                        config,
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=self.ack_floor + 1,
                    )
                    log.warning(
                        "consumer %s on %s was gone; re-created from stream sequence %d "
                        "(after its last known ack floor)",
                        self.name,
                        self.stream,
                        self.ack_floor + 1,
                    )
                await js.add_consumer(self.stream, config=config, timeout=timeout)
                log.info("consumer %s on %s created", self.name, self.stream)
                return
            self._note(info)
            drift = self._drift(info.config)
            if drift:
                log.warning(
                    "consumer %s on %s updated: %s", self.name, self.stream, "; ".join(drift)
                )
                have = info.config
                update = dataclasses.replace(
                    self.config,
                    deliver_policy=have.deliver_policy,
                    opt_start_seq=have.opt_start_seq,
                    opt_start_time=have.opt_start_time,
                )
                await js.add_consumer(self.stream, config=update, timeout=timeout)
        except nats.js.errors.ServiceUnavailableError as exc:
            raise BusConnectionError(f"JetStream is unavailable: {exc.description}") from exc
        except nats.js.errors.APIError as exc:
            raise StreamError(self.stream, f"consumer {self.name}: {exc.description}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusConnectionError(f"JetStream did not answer: {exc}") from exc


_Raw = tuple[bytes, bytes, bytes, "bytes | None", str, int, int, float]
"""A delivery as read: (subject, ack subject, body, header block, stream, delivery count,
stream sequence, ``time.monotonic()`` when it was read)."""


class _JetStreamDelivery(Delivery):
    """A JetStream delivery; settling maps to +ACK, -NAK, +TERM and +WPI."""

    def __init__(self, owner: _PullSubscription, raw: _Raw, message: Message, subject: str) -> None:
        self.message = message
        self.subject = subject
        self.stream = raw[4]
        self.attempt = raw[5]
        self.sequence = raw[6]
        self._raw = raw
        self._owner = owner
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        await self._owner.settle(self._raw[1], _ACK)

    async def nak(self, delay: float | None = None) -> None:
        if self._settled:
            return
        self._settled = True
        await self._owner.settle(self._raw[1], _nak_payload(delay))

    async def term(self, reason: str) -> None:
        if self._settled:
            return
        self._settled = True
        await self._owner.dead_letter(self._raw, self.attempt, reason)

    async def in_progress(self) -> None:
        if not self._settled:
            await self._owner.settle(self._raw[1], _IN_PROGRESS)


class _CoreDelivery(CoreDelivery):
    """A core NATS delivery; a request's reply goes to its reply subject."""

    def __init__(self, owner: _CoreSubscription, msg: Msg, message: Message) -> None:
        super().__init__(message, msg.subject)
        self._msg = msg
        self._owner = owner

    async def respond(self, reply: Message) -> None:
        if self._msg.reply:
            await self._owner.respond(self._msg.reply, reply)


_ACK = b"+ACK"
_NAK = b"-NAK"
_IN_PROGRESS = b"+WPI"
_TERM = b"+TERM"


def _nak_payload(delay: float | None) -> bytes:
    if not delay or delay <= 0:
        return _NAK
    return b'-NAK {"delay": %d}' % int(delay * 1e9)


class _Workers:
    """``size`` long-lived tasks handling queued items; no task per message.

    Items wait in a deque. A parked worker is woken only when there is work and no
    other wake-up is on its way, and a worker that takes an item while more wait wakes
    the next one before handling it: handlers that suspend run ``size`` at once, while
    handlers that do not are run back to back by one worker, with one or two wake-ups
    per burst instead of one per message. ``maxsize`` bounds the deque for
    :meth:`put_wait` (0 = unbounded). ``started[i]`` is when worker ``i`` began its
    current item (0.0 when idle).
    """

    def __init__(
        self, size: int, handle: Callable[[Any], Awaitable[None]], name: str, maxsize: int = 0
    ) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self.busy = 0
        self.started = [0.0] * size
        self.on_idle_slot: Callable[[], None] | None = None
        self._handle = handle
        self._name = name
        self._maxsize = maxsize
        self._parked: list[asyncio.Future[None]] = []
        self._space: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waking = False
        self._tasks = [
            asyncio.create_task(self._run(i), name=f"{name}-worker-{i}") for i in range(size)
        ]

    def put(self, item: Any) -> None:
        """Queues ``item`` (never blocks)."""
        self.items.append(item)
        if self._parked and not self._waking:
            self._wake()

    async def put_wait(self, item: Any) -> None:
        """Queues ``item`` once fewer than ``maxsize`` items wait."""
        loop = asyncio.get_running_loop()
        while self._maxsize and len(self.items) >= self._maxsize:
            space = loop.create_future()
            self._space.append(space)
            await space
        self.put(item)

    def _wake(self) -> None:
        parked = self._parked
        while parked:
            waiter = parked.pop()
            if not waiter.done():
                self._waking = True
                waiter.set_result(None)
                return

    async def _run(self, index: int) -> None:
        items, started, space = self.items, self.started, self._space
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        while True:
            if not items:
                waiter = loop.create_future()
                self._parked.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter.done() and not waiter.cancelled():
                        self._waking = False
                continue
            item = items.popleft()
            while space:
                waiting = space.popleft()
                if not waiting.done():
                    waiting.set_result(None)
                    break
            if item is None:
                return
            if items and self._parked and not self._waking:
                self._wake()
            self.busy += 1
            started[index] = time.monotonic()
            try:
                await self._handle(item)
            except Exception:  # never let one delivery kill the worker
                log.exception("%s: handling a delivery failed", self._name)
            except asyncio.CancelledError:
                # A handler may raise CancelledError without this task being cancelled
                # (it awaited a future someone else cancelled): that kills no worker.
                if task is None or task.cancelling():
                    raise
                log.warning("%s: a handler raised CancelledError", self._name)
            finally:
                started[index] = 0.0
                self.busy -= 1
                if self.on_idle_slot is not None:
                    self.on_idle_slot()

    def overdue(self, limit: float) -> int:
        """How many workers have been on their current item for over ``limit`` s."""
        since = time.monotonic() - limit
        return sum(1 for t in self.started if 0.0 < t < since)

    def owns(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether ``task`` is one of the workers (a handler is calling)."""
        return task is not None and task in self._tasks

    async def finish(self, timeout: float | None = None) -> None:
        """Lets every worker finish the queue (then its current item) and exit.

        Workers still busy after ``timeout`` seconds are cancelled (their handlers get
        a CancelledError; their unsettled deliveries are redelivered after ack_wait).
        """
        for _ in self._tasks:
            self.items.append(None)
        for waiter in self._parked:
            if not waiter.done():
                waiter.set_result(None)
        self._parked.clear()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current and not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.error(
                    "%s: %d handler(s) still running after %.1fs; cancelling them, their "
                    "deliveries will be redelivered",
                    self._name,
                    len(pending),
                    timeout,
                )
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=_STOP_TIMEOUT)
                if pending:
                    log.error("%s: %d handler(s) ignore cancellation", self._name, len(pending))
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a worker only ends by the sentinel


def _ack_fields(reply: bytes) -> tuple[str, int, int]:
    """(stream, delivery count, stream sequence) from a JetStream ack subject.

    Raises:
        ValueError, IndexError: not an ack subject.
    """
    tokens = reply.split(b".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return tokens[2].decode(), int(tokens[4]), int(tokens[5])
    # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>...
    return tokens[4].decode(), int(tokens[6]), int(tokens[7])


class _PullSubscription(Subscription):
    """Consumes one stream through the group's durable pull consumer.

    Flow control without a semaphore: the subscription keeps ``outstanding`` (messages
    asked for by live pull requests), ``queued`` (received, waiting for a worker) and
    ``busy`` (being handled), and only ever asks for ``free = max_concurrent -
    outstanding - queued - busy`` more, in batches of at least half the slots (at most
    ``fetch_batch``), so at most ``max_concurrent`` handlers run and nothing is fetched
    that would sit unhandled while its ack clock runs. ``outstanding`` is a guess once
    pull requests may outlive it (the connection came back, heartbeats went silent:
    the subscription asks again, and the old requests can still deliver), so more can
    arrive than there are free slots: deliveries that wait for a worker over a quarter
    of ``ack_wait`` get ``+WPI`` every quarter of ``ack_wait`` and once more when their
    handler starts late, so none is redelivered while it waits and every handler has
    at least three quarters of ``ack_wait``. ``max_concurrent`` long-lived
    worker tasks run the handlers; deliveries past ``max_deliver`` skip them and go to
    a dead-letter lane (one more task). Pull requests linger on the
    server for ``pull_expires`` seconds with idle heartbeats, so new messages are
    delivered at once; the server's 408/409 status replies give back the unused part of
    a request. When the connection comes back, heartbeats stop, or the server reports
    the consumer missing, the subscription re-binds (re-creating the consumer if the
    server lost it from just after the group's last known ack floor) with backoff and
    asks again: it survives server restarts.

    ``stop`` releases (NAKs) deliveries fetched but not started, except those on their
    last allowed delivery: these are handled before ``stop`` returns, since a release
    would cost them that delivery without a handler run. ``stop`` and ``drain`` wait at
    most ``ack_wait`` for running handlers, then cancel them (their deliveries are
    redelivered); called by a handler, they return at once and the close completes
    when the handler returns.
    """

    def __init__(
        self,
        owner: JetStreamSubscriber,
        handler: MessageHandler,
        stream: str,
    ) -> None:
        self._owner = owner
        self._handler = handler
        self._config = owner.config
        self._client = owner.client
        self._stream = stream
        self._consumer = _Consumer(owner.client, stream, owner.config, owner.message_type)
        self._codec = owner._codec
        self._capacity = owner.config.max_concurrent
        self._threshold = max(1, min(owner.config.fetch_batch, (self._capacity + 1) // 2))
        self._expires = owner.pull_expires
        self._heartbeat = owner.idle_heartbeat
        self._refresh_after = owner.config.ack_wait / 4
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._outstanding = 0
        self._last_seen = time.monotonic()
        self._pause_until = 0.0
        self._floor_checked = time.monotonic()
        # sequence -> (reason, deliveries) of a dead letter that could not be stored:
        # its redelivery, past max_deliver, is dead-lettered with them.
        self._kept: dict[int, tuple[str, int]] = {}
        self._need_bind = False
        self._stopping = False
        self._releasing = False
        self._wake = asyncio.Event()
        self._inbox = ""
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self._consumer.name}"
        self._next_subject_bytes = self._next_subject.encode()
        self._inbox_bytes = b""
        self._sub: NatsSubscription | None = None
        self._workers: _Workers | None = None
        self._dead_lane: asyncio.Queue[_Raw | None] = asyncio.Queue()
        self._dead_lane_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._remove_listener: Any = None
        self._last_status: ConnectionStatus | None = None
        self._writer: Writer | None = None

    async def start(self) -> None:
        await self._consumer.ensure()
        nc = self._client.connection
        self._writer = Writer(nc)
        self._inbox = nc.new_inbox()
        self._inbox_bytes = self._inbox.encode()
        name = f"deltran-{self._consumer.name}"
        workers = self._workers = _Workers(self._capacity, self._deliver, name)
        workers.on_idle_slot = self._on_idle_slot
        try:
            self._sub = await self._client.subscribe_raw(
                self._inbox,
                self._on_delivery,
                pending_msgs_limit=_INBOX_PENDING_MSGS,
                pending_bytes_limit=_INBOX_PENDING_BYTES,
            )
        except BaseException:
            self._stopping = True
            await workers.finish()  # idle: they exit at once
            raise
        self._dead_lane_task = asyncio.create_task(
            self._drive_dead_lane(), name=f"{name}-dead-letters"
        )
        self._remove_listener = self._client.on_status(self._on_status)
        self._wake.set()
        self._pump_task = asyncio.create_task(self._pump(), name=f"{name}-pump")
        self._refresh_queued()

    # -- flow control --------------------------------------------------------------------

    def _free(self) -> int:
        workers = self._workers
        assert workers is not None
        return self._capacity - self._outstanding - workers.busy - len(workers.items)

    def _wanted(self) -> int:
        """How many messages to ask for now (0: none); see the class doc.

        A handler that has run longer than ``ack_wait`` no longer holds its slot for
        fetching: its message is being redelivered, and that redelivery must be fetched
        so that a message past ``max_deliver`` is dead-lettered while the handler hangs.
        The handler itself keeps its worker, so no more than ``max_concurrent`` run.
        """
        free = self._free()
        if free >= self._threshold:
            return min(free, self._config.fetch_batch)
        assert self._workers is not None
        overdue = self._workers.overdue(self._config.ack_wait)
        return max(0, free + overdue) if overdue else 0

    def _on_idle_slot(self) -> None:
        """After every handled delivery: ask for more as soon as half the slots are free.

        The request is queued and written out at once, from the worker, so the next
        batch is on its way while the worker still handles the rest of this one; only
        when asking needs more than a write (re-binding, a pause after 409, no
        connection) is it left to the pump.
        """
        workers = self._workers
        assert workers is not None
        if self._capacity - self._outstanding - workers.busy - len(workers.items) < self._threshold:
            return
        if (
            self._stopping
            or self._need_bind
            or not self._client.is_connected
            or time.monotonic() < self._pause_until
        ):
            self._wake.set()
            return
        try:
            self._ask()
        except nats.errors.Error:
            self._wake.set()  # the pump retries with backoff

    def _on_status(self, status: ConnectionStatus) -> None:
        previous, self._last_status = self._last_status, status
        if status is ConnectionStatus.CLOSED:
            self._begin_close(release=False)  # the connection is gone for good
        elif status is ConnectionStatus.CONNECTED and previous not in (None, status):
            # Pull requests made on the lost connection may be gone (server restart);
            # check the consumer still exists, then ask again.
            self._outstanding = 0
            self._need_bind = True
            self._wake.set()

    def _on_delivery(self, subject: bytes, reply: bytes, data: bytes, block: bytes | None) -> None:
        """Every message of the inbox, as it is read (a raw route: see ``_wire``)."""
        now = self._last_seen = time.monotonic()
        if reply:  # a delivery: its reply subject is the ack subject
            if self._outstanding > 0:
                self._outstanding -= 1
            try:
                stream, attempt, sequence = _ack_fields(reply)
            except (ValueError, IndexError):
                log.error("delivery on %r with a foreign ack subject %r ignored", subject, reply)
                return
            raw = (subject, reply, data, block, stream, attempt, sequence, now)
            if attempt > self._config.max_deliver:
                self._dead_lane.put_nowait(raw)
            elif self._releasing and attempt < self._config.max_deliver:
                self._release(reply)
            else:
                assert self._workers is not None
                self._workers.put(raw)
            return
        headers = headers_of(block) or {}
        status = headers.get("Status")
        if status == "100":  # idle heartbeat
            return
        pending = headers.get("Nats-Pending-Messages", "")
        description = headers.get("Description", "")
        if status in ("404", "408"):
            self._release_requested(pending)
        elif status == "409":
            if "Consumer Deleted" in description:
                self._need_bind = True
            log.info("pull on %s: 409 %s", self._next_subject, description)
            self._release_requested(pending)
            self._pause_until = time.monotonic() + 0.2
        else:  # 503: no consumer or no JetStream behind the request subject
            log.warning("pull on %s: status %s %s", self._next_subject, status, description)
            self._outstanding = 0
            self._need_bind = True
            self._pause_until = time.monotonic() + _UNAVAILABLE_PAUSE
        self._wake.set()

    def _release_requested(self, pending: str) -> None:
        if pending.isdigit():
            self._outstanding = max(0, self._outstanding - int(pending))
        else:
            self._outstanding = 0

    async def _pump(self) -> None:
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self._heartbeat):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._pull()
                failures = 0
            except (MessageBusError, nats.errors.Error, OSError) as exc:
                failures += 1
                delay = min(_MAX_RECOVERY_DELAY, 0.05 * 2**failures)
                log.warning("consumer %s: %s; retrying in %.2fs", self._consumer.name, exc, delay)
                await asyncio.sleep(delay)
                self._wake.set()

    async def _pull(self) -> None:
        client = self._client
        if not client.is_connected:
            return
        now = time.monotonic()
        if self._outstanding > 0 and now - self._last_seen > self._heartbeat * 2.5:
            log.info("consumer %s: pull requests went silent; asking again", self._consumer.name)
            self._outstanding = 0
        if not self._need_bind and now - self._floor_checked >= self._heartbeat:
            self._floor_checked = now
            if not await self._consumer.refresh(_REBIND_TIMEOUT):
                self._need_bind = True
        if self._need_bind:
            # Short timeouts: a restarted server can drop API requests while JetStream
            # recovers; asking again soon beats waiting out the API timeout.
            await self._consumer.ensure(timeout=_REBIND_TIMEOUT)
            self._need_bind = False
            self._floor_checked = time.monotonic()
        if now < self._pause_until:
            await asyncio.sleep(self._pause_until - now)
        if not self._stopping:
            self._ask()

    def _ask(self) -> None:
        """Sends the pull requests :meth:`_wanted` says, and writes them out now.

        Raises:
            nats.errors.Error: The connection refused them.
        """
        writer = self._writer
        assert writer is not None
        asked = False
        while (batch := self._wanted()) > 0:
            request = b'{"batch":%d,"expires":%d,"idle_heartbeat":%d}' % (
                batch,
                int(self._expires * 1e9),
                int(self._heartbeat * 1e9),
            )
            writer.write_request(self._next_subject_bytes, self._inbox_bytes, request)
            self._outstanding += batch
            asked = True
        if asked:
            self._last_seen = time.monotonic()
            writer.write_out()

    def _refresh_queued(self) -> None:
        """Restarts the ack clock of deliveries that have waited for a worker over a
        quarter of ``ack_wait``; runs every quarter of ``ack_wait`` until the close.

        Deliveries wait only when more arrived than there are free slots: pull requests
        of a lost connection, or given up on after silent heartbeats, can still be alive
        on the server, and the subscription cannot tell how many. A waiting delivery
        must not expire: the server would redeliver it (possibly to another member)
        while this one still handles it later.
        """
        self._refresh_timer = asyncio.get_running_loop().call_later(
            self._refresh_after, self._refresh_queued
        )
        workers = self._workers
        if workers is None or not workers.items:
            return
        since = time.monotonic() - self._refresh_after
        for raw in workers.items:
            if raw is not None and raw[7] < since:
                self._touch(raw[1])

    def _touch(self, reply: bytes) -> None:
        """Sends ``+WPI`` for a delivery not yet handled (best effort)."""
        assert self._writer is not None
        try:
            self._writer.write_reply(reply, _IN_PROGRESS)
        except nats.errors.Error as exc:
            log.debug("could not refresh %r: %s", reply, exc)

    # -- deliveries -------------------------------------------------------------------------

    async def _drive_dead_lane(self) -> None:
        """Dead-letters deliveries past ``max_deliver`` without taking a handler slot."""
        config = self._config
        expired = max_deliveries_reason(config.max_deliver, ACK_WAIT_EXPIRED)
        kept = self._kept
        while True:
            raw = await self._dead_lane.get()
            if raw is None:
                return
            # This delivery only carries the message to the dead-letter stream: the
            # reason and count are those of the last delivery that reached a handler.
            reason, deliveries = kept.pop(raw[6], (expired, config.max_deliver))
            try:
                await self.dead_letter(raw, deliveries, reason)
            except Exception:  # never let one delivery kill the lane
                log.exception("dead-lettering a message on %r failed", raw[0])

    async def _deliver(self, raw: _Raw) -> None:
        if time.monotonic() - raw[7] > self._refresh_after:
            self._touch(raw[1])  # it waited for a worker: give the handler its ack_wait
        subject = raw[0].decode("utf-8", "replace")
        codec = self._codec
        message = codec.decode_block(subject, raw[3], raw[2])
        if message is None:  # not laid out as this library writes it: the full decode
            try:
                message = codec.decode(subject, headers_of(raw[3]), raw[2])
            except DecodeError as exc:
                await self.dead_letter(raw, raw[5], f"undecodable: {exc}")
                return
        delivery = _JetStreamDelivery(self, raw, message, subject)
        try:
            await run_handler(self._handler, delivery, self._config)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # The handler raised CancelledError while nothing cancelled this worker
            # (it awaited a future someone else cancelled): a failure like any other.
            await settle_failure(delivery, exc, self._config)

    async def settle(self, reply: bytes, payload: bytes) -> None:
        """Sends an acknowledgement (``+ACK``, ``-NAK``, ``+TERM``, ``+WPI``) to ``reply``.

        The acknowledgement is queued on the connection at once; acknowledgements of
        one burst are written to the socket together.

        Raises:
            BusConnectionError: the connection is closed or its buffer is full.
        """
        writer = self._writer
        assert writer is not None
        try:
            if writer.write_reply(reply, payload):
                await writer.relieve()
        except nats.errors.Error as exc:
            raise BusConnectionError(f"could not settle the delivery: {exc}") from exc

    def _release(self, reply: bytes) -> None:
        """NAKs a delivery that will not be handled, so it is redelivered at once."""
        assert self._writer is not None
        try:
            self._writer.write_reply(reply, _NAK)
        except nats.errors.Error as exc:
            log.debug("could not release %r: %s", reply, exc)

    async def dead_letter(self, raw: _Raw, deliveries: int, reason: str) -> None:
        """Stores the dead letter in ``DEAD_LETTERS`` (awaiting its PubAck), then TERMs.

        Publish-before-term: if the process dies between the two, the message is
        redelivered and dead-lettered again under the same ``Nats-Msg-Id``
        (``dlq:{consumer}:{stream}:{seq}``), which JetStream deduplicates. If the dead
        letter cannot be stored, the message is NAKed instead of TERMed, so it stays in
        the consumer and comes back later (the server does not limit deliveries, so
        that NAK is never final); past ``max_deliver``, that redelivery is
        dead-lettered again with the same reason. A dead letter too large for the
        server's ``max_payload`` cannot ever be stored: it is logged as an error and
        NAKed with ``nak_max_delay``, again and again, until an operator raises the
        limit or removes the message.
        """
        subject, reply, data, block, stream, attempt, sequence, _ = raw
        config = self._config
        if config.dead_letter:
            dead = encode_dead_letter(
                Encoded(subject.decode("utf-8", "replace"), headers_of(block) or {}, data),
                reason=reason,
                stream=stream,
                sequence=sequence,
                deliveries=deliveries,
                consumer_group=config.consumer_group,
                consumer=self._consumer.name,
                failed_at=datetime.now(UTC),
            )
            try:
                await self._owner._dead_letter_sender.send(
                    dead.headers["Nats-Msg-Id"], block_of(dead), True, None
                )
            except (PublishError, ValidationError) as exc:
                too_large = (
                    isinstance(exc, PublishError) and exc.reason is PublishFailure.MESSAGE_TOO_LARGE
                )
                log.error(
                    "dead letter of %s #%d not stored (%s); NAKing it instead%s",
                    stream,
                    sequence,
                    exc,
                    ": it exceeds max_payload, raise the server's limit or remove it"
                    if too_large
                    else "",
                )
                if attempt >= config.max_deliver:
                    kept = self._kept
                    if len(kept) >= _MAX_KEPT_REASONS:
                        kept.clear()
                    kept[sequence] = (reason, deliveries)
                delay = config.nak_max_delay if too_large else config.nak_delay(attempt)
                await self.settle(reply, _nak_payload(delay))
                return
        log.warning(
            "dead-lettered %s #%d after %d deliveries: %s", stream, sequence, deliveries, reason
        )
        await self.settle(reply, _TERM)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not self._stopping

    async def stop(self) -> None:
        await self._close(release=True)

    async def drain(self) -> None:
        await self._close(release=False)

    async def _close(self, *, release: bool) -> None:
        closing = self._begin_close(release=release)
        if self._workers is not None and self._workers.owns(asyncio.current_task()):
            return  # called by a handler: the close completes once the handler returns
        await asyncio.shield(closing)

    def _begin_close(self, *, release: bool) -> asyncio.Task[None]:
        if self._shutdown is None:
            self._stopping = True
            self._shutdown = asyncio.ensure_future(self._run_close(release))
        return self._shutdown

    async def _run_close(self, release: bool) -> None:
        self._stopping = True
        self._releasing = release
        self._wake.set()
        if self._remove_listener is not None:
            self._remove_listener()
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
        await _close_inbox(self._client, self._sub)
        workers = self._workers
        if workers is not None:
            if release:
                # A delivery on its last allowed attempt is handled, not released: a
                # release would cost it that attempt without a handler run.
                last = self._config.max_deliver
                items = workers.items
                keep = [raw for raw in items if raw is not None and raw[5] >= last]
                for raw in items:
                    if raw is not None and raw[5] < last:
                        self._release(raw[1])
                items.clear()
                items.extend(keep)
            await workers.finish(self._config.ack_wait)
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
        if self._dead_lane_task is not None:
            self._dead_lane.put_nowait(None)
            await self._dead_lane_task
        await _flush(self._client)
        self._owner._forget(self)


class _CoreSubscription(Subscription):
    """A core NATS subscription in the group's queue group."""

    def __init__(self, owner: JetStreamSubscriber, handler: MessageHandler) -> None:
        self._owner = owner
        self._handler = handler
        self._client = owner.client
        self._codec = owner._codec
        key = owner.config.partition_key
        self._subject = f"{owner.message_type.subject_prefix}.{key.suffix if key else '>'}"
        self._capacity = owner.config.max_concurrent
        self._sub: NatsSubscription | None = None
        self._workers: _Workers | None = None
        self._stopping = False
        self._shutdown: asyncio.Task[None] | None = None
        self._reply_codec = WireCodec(owner.publisher_config.partitions)
        self._remove_listener: Any = None

    async def start(self) -> None:
        nc = self._client.connection
        workers = self._workers = _Workers(
            self._capacity, self._deliver, f"deltran-{self._subject}", maxsize=self._capacity
        )
        try:
            self._sub = await nc.subscribe(
                self._subject,
                queue=self._owner.config.consumer_group,
                cb=self._on_message,
            )
            await ordered_flush(nc, self._client.config.connection_timeout)  # the SUB is in effect
        except BaseException:
            self._stopping = True
            if self._sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await self._sub.unsubscribe()
            await workers.finish()  # idle: they exit at once
            raise
        self._remove_listener = self._client.on_status(self._on_status)

    def _on_status(self, status: ConnectionStatus) -> None:
        if status is ConnectionStatus.CLOSED:
            self._begin_close()

    async def _on_message(self, msg: Msg) -> None:
        assert self._workers is not None
        # Back-pressure: beyond max_concurrent waiting messages, nats-py buffers them
        # (and reports a slow consumer past its pending limits).
        await self._workers.put_wait(msg)

    async def _deliver(self, msg: Msg) -> None:
        try:
            message = self._codec.decode(msg.subject, msg.headers, msg.data)
        except DecodeError as exc:
            log.warning("dropped an undecodable core message on %s: %s", msg.subject, exc)
            return
        await run_handler(self._handler, _CoreDelivery(self, msg, message), self._owner.config)

    async def respond(self, reply_subject: str, reply: Message) -> None:
        encoded = self._reply_codec.encode(reply)
        try:
            await self._client.connection.publish(
                reply_subject, encoded.body, headers=dict(encoded.headers)
            )
        except nats.errors.Error as exc:
            raise BusConnectionError(f"could not send the reply: {exc}") from exc

    @property
    def active(self) -> bool:
        return not self._stopping

    async def stop(self) -> None:
        await self._close()

    async def drain(self) -> None:
        await self._close()

    async def _close(self) -> None:
        closing = self._begin_close()
        if self._workers is not None and self._workers.owns(asyncio.current_task()):
            return  # called by a handler: the close completes once the handler returns
        await asyncio.shield(closing)

    def _begin_close(self) -> asyncio.Task[None]:
        if self._shutdown is None:
            self._stopping = True
            self._shutdown = asyncio.ensure_future(self._run_close())
        return self._shutdown

    async def _run_close(self) -> None:
        # Core messages cannot be redelivered: stop and drain both handle what arrived.
        if self._remove_listener is not None:
            self._remove_listener()
        await _close_inbox(self._client, self._sub)
        if self._workers is not None:
            await self._workers.finish(self._owner.config.ack_wait)
        await _flush(self._client)
        self._owner._forget(self)


async def _close_inbox(client: NatsClient, sub: NatsSubscription | None) -> None:
    """Unsubscribes, first handling what the server already sent if it is reachable."""
    if sub is None:
        return
    try:
        if client.is_connected:
            async with asyncio.timeout(_STOP_TIMEOUT):
                # nats-py's drain writes its PING ahead of its UNSUB, so its PONG does not
                # mean the server stopped sending: first an UNSUB the server has processed,
                # so everything it sent before is read (and routed) by now.
                nc = client.connection
                await nc._send_unsubscribe(sub._id)
                await ordered_flush(nc, _STOP_TIMEOUT)
                await sub.drain()  # type: ignore[no-untyped-call]
        elif not client.is_closed:
            await sub.unsubscribe()
    except (nats.errors.Error, TimeoutError, BusConnectionError, ClosedError) as exc:
        log.debug("closing a subscription: %s", exc)


async def _flush(client: NatsClient) -> None:
    """Makes sure settled acks reached the server, if it is reachable."""
    if client.is_connected:
        try:
            await ordered_flush(client.connection, _STOP_TIMEOUT)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("flush after stop: %s", exc)


class JetStreamSubscriber(Subscriber):
    """Consumes one message type from NATS.

    Stream-backed types (with ``use_jetstream``) are consumed through one durable pull
    consumer per (stream, consumer name): every member of a consumer group binds to the
    same consumer, so members share the work, and a group that restarts resumes where
    it stopped. The consumer is created if absent (explicit acks, ``ack_wait``, no
    server-side delivery limit, ``max_ack_pending``, filter from ``partition_key``,
    deliver all); see :class:`_PullSubscription` for the fetch loop. The subscriber
    enforces ``max_deliver`` itself, so a message is never dropped by the server: a
    dead letter that cannot be stored (dead-letter stream missing or unavailable) is
    NAKed and dead-lettered on a later delivery.

    Each delivery is decoded with :class:`WireCodec` and settled by :func:`run_handler`:
    ACK, NAK with the delay computed from the delivery count, or TERM with a dead
    letter. Dead letters are published to ``DEAD_LETTERS`` and acknowledged by
    JetStream before the TERM is sent (publish-before-term), so a dead letter is
    durable even if the process dies right after. A message that cannot be decoded is
    dead-lettered with the decode error; a delivery past ``max_deliver`` (its last
    allowed delivery timed out, or its dead letter could not be stored) is
    dead-lettered without running the handler.

    Core-only types (or ``use_jetstream=False``) use a core subscription in a queue
    group named after the consumer group; a handler's reply answers the request.

    Args:
        client: A connected :class:`NatsClient`.
        message_type: The type to consume.
        config: Group, durable name, concurrency and redelivery settings.
        catalog: Which stream holds the type (defaults to the design's table).
        publisher_config: Retry settings for storing dead letters and sending replies.
        pull_expires: Seconds a pull request lingers on the server.
        idle_heartbeat: Seconds between the server's heartbeats on an idle pull request
            (at most half of ``pull_expires``); 2.5 missed heartbeats make the
            subscription ask again.
    """

    def __init__(
        self,
        client: NatsClient,
        message_type: MessageType,
        config: SubscriberConfig | None = None,
        catalog: StreamCatalog | None = None,
        *,
        publisher_config: PublisherConfig | None = None,
        pull_expires: float = 15.0,
        idle_heartbeat: float = 3.0,
    ) -> None:
        if not 0 < idle_heartbeat * 2 <= pull_expires:
            raise ValidationError(
                "idle_heartbeat", idle_heartbeat, "must be > 0 and at most half of pull_expires"
            )
        self.client = client
        self.message_type = message_type
        self.config = config if config is not None else SubscriberConfig()
        self.catalog = catalog if catalog is not None else StreamCatalog.default()
        self.publisher_config = (
            publisher_config
            if publisher_config is not None
            else PublisherConfig(circuit_breaker_threshold=0)
        )
        self.pull_expires = pull_expires
        self.idle_heartbeat = idle_heartbeat
        self._codec = WireCodec()
        self._dead_letter_sender = _Sender(client, self.publisher_config)
        spec = self.catalog.stream_for(message_type) if self.config.use_jetstream else None
        self.stream = spec.name if spec is not None else None
        self._subscriptions: list[_PullSubscription | _CoreSubscription] = []
        self._closed = False

    async def subscribe(self, handler: MessageHandler) -> Subscription:
        if self._closed:
            raise ClosedError("the subscriber was closed")
        if not await self.client.wait_connected(self.client.config.connection_timeout):
            raise BusConnectionError("NATS is unreachable")
        subscription: _PullSubscription | _CoreSubscription
        if self.stream is None:
            subscription = _CoreSubscription(self, handler)
        else:
            subscription = _PullSubscription(self, handler, self.stream)
        try:
            await subscription.start()
        except nats.errors.Error as exc:
            raise BusConnectionError(f"could not subscribe: {exc}") from exc
        self._subscriptions.append(subscription)
        return subscription

    def _forget(self, subscription: _PullSubscription | _CoreSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    async def close(self) -> None:
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.stop()


__all__ = ["JetStreamSubscriber"]
