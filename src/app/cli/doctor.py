"""The ``doctor`` command: check a running deployment against the production checklist."""

from __future__ import annotations

import argparse

import msgspec

from message_bus.adapters.nats.deployment import check_monitor_url

from ..containers import Container, resolve
from ..doctor import Check, desired_streams, diagnose
from .errors import EXIT_FAILED, EXIT_OK, CliError
from .output import out
from .session import backend_of, load_command_settings, running_bus

__all__ = ["doctor_command", "doctor_json", "doctor_text"]


async def doctor_command(args: argparse.Namespace, container: Container | None) -> int:
    """``doctor [--monitor URL]... [--json]``: one line per check; exit 1 on any fail.

    Nothing is changed on the server: drift is reported, not corrected (``streams
    apply`` corrects it).

    Raises:
        CliError: the backend is the in-memory one (exit 2): it has no deployment.
    """
    settings = load_command_settings(args)
    monitors = [
        check_monitor_url(url) for item in args.monitor or [] for url in item.split(",") if url
    ]
    async with running_bus(settings, container) as bus:
        if backend_of(bus) == "memory":
            raise CliError(
                "doctor checks a NATS deployment (--url URL, or --backend nats); the "
                "in-memory backend has none"
            )
        client = await resolve(bus.nats_client())
        desired = desired_streams(
            bus.catalog(),
            bus.config.streams.replicas(),
            bus.config.streams.duplicate_window(),
            bus.publisher_config(),
        )
        checks = await diagnose(client, desired, monitor_urls=monitors)
    out(doctor_json(checks) if args.json else doctor_text(checks))
    return EXIT_FAILED if any(c.status == "fail" for c in checks) else EXIT_OK


def doctor_text(checks: list[Check]) -> str:
    """One line per check: ``PASS name: found``, with ``-> fix`` after a warn or fail,
    then a summary line."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for check in checks:
        line = f"{check.status.upper():<4}  {check.name:<{width}}  {check.found}"
        if check.fix:
            line += f" -> {check.fix}"
        lines.append(line)
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("pass", "warn", "fail")}
    lines.append(f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed")
    return "\n".join(lines)


def doctor_json(checks: list[Check]) -> str:
    """The checks as one JSON document: ``{"ok": bool, "checks": [{name, status, found,
    fix}]}`` (``ok``: no check failed)."""
    return msgspec.json.encode(
        {
            "ok": not any(c.status == "fail" for c in checks),
            "checks": [
                {"name": c.name, "status": c.status, "found": c.found, "fix": c.fix} for c in checks
            ],
        }
    ).decode()
