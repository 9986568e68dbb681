"""The container and the example payment flow on real nats-server processes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import runpy
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from waits import eventually

from message_bus import (
    BusConnectionError,
    Message,
    MessageType,
    PartitionKey,
    SubscriberConfig,
)
from message_bus.app.config import BusSettings, load_settings
from message_bus.app.containers import (
    Container,
    apply_streams,
    build_container,
    open_container,
    resolve,
    shutdown_container,
    start_container,
)
from message_bus.app.demo import DemoOptions, run_demo
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.app.service import BankConfirmer
from message_bus.domain.dead_letter import DeadLetter
from message_bus.domain.payloads import PaymentInstruction
from message_bus.testing.samples import sample_payload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORKERS = SubscriberConfig(
    consumer_group="netting", max_concurrent=16, nak_initial_delay=0.05, nak_max_delay=0.2
)


def nats_settings(url: str, **environ: str) -> BusSettings:
    return load_settings(environ={"DELTRAN_BACKEND": "nats", "DELTRAN_NATS_URLS": url, **environ})


@pytest.fixture
async def bus(nats_server: EmbeddedNatsServer) -> AsyncIterator[Container]:
    container = build_container(nats_settings(nats_server.url))
    await start_container(container)
    await apply_streams(container)
    yield container
    await shutdown_container(container)


class Collector:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.changed = asyncio.Event()

    async def handle(self, message: Message) -> None:
        self.messages.append(message)
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        async def poll() -> None:
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(poll(), timeout)


async def test_applying_streams_creates_the_catalog_then_changes_nothing(
    bus: Container,
) -> None:
    again = await apply_streams(bus)

    assert {r.name for r in again} >= {"PAYMENT_INSTRUCTIONS", "DEAD_LETTERS"}
    assert {r.action for r in again} == {"unchanged"}


async def test_the_payment_flow_nets_every_payment_once_on_jetstream(bus: Container) -> None:
    proposals = Collector()
    audit = await bus.subscriber(
        MessageType.NETTING_PROPOSAL, SubscriberConfig(consumer_group="audit")
    )
    await audit.subscribe(proposals)
    workers = []
    for _ in range(3):
        subscriber = await bus.subscriber(MessageType.PAYMENT_INSTRUCTION, WORKERS)
        workers.append(await subscriber.subscribe(await bus.netting_worker()))
    intake = await resolve(bus.payment_intake())
    sent = []
    for n in range(90):
        corridor, currency = (("USD-EUR", "USD"), ("GBP-USD", "GBP"))[n % 2]
        instruction = PaymentInstruction(
            payment_id=f"pay-{n}",
            amount=Decimal("10.01") * (n + 1),
            currency=currency,
            debtor_bank=("BANKUS33", "BANKGB2L", "BANKDEFF")[n % 3],
            creditor_bank=("BANKGB2L", "BANKDEFF", "BANKUS33")[n % 3],
            corridor=corridor,
        )
        sent.append(instruction.payment_id)
        await intake.submit(instruction)

    def netted() -> list[str]:
        return [p for m in proposals.messages for p in m.payload["payment_ids"]]

    async def all_netted() -> None:
        while len(netted()) < len(sent):
            proposals.changed.clear()
            await proposals.changed.wait()

    await asyncio.wait_for(all_netted(), 20)
    for subscription in workers:
        await subscription.drain()

    assert sorted(netted()) == sorted(sent)
    for proposal in proposals.messages:
        assert sum(Decimal(v) for v in proposal.payload["positions"].values()) == 0


async def test_a_poison_instruction_is_dead_lettered_in_the_stream(bus: Container) -> None:
    subscriber = await bus.subscriber(MessageType.PAYMENT_INSTRUCTION, WORKERS)
    subscription = await subscriber.subscribe(await bus.netting_worker())
    unchecked = dataclasses.replace(bus.publisher_config(), validate_payloads=False)
    publisher = await bus.publisher(config=unchecked)  # past the schema check on purpose
    poison = Message.new(
        MessageType.PAYMENT_INSTRUCTION, PartitionKey.corridor("USD-EUR"), {"amount": "-1"}
    )
    await publisher.publish(poison)
    dead_letters = await bus.dead_letters()

    letters: list[DeadLetter] = []

    async def dead_lettered() -> bool:  # the worker dead-letters it on its first delivery
        letters[:] = await dead_letters.list()
        return bool(letters)

    await eventually(dead_lettered, "the poison instruction's dead letter")
    await subscription.stop()

    assert [d.message.id for d in letters] == [poison.id]
    assert "invalid payment instruction" in letters[0].reason
    assert letters[0].stream == "PAYMENT_INSTRUCTIONS"


async def test_confirmations_of_a_redelivered_proposal_are_deduplicated(bus: Container) -> None:
    confirmer = BankConfirmer(await bus.publisher())
    proposal = Message.new(
        MessageType.NETTING_PROPOSAL,
        PartitionKey.corridor("USD-EUR"),
        {
            "cycle_id": "cycle-1",
            "corridor": "USD-EUR",
            "positions": {"BANKGB2L": "10.00", "BANKUS33": "-10.00"},
        },
        correlation_id="cycle-1",
    )

    await confirmer.handle(proposal)
    await confirmer.handle(proposal)
    manager = await resolve(bus.stream_manager())
    info = await manager.info("BANK_CONFIRMATIONS")

    assert info.messages == 2  # one per bank, the repeat was deduplicated


async def test_the_demo_flow_runs_on_nats_with_retries_and_dead_letters(bus: Container) -> None:
    report = await run_demo(bus, DemoOptions(payments=150, failures=3, poison=2, seed=7))

    assert report.ok
    assert report.netted == 150
    assert report.redeliveries >= 3
    assert report.dead_letters_stored == 2
    assert sum(report.per_partition.values()) == 150


async def test_connection_status_is_exported_while_connected(
    nats_server: EmbeddedNatsServer,
) -> None:
    container = build_container(nats_settings(nats_server.url))
    await start_container(container)
    registry = container.registry()
    connected = registry.get_sample_value("nats_connection_status", {"status": "connected"})
    await shutdown_container(container)
    closed = registry.get_sample_value("nats_connection_status", {"status": "closed"})

    assert connected == 1
    assert closed == 1


async def test_an_unreachable_server_fails_start_with_a_connection_error() -> None:
    settings = nats_settings("nats://127.0.0.1:1", DELTRAN_NATS_CONNECTION_TIMEOUT="0.5")

    with pytest.raises(BusConnectionError):
        async with open_container(settings):
            pass


async def test_the_embedded_backend_starts_its_own_server_with_streams_and_stops_it() -> None:
    settings = load_settings(environ={"DELTRAN_BACKEND": "embedded"})

    async with open_container(settings) as container:
        server = await resolve(container.embedded_server())
        publisher = await container.publisher()  # no apply_streams: the container did it
        receipt = await publisher.publish(
            Message.new(
                MessageType.CHECKPOINT,
                PartitionKey.broadcast(),
                sample_payload(MessageType.CHECKPOINT),
            )
        )
        await publisher.close()
        assert server.is_running

    assert receipt.stream == "CHECKPOINTS"
    assert not server.is_running


def _nats_server_children() -> set[int]:
    """Process ids of the nats-server processes this test process started."""
    children = set()
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
        except OSError:
            continue  # the process ended meanwhile
        name = fields[0].split("(", 1)[1]
        parent = int(fields[1].split()[1])
        if parent == me and name == "nats-server":
            children.add(int(stat.parent.name))
    return children


async def test_a_start_cancelled_while_the_embedded_server_starts_leaves_no_server_running() -> (
    None
):
    before = _nats_server_children()
    container = build_container(load_settings(environ={"DELTRAN_BACKEND": "embedded"}))
    starting = asyncio.create_task(start_container(container))
    for _ in range(1000):  # until the server process exists (it is not ready yet)
        if _nats_server_children() - before:
            break
        await asyncio.sleep(0.005)
    starting.cancel()

    with pytest.raises(asyncio.CancelledError):
        await starting

    assert _nats_server_children() - before == set()
    await shutdown_container(container)


@pytest.mark.parametrize("name", ["publisher.py", "subscriber.py"])
def test_examples_run_against_a_nats_server(
    name: str,
    nats_server: EmbeddedNatsServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def streams() -> None:
        async with open_container(nats_settings(nats_server.url)) as container:
            await apply_streams(container)

    asyncio.run(streams())
    monkeypatch.setattr(sys, "argv", [name, nats_server.url])

    runpy.run_path(str(EXAMPLES / name), run_name="__main__")

    out = capsys.readouterr().out
    assert ("stream PAYMENT_INSTRUCTIONS" if name == "publisher.py" else "Received:") in out
