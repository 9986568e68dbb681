"""The ``docs`` commands: write the AsyncAPI 3.0 document, or a static HTML page of it."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..asyncapi import Operation, asyncapi_document, dump_json, dump_yaml
from ..asyncapi_html import render_html
from ..containers import Container, build_container
from .errors import EXIT_OK, CliError
from .output import out
from .session import load_command_settings

__all__ = ["FORMATS", "docs_command", "load_operations"]

FORMATS = ("json", "yaml")


async def docs_command(args: argparse.Namespace, container: Container | None) -> int:
    """``docs asyncapi`` writes the document (stdout or ``--out``); ``docs html`` writes
    ``index.html`` and ``asyncapi.json`` into ``--out DIR``. Nothing connects to a server.
    """
    settings = load_command_settings(args)
    bus = container if container is not None else build_container(settings)
    operations = load_operations(args.app) if args.app else []
    document = asyncapi_document(bus.catalog(), operations, settings=settings)
    _write_docs(args, document)  # nothing else runs in this command: no need for a thread
    return EXIT_OK


def _write_docs(args: argparse.Namespace, document: dict[str, Any]) -> None:
    if args.action == "asyncapi":
        fmt = args.format or _format_of(args.out)
        text = dump_yaml(document) if fmt == "yaml" else dump_json(document)
        if args.out is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            _write(Path(args.out), text)
            out(f"wrote {args.out} (AsyncAPI {document['asyncapi']}, {fmt})")
        return
    directory = Path(args.out)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create directory {args.out!r}: {exc.strerror}") from None
    _write(directory / "index.html", render_html(document))
    _write(directory / "asyncapi.json", dump_json(document))
    out(f"wrote {directory / 'index.html'} and {directory / 'asyncapi.json'}")


def load_operations(target: str) -> list[Operation]:
    """The handler registrations of ``module:attribute``.

    The attribute is an object with an ``asyncapi_operations()`` method (an application
    object), or an iterable of :class:`~message_bus.app.asyncapi.Operation`. The current
    directory is importable, as for ``python -m``.

    Raises:
        CliError: the target cannot be imported or holds no operations.
    """
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise CliError(f"--app {target!r}: expected MODULE:ATTRIBUTE (e.g. service:bus)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"--app {target!r}: cannot import {module_name!r}: {exc}") from None
    found: Any = module
    for name in attribute.split("."):
        if not hasattr(found, name):
            raise CliError(f"--app {target!r}: {module_name} has no attribute {attribute!r}")
        found = getattr(found, name)
    method = getattr(found, "asyncapi_operations", None)
    items = method() if callable(method) else found
    if not isinstance(items, Iterable) or isinstance(items, str | bytes):
        raise CliError(
            f"--app {target!r}: expected an object with asyncapi_operations() or a "
            f"sequence of Operation, got {type(found).__name__}"
        )
    operations = list(items)
    wrong = [op for op in operations if not isinstance(op, Operation)]
    if wrong:
        raise CliError(f"--app {target!r}: not an Operation: {wrong[0]!r}")
    return operations


def _format_of(path: str | None) -> str:
    if path is not None and Path(path).suffix.lower() in (".yaml", ".yml"):
        return "yaml"
    return "json"


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {str(path)!r}: {exc.strerror}") from None
