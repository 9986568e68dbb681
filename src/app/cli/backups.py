"""The ``streams backup`` and ``streams restore`` commands: stream snapshots to and from files.

A backup writes each stream's snapshot with a SHA-256 manifest; a restore checks them
and recreates the streams, consumer groups' positions included.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from message_bus.adapters.nats.snapshots import (
    SnapshotManifest,
    StreamSnapshots,
    check_stream_name,
)
from message_bus.domain.errors import BackupError, ValidationError

from ..containers import Container, resolve
from .errors import EXIT_FAILED, EXIT_OK, CliError
from .output import out
from .session import backend_of, load_command_settings, running_bus
from .transfer_progress import TransferProgress, size_text

__all__ = ["backup_command", "restore_command"]


def _streams(args: argparse.Namespace) -> list[str]:
    """The ``--stream`` names, checked before any I/O, in order, without repeats."""
    names = list(dict.fromkeys(args.stream or []))
    for name in names:
        check_stream_name(name)
    return names


def _directory(args: argparse.Namespace, *, must_exist: bool) -> Path:
    directory = Path(args.directory)
    if must_exist and not directory.is_dir():
        raise ValidationError("directory", args.directory, "no such directory")
    if not must_exist and directory.exists() and not directory.is_dir():
        raise ValidationError("directory", args.directory, "exists and is not a directory")
    return directory


async def _snapshots(container: Container) -> StreamSnapshots:
    if backend_of(container) == "memory":
        raise CliError("backups need a NATS server: the in-memory backend keeps no store")
    client = await resolve(container.nats_client())
    return StreamSnapshots(client)


async def backup_command(args: argparse.Namespace, container: Container | None) -> int:
    """Backs up the ``--stream`` streams (default: every stream on the server) to DIR:
    ``NAME.snapshot`` and its manifest ``NAME.json`` (configuration, state, SHA-256)."""
    names = _streams(args)
    directory = _directory(args, must_exist=False)
    settings = load_command_settings(args)
    async with running_bus(settings, container) as bus:
        snapshots = await _snapshots(bus)
        if not names:
            manager = await resolve(bus.stream_manager())
            names = [s.name for s in await manager.list()]
        progress = TransferProgress("backup", sys.stdout)
        for name in names:
            manifest = await snapshots.backup(name, directory, progress)
            out(
                f"{name}: backed up {manifest.messages} messages, {manifest.consumers} "
                f"consumer(s), {size_text(manifest.size)}, sha256 {manifest.sha256[:16]}"
            )
    out(f"{len(names)} stream(s) backed up to {directory}")
    return EXIT_OK


async def restore_command(args: argparse.Namespace, container: Container | None) -> int:
    """Restores the ``--stream`` streams (default: every backup in DIR). Every snapshot is
    checked against its manifest, and every stream for existence (refused without
    ``--force``, deleted first with it), before the first restore begins."""
    names = _streams(args)
    directory = _directory(args, must_exist=True)
    if not names:
        names = sorted(p.stem for p in directory.glob("*.json"))
        if not names:
            raise CliError(f"no backup manifests (NAME.json) in {directory}", EXIT_FAILED)
    manifests = [SnapshotManifest.load(directory, name) for name in names]
    for manifest in manifests:
        manifest.verify(directory)
    settings = load_command_settings(args)
    async with running_bus(settings, container) as bus:
        snapshots = await _snapshots(bus)
        existing = [name for name in names if await snapshots.exists(name)]
        if existing and not args.force:
            raise BackupError(
                ", ".join(existing), "", "the stream exists; restore with --force to replace it"
            )
        progress = TransferProgress("restore", sys.stdout)
        for name in names:
            state = await snapshots.restore(name, directory, force=args.force, progress=progress)
            out(
                f"{name}: restored {state.get('messages', 0)} messages, "
                f"{state.get('consumer_count', 0)} consumer(s)"
            )
    out(f"{len(names)} stream(s) restored from {directory}")
    return EXIT_OK
