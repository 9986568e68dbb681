"""``deltran-bus`` takes nothing from services: ``subscribe`` reads in no group, and the
demo keeps to names and payments of its own on a server services use."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from waits import eventually

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    KvGroupStore,
    NatsClient,
)
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.domain.payloads import PaymentInstruction

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
SERVICE_KEY = PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKGB2L")
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}
SCRIPT = shutil.which("deltran-bus", path=str(Path(sys.executable).parent))


def deltran_bus(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "message_bus.app.cli"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


async def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(deltran_bus, *args, timeout=timeout)


def service_payment(n: int) -> Message:
    return Message.new(
        PAYMENT,
        SERVICE_KEY,
        PaymentInstruction(
            payment_id=f"svc_{n}",
            amount=Decimal("10.00"),
            currency="USD",
            debtor_bank="BANKGB2L",
            creditor_bank="DEUTDEFF",
            corridor="USD-EUR",
        ),
    )


async def run_service(client: NatsClient, seen: list[str]) -> JetStreamSubscriber:
    """A service in the default group (``deltran-workers``), recording payment ids."""

    async def record(message: Message) -> None:
        seen.append(message.payload["payment_id"])

    service = JetStreamSubscriber(client, PAYMENT, SubscriberConfig(), **FAST)  # type: ignore[arg-type]
    await service.subscribe(FunctionHandler(record))
    return service


async def consumers_of(client: NatsClient, stream: str) -> list[str]:
    return [info.name for info in await client.jetstream.consumers_info(stream)]


async def test_cli_subscribe_without_a_group_leaves_every_message_to_the_services_group(
    client: NatsClient, nats_server: EmbeddedNatsServer
) -> None:
    publisher = JetStreamPublisher(client)
    sent = [service_payment(n) for n in range(10)]
    for message in sent:
        await publisher.publish(message)

    read = await cli(
        "subscribe", "PaymentInstruction", "--count", "10", "--timeout", "30",
        "--url", nats_server.url,
    )  # fmt: skip

    assert read.returncode == 0, read.stderr
    printed = [json.loads(line)["payload"]["payment_id"] for line in read.stdout.splitlines()]
    assert printed == [f"svc_{n}" for n in range(10)]
    assert await consumers_of(client, STREAM) == []  # its ephemeral consumer is gone

    seen: list[str] = []
    service = await run_service(client, seen)
    await eventually(lambda: len(seen) >= 10, "the service group to receive all 10 payments")
    await service.close()
    assert sorted(seen) == sorted(m.payload.payment_id for m in sent)  # type: ignore[attr-defined]


async def test_an_ephemeral_reader_beside_a_running_service_takes_nothing_from_it(
    client: NatsClient,
) -> None:
    seen: list[str] = []
    service = await run_service(client, seen)
    read: list[str] = []

    async def record(message: Message) -> None:
        read.append(message.payload["payment_id"])

    reader = JetStreamSubscriber(client, PAYMENT, SubscriberConfig(), ephemeral=True, **FAST)  # type: ignore[arg-type]
    subscription = await reader.subscribe(FunctionHandler(record))
    publisher = JetStreamPublisher(client)
    for n in range(20):
        await publisher.publish(service_payment(n))

    await eventually(lambda: len(seen) >= 20, "the service to receive all 20 payments")
    await eventually(lambda: len(read) >= 20, "the reader to read all 20 payments")
    await subscription.stop()
    await reader.close()
    names = await consumers_of(client, STREAM)
    await service.close()
    assert sorted(seen) == sorted(read) == sorted(f"svc_{n}" for n in range(20))
    assert names == [SubscriberConfig().consumer_name]  # the reader deleted its consumer


async def test_the_demo_refuses_a_server_that_services_use_unless_forced(
    client: NatsClient, nats_server: EmbeddedNatsServer
) -> None:
    publisher = JetStreamPublisher(client)
    await publisher.publish(service_payment(0))
    url = nats_server.url

    refused = await cli("demo", "--url", url, "--payments", "20", "--metrics-port", "0")

    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line
    assert "Traceback" not in refused.stderr
    assert "not the demo's" in line
    assert "--force" in line
    assert "PAYMENT_INSTRUCTIONS: 1 message(s)" in line
    assert (await client.jetstream.stream_info(STREAM)).state.messages == 1
    assert await consumers_of(client, STREAM) == []

    forced = await cli("demo", "--url", url, "--payments", "20", "--metrics-port", "0", "--force")

    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "--force: PAYMENT_INSTRUCTIONS: 1 message(s)" in forced.stdout
    # A group of its own: ordered, so its positions are in the ordered groups' bucket
    # (and its readers' ephemeral consumers are gone), not in a durable consumer.
    assert await consumers_of(client, STREAM) == []
    positions = await KvGroupStore(client, STREAM, "deltran-demo__demo-netting").snapshot()
    assert positions.partitions
    assert sum(p.value.floor for p in positions.partitions.values()) > 0
    # The demo's workers acknowledged the service's payment untouched: no dead letter
    # of it, no proposal netting it, and the service's group still gets it.
    letters = await cli("dlq", "ls", "--url", url)
    assert "svc_0" not in letters.stdout
    proposals = await read_all(client, MessageType.NETTING_PROPOSAL, "NETTING_PROPOSALS")
    assert proposals
    assert not any("svc_0" in p.payload["payment_ids"] for p in proposals)
    seen: list[str] = []
    service = await run_service(client, seen)
    await eventually(lambda: "svc_0" in seen, "the service to receive its payment")
    await service.close()


async def test_the_demo_runs_again_on_a_server_holding_only_demo_messages(
    nats_server: EmbeddedNatsServer,
) -> None:
    url = nats_server.url
    for _ in range(2):
        run = await cli("demo", "--url", url, "--payments", "20", "--metrics-port", "0")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "demo OK" in run.stdout


async def read_all(client: NatsClient, message_type: MessageType, stream: str) -> list[Message]:
    """Every message of ``stream``, read by an ephemeral reader."""
    total = (await client.jetstream.stream_info(stream)).state.messages
    found: list[Message] = []

    async def record(message: Message) -> None:
        found.append(message)

    reader = JetStreamSubscriber(client, message_type, SubscriberConfig(), ephemeral=True, **FAST)  # type: ignore[arg-type]
    subscription = await reader.subscribe(FunctionHandler(record))
    await eventually(lambda: len(found) >= total, f"all {total} messages of {stream}")
    await subscription.stop()
    await reader.close()
    return found
