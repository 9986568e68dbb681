"""Structured logs against a real nats-server: repeated pull errors collapse, the CLI's
JSON lines parse and hide the password, a JetStream handler's lines carry its trace."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from waits import eventually

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.adapters.telemetry import TracingPublisher, TracingSubscriber
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.app.logs import JsonFormatter, LineHandler, RepeatLimiter
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
SUBSCRIBER_LOGGER = "message_bus.nats.subscriber"
SECRET = "Pa55-w0rd-for-logs"


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = NatsClient(NatsConfig(urls=[nats_server.url]))
    await client.connect()
    await StreamManager(client).apply()
    yield client
    await client.close()


class Counting(logging.Handler):
    """Counts every record it sees, unlimited, as a plain handler would write them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def subscriber_logs() -> Iterator[tuple[io.StringIO, LineHandler, Counting]]:
    """JSON lines (repeats limited for a minute) and a raw count of the subscriber's logs."""
    stream = io.StringIO()
    lines = LineHandler(stream, formatter=JsonFormatter(), limiter=RepeatLimiter(60.0))
    counting = Counting()
    logger = logging.getLogger(SUBSCRIBER_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    logger.addHandler(counting)
    yield stream, lines, counting
    logger.removeHandler(lines)
    logger.removeHandler(counting)
    logger.setLevel(level)


def parsed(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_a_pull_loop_retrying_a_deleted_stream_writes_one_line_and_a_count(
    client: NatsClient, subscriber_logs: tuple[io.StringIO, LineHandler, Counting]
) -> None:
    stream, lines, counting = subscriber_logs
    group = f"logs-{uuid.uuid4().hex[:8]}"
    subscriber = JetStreamSubscriber(client, PAYMENT, SubscriberConfig(consumer_group=group))

    async def accept(message: Message) -> None:
        return None

    subscription = await subscriber.subscribe(FunctionHandler(accept))
    try:
        await client.jetstream.delete_stream(STREAM)

        def retries() -> list[str]:
            return [m for m in counting.messages if "does not exist" in m and "retrying" in m]

        await eventually(lambda: len(retries()) >= 4, "4 retries of the pull loop", timeout=60)
    finally:
        await subscription.stop()
    repeated = len(retries())

    written = [line for line in parsed(stream.getvalue()) if "does not exist" in line["message"]]
    assert len(written) == 1, written
    lines.close()  # writes the summary of what was counted
    summaries = [line for line in parsed(stream.getvalue()) if "repeated" in line]
    [summary] = [line for line in summaries if "does not exist" in line["message"]]
    assert summary["repeated"] == repeated - 1
    assert summary["message"].endswith(f"(repeated {repeated - 1} times)")
    assert summary["level"] == "warning"
    assert summary["logger"] == SUBSCRIBER_LOGGER


def test_the_cli_writes_json_lines_without_the_password(
    nats_server_factory: Callable[..., EmbeddedNatsServer],
) -> None:
    server = nats_server_factory(user="alice", password=SECRET)
    url = server.url.replace("nats://", f"nats://alice:{SECRET}@")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "message_bus.app.cli",
            "--log-format",
            "json",
            "streams",
            "apply",
            "-v",
            "--url",
            url,
        ],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stderr
    assert SECRET not in done.stdout
    lines = parsed(done.stderr)
    created = {line["message"] for line in lines if line["logger"] == "message_bus.nats.streams"}
    assert f"stream {STREAM} created" in created, created
    assert all(line["time"].endswith("Z") for line in lines)
    assert {line["level"] for line in lines} <= {"info", "warning"}


async def test_a_jetstream_handlers_line_carries_the_trace_of_its_message(
    client: NatsClient,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stream = io.StringIO()
    logger = logging.getLogger(f"test.structured.nats.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LineHandler(stream, formatter=JsonFormatter())
    logger.addHandler(handler)
    group = f"traced-{uuid.uuid4().hex[:8]}"
    handled = asyncio.Event()
    sent = Message.new(
        PAYMENT,
        PartitionKey.corridor("USD-EUR"),
        sample_payload(PAYMENT, payment_id=f"pay_{uuid.uuid4().hex[:8]}"),
        correlation_id="corr-nats",
    )

    async def handle(message: Message) -> None:
        if message.id == sent.id:
            logger.info("screened %s", message.id)
            handled.set()

    subscriber = TracingSubscriber(
        JetStreamSubscriber(client, PAYMENT, SubscriberConfig(consumer_group=group)), provider
    )
    subscription = await subscriber.subscribe(FunctionHandler(handle))
    try:
        await TracingPublisher(JetStreamPublisher(client), provider).publish(sent)
        await eventually(handled.is_set, "the handler's run on the published message")
    finally:
        await subscription.stop()
        logger.removeHandler(handler)
        provider.shutdown()

    [line] = parsed(stream.getvalue())
    consumers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    [span] = [s for s in consumers if s.attributes and sent.id in s.attributes.values()]
    context = span.get_span_context()
    assert context is not None
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"
    assert (line["message_id"], line["correlation_id"]) == (sent.id, "corr-nats")
    assert line["subject"] == sent.subject
    assert line["group"] == group
