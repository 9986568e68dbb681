"""NATS header blocks: serialize them, and the one parser that reads them back.

A header block is ``NATS/1.0`` (optionally followed by an inline status such as
``408 Request Timeout``) CRLF, one ``Name: value`` CRLF per header, CRLF. Everything
the adapter reads — deliveries on a raw route, stored messages, API status replies,
the codec's fast path — is parsed by :func:`parse_header_lines`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from message_bus.domain.errors import ValidationError

BLOCK_START = b"NATS/1.0\r\n"
"""How every header block without an inline status begins."""

_NAME_SPACE = re.compile(r"[\s\x1c-\x1f]")  # what str.isspace() matches in ASCII
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token: what a header name is


def header_block(headers: Mapping[str, str]) -> bytes:
    """The ``NATS/1.0`` header block of ``headers``.

    Raises:
        ValidationError: a name or value holds CR, LF or NUL (it would corrupt the
            protocol stream).
    """
    text = "NATS/1.0\r\n" + "".join([f"{k}: {v}\r\n" for k, v in headers.items()]) + "\r\n"
    lines = len(headers) + 2
    if text.count("\n") != lines or text.count("\r") != lines or "\x00" in text:
        raise ValidationError("headers", dict(headers), "names and values must not hold CR/LF/NUL")
    return text.encode()


def parse_header_lines(raw: bytes, *, strict: bool = False) -> dict[str, str] | None:
    """``Name: value`` lines (CRLF separated) as a dict.

    Lenient (the default), it reads them as ``nats.aio.client.Client._parse_header_lines``
    does (the unit tests check it): names ASCII without whitespace, values stripped and
    decoded as UTF-8 with replacement; other lines skipped; never None.

    Strict, it returns None unless every line is one clean header: a name that is an
    HTTP token, not seen before. Fast paths use it to learn that a block is laid out
    exactly as this library writes it, and fall back to the lenient parse otherwise.
    """
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if strict:
            if not sep:
                return None
            try:
                key = name.decode("ascii")
            except UnicodeDecodeError:
                return None
            if _TOKEN.fullmatch(key) is None or key in headers:
                return None
        else:
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if _NAME_SPACE.search(key) is not None:
                continue
        headers[key] = value.strip().decode("utf-8", "replace")
    return headers


def headers_of(block: bytes | None) -> dict[str, str] | None:
    """The headers nats-py would give a ``Msg`` with this raw header block.

    An inline status (``NATS/1.0 408 Request Timeout``) becomes ``Status`` and
    ``Description`` entries.
    """
    if not block or len(block) <= 8:
        return None
    headers: dict[str, str] = {}
    rest = block[8:]
    if rest[:1] == b" ":
        line = block[9:]
        status = line[:3].strip().decode("ascii", "replace")
        description = line[4 : len(line) - 4]
        if status.isdigit():
            headers["Status"] = status
        rest = rest[rest.find(b"\r\n") + 2 :]
        if description:
            cut = description.find(b"\r\n")
            if cut > 0:
                headers["Description"] = description[:cut].decode("utf-8", "replace")
                headers.update(parse_header_lines(description[cut + 2 :]) or {})
            else:
                headers["Description"] = description.decode("utf-8", "replace")
    if len(rest) > 2:
        headers.update(parse_header_lines(block[10:]) or {})
    return headers or None


def raw_block_of(headers: Mapping[str, str] | None) -> bytes | None:
    """The header block of a ``Msg``'s headers (for a raw route's fallback path)."""
    if not headers:
        return None
    rest = dict(headers)
    status = rest.pop("Status", None)
    description = str(rest.pop("Description", ""))
    first = "NATS/1.0" if status is None else f"NATS/1.0 {status} {description}".rstrip()
    lines = "".join(f"{k}: {v}\r\n" for k, v in rest.items())
    return f"{first}\r\n{lines}\r\n".encode()


__all__ = ["BLOCK_START", "header_block", "headers_of", "parse_header_lines", "raw_block_of"]
