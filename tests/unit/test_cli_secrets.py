"""The CLI never shows its settings' secrets: not in a log line, not in an error line."""

from __future__ import annotations

import argparse
import logging
import uuid

import pytest

from message_bus.app.cli.errors import CliError, error_line
from message_bus.app.cli.logs import RedactingFormatter
from message_bus.app.cli.secrets import hidden, redact_shown
from message_bus.app.cli.session import load_command_settings


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("nats.aio.client", logging.ERROR, __file__, 1, message, args, None)


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def test_a_loaded_commands_password_and_token_never_show_in_logs_or_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password, token = _unique("Pw,'\"x"), _unique("Tk")
    monkeypatch.setenv("DELTRAN_NATS_USER", "alice")
    monkeypatch.setenv("DELTRAN_NATS_PASSWORD", password)
    monkeypatch.setenv("DELTRAN_NATS_URLS", f"nats://{token}@127.0.0.1:4222")
    for name in ("DELTRAN_BACKEND", "DELTRAN_CONFIG", "DELTRAN_NATS_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    load_command_settings(argparse.Namespace(config=None, url=None, backend=None))

    assert {password, token} <= hidden()
    formatter = RedactingFormatter("%(name)s: %(message)s")
    shown = formatter.format(_record("authorization violation for %s / %s", password, token))
    assert password not in shown
    assert token not in shown
    assert shown == "nats.aio.client: authorization violation for *** / ***"
    assert password not in error_line(RuntimeError(f"refused {password}"))
    assert password not in str(CliError(f"bad password {password}"))


def test_the_formatter_redacts_the_secrets_it_is_given() -> None:
    secret = _unique("Given")
    formatter = RedactingFormatter("%(message)s", secrets=[secret, None, ""])

    assert formatter.format(_record("seed %s", secret)) == "seed ***"
    assert secret not in hidden()
    assert redact_shown(f"seed {secret}", [secret]) == "seed ***"
