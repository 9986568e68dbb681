"""An ordered group's member on a fake clock: fencing, takeovers, attempts across owners,
dead letters that hold their partition, and partitions that overflow their buffer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    PublisherConfig,
    SubscriberConfig,
)
from message_bus.adapters.memory import InMemoryBroker
from message_bus.adapters.memory._ordered import KeyValues, MemoryGroupStore
from message_bus.adapters.memory.clock import ManualClock
from message_bus.adapters.ordered.lane import CAPACITY
from message_bus.adapters.ordered.member import OrderedSubscription
from message_bus.adapters.ordered.source import Record
from message_bus.adapters.ordered.store import (
    GroupSpec,
    MemberRecord,
    PartitionRecord,
    Snapshot,
    StoreUnavailable,
    Versioned,
)
from message_bus.domain.errors import RetryableError

T = 4.0  # failover_timeout
KEY = PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKGB2L")
OTHER = PartitionKey.corridor_bank(corridor_id="GBP-USD", bank_id="BANKGB2L")
STREAM = "PAYMENT_INSTRUCTIONS"


def config(**overrides: object) -> SubscriberConfig:
    settings: dict[str, object] = {
        "consumer_group": "ordered",
        "ordering": "partition",
        "failover_timeout": T,
        "nak_initial_delay": 1.0,
    }
    settings.update(overrides)
    return SubscriberConfig(**settings)  # type: ignore[arg-type]


class FlakyStore:
    """A memory group store that can be made unreachable."""

    def __init__(self, inner: MemoryGroupStore) -> None:
        self.inner = inner
        self.down = False
        self.slow_reads: asyncio.Event | None = None

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def join(self, spec: GroupSpec) -> Versioned[GroupSpec]:
        self._check()
        return await self.inner.join(spec)

    async def replace_spec(self, spec: GroupSpec, revision: int) -> int:
        self._check()
        return await self.inner.replace_spec(spec, revision)

    async def heartbeat(self, member: str, record: MemberRecord) -> int:
        self._check()
        return await self.inner.heartbeat(member, record)

    async def leave(self, member: str) -> None:
        self._check()
        await self.inner.leave(member)

    async def forget(self, member: str, revision: int) -> None:
        self._check()
        await self.inner.forget(member, revision)

    async def snapshot(self) -> Snapshot:
        self._check()
        if self.slow_reads is not None:
            await self.slow_reads.wait()
        return await self.inner.snapshot()

    async def write_partition(self, partition: int, record: PartitionRecord, revision: int) -> int:
        self._check()
        return await self.inner.write_partition(partition, record, revision)


class ListSource:
    """A stream of records held in a list."""

    stream = STREAM

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.grew = asyncio.Event()
        self.readers: list[Callable[[], None]] = []

    def add(self, message: Message | None, key: str | None = None, error: str = "") -> Record:
        sequence = len(self.records) + 1
        suffix = message.partition_key.suffix if message is not None else key
        record = Record(sequence, f"deltran.x.{sequence}", suffix, message, error, None)
        self.records.append(record)
        self.changed()
        return record

    def changed(self) -> None:
        self.grew.set()
        for wake in list(self.readers):
            wake()

    async def generation(self) -> str:
        return "g1"

    async def start_floor(self, start: object) -> int:
        return len(self.records) if start == "new" else 0

    async def open(self, start: int) -> ListCursor:
        return ListCursor(self, start)


class ListCursor:
    def __init__(self, source: ListSource, start: int) -> None:
        self.source = source
        self.next = max(start, 1)
        self.wake: Callable[[], None] | None = None

    def notify(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.source.readers.append(wake)

    def take(self, limit: int) -> list[Record]:
        batch = self.source.records[self.next - 1 : self.next - 1 + limit]
        self.next += len(batch)
        return batch

    async def read(self, limit: int) -> list[Record]:
        while True:
            self.source.grew.clear()
            batch = self.take(limit)
            if batch:
                return batch
            await self.source.grew.wait()

    async def close(self) -> None:
        if self.wake is not None and self.wake in self.source.readers:
            self.source.readers.remove(self.wake)


class Sink:
    def __init__(self) -> None:
        self.letters: list[tuple[int, int, str]] = []
        self.fail = 0

    async def dead_letter(self, record: Record, deliveries: int, reason: str) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("dead-letter stream unavailable")
        self.letters.append((record.sequence, deliveries, reason))


class Rig:
    """One group's shared parts, and members built on them."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.values = KeyValues()
        self.store = FlakyStore(MemoryGroupStore(self.values, "S.ordered", lambda: None))
        self.source = ListSource()
        self.sink = Sink()
        self.members: list[OrderedSubscription] = []

    async def member(
        self,
        handle: Callable[[Message], object],
        store: FlakyStore | None = None,
        **overrides: object,
    ) -> OrderedSubscription:
        async def run(message: Message) -> None:
            result = handle(message)
            if asyncio.iscoroutine(result):
                await result

        member = OrderedSubscription(
            FunctionHandler(run),
            config(**overrides),
            store=store or self.store,
            source=self.source,
            sink=self.sink,
            clock=self.clock,
        )
        await member.start()
        self.members.append(member)
        return member

    async def advance(self, seconds: float, step: float = 0.25) -> None:
        for _ in range(round(seconds / step)):
            await settle()
            self.clock.advance(step)
        await settle()

    async def close(self) -> None:
        for member in self.members:
            await member.halt()


async def settle(rounds: int = 50) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def new(n: int, key: PartitionKey = KEY) -> Message:
    return Message.new(MessageType.PAYMENT_INSTRUCTION, key, {"n": n})


async def test_a_member_cut_off_from_the_store_stops_its_handlers_before_anyone_may_take_over() -> (
    None
):
    rig = Rig()
    started: list[int] = []
    release = asyncio.Event()

    async def slow(message: Message) -> None:
        started.append(message.payload["n"])
        await release.wait()

    member = await rig.member(slow)
    rig.source.add(new(0))
    await settle()
    assert started == [0]
    rig.store.down = True
    await rig.advance(0.75 * T - 0.25)
    assert member.owned, "fenced too early"
    await rig.advance(0.5)
    assert not member.owned, "still handling 0.75 x failover_timeout after the last heartbeat"
    assert started == [0]
    rig.store.down = False
    await rig.advance(T)
    assert member.owned
    assert started == [0, 0], "the cancelled message was not handled again first"
    release.set()
    await rig.close()


async def test_a_member_whose_partition_was_taken_over_stops_handling_it() -> None:
    rig = Rig()
    handled: list[int] = []
    member = await rig.member(lambda m: handled.append(m.payload["n"]))
    rig.source.add(new(0))
    await settle()
    assert handled == [0]
    partition = KEY.partition_number(32)
    assert partition is not None
    snapshot = await rig.store.snapshot()
    current = snapshot.partitions[partition]
    await rig.store.write_partition(
        partition,
        PartitionRecord(owner="someone-else", floor=current.value.floor),
        current.revision,
    )
    rig.source.add(new(1))
    await settle()
    assert handled == [0, 1]  # its commit of #2 finds the record changed...
    rig.source.add(new(2))
    await settle()
    assert partition not in member.owned  # ...and the lane stops
    assert handled == [0, 1]
    await rig.close()


async def test_failed_deliveries_count_across_owners_so_max_deliver_holds() -> None:
    rig = Rig()

    def fail(message: Message) -> None:
        raise RetryableError("no", delay=1.0)

    first = await rig.member(fail, max_deliver=3)
    rig.source.add(new(0))
    await rig.advance(1.25)  # two deliveries failed
    await first.halt()
    attempts: list[int] = []

    def fail_again(message: Message) -> None:
        from message_bus import current_delivery

        attempts.append(current_delivery().attempt)
        raise RetryableError("still no", delay=1.0)

    await rig.member(fail_again, max_deliver=3)
    await rig.advance(2 * T)
    assert attempts == [3]
    assert [(seq, deliveries) for seq, deliveries, _ in rig.sink.letters] == [(1, 3)]
    assert "max deliveries (3)" in rig.sink.letters[0][2]
    await rig.close()


async def test_an_undecodable_record_is_dead_lettered_and_its_partition_goes_on() -> None:
    rig = Rig()
    handled: list[int] = []
    await rig.member(lambda m: handled.append(m.payload["n"]))
    rig.source.add(None, key=KEY.suffix, error="bad body")
    rig.source.add(new(1))
    await settle()
    assert handled == [1]
    assert rig.sink.letters[0][0] == 1
    assert "undecodable: bad body" in rig.sink.letters[0][2]
    await rig.close()


async def test_a_dead_letter_that_cannot_be_stored_holds_its_partition_until_it_is() -> None:
    rig = Rig()
    handled: list[int] = []

    def handle(message: Message) -> None:
        if message.payload["n"] == 0:
            from message_bus import PermanentError

            raise PermanentError("never")
        handled.append(message.payload["n"])

    rig.sink.fail = 2
    await rig.member(handle)
    rig.source.add(new(0))
    rig.source.add(new(1))
    await settle()
    assert handled == []
    await rig.advance(4.0)
    assert [seq for seq, _, _ in rig.sink.letters] == [1]
    assert handled == [1]
    await rig.close()


async def test_a_partition_over_its_buffer_lets_the_others_go_on_and_is_read_again_in_order() -> (
    None
):
    clock = ManualClock()
    broker = InMemoryBroker(clock=clock)
    publisher = broker.publisher(PublisherConfig(validate_payloads=False))  # {"n": n} payloads
    held = asyncio.Event()
    done: dict[str, list[int]] = {KEY.suffix: [], OTHER.suffix: []}

    async def handle(message: Message) -> None:
        if message.partition_key == KEY and message.payload["n"] == 0:
            await held.wait()
        done[message.partition_key.suffix].append(message.payload["n"])

    subscription = await broker.subscriber(MessageType.PAYMENT_INSTRUCTION, config()).subscribe(
        FunctionHandler(handle)
    )
    count = 2 * CAPACITY + 10
    for n in range(count):
        await publisher.publish(new(n))
    for n in range(20):
        await publisher.publish(new(n, OTHER))
    await broker.settle()
    assert done[OTHER.suffix] == list(range(20))
    assert done[KEY.suffix] == []
    held.set()
    await broker.settle()
    assert done[KEY.suffix] == list(range(count))
    await subscription.stop()
    await broker.close()


@pytest.mark.parametrize("drain", [False, True])
async def test_stopping_releases_the_partitions_so_another_member_takes_them_at_once(
    drain: bool,
) -> None:
    rig = Rig()
    first = await rig.member(lambda m: None)
    second = await rig.member(lambda m: None)
    await rig.advance(T)
    assert len(first.owned) == len(second.owned) == 16
    await (first.drain() if drain else first.stop())
    await rig.advance(T / 4 + 0.25)
    assert len(second.owned) == 32, "partitions waited for failover_timeout after a clean stop"
    await rig.close()


async def test_a_partition_taken_over_during_a_read_gets_every_message_from_its_position() -> None:
    rig = Rig()
    handled: list[int] = []
    stuck = asyncio.Event()

    async def first_handler(message: Message) -> None:
        if message.payload["n"] == 1 and not stuck.is_set():
            await stuck.wait()  # in flight when its member dies
        handled.append(message.payload["n"])

    members = [await rig.member(first_handler), await rig.member(first_handler)]
    await rig.advance(T)
    owner = next(m for m in members if KEY.partition_number(32) in m.owned)
    for n in range(20):
        rig.source.add(new(n))
    await settle()
    assert handled == [0]
    await owner.halt()
    stuck.set()  # the dead member's handler never finishes; the survivor's runs through
    sent = 20
    for _ in range(round(3 * T / 0.25)):  # whenever the partition moves, a read returns
        rig.source.add(new(sent))
        sent += 1
        rig.clock.advance(0.25)
        await settle()
    assert handled == list(range(sent)), handled
    await rig.close()


async def test_a_slow_read_of_the_group_never_delays_a_heartbeat_into_a_fence() -> None:
    rig = Rig()
    handled: list[int] = []
    member = await rig.member(lambda m: handled.append(m.payload["n"]))
    rig.store.slow_reads = asyncio.Event()  # every read of the group's records hangs
    await rig.advance(2 * T)
    assert len(member.owned) == 32, "a healthy member fenced itself"
    rig.source.add(new(0))
    await settle()
    assert handled == [0]
    rig.store.slow_reads.set()
    await rig.close()
