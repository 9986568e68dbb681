"""The ordered consumer: one member of an ordered group, owning partitions and reading for them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

import msgspec

from message_bus.domain.errors import (
    BusConnectionError,
    PartitionCountError,
    StartPositionConflict,
)
from message_bus.domain.partition import partition_of
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.subscriber import MessageHandler, Subscription

from .assignment import assign
from .clock import Clock, Timer, sleep
from .lane import Lane, LaneContext
from .source import Cursor, DeadLetterSink, Record, StreamSource
from .store import (
    GroupSpec,
    GroupStore,
    MemberRecord,
    PartitionRecord,
    Snapshot,
    StoreConflict,
    StoreUnavailable,
    Versioned,
)

log = logging.getLogger("message_bus.ordered")

FENCE_FRACTION = 0.75
"""A member stops handling this fraction of ``failover_timeout`` after the last
heartbeat it sent that succeeded; the others wait the whole of it."""
TICKS_PER_TIMEOUT = 4
"""Heartbeats (and reads of the group's records) per ``failover_timeout``."""
FORGET_AFTER = 10
"""A dead member's heartbeat key is deleted after this many ``failover_timeout``s."""
NO_PARTITION_KEY = "broadcast"
"""Records without a partition number (``Broadcast``, or no key at all) are ordered as
this canonical key hashes."""
_READ_RETRY_MAX = 2.0


class OrderedSubscription(Subscription):
    """A member of an ordered group (``ordering="partition"``); see ``docs/ordering.md``.

    Lifecycle: :meth:`start` joins the group (refusing another partition count with
    :class:`PartitionCountError`), heartbeats, takes the partitions the assignment gives
    it, and starts reading. Every tick (a quarter of ``failover_timeout``) it heartbeats,
    reads the group's records, releases the partitions it should no longer own (after
    the handler running on each) and takes those it should, once they are free or their
    owner is dead. One timer fences it: ``0.75 x failover_timeout`` after the last
    heartbeat that succeeded was sent, no handler may start and the running ones are
    cancelled, so no partition is ever handled by two members at once.

    Args:
        handler: handles each message.
        config: the group's config (``ordering="partition"``).
        store: the group's records.
        source: the stream to read.
        sink: stores dead letters.
        clock: time (the in-memory broker's, or the event loop's).
        on_event: called on every step (a fake clock's broker counts them to settle).
        on_closed: called once the subscription has closed.
    """

    def __init__(
        self,
        handler: MessageHandler,
        config: SubscriberConfig,
        *,
        store: GroupStore,
        source: StreamSource,
        sink: DeadLetterSink,
        clock: Clock,
        on_event: Callable[[], None] = lambda: None,
        on_closed: Callable[[Subscription], None] = lambda _: None,
    ) -> None:
        self.config = config
        self.member = secrets.token_hex(8)
        self.group = config.consumer_name
        self.partitions = config.partitions
        self.failover = config.failover_after
        self._store = store
        self._source = source
        self._clock = clock
        self._on_event = on_event
        self._on_closed = on_closed
        self.lanes: dict[int, Lane] = {}
        self._releasing: set[int] = set()
        self._stopping: dict[int, Lane] = {}
        self._context = LaneContext(
            handler=handler,
            config=config,
            stream=source.stream,
            group=self.group,
            member=self.member,
            store=store,
            sink=sink,
            clock=clock,
            slots=asyncio.Semaphore(config.max_concurrent),
            may_run=self._may_run,
            on_event=on_event,
            on_lost=self._lost,
            on_room=self._wake_reader,
        )
        self.generation = ""
        self.start_floor = 0
        """Where partitions new to the group start (see :class:`GroupSpec`)."""
        self._started = ""
        self._beats = 0
        self._last_beat = -float("inf")
        self._fence_timer: Timer | None = None
        self._fenced = True
        self._seen: dict[str, tuple[int, float]] = {}
        self._partition_cache: dict[str | None, int] = {}
        self._reader_wake = asyncio.Event()
        self._parked = False  # the reader waits for its wake-up, with nothing left to take
        self._position = 0
        self._cursor: Cursor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._beating: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None

    # -- joining ------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and start handling.

        Raises:
            PartitionCountError: the group has another partition count.
            BusConnectionError: the group's records cannot be reached.
        """
        try:
            await self._join()
            self._started = self._clock.utcnow().isoformat()
            await self._beat()
            await self._rebalance()
        except StoreUnavailable as exc:
            raise BusConnectionError(f"ordered group {self.group}: {exc}") from exc
        self._beating = asyncio.create_task(self._beat_loop(), name=f"ordered-beats-{self.group}")
        self._loops = [
            asyncio.create_task(self._tick_loop(), name=f"ordered-ticks-{self.group}"),
            asyncio.create_task(self._read_loop(), name=f"ordered-reader-{self.group}"),
        ]

    async def _join(self) -> None:
        generation = await self._source.generation()
        start = self.config.start_token
        wanted = GroupSpec(
            partitions=self.partitions,
            generation=generation,
            start=start,
            floor=await self._source.start_floor(self.config.start),
        )
        while True:
            stored = await self._store.join(wanted)
            if stored.value.partitions != self.partitions:
                raise PartitionCountError(self.group, self.partitions, stored.value.partitions)
            if stored.value.start != start:
                raise StartPositionConflict(self.group, start, stored.value.start)
            if stored.value.generation == generation:
                self.start_floor = stored.value.floor
                break
            log.warning(
                "stream %s was re-created since ordered group %s last read it: the group "
                "reads the new stream from its start",
                self._source.stream,
                self.group,
            )
            try:
                await self._store.replace_spec(
                    msgspec.structs.replace(wanted, floor=0), stored.revision
                )
                self.start_floor = 0
                break
            except StoreConflict:
                continue
        self.generation = generation

    # -- heartbeats and fencing ---------------------------------------------------------

    def _may_run(self) -> bool:
        return not self._fenced  # a closing member's lanes stop themselves (or drain)

    async def _beat(self) -> None:
        sent = self._clock.now()
        self._beats += 1
        await self._store.heartbeat(
            self.member, MemberRecord(started=self._started, beats=self._beats)
        )
        if sent <= self._last_beat:
            return
        self._last_beat = sent
        self._fenced = False
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        self._fence_timer = self._clock.call_at(sent + FENCE_FRACTION * self.failover, self._fence)

    def _fence(self) -> None:
        """No heartbeat succeeded for ``0.75 x failover_timeout``: others may soon take
        this member's partitions, so stop handling them now."""
        self._fence_timer = None
        if self._fenced or self._closed.is_set():
            return
        self._fenced = True
        if self.lanes:
            log.warning(
                "ordered group %s: no heartbeat stored for %.3g s; stopped handling %d "
                "partition(s) until the group can be reached again",
                self.group,
                FENCE_FRACTION * self.failover,
                len(self.lanes),
            )
        for lane in list(self.lanes.values()):
            self._drop(lane)

    def _drop(self, lane: Lane) -> None:
        if self.lanes.get(lane.partition) is lane:
            del self.lanes[lane.partition]
        lane.kill()
        if not lane.stopped():
            self._stopping[lane.partition] = lane  # not taken again before its handler ended
        self._on_event()

    def _still_stopping(self, partition: int) -> bool:
        lane = self._stopping.get(partition)
        if lane is not None and lane.stopped():
            del self._stopping[partition]
            return False
        return lane is not None

    def _lost(self, lane: Lane) -> None:
        self._drop(lane)

    # -- rebalancing --------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        tick = self.failover / TICKS_PER_TIMEOUT
        while not self._closing:
            await sleep(self._clock, tick)
            if not self.active:
                return
            try:
                await self._rebalance()
            except StoreUnavailable as exc:
                log.debug("ordered group %s: rebalance skipped: %s", self.group, exc)
            except Exception:
                log.exception("ordered group %s: rebalance failed", self.group)

    def _live(self, snapshot: Snapshot) -> tuple[set[str], list[tuple[str, int]]]:
        """Live members, and dead members to forget (with their revisions)."""
        now = self._clock.now()
        seen = self._seen
        for member, revision in snapshot.members.items():
            known = seen.get(member)
            if known is None or known[0] != revision:
                seen[member] = (revision, now)
        for member in [m for m in seen if m not in snapshot.members]:
            del seen[member]
        live = {m for m, (_, at) in seen.items() if now - at <= self.failover}
        live.add(self.member)
        forget = [
            (m, revision)
            for m, (revision, at) in seen.items()
            if m != self.member and now - at > FORGET_AFTER * self.failover
        ]
        return live, forget

    async def _rebalance(self) -> None:
        if self._closing:
            return
        snapshot = await self._store.snapshot()
        if not self.active:
            return
        live, forget = self._live(snapshot)
        for member, revision in forget:
            with contextlib.suppress(StoreUnavailable, StoreConflict):
                await self._store.forget(member, revision)
        owners = {
            p: versioned.value.owner
            for p, versioned in snapshot.partitions.items()
            if versioned.value.owner in live
        }
        target = assign(self.partitions, live, owners)
        for partition, lane in list(self.lanes.items()):
            if target.get(partition) != self.member and partition not in self._releasing:
                self._releasing.add(partition)
                release = asyncio.create_task(self._release(lane))
                self._tasks.add(release)
                release.add_done_callback(self._tasks.discard)
        for partition, held in snapshot.partitions.items():
            stale = held.value.owner == self.member and partition not in self.lanes
            if stale and target.get(partition) != self.member and partition not in self._releasing:
                if self._still_stopping(partition):
                    continue
                await self._disown(partition, held)
        if self._fenced:
            return
        for partition in range(self.partitions):
            if target.get(partition) != self.member or partition in self.lanes:
                continue
            if partition in self._releasing or self._still_stopping(partition):
                continue
            versioned = snapshot.partitions.get(partition)
            record = versioned.value if versioned is not None else PartitionRecord()
            if record.owner not in ("", self.member) and record.owner in live:
                continue  # its owner hands it over first
            await self._acquire(partition, record, versioned.revision if versioned else 0)

    async def _acquire(self, partition: int, record: PartitionRecord, revision: int) -> None:
        if record.generation != self.generation:
            # New to this stream: from the group's start (a re-created stream: its start).
            record = PartitionRecord(generation=self.generation, floor=self.start_floor)
        mine = PartitionRecord(
            owner=self.member,
            floor=record.floor,
            generation=self.generation,
            failing=record.failing,
            failures=record.failures,
        )
        try:
            revision = await self._store.write_partition(partition, mine, revision)
        except StoreConflict:
            return  # someone else moved first; the next tick sees it
        if self._closing or self._fenced:
            return
        lane = Lane(self._context, partition, mine, revision)
        lane.suspect = record.owner != ""  # not handed over: a delivery may have died with it
        lane.behind = self._cursor is None or lane.next_sequence < self._position
        self.lanes[partition] = lane
        lane.start()
        log.debug("ordered group %s: took partition %d at #%d", self.group, partition, mine.floor)
        self._on_event()
        self._wake_reader()

    async def _disown(self, partition: int, versioned: Versioned[PartitionRecord]) -> None:
        """Release a partition recorded as this member's that no lane of it handles (its
        release failed, or its lane stopped), so its new owner may take it."""
        record = versioned.value
        free = PartitionRecord(
            floor=record.floor,
            generation=record.generation,
            failing=record.failing,
            failures=record.failures,
        )
        with contextlib.suppress(StoreConflict):
            await self._store.write_partition(partition, free, versioned.revision)

    async def _release(self, lane: Lane) -> None:
        try:
            await lane.finish(drain=False, timeout=self.config.max_handler_time)
            if self.lanes.get(lane.partition) is lane:
                del self.lanes[lane.partition]
                if not lane.lost:
                    await lane.release()
        finally:
            self._releasing.discard(lane.partition)
            self._on_event()

    # -- reading ------------------------------------------------------------------------

    def _wake_reader(self) -> None:
        self._reader_wake.set()

    def _on_records(self) -> None:
        """The cursor has something new. While the reader waits with nothing to do but
        take (no re-open due, a lane accepting), the records go to the lanes right here,
        as the reader would have dispatched them: no event loop step in between.
        Anything else (a failure, a re-open) is the reader's."""
        cursor = self._cursor
        if self._parked and cursor is not None and not self._closing and self._only_take():
            try:
                records = cursor.take(self.config.fetch_batch)
            except Exception:  # noqa: BLE001  # the reader takes it again and handles it
                records = []
            if records:
                self._dispatch(records)
                return
        self._reader_wake.set()

    def _only_take(self) -> bool:
        """Whether the reader's next round would only take and dispatch: a lane accepts,
        and none needs a re-read (as :meth:`_rewind_to`, in one pass over the lanes)."""
        position = self._position
        accepting = False
        for lane in self.lanes.values():
            if lane.accepting:
                if lane.behind and lane.next_sequence < position:
                    return False
                accepting = True
        return accepting

    def _partition(self, record: Record) -> int:
        key = record.key
        partition = self._partition_cache.get(key)
        if partition is None:
            partition = partition_of(
                key if key and key != NO_PARTITION_KEY else NO_PARTITION_KEY, self.partitions
            )
            if len(self._partition_cache) > 100_000:
                self._partition_cache.clear()
            self._partition_cache[key] = partition
        return partition

    def _rewind_to(self) -> int | None:
        """The sequence to read from again, if a lane needs what the reader passed."""
        start: int | None = None
        for lane in self.lanes.values():
            wanted = lane.behind and lane.accepting and lane.next_sequence < self._position
            if wanted and (start is None or lane.next_sequence < start):
                start = lane.next_sequence
        return start

    async def _open(self, start: int) -> None:
        await self._close_cursor()
        self._cursor = await self._source.open(start)
        self._cursor.notify(self._on_records)
        self._position = start
        for lane in self.lanes.values():
            if lane.next_sequence >= start:
                lane.behind = False

    async def _close_cursor(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with contextlib.suppress(Exception):
                await cursor.close()

    async def _read_loop(self) -> None:
        """Read the stream for the lanes, from the lowest sequence one of them needs.

        ``_position`` is the next sequence to dispatch: everything before it was offered
        to the lanes. Records go from the cursor to the lanes in one step (:meth:`take`,
        then :meth:`_dispatch`, nothing awaited between), so a lane acquired at any
        await of this loop sees ``_position`` exactly as far as the reader went.
        Records the cursor holds untaken when it is re-opened at an earlier sequence
        are dropped: that re-open reads them again.
        """
        retry = 0.0
        wake = self._reader_wake
        unsure = False  # after a failed read: the stream may have been re-created
        try:
            while not self._closing:
                wake.clear()  # whatever happens from here on wakes the next round
                if unsure and self._cursor is None:
                    unsure = not await self._check_generation()
                    if unsure:
                        retry = min(_READ_RETRY_MAX, retry * 2 or 0.05)
                        await sleep(self._clock, retry)
                        continue
                lanes = self.lanes
                if not lanes:
                    await self._close_cursor()
                try:
                    if lanes and self._cursor is None:
                        await self._open(min(lane.next_sequence for lane in lanes.values()))
                    elif lanes:
                        rewind = self._rewind_to()
                        if rewind is not None:
                            await self._open(rewind)
                    cursor = self._cursor
                    records: list[Record] = []
                    if cursor is not None and any(lane.accepting for lane in lanes.values()):
                        records = cursor.take(self.config.fetch_batch)
                except Exception as exc:  # noqa: BLE001  # the reader outlives every error
                    await self._close_cursor()
                    retry = min(_READ_RETRY_MAX, retry * 2 or 0.05)
                    level = logging.DEBUG if isinstance(exc, StoreUnavailable) else logging.WARNING
                    log.log(level, "ordered group %s: reading paused (%r)", self.group, exc)
                    await sleep(self._clock, retry)
                    unsure = True
                    continue
                if records:
                    retry = 0.0
                    self._dispatch(records)
                    continue  # the cursor may hold more: take it before waiting
                self._parked = True
                try:
                    await wake.wait()
                finally:
                    self._parked = False
        finally:
            await self._close_cursor()

    def _dispatch(self, records: list[Record]) -> None:
        lanes = self.lanes
        partition_of_record = self._partition
        for record in records:
            sequence = record.sequence
            if sequence >= self._position:
                self._position = sequence + 1
            lane = lanes.get(partition_of_record(record))
            if lane is not None and sequence >= lane.next_sequence:
                lane.offer(record)
        if records:
            self._on_event()

    async def _check_generation(self) -> bool:
        """After the stream could not be read: if it was re-created, start over on it.
        False if the stream's generation could not be known (do not read it yet)."""
        try:
            generation = await self._source.generation()
        except Exception:  # noqa: BLE001  # still unreachable: try again later
            return False
        if generation == self.generation:
            return True
        for lane in list(self.lanes.values()):
            self._drop(lane)
        try:
            await self._join()
        except (StoreUnavailable, StoreConflict):
            return False
        except (PartitionCountError, StartPositionConflict) as exc:
            log.error("%s", exc)
        return True

    # -- leaving ------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not self._closing

    @property
    def owned(self) -> frozenset[int]:
        """The partitions this member owns now."""
        return frozenset(self.lanes)

    async def stop(self) -> None:
        await self._close(drain=False)
        self.raise_failure()

    async def drain(self) -> None:
        await self._close(drain=True)

    async def wait(self) -> None:
        await self._closed.wait()
        self.raise_failure()

    async def _close(self, *, drain: bool) -> None:
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._run_close(drain))
        current = asyncio.current_task()
        if current is not None and any(lane.runs(current) for lane in self.lanes.values()):
            return  # called by a handler: the close completes when it returns
        await asyncio.shield(self._close_task)

    async def _run_close(self, drain: bool) -> None:
        self._closing = True
        self._reader_wake.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        timeout = self.config.ack_wait
        lanes = list(self.lanes.values())
        beats = self._beating  # still the owner while the lanes finish
        try:
            await asyncio.gather(
                *(lane.finish(drain=drain, timeout=timeout) for lane in lanes),
                return_exceptions=True,
            )
            for lane in lanes:
                if not lane.lost:
                    await lane.release()
        finally:
            if beats is not None:
                beats.cancel()
                await asyncio.gather(beats, return_exceptions=True)
        self.lanes.clear()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        with contextlib.suppress(StoreUnavailable):
            await self._store.leave(self.member)
        self._closed.set()
        self._on_event()
        self._on_closed(self)

    async def _beat_loop(self) -> None:
        """Heartbeat every tick, on a loop of its own: a slow read of the group's records
        never delays a heartbeat (which could fence a healthy member). It goes on while
        a close lets the lanes finish, so no one takes their partitions meanwhile (the
        fence still stops them if the heartbeats fail)."""
        tick = self.failover / TICKS_PER_TIMEOUT
        while True:
            await sleep(self._clock, tick)
            try:
                await self._beat()
            except StoreUnavailable as exc:
                log.debug("ordered group %s: heartbeat failed: %s", self.group, exc)

    async def halt(self) -> None:
        """Stop at once, as if the process died: handlers are cancelled, nothing is
        written or released, and the member's heartbeat stays behind, so the group's
        other members take its partitions once it is silent for ``failover_timeout``.
        For fault tests, and for a process that must stop without touching the broker."""
        self._closing = True
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        lanes = list(self.lanes.values())
        self.lanes.clear()
        for lane in lanes:
            lane.kill()
        beats = () if self._beating is None else (self._beating,)
        for task in (*beats, *self._loops, *self._tasks):
            task.cancel()
        await asyncio.gather(*(lane.wait_killed() for lane in lanes), return_exceptions=True)
        await asyncio.gather(*beats, *self._loops, *self._tasks, return_exceptions=True)
        self._closed.set()
        self._on_event()
        self._on_closed(self)


__all__ = ["OrderedSubscription"]
