"""A message type of one's own on a real nats-server: its stream, typed publish, consumption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from waits import eventually

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    SubscriberConfig,
    ValidationError,
)
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.app.embedded import EmbeddedNatsServer

KEY = PartitionKey.corridor("USD-EUR")
SCRIPT = shutil.which("deltran-bus", path=str(Path(sys.executable).parent))

TYPES_MODULE = '''
"""Registers the FraudAlert type of the test application."""

import msgspec

from message_bus import MessageType


class FraudAlert(msgspec.Struct, frozen=True, kw_only=True):
    payment_id: str
    score: float


FRAUD_ALERT = MessageType.register(
    "FraudAlert", "fraud.alert", payload=FraudAlert, stream="FRAUD_ALERTS", max_age=3600.0
)
'''


class FraudAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A fraud screening raised an alert on a payment."""

    payment_id: str
    score: float


@pytest.fixture
def fraud_alert() -> Iterator[MessageType]:
    registered = MessageType.register(
        "FraudAlert", "fraud.alert", payload=FraudAlert, stream="FRAUD_ALERTS", max_age=3600.0
    )
    yield registered
    MessageType.unregister(registered)


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    connected = NatsClient(NatsConfig(urls=[nats_server.url], connection_timeout=10.0))
    await connected.connect()
    yield connected
    await connected.close()


async def stored(client: NatsClient, stream: str) -> int:
    info = await client.jetstream.stream_info(stream)
    return int(info.state.messages)


async def test_a_registered_type_gets_its_stream_and_is_published_and_consumed_on_nats(
    fraud_alert: MessageType, client: NatsClient
) -> None:
    await StreamManager(client).apply()  # the default catalog, FraudAlert included
    info = await client.jetstream.stream_info("FRAUD_ALERTS")
    assert "deltran.fraud.alert.>" in (info.config.subjects or [])
    assert info.config.max_age == 3600.0

    publisher = JetStreamPublisher(client)
    with pytest.raises(ValidationError) as caught:
        await publisher.publish(Message.new(fraud_alert, KEY, {"payment_id": "p", "score": "x"}))
    assert caught.value.field == "payload.score"
    assert await stored(client, "FRAUD_ALERTS") == 0

    received: list[Message] = []

    async def keep(message: Message) -> None:
        received.append(message)

    subscriber = JetStreamSubscriber(client, fraud_alert, SubscriberConfig(consumer_group="fraud"))
    subscription = await subscriber.subscribe(FunctionHandler(keep))
    sent = Message.new(fraud_alert, KEY, FraudAlert(payment_id="pay-1", score=0.9))
    receipt = await publisher.publish(sent)
    assert (receipt.stream, receipt.sequence) == ("FRAUD_ALERTS", 1)

    await eventually(lambda: len(received) == 1, "the FraudAlert to be consumed", 30.0)
    await subscription.drain()
    await subscriber.close()
    await publisher.close()
    assert received[0].id == sent.id
    assert received[0].message_type is fraud_alert
    assert received[0].payload_as(FraudAlert) == FraudAlert(payment_id="pay-1", score=0.9)


def test_the_cli_applies_publishes_and_reads_a_type_registered_by_deltran_types(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    (tmp_path / "fraud_types.py").write_text(TYPES_MODULE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    env.update(DELTRAN_TYPES="fraud_types", PYTHONPATH=str(tmp_path))
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "message_bus.app.cli"]
    url = nats_server.url

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args, "--url", url],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    applied = run("streams", "apply")
    refused = run("publish", "FraudAlert", "corridor.USD-EUR", '{"payment_id": "p"}')
    published = run("publish", "FraudAlert", "corridor.USD-EUR", '{"payment_id": "p", "score": 1}')
    received = run("subscribe", "fraud-alert", "--count", "1", "--timeout", "10")

    assert applied.returncode == 0, applied.stderr
    assert "FRAUD_ALERTS" in applied.stdout
    assert refused.returncode == 2
    assert "score" in refused.stderr
    assert published.returncode == 0, published.stderr
    assert "stream FRAUD_ALERTS seq 1" in published.stdout
    assert received.returncode == 0, received.stderr
    assert json.loads(received.stdout)["type"] == "FraudAlert"
