"""The ``server`` command: an embedded nats-server with the streams applied, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from typing import TYPE_CHECKING

from ..config import BusSettings
from ..containers import (
    Container,
    apply_streams,
    build_container,
    shutdown_container,
    start_container,
    start_in_thread,
)
from ..embedded import EmbeddedNatsServer
from ..runner import signals_set
from .errors import EXIT_OK
from .output import out
from .session import load_command_settings

if TYPE_CHECKING:
    from message_bus.adapters.nats import StreamReport

__all__ = ["server_command"]


async def server_command(args: argparse.Namespace, container: Container | None) -> int:
    """Run an embedded nats-server until SIGINT or SIGTERM, then stop it.

    A signal that arrives while it starts stops it once started. ``container`` is not
    used: the server itself is what this command runs.
    """
    settings = load_command_settings(args)
    data_dir = args.data_dir or settings.embedded.data_dir
    server = EmbeddedNatsServer(
        port=args.port,
        store_dir=data_dir,
        monitor_port=args.monitor_port,
        binary=settings.embedded.binary,
    )
    stop = asyncio.Event()
    # From before the server starts: a signal during the start stops it once started.
    with signals_set(stop):
        await start_in_thread(server.start, server.stop)
        try:
            store = f"{server.store_dir}" + (
                "" if data_dir else " (temporary; --data-dir keeps it)"
            )
            out(f"nats-server ready at {server.url}")
            out(f"JetStream store: {store}")
            if server.monitor_url is not None:
                out(f"monitoring: {server.monitor_url}")
            if not args.no_streams and not stop.is_set():
                reports = await _apply_streams(settings, server.url)
                out(f"streams applied: {len(reports)}")
            out("Ctrl-C stops the server")
            await stop.wait()
        finally:
            await asyncio.to_thread(server.stop)
    out("nats-server stopped")
    return EXIT_OK


async def _apply_streams(settings: BusSettings, url: str) -> list[StreamReport]:
    """Apply the catalog on the server at ``url`` with a short-lived connection."""
    nats = dataclasses.replace(settings.nats, urls=(url,))
    container = build_container(dataclasses.replace(settings, backend="nats", nats=nats))
    try:
        await start_container(container)
        return await apply_streams(container)
    finally:
        await shutdown_container(container)
