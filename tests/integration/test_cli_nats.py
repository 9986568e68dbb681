"""``deltran-bus`` as a user runs it: a separate process, real nats-server processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from message_bus import MessageType
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

SCRIPT = shutil.which("deltran-bus", path=str(Path(sys.executable).parent))


def deltran_bus(
    *args: str, timeout: float = 60, **environ: str
) -> subprocess.CompletedProcess[str]:
    """Run the console script with a clean DELTRAN_* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    env.update(environ)
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "message_bus.app.cli"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_demo_runs_on_the_embedded_server_and_prints_the_summary() -> None:
    result = deltran_bus("demo", "--payments", "200", "--metrics-port", "0", timeout=90)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "embedded nats-server at nats://127.0.0.1:" in out
    assert "streams applied (10)" in out  # 9 streams and the ordered groups' bucket
    assert "200 published, 200 netted" in out
    assert "lost / doubled   0 / 0" in out
    assert "redeliveries     5 (5 injected handler failures" in out
    assert "1 found in DEAD_LETTERS" in out
    assert "messages per partition" in out
    assert "demo OK" in out


def test_demo_against_a_given_server_leaves_its_dead_letters_there(
    nats_server: EmbeddedNatsServer,
) -> None:
    demo = deltran_bus(
        "demo", "--url", nats_server.url, "--payments", "50", "--poison", "2", "--metrics-port", "0"
    )
    dlq = deltran_bus("dlq", "ls", "--url", nats_server.url)

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"NATS JetStream at {nats_server.url}" in demo.stdout
    assert dlq.returncode == 0
    assert "2 dead letter(s)" in dlq.stdout
    assert "invalid payment instruction" in dlq.stdout


def test_publish_subscribe_and_streams_through_the_cli(nats_server: EmbeddedNatsServer) -> None:
    url = nats_server.url
    applied = deltran_bus("streams", "apply", "--url", url)
    checkpoint = json.dumps(sample_payload(MessageType.CHECKPOINT, height=7))
    published = deltran_bus("publish", "Checkpoint", "broadcast", checkpoint, "--url", url)
    received = deltran_bus(
        "subscribe", "Checkpoint", "--count", "1", "--timeout", "10", "--url", url
    )
    listed = deltran_bus("streams", "ls", "--url", url)

    assert applied.returncode == 0
    assert "PAYMENT_INSTRUCTIONS" in applied.stdout
    assert "created" in applied.stdout
    assert published.returncode == 0
    assert "stream CHECKPOINTS seq 1" in published.stdout
    assert received.returncode == 0
    assert json.loads(received.stdout)["payload"]["height"] == 7
    checkpoints = next(
        line for line in listed.stdout.splitlines() if line.startswith("CHECKPOINTS")
    )
    assert checkpoints.split()[2] == "1"  # one message stored


@pytest.fixture
def server_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "message_bus.app.cli"]
    process = subprocess.Popen(
        [*command, "server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = ""
    try:
        assert process.stdout is not None
        for _ in range(10):  # a handful of startup lines, then the prompt
            line = process.stdout.readline()
            if line.startswith("nats-server ready at "):
                url = line.split()[-1]
            if line.startswith("Ctrl-C stops the server") or not line:
                break
        assert url, process.stderr.read() if process.stderr else ""
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_server_runs_until_interrupted_with_the_streams_applied(
    server_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = server_process

    published = deltran_bus(
        "publish", "SettlementProof", "corridor.USD-EUR", '{"proof": "abc"}', "--raw", "--url", url
    )
    process.send_signal(signal.SIGINT)
    out, _err = process.communicate(timeout=20)

    assert published.returncode == 0
    assert "stream SETTLEMENT_PROOFS seq 1" in published.stdout
    assert process.returncode == 0
    assert "nats-server stopped" in out


def _servers_storing_in(store: Path) -> list[int]:
    """Process ids of the nats-server processes whose store directory is ``store``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended meanwhile
        if b"-sd" in argv and os.fsencode(store) in argv:
            found.append(int(cmdline.parent.name))
    return found


def test_sigterm_while_the_server_starts_stops_the_nats_server_too(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "message_bus.app.cli"]
    process = subprocess.Popen(
        [*command, "server", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        for _ in range(2000):  # until the nats-server child exists
            if _servers_storing_in(tmp_path) or process.poll() is not None:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

        assert process.returncode == 0  # a clean stop, not the signal's default action
        assert _servers_storing_in(tmp_path) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in _servers_storing_in(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_stops_a_command_and_the_embedded_server_it_started(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    env["DELTRAN_DATA_DIR"] = str(tmp_path)
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "message_bus.app.cli"]
    process = subprocess.Popen(
        [*command, "demo", "--payments", "1000000", "--metrics-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for _ in range(2000):  # until the nats-server child exists
            if _servers_storing_in(tmp_path) or process.poll() is not None:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)

        assert process.returncode == 130, err
        assert _servers_storing_in(tmp_path) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in _servers_storing_in(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_an_unreachable_server_exits_2_with_one_line() -> None:
    url = f"nats://127.0.0.1:{free_port()}"

    result = deltran_bus(
        "publish",
        "Checkpoint",
        "broadcast",
        "{}",
        "--raw",
        "--url",
        url,
        DELTRAN_NATS_CONNECTION_TIMEOUT="1",
    )

    assert result.returncode == 2
    assert "cannot reach the server" in one_error_line(result)
    assert url in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("demo", "--corridors", "USD-EUR,USDEUR"), "invalid corridor 'USDEUR'"),
        (("publish", "Wire", "broadcast", "{}"), "unknown message type 'Wire'"),
        (("publish", "SettlementProof", "broadcast", "{'a': 1}"), "payload is not JSON"),
        (("publish", "SettlementProof", "corridor.USD EUR", "{}"), "invalid corridor_id 'USD EUR'"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args: tuple[str, ...], message: str) -> None:
    result = deltran_bus(*args)

    assert result.returncode == 2
    assert message in one_error_line(result)
