"""The AsyncAPI page: self-contained, escaped, and shown by a real browser (headless Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from message_bus import MessageType
from message_bus.app.asyncapi import Operation, asyncapi_document
from message_bus.app.asyncapi_html import render_html
from message_bus.app.config import load_settings

CHROMIUM_TIMEOUT = 120.0
"""Seconds one headless Chromium run may take on a loaded 2-core machine."""
WINDOW = (1280, 2000)


def document() -> dict[str, Any]:
    return asyncapi_document(
        operations=[
            Operation(MessageType.PAYMENT_INSTRUCTION, "netting", "partition", handler="net"),
            Operation(MessageType.COMPLIANCE_CHECK, "compliance"),
        ],
        settings=load_settings(environ={}),
    )


def test_the_page_shows_channels_operations_headers_and_payload_fields() -> None:
    page = render_html(document())
    for message_type in MessageType:
        assert f"{message_type.subject_prefix}.{{partitionKey}}" in page
        assert f'id="channel-{message_type.value}"' in page
    for shown in (
        "Nats-Msg-Id",
        "Deltran-Partition-Key",
        "traceparent",
        "payment_id",
        "debtor_bank",
        "receivePaymentInstruction-netting",
        "<code>net</code>",
        "sendPaymentInstruction",
        "localhost:4222",
    ):
        assert shown in page, shown
    assert 'href="#schema-PaymentInstruction"' in page
    assert 'id="schema-PaymentInstruction"' in page


def test_the_page_loads_nothing_from_the_network() -> None:
    page = render_html(document())
    assert "<script" not in page
    assert "<link" not in page
    assert "@import" not in page
    assert "url(" not in page
    assert re.findall(r'(?:src|href)="(?!#)[^"]*"', page) == []


def test_every_text_of_the_document_is_escaped() -> None:
    hostile = document()
    hostile["info"]["title"] = "<script>alert(1)</script>"
    hostile["channels"]["Checkpoint"]["description"] = '"><img src=x onerror=alert(1)>'
    page = render_html(hostile)
    assert "<script>" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# -- headless Chromium -------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it before the tests)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def png_size_and_top_colours(data: bytes, rows: int) -> tuple[int, int, set[bytes]]:
    """Width, height, and the distinct pixel colours of the first ``rows`` rows of a PNG
    (8-bit RGB or RGBA, not interlaced: what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, bytearray(), b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), (depth, interlace)
    channels = {2: 3, 6: 4}[colour]
    stride = width * channels
    rows = min(rows, height)
    raw = zlib.decompressobj().decompress(bytes(idat), rows * (stride + 1))
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(rows):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + predictor) & 0xFF
        colours.update(bytes(line[i : i + 3]) for i in range(0, stride, channels))
        previous = line
    return width, height, colours


def test_chromium_shows_the_page_headless_and_takes_a_screenshot(tmp_path: Path) -> None:
    binary = chromium()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(render_html(document()), encoding="utf-8")
    screenshot = tmp_path / "asyncapi.png"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={screenshot}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                "--dump-dom",
                (site / "index.html").as_uri(),
            ],
            capture_output=True,
            timeout=CHROMIUM_TIMEOUT,
            check=False,
        )
    elapsed = time.monotonic() - started
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, f"chromium exited {result.returncode}: {stderr[-2000:]}"
    dom = result.stdout.decode()
    for message_type in MessageType:  # the browser parsed every channel
        assert f"{message_type.subject_prefix}.{{partitionKey}}" in dom
    assert "receivePaymentInstruction-netting" in dom
    assert screenshot.exists(), f"no screenshot after {elapsed:.1f} s: {stderr[-2000:]}"
    width, height, colours = png_size_and_top_colours(screenshot.read_bytes(), rows=160)
    assert (width, height) == WINDOW
    # the dark header, its white title, the badges and antialiased text: not a blank page
    assert len(colours) >= 16, f"only {len(colours)} colours in the page's header"
