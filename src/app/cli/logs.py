"""How the CLI logs: one format on stderr, every line with its URL userinfo redacted."""

from __future__ import annotations

import logging
import sys

from message_bus.domain.redaction import redact_text

__all__ = ["LOG_FORMAT", "RedactingFormatter", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback alike) never shows
    the userinfo of a URL, whichever library logged it (nats-py's own lines too)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure_logging(verbose: bool) -> None:
    """Logs to stderr, INFO and up with ``verbose``, else errors only, redacted.

    Without ``-v`` only errors are logged: expected events (a dead letter, a reconnect)
    would break the one-line-per-error promise of the CLI.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, handlers=[handler])
