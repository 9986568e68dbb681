"""The FastStream comparison and the two-loop runner run for a moment against a real
server and print every line (no speed is asserted: only that the lines are there)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from message_bus.app.embedded import EmbeddedNatsServer

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RUN_TIMEOUT = 300.0  # seconds for one benchmark process on a slow, shared machine
RATE = r"[\d,]+"


def run_benchmark(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """``python benchmarks/<args>`` (after ``prelude``), in the benchmarks folder."""
    script, *rest = args
    code = (
        f"{prelude}\nimport runpy, sys\nsys.argv = {[script, *rest]!r}\n"
        f"sys.path.insert(0, {str(BENCHMARKS)!r})\n"
        f"runpy.run_path({str(BENCHMARKS / script)!r}, run_name='__main__')\n"
    )
    try:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=BENCHMARKS,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{script} did not finish within {RUN_TIMEOUT:g} s: {exc}") from None


def test_without_faststream_the_comparison_prints_how_to_install_it() -> None:
    done = run_benchmark(
        "bench_faststream.py",
        "--url",
        "nats://127.0.0.1:1",
        prelude="import sys\nsys.modules['faststream'] = None",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "FastStream comparison skipped: faststream[nats] is not installed "
        '(pip install -e ".[bench]")'
    )


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_faststream_comparison_prints_every_line_under_both_loops(
    nats_server: EmbeddedNatsServer,
) -> None:
    pytest.importorskip("faststream.nats", reason='the bench extra: pip install -e ".[bench]"')
    pytest.importorskip("uvloop", reason='the fast extra: pip install -e ".[fast]"')
    done = run_benchmark(
        "bench_faststream.py",
        *("--url", nats_server.url, "--messages", "300", "--repeat", "1", "--batch", "64"),
        "--loop",
        "both",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for loop in ("asyncio", "uvloop"):
        assert f"event loop {loop}" in out, out
    for line in (
        "core publish",
        "jetstream publish, bus publish_many",
        "same, bus sequential publish",
        "jetstream consume + ack (pull)",
    ):
        found = re.findall(rf"{re.escape(line)}\s+{RATE}\s+{RATE}\s+[\d.]+x", out)
        assert len(found) == 2, f"{line!r} once per loop in:\n{out}"
        ratio = rf"uvloop / asyncio, {re.escape(line)}\s+FastStream [\d.]+x, bus [\d.]+x"
        assert re.search(ratio, out), out
    assert len(re.findall(r"aim at least 5x: (met|below)", out)) == 6, out


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_loops_runs_the_bus_benchmarks_under_asyncio_and_uvloop(
    nats_server: EmbeddedNatsServer,
) -> None:
    pytest.importorskip("uvloop", reason='the fast extra: pip install -e ".[fast]"')
    done = run_benchmark(
        "loops.py", *("--url", nats_server.url, "--messages", "300", "--repeat", "1")
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in ("core publish", "jetstream publish_many", "jetstream consume + ack"):
        for loop in ("asyncio", "uvloop"):
            assert re.search(rf"{re.escape(line)}\s+{loop}\s+{RATE}\s+{RATE}", out), out
        ratio = rf"uvloop / asyncio, {re.escape(line)}\s+nats-py [\d.]+x, bus [\d.]+x"
        assert re.search(ratio, out), out
