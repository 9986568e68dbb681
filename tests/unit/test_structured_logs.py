"""Structured logs: JSON lines with delivery and trace ids, redaction, repeats collapsed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from message_bus import Message, MessageType, PartitionKey, PermanentError, SubscriberConfig
from message_bus.adapters.memory import InMemoryBroker
from message_bus.adapters.telemetry import TracingPublisher, TracingSubscriber
from message_bus.app.bus import Bus
from message_bus.app.cli.logs import log_settings_of
from message_bus.app.config import load_settings
from message_bus.app.logs import (
    JsonFormatter,
    LineHandler,
    RepeatLimiter,
    TextFormatter,
    configure_logging,
    single_line,
)
from message_bus.domain.errors import ValidationError
from message_bus.ports import FunctionHandler
from message_bus.testing import eventually
from message_bus.testing.samples import sample_payload


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line of ``stream`` parsed as one JSON object (a line that is not fails)."""
    text = stream.getvalue()
    assert text.endswith("\n") or not text
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, FakeClock]]:
    """A fresh logger writing JSON lines to a buffer, repeats limited on a fake clock."""
    stream = io.StringIO()
    clock = FakeClock()
    handler = LineHandler(
        stream, formatter=JsonFormatter(), limiter=RepeatLimiter(10.0, clock=clock)
    )
    logger = logging.getLogger(f"test.structured.{uuid.uuid4().hex[:8]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    yield logger, stream, clock
    logger.removeHandler(handler)
    handler.close()


def test_a_json_line_carries_time_level_logger_and_message(
    captured: tuple[logging.Logger, io.StringIO, FakeClock],
) -> None:
    logger, stream, _clock = captured

    logger.warning("payment %s held", "pay_1", extra={"corridor": "USD-EUR", "amount": 12})

    [line] = lines_of(stream)
    assert line["level"] == "warning"
    assert line["logger"] == logger.name
    assert line["message"] == "payment pay_1 held"
    assert line["corridor"] == "USD-EUR"
    assert line["amount"] == 12
    assert line["time"].endswith("Z")
    when = datetime.fromisoformat(line["time"])
    assert when.tzinfo is not None
    assert when.utcoffset() is not None
    assert abs((datetime.now(UTC) - when).total_seconds()) < 60
    for absent in ("message_id", "trace_id", "span_id", "group"):
        assert absent not in line, line


def test_a_multi_line_message_and_its_traceback_stay_on_one_line(
    captured: tuple[logging.Logger, io.StringIO, FakeClock],
) -> None:
    logger, stream, _clock = captured
    try:
        raise OSError("first\nsecond")
    except OSError:
        logger.exception("pull failed:\nstatus 503\n")

    [line] = lines_of(stream)
    assert line["message"] == "pull failed: | status 503"
    assert "OSError: first" in line["exception"]

    text = TextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "a\nb\r\nc", None, None)
    assert text.format(record) == "ERROR a | b | c"


@given(st.text())
def test_any_message_is_one_parseable_json_line(message: str) -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s", (message,), None)

    shown = JsonFormatter().format(record)

    assert "\n" not in shown
    assert "\r" not in shown
    assert json.loads(shown)["message"] == single_line(message)


def test_secrets_are_redacted_from_every_json_value() -> None:
    secret = 'S3"cr\\et'  # a quote and a backslash: JSON escapes them, redaction must not care
    formatter = JsonFormatter(redact=lambda text: text.replace(secret, "***"))
    try:
        raise ConnectionError(f"refused nats://alice:{secret}@h:4222")
    except ConnectionError:
        record = logging.LogRecord(
            "nats.aio.client",
            logging.ERROR,
            __file__,
            1,
            "connect to %s with %s",
            ("tls://t0k3n@h:4222", secret),
            sys.exc_info(),
        )
    record.password_hint = [secret, {"nested": secret}]

    shown = formatter.format(record)

    line = json.loads(shown)
    assert secret not in shown
    assert "t0k3n" not in shown
    assert "S3" not in shown
    assert line["message"] == "connect to tls://***@h:4222 with ***"
    assert line["password_hint"] == ["***", {"nested": "***"}]
    assert "nats://alice:***@h:4222" in line["exception"]


def test_configured_logging_redacts_the_secrets_it_is_given() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        handler = configure_logging("json", stream=stream, secrets=["hunter2", None])
        assert handler is not None
        logging.getLogger("test.secret").error("password is hunter2")
        assert configure_logging("text", stream=stream) is None  # configured already
    finally:
        for installed in root.handlers:
            installed.close()
        root.handlers[:] = saved
        root.setLevel(level)
    assert lines_of(stream)[-1]["message"] == "password is ***"


def test_a_burst_of_identical_errors_collapses_into_one_line_and_a_count(
    captured: tuple[logging.Logger, io.StringIO, FakeClock],
) -> None:
    logger, stream, clock = captured

    for attempt in range(50):
        clock.now += 0.1
        logger.warning("pull on %s: status %s (attempt %d)", "PAYMENTS", 503, attempt)
    logger.info("consumer %s created", "a")  # below WARNING: never limited
    logger.info("consumer %s created", "b")
    assert [line["message"] for line in lines_of(stream)] == [
        "pull on PAYMENTS: status 503 (attempt 0)",
        "consumer a created",
        "consumer b created",
    ]

    clock.now += 10.0  # the window ends: the next record brings the summary first
    logger.warning("pull on %s: status %s (attempt %d)", "PAYMENTS", 503, 50)

    summary, again = lines_of(stream)[3:]
    assert summary["message"] == "pull on PAYMENTS: status 503 (attempt 49) (repeated 49 times)"
    assert summary["repeated"] == 49
    assert summary["level"] == "warning"
    assert again["message"] == "pull on PAYMENTS: status 503 (attempt 50)"
    assert "repeated" not in again


def test_repeats_still_counted_are_summarized_when_the_handler_closes() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    handler = LineHandler(
        stream, formatter=TextFormatter("%(message)s"), limiter=RepeatLimiter(60, clock=clock)
    )
    logger = logging.getLogger(f"test.structured.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for _ in range(3):
            logger.error("disconnected from NATS at %s", "h:4222")
        logger.error("another error")
    finally:
        logger.removeHandler(handler)
        handler.close()

    assert stream.getvalue().splitlines() == [
        "disconnected from NATS at h:4222",
        "another error",
        "disconnected from NATS at h:4222 (repeated 2 times)",
    ]


def test_a_zero_window_writes_every_record() -> None:
    limiter = RepeatLimiter(0)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "same", None, None)

    assert [len(limiter.admit(record)) for _ in range(3)] == [1, 1, 1]
    assert limiter.pending() == []


async def test_a_record_in_a_traced_handler_names_the_delivery_and_the_span(
    captured: tuple[logging.Logger, io.StringIO, FakeClock],
) -> None:
    logger, stream, _clock = captured
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = InMemoryBroker()
    config = SubscriberConfig(consumer_group="screening", max_deliver=1)

    async def handle(message: Message) -> None:
        logger.warning("screening %s", message.id)
        raise PermanentError("sanctioned")

    subscriber = TracingSubscriber(
        broker.subscriber(MessageType.PAYMENT_INSTRUCTION, config), provider
    )
    await subscriber.subscribe(FunctionHandler(handle))
    sent = Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor("USD-EUR"),
        sample_payload(MessageType.PAYMENT_INSTRUCTION),
        correlation_id="corr-7",
    )
    async with TracingPublisher(broker.publisher(), provider) as publisher:
        await publisher.publish(sent)
        await eventually(lambda: bool(stream.getvalue()), what="the handler's log line")
    await broker.close()
    provider.shutdown()

    [line] = lines_of(stream)
    [consumer] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    [producer] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    span = consumer.get_span_context()
    assert span is not None
    assert producer.get_span_context() is not None
    assert line["trace_id"] == format(span.trace_id, "032x")
    assert line["trace_id"] == format(producer.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.span_id, "016x")
    assert line["message_id"] == sent.id
    assert line["correlation_id"] == "corr-7"
    assert line["subject"] == sent.subject
    assert line["group"] == "screening"


def test_extra_fields_win_over_the_context(
    captured: tuple[logging.Logger, io.StringIO, FakeClock],
) -> None:
    logger, stream, _clock = captured

    logger.error("replayed", extra={"message_id": "0192-explicit", "group": "ops"})

    [line] = lines_of(stream)
    assert (line["message_id"], line["group"]) == ("0192-explicit", "ops")


def test_the_log_format_setting_comes_from_the_environment_and_names_a_bad_value() -> None:
    assert load_settings(environ={}).logging.format == "text"
    assert load_settings(environ={"DELTRAN_LOG_FORMAT": "json"}).logging.format == "json"
    with pytest.raises(ValidationError) as refused:
        load_settings(environ={"DELTRAN_LOG_FORMAT": "xml"})
    assert refused.value.field == "DELTRAN_LOG_FORMAT"
    assert refused.value.value == "xml"
    with pytest.raises(ValidationError) as negative:
        load_settings(environ={"DELTRAN_LOG_REPEAT_WINDOW": "-1"})
    assert negative.value.field == "DELTRAN_LOG_REPEAT_WINDOW"


def test_the_cli_takes_the_flag_over_the_environment_over_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "bus.toml"
    toml.write_text('[logging]\nformat = "json"\nrepeat_window = 3.0\n', encoding="utf-8")

    assert log_settings_of(["streams", "ls"], {}) == ("text", 10.0)
    assert log_settings_of(["streams", "ls", "--config", str(toml)], {}) == ("json", 3.0)
    env = {"DELTRAN_CONFIG": str(toml), "DELTRAN_LOG_FORMAT": "text"}
    assert log_settings_of(["streams", "ls"], env)[0] == "text"
    assert log_settings_of(["--log-format", "json", "streams", "ls"], {})[0] == "json"
    assert (
        log_settings_of(["streams", "ls", "--log-format=json"], {"DELTRAN_LOG_FORMAT": "text"})[0]
        == "json"
    )
    assert log_settings_of([], {"DELTRAN_LOG_FORMAT": "xml"}) == ("text", 10.0)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--log-format", "json", "streams", "ls", "-v"], {}),
        (["streams", "ls", "-v"], {"DELTRAN_LOG_FORMAT": "json"}),
    ],
)
def test_the_cli_writes_parseable_json_lines(argv: list[str], env: dict[str, str]) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    environ.update(env, DELTRAN_BACKEND="memory", DELTRAN_TYPO_SETTING="1")
    done = subprocess.run(
        [sys.executable, "-m", "message_bus.app.cli", *argv],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines, "no log line"
    [warning] = [line for line in lines if "DELTRAN_TYPO_SETTING" in line["message"]]
    assert warning["level"] == "warning"
    assert warning["logger"] == "message_bus.app.config"
    assert "PAYMENT_INSTRUCTIONS" in done.stdout


async def test_a_bus_serves_with_the_log_format_of_its_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = load_settings(
        environ={"DELTRAN_BACKEND": "memory", "DELTRAN_LOG_FORMAT": "json"},
        overrides={"metrics.port": 0},
    )
    bus = Bus(settings)
    stop = asyncio.Event()
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()  # a service that configured no logging of its own
    try:

        def ready(url: str) -> None:
            logging.getLogger("test.service").warning("ready on %s", url)
            stop.set()

        await asyncio.wait_for(bus.serve(stop=stop, on_ready=ready), 60)
        installed = root.handlers[:]
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved
        root.setLevel(level)

    assert [type(h) for h in installed] == [LineHandler]
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [ready_line] = [line for line in lines if line["logger"] == "test.service"]
    assert ready_line["message"].startswith("ready on http://")
    assert any(line["logger"] == "message_bus.app.runner" for line in lines)  # INFO and up


def test_repeats_are_counted_per_consumer_whatever_their_numbers() -> None:
    clock = FakeClock()
    limiter = RepeatLimiter(10.0, clock=clock)
    template = "consumer %s: %s; retrying in %.2fs"

    def record(consumer: str, delay: float) -> logging.LogRecord:
        args = (consumer, OSError("stream gone"), delay)
        return logging.LogRecord("sub", logging.WARNING, __file__, 1, template, args, None)

    written = [
        r.getMessage()
        for consumer, delay in [("a", 0.1), ("a", 0.2), ("b", 0.1), ("b", 0.4), ("a", 0.8)]
        for r in limiter.admit(record(consumer, delay))
    ]
    summaries = sorted(r.getMessage() for r in limiter.pending())

    assert written == [
        "consumer a: stream gone; retrying in 0.10s",
        "consumer b: stream gone; retrying in 0.10s",
    ]
    assert summaries == [
        "consumer a: stream gone; retrying in 0.80s (repeated 2 times)",
        "consumer b: stream gone; retrying in 0.40s (repeated 1 time)",
    ]


@given(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")))
def test_any_other_log_format_is_refused_naming_the_variable_and_value(value: str) -> None:
    if value in ("text", "json"):
        assert load_settings(environ={"DELTRAN_LOG_FORMAT": value}).logging.format == value
        return
    with pytest.raises(ValidationError) as refused:
        load_settings(environ={"DELTRAN_LOG_FORMAT": value})
    assert (refused.value.field, refused.value.value) == ("DELTRAN_LOG_FORMAT", value)
