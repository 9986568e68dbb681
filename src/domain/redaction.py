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

# In free text: scheme:// then a userinfo up to the last '@' before a blank. A password
# may hold any printable character ('@', quotes and commas too), so only a blank ends
# a URL: URLs listed without a blank between them are redacted as one.
_SCHEME = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://")
_BLANK = re.compile(r"\s")


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
    redacted = _redact_userinfos(text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        redacted = redacted.replace(secret, REDACTED)
    return redacted


def _redact_userinfos(text: str) -> str:
    """``text`` with the userinfo of every ``scheme://userinfo@`` replaced (one pass)."""
    parts: list[str] = []
    done = 0  # text[:done] is in parts
    start = 0
    while (scheme := _SCHEME.search(text, start)) is not None:
        begin = scheme.end()
        blank = _BLANK.search(text, begin)
        end = len(text) if blank is None else blank.start()
        at = text.rfind("@", begin, end)
        if at < 0:
            start = end  # no '@' left in this word: no URL in it has a userinfo
            continue
        parts.append(text[done:begin])
        parts.append(_redact_userinfo(text[begin:at]))
        done = start = at
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


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
