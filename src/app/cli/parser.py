"""The ``deltran-bus`` argument parser: every command, option and help text."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from ..config import BACKENDS
from ..demo import DEFAULT_BANKS, DEFAULT_CORRIDORS
from ..logs import LOG_FORMATS
from .arguments import (
    comma_list,
    header,
    parse_key,
    parse_message_type,
    port_number,
    positive_int,
    seconds,
)
from .errors import EXIT_USAGE

__all__ = ["PROG", "build_parser"]

PROG = "deltran-bus"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


_LOG_FORMAT_ARGS = ("--log-format",)
_LOG_FORMAT_OPTIONS: dict[str, Any] = {
    "choices": LOG_FORMATS,
    "default": argparse.SUPPRESS,  # read before parsing (see .logs), before or after COMMAND
    "help": "log lines as text or JSON objects (default: $DELTRAN_LOG_FORMAT, else text)",
}

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
    basics.add_argument(*_LOG_FORMAT_ARGS, **_LOG_FORMAT_OPTIONS)
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
    parser.add_argument(*_LOG_FORMAT_ARGS, **_LOG_FORMAT_OPTIONS)
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
        "--port", type=port_number, default=4222, metavar="PORT", help="client port (default 4222)"
    )
    server.add_argument(
        "--data-dir",
        metavar="DIR",
        help="JetStream store (default: $DELTRAN_DATA_DIR, else a temporary directory)",
    )
    server.add_argument(
        "--monitor-port",
        type=port_number,
        metavar="PORT",
        help="HTTP monitoring port (off if unset)",
    )
    server.add_argument(
        "--no-streams", action="store_true", help="do not apply the stream catalog on start"
    )

    streams = command(
        "streams",
        "apply or list the JetStream streams of the catalog; back them up or restore them",
    )
    streams_sub = streams.add_subparsers(dest="action", metavar="ACTION", required=True)
    streams_sub.add_parser(
        "apply",
        help="create or update every stream (idempotent); report drift",
        parents=[common],
    )
    streams_sub.add_parser("ls", help="list the streams with their state", parents=[common])
    backup = streams_sub.add_parser(
        "backup",
        help="snapshot streams (messages and consumer groups' positions) to DIR, "
        "each with a SHA-256 manifest",
        parents=[common],
    )
    backup.add_argument("directory", metavar="DIR", help="where to write the backups")
    backup.add_argument(
        "--stream",
        action="append",
        metavar="NAME",
        help="back up this stream (repeatable; default: every stream on the server)",
    )
    restore = streams_sub.add_parser(
        "restore",
        help="recreate streams from the backups in DIR (checksums verified first)",
        parents=[common],
    )
    restore.add_argument("directory", metavar="DIR", help="where the backups are")
    restore.add_argument(
        "--stream",
        action="append",
        metavar="NAME",
        help="restore this stream (repeatable; default: every backup in DIR)",
    )
    restore.add_argument(
        "--force", action="store_true", help="delete an existing stream first instead of refusing"
    )

    publish = command("publish", "publish one message and print its receipt")
    publish.add_argument("type", type=parse_message_type, help=_TYPE_HELP)
    publish.add_argument("key", type=parse_key, help=_KEY_HELP)
    publish.add_argument("payload", help=_PAYLOAD_HELP)
    publish.add_argument(
        "--header",
        type=header,
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
        help="skip the typed payload check against the type's Struct (publish free-form JSON)",
    )

    subscribe = command(
        "subscribe",
        "read messages without taking them from anyone (or as a member of --group); "
        "print one JSON line each",
    )
    subscribe.add_argument("type", type=parse_message_type, help=_TYPE_HELP)
    subscribe.add_argument(
        "--group",
        metavar="NAME",
        help="join this consumer group and take its messages (default: read the stream "
        "from its start through an ephemeral consumer of no group, deleted on exit)",
    )
    subscribe.add_argument(
        "--durable",
        metavar="NAME",
        help="durable name with --group (default: subscriber.durable_name)",
    )
    subscribe.add_argument("--key", type=parse_key, help="only messages with this partition key")
    subscribe.add_argument(
        "--start",
        metavar="WHERE",
        help="where the reader (or a NEW --group) starts: first, new, or an RFC 3339 time "
        "(default: subscriber.start, first)",
    )
    subscribe.add_argument("--count", type=positive_int, metavar="N", help="stop after N messages")
    subscribe.add_argument(
        "--timeout",
        type=seconds,
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
        "--timeout", type=seconds, default=5.0, metavar="S", help="seconds to wait (5)"
    )

    dlq = command("dlq", "list or replay dead letters")
    dlq_sub = dlq.add_subparsers(dest="action", metavar="ACTION", required=True)
    dlq_ls = dlq_sub.add_parser("ls", help="list dead letters, oldest first", parents=[common])
    dlq_ls.add_argument(
        "--limit", type=positive_int, default=100, metavar="N", help="at most N (100)"
    )
    dlq_replay = dlq_sub.add_parser(
        "replay",
        help="hand dead letters back to the group that dead-lettered them",
        parents=[common],
    )
    dlq_replay.add_argument(
        "sequence", type=positive_int, nargs="+", help="dead-letter sequence (SEQ of dlq ls)"
    )
    dlq_replay.add_argument(
        "--force", action="store_true", help="replay dead letters that were replayed before"
    )

    groups = command("groups", "show consumer groups: backlog, redeliveries, partition owners")
    groups_sub = groups.add_subparsers(dest="action", metavar="ACTION", required=True)
    groups_ls = groups_sub.add_parser(
        "ls",
        help="one row per consumer group (pending, ack pending, redelivered, lag, last "
        "activity), then each ordered group's members and partitions",
        parents=[common],
    )
    groups_ls.add_argument(
        "--all", action="store_true", help="include ephemeral readers (ephemeral-*)"
    )
    groups_ls.add_argument("--json", action="store_true", help="one JSON document per refresh")
    groups_ls.add_argument(
        "--watch",
        type=seconds,
        nargs="?",
        const=2.0,
        metavar="S",
        help="redraw every S seconds (2) until Ctrl-C, like top",
    )
    groups_ls.add_argument(
        "--count", type=positive_int, metavar="N", help="with --watch: stop after N refreshes"
    )

    demo = command(
        "demo",
        "run the payment flow end to end and print a summary (on an embedded server "
        "unless --url, --backend, DELTRAN_BACKEND or the config file say otherwise)",
    )
    demo.add_argument(
        "--payments", type=positive_int, default=1000, metavar="N", help="payments (1000)"
    )
    demo.add_argument(
        "--workers", type=positive_int, default=3, metavar="N", help="netting workers (3)"
    )
    demo.add_argument(
        "--corridors",
        type=comma_list,
        default=DEFAULT_CORRIDORS,
        metavar="LIST",
        help=f"comma separated (default {','.join(DEFAULT_CORRIDORS)})",
    )
    demo.add_argument(
        "--banks",
        type=comma_list,
        default=DEFAULT_BANKS,
        metavar="LIST",
        help="comma separated BICs (default: 8 demo banks, DEMOGB2L ...)",
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
        type=seconds,
        default=0.05,
        metavar="S",
        help="seconds a netting cycle waits for more payments (0.05)",
    )
    demo.add_argument(
        "--ordering",
        choices=("partition", "none"),
        default="partition",
        help="the netting group: ordered by partition (default) or shared, unordered (none)",
    )
    demo.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve /metrics here while running (default: metrics.port, 9464; 0 = free port)",
    )
    demo.add_argument(
        "--timeout", type=seconds, default=60.0, metavar="S", help="give up after S seconds (60)"
    )
    demo.add_argument("--seed", type=int, metavar="N", help="seed of the generated payments")
    demo.add_argument(
        "--force",
        action="store_true",
        help="run even if the server's streams hold messages that are not the demo's "
        "(services would receive the demo's payments)",
    )

    docs = command("docs", "write the AsyncAPI 3.0 document of the bus, or an HTML page of it")
    docs_sub = docs.add_subparsers(dest="action", metavar="ACTION", required=True)
    docs_parent = _Parser(add_help=False, parents=[settings_only])
    docs_parent.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="add the handlers registered on this object (or list of Operation) as consumer groups",
    )
    docs_parent.add_argument(
        "--url", action="append", metavar="URL", help="NATS server URL to list as a server"
    )
    asyncapi = docs_sub.add_parser(
        "asyncapi", help="write the AsyncAPI 3.0 document", parents=[docs_parent]
    )
    asyncapi.add_argument("--out", metavar="FILE", help="write to FILE (default: stdout)")
    asyncapi.add_argument(
        "--format",
        choices=("json", "yaml"),
        help="json or yaml (default: from the --out suffix, else json)",
    )
    docs_html = docs_sub.add_parser(
        "html",
        help="write a static page (index.html, with asyncapi.json) that a browser shows",
        parents=[docs_parent],
    )
    docs_html.add_argument("--out", metavar="DIR", required=True, help="directory to write")
    run = command(
        "run",
        "run a service's handlers (a Bus) with /metrics, /healthz and /readyz until "
        "SIGINT or SIGTERM, then drain them",
    )
    run.add_argument(
        "target",
        metavar="MODULE:BUS",
        help="the Bus to run: package.module:bus, or path/to/file.py:bus",
    )
    run.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="port of /metrics, /healthz, /readyz (default: metrics.port, 9464; 0 = free port)",
    )
    doctor = command(
        "doctor",
        "check a running deployment against the production checklist: one line per check "
        "(pass, warn, fail); exit 1 on any fail",
    )
    doctor.add_argument(
        "--monitor",
        action="append",
        metavar="URL",
        help="monitoring endpoint of a server (http://HOST:8222; repeat, or comma separate): "
        "read for sync_interval, cluster size and the store's limit",
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON document")
    return parser
