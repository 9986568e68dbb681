"""NATS header blocks: they cannot corrupt the protocol stream, and one parser reads them."""

from __future__ import annotations

import pytest

from message_bus import ValidationError
from message_bus.adapters.nats.headers import header_block, headers_of, parse_header_lines


def test_header_block_round_trips() -> None:
    headers = {"Nats-Msg-Id": "01a2-x", "Deltran-Type": "PaymentInstruction", "X-Note": "héllo"}

    block = header_block(headers)

    assert block.startswith(b"NATS/1.0\r\n")
    assert block.endswith(b"\r\n\r\n")
    assert headers_of(block) == headers


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Note": "a\r\nPUB evil 0\r\n"},
        {"X-Note": "a\nb"},
        {"X-Note": "a\rb"},
        {"X-\r\nEvil": "a"},
        {"X-Note": "nul\x00byte"},
    ],
)
def test_header_block_refuses_line_breaks_and_nul(headers: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        header_block(headers)


@pytest.mark.parametrize(
    "raw",
    [
        b"Nats-Msg-Id: 01a2\r\nDeltran-Type: PaymentInstruction\r\n\r\n",
        b"A:1\r\nB:\t two words \r\nC: caf\xc3\xa9\r\n",
        b"Bad Name: x\r\nGood: y\r\nno colon\r\n\xff\xfe: z\r\n: empty name\r\n",
        b"Dup: 1\r\nDup: 2\r\nX-Broken: \xff\r\n",
        b"",
    ],
)
def test_the_fast_header_parser_matches_nats_py(raw: bytes) -> None:
    from nats.aio.client import Client

    from message_bus.adapters.nats.internals import Connection

    assert parse_header_lines(raw) == Client._parse_header_lines(raw)
    assert Connection._parse_header_lines(raw) == Client._parse_header_lines(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"A: 1\r\nB-2: x y", {"A": "1", "B-2": "x y"}),
        (b"A: 1\r\nA: 2", None),  # a name twice
        (b"A: 1\r\nno colon", None),
        (b"Bad Name: x", None),  # not an HTTP token
        (b" A: 1", None),
        (b"\xff: 1", None),
    ],
)
def test_the_strict_parse_accepts_only_clean_distinct_headers(
    raw: bytes, expected: dict[str, str] | None
) -> None:
    assert parse_header_lines(raw, strict=True) == expected
