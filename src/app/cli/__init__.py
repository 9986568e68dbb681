"""The ``deltran-bus`` facade: parse the command line, run one command, return its exit code.

The commands run a server, manage streams, publish, subscribe, send requests, list and
replay dead letters, run the demo, and write the AsyncAPI document (``docs``). Every
command reads the settings (defaults < ``--config`` TOML file < ``DELTRAN_*`` variables <
flags). Exit codes: 0 success; 1 the operation failed (timeout, no responder, the demo
lost or doubled a payment); 2 bad input or an unreachable server, reported as one line on
stderr; 130 interrupted (Ctrl-C or SIGTERM: what the command started is stopped first).

Modules: :mod:`.parser` (with :mod:`.arguments`) parses; :mod:`.publish`,
:mod:`.subscribe`, :mod:`.streams`, :mod:`.dlq`, :mod:`.server`, :mod:`.demo` and
:mod:`.docs` are the commands, on :mod:`.session` and :mod:`.payloads`; :mod:`.output`
formats what they print; :mod:`.errors` holds :class:`CliError` and the exit codes.
:mod:`.groups` shows the consumer groups; :mod:`.doctor` checks a deployment;
:mod:`.progress` draws the demo's progress bar. :mod:`.backups` backs streams up and
restores them (``streams backup``/``restore``), with :mod:`.transfer_progress` drawing
their progress.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from message_bus.domain.errors import BusConnectionError, MessageBusError, ValidationError

from ..containers import Container
from ..embedded import EmbeddedServerError
from ..loop import choose_event_loop
from ..loop import run as run_loop
from .demo import demo_command
from .dlq import dlq_command
from .docs import docs_command
from .doctor import doctor_command
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError, error_line
from .groups import groups_command
from .logs import configure_logging
from .parser import PROG, build_parser
from .publish import publish_command, request_command
from .run import run_command
from .server import server_command
from .streams import streams_command
from .subscribe import subscribe_command
from .type_modules import import_type_modules

__all__ = ["CliError", "build_parser", "main", "run_cli"]

log = logging.getLogger(__name__)

_COMMANDS: dict[str, Callable[[argparse.Namespace, Container | None], Coroutine[Any, Any, int]]] = {
    "server": server_command,
    "streams": streams_command,
    "publish": publish_command,
    "subscribe": subscribe_command,
    "request": request_command,
    "dlq": dlq_command,
    "groups": groups_command,
    "demo": demo_command,
    "docs": docs_command,
    "run": run_command,
    "doctor": doctor_command,
}


async def run_cli(argv: Sequence[str], *, container: Container | None = None) -> int:
    """Run one ``deltran-bus`` command in the running event loop; return its exit code.

    Errors become one line on stderr and an exit code (see the module docstring).

    Args:
        argv: the arguments after the program name.
        container: use this container (configured, started here if needed, left
            running) instead of one built from the settings. Tests use it to run several
            commands against one in-memory broker.
    """
    try:
        import_type_modules()  # the application's own message types, before their names
    except CliError as exc:
        print(f"{PROG}: error: {error_line(exc)}", file=sys.stderr)
        return exc.code
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already wrote its one line (or the help)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    prog = f"{PROG} {args.command}"
    try:
        return await _COMMANDS[args.command](args, container)
    except CliError as exc:
        print(f"{prog}: error: {error_line(exc)}", file=sys.stderr)
        return exc.code
    except (ValidationError, ValueError) as exc:
        print(f"{prog}: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (BusConnectionError, EmbeddedServerError, ConnectionError) as exc:
        print(f"{prog}: error: cannot reach the server: {error_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (MessageBusError, TimeoutError) as exc:
        print(f"{prog}: failed: {error_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # one line, not a traceback; -v logs it
        log.info("unexpected error", exc_info=True)
        print(f"{prog}: internal error: {type(exc).__name__}: {error_line(exc)}", file=sys.stderr)
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
    configure_logging("-v" in arguments or "--verbose" in arguments, arguments)
    try:
        event_loop = choose_event_loop()  # DELTRAN_EVENT_LOOP: uvloop when installed
    except ValidationError as exc:
        print(f"{PROG}: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run_loop(_run_until_terminated(arguments), event_loop=event_loop)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
