"""The files in infra/: server configs, docker compose, Prometheus and Grafana.

Docker is not needed: the compose file is checked by reading it service by service (no
YAML library is a dependency, and the file keeps to plain block style so a service's
block is the lines indented under its name), and the server configs are checked by the
nats-server binary's own config test mode (``nats-server -t``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from message_bus.app.embedded import CONFIG_DIR, NatsServerNotFoundError, find_nats_server

INFRA = Path(__file__).resolve().parents[2] / "infra"
CONFIGS = sorted((INFRA / "nats").glob("*.conf"))
COMPOSE = (INFRA / "docker-compose.nats.yml").read_text()
NODES = ["nats-1", "nats-2", "nats-3"]


def uncommented(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def compose_services() -> dict[str, str]:
    """Maps each service name to the text of its block under ``services:``."""
    section = re.search(r"^services:\n(.*?)(?=^\S)", COMPOSE, re.MULTILINE | re.DOTALL)
    assert section is not None, "no services: section"
    parts = re.split(r"^  ([\w-]+):\n", section.group(1), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def nats_server_version() -> str:
    try:
        binary = find_nats_server()
    except NatsServerNotFoundError:
        pytest.skip("nats-server binary not installed")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"v(\d+\.\d+\.\d+)", out.stdout)
    assert match is not None, out.stdout
    return match.group(1)


def test_there_are_a_single_node_and_a_cluster_config() -> None:
    assert [c.name for c in CONFIGS] == ["cluster.conf", "single.conf"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_config_fsyncs_every_jetstream_write(config: Path) -> None:
    text = uncommented(config.read_text())

    assert re.search(r"^jetstream\s*\{[^}]*^\s*sync_interval:\s*always\s*$", text, re.M | re.S)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_config_passes_nats_server_config_test(config: Path) -> None:
    try:
        binary = find_nats_server()
    except NatsServerNotFoundError:
        pytest.skip("nats-server binary not installed")

    result = subprocess.run(
        [binary, "-t", "-c", config], capture_output=True, text=True, timeout=10, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_package_ships_the_same_config(config: Path) -> None:
    shipped = CONFIG_DIR / config.name

    assert shipped.read_bytes() == config.read_bytes()


def test_compose_has_the_cluster_exporter_box_and_monitoring() -> None:
    assert set(compose_services()) == {
        *NODES,
        "prometheus-nats-exporter",
        "nats-box",
        "prometheus",
        "grafana",
    }


@pytest.mark.parametrize("node", NODES)
def test_compose_node_runs_the_shared_cluster_config(node: str) -> None:
    block = compose_services()[node]

    assert re.search(r"^    image: nats:[\d.]+-alpine$", block, re.MULTILINE)
    assert f"hostname: {node}\n" in block
    assert '"-c", "/etc/nats/cluster.conf"' in block
    assert f'"--name", "{node}"' in block
    assert "- ./nats:/etc/nats:ro\n" in block
    assert f"- {node}-data:/data\n" in block
    assert f"  {node}-data: {{}}" in COMPOSE.split("\nvolumes:\n", 1)[1]


def test_compose_runs_the_nats_server_version_the_configs_are_tested_with() -> None:
    images = re.findall(r"image: nats:(\S+)", COMPOSE)

    assert images == [f"{nats_server_version()}-alpine"] * len(NODES)


def test_only_nats_1_publishes_client_and_monitoring_ports() -> None:
    services = compose_services()

    assert '"4222:4222"' in services["nats-1"]
    assert '"8222:8222"' in services["nats-1"]
    assert "ports:" not in services["nats-2"] + services["nats-3"]


def test_cluster_config_routes_name_the_compose_nodes() -> None:
    cluster = uncommented((INFRA / "nats" / "cluster.conf").read_text())

    assert re.findall(r"nats-route://([\w-]+):6222", cluster) == NODES
    assert re.search(r"listen:\s*0\.0\.0\.0:6222", cluster)


def test_exporter_nats_box_prometheus_and_grafana_are_wired() -> None:
    services = compose_services()
    exporter = services["prometheus-nats-exporter"]
    prometheus_yml = (INFRA / "prometheus" / "prometheus.yml").read_text()
    datasource = (INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()

    assert '"7777:7777"' in exporter
    assert '"-jsz=all"' in exporter
    assert '"http://nats-1:8222"' in exporter
    assert "container_name: deltran-nats-box\n" in services["nats-box"]
    assert "NATS_URL: nats://nats-1:4222" in services["nats-box"]
    assert '"prometheus-nats-exporter:7777"' in prometheus_yml
    assert '"host.docker.internal:9464"' in prometheus_yml
    assert '"host.docker.internal:host-gateway"' in services["prometheus"]
    assert "url: http://prometheus:9090" in datasource


def test_every_bind_mount_source_exists() -> None:
    sources = re.findall(r"^\s+- \"?(\./[^:\"]+):", COMPOSE, re.MULTILINE)

    assert sources, "no bind mounts found"
    for source in sources:
        assert (INFRA / source).exists(), f"{source} is mounted but missing from infra/"


def test_every_config_a_container_runs_is_mounted_from_infra_nats() -> None:
    mounted = re.findall(r'"-c", "/etc/nats/([^"]+)"', COMPOSE)

    assert len(mounted) == len(NODES)
    for name in mounted:
        assert (INFRA / "nats" / name).is_file()
