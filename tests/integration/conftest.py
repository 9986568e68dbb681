"""Fixtures for tests that run real ``nats-server`` processes.

Every test under ``tests/integration`` is marked ``integration`` automatically, so
``pytest -m "not integration"`` runs only the fast tests.

Fixtures:
    nats_server: a fresh single-node JetStream server per test (own port, own temporary
        store directory, monitoring enabled), stopped and deleted afterwards.
    nats_server_factory: starts servers with custom options (auth, TLS, a given store
        directory); all of them are stopped after the test.
    nats_cluster: a fresh 3-node JetStream cluster per test (it starts in well under a
        second), stopped and deleted afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from message_bus.adapters.nats import NatsClient, NatsConfig, StreamManager
from message_bus.app.embedded import EmbeddedNatsServer, NatsCluster

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every test collected from this directory as ``integration``."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def nats_server() -> Iterator[EmbeddedNatsServer]:
    """A started single-node JetStream server with monitoring, deleted after the test."""
    with EmbeddedNatsServer(monitor_port=0) as server:
        yield server


@pytest.fixture
def nats_server_factory() -> Iterator[Callable[..., EmbeddedNatsServer]]:
    """Starts ``EmbeddedNatsServer(**options)``; every server is stopped at teardown."""
    servers: list[EmbeddedNatsServer] = []

    def start(**options: Any) -> EmbeddedNatsServer:
        server = EmbeddedNatsServer(**options)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    """A client of ``nats_server`` with the catalog's streams applied, reconnecting
    within a fraction of a second; closed after the test. A test module may define its
    own ``client`` instead."""
    client = NatsClient(
        NatsConfig(urls=[nats_server.url], reconnect_delay=0.05, reconnect_max_delay=0.2)
    )
    await client.connect()
    await StreamManager(client).apply()
    yield client
    await client.close()


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """A started 3-node JetStream cluster with a meta leader, deleted after the test."""
    with NatsCluster(size=3) as cluster:
        yield cluster
