"""The example payment flow on the in-memory bus: intake, netting worker, confirmations."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    Publisher,
    PublishReceipt,
    PublishTimeout,
    SubscriberConfig,
    ValidationError,
)
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    Container,
    build_container,
    shutdown_container,
    start_container,
)
from message_bus.app.service import BankConfirmer, NettingWorker, PaymentIntake
from message_bus.domain.payloads import PaymentInstruction

WORKERS = SubscriberConfig(
    consumer_group="netting", max_concurrent=16, nak_initial_delay=0.01, nak_max_delay=0.05
)
AUDIT = SubscriberConfig(consumer_group="audit")


def payment(n: int, **changes: object) -> PaymentInstruction:
    values: dict[str, object] = {
        "payment_id": f"pay-{n}",
        "amount": Decimal("100.25") + n,
        "currency": "USD",
        "debtor_bank": "BANKUS33",
        "creditor_bank": "BANKGB2L",
        "corridor": "USD-EUR",
    }
    values.update(changes)
    return PaymentInstruction(**values)  # type: ignore[arg-type]


@pytest.fixture
async def bus() -> AsyncIterator[Container]:
    container = build_container(load_settings(environ={}))
    container.backend.override("memory")
    await start_container(container)
    yield container
    await shutdown_container(container)


class Collector:
    """Subscribes to a type and keeps what arrives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.arrived = asyncio.Event()

    async def handle(self, message: Message) -> None:
        self.messages.append(message)
        self.arrived.set()

    async def wait_for(self, predicate: object, timeout: float = 5.0) -> None:
        async def poll() -> None:
            while not predicate():  # type: ignore[operator]
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(poll(), timeout)


async def collect(bus: Container, message_type: MessageType) -> Collector:
    collector = Collector()
    subscriber = await bus.subscriber(message_type, AUDIT)
    await subscriber.subscribe(collector)
    return collector


async def test_intake_publishes_an_instruction_keyed_by_corridor_and_debtor(
    bus: Container,
) -> None:
    instructions = await collect(bus, MessageType.PAYMENT_INSTRUCTION)
    intake = await bus.payment_intake()

    receipt = await intake.submit(payment(1))
    await instructions.wait_for(lambda: instructions.messages)

    got = instructions.messages[0]
    assert receipt.stream == "PAYMENT_INSTRUCTIONS"
    assert got.partition_key == PartitionKey.corridor_bank(
        corridor_id="USD-EUR", bank_id="BANKUS33"
    )
    assert got.correlation_id == got.id
    assert got.payload_as(PaymentInstruction).amount == Decimal("101.25")


async def test_a_resubmitted_instruction_is_stored_once(bus: Container) -> None:
    intake = await bus.payment_intake()

    first = await intake.submit(payment(1))
    again = await intake.submit(payment(1))  # e.g. after a publish whose outcome was unknown

    assert again.message_id == first.message_id
    assert again.duplicate


async def test_a_batch_is_validated_whole_before_anything_is_published(bus: Container) -> None:
    intake = await bus.payment_intake()

    with pytest.raises(ValidationError):
        await intake.submit_many([payment(1), payment(2, currency="EUR")])
    receipts = await intake.submit_many([payment(1), payment(2)])

    assert [r.sequence for r in receipts] == [1, 2]
    assert not any(r.duplicate for r in receipts)
    assert (await intake.submit(payment(2))).duplicate


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"currency": "EUR"}, "currency"),
        ({"creditor_bank": "BANKUS33"}, "creditor_bank"),
        ({"corridor": None}, "corridor"),
        ({"debtor_bank": "bank"}, "debtor_bank"),
    ],
)
async def test_intake_refuses_a_bad_instruction_and_publishes_nothing(
    bus: Container, changes: dict[str, object], field: str
) -> None:
    intake = await bus.payment_intake()

    with pytest.raises(ValidationError) as caught:
        await intake.submit(payment(1, **changes))

    assert caught.value.field == field
    registry = bus.registry()
    assert registry.get_sample_value("message_bus_publish_total", _success()) is None


def _success() -> dict[str, str]:
    return {"message_type": "PaymentInstruction", "status": "success"}


async def test_workers_net_every_payment_once_into_balanced_proposals(bus: Container) -> None:
    proposals = await collect(bus, MessageType.NETTING_PROPOSAL)
    for _ in range(3):
        subscriber = await bus.subscriber(MessageType.PAYMENT_INSTRUCTION, WORKERS)
        await subscriber.subscribe(await bus.netting_worker())
    intake = await bus.payment_intake()
    corridors = {"USD-EUR": "USD", "GBP-USD": "GBP"}
    sent = []
    for n in range(60):
        corridor = list(corridors)[n % 2]
        debtor, creditor = ("BANKUS33", "BANKGB2L") if n % 3 else ("BANKGB2L", "BANKDEFF")
        instruction = payment(
            n,
            corridor=corridor,
            currency=corridors[corridor],
            debtor_bank=debtor,
            creditor_bank=creditor,
        )
        sent.append(instruction)
        await intake.submit(instruction)

    def netted() -> list[str]:
        return [p for m in proposals.messages for p in m.payload["payment_ids"]]

    await proposals.wait_for(lambda: len(netted()) >= 60)

    assert sorted(netted()) == sorted(i.payment_id for i in sent)
    for proposal in proposals.messages:
        positions = {bank: Decimal(v) for bank, v in proposal.payload["positions"].items()}
        assert sum(positions.values()) == 0
        assert proposal.correlation_id == proposal.payload["cycle_id"]
        assert proposal.partition_key == PartitionKey.corridor(proposal.payload["corridor"])


async def test_a_malformed_instruction_is_dead_lettered_with_the_reason(bus: Container) -> None:
    subscriber = await bus.subscriber(MessageType.PAYMENT_INSTRUCTION, WORKERS)
    await subscriber.subscribe(await bus.netting_worker())
    unchecked = dataclasses.replace(bus.publisher_config(), validate_payloads=False)
    publisher = await bus.publisher(config=unchecked)  # past the schema check on purpose
    poison = Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor("USD-EUR"),
        {"payment_id": "pay-x", "amount": "-5", "currency": "USD"},
    )
    await publisher.publish(poison)
    dead_letters = await bus.dead_letters()

    for _ in range(500):  # the worker dead-letters it on its first delivery
        letters = await dead_letters.list()
        if letters:
            break
        await asyncio.sleep(0.01)

    assert letters[0].message.id == poison.id
    assert "invalid payment instruction" in letters[0].reason
    assert letters[0].deliveries == 1


class GatedPublisher(Publisher):
    """Records publishes; each waits for the gate, and the first ``failures`` fail."""

    def __init__(self, failures: int = 0) -> None:
        self.gate = asyncio.Event()
        self.published: list[Message] = []
        self.failures = failures

    async def publish(self, message: Message) -> PublishReceipt:
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise PublishTimeout(message.id, message.subject)
        self.published.append(message)
        return PublishReceipt(message.id, message.subject, "NETTING_PROPOSALS", 1)

    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def _message(instruction: PaymentInstruction) -> Message:
    return PaymentIntake.message_for(instruction)


async def test_an_instruction_is_not_acknowledged_before_its_proposal_is_stored() -> None:
    publisher = GatedPublisher()
    worker = NettingWorker(publisher, cycle_window=0)

    handling = asyncio.create_task(worker.handle(_message(payment(1))))
    await asyncio.sleep(0.05)
    assert not handling.done()  # the handler's return is the ACK: not yet

    publisher.gate.set()
    await asyncio.wait_for(handling, 5)
    assert [m.payload.payment_ids for m in publisher.published] == [["pay-1"]]


async def test_a_failed_proposal_publish_makes_every_instruction_of_the_cycle_retryable() -> None:
    publisher = GatedPublisher(failures=1)
    publisher.gate.set()
    worker = NettingWorker(publisher, cycle_window=0.01)
    messages = [_message(payment(n)) for n in range(3)]

    results = await asyncio.gather(*(worker.handle(m) for m in messages), return_exceptions=True)

    assert all(type(r).__name__ == "RetryableError" for r in results)
    await asyncio.gather(*(worker.handle(m) for m in messages))  # the redeliveries
    assert [sorted(m.payload.payment_ids) for m in publisher.published] == [
        ["pay-0", "pay-1", "pay-2"]
    ]


async def test_a_redelivery_of_an_instruction_still_netting_joins_the_same_proposal() -> None:
    publisher = GatedPublisher()
    worker = NettingWorker(publisher, cycle_window=0)
    message = _message(payment(1))

    first = asyncio.create_task(worker.handle(message))
    await asyncio.sleep(0.02)  # the cycle closed; its proposal is being published
    again = asyncio.create_task(worker.handle(message))
    publisher.gate.set()
    await asyncio.wait_for(asyncio.gather(first, again), 5)

    assert len(publisher.published) == 1


async def test_confirmations_keep_the_correlation_and_are_deduplicated_on_redelivery(
    bus: Container,
) -> None:
    confirmations = await collect(bus, MessageType.BANK_CONFIRMATION)
    confirmer = BankConfirmer(await bus.publisher())
    proposal = Message.new(
        MessageType.NETTING_PROPOSAL,
        PartitionKey.corridor("USD-EUR"),
        {
            "cycle_id": "cycle-1",
            "corridor": "USD-EUR",
            "positions": {"BANKGB2L": "10.00", "BANKUS33": "-10.00"},
            "payment_ids": ["pay-1"],
        },
        correlation_id="cycle-1",
    )

    await confirmer.handle(proposal)
    await confirmer.handle(proposal)  # a redelivery
    await confirmations.wait_for(lambda: len(confirmations.messages) >= 2)
    await asyncio.sleep(0.05)

    assert sorted(m.payload["bank_id"] for m in confirmations.messages) == [
        "BANKGB2L",
        "BANKUS33",
    ]
    assert {m.correlation_id for m in confirmations.messages} == {"cycle-1"}
    assert {m.causation_id for m in confirmations.messages} == {proposal.id}
    assert {m.payload["status"] for m in confirmations.messages} == {"ACK"}


async def test_a_redelivery_of_an_instruction_already_proposed_is_not_netted_again() -> None:
    publisher = GatedPublisher()
    publisher.gate.set()
    worker = NettingWorker(publisher, cycle_window=0)
    message = _message(payment(1))

    await worker.handle(message)
    await worker.handle(message)  # its acknowledgement was lost

    assert [m.payload.payment_ids for m in publisher.published] == [["pay-1"]]


async def test_two_messages_of_one_payment_are_netted_once() -> None:
    publisher = GatedPublisher()
    publisher.gate.set()
    worker = NettingWorker(publisher, cycle_window=0.01)
    first = _message(payment(1))
    second = Message.new(
        first.message_type, first.partition_key, first.payload, message_id="another-message"
    )

    await asyncio.gather(worker.handle(first), worker.handle(second))

    assert [m.payload.payment_ids for m in publisher.published] == [["pay-1"]]
