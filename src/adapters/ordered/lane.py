"""One owned partition of an ordered group: its queue, its one-at-a-time handler, its commits."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from message_bus.adapters.handler_limit import HandlerLimit
from message_bus.domain.message import Message
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.outcome import max_deliveries_reason
from message_bus.ports.subscriber import Delivery, MessageHandler, check_delay, run_handler

from .clock import Clock, sleep
from .source import DeadLetterSink, Record
from .store import GroupStore, PartitionRecord, StoreConflict, StoreUnavailable

log = logging.getLogger("message_bus.ordered")

CAPACITY = 256
"""Messages a partition buffers; past it the reader skips the partition's messages and
reads them again once the buffer has drained to half."""

_STORE_RETRY_MAX = 2.0


@dataclass(frozen=True, slots=True, eq=False)
class LaneContext:
    """What every lane of one member shares.

    Attributes:
        handler: the subscription's handler.
        config: the subscription's config.
        stream: the stream read.
        group: the group's consumer name.
        member: this member's id (the owner written in records).
        store: the group's records.
        sink: where dead letters go.
        clock: time for NAK delays, handler limits and retries.
        slots: bounds the handlers running at once (``max_concurrent``).
        may_run: whether a handler may start now (False while the member is fenced).
        on_event: called on every step (a fake clock's broker counts them to settle).
        on_lost: called with a lane whose partition another member took over.
        on_room: called when a lane that skipped messages has room again.
    """

    handler: MessageHandler
    config: SubscriberConfig
    stream: str
    group: str
    member: str
    store: GroupStore
    sink: DeadLetterSink
    clock: Clock
    slots: asyncio.Semaphore
    may_run: Callable[[], bool]
    on_event: Callable[[], None]
    on_lost: Callable[[Lane], None]
    on_room: Callable[[], None]


class OrderedDelivery(Delivery):
    """A delivery of an ordered group: settling records the decision for its lane."""

    def __init__(self, record: Record, message: Message, attempt: int, stream: str) -> None:
        self.message = message
        self.attempt = attempt
        self.stream = stream
        self.sequence = record.sequence
        self.subject = record.subject
        self.acked = False
        self.naked = False
        self.delay: float | None = None
        self.term_reason: str | None = None

    @property
    def settled(self) -> bool:
        return self.acked or self.naked or self.term_reason is not None

    async def ack(self) -> None:
        if not self.settled:
            self.acked = True

    async def nak(self, delay: float | None = None) -> None:
        check_delay(delay)
        if not self.settled:
            self.naked = True
            self.delay = delay

    async def term(self, reason: str) -> None:
        if not self.settled:
            self.term_reason = reason

    async def in_progress(self) -> None:
        return None  # the partition is this member's while it heartbeats: nothing expires


class Lane:
    """One partition this member owns.

    The reader :meth:`offer`s it the partition's records in stream order; one worker
    task handles them one at a time. A failed delivery is retried (after the NAK's
    delay) before anything later; a dead-lettered one releases the partition. After
    each message the partition's record is written with the new position by one
    committer task, a compare-and-set on the revision last written: a conflict means
    another member took the partition over, and the lane stops at once.

    Attributes:
        partition: the partition number.
        next_sequence: the next stream sequence the lane wants from the reader.
        behind: messages after ``next_sequence`` were skipped (or never read): the
            reader must go back to ``next_sequence``.
        suspect: the partition was taken without a handover (its owner died or was
            fenced): its first delivery is counted in the record before it runs, so a
            message that takes its members down still reaches ``max_deliver``.
    """

    def __init__(
        self,
        context: LaneContext,
        partition: int,
        record: PartitionRecord,
        revision: int,
    ) -> None:
        self.context = context
        self.partition = partition
        self.floor = record.floor
        self.failing = record.failing
        self.failures = record.failures
        self.generation = record.generation
        self.revision = revision
        self.next_sequence = record.floor + 1
        self.behind = True
        self.queue: deque[Record] = deque()
        self.lost = False
        self.suspect = False
        self._accepting = True
        self._finishing = False
        self._draining = False
        self._in_handler = False
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._written = (self.floor, self.failing, self.failures)
        self._worker: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None

    # -- reader side --------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether the lane takes more records now."""
        return self._accepting and not self._finishing and not self.lost

    def offer(self, record: Record) -> None:
        """The reader's next record of this partition (``sequence >= next_sequence``).

        A lane that is ``behind`` takes nothing until the reader has gone back to its
        ``next_sequence``: what lies between was not offered, and taking a later record
        would skip it."""
        if self.behind or not self.accepting:
            self.behind = True
            return
        self.queue.append(record)
        self.next_sequence = record.sequence + 1
        if len(self.queue) >= CAPACITY:
            self._accepting = False
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker and the committer."""
        self._worker = asyncio.create_task(self._work(), name=f"ordered-lane-{self.partition}")
        self._committer = asyncio.create_task(
            self._commit_loop(), name=f"ordered-commit-{self.partition}"
        )

    async def finish(self, *, drain: bool, timeout: float) -> None:
        """Stop handling: after the running handler (``drain``: after every buffered
        message), then write the position. A handler still running after ``timeout``
        is cancelled (its message is handled again by the next owner)."""
        self._finishing = True
        self._draining = drain
        worker = self._worker
        if worker is not None and not worker.done():
            if not self._in_handler and not (drain and self.queue):
                worker.cancel()  # idle, or waiting out a NAK delay: nothing to finish
            else:
                self._wake.set()
            done, _ = await asyncio.wait({worker}, timeout=timeout)
            if not done:
                worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        await self.flush(timeout)

    async def flush(self, timeout: float) -> None:
        """Wait until the latest position is written (or ``timeout``), then stop the
        committer."""
        committer = self._committer
        if committer is None or committer.done():
            return
        if self._pending_write() and not self.lost:
            self._dirty.set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while self._pending_write() and not self.lost and loop.time() < deadline:
                if committer.done():
                    break
                await asyncio.sleep(0.005 if loop.time() + 0.005 < deadline else 0)
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)

    def finishing(self) -> bool:
        """Whether the lane was told to finish (it takes no more records)."""
        return self._finishing

    def runs(self, task: asyncio.Task[object]) -> bool:
        """Whether ``task`` is this lane's worker (a handler of it runs in it)."""
        return task is self._worker

    def kill(self) -> None:
        """Stop at once: cancel the handler, write nothing more."""
        self.lost = True
        for task in (self._worker, self._committer):
            if task is not None:
                task.cancel()

    def stopped(self) -> bool:
        """Whether the lane's tasks have ended (a cancelled handler may take a while)."""
        return all(task is None or task.done() for task in (self._worker, self._committer))

    async def wait_killed(self) -> None:
        """Wait until the tasks stopped by :meth:`kill` have ended."""
        tasks = [t for t in (self._worker, self._committer) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def release(self) -> None:
        """Write the record with no owner, so another member may take the partition."""
        record = self._record(owner="")
        try:
            self.revision = await self.context.store.write_partition(
                self.partition, record, self.revision
            )
        except StoreConflict:
            pass  # already taken over
        except StoreUnavailable as exc:
            log.warning(
                "partition %d of %s not released (%s); it moves once this member is "
                "silent for failover_timeout",
                self.partition,
                self.context.group,
                exc,
            )

    # -- the worker ---------------------------------------------------------------------

    async def _work(self) -> None:
        queue = self.queue
        while True:
            while not queue:
                if self._finishing:
                    return
                self._wake.clear()
                await self._wake.wait()
            if self._finishing and not self._draining:
                return
            record = queue[0]
            if not await self._handle(record) or self.lost:
                return  # lost: killed, though its handler may have ignored the cancel
            queue.popleft()
            self.floor = record.sequence
            self.failing = self.failures = 0
            self._dirty.set()
            self.context.on_event()
            if not self._accepting and len(queue) <= CAPACITY // 2:
                self._accepting = True
                self.context.on_room()

    async def _handle(self, record: Record) -> bool:
        """Handle ``record`` until it is ACKed or dead-lettered (True), or the lane
        finishes while the record is held by a failure (False)."""
        context = self.context
        config = context.config
        attempt = self.failures + 1 if record.sequence == self.failing else 1
        while True:
            message = record.message
            if message is None:
                await self._dead_letter(record, attempt, f"undecodable: {record.error}")
                return True
            if attempt > config.max_deliver:  # its last delivery failed, its dead letter did not
                reason = max_deliveries_reason(config.max_deliver, "dead letter not stored")
                await self._dead_letter(record, attempt - 1, reason)
                return True
            while not context.may_run():
                await sleep(context.clock, config.failover_after / 8)
            if self.lost:
                return False
            if self.suspect:  # it may be what its last owner died of: count it first
                self.suspect = False
                self.failing, self.failures = record.sequence, attempt
                if not await self._write_now():
                    return False
            delivery = OrderedDelivery(record, message, attempt, context.stream)
            async with context.slots:
                self._in_handler = True
                limit = HandlerLimit()
                clock = context.clock
                timer = clock.call_at(clock.now() + config.max_handler_time, limit.cut_off)
                try:
                    await run_handler(context.handler, delivery, config, limit=limit)
                finally:
                    timer.cancel()
                    self._in_handler = False
            context.on_event()
            if delivery.acked:
                return True
            if delivery.term_reason is not None:
                await self._dead_letter(record, attempt, delivery.term_reason)
                return True
            # NAKed: hold the partition, deliver the same message again after the delay
            self.failing, self.failures = record.sequence, attempt
            self._dirty.set()
            if self._finishing:
                return False  # released while holding: the next owner delivers it again
            delay = delivery.delay if delivery.delay is not None else config.nak_delay(attempt)
            await sleep(context.clock, delay)
            if self.finishing():
                return False
            attempt += 1

    async def _dead_letter(self, record: Record, deliveries: int, reason: str) -> None:
        context = self.context
        config = context.config
        note = (
            f"{reason} (ordered group {context.group}: partition {self.partition} of "
            f"{config.partitions} went on without it, its order is broken here)"
        )
        if not config.dead_letter:
            log.warning(
                "dropped %s #%d of partition %d: %s",
                context.stream,
                record.sequence,
                self.partition,
                reason,
            )
            return
        tries = 0
        while True:
            try:
                await context.sink.dead_letter(record, deliveries, note)
            except Exception as exc:  # noqa: BLE001  # the partition holds and tries again
                tries += 1
                log.error(
                    "dead letter of %s #%d not stored (%s); partition %d holds and tries again",
                    context.stream,
                    record.sequence,
                    exc,
                    self.partition,
                )
                await sleep(context.clock, config.nak_delay(tries))
                continue
            log.warning(
                "dead-lettered %s #%d after %d deliveries: %s",
                context.stream,
                record.sequence,
                deliveries,
                reason,
            )
            return

    # -- the committer ------------------------------------------------------------------

    def _record(self, *, owner: str | None = None) -> PartitionRecord:
        return PartitionRecord(
            owner=self.context.member if owner is None else owner,
            floor=self.floor,
            generation=self.generation,
            failing=self.failing,
            failures=self.failures,
        )

    async def _write_now(self) -> bool:
        """Write the record before going on; False if the partition was taken over."""
        retry = 0.0
        while not self.lost:
            state = (self.floor, self.failing, self.failures)
            try:
                self.revision = await self.context.store.write_partition(
                    self.partition, self._record(), self.revision
                )
            except StoreConflict:
                self.lost = True
                self.context.on_lost(self)
                return False
            except StoreUnavailable:
                retry = min(_STORE_RETRY_MAX, retry * 2 or 0.05)
                await sleep(self.context.clock, retry)
                continue
            self._written = state
            return True
        return False

    def _pending_write(self) -> bool:
        return (self.floor, self.failing, self.failures) != self._written

    async def _commit_loop(self) -> None:
        context = self.context
        retry = 0.0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            state = (self.floor, self.failing, self.failures)
            if state == self._written:
                continue
            try:
                self.revision = await context.store.write_partition(
                    self.partition, self._record(), self.revision
                )
            except StoreConflict:
                log.warning(
                    "partition %d of %s was taken over by another member; stopped handling it",
                    self.partition,
                    context.group,
                )
                self.lost = True
                context.on_lost(self)
                return
            except StoreUnavailable as exc:
                retry = min(_STORE_RETRY_MAX, retry * 2 or 0.05)
                log.debug(
                    "position of partition %d not written (%s); retrying", self.partition, exc
                )
                self._dirty.set()
                await sleep(context.clock, retry)
                continue
            retry = 0.0
            self._written = state
            context.on_event()


__all__ = ["CAPACITY", "Lane", "LaneContext", "OrderedDelivery"]
