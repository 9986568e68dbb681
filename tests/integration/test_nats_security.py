"""Connection security against real servers: TLS that is really required, no secret in
any error, log line, repr or CLI output, and a connect that is always bounded."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from proxy import TcpProxy
from waits import eventually

from message_bus import BusConnectionError, ValidationError
from message_bus.adapters.nats import NatsClient, NatsConfig
from message_bus.app.config import load_settings
from message_bus.app.embedded import EmbeddedNatsServer, TlsFiles

ServerFactory = Callable[..., EmbeddedNatsServer]

SECRET = "S3cretPassw0rd"
TOKEN = "T0kenS3cretValue"
SEED = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"
CREDS_SECRET = "eyJ0eXAiOiJKV1QiCREDSFILESECRET"
ALL_SECRETS = (SECRET, TOKEN, SEED, CREDS_SECRET)

SCRIPT = shutil.which("deltran-bus", path=str(Path(sys.executable).parent))


def config(*urls: str, **options: object) -> NatsConfig:
    settings: dict[str, object] = {
        "urls": list(urls),
        "reconnect_delay": 0.05,
        "reconnect_max_delay": 0.2,
        "connection_timeout": 3.0,
        **options,
    }
    return NatsConfig(**settings)  # type: ignore[arg-type]


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def settle(proxy: TcpProxy) -> None:
    """Waits until the proxy carries no connection, so stopping it leaves nothing behind."""
    await eventually(lambda: proxy.open_connections == 0, "the proxy's connections to close")


async def connect_error(client: NatsClient, bound: float = 20.0) -> BusConnectionError:
    with pytest.raises(BusConnectionError) as caught:
        await asyncio.wait_for(client.connect(), bound)
    return caught.value


def assert_no_secret(texts: list[str]) -> None:
    for secret in ALL_SECRETS:
        leaks = [text for text in texts if secret in text]
        assert not leaks, f"{secret!r} leaked in: {leaks}"


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


@pytest.fixture
def plain_server(nats_server_factory: ServerFactory) -> EmbeddedNatsServer:
    """A server without TLS that accepts alice with the secret password."""
    return nats_server_factory(user="alice", password=SECRET)


# -- TLS is required when asked for -------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    ["tls url", "tls url with credentials in it", "nats url with a ca file", "mixed list"],
)
async def test_a_tls_config_refuses_a_plaintext_server_before_sending_credentials(
    plain_server: EmbeddedNatsServer, tmp_path: Path, ca: trustme.CA, how: str
) -> None:
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    with TcpProxy("127.0.0.1", plain_server.port) as proxy:
        hostport = f"127.0.0.1:{proxy.port}"
        options: dict[str, object] = {"user": "alice", "password": SECRET}
        urls = [f"tls://{hostport}"]
        if how == "tls url with credentials in it":
            urls, options = [f"tls://alice:{SECRET}@{hostport}"], {}
        elif how == "nats url with a ca file":
            urls, options = [f"nats://{hostport}"], {**options, "tls_ca": str(tmp_path / "ca.pem")}
        elif how == "mixed list":  # TLS for every server once one URL asks for it
            urls = [f"nats://{hostport}", f"tls://127.0.0.1:{free_port()}"]
        client = NatsClient(config(*urls, **options))

        error = await connect_error(client)

        assert "does not offer TLS" in str(error)
        assert proxy.connections >= 1, "the client never reached the plaintext server"
        assert b"CONNECT" not in proxy.seen_upstream
        assert SECRET.encode() not in proxy.seen_upstream
        assert SECRET not in str(error)
        await settle(proxy)


async def test_a_tls_url_with_the_ca_connects_to_a_tls_server_and_encrypts_credentials(
    nats_server_factory: ServerFactory, server_tls: TlsFiles, tmp_path: Path
) -> None:
    server = nats_server_factory(tls=server_tls, user="alice", password=SECRET)
    with TcpProxy("127.0.0.1", server.port, scheme="tls") as proxy:
        client = NatsClient(
            config(proxy.url, user="alice", password=SECRET, tls_ca=str(tmp_path / "ca.pem"))
        )

        await asyncio.wait_for(client.connect(), 20)
        await client.flush()

        assert client.is_connected
        assert b"CONNECT" not in proxy.seen_upstream  # only the TLS records went through
        assert SECRET.encode() not in proxy.seen_upstream
        await client.close()
        await settle(proxy)


async def test_a_reconnect_to_a_plaintext_server_is_refused(
    nats_server_factory: ServerFactory, server_tls: TlsFiles, tmp_path: Path
) -> None:
    tls_server = nats_server_factory(tls=server_tls, user="alice", password=SECRET)
    plain = nats_server_factory(user="alice", password=SECRET)
    with TcpProxy("127.0.0.1", tls_server.port, scheme="tls") as proxy:
        client = NatsClient(
            config(proxy.url, user="alice", password=SECRET, tls_ca=str(tmp_path / "ca.pem"))
        )
        await asyncio.wait_for(client.connect(), 20)
        before = proxy.connections

        proxy.target_port = plain.port  # the same address now leads to a plaintext server
        proxy.cut()
        await eventually(lambda: proxy.connections >= before + 2, "two reconnect attempts")

        assert not client.is_connected
        assert b"CONNECT" not in proxy.seen_upstream
        assert SECRET.encode() not in proxy.seen_upstream
        await client.close()
        await settle(proxy)


# -- no secret anywhere ---------------------------------------------------------------------


async def test_no_secret_in_errors_logs_or_reprs(
    plain_server: EmbeddedNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, nats-py's included
    texts: list[str] = []
    refused = free_port()

    def keep(error: BaseException) -> None:
        texts.extend([str(error), repr(error), str(error.__cause__), repr(error.args)])

    # unreachable, with a password and with a token in the URL
    for url in (
        f"nats://alice:{SECRET}@127.0.0.1:{refused}",
        f"nats://{TOKEN}@127.0.0.1:{refused}",
    ):
        keep(await connect_error(NatsClient(config(url))))
    # credentials rejected: the right user, a password that is not the server's
    wrong = f"nats://alice:{SECRET}x@127.0.0.1:{plain_server.port}"
    rejected = await connect_error(NatsClient(config(wrong)))
    assert "rejected the credentials" in str(rejected)
    keep(rejected)
    # the same through the config's own fields
    for options in ({"user": "alice", "password": SECRET + "x"}, {"token": TOKEN}):
        keep(await connect_error(NatsClient(config(plain_server.url, **options))))
    # reprs, of the configs and of the settings
    for options in (
        {"urls": [f"nats://alice:{SECRET}@h:4222"]},
        {"user": "alice", "password": SECRET},
        {"token": TOKEN},
        {"nkey_seed": SEED},
    ):
        nats_config = NatsConfig(**options)  # type: ignore[arg-type]
        texts += [repr(nats_config), str(nats_config)]
    settings = load_settings(
        environ={
            "DELTRAN_NATS_URLS": f"nats://alice:{SECRET}@h:4222",
            "DELTRAN_NATS_NKEY_SEED": SEED,
        }
    )
    texts += [repr(settings), repr(settings.redacted())]
    # validation errors, of a bad URL and of bad secret values
    for options in (
        {"urls": [f"nats://alice:{SECRET}@host:99999"]},
        {"urls": [f"nats://alice:{SECRET}@"]},
        {"urls": [f"http://alice:{SECRET}@host"]},
        {"urls": [f"nats://{TOKEN}@host:4222", "ws://h:80"]},
        {"user": "alice", "password": [SECRET]},
        {"token": [TOKEN]},
        {"nkey_seed": [SEED]},
    ):
        with pytest.raises(ValidationError) as invalid:
            NatsConfig(**options)  # type: ignore[arg-type]
        keep(invalid.value)
        texts.append(repr(invalid.value.value))
    with pytest.raises(ValidationError) as invalid:
        load_settings(environ={"DELTRAN_NATS_URLS": f"nats://alice:{SECRET}@h:0"})
    keep(invalid.value)
    texts.append(repr(invalid.value.value))

    # the DEBUG reconnect log: a URL with credentials, a connection that drops
    with TcpProxy("127.0.0.1", plain_server.port) as proxy:
        client = NatsClient(config(f"nats://alice:{SECRET}@127.0.0.1:{proxy.port}"))
        await asyncio.wait_for(client.connect(), 20)
        proxy.refuse(True)
        proxy.cut()
        await eventually(
            lambda: any("reconnect attempt" in r.getMessage() for r in caplog.records),
            "a DEBUG line about a reconnect attempt",
        )
        await client.close()
        await settle(proxy)

    texts += [caplog.text] + [record.getMessage() for record in caplog.records]
    assert any(f"alice:***@127.0.0.1:{proxy.port}" in r.getMessage() for r in caplog.records)
    assert_no_secret(texts)


def deltran_bus(
    *args: str, timeout: float = 120, **environ: str
) -> subprocess.CompletedProcess[str]:
    """Runs the console script with a clean DELTRAN_* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    env.update(environ)
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "message_bus.app.cli"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture
def creds_file(tmp_path: Path) -> Path:
    path = tmp_path / "user.creds"
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{CREDS_SECRET}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{SEED}\n"
        "------END USER NKEY SEED------\n"
    )
    return path


def test_no_secret_on_the_cli_whatever_the_source(
    plain_server: EmbeddedNatsServer, creds_file: Path
) -> None:
    refused = f"127.0.0.1:{free_port()}"
    good = f"127.0.0.1:{plain_server.port}"
    runs = [
        deltran_bus("streams", "ls", "-v", "--url", f"nats://alice:{SECRET}@{refused}"),
        deltran_bus("streams", "ls", "-v", DELTRAN_NATS_URLS=f"nats://alice:{SECRET}@{refused}"),
        deltran_bus("streams", "ls", "-v", "--url", f"nats://{TOKEN}@{refused}"),
        deltran_bus("streams", "ls", "-v", "--url", f"nats://alice:{SECRET}x@{good}"),
        deltran_bus("streams", "ls", "-v", "--url", f"nats://alice:{SECRET}@host:99999"),
        deltran_bus("streams", "ls", "-v", DELTRAN_NATS_URLS=f"nats://alice:{SECRET}@host,ws://h"),
        deltran_bus("streams", "ls", "-v", "--url", f"nats://{good}", DELTRAN_NATS_TOKEN=TOKEN),
        deltran_bus("streams", "ls", "-v", "--url", f"nats://{good}", DELTRAN_NATS_NKEY_SEED=SEED),
        deltran_bus(
            "streams",
            "ls",
            "-v",
            "--url",
            f"nats://{good}",
            DELTRAN_NATS_CREDS_FILE=str(creds_file),
        ),
        deltran_bus(
            "streams",
            "ls",
            "--url",
            f"nats://{good}",
            DELTRAN_NATS_USER="alice",
            DELTRAN_NATS_PASSWORD="",
        ),
    ]

    for result in runs:
        assert result.returncode == 2, (result.args, result.stdout, result.stderr)
        assert result.stderr.strip(), result.args
        assert "Traceback" not in result.stderr
    assert "alice:***@" in runs[0].stderr
    assert "alice:***@" in runs[1].stderr
    assert "rejected the credentials" in runs[3].stderr
    assert_no_secret([r.stdout + r.stderr for r in runs])


# -- connect is bounded -----------------------------------------------------------------------


async def test_connecting_to_the_monitoring_port_fails_in_time_naming_it(
    nats_server: EmbeddedNatsServer,
) -> None:
    url = f"nats://127.0.0.1:{nats_server.monitor_port}"
    client = NatsClient(config(url, connection_timeout=1.5))
    started = time.monotonic()

    error = await connect_error(client)

    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 3.0, f"connect took {elapsed:.1f}s with a 1.5s connection_timeout"
    assert "is not a NATS server" in str(error)
    assert url in str(error)


async def test_a_peer_that_says_nothing_fails_in_time_naming_it(
    plain_server: EmbeddedNatsServer,
) -> None:
    with TcpProxy("127.0.0.1", plain_server.port) as proxy:
        proxy.drop(downstream=True)  # accepts, and the INFO never arrives
        url = f"nats://alice:{SECRET}@127.0.0.1:{proxy.port}"
        client = NatsClient(config(url, connection_timeout=1.5, retry_initial_connect=True))
        started = time.monotonic()

        error = await connect_error(client)

        elapsed = time.monotonic() - started
        assert elapsed < 1.5 + 3.0, f"connect took {elapsed:.1f}s with a 1.5s connection_timeout"
        assert "is not a NATS server" in str(error)
        assert f"nats://alice:***@127.0.0.1:{proxy.port}" in str(error)
        assert SECRET not in str(error)
        await settle(proxy)


async def test_a_refused_connection_fails_at_once_without_retry_initial_connect() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    client = NatsClient(config(url, connection_timeout=30.0))
    started = time.monotonic()

    error = await connect_error(client, bound=60)

    elapsed = time.monotonic() - started
    assert elapsed < 10.0, f"a refused connect took {elapsed:.1f}s (connection_timeout 30s)"
    assert "unreachable" in str(error)
    assert url in str(error)


async def test_a_cluster_list_is_tried_server_by_server_before_failing(
    nats_server: EmbeddedNatsServer,
) -> None:
    dead = [f"nats://127.0.0.1:{free_port()}" for _ in range(3)]
    client = NatsClient(config(*dead, nats_server.url, connection_timeout=30.0))

    await asyncio.wait_for(client.connect(), 20)

    assert client.connected_url == f"127.0.0.1:{nats_server.port}"
    await client.close()


async def test_retry_initial_connect_waits_for_a_server_to_come_up(
    nats_server: EmbeddedNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="message_bus.nats")
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        proxy.refuse(True)
        client = NatsClient(config(proxy.url, connection_timeout=30.0, retry_initial_connect=True))
        connecting = asyncio.ensure_future(client.connect())

        await eventually(
            lambda: sum("connect attempt failed" in r.getMessage() for r in caplog.records) >= 2,
            "two failed connect attempts",
        )
        assert not connecting.done()
        proxy.refuse(False)
        await asyncio.wait_for(connecting, 30)

        assert client.is_connected
        await client.close()
        await settle(proxy)


def test_the_cli_fails_fast_on_a_refused_port_and_names_a_non_nats_port(
    nats_server: EmbeddedNatsServer,
) -> None:
    started = time.monotonic()
    refused = deltran_bus(
        "streams",
        "ls",
        "--url",
        f"nats://127.0.0.1:{free_port()}",
        DELTRAN_NATS_CONNECTION_TIMEOUT="30",
    )
    refused_took = time.monotonic() - started
    started = time.monotonic()
    monitor = deltran_bus(
        "streams",
        "ls",
        "--url",
        f"nats://127.0.0.1:{nats_server.monitor_port}",
        DELTRAN_NATS_CONNECTION_TIMEOUT="2",
    )
    monitor_took = time.monotonic() - started

    assert refused.returncode == 2, refused.stderr
    assert "unreachable" in refused.stderr
    assert refused_took < 15, f"a refused port took {refused_took:.1f}s (connection_timeout 30s)"
    assert monitor.returncode == 2, monitor.stderr
    assert "is not a NATS server" in monitor.stderr
    assert monitor_took < 2 + 13, f"the monitoring port took {monitor_took:.1f}s"


async def test_rejected_credentials_fail_with_a_connection_error_every_time(
    plain_server: EmbeddedNatsServer,
) -> None:
    """The server resets the socket after its -ERR; closing it must not turn into an
    unexpected error."""
    for options in ({"token": TOKEN}, {"user": "alice", "password": SECRET + "x"}) * 15:
        error = await connect_error(NatsClient(config(plain_server.url, **options)))

        assert "rejected the credentials" in str(error)
