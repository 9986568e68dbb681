"""``deltran-bus`` on the in-memory backend, in process: commands, output, exit codes."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from message_bus import FunctionHandler, Message, MessageType, SubscriberConfig
from message_bus.adapters.memory import ManualClock
from message_bus.app.cli import main, run_cli
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    Container,
    build_container,
    shutdown_container,
    start_container,
)
from message_bus.testing.samples import sample_payload

INSTRUCTION = json.dumps(
    {
        "payment_id": "pay-1",
        "amount": "1000.00",
        "currency": "USD",
        "debtor_bank": "BANKUS33",
        "creditor_bank": "BANKGB2L",
    }
)


@pytest.fixture(autouse=True)
def _no_deltran_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DELTRAN_BACKEND", "DELTRAN_NATS_URLS", "DELTRAN_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def bus() -> AsyncIterator[Container]:
    """One in-memory broker shared by the commands of a test."""
    container = build_container(load_settings(environ={"DELTRAN_BACKEND": "memory"}))
    await start_container(container)
    yield container
    await shutdown_container(container)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


async def test_publish_prints_the_receipt(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(
        ["publish", "PaymentInstruction", "corridor.USD-EUR", INSTRUCTION], container=bus
    )

    out = capsys.readouterr().out
    assert code == 0
    assert "to deltran.payment.instruction.corridor.USD-EUR" in out
    assert "stream PAYMENT_INSTRUCTIONS seq 1 partition" in out


async def test_publishing_the_same_message_id_twice_is_reported_as_a_duplicate(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["publish", "payment.instruction", "corridor.USD-EUR", INSTRUCTION]
    argv += ["--message-id", "pay-1-attempt"]

    assert await run_cli(argv, container=bus) == 0
    assert await run_cli(argv, container=bus) == 0

    lines = capsys.readouterr().out.splitlines()
    assert "duplicate" not in lines[0]
    assert "seq 1" in lines[1]
    assert "duplicate" in lines[1]


async def test_subscribe_prints_messages_as_json_lines_and_stops_at_count(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(3):
        payload = json.dumps({"payment_id": f"pay-{n}"})
        argv = ["publish", "SettlementProof", "corridor.USD-EUR", payload, "--raw"]
        assert await run_cli(argv, container=bus) == 0
    capsys.readouterr()

    code = await run_cli(
        ["subscribe", "SettlementProof", "--group", "ops", "--count", "2", "--timeout", "5"],
        container=bus,
    )
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    code_rest = await run_cli(
        ["subscribe", "SettlementProof", "--group", "ops", "--count", "1", "--timeout", "5"],
        container=bus,
    )
    rest = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert code == code_rest == 0
    assert [m["payload"]["payment_id"] for m in first] == ["pay-0", "pay-1"]
    assert [m["payload"]["payment_id"] for m in rest] == ["pay-2"]  # nothing lost, none twice
    assert first[0]["type"] == "SettlementProof"
    assert first[0]["subject"] == "deltran.settlement.proof.corridor.USD-EUR"


async def test_a_payment_amount_typed_as_a_number_travels_exactly(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    payment = INSTRUCTION.replace('"1000.00"', "1000.10")
    argv = ["publish", "PaymentInstruction", "corridor.USD-EUR", payment]
    assert await run_cli(argv, container=bus) == 0

    await run_cli(["subscribe", "PaymentInstruction", "--count", "1"], container=bus)

    received = json.loads(capsys.readouterr().out.splitlines()[-1])["payload"]
    assert received["amount"] == "1000.10"  # a decimal string, never a float
    assert received["corridor"] == "USD-EUR"  # filled in from the key


async def test_subscribe_with_a_timeout_ends_quietly_when_nothing_arrives(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(["subscribe", "Checkpoint", "--timeout", "0.1"], container=bus)

    assert code == 0
    assert capsys.readouterr().out == ""


async def test_request_prints_the_reply(bus: Container, capsys: pytest.CaptureFixture[str]) -> None:
    async def assess(message: Message) -> Message:
        return message.reply(MessageType.RISK_ASSESSMENT, {"decision": "approve"})

    responder = await bus.subscriber(MessageType.RISK_ASSESSMENT)
    subscription = await responder.subscribe(FunctionHandler(assess))

    code = await run_cli(
        ["request", "RiskAssessment", "bank.BANKGB2L", '{"payment_id": "pay-1"}'], container=bus
    )
    await subscription.stop()

    assert code == 0
    assert json.loads(capsys.readouterr().out)["payload"] == {"decision": "approve"}


async def test_a_request_nobody_answers_fails_with_exit_code_1(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(
        ["request", "ComplianceCheck", "bank.BANKGB2L", '{"payment_id": "pay-1"}'], container=bus
    )

    assert code == 1
    assert "no responders" in one_error_line(capsys.readouterr().err)


@pytest.fixture
async def clocked_bus() -> AsyncIterator[tuple[Container, ManualClock]]:
    """An in-memory bus on fake time."""
    clock = ManualClock()
    container = build_container(load_settings(environ={"DELTRAN_BACKEND": "memory"}))
    container.clock.override(clock)
    await start_container(container)
    yield container, clock
    await shutdown_container(container)


async def _dead_letter_a_poison_payment(bus: Container) -> None:
    worker = await bus.subscriber(
        MessageType.PAYMENT_INSTRUCTION, SubscriberConfig(consumer_group="netting")
    )
    subscription = await worker.subscribe(await bus.netting_worker())
    poison = json.dumps({"payment_id": "pay-x", "amount": "-1"})
    argv = ["publish", "PaymentInstruction", "corridor.USD-EUR", poison, "--raw"]
    assert await run_cli(argv, container=bus) == 0
    dead_letters = await bus.dead_letters()
    for _ in range(500):  # the worker dead-letters it on its first delivery
        if await dead_letters.list():
            break
        await asyncio.sleep(0.01)
    await subscription.stop()


async def test_dlq_lists_a_dead_letter_with_its_reason(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    await _dead_letter_a_poison_payment(bus)
    capsys.readouterr()

    assert await run_cli(["dlq", "ls"], container=bus) == 0

    listing = capsys.readouterr().out
    assert "deltran.payment.instruction.corridor.USD-EUR" in listing
    assert "invalid payment instruction" in listing
    assert "1 dead letter(s)" in listing


async def test_dlq_replay_republishes_at_once_and_refuses_a_second_replay(
    clocked_bus: tuple[Container, ManualClock], capsys: pytest.CaptureFixture[str]
) -> None:
    bus, _ = clocked_bus
    await _dead_letter_a_poison_payment(bus)
    capsys.readouterr()

    replayed = await run_cli(["dlq", "replay", "1"], container=bus)
    out = capsys.readouterr().out
    twice = await run_cli(["dlq", "replay", "1"], container=bus)
    refused = capsys.readouterr().err

    assert replayed == 0
    assert out.startswith("replayed dead letter 1: published")
    assert "seq 2" in out
    assert twice == 1
    assert "not replayed again: already replayed" in one_error_line(refused)


async def test_replaying_an_unknown_dead_letter_is_an_error(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(["dlq", "replay", "42"], container=bus)

    assert code == 2
    assert "no dead letter with sequence 42" in one_error_line(capsys.readouterr().err)


async def test_streams_on_the_memory_backend_lists_the_catalog(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(["streams", "ls"], container=bus) == 0

    out = capsys.readouterr().out
    assert "PAYMENT_INSTRUCTIONS" in out
    assert "DEAD_LETTERS" in out


def test_demo_on_the_memory_backend_nets_every_payment_and_prints_the_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["demo", "--backend", "memory", "--payments", "120", "--metrics-port", "0"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "120 published, 120 netted" in out
    assert "lost / doubled   0 / 0" in out
    assert "5 injected handler failures" in out
    assert "1 found in DEAD_LETTERS" in out
    assert "messages per partition" in out
    assert "end-to-end" in out
    assert "p99" in out


class ScrapingStdout(io.StringIO):
    """A stdout that scrapes the metrics endpoint as soon as its line is written."""

    def __init__(self) -> None:
        super().__init__()
        self.scraped: list[str] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith("metrics: http://"):  # printed once the endpoint is up
                with urllib.request.urlopen(line.removeprefix("metrics: "), timeout=5) as reply:
                    self.scraped.append(reply.read().decode())
        return super().write(text)


def test_demo_serves_metrics_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = ScrapingStdout()
    monkeypatch.setattr(sys, "stdout", stdout)

    code = main(["demo", "--backend", "memory", "--payments", "10", "--metrics-port", "0"])

    assert code == 0, stdout.getvalue()
    scraped = stdout.scraped
    assert "# TYPE message_bus_publish_total counter" in scraped[0]
    assert "nats_connection_status" in scraped[0]


def test_demo_refuses_a_metrics_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["demo", "--backend", "memory", "--payments", "1", "--metrics-port", str(port)])

    assert code == 2
    assert "--metrics-port 0" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["publish", "Payment", "corridor.USD-EUR", "{}"], "unknown message type 'Payment'"),
        (["publish", "PaymentInstruction", "corridor.USD.EUR", "{}"], "partition_key"),
        (["publish", "PaymentInstruction", "corridor.usd-eur", "{}"], "corridor_id 'usd-eur'"),
        (["publish", "SettlementProof", "broadcast", "{not json"], "payload is not JSON"),
        (["publish", "SettlementProof", "broadcast", "NaN"], "NaN is not allowed"),
        (
            ["publish", "PaymentInstruction", "corridor.USD-EUR", '{"payment_id": "p"}'],
            "payment_instruction",
        ),
        (["demo", "--backend", "memory", "--corridors", "USD-EUR,usdeur"], "'usdeur'"),
        (["demo", "--backend", "memory", "--banks", "BANKGB2L,BANK"], "'BANK'"),
        (["demo", "--payments", "0"], "--payments"),
        (["subscribe", "Checkpoint", "--count", "-1"], "--count"),
        (["publish", "--backend", "kafka", "Checkpoint", "broadcast", "{}"], "--backend"),
        (["publish", "Checkpoint", "broadcast", "{}", "--url", "http://x"], "--url"),
        (["publish", "Checkpoint", "broadcast", "@/no/such/file.json"], "cannot read payload"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [*argv, "--backend", "memory"] if argv[0] == "publish" and "--backend" not in argv else argv
    )

    assert code == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_a_bad_environment_variable_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DELTRAN_PUBLISH_TIMEOUT", "soon")

    code = main(["publish", "Checkpoint", "broadcast", "{}"])

    assert code == 2
    assert "DELTRAN_PUBLISH_TIMEOUT 'soon'" in one_error_line(capsys.readouterr().err)


def test_settings_come_from_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bus.toml"
    config.write_text('backend = "memory"\npartitions = 4\n')

    checkpoint = json.dumps(sample_payload(MessageType.CHECKPOINT))
    argv = ["publish", "Checkpoint", "corridor.USD-EUR", checkpoint, "--config", str(config)]
    code = main(argv)

    out = capsys.readouterr().out
    assert code == 0
    assert "partition" in out
    assert int(out.rsplit("partition ", 1)[1].split()[0]) < 4


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0

    out = capsys.readouterr().out
    for command in ("server", "streams", "publish", "subscribe", "request", "dlq", "demo"):
        assert command in out
