"""The ``groups ls`` command: each consumer group's backlog, and who owns which partition."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import Any

import msgspec

from message_bus.adapters.nats.group_status import (
    ConsumerStatus,
    GroupsStatus,
    OrderedGroupStatus,
    read_groups,
)
from message_bus.domain.errors import MessageBusError

from ..containers import Container, resolve
from .errors import EXIT_OK, CliError, error_line
from .output import out, table
from .session import backend_of, load_command_settings, running_bus

__all__ = [
    "CLEAR_HOME",
    "ago",
    "groups_command",
    "groups_json",
    "groups_text",
    "visible",
]

CLEAR_HOME = "\x1b[H\x1b[2J"
"""ANSI: cursor home, clear the screen (what ``top`` and ``watch`` do before each frame)."""


async def groups_command(args: argparse.Namespace, container: Container | None) -> int:
    """``groups ls [--all] [--json] [--watch [S]] [--count N]``.

    Prints one row per consumer of every stream (pending, ack pending, redelivered,
    lag, last activity), then each ordered group's members and partitions. With
    ``--watch`` it redraws the screen every S seconds until Ctrl-C (or ``--count``
    frames); with ``--json`` too, it prints one JSON document per line instead. While
    the server does not answer, a watch shows that in its frame and keeps trying.

    Raises:
        CliError: the backend is the in-memory one (exit 2): its groups live in the
            process that runs them, not in a server this command can read.
    """
    settings = load_command_settings(args)
    async with running_bus(settings, container) as bus:
        if backend_of(bus) == "memory":
            raise CliError(
                "groups ls needs a NATS server (--url URL, or --backend nats): the in-memory "
                "backend's groups live inside the process that runs them"
            )
        client = await resolve(bus.nats_client())
        interval: float | None = args.watch
        frames = 0
        while True:
            if interval is None:
                out(_render(await read_groups(client), args))
                return EXIT_OK
            try:
                status = await read_groups(client)
            except MessageBusError as exc:  # an outage: say so, and keep watching
                status, problem = GroupsStatus(dt.datetime.now(dt.UTC)), error_line(exc)
                frame = _unavailable(status.at, problem, interval, args.json)
            else:
                frame = _render(status, args)
            if args.json:  # JSON Lines: one document per refresh, no screen control
                out(frame)
            else:
                sys.stdout.write(f"{CLEAR_HOME}every {interval:g}s, {_clock(status.at)}\n{frame}\n")
                sys.stdout.flush()
            frames += 1
            if args.count is not None and frames >= args.count:
                return EXIT_OK
            await asyncio.sleep(interval)  # the refresh period, not a wait for a condition


def _unavailable(at: dt.datetime, problem: str, interval: float, as_json: bool) -> str:
    if as_json:
        return msgspec.json.encode({"at": at.isoformat(), "error": problem}).decode()
    return f"server unavailable: {problem} (trying again every {interval:g}s)"


def _render(status: GroupsStatus, args: argparse.Namespace) -> str:
    shown = visible(status, show_ephemeral=args.all)
    if args.json:
        return groups_json(shown)
    return groups_text(shown)


def visible(status: GroupsStatus, *, show_ephemeral: bool) -> GroupsStatus:
    """``status`` without the ephemeral readers (``ephemeral-*``) unless ``show_ephemeral``."""
    if show_ephemeral:
        return status
    consumers = tuple(c for c in status.consumers if not c.ephemeral)
    return GroupsStatus(status.at, consumers, status.ordered, status.stream_last)


def ago(then: dt.datetime | None, now: dt.datetime) -> str:
    """How long before ``now`` ``then`` was, in its largest unit: ``4s``, ``3m``, ``2h``,
    ``5d``; ``never`` for None; ``now`` for less than a second (or a clock ahead)."""
    if then is None:
        return "never"
    seconds = (now - then).total_seconds()
    if seconds < 1:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def groups_text(status: GroupsStatus) -> str:
    """The consumers as a table, then each ordered group: members with their partition
    counts, and every partition's owner, floor, lag and failures."""
    now = status.at
    rows = [_consumer_row(c, now) for c in status.consumers]
    headers = ("STREAM", "CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED", "LAG")
    parts = [
        table(rows, (*headers, "WAITING", "LAST ACTIVE"))
        if rows
        else "no consumer groups (ordered groups, if any, below)"
    ]
    for group in status.ordered:
        parts.append("")
        parts.append(_ordered_text(group))
    return "\n".join(parts)


def _consumer_row(c: ConsumerStatus, now: dt.datetime) -> tuple[object, ...]:
    return (
        c.stream,
        c.name,
        c.pending,
        c.ack_pending,
        c.redelivered,
        c.lag,
        c.waiting,
        ago(c.last_active, now),
    )


def _ordered_text(group: OrderedGroupStatus) -> str:
    owned = group.owned()
    unowned = sum(1 for r in group.records if not r.owner)
    lags = [r.lag for r in group.records]
    total = "?" if any(lag is None for lag in lags) else str(sum(lag or 0 for lag in lags))
    lines = [
        f"ordered group {group.stream} {group.name}: {group.partitions} partitions, "
        f"{len(group.members)} member(s), {unowned} unowned, lag {total}"
    ]
    member_rows = [
        (member, count, "" if member in group.members else "no heartbeat key (gone)")
        for member, count in sorted(owned.items())
    ]
    if member_rows:
        lines.append(table(member_rows, ("MEMBER", "PARTITIONS", "NOTE")))
    else:
        lines.append("no members: each partition resumes after its floor when one joins")
    partition_rows = [
        (
            r.partition,
            r.owner or "-",
            r.floor,
            "?" if r.lag is None else r.lag,
            r.failures,
        )
        for r in group.records
    ]
    lines.append(table(partition_rows, ("PARTITION", "OWNER", "FLOOR", "LAG", "FAILURES")))
    return "\n".join(lines)


def groups_json(status: GroupsStatus) -> str:
    """``status`` as one JSON document (times RFC 3339 UTC, ages in seconds)."""
    return msgspec.json.encode(_json_record(status)).decode()


def _json_record(status: GroupsStatus) -> dict[str, Any]:
    now = status.at
    return {
        "at": now.isoformat(),
        "consumers": [
            {
                "stream": c.stream,
                "consumer": c.name,
                "pending": c.pending,
                "ack_pending": c.ack_pending,
                "redelivered": c.redelivered,
                "lag": c.lag,
                "waiting": c.waiting,
                "last_active": None if c.last_active is None else c.last_active.isoformat(),
                "idle_seconds": (
                    None
                    if c.last_active is None
                    else max(0.0, (now - c.last_active).total_seconds())
                ),
                "ephemeral": c.ephemeral,
            }
            for c in status.consumers
        ],
        "ordered": [
            {
                "stream": g.stream,
                "consumer": g.name,
                "partitions": g.partitions,
                "members": _members(g),
                "records": [
                    {
                        "partition": r.partition,
                        "owner": r.owner or None,
                        "floor": r.floor,
                        "lag": r.lag,
                        "failures": r.failures,
                    }
                    for r in g.records
                ],
            }
            for g in status.ordered
        ],
    }


def _members(group: OrderedGroupStatus) -> list[dict[str, Any]]:
    return [
        {"member": m, "partitions": n, "registered": m in group.members}
        for m, n in sorted(group.owned().items())
    ]


def _clock(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")
