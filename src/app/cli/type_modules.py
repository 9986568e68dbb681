"""Imports the modules that register an application's own message types (``DELTRAN_TYPES``)."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping

from .errors import CliError

__all__ = ["TYPES_ENV", "import_type_modules"]

TYPES_ENV = "DELTRAN_TYPES"
"""Comma-separated module names imported before the command line is read, so the
message types they register (``MessageType.register``) can be named in it."""

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def import_type_modules(environ: Mapping[str, str] | None = None) -> list[str]:
    """Import every module named in ``DELTRAN_TYPES``; return their names.

    Raises:
        CliError: a name is not a module path, or the module cannot be imported.
    """
    env = os.environ if environ is None else environ
    names = [n.strip() for n in env.get(TYPES_ENV, "").split(",") if n.strip()]
    for name in names:
        if _MODULE.fullmatch(name) is None:
            raise CliError(f"{TYPES_ENV}: {name!r} is not a module name")
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise CliError(f"{TYPES_ENV}: cannot import {name!r}: {exc}") from None
    return names
