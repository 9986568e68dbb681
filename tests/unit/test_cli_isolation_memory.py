"""``deltran-bus subscribe`` on the in-memory backend reads in no group, unless told one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.app.cli import main, run_cli
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    Container,
    build_container,
    resolve,
    shutdown_container,
    start_container,
)
from message_bus.testing.samples import sample_payload

PROOF = MessageType.SETTLEMENT_PROOF


@pytest.fixture(autouse=True)
def _no_deltran_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DELTRAN_BACKEND", "DELTRAN_NATS_URLS", "DELTRAN_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def bus() -> AsyncIterator[Container]:
    container = build_container(load_settings(environ={"DELTRAN_BACKEND": "memory"}))
    await start_container(container)
    yield container
    await shutdown_container(container)


async def publish_proofs(bus: Container, count: int) -> None:
    publisher = await bus.publisher()
    for n in range(count):
        await publisher.publish(
            Message.new(
                PROOF,
                PartitionKey.corridor("USD-EUR"),
                sample_payload(PROOF, proof_id=f"proof-{n}"),
            )
        )


async def service_receives(bus: Container, config: SubscriberConfig) -> list[str]:
    seen: list[str] = []

    async def record(message: Message) -> None:
        seen.append(message.payload["proof_id"])

    subscriber = await bus.subscriber(PROOF, config)
    subscription = await subscriber.subscribe(FunctionHandler(record))
    broker = await resolve(bus.memory_broker())
    await broker.settle()
    await subscription.stop()
    await subscriber.close()
    return seen


async def test_subscribe_without_a_group_leaves_every_message_to_the_default_group(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish_proofs(bus, 3)

    code = await run_cli(
        ["subscribe", "SettlementProof", "--count", "3", "--timeout", "5"], container=bus
    )

    assert code == 0
    printed = [json.loads(line)["payload"]["proof_id"] for line in capsys.readouterr().out.split()]
    assert printed == ["proof-0", "proof-1", "proof-2"]
    # The services' default group (deltran-workers) still has all three.
    assert await service_receives(bus, SubscriberConfig()) == printed


async def test_subscribe_twice_without_a_group_reads_the_stream_from_its_start_each_time(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish_proofs(bus, 2)
    argv = ["subscribe", "SettlementProof", "--count", "2", "--timeout", "5"]

    assert await run_cli(argv, container=bus) == 0
    first = capsys.readouterr().out
    assert await run_cli(argv, container=bus) == 0

    assert capsys.readouterr().out.count("proof-") == first.count("proof-") == 2


async def test_subscribe_with_a_group_takes_the_groups_messages(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish_proofs(bus, 2)
    argv = ["subscribe", "SettlementProof", "--group", "ops", "--count", "2", "--timeout", "5"]

    assert await run_cli(argv, container=bus) == 0

    assert await service_receives(bus, SubscriberConfig(consumer_group="ops")) == []


def test_durable_without_group_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["subscribe", "Checkpoint", "--durable", "x", "--backend", "memory"])

    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "--durable needs --group" in lines[0]


@pytest.mark.parametrize("group", ["ops__audit", "_ops", "ops_"])
def test_a_group_name_that_would_collide_exits_2_naming_it(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["subscribe", "Checkpoint", "--group", group, "--backend", "memory"])

    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert f"consumer_group {group!r}" in lines[0]
