"""What a command works with: its settings and a running container."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..config import BusSettings, load_settings
from ..containers import Container, build_container, shutdown_container, start_container
from .arguments import comma_list
from .secrets import hide

__all__ = ["backend_of", "load_command_settings", "running_bus"]


def load_command_settings(
    args: argparse.Namespace, *, default_backend: str | None = None
) -> BusSettings:
    """The settings: defaults < ``--config`` file < ``DELTRAN_*`` < ``--url``/``--backend``.

    Args:
        args: the parsed command line.
        default_backend: the backend when nothing else names one (the demo's is
            ``embedded``); ``None`` keeps the settings' own default.
    """
    defaults = {} if default_backend is None else {"backend": default_backend}
    overrides: dict[str, Any] = {}
    urls = getattr(args, "url", None)  # `server` has no connection options
    backend = getattr(args, "backend", None)
    if urls:
        overrides["--url=nats.urls"] = [u for item in urls for u in comma_list(item)]
        overrides["--url=backend"] = "nats"
    if backend is not None:
        overrides["--backend=backend"] = backend
    settings = load_settings(args.config, overrides=overrides, defaults=defaults)
    hide(settings.nats.secrets())  # from now on, never shown in a line or a log
    return settings


@contextlib.asynccontextmanager
async def running_bus(
    settings: BusSettings, container: Container | None
) -> AsyncIterator[Container]:
    """The given container (started if needed, left running), or a new one, shut down here.

    Args:
        settings: what a new container is built from.
        container: a configured container to use instead (tests pass one).
    """
    if container is not None:
        await start_container(container)
        yield container
        return
    owned = build_container(settings)
    try:
        await start_container(owned)
        yield owned
    finally:
        await shutdown_container(owned)


def backend_of(container: Container) -> str:
    """The container's backend: ``memory``, ``nats`` or ``embedded``."""
    backend: str = container.backend()
    return backend
