"""The ``dlq`` commands: list dead letters, and replay them to the group that dead-lettered them."""

from __future__ import annotations

import argparse

from message_bus.domain.errors import AlreadyReplayedError

from ..containers import Container
from .errors import EXIT_FAILED, EXIT_OK, CliError
from .output import dead_letter_table, out, receipt_line
from .session import load_command_settings, running_bus

__all__ = ["dlq_command"]


async def dlq_command(args: argparse.Namespace, container: Container | None) -> int:
    """``dlq ls``: the dead letters, oldest first, with their replays and the raw view of
    those that cannot be decoded. ``dlq replay SEQ... [--force]``: hand them back to
    the group that dead-lettered them.

    Raises:
        CliError: a sequence names no dead letter (exit 2), or a dead letter was already
            replayed and ``--force`` is not given (exit 1; the others are replayed).
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
        force = bool(getattr(args, "force", False))
        for sequence in args.sequence:
            try:
                receipt = await dead_letters.replay(sequence, force=force)
            except KeyError:
                raise CliError(f"no dead letter with sequence {sequence}") from None
            except AlreadyReplayedError:
                not_replayed.append(sequence)
                continue
            out(f"replayed dead letter {sequence}: {receipt_line(receipt)}")
    if not_replayed:
        raise CliError(
            f"dead letter(s) {', '.join(map(str, not_replayed))} not replayed again: already "
            "replayed (dlq ls shows when); add --force to replay them once more",
            EXIT_FAILED,
        )
    return EXIT_OK
