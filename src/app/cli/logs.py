"""How the CLI logs: text or JSON lines on stderr, URL userinfo and secrets redacted."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

from message_bus.domain.errors import ValidationError

from ..config import load_settings
from ..logs import LOG_FORMATS, TEXT_FORMAT, LogFormat, TextFormatter
from ..logs import configure_logging as configure_lines
from .secrets import redact_shown

__all__ = ["LOG_FORMAT", "RedactingFormatter", "configure_logging", "log_settings_of"]

LOG_FORMAT = TEXT_FORMAT


class RedactingFormatter(TextFormatter):
    """A formatter whose output (message, arguments and traceback alike, on one line)
    never shows the userinfo of a URL nor a secret of the settings, whichever library
    logged it (nats-py's own lines too).

    Args:
        fmt: the log format.
        secrets: values never shown, besides those the CLI's settings registered
            (see :func:`~message_bus.app.cli.secrets.hide`).
    """

    def __init__(self, fmt: str | None = None, *, secrets: Iterable[str | None] = ()) -> None:
        self.secrets = tuple(s for s in secrets if s)
        super().__init__(fmt, redact=self._shown)

    def _shown(self, text: str) -> str:
        return redact_shown(text, self.secrets)


def log_settings_of(
    arguments: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[LogFormat, float]:
    """The log format and repeat window for a command line: ``--log-format``, else
    ``DELTRAN_LOG_FORMAT``, else the settings file's ``logging`` table, else text.

    A bad value falls back to the default here: the command itself reports it.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--log-format", choices=LOG_FORMATS)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(list(arguments))
    env = os.environ if environ is None else environ
    names = ("DELTRAN_CONFIG", "DELTRAN_LOG_FORMAT", "DELTRAN_LOG_REPEAT_WINDOW")
    overrides = {"--log-format=logging.format": known.log_format} if known.log_format else {}
    try:
        settings = load_settings(
            known.config, environ={n: env[n] for n in names if n in env}, overrides=overrides
        )
    except (ValidationError, ValueError):
        return known.log_format or "text", 10.0
    return settings.logging.format, settings.logging.repeat_window


def configure_logging(verbose: bool, arguments: Sequence[str] = ()) -> None:
    """Logs to stderr, INFO and up with ``verbose``, else errors only, redacted, one
    line per record, in the format the command line and settings ask for.

    Without ``-v`` only errors are logged: expected events (a dead letter, a reconnect)
    would break the one-line-per-error promise of the CLI.
    """
    log_format, window = log_settings_of(arguments)
    configure_lines(
        log_format,
        level=logging.INFO if verbose else logging.ERROR,
        repeat_window=window,
        redact=redact_shown,
    )
