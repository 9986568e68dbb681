"""How a ``deltran-bus`` command fails: :class:`CliError` and the exit codes."""

from __future__ import annotations

from .secrets import redact_shown

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "CliError", "error_line"]

EXIT_OK = 0
"""The command did what it was asked."""
EXIT_FAILED = 1
"""The operation failed: a timeout, no responder, a demo that lost or doubled a payment."""
EXIT_USAGE = 2
"""Bad input or an unreachable server."""
EXIT_INTERRUPTED = 130
"""Ctrl-C or SIGTERM: what the command started was stopped first."""


class CliError(Exception):
    """A failure reported as one line on stderr, with an exit code.

    Args:
        message: the line, without the ``deltran-bus COMMAND: error:`` prefix.
        code: the exit code (default: bad input).
    """

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(redact_shown(message))
        self.code = code


def error_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its class name if it has none), with the
    userinfo of any URL and every secret of the settings in it redacted: what the CLI
    prints about an error."""
    text = str(error).strip() or type(error).__name__
    return redact_shown(text.splitlines()[0])
