"""``deltran-bus``: run a server, manage streams, publish, subscribe, replay dead letters,
and run the demo.

Every command reads the settings (defaults < ``--config`` TOML file < ``DELTRAN_*``
variables < flags). Exit codes: 0 success; 1 the operation failed (timeout, no responder,
the demo lost or doubled a payment); 2 bad input or an unreachable server, reported as
one line on stderr; 130 interrupted (Ctrl-C or SIGTERM: what the command started is
stopped first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec
from prometheus_client import CollectorRegistry, start_http_server

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import BusConnectionError, MessageBusError, ValidationError
from message_bus.domain.message import Message
from message_bus.domain.partition import PartitionKey
from message_bus.domain.payloads import BankConfirmation, NettingProposal, PaymentInstruction
from message_bus.ports import PublishReceipt, Subscription, current_delivery

from .config import BACKENDS, BusSettings, load_settings
from .containers import (
    Container,
    apply_streams,
    build_container,
    resolve,
    shutdown_container,
    start_container,
    start_in_thread,
)
from .demo import DEFAULT_BANKS, DEFAULT_CORRIDORS, DemoOptions, run_demo, write_report
from .embedded import EmbeddedNatsServer, EmbeddedServerError
from .service import validate_instruction

if TYPE_CHECKING:
    from message_bus.adapters.nats import StreamReport

__all__ = ["CliError", "build_parser", "main", "run_cli"]

PROG = "deltran-bus"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger(__name__)


class CliError(Exception):
    """A failure reported as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# -- argument types ------------------------------------------------------------------


_TYPE_NAMES: dict[str, MessageType] = {}
for _t in MessageType:
    _TYPE_NAMES[_t.value.lower()] = _t
    _TYPE_NAMES[_t.name.lower()] = _t
    _TYPE_NAMES[_t.type_subject] = _t
    _TYPE_NAMES[_t.name.lower().replace("_", "-")] = _t


def parse_message_type(text: str) -> MessageType:
    """``PaymentInstruction``, ``PAYMENT_INSTRUCTION``, ``payment-instruction`` or
    ``payment.instruction``."""
    found = _TYPE_NAMES.get(text.strip().lower())
    if found is None:
        names = ", ".join(t.value for t in MessageType)
        raise argparse.ArgumentTypeError(f"unknown message type {text!r} (one of: {names})")
    return found


def parse_key(text: str) -> PartitionKey:
    """A partition key in its subject form: ``corridor.USD-EUR``, ``bank.BANKGB2L``,
    ``corridor.USD-EUR.bank.BANKGB2L`` or ``broadcast``."""
    try:
        return PartitionKey.parse(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not in 0..65535")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0 seconds")
    return value


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


# -- the parser ---------------------------------------------------------------------------


_KEY_HELP = (
    "partition key: corridor.USD-EUR, bank.BANKGB2L, corridor.USD-EUR.bank.BANKGB2L, broadcast"
)
_TYPE_HELP = "message type: PaymentInstruction (or PAYMENT_INSTRUCTION, payment.instruction)"
_PAYLOAD_HELP = "JSON payload, @FILE, or - for stdin"


def build_parser() -> argparse.ArgumentParser:
    """The ``deltran-bus`` argument parser (every command and option)."""
    settings_only = _Parser(add_help=False)
    basics = settings_only.add_argument_group("configuration")
    basics.add_argument(
        "--config",
        metavar="PATH",
        help="TOML settings file (default: $DELTRAN_CONFIG); see docs/configuration.md",
    )
    basics.add_argument(
        "-v", "--verbose", action="store_true", help="log at INFO level (default: errors only)"
    )
    common = _Parser(add_help=False, parents=[settings_only])
    group = common.add_argument_group("connection")
    group.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help="NATS server URL (repeat, or comma separate, for a cluster); implies --backend nats",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        help="memory, nats or embedded (default: $DELTRAN_BACKEND, else nats)",
    )

    parser = _Parser(
        prog=PROG,
        description="DelTran's payment-settlement message bus over NATS JetStream.",
        epilog="Exit codes: 0 ok, 1 operation failed, 2 bad input or unreachable server.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, parent: _Parser = common) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[parent]
        )
        return sub

    server = command(
        "server",
        "run an embedded nats-server with JetStream (streams applied) until Ctrl-C",
        settings_only,
    )
    server.add_argument(
        "--port", type=_port, default=4222, metavar="PORT", help="client port (default 4222)"
    )
    server.add_argument(
        "--data-dir",
        metavar="DIR",
        help="JetStream store (default: $DELTRAN_DATA_DIR, else a temporary directory)",
    )
    server.add_argument(
        "--monitor-port", type=_port, metavar="PORT", help="HTTP monitoring port (off if unset)"
    )
    server.add_argument(
        "--no-streams", action="store_true", help="do not apply the stream catalog on start"
    )

    streams = command("streams", "apply or list the JetStream streams of the catalog")
    streams_sub = streams.add_subparsers(dest="action", metavar="ACTION", required=True)
    streams_sub.add_parser(
        "apply",
        help="create or update every stream (idempotent); report drift",
        parents=[common],
    )
    streams_sub.add_parser("ls", help="list the streams with their state", parents=[common])

    publish = command("publish", "publish one message and print its receipt")
    publish.add_argument("type", type=parse_message_type, help=_TYPE_HELP)
    publish.add_argument("key", type=parse_key, help=_KEY_HELP)
    publish.add_argument("payload", help=_PAYLOAD_HELP)
    publish.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="user header (repeatable; Nats-*/Deltran-* are reserved)",
    )
    publish.add_argument("--correlation-id", metavar="ID", help="correlation id of the flow")
    publish.add_argument(
        "--message-id", metavar="ID", help="message id (a repeat is deduplicated by the stream)"
    )
    publish.add_argument(
        "--raw",
        action="store_true",
        help="skip the typed payload check (PaymentInstruction, NettingProposal, BankConfirmation)",
    )

    subscribe = command(
        "subscribe", "receive messages as a consumer group member; print one JSON line each"
    )
    subscribe.add_argument("type", type=parse_message_type, help=_TYPE_HELP)
    subscribe.add_argument(
        "--group", metavar="NAME", help="consumer group (default: subscriber.consumer_group)"
    )
    subscribe.add_argument(
        "--durable", metavar="NAME", help="durable name (default: subscriber.durable_name)"
    )
    subscribe.add_argument("--key", type=parse_key, help="only messages with this partition key")
    subscribe.add_argument("--count", type=_positive_int, metavar="N", help="stop after N messages")
    subscribe.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="stop after S seconds (default: run until Ctrl-C)",
    )

    request = command(
        "request", "send a request (RiskAssessment, ComplianceCheck) and print the reply"
    )
    request.add_argument("type", type=parse_message_type, help=_TYPE_HELP)
    request.add_argument("key", type=parse_key, help=_KEY_HELP)
    request.add_argument("payload", help=_PAYLOAD_HELP)
    request.add_argument(
        "--timeout", type=_seconds, default=5.0, metavar="S", help="seconds to wait (5)"
    )

    dlq = command("dlq", "list or replay dead letters")
    dlq_sub = dlq.add_subparsers(dest="action", metavar="ACTION", required=True)
    dlq_ls = dlq_sub.add_parser("ls", help="list dead letters, oldest first", parents=[common])
    dlq_ls.add_argument(
        "--limit", type=_positive_int, default=100, metavar="N", help="at most N (100)"
    )
    dlq_replay = dlq_sub.add_parser(
        "replay", help="republish dead letters to their original subject", parents=[common]
    )
    dlq_replay.add_argument(
        "sequence", type=_positive_int, nargs="+", help="dead-letter sequence (SEQ of dlq ls)"
    )

    demo = command(
        "demo",
        "run the payment flow end to end and print a summary (on an embedded server "
        "unless --url, --backend, DELTRAN_BACKEND or the config file say otherwise)",
    )
    demo.add_argument(
        "--payments", type=_positive_int, default=1000, metavar="N", help="payments (1000)"
    )
    demo.add_argument(
        "--workers", type=_positive_int, default=3, metavar="N", help="netting workers (3)"
    )
    demo.add_argument(
        "--corridors",
        type=_list,
        default=DEFAULT_CORRIDORS,
        metavar="LIST",
        help=f"comma separated (default {','.join(DEFAULT_CORRIDORS)})",
    )
    demo.add_argument(
        "--banks",
        type=_list,
        default=DEFAULT_BANKS,
        metavar="LIST",
        help="comma separated BICs (default: 8 demo banks)",
    )
    demo.add_argument(
        "--failures",
        type=int,
        default=5,
        metavar="N",
        help="payments whose first delivery fails on purpose, then succeeds (5)",
    )
    demo.add_argument(
        "--poison",
        type=int,
        default=1,
        metavar="N",
        help="malformed instructions that get dead-lettered (1)",
    )
    demo.add_argument(
        "--cycle-window",
        type=_seconds,
        default=0.05,
        metavar="S",
        help="seconds a netting cycle waits for more payments (0.05)",
    )
    demo.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve /metrics here while running (default: metrics.port, 9464; 0 = free port)",
    )
    demo.add_argument(
        "--timeout", type=_seconds, default=60.0, metavar="S", help="give up after S seconds (60)"
    )
    demo.add_argument("--seed", type=int, metavar="N", help="seed of the generated payments")
    return parser


# -- helpers -------------------------------------------------------------------------------


def _load(args: argparse.Namespace, *, default_backend: str | None = None) -> BusSettings:
    defaults = {} if default_backend is None else {"backend": default_backend}
    overrides: dict[str, Any] = {}
    urls = getattr(args, "url", None)  # `server` has no connection options
    backend = getattr(args, "backend", None)
    if urls:
        overrides["--url=nats.urls"] = [u for item in urls for u in _list(item)]
        overrides["--url=backend"] = "nats"
    if backend is not None:
        overrides["--backend=backend"] = backend
    return load_settings(args.config, overrides=overrides, defaults=defaults)


def _read_payload(text: str, *, exact_decimals: bool = False) -> Any:
    """The JSON payload given inline, as ``@FILE`` or as ``-`` (stdin).

    With ``exact_decimals`` numbers with a fraction become ``Decimal`` (exactly as
    typed), for the typed payloads that carry money.
    """
    if text == "-":
        raw = sys.stdin.read()
        where = "stdin"
    elif text.startswith("@"):
        try:
            raw = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read payload file {text[1:]!r}: {exc.strerror}") from None
        where = text[1:]
    else:
        raw, where = text, "payload"
    try:
        if exact_decimals:
            return json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)
        return json.loads(raw, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise CliError(f"{where} is not JSON: {exc}") from None


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed in a payload")


_TYPED: dict[MessageType, type[Any]] = {
    MessageType.PAYMENT_INSTRUCTION: PaymentInstruction,
    MessageType.NETTING_PROPOSAL: NettingProposal,
    MessageType.BANK_CONFIRMATION: BankConfirmation,
}


def _payload(args: argparse.Namespace) -> Any:
    """The payload to publish: typed and checked for the types that have a schema."""
    schema = None if args.raw else _TYPED.get(args.type)
    payload = _read_payload(args.payload, exact_decimals=schema is not None)
    if schema is None:
        return payload
    if schema is PaymentInstruction:
        return validate_instruction(payload, getattr(args.key, "corridor_id", None))
    try:
        return msgspec.convert(payload, schema, strict=False)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ValidationError("payload", payload, str(exc)) from None


def _receipt_line(receipt: PublishReceipt) -> str:
    where = (
        f"stream {receipt.stream} seq {receipt.sequence}" if receipt.stream else "core (no stream)"
    )
    partition = "" if receipt.partition is None else f" partition {receipt.partition}"
    duplicate = " (duplicate: already stored, nothing new)" if receipt.duplicate else ""
    return f"published {receipt.message_id} to {receipt.subject}: {where}{partition}{duplicate}"


def _message_json(message: Message, attempt: int | None = None) -> str:
    record: dict[str, Any] = {
        "id": message.id,
        "type": message.message_type.value,
        "subject": message.subject,
        "partition": message.partition,
        "created_at": message.created_at.isoformat(),
    }
    if attempt is not None:
        record["attempt"] = attempt
    if message.correlation_id is not None:
        record["correlation_id"] = message.correlation_id
    if message.causation_id is not None:
        record["causation_id"] = message.causation_id
    if message.headers:
        record["headers"] = dict(message.headers)
    record["payload"] = message.payload
    return msgspec.json.encode(record, enc_hook=str).decode()


def _table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextlib.asynccontextmanager
async def _bus(settings: BusSettings, container: Container | None) -> AsyncIterator[Container]:
    """The given container (left running), or a new one started and shut down here."""
    if container is not None:
        await start_container(container)
        yield container
        return
    owned = build_container(settings)
    try:
        await start_container(owned)
        yield owned
    finally:
        await shutdown_container(owned)


def _backend_of(container: Container) -> str:
    backend: str = container.backend()
    return backend


# -- commands ------------------------------------------------------------------------------


async def _cmd_publish(args: argparse.Namespace, container: Container | None) -> int:
    settings = _load(args)
    payload = _payload(args)
    message = Message.new(
        args.type,
        args.key,
        payload,
        correlation_id=args.correlation_id,
        headers=dict(args.header) or None,
        message_id=args.message_id,
    )
    async with _bus(settings, container) as bus:
        publisher = await bus.publisher()
        try:
            receipt = await publisher.publish(message)
        finally:
            await publisher.close()
    _out(_receipt_line(receipt))
    return EXIT_OK


async def _cmd_request(args: argparse.Namespace, container: Container | None) -> int:
    settings = _load(args)
    message = Message.new(args.type, args.key, _read_payload(args.payload))
    async with _bus(settings, container) as bus:
        publisher = await bus.publisher()
        try:
            reply = await publisher.request(message, args.timeout)
        finally:
            await publisher.close()
    _out(_message_json(reply))
    return EXIT_OK


async def _cmd_subscribe(args: argparse.Namespace, container: Container | None) -> int:
    settings = _load(args)
    changes: dict[str, Any] = {"partition_key": args.key}
    if args.group:
        changes["consumer_group"] = args.group
    if args.durable:
        changes["durable_name"] = args.durable
    if args.count is not None:
        # One at a time, in order, and fetch no more than the next one.
        changes["max_concurrent"] = 1
        changes["fetch_batch"] = 1
    config = settings.subscriber_config(**changes)
    received = 0
    enough = asyncio.Event()
    started = asyncio.Event()
    subscription: Subscription | None = None
    stopping: list[asyncio.Task[None]] = []

    async def show(message: Message) -> None:
        nonlocal received
        delivery = current_delivery()
        await started.wait()
        if enough.is_set():
            # Fetched while stopping: hand it back to the group at once (this costs it
            # one delivery attempt, as any fetched-but-unprocessed message does).
            await delivery.nak(0)
            return
        received += 1
        _out(_message_json(message, delivery.attempt))
        if args.count is not None and received >= args.count and subscription is not None:
            enough.set()
            # Stop fetching before this handler returns (its return is the ACK).
            stopping.append(asyncio.create_task(subscription.stop()))
            await asyncio.sleep(0)

    async with _bus(settings, container) as bus:
        subscriber = await bus.subscriber(args.type, config)
        try:
            subscription = await subscriber.subscribe(_Handler(show))
            started.set()
            try:
                await asyncio.wait_for(enough.wait(), args.timeout)
            except TimeoutError:
                pass
            finally:
                await subscription.stop()
                await asyncio.gather(*stopping)
        finally:
            await subscriber.close()
    if args.count is not None and received < args.count:
        print(f"{PROG}: received {received} of {args.count} messages", file=sys.stderr)
    return EXIT_OK


class _Handler:
    def __init__(self, function: Callable[[Message], Coroutine[Any, Any, None]]) -> None:
        self._function = function

    async def handle(self, message: Message) -> None:
        await self._function(message)


async def _cmd_dlq(args: argparse.Namespace, container: Container | None) -> int:
    settings = _load(args)
    async with _bus(settings, container) as bus:
        dead_letters = await bus.dead_letters()
        if args.action == "ls":
            letters = await dead_letters.list(args.limit)
            rows = [
                (
                    d.dlq_sequence if d.dlq_sequence is not None else "-",
                    d.message.message_type.value,
                    d.subject,
                    f"{d.stream}#{d.sequence}",
                    d.deliveries,
                    d.consumer_group,
                    d.failed_at.strftime("%Y-%m-%d %H:%M:%S"),
                    d.reason,
                )
                for d in letters
            ]
            headers = ("SEQ", "TYPE", "SUBJECT", "FROM", "DELIVERIES", "GROUP", "FAILED", "REASON")
            _out(_table(rows, headers))
            _out(f"{len(letters)} dead letter(s)")
            return EXIT_OK
        not_replayed = []
        for sequence in args.sequence:
            try:
                receipt = await dead_letters.replay(sequence)
            except KeyError:
                raise CliError(f"no dead letter with sequence {sequence}") from None
            if receipt.duplicate:
                # This dead letter was already replayed within the duplicate window.
                not_replayed.append(sequence)
                continue
            _out(f"replayed dead letter {sequence}: {_receipt_line(receipt)}")
    if not_replayed:
        window = settings.streams.duplicate_window
        raise CliError(
            f"dead letter(s) {', '.join(map(str, not_replayed))} not replayed again: already "
            f"replayed within the duplicate window ({window:g} s)",
            EXIT_FAILED,
        )
    return EXIT_OK


async def _cmd_streams(args: argparse.Namespace, container: Container | None) -> int:
    settings = _load(args)
    async with _bus(settings, container) as bus:
        if _backend_of(bus) == "memory":
            rows = [
                (s.name, ",".join(s.subjects), _days(s.max_age))
                for s in bus.catalog().all_streams()
            ]
            _out("in-memory backend: the catalog's streams exist in the broker itself")
            _out(_table(rows, ("STREAM", "SUBJECTS", "MAX AGE")))
            return EXIT_OK
        if args.action == "apply":
            _out(_format_stream_reports(await apply_streams(bus)))
            return EXIT_OK
        manager = await resolve(bus.stream_manager())
        summaries = await manager.list()
    listing = [
        (
            s.name,
            ",".join(s.subjects),
            s.messages,
            s.bytes,
            f"{s.first_sequence}..{s.last_sequence}",
            s.consumers,
            s.replicas,
            _days(s.max_age),
            f"{s.duplicate_window:g}s",
        )
        for s in summaries
    ]
    headers = ("STREAM", "SUBJECTS", "MESSAGES", "BYTES", "SEQUENCES", "CONSUMERS")
    _out(_table(listing, (*headers, "REPLICAS", "MAX AGE", "DEDUP")))
    return EXIT_OK


def _days(seconds: float) -> str:
    return "forever" if seconds <= 0 else f"{seconds / 86400:g}d"


def _format_stream_reports(reports: Sequence[StreamReport]) -> str:
    rows = [(r.name, r.action, "; ".join(r.drift) or "-") for r in reports]
    return _table(rows, ("STREAM", "ACTION", "DRIFT"))


async def _apply_streams(settings: BusSettings, url: str) -> list[StreamReport]:
    """Apply the catalog on the server at ``url`` with a short-lived connection."""
    nats = dataclasses.replace(settings.nats, urls=(url,))
    container = build_container(dataclasses.replace(settings, backend="nats", nats=nats))
    try:
        await start_container(container)
        return await apply_streams(container)
    finally:
        await shutdown_container(container)


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``stop`` instead of ending the process."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _cmd_server(args: argparse.Namespace, container: Container | None) -> int:
    settings = _load(args)
    data_dir = args.data_dir or settings.embedded.data_dir
    server = EmbeddedNatsServer(
        port=args.port,
        store_dir=data_dir,
        monitor_port=args.monitor_port,
        binary=settings.embedded.binary,
    )
    stop = asyncio.Event()
    # From before the server starts: a signal during the start stops it once started.
    with _signals_set(stop):
        await start_in_thread(server.start, server.stop)
        try:
            store = f"{server.store_dir}" + (
                "" if data_dir else " (temporary; --data-dir keeps it)"
            )
            _out(f"nats-server ready at {server.url}")
            _out(f"JetStream store: {store}")
            if server.monitor_url is not None:
                _out(f"monitoring: {server.monitor_url}")
            if not args.no_streams and not stop.is_set():
                reports = await _apply_streams(settings, server.url)
                _out(f"streams applied: {len(reports)}")
            _out("Ctrl-C stops the server")
            await stop.wait()
        finally:
            await asyncio.to_thread(server.stop)
    _out("nats-server stopped")
    return EXIT_OK


@dataclass
class _MetricsEndpoint:
    url: str
    stop: Callable[[], None]


def _serve_metrics(registry: CollectorRegistry, host: str, port: int) -> _MetricsEndpoint:
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise CliError(
            f"cannot serve /metrics on {host}:{port}: {exc.strerror} "
            "(--metrics-port 0 picks a free port)"
        ) from None

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    return _MetricsEndpoint(f"http://{host}:{httpd.server_port}/metrics", stop)


async def _cmd_demo(args: argparse.Namespace, container: Container | None) -> int:
    # The demo's natural backend is a server of its own; a backend or URL given by flag,
    # environment or config file still wins.
    settings = _load(args, default_backend="embedded")
    options = DemoOptions(
        payments=args.payments,
        workers=args.workers,
        corridors=args.corridors,
        banks=args.banks,
        failures=min(args.failures, args.payments),
        poison=args.poison,
        cycle_window=args.cycle_window,
        timeout=args.timeout,
        seed=args.seed,
    )
    metrics_port = settings.metrics.port if args.metrics_port is None else args.metrics_port
    _out(
        f"{PROG} demo: {options.payments} payments over {len(options.corridors)} corridors "
        f"and {len(options.banks)} banks -> {options.workers} netting workers (group "
        f"'netting') -> netting proposals"
    )
    async with _bus(settings, container) as bus:
        backend = _backend_of(bus)
        header: list[tuple[str, str]] = []
        if backend == "memory":
            header.append(("backend", "in-memory broker (nothing leaves this process)"))
        else:
            if backend == "embedded":
                server = await resolve(bus.embedded_server())
                _out(f"embedded nats-server at {server.url} (JetStream store {server.store_dir})")
                header.append(("backend", f"embedded nats-server {server.url} (JetStream)"))
            else:
                urls = ", ".join(settings.nats.urls)
                header.append(("backend", f"NATS JetStream at {urls}"))
            reports = await apply_streams(bus)
            _out(f"streams applied ({len(reports)}), replicas {settings.streams.replicas}")
        endpoint = _serve_metrics(bus.registry(), settings.metrics.host, metrics_port)
        try:
            _out(f"metrics: {endpoint.url}")
            report = await run_demo(bus, options, progress=_out)
        finally:
            endpoint.stop()
    header.append(("metrics", f"{endpoint.url} (served while the demo ran)"))
    write_report(report, sys.stdout, header)
    sys.stdout.flush()
    if not report.ok:
        problems = []
        if not report.completed:
            problems.append(f"flow did not complete within {options.timeout:g} s")
        if report.lost:
            problems.append(f"{report.lost} payment(s) not netted")
        if report.doubled:
            problems.append(f"{report.doubled} payment(s) netted twice")
        if report.dead_letters_stored != report.poison:
            problems.append(
                f"{report.dead_letters_stored} of {report.poison} poison message(s) stored "
                "in DEAD_LETTERS"
            )
        print(f"{PROG} demo: FAILED: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_FAILED
    _out("demo OK: every payment netted exactly once; poison dead-lettered")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, Container | None], Coroutine[Any, Any, int]]] = {
    "server": _cmd_server,
    "streams": _cmd_streams,
    "publish": _cmd_publish,
    "subscribe": _cmd_subscribe,
    "request": _cmd_request,
    "dlq": _cmd_dlq,
    "demo": _cmd_demo,
}


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


async def run_cli(argv: Sequence[str], *, container: Container | None = None) -> int:
    """Run one ``deltran-bus`` command in the running event loop; return its exit code.

    Errors become one line on stderr and an exit code (see the module docstring).

    Args:
        argv: the arguments after the program name.
        container: use this container (configured, started here if needed, left
            running) instead of one built from the settings. Tests use it to run several
            commands against one in-memory broker.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already wrote its one line (or the help)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    prog = f"{PROG} {args.command}"
    try:
        return await _COMMANDS[args.command](args, container)
    except CliError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except (ValidationError, ValueError) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (BusConnectionError, EmbeddedServerError, ConnectionError) as exc:
        print(f"{prog}: error: cannot reach the server: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (MessageBusError, TimeoutError) as exc:
        print(f"{prog}: failed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # one line, not a traceback; -v logs it
        log.info("unexpected error", exc_info=True)
        print(f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


async def _run_until_terminated(argv: Sequence[str]) -> int:
    """:func:`run_cli`, cancelled by SIGTERM as by Ctrl-C: what it started is stopped."""
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_cli(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``deltran-bus`` console script: run one command; return its exit code.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in arguments or "--verbose" in arguments
    # Without -v only errors are logged: expected events (a dead letter, a reconnect)
    # would break the one-line-per-error promise of the CLI.
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(_run_until_terminated(arguments))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
