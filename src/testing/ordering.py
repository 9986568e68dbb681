"""Contract scenarios of ordered groups (``ordering="partition"``): order, ownership, failover.

Every adapter gives the same answers: per-key order under concurrency, head-of-line
retries, two members splitting the partitions, a member crash, a join mid-stream, and
a member with another partition count refused. Members of an ordered group expose
``owned`` (the partitions they own) and ``halt()`` (stop as a killed process would).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import PartitionCountError, PermanentError, RetryableError
from message_bus.domain.message import Message
from message_bus.domain.partition import PartitionKey
from message_bus.ports.config import SubscriberConfig
from message_bus.ports.subscriber import FunctionHandler, MessageHandler, Subscription

from .harness import BusHarness, Gate
from .scenarios import Context, Inbox, scenario

CORRIDORS = (
    "USD-EUR",
    "GBP-USD",
    "EUR-JPY",
    "CHF-EUR",
    "AUD-USD",
    "USD-CAD",
    "SEK-NOK",
    "EUR-GBP",
)
PARTITIONS = 32


class OrderedMember(Protocol):
    """What the scenarios use of an ordered group's subscription, besides the port."""

    @property
    def owned(self) -> frozenset[int]: ...

    async def halt(self) -> None: ...

    async def stop(self) -> None: ...


def _member(subscription: Subscription) -> OrderedMember:
    owned = getattr(subscription, "owned", None)
    halt = getattr(subscription, "halt", None)
    assert owned is not None, "an ordered subscription tells the partitions it owns"
    assert halt is not None, "an ordered subscription can be halted"
    return subscription  # type: ignore[return-value]  # checked just above


def ordered_config(ctx: Context, group: str = "ordered", **overrides: Any) -> SubscriberConfig:
    """An ordered group of this run, over the whole stream, failing over after twice
    the run's ack wait."""
    settings: dict[str, Any] = {
        "partition_key": None,
        "ordering": "partition",
        "partitions": PARTITIONS,
        "failover_timeout": 2 * ctx.ack_wait,
    }
    settings.update(overrides)
    return ctx.config(group, **settings)


def partition(key: PartitionKey) -> int:
    number = key.partition_number(PARTITIONS)
    assert number is not None
    return number


def candidate_keys(ctx: Context) -> Iterator[PartitionKey]:
    """Keys of this run in every corridor between :data:`CORRIDORS`' currencies (72), so
    one falls in any given half of the partitions but with odds of 2**-72 against."""
    currencies = sorted({c for corridor in CORRIDORS for c in corridor.split("-")})
    for base in currencies:
        for quote in currencies:
            if base != quote:
                yield ctx.key(f"{base}-{quote}")


def keys_in_distinct_partitions(ctx: Context, count: int) -> list[PartitionKey]:
    """``count`` keys of this run, each in a partition of its own."""
    found: dict[int, PartitionKey] = {}
    for corridor in CORRIDORS:
        key = ctx.key(corridor)
        found.setdefault(partition(key), key)
        if len(found) == count:
            return list(found.values())
    for first in "ABCDEFGHJKLMNPQRSTUVWXYZ":
        for second in "ABCDEFGHJKLMNPQRSTUVWXYZ":
            key = PartitionKey.corridor_bank(
                corridor_id="USD-EUR", bank_id=f"{first}{second}{ctx.bank[2:]}"
            )
            found.setdefault(partition(key), key)
            if len(found) == count:
                return list(found.values())
    raise AssertionError(f"no {count} keys in distinct partitions")


@dataclass(slots=True)
class OrderLog:
    """What an ordered group's handlers did: starts, completions, overlaps per key."""

    inbox: Inbox
    running: dict[str, str] = field(default_factory=dict)
    overlaps: list[tuple[str, str, str]] = field(default_factory=list)
    done: list[Message] = field(default_factory=list)
    active: int = 0
    most_active: int = 0

    def handler(
        self,
        member: str = "",
        work: Callable[[Message], Awaitable[None]] | None = None,
    ) -> MessageHandler:
        """A handler that records the delivery, runs ``work``, and records completion."""

        async def handle(message: Message) -> None:
            if self.inbox.record(message, member) is None:
                return  # another run's message
            key = message.partition_key.suffix
            other = self.running.get(key)
            if other is not None:
                self.overlaps.append((key, other, member))
            self.running[key] = member
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            try:
                await asyncio.sleep(0)
                if work is not None:
                    await work(message)
                await asyncio.sleep(0)
            finally:
                self.active -= 1
                if self.running.get(key) == member:
                    del self.running[key]
            self.done.append(message)

        return FunctionHandler(handle)

    def completed(self, message: Message) -> bool:
        return any(m.id == message.id for m in self.done)

    def check(self, sent: Sequence[Message]) -> None:
        """Each of ``sent`` completed exactly once, in publish order per key, and no key
        was handled by two handlers at once."""
        assert not self.overlaps, f"keys handled twice at once: {self.overlaps[:5]}"
        ids = [m.id for m in self.done]
        doubled = {i for i in ids if ids.count(i) > 1}
        assert not doubled, f"completed more than once: {sorted(doubled)[:5]}"
        assert set(ids) == {m.id for m in sent}, (
            f"missing {len({m.id for m in sent} - set(ids))}, unexpected "
            f"{len(set(ids) - {m.id for m in sent})}"
        )
        expected: dict[str, list[str]] = defaultdict(list)
        for message in sent:
            expected[message.partition_key.suffix].append(message.id)
        actual: dict[str, list[str]] = defaultdict(list)
        for message in self.done:
            actual[message.partition_key.suffix].append(message.id)
        for key, order in expected.items():
            assert actual[key] == order, f"{key}: completed out of publish order"

    def first_delivery_order_holds(self, sent: Sequence[Message]) -> None:
        """The first delivery of each message came in publish order per key."""
        first: dict[str, list[str]] = defaultdict(list)
        for item in self.inbox.items:
            if (
                item.attempt == 1
                and item.message.id not in first[item.message.partition_key.suffix]
            ):
                first[item.message.partition_key.suffix].append(item.message.id)
        for key in {m.partition_key.suffix for m in sent}:
            order = [m.id for m in sent if m.partition_key.suffix == key]
            seen = [i for i in first[key] if i in order]
            assert seen == order[: len(seen)], f"{key}: first deliveries out of order"


async def until(
    ctx: Context, predicate: Callable[[], bool], what: str, *, step: float | None = None
) -> None:
    """Let broker time pass in steps (a tick of the group) until ``predicate()`` holds."""
    step = step if step is not None else ctx.ack_wait / 2
    rounds = max(8, int(ctx.timeout / step)) if not ctx.features.fake_clock else 200
    for _ in range(rounds):
        await ctx.h.settle()
        if predicate():
            return
        await ctx.h.advance(step)
    await ctx.h.settle()
    assert predicate(), f"timed out waiting for {what}"


async def publish(h: BusHarness, messages: Sequence[Message]) -> None:
    publisher = h.publisher()
    for message in messages:
        await publisher.publish(message)


def interleaved(ctx: Context, keys: Sequence[PartitionKey], per_key: int) -> list[Message]:
    return [
        ctx.message({"payment_id": f"p{i}-{k}", "n": i}, key=key)
        for i in range(per_key)
        for k, key in enumerate(keys)
    ]


@scenario()
async def ordered_group_keeps_each_keys_order_under_concurrency(h: BusHarness) -> None:
    """Up to max_concurrent partitions run at once; within a key, one message at a time,
    in publish order."""
    ctx = Context(h)
    keys = keys_in_distinct_partitions(ctx, 6)
    log = OrderLog(ctx.inbox())
    gate = ctx.gate()

    async def first_waits(message: Message) -> None:
        if message.payload["n"] == 0:
            await gate.wait()

    config = ordered_config(ctx, max_concurrent=4)
    subscription = await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
        log.handler(work=first_waits)
    )
    sent = interleaved(ctx, keys, 12)
    await publish(h, sent)
    await until(ctx, lambda: log.active >= 4, "4 partitions handled at once")
    await h.settle()
    assert log.active == 4, f"{log.active} handlers ran with max_concurrent=4"
    gate.open()
    await until(ctx, lambda: len(log.done) >= len(sent), f"{len(sent)} messages handled")
    log.check(sent)
    assert log.most_active == 4, f"at most {log.most_active} handlers ran at once"
    await subscription.stop()


@scenario()
async def ordered_group_retries_head_of_line_while_other_partitions_go_on(
    h: BusHarness,
) -> None:
    """A failure holds its partition until the message succeeds; other partitions go
    on. A dead-lettered message releases its partition, and its dead letter says the
    partition's order went on without it."""
    ctx = Context(h)
    held, free = keys_in_distinct_partitions(ctx, 2)
    log = OrderLog(ctx.inbox())
    failed: set[str] = set()

    async def work(message: Message) -> None:
        role = message.payload.get("role")
        if role == "flaky" and message.id not in failed:
            failed.add(message.id)
            raise RetryableError("not yet", delay=ctx.ack_wait)
        if role == "poison":
            raise PermanentError("cannot settle")

    held_messages = [
        ctx.message({"payment_id": f"h{i}", "role": "flaky" if i == 0 else ""}, key=held)
        for i in range(4)
    ]
    free_messages = [ctx.message({"payment_id": f"f{i}"}, key=free) for i in range(4)]
    config = ordered_config(ctx, nak_initial_delay=ctx.ack_wait)
    subscription = await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
        log.handler(work=work)
    )
    await publish(h, [*held_messages, *free_messages])
    await ctx.eventually(
        lambda: all(log.completed(m) for m in free_messages), "the other partition's messages"
    )
    assert not any(log.completed(m) for m in held_messages), "the held partition went on"
    assert [i.message.id for i in log.inbox.items if i.message.partition_key == held] == [
        held_messages[0].id
    ], "a later message of the held partition started before the failed one succeeded"
    await h.advance(ctx.beyond(ctx.ack_wait))
    await until(
        ctx, lambda: all(log.completed(m) for m in held_messages), "the held partition's messages"
    )
    log.check([*held_messages, *free_messages])
    assert log.inbox.attempts(held_messages[0].id) == [1, 2]

    poison = ctx.message({"payment_id": "poison", "role": "poison"}, key=held)
    after = ctx.message({"payment_id": "after"}, key=held)
    await publish(h, [poison, after])
    await until(ctx, lambda: log.completed(after), "the message after the dead-lettered one")
    letter = await ctx.dead_letter(poison.id)
    assert "cannot settle" in letter.reason, letter.reason
    assert "order is broken" in letter.reason, letter.reason
    await subscription.stop()


async def _two_members(
    ctx: Context, log: OrderLog, config: SubscriberConfig
) -> tuple[OrderedMember, OrderedMember]:
    h = ctx.h
    first = _member(
        await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(log.handler("m1"))
    )
    second = _member(
        await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(log.handler("m2"))
    )
    half = PARTITIONS // 2
    await until(
        ctx,
        lambda: len(first.owned) == half and len(second.owned) == half,
        "two members owning half the partitions each",
    )
    assert not first.owned & second.owned, "a partition owned by two members"
    return first, second


@scenario()
async def ordered_group_members_split_the_partitions_and_never_share_a_key(
    h: BusHarness,
) -> None:
    """Two members own 16 partitions each; every key is handled by its partition's
    owner alone, in order."""
    ctx = Context(h)
    log = OrderLog(ctx.inbox())
    first, second = await _two_members(ctx, log, ordered_config(ctx))
    keys = [ctx.key(corridor) for corridor in CORRIDORS]
    sent = interleaved(ctx, keys, 10)
    await publish(h, sent)
    await until(ctx, lambda: len(log.done) >= len(sent), f"{len(sent)} messages handled")
    log.check(sent)
    for key in keys:
        owner = "m1" if partition(key) in first.owned else "m2"
        members = {i.member for i in log.inbox.items if i.message.partition_key == key}
        assert members == {owner}, f"{key.suffix} handled by {members}, owner {owner}"
    await first.stop()
    await second.stop()


@scenario()
async def ordered_group_moves_a_crashed_members_partitions_and_redelivers_its_message_first(
    h: BusHarness,
) -> None:
    """A member that dies mid-handler loses its partitions after failover_timeout; the
    new owner handles the message that was in flight before the later ones."""
    ctx = Context(h)
    log = OrderLog(ctx.inbox())
    stuck = Gate(ctx.timeout * 4)

    async def work(message: Message) -> None:
        if message.payload.get("stuck") and not stuck.is_open:
            await stuck.wait()

    config = ordered_config(ctx)
    h_sub = h.subscriber(MessageType.PAYMENT_INSTRUCTION, config)
    first = _member(await h_sub.subscribe(log.handler("m1", work)))
    second = _member(
        await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(log.handler("m2"))
    )
    await until(ctx, lambda: len(first.owned) == PARTITIONS // 2, "the partitions split")
    key = next(k for k in candidate_keys(ctx) if partition(k) in first.owned)
    in_flight = ctx.message({"payment_id": "in-flight", "stuck": True}, key=key)
    later = [ctx.message({"payment_id": f"later{i}"}, key=key) for i in range(3)]
    await publish(h, [in_flight, *later])
    await ctx.eventually(lambda: bool(log.inbox.attempts(in_flight.id)), "the in-flight message")
    await first.halt()
    stuck.open()
    await until(ctx, lambda: len(second.owned) == PARTITIONS, "the survivor owning every partition")
    await until(ctx, lambda: all(log.completed(m) for m in later), "the later messages")
    log.check([in_flight, *later])
    owners = [(i.message.id, i.member) for i in log.inbox.items if i.message.partition_key == key]
    assert owners == [
        (in_flight.id, "m1"),
        (in_flight.id, "m2"),
        *[(m.id, "m2") for m in later],
    ], owners
    await second.stop()


@scenario()
async def ordered_group_hands_partitions_to_a_member_joining_mid_stream(h: BusHarness) -> None:
    """A member that joins takes its share once the owners have finished their
    running handlers; per-key order holds across the handoff."""
    ctx = Context(h)
    log = OrderLog(ctx.inbox())
    config = ordered_config(ctx)
    first = _member(
        await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(log.handler("m1"))
    )
    await until(ctx, lambda: len(first.owned) == PARTITIONS, "the first member owning everything")
    keys = [ctx.key(corridor) for corridor in CORRIDORS]
    before = interleaved(ctx, keys, 5)
    await publish(h, before)
    second = _member(
        await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(log.handler("m2"))
    )
    after = [ctx.message({"payment_id": f"after-{i}"}, key=key) for i, key in enumerate(keys * 3)]
    await publish(h, after[: len(after) // 2])
    await until(
        ctx,
        lambda: len(first.owned) == len(second.owned) == PARTITIONS // 2,
        "the partitions split between the two",
    )
    assert not first.owned & second.owned
    await publish(h, after[len(after) // 2 :])
    sent = [*before, *after]
    await until(ctx, lambda: len(log.done) >= len(sent), f"{len(sent)} messages handled")
    log.check(sent)
    moved = [k for k in keys if partition(k) in second.owned]
    if moved:
        assert "m2" in log.inbox.members(), "the member that joined handled nothing"
    await first.stop()
    await second.stop()


@scenario()
async def ordered_group_refuses_a_member_with_another_partition_count(h: BusHarness) -> None:
    """The partition count is part of the group: a member with another count is
    refused with PartitionCountError before it handles anything."""
    ctx = Context(h)
    log = OrderLog(ctx.inbox())
    config = ordered_config(ctx)
    first = await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(log.handler("m1"))
    other = ordered_config(ctx, partitions=16)
    refusal: PartitionCountError | None = None
    try:
        await h.subscriber(MessageType.PAYMENT_INSTRUCTION, other).subscribe(log.handler("m2"))
    except PartitionCountError as exc:
        refusal = exc
    assert refusal is not None, "a member with 16 partitions joined a group of 32"
    assert (refusal.field, refusal.value, refusal.expected) == ("partitions", 16, PARTITIONS)
    sent = [ctx.message(key=ctx.key(c)) for c in CORRIDORS]
    await publish(h, sent)
    await until(ctx, lambda: len(log.done) >= len(sent), "the first member's messages")
    log.check(sent)
    assert log.inbox.members() == {"m1"}
    await first.stop()


__all__ = ["CORRIDORS", "OrderLog", "ordered_config"]


@scenario()
async def ordered_group_drain_handles_the_messages_its_partitions_buffered(h: BusHarness) -> None:
    """Draining a member handles, in order, every message its partitions had already
    read (not only the one in flight), then stops."""
    ctx = Context(h)
    (key,) = keys_in_distinct_partitions(ctx, 1)
    log = OrderLog(ctx.inbox())
    gate = ctx.gate()

    async def first_waits(message: Message) -> None:
        if message.payload["n"] == 0:
            await gate.wait()

    subscription = await h.subscriber(
        MessageType.PAYMENT_INSTRUCTION, ordered_config(ctx)
    ).subscribe(log.handler(work=first_waits))
    sent = [ctx.message({"payment_id": f"d{i}", "n": i}, key=key) for i in range(4)]
    await publish(h, sent)
    await until(ctx, lambda: log.active == 1, "the first message in flight")
    lanes = getattr(subscription, "lanes", None)
    assert lanes is not None, "an ordered subscription shows its partitions' lanes"
    number = partition(key)
    await ctx.eventually(
        lambda: number in lanes and len(lanes[number].queue) == len(sent),
        "the partition's messages read into its lane",
    )
    draining = asyncio.ensure_future(subscription.drain())
    await h.settle()
    gate.open()
    await asyncio.wait_for(draining, ctx.timeout)
    assert [m.id for m in log.done] == [m.id for m in sent], "drain left buffered messages"
