"""The plugin's ``embedded_nats_server`` fixture, run by pytest on a user's integration
tests: one real nats-server for the session, with the streams applied, gone afterwards."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

USER_TESTS = """
import json
import os
from pathlib import Path

from message_bus import Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
)
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.ports.subscriber import FunctionHandler
from message_bus.testing import eventually
from message_bus.testing.samples import sample_payload

SEEN = Path(os.environ["PLUGIN_SEEN_FILE"])


def remember(server: EmbeddedNatsServer) -> None:
    with SEEN.open("a") as out:
        out.write(json.dumps({"url": server.url, "pid": server.pid,
                              "store": str(server.store_dir)}) + "\\n")


async def test_a_stream_backed_publish_is_stored_and_consumed(
    embedded_nats_server: EmbeddedNatsServer,
) -> None:
    remember(embedded_nats_server)
    client = NatsClient(NatsConfig(urls=[embedded_nats_server.url]))
    await client.connect()
    try:
        publisher = JetStreamPublisher(client)
        message = Message.new(
            MessageType.PAYMENT_INSTRUCTION,
            PartitionKey.corridor("USD-EUR"),
            sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id="pay_1"),
        )
        receipt = await publisher.publish(message)
        assert receipt.stream == "PAYMENT_INSTRUCTIONS" and not receipt.duplicate
        seen: list[Message] = []

        async def handle(received: Message) -> None:
            seen.append(received)

        subscriber = JetStreamSubscriber(
            client, MessageType.PAYMENT_INSTRUCTION, SubscriberConfig(consumer_group="netting")
        )
        await subscriber.subscribe(FunctionHandler(handle))
        await eventually(lambda: len(seen) == 1, timeout=30.0, what="the delivery of pay_1")
        assert seen[0].id == message.id
        await subscriber.close()
    finally:
        await client.close()


def test_the_session_shares_one_server(embedded_nats_server: EmbeddedNatsServer) -> None:
    remember(embedded_nats_server)
    assert embedded_nats_server.is_running
    status, body = embedded_nats_server.healthz()
    assert status == 200, body
"""


def test_the_embedded_server_fixture_serves_the_session_with_streams_and_is_gone_after(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("PLUGIN_SEEN_FILE", str(seen))
    pytester.makeini(INI)
    pytester.makepyfile(test_user_integration=textwrap.dedent(USER_TESTS))
    pytester.runpytest().assert_outcomes(passed=2)

    runs = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(runs) == 2
    assert runs[0] == runs[1], "both tests must see the same session server"
    pid, store = runs[0]["pid"], Path(runs[0]["store"])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped at the end of the session
    assert not store.exists(), f"{store} left behind"
