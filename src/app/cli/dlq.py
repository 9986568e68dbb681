"""The ``dlq`` commands: list dead letters, and replay them to their original subject."""

from __future__ import annotations

import argparse

from ..containers import Container
from .errors import EXIT_FAILED, EXIT_OK, CliError
from .output import dead_letter_table, out, receipt_line
from .session import load_command_settings, running_bus

__all__ = ["dlq_command"]


async def dlq_command(args: argparse.Namespace, container: Container | None) -> int:
    """``dlq ls``: the dead letters, oldest first. ``dlq replay SEQ...``: republish them.

    Raises:
        CliError: a sequence names no dead letter (exit 2), or a dead letter was already
            replayed within the stream's duplicate window (exit 1; the others are
            replayed).
    """
    settings = load_command_settings(args)
    async with running_bus(settings, container) as bus:
        dead_letters = await bus.dead_letters()
        if args.action == "ls":
            letters = await dead_letters.list(args.limit)
            out(dead_letter_table(letters))
            out(f"{len(letters)} dead letter(s)")
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
            out(f"replayed dead letter {sequence}: {receipt_line(receipt)}")
    if not_replayed:
        window = settings.streams.duplicate_window
        raise CliError(
            f"dead letter(s) {', '.join(map(str, not_replayed))} not replayed again: already "
            f"replayed within the duplicate window ({window:g} s)",
            EXIT_FAILED,
        )
    return EXIT_OK
