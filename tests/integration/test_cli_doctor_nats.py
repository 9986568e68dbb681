"""``deltran-bus doctor`` on real nats-servers: an embedded single node is flagged, a
3-node cluster with TLS and authentication is clean, drift and a missing dead-letter
stream fail naming what is wrong."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from nats.js.api import ConsumerConfig

from message_bus.adapters.nats import NatsClient, NatsConfig, StreamManager
from message_bus.adapters.nats.deployment import read_deployment
from message_bus.app.cli import run_cli
from message_bus.app.embedded import EmbeddedNatsServer, NatsCluster, TlsFiles

pytestmark = pytest.mark.timeout(180)

SECRET = "d0ctorPassw0rd"


async def doctor(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, dict[str, dict[str, str]]]:
    """Runs ``doctor --json`` and returns its exit code and the checks by name."""
    capsys.readouterr()
    code = await run_cli(["doctor", "--json", *argv])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["ok"] is (code == 0), captured
    return code, {check["name"]: check for check in document["checks"]}


def statuses(checks: dict[str, dict[str, str]]) -> dict[str, str]:
    return {name: check["status"] for name, check in checks.items()}


@pytest.fixture
async def applied(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    """A client of the single node, whose streams the catalog created."""
    client = NatsClient(NatsConfig(urls=[nats_server.url]))
    await client.connect()
    await StreamManager(client).apply()
    yield client
    await client.close()


async def test_the_embedded_single_node_is_flagged_with_warnings_and_no_failure(
    nats_server: EmbeddedNatsServer,
    applied: NatsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monitor = nats_server.monitor_url
    assert monitor is not None

    code, checks = await doctor(capsys, "--url", nats_server.url, "--monitor", monitor)

    assert code == 0, checks
    assert statuses(checks) == {
        "server version": "pass",
        "cluster size": "warn",
        "sync interval": "pass",
        "tls": "warn",
        "authentication": "warn",
        "stream config": "pass",
        "duplicate window": "pass",
        "dead letters": "pass",
        "ack pending": "pass",
        "storage": "pass",
    }
    assert "1 server" in checks["cluster size"]["found"]
    assert "3+ servers" in checks["cluster size"]["fix"]
    assert "0 letters" in checks["dead letters"]["found"]


async def test_without_a_monitoring_endpoint_sync_interval_could_not_be_verified(
    nats_server: EmbeddedNatsServer,
    applied: NatsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, checks = await doctor(capsys, "--url", nats_server.url)

    assert code == 0
    assert checks["sync interval"]["status"] == "warn"
    assert "could not be verified" in checks["sync interval"]["found"]


async def test_the_text_report_has_one_line_per_check_and_a_summary(
    nats_server: EmbeddedNatsServer,
    applied: NatsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    code = await run_cli(["doctor", "--url", nats_server.url])
    lines = capsys.readouterr().out.splitlines()

    assert code == 0
    assert len(lines) == 11
    assert all(line.split()[0] in ("PASS", "WARN", "FAIL") for line in lines[:10])
    assert lines[-1].endswith("0 failed")


async def test_a_stream_changed_by_hand_fails_naming_the_field(
    nats_server: EmbeddedNatsServer,
    applied: NatsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    js = applied.jetstream
    info = await js.stream_info("CHECKPOINTS")
    await js.update_stream(info.config.evolve(max_age=3600.0))

    code, checks = await doctor(capsys, "--url", nats_server.url)

    assert code == 1
    assert checks["stream config"]["status"] == "fail"
    assert "CHECKPOINTS (max_age: 3600.0 ->" in checks["stream config"]["found"]
    assert "streams apply" in checks["stream config"]["fix"]
    after = await js.stream_info("CHECKPOINTS")
    assert after.config.max_age == 3600.0, "the doctor changed the stream"


async def test_a_missing_dead_letter_stream_fails(
    nats_server: EmbeddedNatsServer,
    applied: NatsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await applied.jetstream.delete_stream("DEAD_LETTERS")

    code, checks = await doctor(capsys, "--url", nats_server.url)

    assert code == 1
    assert checks["dead letters"]["status"] == "fail"
    assert "DEAD_LETTERS is missing" in checks["dead letters"]["found"]


async def test_dead_letters_held_and_a_consumer_at_its_ack_limit_warn(
    nats_server: EmbeddedNatsServer,
    applied: NatsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    js = applied.jetstream
    dead = await js.stream_info("DEAD_LETTERS")
    dead_subject = str((dead.config.subjects or [])[0]).replace(">", "x").replace("*", "x")
    await js.publish(dead_subject, b"{}")
    stream = await js.stream_info("CHECKPOINTS")
    subject = str((stream.config.subjects or [])[0]).replace(">", "x").replace("*", "x")
    await js.publish(subject, b"{}")
    sub = await js.pull_subscribe(
        subject, durable="stuck", stream="CHECKPOINTS", config=ConsumerConfig(max_ack_pending=1)
    )
    taken = await sub.fetch(1, timeout=10)  # delivered, never acknowledged
    assert len(taken) == 1

    code, checks = await doctor(capsys, "--url", nats_server.url)

    assert code == 0
    assert checks["dead letters"]["status"] == "warn"
    assert "holds 1 letter" in checks["dead letters"]["found"]
    assert checks["ack pending"]["status"] == "warn"
    assert "CHECKPOINTS/stuck 1/1" in checks["ack pending"]["found"]


async def test_a_memory_backend_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_cli(["doctor", "--backend", "memory"])

    assert code == 2
    assert "NATS deployment" in capsys.readouterr().err


async def test_a_monitor_that_is_not_an_http_url_is_refused_naming_it(
    nats_server: EmbeddedNatsServer,
    applied: NatsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = await run_cli(["doctor", "--url", nats_server.url, "--monitor", "nats://x:4222"])

    assert code == 2
    assert "monitor_url" in capsys.readouterr().err


# -- the clean cluster --------------------------------------------------------------------


@pytest.fixture
def secure_cluster(tmp_path: Path) -> Iterator[tuple[NatsCluster, Path]]:
    """A 3-node cluster whose nodes require TLS and a password; and the CA's file."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "server.pem")
    cert.private_key_pem.write_to_path(tmp_path / "server.key")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    tls = TlsFiles(cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.key")
    with NatsCluster(size=3, user="alice", password=SECRET, tls=tls) as cluster:
        yield cluster, tmp_path / "ca.pem"


async def test_a_three_node_cluster_with_tls_and_auth_is_clean(
    secure_cluster: tuple[NatsCluster, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster, ca = secure_cluster
    urls = [url.replace("nats://", "tls://") for url in cluster.urls]
    settings = tmp_path / "bus.toml"
    settings.write_text(
        "\n".join(
            [
                "backend = 'nats'",
                "[nats]",
                f"urls = {json.dumps(urls)}",
                "user = 'alice'",
                f"password = '{SECRET}'",
                f"tls_ca = '{ca}'",
                "[streams]",
                "replicas = 3",
            ]
        )
    )
    assert await run_cli(["streams", "apply", "--config", str(settings)]) == 0
    monitors = [node.monitor_url for node in cluster.nodes]
    assert all(monitors)

    code, checks = await doctor(
        capsys, "--config", str(settings), "--monitor", ",".join(str(m) for m in monitors)
    )

    assert code == 0, checks
    assert set(statuses(checks).values()) == {"pass"}, checks
    assert "3 server(s)" in checks["cluster size"]["found"]
    secrets_seen = json.dumps(checks)
    assert SECRET not in secrets_seen


async def test_without_monitoring_the_cluster_size_comes_from_the_server_info(
    secure_cluster: tuple[NatsCluster, Path],
) -> None:
    cluster, ca = secure_cluster
    urls = [url.replace("nats://", "tls://") for url in cluster.urls]
    client = NatsClient(NatsConfig(urls=urls, user="alice", password=SECRET, tls_ca=str(ca)))
    await client.connect()
    try:
        deployment = await read_deployment(client)
    finally:
        await client.close()

    assert deployment.cluster_size == 3
    assert deployment.cluster_source == "server INFO connect_urls"
    assert deployment.tls
    assert deployment.auth_required
    assert deployment.sync_always is None
