"""The pull loop: fetch from the group's durable consumer, hand deliveries to workers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import nats.errors
from nats.aio.subscription import Subscription as NatsSubscription

from message_bus.domain.catalog import MessageType
from message_bus.domain.codec import Encoded
from message_bus.domain.dead_letter import encode_dead_letter, unwrap_replay
from message_bus.domain.errors import (
    AckNotConfirmed,
    BusConnectionError,
    DecodeError,
    MessageBusError,
    PermissionDenied,
    PublishError,
    PublishFailure,
    ValidationError,
)
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.outcome import ACK_WAIT_EXPIRED, max_deliveries_reason
from message_bus.ports.subscriber import (
    MessageHandler,
    Subscription,
    run_handler,
    settle_failure,
)

from ..client import ConnectionStatus, NatsClient
from ..framing import BlockCodec, EncodedBlock, block_of
from ..headers import headers_of
from ..internals import Writer
from ..originals import original_of
from .closing import close_inbox, flush_acks
from .confirm import AckConfirmer
from .consumer import ConsumerBinding
from .delivery import (
    ACK,
    IN_PROGRESS,
    NAK,
    TERM,
    JetStreamDelivery,
    Raw,
    ack_fields,
    nak_payload,
    new_raw,
    redirected,
)
from .inflight import InFlight, Settled
from .limits import HandlerLimit, HandlerLimits
from .workers import Workers

log = logging.getLogger("message_bus.nats.subscriber")

_INBOX_PENDING_MSGS = 1024 * 1024
_INBOX_PENDING_BYTES = 256 * 1024 * 1024
_MAX_RECOVERY_DELAY = 2.0
_REBIND_TIMEOUT = 1.0
_UNAVAILABLE_PAUSE = 0.5
_MAX_KEPT_REASONS = 10_000


class DeadLetterSender(Protocol):
    """Stores a dead letter in JetStream with retries, raising the last error."""

    async def send(
        self,
        message_id: str,
        block: EncodedBlock,
        *,
        jetstream: bool,
        message_type: MessageType | None,
    ) -> object:
        """Publishes ``block`` under ``message_id`` and waits for its acknowledgement.

        Raises:
            PublishError: It was not stored.
            ValidationError: It cannot be sent as it is.
        """


class PullSubscription(Subscription):
    """Consumes one stream through the group's durable pull consumer.

    Flow control without a semaphore: the subscription keeps ``outstanding`` (messages
    asked for by live pull requests), ``queued`` (received, waiting for a worker) and
    ``busy`` (being handled), and only ever asks for ``free = max_concurrent -
    outstanding - queued - busy`` more, in batches of at least half the slots (at most
    ``fetch_batch``), so at most ``max_concurrent`` handlers run and nothing is fetched
    that would sit unhandled while its ack clock runs. ``outstanding`` is a guess once
    pull requests may outlive it (the connection came back, heartbeats went silent:
    the subscription asks again, and the old requests can still deliver), so more can
    arrive than there are free slots.

    Keep-alive: every stream sequence queued or running here has an :class:`InFlight`
    entry; one timer, every quarter of ``ack_wait``, walks them and sends ``+WPI`` for
    each not refreshed for an eighth of ``ack_wait`` (and once more when a handler
    starts late), so neither a waiting delivery nor a running handler's is redelivered,
    however long the handler runs. Handlers past ``max_handler_time`` are cut off
    (cancelled, their message NAKed) by one more timer (:class:`HandlerLimits`), at
    their deadline. A redelivery of a sequence in flight here supersedes the delivery
    (acks go to the newest ack subject) instead of starting a second handler; a
    redelivery of a sequence this subscription acked (the ACK was lost) is acked again,
    also while the handler that acked it still runs. A delivery NAKed (by its handler,
    or for it) leaves the in-flight table at once: it is no longer kept alive (the NAK
    and its delay take effect), and its redelivery is a new delivery, handled when a
    worker is free, even while the handler that NAKed it still runs. Sequences count
    within one stream and consumer: when the binding reports a new generation (the
    stream or the consumer was re-created), the subscription forgets the sequences it
    acked and tracked, and drops the deliveries of the old consumer that wait for a
    worker (the new consumer delivers what is left). ``max_concurrent`` long-lived
    worker tasks run the handlers; deliveries past ``max_deliver`` skip them and go to
    a dead-letter lane (one more task). Pull requests linger on the
    server for ``pull_expires`` seconds with idle heartbeats, so new messages are
    delivered at once; the server's 408/409 status replies give back the unused part of
    a request. When the connection comes back, heartbeats stop, or the server reports
    the consumer missing, the subscription re-binds (re-creating the consumer if the
    server lost it from just after the group's last known ack floor) with backoff and
    asks again: it survives server restarts.

    With ``confirm_acks``, ACKs are confirmed by the server (:class:`AckConfirmer`).
    If the server refuses this subscription's ack (or pull) subject, the subscription
    fails with :class:`PermissionDenied` and stops.

    ``stop`` releases (NAKs) deliveries fetched but not started, except those on their
    last allowed delivery: these are handled before ``stop`` returns, since a release
    would cost them that delivery without a handler run. ``stop`` and ``drain`` wait at
    most ``ack_wait`` for running handlers, then cancel them (their deliveries are
    redelivered); called by a handler, they return at once and the close completes
    when the handler returns.

    Args:
        client: The connection to pull on.
        handler: Runs once per delivery.
        consumer: The group's durable consumer (bound by :meth:`start`).
        config: Concurrency, batch, redelivery and dead-letter settings.
        codec: Decodes deliveries.
        dead_letter_sender: Stores dead letters (publish-before-term).
        pull_expires: Seconds a pull request lingers on the server.
        idle_heartbeat: Seconds between the server's heartbeats on an idle request.
        on_closed: Called with this subscription once it has closed.
    """

    def __init__(
        self,
        client: NatsClient,
        handler: MessageHandler,
        consumer: ConsumerBinding,
        config: SubscriberConfig,
        *,
        codec: BlockCodec,
        dead_letter_sender: DeadLetterSender,
        pull_expires: float,
        idle_heartbeat: float,
        on_closed: Callable[[Subscription], None],
    ) -> None:
        self._handler = handler
        self._config = config
        self._client = client
        self._consumer = consumer
        self._codec = codec
        self._dead_letter_sender = dead_letter_sender
        self._on_closed = on_closed
        self._capacity = config.max_concurrent
        self._threshold = max(1, min(config.fetch_batch, (self._capacity + 1) // 2))
        self._expires = pull_expires
        self._heartbeat = idle_heartbeat
        self._refresh_after = config.ack_wait / 4
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._limits = HandlerLimits(config.max_handler_time, self._capacity)
        self._generation = consumer.generation
        self._stream_created = consumer.stream_created
        # Ack subjects of handlers still running on a deleted stream: the re-created
        # stream's consumer has the same name and sequences, so an acknowledgement sent
        # there would settle another message.
        self._stale: set[bytes] = set()
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
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{consumer.stream}.{consumer.name}"
        self._next_subject_bytes = self._next_subject.encode()
        self._inbox_bytes = b""
        self._sub: NatsSubscription | None = None
        self._workers: Workers[Raw] | None = None
        self._dead_lane: asyncio.Queue[Raw | None] = asyncio.Queue()
        self._dead_lane_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._remove_listener: Any = None
        self._last_status: ConnectionStatus | None = None
        self._writer: Writer | None = None
        self._in_flight: dict[int, InFlight] = {}
        self._acked = Settled()
        self._confirmer: AckConfirmer | None = None
        self._remove_denied: Any = None
        self._ended = asyncio.Event()
        self.superseded = 0
        """Redeliveries that arrived while their sequence was in flight here."""
        self.reacked = 0
        """Redeliveries of sequences acked here, acked again instead of handled."""

    @property
    def in_flight(self) -> int:
        """Sequences queued or running on this subscription."""
        return len(self._in_flight)

    async def start(self) -> None:
        await self._consumer.ensure()
        self._generation = self._consumer.generation
        self._stream_created = self._consumer.stream_created
        nc = self._client.connection
        self._writer = Writer(nc)
        self._inbox = nc.new_inbox()
        self._inbox_bytes = self._inbox.encode()
        name = f"deltran-{self._consumer.name}"
        workers = self._workers = Workers(self._capacity, self._deliver, name)
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
        if self._config.confirm_acks:
            confirmer = AckConfirmer(self._client, self._writer, self._config.ack_confirm_timeout)
            try:
                await confirmer.start()
            except BaseException:
                await confirmer.close()
                self._stopping = True
                await close_inbox(self._client, self._sub)
                await workers.finish()
                raise
            self._confirmer = confirmer
        self._dead_lane_task = asyncio.create_task(
            self._drive_dead_lane(), name=f"{name}-dead-letters"
        )
        self._remove_listener = self._client.on_status(self._on_status)
        self._remove_denied = self._client.on_permission_denied(self._on_denied)
        self._wake.set()
        self._pump_task = asyncio.create_task(self._pump(), name=f"{name}-pump")
        self._keep_alive()

    # -- flow control --------------------------------------------------------------------

    def _free(self) -> int:
        workers = self._workers
        assert workers is not None
        return self._capacity - self._outstanding - workers.busy - len(workers.items)

    def _wanted(self) -> int:
        """How many messages to ask for now (0: none); see the class doc.

        Only free slots are asked for, however long a handler runs: its delivery is
        kept alive, not redelivered, and a message fetched for a busy slot would wait
        (kept alive too) behind it while other members of the group could handle it.
        """
        free = self._free()
        if free >= self._threshold:
            return min(free, self._config.fetch_batch)
        return 0

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
        """Every message of the inbox, as it is read (a raw route: see :mod:`..internals`)."""
        now = self._last_seen = time.monotonic()
        if reply:  # a delivery: its reply subject is the ack subject
            if self._outstanding > 0:
                self._outstanding -= 1
            try:
                stream, attempt, sequence = ack_fields(reply)
            except (ValueError, IndexError):
                log.error("delivery on %r with a foreign ack subject %r ignored", subject, reply)
                return
            # Only a redelivery (count > 1) can repeat a sequence: a first delivery with a
            # known sequence is a new message of a stream that was re-created.
            entry = self._in_flight.get(sequence) if attempt > 1 else None
            if entry is not None:  # a redelivery of a message in flight here
                delivery = entry.delivery
                if delivery is not None and delivery.acked:  # its ACK was lost
                    self.reacked += 1
                    self._touch(reply, ACK)
                    return
                entry.supersede(reply, attempt)
                self.superseded += 1
                if entry.started:
                    self._touch(reply)  # its handler runs: keep the new delivery alive
                log.info(
                    "%s #%d redelivered (%d) while in flight here: superseded, not rerun",
                    stream,
                    sequence,
                    attempt,
                )
                return
            if attempt > 1 and sequence in self._acked:  # acked here: the ACK was lost
                self.reacked += 1
                self._touch(reply, ACK)
                return
            raw: Raw = new_raw(Raw, (subject, reply, data, block, stream, attempt, sequence, now))
            if attempt > self._config.max_deliver:
                self._dead_lane.put_nowait(raw)
            elif self._releasing and attempt < self._config.max_deliver:
                self._release(reply)
            else:
                assert self._workers is not None
                self._in_flight[sequence] = InFlight(reply, attempt, now)
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
        self._check_generation()
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
            self._check_generation()
        if now < self._pause_until:
            await asyncio.sleep(self._pause_until - now)
        if not self._stopping:
            self._ask()

    def _check_generation(self) -> None:
        """Forgets what is tracked by stream sequence once the consumer or its stream
        was re-created (see the class doc): the new one's sequences are other messages."""
        generation = self._consumer.generation
        if generation == self._generation:
            return
        self._generation = generation
        stream_created, self._stream_created = self._stream_created, self._consumer.stream_created
        new_stream = stream_created != self._stream_created
        self._acked = Settled()
        self._kept.clear()
        for entry in self._in_flight.values():
            entry.detached = True  # its handler may go on
            delivery = entry.delivery
            if new_stream and delivery is not None:
                self._stale.add(delivery.reply)  # its acks would settle another message
        self._in_flight = {}
        dropped = 0
        workers = self._workers
        if workers is not None:
            items = workers.items
            dropped = sum(1 for raw in items if raw is not None)
            kept = [raw for raw in items if raw is None]
            items.clear()
            items.extend(kept)
        lane = self._dead_lane
        for _ in range(lane.qsize()):  # only None (the close) is kept
            raw = lane.get_nowait()
            if raw is None:
                lane.put_nowait(raw)
            else:
                dropped += 1
        log.warning(
            "consumer %s on %s was re-created (or its stream was): %d queued deliveries of "
            "the old one dropped, acknowledged sequences forgotten",
            self._consumer.name,
            self._consumer.stream,
            dropped,
        )

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

    def _keep_alive(self) -> None:
        """Keeps every delivery in flight here alive; runs every quarter of ``ack_wait``
        until the close (see the class doc).

        Each entry not refreshed for an eighth of ``ack_wait`` gets ``+WPI``, so no
        delivery goes much more than a quarter of ``ack_wait`` without one (a late walk
        on a busy event loop has margin) while it waits for a worker or its handler
        runs: the server would otherwise redeliver it (possibly to another member) while
        this one still works on it. An acked delivery needs none (a NAKed one has left
        the table).
        """
        loop = asyncio.get_running_loop()
        period = self._refresh_after
        self._refresh_timer = loop.call_later(period, self._keep_alive)
        in_flight = self._in_flight
        if not in_flight:
            return
        now = time.monotonic()
        stale = now - period / 2
        for entry in in_flight.values():
            if entry.touched < stale:
                delivery = entry.delivery
                if delivery is not None and delivery.acked:
                    continue
                entry.touched = now
                self._touch(entry.reply)

    def _touch(self, reply: bytes, payload: bytes = IN_PROGRESS) -> None:
        """Sends ``+WPI`` (or ``payload``) to ``reply`` (best effort)."""
        assert self._writer is not None
        try:
            self._writer.write_reply(reply, payload)
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
            reason, deliveries = kept.pop(raw.sequence, (expired, config.max_deliver))
            try:
                await self.dead_letter(raw, deliveries, reason)
            except Exception:  # never let one delivery kill the lane
                log.exception("dead-lettering a message on %r failed", raw.subject)

    async def _deliver(self, raw: Raw) -> None:
        entry = self._in_flight.get(raw.sequence)
        if entry is None:  # released by a stop while it waited (or never tracked)
            entry = InFlight(raw.reply, raw.attempt, raw.read_at)
            self._in_flight[raw.sequence] = entry
        elif entry.reply != raw.reply:  # superseded while it waited
            raw = redirected(raw, entry.reply, entry.attempt)
        now = entry.started = time.monotonic()
        if now - entry.touched > self._refresh_after:
            entry.touched = now
            self._touch(raw.reply)  # it waited for a worker: give the handler its ack_wait
        try:
            await self._run(raw, entry, self._limits.start(entry))
        finally:
            entry.done = True
            if entry.detached:  # its sequence is another delivery's now
                if self._stale and entry.delivery is not None:
                    self._stale.discard(entry.delivery.reply)
            else:
                if self._in_flight.get(raw.sequence) is entry:
                    del self._in_flight[raw.sequence]
                delivery = entry.delivery
                if delivery is not None and delivery.acked:
                    self._acked.add(raw.sequence)

    async def _run(self, raw: Raw, entry: InFlight, limit: HandlerLimit) -> None:
        subject = raw.subject.decode("utf-8", "replace")
        block, body = raw.header_block, raw.body
        codec = self._codec
        message = codec.decode_block(subject, block, body)
        if message is None:  # not laid out as this library writes it: the full decode
            try:
                # A replay copy is decoded as the message it carries.
                original = unwrap_replay(Encoded(subject, headers_of(block) or {}, body))
                message = codec.decode(*original)
            except DecodeError as exc:
                await self.dead_letter(raw, raw.attempt, f"undecodable: {exc}")
                return
            subject = original.subject
        delivery = entry.delivery = JetStreamDelivery(self, raw, message, subject)
        delivery.reply = entry.reply
        try:
            await run_handler(self._handler, delivery, self._config, limit=limit)
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
        if self._stale and reply in self._stale:
            log.info("acknowledgement of a message of a deleted stream dropped (%r)", payload)
            return
        if payload[0] == 45:  # b"-": a NAK
            self._naked(reply)
        try:
            if writer.write_reply(reply, payload):
                await writer.relieve()
        except nats.errors.Error as exc:
            raise BusConnectionError(f"could not settle the delivery: {exc}") from exc

    def _naked(self, reply: bytes) -> None:
        """The delivery with ack subject ``reply`` is NAKed: its sequence leaves the
        in-flight table (no more ``+WPI``; its redelivery is a new delivery)."""
        try:
            sequence = ack_fields(reply)[2]
        except (ValueError, IndexError):
            return
        entry = self._in_flight.get(sequence)
        if entry is not None and entry.reply == reply:
            del self._in_flight[sequence]
            entry.detached = True

    @property
    def confirms_acks(self) -> bool:
        return self._confirmer is not None

    async def settle_ack(self, delivery: JetStreamDelivery) -> None:
        """Sends the ``+ACK`` of ``delivery``; with ``confirm_acks``, waits for the
        server's confirmation.

        Raises:
            AckNotConfirmed: not confirmed (timeout, connection lost, refused).
            BusConnectionError: the ACK could not be queued.
        """
        confirmer = self._confirmer
        if confirmer is None or (self._stale and delivery.reply in self._stale):
            await self.settle(delivery.reply, ACK)
            return
        failure = await confirmer.confirm(delivery.reply, ACK)
        if failure is not None:
            raise AckNotConfirmed(delivery.stream or "", delivery.sequence or 0, failure)

    def _on_denied(self, subject: str) -> None:
        """The server refused a publish to ``subject`` (lower-cased): if it is this
        subscription's ack or pull subject, the subscription fails."""
        lowered = subject.lower()
        stream, name = self._consumer.stream.lower(), self._consumer.name.lower()
        ours = lowered.startswith("$js.ack.") and f".{stream}.{name}." in lowered
        if not (ours or lowered == self._next_subject.lower()):
            return
        if self._confirmer is not None:
            self._confirmer.fail_subject(subject, "permission denied")
        error = PermissionDenied(f"{self._consumer.stream}/{self._consumer.name}", subject)
        if self.fail(error):
            log.error("%s; stopping the subscription", error)
            self._begin_close(release=True)

    def _release(self, reply: bytes) -> None:
        """NAKs a delivery that will not be handled, so it is redelivered at once."""
        assert self._writer is not None
        try:
            self._writer.write_reply(reply, NAK)
        except nats.errors.Error as exc:
            log.debug("could not release %r: %s", reply, exc)

    async def dead_letter(self, raw: Raw, deliveries: int, reason: str) -> None:
        """Stores the dead letter in ``DEAD_LETTERS`` (awaiting its PubAck), then TERMs.

        Publish-before-term: if the process dies between the two, the message is
        redelivered and dead-lettered again under the same ``Nats-Msg-Id``
        (``dlq:{consumer}:{stream}:{seq}``), which JetStream deduplicates. If the dead
        letter cannot be stored, the message is NAKed instead of TERMed, so it stays in
        the consumer and comes back later (the server does not limit deliveries, so
        that NAK is never final); past ``max_deliver``, that redelivery is
        dead-lettered again with the same reason. The dead letter never carries the
        original's ``Nats-*`` headers, and a message that cannot be decoded, or whose
        headers a dead letter cannot carry, is kept raw (see :func:`~..originals.original_of`), so
        nothing but the dead-letter stream itself can hold a message back. A dead
        letter too large for the server's ``max_payload`` cannot ever be stored: it is
        logged as an error and NAKed with ``nak_max_delay``, again and again, until an
        operator raises the limit or removes the message.
        """
        reply, stream, attempt, sequence = raw.reply, raw.stream, raw.attempt, raw.sequence
        config = self._config
        if config.dead_letter:
            original, raw_header_block = original_of(
                self._codec, raw.subject, raw.header_block, raw.body
            )
            dead = encode_dead_letter(
                original,
                reason=reason,
                stream=stream,
                sequence=sequence,
                deliveries=deliveries,
                consumer_group=config.consumer_group,
                consumer=self._consumer.name,
                failed_at=datetime.now(UTC),
                raw_header_block=raw_header_block,
            )
            try:
                await self._dead_letter_sender.send(
                    dead.headers["Nats-Msg-Id"], block_of(dead), jetstream=True, message_type=None
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
                await self.settle(reply, nak_payload(delay))
                return
        log.warning(
            "dead-lettered %s #%d after %d deliveries: %s", stream, sequence, deliveries, reason
        )
        await self.settle(reply, TERM)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not self._stopping

    async def stop(self) -> None:
        await self._close(release=True)
        self.raise_failure()

    async def wait(self) -> None:
        await self._ended.wait()
        self.raise_failure()

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
        if self._remove_denied is not None:
            self._remove_denied()
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
        await close_inbox(self._client, self._sub)
        workers = self._workers
        if workers is not None:
            if release:
                # A delivery on its last allowed attempt is handled, not released: a
                # release would cost it that attempt without a handler run.
                last = self._config.max_deliver
                items = workers.items
                in_flight = self._in_flight
                keep = []
                for raw in items:
                    if raw is None:
                        continue
                    entry = in_flight.get(raw.sequence)  # its newest delivery counts
                    if (raw.attempt if entry is None else entry.attempt) >= last:
                        keep.append(raw)
                        continue
                    in_flight.pop(raw.sequence, None)
                    self._release(raw.reply if entry is None else entry.reply)
                items.clear()
                items.extend(keep)
            await workers.finish(self._config.ack_wait)
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
        self._limits.close()
        if self._dead_lane_task is not None:
            self._dead_lane.put_nowait(None)
            await self._dead_lane_task
        await flush_acks(self._client)
        if self._confirmer is not None:
            await self._confirmer.close()
        self._on_closed(self)
        self._ended.set()


__all__ = ["DeadLetterSender", "PullSubscription"]
