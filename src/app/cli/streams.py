"""The ``streams`` commands: apply the stream catalog to the server, or list its streams."""

from __future__ import annotations

import argparse

from ..containers import Container, apply_streams, resolve
from .backups import backup_command, restore_command
from .errors import EXIT_FAILED, EXIT_OK, CliError
from .output import catalog_table, out, stream_report_table, stream_table
from .session import backend_of, load_command_settings, running_bus

__all__ = ["streams_command"]


async def streams_command(args: argparse.Namespace, container: Container | None) -> int:
    """``streams apply`` creates or updates every stream; ``streams ls`` lists them;
    ``streams backup`` and ``streams restore`` are :mod:`.backups`.

    ``apply`` prints what it did to each stream and the drift it found; it fails (exit
    1) if a stream is left with a duplicate window shorter than the publishers' retry
    budget. ``ls`` prints each stream's state. On the memory backend both print the catalog.
    """
    if args.action == "backup":
        return await backup_command(args, container)
    if args.action == "restore":
        return await restore_command(args, container)
    settings = load_command_settings(args)
    async with running_bus(settings, container) as bus:
        if backend_of(bus) == "memory":
            catalog = catalog_table(bus.catalog().all_streams())
            out("in-memory backend: the catalog's streams exist in the broker itself")
            out(catalog)
            return EXIT_OK
        if args.action == "apply":
            reports = await apply_streams(bus)
            out(stream_report_table(reports))
            unsafe = [r.name for r in reports if r.problems]
            if unsafe:
                raise CliError(
                    f"{', '.join(unsafe)}: duplicate window shorter than the publishers' "
                    "retry budget (see PROBLEMS); publishers refuse these streams",
                    EXIT_FAILED,
                )
            return EXIT_OK
        manager = await resolve(bus.stream_manager())
        summaries = await manager.list()
    out(stream_table(summaries))
    return EXIT_OK
