"""The netting worker in an ordered group: a cycle never waits for its own partition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from message_bus import Message, MessageType, SubscriberConfig
from message_bus.adapters.memory import InMemoryBroker
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    Container,
    build_container,
    shutdown_container,
    start_container,
)
from message_bus.app.service import NettingWorker, PaymentIntake, netting_config
from message_bus.domain.payloads import PaymentInstruction

ORDERED = netting_config(
    SubscriberConfig(consumer_group="netting", max_concurrent=8, nak_initial_delay=0.01),
    failover_timeout=2.0,
)
AUDIT = SubscriberConfig(consumer_group="audit")


def payment(n: int, debtor: str = "BANKUS33") -> PaymentInstruction:
    return PaymentInstruction(
        payment_id=f"pay-{n}",
        amount=Decimal("10.00") + n,
        currency="USD",
        debtor_bank=debtor,
        creditor_bank="BANKGB2L",
        corridor="USD-EUR",
    )


class Proposals:
    """Collects netting proposals; ``wait_for`` polls with a deadline."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle(self, message: Message) -> None:
        self.messages.append(message)

    def netted(self) -> list[str]:
        return [p for m in self.messages for p in m.payload["payment_ids"]]

    async def wait_for_netted(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.netted()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"waited {timeout} s for {count} netted payments, got {len(self.netted())}"
                )
            await asyncio.sleep(0.01)


@pytest.fixture
async def broker() -> AsyncIterator[InMemoryBroker]:
    broker = InMemoryBroker()
    yield broker
    await broker.close()


async def start(broker: InMemoryBroker, worker: NettingWorker) -> Proposals:
    proposals = Proposals()
    await broker.subscriber(MessageType.NETTING_PROPOSAL, AUDIT).subscribe(proposals)
    subscriber = broker.subscriber(MessageType.PAYMENT_INSTRUCTION, ORDERED)
    await subscriber.subscribe(worker)
    return proposals


async def test_one_partitions_payments_are_netted_without_waiting_a_window_each(
    broker: InMemoryBroker,
) -> None:
    # One debtor bank in one corridor: one partition. Each instruction holds it until its
    # proposal is stored, so a cycle can never get a second instruction of it; a cycle
    # that waited its window for one would take 20 x 2 s here.
    worker = NettingWorker(broker.publisher(), cycle_size=8, cycle_window=2.0, ordered=True)
    proposals = await start(broker, worker)
    intake = PaymentIntake(broker.publisher())

    started = time.monotonic()
    for n in range(20):
        await intake.submit(payment(n))
    await proposals.wait_for_netted(20, timeout=8.0)

    assert sorted(proposals.netted()) == sorted(f"pay-{n}" for n in range(20))
    assert time.monotonic() - started < 8.0
    # handled one at a time, in stream order: proposals list the payments in that order
    assert proposals.netted() == [f"pay-{n}" for n in range(20)]


async def test_instructions_ready_together_still_share_a_cycle(broker: InMemoryBroker) -> None:
    # Eight debtor banks: up to eight partitions in flight at once, one cycle for them
    worker = NettingWorker(broker.publisher(), cycle_size=100, cycle_window=2.0, ordered=True)
    intake = PaymentIntake(broker.publisher())
    banks = ["BANKUS33", "BANKDEFF", "BANKFRPP", "BANKJPJT", "BANKCHZZ", "BANKINBB"]
    await intake.submit_many([payment(n, debtor=banks[n % len(banks)]) for n in range(60)])
    proposals = await start(broker, worker)  # every instruction is in the stream already

    await proposals.wait_for_netted(60, timeout=8.0)

    assert sorted(proposals.netted()) == sorted(f"pay-{n}" for n in range(60))
    assert len(proposals.messages) < 60  # cycles of several partitions' instructions


async def test_while_a_proposal_is_stored_the_next_cycle_gathers_instructions() -> None:
    publisher = SlowPublisher()
    worker = NettingWorker(publisher, cycle_size=100, cycle_window=5.0, ordered=True)
    first = asyncio.create_task(worker.handle(PaymentIntake.message_for(payment(0))))
    await asyncio.wait_for(publisher.started.wait(), timeout=1.0)  # its proposal is storing

    later = [
        asyncio.create_task(worker.handle(PaymentIntake.message_for(payment(n, debtor=bank))))
        for n, bank in enumerate(["BANKDEFF", "BANKFRPP", "BANKJPJT"], start=1)
    ]
    await asyncio.sleep(0.05)
    assert len(publisher.published) == 1  # they wait for the store in flight, not a window
    publisher.release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), timeout=1.0)

    assert [m.payload.payment_ids for m in publisher.published] == [
        ["pay-0"],
        ["pay-1", "pay-2", "pay-3"],
    ]


class SlowPublisher:
    """Stores proposals; the first store waits for ``release``."""

    def __init__(self) -> None:
        self.published: list[Message] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def publish(self, message: Message) -> object:
        self.published.append(message)
        self.started.set()
        if len(self.published) == 1:
            await self.release.wait()
        return None


@pytest.fixture
async def bus() -> AsyncIterator[Container]:
    container = build_container(load_settings(environ={"DELTRAN_PARTITIONS": "16"}))
    container.backend.override("memory")
    await start_container(container)
    yield container
    await shutdown_container(container)


async def test_the_containers_netting_worker_runs_in_an_ordered_group(bus: Container) -> None:
    config: SubscriberConfig = bus.netting_worker_config()
    worker: NettingWorker = await bus.netting_worker()

    assert config.ordered
    assert config.partitions == 16  # the settings' top-level partitions
    assert worker.ordered
