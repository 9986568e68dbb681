"""The ``run`` command: import a service's Bus and run it until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from ..bus import Bus
from ..containers import Container
from .arguments import comma_list
from .errors import EXIT_OK, CliError
from .output import out

__all__ = ["load_bus", "run_command"]


async def run_command(args: argparse.Namespace, container: Container | None) -> int:
    """Run the Bus named by ``args.target``; exit 0 once drained after a signal.

    The command's settings options reach the service through the ``DELTRAN_*``
    variables its ``load_settings()`` reads (``--config``, ``--backend``, ``--url``,
    ``--metrics-port``), set before its module is imported. ``container`` is not used:
    the service builds its own.
    """
    if args.config:
        os.environ["DELTRAN_CONFIG"] = args.config
    if args.url:
        os.environ["DELTRAN_NATS_URLS"] = ",".join(u for i in args.url for u in comma_list(i))
        os.environ["DELTRAN_BACKEND"] = "nats"
    if args.backend:
        os.environ["DELTRAN_BACKEND"] = args.backend
    if args.metrics_port is not None:
        os.environ["DELTRAN_METRICS_PORT"] = str(args.metrics_port)
    bus = load_bus(args.target)

    def ready(url: str) -> None:
        names = ", ".join(spec.name for spec in bus.handlers) or "none"
        out(f"running handlers: {names}")
        out(f"serving /metrics /healthz /readyz on {url}")

    await bus.serve(on_ready=ready)
    out("stopped: handlers drained")
    return EXIT_OK


def load_bus(target: str) -> Bus:
    """The :class:`Bus` that ``target`` names: ``package.module:bus`` (the current
    directory is importable) or ``path/to/file.py:bus``.

    Raises:
        CliError: the module cannot be imported, or the name is missing or no Bus.
    """
    module_name, sep, attribute = target.rpartition(":")
    if not sep or not module_name or not attribute.isidentifier():
        raise CliError(f"target must be MODULE:BUS (e.g. service:bus), got {target!r}")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise CliError(f"no such file: {module_name}")
            sys.path.insert(0, str(path.resolve().parent))
            module = importlib.import_module(path.stem)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name}: {exc}") from exc
    bus = getattr(module, attribute, None)
    if not isinstance(bus, Bus):
        found = "nothing" if bus is None else type(bus).__name__
        raise CliError(f"{target} is not a Bus (found {found})")
    return bus
