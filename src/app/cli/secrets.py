"""The secrets the CLI must never show: its settings' passwords, tokens and seeds.

Every line the CLI prints or logs goes through :func:`redact_shown`, which replaces the
userinfo of any URL and every secret value of the loaded settings (see
:meth:`NatsConfig.secrets <message_bus.adapters.nats.NatsConfig.secrets>`) with ``***``.
A command's settings register theirs with :func:`hide` as soon as they are loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from message_bus.domain.redaction import redact_text

__all__ = ["hidden", "hide", "redact_shown"]

_lock = threading.Lock()
_hidden: frozenset[str] = frozenset()


def hide(secrets: Iterable[str | None]) -> None:
    """Never show any of ``secrets`` (``None`` and empty values are skipped)."""
    global _hidden  # one set per process: every line the CLI shows
    with _lock:
        _hidden = _hidden | {s for s in secrets if s}


def hidden() -> frozenset[str]:
    """The secret values registered with :func:`hide` so far."""
    return _hidden


def redact_shown(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every URL's userinfo, every hidden secret and ``secrets`` redacted."""
    return redact_text(text, (*_hidden, *secrets))
