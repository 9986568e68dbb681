"""Redaction of secrets (URL userinfo, passwords, tokens, seeds) from anything shown.

Every error message, log line and ``repr`` that renders a server URL or a configuration
goes through these functions, so a credential never reaches a terminal or a log file:

* a URL's userinfo: ``nats://alice:S3cret@host`` becomes ``nats://alice:***@host``, and
  ``nats://t0k3n@host`` (a user without password, which NATS clients send as a token)
  becomes ``nats://***@host``;
* known secret values (a password, a token, an NKEY seed) anywhere in a text become
  ``***``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["REDACTED", "redact", "redact_text", "redact_url", "redact_urls"]

REDACTED = "***"
"""What a secret is replaced with."""

# In free text: scheme:// then a userinfo up to the last '@' before a blank, a quote
# or a comma (URLs in a sentence or a comma separated list).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s'\",]*)@")


def _redact_userinfo(userinfo: str) -> str:
    user, colon, _password = userinfo.partition(":")
    if colon and user:
        return f"{user}:{REDACTED}"
    return REDACTED  # a bare user is a token; ':pass' has no user worth showing


def redact_url(url: object) -> str:
    """``url`` as text with the secret part of its userinfo replaced by ``***``.

    Works on anything, well-formed or not (a URL rejected by validation is redacted
    too): the userinfo is everything between ``scheme://`` (or the start, without a
    scheme) and the last ``@``, even if it holds a ``/`` that a valid URL would have
    percent-encoded. A password is replaced and its user kept; a user without a
    password is a token and is replaced whole.
    """
    text = url if isinstance(url, str) else str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        return text
    return f"{scheme}{sep}{_redact_userinfo(userinfo)}@{hostport}"


def redact_urls(urls: Iterable[object]) -> str:
    """The URLs, redacted, comma separated (as messages list a cluster)."""
    return ", ".join(redact_url(url) for url in urls)


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every URL's userinfo and every one of ``secrets`` replaced by ``***``.

    Args:
        text: a message, log line or ``repr``.
        secrets: values that must not be shown wherever they appear (``None`` and
            empty values are skipped).
    """
    redacted = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{_redact_userinfo(m['userinfo'])}@", text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        redacted = redacted.replace(secret, REDACTED)
    return redacted


def redact(value: Any) -> Any:
    """``value`` with URL userinfo redacted in every string it holds (lists, tuples and
    dicts are walked); other values are returned as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value
