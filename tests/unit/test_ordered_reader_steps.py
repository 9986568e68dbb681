"""An ordered group's reader on a fake clock: how many event loop steps a record takes to
its handler, and that handing records over without waiting loses and reorders nothing
while partitions move."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ordered_member import Rig, T, new, settle

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, PublisherConfig
from message_bus.adapters.memory import InMemoryBroker
from message_bus.adapters.memory.clock import ManualClock
from message_bus.adapters.ordered.member import OrderedSubscription
from message_bus.ports.config import SubscriberConfig

CORRIDORS = ["USD-EUR", "GBP-USD", "EUR-JPY", "AED-INR", "USD-CHF", "CAD-USD", "EUR-GBP", "SGD-HKD"]


async def test_a_record_reaches_its_handler_one_event_loop_step_after_it_is_stored() -> None:
    rig = Rig()
    handled: list[int] = []
    await rig.member(lambda m: handled.append(m.payload["n"]))
    await rig.advance(T)
    for n in range(3):
        rig.source.add(new(n))
        await asyncio.sleep(0)  # one step: the lane's worker runs the handler
        assert handled == list(range(n + 1)), f"record {n} was not handled one step after"
    await rig.close()


async def test_on_the_memory_broker_a_published_message_is_handled_one_step_later() -> None:
    broker = InMemoryBroker(clock=ManualClock())
    publisher = broker.publisher(PublisherConfig(validate_payloads=False))
    handled: list[int] = []

    async def handle(message: Message) -> None:
        handled.append(message.payload["n"])

    config = SubscriberConfig(consumer_group="steps", ordering="partition")
    subscription = await broker.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
        FunctionHandler(handle)
    )
    await broker.settle()
    for n in range(3):
        await publisher.publish(new(n))
        await asyncio.sleep(0)
        assert handled == list(range(n + 1)), f"message {n} was not handled one step after"
    await subscription.stop()
    await broker.close()


def owned_key(member: OrderedSubscription) -> PartitionKey:
    for corridor in CORRIDORS:
        key = PartitionKey.corridor(corridor)
        if key.partition_number(member.partitions) in member.owned:
            return key
    raise AssertionError(f"none of {CORRIDORS} is owned by member {member.member}")


async def test_a_partition_handed_over_behind_the_readers_position_misses_nothing() -> None:
    """The new owner's reader is parked past the partition's position when it takes it
    over, and records keep arriving: they must not reach the partition before the
    reader went back for what lies between."""
    rig = Rig()
    handled: dict[str, list[int]] = {}
    gate = asyncio.Event()

    async def handle(message: Message) -> None:
        if message.payload["n"] == 0 and not gate.is_set():
            await gate.wait()  # the old owner is busy with the first record
        handled.setdefault(message.partition_key.suffix, []).append(message.payload["n"])

    first, second = await rig.member(handle), await rig.member(handle)
    await rig.advance(T)
    moving, staying = owned_key(first), owned_key(second)
    for n in range(5):
        rig.source.add(new(n, moving))
    await settle()  # the new owner's reader has passed all of them, keeping none
    stopping = asyncio.ensure_future(first.stop())
    await settle()
    gate.set()
    await stopping
    n = 0
    for _ in range(round(T / 0.25)):  # records of both arrive while the partition moves
        for key in (moving, staying):
            rig.source.add(new(100 + n, key))
        n += 1
        rig.clock.advance(0.25)
        await asyncio.sleep(0)
    await rig.advance(T)
    assert moving.partition_number(32) in second.owned
    late = [100 + i for i in range(n)]
    assert handled[moving.suffix] == [0, 1, 2, 3, 4, *late], handled[moving.suffix]
    assert handled[staying.suffix] == late
    await rig.close()


Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, len(CORRIDORS) - 1)),
        st.tuples(st.sampled_from(["tick", "step", "join"]), st.just(0)),
        st.tuples(st.just("stop"), st.integers(0, 2)),
    ),
    max_size=60,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
async def test_members_joining_and_stopping_while_records_arrive_lose_and_reorder_nothing(
    plan: list[Step],
) -> None:
    """Clean handovers only: every record is handled once, in its key's order, whatever
    step of a rebalance it arrives at."""
    rig = Rig()
    handled: dict[str, list[int]] = {}
    sent: dict[str, list[int]] = {}

    async def handle(message: Message) -> None:
        if message.payload["n"] % 3 == 0:
            await asyncio.sleep(0)  # some handlers suspend: handovers wait for them
        handled.setdefault(message.partition_key.suffix, []).append(message.payload["n"])

    live = [await rig.member(handle)]
    await rig.advance(T)
    for n, (action, arg) in enumerate(plan):
        if action == "add":
            key = PartitionKey.corridor(CORRIDORS[arg])
            rig.source.add(new(n, key))
            sent.setdefault(key.suffix, []).append(n)
        elif action == "tick":
            rig.clock.advance(0.25)
            await asyncio.sleep(0)
        elif action == "step":
            await asyncio.sleep(0)
        elif action == "join" and len(live) < 3:
            live.append(await rig.member(handle))
        elif action == "stop" and len(live) > 1:
            await live.pop(arg % len(live)).stop()
    await rig.advance(3 * T)
    assert handled == sent
    await rig.close()
