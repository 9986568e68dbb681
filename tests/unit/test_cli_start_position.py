"""``deltran-bus subscribe --start`` on the in-memory backend: where a reader or a new
group starts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from message_bus import Message, MessageType, PartitionKey
from message_bus.app.cli import run_cli
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    Container,
    build_container,
    shutdown_container,
    start_container,
)
from message_bus.testing.samples import sample_payload

PROOF = MessageType.SETTLEMENT_PROOF


@pytest.fixture(autouse=True)
def _no_deltran_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DELTRAN_BACKEND", "DELTRAN_NATS_URLS", "DELTRAN_CONFIG", "DELTRAN_START"):
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
        payload = sample_payload(PROOF, cycle_id=f"cycle-{n}")
        await publisher.publish(Message.new(PROOF, PartitionKey.corridor("USD-EUR"), payload))


async def test_subscribe_from_new_prints_none_of_the_retained_messages(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish_proofs(bus, 2)

    argv = ["subscribe", "SettlementProof", "--start", "new", "--timeout", "0.3"]
    code = await run_cli(argv, container=bus)

    assert code == 0
    assert capsys.readouterr().out == ""


async def test_subscribe_from_first_prints_the_retained_messages(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish_proofs(bus, 2)

    argv = ["subscribe", "SettlementProof", "--start", "first", "--count", "2", "--timeout", "5"]
    assert await run_cli(argv, container=bus) == 0

    printed = [json.loads(line)["payload"]["cycle_id"] for line in capsys.readouterr().out.split()]
    assert printed == ["cycle-0", "cycle-1"]


async def test_a_group_joined_with_another_start_is_refused_naming_the_field(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    group = ["subscribe", "SettlementProof", "--group", "ops", "--timeout", "0.1"]
    assert await run_cli([*group, "--start", "new"], container=bus) == 0

    code = await run_cli([*group, "--start", "2026-11-29T21:00:00Z"], container=bus)

    assert code == 2
    err = capsys.readouterr().err
    assert "start" in err
    assert "time:2026-11-29T21:00:00.000000Z" in err


async def test_a_bad_start_is_a_usage_error_naming_the_field_and_value(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(["subscribe", "SettlementProof", "--start", "yesterday"], container=bus)

    assert code == 2
    err = capsys.readouterr().err
    assert "start" in err
    assert "yesterday" in err
