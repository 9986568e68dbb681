"""How the CLI logs: one format on stderr, every line with its URL userinfo and secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from .secrets import redact_shown

__all__ = ["LOG_FORMAT", "RedactingFormatter", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback alike) never shows
    the userinfo of a URL nor a secret of the settings, whichever library logged it
    (nats-py's own lines too).

    Args:
        fmt: the log format.
        secrets: values never shown, besides those the CLI's settings registered
            (see :func:`~message_bus.app.cli.secrets.hide`).
    """

    def __init__(self, fmt: str | None = None, *, secrets: Iterable[str | None] = ()) -> None:
        super().__init__(fmt)
        self.secrets = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        return redact_shown(super().format(record), self.secrets)


def configure_logging(verbose: bool) -> None:
    """Logs to stderr, INFO and up with ``verbose``, else errors only, redacted.

    Without ``-v`` only errors are logged: expected events (a dead letter, a reconnect)
    would break the one-line-per-error promise of the CLI.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, handlers=[handler])
