"""The application layer: configuration, the dependency-injector container, the CLI.

``load_settings`` reads the typed settings; ``open_container`` (or ``build_container``)
wires ports and the example service from them. Names are imported on first use, so
``message_bus.app.embedded`` stays usable on its own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bus import Bus
    from .config import BusSettings, load_settings
    from .containers import (
        Container,
        apply_streams,
        build_container,
        open_container,
        resolve,
        shutdown_container,
        start_container,
    )
    from .middleware import Context, Middleware

__all__ = [
    "Bus",
    "BusSettings",
    "Container",
    "Context",
    "Middleware",
    "apply_streams",
    "build_container",
    "load_settings",
    "open_container",
    "resolve",
    "shutdown_container",
    "start_container",
]

_HOME = {
    "Bus": "bus",
    "Context": "middleware",
    "Middleware": "middleware",
    "resolve": "containers",
    "BusSettings": "config",
    "load_settings": "config",
    "Container": "containers",
    "apply_streams": "containers",
    "build_container": "containers",
    "open_container": "containers",
    "shutdown_container": "containers",
    "start_container": "containers",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
