"""The contract scenarios every adapter passes, and their registry.

Each scenario is ``async def scenario(h: BusHarness) -> None``: it raises
``AssertionError`` when the adapter breaks the contract. Scenarios work against a real
broker too: they name consumer groups uniquely per run, put a unique bank (BIC) in every
partition key and filter their consumers to it (or ignore other runs' messages by the
``Contract-Run`` header), and wait with bounded polling, never assuming instant delivery.
"""

from __future__ import annotations

import asyncio
import secrets
import string
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from message_bus.domain.catalog import MessageType
from message_bus.domain.dead_letter import DeadLetter
from message_bus.domain.errors import (
    AlreadyReplayedError,
    ClosedError,
    NoRespondersError,
    PermanentError,
    RetryableError,
    ValidationError,
)
from message_bus.domain.message import Message
from message_bus.domain.partition import PartitionKey
from message_bus.domain.payload_schema import convert_payload
from message_bus.domain.payloads import PaymentInstruction
from message_bus.ports.config import PublisherConfig, SubscriberConfig
from message_bus.ports.outcome import Outcome
from message_bus.ports.publisher import PublishReceipt
from message_bus.ports.subscriber import (
    FunctionHandler,
    MessageHandler,
    current_delivery,
    current_handling,
)

from .harness import BusHarness, Features, Gate, HarnessFactory, eventually
from .samples import sample_payload

RUN_HEADER = "Contract-Run"
"""User header carrying the scenario run id; consumers ignore messages of other runs."""

Scenario = Callable[[BusHarness], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    """A registered scenario.

    Attributes:
        name: a sentence in snake case, used as the test id.
        run: the scenario coroutine function.
        requires: names of :class:`Features` flags that must be true to run it.
    """

    name: str
    run: Scenario
    requires: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name

    def missing(self, features: Features) -> list[str]:
        """The required feature flags ``features`` lacks (empty: the scenario applies)."""
        return [flag for flag in self.requires if not getattr(features, flag)]


SCENARIOS: dict[str, ScenarioSpec] = {}
"""Every contract scenario, by name, in definition order."""


def scenario(*, requires: Iterable[str] = ()) -> Callable[[Scenario], Scenario]:
    """Register the decorated coroutine function in :data:`SCENARIOS` under its name."""
    flags = tuple(requires)
    for flag in flags:
        if flag not in Features.__dataclass_fields__:
            raise ValueError(f"unknown feature flag {flag!r}")

    def register(run: Scenario) -> Scenario:
        name = getattr(run, "__name__", repr(run))
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = ScenarioSpec(name, run, flags)
        return run

    return register


def applicable(features: Features) -> list[ScenarioSpec]:
    """The scenarios an adapter with ``features`` can run."""
    return [spec for spec in SCENARIOS.values() if not spec.missing(features)]


async def run_scenario(spec: ScenarioSpec | str, factory: HarnessFactory) -> None:
    """Build a harness, run one scenario on it, and close it whatever happens."""
    if isinstance(spec, str):
        spec = SCENARIOS[spec]
    harness = await factory()
    try:
        missing = spec.missing(harness.features)
        if missing:
            raise ValueError(f"{spec.name} needs features {missing}")
        await spec.run(harness)
    finally:
        await harness.close()


# -- scenario toolkit ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One delivery as a handler saw it."""

    message: Message
    attempt: int
    stream: str | None
    sequence: int | None
    subject: str
    member: str


@dataclass(slots=True)
class Inbox:
    """What the handlers of one scenario received (other runs' messages are ignored)."""

    run: str
    items: list[Received] = field(default_factory=list)

    def record(self, message: Message, member: str = "") -> Received | None:
        """Record the current delivery of ``message``; None if it belongs to another run."""
        if message.headers.get(RUN_HEADER) != self.run:
            return None
        delivery = current_delivery()
        item = Received(
            message, delivery.attempt, delivery.stream, delivery.sequence, delivery.subject, member
        )
        self.items.append(item)
        return item

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        """Message ids in delivery order (with repeats for redeliveries)."""
        return [item.message.id for item in self.items]

    def attempts(self, message_id: str) -> list[int]:
        """The attempt numbers ``message_id`` was delivered with, in order."""
        return [item.attempt for item in self.items if item.message.id == message_id]

    def members(self) -> set[str]:
        """The members that received something."""
        return {item.member for item in self.items}


def _unique_bic() -> str:
    letters = "".join(secrets.choice(string.ascii_uppercase) for _ in range(4))
    branch = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(3))
    return f"{letters}GB2L{branch}"


class Context:
    """Per-run names, keys, messages and waiting helpers for one scenario."""

    def __init__(self, harness: BusHarness) -> None:
        self.h = harness
        self.features = harness.features
        self.run = secrets.token_hex(5)
        self.bank = _unique_bic()
        self.timeout = self.features.timeout
        self.ack_wait = max(self.features.min_ack_wait, 1.0)
        """The ack wait (and NAK delay) scenarios use: short, but honoured precisely."""

    def name(self, role: str) -> str:
        """A consumer group or durable name unique to this run."""
        return f"{role}-{self.run}"

    def key(self, corridor: str = "USD-EUR") -> PartitionKey:
        """A partition key unique to this run (the run's bank within ``corridor``)."""
        return PartitionKey.corridor_bank(corridor_id=corridor, bank_id=self.bank)

    def message(
        self,
        payload: Any = None,
        *,
        key: PartitionKey | None = None,
        message_type: MessageType = MessageType.PAYMENT_INSTRUCTION,
        **kwargs: Any,
    ) -> Message:
        """A message of this run (tagged with :data:`RUN_HEADER`)."""
        headers = {RUN_HEADER: self.run, **kwargs.pop("headers", {})}
        if payload is None:
            payload = {"payment_id": f"pay-{secrets.token_hex(4)}", "amount": "100.00"}
        return Message.new(message_type, key or self.key(), payload, headers=headers, **kwargs)

    def config(self, group: str = "workers", **overrides: Any) -> SubscriberConfig:
        """A subscriber config of this run: unique group, filtered to :meth:`key`."""
        settings: dict[str, Any] = {
            "consumer_group": self.name(group),
            "durable_name": self.name("contract"),
            "partition_key": self.key(),
            "ack_wait": self.ack_wait,
        }
        settings.update(overrides)
        return SubscriberConfig(**settings)

    def inbox(self) -> Inbox:
        return Inbox(self.run)

    def gate(self) -> Gate:
        return Gate(self.timeout)

    def beyond(self, seconds: float) -> float:
        """``seconds`` plus a margin: tiny on a fake clock, generous on a real one."""
        if self.features.fake_clock:
            return seconds + 0.001
        return seconds + max(0.3, seconds * 0.5)

    async def eventually(self, predicate: Callable[[], bool | Awaitable[bool]], what: str) -> None:
        await eventually(predicate, timeout=self.timeout, what=what)

    async def dead_letter(self, message_id: str) -> DeadLetter:
        """Wait for the dead letter of ``message_id`` and return it."""
        found: list[DeadLetter] = []

        async def look() -> bool:
            letters = await self.h.dead_letters().list(limit=100_000)
            found[:] = [d for d in letters if d.message is not None and d.message.id == message_id]
            return bool(found)

        await self.eventually(look, f"a dead letter of {message_id}")
        assert len(found) == 1, f"{len(found)} dead letters of {message_id}"
        return found[0]

    async def has_dead_letter(self, message_id: str) -> bool:
        letters = await self.h.dead_letters().list(limit=100_000)
        return any(d.message is not None and d.message.id == message_id for d in letters)

    async def received_exactly_once(
        self, inbox: Inbox, sent: Sequence[Message], *, linger: float = 0.0
    ) -> None:
        """Wait for as many deliveries as ``sent``, let ``linger`` seconds of broker time
        pass (so that a wrong redelivery has time to show), settle, then check that each
        message of ``sent`` arrived exactly once and nothing else did."""
        await self.eventually(lambda: len(inbox) >= len(sent), f"{len(sent)} deliveries")
        if linger:
            await self.h.advance(linger)
        await self.h.settle()
        _exactly_once(inbox, sent)


async def refused(
    error: type[Exception], attempts: Iterable[Callable[[], Awaitable[object]]], what: str
) -> None:
    """Check that every call in ``attempts`` raises ``error``."""
    for attempt in attempts:
        try:
            await attempt()
        except error:
            continue
        raise AssertionError(what)


def recording(inbox: Inbox, member: str = "") -> MessageHandler:
    """A handler that records and acks."""

    async def handle(message: Message) -> None:
        inbox.record(message, member)

    return FunctionHandler(handle)


TRACE_CONTEXT_HEADERS = frozenset({"traceparent", "tracestate"})
"""W3C trace context headers, which tracing decorators add to published messages."""


def _without_trace_context(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in TRACE_CONTEXT_HEADERS}


def _exactly_once(inbox: Inbox, sent: Iterable[Message]) -> None:
    counts = Counter(inbox.ids)
    expected = {m.id for m in sent}
    doubled = {i: n for i, n in counts.items() if n != 1}
    assert not doubled, f"delivered more than once: {doubled}"
    assert set(counts) == expected, (
        f"missing {len(expected - set(counts))}, unexpected {len(set(counts) - expected)}"
    )


# -- scenarios -------------------------------------------------------------------------


@scenario()
async def round_trip_keeps_every_field(h: BusHarness) -> None:
    """Payload, headers, ids, correlation, created_at and partition arrive exactly."""
    ctx = Context(h)
    inbox = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config()).subscribe(recording(inbox))
    publisher = h.publisher(PublisherConfig(partitions=64, validate_payloads=False))
    payload = {
        "payment_id": "pay-0001",
        "amount": "1000.50",
        "currency": "USD",
        "debtor_bank": "BANKGB2L",
        "creditor_bank": "DEUTDEFFXXX",
        "fx_rate": 1.0825,
        "units": 12,
        "flags": [True, False, None],
        "memo": "Zahlung für Rechnung №42 ✓",
        "nested": {"lines": [{"n": 1}, {"n": 2}]},
    }
    sent = ctx.message(
        payload,
        correlation_id=f"corr-{ctx.run}",
        causation_id=f"cause-{ctx.run}",
        headers={"Tenant": "bank-a", "X-Trace-Note": "first leg"},
    )
    typed = ctx.message(
        PaymentInstruction(
            payment_id="pay-0002",
            amount=Decimal("250000.01"),
            currency="EUR",
            debtor_bank="BANKGB2L",
            creditor_bank="DEUTDEFF",
            corridor="USD-EUR",
        )
    )
    receipt = await publisher.publish(sent)
    await publisher.publish(typed)
    await ctx.eventually(lambda: len(inbox) == 2, "both messages")
    got, got_typed = sorted(inbox.items, key=lambda r: r.message.id != sent.id)
    message = got.message
    assert message.id == sent.id
    assert message.message_type is sent.message_type
    assert message.partition_key == sent.partition_key
    assert message.payload == payload
    assert _without_trace_context(message.headers) == dict(sent.headers)
    assert message.correlation_id == sent.correlation_id
    assert message.causation_id == sent.causation_id
    assert message.created_at == sent.created_at
    assert message.partition == sent.partition_key.partition_number(64)
    assert message.partitions == 64
    assert got.attempt == 1
    assert got.subject == sent.subject == receipt.subject
    assert (got.stream, got.sequence) == (receipt.stream, receipt.sequence)
    assert receipt.stream is not None
    assert receipt.sequence is not None
    assert receipt.message_id == sent.id
    assert receipt.partition == message.partition
    assert not receipt.duplicate
    assert got_typed.message.payload_as(PaymentInstruction) == typed.payload


@scenario()
async def thousand_messages_each_arrive_exactly_once(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config()).subscribe(recording(inbox))
    sent = [ctx.message({"payment_id": f"pay-{i:04d}", "amount": "1.00"}) for i in range(1000)]
    publisher = h.publisher()
    for start in range(0, len(sent), 100):
        await publisher.publish_many(sent[start : start + 100])
    await ctx.received_exactly_once(inbox, sent)


@scenario()
async def group_members_share_the_work_and_each_message_is_handled_once(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    config = ctx.config(max_concurrent=1, fetch_batch=1)
    started: set[str] = set()
    all_busy = ctx.gate()

    def member(name: str) -> MessageHandler:
        async def handle(message: Message) -> None:
            if inbox.record(message, name) is None:
                return
            started.add(name)
            if len(started) == 3:
                all_busy.open()
            await all_busy.wait()  # hold the first message until every member has one

        return FunctionHandler(handle)

    for name in ("a", "b", "c"):
        await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(member(name))
    sent = [ctx.message() for _ in range(30)]
    await h.publisher().publish_many(sent)
    await ctx.received_exactly_once(inbox, sent)
    assert inbox.members() == {"a", "b", "c"}, f"only {sorted(inbox.members())} got work"


@scenario()
async def every_group_receives_every_message(h: BusHarness) -> None:
    ctx = Context(h)
    billing, audit = ctx.inbox(), ctx.inbox()
    subscribe = h.subscriber
    await subscribe(MessageType.PAYMENT_INSTRUCTION, ctx.config("billing")).subscribe(
        recording(billing)
    )
    await subscribe(MessageType.PAYMENT_INSTRUCTION, ctx.config("audit")).subscribe(
        recording(audit)
    )
    sent = [ctx.message() for _ in range(20)]
    await h.publisher().publish_many(sent)
    await ctx.received_exactly_once(billing, sent)
    await ctx.received_exactly_once(audit, sent)


@scenario()
async def durable_group_resumes_with_exactly_the_unacked_messages(h: BusHarness) -> None:
    ctx = Context(h)
    config = ctx.config(max_concurrent=1, fetch_batch=1)
    first = ctx.inbox()
    acked: list[str] = []
    reached, release = ctx.gate(), ctx.gate()

    async def ack_fifty(message: Message) -> None:
        if first.record(message) is None:
            return
        if len(acked) < 50:
            acked.append(message.id)
            return
        reached.open()
        await release.wait()
        raise RetryableError("worker shutting down", delay=0)

    subscriber = h.subscriber(MessageType.PAYMENT_INSTRUCTION, config)
    subscription = await subscriber.subscribe(FunctionHandler(ack_fifty))
    sent = [ctx.message() for _ in range(100)]
    await h.publisher().publish_many(sent)
    await ctx.eventually(lambda: reached.is_open, "50 acks")
    stopping = asyncio.ensure_future(subscription.stop())
    await asyncio.sleep(0)
    release.open()
    await asyncio.wait_for(stopping, ctx.timeout)
    await subscriber.close()
    assert len(acked) == 50
    assert len(first) == 51, f"the stopped subscription handled {len(first)} deliveries, not 51"
    naked = first.items[-1].message.id

    second = ctx.inbox()
    restarted = h.subscriber(MessageType.PAYMENT_INSTRUCTION, config)
    await restarted.subscribe(recording(second))
    unacked = [m for m in sent if m.id not in set(acked)]
    # An acked message must stay acked, also after an ack wait.
    await ctx.received_exactly_once(second, unacked, linger=ctx.beyond(ctx.ack_wait))
    assert second.attempts(naked) == [2], "the NAKed delivery did not count"


@scenario()
async def stop_lets_the_handler_in_flight_finish_and_its_ack_counts(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    release = ctx.gate()
    finished: list[str] = []

    async def slow(message: Message) -> None:
        if inbox.record(message) is None:
            return
        await release.wait()
        finished.append(message.id)

    config = ctx.config(max_concurrent=1, fetch_batch=1)
    subscriber = h.subscriber(MessageType.PAYMENT_INSTRUCTION, config)
    subscription = await subscriber.subscribe(FunctionHandler(slow))
    sent = ctx.message()
    publisher = h.publisher()
    await publisher.publish(sent)
    await ctx.eventually(lambda: len(inbox) == 1, "the delivery")
    stopping = asyncio.ensure_future(subscription.stop())
    try:
        await h.settle()
        assert not stopping.done(), "stop returned while its handler was still running"
    finally:
        release.open()
    await asyncio.wait_for(stopping, ctx.timeout)
    assert finished == [sent.id]
    await subscriber.close()
    again = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(again))
    sentinel = ctx.message()
    await publisher.publish(sentinel)
    await ctx.eventually(lambda: sentinel.id in again.ids, "the next message")
    await h.advance(ctx.beyond(ctx.ack_wait))
    assert again.ids == [sentinel.id], "the message acked during stop was redelivered"


@scenario()
async def drain_finishes_the_handler_in_flight_and_leaves_later_messages_to_the_group(
    h: BusHarness,
) -> None:
    ctx = Context(h)
    config = ctx.config(max_concurrent=1, fetch_batch=1)
    first = ctx.inbox()
    started, release = ctx.gate(), ctx.gate()

    async def slow(message: Message) -> None:
        if first.record(message) is None:
            return
        started.open()
        await release.wait()

    subscriber = h.subscriber(MessageType.PAYMENT_INSTRUCTION, config)
    subscription = await subscriber.subscribe(FunctionHandler(slow))
    publisher = h.publisher()
    head = ctx.message()
    await publisher.publish(head)
    await ctx.eventually(lambda: started.is_open, "the first delivery")
    draining = asyncio.ensure_future(subscription.drain())
    later = [ctx.message() for _ in range(3)]
    try:
        await h.settle()
        assert not draining.done(), "drain returned while its handler was still running"
        assert not subscription.active
        await publisher.publish_many(later)
        await h.settle()
    finally:
        release.open()
    await asyncio.wait_for(draining, ctx.timeout)
    assert first.ids == [head.id], "the draining subscription took messages published later"
    await subscriber.close()

    second = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(second))
    # The drained message was acked: it does not come back after an ack wait.
    await ctx.received_exactly_once(second, later, linger=ctx.beyond(ctx.ack_wait))


@scenario()
async def max_ack_pending_bounds_the_unacknowledged_deliveries_of_a_group(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    release = ctx.gate()

    async def hold(message: Message) -> None:
        if inbox.record(message) is not None:
            await release.wait()

    # A long ack wait: nothing held here may be redelivered while the scenario looks.
    config = ctx.config(max_ack_pending=2, max_concurrent=5, ack_wait=max(ctx.ack_wait, 10.0))
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(FunctionHandler(hold))
    sent = [ctx.message() for _ in range(5)]
    try:
        await h.publisher().publish_many(sent)
        await ctx.eventually(lambda: len(inbox) >= 2, "two deliveries")
        await h.settle()
        assert len(inbox) == 2, f"{len(inbox)} deliveries unacknowledged at once, limit 2"
    finally:
        release.open()
    await ctx.received_exactly_once(inbox, sent)


@scenario()
async def replayed_dead_letter_reaches_only_its_group_under_the_original_id(h: BusHarness) -> None:
    """Group ``ledger`` acks a payment, group ``netting`` dead-letters it. The replay
    reaches ``netting`` alone, under the payment's own id, is recorded on the dead
    letter, and a second replay needs ``force``."""
    ctx = Context(h)
    ledger, netting = ctx.inbox(), ctx.inbox()
    sent = ctx.message(correlation_id=f"flow-{ctx.run}", headers={"Tenant": "bank-a"})

    async def reject_first(message: Message) -> None:
        if netting.record(message) is not None and netting.ids.count(message.id) == 1:
            raise PermanentError("credit limit exceeded")

    # ledger reads every payment (no partition filter): the widest filter there is
    await h.subscriber(
        MessageType.PAYMENT_INSTRUCTION, ctx.config("ledger", partition_key=None)
    ).subscribe(recording(ledger))
    netting_config = ctx.config("netting")
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, netting_config).subscribe(
        FunctionHandler(reject_first)
    )
    original = await h.publisher().publish(sent)
    dead = await ctx.dead_letter(sent.id)
    assert dead.dlq_sequence is not None
    assert dead.consumer == netting_config.consumer_name
    assert dead.replayed is None
    await ctx.eventually(lambda: sent.id in ledger.ids, "the ledger's delivery")

    receipt = await h.dead_letters().replay(dead.dlq_sequence)
    assert receipt.stream == original.stream
    assert not receipt.duplicate, "a replay inside the duplicate window was dropped"
    await refused(
        AlreadyReplayedError,
        [lambda: h.dead_letters().replay(dead.dlq_sequence or 0)],
        "a second replay without force was accepted",
    )
    await ctx.eventually(lambda: len(netting) >= 2, "the replayed message")
    await h.advance(ctx.beyond(ctx.ack_wait))
    await h.settle()
    assert netting.ids == [sent.id, sent.id], "the replay did not keep the original id"
    replayed = netting.items[1]
    assert replayed.sequence == receipt.sequence
    assert replayed.subject == sent.subject
    assert replayed.message.payload == sent.payload
    assert replayed.message.correlation_id == sent.correlation_id
    assert _without_trace_context(replayed.message.headers) == dict(sent.headers)
    assert ledger.ids == [sent.id], "the replay reached a group that had acknowledged it"

    [listed] = [
        d for d in await h.dead_letters().list(100_000) if d.dlq_sequence == dead.dlq_sequence
    ]
    assert listed.replayed is not None, "the dead letter does not show its replay"
    assert (listed.replayed.stream, listed.replayed.sequence) == (receipt.stream, receipt.sequence)
    assert listed.replayed.count == 1

    forced = await h.dead_letters().replay(dead.dlq_sequence, force=True)
    assert not forced.duplicate
    assert forced.sequence != receipt.sequence
    await ctx.eventually(lambda: len(netting) >= 3, "the forced replay")
    await h.settle()
    assert netting.ids == [sent.id] * 3
    assert ledger.ids == [sent.id]
    [listed] = [
        d for d in await h.dead_letters().list(100_000) if d.dlq_sequence == dead.dlq_sequence
    ]
    assert [r.count for r in listed.replays] == [1, 2]
    assert listed.replays[-1].sequence == forced.sequence


@scenario()
async def retryable_failure_is_redelivered_until_max_deliver_then_dead_lettered(
    h: BusHarness,
) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    config = ctx.config(max_deliver=3, nak_initial_delay=0.0)

    async def bank_offline(message: Message) -> None:
        if inbox.record(message) is not None:
            raise RetryableError("bank core offline")

    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
        FunctionHandler(bank_offline)
    )
    sent = ctx.message()
    receipt = await h.publisher().publish(sent)
    dead = await ctx.dead_letter(sent.id)
    assert inbox.attempts(sent.id) == [1, 2, 3]
    assert dead.reason == "max deliveries (3) exhausted: bank core offline"
    assert dead.subject == sent.subject
    assert (dead.stream, dead.sequence) == (receipt.stream, receipt.sequence)
    assert dead.deliveries == 3
    assert dead.consumer_group == config.consumer_group
    assert dead.consumer == config.consumer_name
    assert dead.message is not None
    assert dead.message.payload == sent.payload
    assert dead.dlq_sequence is not None
    await h.advance(ctx.beyond(ctx.ack_wait))
    await h.settle()
    assert inbox.attempts(sent.id) == [1, 2, 3], "redelivered after it was dead-lettered"


@scenario()
async def stray_cancelled_error_is_a_failure_like_any_other(h: BusHarness) -> None:
    """A handler that raises CancelledError while nothing cancelled its worker (it
    awaited a future someone else cancelled) failed its delivery: NAKed, then
    dead-lettered on the last allowed delivery; the subscription keeps working."""
    ctx = Context(h)
    inbox = ctx.inbox()
    config = ctx.config(max_deliver=2, nak_initial_delay=0.0)
    doomed = ctx.message()

    async def cancelled_elsewhere(message: Message) -> None:
        if inbox.record(message) is None or message.id != doomed.id:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # raises CancelledError; this task was not cancelled

    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
        FunctionHandler(cancelled_elsewhere)
    )
    receipt = await h.publisher().publish(doomed)
    dead = await ctx.dead_letter(doomed.id)
    assert inbox.attempts(doomed.id) == [1, 2]
    assert dead.reason == "max deliveries (2) exhausted: CancelledError"
    assert (dead.stream, dead.sequence, dead.deliveries) == (receipt.stream, receipt.sequence, 2)
    later = ctx.message()
    await h.publisher().publish(later)
    await ctx.eventually(lambda: inbox.attempts(later.id) == [1], "the next message handled")
    await h.advance(ctx.beyond(ctx.ack_wait))
    await h.settle()
    assert inbox.attempts(doomed.id) == [1, 2], "redelivered after it was dead-lettered"


@scenario()
async def permanent_error_is_dead_lettered_and_never_redelivered(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()

    async def reject(message: Message) -> None:
        if inbox.record(message) is not None:
            raise PermanentError("creditor bank unknown")

    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config()).subscribe(
        FunctionHandler(reject)
    )
    sent = ctx.message()
    receipt = await h.publisher().publish(sent)
    dead = await ctx.dead_letter(sent.id)
    assert dead.reason == "creditor bank unknown"
    assert dead.deliveries == 1
    assert (dead.subject, dead.stream, dead.sequence) == (
        sent.subject,
        receipt.stream,
        receipt.sequence,
    )
    assert dead.message is not None
    assert dead.message.payload == sent.payload
    assert _without_trace_context(dead.message.headers) == dict(sent.headers)
    assert dead.message.partition_key == sent.partition_key
    await h.advance(ctx.beyond(ctx.ack_wait))
    await h.settle()
    assert inbox.attempts(sent.id) == [1]


@scenario()
async def running_handler_keeps_its_delivery_alive_past_ack_wait_and_runs_once(
    h: BusHarness,
) -> None:
    """A handler that runs for several ``ack_wait``s is neither run a second time nor
    dead-lettered (even with ``max_deliver=1``); its ACK settles the message for good."""
    ctx = Context(h)
    inbox = ctx.inbox()
    release = ctx.gate()

    async def slow(message: Message) -> None:
        if inbox.record(message) is not None:
            await release.wait()

    config = ctx.config(max_concurrent=2, max_deliver=1)
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(FunctionHandler(slow))
    sent = ctx.message()
    try:
        await h.publisher().publish(sent)
        await ctx.eventually(lambda: inbox.attempts(sent.id) == [1], "the first delivery")
        for _ in range(3):  # three ack waits while the handler runs
            await h.advance(ctx.beyond(ctx.ack_wait))
        assert inbox.attempts(sent.id) == [1], "redelivered while its handler ran"
        assert not await ctx.has_dead_letter(sent.id), "dead-lettered while its handler ran"
    finally:
        release.open()
    await h.settle()
    await h.advance(ctx.beyond(ctx.ack_wait))  # acked: no redelivery, no dead letter
    await h.settle()
    assert inbox.attempts(sent.id) == [1]
    assert not await ctx.has_dead_letter(sent.id), "an acked message was dead-lettered"


@scenario()
async def handler_past_max_handler_time_is_cancelled_and_its_message_redelivered(
    h: BusHarness,
) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    cancelled: list[int] = []
    release = ctx.gate()

    async def hang_first(message: Message) -> None:
        received = inbox.record(message)
        if received is None or received.attempt > 1:
            return
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(received.attempt)
            raise

    limit = ctx.ack_wait * 1.5
    config = ctx.config(max_concurrent=2, max_handler_time=limit, nak_initial_delay=0.0)
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
        FunctionHandler(hang_first)
    )
    sent = ctx.message()
    try:
        await h.publisher().publish(sent)
        await ctx.eventually(lambda: inbox.attempts(sent.id) == [1], "the first delivery")
        await h.advance(limit * 0.5)
        assert cancelled == [], "cancelled before max_handler_time"
        await h.advance(ctx.beyond(limit * 0.5))
        await ctx.eventually(lambda: cancelled == [1], "the handler to be cancelled")
        await ctx.eventually(lambda: len(inbox) >= 2, "the redelivery after the cancel")
    finally:
        release.open()
    await h.advance(ctx.beyond(ctx.ack_wait))
    await h.settle()
    assert inbox.attempts(sent.id) == [1, 2]
    assert not await ctx.has_dead_letter(sent.id)


@scenario()
async def in_progress_extends_ack_wait(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    tick, progressed, finish = ctx.gate(), ctx.gate(), ctx.gate()

    async def long_work(message: Message) -> None:
        received = inbox.record(message)
        if received is None or received.attempt > 1:
            return
        await tick.wait()
        await current_delivery().in_progress()
        progressed.open()
        await finish.wait()

    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config(max_concurrent=2)).subscribe(
        FunctionHandler(long_work)
    )
    sent = ctx.message()
    try:
        await h.publisher().publish(sent)
        await ctx.eventually(lambda: len(inbox) == 1, "the first delivery")
        await h.advance(ctx.ack_wait * 0.6)
        tick.open()
        await ctx.eventually(lambda: progressed.is_open, "in_progress")
        await h.advance(ctx.ack_wait * 0.6)  # past the original deadline, not the new one
        assert inbox.attempts(sent.id) == [1], "redelivered although in_progress was called"
        await h.advance(ctx.beyond(ctx.ack_wait))  # and the handler keeps it alive
        assert inbox.attempts(sent.id) == [1], "redelivered while its handler ran"
    finally:
        tick.open()
        finish.open()
    await h.settle()
    await h.advance(ctx.beyond(ctx.ack_wait))
    await h.settle()
    assert inbox.attempts(sent.id) == [1]


@scenario()
async def duplicate_id_within_the_window_is_stored_once(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config()).subscribe(recording(inbox))
    publisher = h.publisher()
    sent = ctx.message()
    first = await publisher.publish(sent)
    again = await publisher.publish(sent)
    assert not first.duplicate
    assert again.duplicate
    assert (again.stream, again.sequence) == (first.stream, first.sequence)
    sentinel = ctx.message()
    await publisher.publish(sentinel)
    await ctx.eventually(lambda: sentinel.id in inbox.ids, "the message after the duplicate")
    await h.settle()
    assert inbox.ids.count(sent.id) == 1


@scenario()
async def concurrency_reaches_but_never_exceeds_max_concurrent(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    limit = 4
    in_flight = peak = 0
    full = ctx.gate()

    async def measure(message: Message) -> None:
        nonlocal in_flight, peak
        if inbox.record(message) is None:
            return
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            if in_flight >= limit:
                full.open()
            await full.wait()
            await asyncio.sleep(0)
        finally:
            in_flight -= 1

    config = ctx.config(max_concurrent=limit)
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(FunctionHandler(measure))
    sent = [ctx.message() for _ in range(20)]
    await h.publisher().publish_many(sent)
    await ctx.received_exactly_once(inbox, sent)
    assert peak == limit, f"peak concurrency {peak}, max_concurrent {limit}"
    assert not full.timed_out


@scenario(requires=["supports_request_reply"])
async def request_gets_the_reply_of_a_responder(h: BusHarness) -> None:
    ctx = Context(h)
    seen = ctx.inbox()
    key = ctx.key()

    async def assess(message: Message) -> Message:
        seen.record(message)
        return message.reply(MessageType.RISK_ASSESSMENT, {"decision": "approve", "score": 12})

    config = ctx.config("risk", partition_key=key)
    await h.subscriber(MessageType.RISK_ASSESSMENT, config).subscribe(FunctionHandler(assess))
    request = ctx.message(
        {"payment_id": "pay-77", "amount": "5000.00"},
        key=key,
        message_type=MessageType.RISK_ASSESSMENT,
        correlation_id=f"flow-{ctx.run}",
    )
    reply = await h.publisher().request(request, timeout=ctx.timeout)
    assert reply.payload == {"decision": "approve", "score": 12}
    assert reply.message_type is MessageType.RISK_ASSESSMENT
    assert reply.causation_id == request.id
    assert reply.correlation_id == request.correlation_id
    assert seen.ids == [request.id]
    assert (seen.items[0].stream, seen.items[0].sequence) == (None, None)


@scenario(requires=["supports_request_reply"])
async def request_without_responder_fails_at_once(h: BusHarness) -> None:
    ctx = Context(h)
    request = ctx.message(message_type=MessageType.COMPLIANCE_CHECK)
    slow = ctx.timeout * 3  # a timeout would take longer than the bound below
    try:
        await asyncio.wait_for(h.publisher().request(request, timeout=slow), ctx.timeout)
    except NoRespondersError as exc:
        failure = exc
    except TimeoutError as exc:
        raise AssertionError("no NoRespondersError: the request waited for a reply") from exc
    else:
        raise AssertionError("a request without responders got a reply")
    assert failure.subject == request.subject


@scenario()
async def core_only_type_reaches_only_live_subscribers(h: BusHarness) -> None:
    ctx = Context(h)
    publisher = h.publisher()
    event = MessageType.SYSTEM_EVENT
    before = ctx.message({"event": "cycle-opened"}, message_type=event)
    await publisher.publish(before)
    early = ctx.inbox()
    await h.subscriber(event, ctx.config("early")).subscribe(recording(early))
    during = ctx.message({"event": "cycle-closing"}, message_type=event)
    receipt = await publisher.publish(during)
    assert (receipt.stream, receipt.sequence) == (None, None)
    await ctx.eventually(lambda: during.id in early.ids, "the live event")
    late = ctx.inbox()
    await h.subscriber(event, ctx.config("late")).subscribe(recording(late))
    after = ctx.message({"event": "cycle-closed"}, message_type=event)
    await publisher.publish(after)
    await ctx.eventually(lambda: after.id in early.ids and after.id in late.ids, "the last event")
    await h.settle()
    assert early.ids == [during.id, after.id]
    assert late.ids == [after.id]


@scenario()
async def core_queue_group_gives_each_message_to_one_member_of_each_group(h: BusHarness) -> None:
    ctx = Context(h)
    event = MessageType.SYSTEM_EVENT
    workers, monitor = ctx.inbox(), ctx.inbox()
    pool = ctx.config("pool", max_concurrent=1)
    for name in ("a", "b"):
        await h.subscriber(event, pool).subscribe(recording(workers, name))
    await h.subscriber(event, ctx.config("monitor")).subscribe(recording(monitor))
    sent = [ctx.message({"event": f"tick-{i}"}, message_type=event) for i in range(20)]
    publisher = h.publisher()
    for message in sent:
        await publisher.publish(message)
    await ctx.received_exactly_once(workers, sent)
    await ctx.received_exactly_once(monitor, sent)
    assert workers.members() == {"a", "b"}, f"only {sorted(workers.members())} got work"


@scenario()
async def close_is_idempotent_and_use_after_close_fails(h: BusHarness) -> None:
    ctx = Context(h)
    publisher = h.publisher()
    await publisher.publish(ctx.message())
    await publisher.close()
    await publisher.close()
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: publisher.publish(ctx.message()),
        lambda: publisher.publish_many([ctx.message()]),
    ]
    if ctx.features.supports_request_reply:
        request = ctx.message(message_type=MessageType.RISK_ASSESSMENT)
        attempts.append(lambda: publisher.request(request, timeout=ctx.timeout))
    await refused(ClosedError, attempts, "a closed publisher published")
    subscriber = h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config())
    subscription = await subscriber.subscribe(recording(ctx.inbox()))
    states = [subscription.active]
    await subscription.stop()
    await subscription.stop()
    await subscription.drain()
    states.append(subscription.active)
    assert states == [True, False], f"active before and after stop: {states}"
    still_running = await subscriber.subscribe(recording(ctx.inbox()))
    await subscriber.close()
    await subscriber.close()
    assert not still_running.active, "closing a subscriber left a subscription running"
    await refused(
        ClosedError,
        [lambda: subscriber.subscribe(recording(ctx.inbox()))],
        "a closed subscriber subscribed",
    )


@scenario()
async def single_member_sees_each_keys_messages_in_publish_order(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    config = ctx.config(max_concurrent=1, fetch_batch=1, partition_key=None)
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(inbox))
    keys = [ctx.key("USD-EUR"), ctx.key("GBP-USD"), ctx.key("EUR-JPY")]
    sent = [ctx.message({"n": i}, key=keys[i % 3]) for i in range(30)]
    publisher = h.publisher()
    for message in sent:
        await publisher.publish(message)
    await ctx.received_exactly_once(inbox, sent)
    for key in keys:
        received = [r.message.id for r in inbox.items if r.message.partition_key == key]
        assert received == [m.id for m in sent if m.partition_key == key], f"{key} out of order"


@scenario()
async def explicit_nak_with_delay_and_term_via_current_delivery(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    delay = ctx.ack_wait

    async def steer(message: Message) -> None:
        received = inbox.record(message)
        if received is None:
            return
        delivery = current_delivery()
        if message.payload["action"] == "nak" and received.attempt == 1:
            await delivery.nak(delay)
        elif message.payload["action"] == "term":
            await delivery.term("sanctions screening hit")
            raise RetryableError("ignored: the delivery is already settled")

    config = ctx.config(max_concurrent=2, ack_wait=max(ctx.ack_wait, delay * 4))
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(FunctionHandler(steer))
    later = ctx.message({"action": "nak"})
    never = ctx.message({"action": "term"})
    publisher = h.publisher()
    await publisher.publish(later)
    await publisher.publish(never)
    dead = await ctx.dead_letter(never.id)
    assert dead.reason == "sanctions screening hit"
    assert dead.deliveries == 1
    await ctx.eventually(lambda: inbox.attempts(later.id) == [1], "the first delivery")
    await h.advance(delay * 0.5)
    assert inbox.attempts(later.id) == [1], "redelivered before its NAK delay"
    await h.advance(ctx.beyond(delay * 0.5))
    await ctx.eventually(lambda: inbox.attempts(later.id) == [1, 2], "the delayed redelivery")
    await h.settle()
    assert inbox.attempts(never.id) == [1]
    assert not await ctx.has_dead_letter(later.id)


@scenario()
async def explicit_nak_while_the_handler_goes_on_is_redelivered_after_its_delay(
    h: BusHarness,
) -> None:
    """A handler that NAKs (with a delay) and then keeps working: its delivery is settled,
    so it is no longer kept alive; the redelivery is a new delivery (attempt 2) after the
    NAK's delay, handled while the first handler still runs, and nothing else follows."""
    ctx = Context(h)
    inbox = ctx.inbox()
    delay = ctx.ack_wait
    release = ctx.gate()

    async def nak_and_go_on(message: Message) -> None:
        received = inbox.record(message)
        if received is None or received.attempt > 1:
            return
        await current_delivery().nak(delay)
        await release.wait()  # post-processing after the NAK

    config = ctx.config(max_concurrent=2, ack_wait=max(ctx.ack_wait, delay * 4))
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
        FunctionHandler(nak_and_go_on)
    )
    sent = ctx.message()
    try:
        await h.publisher().publish(sent)
        await ctx.eventually(lambda: inbox.attempts(sent.id) == [1], "the first delivery")
        await h.advance(delay * 0.5)
        assert inbox.attempts(sent.id) == [1], "redelivered before its NAK delay"
        await h.advance(ctx.beyond(delay * 0.5))
        await ctx.eventually(
            lambda: inbox.attempts(sent.id) == [1, 2],
            "the redelivery after the NAK delay while the first handler runs",
        )
    finally:
        release.open()
    await h.settle()
    await h.advance(ctx.beyond(config.ack_wait))
    await h.settle()
    assert inbox.attempts(sent.id) == [1, 2]
    assert not await ctx.has_dead_letter(sent.id)


@scenario()
async def publish_many_returns_receipts_in_input_order(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    config = ctx.config(partition_key=None)
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(inbox))
    keys = [ctx.key("USD-EUR"), ctx.key("GBP-USD")]
    sent = [ctx.message({"n": i}, key=keys[i % 2]) for i in range(10)]
    receipts: list[PublishReceipt] = await h.publisher().publish_many(sent)
    assert [r.message_id for r in receipts] == [m.id for m in sent]
    assert [r.subject for r in receipts] == [m.subject for m in sent]
    assert [r.partition for r in receipts] == [m.partition_key.partition_number() for m in sent]
    sequences = [r.sequence for r in receipts]
    assert None not in sequences
    assert len(set(sequences)) == len(sent)
    assert not any(r.duplicate for r in receipts)
    await ctx.eventually(lambda: len(inbox) >= 10, "10 deliveries")
    by_id = {r.message.id: r.sequence for r in inbox.items}
    assert [by_id[m.id] for m in sent] == sequences


@scenario()
async def invalid_message_raises_validation_error_and_nothing_is_stored(h: BusHarness) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config()).subscribe(recording(inbox))
    publisher = h.publisher()
    unencodable = ctx.message({"amount": object()})
    await refused(
        ValidationError,
        [
            lambda: publisher.publish(unencodable),
            lambda: publisher.publish_many([ctx.message(), unencodable, ctx.message()]),
        ],
        "an unencodable message was accepted",
    )
    sentinel = ctx.message()
    await publisher.publish(sentinel)
    await ctx.eventually(lambda: sentinel.id in inbox.ids, "the valid message")
    await h.settle()
    assert inbox.ids == [sentinel.id], "something of the rejected batch was stored"


@scenario()
async def payload_breaking_its_types_struct_is_refused_naming_the_field_and_nothing_is_stored(
    h: BusHarness,
) -> None:
    """A validating publisher checks every payload against its type's Struct before any
    I/O; the Struct itself and a dict of its fields both go through."""
    ctx = Context(h)
    inbox = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config()).subscribe(recording(inbox))
    publisher = h.publisher(PublisherConfig())
    bad = ctx.message(sample_payload(MessageType.PAYMENT_INSTRUCTION, debtor_bank="not a bic"))
    caught: ValidationError | None = None
    try:
        await publisher.publish(bad)
    except ValidationError as exc:
        caught = exc
    assert caught is not None, "a payload with a malformed BIC was published"
    assert (caught.field, caught.value) == ("payload.debtor_bank", "not a bic"), str(caught)
    valid = sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay-{ctx.run}")
    await refused(
        ValidationError,
        [lambda: publisher.publish_many([ctx.message(valid), bad])],
        "a batch holding a malformed payload was published",
    )
    typed = ctx.message(convert_payload(valid, PaymentInstruction))
    as_dict = ctx.message(valid)
    await publisher.publish_many([typed, as_dict])
    await ctx.eventually(lambda: len(inbox.ids) >= 2, "the two valid messages")
    await h.settle()
    assert sorted(inbox.ids) == sorted([typed.id, as_dict.id]), "the refused batch was stored"


@scenario()
async def group_with_partition_filter_gets_only_its_keys_messages_stored_and_live(
    h: BusHarness,
) -> None:
    ctx = Context(h)
    mine, other = ctx.key("USD-EUR"), ctx.key("GBP-USD")
    sent = [ctx.message({"n": i}, key=(mine, other)[i % 2]) for i in range(10)]
    await h.publisher().publish_many(sent)
    inbox = ctx.inbox()  # the group is created after the messages were published
    config = ctx.config(partition_key=mine)
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(inbox))
    await ctx.received_exactly_once(inbox, [m for m in sent if m.partition_key == mine])
    live = [ctx.message({"n": i}, key=(mine, other)[i % 2]) for i in range(10, 20)]
    await h.publisher().publish_many(live)
    await ctx.received_exactly_once(inbox, [m for m in sent + live if m.partition_key == mine])


@scenario()
async def hung_last_delivery_is_dead_lettered_when_max_handler_time_expires(
    h: BusHarness,
) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    release = ctx.gate()

    async def hang(message: Message) -> None:
        if inbox.record(message) is not None:
            await release.wait()

    limit = ctx.ack_wait * 1.5
    config = ctx.config(
        max_deliver=2, max_concurrent=2, max_handler_time=limit, nak_initial_delay=0.0
    )
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(FunctionHandler(hang))
    sent = ctx.message()
    try:
        await h.publisher().publish(sent)
        await ctx.eventually(lambda: inbox.attempts(sent.id) == [1], "the first delivery")
        await h.advance(ctx.beyond(limit))
        await ctx.eventually(lambda: inbox.attempts(sent.id) == [1, 2], "the last delivery")
        await h.advance(ctx.beyond(limit))
        dead = await ctx.dead_letter(sent.id)
    finally:
        release.open()
    assert dead.reason == (
        f"max deliveries (2) exhausted: handler ran past max_handler_time ({limit:g} s)"
    )
    assert dead.deliveries == 2
    await h.settle()
    assert inbox.attempts(sent.id) == [1, 2]


@scenario()
async def every_outcome_is_reported_to_the_deliverys_listeners_a_cut_off_too(
    h: BusHarness,
) -> None:
    """Decorators learn what became of a delivery from ``on_outcome``: a return is
    ``ack``, a stray ``CancelledError`` ``nak`` (after None), and a handler cut off at
    ``max_handler_time`` ``nak``, then ``dead`` on its last allowed delivery."""
    ctx = Context(h)
    inbox = ctx.inbox()
    release = ctx.gate()
    heard: dict[tuple[str, int], list[Outcome | None]] = {}

    async def vary(message: Message) -> None:
        received = inbox.record(message)
        if received is None:
            return
        current_delivery().on_outcome(heard.setdefault((message.id, received.attempt), []).append)
        kind = message.payload.get("kind")
        if kind == "stray":
            cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled  # raises CancelledError: nothing cancelled this task
        if kind == "hang":
            await release.wait()

    limit = ctx.ack_wait * 1.5
    config = ctx.config(
        max_deliver=2, max_concurrent=4, max_handler_time=limit, nak_initial_delay=0.0
    )
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(FunctionHandler(vary))
    fine, stray, hang = (ctx.message({"kind": kind}) for kind in ("fine", "stray", "hang"))
    try:
        await h.publisher().publish_many([fine, stray, hang])
        await ctx.eventually(lambda: heard.get((fine.id, 1)) == [Outcome.ACK], "the ack")
        await ctx.eventually(lambda: heard.get((stray.id, 1)) == [None, Outcome.NAK], "stray")
        await ctx.eventually(lambda: inbox.attempts(hang.id) == [1], "the hung delivery")
        await h.advance(ctx.beyond(limit))
        await ctx.eventually(lambda: heard.get((hang.id, 1)) == [Outcome.NAK], "the cut-off")
        await ctx.eventually(lambda: inbox.attempts(hang.id) == [1, 2], "the last delivery")
        await h.advance(ctx.beyond(limit))
        await ctx.eventually(lambda: heard.get((hang.id, 2)) == [Outcome.DEAD], "the dead letter")
    finally:
        release.open()
    await h.settle()


@scenario()
async def ephemeral_reader_reads_everything_and_takes_nothing_from_the_group(
    h: BusHarness,
) -> None:
    """A reader in no group sees every message (stored before it came, too) while the
    group still gets each one; the reader's failures dead-letter nothing."""
    ctx = Context(h)
    publisher = h.publisher()
    before = [ctx.message({"n": i}) for i in range(3)]
    await publisher.publish_many(before)
    group, reader = ctx.inbox(), ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config()).subscribe(recording(group))

    async def read_and_refuse(message: Message) -> None:
        if reader.record(message) is not None and message.payload.get("n") == 0:
            raise PermanentError("a reader's refusal is nobody else's")

    reader_config = ctx.config("reader", max_deliver=1)
    subscription = await h.subscriber(
        MessageType.PAYMENT_INSTRUCTION, reader_config, ephemeral=True
    ).subscribe(FunctionHandler(read_and_refuse))
    after = [ctx.message({"n": i}) for i in range(3, 6)]
    await publisher.publish_many(after)
    await ctx.received_exactly_once(group, before + after)
    await ctx.received_exactly_once(reader, before + after)
    await subscription.stop()
    assert not await ctx.has_dead_letter(before[0].id), "an ephemeral reader dead-lettered"
    last = ctx.message({"n": 6})
    await publisher.publish(last)
    await ctx.received_exactly_once(group, [*before, *after, last])


@scenario()
async def ephemeral_reader_of_a_core_type_takes_no_share_of_a_queue_group(h: BusHarness) -> None:
    ctx = Context(h)
    event = MessageType.SYSTEM_EVENT
    workers, reader = ctx.inbox(), ctx.inbox()
    # The reader's config names the workers' group: ephemeral, it still joins no group.
    pool = ctx.config("pool")
    await h.subscriber(event, pool).subscribe(recording(workers))
    await h.subscriber(event, pool, ephemeral=True).subscribe(recording(reader))
    sent = [ctx.message({"event": f"tick-{i}"}, message_type=event) for i in range(10)]
    publisher = h.publisher()
    for message in sent:
        await publisher.publish(message)
    await ctx.received_exactly_once(workers, sent)
    await ctx.received_exactly_once(reader, sent)


# -- bad input: refused early and typed, the same on every adapter -----------------------


@scenario(requires=["supports_request_reply"])
async def request_of_a_stream_backed_type_is_a_validation_error_and_nothing_is_sent(
    h: BusHarness,
) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config()).subscribe(recording(inbox))
    request = ctx.message()  # a PaymentInstruction: stored by its stream, never answered
    try:
        await asyncio.wait_for(h.publisher().request(request, timeout=ctx.timeout), ctx.timeout)
    except ValidationError as exc:
        refusal = exc
    else:
        raise AssertionError("a request of a stream-backed type got a reply")
    assert refusal.field == "message_type", refusal
    assert "stream-backed" in refusal.reason, refusal
    sentinel = ctx.message()
    await h.publisher().publish(sentinel)
    await ctx.eventually(lambda: sentinel.id in inbox.ids, "the sentinel")
    await h.settle()
    assert inbox.ids == [sentinel.id], "the refused request was stored"


@scenario(requires=["supports_request_reply"])
async def request_timeout_must_be_a_finite_number_of_seconds(h: BusHarness) -> None:
    ctx = Context(h)
    request = ctx.message(message_type=MessageType.RISK_ASSESSMENT)
    publisher = h.publisher()
    for timeout in (float("nan"), float("inf"), 0.0, -1.0):
        try:
            await asyncio.wait_for(publisher.request(request, timeout=timeout), ctx.timeout)
        except ValidationError as exc:
            refusal = exc
        except (NoRespondersError, TimeoutError) as exc:
            raise AssertionError(f"timeout={timeout} was accepted: {exc!r}") from exc
        else:
            raise AssertionError(f"timeout={timeout} was accepted")
        assert refusal.field == "timeout", refusal


@scenario()
async def nak_with_a_non_finite_delay_is_refused_and_the_failure_naked_with_the_backoff(
    h: BusHarness,
) -> None:
    ctx = Context(h)
    inbox = ctx.inbox()
    refusals: list[str] = []

    async def nak_forever(message: Message) -> None:
        received = inbox.record(message)
        if received is None or received.attempt > 1:
            return
        try:
            await current_delivery().nak(float("inf"))
        except ValidationError as exc:
            refusals.append(exc.field)
            raise  # a failure like any other: NAK with the subscriber's backoff
        refusals.append("accepted")

    config = ctx.config(
        nak_initial_delay=ctx.ack_wait, nak_max_delay=ctx.ack_wait, ack_wait=ctx.timeout * 3
    )
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
        FunctionHandler(nak_forever)
    )
    sent = ctx.message()
    await h.publisher().publish(sent)
    await ctx.eventually(lambda: inbox.attempts(sent.id) == [1], "the first delivery")
    await h.advance(ctx.beyond(ctx.ack_wait))
    await ctx.eventually(lambda: inbox.attempts(sent.id) == [1, 2], "the redelivery")
    assert refusals == ["delay"], refusals


class _SyncHandle:
    """Has a ``handle``, but not an async one."""

    def handle(self, message: Message) -> None:
        return None


@scenario()
async def subscribe_refuses_a_handler_that_cannot_handle_and_nothing_is_consumed(
    h: BusHarness,
) -> None:
    ctx = Context(h)
    config = ctx.config()

    async def plain_function(message: Message) -> None:
        return None

    for wrong in (plain_function, _SyncHandle(), object()):
        subscriber = h.subscriber(MessageType.PAYMENT_INSTRUCTION, config)
        try:
            await subscriber.subscribe(wrong)  # type: ignore[arg-type]
        except TypeError as exc:
            refusal = exc
        else:
            raise AssertionError(f"subscribe accepted {wrong!r}")
        assert "FunctionHandler" in str(refusal), refusal
    sent = ctx.message()
    await h.publisher().publish(sent)
    inbox = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(inbox))
    await ctx.received_exactly_once(inbox, [sent])
    assert inbox.attempts(sent.id) == [1], "a refused handler was delivered to"
    assert not await ctx.has_dead_letter(sent.id)


@scenario()
async def header_values_arrive_exactly_as_sent(h: BusHarness) -> None:
    """Inner whitespace, empty and non-ASCII values survive; edge whitespace, which NATS
    clients strip in transit, is refused before anything is sent."""
    ctx = Context(h)
    inbox = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, ctx.config()).subscribe(recording(inbox))
    headers = {
        "X-Inner": "a  b\tc",
        "X-Empty": "",
        "X-Wide": "\u3000Zahlung für №42\u00a0",
        "X-Symbols": 'a:b; c=d, "e"',
    }
    sent = ctx.message(headers=headers)
    await h.publisher().publish(sent)
    await ctx.received_exactly_once(inbox, [sent])
    received = _without_trace_context(inbox.items[0].message.headers)
    assert received == {RUN_HEADER: ctx.run, **headers}, received
    for padded in (" lead", "trail ", "\ttab"):
        try:
            ctx.message(headers={"X-Padded": padded})
        except ValidationError as exc:
            refusal = exc
        else:
            raise AssertionError(f"header value {padded!r} was accepted")
        assert refusal.field == "headers['X-Padded']", refusal


@scenario()
async def the_delivery_in_hand_is_named_while_handled_and_while_settled(h: BusHarness) -> None:
    """What log records name: the delivery and its group, inside the handler and while
    it is settled (the ACK of a success, the dead letter of a PermanentError), and
    nothing outside."""
    ctx = Context(h)
    config = ctx.config("named")
    seen: dict[tuple[str, str], tuple[str, str, str] | None] = {}

    def named(where: str, message_id: str) -> None:
        handling = current_handling()
        seen[where, message_id] = (
            None
            if handling is None
            else (handling.delivery.message.id, handling.delivery.subject, handling.group)
        )

    async def handle(message: Message) -> None:
        if message.headers.get(RUN_HEADER) != ctx.run:
            return
        named("handler", message.id)
        current_delivery().on_outcome(lambda _outcome: named("settled", message.id))
        if message.headers.get("X-Refuse"):
            raise PermanentError("refused for the record")

    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(FunctionHandler(handle))
    acked, refused = ctx.message(), ctx.message(headers={"X-Refuse": "yes"})
    publisher = h.publisher()
    await publisher.publish(acked)
    await publisher.publish(refused)
    await ctx.dead_letter(refused.id)
    await ctx.eventually(lambda: len(seen) == 4, "the outcomes of both deliveries")
    expected = {
        (where, sent.id): (sent.id, sent.subject, config.consumer_group)
        for where in ("handler", "settled")
        for sent in (acked, refused)
    }
    assert seen == expected, seen
    assert current_handling() is None
