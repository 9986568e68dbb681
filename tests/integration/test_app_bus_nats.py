"""The application object on real nats-server processes: the screening service's follow-ups
and traces, a republish deduplicated after a crash, /readyz across a server restart, and
``deltran-bus run`` draining on SIGTERM."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from waits import eventually

from message_bus import Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.adapters.nats import NatsClient, NatsConfig, StreamManager
from message_bus.app import Bus, BusSettings, Context, load_settings
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.app.middleware import Next
from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.payloads import PaymentInstruction
from message_bus.testing.samples import sample_payload

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "screening_service.py"
KEY = PartitionKey.corridor("USD-EUR")


def nats_settings(url: str, **environ: str) -> BusSettings:
    return load_settings(
        environ={
            "DELTRAN_BACKEND": "nats",
            "DELTRAN_NATS_URLS": url,
            "DELTRAN_METRICS_PORT": "0",
            "DELTRAN_NATS_RECONNECT_DELAY": "0.1",
            "DELTRAN_NATS_RECONNECT_MAX_DELAY": "0.5",
            **environ,
        }
    )


async def apply_streams(url: str) -> None:
    async with NatsClient(NatsConfig(urls=[url])) as client:
        await StreamManager(client).apply(StreamCatalog.default())


async def stored(url: str, stream: str) -> int:
    async with NatsClient(NatsConfig(urls=[url])) as client:
        return (await StreamManager(client).info(stream)).messages


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch, nats_server: EmbeddedNatsServer) -> Iterator[Any]:
    """The README's screening service, imported as `deltran-bus run` would, on the server."""
    monkeypatch.setenv("DELTRAN_BACKEND", "nats")
    monkeypatch.setenv("DELTRAN_NATS_URLS", nats_server.url)
    monkeypatch.delenv("DELTRAN_CONFIG", raising=False)
    name = f"screening_service_{id(monkeypatch)}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    before = set(MessageType)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        for registered in set(MessageType) - before:  # the example's own follow-up type
            MessageType.unregister(registered)


def payment(number: int, creditor: str = "BANKDEFF") -> Message:
    instruction = PaymentInstruction(
        payment_id=f"pay-{number}",
        amount=Decimal("99.50"),
        currency="USD",
        debtor_bank="BANKGB2L",
        creditor_bank=creditor,
    )
    return Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, instruction)


async def test_the_screening_service_publishes_follow_ups_in_one_trace_per_payment(
    example: Any, nats_server: EmbeddedNatsServer
) -> None:
    await apply_streams(nats_server.url)
    bus: Bus = example.bus
    exporter = InMemorySpanExporter()
    bus.container.tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    seen: list[Message] = []

    @bus.handler(example.VERDICT, group="audit")
    async def audit(message: Message) -> None:
        seen.append(message)

    sent = [payment(0), payment(1, creditor="BANKRU2M"), payment(2)]
    async with bus:
        for message in sent:
            await bus.publisher.publish(message)
        await eventually(lambda: len(seen) == 3, "the three follow-ups reach the audit group")

        def audit_spans_ended() -> bool:
            return sum(s.name.endswith("audit handle") for s in exporter.get_finished_spans()) == 3

        await eventually(audit_spans_ended, "the audit handler's three spans to end")
    by_cause = {m.causation_id: m for m in seen}
    assert set(by_cause) == {m.id for m in sent}
    for cause in sent:
        assert by_cause[cause.id].correlation_id == cause.id
    assert [by_cause[m.id].payload["hold"] for m in sent] == [False, True, False]
    traces: dict[int, list[str]] = {}
    for span in exporter.get_finished_spans():
        assert span.context is not None
        traces.setdefault(span.context.trace_id, []).append(span.name)
    assert len(traces) == 3, traces
    for names in traces.values():
        assert any(n.endswith("screen handle") for n in names), names
        assert any(n.endswith("audit handle") for n in names), names


class CrashAfterPublishing:
    """A process that dies between the follow-up's publish and the ack, once."""

    def __init__(self) -> None:
        self.crashed = False
        self.acked = asyncio.Event()

    async def __call__(self, ctx: Context, call_next: Next) -> Any:
        result = await call_next(ctx)
        if ctx.kind == "consume":
            if not self.crashed:
                self.crashed = True
                raise ConnectionError("process died before the ack")
            self.acked.set()
        return result


def leg(instruction: PaymentInstruction, number: int) -> dict[str, Any]:
    return sample_payload(
        MessageType.ADAPTER_TRANSFER,
        transfer_id=f"{instruction.payment_id}-leg-{number}",
        payment_id=instruction.payment_id,
    )


async def test_a_redelivery_republishes_its_follow_ups_and_the_stream_stores_them_once(
    nats_server: EmbeddedNatsServer,
) -> None:
    await apply_streams(nats_server.url)
    bus = Bus(nats_settings(nats_server.url, DELTRAN_NAK_INITIAL_DELAY="0"))
    crash = CrashAfterPublishing()
    bus.use(crash)

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening", payload=PaymentInstruction)
    async def screen(instruction: PaymentInstruction, message: Message) -> list[Message]:
        return [
            message.reply(MessageType.ADAPTER_TRANSFER, leg(instruction, 1)),
            message.reply(MessageType.ADAPTER_TRANSFER, leg(instruction, 2)),
        ]

    async with bus:
        await bus.publisher.publish(payment(1))
        await asyncio.wait_for(crash.acked.wait(), 60)  # the redelivery ran and succeeded
    assert crash.crashed
    assert await stored(nats_server.url, "ADAPTER_TRANSFERS") == 2  # not 4


async def readyz(url: str) -> tuple[int, str]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.slow
async def test_readyz_turns_unready_when_the_server_stops_and_ready_when_it_restarts(
    nats_server: EmbeddedNatsServer,
) -> None:
    await apply_streams(nats_server.url)
    bus = Bus(nats_settings(nats_server.url))

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening")
    async def screen(message: Message) -> None:
        return None

    stop = asyncio.Event()
    started = asyncio.Event()
    urls: list[str] = []

    def on_ready(url: str) -> None:
        urls.append(url)
        started.set()

    serving = asyncio.create_task(bus.serve(stop=stop, on_ready=on_ready))
    try:
        await asyncio.wait_for(started.wait(), 60)
        url = urls[0]

        async def status_is(code: int) -> bool:
            return (await readyz(url))[0] == code

        await eventually(lambda: status_is(200), "/readyz to answer 200 once started", 60)
        await asyncio.to_thread(nats_server.kill)
        await eventually(lambda: status_is(503), "/readyz to answer 503 once the server died", 60)
        status, body = await readyz(url)
        assert status == 503
        assert '"connection": "not connected' in body
        await asyncio.to_thread(nats_server.restart)
        await eventually(lambda: status_is(200), "/readyz to answer 200 after the restart", 90)
    finally:
        stop.set()
        assert await asyncio.wait_for(serving, 90) == 0


SLOW_SERVICE = '''
    """A service whose handler takes a second."""

    import asyncio

    from message_bus import Message, MessageType
    from message_bus.app import Bus

    bus = Bus()


    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="slow")
    async def slow(message: Message) -> None:
        print("started", message.payload["payment_id"], flush=True)
        await asyncio.sleep(1.0)  # the work in flight when SIGTERM arrives
        print("finished", message.payload["payment_id"], flush=True)
'''


async def read_until(stream: asyncio.StreamReader, marker: str, lines: list[str]) -> None:
    async def read() -> None:
        while True:
            line = (await stream.readline()).decode()
            assert line, f"output ended before {marker!r}: {lines}"
            lines.append(line)
            if marker in line:
                return

    try:
        await asyncio.wait_for(read(), 60)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {marker!r} in the output: {lines}") from None


@pytest.mark.slow
async def test_deltran_bus_run_drains_the_handler_in_flight_on_sigterm_and_exits_0(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    await apply_streams(nats_server.url)
    (tmp_path / "slow_service.py").write_text(textwrap.dedent(SLOW_SERVICE))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "message_bus.app.cli",
        "run",
        f"{tmp_path / 'slow_service.py'}:bus",
        "--url",
        nats_server.url,
        "--metrics-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        await read_until(process.stdout, "serving /metrics", lines)
        bus = Bus(nats_settings(nats_server.url))
        async with bus:
            await bus.publisher.publish(payment(1))
        await read_until(process.stdout, "started pay-1", lines)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
        rest = (await process.stdout.read()).decode()
        assert process.stderr is not None
        errors = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = "".join(lines) + rest
    assert code == 0, errors
    assert "finished pay-1" in output
    assert "stopped: handlers drained" in output
    name = SubscriberConfig(consumer_group="slow").consumer_name
    async with NatsClient(NatsConfig(urls=[nats_server.url])) as client:
        info = await client.jetstream.consumer_info("PAYMENT_INSTRUCTIONS", name)
    assert info.num_ack_pending == 0  # the drained handler's ack reached the server
    assert info.num_pending == 0
    assert info.ack_floor.stream_seq == 1


async def test_an_ordered_handler_gets_each_keys_messages_in_order_and_publishes_follow_ups(
    nats_server: EmbeddedNatsServer,
) -> None:
    await apply_streams(nats_server.url)
    bus = Bus(nats_settings(nats_server.url))
    handled: list[str] = []
    follow_ups: list[Message] = []

    @bus.handler(
        MessageType.PAYMENT_INSTRUCTION, group="ledger", ordering="partition", max_concurrent=4
    )
    async def book(payload: dict[str, Any], message: Message) -> Message:
        handled.append(payload["payment_id"])
        transfer = sample_payload(
            MessageType.ADAPTER_TRANSFER,
            transfer_id=f"tr-{payload['payment_id']}",
            payment_id=payload["payment_id"],
        )
        return message.reply(MessageType.ADAPTER_TRANSFER, transfer)

    @bus.handler(MessageType.ADAPTER_TRANSFER, group="audit")
    async def audit(message: Message) -> None:
        follow_ups.append(message)

    sent = [
        Message.new(
            MessageType.PAYMENT_INSTRUCTION,
            KEY,
            sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay-{i:02d}"),
        )
        for i in range(8)
    ]
    async with bus:
        for message in sent:
            await bus.publisher.publish(message)
        await eventually(lambda: len(follow_ups) == 8, "the ordered group's eight follow-ups")
    assert handled == sorted(handled)  # one key: one partition, handled in stream order
    assert {m.causation_id for m in follow_ups} == {m.id for m in sent}
