"""The NATS client: connecting, clear connection errors, reconnecting, status, closing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from proxy import TcpProxy

from message_bus import BusConnectionError, ClosedError
from message_bus.adapters.nats import ConnectionStatus, NatsClient, NatsConfig
from message_bus.app.embedded import EmbeddedNatsServer, TlsFiles

ServerFactory = Callable[..., EmbeddedNatsServer]


def fast_config(*urls: str, **options: object) -> NatsConfig:
    settings: dict[str, object] = {
        "urls": list(urls),
        "reconnect_delay": 0.05,
        "reconnect_max_delay": 0.2,
        "connection_timeout": 2.0,
        **options,
    }
    return NatsConfig(**settings)  # type: ignore[arg-type]


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_connects_and_reports_each_status_change(nats_server: EmbeddedNatsServer) -> None:
    client = NatsClient(fast_config(nats_server.url))
    statuses: list[ConnectionStatus] = []
    client.on_status(statuses.append)

    await client.connect()
    connected_to = client.connected_url
    await client.close()

    assert connected_to == f"127.0.0.1:{nats_server.port}"
    assert statuses == ["disconnected", "connected", "closed"]
    assert client.status is ConnectionStatus.CLOSED


async def test_connect_is_idempotent_and_close_is_final(nats_server: EmbeddedNatsServer) -> None:
    client = NatsClient(fast_config(nats_server.url))
    await client.connect()
    connection = client.connection

    await client.connect()
    assert client.connection is connection
    await client.close()
    await client.close()

    with pytest.raises(ClosedError):
        await client.connect()
    with pytest.raises(ClosedError):
        _ = client.connection


async def test_an_unreachable_server_fails_within_the_connection_timeout(
    nats_server: EmbeddedNatsServer,
) -> None:
    url = nats_server.url
    await asyncio.to_thread(nats_server.stop)
    client = NatsClient(fast_config(url, connection_timeout=0.5))

    with pytest.raises(BusConnectionError, match="unreachable") as caught:
        await asyncio.wait_for(client.connect(), 5.0)

    assert url in str(caught.value)
    assert client.status is ConnectionStatus.DISCONNECTED


async def test_a_cluster_url_list_skips_the_dead_server(nats_server: EmbeddedNatsServer) -> None:
    client = NatsClient(fast_config("nats://127.0.0.1:1", nats_server.url))

    await client.connect()

    assert client.connected_url == f"127.0.0.1:{nats_server.port}"
    await client.close()


async def test_user_and_password_are_passed_through(nats_server_factory: ServerFactory) -> None:
    server = nats_server_factory(user="bank", password="s3cret")
    client = NatsClient(fast_config(server.url, user="bank", password="s3cret"))

    await client.connect()

    assert client.is_connected
    await client.close()


async def test_a_wrong_password_fails_at_once_with_a_clear_error(
    nats_server_factory: ServerFactory,
) -> None:
    server = nats_server_factory(user="bank", password="s3cret")
    client = NatsClient(fast_config(server.url, user="bank", password="wrong"))

    with pytest.raises(BusConnectionError, match="rejected the credentials"):
        await asyncio.wait_for(client.connect(), 1.5)


async def test_a_token_is_passed_through(nats_server_factory: ServerFactory) -> None:
    server = nats_server_factory(token="t0k3n")
    good = NatsClient(fast_config(server.url, token="t0k3n"))
    bad = NatsClient(fast_config(server.url, token="other"))

    await good.connect()
    with pytest.raises(BusConnectionError, match="rejected the credentials"):
        await bad.connect()

    await good.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(
    nats_server_factory: ServerFactory, ca: trustme.CA, tmp_path: Path
) -> EmbeddedNatsServer:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "server.pem")
    cert.private_key_pem.write_to_path(tmp_path / "server.key")
    return nats_server_factory(
        tls=TlsFiles(cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.key")
    )


async def test_tls_with_the_servers_ca_connects(
    tls_server: EmbeddedNatsServer, ca: trustme.CA, tmp_path: Path
) -> None:
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    client = NatsClient(fast_config(tls_server.url, tls_ca=str(tmp_path / "ca.pem")))

    await client.connect()

    assert client.is_connected
    await client.close()


async def test_an_untrusted_server_certificate_fails_with_a_clear_error(
    tls_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    stranger = trustme.CA()
    stranger.cert_pem.write_to_path(tmp_path / "other-ca.pem")
    client = NatsClient(fast_config(tls_server.url, tls_ca=str(tmp_path / "other-ca.pem")))

    with pytest.raises(BusConnectionError, match=r"TLS handshake .* failed") as caught:
        await asyncio.wait_for(client.connect(), 1.5)

    assert "certificate" in str(caught.value)


async def test_tls_settings_refuse_a_server_without_tls(
    nats_server: EmbeddedNatsServer, ca: trustme.CA, tmp_path: Path
) -> None:
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    client = NatsClient(fast_config(nats_server.url, tls_ca=str(tmp_path / "ca.pem")))

    with pytest.raises(BusConnectionError, match="does not offer TLS"):
        await asyncio.wait_for(client.connect(), 1.5)


async def test_reconnects_after_a_server_restart_and_reports_the_outage(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = NatsClient(fast_config(nats_server.url))
    statuses: list[ConnectionStatus] = []
    await client.connect()
    client.on_status(statuses.append)

    await asyncio.to_thread(nats_server.restart)

    assert await client.wait_connected(10.0)
    await eventually(lambda: statuses[-1] == "connected" and len(statuses) > 1)
    assert statuses[0] == "connected"
    assert "disconnected" in statuses
    assert "reconnecting" in statuses
    await client.connection.flush()
    await client.close()


async def test_zero_reconnect_attempts_closes_on_the_first_outage(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = NatsClient(fast_config(nats_server.url, max_reconnect_attempts=0))
    await client.connect()

    await asyncio.to_thread(nats_server.kill)

    await eventually(lambda: client.status is ConnectionStatus.CLOSED)
    with pytest.raises(ClosedError):
        await client.wait_connected(1.0)


async def test_drain_closes_the_connection(nats_server: EmbeddedNatsServer) -> None:
    client = NatsClient(fast_config(nats_server.url))
    await client.connect()
    received: list[bytes] = []

    async def collect(msg: object) -> None:
        received.append(getattr(msg, "data", b""))

    await client.connection.subscribe("deltran.system.event.>", cb=collect)
    await client.connection.publish("deltran.system.event.broadcast", b"last words")

    await client.drain()

    assert received == [b"last words"]
    assert client.status is ConnectionStatus.CLOSED
    assert client.is_closed


async def test_close_succeeds_when_the_connection_dies_as_it_closes(
    nats_server: EmbeddedNatsServer,
) -> None:
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        for _ in range(5):
            client = NatsClient(NatsConfig(urls=[proxy.url], max_reconnect_attempts=0))
            await client.connect()
            await client.connection.publish("close.test", b"x" * 65536)  # pending data
            proxy.cut()
            await client.close()  # must not raise: the connection is closed either way
            assert client.status is ConnectionStatus.CLOSED
