"""Durable consumer groups: a stream position, pending deliveries and redelivery timers."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from datetime import datetime

from message_bus.domain.catalog import MessageType
from message_bus.domain.dead_letter import is_replay_subject, replay_subject
from message_bus.domain.errors import PublishError
from message_bus.domain.partition import PartitionKey
from message_bus.ports.config import StartPosition, SubscriberConfig
from message_bus.ports.outcome import ACK_WAIT_EXPIRED, max_deliveries_reason

from ._host import ConsumerHost
from ._store import Entry, Stream
from ._worker import Waiters
from .clock import Clock, Timer

log = logging.getLogger("message_bus.memory")

IN_FLIGHT, DELAYED, READY = 0, 1, 2


def subject_filter(message_type: MessageType, key: PartitionKey | None) -> tuple[str, bool]:
    """What a consumer of ``message_type`` filtered to ``key`` receives: one exact subject
    (``(subject, True)``) or every subject of the type (``(prefix + ".", False)``)."""
    if key is None:
        return f"{message_type.subject_prefix}.", False
    return f"{message_type.subject_prefix}.{key.suffix}", True


START_TIME_RESOLUTION = 1e-6
"""Start times are compared to store times to the microsecond (a datetime's resolution)."""


def start_sequence(clock: Clock, stream: Stream, start: StartPosition) -> int:
    """The first sequence a group created now at ``start`` may deliver: the first
    retained message, the one after the last stored, or the first stored at or after a
    time (wall time, as the clock's ``utcnow()`` tells it)."""
    if start == "first":
        return stream.first_seq
    if start == "new":
        return stream.last_seq + 1
    assert isinstance(start, datetime)
    now = clock.now()
    when = now - (clock.utcnow() - start).total_seconds()
    if now >= stream.expires_at:
        stream.expire(now)
    return stream.first_stored_at(when - START_TIME_RESOLUTION)


class Pending:
    """A message delivered to a group and not yet acknowledged or terminated."""

    __slots__ = ("deliveries", "gen", "running", "state")

    def __init__(self) -> None:
        self.deliveries = 0
        self.gen = 0  # bumped on every state change; timers carry it to detect staleness
        self.state = READY
        self.running = False  # a handler works on its current delivery: keep it alive


class Group:
    """A durable consumer group on one stream: its position, its pending deliveries, its
    redelivery timers. The broker keeps it, so it outlives its members.

    An ephemeral group (given a ``name`` of its own) is one reader's: ``on_empty`` is
    called once its last member has left, and the broker forgets it.

    A delivery is handed to a free worker, whose handler starts at once: from then until
    the handler returns (or its worker is cancelled) the delivery is kept alive, as the
    NATS adapter keeps it alive with ``+WPI``: its ``ack_wait`` restarts instead of
    expiring, so it is neither redelivered nor dead-lettered while its handler runs.
    ``ack_wait`` expires only for deliveries nobody works on any more.
    """

    def __init__(
        self,
        host: ConsumerHost,
        stream: Stream,
        message_type: MessageType,
        config: SubscriberConfig,
        *,
        name: str | None = None,
    ) -> None:
        self.stream = stream
        self.name = config.consumer_name if name is None else name
        self.on_empty: Callable[[Group], None] | None = None
        self.subject_filter, self.exact = subject_filter(message_type, config.partition_key)
        # An unfiltered group on a stream of its type alone takes every stored message.
        self.everything = not self.exact and stream.spec.subjects == (f"{self.subject_filter}>",)
        # Dead letters replayed to this group (and no other) arrive on this subject.
        self.replay_subject = replay_subject(stream.name, self.name)
        self.config = config
        self.start = config.start_token
        self.next_seq = start_sequence(host.clock, stream, config.start)
        self.pending: dict[int, Pending] = {}
        self.ready: list[int] = []  # heap of sequences due for redelivery
        self.waiters = Waiters(host.activity)
        self.members = 0
        self.redelivered = 0
        self._now = host.clock.now
        self._call_at = host.clock.call_at
        self._activity = host.activity
        self._store_dead_letter = host.store_dead_letter
        self._timers: list[tuple[float, int, int]] = []  # heap of (deadline, seq, gen)
        self._timer: Timer | None = None
        self._timer_when = 0.0

    def matches(self, subject: str) -> bool:
        if is_replay_subject(subject):
            return subject == self.replay_subject
        if self.exact:
            return subject == self.subject_filter
        return self.everything or subject.startswith(self.subject_filter)

    def kick(self) -> None:
        """Wake one idle worker if there is something to take."""
        if self.waiters.queue and (
            self.ready
            or (
                len(self.pending) < self.config.max_ack_pending
                and self.next_seq <= self.stream.last_seq
            )
        ):
            self.waiters.wake_one()

    def take(self) -> tuple[int, int, Entry] | None:
        """The next delivery for a free worker: redeliveries first (lowest sequence
        first), then the next new message if ``max_ack_pending`` allows."""
        now = self._now()
        pending, ready, stream = self.pending, self.ready, self.stream
        if now >= stream.expires_at:
            stream.expire(now)
        while ready:
            seq = heapq.heappop(ready)
            p = pending.get(seq)
            if p is None or p.state != READY:
                continue
            entry = stream.get(seq)
            if entry is None:  # expired while waiting for redelivery
                del pending[seq]
                continue
            self.redelivered += 1
            return self._deliver(seq, p, entry, now)
        if len(pending) >= self.config.max_ack_pending:
            return None
        seq, last = max(self.next_seq, stream.first_seq), stream.last_seq
        everything = self.everything
        while seq <= last:
            entry = stream.entry(seq)
            seq += 1
            subject = entry.encoded.subject
            if (everything and not is_replay_subject(subject)) or self.matches(subject):
                self.next_seq = seq
                p = pending[seq - 1] = Pending()
                return self._deliver(seq - 1, p, entry, now)
        self.next_seq = seq
        return None

    def _deliver(self, seq: int, p: Pending, entry: Entry, now: float) -> tuple[int, int, Entry]:
        p.deliveries += 1
        p.gen += 1
        p.state = IN_FLIGHT
        p.running = True
        self._schedule(now + self.config.ack_wait, seq, p.gen)
        self._activity.events += 1
        return seq, p.deliveries, entry

    def _current(self, seq: int, attempt: int) -> Pending | None:
        """The pending record of ``seq`` if delivery ``attempt`` is still the live one."""
        p = self.pending.get(seq)
        if p is None or p.state != IN_FLIGHT or p.deliveries != attempt:
            return None
        return p

    def ack(self, seq: int) -> None:
        # Acks apply by sequence, even from a delivery that was since redelivered (as on
        # JetStream): the work is done, so the message must not be handled again.
        if self.pending.pop(seq, None) is not None:
            self._activity.events += 1
            self.kick()

    def nak(self, seq: int, attempt: int, delay: float | None) -> None:
        p = self._current(seq, attempt)
        if p is None:
            return  # a stale delivery: the current one decides
        max_deliver = self.config.max_deliver
        if p.deliveries >= max_deliver:
            self._give_up(seq, p, max_deliveries_reason(max_deliver, "nak"), None)
            return
        self._activity.events += 1
        p.gen += 1
        if delay is None or delay <= 0:
            p.state = READY
            heapq.heappush(self.ready, seq)
            self.kick()
        else:
            p.state = DELAYED
            self._schedule(self._now() + delay, seq, p.gen)

    def term(self, seq: int, reason: str, entry: Entry | None) -> None:
        p = self.pending.get(seq)
        if p is not None:
            self._give_up(seq, p, reason, entry)

    def finished(self, seq: int, attempt: int) -> None:
        """The handler of delivery ``attempt`` of ``seq`` returned or was cancelled: if
        it left the delivery unsettled, its ``ack_wait`` may now expire."""
        p = self.pending.get(seq)
        if p is not None and p.deliveries == attempt:
            p.running = False

    def in_progress(self, seq: int, attempt: int) -> None:
        p = self._current(seq, attempt)
        if p is not None:
            p.gen += 1
            self._schedule(self._now() + self.config.ack_wait, seq, p.gen)

    def _give_up(self, seq: int, p: Pending, reason: str, entry: Entry | None) -> None:
        """Dead-letter ``seq`` (unless the group drops them), then stop delivering it:
        the dead letter is stored before the message stops being pending. If
        ``DEAD_LETTERS`` refuses it (full), the message stays pending and comes back after
        the ack wait, as a NAK would on JetStream: it is never dropped."""
        if self.config.dead_letter:
            try:
                self._dead_letter(seq, p.deliveries, reason, entry)
            except PublishError as exc:  # DEAD_LETTERS refused it (full): keep it pending
                log.warning(
                    "%s #%d of %s not dead-lettered (%s): tried again after the ack wait",
                    self.stream.name, seq, self.name, exc.reason,
                )  # fmt: skip
                p.gen += 1
                p.state = IN_FLIGHT
                self._schedule(self._now() + self.config.ack_wait, seq, p.gen)
                return
        else:
            log.warning("dropping %s #%d of %s: %s", self.stream.name, seq, self.name, reason)
        del self.pending[seq]
        self._activity.events += 1
        self.kick()

    def _dead_letter(self, seq: int, deliveries: int, reason: str, entry: Entry | None) -> None:
        stream = self.stream
        if entry is None:
            stream.expire(self._now())
            entry = stream.get(seq)
        if entry is None:
            log.warning("%s #%d expired before it could be dead-lettered", stream.name, seq)
            return
        self._store_dead_letter(
            entry.encoded,
            reason=reason,
            stream=stream.name,
            sequence=seq,
            deliveries=deliveries,
            consumer_group=self.config.consumer_group,
            consumer=self.name,
        )

    def _schedule(self, when: float, seq: int, gen: int) -> None:
        timers = self._timers
        heapq.heappush(timers, (when, seq, gen))
        if self._timer is None or when < self._timer_when:
            self._arm(when)
        elif len(timers) > 2 * len(self.pending) + 1024:
            self._compact()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._call_at(when, self._on_timer)
        self._timer_when = when

    def _compact(self) -> None:
        pending = self.pending
        live = []
        for item in self._timers:
            p = pending.get(item[1])
            if p is not None and p.gen == item[2] and p.state != READY:
                live.append(item)
        heapq.heapify(live)
        self._timers = live

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        timers, pending = self._timers, self.pending
        max_deliver = self.config.max_deliver
        due = False
        while timers and timers[0][0] <= now:
            _, seq, gen = heapq.heappop(timers)
            p = pending.get(seq)
            if p is None or p.gen != gen:
                continue
            if p.state == IN_FLIGHT and p.running:  # kept alive while its handler runs
                p.gen += 1
                heapq.heappush(timers, (now + self.config.ack_wait, seq, p.gen))
                continue
            if p.state == IN_FLIGHT and p.deliveries >= max_deliver:
                reason = max_deliveries_reason(max_deliver, ACK_WAIT_EXPIRED)
                self._give_up(seq, p, reason, None)
                continue
            due = True
            p.state = READY
            p.gen += 1
            heapq.heappush(self.ready, seq)
        if timers:
            self._arm(timers[0][0])
        if due:
            self._activity.events += 1
            self.kick()

    def cancel_timer(self) -> None:
        """Cancel the pending redelivery timer (the broker is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
